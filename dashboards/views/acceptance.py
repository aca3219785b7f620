"""Acceptance: each criterion of the run's acceptance plan with its verdict, a drill-down into
every scope it was judged on, and the run's report and evidence to download."""

from __future__ import annotations

import streamlit as st

from dashboards import charts, ui
from dashboards.pages import ACCEPTANCE
from dashboards.runs import (
    EVIDENCE_FILE,
    METRIC_NAMES,
    REPORT_HTML,
    REPORT_PDF,
    AcceptanceEntry,
    Evidence,
    EvidenceGap,
    RunDir,
)
from validation.acceptance import Scope

#: What can be downloaded: file name, button label, MIME type.
DOWNLOADS = (
    (REPORT_HTML, "Report (HTML)", "text/html"),
    (REPORT_PDF, "Report (PDF)", "application/pdf"),
    (EVIDENCE_FILE, "Evidence (JSON)", "application/json"),
)


def render() -> list[RunDir]:
    """The Acceptance page of the run picked in the sidebar."""
    run = ui.page(ACCEPTANCE.title)
    if run is None:
        return []
    evidence = run.evidence
    if evidence is None:
        return [run]
    with ui.section("Verdicts"):
        _verdicts(evidence)
    with ui.section("Drill-down"):
        _drill_down(evidence)
    with ui.section("Downloads"):
        _downloads(run)
    return [run]


def _criteria(entries: tuple[AcceptanceEntry, ...]) -> dict[str, list[AcceptanceEntry]]:
    """Entries by criterion id, in the plan's order."""
    criteria: dict[str, list[AcceptanceEntry]] = {}
    for entry in entries:
        criteria.setdefault(entry.id, []).append(entry)
    return criteria


def _verdicts(evidence: Evidence) -> None:
    entries = evidence.acceptance
    plan = evidence.acceptance_plan
    if plan:
        st.caption(
            f"Plan **{plan.get('name', '?')}** version {plan.get('version', '?')} "
            f"({plan.get('source', 'source not recorded')}; SHA-256 {plan.get('sha256', '?')})"
        )
    if not entries:
        st.info("The acceptance plan judged nothing in this run.")
        return
    verdicts = [e.verdict for e in entries]
    columns = st.columns(3)
    for column, verdict in zip(columns, charts.VERDICT_COLORS, strict=True):
        column.metric(verdict, verdicts.count(verdict))
    if "fail" in verdicts:
        st.error(f"{verdicts.count('fail')} of {len(entries)} judgements failed.")
    elif "pass" in verdicts:
        st.success(
            f"Every judged criterion passed ({verdicts.count('pass')} of {len(entries)}"
            " judgements; the rest could not be judged)."
            if "not judged" in verdicts
            else f"All {len(entries)} judgements passed."
        )
    else:
        st.warning("No criterion could be judged in this run.")
    st.dataframe(
        [
            {
                "criterion": cid,
                "description": group[0].criterion,
                "scopes": len(group),
                "pass": sum(e.passed is True for e in group),
                "fail": sum(e.passed is False for e in group),
                "not judged": sum(e.passed is None for e in group),
            }
            for cid, group in _criteria(entries).items()
        ],
        hide_index=True,
        width="stretch",
    )


def _drill_down(evidence: Evidence) -> None:
    criteria = _criteria(evidence.acceptance)
    if not criteria:
        st.info("Nothing to drill into: the plan judged nothing.")
        return
    cid = st.selectbox(
        "Criterion", list(criteria), format_func=lambda c: f"{c}: {criteria[c][0].criterion}"
    )
    entries = criteria[cid]
    st.dataframe(
        [
            {
                "scope": e.scope,
                "statistic": e.statistic,
                "value": e.value,
                "operator": e.operator,
                "threshold": e.threshold,
                "n": e.n,
                "verdict": e.verdict,
                "reason / note": e.reason or e.note or "",
            }
            for e in entries
        ],
        hide_index=True,
        width="stretch",
        column_config={"value": st.column_config.NumberColumn(format="%.3f")},
    )
    if any(e.value is not None for e in entries):
        ui.chart(charts.acceptance_values(entries), "acceptance-values")
    scopes = [e.scope for e in entries]
    scope = st.selectbox("Scope", scopes)
    entry = entries[scopes.index(scope)]
    with ui.section(f"Scope {scope}", heading=False):
        show = {"pass": st.success, "fail": st.error}.get(entry.verdict, st.info)
        show(f"{entry.criterion}, {scope}: {_verdict_line(entry)}")
        _scope_detail(evidence, entry)


