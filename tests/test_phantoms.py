"""Phantom hospitals: determinism, DICOM validity, fake PHI, vendor encodings, labels.csv."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from collections import Counter
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from scipy import ndimage

from simulations import phantoms
from simulations.phantoms import (
    LABEL_COLUMNS,
    MARKER_FILE,
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    PhantomSiteSpec,
    SceneConfig,
    default_site_specs,
    lesion_mask,
    rasterize,
    sample_scene,
    write_phantom_federation,
)
from simulations.scanners import PROFILES, acquire
from task.labels import read_labels

CASES_PER_SITE = 12
SEED = 7
UID_PATTERN = re.compile(r"^2\.25\.[1-9][0-9]*$")
STANDARD_PHI = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "ContentDate",
    "ContentTime",
    "StudyID",
    "StationName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
)
CT_IMAGE_REQUIRED = (
    "ImageType",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "KVP",
    "AcquisitionNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SliceThickness",
    "PixelSpacing",
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "ConvolutionKernel",
    "SoftwareVersions",
    "DeviceSerialNumber",
    "WindowCenter",
    "WindowWidth",
)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _rows(site_dir: Path) -> list[dict[str, str]]:
    with (site_dir / "labels.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _decode(ds: Dataset) -> np.ndarray:
    """What a reader must do: modality LUT, then MONOCHROME1 inverted over the storable range."""
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        bits = ds.BitsStored
        if ds.PixelRepresentation:
            storable = np.array([-(1 << (bits - 1)), (1 << (bits - 1)) - 1])
        else:
            storable = np.array([0, (1 << bits) - 1])
        lo, hi = apply_modality_lut(storable, ds)
        values = lo + hi - values
    return values


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("fed-a")
    return write_phantom_federation(out, cases_per_site=CASES_PER_SITE, seed=SEED, workers=1)


@pytest.fixture(scope="module")
def datasets(federation: list[Path]) -> dict[str, list[tuple[dict[str, str], Dataset]]]:
    """Per site: each labels.csv row with its DICOM data set."""
    return {
        site.name: [(row, pydicom.dcmread(site / "dicom" / row["path"])) for row in _rows(site)]
        for site in federation
    }


def test_same_seed_gives_byte_identical_files_whatever_the_worker_count(
    federation: list[Path], tmp_path: Path
) -> None:
    again = write_phantom_federation(tmp_path, cases_per_site=CASES_PER_SITE, seed=SEED, workers=2)
    assert [p.name for p in again] == [p.name for p in federation]
    first, second = _tree(federation[0].parent), _tree(tmp_path)
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []


def test_different_seed_gives_different_content(federation: list[Path], tmp_path: Path) -> None:
    other = write_phantom_federation(tmp_path, cases_per_site=CASES_PER_SITE, seed=SEED + 1)
    first = _tree(federation[0])
    second = _tree(other[0])
    assert set(first) != set(second)
    pixels = [
        {pydicom.dcmread(site / "dicom" / row["path"]).PixelData for row in _rows(site)}
        for site in (federation[0], other[0])
    ]
    assert pixels[0].isdisjoint(pixels[1])


def test_files_are_ct_image_storage_that_dcmdump_reads_cleanly(
    datasets: dict[str, list[tuple[dict[str, str], Dataset]]], federation: list[Path]
) -> None:
    by_scanner: dict[str, Path] = {}
    for site in federation:
        for row, ds in datasets[site.name]:
            by_scanner.setdefault(
                f"{ds.Manufacturer} {ds.ManufacturerModelName}", site / "dicom" / row["path"]
            )
    assert set(by_scanner) == {p.scanner_group for p in PROFILES.values()}
    every_file = sorted(str(p) for site in federation for p in (site / "dicom").rglob("*.dcm"))
    result = subprocess.run(["dcmdump", "-q", *every_file], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, "")
    for path in by_scanner.values():
        assert path.read_bytes()[128:132] == b"DICM"
        result = subprocess.run(["dcmdump", str(path)], capture_output=True, text=True)
        assert (result.returncode, result.stderr) == (0, "")
        assert "PixelData" in result.stdout and "(0009,0010)" in result.stdout
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage == ds.SOPClassUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        missing = [k for k in CT_IMAGE_REQUIRED if k not in ds or ds[k].value in (None, "")]
        assert missing == []
        assert (ds.Modality, ds.BitsAllocated, ds.SamplesPerPixel) == ("CT", 16, 1)
        assert ds.HighBit == ds.BitsStored - 1 and ds.RescaleType == "HU"


def test_uids_are_valid_and_unique(
    datasets: dict[str, list[tuple[dict[str, str], Dataset]]],
) -> None:
    keywords = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
    uids = [str(ds[k].value) for cases in datasets.values() for _, ds in cases for k in keywords]
    assert all(UID_PATTERN.match(uid) and len(uid) <= 64 for uid in uids)
    assert len(set(uids)) == len(uids)


def test_phi_is_in_standard_tags_private_block_nested_sequences_and_path(
    datasets: dict[str, list[tuple[dict[str, str], Dataset]]],
) -> None:
    institutions = set()
    for cases in datasets.values():
        assert len({ds.InstitutionName for _, ds in cases}) == 1
        institutions.add(cases[0][1].InstitutionName)
        for row, ds in cases:
            assert [k for k in STANDARD_PHI if not str(ds.get(k, "")).strip()] == []
            name = ds.PatientName
            assert row["path"].split("/")[0] == (
                f"{name.family_name}_{name.given_name}_MRN{ds.PatientID}"
            )
            block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
            assert str(block[0x01].value) == str(name)
            assert block[0x02].value == ds.PatientID
            assert name.family_name in block[0x03].value and ds.PatientID in block[0x03].value
            request = ds.RequestAttributesSequence[0]
            assert request.AccessionNumber == ds.AccessionNumber
            assert request.RequestedProcedureID and request.ScheduledProcedureStepID
            for sequence in ("ReferencedStudySequence", "ReferencedPerformedProcedureStepSequence"):
                assert UID_PATTERN.match(ds[sequence][0].ReferencedSOPInstanceUID)
            assert ds.OtherPatientIDsSequence[0].PatientID not in ("", ds.PatientID)
    assert len(institutions) == len(datasets)


def test_sex_and_age_in_headers_match_labels_csv(
    datasets: dict[str, list[tuple[dict[str, str], Dataset]]],
) -> None:
    for cases in datasets.values():
        for row, ds in cases:
            assert row["sex"] in ("F", "M") and ds.PatientSex == row["sex"]
            assert ds.PatientAge == f"{int(row['age']):03d}Y"
            birth, study = (
                date(int(v[:4]), int(v[4:6]), int(v[6:]))
                for v in (ds.PatientBirthDate, ds.StudyDate)
            )
            years = study.year - birth.year - ((study.month, study.day) < (birth.month, birth.day))
            assert years == int(row["age"])


def test_profiles_differ_in_physics_and_encoding() -> None:
    profiles = list(PROFILES.values())
    assert len(profiles) >= 4 and len({p.manufacturer for p in profiles}) >= 4
    assert all(p.simulated for p in profiles)
    encodings = [p.encoding for p in profiles]
    assert "MONOCHROME1" in {e.photometric for e in encodings}
    assert {e.bits_stored for e in encodings} == {12, 16}
    assert {e.pixel_representation for e in encodings} == {0, 1}
    assert len({(e.rescale_slope, e.rescale_intercept) for e in encodings}) >= 4
    for attribute in ("noise_sigma_hu", "psf_sigma_mm", "fov_mm", "kvp", "slice_thickness_mm"):
        assert len({getattr(p, attribute) for p in profiles}) >= 2, attribute
    assert len({(p.response.gain, p.response.offset_hu) for p in profiles}) >= 4
    assert {p.bias.mode for p in profiles} == {"multiplicative", "additive"}


def test_files_declare_their_profiles_encoding(
    datasets: dict[str, list[tuple[dict[str, str], Dataset]]],
) -> None:
    by_group = {p.scanner_group: p for p in PROFILES.values()}
    for cases in datasets.values():
        for _, ds in cases:
            profile = by_group[f"{ds.Manufacturer} {ds.ManufacturerModelName}"]
            encoding = profile.encoding
            assert ds.BitsStored == encoding.bits_stored
            assert ds.PixelRepresentation == encoding.pixel_representation
            assert float(ds.RescaleSlope) == encoding.rescale_slope
            assert float(ds.RescaleIntercept) == encoding.rescale_intercept
            assert ds.PhotometricInterpretation == encoding.photometric
            spacing = [float(v) for v in ds.PixelSpacing]
            assert spacing == pytest.approx([profile.fov_mm / ds.Columns] * 2)
            # Decoded, the slice is abdominal CT: fat, soft tissue, vessels, maybe a rib.
            values = _decode(ds)
            assert np.mean((values > -250.0) & (values < 300.0)) > 0.95
            assert np.percentile(values, 90) > 0.0
            assert values.min() > -400.0 and values.max() < 1200.0


def test_modality_lut_and_photometric_round_trip_recovers_measured_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured: list[np.ndarray] = []

    def recording_acquire(*args: Any, **kwargs: Any) -> np.ndarray:
        measured.append(acquire(*args, **kwargs))
        return measured[-1]

    monkeypatch.setattr(phantoms, "acquire", recording_acquire)
    # In one process, cases are drawn in labels.csv order, site by site.
    sites = write_phantom_federation(tmp_path, cases_per_site=CASES_PER_SITE, workers=1)
    files = [site / "dicom" / row["path"] for site in sites for row in _rows(site)]
    assert len(files) == len(measured)
    photometrics = set()
    for path, expected in zip(files, measured, strict=True):
        ds = pydicom.dcmread(path)
        error = np.abs(_decode(ds) - expected).max()
        assert error <= float(ds.RescaleSlope) / 2 + 1e-9, (path.name, ds.Manufacturer, error)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            stored_lut = apply_modality_lut(ds.pixel_array, ds).ravel()
            assert np.corrcoef(stored_lut, expected.ravel())[0, 1] < -0.9
        photometrics.add(ds.PhotometricInterpretation)
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}


def test_default_sites_differ_and_one_is_single_vendor() -> None:
    specs = default_site_specs()
    assert [s.n_cases for s in specs] == [400, 250, 150, 60]
    assert len({s.prevalence for s in specs}) == 4
    assert all(0.1 <= s.prevalence <= 0.5 for s in specs)
    assert sum(len(s.vendor_mix) == 1 for s in specs) == 1
    assert len({tuple(sorted(s.vendor_mix.items())) for s in specs}) == 4
    assert default_site_specs(seed=99) == specs
    assert [s.n_cases for s in default_site_specs(cases_per_site=5)] == [5] * 4


@pytest.mark.parametrize("n_sites", [1, 3, 7])
def test_other_site_counts_are_drawn_from_the_seed(n_sites: int) -> None:
    specs = default_site_specs(n_sites, seed=11)
    assert len(specs) == n_sites == len({s.site_id for s in specs})
    assert specs == default_site_specs(n_sites, seed=11)
    assert all(60 <= s.n_cases <= 400 and 0.1 <= s.prevalence <= 0.5 for s in specs)
    assert sum(len(s.vendor_mix) == 1 for s in specs) == 1
    assert all(sum(s.vendor_mix.values()) == pytest.approx(1.0) for s in specs)
    if n_sites > 1:
        assert default_site_specs(n_sites, seed=12) != specs


def test_site_spec_rejects_bad_mixes() -> None:
    with pytest.raises(ValueError, match="unknown scanner"):
        PhantomSiteSpec("x", 10, 0.2, {"no_such_scanner": 1.0})
    with pytest.raises(ValueError, match="sum to 1"):
        PhantomSiteSpec("x", 10, 0.2, {"siemens_force": 0.5})


def test_sites_match_their_specs(
    federation: list[Path], datasets: dict[str, list[tuple[dict[str, str], Dataset]]]
) -> None:
    by_group = {p.scanner_group: name for name, p in PROFILES.items()}
    for spec, site in zip(
        default_site_specs(cases_per_site=CASES_PER_SITE), federation, strict=True
    ):
        cases = datasets[site.name]
        assert site.name == spec.site_id and len(cases) == spec.n_cases
        assert sum(int(row["label"]) for row, _ in cases) == spec.n_positive
        scanners = Counter(
            by_group[f"{ds.Manufacturer} {ds.ManufacturerModelName}"] for _, ds in cases
        )
        assert dict(scanners) == {k: v for k, v in spec.vendor_counts().items() if v}
        assert json.loads((site / MARKER_FILE).read_text())["simulated"] is True


def test_labels_csv_parses_and_every_path_and_mask_is_right(
    federation: list[Path], datasets: dict[str, list[tuple[dict[str, str], Dataset]]]
) -> None:
    for site in federation:
        with (site / "labels.csv").open(newline="") as handle:
            assert next(csv.reader(handle)) == list(LABEL_COLUMNS)
        table = read_labels(site / "labels.csv")
        assert table.errors == []
        assert len(table.rows) == CASES_PER_SITE
        assert set(table.subgroup_columns) == {"sex", "age"}
        for row, ds in datasets[site.name]:
            assert (site / "dicom" / row["path"]).is_file()
            mask = np.array(Image.open(site / row["mask"]))
            assert mask.shape == (ds.Rows, ds.Columns) and mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 255}
            assert mask.any() == (row["label"] == "1")


def test_mask_covers_the_lesion() -> None:
    for index, profile in enumerate(PROFILES.values()):
        scene = sample_scene(np.random.default_rng(index), with_lesion=True)
        without = replace(scene, lesion=())
        hu, fraction = rasterize(scene, profile.fov_mm, 64)
        hu_without, empty = rasterize(without, profile.fov_mm, 64)
        pixel_mm = profile.pixel_spacing_mm(64)
        # Same draws for noise and bias: the difference is the lesion alone.
        lesion = acquire(hu, profile, pixel_mm, np.random.default_rng(0)) - acquire(
            hu_without, profile, pixel_mm, np.random.default_rng(0)
        )
        mask = lesion_mask(fraction, True) > 0
        assert mask.any() and not lesion_mask(empty, False).any()
        near = ndimage.binary_dilation(mask, iterations=2)
        strength = np.abs(lesion)
        assert mask[np.unravel_index(np.argmax(strength), mask.shape)]
        assert strength[near].sum() > 0.9 * strength.sum()
        assert strength[mask].mean() > 5 * strength[~near].mean()


def test_progress_is_reported_per_case(tmp_path: Path) -> None:
    calls: list[tuple[str, int, int]] = []
    dirs = write_phantom_federation(
        tmp_path, n_sites=2, cases_per_site=3, progress=lambda *a: calls.append(a)
    )
    assert [d.name for d in dirs] == ["site-a", "site-b"]
    assert calls == [(s, i, 3) for s in ("site-a", "site-b") for i in (1, 2, 3)]


def test_rewrites_a_phantom_export_but_not_foreign_data(tmp_path: Path) -> None:
    write_phantom_federation(tmp_path / "old", n_sites=1, cases_per_site=4, seed=1)
    write_phantom_federation(tmp_path / "old", n_sites=1, cases_per_site=4, seed=2)
    write_phantom_federation(tmp_path / "new", n_sites=1, cases_per_site=4, seed=2)
    assert _tree(tmp_path / "old") == _tree(tmp_path / "new")
    foreign = tmp_path / "foreign" / "site-a"
    foreign.mkdir(parents=True)
    (foreign / "labels.csv").write_text("path,label\n")
    with pytest.raises(FileExistsError):
        write_phantom_federation(tmp_path / "foreign", n_sites=1, cases_per_site=2)
    assert (foreign / "labels.csv").read_text() == "path,label\n"


def test_scene_config_changes_the_lesions_only_and_is_recorded(tmp_path: Path) -> None:
    scene = SceneConfig(lesion_contrast_hu=(200.0, 250.0), subtle_fraction=0.0)
    default = write_phantom_federation(tmp_path / "default", cases_per_site=6)
    custom = write_phantom_federation(tmp_path / "custom", cases_per_site=6, scene=scene)
    assert _rows(default[0]) == _rows(custom[0])
    marker = json.loads((custom[0] / MARKER_FILE).read_text())
    assert marker["scene"]["lesion_contrast_hu"] == [200.0, 250.0] and marker["simulated"]
    for row in _rows(custom[0]):
        files = [site[0] / "dicom" / row["path"] for site in (default, custom)]
        assert (files[0].read_bytes() != files[1].read_bytes()) == (row["label"] == "1")
