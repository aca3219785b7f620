"""The dashboard's Monitoring page (AppTest) on a real evaluation-only job whose drift check
alarms at one site (``medfed validate``, `conftest.drift_run`), its numbers checked against
the run's evidence.json; a run without a drift check, and drift evidence with sites not
checked, unvalidated scanners or malformed fields, shown as messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_dashboard import charts, copy_run, evidence_of, metrics, open_page, texts

from dashboards.pages import MONITORING
from dashboards.views.monitoring import NO_DRIFT
from validation.drift import PSI_ALARM

pytestmark = pytest.mark.slow


def test_monitoring_page_shows_which_sites_alarm_why_and_every_comparison(
    drift_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drift = evidence_of(drift_run)["drift"]
    sites = drift["sites"]
    assert drift["alarm_sites"] == ["site-a"]  # the scanner fault of `conftest.drifted`
    app = open_page(monkeypatch, [drift_run], MONITORING)
    comparisons = [(site, c) for site, report in sites.items() for c in report["comparisons"]]
    alarms = [(site, c) for site, c in comparisons if c["alarm"]]
    assert metrics(app) == {
        "Sites checked": f"{len(sites)} of {len(sites)}",
        "Sites alarming": "1",
        "Comparisons alarming": str(len(alarms)),
    }
    (alarm,) = [e.value for e in app.error]
    assert alarm.startswith(f"**site-a: ALARM** ({sites['site-a']['n_new']} new cases): ")
    for _, c in alarms:  # each reason, with its PSI and KS from the evidence
        assert f"{c['feature']} of {c['group']} (PSI {c['psi']:.2f}, KS {c['ks']:.2f}, p " in alarm
    assert [e.value for e in app.success] == [
        f"**{site}**: no alarm ({sites[site]['n_new']} new cases)." for site in ("site-b", "site-c")
    ]

    table = app.dataframe[0].value
    assert list(zip(table["site"], table["scanner group"], table["feature"], strict=True)) == [
        (site, c["group"], c["feature"]) for site, c in comparisons
    ]
    for column, key in (("PSI", "psi"), ("KS statistic", "ks"), ("KS p-value", "ks_p")):
        assert list(table[column]) == pytest.approx([c[key] for _, c in comparisons])
    for column, key in (("reference cases", "n_reference"), ("new cases", "n_new")):
        assert list(table[column]) == [c[key] for _, c in comparisons]
    assert list(table["alarm"]) == ["ALARM" if c["alarm"] else "" for _, c in comparisons]
    too_small = [(site, group) for site, r in sites.items() for group in r["too_small"]]
    assert too_small  # the phantoms leave some scanner groups too small to compare
    not_compared = app.dataframe[1].value
    assert list(zip(not_compared["site"], not_compared["scanner group"], strict=True)) == too_small

    figure = charts(app)["drift-psi"]
    bars = {trace["name"]: trace for trace in figure["data"]}
    assert list(bars) == ["intensity-mean", "intensity-std", "score"]
    for feature, trace in bars.items():
        shown = [(site, c) for site, c in comparisons if c["feature"] == feature]
        assert trace["x"] == pytest.approx([c["psi"] for _, c in shown])
        assert trace["y"] == [f"{site} · {c['group']}" for site, c in shown]
        assert trace["text"] == ["ALARM" if c["alarm"] else "" for _, c in shown]
    (threshold,) = figure["layout"]["shapes"]
    assert threshold["x0"] == threshold["x1"] == PSI_ALARM
    page = texts(app)
    assert drift["method"] in page
    assert str(drift_run / "evidence.json") in page


def test_monitoring_page_shows_sites_not_checked_and_unvalidated_scanners(
    drift_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def edited(evidence: dict[str, Any]) -> None:
        sites = evidence["drift"]["sites"]
        sites["site-b"] |= {"alarm": True, "unvalidated_scanners": {"Philips IQon": 12}}
        sites["site-c"] = {"error": "the site's store could not be read"}
        evidence["drift"]["alarm_sites"] = ["site-a", "site-b"]

    run = copy_run(drift_run, tmp_path / "run", edited)
    app = open_page(monkeypatch, [run], MONITORING)
    assert metrics(app)["Sites checked"] == "2 of 3"
    assert metrics(app)["Sites alarming"] == "2"
    assert [e.value for e in app.error][1] == (
        "**site-b: ALARM** (30 new cases): Philips IQon: 12 new cases from a scanner group it "
        "was never validated on."
    )
    assert [e.value for e in app.warning][-1] == (
        "**site-c**: not checked (the site's store could not be read)."
    )
    assert ("site-b", "Philips IQon") in zip(
        app.dataframe[1].value["site"], app.dataframe[1].value["scanner group"], strict=True
    )

    def malformed(evidence: dict[str, Any]) -> None:
        evidence["drift"]["sites"]["site-a"]["comparisons"][0]["alarm"] = "yes"

    app = open_page(monkeypatch, [copy_run(drift_run, tmp_path / "bad", malformed)], MONITORING)
    assert (
        "Drift alarms: not in this run's evidence (`drift.sites.site-a.comparisons[0].alarm` is "
        "not true or false)."
    ) in texts(app)
    assert "drift-psi" not in charts(app)


def test_monitoring_page_without_drift_says_which_command_checks_it(
    demo_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = open_page(monkeypatch, [demo_run], MONITORING)
    assert [e.value for e in app.info] == [NO_DRIFT]
    assert "`medfed validate --model CKPT --site-dir SITE [...] --out RUN`" in NO_DRIFT
    assert not charts(app) and not app.dataframe
