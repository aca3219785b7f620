"""Simulation scenarios: a whole simulated federation described in one TOML file.

A scenario names the sites (a count, or each site's size), their quantity skew (sizes from
a Dirichlet) and label skew (each site's lesion prevalence from a Dirichlet), their scanner
mix (`simulations.scanners.PROFILES`), the strategy and its parameters, the privacy
settings, the model, rounds and local epochs, the seeds, and the faults to inject
(`simulations.faults`). `load_scenario` reads and checks a file: every error is one line
naming the file and the field. `site_specs` turns it into phantom hospitals; running it is
`simulations.scenario_run.run_scenario` (``medfed simulate --scenario``).

The format, with every field and its default (README, Scenarios and faults)::

    name = "small"                 # default: the file's stem
    description = ""
    source = "phantoms"            # where the sites' images come from (`SOURCES`):
                                   #   "phantoms", or "breastmnist" (real ultrasound
                                   #   images split into the sites, `simulations.breastmnist`)
    data_path = "..."              # breastmnist only: the .npz (default
                                   #   ../shared/data/breastmnist/breastmnist.npz; relative
                                   #   paths from the project root)

    [seeds]
    data = 0                       # the sites: sizes, prevalences, scanners, images
    training = 0                   # initial weights and every site's training draws
    faults = 0                     # which fault strikes which site in which round

    [sites]
    count = 3                      # site-a, site-b, ...; or sizes = [120, 60, 40]
    cases = 60                     # cases per site (the mean under quantity skew)
    quantity_alpha = 1.0           # optional: sizes = min_cases + a Dirichlet(alpha) share
    min_cases = 20                 #   of the rest (smaller alpha, more skew)
    prevalence = 0.3               # lesion prevalence (the mean under label skew)
    label_alpha = 0.5              # optional: a site's (prevalence, 1 - prevalence) is
                                   #   Dirichlet(alpha * (p, 1 - p))
    scanners = "drawn"             # every site: "drawn" (2-3 profiles each, from the data
                                   #   seed), a profile, a list (equal parts), or a table
                                   #   {profile = weight}; the source's profiles (CT
                                   #   `PROFILES` for phantoms, `US_PROFILES` for breastmnist)
    site_scanners = [...]          # optional: one such entry per site instead

    [federation]
    model = "blob"
    rounds = 3
    local_epochs = 1               # default: the model's recipe
    local_baselines = true
    pooled_baseline = true
    round_timeout_s = 60.0         # default: none (the job's one hour)

    [strategy]                     # `server.strategies.StrategyConfig`'s fields
    name = "fedavg"

    [privacy]                      # as medfed's --epsilon, --dp, ...
    epsilon = 8.0                  # or "inf"
    dp = "local"
    noise_multiplier = 0.0
    max_grad_norm = 1.0
    accountant = "rdp"

    [[faults]]                     # `simulations.faults.FaultSpec`, one table per fault
    kind = "dropout"
    probability = 0.3              # sites = [...], rounds = [...], delay_s, factor
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import tomli_w

from server.strategies import StrategyConfig
from simulations.faults import FAULT_KINDS, FaultPlan, FaultSpec
from simulations.phantoms import (
    PhantomSiteSpec,
    apportion,
    random_vendor_mix,
    site_name,
)
from simulations.scanners import PROFILES, US_PROFILES
from task.model import MODEL_ZOO
from task.privacy import ACCOUNTANTS, PrivacyConfig, requested_privacy

#: The sources of site images a scenario may name (each in `simulations.scenario_run.SOURCES`),
#: and the simulated scanner profiles each one's sites draw on.
SOURCE_PROFILES: dict[str, Mapping[str, object]] = {
    "phantoms": PROFILES,
    "breastmnist": US_PROFILES,
}
SOURCE_NAMES = tuple(SOURCE_PROFILES)
#: The sources that read a data file (the ``data_path`` field).
DATA_SOURCES = ("breastmnist",)
#: A site needs this many cases, so that each class can reach both splits.
MIN_SITE_CASES = 10
#: At least this many cases of each class at every site under label skew.
MIN_CLASS_CASES = 2
_SIZE_STREAM, _LABEL_STREAM, _SCANNER_STREAM = range(3)
#: A scanner mix: (profile, fraction) pairs, fractions summing to 1.
ScannerMix = tuple[tuple[str, float], ...]
_T = TypeVar("_T")


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message is one line naming file and field."""


