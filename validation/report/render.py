"""The report's HTML: one self-contained page (styles, figure data and plotly.js inline)
whose Content-Security-Policy forbids loading anything, so it opens offline and cannot
reach a network."""

from __future__ import annotations

import json
from datetime import datetime
from functools import cache
from importlib.resources import files

import plotly
import plotly.offline
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from task.runtime import code_version
from validation.report.blocks import Section
from validation.report.sections import SIMULATED, description, simulated_warning
from validation.report.source import ReportSource, dig

#: Nothing may be loaded: scripts and styles are inline; Plotly draws heatmaps as data: images.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:; base-uri 'none'; form-action 'none'"
)
#: Plotly's configuration of every figure.
PLOTLY_CONFIG = {"displaylogo": False, "responsive": False}


@cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("validation.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _script_json(text: str) -> Markup:
    """JSON safe inside a ``<script>`` element (no ``</script>``, no ``<!--``)."""
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def render_html(src: ReportSource, sections: tuple[Section, ...], generated: datetime) -> str:
    """The report page of ``src`` with ``sections``, stamped ``generated``."""
    template = _environment().get_template("report.html.j2")
    css = files("validation.report").joinpath("templates/report.css").read_text("utf-8")
    return template.render(
        run_id=src.data["run"]["id"],
        created=dig(src.data, "run", "created") or "n/a",
        evidence_path=str(src.evidence.path),
        evidence_sha256=src.evidence.sha256,
        generated=generated.isoformat(timespec="seconds"),
        generator=f"medfed {code_version()} (medfed report), Plotly {plotly.__version__}",
        simulated=src.simulated,
        simulated_label=SIMULATED,
        simulated_warning=simulated_warning(src),
        data_description=description(src),
        sections=sections,
        gaps=[gap for section in sections for gap in section.gaps],
        csp=CONTENT_SECURITY_POLICY,
        css=Markup(css),
        plotly_config=_script_json(json.dumps(PLOTLY_CONFIG)),
        plotly_js=Markup(plotly.offline.get_plotlyjs()),
        script_json=_script_json,
    )
