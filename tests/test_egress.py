"""The site's egress guard lets only the wire contract leave."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from site_client.egress import EGRESS_BLOCKED, EgressGuard, EgressViolation, check_reply
from task.model import ModelConfig, build_model
from task.wire import (
    ARRAYS,
    CONFIG,
    HISTOGRAMS_PREFIX,
    METRICS,
    MODEL_PREFIX,
    MSG_EVALUATE,
    MSG_EVALUATE_STRATA,
    MSG_PROFILE,
    MSG_TRAIN,
    N_SCORE_BINS,
    PROFILE,
    SUPPRESSED,
    histogram_key,
)

pytestmark = pytest.mark.usefixtures("message_identity")
SMALL = ModelConfig(architecture="cnn", image_size=16, channels=(4, 8), norm_groups=2)


def _request(message_type: str, content: RecordDict | None = None) -> Message:
    return Message(content or RecordDict(), dst_node_id=7, message_type=message_type)


def _model_arrays() -> ArrayRecord:
    return ArrayRecord(build_model(SMALL, seed=0).state_dict())


def _histogram(total: int) -> list[int]:
    counts = [0] * N_SCORE_BINS
    counts[N_SCORE_BINS // 2] = total
    return counts


def _train_reply(request: Message, **extra_metrics: float) -> Message:
    metrics = MetricRecord({"num-examples": 10, "train-loss": 0.5, **extra_metrics})
    content = RecordDict({ARRAYS: _model_arrays(), METRICS: metrics})
    return Message(content, reply_to=request)


def test_train_reply_with_model_weights_and_metrics_passes() -> None:
    request = _request(MSG_TRAIN, RecordDict({ARRAYS: _model_arrays()}))
    check_reply(request, _train_reply(request), min_cell_size=5)


def test_unknown_metric_key_is_blocked() -> None:
    request = _request(MSG_TRAIN, RecordDict({ARRAYS: _model_arrays()}))
    with pytest.raises(EgressViolation, match="case-ids"):
        check_reply(request, _train_reply(request, **{"case-ids": 3.0}), min_cell_size=5)


def test_extra_record_is_blocked() -> None:
    request = _request(MSG_TRAIN, RecordDict({ARRAYS: _model_arrays()}))
    reply = _train_reply(request)
    reply.content["labels"] = ConfigRecord({"case": "P123"})
    with pytest.raises(EgressViolation, match="labels"):
        check_reply(request, reply, min_cell_size=5)


def test_arrays_that_are_not_the_models_parameters_are_blocked() -> None:
    request = _request(MSG_TRAIN, RecordDict({ARRAYS: _model_arrays()}))
    images = ArrayRecord({"pixels": torch.zeros(4, 16, 16)})
    reply = Message(
        RecordDict({ARRAYS: images, METRICS: MetricRecord({"num-examples": 4})}), reply_to=request
    )
    with pytest.raises(EgressViolation, match="parameters of the model"):
        check_reply(request, reply, min_cell_size=5)


def test_reshaped_parameter_is_blocked() -> None:
    sent = _model_arrays()
    request = _request(MSG_TRAIN, RecordDict({ARRAYS: sent}))
    state = build_model(SMALL, seed=0).state_dict()
    first = next(iter(state))
    state[first] = torch.zeros(state[first].numel() + 1)
    reply = Message(
        RecordDict({ARRAYS: ArrayRecord(state), METRICS: MetricRecord({"num-examples": 4})}),
        reply_to=request,
    )
    with pytest.raises(EgressViolation, match="shape"):
        check_reply(request, reply, min_cell_size=5)


def test_evaluate_histograms_of_a_small_split_are_blocked() -> None:
    request = _request(MSG_EVALUATE)
    metrics = MetricRecord(
        {
            "num-examples": 3,
            "test-loss": 0.4,
            "hist-negative": _histogram(2),
            "hist-positive": _histogram(1),
        }
    )
    reply = Message(RecordDict({METRICS: metrics}), reply_to=request)
    with pytest.raises(EgressViolation, match="minimum cell size"):
        check_reply(request, reply, min_cell_size=5)
    check_reply(request, reply, min_cell_size=3)


def test_per_case_scores_disguised_as_a_histogram_are_blocked() -> None:
    request = _request(MSG_EVALUATE)
    scores = np.linspace(0.1, 0.9, 20).tolist()
    metrics = MetricRecord(
        {"num-examples": 20, "test-loss": 0.4, "hist-negative": scores, "hist-positive": scores}
    )
    reply = Message(RecordDict({METRICS: metrics}), reply_to=request)
    with pytest.raises(EgressViolation, match="non-negative ints"):
        check_reply(request, reply, min_cell_size=5)


def test_strata_reply_only_for_models_requested_and_large_strata() -> None:
    request = _request(
        MSG_EVALUATE_STRATA,
        RecordDict({MODEL_PREFIX + "global": _model_arrays(), CONFIG: ConfigRecord()}),
    )
    good = MetricRecord(
        {
            histogram_key("test", "site=all", 0): _histogram(6),
            histogram_key("test", "site=all", 1): _histogram(4),
        }
    )
    reply = Message(
        RecordDict({HISTOGRAMS_PREFIX + "global": good, SUPPRESSED: ConfigRecord({"strata": []})}),
        reply_to=request,
    )
    check_reply(request, reply, min_cell_size=5)

    reply.content[HISTOGRAMS_PREFIX + "other-model"] = good
    with pytest.raises(EgressViolation, match="other-model"):
        check_reply(request, reply, min_cell_size=5)

    small = MetricRecord(
        {
            histogram_key("test", "scanner=GE X", 0): _histogram(1),
            histogram_key("test", "scanner=GE X", 1): _histogram(1),
        }
    )
    reply = Message(RecordDict({HISTOGRAMS_PREFIX + "global": small}), reply_to=request)
    with pytest.raises(EgressViolation, match="scanner=GE X"):
        check_reply(request, reply, min_cell_size=5)


def test_profile_with_unknown_key_is_blocked() -> None:
    request = _request(MSG_PROFILE)
    reply = Message(
        RecordDict({PROFILE: ConfigRecord({"site-id": "a", "patient-names": ["DOE^JANE"]})}),
        reply_to=request,
    )
    with pytest.raises(EgressViolation, match="patient-names"):
        check_reply(request, reply, min_cell_size=5)


def test_profile_with_a_subgroup_count_below_the_minimum_cell_size_is_blocked() -> None:
    request = _request(MSG_PROFILE)
    leaky = ConfigRecord({"site-id": "a", "subgroup-strata": ["x"], "subgroup-n-test": [2]})
    reply = Message(RecordDict({PROFILE: leaky}), reply_to=request)
    with pytest.raises(EgressViolation, match="subgroup-n-test: a count of 2"):
        check_reply(request, reply, min_cell_size=5)


def test_guard_turns_a_violation_into_an_error_reply() -> None:
    request = _request(MSG_TRAIN, RecordDict({ARRAYS: _model_arrays()}))
    guard = EgressGuard(lambda context: 5)

    def leaky_app(msg: Message, context: object) -> Message:
        return _train_reply(msg, **{"mrn": 123456.0})

    reply = guard(request, None, leaky_app)  # type: ignore[arg-type]
    assert reply.has_error()
    assert reply.error.code == EGRESS_BLOCKED
    assert "mrn" in reply.error.reason
    assert not reply.has_content()


def test_unknown_message_type_gets_no_reply_through() -> None:
    request = _request("query.dump")
    reply = Message(RecordDict({METRICS: MetricRecord({"x": 1})}), reply_to=request)
    with pytest.raises(EgressViolation, match=r"query\.dump"):
        check_reply(request, reply, min_cell_size=5)