@dataclass(frozen=True)
class Seeds:
    """The scenario's seeds: ``data`` (the sites and their images), ``training`` (the
    federation's) and ``faults`` (where and when faults strike)."""

    data: int = 0
    training: int = 0
    faults: int = 0


@dataclass(frozen=True)
class SitesSpec:
    """The phantom hospitals: ``sizes`` (cases per site), a lesion ``prevalence`` and
    optional label skew (``label_alpha``), and their scanner mixes (one per site; None:
    drawn from the data seed)."""

    sizes: tuple[int, ...]
    prevalence: float = 0.3
    label_alpha: float | None = None
    scanners: tuple[ScannerMix, ...] | None = None

    @property
    def count(self) -> int:
        """The number of sites."""
        return len(self.sizes)

    @property
    def ids(self) -> tuple[str, ...]:
        """The sites' ids: site-a, site-b, ..."""
        return tuple(site_name(i) for i in range(self.count))


@dataclass(frozen=True)
class FederationSpec:
    """The federated job: the model, rounds and local epochs (None: the model's recipe),
    the baselines, and the round timeout (seconds; None: the job's default)."""

    model: str = "blob"
    rounds: int = 3
    local_epochs: int | None = None
    local_baselines: bool = True
    pooled_baseline: bool = True
    round_timeout_s: float | None = None


@dataclass(frozen=True)
class Scenario:
    """A simulated federation, as its file describes it; ``text`` is the file's content and
    ``file`` where it was read from (None: built in code)."""

    name: str
    sites: SitesSpec
    federation: FederationSpec = field(default_factory=FederationSpec)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    seeds: Seeds = field(default_factory=Seeds)
    faults: tuple[FaultSpec, ...] = ()
    source: str = "phantoms"
    description: str = ""
    text: str = ""
    file: Path | None = None
    data_path: str | None = None

    @property
    def sha256(self) -> str:
        """The SHA-256 of the file's text (UTF-8)."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    def fault_plan(self) -> FaultPlan:
        """Where and when the scenario's faults strike (`FaultPlan.draw`)."""
        return FaultPlan.draw(
            self.faults, self.sites.ids, self.federation.rounds, self.seeds.faults
        )

    def record(self, plan: FaultPlan) -> dict[str, Any]:
        """What the run's evidence keeps of the scenario: name, file, SHA-256, TOML text,
        source, and the faults ``plan`` injects."""
        return {
            "name": self.name,
            "file": str(self.file) if self.file else None,
            "sha256": self.sha256,
            "toml": self.text,
            "source": self.source,
            "faults_injected": plan.injected(),
        }


