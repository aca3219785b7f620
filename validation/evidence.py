"""The evidence bundle: ``RUN/evidence.json`` from what a run recorded.

Inputs (written by the coordinator, see ``server.server_app``): ``run.json`` (run, model,
sites, checkpoints, which model is which, the task), ``site-aggregates/<site>.json`` (each
site's score histograms, or for segmentation its Dice and HD95 aggregates
(`validation.segmentation`), per model, split and stratum) and ``rounds.jsonl`` (per-round
records).
Everything here is computed from those aggregates; no case-level data exists here.

The operating threshold is fixed before testing: it maximises Youden's J on the global
model's histograms of all sites' *training* splits, and is then applied to the test splits.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

from task.architectures import CLASSIFICATION, SEGMENTATION
from task.wire import (
    GLOBAL_MODEL,
    LOCAL_MODEL_PREFIX,
    POOLED_CENTRALIZED,
    STRATUM_MANUFACTURER,
    STRATUM_SCANNER,
    STRATUM_SITE,
    STRATUM_SUBGROUP,
    parse_histogram_key,
    parse_segmentation_key,
)
from validation.acceptance import AcceptancePlan, default_plan, evaluate_plan, read_plan_record
from validation.calibration import assess_calibration
from validation.drift import KS_ALARM_P, PSI_ALARM
from validation.heterogeneity import (
    META_METRICS,
    delong_difference_test,
    heterogeneity_across_strata,
)
from validation.metrics import (
    AUC_METHOD,
    ScoreHistogram,
    auc_estimate,
    binary_performance,
    roc_auc,
    roc_curve,
    threshold_edge,
    threshold_probability,
    youden_threshold,
)
from validation.participation import ROUND_PHASES, participation_by_site, round_participation
from validation.privacy import run_privacy, site_privacy
from validation.segmentation import (
    DEFINITIONS,
    MEAN_METHOD,
    PIXEL_THRESHOLD,
    SegmentationAggregate,
    mean_ci,
    segmentation_performance,
)

SCHEMA_VERSION = "2.1"
EVIDENCE_FILE = "evidence.json"


class EvidenceError(ValueError):
    """The run directory lacks what the evidence needs."""


@dataclass(frozen=True)
class RunRecords:
    """A run directory's records, as the coordinator wrote them."""

    run: dict[str, Any]
    aggregates: dict[str, dict[str, Any]]
    rounds: list[dict[str, Any]]
    drift: dict[str, dict[str, Any]] | None = None


def load_run(run_dir: Path) -> RunRecords:
    """Read ``run.json``, ``site-aggregates/*.json`` and ``rounds.jsonl`` of ``run_dir``."""
    try:
        run = json.loads((run_dir / "run.json").read_text())
        aggregates = {
            path.stem: json.loads(path.read_text())
            for path in sorted((run_dir / "site-aggregates").glob("*.json"))
        }
        rounds_path = run_dir / "rounds.jsonl"
        rounds = [json.loads(line) for line in rounds_path.read_text().splitlines() if line]
        drift_path = run_dir / "drift.json"
        drift = json.loads(drift_path.read_text()) if drift_path.exists() else None
    except FileNotFoundError as exc:
        raise EvidenceError(
            f"{run_dir}: incomplete run directory ({exc.filename} missing)"
        ) from exc
    except json.JSONDecodeError as exc:
        raise EvidenceError(f"{run_dir}: a record is not valid JSON ({exc})") from exc
    return RunRecords(run, aggregates, rounds, drift)


def write_evidence(run_dir: Path) -> Path:
    """Build the evidence of the run in ``run_dir`` and write ``evidence.json``, judged by
    the acceptance plan the run recorded (`validation.acceptance.write_plan_record`), else
    the default plan; checked against the schema first (`validate_evidence`), so that an
    invalid document is never written."""
    records = load_run(run_dir)
    task = records.run["run"].get("task", CLASSIFICATION)
    evidence = build_evidence(records, read_plan_record(run_dir, task))
    text = json.dumps(evidence, indent=2)
    validate_evidence(json.loads(text))  # the document as written, not the Python objects
    path = run_dir / EVIDENCE_FILE
    path.write_text(text)
    return path


