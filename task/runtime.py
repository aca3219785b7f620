"""Process settings every medfed entry point applies before Flower or Ray start, and the
version of the running code."""

from __future__ import annotations

import os
import subprocess
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
