"""Benchmark of scale: how a simulated federation's memory and round time grow with its sites.

The scenario simulations/scenarios/hundred-sites.toml (phantom hospitals of 20 cases, blob
model, DP-SGD at epsilon 8, FedAvg, 3 rounds, no baselines) is run with 10, 50 and 100
sites (``--sites``), each in a process of its own (``medfed``'s code, as
``medfed simulate --scenario`` runs it: the sites made and ingested, then the federation on
Flower's simulation runtime). While it runs, the memory of that process and of every process
it started (Ray's GCS, raylet and workers) is sampled every ``--interval`` seconds, as the
sum of their proportional set sizes (PSS: shared pages split among the processes sharing
them, so that torch's libraries, mapped by every worker, count once), with psutil.

Prints, as a Markdown table for docs/benchmarks.md, per site count: the time to make and
ingest the sites, the federation's wall time and its start-up (the ``discover`` phase of
``timings.json``: Ray started, its workers importing the ClientApp, every site's profile),
the median (and range) of the rounds' wall times (``rounds.jsonl``'s round summaries:
train, aggregate and evaluate), the peak memory while the sites were made
and while the federation ran, the driver's own peak (the ServerApp, which holds the
round's updates), and the most processes seen at once.

Usage: python benchmarks/bench_scale.py [--sites 10,50,100] [--rounds 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import psutil

SCENARIO = Path(__file__).resolve().parents[1] / "simulations" / "scenarios" / "hundred-sites.toml"
#: Written by the child once its sites are made: from then on, memory is the federation's.
FEDERATION_STARTED = "federation-started"
RESULT = "result.json"
MIB = 1024**2


@dataclass
class MemoryPeaks:
    """Peak memory (bytes) while the sites were made and while the federation ran; the
    driver's own peak PSS; the most processes in the tree at once."""

    making_sites: int = 0
    federation: int = 0
    driver: int = 0
    processes: int = 0


def run_one(n_sites: int, rounds: int, out: Path) -> None:
    """In the child: make ``n_sites`` sites of the scenario under ``out`` and run its
    federation for ``rounds`` rounds; write the timings to ``out/result.json``."""
    from simulations.scenario import derived, load_scenario
    from simulations.scenario_run import make_sites, run_federation

    base = load_scenario(SCENARIO)
    sites = replace(base.sites, sizes=(base.sites.sizes[0],) * n_sites)
    federation = replace(base.federation, rounds=rounds)
    scenario = derived(base, sites=sites, federation=federation)
    started = time.perf_counter()
    site_dirs = make_sites(scenario, out, progress=lambda _: None)
    making = time.perf_counter() - started
    (out / FEDERATION_STARTED).touch()
    run_dir = out / "run"
    started = time.perf_counter()
    run_federation(scenario, site_dirs, run_dir, progress=lambda _: None)
    total = time.perf_counter() - started
    records = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    summaries = [r for r in records if r.get("phase") == "summary"]
    trained = [r for r in records if r.get("phase") == "train" and r.get("outcome") == "accepted"]
    phases = json.loads((run_dir / "timings.json").read_text())
    result = {
        "sites": n_sites,
        "cases": sum(sites.sizes),
        "making_sites_s": making,
        "federation_s": total,
        "startup_s": phases["discover"],
        "round_s": [r["seconds"] for r in summaries],
        "updates_accepted": len(trained),
    }
    (out / RESULT).write_text(json.dumps(result), encoding="utf-8")


def _pss(process: psutil.Process) -> int:
    """A process's proportional set size (its RSS where PSS cannot be read); 0 once gone."""
    try:
        info = process.memory_full_info()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return 0
    except psutil.AccessDenied:
        try:
            return int(process.memory_info().rss)
        except psutil.Error:
            return 0
    return int(getattr(info, "pss", info.rss))


def measure(n_sites: int, rounds: int, out: Path, interval: float) -> tuple[dict, MemoryPeaks]:
    """Run `run_one` in a child process and sample its process tree's memory until it ends."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, __file__, "--one", str(n_sites), "--rounds", str(rounds)]
    child = subprocess.Popen([*command, "--out", str(out)])
    root = psutil.Process(child.pid)
    peaks = MemoryPeaks()
    while child.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        total = sum(_pss(p) for p in tree)
        phase = "federation" if (out / FEDERATION_STARTED).exists() else "making_sites"
        setattr(peaks, phase, max(getattr(peaks, phase), total))
        peaks.driver = max(peaks.driver, _pss(root))
        peaks.processes = max(peaks.processes, len(tree))
        time.sleep(interval)
    if child.wait() != 0:
        raise RuntimeError(f"{n_sites} sites: the run failed (exit status {child.returncode})")
    return json.loads((out / RESULT).read_text()), peaks


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def report(rows: list[tuple[dict, MemoryPeaks]], rounds: int) -> str:
    """The Markdown table of the results."""
    lines = [
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 1024**3:.0f} GiB, "
        f"load average {os.getloadavg()[0]:.1f} at the end; {rounds} rounds each",
        "",
        "| sites | cases | making sites (s) | federation (s) | of which start-up (s) "
        "| a round (s, median and range) "
        "| peak memory, making sites (MiB) | peak memory, federation (MiB) "
        "| driver's peak (MiB) | processes |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result, peaks in rows:
        accepted = result["updates_accepted"]
        assert accepted == result["sites"] * rounds, f"only {accepted} updates aggregated"
        lines.append(
            f"| {result['sites']} | {result['cases']} | {result['making_sites_s']:.0f} "
            f"| {result['federation_s']:.0f} | {result['startup_s']:.0f} "
            f"| {_spread(result['round_s'])} | {peaks.making_sites / MIB:,.0f} "
            f"| {peaks.federation / MIB:,.0f} | {peaks.driver / MIB:,.0f} | {peaks.processes} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", default="10,50,100", help="site counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="where the runs go (default: a temp folder)")
    parser.add_argument("--interval", type=float, default=0.5, help="sampling period (s)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        run_one(args.one, args.rounds, args.out)
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rows = []
    for n_sites in (int(n) for n in args.sites.split(",")):
        rows.append(measure(n_sites, args.rounds, out / f"{n_sites}-sites", args.interval))
        print(f"{n_sites} sites done", file=sys.stderr)
    print(report(rows, args.rounds))


if __name__ == "__main__":
    main()
