"""Each case's result as a FHIR R4 transaction Bundle, validated before it is written.

One Bundle per case, ``type: transaction``, so that the hospital's FHIR server can take it
as it is (POST to its base URL); re-delivering a case replaces its report (conditional
updates on the identifiers below) and never duplicates the model's Device:

- **Device** (POST, if none exists with the identifier ``urn:medfed:model-sha256|<sha>``):
  the AI model, named ``medfed <architecture>``, version = the checkpoint's SHA-256.
- **Observation** ``score``: the probability of the positive finding (valueQuantity, UCUM
  ``1``), its interpretation (POS/NEG at the operating threshold, and E, equivocal, within
  the uncertainty band), components for the threshold and the band, ``method`` naming the
  model and its SHA-256, ``device`` the Device.
- **Observation** ``finding``: lesion (SNOMED CT 52988006) present (52101004) or absent
  (2667000), interpretation POS/NEG, derived from the score.
- **DiagnosticReport**: LOINC 18748-4 "Diagnostic imaging study", category RAD, the two
  Observations as results, a conclusion naming the model, score, threshold and confidence.
  R4's ``DiagnosticReport.performer`` cannot be a Device, so the model is named by the
  Observations' ``device`` and by the Provenance.
- **Provenance**: the Device as author of the report and its Observations.

``status`` is ``preliminary`` throughout: the result is a model's, not verified by a
clinician. Codes of medfed's own (the score, the method, the Device's type) are in the local
code system `MEDFED_CODES`. The subject is a logical Patient reference: the hospital's
patient id where a link file gives one, else the pseudonymous case id. The study's time is
known only to the year (the store keeps the original study year, not the date):
``effectiveDateTime`` is that year, or absent.

fhir.resources has no R4 (4.0.1) models for pydantic 2; its R4B (4.3.0) models are R4's for
every resource used here (R4B changed other resources only), and `validate_bundle` checks
each Bundle with them: structure, cardinality, data types and no unknown element. They do not
check terminology bindings or references, so `validate_bundle` also checks the required
bindings used here and that every ``urn:uuid`` reference names an entry of the Bundle.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from site_client.delivery import DeliveryError
from site_client.delivery.linkage import HospitalLink
from site_client.delivery.results import CaseResult, FrozenModel, OperatingPoint

#: medfed's local code system (FHIR) for concepts no standard terminology has.
MEDFED_CODES = "urn:medfed:codes"
#: The identifier system of a model: its checkpoint's SHA-256.
MODEL_SHA256_SYSTEM = "urn:medfed:model-sha256"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
REPORT_STATUS = "preliminary"

_RESOURCE_TYPES = ("Device", "Observation", "DiagnosticReport", "Provenance")
#: The required bindings of the elements used here (FHIR R4 value sets).
_REQUIRED_CODES: dict[tuple[str, str], frozenset[str]] = {
    ("Bundle", "type"): frozenset(
        [
            "document",
            "message",
            "transaction",
            "transaction-response",
            "batch",
            "batch-response",
            "history",
            "searchset",
            "collection",
        ]
    ),
    ("DiagnosticReport", "status"): frozenset(
        [
            "registered",
            "partial",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "appended",
            "cancelled",
            "entered-in-error",
            "unknown",
        ]
    ),
    ("Observation", "status"): frozenset(
        [
            "registered",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "cancelled",
            "entered-in-error",
            "unknown",
        ]
    ),
    ("Device", "status"): frozenset(["active", "inactive", "entered-in-error", "unknown"]),
}
_METHODS = frozenset(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"])


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def _concept(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [_coding(system, code, display)]}
    if text:
        concept["text"] = text
    return concept


def _probability(value: float) -> dict[str, Any]:
    return {"value": value, "unit": "probability", "system": UCUM, "code": "1"}


_POSITIVE = _concept(INTERPRETATION, "POS", "Positive")
_NEGATIVE = _concept(INTERPRETATION, "NEG", "Negative")
_EQUIVOCAL = _concept(INTERPRETATION, "E", "Equivocal")
_LESION = _concept(SNOMED, "52988006", "Lesion", "Lesion (AI model finding)")
_PRESENT = _concept(SNOMED, "52101004", "Present")
_ABSENT = _concept(SNOMED, "2667000", "Absent")
_IMAGING = [
    _concept("http://terminology.hl7.org/CodeSystem/observation-category", "imaging", "Imaging")
]


@dataclass(frozen=True)
class Identifiers:
    """The identifier systems results use at a site (`site_client.policy.DeliveryPolicy`)."""

    site_id: str
    case_id_system: str
    patient_id_system: str | None
    accession_system: str | None

    @property
    def result_system(self) -> str:
        """The system of the identifiers of the reports and Observations medfed makes."""
        return f"urn:medfed:{self.site_id}:ai-result"


class BundleBuilder:
    """Builds the Bundle of each case's result for one delivery (one model, one operating
    point, one time of issue)."""

    def __init__(
        self,
        model: FrozenModel,
        operating: OperatingPoint,
        identifiers: Identifiers,
        issued: datetime,
    ) -> None:
        self.model = model
        self.operating = operating
        self.ids = identifiers
        self.issued = issued.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # a FHIR instant
        self.device_url = self._full_url("device")
        self.method = _concept(
            MEDFED_CODES,
            "ai-inference",
            "AI model inference",
            f"{model.name} model, checkpoint SHA-256 {model.sha256}; positive iff the score "
            f">= {operating.threshold:.4f} ({operating.source})",
        )

    def _full_url(self, *parts: str) -> str:
        name = ":".join((self.ids.site_id, self.model.sha256, *parts))
        return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, name)}"

    def bundle(self, result: CaseResult, link: HospitalLink | None) -> dict[str, Any]:
        """The transaction Bundle of ``result`` (as JSON data), linked to the hospital's
        patient and study when ``link`` is given."""
        case_id = result.case.case_id
        key = f"{case_id}.{self.model.sha256[:16]}"
        urls = {kind: self._full_url(case_id, kind) for kind in ("score", "finding", "report")}
        subject = self._subject(case_id, link)
        timing = {"issued": self.issued}
        if result.case.acquisition.study_year is not None:
            timing = {"effectiveDateTime": str(result.case.acquisition.study_year), **timing}
        score = self._score(result, f"{key}.score", subject, timing)
        finding = self._finding(result, f"{key}.finding", subject, timing, urls["score"])
        report = self._report(result, key, subject, timing, urls, link)
        provenance = {
            "resourceType": "Provenance",
            "target": [{"reference": urls[k]} for k in ("report", "score", "finding")],
            "recorded": self.issued,
            "agent": [
                {
                    "type": _concept(
                        "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                        "author",
                        "Author",
                    ),
                    "who": {"reference": self.device_url, "display": self.model.name},
                }
            ],
        }
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "timestamp": self.issued,
            "entry": [
                self._entry(
                    self.device_url,
                    self._device(),
                    {"method": "POST", "url": "Device", "ifNoneExist": self._device_query()},
                ),
                self._entry(urls["score"], score, self._update("Observation", score)),
                self._entry(urls["finding"], finding, self._update("Observation", finding)),
                self._entry(urls["report"], report, self._update("DiagnosticReport", report)),
                self._entry(
                    self._full_url(case_id, "provenance"),
                    provenance,
                    {"method": "POST", "url": "Provenance"},
                ),
            ],
        }

    @staticmethod
    def _entry(url: str, resource: dict[str, Any], request: dict[str, str]) -> dict[str, Any]:
        return {"fullUrl": url, "resource": resource, "request": request}

    @staticmethod
    def _update(resource_type: str, resource: dict[str, Any]) -> dict[str, str]:
        """A conditional update on the resource's first identifier: re-delivering replaces."""
        first = resource["identifier"][0]
        return {
            "method": "PUT",
            "url": f"{resource_type}?identifier={first['system']}|{first['value']}",
        }

    def _device_query(self) -> str:
        return f"identifier={MODEL_SHA256_SYSTEM}|{self.model.sha256}"

    def _device(self) -> dict[str, Any]:
        return {
            "resourceType": "Device",
            "identifier": [{"system": MODEL_SHA256_SYSTEM, "value": self.model.sha256}],
            "status": "active",
            "manufacturer": "medfed",
            "deviceName": [{"name": self.model.name, "type": "model-name"}],
            "modelNumber": self.model.architecture,
            "type": _concept(MEDFED_CODES, "ai-model", "AI model", self.model.description),
            "version": [{"type": {"text": "checkpoint SHA-256"}, "value": self.model.sha256}],
        }

    def _subject(self, case_id: str, link: HospitalLink | None) -> dict[str, Any]:
        if link is not None and link.patient_id:
            assert self.ids.patient_id_system is not None  # checked before delivery starts
            return {
                "type": "Patient",
                "identifier": {"system": self.ids.patient_id_system, "value": link.patient_id},
            }
        return {
            "type": "Patient",
            "identifier": {"system": self.ids.case_id_system, "value": case_id},
            "display": "pseudonymous medfed case id (the site can re-link it)",
        }

    def _observation(
        self, identifier: str, code: dict[str, Any], subject: dict[str, Any], timing: dict
    ) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "identifier": [{"system": self.ids.result_system, "value": identifier}],
            "status": REPORT_STATUS,
            "category": _IMAGING,
            "code": code,
            "subject": subject,
            **timing,
        }

    def _score(
        self, result: CaseResult, identifier: str, subject: dict[str, Any], timing: dict
    ) -> dict[str, Any]:
        op = self.operating
        code = _concept(
            MEDFED_CODES,
            "lesion-score",
            "Probability of a lesion (AI model score)",
            f"Probability of a lesion according to {self.model.name}",
        )
        interpretation = [_POSITIVE if result.positive else _NEGATIVE]
        if result.equivocal:
            interpretation.append(_EQUIVOCAL)
        return {
            **self._observation(identifier, code, subject, timing),
            "valueQuantity": _probability(result.score),
            "interpretation": interpretation,
            "method": self.method,
            "device": {"reference": self.device_url, "display": self.model.name},
            "component": [
                {
                    "code": _concept(MEDFED_CODES, "operating-threshold", "Operating threshold"),
                    "valueQuantity": _probability(op.threshold),
                },
                {
                    "code": _concept(
                        MEDFED_CODES, "uncertainty-band", "Equivocal zone around the threshold"
                    ),
                    "valueRange": {
                        "low": _probability(max(op.threshold - op.band, 0.0)),
                        "high": _probability(min(op.threshold + op.band, 1.0)),
                    },
                },
            ],
        }

    def _finding(
        self,
        result: CaseResult,
        identifier: str,
        subject: dict[str, Any],
        timing: dict,
        score_url: str,
    ) -> dict[str, Any]:
        finding = {
            **self._observation(identifier, _LESION, subject, timing),
            "valueCodeableConcept": _PRESENT if result.positive else _ABSENT,
            "interpretation": [_POSITIVE if result.positive else _NEGATIVE],
            "method": self.method,
            "device": {"reference": self.device_url, "display": self.model.name},
            "derivedFrom": [{"reference": score_url}],
        }
        if result.equivocal:
            finding["note"] = [{"text": self._equivocal_note(result)}]
        return finding

    def _equivocal_note(self, result: CaseResult) -> str:
        return (
            f"Equivocal: the score {result.score:.4f} is within {self.operating.band:g} of the "
            f"operating threshold {self.operating.threshold:.4f}; review advised."
        )

    def conclusion(self, result: CaseResult) -> str:
        """The report's conclusion, in words."""
        finding = "lesion present" if result.positive else "no lesion found"
        confidence = (
            self._equivocal_note(result)
            if result.equivocal
            else f"Outside the equivocal zone of +/-{self.operating.band:g}."
        )
        return (
            f"AI result, not verified by a clinician: {finding} (score {result.score:.4f}, "
            f"operating threshold {self.operating.threshold:.4f}). {confidence} Model: "
            f"{self.model.name}, checkpoint SHA-256 {self.model.sha256}."
        )

    def _report(
        self,
        result: CaseResult,
        key: str,
        subject: dict[str, Any],
        timing: dict,
        urls: dict[str, str],
        link: HospitalLink | None,
    ) -> dict[str, Any]:
        report: dict[str, Any] = {
            "resourceType": "DiagnosticReport",
            "identifier": [
                {"system": self.ids.result_system, "value": key},
                {"system": self.ids.case_id_system, "value": result.case.case_id},
            ],
            "status": REPORT_STATUS,
            "category": [
                _concept("http://terminology.hl7.org/CodeSystem/v2-0074", "RAD", "Radiology")
            ],
            "code": _concept(
                LOINC, "18748-4", "Diagnostic imaging study", "AI result: lesion detection"
            ),
            "subject": subject,
            **timing,
            "result": [{"reference": urls["score"]}, {"reference": urls["finding"]}],
            "conclusion": self.conclusion(result),
        }
        if link is not None and link.accession_number:
            report["basedOn"] = [
                {
                    "type": "ServiceRequest",
                    "identifier": {
                        "type": _concept(
                            "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "ACSN",
                            "Accession ID",
                        ),
                        "system": self.ids.accession_system,
                        "value": link.accession_number,
                    },
                }
            ]
        if link is not None and link.study_instance_uid:
            report["imagingStudy"] = [
                {
                    "type": "ImagingStudy",
                    "identifier": {
                        "system": "urn:dicom:uid",
                        "value": f"urn:oid:{link.study_instance_uid}",
                    },
                }
            ]
        return report


