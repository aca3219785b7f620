"""End to end on Flower's simulation runtime (Ray): phantom sites -> federation -> evidence.

These tests start the real runtime; each run takes some seconds to start Ray.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import IngestedFederation
from pydicom.multival import MultiValue

from server.server_app import DataProvenance, FederationConfig
from server.sites import FederationError
from server.strategies import StrategyConfig
from simulations.federation import run_simulated_federation
from site_client.ledger import PrivacyLedger
from site_client.policy import CoordinatorPolicy, PrivacyPolicy, write_policy
from site_client.store import SiteStore
from task.audit import AUDIT_FILE, AuditEvent, AuditLog, verify_audit_log
from task.model import ModelConfig, build_model
from task.privacy import PrivacyConfig
from task.signing import write_signing_key
from task.training import TrainingConfig
from task.wire import (
    EVALUATE_METRIC_KEYS,
    HISTOGRAMS_PREFIX,
    MSG_EVALUATE_STRATA,
    MSG_TRAIN,
    MSG_TRAIN_LOCAL,
    N_SCORE_BINS,
    PROFILE_KEYS,
    SUPPRESSED,
    TRAIN_METRIC_KEYS,
    parse_histogram_key,
)

pytestmark = pytest.mark.slow

ROUNDS = 2
#: Attributes whose values identify a patient, a visit, a person or an institution.
PHI_KEYWORDS = {
    "PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "InstitutionAddress",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "AccessionNumber",
    "StudyID", "RequestedProcedureID", "ScheduledProcedureStepID", "OtherPatientIDs",
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
    "ReferencedSOPInstanceUID", "MediaStorageSOPInstanceUID",
}  # fmt: skip


def _config(run_dir: Path, **changes: Any) -> FederationConfig:
    settings: dict[str, Any] = {
        "run_dir": run_dir,
        "rounds": ROUNDS,
        "seed": 11,
        "training": TrainingConfig(local_epochs=1),
        "provenance": DataProvenance("phantoms for tests", simulated=True),
    }
    return FederationConfig(**(settings | changes))


@dataclass(frozen=True)
class SignedRun:
    """A run whose coordinator signed every model, and the sites that checked them."""

    run_dir: Path
    site_dirs: list[Path]


@pytest.fixture(scope="module")
def signed_run(
    small_federation: IngestedFederation, tmp_path_factory: pytest.TempPathFactory
) -> SignedRun:
    """The module's federation: the coordinator signs its models; each site's policy names
    the coordinator's public key, so it checks every model before loading it."""
    run = tmp_path_factory.mktemp("run")
    keys = tmp_path_factory.mktemp("keys")
    write_signing_key(keys / "model-signing.pem", keys / "model-signing.pub")
    sites = small_federation.fresh_copies(tmp_path_factory.mktemp("sites"))
    for site in sites:
        shutil.copy(keys / "model-signing.pub", site / "coordinator.pub")
        policy = SiteStore.open(site).policy
        write_policy(site, replace(policy, coordinator=CoordinatorPolicy("coordinator.pub")))
    config = _config(run, signing_key=keys / "model-signing.pem")
    run_simulated_federation(sites, config, progress=lambda _: None)
    return SignedRun(run, sites)


@pytest.fixture(scope="module")
def run_dir(signed_run: SignedRun) -> Path:
    return signed_run.run_dir


def _evidence(run: Path) -> dict[str, Any]:
    return json.loads((run / "evidence.json").read_text())


def _phi_values(phantom_dirs: list[Path]) -> set[str]:
    """Identifying values of every original DICOM file, including private and nested ones,
    and the folder names of the exports (which hold patient names)."""
    values: set[str] = set()
    for phantom in phantom_dirs:
        for path in (phantom / "dicom").rglob("*.dcm"):
            ds = pydicom.dcmread(path)
            values.update(p for p in path.relative_to(phantom / "dicom").parts[:-1])
            for element in [*ds.file_meta.iterall(), *ds.iterall()]:
                if element.VR == "SQ" or element.value in (None, ""):
                    continue
                if element.keyword in PHI_KEYWORDS or element.tag.is_private:
                    value = element.value
                    items = value if isinstance(value, list | MultiValue) else [value]
                    values.update(str(v) for v in items)
    return {v for v in values if len(v) >= 6}


