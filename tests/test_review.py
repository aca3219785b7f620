"""Human review at the site (``medfed site review``), on phantom DICOM ingested into a real
site store: the queue holds exactly the cases whose score is within the uncertainty band,
with PNGs of the image's size and heatmaps that show something; saliency by GradCAM or
occlusion per model; a reviewer's labels update the store all-or-nothing, are audited and
are what the next round reads; and none of it crosses the wire."""

from __future__ import annotations

import csv
import json
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MESSAGE_RUN_ID, IngestedFederation
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from PIL import Image
from test_delivery import case_scores, straddling
from torch import nn

from site_client.client_app import SITE_DIR_KEY, build_client_app
from site_client.dataset import load_split
from site_client.delivery.dicom import display_pixels
from site_client.delivery.results import (
    OperatingPoint,
    ScoringRequest,
    load_model,
)
from site_client.received import ReceivedCase, ReceivedIndex
from site_client.review import REVIEW_DIR, ReviewError
from site_client.review import queue as queue_module
from site_client.review.feedback import apply_feedback
from site_client.review.queue import ReviewQueue, build_queue, list_queues
from site_client.review.saliency import GRADCAM, OCCLUSION, OcclusionMap, SaliencyMapper
from site_client.store import SiteStore
from task.architectures import CLASSIFICATION, models_for
from task.audit import AuditEvent, AuditLog
from task.config_record import to_config
from task.model import ModelConfig, build_model
from task.privacy import PLANNED_EPOCHS_KEY, PRIVACY_PREFIX, RUN_ID_KEY, PrivacyConfig
from task.training import TrainingConfig
from task.transforms import preprocess_all
from task.wire import (
    ARRAYS,
    CONFIG,
    MODEL_CONFIG_PREFIX,
    MODEL_PREFIX,
    MSG_DRIFT,
    MSG_EVALUATE,
    MSG_EVALUATE_STRATA,
    MSG_PROFILE,
    MSG_TRAIN,
    SEED_KEY,
)

ARCHITECTURE = "cnn"
RECEIVED = "c00000000000000aa"


@dataclass(frozen=True)
class Reviewed:
    """A site store (a copy) with a received case waiting for a label, a model, every
    case's score, the operating point, and the review queue built for them."""

    site: Path
    checkpoint: Path
    scores: dict[str, float]
    operating: OperatingPoint
    queue: ReviewQueue


@pytest.fixture(scope="module")
def reviewed(
    small_federation: IngestedFederation, tmp_path_factory: pytest.TempPathFactory
) -> Reviewed:
    root = tmp_path_factory.mktemp("review")
    site = Path(shutil.copytree(small_federation.site_dirs[0], root / "site-a"))
    checkpoint = root / "model.pt"
    model_config = ModelConfig(architecture=ARCHITECTURE)
    torch.save(build_model(model_config, seed=5).state_dict(), checkpoint)
    scores = case_scores(site, checkpoint, ARCHITECTURE)
    operating = straddling(scores.values())
    # A received case (waiting for a label) with the image of the case nearest the
    # threshold, so in the band.
    nearest = min(scores, key=lambda c: abs(scores[c] - operating.threshold))
    store = SiteStore.open(site)
    record = next(r for r in store.read_manifest() if r.case_id == nearest)
    store.save_case(RECEIVED, store.load_image(nearest))
    received = ReceivedCase(
        RECEIVED, record.manufacturer, record.model, record.rows, record.columns, False
    )
    ReceivedIndex(store).add(received)
    scores[RECEIVED] = scores[nearest]
    queue = build_queue(
        ScoringRequest(
            site, checkpoint, threshold=operating.threshold, architecture=ARCHITECTURE,
            uncertainty_band=operating.band,
        )
    )  # fmt: skip
    return Reviewed(site, checkpoint, scores, operating, queue)


def site_copy(reviewed: Reviewed, tmp_path: Path) -> Path:
    return Path(shutil.copytree(reviewed.site, tmp_path / "site-a"))


