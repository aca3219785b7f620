"""Tests of validation.heterogeneity: DeLong's two-AUC test and meta-analysis across strata.

The AUC from histograms is checked against ``sklearn.metrics.roc_auc_score`` in
test_metrics.py (``test_auc_is_close_to_sklearn_for_continuous_scores``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from scipy.special import expit, logit
from scipy.stats import norm
from test_metrics import BIN_CENTERS, binormal, delong_reference

from task.wire import SCORE_BIN_EDGES
from validation.heterogeneity import (
    DIFFERENCE_METHOD,
    FIXED_METHOD,
    RANDOM_METHOD,
    StratumEstimate,
    auc_stratum,
    delong_difference_test,
    heterogeneity_across_strata,
    inverse_variance_pool,
    meta_analysis,
    proportion_stratum,
)
from validation.metrics import ScoreHistogram, confusion_at, roc_auc_ci


def distinct_bin_sample(
    rng: np.random.Generator, n: int, slope: float
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` logits at distinct bin centres (no ties: binned == case level), labels drawn
    with P(y = 1) = sigmoid(slope * logit)."""
    logits = rng.choice(BIN_CENTERS, size=n, replace=False)
    return logits, (rng.random(n) < expit(slope * logits)).astype(int)


def histograms(
    rng: np.random.Generator, n_strata: int, n_pos: int, n_neg: int, shifts: Sequence[float]
) -> list[ScoreHistogram]:
    """Binormal strata (`binormal`), stratum ``i`` with positives shifted by ``shifts[i]``."""
    return [
        ScoreHistogram.from_logits(*binormal(rng, n_pos, n_neg, shifts[i])) for i in range(n_strata)
    ]


# --- DeLong's test of two AUCs ------------------------------------------------------------


def test_delong_difference_test_equals_case_level_delong() -> None:
    rng = np.random.default_rng(20)
    (logits_a, labels_a), (logits_b, labels_b) = (
        distinct_bin_sample(rng, 200, slope=1.0),
        distinct_bin_sample(rng, 150, slope=0.3),
    )
    auc_a, var_a = delong_reference(logits_a, labels_a)
    auc_b, var_b = delong_reference(logits_b, labels_b)
    z = (auc_a - auc_b) / np.sqrt(var_a + var_b)

    result = delong_difference_test(
        ScoreHistogram.from_logits(logits_a, labels_a),
        ScoreHistogram.from_logits(logits_b, labels_b),
        confidence=0.90,
    )
    assert result.method == DIFFERENCE_METHOD
    assert result.difference == pytest.approx(auc_a - auc_b, abs=1e-12)
    assert result.z == pytest.approx(z, abs=1e-9)
    assert result.p_value == pytest.approx(2 * norm.sf(abs(z)), abs=1e-9)
    assert result.p_value < 0.05  # the AUCs are about 0.85 and 0.6
    half_width = norm.ppf(0.95) * np.sqrt(var_a + var_b)
    assert (result.ci_low, result.ci_high) == pytest.approx(
        (auc_a - auc_b - half_width, auc_a - auc_b + half_width), abs=1e-9
    )
    json.dumps(result.to_dict())


def test_delong_difference_test_is_antisymmetric() -> None:
    rng = np.random.default_rng(21)
    a = ScoreHistogram.from_logits(*binormal(rng, 50, 70, shift=1.0))
    b = ScoreHistogram.from_logits(*binormal(rng, 40, 90, shift=0.8))
    ab, ba = delong_difference_test(a, b), delong_difference_test(b, a)
    assert ab.z == pytest.approx(-ba.z) and ab.p_value == pytest.approx(ba.p_value)


def test_delong_difference_test_without_variance_gives_no_test() -> None:
    separated = ScoreHistogram.from_logits([-2.0, -1.0, 1.0, 2.0], [0, 0, 1, 1])
    result = delong_difference_test(separated, separated)
    assert (result.difference, result.standard_error) == (0.0, 0.0)
    assert result.z is None and result.p_value is None and result.ci_low is None
    assert "no test" in result.method


# --- inverse-variance pooling -------------------------------------------------------------


def test_inverse_variance_pool_matches_a_hand_computation() -> None:
    """Estimates y = (0, 0.5, 1) with variances (0.04, 0.04, 0.01).

    Weights w = (25, 25, 100), sum 150: fixed = (0 + 12.5 + 100) / 150 = 0.75, SE = 150**-0.5.
    Q = 25 * 0.75**2 + 25 * 0.25**2 + 100 * 0.25**2 = 14.0625 + 1.5625 + 6.25 = 21.875 on
    df = 2; p = exp(-Q / 2) (chi-square with 2 df); I2 = (21.875 - 2) / 21.875 = 159 / 175.
    DerSimonian-Laird: C = 150 - (625 + 625 + 10000) / 150 = 75, tau2 = 19.875 / 75 = 0.265;
    random-effects weights 1 / 0.305, 1 / 0.305, 1 / 0.275.
    """
    pooled = inverse_variance_pool([0.0, 0.5, 1.0], [0.04, 0.04, 0.01])
    assert pooled.k == 3 and pooled.df == 2
    assert pooled.fixed == pytest.approx(0.75)
    assert pooled.fixed_se == pytest.approx(150**-0.5)
    assert pooled.q == pytest.approx(21.875)
    assert pooled.q_p_value == pytest.approx(np.exp(-21.875 / 2))
    assert pooled.i2 == pytest.approx(159 / 175)
    assert pooled.tau2 == pytest.approx(0.265)
    w = np.array([1 / 0.305, 1 / 0.305, 1 / 0.275])
    assert pooled.random == pytest.approx((0.5 / 0.305 + 1 / 0.275) / w.sum())
    assert pooled.random_se == pytest.approx(w.sum() ** -0.5)
    assert pooled.weights == pytest.approx(tuple(w / w.sum()))


