"""Resuming a job after the coordinator stopped: the strategy's state, round numbers,
the resume point's integrity and the records of the round cut short."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from server.checkpoints import CheckpointError, CheckpointRegistry
from server.records import JsonLines
from server.resume import (
    INTERRUPTED_FILE,
    SERVER_STATE_FILE,
    ResumeError,
    ResumeLog,
    ResumePoint,
    ServerState,
    set_aside_interrupted,
)
from server.strategies import RecordingStrategy, StrategyConfig, make_strategy
from task.wire import ARRAYS, METRICS, NUM_EXAMPLES

SITES = {101: "site-a", 102: "site-b", 103: "site-c"}


class ScriptedSites(Grid):
    """Three sites that answer at once: each trains by moving every weight towards its own
    target (so that FedAdam's moments matter), and evaluates with a loss of its distance."""

    def get_node_ids(self) -> Iterable[int]:
        return list(SITES)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return [self._answer(m) for m in messages]

    def _answer(self, message: Message) -> Message:
        node = message.metadata.dst_node_id
        received = message.content[ARRAYS].to_torch_state_dict()
        target = float(node - 100)
        if message.metadata.message_type.startswith("train"):
            # in float32, as a site's torch model trains whatever width it is sent
            trained = {k: (v + 0.3 * (target - v)).float() for k, v in received.items()}
            metrics = {NUM_EXAMPLES: 10 * (node - 100)}
            return Message(
                RecordDict({ARRAYS: ArrayRecord(trained), METRICS: MetricRecord(metrics)}),
                reply_to=message,
            )
        loss = float(sum((v - target).abs().sum() for v in received.values()))
        metrics = {NUM_EXAMPLES: 5, "test-loss": loss, "evaluate-seconds": 0.0}
        return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=message)

    # Unused by a strategy's round loop.
    def set_run(self, run_id: int) -> None:
        raise NotImplementedError

    @property
    def run(self) -> object:
        raise NotImplementedError

    def create_message(self, *args: object, **kwargs: object) -> Message:
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError


INITIAL = {"w": torch.zeros(4), "b": torch.tensor([0.5])}


def _strategy(
    run_dir: Path, first_round: int = 1, log: ResumeLog | None = None
) -> RecordingStrategy:
    checkpoints = (
        CheckpointRegistry(run_dir)
        if first_round == 1
        else CheckpointRegistry.reopen(run_dir, lambda c: (c.round or 0) < first_round)
    )
    strategy: RecordingStrategy

    def finished(server_round: int) -> None:
        if log is not None:
            log.save(ResumePoint("job", "now", server_round), strategy.server_state())

    strategy = RecordingStrategy(
        make_strategy(StrategyConfig(name="fedadam", server_learning_rate=0.1)),
        dict(SITES),
        JsonLines(run_dir / "rounds.jsonl", keep=first_round > 1),
        checkpoints,
        lambda _: None,
        3,
        first_round=first_round,
        round_finished=finished,
    )
    return strategy


def _run(strategy: RecordingStrategy, initial: ArrayRecord, rounds: int) -> None:
    strategy.start(ScriptedSites(), initial, num_rounds=rounds, timeout=1)


@pytest.fixture
def uninterrupted(tmp_path: Path, message_identity: None) -> Iterator[CheckpointRegistry]:
    strategy = _strategy(tmp_path / "straight")
    _run(strategy, ArrayRecord(INITIAL), 3)
    yield strategy.checkpoints


def _final(registry: CheckpointRegistry) -> dict[str, torch.Tensor]:
    return registry.load("global-round-003")


def test_fedadam_resumed_after_round_two_equals_the_uninterrupted_run(
    tmp_path: Path, uninterrupted: CheckpointRegistry
) -> None:
    run_dir = tmp_path / "resumed"
    log = ResumeLog(run_dir)
    _run(_strategy(run_dir, log=log), ArrayRecord(INITIAL), 2)
    point, state = log.read()
    assert point.completed_round == 2
    assert {k.split("/")[0] for k in state.arrays} == {"m_t", "v_t"}

    resumed = _strategy(run_dir, first_round=3)
    resumed.restore(state)
    _run(resumed, ArrayRecord(resumed.checkpoints.load("global-round-002")), 1)
    expected = _final(uninterrupted)
    for name, value in _final(resumed.checkpoints).items():
        assert torch.equal(value, expected[name]), name
    records = JsonLines(run_dir / "rounds.jsonl", keep=True).read()
    assert [e["round"] for e in records if e["phase"] == "summary"] == [1, 2, 3]
    # every update aggregated: FedAdam's float64 global model takes the sites' float32 ones
    assert {e["outcome"] for e in records if e["phase"] == "train"} == {"accepted"}


