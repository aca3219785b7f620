"""Reading DICOM files and decoding their pixels into images in modality units.

Compressed transfer syntaxes are decoded by pydicom's pixel data plugins: GDCM (JPEG
baseline, extended 8-bit and lossless, JPEG-LS, JPEG 2000, RLE) and pylibjpeg with
OpenJPEG (JPEG 2000). 12-bit JPEG Extended needs pylibjpeg-libjpeg, which is GPL-licensed
and therefore not a dependency: such files are quarantined unless a site installs it.

`decode_image` gives every image the same meaning: pixel values after the modality LUT
(Hounsfield units for CT) and MONOCHROME2 polarity (higher is brighter). A multi-frame
instance gives its middle frame (`representative_frame`), with that frame's rescale from
the per-frame or shared functional groups (enhanced IODs). What it cannot decode raises
`DecodeError` with a category (for quarantine counts) and a one-line reason.
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, pixel_array

UNKNOWN = "UNKNOWN"
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_REQUIRED_PIXEL_MODULE = ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation")


class DecodeProblem(StrEnum):
    """Why a file yields no image: the quarantine's reason categories for decoding."""

    NOT_DICOM = "not DICOM"
    UNREADABLE = "unreadable DICOM"
    NO_PIXELS = "no pixel data"
    COLOUR = "colour"
    TRUNCATED = "truncated pixel data"
    UNDECODABLE = "undecodable pixels"


class UnusableInput(ValueError):
    """An input that goes to quarantine: ``category`` (a reason category such as a
    `DecodeProblem`) says why, the one-line message says what."""

    def __init__(self, category: StrEnum, reason: str) -> None:
        super().__init__(reason)
        self.category = category


class DecodeError(UnusableInput):
    """A file or dataset yields no image (``category`` is a `DecodeProblem`)."""


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


def representative_frame(ds: Dataset) -> int:
    """The 0-based index of the frame that stands for a multi-frame instance: the middle
    one (of 1 frame, frame 0), where a volume or a cine loop is most likely to show the
    anatomy the label is about."""
    return _frame_count(ds) // 2


def _frame_count(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError) as exc:
        raise DecodeError(
            DecodeProblem.UNDECODABLE, f"invalid NumberOfFrames {ds.NumberOfFrames!r}"
        ) from exc


def frame_rescale(ds: Dataset, frame: int) -> Dataset:
    """The dataset whose modality LUT applies to ``frame`` of ``ds``: ``ds`` itself, or, for
    an enhanced multi-frame IOD, the frame's Pixel Value Transformation (per-frame
    functional group, else shared) carried on a copy of the pixel module attributes."""
    for groups in (
        ds.get("PerFrameFunctionalGroupsSequence"),
        ds.get("SharedFunctionalGroupsSequence"),
    ):
        if not groups:
            continue
        item = groups[frame] if len(groups) > frame else groups[0]
        transform = item.get("PixelValueTransformationSequence")
        if transform:
            rescale = Dataset()
            for keyword in ("BitsStored", "PixelRepresentation"):
                rescale[keyword] = ds[keyword]
            for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
                if keyword in transform[0]:
                    rescale[keyword] = transform[0][keyword]
            return rescale
    return ds


def decode_image(ds: Dataset) -> np.ndarray:
    """The greyscale image of ``ds`` as float32 (rows, columns): its only frame, or its
    `representative_frame`.

    The modality LUT (rescale slope/intercept or LUT sequence; per frame for enhanced
    IODs) is applied, and MONOCHROME1 images are inverted over their representable output
    range so that every image has MONOCHROME2 polarity. Raises `DecodeError` for what cannot
    be decoded.
    """
    _check_decodable(ds)
    frame = representative_frame(ds)
    try:
        stored = pixel_array(ds, index=frame) if _frame_count(ds) > 1 else ds.pixel_array
        rescale = frame_rescale(ds, frame)
        image = np.asarray(apply_modality_lut(stored, rescale), dtype=np.float64)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            lo, hi = _output_range(ds, rescale)
            image = (lo + hi) - image
    except Exception as exc:  # missing decoder plugins, corrupt streams, malformed LUTs, ...
        syntax = ds.file_meta.TransferSyntaxUID
        raise DecodeError(DecodeProblem.UNDECODABLE, f"{syntax.name}: {one_line(exc)}") from exc
    return image.astype(np.float32)


