"""Benchmark of the model zoo (issue 8): size, speed and quality of every model, float and int8.

On the demo's phantom hospitals (4 sites, seed 0), for each model of
`task.architectures.MODEL_ZOO` that classifies:

1. Quality: a federation (FedAvg, the demo's 10 rounds, the model's recipe, no baselines)
   without DP and then, for the models DP-SGD can train, with DP-SGD at epsilon 8 per site:
   the global model's pooled test AUC [95% CI] from its evidence, and the run's wall time.
2. int8: the non-DP run's final model quantized at the largest site (`medfed quantize`'s
   `write_int8_model`, calibrated on that site's training images); the AUC of the float and
   of the int8 model on the pooled test split of all sites (scored here, with every site's
   data: a benchmark may), and the sizes of both files.
3. Speed: per-case CPU inference latency (batch 1, one torch thread as each site process
   has in the simulation, 10 warm-up cases excluded; median and 95th percentile over the
   pooled test cases) of the float model as medfed scores (eager), as TorchScript, and of the
   int8 TorchScript file; training time per epoch on the largest site's training split with
   the recipe's batch, plain and with DP-SGD.

With ``--task segmentation`` the same for the segmentation models (the U-Net): quality is
the pooled mean Dice [95% CI] and the median HD95 from the run's evidence; there is no int8
version of a segmentation model (`medfed quantize` refuses it), so speed is the float
model's, eager and as TorchScript.

Prints a Markdown report for docs/benchmarks.md, with the machine, date and load (each
model's rows also go to stderr as they are measured).

Usage: python benchmarks/bench_models.py [--task classification|segmentation]
       [--models blob,cnn,...] [--rounds R] [--no-dp] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from server.server_app import DataProvenance, FederationConfig
from simulations.demo import DemoConfig, make_phantom_sites
from simulations.federation import run_simulated_federation
from site_client.dataset import SiteData, concatenate, load_split
from site_client.privacy import DPSGD, poisson_sampling
from site_client.quantization import FinalModel, load_int8, trace, write_int8_model
from site_client.store import SiteStore
from site_client.training import predict_logits, train_model
from task.architectures import CLASSIFICATION, MODEL_ZOO, SEGMENTATION, models_for
from task.model import ModelConfig, build_model, count_parameters
from task.privacy import PrivacyConfig
from task.training import recipe

WARMUP_CASES = 10


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _interval(estimate: dict[str, float | None]) -> str:
    """An evidence estimate as "value [low, high]", "value (no interval)" or "n/a"."""
    value, low, high = estimate["value"], estimate["ci_low"], estimate["ci_high"]
    if value is None:
        return "n/a"
    if low is None or high is None:
        return f"{value:.3f} (no interval)"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def federated_quality(
    site_dirs: list[Path], architecture: str, privacy: PrivacyConfig, rounds: int, run_dir: Path
) -> tuple[str, float]:
    """A federation of fresh copies of ``site_dirs`` (no privacy spent) training
    ``architecture`` into ``run_dir``, and its wall time (s). Its quality: a classifier's
    pooled AUC "value [low, high]"; a segmentation model's pooled mean Dice "value [low,
    high]" and median HD95 (mm) "| value [low, high]"."""
    copies = [
        Path(shutil.copytree(d, run_dir.parent / "sites" / d.name, dirs_exist_ok=True))
        for d in site_dirs
    ]
    config = FederationConfig(
        run_dir=run_dir,
        rounds=rounds,
        seed=0,
        training=recipe(architecture),
        model=ModelConfig(architecture=architecture),
        privacy=privacy,
        local_baselines=False,
        provenance=DataProvenance(description="phantoms (bench_models)", simulated=True),
    )
    started = time.perf_counter()
    result = run_simulated_federation(copies, config, pooled_baseline=False, progress=say)
    seconds = time.perf_counter() - started
    pooled = json.loads(result.evidence.read_text())["performance"]["pooled"]
    if "auc" in pooled:
        return _interval(pooled["auc"]), seconds
    return f"{_interval(pooled['dice_mean'])} | {_interval(pooled['hd95_median'])}", seconds


