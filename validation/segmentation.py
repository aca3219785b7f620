"""Lesion segmentation metrics with confidence intervals, from site aggregates.

Sites never send masks, predictions or per-case values. Each site computes, for every test
case, the metrics below, and sends per stratum only their `SegmentationAggregate`: counts,
a histogram of the per-case values on fixed bins (``task.wire.DICE_BINS``, ``HD95_BINS``),
their sum and their sum of squares. Aggregates of strata or sites are pooled by adding
them, exactly; every statistic here is computed from an aggregate.

Per case (at the site, on the model's S x S grid):

- **Prediction** P: the pixels whose logit is >= 0 (probability >= 0.5). **Reference** R:
  the site's lesion mask, resized to the grid (a pixel is in it when at least half of the
  area it covers is).
- **Dice** = 2 |P and R| / (|P| + |R|), for a case whose reference is not empty (a
  lesion); 0 when the prediction is empty. A case whose reference is empty has no Dice
  (0/0; counting it as 1 would let the easy negative cases inflate the mean): it counts
  in the **false-positive rate** instead, the share of such cases with a non-empty
  prediction.
- **HD95** (mm): the 95th percentile Hausdorff distance between the boundaries of P and R,
  as MONAI's ``HausdorffDistanceMetric(percentile=95)`` computes it: a mask's boundary is
  the mask minus its binary erosion (4-connected, outside the image counts as background);
  for every boundary pixel of P the Euclidean distance, in mm, to the nearest boundary
  pixel of R, and the other way round; the 95th percentile (linear interpolation) of each
  of the two sets; the larger of the two. Defined only when P and R are both non-empty: a
  case with a lesion and an empty prediction is counted as **missed** (its Dice is 0), one
  whose pixel spacing is unknown as **no spacing**; neither has an HD95.
- **Pixel spacing**: the stored image's DICOM PixelSpacing (mm between rows, between
  columns), scaled to the model's grid (times the original rows or columns over S).

Statistics of one aggregate (95% by default):

- **Mean** = sum / n, with the Student t interval mean +- t(n-1) s / sqrt(n), s the sample
  standard deviation from the sum and the sum of squares, clipped to the metric's range
  (Dice [0, 1], HD95 [0, inf)). Exact: the aggregate holds the sums, not binned values. No
  interval for n < 2 or when all values are equal (s = 0).
- **Median**: the grouped-data median (linear within the bin holding the middle value).
  Interval: the distribution-free order-statistic interval [x(k), x(n-k+1)], k the largest
  rank with P(Binomial(n, 1/2) <= k - 1) <= alpha / 2 (coverage >= 95%), widened to the
  edges of the bins those two values fall in (conservative: at most one bin wider on each
  side). No interval for n < 6 (at 95%: k = 0). HD95's last bin is open (>= 100 mm): a
  median or bound there is None, and ``method`` says so.
- **False-positive rate**: Wilson score interval (`validation.metrics.proportion_ci`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.ndimage import binary_erosion, distance_transform_edt
from scipy.stats import binom, t

from task.wire import DICE_BINS, HD95_BINS, ValueBins
from validation.metrics import Estimate, proportion_ci, wide_interval_flags

#: The 95th percentile of the Hausdorff distance.
HD95_PERCENTILE = 95.0
#: The probability at or above which a pixel is predicted to be lesion.
PIXEL_THRESHOLD = 0.5
MEAN_METHOD = "Student t interval from the per-case values' sum and sum of squares"
MEDIAN_METHOD = (
    "grouped median; distribution-free order-statistic interval widened to its bins' edges"
)
#: The metrics of one scope (`segmentation_performance`) whose intervals are on [0, 1].
BOUNDED_METRICS = ("dice_mean", "dice_median", "false_positive_rate")
#: What each metric of a scope is, for the evidence and the report (module docstring).
DEFINITIONS = {
    "dice_mean": "mean per-case Dice over the cases with a lesion (reference mask not empty)",
    "dice_median": "median per-case Dice over the cases with a lesion",
    "hd95_median": "median per-case HD95 (mm) over the cases with a lesion and a non-empty "
    "prediction",
    "hd95_mean": "mean per-case HD95 (mm) over the cases with a lesion and a non-empty prediction",
    "false_positive_rate": "share of the cases without a lesion (empty reference mask) with a "
    "non-empty prediction",
}


def dice_coefficient(prediction: ArrayLike, reference: ArrayLike) -> float:
    """Dice of two binary masks of one shape: ``2 |P and R| / (|P| + |R|)``. ValueError
    when both are empty (undefined; see the module docstring)."""
    pred, ref = _binary_pair(prediction, reference)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        raise ValueError("Dice is undefined for two empty masks")
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def hausdorff95(
    prediction: ArrayLike, reference: ArrayLike, spacing: tuple[float, float] = (1.0, 1.0)
) -> float:
    """HD95 of two binary 2-D masks in the unit of ``spacing`` (distance between rows, then
    columns), as MONAI computes it (module docstring). ValueError when either is empty."""
    pred, ref = _binary_pair(prediction, reference)
    if pred.ndim != 2:
        raise ValueError(f"masks must be 2-D, got {pred.ndim}-D")
    if not (pred.any() and ref.any()):
        raise ValueError("HD95 is undefined when a mask is empty")
    pred_edges, ref_edges = pred ^ binary_erosion(pred), ref ^ binary_erosion(ref)
    to_ref = distance_transform_edt(~ref_edges, sampling=spacing)[pred_edges]
    to_pred = distance_transform_edt(~pred_edges, sampling=spacing)[ref_edges]
    return float(
        max(np.percentile(to_ref, HD95_PERCENTILE), np.percentile(to_pred, HD95_PERCENTILE))
    )


def _binary_pair(prediction: ArrayLike, reference: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(prediction) != 0, np.asarray(reference) != 0
    if pred.shape != ref.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} and {ref.shape}")
    return pred, ref


@dataclass(frozen=True)
class CaseMetrics:
    """Per-case results of one model on N cases: at the site only, never sent.

    dice: (N,) Dice, NaN where the reference is empty. hd95: (N,) HD95 in mm, NaN where
    undefined (an empty mask) or the spacing is unknown. reference_empty, prediction_empty:
    (N,) bool.
    """

    dice: np.ndarray
    hd95: np.ndarray
    reference_empty: np.ndarray
    prediction_empty: np.ndarray

    def subset(self, selected: np.ndarray) -> CaseMetrics:
        """The cases where the boolean ``selected`` is True."""
        return CaseMetrics(
            self.dice[selected],
            self.hd95[selected],
            self.reference_empty[selected],
            self.prediction_empty[selected],
        )


def evaluate_cases(
    predictions: np.ndarray,
    references: np.ndarray,
    spacings: Sequence[tuple[float, float] | None],
) -> CaseMetrics:
    """`CaseMetrics` of binary ``predictions`` against ``references`` (both (N, H, W)),
    each case's HD95 in mm with its ``spacings[i]`` (None: unknown, no HD95)."""
    predictions, references = _binary_pair(predictions, references)
    if predictions.ndim != 3 or len(spacings) != len(predictions):
        raise ValueError("need (N, H, W) masks and one spacing per case")
    reference_empty = ~references.any(axis=(1, 2))
    prediction_empty = ~predictions.any(axis=(1, 2))
    dice = np.full(len(predictions), np.nan)
    hd95 = np.full(len(predictions), np.nan)
    for i, (pred, ref, spacing) in enumerate(zip(predictions, references, spacings, strict=True)):
        if reference_empty[i]:
            continue
        dice[i] = dice_coefficient(pred, ref)
        if spacing is not None and not prediction_empty[i]:
            hd95[i] = hausdorff95(pred, ref, spacing)
    return CaseMetrics(dice, hd95, reference_empty, prediction_empty)


