"""The dashboard in a real browser: ``medfed dashboard`` serving a demo run, each page opened
in headless Chromium until its charts are drawn, its visible text checked against the run's
evidence, no console error, no request beyond the dashboard's own address, a screenshot of
each; then Ctrl-C stops it cleanly. The Monitoring page also over an evaluation-only job
whose drift check alarms (``medfed validate``)."""

from __future__ import annotations

import gzip
import json
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dashboards.browser_check import check_page, navigation_expression, page_url
from dashboards.pages import (
    ACCEPTANCE,
    CROSS_SITE,
    FEDERATION,
    MONITORING,
    PAGES,
    TRAINING,
    PageSpec,
)
from dashboards.plotly_chart import BUNDLE, BUNDLE_URL, PRELOAD_TAG
from dashboards.runs import load_runs
from validation.drift import PSI_ALARM
from validation.report.browser import browse, find_chromium

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_chromium() is None, reason="needs Chromium (apt-get install chromium)"),
]
PNG = b"\x89PNG\r\n\x1a\n"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _serving(run: Path) -> Iterator[str]:
    """``medfed dashboard`` serving ``run``: its address; stopped with Ctrl-C (SIGINT), which
    must end it cleanly and free its port."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "medfed", "dashboard", str(run), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline() if process.stdout else ""
    if not line:
        process.kill()
        pytest.fail(f"medfed dashboard did not start: {process.communicate()[1][-2000:]}")
    assert line == f"dashboard: http://127.0.0.1:{port}/ (1 run; Ctrl-C to stop)\n"
    try:
        yield f"http://127.0.0.1:{port}"
    except BaseException:  # a failed check: stop it all the same
        process.kill()
        process.communicate()
        raise
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out.strip() == "dashboard stopped"
    with socket.socket() as probe:  # Streamlit is gone with it
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


@pytest.fixture(scope="module")
def dashboard(demo_run: Path) -> Iterator[str]:
    """The dashboard serving the demo run."""
    with _serving(demo_run) as address:
        yield address


def _check(address: str, page: PageSpec, shot: Path, charts: int, visible: list[str]) -> None:
    """``page`` drawn in Chromium with ``charts`` charts and the ``visible`` texts, no error,
    nothing requested from elsewhere, and its screenshot in ``shot``."""
    check = check_page(address, page, shot)
    assert check.log.figures == charts, (page.title, check.log.figures)
    assert check.errors == [], (page.title, check.errors)
    assert check.foreign_requests == [], (page.title, check.foreign_requests)
    assert check.log.requests, "the page loaded nothing from the dashboard"
    # plotly.js's cartesian bundle from the dashboard, once; not Streamlit's full plotly.js.
    assert sum(url.endswith(BUNDLE_URL) for url in check.log.requests) == 1, page.title
    assert not [url for url in check.log.requests if "PlotlyChart" in url]
    for text in [page.title, "scanner differences simulated", *visible]:
        assert text in check.log.text, (page.title, text)
    assert "Traceback" not in check.log.text
    assert shot.read_bytes().startswith(PNG) and shot.stat().st_size > 20_000


def test_every_page_draws_in_chromium_offline(
    dashboard: str, demo_run: Path, tmp_path: Path
) -> None:
    """Tables are drawn on canvases: the text checked is the rest (headings, messages,
    metrics, chart axes and legends)."""
    evidence = json.loads((demo_run / "evidence.json").read_text())
    sites = [s["id"] for s in evidence["sites"]]
    (label,) = [run.label for run in load_runs([demo_run])]
    records = sum(1 for line in (demo_run / "rounds.jsonl").open() if line.strip())
    expected = {
        FEDERATION: (3, [evidence["run"]["id"], *sites, "Participation per round",
                         "No site refused to train for its privacy budget"]),
        TRAINING: (3, ["Global model per round", "Each site per round", label,
                       f"{records} records"]),
        CROSS_SITE: (5, ["Cross-site matrix", "Forest plots", *evidence["cross_site"]["models"],
                         "ROC curves", f"pooled (AUC {evidence['roc']['pooled']['auc']:.3f})"]),
        ACCEPTANCE: (1, [evidence["acceptance_plan"]["sha256"], "Drill-down",
                         "Report (HTML)", "Report (PDF)", "Evidence (JSON)"]),
        MONITORING: (0, ["Data drift is not in this run's evidence", "medfed validate"]),
    }  # fmt: skip
    for page in PAGES:
        charts, visible = expected[page]
        _check(dashboard, page, tmp_path / f"{page.url_path}.png", charts, visible)


def test_the_monitoring_page_draws_a_drift_alarm_in_chromium(
    drift_run: Path, tmp_path: Path
) -> None:
    drift = json.loads((drift_run / "evidence.json").read_text())["drift"]
    alarm = next(c for c in drift["sites"]["site-a"]["comparisons"] if c["alarm"])
    visible = [
        "site-a: ALARM",
        f"{alarm['feature']} of {alarm['group']} (PSI {alarm['psi']:.2f}",
        "site-b: no alarm",
        f"alarm threshold: PSI {PSI_ALARM:g}",
        "Comparisons",
    ]
    with _serving(drift_run) as address:
        _check(address, MONITORING, tmp_path / "monitoring.png", 1, visible)


def test_the_sidebar_switches_pages_without_reloading(dashboard: str) -> None:
    log = browse(page_url(dashboard, FEDERATION), navigation_expression(FEDERATION, CROSS_SITE))
    assert log.ready_value["charts"] == 5
    assert "Cross-site matrix" in log.text
    assert log.errors == []


def test_a_page_opened_again_is_drawn_from_the_browsers_cache(dashboard: str) -> None:
    """What the benchmark's "cache warm" column times: the second load of a page in one
    browser, whose log is that load's alone and still draws every chart."""
    fresh = check_page(dashboard, CROSS_SITE)
    check = check_page(dashboard, CROSS_SITE, warm=True)
    assert check.log.figures == 5
    assert check.errors == [] and check.foreign_requests == []
    # One load's requests (cached ones included), not both loads'.
    assert 0 < len(check.log.requests) <= len(fresh.log.requests)
    assert "Cross-site matrix" in check.log.text


def _get(url: str) -> tuple[dict[str, str], bytes]:
    """GET ``url`` as a browser would (gzip accepted): its headers and its decoded body."""
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=30) as response:
        headers = {k.lower(): v for k, v in response.headers.items()}
        body = response.read()
    if headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    return headers, body


def test_every_page_asks_for_the_dashboards_own_plotly_js_early(dashboard: str) -> None:
    """Each page's HTML (at the root and at its own path) fetches the charts' plotly.js
    while Streamlit starts; the dashboard serves it as JavaScript, cacheable for good."""
    for page in PAGES:
        headers, html = _get(page_url(dashboard, page))
        assert headers["content-type"].startswith("text/html")
        assert html.count(PRELOAD_TAG.encode()) == 1, page.title
        assert html.index(PRELOAD_TAG.encode()) < html.index(b"</head>")
    headers, script = _get(dashboard + BUNDLE_URL)
    assert headers["content-type"].startswith("text/javascript")
    assert "immutable" in headers["cache-control"]
    assert script == BUNDLE.read_bytes()
