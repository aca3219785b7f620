"""The report's sections, each built from its part of the evidence.

A section whose part of the evidence is missing says so (and lists it among the report's
gaps); one whose part is malformed is replaced by a note naming the problem
(`guarded`), so that one odd field never stops the rest of the report.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from markdown_it import MarkdownIt

from task.architectures import CLASSIFICATION, SEGMENTATION
from validation.report import figures
from validation.report.blocks import (
    Block,
    Cell,
    Fields,
    Markup,
    Note,
    Row,
    Section,
    Table,
    Text,
    not_available,
    row,
)
from validation.report.fmt import (
    NA,
    bounds,
    estimate,
    general,
    is_number,
    number,
    percent,
)
from validation.report.source import ReportSource, dig

SIMULATED = "scanner differences simulated"
SIMULATED_WARNING = (
    "The sites and the scanner differences between them are simulated, and so are their "
    "cases unless the data are real images split into simulated sites (the run's data "
    "description says which). The numbers show how the method behaves, not how the model "
    "would perform on patients."
)
#: The five metrics of the performance tables.
METRICS = {
    "auc": "AUC",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "ppv": "PPV",
    "npv": "NPV",
}
TASK = (
    "binary classification of one 2-D image per case: 1 = the clinically positive finding "
    "(lesion present), 0 = negative; the reference is each site's labels.csv label "
    "(medfed's task definition)"
)
#: The metrics of the segmentation tables (validation.segmentation).
SEGMENTATION_METRICS = {
    "dice_mean": "Dice, mean",
    "dice_median": "Dice, median",
    "hd95_median": "HD95 (mm), median",
    "hd95_mean": "HD95 (mm), mean",
    "false_positive_rate": "False positives, cases without lesion",
}
SEGMENTATION_TASK = (
    "lesion segmentation of one 2-D image per case: each pixel lesion or not; the reference "
    "is each site's lesion mask (labels.csv mask column; empty for a case without a lesion) "
    "(medfed's task definition)"
)


@dataclass(frozen=True)
class Headline:
    """A task's headline metric (cross-site matrix, baselines, rounds): its key in
    performance scopes, cross_site and baselines; its name; its key in rounds[]."""

    key: str
    name: str
    per_round: str


HEADLINES = {
    CLASSIFICATION: Headline("auc", "AUC", "pooled_auc"),
    SEGMENTATION: Headline("dice_mean", "mean Dice", "pooled_dice"),
}
PREPROCESSING = (
    "one 2-D grayscale image per case (a DICOM instance; a multi-frame instance by its middle "
    "frame), modality LUT applied, MONOCHROME1 inverted, resized to {size} and scaled by its "
    "own 1st and 99th intensity percentiles (medfed's preprocessing)"
)
_STATEMENT_MARKDOWN = MarkdownIt("commonmark", {"html": False}).disable("image")


def _pairs(values: Any) -> str:
    """``key = value, ...`` of a mapping; "n/a" if it is not one or is empty."""
    if not isinstance(values, Mapping) or not values:
        return NA
    return ", ".join(f"{k} = {general(v)}" for k, v in values.items())


def as_mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def site_entries(src: ReportSource) -> list[Mapping[str, Any]]:
    return [s for s in src.data["sites"] if isinstance(s, Mapping) and "id" in s]


def task(src: ReportSource) -> str:
    """The run's task: ``classification`` (also for evidence before schema 2.1) or
    ``segmentation``."""
    return SEGMENTATION if dig(src.data, "run", "task") == SEGMENTATION else CLASSIFICATION


def description(src: ReportSource) -> str:
    """The run's one-sentence description of its data."""
    text = dig(src.data, "run", "data", "description")
    return text if isinstance(text, str) and text else "not described in the evidence"


def simulated_warning(src: ReportSource) -> str:
    """The warning of a run on simulated data, with the run's own description of its data
    (which says what, if anything, is real)."""
    return f"{SIMULATED_WARNING} Data: {description(src)}."


def simulated_note(src: ReportSource) -> Note:
    return Note("warning", f"Simulated data, {SIMULATED}: {simulated_warning(src)}")


def count_cell(n: Any, positives: Any) -> Cell:
    """Cases, with the positives among them as the second line."""
    return Cell(general(n), f"{general(positives)} pos", "num")