def verify_pixels(ds: Dataset) -> None:
    """Check that ``ds`` holds a whole image (any photometric interpretation): uncompressed
    pixel data as long as its frames need; compressed pixel data with a fragment stream for
    every frame, whose first frame decodes. Raises `DecodeError` otherwise."""
    _check_pixel_data(ds)
    syntax = ds.file_meta.TransferSyntaxUID
    if not syntax.is_compressed:
        return
    expected = _frame_count(ds)
    try:
        found = sum(1 for _ in generate_frames(ds.PixelData, number_of_frames=expected))
        if found < expected:
            raise DecodeError(
                DecodeProblem.TRUNCATED, f"{syntax.name}: {found} of {expected} frames present"
            )
        # Decoding is the check; raw: no colour conversion of what is not kept.
        pixel_array(ds, index=0, raw=True)
    except DecodeError:
        raise
    except Exception as exc:  # missing decoder plugins, corrupt streams, ...
        raise DecodeError(DecodeProblem.UNDECODABLE, f"{syntax.name}: {one_line(exc)}") from exc


def _check_decodable(ds: Dataset) -> None:
    if "PixelData" not in ds:
        raise DecodeError(DecodeProblem.NO_PIXELS, "no Pixel Data (7FE0,0010) element")
    samples = ds.get("SamplesPerPixel", 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if samples != 1 or photometric not in MONOCHROME:
        raise DecodeError(
            DecodeProblem.COLOUR,
            f"only greyscale images are supported (SamplesPerPixel {samples}, "
            f"PhotometricInterpretation {photometric or 'missing'})",
        )
    _check_pixel_data(ds)


def _check_pixel_data(ds: Dataset) -> None:
    """Pixel data present, its module complete, and (uncompressed) not cut short."""
    if "PixelData" not in ds:
        raise DecodeError(DecodeProblem.NO_PIXELS, "no Pixel Data (7FE0,0010) element")
    missing = [keyword for keyword in _REQUIRED_PIXEL_MODULE if ds.get(keyword) is None]
    if missing:
        raise DecodeError(DecodeProblem.UNDECODABLE, f"missing {', '.join(missing)}")
    meta = ds.get("file_meta")
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None:
        raise DecodeError(DecodeProblem.UNDECODABLE, "no Transfer Syntax UID in the file meta")
    if not syntax.is_compressed:
        frames = _frame_count(ds)
        samples = int(ds.get("SamplesPerPixel") or 1)
        expected = math.ceil(frames * samples * ds.Rows * ds.Columns * ds.BitsAllocated / 8)
        actual = len(ds.PixelData)
        if actual < expected:
            raise DecodeError(
                DecodeProblem.TRUNCATED,
                f"pixel data has {actual} bytes, {frames} frame(s) of {ds.Rows}x{ds.Columns} "
                f"pixels of {samples}x{ds.BitsAllocated} bits need {expected} (truncated file?)",
            )


def _output_range(ds: Dataset, rescale: Dataset) -> tuple[float, float]:
    """Modality-LUT (that of ``rescale``) outputs of the smallest and largest storable
    values of ``ds``, low first."""
    bits, signed = ds.BitsStored, ds.PixelRepresentation == 1
    storable = (
        np.array([-(1 << (bits - 1)), (1 << (bits - 1)) - 1])
        if signed
        else np.array([0, (1 << bits) - 1])
    )
    ends = np.asarray(apply_modality_lut(storable, rescale), dtype=np.float64)
    return float(ends.min()), float(ends.max())
