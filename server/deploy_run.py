"""`medfed run`: a federated job submitted to the coordinator's SuperLink.

The job travels as medfed's deployment app (`task.app_bundle`: thin entry modules that
call the installed ServerApp and ClientApp) built into a FAB, whose SHA-256 each site
approves (`site_client.approval`), with the `FederationConfig` as JSON in the run config.
The ServerApp runs on the coordinator host and writes the run directory itself, evidence
included, as `medfed simulate` does.

Every submitted job is listed in ``DIR/coordinator/runs.json`` (run directory and Flower run
id) with its configuration in ``RUN/federation.json``, so that a coordinator restarted with
``--resume`` can continue each job that was cut short (`resume_interrupted`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from server.consortium import CONSORTIUM_FILE, ConsortiumError, ConsortiumLayout
from server.deployment import COORDINATOR_ACTOR, control_client
from server.records import ROUNDS_FILE
from server.resume import RESUME_FILE
from server.server_app import DataProvenance, FederationConfig
from server.strategies import StrategyConfig
from task.app_bundle import AppBundle
from task.audit import AuditEntry, AuditEvent, AuditLog
from task.config_record import from_config, to_config
from task.model import ModelConfig
from task.privacy import PrivacyConfig
from task.training import TrainingConfig

if TYPE_CHECKING:
    from flwr.serverapp import Grid

#: The run config key holding the job (declared in task/deploy_app/pyproject.toml).
FEDERATION_KEY = "federation"
#: FederationConfig's nested settings, by field name.
_SECTIONS: dict[str, type] = {
    "strategy": StrategyConfig,
    "training": TrainingConfig,
    "model": ModelConfig,
    "privacy": PrivacyConfig,
    "provenance": DataProvenance,
}
_PATHS = ("run_dir", "frozen_model", "signing_key", "audit_log")
Progress = Callable[[str], None]
#: Seconds without an answer from the coordinator before `wait_for_run` gives up.
COORDINATOR_LOST_S = 30.0


def federation_to_json(config: FederationConfig) -> str:
    """``config`` as a JSON document (paths as strings; infinite epsilon as Infinity)."""
    document: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name in _SECTIONS:
            value = to_config(value)
        elif field.name in _PATHS:
            value = None if value is None else str(value)
        elif field.name == "reference_models":
            value = [[name, str(path)] for name, path in value]
        document[field.name] = list(value) if isinstance(value, tuple) else value
    return json.dumps(document, sort_keys=True)


def federation_from_json(text: str) -> FederationConfig:
    """The `FederationConfig` of `federation_to_json`'s document ``text``."""
    document = json.loads(text)
    values: dict[str, Any] = {}
    for name, value in document.items():
        if name in _SECTIONS:
            value = from_config(_SECTIONS[name], value)
        elif name in _PATHS:
            value = None if value is None else Path(value)
        elif name == "reference_models":
            value = tuple((model, Path(path)) for model, path in value)
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return FederationConfig(**values)


@dataclass(frozen=True)
class RunOutcome:
    """How a submitted run ended: Flower's run id, status (e.g. ``finished:completed``),
    details, bytes the SuperLink sent and received for it, and the wall time (s)."""

    run_id: int
    status: str
    details: str
    bytes_sent: int
    bytes_recv: int
    seconds: float


def submit_run(consortium: Path, config: FederationConfig, bundle: AppBundle) -> int:
    """Start ``config`` on the coordinator of ``consortium``; Flower's run id (audited)."""
    from flwr.common.serde import fab_to_proto, user_config_to_proto
    from flwr.proto.control_pb2 import StartRunRequest
    from flwr.supercore.fab import Fab

    with control_client(consortium) as client:
        run_id = client.StartRun(
            StartRunRequest(
                fab=fab_to_proto(Fab(bundle.sha256, bundle.content, {})),
                override_config=user_config_to_proto({FEDERATION_KEY: federation_to_json(config)}),
                federation="",  # open-source Flower has exactly one federation
            )
        ).run_id
    AuditLog.in_folder(ConsortiumLayout(consortium).coordinator).record(
        AuditEntry(
            COORDINATOR_ACTOR,
            AuditEvent.RUN_SUBMITTED,
            details={
                "flower_run": run_id,
                "app_sha256": bundle.sha256,
                "rounds": config.rounds,
                "resume": config.resume,
            },
        )
    )
    _remember(consortium, config, run_id)
    return run_id


