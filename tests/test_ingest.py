"""Ingest: good files stored, every unusable file quarantined with its reason, counts add
up, re-ingest changes nothing, originals untouched, nothing identifying in the store."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import (
    MANUFACTURER,
    MODEL,
    PATIENT_NAME,
    PHI_STRINGS,
    CtSpec,
    compress_with_dcmtk,
    ct_dataset,
    original_uids,
    truncate_in_pixel_data,
    write_ct,
)
from PIL import Image

from site_client.decode import decode_image
from site_client.deid import Deidentifier
from site_client.ingest import IngestError, assign_splits, ingest_site
from site_client.quarantine import StoreQuarantine
from site_client.store import SiteStore
from task.labels import LabelsFileError

PATIENT_DIR = "DOE_JOHN"
STUDY_DIR = f"{PATIENT_DIR}/study-20240315"
MASK = "masks/lesion_001.png"
GOOD = 8
EXPECTED_QUARANTINE = {
    "not DICOM": 1,
    "truncated pixel data": 1,
    "no pixel data": 1,
    "no label": 1,
    "invalid label row": 1,
    "duplicate SOP Instance UID": 1,
    "mask problem": 1,
}


@dataclass
class SiteInput:
    """A site's input folder: DICOM tree, labels.csv, and what the test needs to know."""

    dicom_dir: Path
    labels_csv: Path
    good: dict[str, CtSpec]
    specs: list[CtSpec]
    ghost_line: int


def _good_path(i: int) -> str:
    return f"{STUDY_DIR}/img_{i:03d}.dcm"


def build_input(root: Path) -> SiteInput:
    """GOOD labelled files (file 0 split test, file 1 with a mask), one bad file of each
    kind, and a labels.csv row naming a file that does not exist."""
    dicom = root / "dicom"
    rows: list[tuple[str, str, str, str, str]] = []
    good: dict[str, CtSpec] = {}
    for i in range(GOOD):
        spec = CtSpec(index=i + 1)
        good[_good_path(i)] = spec
        write_ct(dicom / _good_path(i), spec)
        rows.append(
            (
                _good_path(i),
                str(i % 2),
                "test" if i == 0 else "",
                MASK if i == 1 else "",
                "F" if i < GOOD // 2 else "M",
            )
        )
    (root / "masks").mkdir()
    Image.fromarray(np.eye(16, 12, dtype=np.uint8) * 255).save(root / MASK)
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(root / "masks/small.png")

    bad = [CtSpec(index=20), CtSpec(index=21, with_pixels=False), CtSpec(index=22)]
    bad += [CtSpec(index=23), CtSpec(index=24)]
    truncate_in_pixel_data(write_ct(dicom / PATIENT_DIR / "trunc.dcm", bad[0]))
    write_ct(dicom / PATIENT_DIR / "nopix.dcm", bad[1])
    write_ct(dicom / PATIENT_DIR / "nolabel.dcm", bad[2])
    write_ct(dicom / PATIENT_DIR / "badlabel.dcm", bad[3])
    write_ct(dicom / PATIENT_DIR / "badmask.dcm", bad[4])
    (dicom / PATIENT_DIR / "notes.txt").write_text("DOE^JOHN called back")
    shutil.copy(dicom / _good_path(0), dicom / PATIENT_DIR / "zz_duplicate.dcm")
    rows += [
        (f"{PATIENT_DIR}/trunc.dcm", "1", "", "", "F"),
        (f"{PATIENT_DIR}/nopix.dcm", "0", "", "", "F"),
        (f"{PATIENT_DIR}/badlabel.dcm", "2", "", "", "F"),
        (f"{PATIENT_DIR}/badmask.dcm", "1", "", "masks/small.png", "F"),
        (f"{PATIENT_DIR}/zz_duplicate.dcm", "0", "", "", "F"),
        (f"{PATIENT_DIR}/ghost.dcm", "1", "", "", "M"),
    ]
    labels_csv = root / "labels.csv"
    with labels_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split", "mask", "sex"])
        writer.writerows(rows)
    return SiteInput(dicom, labels_csv, good, [*good.values(), *bad], ghost_line=len(rows) + 1)


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def site_input(tmp_path: Path) -> SiteInput:
    return build_input(tmp_path / "input")


@pytest.fixture
def store(tmp_path: Path) -> SiteStore:
    return SiteStore.create(tmp_path / "site-a")


