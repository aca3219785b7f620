"""The dashboard's Plotly charts, drawn by plotly.js's cartesian bundle that the dashboard
serves itself, instead of by ``st.plotly_chart``.

Why: ``st.plotly_chart`` draws with the full plotly.js that Streamlit's frontend bundles
(4.7 MB of JavaScript, every trace type), which a browser's first visit downloads and runs
only once the first chart has arrived: about 1.5 s of a 3 to 4.5 s page on a 2-CPU machine.
The dashboard's charts need only bars, scatter lines and heatmaps, which are in plotly.js's
cartesian bundle (1.5 MB, `BUNDLE`: the npm package ``plotly.js-cartesian-dist-min`` at
`PLOTLY_JS_VERSION`, its MIT licence in its header), the release plotly.py writes figures
for; it runs in half the time. The dashboard serves it at `BUNDLE_URL` (`bundle_route`), and
every page asks the browser to fetch it while Streamlit's frontend starts (`PreloadBundle`).

A chart is a Streamlit custom component (``st.components.v2``, drawn in the page, not in an
iframe) whose data is the figure's JSON and Plotly's config.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import streamlit as st
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from streamlit.components.v2.types import ComponentRenderer

#: The plotly.js release `BUNDLE` is: the one plotly.py writes figures for.
PLOTLY_JS_VERSION = "4.1.1"
BUNDLE = Path(__file__).with_name("assets") / "plotly-cartesian.min.js"
#: Where the dashboard serves `BUNDLE` (versioned, so that a browser may cache it for good).
BUNDLE_URL = f"/medfed/plotly-cartesian-{PLOTLY_JS_VERSION}.min.js"
_FONT = '"Source Sans", "Source Sans Pro", sans-serif'
_GRID = {"gridcolor": "rgba(128,128,128,0.2)", "zeroline": False, "automargin": True}
#: Streamlit's look for charts: its font (the page's text colour, set in the browser), a
#: transparent background (light or dark theme), light grid lines, a quiet mode bar.
#: Colours are each chart's (`dashboards.charts`).
TEMPLATE = go.layout.Template(
    layout={
        "font": {"family": _FONT, "size": 12},
        "title": {"font": {"size": 16, "weight": 600}},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
        "xaxis": _GRID,
        "yaxis": _GRID,
        "margin": {"t": 40, "r": 10, "b": 40, "l": 10},
        "hoverlabel": {"font": {"family": _FONT}},
        "modebar": {"bgcolor": "rgba(0,0,0,0)", "color": "rgba(128,128,128,0.6)"},
    }
)
#: Height of a chart whose figure sets none (px), as ``st.plotly_chart``'s.
DEFAULT_HEIGHT = 450

#: The component: draws ``data.figure`` (a figure's JSON) with ``data.config`` in a div of
#: its element, once plotly.js (`BUNDLE_URL`, loaded once per page) is there; says so in the
#: page if it cannot be loaded. Its text colour follows Streamlit's theme.
_COMPONENT_JS = """
const SRC = __SRC__;
function loadPlotly() {
  window.medfedPlotly ??= new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = SRC;
    script.onload = () => resolve(window.Plotly);
    script.onerror = () => reject(new Error(`cannot load plotly.js from ${SRC}`));
    document.head.append(script);
  });
  return window.medfedPlotly;
}
export default function ({ parentElement, data }) {
  let div = parentElement.querySelector(".medfed-plotly");
  if (!div) {
    div = document.createElement("div");
    div.className = "medfed-plotly";
    parentElement.append(div);
  }
  const figure = JSON.parse(data.figure);
  const layout = { ...figure.layout, autosize: true };
  layout.font = { color: getComputedStyle(parentElement).color, ...layout.font };
  div.style.height = `${layout.height ?? __HEIGHT__}px`;
  loadPlotly().then(
    Plotly => Plotly.react(div, figure.data, layout, { ...data.config, responsive: true }),
    error => { div.textContent = `This chart cannot be drawn: ${error.message}.`; });
  return () => window.Plotly && window.Plotly.purge(div);
}
""".replace("__SRC__", json.dumps(BUNDLE_URL)).replace("__HEIGHT__", str(DEFAULT_HEIGHT))

#: The component's name (an AppTest element's ``proto.component_name``).
COMPONENT_NAME = "medfed_plotly"


@cache
def _component() -> ComponentRenderer:
    """The chart component, registered on first use (in a script run: registering it on
    import, outside one, makes Streamlit log a warning)."""
    return st.components.v2.component(COMPONENT_NAME, js=_COMPONENT_JS, isolate_styles=False)


def plotly_chart(figure: go.Figure, key: str, config: dict[str, Any]) -> None:
    """Draw ``figure`` full width with Plotly ``config`` as the element ``key`` (Streamlit
    gives its container the CSS class ``st-key-<key>``), in `TEMPLATE`'s look (set on
    ``figure`` itself: the pages make a figure per chart and draw it once)."""
    figure.update_layout(template=TEMPLATE)
    _component()(data={"figure": figure.to_json(), "config": config}, key=key)


async def _serve_bundle(request: Request) -> FileResponse:
    del request  # one file, whatever was asked
    return FileResponse(
        BUNDLE,
        media_type="text/javascript",
        headers={"Cache-Control": "public, max-age=31536000, immutable"},
    )


def bundle_route() -> Route:
    """The route serving `BUNDLE` at `BUNDLE_URL` (a year's caching: the URL names the
    version)."""
    return Route(BUNDLE_URL, _serve_bundle, methods=["GET", "HEAD"])


#: Added to the head of every page: the browser fetches `BUNDLE_URL` while Streamlit's
#: frontend starts, instead of once the first chart has arrived. (Running it then too, when
#: the browser is idle, was measured no faster: it delays Streamlit's first drawing.)
PRELOAD_TAG = f'<link rel="preload" as="script" href="{BUNDLE_URL}">'


class PreloadBundle:
    """ASGI middleware adding `PRELOAD_TAG` to the head of the dashboard's HTML page (its
    root and each page's URL path); other responses pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        # The page is served at "/" and at each page's path; files have a suffix, and
        # Streamlit's endpoints and ours are under /_stcore/ and /medfed/.
        if (
            scope["type"] != "http"
            or path.startswith(("/_stcore/", "/medfed/"))
            or ("." in path.rsplit("/", 1)[-1])
        ):
            await self.app(scope, receive, send)
            return
        # The page uncompressed, so that its text can be edited (it is 2 kB).
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"]
        start: dict[str, Any] = {}
        body: list[bytes] = []

        async def edit_page(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            content = b"".join(body)
            response_headers = list(start.get("headers", []))
            is_html = any(
                k.lower() == b"content-type" and v.startswith(b"text/html")
                for k, v in response_headers
            )
            if is_html and b"</head>" in content:
                content = content.replace(b"</head>", PRELOAD_TAG.encode() + b"</head>", 1)
                response_headers = [
                    (k, v) for k, v in response_headers if k.lower() != b"content-length"
                ] + [(b"content-length", str(len(content)).encode())]
            await send({**start, "headers": response_headers})
            await send({"type": "http.response.body", "body": content})

        await self.app({**scope, "headers": headers}, receive, edit_page)
