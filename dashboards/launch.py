"""``medfed dashboard``: Streamlit serving `dashboards/app.py` over run directories, offline.

Streamlit runs as a child process with its settings on the command line (they override any
``.streamlit/config.toml``): bound to one address and port, headless, no usage statistics,
no file watcher, the toolbar reduced to the viewer's. It serves the app through
`dashboards.server`, which loads the runs while it starts. Its web page is served from the
installed package (no CDN, no external fonts); the browser test checks that the page
requests nothing beyond the dashboard's own address.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

#: The Streamlit script of the dashboard.
APP = Path(__file__).with_name("app.py")
#: What Streamlit serves: `APP` as an ``st.App`` that loads the runs while it starts
#: (`dashboards.server`).
SERVER = Path(__file__).with_name("server.py")
DEFAULT_PORT = 8501
DEFAULT_ADDRESS = "127.0.0.1"
#: How long Streamlit may take to answer its health check before the launch fails.
START_TIMEOUT_S = 60.0


class DashboardError(RuntimeError):
    """The dashboard cannot start (one line)."""


def check_run_dirs(paths: Sequence[Path]) -> list[Path]:
    """The run directories, absolute; `DashboardError` naming the first that does not exist
    or is not a directory. What is inside is the page's business: a partial or corrupt run
    shows its problems there."""
    checked = []
    for path in paths:
        if not path.exists():
            raise DashboardError(f"{path}: no such run directory")
        if not path.is_dir():
            raise DashboardError(f"{path}: not a directory (give the run directory)")
        checked.append(path.resolve())
    return checked


def check_port(address: str, port: int) -> None:
    """`DashboardError` unless ``port`` on ``address`` is free to listen on."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
        # as servers do: connections of an earlier server still closing do not count
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as exc:
            raise DashboardError(
                f"cannot listen on {address}:{port} ({exc.strerror}); choose another --port"
            ) from None


#: Addresses that mean "every interface": users reach those by this machine's name.
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def public_host(address: str) -> str:
    """The host users point their browsers at: ``address``, or this machine's name when
    the dashboard listens on every interface."""
    return socket.gethostname() if address in WILDCARDS else address


def url(host: str, port: int) -> str:
    """The dashboard's address in a browser."""
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/"


def streamlit_command(
    run_dirs: Sequence[Path], port: int, address: str = DEFAULT_ADDRESS, debug: bool = False
) -> list[str]:
    """The command that serves the dashboard over ``run_dirs``."""
    options = {
        "server.port": port,
        "server.address": address,
        "server.headless": "true",
        "server.fileWatcherType": "none",
        "server.runOnSave": "false",
        "browser.gatherUsageStats": "false",
        "browser.serverAddress": public_host(address),
        "browser.serverPort": port,
        "global.developmentMode": "false",
        "client.toolbarMode": "viewer",
        # Pages turn gaps in the evidence into messages; anything else is not shown to
        # the viewer as a traceback unless --debug.
        "client.showErrorDetails": "full" if debug else "none",
        "theme.base": "light",
        "logger.level": "info" if debug else "error",
    }
    flags = [item for key, value in options.items() for item in (f"--{key}", str(value))]
    command = [sys.executable, "-m", "streamlit", "run", str(SERVER), *flags]
    return [*command, "--", *map(str, run_dirs)]


def wait_until_up(
    process: subprocess.Popen[bytes], address: str, port: int, timeout: float = START_TIMEOUT_S
) -> None:
    """Return once Streamlit answers its health check; `DashboardError` if it exits or
    takes longer than ``timeout`` seconds."""
    health = url(WILDCARDS.get(address, address), port) + "_stcore/health"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DashboardError(f"streamlit exited with status {process.returncode}")
        try:
            with direct.open(health, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise DashboardError(f"streamlit did not answer at {health} within {timeout:g} s")


def serve(
    run_dirs: Sequence[Path],
    port: int = DEFAULT_PORT,
    address: str = DEFAULT_ADDRESS,
    debug: bool = False,
    say: Callable[[str], None] | None = None,
) -> None:
    """Serve the dashboard until Ctrl-C or SIGTERM, then stop Streamlit; `DashboardError`
    when it cannot start or stops by itself with a failure."""
    say = say or _print
    run_dirs = check_run_dirs(run_dirs)
    check_port(address, port)
    env = dict(os.environ, STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    process = subprocess.Popen(
        streamlit_command(run_dirs, port, address, debug),
        stdin=subprocess.DEVNULL,
        stdout=None if debug else subprocess.DEVNULL,
        env=env,
    )

    def stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        wait_until_up(process, address, port)
        runs = f"{len(run_dirs)} run{'s' if len(run_dirs) > 1 else ''}"
        say(f"dashboard: {url(public_host(address), port)} ({runs}; Ctrl-C to stop)")
        status = process.wait()
        if status != 0:
            raise DashboardError(f"streamlit exited with status {status}")
    except KeyboardInterrupt:
        say("dashboard stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(process)


def _print(line: str) -> None:
    print(line, flush=True)  # at once, also into a pipe


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Ask Streamlit to stop (SIGTERM), then kill it if it has not within 10 s."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
