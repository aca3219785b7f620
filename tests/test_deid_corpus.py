"""`medfed deid` end to end, from outside, on corpora built to catch leaks (deid_corpus.py):
planted files with a distinct value in every attribute of PS3.15 Table E.1-1, real files
from many vendors, and unusable files, de-identified in one CLI run.

Checked: no planted value that the profile removes and no UID that it replaces survives in
any byte of any file under OUT, in the output names, or in the CLI's output; retained values
(device identity, manufacturer, model) survive; pixel data of uncompressed files is
unchanged; every input is written or quarantined with its reason; dciodvfy finds no error in
an output that its input did not have.

The output contract: OUT holds the de-identified ``*.dcm`` and ``deid-report.json``; the
sibling ``<OUT>-quarantine/`` holds copies of unusable inputs, ``quarantine.csv`` and the
per-input ``deid-log.csv`` (it names inputs, so it stays beside the output, not in it).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pydicom
import pytest
from deid_corpus import (
    SKIPPED_ROWS,
    BadInput,
    Fate,
    Haystack,
    Plant,
    PlantedCorpus,
    PlantSearch,
    RealCorpus,
    expected_fate,
    fixed_tag,
    gather_real_corpus,
    input_uids,
    parsed_plants,
    searchable_uids,
    sha256,
    table_rows,
    uid_hit,
    write_bad_inputs,
    write_planted_corpus,
)

from site_client.burned_in import burned_in_text_risk
from site_client.deid import DeidOptions, load_profile_table

#: Real files are quirky (implicit VR in explicit files, odd UIDs, unterminated sequences):
#: pydicom warns while the corpus is gathered; the CLI's own output is checked below.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")

SECRET = bytes(range(32))
REPORT_KEYS = {"received", "stored", "quarantined", "quarantine_reasons", "deidentification"}
QUARANTINE_COLUMNS = ["source", "copy", "category", "reason", "sha256"]
LOG_COLUMNS = ["input", "output", "status", "category", "reason"]
BASIC_PROFILE_CODE = "113100"
MAX_LISTED = 60


@dataclass
class DeidRun:
    """One run of ``medfed deid IN OUT --key KEY`` over the three corpora."""

    in_dir: Path
    out_dir: Path
    result: subprocess.CompletedProcess[str]
    planted: PlantedCorpus
    real: RealCorpus
    bad: list[BadInput]  # paths relative to in_dir
    #: Inputs that may carry burned-in text, quarantined unless --allow-burned-in-text.
    at_risk: list[str]

    @property
    def quarantine_dir(self) -> Path:
        return self.out_dir.with_name(self.out_dir.name + "-quarantine")

    @cached_property
    def inputs(self) -> list[str]:
        """Every input file, relative to IN."""
        return sorted(p.relative_to(self.in_dir).as_posix() for p in _files(self.in_dir))

    @cached_property
    def usable_inputs(self) -> list[str]:
        """The inputs that must be written."""
        held = {b.path for b in self.bad} | set(self.at_risk)
        return [p for p in self.inputs if p not in held]

    @cached_property
    def outputs(self) -> list[Path]:
        """The DICOM files written under OUT."""
        return sorted(self.out_dir.rglob("*.dcm"))

    @cached_property
    def log(self) -> dict[str, dict[str, str]]:
        """``deid-log.csv`` keyed by input."""
        return {row["input"]: row for row in _read_csv(self.quarantine_dir / "deid-log.csv")}

    def output_of(self, source: str) -> Path:
        """The output written for input ``source`` (by the log)."""
        name = self.log[source]["output"]
        assert name, f"{source}: no output in deid-log.csv: {self.log[source]}"
        return self.out_dir / name


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _read_csv(path: Path, columns: list[str] | None = None) -> list[dict[str, str]]:
    assert path.is_file(), f"{path} is missing"
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    if columns is not None:
        assert reader.fieldnames == columns, f"{path.name} columns: {reader.fieldnames}"
    return rows


def _text_risk(path: Path) -> str:
    try:
        return burned_in_text_risk(pydicom.dcmread(path, stop_before_pixels=True))
    except Exception:  # the bad inputs
        return ""


@pytest.fixture(scope="module", params=["default", "allow-burned-in-text"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> DeidRun:
    """The CLI as a site runs it, and with --allow-burned-in-text so that every real file
    (ultrasound, secondary captures and radiographs too) goes through de-identification."""
    root = tmp_path_factory.mktemp("deid-corpus")
    in_dir = root / "in"
    planted = write_planted_corpus(in_dir / "planted")
    real = gather_real_corpus(in_dir / "real")
    bad = [BadInput(f"bad/{b.path}", b.problem) for b in write_bad_inputs(in_dir / "bad")]
    key = root / "site.key"
    key.write_text(SECRET.hex())
    key.chmod(0o600)
    out_dir = root / "out"
    allow = request.param == "allow-burned-in-text"
    result = subprocess.run(
        [sys.executable, "-m", "medfed", "deid", in_dir, out_dir, "--key", key]
        + (["--allow-burned-in-text"] if allow else []),
        capture_output=True,
        text=True,
        timeout=600,
    )
    bad_paths = {b.path for b in bad}
    at_risk = [
        p.relative_to(in_dir).as_posix()
        for p in _files(in_dir)
        if not allow and p.relative_to(in_dir).as_posix() not in bad_paths and _text_risk(p)
    ]
    return DeidRun(in_dir, out_dir, result, planted, real, bad, at_risk)


@pytest.fixture(scope="module")
def action() -> Callable[[int], str | None]:
    """The engine's resolved Table E.1-1 action per tag, under the default options."""
    return load_profile_table(DeidOptions()).action


