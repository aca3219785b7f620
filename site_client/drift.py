"""Drift monitoring at the site: new data against the data the model was validated on.

The reference window is the site's labelled cases (its store's manifest: what the model
was trained and validated on); the new data are the cases received since and not labelled
yet (`site_client.received`: what the model meets in production). Per image the site
measures the stored pixel values' mean and standard deviation (modality units, before any
normalisation, so that a change of gain, offset or noise shows) and the model's score (its
logit), then compares the new data with the reference, feature by feature, site-wide and
per scanner group, with `validation.drift` (PSI and KS on the reference's quantile bins).

A scanner group among the new data that the reference window does not have is unvalidated:
an alarm in itself. A comparison needs at least the site's minimum cell size of cases on
each side; smaller groups are listed as too small, never compared. What leaves the site
(`DriftReport.to_config`, `task.wire.DRIFT_KEYS`) is these statistics and counts of at
least the minimum cell size: no image, score or case.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from site_client.received import ReceivedIndex
from site_client.store import SiteStore
from site_client.training import image_logits
from task.audit import AuditEntry, AuditEvent, AuditLog
from task.transforms import preprocess_all
from validation.drift import DriftResult, compare

#: The features compared, in order.
FEATURES = ("intensity-mean", "intensity-std", "score")
#: Quantile bins of the reference window that each feature is counted in (deciles, as PSI
#: is usually computed).
N_QUANTILE_BINS = 10
#: The whole site's group name (as strata are named in `task.wire`).
SITE_GROUP = "site=all"
REPORTS_DIR = "drift-reports"


@dataclass(frozen=True)
class Window:
    """Per-case features of a set of cases: ``values[feature]`` (N,) and ``groups`` (N,)
    scanner groups."""

    values: dict[str, np.ndarray]
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.groups)

    def of_group(self, group: str) -> Window:
        """The cases of scanner group ``group`` (`SITE_GROUP`: all of them)."""
        if group == SITE_GROUP:
            return self
        keep = self.groups == group
        return Window({k: v[keep] for k, v in self.values.items()}, self.groups[keep])


def measure(
    store: SiteStore, case_ids: list[str], groups: list[str], model: nn.Module, image_size: int
) -> Window:
    """The features of ``case_ids`` of ``store`` (scanner ``groups`` in the same order),
    ``model`` scoring them as the site's training and evaluation do."""
    images = [store.load_image(case_id) for case_id in case_ids]
    scores = image_logits(model, preprocess_all(images, image_size)) if images else np.empty(0)
    return Window(
        {
            "intensity-mean": np.array([float(np.mean(i)) for i in images]),
            "intensity-std": np.array([float(np.std(i)) for i in images]),
            "score": np.asarray(scores, dtype=np.float64),
        },
        np.array(groups, dtype=object),
    )


