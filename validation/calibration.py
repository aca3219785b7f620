"""Calibration of predicted probabilities, from one stratum's `ScoreHistogram`.

A case's predicted probability is the sigmoid of its logit; sites only send the logit's
bin (``task.wire.SCORE_BIN_EDGES``, width 0.05 in logit space), so every case in bin ``i``
is given the bin's representative logit ``BIN_LOGITS[i]``: the midpoint of the bin in
logit space, and for the open-ended first and last bins their inner edge (-8 and +8).
Its predicted probability is ``BIN_PROBABILITIES[i] = sigmoid(BIN_LOGITS[i])``. Within an
inner bin the true probability differs from it by at most ``0.25 * 0.025 = 0.00625``
(the sigmoid's slope is at most 1/4), within the outer bins by at most
``sigmoid(-8) = 3.4e-4``.

Definitions (``n`` cases, ``p_j`` predicted probability and ``y_j`` label of case ``j``):

- **Reliability curve**: bins are grouped by their predicted probability into ``n_groups``
  equal-width probability groups ``[g / n_groups, (g + 1) / n_groups)`` (the last one
  closed). Per populated group: the mean predicted probability, the observed fraction of
  positives with its Wilson interval (`proportion_ci`), and the counts.
- **Expected calibration error (ECE)** = ``sum_g n_g / n * |observed_g - predicted_g|``
  over the groups of the reliability curve; it depends on ``n_groups``.
- **Brier score** = ``mean((p_j - y_j)**2)`` with the binned ``p_j``. It differs from the
  case-level Brier score by at most `brier_binning_error_bound` (per case
  ``|(p - y)**2 - (r - y)**2| <= d (2 |r - y| + d)`` for ``|p - r| <= d``); in practice much
  less, since errors of opposite sign cancel within a bin.
- **Logistic recalibration**: ``logit P(y = 1) = a + b * logit(p)`` fitted by maximum
  likelihood, each bin's representative logit weighted by its counts of positives and
  negatives (Newton-Raphson). The **calibration slope** ``b`` is 1 for calibrated scores,
  below 1 when they are too extreme (overfitting), above 1 when too moderate; the
  **intercept** ``a`` is the correction at ``p = 1/2``.
- **Calibration-in-the-large** ``a'``: the same fit with ``b`` fixed at 1
  (``logit(p)`` as an offset), 0 when the mean prediction matches the prevalence, negative
  when predictions are too high (Van Calster et al. 2016 call it the calibration
  intercept).

Intervals of ``a``, ``b`` and ``a'`` are Wald intervals from the inverse Fisher information.
The slope needs the classes to overlap in the bins: when every positive is in or above the
highest negative's bin (or every positive in or below the lowest negative's bin), the
maximum-likelihood slope is infinite and ``a`` and ``b`` are given without values, with the
reason in ``method``.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import expit, log_expit
from scipy.stats import norm

from task.wire import SCORE_BIN_EDGES
from validation.metrics import Estimate, ScoreHistogram, _check_confidence, proportion_ci

#: Representative logit of each score bin: the midpoint; the inner edge for the outer bins.
BIN_LOGITS: np.ndarray = np.concatenate(
    [
        SCORE_BIN_EDGES[:1],
        (SCORE_BIN_EDGES[:-1] + SCORE_BIN_EDGES[1:]) / 2,
        SCORE_BIN_EDGES[-1:],
    ]
)
BIN_LOGITS.flags.writeable = False
#: Predicted probability of each score bin: ``sigmoid(BIN_LOGITS)``.
BIN_PROBABILITIES: np.ndarray = expit(BIN_LOGITS)
BIN_PROBABILITIES.flags.writeable = False

RECALIBRATION_METHOD = "logistic recalibration (ML on binned logits), Wald"
CITL_METHOD = "logistic recalibration with slope fixed at 1 (ML on binned logits), Wald"


def _check_cases(hist: ScoreHistogram, both_classes: bool = False) -> None:
    if hist.n == 0 or (both_classes and min(hist.n_pos, hist.n_neg) == 0):
        raise ValueError(
            f"calibration needs {'positive and negative' if both_classes else 'some'} cases, "
            f"got n_pos={hist.n_pos}, n_neg={hist.n_neg}"
        )


@dataclass(frozen=True)
class ReliabilityGroup:
    """One point of the reliability curve: the cases whose predicted probability lies in
    ``[p_low, p_high)``; ``predicted`` is their mean predicted probability, ``observed`` the
    fraction of positives with its Wilson interval ``[ci_low, ci_high]``."""

    p_low: float
    p_high: float
    n: int
    n_pos: int
    predicted: float
    observed: float
    ci_low: float
    ci_high: float


def reliability_curve(
    hist: ScoreHistogram, n_groups: int = 10, confidence: float = 0.95
) -> tuple[ReliabilityGroup, ...]:
    """The populated groups of ``n_groups`` equal-width probability groups, in order.

    A score bin belongs to the group of its representative probability. Raises ValueError
    for an empty histogram.
    """
    _check_cases(hist)
    n_groups = operator.index(n_groups)
    if n_groups < 1:
        raise ValueError(f"n_groups must be at least 1, got {n_groups}")
    group = np.minimum((BIN_PROBABILITIES * n_groups).astype(np.int64), n_groups - 1)
    totals = hist.positives + hist.negatives
    n = np.bincount(group, weights=totals, minlength=n_groups).astype(np.int64)
    n_pos = np.bincount(group, weights=hist.positives, minlength=n_groups).astype(np.int64)
    p_sum = np.bincount(group, weights=totals * BIN_PROBABILITIES, minlength=n_groups)
    curve = []
    for g in np.flatnonzero(n):
        observed = proportion_ci(int(n_pos[g]), int(n[g]), confidence)
        curve.append(
            ReliabilityGroup(
                p_low=g / n_groups,
                p_high=(g + 1) / n_groups,
                n=int(n[g]),
                n_pos=int(n_pos[g]),
                predicted=float(p_sum[g] / n[g]),
                observed=observed.value,
                ci_low=observed.ci_low,
                ci_high=observed.ci_high,
            )
        )
    return tuple(curve)


def expected_calibration_error(hist: ScoreHistogram, n_groups: int = 10) -> float:
    """``sum_g n_g / n * |observed_g - predicted_g|`` over `reliability_curve`'s groups."""
    curve = reliability_curve(hist, n_groups)
    return float(sum(g.n * abs(g.observed - g.predicted) for g in curve) / hist.n)