@pytest.fixture(scope="module")
def haystacks(run: DeidRun) -> list[Haystack]:
    """Everything a leak could hide in: every file under OUT, the output names, the CLI's
    stdout and stderr, and the logs beside OUT (quarantine.csv, deid-log.csv: they name
    input files, but must not carry a value from inside one)."""
    files = _files(run.out_dir)
    names = "\n".join(p.relative_to(run.out_dir).as_posix() for p in files)
    logs = [run.quarantine_dir / "quarantine.csv", run.quarantine_dir / "deid-log.csv"]
    return [
        *(Haystack.of_file(p, p.relative_to(run.out_dir).as_posix()) for p in files),
        *(Haystack.of_file(p, p.name) for p in logs),
        Haystack.of_text("<output names>", names),
        Haystack.of_text("<stdout>", run.result.stdout),
        Haystack.of_text("<stderr>", run.result.stderr),
    ]


@pytest.fixture(scope="module")
def search(run: DeidRun) -> PlantSearch:
    return PlantSearch(run.planted.plants)


def _listing(lines: Iterable[str]) -> str:
    lines = sorted(lines)
    more = f"\n... and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else ""
    return f"{len(lines)}:\n" + "\n".join(lines[:MAX_LISTED]) + more


def _plant_line(plant: Plant) -> str:
    return f"{plant.name} ({plant.tag >> 16:04X},{plant.tag & 0xFFFF:04X}) {plant.vr} {plant.file}"


def test_the_cli_succeeds_without_a_traceback(run: DeidRun) -> None:
    assert run.result.returncode == 0, run.result.stderr
    assert "Traceback" not in run.result.stderr


def test_every_planted_file_is_written(
    run: DeidRun, haystacks: list[Haystack], search: PlantSearch
) -> None:
    """Without this, the leak checks below could pass on files that were never written."""
    written = set().union(*(search.origins(h) for h in haystacks if h.dicom))
    planted = {p.relative_to(run.planted.root).as_posix() for p in run.planted.files}
    assert planted <= written, f"planted files with no output: {sorted(planted - written)}"


def test_no_planted_identifying_value_survives(
    run: DeidRun,
    haystacks: list[Haystack],
    search: PlantSearch,
    action: Callable[[int], str | None],
) -> None:
    removed = [p for p in run.planted.plants if expected_fate(p, action) is Fate.REMOVED]
    assert len(removed) > 600
    leaks: dict[Plant, set[str]] = defaultdict(set)
    for hay in haystacks:
        for plant in search.find(hay, removed):
            leaks[plant].add(hay.name)
    for path in run.outputs:
        for plant in parsed_plants(pydicom.dcmread(path), removed):
            leaks[plant].add(f"{path.name} (parsed)")
    assert not leaks, "planted values that survive de-identification, " + _listing(
        f"{_plant_line(p)} = {p.value[:32]!r} in {sorted(where)[0]}" for p, where in leaks.items()
    )


