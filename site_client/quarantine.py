"""Quarantine: what intake could not use, kept with its reason so that nothing is lost.

A quarantined file is the original as it arrived (it may carry patient data), so a site
store keeps its quarantine encrypted (`StoreQuarantine`: ``store/quarantine/<n>.dcm.enc``
and ``store/quarantine.csv.enc``). ``medfed deid`` writes a plain quarantine folder beside
its output (`FolderQuarantine`): its inputs are plain files in the first place.

Copies are numbered, never named after the original (file names can hold patient names);
the log gives each copy's source path (relative to the input folder), reason category,
one-line reason and SHA-256. A file already quarantined (same source and content) is not
added again, so re-running intake over the same folder leaves the quarantine as it is.
"""

from __future__ import annotations

import csv
import hashlib
import io
from abc import ABC, abstractmethod
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from site_client.store import SiteStore

QUARANTINE_LOG = "quarantine.csv"


@dataclass(frozen=True)
class QuarantineEntry:
    """One quarantined file: its source (relative path, or ``<calling AE>/<n>`` for a
    received instance), the copy's name, reason category and reason, SHA-256 of the copy."""

    source: str
    copy: str
    category: str
    reason: str
    sha256: str


QUARANTINE_COLUMNS = tuple(f.name for f in fields(QuarantineEntry))


class Quarantine(ABC):
    """Numbered copies of unusable inputs and a CSV log of them."""

    def __init__(self) -> None:
        self._entries = self._read_log()
        self._known = {(e.source, e.sha256): e.copy for e in self._entries}

    def entries(self) -> list[QuarantineEntry]:
        """Every file in the quarantine, oldest first."""
        return list(self._entries)

    def add(self, data: bytes, source: str, category: str, reason: str) -> str:
        """Keep ``data`` (the unusable input's bytes) with its reason; returns the copy's
        name. The same source with the same content is kept once."""
        digest = hashlib.sha256(data).hexdigest()
        known = self._known.get((source, digest))
        if known is not None:
            return known
        name = f"{len(self._entries) + 1:05d}.dcm"
        self._write_copy(name, data)
        self._entries.append(QuarantineEntry(source, name, category, reason, digest))
        self._known[(source, digest)] = name
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        writer.writerow(QUARANTINE_COLUMNS)
        writer.writerows(astuple(e) for e in self._entries)
        self._write_log(buffer.getvalue().encode("utf-8"))
        return name

    def _read_log(self) -> list[QuarantineEntry]:
        data = self._log_bytes()
        if data is None:
            return []
        reader = csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""))
        return [QuarantineEntry(**row) for row in reader]

    @abstractmethod
    def read_copy(self, name: str) -> bytes:
        """The bytes of the quarantined copy ``name``."""

    @abstractmethod
    def _log_bytes(self) -> bytes | None:
        """The log's content, None when there is no log yet."""

    @abstractmethod
    def _write_log(self, data: bytes) -> None: ...

    @abstractmethod
    def _write_copy(self, name: str, data: bytes) -> None: ...


class FolderQuarantine(Quarantine):
    """A plain quarantine folder: ``<folder>/<n>.dcm`` and ``<folder>/quarantine.csv``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.log_path = folder / QUARANTINE_LOG
        super().__init__()

    def read_copy(self, name: str) -> bytes:
        return (self.folder / name).read_bytes()

    def _log_bytes(self) -> bytes | None:
        return self.log_path.read_bytes() if self.log_path.exists() else None

    def _write_log(self, data: bytes) -> None:
        self.log_path.write_bytes(data)

    def _write_copy(self, name: str, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / name).write_bytes(data)


class StoreQuarantine(Quarantine):
    """A site store's encrypted quarantine (``store/quarantine/``, ``store/quarantine.csv``)."""

    LOG = "quarantine.csv"
    FOLDER = "quarantine"

    def __init__(self, store: SiteStore) -> None:
        self.store = store
        super().__init__()

    def read_copy(self, name: str) -> bytes:
        return self.store.read_file(f"{self.FOLDER}/{name}")

    def _log_bytes(self) -> bytes | None:
        if not self.store.has_file(self.LOG):
            return None
        return self.store.read_file(self.LOG)

    def _write_log(self, data: bytes) -> None:
        self.store.write_file(self.LOG, data)

    def _write_copy(self, name: str, data: bytes) -> None:
        self.store.write_file(f"{self.FOLDER}/{name}", data)
