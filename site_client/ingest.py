"""Ingest: a site's DICOM folder and labels.csv into its de-identified store.

Every regular file under the DICOM folder is read, de-identified, decoded and stored under
a pseudonymous case id, or copied to the quarantine with its reason: nothing is dropped
silently, and ``files_seen == ingested + already_stored + quarantined``. Originals are only
read. The store (manifest and arrays) never holds original paths, names or UIDs; the
quarantine and the ingest report stay at the site and may hold relative input paths.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
from PIL import Image

from site_client.burned_in import burned_in_text_risk, mask_regions
from site_client.decode import DecodeError, decode_image, one_line, read_dicom, scanner_group
from site_client.deid import Deidentifier, iter_files
from site_client.store import CaseRecord, SiteStore
from task.labels import LabelRow, LabelsTable, read_labels

QUARANTINE_LOG = "quarantine.csv"
QUARANTINE_COLUMNS = ("source", "copy", "category", "reason", "sha256")


class IngestProblem(StrEnum):
    """Quarantine reason categories found by ingest (decoding has `DecodeProblem`)."""

    NO_UID = "no SOP Instance UID"
    DUPLICATE = "duplicate SOP Instance UID"
    DEID_FAILED = "de-identification failed"
    NO_LABEL = "no label"
    INVALID_LABEL = "invalid label row"
    MASK = "mask problem"
    BURNED_IN_TEXT = "may carry burned-in text"


class IngestError(RuntimeError):
    """Ingest cannot start (no DICOM folder, bad arguments)."""


class _Unusable(Exception):
    """A file that goes to quarantine: ``category`` and a one-line reason."""

    def __init__(self, category: IngestProblem, reason: str) -> None:
        super().__init__(reason)
        self.category = category


@dataclass
class IngestReport:
    """Counts of one ingest; ``files_seen == ingested + already_stored + quarantined``.

    quarantine_reasons: reason category -> number of files.
    quarantined_files: (source path relative to the DICOM folder, category, reason).
    label_rows_missing_file: (line, path) of labels.csv rows naming no existing file.
    label_row_errors: (line, path, reason) of labels.csv rows that cannot be used.
    splits: split -> number of newly ingested cases.
    burned_in_masked: cases that may carry burned-in text, stored with the site policy's
        regions masked.
    """

    files_seen: int = 0
    ingested: int = 0
    already_stored: int = 0
    quarantined: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    quarantined_files: list[tuple[str, str, str]] = field(default_factory=list)
    label_rows_missing_file: list[tuple[int, str]] = field(default_factory=list)
    label_row_errors: list[tuple[int, str, str]] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    burned_in_masked: int = 0

    def add_quarantined(self, source: str, category: str, reason: str) -> None:
        """Count one quarantined file."""
        self.quarantined += 1
        self.quarantine_reasons[category] = self.quarantine_reasons.get(category, 0) + 1
        self.quarantined_files.append((source, category, reason))

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(asdict(self), indent=2)


@dataclass(frozen=True)
class _NewCase:
    case_id: str
    row: LabelRow
    manufacturer: str
    model: str
    shape: tuple[int, int]
    has_mask: bool
    masked_text: bool


class _Quarantine:
    """The quarantine folder: numbered copies of unusable files and ``quarantine.csv``.

    A file already quarantined (same source path and content) is not copied again, so
    re-ingesting a folder leaves the quarantine as it is.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.log = folder / QUARANTINE_LOG
        rows: list[dict[str, str]] = []
        if self.log.exists():
            with self.log.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        self._known = {(r["source"], r["sha256"]): r["copy"] for r in rows}
        self._next = len(rows) + 1

    def add(self, path: Path, source: str, category: str, reason: str) -> str:
        """Copy ``path`` into the quarantine (once) and log it; returns the copy's name."""
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        known = self._known.get((source, digest))
        if known is not None:
            return known
        name = f"{self._next:05d}_{path.name}"
        self.folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, self.folder / name)
        new_log = not self.log.exists()
        with self.log.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            if new_log:
                writer.writerow(QUARANTINE_COLUMNS)
            writer.writerow([source, name, category, reason, digest])
        self._known[(source, digest)] = name
        self._next += 1
        return name


