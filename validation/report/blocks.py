"""The pieces a report section is made of; the template renders each by its ``kind``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from validation.report.fmt import NA


@dataclass(frozen=True)
class Cell:
    """A table cell: ``text``, an optional second line (``detail``, e.g. an interval), a
    CSS class (``pass``, ``fail``, ``na``, ``num``) and an in-page link (``#anchor``)."""

    text: str
    detail: str = ""
    css: str = ""
    href: str = ""

    def __post_init__(self) -> None:
        if self.href and not self.href.startswith("#"):
            raise ValueError(f"cell links stay in the page: {self.href!r}")


Row = tuple[Cell, ...]


def row(*values: str | Cell) -> Row:
    """A table row; plain strings become cells ("n/a" ones styled as missing)."""
    return tuple(v if isinstance(v, Cell) else Cell(v, css="na" if v == NA else "") for v in values)


@dataclass(frozen=True)
class Table:
    """A captioned table; ``source`` names the evidence fields it shows. ``about_data``:
    the caption also says which data the numbers come from."""

    caption: str
    source: str
    header: tuple[str, ...]
    rows: tuple[Row, ...]
    about_data: bool = True
    kind: ClassVar[str] = "table"


@dataclass(frozen=True)
class Figure:
    """A captioned Plotly figure: ``spec`` is its JSON (data and layout)."""

    anchor: str
    caption: str
    source: str
    spec: str
    height: int
    about_data: bool = True
    kind: ClassVar[str] = "figure"


@dataclass(frozen=True)
class Fields:
    """Label-value pairs."""

    items: tuple[tuple[str, str], ...]
    kind: ClassVar[str] = "fields"


@dataclass(frozen=True)
class Text:
    """Paragraphs, or a bullet list."""

    paragraphs: tuple[str, ...]
    bullets: bool = False
    kind: ClassVar[str] = "text"


@dataclass(frozen=True)
class Note:
    """A call-out: ``level`` is ``warning`` (e.g. simulated data), ``gap`` (what the
    evidence lacks) or ``info``."""

    level: str
    text: str
    kind: ClassVar[str] = "note"


@dataclass(frozen=True)
class Markup:
    """HTML made safe beforehand (the intended-use statement rendered from Markdown)."""

    html: str
    kind: ClassVar[str] = "markup"


Block = Table | Figure | Fields | Text | Note | Markup


@dataclass(frozen=True)
class Section:
    """One section of the report; ``gaps`` lists what it could not show, for the report's
    gaps box."""

    anchor: str
    title: str
    blocks: tuple[Block, ...]
    gaps: tuple[str, ...] = ()


def not_available(what: str) -> Note:
    """The note for a part of the evidence that is missing."""
    return Note("gap", f"{what}: not available in this evidence.")
