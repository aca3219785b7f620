"""Differential privacy at the site: what a release costs and whether the site allows it.

Before every training call the site plans the release (`plan_release`): the DP-SGD
parameters (noise set so that everything the run plans to train at this site stays within
the run's target epsilon), and, with Opacus's accountant (RDP by default, PRV selectable),
the epsilon the site will have spent after it, in this run and over every run its privacy
ledger (`site_client.ledger`) records. A release that would take the site over its ceiling
(`site_client.policy.PrivacyPolicy`) is refused with `PrivacyRefused`, whose message is the
reason the coordinator receives.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

import numpy as np
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier

from site_client.ledger import LedgerEntry
from site_client.policy import PrivacyPolicy
from task.privacy import PrivacyConfig

#: Precision of the noise search: the run's epsilon ends within this of its target, below.
EPSILON_TOLERANCE = 0.01
#: Relative accuracy asked of the PRV accountant.
PRV_EPSILON_ERROR = 0.01


class PrivacyRefused(RuntimeError):
    """The site will not release this model: its message says why, in one line."""


@dataclass(frozen=True)
class DPSGD:
    """DP-SGD settings of one training call.

    noise_multiplier: Gaussian noise std over max_grad_norm.
    max_grad_norm: per-sample gradient clipping norm (L2).
    sample_rate: Poisson sampling probability of each case per step.
    steps: optimiser steps the call takes.
    noise_seed, sampling_seed: seeds of the noise and of the Poisson sampling, derived from
        the site's secret key so that no one outside the site can predict them.
    """

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    noise_seed: int
    sampling_seed: int


@dataclass(frozen=True)
class PlannedRelease:
    """What the site will release: its ledger entry, and the DP-SGD settings that produce
    it (None when the run trains without DP-SGD at the site)."""

    entry: LedgerEntry
    dpsgd: DPSGD | None


def poisson_sampling(n_train: int, batch_size: int) -> tuple[float, int]:
    """Sample rate and steps per epoch of Poisson sampling with expected batch ~batch_size:
    q = 1 / ceil(n / B), ceil(n / B) steps (what Opacus's DPDataLoader does)."""
    steps = math.ceil(n_train / batch_size)
    return 1.0 / steps, steps


def epsilon_spent(
    releases: Sequence[tuple[float, float, int]], delta: float, accountant: str
) -> float:
    """Epsilon at ``delta`` of the composition of ``releases`` (noise multiplier, sample rate,
    steps), by Opacus's ``accountant`` ("rdp" or "prv"). 0 for none; inf if any release
    had no noise.

    Releases with the same noise and sample rate compose as one with their steps summed
    (exactly, for both accountants). For RDP this is Opacus's RDPAccountant computation
    itself (its analysis functions and default orders), with the per-step RDP of each
    (noise, sample rate) cached, since a site accounts the same pair every round.
    """
    if not releases:
        return 0.0
    if any(noise == 0 for noise, _, _ in releases):
        return math.inf
    merged: dict[tuple[float, float], int] = {}
    for noise, rate, steps in releases:
        key = (float(noise), float(rate))
        merged[key] = merged.get(key, 0) + int(steps)
    with _quiet_orders():
        if accountant == "rdp":
            rdp = sum(
                np.asarray(_rdp_of_one_step(noise, rate)) * steps
                for (noise, rate), steps in merged.items()
            )
            epsilon, _ = rdp_analysis.get_privacy_spent(
                orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta
            )
            return float(epsilon)
        account = create_accountant(mechanism=accountant)
        account.history = [(noise, rate, steps) for (noise, rate), steps in merged.items()]
        return float(account.get_epsilon(delta=delta, eps_error=PRV_EPSILON_ERROR))


@lru_cache(maxsize=4096)
def _rdp_of_one_step(noise: float, sample_rate: float) -> tuple[float, ...]:
    rdp = rdp_analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
    )
    return tuple(float(v) for v in rdp)


@lru_cache(maxsize=256)
def noise_for_epsilon(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """The smallest noise multiplier (to `EPSILON_TOLERANCE`) with which ``steps`` steps at
    ``sample_rate`` spend at most ``target_epsilon`` at ``delta`` (Opacus's search; cached,
    since every round of a run asks the same)."""
    with _quiet_orders():
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=EPSILON_TOLERANCE,
            )
        )


