"""Corpora for testing and benchmarking DICOM de-identification end to end.

- `write_planted_corpus`: valid Part 10 files, built with pydicom on pydicom's CT_small.dcm
  and MR_small.dcm, that together put a distinct, searchable value into every attribute of
  PS3.15 Table E.1-1 that has a fixed tag, into repeating groups (curve data in group 5000;
  overlay data and comments in groups 6000 and 6002), into a private block (creator, data
  elements and a private sequence), into a sequence nested in a sequence, and into the file
  meta. It returns the manifest: one `Plant` per planted value.
- `gather_real_corpus`: copies of pydicom's and pydicom-data's real test files from many
  manufacturers and transfer syntaxes, filtered to image files pydicom reads and decodes
  without a warning.
- `write_bad_inputs`: files a de-identifier must quarantine (truncated, not DICOM, no pixel
  data, undecodable pixel data).
- `Haystack`, `find_plants`, `input_uids`: searching outputs for what must not survive.

How values are planted, by VR: text VRs (AE, CS, LO, LT, PN, SH, ST, UC, UR, UT) hold a
token ``PLNT<4 digits>X``; binary VRs (OB, UN, ...) 16 bytes that start with a token; UI a
UID under `PLANT_UID_ROOT` whose last component has a fixed width (no planted UID is a
prefix of another); DA a date from the file's pool (years 1100 to 2999, 60 years apart within
a file, none from 1940 to 2039: a per-patient date shift cannot turn one planted date into
another, nor a real file's date into a planted one), DT such a date with a time whose fraction
is unique, TM a time with a unique fraction; DS, IS and AS unusual numbers.

Not planted or not searched, and why (see `SKIPPED_ROWS`, `NOT_SEARCHABLE_VRS`):
- (0000,1000) and (0000,1001): command-set elements; a Part 10 data set cannot hold them.
- (0002,0003) Media Storage SOP Instance UID is planted, as the file's SOP Instance UID (a
  valid file needs the two equal); the table's private-attributes row is planted as a
  private block.
- US, SS, UL, SL, FL, FD, AT values (2 to 8 bytes) are planted but not searched in raw bytes,
  where they would match by chance; `parsed_plants` finds them by tag in parsed outputs.
Numbers (dates, times, DS, IS, AS) and UIDs are searched in a file's bytes without its pixel
data value (`Haystack.header`), where a chance match in pixel bytes cannot happen; tokens are
searched in all bytes. Numbers must start a value (not follow a digit, dot or sign); UIDs must
not be followed by a digit (``<uid>.1`` still counts as a leak).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)

from site_client.deid import DEFAULT_TABLE_PATH

PLANT_UID_ROOT = "1.2.826.0.1.3680043.9.9999"
#: Replacement SOP Instance UIDs for real files that share one (pydicom's test files do).
REAL_UID_ROOT = f"{PLANT_UID_ROOT}.8"
TOKEN = re.compile(rb"plnt\d{4}x", re.IGNORECASE)
#: Table rows with a fixed tag that are not planted as data set attributes, and why.
SKIPPED_ROWS = {
    0x00001000: "command-set element: not allowed in a Part 10 data set",
    0x00001001: "command-set element: not allowed in a Part 10 data set",
    0x00020003: "file meta: planted as the file's SOP Instance UID",
}
#: VRs whose planted values are too short to search in raw bytes (found by tag instead).
NOT_SEARCHABLE_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT"})
TEXT_VRS = frozenset({"AE", "CS", "LO", "PN", "SH", "UC"})
LONG_TEXT_VRS = frozenset({"LT", "ST", "UT"})
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_BINARY_TAIL = bytes([0xA5, 0x5A, 0xC3, 0x3C, 0x96, 0x69, 0x0F])
_NUMBER_PREFIX = b"0123456789.+-"
_DIGITS = b"0123456789"
_PLANT_BASES = ("CT_small.dcm", "MR_small.dcm")
MANUFACTURER = 0x00080070
#: How many files share the table's rows (one more file holds the structural plants).
TABLE_FILES = 6
_PRIVATE_GROUP = 0x0071
_NESTED_OUTER = 0x00082218  # Anatomic Region Sequence: not in Table E.1-1
_NESTED_INNER = 0x00082220  # Anatomic Region Modifier Sequence: not in Table E.1-1
_NESTED_ATTRIBUTES = (
    0x00100010,  # Patient's Name
    0x00081155,  # Referenced SOP Instance UID
    0x00080023,  # Content Date
    0x00080033,  # Content Time
    0x00081030,  # Study Description
    0x00200010,  # Study ID
    0x00080080,  # Institution Name
    0x00181000,  # Device Serial Number (retained with device identity)
)


class Fate(StrEnum):
    """What de-identification must do to a planted value."""

    KEPT = "kept"
    REMOVED = "removed"


@dataclass(frozen=True)
class Plant:
    """One planted value: where it is and the bytes that find it in an output."""

    file: str  # the input file, relative to the corpus root
    tag: int
    vr: str
    value: str  # as a parsed element shows it (`element_text`)
    needle: bytes | None  # None: not searchable in raw bytes
    kind: str  # "token", "number", "uid" or "none": how `needle` is searched
    path: tuple[int, ...] = ()  # the enclosing sequences' tags, outermost first
    where: str = "standard"  # "standard", "private" or "file-meta"

    @property
    def name(self) -> str:
        """The attribute's keyword (or tag), with its enclosing sequences."""
        names = [_tag_name(t) for t in (*self.path, self.tag)]
        return " > ".join(names) + (" [private]" if self.where == "private" else "")


