"""De-identification: PS3.15 Basic Profile actions, keyed UIDs and pseudonyms, trees."""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pydicom
import pytest
from dicom_factory import (
    MANUFACTURER,
    MODEL,
    PATIENT_ID,
    PHI_STRINGS,
    SERIAL_NUMBER,
    STATION_NAME,
    CtSpec,
    ct_dataset,
    original_uids,
    write_ct,
)
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import VR

from site_client.deid import (
    Deidentifier,
    DeidError,
    DeidOptions,
    choose_action,
    load_profile_table,
)
from site_client.deid_tree import (
    DEID_LOG_NAME,
    DEID_REPORT_NAME,
    deidentify_tree,
    quarantine_folder,
)

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
REPLACED_UID = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")
DICOM_UID_ROOT = "1.2.840.10008."


def all_elements(ds: Dataset) -> Iterator[pydicom.DataElement]:
    """Every element of ``ds`` and its file meta, depth first into sequence items."""
    if ds.get("file_meta") is not None:
        yield from ds.file_meta
    for elem in ds:
        yield elem
        if elem.VR == VR.SQ:
            for item in elem.value:
                yield from all_elements(item)


def as_text(value: object) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def deidentifier() -> Deidentifier:
    return Deidentifier(SECRET)


def test_no_phi_or_original_uid_survives(deidentifier: Deidentifier) -> None:
    spec = CtSpec()
    out = deidentifier.deidentify(ct_dataset(spec))
    secrets_ = (*PHI_STRINGS, *original_uids(spec))
    for elem in all_elements(out):
        text = as_text(elem.value)
        assert not [s for s in secrets_ if s in text], f"{elem.tag} {elem.keyword}: {text!r}"
    raw = encoded(out)
    assert not [s for s in secrets_ if s.encode() in raw]


def test_private_and_repeating_group_attributes_are_removed(deidentifier: Deidentifier) -> None:
    out = deidentifier.deidentify(ct_dataset())
    assert not [e.tag for e in all_elements(out) if e.tag.is_private]
    assert 0x60004000 not in out  # overlay comments (60XX,4000)
    assert 0x50002500 not in out  # curve data (50XX,XXXX)
    # X in the Basic Profile, C (cleaned item by item) under Clean Descriptors.
    (request,) = out.RequestAttributesSequence
    assert "RequestedProcedureID" not in request
    assert request.AccessionNumber == ""
    plain = Deidentifier(SECRET, DeidOptions(clean_descriptors=False)).deidentify(ct_dataset())
    assert "RequestAttributesSequence" not in plain


def test_sequences_not_in_the_table_are_walked(deidentifier: Deidentifier) -> None:
    out = deidentifier.deidentify(ct_dataset())
    (procedure,) = out.ProcedureCodeSequence
    assert procedure.CodeMeaning == "CT chest"
    assert "RequestedProcedureID" not in procedure.RequestAttributesSequence[0]
    assert procedure.ContentCreatorName == ""  # Z/D: Z, as it is not a type 1 attribute


def test_input_dataset_is_not_modified(deidentifier: Deidentifier) -> None:
    ds = ct_dataset()
    before = copy.deepcopy(ds)
    deidentifier.deidentify(ds)
    assert ds == before
    assert ds.file_meta == before.file_meta
    assert encoded(ds) == encoded(before)


def test_same_uid_gives_same_replacement_across_files(deidentifier: Deidentifier) -> None:
    first = CtSpec(index=1)
    second = CtSpec(index=2, referenced_sop_instance_uid=first.sop_uid)
    out1 = deidentifier.deidentify(ct_dataset(first))
    with_reference = ct_dataset(second)
    # A sequence the table does not list, walked: the UIDs in its items are replaced.
    series = Dataset()
    series.SeriesInstanceUID = second.series_instance_uid
    series.ReferencedInstanceSequence = [copy.deepcopy(with_reference.ReferencedImageSequence[0])]
    with_reference.ReferencedSeriesSequence = [series]
    out2 = deidentifier.deidentify(with_reference)
    assert out1.StudyInstanceUID == out2.StudyInstanceUID
    assert out1.SeriesInstanceUID == out2.SeriesInstanceUID
    assert out1.SOPInstanceUID != out2.SOPInstanceUID
    (reference,) = out2.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert reference.ReferencedSOPInstanceUID == out1.SOPInstanceUID
    # X/Z/U*: Referenced Image Sequence is type 3 in the CT Image IOD, so it is removed.
    assert "ReferencedImageSequence" not in out2
    assert out1.file_meta.MediaStorageSOPInstanceUID == out1.SOPInstanceUID
    other = Deidentifier(OTHER_SECRET).deidentify(ct_dataset(first))
    assert other.StudyInstanceUID != out1.StudyInstanceUID


