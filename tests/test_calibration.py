"""Tests of validation.calibration: calibration statistics from one score histogram."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss

from task.wire import N_SCORE_BINS, SCORE_BIN_EDGES, score_bin_index
from validation.calibration import (
    BIN_LOGITS,
    BIN_PROBABILITIES,
    CITL_METHOD,
    RECALIBRATION_METHOD,
    assess_calibration,
    brier_binning_error_bound,
    brier_score,
    calibration_in_the_large,
    expected_calibration_error,
    logistic_recalibration,
    reliability_curve,
)
from validation.metrics import ScoreHistogram


def calibrated_sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits N(-0.5, 1.2) and labels y ~ Bernoulli(sigmoid(logit)): perfectly calibrated."""
    logits = rng.normal(-0.5, 1.2, n)
    return logits, (rng.random(n) < expit(logits)).astype(int)


def test_bin_logits_are_midpoints_and_the_inner_edges_of_the_open_bins() -> None:
    assert (BIN_LOGITS[0], BIN_LOGITS[-1]) == (SCORE_BIN_EDGES[0], SCORE_BIN_EDGES[-1])
    assert BIN_LOGITS[161] == pytest.approx(0.025)  # bin [0, 0.05)
    # Each representative lies in its bin, but for the first, (-inf, -8): -8 is its supremum.
    np.testing.assert_array_equal(score_bin_index(BIN_LOGITS[1:]), np.arange(1, N_SCORE_BINS))
    assert np.all(np.diff(BIN_LOGITS) > 0)
    np.testing.assert_array_equal(BIN_PROBABILITIES, expit(BIN_LOGITS))


def test_calibrated_scores_have_slope_one_intercept_zero_and_small_ece() -> None:
    logits, labels = calibrated_sample(np.random.default_rng(30), 20_000)
    result = assess_calibration(ScoreHistogram.from_logits(logits, labels))
    assert result.slope.value == pytest.approx(1.0, abs=0.05)
    assert result.slope.ci_low < 1.0 < result.slope.ci_high
    assert result.intercept.value == pytest.approx(0.0, abs=0.05)
    assert result.calibration_in_the_large.value == pytest.approx(0.0, abs=0.05)
    assert result.ece < 0.02
    assert (result.intercept.method, result.calibration_in_the_large.method) == (
        RECALIBRATION_METHOD,
        CITL_METHOD,
    )


def test_doubled_logits_have_slope_one_half() -> None:
    """Predicted logit 2x for true logit x: logit P(y = 1) = 0.5 * predicted logit."""
    logits, labels = calibrated_sample(np.random.default_rng(31), 20_000)
    result = assess_calibration(ScoreHistogram.from_logits(2 * logits, labels))
    assert result.slope.value == pytest.approx(0.5, abs=0.03)
    assert result.intercept.value == pytest.approx(0.0, abs=0.05)
    assert result.ece > 0.05


def test_recalibration_is_case_level_logistic_regression_on_the_bin_logits() -> None:
    logits, labels = calibrated_sample(np.random.default_rng(32), 3_000)
    logits = 0.7 * logits + 0.4
    hist = ScoreHistogram.from_logits(logits, labels)
    x = BIN_LOGITS[score_bin_index(logits)]
    model = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(x[:, None], labels)
    intercept, slope = logistic_recalibration(hist)
    assert intercept.value == pytest.approx(model.intercept_[0], abs=1e-5)
    assert slope.value == pytest.approx(model.coef_[0, 0], abs=1e-5)
    # Calibration-in-the-large solves mean(sigmoid(a + x)) = mean(y).
    a = brentq(lambda a: np.mean(expit(a + x)) - labels.mean(), -10, 10, xtol=1e-14)
    assert calibration_in_the_large(hist).value == pytest.approx(a, abs=1e-9)


def test_brier_score_is_close_to_the_case_level_brier_score() -> None:
    logits, labels = calibrated_sample(np.random.default_rng(33), 5_000)
    logits[:10] = [-9.0, -12.0, 9.0, 15.0, -np.inf, np.inf, 8.0, -8.0, 0.0, 7.99]
    hist = ScoreHistogram.from_logits(logits, labels)
    case_level = brier_score_loss(labels, expit(logits))
    bound = brier_binning_error_bound(hist)
    assert abs(brier_score(hist) - case_level) <= bound < 0.01
    assert brier_score(hist) == pytest.approx(case_level, abs=1e-4)


