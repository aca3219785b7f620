"""``medfed sweep``: one scenario's federation over strategies x epsilons x training seeds.

The scenario's sites are made once (`simulations.scenario_run.make_sites`); every
combination then runs on fresh copies of those site stores (`fresh_site_copies`: no run
sees another's privacy ledger, releases or audit trail), as ``medfed simulate --scenario``
runs one (`run_federation`), and keeps its whole run directory. The layout of OUT::

    sweep.json                 what the sweep ran, and each run's outcome (marks OUT)
    scenario.toml              the scenario file, byte for byte
    <source>/<site>/, sites/   the hospitals' exports and the site stores, made once
    runs/<strategy>-eps<e>-seed<s>/   each run: its site copies, evidence.json, records, ...
    sweep.csv                  one row per run (tidy), every number read from its evidence
    sweep.md                   the comparison table (mean and spread over seeds)

The table compares, per epsilon, the final global model of each strategy with two
baselines trained on the same sites at the same epsilon and seed: the pooled-centralized
model (all sites' training data in one place, DP-SGD at the same epsilon under local DP)
and the local-only models (each site alone, trained by the site inside the run, before its
federated rounds). Neither depends on the strategy, so each seed's baselines are read from
one run: the pooled-centralized model is trained only in the first run of each epsilon and
seed (the next strategy's, should that run fail), and that run's local-only models are the
ones reported. The headline metric is the task's (`validation.evidence`): AUC for
classification, mean per-case Dice for segmentation, on the test data of all sites pooled.
A run that fails is recorded with its one-line reason and the sweep goes on.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from server.strategies import STRATEGY_NAMES
from simulations.demo import prepare_output
from simulations.ray_cluster import RayCluster
from simulations.scenario import Scenario, ScenarioError, derived
from simulations.scenario_run import (
    SCENARIO_COPY,
    checked_job,
    fresh_site_copies,
    make_sites,
    run_federation,
)
from task.privacy import PrivacyConfig
from validation.evidence import EVIDENCE_FILE

#: What marks OUT as an earlier sweep's (a rerun replaces everything in it).
SWEEP_MARKER = "sweep.json"
RUNS = "runs"
TABLE_CSV = "sweep.csv"
TABLE_MD = "sweep.md"
#: The table's baseline regimes, in its order (before the strategies).
POOLED = "pooled-centralized"
LOCAL_OWN = "local-only (own site)"
LOCAL_ALL = "local-only (all sites)"
#: The key of the pooled-centralized baseline in evidence.json's ``baselines``.
POOLED_KEY = "pooled_centralized"
#: The columns of sweep.csv.
CSV_COLUMNS = (
    "run", "strategy", "epsilon", "dp", "seed", "status", "reason", "metric",
    "federated", "federated_ci_low", "federated_ci_high", "pooled_centralized",
    "local_only_own_site", "local_only_all_sites", "wall_s", "evidence",
)  # fmt: skip


class SweepError(ValueError):
    """A sweep that cannot run as asked; the message is one line naming the option."""


@dataclass(frozen=True)
class SweepConfig:
    """What a sweep runs: ``scenario``'s federation for every strategy in ``strategies``
    (names of `server.strategies.STRATEGY_NAMES`, the scenario's other strategy settings
    kept), every epsilon in ``epsilons`` (DP target per site and run; ``math.inf``: no DP)
    and every training seed in ``seeds``; an empty axis is the scenario's own value.
    ``pooled_baseline`` trains the pooled-centralized model (once per epsilon and seed)
    whatever the scenario says; ``acceptance``: the acceptance plan file (None: the task's
    default); ``cluster``: run every run's sites on that existing Ray cluster. `SweepError`
    for a bad axis value, naming its option."""

    scenario: Scenario
    out: Path
    strategies: tuple[str, ...] = ()
    epsilons: tuple[float, ...] = ()
    seeds: tuple[int, ...] = ()
    pooled_baseline: bool = True
    acceptance: Path | None = None
    cluster: RayCluster | None = None

    def __post_init__(self) -> None:
        for name in self.strategies:
            if name not in STRATEGY_NAMES:
                raise SweepError(
                    f"--strategies: unknown strategy {name!r}; "
                    f"choose from {', '.join(STRATEGY_NAMES)}"
                )
        for epsilon in self.epsilons:
            if not epsilon > 0:
                raise SweepError(f"--epsilons: must be > 0 or 'inf', got {epsilon:g}")
        for seed in self.seeds:
            if type(seed) is not int or seed < 0:
                raise SweepError(f"--seeds: must be integers >= 0, got {seed!r}")
        for option, axis in (
            ("--strategies", self.strategies),
            ("--epsilons", self.epsilons),
            ("--seeds", self.seeds),
        ):
            if len(set(axis)) != len(axis):
                raise SweepError(f"{option}: a value is given twice")

    def points(self) -> list[SweepPoint]:
        """Every combination, epsilon outermost, then seed, then strategy (the order the
        runs go in: a seed's baselines come with its first strategy's run)."""
        scenario = self.scenario
        strategies = self.strategies or (scenario.strategy.name,)
        privacies = [swept_privacy(scenario.privacy, e) for e in self.epsilons] or [
            scenario.privacy
        ]
        seeds = self.seeds or (scenario.seeds.training,)
        return [
            SweepPoint(strategy, privacy, seed)
            for privacy in privacies
            for seed in seeds
            for strategy in strategies
        ]


def swept_privacy(privacy: PrivacyConfig, epsilon: float) -> PrivacyConfig:
    """``privacy`` at target ``epsilon`` (``math.inf``: no DP): its mode kept (local when it
    had none), the noise derived from the epsilon (a fixed noise multiplier dropped)."""
    if math.isinf(epsilon):
        return replace(privacy, mode="none", noise_multiplier=0.0)
    mode = "local" if privacy.mode == "none" else privacy.mode
    return replace(privacy, mode=mode, target_epsilon=epsilon, noise_multiplier=0.0)


def epsilon_label(privacy: PrivacyConfig) -> str:
    """The epsilon as the table shows it: ``inf`` without DP, ``noise <sigma>`` for a fixed
    noise multiplier, else the target epsilon (with ``central`` for central DP)."""
    if privacy.mode == "none":
        return "inf"
    label = (
        f"noise {privacy.noise_multiplier:g}"
        if privacy.noise_multiplier
        else f"{privacy.target_epsilon:g}"
    )
    return label + (" central" if privacy.mode == "central" else "")


@dataclass(frozen=True)
class SweepPoint:
    """One combination: a strategy name, the privacy settings and the training seed."""

    strategy: str
    privacy: PrivacyConfig
    seed: int

    @property
    def epsilon(self) -> str:
        """The epsilon's label (`epsilon_label`)."""
        return epsilon_label(self.privacy)

    @property
    def name(self) -> str:
        """The run's folder name under OUT/runs: ``<strategy>-eps<e>-seed<s>``."""
        return f"{self.strategy}-eps{self.epsilon.replace(' ', '-')}-seed{self.seed}"

    def scenario(self, base: Scenario, pooled_baseline: bool | None = None) -> Scenario:
        """``base`` with this strategy, privacy and training seed, and ``pooled_baseline``
        (None: the scenario's); its text says what runs."""
        federation = base.federation
        if pooled_baseline is not None:
            federation = replace(federation, pooled_baseline=pooled_baseline)
        return derived(
            base,
            strategy=replace(base.strategy, name=self.strategy),
            privacy=self.privacy,
            seeds=replace(base.seeds, training=self.seed),
            federation=federation,
        )