def test_output_uids_are_valid(deidentifier: Deidentifier) -> None:
    out = deidentifier.deidentify(ct_dataset())
    uids = [as_text(e.value) for e in all_elements(out) if e.VR == VR.UI]
    assert uids
    for uid in uids:
        assert len(uid) <= 64
        assert uid.startswith(DICOM_UID_ROOT) or REPLACED_UID.match(uid), uid
    for original in ("1.2.3", "9" * 64, "", "1.3.6.1.4.1.99999.7.1001"):
        replaced = deidentifier.replace_uid(original)
        assert REPLACED_UID.match(replaced) and len(replaced) <= 64


def test_patient_pseudonym_is_keyed_and_consistent(deidentifier: Deidentifier) -> None:
    out = deidentifier.deidentify(ct_dataset(CtSpec(index=1)))
    again = deidentifier.deidentify(ct_dataset(CtSpec(index=2)))
    expected = deidentifier.pseudonym(PATIENT_ID, "patient-id")
    assert re.fullmatch(r"P[0-9a-f]{12}", expected)
    assert out.PatientID == str(out.PatientName) == again.PatientID == expected
    assert Deidentifier(OTHER_SECRET).pseudonym(PATIENT_ID, "patient-id") != expected
    assert re.fullmatch(r"c[0-9a-f]{16}", deidentifier.pseudonym("1.2.3", "case"))
    with pytest.raises(ValueError, match="unknown pseudonym kind"):
        deidentifier.pseudonym("x", "address")


def test_identity_removed_markers(deidentifier: Deidentifier) -> None:
    out = deidentifier.deidentify(ct_dataset())
    assert out.PatientIdentityRemoved == "YES"
    assert "Basic Application Confidentiality Profile" in out.DeidentificationMethod
    items = out.DeidentificationMethodCodeSequence
    codes = [(item.CodeValue, item.CodingSchemeDesignator) for item in items]
    assert codes == [(c, "DCM") for c in ("113100", "113109", "113107", "113105", "113111")]
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "SourceApplicationEntityTitle" not in out.file_meta


def test_device_identity_retained_by_default_and_removable(deidentifier: Deidentifier) -> None:
    kept = deidentifier.deidentify(ct_dataset())
    assert (kept.DeviceSerialNumber, kept.StationName) == (SERIAL_NUMBER, STATION_NAME)
    removed = Deidentifier(SECRET, DeidOptions(retain_device_identity=False)).deidentify(
        ct_dataset()
    )
    # X/Z/D, and both are type 3 in the CT Image IOD: removed.
    assert "DeviceSerialNumber" not in removed
    assert "StationName" not in removed
    codes = [i.CodeValue for i in removed.DeidentificationMethodCodeSequence]
    assert "113109" not in codes
    for out in (kept, removed):  # not in Table E.1-1: the scanner group survives both
        assert (out.Manufacturer, out.ManufacturerModelName) == (MANUFACTURER, MODEL)


