"""What several ``medfed`` commands share: their options (federation, privacy, task, seed,
acceptance plan), the errors that set the exit status, and how they print progress and a
run's evidence. Argument parsing only; imports no torch or Flower.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from task.architectures import (
    CLASSIFICATION,
    DEFAULT_MODELS,
    MODEL_ZOO,
    SEGMENTATION,
    TASKS,
    DPSGDUnsupported,
    check_dp_sgd,
    check_task,
    model_help,
)
from task.training import RECIPES

if TYPE_CHECKING:
    from simulations.ray_cluster import RayCluster
    from task.privacy import PrivacyConfig

#: server.strategies.STRATEGY_NAMES, repeated so that --help need not import Flower
#: (tests/test_cli.py checks that the two agree).
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum", "multikrum")
#: The model zoo's names (task.architectures, which imports no torch).
MODELS = tuple(MODEL_ZOO)
#: Each task's privacy budget unless --epsilon says otherwise: DP-SGD at epsilon 8 for
#: classification; none for segmentation, whose U-Net learns nothing under DP-SGD at
#: epsilon 8 on the phantoms (it predicts no lesion anywhere; README, Segmentation).
DEFAULT_EPSILON = {CLASSIFICATION: 8.0, SEGMENTATION: math.inf}


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_seed(parser: argparse.ArgumentParser) -> None:
    """``--seed S`` (default 0)."""
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, metavar="S", help="random seed (default: 0)"
    )


def epsilon_value(text: str) -> float:
    """An argparse type: a privacy budget, a number > 0 or ``inf``."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 or 'inf', got {text}")
    return value


def add_privacy_options(parser: argparse.ArgumentParser) -> None:
    """The differential privacy options: --epsilon, --dp, --noise-multiplier,
    --max-grad-norm, --accountant."""
    group = parser.add_argument_group("differential privacy")
    group.add_argument(
        "--epsilon",
        type=epsilon_value,
        metavar="E",
        help="privacy budget of the run: with --dp local, what each site may spend on all it "
        "trains in the run (local-only baseline and every round); 'inf' trains without DP "
        "(default: 8 for classification; inf for segmentation, whose U-Net learns nothing "
        "under DP-SGD at epsilon 8 on the phantoms: README, Segmentation)",
    )
    group.add_argument(
        "--dp",
        choices=("local", "central"),
        default="local",
        help="local: DP-SGD at every site (record-level, each site accounts against its own "
        "ceiling in SITE/site.toml); central: clipping and noise at the coordinator "
        "(site-level, the coordinator sees unnoised updates) (default: local)",
    )
    group.add_argument(
        "--noise-multiplier",
        type=float,
        default=0.0,
        metavar="Z",
        help="fixed noise multiplier instead of one derived from --epsilon",
    )
    group.add_argument(
        "--max-grad-norm",
        type=float,
        default=1.0,
        metavar="C",
        help="DP-SGD per-sample clipping norm; with --dp central, the update clipping norm "
        "(default: 1.0)",
    )
    group.add_argument(
        "--accountant",
        choices=("rdp", "prv"),
        default="rdp",
        help="Opacus accountant the sites use (default: rdp)",
    )


def privacy_config(args: argparse.Namespace) -> PrivacyConfig:
    """The privacy settings those options ask for, for ``args.task`` and ``args.model``;
    `Usage` for a combination that cannot run."""
    from task.privacy import requested_privacy

    epsilon = DEFAULT_EPSILON[args.task] if args.epsilon is None else args.epsilon
    try:
        config = requested_privacy(
            epsilon, args.dp, args.noise_multiplier, args.max_grad_norm, args.accountant
        )
    except ValueError as exc:
        raise Usage(str(exc)) from exc
    try:
        check_dp_sgd(args.model, config.mode)
    except DPSGDUnsupported as exc:
        raise Usage(str(exc)) from exc
    return config