def test_without_fedadams_moments_the_resumed_run_would_differ(
    tmp_path: Path, uninterrupted: CheckpointRegistry
) -> None:
    """The test above can fail: resuming with fresh moments gives another model."""
    run_dir = tmp_path / "forgetful"
    _run(_strategy(run_dir), ArrayRecord(INITIAL), 2)
    resumed = _strategy(run_dir, first_round=3)
    _run(resumed, ArrayRecord(resumed.checkpoints.load("global-round-002")), 1)
    assert not torch.equal(_final(resumed.checkpoints)["w"], _final(uninterrupted)["w"])


def test_a_changed_server_state_is_refused(tmp_path: Path) -> None:
    log = ResumeLog(tmp_path)
    log.save(ResumePoint("job", "now", 2), ServerState({"m_t/w": np.ones(3)}, {}))
    assert log.read()[1].arrays["m_t/w"].tolist() == [1.0, 1.0, 1.0]
    state = tmp_path / SERVER_STATE_FILE
    (tmp_path / "other").mkdir()
    other = ResumeLog(tmp_path / "other")
    other.save(ResumePoint("job", "now", 2), ServerState({"m_t/w": np.zeros(3)}, {}))
    state.write_bytes(other.state_path.read_bytes())
    with pytest.raises(ResumeError, match="changed since round 2"):
        log.read()
    with pytest.raises(ResumeError, match="missing; the run stopped before"):
        ResumeLog(tmp_path / "nothing").read()


def test_a_changed_checkpoint_is_refused_on_resume(tmp_path: Path) -> None:
    registry = CheckpointRegistry(tmp_path)
    entry = registry.save("global-round-001", {"w": torch.ones(2)}, 1)
    torch.save({"w": torch.zeros(2)}, tmp_path / entry.file)
    with pytest.raises(CheckpointError, match="changed since saved"):
        CheckpointRegistry.reopen(tmp_path, lambda _: True)


def test_records_of_the_round_cut_short_are_set_aside(tmp_path: Path) -> None:
    rounds = tmp_path / "rounds.jsonl"
    entries = [
        {"round": 0, "phase": "local-only", "site": "site-a"},
        {"round": 1, "phase": "train", "site": "site-a"},
        {"round": 1, "phase": "summary"},
        {"round": 2, "phase": "train", "site": "site-a"},
    ]
    rounds.write_text("".join(json.dumps(e) + "\n" for e in entries) + '{"round": 2, "pha')
    moved = set_aside_interrupted(rounds, ResumePoint("job", "now", 1, local_models={}))
    assert moved == 1
    assert [json.loads(line)["round"] for line in rounds.read_text().splitlines()] == [0, 1, 1]
    aside = [json.loads(line) for line in (tmp_path / INTERRUPTED_FILE).read_text().splitlines()]
    assert aside == [{"round": 2, "phase": "train", "site": "site-a", "resumed_after": 1}]


class SilentSite(ScriptedSites):
    """site-c never answers."""

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return [self._answer(m) for m in messages if m.metadata.dst_node_id != 103]


def test_a_site_that_stays_silent_is_recorded_as_missing_the_round(
    tmp_path: Path, message_identity: None
) -> None:
    strategy = _strategy(tmp_path)
    strategy.start(SilentSite(), ArrayRecord(INITIAL), num_rounds=1, timeout=1)
    entries = JsonLines(tmp_path / "rounds.jsonl", keep=True).read()
    missing = [(e["phase"], e.get("error")) for e in entries if e.get("site") == "site-c"]
    assert missing == [
        ("train", "no reply within the timeout"),
        ("evaluate", "no reply within the timeout"),
    ]
    assert {e["site"] for e in entries if e["phase"] == "train" and "metrics" in e} == {
        "site-a",
        "site-b",
    }
