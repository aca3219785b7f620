"""The site's Flower ClientApp: what a hospital's SuperNode runs.

It answers the coordinator's messages (`task.wire`) from the site store:

- ``query.profile``: the site id and case counts per split and scanner group.
- ``train``: one federated round: local training from the global model.
- ``train.local``: the local-only baseline: training from the initial model, alone.
  Both train with DP-SGD when the run asks for DP at the sites; before training, the site
  plans the release against its privacy ceiling and ledger (`site_client.privacy`) and
  refuses (error code `task.privacy.PRIVACY_REFUSED`, with the reason) one it does not allow.
- ``evaluate``: the global model's loss and score histograms on the test split.
- ``evaluate.strata``: score histograms of one or more models per stratum.
- ``evaluate.segmentation``: for segmentation models, Dice and HD95 aggregates of one or
  more models per stratum (`site_client.segmentation`).
- ``query.drift``: how far the site's new (received, unlabelled) cases have drifted from
  its labelled ones, for the model sent (`site_client.drift`); the full report stays at
  the site (``SITE/drift-reports/``), its trail records the check.

Every reply passes the site's egress guard (`site_client.egress`). A failure becomes an
error reply with a one-line reason; the full traceback stays in the site's log. Evaluation
never touches the privacy ledger: it releases no model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from site_client.dataset import SiteData, load_split, load_task_split
from site_client.drift import check_drift, keep_report
from site_client.egress import EgressGuard
from site_client.evaluation import class_histograms, stratified_histograms
from site_client.ledger import PrivacyLedger
from site_client.privacy import PlannedRelease, PrivacyRefused, ReleaseRequest, plan_release
from site_client.profile import site_profile
from site_client.releases import ReleaseCache, ReleaseKey
from site_client.segmentation import case_metrics, stratified_aggregates
from site_client.store import SiteStore
from site_client.training import mean_loss, predict_logits, segmentation_loss, train_model
from task.architectures import CLASSIFICATION, check_dp_sgd, check_task
from task.audit import MAX_DETAIL_CHARS, AuditEntry, AuditEvent, AuditLog
from task.config_record import from_config
from task.model import ModelConfig, build_model
from task.privacy import (
    PLANNED_EPOCHS_KEY,
    PRIVACY_PREFIX,
    PRIVACY_REFUSED,
    RUN_ID_KEY,
    PrivacyConfig,
)
from task.signing import (
    MODEL_REJECTED,
    SIGNATURES,
    ModelSignatureError,
    SigningKeyError,
    load_verify_key,
    model_sha256,
    verify_models,
)
from task.training import TrainingConfig, derive_seed
from task.wire import (
    ARRAYS,
    CONFIG,
    DRIFT,
    EPOCHS_KEY,
    HISTOGRAMS_PREFIX,
    METRICS,
    MODEL_CONFIG_PREFIX,
    MODEL_PREFIX,
    NUM_EXAMPLES,
    PROFILE,
    SEED_KEY,
    SEGMENTATION_PREFIX,
    SUPPRESSED,
    TRAIN_SPLIT_MODELS_KEY,
)
from validation.segmentation import SegmentationAggregate

LOG = logging.getLogger(__name__)
#: Node config key naming the site directory of a SuperNode (deployment).
SITE_DIR_KEY = "site-dir"
#: Error code of a reply the site could not produce.
SITE_ERROR = 500


class SiteConfigError(RuntimeError):
    """The ClientApp cannot tell which site store it serves."""


@dataclass(frozen=True)
class SiteLocator:
    """Finds a ClientApp's site store.

    A SuperNode names its store in its node config (``site-dir``). In a simulation the
    n-th virtual SuperNode (node config ``partition-id``) serves ``site_dirs[n]``.
    """

    site_dirs: tuple[Path, ...] = ()

    def store(self, context: Context) -> SiteStore:
        node_config = context.node_config
        if SITE_DIR_KEY in node_config:
            return SiteStore.open(Path(str(node_config[SITE_DIR_KEY])))
        if "partition-id" in node_config and self.site_dirs:
            index = int(node_config["partition-id"])
            if not 0 <= index < len(self.site_dirs):
                raise SiteConfigError(f"no site store for partition {index}")
            return SiteStore.open(self.site_dirs[index])
        raise SiteConfigError(f"node config has no {SITE_DIR_KEY!r}: which site store to serve?")


def build_client_app(site_dirs: Sequence[Path] = ()) -> ClientApp:
    """The site ClientApp; ``site_dirs`` maps simulated SuperNodes to site stores."""
    locator = SiteLocator(tuple(Path(d).resolve() for d in site_dirs))
    app = ClientApp(mods=[EgressGuard(lambda ctx: locator.store(ctx).policy.min_cell_size)])

    def handler(work: Callable[[SiteStore, RecordDict], RecordDict]) -> Callable:
        def handle(msg: Message, context: Context) -> Message:
            trail: SiteAudit | None = None
            try:
                store = locator.store(context)
                trail = SiteAudit(store, msg)
                trail.received(_checked_models(store, msg))
                content = work(store, msg.content)
            except ModelSignatureError as exc:
                LOG.error("site refused a model in %s: %s", msg.metadata.message_type, exc)
                if trail is not None:
                    trail.refused(AuditEvent.MODEL_REJECTED, str(exc))
                return Message(Error(MODEL_REJECTED, f"model refused: {exc}"), reply_to=msg)
            except PrivacyRefused as exc:
                LOG.warning("site refused %s: %s", msg.metadata.message_type, exc)
                if trail is not None:
                    trail.refused(AuditEvent.REFUSED, str(exc))
                return Message(Error(PRIVACY_REFUSED, str(exc)), reply_to=msg)
            except Exception as exc:  # the coordinator gets one line; the site log the rest
                LOG.exception("site failed to answer %s", msg.metadata.message_type)
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
                return Message(Error(SITE_ERROR, reason), reply_to=msg)
            trail.replied(content)
            return Message(content, reply_to=msg)

        return handle

    app.query("profile")(handler(profile))
    app.train()(handler(lambda store, content: train(store, content, local_only=False)))
    app.train("local")(handler(lambda store, content: train(store, content, local_only=True)))
    app.evaluate()(handler(evaluate_round))
    app.evaluate("strata")(handler(evaluate_strata))
    app.evaluate("segmentation")(handler(evaluate_segmentation))
    app.query("drift")(handler(drift_query))
    return app


def _checked_models(store: SiteStore, msg: Message) -> dict[str, str]:
    """The SHA-256 of each model in ``msg``, by record name; when the site's policy names the
    coordinator's signing key, only after checking each model's signature
    (`ModelSignatureError` otherwise)."""
    key_path = store.policy.coordinator.signing_key_path(store.root)
    if key_path is None:
        return {name: model_sha256(r) for name, r in msg.content.array_records.items()}
    try:
        key = load_verify_key(key_path)
    except SigningKeyError as exc:
        raise ModelSignatureError(f"the site cannot check signatures: {exc}") from exc
    return verify_models(key, str(msg.metadata.run_id), msg.content)


class SiteAudit:
    """The site's audit trail (`task.audit`, ``SITE/audit.jsonl``) for one message: the
    models received and sent with their SHA-256, the epsilon spent, refusals."""

    def __init__(self, store: SiteStore, msg: Message) -> None:
        self.log = AuditLog.in_folder(store.root)
        self.site = store.site_id
        self.msg = msg
        config = msg.content.get(CONFIG)
        round_ = config.get("server-round") if isinstance(config, ConfigRecord) else None
        self.round = int(round_) if isinstance(round_, int) else None  # type: ignore[arg-type]

    def _record(self, event: AuditEvent, **details: str | int | float | bool | None) -> None:
        details["message"] = self.msg.metadata.message_type
        self.log.record(
            AuditEntry(self.site, event, str(self.msg.metadata.run_id), self.round, details)
        )

    def received(self, models: dict[str, str]) -> None:
        signed = self.msg.content.get(SIGNATURES) is not None
        for name, sha256 in models.items():
            self._record(AuditEvent.MODEL_RECEIVED, record=name, sha256=sha256, signed=signed)

    def replied(self, content: RecordDict) -> None:
        for name, arrays in content.array_records.items():
            self._record(AuditEvent.MODEL_SENT, record=name, sha256=model_sha256(arrays))
        metrics = content.get(METRICS)
        if isinstance(metrics, MetricRecord) and "dp-epsilon" in metrics:
            self._record(
                AuditEvent.EPSILON_SPENT,
                epsilon_run=float(metrics["dp-epsilon"]),  # type: ignore[arg-type]
                epsilon_total=float(metrics.get("dp-epsilon-total", math.inf)),  # type: ignore[arg-type]
                delta=float(metrics["dp-delta"]),  # type: ignore[arg-type]
            )

    def refused(self, event: AuditEvent, reason: str) -> None:
        self._record(event, reason=reason[:MAX_DETAIL_CHARS])


def profile(store: SiteStore, _content: RecordDict) -> RecordDict:
    """The site's profile (`site_client.profile.site_profile`): counts, no case data."""
    return RecordDict({PROFILE: site_profile(store)})


