"""Local training and what a site computes from its data."""

from __future__ import annotations

import numpy as np
import torch
from conftest import IngestedFederation

from site_client.dataset import load_split
from site_client.evaluation import class_histograms, stratified_histograms
from site_client.store import SiteStore
from site_client.training import predict_logits, train_model
from task.model import ModelConfig, build_model
from task.training import TrainingConfig
from task.wire import N_SCORE_BINS, histogram_key


def _distance_from_start(proximal_mu: float, data) -> float:  # type: ignore[no-untyped-def]
    model = build_model(ModelConfig(), seed=0)
    start = [p.detach().clone() for p in model.parameters()]
    config = TrainingConfig(local_epochs=2, learning_rate=0.01, proximal_mu=proximal_mu)
    train_model(model, data, config, seed=1)
    return float(
        sum(((p.detach() - s) ** 2).sum() for p, s in zip(model.parameters(), start, strict=True))
    )


def test_fedprox_term_keeps_local_weights_near_the_global_model(
    small_federation: IngestedFederation,
) -> None:
    data = load_split(SiteStore.open(small_federation.site_dirs[0]), "train", 64)
    assert _distance_from_start(10.0, data) < 0.5 * _distance_from_start(0.0, data)


def test_training_is_reproducible_for_a_seed(small_federation: IngestedFederation) -> None:
    data = load_split(SiteStore.open(small_federation.site_dirs[0]), "train", 64)
    config = TrainingConfig(local_epochs=1)
    states = []
    for _ in range(2):
        model = build_model(ModelConfig(), seed=0)
        stats = train_model(model, data, config, seed=5)
        states.append(model.state_dict())
    assert stats.num_examples == len(data)
    assert stats.steps == -(-len(data) // config.batch_size)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_split_data_matches_the_manifest(small_federation: IngestedFederation) -> None:
    store = SiteStore.open(small_federation.site_dirs[1])
    records = store.read_manifest()
    for split in ("train", "test"):
        data = load_split(store, split, 64)
        expected = [r for r in records if r.split == split]
        assert [r.case_id for r in data.records] == [r.case_id for r in expected]
        assert data.images.shape == (len(expected), 1, 64, 64)
        assert data.labels.tolist() == [float(r.label) for r in expected]


def test_strata_histograms_count_every_case_once_and_withhold_small_strata(
    small_federation: IngestedFederation,
) -> None:
    store = SiteStore.open(small_federation.site_dirs[0])
    data = load_split(store, "test", 64)
    logits = predict_logits(build_model(ModelConfig(), seed=0), data)
    result = stratified_histograms(logits, data, "test", min_cell_size=5)
    whole = result.histograms[histogram_key("test", "site=all", 1)]
    assert len(whole) == N_SCORE_BINS
    assert sum(whole) == data.n_positive
    by_manufacturer = sum(
        sum(counts)
        for key, counts in result.histograms.items()
        if key.startswith("test|manufacturer=")
    )
    withheld = {s.split("|")[1] for s in result.suppressed}
    manufacturers = {r.manufacturer for r in data.records}
    kept = {m for m in manufacturers if f"manufacturer={m}" not in withheld}
    assert by_manufacturer == sum(r.manufacturer in kept for r in data.records)
    for stratum in withheld:
        kind, value = stratum.split("=", 1)
        attribute = "manufacturer" if kind == "manufacturer" else "scanner"
        assert sum(getattr(r, attribute) == value for r in data.records) < 5
    everything = stratified_histograms(logits, data, "test", min_cell_size=1)
    assert not everything.suppressed


def test_class_histograms_split_by_label() -> None:
    negatives, positives = class_histograms(np.array([-9.0, 0.0, 9.0]), np.array([0, 1, 1]))
    assert sum(negatives) == 1 and sum(positives) == 2
    assert negatives[0] == 1 and positives[-1] == 1
