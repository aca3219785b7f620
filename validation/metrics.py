"""Binary classification metrics with confidence intervals, from score histograms.

Sites never send per-case scores. Per stratum they send two `ScoreHistogram` counts, of
positive and of negative cases per score bin; every statistic here is computed from them.
Scores are logits, binned on the fixed edges ``task.wire.SCORE_BIN_EDGES`` (uniform in
logit space; the first and last bins are open-ended): bin ``i`` holds
``edges[i-1] <= s < edges[i]``. Histograms from different strata or sites are pooled by
summing them bin by bin.

Definitions (``n_pos`` positive and ``n_neg`` negative cases, ``S+``/``S-`` the score of
a random positive/negative case):

- **AUC** (area under the ROC curve) = ``P(S+ > S-) + 1/2 P(S+ == S-)``, where two scores
  are tied when they fall in the same bin. It equals the case-level AUC (as computed by
  ``sklearn.metrics.roc_auc_score``) when no two cases of different class share a bin;
  otherwise each such pair counts 1/2 instead of 0 or 1, so the two differ by at most
  `auc_binning_error_bound` (half the fraction of positive-negative pairs sharing a bin).
- **Confusion counts at an operating threshold**: a case is predicted positive iff its
  score is ``>= SCORE_BIN_EDGES[edge_index]``, i.e. it lies in bin ``edge_index + 1`` or
  above. Thresholds are bin edges, so these counts are exact, not approximated.
- **Sensitivity** = TP / (TP + FN), **specificity** = TN / (TN + FP), **PPV** =
  TP / (TP + FP), **NPV** = TN / (TN + FN). PPV and NPV depend on the prevalence of the
  sample they come from.

Interval methods:

- Proportions: Wilson score interval (default) or Clopper-Pearson exact interval, from
  ``scipy.stats.binomtest``.
- AUC: DeLong's nonparametric variance (DeLong, DeLong & Clarke-Pearson 1988), computed
  from the histogram. All cases in one bin share their placement values (structural
  components) ``V10`` (for a positive: the fraction of negatives below it, ties 1/2) and
  ``V01`` (for a negative: the fraction of positives above it, ties 1/2), so
  ``Var(AUC) = s2(V10) / n_pos + s2(V01) / n_neg`` with ``s2`` the sample variance
  over cases. The result is exactly case-level DeLong on the binned scores. The
  normal-approximation interval is built on the logit scale of the AUC and transformed
  back, so it stays inside (0, 1).
- AUC of exactly 1 or 0 (classes completely separated by the bins): DeLong's variance is
  0 and the logit is infinite, so no Wald interval exists. The interval is then the
  two-sided Clopper-Pearson interval for ``k`` successes in ``k = min(n_pos, n_neg)``
  trials (0 successes for AUC = 0): pairing positives and negatives one-to-one gives
  ``k`` independent pairs, each ranked correctly with probability ``P(S+ > S-) <= AUC``,
  and all ``k`` were ranked correctly. The bound is exact and conservative: at AUC = 1 the
  lower limit is ``((1 - confidence) / 2) ** (1 / k)``. ``method`` says so.
- DeLong's variance is otherwise 0 only when every case lies in one bin (AUC = 1/2, no
  pair ranked); then, and when a class has fewer than 2 cases (no sample variance), the
  AUC is given without an interval and ``method`` says why.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import expit, logit
from scipy.stats import binomtest, norm

from task.wire import N_SCORE_BINS, SCORE_BIN_EDGES, score_bin_index

#: Proportion interval methods: name for `proportion_ci` -> description in ``method``.
PROPORTION_METHODS = {"wilson": "Wilson score", "exact": "Clopper-Pearson exact"}

AUC_METHOD = "DeLong (from score histograms), logit-transformed"
AUC_SEPARATED_METHOD = (
    "Clopper-Pearson on min(n_pos, n_neg) disjoint positive-negative pairs "
    "(complete separation: DeLong variance is 0)"
)


def _as_counts(values: ArrayLike, name: str) -> np.ndarray:
    """``values`` as a read-only int64 array of N_SCORE_BINS non-negative whole counts."""
    array = np.asarray(values)
    if array.ndim != 1 or array.shape[0] != N_SCORE_BINS:
        raise ValueError(
            f"{name} must be a 1-D array of length N_SCORE_BINS={N_SCORE_BINS}, "
            f"got shape {array.shape}"
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name} must hold numbers, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
        raise ValueError(f"{name} must hold whole-number counts")
    if np.any(array < 0):
        raise ValueError(f"{name} must hold non-negative counts, got minimum {array.min()}")
    counts = array.astype(np.int64)
    counts.flags.writeable = False
    return counts


@dataclass(frozen=True, eq=False)
class ScoreHistogram:
    """Counts of positive and negative cases per score bin (bins of ``task.wire``).

    ``positives[i]`` / ``negatives[i]`` count the positive / negative cases whose logit lies
    in bin ``i`` (``score_bin_index``). Both are int64 arrays of length ``N_SCORE_BINS``;
    array-likes of whole numbers are accepted and copied read-only. ``a + b`` pools two
    histograms (strata or sites) bin by bin.
    """

    positives: np.ndarray
    negatives: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "positives", _as_counts(self.positives, "positives"))
        object.__setattr__(self, "negatives", _as_counts(self.negatives, "negatives"))

    @property
    def n_pos(self) -> int:
        """Number of positive cases."""
        return int(self.positives.sum())

    @property
    def n_neg(self) -> int:
        """Number of negative cases."""
        return int(self.negatives.sum())

    @property
    def n(self) -> int:
        """Number of cases."""
        return self.n_pos + self.n_neg

    def __add__(self, other: object) -> ScoreHistogram:
        if not isinstance(other, ScoreHistogram):
            return NotImplemented
        return ScoreHistogram(self.positives + other.positives, self.negatives + other.negatives)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScoreHistogram):
            return NotImplemented
        return bool(
            np.array_equal(self.positives, other.positives)
            and np.array_equal(self.negatives, other.negatives)
        )

    @classmethod
    def empty(cls) -> ScoreHistogram:
        """The histogram of no cases (the neutral element of ``+``)."""
        zeros = np.zeros(N_SCORE_BINS, dtype=np.int64)
        return cls(zeros, zeros)

    @classmethod
    def from_logits(cls, logits: ArrayLike, labels: ArrayLike) -> ScoreHistogram:
        """Bin case-level ``logits`` (finite or +-inf) by their ``labels`` (0 or 1)."""
        scores = np.asarray(logits, dtype=np.float64)
        classes = np.asarray(labels)
        if scores.ndim != 1 or classes.shape != scores.shape:
            raise ValueError(
                f"logits and labels must be 1-D of equal length, "
                f"got shapes {scores.shape} and {classes.shape}"
            )
        if np.any(np.isnan(scores)):
            raise ValueError("logits must not be NaN")
        if not np.all(np.isin(classes, (0, 1))):
            raise ValueError("labels must be 0 or 1")
        bins = score_bin_index(scores)
        positive = classes == 1
        return cls(
            np.bincount(bins[positive], minlength=N_SCORE_BINS),
            np.bincount(bins[~positive], minlength=N_SCORE_BINS),
        )


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval (None where not defined).

    Serialises (`to_dict`) to one metric of the evidence contract:
    ``{value, ci_low, ci_high, method}``; ``method`` names how the interval was computed
    and, where a value or interval is missing, why.
    """

    value: float | None
    ci_low: float | None
    ci_high: float | None
    method: str

    def to_dict(self) -> dict[str, float | str | None]:
        """``{"value", "ci_low", "ci_high", "method"}`` with plain Python floats."""
        return asdict(self)


