"""Resuming a federated job after its coordinator stopped mid-run.

Flower does not resume an interrupted run (its ServerApp dies with the SuperLink, and the
run ends ``finished:failed``), so a resumed job is a new Flower run that continues medfed's
job from the last round that finished. After every finished stage the job writes
``RUN/resume.json`` (`ResumePoint`) and the strategy's server-side state
(``RUN/server-state.npz``: e.g. FedAdam's moments), each file replaced atomically and the
state bound to the point by its SHA-256. A resumed job reads them back, keeps medfed's run id
(the sites account privacy per run id) and the round numbers, and sets aside the records of
the round that was cut short (``RUN/interrupted.jsonl``).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from server.checkpoints import sha256_of

RESUME_FILE = "resume.json"
SERVER_STATE_FILE = "server-state.npz"
INTERRUPTED_FILE = "interrupted.jsonl"
LOCK_FILE = ".job.lock"


class ResumeError(RuntimeError):
    """A run directory that cannot be resumed; the reason names the file."""


@dataclass(frozen=True)
class ServerState:
    """The strategy's own state between rounds.

    arrays: named arrays (FedAdam's first and second moments, ``m_t/<param>``, ``v_t/<param>``).
    values: JSON-able values (the sites that refused, central DP's accountant state).
    """

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Resumption:
    """One restart of the job: after which finished round, as which Flower run, when (UTC)."""

    after_round: int
    flower_run: int
    time: str


@dataclass(frozen=True)
class ResumePoint:
    """Where a job stands, as of its last finished stage.

    run_id: medfed's run id, kept across restarts. created: when the job first started (UTC).
    completed_round: the last federated round whose evaluation finished (0: none yet).
    local_models: the local-only baselines' checkpoint names once that stage finished, else
        None (the stage runs again). server_state_sha256: of ``server-state.npz``, "" if none.
    resumptions: the restarts so far.
    """

    run_id: str
    created: str
    completed_round: int = 0
    local_models: dict[str, str] | None = None
    server_state_sha256: str = ""
    server_values: dict[str, Any] = field(default_factory=dict)
    resumptions: tuple[Resumption, ...] = ()


class ResumeLog:
    """``RUN/resume.json`` and ``RUN/server-state.npz`` of one run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / RESUME_FILE
        self.state_path = run_dir / SERVER_STATE_FILE

    def save(self, point: ResumePoint, state: ServerState | None = None) -> ResumePoint:
        """Record ``point`` (with ``state``'s arrays and values when given); returns it as
        written. The state is written before the point that names its hash."""
        if state is not None:
            digest = ""
            if state.arrays:
                _replace_atomically(self.state_path, lambda p: _save_arrays(p, state.arrays))
                digest = sha256_of(self.state_path)
            point = replace(point, server_state_sha256=digest, server_values=state.values)
        document = json.dumps(asdict(point), indent=2, sort_keys=True)
        _replace_atomically(self.path, lambda p: p.write_text(document, encoding="utf-8"))
        return point

    def read(self) -> tuple[ResumePoint, ServerState]:
        """The last point and the server state it names; `ResumeError` if either is missing,
        malformed or the state's hash does not match."""
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            point = ResumePoint(
                **{
                    **document,
                    "resumptions": tuple(Resumption(**r) for r in document["resumptions"]),
                }
            )
        except FileNotFoundError as exc:
            raise ResumeError(
                f"{self.path}: missing; the run stopped before its first stage finished "
                "(start it again instead)"
            ) from exc
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise ResumeError(f"{self.path}: not a resume point ({exc})") from exc
        if not point.server_state_sha256:
            return point, ServerState(values=point.server_values)
        if not self.state_path.is_file() or sha256_of(self.state_path) != (
            point.server_state_sha256
        ):
            raise ResumeError(
                f"{self.state_path}: missing or changed since round {point.completed_round} "
                "(SHA-256 does not match resume.json)"
            )
        with np.load(self.state_path, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files}
        return point, ServerState(arrays, point.server_values)


def _save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with path.open("wb") as handle:
        np.savez(handle, **arrays)


def _replace_atomically(path: Path, write: Any) -> None:
    """Write ``path`` through a temporary file and an atomic rename, synced to disk, so that
    a crash leaves either the old file or the new one."""
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    with temporary.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def set_aside_interrupted(rounds_file: Path, point: ResumePoint) -> int:
    """Move the records of stages that did not finish before ``point`` (the round cut short;
    local-only baselines if that stage was) from ``rounds_file`` to ``interrupted.jsonl``
    beside it, each marked with the round the job resumes after; how many were moved."""
    if not rounds_file.exists():
        return 0
    kept, moved = [], []
    for line in rounds_file.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the crash
        if entry.get("phase") == "local-only":
            finished = point.local_models is not None
        else:
            finished = int(entry.get("round") or 0) <= point.completed_round
        (kept if finished else moved).append(entry)
    if moved:
        with (rounds_file.parent / INTERRUPTED_FILE).open("a", encoding="utf-8") as handle:
            for entry in moved:
                handle.write(json.dumps(entry | {"resumed_after": point.completed_round}) + "\n")
    text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in kept)
    _replace_atomically(rounds_file, lambda p: p.write_text(text, encoding="utf-8"))
    return len(moved)


@contextmanager
def run_directory_lock(run_dir: Path, wait_s: float) -> Iterator[None]:
    """Hold ``RUN/.job.lock`` exclusively while the block runs, waiting up to ``wait_s``
    for another holder (an interrupted job's ServerApp that has not exited yet);
    `ResumeError` if it is still held then. The lock ends with its process."""
    with (run_dir / LOCK_FILE).open("a") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ResumeError(
                        f"{run_dir}: another job still writes this run directory"
                    ) from None
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
