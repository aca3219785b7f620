"""Signed models and audit trails: a site refuses a model that is not the coordinator's, and
an edited, removed, reordered or truncated audit entry is found."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import MESSAGE_RUN_ID, IngestedFederation
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from test_cli import medfed

from site_client.client_app import SITE_DIR_KEY, SITE_ERROR, build_client_app
from site_client.policy import CoordinatorPolicy, write_policy
from site_client.store import SiteStore
from task.audit import (
    AUDIT_FILE,
    AuditEntry,
    AuditError,
    AuditEvent,
    AuditLog,
    verify_audit_log,
)
from task.signing import (
    MODEL_REJECTED,
    SIGNATURES,
    ModelSignatureError,
    load_signing_key,
    load_verify_key,
    model_sha256,
    sign_model,
    verify_models,
    write_signing_key,
)
from task.wire import ARRAYS, MSG_EVALUATE

RUN = MESSAGE_RUN_ID  # the Flower run id of the messages below
pytestmark = pytest.mark.usefixtures("message_identity")


def _arrays(value: float = 0.5) -> ArrayRecord:
    return ArrayRecord({"w": torch.full((2, 3), value), "b": torch.zeros(3)})


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "signing.pem", tmp_path / "signing.pub"
    write_signing_key(private, public)
    return private, public


def test_a_models_hash_covers_names_shapes_dtypes_and_values() -> None:
    base = model_sha256(_arrays())
    assert model_sha256(_arrays()) == base
    assert model_sha256(_arrays(0.5000001)) != base
    reshaped = ArrayRecord({"w": torch.full((3, 2), 0.5), "b": torch.zeros(3)})
    renamed = ArrayRecord({"v": torch.full((2, 3), 0.5), "b": torch.zeros(3)})
    retyped = ArrayRecord({"w": torch.full((2, 3), 0.5, dtype=torch.float64), "b": torch.zeros(3)})
    assert base not in {model_sha256(reshaped), model_sha256(renamed), model_sha256(retyped)}


def test_a_signature_holds_for_its_model_in_its_run_only(keys: tuple[Path, Path]) -> None:
    private, public = keys
    signer, verifier = load_signing_key(private), load_verify_key(public)
    signature = sign_model(signer, "7", model_sha256(_arrays()))
    content = RecordDict({ARRAYS: _arrays(), SIGNATURES: ConfigRecord({ARRAYS: signature})})
    assert verify_models(verifier, "7", content) == {ARRAYS: model_sha256(_arrays())}
    with pytest.raises(ModelSignatureError, match="for run 8"):
        verify_models(verifier, "8", content)  # replayed into another run
    tampered = RecordDict({ARRAYS: _arrays(0.6), SIGNATURES: ConfigRecord({ARRAYS: signature})})
    with pytest.raises(ModelSignatureError, match="does not match the coordinator's signature"):
        verify_models(verifier, "7", tampered)
    with pytest.raises(ModelSignatureError, match="not signed"):
        verify_models(verifier, "7", RecordDict({ARRAYS: _arrays()}))
    other = tmp_key = private.with_name("other.pem")
    write_signing_key(tmp_key, other.with_suffix(".pub"))
    forged = sign_model(load_signing_key(other), "7", model_sha256(_arrays()))
    with pytest.raises(ModelSignatureError):
        verify_models(
            verifier,
            "7",
            RecordDict({ARRAYS: _arrays(), SIGNATURES: ConfigRecord({ARRAYS: forged})}),
        )


def _site_with_key(federation: IngestedFederation, tmp_path: Path, public: Path) -> Path:
    site = federation.fresh_copies(tmp_path / "sites")[0]
    shutil.copy(public, site / "coordinator.pub")
    policy = SiteStore.open(site).policy
    write_policy(site, replace(policy, coordinator=CoordinatorPolicy("coordinator.pub")))
    return site


def _ask(site: Path, content: RecordDict) -> Message:
    """Send ``content`` as an evaluate message to the site's ClientApp."""
    context = Context(RUN, 0, {SITE_DIR_KEY: str(site)}, RecordDict(), {})
    message = Message(content, dst_node_id=0, message_type=MSG_EVALUATE)
    return build_client_app()(message, context)