@pytest.mark.skipif(shutil.which("dcmdump") is None, reason="dcmtk's dcmdump not installed")
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_written_file_passes_dcmdump(
    deidentifier: Deidentifier, tmp_path: Path, syntax: str
) -> None:
    original = ct_dataset()
    original.file_meta.TransferSyntaxUID = syntax
    pydicom.dcmwrite(tmp_path / "in.dcm", original, enforce_file_format=True)
    out = deidentifier.deidentify(pydicom.dcmread(tmp_path / "in.dcm"))
    pydicom.dcmwrite(tmp_path / "out.dcm", out, enforce_file_format=True)
    result = subprocess.run(
        ["dcmdump", str(tmp_path / "out.dcm")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert result.stderr == ""
    assert "PatientIdentityRemoved" in result.stdout
    written = pydicom.dcmread(tmp_path / "out.dcm")
    assert written.file_meta.TransferSyntaxUID == syntax
    assert not [e.tag for e in all_elements(written) if e.tag.is_private]


@pytest.mark.parametrize(
    ("action", "by_type"),
    [
        ("X/Z", {"1": "Z", "2": "Z", "3": "X"}),
        ("X/D", {"1": "D", "2": "D", "3": "X"}),
        ("Z/D", {"1": "D", "2": "Z", "3": "Z"}),
        ("X/Z/D", {"1": "D", "2": "Z", "3": "X"}),
        # Kept with UIDs replaced where the IOD needs it, so references stay consistent.
        ("X/Z/U*", {"1": "U", "2": "U", "3": "X"}),
        ("K", {"1": "K", "2": "K", "3": "K"}),
    ],
)
def test_combined_actions_choose_by_attribute_type(action: str, by_type: dict[str, str]) -> None:
    # PS3.15 E.1.1: X for type 3, Z for type 2, D (or U) for type 1.
    assert {t: choose_action(action, t) for t in by_type} == by_type


def test_profile_table_resolution() -> None:
    table = load_profile_table(DeidOptions())
    assert len(table.exact) + len(table.masked) == 620  # 621 rows less the private row
    assert table.action(0x00100010) == "Z"  # Patient's Name
    assert table.action(0x00100020) == "Z/D"  # Patient ID: chosen per IOD type
    assert table.action(0x00080070) is None  # Manufacturer: not listed, kept
    assert table.action(0x601E4000) == "X"  # overlay comments of another overlay group
    assert table.action(0x50100030) == "X"  # any curve data element
    assert table.action(0x00181000) == "K"  # Device Serial Number, retained
    no_device = DeidOptions(retain_device_identity=False)
    assert load_profile_table(no_device).action(0x00181000) == "X/Z/D"
    assert table.action(0x00080020) == "C"  # Study Date: shifted (Retain Modified Dates)
    assert table.action(0x0008103E) == "C"  # Series Description: cleaned (Clean Descriptors)
    # Date of Last Detector Calibration: device identity keeps (K), modified dates clean (C):
    # the option that cleans wins.
    assert table.action(0x0018700C) == "C"
    with pytest.raises(DeidError, match="not found"):
        load_profile_table(DeidOptions(), Path("/nonexistent/table.json"))


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_deidentify_tree_writes_copies_and_a_complete_log(tmp_path: Path) -> None:
    in_dir = tmp_path / "in"
    first = write_ct(in_dir / "DOE_JOHN" / "1.dcm", CtSpec(index=1))
    write_ct(in_dir / "DOE_JOHN" / "2.dcm", CtSpec(index=2))
    shutil.copy(first, in_dir / "DOE_JOHN" / "z-copy.dcm")
    (in_dir / "notes.txt").write_text("DOE^JOHN called back")
    originals = _hashes(in_dir)
    out_dir = tmp_path / "out"
    calls: list[tuple[int, int]] = []

    report = deidentify_tree(
        in_dir, out_dir, SECRET, progress=lambda done, total: calls.append((done, total))
    )

    assert (report.received, report.stored, report.quarantined) == (4, 2, 2)
    assert report.quarantine_reasons == {"not DICOM": 1, "duplicate SOP Instance UID": 1}
    assert calls[-1] == (4, 4)
    assert _hashes(in_dir) == originals
    deidentifier = Deidentifier(SECRET)
    expected = {f"{deidentifier.replace_uid(CtSpec(index=i).sop_uid)}.dcm" for i in (1, 2)}
    assert {p.name for p in out_dir.iterdir()} == expected | {DEID_REPORT_NAME}
    saved = json.loads((out_dir / DEID_REPORT_NAME).read_text())
    assert (saved["received"], saved["stored"], saved["quarantined"]) == (4, 2, 2)
    assert saved["deidentification"]["options"][0] == "Retain Device Identity Option"
    held = quarantine_folder(out_dir)
    assert held == tmp_path / "out-quarantine"
    with (held / "quarantine.csv").open(newline="") as handle:
        quarantined = {row["source"]: row for row in csv.DictReader(handle)}
    assert set(quarantined) == {"notes.txt", "DOE_JOHN/z-copy.dcm"}
    assert (held / quarantined["notes.txt"]["copy"]).read_text() == "DOE^JOHN called back"
    with (held / DEID_LOG_NAME).open(newline="") as handle:
        log = {row["input"]: row for row in csv.DictReader(handle)}
    assert set(log) == {"DOE_JOHN/1.dcm", "DOE_JOHN/2.dcm", "DOE_JOHN/z-copy.dcm", "notes.txt"}
    assert log["notes.txt"]["status"] == "quarantined"
    assert log["notes.txt"]["category"] == "not DICOM"
    assert log["DOE_JOHN/1.dcm"]["status"] == "ok"
    assert log["DOE_JOHN/z-copy.dcm"]["category"] == "duplicate SOP Instance UID"
    assert "DOE_JOHN/1.dcm" in log["DOE_JOHN/z-copy.dcm"]["reason"]
    for path in out_dir.iterdir():  # nothing in the output names an input
        raw = path.read_bytes()
        assert not [s for s in PHI_STRINGS if s.encode() in raw]
    with pytest.raises(DeidError, match="inside the input folder"):
        deidentify_tree(in_dir, in_dir / "out", SECRET)


def test_dates_shift_consistently_per_patient_and_differ_between_patients(
    deidentifier: Deidentifier,
) -> None:
    first, second = ct_dataset(CtSpec(index=1)), ct_dataset(CtSpec(index=2))
    second.StudyDate = "20240320"  # five days later, same patient
    out1, out2 = deidentifier.deidentify(first), deidentifier.deidentify(second)
    shift = deidentifier.date_shift(PATIENT_ID)
    assert (out1.StudyDate, out1.StudyTime) == shift.date_and_time("20240315", "101530")
    assert out1.StudyDate != "20240315" and out1.StudyTime != "101530"
    gap = datetime.strptime(out2.StudyDate, "%Y%m%d") - datetime.strptime(out1.StudyDate, "%Y%m%d")
    assert gap.days == 5
    other = deidentifier.deidentify(ct_dataset(CtSpec(index=3, patient_id="OTHER-1")))
    assert other.StudyDate != out1.StudyDate
    assert "PatientBirthDate" not in out1 or out1.PatientBirthDate == ""  # not shifted: Z/X
    removed = Deidentifier(SECRET, DeidOptions(retain_modified_dates=False)).deidentify(first)
    assert removed.StudyDate == ""  # Z: type 2 in the CT Image IOD
    assert removed.LongitudinalTemporalInformationModified == "REMOVED"


def test_an_invalid_date_is_emptied_not_kept(deidentifier: Deidentifier) -> None:
    ds = ct_dataset()
    with pytest.warns(UserWarning, match="Invalid value for VR DA"):
        ds.StudyDate = "2024-03-15"  # as some exports write it
    assert deidentifier.deidentify(ds).StudyDate == ""


def test_descriptors_are_cleaned_to_safe_words(deidentifier: Deidentifier) -> None:
    ds = ct_dataset()
    ds.SeriesDescription = "AX T1 post for DOE^JOHN"
    out = deidentifier.deidentify(ds)
    assert out.StudyDescription == "CT"  # "CT for DOE^JOHN"
    assert out.SeriesDescription == "AX T1 POST"
    assert out.ImageComments == "CHEST"  # "chest pain after fall"
    plain = Deidentifier(SECRET, DeidOptions(clean_descriptors=False)).deidentify(ds)
    assert "SeriesDescription" not in plain and "ImageComments" not in plain


def test_safe_private_attributes_are_kept_only_when_listed_and_numeric(
    deidentifier: Deidentifier,
) -> None:
    ds = ct_dataset()
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0C, "IS", "1000")  # B value: on the safe-list
    block.add_new(0x10, "LO", "DOE^JOHN")  # not listed
    text = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
    text.add_new(0x39, "LO", "DOE^JOHN")  # listed, but text: dropped
    out = deidentifier.deidentify(ds)
    kept = out.private_block(0x0019, "SIEMENS MR HEADER")
    assert kept[0x0C].value == "1000"
    assert [e.tag for e in all_elements(out) if e.tag.is_private] == [0x00190010, 0x0019100C]
    plain = Deidentifier(SECRET, DeidOptions(retain_safe_private=False)).deidentify(ds)
    assert not [e.tag for e in all_elements(plain) if e.tag.is_private]


def test_overlays_are_removed_whole(deidentifier: Deidentifier) -> None:
    ds = ct_dataset()
    ds.add_new(0x60020010, "US", 16)  # Overlay Rows of a second overlay
    ds.add_new(0x60023000, "OW", bytes(32))  # its data
    out = deidentifier.deidentify(ds)
    assert not [e.tag for e in out if 0x6000 <= e.tag.group <= 0x601E]


def test_combined_actions_follow_the_iod(deidentifier: Deidentifier) -> None:
    # Device Serial Number (X/Z/D) is type 1 in the Enhanced MR Image IOD (Enhanced
    # General Equipment) and type 3 in the CT Image IOD.
    options = DeidOptions(retain_device_identity=False)
    enhanced = ct_dataset()
    enhanced.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4.1"  # Enhanced MR Image Storage
    out = Deidentifier(SECRET, options).deidentify(enhanced)
    assert out.DeviceSerialNumber == "ANONYMIZED"
    assert "DeviceSerialNumber" not in Deidentifier(SECRET, options).deidentify(ct_dataset())