def test_the_queue_holds_exactly_the_cases_within_the_band(reviewed: Reviewed) -> None:
    threshold, band = reviewed.operating.threshold, reviewed.operating.band
    expected = {c for c, s in reviewed.scores.items() if abs(s - threshold) < band}
    queued = {case.case_id: case for case in reviewed.queue.cases}
    assert RECEIVED in expected and 0 < len(expected) < len(reviewed.scores)
    assert set(queued) == expected
    manifest = {r.case_id: r for r in SiteStore.open(reviewed.site).read_manifest()}
    for case_id, case in queued.items():
        assert case.score == pytest.approx(reviewed.scores[case_id])
        if case_id == RECEIVED:
            assert (case.group, case.label) == ("received", None)
        else:
            assert (case.group, case.label) == (manifest[case_id].split, manifest[case_id].label)
    index = json.loads((reviewed.queue.path / "queue.json").read_text())
    assert index["model_sha256"].startswith(reviewed.queue.queue_id)
    assert index["threshold"] == threshold and index["uncertainty_band"] == band
    assert index["scored"] == len(reviewed.scores)
    assert index["saliency"].startswith("GradCAM")
    assert ReviewQueue.read(reviewed.queue.path) == reviewed.queue
    entry = AuditLog.in_folder(reviewed.site).entries()[-1]
    assert entry.event == AuditEvent.REVIEW_QUEUE_BUILT
    assert entry.details["queued"] == len(expected)
    assert entry.details["model_sha256"] == index["model_sha256"]