def test_no_replaced_or_removed_uid_survives(
    run: DeidRun, haystacks: list[Haystack], action: Callable[[int], str | None]
) -> None:
    inputs = [(run.in_dir / rel, rel) for rel in run.inputs]
    removed, kept = input_uids(inputs, action)
    needles, _ = searchable_uids(removed, kept)
    assert len(needles) > 150
    leaks = {
        uid: hay.name for uid in needles for hay in haystacks if uid_hit(hay.header, uid.encode())
    }
    assert not leaks, "original UIDs that survive, " + _listing(
        f"{uid} ({removed[uid]}) in {where}" for uid, where in leaks.items()
    )


def test_retained_values_survive(
    run: DeidRun,
    haystacks: list[Haystack],
    search: PlantSearch,
    action: Callable[[int], str | None],
) -> None:
    """Device identity (Retain Device Identity Option), Manufacturer and model name."""
    kept = [p for p in run.planted.plants if expected_fate(p, action) is Fate.KEPT]
    assert {"Manufacturer", "ManufacturerModelName", "DeviceSerialNumber"} <= {p.name for p in kept}
    found = {p for hay in haystacks if hay.dicom for p in search.find(hay, kept)}
    found |= {p for path in run.outputs for p in parsed_plants(pydicom.dcmread(path), kept)}
    missing = [_plant_line(p) for p in kept if p not in found]
    assert not missing, "retained values that were lost, " + _listing(missing)


def _scanner(path: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.get("Manufacturer", "")), str(ds.get("ManufacturerModelName", ""))


def test_real_files_keep_manufacturer_and_model(run: DeidRun) -> None:
    usable = set(run.usable_inputs)
    before = Counter(
        _scanner(p) for p in run.real.files if p.relative_to(run.in_dir).as_posix() in usable
    )
    after = Counter(map(_scanner, run.outputs))
    assert len(run.real.manufacturers) >= 10
    assert not before - after, f"(Manufacturer, model) lost: {before - after}"


def test_outputs_say_their_identity_was_removed(run: DeidRun) -> None:
    problems = []
    for path in run.outputs:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        codes = [item.get("CodeValue") for item in ds.get("DeidentificationMethodCodeSequence", [])]
        if ds.get("PatientIdentityRemoved") != "YES" or BASIC_PROFILE_CODE not in codes:
            problems.append(f"{path.name}: {ds.get('PatientIdentityRemoved')!r}, codes {codes}")
    assert not problems, _listing(problems)


def test_report_counts_every_input(run: DeidRun) -> None:
    report = json.loads((run.out_dir / "deid-report.json").read_text(encoding="utf-8"))
    assert report.keys() >= REPORT_KEYS, f"deid-report.json keys: {sorted(report)}"
    n_inputs = len(run.inputs)
    assert report["received"] == n_inputs
    assert report["stored"] + report["quarantined"] == n_inputs
    assert report["stored"] == len(run.usable_inputs) == len(run.outputs)
    assert sum(report["quarantine_reasons"].values()) == report["quarantined"]
    assert report["quarantined"] == len(run.bad) + len(run.at_risk)
    # Bad inputs may be held for text too; the good ones at risk must be.
    assert report["quarantine_reasons"].get("may carry burned-in text", 0) >= len(run.at_risk)


def test_each_unusable_input_is_quarantined_with_a_one_line_reason(run: DeidRun) -> None:
    rows = _read_csv(run.quarantine_dir / "quarantine.csv", QUARANTINE_COLUMNS)
    by_source = {row["source"]: row for row in rows}
    missing = [f"{b.path} ({b.problem})" for b in run.bad if b.path not in by_source]
    assert not missing, "unusable inputs not in quarantine.csv, " + _listing(missing)
    for bad in run.bad:
        row = by_source[bad.path]
        assert row["reason"].strip() and "\n" not in row["reason"], row
        copy = run.quarantine_dir / row["copy"]
        assert copy.is_file() and sha256(copy) == row["sha256"] == sha256(run.in_dir / bad.path)
    for source in run.at_risk:
        assert by_source[source]["category"] == "may carry burned-in text", by_source[source]
    wrongly = sorted(set(by_source) - {b.path for b in run.bad} - set(run.at_risk))
    assert not wrongly, f"usable inputs quarantined: {[by_source[s] for s in wrongly]}"


def test_every_usable_input_has_an_output_and_the_log_lists_every_input(run: DeidRun) -> None:
    rows = _read_csv(run.quarantine_dir / "deid-log.csv", LOG_COLUMNS)
    assert sorted(row["input"] for row in rows) == run.inputs
    missing = [
        f"{rel}: {run.log[rel]}"
        for rel in run.usable_inputs
        if not run.log[rel]["output"] or not (run.out_dir / run.log[rel]["output"]).is_file()
    ]
    assert not missing, "usable inputs without an output, " + _listing(missing)
    for bad in run.bad:
        assert not run.log[bad.path]["output"], run.log[bad.path]


