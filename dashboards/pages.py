"""The dashboard's pages: where each is, its title and URL, and the line that ends it."""

from __future__ import annotations

from dataclasses import dataclass

#: Every page ends with a caption starting so, then the page's title (the browser check
#: knows a page is drawn once its end shows).
END_PREFIX = "medfed dashboard, page "


@dataclass(frozen=True)
class PageSpec:
    """One page: its script (relative to app.py), title and URL path (the first page is
    also served at the root)."""

    script: str
    title: str
    url_path: str

    @property
    def end_text(self) -> str:
        """The text that ends the page once it is drawn."""
        return f"{END_PREFIX}{self.title}"


FEDERATION = PageSpec("views/federation.py", "Federation", "federation")
TRAINING = PageSpec("views/training.py", "Training", "training")
CROSS_SITE = PageSpec("views/cross_site.py", "Cross-site and cross-scanner", "cross-site")
ACCEPTANCE = PageSpec("views/acceptance.py", "Acceptance", "acceptance")
MONITORING = PageSpec("views/monitoring.py", "Monitoring", "monitoring")
PAGES = (FEDERATION, TRAINING, CROSS_SITE, ACCEPTANCE, MONITORING)
