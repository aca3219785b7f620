"""`medfed report RUN`: the HTML page (every section, the evidence's numbers, self-contained),
the page in headless Chromium (no console error, no network request), the PDF (every page
renders, every figure visible) and bad input (one-line errors).

The Chromium and poppler tests are not skipped when the tools are missing: they fail and
say how to install them (CI installs both, see .ci/run).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import plotly.offline
import pytest
from PIL import Image
from test_cli import medfed
from test_evidence import _records

from simulations.demo import DEMO_INTENDED_USE
from validation import evidence as evidence_module
from validation.evidence import build_evidence
from validation.report import ReportError, ReportFiles, write_report
from validation.report.browser import find_chromium, render_page
from validation.report.build import BUILDERS
from validation.report.principles import CLAIM, GMLP, Facts
from validation.report.source import EVIDENCE_FILE, read_source

INSTALL = "apt-get install chromium poppler-utils (or set MEDFED_CHROMIUM)"
#: Resolution at which PDF pages are rasterised; grey level below which a pixel is drawn
#: on; the least fraction of drawn pixels in a figure's area (a figure Plotly did not draw
#: leaves its area white: 0).
DPI = 50
INK = 235
MIN_INK = 0.005


def _require(tool: str) -> None:
    found = find_chromium() if tool == "chromium" else shutil.which(tool)
    if found is None:
        pytest.fail(f"{tool} is needed for the report tests: {INSTALL}")


@pytest.fixture(scope="module")
def evidence() -> dict[str, Any]:
    """Complete evidence of a small two-site run (built from records, no federation)."""
    records, _ = _records()
    records.rounds.extend(
        {"round": r, "phase": "summary", "seconds": 2.0, "pooled-auc": auc}
        for r, auc in ((2, 0.86), (3, 0.9))
    )
    return build_evidence(records)


def _run_dir(root: Path, evidence: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / EVIDENCE_FILE).write_text(json.dumps(evidence))
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, evidence: dict[str, Any]) -> ReportFiles:
    """The report (HTML and PDF) of `evidence`."""
    _require("chromium")
    return write_report(_run_dir(tmp_path_factory.mktemp("report") / "run", evidence))


class _Page(HTMLParser):
    """The visible text of a page, and every tag with its attributes (scripts' and
    styles' contents are data, not markup, so plotly.js's strings are not tags)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.styles: list[str] = []
        self._raw: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._raw = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag: str) -> None:
        self._raw = None

    def handle_data(self, data: str) -> None:
        if self._raw == "style":
            self.styles.append(data)
        elif self._raw is None:
            self.text.append(data)

    @property
    def visible(self) -> str:
        return re.sub(r"\s+", " ", " ".join(self.text))


