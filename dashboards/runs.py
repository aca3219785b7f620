"""Run directories as the dashboard reads them: ``evidence.json`` (and the per-round log,
``rounds.jsonl``) turned into typed objects.

Nothing here computes a statistic: every number comes from the evidence that
`validation.evidence` wrote. Evidence is read defensively, one section at a time: a section
that is missing or malformed raises `EvidenceGap`, whose message says which field, so that a
page can say so where the section would be and still show the rest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from task.architectures import CLASSIFICATION, SEGMENTATION
from validation.acceptance import METRICS, METRICS_OF_TASK, STRATUM_KINDS
from validation.report.sections import HEADLINES, Headline

EVIDENCE_FILE = "evidence.json"
ROUND_LOG_FILE = "rounds.jsonl"
REPORT_HTML = "report.html"
REPORT_PDF = "report.pdf"
#: The evidence schema's major versions this dashboard was written against; others are read
#: as far as their fields allow, with a notice.
KNOWN_SCHEMA_MAJORS = ("1", "2")
#: The metrics of a performance scope (of either task, `TaskView.metrics`), by name.
METRIC_NAMES = {
    "auc": "AUC",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "ppv": "PPV",
    "npv": "NPV",
    "dice_mean": "mean Dice",
    "dice_median": "median Dice",
    "hd95_median": "median HD95 (mm)",
    "hd95_mean": "mean HD95 (mm)",
    "false_positive_rate": "false-positive rate",
}

#: Kind of stratum -> its table in ``evidence["performance"]`` (subgroups are by column).
STRATUM_TABLES = {
    name: kind.performance_key for name, kind in STRATUM_KINDS.items() if name != "subgroup"
}

Level = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class TaskView:
    """What the pages show of a run's task (``run.task``).

    metrics: a performance scope's metrics, in display order; headline: the metric of the
    cross-site matrix, the baselines and the rounds (`validation.report.sections.HEADLINES`);
    floor: the low end of its colour scale (chance for AUC); positives: what ``n_pos``
    counts; counts: a scope's counts besides ``n`` and ``n_pos``, key -> label.
    """

    name: str
    metrics: tuple[str, ...]
    headline: Headline
    floor: float
    positives: str
    counts: tuple[tuple[str, str], ...]


TASKS = {
    CLASSIFICATION: TaskView(
        CLASSIFICATION,
        METRICS_OF_TASK[CLASSIFICATION],
        HEADLINES[CLASSIFICATION],
        0.5,
        "positives",
        (("tp", "tp"), ("fp", "fp"), ("tn", "tn"), ("fn", "fn")),
    ),
    SEGMENTATION: TaskView(
        SEGMENTATION,
        METRICS_OF_TASK[SEGMENTATION],
        HEADLINES[SEGMENTATION],
        0.0,
        "cases with a lesion",
        (
            ("n_empty", "without a lesion"),
            ("n_false_positive", "false positives"),
            ("n_missed", "lesions missed"),
            ("n_hd95", "with HD95"),
            ("n_no_spacing", "no pixel spacing"),
        ),
    ),
}


class EvidenceGap(Exception):
    """A part of the evidence is missing or malformed; the message names the field."""


@dataclass(frozen=True)
class Notice:
    """A problem found while reading a run directory, to show in the page."""

    level: Level
    text: str


# --- defensive reading of JSON ------------------------------------------------------------


class Node:
    """A JSON value and its path in the document, read with checks that raise `EvidenceGap`
    naming the path (``sites[2].privacy.epsilon``) instead of KeyError or TypeError."""

    __slots__ = ("path", "value")

    def __init__(self, value: Any, path: str = "") -> None:
        self.value = value
        self.path = path

    def _child_path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def _where(self) -> str:
        return f"`{self.path}`" if self.path else "the document"

    def _expect(self, kind: type | tuple[type, ...], what: str) -> Any:
        if not isinstance(self.value, kind) or isinstance(self.value, bool):
            raise EvidenceGap(f"{self._where()} is not {what}")
        return self.value

    def has(self, key: str) -> bool:
        """Whether this object has ``key`` with a value other than null."""
        return isinstance(self.value, dict) and self.value.get(key) is not None

    def __getitem__(self, key: str | int) -> Node:
        if isinstance(key, int):
            items = self._expect(list, "a list")
            if not -len(items) <= key < len(items):
                raise EvidenceGap(f"{self._where()} has no item {key}")
            return Node(items[key], self._child_path(key))
        mapping = self._expect(dict, "an object")
        if mapping.get(key) is None:
            where = f"`{self.path}`" if self.path else "evidence.json"
            raise EvidenceGap(f"{where} has no `{key}`")
        return Node(mapping[key], self._child_path(key))

    def get(self, key: str) -> Node | None:
        """The child ``key``, None when it is missing or null."""
        return self[key] if self.has(key) else None

    def items(self) -> Iterator[tuple[str, Node]]:
        """The members of an object."""
        for key, value in self._expect(dict, "an object").items():
            yield key, Node(value, self._child_path(key))

    def __iter__(self) -> Iterator[Node]:
        for i, value in enumerate(self._expect(list, "a list")):
            yield Node(value, self._child_path(i))

    def __len__(self) -> int:
        return len(self._expect((list, dict), "a list or an object"))

    def number(self) -> float | None:
        """A number, or None for null."""
        if self.value is None:
            return None
        value = float(self._expect((int, float), "a number"))
        return None if math.isnan(value) else value

    def integer(self) -> int | None:
        """An integer, or None for null."""
        return None if self.value is None else int(self._expect(int, "an integer"))

    def text(self) -> str:
        """A string."""
        return str(self._expect(str, "a string"))

    def boolean(self) -> bool:
        """true or false."""
        if not isinstance(self.value, bool):
            raise EvidenceGap(f"{self._where()} is not true or false")
        return self.value

    def opt_number(self, key: str) -> float | None:
        """The number at ``key``, None when missing or null."""
        child = self.get(key)
        return None if child is None else child.number()

    def opt_integer(self, key: str) -> int | None:
        """The integer at ``key``, None when missing or null."""
        child = self.get(key)
        return None if child is None else child.integer()

    def opt_text(self, key: str) -> str | None:
        """The string at ``key``, None when missing or null."""
        child = self.get(key)
        return None if child is None else child.text()


# --- typed parts of the evidence ----------------------------------------------------------


def _counts(node: Node | None) -> dict[str, int]:
    """The integer members of an object (others, such as nested objects, left out)."""
    if node is None:
        return {}
    return {
        key: value.value
        for key, value in node.items()
        if isinstance(value.value, int) and not isinstance(value.value, bool)
    }


@dataclass(frozen=True)
class Estimate:
    """A value with its confidence interval (all None where undefined; ``method`` says why)."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    method: str

    @classmethod
    def read(cls, node: Node) -> Estimate:
        return cls(
            node.opt_number("value"),
            node.opt_number("ci_low"),
            node.opt_number("ci_high"),
            node.opt_text("method") or "",
        )