def metric_cell(metric: Any) -> Cell:
    value = dig(metric, "value")
    return Cell(number(value), bounds(metric), "num" if is_number(value) else "na")


def _methods(performance: Mapping[str, Any], metrics: Mapping[str, str] = METRICS) -> str:
    """The interval methods named in a performance entry, e.g. "AUC: DeLong ...; ..."."""
    methods = {
        label: method
        for key, label in metrics.items()
        if isinstance(method := dig(performance, key, "method"), str)
    }
    if not methods:
        return ""
    return "; 95% CIs: " + "; ".join(
        f"{', '.join(k for k, m in methods.items() if m == method)}: {method}"
        for method in dict.fromkeys(methods.values())
    )


def performance_table(caption: str, source: str, scopes: Mapping[str, Any]) -> Table:
    """One row per scope of a ``performance``-shaped mapping: n, positives, the five
    metrics with their intervals, confusion counts at the threshold and flags."""
    rows: list[Row] = []
    for name, result in scopes.items():
        result = as_mapping(result)
        counts = "/".join(general(result.get(k)) for k in ("tp", "fp", "tn", "fn"))
        flags = "; ".join(str(f) for f in result.get("flags") or []) or "none"
        rows.append(
            row(
                Cell(str(name)),
                count_cell(result.get("n"), result.get("n_pos")),
                *(metric_cell(result.get(m)) for m in METRICS),
                counts,
                Cell(flags, css="" if flags == "none" else "flag"),
            )
        )
    first = next((v for v in scopes.values() if isinstance(v, Mapping)), {})
    return Table(
        caption,
        source + _methods(first),
        ("Scope", "n", *METRICS.values(), "TP/FP/TN/FN", "Flags"),
        tuple(rows),
    )


def segmentation_table(caption: str, source: str, scopes: Mapping[str, Any]) -> Table:
    """One row per scope of a segmentation ``performance``-shaped mapping: cases (with a
    lesion), the five metrics with their intervals, missed lesions and flags."""
    rows: list[Row] = []
    for name, result in scopes.items():
        result = as_mapping(result)
        flags = "; ".join(str(f) for f in result.get("flags") or []) or "none"
        rows.append(
            row(
                Cell(str(name)),
                Cell(general(result.get("n")), f"{general(result.get('n_pos'))} lesion", "num"),
                *(metric_cell(result.get(m)) for m in SEGMENTATION_METRICS),
                Cell(general(result.get("n_missed")), css="num"),
                Cell(flags, css="" if flags == "none" else "flag"),
            )
        )
    first = next((v for v in scopes.values() if isinstance(v, Mapping)), {})
    return Table(
        caption,
        source + _methods(first, SEGMENTATION_METRICS),
        ("Scope", "n", *SEGMENTATION_METRICS.values(), "Missed", "Flags"),
        tuple(rows),
    )


def scope_table(src: ReportSource, caption: str, source: str, scopes: Mapping[str, Any]) -> Table:
    """`performance_table`, or `segmentation_table` for a segmentation run."""
    table = segmentation_table if task(src) == SEGMENTATION else performance_table
    return table(caption, source, scopes)


def guarded(builder: Callable[[ReportSource], Section], src: ReportSource) -> Section:
    """``builder(src)``, or, if the evidence's part is malformed, a section saying so."""
    try:
        return builder(src)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        title = (builder.__doc__ or builder.__name__).strip().splitlines()[0].rstrip(".")
        problem = f"{title}: the evidence's part is malformed ({type(exc).__name__}: {exc})"
        return Section(
            "sec-" + builder.__name__.replace("_", "-"),
            title,
            (Note("gap", problem),),
            (problem,),
        )


# --- sections ---------------------------------------------------------------------------


