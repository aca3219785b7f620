"""The medfed dashboard, a multipage Streamlit app over run directories.

Started by ``medfed dashboard RUN [RUN ...]``, which runs
``streamlit run dashboards/app.py -- RUN ...``. It reads each run's evidence.json (and
rounds.jsonl) and computes nothing that `validation` could.
"""

from __future__ import annotations

import streamlit as st

from dashboards import ui
from dashboards.pages import PAGES


def main() -> None:
    """Navigation, the sidebar's run picker, then the page."""
    st.set_page_config(
        page_title="medfed dashboard",
        layout="wide",
        menu_items={
            "Get help": None,
            "Report a bug": None,
            "About": "medfed dashboard: federated validation runs, from their evidence.json.",
        },
    )
    navigation = st.navigation(
        [
            # No icons: Streamlit fetches page icons from Google's servers.
            st.Page(page.script, title=page.title, url_path=page.url_path, default=i == 0)
            for i, page in enumerate(PAGES)
        ]
    )
    ui.sidebar(ui.runs())
    navigation.run()


main()