@dataclass(frozen=True)
class StratumResult:
    """The global model's performance on one stratum's test data (a classifier's at the
    operating point)."""

    name: str
    metrics: dict[str, Estimate]
    n: int | None
    n_pos: int | None
    counts: dict[str, int]  # the others: tp, fp, tn, fn; n_empty, n_missed, ... (`TaskView`)
    threshold: float | None
    flags: tuple[str, ...]

    @classmethod
    def read(cls, name: str, node: Node) -> StratumResult:
        return cls(
            name=name,
            metrics={m: Estimate.read(node[m]) for m in METRICS if node.has(m)},
            n=node.opt_integer("n"),
            n_pos=node.opt_integer("n_pos"),
            counts={k: v for k, v in _counts(node).items() if k not in ("n", "n_pos")},
            threshold=node.opt_number("threshold"),
            flags=tuple(f.text() for f in node["flags"]) if node.has("flags") else (),
        )


@dataclass(frozen=True)
class EpsilonStep:
    """A site's privacy spent after one release (round 0: its local-only model)."""

    round: int
    stage: str
    steps: int | None
    epsilon: float | None


@dataclass(frozen=True)
class Incident:
    """A privacy refusal or a site failure: which site, stage and round, and why."""

    site: str
    stage: str
    round: int | None
    reason: str

    @classmethod
    def read(cls, node: Node, site: str | None = None) -> Incident:
        return cls(
            site=site if site is not None else node["site"].text(),
            stage=node.opt_text("stage") or "",
            round=node.opt_integer("round"),
            reason=node.opt_text("reason") or "",
        )


@dataclass(frozen=True)
class Site:
    """A site of the federation: its cases, scanners and privacy record."""

    id: str
    n_train: int | None
    n_test: int | None
    n_train_positive: int | None
    n_test_positive: int | None
    scanners: dict[str, int]  # "<Manufacturer> <Model>" -> cases (train and test)
    epsilon: float | None
    delta: float | None
    noise_multiplier: float | None
    steps: int | None
    history: tuple[EpsilonStep, ...]
    refusals: tuple[Incident, ...]
    check_agrees: bool | None  # the independent recomputation of epsilon agrees
    modalities: dict[str, int] = field(default_factory=dict)
    body_parts: dict[str, int] = field(default_factory=dict)
    intake: dict[str, int] = field(default_factory=dict)  # received, stored, quarantined...

    @classmethod
    def read(cls, node: Node) -> Site:
        site_id = node["id"].text()
        privacy = node.get("privacy") or Node({}, f"{node.path}.privacy")
        check = privacy.get("independent_check")
        return cls(
            id=site_id,
            n_train=node.opt_integer("n_train"),
            n_test=node.opt_integer("n_test"),
            n_train_positive=node.opt_integer("n_train_positive"),
            n_test_positive=node.opt_integer("n_test_positive"),
            scanners={
                name: n.integer() or 0
                for name, n in (node["scanners"].items() if node.has("scanners") else ())
            },
            epsilon=privacy.opt_number("epsilon"),
            delta=privacy.opt_number("delta"),
            noise_multiplier=privacy.opt_number("noise_multiplier"),
            steps=privacy.opt_integer("steps"),
            history=tuple(
                EpsilonStep(
                    round=step["round"].integer() or 0,
                    stage=step.opt_text("stage") or "",
                    steps=step.opt_integer("steps"),
                    epsilon=step.opt_number("epsilon"),
                )
                for step in (privacy["history"] if privacy.has("history") else ())
            ),
            refusals=tuple(
                Incident.read(r, site_id)
                for r in (privacy["refusals"] if privacy.has("refusals") else ())
            ),
            check_agrees=bool(check["agrees"].value) if check and check.has("agrees") else None,
            modalities=_counts(node.get("modalities")),
            body_parts=_counts(node.get("body_parts")),
            intake=_counts(node.get("intake")),
        )

    @property
    def cases(self) -> int | None:
        """Training and test cases together."""
        if self.n_train is None or self.n_test is None:
            return None
        return self.n_train + self.n_test


