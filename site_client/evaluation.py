"""What a site reports about a model's performance: score histograms per class and stratum.

Never per-case scores or labels. A stratum with fewer cases than the site's minimum cell
size is suppressed: its name is reported, its counts are not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from site_client.dataset import SiteData
from task.wire import (
    N_SCORE_BINS,
    STRATUM_MANUFACTURER,
    STRATUM_SCANNER,
    STRATUM_SITE,
    histogram_key,
    score_bin_index,
)


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


def strata_masks(data: SiteData, by_scanner: bool = True) -> dict[str, np.ndarray]:
    """Boolean case masks of each stratum of ``data``: the whole site, then per
    manufacturer and per scanner model when ``by_scanner``."""
    masks = {STRATUM_SITE: np.ones(len(data), dtype=bool)}
    if by_scanner:
        for kind, values in (
            (STRATUM_MANUFACTURER, [r.manufacturer for r in data.records]),
            (STRATUM_SCANNER, [r.scanner for r in data.records]),
        ):
            array = np.array(values, dtype=object)
            for value in sorted(set(values)):
                masks[f"{kind}={value}"] = array == value
    return masks


def stratified_histograms(
    logits: np.ndarray,
    data: SiteData,
    split: str,
    min_cell_size: int,
    by_scanner: bool = True,
) -> StratifiedHistograms:
    """Histograms of ``logits`` on ``data`` (one split) per stratum and class."""
    labels = data.labels.numpy()
    histograms: dict[str, list[int]] = {}
    suppressed: list[str] = []
    for stratum, mask in strata_masks(data, by_scanner).items():
        if mask.sum() < min_cell_size:
            suppressed.append(f"{split}|{stratum}")
            continue
        negatives, positives = class_histograms(logits[mask], labels[mask])
        histograms[histogram_key(split, stratum, 0)] = negatives
        histograms[histogram_key(split, stratum, 1)] = positives
    return StratifiedHistograms(histograms, suppressed)
