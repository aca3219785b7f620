"""Simulation scenarios: the TOML format, its one-line errors, the sites it makes, and
``medfed simulate --scenario`` end to end on Flower's simulation runtime."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_cli import medfed

from simulations.scanners import PROFILES
from simulations.scenario import (
    MIN_CLASS_CASES,
    ScenarioError,
    derived,
    load_scenario,
    parse_scenario,
    scenario_toml,
    site_specs,
)
from simulations.scenario_run import run_scenario
from validation.evidence import validate_evidence

SCENARIOS = Path(__file__).resolve().parents[1] / "simulations" / "scenarios"
SHIPPED = sorted(SCENARIOS.glob("*.toml"))
MINIMAL = "[sites]\ncount = 3\ncases = 20\n"


def test_every_shipped_scenario_parses_and_reads_back_from_its_own_toml() -> None:
    assert {p.stem for p in SHIPPED} >= {
        "small", "label-skew", "dropout", "byzantine", "unreliable-sites", "hundred-sites"
    }  # fmt: skip
    for path in SHIPPED:
        scenario = load_scenario(path)
        assert scenario.file == path and scenario.text == path.read_text()
        assert scenario.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        again = parse_scenario(scenario_toml(scenario))
        assert replace(again, text="", file=None) == replace(scenario, text="", file=None)


def test_the_scale_scenario_leaves_out_what_grows_with_the_square_of_its_sites() -> None:
    """benchmarks/bench_scale.py runs it at 10, 50 and 100 sites: local-only baselines would
    add every site's model to every site's cross-site evaluation (n x n)."""
    scenario = load_scenario(SCENARIOS / "hundred-sites.toml")
    assert scenario.sites.count == 100 and scenario.federation.rounds == 3
    assert not scenario.federation.local_baselines and not scenario.federation.pooled_baseline


def test_defaults_fill_what_a_minimal_scenario_leaves_out() -> None:
    scenario = parse_scenario(MINIMAL, Path("tiny.toml"))
    assert scenario.name == "tiny" and scenario.source == "phantoms"
    assert scenario.sites.sizes == (20, 20, 20) and scenario.sites.ids[-1] == "site-c"
    assert (scenario.federation.rounds, scenario.strategy.name) == (3, "fedavg")
    assert (scenario.privacy.mode, scenario.privacy.target_epsilon) == ("local", 8.0)
    assert scenario.faults == () and scenario.fault_plan().injected() == []


@pytest.mark.parametrize(
    ("toml", "field", "problem"),
    [
        ("[sites]\ncount = 'three'\n", "[sites] count", "must be an integer >= 2"),
        (MINIMAL + "colour = 'red'\n", "[sites] colour", "unknown field"),
        (MINIMAL + "sizes = [30, 30]\n", "[sites] count", "is not the number of sizes"),
        ("[sites]\nsizes = [30, 5]\n", "[sites] sizes", "each >= 10"),
        (MINIMAL + "prevalence = 1.5\n", "[sites] prevalence", "must be in (0, 1)"),
        (MINIMAL + "scanners = 'acme_9000'\n", "[sites] scanners", "unknown scanner profile"),
        (
            MINIMAL + "site_scanners = ['ge_optima']\n",
            "[sites] site_scanners",
            "one scanner mix per site",
        ),
        (
            MINIMAL + "quantity_alpha = 1.0\nmin_cases = 30\n",
            "[sites] min_cases",
            "must be <= cases",
        ),
        ("source = 'chestmnist'\n" + MINIMAL, "source", "must be one of phantoms, breastmnist"),
        ("rounds = 3\n" + MINIMAL, "rounds", "unknown field"),
        (MINIMAL + "[federation]\nrounds = 0\n", "[federation] rounds", "must be an integer >= 1"),
        (MINIMAL + "[federation]\nmodel = 'gpt'\n", "[federation] model", "must be one of blob"),
        (MINIMAL + "[strategy]\nname = 'fedfoo'\n", "[strategy]", "unknown strategy 'fedfoo'"),
        (MINIMAL + "[strategy]\ntrim_fraction = 0.6\n", "[strategy]", "trim_fraction must be in"),
        (
            MINIMAL + "[strategy]\nmalicious_sites = 1.5\n",
            "[strategy] malicious_sites",
            "must be an integer",
        ),
        (MINIMAL + "[privacy]\nepsilon = -1\n", "[privacy] epsilon", 'a number > 0 or "inf"'),
        (MINIMAL + "[privacy]\ndp = 'sideways'\n", "[privacy] dp", "must be one of local, central"),
        (
            MINIMAL + "[privacy]\nepsilon = 'inf'\nnoise_multiplier = 1.0\n",
            "[privacy]",
            "noise multiplier needs a finite epsilon",
        ),
        (MINIMAL + "[seeds]\ndata = -1\n", "[seeds] data", "must be an integer >= 0"),
        (MINIMAL + "[[faults]]\nkind = 'gremlins'\n", "[faults[0]] kind", "must be one of dropout"),
        (MINIMAL + "[[faults]]\nprobability = 0.5\n", "[faults[0]] kind", "missing"),
        (
            MINIMAL + "[[faults]]\nkind = 'straggler'\n",
            "[faults[0]]",
            "a straggler needs delay_s > 0",
        ),
        (
            MINIMAL + "[[faults]]\nkind = 'nan'\nsites = ['site-z']\n",
            "[faults[0]] sites",
            "no site 'site-z'",
        ),
        (
            MINIMAL + "[[faults]]\nkind = 'nan'\nprobability = 2\n",
            "[faults[0]]",
            "probability must be in [0, 1]",
        ),
        (
            MINIMAL + "[[faults]]\nkind = 'crash'\nrounds = [9]\n",
            "[[faults]] rounds",
            "round 9 is not in the run",
        ),
        ("[seeds]\ndata = 1\n", "[sites]", "missing"),
        ("[sites\ncount = 3\n", "", "not valid TOML"),
    ],
)
def test_a_bad_field_is_one_line_naming_the_file_and_the_field(
    toml: str, field: str, problem: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {field}"), message
    assert problem in message, message


def test_skews_and_scanners_are_drawn_from_the_data_seed() -> None:
    scenario = load_scenario(SCENARIOS / "label-skew.toml")
    specs = site_specs(scenario)
    assert specs == site_specs(scenario)  # deterministic
    assert sum(s.n_cases for s in specs) == 4 * 60 and min(s.n_cases for s in specs) >= 30
    assert len({s.n_cases for s in specs}) > 1  # quantity skew
    prevalences = [s.prevalence for s in specs]
    assert max(prevalences) - min(prevalences) > 0.3  # label skew
    assert all(MIN_CLASS_CASES <= s.n_positive <= s.n_cases - MIN_CLASS_CASES for s in specs)
    assert specs[0].vendor_mix == {"siemens_force": 1.0}
    assert specs[2].vendor_mix == {"canon_aquilion_one": 0.3, "philips_ingenuity": 0.7}
    other = replace(scenario, seeds=replace(scenario.seeds, data=3))
    assert [s.prevalence for s in site_specs(other)] != prevalences
    drawn = site_specs(load_scenario(SCENARIOS / "small.toml"))
    assert all(abs(sum(s.vendor_mix.values()) - 1) < 1e-6 for s in drawn)


def test_a_derived_scenario_records_what_runs_not_its_origin() -> None:
    scenario = load_scenario(SCENARIOS / "byzantine.toml")
    changed = derived(scenario, strategy=replace(scenario.strategy, name="fedavg"))
    assert changed.file is None and changed.sha256 != scenario.sha256
    assert scenario.sha256 in changed.text.splitlines()[0]
    assert parse_scenario(changed.text).strategy.name == "fedavg"


def test_the_command_line_refuses_a_bad_scenario_and_options_the_scenario_sets(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL + "[federation]\nrounds = 0\n")
    result = medfed("simulate", "--scenario", bad, "--out", tmp_path / "run")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"medfed: error: {bad}: [federation] rounds: must be an integer >= 1, got 0"
    ]
    small = SCENARIOS / "small.toml"
    clash = medfed("simulate", "--scenario", small, "--out", tmp_path / "run", "--rounds", "5")
    assert clash.returncode == 2 and "drop --rounds" in clash.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_medfed_simulate_runs_a_scenario_end_to_end(tmp_path: Path) -> None:
    """small.toml: three phantom hospitals of 40 cases, 2 rounds, DP-SGD at epsilon 8."""
    path = SCENARIOS / "small.toml"
    run = tmp_path / "run"
    result = medfed("simulate", "--scenario", path, "--out", run)
    assert result.returncode == 0, result.stderr[-2000:]
    evidence = json.loads((run / "evidence.json").read_text())
    validate_evidence(evidence)

    data = evidence["run"]["data"]
    assert data["simulated"] is True and "simulation scenario 'small'" in data["description"]
    assert data["scenario"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert data["scenario"]["toml"] == path.read_text() == (run / "scenario.toml").read_text()
    assert data["scenario"]["faults_injected"] == []
    assert sorted(p.name for p in (run / "sites").iterdir()) == ["site-a", "site-b", "site-c"]
    assert [s["n_train"] + s["n_test"] for s in evidence["sites"]] == [40, 40, 40]
    assert evidence["run"]["strategy"] == "fedavg" and evidence["run"]["rounds"] == 2
    assert all(0 < s["privacy"]["epsilon"] <= 8.0 for s in evidence["sites"])
    for record in evidence["rounds"]:
        assert record["participation"]["accepted"] == ["site-a", "site-b", "site-c"]
    assert evidence["performance"]["pooled"]["auc"]["value"] > 0.5
    # The same folder takes a rerun; a folder holding anything else is refused.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    refused = medfed("simulate", "--scenario", path, "--out", tmp_path / "other")
    assert refused.returncode == 1 and "holds no earlier scenario run" in refused.stderr


@pytest.mark.slow
def test_quantity_and_label_skew_reach_the_site_stores(tmp_path: Path) -> None:
    """label-skew.toml through phantoms, DICOM and each site's ingest: every site store has
    the size, lesion count and scanners its spec drew, and the federation runs on them."""
    scenario = load_scenario(SCENARIOS / "label-skew.toml")
    result = run_scenario(scenario, tmp_path / "run", progress=lambda _: None)
    evidence = json.loads(result.evidence.read_text())
    for spec, site in zip(site_specs(scenario), evidence["sites"], strict=True):
        assert site["id"] == spec.site_id
        assert site["n_train"] + site["n_test"] == spec.n_cases
        assert site["n_train_positive"] + site["n_test_positive"] == spec.n_positive
        assert set(site["scanners"]) == {PROFILES[name].scanner_group for name in spec.vendor_mix}
    assert len(evidence["rounds"]) == 3 and evidence["cross_site"]["models"][0] == "global"