#: What a site did in a round, in the order the participation chart shows them.
PARTICIPATION = (
    "trained and evaluated", "trained", "evaluated", "update rejected", "cut off", "dropped out",
    "refused", "failed", "absent",
)  # fmt: skip
#: The outcomes of a round's training, in the evidence's ``participation`` (older runs lack it),
#: that the site records alone cannot tell from a failure: the state each one is shown as.
_TRAINING_OUTCOMES = {
    "rejected": "update rejected",
    "cut_off": "cut off",
    "dropped_out": "dropped out",
}


@dataclass(frozen=True)
class SiteRound:
    """One site's records of one round (None: not recorded)."""

    train_loss: float | None = None
    test_loss: float | None = None
    auc: float | None = None
    dice: float | None = None
    epsilon: float | None = None
    train_seconds: float | None = None
    evaluate_seconds: float | None = None
    refused: str | None = None
    errors: dict[str, str] = field(default_factory=dict)  # phase -> error
    #: How the coordinator saw its training reply, where the records alone cannot tell it
    #: from a failure: "update rejected" (malformed, never aggregated), "cut off" (too late)
    #: or "dropped out" (unavailable); and the coordinator's reason for a rejection.
    outcome: str | None = None
    outcome_reason: str | None = None

    @classmethod
    def read(cls, node: Node) -> SiteRound:
        return cls(
            train_loss=node.opt_number("train_loss"),
            test_loss=node.opt_number("test_loss"),
            auc=node.opt_number("auc"),
            dice=node.opt_number("dice"),
            epsilon=node.opt_number("epsilon"),
            train_seconds=node.opt_number("train_seconds"),
            evaluate_seconds=node.opt_number("evaluate_seconds"),
            refused=node.opt_text("refused"),
            errors={
                key.removesuffix("_error"): str(value.value)
                for key, value in node.items()
                if key.endswith("_error")
            },
        )

    @property
    def participation(self) -> str:
        """One of `PARTICIPATION` but "absent" (a site without a record is absent)."""
        if self.outcome:
            return self.outcome
        if self.errors:
            return "failed"
        if self.refused:
            return "refused"
        trained = self.train_loss is not None
        evaluated = any(v is not None for v in (self.test_loss, self.auc, self.dice))
        if trained and evaluated:
            return "trained and evaluated"
        return "trained" if trained else "evaluated" if evaluated else "absent"

    @property
    def detail(self) -> str:
        """The refusal, rejection or errors, one line ("" when none)."""
        if self.outcome_reason:
            return self.outcome_reason
        if self.refused:
            return f"refused: {self.refused}"
        return "; ".join(f"{phase}: {error}" for phase, error in self.errors.items())


@dataclass(frozen=True)
class Round:
    """One federated round: the global model's pooled test AUC (segmentation: mean Dice) and
    loss, each site's records."""

    number: int
    seconds: float | None
    pooled_auc: float | None
    pooled_dice: float | None
    test_loss: float | None
    central_epsilon: float | None
    sites: dict[str, SiteRound]

    @classmethod
    def read(cls, node: Node) -> Round:
        return cls(
            number=node["round"].integer() or 0,
            seconds=node.opt_number("seconds"),
            pooled_auc=node.opt_number("pooled_auc"),
            pooled_dice=node.opt_number("pooled_dice"),
            test_loss=node.opt_number("test_loss"),
            central_epsilon=node.opt_number("central_dp_epsilon"),
            sites=_with_outcomes(
                {name: SiteRound.read(s) for name, s in node["sites"].items()},
                node.get("participation"),
            ),
        )


def _with_outcomes(sites: dict[str, SiteRound], participation: Node | None) -> dict[str, SiteRound]:
    """``sites`` with the training outcomes of the round's ``participation`` (absent from
    older evidence) that their records cannot tell from a failure."""
    if participation is None:
        return sites
    sites = dict(sites)
    for key, state in _TRAINING_OUTCOMES.items():
        for entry in participation.get(key) or ():
            reason = None
            if isinstance(entry.value, dict):  # rejected: {site, reason}
                site, reason = entry["site"].text(), entry.opt_text("reason")
            else:
                site = entry.text()
            known = sites.get(site, SiteRound())
            sites[site] = replace(known, outcome=state, outcome_reason=reason)
    return sites


