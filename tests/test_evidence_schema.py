"""evidence.json has a JSON Schema in the repository, and every written evidence satisfies it."""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from test_evidence import _records

import validation.evidence as evidence_module
from task.privacy import PrivacyConfig
from validation.evidence import (
    EVIDENCE_FILE,
    EvidenceError,
    build_evidence,
    evidence_schema,
    validate_evidence,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = ROOT / "validation" / "evidence.schema.json"


def _evidence(**run_changes: Any) -> dict[str, Any]:
    """Evidence of `test_evidence._records`, as written to disk (JSON round trip)."""
    records, _ = _records()
    records.run["run"].update(run_changes)
    return json.loads(json.dumps(build_evidence(records)))


def _schema_error(document: dict[str, Any]) -> str:
    with pytest.raises(EvidenceError) as caught:
        validate_evidence(document)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_the_schema_is_a_valid_draft_2020_12_schema_shipped_with_the_package() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert evidence_schema() == schema
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "evidence.schema.json" in pyproject["tool"]["setuptools"]["package-data"]["validation"]
    assert any(d.startswith("jsonschema") for d in pyproject["project"]["dependencies"])


def test_the_schema_requires_the_design_contract() -> None:
    schema = evidence_schema()
    design = {"schema_version", "run", "model", "sites", "performance", "cross_site"}
    assert design | {"baselines", "acceptance"} <= set(schema["required"])
    properties = schema["properties"]
    assert {"id", "created", "code_version", "strategy", "rounds", "seed"} <= set(
        properties["run"]["required"]
    )
    assert {"architecture", "parameters", "sha256", "checkpoint"} <= set(
        properties["model"]["required"]
    )
    assert {"pooled", "by_site", "by_scanner"} <= set(properties["performance"]["required"])
    assert set(schema["$defs"]["metric"]["required"]) == {"value", "ci_low", "ci_high", "method"}
    assert schema["$defs"]["metric"]["additionalProperties"] is False
    assert {"n", "n_pos", "tp", "fp", "tn", "fn", "threshold"} <= set(
        schema["$defs"]["scope"]["required"]
    )


def test_evidence_built_from_records_satisfies_the_schema() -> None:
    validate_evidence(_evidence())


def test_the_schema_alone_checks_evidence_without_medfed() -> None:
    """What a report or another tool can do with the file and jsonschema only."""
    validator = Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    assert not list(validator.iter_errors(_evidence()))
    assert list(validator.iter_errors({"schema_version": "2.0"}))


def test_a_held_out_site_and_local_dp_records_satisfy_the_schema() -> None:
    records, _ = _records()
    privacy = PrivacyConfig(mode="local")
    records.run["run"]["privacy"] = {**asdict(privacy), "guarantee": privacy.guarantee}
    records.run["run"]["holdout_sites"] = ["site-b"]
    records.rounds.append(
        {
            "round": 1,
            "phase": "train",
            "site": "site-a",
            "metrics": {
                "train-loss": 0.5,
                "train-seconds": 1.0,
                "steps": 20,
                "dp-epsilon": 2.0,
                "dp-epsilon-total": 2.0,
                "dp-delta": 1e-3,
                "dp-noise-multiplier": 1.1,
                "dp-sample-rate": 0.1,
                "dp-max-grad-norm": 1.0,
            },
        }
    )
    evidence = json.loads(json.dumps(build_evidence(records)))
    assert evidence["external_validation"]["pooled"] is not None
    assert evidence["sites"][0]["privacy"]["epsilon"] == 2.0
    validate_evidence(evidence)


def test_new_sections_and_keys_do_not_break_validation() -> None:
    evidence = _evidence()
    evidence["a_future_section"] = {"anything": [1, 2]}
    evidence["run"]["new_key"] = "x"
    evidence["performance"]["by_age_band"] = {}
    evidence["performance"]["pooled"]["brier"] = 0.1
    validate_evidence(evidence)


def _set(path: tuple[str | int, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        target = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _delete(*path: str | int) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        target = document
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return change


@pytest.mark.parametrize(
    ("change", "path", "problem"),
    [
        (_delete("model", "sha256"), "$.model", "'sha256' is a required property"),
        (_delete("performance"), "$", "'performance' is a required property"),
        (
            _set(("performance", "pooled", "auc", "value"), 1.3),
            "$.performance.pooled.auc.value",
            "1.3 is greater than the maximum of 1",
        ),
        (
            _set(("performance", "by_scanner", "GE", "tp"), -1),
            "$.performance.by_scanner.GE.tp",
            "-1 is less than the minimum of 0",
        ),
        (
            _set(("model", "sha256"), "AB" * 32),
            "$.model.sha256",
            "does not match",
        ),
        (_set(("run", "rounds"), "3"), "$.run.rounds", "'3' is not of type 'integer'"),
        (_set(("run", "created"), "01/01/2026"), "$.run.created", "does not match"),
        (
            _set(("performance", "pooled", "n"), 120.5),
            "$.performance.pooled.n",
            "is not of type 'integer'",
        ),
        (
            _set(("performance", "pooled", "auc", "extra"), 1),
            "$.performance.pooled.auc",
            "Additional properties are not allowed",
        ),
        (
            _set(("sites", 0, "privacy", "delta"), 2.0),
            "$.sites[0].privacy.delta",
            "greater than the maximum of 1",
        ),
        (
            _set(("cross_site", "auc", 1, 0), -0.2),
            "$.cross_site.auc[1][0]",
            "less than the minimum of 0",
        ),
        (_set(("acceptance", 0, "passed"), "yes"), "$.acceptance[0].passed", "is not of type"),
        (_set(("schema_version",), "1.0"), "$.schema_version", "does not match"),
    ],
)
def test_a_broken_document_fails_with_one_line_naming_the_path(
    change: Callable[[dict[str, Any]], None], path: str, problem: str
) -> None:
    evidence = _evidence()
    change(evidence)
    message = _schema_error(evidence)
    assert f" at {path}: " in message, message
    assert problem in message, message


def test_a_criterion_not_judged_must_say_why() -> None:
    evidence = _evidence()
    entry = evidence["acceptance"][0]
    entry["passed"] = None
    entry.pop("reason", None)
    assert "'reason' is a required property" in _schema_error(evidence)
    entry["reason"] = "not evaluated: no value"
    validate_evidence(evidence)


def test_calibration_is_either_assessed_or_says_why_not() -> None:
    evidence = _evidence()
    evidence["calibration"]["by_site"]["site-a"] = {"not_assessed": "needs both classes", "n": 3}
    validate_evidence(evidence)
    evidence["calibration"]["by_site"]["site-a"] = {"n": 3}
    message = _schema_error(evidence)
    assert "$.calibration.by_site" in message


def test_a_long_problem_is_cut_to_one_short_line() -> None:
    evidence = _evidence()
    evidence["performance"]["pooled"] = ["x" * 500]
    message = _schema_error(evidence)
    assert "$.performance.pooled" in message and len(message) < 300


def test_write_evidence_never_writes_an_invalid_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = _evidence()
    broken["performance"]["pooled"]["auc"]["value"] = 1.3
    records = evidence_module.RunRecords({"run": {}}, {}, [])
    monkeypatch.setattr(evidence_module, "load_run", lambda run_dir: records)
    monkeypatch.setattr(evidence_module, "read_plan_record", lambda run_dir, task: None)
    monkeypatch.setattr(evidence_module, "build_evidence", lambda *args: copy.deepcopy(broken))
    with pytest.raises(EvidenceError) as caught:
        evidence_module.write_evidence(tmp_path)
    assert "\n" not in str(caught.value)
    assert "$.performance.pooled.auc.value" in str(caught.value)
    assert not (tmp_path / EVIDENCE_FILE).exists()
    assert not list(tmp_path.iterdir())