@dataclass
class PlantedCorpus:
    """The planted files and the manifest of what they hold."""

    root: Path
    files: list[Path]
    plants: list[Plant]
    skipped: dict[int, str] = field(default_factory=lambda: dict(SKIPPED_ROWS))


@dataclass
class RealCorpus:
    """Copies of real test files; ``sources`` maps each copy's name to where it came from."""

    root: Path
    files: list[Path]
    sources: dict[str, str]
    manufacturers: list[str]
    transfer_syntaxes: list[str]
    uid_rewritten: list[str]  # copies whose shared SOP Instance UID was made unique


@dataclass(frozen=True)
class BadInput:
    """An input a de-identifier cannot use: its path (relative to the corpus root), why."""

    path: str
    problem: str


def _tag_name(tag: int) -> str:
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@cache
def table_rows(path: Path = DEFAULT_TABLE_PATH) -> tuple[dict[str, str], ...]:
    """The rows of Table E.1-1 (the JSON the engine reads)."""
    return tuple(json.loads(path.read_text(encoding="utf-8")))


def fixed_tag(row: dict[str, str]) -> int | None:
    """The row's tag as an int, or None for repeating groups and the private row."""
    match = re.fullmatch(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)", row["tag"])
    return int(match[1] + match[2], 16) if match else None


def _base_vr(tag: int) -> str:
    return dictionary_VR(tag).split(" or ")[0]


