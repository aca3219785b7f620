"""Who is in the federation: each site's profile, as it answered ``query.profile``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from task.wire import MSG_PROFILE, PROFILE, STRATUM_SUBGROUP


class FederationError(RuntimeError):
    """The federation cannot go on (too few sites, a site that cannot take part, ...)."""


@dataclass(frozen=True)
class ScannerCount:
    """Cases of one scanner group at a site."""

    manufacturer: str
    model: str
    n_train: int
    n_test: int

    @property
    def name(self) -> str:
        return f"{self.manufacturer} {self.model}".strip()


@dataclass(frozen=True)
class SiteProfile:
    """A site as the coordinator knows it: its node, id, case counts (no case data) and how
    its cases were de-identified (None when the site does not say)."""

    node_id: int
    site_id: str
    min_cell_size: int
    n_train: int
    n_test: int
    n_train_positive: int
    n_test_positive: int
    scanners: tuple[ScannerCount, ...]
    deidentification: dict[str, Any] | None = None
    acquisition: dict[str, Any] = field(default_factory=dict)
    subgroups: dict[str, Any] = field(default_factory=dict)
    intake: dict[str, Any] | None = None
    audit_head: tuple[int, str] | None = None

    @classmethod
    def from_record(cls, node_id: int, record: ConfigRecord) -> SiteProfile:
        scanners = tuple(
            ScannerCount(str(m), str(model), int(a), int(b))
            for m, model, a, b in zip(
                record["scanner-manufacturers"],
                record["scanner-models"],
                record["scanner-n-train"],
                record["scanner-n-test"],
                strict=True,
            )
        )
        return cls(
            node_id=node_id,
            site_id=str(record["site-id"]),
            min_cell_size=int(record["min-cell-size"]),
            n_train=int(record["n-train"]),
            n_test=int(record["n-test"]),
            n_train_positive=int(record["n-train-positive"]),
            n_test_positive=int(record["n-test-positive"]),
            scanners=scanners,
            deidentification=(
                {
                    "profile": str(record["deid-profile"]),
                    "standard": str(record.get("deid-standard", "")),
                    "options": [str(o) for o in record.get("deid-options", [])],
                    "table_sha256": str(record.get("deid-table-sha256", "")),
                    "software": str(record.get("deid-software", "")),
                }
                if "deid-profile" in record
                else None
            ),
            acquisition=_acquisition(record),
            subgroups=_subgroups(record),
            intake=_intake(record),
            audit_head=(
                (int(record["audit-entries"]), str(record["audit-head"]))  # type: ignore[arg-type]
                if "audit-head" in record
                else None
            ),
        )


def _counts(record: ConfigRecord, names_key: str, counts_key: str) -> dict[str, int]:
    """``{name: count}`` from a profile's parallel lists (empty when the site sends none)."""
    names, counts = record.get(names_key, []), record.get(counts_key, [])
    return {str(n): int(c) for n, c in zip(names, counts, strict=True)}  # type: ignore[arg-type]


def _acquisition(record: ConfigRecord) -> dict[str, Any]:
    """Modalities, body parts (name -> cases) and the range of original study years
    (``{first, last, n}``; None when no case has a study date)."""
    years = None
    if "study-year-first" in record:
        years = {
            "first": int(record["study-year-first"]),  # type: ignore[arg-type]
            "last": int(record["study-year-last"]),  # type: ignore[arg-type]
            "n": int(record["study-year-n"]),  # type: ignore[arg-type]
        }
    return {
        "modalities": _counts(record, "modalities", "modality-n"),
        "body_parts": _counts(record, "body-parts", "body-part-n"),
        "study_years": years,
    }


def _subgroups(record: ConfigRecord) -> dict[str, Any]:
    """Training and test cases per subgroup column and value, and the strata suppressed
    (``"<column>=<value>"``)."""
    counts: dict[str, dict[str, dict[str, int]]] = {}
    strata = [str(s) for s in record.get("subgroup-strata", [])]  # type: ignore[union-attr]
    for stratum, n_train, n_test in zip(
        strata, record.get("subgroup-n-train", []), record.get("subgroup-n-test", []), strict=True
    ):
        column, value = _subgroup_of(stratum)
        counts.setdefault(column, {})[value] = {"n_train": int(n_train), "n_test": int(n_test)}
    suppressed = [
        "=".join(_subgroup_of(str(s)))
        for s in record.get("subgroup-suppressed", [])  # type: ignore[union-attr]
    ]
    return {"counts": counts, "suppressed": suppressed}


def _subgroup_of(stratum: str) -> tuple[str, str]:
    """``("sex", "F")`` from the stratum name ``subgroup:sex=F``."""
    kind, _, value = stratum.partition("=")
    return kind.removeprefix(f"{STRATUM_SUBGROUP}:"), value


def _intake(record: ConfigRecord) -> dict[str, Any] | None:
    """The site's intake sessions added up (None when the site does not say)."""
    if "intake-sessions" not in record:
        return None
    return {
        "sessions": int(record["intake-sessions"]),  # type: ignore[arg-type]
        "received": int(record["intake-received"]),  # type: ignore[arg-type]
        "stored": int(record["intake-stored"]),  # type: ignore[arg-type]
        "already_stored": int(record["intake-already-stored"]),  # type: ignore[arg-type]
        "quarantined": int(record["intake-quarantined"]),  # type: ignore[arg-type]
        "failed": int(record["intake-failed"]),  # type: ignore[arg-type]
        "quarantine_reasons": _counts(record, "intake-quarantine-reasons", "intake-quarantine-n"),
    }


def discover_sites(grid: Grid, expected: int, timeout_s: float) -> list[SiteProfile]:
    """Wait for ``expected`` sites to connect, ask each for its profile, and return the
    profiles in site-id order. Raises `FederationError` naming any site that cannot take
    part (no reply, an error, no training or test cases, a duplicate id)."""
    deadline = time.monotonic() + timeout_s
    while len(node_ids := sorted(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise FederationError(
                f"only {len(node_ids)} of {expected} sites connected within {timeout_s:.0f} s"
            )
        time.sleep(0.5)
    messages = [
        Message(RecordDict(), dst_node_id=node_id, message_type=MSG_PROFILE) for node_id in node_ids
    ]
    replies = list(grid.send_and_receive(messages, timeout=timeout_s))
    answered = {reply.metadata.src_node_id for reply in replies}
    problems = [f"node {n}: no reply" for n in node_ids if n not in answered]
    profiles: list[SiteProfile] = []
    for reply in replies:
        node_id = reply.metadata.src_node_id
        if reply.has_error():
            problems.append(f"node {node_id}: {reply.error.reason}")
            continue
        profile = SiteProfile.from_record(node_id, reply.content[PROFILE])
        if profile.n_train == 0 or profile.n_test == 0:
            problems.append(
                f"site {profile.site_id}: needs training and test cases "
                f"(has {profile.n_train} and {profile.n_test})"
            )
        profiles.append(profile)
    ids = [p.site_id for p in profiles]
    problems += [
        f"site id {i!r} is used by two sites" for i in sorted(set(ids)) if ids.count(i) > 1
    ]
    if problems:
        raise FederationError("; ".join(problems))
    return sorted(profiles, key=lambda p: p.site_id)
