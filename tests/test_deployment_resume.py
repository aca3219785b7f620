"""A coordinator killed mid-run and restarted with ``--resume``: real processes over TLS on
127.0.0.1 (a consortium of its own, since its coordinator is killed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_deployment import SITES, Deployment, _free_port, _has_summary, _stop, _wait

from server.consortium import init_consortium
from simulations.phantoms import write_phantom_federation
from site_client.approval import approve
from site_client.ingest import ingest_site
from site_client.ledger import PrivacyLedger
from site_client.store import SiteStore
from task.app_bundle import build_app_bundle
from task.audit import AuditEvent, AuditLog, verify_audit_log
from validation.evidence import validate_evidence


@pytest.mark.slow
def test_coordinator_killed_after_round_two_resumes_to_the_rounds_asked_for(
    tmp_path: Path,
) -> None:
    sites = {}
    for phantom in write_phantom_federation(tmp_path / "phantoms", 3, cases_per_site=40, seed=4):
        store = SiteStore.create(tmp_path / "sites" / phantom.name)
        ingest_site(store, phantom / "dicom", phantom / "labels.csv", seed=4)
        sites[store.site_id] = store.root
        approve(store.root, build_app_bundle())
    consortium = init_consortium(tmp_path / "consortium", SITES, "127.0.0.1").root
    up = Deployment(consortium, _free_port(), sites, tmp_path, [])
    coordinator_args = ("coordinator", "start", "--consortium", consortium, "--port", up.port,
                        "--host", "127.0.0.1")  # fmt: skip
    out = tmp_path / "run"
    try:
        coordinator = up.start("coordinator", *coordinator_args)
        _wait(lambda: "newly registered" in up.log("coordinator"), 120, "the coordinator")
        for site, store in sites.items():
            up.start(site, "site", "join", "--kit", consortium / "kits" / site,
                     "--site-dir", store, "--coordinator", f"127.0.0.1:{up.port}",
                     "--local-port", _free_port())  # fmt: skip
        _wait(lambda: up.online() == 3, 120, "3 sites online")
        run = subprocess.Popen(
            [sys.executable, "-m", "medfed", "run", "--consortium", str(consortium),
             "--out", str(out), "--rounds", "3", "--strategy", "fedadam",
             "--round-timeout", "180", "--no-local-baselines", "--simulated-data"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        try:
            _wait(lambda: _has_summary(out / "rounds.jsonl", 2), 400, "round 2")
            os.killpg(coordinator.pid, signal.SIGKILL)  # the SuperLink and its ServerApp
            coordinator.wait()
            output, _ = run.communicate(timeout=180)
        finally:
            _stop(run)
        assert run.returncode == 1
        assert "lost the coordinator" in output and "--resume" in output, output[-2000:]

        up.start("coordinator-resumed", *coordinator_args, "--resume")
        _wait(lambda: (out / "evidence.json").exists(), 600, "the resumed run's evidence")
        assert "resumed as Flower run" in up.log("coordinator-resumed")
    finally:
        up.stop()

    evidence = json.loads((out / "evidence.json").read_text())
    validate_evidence(evidence)
    assert [r["round"] for r in evidence["rounds"]] == [1, 2, 3]
    assert [r["after_round"] for r in evidence["run"]["resumptions"]] == [2]
    summaries = [
        json.loads(line)["round"]
        for line in (out / "rounds.jsonl").read_text().splitlines()
        if json.loads(line)["phase"] == "summary"
    ]
    assert summaries == [1, 2, 3]
    resumed = [
        e for e in AuditLog(out / "audit.jsonl").entries() if e.event == AuditEvent.RUN_RESUMED
    ]
    assert len(resumed) == 1 and resumed[0].details["after_round"] == 2
    assert resumed[0].details["server_state_sha256"]  # FedAdam's moments carried over
    for trail in (out, consortium / "coordinator", *sites.values()):
        verify_audit_log(trail)
    for store in sites.values():  # each round released once: a repeat costs no privacy
        rounds = sorted(e.round for e in PrivacyLedger(store).entries())
        assert rounds == [1, 2, 3], (store, rounds)
