"""``medfed report RUN``: write ``RUN/report.html`` and ``RUN/report.pdf``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from validation.report import principles, results, sections
from validation.report.blocks import Section
from validation.report.browser import (
    INSTALL_HINT,
    BrowserError,
    PageLog,
    find_chromium,
    render_page,
)
from validation.report.render import render_html
from validation.report.source import ReportError, ReportSource, read_source

REPORT_HTML = "report.html"
REPORT_PDF = "report.pdf"
#: The report's sections, in order.
BUILDERS = (
    sections.summary,
    sections.intended_use,
    sections.provenance,
    sections.model_identity,
    sections.training,
    results.performance,
    results.cross_site,
    results.calibration,
    results.subgroups,
    results.acceptance,
    results.drift,
    results.limitations,
    principles.principles,
)


@dataclass(frozen=True)
class ReportFiles:
    """What `write_report` wrote: the HTML page, the PDF (None with ``pdf=False``) and what
    the page did in Chromium while it was printed (None without a PDF)."""

    html: Path
    pdf: Path | None
    page: PageLog | None


def build_sections(src: ReportSource) -> tuple[Section, ...]:
    """Every section of the report of ``src``."""
    return tuple(sections.guarded(builder, src) for builder in BUILDERS)


def write_report(
    run_dir: Path,
    intended_use: Path | None = None,
    pdf: bool = True,
    chromium: str | None = None,
) -> ReportFiles:
    """Write ``run_dir/report.html`` from ``run_dir/evidence.json`` (and the intended-use
    statement ``intended_use``, Markdown or text), and, with ``pdf``, ``report.pdf``
    printed from it by headless Chromium (``chromium``, else `find_chromium`).

    An older ``report.pdf`` that is not rewritten is removed (it would show other evidence).
    `ReportError` (one line) on bad input, when Chromium is missing or fails, and when the
    page logs an error, makes a network request or leaves a figure undrawn while it is
    printed (then no PDF is left).
    """
    src = read_source(run_dir, intended_use)
    html = run_dir / REPORT_HTML
    parts = build_sections(src)
    _write_text(html, render_html(src, parts, datetime.now(UTC)))
    target = run_dir / REPORT_PDF
    if not pdf:
        target.unlink(missing_ok=True)
        return ReportFiles(html, None, None)
    try:
        executable = chromium or find_chromium()
        if executable is None:
            raise BrowserError(f"no Chromium found ({INSTALL_HINT}; or pass --no-pdf)")
        page = render_page(
            html, target, executable, footer=f"medfed report, run {src.data['run']['id']}"
        )
    except BrowserError as exc:
        target.unlink(missing_ok=True)
        raise ReportError(f"{html} written, but not {REPORT_PDF}: {exc}") from None
    figures = sum(block.kind == "figure" for section in parts for block in section.blocks)
    problems = page.problems
    if page.figures != figures:
        problems.append(f"{page.figures} of {figures} figures drawn")
    if problems:  # the PDF of a page that misbehaved is not handed out
        target.unlink(missing_ok=True)
        raise ReportError(f"{html}: in Chromium: {problems[0]}")
    return ReportFiles(html, target, page)


def _write_text(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
