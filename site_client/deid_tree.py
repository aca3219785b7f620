"""``medfed deid``: a de-identified copy of a DICOM tree, with its quarantine and report.

Each file is read, checked (a SOP Instance UID, no burned-in text risk, a whole decodable
image), de-identified (`site_client.deid.Deidentifier`) and written under its replaced SOP
Instance UID, in worker processes (one per core by default). The parent decides, in input
order, what every result becomes: an output, or a quarantined copy with its reason (a
duplicate SOP Instance UID is found there, so the first file in path order wins).
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path

import pydicom

from site_client.burned_in import burned_in_text_risk
from site_client.decode import UnusableInput, one_line, read_dicom, verify_pixels
from site_client.deid import Deidentifier, DeidError, DeidOptions
from site_client.intake_report import IntakeProblem, IntakeReport
from site_client.iod_types import load_standard
from site_client.quarantine import FolderQuarantine

DEID_REPORT_NAME = "deid-report.json"
DEID_LOG_NAME = "deid-log.csv"
#: Below this many files per worker, starting workers costs more than it saves.
_FILES_PER_WORKER = 8


def iter_files(root: Path) -> list[Path]:
    """Every regular file under ``root``, sorted by relative POSIX path (symlinked folders
    are not followed)."""
    found = [Path(folder) / name for folder, _, files in os.walk(root) for name in files]
    return sorted((p for p in found if p.is_file()), key=lambda p: p.relative_to(root).as_posix())


@dataclass(frozen=True)
class DeidLogEntry:
    """One input file of `deidentify_tree`: its output file name, or the category and
    reason that sent it to quarantine."""

    source: str
    output: str = ""
    category: str = ""
    reason: str = ""

    @property
    def status(self) -> str:
        return "quarantined" if self.category else "ok"


@dataclass
class DeidTreeReport(IntakeReport):
    """What `deidentify_tree` did (``received == stored + quarantined``), and, for the
    console and the site-private log, each input's entry."""

    entries: list[DeidLogEntry] = field(default_factory=list)


@dataclass(frozen=True)
class _Job:
    """What every worker needs: the key, the options, where to write."""

    secret: bytes
    options: DeidOptions
    out_dir: Path
    allow_burned_in_text: bool


@dataclass(frozen=True)
class _Written:
    """A de-identified file written under a temporary name, to be renamed to ``name``."""

    name: str
    temporary: Path


def quarantine_folder(out_dir: Path) -> Path:
    """Where `deidentify_tree` keeps what it could not use and its per-file log: the folder
    ``<out_dir>-quarantine`` beside ``out_dir`` (never inside it: it names input files)."""
    return out_dir.with_name(out_dir.name + "-quarantine")


