"""Process settings every medfed entry point applies before Flower or Ray start."""

from __future__ import annotations

import os

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
