"""Local training and scoring of the task's model on a site's data."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from monai.losses import DiceCELoss
from opacus import PrivacyEngine
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from site_client.dataset import SiteData
from site_client.privacy import DPSGD
from task.training import TrainingConfig
from task.transforms import augmentation


@dataclass(frozen=True)
class TrainStats:
    """What a training call did: mean loss over its last epoch, cases seen per epoch, steps."""

    loss: float
    num_examples: int
    steps: int


def train_model(
    model: nn.Module,
    data: SiteData,
    config: TrainingConfig,
    seed: int,
    epochs: int | None = None,
    dpsgd: DPSGD | None = None,
    grad_sample_mode: str = "hooks",
) -> TrainStats:
    """Train ``model`` in place on ``data`` with Adam: binary cross-entropy of its logit
    against each case's label, or, when ``data`` has masks (segmentation), MONAI's
    ``DiceCELoss`` of its per-pixel logits against each case's mask (Dice loss per case,
    averaged over the batch, plus the mean pixel-wise binary cross-entropy: both are means
    of per-case terms, as DP-SGD's per-sample gradients need).

    epochs defaults to ``config.local_epochs``. With ``config.proximal_mu > 0`` the FedProx
    proximal term mu/2 * ||w - w_start||^2 keeps the weights near those the model started
    from (the global model of the round). With ``dpsgd`` it trains with DP-SGD (Opacus):
    Poisson-sampled batches, each case's gradient clipped, Gaussian noise added to their
    sum; the model keeps its own parameter names (no wrapper). grad_sample_mode is how
    Opacus computes per-sample gradients ("hooks", "functorch", "ew"; a matter of speed).
    The same seeds give the same result.
    """
    if len(data) == 0:
        raise ValueError("no training cases")
    if config.augment and data.masks is not None:
        raise ValueError("segmentation trains without augmentation (it would move the masks)")
    torch.manual_seed(seed)
    augment = augmentation(seed) if config.augment else None
    optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss_fn, targets = _objective(data)
    start = [p.detach().clone() for p in model.parameters()] if config.proximal_mu > 0 else []
    indices = DataLoader(
        TensorDataset(torch.arange(len(data))),
        batch_size=config.batch_size,
        shuffle=dpsgd is None,
        generator=torch.Generator().manual_seed(dpsgd.sampling_seed if dpsgd else seed),
    )
    private = None
    if dpsgd is not None:
        with warnings.catch_warnings():
            # Opacus warns that secure_mode is off: our noise and sampling seeds are keyed
            # with the site's secret (`site_client.privacy`), so no one else can predict them.
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            engine = PrivacyEngine()
        private = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=indices,
            noise_multiplier=dpsgd.noise_multiplier,
            max_grad_norm=dpsgd.max_grad_norm,
            poisson_sampling=True,
            noise_generator=torch.Generator().manual_seed(dpsgd.noise_seed),
            wrap_model=False,
            grad_sample_mode=grad_sample_mode,
        )
        hooks, optimizer, indices = private
        if abs(optimizer.expected_batch_size - len(data) * dpsgd.sample_rate) >= 1:
            raise RuntimeError("Opacus's sampling differs from the planned sample rate")
    model.train()
    steps = 0
    epoch_loss = 0.0
    try:
        for _ in range(epochs or config.local_epochs):
            total = 0.0
            for (batch,) in indices:
                images = data.images[batch]
                if augment is not None and len(batch):
                    # One draw per batch: MONAI sees the batch as channels of one image.
                    images = augment(images.squeeze(1)).unsqueeze(1)
                optimizer.zero_grad()
                loss = loss_fn(model(images), targets[batch])
                total += loss.item() * len(batch) if len(batch) else 0.0
                with warnings.catch_warnings():
                    # Opacus's hooks on the first layer, whose input needs no gradient.
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    loss.backward()
                _step(optimizer, model, start, config.proximal_mu)
                steps += 1
            epoch_loss = total / len(data)
    finally:
        if private is not None:
            hooks.cleanup()
    return TrainStats(loss=epoch_loss, num_examples=len(data), steps=steps)


def _objective(data: SiteData) -> tuple[Callable[..., torch.Tensor], torch.Tensor]:
    """The loss of a batch's model output against its targets, and the targets of every
    case of ``data``: labels (classification) or masks (segmentation)."""
    if data.masks is not None:
        return DiceCELoss(sigmoid=True), data.masks
    bce = nn.BCEWithLogitsLoss()
    return (lambda logits, labels: bce(logits.squeeze(1), labels)), data.labels


def segmentation_loss(logits: np.ndarray, masks: torch.Tensor) -> float:
    """Mean `DiceCELoss` (as in training) of per-pixel ``logits`` (N, S, S) against
    ``masks`` (N, 1, S, S)."""
    loss = DiceCELoss(sigmoid=True)(torch.from_numpy(logits).float().unsqueeze(1), masks)
    return float(loss.item())


def _step(
    optimizer: torch.optim.Optimizer, model: nn.Module, start: list[torch.Tensor], mu: float
) -> None:
    """One optimiser step, with the FedProx term's gradient mu * (w - w_start) added to the
    (for DP-SGD: clipped and noised) data gradient. The term depends on no case, so it
    needs neither clipping nor noise."""
    if isinstance(optimizer, DPOptimizer):
        if not optimizer.pre_step():  # clips and noises p.grad; False while accumulating
            return
        _add_proximal_gradient(model, start, mu)
        optimizer.original_optimizer.step()
    else:
        _add_proximal_gradient(model, start, mu)
        optimizer.step()


def _add_proximal_gradient(model: nn.Module, start: list[torch.Tensor], mu: float) -> None:
    if not start:
        return
    with torch.no_grad():
        for p, s in zip(model.parameters(), start, strict=True):
            if p.grad is not None:
                p.grad.add_(p - s, alpha=mu)


def predict_logits(model: nn.Module, data: SiteData, batch_size: int = 256) -> np.ndarray:
    """The model's logit for every case of ``data``, in order: (N,) float64 (a segmentation
    model's: (N, S, S), one per pixel)."""
    return image_logits(model, data.images, batch_size)


@torch.no_grad()
def image_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """The model's logit for every image of ``images`` (N, 1, S, S), in order: (N,) float64
    (a segmentation model's: (N, S, S), one per pixel)."""
    model.eval()
    if len(images) == 0:
        return np.empty(0, dtype=np.float64)
    out = [model(chunk).squeeze(1) for chunk in images.split(batch_size)]
    return torch.cat(out).double().numpy()


def mean_loss(logits: np.ndarray, labels: torch.Tensor) -> float:
    """Mean binary cross-entropy of ``logits`` against ``labels``."""
    return float(
        nn.functional.binary_cross_entropy_with_logits(
            torch.from_numpy(logits).float(), labels
        ).item()
    )