def add_task_option(parser: argparse.ArgumentParser) -> None:
    """``--task classification|segmentation``."""
    parser.add_argument(
        "--task",
        choices=TASKS,
        default=CLASSIFICATION,
        help="classification: one score per image (AUC, sensitivity, specificity); "
        "segmentation: a lesion mask per image, trained on the sites' masks (Dice, HD95) "
        "(default: classification)",
    )


def resolve_model(args: argparse.Namespace, attribute: str) -> None:
    """Set ``args.<attribute>`` (``--model``, or validate's ``--architecture``) to the
    default model of ``--task`` when not given; `Usage` when it does another task."""
    name = getattr(args, attribute) or DEFAULT_MODELS[args.task]
    try:
        check_task(name, args.task)
    except ValueError as exc:
        raise Usage(str(exc)) from exc
    setattr(args, attribute, name)


def add_federation_options(parser: argparse.ArgumentParser) -> None:
    """What a federated job trains: task, model, local epochs, rounds, strategy, seed and
    privacy."""
    add_task_option(parser)
    parser.add_argument(
        "--model",
        choices=MODELS,
        help=f"the model, trained with its recipe (batch, learning rate, epochs): {model_help()}"
        " (default: --task's, "
        + ", ".join(f"{model} for {task}" for task, model in DEFAULT_MODELS.items())
        + ")",
    )
    parser.add_argument(
        "--local-epochs",
        type=positive_int,
        metavar="E",
        help="epochs per round (default: the model's recipe: "
        + ", ".join(f"{name} {r.local_epochs}" for name, r in RECIPES.items())
        + ")",
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=10,
        metavar="R",
        help="federated rounds (default: 10)",
    )
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="fedavg",
        help="aggregation strategy: fedavg, fedprox, fedadam, or one robust to a hostile "
        "(Byzantine) site: fedmedian, fedtrimmedavg (cuts 20%% of each tail), krum or "
        "multikrum (tolerating 1 hostile site) (default: fedavg)",
        metavar="NAME",
    )
    add_seed(parser)
    add_privacy_options(parser)


def add_acceptance_option(parser: argparse.ArgumentParser) -> None:
    """``--acceptance PLAN.toml``."""
    parser.add_argument(
        "--acceptance",
        type=Path,
        metavar="PLAN.toml",
        help="acceptance plan: pre-specified criteria (metric, statistic, threshold, scope) the "
        "evidence says pass or fail to; checked before anything runs (default: medfed's plan, "
        "validation/plans/default.toml)",
    )


def print_evidence(evidence_path: Path) -> None:
    """Print a run's summary (`validation.summary`) and where its files are."""
    from validation.summary import format_summary

    print(format_summary(json.loads(evidence_path.read_text())))
    print(f"\nrun directory: {evidence_path.parent.resolve()}")
    print(f"evidence:      {evidence_path.resolve()}")


class Failure(RuntimeError):
    """A failure whose message is the whole story."""


class Usage(ValueError):
    """Bad usage found after parsing."""


def say(line: str) -> None:
    """Print a progress line to stderr."""
    print(line, file=sys.stderr, flush=True)


def ray_cluster(address: str) -> RayCluster:
    """An argparse type: ``--ray-address``'s HOST:PORT as a `RayCluster`."""
    from simulations.ray_cluster import RayCluster

    try:
        return RayCluster.parse(address)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_ray_address_option(parser: argparse.ArgumentParser) -> None:
    """``--ray-address HOST:PORT``: the sites on an existing Ray cluster."""
    parser.add_argument(
        "--ray-address",
        type=ray_cluster,
        metavar="HOST:PORT",
        help="run the sites on this existing Ray cluster (its head's `ray start --head "
        "--port`), one CPU per site, instead of on this machine; every node needs medfed "
        "installed and the site stores at the same paths (README, On a Ray cluster). "
        "RAY_ADDRESS is not read",
    )
