"""Plotly figures from the typed evidence of `dashboards.runs`: reshaping for display only,
no statistic computed here."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from dashboards.runs import (
    PARTICIPATION,
    AcceptanceEntry,
    Calibration,
    CrossSite,
    Estimate,
    ForestRow,
    MetaAnalysis,
    RocCurve,
    Round,
    Site,
    SiteDrift,
    SiteRound,
    TaskView,
)
from validation.report.sections import Headline

#: One colour per site (or run), the same in every chart of a page.
PALETTE = qualitative.Plotly + qualitative.Dark24
PARTICIPATION_COLORS = {
    "trained and evaluated": "#2e7d32",
    "trained": "#81c784",
    "evaluated": "#64b5f6",
    "update rejected": "#6a1b9a",
    "cut off": "#8d6e63",
    "dropped out": "#90a4ae",
    "refused": "#ffa000",
    "failed": "#c62828",
    "absent": "#e0e0e0",
}
VERDICT_COLORS = {"pass": "#2e7d32", "fail": "#c62828", "not judged": "#9e9e9e"}
#: Per-site, per-round series the training page can show: label -> SiteRound field.
SITE_ROUND_SERIES = {
    "test AUC": "auc",
    "test Dice": "dice",
    "test loss": "test_loss",
    "training loss": "train_loss",
    "epsilon spent": "epsilon",
    "training time (s)": "train_seconds",
}


#: Lines over more points than this have no markers (hundreds of SVG markers slow drawing).
MARKERS_UP_TO = 30


def _line_mode(points: int) -> str:
    return "lines+markers" if points <= MARKERS_UP_TO else "lines"


def colors(names: Sequence[str]) -> dict[str, str]:
    """A colour for each name, in order."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _error_bars(
    centres: Sequence[float | None],
    lows: Sequence[float | None],
    highs: Sequence[float | None],
    color: str | None = None,
) -> dict[str, object]:
    """Asymmetric error bars from interval bounds (none where a bound is unknown)."""

    def reach(a: Sequence[float | None], b: Sequence[float | None]) -> list[float]:
        pairs = zip(a, b, strict=True)
        return [x - y if x is not None and y is not None else 0.0 for x, y in pairs]

    bars: dict[str, object] = {
        "type": "data",
        "symmetric": False,
        "array": reach(highs, centres),
        "arrayminus": reach(centres, lows),
    }
    if color:
        bars["color"] = color
    return bars


