"""Where the report answers the Good Machine Learning Practice guiding principles (FDA,
Health Canada, MHRA, October 2021) and the CLAIM checklist (Checklist for Artificial
Intelligence in Medical Imaging, Mongan, Moy and Kahn, Radiology: Artificial Intelligence
2020; its 42 items, numbered as there).

Each item names the sections that answer it and a status: ``shown`` (the report shows
it), ``partly`` (the report shows some of it; the comment says what is missing) or ``not
shown`` (outside what the evidence records; the comment says what would be needed). A
status may depend on the evidence (`Facts`): e.g. external validation is shown only when
a site was held out of training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from markdown_it import MarkdownIt

from validation.report.blocks import Cell, Section, Table, row
from validation.report.source import ReportSource, dig

SHOWN, PARTLY, NOT_SHOWN = "shown", "partly", "not shown"
SECTION_TITLES = {
    "sec-summary": "Summary",
    "sec-intended-use": "Intended use",
    "sec-data": "Data provenance",
    "sec-model": "Model identity",
    "sec-training": "Training",
    "sec-performance": "Performance",
    "sec-cross-site": "Cross-site",
    "sec-calibration": "Calibration",
    "sec-subgroups": "Subgroups",
    "sec-acceptance": "Acceptance",
    "sec-limitations": "Limitations",
}


#: What the intended-use statement may hold under headings of its own, recognised by these
#: words (lower case) in a heading: the `Facts` field each sets, and the items it answers.
STATEMENT_TOPICS = {
    "reference_standard": ("reference standard", "ground truth"),
    "study_design": ("study design",),
    "annotation": ("annotat",),
    "eligibility": ("eligib", "inclusion"),
}
_HEADINGS = MarkdownIt("commonmark")


def statement_headings(text: str) -> list[str]:
    """The headings of a Markdown statement, in lower case."""
    tokens = _HEADINGS.parse(text)
    return [
        tokens[i + 1].content.lower()
        for i, token in enumerate(tokens)
        if token.type == "heading_open" and i + 1 < len(tokens)
    ]


@dataclass(frozen=True)
class Facts:
    """What the evidence (and the command line) provide, as far as the mapping cares."""

    intended_use: bool
    reference_standard: bool
    study_design: bool
    annotation: bool
    eligibility: bool
    real_data: bool
    external: bool
    subgroups: bool
    deidentification: bool
    study_years: bool
    intake: bool
    subgroup_counts: bool

    @classmethod
    def of(cls, src: ReportSource) -> Facts:
        """The facts of a report's sources."""
        sites = [s for s in src.data["sites"] if isinstance(s, dict)]
        headings = statement_headings(src.intended_use.text) if src.intended_use else []
        stated = {
            topic: any(word in h for h in headings for word in words)
            for topic, words in STATEMENT_TOPICS.items()
        }
        return cls(
            intended_use=src.intended_use is not None,
            **stated,
            real_data=not src.simulated,
            external=bool(dig(src.data, "run", "holdout_sites")),
            subgroups=bool(dig(src.data, "performance", "by_subgroup")),
            deidentification=_every_site(sites, "deidentification"),
            study_years=_every_site(sites, "study_years"),
            intake=_every_site(sites, "intake"),
            subgroup_counts=bool(sites) and all(dig(s, "subgroups", "counts") for s in sites),
        )


def _every_site(sites: list[dict[str, Any]], key: str) -> bool:
    """Whether there are sites and each has a mapping under ``key``."""
    return bool(sites) and all(isinstance(s.get(key), Mapping) for s in sites)


@dataclass(frozen=True)
class Item:
    """One principle or checklist item: ``where`` the report answers it, what it
    ``shows``; if a `Facts` field ``needs`` names (one, or a tuple of them) is false, the
    status is ``unmet`` and ``missing`` says why. ``partial``: the report covers the item
    only in part anyway."""

    ref: str
    title: str
    where: tuple[str, ...]
    shows: str
    needs: str | tuple[str, ...] = ()
    unmet: str = PARTLY
    missing: str = ""
    partial: bool = False

    def assess(self, facts: Facts) -> tuple[str, str]:
        """``(status, comment)`` for a report with ``facts``."""
        if not self.where:
            return NOT_SHOWN, self.shows
        needs = (self.needs,) if isinstance(self.needs, str) else self.needs
        if not all(getattr(facts, name) for name in needs):
            return self.unmet, f"{self.shows} Missing: {self.missing}"
        return (PARTLY if self.partial else SHOWN), self.shows


