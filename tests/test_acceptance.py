"""Acceptance plans: parsing (one-line errors naming file and criterion), evaluation per
criterion and stratum, the shipped default plan, the run's plan record, and the CLI
refusing a bad plan before anything runs."""

from __future__ import annotations

import hashlib
import json
import subprocess
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from conftest import IngestedFederation
from test_cli import medfed

from simulations.demo import site_store_scopes
from validation.acceptance import (
    PLAN_RECORD_FILE,
    AcceptancePlan,
    AcceptancePlanError,
    RunScopes,
    Scope,
    check_plan_against,
    default_plan,
    evaluate_plan,
    load_plan,
    parse_plan,
    read_plan_record,
    write_plan_record,
)

GOOD_PLAN = """
name = "study 7"
version = "2.1"

[[criterion]]
id = "site-sensitivity"
metric = "sensitivity"
statistic = "ci_low"
operator = ">="
threshold = 0.80
scope = "every site"
min_n = 30

[[criterion]]
id = "ge-auc"
metric = "auc"
operator = ">"
threshold = 0.85
scope = "manufacturer:GE"

[[criterion]]
id = "ratio"
kind = "relative_to_baseline"
operator = ">="
threshold = 0.97

[[criterion]]
id = "unseen"
kind = "unseen_sites"
operator = ">"
threshold = 0
"""


