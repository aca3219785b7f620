"""The labels.csv contract (see DESIGN.md).

Columns: ``path`` (relative to the DICOM folder), ``label`` (0 or 1; 1 is the clinically
positive finding), optional ``split`` (``train``/``test``), optional ``mask`` (a lesion mask,
relative to the folder holding labels.csv) and any number of subgroup columns (``sex``,
``age``, ...). Original paths can hold patient names: they are read here to find files and
are never written to a site store.

Labels for cases a site received over the network (``medfed site label``) have the same
form keyed by ``sop_instance_uid`` (the instance's original SOP Instance UID) instead of
``path``, without ``mask`` (`read_labels` with ``key=UID_KEY``).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

REQUIRED_COLUMNS = ("path", "label")
SPLITS = ("train", "test")
#: Columns with a meaning of their own; every other column is a subgroup column.
RESERVED_COLUMNS = (*REQUIRED_COLUMNS, "split", "mask")


class LabelsFileError(ValueError):
    """labels.csv cannot be used at all (missing, unreadable, required column absent)."""


@dataclass(frozen=True)
class LabelRow:
    """One usable row of labels.csv.

    ``line`` is the 1-based line number in the file (the header is line 1), for messages.
    ``path`` is the row's key: normalised to POSIX form relative to the DICOM folder, or the
    SOP Instance UID in a file keyed by it (`UID_KEY`).
    """

    line: int
    path: str
    label: int
    split: str | None = None
    mask: str | None = None
    subgroups: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LabelRowError:
    """A row of labels.csv that cannot be used, with a one-line reason (``path``: the row's
    key as written)."""

    line: int
    path: str
    reason: str


@dataclass
class LabelsTable:
    """The parsed labels.csv: usable rows keyed by normalised path (or UID), and rejected
    rows."""

    source: Path
    rows: dict[str, LabelRow]
    errors: list[LabelRowError]
    subgroup_columns: tuple[str, ...]


def normalise_relative_path(path: str) -> str:
    """Return ``path`` as a POSIX path relative to its folder ('a\\b/./c.dcm' -> 'a/b/c.dcm')."""
    parts = [p for p in PurePosixPath(path.strip().replace("\\", "/")).parts if p not in ("", ".")]
    return "/".join(parts)


def _path_key(raw: str) -> tuple[str, str | None]:
    raw_path = raw.strip()
    path = normalise_relative_path(raw_path)
    if not path:
        return raw_path, "empty path"
    if raw_path.startswith(("/", "\\")) or ".." in path.split("/"):
        return raw_path, "path must be relative to the DICOM folder"
    return path, None


_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _uid_key(raw: str) -> tuple[str, str | None]:
    uid = raw.strip()
    if not uid:
        return uid, "empty sop_instance_uid"
    if len(uid) > 64 or not _UID.match(uid):
        return uid, "sop_instance_uid must be a UID (digits and dots, at most 64 characters)"
    return uid, None


@dataclass(frozen=True)
class KeyColumn:
    """The column naming what each row of a labels file is about.

    name: the column's name.
    parse: a cell -> (the key, a one-line reason when the cell is unusable, else None).
    refused_columns: columns that have no meaning in such a file (an error, not subgroups).
    """

    name: str
    parse: Callable[[str], tuple[str, str | None]]
    refused_columns: tuple[str, ...] = ()


#: labels.csv for ingest: rows name files by their path relative to the DICOM folder.
PATH_KEY = KeyColumn("path", _path_key)
#: labels of received cases: rows name instances by their original SOP Instance UID.
UID_KEY = KeyColumn("sop_instance_uid", _uid_key, refused_columns=("path", "mask"))


def read_labels(csv_path: Path, key: KeyColumn = PATH_KEY) -> LabelsTable:
    """Read and validate labels.csv, whose rows ``key`` names (default: by path).

    Returns every usable row, and every unusable row with its reason (bad label, bad split,
    empty or duplicate key, absolute or escaping path, malformed UID). Raises
    `LabelsFileError` when the file as a whole cannot be used.
    """
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in (reader.fieldnames or [])]
            missing = [c for c in (key.name, "label") if c not in header]
            if missing:
                raise LabelsFileError(
                    f"{csv_path}: missing required column(s) {', '.join(missing)} "
                    f"(found: {', '.join(header) or 'no header'})"
                )
            refused = [c for c in key.refused_columns if c in header]
            if refused:
                raise LabelsFileError(
                    f"{csv_path}: column(s) {', '.join(refused)} have no meaning in labels "
                    f"keyed by {key.name}"
                )
            reader.fieldnames = header
            raw_rows = list(reader)
    except OSError as exc:
        raise LabelsFileError(f"{csv_path}: cannot read labels file ({exc.strerror})") from exc
    except (csv.Error, UnicodeDecodeError) as exc:
        raise LabelsFileError(f"{csv_path}: not a readable CSV file ({exc})") from exc

    reserved = (key.name, "label", "split", "mask")
    subgroup_columns = tuple(c for c in header if c not in reserved)
    rows: dict[str, LabelRow] = {}
    errors: list[LabelRowError] = []
    for line, raw in enumerate(raw_rows, start=2):
        row_or_error = _parse_row(line, raw, key, subgroup_columns)
        if isinstance(row_or_error, LabelRowError):
            errors.append(row_or_error)
        elif row_or_error.path in rows:
            first = rows[row_or_error.path].line
            errors.append(LabelRowError(line, row_or_error.path, f"duplicate of line {first}"))
        else:
            rows[row_or_error.path] = row_or_error
    return LabelsTable(csv_path, rows, errors, subgroup_columns)


def _parse_row(
    line: int, raw: dict[str, str | None], key: KeyColumn, subgroup_columns: tuple[str, ...]
) -> LabelRow | LabelRowError:
    path, problem = key.parse(raw.get(key.name) or "")
    if problem is not None:
        return LabelRowError(line, path, problem)
    label_text = (raw.get("label") or "").strip()
    if label_text not in ("0", "1"):
        return LabelRowError(line, path, f"label must be 0 or 1, got {label_text!r}")
    split = (raw.get("split") or "").strip().lower() or None
    if split is not None and split not in SPLITS:
        return LabelRowError(line, path, f"split must be train or test, got {split!r}")
    mask = normalise_relative_path(raw.get("mask") or "") or None
    subgroups = {c: (raw.get(c) or "").strip() for c in subgroup_columns}
    return LabelRow(line, path, int(label_text), split, mask, subgroups)
