"""Benchmark: one task on Flower's deployment runtime against the same task simulated.

The same phantom federation (3 sites, their stores ingested twice so that each runtime has
its own privacy ledgers) runs twice with the same settings:

- deployment: `medfed consortium init`, `medfed coordinator start` (TLS, SuperNode
  authentication), three `medfed site join` processes and `medfed run`, all on 127.0.0.1;
- simulation: `medfed simulate` (Flower's simulation runtime on Ray).

It prints a Markdown report for docs/benchmarks.md: the wall time of each federated round
and of each stage, and the bytes sent to and received from each site per round, counted from
``RUN/wire.jsonl`` (each message's serialized objects as Flower transfers them; no HTTP or
TLS framing), with Flower's own per-run byte totals for the deployment as a cross-check.

Usage: python benchmarks/bench_deployment.py [--rounds R] [--cases N] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.consortium import init_consortium
from simulations.phantoms import write_phantom_federation
from site_client.approval import approve
from site_client.ingest import ingest_site
from site_client.store import SiteStore
from task.app_bundle import build_app_bundle

SITES = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _medfed(*args: object, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "medfed", *map(str, args)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for(text: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise RuntimeError(f"{log}: no {text!r} after {timeout:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def make_sites(root: Path, cases: int, copy: str) -> list[Path]:
    """Phantom site stores under ``root/copy`` (the same phantoms for every copy)."""
    phantoms = root / "phantoms"
    if not phantoms.exists():
        write_phantom_federation(phantoms, SITES, cases_per_site=cases, seed=11)
    stores = []
    for phantom in sorted(p for p in phantoms.iterdir() if p.is_dir()):
        store = SiteStore.create(root / copy / phantom.name)
        ingest_site(store, phantom / "dicom", phantom / "labels.csv", seed=11)
        stores.append(store.root)
    return stores


def run_deployment(root: Path, stores: list[Path], task: list[str]) -> tuple[Path, float, str]:
    """The task on a consortium of ``stores``; the run directory, wall time (s) of
    `medfed run` and its last line (Flower's byte totals)."""
    site_ids = [SiteStore.open(s).site_id for s in stores]
    consortium = init_consortium(root / "consortium", site_ids, "127.0.0.1").root
    port = _free_port()
    logs = root / "logs"
    logs.mkdir()
    processes = []
    try:
        processes.append(
            _medfed(
                "coordinator",
                "start",
                "--consortium",
                consortium,
                "--port",
                port,
                "--host",
                "127.0.0.1",
                log=logs / "coordinator.log",
            )
        )
        _wait_for("newly registered", logs / "coordinator.log", 120)
        for site, store in zip(site_ids, stores, strict=True):
            approve(store, build_app_bundle())
            processes.append(
                _medfed(
                    "site",
                    "join",
                    "--kit",
                    consortium / "kits" / site,
                    "--site-dir",
                    store,
                    "--coordinator",
                    f"127.0.0.1:{port}",
                    "--local-port",
                    _free_port(),
                    log=logs / f"{site}.log",
                )
            )
        out = root / "run"
        started = time.perf_counter()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "medfed",
                "run",
                "--consortium",
                str(consortium),
                "--out",
                str(out),
                "--round-timeout",
                "300",
                *task,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"medfed run failed: {result.stderr[-2000:]}")
        totals = next(
            (line for line in result.stderr.splitlines() if "bytes" in line and "sent" in line), ""
        )
        return out, seconds, totals
    finally:
        for process in reversed(processes):
            _stop(process)


def run_simulation(root: Path, stores: list[Path], task: list[str]) -> tuple[Path, float]:
    """The task simulated on ``stores``; the run directory and wall time (s)."""
    out = root / "run"
    sites = [arg for store in stores for arg in ("--site-dir", str(store))]
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "medfed",
            "simulate",
            *sites,
            "--out",
            str(out),
            "--no-pooled-baseline",
            *task,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"medfed simulate failed: {result.stderr[-2000:]}")
    return out, time.perf_counter() - started


def round_seconds(run: Path) -> dict[int, float]:
    """Wall time (s) of each federated round, from the run's rounds.jsonl."""
    entries = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    return {e["round"]: e["seconds"] for e in entries if e["phase"] == "summary"}


def bytes_per_site(run: Path) -> dict[tuple[str, str], list[int]]:
    """(site, direction) -> bytes of each federated round (train and evaluate messages),
    from the run's wire.jsonl."""
    per_round: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for line in (run / "wire.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["stage"].startswith("round ") and entry.get("site"):
            round_ = entry["stage"].split()[1]
            per_round[(entry["site"], entry["direction"])][round_] += entry["bytes"]
    return {key: list(rounds.values()) for key, rounds in sorted(per_round.items())}


def report(runs: dict[str, tuple[Path, float]], totals: str, task: list[str]) -> str:
    lines = [
        f"Run on {datetime.now(UTC).date()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; {SITES} phantom sites; task `{' '.join(task)}`",
        "",
        "| | " + " | ".join(runs) + " |",
        "| --- |" + " ---: |" * len(runs),
    ]
    seconds = {name: round_seconds(run) for name, (run, _) in runs.items()}
    for round_ in sorted(next(iter(seconds.values()))):
        lines.append(
            f"| round {round_} wall time (s) | "
            + " | ".join(f"{s.get(round_, float('nan')):.1f}" for s in seconds.values())
            + " |"
        )
    stages: dict[str, dict[str, Any]] = {
        name: json.loads((run / "timings.json").read_text()) for name, (run, _) in runs.items()
    }
    for stage in next(iter(stages.values())):
        lines.append(
            f"| stage: {stage} (s) | "
            + " | ".join(f"{t.get(stage, float('nan')):.1f}" for t in stages.values())
            + " |"
        )
    lines.append("| whole command (s) | " + " | ".join(f"{s:.0f}" for _, s in runs.values()) + " |")
    lines += ["", "| bytes per round (mean), site and direction | " + " | ".join(runs) + " |"]
    lines.append("| --- |" + " ---: |" * len(runs))
    counts = {name: bytes_per_site(run) for name, (run, _) in runs.items()}
    for key in next(iter(counts.values())):
        site, direction = key
        cells = []
        for per_site in counts.values():
            values = per_site.get(key, [])
            cells.append(f"{sum(values) / len(values):,.0f}" if values else "n/a")
        what = "to site" if direction == "sent" else "from site"
        lines.append(f"| {site}, {what} | " + " | ".join(cells) + " |")
    if totals:
        lines += ["", f"Flower's totals for the deployment run: {totals.strip()}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", type=int, default=60, help="cases per site")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temp dir)")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="bench-deployment-"))
    root.mkdir(parents=True, exist_ok=True)
    task = ["--rounds", str(args.rounds), "--seed", "0", "--simulated-data"]
    try:
        simulated = run_simulation(root / "simulation", make_sites(root, args.cases, "sim"), task)
        deployed, seconds, totals = run_deployment(
            root / "deployment", make_sites(root, args.cases, "dep"), task
        )
        print(report({"deployment": (deployed, seconds), "simulation": simulated}, totals, task))
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