def test_each_case_has_its_image_and_a_heatmap_overlay_of_its_size(reviewed: Reviewed) -> None:
    store = SiteStore.open(reviewed.site)
    folder = reviewed.queue.path
    assert stat.S_IMODE((reviewed.site / REVIEW_DIR).stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    names = {p.name for p in folder.iterdir()}
    assert names == {"queue.json"} | {
        name for case in reviewed.queue.cases for name in (case.image, case.overlay)
    }
    model = load_model(reviewed.checkpoint, ARCHITECTURE)
    mapper = SaliencyMapper(model.module, model.config.image_size)
    shown = 0
    for case in reviewed.queue.cases:
        stored = store.load_image(case.case_id)
        plain, overlay = Image.open(folder / case.image), Image.open(folder / case.overlay)
        assert plain.mode == "L" and overlay.mode == "RGB"
        assert plain.size == overlay.size == (stored.shape[1], stored.shape[0])
        assert np.array_equal(np.asarray(plain), display_pixels(stored))
        gray = np.repeat(np.asarray(plain)[..., None], 3, axis=-1).astype(int)
        if np.abs(np.asarray(overlay).astype(int) - gray).max() > 50:
            shown += 1
        else:  # GradCAM found no region that raises the score: nothing to show
            assert mapper(preprocess_all([stored], model.config.image_size)).max() == 0
        assert overlay.text["case_id"] == case.case_id
        assert float(overlay.text["score"]) == pytest.approx(case.score, abs=1e-6)
        assert float(overlay.text["threshold"]) == pytest.approx(reviewed.operating.threshold)
        for path in (folder / case.image, folder / case.overlay):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert shown >= len(reviewed.queue.cases) / 2


EXPECTED_METHODS = {
    "blob": (GRADCAM, "mix"),
    "cnn": (GRADCAM, "features"),
    "resnet": (GRADCAM, "layer4"),
    "vit": (OCCLUSION, None),
}


@pytest.mark.parametrize("architecture", models_for(CLASSIFICATION))
def test_every_classifier_gets_a_heatmap_by_gradcam_or_occlusion(
    architecture: str, small_federation: IngestedFederation
) -> None:
    store = SiteStore.open(small_federation.site_dirs[0])
    config = ModelConfig(architecture=architecture)
    mapper = SaliencyMapper(build_model(config, seed=0), config.image_size)
    name, layer = mapper.method.name, mapper.method.layer
    assert (name, layer) == EXPECTED_METHODS.get(architecture, (name, layer))
    assert name == OCCLUSION or layer is not None
    images = [store.load_image(r.case_id) for r in store.read_manifest()[:4]]
    peaks = []
    for image in images:
        heat = mapper(preprocess_all([image], config.image_size))
        assert heat.shape == (config.image_size, config.image_size) and heat.min() >= 0
        peaks.append(heat.max())
    # Scaled to its maximum; all zero where GradCAM finds nothing raising the score.
    assert all(p == 0 or p == pytest.approx(1.0) for p in peaks) and max(peaks) > 0


class _Convolutional(nn.Module):
    """The strongest response of a 3x3 mean filter: a model whose evidence is a bright spot."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        nn.init.constant_(self.conv.weight, 1 / 9)
        nn.init.zeros_(self.conv.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images).amax(dim=(2, 3))


class _RegionReader(nn.Module):
    """A score that reads one region of the image only (rows 40-47, columns 8-15)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 20 * images[:, :, 40:48, 8:16].mean(dim=(2, 3)) - 5


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")  # MONAI's
def test_gradcam_and_occlusion_point_at_what_drives_the_score() -> None:
    image = torch.zeros(1, 1, 64, 64)
    image[:, :, 40:48, 8:16] = 1.0
    cam = SaliencyMapper(_Convolutional(), 64)
    assert cam.method.name == GRADCAM and cam.method.layer == "conv"
    heat = cam(image)
    row, column = np.unravel_index(heat.argmax(), heat.shape)
    assert 40 <= row < 48 and 8 <= column < 16
    assert heat[:16, 40:].max() == 0
    occlusion = OcclusionMap(_RegionReader(), 64)(image)[0, 0].numpy()
    row, column = np.unravel_index(occlusion.argmax(), occlusion.shape)
    assert 36 <= row < 52 and 4 <= column < 20
    assert occlusion.max() == pytest.approx(1.0) and occlusion[:16, 40:].max() < 1e-3


def test_a_failed_build_leaves_the_previous_queue_as_it_was(
    reviewed: Reviewed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = site_copy(reviewed, tmp_path)
    before = tree(site / REVIEW_DIR)
    calls = []

    def failing(gray: np.ndarray, heat: np.ndarray) -> np.ndarray:
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full (simulated)")
        return np.repeat(gray[..., None], 3, axis=-1)

    monkeypatch.setattr(queue_module, "blend", failing)
    request = ScoringRequest(
        site, reviewed.checkpoint, threshold=reviewed.operating.threshold,
        architecture=ARCHITECTURE, uncertainty_band=reviewed.operating.band,
    )  # fmt: skip
    with pytest.raises(OSError, match="simulated"):
        build_queue(request)
    assert tree(site / REVIEW_DIR) == before


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
    }


def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """``medfed site review ARGS`` in this process: (exit status, stdout, stderr)."""
    from medfed.cli import main

    try:
        status = main(["site", "review", *map(str, args)])
    except SystemExit as exc:  # argparse's usage errors
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def test_the_cli_builds_and_lists_queues_and_says_why_it_cannot(
    reviewed: Reviewed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = site_copy(reviewed, tmp_path)
    code, out, err = run_cli(capsys, "list", "--site-dir", site)
    assert code == 0, err
    assert f"site {SiteStore.open(site).site_id}: 1 review queue(s)" in out
    assert f"{len(reviewed.queue.cases)} of {reviewed.queue.scored} cases queued" in out
    code, out, _ = run_cli(capsys, "list", "--site-dir", site, "--queue", reviewed.queue.queue_id)
    assert code == 0 and all(case.case_id in out for case in reviewed.queue.cases)
    # Built again for the same model, with no band: its queue is replaced, empty.
    base = ("build", "--site-dir", site, "--model", reviewed.checkpoint)
    code, out, err = run_cli(
        capsys, *base, "--architecture", ARCHITECTURE, "--threshold", "0.5",
        "--uncertainty-band", "0", "--cases", "test",
    )  # fmt: skip
    assert code == 0, err
    n_test = sum(r.split == "test" for r in SiteStore.open(site).read_manifest())
    assert f"0 of {n_test} cases entered the review queue" in out
    code, out, err = run_cli(capsys, "list", "--site-dir", site)
    assert "1 review queue(s)" in out and f"0 of {n_test} cases queued" in out
    assert list((site / REVIEW_DIR / reviewed.queue.queue_id).iterdir()) == [
        site / REVIEW_DIR / reviewed.queue.queue_id / "queue.json"
    ]
    unet = tmp_path / "unet.pt"
    torch.save(build_model(ModelConfig(architecture="unet")).state_dict(), unet)
    for args, status, expected in (
        (base, 2, "one of the arguments --threshold --evidence is required"),
        ((*base, "--threshold", "0.5"), 1, "not a checkpoint of the blob model"),
        (
            (*base[:-2], "--model", unet, "--architecture", "unet", "--threshold", "0.5"),
            2,
            "invalid choice: 'unet'",  # --architecture takes classifiers only
        ),
        (("list", "--site-dir", site, "--queue", "nope"), 1, "has no review queue nope"),
    ):
        code, _, err = run_cli(capsys, *args)
        assert code == status and expected in err, (args, err)
        assert status == 2 or len(err.strip().splitlines()) == 1, err


def write_feedback(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_feedback_corrects_labels_labels_received_cases_and_audits_each(
    reviewed: Reviewed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = site_copy(reviewed, tmp_path)
    store = SiteStore.open(site)
    labels = {r.case_id: r.label for r in store.read_manifest()}
    queued = [c.case_id for c in reviewed.queue.cases if c.case_id != RECEIVED]
    flipped, confirmed = queued[0], queued[1]
    comment = "looks like Jane Doe's old scar"
    feedback = write_feedback(
        tmp_path / "feedback.csv",
        [
            {"case_id": flipped, "label": 1 - labels[flipped], "reviewer": "dr.k",
             "comment": comment},
            {"case_id": confirmed, "label": labels[confirmed], "reviewer": "", "comment": ""},
            {"case_id": RECEIVED, "label": 1, "reviewer": "rad-2", "comment": ""},
        ],
    )  # fmt: skip
    code, out, err = run_cli(
        capsys, "feedback", "--site-dir", site, "--labels", feedback, "--reviewer", "lead"
    )
    assert code == 0, err
    assert "3 rows: 1 labels corrected, 1 confirmed, 1 received cases labelled" in out
    manifest = {r.case_id: r for r in SiteStore.open(site).read_manifest()}
    assert manifest[flipped].label == 1 - labels[flipped]
    assert manifest[confirmed].label == labels[confirmed]
    assert manifest[RECEIVED].label == 1 and manifest[RECEIVED].split in ("train", "test")
    assert RECEIVED not in ReceivedIndex(store).cases()
    reviews = [
        (
            e.details["case_id"],
            e.details["old_label"],
            e.details["new_label"],
            e.details["reviewer"],
        )
        for e in AuditLog.in_folder(site).entries()
        if e.event == AuditEvent.LABEL_REVIEWED
    ]
    assert reviews == [
        (flipped, labels[flipped], 1 - labels[flipped], "dr.k"),
        (confirmed, labels[confirmed], labels[confirmed], "lead"),
        (RECEIVED, None, 1, "rad-2"),
    ]
    assert "Jane" not in (site / "audit.jsonl").read_text()  # comments are never kept
    code, out, _ = run_cli(capsys, "list", "--site-dir", site)
    assert "3 reviewed since, 0 without a label" in out


def test_the_next_round_reads_the_reviewed_labels(reviewed: Reviewed, tmp_path: Path) -> None:
    site = site_copy(reviewed, tmp_path)
    store = SiteStore.open(site)
    before = load_split(store, "test", 64)
    case = before.records[0]
    write_feedback(tmp_path / "fb.csv", [{"case_id": case.case_id, "label": 1 - case.label}])
    write_feedback(tmp_path / "received.csv", [{"case_id": RECEIVED, "label": 0}])
    apply_feedback(store, tmp_path / "fb.csv")
    apply_feedback(store, tmp_path / "received.csv", seed=1, test_fraction=1.0)
    after = load_split(SiteStore.open(site), "test", 64)
    assert after is not before  # the cache is keyed by the manifest's version
    assert [r.case_id for r in after.records] == [r.case_id for r in before.records] + [RECEIVED]
    assert after.labels[0].item() == 1 - case.label and after.labels[-1].item() == 0
    assert torch.equal(after.labels[1:-1], before.labels[1:])


def test_feedback_is_all_or_nothing_and_names_the_bad_row(
    reviewed: Reviewed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = site_copy(reviewed, tmp_path)
    good = reviewed.queue.cases[0].case_id
    before = tree(site)
    other = "c" + "0" * 15 + "1"
    first = {"case_id": good, "label": 0}
    for rows, expected in (
        ([first, {"case_id": good, "label": 1}], "line 3: duplicate of line 2"),
        ([first, {"case_id": RECEIVED, "label": "yes"}], "line 3: label must be 0 or 1"),
        ([first, {"case_id": other, "label": 1}], f"line 3: case {other} is not a case of site"),
        ([first, {"case_id": "Doe^Jane", "label": 1}], "line 3: case_id must be a case id"),
        ([first | {"reviewer": "Dr. Jane Doe"}], "line 2: reviewer must be a short plain token"),
        ([first | {"split": "test"}], "column(s) split have no meaning"),
        ([first | {"notes": "x"}], "unknown column(s) notes"),
    ):
        feedback = write_feedback(tmp_path / "feedback.csv", rows)
        code, _, err = run_cli(capsys, "feedback", "--site-dir", site, "--labels", feedback)
        assert code == 1 and expected in err, (rows, err)
        assert len(err.strip().splitlines()) == 1
        assert tree(site) == before  # manifest, received index and audit trail untouched
    with pytest.raises(ReviewError, match="--reviewer"):
        apply_feedback(SiteStore.open(site), feedback, reviewer="a b")


# --- nothing of it crosses the wire ---------------------------------------------------------


def _message(message_type: str, content: RecordDict) -> Message:
    return Message(content, dst_node_id=0, message_type=message_type)


@pytest.mark.usefixtures("message_identity")
def test_no_reply_of_the_site_carries_anything_of_its_review_queue(
    reviewed: Reviewed, tmp_path: Path
) -> None:
    """Every message the ClientApp answers, asked of a site with a review queue: the bytes
    Flower would transfer for each reply (through the site's egress guard) hold no queued
    case id, no PNG and no review path, and the queue is left as it was."""
    site = site_copy(reviewed, tmp_path)
    before = tree(site / REVIEW_DIR)
    config = ModelConfig(architecture=ARCHITECTURE)
    model = ArrayRecord(load_model(reviewed.checkpoint, ARCHITECTURE).module.state_dict())
    task = {
        **to_config(TrainingConfig(local_epochs=1)),
        **to_config(config, MODEL_CONFIG_PREFIX),
        **to_config(PrivacyConfig.for_epsilon(float("inf")), PRIVACY_PREFIX),
        SEED_KEY: 5, RUN_ID_KEY: "run-review", PLANNED_EPOCHS_KEY: 1, "server-round": 1,
    }  # fmt: skip
    requests = {
        message_type: RecordDict({ARRAYS: model, CONFIG: ConfigRecord(task)})
        for message_type in (MSG_TRAIN, MSG_EVALUATE, MSG_DRIFT)
    }
    requests[MSG_PROFILE] = RecordDict()
    requests[MSG_EVALUATE_STRATA] = RecordDict(
        {MODEL_PREFIX + "global": model, CONFIG: ConfigRecord(task)}
    )
    app = build_client_app()
    context = Context(MESSAGE_RUN_ID, 0, {SITE_DIR_KEY: str(site)}, RecordDict(), {})
    pngs = [p.read_bytes() for p in reviewed.queue.path.glob("*.png")]
    for message_type, content in requests.items():
        reply = app(_message(message_type, content), context)
        assert not reply.has_error(), (message_type, reply.error.reason)
        wire = b"".join(obj.deflate() for obj in get_all_nested_objects(reply).values())
        assert b"\x89PNG" not in wire and REVIEW_DIR.encode() + b"/" not in wire
        assert not [c.case_id for c in reviewed.queue.cases if c.case_id.encode() in wire]
        assert not [p for p in pngs if p[-64:] in wire]
    assert tree(site / REVIEW_DIR) == before
    (queue,) = list_queues(SiteStore.open(site))
    assert queue.cases == reviewed.queue.cases


@pytest.mark.slow
def test_a_federation_never_sees_the_sites_review_queues(
    reviewed: Reviewed, small_federation: IngestedFederation, tmp_path: Path
) -> None:
    """A simulated evaluation-only job of the queued model at two sites with review queues:
    nothing of the queues is in the run directory (its wire log included)."""
    from server.server_app import FederationConfig
    from simulations.federation import run_simulated_federation

    sites = small_federation.fresh_copies(tmp_path / "sites")
    queues = []
    for site in sites:
        queues.append(
            build_queue(
                ScoringRequest(
                    site, reviewed.checkpoint, threshold=reviewed.operating.threshold,
                    architecture=ARCHITECTURE, uncertainty_band=reviewed.operating.band,
                )
            )
        )  # fmt: skip
    before = [tree(site / REVIEW_DIR) for site in sites]
    run = tmp_path / "run"
    config = FederationConfig(
        run_dir=run,
        model=ModelConfig(architecture=ARCHITECTURE),
        privacy=PrivacyConfig.for_epsilon(float("inf")),
        frozen_model=reviewed.checkpoint,
        operating_threshold=reviewed.operating.threshold,
    )
    run_simulated_federation(sites, config, pooled_baseline=False, progress=lambda _: None)
    case_ids = {c.case_id.encode() for q in queues for c in q.cases}
    assert case_ids and (run / "wire.jsonl").stat().st_size > 0
    for path in run.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"\x89PNG" not in data, path
            assert not [c for c in case_ids if c in data], path
            assert not [s for s in sites if str(s / REVIEW_DIR).encode() in data], path
    assert [tree(site / REVIEW_DIR) for site in sites] == before
