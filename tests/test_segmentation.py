"""Lesion segmentation (issue 8): per-case Dice and HD95 as MONAI computes them, on the
phantoms' real masks; site aggregates that pool exactly and give intervals; the egress
guard; the U-Net's DP-SGD step; a federated segmentation run's evidence and report."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IngestedFederation
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from opacus.validators import ModuleValidator
from scipy import ndimage
from scipy.stats import t

from server.checkpoints import load_frozen_model
from server.server_app import FederationConfig
from simulations.federation import run_simulated_federation
from site_client.client_app import evaluate_segmentation
from site_client.dataset import load_split
from site_client.egress import EgressViolation, check_reply
from site_client.privacy import DPSGD, poisson_sampling
from site_client.segmentation import case_metrics, grid_spacing
from site_client.store import SiteStore
from site_client.training import predict_logits, train_model
from task.architectures import check_dp_sgd
from task.config_record import to_config
from task.model import ModelConfig, build_model
from task.privacy import PrivacyConfig
from task.training import recipe
from task.wire import (
    CONFIG,
    DICE_BINS,
    HD95_BINS,
    METRICS,
    MODEL_CONFIG_PREFIX,
    MODEL_PREFIX,
    MSG_EVALUATE,
    MSG_EVALUATE_SEGMENTATION,
    SEGMENTATION_PREFIX,
    SUPPRESSED,
    parse_segmentation_key,
    segmentation_key,
)
from validation.acceptance import (
    AcceptancePlanError,
    check_plan_task,
    default_plan,
    resolve_plan,
)
from validation.evidence import validate_evidence
from validation.report import write_report
from validation.segmentation import (
    CaseMetrics,
    SegmentationAggregate,
    ValueHistogram,
    dice_coefficient,
    evaluate_cases,
    hausdorff95,
    mean_ci,
    median_ci,
    segmentation_performance,
)
from validation.summary import format_summary

UNET = ModelConfig(architecture="unet")


@pytest.fixture(scope="module")
def lesions(small_federation: IngestedFederation) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The real lesion masks of a phantom site's positive cases (64x64) and their spacings."""
    store = SiteStore.open(small_federation.site_dirs[0])
    records = [r for r in store.read_manifest() if r.label == 1]
    masks = np.stack([store.load_mask(r.case_id) > 0 for r in records])
    spacings = [grid_spacing(r, 64) for r in records]
    assert masks.any(axis=(1, 2)).all() and all(s is not None for s in spacings)
    return masks, spacings  # type: ignore[return-value]


