"""Differences between strata (sites, manufacturers): two-AUC tests and meta-analysis.

Everything is computed from the strata's `ScoreHistogram` (see `validation.metrics`).

Comparing two AUCs (`delong_difference_test`): DeLong's test for ``AUC_a - AUC_b`` when the
two AUCs come from **independent samples** (different cases, e.g. scanner A's test cases
vs scanner B's), so the covariance term of DeLong's paired test is 0:
``Var(AUC_a - AUC_b) = Var(AUC_a) + Var(AUC_b)``, each from `delong_variance`. The paired
test (two models scored on the same cases) needs each case's scores under both models,
which separate per-model histograms cannot give; it is not offered.

Meta-analysis across strata (`meta_analysis`, `heterogeneity_across_strata`): each
stratum's estimate ``theta_i`` in (0, 1) (AUC, sensitivity or specificity) is pooled on the
logit scale, ``y_i = logit(theta_i)``, with variance ``v_i``:

- AUC: ``v_i = Var(AUC_i) / (AUC_i (1 - AUC_i))**2`` (delta method, DeLong variance); the
  stratum's interval is then exactly `roc_auc_ci`'s.
- Proportion ``x / n``: ``v_i = 1/x + 1/(n - x)`` (delta method for the binomial).

A stratum whose ``v_i`` is 0 or undefined (no cases of a class, fewer than 2 cases of a
class, AUC or proportion 0 or 1, all cases in one bin) is excluded and listed with the
reason. With weights ``w_i = 1 / v_i`` over the ``k`` remaining strata:

- fixed effect: ``mu_F = sum(w y) / sum(w)``, ``SE = 1 / sqrt(sum(w))``;
- Cochran's ``Q = sum(w (y - mu_F)**2)`` on ``df = k - 1``, p-value ``P(chi2_df >= Q)``;
- ``I2 = max(0, (Q - df) / Q)`` (0 when ``Q = 0``): the share of the variation between
  strata beyond chance (Higgins & Thompson 2002);
- DerSimonian-Laird ``tau2 = max(0, (Q - df) / (sum(w) - sum(w**2) / sum(w)))``, the
  between-strata variance on the logit scale;
- random effects: weights ``w*_i = 1 / (v_i + tau2)``, ``mu_R = sum(w* y) / sum(w*)``,
  ``SE = 1 / sqrt(sum(w*))``.

With one stratum there is no heterogeneity to measure: ``Q = 0`` on 0 df, no p-value and
no I2, ``tau2 = 0`` (random = fixed). Intervals are Wald intervals on the logit scale,
transformed back; pooled values are reported on the metric's own scale (AUC, proportion).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import expit, logit
from scipy.stats import chi2, norm

from validation.metrics import (
    Estimate,
    ScoreHistogram,
    _check_confidence,
    confusion_at,
    delong_variance,
    proportion_ci,
    roc_auc,
)

DIFFERENCE_METHOD = "DeLong, independent samples (unpaired), Wald"
FIXED_METHOD = "inverse-variance fixed effect, logit scale"
RANDOM_METHOD = "DerSimonian-Laird random effects, logit scale"
#: Metrics `heterogeneity_across_strata` pools.
META_METRICS = ("auc", "sensitivity", "specificity")


# --- two AUCs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AucDifference:
    """DeLong's test of ``auc_a - auc_b`` for two independent samples.

    ``difference = auc_a - auc_b`` with its standard error; ``z = difference / se``, the
    two-sided ``p_value`` and the Wald interval ``difference -+ z_crit * se``. ``z``,
    ``p_value`` and the interval are None when the standard error is 0 (both AUCs 0 or 1,
    or all cases in one bin), and ``method`` says so.
    """

    auc_a: float
    auc_b: float
    difference: float
    standard_error: float
    z: float | None
    p_value: float | None
    ci_low: float | None
    ci_high: float | None
    method: str

    def to_dict(self) -> dict[str, float | str | None]:
        """The fields as plain Python values."""
        return asdict(self)


def delong_difference_test(
    a: ScoreHistogram, b: ScoreHistogram, confidence: float = 0.95
) -> AucDifference:
    """DeLong's test for the difference of the AUCs of two independent samples ``a``, ``b``.

    ``Var(AUC_a - AUC_b) = delong_variance(a) + delong_variance(b)`` (no covariance: the
    cases differ). Not for two models on the same cases (paired DeLong needs per-case
    scores). A sample with AUC 0 or 1 contributes variance 0, as in case-level DeLong.
    Raises ValueError when a sample has fewer than 2 cases of a class.
    """
    _check_confidence(confidence)
    auc_a, auc_b = roc_auc(a), roc_auc(b)
    se = math.sqrt(delong_variance(a) + delong_variance(b))
    difference = auc_a - auc_b
    if se == 0.0:
        reason = f"{DIFFERENCE_METHOD}: no test, both DeLong variances are 0"
        return AucDifference(auc_a, auc_b, difference, se, None, None, None, None, reason)
    z = difference / se
    half_width = float(norm.ppf(0.5 + confidence / 2)) * se
    return AucDifference(
        auc_a=auc_a,
        auc_b=auc_b,
        difference=difference,
        standard_error=se,
        z=z,
        p_value=float(2 * norm.sf(abs(z))),
        ci_low=difference - half_width,
        ci_high=difference + half_width,
        method=DIFFERENCE_METHOD,
    )


# --- inverse-variance pooling -------------------------------------------------------------


@dataclass(frozen=True)
class Pooled:
    """Inverse-variance pooling of ``k`` estimates on one scale (see the module docstring).

    ``fixed``/``random`` and their standard errors are on the scale of the inputs; ``q``,
    ``df``, ``q_p_value`` (None when ``df = 0``), ``i2`` (a fraction in [0, 1], None when
    ``df = 0``) and ``tau2`` measure heterogeneity; ``weights`` are the random-effects
    weights, as fractions summing to 1 (equal to the fixed-effect ones when ``tau2 = 0``).
    """

    k: int
    fixed: float
    fixed_se: float
    random: float
    random_se: float
    q: float
    df: int
    q_p_value: float | None
    i2: float | None
    tau2: float
    weights: tuple[float, ...]


def inverse_variance_pool(estimates: ArrayLike, variances: ArrayLike) -> Pooled:
    """Fixed- and random-effects (DerSimonian-Laird) pooling, Cochran's Q and I2.

    ``estimates`` and ``variances`` are 1-D of equal length ``k >= 1``, finite, variances
    positive. Formulas in the module docstring.
    """
    y, v = np.asarray(estimates, dtype=np.float64), np.asarray(variances, dtype=np.float64)
    if y.ndim != 1 or v.shape != y.shape or y.size == 0:
        raise ValueError(
            f"estimates and variances must be 1-D, non-empty and of equal length, "
            f"got shapes {y.shape} and {v.shape}"
        )
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(v)) and np.all(v > 0)):
        raise ValueError("estimates must be finite and variances finite and positive")
    w = 1.0 / v
    fixed = float(w @ y / w.sum())
    q = float(w @ (y - fixed) ** 2)
    df = y.size - 1
    tau2 = max(0.0, (q - df) / float(w.sum() - w @ w / w.sum())) if df else 0.0
    w_random = 1.0 / (v + tau2)
    return Pooled(
        k=y.size,
        fixed=fixed,
        fixed_se=float(1.0 / np.sqrt(w.sum())),
        random=float(w_random @ y / w_random.sum()),
        random_se=float(1.0 / np.sqrt(w_random.sum())),
        q=q,
        df=df,
        q_p_value=float(chi2.sf(q, df)) if df else None,
        i2=(max(0.0, (q - df) / q) if q > 0 else 0.0) if df else None,
        tau2=tau2,
        weights=tuple(float(x) for x in w_random / w_random.sum()),
    )


# --- strata -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StratumEstimate:
    """One stratum's input to `meta_analysis`.

    ``value`` in [0, 1] is the metric (None where not defined), from ``n`` cases (AUC: all
    cases; sensitivity: positives; specificity: negatives); ``variance`` is the variance of
    ``logit(value)``, None where not defined, and then ``reason`` says why.
    """

    name: str
    n: int
    value: float | None
    variance: float | None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.value is not None and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"stratum {self.name!r}: value must be in [0, 1], got {self.value}")
        if self.variance is None and not self.reason:
            raise ValueError(f"stratum {self.name!r}: a missing variance needs a reason")
        if self.variance is not None and not (
            self.value is not None and 0.0 < self.value < 1.0 and 0.0 <= self.variance < np.inf
        ):
            raise ValueError(
                f"stratum {self.name!r}: a variance needs a value in (0, 1) and must be "
                f"finite and non-negative, got value={self.value}, variance={self.variance}"
            )


def auc_stratum(name: str, hist: ScoreHistogram) -> StratumEstimate:
    """The stratum's AUC with ``Var(logit AUC) = Var_DeLong / (AUC (1 - AUC))**2``."""
    missing = [label for label, k in (("positive", hist.n_pos), ("negative", hist.n_neg)) if not k]
    if missing:
        return StratumEstimate(name, hist.n, None, None, f"no {' or '.join(missing)} cases")
    auc = roc_auc(hist)
    if min(hist.n_pos, hist.n_neg) < 2:
        reason = "a class has 1 case: no DeLong variance"
    elif auc in (0.0, 1.0):
        reason = f"AUC is {auc:g} (complete separation): logit variance undefined"
    else:
        variance = delong_variance(hist)
        if variance > 0.0:
            return StratumEstimate(name, hist.n, auc, variance / (auc * (1.0 - auc)) ** 2)
        reason = "all cases in one bin: DeLong variance is 0"
    return StratumEstimate(name, hist.n, auc, None, reason)


