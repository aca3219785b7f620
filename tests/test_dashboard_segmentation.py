"""The dashboard on a real segmentation run (``medfed demo --task segmentation``,
`conftest.segmentation_run`): every page run by AppTest, its numbers (mean Dice, HD95, the
false-positive rate, with their intervals) checked against the run's evidence.json, and what
a segmentation run does not have (ROC, calibration, AUC differences, drift) one line, not an
error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_dashboard import charts, choose, estimate, evidence_of, metrics, open_page, texts

from dashboards.pages import (
    ACCEPTANCE,
    CROSS_SITE,
    FEDERATION,
    MONITORING,
    PAGES,
    TRAINING,
    PageSpec,
)
from dashboards.views.cross_site import NOT_SEGMENTATION
from dashboards.views.monitoring import NO_DRIFT_SEGMENTATION


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.url_path)
def test_every_page_draws_a_segmentation_run_without_gaps_or_auc(
    page: PageSpec, segmentation_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No section says its part of the evidence is missing or cannot be drawn; the one
    line on what does not apply to segmentation is the only mention of AUC."""
    app = open_page(monkeypatch, [segmentation_run], page)
    page_text = texts(app).replace(NOT_SEGMENTATION, "").replace(NO_DRIFT_SEGMENTATION, "")
    for gap in ("not in this run's evidence", "cannot be drawn", "AUC"):
        assert gap not in page_text, (page.title, gap)
    if page is not TRAINING:  # the run's task, at the top (Training: in its table of runs)
        assert "· segmentation ·" in page_text