def bundle_json(bundle: dict[str, Any]) -> str:
    """``bundle`` serialised and validated (`validate_bundle`): the text to write."""
    text = json.dumps(bundle, indent=2, ensure_ascii=False) + "\n"
    validate_bundle(text)
    return text


def validate_bundle(text: str) -> Bundle:
    """Parse ``text`` with fhir.resources' R4B models and check what they do not: the
    required bindings used here, unique fullUrls, that every ``urn:uuid`` reference names an
    entry, and that the parsed Bundle serialises back to the same JSON. Raises
    `DeliveryError` with the first problem."""
    try:
        bundle = Bundle.model_validate_json(text)
    except ValueError as exc:
        raise DeliveryError(f"not a valid FHIR R4 Bundle: {' '.join(str(exc).split())}") from exc
    data = json.loads(text)
    if json.loads(bundle.model_dump_json()) != data:
        raise DeliveryError("the Bundle does not round-trip through fhir.resources unchanged")
    problems = _binding_problems("Bundle", data)
    urls = [entry.get("fullUrl") for entry in data.get("entry", [])]
    if len(set(urls)) != len(urls):
        problems.append("two entries share a fullUrl")
    for entry in data.get("entry", []):
        resource = entry["resource"]
        kind = resource["resourceType"]
        if kind not in _RESOURCE_TYPES:
            problems.append(f"unexpected resource {kind}")
        problems += _binding_problems(kind, resource)
        if data["type"] == "transaction" and entry.get("request", {}).get("method") not in _METHODS:
            problems.append(f"{kind}: transaction entry without a valid request.method")
        problems += [
            f"{kind}: reference {ref} names no entry"
            for ref in _references(resource)
            if ref.startswith("urn:uuid:") and ref not in urls
        ]
    if problems:
        raise DeliveryError(f"not a valid FHIR R4 Bundle: {problems[0]}")
    return bundle


def _binding_problems(kind: str, resource: dict[str, Any]) -> list[str]:
    return [
        f"{kind}.{element} {resource.get(element)!r} is not in its value set"
        for (k, element), codes in _REQUIRED_CODES.items()
        if k == kind and resource.get(element) not in codes
    ]


def _references(value: Any) -> Iterator[str]:
    """Every ``reference`` string anywhere in ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                yield item
            else:
                yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)
