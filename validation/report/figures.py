"""The report's Plotly figures, as JSON specs that the page draws with the inlined
plotly.js (`validation.report.render`). Each is sized for an A4 page."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from validation.report.blocks import Figure
from validation.report.fmt import is_number, number

#: Width of every figure in CSS pixels: an A4 page's text width at 96 dpi.
WIDTH = 660
FONT = {"family": "Helvetica, Arial, sans-serif", "size": 11}
#: The three metrics of forest plots and subgroup bars, with their labels.
FOREST_METRICS = {"auc": "AUC", "sensitivity": "Sensitivity", "specificity": "Specificity"}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def _figure(
    fig: go.Figure, anchor: str, caption: str, source: str, height: int, about_data: bool = True
) -> Figure:
    """The report block of ``fig``, laid out at `WIDTH` x ``height``."""
    fig.update_layout(
        width=WIDTH,
        height=height,
        autosize=False,
        template="plotly_white",
        font=FONT,
        margin={"l": 60, "r": 20, "t": 40, "b": 50},
    )
    spec = pio.to_json(fig, validate=False)
    return Figure(anchor, caption, source, spec, height, about_data)


def _error_bars(values: Sequence[float], lows: Sequence[float], highs: Sequence[float]) -> dict:
    return {
        "type": "data",
        "symmetric": False,
        "array": [h - v for v, h in zip(values, highs, strict=True)],
        "arrayminus": [v - lo for v, lo in zip(values, lows, strict=True)],
        "thickness": 1.2,
        "width": 3,
    }


def _interval(entry: Any, value_key: str = "value") -> tuple[float, float, float] | None:
    """``(value, low, high)`` of an estimate or forest row, or None if incomplete."""
    if not isinstance(entry, Mapping):
        return None
    triple = (entry.get(value_key), entry.get("ci_low"), entry.get("ci_high"))
    return triple if all(is_number(x) for x in triple) else None  # type: ignore[return-value]


def forest(anchor: str, caption: str, source: str, metrics: Mapping[str, Any]) -> Figure | None:
    """Forest plots of `FOREST_METRICS` side by side: each stratum's estimate with its
    interval (square sized by its random-effects weight), the fixed-effect and
    random-effects pooled values as diamonds, and I2 over each panel. ``metrics`` is one
    scope of the evidence's ``heterogeneity`` (metric -> meta-analysis). None if empty."""
    panels = [(m, metrics[m]) for m in FOREST_METRICS if isinstance(metrics.get(m), Mapping)]
    names: list[str] = []
    for _, meta in panels:
        rows = [r.get("name") for r in meta.get("forest") or [] if isinstance(r, Mapping)]
        for name in [*rows, *(meta.get("excluded") or {})]:
            if isinstance(name, str) and name not in names:
                names.append(name)
    if not panels or not names:
        return None
    position = {name: len(names) + 2 - i for i, name in enumerate(names)}
    pooled_rows = {"fixed": ("Fixed effect", 1.0), "random": ("Random effects", 0.0)}
    titles = [
        f"{FOREST_METRICS[m]} (I² {number(100 * meta['i2'], 0)}%)"
        if is_number(meta.get("i2"))
        else FOREST_METRICS[m]
        for m, meta in panels
    ]
    fig = make_subplots(
        rows=1, cols=len(panels), shared_yaxes=True, subplot_titles=titles, horizontal_spacing=0.05
    )
    for col, (_, meta) in enumerate(panels, start=1):
        rows = [
            (r["name"], r.get("n"), r.get("weight"), triple)
            for r in meta.get("forest") or []
            if isinstance(r, Mapping) and (triple := _interval(r, "estimate"))
        ]
        if rows:
            largest = max((w for *_, w, _ in rows if is_number(w)), default=1.0) or 1.0
            values = [t[0] for *_, t in rows]
            fig.add_trace(
                go.Scatter(
                    x=values,
                    y=[position[name] for name, *_ in rows],
                    mode="markers",
                    marker={
                        "symbol": "square",
                        "color": COLORS[0],
                        "size": [
                            6 + 10 * math.sqrt(max(w, 0) / largest) if is_number(w) else 6
                            for _, _, w, _ in rows
                        ],
                    },
                    error_x=_error_bars(values, [t[1] for *_, t in rows], [t[2] for *_, t in rows])
                    | {"color": COLORS[0]},
                    hovertext=[
                        f"{name}: {t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}], n={n}"
                        for name, n, _, t in rows
                    ],
                    hoverinfo="text",
                    showlegend=False,
                ),
                row=1,
                col=col,
            )
        for key, (label, y) in pooled_rows.items():
            if triple := _interval(meta.get(key)):
                value, low, high = triple
                fig.add_trace(
                    go.Scatter(
                        x=[low, value, high, value, low],
                        y=[y, y + 0.3, y, y - 0.3, y],
                        fill="toself",
                        mode="lines",
                        line={"color": COLORS[1], "width": 1},
                        fillcolor=COLORS[1],
                        hovertext=f"{label}: {value:.3f} [{low:.3f}, {high:.3f}]",
                        hoverinfo="text",
                        showlegend=False,
                    ),
                    row=1,
                    col=col,
                )
                if key == "random":
                    fig.add_vline(
                        x=value, line={"dash": "dot", "color": "#888", "width": 1}, row=1, col=col
                    )
        excluded = [n for n in meta.get("excluded") or {} if n in position]
        if excluded:
            lows = [t[1] for *_, t in rows] or [0.5]
            fig.add_trace(
                go.Scatter(
                    x=[min(lows)] * len(excluded),
                    y=[position[n] for n in excluded],
                    mode="text",
                    text=["excluded"] * len(excluded),
                    textposition="middle right",
                    textfont={"color": "#888", "size": 10},
                    hovertext=[f"{n}: {meta['excluded'][n]}" for n in excluded],
                    hoverinfo="text",
                    showlegend=False,
                ),
                row=1,
                col=col,
            )
    fig.update_yaxes(
        tickvals=[*position.values(), 1.0, 0.0],
        ticktext=[*position, *(label for label, _ in pooled_rows.values())],
        range=[-0.7, len(names) + 2.7],
        showgrid=False,
    )
    fig.update_xaxes(zeroline=False, nticks=5)
    return _figure(fig, anchor, caption, source, 110 + 26 * (len(names) + 2))


