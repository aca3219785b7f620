"""What ``medfed dashboard`` serves around the pages (`dashboards.server`): the run
directories are loaded before the first visit; the charts' plotly.js is the release plotly.py
writes figures for."""

from __future__ import annotations

from pathlib import Path

import plotly.offline
import pytest

from dashboards import ui
from dashboards.launch import SERVER, streamlit_command
from dashboards.plotly_chart import BUNDLE, BUNDLE_URL, PLOTLY_JS_VERSION
from dashboards.server import warm_up


def test_the_dashboard_serves_the_app_through_the_server_module(tmp_path: Path) -> None:
    command = streamlit_command([tmp_path], 8501)
    assert command[3:5] == ["run", str(SERVER)]
    assert command[-2:] == ["--", str(tmp_path)]


def test_warm_up_loads_the_runs_into_the_dashboards_cache(
    demo_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ui._load_cached.clear()
    warm_up([demo_run, tmp_path / "nowhere"])  # a bad directory is the pages' business

    def no_reading(path: Path) -> None:
        raise AssertionError(f"{path} read again")

    monkeypatch.setattr(ui, "load_run", no_reading)
    (run,) = ui.runs([demo_run])
    assert run.evidence is not None and run.evidence.sites


def test_the_charts_plotly_js_is_the_release_plotly_py_writes_figures_for() -> None:
    """A plotly.py upgrade that writes figures for another plotly.js fails here until the
    cartesian bundle of that release replaces `BUNDLE`."""
    assert plotly.offline.get_plotlyjs_version() == PLOTLY_JS_VERSION
    header = BUNDLE.read_text(encoding="utf-8")[:300]
    assert f"plotly.js (cartesian - minified) v{PLOTLY_JS_VERSION}" in header
    assert "Licensed under the MIT license" in header
    assert PLOTLY_JS_VERSION in BUNDLE_URL
