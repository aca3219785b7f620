"""Attribute types (1, 2, 3) per IOD, from the DICOM standard's module tables as shipped
by highdicom (``highdicom/_standard/*.json``, generated from PS3.3).

De-identification needs them: Table E.1-1's combined actions (``X/Z``, ``X/D``, ``Z/D``,
``X/Z/D``, ``X/Z/U*``) choose by the attribute's type in the instance's IOD, so that the
output stays a valid instance of it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

#: Attribute types by how much they demand: 1 (a value), 2 (present, may be empty), 3.
_DEMAND = {"1": 3, "1C": 3, "2": 2, "2C": 2, "3": 1}
_TYPE_OF_DEMAND = {3: "1", 2: "2", 1: "3"}

#: An attribute where it sits: (path of sequence keywords, keyword).
_Key = tuple[tuple[str, ...], str]
#: (path of sequence keywords, keyword) -> type "1", "2" or "3".
AttributeTypes = dict[_Key, str]


def _standard_table(name: str) -> dict:
    # highdicom keeps these tables in a private folder of its package; pinned in pyproject.
    return json.loads(resources.files("highdicom").joinpath(f"_standard/{name}").read_text())


@lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, str], dict[str, list], dict[str, dict[_Key, int]]]:
    """SOP class -> IOD, IOD -> modules, and module -> {(path, keyword): demand}."""
    modules = {
        module: _demands(attributes)
        for module, attributes in _standard_table("module_attribute_map.json").items()
    }
    return (
        _standard_table("sop_class_iod_map.json"),
        _standard_table("iod_module_map.json"),
        modules,
    )


def _demands(attributes: list[dict]) -> dict[_Key, int]:
    demand: dict[_Key, int] = {}
    for attribute in attributes:
        key = (tuple(attribute["path"]), attribute["keyword"])
        demand[key] = max(demand.get(key, 0), _DEMAND.get(attribute["type"], 1))
    return demand


def _most_demanding(modules: list[str]) -> AttributeTypes:
    table = _tables()[2]
    demand: dict[_Key, int] = {}
    for module in modules:
        for key, level in table.get(module, {}).items():
            if level > demand.get(key, 0):
                demand[key] = level
    return {key: _TYPE_OF_DEMAND[level] for key, level in demand.items()}


def load_standard() -> None:
    """Read the module tables now (about a second), for instance before forking workers
    that would otherwise each read them; and the fallback for unknown SOP classes."""
    attribute_types("")


@lru_cache(maxsize=64)
def attribute_types(sop_class_uid: str) -> AttributeTypes:
    """The type of each attribute of the IOD of ``sop_class_uid``: the most demanding type
    the attribute has in any of the IOD's modules, conditional types (1C, 2C) counted as
    their unconditional ones (the attribute is present, so its condition held). For a SOP
    class the tables do not know, the most demanding type over every module of the
    standard."""
    sop_classes, iods, _ = _tables()
    iod = sop_classes.get(sop_class_uid)
    if iod is None or iod not in iods:
        return _most_demanding(list(_tables()[2]))
    return _most_demanding([module["key"] for module in iods[iod]])
