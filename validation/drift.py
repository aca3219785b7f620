"""Data drift between a reference window and new data, from binned counts.

A site compares what its model was validated on (the reference window: the labelled cases
of its store) with what it sees now (new data: cases received since, not yet labelled), on
per-image input statistics and on the model's scores, per scanner group. Both sides are
histograms on fixed bin edges, so the same functions serve the site (which raises its own
alarm) and the coordinator (which only ever sees the results).

Definitions (reference proportions ``r_i``, new proportions ``q_i`` over the same bins):

- **PSI** (population stability index) = ``sum_i (q_i - r_i) * ln(q_i / r_i)``, with each
  proportion floored at `PSI_FLOOR` so that an empty bin does not make it infinite. By the
  usual convention PSI < 0.1 is stable, 0.1-0.25 a moderate shift, >= 0.25 a major shift.
- **KS** (two-sample Kolmogorov-Smirnov) statistic ``D = max_k |R_k - Q_k|`` over the bin
  edges, ``R``, ``Q`` the cumulative proportions: the exact case-level statistic of the
  binned values. Its p-value is the asymptotic Kolmogorov distribution at
  ``D * sqrt(n * m / (n + m))`` (``scipy.stats.kstwobign``), conservative for binned data.

**Alarm**: a shift both significant (KS p < `KS_ALARM_P`) and material (PSI >= `PSI_ALARM`,
a moderate shift or more). PSI alone is no test: with ``B`` bins, samples of ``n`` and ``m``
cases from one distribution give a PSI of about ``(B - 1) (1/n + 1/m)`` by chance (0.45 for
10 bins and 30 against 60 cases), so a site's small windows would raise false alarms.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import kstwobign

#: Proportions below this count as this much in the PSI (an empty bin is not infinite).
PSI_FLOOR = 1e-4
#: PSI at or above this is at least a moderate shift (the usual convention), material.
PSI_ALARM = 0.1
#: A KS p-value below this is a significant shift (about 2% chance of any false alarm over
#: 3 features x 2 groups x 3 sites).
KS_ALARM_P = 0.001


def _proportions(counts: ArrayLike, name: str) -> tuple[np.ndarray, int]:
    array = np.asarray(counts, dtype=np.float64)
    if array.ndim != 1 or array.size < 2:
        raise ValueError(f"{name} must be a 1-D array of at least 2 bin counts")
    if (array < 0).any() or not np.isfinite(array).all():
        raise ValueError(f"{name} must hold finite non-negative counts")
    total = round(float(array.sum()))
    if total == 0:
        raise ValueError(f"{name} is empty: no cases to compare")
    return array / array.sum(), total


def _checked(reference: ArrayLike, new: ArrayLike) -> tuple[np.ndarray, int, np.ndarray, int]:
    r, n = _proportions(reference, "reference")
    q, m = _proportions(new, "new")
    if r.shape != q.shape:
        raise ValueError(f"reference and new have {r.size} and {q.size} bins: same edges needed")
    return r, n, q, m


def population_stability_index(reference: ArrayLike, new: ArrayLike) -> float:
    """PSI of the ``new`` bin counts against the ``reference`` ones (same bins)."""
    r, _, q, _ = _checked(reference, new)
    r, q = np.maximum(r, PSI_FLOOR), np.maximum(q, PSI_FLOOR)
    return float(np.sum((q - r) * np.log(q / r)))


def ks_from_counts(reference: ArrayLike, new: ArrayLike) -> tuple[float, float]:
    """Two-sample KS statistic ``D`` and its asymptotic p-value, from bin counts."""
    r, n, q, m = _checked(reference, new)
    statistic = float(np.max(np.abs(np.cumsum(r) - np.cumsum(q))))
    p_value = float(kstwobign.sf(statistic * np.sqrt(n * m / (n + m))))
    return statistic, min(p_value, 1.0)


@dataclass(frozen=True)
class DriftResult:
    """One feature's drift in one scanner group.

    feature: what was compared (e.g. "score", "intensity-mean"); n_reference, n_new: cases;
    psi; ks, ks_p: KS statistic and p-value; alarm: KS p < `KS_ALARM_P` and PSI >=
    `PSI_ALARM`.
    """

    feature: str
    n_reference: int
    n_new: int
    psi: float
    ks: float
    ks_p: float
    alarm: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(feature: str, reference: ArrayLike, new: ArrayLike) -> DriftResult:
    """Drift of ``new`` against ``reference`` (bin counts on the same edges) for ``feature``."""
    _, n, _, m = _checked(reference, new)
    psi = population_stability_index(reference, new)
    ks, p = ks_from_counts(reference, new)
    return DriftResult(feature, n, m, psi, ks, p, p < KS_ALARM_P and psi >= PSI_ALARM)