@dataclass(frozen=True)
class Confusion:
    """Confusion counts at one operating threshold."""

    tp: int
    fp: int
    tn: int
    fn: int


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _check_edge_index(edge_index: int) -> int:
    """``edge_index`` as an int in ``[0, len(SCORE_BIN_EDGES))``."""
    index = operator.index(edge_index)
    if not 0 <= index < len(SCORE_BIN_EDGES):
        raise ValueError(f"edge_index must be in [0, {len(SCORE_BIN_EDGES)}), got {edge_index}")
    return index


def _check_both_classes(hist: ScoreHistogram) -> None:
    if hist.n_pos == 0 or hist.n_neg == 0:
        raise ValueError(
            f"AUC needs positive and negative cases, got n_pos={hist.n_pos}, n_neg={hist.n_neg}"
        )


def _placements(hist: ScoreHistogram) -> tuple[np.ndarray, np.ndarray]:
    """DeLong placement values per bin, shared by all cases in the bin.

    Returns ``(v10, v01)``: ``v10[i]`` is, for a positive in bin ``i``, the fraction of
    negatives in lower bins plus half of those in bin ``i``; ``v01[i]`` is, for a negative
    in bin ``i``, the fraction of positives in higher bins plus half of those in bin ``i``.
    """
    _check_both_classes(hist)
    pos, neg = hist.positives, hist.negatives
    neg_below = np.cumsum(neg) - neg
    pos_above = hist.n_pos - np.cumsum(pos)
    return (neg_below + 0.5 * neg) / hist.n_neg, (pos_above + 0.5 * pos) / hist.n_pos