def test_reliability_curve_groups_bins_by_predicted_probability() -> None:
    # Logit 0 -> bin [0, 0.05), p = sigmoid(0.025); logit 3 -> p = sigmoid(3.025).
    hist = ScoreHistogram.from_logits([0.0, 0.0, 0.0, 0.01, 3.0, 3.0], [1, 0, 0, 0, 1, 1])
    curve = reliability_curve(hist, n_groups=4)
    assert [(g.p_low, g.p_high, g.n, g.n_pos) for g in curve] == [
        (0.5, 0.75, 4, 1),
        (0.75, 1.0, 2, 2),
    ]
    assert curve[0].predicted == pytest.approx(expit(0.025))
    assert curve[0].observed == 0.25 and curve[0].ci_low < 0.25 < curve[0].ci_high
    expected_ece = (4 * abs(0.25 - expit(0.025)) + 2 * abs(1 - expit(3.025))) / 6
    assert expected_calibration_error(hist, n_groups=4) == pytest.approx(expected_ece)


def test_reliability_curve_covers_every_case() -> None:
    logits, labels = calibrated_sample(np.random.default_rng(34), 2_000)
    curve = reliability_curve(ScoreHistogram.from_logits(logits, labels))
    assert sum(g.n for g in curve) == 2_000 and sum(g.n_pos for g in curve) == labels.sum()
    assert all(g.p_low <= g.predicted <= g.p_high for g in curve)


def test_separated_classes_have_no_slope() -> None:
    hist = ScoreHistogram.from_logits([-2.0, -1.0, 1.0, 2.0], [0, 0, 1, 1])
    result = assess_calibration(hist)
    assert result.slope.value is None and result.intercept.value is None
    assert "classes separated" in result.slope.method
    assert result.calibration_in_the_large.value is not None
    json.dumps(result.to_dict())


@pytest.mark.parametrize(
    ("positives", "negatives", "separated"),
    [
        # Confidently wrong: its negatives in the top bin, more certain than its positives.
        ({7.98: 2}, {8.5: 29}, True),
        # Its positives in the bottom bin, its negatives just above.
        ({-8.5: 26}, {-7.8: 2}, True),
        ({-8.5: 49, -7.98: 25}, {-8.5: 1, -7.98: 12, 7.6: 17}, False),
    ],
)
def test_a_confident_wrong_model_is_assessed(
    positives: dict[float, int], negatives: dict[float, int], separated: bool
) -> None:
    """The fits start where every fitted probability is near 0 or 1; they reach the maximum
    likelihood (the score equations hold) instead of failing on a singular matrix. (A central
    DP test's global model did this: its evidence could not be written.)"""
    logits = [x for cases in (positives, negatives) for x, k in cases.items() for _ in range(k)]
    labels = [1] * sum(positives.values()) + [0] * sum(negatives.values())
    hist = ScoreHistogram.from_logits(logits, labels)
    x = BIN_LOGITS[score_bin_index(np.array(logits))]
    result = assess_calibration(hist)
    a = result.calibration_in_the_large
    assert a.ci_low < a.value < a.ci_high
    assert np.sum(expit(a.value + x)) == pytest.approx(sum(labels), rel=1e-6)
    intercept, slope = result.intercept, result.slope
    if separated:  # the slope would be infinite
        assert intercept.value is None and slope.value is None
        return
    assert intercept.value is not None and slope.value is not None
    fitted = expit(intercept.value + slope.value * x)
    assert fitted.sum() == pytest.approx(sum(labels), rel=1e-6)
    assert fitted @ x == pytest.approx(np.dot(labels, x), rel=1e-6)


def test_calibration_to_dict_is_json_ready() -> None:
    logits, labels = calibrated_sample(np.random.default_rng(35), 500)
    result = assess_calibration(ScoreHistogram.from_logits(logits, labels), n_groups=5)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["slope"] == result.slope.to_dict()
    assert data["reliability"][0]["n"] == result.reliability[0].n
    assert (data["n"], data["n_pos"], data["n_groups"]) == (500, labels.sum(), 5)


EMPTY = ScoreHistogram.empty()
ONE_CLASS = ScoreHistogram.from_logits([-0.5, 1.5, 2.5], [0, 0, 0])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: assess_calibration(EMPTY), "needs positive and negative cases"),
        (lambda: assess_calibration(ONE_CLASS), "needs positive and negative cases"),
        (lambda: calibration_in_the_large(ONE_CLASS), "needs positive and negative cases"),
        (lambda: brier_score(EMPTY), "needs some cases"),
        (lambda: reliability_curve(EMPTY), "needs some cases"),
        (lambda: reliability_curve(ONE_CLASS, n_groups=0), "n_groups must be at least 1"),
        (lambda: logistic_recalibration(ONE_CLASS, confidence=0), "confidence must be in"),
        (
            lambda: assess_calibration(ScoreHistogram(np.ones(N_SCORE_BINS - 1), np.ones(3))),
            "positives must be a 1-D array of length",
        ),
    ],
)
def test_bad_input_raises_a_one_line_value_error(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