def test_evidence_holds_the_design_contract(
    run_dir: Path, small_federation: IngestedFederation
) -> None:
    evidence = _evidence(run_dir)
    assert evidence["schema_version"]
    run = evidence["run"]
    assert {"id", "created", "code_version", "strategy", "rounds", "seed"} <= set(run)
    datetime.fromisoformat(run["created"])
    assert (run["strategy"], run["rounds"], run["seed"]) == ("fedavg", ROUNDS, 11)
    assert run["data"]["simulated"] is True
    model = evidence["model"]
    assert model["parameters"] == sum(p.numel() for p in build_model(ModelConfig()).parameters())
    sites = {s["id"]: s for s in evidence["sites"]}
    assert set(sites) == {d.name for d in small_federation.site_dirs}
    for site in sites.values():
        assert site["n_train"] + site["n_test"] == 48
        assert sum(site["scanners"].values()) == 48
        assert set(site["privacy"]) >= {
            "epsilon",
            "delta",
            "noise_multiplier",
            "sample_rate",
            "steps",
            "accountant",
        }
    performance = evidence["performance"]
    assert set(performance["by_site"]) == set(sites)
    assert performance["pooled"]["n"] == sum(s["n_test"] for s in sites.values())
    for scope in [
        performance["pooled"],
        *performance["by_site"].values(),
        *performance["by_scanner"].values(),
    ]:
        assert {"n", "n_pos", "tp", "fp", "tn", "fn", "threshold"} <= set(scope)
        assert scope["tp"] + scope["fn"] + scope["tn"] + scope["fp"] == scope["n"]
        for metric in ("auc", "sensitivity", "specificity"):
            assert set(scope[metric]) == {"value", "ci_low", "ci_high", "method"}
    cross = evidence["cross_site"]
    assert cross["sites"] == sorted(sites)
    assert cross["models"][0] == "global"
    assert {f"local-{s}" for s in sites} | {"pooled-centralized"} <= set(cross["models"])
    assert len(cross["auc"]) == len(cross["models"])
    assert set(evidence["baselines"]["local_only"]) == set(sites)
    assert evidence["baselines"]["pooled_centralized"]["auc"]["value"] is not None
    assert all(
        {"criterion", "scope", "value", "threshold", "passed"} <= set(a)
        for a in evidence["acceptance"]
    )


def test_every_round_has_a_checkpoint_with_its_sha256(run_dir: Path) -> None:
    registry = json.loads((run_dir / "checkpoints" / "registry.json").read_text())
    rounds = sorted(e["round"] for e in registry if e["name"].startswith("global-round-"))
    assert rounds == list(range(ROUNDS + 1))
    for entry in registry:
        digest = hashlib.sha256((run_dir / entry["file"]).read_bytes()).hexdigest()
        assert digest == entry["sha256"], entry["name"]
    evidence = _evidence(run_dir)
    final = hashlib.sha256((run_dir / evidence["model"]["checkpoint"]).read_bytes()).hexdigest()
    assert evidence["model"]["sha256"] == final
    assert evidence["model"]["checkpoint"].endswith(f"global-round-{ROUNDS:03d}.pt")


def test_each_round_records_each_sites_training_and_evaluation(run_dir: Path) -> None:
    evidence = _evidence(run_dir)
    site_ids = {s["id"] for s in evidence["sites"]}
    assert [r["round"] for r in evidence["rounds"]] == list(range(1, ROUNDS + 1))
    for record in evidence["rounds"]:
        assert set(record["sites"]) == site_ids
        for site in record["sites"].values():
            assert site["train_loss"] > 0 and site["test_loss"] > 0
        assert 0.0 <= record["pooled_auc"] <= 1.0


