"""``medfed site deliver``: score a site's cases and write the results for the hospital.

The output folder (`DeliveryRequest.out`, new or empty) receives::

    delivery.json           what was delivered: site, model (architecture, SHA-256),
                            threshold and its source, equivocal band, counts, formats, files
    results.csv             one row per case: case id, where it is, score, finding,
                            equivocal, linked, and its files
    fhir/<case>.json        a FHIR R4 transaction Bundle (`site_client.delivery.fhir`)
    dicom/<case>-sr.dcm     with format ``sr``: a Comprehensive 3D SR
    dicom/<case>-sc.dcm     with format ``sc``: a secondary-capture overlay

Everything is checked before the first case is scored (site store, checkpoint, threshold,
link file, identifier systems, every case's identifiers for DICOM), and written into a
hidden folder beside the output that becomes the output only when every file is written
and validated: a failure leaves nothing behind. The site's audit trail records the delivery
(model SHA-256, counts, formats). Nothing is sent anywhere.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from site_client.delivery import DeliveryError
from site_client.delivery.dicom import overlay_image, structured_report
from site_client.delivery.fhir import BundleBuilder, Identifiers, bundle_json
from site_client.delivery.linkage import HospitalLink, read_links
from site_client.delivery.results import (
    CaseResult,
    DeliveryCase,
    FrozenModel,
    OperatingPoint,
    ScoringRequest,
    prepare_scoring,
    score_cases,
)
from site_client.policy import POLICY_FILE
from site_client.staging import staged_folder
from site_client.store import SiteStore
from task.audit import AuditEntry, AuditEvent, AuditLog

#: What ``--format`` may name, and what each writes per case.
FORMAT_DESCRIPTIONS = {
    "fhir": "FHIR R4 transaction Bundle, validated with fhir.resources (R4B models, identical "
    "to R4 for the resources used)",
    "sr": "DICOM Comprehensive 3D SR (TID 1500 Measurement Report)",
    "sc": "DICOM secondary capture of the stored image with the result burnt in",
}
FORMATS = tuple(FORMAT_DESCRIPTIONS)
DICOM_FORMATS = ("sr", "sc")
SUMMARY_FILE = "delivery.json"
RESULTS_FILE = "results.csv"
RESULTS_COLUMNS = ("case_id", "cases", "score", "finding", "equivocal", "linked", *FORMATS)


@dataclass(frozen=True)
class DeliveryRequest(ScoringRequest):
    """What to deliver: the cases and model of a `ScoringRequest`, where to (``out``), in
    which ``formats``, and the hospital's identifiers (``link``, `read_links`)."""

    out: Path
    formats: tuple[str, ...] = ("fhir",)
    link: Path | None = None


@dataclass
class DeliverySummary:
    """What a delivery wrote: counts, and files per format."""

    out: Path
    model: FrozenModel
    operating: OperatingPoint
    cases: int = 0
    positive: int = 0
    equivocal: int = 0
    linked: int = 0
    files: dict[str, int] = field(default_factory=dict)


def deliver(
    request: DeliveryRequest,
    progress: Callable[[int, int], None] | None = None,
    now: datetime | None = None,
) -> DeliverySummary:
    """Deliver ``request`` (see the module docstring); `DeliveryError` (or a
    `CheckpointError`, `SiteStoreError`) with a one-line reason before anything is written."""
    formats = _check_formats(request.formats)
    _check_out(request.out)
    store, operating, model, cases = prepare_scoring(request)
    if not cases:
        raise DeliveryError(f"site {store.site_id} has no {request.cases} cases to deliver")
    links = _links(request, store, cases, formats)
    issued = (now or datetime.now(UTC)).astimezone(UTC)
    policy = store.policy.delivery
    builder = BundleBuilder(
        model,
        operating,
        Identifiers(
            store.site_id,
            policy.case_id_system or f"urn:medfed:{store.site_id}:case-id",
            policy.patient_id_system,
            policy.accession_system,
        ),
        issued,
    )
    summary = DeliverySummary(request.out, model, operating, files=dict.fromkeys(formats, 0))
    with staged_folder(request.out) as staging:  # request.out: absent or empty (_check_out)
        rows = []
        for result in score_cases(store, cases, model, operating):
            link = links.get(result.case.case_id)
            files = _write_case(staging, store, result, link, formats, builder)
            rows.append(_result_row(result, link, files))
            summary.cases += 1
            summary.positive += result.positive
            summary.equivocal += result.equivocal
            summary.linked += link is not None
            for kind in files:
                summary.files[kind] += 1
            if progress is not None:
                progress(summary.cases, len(cases))
        _write_results(staging / RESULTS_FILE, rows)
        _write_summary(staging / SUMMARY_FILE, store, request, summary, issued)
    AuditLog.in_folder(store.root).record(
        AuditEntry(
            store.site_id,
            AuditEvent.RESULTS_DELIVERED,
            details={
                "model_sha256": model.sha256,
                "threshold": operating.threshold,
                "cases": summary.cases,
                "positive": summary.positive,
                "equivocal": summary.equivocal,
                "linked": summary.linked,
                "formats": ",".join(formats),
            },
        )
    )
    return summary