def _round_axis(rounds: Sequence[int], title: str = "round") -> dict[str, object]:
    """An x axis of whole rounds, at most about 20 ticks."""
    span = (max(rounds) - min(rounds)) if rounds else 0
    return {"title": title, "tick0": 0, "dtick": max(1, -(-span // 20))}


def _finish(fig: go.Figure, title: str = "", height: int = 420, **layout: object) -> go.Figure:
    """Common layout; ``title`` only where the page's heading does not already say it."""
    fig.update_layout(
        title={"text": title, "x": 0, "xanchor": "left"} if title else None,
        height=height,
        margin={"l": 10, "r": 10, "t": 60 if title else 30, "b": 10},
        legend={"orientation": "v"},
        **layout,
    )
    # Plotly's default hides tick labels that overflow the figure, measuring every label of
    # an axis again after each label is placed (thousands of text measurements per page,
    # each forcing the browser's layout); the margins grow to fit the labels anyway.
    fig.update_xaxes(ticklabeloverflow="allow")
    fig.update_yaxes(ticklabeloverflow="allow")
    return fig


# --- federation ---------------------------------------------------------------------------


def scanners_per_site(sites: Sequence[Site]) -> go.Figure:
    """Stacked bars: cases per scanner model at each site."""
    scanners = sorted({name for site in sites for name in site.scanners})
    palette = colors(scanners)
    fig = go.Figure(
        [
            go.Bar(
                name=scanner,
                x=[site.id for site in sites],
                y=[site.scanners.get(scanner, 0) for site in sites],
                marker_color=palette[scanner],
                hovertemplate="%{x}: %{y} cases<extra>" + scanner + "</extra>",
            )
            for scanner in scanners
        ]
    )
    return _finish(
        fig,
        "Cases per scanner (DICOM Manufacturer and Manufacturer's Model Name)",
        barmode="stack",
        xaxis_title="site",
        yaxis_title="cases (training and test)",
    )


def participation(rounds: Sequence[Round], site_ids: Sequence[str]) -> go.Figure:
    """Sites x rounds, coloured by what each site did in each round."""
    code = {state: i for i, state in enumerate(PARTICIPATION)}
    absent = SiteRound()
    cells = [[r.sites.get(site, absent) for r in rounds] for site in site_ids]
    n = len(PARTICIPATION)
    scale = []
    for i, state in enumerate(PARTICIPATION):  # one flat band per state
        scale += [(i / n, PARTICIPATION_COLORS[state]), ((i + 1) / n, PARTICIPATION_COLORS[state])]
    fig = go.Figure(
        go.Heatmap(
            z=[[code[c.participation] for c in row] for row in cells],
            x=[r.number for r in rounds],
            y=list(site_ids),
            customdata=[
                [c.participation + (f" ({c.detail})" if c.detail else "") for c in row]
                for row in cells
            ],
            hovertemplate="%{y}, round %{x}: %{customdata}<extra></extra>",
            colorscale=scale,
            zmin=-0.5,
            zmax=n - 0.5,
            xgap=1,
            ygap=1,
            colorbar={
                "tickvals": list(range(n)),
                "ticktext": list(PARTICIPATION),
                "title": {"text": ""},
            },
        )
    )
    return _finish(
        fig,
        height=max(220, 28 * len(site_ids) + 100),
        xaxis=_round_axis([r.number for r in rounds]),
        yaxis={"autorange": "reversed", "type": "category"},
    )


def epsilon_per_round(
    sites: Sequence[Site],
    target: float | None,
    central: Sequence[tuple[int, float | None]] = (),
) -> go.Figure:
    """Epsilon spent by each site after each release (round 0: its local-only model), the
    run's target, and the coordinator's epsilon under central DP."""
    palette = colors([s.id for s in sites])
    fig = go.Figure(
        [
            go.Scatter(
                name=site.id,
                x=[step.round for step in site.history],
                y=[step.epsilon for step in site.history],
                customdata=[step.stage for step in site.history],
                mode=_line_mode(len(site.history)),
                line_color=palette[site.id],
                hovertemplate="round %{x} (%{customdata}): epsilon %{y:.3f}<extra>"
                + site.id
                + "</extra>",
            )
            for site in sites
            if site.history
        ]
    )
    if central:
        fig.add_scatter(
            name="coordinator (central DP)",
            x=[r for r, _ in central],
            y=[e for _, e in central],
            mode=_line_mode(len(central)),
            line={"color": "black", "dash": "dot"},
        )
    if target is not None:
        fig.add_hline(
            y=target,
            line_dash="dash",
            line_color="#c62828",
            annotation_text=f"target epsilon {target:g}",
            annotation_position="top left",
        )
    rounds = [step.round for site in sites for step in site.history]
    return _finish(
        fig,
        "Epsilon spent per site after each release",
        xaxis=_round_axis(rounds, "round (0: the local-only model)"),
        yaxis_title="epsilon",
    )


# --- training -----------------------------------------------------------------------------


def global_per_round(
    runs: Mapping[str, Sequence[Round]], headlines: Sequence[Headline]
) -> go.Figure:
    """The global model's pooled test ``headlines`` (AUC, mean Dice: one panel each) and loss
    per round, one line per run."""
    titles = [f"pooled test {h.name}" for h in headlines] + ["pooled test loss"]
    fields = [h.per_round for h in headlines] + ["test_loss"]
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles)
    palette = colors(list(runs))
    for label, rounds in runs.items():
        x = [r.number for r in rounds]
        for col, field in enumerate(fields, start=1):
            fig.add_scatter(
                row=1,
                col=col,
                x=x,
                y=[getattr(r, field) for r in rounds],
                name=label,
                legendgroup=label,
                showlegend=col == 1,
                mode=_line_mode(len(x)),
                line_color=palette[label],
            )
    fig.update_xaxes(_round_axis([r.number for rounds in runs.values() for r in rounds]))
    return _finish(fig, height=380)


def site_round_series(runs: Mapping[str, Sequence[Round]]) -> list[str]:
    """The `SITE_ROUND_SERIES` some site recorded in some round of ``runs``."""
    records = [s for rounds in runs.values() for r in rounds for s in r.sites.values()]
    return [
        label
        for label, field in SITE_ROUND_SERIES.items()
        if any(getattr(record, field) is not None for record in records)
    ]


def sites_per_round(runs: Mapping[str, Sequence[Round]], series: str) -> go.Figure:
    """One `SITE_ROUND_SERIES` per site and round; one panel per run, side by side."""
    field = SITE_ROUND_SERIES[series]
    labels = list(runs)
    site_ids = list(dict.fromkeys(s for rounds in runs.values() for r in rounds for s in r.sites))
    palette = colors(site_ids)
    fig = make_subplots(
        rows=1, cols=len(labels), subplot_titles=labels, shared_yaxes=True, horizontal_spacing=0.03
    )
    for col, label in enumerate(labels, start=1):
        rounds = runs[label]
        for site in site_ids:
            fig.add_scatter(
                row=1,
                col=col,
                x=[r.number for r in rounds],
                y=[getattr(r.sites[site], field) if site in r.sites else None for r in rounds],
                name=site,
                legendgroup=site,
                showlegend=col == 1,
                mode="lines",
                line_color=palette[site],
                connectgaps=False,
            )
    fig.update_xaxes(_round_axis([r.number for rounds in runs.values() for r in rounds]))
    return _finish(fig, f"{series} per site", height=420)


def phase_times(runs: Mapping[str, Mapping[str, float]]) -> go.Figure:
    """Wall time of each phase of each run."""
    palette = colors(list(runs))
    fig = go.Figure(
        [
            go.Bar(
                name=label,
                x=list(timings.values()),
                y=list(timings),
                orientation="h",
                marker_color=palette[label],
            )
            for label, timings in runs.items()
        ]
    )
    return _finish(
        fig,
        height=120 + 30 * max(len(t) for t in runs.values()) * len(runs),
        barmode="group",
        xaxis_title="seconds",
        yaxis={"autorange": "reversed"},
    )


# --- cross-site and cross-scanner ---------------------------------------------------------


def cross_site_matrix(cross: CrossSite, task: TaskView) -> go.Figure:
    """Heatmap of the task's headline metric (AUC, mean Dice) of every model (rows) on every
    site's test data (columns)."""
    name = task.headline.name

    def interval(i: int, j: int) -> str:
        cell = cross.ci[i][j] if cross.ci else None
        if cell is None or None in cell:
            return ""
        return f" [{cell[0]:.3f}, {cell[1]:.3f}]"

    fig = go.Figure(
        go.Heatmap(
            z=[list(row) for row in cross.values],
            x=list(cross.sites),
            y=list(cross.models),
            text=[["n/a" if v is None else f"{v:.3f}" for v in row] for row in cross.values],
            texttemplate="%{text}",
            customdata=[
                [interval(i, j) for j in range(len(cross.sites))] for i in range(len(cross.models))
            ],
            hovertemplate=f"model %{{y}} on %{{x}}'s test data: {name} %{{text}}%{{customdata}}"
            "<extra></extra>",
            colorscale="RdYlGn",
            zmin=task.floor,
            zmax=1.0,
            colorbar={"title": {"text": name}},
            xgap=2,
            ygap=2,
        )
    )
    return _finish(
        fig,
        f"Cross-site {name} (rows: models; columns: each site's test data)",
        height=max(300, 34 * len(cross.models) + 160),
        xaxis={"title": "test data of site", "type": "category", "side": "bottom"},
        yaxis={"title": "model", "type": "category", "autorange": "reversed"},
    )


def _points(
    rows: Sequence[ForestRow], labels: Sequence[str], name: str, marker: dict[str, object]
) -> go.Scatter:
    """Strata as markers (``marker``) at their estimates, with their intervals (and their
    weights in a meta-analysis)."""
    color = str(marker["color"])
    weighted = any(r.weight is not None for r in rows)
    return go.Scatter(
        x=[r.estimate for r in rows],
        y=list(labels),
        mode="markers",
        name=name,
        marker=marker,
        error_x=_error_bars(
            [r.estimate for r in rows], [r.ci_low for r in rows], [r.ci_high for r in rows], color
        ),
        customdata=[[r.ci_low, r.ci_high, r.weight] for r in rows],
        hovertemplate="%{y}: %{x:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
        + (", weight %{customdata[2]:.2f}" if weighted else "")
        + f"<extra>{name}</extra>",
    )


def _stratum_label(row: ForestRow) -> str:
    return f"{row.name} (n={row.n})" if row.n is not None else row.name


def _diamond(fig: go.Figure, label: str, estimate: Estimate, color: str) -> None:
    """A pooled estimate as a diamond with its interval (nothing when undefined)."""
    if estimate.value is None:
        return
    fig.add_scatter(
        x=[estimate.value],
        y=[label],
        mode="markers",
        name=label,
        marker={"symbol": "diamond", "size": 16, "color": color},
        error_x=_error_bars([estimate.value], [estimate.ci_low], [estimate.ci_high], color),
        hovertemplate=f"{label}: %{{x:.3f}} [{estimate.ci_low or 0:.3f}, "
        f"{estimate.ci_high or 0:.3f}]<extra>{estimate.method}</extra>",
    )


def _forest_layout(
    fig: go.Figure, title: str, n_rows: int, axis: str, lows: Sequence[float | None], bounded: bool
) -> go.Figure:
    """A forest plot's axes: strata top-down; a metric on [0, 1] (``bounded``) up to 1, from
    a little below the lowest bound (``lows``) or 0.5; any other from its own range."""
    x_axis: dict[str, object] = {"title": axis}
    if bounded:
        low = min([v for v in lows if v is not None] + [0.5])
        x_axis["range"] = [max(0.0, low - 0.05), 1.02]
    return _finish(
        fig,
        title,
        height=max(260, 30 * n_rows + 140),
        showlegend=False,
        xaxis=x_axis,
        yaxis={"autorange": "reversed", "type": "category"},
    )


def forest(meta: MetaAnalysis, title: str, not_pooled: Sequence[ForestRow] = ()) -> go.Figure:
    """Forest plot: each stratum's estimate and interval (marker size: its weight), the
    strata ``not_pooled`` (hollow, with their own intervals), then the fixed- and
    random-effects pooled estimates."""
    rows = [r for r in meta.forest if r.estimate is not None]
    sizes = [6 + 18 * (r.weight or 0.0) for r in rows]
    fig = go.Figure(
        _points(
            rows,
            [_stratum_label(r) for r in rows],
            "strata",
            {"symbol": "square", "size": sizes, "color": "#1565c0"},
        )
    )
    if not_pooled:
        fig.add_trace(
            _points(
                not_pooled,
                [f"{r.name} (not pooled)" for r in not_pooled],
                "not pooled",
                {"symbol": "square-open", "size": 10, "color": "#757575"},
            )
        )
    _diamond(fig, "fixed effect", meta.fixed, "#6a1b9a")
    _diamond(fig, "random effects", meta.random, "#ef6c00")
    if meta.random.value is not None:
        fig.add_vline(x=meta.random.value, line_dash="dot", line_color="#ef6c00")
    lows = [r.ci_low for r in [*rows, *not_pooled]] + [meta.fixed.ci_low, meta.random.ci_low]
    return _forest_layout(
        fig, title, len(rows) + len(not_pooled) + 2, meta.metric, lows, bounded=True
    )


def strata_intervals(
    rows: Sequence[ForestRow], pooled: Estimate, title: str, axis: str, bounded: bool
) -> go.Figure:
    """Forest-style plot without a meta-analysis: each stratum's estimate and interval as
    the evidence gives them, and the pooled estimate (all strata's test data together)."""
    shown = [r for r in rows if r.estimate is not None]
    fig = go.Figure(
        _points(
            shown,
            [_stratum_label(r) for r in shown],
            "stratum",
            {"symbol": "square", "size": 10, "color": "#1565c0"},
        )
    )
    _diamond(fig, "pooled", pooled, "#ef6c00")
    if pooled.value is not None:
        fig.add_vline(x=pooled.value, line_dash="dot", line_color="#ef6c00")
    lows = [r.ci_low for r in shown] + [pooled.ci_low]
    return _forest_layout(fig, title, len(shown) + 1, axis, lows, bounded)


def roc_curves(curves: Sequence[RocCurve]) -> go.Figure:
    """ROC curves as the evidence gives them, with the chance diagonal."""
    palette = colors([c.name for c in curves])
    fig = go.Figure(
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"dash": "dot", "color": "grey"}
        )
    )
    for curve in curves:
        label = curve.name if curve.auc is None else f"{curve.name} (AUC {curve.auc:.3f})"
        fig.add_scatter(
            x=list(curve.fpr),
            y=list(curve.tpr),
            mode="lines",
            name=label,
            line={
                "color": "black" if curve.name == "pooled" else palette[curve.name],
                "width": 3 if curve.name == "pooled" else 2,
            },
        )  # straight lines between the points: their area is the evidence's AUC (ties count half)
    return _finish(
        fig,
        height=460,
        xaxis={"title": "1 - specificity (false positive rate)", "range": [0, 1]},
        yaxis={"title": "sensitivity (true positive rate)", "range": [0, 1.02]},
    )


