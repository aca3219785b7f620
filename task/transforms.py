"""Preprocessing and augmentation, as MONAI transforms.

Input of `preprocessing`: a stored case image, 2-D float32 in modality units with
MONOCHROME2 polarity (as ``site_client.decode`` produces), any size.
Output: a (1, S, S) float32 tensor with intensities scaled to about [0, 1] by the image's
own 1st and 99th percentiles, which removes most of the scanners' differences in gain and
offset without relying on calibrated Hounsfield units.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import (
    Compose,
    EnsureChannelFirst,
    EnsureType,
    RandAdjustContrast,
    RandFlip,
    RandGaussianNoise,
    RandRotate90,
    Resize,
    ScaleIntensityRangePercentiles,
)


def preprocessing(image_size: int) -> Compose:
    """Deterministic transform: 2-D array -> (1, image_size, image_size) float tensor."""
    return Compose(
        [
            EnsureChannelFirst(channel_dim="no_channel"),
            Resize(spatial_size=(image_size, image_size), mode="area"),
            ScaleIntensityRangePercentiles(lower=1, upper=99, b_min=0.0, b_max=1.0, clip=True),
            EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
        ]
    )


def augmentation(seed: int) -> Compose:
    """Random transform for training: (1, S, S) tensor -> (1, S, S) tensor.

    Flips and quarter turns (lesions have no preferred orientation), mild contrast and
    noise changes (scanners differ in both). Seeded: the same seed gives the same draws.
    """
    transform = Compose(
        [
            RandFlip(prob=0.5, spatial_axis=0),
            RandFlip(prob=0.5, spatial_axis=1),
            RandRotate90(prob=0.5, max_k=3),
            RandAdjustContrast(prob=0.3, gamma=(0.8, 1.25)),
            RandGaussianNoise(prob=0.3, std=0.02),
            EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
        ]
    )
    transform.set_random_state(seed=seed)
    return transform


def preprocess_all(images: list[np.ndarray], image_size: int) -> torch.Tensor:
    """Apply `preprocessing` to every image: returns (N, 1, S, S) float32."""
    transform = preprocessing(image_size)
    if not images:
        return torch.empty((0, 1, image_size, image_size), dtype=torch.float32)
    return torch.stack([transform(image) for image in images])


def preprocess_masks(masks: list[np.ndarray], image_size: int) -> torch.Tensor:
    """Lesion masks (2-D, 0/1, each its image's size) on the model's grid: (N, 1, S, S)
    float32 0/1, a pixel in the lesion when at least half of the area it covers is (the
    image's own resizing is by area too). The identity for masks already S x S."""
    resize = Compose(
        [
            EnsureChannelFirst(channel_dim="no_channel"),
            Resize(spatial_size=(image_size, image_size), mode="area"),
            EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
        ]
    )
    if not masks:
        return torch.empty((0, 1, image_size, image_size), dtype=torch.float32)
    return torch.stack([(resize(m.astype(np.float32)) >= 0.5).float() for m in masks])
