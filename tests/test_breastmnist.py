"""The BreastMNIST scenario source: real ultrasound images split into simulated sites,
written as DICOM, ingested, and run end to end (`simulations.breastmnist`)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from test_cli import medfed

from simulations.breastmnist import (
    DEFAULT_DATA,
    MIN_CLASS_CASES,
    PROVENANCE,
    BreastMNISTError,
    data_file,
    load_breastmnist,
    malignant,
)
from simulations.scenario import parse_scenario
from simulations.scenario_run import make_sites
from site_client.store import SiteStore
from validation.evidence import validate_evidence

DATA = data_file()
pytestmark = pytest.mark.skipif(not DATA.exists(), reason=f"no BreastMNIST at {DATA}")
#: Two small sites with label skew; the whole official test split is their test data.
SMALL = """name = "bm-small"
source = "breastmnist"
[seeds]
data = 3
[sites]
sizes = [40, 30]
prevalence = 0.3
label_alpha = 2.0
site_scanners = ["ge_logiq_e10", {siemens_acuson_s2000 = 1, philips_epiq_7 = 1}]
[federation]
model = "blob"
rounds = 2
local_baselines = false
pooled_baseline = true
[privacy]
epsilon = "inf"
"""


def test_default_path_is_the_shared_data_and_labels_make_malignant_positive() -> None:
    assert DATA.resolve() == (Path(__file__).parents[1] / DEFAULT_DATA).resolve()
    assert malignant(np.array([[0], [1], [0]])).tolist() == [1, 0, 1]
    data = load_breastmnist()
    raw = np.load(DATA)
    assert len(data.pool_labels) == 546 + 78 and len(data.test_labels) == 156
    # MedMNIST's 0 (malignant) is our 1: 147 + 21 in train + val, 42 in test.
    assert data.pool_labels.sum() == (raw["train_labels"] == 0).sum() + 21 == 168
    assert data.test_labels.sum() == (raw["test_labels"] == 0).sum() == 42


def test_a_missing_data_file_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(BreastMNISTError) as caught:
        load_breastmnist(missing)
    assert len(str(caught.value).splitlines()) == 1
    assert str(missing) in str(caught.value) and "not found" in str(caught.value)
    scenario = tmp_path / "bad.toml"
    scenario.write_text(SMALL.replace("[seeds]", f'data_path = "{missing}"\n[seeds]'))
    result = medfed("simulate", "--scenario", scenario, "--out", tmp_path / "run")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"medfed: error: {load_error(missing)}"]
    assert not (tmp_path / "run").exists()  # refused before anything is written


def load_error(path: Path) -> str:
    try:
        load_breastmnist(path)
    except BreastMNISTError as exc:
        return str(exc)
    raise AssertionError("no error")


def test_sites_are_valid_dicom_that_ingest_stores_and_the_test_split_is_official(
    tmp_path: Path,
) -> None:
    scenario = parse_scenario(SMALL)
    site_dirs = make_sites(scenario, tmp_path, progress=lambda _: None)
    data = load_breastmnist()
    pool_seen: list[int] = []
    test_seen: list[int] = []
    for size, site_dir in zip(scenario.sites.sizes, site_dirs, strict=True):
        export = tmp_path / "breastmnist" / site_dir.name
        marker = json.loads((export / "phantom.json").read_text())
        assert marker["simulated"] is True and marker["real_images"] is True
        pool_seen += marker["pool_indices"]
        test_seen += marker["test_indices"]
        rows = list(csv.DictReader((export / "labels.csv").open()))
        assert Counter(r["split"] for r in rows) == {
            "train": len(marker["pool_indices"]),
            "test": len(marker["test_indices"]),
        }
        assert len(marker["pool_indices"]) == size
        ds = pydicom.dcmread(export / "dicom" / rows[0]["path"])
        assert ds.Modality == "US" and ds.SOPClassUID.name == "Ultrasound Image Storage"
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsAllocated == 8
        assert ds.pixel_array.shape == (28, 28) and ds.PatientSex == "F"
        assert ds.Manufacturer in {"GE Healthcare", "SIEMENS", "Philips"}
        # Each site's store holds every file, with the split and labels of the export.
        manifest = SiteStore.open(site_dir).read_manifest()
        assert len(manifest) == len(rows)
        for split, labels in (("train", data.pool_labels), ("test", data.test_labels)):
            indices = marker["pool_indices" if split == "train" else "test_indices"]
            stored = [r.label for r in manifest if r.split == split]
            assert sorted(stored) == sorted(int(labels[i]) for i in indices)
            assert sum(stored) >= (MIN_CLASS_CASES if split == "train" else 1)
            assert len(stored) - sum(stored) >= 1
    # No image twice; the sites' test data are exactly the official test split.
    assert len(set(pool_seen)) == len(pool_seen) == sum(scenario.sites.sizes)
    assert sorted(test_seen) == list(range(len(data.test_labels)))


@pytest.mark.slow
def test_medfed_simulate_runs_a_breastmnist_scenario_and_says_what_is_real(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bm-small.toml"
    path.write_text(SMALL)
    run = tmp_path / "run"
    result = medfed("simulate", "--scenario", path, "--out", run)
    assert result.returncode == 0, result.stderr[-2000:]
    evidence = json.loads((run / "evidence.json").read_text())
    validate_evidence(evidence)
    data = evidence["run"]["data"]
    assert data["simulated"] is True and PROVENANCE in data["description"]
    assert data["scenario"]["source"] == "breastmnist"
    assert sum(s["n_test"] for s in evidence["sites"]) == 156
    assert sum(s["n_test_positive"] for s in evidence["sites"]) == 42
    assert [s["n_train"] for s in evidence["sites"]] == [40, 30]
    assert "pooled_centralized" in evidence["baselines"]
    assert 0.0 <= evidence["performance"]["pooled"]["auc"]["value"] <= 1.0
    report = medfed("report", run, "--no-pdf")
    assert report.returncode == 0, report.stderr[-2000:]
    html = (run / "report.html").read_text()
    assert "split into sites and the scanner differences between them are" in html
