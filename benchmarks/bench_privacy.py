"""Benchmark of differential privacy: what DP-SGD costs in model quality and in time.

1. Quality: the demo's phantom federation (4 sites, FedAvg, the demo's rounds and epochs,
   seed 0) trained with DP-SGD at every site at epsilon 1, 3 and 8 and without DP; the
   global model's pooled test AUC, the pooled-centralized baseline's (trained with DP-SGD at
   the same epsilon) and each site's reported and independently recomputed epsilon.
2. Speed: the time of one DP-SGD step (per-sample gradients, clipping, noise) over one plain
   step, for each model with its recipe's batch on the largest site's training split, for
   each of Opacus's per-sample gradient modes that the model supports.

Prints a Markdown report for docs/benchmarks.md.

Usage: python benchmarks/bench_privacy.py [--epsilons 1,3,8,inf] [--steps N] [--out DIR]
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

from simulations.demo import DemoConfig, run_demo
from site_client.dataset import SiteData, load_split
from site_client.policy import PrivacyPolicy
from site_client.privacy import ReleaseRequest, plan_release
from site_client.store import SiteStore
from site_client.training import train_model
from task.model import ARCHITECTURES, ModelConfig, build_model
from task.privacy import PrivacyConfig
from task.training import TrainingConfig, recipe

GRAD_SAMPLE_MODES = ("hooks", "functorch", "ew")


def quality(out: Path, epsilons: list[float], progress: Any) -> tuple[list[str], Path]:
    """Run the demo at each epsilon; a Markdown table, and the sites of the last run."""
    lines = [
        "| epsilon per site | global pooled AUC [95% CI] | pooled-centralized AUC | "
        "global / non-private global | sites' reported epsilon (independent RDP, PLD) | "
        "wall (s) |",
        "| ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    results = []
    for epsilon in epsilons:
        folder = out / f"epsilon-{epsilon:g}"
        started = time.perf_counter()
        evidence_path = run_demo(
            DemoConfig(out=folder, privacy=PrivacyConfig.for_epsilon(epsilon)), progress
        )
        seconds = time.perf_counter() - started
        results.append((epsilon, json.loads(evidence_path.read_text()), seconds))
    reference = next(
        (e["performance"]["pooled"]["auc"]["value"] for eps, e, _ in results if math.isinf(eps)),
        None,
    )
    for epsilon, evidence, seconds in results:
        auc = evidence["performance"]["pooled"]["auc"]
        centralized = evidence["baselines"]["pooled_centralized"]["auc"]["value"]
        ratio = f"{auc['value'] / reference:.3f}" if reference else "-"
        sites = []
        for site in evidence["sites"]:
            privacy = site["privacy"]
            if privacy["epsilon"] is None:
                continue
            check = privacy["independent_check"]
            sites.append(
                f"{site['id']} {privacy['epsilon']:.2f} "
                f"({check['rdp_epsilon']:.2f}, {check['pld_epsilon']:.2f})"
            )
        lines.append(
            f"| {epsilon:g} | {auc['value']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}] | "
            f"{centralized:.3f} | {ratio} | {'; '.join(sites) or '-'} | {seconds:.0f} |"
        )
    return lines, out / f"epsilon-{epsilons[-1]:g}" / "sites"


def step_times(site_dir: Path, steps: int) -> list[str]:
    """Mean time per step with and without DP-SGD, per model and grad-sample mode, each
    model with its own recipe (batch size) and augmentation off."""
    store = SiteStore.open(site_dir)
    lines = [
        f"Site {store.site_id}; each figure the mean over about {steps} steps.",
        "",
        "| model, batch | training | ms per step | over plain |",
        "| --- | --- | ---: | ---: |",
    ]
    for architecture in ARCHITECTURES:
        model_config = ModelConfig(architecture=architecture)
        training = replace(recipe(architecture), augment=False)
        data = load_split(store, "train", model_config.image_size)
        planned = plan_release(
            PrivacyPolicy(),
            [],
            PrivacyConfig(),
            ReleaseRequest("bench", 1, "federated", 0, 1, 40, len(data), training.batch_size),
            store.secret,
        )
        epochs = max(1, round(steps / planned.entry.steps))

        setting = (model_config, data, training, epochs)
        plain = _seconds_per_step(*setting)
        label = f"{architecture}, {training.batch_size}"
        lines.append(f"| {label} | plain (Adam) | {plain * 1000:.1f} | 1.00 |")
        for mode in GRAD_SAMPLE_MODES:
            try:
                dp = _seconds_per_step(*setting, dpsgd=planned.dpsgd, grad_sample_mode=mode)
            except Exception as exc:  # a mode the model's layers do not support
                reason = str(exc).splitlines()[0][:80]
                lines.append(f"| {label} | DP-SGD, {mode} | not supported: {reason} | |")
                continue
            lines.append(f"| {label} | DP-SGD, {mode} | {dp * 1000:.1f} | {dp / plain:.2f} |")
    return lines


def _seconds_per_step(
    model_config: ModelConfig, data: SiteData, training: TrainingConfig, epochs: int, **kwargs: Any
) -> float:
    model = build_model(model_config, seed=0)
    started = time.perf_counter()
    stats = train_model(model, data, training, seed=0, epochs=epochs, **kwargs)
    return (time.perf_counter() - started) / stats.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", default="1,3,8,inf")
    parser.add_argument("--steps", type=int, default=200, help="steps per timing")
    parser.add_argument("--out", type=Path, help="folder for the runs (default: temporary)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="medfed-bench-privacy-"))
    epsilons = [float(e) for e in args.epsilons.split(",")]

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    table, sites = quality(out, epsilons, say)
    largest = max(sites.iterdir(), key=lambda d: len(list((d / "store" / "cases").iterdir())))
    print(
        f"Run on {datetime.now(UTC).date()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; demo defaults ({DemoConfig().model} model, "
        f"{DemoConfig().rounds} rounds, its recipe {recipe(DemoConfig().model)}, seed 0)\n"
    )
    print("\n".join(table))
    print()
    print("\n".join(step_times(largest, args.steps)))


if __name__ == "__main__":
    main()