def test_inverse_variance_pool_of_equal_estimates_has_no_heterogeneity() -> None:
    pooled = inverse_variance_pool([0.3, 0.3, 0.3], [0.1, 0.2, 0.4])
    assert (pooled.q, pooled.i2, pooled.tau2, pooled.q_p_value) == (0.0, 0.0, 0.0, 1.0)
    assert pooled.random == pooled.fixed == pytest.approx(0.3)
    assert pooled.weights == pytest.approx((4 / 7, 2 / 7, 1 / 7))


def test_inverse_variance_pool_of_one_estimate_is_that_estimate() -> None:
    pooled = inverse_variance_pool([1.2], [0.09])
    assert (pooled.fixed, pooled.random) == (1.2, 1.2)
    assert pooled.fixed_se == pytest.approx(0.3)
    assert (pooled.q, pooled.df, pooled.q_p_value, pooled.i2, pooled.tau2) == (
        0.0,
        0,
        None,
        None,
        0.0,
    )


def test_i2_is_mostly_zero_for_homogeneous_strata() -> None:
    """Five strata drawn from one binormal model: Q ~ chi2(4), so I2 = 0 (Q <= 4) about
    59% of the time and Q's test rejects about 5% of the time."""
    rng = np.random.default_rng(22)
    results = [
        heterogeneity_across_strata(
            {f"site{i}": h for i, h in enumerate(histograms(rng, 5, 60, 90, np.full(5, 1.2)))}
        )
        for _ in range(300)
    ]
    i2 = np.array([r.i2 for r in results])
    assert np.mean(i2 == 0.0) > 0.5 and np.median(i2) == 0.0
    assert 0.02 <= np.mean([r.q_p_value < 0.05 for r in results]) <= 0.09


def test_i2_is_large_for_heterogeneous_strata() -> None:
    hists = histograms(np.random.default_rng(23), 4, 150, 150, np.array([0.2, 0.8, 1.6, 2.6]))
    result = heterogeneity_across_strata(dict(zip("abcd", hists, strict=True)))
    assert result.i2 > 0.75 and result.q_p_value < 1e-6 and result.tau2 > 0.1
    # Random effects widen the interval.
    assert result.random.ci_high - result.random.ci_low > result.fixed.ci_high - result.fixed.ci_low


# --- heterogeneity across strata ----------------------------------------------------------


def test_auc_heterogeneity_forest_rows_are_the_strata_auc_intervals() -> None:
    rng = np.random.default_rng(24)
    hists = dict(
        zip(("GE", "Siemens", "Philips"), histograms(rng, 3, 80, 120, [1.0, 1.4, 0.6]), strict=True)
    )
    result = heterogeneity_across_strata(hists)
    assert result.metric == "auc" and result.k == 3 and result.excluded == {}
    for row, (name, hist) in zip(result.forest, hists.items(), strict=True):
        expected = roc_auc_ci(hist)
        assert (row.name, row.n) == (name, hist.n)
        assert (row.estimate, row.ci_low, row.ci_high) == pytest.approx(
            (expected.value, expected.ci_low, expected.ci_high), rel=1e-12
        )
    assert sum(row.weight for row in result.forest) == pytest.approx(1.0)
    y = logit([row.estimate for row in result.forest])
    v = [auc_stratum(name, hist).variance for name, hist in hists.items()]
    pooled = inverse_variance_pool(y, v)
    assert result.q == pytest.approx(pooled.q) and result.i2 == pytest.approx(pooled.i2)
    assert result.fixed.value == pytest.approx(expit(pooled.fixed))
    assert result.random.value == pytest.approx(expit(pooled.random))
    half_width = norm.ppf(0.975) * pooled.random_se
    assert (result.random.ci_low, result.random.ci_high) == pytest.approx(
        (expit(pooled.random - half_width), expit(pooled.random + half_width))
    )
    assert (result.fixed.method, result.random.method) == (FIXED_METHOD, RANDOM_METHOD)
    assert min(row.estimate for row in result.forest) < result.random.value
    assert result.random.value < max(row.estimate for row in result.forest)


