"""The run's differential-privacy settings, as both sides read them.

Two mechanisms, with different guarantees, which reports must never conflate:

- ``local``: DP-SGD at every site (Opacus: Poisson sampling, per-sample clipping, Gaussian
  noise). Record-level (epsilon, delta)-DP of everything the site's training releases,
  accounted by the site itself against its own ceiling; the coordinator never sees an
  unnoised update.
- ``central``: Flower's server-side fixed clipping: the coordinator clips each site's update
  and adds Gaussian noise to the average. Site-level (user-level) DP of the global models,
  accounted at the coordinator; the coordinator sees every site's unnoised update, so it
  protects against everyone downstream of the coordinator, not against the coordinator.
- ``none``: no differential privacy.

The settings travel to the sites in the train ConfigRecord under `PRIVACY_PREFIX`
(`task.config_record`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PRIVACY_PREFIX = "dp-"
MODES = ("local", "central", "none")
ACCOUNTANTS = ("rdp", "prv")
#: Config key of the train messages: epochs this site trains in the whole run (federated
#: rounds and local-only baseline), from which the site sets its noise for the run.
PLANNED_EPOCHS_KEY = "dp-planned-epochs"
#: Config key of the train messages: the run's id, for the site's privacy ledger.
RUN_ID_KEY = "run-id"
#: Error code of a train reply the site refused on privacy grounds (its reason says why).
PRIVACY_REFUSED = 403

GUARANTEES = {
    "local": "record-level (epsilon, delta)-DP of each site's released models, "
    "DP-SGD at the site (Opacus), accounted by the site against its own ceiling",
    "central": "site-level (user-level) (epsilon, delta)-DP of the global models, clipping and "
    "noise at the coordinator (Flower); the coordinator itself sees unnoised site updates",
    "none": "no differential privacy: models were trained without DP",
}


@dataclass(frozen=True)
class PrivacyConfig:
    """What privacy the run asks for.

    mode: "local", "central" or "none" (see the module docstring).
    target_epsilon: local: the epsilon each site may spend in this run, for everything
        it trains (its local-only baseline and all federated rounds); central: the
        epsilon of the final global model. Ignored when noise_multiplier is set.
    noise_multiplier: fixed noise (std / clipping norm); 0 = derive from target_epsilon.
    max_grad_norm: local: per-sample gradient clipping norm (L2).
    clipping_norm: central: clipping norm (L2) of each site's model update.
    accountant: local: the Opacus accountant the sites use, "rdp" or "prv".
    delta: central: the run's delta (sites set their own delta for local DP).
    """

    mode: str = "local"
    target_epsilon: float = 8.0
    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    clipping_norm: float = 1.0
    accountant: str = "rdp"
    delta: float = 1e-3

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"privacy mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(
                f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {self.accountant!r}"
            )
        derives_noise = self.mode != "none" and self.noise_multiplier == 0
        if derives_noise and not (self.target_epsilon > 0 and math.isfinite(self.target_epsilon)):
            raise ValueError(
                f"target epsilon must be positive and finite, got {self.target_epsilon}"
            )
        if self.noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if not (self.max_grad_norm > 0 and self.clipping_norm > 0):
            raise ValueError("clipping norms must be > 0")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")

    @classmethod
    def for_epsilon(
        cls, epsilon: float, mode: str = "local", **settings: float | str
    ) -> PrivacyConfig:
        """The settings for a target ``epsilon``; ``math.inf`` means no DP (mode "none")."""
        if math.isinf(epsilon):
            return cls(mode="none", **settings)  # type: ignore[arg-type]
        return cls(mode=mode, target_epsilon=epsilon, **settings)  # type: ignore[arg-type]

    @property
    def guarantee(self) -> str:
        """One sentence: what the run's privacy protects, where, and against whom."""
        return GUARANTEES[self.mode]


def requested_privacy(
    epsilon: float,
    dp: str = "local",
    noise_multiplier: float = 0.0,
    max_grad_norm: float = 1.0,
    accountant: str = "rdp",
) -> PrivacyConfig:
    """The settings a user asks for (``medfed``'s --epsilon, --dp, --noise-multiplier,
    --max-grad-norm and --accountant, or a scenario's ``[privacy]``): ``epsilon`` infinite
    means no DP; ``max_grad_norm`` is also central DP's clipping norm. `ValueError` for
    settings that contradict each other."""
    if math.isinf(epsilon) and noise_multiplier:
        raise ValueError("a noise multiplier needs a finite epsilon (or none)")
    return PrivacyConfig.for_epsilon(
        epsilon,
        mode=dp,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        clipping_norm=max_grad_norm,
        accountant=accountant,
    )
