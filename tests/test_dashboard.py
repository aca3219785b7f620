"""The dashboard (``medfed dashboard``): every page run by Streamlit's AppTest on a real demo
run, its numbers checked against the run's evidence.json; partial, empty and corrupt run
directories shown as messages, never as exceptions; the command's errors."""

from __future__ import annotations

import json
import shutil
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest
from test_cli import medfed

from dashboards.launch import APP
from dashboards.pages import (
    ACCEPTANCE,
    CROSS_SITE,
    END_PREFIX,
    FEDERATION,
    PAGES,
    TRAINING,
    PageSpec,
)
from dashboards.plotly_chart import COMPONENT_NAME
from dashboards.runs import EvidenceGap, Node, load_run, load_runs
from dashboards.ui import CHART_KEY_PREFIX, NO_RUNS

# --- helpers --------------------------------------------------------------------------------


def open_page(monkeypatch: pytest.MonkeyPatch, runs: Sequence[Path], page: PageSpec) -> AppTest:
    """The dashboard over ``runs`` (as ``medfed dashboard`` passes them) showing ``page``;
    fails on any exception the page raised."""
    monkeypatch.setattr(sys, "argv", [str(APP), *map(str, runs)])
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.run()
    if page is not PAGES[0]:
        app.switch_page(page.script).run()
    assert_clean(app)
    return app


def assert_clean(app: AppTest) -> None:
    """No exception reached the page, and the page was drawn to its end."""
    assert not app.exception, [e.value for e in app.exception]
    assert any(c.value.startswith(END_PREFIX) for c in app.caption), "page not drawn to its end"


def texts(app: AppTest) -> str:
    """Every text the page shows, one per line."""
    kinds = ("title", "subheader", "markdown", "caption", "info", "warning", "error", "success")
    return "\n".join(str(e.value) for kind in kinds for e in getattr(app, kind))


def charts(app: AppTest) -> dict[str, dict[str, Any]]:
    """The page's Plotly figures (the chart component's data) by chart key."""
    figures = {}
    for element in app.get("bidi_component"):
        assert element.proto.component_name == COMPONENT_NAME
        key = element.proto.id.split(f"-{CHART_KEY_PREFIX}", 1)[1]
        figures[key] = json.loads(json.loads(element.proto.json)["figure"])
    return figures


def choose(app: AppTest, label: str, value: object) -> None:
    """Pick ``value`` in the page's select box ``label`` and rerun; the page stays clean."""
    next(box for box in app.selectbox if box.label == label).set_value(value).run()
    assert_clean(app)


def metrics(app: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in app.metric}


def evidence_of(run: Path) -> dict[str, Any]:
    return json.loads((run / "evidence.json").read_text())