@dataclass(frozen=True)
class CrossSite:
    """The task's headline metric (AUC, mean Dice) of every model (rows) on every site's test
    data (columns), with intervals."""

    models: tuple[str, ...]
    sites: tuple[str, ...]
    values: tuple[tuple[float | None, ...], ...]
    ci: tuple[tuple[tuple[float | None, float | None] | None, ...], ...] | None

    @classmethod
    def read(cls, node: Node, metric: str) -> CrossSite:
        """``node`` holds the matrix of ``metric`` (``auc``, ``dice_mean``) and its bounds."""
        models = tuple(m.text() for m in node["models"])
        sites = tuple(s.text() for s in node["sites"])
        values = tuple(tuple(v.number() for v in row) for row in node[metric])
        if len(values) != len(models) or any(len(row) != len(sites) for row in values):
            raise EvidenceGap(
                f"`{node.path}.{metric}` is not a {len(models)} x {len(sites)} matrix "
                "(models x sites)"
            )
        ci = None
        if node.has("ci_low") and node.has("ci_high"):  # schema 4: matrices of the bounds
            lows = [[v.number() for v in row] for row in node["ci_low"]]
            highs = [[v.number() for v in row] for row in node["ci_high"]]
            shape = [len(r) for r in values]
            if [len(r) for r in lows] != shape or [len(r) for r in highs] != shape:
                raise EvidenceGap(
                    f"`{node.path}.ci_low` and `ci_high` do not match `{metric}`'s shape"
                )
            ci = tuple(
                tuple((lo, hi) for lo, hi in zip(lrow, hrow, strict=True))
                for lrow, hrow in zip(lows, highs, strict=True)
            )
        elif node.has("auc_ci"):  # schema 1: [low, high] or null per cell
            ci = tuple(
                tuple(
                    None if cell.value is None else (cell[0].number(), cell[1].number())
                    for cell in row
                )
                for row in node["auc_ci"]
            )
        return cls(models, sites, values, ci)


@dataclass(frozen=True)
class ForestRow:
    """One stratum of a forest plot."""

    name: str
    n: int | None
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    weight: float | None


@dataclass(frozen=True)
class MetaAnalysis:
    """One metric across strata (sites or manufacturers): forest rows, fixed and random
    effects, Cochran's Q and I2, and the strata left out with their reasons."""

    metric: str
    k: int | None
    fixed: Estimate
    random: Estimate
    q: float | None
    df: int | None
    q_p_value: float | None
    i2: float | None
    tau2: float | None
    forest: tuple[ForestRow, ...]
    excluded: dict[str, str]

    @classmethod
    def read(cls, metric: str, node: Node) -> MetaAnalysis:
        return cls(
            metric=metric,
            k=node.opt_integer("k"),
            fixed=Estimate.read(node["fixed"]),
            random=Estimate.read(node["random"]),
            q=node.opt_number("q"),
            df=node.opt_integer("df"),
            q_p_value=node.opt_number("q_p_value"),
            i2=node.opt_number("i2"),
            tau2=node.opt_number("tau2"),
            forest=tuple(
                ForestRow(
                    name=row["name"].text(),
                    n=row.opt_integer("n"),
                    estimate=row.opt_number("estimate"),
                    ci_low=row.opt_number("ci_low"),
                    ci_high=row.opt_number("ci_high"),
                    weight=row.opt_number("weight"),
                )
                for row in node["forest"]
            ),
            excluded={
                name: str(reason.value)
                for name, reason in (node["excluded"].items() if node.has("excluded") else ())
            },
        )


@dataclass(frozen=True)
class AucDifference:
    """A DeLong test of the AUC difference between manufacturers a and b."""

    a: str
    b: str
    difference: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    method: str


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability curve: mean predicted probability, observed frequency."""

    p_low: float | None
    p_high: float | None
    n: int | None
    predicted: float | None
    observed: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class Calibration:
    """The calibration of one stratum (``not_assessed`` says why when it was not)."""

    name: str
    n: int | None
    n_pos: int | None
    bins: tuple[ReliabilityBin, ...]
    ece: float | None
    brier: float | None
    slope: Estimate | None
    intercept: Estimate | None
    in_the_large: Estimate | None
    not_assessed: str | None

    @classmethod
    def read(cls, name: str, node: Node) -> Calibration:
        if node.has("not_assessed"):
            return cls(
                name,
                node.opt_integer("n"),
                None,
                (),
                None,
                None,
                None,
                None,
                None,
                node["not_assessed"].text(),
            )

        def estimate(key: str) -> Estimate | None:
            return Estimate.read(node[key]) if node.has(key) else None

        return cls(
            name=name,
            n=node.opt_integer("n"),
            n_pos=node.opt_integer("n_pos"),
            bins=tuple(
                ReliabilityBin(
                    p_low=b.opt_number("p_low"),
                    p_high=b.opt_number("p_high"),
                    n=b.opt_integer("n"),
                    predicted=b.opt_number("predicted"),
                    observed=b.opt_number("observed"),
                    ci_low=b.opt_number("ci_low"),
                    ci_high=b.opt_number("ci_high"),
                )
                for b in node["reliability"]
            ),
            ece=node.opt_number("ece"),
            brier=node.opt_number("brier"),
            slope=estimate("slope"),
            intercept=estimate("intercept"),
            in_the_large=estimate("calibration_in_the_large"),
            not_assessed=None,
        )


@dataclass(frozen=True)
class RocCurve:
    """An ROC curve's points, as the evidence gives them."""

    name: str
    fpr: tuple[float, ...]
    tpr: tuple[float, ...]
    auc: float | None

    @classmethod
    def read(cls, name: str, node: Node) -> RocCurve:
        """``{fpr: [...], tpr: [...], auc, ...}`` (`validation.metrics.RocCurve` with its AUC)."""
        fpr = tuple(v.number() for v in node["fpr"])
        tpr = tuple(v.number() for v in node["tpr"])
        if len(fpr) != len(tpr) or None in fpr or None in tpr:
            raise EvidenceGap(f"`{node.path}`: fpr and tpr are not lists of numbers of one length")
        return cls(name, fpr, tpr, node.opt_number("auc"))


