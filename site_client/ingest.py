"""Ingest: a site's DICOM folder and labels.csv into its de-identified store.

Every regular file under the DICOM folder is read, de-identified, decoded and stored under
a pseudonymous case id (`site_client.intake`), or kept in the store's encrypted quarantine
with its reason: nothing is dropped silently, and ``received == stored + already_stored +
quarantined``. Originals are only read. The store never holds original paths, names or UIDs
outside its encrypted quarantine log; the intake report holds counts only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from site_client.decode import UnusableInput, one_line, read_dicom
from site_client.deid_tree import iter_files
from site_client.intake import InstanceIntake, IntakenImage
from site_client.intake_report import IntakeProblem, IntakeReport
from site_client.quarantine import StoreQuarantine
from site_client.store import CaseRecord, SiteStore
from task.labels import LabelRow, LabelsTable, read_labels


class IngestError(RuntimeError):
    """Ingest cannot start (no DICOM folder, bad arguments)."""


@dataclass
class IngestReport(IntakeReport):
    """An ingest's `IntakeReport` (``received == stored + already_stored + quarantined``)
    and, for the operator's console only, the files and rows behind its counts.

    quarantined_files: (source path relative to the DICOM folder, category, reason).
    label_rows_missing_file: (line, path) of labels.csv rows naming no existing file.
    label_row_errors: (line, path, reason) of labels.csv rows that cannot be used.
    path: where the intake report was written.
    """

    quarantined_files: list[tuple[str, str, str]] = field(default_factory=list)
    label_rows_missing_file: list[tuple[int, str]] = field(default_factory=list)
    label_row_errors: list[tuple[int, str, str]] = field(default_factory=list)
    path: Path | None = None


@dataclass(frozen=True)
class _NewCase:
    image: IntakenImage
    row: LabelRow
    has_mask: bool


class _Ingester:
    """Turns one labelled file into a stored case."""

    def __init__(self, store: SiteStore, labels: LabelsTable, intake: InstanceIntake) -> None:
        self.store = store
        self.labels = labels
        self.labels_dir = labels.source.parent
        self.intake = intake

    def ingest(self, path: Path, source: str) -> _NewCase | None:
        """Store the case in ``path``; None when the store has it already.

        Raises `UnusableInput` for a file that goes to quarantine.
        """
        ds = read_dicom(path)
        case_id = self.intake.case_id(ds, source)
        if case_id in self.intake.stored_ids:
            return None
        image = self.intake.image(ds, case_id)
        row = self._label_row(source)
        mask = self._read_mask(row.mask, image.image.shape) if row.mask else None
        self.store.save_case(case_id, image.image, mask)
        return _NewCase(image, row, mask is not None)

    def _label_row(self, source: str) -> LabelRow:
        row = self.labels.rows.get(source)
        if row is not None:
            return row
        for error in self.labels.errors:
            if error.path == source:
                raise UnusableInput(
                    IntakeProblem.INVALID_LABEL, f"labels.csv line {error.line}: {error.reason}"
                )
        raise UnusableInput(IntakeProblem.NO_LABEL, "no row in labels.csv")

    def _read_mask(self, mask_path: str, shape: tuple[int, ...]) -> np.ndarray:
        try:
            with Image.open(self.labels_dir / mask_path) as image:
                mask = np.asarray(image)
        except FileNotFoundError as exc:
            raise UnusableInput(IntakeProblem.MASK, f"mask {mask_path} not found") from exc
        except OSError as exc:  # PIL's UnidentifiedImageError is an OSError
            raise UnusableInput(IntakeProblem.MASK, f"mask {mask_path}: {one_line(exc)}") from exc
        if mask.shape != shape:
            raise UnusableInput(
                IntakeProblem.MASK,
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

    Unusable files go to the store's quarantine (`StoreQuarantine`) with their reasons;
    cases the store holds already are left as they are. Rows without a ``split`` get a
    seeded split stratified by label (`assign_splits`). Writes the manifest (old and new
    cases) and an intake report into ``store.intake_reports_dir``, and returns the report.
    ``labels_csv`` itself and the masks it names are inputs, not candidate DICOM files,
    when they lie under ``dicom_dir``. Raises `LabelsFileError` for an unusable labels.csv
    and `IngestError` for a missing ``dicom_dir`` or a ``test_fraction`` outside [0, 1].
    ``progress(done, total)`` is called after each file.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise IngestError(f"test_fraction must be in [0, 1], got {test_fraction}")
    if not dicom_dir.is_dir():
        raise IngestError(f"{dicom_dir}: no such DICOM folder")
    labels = read_labels(labels_csv)
    existing = store.read_manifest()
    intake = InstanceIntake(store, {r.case_id for r in existing})
    ingester = _Ingester(store, labels, intake)
    quarantine = StoreQuarantine(store)

    inputs = {labels_csv.resolve()} | {
        (labels_csv.parent / row.mask).resolve() for row in labels.rows.values() if row.mask
    }
    files = [p for p in iter_files(dicom_dir) if p.resolve() not in inputs]
    report = IngestReport(
        kind="ingest",
        deidentification=intake.deidentifier.method(),
        received=len(files),
        label_row_errors=[(e.line, e.path, e.reason) for e in labels.errors],
    )
    new_cases: list[_NewCase] = []
    for done, path in enumerate(files, start=1):
        source = path.relative_to(dicom_dir).as_posix()
        try:
            case = ingester.ingest(path, source)
        except UnusableInput as exc:
            category, reason = str(exc.category), str(exc)
            quarantine.add(path.read_bytes(), source, category, reason)
            report.count_quarantined(category)
            report.quarantined_files.append((source, category, reason))
        else:
            if case is None:
                report.already_stored += 1
            else:
                new_cases.append(case)
                report.stored += 1
                report.burned_in_masked += case.image.masked_text
        if progress is not None:
            progress(done, len(files))

    sources = {p.relative_to(dicom_dir).as_posix() for p in files}
    report.label_rows_missing_file = [
        (row.line, row.path) for row in labels.rows.values() if row.path not in sources
    ]
    report.label_problems = len(report.label_rows_missing_file) + len(labels.errors)
    records = _records(new_cases, seed, test_fraction)
    for record in records:
        report.splits[record.split] = report.splits.get(record.split, 0) + 1
    store.write_manifest(existing + records)
    report.path = report.write(store.intake_reports_dir)
    return report


def _records(cases: list[_NewCase], seed: int, test_fraction: float) -> list[CaseRecord]:
    """Manifest records of new cases, in case-id order (not in the order of input paths)."""
    unsplit = {c.image.case_id: c.row.label for c in cases if c.row.split is None}
    splits = assign_splits(unsplit, seed, test_fraction)
    return [
        CaseRecord(
            case_id=c.image.case_id,
            label=c.row.label,
            split=c.row.split or splits[c.image.case_id],
            manufacturer=c.image.manufacturer,
            model=c.image.model,
            rows=c.image.image.shape[0],
            columns=c.image.image.shape[1],
            has_mask=c.has_mask,
            subgroups=dict(c.row.subgroups),
            acquisition=c.image.acquisition,
        )
        for c in sorted(cases, key=lambda c: c.image.case_id)
    ]
