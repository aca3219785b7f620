"""``medfed sweep``: strategies x epsilons x seeds over one scenario's sites, the comparison
table read back against every run's evidence.json, failed runs recorded, bad axis values
refused, and every run's site stores its own."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from test_cli import medfed

import simulations.sweep as sweep_module
from medfed.cli import main
from simulations.sweep import (
    LOCAL_ALL,
    LOCAL_OWN,
    POOLED,
    RunOutcome,
    SweepPoint,
    summarise,
)
from site_client.ledger import PrivacyLedger
from site_client.policy import write_policy
from site_client.store import SiteStore
from task.privacy import PrivacyConfig

#: Three phantom hospitals of 30 cases, one round; the scenario turns the pooled baseline
#: off, which the sweep overrides.
TINY = """name = "tiny"
[seeds]
data = 1
training = 0
[sites]
count = 3
cases = 30
prevalence = 0.4
[federation]
model = "blob"
rounds = 1
local_epochs = 1
pooled_baseline = false
[strategy]
name = "fedavg"
[privacy]
epsilon = 8.0
"""
#: Every site's ceiling in the sweep below: epsilon 8 is refused by all, epsilon 1 fits.
CEILING = 5.0
NO_DP = PrivacyConfig.for_epsilon(math.inf)


@dataclass(frozen=True)
class Swept:
    """The sweep's folder, exit status, printed table and sweep.csv's rows."""

    out: Path
    status: int
    stdout: str
    rows: list[dict[str, str]]


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swept]:
    """``medfed sweep`` of the tiny scenario: fedavg and fedmedian, epsilons 8 (refused by
    every site's ceiling: those runs fail first) and 1, seeds 0 and 1."""
    root = tmp_path_factory.mktemp("sweep")
    scenario = root / "tiny.toml"
    scenario.write_text(TINY)
    make_sites = sweep_module.make_sites

    def sites_with_a_ceiling(*args: object, **kwargs: object) -> list[Path]:
        site_dirs = make_sites(*args, **kwargs)  # type: ignore[arg-type]
        for site_dir in site_dirs:
            policy = SiteStore.open(site_dir).policy
            privacy = replace(policy.privacy, max_epsilon=CEILING)
            write_policy(site_dir, replace(policy, privacy=privacy))
        return site_dirs

    out = root / "out"
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout):
        patch.setattr(sweep_module, "make_sites", sites_with_a_ceiling)
        axes = ["--strategies", "fedavg,fedmedian", "--epsilons", "8,1", "--seeds", "0,1"]
        status = main(["sweep", "--scenario", str(scenario), "--out", str(out), *axes])
    with (out / "sweep.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    yield Swept(out, status, stdout.getvalue(), rows)


def _evidence(out: Path, row: dict[str, str]) -> dict:
    return json.loads((out / row["evidence"]).read_text())


def _table(markdown: str) -> dict[tuple[str, str], list[str]]:
    """sweep.md's table: (epsilon, regime) -> the other cells."""
    cells = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("| ") and not line.startswith("| epsilon") and "---" not in line
    ]
    return {(c[0], c[1]): c[2:] for c in cells}


@pytest.mark.slow
def test_every_number_in_the_table_is_read_from_a_runs_evidence(swept: Swept) -> None:
    ok = [r for r in swept.rows if r["status"] == "ok"]
    assert [r["run"] for r in ok] == [
        "fedavg-eps1-seed0",
        "fedmedian-eps1-seed0",
        "fedavg-eps1-seed1",
        "fedmedian-eps1-seed1",
    ]
    for row in ok:
        evidence = _evidence(swept.out, row)
        assert evidence["run"]["strategy"] == row["strategy"]
        assert evidence["run"]["seed"] == int(row["seed"])
        assert evidence["privacy"]["settings"]["target_epsilon"] == 1.0
        assert float(row["federated"]) == evidence["performance"]["pooled"]["auc"]["value"]
        local = evidence["baselines"]["local_only"]
        assert sorted(local) == ["site-a", "site-b", "site-c"]
        own = np.mean([m["by_site"][site]["value"] for site, m in local.items()])
        assert float(row["local_only_own_site"]) == pytest.approx(own, abs=1e-12)
        every = np.mean([m["auc"]["value"] for m in local.values()])
        assert float(row["local_only_all_sites"]) == pytest.approx(every, abs=1e-12)
        # The pooled-centralized model is trained once per epsilon and seed: in the first
        # strategy's run, whatever the scenario (pooled_baseline = false) says.
        pooled = evidence["baselines"].get("pooled_centralized")
        if row["strategy"] == "fedavg":
            assert float(row["pooled_centralized"]) == pooled["auc"]["value"]
        else:
            assert pooled is None and row["pooled_centralized"] == ""

    table = _table((swept.out / "sweep.md").read_text())
    assert table == _table(swept.stdout)

    def check(regime: str, values: list[float], failed: int = 0) -> None:
        mean, sd, span, seeds, failures = table["1", regime]
        assert float(mean) == pytest.approx(np.mean(values), abs=5e-4)
        assert float(sd) == pytest.approx(np.std(values, ddof=1), abs=5e-4)
        assert span == f"{min(values):.3f}-{max(values):.3f}"
        assert (int(seeds), int(failures)) == (len(values), failed)

    for strategy in ("fedavg", "fedmedian"):
        check(strategy, [float(r["federated"]) for r in ok if r["strategy"] == strategy])
    fedavg = [r for r in ok if r["strategy"] == "fedavg"]
    check(POOLED, [float(r["pooled_centralized"]) for r in fedavg])
    check(LOCAL_OWN, [float(r["local_only_own_site"]) for r in fedavg])
    check(LOCAL_ALL, [float(r["local_only_all_sites"]) for r in fedavg])


