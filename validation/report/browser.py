"""Headless Chromium, driven over the DevTools protocol through a pipe (no port is opened):
open a page, wait for its figures, record what it logs and requests, print it to PDF
(`render_page`); or open a served page, such as the dashboard's, wait until it says it is
ready and take a screenshot (`browse`).

The record (`PageLog`) is how medfed checks a report before handing it out: console
errors, uncaught exceptions, errors Chromium logs (failed loads, Content-Security-Policy
violations) and every network request other than the page itself and ``data:`` URLs.
Chromium also runs with every host name mapped to nothing, so that a request, should a page
make one, reaches no network.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

#: Environment variable naming the Chromium (or Chrome) executable to use.
CHROMIUM_ENV = "MEDFED_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = "apt-get install chromium, or set MEDFED_CHROMIUM to a Chromium executable"
#: Requests a page may make without touching anything outside itself.
LOCAL_SCHEMES = ("data:", "blob:", "about:")
#: Evaluated once the page has loaded: resolves when its figures are drawn, to their number.
FIGURES_READY = (
    "Promise.resolve(window.medfedFiguresReady).then(() => Array.from("
    "document.querySelectorAll('.js-plotly-plot')).filter(p => p.querySelector('.main-svg'))"
    ".length)"
)
_FLAGS = (
    "--headless",
    "--no-sandbox",  # as root (CI) Chromium refuses to start without it
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
)
#: Every host name resolves to nothing (`browse` exempts the page's own host).
_HOST_RULES = "MAP * ~NOTFOUND"


class BrowserError(RuntimeError):
    """Chromium could not be found, started or driven (one line)."""


def find_chromium() -> str | None:
    """The Chromium executable: ``$MEDFED_CHROMIUM``, else the first of `CHROMIUM_NAMES`
    on PATH; None if there is none."""
    named = os.environ.get(CHROMIUM_ENV)
    if named:
        found = shutil.which(named)
        if found is None:
            raise BrowserError(f"{CHROMIUM_ENV}={named}: no such executable")
        return found
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


@dataclass
class PageLog:
    """What a page did in Chromium: ``console`` (every console message, "level: text"),
    ``errors`` (console errors, exceptions, Chromium's error log entries), ``requests``
    (URLs other than the page and `LOCAL_SCHEMES`; a served page's own files and data are
    among them), ``figures`` (Plotly figures drawn)."""

    url: str
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    figures: int = 0
    #: `browse` only: what its ``ready`` expression gave, the page's visible text then, and
    #: the seconds from navigation until then.
    ready_value: Any = None
    text: str = ""
    ready_s: float = 0.0

    @property
    def problems(self) -> list[str]:
        """Errors and requests, each as one line."""
        return self.errors + [f"network request to {url}" for url in self.requests]

    def record(self, event: dict[str, Any]) -> None:
        """Take in one DevTools event."""
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.console.append(f"{params['type']}: {text}")
            if params["type"] in ("error", "assert"):
                self.errors.append(f"console {params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"uncaught exception: {str(text).splitlines()[0]}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            self.errors.append(f"{entry['source']} error: {entry['text']} {entry.get('url', '')}")
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if url != self.url and not url.startswith(LOCAL_SCHEMES):
                self.requests.append(url)


class _DevTools:
    """One headless Chromium and its DevTools pipe (fd 3: commands in, fd 4: replies out)."""

    def __init__(self, executable: str, timeout: float, own_host: str | None = None) -> None:
        self.deadline = time.monotonic() + timeout
        self.profile = tempfile.mkdtemp(prefix="medfed-chromium-")
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        commands_r, self._commands = os.pipe()
        self._replies, replies_w = os.pipe()

        def wire_pipe() -> None:  # in the child: the pipe's ends onto fds 3 and 4
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_r, replies_w)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        try:
            self.process = subprocess.Popen(
                [
                    executable,
                    *_FLAGS,
                    f"--host-resolver-rules={_HOST_RULES}"
                    + (f", EXCLUDE {own_host}" if own_host else ""),
                    f"--user-data-dir={self.profile}",
                    "about:blank",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self.stderr,
                close_fds=False,  # fds 3 and 4 must survive; others are close-on-exec
                preexec_fn=wire_pipe,
            )
        except OSError as exc:
            raise BrowserError(f"{executable}: cannot start ({exc.strerror})") from None
        finally:
            os.close(commands_r)
            os.close(replies_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def close(self) -> None:
        """Ask Chromium to quit, kill it if it does not, and remove its profile."""
        try:
            if self.process.poll() is None:
                self._send("Browser.close")
                self.process.wait(timeout=10)
        except (BrowserError, OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self._commands)
            os.close(self._replies)
            self.stderr.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    def _failure(self, what: str) -> BrowserError:
        self.stderr.seek(0)
        lines = [ln for ln in self.stderr.read().decode(errors="replace").splitlines() if ln]
        detail = f": {lines[-1].strip()}" if lines else ""
        return BrowserError(f"headless Chromium {what}{detail}")

    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        try:
            os.write(self._commands, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise self._failure("exited") from None
        return self._next_id

    def _receive(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = self.deadline - time.monotonic()
            ready, _, _ = select.select([self._replies], [], [], max(left, 0))
            if not ready:
                raise BrowserError("headless Chromium timed out")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise self._failure("exited")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send a command and wait for its result; events meanwhile go to ``events``."""
        sent = self._send(method, params, session)
        while True:
            message = self._receive()
            if message.get("id") == sent:
                if "error" in message:
                    raise BrowserError(f"Chromium {method}: {message['error'].get('message')}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str) -> None:
        """Wait for the event ``method`` (keeping it and every other in ``events``)."""
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._receive())


def render_page(
    page: Path,
    pdf: Path | None = None,
    executable: str | None = None,
    footer: str = "",
    timeout: float = 90.0,
) -> PageLog:
    """Open ``page`` (a local HTML file) in headless Chromium, wait for its figures, and
    return what it logged and requested; with ``pdf``, print it there (A4, backgrounds,
    page numbers and ``footer`` at the foot of every page). `BrowserError` if Chromium
    is missing, fails or takes longer than ``timeout`` seconds in all."""
    executable = executable or find_chromium()
    if executable is None:
        raise BrowserError(f"no Chromium found ({INSTALL_HINT})")
    url = page.resolve().as_uri()
    log = PageLog(url)
    browser = _DevTools(executable, timeout)
    try:
        session = _new_page(browser)
        browser.call("Page.navigate", {"url": url}, session)
        browser.wait_for("Page.loadEventFired")
        drawn = browser.call(
            "Runtime.evaluate",
            {"expression": FIGURES_READY, "awaitPromise": True, "returnByValue": True},
            session,
        )
        log.figures = int(drawn.get("result", {}).get("value") or 0)
        if pdf is not None:
            printed = browser.call("Page.printToPDF", _print_options(footer), session)
            tmp = pdf.with_name(pdf.name + ".tmp")
            tmp.write_bytes(base64.b64decode(printed["data"]))
            tmp.replace(pdf)
        for event in browser.events:
            if event.get("sessionId") == session:
                log.record(event)
    finally:
        browser.close()
    return log


def _new_page(browser: _DevTools) -> str:
    """A new tab with the Runtime, Log, Network and Page events on; its session id."""
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"
    ]
    for domain in ("Runtime", "Log", "Network", "Page"):
        browser.call(f"{domain}.enable", session=session)
    return session