class _Ingester:
    """Turns one file into a stored case; holds what the files of one batch share."""

    def __init__(self, store: SiteStore, labels: LabelsTable, stored_ids: set[str]) -> None:
        self.store = store
        self.labels = labels
        self.labels_dir = labels.source.parent
        self.stored_ids = stored_ids
        self.deidentifier = Deidentifier(store.secret)
        self.first_source_of_uid: dict[str, str] = {}

    def ingest(self, path: Path, source: str) -> _NewCase | None:
        """Store the case in ``path``; None when the store has it already.

        Raises `_Unusable` or `DecodeError` for a file that goes to quarantine.
        """
        ds = read_dicom(path)
        sop_uid = str(ds.get("SOPInstanceUID") or "").strip()
        if not sop_uid:
            raise _Unusable(IngestProblem.NO_UID, "no SOP Instance UID (0008,0018)")
        first = self.first_source_of_uid.setdefault(sop_uid, source)
        if first != source:
            raise _Unusable(IngestProblem.DUPLICATE, f"same SOP Instance UID as {first}")
        case_id = self.deidentifier.pseudonym(sop_uid, "case")
        if case_id in self.stored_ids:
            return None
        text_risk = burned_in_text_risk(ds)
        burned_in = self.store.policy.burned_in_text
        if text_risk and burned_in.action == "quarantine":
            raise _Unusable(
                IngestProblem.BURNED_IN_TEXT,
                f"{text_risk}; the site policy quarantines such images ([burned_in_text])",
            )
        try:
            clean = self.deidentifier.deidentify(ds)
        except Exception as exc:  # a damaged element surfaces only when it is converted
            raise _Unusable(IngestProblem.DEID_FAILED, one_line(exc)) from exc
        image = decode_image(clean)
        if text_risk:
            image = mask_regions(image, burned_in.regions)
        row = self._label_row(source)
        mask = self._read_mask(row.mask, image.shape) if row.mask else None
        self.store.save_case(case_id, image, mask)
        manufacturer, model = scanner_group(clean)
        rows, columns = image.shape
        return _NewCase(
            case_id, row, manufacturer, model, (rows, columns), mask is not None, bool(text_risk)
        )

    def _label_row(self, source: str) -> LabelRow:
        row = self.labels.rows.get(source)
        if row is not None:
            return row
        for error in self.labels.errors:
            if error.path == source:
                raise _Unusable(
                    IngestProblem.INVALID_LABEL, f"labels.csv line {error.line}: {error.reason}"
                )
        raise _Unusable(IngestProblem.NO_LABEL, "no row in labels.csv")

    def _read_mask(self, mask_path: str, shape: tuple[int, ...]) -> np.ndarray:
        try:
            with Image.open(self.labels_dir / mask_path) as image:
                mask = np.asarray(image)
        except FileNotFoundError as exc:
            raise _Unusable(IngestProblem.MASK, f"mask {mask_path} not found") from exc
        except OSError as exc:  # PIL's UnidentifiedImageError is an OSError
            raise _Unusable(IngestProblem.MASK, f"mask {mask_path}: {one_line(exc)}") from exc
        if mask.shape != shape:
            raise _Unusable(
                IngestProblem.MASK,
                f"mask {mask_path} has shape {mask.shape}, the image {tuple(shape)}",
            )
        return mask


