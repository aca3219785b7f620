"""Differential privacy at the site: accounting, budgets, the ledger, DP-SGD training."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import IngestedFederation
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from opacus.accountants import create_accountant

from site_client.client_app import evaluate_round, evaluate_strata, train
from site_client.dataset import load_split
from site_client.ledger import HEAD_FILE, LEDGER_FILE, LedgerEntry, LedgerError, PrivacyLedger
from site_client.policy import PolicyError, PrivacyPolicy, SitePolicy, read_policy, write_policy
from site_client.privacy import (
    PrivacyRefused,
    ReleaseRequest,
    epsilon_spent,
    noise_for_epsilon,
    plan_release,
    poisson_sampling,
)
from site_client.store import SiteStore
from site_client.training import train_model
from task.config_record import to_config
from task.model import ModelConfig, build_model
from task.privacy import (
    PLANNED_EPOCHS_KEY,
    PRIVACY_PREFIX,
    RUN_ID_KEY,
    PrivacyConfig,
)
from task.signing import model_sha256
from task.training import TrainingConfig
from task.wire import (
    ARRAYS,
    CONFIG,
    METRICS,
    MODEL_CONFIG_PREFIX,
    MODEL_PREFIX,
    SEED_KEY,
    TRAIN_SPLIT_MODELS_KEY,
)
from validation.privacy import check_reported_epsilon, recompute_epsilon

SECRET = b"k" * 32


def _entry(run_id: str = "run-1", round_: int = 1, epsilon: float = 1.0) -> LedgerEntry:
    return LedgerEntry(
        run_id=run_id,
        round=round_,
        phase="federated",
        steps=10,
        sample_rate=0.1,
        noise_multiplier=1.1,
        max_grad_norm=1.0,
        accountant="rdp",
        delta=1e-3,
        epsilon_run=epsilon,
        epsilon_total=epsilon,
        time="2026-11-29T00:00:00+00:00",
    )


def _request(run_id: str = "run-1", round_: int = 1, **changes: object) -> ReleaseRequest:
    values: dict[str, object] = {
        "run_id": run_id,
        "round": round_,
        "phase": "federated",
        "seed": 0,
        "epochs": 2,
        "planned_epochs": 10,
        "n_train": 100,
        "batch_size": 16,
    }
    return ReleaseRequest(**(values | changes))  # type: ignore[arg-type]


def _spend_run(
    policy: PrivacyPolicy, ledger: PrivacyLedger, run_id: str, privacy: PrivacyConfig
) -> None:
    """Plan and record the five planned rounds of a run (2 epochs each, 10 planned)."""
    for round_ in range(1, 6):
        planned = plan_release(policy, ledger.entries(), privacy, _request(run_id, round_), SECRET)
        ledger.append(planned.entry)


# --- accounting ------------------------------------------------------------------------


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_noise_for_a_target_spends_just_under_it_and_agrees_with_dp_accounting(
    accountant: str,
) -> None:
    sample_rate, steps_per_epoch = poisson_sampling(280, 16)
    steps = 40 * steps_per_epoch
    noise = noise_for_epsilon(3.0, 1e-4, sample_rate, steps, accountant)
    epsilon = epsilon_spent([(noise, sample_rate, steps)], 1e-4, accountant)
    assert 2.95 <= epsilon <= 3.0
    check = check_reported_epsilon(
        epsilon, accountant, recompute_epsilon([(noise, sample_rate, steps)], 1e-4)
    )
    assert check["agrees"], check
    assert epsilon >= check["pld_epsilon"] * 0.999


def test_an_underreported_epsilon_fails_the_independent_check() -> None:
    recomputed = recompute_epsilon([(1.0, 0.05, 400)], 1e-4)
    assert not check_reported_epsilon(recomputed["pld_epsilon"] * 0.9, "prv", recomputed)["agrees"]
    assert not check_reported_epsilon(recomputed["rdp_epsilon"] * 1.2, "rdp", recomputed)["agrees"]


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_is_opacus_accountants_own_over_the_whole_history(accountant: str) -> None:
    history = [(1.3, 0.1, 10), (1.8, 0.05, 30), (1.3, 0.1, 10)]
    account = create_accountant(mechanism=accountant)
    account.history = history
    expected = account.get_epsilon(delta=1e-4)
    assert epsilon_spent(history, 1e-4, accountant) == pytest.approx(expected, rel=1e-2)
    if accountant == "rdp":
        assert epsilon_spent(history, 1e-4, accountant) == pytest.approx(expected, rel=1e-12)


def test_releases_compose_and_a_release_without_noise_is_unbounded() -> None:
    one = epsilon_spent([(1.0, 0.1, 50)], 1e-4, "rdp")
    two = epsilon_spent([(1.0, 0.1, 50), (1.0, 0.1, 50)], 1e-4, "rdp")
    assert one < two < 2 * one
    assert epsilon_spent([], 1e-4, "rdp") == 0
    assert math.isinf(epsilon_spent([(1.0, 0.1, 50), (0.0, 0.1, 5)], 1e-4, "rdp"))


# --- budgets -------------------------------------------------------------------------------


def test_run_noise_keeps_every_planned_release_within_the_target(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path)
    privacy = PrivacyConfig(target_epsilon=3.0)
    _spend_run(PrivacyPolicy(), ledger, "run-1", privacy)
    entries = ledger.entries()
    assert [e.round for e in entries] == [1, 2, 3, 4, 5]
    assert all(e.epsilon_run <= 3.0 for e in entries)
    assert entries[-1].epsilon_run > 2.9
    with pytest.raises(PrivacyRefused, match="over the run's target of 3"):
        plan_release(PrivacyPolicy(), entries, privacy, _request("run-1", 6), SECRET)


def test_a_fixed_noise_multiplier_is_used_as_given_and_accounted(tmp_path: Path) -> None:
    privacy = PrivacyConfig(noise_multiplier=1.5)
    planned = plan_release(PrivacyPolicy(), [], privacy, _request(), SECRET)
    assert planned.dpsgd is not None and planned.dpsgd.noise_multiplier == 1.5
    sample_rate, steps_per_epoch = poisson_sampling(100, 16)
    expected = epsilon_spent([(1.5, sample_rate, 2 * steps_per_epoch)], 1e-3, "rdp")
    assert planned.entry.epsilon_run == pytest.approx(expected)


def test_a_ceiling_smaller_than_one_round_refuses_it(tmp_path: Path) -> None:
    policy = PrivacyPolicy(max_epsilon=0.05)
    with pytest.raises(PrivacyRefused, match=r"over its ceiling of 0\.05"):
        plan_release(policy, [], PrivacyConfig(target_epsilon=3.0), _request(), SECRET)


def test_budgets_compose_across_runs_and_a_spent_budget_refuses_the_next_run(
    tmp_path: Path,
) -> None:
    policy = PrivacyPolicy(max_epsilon=4.0)
    privacy = PrivacyConfig(target_epsilon=3.0)
    ledger = PrivacyLedger(tmp_path)
    _spend_run(policy, ledger, "run-1", privacy)
    # A new run starts its own target afresh, but the site's total keeps counting.
    first = plan_release(policy, ledger.entries(), privacy, _request("run-2", 1), SECRET)
    assert first.entry.epsilon_run < first.entry.epsilon_total
    assert first.entry.epsilon_total > ledger.entries()[-1].epsilon_total
    with pytest.raises(PrivacyRefused, match="ceiling of 4"):
        _spend_run(policy, ledger, "run-2", privacy)
    assert max(e.epsilon_total for e in ledger.entries()) <= 4.0


@pytest.mark.parametrize("mode", ["none", "central"])
def test_a_site_with_a_ceiling_refuses_training_without_local_dp(mode: str) -> None:
    policy = PrivacyPolicy(max_epsilon=10.0)
    with pytest.raises(PrivacyRefused, match="allows only DP-SGD at the site"):
        plan_release(policy, [], PrivacyConfig(mode=mode), _request(), SECRET)
    planned = plan_release(PrivacyPolicy(), [], PrivacyConfig(mode=mode), _request(), SECRET)
    assert planned.dpsgd is None and math.isinf(planned.entry.epsilon_total)


def test_noise_seeds_depend_on_the_site_secret_and_the_ledger(tmp_path: Path) -> None:
    privacy = PrivacyConfig()
    a = plan_release(PrivacyPolicy(), [], privacy, _request(), SECRET).dpsgd
    b = plan_release(PrivacyPolicy(), [], privacy, _request(), b"other" * 8).dpsgd
    c = plan_release(PrivacyPolicy(), [_entry()], privacy, _request(), SECRET).dpsgd
    assert a is not None and b is not None and c is not None
    assert len({a.noise_seed, b.noise_seed, c.noise_seed}) == 3


def test_default_delta_is_below_one_over_n_and_the_policy_can_set_it() -> None:
    assert PrivacyPolicy().delta_for(200) == pytest.approx(0.1 / 200)
    assert PrivacyPolicy(delta=1e-6).delta_for(200) == 1e-6


def test_privacy_policy_round_trips_through_site_toml(tmp_path: Path) -> None:
    policy = SitePolicy("site-x", privacy=PrivacyPolicy(max_epsilon=5.0, delta=1e-5))
    write_policy(tmp_path, policy)
    assert read_policy(tmp_path) == policy
    (tmp_path / "site.toml").write_text('[site]\nsite_id = "x"\n[privacy]\nmax_epsilon = -1\n')
    with pytest.raises(PolicyError, match=r"site\.toml: max_epsilon must be positive"):
        read_policy(tmp_path)
    (tmp_path / "site.toml").write_text('[site]\nsite_id = "x"\n[privacy]\nmax_eps = 1\n')
    with pytest.raises(PolicyError, match=r"unknown key\(s\) in \[privacy\]: max_eps"):
        read_policy(tmp_path)


# --- the ledger ----------------------------------------------------------------------------


def test_ledger_survives_a_restart_in_order(tmp_path: Path) -> None:
    PrivacyLedger(tmp_path).append(_entry(round_=1))
    PrivacyLedger(tmp_path).append(_entry(round_=2, epsilon=math.inf))
    entries = PrivacyLedger(tmp_path).entries()
    assert [e.round for e in entries] == [1, 2]
    assert math.isinf(entries[1].epsilon_total)


def _ledger_of_three(tmp_path: Path) -> list[str]:
    ledger = PrivacyLedger(tmp_path)
    for round_ in (1, 2, 3):
        ledger.append(_entry(round_=round_, epsilon=float(round_)))
    return (tmp_path / LEDGER_FILE).read_text().splitlines()


def _edit_epsilon(lines: list[str]) -> list[str]:
    record = json.loads(lines[1])
    record["epsilon_total"] = 0.1
    return [lines[0], json.dumps(record, sort_keys=True), lines[2]]


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_edit_epsilon, "line 2: hash mismatch"),
        (lambda lines: [lines[0], lines[2]], "line 2: breaks the chain"),
        (lambda lines: [lines[1], lines[0], lines[2]], "line 1: breaks the chain"),
        (lambda lines: lines[:2], "entries were removed from the end"),
        (lambda lines: [lines[0], "{not json", lines[2]], "line 2: not a log entry"),
    ],
    ids=["edited", "removed", "reordered", "truncated", "garbled"],
)
def test_a_tampered_ledger_is_an_error_never_a_reset(tmp_path: Path, tamper, message: str) -> None:
    lines = _ledger_of_three(tmp_path)
    (tmp_path / LEDGER_FILE).write_text("\n".join(tamper(lines)) + "\n")
    ledger = PrivacyLedger(tmp_path)
    with pytest.raises(LedgerError, match=message):
        ledger.entries()
    with pytest.raises(LedgerError):
        ledger.append(_entry(round_=4))


def test_a_deleted_ledger_is_noticed(tmp_path: Path) -> None:
    _ledger_of_three(tmp_path)
    (tmp_path / LEDGER_FILE).unlink()
    with pytest.raises(LedgerError, match="deleted"):
        PrivacyLedger(tmp_path).entries()
    (tmp_path / HEAD_FILE).unlink()
    assert PrivacyLedger(tmp_path).entries() == []


# --- DP-SGD training and the site's handlers ------------------------------------------------


@pytest.fixture
def site(small_federation: IngestedFederation, tmp_path: Path) -> SiteStore:
    """A private copy of a phantom site store (its ledger is the test's own)."""
    return SiteStore.open(small_federation.fresh_copies(tmp_path)[0])


def _train_content(privacy: PrivacyConfig, model: torch.nn.Module) -> RecordDict:
    config = {
        **to_config(TrainingConfig(local_epochs=1)),
        **to_config(ModelConfig(), MODEL_CONFIG_PREFIX),
        **to_config(privacy, PRIVACY_PREFIX),
        SEED_KEY: 5,
        RUN_ID_KEY: "run-test",
        PLANNED_EPOCHS_KEY: 4,
        "server-round": 1,
    }
    return RecordDict({ARRAYS: ArrayRecord(model.state_dict()), CONFIG: ConfigRecord(config)})


def test_dp_training_returns_the_plain_models_weights_and_records_the_release(
    site: SiteStore,
) -> None:
    model = build_model(ModelConfig(), seed=0)
    reply = train(site, _train_content(PrivacyConfig(target_epsilon=3.0), model), False)
    returned = reply[ARRAYS]
    assert list(returned.keys()) == list(model.state_dict().keys())
    assert not any(key.startswith("_module.") for key in returned)
    before = model.state_dict()["head.weight"]
    assert not torch.equal(returned.to_torch_state_dict()["head.weight"], before)
    metrics = reply["metrics"]
    (entry,) = PrivacyLedger(site.root).entries()
    assert metrics["dp-epsilon"] == entry.epsilon_run <= 3.0
    assert metrics["steps"] == entry.steps
    assert metrics["dp-noise-multiplier"] == entry.noise_multiplier > 0


def test_evaluation_spends_nothing(site: SiteStore) -> None:
    model = build_model(ModelConfig(), seed=0)
    train(site, _train_content(PrivacyConfig(), model), False)
    ledger_bytes = (site.root / LEDGER_FILE).read_bytes()
    content = _train_content(PrivacyConfig(), model)
    evaluate_round(site, content)
    strata = RecordDict(
        {
            CONFIG: ConfigRecord({**dict(content[CONFIG]), TRAIN_SPLIT_MODELS_KEY: ["global"]}),
            MODEL_PREFIX + "global": content[ARRAYS],
        }
    )
    evaluate_strata(site, strata)
    assert (site.root / LEDGER_FILE).read_bytes() == ledger_bytes


def test_a_refused_release_trains_nothing_and_records_nothing(site: SiteStore) -> None:
    write_policy(site.root, replace(site.policy, privacy=PrivacyPolicy(max_epsilon=0.01)))
    store = SiteStore.open(site.root)
    with pytest.raises(PrivacyRefused, match=r"ceiling of 0\.01"):
        train(store, _train_content(PrivacyConfig(), build_model(ModelConfig(), seed=0)), False)
    assert PrivacyLedger(store.root).entries() == []


def test_dp_training_is_reproducible_for_its_seeds(site: SiteStore) -> None:
    data = load_split(site, "train", 64)
    planned = plan_release(
        PrivacyPolicy(), [], PrivacyConfig(), _request(n_train=len(data), epochs=1), SECRET
    )
    weights = []
    for _ in range(2):
        model = build_model(ModelConfig(), seed=0)
        stats = train_model(model, data, TrainingConfig(), 3, epochs=1, dpsgd=planned.dpsgd)
        assert stats.steps == planned.entry.steps
        weights.append(model.state_dict()["head.weight"])
    assert torch.equal(weights[0], weights[1])


def test_a_request_answered_already_gets_the_same_release_and_spends_nothing(
    site: SiteStore,
) -> None:
    """A coordinator that resumes after a crash asks again for the round it lost: the site
    sends what it released then, without training again or spending privacy again."""
    model = build_model(ModelConfig(), seed=0)
    first = train(site, _train_content(PrivacyConfig(target_epsilon=3.0), model), False)
    ledger = (site.root / LEDGER_FILE).read_bytes()
    again = train(site, _train_content(PrivacyConfig(target_epsilon=3.0), model), False)
    assert model_sha256(again[ARRAYS]) == model_sha256(first[ARRAYS])
    assert dict(again[METRICS]) == dict(first[METRICS])
    assert (site.root / LEDGER_FILE).read_bytes() == ledger
    other_model = build_model(ModelConfig(), seed=1)  # another request: a new release
    train(site, _train_content(PrivacyConfig(target_epsilon=3.0), other_model), False)
    assert len(PrivacyLedger(site.root).entries()) == 2