def test_uncompressed_pixel_data_is_unchanged(run: DeidRun) -> None:
    changed, checked = [], 0
    for rel in run.usable_inputs:
        source = pydicom.dcmread(run.in_dir / rel)
        syntax = source.file_meta.TransferSyntaxUID
        if syntax.is_compressed:
            continue
        output = pydicom.dcmread(run.output_of(rel))
        checked += 1
        if output.file_meta.TransferSyntaxUID == syntax:
            same = output.PixelData == source.PixelData
        else:  # re-encoded (e.g. big to little endian): the same pixel values
            same = np.array_equal(output.pixel_array, source.pixel_array)
        if not same:
            changed.append(rel)
    assert checked >= 15
    assert not changed, f"pixel data changed: {changed}"


#: A value in dciodvfy's messages: ``<...>`` unless it names an element, module or attribute.
_DCIODVFY_VALUE = re.compile(r"(Element=|Module=|attribute )?<[^<>]*(>|$)")
_DCIODVFY_CHARACTER = re.compile(r"= '.' \(0x[0-9a-fA-F]+\)")


def _dciodvfy_errors(path: Path) -> set[str]:
    """dciodvfy's "Error" messages for ``path``, without values, characters and paths."""
    result = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, errors="replace", timeout=120
    )
    errors = set()
    for line in (result.stderr + result.stdout).splitlines():
        if line.startswith("Error"):
            line = _DCIODVFY_VALUE.sub(lambda m: m[0] if m[1] else "<>", line)
            line = _DCIODVFY_CHARACTER.sub("= ''", line)
            line = re.sub(r"values are .*", "values are", line)
            line = re.sub(r'"[^"]*"', '""', line)
            errors.add(" ".join(line.split()))
    return errors


def test_dciodvfy_finds_no_error_that_the_input_did_not_have(run: DeidRun) -> None:
    assert shutil.which("dciodvfy"), "dciodvfy is missing: apt-get install dicom3tools"
    new = {}
    for rel in run.usable_inputs:  # dciodvfy takes about 20 ms a file
        added = _dciodvfy_errors(run.output_of(rel)) - _dciodvfy_errors(run.in_dir / rel)
        if added:
            new[rel] = sorted(added)
    assert not new, "new dciodvfy errors, " + _listing(
        f"{rel}: {message}" for rel, messages in new.items() for message in messages
    )


def test_the_search_finds_each_planted_value_in_its_input_and_nothing_in_real_files(
    run: DeidRun, search: PlantSearch
) -> None:
    """A check of the test itself: the leak search would see every plant."""
    unfound = []
    for path in run.planted.files:
        name = path.relative_to(run.planted.root).as_posix()
        mine = [p for p in run.planted.plants if p.file == name]
        found = set(search.find(Haystack.of_file(path, name), mine))
        found |= set(parsed_plants(pydicom.dcmread(path), mine))
        unfound += [_plant_line(p) for p in mine if p not in found]
    assert not unfound, "plants the search misses in their input, " + _listing(unfound)
    for path in run.real.files:
        assert not search.find(Haystack.of_file(path, path.name), run.planted.plants)


def test_the_planted_corpus_covers_table_e1_1(
    run: DeidRun, action: Callable[[int], str | None]
) -> None:
    """Checks of the test itself: every fixed-tag row is planted (sequences through an item),
    with repeating groups, a private block and a nested sequence; and the engine keeps only
    what the Retain Device Identity Option keeps."""
    plants = run.planted.plants
    planted = {p.path[0] if p.path else p.tag for p in plants if p.where == "standard"}
    rows = {fixed_tag(row) for row in table_rows()} - {None}
    assert rows - planted - SKIPPED_ROWS.keys() == set()
    assert {0x50003000, 0x60003000, 0x60023000, 0x60004000, 0x60024000} <= planted
    assert any(p.where == "private" and p.path for p in plants)
    assert any(len(p.path) == 2 and expected_fate(p, action) is Fate.REMOVED for p in plants)
    device = {fixed_tag(r) for r in table_rows() if r.get("rtnDevIdOpt") == "K"}
    assert {tag for tag in rows if action(tag) == "K"} <= device