def load_scenario(path: Path) -> Scenario:
    """Read and check the scenario file ``path``; `ScenarioError` (one line, naming the
    file and the field) for anything wrong with it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read the scenario ({exc})") from exc
    return parse_scenario(text, Path(path))


def parse_scenario(text: str, file: Path | None = None) -> Scenario:
    """The scenario TOML ``text`` says (``file``: where it came from, for messages and
    records); `ScenarioError` naming the field for anything wrong."""
    where = str(file) if file else "scenario"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{where}: not valid TOML: {exc}") from exc
    top = _Table(data, where, "")
    name = top.text("name", file.stem if file else "scenario")
    description = top.text("description", "")
    source = top.text("source", "phantoms", SOURCE_NAMES)
    data_path = top.raw("data_path")
    if data_path is not None and (source not in DATA_SOURCES or not isinstance(data_path, str)):
        only = ", ".join(DATA_SOURCES)
        raise top.error("data_path", f"must be a path (a string), and only with source {only}")
    seeds = _read_seeds(top.table("seeds"))
    sites = _read_sites(top.table("sites", required=True), seeds.data, SOURCE_PROFILES[source])
    federation = _read_federation(top.table("federation"))
    strategy = _read_strategy(top.table("strategy"))
    privacy = _read_privacy(top.table("privacy"))
    faults = tuple(_read_fault(t, sites.ids) for t in top.tables("faults"))
    top.done()
    scenario = Scenario(
        name,
        sites,
        federation,
        strategy,
        privacy,
        seeds,
        faults,
        source,
        description,
        text,
        file,
        data_path,
    )
    unknown = sorted({r for f in faults for r in f.rounds} - set(range(1, federation.rounds + 1)))
    if unknown:
        raise ScenarioError(f"{where}: [[faults]] rounds: round {unknown[0]} is not in the run")
    return scenario


def scenario_toml(scenario: Scenario) -> str:
    """``scenario`` as a scenario file, every setting explicit (site sizes resolved, each
    site's scanner mix given): `parse_scenario` reads it back to the same settings."""
    sites = scenario.sites
    site_table: dict[str, Any] = {"sizes": list(sites.sizes), "prevalence": sites.prevalence}
    if sites.label_alpha is not None:
        site_table["label_alpha"] = sites.label_alpha
    if sites.scanners is None:
        site_table["scanners"] = "drawn"
    else:
        site_table["site_scanners"] = [dict(mix) for mix in sites.scanners]
    privacy = scenario.privacy
    document = {
        "name": scenario.name,
        "description": scenario.description,
        "source": scenario.source,
        **({"data_path": scenario.data_path} if scenario.data_path is not None else {}),
        "seeds": dataclasses.asdict(scenario.seeds),
        "sites": site_table,
        "federation": {
            k: v for k, v in dataclasses.asdict(scenario.federation).items() if v is not None
        },
        "strategy": dataclasses.asdict(scenario.strategy),
        "privacy": {
            "epsilon": "inf" if privacy.mode == "none" else privacy.target_epsilon,
            "dp": "local" if privacy.mode == "none" else privacy.mode,
            "noise_multiplier": privacy.noise_multiplier,
            "max_grad_norm": privacy.max_grad_norm,
            "accountant": privacy.accountant,
        },
        "faults": [
            {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(fault).items()
                if v is not None
            }
            for fault in scenario.faults
        ],
    }
    return tomli_w.dumps(document)


def derived(scenario: Scenario, **changes: Any) -> Scenario:
    """``scenario`` with ``changes`` to its fields (benchmarks, tests): its text is the
    TOML of what will run (`scenario_toml`), headed by where it came from, so that the
    run's records say what ran; no file."""
    changed = dataclasses.replace(scenario, **changes, file=None)
    origin = (
        f"# derived from {scenario.file or scenario.name} (sha256 {scenario.sha256}), "
        f"changed: {', '.join(sorted(changes))}\n"
    )
    return dataclasses.replace(changed, text=origin + scenario_toml(changed))


def site_specs(scenario: Scenario) -> list[PhantomSiteSpec]:
    """The phantom hospitals of ``scenario``: each site's size, prevalence (drawn under
    label skew) and scanner mix (drawn unless given), all from the data seed."""
    return [PhantomSiteSpec(*draw) for draw in site_draws(scenario)]


def site_draws(scenario: Scenario) -> list[tuple[str, int, float, dict[str, float]]]:
    """Each site of ``scenario`` as (id, size, prevalence, scanner mix): prevalences drawn
    under label skew, mixes (of its source's profiles) drawn unless given, from the data
    seed. Every source builds its sites from these."""
    sites = scenario.sites
    seed = scenario.seeds.data
    prevalences = _prevalences(sites, _rng(seed, _LABEL_STREAM))
    if sites.scanners is None:
        rng = _rng(seed, _SCANNER_STREAM)
        profiles = SOURCE_PROFILES[scenario.source]
        mixes = [random_vendor_mix(rng, profiles=profiles) for _ in sites.sizes]
    else:
        mixes = [dict(mix) for mix in sites.scanners]
    return list(zip(sites.ids, sites.sizes, prevalences, mixes, strict=True))


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 0x5CE7, stream]))


