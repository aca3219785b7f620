"""The site's privacy ledger: every release of a model trained on the site's data.

``SITE/privacy-ledger.jsonl`` holds one JSON entry per release, in order, and is only ever
appended to. Each entry carries the SHA-256 of the entry before it and its own hash, so an
edited, removed or reordered entry breaks the chain; ``SITE/privacy-ledger.head`` holds the
number of entries and the last hash, so a truncated or deleted ledger is noticed too. A
damaged ledger is an error (`LedgerError`), never a reset: the site refuses to train until
a person has looked at it, because resetting it would forget privacy already spent.

Budgets compose across runs: the site's spend is computed over all entries, whatever run
wrote them. Anyone can recompute every epsilon from the entries' parameters.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

LEDGER_FILE = "privacy-ledger.jsonl"
HEAD_FILE = "privacy-ledger.head"
GENESIS = "0" * 64


class LedgerError(RuntimeError):
    """The privacy ledger is damaged: edited, reordered, truncated or unreadable."""


@dataclass(frozen=True)
class LedgerEntry:
    """One release: a model trained on the site's training split left the site.

    run_id, round: which run and round (0 for the local-only baseline) released it.
    phase: "federated" or "local-only".
    steps, sample_rate, noise_multiplier, max_grad_norm: the DP-SGD parameters of the
        training that produced it (noise_multiplier 0: trained without DP).
    accountant: the accountant that computed the epsilons ("rdp" or "prv").
    delta: the site's delta.
    epsilon_run: this run's spend at the site after this release.
    epsilon_total: the site's spend over all runs after this release (inf after any
        release without DP).
    time: UTC, ISO 8601.
    """

    run_id: str
    round: int
    phase: str
    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    accountant: str
    delta: float
    epsilon_run: float
    epsilon_total: float
    time: str


class PrivacyLedger:
    """The append-only, hash-chained ledger of one site directory."""

    def __init__(self, site_dir: Path) -> None:
        self.path = site_dir / LEDGER_FILE
        self.head_path = site_dir / HEAD_FILE

    def entries(self) -> list[LedgerEntry]:
        """Every entry, in order, after checking the chain; `LedgerError` if it is damaged."""
        return [entry for entry, _ in self._verified()]

    def append(self, entry: LedgerEntry) -> None:
        """Add ``entry`` at the end (under a lock, flushed to disk before returning)."""
        with self._locked():
            chained = self._verified()
            previous = chained[-1][1] if chained else GENESIS
            record = {**_encode(asdict(entry)), "prev": previous}
            record["hash"] = _hash(record)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            self._write_head(len(chained) + 1, record["hash"])

    def _verified(self) -> list[tuple[LedgerEntry, str]]:
        head = self._read_head()
        if not self.path.exists():
            if head is not None and head[0] > 0:
                raise LedgerError(
                    f"{self.path}: missing, but {self.head_path} records {head[0]} entries; "
                    "the ledger was deleted (restore it from backup; it is never reset)"
                )
            return []
        chained: list[tuple[LedgerEntry, str]] = []
        previous = GENESIS
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            where = f"{self.path} line {number}"
            try:
                record = json.loads(line)
                claimed = record.pop("hash")
                prev = record["prev"]
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise LedgerError(f"{where}: not a ledger entry ({exc})") from exc
            if prev != previous:
                raise LedgerError(f"{where}: breaks the chain (an entry was removed or reordered)")
            if _hash(record) != claimed:
                raise LedgerError(f"{where}: hash mismatch (the entry was edited)")
            try:
                fields = _decode({k: v for k, v in record.items() if k != "prev"})
                chained.append((LedgerEntry(**fields), claimed))
            except TypeError as exc:
                raise LedgerError(f"{where}: not a ledger entry ({exc})") from exc
            previous = claimed
        if head is not None:
            count, last = head
            if len(chained) < count:
                raise LedgerError(
                    f"{self.path}: holds {len(chained)} entries but {self.head_path} records "
                    f"{count}; entries were removed from the end"
                )
            if count and chained[count - 1][1] != last:
                raise LedgerError(f"{self.path}: entry {count} does not match {self.head_path}")
        elif chained:
            raise LedgerError(f"{self.head_path}: missing for a ledger of {len(chained)} entries")
        return chained

    def _read_head(self) -> tuple[int, str] | None:
        if not self.head_path.exists():
            return None
        try:
            head = json.loads(self.head_path.read_text(encoding="utf-8"))
            return int(head["entries"]), str(head["last"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise LedgerError(f"{self.head_path}: unreadable ({exc})") from exc

    def _write_head(self, count: int, last: str) -> None:
        tmp = self.head_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"entries": count, "last": last}), encoding="utf-8")
        tmp.replace(self.head_path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.path.with_suffix(".lock")
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    """JSON has no infinity: an infinite epsilon is written as the string "inf"."""
    return {k: "inf" if v == float("inf") else v for k, v in fields.items()}


def _decode(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: float("inf") if v == "inf" else v for k, v in fields.items()}
