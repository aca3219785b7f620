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
from test_deployment import Deployment, _has_summary, _stop, _wait

from site_client.ledger import PrivacyLedger
from task.audit import AuditEvent, AuditLog, verify_audit_log
from validation.evidence import validate_evidence


@pytest.mark.slow
def test_coordinator_killed_after_round_two_resumes_to_the_rounds_asked_for(
    tmp_path: Path,
) -> None:
    up = Deployment.of_phantom_sites(tmp_path, 4, "127.0.0.1")
    consortium, out = up.consortium, tmp_path / "run"
    try:
        up.start_all()
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
            coordinator = up.processes[0]
            os.killpg(coordinator.pid, signal.SIGKILL)  # the SuperLink and its ServerApp
            coordinator.wait()
            output, _ = run.communicate(timeout=180)
        finally:
            _stop(run)
        assert run.returncode == 1
        assert "lost the coordinator" in output and "--resume" in output, output[-2000:]

        up.start_coordinator("--resume")
        _wait(lambda: (out / "evidence.json").exists(), 600, "the resumed run's evidence")
        assert "resumed as Flower run" in up.log("coordinator-resume")
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
    for trail in (out, consortium / "coordinator", *up.sites.values()):
        verify_audit_log(trail)
    for store in up.sites.values():  # each round released once: a repeat costs no privacy
        rounds = sorted(e.round for e in PrivacyLedger(store).entries())
        assert rounds == [1, 2, 3], (store, rounds)