@pytest.mark.slow
def test_a_failed_run_is_recorded_and_the_sweep_goes_on(swept: Swept) -> None:
    assert swept.status == 1
    failed = [r for r in swept.rows if r["status"] == "failed"]
    assert [r["run"] for r in failed] == [
        "fedavg-eps8-seed0",
        "fedmedian-eps8-seed0",
        "fedavg-eps8-seed1",
        "fedmedian-eps8-seed1",
    ]
    for row in failed:
        assert row["reason"].startswith("every site would refuse to train: site-a:")
        assert "\n" not in row["reason"] and row["evidence"] == ""
    markdown = (swept.out / "sweep.md").read_text()
    assert _table(markdown)["8", "fedavg"] == ["-", "-", "-", "0", "2"]
    assert ("8", POOLED) not in _table(markdown)  # no seed at epsilon 8 trained one
    assert f"- fedmedian, epsilon 8, seed 1: {failed[-1]['reason']}" in markdown
    assert json.loads((swept.out / "sweep.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_every_run_has_its_own_site_stores_and_privacy_ledgers(swept: Swept) -> None:
    template = swept.out / "sites"
    assert all(PrivacyLedger(d).entries() == [] for d in template.iterdir())
    for row in swept.rows:
        run = swept.out / "runs" / row["run"]
        for site in ("site-a", "site-b", "site-c"):
            entries = PrivacyLedger(run / "sites" / site).entries()
            if row["status"] == "failed":
                assert entries == []
                continue
            # the local-only baseline (round 0) and the one federated round, this run's only
            assert sorted(e.round for e in entries) == [0, 1]
            assert {e.run_id.rsplit("-", 1)[0] for e in entries} == {row["run"]}
            # a shared ledger would add the other runs' spend to the site's total
            assert max(e.epsilon_total for e in entries) <= 1.0 + 1e-6


def test_bad_axis_values_are_one_line_errors_naming_the_option(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    out = tmp_path / "out"
    for option, value, problem in (
        ("--strategies", "fedavg,fedmean", "unknown strategy 'fedmean'; choose from fedavg"),
        ("--epsilons", "8,0", "each must be a number > 0 or 'inf', got '0'"),
        ("--epsilons", "-1", "each must be a number > 0 or 'inf', got '-1'"),
        ("--seeds", "0,1.5", "each must be an integer >= 0, got '1.5'"),
        ("--seeds", "0,0", "a value is given twice in '0,0'"),
    ):
        result = medfed("sweep", "--scenario", scenario, "--out", out, option, value)
        assert result.returncode == 2
        error = result.stderr.strip().splitlines()[-1]
        assert error.startswith(f"medfed sweep: error: argument {option}: {problem}")
    assert not out.exists()


def test_a_folder_holding_anything_else_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = medfed("sweep", "--scenario", scenario, "--out", out)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"medfed: error: {out}: folder is not empty and holds no earlier sweep; choose --out"
    ]
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    # A combination the federation refuses (central DP with FedMedian) is refused up front.
    central = tmp_path / "central.toml"
    central.write_text(TINY.replace("epsilon = 8.0", 'epsilon = 8.0\ndp = "central"'))
    refused = medfed(
        "sweep", "--scenario", central, "--out", tmp_path / "new", "--strategies", "fedmedian"
    )
    assert refused.returncode == 1 and "fedmedian-eps8-central-seed0" in refused.stderr
    assert not (tmp_path / "new").exists()


def _outcome(strategy: str, seed: int, auc: float, **numbers: float | None) -> RunOutcome:
    point = SweepPoint(strategy, NO_DP, seed)
    return RunOutcome(point, Path(point.name), 1.0, metric="auc", federated=auc, **numbers)


def test_the_table_takes_means_sample_sds_and_ranges_over_seeds() -> None:
    base = {"local_own": 0.6, "local_all": 0.55}
    outcomes = [
        _outcome("fedavg", 0, 0.70, pooled_centralized=0.80, **base),
        _outcome("fedmedian", 0, 0.60, **base),
        _outcome("fedavg", 1, 0.90, pooled_centralized=0.84, **base),
        _outcome("fedmedian", 1, 0.64, **base),
        RunOutcome(SweepPoint("fedavg", NO_DP, 2), Path("x"), 1.0, error="boom"),
        _outcome("fedmedian", 2, 0.62, pooled_centralized=0.82, **base),
    ]
    rows = {row.regime: row for row in summarise(outcomes)}
    assert list(rows) == [POOLED, LOCAL_OWN, LOCAL_ALL, "fedavg", "fedmedian"]
    assert rows["fedavg"].values == (0.70, 0.90) and rows["fedavg"].failed == ("seed 2: boom",)
    assert rows["fedavg"].mean == pytest.approx(0.80)
    assert rows["fedavg"].sd == pytest.approx(np.std([0.7, 0.9], ddof=1))
    assert rows["fedmedian"].range == (0.60, 0.64)
    # Seed 2's baseline comes from the run that trained it (fedavg's failed).
    assert rows[POOLED].values == (0.80, 0.84, 0.82)
    assert rows[POOLED].sd == pytest.approx(0.02)
    single = summarise([_outcome("fedavg", 0, 0.7)])
    assert [r.regime for r in single] == ["fedavg"] and single[0].sd is None
