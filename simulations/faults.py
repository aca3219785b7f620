"""Faults injected at the sites of a simulated federation, seeded.

SIMULATION ONLY. `FaultyClientApp` wraps the sites' ClientApp in Flower's simulation
runtime (`simulations.federation.run_simulated_federation` with a `FaultPlan`); nothing in
the deployment runtime imports this module. It changes what a site answers, never what the
coordinator does, so the coordinator sees what it would see from a faulty site:

- ``dropout``: the site does not answer the round (neither its train nor its evaluate
  message); the reply is Flower's own node-unavailable error, what the SuperLink answers
  for a SuperNode that went away.
- ``straggler``: the site answers the round's train message ``delay_s`` seconds after it
  received it (or when its training ends, if later); the round's timeout
  (`server.server_app.FederationConfig.round_timeout_s`) makes the coordinator go on
  without it.
- ``crash``: the site's ClientApp raises while handling the round's train message.
- ``nan``, ``wrong_shape``, ``wrong_dtype``, ``missing_array``: a malformed update (the
  first array's values all NaN; the first array flattened with one value more; the first
  array as integers; the last array left out), which the coordinator must reject.
- ``sign_flip``, ``scale`` (Byzantine): a well-formed hostile update, ``g - factor * d``
  or ``g + factor * d`` where ``g`` is the global model sent and ``d`` the site's honest
  update (its trained model minus ``g``); robust aggregation is what bounds them.

Which site suffers which fault in which round is drawn up front (`FaultPlan.draw`) from the
scenario's fault seed, so a run can record what was injected and the same seed injects the
same faults.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.server.superlink.linkstate.utils import NODE_UNAVAILABLE_ERROR_REASON

from task.wire import ARRAYS, CONFIG, MSG_EVALUATE, MSG_TRAIN

#: What each fault does (README, Scenarios and faults).
FAULT_KINDS = {
    "dropout": "does not answer the round (Flower's node-unavailable error)",
    "straggler": "answers the round's training delay_s seconds after receiving it",
    "crash": "its ClientApp raises during the round's training",
    "nan": "sends an update whose first array is all NaN",
    "wrong_shape": "sends an update whose first array has another shape",
    "wrong_dtype": "sends an update whose first array is integers (int64)",
    "missing_array": "sends an update without its last array",
    "sign_flip": "Byzantine: sends g - factor x (its update)",
    "scale": "Byzantine: sends g + factor x (its update)",
}
#: Faults that change a well-formed train reply, and those among them that are Byzantine.
MALFORMED = ("nan", "wrong_shape", "wrong_dtype", "missing_array")
BYZANTINE = ("sign_flip", "scale")
DEFAULT_FACTOR = {"sign_flip": 1.0, "scale": 10.0}
_FAULT_STREAM = 9


class SimulatedCrash(RuntimeError):
    """What a crashing site's ClientApp raises."""


@dataclass(frozen=True)
class FaultSpec:
    """One kind of fault, where and when it may strike.

    kind: one of `FAULT_KINDS`.
    sites: the site ids it may strike (empty: every site).
    rounds: the federated rounds it may strike (empty: every round).
    probability: the chance that it strikes each of those sites in each of those rounds.
    delay_s: a straggler's delay (seconds, > 0).
    factor: a Byzantine update's multiplier (> 0; default `DEFAULT_FACTOR`).
    """

    kind: str
    sites: tuple[str, ...] = ()
    rounds: tuple[int, ...] = ()
    probability: float = 1.0
    delay_s: float = 0.0
    factor: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {', '.join(FAULT_KINDS)}")
        if not 0 <= self.probability <= 1:
            raise ValueError(f"probability must be in [0, 1], got {self.probability}")
        if self.kind == "straggler" and not self.delay_s > 0:
            raise ValueError("a straggler needs delay_s > 0")
        if self.factor is not None and not self.factor > 0:
            raise ValueError(f"factor must be > 0, got {self.factor}")
        if any(r < 1 for r in self.rounds):
            raise ValueError("rounds are numbered from 1")

    @property
    def multiplier(self) -> float:
        """The Byzantine factor in use."""
        return DEFAULT_FACTOR.get(self.kind, 1.0) if self.factor is None else self.factor


