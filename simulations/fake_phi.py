"""Fake protected health information for phantom DICOM headers.

Every person, number, date, hospital and address here is invented; they look like a
hospital's data so that de-identification has something real-looking to remove. All draws
come from the caller's `numpy.random.Generator`, so the same seed gives the same people.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np

FEMALE_GIVEN = (
    "JANE", "MARY", "ANNA", "LINDA", "SUSAN", "KAREN", "NANCY", "LISA", "EMMA", "OLIVIA",
    "SOFIA", "MARTA", "ELENA", "GRACE", "CHLOE", "HANNAH", "RUTH", "IRENE", "CLARA", "NORA",
)  # fmt: skip
MALE_GIVEN = (
    "JOHN", "JAMES", "ROBERT", "MICHAEL", "DAVID", "PETER", "THOMAS", "DANIEL", "PAUL", "MARK",
    "LUCAS", "NOAH", "OMAR", "IVAN", "HENRY", "SAMUEL", "VICTOR", "ARTHUR", "FELIX", "OSCAR",
)  # fmt: skip
FAMILY = (
    "DOE", "SMITH", "JOHNSON", "BROWN", "GARCIA", "MILLER", "DAVIS", "MARTINEZ", "LOPEZ",
    "WILSON", "ANDERSON", "TAYLOR", "MOORE", "JACKSON", "MARTIN", "LEE", "WALKER", "HALL",
    "YOUNG", "KING", "WRIGHT", "SCOTT", "GREEN", "BAKER", "ADAMS", "NELSON", "HILL", "CAMPBELL",
    "MITCHELL", "ROBERTS", "CARTER", "PHILLIPS", "EVANS", "TURNER", "TORRES", "PARKER",
    "COLLINS", "EDWARDS", "STEWART", "MORRIS", "NGUYEN", "MURPHY", "RIVERA", "COOK", "ROGERS",
    "MORGAN", "PETERSON", "COOPER", "REED", "BAILEY", "KOWALSKI", "MUELLER", "ROSSI", "SILVA",
)  # fmt: skip
CITIES = (
    "Aldermoor", "Brightwater", "Cedarholm", "Dunmere", "Eastvale", "Fernhollow", "Glenrock",
    "Hollowbrook", "Ironwood", "Juniper Bay", "Kestrel Point", "Larkspur", "Millbrook",
    "Northmere", "Oakhaven", "Pinecrest", "Quarry Hill", "Ravenscar", "Silverlake", "Thornbury",
    "Upton Vale", "Westbrook", "Willowmere", "Yarrow Falls",
)  # fmt: skip
HOSPITAL_KINDS = (
    "General Hospital", "Medical Center", "University Hospital", "Regional Medical Center",
    "Community Hospital",
)  # fmt: skip
STREETS = ("Main Street", "Hospital Road", "Park Avenue", "Elm Street", "Lake Drive", "Mill Lane")
STATES = ("NY", "OH", "WA", "TX", "MN", "OR", "PA", "VT")
#: Clinical free text, as technologists type it into PACS notes.
INDICATIONS = (
    "abdominal pain, r/o mass",
    "follow-up of known liver lesion",
    "weight loss, elevated LFTs",
    "staging, history of colorectal ca",
    "RUQ pain",
)
STUDY_YEARS = (2019, 2024)
#: Hours during which studies are acquired (from, to).
STUDY_HOURS = (7, 20)


@dataclass(frozen=True)
class Institution:
    """One fake hospital: names and addresses for the headers of one site."""

    name: str
    address: str
    code: str
    physicians: tuple[str, ...]
    technologists: tuple[str, ...]


@dataclass(frozen=True)
class Patient:
    """One fake patient. ``sex`` is "F" or "M"; names are upper-case ASCII."""

    family: str
    given: str
    middle_initial: str
    sex: str
    birth_date: date
    mrn: str
    enterprise_id: str

    @property
    def dicom_name(self) -> str:
        """The DICOM PN value, ``FAMILY^GIVEN^M``."""
        return f"{self.family}^{self.given}^{self.middle_initial}"

    @property
    def folder_name(self) -> str:
        """The export folder of this patient, ``FAMILY_GIVEN_MRN1234567`` (holds PHI)."""
        return f"{self.family}_{self.given}_MRN{self.mrn}"


@dataclass(frozen=True)
class Visit:
    """One fake imaging visit: when, who, and the order numbers of the study."""

    study_datetime: datetime
    accession: str
    study_id: str
    requested_procedure_id: str
    scheduled_step_id: str
    referring_physician: str
    performing_physician: str
    operator: str
    indication: str

    def at(self, seconds_after: float) -> datetime:
        """A time ``seconds_after`` the study started (series, acquisition, content)."""
        return self.study_datetime + timedelta(seconds=seconds_after)


def _person(rng: np.random.Generator, sex: str) -> tuple[str, str, str]:
    given = FEMALE_GIVEN if sex == "F" else MALE_GIVEN
    return (
        str(rng.choice(FAMILY)),
        str(rng.choice(given)),
        chr(ord("A") + int(rng.integers(26))),
    )


def _dicom_person(rng: np.random.Generator, title: str = "") -> str:
    family, given, middle = _person(rng, str(rng.choice(("F", "M"))))
    return f"{family}^{given}^{middle}^{title}".rstrip("^")


def make_institutions(n_sites: int, rng: np.random.Generator) -> list[Institution]:
    """``n_sites`` distinct fake hospitals with staff (for a site each, in order)."""
    combos = [(city, kind) for city in CITIES for kind in HOSPITAL_KINDS]
    order = rng.permutation(len(combos))
    institutions = []
    for index in range(n_sites):
        city, kind = combos[order[index % len(combos)]]
        campus = f" Campus {index // len(combos) + 1}" if index >= len(combos) else ""
        address = (
            f"{int(rng.integers(1, 2000))} {rng.choice(STREETS)}, {city}, "
            f"{rng.choice(STATES)} {int(rng.integers(10000, 99999)):05d}"
        )
        institutions.append(
            Institution(
                name=f"{city} {kind}{campus}",
                address=address,
                code="".join(word[0] for word in f"{city} {kind}".split()).upper() + str(index),
                physicians=tuple(_dicom_person(rng, "DR") for _ in range(6)),
                technologists=tuple(_dicom_person(rng) for _ in range(4)),
            )
        )
    return institutions


def make_mrns(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct 7-digit medical record numbers."""
    return [f"{1_000_000 + int(v):07d}" for v in rng.choice(9_000_000, n, replace=False)]