def test_nothing_identifying_crossed_the_wire(
    run_dir: Path, small_federation: IngestedFederation
) -> None:
    """Every reply a site sent is in the wire log: it holds only the contract's records,
    and no identifying value of the original files appears anywhere in the run."""
    phi = _phi_values(small_federation.phantom_dirs)
    assert len(phi) > 50  # the phantoms do carry PHI to leak
    model_shapes = {k: list(v.shape) for k, v in build_model(ModelConfig()).state_dict().items()}
    replies = [json.loads(line) for line in (run_dir / "wire.jsonl").read_text().splitlines()]
    replies = [r for r in replies if r["direction"] == "received"]
    assert {r["message_type"] for r in replies} == {
        "query.profile",
        "train.local",
        "train",
        "evaluate",
        "evaluate.strata",
    }
    for reply in replies:
        assert "error" not in reply, reply
        records = reply["records"]
        kind = reply["message_type"]
        if kind == "query.profile":
            assert set(records) == {"profile"} and set(records["profile"]["values"]) <= PROFILE_KEYS
        elif kind.startswith("train"):
            assert set(records) == {"arrays", "metrics"}
            assert records["arrays"]["shapes"] == model_shapes
            assert set(records["metrics"]["values"]) <= TRAIN_METRIC_KEYS
        elif kind == "evaluate":
            assert set(records) == {"metrics"}
            assert set(records["metrics"]["values"]) <= EVALUATE_METRIC_KEYS
        else:
            for name, record in records.items():
                if name == SUPPRESSED:
                    continue
                assert name.startswith(HISTOGRAMS_PREFIX)
                for key, counts in record["values"].items():
                    parse_histogram_key(key)
                    assert len(counts) == N_SCORE_BINS and all(isinstance(c, int) for c in counts)
    for path in run_dir.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl"):
            text = path.read_text()
            leaked = sorted(v for v in phi if v in text)
            assert not leaked, f"{path.name} holds {leaked[:5]}"


def test_models_are_signed_and_both_sides_audit_them(
    signed_run: SignedRun, small_federation: IngestedFederation
) -> None:
    """The coordinator's trail and each site's agree on every model that crossed the wire;
    every model a site loaded was signed; the trails are intact and hold no PHI."""
    coordinator = AuditLog(signed_run.run_dir / AUDIT_FILE).entries()
    events = [e.event for e in coordinator]
    assert events[0] == AuditEvent.RUN_STARTED and events[-1] == AuditEvent.RUN_FINISHED
    assert events.count(AuditEvent.SITE_JOINED) == 2
    assert events.count(AuditEvent.ROUND_FINISHED) == ROUNDS
    sent = [e for e in coordinator if e.event == AuditEvent.MODEL_SENT]
    assert sent and all(e.details["signed"] for e in sent)
    sent_hashes = {e.details["sha256"] for e in sent}
    received_hashes = {
        e.details["sha256"] for e in coordinator if e.event == AuditEvent.MODEL_RECEIVED
    }
    phi = _phi_values(small_federation.phantom_dirs)
    for site_dir in signed_run.site_dirs:
        site = SiteStore.open(site_dir).site_id
        entries = AuditLog.in_folder(site_dir).entries()
        loaded = [e for e in entries if e.event == AuditEvent.MODEL_RECEIVED]
        assert loaded and all(e.details["signed"] for e in loaded)
        assert {e.details["sha256"] for e in loaded} <= sent_hashes
        returned = {e.details["sha256"] for e in entries if e.event == AuditEvent.MODEL_SENT}
        assert len(returned) == ROUNDS + 1 and returned <= received_hashes  # + local-only
        spent = [e for e in entries if e.event == AuditEvent.EPSILON_SPENT]
        assert len(spent) == ROUNDS + 1 and spent[-1].details["epsilon_run"] > 0
        assert all(e.actor == site and e.time for e in entries)
        # the coordinator recorded where the site's trail stood when it joined
        joined = next(
            e
            for e in coordinator
            if e.event == AuditEvent.SITE_JOINED and e.details["site"] == site
        )
        assert joined.details["site_audit_entries"] == 0  # a fresh site: an empty trail
        assert verify_audit_log(site_dir).entries == len(entries)
        text = (site_dir / AUDIT_FILE).read_text()
        assert not [v for v in phi if v in text]


