"""The coordinator on Flower's deployment runtime (`medfed coordinator start`).

It runs the guarded SuperLink (`server.guard`) with the consortium's TLS certificate,
SuperNode authentication, a state database (``DIR/coordinator/state.db``), runtime dependency
installation and telemetry off, then registers every site's SuperNode key found in
``DIR/coordinator/supernodes/*.pub`` through the Control API (keys already registered are
left alone, so a restart is idempotent). ``DIR/coordinator/superlink.toml`` records the port
for `medfed run`; ``DIR/coordinator/audit.jsonl`` records starts and registrations.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from server.consortium import SUPERLINK_PORT, ConsortiumError, ConsortiumLayout
from task.audit import AuditEntry, AuditEvent, AuditLog
from task.runtime import deployment_environment

COORDINATOR_ACTOR = "coordinator"
SUPERLINK_FILE = "superlink.toml"
STATE_DB = "state.db"
#: Seconds the SuperLink has to answer /health after it starts.
HEALTH_TIMEOUT_S = 90.0
Progress = Callable[[str], None]


@dataclass(frozen=True)
class CoordinatorSettings:
    """How to run the coordinator.

    consortium: the consortium directory (`server.consortium`).
    host: the address the SuperLink binds (0.0.0.0: every interface).
    port: its one HTTPS port (Fleet API to sites; the rest only from loopback).
    resume: restart on an existing state database (registered sites and past runs kept);
        without it an existing database is an error, so no state is reused by accident.
    """

    consortium: Path
    host: str = "0.0.0.0"
    port: int = SUPERLINK_PORT
    resume: bool = False

    @property
    def layout(self) -> ConsortiumLayout:
        return ConsortiumLayout(self.consortium)

    @property
    def database(self) -> Path:
        return self.layout.coordinator / STATE_DB

    @property
    def flwr_home(self) -> Path:
        return self.layout.coordinator / "flwr-home"

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be 1-65535, got {self.port}")


def superlink_command(settings: CoordinatorSettings) -> list[str]:
    """The guarded SuperLink's command line for ``settings``."""
    layout = settings.layout
    return [
        sys.executable, "-m", "server.guard", "--",
        "--ssl-ca-certfile", str(layout.ca_cert),
        "--ssl-certfile", str(layout.tls_cert),
        "--ssl-keyfile", str(layout.tls_key),
        "--enable-supernode-auth",
        "--database", str(settings.database),
        "--disable-runtime-dependency-installation",
        "--host", settings.host,
        "--port", str(settings.port),
    ]  # fmt: skip


def _check_consortium(settings: CoordinatorSettings) -> None:
    layout = settings.layout
    for path in (layout.ca_cert, layout.tls_cert, layout.tls_key, layout.signing_key):
        if not path.is_file():
            raise ConsortiumError(f"{path}: missing (is {layout.root} a consortium directory?)")
    if settings.database.exists() and not settings.resume:
        raise ConsortiumError(
            f"{settings.database}: the coordinator has run before; restart it with --resume"
        )


