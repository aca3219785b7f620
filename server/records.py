"""What a run writes besides checkpoints: per-round records and the wire audit.

- ``RUN/rounds.jsonl``: one line per site and phase of each round (metrics or error).
- ``RUN/wire.jsonl``: every message the coordinator sent and every reply it received:
  message type, site, its size (``bytes``: the serialized objects Flower transfers for it,
  its metadata, records and arrays; not HTTP or TLS framing), and the records (scalar and
  histogram values in full; arrays as shapes and a SHA-256). What crossed the wire can be
  audited from it alone.
- the coordinator's audit trail (`task.audit`, hash-chained): every model sent and
  received with its SHA-256, each site that joined, each refusal.

With a model-signing key, every model the coordinator sends is signed (`task.signing`):
the message carries a ConfigRecord `SIGNATURES` naming, for each of its ArrayRecords, the
signature of that model in this run.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.run import Run

from task.audit import COORDINATOR, AuditEntry, AuditEvent, AuditLog
from task.signing import SIGNATURES, model_sha256, sign_model

ROUNDS_FILE = "rounds.jsonl"
WIRE_FILE = "wire.jsonl"


class JsonLines:
    """Append-only JSON-lines file, safe to share between threads; emptied when opened
    unless ``keep`` (a resumed job goes on appending)."""

    def __init__(self, path: Path, keep: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        if not (keep and path.exists()):
            path.write_text("")

    def append(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, sort_keys=True)
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def read(self) -> list[dict[str, Any]]:
        """Every entry so far, in order."""
        with self._lock:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line]


def describe_records(content: RecordDict) -> dict[str, Any]:
    """A JSON-able account of ``content``: values of metric and config records, shapes and
    a SHA-256 of array records."""
    described: dict[str, Any] = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            described[name] = {
                "type": "ArrayRecord",
                "shapes": {k: list(a.shape) for k, a in record.items()},
                "sha256": model_sha256(record),
            }
        elif isinstance(record, MetricRecord | ConfigRecord):
            values = {k: v.hex() if isinstance(v, bytes) else v for k, v in record.items()}
            described[name] = {"type": type(record).__name__, "values": values}
        else:
            described[name] = {"type": type(record).__name__}
    return described


class AuditedGrid(Grid):
    """A Grid that logs every message sent and every reply received to ``wire.jsonl``, signs
    the models it sends (with ``signer``) and keeps the coordinator's audit trail (``audit``).

    ``site_of`` maps node ids to site ids once the sites are known; ``stage`` names the
    step of the run and ``round`` its federated round, if any (both set by the
    orchestration before each exchange). Nodes in ``hidden_nodes`` are left out of
    `get_node_ids`, so that a strategy, which samples its sites from there, never asks them
    (held-out sites of an external validation).
    """

    def __init__(
        self,
        grid: Grid,
        log: JsonLines,
        signer: Ed25519PrivateKey | None = None,
        audit: AuditLog | None = None,
        run_id: str = "",
    ) -> None:
        self._grid = grid
        self._log = log
        self._signer = signer
        self._audit = audit
        self._run_id = run_id
        self._signatures: dict[tuple[int, str], str] = {}
        self.site_of: dict[int, str] = {}
        self.stage = "start"
        self.round: int | None = None
        self.hidden_nodes: set[int] = set()

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self._grid.get_node_ids() if n not in self.hidden_nodes]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = [self._sent(m) for m in messages]
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self._grid.pull_messages(message_ids))
        for reply in replies:
            self._received(reply)
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = [self._sent(m) for m in messages]
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        replies = _attributed(replies, messages, set(self.site_of))
        for reply in replies:
            self._received(reply)
        return replies

    def audit(self, event: AuditEvent, **details: str | int | float | bool | None) -> None:
        """Add an entry to the coordinator's audit trail (if it keeps one)."""
        if self._audit is not None:
            self._audit.record(
                AuditEntry(COORDINATOR, event, self._run_id, self.round, dict(details))
            )

    def _sent(self, message: Message) -> Message:
        """Sign ``message``'s models (with a signer), then log and audit it."""
        node = message.metadata.dst_node_id
        models = {n: model_sha256(r) for n, r in message.content.array_records.items()}
        if self._signer is not None and models:
            message.content[SIGNATURES] = ConfigRecord(
                {n: self._signature(message.metadata.run_id, h) for n, h in models.items()}
            )
        self._record("sent", node, message)
        for name, sha256 in models.items():
            self.audit(
                AuditEvent.MODEL_SENT,
                site=self.site_of.get(node),
                message=message.metadata.message_type,
                record=name,
                sha256=sha256,
                signed=self._signer is not None,
            )
        return message

    def _signature(self, flower_run: int, sha256: str) -> str:
        key = (flower_run, sha256)
        if key not in self._signatures:  # one model goes to every site: sign it once
            self._signatures[key] = sign_model(self._signer, str(flower_run), sha256)  # type: ignore[arg-type]
        return self._signatures[key]

    def _received(self, reply: Message) -> None:
        node = reply.metadata.src_node_id
        self._record("received", node, reply)
        if reply.has_error():
            self.audit(
                AuditEvent.REFUSED,
                site=self.site_of.get(node),
                message=reply.metadata.message_type,
                code=reply.error.code,
                reason=reply.error.reason[:300],
            )
            return
        for name, record in reply.content.array_records.items():
            self.audit(
                AuditEvent.MODEL_RECEIVED,
                site=self.site_of.get(node),
                message=reply.metadata.message_type,
                record=name,
                sha256=model_sha256(record),
            )

    def _record(self, direction: str, node_id: int, message: Message) -> None:
        entry: dict[str, Any] = {
            "direction": direction,
            "stage": self.stage,
            "message_type": message.metadata.message_type,
            "node_id": node_id,
            "site": self.site_of.get(node_id),
            "bytes": message_bytes(message),
        }
        if message.has_error():
            entry["error"] = {"code": message.error.code, "reason": message.error.reason}
        else:
            records = describe_records(message.content)
            if direction == "sent":  # what the coordinator sends is its own: keep it short
                records = {
                    k: {"type": v["type"]} | ({"sha256": v["sha256"]} if "sha256" in v else {})
                    for k, v in records.items()
                }
            entry["records"] = records
        self._log.append(entry)


