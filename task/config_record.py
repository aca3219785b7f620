"""Typed settings <-> flat ConfigRecord dicts.

Sites and coordinator exchange settings (training, model shape) in Flower ConfigRecords,
which hold flat scalar or list values. These two functions turn a frozen dataclass of
scalars and tuples into such a dict and back, so that settings stay typed on both ends.
Keys are the field names with '-' for '_' (Flower's own style), under an optional prefix.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")
ConfigValue = int | float | str | bool | list[int] | list[float] | list[str]


def to_config(settings: Any, prefix: str = "") -> dict[str, ConfigValue]:
    """Flatten the dataclass instance ``settings``; tuples become lists."""
    out: dict[str, ConfigValue] = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        out[prefix + field.name.replace("_", "-")] = (
            list(value) if isinstance(value, tuple) else value
        )
    return out


def from_config(cls: type[T], config: dict[str, Any], prefix: str = "") -> T:
    """Build ``cls`` from the keys of ``config`` under ``prefix``; missing keys keep their
    defaults, other keys are ignored. The dataclass validates the values."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = prefix + field.name.replace("_", "-")
        if key in config:
            value = config[key]
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)
