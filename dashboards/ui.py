"""What the pages share: the run directories named on the command line (loaded once per
change of their files), the run picker, notices, sections that turn a gap in the evidence
into a message, charts and number formatting."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from dashboards.pages import END_PREFIX
from dashboards.plotly_chart import plotly_chart
from dashboards.runs import (
    EVIDENCE_FILE,
    Estimate,
    EvidenceGap,
    RunDir,
    file_signature,
    load_run,
    load_runs,
)

#: Session-state key of the run the sidebar picked.
RUN_KEY = "medfed_run"
USAGE = "medfed dashboard RUN [RUN ...]"
NO_RUNS = f"No run directory given. Start the dashboard with `{USAGE}`."
#: Every chart's element key starts so (Streamlit gives its container the CSS class
#: ``st-key-<key>``, which `dashboards.browser_check` waits on).
CHART_KEY_PREFIX = "chart-"
#: Plotly's mode bar without the logo (and nothing that would reach the network).
PLOTLY_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


def run_paths() -> list[Path]:
    """The run directories given after ``--`` (``streamlit run app.py -- RUN ...``)."""
    return [Path(arg) for arg in sys.argv[1:]]


@st.cache_resource(max_entries=64, show_spinner=False)
def _load_cached(path: str, signature: tuple[tuple[str, int, int], ...]) -> RunDir:
    """`load_run`, once per path and state of its files (``signature``)."""
    del signature  # part of the cache key only
    return load_run(Path(path))


def _load(path: Path) -> RunDir:
    return _load_cached(str(path), file_signature(path))


def runs(paths: Sequence[Path] | None = None) -> list[RunDir]:
    """Every run directory given (``paths``, by default those on the command line), loaded
    (once per state of its files) and labelled."""
    return load_runs(run_paths() if paths is None else paths, _load)


def sidebar(all_runs: list[RunDir]) -> None:
    """The run picker (with several runs) and where each run is."""
    with st.sidebar:
        if len(all_runs) > 1:
            st.selectbox(
                "Run",
                options=range(len(all_runs)),
                format_func=lambda i: all_runs[i].label,
                key=RUN_KEY,
                help="The run the Federation, Cross-site and Acceptance pages show; the "
                "Training page compares all runs.",
            )
        for run in all_runs:
            st.caption(f"**{run.label}**  \n`{run.path}`")


def show_notices(run: RunDir) -> None:
    """Each problem found in ``run``'s directory, as an error, warning or info box."""
    for notice in run.notices:
        {"error": st.error, "warning": st.warning, "info": st.info}[notice.level](notice.text)


def page(title: str) -> RunDir | None:
    """The page's title, then the run picked in the sidebar: its problems, what it is (its
    task among it) and the simulated-data banner. None (after saying so) when no run was
    given; a run whose evidence cannot be read, or is of a task this dashboard does not
    know, has ``evidence`` None (its problems shown)."""
    st.title(title)
    all_runs = runs()
    if not all_runs:
        st.error(NO_RUNS)
        return None
    index = st.session_state.get(RUN_KEY, 0)
    run = all_runs[index if 0 <= index < len(all_runs) else 0]
    show_notices(run)
    if run.evidence is None:
        return run
    try:
        task = run.evidence.task
    except EvidenceGap as gap:
        st.error(f"This run's evidence cannot be shown: {gap}.")
        return replace(run, evidence=None)
    try:
        summary = run.evidence.summary
    except EvidenceGap as gap:
        st.warning(f"What this run was is not in its evidence: {gap}.")
        return run
    parts = [
        f"run **{summary.id}**",
        task.name,
        summary.created,
        summary.strategy and f"strategy {summary.strategy}",
        summary.rounds is not None and f"{summary.rounds} rounds",
        summary.epsilon_label,
        summary.code_version and f"medfed {summary.code_version}",
    ]
    st.caption(" · ".join(str(p) for p in parts if p))
    if summary.simulated:
        st.warning(
            f"Simulated data: scanner differences simulated ({summary.data or 'no description'})."
        )
    return run


@contextmanager
def section(title: str, *, heading: bool = True) -> Iterator[None]:
    """A part of a page; a gap in the evidence (or a shape this dashboard does not know)
    becomes a message in its place, never a traceback."""
    if heading:
        st.subheader(title)
    try:
        yield
    except EvidenceGap as gap:
        st.info(f"{title}: not in this run's evidence ({gap}).")
    except Exception as exc:  # an evidence shape this dashboard does not know
        st.error(
            f"{title} cannot be drawn from this run's evidence.json ({type(exc).__name__}: {exc})."
        )


def footer(title: str, shown: Sequence[RunDir]) -> None:
    """The page's last line: which files it was drawn from (`PageSpec.end_text` first)."""
    sources = ", ".join(f"`{run.path / EVIDENCE_FILE}`" for run in shown) or "no run"
    st.caption(f"{END_PREFIX}{title}: drawn from {sources}")


def chart(figure: go.Figure, key: str) -> None:
    """A Plotly figure, full width (`dashboards.plotly_chart`)."""
    plotly_chart(figure, CHART_KEY_PREFIX + key, PLOTLY_CONFIG)


def number(value: float | None, digits: int = 3) -> str:
    """``value`` rounded, or "n/a"."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def p_value(value: float | None) -> str:
    """ "0.035", "1.7e-14" below 0.001, or "n/a"."""
    if value is None:
        return "n/a"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def estimate(value: Estimate | None, digits: int = 3) -> str:
    """ "0.879 [0.765, 0.945]", "0.879" without an interval, "n/a" when undefined."""
    if value is None or value.value is None:
        return "n/a"
    if value.ci_low is None or value.ci_high is None:
        return number(value.value, digits)
    return f"{value.value:.{digits}f} [{value.ci_low:.{digits}f}, {value.ci_high:.{digits}f}]"
