"""What ``medfed dashboard`` serves around the pages (`dashboards.server`): the run
directories are loaded before the first visit."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashboards import ui
from dashboards.launch import SERVER, streamlit_command
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