def latency_ms(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> str:
    """Median and 95th percentile (ms) of scoring each case of ``images`` alone, after
    `WARMUP_CASES` cases."""
    times = []
    with torch.no_grad():
        for index in range(len(images)):
            started = time.perf_counter()
            model(images[index : index + 1])
            times.append(time.perf_counter() - started)
    kept = np.array(times[WARMUP_CASES:]) * 1000
    return f"{np.median(kept):.2f} / {np.percentile(kept, 95):.2f}"


def epoch_seconds(architecture: str, data: SiteData, private: bool) -> float:
    """Wall time (s) of one epoch of the recipe on ``data``, plain or with DP-SGD (noise
    multiplier 1: the time does not depend on it)."""
    training = replace(recipe(architecture), local_epochs=1)
    dpsgd = None
    if private:
        sample_rate, steps = poisson_sampling(len(data), training.batch_size)
        dpsgd = DPSGD(1.0, 1.0, sample_rate, steps, noise_seed=1, sampling_seed=2)
    model = build_model(ModelConfig(architecture=architecture), seed=0)
    started = time.perf_counter()
    train_model(model, data, training, seed=0, dpsgd=dpsgd)
    return time.perf_counter() - started


@dataclass(frozen=True)
class Int8Figures:
    """The float and int8 model of a run on the pooled test data: AUCs, file sizes
    (bytes) and per-case latencies ("median / p95" ms)."""

    float_auc: float
    int8_auc: float
    float_bytes: int
    int8_bytes: int
    latency_eager: str
    latency_script: str
    latency_int8: str


def int8_figures(run_dir: Path, site_dir: Path, test: SiteData, out: Path) -> Int8Figures:
    """Quantize ``run_dir``'s final model at ``site_dir`` into ``out``; compare it with the
    float model on ``test``."""
    record = write_int8_model(run_dir, out, site_dir)
    model = FinalModel.of_run(run_dir).load()
    int8 = load_int8(out)
    labels = test.labels.numpy()
    with torch.no_grad():
        int8_scores = int8(test.images).squeeze(1).double().numpy()
    return Int8Figures(
        float_auc=float(roc_auc_score(labels, predict_logits(model, test))),
        int8_auc=float(roc_auc_score(labels, int8_scores)),
        float_bytes=record.source_bytes,
        int8_bytes=record.bytes,
        latency_eager=latency_ms(model, test.images),
        latency_script=latency_ms(trace(model, test.images[:1]), test.images),
        latency_int8=latency_ms(int8, test.images),
    )


def machine() -> str:
    """The machine, date and load, for the report."""
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return (
        f"{datetime.now(UTC).isoformat(timespec='minutes')}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, torch {torch.__version__}; "
        f"uptime: {load}"
    )


def _classifier_rows(
    architecture: str, run: Path, site: SiteStore, test: SiteData, out: Path
) -> tuple[str, str]:
    """The int8 columns of a classifier's quality row, and its speed columns up to the
    epochs (file sizes and latencies, float and int8)."""
    figures = int8_figures(run, site.root, test, out / architecture / "int8.pt")
    quality = (
        f" {figures.float_auc:.3f} | {figures.int8_auc:.3f} | "
        f"{figures.int8_auc - figures.float_auc:+.3f} |"
    )
    speed = (
        f" {figures.float_bytes / 1024:.0f} / {figures.int8_bytes / 1024:.0f} | "
        f"{figures.latency_eager} | {figures.latency_script} | {figures.latency_int8} |"
    )
    return quality, speed


def _segmentation_speed(run: Path, test: SiteData) -> str:
    """A segmentation model's speed columns up to the epochs: checkpoint size, latencies
    eager and as TorchScript."""
    final = FinalModel.of_run(run)
    model = final.load()
    return (
        f" {final.checkpoint.stat().st_size / 1024:.0f} | {latency_ms(model, test.images)} | "
        f"{latency_ms(trace(model, test.images[:1]), test.images)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=(CLASSIFICATION, SEGMENTATION), default=CLASSIFICATION)
    parser.add_argument("--models", help="comma-separated (default: every model of --task)")
    parser.add_argument("--rounds", type=int, default=DemoConfig().rounds)
    parser.add_argument("--no-dp", action="store_true", help="skip the DP-SGD runs")
    parser.add_argument("--out", type=Path, help="folder for the runs (default: temporary)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="medfed-bench-models-"))
    models = args.models.split(",") if args.models else list(models_for(args.task))
    segmentation = args.task == SEGMENTATION
    started_at = machine()
    site_dirs, _ = make_phantom_sites(DemoConfig(out=out / "phantom-sites"), say)
    stores = [SiteStore.open(d) for d in site_dirs]
    largest = max(stores, key=lambda s: len(s.read_manifest()))
    size = ModelConfig().image_size
    test = concatenate([load_split(s, "test", size, masks=segmentation) for s in stores])
    train = load_split(largest, "train", size, masks=segmentation)
    torch.set_num_threads(1)

    quality, speed, private = [], [], []
    for architecture in models:
        say(f"== {architecture}")
        run = out / architecture / "no-dp" / "run"
        score, seconds = federated_quality(
            site_dirs, architecture, PrivacyConfig.for_epsilon(float("inf")), args.rounds, run
        )
        if segmentation:
            more_quality, files_and_latency = "", _segmentation_speed(run, test)
        else:
            more_quality, files_and_latency = _classifier_rows(
                architecture, run, largest, test, out
            )
        quality.append(f"| {architecture} | {score} | {seconds:.0f} |{more_quality}")
        dp_ready = MODEL_ZOO[architecture].dp_sgd_refusal is None
        plain_epoch = epoch_seconds(architecture, train, private=False)
        dp_epoch = f"{epoch_seconds(architecture, train, private=True):.1f}" if dp_ready else "-"
        parameters = count_parameters(build_model(ModelConfig(architecture=architecture)))
        speed.append(
            f"| {architecture} | {parameters:,} |{files_and_latency} {plain_epoch:.1f} | "
            f"{dp_epoch} |"
        )
        say(f"{quality[-1]}\n{speed[-1]}")
    for architecture in [] if args.no_dp else models:
        if MODEL_ZOO[architecture].dp_sgd_refusal is not None:
            private.append(f"| {architecture} | refused (DP-SGD cannot train it) | - |")
            continue
        say(f"== {architecture}, DP-SGD")
        dp_run = out / architecture / "dp" / "run"
        score, seconds = federated_quality(
            site_dirs, architecture, PrivacyConfig(), args.rounds, dp_run
        )
        private.append(f"| {architecture} | {score} | {seconds:.0f} |")
        say(private[-1])

    score_columns = (
        "global pooled mean Dice [95% CI] | median HD95, mm [95% CI]"
        if segmentation
        else "global pooled AUC [95% CI]"
    )
    print(f"Started {started_at}\nEnded {machine()}\n")
    print(
        f"Quality: {len(stores)} phantom sites (seed 0), FedAvg, {args.rounds} rounds of each "
        f"model's recipe, no DP; "
        + (
            f"on the pooled test split's {len(test)} cases with a mask.\n"
            if segmentation
            else f"int8 calibrated at {largest.site_id}; AUCs on the pooled test split "
            f"({len(test)} cases).\n"
        )
    )
    if segmentation:
        print(f"| model | {score_columns} | wall (s) |\n| --- | --- | --- | ---: |")
    else:
        print(
            f"| model | {score_columns} | wall (s) | float AUC (scored here) | int8 AUC | "
            "int8 - float |\n| --- | --- | ---: | ---: | ---: | ---: |"
        )
    print("\n".join(quality))
    print(
        f"\nSpeed: one torch thread; latency per case in ms (median / p95 over {len(test)} test "
        f"cases, {WARMUP_CASES} warm-up cases excluded); epoch on {largest.site_id}'s "
        f"{len(train)} training cases.\n"
    )
    if segmentation:
        print(
            "| model | trainable parameters | checkpoint (KiB) | float, eager (ms) | "
            "float, TorchScript (ms) | epoch, plain (s) | epoch, DP-SGD (s) |\n"
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
        )
    else:
        print(
            "| model | trainable parameters | checkpoint / int8 file (KiB) | float, eager (ms) | "
            "float, TorchScript (ms) | int8, TorchScript (ms) | epoch, plain (s) | "
            "epoch, DP-SGD (s) |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        )
    print("\n".join(speed))
    if private:
        print("\nThe same federations with DP-SGD at every site, epsilon 8 per site:\n")
        dp_rule = "| --- | --- | --- | ---: |" if segmentation else "| --- | --- | ---: |"
        print(f"| model | {score_columns} | wall (s) |\n{dp_rule}")
        print("\n".join(private))


if __name__ == "__main__":
    main()
