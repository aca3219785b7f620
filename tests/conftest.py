"""Shared fixtures: a small phantom federation ingested into site stores; run directories
made as users make them (``medfed demo`` for each task, ``medfed validate`` with a drift
check); three site stores whose new cases drifted at one site."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from dicom_network import SENDER, free_port, storescu
from flwr.supercore.task_identity import TaskIdentity

from simulations.phantoms import write_phantom_federation
from site_client.ingest import ingest_site
from site_client.policy import ReceiverPolicy
from site_client.receiver import Receiver
from site_client.store import SiteStore
from task.model import ModelConfig, build_model


@dataclass(frozen=True)
class IngestedFederation:
    """Phantom hospitals (``phantom_dirs``: their DICOM exports) and their site stores."""

    phantom_dirs: list[Path]
    site_dirs: list[Path]

    def fresh_copies(self, root: Path) -> list[Path]:
        """Copies of the site stores under ``root`` with no privacy spent (no ledger): for
        tests that train, so that no test sees another's spend or noise."""
        return [
            Path(shutil.copytree(d, root / d.name, ignore=shutil.ignore_patterns("privacy-*")))
            for d in self.site_dirs
        ]


@pytest.fixture(scope="session")
def small_federation(tmp_path_factory: pytest.TempPathFactory) -> IngestedFederation:
    """Two phantom hospitals of 48 cases each, ingested: the smallest real federation."""
    root = tmp_path_factory.mktemp("federation")
    phantom_dirs = write_phantom_federation(root / "phantoms", n_sites=2, cases_per_site=48, seed=3)
    site_dirs = []
    for phantom in phantom_dirs:
        store = SiteStore.create(root / "sites" / phantom.name)
        ingest_site(store, phantom / "dicom", phantom / "labels.csv", seed=3)
        site_dirs.append(store.root)
    return IngestedFederation(phantom_dirs, site_dirs)


def _run_medfed(*args: str | Path) -> None:
    """``medfed ARGS``, the test failing with its error output unless it succeeds."""
    result = subprocess.run(
        [sys.executable, "-m", "medfed", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        pytest.fail(f"medfed {args[0]} failed: {result.stderr[-2000:]}")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small run made as users make one, ``medfed demo`` (3 phantom hospitals of 60 cases,
    3 rounds, its report too): the run directory, DIR/run. For tests that read runs."""
    out = tmp_path_factory.mktemp("demo")
    _run_medfed("demo", "--out", out, "--sites", "3", "--cases-per-site", "60", "--rounds", "3")
    return out / "run"


@pytest.fixture(scope="session")
def segmentation_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``medfed demo --task segmentation`` (3 phantom hospitals of 40 cases, 2 rounds, no
    DP, its report too): the run directory, DIR/run."""
    out = tmp_path_factory.mktemp("segmentation-demo")
    _run_medfed(
        "demo", "--task", "segmentation", "--out", out, "--sites", "3",
        "--cases-per-site", "40", "--rounds", "2",
    )  # fmt: skip
    return out / "run"


# --- a scanner change at one site ---------------------------------------------------------

REFERENCE_CASES = 60
NEW_CASES = 30


@dataclass
class DriftedSites:
    """Three site stores with REFERENCE_CASES labelled cases and NEW_CASES newly received
    ones each (``n_new``); site-a's new images come from its scanners after a calibration
    fault (+150 HU, added noise). ``model``: a classifier's state dict for them."""

    stores: dict[str, Path]
    model: Path
    n_new: int = NEW_CASES


def _split_export(phantom: Path, out: Path) -> tuple[Path, Path, list[Path]]:
    """The first REFERENCE_CASES labelled files of ``phantom`` copied under ``out/ref`` (with
    their labels.csv) and the remaining files, the new data, listed."""
    with (phantom / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    reference, new = rows[:REFERENCE_CASES], rows[REFERENCE_CASES:]
    ref_dir = out / "ref"
    for row in reference:
        target = ref_dir / "dicom" / row["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(phantom / "dicom" / row["path"], target)
    with (ref_dir / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(reference)
    return ref_dir / "dicom", ref_dir / "labels.csv", [phantom / "dicom" / r["path"] for r in new]


def _miscalibrated(files: list[Path], out: Path) -> list[Path]:
    """Copies of ``files`` as a scanner with a calibration fault would make them."""
    rng = np.random.default_rng(1)
    copies = []
    for index, path in enumerate(files):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.astype(np.int32)
        noisy = pixels + rng.normal(0, 40 / float(ds.RescaleSlope), pixels.shape).round()
        info = np.iinfo(ds.pixel_array.dtype)
        ds.PixelData = np.clip(noisy, info.min, info.max).astype(ds.pixel_array.dtype).tobytes()
        ds.RescaleIntercept = float(ds.RescaleIntercept) + 150
        copy = out / f"{index:03d}.dcm"
        copy.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(copy)
        copies.append(copy)
    return copies


def _receive(store: SiteStore, files: list[Path]) -> None:
    """``files`` sent with storescu into ``store``'s receiver, every one stored."""
    port = free_port()
    receiver = Receiver(store, ReceiverPolicy(port=port, allowed_ae_titles=(SENDER,)))
    receiver.start()
    try:
        result = storescu(port, *files)
        assert result.returncode == 0, result.stderr
    finally:
        report = receiver.stop()
    assert report.stored == len(files)


@pytest.fixture(scope="session")
def drifted(tmp_path_factory: pytest.TempPathFactory) -> DriftedSites:
    """`DriftedSites`, their new cases sent with dcmtk's storescu into each site's receiver."""
    root = tmp_path_factory.mktemp("drift")
    phantoms = write_phantom_federation(
        root / "phantoms", 3, cases_per_site=REFERENCE_CASES + NEW_CASES, seed=5
    )
    stores = {}
    for phantom in phantoms:
        dicom, labels, new = _split_export(phantom, root / "exports" / phantom.name)
        store = SiteStore.create(root / "sites" / phantom.name)
        ingest_site(store, dicom, labels, seed=5)
        if phantom.name == "site-a":
            new = _miscalibrated(new, root / "exports" / "site-a" / "faulty")
        _receive(store, new)
        stores[store.site_id] = store.root
    model = root / "model.pt"
    torch.save(build_model(ModelConfig(), seed=0).state_dict(), model)
    return DriftedSites(stores, model)


@pytest.fixture(scope="session")
def drift_run(drifted: DriftedSites, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``medfed validate`` of `drifted`'s model at its three sites (an evaluation-only job
    with a drift check that alarms at site-a): the run directory."""
    run = tmp_path_factory.mktemp("validate") / "run"
    sites = [arg for root in drifted.stores.values() for arg in ("--site-dir", root)]
    _run_medfed("validate", "--model", drifted.model, *sites, "--out", run, "--simulated-data")
    return run


#: The Flower run id of messages made outside a run (`message_identity`).
MESSAGE_RUN_ID = 1


@pytest.fixture
def message_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages need a run identity, which Flower sets inside a run: one for tests that
    make messages outside a run."""
    monkeypatch.setattr(TaskIdentity, "_run_id", MESSAGE_RUN_ID)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
