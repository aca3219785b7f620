"""Number formatting for the report: a value the evidence lacks shows as "n/a"."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

NA = "n/a"


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def number(value: Any, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals; integers as they are."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.{digits}f}" if is_number(value) else NA


def general(value: Any) -> str:
    """``value`` in ``%g`` form (parameters, epsilons), or as text if not a number."""
    if is_number(value):
        return f"{value:.4g}"
    if value is None:
        return NA
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(general(v) for v in value) or "none"
    return str(value)


def percent(value: Any, digits: int = 1) -> str:
    """A fraction as a percentage."""
    return f"{100 * value:.{digits}f}%" if is_number(value) else NA


def bounds(metric: Any, digits: int = 3) -> str:
    """``[low, high]`` of an estimate ``{value, ci_low, ci_high}``; empty if it has none."""
    if not isinstance(metric, Mapping):
        return ""
    low, high = metric.get("ci_low"), metric.get("ci_high")
    if not (is_number(low) and is_number(high)):
        return ""
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def estimate(metric: Any, digits: int = 3) -> str:
    """``value [low, high]`` of an estimate, or its value alone, or "n/a"."""
    value = metric.get("value") if isinstance(metric, Mapping) else None
    if not is_number(value):
        return NA
    interval = bounds(metric, digits)
    return f"{value:.{digits}f} {interval}".strip()


def p_value(value: Any) -> str:
    """A p-value: three decimals, or "< 0.001"."""
    if not is_number(value):
        return NA
    return "< 0.001" if value < 0.001 else f"{value:.3f}"