def test_the_page_shows_every_section_with_the_evidence_numbers(
    report: ReportFiles, evidence: dict[str, Any]
) -> None:
    text = _Page(report.html.read_text()).visible
    for builder in BUILDERS:
        title = builder.__doc__.splitlines()[0].rstrip(".")
        assert title in text
    assert "is malformed" not in text
    performance = evidence["performance"]
    assert f"{performance['pooled']['auc']['value']:.3f}" in text
    for site, result in performance["by_site"].items():
        assert f"{result['auc']['value']:.3f} [{result['auc']['ci_low']:.3f}" in text, site
    for manufacturer in performance["by_scanner"]:
        assert manufacturer in text
    assert "SIEMENS Force" in text and "GE Revolution" in text  # scanner models
    assert "sex" in text and f"{performance['by_subgroup']['sex']['F']['n']}" in text
    assert evidence["model"]["sha256"] in text
    assert evidence["run"]["code_version"] in text
    assert f"{evidence['operating_point']['threshold']:.3f}" in text
    i2 = evidence["heterogeneity"]["across_sites"]["auc"]["i2"]
    assert f"{100 * i2:.0f}%" in text  # the heterogeneity table
    for entry in evidence["acceptance"]:
        assert entry["id"] in text
    assert "site offline" in text  # site failures
    assert "test|scanner=X Y" in text  # suppressed strata
    # the simulated-data warning, at the top and in every caption about data
    assert "SIMULATED DATA: scanner differences simulated." in text
    assert text.count("(simulated: scanner differences simulated)") >= 10
    # data provenance: intake flow, de-identification, acquisition, subgroup counts
    assert "2016 to 2021" in text and "ABDOMEN (300 cases), UNKNOWN (20 cases)" in text
    assert "no label = 5, undecodable pixel data = 2" in text
    assert "52 / 31" in text and "site-a: age=90-99" in text
    assert "Retain Device Identity Option" in text and "cd" * 32 in text
    assert text.count("cd" * 32) == 1  # the sites share one de-identification method
    assert re.search(r"sex = M\s+withheld\s+48 / 29", text)  # site-a withheld it
    # the ROC curves, pooled and per site, each named with its AUC
    assert "ROC curves of the global model" in text
    assert f"pooled (AUC {evidence['roc']['pooled']['auc']:.3f})" in report.html.read_text()
    # the gaps: what the evidence does not carry
    assert "Intended use: to be supplied by the manufacturer" in text
    # the GMLP principles and the CLAIM items
    assert "Focus is placed on the performance of the human-AI team" in text
    assert "Failure analysis of incorrectly classified cases" in text
    # every figure and table is numbered and names its source
    figures = len(re.findall(r"Figure \d+\.", text))
    assert figures >= 5
    assert text.count("Source: evidence.json") >= figures + 10


def test_the_page_is_self_contained(report: ReportFiles) -> None:
    html = report.html.read_text()
    bundle = plotly.offline.get_plotlyjs()
    assert html.count(bundle[:2000]) == 1  # plotly.js inlined, once
    page = _Page(html)
    names = [tag for tag, _ in page.tags]
    for tag in ("link", "iframe", "object", "embed", "base", "img"):
        assert tag not in names
    loads = ("src", "href", "srcset", "poster", "data", "action", "xlink:href")
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            if name in loads:
                assert value and value.startswith("#"), f"<{tag} {name}={value!r}>"
            assert not re.search(r"https?://", value or ""), f"<{tag} {name}={value!r}>"
    assert not any("url(" in style or "@import" in style for style in page.styles)
    csp = next(
        a["content"] for t, a in page.tags if a.get("http-equiv") == "Content-Security-Policy"
    )
    assert "default-src 'none'" in csp
    assert "displaylogo" in html and '"displaylogo": false' in html


def test_chromium_opens_the_page_without_console_error_or_network_request(
    report: ReportFiles,
) -> None:
    """The page as Chromium printed it: every figure drawn, nothing logged as an error,
    nothing requested but the page itself."""
    assert report.page is not None
    assert report.page.problems == []
    assert report.page.requests == []
    assert report.page.figures == report.html.read_text().count('class="plot"')


def test_the_chromium_check_catches_console_errors_and_requests(tmp_path: Path) -> None:
    _require("chromium")
    page = tmp_path / "bad.html"
    page.write_text(
        "<html><body><p>x</p>"
        '<img src="http://medfed.invalid/logo.png">'
        "<script>console.error('broken figure'); fetch('https://medfed.invalid/track');"
        "undefinedFunction();</script></body></html>"
    )
    log = render_page(page)
    assert any("broken figure" in e for e in log.errors)
    assert any("undefinedFunction" in e for e in log.errors)
    assert "http://medfed.invalid/logo.png" in log.requests
    assert "https://medfed.invalid/track" in log.requests


