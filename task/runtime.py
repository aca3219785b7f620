"""Process settings every medfed entry point applies before Flower or Ray start, and the
version of the running code."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

#: Hospital networks: no telemetry, no update checks, no usage statistics.
OFFLINE_ENVIRONMENT = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Keep Ray's current handling of CPU-only actors, without its warning about a change.
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def apply_offline_environment() -> None:
    """Set `OFFLINE_ENVIRONMENT` in this process (inherited by Ray's workers)."""
    os.environ.update(OFFLINE_ENVIRONMENT)


def code_version() -> str:
    """medfed's version, with the git commit when running from a checkout."""
    release = version("medfed")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return release
    return f"{release}+g{commit}"


#: Loopback never goes through an HTTP proxy: Flower's clients honour HTTPS_PROXY even for
#: the SuperLink's and SuperNode's calls to their own local APIs.
LOOPBACK_NO_PROXY = "127.0.0.1,localhost,::1"


def deployment_environment(flwr_home: Path, bin_dirs: tuple[Path, ...] = ()) -> dict[str, str]:
    """The environment of a SuperLink or SuperNode process: this one's, plus
    `OFFLINE_ENVIRONMENT`, runtime dependency installation off, ``flwr_home`` as FLWR_HOME
    (where Flower unpacks apps), ``bin_dirs`` then this interpreter's bin directory first on
    PATH (Flower starts its child processes by bare name), and loopback exempt from proxies."""
    env = dict(os.environ)
    env.update(OFFLINE_ENVIRONMENT)
    no_proxy = ",".join(p for p in (env.get("NO_PROXY", ""), LOOPBACK_NO_PROXY) if p)
    path = [*map(str, bin_dirs), str(Path(sys.executable).parent), env.get("PATH", "")]
    env.update(
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_HOME=str(flwr_home),
        PATH=os.pathsep.join(p for p in path if p),
        NO_PROXY=no_proxy,
        no_proxy=no_proxy,
    )
    # Flower's superexec polls for work every second by default: 0.2 s saves seconds a round.
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")
    return env
