"""Training: the global model's and each site's metrics (AUC; segmentation: Dice) and losses
per round, for every run given, side by side (strategy A against B, one epsilon against
another)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import streamlit as st

from dashboards import charts, ui
from dashboards.pages import TRAINING
from dashboards.runs import Evidence, EvidenceGap, LogEntry, Round, RunDir

T = TypeVar("T")


def render() -> list[RunDir]:
    """The Training page of the runs picked on it (all by default)."""
    st.title(TRAINING.title)
    all_runs = ui.runs()
    if not all_runs:
        st.error(ui.NO_RUNS)
        return []
    for run in all_runs:
        ui.show_notices(run)
    readable = [run for run in all_runs if run.evidence is not None]
    if not readable:
        return all_runs
    chosen = readable
    if len(readable) > 1:
        labels = st.multiselect(
            "Runs compared", [r.label for r in readable], default=[r.label for r in readable]
        )
        chosen = [r for r in readable if r.label in labels]
        if not chosen:
            st.info("Pick at least one run.")
            return []
    summaries = {run.label: s for run in chosen if (s := _read(run, lambda e: e.summary))}
    if any(summary.simulated for summary in summaries.values()):
        st.warning("Simulated data: scanner differences simulated.")
    with ui.section("Runs"):
        _comparison(chosen)
    rounds = _rounds(chosen)
    with ui.section("Global model per round"):
        if not rounds:
            raise EvidenceGap("no run has per-round records (`rounds`)")
        tasks = {t.name: t for run in chosen if (t := _read(run, lambda e: e.task))}
        headlines = [task.headline for task in tasks.values()]
        ui.chart(charts.global_per_round(rounds, headlines), "global-per-round")
    with ui.section("Each site per round"):
        if not rounds:
            raise EvidenceGap("no run has per-round records (`rounds`)")
        available = charts.site_round_series(rounds)
        if not available:
            raise EvidenceGap("no site recorded a metric in any round (`rounds[].sites`)")
        series = st.selectbox("Metric", available)
        ui.chart(charts.sites_per_round(rounds, series), "sites-per-round")
    with ui.section("Time per phase"):
        timings = {label: s.timings for label, s in summaries.items() if s.timings}
        if not timings:
            raise EvidenceGap("no run records its phases' times (`run.timings_s`)")
        ui.chart(charts.phase_times(timings), "phase-times")
    with ui.section("Round log (rounds.jsonl)"):
        for run in chosen:
            _round_log(run, several=len(chosen) > 1)
    return chosen


def _read(run: RunDir, part: Callable[[Evidence], T]) -> T | None:
    """``part`` of the run's evidence (what the run was, its task), None when the evidence
    does not say."""
    try:
        return None if run.evidence is None else part(run.evidence)
    except EvidenceGap:
        return None


def _comparison(runs: list[RunDir]) -> None:
    rows = []
    for run in runs:
        evidence = run.evidence
        if evidence is None:
            continue
        row: dict[str, object] = {"run": run.label}
        with ui.section(run.label, heading=False):
            summary = evidence.summary
            headline = evidence.task.headline
            row |= {
                "task": evidence.task.name,
                "strategy": summary.strategy,
                "privacy": summary.epsilon_label,
                "rounds": summary.rounds,
                "sites": len(evidence.sites),
                f"global pooled {headline.name} [95% CI]": ui.estimate(
                    evidence.pooled.metrics.get(headline.key)
                ),
                f"pooled-centralized {headline.name}": ui.estimate(
                    evidence.baselines.get("pooled-centralized")
                ),
                "epsilon spent (largest site)": max(
                    (s.epsilon for s in evidence.sites if s.epsilon is not None), default=None
                ),
            }
        rows.append(row)
    st.dataframe(
        rows,
        hide_index=True,
        width="stretch",
        column_config={
            "epsilon spent (largest site)": st.column_config.NumberColumn(format="%.3f")
        },
    )


def _rounds(runs: list[RunDir]) -> dict[str, tuple[Round, ...]]:
    """Each run's rounds; a run whose rounds cannot be read says so and is left out."""
    rounds = {}
    for run in runs:
        if run.evidence is None:
            continue
        try:
            rounds[run.label] = run.evidence.rounds
        except EvidenceGap as gap:
            st.info(f"{run.label}: no per-round records ({gap}).")
    return {label: r for label, r in rounds.items() if r}


def _round_log(run: RunDir, several: bool) -> None:
    if run.round_log is None:
        st.info(f"{run.label}: no readable rounds.jsonl, so no round log (see above).")
        return
    with st.expander(
        f"{run.label}: {len(run.round_log)} records" if several else f"{len(run.round_log)} records"
    ):
        st.dataframe(_log_rows(run.round_log), hide_index=True, width="stretch")


def _log_rows(entries: tuple[LogEntry, ...]) -> list[dict[str, object]]:
    return [
        {"round": e.round, "phase": e.phase, "site": e.site, **e.metrics, "outcome": e.outcome}
        for e in entries
    ]


if __name__ == "__main__":
    ui.footer(TRAINING.title, render())