def test_ingest_stores_good_files_and_quarantines_the_rest(
    site_input: SiteInput, store: SiteStore
) -> None:
    calls: list[tuple[int, int]] = []
    report = ingest_site(
        store,
        site_input.dicom_dir,
        site_input.labels_csv,
        progress=lambda done, total: calls.append((done, total)),
    )

    assert report.received == GOOD + sum(EXPECTED_QUARANTINE.values())
    assert report.received == report.stored + report.already_stored + report.quarantined
    assert (report.stored, report.already_stored) == (GOOD, 0)
    assert report.quarantine_reasons == EXPECTED_QUARANTINE
    assert report.label_rows_missing_file == [(site_input.ghost_line, "DOE_JOHN/ghost.dcm")]
    assert [(path, reason) for _, path, reason in report.label_row_errors] == [
        ("DOE_JOHN/badlabel.dcm", "label must be 0 or 1, got '2'")
    ]
    assert calls[-1] == (report.received, report.received)
    assert report.path is not None and report.path.parent == store.intake_reports_dir
    saved = json.loads(report.path.read_text())
    assert (saved["kind"], saved["received"], saved["stored"]) == ("ingest", report.received, GOOD)
    assert saved["quarantine_reasons"] == EXPECTED_QUARANTINE
    assert saved["label_problems"] == 2
    method = saved["deidentification"]
    assert method["profile"] == "Basic Application Confidentiality Profile"
    assert "Retain Device Identity Option" in method["options"]
    assert method["software"].startswith("medfed 0.1.0")
    assert len(method["table_sha256"]) == 64
    # The report is counts only: no input path, name or UID.
    assert not [s for s in (*PHI_STRINGS, "DOE_JOHN", ".dcm") if s in report.path.read_text()]

    quarantine = StoreQuarantine(store)
    quarantined = {e.source: e for e in quarantine.entries()}
    reasons = {source: e.category for source, e in quarantined.items()}
    assert reasons == {
        "DOE_JOHN/notes.txt": "not DICOM",
        "DOE_JOHN/trunc.dcm": "truncated pixel data",
        "DOE_JOHN/nopix.dcm": "no pixel data",
        "DOE_JOHN/nolabel.dcm": "no label",
        "DOE_JOHN/badlabel.dcm": "invalid label row",
        "DOE_JOHN/badmask.dcm": "mask problem",
        "DOE_JOHN/zz_duplicate.dcm": "duplicate SOP Instance UID",
    }
    original = (site_input.dicom_dir / "DOE_JOHN/nolabel.dcm").read_bytes()
    for source, entry in quarantined.items():
        assert re.fullmatch(r"\d{5}\.dcm", entry.copy)  # never the original's name
        assert quarantine.read_copy(entry.copy) == (site_input.dicom_dir / source).read_bytes()
        assert entry.reason and "\n" not in entry.reason
        # Encrypted at rest: the copy on disk holds none of the original's bytes.
        on_disk = (store.store_dir / "quarantine" / f"{entry.copy}.enc").read_bytes()
        assert PATIENT_NAME.encode() not in on_disk
    assert original[-64:] not in b"".join(p.read_bytes() for p in store.root.rglob("*.enc"))
    assert not list(store.root.rglob("quarantine.csv"))  # only its encrypted form