def _write(tmp_path: Path, text: str, name: str = "plan.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _plan(criteria: str) -> AcceptancePlan:
    return parse_plan(f'name = "test"\n{criteria}', "test.toml")


def _criterion(**fields: Any) -> str:
    """A [[criterion]] table of ``fields`` (strings quoted)."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
    return "[[criterion]]\n" + "\n".join(lines) + "\n"


def _result(n: int, auc: float | None, sensitivity: float = 0.9) -> dict[str, Any]:
    """One scope of `binary_performance`, as far as plans read it."""

    def estimate(value: float | None) -> dict[str, Any]:
        low = None if value is None else value - 0.1
        return {"value": value, "ci_low": low, "ci_high": value, "method": "test"}

    return {
        "auc": estimate(auc) if auc is not None else estimate(None) | {"method": "no negatives"},
        "sensitivity": estimate(sensitivity),
        "specificity": estimate(0.95),
        "ppv": estimate(0.8),
        "npv": estimate(0.97),
        "n": n,
        "n_pos": n // 3,
    }


def _evidence() -> dict[str, Any]:
    """A small hand-made evidence: sites a (100 cases), b (20), c (failed: no results)."""
    return {
        "sites": [{"id": s, "scanners": {"GE Revolution": 1}} for s in ("a", "b", "c")],
        "performance": {
            "pooled": _result(120, 0.92),
            "by_site": {"a": _result(100, 0.95), "b": _result(20, 0.70)},
            "by_scanner": {"GE": _result(60, 0.88), "SIEMENS": _result(40, None)},
            "by_scanner_model": {"GE Revolution": _result(60, 0.88)},
        },
        "suppressed": [
            {"site": "a", "stratum": "test|manufacturer=Canon"},
            {"site": "b", "stratum": "test|manufacturer=GE"},
        ],
        "baselines": {
            "pooled_centralized": {"auc": {"value": 0.93}},
            "unseen_site_comparison": {
                "a": {"global_auc": 0.9, "local_only_auc": 0.8},
                "b": {"global_auc": 0.9, "local_only_auc": 0.95},
                "c": {"global_auc": 0.9, "local_only_auc": 0.7},
            },
        },
    }


# --- parsing ----------------------------------------------------------------------------------


def test_a_good_plan_is_read_with_its_hash(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD_PLAN)
    plan = load_plan(path)
    assert (plan.name, plan.version, plan.source) == ("study 7", "2.1", str(path))
    assert plan.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [c.id for c in plan.criteria] == ["site-sensitivity", "ge-auc", "ratio", "unseen"]
    site, ge, ratio, unseen = plan.criteria
    assert (site.metric, site.statistic, site.operator, site.threshold) == (
        "sensitivity",
        "ci_low",
        ">=",
        0.8,
    )
    assert site.scope == Scope("site") and site.min_n == 30
    assert ge.scope == Scope("manufacturer", "GE") and ge.statistic == "value"
    assert ratio.kind == "relative_to_baseline" and ratio.baseline == "pooled_centralized"
    assert unseen.kind == "unseen_sites" and unseen.threshold == 0.0
    assert "every site with n >= 30" in site.description  # written when not given


@pytest.mark.parametrize(
    "text",
    [
        "pooled",
        "every site",
        "site:site-a",
        "every manufacturer",
        "manufacturer:GE MEDICAL SYSTEMS",
        "every scanner model",
        "scanner model:SIEMENS SOMATOM Force",
        "every subgroup:sex",
        "subgroup:sex=F",
    ],
)
def test_scopes_read_back_as_written(text: str) -> None:
    assert str(Scope.parse(text)) == text


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"metric": "f1"}, "unknown metric 'f1'"),
        ({"statistic": "median"}, "unknown statistic 'median'"),
        ({"operator": "=>"}, "unknown operator '=>'"),
        ({"scope": "every hospital"}, "unknown scope 'every hospital'"),
        ({"scope": "site:"}, "must read 'site:<name>'"),
        ({"scope": "every subgroup:sex=F"}, "must read 'every subgroup:<column>'"),
        ({"threshold": "0.8"}, "field 'threshold' must be a number"),
        ({"threshold": True}, "field 'threshold' must be a number"),
        ({"threshold": 80}, "field 'threshold' must be in [0, 1]"),
        ({"treshold": 0.8}, "unknown field 'treshold'"),
        ({"kind": "bayesian"}, "unknown kind 'bayesian'"),
        ({"min_n": -1}, "field 'min_n' must be a whole number"),
        ({"kind": "unseen_sites", "metric": "auc"}, "unknown field 'metric'"),
        ({"kind": "relative_to_baseline", "baseline": "local_only"}, "unknown baseline"),
    ],
)
def test_each_bad_criterion_is_one_line_naming_file_and_criterion(
    tmp_path: Path, fields: dict[str, Any], expected: str
) -> None:
    base = {"id": "my-criterion", "metric": "auc", "operator": ">=", "threshold": 0.8}
    if fields.get("kind") in ("unseen_sites", "relative_to_baseline"):
        del base["metric"]
    path = _write(tmp_path, 'name = "bad"\n' + _criterion(**(base | fields)))
    with pytest.raises(AcceptancePlanError) as caught:
        load_plan(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: criterion 'my-criterion': ")
    assert expected in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('name = "x"\n', "plan: needs at least one [[criterion]]"),
        ('name = "x"\nowner = "me"\n' + _criterion(id="a", threshold=0.5), "unknown field 'owner'"),
        (_criterion(id="a", threshold=0.5), "plan: field 'name' is missing"),
        ('name = "x"\n' + _criterion(threshold=0.5), "criterion #1: field 'id' is missing"),
        ('name = "x"\n' + _criterion(id="a"), "criterion 'a': field 'threshold' is missing"),
        ('name = "x"\n' + 2 * _criterion(id="a", threshold=0.5), "criterion 'a': id used twice"),
        ('name = "x\n', "not valid TOML"),
    ],
)
def test_bad_plans_are_one_line_naming_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(AcceptancePlanError) as caught:
        load_plan(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and expected in message


def test_a_missing_plan_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(AcceptancePlanError, match=r"nowhere\.toml: cannot read the plan"):
        load_plan(tmp_path / "nowhere.toml")


# --- evaluation -------------------------------------------------------------------------------


def test_pass_fail_and_the_entry_keys() -> None:
    plan = _plan(
        _criterion(id="high", metric="auc", operator=">=", threshold=0.9)
        + _criterion(id="higher", metric="auc", statistic="ci_low", operator=">=", threshold=0.9)
    )
    high, higher = evaluate_plan(plan, _evidence())
    assert high["passed"] is True and high["value"] == 0.92 and high["n"] == 120
    assert higher["passed"] is False and higher["value"] == pytest.approx(0.82)
    assert set(high) >= {
        "id",
        "criterion",
        "metric",
        "statistic",
        "scope",
        "value",
        "operator",
        "threshold",
        "n",
        "passed",
    }
    assert high["scope"] == "pooled" and "reason" not in high


def test_every_site_expands_and_no_site_is_skipped() -> None:
    plan = _plan(
        _criterion(id="s", metric="auc", operator=">=", threshold=0.8, scope="every site", min_n=30)
    )
    entries = {e["scope"]: e for e in evaluate_plan(plan, _evidence())}
    assert list(entries) == ["site:a", "site:b", "site:c"]
    assert entries["site:a"]["passed"] is True
    # b has 20 cases (and fails the threshold): not evaluated, with its reason
    assert entries["site:b"]["passed"] is None
    assert entries["site:b"]["reason"] == "not evaluated: n = 20 < min_n = 30"
    # c reported nothing: still listed, with why
    assert entries["site:c"]["passed"] is None and "no test results" in entries["site:c"]["reason"]


def test_suppressed_undefined_and_partial_strata_say_so() -> None:
    plan = _plan(
        _criterion(id="m", metric="auc", operator=">=", threshold=0.8, scope="every manufacturer")
    )
    entries = {e["scope"]: e for e in evaluate_plan(plan, _evidence())}
    assert list(entries) == ["manufacturer:Canon", "manufacturer:GE", "manufacturer:SIEMENS"]
    canon, ge, siemens = entries.values()
    assert canon["passed"] is None and "suppressed at a" in canon["reason"]
    assert ge["passed"] is True and "excludes the cases of b" in ge["note"]
    assert siemens["passed"] is None and "auc value undefined (no negatives)" in siemens["reason"]


def test_named_scopes_and_subgroups_absent_from_the_evidence() -> None:
    plan = _plan(
        _criterion(id="ge", metric="sensitivity", threshold=0.8, scope="manufacturer:GE")
        + _criterion(id="sex", metric="auc", threshold=0.8, scope="every subgroup:sex")
    )
    ge, sex = evaluate_plan(plan, _evidence())
    assert ge["scope"] == "manufacturer:GE" and ge["passed"] is True and ge["value"] == 0.9
    assert sex["scope"] == "every subgroup:sex" and sex["passed"] is None
    assert "no subgroup:sex strata" in sex["reason"]
    evidence = _evidence()
    evidence["performance"]["by_subgroup"] = {"sex": {"F": _result(50, 0.9), "M": _result(50, 0.7)}}
    entries = evaluate_plan(plan, evidence)[1:]
    assert [(e["scope"], e["passed"]) for e in entries] == [
        ("subgroup:sex=F", True),
        ("subgroup:sex=M", False),
    ]


def test_baseline_kinds() -> None:
    plan = _plan(
        _criterion(id="r", kind="relative_to_baseline", operator=">=", threshold=0.97)
        + _criterion(id="u", kind="unseen_sites", operator=">", threshold=0.0)
    )
    ratio, unseen = evaluate_plan(plan, _evidence())
    assert ratio["value"] == pytest.approx(0.92 / 0.93) and ratio["passed"] is True
    assert unseen["value"] == pytest.approx(0.1) and unseen["passed"] is True  # median margin
    evidence = _evidence()
    del evidence["baselines"]["pooled_centralized"]
    evidence["baselines"]["unseen_site_comparison"] = {}
    ratio, unseen = evaluate_plan(plan, evidence)
    assert ratio["passed"] is None and "no pooled-centralized baseline" in ratio["reason"]
    assert unseen["passed"] is None and "no local-only models" in unseen["reason"]


def test_a_plan_naming_what_the_run_lacks_is_one_line() -> None:
    plan = _plan(
        _criterion(id="ok", metric="auc", operator=">=", threshold=0.8, scope="site:a")
        + _criterion(id="typo", metric="auc", operator=">=", threshold=0.8, scope="site:site-z")
    )
    scopes = RunScopes.from_evidence(_evidence())
    assert scopes.sites == {"a", "b", "c"} and scopes.manufacturers == {"Canon", "GE", "SIEMENS"}
    with pytest.raises(AcceptancePlanError) as caught:
        check_plan_against(plan, scopes)
    assert str(caught.value) == (
        "test.toml: criterion 'typo': scope 'site:site-z' names a site this run does not "
        "have (sites: a, b, c)"
    )
    maker = _plan(_criterion(id="m", threshold=0.8, scope="manufacturer:Agfa"))
    with pytest.raises(AcceptancePlanError, match=r"criterion 'm': .* names a manufacturer"):
        check_plan_against(maker, scopes)
    column = _plan(_criterion(id="c", threshold=0.8, scope="every subgroup:age"))
    check_plan_against(column, scopes)  # no subgroup strata known: not checked
    with pytest.raises(AcceptancePlanError, match="subgroup column 'age'"):
        check_plan_against(column, RunScopes(frozenset(), frozenset(), frozenset(), frozenset()))


# --- the default plan and the run's record ------------------------------------------------------


def test_the_default_plan_ships_with_the_package() -> None:
    assert files("validation").joinpath("plans/default.toml").is_file()
    plan = default_plan()
    assert plan.source == "medfed:validation/plans/default.toml"
    ids = {c.id for c in plan.criteria}
    assert {
        "pooled-auc",
        "relative-to-pooled-centralized",
        "beats-local-only-on-unseen-sites",
    } <= ids
    assert {c.kind for c in plan.criteria} == {"metric", "relative_to_baseline", "unseen_sites"}
    for entry in evaluate_plan(plan, _evidence()):
        assert (entry["passed"] is None) == ("reason" in entry)


def test_the_run_record_keeps_the_plan_and_its_hash(tmp_path: Path) -> None:
    assert read_plan_record(tmp_path).name == default_plan().name  # nothing recorded
    plan = load_plan(_write(tmp_path, GOOD_PLAN))
    write_plan_record(plan, tmp_path / "run")
    again = read_plan_record(tmp_path / "run")
    assert again.provenance() == plan.provenance() and again.criteria == plan.criteria
    record = json.loads((tmp_path / "run" / PLAN_RECORD_FILE).read_text())
    record["toml"] = record["toml"].replace("0.80", "0.50")
    (tmp_path / "run" / PLAN_RECORD_FILE).write_text(json.dumps(record))
    with pytest.raises(AcceptancePlanError, match="'sha256' does not match"):
        read_plan_record(tmp_path / "run")


def test_the_evidence_is_judged_by_the_recorded_plan(tmp_path: Path) -> None:
    from test_evidence import _records, write_run_records

    from validation.evidence import write_evidence

    write_run_records(_records()[0], tmp_path)
    plan = load_plan(_write(tmp_path, GOOD_PLAN))
    write_plan_record(plan, tmp_path)
    evidence = json.loads(write_evidence(tmp_path).read_text())
    assert evidence["acceptance_plan"] == {
        "name": "study 7",
        "version": "2.1",
        "sha256": plan.sha256,
        "source": str(tmp_path / "plan.toml"),
    }
    assert {e["id"] for e in evidence["acceptance"]} == {
        "site-sensitivity",
        "ge-auc",
        "ratio",
        "unseen",
    }


def test_site_store_scopes(small_federation: IngestedFederation) -> None:
    scopes = site_store_scopes(small_federation.site_dirs)
    assert scopes.sites == {"site-a", "site-b"}
    assert scopes.manufacturers and scopes.scanner_models


# --- the command ------------------------------------------------------------------------------


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medfed: error: "), result.stderr
    return lines[0]


def test_a_malformed_plan_fails_in_one_line_before_anything_runs(tmp_path: Path) -> None:
    plan = _write(tmp_path, GOOD_PLAN.replace('metric = "auc"', 'metric = "accuracy"'))
    line = _one_line_error(
        medfed("demo", "--out", tmp_path / "demo", "--acceptance", plan, cwd=tmp_path)
    )
    assert f"{plan}: criterion 'ge-auc': unknown metric 'accuracy'" in line
    assert not (tmp_path / "demo").exists()
    line = _one_line_error(
        medfed(
            "simulate",
            "--site-dir",
            tmp_path / "a",
            "--site-dir",
            tmp_path / "b",
            "--out",
            tmp_path / "run",
            "--acceptance",
            plan,
            cwd=tmp_path,
        )
    )
    assert "unknown metric 'accuracy'" in line and not (tmp_path / "run").exists()


def test_a_plan_naming_an_unknown_site_fails_before_training(
    tmp_path: Path, small_federation: IngestedFederation
) -> None:
    plan = _write(tmp_path, GOOD_PLAN.replace('scope = "manufacturer:GE"', 'scope = "site:site-q"'))
    sites = [a for d in small_federation.site_dirs for a in ("--site-dir", d)]
    result = medfed(
        "simulate", *sites, "--out", tmp_path / "run", "--acceptance", plan, cwd=tmp_path
    )
    line = _one_line_error(result)
    assert f"{plan}: criterion 'ge-auc': scope 'site:site-q' names a site" in line
    assert not (tmp_path / "run").exists()