@dataclass(frozen=True)
class UnseenSites:
    """A site's local-only model and the global model, pooled over the sites it never saw
    (the task's headline metric)."""

    site: str
    unseen_sites: tuple[str, ...]
    local_only: float | None
    global_model: float | None


@dataclass(frozen=True)
class AcceptanceEntry:
    """One criterion judged on one stratum (``passed`` None: not judged, ``reason`` why)."""

    id: str
    criterion: str
    kind: str
    metric: str | None
    statistic: str | None
    scope: str
    value: float | None
    operator: str
    threshold: float | None
    n: int | None
    passed: bool | None
    reason: str | None
    note: str | None

    @classmethod
    def read(cls, node: Node) -> AcceptanceEntry:
        passed = node.get("passed")
        if passed is not None and not isinstance(passed.value, bool):
            raise EvidenceGap(f"`{passed.path}` is not true, false or null")
        return cls(
            id=node["id"].text(),
            criterion=node.opt_text("criterion") or node["id"].text(),
            kind=node.opt_text("kind") or "metric",
            metric=node.opt_text("metric"),
            statistic=node.opt_text("statistic"),
            scope=node.opt_text("scope") or "pooled",
            value=node.opt_number("value"),
            operator=node.opt_text("operator") or ">=",
            threshold=node.opt_number("threshold"),
            n=node.opt_integer("n"),
            passed=None if passed is None else bool(passed.value),
            reason=node.opt_text("reason"),
            note=node.opt_text("note"),
        )

    @property
    def verdict(self) -> str:
        """pass, fail or not judged."""
        return {True: "pass", False: "fail", None: "not judged"}[self.passed]


@dataclass(frozen=True)
class SegmentationMethod:
    """How a segmentation run's metrics were computed: the pixel threshold, the method and
    each metric's definition (``segmentation``)."""

    pixel_threshold: float | None
    method: str
    definitions: dict[str, str]

    @classmethod
    def read(cls, node: Node) -> SegmentationMethod:
        definitions = node.get("definitions")
        return cls(
            pixel_threshold=node.opt_number("pixel_threshold"),
            method=node.opt_text("method") or "",
            definitions={k: v.text() for k, v in definitions.items()} if definitions else {},
        )


@dataclass(frozen=True)
class DriftComparison:
    """One feature (intensity mean or std, score) of one scanner group at a site: the new
    cases against the reference (labelled) ones, by PSI and KS, and whether it alarms."""

    group: str
    feature: str
    n_reference: int | None
    n_new: int | None
    psi: float | None
    ks: float | None
    ks_p: float | None
    alarm: bool

    @classmethod
    def read(cls, node: Node) -> DriftComparison:
        return cls(
            group=node["group"].text(),
            feature=node["feature"].text(),
            n_reference=node.opt_integer("n_reference"),
            n_new=node.opt_integer("n_new"),
            psi=node.opt_number("psi"),
            ks=node.opt_number("ks"),
            ks_p=node.opt_number("ks_p"),
            alarm=node["alarm"].boolean(),
        )


@dataclass(frozen=True)
class SiteDrift:
    """A site's drift check: its comparisons, the scanner groups of new cases it was never
    validated on (cases, None when withheld), the groups too small to compare, or the error
    that kept it from checking."""

    site: str
    alarm: bool
    n_new: int | None
    comparisons: tuple[DriftComparison, ...]
    unvalidated_scanners: dict[str, int | None]
    too_small: tuple[str, ...]
    error: str | None

    @classmethod
    def read(cls, site: str, node: Node) -> SiteDrift:
        alarm = node.get("alarm")
        unvalidated = node.get("unvalidated_scanners")
        return cls(
            site=site,
            alarm=alarm is not None and alarm.boolean(),
            n_new=node.opt_integer("n_new"),
            comparisons=tuple(
                DriftComparison.read(c)
                for c in (node["comparisons"] if node.has("comparisons") else ())
            ),
            unvalidated_scanners={k: v.integer() for k, v in unvalidated.items()}
            if unvalidated
            else {},
            too_small=tuple(g.text() for g in node["too_small"]) if node.has("too_small") else (),
            error=node.opt_text("error"),
        )