def assign_splits(labels: Mapping[str, int], seed: int, test_fraction: float) -> dict[str, str]:
    """A seeded split of ``case_id -> label`` stratified by label.

    For each label, round(n * test_fraction) of its n cases (halves round up) go to
    ``test``, the rest to ``train``; which ones depends only on ``seed`` and the sorted
    case ids. Returns ``case_id -> split``.
    """
    splits: dict[str, str] = {}
    for label in sorted(set(labels.values())):
        ids = sorted(case_id for case_id, value in labels.items() if value == label)
        order = np.random.default_rng([seed, label]).permutation(len(ids))
        n_test = math.floor(len(ids) * test_fraction + 0.5)
        for rank, index in enumerate(order):
            splits[ids[index]] = "test" if rank < n_test else "train"
    return splits


def ingest_site(
    store: SiteStore,
    dicom_dir: Path,
    labels_csv: Path,
    seed: int = 0,
    test_fraction: float = 0.3,
    progress: Callable[[int, int], None] | None = None,
) -> IngestReport:
    """De-identify, decode and store every file under ``dicom_dir`` labelled in ``labels_csv``.

    Unusable files go to ``store.quarantine_dir`` with their reasons; cases the store holds
    already are left as they are. Rows without a ``split`` get a seeded split stratified
    by label (`assign_splits`). Writes the manifest (old and new cases) and
    ``store.ingest_report_path``, and returns the report. ``labels_csv`` itself and the
    masks it names are inputs, not candidate DICOM files, when they lie under ``dicom_dir``.
    Raises `LabelsFileError` for an unusable labels.csv and `IngestError` for a missing
    ``dicom_dir`` or a ``test_fraction`` outside [0, 1]. ``progress(done, total)`` is
    called after each file.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise IngestError(f"test_fraction must be in [0, 1], got {test_fraction}")
    if not dicom_dir.is_dir():
        raise IngestError(f"{dicom_dir}: no such DICOM folder")
    labels = read_labels(labels_csv)
    existing = store.read_manifest()
    ingester = _Ingester(store, labels, {r.case_id for r in existing})
    quarantine = _Quarantine(store.quarantine_dir)

    inputs = {labels_csv.resolve()} | {
        (labels_csv.parent / row.mask).resolve() for row in labels.rows.values() if row.mask
    }
    files = [p for p in iter_files(dicom_dir) if p.resolve() not in inputs]
    report = IngestReport(
        files_seen=len(files),
        label_row_errors=[(e.line, e.path, e.reason) for e in labels.errors],
    )
    new_cases: list[_NewCase] = []
    for done, path in enumerate(files, start=1):
        source = path.relative_to(dicom_dir).as_posix()
        try:
            case = ingester.ingest(path, source)
        except (_Unusable, DecodeError) as exc:
            category, reason = str(exc.category), str(exc)
            quarantine.add(path, source, category, reason)
            report.add_quarantined(source, category, reason)
        else:
            if case is None:
                report.already_stored += 1
            else:
                new_cases.append(case)
                report.ingested += 1
                report.burned_in_masked += case.masked_text
        if progress is not None:
            progress(done, len(files))

    sources = {p.relative_to(dicom_dir).as_posix() for p in files}
    report.label_rows_missing_file = [
        (row.line, row.path) for row in labels.rows.values() if row.path not in sources
    ]
    records = _records(new_cases, seed, test_fraction)
    for record in records:
        report.splits[record.split] = report.splits.get(record.split, 0) + 1
    store.write_manifest(existing + records)
    store.ingest_report_path.write_text(report.to_json(), encoding="utf-8")
    return report


def _records(cases: list[_NewCase], seed: int, test_fraction: float) -> list[CaseRecord]:
    """Manifest records of new cases, in case-id order (not in the order of input paths)."""
    unsplit = {c.case_id: c.row.label for c in cases if c.row.split is None}
    splits = assign_splits(unsplit, seed, test_fraction)
    return [
        CaseRecord(
            case_id=c.case_id,
            label=c.row.label,
            split=c.row.split or splits[c.case_id],
            manufacturer=c.manufacturer,
            model=c.model,
            rows=c.shape[0],
            columns=c.shape[1],
            has_mask=c.has_mask,
            subgroups=dict(c.row.subgroups),
        )
        for c in sorted(cases, key=lambda c: c.case_id)
    ]
