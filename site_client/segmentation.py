"""What a site reports about a segmentation model: Dice and HD95 aggregates per stratum.

Never masks, predictions or per-case values. Per stratum (`site_client.evaluation`'s:
the whole site, each manufacturer and scanner model, each subgroup the site's policy lets
out) it reports a `validation.segmentation.SegmentationAggregate`, whose definitions are
there, and only for strata of at least the site's minimum cell size: a smaller stratum's
name is reported as suppressed, its counts are not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logit

from site_client.dataset import SiteData
from site_client.evaluation import reportable_strata
from site_client.policy import EvaluationPolicy
from site_client.store import CaseRecord
from task.wire import segmentation_key
from validation.segmentation import (
    PIXEL_THRESHOLD,
    CaseMetrics,
    SegmentationAggregate,
    evaluate_cases,
)


@dataclass(frozen=True)
class StratifiedAggregates:
    """Aggregate fields keyed by `task.wire.segmentation_key`, and the strata withheld."""

    fields: dict[str, int | float | list[int]]
    suppressed: list[str]


def grid_spacing(record: CaseRecord, image_size: int) -> tuple[float, float] | None:
    """The case's pixel spacing (mm between rows, between columns) on the model's
    ``image_size`` x ``image_size`` grid; None when its image had none."""
    spacing = record.acquisition.pixel_spacing
    if spacing is None:
        return None
    return spacing[0] * record.rows / image_size, spacing[1] * record.columns / image_size


def case_metrics(logits: np.ndarray, data: SiteData) -> CaseMetrics:
    """Per-case Dice and HD95 of per-pixel ``logits`` (N, S, S) against ``data``'s masks:
    a pixel is predicted lesion when its probability is at least `PIXEL_THRESHOLD`."""
    if data.masks is None:
        raise ValueError("segmentation needs the cases' masks")
    size = data.images.shape[-1]
    return evaluate_cases(
        logits >= logit(PIXEL_THRESHOLD),
        data.masks[:, 0].numpy() > 0.5,
        [grid_spacing(r, size) for r in data.records],
    )


def stratified_aggregates(
    cases: CaseMetrics,
    data: SiteData,
    split: str,
    min_cell_size: int,
    evaluation: EvaluationPolicy | None = None,
) -> StratifiedAggregates:
    """The aggregate of ``cases`` (of ``data``, one split) in every stratum of at least
    ``min_cell_size`` cases; the smaller strata suppressed."""
    strata, suppressed = reportable_strata(data, split, min_cell_size, True, evaluation)
    fields: dict[str, int | float | list[int]] = {}
    for stratum, selected in strata.items():
        for name, value in SegmentationAggregate.of(cases.subset(selected)).to_fields().items():
            fields[segmentation_key(split, stratum, name)] = value
    return StratifiedAggregates(fields, suppressed)