@dataclass(frozen=True)
class FaultPlan:
    """The faults drawn for a run: for each (site id, round), the faults that strike it
    there, in the order the scenario lists them. ``site_ids[i]`` is the site of simulated
    SuperNode ``i`` (Flower's ``partition-id``)."""

    site_ids: tuple[str, ...]
    faults: dict[tuple[str, int], tuple[FaultSpec, ...]] = field(default_factory=dict)

    @classmethod
    def draw(
        cls, specs: Sequence[FaultSpec], site_ids: Sequence[str], rounds: int, seed: int
    ) -> FaultPlan:
        """Draw where and when each of ``specs`` strikes over ``rounds`` rounds of the sites
        ``site_ids``; each (fault, site, round) draws from its own seeded stream, so adding
        a site or a round changes no other draw. `ValueError` for a site not in the run."""
        unknown = sorted({s for spec in specs for s in spec.sites} - set(site_ids))
        if unknown:
            raise ValueError(f"faults name unknown site(s) {', '.join(unknown)}")
        drawn: dict[tuple[str, int], list[FaultSpec]] = {}
        for index, spec in enumerate(specs):
            for site_index, site in enumerate(site_ids):
                if spec.sites and site not in spec.sites:
                    continue
                for server_round in spec.rounds or range(1, rounds + 1):
                    stream = [seed, _FAULT_STREAM, index, site_index, server_round]
                    draw = np.random.default_rng(np.random.SeedSequence(stream)).random()
                    if draw < spec.probability:
                        drawn.setdefault((site, server_round), []).append(spec)
        return cls(tuple(site_ids), {key: tuple(value) for key, value in sorted(drawn.items())})

    def at(self, site: str, server_round: int) -> tuple[FaultSpec, ...]:
        """The faults striking ``site`` in round ``server_round``."""
        return self.faults.get((site, server_round), ())

    @property
    def has_stragglers(self) -> bool:
        """Whether some site answers late (its wait holds a runtime worker)."""
        return self._has("straggler")

    @property
    def has_crashes(self) -> bool:
        """Whether some site's ClientApp is made to raise."""
        return self._has("crash")

    def _has(self, kind: str) -> bool:
        return any(f.kind == kind for faults in self.faults.values() for f in faults)

    def injected(self) -> list[dict[str, str | int]]:
        """What the plan injects, by round and site, for the run's records."""
        return [
            {"round": server_round, "site": site, "kind": spec.kind}
            for (site, server_round), specs in sorted(self.faults.items(), key=_by_round)
            for spec in specs
        ]


def _by_round(item: tuple[tuple[str, int], object]) -> tuple[int, str]:
    (site, server_round), _ = item
    return server_round, site


class FaultyClientApp(ClientApp):
    """The sites' ClientApp ``inner`` with the faults of ``plan`` injected (see the module
    docstring); messages other than a round's train and evaluate pass untouched."""

    def __init__(self, inner: ClientApp, plan: FaultPlan) -> None:
        super().__init__()
        self.inner = inner
        self.plan = plan

    def __call__(self, message: Message, context: Context) -> Message:
        kind = message.metadata.message_type
        config = message.content.get(CONFIG) if kind in (MSG_TRAIN, MSG_EVALUATE) else None
        if not isinstance(config, ConfigRecord) or "server-round" not in config:
            return self.inner(message, context)
        site = self.plan.site_ids[int(context.node_config["partition-id"])]
        server_round = int(config["server-round"])  # type: ignore[arg-type]
        faults = self.plan.at(site, server_round)
        if any(f.kind == "dropout" for f in faults):
            error = Error(ErrorCode.NODE_UNAVAILABLE, NODE_UNAVAILABLE_ERROR_REASON)
            return Message(error, reply_to=message)
        if kind != MSG_TRAIN:
            return self.inner(message, context)
        if any(f.kind == "crash" for f in faults):
            raise SimulatedCrash(f"{site} crashed in round {server_round} (simulated)")
        started = time.monotonic()
        reply = self.inner(message, context)
        if not reply.has_error():
            for fault in faults:
                if fault.kind in MALFORMED or fault.kind in BYZANTINE:
                    reply = Message(
                        _tampered(fault, message.content, reply.content), reply_to=message
                    )
        delay = max((f.delay_s for f in faults if f.kind == "straggler"), default=0.0)
        time.sleep(max(0.0, delay - (time.monotonic() - started)))
        return reply


def _tampered(fault: FaultSpec, sent: RecordDict, reply: RecordDict) -> RecordDict:
    """``reply`` (a train reply to ``sent``) with its model changed as ``fault`` says."""
    arrays = {key: array.numpy() for key, array in reply[ARRAYS].items()}
    first, last = next(iter(arrays)), next(reversed(arrays))
    if fault.kind == "nan":
        arrays[first] = np.full_like(arrays[first], np.nan)
    elif fault.kind == "wrong_shape":
        arrays[first] = np.append(arrays[first].reshape(-1), 0).astype(arrays[first].dtype)
    elif fault.kind == "wrong_dtype":
        arrays[first] = arrays[first].astype(np.int64)
    elif fault.kind == "missing_array":
        del arrays[last]
    else:
        sign = -1.0 if fault.kind == "sign_flip" else 1.0
        for key, value in arrays.items():
            if np.issubdtype(value.dtype, np.floating):
                start = sent[ARRAYS][key].numpy()
                arrays[key] = (start + sign * fault.multiplier * (value - start)).astype(
                    value.dtype
                )
    content = RecordDict(dict(reply.items()))
    content[ARRAYS] = ArrayRecord({key: Array(value) for key, value in arrays.items()})
    return content
