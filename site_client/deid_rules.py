"""The rules behind PS3.15's "clean" action (C) and the private-attribute safe-list.

- `DateShift`: Retain Longitudinal Temporal Information with Modified Dates. Every date and
  time of one patient moves by the same keyed offset (whole days plus seconds), so intervals
  between a patient's studies survive and the real dates do not.
- `clean_descriptor`: Clean Descriptors. A free-text description keeps only the words of a
  fixed vocabulary of imaging terms (`SAFE_DESCRIPTOR_WORDS`) and short numbers; everything
  else (names, dates, accession numbers, free text) is dropped.
- `SAFE_PRIVATE_ATTRIBUTES`: private attributes kept under Retain Safe Private, listed by
  private creator and element, each holding acquisition physics only; kept only when its
  value is numeric.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from typing import TypeVar

#: Imaging terms that identify no one: modalities, anatomy (DICOM Body Part Examined
#: defined terms and their common short forms), views and orientations, sequences and
#: reconstructions, contrast phases.
_VOCABULARY = """
    CT MR MRI CR DX DR MG US PT PET NM XA RF OT SC XR SPECT CTA MRA TOMO TOMOSYNTHESIS
    HEAD BRAIN NECK CSPINE TSPINE LSPINE SPINE CHEST THORAX LUNG LUNGS HEART CARDIAC
    ABDOMEN ABD PELVIS LIVER KIDNEY RENAL BREAST BREASTS HIP KNEE SHOULDER ANKLE WRIST
    HAND FOOT ELBOW LEG ARM SKULL SINUS ORBIT FACE WHOLE BODY EXTREMITY AORTA CAROTID
    PROSTATE BLADDER PANCREAS COLON BONE BONES SOFT TISSUE VASCULAR CORONARY
    AX AXIAL SAG SAGITTAL COR CORONAL OBL OBLIQUE TRA TRANSVERSE
    AP PA LAT LATERAL LL RL OBLQ PORTABLE ERECT UPRIGHT SUPINE PRONE DECUBITUS
    CC MLO ML LM XCCL SPOT MAG L R LEFT RIGHT BILAT BILATERAL
    SCREENING DIAGNOSTIC ROUTINE STANDARD PROTOCOL SERIES STUDY EXAM SCAN VIEW IMAGE
    T1 T2 T1W T2W PD PDW FLAIR DWI DTI ADC SWI GRE SE TSE FSE STIR MPRAGE SPGR DIXON
    FS FATSAT FAT SAT WATER INPHASE OPPHASE IN OPP PHASE EPI BOLD PERFUSION DIFFUSION
    LOCALIZER LOCALISER SCOUT TOPOGRAM SURVEY CALIBRATION
    HELICAL SPIRAL SEQUENTIAL RECON MIP MINIP MPR VR REFORMAT THIN THICK SLICE SLICES
    SHARP SMOOTH KERNEL LOW HIGH DOSE ULTRA RES RESOLUTION
    CONTRAST NONCONTRAST C PRE POST DELAYED ARTERIAL VENOUS PORTAL EARLY LATE NATIVE
    W WO W/O WITH WITHOUT AND OR OF THE TO IV ORAL
    MM CM SEC MS
