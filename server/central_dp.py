"""Central differential privacy: Flower's server-side fixed clipping, with its accountant.

For consortia that trust the coordinator: each site trains without noise, the coordinator
clips every site's update to ``clipping_norm`` (L2), averages the sites uniformly and adds
Gaussian noise of std ``noise_multiplier * clipping_norm / n_sites`` to the average
(Flower's ``DifferentialPrivacyServerSideFixedClipping``). Flower's RDP accountant (Google's
dp-accounting underneath) composes the rounds: the guarantee is site-level (user-level)
(epsilon, delta)-DP of the global models, with no amplification by sampling. It is a
different guarantee from DP-SGD at the sites (`task.privacy`) and is labelled so.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting import PrivacyConfig as FlowerPrivacyConfig
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from task.privacy import PrivacyConfig
from task.wire import METRICS

#: Coordinator-side metric that makes FedAvg average sites uniformly, as the sensitivity
#: of central DP (each site's clipped update counts 1 / n_sites) assumes.
UNIFORM_WEIGHT = "central-dp-weight"
ACCOUNTANT_NAME = "Flower RdpAccountant (dp-accounting), no amplification"


def central_accountant(n_sites: int, delta: float) -> RdpAccountant:
    """Flower's RDP accountant for site-level DP over ``n_sites`` sites at ``delta``."""
    return RdpAccountant(
        FlowerPrivacyConfig(
            target_delta=delta,
            population_size=n_sites,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )


def central_epsilon(noise_multiplier: float, rounds: int, n_sites: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``rounds`` noised averages of ``n_sites`` sites."""
    accountant = central_accountant(n_sites, delta)
    accountant.compose(GaussianPrivacyEvent(noise_multiplier, n_sites, n_sites), count=rounds)
    return accountant.get_epsilon(delta)


def central_noise_for_epsilon(
    target_epsilon: float, rounds: int, n_sites: int, delta: float, tolerance: float = 0.01
) -> float:
    """The smallest noise multiplier (bisection to ``tolerance`` in epsilon) with which
    ``rounds`` rounds spend at most ``target_epsilon``."""
    low, high = 0.0, 1.0
    while central_epsilon(high, rounds, n_sites, delta) > target_epsilon:
        low, high = high, 2 * high
    while True:
        middle = (low + high) / 2
        epsilon = central_epsilon(middle, rounds, n_sites, delta)
        if epsilon > target_epsilon:
            low = middle
        else:
            high = middle
            if target_epsilon - epsilon <= tolerance:
                return high


class CentralDP(Strategy):
    """Flower's server-side fixed-clipping DP around a FedAvg that averages uniformly.

    Sites that failed or refused in a round are left out of it; the noise is scaled to the
    sites whose updates are averaged. ``privacy_spent`` gives the epsilon so far.
    """

    def __init__(self, inner: FedAvg, privacy: PrivacyConfig, rounds: int, n_sites: int) -> None:
        if type(inner).aggregate_train is not FedAvg.aggregate_train:
            raise ValueError("central DP needs a strategy that averages like FedAvg (not fedadam)")
        inner.weighted_by_key = UNIFORM_WEIGHT
        self.noise_multiplier = privacy.noise_multiplier or central_noise_for_epsilon(
            privacy.target_epsilon, rounds, n_sites, privacy.delta
        )
        self.delta = privacy.delta
        self.dp = DifferentialPrivacyServerSideFixedClipping(
            inner,
            noise_multiplier=self.noise_multiplier,
            clipping_norm=privacy.clipping_norm,
            num_sampled_clients=n_sites,
            accountant=central_accountant(n_sites, privacy.delta),
        )

    def privacy_spent(self) -> float:
        """Epsilon of the global models released so far, at the run's delta."""
        spent = self.dp.privacy_spent()
        return spent.epsilon if spent is not None and spent.num_releases else 0.0

    def accountant_state(self) -> dict[str, object]:
        """The accountant's releases so far (JSON-able), for a resumed run."""
        return self.dp.accountant.state_dict()  # type: ignore[union-attr]

    def restore_accountant(self, state: dict[str, object]) -> None:
        """Carry on from `accountant_state` of an interrupted run."""
        self.dp.accountant.load_state_dict(state)  # type: ignore[union-attr]

    def summary(self) -> None:
        self.dp.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.dp.num_sampled_clients = len(list(grid.get_node_ids()))
        return self.dp.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        answered = [r for r in replies if not r.has_error()]
        for reply in answered:
            reply.content[METRICS][UNIFORM_WEIGHT] = 1
        self.dp.num_sampled_clients = max(len(answered), 1)
        return self.dp.aggregate_train(server_round, answered)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.dp.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.dp.aggregate_evaluate(server_round, replies)
