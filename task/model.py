"""The models both sides build, sized for CPUs; `ModelConfig.architecture` chooses.

``blob`` (the default): a fixed, non-trainable bank of multi-scale centre-surround blob
detectors, then 257 trainable parameters (a 1x1 convolution with tanh, global maximum
pooling, one linear unit). Each detector blurs the image at one scale and compares every
pixel with the ring around it in 8 directions; it responds only where the pixel is darker
(or brighter) than its surroundings in *every* direction, as a compact lesion is and an edge,
organ border or vessel is not (the idea of the iris and sliding-band filters of nodule CAD).
Why: DP-SGD adds noise to every trainable parameter, so on a few hundred cases per site a
CNN learned from scratch stays near chance under DP (AUC about 0.6 at epsilon 8 on the
phantoms), while this model loses almost nothing (0.975 at epsilon 8 against 0.98 without
DP; docs/benchmarks.md). Its scales (lesion radii of 2 to 9 pixels at 64x64) were chosen
with the phantoms' lesions in view: check them on real data before relying on them. It is
invariant to flips and quarter turns.

``cnn``: a small CNN of MONAI blocks, better placed to learn what the bank does not
describe, when privacy allows (without DP, AUC 0.96 on the phantoms). Each stage is a MONAI
``Convolution`` block (3x3 convolution, GroupNorm, ReLU) followed by 2x2 max pooling; the
global maximum and the global mean of each channel of the last feature
map feed one linear unit. The maximum makes the score depend on the strongest lesion-like
response anywhere in the image, whatever its position; the mean gives every position a
gradient, so training leaves its initial plateau sooner (on the phantoms: test AUC about
0.87 after 5 epochs, against 0.6 with the maximum alone). A flatten-and-linear head
(MONAI's ``Classifier``) has to learn every position separately and learns far slower.

GroupNorm, not BatchNorm, so that the model is compatible with Opacus (DP-SGD computes
per-sample gradients; BatchNorm mixes samples) and no running statistics need aggregating.
The blob model has no normalisation layer at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from monai.networks.blocks import Convolution
from torch import nn

ARCHITECTURES = {
    "blob": "medfed BlobLesionClassifier: fixed multi-scale centre-surround blob detectors, "
    "1x1 convolution with tanh, global max pooling, linear",
    "cnn": "medfed LesionClassifier: MONAI Convolution blocks (GroupNorm), global max and mean "
    "pooling",
}


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the classifier.

    architecture: "blob" or "cnn" (see the module docstring).
    image_size: input side in pixels (images are resized to image_size x image_size).
    channels: cnn: feature channels of each stage; each stage halves the resolution.
    norm_groups: cnn: GroupNorm groups (must divide every entry of ``channels``).
    hidden: blob: units of the trainable 1x1 convolution.
    """

    architecture: str = "blob"
    image_size: int = 64
    channels: tuple[int, ...] = (8, 16, 32, 64)
    norm_groups: int = 4
    hidden: int = 16

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}"
            )
        if self.architecture == "blob":
            if self.image_size % 2 or self.image_size < 2 * BlobBank.max_radius() + 2:
                raise ValueError(
                    f"image_size {self.image_size} must be even and at least "
                    f"{2 * BlobBank.max_radius() + 2} for the blob model"
                )
            if self.hidden < 1:
                raise ValueError(f"hidden must be >= 1, got {self.hidden}")
            return
        if self.image_size % (2 ** len(self.channels)):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2**{len(self.channels)}"
            )
        if any(c % self.norm_groups for c in self.channels):
            raise ValueError(f"norm_groups {self.norm_groups} must divide channels {self.channels}")


