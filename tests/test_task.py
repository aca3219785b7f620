"""The shared task: model, preprocessing, settings on the wire, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator

from task.architectures import CLASSIFICATION, MODEL_ZOO, models_for
from task.config_record import from_config, to_config
from task.model import ModelConfig, build_model
from task.training import TrainingConfig, derive_seed
from task.transforms import augmentation, preprocess_all

ARCHITECTURES = list(MODEL_ZOO)


@pytest.mark.parametrize("architecture", models_for(CLASSIFICATION))
def test_model_maps_images_to_one_logit_and_is_opacus_clean(architecture: str) -> None:
    model = build_model(ModelConfig(architecture=architecture), seed=0)
    out = model(torch.zeros(3, 1, 64, 64))
    assert out.shape == (3, 1)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert ModuleValidator.validate(model, strict=True) == []


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_same_seed_gives_same_initial_weights(architecture: str) -> None:
    config = ModelConfig(architecture=architecture)
    a = build_model(config, seed=3).state_dict()
    b = build_model(config, seed=3).state_dict()
    c = build_model(config, seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_blob_model_sends_only_its_trainable_weights_and_finds_a_dark_spot() -> None:
    model = build_model(ModelConfig(), seed=0)
    assert set(model.state_dict()) == {"head.weight", "head.bias", "mix.weight", "mix.bias"}
    assert sum(p.numel() for p in model.parameters()) == 257
    organ = torch.full((1, 1, 64, 64), 0.6)
    lesion = organ.clone()
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    lesion[0, 0][(yy - 30) ** 2 + (xx - 25) ** 2 <= 9] = 0.3
    dark = model.bank(torch.cat([organ, lesion]))[:, : len(model.bank.SCALES)]
    assert float(dark[0].max()) < 1e-5  # a flat organ has no blob
    assert float(dark[1].max()) > 0.5  # the dark disc does
    flipped = model(torch.flip(lesion, dims=(3,)))
    torch.testing.assert_close(model(lesion), flipped)


def test_model_config_rejects_shapes_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(architecture="cnn", image_size=60)
    with pytest.raises(ValueError, match="norm_groups"):
        ModelConfig(architecture="cnn", channels=(6, 12, 24, 48), norm_groups=4)
    with pytest.raises(ValueError, match="at least 20"):
        ModelConfig(image_size=16)
    with pytest.raises(ValueError, match="architecture must be one of blob, cnn, densenet"):
        ModelConfig(architecture="alexnet")
    with pytest.raises(ValueError, match="multiple of 16 for the vit model"):
        ModelConfig(architecture="vit", image_size=72)
    with pytest.raises(ValueError, match="norm_groups 8 must divide 4 for the densenet model"):
        ModelConfig(architecture="densenet", norm_groups=8)


def test_preprocessing_resizes_and_scales_any_scanner_units() -> None:
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 10, (128, 96)).astype(np.float32)
    vendor_units = hu * 2.0 + 1024.0  # another gain and offset
    images = preprocess_all([hu, vendor_units], image_size=64)
    assert images.shape == (2, 1, 64, 64)
    assert images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    torch.testing.assert_close(images[0], images[1], atol=1e-4, rtol=0)


def test_augmentation_is_seeded() -> None:
    image = torch.rand(1, 32, 32)
    first = augmentation(7)(image)
    again = augmentation(7)(image)
    other = [augmentation(s)(image) for s in range(8, 16)]
    torch.testing.assert_close(first, again)
    assert any(not torch.equal(first, o) for o in other)


def test_settings_survive_the_trip_through_a_config_record() -> None:
    training = TrainingConfig(local_epochs=3, batch_size=8, learning_rate=0.01, proximal_mu=0.1)
    model = ModelConfig(architecture="cnn", image_size=32, channels=(8, 16), norm_groups=2)
    flat = {**to_config(training), **to_config(model, "model-"), "server-round": 4}
    assert flat["model-channels"] == [8, 16]
    assert from_config(TrainingConfig, flat) == training
    assert from_config(ModelConfig, flat, "model-") == model


def test_invalid_settings_from_the_wire_are_refused() -> None:
    with pytest.raises(ValueError, match="local_epochs"):
        from_config(TrainingConfig, {"local-epochs": 0})


def test_derived_seeds_are_stable_and_distinct() -> None:
    assert derive_seed(0, 1, "site-a") == derive_seed(0, 1, "site-a")
    seeds = {derive_seed(0, r, s) for r in range(5) for s in ("site-a", "site-b")}
    assert len(seeds) == 10
    assert all(0 <= s < 2**31 for s in seeds)
