"""Tests of validation.metrics: statistics from score histograms against case-level truth."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
from scipy.special import expit, logit
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from task.wire import N_SCORE_BINS, SCORE_BIN_EDGES, score_bin_index
from validation.metrics import (
    AUC_METHOD,
    Estimate,
    ScoreHistogram,
    auc_binning_error_bound,
    binary_performance,
    confusion_at,
    delong_variance,
    proportion_ci,
    roc_auc,
    roc_auc_ci,
    roc_curve,
    threshold_probability,
    youden_threshold,
)

BIN_CENTERS = (SCORE_BIN_EDGES[:-1] + SCORE_BIN_EDGES[1:]) / 2


def binormal(
    rng: np.random.Generator, n_pos: int, n_neg: int, shift: float
) -> tuple[np.ndarray, np.ndarray]:
    """Logits N(shift, 1) for positives and N(0, 1) for negatives, and their labels."""
    logits = np.concatenate([rng.normal(shift, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)])
    labels = np.concatenate([np.ones(n_pos, dtype=int), np.zeros(n_neg, dtype=int)])
    return logits, labels


def delong_reference(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Case-level DeLong (1988): AUC and its variance from the placement values, O(n^2)."""
    pos, neg = logits[labels == 1], logits[labels == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return float(psi.mean()), float(v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg))


# --- AUC ----------------------------------------------------------------------------------


def test_auc_equals_sklearn_when_cases_are_in_distinct_bins() -> None:
    rng = np.random.default_rng(0)
    logits = rng.choice(BIN_CENTERS, size=150, replace=False)
    labels = (rng.random(150) < expit(logits)).astype(int)
    hist = ScoreHistogram.from_logits(logits, labels)
    assert auc_binning_error_bound(hist) == 0.0
    assert roc_auc(hist) == pytest.approx(roc_auc_score(labels, logits), abs=1e-12)


def test_auc_is_close_to_sklearn_for_continuous_scores() -> None:
    logits, labels = binormal(np.random.default_rng(1), 1000, 1000, shift=1.0)
    hist = ScoreHistogram.from_logits(logits, labels)
    error = abs(roc_auc(hist) - roc_auc_score(labels, logits))
    assert error <= auc_binning_error_bound(hist)
    assert error < 0.005


def test_auc_counts_a_pair_in_one_bin_as_half() -> None:
    # Positive above negative at case level (AUC 1), but both in the same bin.
    hist = ScoreHistogram.from_logits([0.02, 0.01], [1, 0])
    assert roc_auc(hist) == 0.5
    assert auc_binning_error_bound(hist) == 0.5


def test_pooled_histograms_give_the_auc_of_concatenated_scores() -> None:
    rng = np.random.default_rng(2)
    sites = [binormal(rng, 40 + 10 * i, 60, shift=0.5 + 0.4 * i) for i in range(3)]
    pooled = sum(
        (ScoreHistogram.from_logits(logits, labels) for logits, labels in sites),
        ScoreHistogram.empty(),
    )
    logits = np.concatenate([s[0] for s in sites])
    labels = np.concatenate([s[1] for s in sites])
    concatenated = ScoreHistogram.from_logits(logits, labels)
    assert pooled == concatenated
    assert pooled.n == len(labels) and pooled.n_pos == labels.sum()
    assert roc_auc(pooled) == roc_auc(concatenated)
    assert roc_auc(pooled) == pytest.approx(
        roc_auc_score(labels, logits), abs=auc_binning_error_bound(pooled)
    )


# --- DeLong interval ----------------------------------------------------------------------


def test_delong_variance_equals_case_level_delong_on_binned_scores() -> None:
    logits, labels = binormal(np.random.default_rng(3), 120, 80, shift=0.3)
    # Coarse scores so that many pairs tie within a bin.
    logits = np.round(logits, 1)
    hist = ScoreHistogram.from_logits(logits, labels)
    auc, variance = delong_reference(score_bin_index(logits).astype(float), labels)
    assert roc_auc(hist) == pytest.approx(auc, rel=1e-12)
    assert delong_variance(hist) == pytest.approx(variance, rel=1e-10)


def test_delong_variance_is_close_to_case_level_delong_on_raw_scores() -> None:
    logits, labels = binormal(np.random.default_rng(4), 100, 100, shift=1.2)
    _, variance = delong_reference(logits, labels)
    hist = ScoreHistogram.from_logits(logits, labels)
    assert np.sqrt(delong_variance(hist)) == pytest.approx(np.sqrt(variance), rel=0.005)


