"""int8 models for inference at the edge: a run's final model, quantized at a site.

Post-training quantization with what torch 2.13 has built in (`torch.ao.quantization`):

- ``static`` (every convolutional model): FX graph mode quantization for the x86 backend
  (fbgemm/oneDNN kernels) of the convolutions and linear layers, where nearly all the
  arithmetic is: int8 weights (per output channel) and int8 inputs, whose ranges are
  calibrated by running the float model on the site's own training images. What lies
  between them (GroupNorm, activations, pooling, EfficientNet's squeeze-and-excitation
  gates) stays float: quantizing it too (torch's default mapping) cost far more accuracy
  on the phantoms (models trained 3 epochs at one site; correlation of int8 with float
  scores: EfficientNet 0.65 against 0.85, DenseNet 0.92 against 0.99). The images never
  leave the site; the ranges, which the int8 file holds, are not protected by DP, so the
  file is for the site's own inference and not for sharing.
- ``dynamic`` (``vit``): MONAI's ViT does not trace for FX (einops), and a transformer's
  weights are nearly all in linear layers: their weights are int8 and their inputs are
  quantized on the fly, case by case; no calibration. The patch embedding (a convolution),
  the attention products and the norms stay float.

The int8 model is written as TorchScript (``torch.jit.load`` opens it without medfed):
input (B, 1, S, S) float images preprocessed as for training (`task.transforms`), output
(B, 1) logits. Run again on the same run, site and file name, `medfed quantize` writes
the same bytes (SHA-256; within one process TorchScript numbers its classes anew). torch
marks `torch.ao.quantization` and TorchScript as deprecated in favour of torchao's PT2E
quantization and `torch.export`, which need torchao and a compiler at the edge for int8
speed; with torch pinned at 2.13 both still work (their warnings are silenced).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn
from torch.ao.quantization import QConfigMapping, get_default_qconfig, quantize_dynamic
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from server.checkpoints import load_frozen_model, sha256_of
from site_client.dataset import load_split
from site_client.store import SiteStore
from task.model import ModelConfig, build_model
from validation.evidence import EVIDENCE_FILE

#: How each classification model is quantized (the module docstring).
SCHEMES = {
    "blob": "static",
    "cnn": "static",
    "densenet": "static",
    "resnet": "static",
    "efficientnet": "static",
    "vit": "dynamic",
}
#: torch's quantized engine the int8 models are made for (fbgemm/oneDNN kernels).
BACKEND = "x86"
#: Training cases of the site the static ranges are calibrated on (at most).
CALIBRATION_CASES = 128


class QuantizationError(ValueError):
    """A run, checkpoint or site that cannot give an int8 model (one line)."""


@dataclass(frozen=True)
class FinalModel:
    """The final model of a run, as its evidence names it: checkpoint file and SHA-256."""

    config: ModelConfig
    checkpoint: Path
    sha256: str

    @classmethod
    def of_run(cls, run_dir: Path) -> FinalModel:
        """The final model named in ``run_dir``/evidence.json, its file's SHA-256 checked."""
        path = run_dir / EVIDENCE_FILE
        try:
            model = json.loads(path.read_text(encoding="utf-8"))["model"]
            fields = {k: tuple(v) if isinstance(v, list) else v for k, v in model["config"].items()}
            final = cls(ModelConfig(**fields), run_dir / model["checkpoint"], model["sha256"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise QuantizationError(f"{path}: names no final model ({exc})") from exc
        if not final.checkpoint.is_file() or sha256_of(final.checkpoint) != final.sha256:
            raise QuantizationError(
                f"{final.checkpoint}: missing, or not the file (SHA-256) the evidence names"
            )
        return final

    def load(self) -> nn.Module:
        """The float model with the checkpoint's weights, in eval mode."""
        model = build_model(self.config)
        model.load_state_dict(load_frozen_model(self.checkpoint, self.config))
        return model.eval()


@contextmanager
def _quiet_torch_notices() -> Iterator[None]:
    """Silence torch's deprecation notices for torch.ao.quantization, quantized tensors and
    TorchScript (the module docstring says why they are used), the observers' notice about
    reduce_range (which the x86 default configuration sets), and the tracer's about the
    quantization scales it records as constants (they are)."""
    with warnings.catch_warnings():
        for message in (".*deprecated", "Please use quant_min"):
            warnings.filterwarnings("ignore", message=message)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def quantize(
    model: nn.Module, architecture: str, calibration: torch.Tensor
) -> torch.jit.ScriptModule:
    """The int8 TorchScript version of the float ``model`` (eval mode) of ``architecture``.
    ``calibration``: (N, 1, S, S) images the static ranges are calibrated on (unused by the
    dynamic scheme; its first image is the tracing example)."""
    example = calibration[:1]
    torch.backends.quantized.engine = BACKEND
    with _quiet_torch_notices(), torch.no_grad():
        if SCHEMES[architecture] == "dynamic":
            int8 = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        else:
            qconfig = get_default_qconfig(BACKEND)
            mapping = QConfigMapping().set_object_type(nn.Conv2d, qconfig)
            prepared = prepare_fx(model, mapping.set_object_type(nn.Linear, qconfig), (example,))
            for chunk in calibration.split(32):
                prepared(chunk)
            int8 = convert_fx(prepared)
    return trace(int8, example)


def trace(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """TorchScript of ``model`` (float or int8, eval mode), traced on ``example`` images."""
    with _quiet_torch_notices(), torch.no_grad():
        return torch.jit.trace(model, example)


def load_int8(path: Path) -> torch.jit.ScriptModule:
    """An int8 model written by `write_int8_model`, in eval mode."""
    with _quiet_torch_notices():
        model = torch.jit.load(path, map_location="cpu")
    return model.eval()


@dataclass(frozen=True)
class Int8Record:
    """What `write_int8_model` wrote: the int8 file, its float source, how it was made.
    Sizes in bytes; ``calibration`` the site and cases (None for the dynamic scheme)."""

    file: str
    sha256: str
    bytes: int
    architecture: str
    scheme: str
    backend: str
    source_checkpoint: str
    source_sha256: str
    source_bytes: int
    calibration: dict[str, str | int] | None
    torch: str
    created: str


def write_int8_model(
    run_dir: Path, out: Path, site_dir: Path | None, calibration_cases: int = CALIBRATION_CASES
) -> Int8Record:
    """Quantize the final model of ``run_dir`` into ``out`` (TorchScript) and write its
    record beside it (``out`` with ``.json``). The static scheme calibrates on the first
    ``calibration_cases`` training cases of the site store ``site_dir`` (required then)."""
    final = FinalModel.of_run(run_dir)
    architecture = final.config.architecture
    scheme = SCHEMES.get(architecture)
    if scheme is None:
        raise QuantizationError(
            f"{run_dir}: its {architecture} model has no int8 version; medfed quantize takes "
            f"{', '.join(SCHEMES)}"
        )
    calibration: dict[str, str | int] | None = None
    if scheme == "static":
        if site_dir is None:
            raise QuantizationError(
                f"the {architecture} model's int8 version is calibrated on a site's training "
                "images: give --site-dir SITE"
            )
        store = SiteStore.open(site_dir)
        images = load_split(store, "train", final.config.image_size).images[:calibration_cases]
        if not len(images):
            raise QuantizationError(f"{site_dir}: no training cases to calibrate on")
        calibration = {"site": store.site_id, "split": "train", "cases": len(images)}
    else:
        images = torch.zeros(1, 1, final.config.image_size, final.config.image_size)
    int8 = quantize(final.load(), architecture, images)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_torch_notices():
        torch.jit.save(int8, out)
    record = Int8Record(
        file=out.name,
        sha256=sha256_of(out),
        bytes=out.stat().st_size,
        architecture=architecture,
        scheme=scheme,
        backend=BACKEND,
        source_checkpoint=str(final.checkpoint.resolve()),
        source_sha256=final.sha256,
        source_bytes=final.checkpoint.stat().st_size,
        calibration=calibration,
        torch=torch.__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    out.with_suffix(".json").write_text(json.dumps(asdict(record), indent=2), encoding="utf-8")
    return record
