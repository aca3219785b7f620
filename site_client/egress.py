"""The site's egress guard: a ClientApp mod that checks every reply before it leaves.

A reply may hold only what `task.wire` allows for its message type: model weights shaped
like the model the site received, named scalar metrics, score histograms (segmentation:
Dice and HD95 aggregates, `task.wire.SEGMENTATION_FIELDS`) of strata at least as large as
the site's minimum cell size, and the site's profile. What an evaluation reply may hold
depends on the task of the model the request names. Anything else
(an unknown record or key, a per-case array, a small stratum) is blocked: the coordinator
receives an error naming the violation instead of the reply, and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord
from flwr.clientapp.typing import ClientAppCallable

from task.architectures import CLASSIFICATION, MODEL_ZOO, SEGMENTATION, task_of
from task.wire import (
    ARRAYS,
    CONFIG,
    DICE_BINS,
    DRIFT,
    DRIFT_KEYS,
    EVALUATE_METRIC_KEYS,
    EVALUATE_SEGMENTATION_METRIC_KEYS,
    HD95_BINS,
    HISTOGRAMS_PREFIX,
    METRICS,
    MODEL_CONFIG_PREFIX,
    MODEL_PREFIX,
    MSG_DRIFT,
    MSG_EVALUATE,
    MSG_EVALUATE_SEGMENTATION,
    MSG_EVALUATE_STRATA,
    MSG_PROFILE,
    MSG_TRAIN,
    MSG_TRAIN_LOCAL,
    N_SCORE_BINS,
    PROFILE,
    PROFILE_KEYS,
    SEGMENTATION_FIELDS,
    SEGMENTATION_PREFIX,
    SUPPRESSED,
    TRAIN_METRIC_KEYS,
    parse_histogram_key,
    parse_segmentation_key,
)
from validation.segmentation import SegmentationAggregate

LOG = logging.getLogger(__name__)
#: Error code of a reply the guard blocked.
EGRESS_BLOCKED = 451


class EgressViolation(ValueError):
    """A reply holds something the wire contract does not allow."""


class EgressGuard:
    """Mod that enforces the wire contract on every outgoing reply.

    min_cell_size_of: returns the site's minimum cell size for the message's context.
    """

    def __init__(self, min_cell_size_of: Callable[[Context], int]) -> None:
        self._min_cell_size_of = min_cell_size_of

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        try:
            check_reply(msg, reply, self._min_cell_size_of(context))
        except EgressViolation as exc:
            LOG.error("egress guard blocked a %s reply: %s", msg.metadata.message_type, exc)
            return Message(
                Error(EGRESS_BLOCKED, f"blocked by site egress guard: {exc}"), reply_to=msg
            )
        return reply


def check_reply(request: Message, reply: Message, min_cell_size: int) -> None:
    """Raise `EgressViolation` unless ``reply`` to ``request`` is allowed to leave."""
    message_type = request.metadata.message_type
    content = reply.content
    if message_type == MSG_PROFILE:
        _expect_records(content, {PROFILE: ConfigRecord})
        _expect_keys(content[PROFILE], PROFILE_KEYS, PROFILE)
        _check_subgroup_counts(content[PROFILE], min_cell_size)
    elif message_type in (MSG_TRAIN, MSG_TRAIN_LOCAL):
        _expect_records(content, {ARRAYS: ArrayRecord, METRICS: MetricRecord})
        _expect_same_arrays(request.content[ARRAYS], content[ARRAYS])
        _expect_keys(content[METRICS], TRAIN_METRIC_KEYS, METRICS)
    elif message_type == MSG_EVALUATE and _task_of(request) == SEGMENTATION:
        _expect_records(content, {METRICS: MetricRecord})
        metrics = content[METRICS]
        _expect_keys(metrics, EVALUATE_SEGMENTATION_METRIC_KEYS, METRICS)
        aggregate = {k: v for k, v in metrics.items() if k in SEGMENTATION_FIELDS}
        if aggregate:
            _check_segmentation_aggregate(aggregate, min_cell_size, METRICS)
    elif message_type == MSG_EVALUATE:
        _expect_records(content, {METRICS: MetricRecord})
        metrics = content[METRICS]
        _expect_keys(metrics, EVALUATE_METRIC_KEYS, METRICS)
        if "hist-negative" in metrics or "hist-positive" in metrics:
            _expect_histogram_pair(
                metrics.get("hist-negative"), metrics.get("hist-positive"), min_cell_size, METRICS
            )
    elif message_type in (MSG_EVALUATE_STRATA, MSG_EVALUATE_SEGMENTATION):
        # Score histograms per stratum, or (segmentation) Dice and HD95 aggregates per stratum.
        prefix, check = (
            (HISTOGRAMS_PREFIX, _check_stratified_histograms)
            if message_type == MSG_EVALUATE_STRATA
            else (SEGMENTATION_PREFIX, _check_stratified_aggregates)
        )
        models = [k.removeprefix(MODEL_PREFIX) for k in request.content.array_records]
        allowed: dict[str, type] = {prefix + m: MetricRecord for m in models}
        allowed[SUPPRESSED] = ConfigRecord
        _expect_records(content, allowed, require_all=False)
        for name, record in content.metric_records.items():
            check(name, record, min_cell_size)
        if SUPPRESSED in content:
            _expect_keys(content[SUPPRESSED], frozenset({"strata"}), SUPPRESSED)
    elif message_type == MSG_DRIFT:
        _expect_records(content, {DRIFT: ConfigRecord})
        _expect_keys(content[DRIFT], DRIFT_KEYS, DRIFT)
        _check_drift_counts(content[DRIFT], min_cell_size)
    else:
        raise EgressViolation(f"no reply may leave for message type {message_type!r}")


def _task_of(request: Message) -> str:
    """The task of the model ``request`` names in its config (classification without one)."""
    config = request.content.config_records.get(CONFIG)
    architecture = (config or {}).get(MODEL_CONFIG_PREFIX + "architecture")
    return task_of(str(architecture)) if architecture in MODEL_ZOO else CLASSIFICATION


def _expect_records(content: object, allowed: dict[str, type], require_all: bool = True) -> None:
    names = set(content.keys())  # type: ignore[attr-defined]
    unknown = sorted(names - set(allowed))
    if unknown:
        raise EgressViolation(f"record(s) not allowed: {', '.join(unknown)}")
    for name, kind in allowed.items():
        if name not in names:
            if require_all:
                raise EgressViolation(f"record {name!r} missing")
            continue
        if not isinstance(content[name], kind):  # type: ignore[index]
            raise EgressViolation(f"record {name!r} must be a {kind.__name__}")


def _expect_keys(record: MetricRecord | ConfigRecord, allowed: frozenset[str], name: str) -> None:
    unknown = sorted(set(record.keys()) - allowed)
    if unknown:
        raise EgressViolation(f"key(s) not allowed in {name!r}: {', '.join(unknown)}")


def _expect_same_arrays(sent: ArrayRecord, returned: ArrayRecord) -> None:
    if list(sent.keys()) != list(returned.keys()):
        raise EgressViolation("returned arrays are not the parameters of the model received")
    for key, array in returned.items():
        if tuple(array.shape) != tuple(sent[key].shape):
            raise EgressViolation(
                f"array {key!r} has shape {array.shape}, expected {sent[key].shape}"
            )


def _expect_histogram_pair(
    negatives: object, positives: object, min_cell_size: int, where: str
) -> None:
    for counts in (negatives, positives):
        if (
            not isinstance(counts, list)
            or len(counts) != N_SCORE_BINS
            or not all(isinstance(c, int) and c >= 0 for c in counts)
        ):
            raise EgressViolation(f"{where}: a histogram must be {N_SCORE_BINS} non-negative ints")
    total = sum(negatives) + sum(positives)  # type: ignore[arg-type]
    if total < min_cell_size:
        raise EgressViolation(f"{where}: stratum of {total} cases is below the minimum cell size")


def _check_subgroup_counts(profile: ConfigRecord, min_cell_size: int) -> None:
    for key in ("subgroup-n-train", "subgroup-n-test"):
        small = [n for n in profile.get(key, []) if 0 < int(n) < min_cell_size]  # type: ignore[call-overload]
        if small:
            raise EgressViolation(
                f"{PROFILE} {key}: a count of {small[0]} is below the minimum cell size"
            )


def _check_drift_counts(drift: ConfigRecord, min_cell_size: int) -> None:
    counts = [drift.get("n-new", 0)]
    for key in ("n-reference-of", "n-new-of", "unvalidated-n"):
        counts += list(drift.get(key, []))  # type: ignore[call-overload]
    small = [n for n in counts if 0 < int(n) < min_cell_size]  # type: ignore[call-overload]
    if small:
        raise EgressViolation(f"{DRIFT}: a count of {small[0]} is below the minimum cell size")


def _strata(
    name: str, record: MetricRecord, parse: Callable[[str], tuple[str, str, Any]], what: str
) -> dict[tuple[str, str], dict[Any, object]]:
    """The values of ``record`` (named ``name``) by (split, stratum), then by the last part
    of their key (a label, a field), ``parse`` splitting each key; a key it cannot parse
    is not a ``what`` key."""
    strata: dict[tuple[str, str], dict[Any, object]] = {}
    for key, value in record.items():
        try:
            split, stratum, part = parse(key)
        except ValueError as exc:
            raise EgressViolation(f"{name}: key {key!r} is not a {what} key") from exc
        strata.setdefault((split, stratum), {})[part] = value
    return strata


def _check_stratified_histograms(name: str, record: MetricRecord, min_cell_size: int) -> None:
    for (split, stratum), pair in _strata(name, record, parse_histogram_key, "histogram").items():
        labels = sorted(set(pair) - {0, 1})
        if labels:
            raise EgressViolation(
                f"{name}: {split}|{stratum} has label {labels[0]}, expected 0 or 1"
            )
        _expect_histogram_pair(pair.get(0), pair.get(1), min_cell_size, f"{name} {split}|{stratum}")


def _check_segmentation_aggregate(
    fields: dict[str, object], min_cell_size: int, where: str
) -> None:
    """A stratum's segmentation aggregate: every field, histograms of the task's bins,
    consistent counts, and at least ``min_cell_size`` cases."""
    try:
        aggregate = SegmentationAggregate.from_fields(fields)
    except (ValueError, TypeError) as exc:
        raise EgressViolation(f"{where}: not a segmentation aggregate ({exc})") from exc
    for name, bins in (("dice-hist", DICE_BINS), ("hd95-hist", HD95_BINS)):
        counts = fields[name]
        if not isinstance(counts, list) or not all(isinstance(c, int) for c in counts):
            raise EgressViolation(f"{where}: {name} must be {bins.n} ints")
    if aggregate.n < min_cell_size:
        raise EgressViolation(
            f"{where}: stratum of {aggregate.n} cases is below the minimum cell size"
        )


def _check_stratified_aggregates(name: str, record: MetricRecord, min_cell_size: int) -> None:
    strata = _strata(name, record, parse_segmentation_key, "segmentation")
    for (split, stratum), fields in strata.items():
        _check_segmentation_aggregate(fields, min_cell_size, f"{name} {split}|{stratum}")
