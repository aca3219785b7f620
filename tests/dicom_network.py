"""Sending DICOM to a site's receiver in tests, as a modality does: dcmtk's storescu
(installed by .ci/run; a test that needs it fails, not skips, without it)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

#: The AE title tests send from (the receiver's policy allows it).
SENDER = "MODALITY1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 free at the time of asking."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def storescu(port: int, *files: Path, calling_ae: str = SENDER) -> subprocess.CompletedProcess:
    """storescu sending ``files`` (folders scanned) as they are (JPEG-LS proposed too) to
    127.0.0.1:``port``, going on past files it cannot send."""
    if shutil.which("storescu") is None:
        pytest.fail("dcmtk's storescu is not installed (apt-get install dcmtk)")
    command = ["storescu", "-v", "-xt", "-R", "-nh", "+sd", "-aet", calling_ae, "-aec", "MEDFED"]
    return subprocess.run(
        [*command, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