#: The jobs submitted to the coordinator: ``[{"run_dir": ..., "flower_run": ...}]``.
RUNS_FILE = "runs.json"
#: The job's `FederationConfig`, kept in its run directory for a resume.
FEDERATION_FILE = "federation.json"


def _remember(consortium: Path, config: FederationConfig, flower_run: int) -> None:
    """List the job in ``runs.json`` (its latest Flower run) and keep its configuration."""
    (config.run_dir / FEDERATION_FILE).write_text(
        federation_to_json(dataclasses.replace(config, resume=False)), encoding="utf-8"
    )
    runs = _submitted(consortium)
    runs[str(config.run_dir)] = flower_run
    path = ConsortiumLayout(consortium).coordinator / RUNS_FILE
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(
        json.dumps([{"run_dir": d, "flower_run": r} for d, r in runs.items()], indent=2),
        encoding="utf-8",
    )
    os.replace(temporary, path)


def _submitted(consortium: Path) -> dict[str, int]:
    """Run directory -> latest Flower run id of every job submitted to ``consortium``."""
    path = ConsortiumLayout(consortium).coordinator / RUNS_FILE
    if not path.exists():
        return {}
    try:
        return {e["run_dir"]: int(e["flower_run"]) for e in json.loads(path.read_text("utf-8"))}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConsortiumError(f"{path}: not a list of submitted runs ({exc})") from exc


def interrupted_runs(consortium: Path) -> dict[Path, int]:
    """The submitted jobs that were cut short (no evidence, no failure, a resume point):
    run directory -> the Flower run that was running it."""
    return {
        Path(run_dir): flower_run
        for run_dir, flower_run in _submitted(consortium).items()
        if (Path(run_dir) / RESUME_FILE).exists()
        and not (Path(run_dir) / "evidence.json").exists()
        and not (Path(run_dir) / FAILURE_FILE).exists()
    }


def resume_interrupted(consortium: Path, bundle: AppBundle, progress: Progress) -> list[int]:
    """Continue every job of ``consortium`` that was cut short as a new Flower run from its
    last finished round (the old run, if Flower still lists it as running, is stopped
    first); returns the new Flower run ids. The jobs write their evidence into their run
    directories as before."""
    from flwr.proto.control_pb2 import ListRunsRequest, StopRunRequest

    resumed = []
    for run_dir, old_run in interrupted_runs(consortium).items():
        with control_client(consortium) as client:
            old = client.ListRuns(ListRunsRequest(run_id=old_run)).run_dict.get(old_run)
            if old is not None and old.status.status != "finished":
                client.StopRun(StopRunRequest(run_id=old_run))
        config = federation_from_json((run_dir / FEDERATION_FILE).read_text(encoding="utf-8"))
        run_id = submit_run(consortium, dataclasses.replace(config, resume=True), bundle)
        progress(f"run {run_dir} resumed as Flower run {run_id} (was {old_run})")
        resumed.append(run_id)
    return resumed


