"""What a site reports about a model's performance: score histograms per class and stratum.

Never per-case scores or labels. A stratum with fewer cases than the site's minimum cell
size is suppressed: its name is reported, its counts are not. Subgroup strata come only from
the labels.csv columns the site's policy lists (`site_client.policy.EvaluationPolicy`),
numeric ones in bands; a value that is not a short plain word or band never leaves.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from site_client.dataset import SiteData
from site_client.policy import EvaluationPolicy
from task.wire import (
    N_SCORE_BINS,
    STRATUM_MANUFACTURER,
    STRATUM_SCANNER,
    STRATUM_SITE,
    STRATUM_SUBGROUP,
    histogram_key,
    score_bin_index,
)

#: What a subgroup value may look like to leave the site: a short plain word or number.
_REPORTABLE_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,31}$")


@dataclass(frozen=True)
class StratifiedHistograms:
    """Histograms keyed by `task.wire.histogram_key`, and the strata withheld."""

    histograms: dict[str, list[int]]
    suppressed: list[str]


def class_histograms(logits: np.ndarray, labels: np.ndarray) -> tuple[list[int], list[int]]:
    """(negatives, positives) counts per score bin of ``logits`` with 0/1 ``labels``."""
    bins = score_bin_index(logits)
    positive = labels.astype(bool)
    return (
        np.bincount(bins[~positive], minlength=N_SCORE_BINS).tolist(),
        np.bincount(bins[positive], minlength=N_SCORE_BINS).tolist(),
    )


def subgroup_value(raw: str, column: str, policy: EvaluationPolicy) -> str | None:
    """The reportable value of a case's ``raw`` entry in subgroup ``column``: its band for a
    banded column (``63`` -> ``60-69`` with width 10), else the entry itself; None when it
    is missing, not a number in a banded column, or not a short plain word."""
    raw = raw.strip()
    if column in policy.banded_columns:
        try:
            number = float(raw)
        except ValueError:
            return None
        if not math.isfinite(number):
            return None
        low = math.floor(number / policy.band_width) * policy.band_width
        return f"{low}-{low + policy.band_width - 1}"
    return raw if _REPORTABLE_VALUE.match(raw) else None


def strata_masks(
    data: SiteData, by_scanner: bool = True, evaluation: EvaluationPolicy | None = None
) -> dict[str, np.ndarray]:
    """Boolean case masks of each stratum of ``data``: the whole site, then per
    manufacturer and per scanner model when ``by_scanner``, and per value of each subgroup
    column ``evaluation`` lets out (`subgroup_value`; cases without one are in none)."""
    masks = {STRATUM_SITE: np.ones(len(data), dtype=bool)}
    kinds: list[tuple[str, list[str | None]]] = []
    if by_scanner:
        kinds += [
            (STRATUM_MANUFACTURER, [r.manufacturer for r in data.records]),
            (STRATUM_SCANNER, [r.scanner for r in data.records]),
        ]
    if evaluation is not None:
        for column in evaluation.subgroup_columns:
            values = [
                subgroup_value(r.subgroups.get(column, ""), column, evaluation)
                for r in data.records
            ]
            kinds.append((f"{STRATUM_SUBGROUP}:{column}", values))
    for kind, values in kinds:
        array = np.array(values, dtype=object)
        for value in sorted({v for v in values if v is not None}):
            masks[f"{kind}={value}"] = array == value
    return masks


def reportable_strata(
    data: SiteData,
    split: str,
    min_cell_size: int,
    by_scanner: bool = True,
    evaluation: EvaluationPolicy | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The strata of ``data`` (one split; `strata_masks`) with at least ``min_cell_size``
    cases, and the names (``"<split>|<stratum>"``) of the smaller ones, suppressed."""
    reportable: dict[str, np.ndarray] = {}
    suppressed: list[str] = []
    for stratum, mask in strata_masks(data, by_scanner, evaluation).items():
        if mask.sum() < min_cell_size:
            suppressed.append(f"{split}|{stratum}")
        else:
            reportable[stratum] = mask
    return reportable, suppressed


def stratified_histograms(
    logits: np.ndarray,
    data: SiteData,
    split: str,
    min_cell_size: int,
    by_scanner: bool = True,
    evaluation: EvaluationPolicy | None = None,
) -> StratifiedHistograms:
    """Histograms of ``logits`` on ``data`` (one split) per stratum and class (strata as
    `reportable_strata` finds them)."""
    labels = data.labels.numpy()
    histograms: dict[str, list[int]] = {}
    strata, suppressed = reportable_strata(data, split, min_cell_size, by_scanner, evaluation)
    for stratum, mask in strata.items():
        negatives, positives = class_histograms(logits[mask], labels[mask])
        histograms[histogram_key(split, stratum, 0)] = negatives
        histograms[histogram_key(split, stratum, 1)] = positives
    return StratifiedHistograms(histograms, suppressed)