def quantile_counts(reference: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of ``reference`` and ``new`` in the bins between the reference's
    `N_QUANTILE_BINS`-quantiles (first and last bins open-ended)."""
    quantiles = np.linspace(0, 1, N_QUANTILE_BINS + 1)[1:-1]
    edges = np.unique(np.quantile(reference, quantiles))

    def count(values: np.ndarray) -> np.ndarray:
        return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)

    return count(reference), count(new)


@dataclass(frozen=True)
class GroupDrift:
    """The comparisons of one group: ``results`` one per feature."""

    group: str
    results: tuple[DriftResult, ...]

    @property
    def alarm(self) -> bool:
        return any(r.alarm for r in self.results)


@dataclass(frozen=True)
class DriftReport:
    """A site's drift check.

    n_reference, n_new: cases in each window. groups: the groups compared. unvalidated:
    scanner groups of the new data absent from the reference (with their case counts).
    too_small: groups with fewer cases than the minimum cell size on a side.
    """

    site_id: str
    n_reference: int
    n_new: int
    groups: tuple[GroupDrift, ...] = ()
    unvalidated: dict[str, int] = field(default_factory=dict)
    too_small: tuple[str, ...] = ()

    @property
    def alarm(self) -> bool:
        """Whether any group drifted, or new data came from a scanner never validated on."""
        return bool(self.unvalidated) or any(g.alarm for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        """Everything, for the site's own report file."""
        return {
            "site": self.site_id,
            "alarm": self.alarm,
            "n_reference": self.n_reference,
            "n_new": self.n_new,
            "groups": [
                {"group": g.group, "alarm": g.alarm, "results": [r.to_dict() for r in g.results]}
                for g in self.groups
            ],
            "unvalidated_scanners": self.unvalidated,
            "too_small": list(self.too_small),
        }

    def to_config(self, min_cell_size: int) -> dict[str, Any]:
        """What may leave the site (`task.wire.DRIFT_KEYS`): the statistics of each group
        and feature compared (parallel lists), the unvalidated scanner groups with their
        counts (0: fewer than ``min_cell_size``, withheld), the groups too small to compare."""
        rows = [(g.group, r) for g in self.groups for r in g.results]
        return {
            "alarm": self.alarm,
            "n-reference": self.n_reference,
            "n-new": self.n_new if self.n_new >= min_cell_size else 0,
            "groups": [group for group, _ in rows],
            "features": [r.feature for _, r in rows],
            "n-reference-of": [r.n_reference for _, r in rows],
            "n-new-of": [r.n_new for _, r in rows],
            "psi": [r.psi for _, r in rows],
            "ks": [r.ks for _, r in rows],
            "ks-p": [r.ks_p for _, r in rows],
            "alarms": [r.alarm for _, r in rows],
            "unvalidated-scanners": sorted(self.unvalidated),
            "unvalidated-n": [
                n if n >= min_cell_size else 0 for _, n in sorted(self.unvalidated.items())
            ],
            "too-small": list(self.too_small),
        }


def check_drift(store: SiteStore, model: nn.Module, image_size: int) -> DriftReport:
    """Compare the site's new (received, unlabelled) cases with its labelled ones."""
    min_cell = store.policy.min_cell_size
    reference_cases = store.read_manifest()
    new_cases = list(ReceivedIndex(store).cases().values())
    if not new_cases:
        return DriftReport(store.site_id, len(reference_cases), 0)
    reference = measure(
        store,
        [c.case_id for c in reference_cases],
        [c.scanner for c in reference_cases],
        model,
        image_size,
    )
    new = measure(
        store,
        [c.case_id for c in new_cases],
        [f"{c.manufacturer} {c.model}".strip() for c in new_cases],
        model,
        image_size,
    )
    known = set(reference.groups)
    groups, counts = np.unique(new.groups, return_counts=True)
    unvalidated = {str(g): int(n) for g, n in zip(groups, counts, strict=True) if g not in known}
    compared, too_small = [], []
    for group in [SITE_GROUP, *sorted(set(new.groups) & known)]:
        ref, cur = reference.of_group(group), new.of_group(group)
        if len(ref) < min_cell or len(cur) < min_cell:
            too_small.append(group)
            continue
        results = tuple(
            compare(feature, *quantile_counts(ref.values[feature], cur.values[feature]))
            for feature in FEATURES
        )
        compared.append(GroupDrift(group, results))
    return DriftReport(
        store.site_id,
        len(reference),
        len(new),
        tuple(compared),
        unvalidated,
        tuple(too_small),
    )


def keep_report(store: SiteStore, report: DriftReport, model_sha256: str) -> Path:
    """Keep ``report`` at the site (``SITE/drift-reports/<UTC time>.json``) and record the
    check in its audit trail; the report's path."""
    folder = store.root / REPORTS_DIR
    folder.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = folder / f"{stamp}.json"
    path.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    AuditLog.in_folder(store.root).record(
        AuditEntry(
            store.site_id,
            AuditEvent.DRIFT_CHECKED,
            details={
                "alarm": report.alarm,
                "n_new": report.n_new,
                "model_sha256": model_sha256,
                "report": path.name,
            },
        )
    )
    return path


def describe(report: DriftReport) -> str:
    """``report`` as a table for the site's operator."""
    if not report.n_new:
        return f"site {report.site_id}: no new (received, unlabelled) cases to compare"
    lines = [
        f"site {report.site_id}: {report.n_new} new cases against {report.n_reference} "
        f"labelled: {'ALARM' if report.alarm else 'no alarm'}",
        f"{'group':<36} {'feature':<15} {'n ref':>6} {'n new':>6} {'PSI':>7} {'KS':>6} {'KS p':>9}",
    ]
    for group in report.groups:
        for r in group.results:
            flag = "  ALARM" if r.alarm else ""
            lines.append(
                f"{group.group:<36} {r.feature:<15} {r.n_reference:>6} {r.n_new:>6} "
                f"{r.psi:>7.3f} {r.ks:>6.3f} {r.ks_p:>9.2g}{flag}"
            )
    for scanner, n in report.unvalidated.items():
        lines.append(f"{scanner}: {n} new cases from a scanner group never validated on  ALARM")
    if report.too_small:
        lines.append("too few cases to compare: " + ", ".join(report.too_small))
    return "\n".join(lines)