def test_site_stores_hold_no_identifying_values(small_federation: IngestedFederation) -> None:
    phi = _phi_values(small_federation.phantom_dirs)
    for site_dir in small_federation.site_dirs:
        store = SiteStore.open(site_dir)
        manifest = " ".join(str(record) for record in store.read_manifest())
        names = " ".join(p.name for p in (site_dir / "store").rglob("*"))
        assert not [v for v in phi if v in manifest or v in names]


def test_same_seed_gives_the_same_metrics(
    run_dir: Path, small_federation: IngestedFederation, tmp_path: Path
) -> None:
    """Fresh stores: the DP noise a site draws depends on its ledger, so that a second run
    on the same store never reuses the first run's noise."""
    again = tmp_path / "again"
    sites = small_federation.fresh_copies(tmp_path / "sites")
    run_simulated_federation(sites, _config(again), progress=lambda _: None)
    first, second = _evidence(run_dir), _evidence(again)
    for key in ("performance", "cross_site", "baselines", "acceptance", "operating_point"):
        assert first[key] == second[key], key
    assert [r["pooled_auc"] for r in first["rounds"]] == [r["pooled_auc"] for r in second["rounds"]]
    assert first["model"]["sha256"] == second["model"]["sha256"]


@pytest.mark.parametrize("strategy", ["fedprox", "fedadam"])
def test_other_strategies_run_on_the_runtime(
    strategy: str, small_federation: IngestedFederation, tmp_path: Path
) -> None:
    config = _config(
        tmp_path / strategy, rounds=1, strategy=StrategyConfig(name=strategy), local_baselines=False
    )
    sites = small_federation.fresh_copies(tmp_path / "sites")
    result = run_simulated_federation(sites, config, pooled_baseline=False, progress=lambda _: None)
    evidence = json.loads(result.evidence.read_text())
    assert evidence["run"]["strategy"] == strategy
    assert evidence["cross_site"]["models"] == ["global"]
    assert evidence["performance"]["pooled"]["auc"]["value"] is not None
    sent = [
        json.loads(line) for line in (tmp_path / strategy / "wire.jsonl").read_text().splitlines()
    ]
    assert sent  # the run went through the wire


def test_a_broken_site_is_left_out_with_its_reason_and_the_federation_goes_on(
    small_federation: IngestedFederation, tmp_path: Path
) -> None:
    site_dirs = small_federation.fresh_copies(tmp_path)
    broken = SiteStore.open(site_dirs[1])
    train_case = next(r for r in broken.read_manifest() if r.split == "train")
    (broken.cases_dir / f"{train_case.case_id}.npy.enc").unlink()

    config = _config(tmp_path / "run", rounds=1)
    result = run_simulated_federation(
        site_dirs, config, pooled_baseline=False, progress=lambda _: None
    )
    evidence = json.loads(result.evidence.read_text())
    failures = {(f["site"], f["stage"]) for f in evidence["site_failures"]}
    # Every stage that needs the training split fails at the broken site, with its reason.
    assert failures == {
        (broken.site_id, "local-only"),
        (broken.site_id, "train"),
        (broken.site_id, "cross-site evaluation"),
    }
    assert all("damaged" in f["reason"] for f in evidence["site_failures"])
    healthy = site_dirs[0].name
    round_one = evidence["rounds"][0]["sites"]
    assert round_one[healthy]["train_loss"] > 0
    assert "train_error" in round_one[broken.site_id]
    # Its test split is intact: the per-round evaluation of the global model still works.
    assert round_one[broken.site_id]["test_loss"] > 0
    assert set(evidence["performance"]["by_site"]) == {healthy}
    assert evidence["cross_site"]["models"] == ["global", f"local-{healthy}"]