_INTENDED = "no intended-use statement (medfed report --intended-use FILE)."
_NOT_RECORDED = "not recorded in the evidence; to be documented by the manufacturer."


def _stated(heading: str) -> str:
    return (
        f"no '{heading}' section in the intended-use statement (medfed report --intended-use "
        "FILE): to be documented by the manufacturer."
    )


GMLP = (
    Item(
        "1",
        "Multi-disciplinary expertise is leveraged throughout the total product life cycle",
        (),
        "Organisational: not recorded in the evidence.",
    ),
    Item(
        "2",
        "Good software engineering and security practices are implemented",
        ("sec-model", "sec-training"),
        "Checkpoint and evidence SHA-256, code version, de-identified and encrypted site "
        "stores, differential privacy with an independent recomputation of every epsilon. "
        "The development process itself is outside the report.",
        partial=True,
    ),
    Item(
        "3",
        "Clinical study participants and data sets are representative of the "
        "intended patient population",
        ("sec-data", "sec-subgroups", "sec-performance"),
        "Sites, scanners (manufacturer, model) and subgroups with their case counts.",
        needs="intended_use",
        missing=_INTENDED,
        partial=True,
    ),
    Item(
        "4",
        "Training data sets are independent of test sets",
        ("sec-data", "sec-performance"),
        "Test splits held out of training; the threshold fixed on training splits; "
        "held-out sites tested as external data.",
        needs="external",
        missing="no site held out of training: independence at the case level only.",
    ),
    Item(
        "5",
        "Selected reference datasets are based upon best available methods",
        ("sec-intended-use",),
        "The reference standard behind the sites' labels, as the intended-use statement gives it.",
        needs="reference_standard",
        unmet=NOT_SHOWN,
        missing=_stated("Reference standard"),
    ),
    Item(
        "6",
        "Model design is tailored to the available data and reflects the intended "
        "use of the device",
        ("sec-model", "sec-training", "sec-intended-use"),
        "Architecture, parameters, training recipe and privacy settings.",
        needs="intended_use",
        missing=_INTENDED,
    ),
    Item(
        "7",
        "Focus is placed on the performance of the human-AI team",
        (),
        "Standalone performance only: no reader study is recorded.",
    ),
    Item(
        "8",
        "Testing demonstrates device performance during clinically relevant conditions",
        ("sec-performance", "sec-cross-site", "sec-calibration", "sec-subgroups", "sec-acceptance"),
        "Per-site, per-scanner and per-subgroup performance with intervals, heterogeneity, "
        "calibration and pre-specified acceptance criteria.",
        needs="real_data",
        missing="the data are simulated (scanner differences simulated).",
    ),
    Item(
        "9",
        "Users are provided clear, essential information",
        ("sec-intended-use", "sec-performance", "sec-limitations"),
        "Task, performance with intervals, limitations.",
        needs="intended_use",
        missing=_INTENDED,
    ),
    Item(
        "10",
        "Deployed models are monitored for performance and re-training risks are managed",
        ("sec-model",),
        "Checkpoints identified by SHA-256 for change control; post-deployment monitoring "
        "is not part of this run.",
        partial=True,
    ),
)

