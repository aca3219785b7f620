"""evidence.json from a run's records: pooling, strata, threshold, cross-site, acceptance."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from task.privacy import PrivacyConfig
from task.wire import histogram_key
from validation.evidence import (
    EvidenceError,
    RunRecords,
    build_evidence,
    load_run,
    validate_evidence,
    write_evidence,
)
from validation.metrics import ScoreHistogram, roc_auc
from validation.summary import format_summary

SITES = {"site-a": ("SIEMENS", "Force"), "site-b": ("GE", "Revolution")}
MODELS = ["global", "local-site-a", "local-site-b", "pooled-centralized"]


def _cases(rng: np.random.Generator, n: int, separation: float) -> tuple[np.ndarray, np.ndarray]:
    labels = (rng.random(n) < 0.4).astype(int)
    logits = rng.normal(0, 1, n) + separation * labels
    return logits, labels


def _histograms(logits: np.ndarray, labels: np.ndarray, split: str, stratum: str) -> dict:
    hist = ScoreHistogram.from_logits(logits, labels)
    return {
        histogram_key(split, stratum, 0): hist.negatives.tolist(),
        histogram_key(split, stratum, 1): hist.positives.tolist(),
    }


def _records(seed: int = 0, with_pooled: bool = True) -> tuple[RunRecords, dict[str, Any]]:
    """Run records of two sites (one scanner each, plus a shared GE model at site-a) and
    the case-level scores behind them."""
    rng = np.random.default_rng(seed)
    separations = {
        "global": 2.5,
        "local-site-a": 1.0,
        "local-site-b": 0.8,
        "pooled-centralized": 2.6,
    }
    aggregates: dict[str, Any] = {}
    truth: dict[str, Any] = {}
    for site, (manufacturer, model) in SITES.items():
        models: dict[str, dict] = {}
        for name, separation in separations.items():
            if name == "pooled-centralized" and not with_pooled:
                continue
            logits, labels = _cases(rng, 60, separation)
            scanners = np.where(np.arange(60) < 40, f"{manufacturer} {model}", "GE Revolution")
            makers = np.array([s.split()[0] for s in scanners])
            hists = _histograms(logits, labels, "test", "site=all")
            for value in sorted(set(makers)):
                mask = makers == value
                hists |= _histograms(logits[mask], labels[mask], "test", f"manufacturer={value}")
            for value in sorted(set(scanners)):
                mask = scanners == value
                hists |= _histograms(logits[mask], labels[mask], "test", f"scanner={value}")
            sexes = np.where(np.arange(60) % 2 == 0, "F", "M")
            for value in ("F", "M"):
                mask = sexes == value
                hists |= _histograms(logits[mask], labels[mask], "test", f"subgroup:sex={value}")
            if name == "global":
                train_logits, train_labels = _cases(rng, 100, separation)
                hists |= _histograms(train_logits, train_labels, "train", "site=all")
                truth[site] = {
                    "logits": logits,
                    "labels": labels,
                    "makers": makers,
                    "sexes": sexes,
                }
            models[name] = hists
        aggregates[site] = {"site": site, "models": models, "suppressed": ["test|scanner=X Y"]}
    run = {
        "run": {
            "id": "r1",
            "created": "2026-01-01T00:00:00+00:00",
            "code_version": "0.1.0",
            "rounds": 3,
            "seed": seed,
            "strategy": {"name": "fedavg"},
            "training": {"local_epochs": 2},
            "privacy": {
                **asdict(PrivacyConfig(mode="none")),
                "guarantee": PrivacyConfig(mode="none").guarantee,
            },
            "data": {"description": "test", "simulated": True},
        },
        "model": {
            "architecture": "arch",
            "config": {},
            "parameters": 10,
            "final_checkpoint": "global-round-003",
        },
        "sites": [
            {
                "id": site,
                "n_train": 100,
                "n_test": 60,
                "n_train_positive": 40,
                "n_test_positive": 24,
                "min_cell_size": 5,
                "scanners": {
                    "A B": {"manufacturer": "A", "model": "B", "n_train": 100, "n_test": 60}
                },
                "deidentification": {
                    "profile": "Basic Application Level Confidentiality Profile",
                    "standard": "DICOM PS3.15 2025b",
                    "options": ["Retain Device Identity Option"],
                    "table_sha256": "cd" * 32,
                    "software": "medfed 0.1.0",
                },
                "modalities": {"CT": 160},
                "body_parts": {"ABDOMEN": 150, "UNKNOWN": 10},
                "study_years": {"first": 2016, "last": 2021, "n": 158},
                "subgroups": {
                    "counts": {
                        "sex": {"F": {"n_train": 52, "n_test": 31}}
                        | ({"M": {"n_train": 48, "n_test": 29}} if site == "site-b" else {})
                    },
                    "suppressed": ["age=90-99", *(["sex=M"] if site == "site-a" else [])],
                },
                "intake": {
                    "sessions": 2,
                    "received": 171,
                    "stored": 160,
                    "already_stored": 4,
                    "quarantined": 7,
                    "failed": 0,
                    "quarantine_reasons": {"no label": 5, "undecodable pixel data": 2},
                },
            }
            for site in SITES
        ],
        "checkpoints": [
            {
                "name": "global-round-003",
                "round": 3,
                "file": "checkpoints/g3.pt",
                "sha256": "ab" * 32,
            }
        ],
        "models": {m: m for m in MODELS if with_pooled or m != "pooled-centralized"},
    }
    rounds = [
        {
            "round": 1,
            "phase": "train",
            "site": "site-a",
            "metrics": {"train-loss": 0.6, "train-seconds": 1.0},
        },
        {"round": 1, "phase": "evaluate", "site": "site-b", "error": "site offline"},
        {"round": 1, "phase": "summary", "seconds": 2.0, "pooled-auc": 0.8},
    ]
    return RunRecords(run, aggregates, rounds), truth


def test_pooled_performance_is_that_of_all_sites_cases_together() -> None:
    records, truth = _records()
    evidence = build_evidence(records)
    logits = np.concatenate([t["logits"] for t in truth.values()])
    labels = np.concatenate([t["labels"] for t in truth.values()])
    pooled = evidence["performance"]["pooled"]
    assert pooled["n"] == 120
    assert pooled["n_pos"] == int(labels.sum())
    assert pooled["tp"] + pooled["fn"] == pooled["n_pos"]
    assert pooled["auc"]["value"] == pytest.approx(roc_auc_score(labels, logits), abs=0.01)
    assert pooled["auc"]["ci_low"] < pooled["auc"]["value"] < pooled["auc"]["ci_high"]
    for site, t in truth.items():
        by_site = evidence["performance"]["by_site"][site]
        assert by_site["n"] == 60
        assert by_site["auc"]["value"] == pytest.approx(
            roc_auc_score(t["labels"], t["logits"]), abs=0.01
        )


def test_manufacturer_strata_pool_across_sites() -> None:
    records, truth = _records()
    evidence = build_evidence(records)
    ge = evidence["performance"]["by_scanner"]["GE"]
    n_ge = sum(int((t["makers"] == "GE").sum()) for t in truth.values())
    assert ge["n"] == n_ge == 80  # 20 at site-a, 60 at site-b
    assert set(evidence["performance"]["by_scanner"]) == {"GE", "SIEMENS"}
    assert set(evidence["performance"]["by_scanner_model"]) == {"GE Revolution", "SIEMENS Force"}


def test_subgroup_strata_pool_across_sites_per_column() -> None:
    records, truth = _records()
    evidence = build_evidence(records)
    by_subgroup = evidence["performance"]["by_subgroup"]
    assert set(by_subgroup) == {"sex"} and set(by_subgroup["sex"]) == {"F", "M"}
    women = by_subgroup["sex"]["F"]
    logits = np.concatenate([t["logits"][t["sexes"] == "F"] for t in truth.values()])
    labels = np.concatenate([t["labels"][t["sexes"] == "F"] for t in truth.values()])
    assert women["n"] == len(labels) == 60
    assert women["auc"]["value"] == pytest.approx(roc_auc_score(labels, logits), abs=0.005)


def test_wide_intervals_are_flagged() -> None:
    evidence = build_evidence(_records()[0])
    women = evidence["performance"]["by_subgroup"]["sex"]["F"]  # 60 cases, 20-odd positive
    assert women["flags"], women
    for flag in women["flags"]:
        metric = women[flag.split(":")[0]]
        assert metric["ci_high"] - metric["ci_low"] > 0.3
    assert not evidence["performance"]["pooled"]["flags"]  # 240 cases


def test_heterogeneity_and_calibration_of_the_global_model() -> None:
    evidence = build_evidence(_records()[0])
    sites = evidence["heterogeneity"]["across_sites"]
    assert set(sites) == {"auc", "sensitivity", "specificity"}
    auc = sites["auc"]
    assert auc["k"] == 2 and [row["name"] for row in auc["forest"]] == ["site-a", "site-b"]
    for row in auc["forest"]:  # each forest row is that site's AUC with its interval
        assert row["estimate"] == pytest.approx(
            evidence["performance"]["by_site"][row["name"]]["auc"]["value"]
        )
    assert 0.0 <= auc["i2"] <= 1.0 and auc["df"] == 1
    (difference,) = evidence["heterogeneity"]["manufacturer_auc_differences"]
    assert (difference["a"], difference["b"]) == ("GE", "SIEMENS")
    scanners = evidence["performance"]["by_scanner"]
    assert difference["difference"] == pytest.approx(
        scanners["GE"]["auc"]["value"] - scanners["SIEMENS"]["auc"]["value"]
    )
    calibration = evidence["calibration"]
    assert set(calibration["by_site"]) == {"site-a", "site-b"}
    pooled = calibration["pooled"]
    assert pooled["n"] == evidence["performance"]["pooled"]["n"]
    assert 0.0 <= pooled["ece"] <= 1.0 and 0.0 <= pooled["brier"] <= 1.0
    assert pooled["slope"]["value"] is not None


def test_a_manufacturer_too_small_for_delong_is_left_out_with_its_reason() -> None:
    records, _ = _records()
    tiny = ScoreHistogram.from_logits(
        np.array([2.0, -1, -1.5, -2, 0, 0.5, -0.5, 1, -3]), np.array([1, 0, 0, 0, 0, 0, 0, 0, 0])
    )
    for aggregate in records.aggregates.values():
        for histograms in aggregate["models"].values():
            histograms[histogram_key("test", "manufacturer=Tiny", 0)] = tiny.negatives.tolist()
            histograms[histogram_key("test", "manufacturer=Tiny", 1)] = tiny.positives.tolist()
            break  # the global model only, at one site
        break
    evidence = build_evidence(records)
    pairs = evidence["heterogeneity"]["manufacturer_auc_differences"]
    assert [(p["a"], p["b"]) for p in pairs] == [("GE", "SIEMENS")]
    excluded = evidence["heterogeneity"]["across_manufacturers"]["auc"]["excluded"]
    assert excluded.get("Tiny")


def test_without_manufacturer_strata_there_is_nothing_to_compare() -> None:
    records, _ = _records()
    for aggregate in records.aggregates.values():
        for histograms in aggregate["models"].values():
            for key in [k for k in histograms if "|manufacturer=" in k]:
                del histograms[key]
    evidence = build_evidence(records)  # all withheld by the sites, say
    assert evidence["heterogeneity"]["across_manufacturers"] == {}
    assert evidence["heterogeneity"]["manufacturer_auc_differences"] == []
    assert evidence["heterogeneity"]["across_sites"]["auc"]["k"] == 2


def test_threshold_is_fixed_on_training_data_only() -> None:
    records, _ = _records()
    first = build_evidence(records)["operating_point"]["threshold"]
    # Change every test histogram: the threshold must not move.
    for aggregate in records.aggregates.values():
        for key, counts in aggregate["models"]["global"].items():
            if key.startswith("test|"):
                aggregate["models"]["global"][key] = list(reversed(counts))
    assert build_evidence(records)["operating_point"]["threshold"] == first


def test_cross_site_matrix_rows_are_models_and_columns_sites() -> None:
    records, _ = _records()
    evidence = build_evidence(records)
    cross = evidence["cross_site"]
    assert cross["models"] == MODELS
    assert cross["sites"] == list(SITES)
    assert len(cross["auc"]) == len(MODELS) and all(len(r) == 2 for r in cross["auc"])
    site_a = records.aggregates["site-a"]["models"]["local-site-b"]
    hist = ScoreHistogram(positives=site_a["test|site=all|1"], negatives=site_a["test|site=all|0"])
    assert cross["auc"][2][0] == pytest.approx(roc_auc(hist))
    # each cell's interval in matrices of the same shape, as the baselines state it
    assert (
        cross["ci_low"][2][0]
        == evidence["baselines"]["local_only"]["site-b"]["by_site"]["site-a"]["ci_low"]
    )
    assert cross["ci_high"][2][0] > cross["auc"][2][0] > cross["ci_low"][2][0]
    assert cross["method"] == evidence["performance"]["pooled"]["auc"]["method"]


def test_roc_curves_of_the_global_model_pooled_and_per_site() -> None:
    records, _ = _records()
    evidence = build_evidence(records)
    roc, performance = evidence["roc"], evidence["performance"]
    assert roc["pooled"]["auc"] == pytest.approx(performance["pooled"]["auc"]["value"])
    assert roc["pooled"]["n"] == performance["pooled"]["n"]
    assert set(roc["by_site"]) == set(SITES)
    for site, curve in roc["by_site"].items():
        assert curve["auc"] == pytest.approx(performance["by_site"][site]["auc"]["value"])
        assert (curve["fpr"][0], curve["tpr"][-1]) == (0.0, 1.0)
    validate_evidence(evidence)


def test_an_auc_that_is_not_defined_is_a_metric_with_its_reason() -> None:
    records, _ = _records()
    for key in ("test|site=all|1", "test|manufacturer=A|1", "test|scanner=A B|1"):
        counts = records.aggregates["site-a"]["models"]["local-site-b"].get(key)
        if counts is not None:
            counts[:] = [0] * len(counts)  # site-a's test data: no positive case
    evidence = build_evidence(records)
    cell = evidence["baselines"]["local_only"]["site-b"]["by_site"]["site-a"]
    assert cell == {
        "value": None,
        "ci_low": None,
        "ci_high": None,
        "method": "not defined: no positive cases",
    }
    row = evidence["cross_site"]["models"].index("local-site-b")
    assert evidence["cross_site"]["auc"][row][0] is None
    assert evidence["cross_site"]["ci_low"][row][0] is None
    validate_evidence(evidence)


#: The default plan's criteria on the global model against its baselines (in this order).
BASELINE_CRITERIA = (
    "pooled-auc",
    "relative-to-pooled-centralized",
    "beats-local-only-on-unseen-sites",
)


def _baseline_entries(evidence: dict[str, Any]) -> list[dict[str, Any]]:
    return [next(e for e in evidence["acceptance"] if e["id"] == c) for c in BASELINE_CRITERIA]


def test_acceptance_compares_global_with_baselines() -> None:
    records, _ = _records()
    evidence = build_evidence(records)
    assert evidence["acceptance_plan"]["name"] == "medfed default"
    for entry in evidence["acceptance"]:
        assert set(entry) >= {"criterion", "scope", "value", "threshold", "passed"}
    # The global model separates far better than either local model in this record.
    assert all(entry["passed"] for entry in _baseline_entries(evidence))
    comparison = evidence["baselines"]["unseen_site_comparison"]
    # With two sites, the sites local-site-a never saw are site-b alone.
    assert comparison["site-a"]["unseen_sites"] == ["site-b"]
    assert comparison["site-a"]["local_only_auc"] == evidence["cross_site"]["auc"][1][1]
    assert comparison["site-a"]["global_auc"] == evidence["cross_site"]["auc"][0][1]
    unseen = _baseline_entries(evidence)[2]
    margins = [r["global_auc"] - r["local_only_auc"] for r in comparison.values()]
    assert unseen["value"] == pytest.approx(sum(margins) / 2)


def test_a_global_model_worse_than_local_ones_fails_acceptance() -> None:
    records, _ = _records()
    for aggregate in records.aggregates.values():
        models = aggregate["models"]
        models["global"] = {
            key: (counts if key.startswith("train|") else models["local-site-b"][key])
            for key, counts in models["global"].items()
        }
        models["local-site-b"], models["local-site-a"] = (
            models["pooled-centralized"],
            models["pooled-centralized"],
        )
    evidence = build_evidence(records)
    assert [e["passed"] for e in _baseline_entries(evidence)] == [False, False, False]


def test_without_pooled_baseline_that_criterion_is_not_evaluated() -> None:
    records, _ = _records(with_pooled=False)
    evidence = build_evidence(records)
    assert "pooled_centralized" not in evidence["baselines"]
    ratio = next(e for e in evidence["acceptance"] if "pooled-centralized" in e["criterion"])
    assert ratio["passed"] is None and "no pooled-centralized" in ratio["reason"]


def test_records_of_suppression_failures_and_rounds_reach_the_evidence() -> None:
    records, _ = _records()
    records.aggregates["site-b"] = {"site": "site-b", "error": "site offline"}
    records.rounds.append(
        {"round": 0, "phase": "local-only", "site": "site-b", "error": "site offline"}
    )
    evidence = build_evidence(records)
    assert {"site": "site-a", "stratum": "test|scanner=X Y"} in evidence["suppressed"]
    assert evidence["site_failures"] == [
        {"site": "site-b", "stage": "evaluate", "round": 1, "reason": "site offline"},
        # round 0: the local-only baseline, before the federated rounds
        {"site": "site-b", "stage": "local-only", "round": 0, "reason": "site offline"},
        {
            "site": "site-b",
            "stage": "cross-site evaluation",
            "round": None,
            "reason": "site offline",
        },
    ]
    assert evidence["performance"]["pooled"]["n"] == 60  # site-b reported nothing
    assert evidence["rounds"][0]["sites"]["site-b"] == {"evaluate_error": "site offline"}
    assert evidence["rounds"][0]["pooled_auc"] == 0.8
    assert evidence["model"]["sha256"] == "ab" * 32


def write_run_records(records: RunRecords, run_dir: Path) -> None:
    """Lay ``records`` out in ``run_dir`` as a run does (run.json, site-aggregates/,
    rounds.jsonl)."""
    (run_dir / "site-aggregates").mkdir()
    (run_dir / "run.json").write_text(json.dumps(records.run))
    for site, aggregate in records.aggregates.items():
        (run_dir / "site-aggregates" / f"{site}.json").write_text(json.dumps(aggregate))
    (run_dir / "rounds.jsonl").write_text("\n".join(json.dumps(r) for r in records.rounds))


def test_write_and_load_round_trip(tmp_path: Path) -> None:
    records, _ = _records()
    write_run_records(records, tmp_path)
    path = write_evidence(tmp_path)
    evidence = json.loads(path.read_text())
    for key in (
        "schema_version",
        "run",
        "model",
        "sites",
        "performance",
        "cross_site",
        "baselines",
        "acceptance",
    ):
        assert key in evidence
    assert load_run(tmp_path).run == records.run


def test_incomplete_run_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(EvidenceError, match=r"rounds\.jsonl"):
        load_run(tmp_path)


def test_validation_never_imports_flower_or_torch() -> None:
    """DESIGN.md: validation is pure functions over data."""
    import subprocess
    import sys

    code = (
        "import sys, validation.evidence, validation.summary, validation.metrics, "
        "validation.heterogeneity, validation.calibration, validation.report.build;"
        "print(sorted({'flwr', 'torch', 'ray'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_terminal_summary_shows_subgroups_and_heterogeneity() -> None:
    summary = format_summary(build_evidence(_records()[0]))
    assert "sex F" in summary and "sex M" in summary
    assert "Between-site heterogeneity of the AUC: I2" in summary
    assert "Cross-site AUC" in summary and "PASS" in summary