def _prevalences(sites: SitesSpec, rng: np.random.Generator) -> list[float]:
    """Each site's prevalence: the scenario's, or under label skew drawn from
    Dirichlet(alpha * (p, 1 - p)) and kept to at least `MIN_CLASS_CASES` of each class."""
    if sites.label_alpha is None:
        return [sites.prevalence] * sites.count
    alpha = sites.label_alpha * np.array([sites.prevalence, 1.0 - sites.prevalence])
    drawn = []
    for n in sites.sizes:
        p = float(rng.dirichlet(alpha)[0])
        drawn.append(round(min(max(p, MIN_CLASS_CASES / n), 1.0 - MIN_CLASS_CASES / n), 4))
    return drawn


def quantity_skewed_sizes(
    count: int, cases: int, alpha: float, min_cases: int, seed: int
) -> tuple[int, ...]:
    """``count`` site sizes summing to ``count * cases``: ``min_cases`` each plus a
    Dirichlet(``alpha``) share of the rest, drawn from ``seed`` (the data seed)."""
    shares = _rng(seed, _SIZE_STREAM).dirichlet([alpha] * count)
    extra = apportion({str(i): float(s) for i, s in enumerate(shares)}, count * (cases - min_cases))
    return tuple(min_cases + extra[str(i)] for i in range(count))


# --- reading the file ------------------------------------------------------------------


class _Table:
    """One TOML table being read: typed getters whose errors name the file and the field;
    `done` refuses the keys nobody asked for."""

    def __init__(self, data: dict[str, Any], file: str, name: str) -> None:
        self.data = data
        self.file = file
        self.name = name
        self.read: set[str] = set()

    def error(self, key: str, problem: str) -> ScenarioError:
        where = f"[{self.name}] {key}" if self.name else key
        return ScenarioError(f"{self.file}: {where}: {problem}")

    def _get(self, key: str) -> Any:
        self.read.add(key)
        return self.data.get(key)

    def has(self, key: str) -> bool:
        return key in self.data

    def number(
        self,
        key: str,
        default: float | None,
        minimum: float | None = None,
        integer: bool = False,
        above: bool = False,
    ) -> Any:
        """A number (an integer when ``integer``), at least ``minimum`` (more than it when
        ``above``); ``default`` when absent."""
        value = self._get(key)
        if value is None:
            return default
        kinds = (int,) if integer else (int, float)
        kind = "an integer" if integer else "a number"
        bound = "" if minimum is None else f" {'>' if above else '>='} {minimum:g}"
        ok = isinstance(value, kinds) and not isinstance(value, bool)
        if ok and minimum is not None:
            ok = value > minimum if above else value >= minimum
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            raise self.error(key, f"must be {kind}{bound}, got {value!r}")
        return value if integer else float(value)

    def integer(self, key: str, default: int | None, minimum: int | None = None) -> Any:
        return self.number(key, default, minimum, integer=True)

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def text(self, key: str, default: str, choices: tuple[str, ...] | None = None) -> str:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def raw(self, key: str) -> Any:
        return self._get(key)

    def table(self, key: str, required: bool = False) -> _Table:
        value = self._get(key)
        if value is None and not required:
            value = {}
        if not isinstance(value, dict):
            problem = "missing" if value is None else f"must be a table, got {value!r}"
            raise self.error(f"[{key}]" if not self.name else key, problem)
        return _Table(value, self.file, f"{self.name}.{key}" if self.name else key)

    def tables(self, key: str) -> list[_Table]:
        value = self._get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(key, "must be an array of tables ([[faults]])")
        return [_Table(v, self.file, f"{key}[{i}]") for i, v in enumerate(value)]

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.read)
        if unknown:
            raise self.error(unknown[0], "unknown field")


