"""Progress on the terminal for long work."""

from __future__ import annotations

import sys
from typing import TextIO


class CountProgress:
    """Shows ``label: done/total``: redrawn in place on a terminal, otherwise a line at
    every quarter so that logs stay short."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream  # the current one, not import's
        self.interactive = self.stream.isatty()
        self._last_quarter: dict[str, int] = {}

    def __call__(self, label: str, done: int, total: int) -> None:
        if self.interactive:
            end = "\n" if done >= total else ""
            self.stream.write(f"\r  {label}: {done}/{total}{end}")
            self.stream.flush()
            return
        quarter = 4 * done // max(total, 1)
        if quarter > self._last_quarter.get(label, 0) or done == total == 0:
            self._last_quarter[label] = quarter
            self.stream.write(f"  {label}: {done}/{total}\n")
            self.stream.flush()
