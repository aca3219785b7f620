"""Append-only, hash-chained JSON Lines logs: the site's privacy ledger and the audit trails
of sites and coordinator.

``LOG`` holds one JSON object per line, in order, and is only ever appended to. Each record
carries ``prev`` (the hash of the record before it; `GENESIS` for the first) and ``hash``
(SHA-256 of the record without ``hash``, keys sorted), so an edited, removed or reordered
record breaks the chain. The head file beside it holds the number of records and the last
hash, so records removed from the end, or a deleted log, are noticed too. Appends are
serialised by an exclusive lock on ``LOG.lock`` and flushed to disk before they return.

What a chain cannot show: a log rewritten from the first record on, head file included, by
someone who can write both files. Anchor the head elsewhere (another party's log, a
report) to catch that.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
#: The keys a chained record adds to what it stores.
CHAIN_KEYS = ("prev", "hash")


class ChainError(RuntimeError):
    """The log is damaged: edited, removed, reordered, truncated or unreadable records."""


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 (hex) of ``record`` (without its ``hash``) as canonical JSON."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class HashChainLog:
    """The log at ``path`` with its head file ``head_path``; ``error`` is the exception type
    its problems raise (a `ChainError` subclass, so callers can name their log)."""

    def __init__(self, path: Path, head_path: Path, error: type[ChainError] = ChainError) -> None:
        self.path = path
        self.head_path = head_path
        self.error = error

    def records(self) -> list[dict[str, Any]]:
        """Every record (without ``prev`` and ``hash``), in order, after checking the chain."""
        return [_body(record) for record in self._verified()]

    def head(self) -> tuple[int, str]:
        """``(number of records, last hash)`` after checking the chain (``(0, GENESIS)`` for
        an empty log)."""
        chained = self._verified()
        return len(chained), chained[-1]["hash"] if chained else GENESIS

    def append(self, body: dict[str, Any]) -> str:
        """Add ``body`` (JSON-serialisable, without ``prev``/``hash``) at the end; returns
        its hash. Raises ``error`` if the log is damaged: nothing is added to a broken chain."""
        if set(body) & set(CHAIN_KEYS):
            raise ValueError(f"a record may not hold {', '.join(CHAIN_KEYS)}")
        with self._locked():
            chained = self._verified()
            record = {**body, "prev": chained[-1]["hash"] if chained else GENESIS}
            record["hash"] = record_hash(record)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            self._write_head(len(chained) + 1, record["hash"])
            return record["hash"]

    def _verified(self) -> list[dict[str, Any]]:
        head = self._read_head()
        if not self.path.exists():
            if head is not None and head[0] > 0:
                raise self.error(
                    f"{self.path}: missing, but {self.head_path} records {head[0]} entries; "
                    "the log was deleted (restore it from backup; it is never reset)"
                )
            return []
        chained: list[dict[str, Any]] = []
        previous = GENESIS
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            where = f"{self.path} line {number}"
            try:
                record = json.loads(line)
                claimed, prev = record["hash"], record["prev"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise self.error(f"{where}: not a log entry ({exc})") from exc
            if prev != previous:
                raise self.error(f"{where}: breaks the chain (an entry was removed or reordered)")
            if record_hash(record) != claimed:
                raise self.error(f"{where}: hash mismatch (the entry was edited)")
            chained.append(record)
            previous = claimed
        if head is not None:
            count, last = head
            if len(chained) < count:
                raise self.error(
                    f"{self.path}: holds {len(chained)} entries but {self.head_path} records "
                    f"{count}; entries were removed from the end"
                )
            if count and chained[count - 1]["hash"] != last:
                raise self.error(f"{self.path}: entry {count} does not match {self.head_path}")
        elif chained:
            raise self.error(f"{self.head_path}: missing for a log of {len(chained)} entries")
        return chained

    def _read_head(self) -> tuple[int, str] | None:
        if not self.head_path.exists():
            return None
        try:
            head = json.loads(self.head_path.read_text(encoding="utf-8"))
            return int(head["entries"]), str(head["last"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise self.error(f"{self.head_path}: unreadable ({exc})") from exc

    def _write_head(self, count: int, last: str) -> None:
        tmp = self.head_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"entries": count, "last": last}), encoding="utf-8")
        tmp.replace(self.head_path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.path.with_suffix(".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _body(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in CHAIN_KEYS}