def summary(src: ReportSource) -> Section:
    """Summary."""
    data = src.data
    pooled = as_mapping(data["performance"]["pooled"])
    segmentation = task(src) == SEGMENTATION
    verdicts = [e.get("passed") for e in data.get("acceptance") or [] if isinstance(e, Mapping)]
    acceptance = (
        f"{verdicts.count(True)} passed, {verdicts.count(False)} failed, "
        f"{verdicts.count(None)} not judged (of {len(verdicts)})"
        if verdicts
        else NA
    )
    overview = Fields(
        (
            ("Data", description(src)),
            ("Sites", ", ".join(str(s["id"]) for s in site_entries(src)) or NA),
            (
                "Test cases (pooled)",
                f"{general(pooled.get('n'))} ({general(pooled.get('n_pos'))} "
                f"{'with a lesion' if segmentation else 'positive'})",
            ),
            (
                ("Pixel threshold", number(dig(data, "segmentation", "pixel_threshold")))
                if segmentation
                else ("Operating threshold", number(dig(data, "operating_point", "threshold")))
            ),
            *(
                (label, estimate(pooled.get(key)))
                for key, label in (SEGMENTATION_METRICS if segmentation else METRICS).items()
            ),
            ("Acceptance criteria", acceptance),
        )
    )
    return Section("sec-summary", "Summary", (overview,))


NOT_RECORDED = "not recorded in the evidence"


def _modality_and_body_part(src: ReportSource) -> str:
    """Every site's modalities and body parts added up, e.g. "CT (240 cases); ABDOMEN
    (240 cases)"; `NOT_RECORDED` when no site says."""
    totals: list[dict[str, int]] = [{}, {}]
    for site in site_entries(src):
        for total, key in zip(totals, ("modalities", "body_parts"), strict=True):
            for name, n in as_mapping(site.get(key)).items():
                if is_number(n):
                    total[str(name)] = total.get(str(name), 0) + int(n)
    if not any(totals):
        return NOT_RECORDED
    return "; ".join(
        ", ".join(f"{name} ({n} cases)" for name, n in sorted(total.items())) or NA
        for total in totals
    )


def intended_use(src: ReportSource) -> Section:
    """Intended use and task."""
    blocks: list[Block] = []
    gaps: list[str] = []
    if src.intended_use is not None:
        blocks.append(Markup(_STATEMENT_MARKDOWN.render(src.intended_use.text)))
        blocks.append(
            Fields(
                (
                    ("Statement", f"{src.intended_use.path.name} (given to medfed report)"),
                    ("Statement SHA-256", src.intended_use.sha256),
                )
            )
        )
    else:
        blocks.append(
            Note(
                "gap",
                "Intended use: to be supplied by the manufacturer. The evidence carries no "
                "intended-use statement (patient population, clinical setting, users, the "
                "role of the output); give one with medfed report --intended-use FILE.",
            )
        )
        gaps.append("Intended use statement (medfed report --intended-use FILE)")
    size = dig(src.data, "model", "config", "image_size")
    if task(src) == SEGMENTATION:
        what, output = (
            SEGMENTATION_TASK,
            "a lesion probability per pixel, lesion at >= "
            f"{number(dig(src.data, 'segmentation', 'pixel_threshold'))} (see Performance)",
        )
    else:
        what, output = (
            TASK,
            "a score per image, called positive at a predicted probability >= "
            f"{number(dig(src.data, 'operating_point', 'threshold'))} (the operating "
            "threshold; see Performance)",
        )
    blocks.append(
        Fields(
            (
                ("Task", what),
                (
                    "Input",
                    PREPROCESSING.format(size=f"{size}x{size}" if size else "the model's input"),
                ),
                ("Output", output),
                ("Data", description(src)),
                ("Modality and body part", _modality_and_body_part(src)),
            )
        )
    )
    if _modality_and_body_part(src) == NOT_RECORDED:
        gaps.append("Imaging modality and body part (evidence.json sites[].modalities)")
    return Section("sec-intended-use", "Intended use and task", tuple(blocks), tuple(gaps))