@dataclass(frozen=True)
class Drift:
    """The drift check of an evaluation-only job: its method, the sites that alarm, and
    each site's check."""

    method: str
    alarm_sites: tuple[str, ...]
    sites: tuple[SiteDrift, ...]

    @classmethod
    def read(cls, node: Node) -> Drift:
        return cls(
            method=node.opt_text("method") or "",
            alarm_sites=tuple(s.text() for s in node["alarm_sites"]),
            sites=tuple(SiteDrift.read(site, n) for site, n in node["sites"].items()),
        )


@dataclass(frozen=True)
class RunSummary:
    """What the run was: id, time, code, strategy, rounds, data and privacy settings."""

    id: str
    created: str | None
    code_version: str | None
    strategy: str | None
    rounds: int | None
    seed: int | None
    data: str | None
    simulated: bool
    privacy_mode: str | None
    target_epsilon: float | None
    holdout_sites: tuple[str, ...]
    evaluation_only: bool
    timings: dict[str, float]
    model: str | None
    model_sha256: str | None

    @property
    def epsilon_label(self) -> str:
        """The privacy setting in a few words: "epsilon 8", "no DP" or "epsilon ?"."""
        if self.privacy_mode == "none":
            return "no DP"
        if self.target_epsilon is None:
            return "epsilon ?"
        return f"epsilon {self.target_epsilon:g}"


# --- the evidence -------------------------------------------------------------------------


