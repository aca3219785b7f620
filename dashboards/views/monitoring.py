"""Monitoring: data drift at the sites as an evaluation-only job (``medfed validate``) checked
it: which sites and scanner groups alarm and why, the PSI and KS of each feature, and the
cases compared."""

from __future__ import annotations

import streamlit as st

from dashboards import charts, ui
from dashboards.pages import MONITORING
from dashboards.runs import Drift, RunDir, SiteDrift
from task.architectures import SEGMENTATION
from validation.drift import KS_ALARM_P, PSI_ALARM

#: The page's line for a run without a drift check.
NO_DRIFT = (
    "Data drift is not in this run's evidence: an evaluation-only job, `medfed validate "
    "--model CKPT --site-dir SITE [...] --out RUN`, asks every site to compare its new "
    "(received, unlabelled) cases with its labelled ones."
)
#: The same for a segmentation run.
NO_DRIFT_SEGMENTATION = (
    "Data drift is not in this run's evidence, and does not apply to segmentation: drift "
    "checks (`medfed validate`, `medfed site drift`) are for classification models."
)


def render() -> list[RunDir]:
    """The Monitoring page of the run picked in the sidebar."""
    run = ui.page(MONITORING.title)
    if run is None:
        return []
    evidence = run.evidence
    if evidence is None:
        return [run]
    if not evidence.has("drift"):
        st.info(NO_DRIFT_SEGMENTATION if evidence.task.name == SEGMENTATION else NO_DRIFT)
        return [run]
    with ui.section("Drift alarms"):
        _alarms(evidence.drift)
    with ui.section("PSI per site, scanner group and feature"):
        ui.chart(charts.drift_psi(evidence.drift.sites, PSI_ALARM), "drift-psi")
        st.caption(
            f"Outlined in red and marked ALARM: a shift both significant (KS p < {KS_ALARM_P:g}) "
            f"and material (PSI >= {PSI_ALARM:g}). By convention PSI < 0.1 is stable, 0.1 to "
            "0.25 a moderate shift, >= 0.25 a major one."
        )
    with ui.section("Comparisons"):
        _comparisons(evidence.drift)
    return [run]


def _new_cases(site: SiteDrift) -> str:
    return "new cases withheld" if site.n_new is None else f"{site.n_new} new cases"


def _reasons(site: SiteDrift) -> list[str]:
    """Why ``site`` alarms: its comparisons that alarm, and the scanner groups of new cases
    it was never validated on."""
    shifted = [
        f"{c.feature} of {c.group} (PSI {ui.number(c.psi, 2)}, KS {ui.number(c.ks, 2)}, "
        f"p {ui.p_value(c.ks_p)})"
        for c in site.comparisons
        if c.alarm
    ]
    unvalidated = [
        f"{scanner}: {'withheld' if n is None else n} new cases from a scanner group it was "
        "never validated on"
        for scanner, n in site.unvalidated_scanners.items()
    ]
    return shifted + unvalidated


def _alarms(drift: Drift) -> None:
    checked = [s for s in drift.sites if s.error is None]
    columns = st.columns(3)
    columns[0].metric("Sites checked", f"{len(checked)} of {len(drift.sites)}")
    columns[1].metric("Sites alarming", len(drift.alarm_sites))
    columns[2].metric(
        "Comparisons alarming", sum(c.alarm for s in drift.sites for c in s.comparisons)
    )
    for site in drift.sites:
        if site.error is not None:
            st.warning(f"**{site.site}**: not checked ({site.error}).")
        elif site.alarm:
            reasons = "; ".join(_reasons(site)) or "the evidence gives no reason"
            st.error(f"**{site.site}: ALARM** ({_new_cases(site)}): {reasons}.")
        else:
            st.success(f"**{site.site}**: no alarm ({_new_cases(site)}).")


def _not_compared(site: SiteDrift) -> list[dict[str, str]]:
    """The scanner groups of ``site`` that were not compared, and why."""
    why = {
        "too few cases to compare (below the site's minimum cell size)": site.too_small,
        "never validated on: new cases only (an alarm)": tuple(site.unvalidated_scanners),
    }
    return [
        {"site": site.site, "scanner group": group, "why": reason}
        for reason, groups in why.items()
        for group in groups
    ]


def _comparisons(drift: Drift) -> None:
    st.dataframe(
        [
            {
                "site": site.site,
                "scanner group": c.group,
                "feature": c.feature,
                "reference cases": c.n_reference,
                "new cases": c.n_new,
                "PSI": c.psi,
                "KS statistic": c.ks,
                "KS p-value": c.ks_p,
                "alarm": "ALARM" if c.alarm else "",
            }
            for site in drift.sites
            for c in site.comparisons
        ],
        hide_index=True,
        width="stretch",
        column_config={
            "PSI": st.column_config.NumberColumn(format="%.3f"),
            "KS statistic": st.column_config.NumberColumn(format="%.3f"),
            "KS p-value": st.column_config.NumberColumn(format="%.2e"),
        },
    )
    st.caption(drift.method)
    not_compared = [row for site in drift.sites for row in _not_compared(site)]
    if not_compared:
        st.markdown(f"**Scanner groups not compared: {len(not_compared)}**")
        st.dataframe(not_compared, hide_index=True, width="stretch")


if __name__ == "__main__":
    ui.footer(MONITORING.title, render())