def provenance(src: ReportSource) -> Section:
    """Data provenance."""
    data = src.data
    sites = site_entries(src)
    holdout = set(dig(data, "run", "holdout_sites") or [])
    blocks: list[Block] = [simulated_note(src)] if src.simulated else []
    blocks.append(
        Fields(
            (
                ("Data", description(src)),
                ("Simulated", f"yes: {SIMULATED}" if src.simulated else "no (as the run states)"),
                ("Sites", str(len(sites))),
                ("Held out of all training", ", ".join(sorted(holdout)) or "none"),
            )
        )
    )
    blocks.append(
        Table(
            "Sites and their cases (train and test splits; test data held out of training).",
            "evidence.json sites[]: n_train, n_train_positive, n_test, n_test_positive",
            ("Site", "Train cases", "Test cases", "Test prevalence", "Role", "Scanner groups"),
            tuple(
                row(
                    str(s["id"]),
                    count_cell(s.get("n_train"), s.get("n_train_positive")),
                    count_cell(s.get("n_test"), s.get("n_test_positive")),
                    percent(s["n_test_positive"] / s["n_test"])
                    if is_number(s.get("n_test_positive")) and s.get("n_test")
                    else NA,
                    "held out (test only)" if s["id"] in holdout else "trains and tests",
                    general(len(s["scanners"])) if isinstance(s.get("scanners"), Mapping) else NA,
                )
                for s in sites
            ),
        )
    )
    scanners = sorted({name for s in sites for name in as_mapping(s.get("scanners"))})
    if scanners:
        totals = {
            name: sum(as_mapping(s.get("scanners")).get(name, 0) for s in sites)
            for name in scanners
        }
        blocks.append(
            Table(
                "Scanner groups per site: cases (train and test) by the DICOM attributes "
                "Manufacturer (0008,0070) and Manufacturer's Model Name (0008,1090), kept "
                "through de-identification (retain device identity)"
                + (f"; {SIMULATED}." if src.simulated else "."),
                "evidence.json sites[].scanners",
                ("Scanner (manufacturer, model)", *(str(s["id"]) for s in sites), "Total"),
                tuple(
                    row(
                        name,
                        *(
                            Cell(general(as_mapping(s.get("scanners")).get(name, 0)), css="num")
                            for s in sites
                        ),
                        Cell(general(totals[name]), css="num"),
                    )
                    for name in scanners
                ),
            )
        )
    else:
        blocks.append(not_available("Scanner groups per site"))
    section_gaps: list[str] = []
    for key, what, table in (
        ("intake", "Intake and quarantine counts per site", _intake_table),
        ("deidentification", "De-identification profile and options per site", _deid_table),
        ("study_years", "Modalities, body parts and study years per site", _acquisition_table),
        ("subgroups", "Cases per subgroup and split per site", _subgroup_counts_table),
    ):
        present = [s for s in sites if as_mapping(s.get(key))]
        if present:
            blocks.append(table(present))
        else:
            blocks.append(
                Note(
                    "gap",
                    f"{what}: not in the evidence (evidence.json sites[].{key}); the sites' "
                    "intake reports (SITE/intake-reports/*.json) stay at the sites, so this "
                    "report cannot show them.",
                )
            )
            section_gaps.append(f"{what} (evidence.json sites[].{key})")
    blocks += _withheld_and_failures(data)
    return Section("sec-data", "Data provenance", tuple(blocks), tuple(section_gaps))


def _intake_table(sites: list[Mapping[str, Any]]) -> Table:
    keys = ("sessions", "received", "stored", "already_stored", "quarantined", "failed")
    return Table(
        "Flow of cases at each site: instances received by all intake sessions (ingest, "
        "DICOM receiver) = stored + already stored + quarantined + failed; the quarantine "
        "reasons; and the labelled cases the run used (train + test).",
        "evidence.json sites[].intake, n_train, n_test",
        (
            "Site",
            "Sessions",
            "Received",
            "Stored",
            "Already stored",
            "Quarantined",
            "Failed",
            "Quarantine reasons",
            "Used (train + test)",
        ),
        tuple(
            row(
                str(s["id"]),
                *(Cell(general(s["intake"].get(k)), css="num") for k in keys),
                _pairs(s["intake"].get("quarantine_reasons"))
                if s["intake"].get("quarantined")
                else "none",
                Cell(general(_total(s.get("n_train"), s.get("n_test"))), css="num"),
            )
            for s in sites
        ),
    )


def _total(*counts: Any) -> Any:
    return sum(counts) if all(is_number(c) for c in counts) else None