# --- schema: validation/evidence.schema.json, checked before every write ---------------------

#: The JSON Schema (draft 2020-12) of evidence.json, a resource of this package.
EVIDENCE_SCHEMA = "evidence.schema.json"
_SCHEMA_MESSAGE_LIMIT = 200


def evidence_schema() -> dict[str, Any]:
    """The JSON Schema every evidence.json satisfies (`EVIDENCE_SCHEMA`)."""
    from importlib.resources import files

    return json.loads(files("validation").joinpath(EVIDENCE_SCHEMA).read_text(encoding="utf-8"))


def validate_evidence(document: Any) -> None:
    """`EvidenceError` unless ``document`` (parsed evidence.json) satisfies `evidence_schema`:
    one line naming the JSON path and the problem. Needs only ``jsonschema``, not a run."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    error = best_match(Draft202012Validator(evidence_schema()).iter_errors(document))
    if error is None:
        return
    message = " ".join(error.message.split())
    if len(message) > _SCHEMA_MESSAGE_LIMIT:
        message = message[: _SCHEMA_MESSAGE_LIMIT - 3] + "..."
    raise EvidenceError(f"evidence.json does not match its schema at {error.json_path}: {message}")


def build_evidence(records: RunRecords, plan: AcceptancePlan | None = None) -> dict[str, Any]:
    """The evidence.json contract of DESIGN.md, from a run's records; ``acceptance`` judged
    by ``plan`` (default: `validation.acceptance.default_plan` of the run's task). A
    segmentation run (``run.task``) has Dice and HD95 where a classification run has AUC
    and the rest, and no operating point, heterogeneity, calibration or ROC."""
    run = records.run
    task = run["run"].get("task", CLASSIFICATION)
    site_ids = [s["id"] for s in run["sites"]]
    checkpoints = {c["name"]: c for c in run["checkpoints"]}
    final = checkpoints[run["model"]["final_checkpoint"]]
    holdout = set(run["run"].get("holdout_sites", []))
    models = list(run["models"])
    privacy = run["run"]["privacy"]
    sites = [
        _site_entry(s)
        | {"privacy": site_privacy(s["id"], privacy["mode"], privacy["accountant"], records.rounds)}
        for s in run["sites"]
    ]
    evidence: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run": {
            **{k: run["run"][k] for k in ("id", "created", "code_version", "rounds", "seed")},
            "task": task,
            "strategy": run["run"]["strategy"]["name"],
            "strategy_parameters": run["run"]["strategy"],
            "training": run["run"]["training"],
            "data": run["run"]["data"],
            "holdout_sites": sorted(holdout),
            "evaluation_only": run["run"].get("evaluation_only", False),
            "resumptions": run["run"].get("resumptions", []),
            "timings_s": run.get("timings_s", {}),
        },
        "model": {
            "architecture": run["model"]["architecture"],
            "config": run["model"]["config"],
            "parameters": run["model"]["parameters"],
            "sha256": final["sha256"],
            "checkpoint": final["file"],
        },
        "checkpoints": run["checkpoints"],
        "privacy": run_privacy(privacy, records.rounds),
        "sites": sites,
        "privacy_refusals": [
            {"site": s["id"], **refusal} for s in sites for refusal in s["privacy"]["refusals"]
        ],
    }
    if task == SEGMENTATION:
        evidence |= _segmentation_sections(records.aggregates, models, site_ids, sorted(holdout))
    else:
        evidence |= _classification_sections(records, models, site_ids, holdout)
    evidence |= {
        "suppressed": [
            {"site": site, "stratum": stratum}
            for site, aggregate in sorted(records.aggregates.items())
            for stratum in aggregate.get("suppressed", [])
        ],
        "site_failures": _site_failures(records),
        "rounds": _rounds(records.rounds),
        "participation": participation_by_site(records.rounds),
    }
    if records.drift is not None:
        evidence["drift"] = _drift(records.drift)
    # --- acceptance (validation.acceptance) ---
    plan = plan or default_plan(task)
    evidence["acceptance_plan"] = plan.provenance()
    evidence["acceptance"] = evaluate_plan(plan, evidence)
    return evidence


def _classification_sections(
    records: RunRecords, models: list[str], site_ids: list[str], holdout: set[str]
) -> dict[str, Any]:
    """The operating point and the global model's performance with intervals, external
    validation, heterogeneity, calibration, ROC curves, the cross-site AUC matrix and the
    baselines, from the sites' score histograms."""
    histograms = _histograms_by_model(records.aggregates)
    global_hists = histograms.get(GLOBAL_MODEL, {})
    train_pooled = sum(
        (
            h
            for (split, stratum, site), h in global_hists.items()
            if split == "train" and stratum == STRATUM_SITE and site not in holdout
        ),
        ScoreHistogram.empty(),
    )
    given = records.run["run"].get("operating_threshold")
    if given is not None:
        threshold = threshold_edge(given)
        threshold_method = (
            f"given before the job ({given:g}), taken at the nearest score bin edge; the test "
            "splits played no part"
        )
    elif train_pooled.n_pos and train_pooled.n_neg:
        threshold = youden_threshold(train_pooled)
        threshold_method = (
            "Youden's J on the global model's score histograms of the training splits of all "
            "sites that trained (held-out sites excluded), fixed before the test splits were "
            "scored"
        )
    else:
        raise EvidenceError("no training-split histograms of both classes: cannot fix a threshold")
    measure = _Measure(
        ScoreHistogram.empty(),
        lambda h: binary_performance(h, threshold),
        "auc",
        _auc,
        AUC_METHOD,
    )
    return {
        "operating_point": {
            "threshold": threshold_probability(threshold),
            "method": threshold_method,
            "n_train_cases": train_pooled.n,
        },
        "performance": _performance(global_hists, measure),
        "external_validation": _external_validation(global_hists, measure, sorted(holdout)),
        "heterogeneity": _heterogeneity(global_hists, threshold),
        "calibration": _calibration(global_hists),
        "roc": _roc(global_hists),
        "cross_site": _cross_site(histograms, models, site_ids, measure),
        "baselines": _baselines(histograms, models, site_ids, measure),
    }


SEGMENTATION_METHOD = (
    "per test case at the site, on the model's grid: prediction = pixels of probability >= "
    f"{PIXEL_THRESHOLD:g}; Dice over the cases with a lesion; HD95 (mm, as MONAI's "
    "HausdorffDistanceMetric with percentile 95) over the cases with a lesion and a non-empty "
    "prediction; false-positive rate over the cases without a lesion. Sites send per stratum "
    "only counts, histograms on fixed bins, sums and sums of squares: means have Student t "
    "intervals, medians distribution-free order-statistic intervals at bin resolution"
)


def _segmentation_sections(
    aggregates: dict[str, dict[str, Any]],
    models: list[str],
    site_ids: list[str],
    holdout: list[str],
) -> dict[str, Any]:
    """The global model's Dice, HD95 and false-positive rate with intervals, pooled and per
    stratum, external validation, the cross-site mean Dice matrix and the baselines, from
    the sites' segmentation aggregates (`validation.segmentation`)."""
    tables = _segmentation_by_model(aggregates)
    global_table = tables.get(GLOBAL_MODEL, {})
    measure = _Measure(
        SegmentationAggregate(),
        segmentation_performance,
        "dice_mean",
        lambda a: mean_ci(a.dice, upper_limit=1.0).to_dict(),
        f"mean per-case Dice; {MEAN_METHOD}",
    )
    return {
        "segmentation": {
            "pixel_threshold": PIXEL_THRESHOLD,
            "method": SEGMENTATION_METHOD,
            "definitions": DEFINITIONS,
        },
        "performance": _performance(global_table, measure),
        "external_validation": _external_validation(global_table, measure, holdout),
        "cross_site": _cross_site(tables, models, site_ids, measure),
        "baselines": _baselines(tables, models, site_ids, measure),
    }


DRIFT_METHOD = (
    "per site and scanner group, new (received, unlabelled) cases against the labelled "
    "ones on image intensity mean and standard deviation and on the model's score: PSI and "
    f"two-sample KS on the reference's decile bins; alarm when KS p < {KS_ALARM_P} and PSI "
    f">= {PSI_ALARM}, or when new data come from a scanner group never validated on"
)


def _drift(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The drift section: each site's report as its parallel lists became rows."""
    sites: dict[str, Any] = {}
    for site, report in sorted(reports.items()):
        if "error" in report:
            sites[site] = {"error": report["error"]}
            continue
        columns = (
            "groups",
            "features",
            "n-reference-of",
            "n-new-of",
            "psi",
            "ks",
            "ks-p",
            "alarms",
        )
        names = ("group", "feature", "n_reference", "n_new", "psi", "ks", "ks_p", "alarm")
        rows = zip(*(report.get(c, []) for c in columns), strict=True)
        sites[site] = {
            "alarm": bool(report.get("alarm")),
            "n_new": report.get("n-new", 0) or None,
            "comparisons": [dict(zip(names, row, strict=True)) for row in rows],
            "unvalidated_scanners": {
                name: (n or None)
                for name, n in zip(
                    report.get("unvalidated-scanners", []),
                    report.get("unvalidated-n", []),
                    strict=True,
                )
            },
            "too_small": list(report.get("too-small", [])),
        }
    return {
        "method": DRIFT_METHOD,
        "alarm_sites": sorted(s for s, r in sites.items() if r.get("alarm")),
        "sites": sites,
    }


Histograms = dict[tuple[str, str, str], ScoreHistogram]  # (split, stratum, site) -> histogram
#: (split, stratum, site) -> a site's aggregate of one stratum: a `ScoreHistogram` or, for
#: segmentation, a `SegmentationAggregate`; both pool with ``+``.
Strata = dict[tuple[str, str, str], Any]


@dataclass(frozen=True)
class _Measure:
    """How one task's aggregates become evidence.

    empty: the aggregate of no cases (the neutral element of ``+``).
    assess: one scope of ``performance`` from its aggregate.
    key: the headline metric of cross-site matrices and baselines (``auc``, ``dice_mean``).
    estimate: that metric with its interval (`Estimate.to_dict`), from an aggregate.
    method: how ``estimate`` computes its interval.
    """

    empty: Any
    assess: Callable[[Any], dict[str, Any]]
    key: str
    estimate: Callable[[Any], dict[str, Any]]
    method: str


def _grouped_by_model(
    aggregates: dict[str, dict[str, Any]], parse: Callable[[str], tuple[str, str, Any]]
) -> dict[str, dict[tuple[str, str, str], dict[Any, Any]]]:
    """model -> (split, stratum, site) -> {last part of the key: value}, from every site's
    aggregates, ``parse`` splitting each key into (split, stratum, label or field)."""
    grouped: dict[str, dict[tuple[str, str, str], dict[Any, Any]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for site, aggregate in aggregates.items():
        for model, values in aggregate.get("models", {}).items():
            for key, value in values.items():
                split, stratum, part = parse(key)
                grouped[model][(split, stratum, site)][part] = value
    return grouped


def _histograms_by_model(aggregates: dict[str, dict[str, Any]]) -> dict[str, Histograms]:
    """model -> (split, stratum, site) -> histogram, from every site's aggregates."""
    return {
        model: {
            key: ScoreHistogram(positives=pair[1], negatives=pair[0])
            for key, pair in by_key.items()
        }
        for model, by_key in _grouped_by_model(aggregates, parse_histogram_key).items()
    }


def _segmentation_by_model(aggregates: dict[str, dict[str, Any]]) -> dict[str, Strata]:
    """model -> (split, stratum, site) -> `SegmentationAggregate`, from every site's
    aggregates."""
    return {
        model: {key: SegmentationAggregate.from_fields(f) for key, f in by_key.items()}
        for model, by_key in _grouped_by_model(aggregates, parse_segmentation_key).items()
    }


def _pooled(
    table: Strata,
    split: str,
    stratum: str,
    sites: Collection[str] | None = None,
    empty: Any = None,
) -> Any:
    """The sum of the ``split``/``stratum`` aggregates of ``sites`` (default: all sites),
    starting from ``empty`` (default: the empty `ScoreHistogram`)."""
    return sum(
        (
            h
            for (s, st, si), h in table.items()
            if s == split and st == stratum and (sites is None or si in sites)
        ),
        ScoreHistogram.empty() if empty is None else empty,
    )


def _performance(table: Strata, measure: _Measure) -> dict[str, Any]:
    """Pooled, per-site, per-manufacturer, per-scanner-model and per-subgroup (column ->
    value -> performance) performance on test data."""
    test = {k: h for k, h in table.items() if k[0] == "test"}
    sites = sorted({site for _, stratum, site in test if stratum == STRATUM_SITE})

    def assess(stratum: str, of_sites: Collection[str] | None = None) -> dict[str, Any]:
        return measure.assess(_pooled(test, "test", stratum, of_sites, measure.empty))

    def strata_of(kind: str) -> dict[str, Any]:
        values = sorted({st.split("=", 1)[1] for _, st, _ in test if st.startswith(kind + "=")})
        return {v: assess(f"{kind}={v}") for v in values}

    subgroup_columns = sorted(
        {
            stratum.split("=", 1)[0].removeprefix(f"{STRATUM_SUBGROUP}:")
            for _, stratum, _ in test
            if stratum.startswith(f"{STRATUM_SUBGROUP}:")
        }
    )
    return {
        "pooled": assess(STRATUM_SITE),
        "by_site": {site: assess(STRATUM_SITE, {site}) for site in sites},
        "by_scanner": strata_of(STRATUM_MANUFACTURER),
        "by_scanner_model": strata_of(STRATUM_SCANNER),
        "by_subgroup": {
            column: strata_of(f"{STRATUM_SUBGROUP}:{column}") for column in subgroup_columns
        },
    }


def _external_validation(table: Strata, measure: _Measure, holdout: list[str]) -> dict[str, Any]:
    """The global model on the test splits of the sites held out of all training
    (leave-one-site-out): each alone, and together."""

    def assess(sites: Collection[str]) -> dict[str, Any]:
        return measure.assess(_pooled(table, "test", STRATUM_SITE, sites, measure.empty))

    return {
        "sites": holdout,
        "method": "sites held out of all training (no round, no local-only model, no "
        "threshold); the global model tested on their test splits",
        "by_site": {site: assess({site}) for site in holdout},
        "pooled": assess(set(holdout)) if holdout else None,
    }


def _test_strata(histograms: Histograms, kind: str) -> dict[str, ScoreHistogram]:
    """The test histograms per site (``kind`` "site") or per value of a stratum kind
    ("manufacturer"), pooled over sites."""
    test = {k: h for k, h in histograms.items() if k[0] == "test"}
    if kind == "site":
        sites = sorted({site for _, stratum, site in test if stratum == STRATUM_SITE})
        return {site: _pooled(test, "test", STRATUM_SITE, {site}) for site in sites}
    values = sorted({st.split("=", 1)[1] for _, st, _ in test if st.startswith(kind + "=")})
    return {v: _pooled(test, "test", f"{kind}={v}") for v in values}


def _heterogeneity(histograms: Histograms, threshold: int) -> dict[str, Any]:
    """Between-site and between-manufacturer heterogeneity of the global model's AUC,
    sensitivity and specificity (inverse-variance meta-analysis: forest rows, Cochran's Q,
    I2, tau2), and unpaired DeLong tests of the AUC difference of every two manufacturers
    (those with at least 2 test cases of each class)."""
    by_site = _test_strata(histograms, "site")
    by_manufacturer = _test_strata(histograms, STRATUM_MANUFACTURER)

    def across(strata: dict[str, ScoreHistogram]) -> dict[str, Any]:
        if not strata:  # every stratum withheld (or none reported): nothing to compare
            return {}
        return {
            metric: heterogeneity_across_strata(strata, metric, edge_index=threshold).to_dict()
            for metric in META_METRICS
        }

    # DeLong needs 2 cases per class; a manufacturer with fewer is left out of the pairs.
    usable = {m: h for m, h in by_manufacturer.items() if min(h.n_pos, h.n_neg) >= 2}
    return {
        "across_sites": across(by_site),
        "across_manufacturers": across(by_manufacturer),
        "manufacturer_auc_differences": [
            {"a": a, "b": b, **delong_difference_test(usable[a], usable[b]).to_dict()}
            for a, b in combinations(sorted(usable), 2)
        ],
    }


def _by_site_and_pooled(
    histograms: Histograms, assess: Callable[[ScoreHistogram], dict[str, Any]]
) -> dict[str, Any]:
    """``assess`` of the global model's test data, pooled and per site; a stratum without
    both classes is listed with the reason instead."""

    def guarded(histogram: ScoreHistogram) -> dict[str, Any]:
        if not (histogram.n_pos and histogram.n_neg):
            return {"not_assessed": "needs cases of both classes", "n": histogram.n}
        return assess(histogram)

    test = {k: h for k, h in histograms.items() if k[0] == "test"}
    return {
        "pooled": guarded(_pooled(test, "test", STRATUM_SITE)),
        "by_site": {site: guarded(h) for site, h in _test_strata(histograms, "site").items()},
    }


def _calibration(histograms: Histograms) -> dict[str, Any]:
    """The global model's calibration on the test data, pooled and per site."""
    return _by_site_and_pooled(histograms, lambda h: assess_calibration(h).to_dict())


def _roc(histograms: Histograms) -> dict[str, Any]:
    """The global model's ROC curves on the test data, pooled and per site, with the AUC."""
    return _by_site_and_pooled(
        histograms, lambda h: {**roc_curve(h).to_dict(), "auc": roc_auc(h), "n": h.n}
    )


def _auc(histogram: ScoreHistogram) -> dict[str, Any]:
    return auc_estimate(histogram).to_dict()


def _estimate(
    tables: dict[str, Strata], model: str, measure: _Measure, sites: Collection[str] | None = None
) -> dict[str, Any]:
    """``measure``'s headline metric of ``model`` on the test data of ``sites`` pooled."""
    pooled = _pooled(tables.get(model, {}), "test", STRATUM_SITE, sites, measure.empty)
    return measure.estimate(pooled)


def _cross_site(
    tables: dict[str, Strata], models: list[str], sites: list[str], measure: _Measure
) -> dict[str, Any]:
    """The headline metric (AUC, or mean Dice) of every model (rows) on every site's test
    split (columns), with the bounds of its interval in matrices of the same shape; None
    where it is not defined (a site lacks a class or a lesion) or a site did not report."""
    cells = [[_estimate(tables, model, measure, {site}) for site in sites] for model in models]
    return {
        "models": models,
        "sites": sites,
        measure.key: [[c["value"] for c in row] for row in cells],
        "ci_low": [[c["ci_low"] for c in row] for row in cells],
        "ci_high": [[c["ci_high"] for c in row] for row in cells],
        "method": measure.method,
    }


def _baselines(
    tables: dict[str, Strata], models: list[str], sites: list[str], measure: _Measure
) -> dict[str, Any]:
    """Other training regimes on the same test data: the headline metric pooled and per
    site."""

    def summary(model: str) -> dict[str, Any]:
        return {
            measure.key: _estimate(tables, model, measure),
            "by_site": {s: _estimate(tables, model, measure, {s}) for s in sites},
        }

    baselines: dict[str, Any] = {
        "local_only": {
            m.removeprefix(LOCAL_MODEL_PREFIX): summary(m)
            for m in models
            if m.startswith(LOCAL_MODEL_PREFIX)
        }
    }
    if POOLED_CENTRALIZED in models:
        baselines["pooled_centralized"] = summary(POOLED_CENTRALIZED)
    baselines["unseen_site_comparison"] = _unseen_site_comparison(tables, sites, measure)
    return baselines


def _unseen_site_comparison(
    tables: dict[str, Strata], sites: list[str], measure: _Measure
) -> dict[str, Any]:
    """Per local-only model: its headline metric on the test data of the sites it never
    saw (all the other sites, pooled), against the global model's on the same data."""
    comparison: dict[str, Any] = {}
    for site in sites:
        local = LOCAL_MODEL_PREFIX + site
        if local not in tables:
            continue
        unseen = [s for s in sites if s != site]
        comparison[site] = {
            "unseen_sites": unseen,
            f"local_only_{measure.key}": _estimate(tables, local, measure, unseen)["value"],
            f"global_{measure.key}": _estimate(tables, GLOBAL_MODEL, measure, unseen)["value"],
        }
    return comparison


def _site_failures(records: RunRecords) -> list[dict[str, Any]]:
    """Every reply a site could not give: stage, round (0: the local-only baseline before
    the federated rounds; None: outside rounds, the cross-site evaluation), reason."""
    failures = [
        {
            "site": entry["site"],
            "stage": entry["phase"],
            "round": entry["round"],
            "reason": entry["error"],
        }
        for entry in records.rounds
        if "error" in entry
    ]
    failures += [
        {
            "site": site,
            "stage": "cross-site evaluation",
            "round": None,
            "reason": aggregate["error"],
        }
        for site, aggregate in sorted(records.aggregates.items())
        if "error" in aggregate
    ]
    return failures


def _site_entry(site: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": site["id"],
        "n_train": site["n_train"],
        "n_test": site["n_test"],
        "n_train_positive": site["n_train_positive"],
        "n_test_positive": site["n_test_positive"],
        "scanners": {
            name: s["n_train"] + s["n_test"] for name, s in sorted(site["scanners"].items())
        },
        # How the site de-identified its cases (profile, options, table SHA-256, software).
        "deidentification": site.get("deidentification"),
        "modalities": site.get("modalities", {}),
        "body_parts": site.get("body_parts", {}),
        # The original years of the site's studies (stored headers have shifted dates).
        "study_years": site.get("study_years"),
        # Cases per subgroup column and value in each split, and the strata suppressed.
        "subgroups": site.get("subgroups", {"counts": {}, "suppressed": []}),
        # The site's intake sessions added up: received = stored + already stored +
        # quarantined + failed.
        "intake": site.get("intake"),
    }


def _rounds(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per round: wall time, pooled test AUC (segmentation: mean Dice) and loss, each
    site's metrics or error, and who took part (`validation.participation`)."""
    by_round: dict[int, dict[str, Any]] = {}
    for entry in entries:
        if entry["round"] == 0:
            continue
        record = by_round.setdefault(entry["round"], {"round": entry["round"], "sites": {}})
        if entry["phase"] in ROUND_PHASES:
            record.setdefault("entries", []).append(entry)
        if entry["phase"] == "summary":
            record["seconds"] = entry["seconds"]
            record["pooled_auc"] = entry.get("pooled-auc")
            if "pooled-dice" in entry:
                record["pooled_dice"] = entry["pooled-dice"]
            record["test_loss"] = entry.get("test-loss")
            continue
        if entry["phase"] == "central-dp":
            record["central_dp_epsilon"] = entry["epsilon"]
            continue
        site = record["sites"].setdefault(entry["site"], {})
        if "rejected" in entry:
            site["rejected"] = entry["rejected"]
        if "error" in entry:
            site[f"{entry['phase']}_error"] = entry["error"]
        elif "refused" in entry:
            site["refused"] = entry["refused"]
        elif entry["phase"] == "train":
            site["train_loss"] = entry["metrics"]["train-loss"]
            site["train_seconds"] = entry["metrics"]["train-seconds"]
            site["epsilon"] = entry["metrics"].get("dp-epsilon")
        else:
            site["test_loss"] = entry["metrics"]["test-loss"]
            site["evaluate_seconds"] = entry["metrics"]["evaluate-seconds"]
            site["auc"] = entry["metrics"].get("auc")
            if "dice" in entry["metrics"]:
                site["dice"] = entry["metrics"]["dice"]
    for record in by_round.values():
        record["participation"] = round_participation(record.pop("entries", []))
    return [by_round[r] for r in sorted(by_round)]
