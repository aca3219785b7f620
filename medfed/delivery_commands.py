"""``medfed site deliver``, and the scoring options it shares with ``site review build``:
argument parsing and printing only; the work is in `site_client.delivery`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medfed.progress import CountProgress
from task.architectures import CLASSIFICATION, models_for

#: site_client.delivery.results.CASE_CHOICES, repeated so that --help need not import torch
#: (tests/test_delivery.py checks that the two agree).
DELIVERY_CASES = ("test", "train", "received", "all")


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a probability in (0, 1), got {text}")
    return value


def add_scoring_options(parser: argparse.ArgumentParser) -> None:
    """The site store, frozen model, operating threshold, cases and uncertainty band of a
    command that scores a site's cases (``site deliver``, ``site review build``)."""
    parser.add_argument(
        "--site-dir", type=Path, required=True, metavar="SITE", help="the site store"
    )
    parser.add_argument(
        "--model", type=Path, required=True, metavar="CKPT", help="the checkpoint file (.pt)"
    )
    parser.add_argument(
        "--architecture",
        choices=models_for(CLASSIFICATION),
        help="the checkpoint's architecture, a classifier (default: the evidence's, else blob)",
    )
    threshold = parser.add_mutually_exclusive_group(required=True)
    threshold.add_argument(
        "--threshold", type=_probability, metavar="P", help="the operating threshold"
    )
    threshold.add_argument(
        "--evidence",
        type=Path,
        metavar="RUN/evidence.json",
        help="take the threshold from the run's operating_point.threshold (its model.sha256 "
        "must be the checkpoint's)",
    )
    parser.add_argument(
        "--cases",
        choices=DELIVERY_CASES,
        default="all",
        help="which cases: a split of the manifest, received cases waiting for a label, or all "
        "(default: all)",
    )
    parser.add_argument(
        "--uncertainty-band",
        type=float,
        metavar="W",
        help="a score closer than W to the threshold is equivocal, review advised (default: "
        "site.toml's [delivery] uncertainty_band, else 0.05)",
    )


def scoring_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of `add_scoring_options` but the site and model, as a
    ``site_client.delivery.results.ScoringRequest`` takes them."""
    return {
        "threshold": args.threshold,
        "evidence": args.evidence,
        "architecture": args.architecture,
        "cases": args.cases,
        "uncertainty_band": args.uncertainty_band,
    }


def add_deliver_command(site_commands: argparse._SubParsersAction) -> None:
    """``medfed site deliver``."""
    deliver = site_commands.add_parser(
        "deliver",
        help="each case's AI result for the hospital's EHR (FHIR) and PACS (DICOM SR, overlay)",
        description="Runs at the site, inside the hospital: scores the site store's cases "
        "with a frozen model and writes, under --out only (new or empty; nothing is sent "
        "anywhere and nothing is written unless all is): DIR/fhir/<case>.json, a FHIR R4 "
        "transaction Bundle per case (DiagnosticReport, Observations for the score and the "
        "finding, the model as a Device named by its checkpoint's SHA-256, Provenance), "
        "validated with fhir.resources; with --format sr or sc, DIR/dicom/<case>-sr.dcm "
        "(Comprehensive 3D SR) and DIR/dicom/<case>-sc.dcm (secondary capture with the result "
        "burnt in); DIR/results.csv and DIR/delivery.json. Results are preliminary (not "
        "verified by a clinician). The store is de-identified: results carry the pseudonymous "
        "case id unless --link gives the hospital's identifiers, which the DICOM formats need.",
    )
    add_scoring_options(deliver)
    deliver.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    deliver.add_argument(
        "--format",
        default="fhir",
        metavar="fhir[,sr][,sc]",
        help="what to write, comma-separated: fhir, sr (DICOM SR), sc (DICOM secondary-capture "
        "overlay) (default: fhir)",
    )
    deliver.add_argument(
        "--link",
        type=Path,
        metavar="CSV",
        help="the hospital's identifiers, keyed by original SOP Instance UID: sop_instance_uid"
        "[,patient_id][,accession_number][,study_instance_uid][,series_instance_uid]"
        "[,sop_class_uid]; read, never stored",
    )
    deliver.set_defaults(run=_deliver)


def _deliver(args: argparse.Namespace) -> None:
    from site_client.delivery.deliver import DeliveryRequest, deliver

    request = DeliveryRequest(
        args.site_dir,
        args.model,
        args.out,
        formats=tuple(f.strip() for f in args.format.split(",") if f.strip()),
        link=args.link,
        **scoring_options(args),
    )
    progress = CountProgress()
    summary = deliver(request, progress=lambda done, total: progress("cases", done, total))
    files = ", ".join(f"{n} {kind}" for kind, n in summary.files.items())
    print(
        f"{summary.cases} cases: {summary.positive} positive, {summary.equivocal} equivocal, "
        f"{summary.linked} linked to the hospital's identifiers; files: {files}"
    )
    print(
        f"model {summary.model.name} (SHA-256 {summary.model.sha256}), threshold "
        f"{summary.operating.threshold:.4f} ({summary.operating.source})"
    )
    print(f"results (preliminary, not verified by a clinician): {summary.out}")
