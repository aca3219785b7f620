"""Delivery of each case's AI result to the hospital's systems (``medfed site deliver``), on
phantom DICOM ingested into a real site store: FHIR R4 Bundles that validate with
fhir.resources and round-trip, Observations naming the model's SHA-256 and the score,
decisions at the threshold, a DICOM SR and a secondary capture that pydicom reads back and
dciodvfy passes, one-line errors that leave nothing written, and output that stays under
--out (nothing in a run directory, no Flower)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from conftest import IngestedFederation
from fhir.resources.R4B.bundle import Bundle

from server.checkpoints import sha256_of
from site_client.delivery import DeliveryError
from site_client.delivery import deliver as delivery_module
from site_client.delivery.deliver import DeliveryRequest, deliver
from site_client.delivery.dicom import device_uid
from site_client.delivery.fhir import validate_bundle
from site_client.delivery.results import (
    CASE_CHOICES,
    OperatingPoint,
    load_model,
    score_cases,
    select_cases,
)
from site_client.policy import DeliveryPolicy, PolicyError, read_policy, write_policy
from site_client.received import ReceivedCase, ReceivedIndex
from site_client.store import SiteStore
from task.audit import AuditEvent, AuditLog
from task.model import ModelConfig, build_model

PATIENT_SYSTEM = "https://hospital.example/id/mrn"
ACCESSION_SYSTEM = "https://hospital.example/id/accession"
LINK_COLUMNS = (
    "sop_instance_uid", "patient_id", "accession_number", "study_instance_uid",
    "series_instance_uid", "sop_class_uid",
)  # fmt: skip


@dataclass(frozen=True)
class Delivered:
    """A site store (a copy), its model and link file, and two deliveries of it: ``linked``
    (fhir, sr, sc, with the link file) and ``pseudonymous`` (fhir, no link file)."""

    site: Path
    checkpoint: Path
    link: Path
    originals: dict[str, pydicom.Dataset]  # SOP Instance UID -> the phantom's header
    operating: OperatingPoint
    linked: Path
    pseudonymous: Path


def write_link_file(dicom_dir: Path, path: Path) -> dict[str, pydicom.Dataset]:
    """The hospital's link file for every file of ``dicom_dir``; returns the headers."""
    headers = {}
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LINK_COLUMNS)
        for file in sorted(dicom_dir.rglob("*.dcm")):
            ds = pydicom.dcmread(file, stop_before_pixels=True)
            headers[ds.SOPInstanceUID] = ds
            writer.writerow(
                [ds.SOPInstanceUID, ds.PatientID, ds.AccessionNumber, ds.StudyInstanceUID,
                 ds.SeriesInstanceUID, ds.SOPClassUID]
            )  # fmt: skip
    return headers


def configure_identifier_systems(site: Path) -> None:
    policy = read_policy(site)
    systems = DeliveryPolicy(patient_id_system=PATIENT_SYSTEM, accession_system=ACCESSION_SYSTEM)
    write_policy(site, replace(policy, delivery=systems))


def case_scores(site: Path, checkpoint: Path, architecture: str = "blob") -> dict[str, float]:
    """Every case's score by the model in ``checkpoint``: manifest cases, then received ones."""
    store = SiteStore.open(site)
    model = load_model(checkpoint, architecture)
    results = score_cases(store, select_cases(store, "all"), model, OperatingPoint(0.5, 0, ""))
    return {r.case.case_id: r.score for r in results}


def straddling(scores: Iterable[float]) -> OperatingPoint:
    """A threshold and band that put cases on both sides and in and out of the band: the
    median score, and half the interquartile range."""
    low, median, high = np.percentile(list(scores), [25, 50, 75])
    return OperatingPoint(float(median), float(high - low) / 2, "given")