@dataclass(frozen=True, eq=False)
class ValueHistogram:
    """Per-case values of a stratum: ``counts`` per bin of ``bins``, their sum ``total``
    and sum of squares ``total_sq``. ``a + b`` pools two of the same bins."""

    bins: ValueBins
    counts: np.ndarray
    total: float = 0.0
    total_sq: float = 0.0

    def __post_init__(self) -> None:
        counts = np.asarray(self.counts)
        if counts.shape != (self.bins.n,):
            raise ValueError(f"counts must have {self.bins.n} bins, got shape {counts.shape}")
        if np.any(counts < 0) or np.any(counts != np.round(counts)):
            raise ValueError("counts must be non-negative whole numbers")
        counts = counts.astype(np.int64)
        counts.flags.writeable = False
        object.__setattr__(self, "counts", counts)
        if not (math.isfinite(self.total) and math.isfinite(self.total_sq)):
            raise ValueError("sums must be finite")

    @property
    def n(self) -> int:
        """Number of values."""
        return int(self.counts.sum())

    @property
    def mean(self) -> float | None:
        """The mean of the values (exact: from their sum); None without values."""
        return self.total / self.n if self.n else None

    @classmethod
    def of(cls, values: ArrayLike, bins: ValueBins) -> ValueHistogram:
        """The histogram of finite ``values`` (>= the first edge) on ``bins``."""
        array = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(array)) or np.any(array < bins.edges[0]):
            raise ValueError(f"values must be finite and >= {bins.edges[0]}")
        counts = np.bincount(bins.index(array), minlength=bins.n)
        return cls(bins, counts, float(array.sum()), float((array**2).sum()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ValueHistogram):
            return NotImplemented
        return (
            self.bins == other.bins
            and bool(np.array_equal(self.counts, other.counts))
            and (self.total, self.total_sq) == (other.total, other.total_sq)
        )

    def __add__(self, other: object) -> ValueHistogram:
        if not isinstance(other, ValueHistogram):
            return NotImplemented
        if other.bins != self.bins:
            raise ValueError("cannot pool histograms of different bins")
        return ValueHistogram(
            self.bins,
            self.counts + other.counts,
            self.total + other.total,
            self.total_sq + other.total_sq,
        )


def _no_values(bins: ValueBins) -> ValueHistogram:
    return ValueHistogram(bins, np.zeros(bins.n, dtype=np.int64))


@dataclass(frozen=True)
class SegmentationAggregate:
    """What a site sends for one stratum (`task.wire.SEGMENTATION_FIELDS`).

    n_empty: cases whose reference mask is empty; n_false_positive: of those, the ones
    with a non-empty prediction. dice: the Dice of each case with a lesion. n_missed: of
    those, cases with an empty prediction; n_no_spacing: cases with a lesion and a
    non-empty prediction but no pixel spacing. hd95: the HD95 (mm) of the others.
    """

    n_empty: int = 0
    n_false_positive: int = 0
    n_missed: int = 0
    n_no_spacing: int = 0
    dice: ValueHistogram = field(default_factory=lambda: _no_values(DICE_BINS))
    hd95: ValueHistogram = field(default_factory=lambda: _no_values(HD95_BINS))

    def __post_init__(self) -> None:
        counts = (self.n_empty, self.n_false_positive, self.n_missed, self.n_no_spacing)
        if any(operator.index(c) < 0 for c in counts):
            raise ValueError("counts must be >= 0")
        if self.dice.bins != DICE_BINS or self.hd95.bins != HD95_BINS:
            raise ValueError("Dice and HD95 must be on task.wire's DICE_BINS and HD95_BINS")
        if self.n_false_positive > self.n_empty:
            raise ValueError("more false positives than cases without a lesion")
        if self.hd95.n + self.n_missed + self.n_no_spacing != self.dice.n:
            raise ValueError("HD95 values + missed + no spacing must be the cases with a lesion")

    @property
    def n(self) -> int:
        """Cases in the stratum."""
        return self.n_empty + self.dice.n

    @property
    def n_lesion(self) -> int:
        """Cases with a lesion (a non-empty reference mask)."""
        return self.dice.n

    @classmethod
    def of(cls, cases: CaseMetrics) -> SegmentationAggregate:
        """The aggregate of ``cases``."""
        lesion = ~cases.reference_empty
        predicted = lesion & ~cases.prediction_empty
        measured = predicted & np.isfinite(cases.hd95)
        return cls(
            n_empty=int(cases.reference_empty.sum()),
            n_false_positive=int((cases.reference_empty & ~cases.prediction_empty).sum()),
            n_missed=int((lesion & cases.prediction_empty).sum()),
            n_no_spacing=int((predicted & ~measured).sum()),
            dice=ValueHistogram.of(cases.dice[lesion], DICE_BINS),
            hd95=ValueHistogram.of(cases.hd95[measured], HD95_BINS),
        )

    def __add__(self, other: object) -> SegmentationAggregate:
        if not isinstance(other, SegmentationAggregate):
            return NotImplemented
        return SegmentationAggregate(
            self.n_empty + other.n_empty,
            self.n_false_positive + other.n_false_positive,
            self.n_missed + other.n_missed,
            self.n_no_spacing + other.n_no_spacing,
            self.dice + other.dice,
            self.hd95 + other.hd95,
        )

    def to_fields(self) -> dict[str, int | float | list[int]]:
        """The aggregate as `task.wire.SEGMENTATION_FIELDS` (MetricRecord values)."""
        fields: dict[str, int | float | list[int]] = {
            "n": self.n,
            "n-empty": self.n_empty,
            "n-false-positive": self.n_false_positive,
            "n-missed": self.n_missed,
            "n-no-spacing": self.n_no_spacing,
        }
        for name, values in (("dice", self.dice), ("hd95", self.hd95)):
            fields |= {
                f"{name}-hist": values.counts.tolist(),
                f"{name}-sum": values.total,
                f"{name}-sum-sq": values.total_sq,
            }
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> SegmentationAggregate:
        """Inverse of `to_fields`; ValueError for missing, malformed or inconsistent fields."""
        try:
            values = {
                name: ValueHistogram(
                    bins,
                    np.asarray(fields[f"{name}-hist"]),
                    float(fields[f"{name}-sum"]),
                    float(fields[f"{name}-sum-sq"]),
                )
                for name, bins in (("dice", DICE_BINS), ("hd95", HD95_BINS))
            }
            aggregate = cls(
                *(
                    _whole(fields[k])
                    for k in ("n-empty", "n-false-positive", "n-missed", "n-no-spacing")
                ),
                **values,
            )
            n = _whole(fields["n"])
        except KeyError as exc:
            raise ValueError(f"segmentation aggregate lacks {exc.args[0]!r}") from exc
        if n != aggregate.n:
            raise ValueError(f"n = {n}, but the counts add up to {aggregate.n} cases")
        return aggregate


def _whole(value: Any) -> int:
    """``value`` as an int; ValueError unless it is a whole number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ValueError(f"expected a whole number, got {value!r}")
    return int(value)


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return confidence


def mean_ci(
    values: ValueHistogram, confidence: float = 0.95, upper_limit: float = math.inf
) -> Estimate:
    """Mean of ``values`` with its Student t interval, clipped to [0, ``upper_limit``]
    (module docstring); value None without values."""
    _check_confidence(confidence)
    n, mean = values.n, values.mean
    if mean is None:
        return Estimate(None, None, None, f"{MEAN_METHOD}: no cases")
    if n < 2:
        return Estimate(mean, None, None, f"{MEAN_METHOD}: no interval from 1 case")
    variance = max(values.total_sq - n * mean * mean, 0.0) / (n - 1)
    if variance <= 1e-12 * max(mean * mean, 1.0):
        return Estimate(mean, None, None, f"{MEAN_METHOD}: no interval, all values equal")
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * math.sqrt(variance / n)
    return Estimate(mean, max(mean - half, 0.0), min(mean + half, upper_limit), MEAN_METHOD)


def median_ci(values: ValueHistogram, confidence: float = 0.95) -> Estimate:
    """Median of ``values`` with its order-statistic interval at bin resolution (module
    docstring); value None without values."""
    _check_confidence(confidence)
    n = values.n
    if n == 0:
        return Estimate(None, None, None, f"{MEDIAN_METHOD}: no cases")
    bins, cumulative = values.bins, np.cumsum(values.counts)
    middle = int(np.searchsorted(cumulative, n / 2, side="left"))
    notes = []
    if math.isinf(bins.upper(middle)):
        median = None
        notes.append(f"median >= {bins.lower(middle):g}, beyond the last bin edge")
    else:
        before = cumulative[middle] - values.counts[middle]
        share = (n / 2 - before) / values.counts[middle]
        median = float(bins.lower(middle) + share * (bins.upper(middle) - bins.lower(middle)))
    # k: the largest rank with P(Binomial(n, 1/2) <= k - 1) <= alpha / 2.
    alpha_half = (1 - confidence) / 2
    k = int(binom.ppf(alpha_half, n, 0.5))
    k += int(binom.cdf(k, n, 0.5) <= alpha_half)
    if k < 1:
        notes.append(f"no interval from {n} cases")
        return Estimate(median, None, None, f"{MEDIAN_METHOD}: {'; '.join(notes)}")
    rank_bin = [int(np.searchsorted(cumulative, rank, side="left")) for rank in (k, n - k + 1)]
    high: float | None = bins.upper(rank_bin[1])
    if high is not None and math.isinf(high):
        high = None
        notes.append("upper bound beyond the last bin edge")
    method = MEDIAN_METHOD + (f": {'; '.join(notes)}" if notes else "")
    return Estimate(median, bins.lower(rank_bin[0]), high, method)


def segmentation_performance(
    aggregate: SegmentationAggregate, confidence: float = 0.95
) -> dict[str, Any]:
    """One scope of the segmentation evidence from its aggregate: ``dice_mean``,
    ``dice_median``, ``hd95_median``, ``hd95_mean`` (mm) and ``false_positive_rate`` as
    `Estimate.to_dict` (module docstring); counts ``n`` (cases), ``n_pos`` (with a
    lesion), ``n_empty``, ``n_false_positive``, ``n_missed``, ``n_hd95``,
    ``n_no_spacing``; ``flags`` (`validation.metrics.wide_interval_flags` of the metrics
    on [0, 1])."""
    performance: dict[str, Any] = {
        "dice_mean": mean_ci(aggregate.dice, confidence, 1.0).to_dict(),
        "dice_median": median_ci(aggregate.dice, confidence).to_dict(),
        "hd95_median": median_ci(aggregate.hd95, confidence).to_dict(),
        "hd95_mean": mean_ci(aggregate.hd95, confidence).to_dict(),
        "false_positive_rate": proportion_ci(
            aggregate.n_false_positive, aggregate.n_empty, confidence
        ).to_dict(),
        "n": aggregate.n,
        "n_pos": aggregate.n_lesion,
        "n_empty": aggregate.n_empty,
        "n_false_positive": aggregate.n_false_positive,
        "n_missed": aggregate.n_missed,
        "n_hd95": aggregate.hd95.n,
        "n_no_spacing": aggregate.n_no_spacing,
    }
    performance["flags"] = wide_interval_flags(performance, names=BOUNDED_METRICS)
    return performance
