"""`medfed site join`: a site's SuperNode, connected to the consortium's coordinator.

`prepare_site` checks the kit (``kit.toml``, the CA certificate's fingerprint) and installs
it in the site directory: ``SITE/consortium/`` gets the CA certificate, the coordinator's
model-signing public key and the SuperNode key (0600), ``SITE/site.toml`` gets
``[coordinator] signing_public_key`` (every model is checked before it is loaded), and
``SITE/bin/flwr-clientapp`` the approval shim (`site_client.approval`). `SuperNode` then runs
Flower's ``flower-supernode`` over TLS with the site's key, and restarts it while the
coordinator still holds the previous connection's lease. Before it starts, `check_clock`
compares the site's clock with the coordinator's: Flower's SuperLink refuses a SuperNode
whose signed timestamps are more than 5 s in its future or about 5 min in its past, and the
SuperNode then exits 0 without saying why.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import ssl
import subprocess
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from site_client.approval import SITE_DIR_ENV, write_clientapp_shim
from site_client.client_app import SITE_DIR_KEY
from site_client.policy import CoordinatorPolicy, read_policy, write_policy
from task.audit import AuditEntry, AuditEvent, AuditLog
from task.runtime import LOOPBACK_NO_PROXY, deployment_environment

KIT_FILE = "kit.toml"
CONSORTIUM_DIR = "consortium"
#: The SuperNode's local API port (loopback only; one per SuperNode on a host).
LOCAL_PORT = 9094
#: Flower refuses a SuperNode whose key is still online (code 2004) until the lease of the
#: previous connection ends (up to about 60 s): retry for this long, this often.
RESTART_WINDOW_S = 120.0
RESTART_DELAY_S = 10.0
#: Refuse to join with a clock more than this far ahead of the coordinator's: Flower refuses
#: a SuperNode's signed timestamp from more than 5 s in the future.
MAX_AHEAD_S = 4.0
#: ... or this far behind: Flower refuses one more than 305 s old when the request has
#: arrived, so the time to upload a request (model weights) counts too.
MAX_BEHIND_S = 240.0
#: HTTPS requests made to measure the clock offset; the shortest round trip is used.
CLOCK_SAMPLES = 3
_KIT_KEYS = ("site_id", "coordinator", "ca_certificate", "ca_sha256", "model_signing_public_key",
             "supernode_private_key")  # fmt: skip
Progress = Callable[[str], None]


class JoinError(RuntimeError):
    """The site cannot join (one line naming the file or field)."""


@dataclass(frozen=True)
class Kit:
    """A site kit (`server.consortium`): the site id, the coordinator's HOST:PORT and its files."""

    root: Path
    site_id: str
    coordinator: str
    ca_certificate: Path
    model_signing_public_key: Path
    supernode_private_key: Path

    @classmethod
    def read(cls, root: Path) -> Kit:
        """Read and check ``root/kit.toml``: every field, every file, the CA fingerprint."""
        path = root / KIT_FILE
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise JoinError(f"{path}: missing (is {root} a medfed site kit?)") from exc
        except tomllib.TOMLDecodeError as exc:
            raise JoinError(f"{path}: not valid TOML ({exc})") from exc
        missing = [key for key in _KIT_KEYS if not isinstance(data.get(key), str)]
        if missing:
            raise JoinError(f"{path}: missing field(s) {', '.join(missing)}")
        files = {}
        for key in ("ca_certificate", "model_signing_public_key", "supernode_private_key"):
            files[key] = root / data[key]
            if not files[key].is_file():
                raise JoinError(f"{path}: {key} names {files[key]}, which is missing")
        try:
            ca = x509.load_pem_x509_certificate(files["ca_certificate"].read_bytes())
        except ValueError as exc:
            raise JoinError(f"{files['ca_certificate']}: not a PEM certificate") from exc
        if ca.fingerprint(hashes.SHA256()).hex() != data["ca_sha256"].lower():
            raise JoinError(
                f"{files['ca_certificate']}: SHA-256 fingerprint does not match {path}'s "
                "ca_sha256: do not join; ask the coordinator"
            )
        return cls(root, data["site_id"], data["coordinator"], **files)