def brier_score(hist: ScoreHistogram) -> float:
    """``mean((p - y)**2)`` with each case's ``p`` its bin's `BIN_PROBABILITIES`."""
    _check_cases(hist)
    p = BIN_PROBABILITIES
    return float((hist.positives @ (1.0 - p) ** 2 + hist.negatives @ p**2) / hist.n)


def brier_binning_error_bound(hist: ScoreHistogram) -> float:
    """Largest possible ``|case-level Brier - brier_score(hist)|`` caused by the binning.

    A case in bin ``i`` has a probability within ``d_i`` of ``r_i = BIN_PROBABILITIES[i]``
    (``d_i`` the larger distance from ``r_i`` to the sigmoid of the bin's edges), so its
    squared error changes by at most ``d_i (2 |r_i - y| + d_i)``; the bound is their mean.
    """
    _check_cases(hist)
    r = BIN_PROBABILITIES
    lower = expit(np.concatenate([[-np.inf], SCORE_BIN_EDGES]))
    upper = expit(np.concatenate([SCORE_BIN_EDGES, [np.inf]]))
    d = np.maximum(r - lower, upper - r)
    per_case = hist.positives @ (d * (2 * (1.0 - r) + d)) + hist.negatives @ (d * (2 * r + d))
    return float(per_case / hist.n)


#: Enough halvings to bring any finite step below the smallest float.
_MAX_HALVINGS = 2100