def test_a_page_that_misbehaves_in_chromium_leaves_no_pdf(
    tmp_path: Path, evidence: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _require("chromium")
    page = "<html><body><script>console.error('no figures here')</script></body></html>"
    monkeypatch.setattr("validation.report.build.render_html", lambda *_: page)
    run = _run_dir(tmp_path / "run", evidence)
    with pytest.raises(ReportError, match="in Chromium: console error: no figures here"):
        write_report(run)
    assert (run / "report.html").exists() and not (run / "report.pdf").exists()


def _figure_captions(pdf: Path, workdir: Path) -> list[tuple[int, float, float]]:
    """(page, top of the caption in points, page height in points) of every "Figure N."."""
    words_file = workdir / "words.html"
    subprocess.run(["pdftotext", "-bbox", str(pdf), str(words_file)], check=True)
    captions = []
    pages = re.split(r"<page ", words_file.read_text())[1:]
    for number, page in enumerate(pages, start=1):
        height = float(re.search(r'height="([\d.]+)"', page).group(1))
        words = re.findall(r'<word xMin="[\d.]+" yMin="([\d.]+)"[^>]*>([^<]*)</word>', page)
        for (top, word), (_, following) in itertools.pairwise(words):
            if word == "Figure" and re.fullmatch(r"\d+\.", following):
                captions.append((number, float(top), height))
    return captions


def test_the_pdf_renders_every_page_with_its_figures_visible(
    report: ReportFiles, tmp_path: Path
) -> None:
    """pdftoppm renders every page; above each figure's caption, the figure's area (its
    height from the page) holds a drawing, not white paper."""
    for tool in ("pdftoppm", "pdftotext", "pdfinfo"):
        _require(tool)
    assert report.pdf is not None
    info = subprocess.run(["pdfinfo", str(report.pdf)], capture_output=True, text=True, check=True)
    n_pages = int(re.search(r"Pages:\s+(\d+)", info.stdout).group(1))
    subprocess.run(
        ["pdftoppm", "-r", str(DPI), "-png", str(report.pdf), str(tmp_path / "page")], check=True
    )
    images = sorted(tmp_path.glob("page-*.png"))
    assert len(images) == n_pages > 1
    html = report.html.read_text()
    heights = [
        int(h) for h in re.findall(r'class="plot" id="[^"]+" style="[^"]*height: (\d+)px', html)
    ]
    captions = _figure_captions(report.pdf, tmp_path)
    assert len(captions) == len(heights) >= 5
    for (page, top, page_height), height in zip(captions, heights, strict=True):
        image = Image.open(images[page - 1]).convert("L")
        scale = image.height / page_height  # pixels per point
        bottom = int(top * scale)
        area = image.crop((0, max(0, bottom - int(0.75 * height * scale)), image.width, bottom))
        ink = sum(1 for value in area.get_flattened_data() if value < INK) / (
            area.width * area.height
        )
        assert ink > MIN_INK, f"figure above the caption on page {page} looks blank ({ink:.3f})"
    for path in images:  # and no page is blank
        assert Image.open(path).convert("L").getextrema()[0] < 100


def test_an_intended_use_statement_replaces_the_gap(
    tmp_path: Path, evidence: dict[str, Any]
) -> None:
    statement = tmp_path / "intended-use.md"
    statement.write_text("# Intended use\n\nTriage of **adult** chest CT by radiologists.\n")
    files = write_report(_run_dir(tmp_path / "run", evidence), statement, pdf=False)
    html = files.html.read_text()
    assert "<strong>adult</strong>" in html
    text = _Page(html).visible
    assert "to be supplied by the manufacturer" not in text
    assert "Intended use statement (medfed report" not in text
    assert files.pdf is None and not (tmp_path / "run" / "report.pdf").exists()
    # a statement without the sections CLAIM asks for leaves those items open
    assert "no 'Reference standard' section in the intended-use statement" in text
    assert "no 'Study design' section" in text


def test_the_statements_sections_answer_the_claim_items_they_cover(
    tmp_path: Path, evidence: dict[str, Any]
) -> None:
    """The demo's statement has Study design, Reference standard, Annotation and
    Eligibility sections: CLAIM 5, 14 and 16 (and GMLP 5) are then answered by it."""
    files = write_report(_run_dir(tmp_path / "run", evidence), DEMO_INTENDED_USE, pdf=False)
    text = _Page(files.html.read_text()).visible
    assert "The simulation's ground truth" in text
    assert "section in the intended-use statement" not in text
    facts = Facts.of(read_source(tmp_path / "run", DEMO_INTENDED_USE))
    assert (facts.reference_standard, facts.study_design, facts.annotation) == (True,) * 3
    assert facts.eligibility and facts.study_years and facts.intake
    for item in (*GMLP, *CLAIM):
        if item.ref in ("5", "14", "16") and "intended-use statement" in item.shows:
            assert item.assess(facts)[0] == "shown", item.ref


def test_partial_evidence_says_what_is_not_available(
    tmp_path: Path, evidence: dict[str, Any]
) -> None:
    partial = copy.deepcopy(evidence)
    for key in (
        "heterogeneity",
        "calibration",
        "cross_site",
        "baselines",
        "acceptance",
        "rounds",
        "roc",
    ):
        del partial[key]
    partial["performance"] = {"pooled": partial["performance"]["pooled"]}
    partial["privacy"] = ["not", "an", "object"]
    partial["sites"][0]["scanners"] = "garbled"
    for site in partial["sites"]:
        for key in ("intake", "deidentification", "study_years", "subgroups"):
            site[key] = None
    partial["run"]["data"]["simulated"] = False
    files = write_report(_run_dir(tmp_path / "run", partial), pdf=False)
    text = _Page(files.html.read_text()).visible
    for what in (
        "ROC curves",
        "Heterogeneity and forest plots",
        "Calibration",
        "Cross-site matrix",
        "Baselines",
        "Acceptance results",
        "Performance by manufacturer",
    ):
        assert f"{what} (evidence.json" in text or f"{what}: not available" in text, what
    assert "not available in this evidence" in text
    assert "Subgroups: none in the evidence" in text
    for key in ("intake", "deidentification", "study_years", "subgroups"):
        assert f"not in the evidence (evidence.json sites[].{key})" in text, key
    assert "SIMULATED" not in text and "scanner differences simulated" not in text


def _medfed(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return medfed("report", *args)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "evidence.json: no such file"),
        ('{"run": {"id": "r1"', "evidence.json: not valid JSON (line 1, column 20"),
        ("[1, 2]", "evidence.json: not a JSON object but list"),
        ('{"run": {"id": "r1"}}', "missing required field(s): schema_version, model, sites"),
        (
            '{"schema_version": "1", "run": {"id": "r"}, "model": {}, "sites": {}, '
            '"performance": {"pooled": {}}}',
            "evidence.json: field sites must be an array",
        ),
    ],
)
def test_bad_evidence_is_a_one_line_error(
    tmp_path: Path, content: str | None, message: str
) -> None:
    if content is not None:
        (tmp_path / EVIDENCE_FILE).write_text(content)
    result = _medfed(tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("medfed: error: ")
    assert message in result.stderr
    assert not (tmp_path / "report.html").exists()


def test_a_missing_run_directory_or_statement_is_a_one_line_error(
    tmp_path: Path, evidence: dict[str, Any]
) -> None:
    result = _medfed(tmp_path / "nowhere")
    assert (result.returncode, result.stderr) == (
        1,
        f"medfed: error: {tmp_path / 'nowhere'}: no such run directory\n",
    )
    run = _run_dir(tmp_path / "run", evidence)
    result = _medfed(run, "--intended-use", tmp_path / "missing.md", "--no-pdf")
    assert result.returncode == 1
    assert (
        result.stderr
        == f"medfed: error: {tmp_path / 'missing.md'}: no such file (--intended-use)\n"
    )


def test_without_chromium_the_html_is_written_and_the_error_says_how_to_get_the_pdf(
    tmp_path: Path, evidence: dict[str, Any]
) -> None:
    run = _run_dir(tmp_path / "run", evidence)
    (run / "report.pdf").write_text("an older report")
    result = subprocess.run(
        [sys.executable, "-m", "medfed", "report", str(run)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/nonexistent", "HOME": str(tmp_path)},
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "report.html written, but not report.pdf" in result.stderr
    assert "apt-get install chromium" in result.stderr
    assert (run / "report.html").exists() and not (run / "report.pdf").exists()


def test_report_has_help_and_reads_the_evidence_file_the_run_writes() -> None:
    # That validation.report imports neither Flower nor torch: test_evidence checks it.
    assert "--intended-use" in _medfed("--help").stdout
    assert EVIDENCE_FILE == evidence_module.EVIDENCE_FILE