def proportion_stratum(name: str, successes: int, trials: int) -> StratumEstimate:
    """The stratum's proportion ``successes / trials`` with ``Var(logit) = 1/x + 1/(n - x)``."""
    value = proportion_ci(successes, trials).value  # validates the counts
    if value is None:
        return StratumEstimate(name, trials, None, None, "no cases")
    if value in (0.0, 1.0):
        reason = f"proportion is {value:g}: logit variance undefined"
        return StratumEstimate(name, trials, value, None, reason)
    return StratumEstimate(name, trials, value, 1.0 / successes + 1.0 / (trials - successes))


# --- meta-analysis ------------------------------------------------------------------------


@dataclass(frozen=True)
class ForestRow:
    """One stratum of a forest plot: its estimate with the logit-scale Wald interval, and
    its random-effects weight (a fraction of 1)."""

    name: str
    n: int
    estimate: float
    ci_low: float
    ci_high: float
    weight: float


@dataclass(frozen=True)
class Heterogeneity:
    """Meta-analysis of one metric across strata (see the module docstring).

    ``fixed`` and ``random`` are the pooled values with intervals on the metric's scale;
    ``q``, ``df``, ``q_p_value``, ``i2`` (fraction) and ``tau2`` (logit scale) come from
    `inverse_variance_pool` and are None where no stratum could be pooled (``k = 0``).
    ``forest`` lists the pooled strata, ``excluded`` maps the others to the reason.
    """

    metric: str
    confidence: float
    k: int
    fixed: Estimate
    random: Estimate
    q: float | None
    df: int | None
    q_p_value: float | None
    i2: float | None
    tau2: float | None
    forest: tuple[ForestRow, ...]
    excluded: dict[str, str]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: the fields, with ``fixed``/``random`` as `Estimate.to_dict` and
        ``forest`` as a list of dicts."""
        result = asdict(self)
        result["forest"] = list(result["forest"])
        return result


def _wald(center: float, se: float, z_crit: float, method: str = "") -> Estimate:
    """``expit`` of a logit-scale estimate and of its Wald interval ``center -+ z_crit se``."""
    return Estimate(
        float(expit(center)),
        float(expit(center - z_crit * se)),
        float(expit(center + z_crit * se)),
        method,
    )


def meta_analysis(
    strata: Sequence[StratumEstimate], confidence: float = 0.95, metric: str = ""
) -> Heterogeneity:
    """Pool the strata's values on the logit scale; strata without a positive variance are
    excluded and listed with the reason. Raises ValueError without strata or with
    duplicate names."""
    _check_confidence(confidence)
    names = [stratum.name for stratum in strata]
    if not names:
        raise ValueError("meta-analysis needs at least one stratum")
    if len(set(names)) != len(names):
        raise ValueError(f"stratum names must be unique, got {names}")
    included = [s for s in strata if s.variance is not None and s.variance > 0.0]
    excluded = {s.name: s.reason or "variance is 0" for s in strata if s not in included}
    if not included:
        missing = Estimate(None, None, None, "no stratum with a positive variance")
        return Heterogeneity(
            metric, confidence, 0, missing, missing, None, None, None, None, None, (), excluded
        )
    y = logit([s.value for s in included])
    v = np.array([s.variance for s in included])
    pooled = inverse_variance_pool(y, v)
    z_crit = float(norm.ppf(0.5 + confidence / 2))
    intervals = [_wald(center, se, z_crit) for center, se in zip(y, np.sqrt(v), strict=True)]
    forest = tuple(
        ForestRow(s.name, s.n, s.value, interval.ci_low, interval.ci_high, weight)
        for s, interval, weight in zip(included, intervals, pooled.weights, strict=True)
    )
    return Heterogeneity(
        metric=metric,
        confidence=confidence,
        k=pooled.k,
        fixed=_wald(pooled.fixed, pooled.fixed_se, z_crit, FIXED_METHOD),
        random=_wald(pooled.random, pooled.random_se, z_crit, RANDOM_METHOD),
        q=pooled.q,
        df=pooled.df,
        q_p_value=pooled.q_p_value,
        i2=pooled.i2,
        tau2=pooled.tau2,
        forest=forest,
        excluded=excluded,
    )


def heterogeneity_across_strata(
    histograms: Mapping[str, ScoreHistogram],
    metric: str = "auc",
    edge_index: int | None = None,
    confidence: float = 0.95,
) -> Heterogeneity:
    """`meta_analysis` of ``metric`` over strata given as name -> histogram.

    ``metric`` is one of `META_METRICS`; sensitivity and specificity are taken at the
    operating threshold ``edge_index`` (see `confusion_at`), which they require and the AUC
    ignores.
    """
    if metric not in META_METRICS:
        raise ValueError(f"metric must be one of {list(META_METRICS)}, got {metric!r}")
    if metric != "auc" and edge_index is None:
        raise ValueError(f"{metric} needs an edge_index (the operating threshold)")
    strata = []
    for name, hist in histograms.items():
        if metric == "auc":
            strata.append(auc_stratum(name, hist))
            continue
        counts = confusion_at(hist, edge_index)
        successes, failures = (
            (counts.tp, counts.fn) if metric == "sensitivity" else (counts.tn, counts.fp)
        )
        strata.append(proportion_stratum(name, successes, successes + failures))
    return meta_analysis(strata, confidence, metric)
