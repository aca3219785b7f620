"""Shared fixtures: a small phantom federation ingested into site stores."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from flwr.supercore.task_identity import TaskIdentity

from simulations.phantoms import write_phantom_federation
from site_client.ingest import ingest_site
from site_client.store import SiteStore


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


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small run made as users make one, ``medfed demo`` (3 phantom hospitals of 60 cases,
    3 rounds, its report too): the run directory, DIR/run. For tests that read runs."""
    out = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [sys.executable, "-m", "medfed", "demo", "--out", str(out), "--sites", "3",
         "--cases-per-site", "60", "--rounds", "3"],
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.fail(f"medfed demo failed: {result.stderr[-2000:]}")
    return out / "run"


#: The Flower run id of messages made outside a run (`message_identity`).
MESSAGE_RUN_ID = 1


@pytest.fixture
def message_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages need a run identity, which Flower sets inside a run: one for tests that
    make messages outside a run."""
    monkeypatch.setattr(TaskIdentity, "_run_id", MESSAGE_RUN_ID)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