@pytest.mark.slow
def test_federation_page_shows_the_segmentation_sites(
    segmentation_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sites = evidence_of(segmentation_run)["sites"]
    app = open_page(monkeypatch, [segmentation_run], FEDERATION)
    assert metrics(app)["Test cases"] == str(sum(s["n_test"] for s in sites))
    assert "This run trained without differential privacy" in texts(app)


@pytest.mark.slow
def test_training_page_shows_the_pooled_dice_per_round(
    segmentation_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evidence = evidence_of(segmentation_run)
    rounds = evidence["rounds"]
    app = open_page(monkeypatch, [segmentation_run], TRAINING)
    summary = app.dataframe[0].value.iloc[0]
    assert summary["task"] == "segmentation"
    pooled = evidence["performance"]["pooled"]["dice_mean"]
    assert summary["global pooled mean Dice [95% CI]"] == estimate(pooled)
    baseline = evidence["baselines"]["pooled_centralized"]["dice_mean"]
    assert summary["pooled-centralized mean Dice"].startswith(f"{baseline['value']:.3f}")
    figure = charts(app)["global-per-round"]
    dice, loss = figure["data"]
    assert [a["text"] for a in figure["layout"]["annotations"]] == [
        "pooled test mean Dice",
        "pooled test loss",
    ]
    assert dice["y"] == pytest.approx([r["pooled_dice"] for r in rounds])
    assert loss["y"] == pytest.approx([r["test_loss"] for r in rounds])
    box = next(b for b in app.selectbox if b.label == "Metric")
    assert box.value == "test Dice" and "test AUC" not in box.options
    shown = {t["name"]: t["y"] for t in charts(app)["sites-per-round"]["data"]}
    sites = [s["id"] for s in evidence["sites"]]
    assert shown == {s: pytest.approx([r["sites"][s]["dice"] for r in rounds]) for s in sites}


@pytest.mark.slow
def test_cross_site_page_shows_dice_matrix_intervals_and_strata(
    segmentation_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evidence = evidence_of(segmentation_run)
    performance = evidence["performance"]
    app = open_page(monkeypatch, [segmentation_run], CROSS_SITE)
    figures = charts(app)
    assert set(figures) == {"cross-site", "intervals-sites", "intervals-manufacturers"}
    matrix = figures["cross-site"]["data"][0]
    assert matrix["z"] == evidence["cross_site"]["dice_mean"]
    assert matrix["y"] == evidence["cross_site"]["models"]
    assert matrix["colorbar"]["title"]["text"] == "mean Dice"

    def check_intervals(metric: str) -> None:
        for key, table in (
            ("intervals-sites", "by_site"),
            ("intervals-manufacturers", "by_scanner"),
        ):
            strata, pooled = charts(app)[key]["data"]
            values = {name: result[metric] for name, result in performance[table].items()}
            assert strata["y"] == list(values)
            assert strata["x"] == pytest.approx([v["value"] for v in values.values()])
            assert strata["customdata"] == [
                [v["ci_low"], v["ci_high"], None] for v in values.values()
            ]
            assert pooled["x"] == pytest.approx([performance["pooled"][metric]["value"]])

    check_intervals("dice_mean")
    choose(app, "Metric", "hd95_median")
    check_intervals("hd95_median")

    table = next(t.value for t in app.dataframe if "site" in t.value.columns).set_index("site")
    for site, result in performance["by_site"].items():
        assert table.loc[site, "mean Dice [95% CI]"] == estimate(result["dice_mean"])
        assert table.loc[site, "cases with a lesion"] == result["n_pos"]
    assert table.loc["pooled", "false-positive rate [95% CI]"] == estimate(
        performance["pooled"]["false_positive_rate"]
    )
    page = texts(app)
    assert [e.value for e in app.info] == [NOT_SEGMENTATION]
    assert [h.value for h in app.subheader] == [
        "Cross-site matrix",
        "Intervals across sites and manufacturers",
        "Performance by stratum",
    ]  # no forest plots, AUC differences, ROC curves or calibration
    assert (
        f"A pixel is lesion at a probability >= {evidence['segmentation']['pixel_threshold']:.2f}"
        in page
    )


@pytest.mark.slow
def test_acceptance_page_drills_down_into_segmentation_criteria(
    segmentation_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evidence = evidence_of(segmentation_run)
    entries = evidence["acceptance"]
    app = open_page(monkeypatch, [segmentation_run], ACCEPTANCE)
    assert list(app.dataframe[0].value["criterion"]) == list(
        dict.fromkeys(e["id"] for e in entries)
    )
    assert evidence["acceptance_plan"]["name"] == "medfed segmentation default"

    choose(app, "Criterion", "site-dice")
    site_entries = [e for e in entries if e["id"] == "site-dice"]
    assert list(app.dataframe[1].value["scope"]) == [e["scope"] for e in site_entries]
    assert list(app.dataframe[1].value["value"]) == pytest.approx(
        [e["value"] for e in site_entries]
    )
    site = evidence["sites"][0]["id"]
    choose(app, "Scope", f"site:{site}")
    result = evidence["performance"]["by_site"][site]
    detail = app.dataframe[2].value.set_index("metric")
    assert list(detail.index) == [
        "mean Dice", "median Dice", "median HD95 (mm)", "mean HD95 (mm)", "false-positive rate",
    ]  # fmt: skip
    assert detail.loc["mean Dice", "95% CI"] == estimate(result["dice_mean"])
    assert detail.loc["median HD95 (mm)", "value"] == pytest.approx(result["hd95_median"]["value"])
    shown = metrics(app)
    assert shown["cases with a lesion"] == str(result["n_pos"])
    assert shown["lesions missed"] == str(result["n_missed"])
    assert shown["false positives"] == str(result["n_false_positive"])


@pytest.mark.slow
def test_monitoring_page_says_drift_does_not_apply_to_segmentation(
    segmentation_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = open_page(monkeypatch, [segmentation_run], MONITORING)
    assert [e.value for e in app.info] == [NO_DRIFT_SEGMENTATION]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.url_path)
def test_evidence_of_a_task_this_dashboard_does_not_know_is_a_message(
    page: PageSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    evidence = {"schema_version": "2.1", "run": {"id": "run-x", "task": "detection"}}
    (run / "evidence.json").write_text(json.dumps(evidence))
    app = open_page(monkeypatch, [run], page)
    assert "`run.task` is 'detection', a task this dashboard does not know" in texts(app)
    assert not charts(app)
