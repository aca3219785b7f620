"""Who took part in each federated round, from the coordinator's records (``rounds.jsonl``).

Every train and evaluate entry of a round carries an ``outcome`` (`OUTCOMES`), set by the
coordinator (`server.strategies.RecordingStrategy`) from what it received, never from what a
simulation injected:

- ``accepted``: a train reply that passed the coordinator's checks and went to the strategy;
- ``evaluated``: an evaluate reply;
- ``rejected``: a malformed update (NaN, a shape or dtype unlike the global model's, a
  missing array, ...), never aggregated; its reason is recorded;
- ``dropped out``: the site was unavailable (Flower's node-unavailable error);
- ``cut off``: no reply within the round's timeout (a straggler);
- ``refused``: the site refused on privacy grounds;
- ``failed``: any other error (e.g. the site's ClientApp raised).

Entries written before outcomes existed are classified from their keys. Pure functions over
JSON records; no Flower.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

ACCEPTED = "accepted"
EVALUATED = "evaluated"
REJECTED = "rejected"
DROPPED_OUT = "dropped out"
CUT_OFF = "cut off"
REFUSED = "refused"
FAILED = "failed"
OUTCOMES = (ACCEPTED, EVALUATED, REJECTED, DROPPED_OUT, CUT_OFF, REFUSED, FAILED)
#: The outcomes that come with a reason (``reason`` in the participation record).
_WITH_REASON = (REJECTED, REFUSED, FAILED)
#: The phases of a federated round whose entries have an outcome.
ROUND_PHASES = ("train", "evaluate")


def outcome_of(entry: dict[str, Any]) -> str:
    """The outcome of a train or evaluate entry (its ``outcome``, else read from its keys)."""
    if "outcome" in entry:
        return str(entry["outcome"])
    if "refused" in entry:
        return REFUSED
    if "error" in entry:
        return FAILED
    return ACCEPTED if entry["phase"] == "train" else EVALUATED


def reason_of(entry: dict[str, Any]) -> str | None:
    """Why a train or evaluate reply was not used (None when it was)."""
    return entry.get("rejected") or entry.get("refused") or entry.get("error")


def round_participation(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Who took part in one round, from its train and evaluate ``entries``.

    Returns ``asked`` (sites asked to train), one list of sites per outcome of the training
    (``accepted``, ``dropped_out``, ``cut_off``; ``rejected``, ``refused`` and ``failed`` as
    ``{site, reason}``), and ``evaluated`` (sites whose evaluation came back).
    """
    record: dict[str, Any] = {"asked": []}
    record |= {outcome.replace(" ", "_"): [] for outcome in OUTCOMES if outcome != EVALUATED}
    record["evaluated"] = []
    for entry in entries:
        outcome = outcome_of(entry)
        if entry["phase"] == "evaluate":
            if outcome == EVALUATED:
                record["evaluated"].append(entry["site"])
            continue
        record["asked"].append(entry["site"])
        key = outcome.replace(" ", "_")
        if outcome in _WITH_REASON:
            record[key].append({"site": entry["site"], "reason": reason_of(entry)})
        else:
            record[key].append(entry["site"])
    return record


def participation_by_site(entries: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """For each site, how many of the federated rounds' train requests ended in each
    outcome (only the outcomes that occurred), over all ``entries`` of rounds.jsonl."""
    counts: dict[str, Counter[str]] = {}
    for entry in entries:
        if entry.get("phase") == "train" and entry.get("round", 0) > 0:
            counts.setdefault(entry["site"], Counter())[outcome_of(entry)] += 1
    return {site: dict(sorted(c.items())) for site, c in sorted(counts.items())}
