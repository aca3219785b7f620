"""Benchmark of DICOM de-identification: medfed's engine against dicognito and pydicom/deid.

All three de-identify the same corpus (tests/deid_corpus.py: real multi-vendor test files
from pydicom and pydicom-data, and planted files with a distinct value in every attribute of
PS3.15 Table E.1-1), each in-process, each reading every file with pydicom, de-identifying
it and writing it: medfed through `site_client.deid.deidentify_tree` (which also writes its
report, log and quarantine), dicognito through its `Anonymizer` (what its CLI runs per file),
deid through `deid.dicom.replace_identifiers` with its default recipe. Times are the best of
``--repeat`` runs. Then each tool's output is searched, as tests/test_deid_corpus.py does, for
planted values that the Basic Profile with medfed's default options removes, for original
UIDs of attributes it replaces or removes, and for the values it retains (device identity,
manufacturer, model). Prints a Markdown report for docs/benchmarks.md.

Needs the dev and bench extras: ``pip install -e '.[dev,bench]'``.

Usage: python benchmarks/bench_deid.py [--out DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from deid_corpus import (
    Fate,
    Haystack,
    Plant,
    PlantSearch,
    expected_fate,
    gather_real_corpus,
    input_uids,
    parsed_plants,
    searchable_uids,
    uid_hit,
    write_planted_corpus,
)

from site_client.deid import DeidOptions, load_profile_table
from site_client.deid_tree import deidentify_tree

SECRET = bytes(range(32))
EXAMPLES = 6


def _inputs(in_dir: Path) -> list[Path]:
    return sorted(p for p in in_dir.rglob("*") if p.is_file())


def copy_as_new_instances(in_dir: Path, out_dir: Path, copy: int) -> None:
    """Every file under ``in_dir`` again under ``out_dir``, as other instances: each UID of
    the study, series and instance replaced by one derived from it and ``copy``."""
    for path in _inputs(in_dir):
        ds = pydicom.dcmread(path)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            if keyword in ds:
                ds[keyword].value = generate_uid(entropy_srcs=[str(ds[keyword].value), str(copy)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = out_dir / path.relative_to(in_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=True)


def run_medfed(in_dir: Path, out_dir: Path) -> None:
    """medfed's engine on the tree, as ``medfed deid --allow-burned-in-text`` runs it (one
    worker process per core): every
    image is written, as the other tools write them (by default medfed quarantines the
    ultrasound, secondary captures and radiographs that may carry burned-in text). It still
    verifies that each image decodes, which the others do not."""
    deidentify_tree(in_dir, out_dir, SECRET, allow_burned_in_text=True)


def run_medfed_one_process(in_dir: Path, out_dir: Path) -> None:
    """The same in one process (``workers=1``), as the other tools run."""
    deidentify_tree(in_dir, out_dir, SECRET, allow_burned_in_text=True, workers=1)


def run_dicognito(in_dir: Path, out_dir: Path) -> None:
    """dicognito's Anonymizer on every file (one anonymizer for the run, as its CLI)."""
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer(seed="bench")
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(_inputs(in_dir)):
        ds = pydicom.dcmread(path)
        anonymizer.anonymize(ds)
        ds.save_as(out_dir / f"{index:04d}.dcm")


def run_deid(in_dir: Path, out_dir: Path) -> None:
    """pydicom/deid's replace_identifiers with its default recipe, folder by folder (it
    names outputs by their input's file name)."""
    from deid.dicom import replace_identifiers

    folders: dict[Path, list[str]] = {}
    for path in _inputs(in_dir):
        folders.setdefault(path.parent.relative_to(in_dir), []).append(str(path))
    for folder, files in folders.items():
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
        replace_identifiers(files, save=True, output_folder=str(out_dir / folder), overwrite=True)


TOOLS: dict[str, tuple[str, Callable[[Path, Path], None]]] = {
    "medfed": ("medfed", run_medfed),
    "medfed, one process": ("medfed", run_medfed_one_process),
    "dicognito": ("dicognito", run_dicognito),
    "deid (default recipe)": ("deid", run_deid),
}


@dataclass
class Outcome:
    """One tool's time and what its output still holds."""

    tool: str
    seconds: float
    files_out: int
    leaked: list[Plant]
    removed_total: int
    uids_left: list[str]
    uids_total: int
    kept: int
    kept_total: int


def timed(run: Callable[[Path, Path], None], in_dir: Path, out_dir: Path, repeat: int) -> float:
    """The best wall time of ``repeat`` runs, each into a fresh ``out_dir``."""
    best = float("inf")
    for _ in range(repeat):
        for folder in (out_dir, out_dir.with_name(out_dir.name + "-quarantine")):
            shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        run(in_dir, out_dir)
        best = min(best, time.perf_counter() - started)
    return best


