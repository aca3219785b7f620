"""``medfed simulate --scenario FILE --out RUN``: the simulated federation a scenario describes.

The scenario's sites are made as the demo makes its hospitals (its source writes each
hospital's DICOM export and labels.csv, each site ingests its export into its store), then
the federation runs on Flower's simulation runtime as ``medfed simulate`` runs one
(`simulations.federation.run_simulated_federation`), with the scenario's faults injected at
the sites (`simulations.faults`). The layout of RUN::

    scenario.toml        the scenario file, byte for byte (the evidence has it too)
    phantoms/<site>/     the simulated hospitals' exports (fake PHI inside)
    sites/<site>/        their site stores
    evidence.json, rounds.jsonl, checkpoints/, ...   the run, as `medfed simulate` leaves it

Rerunning into RUN replaces it; any other non-empty folder is refused.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from server.server_app import DataProvenance, FederationConfig
from simulations.breastmnist import PROVENANCE as BREASTMNIST_PROVENANCE
from simulations.breastmnist import (
    SITE_BURNED_IN_TEXT,
    load_breastmnist,
    write_breastmnist_federation,
)
from simulations.demo import ingest_exports, prepare_output, stage_acceptance_plan
from simulations.faults import FaultPlan
from simulations.federation import SimulationResult, run_simulated_federation
from simulations.phantoms import write_phantom_federation
from simulations.ray_cluster import RayCluster
from simulations.scenario import Scenario, ScenarioError, site_draws, site_specs
from task.architectures import check_dp_sgd, task_of
from task.model import ModelConfig
from task.training import recipe
from validation.acceptance import AcceptancePlan, resolve_plan

#: The scenario's copy in RUN; also what marks RUN as a scenario run's.
SCENARIO_COPY = "scenario.toml"
#: Writes the hospitals' exports of a scenario under a folder: one folder per site with
#: ``dicom/`` and ``labels.csv`` (what `simulations.demo.ingest_exports` ingests).
ExportSites = Callable[[Scenario, Path], list[Path]]


def export_phantoms(scenario: Scenario, out: Path) -> list[Path]:
    """The scenario's sites as phantom hospitals (`simulations.phantoms`) under ``out``."""
    return write_phantom_federation(out, seed=scenario.seeds.data, specs=site_specs(scenario))


def export_breastmnist(scenario: Scenario, out: Path) -> list[Path]:
    """The scenario's sites as BreastMNIST's real images split into simulated hospitals
    (`simulations.breastmnist`) under ``out``; the data from its ``data_path``."""
    data = load_breastmnist(scenario.data_path)
    return write_breastmnist_federation(out, data, site_draws(scenario), scenario.seeds.data)


#: Where a scenario's site images come from, by the name its ``source`` field gives (each
#: also in `simulations.scenario.SOURCE_NAMES`), and what its data are, for every report.
SOURCES: dict[str, ExportSites] = {"phantoms": export_phantoms, "breastmnist": export_breastmnist}
SOURCE_PROVENANCE = {
    "phantoms": "simulated hospitals from phantoms with simulated scanner profiles",
    "breastmnist": BREASTMNIST_PROVENANCE,
}


def run_scenario(
    scenario: Scenario,
    out: Path,
    progress: Callable[[str], None] = print,
    verbose: bool = False,
    acceptance: Path | None = None,
    pooled_baseline: bool = True,
    cluster: RayCluster | None = None,
) -> SimulationResult:
    """Make the sites of ``scenario`` under ``out`` and run its federation there
    (`run_federation`, on ``cluster`` if given). Its settings are checked
    (`ScenarioError`), and the cluster's head is checked to answer, before anything is
    written."""
    checked_job(scenario, out, acceptance)
    if cluster is not None:
        cluster.check_reachable()
    prepare_output(out, SCENARIO_COPY, None, "scenario run")
    (out / SCENARIO_COPY).write_text(scenario.text, encoding="utf-8")
    site_dirs = make_sites(scenario, out, progress)
    return run_federation(
        scenario, site_dirs, out, progress, verbose, acceptance, pooled_baseline, cluster
    )


def make_sites(
    scenario: Scenario, out: Path, progress: Callable[[str], None] = print
) -> list[Path]:
    """The sites of ``scenario``: its source's hospital exports under ``out/<source>``,
    each ingested into its site store under ``out/sites``; returns the stores' folders."""
    sites = scenario.sites
    progress(
        f"scenario {scenario.name}: {sites.count} {scenario.source} sites "
        f"({', '.join(map(str, sites.sizes))} cases) -> {out / scenario.source}"
    )
    exports = SOURCES[scenario.source](scenario, out / scenario.source)
    burned_in = SITE_BURNED_IN_TEXT if scenario.source == "breastmnist" else None
    return ingest_exports(exports, out / "sites", scenario.seeds.data, progress, burned_in)