"""
SAFE_DESCRIPTOR_WORDS = frozenset(_VOCABULARY.split())
#: A short number, alone or with a unit or sequence letter (``5MM``, ``2.5``, ``3D``).
_SHORT_NUMBER = re.compile(r"^\d{1,3}(\.\d{1,2})?[A-Z]{0,2}$")
_WORD = re.compile(r"[A-Za-z0-9.+/]+")

#: Private attributes kept under Retain Safe Private: (private creator, element byte).
#: Each carries an acquisition parameter (no date, name, identifier or free text).
SAFE_PRIVATE_ATTRIBUTES = frozenset(
    {
        ("SIEMENS MR HEADER", 0x0019, 0x0C),  # B value (s/mm2)
        ("SIEMENS MR HEADER", 0x0019, 0x0E),  # diffusion gradient direction
        ("GEMS_ACQU_01", 0x0019, 0x8C),  # number of excitations
        ("GEMS_PARM_01", 0x0043, 0x39),  # slice spacing and b value
        ("Philips MR Imaging DD 001", 0x2001, 0x03),  # diffusion b-factor
        ("Philips MR Imaging DD 001", 0x2005, 0x30),  # repetition time
    }
)


def clean_descriptor(text: str, max_length: int = 64) -> str:
    """``text`` reduced to its safe words (`SAFE_DESCRIPTOR_WORDS`, short numbers), in
    order, upper-cased and joined by single spaces, cut to ``max_length`` characters; empty
    when no word is safe."""
    kept = [
        word
        for word in (w.upper() for w in _WORD.findall(text))
        if word.strip(".+") in SAFE_DESCRIPTOR_WORDS or _SHORT_NUMBER.match(word)
    ]
    return " ".join(kept)[:max_length].strip()


@dataclass(frozen=True)
class DateShift:
    """One patient's offset: ``days`` back (whole days) and ``seconds`` forward (0-86399).

    A date paired with its time (StudyDate with StudyTime) moves by both, so the moment they
    name moves by exactly the offset; a date alone moves by the days, a time alone by the
    seconds (modulo a day). Values that are not valid DICOM dates and times give None.
    """

    days: int
    seconds: int

    @property
    def delta(self) -> timedelta:
        return timedelta(days=-self.days, seconds=self.seconds)

    def date(self, value: str) -> str | None:
        """A DA value shifted by the days."""
        parsed = _parse_date(value)
        return None if parsed is None else _da(_moved(parsed, timedelta(days=-self.days)))

    def time(self, value: str) -> str | None:
        """A TM value shifted by the seconds, modulo a day (precision kept)."""
        parsed = _parse_time(value)
        if parsed is None:
            return None
        moment, fraction = parsed
        moved = datetime.combine(date(2000, 1, 1), moment) + timedelta(seconds=self.seconds)
        return moved.strftime("%H%M%S") + fraction

    def date_and_time(self, date_value: str, time_value: str) -> tuple[str, str] | None:
        """A DA and its TM moved together by the whole offset."""
        parsed_date, parsed_time = _parse_date(date_value), _parse_time(time_value)
        if parsed_date is None or parsed_time is None:
            return None
        moment, fraction = parsed_time
        moved = _moved(datetime.combine(parsed_date, moment), self.delta)
        if moved is None:
            return None
        return _da(moved), moved.strftime("%H%M%S") + fraction

    def datetime(self, value: str) -> str | None:
        """A DT value moved by the whole offset (fraction and UTC offset kept)."""
        match = re.fullmatch(r"(\d{4,14})(\.\d{1,6})?([+-]\d{4})?", value.strip())
        if match is None or len(match[1]) % 2:
            return None
        digits = match[1].ljust(14, "0")
        if len(match[1]) < 8:  # YYYY or YYYYMM: month and day default to 01
            digits = (match[1] + "0101"[len(match[1]) - 4 :]).ljust(14, "0")
        try:
            moved = _moved(datetime.strptime(digits, "%Y%m%d%H%M%S"), self.delta)
        except ValueError:
            return None
        if moved is None:
            return None
        return _da(moved) + moved.strftime("%H%M%S") + (match[2] or "") + (match[3] or "")


_Moment = TypeVar("_Moment", date, datetime)


def _moved(moment: _Moment, delta: timedelta) -> _Moment | None:
    """``moment + delta``, None when that falls before year 1 (no DICOM date)."""
    try:
        return moment + delta
    except OverflowError:
        return None


def _da(moment: date | None) -> str | None:
    """A DA value; years below 1000 zero-padded (``strftime`` would not pad them)."""
    if moment is None:
        return None
    return f"{moment.year:04d}{moment.month:02d}{moment.day:02d}"


def _parse_date(value: str) -> date | None:
    try:
        return datetime.strptime(value.strip(), "%Y%m%d").date()
    except ValueError:
        return None


def _parse_time(value: str) -> tuple[clock_time, str] | None:
    """A TM value as a time (missing minutes and seconds are 0) and its fraction (``.ffff``)."""
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?", value.strip())
    if match is None:
        return None
    try:
        moment = datetime.strptime(
            match[1] + (match[2] or "00") + (match[3] or "00"), "%H%M%S"
        ).time()
    except ValueError:
        return None
    return moment, match[4] or ""
