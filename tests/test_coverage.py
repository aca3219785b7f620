"""Coverage of the 95% intervals, by simulation from a binormal model with known truth.

Each data set has ``N_POS`` positives with logits N(SHIFT, 1) and ``N_NEG`` negatives with
logits N(0, 1), binned as a site bins them. Then the true AUC is ``Phi(SHIFT / sqrt(2))``
and the true sensitivity at the threshold ``THRESHOLD`` (a bin edge, so the binned
sensitivity is the case-level one) is ``Phi(SHIFT - THRESHOLD)``. The histogram AUC counts
pairs in one bin as 1/2, so its expectation is the AUC of the binned scores, not of the
continuous ones; `test_binning_bias_of_the_auc_is_negligible` computes it exactly and shows
that it is within 1e-4 of the continuous truth, so coverage is checked against the latter.

With 1,000 data sets the Monte Carlo standard error of a 95% coverage is 0.7 points; the
accepted range 93-97% is about 3 of them either side.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from task.wire import N_SCORE_BINS, SCORE_BIN_EDGES, score_bin_index
from validation.heterogeneity import delong_difference_test
from validation.metrics import ScoreHistogram, confusion_at, proportion_ci, roc_auc_ci

N_DATA_SETS = 1_000
N_POS, N_NEG = 100, 150
SHIFT = 1.5
THRESHOLD = 1.0
TRUE_AUC = norm.cdf(SHIFT / np.sqrt(2))  # 0.856
TRUE_SENSITIVITY = norm.cdf(SHIFT - THRESHOLD)  # 0.691


def simulate(
    rng: np.random.Generator, n_sets: int, n_pos: int, n_neg: int, shift: float
) -> list[ScoreHistogram]:
    """``n_sets`` binormal data sets as histograms, binned all at once with one bincount."""

    def bin_counts(logits: np.ndarray) -> np.ndarray:
        rows = N_SCORE_BINS * np.arange(n_sets)[:, None]
        flat = np.bincount(
            (score_bin_index(logits) + rows).ravel(), minlength=n_sets * N_SCORE_BINS
        )
        return flat.reshape(n_sets, N_SCORE_BINS)

    positives = bin_counts(rng.normal(shift, 1.0, (n_sets, n_pos)))
    negatives = bin_counts(rng.normal(0.0, 1.0, (n_sets, n_neg)))
    return [ScoreHistogram(p, n) for p, n in zip(positives, negatives, strict=True)]


@pytest.fixture(scope="module")
def data_sets() -> list[ScoreHistogram]:
    return simulate(np.random.default_rng(40), N_DATA_SETS, N_POS, N_NEG, SHIFT)


def coverage(intervals: list[tuple[float, float]], truth: float) -> float:
    return float(np.mean([low <= truth <= high for low, high in intervals]))


def test_binning_bias_of_the_auc_is_negligible() -> None:
    # Probability of each bin under each class, then the binned AUC's expectation.
    cdf_edges = np.concatenate([[-np.inf], SCORE_BIN_EDGES, [np.inf]])
    p_pos, p_neg = np.diff(norm.cdf(cdf_edges - SHIFT)), np.diff(norm.cdf(cdf_edges))
    binned_auc = p_pos @ (np.cumsum(p_neg) - p_neg / 2)
    assert abs(binned_auc - TRUE_AUC) < 1e-4


def test_delong_auc_interval_covers_the_true_auc(data_sets: list[ScoreHistogram]) -> None:
    estimates = [roc_auc_ci(hist) for hist in data_sets]
    assert 0.93 <= coverage([(e.ci_low, e.ci_high) for e in estimates], TRUE_AUC) <= 0.97


def test_wilson_sensitivity_interval_covers_the_true_sensitivity(
    data_sets: list[ScoreHistogram],
) -> None:
    edge_index = int(np.flatnonzero(SCORE_BIN_EDGES == THRESHOLD)[0])
    estimates = []
    for hist in data_sets:
        counts = confusion_at(hist, edge_index)
        estimates.append(proportion_ci(counts.tp, counts.tp + counts.fn))
    assert 0.93 <= coverage([(e.ci_low, e.ci_high) for e in estimates], TRUE_SENSITIVITY) <= 0.97


def test_delong_difference_interval_covers_zero_for_equal_aucs(
    data_sets: list[ScoreHistogram],
) -> None:
    # Other samples of another size from the same model: the true difference is 0.
    others = simulate(np.random.default_rng(41), N_DATA_SETS, 60, 200, SHIFT)
    tests = [delong_difference_test(a, b) for a, b in zip(data_sets, others, strict=True)]
    assert 0.93 <= coverage([(t.ci_low, t.ci_high) for t in tests], 0.0) <= 0.97
    assert 0.03 <= np.mean([t.p_value < 0.05 for t in tests]) <= 0.07