def train(store: SiteStore, content: RecordDict, local_only: bool) -> RecordDict:
    """Train the received model on the training split; reply with its weights and metrics.

    A federated round trains ``local-epochs`` epochs; the local-only baseline trains the
    ``epochs`` its message asks for. The release is planned against the site's privacy
    policy and ledger first (`PrivacyRefused` if the site does not allow it) and recorded
    in the ledger before the reply leaves; DP-SGD asked of a model it cannot train is
    refused with the reason (`DPSGDUnsupported`), spending nothing. A request the site has
    answered already (a resumed coordinator asking again for the round it lost) gets the
    same reply again, with no training and no new spend (`site_client.releases`).
    """
    config = content[CONFIG]
    model_config = from_config(ModelConfig, config, MODEL_CONFIG_PREFIX)
    training = from_config(TrainingConfig, config)
    server_round = int(config.get("server-round", 0))
    epochs = int(config[EPOCHS_KEY]) if local_only else training.local_epochs
    phase = "local-only" if local_only else "federated"
    releases = ReleaseCache(store.root)
    key = ReleaseKey(
        str(config[RUN_ID_KEY]), server_round, phase, epochs, model_sha256(content[ARRAYS])
    )
    released = releases.find(key)
    if released is not None:
        LOG.info("round %s (%s) was released already: sending the same reply", server_round, phase)
        return RecordDict({ARRAYS: released[0], METRICS: released[1]})
    model = _received_model(content[ARRAYS], model_config)
    data = load_task_split(store, "train", model_config)
    run_seed = int(config[SEED_KEY])
    ledger = PrivacyLedger(store.root)
    planned = plan_release(
        store.policy.privacy,
        ledger.entries(),
        from_config(PrivacyConfig, config, PRIVACY_PREFIX),
        ReleaseRequest(
            run_id=key.run_id,
            round=server_round,
            phase=phase,
            seed=run_seed,
            epochs=epochs,
            planned_epochs=int(config[PLANNED_EPOCHS_KEY]),
            n_train=len(data),
            batch_size=training.batch_size,
        ),
        store.secret,
    )
    if planned.dpsgd is not None:
        check_dp_sgd(model_config.architecture)
    started = time.perf_counter()
    seed = derive_seed(run_seed, server_round, store.site_id)
    stats = train_model(model, data, training, seed, epochs, planned.dpsgd)
    if stats.steps != planned.entry.steps:
        raise RuntimeError(f"trained {stats.steps} steps, planned {planned.entry.steps}")
    ledger.append(planned.entry)
    metrics = MetricRecord(
        {
            NUM_EXAMPLES: stats.num_examples,
            "train-loss": stats.loss,
            "steps": stats.steps,
            "train-seconds": time.perf_counter() - started,
            **privacy_metrics(planned),
        }
    )
    releases.keep(key, model.state_dict(), metrics)
    return RecordDict({ARRAYS: ArrayRecord(model.state_dict()), METRICS: metrics})


