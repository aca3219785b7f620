"""Each case's result as DICOM objects for the PACS, filed with the patient's study.

- **Comprehensive 3D SR** (`structured_report`), TID 1500 Measurement Report: the AI model
  as device observer (its UID derived from the checkpoint's SHA-256) and algorithm (name
  ``medfed <architecture>``, version = the SHA-256); one measurement group for the source
  image, referenced by the SOP Class and Instance UIDs the hospital knows it by, with the
  score (UCUM ``1``), the operating threshold, the finding (lesion, SNOMED CT 52988006:
  present 52101004 / absent 2667000) and the decision's confidence. Complete, unverified
  (preliminary, as the FHIR report).
- **Secondary capture** (`overlay_image`): the stored image (de-identified, decoded, as the
  model saw it), enlarged to at least `OVERLAY_WIDTH` pixels, under a banner with the
  result burnt in; BurnedInAnnotation YES, ImageType DERIVED\\SECONDARY, and it references
  its source image.

Both go into a new series of the patient's study, so they need the hospital's identifiers
(`site_client.delivery.linkage.HospitalLink.missing_for_dicom`): the store keeps none.
Codes of medfed's own use the private coding scheme `MEDFED_SCHEME`.
"""

from __future__ import annotations

import math

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from site_client.delivery.linkage import HospitalLink
from site_client.delivery.results import CaseResult, FrozenModel, OperatingPoint

MEDFED_SCHEME = "99MEDFED"
MANUFACTURER = "medfed"
SR_SERIES_NUMBER = 9901
OVERLAY_SERIES_NUMBER = 9902
#: The overlay's least width in pixels: the banner's text must be legible.
OVERLAY_WIDTH = 512
_FONT_SIZE = 14

_LESION = hd.sr.CodedConcept("52988006", "SCT", "Lesion")
_PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
_ABSENT = hd.sr.CodedConcept("2667000", "SCT", "Absent")
_SCORE = hd.sr.CodedConcept("lesion-score", MEDFED_SCHEME, "Probability of a lesion (AI score)")
_THRESHOLD = hd.sr.CodedConcept("threshold", MEDFED_SCHEME, "Operating threshold")
_CONFIDENCE = hd.sr.CodedConcept("confidence", MEDFED_SCHEME, "Decision confidence")
_EQUIVOCAL = hd.sr.CodedConcept("equivocal", MEDFED_SCHEME, "Equivocal: review advised")
_CONFIDENT = hd.sr.CodedConcept("confident", MEDFED_SCHEME, "Outside the equivocal zone")
_NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
_IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")


def device_uid(model: FrozenModel) -> str:
    """The model's DICOM device UID: ``2.25.`` and the first 128 bits of its SHA-256."""
    return f"2.25.{int(model.sha256[:32], 16)}"


def _source(link: HospitalLink) -> Dataset:
    """The source image as the hospital knows it: patient, study, series and instance (the
    other patient and study attributes, unknown here, empty)."""
    ds = Dataset()
    ds.PatientID = link.patient_id
    ds.PatientName = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = link.study_instance_uid
    ds.StudyID = ""
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.AccessionNumber = link.accession_number
    ds.SeriesInstanceUID = link.series_instance_uid
    ds.SOPClassUID = link.sop_class_uid
    ds.SOPInstanceUID = link.sop_instance_uid
    return ds


def structured_report(
    result: CaseResult, model: FrozenModel, operating: OperatingPoint, link: HospitalLink
) -> hd.sr.Comprehensive3DSR:
    """The Comprehensive 3D SR of ``result`` for the source image ``link`` names."""
    algorithm = hd.sr.AlgorithmIdentification(name=model.name, version=model.sha256)
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(model),
            name=model.name,
            manufacturer_name=MANUFACTURER,
            model_name=model.architecture,
        ),
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier=f"AI result {result.case.case_id}"
        ),
        algorithm_id=algorithm,
        finding_type=_LESION,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(link.sop_class_uid, link.sop_instance_uid)
        ],
        measurements=[
            hd.sr.Measurement(_SCORE, result.score, _NO_UNITS, algorithm_id=algorithm),
            hd.sr.Measurement(_THRESHOLD, operating.threshold, _NO_UNITS),
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(_LESION, _PRESENT if result.positive else _ABSENT),
            hd.sr.QualitativeEvaluation(
                _CONFIDENCE, _EQUIVOCAL if result.equivocal else _CONFIDENT
            ),
        ],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_IMAGING_PROCEDURE,
        imaging_measurements=[group],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[_source(link)],
        content=report,
        series_instance_uid=generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    sr.SeriesDescription = "medfed AI result (preliminary)"
    return sr


def display_pixels(image: np.ndarray) -> np.ndarray:
    """``image`` (a stored case, modality units) as 8-bit grey levels for display: windowed
    to its own 1st and 99th percentiles, as the model's preprocessing scales it."""
    low, high = np.percentile(image, [1, 99])
    return (np.clip((image - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)


def overlay_image(
    result: CaseResult,
    image: np.ndarray,
    model: FrozenModel,
    operating: OperatingPoint,
    link: HospitalLink,
) -> hd.sc.SCImage:
    """A secondary capture: ``image`` (the stored case) with ``result`` burnt in above it."""
    factor = max(1, math.ceil(OVERLAY_WIDTH / image.shape[1]))
    pixels = np.kron(display_pixels(image), np.ones((factor, factor), dtype=np.uint8))
    lines = _banner_lines(result, model, operating)
    banner = Image.new("L", (pixels.shape[1], (len(lines) + 1) * (_FONT_SIZE + 4)), 0)
    draw = ImageDraw.Draw(banner)
    font = ImageFont.load_default(size=_FONT_SIZE)
    for row, line in enumerate(lines):
        draw.text((6, 6 + row * (_FONT_SIZE + 4)), line, fill=255, font=font)
    frame = np.vstack([np.asarray(banner, dtype=np.uint8), pixels])
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=_source(link),
        pixel_array=frame,
        photometric_interpretation="MONOCHROME2",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=generate_uid(),
        series_number=OVERLAY_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "P"),
    )
    # highdicom wants an orientation for patient images; the source's orientation and
    # laterality are not known here, and both are type 2C: present and empty says unknown.
    sc.PatientOrientation = None
    sc.Laterality = None
    sc.BurnedInAnnotation = "YES"
    sc.SeriesDescription = "medfed AI overlay (preliminary)"
    sc.DerivationDescription = (
        "medfed AI result burnt into the stored image (de-identified, decoded); preliminary, "
        "not verified by a clinician"
    )
    reference = Dataset()
    reference.ReferencedSOPClassUID = link.sop_class_uid
    reference.ReferencedSOPInstanceUID = link.sop_instance_uid
    sc.SourceImageSequence = [reference]
    return sc


def _banner_lines(result: CaseResult, model: FrozenModel, operating: OperatingPoint) -> list[str]:
    finding = "LESION PRESENT" if result.positive else "NO LESION FOUND"
    confidence = (
        "EQUIVOCAL: review advised"
        if result.equivocal
        else f"outside the equivocal zone (+/-{operating.band:g})"
    )
    return [
        f"AI RESULT, NOT VERIFIED - {model.name}",
        f"{finding}: score {result.score:.3f}, threshold {operating.threshold:.3f}",
        confidence,
        f"model SHA-256 {model.sha256[:32]}...",
    ]
