"""Cross-site and cross-scanner: the cross-site matrix, forest plots across sites and
manufacturers, performance in every stratum, ROC and calibration curves (a segmentation run:
its matrix in mean Dice, each site's and manufacturer's Dice and HD95 with their intervals,
and its strata; it has no meta-analysis, ROC or calibration)."""

from __future__ import annotations

from typing import Literal

import streamlit as st

from dashboards import charts, ui
from dashboards.pages import CROSS_SITE
from dashboards.runs import (
    METRIC_NAMES,
    STRATUM_TABLES,
    Evidence,
    EvidenceGap,
    ForestRow,
    MetaAnalysis,
    RunDir,
    StratumResult,
)
from task.architectures import SEGMENTATION
from validation.acceptance import UNBOUNDED_METRICS

#: What a segmentation run does not have, in place of those sections.
NOT_SEGMENTATION = (
    "Manufacturer differences in AUC, ROC curves and calibration do not apply to "
    "segmentation: a segmentation run has no per-case score to rank or calibrate."
)


def render() -> list[RunDir]:
    """The Cross-site page of the run picked in the sidebar."""
    run = ui.page(CROSS_SITE.title)
    if run is None:
        return []
    evidence = run.evidence
    if evidence is None:
        return [run]
    with ui.section("Cross-site matrix"):
        ui.chart(charts.cross_site_matrix(evidence.cross_site, evidence.task), "cross-site")
        st.caption(
            "Each model (the global model, each site's local-only model, the "
            "pooled-centralized baseline) tested on each site's held-out test data."
        )
    if evidence.task.name == SEGMENTATION:
        _segmentation(evidence)
        return [run]
    with ui.section("Forest plots"):
        metric = _metric_box(_forest_metrics(evidence))
        left, right = st.columns(2)
        for column, across in ((left, "sites"), (right, "manufacturers")):
            with column, ui.section(f"Across {across}", heading=False):
                _forest(evidence, across, metric)
    with ui.section("Manufacturer differences in AUC"):
        _auc_differences(evidence)
    with ui.section("Performance by stratum"):
        _strata(evidence)
    with ui.section("ROC curves"):
        ui.chart(charts.roc_curves(evidence.roc), "roc")
    with ui.section("Calibration"):
        _calibration(evidence)
    return [run]


def _segmentation(evidence: Evidence) -> None:
    """A segmentation run's sections below its cross-site matrix."""
    with ui.section("Intervals across sites and manufacturers"):
        metric = _metric_box(list(evidence.task.metrics))
        left, right = st.columns(2)
        for column, kind, across in (
            (left, "site", "sites"),
            (right, "manufacturer", "manufacturers"),
        ):
            with column, ui.section(f"Across {across}", heading=False):
                _intervals(evidence, kind, across, metric)
        st.caption(
            "Each stratum's estimate and 95% interval as the evidence gives them (strata "
            "withheld below a site's minimum cell size are not shown), and the pooled one: "
            "all sites' test data together, not a meta-analysis."
        )
    with ui.section("Performance by stratum"):
        _strata(evidence)
    st.info(NOT_SEGMENTATION)


def _metric_box(metrics: list[str]) -> str:
    """The metric picked among ``metrics`` (the first by default)."""
    return st.selectbox("Metric", metrics, format_func=lambda m: METRIC_NAMES.get(m, m))


def _intervals(evidence: Evidence, kind: str, across: str, metric: str) -> None:
    """``metric`` in every stratum of ``kind`` (site, manufacturer) and pooled (each over
    its own cases: the strata table has their counts)."""
    rows = [
        ForestRow(name, None, estimate.value, estimate.ci_low, estimate.ci_high, None)
        for name, result in evidence.strata(STRATUM_TABLES[kind]).items()
        if (estimate := result.metrics.get(metric)) is not None
    ]
    pooled = evidence.pooled.metrics.get(metric)
    if pooled is None:
        raise EvidenceGap(f"`performance.pooled` has no {metric}")
    name = METRIC_NAMES.get(metric, metric)
    figure = charts.strata_intervals(
        rows, pooled, f"{name} across {across}", name, metric not in UNBOUNDED_METRICS
    )
    ui.chart(figure, f"intervals-{across}")


def _forest_metrics(evidence: Evidence) -> list[str]:
    """The metrics the evidence has forest rows for, AUC first."""
    found: set[str] = set()
    for across in ("sites", "manufacturers"):
        try:
            found |= set(evidence.heterogeneity(across))
        except EvidenceGap:
            continue
    if not found:
        raise EvidenceGap(
            "`heterogeneity` has no forest plots (across_sites, across_manufacturers)"
        )
    order = evidence.task.metrics
    return sorted(found, key=lambda m: (order.index(m) if m in order else len(order), m))


def _forest(evidence: Evidence, across: Literal["sites", "manufacturers"], metric: str) -> None:
    analyses = evidence.heterogeneity(across)
    if metric not in analyses:
        raise EvidenceGap(f"`heterogeneity.across_{across}` has no {metric}")
    meta = analyses[metric]
    title = f"{METRIC_NAMES.get(metric, metric)} across {across}"
    ui.chart(charts.forest(meta, title, _not_pooled(evidence, across, meta)), f"forest-{across}")
    st.caption(_heterogeneity_line(meta))