def make_patient(
    rng: np.random.Generator, mrn: str, study_date: date, age_years: int, sex: str | None = None
) -> Patient:
    """A fake patient who is ``age_years`` old (whole years) on ``study_date``; ``sex`` "F"
    or "M" (None: drawn)."""
    if sex is None:
        sex = str(rng.choice(("F", "M")))
    family, given, middle = _person(rng, sex)
    if rng.random() < 0.1:
        family = f"{family}-{rng.choice([name for name in FAMILY if name != family])}"
    # The last birthday before the study was 0..364 days earlier, so the age is exact.
    last_birthday = study_date - timedelta(days=int(rng.integers(0, 365)))
    birth_date = _years_before(last_birthday, age_years)
    return Patient(
        family=family,
        given=given,
        middle_initial=middle,
        sex=sex,
        birth_date=birth_date,
        mrn=mrn,
        enterprise_id=f"E{int(rng.integers(10**8, 10**9))}",
    )


def age_on(birth_date: date, on: date) -> int:
    """Whole years between ``birth_date`` and ``on``."""
    return on.year - birth_date.year - ((on.month, on.day) < (birth_date.month, birth_date.day))


def _years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February in a year without one
        return day.replace(year=day.year - years, day=28)


def make_visit(rng: np.random.Generator, institution: Institution) -> Visit:
    """A fake visit at ``institution`` on a random day and time in `STUDY_YEARS`."""
    first, last = date(STUDY_YEARS[0], 1, 1), date(STUDY_YEARS[1], 12, 31)
    day = first + timedelta(days=int(rng.integers((last - first).days + 1)))
    seconds = int(rng.integers(STUDY_HOURS[0] * 3600, STUDY_HOURS[1] * 3600))
    return Visit(
        study_datetime=datetime(day.year, day.month, day.day) + timedelta(seconds=seconds),
        accession=f"{institution.code[:2]}{day:%y}{int(rng.integers(10**6, 10**7))}",
        study_id=str(int(rng.integers(1000, 99999))),
        requested_procedure_id=f"RP{int(rng.integers(10**6, 10**7))}",
        scheduled_step_id=f"SPS{int(rng.integers(10**6, 10**7))}",
        referring_physician=str(rng.choice(institution.physicians)),
        performing_physician=str(rng.choice(institution.physicians)),
        operator=str(rng.choice(institution.technologists)),
        indication=str(rng.choice(INDICATIONS)),
    )