@dataclass(frozen=True)
class JoinSettings:
    """A SuperNode's settings.

    kit: the site's kit folder. site_dir: the site store to serve.
    coordinator: HOST:PORT of the coordinator (default: the kit's).
    local_port: the SuperNode's local API port on 127.0.0.1.
    """

    kit: Path
    site_dir: Path
    coordinator: str | None = None
    local_port: int = LOCAL_PORT

    @property
    def installed(self) -> Path:
        return self.site_dir / CONSORTIUM_DIR


def prepare_site(settings: JoinSettings) -> tuple[Kit, Path]:
    """Check the kit and install it in the site directory (see the module docstring).
    Returns the kit and the folder to put first on the SuperNode's PATH."""
    kit = Kit.read(settings.kit)
    policy = read_policy(settings.site_dir)
    if policy.site_id != kit.site_id:
        raise JoinError(
            f"{settings.kit / KIT_FILE}: the kit is for site {kit.site_id!r}, "
            f"but {settings.site_dir} is site {policy.site_id!r}"
        )
    folder = settings.installed
    folder.mkdir(exist_ok=True, mode=0o700)
    for source in (kit.ca_certificate, kit.model_signing_public_key):
        target = folder / source.name
        shutil.copyfile(source, target)
        target.chmod(0o600)
    _install_supernode_key(kit.supernode_private_key, folder / kit.supernode_private_key.name)
    signing = (folder / kit.model_signing_public_key.name).relative_to(settings.site_dir)
    write_policy(settings.site_dir, replace(policy, coordinator=CoordinatorPolicy(str(signing))))
    AuditLog.in_folder(settings.site_dir).record(
        AuditEntry(
            policy.site_id,
            AuditEvent.SITE_JOINED,
            details={
                "coordinator": settings.coordinator or kit.coordinator,
                "ca_sha256": hashlib.sha256(kit.ca_certificate.read_bytes()).hexdigest(),
            },
        )
    )
    return kit, write_clientapp_shim(settings.site_dir)


