"""Benchmark of robust aggregation: one Byzantine site among five.

The scenario simulations/scenarios/byzantine.toml (five phantom hospitals, DP-SGD at
epsilon 8, no baselines) with its sites made once; then, for each strategy, its federation
runs fault-free and with site-e Byzantine in every round (a sign-flipped update scaled 5x:
g - 5 d; a scaled update: g + 10 d; d is the site's honest update, g the global model sent),
each on fresh copies of the same site stores. Prints, as a Markdown table for
docs/benchmarks.md, the final global model's pooled test AUC (with its change from the
fault-free run of the same strategy) and the wall time of each run.

Usage: python benchmarks/bench_faults.py [--strategies fedavg,fedmedian,...]
       [--attacks none,sign_flip:5,scale:10] [--rounds R] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from simulations.faults import FaultSpec
from simulations.scenario import Scenario, derived, load_scenario
from simulations.scenario_run import fresh_site_copies, make_sites, run_federation

SCENARIO = Path(__file__).resolve().parents[1] / "simulations" / "scenarios" / "byzantine.toml"
STRATEGY_NAMES = {
    "fedavg": "FedAvg",
    "fedmedian": "FedMedian",
    "fedtrimmedavg": "FedTrimmedAvg (beta 0.2)",
    "krum": "Krum (f 1)",
    "multikrum": "MultiKrum (f 1, m 4)",
}
BYZANTINE_SITE = "site-e"


def attack_faults(attack: str) -> tuple[FaultSpec, ...]:
    """``none``, or ``KIND:FACTOR`` at the Byzantine site in every round."""
    if attack == "none":
        return ()
    kind, factor = attack.split(":")
    return (FaultSpec(kind, sites=(BYZANTINE_SITE,), factor=float(factor)),)


def attack_label(attack: str) -> str:
    if attack == "none":
        return "fault-free"
    kind, factor = attack.split(":")
    return f"{kind.replace('_', ' ')} x{float(factor):g}"


def pooled_auc(evidence_path: Path) -> float:
    """The final global model's pooled test AUC."""
    return float(json.loads(evidence_path.read_text())["performance"]["pooled"]["auc"]["value"])


def run_case(
    scenario: Scenario, sites: list[Path], out: Path, strategy: str, attack: str
) -> tuple[float, float]:
    """One federation over fresh copies of ``sites``: its pooled AUC and wall time (s)."""
    case = derived(
        scenario,
        strategy=replace(scenario.strategy, name=strategy),
        faults=attack_faults(attack),
    )
    folder = out / f"{strategy}-{attack.replace(':', 'x')}"
    copies = fresh_site_copies(sites, folder / "sites")
    started = time.perf_counter()
    result = run_federation(case, copies, folder / "run", progress=lambda _: None)
    return pooled_auc(result.evidence), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default="fedavg,fedmedian,fedtrimmedavg,krum,multikrum")
    parser.add_argument("--attacks", default="none,sign_flip:5,scale:10")
    parser.add_argument("--rounds", type=int, help="rounds (default: the scenario's)")
    parser.add_argument("--out", type=Path, help="folder for the runs (default: temporary)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="medfed-bench-faults-"))
    strategies = args.strategies.split(",")
    attacks = args.attacks.split(",")

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    scenario = load_scenario(SCENARIO)
    if args.rounds:
        scenario = derived(scenario, federation=replace(scenario.federation, rounds=args.rounds))
    sites = make_sites(scenario, out / "made", say)
    results: dict[tuple[str, str], tuple[float, float]] = {}
    for strategy in strategies:
        for attack in attacks:
            results[strategy, attack] = run_case(scenario, sites, out, strategy, attack)
            auc, seconds = results[strategy, attack]
            say(f"{strategy}, {attack_label(attack)}: pooled AUC {auc:.3f} ({seconds:.0f} s)")

    federation = scenario.federation
    print(
        f"Run on {datetime.now(UTC).date()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; scenario {scenario.name} "
        f"({scenario.sites.count} sites x {scenario.sites.sizes[0]} cases, "
        f"{federation.model} model, {federation.rounds} rounds, epsilon "
        f"{scenario.privacy.target_epsilon:g}, data / training seed {scenario.seeds.data} / "
        f"{scenario.seeds.training}); Byzantine site "
        f"{BYZANTINE_SITE}, every round\n"
    )
    print("| strategy | " + " | ".join(attack_label(a) for a in attacks) + " | wall (s) |")
    print("| --- | " + " | ".join("---:" for _ in attacks) + " | ---: |")
    for strategy in strategies:
        cells = []
        clean = results.get((strategy, "none"))
        for attack in attacks:
            auc = results[strategy, attack][0]
            change = f" ({auc - clean[0]:+.3f})" if clean and attack != "none" else ""
            cells.append(f"{auc:.3f}{change}")
        wall = " / ".join(f"{results[strategy, a][1]:.0f}" for a in attacks)
        print(f"| {STRATEGY_NAMES.get(strategy, strategy)} | " + " | ".join(cells) + f" | {wall} |")


if __name__ == "__main__":
    main()
