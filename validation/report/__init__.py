"""The report of a run: ``RUN/report.html`` and ``RUN/report.pdf`` from ``RUN/evidence.json``.

The HTML page is self-contained (Plotly's JavaScript inlined once, styles inline, a
Content-Security-Policy that forbids every load) and so opens offline; the PDF is that page
printed by headless Chromium. The report reads only the evidence file (and an optional
intended-use statement given on the command line); what the evidence lacks it says it
cannot show, in a "gaps" box, and never fills in.
"""

from validation.report.build import ReportFiles, write_report
from validation.report.source import ReportError, load_evidence

__all__ = ["ReportError", "ReportFiles", "load_evidence", "write_report"]
