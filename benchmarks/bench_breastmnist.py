"""Benchmark on real images: BreastMNIST split into three simulated sites (issue 9).

The scenario simulations/scenarios/breastmnist.toml (624 official train + val images split
3 ways, the official test split of 156 images divided among the sites as their test data)
with its sites made once; then, for each model and privacy setting asked for, its
federation runs on fresh copies of the same site stores. Prints, as a Markdown table for
docs/benchmarks.md: the global model's pooled test AUC (on exactly the official test split)
with its 95% CI, the pooled-centralized and local-only baselines' AUCs on the same test
data, MedMNIST v2's published centralized ResNet-18 (28x28) AUC beside them, and wall times.

Usage: python benchmarks/bench_breastmnist.py [--models cnn,blob] [--epsilons inf,8]
       [--rounds R] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from simulations.scenario import derived, load_scenario
from simulations.scenario_run import fresh_site_copies, make_sites, run_federation
from task.privacy import requested_privacy

SCENARIO = Path(__file__).resolve().parents[1] / "simulations" / "scenarios" / "breastmnist.toml"
#: MedMNIST v2 (Yang et al. 2023), BreastMNIST test split, centralized ResNet-18 at 28x28.
PUBLISHED_RESNET18_AUC = 0.901


def auc_cell(metric: dict[str, Any] | None) -> str:
    """``0.812 [0.74, 0.88]`` from an evidence metric (value and CI), or n/a."""
    if not metric or metric.get("value") is None:
        return "n/a"
    low, high = metric.get("ci_low"), metric.get("ci_high")
    ci = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
    return f"{metric['value']:.3f}{ci}"


def baseline_auc(entry: Any) -> str:
    """A baseline's AUC (a number or a metric) as text."""
    value = entry.get("auc") if isinstance(entry, dict) else None
    if isinstance(value, dict):
        return auc_cell(value)
    return f"{value:.3f}" if isinstance(value, int | float) else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn", help="comma-separated model names")
    parser.add_argument("--epsilons", default="inf,8", help='comma-separated; "inf": no DP')
    parser.add_argument("--rounds", type=int, help="rounds (default: the scenario's)")
    parser.add_argument("--out", type=Path, help="folder for the runs (default: temporary)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="medfed-bench-breastmnist-"))

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    scenario = load_scenario(SCENARIO)
    if args.rounds:
        scenario = derived(scenario, federation=replace(scenario.federation, rounds=args.rounds))
    started = time.perf_counter()
    sites = make_sites(scenario, out / "made", say)
    made_s = time.perf_counter() - started
    rows = []
    for model in args.models.split(","):
        for epsilon in args.epsilons.split(","):
            eps = math.inf if epsilon == "inf" else float(epsilon)
            case = derived(
                scenario,
                federation=replace(scenario.federation, model=model),
                privacy=requested_privacy(epsilon=eps),
            )
            folder = out / f"{model}-eps{epsilon}"
            copies = fresh_site_copies(sites, folder / "sites")
            t0 = time.perf_counter()
            result = run_federation(case, copies, folder / "run", progress=lambda _: None)
            seconds = time.perf_counter() - t0
            evidence = json.loads(result.evidence.read_text())
            baselines = evidence.get("baselines") or {}
            local = baselines.get("local_only") or {}
            rows.append(
                (
                    model,
                    "none" if eps == math.inf else f"{eps:g}",
                    auc_cell(evidence["performance"]["pooled"]["auc"]),
                    baseline_auc(baselines.get("pooled_centralized")),
                    ", ".join(f"{s} {baseline_auc(v)}" for s, v in sorted(local.items())),
                    f"{seconds:.0f}",
                )
            )
            say(f"{model}, epsilon {epsilon}: {rows[-1][2]} ({seconds:.0f} s)")

    federation = scenario.federation
    n_test = sum(s["n_test"] for s in evidence["sites"])
    print(
        f"Run on {datetime.now(UTC).date()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; scenario {scenario.name} (sites of "
        f"{', '.join(map(str, scenario.sites.sizes))} training cases, {n_test} test cases = "
        f"the official test split; {federation.rounds} rounds x {federation.local_epochs} "
        f"local epochs, FedAvg, data / training seed {scenario.seeds.data} / "
        f"{scenario.seeds.training}); sites made and ingested in {made_s:.0f} s. MedMNIST "
        f"v2's published centralized ResNet-18 (28x28) test AUC: {PUBLISHED_RESNET18_AUC}.\n"
    )
    print(
        "| model | DP epsilon | global pooled test AUC [95% CI] | pooled-centralized AUC "
        "| local-only AUCs | MedMNIST v2 ResNet-18 (28x28) | wall (s) |"
    )
    print("| --- | --- | ---: | ---: | --- | ---: | ---: |")
    for model, eps, auc, pooled, local, seconds in rows:
        print(
            f"| {model} | {eps} | {auc} | {pooled} | {local} | {PUBLISHED_RESNET18_AUC} "
            f"| {seconds} |"
        )


if __name__ == "__main__":
    main()
