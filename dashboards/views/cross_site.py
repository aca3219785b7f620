"""Cross-site and cross-scanner: the cross-site matrix, forest plots across sites and
manufacturers, performance in every stratum, ROC and calibration curves."""

from __future__ import annotations

from typing import Literal

import streamlit as st

from dashboards import charts, ui
from dashboards.pages import CROSS_SITE
from dashboards.runs import (
    METRIC_NAMES,
    METRICS,
    STRATUM_TABLES,
    Evidence,
    EvidenceGap,
    ForestRow,
    MetaAnalysis,
    RunDir,
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
        ui.chart(charts.cross_site_matrix(evidence.cross_site), "cross-site")
        st.caption(
            "Each model (the global model, each site's local-only model, the "
            "pooled-centralized baseline) tested on each site's held-out test data."
        )
    with ui.section("Forest plots"):
        metrics = _forest_metrics(evidence)
        metric = st.selectbox("Metric", metrics, format_func=lambda m: METRIC_NAMES.get(m, m))
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
    return sorted(found, key=lambda m: (METRICS.index(m) if m in METRICS else len(METRICS), m))


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
    results = {"pooled": evidence.pooled, **results}
    st.dataframe(
        [
            {
                kind: name,
                "n": r.n,
                "positives": r.n_pos,
                **{f"{METRIC_NAMES[m]} [95% CI]": ui.estimate(r.metrics.get(m)) for m in METRICS},
                "flags": "; ".join(r.flags),
            }
            for name, r in results.items()
        ],
        hide_index=True,
        width="stretch",
    )
    threshold = evidence.pooled.threshold
    if threshold is not None:
        st.caption(
            f"At the operating threshold {threshold:.3f}, fixed on training data. Strata "
            "withheld below a site's minimum cell size are not shown (see Federation)."
        )


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