def assess(
    tool: str,
    seconds: float,
    out_dir: Path,
    plants: list[Plant],
    uids: tuple[dict[str, str], set[str]],
) -> Outcome:
    """What ``out_dir`` holds of the planted values and original UIDs."""
    action = load_profile_table(DeidOptions()).action
    removed = [p for p in plants if expected_fate(p, action) is Fate.REMOVED]
    kept = [p for p in plants if expected_fate(p, action) is Fate.KEPT]
    files = sorted(p for p in out_dir.rglob("*") if p.is_file())
    haystacks = [Haystack.of_file(p, p.name) for p in files]
    search = PlantSearch(plants)
    leaked = {p for hay in haystacks for p in search.find(hay, removed)}
    retained = {p for hay in haystacks for p in search.find(hay, kept)}
    for path in files:
        if path.suffix == ".dcm":
            ds = pydicom.dcmread(path)
            leaked |= set(parsed_plants(ds, removed))
            retained |= set(parsed_plants(ds, kept))
    needles, _ = searchable_uids(*uids)
    left = [u for u in needles if any(uid_hit(h.header, u.encode()) for h in haystacks)]
    n_out = sum(1 for p in files if p.suffix == ".dcm")
    return Outcome(
        tool,
        seconds,
        n_out,
        sorted(leaked, key=lambda p: (p.file, p.path, p.tag)),
        len(removed),
        left,
        len(needles),
        len(retained),
        len(kept),
    )


def examples(leaked: list[Plant]) -> str:
    """How many attributes the leaked plants are in (file meta, private, nested), and a few
    top-level standard ones, spread over the tags."""
    names = {p.name: p for p in sorted(leaked, key=lambda p: (*p.path, p.tag))}
    if not names:
        return "none"
    counts = Counter(
        "nested" if p.path and p.where == "standard" else p.where for p in names.values()
    )
    top = [n for n, p in names.items() if not p.path and p.where == "standard"]
    shown = top[:: max(1, len(top) // EXAMPLES)][:EXAMPLES]
    parts = ", ".join(f"{counts[k]} {k}" for k in ("file-meta", "private", "nested") if counts[k])
    return f"{len(names)} attributes ({parts}), e.g. {', '.join(shown)}"


def report(outcomes: list[Outcome], n_files: int, megabytes: float) -> str:
    """The Markdown tables."""
    lines = [
        "| tool | files written | wall (s) | files/s | MB/s | planted values left (of those "
        "the profile removes) | original UIDs left | retained values kept |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.tool} | {o.files_out}/{n_files} | {o.seconds:.2f} | "
            f"{n_files / o.seconds:.1f} | {megabytes / o.seconds:.2f} | "
            f"{len(o.leaked)}/{o.removed_total} | {len(o.uids_left)}/{o.uids_total} | "
            f"{o.kept}/{o.kept_total} |"
        )
    lines += ["", "| tool | planted values left: in how many attributes |", "| --- | --- |"]
    lines += [f"| {o.tool} | {examples(o.leaked)} |" for o in outcomes]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool (best is kept)")
    parser.add_argument(
        "--copies",
        type=int,
        default=1,
        help="copies of the corpus, each a new set of instances (new UIDs), as an export of "
        "many studies: fixed costs (start-up, caches) weigh less (default: 1)",
    )
    args = parser.parse_args()
    os.environ.setdefault("MESSAGELEVEL", "QUIET")  # deid's logger
    work = args.out or Path(tempfile.mkdtemp(prefix="bench-deid-"))
    in_dir = work / "in"
    shutil.rmtree(in_dir, ignore_errors=True)
    real = gather_real_corpus(in_dir / "real")
    planted = write_planted_corpus(in_dir / "planted")
    for copy in range(2, args.copies + 1):
        copy_as_new_instances(in_dir, work / "copies" / f"copy-{copy}", copy)
    if args.copies > 1:
        (work / "copies").rename(in_dir / "copies")
    inputs = _inputs(in_dir)
    megabytes = sum(p.stat().st_size for p in inputs) / 1e6
    action = load_profile_table(DeidOptions()).action
    uids = input_uids(((p, p.name) for p in inputs), action)
    outcomes = []
    for tool, (package, run) in TOOLS.items():
        out_dir = work / run.__name__.removeprefix("run_")
        seconds = timed(run, in_dir, out_dir, args.repeat)
        outcomes.append(
            assess(f"{tool} {version(package)}", seconds, out_dir, planted.plants, uids)
        )
    print(
        f"{datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores, {platform.machine()}, "
        f"Python {platform.python_version()}, pydicom {pydicom.__version__}; corpus: "
        f"{len(inputs)} files, {megabytes:.1f} MB ({len(real.files)} real from "
        f"{len(real.manufacturers)} manufacturers, {len(planted.files)} planted with "
        f"{len(planted.plants)} values); best of {args.repeat} runs\n"
    )
    print(report(outcomes, len(inputs), megabytes))
    print(f"\nreal manufacturers: {', '.join(real.manufacturers)}")
    print(f"transfer syntaxes: {', '.join(real.transfer_syntaxes)}")
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