def reliability(curves: Sequence[Calibration]) -> go.Figure:
    """Reliability curves: observed frequency (with its interval) against mean predicted
    probability in each bin (marker area: its cases), per stratum, with the identity line."""
    largest = max((b.n or 0 for c in curves for b in c.bins), default=0) or 1
    palette = colors([c.name for c in curves])
    fig = go.Figure(
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", name="perfect", line={"dash": "dot", "color": "grey"}
        )
    )
    for curve in curves:
        bins = [b for b in curve.bins if b.predicted is not None and b.observed is not None]
        if not bins:
            continue
        fig.add_scatter(
            x=[b.predicted for b in bins],
            y=[b.observed for b in bins],
            mode="lines+markers",
            name=curve.name,
            line={"color": "black" if curve.name == "pooled" else palette[curve.name], "width": 1},
            marker={"size": [5 + 15 * ((b.n or 0) / largest) ** 0.5 for b in bins]},
            error_y=_error_bars(
                [b.observed for b in bins], [b.ci_low for b in bins], [b.ci_high for b in bins]
            ),
            customdata=[b.n for b in bins],
            hovertemplate="predicted %{x:.3f}, observed %{y:.3f} (n=%{customdata})<extra>"
            + curve.name
            + "</extra>",
        )
    return _finish(
        fig,
        "Reliability: observed frequency against predicted probability, per stratum",
        height=460,
        xaxis={"title": "mean predicted probability", "range": [0, 1]},
        yaxis={"title": "observed frequency of positives", "range": [0, 1.02]},
    )