class LesionClassifier(nn.Module):
    """Binary classifier: input (B, 1, S, S) float, output (B, 1) logits."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        in_channels = 1
        for out_channels in config.channels:
            stages += [
                Convolution(
                    spatial_dims=2,
                    in_channels=in_channels,
                    out_channels=out_channels,
                    act="relu",
                    norm=("group", {"num_groups": config.norm_groups}),
                ),
                nn.MaxPool2d(2),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*stages)
        self.head = nn.Linear(2 * in_channels, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)
        pooled = torch.cat([features.amax(dim=(2, 3)), features.mean(dim=(2, 3))], dim=1)
        return self.head(pooled)


def _gaussian_blur_matrix(sigma: float, size: int) -> torch.Tensor:
    """(size, size) matrix M such that M @ v is the 1-D Gaussian blur (radius 3 sigma) of v,
    edges replicated."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    matrix = torch.zeros(size, size, dtype=torch.float64)
    for i in range(size):
        for offset, weight in zip(range(-radius, radius + 1), kernel, strict=True):
            matrix[i, min(max(i + offset, 0), size - 1)] += weight
    return matrix.float()


class BlobBank(nn.Module):
    """Fixed blob detectors: input (B, 1, S, S) in about [0, 1], output (B, 14, S, S).

    For each (sigma, R) of `SCALES` (pixels): b = the image blurred by a Gaussian of
    std sigma; the surround-minus-centre differences b(p + R d) - b(p) for 8 directions d;
    the dark-blob score relu(gain * min_d) and the bright-blob score relu(gain * min_d of
    the negated differences). Then the image - 0.5 and its blur at sigma 8 - 0.5 (context).
    No parameters: it costs no privacy and sends nothing over the wire.
    """

    SCALES = ((0.7, 2), (1.0, 3), (1.5, 4), (2.0, 5), (2.5, 7), (3.0, 9))
    CONTEXT_SIGMA = 8.0
    DIRECTIONS = 8

    def __init__(self, image_size: int, gain: float = 4.0) -> None:
        super().__init__()
        sigmas = sorted({s for s, _ in self.SCALES} | {self.CONTEXT_SIGMA})
        blur = torch.stack([_gaussian_blur_matrix(s, image_size) for s in sigmas])
        self.register_buffer("blur", blur, persistent=False)
        self.scale_index = [sigmas.index(s) for s, _ in self.SCALES]
        angles = [2 * math.pi * k / self.DIRECTIONS for k in range(self.DIRECTIONS)]
        self.shifts = [
            [(round(r * math.sin(a)), round(r * math.cos(a))) for a in angles]
            for _, r in self.SCALES
        ]
        self.pad = self.max_radius()
        self.gain = gain
        self.out_channels = 2 * len(self.SCALES) + 2

    @classmethod
    def max_radius(cls) -> int:
        return max(r for _, r in cls.SCALES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        blurred = self.blur @ images @ self.blur.transpose(1, 2)  # (B, scales, H, W)
        p = self.pad
        padded = nn.functional.pad(blurred, (p, p, p, p), mode="replicate")
        dark, bright = [], []
        for index, shifts in zip(self.scale_index, self.shifts, strict=True):
            centre = blurred[:, index]
            surround = torch.stack(
                [
                    padded[:, index, p + dy : p + dy + height, p + dx : p + dx + width] - centre
                    for dy, dx in shifts
                ],
                dim=1,
            )
            dark.append(surround.amin(dim=1))
            bright.append((-surround).amin(dim=1))
        blobs = torch.relu(torch.stack(dark + bright, dim=1) * self.gain)
        return torch.cat([blobs, images - 0.5, blurred[:, -1:] - 0.5], dim=1)


class BlobLesionClassifier(nn.Module):
    """Binary classifier: input (B, 1, S, S) float, output (B, 1) logits (module docstring)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.bank = BlobBank(config.image_size)
        self.mix = nn.Conv2d(self.bank.out_channels, config.hidden, kernel_size=1)
        self.head = nn.Linear(config.hidden, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = nn.functional.avg_pool2d(self.bank(images), 2)
        return self.head(torch.tanh(self.mix(features)).amax(dim=(2, 3)))


def build_model(config: ModelConfig = ModelConfig(), seed: int | None = None) -> nn.Module:
    """The task's classifier for ``config``. With ``seed`` the initial weights are
    reproducible; every site and the coordinator build the same architecture."""
    if seed is not None:
        torch.manual_seed(seed)
    if config.architecture == "blob":
        return BlobLesionClassifier(config)
    return LesionClassifier(config)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
