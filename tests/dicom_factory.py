"""Small synthetic CT DICOM files for tests, full of fake PHI.

Every identifying value a dataset carries is listed in `PHI_STRINGS` (besides its UIDs,
which `original_uids` lists): in standard attributes, in a private block, in nested
sequences, in a 60xx overlay comment, in 50xx curve data and in the file meta.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

UID_ROOT = "1.3.6.1.4.1.99999.7"
PRIVATE_CREATOR = "ACME HOSPITAL PACS 1.0"
MANUFACTURER = "ACME Medical"
MODEL = "Scanomatic 3000"
SERIAL_NUMBER = "SN-778899"
STATION_NAME = "CTSTATION7"

PATIENT_NAME = "DOE^JOHN"
PATIENT_ID = "MRN4711XYZ"
PHI_STRINGS = (
    PATIENT_NAME,
    PATIENT_ID,
    "19530817",  # birth date
    "20240315",  # study date
    "101530",  # study time
    "ACC99887766",
    "St Elsewhere General Hospital",
    "12 Elm Street Springfield",
    "HOUSE^GREGORY",
    "RATCHED^MILDRED",
    "OTHERID-5150",
    "RP-555-111",
    "SPS-222-333",
    "STUDY-0042",
    "chest pain after fall",
    "ELSEWHERE_PACS",
    PRIVATE_CREATOR,
)


def uid(n: int) -> str:
    """A made-up UID under the test root."""
    return f"{UID_ROOT}.{n}"


@dataclass(frozen=True)
class CtSpec:
    """What a synthetic CT file holds. ``pixels`` are stored values (default: a ramp over
    the storable range); ``None`` for ``sop_instance_uid`` derives one from ``index``."""

    index: int = 1
    patient_name: str = PATIENT_NAME
    patient_id: str = PATIENT_ID
    study_instance_uid: str = uid(100)
    series_instance_uid: str = uid(200)
    sop_instance_uid: str | None = None
    referenced_sop_instance_uid: str = uid(999)
    photometric: str = "MONOCHROME2"
    rows: int = 16
    columns: int = 12
    bits_allocated: int = 16
    bits_stored: int = 12
    pixel_representation: int = 0
    slope: float = 1.0
    intercept: float = -1024.0
    pixels: np.ndarray | None = None
    with_pixels: bool = True
    frames: int = 1
    samples_per_pixel: int = 1

    @property
    def sop_uid(self) -> str:
        return self.sop_instance_uid or uid(1000 + self.index)


def storable_range(spec: CtSpec) -> tuple[int, int]:
    """Smallest and largest stored value the spec's BitsStored/PixelRepresentation allow."""
    if spec.pixel_representation:
        return -(1 << (spec.bits_stored - 1)), (1 << (spec.bits_stored - 1)) - 1
    return 0, (1 << spec.bits_stored) - 1


def default_pixels(spec: CtSpec) -> np.ndarray:
    """A ramp over the storable range, shaped (rows, columns)."""
    lo, hi = storable_range(spec)
    ramp = np.linspace(lo, hi, spec.rows * spec.columns).round()
    return ramp.reshape(spec.rows, spec.columns).astype(np.int64)


def original_uids(spec: CtSpec) -> tuple[str, ...]:
    """Every UID a dataset built from ``spec`` carries that de-identification replaces."""
    return (
        spec.sop_uid,
        spec.study_instance_uid,
        spec.series_instance_uid,
        spec.referenced_sop_instance_uid,
    )