CLAIM = (
    Item(
        "1",
        "Identification as a study of AI methodology",
        ("sec-model",),
        "Model architecture and training regime.",
    ),
    Item("2", "Structured summary", ("sec-summary",), "Summary of data, results, acceptance."),
    Item(
        "3",
        "Scientific and clinical background, intended use and clinical role",
        ("sec-intended-use",),
        "Task definition.",
        needs="intended_use",
        missing=_INTENDED,
    ),
    Item(
        "4",
        "Study objectives and hypotheses",
        ("sec-acceptance",),
        "Pre-specified acceptance criteria.",
        partial=True,
    ),
    Item(
        "5",
        "Prospective or retrospective study",
        ("sec-intended-use",),
        "The study design, as the intended-use statement gives it.",
        needs="study_design",
        unmet=NOT_SHOWN,
        missing=_stated("Study design"),
    ),
    Item(
        "6",
        "Study goal (model creation, feasibility, non-inferiority, ...)",
        ("sec-training", "sec-acceptance"),
        "Federated training or evaluation-only job, judged by the acceptance plan.",
    ),
    Item("7", "Data sources", ("sec-data",), "Sites, case counts, data description."),
    Item(
        "8",
        "Eligibility criteria: how, where and when cases were identified",
        ("sec-data",),
        "Sites, scanners, modalities, body parts and the years of the studies per site; the "
        "eligibility criteria as the intended-use statement gives them.",
        needs=("study_years", "eligibility"),
        unmet=PARTLY,
        missing="study years (evidence.json sites[].study_years) or an 'Eligibility' section "
        "in the intended-use statement (medfed report --intended-use FILE).",
    ),
    Item(
        "9",
        "Data pre-processing steps",
        ("sec-intended-use",),
        "medfed's fixed preprocessing (decoding, resizing, intensity scaling).",
    ),
    Item(
        "10",
        "Selection of data subsets",
        ("sec-data",),
        "Splits, held-out sites, strata withheld by sites.",
    ),
    Item(
        "11",
        "Definitions of data elements (common data elements)",
        ("sec-intended-use",),
        "Label and subgroup columns.",
        partial=True,
    ),
    Item(
        "12",
        "De-identification methods",
        ("sec-data",),
        "De-identification per site.",
        needs="deidentification",
        unmet=NOT_SHOWN,
        missing="profile and options (evidence.json sites[].deidentification).",
    ),
    Item(
        "13",
        "How missing data were handled",
        ("sec-data",),
        "Instances that could not be used are quarantined at their site, counted with their "
        "reasons; strata withheld and site failures are listed. Missing label or subgroup "
        "values exclude a case from that stratum only.",
        needs="intake",
        unmet=PARTLY,
        missing="quarantine counts (evidence.json sites[].intake).",
    ),
    Item(
        "14",
        "Definition of the ground-truth reference standard",
        ("sec-intended-use",),
        "The reference standard, as the intended-use statement gives it.",
        needs="reference_standard",
        unmet=NOT_SHOWN,
        missing=_stated("Reference standard"),
    ),
    Item("15", "Rationale for the reference standard", (), "Not recorded in the evidence."),
    Item(
        "16",
        "Source of ground-truth annotations; annotators' qualifications",
        ("sec-intended-use",),
        "The annotation process, as the intended-use statement gives it.",
        needs="annotation",
        unmet=NOT_SHOWN,
        missing=_stated("Annotation"),
    ),
    Item("17", "Annotation tools", (), "Not recorded in the evidence."),
    Item("18", "Inter- and intra-rater variability", (), "Not recorded in the evidence."),
    Item(
        "19",
        "Intended sample size and how it was determined",
        (),
        "No sample-size calculation is recorded (acceptance criteria may set min_n).",
    ),
    Item(
        "20",
        "How data were assigned to partitions; proportions",
        ("sec-data",),
        "Train and test counts per site.",
    ),
    Item(
        "21",
        "Level at which partitions are disjoint",
        ("sec-data", "sec-performance"),
        "Case-level splits within sites; held-out sites disjoint at the institution level.",
        needs="external",
        missing="no site held out: disjoint at the case level only.",
    ),
    Item(
        "22",
        "Detailed description of the model",
        ("sec-model",),
        "Architecture, configuration, parameter count.",
    ),
    Item(
        "23",
        "Software libraries, frameworks and packages",
        ("sec-model",),
        "medfed code version (its pinned dependencies are in its pyproject.toml).",
        partial=True,
    ),
    Item(
        "24",
        "Initialisation of model parameters",
        ("sec-training",),
        "Seed of the run.",
        partial=True,
    ),
    Item(
        "25",
        "Details of the training approach",
        ("sec-training",),
        "Strategy, rounds, local training settings, differential privacy.",
    ),
    Item(
        "26",
        "Method of selecting the final model",
        ("sec-model",),
        "The final round's global checkpoint, identified by SHA-256.",
    ),
    Item("27", "Ensembling techniques", ("sec-model",), "One model; no ensembling."),
    Item(
        "28",
        "Metrics of model performance",
        ("sec-performance",),
        "AUC, sensitivity, specificity, PPV, NPV.",
    ),
    Item(
        "29",
        "Statistical measures of significance and uncertainty",
        ("sec-performance",),
        "95% CIs (DeLong, Wilson), heterogeneity tests, DeLong differences.",
    ),
    Item(
        "30",
        "Robustness or sensitivity analysis",
        ("sec-performance", "sec-cross-site", "sec-subgroups"),
        "Per-site, per-scanner and per-subgroup results; cross-site matrix.",
        needs="real_data",
        missing="scanner differences simulated.",
    ),
    Item(
        "31",
        "Methods for explainability or interpretability",
        (),
        "No explainability analysis is recorded.",
    ),
    Item(
        "32",
        "Validation or testing on external data",
        ("sec-performance",),
        "External validation on held-out sites.",
        needs="external",
        missing="no site held out of training (local-only models are tested on unseen sites "
        "in the cross-site matrix).",
    ),
    Item(
        "33",
        "Flow of participants or cases",
        ("sec-data",),
        "Per site: instances received, quarantined (with reasons) and stored, and the "
        "cases used per split.",
        needs="intake",
        unmet=PARTLY,
        missing="intake and quarantine counts (evidence.json sites[].intake).",
    ),
    Item(
        "34",
        "Demographic and clinical characteristics of cases in each partition",
        ("sec-data", "sec-subgroups"),
        "Subgroup counts (sex, age band) per site in the training and test splits; "
        "test-split performance per subgroup.",
        needs="subgroup_counts",
        unmet=PARTLY,
        missing="no subgroup counts per split in the evidence (evidence.json sites[].subgroups).",
        partial=True,
    ),
    Item(
        "35",
        "Performance metrics for the optimal model on all data partitions",
        ("sec-performance",),
        "Test-split performance; training-split performance is not reported.",
        partial=True,
    ),
    Item(
        "36",
        "Estimates of diagnostic accuracy and their precision",
        ("sec-performance",),
        "Every metric with its 95% CI.",
    ),
    Item(
        "37",
        "Failure analysis of incorrectly classified cases",
        ("sec-performance",),
        "Confusion counts per stratum only: no case-level data leave the sites.",
        partial=True,
    ),
    Item("38", "Study limitations", ("sec-limitations",), "Limitations section."),
    Item(
        "39",
        "Implications for practice, intended use and clinical role",
        ("sec-intended-use",),
        "Task definition.",
        needs="intended_use",
        unmet=NOT_SHOWN,
        missing=_INTENDED,
    ),
    Item("40", "Registration number and name of registry", (), "Not recorded in the evidence."),
    Item(
        "41",
        "Where the full study protocol can be accessed",
        ("sec-acceptance",),
        "The acceptance plan's name, version and SHA-256.",
        partial=True,
    ),
    Item("42", "Sources of funding and other support", (), "Not recorded in the evidence."),
)