def _acquisition_table(sites: list[Mapping[str, Any]]) -> Table:
    return Table(
        "Acquisition at each site: cases per DICOM Modality (0008,0060) and Body Part "
        "Examined (0018,0015), and the first and last year of the studies (the original "
        "years: de-identification shifts the stored headers' dates; years only, as "
        "HIPAA's Safe Harbor allows).",
        "evidence.json sites[].modalities, body_parts, study_years",
        ("Site", "Modality", "Body part", "Study years", "Cases with a study date"),
        tuple(
            row(
                str(s["id"]),
                _pairs(s.get("modalities")),
                _pairs(s.get("body_parts")),
                f"{general(s['study_years'].get('first'))} to "
                f"{general(s['study_years'].get('last'))}",
                Cell(general(s["study_years"].get("n")), css="num"),
            )
            for s in sites
        ),
    )


def _subgroup_counts_table(sites: list[Mapping[str, Any]]) -> Table:
    subgroups = {str(s["id"]): as_mapping(s.get("subgroups")) for s in sites}
    counts = {site: as_mapping(g.get("counts")) for site, g in subgroups.items()}
    strata = sorted(
        {(column, value) for c in counts.values() for column, v in c.items() for value in v}
    )
    suppressed = [
        f"{site}: {name}" for site, g in subgroups.items() for name in g.get("suppressed") or []
    ]

    def cell(site: str, column: str, value: str) -> Cell:
        entry = as_mapping(as_mapping(counts[site].get(column)).get(value))
        if not entry:
            withheld = f"{column}={value}" in (subgroups[site].get("suppressed") or [])
            return Cell("withheld" if withheld else NA, css="na")
        return Cell(f"{general(entry.get('n_train'))} / {general(entry.get('n_test'))}", css="num")

    withheld = (
        f"; withheld below the site's minimum cell size: {', '.join(suppressed)}."
        if suppressed
        else "."
    )
    return Table(
        "Cases per subgroup (the labels.csv columns the sites' policies let out; numeric ones "
        "in bands) in the training and test splits (train / test) at each site" + withheld,
        "evidence.json sites[].subgroups",
        ("Subgroup", *counts),
        tuple(
            row(f"{column} = {value}", *(cell(site, column, value) for site in counts))
            for column, value in strata
        ),
    )


def _deid_table(sites: list[Mapping[str, Any]]) -> Table:
    """One row per distinct de-identification method, naming the sites that used it."""
    methods: dict[str, list[str]] = {}
    described: dict[str, Mapping[str, Any]] = {}
    for site in sites:
        key = json.dumps(site["deidentification"], sort_keys=True, default=str)
        methods.setdefault(key, []).append(str(site["id"]))
        described[key] = site["deidentification"]
    return Table(
        "De-identification at the sites: the profile, its options, the SHA-256 of the profile "
        "table applied and the software that applied it (sites that used the same method "
        "share a row).",
        "evidence.json sites[].deidentification",
        ("Sites", "Profile", "Options", "Table SHA-256", "Software"),
        tuple(
            row(
                ", ".join(ids),
                f"{general(described[key].get('profile'))} "
                f"({general(described[key].get('standard'))})",
                "; ".join(map(str, described[key].get("options") or [])) or "none",
                Cell(general(described[key].get("table_sha256")), css="hash"),
                general(described[key].get("software")),
            )
            for key, ids in methods.items()
        ),
        about_data=False,
    )


