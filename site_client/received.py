"""Cases received over the network that have no label yet, and labelling them.

The DICOM receiver (`site_client.receiver`) stores each usable instance under its case id
(the keyed pseudonym of its SOP Instance UID) and records it in the received index: one
encrypted record per case, ``store/received/<case>.csv.enc`` (columns `RECEIVED_COLUMNS`), so
that adding a case costs the same however many there are and a killed receiver loses none.
A received case is not in the manifest, so it is neither trained nor evaluated on, until
``medfed site label`` (`label_received`) gives it a label from a CSV keyed by the original
SOP Instance UID (`task.labels.UID_KEY`), as the hospital's PACS or RIS knows it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from site_client.deid import Deidentifier
from site_client.ingest import assign_splits
from site_client.store import Acquisition, CaseRecord, SiteStore
from task.labels import UID_KEY, LabelRow, LabelRowError, read_labels


@dataclass(frozen=True)
class ReceivedCase:
    """A stored, unlabelled case: its id, scanner group, image size, whether burned-in
    text regions were masked, and its acquisition."""

    case_id: str
    manufacturer: str
    model: str
    rows: int
    columns: int
    masked_text: bool
    acquisition: Acquisition = field(default_factory=Acquisition)


RECEIVED_COLUMNS = (
    "case_id",
    "manufacturer",
    "model",
    "rows",
    "columns",
    "masked_text",
    *Acquisition.COLUMNS,
)


class ReceivedIndex:
    """The received index of ``store``: one encrypted CSV record per unlabelled case."""

    FOLDER = "received"

    def __init__(self, store: SiteStore) -> None:
        self.store = store

    def add(self, case: ReceivedCase) -> None:
        """Record ``case`` (replacing any record of the same case id)."""
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        writer.writerow(RECEIVED_COLUMNS)
        writer.writerow(
            [
                case.case_id,
                case.manufacturer,
                case.model,
                case.rows,
                case.columns,
                int(case.masked_text),
                *case.acquisition.to_columns(),
            ]
        )
        self.store.write_file(self._name(case.case_id), buffer.getvalue().encode("utf-8"))

    def cases(self) -> dict[str, ReceivedCase]:
        """Every recorded case, by case id."""
        cases = {}
        for name in self.store.file_names(self.FOLDER):
            text = self.store.read_file(name).decode("utf-8")
            for row in csv.DictReader(io.StringIO(text, newline="")):
                case = ReceivedCase(
                    case_id=row["case_id"],
                    manufacturer=row["manufacturer"],
                    model=row["model"],
                    rows=int(row["rows"]),
                    columns=int(row["columns"]),
                    masked_text=row["masked_text"] == "1",
                    acquisition=Acquisition.from_row(row),
                )
                cases[case.case_id] = case
        return cases

    def remove(self, case_id: str) -> None:
        """Forget ``case_id`` (once it is in the manifest)."""
        self.store.remove_file(self._name(case_id))

    def _name(self, case_id: str) -> str:
        return f"{self.FOLDER}/{case_id}.csv"


@dataclass
class LabelOutcome:
    """What ``medfed site label`` did.

    rows: usable and unusable rows of the labels file.
    labelled: received cases moved into the manifest; splits: split -> how many of them.
    already_labelled: rows naming a case the manifest holds already (left as it is).
    unknown_lines: line numbers of rows naming no case the site holds.
    invalid: the unusable rows (line, key as written, one-line reason).
    waiting: received cases still without a label.
    """

    rows: int = 0
    labelled: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    already_labelled: int = 0
    unknown_lines: list[int] = field(default_factory=list)
    invalid: list[LabelRowError] = field(default_factory=list)
    waiting: int = 0


def check_test_fraction(test_fraction: float) -> None:
    """`ValueError` unless ``test_fraction`` (the test share of a seeded split) is in [0, 1]."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")


def label_received(
    store: SiteStore, labels_csv: Path, seed: int = 0, test_fraction: float = 0.3
) -> LabelOutcome:
    """Move the received cases that ``labels_csv`` labels into the manifest.

    ``labels_csv``: columns ``sop_instance_uid`` (original), ``label`` (0/1), optional
    ``split`` and subgroup columns. Rows without a split get a seeded split stratified by
    label over the cases labelled now (`assign_splits`, as ingest does). Raises
    `LabelsFileError` when the file cannot be used at all, `ValueError` for a
    ``test_fraction`` outside [0, 1].
    """
    check_test_fraction(test_fraction)
    labels = read_labels(labels_csv, key=UID_KEY)
    manifest = store.read_manifest()
    in_manifest = {r.case_id for r in manifest}
    received = waiting_cases(store, in_manifest)
    pseudonym = Deidentifier(store.secret).pseudonym
    outcome = LabelOutcome(rows=len(labels.rows) + len(labels.errors), invalid=labels.errors)
    chosen = []
    for uid, row in labels.rows.items():
        case_id = pseudonym(uid, "case")
        if case_id in in_manifest:
            outcome.already_labelled += 1
        elif case_id in received:
            chosen.append((received[case_id], row))
        else:
            outcome.unknown_lines.append(row.line)
    records = admit_received(store, manifest, chosen, seed, test_fraction)
    for record in records:
        outcome.splits[record.split] = outcome.splits.get(record.split, 0) + 1
    outcome.labelled = len(records)
    outcome.unknown_lines.sort()
    outcome.waiting = len(received) - len(records)
    return outcome


def waiting_cases(store: SiteStore, in_manifest: set[str]) -> dict[str, ReceivedCase]:
    """The received cases still waiting for a label, by case id; a case the manifest holds
    already (``in_manifest``: left by an interrupted labelling) leaves the index."""
    index = ReceivedIndex(store)
    received = index.cases()
    for case_id in received.keys() & in_manifest:
        index.remove(case_id)
        del received[case_id]
    return received


def admit_received(
    store: SiteStore,
    manifest: list[CaseRecord],
    labelled: list[tuple[ReceivedCase, LabelRow]],
    seed: int,
    test_fraction: float,
) -> list[CaseRecord]:
    """Write ``manifest`` followed by the received cases of ``labelled`` with their rows'
    labels, splits and subgroups (rows without a split: a seeded split stratified by label,
    as ingest does), then drop those cases from the received index. Returns their records,
    by case id."""
    unsplit = {case.case_id: row.label for case, row in labelled if row.split is None}
    splits = assign_splits(unsplit, seed, test_fraction)
    records = [
        CaseRecord(
            case_id=case.case_id,
            label=row.label,
            split=row.split or splits[case.case_id],
            manufacturer=case.manufacturer,
            model=case.model,
            rows=case.rows,
            columns=case.columns,
            subgroups=dict(row.subgroups),
            acquisition=case.acquisition,
        )
        for case, row in sorted(labelled, key=lambda pair: pair[0].case_id)
    ]
    store.write_manifest(manifest + records)
    index = ReceivedIndex(store)
    for record in records:  # only once the manifest holds them
        index.remove(record.case_id)
    return records