def _monai(metric: DiceMetric | HausdorffDistanceMetric, pred: np.ndarray, ref: np.ndarray,
           **kwargs: object) -> float:  # fmt: skip
    def as_tensor(mask: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(mask.astype(np.float32))[None, None]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(metric(as_tensor(pred), as_tensor(ref), **kwargs).item())


def test_dice_and_hd95_by_hand() -> None:
    reference = np.zeros((10, 10), bool)
    reference[2:6, 2:6] = True  # 16 pixels
    prediction = np.zeros((10, 10), bool)
    prediction[2:6, 4:8] = True  # 16 pixels, 8 shared
    assert dice_coefficient(prediction, reference) == 2 * 8 / 32
    # Every boundary pixel of one square lies 2 columns from the other's nearest boundary
    # pixel, or on it: the 95th percentile of both directed distance sets is 2 pixels.
    assert hausdorff95(prediction, reference) == pytest.approx(2.0)
    assert hausdorff95(prediction, reference, (1.0, 0.5)) == pytest.approx(1.0)  # columns 0.5 mm
    with pytest.raises(ValueError, match="undefined for two empty"):
        dice_coefficient(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="a mask is empty"):
        hausdorff95(np.zeros((4, 4)), reference[:4, :4])


def test_dice_and_hd95_agree_with_monai_on_the_phantoms_masks(
    lesions: tuple[np.ndarray, list[tuple[float, float]]],
) -> None:
    masks, spacings = lesions
    rng = np.random.default_rng(0)
    for ref, spacing in zip(masks, spacings, strict=True):
        # Predictions as a model makes them: shifted, grown or shrunk, with stray pixels.
        pred = np.roll(ref, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
        pred = ndimage.binary_dilation(pred) if rng.random() < 0.5 else pred
        pred |= rng.random(ref.shape) > 0.998
        dice = _monai(DiceMetric(), pred, ref)
        hd95 = _monai(HausdorffDistanceMetric(percentile=95), pred, ref, spacing=[spacing])
        assert dice_coefficient(pred, ref) == pytest.approx(dice, abs=1e-6)
        assert hausdorff95(pred, ref, spacing) == pytest.approx(hd95, rel=1e-5)


def test_case_conventions_for_empty_masks_and_unknown_spacing() -> None:
    lesion = np.zeros((8, 8), bool)
    lesion[2:5, 2:5] = True
    empty = np.zeros((8, 8), bool)
    cases = evaluate_cases(
        np.stack([lesion, empty, lesion, empty, lesion]),  # predictions
        np.stack([lesion, lesion, empty, empty, lesion]),  # references
        [(1.0, 1.0), (1.0, 1.0), (1.0, 1.0), (1.0, 1.0), None],
    )
    aggregate = SegmentationAggregate.of(cases)
    assert (aggregate.n, aggregate.n_lesion, aggregate.n_empty) == (5, 3, 2)
    assert aggregate.n_false_positive == 1  # a prediction where there is no lesion
    assert aggregate.n_missed == 1  # a lesion and an empty prediction: Dice 0, no HD95
    assert aggregate.n_no_spacing == 1  # Dice 1, no HD95 in mm
    assert aggregate.dice.total == 2.0 and aggregate.hd95.n == 1
    assert aggregate.hd95.total == 0.0
    performance = segmentation_performance(aggregate)
    assert performance["false_positive_rate"]["value"] == 0.5
    assert performance["n_pos"] == 3 and performance["n_hd95"] == 1


def _split_cases(cases: CaseMetrics, n_first: int) -> tuple[CaseMetrics, CaseMetrics]:
    first = np.zeros(len(cases.dice), bool)
    first[:n_first] = True
    return cases.subset(first), cases.subset(~first)


def test_aggregates_pool_exactly_and_give_the_intervals_of_the_cases(
    lesions: tuple[np.ndarray, list[tuple[float, float]]],
) -> None:
    masks, spacings = lesions
    rng = np.random.default_rng(1)
    predictions = np.stack([np.roll(m, tuple(rng.integers(-4, 5, 2)), (0, 1)) for m in masks])
    cases = evaluate_cases(predictions, masks, spacings)
    whole = SegmentationAggregate.of(cases)
    a, b = (SegmentationAggregate.of(part) for part in _split_cases(cases, len(masks) // 3))
    pooled = a + b
    # Pooling two sites' aggregates gives the aggregate of all their cases.
    assert pooled.to_fields().keys() == whole.to_fields().keys()
    for key, value in whole.to_fields().items():
        assert pooled.to_fields()[key] == pytest.approx(value, rel=1e-12), key
    assert SegmentationAggregate.from_fields(pooled.to_fields()) == pooled
    # The mean and its interval are the case-level Student t interval, exactly.
    dice = cases.dice[~cases.reference_empty]
    mean = mean_ci(whole.dice, upper_limit=1.0)
    low, high = t.interval(0.95, len(dice) - 1, dice.mean(), dice.std(ddof=1) / len(dice) ** 0.5)
    assert mean.value == pytest.approx(dice.mean())
    assert (mean.ci_low, mean.ci_high) == pytest.approx((max(low, 0), min(high, 1)))
    # The median is within a bin of the case-level one, inside its interval.
    median = median_ci(whole.dice)
    assert median.value == pytest.approx(np.median(dice), abs=DICE_BINS.edges[1])
    assert median.ci_low <= np.median(dice) <= median.ci_high
    hd95 = cases.hd95[np.isfinite(cases.hd95)]
    assert median_ci(whole.hd95).ci_low <= np.median(hd95) <= median_ci(whole.hd95).ci_high


def test_statistics_without_enough_cases_say_why() -> None:
    one = ValueHistogram.of([0.5], DICE_BINS)
    assert mean_ci(one).ci_low is None and "1 case" in mean_ci(one).method
    assert median_ci(ValueHistogram.of([0.5] * 5, DICE_BINS)).ci_low is None  # k = 0 at 95%
    assert "all values equal" in mean_ci(ValueHistogram.of([0.0] * 9, DICE_BINS)).method
    far = median_ci(ValueHistogram.of([150.0] * 9, HD95_BINS))
    assert far.value is None and "beyond the last bin edge" in far.method
    with pytest.raises(ValueError, match="different bins"):
        ValueHistogram.of([1.0], DICE_BINS) + ValueHistogram.of([1.0], HD95_BINS)


def _request(message_type: str, content: RecordDict) -> Message:
    return Message(content, dst_node_id=7, message_type=message_type)


def _fields(n_empty: int, dice: list[float], hd95: list[float]) -> dict:
    aggregate = SegmentationAggregate(
        n_empty=n_empty,
        n_missed=len(dice) - len(hd95),
        dice=ValueHistogram.of(dice, DICE_BINS),
        hd95=ValueHistogram.of(hd95, HD95_BINS),
    )
    return aggregate.to_fields()


@pytest.mark.usefixtures("message_identity")
def test_the_egress_guard_lets_out_aggregates_of_large_strata_only() -> None:
    config = ConfigRecord(to_config(UNET, MODEL_CONFIG_PREFIX))
    content = RecordDict({CONFIG: config, MODEL_PREFIX + "global": ArrayRecord()})
    request = _request(MSG_EVALUATE_SEGMENTATION, content)

    def reply(fields: dict) -> Message:
        keys = {segmentation_key("test", "site=all", k): v for k, v in fields.items()}
        record = MetricRecord(keys)
        return Message(
            RecordDict(
                {SEGMENTATION_PREFIX + "global": record, SUPPRESSED: ConfigRecord({"strata": []})}
            ),
            reply_to=request,
        )

    check_reply(request, reply(_fields(3, [0.7, 0.8, 0.0], [2.0, 3.0])), min_cell_size=5)
    with pytest.raises(EgressViolation, match="4 cases is below the minimum cell size"):
        check_reply(request, reply(_fields(2, [0.7, 0.0], [2.0])), min_cell_size=5)
    per_case = _fields(3, [0.7, 0.8, 0.0], [2.0, 3.0]) | {"dice-hist": [0.7, 0.8, 0.0]}
    with pytest.raises(EgressViolation, match="not a segmentation aggregate"):
        check_reply(request, reply(per_case), min_cell_size=5)
    inconsistent = _fields(3, [0.7, 0.8, 0.0], [2.0, 3.0]) | {"n-missed": 0}
    with pytest.raises(EgressViolation, match="not a segmentation aggregate"):
        check_reply(request, reply(inconsistent), min_cell_size=5)
    with pytest.raises(EgressViolation, match="not a segmentation key"):
        check_reply(
            request, reply({"case-0|dice": 0.9} | _fields(5, [0.5], [1.0])), min_cell_size=5
        )
    # A per-round evaluation of a segmentation model may not carry score histograms.
    evaluate = _request(MSG_EVALUATE, RecordDict({CONFIG: config}))
    metrics = MetricRecord({"num-examples": 8, "test-loss": 0.5, "hist-positive": [1]})
    with pytest.raises(EgressViolation, match="hist-positive"):
        check_reply(evaluate, Message(RecordDict({METRICS: metrics}), reply_to=evaluate), 5)


def test_a_site_reports_aggregates_of_its_strata_and_withholds_the_small_ones(
    small_federation: IngestedFederation,
) -> None:
    store = SiteStore.open(small_federation.site_dirs[0])
    model = build_model(UNET, seed=0)
    content = RecordDict(
        {
            CONFIG: ConfigRecord(to_config(UNET, MODEL_CONFIG_PREFIX)),
            MODEL_PREFIX + "global": ArrayRecord(model.state_dict()),
        }
    )
    reply = evaluate_segmentation(store, content)
    fields = dict(reply[SEGMENTATION_PREFIX + "global"])
    strata: dict[str, dict] = {}
    for key, value in fields.items():
        split, stratum, name = parse_segmentation_key(key)
        assert split == "test"
        strata.setdefault(stratum, {})[name] = value
    test = [r for r in store.read_manifest() if r.split == "test"]
    whole = SegmentationAggregate.from_fields(strata["site=all"])
    assert whole.n == len(test) and whole.n_lesion == sum(r.label for r in test)
    minimum = store.policy.min_cell_size
    assert all(SegmentationAggregate.from_fields(f).n >= minimum for f in strata.values())
    assert all(s.startswith("test|") for s in reply[SUPPRESSED]["strata"])


def test_the_unet_trains_with_dp_sgd_and_its_checkpoint_loads_without_dp(
    small_federation: IngestedFederation, tmp_path: Path
) -> None:
    check_dp_sgd("unet")  # not refused
    model = build_model(UNET, seed=0)
    assert ModuleValidator.validate(model, strict=False) == []
    store = SiteStore.open(small_federation.site_dirs[0])
    data = load_split(store, "train", 64, masks=True)
    assert data.masks is not None and data.masks.shape == data.images.shape
    assert sorted(data.masks.amax(dim=(1, 2, 3)).tolist()) == sorted(data.labels.tolist())
    training = replace(recipe("unet"), local_epochs=1)
    sample_rate, steps = poisson_sampling(len(data), training.batch_size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dpsgd = DPSGD(1.0, 1.0, sample_rate, steps, noise_seed=1, sampling_seed=2)
    assert train_model(model, data, training, seed=0, dpsgd=dpsgd).steps == steps
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert {n for n, p in model.named_parameters() if p.requires_grad} <= changed
    torch.save(model.state_dict(), tmp_path / "dp.pt")
    plain = build_model(UNET)
    plain.load_state_dict(load_frozen_model(tmp_path / "dp.pt", UNET))
    logits = predict_logits(plain, data)
    assert logits.shape == (len(data), 64, 64)
    assert len(case_metrics(logits, data).dice) == len(data)


def test_a_federated_segmentation_run_has_dice_per_site_and_manufacturer(
    small_federation: IngestedFederation, tmp_path: Path
) -> None:
    sites = small_federation.fresh_copies(tmp_path / "sites")
    config = FederationConfig(
        run_dir=tmp_path / "run",
        rounds=1,
        training=recipe("unet", local_epochs=1),
        model=UNET,
        privacy=PrivacyConfig.for_epsilon(float("inf")),
    )
    result = run_simulated_federation(sites, config, pooled_baseline=False, progress=print)
    evidence = json.loads(result.evidence.read_text())
    validate_evidence(evidence)
    assert evidence["run"]["task"] == "segmentation" and "operating_point" not in evidence
    performance = evidence["performance"]
    assert set(performance["by_site"]) == {d.name for d in sites}
    assert performance["by_scanner"]
    for scope in [performance["pooled"], *performance["by_site"].values()]:
        assert scope["n_pos"] > 1
        dice = scope["dice_mean"]
        assert 0 <= dice["ci_low"] <= dice["value"] <= dice["ci_high"] <= 1, dice
        assert set(scope) >= {"dice_median", "hd95_median", "hd95_mean", "false_positive_rate"}
    cross = evidence["cross_site"]
    assert cross["models"][0] == "global" and len(cross["dice_mean"][0]) == len(sites)
    assert evidence["rounds"][0]["pooled_dice"] is not None
    assert {e["metric"] for e in evidence["acceptance"]} >= {"dice_mean", "hd95_median"}
    summary = format_summary(evidence)
    assert "Dice mean [95% CI]" in summary and "Cross-site mean Dice" in summary
    html = write_report(result.evidence.parent, pdf=False).html.read_text()
    assert "Dice, mean" in html and "HD95 (mm), median" in html
    assert "is malformed" not in html


def test_the_command_line_refuses_a_model_of_the_other_task(tmp_path: Path) -> None:
    for args, reason in (
        (("--model", "unet"), "unet is a segmentation model; for classification use"),
        (("--task", "segmentation", "--model", "blob"), "blob is a classification model"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "medfed", "demo", "--out", str(tmp_path / "demo"), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1].startswith(f"medfed: error: {reason}")
        assert not (tmp_path / "demo").exists()


def test_acceptance_plans_are_checked_against_the_task(tmp_path: Path) -> None:
    plan = resolve_plan(None, "segmentation")
    assert {c.metric for c in plan.criteria} >= {"dice_mean", "hd95_median"}
    hd95 = 'name = "p"\n[[criterion]]\nid = "hd"\nmetric = "hd95_median"\noperator = "<="\n'
    path = tmp_path / "plan.toml"
    path.write_text(hd95 + "threshold = 12.5\n")  # millimetres: not bounded by 1
    assert resolve_plan(path, "segmentation").criteria[0].threshold == 12.5
    with pytest.raises(AcceptancePlanError, match="'hd95_median' is not a classification metric"):
        resolve_plan(path, "classification")
    with pytest.raises(AcceptancePlanError, match="'auc' is not a segmentation metric"):
        check_plan_task(default_plan(), "segmentation")
