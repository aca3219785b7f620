"""The model both sides build: a MONAI CNN classifier sized for CPUs.

GroupNorm, not BatchNorm, so that the model is compatible with Opacus (DP-SGD computes
per-sample gradients; BatchNorm mixes samples) and so that no running statistics need
aggregating.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.nets import Classifier
from torch import nn

ARCHITECTURE = "monai.networks.nets.Classifier"


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the classifier.

    image_size: input side in pixels (images are resized to image_size x image_size).
    channels: feature channels of each residual stage; each stage halves the resolution.
    num_res_units: residual units per stage.
    norm_groups: GroupNorm groups (must divide every entry of ``channels``).
    """

    image_size: int = 64
    channels: tuple[int, ...] = (16, 32, 64, 128)
    num_res_units: int = 1
    norm_groups: int = 4

    def __post_init__(self) -> None:
        if self.image_size % (2 ** len(self.channels)):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2**{len(self.channels)}"
            )
        if any(c % self.norm_groups for c in self.channels):
            raise ValueError(f"norm_groups {self.norm_groups} must divide channels {self.channels}")


def build_model(config: ModelConfig = ModelConfig(), seed: int | None = None) -> nn.Module:
    """A binary classifier: input (B, 1, S, S) float, output (B, 1) logits.

    With ``seed`` the initial weights are reproducible; every site and the coordinator
    build the same architecture from the same config.
    """
    if seed is not None:
        torch.manual_seed(seed)
    return Classifier(
        in_shape=(1, config.image_size, config.image_size),
        classes=1,
        channels=config.channels,
        strides=(2,) * len(config.channels),
        num_res_units=config.num_res_units,
        act="relu",
        norm=("group", {"num_groups": config.norm_groups}),
    )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
