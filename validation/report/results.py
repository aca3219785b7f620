"""The report's result sections: performance (with forest plots and heterogeneity), the
cross-site matrix and baselines, calibration, subgroups, acceptance and limitations. Like
`validation.report.sections`, each says what its part of the evidence lacks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from task.architectures import CLASSIFICATION, SEGMENTATION
from validation.report import figures
from validation.report.blocks import (
    Block,
    Cell,
    Fields,
    Note,
    Row,
    Section,
    Table,
    Text,
    not_available,
    row,
)
from validation.report.fmt import NA, bounds, estimate, general, is_number, number, p_value, percent
from validation.report.sections import (
    HEADLINES,
    SIMULATED,
    as_mapping,
    count_cell,
    scope_table,
    task,
)
from validation.report.source import ReportSource, dig

#: Strata with fewer test cases of either class than this are called small (limitations).
SMALL_CLASS = 10
#: I2 above this is called substantial heterogeneity (limitations).
HIGH_I2 = 0.5


def performance(src: ReportSource) -> Section:
    """Performance."""
    data = src.data
    perf = data["performance"]
    simulated = f" ({SIMULATED})" if src.simulated else ""
    segmentation = task(src) == SEGMENTATION
    blocks: list[Block] = [
        _measured(src),
        scope_table(
            src,
            "Global model: all sites' test data pooled, and each site's.",
            "evidence.json performance.pooled, performance.by_site",
            {"pooled": perf["pooled"], **as_mapping(perf.get("by_site"))},
        ),
    ]
    for key, what in (("by_scanner", "manufacturer"), ("by_scanner_model", "scanner model")):
        strata = as_mapping(perf.get(key))
        blocks.append(
            scope_table(
                src,
                f"Global model by {what} (test data of all sites pooled){simulated}.",
                f"evidence.json performance.{key}",
                strata,
            )
            if strata
            else not_available(f"Performance by {what}")
        )
    external = as_mapping(data.get("external_validation"))
    if external.get("sites"):
        pooled = {"held-out sites pooled": external["pooled"]} if external.get("pooled") else {}
        blocks.append(
            scope_table(
                src,
                "External validation: sites held out of all training "
                f"({general(external.get('method'))}).",
                "evidence.json external_validation",
                {**as_mapping(external.get("by_site")), **pooled},
            )
        )
    if not segmentation:  # ROC curves and forest plots are the classifier's
        blocks.append(_roc_figure(src))
        blocks += _heterogeneity(src)
    return Section("sec-performance", "Performance", tuple(blocks))


def _measured(src: ReportSource) -> Fields:
    """What the performance tables measure: the model, and its operating threshold or, for
    segmentation, its pixel threshold, method and metric definitions."""
    if task(src) == SEGMENTATION:
        method = as_mapping(src.data.get("segmentation"))
        fields = (
            ("Pixel threshold", number(method.get("pixel_threshold"))),
            ("Method", general(method.get("method"))),
            *((str(k), general(v)) for k, v in as_mapping(method.get("definitions")).items()),
        )
    else:
        operating = as_mapping(src.data.get("operating_point"))
        fields = (
            ("Operating threshold", number(operating.get("threshold"))),
            ("Threshold chosen by", general(operating.get("method"))),
            ("Training cases behind it", general(operating.get("n_train_cases"))),
        )
    return Fields(
        (("Model", "the final global model, on the sites' held-out test splits"), *fields)
    )


def _roc_figure(src: ReportSource) -> Block:
    """The global model's ROC curves on the test data, pooled and per site."""
    roc = as_mapping(src.data.get("roc"))
    curves = {"pooled": roc.get("pooled"), **as_mapping(roc.get("by_site"))}
    series = {
        f"{name} (AUC {number(curve['auc'])})": (curve["fpr"], curve["tpr"])
        for name, curve in curves.items()
        if isinstance(curve, Mapping) and isinstance(curve.get("fpr"), list)
    }
    figure = figures.lines(
        "fig-roc",
        "ROC curves of the global model on the test data, pooled and per site: one point per "
        "score bin where the curve moves; the area under the straight lines between them is "
        "the AUC of the tables above (sites lacking a class have none).",
        "evidence.json roc",
        series,
        "1 - specificity (false positive rate)",
        "sensitivity (true positive rate)",
    )
    return figure or not_available("ROC curves (evidence.json roc)")