class Evidence:
    """evidence.json, read section by section; each property raises `EvidenceGap` when its
    section is missing or malformed."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.root = Node(document)

    @property
    def schema_version(self) -> str | None:
        value = self.root.value.get("schema_version")
        return None if value is None else str(value)

    def has(self, section: str) -> bool:
        """Whether the evidence has ``section`` (not null)."""
        return self.root.has(section)

    @cached_property
    def task(self) -> TaskView:
        """The run's task: ``run.task``, classification for evidence before schema 2.1."""
        run = self.root.get("run")
        name = (run.opt_text("task") if run else None) or CLASSIFICATION
        if name not in TASKS:
            raise EvidenceGap(f"`run.task` is '{name}', a task this dashboard does not know")
        return TASKS[name]

    @cached_property
    def summary(self) -> RunSummary:
        run = self.root["run"]
        data = run.get("data")
        privacy = self.root.get("privacy")
        settings = privacy.get("settings") if privacy else None
        model = self.root.get("model")
        return RunSummary(
            id=run["id"].text(),
            created=run.opt_text("created"),
            code_version=run.opt_text("code_version"),
            strategy=run.opt_text("strategy"),
            rounds=run.opt_integer("rounds"),
            seed=run.opt_integer("seed"),
            data=data.opt_text("description") if data else None,
            simulated=bool(data and data.value.get("simulated")),
            privacy_mode=privacy.opt_text("mode") if privacy else None,
            target_epsilon=settings.opt_number("target_epsilon") if settings else None,
            holdout_sites=tuple(s.text() for s in run["holdout_sites"])
            if run.has("holdout_sites")
            else (),
            evaluation_only=bool(run.value.get("evaluation_only")),
            timings={k: v.number() or 0.0 for k, v in run["timings_s"].items()}
            if run.has("timings_s")
            else {},
            model=model.opt_text("architecture") if model else None,
            model_sha256=model.opt_text("sha256") if model else None,
        )

    @cached_property
    def sites(self) -> tuple[Site, ...]:
        sites = tuple(Site.read(s) for s in self.root["sites"])
        if not sites:
            raise EvidenceGap("`sites` is empty: the run has no sites")
        return sites

    @cached_property
    def rounds(self) -> tuple[Round, ...]:
        return tuple(Round.read(r) for r in self.root["rounds"])

    @cached_property
    def central_epsilon_history(self) -> tuple[tuple[int, float | None], ...]:
        """The coordinator's epsilon per round under central DP (empty otherwise)."""
        privacy = self.root.get("privacy")
        history = privacy.get("history") if privacy else None
        if history is None:
            return ()
        return tuple((h["round"].integer() or 0, h.opt_number("epsilon")) for h in history)

    @cached_property
    def privacy_refusals(self) -> tuple[Incident, ...]:
        return tuple(Incident.read(r) for r in self.root["privacy_refusals"])

    @cached_property
    def site_failures(self) -> tuple[Incident, ...]:
        return tuple(Incident.read(r) for r in self.root["site_failures"])

    @cached_property
    def suppressed(self) -> tuple[tuple[str, str], ...]:
        """(site, stratum) of every stratum withheld below a site's minimum cell size."""
        if not self.root.has("suppressed"):
            return ()
        return tuple((s["site"].text(), s["stratum"].text()) for s in self.root["suppressed"])

    @cached_property
    def pooled(self) -> StratumResult:
        return StratumResult.read("pooled", self.root["performance"]["pooled"])

    def strata(self, table: str) -> dict[str, StratumResult]:
        """``performance[table]`` (``by_site``, ``by_scanner``, ``by_scanner_model``)."""
        return {
            name: StratumResult.read(name, node)
            for name, node in self.root["performance"][table].items()
        }

    def subgroups(self) -> dict[str, dict[str, StratumResult]]:
        """``performance.by_subgroup``: column -> value -> result (empty when absent)."""
        performance = self.root["performance"]
        if not performance.has("by_subgroup"):
            return {}
        return {
            column: {value: StratumResult.read(value, n) for value, n in values.items()}
            for column, values in performance["by_subgroup"].items()
        }

    def stratum(
        self, kind: str | None, name: str | None, column: str | None = None
    ) -> StratumResult:
        """The result an acceptance scope names: pooled (kind None) or one stratum."""
        if kind is None:
            return self.pooled
        if kind == "subgroup":
            table = self.subgroups().get(column or "", {})
        else:
            table = self.strata(STRATUM_TABLES[kind])
        if name not in table:
            raise EvidenceGap(f"`performance` has no results for {kind} {name}")
        return table[name]

    @cached_property
    def cross_site(self) -> CrossSite:
        return CrossSite.read(self.root["cross_site"], self.task.headline.key)

    def heterogeneity(self, across: Literal["sites", "manufacturers"]) -> dict[str, MetaAnalysis]:
        """``heterogeneity.across_<across>``: metric -> meta-analysis."""
        section = self.root["heterogeneity"][f"across_{across}"]
        return {metric: MetaAnalysis.read(metric, node) for metric, node in section.items()}

    @cached_property
    def auc_differences(self) -> tuple[AucDifference, ...]:
        heterogeneity = self.root["heterogeneity"]
        if not heterogeneity.has("manufacturer_auc_differences"):
            return ()
        return tuple(
            AucDifference(
                a=d["a"].text(),
                b=d["b"].text(),
                difference=d.opt_number("difference"),
                ci_low=d.opt_number("ci_low"),
                ci_high=d.opt_number("ci_high"),
                p_value=d.opt_number("p_value"),
                method=d.opt_text("method") or "",
            )
            for d in heterogeneity["manufacturer_auc_differences"]
        )

    @cached_property
    def calibration(self) -> tuple[Calibration, ...]:
        """Pooled first, then each site."""
        section = self.root["calibration"]
        curves = [Calibration.read("pooled", section["pooled"])]
        if section.has("by_site"):
            curves += [Calibration.read(name, n) for name, n in section["by_site"].items()]
        return tuple(curves)

    @cached_property
    def roc(self) -> tuple[RocCurve, ...]:
        """Pooled first, then each site (``roc``: ``{pooled, by_site}``)."""
        section = self.root["roc"]
        named = [("pooled", section["pooled"])] if section.has("pooled") else []
        if section.has("by_site"):
            named += list(section["by_site"].items())
        # a stratum without both classes has no curve: {not_assessed: reason, n}
        curves = [RocCurve.read(name, n) for name, n in named if not n.has("not_assessed")]
        if not curves:
            raise EvidenceGap("`roc` has neither `pooled` nor `by_site` curves")
        return tuple(curves)

    @cached_property
    def baselines(self) -> dict[str, Estimate | None]:
        """Pooled test AUC (segmentation: mean Dice) of every baseline model:
        ``pooled-centralized`` and ``local-<site>`` (None where undefined)."""
        section = self.root["baselines"]
        key = self.task.headline.key
        named = []
        if section.has("pooled_centralized"):
            named.append(("pooled-centralized", section["pooled_centralized"]))
        if section.has("local_only"):
            named += [(f"local-{site}", node) for site, node in section["local_only"].items()]
        return {
            name: None if node.get(key) is None else Estimate.read(node[key])
            for name, node in named
        }

    @cached_property
    def unseen_site_comparison(self) -> tuple[UnseenSites, ...]:
        """Each local-only model against the global model on the sites it never saw."""
        section = self.root["baselines"]["unseen_site_comparison"]
        key = self.task.headline.key
        return tuple(
            UnseenSites(
                site=site,
                unseen_sites=tuple(s.text() for s in node["unseen_sites"])
                if node.has("unseen_sites")
                else (),
                local_only=node.opt_number(f"local_only_{key}"),
                global_model=node.opt_number(f"global_{key}"),
            )
            for site, node in section.items()
        )

    @cached_property
    def segmentation(self) -> SegmentationMethod:
        return SegmentationMethod.read(self.root["segmentation"])

    @cached_property
    def drift(self) -> Drift:
        return Drift.read(self.root["drift"])

    @cached_property
    def acceptance(self) -> tuple[AcceptanceEntry, ...]:
        return tuple(AcceptanceEntry.read(e) for e in self.root["acceptance"])

    @cached_property
    def acceptance_plan(self) -> dict[str, str]:
        """name, version, sha256 and source of the plan (empty when not recorded)."""
        plan = self.root.get("acceptance_plan")
        if plan is None:
            return {}
        return {k: str(v.value) for k, v in plan.items() if v.value is not None}


# --- the per-round log --------------------------------------------------------------------


@dataclass(frozen=True)
class LogEntry:
    """One line of rounds.jsonl: a site's reply in one phase of a round, or a summary."""

    round: int
    phase: str
    site: str | None
    metrics: dict[str, float]
    outcome: str | None  # an error or a refusal


