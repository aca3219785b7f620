"""Baselines that need all data in one place, which only a simulation has.

The pooled-centralized baseline trains the task's model on the training splits of all
sites together: the ceiling a federation aims for. It sees the same number of epochs as
the federation does over all its rounds, and is evaluated at every site like any model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from site_client.dataset import concatenate, load_split
from site_client.store import SiteStore
from site_client.training import train_model
from task.model import ModelConfig, build_model
from task.training import TrainingConfig, derive_seed
from task.wire import POOLED_CENTRALIZED


def train_pooled_centralized(
    stores: list[SiteStore],
    model_config: ModelConfig,
    training: TrainingConfig,
    epochs: int,
    seed: int,
    out_file: Path,
) -> Path:
    """Train on all ``stores``' training splits pooled; save the state dict to ``out_file``.

    The initial weights are the federation's (same ``seed``), so the two differ only in
    where the data was.
    """
    pooled = concatenate([load_split(s, "train", model_config.image_size) for s in stores])
    model = build_model(model_config, seed=seed)
    train_model(model, pooled, training, derive_seed(seed, POOLED_CENTRALIZED), epochs=epochs)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_file)
    return out_file
