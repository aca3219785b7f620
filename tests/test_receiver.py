"""The DICOM receiver, as a PACS meets it: dcmtk's storescu sends real files; every instance
it reports as sent is stored, recognised as stored or quarantined with its reason; a sender
not on the allow-list is rejected and changes nothing; the session's report holds counts and
the de-identification method, never PHI; `medfed site label` moves received cases into the
manifest."""

from __future__ import annotations

import csv
import io
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import (
    PHI_STRINGS,
    CtSpec,
    compress_with_dcmtk,
    ct_dataset,
    original_uids,
    write_ct,
)
from dicom_network import SENDER, free_port, storescu
from test_cli import medfed

from site_client.decode import decode_image
from site_client.deid import Deidentifier
from site_client.policy import ReceiverPolicy, SitePolicy, write_policy
from site_client.quarantine import StoreQuarantine
from site_client.received import ReceivedIndex
from site_client.receiver import Receiver
from site_client.store import Acquisition, SiteStore
from task.labels import UID_KEY, LabelsFileError, read_labels


def store_responses(result: subprocess.CompletedProcess) -> list[str]:
    """The status of every C-STORE response storescu reports, in order."""
    marker = "Received Store Response ("
    return [
        line.split(marker, 1)[1].rstrip(")")
        for line in result.stderr.splitlines()
        if marker in line
    ]


@dataclass
class Exports:
    """A PACS's export folder: what storescu is given, and what each file is."""

    folder: Path
    good: dict[str, CtSpec]  # file name -> spec: stored
    duplicate: str  # a copy of a good file under another name: already stored
    quarantined: dict[str, tuple[CtSpec, str]]  # file name -> (spec, reason category)
    unsendable: str  # not DICOM: storescu does not send it

    def specs(self) -> list[CtSpec]:
        return [*self.good.values(), *(spec for spec, _ in self.quarantined.values())]


