"""Benchmark of the dashboard: how long each page takes to load and draw for a large run.

1. A run of 20 sites and 100 rounds is synthesised as the coordinator records one
   (run.json, site-aggregates/ with score histograms per model, split and stratum,
   rounds.jsonl with DP-SGD releases accounted by Opacus's RDP accountant, a dropout and a
   privacy refusal), and its evidence.json is written by `validation.evidence.write_evidence`
   (checked against validation/evidence.schema.json before it is written).
2. Server side: each page run by Streamlit's AppTest, first with the run not yet loaded
   (reading and parsing evidence.json included), then again (loaded).
3. In a browser: ``medfed dashboard`` serving the run, each page opened in a fresh headless
   Chromium (Streamlit's frontend loaded from scratch) until it is drawn (its charts drawn,
   no element still a loading placeholder: `dashboards.browser_check`), opened again in a
   browser that opened it before (its cache warm: a reload, or a visit after the first),
   and reached through the sidebar from the page before (what a user waits for).

Prints a Markdown report for docs/benchmarks.md. With ``--runs``, benchmarks those run
directories instead of a synthesised one; with ``--screenshots DIR``, saves a screenshot of
each page there (docs/dashboard/ holds the demo's).

Browser times are the median (and range) of ``--repeat`` loads of each page, the pages in
turn; the first page opened after the dashboard started is timed apart (the server's first
run). The load average is printed with them: the machine may be busy with other work.

Usage: python benchmarks/bench_dashboard.py [--sites 20] [--rounds 100] [--out DIR]
       [--runs RUN ...] [--screenshots DIR] [--no-browser] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from dashboards.browser_check import check_page, navigation_expression, page_url
from dashboards.pages import PAGES
from site_client.privacy import epsilon_spent
from task.wire import histogram_key
from validation.evidence import validate_evidence, write_evidence
from validation.metrics import ScoreHistogram
from validation.report.browser import browse

SCANNERS = (
    ("GE MEDICAL SYSTEMS", "Revolution CT"),
    ("GE MEDICAL SYSTEMS", "Optima CT660"),
    ("SIEMENS", "SOMATOM Force"),
    ("SIEMENS", "SOMATOM Definition Edge"),
    ("Philips", "Ingenuity CT"),
    ("Philips", "IQon Spectral CT"),
    ("CANON_MEC", "Aquilion ONE"),
    ("CANON_MEC", "Aquilion Prime SP"),
)
AGE_BANDS = ("30-39", "40-49", "50-59", "60-69", "70-79")
MIN_CELL_SIZE = 5
TARGET_EPSILON = 8.0
DELTA = 1e-4
#: Sites' DP-SGD sample rates (batch over training cases), few so that the noise to reach
#: the target is found once per rate.
SAMPLE_RATES = (0.25, 0.5, 1.0)


# --- 1. a synthesised run ------------------------------------------------------------------


def _histograms(
    logits: np.ndarray, labels: np.ndarray, split: str, stratum: str
) -> dict[str, list[int]]:
    hist = ScoreHistogram.from_logits(logits, labels)
    return {
        histogram_key(split, stratum, 0): hist.negatives.tolist(),
        histogram_key(split, stratum, 1): hist.positives.tolist(),
    }


@cache
def _noise_for(sample_rate: float, n_rounds: int) -> float:
    """The noise multiplier at which a site reaches `TARGET_EPSILON` (at `DELTA`) after its
    local-only model and ``n_rounds`` rounds of one epoch (bisection)."""
    steps = math.ceil(1 / sample_rate)
    releases = [(3 * steps)] + [steps] * n_rounds
    low, high = 0.5, 8.0
    for _ in range(10):
        mid = (low + high) / 2
        spent = epsilon_spent([(mid, sample_rate, s) for s in releases], DELTA, "rdp")
        low, high = (mid, high) if spent > TARGET_EPSILON else (low, mid)
    return high


def synthesise_run(run_dir: Path, n_sites: int, n_rounds: int, seed: int = 0) -> Path:
    """Write a run of ``n_sites`` sites and ``n_rounds`` rounds into ``run_dir`` and its
    evidence.json; returns the evidence's path."""
    rng = np.random.default_rng(seed)
    sites = [f"site-{i:02d}" for i in range(1, n_sites + 1)]
    models = ["global", *(f"local-{s}" for s in sites), "pooled-centralized"]
    aggregates: dict[str, dict[str, Any]] = {}
    site_records = []
    rounds: list[dict[str, Any]] = []
    dropout = {sites[min(6, n_sites - 1)]: range(n_rounds // 2, n_rounds // 2 + 3)}
    refuser = sites[min(12, n_sites - 1)]
    for index, site in enumerate(sites):
        n = int(rng.integers(80, 400))
        n_test = int(n * 0.3)
        labels = (rng.random(n) < rng.uniform(0.15, 0.5)).astype(int)
        own = rng.choice(len(SCANNERS), size=int(rng.integers(1, 4)), replace=False)
        scanner = rng.choice(own, size=n)
        sex = rng.choice(np.array(["F", "M"]), size=n)
        age = rng.choice(np.array(AGE_BANDS), size=n)
        test = np.arange(n) >= n - n_test
        shift = rng.normal(0, 0.4)

        def logits(separation: float, labels: np.ndarray = labels, shift: float = shift) -> Any:
            return rng.normal(shift, 1.0, len(labels)) + separation * labels - 1.0

        strata = {"site=all": np.ones(n, bool)}
        for k in own:
            manufacturer, model = SCANNERS[k]
            strata[f"scanner={manufacturer} {model}"] = scanner == k
            strata.setdefault(f"manufacturer={manufacturer}", np.zeros(n, bool))
            strata[f"manufacturer={manufacturer}"] |= scanner == k
        for column, values in (("sex", sex), ("age", age)):
            for value in np.unique(values):
                strata[f"subgroup:{column}={value}"] = values == value
        suppressed = [  # as a site withholds strata below its minimum cell size
            f"test|{name}"
            for name, mask in strata.items()
            if name != "site=all" and (mask & test).sum() < MIN_CELL_SIZE
        ]
        histograms: dict[str, dict[str, list[int]]] = {}
        for model in models:
            separation = {"global": 2.6, "pooled-centralized": 2.7}.get(
                model, 2.2 if model == f"local-{site}" else 1.4
            )
            scores = logits(separation)
            kept = strata if model == "global" else {"site=all": strata["site=all"]}
            hists: dict[str, list[int]] = {}
            for name, mask in kept.items():
                if f"test|{name}" not in suppressed:
                    hists |= _histograms(scores[mask & test], labels[mask & test], "test", name)
            if model == "global":
                hists |= _histograms(scores[~test], labels[~test], "train", "site=all")
            histograms[model] = hists
        aggregates[site] = {"site": site, "models": histograms, "suppressed": suppressed}
        site_records.append(
            {
                "id": site,
                "n_train": n - n_test,
                "n_test": n_test,
                "n_train_positive": int(labels[~test].sum()),
                "n_test_positive": int(labels[test].sum()),
                "min_cell_size": MIN_CELL_SIZE,
                "scanners": {
                    f"{SCANNERS[k][0]} {SCANNERS[k][1]}": {
                        "manufacturer": SCANNERS[k][0],
                        "model": SCANNERS[k][1],
                        "n_train": int(((scanner == k) & ~test).sum()),
                        "n_test": int(((scanner == k) & test).sum()),
                    }
                    for k in own
                },
            }
        )
        rounds += _site_rounds(site, n - n_test, n_test, n_rounds, index, rng, dropout, refuser)
    for r in range(1, n_rounds + 1):
        progress = 1 - math.exp(-r / 15)
        rounds.append(
            {
                "phase": "summary",
                "round": r,
                "seconds": float(rng.uniform(8, 12)),
                "pooled-auc": 0.6 + 0.3 * progress,
                "test-loss": 0.69 - 0.25 * progress,
            }
        )
    run = _run_record(site_records, models, n_rounds, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "site-aggregates").mkdir(exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps(run))
    for site, aggregate in aggregates.items():
        (run_dir / "site-aggregates" / f"{site}.json").write_text(json.dumps(aggregate))
    rounds.sort(key=lambda e: (e["round"], e["phase"] == "summary"))
    (run_dir / "rounds.jsonl").write_text("\n".join(json.dumps(e) for e in rounds) + "\n")
    evidence = write_evidence(run_dir)
    validate_evidence(json.loads(evidence.read_text()))
    return evidence


def _site_rounds(
    site: str,
    n_train: int,
    n_test: int,
    n_rounds: int,
    index: int,
    rng: np.random.Generator,
    dropout: dict[str, range],
    refuser: str,
) -> list[dict[str, Any]]:
    """A site's records: its local-only model (round 0), then train and evaluate in each
    round; DP-SGD epsilon accounted after every release."""
    sample_rate = SAMPLE_RATES[index % len(SAMPLE_RATES)]
    steps_per_epoch = math.ceil(1 / sample_rate)
    planned = [3 * steps_per_epoch] + [steps_per_epoch] * n_rounds
    noise = _noise_for(sample_rate, n_rounds)
    released: list[tuple[float, float, int]] = []
    entries = []
    for r, steps in enumerate(planned):
        if site in dropout and r in dropout[site]:
            for phase in ("train", "evaluate"):
                entries.append(
                    {
                        "round": r,
                        "phase": phase,
                        "site": site,
                        "error": "site offline: connection reset by peer",
                    }
                )
            continue
        if site == refuser and r > n_rounds - 5:
            entries.append(
                {
                    "round": r,
                    "phase": "train",
                    "site": site,
                    "refused": "privacy budget: this release would exceed the site's ceiling",
                }
            )
        else:
            released.append((noise, sample_rate, steps))
            epsilon = epsilon_spent(released, DELTA, "rdp")
            entries.append(
                {
                    "round": r,
                    "phase": "local-only" if r == 0 else "train",
                    "site": site,
                    "metrics": {
                        "dp-delta": DELTA,
                        "dp-epsilon": epsilon,
                        "dp-epsilon-total": epsilon,
                        "dp-max-grad-norm": 1.0,
                        "dp-noise-multiplier": noise,
                        "dp-sample-rate": sample_rate,
                        "num-examples": n_train,
                        "steps": steps,
                        "train-loss": 0.69 * math.exp(-r / 40) + 0.2 + rng.normal(0, 0.01),
                        "train-seconds": float(rng.uniform(0.5, 2.0)),
                    },
                }
            )
        if r:
            entries.append(
                {
                    "round": r,
                    "phase": "evaluate",
                    "site": site,
                    "metrics": {
                        "auc": float(
                            min(
                                1.0,
                                0.6
                                + 0.3 * (1 - math.exp(-r / 15))
                                + rng.normal(0, 0.02)
                                + 0.002 * index,
                            )
                        ),
                        "evaluate-seconds": float(rng.uniform(0.1, 0.5)),
                        "n": n_test,
                        "test-loss": 0.69 * math.exp(-r / 50) + 0.25 + rng.normal(0, 0.01),
                    },
                }
            )
    return entries


def _run_record(
    sites: list[dict[str, Any]], models: list[str], n_rounds: int, seed: int
) -> dict[str, Any]:
    final = f"global-round-{n_rounds:03d}"
    checkpoints = [
        {
            "name": f"global-round-{r:03d}",
            "round": r,
            "file": f"checkpoints/global-round-{r:03d}.pt",
            "sha256": f"{r:064x}",
        }
        for r in range(n_rounds + 1)
    ] + [
        {"name": m, "round": None, "file": f"checkpoints/{m}.pt", "sha256": f"{i + 7:064x}"}
        for i, m in enumerate(models[1:])
    ]
    return {
        "run": {
            "id": "run-bench-dashboard",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "code_version": "benchmark",
            "strategy": {"name": "fedavg", "fraction_train": 1.0, "min_sites": 2},
            "rounds": n_rounds,
            "seed": seed,
            "training": {"local_epochs": 1, "learning_rate": 0.1},
            "privacy": {
                "mode": "local",
                "target_epsilon": TARGET_EPSILON,
                "noise_multiplier": 0.0,
                "max_grad_norm": 1.0,
                "clipping_norm": 1.0,
                "accountant": "rdp",
                "delta": DELTA,
                "guarantee": "record-level (epsilon, delta)-DP of each site's released "
                "models, DP-SGD at the site (Opacus), accounted by the site against its "
                "own ceiling",
            },
            "data": {
                "description": f"synthesised by benchmarks/bench_dashboard.py: {len(sites)} "
                f"sites, {n_rounds} rounds, score histograms of simulated scores",
                "simulated": True,
            },
            "holdout_sites": [],
            "evaluation_only": False,
            "operating_threshold": None,
        },
        "model": {
            "architecture": "synthetic",
            "config": {"architecture": "blob"},
            "parameters": 257,
            "final_checkpoint": final,
        },
        "sites": sites,
        "checkpoints": checkpoints,
        "models": {m: (final if m == "global" else m) for m in models},
        "timings_s": {"federated rounds": 1000.0, "cross-site evaluation": 60.0},
    }


# --- 2. server side: AppTest ---------------------------------------------------------------


def apptest_times(runs: Sequence[Path]) -> dict[str, tuple[float, float]]:
    """Per page: seconds of its first AppTest run with the runs not yet loaded, then of a
    second run (loaded)."""
    from streamlit.testing.v1 import AppTest

    from dashboards import ui
    from dashboards.launch import APP

    argv = sys.argv
    sys.argv = [str(APP), *map(str, runs)]
    times = {}
    try:
        for page in PAGES:
            app = AppTest.from_file(str(APP), default_timeout=120)
            app.run()  # registers the pages (st.navigation) before switching
            app.switch_page(page.script)
            ui._load_cached.clear()
            started = time.perf_counter()
            app.run()
            cold = time.perf_counter() - started
            if app.exception:
                raise RuntimeError(f"{page.title}: {app.exception[0].value}")
            started = time.perf_counter()
            app.run()
            times[page.title] = (cold, time.perf_counter() - started)
    finally:
        sys.argv = argv
    return times


# --- 3. in a browser -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _dashboard(runs: Sequence[Path]) -> Iterator[str]:
    """``medfed dashboard`` serving ``runs``: its address, while in the block."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "medfed", "dashboard", *map(str, runs), "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline() if server.stdout else ""
        if not line.startswith("dashboard:"):
            raise RuntimeError(f"medfed dashboard did not start: {line!r}")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def browser_times(
    runs: Sequence[Path], screenshots: Path | None, repeat: int = 1
) -> tuple[dict[str, tuple[list[float], list[float], list[float], int]], float]:
    """Per page: seconds until it was drawn when opened in a fresh browser, when opened
    again in a browser that had opened it before (its cache warm), and when reached through
    the sidebar from the page before (``repeat`` times each, the pages in turn); its charts.
    Also the seconds until the first page was drawn on the server just started."""
    if screenshots is not None:
        screenshots.mkdir(parents=True, exist_ok=True)
    times: dict[str, tuple[list[float], list[float], list[float], int]] = {}
    with _dashboard(runs) as base:
        first = check_page(base, PAGES[0]).log.ready_s
        for _ in range(repeat):
            for i, page in enumerate(PAGES):
                shot = screenshots / f"{page.url_path}.png" if screenshots else None
                check = check_page(base, page, shot)
                if check.errors or check.foreign_requests or check.log.figures < 0:
                    problems = check.errors + check.foreign_requests or ["not drawn in time"]
                    raise RuntimeError(f"{page.title}: {problems}")
                again = check_page(base, page, warm=True)
                before = PAGES[i - 1]
                hop = browse(page_url(base, before), navigation_expression(before, page))
                fresh, warm, hops, _ = times.setdefault(page.title, ([], [], [], check.log.figures))
                fresh.append(check.log.ready_s)
                warm.append(again.log.ready_s)
                hops.append(hop.ready_value["ms"] / 1000)
    return times, first


def _spread(values: Sequence[float]) -> str:
    """ "median (min-max)" of ``values``, or the one value."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def frontend_time() -> float:
    """Seconds until a page without charts (a run directory without evidence: a message)
    is drawn in a fresh browser: Streamlit's frontend itself, for comparison."""
    with tempfile.TemporaryDirectory() as empty, _dashboard([Path(empty)]) as base:
        return min(check_page(base, PAGES[0]).log.ready_s for _ in range(2))


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--out", type=Path, help="where to write the synthesised run")
    parser.add_argument("--runs", type=Path, nargs="+", help="benchmark these runs instead")
    parser.add_argument("--screenshots", type=Path, help="save a screenshot of each page here")
    parser.add_argument("--no-browser", action="store_true", help="AppTest times only")
    parser.add_argument(
        "--repeat", type=int, default=3, help="browser loads per page (median and range)"
    )
    args = parser.parse_args()

    if args.runs:
        runs = list(args.runs)
        what = ", ".join(map(str, runs))
    else:
        out = args.out or Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
        started = time.perf_counter()
        evidence = synthesise_run(out / "run", args.sites, args.rounds)
        _say(f"synthesised {evidence} in {time.perf_counter() - started:.0f} s")
        runs = [evidence.parent]
        size = evidence.stat().st_size / 1e6
        what = (
            f"a synthesised run of {args.sites} sites and {args.rounds} rounds (evidence.json "
            f"{size:.1f} MB, valid against its schema; rounds.jsonl "
            f"{sum(1 for _ in (runs[0] / 'rounds.jsonl').open())} records)"
        )
    server = apptest_times(runs)
    load_start = os.getloadavg()[0]
    browser, first = (
        ({}, math.nan) if args.no_browser else browser_times(runs, args.screenshots, args.repeat)
    )
    frontend = math.nan if args.no_browser else frontend_time()
    print(
        f"Run on {datetime.now(UTC).date()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, load average (1 min) {load_start:.1f} before the "
        f"browser runs and {os.getloadavg()[0]:.1f} after: {what}.\n"
    )
    print(
        "| page | AppTest, not loaded (s) | AppTest, loaded (s) | browser, fresh (s) | "
        "browser, cache warm (s) | browser, from the sidebar (s) | charts |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for page in PAGES:
        cold, loaded = server[page.title]
        fresh, warm, hops, charts = browser.get(page.title, ([], [], [], 0))
        print(
            f"| {page.title} | {cold:.2f} | {loaded:.2f} | {_spread(fresh)} | {_spread(warm)} "
            f"| {_spread(hops)} | {charts} |"
        )
    print(
        f"\nBrowser times: median (fastest-slowest) of {args.repeat} loads each. The first "
        f"page opened after the dashboard started was drawn in {first:.2f} s. For "
        f"comparison, a page without charts (a run directory without evidence) is drawn in "
        f"{frontend:.2f} s in a fresh browser: Streamlit's frontend itself."
    )


if __name__ == "__main__":
    main()