# --- acceptance ---------------------------------------------------------------------------


def acceptance_values(entries: Sequence[AcceptanceEntry]) -> go.Figure:
    """One criterion's value in each scope against its threshold, coloured by verdict."""
    judged = [e for e in entries if e.value is not None]
    fig = go.Figure()
    for verdict, color in VERDICT_COLORS.items():
        group = [e for e in judged if e.verdict == verdict]
        if group:
            fig.add_scatter(
                x=[e.value for e in group],
                y=[e.scope for e in group],
                mode="markers",
                name=verdict,
                marker={"size": 13, "color": color},
                customdata=[e.n for e in group],
                hovertemplate="%{y}: %{x:.3f} (n=%{customdata})<extra>" + verdict + "</extra>",
            )
    thresholds = {e.threshold for e in entries if e.threshold is not None}
    for threshold in thresholds:
        fig.add_vline(
            x=threshold,
            line_dash="dash",
            line_color="#424242",
            annotation_text=f"{entries[0].operator} {threshold:g}",
        )
    return _finish(
        fig,
        f"{entries[0].id}: {entries[0].statistic or 'value'} per scope",
        height=max(220, 34 * len(entries) + 140),
        xaxis_title=entries[0].statistic or "value",
        yaxis={"type": "category", "autorange": "reversed"},
    )


