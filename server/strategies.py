"""Aggregation strategies, chosen by name, and the wrapper that records every round.

The strategies are Flower's own (``flwr.serverapp.strategy``): FedAvg, FedProx (the sites
apply the proximal term, whose weight FedProx puts in the train config), FedAdam (a
server-side Adam step on the averaged update), and the robust ones, which bound what a
hostile (Byzantine) site can do to the global model: FedMedian (coordinate-wise median),
FedTrimmedAvg (coordinate-wise mean after cutting a fraction of each tail), Krum (the one
update closest to its neighbours) and MultiKrum (the mean of the m updates Krum ranks
best). `RecordingStrategy` wraps any of them to check every update before aggregation, and
to keep per-site, per-round records and a checkpoint of every round's global model.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)
from flwr.serverapp.strategy.fedopt import FedOpt

from server.central_dp import CentralDP
from server.checkpoints import CheckpointRegistry
from server.records import NO_REPLY, AuditedGrid, JsonLines, concise_reason, no_reply
from server.resume import ServerState
from server.update_check import arrays_problem, harmonise_metrics, metrics_problem
from task.audit import MAX_DETAIL_CHARS, AuditEvent
from task.privacy import PRIVACY_REFUSED, PrivacyConfig
from task.wire import METRICS, NUM_EXAMPLES
from validation.metrics import ScoreHistogram, roc_auc
from validation.participation import (
    ACCEPTED,
    CUT_OFF,
    DROPPED_OUT,
    EVALUATED,
    FAILED,
    REFUSED,
    REJECTED,
)
from validation.segmentation import SegmentationAggregate

#: Strategies that bound the influence of any one site's update (Byzantine-robust).
ROBUST_STRATEGIES = ("fedmedian", "fedtrimmedavg", "krum", "multikrum")
STRATEGY_NAMES = ("fedavg", "fedprox", "fedadam", *ROBUST_STRATEGIES)
#: FedOpt's (FedAdam's) server-side moments: the state a resumed run must carry on with.
_MOMENTS = ("m_t", "v_t")


@dataclass(frozen=True)
class StrategyConfig:
    """Which strategy and its parameters.

    name: one of STRATEGY_NAMES.
    proximal_mu: FedProx's proximal weight (sent to the sites).
    server_learning_rate: FedAdam's server step size (eta).
    server_beta_1, server_beta_2, server_tau: FedAdam's moment decays and adaptivity.
    trim_fraction: FedTrimmedAvg's beta, the fraction of updates cut from each tail of every
        coordinate (``int(beta * n)`` of the n updates), in [0, 0.5).
    malicious_sites: Krum's and MultiKrum's f, the hostile sites to tolerate: each update
        is scored by its distances to its n - f - 2 nearest others.
    krum_select: MultiKrum's m, the updates averaged; 0: n - f.
    fraction_train: fraction of sites asked to train each round.
    min_sites: rounds need at least this many sites.
    """

    name: str = "fedavg"
    proximal_mu: float = 0.01
    server_learning_rate: float = 0.01
    server_beta_1: float = 0.9
    server_beta_2: float = 0.99
    server_tau: float = 1e-3
    trim_fraction: float = 0.2
    malicious_sites: int = 1
    krum_select: int = 0
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
        if not 0 <= self.trim_fraction < 0.5:
            raise ValueError(f"trim_fraction must be in [0, 0.5), got {self.trim_fraction}")
        if self.malicious_sites < 0 or self.krum_select < 0:
            raise ValueError("malicious_sites and krum_select must be >= 0")


def make_strategy(
    config: StrategyConfig, privacy: PrivacyConfig | None = None, rounds: int = 1, n_sites: int = 1
) -> Strategy:
    """Flower's strategy for ``config.name``, evaluating on every site each round; with
    central DP (``privacy.mode == "central"``) wrapped in `CentralDP` for ``rounds`` rounds
    over ``n_sites`` sites (also MultiKrum's default m)."""
    strategy = _base_strategy(config, n_sites)
    if privacy is not None and privacy.mode == "central":
        return CentralDP(strategy, privacy, rounds, n_sites)
    return strategy


def _base_strategy(config: StrategyConfig, n_sites: int) -> FedAvg:
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
    if config.name == "fedmedian":
        return FedMedian(**sampling)
    if config.name == "fedtrimmedavg":
        return FedTrimmedAvg(**sampling, beta=config.trim_fraction)
    if config.name == "krum":
        return Krum(**sampling, num_malicious_nodes=config.malicious_sites)
    if config.name == "multikrum":
        selected = config.krum_select or max(1, n_sites - config.malicious_sites)
        return MultiKrum(
            **sampling, num_malicious_nodes=config.malicious_sites, num_nodes_to_select=selected
        )
    return FedAvg(**sampling)


class RecordingStrategy(Strategy):
    """Runs ``inner`` and records each round.

    - train replies are put in site order before aggregation, so that the floating-point
      sums, and therefore the global model, do not depend on which site answered first;
    - every update is checked against the global model sent for the round
      (`server.update_check`): a malformed one (NaN, another shape or dtype, an array
      missing, ...) is rejected with its reason, audited and never aggregated;
    - each site's train metrics, evaluation (loss, AUC from its score histograms; for
      segmentation the mean Dice from its aggregate) and each failure go to ``rounds``,
      each with its outcome (`validation.participation`: accepted, rejected, dropped out,
      cut off by the round's timeout, refused, failed; evaluated);
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
        self._sent: ArrayRecord | None = None
        self._outcomes: Counter[str] = Counter()
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
        self._sent = arrays
        messages = self.inner.configure_train(server_round, arrays, config, grid)
        return self._asking([m for m in messages if m.metadata.dst_node_id not in self.refused])

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.first_round - 1
        ordered = sorted(self._with_silent(replies), key=lambda m: self._site(m))
        self._outcomes = Counter()
        accepted = [reply for reply in ordered if self._accepted(server_round, reply)]
        self._trained = len(accepted)
        harmonise_metrics(accepted)
        arrays, metrics = self.inner.aggregate_train(server_round, accepted)
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
            evaluation, _ = self._record(server_round, "evaluate", reply, _evaluation_of)
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
        missed = "".join(
            f", {n} {outcome}"
            for outcome, n in sorted(self._outcomes.items())
            if outcome != ACCEPTED
        )
        self.progress(
            f"round {server_round}/{self.total_rounds}: {self._trained} sites trained{missed}, "
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

    def _accepted(self, server_round: int, reply: Message) -> bool:
        """Record the train ``reply`` with its outcome; whether it goes to aggregation
        (neither an error nor a malformed update)."""
        problem = None if reply.has_error() else self._update_problem(reply)
        if problem is None:
            _, outcome = self._record(server_round, "train", reply, _train_metrics)
        else:
            outcome = REJECTED
            self._reject(server_round, reply, problem)
        self._outcomes[outcome] += 1
        return outcome == ACCEPTED

    def _update_problem(self, reply: Message) -> str | None:
        """Why the update ``reply`` cannot be aggregated with the global model sent."""
        return metrics_problem(reply.content) or arrays_problem(
            reply.content, self._sent or ArrayRecord()
        )

    def _reject(self, server_round: int, reply: Message, problem: str) -> None:
        """Record and audit the malformed update ``reply`` (its metrics too, when they are
        usable: what the site spent on the release still counts)."""
        site = self._site(reply)
        entry = {"round": server_round, "phase": "train", "site": site, "outcome": REJECTED}
        entry |= {"rejected": problem, "error": f"update rejected: {problem}"}
        if metrics_problem(reply.content) is None:
            entry["metrics"] = _train_metrics(reply)
        self.rounds.append(entry)
        if self._grid is not None:
            self._grid.audit(
                AuditEvent.UPDATE_REJECTED, site=site, reason=problem[:MAX_DETAIL_CHARS]
            )
        self.progress(f"  {site}: update rejected in round {server_round}: {problem}")

    def _record(
        self, server_round: int, phase: str, reply: Message, extract: Callable[[Message], dict]
    ) -> tuple[dict | None, str]:
        """Record ``reply`` with its outcome; its values (``extract``) unless it is an
        error, and the outcome."""
        entry = {"round": server_round, "phase": phase, "site": self._site(reply)}
        if reply.has_error():
            outcome = _error_outcome(reply)
            if outcome == REFUSED:
                self.refused.add(reply.metadata.src_node_id)
                self.rounds.append(entry | {"outcome": outcome, "refused": reply.error.reason})
                self.progress(
                    f"  {entry['site']} refused round {server_round}: {reply.error.reason}"
                )
            else:
                reason = concise_reason(reply.error.reason)
                self.rounds.append(entry | {"outcome": outcome, "error": reason})
            return None, outcome
        outcome = ACCEPTED if phase == "train" else EVALUATED
        values = extract(reply)
        metrics = {k: v for k, v in values.items() if k not in ("histogram", "aggregate")}
        self.rounds.append(entry | {"outcome": outcome, "metrics": metrics})
        return values, outcome


def _error_outcome(reply: Message) -> str:
    """What an error reply means for the round: refused, dropped out (Flower's
    node-unavailable), cut off (no reply within the timeout) or failed."""
    if reply.error.code == PRIVACY_REFUSED:
        return REFUSED
    if reply.error.code == ErrorCode.NODE_UNAVAILABLE:
        return DROPPED_OUT
    if reply.error.reason == NO_REPLY:
        return CUT_OFF
    return FAILED


def _train_metrics(reply: Message) -> dict:
    (metrics,) = reply.content.metric_records.values()
    return dict(metrics)


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