@pytest.fixture(scope="module")
def delivered(
    small_federation: IngestedFederation, tmp_path_factory: pytest.TempPathFactory
) -> Delivered:
    root = tmp_path_factory.mktemp("delivery")
    site = Path(shutil.copytree(small_federation.site_dirs[0], root / "site-a"))
    configure_identifier_systems(site)
    checkpoint = root / "model.pt"
    torch.save(build_model(ModelConfig(), seed=5).state_dict(), checkpoint)
    link = root / "link.csv"
    originals = write_link_file(small_federation.phantom_dirs[0] / "dicom", link)
    operating = straddling(case_scores(site, checkpoint).values())
    linked, pseudonymous = root / "linked", root / "pseudonymous"
    for out, formats, link_file in (
        (linked, ("fhir", "sr", "sc"), link),
        (pseudonymous, ("fhir",), None),
    ):
        deliver(
            DeliveryRequest(
                site, checkpoint, out, threshold=operating.threshold, formats=formats,
                uncertainty_band=operating.band, link=link_file,
            )
        )  # fmt: skip
    return Delivered(site, checkpoint, link, originals, operating, linked, pseudonymous)


def bundles(out: Path) -> dict[str, dict]:
    """case id -> the Bundle's JSON, for every Bundle under ``out``."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "fhir").glob("*.json"))}


def resources(bundle: dict, kind: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def observation(bundle: dict, code: str) -> dict:
    (found,) = [
        o for o in resources(bundle, "Observation") if o["code"]["coding"][0]["code"] == code
    ]
    return found


def results_rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "results.csv").open(newline="") as handle:
        return {row["case_id"]: row for row in csv.DictReader(handle)}


def test_every_case_gets_a_bundle_that_validates_and_round_trips(delivered: Delivered) -> None:
    store = SiteStore.open(delivered.site)
    case_ids = {r.case_id for r in store.read_manifest()}
    for out in (delivered.linked, delivered.pseudonymous):
        found = bundles(out)
        assert set(found) == case_ids == set(results_rows(out))
        for case_id, data in found.items():
            text = (out / "fhir" / f"{case_id}.json").read_text()
            parsed = Bundle.model_validate_json(text)  # fhir.resources' R4B models, directly
            assert json.loads(parsed.model_dump_json()) == data
            assert validate_bundle(text).type == "transaction"
            kinds = sorted(e["resource"]["resourceType"] for e in data["entry"])
            assert kinds == [
                "Device",
                "DiagnosticReport",
                "Observation",
                "Observation",
                "Provenance",
            ]
            (report,) = resources(data, "DiagnosticReport")
            assert report["status"] == "preliminary"
            loinc = report["code"]["coding"][0]
            assert (loinc["system"], loinc["code"]) == ("http://loinc.org", "18748-4")
    summary = json.loads((delivered.linked / "delivery.json").read_text())
    assert summary["files"] == {"fhir": len(case_ids), "sr": len(case_ids), "sc": len(case_ids)}


def test_observations_name_the_model_by_its_sha256_and_carry_the_score(
    delivered: Delivered,
) -> None:
    sha = sha256_of(delivered.checkpoint)
    rows = results_rows(delivered.linked)
    for case_id, data in bundles(delivered.linked).items():
        (device,) = resources(data, "Device")
        assert device["version"][0]["value"] == sha
        assert device["identifier"][0]["value"] == sha
        device_url = next(e["fullUrl"] for e in data["entry"] if e["resource"] is device)
        score, finding = observation(data, "lesion-score"), observation(data, "52988006")
        for obs in (score, finding):
            assert sha in obs["method"]["text"]
            assert obs["device"]["reference"] == device_url
        assert score["valueQuantity"]["code"] == "1"
        assert score["valueQuantity"]["system"] == "http://unitsofmeasure.org"
        assert score["valueQuantity"]["value"] == pytest.approx(
            float(rows[case_id]["score"]), abs=1e-6
        )
        (provenance,) = resources(data, "Provenance")
        assert provenance["agent"][0]["who"]["reference"] == device_url
        (report,) = resources(data, "DiagnosticReport")
        assert sha in report["conclusion"]


def test_the_decision_is_the_threshold_s_and_equivocal_scores_say_so(delivered: Delivered) -> None:
    op = delivered.operating
    decisions, equivocal = set(), set()
    for data in bundles(delivered.linked).values():
        score = observation(data, "lesion-score")
        value = score["valueQuantity"]["value"]
        positive, uncertain = value >= op.threshold, abs(value - op.threshold) < op.band
        codes = [i["coding"][0]["code"] for i in score["interpretation"]]
        assert codes == (["POS"] if positive else ["NEG"]) + (["E"] if uncertain else [])
        finding = observation(data, "52988006")
        assert finding["valueCodeableConcept"]["coding"][0]["code"] == (
            "52101004" if positive else "2667000"
        )
        assert ("note" in finding) == uncertain
        components = {c["code"]["coding"][0]["code"]: c for c in score["component"]}
        assert components["operating-threshold"]["valueQuantity"]["value"] == op.threshold
        decisions.add(positive)
        equivocal.add(uncertain)
    assert decisions == {True, False} and equivocal == {True, False}  # both sides were tested


def test_results_name_the_hospital_s_patient_and_study_only_through_the_link_file(
    delivered: Delivered,
) -> None:
    by_case = {
        case_id: observation(data, "lesion-score")["subject"]["identifier"]
        for case_id, data in bundles(delivered.pseudonymous).items()
    }
    for case_id, identifier in by_case.items():
        assert identifier == {"system": "urn:medfed:site-a:case-id", "value": case_id}
    patient_ids = {ds.PatientID for ds in delivered.originals.values()}
    study_uids = {ds.StudyInstanceUID for ds in delivered.originals.values()}
    pseudonymous_text = "".join(
        p.read_text() for p in (delivered.pseudonymous / "fhir").glob("*.json")
    )
    assert not any(pid in pseudonymous_text for pid in patient_ids)
    for data in bundles(delivered.linked).values():
        (report,) = resources(data, "DiagnosticReport")
        assert report["subject"]["identifier"]["system"] == PATIENT_SYSTEM
        assert report["subject"]["identifier"]["value"] in patient_ids
        study = report["imagingStudy"][0]["identifier"]
        assert study["system"] == "urn:dicom:uid"
        assert study["value"].removeprefix("urn:oid:") in study_uids
        assert report["basedOn"][0]["identifier"]["system"] == ACCESSION_SYSTEM


def dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, errors="replace", timeout=120
    )
    return [ln for ln in (result.stdout + result.stderr).splitlines() if ln.startswith("Error")]


def test_sr_and_overlay_are_filed_with_the_source_study_and_pass_dciodvfy(
    delivered: Delivered,
) -> None:
    assert shutil.which("dciodvfy"), "dciodvfy is missing: apt-get install dicom3tools"
    sha = sha256_of(delivered.checkpoint)
    rows = results_rows(delivered.linked)
    errors = {}
    for row in rows.values():
        sr_path, sc_path = delivered.linked / row["sr"], delivered.linked / row["sc"]
        sr, sc = pydicom.dcmread(sr_path), pydicom.dcmread(sc_path)
        (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
        source_uid = (
            evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        )
        source = delivered.originals[source_uid]
        for ds in (sr, sc):
            assert ds.StudyInstanceUID == source.StudyInstanceUID
            assert ds.PatientID == source.PatientID
            assert ds.SeriesInstanceUID != source.SeriesInstanceUID  # a new series
        assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
        assert (sr.CompletionFlag, sr.VerificationFlag) == ("COMPLETE", "UNVERIFIED")
        values = {str(e.value) for e in sr.iterall() if e.VR != "SQ"}
        assert {sha, device_uid(load_model(delivered.checkpoint, "blob"))} <= values
        assert ("52101004" if row["finding"] == "present" else "2667000") in values
        assert sc.BurnedInAnnotation == "YES" and list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source_uid
        assert sc.pixel_array.shape == (sc.Rows, sc.Columns)
        for path in (sr_path, sc_path):
            if found := dciodvfy_errors(path):
                errors[path.name] = found
    assert not errors, errors


def test_received_cases_waiting_for_a_label_can_be_delivered(
    delivered: Delivered, tmp_path: Path
) -> None:
    site = Path(shutil.copytree(delivered.site, tmp_path / "site-a"))
    store = SiteStore.open(site)
    first = store.read_manifest()[0]
    store.save_case("c00000000000000aa", store.load_image(first.case_id))
    ReceivedIndex(store).add(ReceivedCase("c00000000000000aa", "ACME", "CT1", 64, 64, False))
    assert [c.case_id for c in select_cases(store, "received")] == ["c00000000000000aa"]
    out = tmp_path / "out"
    deliver(DeliveryRequest(site, delivered.checkpoint, out, threshold=0.5, cases="received"))
    assert results_rows(out)["c00000000000000aa"]["cases"] == "received"
    test_split = {r.case_id for r in store.read_manifest() if r.split == "test"}
    assert {c.case_id for c in select_cases(store, "test")} == test_split


def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    """``medfed site deliver ARGS`` in this process: (exit status, stderr)."""
    from medfed.cli import main

    try:
        status = main(["site", "deliver", *map(str, args)])
    except SystemExit as exc:  # argparse's usage errors
        status = int(exc.code or 0)
    return status, capsys.readouterr().err


def test_the_cli_offers_the_case_choices_delivery_knows() -> None:
    from medfed.delivery_commands import DELIVERY_CASES

    assert DELIVERY_CASES == CASE_CHOICES


def test_cli_errors_are_one_line_and_leave_nothing_written(
    delivered: Delivered, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, out = delivered.checkpoint, tmp_path / "out"

    def at(site: Path = delivered.site, model: Path = ckpt, target: Path = out) -> tuple:
        return ("--site-dir", site, "--model", model, "--out", target)

    base = at()
    cnn = tmp_path / "cnn.pt"
    torch.save(build_model(ModelConfig(architecture="cnn")).state_dict(), cnn)
    evidence = tmp_path / "evidence.json"
    evidence.write_text(
        json.dumps(
            {
                "operating_point": {"threshold": 0.4},
                "model": {"sha256": "0" * 64, "config": {"architecture": "blob"}},
            }
        )
    )
    no_threshold = tmp_path / "no-threshold.json"
    no_threshold.write_text(
        json.dumps({"model": {"sha256": "0" * 64, "config": {"architecture": "blob"}}})
    )
    bad_link = tmp_path / "bad-link.csv"
    bad_link.write_text("sop_instance_uid,patient_id\n1.2.3,P1\n1.2.x,P2\n")
    odd_link = tmp_path / "odd-link.csv"
    odd_link.write_text("sop_instance_uid,patient_name\n1.2.3,DOE\n")
    for args, status, expected in (
        ((*base,), 2, "one of the arguments --threshold --evidence is required"),
        ((*base, "--threshold", "0.5", "--evidence", evidence), 2, "not allowed with"),
        ((*base, "--threshold", "1.5"), 2, "must be a probability"),
        ((*base, "--threshold", "0.5", "--cases", "some"), 2, "invalid choice"),
        ((*at(model=cnn), "--threshold", "0.5"), 1, f"{cnn}: not a checkpoint of the blob model"),
        ((*at(site=tmp_path / "nowhere"), "--threshold", "0.5"), 1, "no such site directory"),
        (
            (*base, "--evidence", evidence),
            1,
            f"{evidence}: model.sha256 is not the SHA-256 of {ckpt}",
        ),
        ((*base, "--evidence", no_threshold), 1, f"{no_threshold}: no operating_point.threshold"),
        ((*base, "--evidence", tmp_path / "none.json"), 1, "no such evidence file"),
        ((*base, "--threshold", "0.5", "--format", "fhir,pdf"), 1, "format must name"),
        (
            (*base, "--threshold", "0.5", "--format", "sr"),
            1,
            "needs the hospital's identifiers: give --link",
        ),
        (
            (*base, "--threshold", "0.5", "--link", bad_link),
            1,
            f"{bad_link} line 3: sop_instance_uid must be a UID",
        ),
        (
            (*base, "--threshold", "0.5", "--link", odd_link),
            1,
            f"{odd_link}: unknown column(s) patient_name",
        ),
        (
            (*base, "--threshold", "0.5", "--uncertainty-band", "0.7"),
            1,
            "uncertainty band must be in [0, 0.5)",
        ),
        ((*at(target=delivered.linked), "--threshold", "0.5"), 1, "is not an empty folder"),
    ):
        code, err = run_cli(capsys, *args)
        lines = err.strip().splitlines()
        assert code == status, (args, err)
        assert expected in err and "Traceback" not in err, (args, err)
        assert status == 2 or len(lines) == 1, err
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_patient_ids_need_the_site_s_identifier_system(
    delivered: Delivered, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = Path(shutil.copytree(delivered.site, tmp_path / "site-a"))
    write_policy(site, replace(read_policy(site), delivery=DeliveryPolicy()))
    code, err = run_cli(
        capsys, "--site-dir", site, "--model", delivered.checkpoint, "--out", tmp_path / "out",
        "--threshold", "0.5", "--link", delivered.link,
    )  # fmt: skip
    assert code == 1
    assert f"{site / 'site.toml'} sets no [delivery] patient_id_system" in err
    (site / "site.toml").write_text(
        (site / "site.toml").read_text() + "\n[delivery]\nuncertainty_band = 0.9\n"
    )
    with pytest.raises(PolicyError, match="uncertainty_band must be in"):
        read_policy(site)


def test_a_failure_midway_leaves_no_output_and_no_partial_folder(
    delivered: Delivered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def failing(bundle: dict) -> str:
        calls.append(1)
        if len(calls) == 3:
            raise DeliveryError("disk full (simulated)")
        return json.dumps(bundle)

    monkeypatch.setattr(delivery_module, "bundle_json", failing)
    out = tmp_path / "out"
    with pytest.raises(DeliveryError, match="simulated"):
        deliver(DeliveryRequest(delivered.site, delivered.checkpoint, out, threshold=0.5))
    assert list(tmp_path.iterdir()) == []


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def test_delivery_writes_only_under_out_and_sends_nothing(
    delivered: Delivered, tmp_path: Path
) -> None:
    """The run directory (its checkpoint and evidence) and the site store are left as they
    were, but for the site's audit trail; the process never loads Flower."""
    site = Path(shutil.copytree(delivered.site, tmp_path / "site-a"))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    checkpoint = Path(
        shutil.copy(delivered.checkpoint, run / "checkpoints" / "global-round-003.pt")
    )
    sha = sha256_of(checkpoint)
    (run / "evidence.json").write_text(
        json.dumps(
            {
                "operating_point": {"threshold": 0.5},
                "model": {"sha256": sha, "config": {"architecture": "blob"}},
            }
        )
    )
    before = tree(tmp_path)
    script = (
        "import sys\nfrom medfed.cli import main\n"
        "status = main(sys.argv[1:])\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'flwr'], 'Flower was loaded'\n"
        "sys.exit(status)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "site", "deliver", "--site-dir", str(site), "--model",
         str(checkpoint), "--evidence", str(run / "evidence.json"), "--out", "results",
         "--cases", "test"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    after = tree(tmp_path)
    changed = {p for p in after if before.get(p) != after[p]} | (before.keys() - after.keys())
    outside = {p for p in changed if not p.startswith("results/")}
    assert outside == {"site-a/audit.jsonl", "site-a/audit.head"}
    entry = AuditLog.in_folder(site).entries()[-1]
    assert entry.event == AuditEvent.RESULTS_DELIVERED
    assert entry.details["model_sha256"] == sha
    n_test = sum(r.split == "test" for r in SiteStore.open(site).read_manifest())
    assert entry.details["cases"] == n_test == len(results_rows(tmp_path / "results"))
    summary = json.loads((tmp_path / "results" / "delivery.json").read_text())
    assert summary["operating_point"]["threshold"] == 0.5
    assert "operating_point.threshold of" in summary["operating_point"]["source"]


@pytest.mark.slow
def test_a_run_s_final_model_delivers_at_its_evidence_threshold(
    demo_run: Path, tmp_path: Path
) -> None:
    evidence = json.loads((demo_run / "evidence.json").read_text())
    checkpoint = demo_run / evidence["model"]["checkpoint"]
    site = Path(
        shutil.copytree(demo_run.parent / "sites" / evidence["sites"][0]["id"], tmp_path / "site")
    )
    out = tmp_path / "out"
    summary = deliver(
        DeliveryRequest(site, checkpoint, out, evidence=demo_run / "evidence.json", cases="test")
    )
    assert summary.model.sha256 == evidence["model"]["sha256"]
    assert summary.operating.threshold == evidence["operating_point"]["threshold"]
    labels = {r.case_id: r.label for r in SiteStore.open(site).read_manifest()}
    rows = results_rows(out)
    correct = sum((row["finding"] == "present") == bool(labels[c]) for c, row in rows.items())
    assert correct / len(rows) > 0.8  # the trained model, at its own threshold, is right