@dataclass(frozen=True)
class RunOutcome:
    """One run of a sweep: its point, folder and wall time (s); ``error`` its one-line
    reason if it failed, else the numbers read from its evidence.json: ``metric`` (``auc``
    or ``dice_mean``), the global model's value and interval on the pooled test data, the
    pooled-centralized model's (None: not trained in this run), and the mean over sites of
    each local-only model's on its own site's test data and on all sites' (None: none
    trained, or undefined)."""

    point: SweepPoint
    run_dir: Path
    wall_s: float
    error: str | None = None
    metric: str | None = None
    federated: float | None = None
    federated_ci: tuple[float | None, float | None] = (None, None)
    pooled_centralized: float | None = None
    local_own: float | None = None
    local_all: float | None = None

    @property
    def evidence(self) -> Path | None:
        """The run's evidence.json, None for a failed run."""
        return None if self.error else self.run_dir / EVIDENCE_FILE

    def csv_row(self, out: Path) -> dict[str, Any]:
        """The run's row of sweep.csv (paths relative to ``out``)."""
        return {
            "run": self.point.name,
            "strategy": self.point.strategy,
            "epsilon": self.point.epsilon,
            "dp": self.point.privacy.mode,
            "seed": self.point.seed,
            "status": "failed" if self.error else "ok",
            "reason": self.error or "",
            "metric": self.metric or "",
            "federated": _cell(self.federated),
            "federated_ci_low": _cell(self.federated_ci[0]),
            "federated_ci_high": _cell(self.federated_ci[1]),
            "pooled_centralized": _cell(self.pooled_centralized),
            "local_only_own_site": _cell(self.local_own),
            "local_only_all_sites": _cell(self.local_all),
            "wall_s": f"{self.wall_s:.1f}",
            "evidence": str(self.evidence.relative_to(out)) if self.evidence else "",
        }


