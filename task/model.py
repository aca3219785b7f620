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

The model zoo (issue 8): MONAI's networks, built with their constructor arguments and sized
for a CPU at 64x64 pixels, single channel in, one logit out. Every one is built the same way
with or without DP, so a checkpoint loads in either mode:

- ``densenet``: ``DenseNet`` (init features 16, growth rate 8, blocks 4-4-4, bottleneck 2),
  GroupNorm, ReLU not in place (Opacus's hooks refuse in-place changes of a hooked layer's
  output).
- ``resnet``: ``ResNet`` (ResNet-10: basic blocks 1-1-1-1, channels 16-32-64-128, 3x3 stem
  at stride 1). MONAI 1.6 passes ``norm`` and ``act`` to the stem only, so its blocks'
  BatchNorms are replaced by GroupNorm with Opacus's ``ModuleValidator.fix``. DP-SGD cannot
  train it (`task.architectures`): each block adds its shortcut in place to a GroupNorm's
  output.
- ``efficientnet``: ``EfficientNet`` with EfficientNet-B0's block list, width 0.25, depth 0.5
  (``EfficientNetBN`` has only the full-size B0 to B8), GroupNorm, the plain swish (the
  memory-efficient one works in place).
- ``vit``: ``ViT`` (8x8 patches: 64 tokens, hidden 128, MLP 256, 4 layers, 4 heads, fixed
  sin-cos position embedding) without its classification token: the global maximum and mean
  of the tokens feed one linear unit, as in the CNN. A class token is a parameter of the ViT
  module itself, for which Opacus would compute per-sample gradients by re-running the whole
  network per case. MONAI's transformer blocks build a cross-attention LayerNorm that they
  never use; it is frozen, since Opacus refuses a trainable parameter with no gradient.

Segmentation (``--task segmentation``):

- ``unet``: MONAI ``UNet`` (channels 8-16-32, strides 2-2, no residual units), input
  (B, 1, S, S), output (B, 1, S, S): one logit per pixel, lesion where it is >= 0 (a
  probability of at least 0.5). InstanceNorm with affine parameters (GroupNorm cannot
  normalise the single-channel layer MONAI builds before the output convolution) and ReLU
  not in place, for Opacus. Opacus has no per-sample gradient hooks for the transposed
  convolutions of the decoder; it computes theirs with functorch, which it falls back on by
  itself.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import DenseNet, EfficientNet, ResNet, UNet, ViT
from opacus.validators import ModuleValidator
from torch import nn

