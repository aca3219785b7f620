"""Training settings the coordinator sends to every site, as a typed object.

They travel in the ConfigRecord of each train message (`task.config_record`), so every
site trains with the same settings and the run directory records them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class TrainingConfig:
    """Local training settings.

    local_epochs: passes over the site's training split per round.
    batch_size: cases per optimiser step.
    learning_rate: Adam step size.
    proximal_mu: FedProx proximal weight (0 = plain local SGD objective).
    augment: random flips, rotations, contrast and noise during training.
    """

    local_epochs: int = 4
    batch_size: int = 16
    learning_rate: float = 1e-3
    proximal_mu: float = 0.0
    augment: bool = True

    def __post_init__(self) -> None:
        if self.local_epochs < 1:
            raise ValueError(f"local_epochs must be >= 1, got {self.local_epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.proximal_mu < 0:
            raise ValueError(f"proximal_mu must be >= 0, got {self.proximal_mu}")


#: The training settings each architecture was tuned with (docs/benchmarks.md): the blob
#: model's 257 parameters learn in few large, fast steps and gain nothing from flips or
#: quarter turns (it is invariant to them); the CNN needs many small ones. The MONAI
#: networks: Adam's step from short pooled runs on the phantoms (1e-3 and 3e-3; 3e-4 and
#: 1e-3 for the ViT, which learns slowest), 2 epochs per round (20 in the demo's 10 rounds).
RECIPES = {
    "blob": TrainingConfig(local_epochs=1, batch_size=64, learning_rate=0.1, augment=False),
    "cnn": TrainingConfig(local_epochs=4, batch_size=16, learning_rate=1e-3, augment=True),
    "densenet": TrainingConfig(local_epochs=2, batch_size=16, learning_rate=3e-3, augment=True),
    "resnet": TrainingConfig(local_epochs=2, batch_size=16, learning_rate=3e-3, augment=True),
    "efficientnet": TrainingConfig(local_epochs=2, batch_size=16, learning_rate=1e-3, augment=True),
    "vit": TrainingConfig(local_epochs=2, batch_size=16, learning_rate=3e-4, augment=True),
    # Segmentation trains without augmentation: a flip or turn would have to move the mask.
    "unet": TrainingConfig(local_epochs=2, batch_size=16, learning_rate=1e-2, augment=False),
}


def recipe(architecture: str, local_epochs: int | None = None) -> TrainingConfig:
    """The tuned `TrainingConfig` of ``architecture``, with ``local_epochs`` if given."""
    base = RECIPES[architecture]
    return base if local_epochs is None else replace(base, local_epochs=local_epochs)


def derive_seed(*parts: int | str) -> int:
    """A 31-bit seed from ``parts`` (run seed, round, site id, ...), the same on every
    machine: each site and round draws different but reproducible random numbers."""
    words = [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0] & 0x7FFFFFFF)
