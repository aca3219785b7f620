"""The intake report: what one ingest, receive or deid session did, in counts only (no
paths, names or UIDs), so that it may be shown to anyone. Written as JSON. And the reasons
intake turns an instance away (decoding has its own, `site_client.decode.DecodeProblem`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any


class IntakeProblem(StrEnum):
    """Quarantine reason categories found at intake (decoding has `DecodeProblem`)."""

    NO_UID = "no SOP Instance UID"
    DUPLICATE = "duplicate SOP Instance UID"
    DEID_FAILED = "de-identification failed"
    NO_LABEL = "no label"
    INVALID_LABEL = "invalid label row"
    MASK = "mask problem"
    BURNED_IN_TEXT = "may carry burned-in text"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class IntakeReport:
    """Counts of one intake session; ``received == stored + already_stored + quarantined +
    failed``.

    kind: ``ingest``, ``receive`` or ``deid``.
    received: files found (ingest, deid) or instances received (receive).
    quarantine_reasons: reason category -> number of instances.
    failed: instances refused because keeping them failed (disk, encryption; receive: the
        sender was told to try again), so that they are in neither the store nor the quarantine.
    splits: split -> number of newly stored cases (ingest).
    label_problems: labels.csv rows naming no file or unusable (ingest).
    deidentification: the profile, its options and the table's SHA-256 (`Deidentifier.method`).
    """

    kind: str
    deidentification: dict[str, object]
    started: str = field(default_factory=_now)
    finished: str = ""
    received: int = 0
    stored: int = 0
    already_stored: int = 0
    quarantined: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    burned_in_masked: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    label_problems: int = 0

    def count_quarantined(self, category: str) -> None:
        """Count one quarantined instance."""
        self.quarantined += 1
        self.quarantine_reasons[category] = self.quarantine_reasons.get(category, 0) + 1

    def write(self, folder: Path) -> Path:
        """Write the report, finished now, as ``folder/<finished>-<kind>.json``; returns
        the path."""
        self.finished = _now()
        folder.mkdir(parents=True, exist_ok=True)
        stamp = self.finished.replace(":", "").replace("+0000", "Z")
        path = folder / f"{stamp}-{self.kind}.json"
        serial = 1
        while path.exists():
            serial += 1
            path = folder / f"{stamp}-{self.kind}-{serial}.json"
        self.write_to(path)
        return path

    def write_to(self, path: Path) -> None:
        """Write the report, finished now (unless already), to ``path``, atomically (a
        receiver rewrites its report while it runs)."""
        self.finished = self.finished or _now()
        # Only the report's own fields: a subclass may hold per-file details for the console.
        content = {f.name: getattr(self, f.name) for f in fields(IntakeReport)}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)


def _reports(folder: Path) -> list[dict[str, Any]]:
    """The readable intake reports in ``folder``, newest first (reports are named by their
    time); a damaged one says nothing and is passed over."""
    reports = []
    for path in sorted(folder.glob("*.json"), reverse=True):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(report, dict):
            reports.append(report)
    return reports


def latest_deidentification(folder: Path) -> dict[str, Any] | None:
    """The ``deidentification`` of the newest intake report in ``folder``, or None when
    there is none."""
    for report in _reports(folder):
        method = report.get("deidentification")
        if isinstance(method, dict):
            return method
    return None


@dataclass
class IntakeTotals:
    """The counts of every intake session of a site added up (``received == stored +
    already_stored + quarantined + failed``), with the quarantine reasons."""

    sessions: int = 0
    received: int = 0
    stored: int = 0
    already_stored: int = 0
    quarantined: int = 0
    failed: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)


def intake_totals(folder: Path) -> IntakeTotals:
    """The `IntakeTotals` of the intake reports in ``folder`` (a damaged report counts as
    no session)."""
    totals = IntakeTotals()
    counts = ("received", "stored", "already_stored", "quarantined", "failed")
    for report in _reports(folder):
        values = [report.get(name, 0) for name in counts]
        reasons = report.get("quarantine_reasons", {})
        if not all(isinstance(v, int) for v in values) or not isinstance(reasons, dict):
            continue
        totals.sessions += 1
        for name, value in zip(counts, values, strict=True):
            setattr(totals, name, getattr(totals, name) + value)
        for reason, n in reasons.items():
            if isinstance(n, int):
                totals.quarantine_reasons[reason] = totals.quarantine_reasons.get(reason, 0) + n
    return totals
