"""What a report is made from: ``RUN/evidence.json`` (checked for its core keys) and an
optional intended-use statement."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: validation.evidence.EVIDENCE_FILE, repeated: that module pulls in the statistics stack
#: (scipy, dp-accounting), which a report does not need (tests/test_report.py checks it).
EVIDENCE_FILE = "evidence.json"
#: The keys without which no report is written, and the JSON type each must have.
REQUIRED_FIELDS: dict[str, type] = {
    "schema_version": str,
    "run": dict,
    "model": dict,
    "sites": list,
    "performance": dict,
}
#: Required fields inside those (dotted path -> JSON type).
REQUIRED_NESTED: dict[str, type] = {"run.id": str, "performance.pooled": dict}
_JSON_TYPES = {str: "a string", dict: "an object", list: "an array"}


class ReportError(RuntimeError):
    """A report that cannot be written (one line, naming the file and field)."""


@dataclass(frozen=True)
class TextFile:
    """A text file the report quotes: its path, content and SHA-256."""

    path: Path
    text: str
    sha256: str


@dataclass(frozen=True)
class ReportSource:
    """Everything a report shows: the evidence (``data``, from ``evidence``) and the
    intended-use statement if one was given."""

    data: dict[str, Any]
    evidence: TextFile
    intended_use: TextFile | None = None

    @property
    def simulated(self) -> bool:
        """Whether the run says its sites or scanner differences are simulated."""
        return dig(self.data, "run", "data", "simulated") is True


def dig(value: Any, *keys: str | int) -> Any:
    """``value[k1][k2]...``, or None where a key is missing or a level has the wrong type."""
    for key in keys:
        if isinstance(key, int) and isinstance(value, list) and -len(value) <= key < len(value):
            value = value[key]
        elif isinstance(key, str) and isinstance(value, dict):
            value = value.get(key)
        else:
            return None
    return value


def read_text(path: Path, what: str) -> TextFile:
    """The UTF-8 text file ``path``; `ReportError` naming it (and ``what`` it is for) if
    it cannot be read."""
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file ({what})") from None
    except IsADirectoryError:
        raise ReportError(f"{path}: is a directory, not a file ({what})") from None
    except OSError as exc:
        raise ReportError(f"{path}: cannot read ({what}): {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ReportError(f"{path}: not UTF-8 text ({what}): byte {exc.start}") from None
    return TextFile(path, text, hashlib.sha256(raw).hexdigest())


def load_evidence(run_dir: Path) -> TextFile:
    """``run_dir/evidence.json``, checked to be a JSON object with the core fields
    (`REQUIRED_FIELDS`, `REQUIRED_NESTED`); `ReportError` otherwise."""
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run directory")
    path = run_dir / EVIDENCE_FILE
    if not path.is_file():
        raise ReportError(f"{path}: no such file (the run wrote no evidence)")
    return read_text(path, "the run's evidence")


def parse_evidence(evidence: TextFile) -> dict[str, Any]:
    """The evidence file's JSON object; `ReportError` naming the file and the first
    missing or mistyped core field."""
    try:
        data = json.loads(evidence.text)
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"{evidence.path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    if not isinstance(data, dict):
        raise ReportError(f"{evidence.path}: not a JSON object but {type(data).__name__}")
    missing = [key for key in REQUIRED_FIELDS if key not in data]
    missing += [key for key in REQUIRED_NESTED if dig(data, *key.split(".")) is None]
    if missing:
        raise ReportError(f"{evidence.path}: missing required field(s): {', '.join(missing)}")
    for key, kind in (REQUIRED_FIELDS | REQUIRED_NESTED).items():
        if not isinstance(dig(data, *key.split(".")), kind):
            raise ReportError(f"{evidence.path}: field {key} must be {_JSON_TYPES[kind]}")
    return data


def read_source(run_dir: Path, intended_use: Path | None = None) -> ReportSource:
    """The report's inputs for the run in ``run_dir``; `ReportError` on any bad input."""
    evidence = load_evidence(run_dir)
    data = parse_evidence(evidence)
    statement = read_text(intended_use, "--intended-use") if intended_use else None
    if statement is not None and not statement.text.strip():
        raise ReportError(f"{statement.path}: empty (--intended-use)")
    return ReportSource(data, evidence, statement)