def roc_auc(hist: ScoreHistogram) -> float:
    """Area under the ROC curve: ``P(S+ > S-) + 1/2 P(S+ == S-)``, ties = same bin.

    Raises ValueError when a class has no cases.
    """
    v10, _ = _placements(hist)
    return float(hist.positives @ v10 / hist.n_pos)


@dataclass(frozen=True)
class RocCurve:
    """The empirical ROC curve of a score histogram: one point per bin edge, from (0, 0)
    (nothing called positive) to (1, 1) (everything), each the false and true positive
    rates when a case is called positive iff its score lies above the edge. Joining the
    points with straight lines gives the area `roc_auc` (ties within a bin count one half).
    ``thresholds[i]``: the probability at or above which point ``i`` calls a case positive
    (1 for the first point; for the last, the highest that calls every case positive).
    """

    fpr: tuple[float, ...]
    tpr: tuple[float, ...]
    thresholds: tuple[float, ...]

    def to_dict(self) -> dict[str, list[float]]:
        return {"fpr": list(self.fpr), "tpr": list(self.tpr), "thresholds": list(self.thresholds)}


def roc_curve(hist: ScoreHistogram) -> RocCurve:
    """`RocCurve` of ``hist``, keeping only the points where the curve moves (a bin with no
    case adds none). Raises ValueError when a class has no cases."""
    _check_both_classes(hist)
    # Cases above each edge, from the highest edge down: bins are in increasing score.
    tp = np.concatenate([[0], np.cumsum(hist.positives[::-1])])
    fp = np.concatenate([[0], np.cumsum(hist.negatives[::-1])])
    probabilities = np.concatenate([[1.0], expit(SCORE_BIN_EDGES[::-1]), [0.0]])
    keep = np.ones(len(tp), dtype=bool)
    keep[1:] = (np.diff(tp) > 0) | (np.diff(fp) > 0)
    return RocCurve(
        tuple(float(v) for v in fp[keep] / hist.n_neg),
        tuple(float(v) for v in tp[keep] / hist.n_pos),
        tuple(float(v) for v in probabilities[keep]),
    )


def auc_binning_error_bound(hist: ScoreHistogram) -> float:
    """Largest possible ``|case-level AUC - roc_auc(hist)|`` caused by the binning.

    Only positive-negative pairs in the same bin can be ranked differently at case level
    (there they count 1/2 instead of 0 or 1), so the bound is
    ``sum_i positives[i] * negatives[i] / (2 * n_pos * n_neg)``.
    """
    _check_both_classes(hist)
    return float(hist.positives @ hist.negatives / (2 * hist.n_pos * hist.n_neg))


