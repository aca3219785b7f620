"""Checkpoints of a run: every model the coordinator holds, with its SHA-256.

Files are ``RUN/checkpoints/<name>.pt`` (a torch state dict) and ``registry.json`` lists
them in the order they were made: name, round (None for baselines), file, sha256.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from task.model import ModelConfig, build_model

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


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; a one-line reason naming the file."""


class CheckpointRegistry:
    """Saves state dicts under ``run_dir/checkpoints`` and keeps the registry file current."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.folder = run_dir / "checkpoints"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, Checkpoint] = {}

    @classmethod
    def reopen(cls, run_dir: Path, keep: Callable[[Checkpoint], bool]) -> CheckpointRegistry:
        """The registry of an earlier job in ``run_dir`` (a resumed one), with only the
        entries ``keep`` accepts; each kept file's SHA-256 is checked (`CheckpointError`)."""
        registry = cls(run_dir)
        path = registry.folder / REGISTRY_FILE
        try:
            entries = [Checkpoint(**e) for e in json.loads(path.read_text(encoding="utf-8"))]
        except (FileNotFoundError, json.JSONDecodeError, TypeError) as exc:
            raise CheckpointError(f"{path}: not a checkpoint registry ({exc})") from exc
        for entry in filter(keep, entries):
            if not (run_dir / entry.file).is_file() or sha256_of(run_dir / entry.file) != (
                entry.sha256
            ):
                raise CheckpointError(f"{run_dir / entry.file}: missing or changed since saved")
            registry.entries[entry.name] = entry
        registry._write()
        return registry

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
        self._write()
        return entry

    def _write(self) -> None:
        (self.folder / REGISTRY_FILE).write_text(
            json.dumps([asdict(e) for e in self.entries.values()], indent=2)
        )

    def load(self, name: str) -> dict[str, torch.Tensor]:
        """The state dict of checkpoint ``name``, after checking its SHA-256."""
        entry = self.entries[name]
        path = self.run_dir / entry.file
        if sha256_of(path) != entry.sha256:
            raise ValueError(f"{path}: SHA-256 does not match the registry; file changed")
        return torch.load(path, weights_only=True)


#: The checkpoint name of the model an evaluation-only job tests.
FROZEN_CHECKPOINT = "frozen"


def load_frozen_model(path: Path, config: ModelConfig) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (a PyTorch state dict, or a dict holding one under
    ``"state_dict"``), checked against the architecture ``config`` builds. Raises
    `CheckpointError` when the file is missing, not a checkpoint, or for another model."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: no such checkpoint file") from exc
    except Exception as exc:  # torch raises many kinds for files that are not checkpoints
        reason = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({reason})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    model = build_model(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        found = {"missing": missing, "unexpected": unexpected, "reshaped": wrong}
        problems = [f"{len(keys)} {what} (e.g. {keys[0]})" for what, keys in found.items() if keys]
        raise CheckpointError(
            f"{path}: not a checkpoint of the {config.architecture} model: {', '.join(problems)}"
        )
    return state
