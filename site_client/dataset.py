"""A site's cases as tensors, ready for training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from site_client.store import CaseRecord, SiteStore
from task.architectures import SEGMENTATION, task_of
from task.model import ModelConfig
from task.transforms import preprocess_all, preprocess_masks


@dataclass(frozen=True)
class SiteData:
    """One split of a site store, preprocessed and held in memory.

    images: (N, 1, S, S) float32, intensities scaled by `task.transforms.preprocessing`.
    labels: (N,) float32, 1.0 = lesion present.
    records: the manifest rows, in the same order (for strata).
    masks: (N, 1, S, S) float32 0/1 lesion masks on the images' grid
        (`task.transforms.preprocess_masks`) for segmentation; None for classification.
    """

    images: torch.Tensor
    labels: torch.Tensor
    records: tuple[CaseRecord, ...]
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def n_positive(self) -> int:
        return int(self.labels.sum().item())


def load_split(store: SiteStore, split: str, image_size: int, masks: bool = False) -> SiteData:
    """The cases of ``split`` ('train' or 'test') of ``store``, preprocessed; with ``masks``
    (segmentation) only the cases that have a lesion mask, with their masks.

    Cached per process while the manifest is unchanged: a site's ClientApp answers many
    messages in a run and need not reread its store each time.
    """
    mtime = store.manifest_path.stat().st_mtime_ns if store.manifest_path.exists() else 0
    return _load_split_cached(store.root.resolve(), split, image_size, masks, mtime)


def load_task_split(store: SiteStore, split: str, model: ModelConfig) -> SiteData:
    """`load_split` for ``model``: with masks when it is a segmentation model."""
    segmentation = task_of(model.architecture) == SEGMENTATION
    return load_split(store, split, model.image_size, masks=segmentation)


@lru_cache(maxsize=16)
def _load_split_cached(
    root: Path, split: str, image_size: int, masks: bool, _mtime: int
) -> SiteData:
    store = SiteStore.open(root)
    records = tuple(
        r for r in store.read_manifest() if r.split == split and (r.has_mask or not masks)
    )
    images = preprocess_all([store.load_image(r.case_id) for r in records], image_size)
    labels = torch.tensor([float(r.label) for r in records], dtype=torch.float32)
    if not masks:
        return SiteData(images, labels, records)
    lesions = preprocess_masks([store.load_mask(r.case_id) for r in records], image_size)
    return SiteData(images, labels, records, lesions)


def concatenate(parts: list[SiteData]) -> SiteData:
    """Several sites' data as one (the pooled-centralized baseline)."""
    masks = [p.masks for p in parts]
    return SiteData(
        images=torch.cat([p.images for p in parts]),
        labels=torch.cat([p.labels for p in parts]),
        records=tuple(r for p in parts for r in p.records),
        masks=None if any(m is None for m in masks) else torch.cat(masks),  # type: ignore[arg-type]
    )
