"""Checkpoints of a run: every model the coordinator holds, with its SHA-256.

Files are ``RUN/checkpoints/<name>.pt`` (a torch state dict) and ``registry.json`` lists
them in the order they were made: name, round (None for baselines), file, sha256.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REGISTRY_FILE = "registry.json"


@dataclass(frozen=True)
class Checkpoint:
    """One saved model: ``file`` is relative to the run directory."""

    name: str
    round: int | None
    file: str
    sha256: str


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class CheckpointRegistry:
    """Saves state dicts under ``run_dir/checkpoints`` and keeps the registry file current."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.folder = run_dir / "checkpoints"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, Checkpoint] = {}

    def save(
        self, name: str, state_dict: dict[str, torch.Tensor], server_round: int | None
    ) -> Checkpoint:
        """Write ``state_dict`` as ``<name>.pt`` and record it (replacing an entry of that name)."""
        path = self.folder / f"{name}.pt"
        torch.save(state_dict, path)
        return self.add(name, path, server_round)

    def add(self, name: str, path: Path, server_round: int | None) -> Checkpoint:
        """Record an existing checkpoint file (e.g. a baseline trained outside Flower)."""
        entry = Checkpoint(
            name, server_round, path.relative_to(self.run_dir).as_posix(), sha256_of(path)
        )
        self.entries[name] = entry
        (self.folder / REGISTRY_FILE).write_text(
            json.dumps([asdict(e) for e in self.entries.values()], indent=2)
        )
        return entry

    def load(self, name: str) -> dict[str, torch.Tensor]:
        """The state dict of checkpoint ``name``, after checking its SHA-256."""
        entry = self.entries[name]
        path = self.run_dir / entry.file
        if sha256_of(path) != entry.sha256:
            raise ValueError(f"{path}: SHA-256 does not match the registry; file changed")
        return torch.load(path, weights_only=True)
