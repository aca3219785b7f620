"""The review queue: the cases a model is unsure of, with saliency heatmaps, kept at the site.

A case enters the queue when its score (the model's probability of the positive finding,
scored as delivery scores it: `site_client.delivery.results`) is closer to the operating
threshold than the uncertainty band (``[delivery] uncertainty_band`` in site.toml, the band
within which a delivered result is equivocal, "review advised"). ``SITE/review/<queue id>/``
holds::

    queue.json            the index: site, when built, the model (architecture, SHA-256,
                          checkpoint), the threshold and its source, the band, the saliency
                          method, how many cases were scored, and per queued case its id,
                          where it is (train, test, received), score, label when built (none
                          for a received case) and its two files
    <case>.png            the stored image windowed to its 1st-99th percentiles, its own size
    <case>-saliency.png   the same with the heatmap blended in (`saliency`)

Both PNGs carry the case id, score, threshold, band, model SHA-256 and saliency method as
PNG text chunks, nothing burnt into the pixels. The queue id is the first 16 hex digits of
the checkpoint's SHA-256: building again for the same model replaces its queue (written
beside it and swapped in when complete, so a failure leaves the old one); other models'
queues stay. The site's audit trail records each build (model SHA-256, threshold, band,
counts).

**Not encrypted, but private.** Everything under ``store/`` is encrypted at rest; the queue
is not: it is for a radiologist's viewer, which opens PNGs, and a queue that has to be
decrypted first would be exported in plain anyway, where medfed no longer controls it. What
it holds is already de-identified (pixels of the de-identified store, 8-bit, no header;
burned-in text was quarantined or masked at intake; cases are known by their keyed
pseudonyms, which only the site can re-link) and only the band's cases. So ``SITE/review``
and each queue are 0700 and every file 0600 (the site's operator only), kept inside the site
directory, which sits on the hospital's storage, and never in a run directory. Delete a
queue once reviewed if the site's rules ask for it: it is derived data, rebuilt on demand.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from site_client.delivery.dicom import display_pixels
from site_client.delivery.results import (
    FrozenModel,
    OperatingPoint,
    ScoringRequest,
    prepare_scoring,
    score_cases,
)
from site_client.review import REVIEW_DIR, ReviewError
from site_client.review.saliency import SaliencyMapper, blend
from site_client.staging import staged_folder
from site_client.store import SiteStore
from task.architectures import CLASSIFICATION, check_task
from task.audit import AuditEntry, AuditEvent, AuditLog
from task.transforms import preprocess_all

INDEX_FILE = "queue.json"
#: Hex digits of the checkpoint's SHA-256 that name its queue.
QUEUE_ID_DIGITS = 16
PRIVATE_FOLDER = 0o700
PRIVATE_FILE = 0o600


@dataclass(frozen=True)
class QueuedCase:
    """A case in the queue: id, where it is (train, test, received), score, and its label
    when the queue was built (None: a received case waiting for one)."""

    case_id: str
    group: str
    score: float
    label: int | None

    @property
    def image(self) -> str:
        return f"{self.case_id}.png"

    @property
    def overlay(self) -> str:
        return f"{self.case_id}-saliency.png"


@dataclass(frozen=True)
class ReviewQueue:
    """A review queue (see the module docstring); ``path`` is its folder."""

    queue_id: str
    path: Path
    site: str
    created: str
    architecture: str
    model_sha256: str
    checkpoint: str
    threshold: float
    threshold_source: str
    uncertainty_band: float
    saliency: str
    selection: str
    scored: int
    cases: tuple[QueuedCase, ...]

    def to_json(self) -> str:
        document = asdict(self)
        del document["path"]
        document["cases"] = [
            {**asdict(case), "image": case.image, "overlay": case.overlay} for case in self.cases
        ]
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def read(cls, folder: Path) -> ReviewQueue:
        """The queue in ``folder``; `ReviewError` naming its index when it is unreadable."""
        path = folder / INDEX_FILE
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            cases = tuple(
                QueuedCase(c["case_id"], c["group"], c["score"], c["label"])
                for c in document.pop("cases")
            )
            return cls(path=folder, cases=cases, **document)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ReviewError(f"{path}: not a review queue index ({exc})") from exc


def build_queue(
    request: ScoringRequest,
    progress: Callable[[int, int], None] | None = None,
) -> ReviewQueue:
    """Score ``request``'s cases (as ``medfed site deliver`` does) and queue those in the
    uncertainty band, with their images and heatmaps (see the module docstring). One-line
    errors (`ReviewError`, `DeliveryError`, `CheckpointError`, `SiteStoreError`) before
    anything is written."""
    store, operating, model, cases = prepare_scoring(request)
    check_task(model.architecture, CLASSIFICATION)  # the queue is of scores near a threshold
    if not cases:
        raise ReviewError(f"site {store.site_id} has no {request.cases} cases to review")
    labels = {r.case_id: r.label for r in store.read_manifest()}
    uncertain = [r for r in score_cases(store, cases, model, operating) if r.equivocal]
    mapper = SaliencyMapper(model.module, model.config.image_size)
    root = _private_folder(store.root / REVIEW_DIR)
    queue_id = model.sha256[:QUEUE_ID_DIGITS]
    with staged_folder(root / queue_id, PRIVATE_FOLDER) as staging:
        queued = []
        for done, result in enumerate(uncertain, start=1):
            case_id = result.case.case_id
            case = QueuedCase(case_id, result.case.group, result.score, labels.get(case_id))
            _write_case(staging, store, case, model, operating, mapper)
            queued.append(case)
            if progress is not None:
                progress(done, len(uncertain))
        queue = ReviewQueue(
            queue_id=queue_id,
            path=root / queue_id,
            site=store.site_id,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            architecture=model.architecture,
            model_sha256=model.sha256,
            checkpoint=str(request.checkpoint.resolve()),
            threshold=operating.threshold,
            threshold_source=operating.source,
            uncertainty_band=operating.band,
            saliency=mapper.method.description,
            selection=request.cases,
            scored=len(cases),
            cases=tuple(queued),
        )
        _write_private(staging / INDEX_FILE, queue.to_json().encode("utf-8"))
    AuditLog.in_folder(store.root).record(
        AuditEntry(
            store.site_id,
            AuditEvent.REVIEW_QUEUE_BUILT,
            details={
                "queue": queue_id,
                "model_sha256": model.sha256,
                "threshold": operating.threshold,
                "uncertainty_band": operating.band,
                "scored": len(cases),
                "queued": len(queued),
                "saliency": mapper.method.name,
            },
        )
    )
    return queue


def list_queues(store: SiteStore) -> list[ReviewQueue]:
    """The site's review queues, by queue id."""
    root = store.root / REVIEW_DIR
    if not root.is_dir():
        return []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [ReviewQueue.read(folder) for folder in folders]


def _private_folder(path: Path) -> Path:
    """``path``, created if need be, readable by its owner only."""
    path.mkdir(mode=PRIVATE_FOLDER, exist_ok=True)
    path.chmod(PRIVATE_FOLDER)
    return path


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to the new file ``path``, readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _write_case(
    folder: Path,
    store: SiteStore,
    case: QueuedCase,
    model: FrozenModel,
    operating: OperatingPoint,
    mapper: SaliencyMapper,
) -> None:
    image = store.load_image(case.case_id)
    gray = display_pixels(image)
    heat = mapper(preprocess_all([image], model.config.image_size))
    info = PngInfo()
    for key, value in (
        ("case_id", case.case_id),
        ("score", f"{case.score:.6f}"),
        ("threshold", f"{operating.threshold:.6f}"),
        ("uncertainty_band", f"{operating.band:.6f}"),
        ("model_sha256", model.sha256),
        ("saliency", mapper.method.description),
        ("Software", "medfed"),
    ):
        info.add_text(key, value)
    for name, pixels in ((case.image, gray), (case.overlay, blend(gray, heat))):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info)
        _write_private(folder / name, buffer.getvalue())
