"""Baselines that need all data in one place, which only a simulation has.

The pooled-centralized baseline trains the task's model on the training splits of all
sites together: the ceiling a federation aims for. It sees the same number of epochs as
the federation does over all its rounds, and is evaluated at every site like any model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from site_client.dataset import concatenate, load_task_split
from site_client.policy import PrivacyPolicy
from site_client.privacy import ReleaseRequest, plan_release
from site_client.store import SiteStore
from site_client.training import train_model
from task.model import ModelConfig, build_model
from task.privacy import PrivacyConfig
from task.training import TrainingConfig, derive_seed
from task.wire import POOLED_CENTRALIZED


def train_pooled_centralized(
    stores: list[SiteStore],
    model_config: ModelConfig,
    training: TrainingConfig,
    epochs: int,
    seed: int,
    out_file: Path,
    privacy: PrivacyConfig,
) -> Path:
    """Train on all ``stores``' training splits pooled; save the state dict to ``out_file``.

    The initial weights are the federation's (same ``seed``). With ``privacy.mode`` "local"
    it trains with DP-SGD for ``privacy.target_epsilon`` at delta 0.1 / n (no ledger: the
    pooled data exists only in this simulation); otherwise without DP.
    """
    pooled = concatenate([load_task_split(s, "train", model_config) for s in stores])
    model = build_model(model_config, seed=seed)
    dpsgd = None
    if privacy.mode == "local":
        planned = plan_release(
            PrivacyPolicy(),
            [],
            privacy,
            ReleaseRequest(
                run_id=POOLED_CENTRALIZED,
                round=0,
                phase=POOLED_CENTRALIZED,
                seed=seed,
                epochs=epochs,
                planned_epochs=epochs,
                n_train=len(pooled),
                batch_size=training.batch_size,
            ),
            secret=f"simulation seed {seed}".encode(),
        )
        dpsgd = planned.dpsgd
    train_model(
        model, pooled, training, derive_seed(seed, POOLED_CENTRALIZED), epochs=epochs, dpsgd=dpsgd
    )
    out_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_file)
    return out_file