def mapping_table(caption: str, source: str, items: tuple[Item, ...], facts: Facts) -> Table:
    """One row per item: number, title, the sections answering it (linked), status and
    comment."""
    rows = []
    for item in items:
        status, comment = item.assess(facts)
        where = ", ".join(SECTION_TITLES[a] for a in item.where) or "—"
        link = item.where[0] if item.where else ""
        rows.append(
            row(
                item.ref,
                item.title,
                Cell(where, href=f"#{link}" if link else ""),
                Cell(status, css={SHOWN: "pass", PARTLY: "partly", NOT_SHOWN: "fail"}[status]),
                comment,
            )
        )
    return Table(
        caption, source, ("#", "Item", "Where", "Status", "Comment"), tuple(rows), about_data=False
    )


def principles(src: ReportSource) -> Section:
    """Good Machine Learning Practice and CLAIM."""
    facts = Facts.of(src)
    return Section(
        "sec-principles",
        "Good Machine Learning Practice and CLAIM",
        (
            mapping_table(
                "The 10 guiding principles of Good Machine Learning Practice for Medical Device "
                "Development (FDA, Health Canada, MHRA, 2021), and where this report answers "
                "them.",
                "this report's sections",
                GMLP,
                facts,
            ),
            mapping_table(
                "The CLAIM checklist (Mongan et al., Radiology: Artificial Intelligence 2020; "
                "items numbered as there), and where this report answers each item.",
                "this report's sections",
                CLAIM,
                facts,
            ),
        ),
    )