def _corrupt_jpeg_ls(path: Path) -> None:
    """Overwrite part of the JPEG-LS scan data of ``path``, leaving the encapsulation valid."""
    ds = pydicom.dcmread(path)
    data = bytearray(ds.PixelData)
    scan = data.index(b"\xff\xda")  # start of scan
    data[scan + 16 : scan + 26] = b"\xff" * 10
    ds.PixelData = bytes(data)
    ds.save_as(path)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Exports:
    root = tmp_path_factory.mktemp("pacs")
    folder = root / "export" / "DOE^JOHN"  # folder names carry patient names, as real ones do
    good = {f"good{i}.dcm": CtSpec(index=i) for i in (1, 2, 3)}
    for name, spec in good.items():
        write_ct(folder / name, spec)
    good["jpegls.dcm"] = CtSpec(index=4)
    compress_with_dcmtk(
        write_ct(root / "4.dcm", good["jpegls.dcm"]), folder / "jpegls.dcm", "dcmcjpls"
    )
    shutil.copy(folder / "good1.dcm", folder / "duplicate.dcm")

    quarantined = {
        "nopixels.dcm": (CtSpec(index=5, with_pixels=False), "no pixel data"),
        "shortpixels.dcm": (CtSpec(index=6), "truncated pixel data"),
        "brokenjls.dcm": (CtSpec(index=7), "undecodable pixels"),
    }
    write_ct(folder / "nopixels.dcm", quarantined["nopixels.dcm"][0])
    # Pixel data shorter than the image needs, in a well-formed stream storescu will send
    # (a file cut short is refused by storescu itself).
    short = ct_dataset(quarantined["shortpixels.dcm"][0])
    short.PixelData = short.PixelData[: len(short.PixelData) // 2]
    pydicom.dcmwrite(folder / "shortpixels.dcm", short, enforce_file_format=True)
    compress_with_dcmtk(
        write_ct(root / "7.dcm", quarantined["brokenjls.dcm"][0]),
        folder / "brokenjls.dcm",
        "dcmcjpls",
    )
    _corrupt_jpeg_ls(folder / "brokenjls.dcm")
    (folder / "notes.txt").write_text("not DICOM\n")
    return Exports(folder, good, "duplicate.dcm", quarantined, "notes.txt")


@dataclass
class Session:
    store: SiteStore
    receiver: Receiver
    port: int
    lines: list[str]


@pytest.fixture()
def session(tmp_path: Path) -> Iterator[Session]:
    store = SiteStore.create(tmp_path / "site")
    port = free_port()
    lines: list[str] = []
    receiver = Receiver(store, ReceiverPolicy(port=port, allowed_ae_titles=(SENDER,)), lines.append)
    receiver.start()
    try:
        yield Session(store, receiver, port, lines)
    finally:
        receiver.stop()


def case_id(store: SiteStore, spec: CtSpec) -> str:
    return Deidentifier(store.secret).pseudonym(spec.sop_uid, "case")


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def read_report(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def assert_no_phi(text: str, exports: Exports) -> None:
    for phi in PHI_STRINGS:
        assert phi not in text
    for spec in exports.specs():
        for uid in original_uids(spec):
            assert uid not in text
    for path in exports.folder.iterdir():
        assert path.name not in text
    assert exports.folder.parent.name not in text


def store_files(store: SiteStore) -> dict[str, bytes]:
    return {
        p.relative_to(store.root).as_posix(): p.read_bytes()
        for p in store.root.rglob("*")
        if p.is_file()
    }


def test_every_instance_sent_is_accounted_for(session: Session, exports: Exports) -> None:
    store, receiver = session.store, session.receiver
    result = storescu(session.port, exports.folder)
    statuses = store_responses(result)
    # storescu sends every DICOM file (the duplicate too) and skips the text file
    assert len(statuses) == len(exports.good) + 1 + len(exports.quarantined)
    assert set(statuses) == {"Success"}
    assert f"{exports.folder / exports.unsendable}" in result.stderr  # named as skipped

    # The report is rewritten when the association ends: counts survive a killed receiver.
    wait_for(lambda: read_report(receiver.report.path)["received"] == len(statuses))
    report = read_report(receiver.report.path)
    assert report["kind"] == "receive"
    assert report["received"] == len(statuses)
    assert report["stored"] == len(exports.good)
    assert report["already_stored"] == 1
    assert report["quarantined"] == len(exports.quarantined)
    assert report["failed"] == 0
    assert report["received"] == (
        report["stored"] + report["already_stored"] + report["quarantined"] + report["failed"]
    )
    assert report["quarantine_reasons"] == {reason: 1 for _, reason in exports.quarantined.values()}
    assert report["deidentification"]["profile"]
    assert report["deidentification"]["options"]

    # Stored images are the decoded originals, waiting for labels in the received index.
    for name, spec in exports.good.items():
        original = decode_image(pydicom.dcmread(exports.folder / name))
        np.testing.assert_array_equal(store.load_image(case_id(store, spec)), original)
    assert set(ReceivedIndex(store).cases()) == {case_id(store, s) for s in exports.good.values()}
    assert store.read_manifest() == []

    # Each quarantined instance is kept as it arrived (compressed ones as sent), with its reason.
    entries = StoreQuarantine(store).entries()
    assert len(entries) == len(exports.quarantined)
    for entry in entries:
        assert entry.source.startswith(f"{SENDER}/") and entry.reason
        kept = pydicom.dcmread(io.BytesIO(StoreQuarantine(store).read_copy(entry.copy)))
        name = next(
            n for n, (s, _) in exports.quarantined.items() if s.sop_uid == kept.SOPInstanceUID
        )
        assert entry.category == exports.quarantined[name][1]
        sent = pydicom.dcmread(exports.folder / name)
        assert kept.PatientName == sent.PatientName  # the original, not de-identified
        if sent.file_meta.TransferSyntaxUID.is_compressed:  # not decompressed on the way
            assert kept.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
            assert kept.PixelData == sent.PixelData

    # The operator's lines and the report name no patient, UID or file.
    wait_for(lambda: any("released" in line for line in session.lines))
    assert f"association from {SENDER} released: 8 instances: 4 stored" in "\n".join(session.lines)
    final = receiver.stop()
    assert (final.received, final.stored) == (report["received"], report["stored"])
    assert_no_phi(receiver.report.path.read_text(encoding="utf-8"), exports)
    assert_no_phi("\n".join(session.lines), exports)
    assert [p.name for p in store.intake_reports_dir.iterdir()] == [receiver.report.path.name]


# pynetdicom's state machine sometimes sees its own abort after an A-ASSOCIATE-RJ (Evt15 in
# Sta13) and raises in its reactor thread: harmless, the association is already closed.
@pytest.mark.filterwarnings(
    "ignore:Exception in thread .*run_reactor:pytest.PytestUnhandledThreadExceptionWarning"
)
def test_a_sender_not_on_the_allow_list_is_rejected_and_changes_nothing(
    session: Session, exports: Exports
) -> None:
    before = store_files(session.store)
    result = storescu(session.port, exports.folder / "good1.dcm", calling_ae="INTRUDER")
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr
    assert "Calling AE Title Not Recognized" in result.stderr
    assert store_responses(result) == []
    wait_for(lambda: any("rejected" in line for line in session.lines))
    assert "association from INTRUDER at 127.0.0.1 rejected: Calling AE title not recognised" in (
        session.lines
    )
    assert session.receiver.report.received == 0
    assert store_files(session.store) == before
    # C-ECHO from an allowed sender works; the AE titles are compared exactly.
    echo = ["echoscu", "-aet", SENDER, "127.0.0.1", str(session.port)]
    assert subprocess.run(echo, capture_output=True, timeout=30).returncode == 0
    echo[2] = SENDER.lower()
    assert subprocess.run(echo, capture_output=True, timeout=30).returncode != 0


def test_an_instance_that_cannot_be_kept_is_refused_and_counted(
    session: Session, exports: Exports, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = session.store
    save_case = store.save_case
    calls = []

    def failing_once(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        save_case(*args, **kwargs)

    monkeypatch.setattr(store, "save_case", failing_once)
    first = storescu(session.port, exports.folder / "good2.dcm")
    assert store_responses(first) == ["Refused: OutOfResources"]  # 0xA700
    again = storescu(session.port, exports.folder / "good2.dcm")
    assert store_responses(again) == ["Success"]
    report = session.receiver.stop()
    assert (report.received, report.failed, report.stored, report.quarantined) == (2, 1, 1, 0)
    assert set(ReceivedIndex(store).cases()) == {case_id(store, exports.good["good2.dcm"])}


def write_uid_labels(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["sop_instance_uid", "label", "split", "sex"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_site_label_moves_received_cases_into_the_manifest(
    session: Session, exports: Exports, tmp_path: Path
) -> None:
    storescu(session.port, exports.folder)
    session.receiver.stop()
    store = session.store
    good = exports.good
    labels = {"good1.dcm": 1, "good2.dcm": 0, "good3.dcm": 1, "jpegls.dcm": 0}
    rows = [
        {"sop_instance_uid": good[n].sop_uid, "label": str(v), "split": "", "sex": "F"}
        for n, v in labels.items()
    ]
    rows[0]["split"] = "test"
    rows += [
        # quarantined, so never received as a case
        {"sop_instance_uid": exports.quarantined["nopixels.dcm"][0].sop_uid, "label": "1"},
        {"sop_instance_uid": "1.2.3.4.5", "label": "0"},  # unknown
        {"sop_instance_uid": good["good1.dcm"].sop_uid + ".9", "label": "2"},  # invalid label
        {"sop_instance_uid": "DOE^JOHN", "label": "1"},  # not a UID
    ]
    csv_path = write_uid_labels(tmp_path / "labels.csv", rows)

    result = medfed("site", "label", "--site-dir", store.root, "--labels", csv_path)
    assert result.returncode == 0, result.stderr
    assert "8 rows: 4 cases labelled" in result.stdout
    assert "2 naming no received case" in result.stdout and "lines 6, 7" in result.stdout
    assert "2 invalid" in result.stdout and "line 8: label must be 0 or 1" in result.stdout
    assert "still without a label: 0" in result.stdout
    for spec in exports.specs():
        assert spec.sop_uid not in result.stdout

    manifest = {r.case_id: r for r in store.read_manifest()}
    assert {cid: r.label for cid, r in manifest.items()} == {
        case_id(store, good[n]): v for n, v in labels.items()
    }
    assert manifest[case_id(store, good["good1.dcm"])].split == "test"
    assert all(
        r.split in ("train", "test") and r.subgroups == {"sex": "F"} for r in manifest.values()
    )
    assert all((r.manufacturer, r.rows, r.columns) != ("", 0, 0) for r in manifest.values())
    # the acquisition recorded on receipt (original study year) survives the labelling
    assert {r.acquisition for r in manifest.values()} == {Acquisition("CT", "", 2024)}
    assert ReceivedIndex(store).cases() == {}

    again = medfed("site", "label", "--site-dir", store.root, "--labels", csv_path)
    assert "0 cases labelled, 4 already in the manifest" in again.stdout
    assert {r.case_id: r for r in store.read_manifest()} == manifest


def test_site_receive_refuses_an_empty_allow_list(tmp_path: Path) -> None:
    result = medfed("site", "receive", "--site-dir", tmp_path / "new-site")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "allowed_ae_titles" in result.stderr
    assert not (tmp_path / "new-site").exists()  # nothing created

    store = SiteStore.create(tmp_path / "site")
    write_policy(store.root, replace(store.policy, receiver=ReceiverPolicy(port=11113)))
    result = medfed("site", "receive", "--site-dir", store.root)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "no sender is allowed" in result.stderr


def test_site_receive_serves_until_sigterm_with_site_toml_settings(
    tmp_path: Path, exports: Exports
) -> None:
    store = SiteStore.create(tmp_path / "site")
    port = free_port()
    settings = ReceiverPolicy(ae_title="HOSPITAL_AI", port=port, allowed_ae_titles=(SENDER,))
    write_policy(store.root, SitePolicy(store.site_id, receiver=settings))
    process = subprocess.Popen(
        [sys.executable, "-m", "medfed", "site", "receive", "--site-dir", str(store.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = process.stdout.readline()
        assert f"receiving as HOSPITAL_AI on 127.0.0.1:{port}, from {SENDER}" in first
        sent = storescu(port, exports.folder / "good1.dcm", exports.folder / "nopixels.dcm")
        assert store_responses(sent) == ["Success", "Success"]
        wait_for(lambda: read_report(next(store.intake_reports_dir.iterdir()))["received"] == 2)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert f"association from {SENDER} released: 2 instances: 1 stored" in out
    assert "session: 2 instances received: 1 stored, 0 already stored, 1 quarantined" in out
    assert "quarantined, no pixel data: 1" in out
    assert_no_phi(first + out + err, exports)
    (report_path,) = store.intake_reports_dir.iterdir()
    assert read_report(report_path)["finished"] >= read_report(report_path)["started"]


@pytest.mark.parametrize("column", ["path", "mask"])
def test_uid_labels_refuse_columns_of_folder_labels(tmp_path: Path, column: str) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(f"sop_instance_uid,label,{column}\n1.2.3,1,x\n", encoding="utf-8")
    with pytest.raises(LabelsFileError, match=f"column\\(s\\) {column} have no meaning"):
        read_labels(labels, key=UID_KEY)