def _verdict_line(entry: AcceptanceEntry) -> str:
    threshold = "?" if entry.threshold is None else f"{entry.threshold:g}"
    line = (
        f"{entry.statistic or 'value'} = {ui.number(entry.value)}, required "
        f"`{entry.operator} {threshold}`: **{entry.verdict}**"
    )
    return line + (f" ({entry.reason})" if entry.reason else "")


def _scope_detail(evidence: Evidence, entry: AcceptanceEntry) -> None:
    """What the verdict stands on: the scope's results with their intervals, the baseline,
    or the local-only models on the sites they never saw (in the task's metrics)."""
    if entry.note:
        st.caption(entry.note)
    task = evidence.task
    headline = task.headline
    if entry.kind == "unseen_sites":
        st.dataframe(
            [
                {
                    "local-only model of": u.site,
                    "sites it never saw": ", ".join(u.unseen_sites),
                    f"local-only {headline.name}": u.local_only,
                    f"global {headline.name}": u.global_model,
                }
                for u in evidence.unseen_site_comparison
            ],
            hide_index=True,
            width="stretch",
        )
        return
    if entry.kind == "relative_to_baseline":
        pooled = {"global": evidence.pooled.metrics.get(headline.key), **evidence.baselines}
        st.dataframe(
            [
                {"model": name, f"pooled {headline.name} [95% CI]": ui.estimate(value)}
                for name, value in pooled.items()
                if not name.startswith("local-")
            ],
            hide_index=True,
        )
        return
    try:
        scope = Scope.parse(entry.scope)
    except ValueError as exc:
        raise EvidenceGap(
            f"scope '{entry.scope}' is not one this dashboard reads ({exc})"
        ) from None
    result = evidence.stratum(scope.kind, scope.name, scope.column)
    counts = (
        ("test cases", result.n),
        (task.positives, result.n_pos),
        *((label, result.counts.get(key)) for key, label in task.counts),
    )
    for column, (label, value) in zip(st.columns(len(counts)), counts, strict=True):
        column.metric(label, "n/a" if value is None else value)
    st.dataframe(
        [
            {
                "metric": METRIC_NAMES[m],
                "value": result.metrics[m].value,
                "95% CI": ui.estimate(result.metrics[m]),
                "method": result.metrics[m].method,
            }
            for m in task.metrics
            if m in result.metrics
        ],
        hide_index=True,
        width="stretch",
        column_config={"value": st.column_config.NumberColumn(format="%.3f")},
    )
    if result.flags:
        st.warning("Wide intervals: " + "; ".join(result.flags))


def _downloads(run: RunDir) -> None:
    columns = st.columns(len(DOWNLOADS))
    for column, (name, label, mime) in zip(columns, DOWNLOADS, strict=True):
        path = run.file(name)
        if path is None:
            hint = f" `medfed report {run.path}` writes it." if name != EVIDENCE_FILE else ""
            column.info(f"No {name} in this run directory.{hint}")
            continue
        column.download_button(
            f"{label}, {path.stat().st_size / 1e6:.1f} MB",
            data=path.read_bytes,
            file_name=name,
            mime=mime,
            key=f"download-{name}",
            on_click="ignore",
        )


if __name__ == "__main__":
    ui.footer(ACCEPTANCE.title, render())