def test_roc_auc_ci_is_the_logit_transformed_delong_interval() -> None:
    logits, labels = binormal(np.random.default_rng(5), 90, 110, shift=0.8)
    binned = score_bin_index(logits).astype(float)
    auc, variance = delong_reference(binned, labels)
    half_width = norm.ppf(0.95) * np.sqrt(variance) / (auc * (1 - auc))  # 90% interval
    estimate = roc_auc_ci(ScoreHistogram.from_logits(logits, labels), confidence=0.90)
    assert estimate.method == AUC_METHOD
    assert estimate.value == pytest.approx(auc, rel=1e-12)
    assert estimate.ci_low == pytest.approx(expit(logit(auc) - half_width), rel=1e-9)
    assert estimate.ci_high == pytest.approx(expit(logit(auc) + half_width), rel=1e-9)


@pytest.mark.parametrize(("n", "shift"), [(20, 0.0), (60, 1.0), (200, 3.5), (30, -2.0)])
def test_roc_auc_ci_contains_the_estimate_inside_the_unit_interval(n: int, shift: float) -> None:
    logits, labels = binormal(np.random.default_rng(n), n, n, shift)
    estimate = roc_auc_ci(ScoreHistogram.from_logits(logits, labels))
    assert 0.0 < estimate.ci_low < estimate.value < estimate.ci_high < 1.0


def test_roc_auc_ci_covers_the_true_auc() -> None:
    rng = np.random.default_rng(6)
    shift = 1.5
    true_auc = norm.cdf(shift / np.sqrt(2))
    estimates = [
        roc_auc_ci(ScoreHistogram.from_logits(*binormal(rng, 50, 50, shift))) for _ in range(400)
    ]
    coverage = np.mean([e.ci_low <= true_auc <= e.ci_high for e in estimates])
    assert 0.90 <= coverage <= 0.98


@pytest.mark.parametrize("confidence", [0.95, 0.99])
def test_roc_auc_ci_at_complete_separation_is_clopper_pearson_on_pairs(confidence: float) -> None:
    alpha = 1 - confidence
    negatives, positives = np.arange(-3.0, -1.0, 0.1), np.arange(1.0, 4.0, 0.1)  # 20 and 30
    logits = np.concatenate([negatives, positives])
    labels = np.repeat([0, 1], [len(negatives), len(positives)])

    perfect = roc_auc_ci(ScoreHistogram.from_logits(logits, labels), confidence)
    assert perfect.value == 1.0 and perfect.ci_high == 1.0
    assert perfect.ci_low == pytest.approx((alpha / 2) ** (1 / 20))
    assert "Clopper-Pearson" in perfect.method and "separation" in perfect.method

    inverted = roc_auc_ci(ScoreHistogram.from_logits(logits, 1 - labels), confidence)
    assert inverted.value == 0.0 and inverted.ci_low == 0.0
    assert inverted.ci_high == pytest.approx(1 - (alpha / 2) ** (1 / 20))  # min(30, 20) pairs


@pytest.mark.parametrize(
    ("logits", "labels", "reason"),
    [
        ([0.3, -1.0, 0.5, 0.4], [1, 0, 0, 0], "a class has 1 case"),
        ([0.01, 0.02, 0.03, 0.04], [1, 0, 1, 0], "all cases in one bin"),
    ],
)
def test_roc_auc_ci_gives_no_interval_without_a_variance(
    logits: list[float], labels: list[int], reason: str
) -> None:
    estimate = roc_auc_ci(ScoreHistogram.from_logits(logits, labels))
    assert estimate.value is not None and 0.0 < estimate.value < 1.0
    assert estimate.ci_low is None and estimate.ci_high is None
    assert reason in estimate.method


# --- proportions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "trials", "method", "expected"),
    [
        (8, 10, "wilson", (0.4902, 0.9433)),
        (8, 10, "exact", (0.4439, 0.9748)),
        (10, 10, "exact", (0.025**0.1, 1.0)),
        (0, 25, "wilson", (0.0, 0.1332)),
    ],
)
def test_proportion_ci_matches_known_values(
    successes: int, trials: int, method: str, expected: tuple[float, float]
) -> None:
    estimate = proportion_ci(successes, trials, method=method)
    assert estimate.value == successes / trials
    assert (estimate.ci_low, estimate.ci_high) == pytest.approx(expected, abs=1e-4)
    assert estimate.method == {"wilson": "Wilson score", "exact": "Clopper-Pearson exact"}[method]


