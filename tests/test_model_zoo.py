"""The model zoo (MONAI's DenseNet, ResNet, EfficientNet, ViT beside blob and cnn): each
builds, loads its checkpoints with or without DP, trains a DP-SGD step or is refused with
its one-line reason, and quantizes to int8 with nearly the float model's scores."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IngestedFederation
from opacus.validators import ModuleValidator
from scipy.special import expit

from server.checkpoints import load_frozen_model, sha256_of
from site_client.dataset import SiteData, load_split
from site_client.privacy import DPSGD, poisson_sampling
from site_client.quantization import (
    SCHEMES,
    QuantizationError,
    load_int8,
    quantize,
    write_int8_model,
)
from site_client.store import SiteStore
from site_client.training import predict_logits, train_model
from task.architectures import (
    CLASSIFICATION,
    MODEL_ZOO,
    DPSGDUnsupported,
    check_dp_sgd,
    model_help,
    models_for,
)
from task.model import ModelConfig, build_model, count_parameters
from task.training import TrainingConfig, recipe

CLASSIFIERS = models_for(CLASSIFICATION)
DP_READY = [name for name in CLASSIFIERS if MODEL_ZOO[name].dp_sgd_refusal is None]
REFUSED = [name for name in CLASSIFIERS if MODEL_ZOO[name].dp_sgd_refusal is not None]


def _one_epoch_of_dp_sgd(data: SiteData, architecture: str) -> tuple[TrainingConfig, DPSGD]:
    """The model's recipe for one epoch, and DP-SGD settings that fit it on ``data``."""
    training = replace(recipe(architecture), local_epochs=1)
    sample_rate, steps = poisson_sampling(len(data), training.batch_size)
    return training, DPSGD(1.0, 1.0, sample_rate, steps, noise_seed=1, sampling_seed=2)


@pytest.fixture(scope="module")
def site_data(small_federation: IngestedFederation) -> tuple[SiteData, SiteData]:
    """A real phantom site's training and test splits (64x64)."""
    store = SiteStore.open(small_federation.site_dirs[0])
    return load_split(store, "train", 64), load_split(store, "test", 64)


def test_the_zoo_is_what_the_issue_asks_for() -> None:
    assert {"blob", "cnn", "densenet", "resnet", "efficientnet", "vit"} <= set(CLASSIFIERS)
    assert set(SCHEMES) == set(CLASSIFIERS)  # every classifier has an int8 version
    assert all(f"{name}: " in model_help() for name in MODEL_ZOO)


@pytest.mark.parametrize("architecture", CLASSIFIERS)
def test_each_model_maps_images_to_logits_without_batchnorm(architecture: str) -> None:
    model = build_model(ModelConfig(architecture=architecture), seed=0)
    assert model(torch.rand(3, 1, 64, 64)).shape == (3, 1)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert ModuleValidator.validate(model, strict=False) == []
    assert 200 <= count_parameters(model) <= 600_000  # sized for a CPU


