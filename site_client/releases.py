"""The site's last release in each run and phase, sent again when asked again.

A coordinator that stopped mid-round and resumed (`server.resume`) asks again for the
round it lost. Training again would release a second, differently noised model of the
same data and spend privacy a second time. Instead the site keeps the reply it released
last in each run and phase (``SITE/releases/``), keyed by the run, round, phase, epochs
and the SHA-256 of the model it was given, and sends that same reply to the same request:
nothing new leaves the site, so nothing new is spent.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord, MetricRecord

RELEASES_DIR = "releases"


@dataclass(frozen=True)
class ReleaseKey:
    """What identifies one training request: medfed's run id, round, phase ("federated" or
    "local-only"), epochs and the SHA-256 of the model received."""

    run_id: str
    round: int
    phase: str
    epochs: int
    received_sha256: str

    @property
    def text(self) -> str:
        return f"{self.run_id}|{self.round}|{self.phase}|{self.epochs}|{self.received_sha256}"


class ReleaseCache:
    """``SITE/releases/``: one file per run and phase holding the last reply (0600)."""

    def __init__(self, site_dir: Path) -> None:
        self.folder = site_dir / RELEASES_DIR

    def _path(self, key: ReleaseKey) -> Path:
        name = hashlib.sha256(f"{key.run_id}|{key.phase}".encode()).hexdigest()[:32]
        return self.folder / f"{name}.pt"

    def find(self, key: ReleaseKey) -> tuple[ArrayRecord, MetricRecord] | None:
        """The reply already released for exactly ``key``, if any."""
        path = self._path(key)
        if not path.is_file():
            return None
        saved = torch.load(path, weights_only=True)
        if saved.get("key") != key.text:
            return None
        return ArrayRecord(saved["arrays"]), MetricRecord(saved["metrics"])

    def keep(self, key: ReleaseKey, arrays: dict[str, torch.Tensor], metrics: MetricRecord) -> None:
        """Remember the reply about to be released for ``key`` (replacing the run's last)."""
        self.folder.mkdir(mode=0o700, exist_ok=True)
        path = self._path(key)
        temporary = path.with_name(path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            torch.save({"key": key.text, "arrays": arrays, "metrics": dict(metrics)}, handle)
        os.replace(temporary, path)