def test_a_site_refuses_a_tampered_or_unsigned_model_and_audits_it(
    small_federation: IngestedFederation, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    site = _site_with_key(small_federation, tmp_path, public)
    signature = sign_model(load_signing_key(private), str(RUN), model_sha256(_arrays()))

    tampered = _ask(
        site, RecordDict({ARRAYS: _arrays(0.6), SIGNATURES: ConfigRecord({ARRAYS: signature})})
    )
    assert tampered.has_error() and tampered.error.code == MODEL_REJECTED
    assert "does not match the coordinator's signature" in tampered.error.reason
    unsigned = _ask(site, RecordDict({ARRAYS: _arrays()}))
    assert unsigned.has_error() and unsigned.error.code == MODEL_REJECTED
    # A correctly signed model passes the check (this bare message then lacks its config).
    signed = _ask(
        site, RecordDict({ARRAYS: _arrays(), SIGNATURES: ConfigRecord({ARRAYS: signature})})
    )
    assert signed.has_error() and signed.error.code == SITE_ERROR

    entries = AuditLog.in_folder(site).entries()
    assert [e.event for e in entries] == [
        AuditEvent.MODEL_REJECTED,
        AuditEvent.MODEL_REJECTED,
        AuditEvent.MODEL_RECEIVED,
    ]
    assert "does not match" in str(entries[0].details["reason"])
    assert entries[2].details["sha256"] == model_sha256(_arrays())
    assert entries[2].details["signed"] is True


def test_a_site_whose_key_file_is_missing_refuses_every_model(
    small_federation: IngestedFederation, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    site = _site_with_key(small_federation, tmp_path, keys[1])
    (site / "coordinator.pub").unlink()
    reply = _ask(site, RecordDict({ARRAYS: _arrays()}))
    assert reply.error.code == MODEL_REJECTED and "cannot check signatures" in reply.error.reason


def _trail_of_three(folder: Path) -> list[str]:
    log = AuditLog.in_folder(folder)
    for round_ in (1, 2, 3):
        log.record(AuditEntry("site-a", AuditEvent.MODEL_RECEIVED, "run-1", round_, {"n": round_}))
    return (folder / AUDIT_FILE).read_text().splitlines()


def _edit(lines: list[str]) -> list[str]:
    record = json.loads(lines[1])
    record["details"]["n"] = 99
    return [lines[0], json.dumps(record, sort_keys=True), lines[2]]


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_edit, "line 2: hash mismatch"),
        (lambda lines: [lines[0], lines[2]], "line 2: breaks the chain"),
        (lambda lines: [lines[1], lines[0], lines[2]], "line 1: breaks the chain"),
        (lambda lines: lines[:2], "entries were removed from the end"),
    ],
    ids=["edited", "removed", "reordered", "truncated"],
)
def test_audit_verify_finds_a_tampered_trail(tmp_path: Path, tamper, message: str) -> None:
    lines = _trail_of_three(tmp_path)
    intact = medfed("audit", "verify", tmp_path)
    assert intact.returncode == 0 and "intact, 3 entries" in intact.stdout
    (tmp_path / AUDIT_FILE).write_text("\n".join(tamper(lines)) + "\n")
    with pytest.raises(AuditError, match=message):
        verify_audit_log(tmp_path / AUDIT_FILE)
    result = medfed("audit", "verify", tmp_path / AUDIT_FILE)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and message in result.stderr


def test_a_trail_holds_plain_short_values_only(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="plain value"):
        AuditEntry("site-a", AuditEvent.REFUSED, details={"case": {"name": "DOE^JANE"}})  # type: ignore[dict-item]
    with pytest.raises(AuditError, match="longer than"):
        AuditEntry("site-a", AuditEvent.REFUSED, details={"reason": "x" * 1000})
    assert medfed("audit", "verify", tmp_path).returncode == 1  # no trail there
