"""Shared fixtures: a small phantom federation ingested into site stores."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

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