def read_round_log(path: Path) -> tuple[LogEntry, ...]:
    """``rounds.jsonl``; `EvidenceGap` naming the first line that is not a record."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            metrics = record.get("metrics", {})
            entries.append(
                LogEntry(
                    round=int(record["round"]),
                    phase=str(record["phase"]),
                    site=record.get("site"),
                    metrics={
                        k: float(v)
                        for k, v in metrics.items()
                        if isinstance(v, int | float) and not isinstance(v, bool)
                    },
                    outcome=record.get("error") or record.get("refused"),
                )
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise EvidenceGap(f"{path.name} line {number} is not a round record ({exc})") from None
    return tuple(entries)


# --- run directories ----------------------------------------------------------------------


@dataclass(frozen=True)
class RunDir:
    """A run directory as loaded: its evidence (None when unreadable), its round log (None
    when missing or unreadable) and what was wrong, as notices for the page."""

    path: Path
    label: str
    evidence: Evidence | None
    round_log: tuple[LogEntry, ...] | None
    notices: tuple[Notice, ...]

    def file(self, name: str) -> Path | None:
        """``name`` in the run directory, None when it is not there."""
        path = self.path / name
        return path if path.is_file() else None


def file_signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, mtime_ns, size) of the files the dashboard reads: changes when the run does."""
    signature = []
    for name in (EVIDENCE_FILE, ROUND_LOG_FILE):
        try:
            stat = (path / name).stat()
        except OSError:
            continue
        signature.append((name, stat.st_mtime_ns, stat.st_size))
    return tuple(signature)


def load_run(path: Path) -> RunDir:
    """Read the run directory ``path``; never raises for what is in it (see `RunDir`)."""
    notices: list[Notice] = []
    evidence = None
    round_log = None
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        notices.append(Notice("error", f"{path} {what}."))
        return RunDir(path, path.name, None, None, tuple(notices))
    evidence_path = path / EVIDENCE_FILE
    try:
        text = evidence_path.read_text(encoding="utf-8")
        if not text.strip():
            raise EvidenceGap(f"{evidence_path} is empty.")
        document = json.loads(text)
        if not isinstance(document, dict):
            raise EvidenceGap(f"{evidence_path} is not a JSON object.")
        evidence = Evidence(document)
    except FileNotFoundError:
        notices.append(
            Notice(
                "error",
                f"{path} has no {EVIDENCE_FILE}: the run did not finish, or this is not a run "
                "directory (medfed demo and medfed simulate write RUN/evidence.json at their end).",
            )
        )
    except (OSError, UnicodeDecodeError) as exc:
        notices.append(Notice("error", f"{evidence_path} cannot be read ({exc})."))
    except json.JSONDecodeError as exc:
        notices.append(
            Notice("error", f"{evidence_path} is not valid JSON (line {exc.lineno}: {exc.msg}).")
        )
    except EvidenceGap as gap:
        notices.append(Notice("error", str(gap)))
    if evidence is not None:
        notices += _schema_notices(evidence)
    try:
        round_log = read_round_log(path / ROUND_LOG_FILE)
    except FileNotFoundError:
        notices.append(
            Notice("warning", f"{path} has no {ROUND_LOG_FILE}: the per-round log is not shown.")
        )
    except (OSError, UnicodeDecodeError) as exc:
        notices.append(Notice("warning", f"{path / ROUND_LOG_FILE} cannot be read ({exc})."))
    except EvidenceGap as gap:
        notices.append(Notice("warning", f"{path}/{gap}: the per-round log is not shown."))
    return RunDir(path, path.name, evidence, round_log, tuple(notices))


def _schema_notices(evidence: Evidence) -> list[Notice]:
    version = evidence.schema_version
    if version is None:
        return [Notice("warning", "evidence.json has no schema_version; reading it as it is.")]
    if version.split(".")[0] not in KNOWN_SCHEMA_MAJORS:
        return [
            Notice(
                "warning",
                f"evidence.json has schema version {version}, newer than this dashboard knows: "
                "sections it cannot read say so.",
            )
        ]
    return []


def load_runs(paths: Sequence[Path], loader: Any = load_run) -> list[RunDir]:
    """Each of ``paths`` loaded (through ``loader``, e.g. a cached `load_run`), labelled by the
    shortest path tail that tells the runs apart, with strategy and epsilon when known."""
    runs = [loader(path) for path in paths]
    tails = _unique_tails([run.path for run in runs])
    labelled = []
    for run, tail in zip(runs, tails, strict=True):
        label = tail
        if run.evidence is not None:
            try:
                summary = run.evidence.summary
                label = f"{tail} ({summary.strategy or '?'}, {summary.epsilon_label})"
            except EvidenceGap:
                pass
        labelled.append(replace(run, label=label))
    return labelled


def _unique_tails(paths: Sequence[Path]) -> list[str]:
    """For each path, its last components, as few as tell it from the others."""
    parts = [path.resolve().parts for path in paths]
    tails = []
    for i, own in enumerate(parts):
        for depth in range(1, len(own) + 1):
            tail = own[-depth:]
            if all(other[-depth:] != tail for j, other in enumerate(parts) if j != i):
                break
        tails.append("/".join(tail) or str(paths[i]))
    # the same directory given twice keeps one name: number the repeats
    seen: dict[str, int] = {}
    for i, tail in enumerate(tails):
        seen[tail] = seen.get(tail, 0) + 1
        if seen[tail] > 1:
            tails[i] = f"{tail} #{seen[tail]}"
    return tails
