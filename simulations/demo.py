"""`medfed demo`: the whole job on one machine.

Phantom hospitals -> each site's ingest (de-identification, decoding, site store) ->
federated training on Flower's simulation runtime, with local-only and pooled-centralized
baselines -> cross-site evaluation -> evidence. The layout under ``out``::

    phantoms/<site>/...    the hospitals' DICOM folders and labels.csv (fake PHI inside)
    sites/<site>/          the site stores (de-identified)
    run/                   checkpoints, records, evidence.json
    demo.json              what ran, and the wall time of each phase
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from server.server_app import DataProvenance, FederationConfig
from server.strategies import StrategyConfig
from simulations.federation import run_simulated_federation
from simulations.phantoms import write_phantom_federation
from site_client.ingest import ingest_site
from site_client.policy import BurnedInTextPolicy, write_policy
from site_client.store import SiteStore
from task.architectures import check_dp_sgd, task_of
from task.model import ModelConfig
from task.privacy import PrivacyConfig
from task.training import recipe
from validation.acceptance import (
    AcceptancePlan,
    RunScopes,
    check_plan_against,
    resolve_plan,
    write_plan_record,
)

DEMO_MARKER = "demo.json"
#: The demo's intended-use statement for its report: a demonstration on simulated data,
#: with the study design, reference standard, annotation and eligibility of the phantoms.
DEMO_INTENDED_USE = Path(__file__).with_name("demo_intended_use.md")


class DemoError(RuntimeError):
    """The demo (or a scenario run) cannot run: its output folder holds something else."""


@dataclass(frozen=True)
class DemoConfig:
    """What `medfed demo` runs: ``sites`` phantom hospitals, a federation of ``rounds``
    rounds of ``local_epochs`` epochs with ``strategy``, all seeded by ``seed``;
    ``cases_per_site`` overrides the sites' varied sizes (quick runs). ``model``: the
    architecture, trained with its recipe (`task.training.RECIPES`), whose task
    (classification, or segmentation on the phantoms' lesion masks) is the demo's;
    ``local_epochs`` overrides the recipe's. ``privacy``: DP-SGD at every site, epsilon 8,
    by default. ``acceptance``: the acceptance plan file (TOML) the evidence is judged by;
    None: the task's default plan (`validation.acceptance.default_plan`)."""

    out: Path = Path("medfed-demo")
    sites: int = 4
    rounds: int = 10
    seed: int = 0
    strategy: str = "fedavg"
    cases_per_site: int | None = None
    model: str = "blob"
    local_epochs: int | None = None
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    acceptance: Path | None = None


def run_demo(config: DemoConfig, progress: Callable[[str], None] = print) -> Path:
    """Run the demo; returns the path of its evidence.json. Rerunning replaces the
    previous demo's outputs in ``config.out``; any other non-empty folder is refused. A bad
    acceptance plan, or DP-SGD asked of a model it cannot train (`DPSGDUnsupported`), is
    refused before anything runs. Failed acceptance criteria do not stop it: their
    verdicts are in the evidence."""
    plan = resolve_plan(config.acceptance, task_of(config.model))
    check_dp_sgd(config.model, config.privacy.mode)
    prepare_output(config.out, DEMO_MARKER, ("phantoms", "sites", "run", DEMO_MARKER), "demo")
    marker = config.out / DEMO_MARKER
    marker.write_text(json.dumps({"config": asdict(config), "status": "running"}, default=str))
    started = time.perf_counter()
    site_dirs, timings = make_phantom_sites(config, progress)
    stage_acceptance_plan(plan, site_dirs, config.out / "run")
    progress(f"acceptance plan: {plan.name} ({len(plan.criteria)} criteria, {plan.source})")

    progress(
        f"3/3 federation: {task_of(config.model)} with the {config.model} model, "
        f"{config.strategy}, {config.rounds} rounds on "
        f"Flower's simulation runtime, {_privacy_phrase(config.privacy)}"
    )
    federation = FederationConfig(
        run_dir=config.out / "run",
        rounds=config.rounds,
        seed=config.seed,
        strategy=StrategyConfig(name=config.strategy),
        training=recipe(config.model, config.local_epochs),
        model=ModelConfig(architecture=config.model),
        privacy=config.privacy,
        provenance=DataProvenance(
            description=(
                f"phantom CT slices from `medfed phantoms` (seed {config.seed}): "
                "simulated hospitals with simulated scanner profiles"
            ),
            simulated=True,
        ),
    )
    result = run_simulated_federation(site_dirs, federation, progress=progress)
    timings |= result.timings
    timings["total"] = time.perf_counter() - started
    marker.write_text(
        json.dumps(
            {"config": asdict(config), "status": "complete", "timings_s": timings},
            indent=2,
            default=str,
        )
    )
    return result.evidence


def make_phantom_sites(
    config: DemoConfig, progress: Callable[[str], None] = print
) -> tuple[list[Path], dict[str, float]]:
    """The demo's first two phases: ``config.sites`` phantom hospitals under
    ``config.out``/phantoms, each ingested into its site store under ``config.out``/sites.
    Returns the site stores' folders and the wall time (s) of each phase."""
    started = time.perf_counter()
    progress(f"1/3 phantom hospitals: {config.sites} sites -> {config.out / 'phantoms'}")
    phantom_sites = write_phantom_federation(
        config.out / "phantoms",
        n_sites=config.sites,
        cases_per_site=config.cases_per_site,
        seed=config.seed,
    )
    timings = {"phantoms": time.perf_counter() - started}

    progress("2/3 ingest at each site: de-identify, decode, store")
    site_dirs = ingest_exports(phantom_sites, config.out / "sites", config.seed, progress)
    timings["ingest"] = time.perf_counter() - started - timings["phantoms"]
    return site_dirs, timings


def ingest_exports(
    exports: Sequence[Path],
    sites_root: Path,
    seed: int,
    progress: Callable[[str], None] = print,
    burned_in_text: BurnedInTextPolicy | None = None,
) -> list[Path]:
    """Each simulated hospital's export (``dicom/`` and ``labels.csv``) ingested into its
    site store ``sites_root/<name>`` (keys derived from ``seed``, `simulated_site_secret`;
    ``burned_in_text``: the stores' policy for images that may carry burned-in text, None:
    the default); returns the stores' folders."""
    site_dirs = []
    for export in exports:
        root = sites_root / export.name
        store = SiteStore.create(root, secret=simulated_site_secret(seed, export.name))
        if burned_in_text is not None:
            write_policy(root, replace(store.policy, burned_in_text=burned_in_text))
            store = SiteStore.open(root)
        report = ingest_site(store, export / "dicom", export / "labels.csv", seed=seed)
        progress(
            f"  {store.site_id}: {report.stored} cases stored, "
            f"{report.quarantined} quarantined of {report.received} files"
        )
        site_dirs.append(store.root)
    return site_dirs


def stage_acceptance_plan(plan: AcceptancePlan, site_dirs: Sequence[Path], run_dir: Path) -> None:
    """Before training: refuse ``plan`` if a scope names a site, manufacturer, scanner model
    or subgroup column that none of the stores in ``site_dirs`` has (`AcceptancePlanError`),
    else record it in ``run_dir`` for the evidence (`write_plan_record`)."""
    check_plan_against(plan, site_store_scopes(site_dirs))
    write_plan_record(plan, run_dir)


def site_store_scopes(site_dirs: Sequence[Path]) -> RunScopes:
    """The sites, manufacturers, scanner models and subgroup columns of the site stores."""
    stores = [SiteStore.open(Path(d)) for d in site_dirs]
    records = [record for store in stores for record in store.read_manifest()]
    return RunScopes(
        sites=frozenset(store.site_id for store in stores),
        manufacturers=frozenset(r.manufacturer for r in records),
        scanner_models=frozenset(r.scanner for r in records),
        subgroup_columns=frozenset(column for r in records for column in r.subgroups),
    )


def _privacy_phrase(privacy: PrivacyConfig) -> str:
    if privacy.mode == "none":
        return "without differential privacy"
    where = "DP-SGD at every site" if privacy.mode == "local" else "central DP at the coordinator"
    budget = (
        f"noise multiplier {privacy.noise_multiplier:g}"
        if privacy.noise_multiplier
        else f"epsilon {privacy.target_epsilon:g}"
    )
    return f"{where}, {budget}"


def simulated_site_secret(seed: int, site_id: str) -> bytes:
    """The key of a phantom site's store, derived from the demo's seed so that a rerun
    gives the same pseudonyms and split. Real sites get random keys (`SiteStore.create`)."""
    return hashlib.sha256(f"medfed phantom site {site_id} seed {seed}".encode()).digest()


def prepare_output(out: Path, marker: str, owned: Sequence[str] | None, what: str) -> None:
    """Make ``out`` ready: new, empty, or an earlier ``what``'s (it holds ``marker``),
    whose outputs (the entries ``owned``; None: everything in it) are removed; `DemoError`
    for a folder that holds anything else."""
    if out.exists() and not out.is_dir():
        raise DemoError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / marker).exists():
            raise DemoError(f"{out}: folder is not empty and holds no earlier {what}; choose --out")
        for path in [out / name for name in owned] if owned is not None else list(out.iterdir()):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
