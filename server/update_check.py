"""The coordinator's check of every train reply before aggregation.

A malformed update is rejected with its reason and never aggregated: not exactly one
ArrayRecord, an array missing or unexpected, a shape that is not the global model's, an
array of another kind (integers for a floating-point array), NaN or infinite values, not
exactly one MetricRecord, or no positive, finite ``num-examples``. A well-formed but
hostile update (a Byzantine site's sign-flipped or scaled model) passes: that is what
robust aggregation (`server.strategies`) is for.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from task.wire import NUM_EXAMPLES

#: At most this many array names in a reason.
_NAMES_SHOWN = 3


def update_problem(content: RecordDict, reference: ArrayRecord) -> str | None:
    """Why the train reply ``content`` cannot be aggregated with the global model
    ``reference`` (the arrays sent for the round), in one line; None when it can."""
    return metrics_problem(content) or arrays_problem(content, reference)


def metrics_problem(content: RecordDict) -> str | None:
    """Why the metrics of the train reply ``content`` are unusable (None when they are
    not): not exactly one MetricRecord, or no positive, finite ``num-examples``."""
    metrics = content.metric_records
    if len(metrics) != 1:
        return f"{len(metrics)} metric records, expected 1"
    (metric,) = metrics.values()
    examples = metric.get(NUM_EXAMPLES)
    if not _positive_number(examples):
        return f"{NUM_EXAMPLES} is {examples!r}, not a positive number"
    return None


def arrays_problem(content: RecordDict, reference: ArrayRecord) -> str | None:
    """Why the model in the train reply ``content`` does not fit the global model
    ``reference`` (None when it does): not exactly one ArrayRecord, an array missing or
    unexpected, another shape, another kind of number, NaN or infinite values.

    Floating-point arrays of another width are accepted: the global model a FedAdam round
    returns is float64 while the sites train and reply in float32."""
    arrays = content.array_records
    if len(arrays) != 1:
        return f"{len(arrays)} array records, expected 1"
    (record,) = arrays.values()
    missing = [k for k in reference if k not in record]
    if missing:
        return f"missing array(s) {_names(missing)}"
    unexpected = [k for k in record if k not in reference]
    if unexpected:
        return f"unexpected array(s) {_names(unexpected)}"
    for key, expected in reference.items():
        got = record[key]
        if tuple(got.shape) != tuple(expected.shape):
            return (
                f"array {key}: shape {list(got.shape)}, "
                f"the global model's is {list(expected.shape)}"
            )
        if _kind(got.dtype) != _kind(expected.dtype):
            return f"array {key}: dtype {got.dtype}, the global model's is {expected.dtype}"
        values = got.numpy()
        if np.issubdtype(values.dtype, np.inexact) and not np.isfinite(values).all():
            nan, infinite = int(np.isnan(values).sum()), int(np.isinf(values).sum())
            return f"array {key}: {nan} NaN and {infinite} infinite values"
    return None


def harmonise_metrics(replies: list[Message]) -> None:
    """Cut the MetricRecord of each of ``replies`` (accepted train replies), in place, to
    the keys all of them share: Flower's strategies refuse to aggregate replies whose metric
    keys differ (a site whose privacy total is unbounded sends no ``dp-epsilon-total``)."""
    if not replies:
        return
    shared = set.intersection(*(set(_metrics_of(r)) for r in replies))
    for reply in replies:
        (name,) = reply.content.metric_records
        metrics = _metrics_of(reply)
        reply.content[name] = MetricRecord({k: v for k, v in metrics.items() if k in shared})


def _metrics_of(reply: Message) -> MetricRecord:
    (metric,) = reply.content.metric_records.values()
    return metric


def _kind(dtype: np.dtype | str) -> str:
    """A dtype's kind of number: float, complex, signed or unsigned integer, bool."""
    return np.dtype(dtype).kind


def _positive_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_NAMES_SHOWN])
    return shown + (f" and {len(keys) - _NAMES_SHOWN} more" if len(keys) > _NAMES_SHOWN else "")