def copy_run(run: Path, to: Path, change: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """A copy of ``run`` (without checkpoints) whose evidence ``change`` edited in place."""
    copy = Path(shutil.copytree(run, to, ignore=shutil.ignore_patterns("checkpoints")))
    if change is not None:
        evidence = evidence_of(copy)
        change(evidence)
        (copy / "evidence.json").write_text(json.dumps(evidence))
    return copy


def estimate(metric: dict[str, Any]) -> str:
    return f"{metric['value']:.3f} [{metric['ci_low']:.3f}, {metric['ci_high']:.3f}]"


# --- every page on a demo run ---------------------------------------------------------------


@pytest.mark.slow
def test_federation_page_shows_sites_scanners_participation_and_privacy(
    demo_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evidence = evidence_of(demo_run)
    sites = evidence["sites"]
    app = open_page(monkeypatch, [demo_run], FEDERATION)
    shown = metrics(app)
    assert shown["Sites"] == str(len(sites))
    assert shown["Training cases"] == str(sum(s["n_train"] for s in sites))
    assert shown["Test cases"] == str(sum(s["n_test"] for s in sites))
    assert shown["Scanner models"] == str(len({name for s in sites for name in s["scanners"]}))
    table = app.dataframe[0].value
    assert list(table["site"]) == [s["id"] for s in sites]
    assert list(table["test cases"]) == [s["n_test"] for s in sites]

    figures = charts(app)
    assert set(figures) == {"scanners-per-site", "participation", "epsilon-per-round"}
    bars = {trace["name"]: trace["y"] for trace in figures["scanners-per-site"]["data"]}
    for i, site in enumerate(sites):
        assert {name: ys[i] for name, ys in bars.items() if ys[i]} == site["scanners"]
    heatmap = figures["participation"]["data"][0]
    assert heatmap["y"] == [s["id"] for s in sites]
    assert heatmap["x"] == [r["round"] for r in evidence["rounds"]]
    assert {cell for row in heatmap["customdata"] for cell in row} == {"trained and evaluated"}
    lines = {t["name"]: t for t in figures["epsilon-per-round"]["data"]}
    for site in sites:
        history = site["privacy"]["history"]
        assert lines[site["id"]]["x"] == [h["round"] for h in history]
        assert lines[site["id"]]["y"] == pytest.approx([h["epsilon"] for h in history])
    privacy = app.dataframe[1].value
    assert list(privacy["epsilon spent"]) == pytest.approx([s["privacy"]["epsilon"] for s in sites])
    page = texts(app)
    assert evidence["run"]["id"] in page
    assert "scanner differences simulated" in page  # the run says its data are simulated
    assert "No site refused to train for its privacy budget, and no site failed." in page
    assert str(demo_run / "evidence.json") in page  # the footer names its source


@pytest.mark.slow
def test_training_page_shows_global_and_per_site_metrics_per_round(
    demo_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evidence = evidence_of(demo_run)
    rounds = evidence["rounds"]
    app = open_page(monkeypatch, [demo_run], TRAINING)
    summary = app.dataframe[0].value.iloc[0]
    assert summary["strategy"] == evidence["run"]["strategy"]
    assert summary["global pooled AUC [95% CI]"] == estimate(
        evidence["performance"]["pooled"]["auc"]
    )
    assert summary["pooled-centralized AUC"] == estimate(
        evidence["baselines"]["pooled_centralized"]["auc"]
    )
    figures = charts(app)
    auc, loss = figures["global-per-round"]["data"]
    assert auc["y"] == pytest.approx([r["pooled_auc"] for r in rounds])
    assert loss["y"] == pytest.approx([r["test_loss"] for r in rounds])

    def per_site(figure: dict[str, Any]) -> dict[str, list[float]]:
        return {trace["name"]: trace["y"] for trace in figure["data"]}

    sites = [s["id"] for s in evidence["sites"]]
    shown = per_site(figures["sites-per-round"])
    assert shown == {s: pytest.approx([r["sites"][s]["auc"] for r in rounds]) for s in sites}
    choose(app, "Metric", "training loss")
    shown = per_site(charts(app)["sites-per-round"])
    assert shown == {s: pytest.approx([r["sites"][s]["train_loss"] for r in rounds]) for s in sites}
    phases = charts(app)["phase-times"]["data"][0]
    assert phases["y"] == list(evidence["run"]["timings_s"])
    log_lines = [ln for ln in (demo_run / "rounds.jsonl").read_text().splitlines() if ln]
    assert len(app.dataframe[1].value) == len(log_lines)


@pytest.mark.slow
def test_training_page_compares_runs_side_by_side(
    demo_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def as_fedprox(evidence: dict[str, Any]) -> None:
        evidence["run"]["id"] = "run-fedprox"
        evidence["run"]["strategy"] = "fedprox"
        for r in evidence["rounds"]:
            r["pooled_auc"] = 0.5

    other = copy_run(demo_run, tmp_path / "b" / "run", as_fedprox)
    app = open_page(monkeypatch, [demo_run, other], TRAINING)
    labels = [run.label for run in load_runs([demo_run, other])]
    assert labels[0] != labels[1] and "fedprox" in labels[1]
    assert app.multiselect[0].value == labels
    assert list(app.dataframe[0].value["strategy"]) == ["fedavg", "fedprox"]
    figures = charts(app)
    auc_lines = [t for t in figures["global-per-round"]["data"] if t.get("showlegend")]
    assert [t["name"] for t in auc_lines] == labels
    assert auc_lines[1]["y"] == [0.5] * len(evidence_of(demo_run)["rounds"])
    panels = [a["text"] for a in figures["sites-per-round"]["layout"]["annotations"]]
    assert panels == labels  # one panel per run, side by side
    app.multiselect[0].set_value([labels[1]]).run()
    assert_clean(app)
    assert list(app.dataframe[0].value["run"]) == [labels[1]]


@pytest.mark.slow
def test_cross_site_page_shows_matrix_forest_plots_and_calibration(
    demo_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evidence = evidence_of(demo_run)
    app = open_page(monkeypatch, [demo_run], CROSS_SITE)
    figures = charts(app)
    matrix = figures["cross-site"]["data"][0]
    assert matrix["z"] == evidence["cross_site"]["auc"]
    assert matrix["y"] == evidence["cross_site"]["models"]
    assert matrix["x"] == evidence["cross_site"]["sites"]
    for across, key in (
        ("across_sites", "forest-sites"),
        ("across_manufacturers", "forest-manufacturers"),
    ):
        forest = evidence["heterogeneity"][across]["auc"]
        traces = {t["name"]: t for t in figures[key]["data"]}
        strata = traces["strata"]
        assert strata["x"] == pytest.approx([row["estimate"] for row in forest["forest"]])
        assert [name.split(" (n=")[0] for name in strata["y"]] == [
            r["name"] for r in forest["forest"]
        ]
        for effect, label in (("fixed", "fixed effect"), ("random", "random effects")):
            assert traces[label]["x"] == pytest.approx([forest[effect]["value"]])
        table = evidence["performance"]["by_site" if across == "across_sites" else "by_scanner"]
        if forest["excluded"]:  # shown too, with their own estimates, not pooled
            assert traces["not pooled"]["y"] == [f"{n} (not pooled)" for n in forest["excluded"]]
            assert traces["not pooled"]["x"] == pytest.approx(
                [table[n]["auc"]["value"] for n in forest["excluded"]]
            )
    excluded = evidence["heterogeneity"]["across_manufacturers"]["auc"]["excluded"]
    page = texts(app)
    for name in excluded:
        assert f"Not pooled: {name}" in page or f"; {name} (" in page

    choose(app, "Metric", "sensitivity")
    forest = evidence["heterogeneity"]["across_sites"]["sensitivity"]["forest"]
    assert charts(app)["forest-sites"]["data"][0]["x"] == pytest.approx(  # the strata
        [r["estimate"] for r in forest]
    )

    choose(app, "Strata", "manufacturer")
    table = next(t.value for t in app.dataframe if "manufacturer" in t.value.columns)
    assert list(table["manufacturer"]) == ["pooled", *evidence["performance"]["by_scanner"]]
    assert list(table["n"])[1:] == [s["n"] for s in evidence["performance"]["by_scanner"].values()]

    roc = evidence["roc"]
    traces = charts(app)["roc"]["data"]
    drawn = [s for s, c in roc["by_site"].items() if "not_assessed" not in c]
    assert [t["name"] for t in traces] == [
        "chance",
        f"pooled (AUC {roc['pooled']['auc']:.3f})",
        *(f"{s} (AUC {roc['by_site'][s]['auc']:.3f})" for s in drawn),
    ]
    assert traces[1]["x"] == pytest.approx(roc["pooled"]["fpr"])
    assert traces[1]["y"] == pytest.approx(roc["pooled"]["tpr"])
    assert [t["name"] for t in charts(app)["reliability"]["data"]] == ["perfect", "pooled"]
    assessed = [
        "pooled",
        *(s for s, c in evidence["calibration"]["by_site"].items() if "not_assessed" not in c),
    ]
    next(m for m in app.multiselect if m.label == "Reliability curves of").set_value(assessed).run()
    assert_clean(app)
    reliability = charts(app)["reliability"]["data"]
    assert [t["name"] for t in reliability] == ["perfect", *assessed]
    pooled = evidence["calibration"]["pooled"]["reliability"]
    assert reliability[1]["x"] == pytest.approx([b["predicted"] for b in pooled])
    assert reliability[1]["y"] == pytest.approx([b["observed"] for b in pooled])


@pytest.mark.slow
def test_cross_site_page_without_roc_in_the_evidence_says_so(
    demo_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evidence without ``roc`` (older runs) gets a message where the curves would be, and a
    site whose test data lack a class gets no curve."""
    run = copy_run(demo_run, tmp_path / "run", lambda evidence: evidence.pop("roc"))
    app = open_page(monkeypatch, [run], CROSS_SITE)
    assert "ROC curves: not in this run's evidence (evidence.json has no `roc`)." in texts(app)
    assert "roc" not in charts(app)

    def one_class_site(evidence: dict[str, Any]) -> None:
        site = evidence["sites"][0]["id"]
        evidence["roc"]["by_site"][site] = {"not_assessed": "needs cases of both classes", "n": 3}

    run = copy_run(demo_run, tmp_path / "run2", one_class_site)
    app = open_page(monkeypatch, [run], CROSS_SITE)
    names = [t["name"] for t in charts(app)["roc"]["data"]]
    assert len(names) == 1 + len(evidence_of(run)["sites"])  # chance, pooled, the others
    assert not any(n.startswith(evidence_of(run)["sites"][0]["id"]) for n in names)


@pytest.mark.slow
def test_acceptance_page_drills_down_into_every_scope(
    demo_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evidence = evidence_of(demo_run)
    entries = evidence["acceptance"]
    app = open_page(monkeypatch, [demo_run], ACCEPTANCE)
    verdicts = [{True: "pass", False: "fail", None: "not judged"}[e["passed"]] for e in entries]
    shown = metrics(app)
    for verdict in ("pass", "fail", "not judged"):
        assert shown[verdict] == str(verdicts.count(verdict))
    overview = app.dataframe[0].value
    assert list(overview["criterion"]) == list(dict.fromkeys(e["id"] for e in entries))
    plan = evidence["acceptance_plan"]
    assert plan["sha256"] in texts(app)

    choose(app, "Criterion", "site-auc")
    site_entries = [e for e in entries if e["id"] == "site-auc"]
    scopes = app.dataframe[1].value
    assert list(scopes["scope"]) == [e["scope"] for e in site_entries]
    assert list(scopes["verdict"]) == ["not judged"] * len(site_entries)  # n < min_n = 50
    assert all(e["reason"] in list(scopes["reason / note"]) for e in site_entries)
    values = charts(app)["acceptance-values"]["data"]
    assert sorted(x for t in values for x in t["x"]) == sorted(e["value"] for e in site_entries)

    site = evidence["sites"][1]["id"]
    choose(app, "Scope", f"site:{site}")
    result = evidence["performance"]["by_site"][site]
    detail = app.dataframe[2].value.set_index("metric")
    assert detail.loc["AUC", "95% CI"] == estimate(result["auc"])
    assert detail.loc["sensitivity", "value"] == pytest.approx(result["sensitivity"]["value"])
    shown = metrics(app)
    assert [shown[k] for k in ("tp", "fp", "tn", "fn")] == [
        str(result[k]) for k in ("tp", "fp", "tn", "fn")
    ]

    choose(app, "Criterion", "relative-to-pooled-centralized")
    baseline = app.dataframe[2].value.set_index("model")["pooled AUC [95% CI]"]
    assert baseline["global"] == estimate(evidence["performance"]["pooled"]["auc"])
    assert baseline["pooled-centralized"] == estimate(
        evidence["baselines"]["pooled_centralized"]["auc"]
    )

    downloads = {b.proto.label.split(",")[0]: b.proto for b in app.get("download_button")}
    assert set(downloads) == {"Report (HTML)", "Report (PDF)", "Evidence (JSON)"}


@pytest.mark.slow
def test_the_sidebar_picks_the_run_the_pages_show(
    demo_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def renamed(evidence: dict[str, Any]) -> None:
        evidence["run"]["id"] = "run-second"

    other = copy_run(demo_run, tmp_path / "second", renamed)
    app = open_page(monkeypatch, [demo_run, other], ACCEPTANCE)
    assert "run-second" not in texts(app)
    app.sidebar.selectbox[0].set_value(1).run()
    assert_clean(app)
    assert "run **run-second**" in texts(app)


# --- partial, empty and corrupt run directories ----------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.url_path)
def test_without_a_run_every_page_says_how_to_start(
    page: PageSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = open_page(monkeypatch, [], page)
    assert [e.value for e in app.error] == [NO_RUNS]


def _write(name: str, content: bytes | str | None) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        run = root / "run"
        run.mkdir()
        if content is not None:
            data = content.encode() if isinstance(content, str) else content
            (run / name).write_bytes(data)
        return run

    return make


BROKEN_RUNS = {
    "missing": (lambda root: root / "nowhere", "does not exist"),
    "empty directory": (
        _write("evidence.json", None),
        "has no evidence.json: the run did not finish",
    ),
    "empty evidence": (_write("evidence.json", ""), "evidence.json is empty"),
    "truncated evidence": (
        _write("evidence.json", '{"schema_version": "1.0", "run": {'),
        "is not valid JSON (line 1",
    ),
    "evidence not an object": (_write("evidence.json", "[1, 2]"), "is not a JSON object"),
    "evidence not text": (_write("evidence.json", b"\xff\xfe\x00garbage"), "cannot be read"),
}


@pytest.mark.parametrize("case", BROKEN_RUNS)
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.url_path)
def test_a_broken_run_directory_is_a_message_on_every_page(
    case: str, page: PageSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make, message = BROKEN_RUNS[case]
    app = open_page(monkeypatch, [make(tmp_path)], page)
    errors = [e.value for e in app.error]
    assert len(errors) == 1 and message in errors[0], errors
    assert not charts(app)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.url_path)
def test_evidence_without_its_sections_says_what_is_missing(
    page: PageSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _write("evidence.json", json.dumps({"run": {"id": "run-x"}, "sites": "three"}))(tmp_path)
    app = open_page(monkeypatch, [run], page)
    page_text = texts(app)
    assert "no schema_version" in page_text
    assert "not in this run's evidence" in page_text
    if page in (FEDERATION,):
        assert "`sites` is not a list" in page_text
    if page is CROSS_SITE:
        assert "evidence.json has no `cross_site`" in page_text
    if page is ACCEPTANCE:
        assert "evidence.json has no `acceptance`" in page_text


@pytest.mark.slow
def test_a_partial_run_shows_what_it_has(
    demo_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No rounds.jsonl, no report, evidence without the cross-site matrix and calibration:
    each page says what is missing and draws the rest."""

    def without(evidence: dict[str, Any]) -> None:
        del evidence["cross_site"], evidence["calibration"]

    run = copy_run(demo_run, tmp_path / "run", without)
    for name in ("rounds.jsonl", "report.html", "report.pdf"):
        (run / name).unlink()
    app = open_page(monkeypatch, [run], TRAINING)
    assert "has no rounds.jsonl: the per-round log is not shown" in texts(app)
    assert set(charts(app)) == {"global-per-round", "sites-per-round", "phase-times"}
    app = open_page(monkeypatch, [run], CROSS_SITE)
    page = texts(app)
    assert (
        "Cross-site matrix: not in this run's evidence (evidence.json has no `cross_site`)" in page
    )
    assert "Calibration: not in this run's evidence (evidence.json has no `calibration`)" in page
    assert {"forest-sites", "forest-manufacturers"} <= set(charts(app))
    app = open_page(monkeypatch, [run], ACCEPTANCE)
    assert f"No report.html in this run directory. `medfed report {run}` writes it." in texts(app)
    assert [b.proto.label.split(",")[0] for b in app.get("download_button")] == ["Evidence (JSON)"]


@pytest.mark.slow
def test_refusals_and_dropouts_are_shown(
    demo_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def with_incidents(evidence: dict[str, Any]) -> None:
        site_b = evidence["sites"][1]["id"]
        site_c = evidence["sites"][2]["id"]
        evidence["rounds"][1]["sites"][site_b] = {"refused": "budget exhausted"}
        evidence["rounds"][2]["sites"][site_c] = {"evaluate_error": "site offline"}
        evidence["privacy_refusals"] = [
            {"site": site_b, "round": 2, "stage": "train", "reason": "budget exhausted"}
        ]
        evidence["site_failures"] = [
            {"site": site_c, "round": 3, "stage": "evaluate", "reason": "site offline"}
        ]

    run = copy_run(demo_run, tmp_path / "run", with_incidents)
    app = open_page(monkeypatch, [run], FEDERATION)
    cells = charts(app)["participation"]["data"][0]["customdata"]
    assert cells[1][1] == "refused (refused: budget exhausted)"
    assert cells[2][2] == "failed (evaluate: site offline)"
    tables = [t.value for t in app.dataframe if "reason" in t.value.columns]
    assert [list(t["reason"]) for t in tables] == [["budget exhausted"], ["site offline"]]
    assert "Privacy refusals" in texts(app) and "Dropouts and failures" in texts(app)


def test_rejected_updates_cut_offs_and_dropouts_are_told_apart(
    demo_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A faulty federation's participation (`validation.participation`): a rejected update,
    a straggler cut off and a dropout each have their own state, not "failed"."""
    sites: list[str] = []

    def with_faults(evidence: dict[str, Any]) -> None:
        sites.extend(s["id"] for s in evidence["sites"])
        first, second = evidence["rounds"][0], evidence["rounds"][1]
        first["participation"]["rejected"] = [{"site": sites[0], "reason": "NaN in conv.weight"}]
        first["sites"][sites[0]] = {"train_error": "update rejected: NaN in conv.weight"}
        first["participation"]["cut_off"] = [sites[1]]
        first["sites"].pop(sites[1], None)
        second["participation"]["dropped_out"] = [sites[2]]
        second["sites"][sites[2]] = {"train_error": "node unavailable"}

    run = copy_run(demo_run, tmp_path / "run", with_faults)
    cells = charts(open_page(monkeypatch, [run], FEDERATION))["participation"]["data"][0]
    assert cells["customdata"][0][0] == "update rejected (NaN in conv.weight)"
    assert cells["customdata"][1][0] == "cut off"
    assert cells["customdata"][2][1] == "dropped out (train: node unavailable)"
    assert cells["customdata"][2][0] == "trained and evaluated"  # round 1 untouched
    assert cells["colorbar"]["ticktext"][3:6] == ["update rejected", "cut off", "dropped out"]


# --- the loader ------------------------------------------------------------------------------


def test_a_bad_line_in_the_round_log_is_named(tmp_path: Path) -> None:
    (tmp_path / "evidence.json").write_text("{}")
    (tmp_path / "rounds.jsonl").write_text('{"round": 1, "phase": "summary"}\nnot json\n')
    run = load_run(tmp_path)
    assert run.round_log is None
    assert any("rounds.jsonl line 2 is not a round record" in n.text for n in run.notices)


def test_evidence_fields_of_the_wrong_type_are_named() -> None:
    with pytest.raises(EvidenceGap, match=r"`sites\[0\]\.id` is not a string"):
        Node({"sites": [{"id": 3}]})["sites"][0]["id"].text()
    with pytest.raises(EvidenceGap, match=r"evidence\.json has no `roc`"):
        Node({})["roc"]


def test_runs_are_labelled_by_the_shortest_distinct_path(tmp_path: Path) -> None:
    runs = [tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "c"]
    assert [run.label for run in load_runs(runs)] == ["a/run", "b/run", "c"]


def test_both_layouts_of_the_cross_site_intervals_are_read(tmp_path: Path) -> None:
    """Schema 1 has ``auc_ci`` ([low, high] per cell), later ones ``ci_low`` and ``ci_high``."""
    from dashboards.runs import Evidence

    base = {"models": ["global"], "sites": ["a", "b"], "auc": [[0.8, None]]}
    old = Evidence({"cross_site": base | {"auc_ci": [[[0.7, 0.9], None]]}}).cross_site
    new = Evidence({"cross_site": base | {"ci_low": [[0.7, None]], "ci_high": [[0.9, None]]}})
    assert old.ci == (((0.7, 0.9), None),)
    assert new.cross_site.ci == (((0.7, 0.9), (None, None)),)


# --- the command -----------------------------------------------------------------------------


def test_dashboard_command_help() -> None:
    result = medfed("dashboard", "--help")
    assert result.returncode == 0
    assert "usage: medfed dashboard" in result.stdout and "--port" in result.stdout


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "nowhere", "no such run directory"),
        (lambda root: root / "evidence.json", "not a directory"),
    ],
)
def test_dashboard_command_names_a_bad_run_directory(
    make: Callable[[Path], Path], message: str, tmp_path: Path
) -> None:
    (tmp_path / "evidence.json").write_text("{}")
    result = medfed("dashboard", make(tmp_path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"medfed: error: {make(tmp_path)}: {message}")


def test_dashboard_command_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = medfed("dashboard", tmp_path, "--port", str(port))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0]


@pytest.mark.parametrize(("version", "notice"), [("2.0", False), ("1.0", False), ("3.0", True)])
def test_evidence_of_an_unknown_schema_version_gets_a_notice(
    tmp_path: Path, version: str, notice: bool
) -> None:
    (tmp_path / "evidence.json").write_text(json.dumps({"schema_version": version}))
    texts = [n.text for n in load_run(tmp_path).notices]
    assert any(f"schema version {version}, newer than" in t for t in texts) == notice