def ct_dataset(spec: CtSpec = CtSpec()) -> Dataset:
    """A CT image dataset with file meta, PHI everywhere (see the module docstring)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = spec.sop_uid
    ds.file_meta.SourceApplicationEntityTitle = "ELSEWHERE_PACS"

    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = spec.sop_uid
    ds.StudyInstanceUID = spec.study_instance_uid
    ds.SeriesInstanceUID = spec.series_instance_uid
    ds.Modality = "CT"
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = "19530817"
    ds.PatientSex = "M"
    ds.PatientAddress = "12 Elm Street Springfield"
    ds.OtherPatientIDs = "OTHERID-5150"
    ds.StudyDate = ds.ContentDate = "20240315"
    ds.StudyTime = ds.ContentTime = "101530"
    ds.AccessionNumber = "ACC99887766"
    ds.StudyID = "STUDY-0042"
    ds.StudyDescription = "CT for DOE^JOHN"
    ds.InstitutionName = "St Elsewhere General Hospital"
    ds.ReferringPhysicianName = "HOUSE^GREGORY"
    ds.OperatorsName = "RATCHED^MILDRED"
    ds.ImageComments = "chest pain after fall"
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL
    ds.DeviceSerialNumber = SERIAL_NUMBER
    ds.StationName = STATION_NAME
    ds.InstanceNumber = spec.index

    block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "LO", f"{spec.patient_name} {spec.patient_id}")
    ds.add_new(0x60004000, "LT", f"overlay note for {spec.patient_name}")
    ds.add_new(0x50002500, "LO", f"curve of {spec.patient_id}")
    ds.RequestAttributesSequence = [_request_attributes()]
    ds.ReferencedImageSequence = [_referenced_image(spec)]
    # A sequence Table E.1-1 does not list: its items are walked, not dropped.
    procedure = Dataset()
    procedure.CodeValue = "CTCHEST"
    procedure.CodingSchemeDesignator = "99LOCAL"
    procedure.CodeMeaning = "CT chest"
    procedure.RequestAttributesSequence = [_request_attributes()]
    procedure.ContentCreatorName = "HOUSE^GREGORY"
    ds.ProcedureCodeSequence = [procedure]

    _add_image(ds, spec)
    return ds


def _request_attributes() -> Dataset:
    item = Dataset()
    item.AccessionNumber = "ACC99887766"
    item.RequestedProcedureID = "RP-555-111"
    item.ScheduledProcedureStepID = "SPS-222-333"
    return item


def _referenced_image(spec: CtSpec) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = spec.referenced_sop_instance_uid
    item.private_block(0x0011, PRIVATE_CREATOR, create=True).add_new(0x01, "LO", spec.patient_name)
    return item


def _add_image(ds: Dataset, spec: CtSpec) -> None:
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.BitsAllocated = spec.bits_allocated
    ds.BitsStored = spec.bits_stored
    ds.HighBit = spec.bits_stored - 1
    ds.PixelRepresentation = spec.pixel_representation
    ds.SamplesPerPixel = spec.samples_per_pixel
    ds.PhotometricInterpretation = spec.photometric
    ds.RescaleSlope = spec.slope
    ds.RescaleIntercept = spec.intercept
    if spec.samples_per_pixel > 1:
        ds.PlanarConfiguration = 0
    if spec.frames > 1:
        ds.NumberOfFrames = spec.frames
    if not spec.with_pixels:
        return
    pixels = default_pixels(spec) if spec.pixels is None else spec.pixels
    signed = "" if spec.pixel_representation else "u"
    dtype = np.dtype(f"{signed}int{spec.bits_allocated}")
    samples = np.repeat(pixels[..., None], spec.samples_per_pixel, axis=-1)
    frames = np.repeat(samples[None], spec.frames, axis=0)
    ds.PixelData = frames.astype(dtype).tobytes()


def write_ct(path: Path, spec: CtSpec = CtSpec()) -> Path:
    """Write `ct_dataset(spec)` to ``path`` (folders created) and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ct_dataset(spec), enforce_file_format=True)
    return path


def truncate_in_pixel_data(path: Path) -> None:
    """Cut ``path`` in the middle of its pixel data (the last element of the file)."""
    data = path.read_bytes()
    ds = pydicom.dcmread(path)
    path.write_bytes(data[: len(data) - len(ds.PixelData) // 2])


def compress_with_dcmtk(source: Path, target: Path, tool: str, *options: str) -> Path:
    """``target``: ``source`` compressed by a dcmtk tool (dcmcjpeg, dcmcjpls, dcmcrle)."""
    subprocess.run([tool, *options, str(source), str(target)], check=True, capture_output=True)
    return target