def privacy_metrics(planned: PlannedRelease) -> dict[str, float]:
    """The privacy record of a release as it goes on the wire (`task.wire.DP_METRIC_KEYS`):
    none without DP-SGD; the total over the site's earlier runs only while it is finite."""
    if planned.dpsgd is None:
        return {}
    entry = planned.entry
    metrics = {
        "dp-epsilon": entry.epsilon_run,
        "dp-delta": entry.delta,
        "dp-noise-multiplier": entry.noise_multiplier,
        "dp-sample-rate": entry.sample_rate,
        "dp-max-grad-norm": entry.max_grad_norm,
    }
    if math.isfinite(entry.epsilon_total):
        metrics["dp-epsilon-total"] = entry.epsilon_total
    return metrics


def evaluate_round(store: SiteStore, content: RecordDict) -> RecordDict:
    """Loss and whole-split score histograms (a segmentation model: its Dice and HD95
    aggregate) of the received model on the test split."""
    started = time.perf_counter()
    model_config = from_config(ModelConfig, content[CONFIG], MODEL_CONFIG_PREFIX)
    model = _received_model(content[ARRAYS], model_config)
    data = load_task_split(store, "test", model_config)
    logits = predict_logits(model, data)
    metrics = MetricRecord(
        {
            NUM_EXAMPLES: len(data),
            "test-loss": mean_loss(logits, data.labels)
            if data.masks is None
            else segmentation_loss(logits, data.masks),
            "evaluate-seconds": time.perf_counter() - started,
        }
    )
    if len(data) >= store.policy.min_cell_size:
        for key, value in _whole_split_aggregate(logits, data).items():
            metrics[key] = value
    return RecordDict({METRICS: metrics})