def delong_variance(hist: ScoreHistogram) -> float:
    """DeLong's variance of `roc_auc`: ``s2(V10) / n_pos + s2(V01) / n_neg``.

    ``s2`` is the sample variance (denominator n - 1) of the placement values over the
    cases of a class, computed per bin (see `_placements`). Equals case-level DeLong on the
    binned scores. Raises ValueError when a class has fewer than 2 cases.
    """
    v10, v01 = _placements(hist)
    n_pos, n_neg = hist.n_pos, hist.n_neg
    if min(n_pos, n_neg) < 2:
        raise ValueError(
            f"DeLong variance needs 2 cases per class, got n_pos={n_pos}, n_neg={n_neg}"
        )
    auc = roc_auc(hist)
    s10 = hist.positives @ (v10 - auc) ** 2 / (n_pos - 1)
    s01 = hist.negatives @ (v01 - auc) ** 2 / (n_neg - 1)
    return float(s10 / n_pos + s01 / n_neg)


def roc_auc_ci(hist: ScoreHistogram, confidence: float = 0.95) -> Estimate:
    """AUC with a DeLong confidence interval on the logit scale, from a histogram.

    See the module docstring for the method and for the cases without a DeLong interval
    (complete separation: Clopper-Pearson on disjoint pairs; fewer than 2 cases in a class
    or all cases in one bin: no interval). Raises ValueError when a class has no cases.
    """
    _check_confidence(confidence)
    auc = roc_auc(hist)
    n_pos, n_neg = hist.n_pos, hist.n_neg
    # Placement values are k / (2 n), so complete separation gives exactly 1.0 or 0.0.
    if auc in (0.0, 1.0):
        pairs = min(n_pos, n_neg)
        bound = proportion_ci(pairs if auc == 1.0 else 0, pairs, confidence, method="exact")
        return replace(bound, method=AUC_SEPARATED_METHOD)
    if min(n_pos, n_neg) < 2:
        return Estimate(auc, None, None, f"{AUC_METHOD}: no interval, a class has 1 case")
    variance = delong_variance(hist)
    if variance == 0.0:
        return Estimate(auc, None, None, f"{AUC_METHOD}: no interval, all cases in one bin")
    half_width = norm.ppf(0.5 + confidence / 2) * np.sqrt(variance) / (auc * (1.0 - auc))
    center = logit(auc)
    return Estimate(
        auc, float(expit(center - half_width)), float(expit(center + half_width)), AUC_METHOD
    )


def proportion_ci(
    successes: int, trials: int, confidence: float = 0.95, method: str = "wilson"
) -> Estimate:
    """Proportion ``successes / trials`` with a binomial confidence interval.

    ``method`` is ``"wilson"`` (Wilson score) or ``"exact"`` (Clopper-Pearson), computed by
    ``scipy.stats.binomtest(...).proportion_ci``. With ``trials == 0`` the value and the
    interval are None and ``method`` says "no cases".
    """
    _check_confidence(confidence)
    if method not in PROPORTION_METHODS:
        raise ValueError(f"method must be one of {sorted(PROPORTION_METHODS)}, got {method!r}")
    successes, trials = operator.index(successes), operator.index(trials)
    if not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} / {trials}")
    name = PROPORTION_METHODS[method]
    if trials == 0:
        return Estimate(None, None, None, f"{name}: no cases")
    interval = binomtest(successes, trials).proportion_ci(confidence, method=method)
    return Estimate(successes / trials, float(interval.low), float(interval.high), name)


def confusion_at(hist: ScoreHistogram, edge_index: int) -> Confusion:
    """Confusion counts when a case is positive iff its score >= SCORE_BIN_EDGES[edge_index].

    The predicted positives are the bins ``edge_index + 1`` and above; the counts are exact.
    """
    first_positive_bin = _check_edge_index(edge_index) + 1
    tp = int(hist.positives[first_positive_bin:].sum())
    fp = int(hist.negatives[first_positive_bin:].sum())
    return Confusion(tp=tp, fp=fp, tn=hist.n_neg - fp, fn=hist.n_pos - tp)


