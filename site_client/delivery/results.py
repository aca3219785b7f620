"""What the model says about each case: its score (the probability of the positive finding),
the decision at the operating threshold, and whether the score is equivocal (within the
site's uncertainty band around the threshold)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import NamedTuple

from scipy.special import expit
from torch import nn

from server.checkpoints import load_frozen_model, sha256_of
from site_client.delivery import DeliveryError
from site_client.received import ReceivedIndex
from site_client.store import Acquisition, SiteStore
from site_client.training import image_logits
from task.model import ARCHITECTURES, ModelConfig, build_model
from task.transforms import preprocess_all

#: Which cases ``medfed site deliver --cases`` takes: a split of the manifest, the received
#: cases that wait for a label, or all of them.
CASE_CHOICES = ("test", "train", "received", "all")
#: Cases scored at a time (bounds the memory a large store needs).
BATCH = 256


@dataclass(frozen=True)
class FrozenModel:
    """The model that delivers: the network, its configuration and the SHA-256 of its
    checkpoint file (which names it in every result)."""

    module: nn.Module
    config: ModelConfig
    sha256: str

    @property
    def architecture(self) -> str:
        return self.config.architecture

    @property
    def name(self) -> str:
        return f"medfed {self.architecture}"

    @property
    def description(self) -> str:
        return ARCHITECTURES[self.architecture]


@dataclass(frozen=True)
class OperatingPoint:
    """The decision rule: positive iff score >= ``threshold`` (as the evidence counts it);
    equivocal iff the score is closer than ``band`` to it. ``source`` says where the
    threshold came from."""

    threshold: float
    band: float
    source: str

    def is_positive(self, score: float) -> bool:
        return score >= self.threshold

    def is_equivocal(self, score: float) -> bool:
        return abs(score - self.threshold) < self.band


@dataclass(frozen=True)
class DeliveryCase:
    """A case to deliver: its pseudonymous id, where it is (``train``, ``test`` or
    ``received``) and its acquisition (modality, original study year)."""

    case_id: str
    group: str
    acquisition: Acquisition


@dataclass(frozen=True)
class CaseResult:
    """The model's result for one case."""

    case: DeliveryCase
    score: float
    positive: bool
    equivocal: bool


@dataclass(frozen=True)
class EvidenceModel:
    """What a run's evidence.json says about its model: the operating threshold, and the
    checkpoint's SHA-256 and architecture."""

    threshold: float
    sha256: str
    architecture: str


def read_evidence(path: Path) -> EvidenceModel:
    """``operating_point.threshold``, ``model.sha256`` and ``model.config.architecture`` of
    the evidence file ``path``; `DeliveryError` naming the file and field otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DeliveryError(f"{path}: no such evidence file") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeliveryError(f"{path}: not a JSON evidence file ({exc})") from exc
    values = []
    for field in ("operating_point.threshold", "model.sha256", "model.config.architecture"):
        value = data
        for key in field.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if value is None or isinstance(value, bool):
            raise DeliveryError(f"{path}: no {field}")
        values.append(value)
    threshold, sha256, architecture = values
    if not isinstance(threshold, int | float) or not 0 < threshold < 1:
        raise DeliveryError(f"{path}: operating_point.threshold must be in (0, 1), got {threshold}")
    if architecture not in ARCHITECTURES:
        raise DeliveryError(
            f"{path}: model.config.architecture {architecture!r} is not a medfed model"
        )
    return EvidenceModel(float(threshold), str(sha256), architecture)


@dataclass(frozen=True)
class ScoringRequest:
    """Which frozen model scores which cases of a site, at which operating point. Exactly
    one of ``threshold`` and ``evidence`` (a run's evidence.json, whose
    ``operating_point.threshold`` is for the checkpoint it names). ``architecture``: default
    the evidence's, else the default model's. ``cases``: one of `CASE_CHOICES`.
    ``uncertainty_band``: default the site policy's."""

    site_dir: Path
    checkpoint: Path
    _: KW_ONLY
    threshold: float | None = None
    evidence: Path | None = None
    architecture: str | None = None
    cases: str = "all"
    uncertainty_band: float | None = None