def heatmap(
    anchor: str,
    caption: str,
    source: str,
    rows: Sequence[str],
    columns: Sequence[str],
    values: Sequence[Sequence[Any]],
) -> Figure:
    """A heatmap of AUCs (rows x columns), each cell labelled with its value; empty
    cells are those the evidence has no value for."""
    z = [[v if is_number(v) else None for v in line] for line in values]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(columns),
            y=list(rows),
            text=[[number(v) for v in line] for line in z],
            texttemplate="%{text}",
            colorscale="Viridis",
            zmin=0.5,
            zmax=1.0,
            colorbar={"title": {"text": "AUC"}},
            hoverongaps=False,
        )
    )
    fig.update_yaxes(autorange="reversed", title_text="model")
    fig.update_xaxes(title_text="test data of site", side="bottom")
    fig.update_layout(margin={"l": 150})
    return _figure(fig, anchor, caption, source, 120 + 34 * len(rows))


def reliability(
    anchor: str, caption: str, source: str, curves: Mapping[str, Sequence[Any]]
) -> Figure | None:
    """A reliability diagram: per curve, the observed fraction of positives against the
    mean predicted probability of each group; the first curve (pooled) with its
    intervals, the others as thin lines. None if no curve has a point."""
    fig = go.Figure(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            line={"dash": "dash", "color": "#888", "width": 1},
            name="perfect calibration",
        )
    )
    drawn = 0
    for index, (name, groups) in enumerate(curves.items()):
        points = [
            (g["predicted"], g["observed"], g.get("ci_low"), g.get("ci_high"), g.get("n"))
            for g in groups
            if isinstance(g, Mapping) and is_number(g.get("predicted")) and g.get("n")
        ]
        points = [p for p in points if is_number(p[1])]
        if not points:
            continue
        drawn += 1
        first = index == 0
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        with_bars = first and all(is_number(p[2]) and is_number(p[3]) for p in points)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines+markers",
                name=name,
                line={"color": COLORS[index % len(COLORS)], "width": 2 if first else 1},
                marker={"size": 7 if first else 4},
                error_y=_error_bars(ys, [p[2] for p in points], [p[3] for p in points])
                if with_bars
                else None,
                hovertext=[f"{name}: n={p[4]}, observed {p[1]:.2f}" for p in points],
            )
        )
    if not drawn:
        return None
    fig.update_xaxes(range=[0, 1], title_text="mean predicted probability")
    fig.update_yaxes(range=[0, 1.02], title_text="observed fraction positive")
    fig.update_layout(legend={"orientation": "h", "y": -0.2})
    return _figure(fig, anchor, caption, source, 460)


def metric_bars(anchor: str, caption: str, source: str, strata: Mapping[str, Any]) -> Figure | None:
    """Grouped bars of `FOREST_METRICS` per stratum (e.g. the values of one subgroup
    column), each with its interval as an error bar. None if no stratum has a value."""
    fig = go.Figure()
    for index, (metric, label) in enumerate(FOREST_METRICS.items()):
        bars = [
            (name, triple)
            for name, result in strata.items()
            if (triple := _interval(result.get(metric) if isinstance(result, Mapping) else None))
        ]
        if not bars:
            continue
        values = [t[0] for _, t in bars]
        fig.add_trace(
            go.Bar(
                x=[name for name, _ in bars],
                y=values,
                name=label,
                marker_color=COLORS[index],
                error_y=_error_bars(values, [t[1] for _, t in bars], [t[2] for _, t in bars]),
            )
        )
    if not fig.data:
        return None
    fig.update_layout(barmode="group", legend={"orientation": "h", "y": -0.15})
    fig.update_yaxes(range=[0, 1.05], title_text="estimate with 95% CI")
    return _figure(fig, anchor, caption, source, 340)


def lines(
    anchor: str,
    caption: str,
    source: str,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    x_title: str,
    y_title: str,
) -> Figure | None:
    """One line per series (name -> (x, y)); None if no series has a point."""
    fig = go.Figure()
    for index, (name, (xs, ys)) in enumerate(series.items()):
        if xs:
            fig.add_trace(
                go.Scatter(
                    x=list(xs),
                    y=list(ys),
                    mode="lines+markers",
                    name=name,
                    line={"color": COLORS[index % len(COLORS)]},
                )
            )
    if not fig.data:
        return None
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title)
    fig.update_layout(legend={"orientation": "h", "y": -0.25})
    return _figure(fig, anchor, caption, source, 300)