def _install_supernode_key(source: Path, target: Path) -> None:
    """Copy the SuperNode key ``source`` (PEM or OpenSSH, an EC key on a NIST curve) to
    ``target`` (0600) in the OpenSSH format Flower reads; `JoinError` if it is not one."""
    data = source.read_bytes()
    try:
        key = (
            serialization.load_ssh_private_key(data, None)
            if data.startswith(b"-----BEGIN OPENSSH")
            else serialization.load_pem_private_key(data, None)
        )
    except (ValueError, TypeError) as exc:
        raise JoinError(f"{source}: not an unencrypted private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise JoinError(f"{source}: SuperNode keys are EC keys (P-256, P-384 or P-521)")
    openssh = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    target.unlink(missing_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(openssh)


def clock_offset(coordinator: str, ca_certificate: Path, timeout: float = 10.0) -> float:
    """Seconds this host's clock is ahead of the coordinator's (negative: behind).

    GETs ``https://COORDINATOR/health`` (TLS verified with ``ca_certificate``, proxies as the
    SuperNode's) and reads the ``Date`` header, which any answer carries (medfed's guard
    answers other hosts 403). Date has whole seconds, so the coordinator's time is taken as
    Date + 0.5 s, at the middle of the request; error at most 0.5 s plus half the round trip.
    Raises `httpx.HTTPError` (or `ValueError` for a missing or bad Date) when it cannot tell.
    """
    url = f"https://{coordinator}/health"
    loopback = httpx.URL(url).host in LOOPBACK_NO_PROXY.split(",")
    context = ssl.create_default_context(cafile=str(ca_certificate))
    samples = []
    with httpx.Client(verify=context, timeout=timeout, trust_env=not loopback) as client:
        for _ in range(CLOCK_SAMPLES):
            sent = time.time()
            response = client.get(url)
            received = time.time()
            date = response.headers.get("date")
            if date is None:
                raise ValueError("its answer has no Date header")
            theirs = parsedate_to_datetime(date).timestamp() + 0.5
            samples.append((received - sent, (sent + received) / 2 - theirs))
    return min(samples)[1]


def check_clock(coordinator: str, ca_certificate: Path, progress: Progress) -> None:
    """`JoinError` if this host's clock is more than `MAX_AHEAD_S` ahead of the
    coordinator's or `MAX_BEHIND_S` behind, or the coordinator's certificate does not
    verify with ``ca_certificate``. An unreachable coordinator is reported in one line and
    let be (the SuperNode keeps trying to connect; `SuperNode.run` checks again if it stops).
    """
    try:
        ahead = clock_offset(coordinator, ca_certificate)
    except (httpx.HTTPError, ValueError) as exc:
        if isinstance(_root_cause(exc), ssl.SSLCertVerificationError):
            raise JoinError(
                f"{coordinator}: its TLS certificate does not verify with the kit's CA "
                f"({_root_cause(exc)}): wrong address, or a proxy that intercepts TLS"
            ) from exc
        progress(
            f"clock not checked: {coordinator} did not answer ({str(exc) or type(exc).__name__})"
        )
        return
    direction = "ahead of" if ahead > 0 else "behind"
    if ahead > MAX_AHEAD_S or -ahead > MAX_BEHIND_S:
        limit = f"{MAX_AHEAD_S:.0f} s ahead" if ahead > 0 else f"{MAX_BEHIND_S:.0f} s behind"
        raise JoinError(
            f"this host's clock is {abs(ahead):.1f} s {direction} the coordinator's "
            f"({coordinator}), more than the {limit} allowed (Flower would refuse the site "
            "without saying why): synchronise this host's clock with NTP"
        )
    progress(f"clock: {abs(ahead):.1f} s {direction} the coordinator's ({coordinator})")


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception that ``exc`` was raised from or while handling (httpx wraps
    TLS errors twice)."""
    while (inner := exc.__cause__ or exc.__context__) is not None:
        exc = inner
    return exc


def supernode_command(settings: JoinSettings, kit: Kit) -> list[str]:
    """``flower-supernode``'s command line for an installed kit."""
    site_dir = settings.site_dir.resolve()
    return [
        "flower-supernode",
        "--superlink", settings.coordinator or kit.coordinator,
        "--root-certificates", str(settings.installed / kit.ca_certificate.name),
        "--auth-supernode-private-key",
        str(settings.installed / kit.supernode_private_key.name),
        "--node-config", f'{SITE_DIR_KEY}="{site_dir}"',
        "--port", str(settings.local_port),
    ]  # fmt: skip


class SuperNode:
    """The site's supervised ``flower-supernode``: `run` blocks until it stops."""

    def __init__(self, settings: JoinSettings, progress: Progress = print) -> None:
        self.settings = settings
        self.progress = progress
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def run(self) -> int:
        """Join and serve until stopped; the SuperNode's last exit status. A refused
        start (the previous connection's lease still held) is retried for
        `RESTART_WINDOW_S`. The clock is checked (`check_clock`) before anything is
        installed, and again when the SuperNode stops by itself."""
        kit = Kit.read(self.settings.kit)
        coordinator = self.settings.coordinator or kit.coordinator
        check_clock(coordinator, kit.ca_certificate, self.progress)
        kit, shim_dir = prepare_site(self.settings)
        env = deployment_environment(self.settings.site_dir / "flwr-home", (shim_dir,))
        env[SITE_DIR_ENV] = str(self.settings.site_dir.resolve())
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: self.stop())
        started = time.monotonic()
        while True:
            self.progress(f"site {kit.site_id}: connecting to {coordinator} over TLS")
            self.process = subprocess.Popen(supernode_command(self.settings, kit), env=env)
            status = self.process.wait()
            if status == 0 or self.stopping:
                if not self.stopping:
                    check_clock(coordinator, kit.ca_certificate, self.progress)
                    self.progress(
                        f"site {kit.site_id}: the SuperNode stopped: key revoked, clock more "
                        "than 5 s ahead of the coordinator's, or stopped there"
                    )
                return status
            if time.monotonic() - started > RESTART_WINDOW_S:
                raise JoinError(f"the SuperNode keeps failing (exit status {status})")
            time.sleep(RESTART_DELAY_S)

    def stop(self) -> None:
        """Stop the SuperNode (SIGTERM: it leaves the federation at once)."""
        self.stopping = True
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