def _heterogeneity(src: ReportSource) -> list[Block]:
    heterogeneity = as_mapping(src.data.get("heterogeneity"))
    if not heterogeneity:
        return [not_available("Heterogeneity and forest plots (evidence.json heterogeneity)")]
    blocks: list[Block] = []
    scopes = {"across_sites": "site", "across_manufacturers": "manufacturer"}
    for key, what in scopes.items():
        simulated = f"; {SIMULATED}" if src.simulated and what == "manufacturer" else ""
        figure = figures.forest(
            f"fig-forest-{what}",
            f"Forest plots by {what}: each {what}'s test estimate with its 95% CI (square "
            "sized by its random-effects weight), the fixed-effect and random-effects pooled "
            f"estimates (diamonds) and I2, for the global model{simulated}.",
            f"evidence.json heterogeneity.{key}",
            as_mapping(heterogeneity.get(key)),
        )
        blocks.append(figure or not_available(f"Forest plot by {what}"))
    rows = [
        _heterogeneity_row(what, label, as_mapping(as_mapping(heterogeneity.get(key)).get(metric)))
        for key, what in scopes.items()
        for metric, label in figures.FOREST_METRICS.items()
        if isinstance(dig(heterogeneity, key, metric), Mapping)
    ]
    if rows:
        blocks.append(
            Table(
                "Heterogeneity: inverse-variance meta-analysis on the logit scale (fixed effect; "
                "DerSimonian-Laird random effects), Cochran's Q, I2 and tau2.",
                "evidence.json heterogeneity.across_sites, heterogeneity.across_manufacturers",
                (
                    "Across",
                    "Metric",
                    "k",
                    "Fixed effect",
                    "Random effects",
                    "Q (df)",
                    "p",
                    "I2",
                    "tau2",
                    "Excluded",
                ),
                tuple(rows),
            )
        )
    differences = [
        d for d in heterogeneity.get("manufacturer_auc_differences") or [] if isinstance(d, Mapping)
    ]
    if differences:
        blocks.append(
            Table(
                "AUC differences between manufacturers (unpaired DeLong test).",
                "evidence.json heterogeneity.manufacturer_auc_differences",
                ("A", "B", "AUC A", "AUC B", "Difference [95% CI]", "z", "p"),
                tuple(
                    row(
                        general(d.get("a")),
                        general(d.get("b")),
                        number(d.get("auc_a")),
                        number(d.get("auc_b")),
                        Cell(number(d.get("difference")), bounds(d)),
                        number(d.get("z"), 2),
                        p_value(d.get("p_value")),
                    )
                    for d in differences
                ),
            )
        )
    return blocks


def _heterogeneity_row(scope: str, metric: str, meta: Mapping[str, Any]) -> Row:
    excluded = "; ".join(f"{k}: {v}" for k, v in as_mapping(meta.get("excluded")).items())
    return row(
        scope,
        metric,
        general(meta.get("k")),
        Cell(number(dig(meta, "fixed", "value")), bounds(meta.get("fixed"))),
        Cell(number(dig(meta, "random", "value")), bounds(meta.get("random"))),
        f"{number(meta.get('q'), 2)} ({general(meta.get('df'))})",
        p_value(meta.get("q_p_value")),
        percent(meta.get("i2"), 0),
        general(meta.get("tau2")),
        excluded or "none",
    )


def cross_site(src: ReportSource) -> Section:
    """Cross-site validation and baselines."""
    cross = as_mapping(src.data.get("cross_site"))
    headline = HEADLINES[task(src)]
    blocks: list[Block] = []
    models, sites, matrix = cross.get("models"), cross.get("sites"), cross.get(headline.key)
    if isinstance(models, list) and isinstance(sites, list) and isinstance(matrix, list):
        blocks.append(
            figures.heatmap(
                "fig-cross-site",
                f"Cross-site matrix: the test {headline.name} of every model (rows: the global "
                "model, each site's local-only model, the pooled-centralized baseline) on every "
                "site's test data (columns); empty where it is not defined or a site did not "
                "report.",
                f"evidence.json cross_site.{headline.key}",
                [str(m) for m in models],
                [str(s) for s in sites],
                matrix,
            )
        )
        method = cross.get("method") if isinstance(cross.get("method"), str) else "not stated"
        blocks.append(
            Table(
                f"Cross-site matrix with 95% CIs ({method}): rows models, columns sites' test "
                "data.",
                f"evidence.json cross_site.{headline.key}, cross_site.ci_low, cross_site.ci_high",
                ("Model", *map(str, sites)),
                tuple(
                    row(
                        str(model),
                        *(
                            Cell(
                                number(value),
                                bounds(
                                    {
                                        "ci_low": dig(cross, "ci_low", i, j),
                                        "ci_high": dig(cross, "ci_high", i, j),
                                    }
                                ),
                                "num" if is_number(value) else "na",
                            )
                            for j, value in enumerate(line if isinstance(line, list) else [])
                        ),
                    )
                    for i, (model, line) in enumerate(zip(models, matrix, strict=False))
                ),
            )
        )
    else:
        blocks.append(not_available("Cross-site matrix (evidence.json cross_site)"))
    blocks += _baselines(src)
    return Section("sec-cross-site", "Cross-site validation and baselines", tuple(blocks))


