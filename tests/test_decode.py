"""Decoding: modality LUT, MONOCHROME1 inversion, and a DecodeError for each unusable case."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import (
    MANUFACTURER,
    MODEL,
    CtSpec,
    compress_with_dcmtk,
    ct_dataset,
    default_pixels,
    storable_range,
    write_ct,
)
from pydicom import uid
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless

from site_client.decode import (
    UNKNOWN,
    DecodeError,
    DecodeProblem,
    decode_image,
    read_dicom,
    representative_frame,
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


def _corrupt_compressed_stream() -> Dataset:
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
        (_corrupt_compressed_stream, DecodeProblem.UNDECODABLE, "JPEG-LS"),
        (_bad_bits_allocated, DecodeProblem.UNDECODABLE, "Bits Allocated"),
        (_without_file_meta_syntax, DecodeProblem.UNDECODABLE, "Transfer Syntax"),
    ],
)
def test_decode_errors(make: Callable[[], Dataset], category: DecodeProblem, text: str) -> None:
    with pytest.raises(DecodeError, match=text) as caught:
        decode_image(make())
    assert caught.value.category == category
    assert "\n" not in str(caught.value)


def _three_frames(ds: Dataset) -> np.ndarray:
    """Give ``ds`` (3 frames) distinct frames: frame i holds a quarter of the first frame
    plus 100 i (within the storable range)."""
    stored = ds.pixel_array[0].astype(np.int32) // 4
    frames = np.stack([stored + 100 * i for i in range(3)]).astype(ds.pixel_array.dtype)
    ds.PixelData = frames.tobytes()
    return frames


def test_multi_frame_gives_the_middle_frame_with_the_modality_lut() -> None:
    ds = ct_dataset(CtSpec(frames=3))
    frames = _three_frames(ds)
    assert representative_frame(ds) == 1
    expected = frames[1] * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(decode_image(ds), expected)


def test_enhanced_multi_frame_uses_the_frame_s_own_rescale() -> None:
    ds = ct_dataset(CtSpec(frames=3))
    frames = _three_frames(ds)
    del ds.RescaleSlope, ds.RescaleIntercept
    per_frame = []
    for i in range(3):
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = 2.0, -1000.0 - 10 * i
        transform.RescaleType = "HU"
        item = Dataset()
        item.PixelValueTransformationSequence = [transform]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    np.testing.assert_allclose(decode_image(ds), frames[1] * 2.0 - 1010.0)
    # Shared functional groups apply when no frame has its own.
    shared = Dataset()
    shared.PixelValueTransformationSequence = [per_frame[2].PixelValueTransformationSequence[0]]
    del ds.PerFrameFunctionalGroupsSequence
    ds.SharedFunctionalGroupsSequence = [shared]
    np.testing.assert_allclose(decode_image(ds), frames[1] * 2.0 - 1020.0)


@pytest.mark.parametrize(
    "name",
    ["emri_small_jpeg_2k_lossless.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm"],
)
def test_compressed_multi_frame_decodes_like_its_uncompressed_twin(name: str) -> None:
    # Real 10-frame MR files from pydicom's test data (pydicom-data).
    plain = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    compressed = pydicom.dcmread(get_testdata_file(name))
    assert int(compressed.NumberOfFrames) == 10
    np.testing.assert_array_equal(decode_image(compressed), decode_image(plain))
    np.testing.assert_array_equal(decode_image(plain), plain.pixel_array[5])


def test_truncated_multi_frame_is_named() -> None:
    ds = ct_dataset(CtSpec(frames=3))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    with pytest.raises(DecodeError, match="3 frame") as caught:
        decode_image(ds)
    assert caught.value.category == DecodeProblem.TRUNCATED


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


def _dcmtk(tool: str, *options: str) -> Callable[[Path, Path], None]:
    def compress(source: Path, target: Path) -> None:
        compress_with_dcmtk(source, target, tool, *options)

    return compress


def _pydicom(syntax: str, **options: object) -> Callable[[Path, Path], None]:
    def compress(source: Path, target: Path) -> None:
        ds = pydicom.dcmread(source)
        ds.compress(syntax, **options)
        ds.save_as(target)

    return compress


#: (how the file was compressed, its transfer syntax, bits stored, lossless)
COMPRESSIONS = [
    (_dcmtk("dcmcjpeg", "+eb"), uid.JPEGBaseline8Bit, 8, False),
    (_dcmtk("dcmcjpeg", "+ee"), uid.JPEGExtended12Bit, 8, False),
    (_dcmtk("dcmcjpeg", "+e1"), uid.JPEGLosslessSV1, 12, True),
    (_dcmtk("dcmcjpeg", "+el"), uid.JPEGLossless, 12, True),
    (_dcmtk("dcmcjpls", "+el"), uid.JPEGLSLossless, 12, True),
    (_dcmtk("dcmcjpls", "+en"), uid.JPEGLSNearLossless, 12, False),
    (_dcmtk("dcmcrle"), uid.RLELossless, 12, True),
    (_pydicom(uid.JPEG2000Lossless), uid.JPEG2000Lossless, 12, True),
    (_pydicom(uid.JPEG2000, j2k_psnr=[60]), uid.JPEG2000, 12, False),
]


def _soft_tissue(tmp_path: Path, bits: int) -> Path:
    """A CT file of noisy soft tissue, stored in ``bits`` bits."""
    rng = np.random.default_rng(5)
    if bits == 8:
        spec = CtSpec(bits_allocated=8, bits_stored=8, intercept=0.0, rows=40, columns=48)
        pixels = rng.integers(60, 200, (40, 48)).astype(np.uint8)
    else:
        spec = CtSpec(rows=40, columns=48)
        pixels = rng.integers(800, 1400, (40, 48)).astype(np.uint16)
    return write_ct(tmp_path / "original.dcm", dataclasses.replace(spec, pixels=pixels))


@pytest.mark.parametrize(
    ("compress", "syntax", "bits", "lossless"),
    COMPRESSIONS,
    ids=[f"{c[1].name} {c[2]}-bit" for c in COMPRESSIONS],
)
def test_compressed_files_decode_like_their_originals(
    compress: Callable[[Path, Path], None],
    syntax: uid.UID,
    bits: int,
    lossless: bool,
    tmp_path: Path,
) -> None:
    """Files compressed by dcmtk (and by pydicom's JPEG 2000 encoder) decode to the image
    of the uncompressed original: exactly when lossless, closely when lossy."""
    original = _soft_tissue(tmp_path, bits)
    target = tmp_path / "compressed.dcm"
    compress(original, target)
    ds = read_dicom(target)
    assert ds.file_meta.TransferSyntaxUID == syntax
    image, expected = decode_image(ds), decode_image(read_dicom(original))
    if lossless:
        np.testing.assert_array_equal(image, expected)
    else:
        assert np.abs(image - expected).mean() < 8  # modality units, default quality


def test_12_bit_lossy_jpeg_is_undecodable_with_its_reason(tmp_path: Path) -> None:
    """No permissively licensed decoder reads 12-bit JPEG Extended (only the GPL
    pylibjpeg-libjpeg does): such a file goes to quarantine, saying so."""
    target = tmp_path / "compressed.dcm"
    _dcmtk("dcmcjpeg", "+ee")(_soft_tissue(tmp_path, 12), target)
    with pytest.raises(DecodeError, match=r"JPEG Extended.*12-bit") as caught:
        decode_image(read_dicom(target))
    assert caught.value.category == DecodeProblem.UNDECODABLE


def test_monochrome1_compressed_file_is_inverted_like_the_original(tmp_path: Path) -> None:
    spec = CtSpec(rows=40, columns=48, photometric="MONOCHROME1")
    original = write_ct(tmp_path / "original.dcm", spec)
    target = tmp_path / "compressed.dcm"
    _dcmtk("dcmcjpls", "+el")(original, target)
    np.testing.assert_array_equal(
        decode_image(read_dicom(target)), decode_image(read_dicom(original))
    )