def _read_seeds(table: _Table) -> Seeds:
    seeds = Seeds(*(table.integer(s.name, s.default, 0) for s in dataclasses.fields(Seeds)))
    table.done()
    return seeds


def _read_sites(table: _Table, data_seed: int, profiles: Mapping[str, object]) -> SitesSpec:
    """The [sites] table: sizes (given, equal, or quantity-skewed from ``data_seed``),
    prevalence and label skew, scanner mixes (of ``profiles``)."""
    if table.has("sizes"):
        sizes = table.raw("sizes")
        if (
            not isinstance(sizes, list)
            or len(sizes) < 2
            or not all(type(n) is int and n >= MIN_SITE_CASES for n in sizes)
        ):
            raise table.error("sizes", f"must list at least 2 site sizes, each >= {MIN_SITE_CASES}")
        if table.has("count") and table.integer("count", None) != len(sizes):
            raise table.error("count", f"is not the number of sizes ({len(sizes)})")
        for key in ("cases", "quantity_alpha", "min_cases"):
            if table.has(key):
                raise table.error(key, "does not go with sizes (each site's size is given)")
        site_sizes = tuple(sizes)
    else:
        count = table.integer("count", None, 2)
        if count is None:
            raise table.error("count", "missing: give count (or sizes)")
        cases = table.integer("cases", 60, MIN_SITE_CASES)
        alpha = table.number("quantity_alpha", None, 0, above=True)
        min_cases = table.integer("min_cases", MIN_SITE_CASES, MIN_SITE_CASES)
        if alpha is None:
            site_sizes = (cases,) * count
        elif min_cases > cases:
            raise table.error("min_cases", f"must be <= cases ({cases}), got {min_cases}")
        else:
            site_sizes = quantity_skewed_sizes(count, cases, alpha, min_cases, data_seed)
    prevalence = table.number("prevalence", 0.3, 0, above=True)
    if prevalence >= 1:
        raise table.error("prevalence", f"must be in (0, 1), got {prevalence}")
    label_alpha = table.number("label_alpha", None, 0, above=True)
    scanners = _read_scanners(table, len(site_sizes), profiles)
    table.done()
    return SitesSpec(site_sizes, prevalence, label_alpha, scanners)


def _read_scanners(
    table: _Table, count: int, profiles: Mapping[str, object]
) -> tuple[ScannerMix, ...] | None:
    """``site_scanners`` (one mix per site), else ``scanners`` (one mix for every site, or
    "drawn": None)."""
    if table.has("site_scanners"):
        entries = table.raw("site_scanners")
        if not isinstance(entries, list) or len(entries) != count:
            raise table.error("site_scanners", f"must list one scanner mix per site ({count})")
        return tuple(_mix(table, "site_scanners", entry, profiles) for entry in entries)
    value = table.raw("scanners")
    if value is None or value == "drawn":
        return None
    return (_mix(table, "scanners", value, profiles),) * count


def _mix(table: _Table, key: str, value: Any, profiles: Mapping[str, object]) -> ScannerMix:
    """A scanner mix from a profile name, a list of names (equal parts) or a table of
    weights, normalised to fractions."""
    if isinstance(value, str):
        weights = {value: 1.0}
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        weights = dict.fromkeys(value, 1.0)
    elif isinstance(value, dict) and value:
        weights = value
    else:
        raise table.error(key, f"a scanner mix is a profile, a list or a table, got {value!r}")
    unknown = sorted(set(weights) - set(profiles))
    if unknown:
        raise table.error(
            key, f"unknown scanner profile {unknown[0]!r}; one of {', '.join(sorted(profiles))}"
        )
    if not all(
        isinstance(w, int | float) and not isinstance(w, bool) and w > 0 for w in weights.values()
    ):
        raise table.error(key, f"weights must be numbers > 0, got {value!r}")
    total = float(sum(weights.values()))
    return tuple((name, w / total) for name, w in sorted(weights.items()))


