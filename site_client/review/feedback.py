"""A reviewer's labels back into the site store (``medfed site review feedback``).

The CSV is keyed by case id (the pseudonyms the review queue shows): columns ``case_id``,
``label`` (0/1), optional ``reviewer`` (a short plain token: initials or a staff id) and
``comment``. A case of the manifest gets the label (its split and everything else stay); a
received case waiting for one joins the manifest with it, split as ``medfed site label``
splits (`site_client.received.admit_received`). The manifest's new modification time makes
the site's next training or evaluation read the new labels (`site_client.dataset.load_split`
is cached per manifest version).

All rows or none: every row is checked first, and the first unusable one is a one-line error
naming its line; only then is the manifest rewritten, in one atomic write. Each row is
recorded in the site's audit trail (case id, old label, none for a received case, new
label, reviewer, the feedback file's SHA-256). Comments are free text that could hold
anything, PHI included: they are read for the reviewer's convenience and never kept.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from site_client.deid import PSEUDONYM_KINDS
from site_client.received import admit_received, check_test_fraction, waiting_cases
from site_client.review import ReviewError
from site_client.store import SiteStore
from task.audit import AuditEntry, AuditEvent, AuditLog
from task.labels import KeyColumn, read_labels

#: Optional columns of a feedback file besides case_id and label.
FEEDBACK_COLUMNS = ("reviewer", "comment")
_CASE = PSEUDONYM_KINDS["case"]
_CASE_ID = re.compile(rf"^{_CASE.prefix}[0-9a-f]{{{_CASE.hex_digits}}}$")
_REVIEWER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


def _case_key(raw: str) -> tuple[str, str | None]:
    case_id = raw.strip()
    if not _CASE_ID.match(case_id):
        return case_id, (
            f"case_id must be a case id ({_CASE.prefix} and {_CASE.hex_digits} hex digits), "
            f"got {case_id!r}"
        )
    return case_id, None


#: Feedback rows name cases by their pseudonymous id; a review changes labels, not splits.
CASE_KEY = KeyColumn(
    "case_id", _case_key, refused_columns=("path", "sop_instance_uid", "mask", "split")
)


@dataclass
class FeedbackOutcome:
    """What a review's feedback did: rows read; labels corrected and confirmed (manifest
    cases); received cases labelled, and the splits they joined."""

    rows: int = 0
    corrected: int = 0
    confirmed: int = 0
    labelled: int = 0
    splits: dict[str, int] = field(default_factory=dict)


def _check_reviewer(reviewer: str, where: str) -> str:
    """``reviewer`` if it is a short plain token; `ReviewError` saying ``where`` otherwise."""
    if not _REVIEWER.match(reviewer):
        raise ReviewError(
            f"{where}: reviewer must be a short plain token (letters, digits, '_', '.', '-'; "
            f"at most 32), got {reviewer!r}"
        )
    return reviewer


def apply_feedback(
    store: SiteStore,
    labels_csv: Path,
    reviewer: str | None = None,
    seed: int = 0,
    test_fraction: float = 0.3,
) -> FeedbackOutcome:
    """Apply ``labels_csv`` (see the module docstring) to ``store``: all rows or none.
    ``reviewer``: for rows without one. ``seed``, ``test_fraction``: the split of received
    cases, as ``medfed site label``. `ReviewError` or `LabelsFileError` naming the file or
    row before anything changes."""
    check_test_fraction(test_fraction)
    if reviewer is not None:
        _check_reviewer(reviewer, "--reviewer")
    labels = read_labels(labels_csv, key=CASE_KEY)
    unknown = [c for c in labels.subgroup_columns if c not in FEEDBACK_COLUMNS]
    if unknown:
        raise ReviewError(
            f"{labels_csv}: unknown column(s) {', '.join(unknown)} (a review gives case_id, "
            f"label and optionally {' and '.join(FEEDBACK_COLUMNS)})"
        )
    if labels.errors:
        error = min(labels.errors, key=lambda e: e.line)
        raise ReviewError(f"{labels_csv} line {error.line}: {error.reason}; nothing applied")
    if not labels.rows:
        raise ReviewError(f"{labels_csv}: no rows")
    manifest = store.read_manifest()
    old_labels = {r.case_id: r.label for r in manifest}
    received = waiting_cases(store, set(old_labels))
    rows = sorted(labels.rows.values(), key=lambda row: row.line)
    reviewers: dict[str, str | None] = {}
    for row in rows:
        where = f"{labels_csv} line {row.line}"
        if row.path not in old_labels and row.path not in received:
            raise ReviewError(
                f"{where}: case {row.path} is not a case of site {store.site_id}; nothing applied"
            )
        given = row.subgroups.get("reviewer") or reviewer
        reviewers[row.path] = None if given is None else _check_reviewer(given, where)
    new_labels = {row.path: row.label for row in rows}
    digest = hashlib.sha256(labels_csv.read_bytes()).hexdigest()
    admitted = admit_received(
        store,
        [replace(r, label=new_labels.get(r.case_id, r.label)) for r in manifest],
        # reviewer and comment are no subgroups of the case
        [(received[row.path], replace(row, subgroups={})) for row in rows if row.path in received],
        seed,
        test_fraction,
    )
    outcome = FeedbackOutcome(rows=len(rows), labelled=len(admitted))
    for record in admitted:
        outcome.splits[record.split] = outcome.splits.get(record.split, 0) + 1
    trail = AuditLog.in_folder(store.root)
    for row in rows:
        old = old_labels.get(row.path)
        if old is not None:
            outcome.corrected += old != row.label
            outcome.confirmed += old == row.label
        trail.record(
            AuditEntry(
                store.site_id,
                AuditEvent.LABEL_REVIEWED,
                details={
                    "case_id": row.path,
                    "old_label": old,
                    "new_label": row.label,
                    "reviewer": reviewers[row.path],
                    "feedback_sha256": digest,
                },
            )
        )
    return outcome


def reviewed_since(store: SiteStore, since: str) -> set[str]:
    """The case ids whose labels a review fed back at or after ``since`` (ISO 8601, UTC),
    from the site's audit trail."""
    return {
        str(entry.details["case_id"])
        for entry in AuditLog.in_folder(store.root).entries()
        if entry.event == AuditEvent.LABEL_REVIEWED and entry.time >= since
    }