def test_a_site_over_its_ceiling_is_skipped_and_a_spent_budget_refuses_the_next_run(
    small_federation: IngestedFederation, tmp_path: Path
) -> None:
    site_dirs = small_federation.fresh_copies(tmp_path)
    capped = SiteStore.open(site_dirs[0])
    write_policy(capped.root, replace(capped.policy, privacy=PrivacyPolicy(max_epsilon=0.05)))
    privacy = PrivacyConfig(target_epsilon=3.0)
    config = _config(tmp_path / "run", rounds=2, privacy=privacy)
    result = run_simulated_federation(
        site_dirs, config, pooled_baseline=False, progress=lambda _: None
    )
    evidence = json.loads(result.evidence.read_text())
    refusals = evidence["privacy_refusals"]
    # Refused its local-only baseline and round 1, then was asked no more.
    assert [(r["site"], r["stage"], r["round"]) for r in refusals] == [
        (capped.site_id, "local-only", 0),  # round 0: before the federated rounds
        (capped.site_id, "train", 1),
    ]
    assert all("ceiling of 0.05" in r["reason"] for r in refusals)
    assert evidence["site_failures"] == []
    sites = {s["id"]: s["privacy"] for s in evidence["sites"]}
    assert sites[capped.site_id]["epsilon"] is None
    other = site_dirs[1].name
    assert sites[other]["epsilon"] <= 3.0
    assert sites[other]["independent_check"]["agrees"]
    # The capped site is still evaluated (evaluation spends no budget).
    assert capped.site_id in evidence["performance"]["by_site"]
    assert PrivacyLedger(capped.root).entries() == []

    # The other site's ceiling is what it has now spent: the next run is refused outright.
    spent = PrivacyLedger(site_dirs[1]).entries()[-1].epsilon_total
    store = SiteStore.open(site_dirs[1])
    write_policy(store.root, replace(store.policy, privacy=PrivacyPolicy(max_epsilon=spent)))
    with pytest.raises(FederationError, match=r"every site would refuse to train: .*ceiling"):
        run_simulated_federation(
            site_dirs, replace(config, run_dir=tmp_path / "again"), progress=lambda _: None
        )


def test_central_dp_is_accounted_at_the_coordinator_and_labelled_as_such(
    small_federation: IngestedFederation, tmp_path: Path
) -> None:
    site_dirs = small_federation.fresh_copies(tmp_path)
    privacy = PrivacyConfig(mode="central", target_epsilon=5.0, clipping_norm=5.0)
    config = _config(tmp_path / "run", rounds=2, privacy=privacy)
    result = run_simulated_federation(
        site_dirs, config, pooled_baseline=False, progress=lambda _: None
    )
    evidence = json.loads(result.evidence.read_text())
    central = evidence["privacy"]
    assert central["mode"] == "central"
    assert "site-level" in central["guarantee"] and "coordinator" in central["guarantee"]
    assert [h["round"] for h in central["history"]] == [1, 2]
    assert 4.9 <= central["epsilon"] <= 5.0
    assert central["history"][0]["epsilon"] < central["epsilon"]
    # No local-only models: they would reach the other sites with no noise at all.
    assert evidence["cross_site"]["models"] == ["global"]
    for site in evidence["sites"]:
        assert site["privacy"]["epsilon"] is None
        assert "central DP at the coordinator" in site["privacy"]["mechanism"]
    # The sites trained without DP-SGD: their ledgers say so (unbounded record-level loss).
    for site_dir in site_dirs:
        entries = PrivacyLedger(site_dir).entries()
        assert [e.noise_multiplier for e in entries] == [0.0, 0.0]