def test_manifest_and_stored_cases(site_input: SiteInput, store: SiteStore) -> None:
    ingest_site(store, site_input.dicom_dir, site_input.labels_csv, seed=3)
    deidentifier = Deidentifier(store.secret)
    records = {r.case_id: r for r in store.read_manifest()}
    assert len(records) == GOOD
    for i, (path, spec) in enumerate(site_input.good.items()):
        case_id = deidentifier.pseudonym(spec.sop_uid, "case")
        record = records[case_id]
        assert (record.label, record.manufacturer, record.model) == (i % 2, MANUFACTURER, MODEL)
        assert (record.rows, record.columns) == (spec.rows, spec.columns)
        assert record.subgroups == {"sex": "F" if i < GOOD // 2 else "M"}
        assert record.has_mask == (i == 1), path
        np.testing.assert_array_equal(store.load_image(case_id), decode_image(ct_dataset(spec)))
    first = records[deidentifier.pseudonym(CtSpec(index=1).sop_uid, "case")]
    assert first.split == "test"
    masked = deidentifier.pseudonym(CtSpec(index=2).sop_uid, "case")
    np.testing.assert_array_equal(store.load_mask(masked), np.eye(16, 12, dtype=np.uint8))
    # Seeded split of the rows without one: label 0 has 3 such cases, label 1 has 4;
    # round(0.3 * n) of each go to test.
    seeded = [r for r in records.values() if r is not first]
    for label, n_test in ((0, 1), (1, 1)):
        assert sum(r.split == "test" for r in seeded if r.label == label) == n_test


def test_reingest_changes_nothing(site_input: SiteInput, store: SiteStore) -> None:
    first = ingest_site(store, site_input.dicom_dir, site_input.labels_csv)
    store_before = tree_hashes(store.store_dir)
    again = ingest_site(store, site_input.dicom_dir, site_input.labels_csv)
    assert (again.stored, again.already_stored) == (0, GOOD)
    assert again.quarantined == first.quarantined
    assert again.received == again.stored + again.already_stored + again.quarantined
    # The store (quarantine included) is unchanged: a known quarantined file is not re-added.
    assert tree_hashes(store.store_dir) == store_before
    assert len(list(store.intake_reports_dir.iterdir())) == 2  # one report per session


def test_originals_untouched_and_store_holds_nothing_identifying(
    site_input: SiteInput, store: SiteStore
) -> None:
    root = site_input.dicom_dir.parent
    originals = tree_hashes(root)
    ingest_site(store, site_input.dicom_dir, site_input.labels_csv)
    assert tree_hashes(root) == originals

    path_parts = {
        part
        for p in root.rglob("*")
        for part in (*p.relative_to(root).parent.parts, p.stem, p.name)
    }
    uids = {uid for spec in site_input.specs for uid in original_uids(spec)}
    forbidden = {*PHI_STRINGS, *uids, *path_parts, "DOE"}
    for path in store.store_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found = [s for s in forbidden if s.encode() in data]
            assert not found, f"{path.relative_to(store.root)} holds {found}"
            assert not [s for s in forbidden if s in path.name]


def test_labels_and_masks_inside_the_dicom_folder_are_not_candidates(
    tmp_path: Path, store: SiteStore
) -> None:
    dicom = tmp_path / "in"
    write_ct(dicom / "a.dcm")
    Image.fromarray(np.ones((16, 12), dtype=np.uint8)).save(dicom / "a-mask.png")
    labels_csv = dicom / "labels.csv"
    labels_csv.write_text("path,label,mask\na.dcm,1,a-mask.png\n")
    report = ingest_site(store, dicom, labels_csv)
    assert (report.received, report.stored, report.quarantined) == (1, 1, 0)


def test_unusable_inputs_raise_clear_errors(tmp_path: Path, store: SiteStore) -> None:
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("path,diagnosis\na.dcm,1\n")
    with pytest.raises(IngestError, match="no such DICOM folder"):
        ingest_site(store, tmp_path / "missing", labels_csv)
    (tmp_path / "dicom").mkdir()
    with pytest.raises(LabelsFileError, match="missing required column"):
        ingest_site(store, tmp_path / "dicom", labels_csv)
    with pytest.raises(IngestError, match="test_fraction"):
        ingest_site(store, tmp_path / "dicom", labels_csv, test_fraction=1.5)


def test_seeded_split_is_deterministic_and_stratified() -> None:
    labels = {f"c{i:016x}": int(i < 10) for i in range(30)}
    splits = assign_splits(labels, seed=7, test_fraction=0.3)
    assert splits == assign_splits(dict(reversed(labels.items())), seed=7, test_fraction=0.3)
    assert splits != assign_splits(labels, seed=8, test_fraction=0.3)
    for label, n_test in ((0, 6), (1, 3)):
        ids = [c for c, value in labels.items() if value == label]
        assert sum(splits[c] == "test" for c in ids) == n_test
    assert set(assign_splits(labels, seed=7, test_fraction=0.0).values()) == {"train"}


def test_compressed_files_are_ingested_and_undecodable_ones_quarantined(
    tmp_path: Path, store: SiteStore
) -> None:
    originals = tmp_path / "originals"
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    tools = {
        "jpeg-lossless.dcm": ("dcmcjpeg", "+e1"),
        "jpeg-ls.dcm": ("dcmcjpls", "+el"),
        "rle.dcm": ("dcmcrle",),
        "jpeg-12bit-lossy.dcm": ("dcmcjpeg", "+ee"),
    }
    expected = {}
    for index, (name, tool) in enumerate(tools.items(), start=1):
        original = write_ct(originals / name, CtSpec(index=index))
        compress_with_dcmtk(original, dicom / name, *tool)
        expected[name] = decode_image(ct_dataset(CtSpec(index=index)))
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{name},{i % 2}\n" for i, name in enumerate(tools)))

    report = ingest_site(store, dicom, labels)
    assert (report.stored, report.quarantined) == (3, 1)
    assert report.quarantine_reasons == {"undecodable pixels": 1}
    (entry,) = StoreQuarantine(store).entries()
    assert entry.source == "jpeg-12bit-lossy.dcm"
    assert "JPEG Extended" in entry.reason
    stored = {r.case_id: store.load_image(r.case_id) for r in store.read_manifest()}
    for name in ("jpeg-lossless.dcm", "jpeg-ls.dcm", "rle.dcm"):
        assert any(np.array_equal(image, expected[name]) for image in stored.values()), name
