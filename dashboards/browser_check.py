"""Check a running dashboard in headless Chromium (`validation.report.browser.browse`):
open each page, wait until its charts are drawn, and keep what it logged, requested and
showed, with a screenshot. Used by the browser test and the benchmark.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dashboards.pages import PAGES, PageSpec
from dashboards.ui import CHART_KEY_PREFIX
from validation.report.browser import PageLog, browse

#: How long a page may take to draw its charts.
READY_TIMEOUT_MS = 60_000


#: A JavaScript function (end text, timeout in ms) returning a promise that resolves, once
#: the page is drawn, to its number of drawn charts (-1 after the timeout): the page's end
#: (`PageSpec.end_text`) shown, every chart's element (found by its key,
#: `CHART_KEY_PREFIX`) holding a drawn Plotly SVG, and no element still a placeholder
#: (Streamlit shows a skeleton until an element's code has loaded: tables, metrics, widgets).
_WAIT_DRAWN = f"""(end, timeout) => new Promise(resolve => {{
  const started = Date.now();
  const poll = () => {{
    const charts = document.querySelectorAll(
      '[data-testid="stElementContainer"][class*="st-key-{CHART_KEY_PREFIX}"]');
    const drawn = Array.from(charts).filter(c => c.querySelector('.main-svg')).length;
    const shown = document.body.innerText.includes(end);
    const loading = document.querySelector(
      '[data-testid="stSkeleton"], [data-testid="stSkeletonElement"]');
    if (shown && drawn === charts.length && !loading) resolve(drawn);
    else if (Date.now() - started > timeout) resolve(-1);
    else setTimeout(poll, 50);
  }};
  poll();
}})"""


def ready_expression(page: PageSpec, timeout_ms: int = READY_TIMEOUT_MS) -> str:
    """JavaScript resolving to ``page``'s number of drawn charts once it is drawn, -1 after
    ``timeout_ms``."""
    return f"({_WAIT_DRAWN})({json.dumps(page.end_text)}, {timeout_ms})"


def navigation_expression(
    current: PageSpec, target: PageSpec, timeout_ms: int = READY_TIMEOUT_MS
) -> str:
    """JavaScript that waits for ``current`` to be drawn, follows the sidebar's link to
    ``target`` (no page load: Streamlit reruns the script) and resolves to ``{ms, charts}``:
    the milliseconds from the click until ``target`` was drawn, and its drawn charts."""
    return f"""(async () => {{
  const wait = {_WAIT_DRAWN};
  await wait({json.dumps(current.end_text)}, {timeout_ms});
  const links = document.querySelectorAll('[data-testid="stSidebarNav"] a');
  const link = Array.from(links).find(a => a.innerText.trim() === {json.dumps(target.title)});
  const started = performance.now();
  link.click();
  const charts = await wait({json.dumps(target.end_text)}, {timeout_ms});
  return {{ms: performance.now() - started, charts: charts}};
}})()"""


def page_url(base_url: str, page: PageSpec) -> str:
    """The page's address: the first page at the root, the others at their URL path."""
    return base_url.rstrip("/") + "/" + ("" if page is PAGES[0] else page.url_path)


@dataclass(frozen=True)
class PageCheck:
    """What one page did: the browser's log, and what in it is a problem."""

    page: PageSpec
    log: PageLog

    @property
    def foreign_requests(self) -> list[str]:
        """Requests to anywhere but the dashboard's own host and port."""
        own = urlsplit(self.log.url).netloc
        return [url for url in self.log.requests if urlsplit(url).netloc != own]

    @property
    def errors(self) -> list[str]:
        """Console errors, exceptions and failed loads, but Streamlit's probes for its base
        path: on a page's own URL (``/training``) its frontend first asks for
        ``/training/_stcore/health`` and ``host-config``, which answer 404, then finds the
        server at the root."""
        url = self.log.url.rstrip("/")
        probes = tuple(f"{url}/_stcore/{name}" for name in ("health", "host-config"))
        return [e for e in self.log.errors if not ("404" in e and e.rstrip().endswith(probes))]


def check_page(
    base_url: str,
    page: PageSpec,
    screenshot: Path | None = None,
    timeout: float = 120.0,
    warm: bool = False,
) -> PageCheck:
    """Open ``page`` of the dashboard at ``base_url`` and wait until it is drawn (with
    ``warm``, a second time in the same browser, its cache warm, and check that load)."""
    log = browse(
        page_url(base_url, page),
        ready_expression(page),
        screenshot=screenshot,
        timeout=timeout,
        warm=warm,
    )
    return PageCheck(page, log)