def _baselines(src: ReportSource) -> list[Block]:
    baselines = as_mapping(src.data.get("baselines"))
    if not baselines:
        return [not_available("Baselines (evidence.json baselines)")]
    key, name = HEADLINES[task(src)].key, HEADLINES[task(src)].name
    regimes = {"global (federated)": {key: dig(src.data, "performance", "pooled", key)}}
    if isinstance(baselines.get("pooled_centralized"), Mapping):
        regimes["pooled-centralized"] = baselines["pooled_centralized"]
    regimes |= {f"local-only {k}": v for k, v in as_mapping(baselines.get("local_only")).items()}
    blocks: list[Block] = [
        Table(
            "Training regimes compared on the same test data (all sites pooled): the global "
            "model, all training data in one place (possible only in a simulation), and each "
            "site alone.",
            f"evidence.json baselines, performance.pooled.{key}",
            ("Model", f"Pooled test {name} [95% CI]"),
            tuple(row(regime, estimate(as_mapping(v).get(key))) for regime, v in regimes.items()),
        )
    ]
    unseen = as_mapping(baselines.get("unseen_site_comparison"))
    if unseen:
        blocks.append(
            Table(
                "Each local-only model on the sites it never saw (their test data pooled), "
                "against the global model on the same data.",
                "evidence.json baselines.unseen_site_comparison",
                ("Local-only model of", "Unseen sites", f"Local-only {name}", f"Global {name}"),
                tuple(
                    row(
                        str(site),
                        general(as_mapping(v).get("unseen_sites")),
                        number(as_mapping(v).get(f"local_only_{key}")),
                        number(as_mapping(v).get(f"global_{key}")),
                    )
                    for site, v in unseen.items()
                ),
            )
        )
    return blocks


def calibration(src: ReportSource) -> Section:
    """Calibration."""
    section = as_mapping(src.data.get("calibration"))
    if task(src) == SEGMENTATION:
        return Section(
            "sec-calibration",
            "Calibration",
            (Note("info", "Calibration: not assessed for segmentation (no image-level score)."),),
        )
    if not section:
        return Section(
            "sec-calibration",
            "Calibration",
            (not_available("Calibration (evidence.json calibration)"),),
        )
    scopes = {"pooled": section.get("pooled"), **as_mapping(section.get("by_site"))}
    blocks: list[Block] = []
    figure = figures.reliability(
        "fig-reliability",
        "Reliability diagram of the global model on the test data: observed fraction of "
        "positives against mean predicted probability per probability group (pooled with "
        "95% Wilson intervals; each site as a thin line).",
        "evidence.json calibration.pooled.reliability, calibration.by_site.*.reliability",
        {name: as_mapping(v).get("reliability") or [] for name, v in scopes.items()},
    )
    blocks.append(figure or not_available("Reliability curves"))
    blocks.append(
        Table(
            "Calibration statistics: expected calibration error, Brier score, calibration "
            "intercept and slope (logistic recalibration) and calibration-in-the-large.",
            "evidence.json calibration",
            ("Scope", "n", "ECE", "Brier", "Intercept", "Slope", "In the large"),
            tuple(_calibration_row(str(name), as_mapping(v)) for name, v in scopes.items()),
        )
    )
    return Section("sec-calibration", "Calibration", tuple(blocks))


def _calibration_row(name: str, result: Mapping[str, Any]) -> Row:
    if "not_assessed" in result:
        return row(
            name,
            general(result.get("n")),
            Cell(f"not assessed: {result['not_assessed']}", css="na"),
            "",
            "",
            "",
            "",
        )
    return row(
        name,
        count_cell(result.get("n"), result.get("n_pos")),
        number(result.get("ece")),
        number(result.get("brier")),
        *(
            Cell(number(dig(result, k, "value")), bounds(result.get(k)))
            for k in ("intercept", "slope", "calibration_in_the_large")
        ),
    )


