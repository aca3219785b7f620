"""What ``medfed dashboard`` serves: `dashboards/app.py` as a Streamlit ``st.App`` whose
server is ready for its first visitor: the imports a page needs (pandas and pyarrow for
tables) and the run directories, read and parsed into the dashboard's cache, are loaded
while Streamlit starts (`warm_up`, before ``medfed dashboard`` announces its address)
instead of during the first page a browser opens. It also serves plotly.js's cartesian bundle
for the charts, and asks each page to load it early (`dashboards.plotly_chart`).

``streamlit run dashboards/server.py -- RUN ...`` finds the ``app`` below and serves it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import streamlit as st
from starlette.middleware import Middleware

from dashboards import ui
from dashboards.plotly_chart import PreloadBundle, bundle_route


def warm_up(paths: Sequence[Path]) -> None:
    """Import what the pages need and load the run directories into the dashboard's cache;
    any problem is left for the pages to show."""
    try:
        import pandas  # noqa: F401  (st.dataframe's)
        import pyarrow  # noqa: F401

        for run in ui.runs(paths):
            if run.evidence is not None:
                run.evidence.sites  # noqa: B018  (cached on the loaded run)
                run.evidence.rounds  # noqa: B018
    except Exception:  # the pages say what is wrong with a run
        pass


@asynccontextmanager
async def _lifespan(app: st.App) -> AsyncIterator[None]:
    await asyncio.to_thread(warm_up, ui.run_paths())
    yield


app = st.App(
    "app.py",
    lifespan=_lifespan,
    routes=[bundle_route()],
    middleware=[Middleware(PreloadBundle)],
)
