"""Drift monitoring: the statistics, and a simulated scanner change at one site of three
that raises the alarm at that site and nowhere else, locally and through a federated
evaluation-only job, with the full reports kept at the sites."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DriftedSites
from scipy.stats import ks_2samp
from test_cli import medfed

from site_client.drift import REPORTS_DIR, check_drift
from site_client.store import SiteStore
from task.audit import AuditEvent, AuditLog
from task.model import ModelConfig, build_model
from task.wire import DRIFT_KEYS, MSG_DRIFT
from validation.drift import compare, ks_from_counts, population_stability_index

# --- the statistics -----------------------------------------------------------------------


def test_psi_is_zero_for_the_same_distribution_and_grows_with_the_shift() -> None:
    reference = [10, 20, 30, 40]
    assert population_stability_index(reference, [1, 2, 3, 4]) == pytest.approx(0.0)
    small = population_stability_index(reference, [12, 20, 30, 38])
    large = population_stability_index(reference, [40, 30, 20, 10])
    expected = sum(
        (q - r) * np.log(q / r)
        for r, q in zip([0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], strict=True)
    )
    assert 0 < small < large and large == pytest.approx(expected)


def test_ks_from_counts_is_the_case_level_statistic_when_each_value_has_its_bin() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 12, 80), rng.integers(2, 14, 50)
    counts_a, counts_b = np.bincount(a, minlength=14), np.bincount(b, minlength=14)
    statistic, p = ks_from_counts(counts_a, counts_b)
    expected = ks_2samp(a, b, method="asymp")
    assert statistic == pytest.approx(expected.statistic)
    assert p == pytest.approx(expected.pvalue, rel=0.2)


def test_an_alarm_needs_a_shift_both_significant_and_material() -> None:
    assert not compare("score", [30] * 10, [3] * 10).alarm
    assert compare("score", [30] * 10, [0] * 5 + [6] * 5).alarm
    with pytest.raises(ValueError, match="same edges"):
        compare("score", [1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="new is empty"):
        compare("score", [1, 2, 3], [0, 0, 0])


# --- a scanner change at one site (`conftest.drifted`) ------------------------------------


def test_a_scanner_fault_at_one_site_raises_the_alarm_there_only(drifted: DriftedSites) -> None:
    model = build_model(ModelConfig(), seed=0)
    model.load_state_dict(torch.load(drifted.model, weights_only=True))
    reports = {
        site: check_drift(SiteStore.open(root), model, ModelConfig().image_size)
        for site, root in drifted.stores.items()
    }
    assert {site for site, report in reports.items() if report.alarm} == {"site-a"}
    faulty = reports["site-a"]
    assert faulty.n_new == drifted.n_new and not faulty.unvalidated
    drifted_features = {r.feature for g in faulty.groups for r in g.results if r.alarm}
    assert "intensity-mean" in drifted_features


def test_the_federated_check_reports_the_alarm_and_keeps_the_details_at_the_sites(
    drifted: DriftedSites, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    sites = [arg for root in drifted.stores.values() for arg in ("--site-dir", root)]
    result = medfed("validate", "--model", drifted.model, *sites, "--out", run, "--simulated-data")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "drift: alarm at site-a" in result.stderr
    evidence = json.loads((run / "evidence.json").read_text())
    assert evidence["drift"]["alarm_sites"] == ["site-a"]
    assert evidence["drift"]["sites"]["site-a"]["n_new"] == drifted.n_new
    wire = [json.loads(line) for line in (run / "wire.jsonl").read_text().splitlines()]
    replies = [w for w in wire if w["message_type"] == MSG_DRIFT and w["direction"] == "received"]
    assert len(replies) == 3
    for reply in replies:  # statistics and counts only: the keys the wire contract allows
        assert set(reply["records"]) == {"drift"}
        assert set(reply["records"]["drift"]["values"]) <= DRIFT_KEYS
    report = medfed("report", run, "--no-pdf")
    assert report.returncode == 0, report.stderr
    page = (run / "report.html").read_text()
    assert "Data drift at the sites" in page and "site=all: intensity-mean (PSI" in page
    for site, root in drifted.stores.items():
        kept = sorted((root / REPORTS_DIR).glob("*.json"))
        assert kept, site
        checks = [
            e for e in AuditLog.in_folder(root).entries() if e.event == AuditEvent.DRIFT_CHECKED
        ]
        assert checks and checks[-1].details["alarm"] == (site == "site-a")


def test_site_drift_command_prints_the_table(drifted: DriftedSites) -> None:
    result = medfed(
        "site", "drift", "--site-dir", drifted.stores["site-b"], "--model", drifted.model
    )
    assert result.returncode == 0, result.stderr
    assert "30 new cases against 60 labelled: no alarm" in result.stdout
    assert "intensity-mean" in result.stdout