def element_text(value: object) -> str:
    """A parsed element's value as text: bytes as hex, multiple values joined by ``\\``."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(element_text(v) for v in value)
    return str(value)


class _Values:
    """Unique planted values, one call per value."""

    def __init__(self) -> None:
        self._n = 0
        self._dates: Iterator[str] = iter(())

    def _next(self) -> int:
        self._n += 1
        return self._n

    def start_file(self, index: int) -> None:
        """Start the date pool of file ``index`` (see `date`)."""
        self._dates = _date_pool(index)

    def token(self) -> str:
        return f"PLNT{self._next():04d}X"

    def uid(self) -> str:
        return f"{PLANT_UID_ROOT}.1{self._next():05d}"

    def date(self) -> str:
        try:
            return next(self._dates)
        except StopIteration:
            raise RuntimeError("the file's date pool is exhausted: plant fewer dates") from None

    def time(self) -> str:
        n = self._next()
        return f"{n % 24:02d}{(7 * n) % 60:02d}{(13 * n) % 60:02d}.{n:06d}"

    def for_vr(self, vr: str) -> tuple[object, bytes | None, str]:
        """(the value for pydicom, the needle, how the needle is searched) for ``vr``."""
        if vr in TEXT_VRS:
            token = self.token()
            return token, token.encode(), "token"
        if vr in LONG_TEXT_VRS:
            token = self.token()
            return f"Planted note {token} ends here", token.encode(), "token"
        if vr == "UR":
            token = self.token()
            return f"https://example.org/{token}", token.encode(), "token"
        if vr in BINARY_VRS:
            token = self.token()
            return token.encode() + _BINARY_TAIL, token.encode(), "token"
        if vr == "UI":
            uid = self.uid()
            return uid, uid.encode(), "uid"
        text = {
            "DA": self.date,
            "TM": self.time,
            "DT": lambda: self.date() + self.time(),
            "DS": lambda: f"-{(n := self._next())}.5{n:04d}7",
            "IS": lambda: f"-7{self._next():05d}3",
            "AS": lambda: f"{100 + self._next() % 900:03d}W",
        }.get(vr)
        if text is not None:
            value = text()
            return value, value.encode(), "number"
        if vr in NOT_SEARCHABLE_VRS:
            n = self._next()
            return (float(n) + 0.625 if vr in ("FL", "FD") else 40000 + n % 20000), None, "none"
        raise ValueError(f"no planted value for VR {vr}")


class _PlantedFile:
    """One planted file being built: its data set and the plants recorded for it."""

    def __init__(self, name: str, base: str, values: _Values, plants: list[Plant]) -> None:
        self.name = name
        self.ds = pydicom.dcmread(get_testdata_file(base))
        self.values = values
        self.plants = plants

    def plant(
        self, target: Dataset, tag: int, path: tuple[int, ...] = (), vr: str | None = None
    ) -> None:
        """Put a fresh planted value for ``tag`` into ``target`` and record it."""
        vr = vr or _base_vr(tag)
        if vr == "SQ":
            target.add_new(tag, vr, [self._code_item((*path, tag))])
            return
        value, needle, kind = self.values.for_vr(vr)
        target.add_new(tag, vr, value)
        where = "private" if Tag(tag).is_private or any(Tag(t).is_private for t in path) else ""
        shown = element_text(target[tag].value)
        self.plants.append(
            Plant(self.name, tag, vr, shown, needle, kind, path, where or "standard")
        )

    def _code_item(self, path: tuple[int, ...]) -> Dataset:
        """A sequence item with planted code attributes and a planted referenced UID."""
        item = Dataset()
        for tag in (0x00080100, 0x00080104, 0x00081155):  # Code Value, Code Meaning, Ref. UID
            self.plant(item, tag, path)
        item.CodingSchemeDesignator = "99PLNT"
        item.ReferencedSOPClassUID = self.ds.SOPClassUID
        return item

    def replant_base(self, table_tags: set[int]) -> None:
        """Replace every top-level attribute of the base file that the table lists."""
        for elem in list(self.ds):
            if elem.tag in table_tags:
                del self.ds[elem.tag]
                self.plant(self.ds, elem.tag)

    def write(self, root: Path, syntax: str, file_meta_plants: bool = False) -> Path:
        """Write a Part 10 file with a fresh file meta (planted AE titles if asked)."""
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = syntax
        meta.MediaStorageSOPClassUID = self.ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = self.ds.SOPInstanceUID
        sop = self.ds.SOPInstanceUID
        self.plants.append(
            Plant(self.name, 0x00020003, "UI", sop, sop.encode(), "uid", (), "file-meta")
        )
        if file_meta_plants:
            for tag in (0x00020016, 0x00020017, 0x00020018):  # source, sending, receiving AE
                value, needle, kind = self.values.for_vr("AE")
                meta.add_new(tag, "AE", value)
                self.plants.append(
                    Plant(self.name, tag, "AE", value, needle, kind, (), "file-meta")
                )
        self.ds.file_meta = meta
        path = root / self.name
        path.parent.mkdir(parents=True, exist_ok=True)
        pydicom.dcmwrite(path, self.ds, enforce_file_format=True)
        return path


def _date_pool(index: int) -> Iterator[str]:
    """Dates for file ``index``: years 1100 to 2999 (dciodvfy accepts 1000 to 2999; a
    shift back by a century stays in range), 60 years apart within a file and 9 years apart
    between files, none from 1940 to 2039 (where real files' shifted dates could land);
    month and day vary with both."""
    for k in range(32):
        year = 1100 + 9 * index + 60 * k
        if year <= 2999 and not 1940 <= year <= 2039:
            yield f"{year:04d}{1 + (k + index) % 12:02d}{1 + (7 * k + 3 * index) % 28:02d}"


def write_planted_corpus(root: Path) -> PlantedCorpus:
    """Write the planted files under ``root`` and return their manifest."""
    rows = [t for t in map(fixed_tag, table_rows()) if t is not None]
    table_tags = set(rows)
    # Sorted by VR first, so that every file gets its share of each VR (and of dates).
    plantable = sorted((t for t in rows if t not in SKIPPED_ROWS), key=lambda t: (_base_vr(t), t))
    values = _Values()
    plants: list[Plant] = []
    files = []
    for i in range(TABLE_FILES):
        values.start_file(i + 1)
        planted = _PlantedFile(f"planted-{i + 1:02d}.dcm", _PLANT_BASES[i % 2], values, plants)
        planted.replant_base(table_tags)
        for tag in plantable[i::TABLE_FILES]:
            if tag not in planted.ds:
                planted.plant(planted.ds, tag)
        _plant_equipment(planted)
        # One file in Implicit VR: private and binary plants travel without their VRs.
        syntax = ImplicitVRLittleEndian if i == 1 else ExplicitVRLittleEndian
        files.append(planted.write(root, syntax))
    values.start_file(0)
    structure = _PlantedFile("planted-00-structure.dcm", _PLANT_BASES[0], values, plants)
    structure.replant_base(table_tags)
    _plant_equipment(structure)
    _plant_nested(structure)
    _plant_private(structure)
    _plant_repeating_groups(structure)
    files.append(structure.write(root, ExplicitVRLittleEndian, file_meta_plants=True))
    return PlantedCorpus(root, sorted(files), plants)


def _plant_equipment(planted: _PlantedFile) -> None:
    """Manufacturer and model name: not in the table, kept (they form the scanner group)."""
    for tag in (0x00080070, 0x00081090):
        if tag in planted.ds:
            del planted.ds[tag]
        planted.plant(planted.ds, tag)


def _plant_nested(planted: _PlantedFile) -> None:
    """Planted attributes in an item of a sequence inside an item of a sequence (neither
    sequence is in the table, so both are walked)."""
    inner = Dataset()
    for tag in _NESTED_ATTRIBUTES:
        planted.plant(inner, tag, (_NESTED_OUTER, _NESTED_INNER))
    outer = Dataset()
    outer.CodeValue = "T-D3000"
    outer.CodingSchemeDesignator = "SRT"
    outer.CodeMeaning = "Chest"
    outer.add_new(_NESTED_INNER, "SQ", [inner])
    planted.plant(outer, 0x00081070, (_NESTED_OUTER,))  # Operators' Name, one level down
    planted.ds.add_new(_NESTED_OUTER, "SQ", [outer])


def _plant_private(planted: _PlantedFile) -> None:
    """A private block: a planted creator, data elements of several VRs and a private
    sequence whose item holds a private element and a standard one."""
    creator, needle, kind = planted.values.for_vr("LO")
    block = planted.ds.private_block(_PRIVATE_GROUP, f"{creator} PRIVATE", create=True)
    creator_tag = (_PRIVATE_GROUP << 16) | 0x0010
    planted.plants.append(
        Plant(planted.name, creator_tag, "LO", f"{creator} PRIVATE", needle, kind, (), "private")
    )
    for offset, vr in enumerate(("LO", "UI", "DA", "OB", "US"), start=1):
        planted.plant(planted.ds, block.get_tag(offset), vr=vr)
    item = Dataset()
    item_block = item.private_block(_PRIVATE_GROUP, f"{creator} PRIVATE", create=True)
    sequence_tag = block.get_tag(0x10)
    planted.plant(item, item_block.get_tag(0x01), (sequence_tag,), vr="LO")
    planted.plant(item, 0x00100010, (sequence_tag,))  # a standard attribute in a private item
    planted.ds.add_new(sequence_tag, "SQ", [item])


def _plant_repeating_groups(planted: _PlantedFile) -> None:
    """Curve data in group 5000; overlay data and comments in groups 6000 and 6002."""
    ds = planted.ds
    ds.add_new(0x50000005, "US", 1)  # Curve Dimensions
    ds.add_new(0x50000010, "US", 8)  # Number of Points
    ds.add_new(0x50000020, "CS", "TAC")  # Type of Data
    ds.add_new(0x50000103, "US", 0)  # Data Value Representation
    planted.plant(ds, 0x50000022)  # Curve Description
    planted.plant(ds, 0x50003000, vr="OB")  # Curve Data
    for group in (0x6000, 0x6002):
        base = group << 16
        ds.add_new(base | 0x0010, "US", 16)  # Overlay Rows
        ds.add_new(base | 0x0011, "US", 8)  # Overlay Columns
        ds.add_new(base | 0x0040, "CS", "G")  # Overlay Type
        ds.add_new(base | 0x0050, "SS", [1, 1])  # Overlay Origin
        ds.add_new(base | 0x0100, "US", 1)  # Overlay Bits Allocated
        ds.add_new(base | 0x0102, "US", 0)  # Overlay Bit Position
        planted.plant(ds, base | 0x3000, vr="OW")  # Overlay Data: 16 x 8 bits = 16 bytes
        planted.plant(ds, base | 0x4000)  # Overlay Comments


# --- The real corpus -------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    path: Path
    size: int
    manufacturer: str
    syntax: str
    modality: str
    sop_instance: str


def _header(path: Path) -> _Candidate | None:
    """A file's selection features, or None when it is no Part 10 image file."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=False, force=False, defer_size=1024)
    except Exception:  # pydicom raises many types for what is not a readable file
        return None
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not syntax or "PixelData" not in ds or not ds.get("SOPInstanceUID"):
        return None
    return _Candidate(
        path,
        path.stat().st_size,
        str(ds.get("Manufacturer", "") or "").strip(),
        str(syntax),
        str(ds.get("Modality", "") or ""),
        str(ds.SOPInstanceUID),
    )


def _reads_cleanly(path: Path) -> bool:
    """True when pydicom reads every element and decodes the pixels without a warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path, force=False)
            for elem in ds.iterall():
                _ = elem.value
            _ = ds.pixel_array
        except Exception:  # anything that fails to read or decode is left out
            return False
    return not caught


def gather_real_corpus(root: Path, max_files: int = 40, max_bytes: int = 24 << 20) -> RealCorpus:
    """Copy up to ``max_files`` real image files (``max_bytes`` in all) into ``root``.

    Smallest first, files that add a manufacturer, transfer syntax or modality not yet
    covered are taken first; the rest fills up with the smallest remaining files. Copies are
    byte for byte, except that a SOP Instance UID already taken (pydicom's test files share
    some) is replaced by a unique one so that every copy is its own instance.
    """
    candidates = sorted(
        (c for c in map(_header, map(Path, get_testdata_files())) if c is not None),
        key=lambda c: (c.size, c.path.name, str(c.path)),
    )
    chosen: list[_Candidate] = []
    total = 0
    seen: set[tuple[str, str]] = set()
    for first_pass in (True, False):
        for cand in candidates:
            if len(chosen) >= max_files or cand in chosen or total + cand.size > max_bytes:
                continue
            features = {("m", cand.manufacturer), ("s", cand.syntax), ("o", cand.modality)}
            if first_pass and features <= seen:
                continue
            if _reads_cleanly(cand.path):
                chosen.append(cand)
                total += cand.size
                seen |= features
    root.mkdir(parents=True, exist_ok=True)
    files, sources, rewritten = [], {}, []
    taken: set[str] = set()
    for index, cand in enumerate(chosen, start=1):
        name = f"real-{index:02d}-{cand.path.stem}.dcm"
        target = root / name
        if cand.sop_instance in taken:
            ds = pydicom.dcmread(cand.path)
            ds.SOPInstanceUID = f"{REAL_UID_ROOT}.{index}"
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            pydicom.dcmwrite(target, ds, enforce_file_format=True)
            rewritten.append(name)
        else:
            shutil.copyfile(cand.path, target)
        taken.add(cand.sop_instance)
        files.append(target)
        sources[name] = cand.path.name
    manufacturers = sorted({c.manufacturer for c in chosen if c.manufacturer})
    syntaxes = sorted({pydicom.uid.UID(c.syntax).name for c in chosen})
    return RealCorpus(root, files, sources, manufacturers, syntaxes, rewritten)


# --- Bad inputs ----------------------------------------------------------------------


def write_bad_inputs(root: Path) -> list[BadInput]:
    """Files a de-identifier must quarantine, under ``root``, each checked to be bad."""
    root.mkdir(parents=True, exist_ok=True)
    ct = Path(get_testdata_file("CT_small.dcm"))
    data = ct.read_bytes()
    bad = []

    def add(name: str, problem: str, content: bytes) -> Path:
        (root / name).write_bytes(content)
        bad.append(BadInput(name, problem))
        return root / name

    add("truncated-header.dcm", "truncated", data[:400])
    pixels_at = data.rfind(b"\xe0\x7f\x10\x00")
    add("truncated-pixels.dcm", "truncated", data[: pixels_at + 12 + 4000])
    add("notes.txt", "not DICOM", b"Patient list, not an image\n")
    no_pixels = pydicom.dcmread(ct)
    del no_pixels.PixelData
    no_pixels.SOPInstanceUID = f"{REAL_UID_ROOT}.900"
    no_pixels.file_meta.MediaStorageSOPInstanceUID = no_pixels.SOPInstanceUID
    pydicom.dcmwrite(root / "no-pixels.dcm", no_pixels, enforce_file_format=True)
    bad.append(BadInput("no-pixels.dcm", "no pixel data"))
    add(
        "structured-report.dcm",
        "no pixel data",
        Path(get_testdata_file("reportsi.dcm")).read_bytes(),
    )
    add(
        "jpeg-12bit.dcm",
        "undecodable (12-bit JPEG Extended: no decoder installed)",
        Path(get_testdata_file("JPEG-lossy.dcm")).read_bytes(),
    )
    corrupt = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    frame = bytes(range(256)) * 8  # no JPEG 2000 codestream: no SOC marker
    corrupt.PixelData = encapsulate([frame])
    corrupt.file_meta.TransferSyntaxUID = JPEG2000Lossless
    corrupt.SOPInstanceUID = f"{REAL_UID_ROOT}.901"
    corrupt.file_meta.MediaStorageSOPInstanceUID = corrupt.SOPInstanceUID
    pydicom.dcmwrite(root / "corrupt-j2k.dcm", corrupt, enforce_file_format=True)
    bad.append(BadInput("corrupt-j2k.dcm", "undecodable (corrupt JPEG 2000 data)"))
    for item in bad:
        if _reads_cleanly(root / item.path):
            raise RuntimeError(f"{item.path} was meant to be unusable but decodes")
    return bad


# --- Searching outputs ---------------------------------------------------------------


@dataclass(frozen=True)
class Haystack:
    """What to search in one output: all its bytes (a deflated data set inflated), and the
    same without the pixel data value."""

    name: str
    whole: bytes
    header: bytes
    dicom: bool = False

    @classmethod
    def of_text(cls, name: str, text: str | bytes) -> Haystack:
        """A haystack of text (a log, the CLI's output): searched whole."""
        data = text.encode() if isinstance(text, str) else text
        return cls(name, data, data)

    @classmethod
    def of_file(cls, path: Path, name: str) -> Haystack:
        """A file's haystack; a file pydicom cannot read is searched whole."""
        data = path.read_bytes()
        try:
            ds = pydicom.dcmread(path, force=False)
        except Exception:  # not DICOM (a report, a log): all of it is header
            return cls(name, data, data)
        if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            data = _inflated(data)
        pixels = ds.get("PixelData")
        start = data.find(pixels) if isinstance(pixels, bytes) and len(pixels) > 64 else -1
        header = data if start < 0 else data[:start] + b"\0" + data[start + len(pixels) :]
        return cls(name, data, header, dicom=True)


def _inflated(data: bytes) -> bytes:
    """A deflated Part 10 file with its data set inflated (after the file meta group)."""
    length_at = data.find(b"\x02\x00\x00\x00UL\x04\x00", 128)
    if length_at < 0:
        return data
    meta_end = length_at + 12 + int.from_bytes(data[length_at + 8 : length_at + 12], "little")
    try:
        return data[:meta_end] + zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)
    except zlib.error:
        return data


def _number_hit(data: bytes, needle: bytes) -> bool:
    """``needle`` occurs where a value starts (not right after a digit, dot or sign)."""
    at = data.find(needle)
    while at >= 0:
        if at == 0 or data[at - 1] not in _NUMBER_PREFIX:
            return True
        at = data.find(needle, at + 1)
    return False


def uid_hit(data: bytes, uid: bytes) -> bool:
    """``uid`` occurs not followed by a digit (a derived UID ``<uid>.1`` counts)."""
    at = data.find(uid)
    while at >= 0:
        end = at + len(uid)
        if end == len(data) or data[end] not in _DIGITS:
            return True
        at = data.find(uid, at + 1)
    return False


class PlantSearch:
    """Finds planted values in haystacks.

    Tokens and UIDs are searched everywhere. Numbers (dates, times, DS, IS, AS) are searched
    in the outputs of their own planted file, told by its planted Manufacturer (kept), and
    in haystacks that hold no planted Manufacturer: a date shifted for one patient may by
    chance equal a date planted for another; within a file, planted dates lie decades apart.
    """

    def __init__(self, manifest: Iterable[Plant]) -> None:
        self._origin = {
            p.needle.upper(): p.file
            for p in manifest
            if p.tag == MANUFACTURER and not p.path and p.needle is not None
        }

    def origins(self, hay: Haystack) -> set[str]:
        """The planted files whose Manufacturer ``hay`` holds."""
        return {self._origin[t] for t in _tokens(hay) if t in self._origin}

    def find(self, hay: Haystack, plants: Iterable[Plant]) -> list[Plant]:
        """Those of ``plants`` whose needles occur in ``hay``."""
        tokens = _tokens(hay)
        origins = {self._origin[t] for t in tokens if t in self._origin}
        found = []
        for plant in plants:
            if plant.needle is None:
                continue
            if plant.kind == "token":
                hit = plant.needle.upper() in tokens
            elif plant.kind == "uid":
                hit = uid_hit(hay.header, plant.needle)
            elif origins and plant.file not in origins:
                continue
            else:
                hit = _number_hit(hay.header, plant.needle)
            if hit:
                found.append(plant)
        return found


def _tokens(hay: Haystack) -> set[bytes]:
    return {m.group().upper() for m in TOKEN.finditer(hay.whole)}


def walk(ds: Dataset, path: tuple[int, ...] = ()) -> Iterator[tuple[tuple[int, ...], object]]:
    """(enclosing sequence tags, element) for every element of ``ds``, depth first, with
    the file meta first."""
    meta = ds.get("file_meta") if not path else None
    if meta is not None:
        for elem in meta:
            yield path, elem
    for elem in ds:
        yield path, elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from walk(item, (*path, elem.tag))


def parsed_plants(ds: Dataset, plants: Iterable[Plant]) -> list[Plant]:
    """The plants whose (tag, value) a parsed output still holds anywhere."""
    held = {(elem.tag, element_text(elem.value)) for _, elem in walk(ds) if elem.VR != "SQ"}
    return [p for p in plants if (p.tag, p.value) in held]


def expected_fate(plant: Plant, action: Callable[[int], str | None]) -> Fate | None:
    """What the profile does to ``plant``, given the engine's resolved ``action`` per tag;
    None where the profile leaves it open (content of a cleaned, replaced or kept sequence).

    Private and file-meta plants are removed; table attributes resolved to K and attributes
    the table does not list (Manufacturer, model name) are kept; everything else goes. Below
    a sequence that is cleaned (C), the text of attributes the table does not list is
    cleaned too, which removes a planted token.
    """
    if plant.where in ("private", "file-meta"):
        return Fate.REMOVED
    enclosing = [action(tag) for tag in plant.path]
    if any(a is not None and _letters(a) <= {"X", "Z", "D"} for a in enclosing):
        return Fate.REMOVED
    if action(plant.tag) in ("K", None):
        if all(a in ("K", None) for a in enclosing):
            return Fate.KEPT
        return Fate.REMOVED if "C" in enclosing and plant.vr in CLEANED_TEXT_VRS else None
    return None if "K" in enclosing else Fate.REMOVED


#: The VRs whose values the engine cleans below a cleaned sequence.
CLEANED_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "CS", "PN"})


