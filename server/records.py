"""What a run writes besides checkpoints: per-round records and the wire audit.

- ``RUN/rounds.jsonl``: one line per site and phase of each round (metrics or error).
- ``RUN/wire.jsonl``: every message the coordinator sent and every reply it received:
  message type, site, and the records (scalar and histogram values in full; arrays as
  shapes and a SHA-256). What crossed the wire can be audited from it alone.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

ROUNDS_FILE = "rounds.jsonl"
WIRE_FILE = "wire.jsonl"


class JsonLines:
    """Append-only JSON-lines file, safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
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
            digest = hashlib.sha256()
            for array in record.values():
                digest.update(array.data)
            described[name] = {
                "type": "ArrayRecord",
                "shapes": {k: list(a.shape) for k, a in record.items()},
                "sha256": digest.hexdigest(),
            }
        elif isinstance(record, MetricRecord | ConfigRecord):
            values = {k: v.hex() if isinstance(v, bytes) else v for k, v in record.items()}
            described[name] = {"type": type(record).__name__, "values": values}
        else:
            described[name] = {"type": type(record).__name__}
    return described


class AuditedGrid(Grid):
    """A Grid that logs every message sent and every reply received to ``wire.jsonl``.

    ``site_of`` maps node ids to site ids once the sites are known; ``stage`` names the
    step of the run (set by the orchestration before each exchange). Nodes in
    ``hidden_nodes`` are left out of `get_node_ids`, so that a strategy, which samples its
    sites from there, never asks them (held-out sites of an external validation).
    """

    def __init__(self, grid: Grid, log: JsonLines) -> None:
        self._grid = grid
        self._log = log
        self.site_of: dict[int, str] = {}
        self.stage = "start"
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
        messages = list(messages)
        for message in messages:
            self._record("sent", message.metadata.dst_node_id, message)
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self._grid.pull_messages(message_ids))
        for reply in replies:
            self._record("received", reply.metadata.src_node_id, reply)
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        for message in messages:
            self._record("sent", message.metadata.dst_node_id, message)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            self._record("received", reply.metadata.src_node_id, reply)
        return replies

    def _record(self, direction: str, node_id: int, message: Message) -> None:
        entry: dict[str, Any] = {
            "direction": direction,
            "stage": self.stage,
            "message_type": message.metadata.message_type,
            "node_id": node_id,
            "site": self.site_of.get(node_id),
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
