"""Simulated federations: existing site stores on Flower's simulation runtime.

The coordinator's ServerApp and the sites' ClientApp are the same objects a deployment
runs; Flower's simulation runtime (Ray) runs one virtual SuperNode per site store, with
one CPU each. Baselines that need all data in one place are trained here first. A
`simulations.faults.FaultPlan` makes some sites faulty (simulation only).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import ray
from flwr.simulation import run_simulation

from server.server_app import FederationConfig, build_server_app
from server.sites import FederationError
from simulations.baselines import train_pooled_centralized
from simulations.faults import FaultPlan, FaultyClientApp
from simulations.ray_cluster import RayCluster
from site_client.client_app import build_client_app
from site_client.ledger import PrivacyLedger
from site_client.privacy import PrivacyRefused, ReleaseRequest, plan_release
from site_client.store import SiteStore
from task.architectures import check_dp_sgd
from task.runtime import apply_offline_environment
from task.wire import POOLED_CENTRALIZED
from validation.evidence import EVIDENCE_FILE

#: Memory Ray may use for its object store (model messages are a few MB).
OBJECT_STORE_BYTES = 256 * 1024**2


@dataclass(frozen=True)
class SimulationResult:
    """Where the evidence is, and the wall time (s) of the baseline and of the runtime."""

    evidence: Path
    timings: dict[str, float] = field(default_factory=dict)


def run_simulated_federation(
    site_dirs: Sequence[Path],
    config: FederationConfig,
    pooled_baseline: bool = True,
    progress: Callable[[str], None] = print,
    verbose: bool = False,
    faults: FaultPlan | None = None,
    cluster: RayCluster | None = None,
) -> SimulationResult:
    """Run the federated job ``config`` over ``site_dirs``.

    Every store is opened first, so a missing or broken one fails before anything runs,
    and so does a federation in which every site's privacy budget is already spent, or
    one asking DP-SGD of a model it cannot train (`DPSGDUnsupported`).
    With ``pooled_baseline`` the pooled-centralized model is trained and evaluated too (on
    the training data of the sites that are not held out). ``faults`` are injected at the
    sites (`FaultyClientApp`; its site ids in the order of ``site_dirs``); with stragglers,
    the runtime runs one worker per site, as a real federation would, so that a late site
    holds up no other.
    With ``cluster`` the sites run on that existing Ray cluster (`RayCluster.connect`),
    checked to answer before anything is trained; without, on a private Ray instance on
    this machine, whatever ``RAY_ADDRESS`` or a ``ray start`` here say.
    """
    apply_offline_environment()
    stores = [SiteStore.open(Path(d)) for d in site_dirs]
    unknown = sorted(set(config.holdout_sites) - {s.site_id for s in stores})
    if unknown:
        raise FederationError(f"held-out site(s) {', '.join(unknown)} not among the site stores")
    training = [s for s in stores if s.site_id not in config.holdout_sites]
    if config.frozen_model is not None:
        pooled_baseline = False  # an evaluation-only job trains nothing
    else:
        check_dp_sgd(config.model.architecture, config.privacy.mode)
        _check_budgets(training, config)
    config = replace(config, expected_sites=len(stores))
    if cluster is not None:
        cluster.check_reachable()
    timings: dict[str, float] = {}
    if pooled_baseline:
        started = time.perf_counter()
        epochs = config.rounds * config.training.local_epochs
        progress(f"pooled-centralized baseline: all sites' training data, {epochs} epochs")
        checkpoint = train_pooled_centralized(
            training,
            config.model,
            config.training,
            epochs,
            config.seed,
            config.run_dir / "checkpoints" / f"{POOLED_CENTRALIZED}.pt",
            config.privacy,
        )
        config = replace(config, reference_models=((POOLED_CENTRALIZED, checkpoint),))
        timings["pooled-centralized baseline"] = time.perf_counter() - started

    if faults is not None and faults.site_ids != tuple(s.site_id for s in stores):
        raise FederationError("the fault plan's sites are not the site stores, in order")
    cpus = os.cpu_count() or 1
    if faults is not None and faults.has_stragglers:
        cpus = max(cpus, len(stores))
    client_app = build_client_app([s.root for s in stores])
    if faults is not None:
        client_app = FaultyClientApp(client_app, faults)
    # A cluster's nodes say what they offer (Flower's pool is one actor per CPU there);
    # Ray refuses sizes when connecting, and is connected to by `RayCluster.connect`.
    local_ray = {
        "address": "local",  # never RAY_ADDRESS or a `ray start` on this machine
        "num_cpus": cpus,
        "num_gpus": 0,
        "object_store_memory": OBJECT_STORE_BYTES,
    }
    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            **(local_ray if cluster is None else {}),
            "logging_level": logging.INFO if verbose else logging.ERROR,
            "log_to_driver": verbose,
        },
    }
    _quiet_flower(verbose, faults is not None and faults.has_crashes)
    started = time.perf_counter()
    try:
        if cluster is not None:
            progress(f"sites {cluster.connect(verbose)}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*run_simulation.*deprecated.*")
            run_simulation(
                server_app=build_server_app(config, progress),
                client_app=client_app,
                num_supernodes=len(stores),
                backend_config=backend_config,  # type: ignore[arg-type]
            )
    finally:
        ray.shutdown()  # Flower does once its backend is built, not if it fails before
    timings["flower simulation runtime"] = time.perf_counter() - started
    evidence = config.run_dir / EVIDENCE_FILE
    if not evidence.exists():
        raise FederationError(f"the federation ended without evidence: see {config.run_dir}")
    return SimulationResult(evidence, timings)


def _check_budgets(stores: list[SiteStore], config: FederationConfig) -> None:
    """Refuse at once a federation whose every site would refuse its first round.

    Only a convenience of simulations, which can see the stores: the sites themselves
    check every round, whatever the coordinator believes.
    """
    reasons = []
    for store in stores:
        if store.policy.privacy.max_epsilon is None and config.privacy.mode == "local":
            return  # no ceiling: the first round of a run always fits its own target
        n_train = sum(r.split == "train" for r in store.read_manifest())
        try:
            plan_release(
                store.policy.privacy,
                PrivacyLedger(store.root).entries(),
                config.privacy,
                ReleaseRequest(
                    run_id="budget-check",
                    round=1,
                    phase="federated",
                    seed=config.seed,
                    epochs=config.training.local_epochs,
                    planned_epochs=config.planned_site_epochs,
                    n_train=max(n_train, 1),
                    batch_size=config.training.batch_size,
                ),
                store.secret,
            )
        except PrivacyRefused as exc:
            reasons.append(f"{store.site_id}: {exc}")
        else:
            return
    raise FederationError("every site would refuse to train: " + "; ".join(reasons))


def _quiet_flower(verbose: bool, crashes: bool = False) -> None:
    """Flower logs every message at INFO; medfed prints its own progress instead. Sites made
    to crash (``crashes``) would have Flower log each crash's traceback as an error: the
    run's records say which site crashed, and why."""
    quiet = logging.CRITICAL if crashes else logging.ERROR
    logging.getLogger("flwr").setLevel(logging.INFO if verbose else quiet)
