"""Benchmark of `medfed demo`: wall time by phase, model quality, Flower's overhead.

Runs the demo (default: 4 sites, 5 rounds, seed 0) and prints a Markdown report for
docs/benchmarks.md:

- wall time by phase: phantoms, ingest, Flower runtime start-up (until every site has
  answered its profile query), baselines (pooled-centralized + local-only), federated
  training, validation (cross-site evaluation + evidence), and the rest (Ray shut-down);
- quality: the global model's pooled test AUC against the pooled-centralized baseline and
  the local-only models on sites they never saw;
- framework overhead per round: the round's wall time against the pure local compute it
  contains. Sites train and evaluate in parallel on one CPU each, so the compute a round
  cannot avoid is the makespan of the sites' measured training and evaluation times
  scheduled on the available workers (longest first); overhead = 1 - makespan / wall.

Usage: python benchmarks/bench_demo.py [--out DIR] [--rounds R] [--sites N] [--seed S]
(defaults: the demo's)
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from simulations.demo import DEMO_MARKER, DemoConfig, run_demo


def makespan(durations: list[float], workers: int) -> float:
    """Finish time of ``durations`` scheduled longest-first on ``workers`` parallel workers."""
    loads = [0.0] * max(workers, 1)
    for duration in sorted(durations, reverse=True):
        heapq.heapreplace(loads, loads[0] + duration)
    return max(loads)


def report(out: Path, workers: int) -> str:
    demo = json.loads((out / DEMO_MARKER).read_text())
    evidence: dict[str, Any] = json.loads((out / "run" / "evidence.json").read_text())
    stages = json.loads((out / "run" / "timings.json").read_text())
    timings = demo["timings_s"]
    runtime = timings["flower simulation runtime"]
    phases = {
        "phantoms": timings["phantoms"],
        "ingest": timings["ingest"],
        "Flower/Ray start-up": stages["discover"],
        "baselines (pooled-centralized + local-only)": timings["pooled-centralized baseline"]
        + stages["local-only baselines"],
        "federated training": stages["federated rounds"],
        "validation (cross-site evaluation + evidence)": stages["cross-site evaluation"]
        + stages["evidence"],
        "other (Ray shut-down, records)": runtime - sum(stages.values()),
    }
    lines = [
        f"Run on {datetime.now(UTC).date()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"config {demo['config']}",
        "",
        "| phase | wall time (s) |",
        "| --- | ---: |",
        *(f"| {name} | {seconds:.1f} |" for name, seconds in phases.items()),
        f"| **total** | **{timings['total']:.1f}** |",
        "",
    ]
    pooled = evidence["performance"]["pooled"]["auc"]
    centralized = evidence["baselines"]["pooled_centralized"]["auc"]
    lines += [
        "| quality (held-out test data) | value |",
        "| --- | ---: |",
        f"| global model, pooled AUC [95% CI] | {pooled['value']:.3f} "
        f"[{pooled['ci_low']:.3f}, {pooled['ci_high']:.3f}] |",
        f"| pooled-centralized baseline, pooled AUC | {centralized['value']:.3f} |",
        f"| global / pooled-centralized | {pooled['value'] / centralized['value']:.3f} |",
    ]
    for site, row in evidence["baselines"]["unseen_site_comparison"].items():
        lines.append(
            f"| local-only model of {site}, on the sites it never saw: its AUC vs the "
            f"global model's | {row['local_only_auc']:.3f} vs {row['global_auc']:.3f} |"
        )
    lines += [
        "",
        "| round | wall (s) | local compute makespan (s) | overhead |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for record in evidence["rounds"]:
        sites = record["sites"].values()
        compute = makespan([s["train_seconds"] for s in sites], workers) + makespan(
            [s["evaluate_seconds"] for s in sites], workers
        )
        overhead = 1 - compute / record["seconds"]
        lines.append(
            f"| {record['round']} | {record['seconds']:.2f} | {compute:.2f} | {overhead:.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="demo folder (default: a temporary one)")
    defaults = DemoConfig()
    parser.add_argument("--sites", type=int, default=defaults.sites)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="medfed-bench-"))
    config = DemoConfig(out=out, sites=args.sites, rounds=args.rounds, seed=args.seed)
    run_demo(config, progress=lambda line: print(line, file=sys.stderr))
    print(report(out, workers=os.cpu_count() or 1))


if __name__ == "__main__":
    main()
