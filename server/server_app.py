"""The coordinator's Flower ServerApp: one federated job, start to evidence.

A job runs these stages, each a set of messages to the sites (see `task.wire`):

1. discover: every site's profile (id, case counts per split and scanner group);
2. local-only baselines: each site trains the initial model on its own data alone;
3. federated rounds: the chosen strategy, with per-round evaluation at every site;
4. cross-site evaluation: the final global model, every local-only model and any
   reference model (e.g. the pooled-centralized baseline of a simulation) scored at every
   site, as score histograms per stratum (a segmentation model: Dice and HD95 aggregates
   per stratum);
5. drift (with ``check_drift``): each site compares its new, unlabelled cases with its
   labelled ones for the final (or frozen) model; ``drift.json`` holds what they report;
6. records: ``run.json``, ``site-aggregates/<site>.json`` and ``evidence.json``.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from server.checkpoints import (
    FROZEN_CHECKPOINT,
    Checkpoint,
    CheckpointRegistry,
    load_frozen_model,
    sha256_of,
)
from server.records import ROUNDS_FILE, WIRE_FILE, AuditedGrid, JsonLines, no_reply
from server.resume import (
    ResumeLog,
    ResumePoint,
    Resumption,
    ServerState,
    run_directory_lock,
    set_aside_interrupted,
)
from server.sites import FederationError, SiteProfile, discover_sites
from server.strategies import RecordingStrategy, StrategyConfig, make_strategy
from task.architectures import SEGMENTATION, task_of
from task.audit import AUDIT_FILE, AuditEvent, AuditLog
from task.config_record import to_config
from task.model import ARCHITECTURES, ModelConfig, build_model, count_parameters
from task.privacy import (
    PLANNED_EPOCHS_KEY,
    PRIVACY_PREFIX,
    PRIVACY_REFUSED,
    RUN_ID_KEY,
    PrivacyConfig,
)
from task.runtime import code_version
from task.signing import load_signing_key
from task.training import TrainingConfig
from task.wire import (
    ARRAYS,
    CONFIG,
    DRIFT,
    EPOCHS_KEY,
    GLOBAL_MODEL,
    HISTOGRAMS_PREFIX,
    LOCAL_MODEL_PREFIX,
    METRICS,
    MODEL_CONFIG_PREFIX,
    MODEL_PREFIX,
    MSG_DRIFT,
    MSG_EVALUATE_SEGMENTATION,
    MSG_EVALUATE_STRATA,
    MSG_TRAIN_LOCAL,
    SEED_KEY,
    SEGMENTATION_PREFIX,
    SUPPRESSED,
    TRAIN_SPLIT_MODELS_KEY,
)
from validation.evidence import write_evidence

RUN_RECORD_FILE = "run.json"
DRIFT_FILE = "drift.json"
AGGREGATES_DIR = "site-aggregates"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class DataProvenance:
    """Where the sites' data came from, for every figure of the run to say.

    description: one sentence for reports.
    simulated: True when sites or scanner differences are simulated (phantoms, a split
        of one hospital's data): reports must say so.
    scenario: the simulation scenario the sites and faults came from
        (`simulations.scenario`): its name, file, SHA-256, TOML text and the faults
        injected; None outside scenarios.
    """

    description: str = "site stores ingested from the sites' DICOM folders"
    simulated: bool = False
    scenario: dict[str, Any] | None = None


@dataclass(frozen=True)
class FederationConfig:
    """One federated job.

    run_dir: where checkpoints, records and evidence go.
    rounds: federated rounds.
    seed: initial weights and every site's training draws derive from it.
    expected_sites: wait for this many sites before starting.
    local_baselines: train and evaluate each site's local-only model as well.
    reference_models: (name, checkpoint file) of further models to evaluate at every site,
        e.g. ("pooled-centralized", path) in a simulation.
    privacy: the differential privacy the run asks for (default: DP-SGD at every site,
        epsilon 8 per site and run; see `task.privacy`).
    holdout_sites: sites left out of all training (no local-only model, never asked to
        train a round, their training split unused) and only tested on: leave-one-site-out
        external validation.
    frozen_model: a checkpoint file (ours, or an external PyTorch state dict for
        ``model``'s architecture) to evaluate at every site with no training at all: an
        evaluation-only job (``medfed validate``); ``rounds``, strategy and privacy unused.
    operating_threshold: the operating threshold (a probability) fixed before the job;
        default: chosen on the sites' training splits (Youden's J).
    timeout_s: how long to wait for replies to one message exchange.
    round_timeout_s: how long a federated round waits for its train (and then evaluate)
        replies before going on without the sites that have not answered (stragglers);
        None: ``timeout_s``.
    signing_key: the coordinator's Ed25519 model-signing key (PEM): every model sent is
        signed with it (`task.signing`). None: models go unsigned (a simulation).
    audit_log: the coordinator's audit trail (`task.audit`); default ``RUN/audit.jsonl``.
    resume: continue the interrupted job in ``run_dir`` from its last finished round
        (`server.resume`) instead of starting afresh.
    check_drift: ask every site how far its new data drifted from its labelled data for
        the final model (`site_client.drift`), into ``RUN/drift.json``.
    """

    run_dir: Path
    rounds: int = 10
    seed: int = 0
    expected_sites: int = 2
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    local_baselines: bool = True
    reference_models: tuple[tuple[str, Path], ...] = ()
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    provenance: DataProvenance = field(default_factory=DataProvenance)
    holdout_sites: tuple[str, ...] = ()
    frozen_model: Path | None = None
    operating_threshold: float | None = None
    timeout_s: float = 3600.0
    round_timeout_s: float | None = None
    signing_key: Path | None = None
    audit_log: Path | None = None
    resume: bool = False
    check_drift: bool = False

    @property
    def trains_local_baselines(self) -> bool:
        """Local-only baselines are trained unless switched off or under central DP (a
        local-only model would reach the other sites with no noise at all)."""
        return self.local_baselines and self.privacy.mode != "central"

    @property
    def planned_site_epochs(self) -> int:
        """Epochs each site trains in the whole run (rounds and local-only baseline): what
        a site sets its DP noise for."""
        if self.frozen_model is not None:
            return 0
        federated = self.rounds * self.training.local_epochs
        return federated * (2 if self.trains_local_baselines else 1)

    def __post_init__(self) -> None:
        if self.operating_threshold is not None and not 0 < self.operating_threshold < 1:
            raise ValueError(f"the threshold must be in (0, 1), got {self.operating_threshold}")
        if self.frozen_model is not None:
            return  # nothing trains: rounds, strategy and privacy do not apply
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.round_timeout_s is not None and not self.round_timeout_s > 0:
            raise ValueError(f"the round timeout must be > 0 s, got {self.round_timeout_s}")
        if self.privacy.mode == "central" and self.strategy.name not in ("fedavg", "fedprox"):
            raise ValueError("central DP averages like FedAvg: use --strategy fedavg or fedprox")
        if self.privacy.mode == "central" and self.strategy.fraction_train < 1:
            raise ValueError("central DP here asks every site each round (fraction_train 1)")
        training_sites = self.expected_sites - len(set(self.holdout_sites))
        if training_sites < self.strategy.min_sites:
            held = f" besides {len(set(self.holdout_sites))} held out" if self.holdout_sites else ""
            raise ValueError(
                f"a federation needs at least {self.strategy.min_sites} training sites"
                f"{held}, got {training_sites}"
            )


def build_server_app(config: FederationConfig, progress: Progress = print) -> ServerApp:
    """The ServerApp that runs the job ``config`` describes."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        FederatedJob(config, progress).run(grid)

    return app


class FederatedJob:
    """The stages of one job (see the module docstring); `run` executes them all."""

    def __init__(self, config: FederationConfig, progress: Progress) -> None:
        self.config = config
        self.progress = progress
        config.run_dir.mkdir(parents=True, exist_ok=True)
        self.resume_log = ResumeLog(config.run_dir)
        self.timings: dict[str, float] = {}
        if config.resume:
            self.point, self.server_state = self.resume_log.read()
            set_aside_interrupted(config.run_dir / ROUNDS_FILE, self.point)
            self.checkpoints = CheckpointRegistry.reopen(config.run_dir, self._finished)
        else:
            run_id = config.run_dir.resolve().name + "-" + uuid.uuid4().hex[:8]
            self.point = ResumePoint(run_id, datetime.now(UTC).isoformat(timespec="seconds"))
            self.server_state = ServerState()
            self.checkpoints = CheckpointRegistry(config.run_dir)
        self.run_id = self.point.run_id
        self.task = task_of(config.model.architecture)
        self.rounds_log = JsonLines(config.run_dir / ROUNDS_FILE, keep=config.resume)

    def _finished(self, checkpoint: Checkpoint) -> bool:
        """Whether ``checkpoint`` was made by a stage that finished before the resume point."""
        if checkpoint.name.startswith(LOCAL_MODEL_PREFIX):
            return checkpoint.name in (self.point.local_models or {})
        return checkpoint.round is None or checkpoint.round <= self.point.completed_round

    def run(self, flower_grid: Grid) -> None:
        """Run every stage on ``flower_grid``; only one job at a time writes the run
        directory (an interrupted job's process may linger a few seconds)."""
        with run_directory_lock(self.config.run_dir, self.config.timeout_s):
            self._run(flower_grid)

    def _run(self, flower_grid: Grid) -> None:
        config = self.config
        grid = AuditedGrid(
            flower_grid,
            JsonLines(config.run_dir / WIRE_FILE, keep=config.resume),
            signer=load_signing_key(config.signing_key) if config.signing_key else None,
            audit=AuditLog(config.audit_log or config.run_dir / AUDIT_FILE),
            run_id=self.run_id,
        )
        if config.resume:
            self._resumed(grid)
        else:
            grid.audit(AuditEvent.RUN_STARTED, strategy=config.strategy.name, rounds=config.rounds)
            self.point = self.resume_log.save(self.point)

        with self._stage("discover", grid):
            sites = discover_sites(grid, config.expected_sites, config.timeout_s)
            grid.site_of.update({s.node_id: s.site_id for s in sites})
        for site in sites:
            entries, head = site.audit_head or (None, None)
            grid.audit(
                AuditEvent.SITE_JOINED,
                site=site.site_id,
                node=site.node_id,
                site_audit_entries=entries,
                site_audit_head=head,
            )
        self.progress(
            f"{len(sites)} sites: "
            + ", ".join(f"{s.site_id} ({s.n_train} train / {s.n_test} test)" for s in sites)
        )
        model = build_model(config.model, seed=config.seed)
        if config.frozen_model is None:
            final_name, models, local_models = self._train(grid, sites, model)
        else:
            final_name, frozen = self._register_frozen(config.frozen_model)
            models, local_models = {GLOBAL_MODEL: ArrayRecord(frozen)}, {}
        for name, path in config.reference_models:
            self.checkpoints.add(name, path, None)
            models[name] = self._arrays_of(name)
        with self._stage("cross-site evaluation", grid):
            self._evaluate_everywhere(grid, sites, models)
        if config.check_drift:
            with self._stage("drift", grid):
                self._check_drift(grid, sites, models[GLOBAL_MODEL])

        record = self._run_record(sites, model, final_name, local_models)
        (config.run_dir / RUN_RECORD_FILE).write_text(json.dumps(record, indent=2))
        with self._stage("evidence", grid):
            evidence_path = write_evidence(config.run_dir)
        grid.round = None
        grid.audit(
            AuditEvent.RUN_FINISHED,
            final_model=final_name,
            sha256=self.checkpoints.entries[final_name].sha256,
            evidence_sha256=sha256_of(evidence_path),
        )
        (config.run_dir / "timings.json").write_text(json.dumps(self.timings, indent=2))
        self.progress(f"evidence written to {evidence_path}")

    def _train(
        self, grid: AuditedGrid, sites: list[SiteProfile], model: torch.nn.Module
    ) -> tuple[str, dict[str, ArrayRecord], dict[str, str]]:
        """Local-only baselines and the federated rounds: the final global checkpoint's
        name, the models to evaluate (global and local-only) and the local-only checkpoints."""
        config = self.config
        training = self._training_sites(sites)
        grid.hidden_nodes = {s.node_id for s in sites if s not in training}
        initial = ArrayRecord(model.state_dict())
        self.checkpoints.save("global-round-000", model.state_dict(), 0)

        local_models = self.point.local_models
        if local_models is None:
            local_models = {}
            if config.local_baselines and not config.trains_local_baselines:
                self.progress(
                    "local-only baselines: none under central DP (they would carry no noise)"
                )
            elif config.trains_local_baselines:
                with self._stage("local-only baselines", grid):
                    local_models = self._train_local_models(grid, training, initial)
            self.point = self.resume_log.save(replace(self.point, local_models=local_models))

        done = self.point.completed_round
        with self._stage("federated rounds", grid):
            strategy = RecordingStrategy(
                make_strategy(config.strategy, config.privacy, config.rounds, len(training)),
                grid.site_of,
                self.rounds_log,
                self.checkpoints,
                self.progress,
                config.rounds,
                first_round=done + 1,
                round_finished=lambda r: self._round_finished(r, strategy),
            )
            if config.resume:
                strategy.restore(self.server_state)
            if done < config.rounds:
                strategy.start(
                    grid=grid,
                    initial_arrays=self._arrays_of(f"global-round-{done:03d}") if done else initial,
                    num_rounds=config.rounds - done,
                    timeout=config.round_timeout_s or config.timeout_s,
                    train_config=ConfigRecord(self._task_config()),
                    evaluate_config=ConfigRecord(self._task_config()),
                )
        grid.hidden_nodes = set()
        final_name = self._final_checkpoint()
        models = {GLOBAL_MODEL: self._arrays_of(final_name)}
        models |= {name: self._arrays_of(ckpt) for name, ckpt in local_models.items()}
        return final_name, models, local_models

    def _round_finished(self, server_round: int, strategy: RecordingStrategy) -> None:
        """Record round ``server_round`` as the point to resume from."""
        self.point = self.resume_log.save(
            replace(self.point, completed_round=server_round), strategy.server_state()
        )

    def _resumed(self, grid: AuditedGrid) -> None:
        """Record that this Flower run continues the job after its last finished round."""
        done = self.point.completed_round
        resumption = Resumption(
            done, int(grid.run.run_id), datetime.now(UTC).isoformat(timespec="seconds")
        )
        self.point = self.resume_log.save(
            replace(self.point, resumptions=(*self.point.resumptions, resumption)),
            self.server_state,
        )
        grid.audit(
            AuditEvent.RUN_RESUMED,
            after_round=done,
            rounds=self.config.rounds,
            flower_run=resumption.flower_run,
            server_state_sha256=self.point.server_state_sha256 or None,
        )
        self.progress(f"resuming after round {done} of {self.config.rounds}")

    def _register_frozen(self, path: Path) -> tuple[str, dict[str, torch.Tensor]]:
        """Copy the file of the frozen model under evaluation into the run, byte for byte
        (the evidence names it and its SHA-256, that of the original), after checking it
        fits the architecture; returns its checkpoint name and its state dict."""
        state = load_frozen_model(path, self.config.model)
        copy = self.checkpoints.folder / f"{FROZEN_CHECKPOINT}{path.suffix or '.pt'}"
        shutil.copyfile(path, copy)
        self.progress(f"evaluation only: {path.name}, no training")
        return self.checkpoints.add(FROZEN_CHECKPOINT, copy, None).name, state

    def _training_sites(self, sites: list[SiteProfile]) -> list[SiteProfile]:
        """The sites that train: all but the held-out ones, which must be among ``sites``."""
        known = {s.site_id for s in sites}
        unknown = sorted(set(self.config.holdout_sites) - known)
        if unknown:
            raise FederationError(
                f"held-out site(s) {', '.join(unknown)} not in the federation "
                f"({', '.join(sorted(known))})"
            )
        training = [s for s in sites if s.site_id not in self.config.holdout_sites]
        if self.config.holdout_sites:
            self.progress(
                f"held out for external validation (tested only): "
                f"{', '.join(sorted(self.config.holdout_sites))}"
            )
        return training

    def _task_config(self) -> dict[str, Any]:
        config = self.config
        return {
            **to_config(config.training),
            **to_config(config.model, MODEL_CONFIG_PREFIX),
            **to_config(config.privacy, PRIVACY_PREFIX),
            SEED_KEY: config.seed,
            RUN_ID_KEY: self.run_id,
            PLANNED_EPOCHS_KEY: config.planned_site_epochs,
        }

    def _final_checkpoint(self) -> str:
        """The last round's global model; `FederationError` with the sites' reasons if no
        round produced one (e.g. every site refused on privacy grounds)."""
        for server_round in range(self.config.rounds, 0, -1):
            name = f"global-round-{server_round:03d}"
            if name in self.checkpoints.entries:
                if server_round < self.config.rounds:
                    self.progress(f"the last global model is round {server_round}'s")
                return name
        reasons = sorted(
            {
                f"{e['site']}: {e.get('refused') or e.get('error')}"
                for e in self.rounds_log.read()
                if e.get("phase") == "train" and ("refused" in e or "error" in e)
            }
        )
        raise FederationError(
            "no round produced a global model"
            + (f"; {'; '.join(reasons)}" if reasons else ": see rounds.jsonl")
        )

    def _train_local_models(
        self, grid: AuditedGrid, sites: list[SiteProfile], initial: ArrayRecord
    ) -> dict[str, str]:
        """Each site trains the initial model alone for as many epochs as the federation
        trains in all its rounds. Returns model name -> checkpoint name."""
        epochs = self.config.rounds * self.config.training.local_epochs
        config = ConfigRecord({**self._task_config(), EPOCHS_KEY: epochs})
        self.progress(f"local-only baselines: every site trains alone for {epochs} epochs")
        content = RecordDict({ARRAYS: initial, CONFIG: config})
        local_models: dict[str, str] = {}
        for site, reply in self._exchange(grid, sites, MSG_TRAIN_LOCAL, content).items():
            entry = {"round": 0, "phase": "local-only", "site": site}
            if reply.has_error():
                outcome = "refused" if reply.error.code == PRIVACY_REFUSED else "error"
                self.rounds_log.append(entry | {outcome: reply.error.reason})
                self.progress(f"  {site}: no local-only model ({outcome}: {reply.error.reason})")
                continue
            self.rounds_log.append(entry | {"metrics": dict(reply.content[METRICS])})
            name = LOCAL_MODEL_PREFIX + site
            self.checkpoints.save(name, reply.content[ARRAYS].to_torch_state_dict(), None)
            local_models[name] = name
        return local_models

    def _evaluate_everywhere(
        self, grid: AuditedGrid, sites: list[SiteProfile], models: dict[str, ArrayRecord]
    ) -> None:
        """Score every model at every site; save each site's histograms (segmentation: its
        Dice and HD95 aggregates) as received."""
        config = ConfigRecord({**self._task_config(), TRAIN_SPLIT_MODELS_KEY: [GLOBAL_MODEL]})
        content = RecordDict({CONFIG: config})
        for name, arrays in models.items():
            content[MODEL_PREFIX + name] = arrays
        self.progress(f"cross-site evaluation: {len(models)} models x {len(sites)} sites")
        folder = self.config.run_dir / AGGREGATES_DIR
        folder.mkdir(exist_ok=True)
        message_type, prefix = (
            (MSG_EVALUATE_SEGMENTATION, SEGMENTATION_PREFIX)
            if self.task == SEGMENTATION
            else (MSG_EVALUATE_STRATA, HISTOGRAMS_PREFIX)
        )
        for site, reply in self._exchange(grid, sites, message_type, content).items():
            aggregate: dict[str, Any] = {"site": site}
            if reply.has_error():
                aggregate["error"] = reply.error.reason
                self.progress(f"  {site}: evaluation failed ({reply.error.reason})")
            else:
                aggregate["models"] = {
                    key.removeprefix(prefix): dict(record)
                    for key, record in reply.content.metric_records.items()
                }
                aggregate["suppressed"] = list(reply.content[SUPPRESSED]["strata"])
            (folder / f"{site}.json").write_text(json.dumps(aggregate))

    def _check_drift(self, grid: AuditedGrid, sites: list[SiteProfile], model: ArrayRecord) -> None:
        """Every site's drift report for ``model``, as received, into ``RUN/drift.json``."""
        content = RecordDict(
            {ARRAYS: model, CONFIG: ConfigRecord(to_config(self.config.model, MODEL_CONFIG_PREFIX))}
        )
        reports: dict[str, Any] = {}
        for site, reply in self._exchange(grid, sites, MSG_DRIFT, content).items():
            if reply.has_error():
                reports[site] = {"error": reply.error.reason}
            else:
                reports[site] = dict(reply.content[DRIFT])
        alarms = sorted(site for site, report in reports.items() if report.get("alarm"))
        self.progress(
            "drift: alarm at " + ", ".join(alarms) if alarms else "drift: no alarm at any site"
        )
        (self.config.run_dir / DRIFT_FILE).write_text(json.dumps(reports, indent=2))

    def _exchange(
        self, grid: AuditedGrid, sites: list[SiteProfile], message_type: str, content: RecordDict
    ) -> dict[str, Message]:
        """Send ``content`` to every site; replies by site id (an error reply for a site
        that did not answer in time)."""
        messages = [
            Message(content, dst_node_id=s.node_id, message_type=message_type) for s in sites
        ]
        replies = {
            grid.site_of[r.metadata.src_node_id]: r
            for r in grid.send_and_receive(messages, timeout=self.config.timeout_s)
        }
        for message in messages:
            site = grid.site_of[message.metadata.dst_node_id]
            if site not in replies:
                replies[site] = no_reply(message)
        return dict(sorted(replies.items()))

    def _arrays_of(self, checkpoint: str) -> ArrayRecord:
        return ArrayRecord(self.checkpoints.load(checkpoint))

    def _stage(self, name: str, grid: AuditedGrid) -> _Stage:
        grid.stage = name
        return _Stage(name, self.timings)

    def _run_record(
        self,
        sites: list[SiteProfile],
        model: torch.nn.Module,
        final_name: str,
        local_models: dict[str, str],
    ) -> dict[str, Any]:
        config = self.config
        return {
            "run": {
                "id": self.run_id,
                "created": self.point.created,
                "resumptions": [asdict(r) for r in self.point.resumptions],
                "code_version": code_version(),
                "strategy": (
                    asdict(config.strategy)
                    if config.frozen_model is None
                    else {"name": "none: evaluation only"}
                ),
                "rounds": config.rounds if config.frozen_model is None else 0,
                "seed": config.seed,
                "task": self.task,
                "training": asdict(config.training),
                "privacy": {**asdict(config.privacy), "guarantee": config.privacy.guarantee},
                "data": asdict(config.provenance),
                "holdout_sites": sorted(config.holdout_sites),
                "evaluation_only": config.frozen_model is not None,
                "operating_threshold": config.operating_threshold,
            },
            "model": {
                "architecture": ARCHITECTURES[config.model.architecture],
                "config": asdict(config.model),
                "parameters": count_parameters(model),
                "final_checkpoint": final_name,
            },
            "sites": [_site_record(s) for s in sites],
            "checkpoints": [asdict(c) for c in self.checkpoints.entries.values()],
            "models": {
                GLOBAL_MODEL: final_name,
                **local_models,
                **{name: name for name, _ in config.reference_models},
            },
            "timings_s": self.timings,
        }


class _Stage:
    """Times a stage of the job into ``timings`` (seconds)."""

    def __init__(self, name: str, timings: dict[str, float]) -> None:
        self.name = name
        self.timings = timings

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = round(time.perf_counter() - self.started, 3)


def _site_record(site: SiteProfile) -> dict[str, Any]:
    return {
        "id": site.site_id,
        "n_train": site.n_train,
        "n_test": site.n_test,
        "n_train_positive": site.n_train_positive,
        "n_test_positive": site.n_test_positive,
        "min_cell_size": site.min_cell_size,
        "scanners": {
            s.name: {
                "manufacturer": s.manufacturer,
                "model": s.model,
                "n_train": s.n_train,
                "n_test": s.n_test,
            }
            for s in site.scanners
        },
        "deidentification": site.deidentification,
        **site.acquisition,
        "subgroups": site.subgroups,
        "intake": site.intake,
    }