class Scoring(NamedTuple):
    """A `ScoringRequest` made ready: the site store, the operating point, the model and the
    chosen cases."""

    store: SiteStore
    operating: OperatingPoint
    model: FrozenModel
    cases: list[DeliveryCase]


def prepare_scoring(request: ScoringRequest) -> Scoring:
    """Open ``request``'s site store, fix its operating point (checked against the
    checkpoint), load its model and choose its cases; a one-line `DeliveryError` (or
    `CheckpointError`, `SiteStoreError`) otherwise."""
    store = SiteStore.open(request.site_dir)
    operating, architecture = _operating_point(request, store)
    model = load_model(request.checkpoint, architecture)
    return Scoring(store, operating, model, select_cases(store, request.cases))


def _operating_point(request: ScoringRequest, store: SiteStore) -> tuple[OperatingPoint, str]:
    """The operating point and the model's architecture, checked against the checkpoint."""
    if (request.threshold is None) == (request.evidence is None):
        raise DeliveryError("give exactly one of the threshold and the evidence that fixed it")
    band = request.uncertainty_band
    if band is None:
        band = store.policy.delivery.uncertainty_band
    if not 0 <= band < 0.5:
        raise DeliveryError(f"the uncertainty band must be in [0, 0.5), got {band}")
    if request.threshold is not None:
        if not 0 < request.threshold < 1:
            raise DeliveryError(f"the threshold must be in (0, 1), got {request.threshold}")
        architecture = request.architecture or ModelConfig().architecture
        return OperatingPoint(request.threshold, band, "given"), architecture
    assert request.evidence is not None
    evidence = read_evidence(request.evidence)
    if request.checkpoint.is_file() and sha256_of(request.checkpoint) != evidence.sha256:
        raise DeliveryError(
            f"{request.evidence}: model.sha256 is not the SHA-256 of {request.checkpoint}: its "
            "operating threshold was fixed for another model"
        )
    source = f"operating_point.threshold of {request.evidence}"
    return OperatingPoint(evidence.threshold, band, source), (
        request.architecture or evidence.architecture
    )


def load_model(checkpoint: Path, architecture: str) -> FrozenModel:
    """The frozen model in ``checkpoint``; `CheckpointError` when it is not a checkpoint of
    ``architecture``."""
    config = ModelConfig(architecture=architecture)
    module = build_model(config)
    module.load_state_dict(load_frozen_model(checkpoint, config))
    return FrozenModel(module, config, sha256_of(checkpoint))


def select_cases(store: SiteStore, which: str) -> list[DeliveryCase]:
    """The cases of ``store`` that ``which`` (one of `CASE_CHOICES`) names: manifest cases
    in manifest order, then received cases by id."""
    if which not in CASE_CHOICES:
        raise DeliveryError(f"cases must be one of {', '.join(CASE_CHOICES)}, got {which!r}")
    cases = [
        DeliveryCase(r.case_id, r.split, r.acquisition)
        for r in store.read_manifest()
        if which in (r.split, "all")
    ]
    if which in ("received", "all"):
        received = ReceivedIndex(store).cases()
        cases += [
            DeliveryCase(case_id, "received", received[case_id].acquisition)
            for case_id in sorted(received)
        ]
    return cases


def score_cases(
    store: SiteStore,
    cases: list[DeliveryCase],
    model: FrozenModel,
    operating: OperatingPoint,
) -> Iterator[CaseResult]:
    """Each case's result, in order, scored `BATCH` cases at a time."""
    for start in range(0, len(cases), BATCH):
        chunk = cases[start : start + BATCH]
        images = [store.load_image(c.case_id) for c in chunk]
        scores = expit(image_logits(model.module, preprocess_all(images, model.config.image_size)))
        for case, score in zip(chunk, scores.tolist(), strict=True):
            yield CaseResult(
                case, score, operating.is_positive(score), operating.is_equivocal(score)
            )