def control_address(consortium: Path) -> str:
    """``127.0.0.1:PORT`` of the running coordinator of ``consortium`` (its superlink.toml)."""
    path = ConsortiumLayout(consortium).coordinator / SUPERLINK_FILE
    try:
        port = tomllib.loads(path.read_text(encoding="utf-8"))["port"]
    except (FileNotFoundError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise ConsortiumError(
            f"{path}: no coordinator port (run `medfed coordinator start`)"
        ) from exc
    return f"127.0.0.1:{int(port)}"


def control_client(consortium: Path) -> Any:
    """A Control API client of the coordinator of ``consortium``, over TLS on loopback."""
    from flwr.supercore.control import ControlHttpClient
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

    return ControlHttpClient.from_server_address(
        server_address=control_address(consortium),
        insecure=False,
        root_certificates=ConsortiumLayout(consortium).ca_cert.read_bytes(),
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr CLI")],
    )


def wait_healthy(settings: CoordinatorSettings, process: subprocess.Popen[bytes]) -> float:
    """Wait until the SuperLink answers ``/health`` over TLS; seconds taken.
    `ConsortiumError` if it exits or stays silent for `HEALTH_TIMEOUT_S`."""
    context = ssl.create_default_context(cafile=str(settings.layout.ca_cert))
    url = f"https://127.0.0.1:{settings.port}/health"
    started = time.monotonic()
    while time.monotonic() - started < HEALTH_TIMEOUT_S:
        if process.poll() is not None:
            raise ConsortiumError(
                f"the SuperLink exited with status {process.returncode}: see its log above"
            )
        try:
            with urllib.request.urlopen(url, context=context, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (OSError, urllib.error.URLError):
            time.sleep(0.3)
    raise ConsortiumError(f"the SuperLink did not answer {url} in {HEALTH_TIMEOUT_S:.0f} s")


def register_sites(consortium: Path, audit: AuditLog) -> dict[str, int]:
    """Register every site key in ``coordinator/supernodes/*.pub`` not yet known to the
    SuperLink; returns site -> node id of the new registrations (audited)."""
    from flwr.proto.control_pb2 import ListNodesRequest, RegisterNodeRequest
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    keys = sorted((ConsortiumLayout(consortium).coordinator / "supernodes").glob("*.pub"))
    registered: dict[str, int] = {}
    with control_client(consortium) as client:
        known = {n.public_key for n in client.ListNodes(ListNodesRequest()).nodes_info}
        for path in keys:
            try:
                key = public_key_to_bytes(load_ssh_public_key(path.read_bytes()))
            except ValueError as exc:
                raise ConsortiumError(f"{path}: not an OpenSSH public key ({exc})") from exc
            if key in known:
                continue
            node_id = client.RegisterNode(
                RegisterNodeRequest(public_key=key, name=path.stem)
            ).node_id
            registered[path.stem] = node_id
            audit.record(
                AuditEntry(
                    COORDINATOR_ACTOR,
                    AuditEvent.SITE_REGISTERED,
                    details={"site": path.stem, "node": node_id, "key_file": path.name},
                )
            )
    return registered


class Coordinator:
    """The running SuperLink of one consortium: `start` it, then `wait` or `stop` it."""

    def __init__(self, settings: CoordinatorSettings, progress: Progress = print) -> None:
        self.settings = settings
        self.progress = progress
        self.process: subprocess.Popen[bytes] | None = None
        self.audit = AuditLog.in_folder(settings.layout.coordinator)

    def start(self) -> dict[str, int]:
        """Start the SuperLink, wait for it, register the sites; returns the new
        registrations (site -> node id)."""
        settings = self.settings
        _check_consortium(settings)
        settings.flwr_home.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = deployment_environment(settings.flwr_home)
        old_umask = os.umask(0o077)  # state.db (+ -wal, -shm) holds models in transit
        try:
            self.process = subprocess.Popen(
                superlink_command(settings),
                env=env,
                cwd=settings.layout.coordinator,
            )
        finally:
            os.umask(old_umask)
        healthy = wait_healthy(settings, self.process)
        (settings.layout.coordinator / SUPERLINK_FILE).write_text(
            tomli_w.dumps({"host": settings.host, "port": settings.port}), encoding="utf-8"
        )
        self.audit.record(
            AuditEntry(
                COORDINATOR_ACTOR,
                AuditEvent.COORDINATOR_STARTED,
                details={"port": settings.port, "host": settings.host, "resume": settings.resume},
            )
        )
        registered = register_sites(settings.consortium, self.audit)
        self.progress(
            f"coordinator up in {healthy:.1f} s on {settings.host}:{settings.port} (TLS); "
            f"{len(registered)} site key(s) newly registered"
        )
        return registered

    def wait(self) -> int:
        """Block until the SuperLink exits (SIGINT/SIGTERM stop it); its exit status."""
        assert self.process is not None, "start() first"
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: self.stop())
        return self.process.wait()

    def stop(self) -> None:
        """Stop the SuperLink (SIGINT: Flower's graceful stop); its children exit when their
        parent is gone."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