#: The reason recorded for a site that did not answer a message within the timeout.
NO_REPLY = "no reply within the timeout"


#: ANSI escape sequences (colours) in the reasons Flower's runtime writes for a crash.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: What Flower's runtime puts before the message of the exception a ClientApp raised.
_RAISED = "occurred. Message: "
_REASON_CHARS = 300


def concise_reason(reason: str) -> str:
    """An error reply's reason in one short line: Flower's runtime answers for a ClientApp
    that raised with its traceback (colours included); this keeps the exception's message."""
    lines = [line.strip() for line in _ANSI.sub("", reason).splitlines() if line.strip()]
    if not lines:
        return reason
    line = lines[-1]
    if _RAISED in line:
        line = "the site's ClientApp raised: " + line.split(_RAISED, 1)[1].removesuffix("'>")
    return line[:_REASON_CHARS]


def no_reply(sent: Message) -> Message:
    """The error reply standing for a site's silence to ``sent``."""
    return Message(Error(0, NO_REPLY), reply_to=sent)


def message_bytes(message: Message) -> int:
    """Bytes of ``message`` as Flower transfers it: the serialized message and every object
    nested in it (records, arrays), each once."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def _attributed(replies: list[Message], sent: list[Message], sites: set[int]) -> list[Message]:
    """``replies``, with each error the runtime made for a site (Flower's SuperLink answers
    for a site that went away, e.g. NODE_UNAVAILABLE, from its own node id) turned into an
    error from that site, so that records name the site that missed the round."""
    if not sites:
        return replies  # before discovery: nothing to attribute to
    to = {m.metadata.message_id: m for m in sent}
    return [
        Message(reply.error, reply_to=to[reply.metadata.reply_to_message_id])
        if reply.has_error()
        and reply.metadata.src_node_id not in sites
        and reply.metadata.reply_to_message_id in to
        else reply
        for reply in replies
    ]