def test_a_held_out_site_trains_nothing_and_is_tested_as_external_data(
    small_federation: IngestedFederation, tmp_path: Path
) -> None:
    sites = small_federation.fresh_copies(tmp_path / "sites")
    trained, held = (SiteStore.open(d) for d in sites)
    run = tmp_path / "run"
    config = _config(run, holdout_sites=(held.site_id,), strategy=StrategyConfig(min_sites=1))
    run_simulated_federation(sites, config, progress=lambda _: None)

    evidence = _evidence(run)
    assert evidence["run"]["holdout_sites"] == [held.site_id]
    external = evidence["external_validation"]
    n_test = sum(r.split == "test" for r in held.read_manifest())
    assert external["sites"] == [held.site_id]
    assert external["by_site"][held.site_id]["n"] == external["pooled"]["n"] == n_test
    # Its training split was used for nothing, the threshold included.
    n_train = sum(r.split == "train" for r in trained.read_manifest())
    assert evidence["operating_point"]["n_train_cases"] == n_train
    wire = [json.loads(line) for line in (run / "wire.jsonl").read_text().splitlines()]
    sent = {
        w["message_type"] for w in wire if w["site"] == held.site_id and w["direction"] == "sent"
    }
    assert MSG_TRAIN not in sent and MSG_TRAIN_LOCAL not in sent
    assert MSG_EVALUATE_STRATA in sent
    assert f"local-{held.site_id}" not in evidence["cross_site"]["models"]
    assert not PrivacyLedger(held.root).entries()
    assert PrivacyLedger(trained.root).entries()


def test_an_evaluation_only_job_tests_a_frozen_model_and_trains_nothing(
    run_dir: Path, small_federation: IngestedFederation, tmp_path: Path
) -> None:
    trained = _evidence(run_dir)
    checkpoint = run_dir / trained["model"]["checkpoint"]
    sites = small_federation.fresh_copies(tmp_path / "sites")
    run = tmp_path / "validate"
    threshold = trained["operating_point"]["threshold"]
    config = FederationConfig(
        run_dir=run,
        privacy=PrivacyConfig.for_epsilon(float("inf")),
        frozen_model=checkpoint,
        operating_threshold=threshold,
    )
    run_simulated_federation(sites, config, pooled_baseline=False, progress=lambda _: None)

    evidence = _evidence(run)
    assert evidence["run"]["evaluation_only"] is True
    assert evidence["run"]["rounds"] == 0 and evidence["rounds"] == []
    assert evidence["model"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert evidence["cross_site"]["models"] == ["global"]
    # The same model, threshold and test data: the same results as in the training run.
    assert evidence["operating_point"]["threshold"] == pytest.approx(threshold)
    for scope in ("pooled",):
        assert evidence["performance"][scope]["auc"] == trained["performance"][scope]["auc"]
        assert evidence["performance"][scope]["tp"] == trained["performance"][scope]["tp"]
    assert not any(PrivacyLedger(d).entries() for d in sites)
    wire = [json.loads(line) for line in (run / "wire.jsonl").read_text().splitlines()]
    assert not {w["message_type"] for w in wire} & {MSG_TRAIN, MSG_TRAIN_LOCAL}


def test_the_runs_evidence_satisfies_the_json_schema(run_dir: Path) -> None:
    """validation/evidence.schema.json holds for a real run's evidence.json, as written."""
    from validation.evidence import validate_evidence

    validate_evidence(_evidence(run_dir))


def test_each_site_says_how_its_cases_were_de_identified(run_dir: Path) -> None:
    for site in _evidence(run_dir)["sites"]:
        method = site["deidentification"]
        assert method["profile"] == "Basic Application Confidentiality Profile"
        assert "Retain Device Identity Option" in method["options"]
        assert len(method["table_sha256"]) == 64 and method["software"].startswith("medfed ")