#: Evaluated to size a full-page screenshot: the tallest content of the document and of
#: its scrolling elements (apps such as Streamlit scroll inside an element).
_CONTENT_HEIGHT = (
    "Math.max(document.documentElement.scrollHeight, ...Array.from("
    "document.querySelectorAll('*')).filter(e => ['auto', 'scroll']"
    ".includes(getComputedStyle(e).overflowY)).map(e => e.scrollHeight))"
)


def browse(
    url: str,
    ready: str = FIGURES_READY,
    screenshot: Path | None = None,
    width: int = 1400,
    height: int = 900,
    executable: str | None = None,
    timeout: float = 90.0,
    warm: bool = False,
) -> PageLog:
    """Open ``url`` (e.g. a page a local server serves) in headless Chromium, where no host
    name but ``url``'s own resolves, with a ``width`` x ``height`` window; evaluate ``ready``
    (a JavaScript expression, a promise awaited: its value is ``ready_value``, and a number
    is also ``figures``); return what the page logged and requested, its visible text and
    the seconds until it was ready. With ``screenshot``, save a PNG of the whole page there
    (the window made as tall as the content, then ``ready`` awaited again). With ``warm``,
    open ``url`` once first and await ``ready``, then time a second load of it: a visit
    with the browser's cache warm (the log is the second load's). `BrowserError` as for
    `render_page`."""
    executable = executable or find_chromium()
    if executable is None:
        raise BrowserError(f"no Chromium found ({INSTALL_HINT})")
    log = PageLog(url)
    browser = _DevTools(executable, timeout, urlsplit(url).hostname)

    def evaluate(expression: str) -> Any:
        reply = browser.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session,
        )
        return reply.get("result", {}).get("value")

    def resize(to_height: int) -> None:
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": to_height, "deviceScaleFactor": 1, "mobile": False},
            session,
        )

    try:
        session = _new_page(browser)
        resize(height)
        if warm:
            browser.call("Page.navigate", {"url": url}, session)
            browser.wait_for("Page.loadEventFired")
            evaluate(ready)
            browser.events.clear()
        started = time.monotonic()
        browser.call("Page.navigate", {"url": url}, session)
        browser.wait_for("Page.loadEventFired")
        log.ready_value = evaluate(ready)
        log.ready_s = time.monotonic() - started
        if isinstance(log.ready_value, int | float):
            log.figures = int(log.ready_value)
        log.text = str(evaluate("document.body.innerText") or "")
        if screenshot is not None:
            resize(max(height, int(evaluate(_CONTENT_HEIGHT) or height)))
            evaluate(ready)
            shot = browser.call("Page.captureScreenshot", {"format": "png"}, session)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        for event in browser.events:
            if event.get("sessionId") == session:
                log.record(event)
    finally:
        browser.close()
    return log


def _print_options(footer: str) -> dict[str, Any]:
    """Page.printToPDF's options: the page's own CSS page size and margins, backgrounds,
    an outline from the headings, and a footer with page numbers."""
    style = "font: 7px Helvetica, Arial, sans-serif; color: #555; width: 100%; margin: 0 12mm;"
    escaped = footer.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return {
        "printBackground": True,
        "preferCSSPageSize": True,
        "displayHeaderFooter": True,
        "headerTemplate": "<span></span>",
        "footerTemplate": (
            f'<div style="{style}"><span>{escaped}</span><span style="float: right">page '
            '<span class="pageNumber"></span> of <span class="totalPages"></span></span></div>'
        ),
        "generateDocumentOutline": True,
    }
