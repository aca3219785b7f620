"""Reading DICOM files and decoding their pixels into images in modality units.

Compressed transfer syntaxes are decoded by pydicom's pixel data plugins: GDCM (JPEG
baseline, extended 8-bit and lossless, JPEG-LS, JPEG 2000, RLE) and pylibjpeg with
OpenJPEG (JPEG 2000). 12-bit JPEG Extended needs pylibjpeg-libjpeg, which is GPL-licensed
and therefore not a dependency: such files are quarantined unless a site installs it.

`decode_image` gives every image the same meaning: pixel values after the modality LUT
(Hounsfield units for CT) and MONOCHROME2 polarity (higher is brighter). What it cannot
decode raises `DecodeError` with a category (for quarantine counts) and a one-line reason.
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

UNKNOWN = "UNKNOWN"
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_REQUIRED_PIXEL_MODULE = ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation")


class DecodeProblem(StrEnum):
    """Why a file yields no image: the quarantine's reason categories for decoding."""

    NOT_DICOM = "not DICOM"
    UNREADABLE = "unreadable DICOM"
    NO_PIXELS = "no pixel data"
    MULTI_FRAME = "multi-frame"
    COLOUR = "colour"
    TRUNCATED = "truncated pixel data"
    UNDECODABLE = "undecodable pixels"


class DecodeError(ValueError):
    """A file or dataset yields no image; ``category`` says why, the message says what."""

    def __init__(self, category: DecodeProblem, reason: str) -> None:
        super().__init__(reason)
        self.category = category


def one_line(exc: BaseException) -> str:
    """``exc`` as one line of text: its type and message, whitespace collapsed."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def read_dicom(path: Path) -> Dataset:
    """Read a DICOM Part 10 file (no guessing with ``force``).

    Raises `DecodeError` (NOT_DICOM, UNREADABLE) for anything that is not a readable file.
    """
    try:
        ds = pydicom.dcmread(path, force=False)
    except InvalidDicomError as exc:
        raise DecodeError(DecodeProblem.NOT_DICOM, "not a DICOM Part 10 file") from exc
    except Exception as exc:  # pydicom raises many types for damaged files
        raise DecodeError(DecodeProblem.UNREADABLE, one_line(exc)) from exc
    if "TransferSyntaxUID" not in ds.file_meta:
        raise DecodeError(
            DecodeProblem.UNREADABLE, "file meta has no Transfer Syntax UID (truncated header?)"
        )
    return ds


def scanner_group(ds: Dataset) -> tuple[str, str]:
    """``(Manufacturer, ManufacturerModelName)``, each ``"UNKNOWN"`` when missing or empty."""
    manufacturer, model = (
        str(ds.get(keyword) or "").strip() or UNKNOWN
        for keyword in ("Manufacturer", "ManufacturerModelName")
    )
    return manufacturer, model


def decode_image(ds: Dataset) -> np.ndarray:
    """The single-frame greyscale image of ``ds`` as float32 (rows, columns).

    The modality LUT (rescale slope/intercept or LUT sequence) is applied, and MONOCHROME1
    images are inverted over their representable output range so that every image has
    MONOCHROME2 polarity. Raises `DecodeError` for what cannot be decoded.
    """
    _check_decodable(ds)
    try:
        image = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            lo, hi = _output_range(ds)
            image = (lo + hi) - image
    except Exception as exc:  # missing decoder plugins, corrupt streams, malformed LUTs, ...
        syntax = ds.file_meta.TransferSyntaxUID
        raise DecodeError(DecodeProblem.UNDECODABLE, f"{syntax.name}: {one_line(exc)}") from exc
    return image.astype(np.float32)


def _check_decodable(ds: Dataset) -> None:
    if "PixelData" not in ds:
        raise DecodeError(DecodeProblem.NO_PIXELS, "no Pixel Data (7FE0,0010) element")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise DecodeError(
            DecodeProblem.MULTI_FRAME, f"multi-frame not supported yet ({frames} frames)"
        )
    samples = ds.get("SamplesPerPixel", 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if samples != 1 or photometric not in MONOCHROME:
        raise DecodeError(
            DecodeProblem.COLOUR,
            f"only greyscale images are supported (SamplesPerPixel {samples}, "
            f"PhotometricInterpretation {photometric or 'missing'})",
        )
    missing = [keyword for keyword in _REQUIRED_PIXEL_MODULE if ds.get(keyword) is None]
    if missing:
        raise DecodeError(DecodeProblem.UNDECODABLE, f"missing {', '.join(missing)}")
    meta = ds.get("file_meta")
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None:
        raise DecodeError(DecodeProblem.UNDECODABLE, "no Transfer Syntax UID in the file meta")
    if not syntax.is_compressed:
        expected = math.ceil(ds.Rows * ds.Columns * ds.BitsAllocated / 8)
        actual = len(ds.PixelData)
        if actual < expected:
            raise DecodeError(
                DecodeProblem.TRUNCATED,
                f"pixel data has {actual} bytes, {ds.Rows}x{ds.Columns} pixels of "
                f"{ds.BitsAllocated} bits need {expected} (truncated file?)",
            )


def _output_range(ds: Dataset) -> tuple[float, float]:
    """Modality-LUT outputs of the smallest and largest storable values, low first."""
    bits, signed = ds.BitsStored, ds.PixelRepresentation == 1
    storable = (
        np.array([-(1 << (bits - 1)), (1 << (bits - 1)) - 1])
        if signed
        else np.array([0, (1 << bits) - 1])
    )
    ends = np.asarray(apply_modality_lut(storable, ds), dtype=np.float64)
    return float(ends.min()), float(ends.max())