def fresh_site_copies(site_dirs: list[Path], root: Path) -> list[Path]:
    """Copies of the site stores ``site_dirs`` under ``root`` with nothing spent or
    released yet (no privacy ledger, releases or audit trail), so that several runs over
    the same sites (benchmarks, tests) do not see each other's."""
    fresh = shutil.ignore_patterns("privacy-*", "releases", "audit.*")
    return [Path(shutil.copytree(d, root / d.name, ignore=fresh)) for d in site_dirs]


def run_federation(
    scenario: Scenario,
    site_dirs: list[Path],
    run_dir: Path,
    progress: Callable[[str], None] = print,
    verbose: bool = False,
    acceptance: Path | None = None,
    pooled_baseline: bool = True,
    cluster: RayCluster | None = None,
) -> SimulationResult:
    """The federation of ``scenario`` over its site stores ``site_dirs`` (`make_sites`, in
    its sites' order) into ``run_dir``, with its faults injected, judged by the acceptance
    plan ``acceptance`` (None: the task's default). ``pooled_baseline`` False skips the
    pooled-centralized baseline whatever the scenario says. ``cluster``: run the sites on
    that existing Ray cluster instead of on this machine."""
    plan, faults, config = checked_job(scenario, run_dir, acceptance)
    stage_acceptance_plan(plan, site_dirs, run_dir)
    for line in describe_faults(faults):
        progress(line)
    return run_simulated_federation(
        site_dirs,
        config,
        pooled_baseline=pooled_baseline and scenario.federation.pooled_baseline,
        progress=progress,
        verbose=verbose,
        faults=faults,
        cluster=cluster,
    )


def checked_job(
    scenario: Scenario, run_dir: Path, acceptance: Path | None
) -> tuple[AcceptancePlan, FaultPlan, FederationConfig]:
    """The acceptance plan, fault plan and job of ``scenario``, each checked, and its data
    file readable (`BreastMNISTError`)."""
    if scenario.source == "breastmnist":
        load_breastmnist(scenario.data_path)
    model = scenario.federation.model
    plan = resolve_plan(acceptance, task_of(model))
    check_dp_sgd(model, scenario.privacy.mode)
    faults = scenario.fault_plan()
    return plan, faults, federation_config(scenario, run_dir, faults)


def federation_config(scenario: Scenario, run_dir: Path, faults: FaultPlan) -> FederationConfig:
    """The federated job of ``scenario`` in ``run_dir``; its data provenance says the data
    are simulated and records the scenario and the faults ``faults`` injects.
    `ScenarioError` for settings the job refuses (e.g. central DP with a robust strategy)."""
    federation = scenario.federation
    where = str(scenario.file or scenario.name)
    description = (
        f"simulation scenario {scenario.name!r} ({where}, sha256 {scenario.sha256[:12]}): "
        f"{scenario.sites.count} sites: {SOURCE_PROVENANCE[scenario.source]}; "
        f"data seed {scenario.seeds.data}"
        + (f", {len(faults.injected())} faults injected" if scenario.faults else "")
    )
    try:
        return FederationConfig(
            run_dir=run_dir,
            rounds=federation.rounds,
            seed=scenario.seeds.training,
            expected_sites=scenario.sites.count,
            strategy=scenario.strategy,
            training=recipe(federation.model, federation.local_epochs),
            model=ModelConfig(architecture=federation.model),
            local_baselines=federation.local_baselines,
            privacy=scenario.privacy,
            provenance=DataProvenance(description, True, scenario.record(faults)),
            round_timeout_s=federation.round_timeout_s,
        )
    except ValueError as exc:
        raise ScenarioError(f"{where}: {exc}") from exc


def describe_faults(plan: FaultPlan) -> list[str]:
    """One line per round that has faults: which site suffers which."""
    by_round: dict[int, list[str]] = {}
    for fault in plan.injected():
        by_round.setdefault(int(fault["round"]), []).append(f"{fault['site']} {fault['kind']}")
    return [
        f"faults injected (simulated) in round {server_round}: {', '.join(faults)}"
        for server_round, faults in sorted(by_round.items())
    ]
