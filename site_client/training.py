"""Local training and scoring of the task's model on a site's data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from site_client.dataset import SiteData
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
) -> TrainStats:
    """Train ``model`` in place on ``data`` with Adam and binary cross-entropy.

    epochs defaults to ``config.local_epochs``. With ``config.proximal_mu > 0`` the FedProx
    proximal term mu/2 * ||w - w_start||^2 keeps the weights near those the model started
    from (the global model of the round). The same seed gives the same result.
    """
    if len(data) == 0:
        raise ValueError("no training cases")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    augment = augmentation(seed) if config.augment else None
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss_fn = nn.BCEWithLogitsLoss()
    start = [p.detach().clone() for p in model.parameters()] if config.proximal_mu > 0 else []
    model.train()
    steps = 0
    epoch_loss = 0.0
    for _ in range(epochs or config.local_epochs):
        order = torch.randperm(len(data), generator=generator)
        total = 0.0
        for batch in order.split(config.batch_size):
            images = data.images[batch]
            if augment is not None:
                # One draw per batch: MONAI sees the batch as channels of one image.
                images = augment(images.squeeze(1)).unsqueeze(1)
            optimizer.zero_grad()
            loss = loss_fn(model(images).squeeze(1), data.labels[batch])
            total += loss.item() * len(batch)
            if start:
                proximal = sum(
                    ((p - s) ** 2).sum() for p, s in zip(model.parameters(), start, strict=True)
                )
                loss = loss + config.proximal_mu / 2 * proximal
            loss.backward()
            optimizer.step()
            steps += 1
        epoch_loss = total / len(data)
    return TrainStats(loss=epoch_loss, num_examples=len(data), steps=steps)


@torch.no_grad()
def predict_logits(model: nn.Module, data: SiteData, batch_size: int = 256) -> np.ndarray:
    """The model's logit for every case of ``data``, in order: (N,) float64."""
    model.eval()
    if len(data) == 0:
        return np.empty(0, dtype=np.float64)
    out = [model(chunk).squeeze(1) for chunk in data.images.split(batch_size)]
    return torch.cat(out).double().numpy()


def mean_loss(logits: np.ndarray, labels: torch.Tensor) -> float:
    """Mean binary cross-entropy of ``logits`` against ``labels``."""
    return float(
        nn.functional.binary_cross_entropy_with_logits(
            torch.from_numpy(logits).float(), labels
        ).item()
    )