def _fit_logistic(
    design: np.ndarray, offset: np.ndarray, positives: np.ndarray, totals: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """ML fit of ``logit P(y = 1) = offset + design @ coef`` to binned counts.

    Newton-Raphson with step halving from ``coef = 0``; returns ``coef`` and its covariance
    (the inverse Fisher information). The caller ensures the maximum exists.

    A step is halved until the likelihood does not fall, as many times as that takes: where
    the fitted probabilities are all near 0 or 1 (a confident model that is wrong, its cases
    in the outermost bins) the information is tiny and the full step astronomically long,
    and a step still that long after a few dozen halvings would land where every probability
    rounds to 0 or 1 and the information is singular. No step uphill means the maximum.
    """

    def log_likelihood(coef: np.ndarray) -> float:
        eta = offset + design @ coef
        return float(positives @ log_expit(eta) + (totals - positives) @ log_expit(-eta))

    coef = np.zeros(design.shape[1])
    current = log_likelihood(coef)
    for _ in range(100):
        eta = offset + design @ coef
        p = expit(eta)
        # p * (1 - p) as expit(eta) * expit(-eta): 1 - p rounds to 0 from eta = 37 on.
        information = design.T @ (design * (totals * p * expit(-eta))[:, None])
        step = np.linalg.solve(information, design.T @ (positives - totals * p))
        # Halve a step that overshoots (the likelihood is concave, so one that rises exists
        # unless coef is the maximum to working precision).
        for _ in range(_MAX_HALVINGS):
            candidate = log_likelihood(coef + step)
            if candidate >= current:
                break
            step /= 2
        else:
            return coef, np.linalg.inv(information)
        coef, current = coef + step, candidate
        if np.abs(step).max() < 1e-10:
            return coef, np.linalg.inv(information)
    raise RuntimeError("logistic recalibration did not converge")


def _estimates(
    coef: np.ndarray, covariance: np.ndarray, confidence: float, method: str
) -> list[Estimate]:
    """Each coefficient with its Wald interval."""
    half_widths = norm.ppf(0.5 + confidence / 2) * np.sqrt(np.diag(covariance))
    return [
        Estimate(float(c), float(c - h), float(c + h), method)
        for c, h in zip(coef, half_widths, strict=True)
    ]


def _populated(hist: ScoreHistogram) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Representative logits, positives and totals of the populated bins."""
    totals = hist.positives + hist.negatives
    keep = totals > 0
    return BIN_LOGITS[keep], hist.positives[keep].astype(float), totals[keep].astype(float)


def logistic_recalibration(
    hist: ScoreHistogram, confidence: float = 0.95
) -> tuple[Estimate, Estimate]:
    """Intercept ``a`` and slope ``b`` of ``logit P(y = 1) = a + b * logit(p)``.

    Both are None, with the reason, when the classes do not overlap in the bins (the slope
    would be infinite). Raises ValueError unless both classes have cases.
    """
    _check_confidence(confidence)
    _check_cases(hist, both_classes=True)
    pos_bins, neg_bins = np.flatnonzero(hist.positives), np.flatnonzero(hist.negatives)
    if pos_bins[0] >= neg_bins[-1] or pos_bins[-1] <= neg_bins[0]:
        missing = Estimate(None, None, None, f"{RECALIBRATION_METHOD}: classes separated")
        return missing, missing
    x, positives, totals = _populated(hist)
    design = np.column_stack([np.ones_like(x), x])
    coef, covariance = _fit_logistic(design, np.zeros_like(x), positives, totals)
    intercept, slope = _estimates(coef, covariance, confidence, RECALIBRATION_METHOD)
    return intercept, slope


def calibration_in_the_large(hist: ScoreHistogram, confidence: float = 0.95) -> Estimate:
    """``a'`` of ``logit P(y = 1) = a' + logit(p)``; 0 when the mean prediction matches.

    Raises ValueError unless both classes have cases.
    """
    _check_confidence(confidence)
    _check_cases(hist, both_classes=True)
    x, positives, totals = _populated(hist)
    coef, covariance = _fit_logistic(np.ones((len(x), 1)), x, positives, totals)
    return _estimates(coef, covariance, confidence, CITL_METHOD)[0]


@dataclass(frozen=True)
class Calibration:
    """Calibration of one stratum (definitions in the module docstring).

    ``reliability`` is `reliability_curve`; ``ece``, ``brier`` and
    ``brier_binning_error_bound`` are numbers in [0, 1]; ``intercept``, ``slope`` and
    ``calibration_in_the_large`` are `Estimate` (logit scale for the intercepts).
    """

    n: int
    n_pos: int
    n_groups: int
    confidence: float
    reliability: tuple[ReliabilityGroup, ...]
    ece: float
    brier: float
    brier_binning_error_bound: float
    intercept: Estimate
    slope: Estimate
    calibration_in_the_large: Estimate

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields, with the estimates as `Estimate.to_dict` and
        ``reliability`` as a list of dicts."""
        result = asdict(self)
        result["reliability"] = list(result["reliability"])
        return result


def assess_calibration(
    hist: ScoreHistogram, n_groups: int = 10, confidence: float = 0.95
) -> Calibration:
    """Every calibration statistic of the module for one stratum's histogram.

    Raises ValueError unless both classes have cases.
    """
    intercept, slope = logistic_recalibration(hist, confidence)
    return Calibration(
        n=hist.n,
        n_pos=hist.n_pos,
        n_groups=n_groups,
        confidence=confidence,
        reliability=reliability_curve(hist, n_groups, confidence),
        ece=expected_calibration_error(hist, n_groups),
        brier=brier_score(hist),
        brier_binning_error_bound=brier_binning_error_bound(hist),
        intercept=intercept,
        slope=slope,
        calibration_in_the_large=calibration_in_the_large(hist, confidence),
    )
