"""Saliency heatmaps: where in an image a classifier's score comes from.

- **GradCAM** (MONAI ``monai.visualize.GradCAM``) for convolutional models: the target layer
  is the model's last spatial feature map, found by running the model once
  (`last_feature_map`): for the CNN its last convolutional stage, for ResNet its last
  residual stage, for the blob model its trainable 1x1 convolution over the fixed detectors.
  The map is the ReLU of the feature maps weighted by the score's mean gradient: what
  pushes the score towards the positive finding (all zero where nothing does).
- **Occlusion sensitivity** (MONAI ``monai.visualize.OcclusionSensitivity``) for attention
  models (the ViT: its only convolution is the patch embedding, before any attention, so a
  GradCAM there says nothing of what the transformer attends to) and any model without a
  spatial feature map: each region of the size of a ViT patch (an eighth of the image side,
  half-overlapping) is replaced by the image's mean, and the map is how much the
  probability drops. It is model-agnostic and needs no gradients; attention rollout has no
  single answer for a model that pools all tokens instead of reading a class token. (MONAI
  1.6's ``mean_patch`` mode multiplies a region by its mean instead of replacing it, and its
  callable modes fail: ``mean_img`` is the one that occludes.)

Both maps are scaled to [0, 1] by their maximum (zero stays zero: MONAI's default
post-processing maps the maximum to 0 and the minimum to 1).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from monai.networks.blocks import SABlock
from monai.visualize import GradCAM, OcclusionSensitivity
from PIL import Image
from torch import nn

GRADCAM = "gradcam"
OCCLUSION = "occlusion"
#: Modules that make a model an attention model (occlusion, not GradCAM).
ATTENTION_MODULES = (SABlock, nn.MultiheadAttention)
#: Occlusion: regions of image side / this (8x8 pixels, the ViT's patch, at 64), overlap.
OCCLUSION_DIVISOR = 8
OCCLUSION_OVERLAP = 0.5
#: Occluded copies scored at a time.
OCCLUSION_BATCH = 256
#: The heatmap's opacity where it is strongest (it fades to nothing where it is zero).
HEAT_OPACITY = 0.6


@dataclass(frozen=True)
class SaliencyMethod:
    """How heatmaps are made: ``name`` (`GRADCAM` or `OCCLUSION`) and GradCAM's target
    layer (a module name of the model)."""

    name: str
    layer: str | None = None

    @property
    def description(self) -> str:
        if self.name == GRADCAM:
            return f"GradCAM (MONAI) at layer {self.layer}"
        return (
            f"occlusion sensitivity (MONAI): regions of 1/{OCCLUSION_DIVISOR} of the side, "
            f"overlap {OCCLUSION_OVERLAP}, replaced by the image's mean; the probability's drop"
        )


def last_feature_map(model: nn.Module, image_size: int) -> str | None:
    """The name of the module giving ``model``'s last spatial feature map: of the submodules
    that run once in a forward pass and output a (B, C, h, w) map with h, w > 1 that carries
    gradients, the one that finishes last. None: there is none."""
    calls: dict[str, int] = {}
    finished: list[str] = []

    def recorder(name: str) -> Callable[[nn.Module, object, object], None]:
        def record(_module: nn.Module, _inputs: object, output: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            if (
                isinstance(output, torch.Tensor)
                and output.ndim == 4
                and min(output.shape[2:]) > 1
                and output.requires_grad
            ):
                finished.append(name)

        return record

    handles = [m.register_forward_hook(recorder(n)) for n, m in model.named_modules() if n]
    try:
        with torch.enable_grad():
            model(torch.zeros(1, 1, image_size, image_size))
    finally:
        for handle in handles:
            handle.remove()
    once = [name for name in finished if calls[name] == 1]
    return once[-1] if once else None


def choose_method(model: nn.Module, image_size: int) -> SaliencyMethod:
    """Occlusion for attention models and models without a spatial feature map; GradCAM at
    the last feature map otherwise."""
    if any(isinstance(m, ATTENTION_MODULES) for m in model.modules()):
        return SaliencyMethod(OCCLUSION)
    layer = last_feature_map(model, image_size)
    return SaliencyMethod(OCCLUSION) if layer is None else SaliencyMethod(GRADCAM, layer)


def _scale_to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Non-negative maps (B, 1, H, W) divided by each one's maximum (an all-zero map stays)."""
    peak = maps.amax(dim=(2, 3), keepdim=True)
    return torch.where(peak > 0, maps / peak.clamp_min(1e-12), maps)


class SaliencyMapper:
    """Heatmaps of ``model`` (a classifier: input (1, 1, S, S), one logit) by the method
    `choose_method` picks."""

    def __init__(self, model: nn.Module, image_size: int) -> None:
        self.model = model.eval()
        self.method = choose_method(model, image_size)
        self._explain: Callable[[torch.Tensor], torch.Tensor]
        if self.method.name == GRADCAM:
            layer = self.method.layer
            self._explain = GradCAM(model, target_layers=layer, postprocessing=_scale_to_unit)
        else:
            self._explain = OcclusionMap(model, image_size)

    def __call__(self, image: torch.Tensor) -> np.ndarray:
        """The heatmap of ``image`` (1, 1, S, S) as the model sees it: (S, S) in [0, 1]."""
        with warnings.catch_warnings():  # MONAI's hooks and indexing warn of torch changes
            warnings.simplefilter("ignore", UserWarning)
            with torch.enable_grad():
                heat = self._explain(image)
        return heat[0, 0].detach().numpy().astype(np.float64)


class OcclusionMap:
    """Occlusion sensitivity of a classifier (one logit): for an image (1, 1, S, S), how much
    the probability drops when each region is occluded, (1, 1, S, S) scaled to [0, 1]."""

    def __init__(self, model: nn.Module, image_size: int) -> None:
        self.model = model
        self.occlusion = OcclusionSensitivity(
            model,
            mask_size=max(1, image_size // OCCLUSION_DIVISOR),
            n_batch=OCCLUSION_BATCH,
            verbose=False,
            mode="mean_img",
            overlap=OCCLUSION_OVERLAP,
        )

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            occluded, _ = self.occlusion(image)  # the probability, each region occluded
            base = torch.sigmoid(self.model(image))  # (1, 1)
        drop = base[..., None, None] - occluded.reshape(image.shape)
        return _scale_to_unit(drop.clamp_min(0))


def blend(gray: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """``gray`` (H, W) 8-bit with ``heat`` (h, w) in [0, 1], resized to it, blended in as
    a black-red-yellow-white heat colour whose opacity follows the heat: (H, W, 3) 8-bit."""
    height, width = gray.shape
    heat_image = Image.fromarray(heat.astype(np.float32))
    heat = np.clip(np.asarray(heat_image.resize((width, height), Image.BILINEAR)), 0, 1)
    colour = np.stack([np.clip(3 * heat - k, 0, 1) for k in range(3)], axis=-1) * 255
    opacity = (HEAT_OPACITY * heat)[..., None]
    rgb = (1 - opacity) * gray[..., None].astype(np.float64) + opacity * colour
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