def _read_federation(table: _Table) -> FederationSpec:
    spec = FederationSpec(
        model=table.text("model", "blob", tuple(MODEL_ZOO)),
        rounds=table.integer("rounds", 3, 1),
        local_epochs=table.integer("local_epochs", None, 1),
        local_baselines=table.flag("local_baselines", True),
        pooled_baseline=table.flag("pooled_baseline", True),
        round_timeout_s=table.number("round_timeout_s", None, 0, above=True),
    )
    table.done()
    return spec


def _read_strategy(table: _Table) -> StrategyConfig:
    """``[strategy]``: `StrategyConfig`'s fields, each typed by its default."""
    values: dict[str, Any] = {}
    for option in dataclasses.fields(StrategyConfig):
        if not table.has(option.name):
            continue
        if isinstance(option.default, str):
            values[option.name] = table.text(option.name, option.default)
        else:
            integer = isinstance(option.default, int)
            values[option.name] = table.number(option.name, None, integer=integer)
    table.done()
    return _checked(table, StrategyConfig, values)


def _read_privacy(table: _Table) -> PrivacyConfig:
    """``[privacy]``, as the command line's privacy options."""
    epsilon: Any = table.raw("epsilon")
    if epsilon is None:
        epsilon = 8.0
    elif epsilon == "inf":
        epsilon = math.inf
    elif not (isinstance(epsilon, int | float) and not isinstance(epsilon, bool) and epsilon > 0):
        raise table.error("epsilon", f'must be a number > 0 or "inf", got {epsilon!r}')
    settings = {
        "epsilon": float(epsilon),
        "dp": table.text("dp", "local", ("local", "central")),
        "noise_multiplier": table.number("noise_multiplier", 0.0, 0),
        "max_grad_norm": table.number("max_grad_norm", 1.0, 0, above=True),
        "accountant": table.text("accountant", "rdp", ACCOUNTANTS),
    }
    table.done()
    return _checked(table, requested_privacy, settings)


def _read_fault(table: _Table, site_ids: tuple[str, ...]) -> FaultSpec:
    sites = table.raw("sites") or []
    if not isinstance(sites, list) or not all(isinstance(s, str) for s in sites):
        raise table.error("sites", f"must be a list of site ids, got {sites!r}")
    unknown = sorted(set(sites) - set(site_ids))
    if unknown:
        raise table.error("sites", f"no site {unknown[0]!r}; the sites are {', '.join(site_ids)}")
    rounds = table.raw("rounds") or []
    if not isinstance(rounds, list) or not all(type(r) is int and r >= 1 for r in rounds):
        raise table.error("rounds", f"must be a list of round numbers >= 1, got {rounds!r}")
    if not table.has("kind"):
        raise table.error("kind", f"missing: one of {', '.join(FAULT_KINDS)}")
    values = {
        "kind": table.text("kind", "", tuple(FAULT_KINDS)),
        "sites": tuple(sites),
        "rounds": tuple(rounds),
        "probability": table.number("probability", 1.0, 0),
        "delay_s": table.number("delay_s", 0.0, 0),
        "factor": table.number("factor", None, 0, above=True),
    }
    table.done()
    return _checked(table, FaultSpec, values)


def _checked(table: _Table, build: Callable[..., _T], values: dict[str, Any]) -> _T:
    """``build(**values)``, its `ValueError` (which names the field) as a `ScenarioError`
    naming the table."""
    try:
        return build(**values)
    except ValueError as exc:
        raise ScenarioError(f"{table.file}: [{table.name}]: {exc}") from exc