def subgroups(src: ReportSource) -> Section:
    """Subgroups."""
    columns = as_mapping(dig(src.data, "performance", "by_subgroup"))
    if not columns:
        return Section(
            "sec-subgroups",
            "Subgroups",
            (
                Note(
                    "gap",
                    "Subgroups: none in the evidence (no subgroup columns, or the sites' "
                    "policies withhold them).",
                ),
            ),
            ("Subgroup performance (evidence.json performance.by_subgroup)",),
        )
    blocks: list[Block] = []
    for column, strata in columns.items():
        strata = as_mapping(strata)
        source = f"evidence.json performance.by_subgroup.{column}"
        if task(src) == CLASSIFICATION:
            figure = figures.metric_bars(
                f"fig-subgroup-{column}",
                f"Global model by {column}: AUC, sensitivity and specificity with 95% CIs "
                "(test data of all sites pooled).",
                source,
                strata,
            )
            blocks += [figure] if figure else []
        blocks.append(scope_table(src, f"Global model by {column}.", source, strata))
    return Section("sec-subgroups", "Subgroups", tuple(blocks))


def acceptance(src: ReportSource) -> Section:
    """Acceptance."""
    entries = [e for e in src.data.get("acceptance") or [] if isinstance(e, Mapping)]
    if not entries:
        return Section(
            "sec-acceptance",
            "Acceptance",
            (not_available("Acceptance results (evidence.json acceptance)"),),
            ("Acceptance results (evidence.json acceptance)",),
        )
    plan = as_mapping(src.data.get("acceptance_plan"))
    blocks: list[Block] = [
        Fields(
            (
                ("Plan", f"{general(plan.get('name'))}, version {general(plan.get('version'))}"),
                ("Plan source", general(plan.get("source"))),
                ("Plan SHA-256", general(plan.get("sha256"))),
            )
        ),
        Table(
            "Acceptance criteria, fixed before the run, and their verdicts: one row per "
            "criterion and stratum; a stratum that could not be judged says why.",
            "evidence.json acceptance[], acceptance_plan",
            ("Verdict", "Criterion", "Scope", "Statistic", "Value", "Required", "n", "Reason"),
            tuple(_acceptance_row(e) for e in entries),
        ),
    ]
    return Section("sec-acceptance", "Acceptance", tuple(blocks))


def _acceptance_row(entry: Mapping[str, Any]) -> Row:
    verdict = {True: Cell("PASS", css="pass"), False: Cell("FAIL", css="fail")}.get(
        entry.get("passed"), Cell("not judged", css="na")
    )
    statistic = " ".join(general(entry.get(k)) for k in ("metric", "statistic") if entry.get(k))
    return row(
        verdict,
        Cell(general(entry.get("criterion")), general(entry.get("id"))),
        general(entry.get("scope")),
        statistic or general(entry.get("kind")),
        number(entry.get("value")),
        f"{entry.get('operator') or ''} {number(entry.get('threshold'))}".strip(),
        general(entry.get("n")),
        general(entry.get("reason") or ""),
    )


# --- limitations --------------------------------------------------------------------------