def _not_pooled(
    evidence: Evidence, across: Literal["sites", "manufacturers"], meta: MetaAnalysis
) -> list[ForestRow]:
    """The strata the meta-analysis left out, with their own estimates and intervals from
    the evidence's performance tables, so that the plot shows every stratum."""
    table = evidence.strata(STRATUM_TABLES["site" if across == "sites" else "manufacturer"])
    rows = []
    for name in meta.excluded:
        estimate = table[name].metrics.get(meta.metric) if name in table else None
        if estimate is not None and estimate.value is not None:
            rows.append(
                ForestRow(name, None, estimate.value, estimate.ci_low, estimate.ci_high, None)
            )
    return rows


def _heterogeneity_line(meta: MetaAnalysis) -> str:
    parts = [f"{meta.k} strata pooled" if meta.k is not None else ""]
    parts.append(f"random effects {ui.estimate(meta.random)}")
    if meta.i2 is not None:
        parts.append(f"I² {meta.i2:.0%}")
    if meta.q is not None:
        p = f", p = {meta.q_p_value:.3f}" if meta.q_p_value is not None else ""
        parts.append(f"Cochran's Q {meta.q:.2f} on {meta.df} df{p}")
    if meta.tau2 is not None:
        parts.append(f"τ² {meta.tau2:.3f}")
    line = "; ".join(p for p in parts if p) + "."
    if meta.excluded:
        line += " Not pooled: " + "; ".join(f"{k} ({why})" for k, why in meta.excluded.items())
    return line


def _auc_differences(evidence: Evidence) -> None:
    differences = evidence.auc_differences
    if not differences:
        st.info("No pair of manufacturers to compare in this run.")
        return
    st.dataframe(
        [
            {
                "manufacturer A": d.a,
                "manufacturer B": d.b,
                "AUC A - AUC B": d.difference,
                "95% CI": f"[{ui.number(d.ci_low)}, {ui.number(d.ci_high)}]",
                "p": d.p_value,
                "method": d.method,
            }
            for d in differences
        ],
        hide_index=True,
        width="stretch",
        column_config={
            "AUC A - AUC B": st.column_config.NumberColumn(format="%.3f"),
            "p": st.column_config.NumberColumn(format="%.3f"),
        },
    )


def _strata(evidence: Evidence) -> None:
    subgroups = evidence.subgroups()
    kinds = [*STRATUM_TABLES, *(f"subgroup: {column}" for column in subgroups)]
    kind = st.selectbox("Strata", kinds)
    if kind in STRATUM_TABLES:
        results = evidence.strata(STRATUM_TABLES[kind])
    else:
        results = subgroups[kind.removeprefix("subgroup: ")]
    st.dataframe(
        [
            _stratum_row(evidence, kind, name, r)
            for name, r in {"pooled": evidence.pooled, **results}.items()
        ],
        hide_index=True,
        width="stretch",
    )
    withheld = "Strata withheld below a site's minimum cell size are not shown (see Federation)."
    if evidence.task.name == SEGMENTATION and evidence.has("segmentation"):
        segmentation = evidence.segmentation
        st.caption(
            f"A pixel is lesion at a probability >= {ui.number(segmentation.pixel_threshold, 2)}. "
            + " ".join(
                f"{METRIC_NAMES.get(m, m)}: {text}." for m, text in segmentation.definitions.items()
            )
            + f" {withheld}"
        )
    elif evidence.pooled.threshold is not None:
        st.caption(
            f"At the operating threshold {evidence.pooled.threshold:.3f}, fixed on training "
            f"data. {withheld}"
        )


def _stratum_row(
    evidence: Evidence, kind: str, name: str, result: StratumResult
) -> dict[str, object]:
    """A stratum's line of the table: cases, positives (cases with a lesion) and the task's
    metrics with their intervals."""
    task = evidence.task
    return {
        kind: name,
        "n": result.n,
        task.positives: result.n_pos,
        **{f"{METRIC_NAMES[m]} [95% CI]": ui.estimate(result.metrics.get(m)) for m in task.metrics},
        "flags": "; ".join(result.flags),
    }


def _calibration(evidence: Evidence) -> None:
    curves = evidence.calibration
    assessed = [c.name for c in curves if c.not_assessed is None]
    if assessed:
        shown = st.multiselect("Reliability curves of", assessed, default=assessed[:1])
        ui.chart(charts.reliability([c for c in curves if c.name in shown]), "reliability")
    st.dataframe(
        [
            {
                "stratum": c.name,
                "n": c.n,
                "ECE": c.ece,
                "Brier": c.brier,
                "slope [95% CI]": ui.estimate(c.slope, 2),
                "intercept [95% CI]": ui.estimate(c.intercept, 2),
                "calibration-in-the-large": ui.estimate(c.in_the_large, 2),
                "not assessed": c.not_assessed or "",
            }
            for c in curves
        ],
        hide_index=True,
        width="stretch",
        column_config={
            "ECE": st.column_config.NumberColumn(format="%.3f"),
            "Brier": st.column_config.NumberColumn(format="%.3f"),
        },
    )


if __name__ == "__main__":
    ui.footer(CROSS_SITE.title, render())