from task.architectures import ARCHITECTURES as ARCHITECTURES
from task.architectures import MODEL_ZOO


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the classifier.

    architecture: a name of `MODEL_ZOO` (see the module docstring).
    image_size: input side in pixels (images are resized to image_size x image_size).
    channels: cnn: feature channels of each stage; each stage halves the resolution.
    norm_groups: GroupNorm groups of cnn (must divide every entry of ``channels``), and of
        densenet, resnet and efficientnet (must divide 4).
    hidden: blob: units of the trainable 1x1 convolution.
    """

    architecture: str = "blob"
    image_size: int = 64
    channels: tuple[int, ...] = (8, 16, 32, 64)
    norm_groups: int = 4
    hidden: int = 16

    def __post_init__(self) -> None:
        if self.architecture not in MODEL_ZOO:
            raise ValueError(
                f"architecture must be one of {', '.join(MODEL_ZOO)}, got {self.architecture!r}"
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
        if self.architecture in ZOO_BUILDERS:
            if self.image_size % ZOO_IMAGE_STEP:
                raise ValueError(
                    f"image_size {self.image_size} must be a multiple of {ZOO_IMAGE_STEP} for "
                    f"the {self.architecture} model"
                )
            if ZOO_NORM_CHANNEL_STEP % self.norm_groups:
                raise ValueError(
                    f"norm_groups {self.norm_groups} must divide {ZOO_NORM_CHANNEL_STEP} for the "
                    f"{self.architecture} model"
                )
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


#: The zoo models' input side must be a multiple of this (their total downsampling, which
#: the ViT's patch side divides).
ZOO_IMAGE_STEP = 16
#: Every channel count that the zoo's GroupNorm layers normalise is a multiple of this.
ZOO_NORM_CHANNEL_STEP = 4
_RELU_NOT_IN_PLACE = ("relu", {"inplace": False})
#: EfficientNet-B0's blocks, as MONAI's EfficientNetBN builds them for "efficientnet-b0"
#: (it does not export the list): repeats, kernel, strides, expansion, in, out, squeeze ratio.
EFFICIENTNET_B0_BLOCKS = (
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
)


def _group_norm(config: ModelConfig) -> tuple[str, dict[str, int]]:
    return ("group", {"num_groups": config.norm_groups})


def _densenet(config: ModelConfig) -> nn.Module:
    return DenseNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        init_features=16,
        growth_rate=8,
        block_config=(4, 4, 4),
        bn_size=2,
        act=_RELU_NOT_IN_PLACE,
        norm=_group_norm(config),
    )


def _resnet(config: ModelConfig) -> nn.Module:
    model = ResNet(
        "basic",
        layers=[1, 1, 1, 1],
        block_inplanes=[16, 32, 64, 128],
        spatial_dims=2,
        n_input_channels=1,
        conv1_t_size=3,
        conv1_t_stride=1,
        num_classes=1,
        norm=_group_norm(config),
    )
    # MONAI 1.6 gives the blocks BatchNorm whatever ``norm`` says.
    return ModuleValidator.fix(model, num_groups=config.norm_groups)


def _efficientnet(config: ModelConfig) -> nn.Module:
    model = EfficientNet(
        list(EFFICIENTNET_B0_BLOCKS),
        spatial_dims=2,
        in_channels=1,
        num_classes=1,
        width_coefficient=0.25,
        depth_coefficient=0.5,
        image_size=config.image_size,
        norm=_group_norm(config),
    )
    model.set_swish(memory_efficient=False)
    return model


class TransformerClassifier(nn.Module):
    """Binary classifier: input (B, 1, S, S) float, output (B, 1) logits. MONAI's ViT
    encodes 8x8 patches; the global maximum and mean of its tokens feed one linear unit."""

    def __init__(self, config: ModelConfig, hidden: int = 128) -> None:
        super().__init__()
        with warnings.catch_warnings():  # MONAI's sin-cos embedding calls torch.meshgrid
            warnings.filterwarnings("ignore", message="torch.meshgrid")
            self.vit = ViT(
                in_channels=1,
                img_size=config.image_size,
                patch_size=8,
                hidden_size=hidden,
                mlp_dim=2 * hidden,
                num_layers=4,
                num_heads=4,
                pos_embed_type="sincos",
                spatial_dims=2,
            )
        for block in self.vit.blocks:  # built by MONAI, used only with cross-attention
            block.norm_cross_attn.requires_grad_(False)
        self.head = nn.Linear(2 * hidden, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.vit(images)
        return self.head(torch.cat([tokens.amax(dim=1), tokens.mean(dim=1)], dim=1))


def _unet(config: ModelConfig) -> nn.Module:
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=(8, 16, 32),
        strides=(2, 2),
        num_res_units=0,
        act=_RELU_NOT_IN_PLACE,
        norm=("instance", {"affine": True}),
    )


#: Builders of the MONAI networks of the zoo (the module docstring).
ZOO_BUILDERS = {
    "densenet": _densenet,
    "resnet": _resnet,
    "efficientnet": _efficientnet,
    "vit": TransformerClassifier,
    "unet": _unet,
}
_BUILDERS = {"blob": BlobLesionClassifier, "cnn": LesionClassifier, **ZOO_BUILDERS}


def build_model(config: ModelConfig = ModelConfig(), seed: int | None = None) -> nn.Module:
    """The task's model for ``config``: input (B, 1, S, S) float, output (B, 1) logits
    (classifiers) or (B, 1, S, S) per-pixel logits (``unet``). With ``seed`` the initial
    weights are reproducible; every site and the coordinator build the same architecture,
    with or without DP."""
    if seed is not None:
        torch.manual_seed(seed)
    return _BUILDERS[config.architecture](config)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