def youden_threshold(hist: ScoreHistogram) -> int:
    """Edge index maximising Youden's J = sensitivity + specificity - 1.

    Meant for training (or tuning) data: the operating point is fixed before testing.
    Several edges often share the maximum (a plateau between populated bins, e.g. the gap
    of separable classes); the median of the maximising indices (the lower of the two
    middle ones) is returned, which keeps the threshold away from both classes. J is
    compared exactly in integers. Raises ValueError when a class has no cases.
    """
    _check_both_classes(hist)
    # tp and fp at every edge e: cases in bins e+1 and above.
    tp = hist.n_pos - np.cumsum(hist.positives)[:-1]
    fp = hist.n_neg - np.cumsum(hist.negatives)[:-1]
    youden_scaled = tp * hist.n_neg - fp * hist.n_pos  # J * n_pos * n_neg
    best = np.flatnonzero(youden_scaled == youden_scaled.max())
    return int(best[(len(best) - 1) // 2])


def threshold_edge(probability: float) -> int:
    """The bin edge nearest (in logit space) to an operating threshold given as a
    probability in (0, 1): operating points are bin edges, so that counts are exact."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"a threshold must be a probability in (0, 1), got {probability}")
    return int(np.argmin(np.abs(np.asarray(SCORE_BIN_EDGES) - logit(probability))))


def threshold_probability(edge_index: int) -> float:
    """The threshold ``SCORE_BIN_EDGES[edge_index]`` as a probability (its sigmoid)."""
    return float(expit(SCORE_BIN_EDGES[_check_edge_index(edge_index)]))


#: An interval wider than this (on the 0-1 scale of AUC and proportions) is flagged: the
#: stratum is too small for its estimate to support a conclusion either way.
WIDE_INTERVAL = 0.3


def wide_interval_flags(
    performance: dict[str, Any],
    max_width: float = WIDE_INTERVAL,
    names: tuple[str, ...] = ("auc", "sensitivity", "specificity", "ppv", "npv"),
) -> list[str]:
    """The metrics ``names`` of one performance scope (default: `binary_performance`'s)
    whose interval is wider than ``max_width`` or missing, as one-line flags
    (``"sensitivity: interval 0.42 wide"``)."""
    flags = []
    for name in names:
        metric = performance[name]
        if metric["value"] is None:
            continue
        if metric["ci_low"] is None or metric["ci_high"] is None:
            flags.append(f"{name}: no interval ({metric['method']})")
        elif metric["ci_high"] - metric["ci_low"] > max_width:
            flags.append(f"{name}: interval {metric['ci_high'] - metric['ci_low']:.2f} wide")
    return flags


def auc_estimate(hist: ScoreHistogram, confidence: float = 0.95) -> Estimate:
    """`roc_auc_ci` of ``hist``; its value None, with the reason, when a class is empty
    (the AUC is not defined)."""
    missing = [name for name, k in (("positive", hist.n_pos), ("negative", hist.n_neg)) if not k]
    if missing:
        return Estimate(None, None, None, f"not defined: no {' or '.join(missing)} cases")
    return roc_auc_ci(hist, confidence)


def binary_performance(
    hist: ScoreHistogram,
    edge_index: int,
    confidence: float = 0.95,
    proportion_method: str = "wilson",
) -> dict[str, Any]:
    """One scope of the evidence contract's ``performance`` from its histogram.

    Returns ``{"auc", "sensitivity", "specificity", "ppv", "npv"}`` as `Estimate.to_dict`
    (proportion intervals by ``proportion_method``, see `proportion_ci`) and ``"n"``,
    ``"n_pos"``, ``"tp"``, ``"fp"``, ``"tn"``, ``"fn"``, ``"threshold"`` (the operating
    threshold as a probability) and ``"flags"`` (`wide_interval_flags`: estimates too
    uncertain to mean anything). The AUC is None, with the reason, when a class is empty.
    """
    counts = confusion_at(hist, edge_index)
    auc = auc_estimate(hist, confidence)
    proportions = {
        "sensitivity": (counts.tp, counts.tp + counts.fn),
        "specificity": (counts.tn, counts.tn + counts.fp),
        "ppv": (counts.tp, counts.tp + counts.fp),
        "npv": (counts.tn, counts.tn + counts.fn),
    }
    performance = {
        "auc": auc.to_dict(),
        **{
            name: proportion_ci(k, n, confidence, proportion_method).to_dict()
            for name, (k, n) in proportions.items()
        },
        "n": hist.n,
        "n_pos": hist.n_pos,
        **asdict(counts),
        "threshold": threshold_probability(edge_index),
    }
    performance["flags"] = wide_interval_flags(performance)
    return performance
