"""Acceptance plans: pre-specified criteria the evidence says pass or fail to.

A plan is a TOML file, written before the run (see README, "Acceptance plans")::

    name = "my study"
    version = "1.0"

    [[criterion]]
    id = "site-sensitivity"
    metric = "sensitivity"        # auc, sensitivity, specificity, ppv, npv; segmentation:
                                  # dice_mean, dice_median, hd95_median, hd95_mean (mm),
                                  # false_positive_rate
    statistic = "ci_low"          # value (default), ci_low, ci_high
    operator = ">="               # >=, >, <=, <
    threshold = 0.80
    scope = "every site"          # see below
    min_n = 30                    # strata with fewer test cases: not evaluated (default 0)

Scopes (the global model's test performance in ``evidence["performance"]``): ``pooled``;
``every site`` / ``site:<id>`` (``by_site``); ``every manufacturer`` /
``manufacturer:<name>`` (``by_scanner``); ``every scanner model`` /
``scanner model:<name>`` (``by_scanner_model``); ``every subgroup:<column>`` /
``subgroup:<column>=<value>`` (``by_subgroup``).

Two further kinds, for classification, compare the global model with baselines, on its
pooled test AUC:
``kind = "relative_to_baseline"`` (AUC / the baseline's AUC, ``baseline =
"pooled_centralized"``) and ``kind = "unseen_sites"`` (for each local-only model, the
global model's AUC on the other sites' test data pooled minus that model's AUC there; the
criterion applies to the median of these margins).

`evaluate_plan` gives one entry per criterion and stratum; a stratum that cannot be judged
(suppressed, no results, n < min_n, metric undefined) gets ``passed: None`` and its
``reason``, never silence. The plan every run is held to unless told otherwise ships as
``validation/plans/default.toml`` (`default_plan`), for segmentation as
``validation/plans/segmentation.toml``. A plan's metrics must be its run's task's
(`check_plan_task`).
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from statistics import median
from typing import Any, NoReturn

from task.architectures import CLASSIFICATION, SEGMENTATION

#: The metrics of each task's ``performance`` scopes (`validation.metrics`,
#: `validation.segmentation`).
METRICS_OF_TASK = {
    CLASSIFICATION: ("auc", "sensitivity", "specificity", "ppv", "npv"),
    SEGMENTATION: ("dice_mean", "dice_median", "hd95_median", "hd95_mean", "false_positive_rate"),
}
METRICS = tuple(m for metrics in METRICS_OF_TASK.values() for m in metrics)
#: Metrics not on [0, 1] (mm), whose thresholds may be any number >= 0.
UNBOUNDED_METRICS = ("hd95_median", "hd95_mean")
STATISTICS = ("value", "ci_low", "ci_high")
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}
KIND_METRIC = "metric"
KIND_RELATIVE = "relative_to_baseline"
KIND_UNSEEN = "unseen_sites"
BASELINES = ("pooled_centralized",)

#: A run directory's copy of the plan its evidence is judged by (`write_plan_record`).
PLAN_RECORD_FILE = "acceptance-plan.json"
#: Each task's default plan, a resource of this package.
DEFAULT_PLAN_RESOURCES = {
    CLASSIFICATION: "plans/default.toml",
    SEGMENTATION: "plans/segmentation.toml",
}

_COMMON_FIELDS = frozenset({"id", "description", "kind", "operator", "threshold"})
_FIELDS_OF_KIND = {
    KIND_METRIC: _COMMON_FIELDS | {"metric", "statistic", "scope", "min_n"},
    KIND_RELATIVE: _COMMON_FIELDS | {"baseline"},
    KIND_UNSEEN: _COMMON_FIELDS,
}
_PLAN_FIELDS = frozenset({"name", "version", "description", "criterion"})


class AcceptancePlanError(ValueError):
    """A plan that cannot be used, or that names what the run does not have (one line,
    naming the file and the criterion or field)."""


@dataclass(frozen=True)
class StratumKind:
    """A kind of stratum a scope can name.

    name: as written in scopes (``site``, ``scanner model``).
    performance_key: its table in ``evidence["performance"]``.
    wire_prefix: its stratum names on the wire (``manufacturer`` in ``manufacturer=GE``),
        to find it among ``evidence["suppressed"]``; None for sites (``site=all``).
    """

    name: str
    performance_key: str
    wire_prefix: str | None


#: Stratum kinds by scope name; mirrors `task.wire`'s STRATUM_* names.
STRATUM_KINDS = {
    k.name: k
    for k in (
        StratumKind("site", "by_site", None),
        StratumKind("manufacturer", "by_scanner", "manufacturer"),
        StratumKind("scanner model", "by_scanner_model", "scanner"),
        StratumKind("subgroup", "by_subgroup", "subgroup"),
    )
}


@dataclass(frozen=True)
class Scope:
    """Where a criterion applies: ``pooled`` (kind None), every stratum of a kind (name
    None), or one named stratum. ``column``: the subgroup column of subgroup scopes."""

    kind: str | None = None
    name: str | None = None
    column: str | None = None

    @classmethod
    def parse(cls, text: str) -> Scope:
        """The scope ``text`` writes (module docstring); ValueError saying what is wrong."""
        text = text.strip()
        if text == "pooled":
            return cls()
        every = text.startswith("every ")
        kind, _, rest = text.removeprefix("every ").partition(":")
        kind = kind.strip()
        if kind not in STRATUM_KINDS:
            raise ValueError(
                f"unknown scope '{text}' (expected pooled, every <kind> or <kind>:<name>, "
                f"kinds: {', '.join(STRATUM_KINDS)})"
            )
        rest = rest.strip()
        if kind == "subgroup":
            column, _, value = rest.partition("=")
            column, value = column.strip(), value.strip()
            if not column or every == bool(value):
                form = "every subgroup:<column>" if every else "subgroup:<column>=<value>"
                raise ValueError(f"scope '{text}' must read '{form}'")
            return cls("subgroup", None if every else value, column)
        if every == bool(rest):
            form = f"every {kind}" if every else f"{kind}:<name>"
            raise ValueError(f"scope '{text}' must read '{form}'")
        return cls(kind, rest or None)

    @property
    def label(self) -> str:
        """The kind as written in scopes, with the subgroup column (``subgroup:sex``)."""
        return f"{self.kind}:{self.column}" if self.kind == "subgroup" else str(self.kind)

    def stratum(self, name: str) -> str:
        """The scope of the single stratum ``name`` of this kind (``site:site-a``)."""
        return f"{self.label}={name}" if self.kind == "subgroup" else f"{self.kind}:{name}"

    def __str__(self) -> str:
        if self.kind is None:
            return "pooled"
        return f"every {self.label}" if self.name is None else self.stratum(self.name)


@dataclass(frozen=True)
class Criterion:
    """One pre-specified criterion (module docstring). ``metric``/``statistic``/``scope``/
    ``min_n`` apply to kind ``metric``, ``baseline`` to ``relative_to_baseline``."""

    id: str
    operator: str
    threshold: float
    description: str
    kind: str = KIND_METRIC
    metric: str = "auc"
    statistic: str = "value"
    scope: Scope = field(default_factory=Scope)
    min_n: int = 0
    baseline: str = "pooled_centralized"

    def holds(self, value: float) -> bool:
        """Whether ``value`` meets the criterion's ``operator`` and ``threshold``."""
        return OPERATORS[self.operator](value, self.threshold)