def _check_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise DeliveryError(
            f"format must name one or more of {', '.join(FORMATS)}, got {','.join(formats)!r}"
        )
    return tuple(f for f in FORMATS if f in formats)


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DeliveryError(f"{out}: exists and is not an empty folder; choose a new one")


def _links(
    request: DeliveryRequest, store: SiteStore, cases: list[DeliveryCase], formats: tuple[str, ...]
) -> dict[str, HospitalLink]:
    """The link file's rows for ``cases``, checked against the site's identifier systems and,
    for DICOM formats, complete for every case."""
    links = {} if request.link is None else read_links(request.link, store)
    policy = store.policy.delivery
    for column, key, system in (
        ("patient_id", "patient_id_system", policy.patient_id_system),
        ("accession_number", "accession_system", policy.accession_system),
    ):
        if system is None and any(getattr(link, column) for link in links.values()):
            raise DeliveryError(
                f"{request.link}: has {column} values but {store.root / POLICY_FILE} sets no "
                f"[delivery] {key} (the hospital's identifier system for them)"
            )
    wanted = {c.case_id for c in cases}
    links = {case_id: link for case_id, link in links.items() if case_id in wanted}
    dicom = [f for f in formats if f in DICOM_FORMATS]
    if dicom:
        unlinked = [c.case_id for c in cases if c.case_id not in links]
        if unlinked:
            raise DeliveryError(
                f"format {','.join(dicom)} files results in the patient's study and needs the "
                f"hospital's identifiers: give --link with a row for every case "
                f"({len(unlinked)} of {len(cases)} have none, e.g. case {unlinked[0]})"
            )
        for case_id, link in links.items():
            missing = link.missing_for_dicom()
            if missing:
                raise DeliveryError(
                    f"{request.link}: the row of SOP Instance UID {link.sop_instance_uid} "
                    f"(case {case_id}) has no {', '.join(missing)}, which format "
                    f"{','.join(dicom)} needs"
                )
    return links


def _write_case(
    folder: Path,
    store: SiteStore,
    result: CaseResult,
    link: HospitalLink | None,
    formats: tuple[str, ...],
    builder: BundleBuilder,
) -> dict[str, str]:
    """Write ``result`` in every format; returns format -> file (relative to ``folder``)."""
    case_id = result.case.case_id
    files: dict[str, str] = {}
    if "fhir" in formats:
        files["fhir"] = f"fhir/{case_id}.json"
        _target(folder, files["fhir"]).write_text(
            bundle_json(builder.bundle(result, link)), encoding="utf-8"
        )
    if link is None:
        return files
    if "sr" in formats:
        files["sr"] = f"dicom/{case_id}-sr.dcm"
        report = structured_report(result, builder.model, builder.operating, link)
        report.save_as(_target(folder, files["sr"]), enforce_file_format=True)
    if "sc" in formats:
        files["sc"] = f"dicom/{case_id}-sc.dcm"
        image = store.load_image(case_id)
        overlay = overlay_image(result, image, builder.model, builder.operating, link)
        overlay.save_as(_target(folder, files["sc"]), enforce_file_format=True)
    return files


def _target(folder: Path, name: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _result_row(
    result: CaseResult, link: HospitalLink | None, files: dict[str, str]
) -> dict[str, object]:
    return {
        "case_id": result.case.case_id,
        "cases": result.case.group,
        "score": f"{result.score:.6f}",
        "finding": "present" if result.positive else "absent",
        "equivocal": int(result.equivocal),
        "linked": int(link is not None),
        **{kind: files.get(kind, "") for kind in FORMATS},
    }


def _write_results(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, RESULTS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _write_summary(
    path: Path,
    store: SiteStore,
    request: DeliveryRequest,
    summary: DeliverySummary,
    issued: datetime,
) -> None:
    document = {
        "site": store.site_id,
        "issued": issued.isoformat(timespec="seconds"),
        "model": {
            "name": summary.model.name,
            "architecture": summary.model.architecture,
            "sha256": summary.model.sha256,
            "checkpoint": str(request.checkpoint.resolve()),
        },
        "operating_point": {
            "threshold": summary.operating.threshold,
            "source": summary.operating.source,
            "uncertainty_band": summary.operating.band,
            "rule": "positive iff score >= threshold; equivocal iff |score - threshold| < band",
        },
        "cases": {
            "selection": request.cases,
            "delivered": summary.cases,
            "positive": summary.positive,
            "equivocal": summary.equivocal,
            "linked": summary.linked,
        },
        "status": "preliminary: AI results, not verified by a clinician",
        "formats": {kind: FORMAT_DESCRIPTIONS[kind] for kind in summary.files},
        "files": summary.files,
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