@contextmanager
def _quiet_orders() -> Iterator[None]:
    """Opacus's RDP analysis warns when its largest order is the best one: the epsilon is
    then a valid but slightly loose bound, which is safe to report."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


@dataclass(frozen=True)
class ReleaseRequest:
    """One training call the coordinator asks of the site.

    run_id, round, phase: as in `LedgerEntry`; seed: the run's seed.
    epochs: epochs of this call; planned_epochs: of every call this run plans at the site.
    n_train, batch_size: the site's training split and the expected batch.
    """

    run_id: str
    round: int
    phase: str
    seed: int
    epochs: int
    planned_epochs: int
    n_train: int
    batch_size: int


def plan_release(
    policy: PrivacyPolicy,
    history: Sequence[LedgerEntry],
    privacy: PrivacyConfig,
    request: ReleaseRequest,
    secret: bytes,
) -> PlannedRelease:
    """Plan the release ``request`` describes, or raise `PrivacyRefused`.

    history: the site's ledger, every run. Refused: a run without DP-SGD at the site when
    the site has a ceiling; a release that would take the site's total over its ceiling;
    one that would take this run over its own target epsilon.
    """
    accountant = privacy.accountant
    delta = policy.delta_for(request.n_train)
    sample_rate, steps_per_epoch = poisson_sampling(request.n_train, request.batch_size)
    if privacy.mode != "local" and policy.max_epsilon is not None:
        raise PrivacyRefused(
            f"site policy caps epsilon at {policy.max_epsilon:g} and allows only DP-SGD at "
            f"the site; this run asks for {privacy.mode!r} differential privacy"
        )
    if privacy.mode == "local":
        noise = privacy.noise_multiplier or noise_for_epsilon(
            privacy.target_epsilon,
            delta,
            sample_rate,
            request.planned_epochs * steps_per_epoch,
            accountant,
        )
    else:
        noise = 0.0
    steps = request.epochs * steps_per_epoch
    release = (noise, sample_rate, steps)
    before = [(e.noise_multiplier, e.sample_rate, e.steps) for e in history]
    this_run = [
        (e.noise_multiplier, e.sample_rate, e.steps) for e in history if e.run_id == request.run_id
    ]
    epsilon_total = epsilon_spent([*before, release], delta, accountant)
    epsilon_run = epsilon_spent([*this_run, release], delta, accountant)
    ceiling = policy.max_epsilon
    if ceiling is not None and epsilon_total > ceiling:
        spent = epsilon_spent(before, delta, accountant)
        raise PrivacyRefused(
            f"privacy budget: this release would take the site to epsilon {epsilon_total:.3g} "
            f"(spent {spent:.3g} before it, delta {delta:.2g}, {accountant}), over its ceiling "
            f"of {ceiling:g}"
        )
    if (
        privacy.mode == "local"
        and privacy.noise_multiplier == 0
        and epsilon_run > privacy.target_epsilon
    ):
        raise PrivacyRefused(
            f"privacy budget: this release would take the run to epsilon {epsilon_run:.3g} "
            f"at this site, over the run's target of {privacy.target_epsilon:g} "
            "(more training than the run planned)"
        )
    entry = LedgerEntry(
        run_id=request.run_id,
        round=request.round,
        phase=request.phase,
        steps=steps,
        sample_rate=sample_rate,
        noise_multiplier=noise,
        max_grad_norm=privacy.max_grad_norm if noise else 0.0,
        accountant=accountant,
        delta=delta,
        epsilon_run=epsilon_run,
        epsilon_total=epsilon_total,
        time=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    if not noise:
        return PlannedRelease(entry, None)
    # The run's seed and the ledger's length: a rerun of a seeded simulation on fresh stores
    # draws the same noise, a second run on the same store never does.
    key = f"{request.seed}|{request.round}|{request.phase}|{len(history)}"
    dpsgd = DPSGD(
        noise_multiplier=noise,
        max_grad_norm=privacy.max_grad_norm,
        sample_rate=sample_rate,
        steps=steps,
        noise_seed=_secret_seed(secret, "noise|" + key),
        sampling_seed=_secret_seed(secret, "sampling|" + key),
    )
    return PlannedRelease(entry, dpsgd)


def _secret_seed(secret: bytes, label: str) -> int:
    """A 63-bit seed only the holder of ``secret`` can compute."""
    digest = hmac.new(secret, label.encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") >> 1