def _whole_split_aggregate(
    logits: np.ndarray, data: SiteData
) -> dict[str, int | float | list[int]]:
    """What MSG_EVALUATE reports of a whole split: the score histograms per class, or the
    segmentation aggregate (`task.wire.SEGMENTATION_FIELDS`)."""
    if data.masks is not None:
        return SegmentationAggregate.of(case_metrics(logits, data)).to_fields()
    negatives, positives = class_histograms(logits, data.labels.numpy())
    return {"hist-negative": negatives, "hist-positive": positives}


def evaluate_strata(store: SiteStore, content: RecordDict) -> RecordDict:
    """Score histograms per stratum of every received model on the test split, and on the
    training split (whole site only) for the models the message names."""
    config = content[CONFIG]
    model_config = from_config(ModelConfig, config, MODEL_CONFIG_PREFIX)
    train_split_models = set(config.get(TRAIN_SPLIT_MODELS_KEY, []))
    min_cell = store.policy.min_cell_size
    splits = {s: load_split(store, s, model_config.image_size) for s in ("train", "test")}
    reply = RecordDict()
    suppressed: set[str] = set()
    for key, arrays in content.array_records.items():
        name = key.removeprefix(MODEL_PREFIX)
        model = _received_model(arrays, model_config)
        histograms: dict[str, list[int]] = {}
        for split, data in splits.items():
            if split == "train" and name not in train_split_models:
                continue
            result = stratified_histograms(
                predict_logits(model, data),
                data,
                split,
                min_cell,
                by_scanner=split == "test",
                evaluation=store.policy.evaluation if split == "test" else None,
            )
            histograms.update(result.histograms)
            suppressed.update(result.suppressed)
        reply[HISTOGRAMS_PREFIX + name] = MetricRecord(histograms)
    reply[SUPPRESSED] = ConfigRecord({"strata": sorted(suppressed)})
    return reply


def evaluate_segmentation(store: SiteStore, content: RecordDict) -> RecordDict:
    """Dice and HD95 aggregates per stratum of every received segmentation model on the
    test split (`site_client.segmentation`)."""
    model_config = from_config(ModelConfig, content[CONFIG], MODEL_CONFIG_PREFIX)
    data = load_task_split(store, "test", model_config)
    reply = RecordDict()
    suppressed: set[str] = set()
    for key, arrays in content.array_records.items():
        model = _received_model(arrays, model_config)
        result = stratified_aggregates(
            case_metrics(predict_logits(model, data), data),
            data,
            "test",
            store.policy.min_cell_size,
            store.policy.evaluation,
        )
        reply[SEGMENTATION_PREFIX + key.removeprefix(MODEL_PREFIX)] = MetricRecord(result.fields)
        suppressed.update(result.suppressed)
    reply[SUPPRESSED] = ConfigRecord({"strata": sorted(suppressed)})
    return reply


def drift_query(store: SiteStore, content: RecordDict) -> RecordDict:
    """The site's drift check with the received model (`site_client.drift`): the report is
    kept at the site and audited; statistics and counts of at least the minimum cell size
    leave it."""
    model_config = from_config(ModelConfig, content[CONFIG], MODEL_CONFIG_PREFIX)
    check_task(model_config.architecture, CLASSIFICATION)  # drift compares image scores
    model = _received_model(content[ARRAYS], model_config)
    report = check_drift(store, model, model_config.image_size)
    keep_report(store, report, model_sha256(content[ARRAYS]))
    return RecordDict({DRIFT: ConfigRecord(report.to_config(store.policy.min_cell_size))})


def _received_model(arrays: ArrayRecord, config: ModelConfig) -> nn.Module:
    model = build_model(config)
    model.load_state_dict(arrays.to_torch_state_dict())
    return model