def _letters(action: str) -> set[str]:
    """The letters of an action, combined or not: ``X/Z/U*`` -> {X, Z, U}."""
    return {part.rstrip("*") for part in action.split("/")}


def input_uids(
    paths: Iterable[tuple[Path, str]], action: Callable[[int], str | None]
) -> tuple[dict[str, str], set[str]]:
    """UIDs in the readable inputs ``(path, name)``: those under attributes the profile
    does not keep (each with where it was first seen), and those under kept attributes.
    Private attributes count in neither."""
    removed: dict[str, str] = {}
    kept: set[str] = set()
    for path, name in paths:
        try:
            ds = pydicom.dcmread(path, force=False, stop_before_pixels=True)
        except Exception:  # unreadable inputs hold no UIDs that could reach an output
            continue
        for enclosing, elem in walk(ds):
            if elem.VR != "UI" or elem.tag.is_private or not elem.value:
                continue
            values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
            uids = {str(v).strip("\0 ") for v in values} - {""}
            if action(elem.tag) in ("K", None):
                kept |= uids
            else:
                where = " > ".join(_tag_name(t) for t in (*enclosing, elem.tag))
                for uid in uids:
                    removed.setdefault(uid, f"{name}: {where}")
    return removed, kept


def searchable_uids(removed: Iterable[str], kept: set[str]) -> tuple[set[str], set[str]]:
    """(UIDs to search outputs for, UIDs left out): DICOM-defined UIDs, UIDs shorter than 8
    characters and UIDs that a kept UID equals or extends cannot be told from kept ones."""
    removed = set(removed)
    left_out = {
        u
        for u in removed
        if u.startswith("1.2.840.10008.")
        or len(u) < 8
        or any(k == u or k.startswith(u + ".") for k in kept)
    }
    return removed - left_out, left_out


def sha256(path: Path) -> str:
    """The file's SHA-256, hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