def deidentify_tree(
    in_dir: Path,
    out_dir: Path,
    secret: bytes,
    progress: Callable[[int, int], None] | None = None,
    options: DeidOptions | None = None,
    allow_burned_in_text: bool = False,
    workers: int | None = None,
) -> DeidTreeReport:
    """Write a de-identified copy of every DICOM image under ``in_dir`` into ``out_dir``.

    Outputs are flat and named ``<replaced SOP Instance UID>.dcm`` (original file and folder
    names can hold patient names), with ``deid-report.json`` (counts, profile and options;
    nothing identifying). A file goes to quarantine instead when it is not DICOM, has no
    SOP Instance UID or the same one as an earlier file, holds no whole decodable image
    (pixel-less objects such as structured reports carry free text this tool does not
    clean), or may carry burned-in text (`site_client.burned_in`; unless
    ``allow_burned_in_text``: header de-identification cannot remove it). Quarantined files
    are copied with their reasons to `quarantine_folder` (``quarantine.csv``), which also
    holds ``deid-log.csv``: every input file (its path relative to ``in_dir``) with its
    output or its reason. That folder stays at the site. Originals are only read.
    ``options``: the profile options (default: `DeidOptions()`). ``workers``: processes
    (default: one per core, fewer for small trees; 1: none).
    ``progress(done, total)`` is called after each file.
    """
    in_dir, out_dir = in_dir.resolve(), out_dir.resolve()
    if not in_dir.is_dir():
        raise DeidError(f"{in_dir}: no such input folder")
    held = quarantine_folder(out_dir)
    for folder in (out_dir, held):
        if folder == in_dir or in_dir in folder.parents:
            raise DeidError(f"{folder}: the output must not be inside the input folder")
    job = _Job(secret, options or DeidOptions(), out_dir, allow_burned_in_text)
    files = iter_files(in_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    quarantine = FolderQuarantine(held)
    report = DeidTreeReport(
        kind="deid", deidentification=_deidentifier(job).method(), received=len(files)
    )
    written_by: dict[str, str] = {}
    if workers is None:
        workers = min(os.cpu_count() or 1, len(files) // _FILES_PER_WORKER)
    with _mapper(workers) as mapped:
        results = mapped(partial(_deidentify_file, job), files)
        for done, (path, result) in enumerate(zip(files, results, strict=True), start=1):
            source = path.relative_to(in_dir).as_posix()
            entry = _settle(result, source, out_dir, written_by)
            if entry.category:
                quarantine.add(path.read_bytes(), source, entry.category, entry.reason)
                report.count_quarantined(entry.category)
            else:
                report.stored += 1
            report.entries.append(entry)
            if progress is not None:
                progress(done, len(files))
    held.mkdir(parents=True, exist_ok=True)
    with (held / DEID_LOG_NAME).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["input", "output", "status", "category", "reason"])
        writer.writerows(
            [e.source, e.output, e.status, e.category, e.reason] for e in report.entries
        )
    report.write_to(out_dir / DEID_REPORT_NAME)
    return report


@contextmanager
def _mapper(workers: int) -> Iterator[Callable]:
    """A lazy, order-keeping ``map``: in this process for one worker, else over a pool."""
    if workers <= 1:
        yield map
        return
    load_standard()  # once here, not once per worker
    # Forked workers start at once, with the modules already loaded; elsewhere, spawn.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield partial(pool.map, chunksize=4)


def _settle(
    result: _Written | tuple[str, str], source: str, out_dir: Path, written_by: dict[str, str]
) -> DeidLogEntry:
    """The log entry of one file's ``result``: its temporary output renamed, or its
    quarantine reason (also for a second file with an already written SOP Instance UID)."""
    if isinstance(result, tuple):
        category, reason = result
        return DeidLogEntry(source, category=category, reason=reason)
    first = written_by.setdefault(result.name, source)
    if first != source:
        result.temporary.unlink()
        return DeidLogEntry(
            source, category=IntakeProblem.DUPLICATE, reason=f"same SOP Instance UID as {first}"
        )
    result.temporary.replace(out_dir / result.name)
    return DeidLogEntry(source, output=result.name)


@lru_cache(maxsize=2)
def _deidentifier(job: _Job) -> Deidentifier:
    """One `Deidentifier` per worker process and job."""
    return Deidentifier(job.secret, job.options)


def _deidentify_file(job: _Job, path: Path) -> _Written | tuple[str, str]:
    """De-identify ``path`` into a temporary file in the output folder: what was written,
    or the (category, reason) that sends the file to quarantine."""
    try:
        ds = read_dicom(path)
        if not ds.get("SOPInstanceUID"):
            raise UnusableInput(IntakeProblem.NO_UID, "no SOP Instance UID (0008,0018)")
        text_risk = burned_in_text_risk(ds)
        if text_risk and not job.allow_burned_in_text:
            raise UnusableInput(IntakeProblem.BURNED_IN_TEXT, text_risk)
        verify_pixels(ds)
        try:
            clean = _deidentifier(job).deidentify(ds)
        except Exception as exc:  # a damaged element surfaces only when it is converted
            raise UnusableInput(IntakeProblem.DEID_FAILED, one_line(exc)) from exc
        temporary = job.out_dir / f".{uuid.uuid4().hex}.tmp"
        try:
            pydicom.dcmwrite(temporary, clean, enforce_file_format=True)
        except Exception as exc:  # invalid values only show when encoded
            temporary.unlink(missing_ok=True)
            raise UnusableInput(
                IntakeProblem.DEID_FAILED, f"cannot write: {one_line(exc)}"
            ) from exc
    except UnusableInput as exc:
        return str(exc.category), str(exc)
    return _Written(f"{clean.SOPInstanceUID}.dcm", temporary)
