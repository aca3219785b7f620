"""The audit trail of a site or of the coordinator: who did what, when.

An append-only, hash-chained log (`task.hashchain`): ``audit.jsonl`` and its head file
``audit.head`` in the site directory or the coordinator's directory. Each entry is an
`AuditEntry`: the time (UTC), the actor (a site id or ``coordinator``), the event, the run
and round it belongs to, and details that are identifiers of things, never of people:
hashes, counts, epsilons, reasons. `AuditEntry` refuses anything else (a nested value, a
long text), so no case data and no PHI can be written into a trail by mistake.

``medfed audit verify LOG`` (`verify_audit_log`) checks a trail: an edited, removed,
reordered or truncated entry is a one-line error naming the line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from task.hashchain import ChainError, HashChainLog

AUDIT_FILE = "audit.jsonl"
COORDINATOR = "coordinator"
#: The longest text a detail may hold (a reason, a hash, an id).
MAX_DETAIL_CHARS = 300


class AuditError(ChainError):
    """An audit trail is damaged, or an entry would hold what a trail may not."""


class AuditEvent(StrEnum):
    """What happened."""

    RUN_STARTED = "run started"
    RUN_FINISHED = "run finished"
    RUN_RESUMED = "run resumed"
    SITE_JOINED = "site joined"
    ROUND_FINISHED = "round finished"
    MODEL_SENT = "model sent"
    MODEL_RECEIVED = "model received"
    MODEL_REJECTED = "model rejected"
    UPDATE_REJECTED = "update rejected"
    EPSILON_SPENT = "epsilon spent"
    REFUSED = "refused"
    TASK_APPROVED = "task approved"
    COORDINATOR_STARTED = "coordinator started"
    SITE_REGISTERED = "site registered"
    RUN_SUBMITTED = "run submitted"
    DRIFT_CHECKED = "drift checked"
    RESULTS_DELIVERED = "results delivered"
    REVIEW_QUEUE_BUILT = "review queue built"
    LABEL_REVIEWED = "label reviewed"


Detail = str | int | float | bool | None


@dataclass(frozen=True)
class AuditEntry:
    """One audit entry. ``details``: flat, short, non-identifying values (hashes, counts,
    epsilons, reasons); `AuditError` otherwise."""

    actor: str
    event: AuditEvent
    run_id: str = ""
    round: int | None = None
    details: dict[str, Detail] = field(default_factory=dict)
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def __post_init__(self) -> None:
        for key, value in self.details.items():
            if not isinstance(value, Detail):  # type: ignore[arg-type]
                raise AuditError(f"audit detail {key!r} must be a plain value, not {value!r}")
            if isinstance(value, str) and len(value) > MAX_DETAIL_CHARS:
                raise AuditError(f"audit detail {key!r} is longer than {MAX_DETAIL_CHARS} chars")

    def to_record(self) -> dict[str, Any]:
        return {**asdict(self), "event": str(self.event)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> AuditEntry:
        return cls(**{**record, "event": AuditEvent(record["event"])})


class AuditLog:
    """The audit trail ``path`` (e.g. ``audit.jsonl``) with its head file beside it
    (``audit.head``)."""

    def __init__(self, path: Path) -> None:
        self.log = HashChainLog(path, path.with_suffix(".head"), AuditError)

    @classmethod
    def in_folder(cls, folder: Path) -> AuditLog:
        """The trail of a site or coordinator directory: ``folder/audit.jsonl``."""
        return cls(folder / AUDIT_FILE)

    @property
    def path(self) -> Path:
        return self.log.path

    def record(self, entry: AuditEntry) -> str:
        """Append ``entry``; returns its hash."""
        return self.log.append(entry.to_record())

    def entries(self) -> list[AuditEntry]:
        """Every entry, in order, after checking the chain; `AuditError` if it is damaged."""
        entries = []
        for number, record in enumerate(self.log.records(), start=1):
            try:
                entries.append(AuditEntry.from_record(record))
            except (TypeError, ValueError, KeyError) as exc:
                raise AuditError(f"{self.path} line {number}: not an audit entry ({exc})") from exc
        return entries

    def head(self) -> tuple[int, str]:
        """``(entries, last hash)``: what another party may record to anchor this trail."""
        return self.log.head()


@dataclass(frozen=True)
class AuditSummary:
    """A verified trail: its entries, the last hash, and its first and last times."""

    entries: int
    last_hash: str
    first: str
    last: str


def verify_audit_log(path: Path) -> AuditSummary:
    """Check the trail ``path`` (a log file, or a folder holding ``audit.jsonl``) with its
    head file; `AuditError` with one line naming the damage."""
    log = AuditLog.in_folder(path) if path.is_dir() else AuditLog(path)
    if not log.path.exists() and not log.log.head_path.exists():
        raise AuditError(f"{log.path}: no audit trail here")
    entries = log.entries()
    count, last = log.head()
    return AuditSummary(
        count, last, entries[0].time if entries else "", entries[-1].time if entries else ""
    )