@dataclass(frozen=True)
class AcceptancePlan:
    """A plan of criteria; ``source``: where it was read from; ``sha256``: of its text
    (UTF-8), the file's bytes; ``text``: the TOML itself, kept for the run's record."""

    name: str
    criteria: tuple[Criterion, ...]
    source: str
    sha256: str
    text: str = field(repr=False)
    version: str = ""
    description: str = ""

    def provenance(self) -> dict[str, str]:
        """``{name, version, sha256, source}``: what the evidence names the plan by."""
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "source": self.source,
        }


# --- reading plans --------------------------------------------------------------------------


def load_plan(path: Path) -> AcceptancePlan:
    """The plan in the TOML file ``path``; `AcceptancePlanError` if unreadable or invalid."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AcceptancePlanError(f"{path}: cannot read the plan ({exc.strerror})") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AcceptancePlanError(f"{path}: not UTF-8 text") from exc
    return parse_plan(text, str(path))


def resolve_plan(path: Path | None, task: str = CLASSIFICATION) -> AcceptancePlan:
    """The plan in ``path`` (`load_plan`), or ``task``'s default plan when ``path`` is
    None; checked to judge ``task``'s metrics (`check_plan_task`)."""
    plan = default_plan(task) if path is None else load_plan(path)
    check_plan_task(plan, task)
    return plan


