"""Decoding: modality LUT, MONOCHROME1 inversion, and a DecodeError for each unusable case."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import (
    MANUFACTURER,
    MODEL,
    CtSpec,
    ct_dataset,
    default_pixels,
    storable_range,
    write_ct,
)
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless

from site_client.decode import (
    UNKNOWN,
    DecodeError,
    DecodeProblem,
    decode_image,
    read_dicom,
    scanner_group,
)

#: (BitsAllocated, BitsStored, PixelRepresentation, RescaleSlope, RescaleIntercept)
PIXEL_FORMATS = [
    (16, 12, 0, 1.0, -1024.0),
    (16, 16, 1, 1.0, 0.0),
    (16, 10, 1, 0.5, -100.0),
    (16, 12, 1, 2.5, -1000.0),
    (8, 8, 0, 1.0, 0.0),
]


def _spec(fmt: tuple[int, int, int, float, float], **changes: object) -> CtSpec:
    bits_allocated, bits_stored, representation, slope, intercept = fmt
    spec = CtSpec(
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        pixel_representation=representation,
        slope=slope,
        intercept=intercept,
    )
    return dataclasses.replace(spec, **changes)


@pytest.mark.parametrize("fmt", PIXEL_FORMATS)
def test_modality_lut_is_applied(fmt: tuple[int, int, int, float, float]) -> None:
    spec = _spec(fmt)
    image = decode_image(ct_dataset(spec))
    assert image.dtype == np.float32
    assert image.shape == (spec.rows, spec.columns)
    expected = default_pixels(spec) * spec.slope + spec.intercept
    np.testing.assert_allclose(image, expected)


@pytest.mark.parametrize("fmt", PIXEL_FORMATS)
def test_monochrome1_decodes_like_its_monochrome2_twin(
    fmt: tuple[int, int, int, float, float],
) -> None:
    twin = _spec(fmt)
    lo, hi = storable_range(twin)
    inverted = _spec(fmt, photometric="MONOCHROME1", pixels=lo + hi - default_pixels(twin))
    np.testing.assert_allclose(decode_image(ct_dataset(inverted)), decode_image(ct_dataset(twin)))


def _without_file_meta_syntax() -> Dataset:
    ds = ct_dataset()
    del ds.file_meta.TransferSyntaxUID
    return ds


def _truncated() -> Dataset:
    ds = ct_dataset()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    return ds


def _compressed_without_decoder() -> Dataset:
    ds = ct_dataset()
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8 not really JPEG-LS"])
    return ds


def _bad_bits_allocated() -> Dataset:
    ds = ct_dataset()
    ds.BitsAllocated = 12
    return ds


@pytest.mark.parametrize(
    ("make", "category", "text"),
    [
        (lambda: ct_dataset(CtSpec(with_pixels=False)), DecodeProblem.NO_PIXELS, "Pixel Data"),
        (lambda: ct_dataset(CtSpec(frames=3)), DecodeProblem.MULTI_FRAME, "multi-frame"),
        (
            lambda: ct_dataset(CtSpec(samples_per_pixel=3, photometric="RGB")),
            DecodeProblem.COLOUR,
            "SamplesPerPixel 3",
        ),
        (
            lambda: ct_dataset(CtSpec(photometric="PALETTE COLOR")),
            DecodeProblem.COLOUR,
            "PALETTE COLOR",
        ),
        (_truncated, DecodeProblem.TRUNCATED, "truncated"),
        (_compressed_without_decoder, DecodeProblem.UNDECODABLE, "JPEG-LS"),
        (_bad_bits_allocated, DecodeProblem.UNDECODABLE, "Bits Allocated"),
        (_without_file_meta_syntax, DecodeProblem.UNDECODABLE, "Transfer Syntax"),
    ],
)
def test_decode_errors(make: Callable[[], Dataset], category: DecodeProblem, text: str) -> None:
    with pytest.raises(DecodeError, match=text) as caught:
        decode_image(make())
    assert caught.value.category == category
    assert "\n" not in str(caught.value)


def test_multi_frame_message() -> None:
    with pytest.raises(DecodeError, match="multi-frame not supported yet"):
        decode_image(ct_dataset(CtSpec(frames=2)))


def test_scanner_group() -> None:
    ds = ct_dataset()
    assert scanner_group(ds) == (MANUFACTURER, MODEL)
    del ds.Manufacturer
    ds.ManufacturerModelName = "  "
    assert scanner_group(ds) == (UNKNOWN, UNKNOWN)


def test_read_dicom_classifies_unreadable_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(DecodeError) as caught:
        read_dicom(text)
    assert caught.value.category == DecodeProblem.NOT_DICOM

    cut = write_ct(tmp_path / "cut.dcm")
    cut.write_bytes(cut.read_bytes()[:200])  # inside the file meta
    with pytest.raises(DecodeError) as caught:
        read_dicom(cut)
    assert caught.value.category == DecodeProblem.UNREADABLE

    good = read_dicom(write_ct(tmp_path / "good.dcm"))
    assert decode_image(good).shape == (CtSpec().rows, CtSpec().columns)
