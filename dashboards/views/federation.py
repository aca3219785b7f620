"""Federation: the sites, their scanners and cases, who took part in each round, the privacy
each site spent over the rounds, and the refusals and dropouts."""

from __future__ import annotations

import streamlit as st

from dashboards import charts, ui
from dashboards.pages import FEDERATION
from dashboards.runs import Evidence, Incident, RunDir, Site


def render() -> list[RunDir]:
    """The Federation page of the run picked in the sidebar."""
    run = ui.page(FEDERATION.title)
    if run is None:
        return []
    evidence = run.evidence
    if evidence is None:
        return [run]
    with ui.section("Sites and scanners"):
        _sites(evidence)
    with ui.section("Participation per round"):
        _participation(evidence)
    with ui.section("Privacy spent"):
        _privacy(evidence)
    with ui.section("Refusals and dropouts"):
        _incidents(evidence)
    return [run]


def _sites(evidence: Evidence) -> None:
    sites = evidence.sites
    scanners = {name for site in sites for name in site.scanners}
    columns = st.columns(4)
    columns[0].metric("Sites", len(sites))
    columns[1].metric("Training cases", sum(s.n_train or 0 for s in sites))
    columns[2].metric("Test cases", sum(s.n_test or 0 for s in sites))
    columns[3].metric("Scanner models", len(scanners))
    st.dataframe([_site_row(s) for s in sites], hide_index=True, width="stretch")
    ui.chart(charts.scanners_per_site(sites), "scanners-per-site")


def _site_row(site: Site) -> dict[str, object]:
    """A site's line: cases, scanners and, where the evidence has them, modalities, body
    parts and intake counts (received, stored, quarantined, failed)."""
    row: dict[str, object] = {
        "site": site.id,
        "training cases": site.n_train,
        "training positives": site.n_train_positive,
        "test cases": site.n_test,
        "test positives": site.n_test_positive,
    }
    for key in ("received", "stored", "quarantined", "failed"):
        if key in site.intake:
            row[f"files {key}"] = site.intake[key]
    row["scanners"] = ", ".join(f"{name} ({n})" for name, n in site.scanners.items())
    for label, counts in (("modalities", site.modalities), ("body parts", site.body_parts)):
        if counts:
            row[label] = ", ".join(f"{name} ({n})" for name, n in counts.items())
    return row


def _participation(evidence: Evidence) -> None:
    rounds = evidence.rounds
    summary = evidence.summary
    if not rounds:
        st.info(
            "No federated rounds in this run"
            + (" (an evaluation-only job)." if summary.evaluation_only else ".")
        )
        return
    site_ids = [s.id for s in evidence.sites]
    ui.chart(charts.participation(rounds, site_ids), "participation")
    if summary.holdout_sites:
        st.caption(
            "Held out of all training (external validation): " + ", ".join(summary.holdout_sites)
        )


def _privacy(evidence: Evidence) -> None:
    sites = evidence.sites
    summary = evidence.summary
    if summary.privacy_mode == "none":
        st.info("This run trained without differential privacy: no epsilon was spent.")
        return
    central = evidence.central_epsilon_history
    if any(s.history for s in sites) or central:
        ui.chart(
            charts.epsilon_per_round(sites, summary.target_epsilon, central), "epsilon-per-round"
        )
    else:
        st.info("No site released a DP-trained model in this run (no privacy history).")
    st.dataframe(
        [
            {
                "site": s.id,
                "epsilon spent": s.epsilon,
                "delta": s.delta,
                "noise multiplier": s.noise_multiplier,
                "DP-SGD steps": s.steps,
                "releases": len(s.history),
                "refusals": len(s.refusals),
                "independent recomputation agrees": s.check_agrees,
            }
            for s in sites
        ],
        hide_index=True,
        width="stretch",
        column_config={
            "epsilon spent": st.column_config.NumberColumn(format="%.3f"),
            "delta": st.column_config.NumberColumn(format="%.2e"),
            "noise multiplier": st.column_config.NumberColumn(format="%.3f"),
        },
    )


def _incidents(evidence: Evidence) -> None:
    refusals = evidence.privacy_refusals
    failures = evidence.site_failures
    if not refusals and not failures:
        st.success("No site refused to train for its privacy budget, and no site failed.")
    for title, incidents in (
        ("Privacy refusals (a site declined to train: its budget would be exceeded)", refusals),
        ("Dropouts and failures (a site could not reply)", failures),
    ):
        if incidents:
            st.markdown(f"**{title}: {len(incidents)}**")
            st.dataframe(_incident_rows(incidents), hide_index=True, width="stretch")
    suppressed = evidence.suppressed
    if suppressed:
        with st.expander(f"Strata withheld below a site's minimum cell size: {len(suppressed)}"):
            st.dataframe(
                [{"site": site, "stratum": stratum} for site, stratum in suppressed],
                hide_index=True,
                width="stretch",
            )


def _incident_rows(incidents: tuple[Incident, ...]) -> list[dict[str, object]]:
    return [
        {"site": i.site, "stage": i.stage, "round": i.round, "reason": i.reason} for i in incidents
    ]


if __name__ == "__main__":
    ui.footer(FEDERATION.title, render())
