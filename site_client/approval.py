"""Site approval of code: a site runs only the app bundles (FABs) it has approved.

``SITE/approved-apps.txt`` lists the SHA-256 of every approved bundle, one per line.
`approve` shows what a bundle is and records its hash there, with a TASK_APPROVED entry in
the site's audit trail. The SuperNode runs its ClientApps through ``SITE/bin/flwr-clientapp``
(`write_clientapp_shim`), which runs Flower's own ``flwr-clientapp`` with one change: before
a bundle is unpacked or any of its code imported, its hash must be on the list. Otherwise it
raises `AppNotApproved`, the site audits the refusal, and Flower's error reply carries the
reason to the coordinator.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from site_client.policy import read_policy
from task.app_bundle import AppBundle
from task.audit import AuditEntry, AuditEvent, AuditLog
from task.wire import (
    MSG_EVALUATE,
    MSG_EVALUATE_STRATA,
    MSG_PROFILE,
    MSG_TRAIN,
    MSG_TRAIN_LOCAL,
)

APPROVALS_FILE = "approved-apps.txt"
#: Environment variable naming the site directory for the ClientApp shim.
SITE_DIR_ENV = "MEDFED_SITE_DIR"
SHIM_NAME = "flwr-clientapp"

#: What each message of medfed's task makes the site send back (`task.wire`; every reply
#: passes the site's egress guard, `site_client.egress`).
WHAT_LEAVES = {
    MSG_PROFILE: "case counts per split, class, scanner, modality, body part, study year "
    "range and subgroup (below the minimum cell size withheld)",
    MSG_TRAIN: "the model's weights after local DP-SGD training, the number of training "
    "cases and the DP parameters and epsilon of the release",
    MSG_TRAIN_LOCAL: "the local-only baseline's weights (DP-SGD), with the same metrics",
    MSG_EVALUATE: "loss and score histograms per class on the test split",
    MSG_EVALUATE_STRATA: "score histograms per class and stratum (strata below the minimum "
    "cell size withheld)",
}


class AppNotApproved(Exception):
    """The site's policy does not list this app bundle (the reason reaches the coordinator)."""


@dataclass(frozen=True)
class Approvals:
    """The approved bundle hashes of the site directory ``site_dir``."""

    site_dir: Path

    @property
    def path(self) -> Path:
        return self.site_dir / APPROVALS_FILE

    def hashes(self) -> frozenset[str]:
        """Every approved SHA-256 (none when the file is missing)."""
        if not self.path.exists():
            return frozenset()
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return frozenset(line.split("#")[0].strip() for line in lines if line.split("#")[0].strip())

    def check(self, bundle: AppBundle) -> None:
        """`AppNotApproved` (audited) unless ``bundle`` is approved."""
        if bundle.sha256 in self.hashes():
            return
        reason = (
            f"medfed site policy: app bundle sha256:{bundle.sha256} is not approved at this site"
        )
        _audit(
            self.site_dir,
            AuditEvent.REFUSED,
            {"app_sha256": bundle.sha256, "reason": "not approved"},
        )
        raise AppNotApproved(reason)


def describe(bundle: AppBundle) -> str:
    """What ``bundle`` is and does, for a site's reviewer: hash, files, components,
    configuration and what each message makes the site send."""
    project = bundle.project()
    flwr: dict[str, Any] = project.get("tool", {}).get("flwr", {}).get("app", {})
    lines = [
        f"app bundle sha256:{bundle.sha256}",
        f"  project: {project.get('project', {}).get('name')} "
        f"{project.get('project', {}).get('version')} (publisher {flwr.get('publisher')})",
        "  files:",
        *(f"    {name} ({size} bytes)" for name, size in sorted(bundle.files().items())),
        "  components:",
        *(f"    {role}: {target}" for role, target in sorted(flwr.get("components", {}).items())),
        "  run configuration keys: " + ", ".join(sorted(flwr.get("config", {}))),
        "  what leaves this site, per message (task/wire.py, enforced by the egress guard):",
        *(f"    {message}: {what}" for message, what in WHAT_LEAVES.items()),
        "  never: pixels, per-case scores, labels or identifiers",
    ]
    return "\n".join(lines)


def approve(site_dir: Path, bundle: AppBundle) -> bool:
    """Record ``bundle``'s hash as approved at ``site_dir`` (audited); False if it already was."""
    approvals = Approvals(site_dir)
    if bundle.sha256 in approvals.hashes():
        return False
    with approvals.path.open("a", encoding="utf-8") as out:
        out.write(bundle.sha256 + "\n")
    os.chmod(approvals.path, 0o600)
    _audit(site_dir, AuditEvent.TASK_APPROVED, {"app_sha256": bundle.sha256})
    return True


def _audit(site_dir: Path, event: AuditEvent, details: dict[str, str]) -> None:
    site_id = read_policy(site_dir).site_id
    AuditLog.in_folder(site_dir).record(AuditEntry(site_id, event, details=details))


def write_clientapp_shim(site_dir: Path) -> Path:
    """Write ``site_dir/bin/flwr-clientapp`` (runs `clientapp_main` with this interpreter);
    the folder to put first on the SuperNode's PATH."""
    folder = site_dir / "bin"
    folder.mkdir(exist_ok=True, mode=0o700)
    shim = folder / SHIM_NAME
    shim.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "from site_client.approval import clientapp_main\n"
        "sys.exit(clientapp_main())\n",
        encoding="utf-8",
    )
    shim.chmod(0o700)
    return folder


def clientapp_main() -> int | None:
    """Flower's ``flwr-clientapp``, refusing unapproved bundles of the site in $MEDFED_SITE_DIR."""
    import flwr.supernode.runtime.run_clientapp as run_clientapp
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    approvals = Approvals(Path(os.environ[SITE_DIR_ENV]))
    install = run_clientapp.install_from_fab

    def approved_install(content: bytes, *args: Any, **kwargs: Any) -> Path:
        approvals.check(AppBundle.of(content))
        return install(content, *args, **kwargs)

    run_clientapp.install_from_fab = approved_install  # looked up when each message runs
    flwr_clientapp()
    return None
