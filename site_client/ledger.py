"""The site's privacy ledger: every release of a model trained on the site's data.

``SITE/privacy-ledger.jsonl`` holds one JSON entry per release, in order: a hash-chained,
append-only log (`task.hashchain`) with its head in ``SITE/privacy-ledger.head``, so an
edited, removed, reordered or truncated entry, or a deleted ledger, is noticed. A damaged
ledger is an error (`LedgerError`), never a reset: the site refuses to train until a person
has looked at it, because resetting it would forget privacy already spent.

Budgets compose across runs: the site's spend is computed over all entries, whatever run
wrote them. Anyone can recompute every epsilon from the entries' parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from task.hashchain import ChainError, HashChainLog

LEDGER_FILE = "privacy-ledger.jsonl"
HEAD_FILE = "privacy-ledger.head"


class LedgerError(ChainError):
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
        self.log = HashChainLog(site_dir / LEDGER_FILE, site_dir / HEAD_FILE, LedgerError)
        self.path = self.log.path

    def entries(self) -> list[LedgerEntry]:
        """Every entry, in order, after checking the chain; `LedgerError` if it is damaged."""
        entries = []
        for number, record in enumerate(self.log.records(), start=1):
            try:
                entries.append(LedgerEntry(**_decode(record)))
            except TypeError as exc:
                raise LedgerError(f"{self.path} line {number}: not a ledger entry ({exc})") from exc
        return entries

    def append(self, entry: LedgerEntry) -> None:
        """Add ``entry`` at the end (under a lock, flushed to disk before returning)."""
        self.log.append(_encode(asdict(entry)))


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    """JSON has no infinity: an infinite epsilon is written as the string "inf"."""
    return {k: "inf" if v == float("inf") else v for k, v in fields.items()}


def _decode(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: float("inf") if v == "inf" else v for k, v in fields.items()}