def test_proportion_ci_without_cases_has_no_value() -> None:
    estimate = proportion_ci(0, 0, method="exact")
    assert estimate == Estimate(None, None, None, "Clopper-Pearson exact: no cases")
    assert estimate.to_dict() == {
        "value": None,
        "ci_low": None,
        "ci_high": None,
        "method": "Clopper-Pearson exact: no cases",
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"successes": 5, "trials": 4}, "successes <= trials"),
        ({"successes": -1, "trials": 4}, "successes <= trials"),
        ({"successes": 1, "trials": 4, "method": "wald"}, "method must be one of"),
        ({"successes": 1, "trials": 4, "confidence": 95}, "confidence must be in"),
    ],
)
def test_proportion_ci_rejects_bad_input(kwargs: dict[str, int | str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        proportion_ci(**kwargs)


# --- thresholds ---------------------------------------------------------------------------


def test_confusion_at_agrees_with_thresholding_the_raw_logits() -> None:
    rng = np.random.default_rng(7)
    logits, labels = binormal(rng, 300, 300, shift=1.0)
    # Scores exactly on edges and beyond the open-ended outer bins.
    logits[:20] = rng.choice(SCORE_BIN_EDGES, 20)
    logits[20:24] = [-50.0, 50.0, -np.inf, np.inf]
    hist = ScoreHistogram.from_logits(logits, labels)
    for edge_index in [0, 100, 150, 160, 161, 175, 230, len(SCORE_BIN_EDGES) - 1]:
        predicted = logits >= SCORE_BIN_EDGES[edge_index]
        counts = confusion_at(hist, edge_index)
        assert (counts.tp, counts.fp, counts.tn, counts.fn) == (
            np.sum(predicted & (labels == 1)),
            np.sum(predicted & (labels == 0)),
            np.sum(~predicted & (labels == 0)),
            np.sum(~predicted & (labels == 1)),
        )


def test_roc_curve_points_are_the_confusion_rates_and_enclose_the_auc() -> None:
    rng = np.random.default_rng(3)
    logits, labels = binormal(rng, 80, 120, shift=1.2)
    hist = ScoreHistogram.from_logits(logits, labels)
    curve = roc_curve(hist)
    assert (curve.fpr[0], curve.tpr[0], curve.thresholds[0]) == (0.0, 0.0, 1.0)
    assert (curve.fpr[-1], curve.tpr[-1]) == (1.0, 1.0)
    assert curve.thresholds[-1] <= expit(logits.min())  # every case called positive
    assert all(np.diff(curve.fpr) >= 0) and all(np.diff(curve.tpr) >= 0)
    assert len(curve.fpr) <= len(set(np.round(logits, 6))) + 2  # a point per occupied bin
    # each inner point: the rates of calling positive at or above its threshold
    for fpr, tpr, threshold in list(zip(curve.fpr, curve.tpr, curve.thresholds, strict=True))[1:-1]:
        edge = int(np.argmin(np.abs(expit(SCORE_BIN_EDGES) - threshold)))
        counts = confusion_at(hist, edge)
        assert (tpr, fpr) == pytest.approx((counts.tp / 80, counts.fp / 120))
    assert np.trapezoid(curve.tpr, curve.fpr) == pytest.approx(roc_auc(hist), abs=1e-12)


def test_youden_threshold_separates_separable_classes_in_the_middle_of_the_gap() -> None:
    rng = np.random.default_rng(8)
    negatives, positives = rng.uniform(-4.0, -1.0, 80), rng.uniform(1.0, 3.0, 40)
    hist = ScoreHistogram.from_logits(
        np.concatenate([negatives, positives]), np.repeat([0, 1], [80, 40])
    )
    edge_index = youden_threshold(hist)
    counts = confusion_at(hist, edge_index)
    assert (counts.fp, counts.fn) == (0, 0)
    # Every edge between the classes' bins is optimal; the median one is chosen.
    # Edge e separates iff top negative bin <= e < bottom positive bin.
    gap = np.arange(score_bin_index(negatives.max()), score_bin_index(positives.min()))
    assert edge_index == gap[(len(gap) - 1) // 2]
    assert abs(SCORE_BIN_EDGES[edge_index]) < 0.1


def test_youden_threshold_maximises_youden_index() -> None:
    logits, labels = binormal(np.random.default_rng(9), 200, 300, shift=1.0)
    hist = ScoreHistogram.from_logits(logits, labels)

    def youden(edge_index: int) -> float:
        counts = confusion_at(hist, edge_index)
        return counts.tp / hist.n_pos - counts.fp / hist.n_neg

    best = youden(youden_threshold(hist))
    assert best == max(youden(i) for i in range(len(SCORE_BIN_EDGES)))
    assert best > 0.3


def test_threshold_probability_is_the_sigmoid_of_the_edge() -> None:
    assert threshold_probability(160) == 0.5  # the edge at logit 0
    assert threshold_probability(0) == pytest.approx(expit(-8.0))
    with pytest.raises(ValueError, match="edge_index must be in"):
        threshold_probability(len(SCORE_BIN_EDGES))


# --- evidence scope -----------------------------------------------------------------------


def test_binary_performance_is_an_evidence_scope() -> None:
    logits, labels = binormal(np.random.default_rng(10), 70, 130, shift=1.5)
    hist = ScoreHistogram.from_logits(logits, labels)
    scope = binary_performance(hist, edge_index=170, proportion_method="exact")
    json.dumps(scope)  # plain JSON types only
    predicted = logits >= 0.5
    tp = int(np.sum(predicted & (labels == 1)))
    fp = int(np.sum(predicted & (labels == 0)))
    assert {k: scope[k] for k in ("n", "n_pos", "tp", "fp", "tn", "fn")} == {
        "n": 200,
        "n_pos": 70,
        "tp": tp,
        "fp": fp,
        "tn": 130 - fp,
        "fn": 70 - tp,
    }
    assert scope["threshold"] == pytest.approx(expit(0.5))
    assert scope["auc"] == roc_auc_ci(hist).to_dict()
    assert scope["sensitivity"] == proportion_ci(tp, 70, method="exact").to_dict()
    assert scope["ppv"]["value"] == tp / (tp + fp)
    assert scope["npv"]["value"] == (130 - fp) / (130 - fp + 70 - tp)
    assert scope["specificity"]["method"] == "Clopper-Pearson exact"


def test_binary_performance_without_positives_has_no_auc() -> None:
    hist = ScoreHistogram.from_logits([-1.0, 0.2, 2.0], [0, 0, 0])
    scope = binary_performance(hist, edge_index=160)
    assert scope["auc"] == {
        "value": None,
        "ci_low": None,
        "ci_high": None,
        "method": "not defined: no positive cases",
    }
    assert scope["sensitivity"]["value"] is None and "no cases" in scope["sensitivity"]["method"]
    assert scope["specificity"]["value"] == pytest.approx(1 / 3)  # only -1.0 is below 0
    assert binary_performance(ScoreHistogram.empty(), 160)["auc"]["method"] == (
        "not defined: no positive or negative cases"
    )


# --- input validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("positives", "negatives", "message"),
    [
        (np.zeros(N_SCORE_BINS - 1), np.zeros(N_SCORE_BINS), "positives must be a 1-D array"),
        (np.zeros(N_SCORE_BINS), np.zeros((2, N_SCORE_BINS)), "negatives must be a 1-D array"),
        (np.full(N_SCORE_BINS, -1), np.zeros(N_SCORE_BINS), "non-negative"),
        (np.full(N_SCORE_BINS, 0.5), np.zeros(N_SCORE_BINS), "whole-number"),
        (np.full(N_SCORE_BINS, "1"), np.zeros(N_SCORE_BINS), "must hold numbers"),
    ],
)
def test_score_histogram_rejects_bad_counts(
    positives: np.ndarray, negatives: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ScoreHistogram(positives, negatives)


def test_score_histogram_stores_read_only_int64_counts() -> None:
    counts = [1.0] * N_SCORE_BINS  # e.g. a list of floats from a Flower MetricRecord
    hist = ScoreHistogram(counts, counts)
    assert hist.positives.dtype == np.int64 and hist.n == 2 * N_SCORE_BINS
    with pytest.raises(ValueError, match="read-only"):
        hist.positives[0] = 5


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        ([0.1, 0.2], [1], "equal length"),
        ([0.1, 0.2], [1, 2], "labels must be 0 or 1"),
        ([0.1, np.nan], [1, 0], "NaN"),
    ],
)
def test_from_logits_rejects_bad_input(
    logits: list[float], labels: list[int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ScoreHistogram.from_logits(logits, labels)


@pytest.mark.parametrize(
    "function",
    [roc_auc, roc_auc_ci, roc_curve, delong_variance, youden_threshold, auc_binning_error_bound],
)
def test_auc_statistics_need_both_classes(function: Callable[[ScoreHistogram], object]) -> None:
    hist = ScoreHistogram.from_logits([0.5, 1.5], [1, 1])
    with pytest.raises(ValueError, match="needs positive and negative cases"):
        function(hist)


def test_delong_variance_needs_two_cases_per_class() -> None:
    hist = ScoreHistogram.from_logits([0.5, -1.5, -1.0], [1, 0, 0])
    with pytest.raises(ValueError, match="needs 2 cases per class"):
        delong_variance(hist)


def test_confusion_at_rejects_an_edge_outside_the_edges() -> None:
    hist = ScoreHistogram.from_logits([0.5, -1.5], [1, 0])
    with pytest.raises(ValueError, match="edge_index must be in"):
        confusion_at(hist, -1)