def _withheld_and_failures(data: Mapping[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    suppressed = [e for e in data.get("suppressed") or [] if isinstance(e, Mapping)]
    if suppressed:
        blocks.append(
            Table(
                "Strata withheld by a site: fewer cases than the site's minimum cell size.",
                "evidence.json suppressed[]",
                ("Site", "Stratum"),
                tuple(row(general(e.get("site")), general(e.get("stratum"))) for e in suppressed),
            )
        )
    failures = [e for e in data.get("site_failures") or [] if isinstance(e, Mapping)]
    if failures:
        blocks.append(
            _records_table(
                "Replies a site could not give.",
                "evidence.json site_failures[]",
                ("site", "stage", "round", "reason"),
                failures,
            )
        )
    elif "site_failures" in data:
        blocks.append(Text(("No site failed to reply.",)))
    return blocks


def model_identity(src: ReportSource) -> Section:
    """Model identity."""
    model = src.data["model"]
    blocks: list[Block] = [
        Fields(
            (
                ("Architecture", general(model.get("architecture"))),
                ("Trainable parameters", general(model.get("parameters"))),
                ("Final checkpoint", general(model.get("checkpoint"))),
                ("Checkpoint SHA-256", general(model.get("sha256"))),
                ("Code version", general(dig(src.data, "run", "code_version"))),
                ("Configuration", _pairs(model.get("config"))),
                ("Evidence schema", general(src.data.get("schema_version"))),
            )
        )
    ]
    checkpoints = [c for c in src.data.get("checkpoints") or [] if isinstance(c, Mapping)]
    if checkpoints:
        blocks.append(
            Table(
                "Every checkpoint the run wrote, with the SHA-256 of its file.",
                "evidence.json checkpoints[]",
                ("Name", "Round", "File", "SHA-256"),
                tuple(
                    row(
                        *(general(c.get(k)) for k in ("name", "round", "file")),
                        Cell(general(c.get("sha256")), css="hash"),
                    )
                    for c in checkpoints
                ),
                about_data=False,
            )
        )
    return Section("sec-model", "Model identity", tuple(blocks))


def training(src: ReportSource) -> Section:
    """Training and privacy."""
    run = as_mapping(src.data["run"])
    blocks: list[Block] = []
    if run.get("evaluation_only"):
        blocks.append(
            Note(
                "info",
                "Evaluation-only job: a frozen model tested at every site; no "
                "training, so no privacy spent.",
            )
        )
    for resumption in run.get("resumptions") or []:
        resumed = as_mapping(resumption)
        blocks.append(
            Note(
                "info",
                f"The coordinator stopped and the job was resumed after round "
                f"{resumed.get('after_round')} (Flower run {resumed.get('flower_run')}, "
                f"{resumed.get('time')}); records of the round cut short are kept apart "
                "in interrupted.jsonl, and the sites' privacy ledgers count what they "
                "released in it.",
            )
        )
    blocks.append(
        Fields(
            (
                ("Strategy", general(run.get("strategy"))),
                ("Strategy parameters", _pairs(run.get("strategy_parameters"))),
                ("Rounds", general(run.get("rounds"))),
                ("Seed", general(run.get("seed"))),
                ("Local training", _pairs(run.get("training"))),
                ("Phase times (s)", _pairs(run.get("timings_s"))),
            )
        )
    )
    rounds = [r for r in src.data.get("rounds") or [] if isinstance(r, Mapping)]
    if rounds:
        blocks += _participation(src, rounds)
    elif not run.get("evaluation_only"):
        blocks.append(not_available("Per-round participation (evidence.json rounds)"))
    blocks += _privacy(src)
    return Section("sec-training", "Training and privacy", tuple(blocks))


def _round_status(entry: Any) -> Cell:
    entry = as_mapping(entry)
    parts = [
        word
        for key, word in (("train_loss", "trained"), ("test_loss", "evaluated"))
        if key in entry
    ]
    problems = [
        f"{k.removesuffix('_error')} failed: {v}" for k, v in entry.items() if k.endswith("_error")
    ]
    if "refused" in entry:
        problems.append(f"refused: {entry['refused']}")
    text = ", ".join(parts + problems) or "absent"
    return Cell(text, css="fail" if problems or not parts else "")


def _participation(src: ReportSource, rounds: list[Mapping[str, Any]]) -> list[Block]:
    site_ids = [str(s["id"]) for s in site_entries(src)]
    for r in rounds:
        site_ids += [s for s in as_mapping(r.get("sites")) if s not in site_ids]
    name, pooled = HEADLINES[task(src)].name, HEADLINES[task(src)].per_round
    blocks: list[Block] = [
        Table(
            "Participation per round: what each site did (trained, evaluated, failed, "
            f"refused), the round's wall time and the global model's pooled test {name}.",
            "evidence.json rounds[]",
            ("Round", "Seconds", f"Pooled {name}", *site_ids),
            tuple(
                row(
                    general(r.get("round")),
                    number(r.get("seconds"), 1),
                    number(r.get(pooled)),
                    *(_round_status(as_mapping(r.get("sites")).get(s)) for s in site_ids),
                )
                for r in rounds
            ),
        )
    ]
    points = [(r["round"], r[pooled]) for r in rounds if is_number(r.get(pooled))]
    figure = figures.lines(
        "fig-rounds",
        f"Pooled test {name} of the global model after each round.",
        f"evidence.json rounds[].{pooled}",
        {f"pooled test {name}": ([p[0] for p in points], [p[1] for p in points])},
        "round",
        name,
    )
    return blocks + ([figure] if figure else [])


def _privacy(src: ReportSource) -> list[Block]:
    privacy = src.data.get("privacy")
    if not isinstance(privacy, Mapping):
        return [not_available("Privacy (evidence.json privacy)")]
    items = [
        ("Mechanism", general(privacy.get("mode"))),
        ("Guarantee", general(privacy.get("guarantee"))),
        ("Accountant", general(privacy.get("accountant"))),
        ("Settings", _privacy_settings(privacy.get("settings"))),
    ]
    if privacy.get("mode") == "central":
        items.append(
            (
                "Central DP spent",
                f"epsilon {general(privacy.get('epsilon'))} at delta "
                f"{general(privacy.get('delta'))}",
            )
        )
    blocks: list[Block] = [Fields(tuple(items))]
    sites = [s for s in site_entries(src) if isinstance(s.get("privacy"), Mapping)]
    if sites:
        blocks.append(
            Table(
                "Privacy spent by each site in this run (epsilon at the site's delta), and the "
                "independent recomputation of each epsilon from the release parameters.",
                "evidence.json sites[].privacy",
                (
                    "Site",
                    "Epsilon",
                    "Delta",
                    "Noise mult.",
                    "Sample rate",
                    "Steps",
                    "Clip norm",
                    "Independent check",
                    "Epsilon, all runs",
                ),
                tuple(_privacy_row(str(s["id"]), s["privacy"]) for s in sites),
            )
        )
        series = {
            str(s["id"]): (
                [h.get("round") for h in s["privacy"].get("history") or []],
                [h.get("epsilon") for h in s["privacy"].get("history") or []],
            )
            for s in sites
        }
        figure = figures.lines(
            "fig-epsilon",
            "Epsilon spent by each site after each release (round 0: the local-only baseline).",
            "evidence.json sites[].privacy.history",
            series,
            "round",
            "epsilon",
        )
        blocks += [figure] if figure else []
    refusals = [e for e in src.data.get("privacy_refusals") or [] if isinstance(e, Mapping)]
    if refusals:
        blocks.append(
            _records_table(
                "Training a site refused (its privacy ceiling would have been exceeded).",
                "evidence.json privacy_refusals[]",
                ("site", "round", "stage", "reason"),
                refusals,
            )
        )
    return blocks


def _privacy_settings(settings: Any) -> str:
    """The run's privacy settings; a noise multiplier the sites derive from the target
    epsilon says so."""
    settings = dict(as_mapping(settings))
    if "noise_multiplier" in settings and settings["noise_multiplier"] is None:
        settings["noise_multiplier"] = "derived at each site from target_epsilon"
    return _pairs(settings)


def _privacy_row(site: str, record: Mapping[str, Any]) -> Row:
    check = as_mapping(record.get("independent_check"))
    if check:
        verdict = "agrees" if check.get("agrees") else "DISAGREES"
        check_cell = Cell(
            f"{verdict} ({general(check.get('library'))})",
            f"RDP {number(check.get('rdp_epsilon'))}, PLD {number(check.get('pld_epsilon'))}",
            "" if check.get("agrees") else "fail",
        )
    else:
        check_cell = Cell(NA, css="na")
    return row(
        site,
        Cell(number(record.get("epsilon")), css="num"),
        general(record.get("delta")),
        number(record.get("noise_multiplier")),
        general(record.get("sample_rate")),
        general(record.get("steps")),
        general(record.get("max_grad_norm")),
        check_cell,
        Cell(
            number(record.get("epsilon_all_runs")),
            general(record.get("epsilon_all_runs_note") or ""),
        ),
    )


def _records_table(
    caption: str, source: str, keys: tuple[str, ...], entries: list[Mapping[str, Any]]
) -> Table:
    """A table of evidence records: one column per key (its name capitalised as the
    header), one row per entry."""
    return Table(
        caption,
        source,
        tuple(key.capitalize() for key in keys),
        tuple(row(*(general(e.get(k)) for k in keys)) for e in entries),
    )