def test_strata_without_a_variance_are_excluded_with_the_reason() -> None:
    rng = np.random.default_rng(25)
    good = histograms(rng, 2, 50, 50, [1.0, 1.2])
    hists = {
        "a": good[0],
        "b": good[1],
        "separated": ScoreHistogram.from_logits([-2.0, -1.0, 1.0, 2.0], [0, 0, 1, 1]),
        "one positive": ScoreHistogram.from_logits([0.3, -1.0, 0.5, 0.4], [1, 0, 0, 0]),
        "no positives": ScoreHistogram.from_logits([-1.0, 0.5], [0, 0]),
        "one bin": ScoreHistogram.from_logits([0.01, 0.02, 0.03, 0.04], [1, 0, 1, 0]),
    }
    result = heterogeneity_across_strata(hists)
    assert [row.name for row in result.forest] == ["a", "b"] and result.k == 2
    assert result.excluded == {
        "separated": "AUC is 1 (complete separation): logit variance undefined",
        "one positive": "a class has 1 case: no DeLong variance",
        "no positives": "no positive cases",
        "one bin": "all cases in one bin: DeLong variance is 0",
    }
    assert json.loads(json.dumps(result.to_dict()))["excluded"] == result.excluded


def test_no_stratum_with_a_variance_gives_no_pooled_value() -> None:
    separated = ScoreHistogram.from_logits([-2.0, -1.0, 1.0, 2.0], [0, 0, 1, 1])
    result = heterogeneity_across_strata({"x": separated})
    assert result.k == 0 and result.forest == () and result.q is None
    assert result.random.value is None and "no stratum" in result.random.method
    json.dumps(result.to_dict())


def test_sensitivity_heterogeneity_pools_logit_proportions() -> None:
    rng = np.random.default_rng(26)
    edge_index = int(np.searchsorted(SCORE_BIN_EDGES, 0.5))
    hists = dict(zip("xyz", histograms(rng, 3, 70, 70, [1.0, 1.5, 2.0]), strict=True))
    hists["all detected"] = ScoreHistogram.from_logits([3.0, 4.0, -1.0], [1, 1, 0])
    result = heterogeneity_across_strata(hists, "sensitivity", edge_index)
    assert result.metric == "sensitivity"
    assert result.excluded == {"all detected": "proportion is 1: logit variance undefined"}
    ys, vs = [], []
    for row in result.forest:
        counts = confusion_at(hists[row.name], edge_index)
        assert row.n == counts.tp + counts.fn
        assert row.estimate == counts.tp / row.n
        ys.append(logit(row.estimate))
        vs.append(1 / counts.tp + 1 / counts.fn)
    assert result.q == pytest.approx(inverse_variance_pool(ys, vs).q)
    specificity = heterogeneity_across_strata(hists, "specificity", edge_index)
    assert [row.n for row in specificity.forest] == [70, 70, 70]  # the negatives
    assert specificity.excluded == {"all detected": "proportion is 1: logit variance undefined"}


def test_proportion_stratum_reasons() -> None:
    assert proportion_stratum("s", 0, 0) == StratumEstimate("s", 0, None, None, "no cases")
    assert proportion_stratum("s", 0, 5).reason == "proportion is 0: logit variance undefined"
    assert proportion_stratum("s", 3, 4).variance == pytest.approx(1 / 3 + 1)


# --- bad input ----------------------------------------------------------------------------

EMPTY = ScoreHistogram.empty()
ONE_CLASS = ScoreHistogram.from_logits([0.5, 1.5, 2.5], [1, 1, 1])
GOOD = ScoreHistogram.from_logits([-1.0, -0.5, 0.5, 1.0, 0.2], [0, 0, 1, 1, 0])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: delong_difference_test(EMPTY, GOOD), "needs positive and negative cases"),
        (lambda: delong_difference_test(GOOD, ONE_CLASS), "needs positive and negative cases"),
        (lambda: delong_difference_test(GOOD, GOOD, confidence=1.0), "confidence must be in"),
        (lambda: inverse_variance_pool([0.1, 0.2], [0.1]), "equal length"),
        (lambda: inverse_variance_pool([], []), "non-empty"),
        (lambda: inverse_variance_pool([0.1, 0.2], [0.1, 0.0]), "variances finite and positive"),
        (lambda: meta_analysis([]), "at least one stratum"),
        (lambda: heterogeneity_across_strata({}), "at least one stratum"),
        (lambda: heterogeneity_across_strata({"a": GOOD}, "ppv", 160), "metric must be one of"),
        (lambda: heterogeneity_across_strata({"a": GOOD}, "sensitivity"), "needs an edge_index"),
        (
            lambda: meta_analysis([auc_stratum("a", GOOD), auc_stratum("a", GOOD)]),
            "names must be unique",
        ),
        (lambda: StratumEstimate("a", 5, 1.5, 0.1), r"value must be in \[0, 1\]"),
        (lambda: StratumEstimate("a", 5, 1.0, 0.1), "a variance needs a value in"),
        (lambda: StratumEstimate("a", 5, 0.5, None), "needs a reason"),
        (lambda: proportion_stratum("a", 5, 4), "successes <= trials"),
    ],
)
def test_bad_input_raises_a_one_line_value_error(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