def default_plan(task: str = CLASSIFICATION) -> AcceptancePlan:
    """The plan shipped with medfed for ``task`` (`DEFAULT_PLAN_RESOURCES`)."""
    resource = DEFAULT_PLAN_RESOURCES[task]
    text = files("validation").joinpath(resource).read_text(encoding="utf-8")
    return parse_plan(text, f"medfed:validation/{resource}")


def check_plan_task(plan: AcceptancePlan, task: str) -> None:
    """`AcceptancePlanError` naming the first criterion that ``task``'s evidence cannot
    judge: a metric of another task, or (segmentation) a comparison of AUCs with baselines."""
    for criterion in plan.criteria:
        where = _Where(plan.source, f"criterion '{criterion.id}'")
        if criterion.kind != KIND_METRIC and task != CLASSIFICATION:
            where.fail(f"kind '{criterion.kind}' compares AUCs: classification only")
        if criterion.kind == KIND_METRIC and criterion.metric not in METRICS_OF_TASK[task]:
            where.fail(
                f"metric '{criterion.metric}' is not a {task} metric "
                f"({', '.join(METRICS_OF_TASK[task])})"
            )


def parse_plan(text: str, source: str) -> AcceptancePlan:
    """The plan ``text`` (TOML) read from ``source`` (named in errors)."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AcceptancePlanError(f"{source}: not valid TOML ({exc})") from exc
    where = _Where(source, "plan")
    where.check_fields(table, _PLAN_FIELDS)
    criteria_tables = table.get("criterion")
    if not isinstance(criteria_tables, list) or not criteria_tables:
        where.fail("needs at least one [[criterion]] table")
    criteria: list[Criterion] = []
    for index, entry in enumerate(criteria_tables, start=1):
        criterion = _parse_criterion(entry, _Where(source, f"criterion #{index}"))
        if any(c.id == criterion.id for c in criteria):
            _Where(source, f"criterion '{criterion.id}'").fail("id used twice")
        criteria.append(criterion)
    return AcceptancePlan(
        name=where.string(table, "name"),
        criteria=tuple(criteria),
        source=source,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        text=text,
        version=where.string(table, "version", ""),
        description=where.string(table, "description", ""),
    )


@dataclass(frozen=True)
class _Where:
    """Where a value is read (file, criterion), for one-line errors naming both."""

    source: str
    place: str

    def fail(self, message: str) -> NoReturn:
        raise AcceptancePlanError(f"{self.source}: {self.place}: {message}")

    def check_fields(self, table: Mapping[str, Any], allowed: Iterable[str]) -> None:
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            self.fail(f"unknown field '{unknown[0]}' (allowed: {', '.join(sorted(allowed))})")

    def string(self, table: Mapping[str, Any], key: str, default: str | None = None) -> str:
        """``table[key]``, a non-empty string; ``default`` when absent (None: required)."""
        if key not in table:
            if default is None:
                self.fail(f"field '{key}' is missing")
            return default
        value = table[key]
        if not isinstance(value, str) or not value.strip():
            self.fail(f"field '{key}' must be a non-empty string, got {value!r}")
        return value.strip()

    def choice(
        self, table: Mapping[str, Any], key: str, choices: Iterable[str], default: str
    ) -> str:
        value = self.string(table, key, default)
        if value not in choices:
            self.fail(f"unknown {key} '{value}' (expected one of: {', '.join(choices)})")
        return value

    def number(self, table: Mapping[str, Any], key: str, low: float, high: float) -> float:
        value = table.get(key)
        if value is None:
            self.fail(f"field '{key}' is missing")
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(f"field '{key}' must be a number, got {value!r}")
        if not (math.isfinite(value) and low <= value <= high):
            self.fail(f"field '{key}' must be in [{low:g}, {high:g}], got {value!r}")
        return float(value)

    def count(self, table: Mapping[str, Any], key: str) -> int:
        value = table.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(f"field '{key}' must be a whole number >= 0, got {value!r}")
        return value


def _parse_criterion(table: object, where: _Where) -> Criterion:
    if not isinstance(table, dict):
        where.fail("must be a table ([[criterion]])")
    if isinstance(table.get("id"), str) and table["id"].strip():
        where = _Where(where.source, f"criterion '{table['id'].strip()}'")
    criterion_id = where.string(table, "id")
    kind = where.choice(table, "kind", tuple(_FIELDS_OF_KIND), KIND_METRIC)
    where.check_fields(table, _FIELDS_OF_KIND[kind])
    op = where.choice(table, "operator", tuple(OPERATORS), ">=")
    if kind == KIND_RELATIVE:
        threshold = where.number(table, "threshold", 0.0, math.inf)
        baseline = where.choice(table, "baseline", BASELINES, BASELINES[0])
        default = f"global pooled AUC {op} {threshold:g} x {baseline.replace('_', '-')} AUC"
        return Criterion(
            criterion_id,
            op,
            threshold,
            where.string(table, "description", default),
            kind,
            baseline=baseline,
        )
    if kind == KIND_UNSEEN:
        threshold = where.number(table, "threshold", -1.0, 1.0)
        default = (
            f"median AUC margin of the global over each local-only model on the sites "
            f"that model never saw {op} {threshold:g}"
        )
        return Criterion(
            criterion_id, op, threshold, where.string(table, "description", default), kind
        )
    metric = where.choice(table, "metric", METRICS, "auc")
    statistic = where.choice(table, "statistic", STATISTICS, "value")
    threshold = where.number(
        table, "threshold", 0.0, math.inf if metric in UNBOUNDED_METRICS else 1.0
    )
    try:
        scope = Scope.parse(where.string(table, "scope", "pooled"))
    except ValueError as exc:
        where.fail(str(exc))
    min_n = where.count(table, "min_n")
    measure = metric.upper() if metric in ("auc", "ppv", "npv") else metric
    default = f"global model {measure}{'' if statistic == 'value' else f' {statistic}'} "
    default += f"{op} {threshold:g}, {scope}" + (f" with n >= {min_n}" if min_n else "")
    return Criterion(
        criterion_id,
        op,
        threshold,
        where.string(table, "description", default),
        kind,
        metric,
        statistic,
        scope,
        min_n,
    )


# --- plans and runs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunScopes:
    """The strata a run has, to check a plan's named scopes against.

    subgroup_columns: None when not known (then subgroup scopes are not checked).
    """

    sites: frozenset[str]
    manufacturers: frozenset[str]
    scanner_models: frozenset[str]
    subgroup_columns: frozenset[str] | None = None

    @classmethod
    def from_evidence(cls, evidence: Mapping[str, Any]) -> RunScopes:
        """The strata of an evidence dict: its sites, and every stratum with results or
        suppressed somewhere."""
        performance = evidence["performance"]

        def names(kind: str) -> frozenset[str]:
            return frozenset(_stratum_names(evidence, Scope(kind)))

        return cls(
            sites=names("site"),
            manufacturers=names("manufacturer"),
            scanner_models=names("scanner model"),
            subgroup_columns=(
                frozenset(performance["by_subgroup"]) if "by_subgroup" in performance else None
            ),
        )


def check_plan_against(plan: AcceptancePlan, scopes: RunScopes) -> None:
    """`AcceptancePlanError` naming the first criterion whose scope names a site,
    manufacturer, scanner model or subgroup column that the run does not have."""
    known = {
        "site": scopes.sites,
        "manufacturer": scopes.manufacturers,
        "scanner model": scopes.scanner_models,
    }
    for criterion in plan.criteria:
        scope = criterion.scope
        where = _Where(plan.source, f"criterion '{criterion.id}'")
        if scope.kind == "subgroup":
            columns = scopes.subgroup_columns
            if columns is not None and scope.column not in columns:
                where.fail(
                    f"scope '{scope}' names subgroup column '{scope.column}', which this run "
                    f"does not have (columns: {', '.join(sorted(columns)) or 'none'})"
                )
        elif (
            scope.kind is not None
            and scope.name is not None
            and scope.name not in known[scope.kind]
        ):
            where.fail(
                f"scope '{scope}' names a {scope.kind} this run does not have "
                f"({scope.kind}s: {', '.join(sorted(known[scope.kind])) or 'none'})"
            )


def write_plan_record(plan: AcceptancePlan, run_dir: Path) -> Path:
    """Record ``plan`` in ``run_dir`` (`PLAN_RECORD_FILE`: name, source, sha256 and the
    TOML text), for the evidence to be judged by it (`read_plan_record`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / PLAN_RECORD_FILE
    path.write_text(json.dumps(plan.provenance() | {"toml": plan.text}, indent=2))
    return path


def read_plan_record(run_dir: Path, task: str = CLASSIFICATION) -> AcceptancePlan:
    """The plan recorded in ``run_dir``, or ``task``'s default plan when none was recorded."""
    path = run_dir / PLAN_RECORD_FILE
    if not path.exists():
        return default_plan(task)
    try:
        record = json.loads(path.read_text())
        text, source, sha256 = record["toml"], record["source"], record["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise AcceptancePlanError(f"{path}: not a plan record ({exc})") from exc
    plan = parse_plan(text, source)
    if plan.sha256 != sha256:
        raise AcceptancePlanError(f"{path}: field 'sha256' does not match the plan's text")
    return plan


# --- evaluation -------------------------------------------------------------------------------


def evaluate_plan(plan: AcceptancePlan, evidence: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One entry per criterion and stratum: ``{id, criterion (its description), kind,
    metric, statistic, scope, value, operator, threshold, n, passed}``, plus ``reason``
    when ``passed`` is None (not evaluated) and ``note`` on partial data. ``evidence``
    needs ``performance`` and ``baselines`` (and ``suppressed``, ``sites`` if any)."""
    evaluators = {
        KIND_METRIC: _evaluate_metric,
        KIND_RELATIVE: _evaluate_relative,
        KIND_UNSEEN: _evaluate_unseen,
    }
    return [entry for c in plan.criteria for entry in evaluators[c.kind](c, evidence)]


def _entry(
    criterion: Criterion,
    scope: str,
    value: float | None,
    n: int | None = None,
    reason: str | None = None,
    note: str | None = None,
    statistic: str | None = None,
) -> dict[str, Any]:
    """An evaluation entry; not evaluated (``passed`` None) with ``reason`` or no value."""
    if value is None and reason is None:
        reason = "not evaluated: no value"
    entry: dict[str, Any] = {
        "id": criterion.id,
        "criterion": criterion.description,
        "kind": criterion.kind,
        "metric": criterion.metric,
        "statistic": statistic or criterion.statistic,
        "scope": scope,
        "value": value,
        "operator": criterion.operator,
        "threshold": criterion.threshold,
        "n": n,
        "passed": None if reason or value is None else criterion.holds(value),
    }
    if reason:
        entry["reason"] = reason
    if note:
        entry["note"] = note
    return entry


def _evaluate_metric(criterion: Criterion, evidence: Mapping[str, Any]) -> list[dict[str, Any]]:
    performance = evidence["performance"]
    scope = criterion.scope
    if scope.kind is None:
        return [_judge_stratum(criterion, "pooled", performance["pooled"], None)]
    table = _performance_table(evidence, scope)
    names = [scope.name] if scope.name is not None else sorted(_stratum_names(evidence, scope))
    if not names:
        reason = f"not evaluated: no {scope.label} strata in this run's evidence"
        return [_entry(criterion, str(scope), None, reason=reason)]
    entries = []
    for name in names:
        suppressed_at = _suppressed_at(evidence, scope, name)
        note = None
        if suppressed_at and name in (table or {}):
            note = f"excludes the cases of {', '.join(suppressed_at)} (suppressed there)"
        entries.append(
            _judge_stratum(
                criterion, scope.stratum(name), (table or {}).get(name), suppressed_at, note
            )
        )
    return entries


def _judge_stratum(
    criterion: Criterion,
    scope: str,
    result: Mapping[str, Any] | None,
    suppressed_at: list[str] | None,
    note: str | None = None,
) -> dict[str, Any]:
    """The entry of one stratum's ``result`` (a `binary_performance` dict, None if absent)."""
    if result is None:
        why = (
            f"suppressed at {', '.join(suppressed_at)} (below the site's minimum cell size)"
            if suppressed_at
            else "no test results in this run (see site_failures)"
        )
        return _entry(criterion, scope, None, reason=f"not evaluated: {why}")
    estimate = result.get(criterion.metric) or {}
    value = estimate.get(criterion.statistic)
    n = result["n"]
    reason = None
    if n < criterion.min_n:
        reason = f"not evaluated: n = {n} < min_n = {criterion.min_n}"
    elif value is None:
        method = estimate.get("method")
        reason = f"not evaluated: {criterion.metric} {criterion.statistic} undefined" + (
            f" ({method})" if method else ""
        )
    return _entry(criterion, scope, value, n, reason, note)


def _evaluate_relative(criterion: Criterion, evidence: Mapping[str, Any]) -> list[dict[str, Any]]:
    pooled = evidence["performance"]["pooled"]
    auc = (pooled.get("auc") or {}).get("value")
    baseline = evidence["baselines"].get(criterion.baseline, {}).get("auc") or {}
    statistic = f"ratio to {criterion.baseline}"
    reason = None
    if auc is None:
        reason = "not evaluated: the global model's pooled AUC is undefined"
    elif not baseline.get("value"):
        reason = f"not evaluated: no {criterion.baseline.replace('_', '-')} baseline in this run"
    if reason:
        return [_entry(criterion, "pooled", None, pooled["n"], reason, statistic=statistic)]
    return [_entry(criterion, "pooled", auc / baseline["value"], pooled["n"], statistic=statistic)]


def _evaluate_unseen(criterion: Criterion, evidence: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = evidence["baselines"].get("unseen_site_comparison", {}).values()
    margins = [
        r["global_auc"] - r["local_only_auc"]
        for r in rows
        if r["global_auc"] is not None and r["local_only_auc"] is not None
    ]
    statistic = "median margin over local-only models"
    if not margins:
        reason = "not evaluated: no local-only models with AUCs on unseen sites"
        return [_entry(criterion, "unseen sites", None, reason=reason, statistic=statistic)]
    return [_entry(criterion, "unseen sites", median(margins), statistic=statistic)]


def _performance_table(
    evidence: Mapping[str, Any], scope: Scope
) -> Mapping[str, Mapping[str, Any]] | None:
    """``scope``'s table of results in the evidence (stratum name -> result); None when
    the evidence has no such table (e.g. no subgroup strata)."""
    table = evidence["performance"].get(STRATUM_KINDS[str(scope.kind)].performance_key)
    if table is None or scope.kind != "subgroup":
        return table
    return table.get(scope.column)


def _stratum_names(evidence: Mapping[str, Any], scope: Scope) -> set[str]:
    """Every stratum of ``scope``'s kind the run knows: with results, suppressed somewhere,
    or (sites and scanner models) listed under ``sites``, so that none is skipped."""
    names = set(_performance_table(evidence, scope) or {})
    names |= {name for name, _ in _suppressed(evidence, scope)}
    sites = evidence.get("sites", [])
    if scope.kind == "site":
        names |= {s["id"] for s in sites}
    elif scope.kind == "scanner model":
        names |= {name for s in sites for name in s.get("scanners", {})}
    return names


def _suppressed(evidence: Mapping[str, Any], scope: Scope) -> list[tuple[str, str]]:
    """(stratum name, site) of each test stratum of ``scope``'s kind a site withheld."""
    prefix = STRATUM_KINDS[str(scope.kind)].wire_prefix
    found = []
    for record in evidence.get("suppressed", []):
        split, _, stratum = record["stratum"].partition("|")
        if split != "test":
            continue
        if prefix is None:
            if stratum == "site=all":
                found.append((record["site"], record["site"]))
            continue
        kind, _, name = stratum.partition("=")
        if kind == (f"{prefix}:{scope.column}" if scope.kind == "subgroup" else prefix):
            found.append((name, record["site"]))
    return found


def _suppressed_at(evidence: Mapping[str, Any], scope: Scope, name: str) -> list[str]:
    return sorted({site for stratum, site in _suppressed(evidence, scope) if stratum == name})