# --- monitoring ---------------------------------------------------------------------------

#: Colour of what alarms, and of each drift feature (none of them red).
ALARM_COLOR = "#c62828"
FEATURE_COLORS = ("#1565c0", "#00897b", "#7b1fa2", "#f9a825", "#6d4c41")


def drift_psi(sites: Sequence[SiteDrift], threshold: float) -> go.Figure:
    """PSI of each feature (one colour each) in each scanner group of each site, on a log
    axis with the alarm ``threshold``; the comparisons that alarm outlined and marked."""
    comparisons = [(site.site, c) for site in sites for c in site.comparisons]
    features = list(dict.fromkeys(c.feature for _, c in comparisons))
    rows = list(dict.fromkeys(f"{site} · {c.group}" for site, c in comparisons))
    palette = {f: FEATURE_COLORS[i % len(FEATURE_COLORS)] for i, f in enumerate(features)}
    psi = [c.psi for _, c in comparisons if c.psi] + [threshold]
    fig = go.Figure()
    for feature in features:
        shown = [(site, c) for site, c in comparisons if c.feature == feature]
        fig.add_bar(
            name=feature,
            orientation="h",
            x=[c.psi for _, c in shown],
            y=[f"{site} · {c.group}" for site, c in shown],
            marker={
                "color": palette[feature],
                "line": {
                    "color": ALARM_COLOR,
                    "width": [3 if c.alarm else 0 for _, c in shown],
                },
            },
            text=["ALARM" if c.alarm else "" for _, c in shown],
            textposition="outside",
            textfont={"color": ALARM_COLOR},
            customdata=[[c.ks, c.ks_p, c.n_reference, c.n_new] for _, c in shown],
            hovertemplate="%{y}: PSI %{x:.3f}, KS %{customdata[0]:.3f} (p %{customdata[1]:.2g});"
            " %{customdata[2]} reference, %{customdata[3]} new cases<extra>" + feature + "</extra>",
        )
    fig.add_vline(x=threshold, line_dash="dash", line_color=ALARM_COLOR)
    fig.add_annotation(  # on a log axis, an annotation's x is the power of ten
        x=math.log10(threshold),
        y=1,
        yref="paper",
        text=f"alarm threshold: PSI {threshold:g}",
        showarrow=False,
        xanchor="left",
        yanchor="bottom",
        font={"color": ALARM_COLOR},
    )
    return _finish(
        fig,
        "PSI of the new cases against the labelled ones, per site and scanner group",
        height=max(300, 14 * len(features) * len(rows) + 160),
        barmode="group",
        # the range in powers of ten, the threshold well inside it
        xaxis={
            "title": "PSI (log scale)",
            "type": "log",
            "range": [math.log10(min(psi) / 2), math.log10(max(psi) * 2)],
        },
        yaxis={
            "type": "category",
            "categoryorder": "array",
            "categoryarray": rows,
            "autorange": "reversed",
        },
    )
