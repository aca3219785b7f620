"""The model zoo's names and what each model is, without importing torch.

One registry, `MODEL_ZOO`: the command line takes its ``--model`` choices and help from it,
`task.model` builds what it names, the evidence describes a run's model with it, and it says
which models Opacus cannot train with DP-SGD, and why. `task.model`'s docstring has the
details and the reasons for each design. Each model does one task (`TASKS`): classification
(one logit per image) or segmentation (one logit per pixel); ``--task`` picks the task and
its default model (`DEFAULT_MODELS`).
"""

from __future__ import annotations

from dataclasses import dataclass

#: The tasks: image-level classification (lesion present or not, AUC and the rest from
#: score histograms) and lesion segmentation (a mask per image, Dice and HD95).
CLASSIFICATION = "classification"
SEGMENTATION = "segmentation"
TASKS = (CLASSIFICATION, SEGMENTATION)
#: The model each task trains unless ``--model`` says otherwise.
DEFAULT_MODELS = {CLASSIFICATION: "blob", SEGMENTATION: "unet"}


@dataclass(frozen=True)
class Architecture:
    """One model of the zoo.

    summary: what it is, in a few words (``--help``).
    description: what it is, for the evidence and the report.
    dp_sgd_refusal: why DP-SGD (Opacus) cannot train it, in one line; None: it can.
    task: what it does, one of `TASKS`.
    """

    summary: str
    description: str
    dp_sgd_refusal: str | None = None
    task: str = CLASSIFICATION


MODEL_ZOO: dict[str, Architecture] = {
    "blob": Architecture(
        "fixed blob detectors and 257 trainable parameters, made for DP",
        "medfed BlobLesionClassifier: fixed multi-scale centre-surround blob detectors, "
        "1x1 convolution with tanh, global max pooling, linear",
    ),
    "cnn": Architecture(
        "a small CNN of MONAI blocks, 25k parameters",
        "medfed LesionClassifier: MONAI Convolution blocks (GroupNorm), global max and mean "
        "pooling",
    ),
    "densenet": Architecture(
        "MONAI DenseNet, growth rate 8, blocks 4-4-4, GroupNorm, 26k parameters",
        "MONAI DenseNet (2-D, init features 16, growth rate 8, blocks 4-4-4, bottleneck 2, "
        "GroupNorm, ReLU)",
    ),
    "resnet": Architecture(
        "MONAI ResNet-10, channels 16-128, GroupNorm, 0.3M parameters; not with DP-SGD",
        "MONAI ResNet-10 (2-D, basic blocks 1-1-1-1, channels 16-32-64-128, 3x3 stem, GroupNorm)",
        "resnet cannot train with DP-SGD: MONAI's ResNetBlock adds its shortcut in place "
        "(out += residual) to a GroupNorm's output, and Opacus's per-sample gradient hooks "
        "refuse an in-place change of a hooked layer's output; use --epsilon inf or --dp central",
    ),
    "efficientnet": Architecture(
        "MONAI EfficientNet-B0 blocks at width 0.25, depth 0.5, GroupNorm, 0.2M parameters",
        "MONAI EfficientNet (2-D, EfficientNet-B0's blocks, width 0.25, depth 0.5, GroupNorm, "
        "swish)",
    ),
    "vit": Architecture(
        "MONAI Vision Transformer, 8x8 patches, 4 layers of width 128, 0.5M parameters",
        "MONAI ViT (2-D, 8x8 patches, hidden 128, MLP 256, 4 layers, 4 heads, fixed sin-cos "
        "position embedding), global max and mean pooling of the tokens, linear",
    ),
    "unet": Architecture(
        "segmentation: MONAI UNet, channels 8-16-32, InstanceNorm, 10k parameters",
        "MONAI UNet (2-D, channels 8-16-32, strides 2-2, no residual units, InstanceNorm, ReLU), "
        "one logit per pixel",
        task=SEGMENTATION,
    ),
}

#: Name -> description, for the evidence (`server.server_app`).
ARCHITECTURES = {name: entry.description for name, entry in MODEL_ZOO.items()}


def model_help() -> str:
    """``--model``'s help: every name with its summary."""
    return "; ".join(f"{name}: {entry.summary}" for name, entry in MODEL_ZOO.items())


def task_of(architecture: str) -> str:
    """The task (`TASKS`) of ``architecture``."""
    return MODEL_ZOO[architecture].task


def models_for(task: str) -> tuple[str, ...]:
    """The names of the models that do ``task``."""
    return tuple(name for name, entry in MODEL_ZOO.items() if entry.task == task)


def check_task(architecture: str, task: str) -> None:
    """ValueError, in one line, unless ``architecture`` does ``task``."""
    if task_of(architecture) != task:
        raise ValueError(
            f"{architecture} is a {task_of(architecture)} model; for {task} use "
            f"{', '.join(models_for(task))} (or --task {task_of(architecture)})"
        )


class DPSGDUnsupported(ValueError):
    """A model that DP-SGD cannot train was asked to (the message: one line, the reason)."""


def check_dp_sgd(architecture: str, privacy_mode: str = "local") -> None:
    """Raise `DPSGDUnsupported` with its one-line reason if ``privacy_mode`` is "local"
    (DP-SGD at the sites; `task.privacy.PrivacyConfig.mode`) and DP-SGD cannot train
    ``architecture``. Central DP and training without DP suit every model."""
    reason = MODEL_ZOO[architecture].dp_sgd_refusal
    if privacy_mode == "local" and reason is not None:
        raise DPSGDUnsupported(reason)