def _scopes(data: Mapping[str, Any]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """Every stratum of the performance section, named for a reader."""
    perf = as_mapping(data.get("performance"))
    yield "pooled", as_mapping(perf.get("pooled"))
    for key, what in (
        ("by_site", "site"),
        ("by_scanner", "manufacturer"),
        ("by_scanner_model", "scanner"),
    ):
        for name, result in as_mapping(perf.get(key)).items():
            yield f"{what} {name}", as_mapping(result)
    for column, strata in as_mapping(perf.get("by_subgroup")).items():
        for value, result in as_mapping(strata).items():
            yield f"{column} {value}", as_mapping(result)


def drift(src: ReportSource) -> Section:
    """Data drift at the sites.

    From evidence.drift, which evaluation-only jobs (`medfed validate`) fill."""
    section = as_mapping(src.data.get("drift"))
    if not section:
        note = Note(
            "info",
            "Drift was not checked in this job: an evaluation-only job (medfed validate) asks "
            "every site to compare its new, unlabelled cases with its labelled ones.",
        )
        return Section("sec-drift", "Data drift at the sites", (note,))
    rows: list[Row] = []
    for site, report in sorted(as_mapping(section.get("sites")).items()):
        report = as_mapping(report)
        if "error" in report:
            rows.append(row(site, Cell("not checked", css="na"), NA, general(report["error"])))
            continue
        shifted = [
            f"{c.get('group')}: {c.get('feature')} (PSI {number(c.get('psi'), 2)}, "
            f"KS p {p_value(c.get('ks_p'))})"
            for c in map(as_mapping, report.get("comparisons") or [])
            if c.get("alarm")
        ]
        shifted += [
            f"{scanner}: never validated on"
            for scanner in as_mapping(report.get("unvalidated_scanners"))
        ]
        alarm = bool(report.get("alarm"))
        rows.append(
            row(
                site,
                Cell("ALARM" if alarm else "no alarm", css="fail" if alarm else "pass"),
                general(report.get("n_new")),
                "; ".join(shifted) or "none",
            )
        )
    table = Table(
        "Drift of each site's new (received, not yet labelled) cases from its labelled cases",
        "drift.sites",
        ("Site", "Result", "New cases", "Shifts"),
        tuple(rows),
    )
    return Section(
        "sec-drift", "Data drift at the sites", (Text(general(section.get("method"))), table)
    )


def limitations(src: ReportSource) -> Section:
    """Limitations."""
    data = src.data
    items: list[str] = []
    if src.simulated:
        items.append(
            f"Simulated data, {SIMULATED}: every number in this report comes from simulated "
            "sites and scanner profiles and says nothing about performance on patients."
        )
    if src.intended_use is None:
        items.append(
            "No intended-use statement was given: the population, setting and users "
            "the evidence must represent are not defined."
        )
    holdout = dig(data, "run", "holdout_sites") or []
    items.append(
        f"External validation on the sites held out of all training ({', '.join(holdout)}); the "
        "other test splits come from the sites that trained."
        if holdout
        else "No site was held out of training: the test splits are disjoint from the training "
        "splits case by case, but come from the same sites, scanners and time (no site-level "
        "external validation)."
    )
    items.append(
        "Retrospective, standalone evaluation of the model's output: no reader study, so the "
        "performance of the clinician with the model (the human-AI team) is not measured."
    )
    segmentation = task(src) == SEGMENTATION
    items.append(
        "Metrics come from the sites' aggregates of per-case Dice and HD95 (no mask, prediction "
        "or case-level value leaves a site): means and their intervals are exact, medians and "
        "their intervals are at the resolution of fixed bins, and no failure analysis of "
        "individual cases is possible here."
        if segmentation
        else "Metrics come from the sites' score histograms (no case-level data leave a site): "
        "AUCs and intervals are exact up to the histogram's binning, and no failure analysis of "
        "individual misclassified cases is possible here."
    )
    wide = [
        f"{name} ({'; '.join(map(str, r['flags']))})" for name, r in _scopes(data) if r.get("flags")
    ]
    if wide:
        items.append("Imprecise estimates (95% CI wider than the flag limit): " + ", ".join(wide))
    small = [
        name
        for name, r in _scopes(data)
        if is_number(r.get("n"))
        and is_number(r.get("n_pos"))
        and min(r["n_pos"], r["n"] - r["n_pos"]) < SMALL_CLASS
    ]
    if small:
        items.append(
            f"Small strata (fewer than {SMALL_CLASS} test cases of a class): " + ", ".join(small)
        )
    if data.get("suppressed"):
        items.append(
            f"{len(data['suppressed'])} strata were withheld by sites (minimum cell "
            "size) and are missing from the stratified results."
        )
    if data.get("site_failures"):
        items.append(
            f"{len(data['site_failures'])} site replies failed during the run "
            "(see Data provenance)."
        )
    heterogeneous = [
        f"{metric} across {key.removeprefix('across_')} (I2 {percent(meta['i2'], 0)})"
        for key, metrics in as_mapping(data.get("heterogeneity")).items()
        if key.startswith("across_")
        for metric, meta in as_mapping(metrics).items()
        if is_number(dig(meta, "i2")) and meta["i2"] > HIGH_I2
    ]
    if heterogeneous:
        items.append("Substantial heterogeneity: " + ", ".join(heterogeneous))
    failed = [
        str(e.get("id"))
        for e in data.get("acceptance") or []
        if isinstance(e, Mapping) and e.get("passed") is False
    ]
    if failed:
        items.append("Acceptance criteria failed: " + ", ".join(dict.fromkeys(failed)))
    mode = dig(data, "privacy", "mode")
    if mode in ("local", "central"):
        items.append(
            "Models were trained with differential privacy: its noise costs accuracy, "
            "and the guarantee covers the released models, not the sites' stores."
        )
    items.append(
        "The pixel threshold is fixed at a probability of 0.5, not tuned on any data."
        if segmentation
        else "The operating threshold was fixed on the training splits of the same sites; at a "
        "new site (other prevalence, scanners) it may need to be set again."
    )
    return Section("sec-limitations", "Limitations", (Text(tuple(items), bullets=True),))