def _cell(value: float | None) -> str:
    return "" if value is None else repr(value)


def read_outcome(point: SweepPoint, run_dir: Path, wall_s: float) -> RunOutcome:
    """The numbers of a finished run, read from ``run_dir``/evidence.json: the task's
    headline metric (``baselines``' key) of the global model (``performance.pooled``), of
    the pooled-centralized model and of the local-only models (``baselines``)."""
    evidence = json.loads((run_dir / EVIDENCE_FILE).read_text())
    key = "dice_mean" if evidence["run"].get("task") == "segmentation" else "auc"
    headline = evidence["performance"]["pooled"][key]
    baselines = evidence["baselines"]
    pooled = baselines.get(POOLED_KEY)
    local = baselines.get("local_only", {})
    return RunOutcome(
        point,
        run_dir,
        wall_s,
        metric=key,
        federated=headline["value"],
        federated_ci=(headline.get("ci_low"), headline.get("ci_high")),
        pooled_centralized=pooled[key]["value"] if pooled else None,
        local_own=_mean([m["by_site"].get(site, {}).get("value") for site, m in local.items()]),
        local_all=_mean([m[key]["value"] for m in local.values()]),
    )


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean of ``values``; None if any is None (undefined) or there are none."""
    if not values or any(v is None for v in values):
        return None
    return statistics.fmean(v for v in values if v is not None)


@dataclass(frozen=True)
class Spread:
    """One row of the comparison table: a regime (a strategy, or a baseline) at one
    epsilon, its headline metric over the seeds (``values``, in seed order), and the runs
    that gave none (``failed``: one line each)."""

    regime: str
    epsilon: str
    values: tuple[float, ...]
    failed: tuple[str, ...] = ()
    missing: int = 0

    @property
    def mean(self) -> float | None:
        """The mean over seeds; None without values."""
        return statistics.fmean(self.values) if self.values else None

    @property
    def sd(self) -> float | None:
        """The sample standard deviation (n - 1) over seeds; None with fewer than two."""
        return statistics.stdev(self.values) if len(self.values) >= 2 else None

    @property
    def range(self) -> tuple[float, float] | None:
        """(min, max) over seeds; None without values."""
        return (min(self.values), max(self.values)) if self.values else None


def summarise(outcomes: Sequence[RunOutcome]) -> list[Spread]:
    """The comparison table's rows: per epsilon (in sweep order) the baselines, then each
    strategy. A strategy's values are its runs' global-model metrics; a baseline's, per
    seed, those of one run (`_baseline_run`: the one that trained the pooled-centralized
    model). Undefined metrics (None) count as ``missing``."""
    rows: list[Spread] = []
    epsilons = list(dict.fromkeys(o.point.epsilon for o in outcomes))
    for epsilon in epsilons:
        at = [o for o in outcomes if o.point.epsilon == epsilon]
        sources = [_baseline_run(at, seed) for seed in dict.fromkeys(o.point.seed for o in at)]
        for regime, value in (
            (POOLED, lambda o: o.pooled_centralized),
            (LOCAL_OWN, lambda o: o.local_own),
            (LOCAL_ALL, lambda o: o.local_all),
        ):
            per_seed = [value(source) for source in sources if source is not None]
            if any(v is not None for v in per_seed):
                rows.append(_spread(regime, epsilon, per_seed, ()))
        strategies = list(dict.fromkeys(o.point.strategy for o in at))
        for strategy in strategies:
            runs = [o for o in at if o.point.strategy == strategy]
            failed = tuple(f"seed {o.point.seed}: {o.error}" for o in runs if o.error)
            values = [o.federated for o in runs if not o.error]
            rows.append(_spread(strategy, epsilon, values, failed))
    return rows


def _baseline_run(outcomes: Sequence[RunOutcome], seed: int) -> RunOutcome | None:
    """The run whose baselines are ``seed``'s: the successful one that trained the
    pooled-centralized model, else the first successful one; None if all failed."""
    done = [o for o in outcomes if o.point.seed == seed and not o.error]
    pooled = [o for o in done if o.pooled_centralized is not None]
    return (pooled or done or [None])[0]


def _spread(
    regime: str, epsilon: str, values: Sequence[float | None], failed: tuple[str, ...]
) -> Spread:
    defined = tuple(v for v in values if v is not None)
    return Spread(regime, epsilon, defined, failed, len(values) - len(defined))


def markdown_table(rows: Sequence[Spread], metric: str) -> str:
    """The comparison table in Markdown: per row the mean, sample SD, min-max over seeds
    (3 decimals), the seeds counted, and the failed runs; each failure's reason below."""
    name = {"auc": "AUC", "dice_mean": "Dice"}.get(metric, metric)
    lines = [
        f"| epsilon | regime | {name} mean | SD | min-max | seeds | failed |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        span = row.range
        lines.append(
            f"| {row.epsilon} | {row.regime} | {_fmt(row.mean)} | {_fmt(row.sd)} | "
            + (f"{span[0]:.3f}-{span[1]:.3f}" if span else "-")
            + f" | {len(row.values)}"
            + (f" (+{row.missing} undefined)" if row.missing else "")
            + f" | {len(row.failed)} |"
        )
    failures = [f"- {row.regime}, epsilon {row.epsilon}, {f}" for row in rows for f in row.failed]
    if failures:
        lines += ["", "Failed runs:", *failures]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@dataclass(frozen=True)
class SweepResult:
    """A finished sweep: every run's outcome (in run order), the table's rows, and the
    files written (sweep.csv, sweep.md)."""

    outcomes: tuple[RunOutcome, ...]
    rows: tuple[Spread, ...]
    csv: Path
    markdown: Path
    table: str

    @property
    def failed(self) -> list[RunOutcome]:
        """The runs that failed."""
        return [o for o in self.outcomes if o.error]


def run_sweep(
    config: SweepConfig, progress: Callable[[str], None] = print, verbose: bool = False
) -> SweepResult:
    """Run the sweep ``config`` into ``config.out``: every combination is checked first
    (`ScenarioError`, `SweepError`, a bad acceptance plan: nothing written), then OUT is
    prepared (`prepare_output`: an earlier sweep's folder is emptied, any other non-empty
    folder refused), the sites made once, and every run goes on fresh copies of them. A
    failing run is recorded with its reason; the others go on."""
    points = config.points()
    out = config.out
    for point in points:
        try:
            checked_job(point.scenario(config.scenario), out / RUNS / point.name, config.acceptance)
        except ScenarioError as exc:
            raise SweepError(f"{point.name}: {exc}") from exc
    if config.cluster is not None:
        config.cluster.check_reachable()
    prepare_output(out, SWEEP_MARKER, None, "sweep")
    (out / SCENARIO_COPY).write_text(config.scenario.text, encoding="utf-8")
    _write_marker(config, points, [], "running")
    site_dirs = make_sites(config.scenario, out, progress)
    outcomes: list[RunOutcome] = []
    pooled_done: set[tuple[str, int]] = set()
    for index, point in enumerate(points, 1):
        run_dir = out / RUNS / point.name
        key = (point.epsilon, point.seed)
        pooled = config.pooled_baseline and key not in pooled_done
        progress(f"run {index}/{len(points)}: {point.name}" + (f", {POOLED}" if pooled else ""))
        started = time.perf_counter()
        try:
            copies = fresh_site_copies(site_dirs, run_dir / "sites")
            # The pooled baseline whatever the scenario says: it is the table's ceiling.
            run_federation(
                point.scenario(config.scenario, pooled_baseline=pooled),
                copies,
                run_dir,
                lambda line: progress(f"  {line}"),
                verbose,
                config.acceptance,
                pooled_baseline=pooled,
                cluster=config.cluster,
            )
            outcome = read_outcome(point, run_dir, time.perf_counter() - started)
        except Exception as exc:  # one run's failure is the table's, not the sweep's
            if verbose:
                traceback.print_exc()
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            outcome = RunOutcome(point, run_dir, time.perf_counter() - started, error=reason)
            progress(f"  {point.name} failed: {reason}")
        if outcome.pooled_centralized is not None:
            pooled_done.add(key)
        outcomes.append(outcome)
        _write_marker(config, points, outcomes, "running")
    return _finish(config, points, outcomes)


def _finish(
    config: SweepConfig, points: list[SweepPoint], outcomes: list[RunOutcome]
) -> SweepResult:
    """Write sweep.csv, sweep.md and the marker's final state."""
    out = config.out
    csv_path = out / TABLE_CSV
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(o.csv_row(out) for o in outcomes)
    rows = summarise(outcomes)
    metric = next((o.metric for o in outcomes if o.metric), "auc")
    table = markdown_table(rows, metric)
    scenario = config.scenario
    header = (
        f"# Sweep of scenario {scenario.name}\n\n"
        f"{scenario.sites.count} sites ({', '.join(map(str, scenario.sites.sizes))} cases), "
        f"{scenario.federation.model} model, rounds: {scenario.federation.rounds}; data seed "
        f"{scenario.seeds.data}. Headline metric ({metric}) on the test data of all sites "
        f"pooled; mean, sample SD and min-max over training seeds. {POOLED}: all sites' "
        f"training data in one place; {LOCAL_OWN}: the mean over sites of each site's own "
        f"model on its own test data; {LOCAL_ALL}: the same models on all sites' test data "
        "pooled. Each number is in a run's evidence.json (sweep.csv names it).\n\n"
    )
    md_path = out / TABLE_MD
    md_path.write_text(header + table + "\n", encoding="utf-8")
    _write_marker(config, points, outcomes, "complete")
    return SweepResult(tuple(outcomes), tuple(rows), csv_path, md_path, table)


def _write_marker(
    config: SweepConfig, points: list[SweepPoint], outcomes: list[RunOutcome], status: str
) -> None:
    """OUT/sweep.json: the sweep's settings, its runs and, so far, their outcomes."""
    document = {
        "status": status,
        "scenario": {"name": config.scenario.name, "sha256": config.scenario.sha256},
        "strategies": list(config.strategies),
        "epsilons": [str(e) for e in config.epsilons],
        "seeds": list(config.seeds),
        "pooled_baseline": config.pooled_baseline,
        "runs": [p.name for p in points],
        "outcomes": [o.csv_row(config.out) for o in outcomes],
    }
    (config.out / SWEEP_MARKER).write_text(json.dumps(document, indent=2, default=str))
