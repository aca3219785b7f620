"""Aggregation strategies, chosen by name, and the wrapper that records every round.

The strategies are Flower's own (``flwr.serverapp.strategy``): FedAvg, FedProx (the sites
apply the proximal term, whose weight FedProx puts in the train config) and FedAdam (a
server-side Adam step on the averaged update). `RecordingStrategy` wraps any of them to
keep per-site, per-round records and a checkpoint of every round's global model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, Strategy
from flwr.serverapp.strategy.fedopt import FedOpt

from server.central_dp import CentralDP
from server.checkpoints import CheckpointRegistry
from server.records import AuditedGrid, JsonLines, no_reply
from server.resume import ServerState
from task.audit import AuditEvent
from task.privacy import PRIVACY_REFUSED, PrivacyConfig
from task.wire import METRICS, NUM_EXAMPLES
from validation.metrics import ScoreHistogram, roc_auc
from validation.segmentation import SegmentationAggregate

STRATEGY_NAMES = ("fedavg", "fedprox", "fedadam")
#: FedOpt's (FedAdam's) server-side moments: the state a resumed run must carry on with.
_MOMENTS = ("m_t", "v_t")


@dataclass(frozen=True)
class StrategyConfig:
    """Which strategy and its parameters.

    name: one of STRATEGY_NAMES.
    proximal_mu: FedProx's proximal weight (sent to the sites).
    server_learning_rate: FedAdam's server step size (eta).
    server_beta_1, server_beta_2, server_tau: FedAdam's moment decays and adaptivity.
    fraction_train: fraction of sites asked to train each round.
    min_sites: rounds need at least this many sites.
    """

    name: str = "fedavg"
    proximal_mu: float = 0.01
    server_learning_rate: float = 0.01
    server_beta_1: float = 0.9
    server_beta_2: float = 0.99
    server_tau: float = 1e-3
    fraction_train: float = 1.0
    min_sites: int = 2

    def __post_init__(self) -> None:
        if self.name not in STRATEGY_NAMES:
            raise ValueError(
                f"unknown strategy {self.name!r}; choose one of {', '.join(STRATEGY_NAMES)}"
            )
        if not 0 < self.fraction_train <= 1:
            raise ValueError(f"fraction_train must be in (0, 1], got {self.fraction_train}")
        if self.min_sites < 1:
            raise ValueError(f"min_sites must be >= 1, got {self.min_sites}")


def make_strategy(
    config: StrategyConfig, privacy: PrivacyConfig | None = None, rounds: int = 1, n_sites: int = 1
) -> Strategy:
    """Flower's strategy for ``config.name``, evaluating on every site each round; with
    central DP (``privacy.mode == "central"``) wrapped in `CentralDP` for ``rounds`` rounds
    over ``n_sites`` sites."""
    strategy = _base_strategy(config)
    if privacy is not None and privacy.mode == "central":
        return CentralDP(strategy, privacy, rounds, n_sites)
    return strategy


def _base_strategy(config: StrategyConfig) -> FedAvg:
    sampling = {
        "fraction_train": config.fraction_train,
        "fraction_evaluate": 1.0,
        "min_train_nodes": config.min_sites,
        "min_evaluate_nodes": config.min_sites,
        "min_available_nodes": config.min_sites,
    }
    if config.name == "fedprox":
        return FedProx(**sampling, proximal_mu=config.proximal_mu)
    if config.name == "fedadam":
        return FedAdam(
            **sampling,
            eta=config.server_learning_rate,
            beta_1=config.server_beta_1,
            beta_2=config.server_beta_2,
            tau=config.server_tau,
        )
    return FedAvg(**sampling)


class RecordingStrategy(Strategy):
    """Runs ``inner`` and records each round.

    - train replies are put in site order before aggregation, so that the floating-point
      sums, and therefore the global model, do not depend on which site answered first;
    - each site's train metrics, evaluation (loss, AUC from its score histograms; for
      segmentation the mean Dice from its aggregate) and each failure go to ``rounds``;
    - every round's global model is saved as checkpoint ``global-round-NNN``;
    - a site that refuses a round on privacy grounds (its budget would be exceeded) is
      recorded and asked to train no more in this run: its spend only grows. It is still
      evaluated, which costs it nothing.

    site_of maps node ids to site ids; progress receives one line per round;
    ``round_finished(round)`` is called after each round's evaluation. A resumed job starts
    at ``first_round``: Flower's loop counts its rounds from 1, the records, the sites and
    the inner strategy (FedAdam's bias correction) see the job's round numbers.
    """

    def __init__(
        self,
        inner: Strategy,
        site_of: dict[int, str],
        rounds: JsonLines,
        checkpoints: CheckpointRegistry,
        progress: Callable[[str], None],
        total_rounds: int,
        first_round: int = 1,
        round_finished: Callable[[int], None] = lambda _: None,
    ) -> None:
        self.inner = inner
        self.site_of = site_of
        self.rounds = rounds
        self.checkpoints = checkpoints
        self.progress = progress
        self.total_rounds = total_rounds
        self.first_round = first_round
        self.round_finished = round_finished
        self._round_started = 0.0
        self._trained = 0
        self._grid: AuditedGrid | None = None
        self._asked: list[Message] = []
        self.refused: set[int] = set()

    def summary(self) -> None:
        self.inner.summary()

    def server_state(self) -> ServerState:
        """What the next round needs besides the global model: FedAdam's moments, central
        DP's accountant, the sites that refused."""
        arrays = {
            f"{moment}/{name}": value
            for moment in _MOMENTS
            for name, value in (getattr(self.inner, moment, None) or {}).items()
        }
        values: dict = {"refused_sites": sorted(self.site_of.get(n, str(n)) for n in self.refused)}
        if isinstance(self.inner, CentralDP):
            values["central_dp_accountant"] = self.inner.accountant_state()
        return ServerState(arrays, values)

    def restore(self, state: ServerState) -> None:
        """Carry on from ``state`` (`server_state` of the interrupted job)."""
        if isinstance(self.inner, FedOpt):
            for moment in _MOMENTS:
                prefix = moment + "/"
                saved = {
                    k.removeprefix(prefix): v
                    for k, v in state.arrays.items()
                    if k.startswith(prefix)
                }
                setattr(self.inner, moment, saved or None)
        elif state.arrays:
            raise ValueError("server state with moments for a strategy that keeps none")
        node_of = {site: node for node, site in self.site_of.items()}
        self.refused = {node_of[s] for s in state.values.get("refused_sites", []) if s in node_of}
        if isinstance(self.inner, CentralDP):
            self.inner.restore_accountant(state.values["central_dp_accountant"])

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.first_round - 1
        self._round_started = time.perf_counter()
        if isinstance(grid, AuditedGrid):
            grid.stage = f"round {server_round} train"
            grid.round = server_round
            self._grid = grid
        messages = self.inner.configure_train(server_round, arrays, config, grid)
        return self._asking([m for m in messages if m.metadata.dst_node_id not in self.refused])

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.first_round - 1
        ordered = sorted(self._with_silent(replies), key=lambda m: self._site(m))
        self._trained = sum(
            self._record(server_round, "train", reply, lambda m: dict(m.content[METRICS]))
            is not None
            for reply in ordered
        )
        arrays, metrics = self.inner.aggregate_train(server_round, ordered)
        if isinstance(self.inner, CentralDP):
            self.rounds.append(
                {
                    "round": server_round,
                    "phase": "central-dp",
                    "epsilon": self.inner.privacy_spent(),
                    "delta": self.inner.delta,
                    "noise_multiplier": self.inner.noise_multiplier,
                }
            )
        if arrays is not None:
            self.checkpoints.save(
                f"global-round-{server_round:03d}", arrays.to_torch_state_dict(), server_round
            )
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.first_round - 1
        if isinstance(grid, AuditedGrid):
            grid.stage = f"round {server_round} evaluate"
            grid.round = server_round
        return self._asking(list(self.inner.configure_evaluate(server_round, arrays, config, grid)))

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Per-site loss and AUC (segmentation: mean Dice), and the pooled AUC (mean Dice)
        of all sites' test splits."""
        server_round += self.first_round - 1
        pooled = ScoreHistogram.empty()
        pooled_segmentation = SegmentationAggregate()
        weighted_loss, n_total = 0.0, 0
        answered = 0
        replies = self._with_silent(replies)
        for reply in sorted(replies, key=lambda m: self._site(m)):
            evaluation = self._record(server_round, "evaluate", reply, _evaluation_of)
            if evaluation is None:
                continue
            answered += 1
            weighted_loss += evaluation["test-loss"] * evaluation["n"]
            n_total += int(evaluation["n"])
            if "histogram" in evaluation:
                pooled = pooled + evaluation.pop("histogram")
            if "aggregate" in evaluation:
                pooled_segmentation = pooled_segmentation + evaluation.pop("aggregate")
        summary: dict[str, float] = {}
        if n_total:
            summary["test-loss"] = weighted_loss / n_total
        if pooled.n_pos and pooled.n_neg:
            summary["pooled-auc"] = roc_auc(pooled)
        if pooled_segmentation.dice.mean is not None:
            summary["pooled-dice"] = pooled_segmentation.dice.mean
        seconds = time.perf_counter() - self._round_started
        self.rounds.append(
            {"round": server_round, "phase": "summary", "seconds": seconds, **summary}
        )
        if self._grid is not None:
            checkpoint = self.checkpoints.entries.get(f"global-round-{server_round:03d}")
            self._grid.audit(
                AuditEvent.ROUND_FINISHED,
                trained=self._trained,
                evaluated=answered,
                checkpoint_sha256=checkpoint.sha256 if checkpoint else None,
            )
        score = "".join(
            f", pooled test {name} {summary[key]:.3f}"
            for key, name in (("pooled-auc", "AUC"), ("pooled-dice", "Dice"))
            if key in summary
        )
        self.progress(
            f"round {server_round}/{self.total_rounds}: {self._trained} sites trained, "
            f"{answered}/{len(replies)} evaluated{score} ({seconds:.0f} s)"
        )
        self.round_finished(server_round)
        return MetricRecord(summary)

    def _asking(self, messages: list[Message]) -> list[Message]:
        """Remember ``messages`` (about to be sent), to tell which sites stay silent."""
        self._asked = messages
        return messages

    def _with_silent(self, replies: Iterable[Message]) -> list[Message]:
        """``replies`` plus an error for every site asked that did not reply in time, so
        that a silent site is recorded as missing the round like one that failed."""
        replies = list(replies)
        answered = {r.metadata.src_node_id for r in replies}
        return replies + [
            no_reply(m) for m in self._asked if m.metadata.dst_node_id not in answered
        ]

    def _site(self, message: Message) -> str:
        return self.site_of.get(
            message.metadata.src_node_id, f"node-{message.metadata.src_node_id}"
        )

    def _record(
        self, server_round: int, phase: str, reply: Message, extract: Callable[[Message], dict]
    ) -> dict | None:
        entry = {"round": server_round, "phase": phase, "site": self._site(reply)}
        if reply.has_error() and reply.error.code == PRIVACY_REFUSED:
            self.refused.add(reply.metadata.src_node_id)
            self.rounds.append(entry | {"refused": reply.error.reason})
            self.progress(f"  {entry['site']} refused round {server_round}: {reply.error.reason}")
            return None
        if reply.has_error():
            self.rounds.append(entry | {"error": reply.error.reason})
            return None
        values = extract(reply)
        self.rounds.append(
            entry
            | {"metrics": {k: v for k, v in values.items() if k not in ("histogram", "aggregate")}}
        )
        return values


def _evaluation_of(reply: Message) -> dict:
    metrics = reply.content[METRICS]
    values: dict = {
        "n": int(metrics[NUM_EXAMPLES]),
        "test-loss": float(metrics["test-loss"]),
        "evaluate-seconds": float(metrics["evaluate-seconds"]),
    }
    if "hist-positive" in metrics:
        histogram = ScoreHistogram(
            positives=np.asarray(metrics["hist-positive"], dtype=np.int64),
            negatives=np.asarray(metrics["hist-negative"], dtype=np.int64),
        )
        values["histogram"] = histogram
        if histogram.n_pos and histogram.n_neg:
            values["auc"] = roc_auc(histogram)
    if "dice-hist" in metrics:
        aggregate = SegmentationAggregate.from_fields(dict(metrics))
        values["aggregate"] = aggregate
        if aggregate.dice.mean is not None:
            values["dice"] = aggregate.dice.mean
    return values