@pytest.mark.parametrize("architecture", DP_READY)
def test_a_dp_sgd_step_trains_every_parameter_and_the_checkpoint_loads_without_dp(
    architecture: str, site_data: tuple[SiteData, SiteData], tmp_path: Path
) -> None:
    config = ModelConfig(architecture=architecture)
    model = build_model(config, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    training, dpsgd = _one_epoch_of_dp_sgd(site_data[0], architecture)
    stats = train_model(model, site_data[0], training, seed=0, dpsgd=dpsgd)
    assert stats.steps == dpsgd.steps
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert trainable <= changed  # noise reaches every trainable parameter: none skipped
    checkpoint = tmp_path / "dp.pt"
    torch.save(model.state_dict(), checkpoint)  # the same names as without DP
    plain = build_model(config)
    plain.load_state_dict(load_frozen_model(checkpoint, config))
    images = site_data[1].images[:4]
    torch.testing.assert_close(plain.eval()(images), model.eval()(images))


@pytest.mark.parametrize("architecture", REFUSED)
def test_a_refused_model_is_refused_in_one_line_and_opacus_does_reject_it(
    architecture: str, site_data: tuple[SiteData, SiteData]
) -> None:
    with pytest.raises(DPSGDUnsupported) as refusal:
        check_dp_sgd(architecture)
    assert str(refusal.value).startswith(f"{architecture} cannot train with DP-SGD: ")
    assert "\n" not in str(refusal.value)
    check_dp_sgd(architecture, "central")  # no per-sample gradients: allowed
    check_dp_sgd(architecture, "none")
    # The reason is real: Opacus fails on the model (lift the refusal when it no longer does).
    model = build_model(ModelConfig(architecture=architecture), seed=0)
    training, dpsgd = _one_epoch_of_dp_sgd(site_data[0], architecture)
    with pytest.raises(RuntimeError, match="modified inplace"):
        train_model(model, site_data[0], training, seed=0, dpsgd=dpsgd)
    assert train_model(model, site_data[0], training, seed=0).steps > 0  # it trains without DP


def _trained(architecture: str, train: SiteData) -> torch.nn.Module:
    """A model trained briefly on ``train`` (scores that differ from case to case)."""
    model = build_model(ModelConfig(architecture=architecture), seed=0)
    train_model(model, train, replace(recipe(architecture), local_epochs=2), seed=0)
    return model.eval()


@pytest.mark.parametrize("architecture", CLASSIFIERS)
def test_the_int8_model_scores_real_images_nearly_as_the_float_one(
    architecture: str, site_data: tuple[SiteData, SiteData]
) -> None:
    train, test = site_data
    model = _trained(architecture, train)
    int8 = quantize(model, architecture, train.images)
    float_scores = predict_logits(model, test)
    with torch.no_grad():
        int8_scores = int8(test.images).squeeze(1).double().numpy()
    gap = np.abs(expit(int8_scores) - expit(float_scores))  # probabilities
    if architecture == "efficientnet":
        # Its int8 scores are the least faithful (docs/benchmarks.md, "Model zoo"): its many
        # small convolutions each add their rounding, and one case's probability moved by
        # 0.50 in a CI run; only a gross error on average fails here.
        assert float(gap.mean()) < 0.2
    else:
        assert float(gap.mean()) < 0.02 and float(gap.max()) < 0.1


def _run_dir(tmp_path: Path, model: torch.nn.Module, config: ModelConfig) -> Path:
    """A run directory as medfed writes one, as far as its final model goes."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    checkpoint = run / "checkpoints" / "global-round-1.pt"
    torch.save(model.state_dict(), checkpoint)
    evidence = {
        "model": {
            "architecture": "described",
            "config": asdict(config),
            "checkpoint": "checkpoints/global-round-1.pt",
            "sha256": sha256_of(checkpoint),
        }
    }
    (run / "evidence.json").write_text(json.dumps(evidence))
    return run


def test_quantize_writes_the_int8_file_with_its_hash_and_calibration_record(
    small_federation: IngestedFederation, site_data: tuple[SiteData, SiteData], tmp_path: Path
) -> None:
    config = ModelConfig(architecture="cnn")
    model = _trained("cnn", site_data[0])
    run = _run_dir(tmp_path, model, config)
    site = small_federation.site_dirs[0]
    out = tmp_path / "edge" / "cnn-int8.pt"
    out.parent.mkdir()
    with pytest.raises(QuantizationError, match="give --site-dir"):
        write_int8_model(run, out, None)
    record = write_int8_model(run, out, site, calibration_cases=16)
    assert record.sha256 == sha256_of(out) and record.bytes == out.stat().st_size
    assert record.calibration == {"site": site.name, "split": "train", "cases": 16}
    assert json.loads(out.with_suffix(".json").read_text())["sha256"] == record.sha256
    int8 = load_int8(out)
    with torch.no_grad():
        scores = int8(site_data[1].images).squeeze(1).double().numpy()
    gap = np.abs(expit(scores) - expit(predict_logits(model, site_data[1])))
    assert float(gap.mean()) < 0.02
    (run / "checkpoints" / "global-round-1.pt").write_bytes(b"changed")
    with pytest.raises(QuantizationError, match="not the file"):
        write_int8_model(run, out, site)


def test_quantize_a_vit_needs_no_site_data(
    site_data: tuple[SiteData, SiteData], tmp_path: Path
) -> None:
    config = ModelConfig(architecture="vit")
    run = _run_dir(tmp_path, build_model(config, seed=0), config)
    record = write_int8_model(run, tmp_path / "vit-int8.pt", None)
    assert record.scheme == "dynamic" and record.calibration is None
    assert load_int8(tmp_path / "vit-int8.pt")(site_data[1].images[:2]).shape == (2, 1)


def _medfed(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medfed", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_refuses_dp_sgd_of_a_refused_model_before_anything_runs(tmp_path: Path) -> None:
    for architecture in REFUSED:
        result = _medfed("demo", "--model", architecture, "--out", tmp_path / "demo")
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1] == (
            f"medfed: error: {MODEL_ZOO[architecture].dp_sgd_refusal}"
        )
        assert not (tmp_path / "demo").exists()
    unknown = _medfed("demo", "--model", "alexnet", "--out", tmp_path / "demo")
    assert unknown.returncode == 2 and "invalid choice: 'alexnet'" in unknown.stderr
    missing = _medfed("quantize", tmp_path / "no-run", "--out", tmp_path / "x.pt")
    assert missing.returncode == 1
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and "evidence.json: names no final model" in lines[0]