def wait_for_run(
    consortium: Path, run_id: int, timeout_s: float, progress: Progress, run_dir: Path
) -> RunOutcome:
    """Poll the run until Flower says it finished, relaying new lines of the run's
    ``rounds.jsonl`` as progress; `ConsortiumError` after ``timeout_s``."""
    from flwr.proto.control_pb2 import ListRunsRequest

    started = time.monotonic()
    shown = 0
    last_answer = started
    while True:
        try:
            with control_client(consortium) as client:
                run = client.ListRuns(ListRunsRequest(run_id=run_id)).run_dict[run_id]
            last_answer = time.monotonic()
        except httpx.TransportError as exc:
            if time.monotonic() - last_answer > COORDINATOR_LOST_S:
                raise ConsortiumError(
                    f"lost the coordinator ({exc}); restart it with `medfed coordinator start "
                    f"--consortium {consortium} --resume`: the run continues from its last "
                    f"finished round and writes its evidence to {run_dir}"
                ) from exc
            time.sleep(1.0)
            continue
        shown = _relay_rounds(run_dir, shown, progress)
        if run.status.status == "finished":
            return RunOutcome(
                run_id,
                f"finished:{run.status.sub_status}",
                run.status.details,
                run.bytes_sent,
                run.bytes_recv,
                time.monotonic() - started,
            )
        if time.monotonic() - started > timeout_s:
            raise ConsortiumError(f"run {run_id} not finished after {timeout_s:.0f} s")
        time.sleep(1.0)


def _relay_rounds(run_dir: Path, shown: int, progress: Progress) -> int:
    """Report the round records after the first ``shown``; how many there are now."""
    path = run_dir / ROUNDS_FILE
    if not path.exists():
        return shown
    lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines[shown:]:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            return shown  # a line being written: read it next time
        outcome = next((k for k in ("refused", "error") if k in entry), "ok")
        where = f" {entry['site']}" if "site" in entry else ""
        progress(f"  round {entry.get('round')} {entry.get('phase')}{where}: {outcome}")
        shown += 1
    return shown


#: Written into the run directory by the deployment ServerApp when the job fails: its reason.
FAILURE_FILE = "failure.txt"


def consortium_sites(consortium: Path) -> tuple[str, ...]:
    """The site ids of ``consortium`` (its consortium.toml)."""
    path = consortium / CONSORTIUM_FILE
    try:
        sites = tomllib.loads(path.read_text(encoding="utf-8"))["sites"]
    except (FileNotFoundError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise ConsortiumError(f"{path}: no list of sites (is {consortium} a consortium?)") from exc
    return tuple(sites)


def run_on_coordinator(
    consortium: Path, config: FederationConfig, bundle: AppBundle, progress: Progress
) -> RunOutcome:
    """Run ``config`` (every consortium site expected; models signed with the consortium's
    key) on the coordinator and wait for its evidence; `ConsortiumError` with the job's
    reason if it fails."""
    layout = ConsortiumLayout(consortium.resolve())
    config = dataclasses.replace(
        config,
        expected_sites=len(consortium_sites(layout.root)),
        signing_key=layout.signing_key,
    )
    config.run_dir.mkdir(parents=True, exist_ok=True)
    run_id = submit_run(layout.root, config, bundle)
    progress(f"run {run_id} submitted (app sha256:{bundle.sha256}), {config.rounds} rounds")
    exchanges = 2 * config.rounds + 4  # profile, local-only, train + evaluate per round, cross-site
    outcome = wait_for_run(
        layout.root, run_id, config.timeout_s * exchanges, progress, config.run_dir
    )
    failure = config.run_dir / FAILURE_FILE
    if outcome.status != "finished:completed" or failure.exists():
        reason = (
            failure.read_text(encoding="utf-8").strip() if failure.exists() else outcome.details
        )
        raise ConsortiumError(f"run {run_id} {outcome.status}: {reason or 'see flwr log'}")
    return outcome


def run_job(grid: Grid, run_config: dict[str, Any], progress: Progress) -> None:
    """The deployment ServerApp's body: the job of ``run_config`` on ``grid``; on failure its
    one-line reason goes to ``RUN/failure.txt`` (for `medfed run`) before the error
    propagates."""
    from server.server_app import FederatedJob

    config = federation_from_json(str(run_config[FEDERATION_KEY]))
    try:
        FederatedJob(config, progress).run(grid)
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        (config.run_dir / FAILURE_FILE).write_text(reason + "\n", encoding="utf-8")
        raise
