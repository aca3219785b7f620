"""Intake of one DICOM instance into a site store, shared by ingest (a folder) and the
DICOM receiver (instances arriving over the network), and the intake report of a session.

`InstanceIntake` takes a pydicom `Dataset` through the checks (SOP Instance UID present and
not seen twice in the session, burned-in text per the site policy), de-identifies and decodes
it, and stores its image under the case id (keyed pseudonym of the SOP Instance UID). What
it cannot use raises `UnusableInput` (a `DecodeError` when decoding fails), whose category
and one-line reason the caller puts in the quarantine.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date

import numpy as np
from pydicom.dataset import Dataset

from site_client.burned_in import burned_in_text_risk, mask_regions
from site_client.decode import UnusableInput, decode_image, one_line, scanner_group
from site_client.deid import Deidentifier
from site_client.intake_report import IntakeProblem
from site_client.store import Acquisition, SiteStore


@dataclass(frozen=True)
class IntakenImage:
    """A de-identified, decoded instance: its case id, image (float32, 2-D), scanner group
    whether burned-in text regions were masked, and its acquisition."""

    case_id: str
    image: np.ndarray
    manufacturer: str
    model: str
    masked_text: bool
    acquisition: Acquisition


#: A DICOM code string as it may leave the site in aggregate counts (PS3.5 CS: upper-case
#: letters, digits, space and underscore, at most 16 characters).
_CODE_STRING = re.compile(r"^[A-Z0-9_ ]{1,16}$")
#: The header dates that say when a study was acquired, the most general first.
_STUDY_DATES = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
_EARLIEST_YEAR = 1895  # Roentgen


def acquisition(original: Dataset, clean: Dataset) -> Acquisition:
    """The `Acquisition` of an instance: modality, body part and pixel spacing from its
    de-identified header ``clean`` (``"OTHER"`` for a value that is not a plain code
    string; no spacing unless PixelSpacing holds two positive finite numbers), and the
    study year from its ``original`` header, whose dates de-identification shifts (the
    first valid ``YYYYMMDD`` of `_STUDY_DATES`; None if none is)."""
    codes = []
    for keyword in ("Modality", "BodyPartExamined"):
        value = str(clean.get(keyword) or "").strip().upper()
        codes.append(value if not value or _CODE_STRING.match(value) else "OTHER")
    year = None
    for keyword in _STUDY_DATES:
        value = str(original.get(keyword) or "").strip()
        if len(value) == 8 and value.isdigit():
            candidate = int(value[:4])
            if _EARLIEST_YEAR <= candidate <= date.today().year:
                year = candidate
                break
    return Acquisition(codes[0], codes[1], year, _pixel_spacing(clean))


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """PixelSpacing (mm between rows, between columns) if it holds two positive numbers."""
    try:
        values = [float(v) for v in ds.get("PixelSpacing") or []]
    except (TypeError, ValueError):
        return None
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        return None
    return values[0], values[1]


class InstanceIntake:
    """De-identifies and decodes the instances of one session for ``store``.

    ``stored_ids``: case ids the store holds already (`case_id` tells a caller whether an
    instance is new before the work is done).
    """

    def __init__(self, store: SiteStore, stored_ids: set[str]) -> None:
        self.store = store
        self.stored_ids = stored_ids
        self.deidentifier = Deidentifier(store.secret)
        self._first_source_of_uid: dict[str, str] = {}

    def case_id(self, ds: Dataset, source: str) -> str:
        """The case id of ``ds`` (from ``source``). Raises `UnusableInput` when it has no SOP
        Instance UID or another source of this session had the same one."""
        sop_uid = str(ds.get("SOPInstanceUID") or "").strip()
        if not sop_uid:
            raise UnusableInput(IntakeProblem.NO_UID, "no SOP Instance UID (0008,0018)")
        first = self._first_source_of_uid.setdefault(sop_uid, source)
        if first != source:
            raise UnusableInput(IntakeProblem.DUPLICATE, f"same SOP Instance UID as {first}")
        return self.deidentifier.pseudonym(sop_uid, "case")

    def image(self, ds: Dataset, case_id: str) -> IntakenImage:
        """``ds`` de-identified and decoded, masked where the site policy says. Raises
        `UnusableInput` for an instance that goes to quarantine."""
        text_risk = burned_in_text_risk(ds)
        burned_in = self.store.policy.burned_in_text
        if text_risk and burned_in.action == "quarantine":
            raise UnusableInput(
                IntakeProblem.BURNED_IN_TEXT,
                f"{text_risk}; the site policy quarantines such images ([burned_in_text])",
            )
        try:
            clean = self.deidentifier.deidentify(ds)
        except Exception as exc:  # a damaged element surfaces only when it is converted
            raise UnusableInput(IntakeProblem.DEID_FAILED, one_line(exc)) from exc
        image = decode_image(clean)
        if text_risk:
            image = mask_regions(image, burned_in.regions)
        manufacturer, model = scanner_group(clean)
        return IntakenImage(
            case_id, image, manufacturer, model, bool(text_risk), acquisition(ds, clean)
        )
