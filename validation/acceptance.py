"""Acceptance criteria evaluated on the evidence.

This is the default plan every run is held to, the targets medfed itself is built for:

1. the global model's pooled test AUC is at least 0.90;
2. it reaches at least 0.97 x the pooled-centralized AUC of the same run (simulations);
3. it beats the median local-only model on the sites that model never saw: for each
   local-only model, the global model's AUC on the other sites' test data minus that
   model's AUC there; the median of these margins is above 0. Pooling the unseen sites
   keeps each comparison on enough cases to mean something; a single small site's AUC
   can tie at 1.0.

Each entry is ``{criterion, scope, value, threshold, passed}``; ``passed`` is None when a
criterion cannot be evaluated (e.g. no pooled-centralized baseline), with the reason.
Pre-specified plans read from a file come with the validation issue.
"""

from __future__ import annotations

from statistics import median
from typing import Any

MIN_POOLED_AUC = 0.90
MIN_FRACTION_OF_CENTRALIZED = 0.97


def evaluate_default_plan(evidence: dict[str, Any]) -> list[dict[str, Any]]:
    """The default plan's entries for ``evidence`` (see the module docstring)."""
    pooled_auc = (evidence["performance"]["pooled"]["auc"] or {}).get("value")
    entries = [
        _entry(
            f"global model pooled test AUC >= {MIN_POOLED_AUC}",
            "pooled",
            pooled_auc,
            MIN_POOLED_AUC,
            None if pooled_auc is None else pooled_auc >= MIN_POOLED_AUC,
        )
    ]
    centralized = evidence["baselines"].get("pooled_centralized", {}).get("auc")
    if pooled_auc is None or centralized is None:
        entries.append(
            _entry(
                f"global AUC >= {MIN_FRACTION_OF_CENTRALIZED} x pooled-centralized AUC",
                "pooled",
                None,
                MIN_FRACTION_OF_CENTRALIZED,
                None,
                "not evaluated: no pooled-centralized baseline in this run",
            )
        )
    else:
        ratio = pooled_auc / centralized["value"]
        entries.append(
            _entry(
                f"global AUC >= {MIN_FRACTION_OF_CENTRALIZED} x pooled-centralized AUC",
                "pooled",
                ratio,
                MIN_FRACTION_OF_CENTRALIZED,
                ratio >= MIN_FRACTION_OF_CENTRALIZED,
            )
        )
    rows = evidence["baselines"]["unseen_site_comparison"].values()
    margins = [
        r["global_auc"] - r["local_only_auc"]
        for r in rows
        if r["global_auc"] is not None and r["local_only_auc"] is not None
    ]
    criterion = "global beats the median local-only model on the sites it never saw"
    if margins:
        margin = median(margins)
        entries.append(_entry(criterion, "unseen sites", margin, 0.0, margin > 0))
    else:
        entries.append(
            _entry(
                criterion, "unseen sites", None, 0.0, None, "not evaluated: no local-only models"
            )
        )
    return entries


def _entry(
    criterion: str,
    scope: str,
    value: float | None,
    threshold: float | None,
    passed: bool | None,
    note: str | None = None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "criterion": criterion,
        "scope": scope,
        "value": value,
        "threshold": threshold,
        "passed": passed,
    }
    if note:
        entry["note"] = note
    return entry
