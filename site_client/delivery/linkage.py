"""The link file: the hospital's own identifiers of the cases it wants results for.

The site store keeps no original identifier: a case is known by the keyed pseudonym of its
SOP Instance UID. To name the hospital's patient and study in a result, the hospital gives
them at delivery time in a CSV keyed by the original SOP Instance UID (as its PACS or RIS
knows it, and as ``medfed site label`` takes labels), columns `LINK_COLUMNS`, every one but
``sop_instance_uid`` optional. The site recomputes each row's case id with its secret and
uses the row for that case's results only. The file is read, never stored: it holds the
hospital's identifiers, which stay in the results written at the site.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, fields
from pathlib import Path

from pydicom.uid import UID

from site_client.deid import Deidentifier
from site_client.delivery import DeliveryError
from site_client.store import SiteStore
from task.labels import UID_KEY


@dataclass(frozen=True)
class HospitalLink:
    """One case's identifiers as the hospital knows them (empty where not given)."""

    sop_instance_uid: str
    patient_id: str = ""
    accession_number: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    sop_class_uid: str = ""

    def missing_for_dicom(self) -> list[str]:
        """The columns a DICOM result for the PACS needs (to file it with the patient's study
        and reference the source image) that this row lacks."""
        needed = ("patient_id", "study_instance_uid", "series_instance_uid", "sop_class_uid")
        return [name for name in needed if not getattr(self, name)]


LINK_COLUMNS = tuple(f.name for f in fields(HospitalLink))
_KEY = UID_KEY.name
_UID_COLUMNS = ("study_instance_uid", "series_instance_uid", "sop_class_uid")
#: DICOM's limits for the identifiers that go into a DICOM result (PS3.5: LO, SH).
_MAX_CHARS = {"patient_id": 64, "accession_number": 16}


def read_links(path: Path, store: SiteStore) -> dict[str, HospitalLink]:
    """The link file ``path`` as ``case id -> HospitalLink``, for the cases ``store`` can
    name (rows naming another case are kept too: they simply match nothing). Raises
    `DeliveryError` naming the file, line and column of the first problem."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            if _KEY not in columns:
                raise DeliveryError(f"{path}: no {_KEY} column (columns: {', '.join(columns)})")
            unknown = sorted(set(columns) - set(LINK_COLUMNS))
            if unknown:
                raise DeliveryError(
                    f"{path}: unknown column(s) {', '.join(unknown)}; a link file has "
                    f"{', '.join(LINK_COLUMNS)}"
                )
            rows = [
                (line, {k.strip(): (v or "").strip() for k, v in row.items() if k})
                for line, row in enumerate(reader, start=2)
            ]
    except FileNotFoundError as exc:
        raise DeliveryError(f"{path}: no such link file") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DeliveryError(f"{path}: not a readable CSV file ({exc})") from exc
    pseudonym = Deidentifier(store.secret).pseudonym
    links: dict[str, HospitalLink] = {}
    first_line: dict[str, int] = {}
    for line, row in rows:
        uid = _checked_uid(path, line, row)
        if uid in first_line:
            raise DeliveryError(f"{path} line {line}: {_KEY} repeats line {first_line[uid]}")
        first_line[uid] = line
        links[pseudonym(uid, "case")] = HospitalLink(**row)
    return links


def _checked_uid(path: Path, line: int, row: dict[str, str]) -> str:
    """The row's SOP Instance UID, once every value of the row is checked."""
    uid, reason = UID_KEY.parse(row[_KEY])
    if reason:
        raise DeliveryError(f"{path} line {line}: {reason}")
    for column in _UID_COLUMNS:
        value = row.get(column, "")
        if value and not UID(value).is_valid:
            raise DeliveryError(f"{path} line {line}: {column} {value!r} is not a DICOM UID")
    for column, limit in _MAX_CHARS.items():
        value = row.get(column, "")
        if len(value) > limit or "\\" in value or not value.isprintable():
            raise DeliveryError(
                f"{path} line {line}: {column} must be at most {limit} printable characters "
                "without a backslash"
            )
    return uid
