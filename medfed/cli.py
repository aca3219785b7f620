"""The ``medfed`` command: argument parsing and dispatch, nothing else.

Exit status: 0 on success, 2 on bad usage, 1 on failure with a one-line reason on stderr
(the traceback too with ``--debug``).
"""

from __future__ import annotations

import argparse
import math
import secrets
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from medfed.delivery_commands import add_deliver_command
from medfed.deploy_commands import add_coordinator_commands, add_site_commands
from medfed.options import (
    MODELS,
    Usage,
    add_acceptance_option,
    add_federation_options,
    add_ray_address_option,
    add_seed,
    add_task_option,
    epsilon_value,
    positive_int,
    print_evidence,
    privacy_config,
    resolve_model,
    say,
)
from medfed.progress import CountProgress
from medfed.review_commands import add_review_commands
from medfed.sweep_commands import add_sweep_command
from task.architectures import CLASSIFICATION, DEFAULT_MODELS, models_for
from task.runtime import apply_offline_environment

#: The model zoo's classifiers: what drift checks score.
CLASSIFIERS = models_for(CLASSIFICATION)


def _add_phantom_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sites", type=positive_int, default=4, metavar="N", help="phantom hospitals (default: 4)"
    )
    parser.add_argument(
        "--cases-per-site",
        type=positive_int,
        metavar="M",
        help="cases at every site (default: 60 to 400, varied)",
    )


# --- quantize (site_client.quantization) ---
def _add_quantize_command(commands: argparse._SubParsersAction) -> None:
    quantize = commands.add_parser(
        "quantize",
        help="an int8 version of a run's final model, for inference at the edge",
        description="Quantizes the final model that RUN/evidence.json names (its checkpoint's "
        "SHA-256 checked) into FILE, a TorchScript file (torch.jit.load opens it without "
        "medfed), and writes FILE's record beside it (.json: SHA-256 and size of both files, "
        "scheme, calibration). Convolutional models: static post-training quantization for "
        "x86 CPUs of the convolutions and linear layers (int8 weights and inputs), whose "
        "input ranges are calibrated on the training images of --site-dir (they stay at the "
        "site; the ranges in FILE are not DP-protected: keep FILE at the site). vit: dynamic "
        "quantization of its linear layers, no calibration. docs/benchmarks.md has each "
        "model's AUC and latency, float and int8.",
    )
    quantize.add_argument("run_dir", type=Path, metavar="RUN", help="run directory (evidence.json)")
    quantize.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="the int8 model file to write"
    )
    quantize.add_argument(
        "--site-dir",
        type=Path,
        metavar="SITE",
        help="the site store whose training images calibrate the ranges (required but for vit)",
    )
    quantize.add_argument(
        "--calibration-cases",
        type=positive_int,
        default=128,
        metavar="N",
        help="training cases to calibrate on, at most (default: 128)",
    )
    quantize.set_defaults(run=_quantize)


def _quantize(args: argparse.Namespace) -> None:
    from site_client.quantization import write_int8_model

    record = write_int8_model(args.run_dir, args.out, args.site_dir, args.calibration_cases)
    calibration = (
        f"calibrated on {record.calibration['cases']} training cases of site "
        f"{record.calibration['site']}"
        if record.calibration
        else "no calibration"
    )
    print(
        f"int8 model ({record.architecture}, {record.scheme} quantization, {calibration}): "
        f"{args.out} ({record.bytes:,} bytes; float checkpoint {record.source_bytes:,} bytes)"
    )
    print(f"sha256: {record.sha256}")
    print(f"record: {args.out.with_suffix('.json')}")


# --- report (validation.report) ---
def _add_report_command(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report",
        help="write RUN/report.html and RUN/report.pdf from RUN/evidence.json",
        description="Writes RUN/report.html, one self-contained page that opens offline "
        "(Plotly's JavaScript inlined; the page loads nothing), and RUN/report.pdf, the same "
        "page printed by headless Chromium (apt-get install chromium, or MEDFED_CHROMIUM=PATH). "
        "It reads only RUN/evidence.json (and --intended-use): intended use and task, data "
        "provenance, model identity, training and privacy, performance with intervals and "
        "forest plots, the cross-site matrix, calibration, subgroups, acceptance, limitations, "
        "and where it answers the Good Machine Learning Practice principles and the CLAIM "
        "checklist. What the evidence lacks is listed as a gap, never filled in.",
    )
    report.add_argument("run_dir", type=Path, metavar="RUN", help="run directory (evidence.json)")
    report.add_argument(
        "--intended-use",
        type=Path,
        metavar="FILE",
        help="the device's intended-use statement (Markdown or text), from the manufacturer; "
        "without it the report marks the intended use as missing",
    )
    report.add_argument(
        "--no-pdf",
        action="store_true",
        help="write report.html only (an older report.pdf is removed); without Chromium, "
        "report.html is written and the command fails saying how to get the PDF",
    )
    report.set_defaults(run=_report)


def _report(args: argparse.Namespace) -> None:
    from validation.report import write_report

    files = write_report(args.run_dir, args.intended_use, pdf=not args.no_pdf)
    print(f"report: {files.html}")
    if files.pdf is not None and files.page is not None:
        print(
            f"        {files.pdf} ({files.page.figures} figures drawn, no console error, "
            "no network request)"
        )


# --- dashboard (dashboards) ---
def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 1 to 65535, got {value}")
    return value


def _add_dashboard_command(commands: argparse._SubParsersAction) -> None:
    dashboard = commands.add_parser(
        "dashboard",
        help="the Streamlit dashboard over run directories",
        description="Serves a Streamlit dashboard over one or more run directories (their "
        "evidence.json and rounds.jsonl) until Ctrl-C: Federation (sites, scanners, "
        "participation per round, epsilon spent, refusals and dropouts), Training (global and "
        "per-site metrics per round, runs side by side), Cross-site and cross-scanner (the "
        "cross-site matrix, forest plots, ROC and calibration curves), Acceptance (each "
        "criterion with a drill-down into its scopes; downloads of the report and evidence) "
        "and Monitoring (data drift at the sites from an evaluation-only job, medfed "
        "validate: alarms, PSI and KS per site, scanner group and feature). A segmentation "
        "run shows its Dice and HD95 with their intervals in place of AUC. "
        "It works offline (nothing is loaded from outside the dashboard's address) with "
        "Streamlit's usage statistics off. A partial or corrupt run directory is shown with "
        "its problems in the page.",
    )
    dashboard.add_argument(
        "run_dirs", type=Path, nargs="+", metavar="RUN", help="run directory (evidence.json)"
    )
    dashboard.add_argument(
        "--port", type=_port, default=8501, metavar="P", help="port to serve on (default: 8501)"
    )
    dashboard.add_argument(
        "--address",
        default="127.0.0.1",
        metavar="ADDR",
        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for all)",
    )
    dashboard.set_defaults(run=_dashboard)


def _dashboard(args: argparse.Namespace) -> None:
    from dashboards.launch import serve

    serve(args.run_dirs, port=args.port, address=args.address, debug=args.debug)


def _add_consortium_command(commands: argparse._SubParsersAction) -> None:
    consortium = commands.add_parser(
        "consortium",
        help="set up a consortium across machines",
        description="A consortium across machines: its CA, the coordinator's TLS certificate "
        "and model-signing key, and one kit per site.",
    )
    consortium_commands = consortium.add_subparsers(
        dest="consortium_command", required=True, metavar="COMMAND"
    )
    init = consortium_commands.add_parser(
        "init",
        help="make the consortium's keys, certificates and site kits",
        description="Writes DIR: a consortium CA (its key to be moved offline), the "
        "coordinator's TLS certificate for --coordinator-host (also valid for localhost and "
        "127.0.0.1), the coordinator's Ed25519 model-signing key, an authentication key pair "
        "per site for its SuperNode, and DIR/kits/<site>/ holding only what that site needs "
        "(CA certificate, the model-signing public key, its own SuperNode key, kit.toml, "
        "README.txt). Private keys are mode 0600 and never printed.",
    )
    init.add_argument("--out", type=Path, required=True, metavar="DIR", help="consortium folder")
    init.add_argument(
        "--sites", required=True, metavar="a,b,c", help="the sites' ids, comma-separated"
    )
    init.add_argument(
        "--coordinator-host",
        default="localhost",
        metavar="HOST",
        help="the host name or IP address sites reach the coordinator at (default: localhost)",
    )
    init.set_defaults(run=_consortium_init)


def _consortium_init(args: argparse.Namespace) -> None:
    from server.consortium import init_consortium, instructions, parse_sites

    sites = parse_sites(args.sites)
    layout = init_consortium(args.out, sites, args.coordinator_host)
    print(instructions(layout, sites))


def _add_audit_command(commands: argparse._SubParsersAction) -> None:
    audit = commands.add_parser(
        "audit",
        help="audit trails of sites and coordinator",
        description="Audit trails: append-only, hash-chained logs of who did what when "
        "(SITE/audit.jsonl at each site; the coordinator's in its run or consortium folder).",
    )
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = audit_commands.add_parser(
        "verify",
        help="check that an audit trail is intact",
        description="Checks every entry's hash and its link to the entry before, and the "
        "head file (LOG's name with .head) that records how many entries there were: an "
        "edited, removed, reordered or truncated entry, or a deleted trail, is an error "
        "naming the line (exit 1). A trail rewritten from its first entry with its head file "
        "cannot be told from an intact one: compare it with a copy kept elsewhere (the "
        "coordinator's trail records each site's entry count and last hash whenever the "
        "site joins a run).",
    )
    verify.add_argument(
        "log", type=Path, metavar="LOG", help="audit.jsonl, or the folder holding it"
    )
    verify.set_defaults(run=_audit_verify)


def _audit_verify(args: argparse.Namespace) -> None:
    from task.audit import verify_audit_log

    summary = verify_audit_log(args.log)
    print(
        f"{args.log}: intact, {summary.entries} entries"
        + (f" from {summary.first} to {summary.last}" if summary.entries else "")
        + f", last hash {summary.last_hash}"
    )


def _demo_report(run_dir: Path) -> None:
    """The demo's report, with the demo's intended-use statement: HTML and PDF, or only the
    HTML (saying so) without Chromium."""
    from simulations.demo import DEMO_INTENDED_USE
    from validation.report import write_report
    from validation.report.browser import INSTALL_HINT, find_chromium

    files = write_report(run_dir, DEMO_INTENDED_USE, pdf=find_chromium() is not None)
    print(f"report:        {files.html.resolve()}")
    if files.pdf is None:
        say(f"report.pdf not written: no Chromium ({INSTALL_HINT}), then medfed report {run_dir}")
    else:
        print(f"               {files.pdf.resolve()}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``medfed`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="medfed",
        description="Federated multi-site validation and learning for medical imaging.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and Flower's logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="the whole job on one machine, from phantom hospitals to evidence",
        description="Phantom hospitals -> ingest at each site -> federated training with "
        "DP-SGD at every site (epsilon 8 by default) on Flower's simulation runtime, with "
        "local-only and pooled-centralized baselines -> cross-site validation -> "
        "RUN/evidence.json, and a per-site, per-scanner table. --task segmentation trains a "
        "U-Net on the phantoms' lesion masks (without DP unless --epsilon is given) and "
        "reports Dice and HD95 with their intervals.",
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("medfed-demo"),
        metavar="DIR",
        help="output folder (default: ./medfed-demo)",
    )
    _add_phantom_options(demo)
    add_federation_options(demo)
    add_acceptance_option(demo)
    demo.set_defaults(run=_demo)

    phantoms = commands.add_parser(
        "phantoms",
        help="write phantom hospitals: DICOM folders with labels.csv",
        description="Writes DIR/<site>/dicom/**.dcm (CT Image Storage, simulated scanners of four "
        "vendors, fake PHI in the headers), DIR/<site>/labels.csv and DIR/<site>/masks/.",
    )
    phantoms.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    _add_phantom_options(phantoms)
    phantoms.add_argument(
        "--image-size", type=positive_int, default=64, help="pixels per side (default: 64)"
    )
    add_seed(phantoms)
    phantoms.set_defaults(run=_phantoms)

    deid = commands.add_parser(
        "deid",
        help="a de-identified copy of a DICOM tree",
        description="De-identifies every DICOM file under IN_DIR into OUT_DIR (DICOM PS3.15 "
        "Annex E, Basic Application Level Confidentiality Profile with the options below), "
        "named by replaced UIDs, with OUT_DIR/deid-report.json (counts, profile, options). "
        "Files that cannot be de-identified are copied with their reasons to "
        "OUT_DIR-quarantine/ (quarantine.csv), which also holds deid-log.csv (every input "
        "file and its output): keep that folder at the site, it names input files. "
        "Originals are untouched.",
    )
    deid.add_argument("in_dir", type=Path, metavar="IN_DIR")
    deid.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    deid.add_argument(
        "--key",
        type=Path,
        help="file holding the secret (hex) for pseudonyms and UIDs; created (mode 0600) if "
        "absent. Without it a one-time key is used and pseudonyms cannot be re-linked.",
    )
    for flag, what in (
        ("retain-device-identity", "keep device identifiers such as serial numbers"),
        ("modified-dates", "shift dates and times by a keyed offset per patient"),
        ("clean-descriptors", "keep the safe words of descriptions"),
        ("safe-private", "keep the safe-listed private attributes"),
    ):
        deid.add_argument(
            f"--{flag}",
            action=argparse.BooleanOptionalAction,
            default=True,
            help=f"profile option: {what} (default: on; --no-{flag} turns it off)",
        )
    deid.add_argument(
        "--allow-burned-in-text",
        action="store_true",
        help="also write images that may carry text burned into their pixels (ultrasound, "
        "secondary captures, radiographs not stating BurnedInAnnotation NO), which header "
        "de-identification cannot remove; default: quarantine them",
    )
    deid.set_defaults(run=_deid)

    site = commands.add_parser("site", help="site operations", description="Operations at a site.")
    site_commands = site.add_subparsers(dest="site_command", required=True, metavar="COMMAND")
    ingest = site_commands.add_parser(
        "ingest",
        help="de-identify, decode and store a site's cases",
        description="Reads every file under --dicom, de-identifies and decodes it and stores it in "
        "the site store --site-dir under a pseudonymous id, with its label from --labels. Files "
        "that cannot be used are copied to SITE/quarantine with their reasons.",
    )
    ingest.add_argument(
        "--site-dir", type=Path, required=True, help="the site store (created if new)"
    )
    ingest.add_argument("--dicom", type=Path, required=True, help="folder of DICOM files")
    ingest.add_argument(
        "--labels",
        type=Path,
        required=True,
        help="labels.csv: path,label[,split][,mask][,subgroups...]",
    )
    ingest.add_argument(
        "--site-id", help="the site's name in the consortium (default: folder name)"
    )
    ingest.add_argument(
        "--test-fraction",
        type=float,
        default=0.3,
        help="test share when labels.csv has no split (default: 0.3)",
    )
    add_seed(ingest)
    ingest.set_defaults(run=_ingest)

    quarantine = site_commands.add_parser(
        "quarantine",
        help="list the site's quarantined files, or export them for inspection",
        description="Lists what intake (ingest, receive) could not use: each file's source, "
        "reason and SHA-256, from the store's encrypted quarantine. With --export DIR it "
        "writes the decrypted originals into DIR (created, mode 0700) under their source "
        "names, for inspection at the site; they may carry patient data.",
    )
    quarantine.add_argument("--site-dir", type=Path, required=True, help="the site store")
    quarantine.add_argument("--export", type=Path, metavar="DIR", help="decrypt copies into DIR")
    quarantine.set_defaults(run=_quarantine)

    receive = site_commands.add_parser(
        "receive",
        help="a DICOM receiver (C-STORE SCP) that de-identifies and stores what it receives",
        description="Listens for DICOM C-STORE (and C-ECHO) until interrupted (Ctrl-C or "
        "SIGTERM). Only senders whose calling AE title is allowed may associate; others are "
        "rejected (calling AE title not recognised). Each instance is de-identified, decoded "
        "and stored under a pseudonymous id, waiting for a label (medfed site label), or "
        "quarantined with its reason; SITE/intake-reports/ gets the session's counts. "
        "Settings come from SITE/site.toml's [receiver] table (ae_title, port, bind, "
        "allowed_ae_titles); the options below override them for this run only. To allow "
        'senders permanently, put allowed_ae_titles = ["PACS", ...] under [receiver] in '
        "SITE/site.toml: with no allowed AE title the receiver does not start.",
    )
    receive.add_argument(
        "--site-dir", type=Path, required=True, help="the site store (created if new)"
    )
    receive.add_argument(
        "--ae-title",
        metavar="T",
        help="the receiver's AE title (default: site.toml's, else MEDFED)",
    )
    receive.add_argument(
        "--port", type=int, metavar="P", help="TCP port (default: site.toml's, else 11112)"
    )
    receive.add_argument(
        "--bind",
        metavar="ADDR",
        help="address to listen on (default: site.toml's, else 127.0.0.1: this machine only; "
        "0.0.0.0: the network)",
    )
    receive.add_argument(
        "--allow",
        nargs="+",
        action="extend",
        metavar="AE",
        help="calling AE titles that may send, for this run (instead of site.toml's)",
    )
    receive.set_defaults(run=_receive)

    label = site_commands.add_parser(
        "label",
        help="label received cases, moving them into the site's manifest",
        description="Reads a CSV with columns sop_instance_uid (the instance's original SOP "
        "Instance UID, as the hospital's PACS or RIS knows it), label (0/1), optional split "
        "(train/test) and optional subgroup columns, and moves the received cases it names "
        "(medfed site receive) into the manifest. Rows without a split get a seeded split "
        "stratified by label. Reports rows naming no received case, and invalid rows, by "
        "line number.",
    )
    label.add_argument("--site-dir", type=Path, required=True, help="the site store")
    label.add_argument(
        "--labels",
        type=Path,
        required=True,
        help="CSV: sop_instance_uid,label[,split][,subgroups...]",
    )
    label.add_argument(
        "--test-fraction",
        type=float,
        default=0.3,
        help="test share when the CSV has no split (default: 0.3)",
    )
    add_seed(label)
    label.set_defaults(run=_label)

    budget = site_commands.add_parser(
        "budget",
        help="the site's privacy ceiling and what its ledger says it has spent",
        description="Checks the site's privacy ledger (SITE/privacy-ledger.jsonl: every model "
        "released, hash-chained), prints each release and the epsilon spent over all runs, "
        "recomputed independently with dp-accounting, against the site's ceiling. With "
        "--max-epsilon or --delta it first sets them in SITE/site.toml.",
    )
    budget.add_argument("--site-dir", type=Path, required=True, help="the site store")
    budget.add_argument(
        "--max-epsilon",
        type=epsilon_value,
        metavar="E",
        help="set the most privacy loss the site accepts, over all runs",
    )
    budget.add_argument(
        "--delta",
        type=float,
        metavar="D",
        help="set the site's delta (default: 0.1 / training cases)",
    )
    budget.set_defaults(run=_budget)

    drift = site_commands.add_parser(
        "drift",
        help="has the site's new data drifted from what the model was validated on?",
        description="Compares the site's new cases (received over DICOM, not labelled yet) "
        "with its labelled ones, site-wide and per scanner group: each image's intensity mean "
        "and standard deviation (stored values, modality units) and the model's score, by "
        "PSI and two-sample KS on the labelled cases' deciles. Alarm: a shift both "
        "significant (KS p < 0.001) and material (PSI >= 0.1), or new data from a scanner "
        "group never validated on. Prints the table, "
        "keeps the report in SITE/drift-reports/ and records the check in SITE/audit.jsonl. "
        "Runs at the site; nothing leaves it.",
    )
    drift.add_argument("--site-dir", type=Path, required=True, help="the site store")
    drift.add_argument(
        "--model", type=Path, required=True, metavar="CKPT", help="the model's checkpoint (.pt)"
    )
    drift.add_argument(
        "--architecture",
        choices=CLASSIFIERS,
        default="blob",
        help="its architecture, a classifier (default: blob)",
    )
    drift.set_defaults(run=_site_drift)
    add_deliver_command(site_commands)
    add_review_commands(site_commands)
    add_site_commands(site_commands)

    validate = commands.add_parser(
        "validate",
        help="an evaluation-only job: a frozen model tested at every site, no training",
        description="Runs a frozen checkpoint (a medfed run's, or an external PyTorch state "
        "dict for the same task and architecture) at every site store, with no training and "
        "so no privacy spent, and writes RUN/evidence.json: performance per site, scanner "
        "and subgroup with intervals, and the acceptance results. The operating threshold "
        "is --threshold if given, else chosen on the sites' training splits. Each site also "
        "checks drift: its new cases (received, not labelled yet) against its labelled ones, "
        "per scanner group (evidence.drift; the full report stays at the site).",
    )
    validate.add_argument(
        "--model", type=Path, required=True, metavar="CKPT", help="the checkpoint file (.pt)"
    )
    validate.add_argument(
        "--architecture",
        choices=MODELS,
        help=f"the checkpoint's architecture: {', '.join(MODELS)} (default: --task's, "
        + ", ".join(f"{model} for {task}" for task, model in DEFAULT_MODELS.items())
        + ")",
    )
    add_task_option(validate)
    validate.add_argument(
        "--site-dir",
        type=Path,
        action="append",
        required=True,
        metavar="SITE",
        help="a site store (repeat for each site)",
    )
    validate.add_argument("--out", type=Path, required=True, metavar="RUN", help="run directory")
    validate.add_argument(
        "--threshold",
        type=float,
        metavar="P",
        help="operating threshold, a probability fixed beforehand (e.g. the training run's "
        "evidence operating_point.threshold)",
    )
    validate.add_argument(
        "--simulated-data",
        action="store_true",
        help="say in the evidence that the sites or scanner differences are simulated",
    )
    add_acceptance_option(validate)
    validate.set_defaults(run=_validate)

    simulate = commands.add_parser(
        "simulate",
        help="a federation of existing site stores, or of a scenario file, on Flower's "
        "simulation runtime",
        description="Runs a federation over site stores made by `medfed site ingest`, with "
        "DP-SGD at every site (epsilon 8 by default, within each site's own ceiling), "
        "local-only and pooled-centralized baselines, and writes RUN/evidence.json. With "
        "--scenario FILE instead of --site-dir, the scenario (TOML: sites, quantity and label "
        "skew, scanners, strategy, privacy, model, rounds, seeds and faults to inject; "
        "examples in simulations/scenarios/) says everything: its phantom sites are made "
        "and ingested under RUN (RUN/phantoms, RUN/sites), the federation runs with its "
        "faults injected at the sites (dropouts, stragglers, crashes, malformed and Byzantine "
        "updates), and the evidence records the scenario and who took part in each round.",
    )
    simulate.add_argument(
        "--site-dir",
        type=Path,
        action="append",
        help="a site store (repeat, at least 2)",
    )
    simulate.add_argument(
        "--scenario",
        type=Path,
        metavar="FILE",
        help="a simulation scenario (TOML) instead of --site-dir; the federation options "
        "below come from it and may not be given (README, Scenarios and faults)",
    )
    simulate.add_argument("--out", type=Path, required=True, metavar="RUN", help="run directory")
    simulate.add_argument(
        "--no-pooled-baseline", action="store_true", help="skip the pooled-centralized baseline"
    )
    simulate.add_argument(
        "--holdout",
        action="append",
        metavar="SITE",
        help="leave-one-site-out external validation: SITE (a site id; repeatable) trains "
        "nothing and is only tested on; its results are in the evidence's external_validation",
    )
    simulate.add_argument(
        "--simulated-data",
        action="store_true",
        help="say in the evidence that the sites or scanner differences are simulated",
    )
    add_ray_address_option(simulate)
    add_federation_options(simulate)
    add_acceptance_option(simulate)
    simulate.set_defaults(run=_simulate)
    _add_quantize_command(commands)
    _add_report_command(commands)
    _add_audit_command(commands)
    _add_consortium_command(commands)
    add_coordinator_commands(commands)
    _add_dashboard_command(commands)
    add_sweep_command(commands)
    return parser


def _demo(args: argparse.Namespace) -> None:
    from simulations.demo import DemoConfig, run_demo

    config = DemoConfig(
        out=args.out,
        sites=args.sites,
        rounds=args.rounds,
        seed=args.seed,
        strategy=args.strategy,
        cases_per_site=args.cases_per_site,
        model=args.model,
        local_epochs=args.local_epochs,
        privacy=privacy_config(args),
        acceptance=args.acceptance,
    )
    evidence = run_demo(config, progress=say)
    print_evidence(evidence)
    _demo_report(evidence.parent)
    print(f"dashboard:     medfed dashboard {evidence.parent}")


def _phantoms(args: argparse.Namespace) -> None:
    from simulations.phantoms import write_phantom_federation

    site_dirs = write_phantom_federation(
        args.out,
        n_sites=args.sites,
        cases_per_site=args.cases_per_site,
        seed=args.seed,
        image_size=args.image_size,
        progress=CountProgress(),
    )
    for site_dir in site_dirs:
        print(f"{site_dir}: dicom/, labels.csv, masks/")


def _deid(args: argparse.Namespace) -> None:
    from site_client.deid import DeidOptions
    from site_client.deid_tree import DEID_REPORT_NAME, deidentify_tree, quarantine_folder

    if args.key is None:
        secret = secrets.token_bytes(32)
        say("no --key: using a one-time key; pseudonyms cannot be re-linked later")
    else:
        secret = _read_or_create_key(args.key)
    progress = CountProgress()
    options = DeidOptions(
        retain_device_identity=args.retain_device_identity,
        retain_modified_dates=args.modified_dates,
        clean_descriptors=args.clean_descriptors,
        retain_safe_private=args.safe_private,
    )
    report = deidentify_tree(
        args.in_dir,
        args.out_dir,
        secret,
        lambda d, t: progress("files", d, t),
        options,
        allow_burned_in_text=args.allow_burned_in_text,
    )
    print(
        f"{report.received} files: {report.stored} de-identified into {args.out_dir}, "
        f"{report.quarantined} quarantined"
    )
    for entry in report.entries:
        if entry.category:
            print(f"  quarantined {entry.source}: {entry.category}: {entry.reason}")
    print(
        f"report: {args.out_dir / DEID_REPORT_NAME}; quarantine and per-file log (site only): "
        f"{quarantine_folder(args.out_dir.resolve())}"
    )


def _read_or_create_key(path: Path) -> bytes:
    from site_client.store import read_secret_file, write_secret_file

    if path.exists():
        return read_secret_file(path)
    say(f"created key file {path} (keep it: it re-links pseudonyms)")
    return write_secret_file(path)


def _ingest(args: argparse.Namespace) -> None:
    from site_client.ingest import ingest_site
    from site_client.store import SiteStore

    store = SiteStore.create(args.site_dir, args.site_id)
    progress = CountProgress()
    report = ingest_site(
        store,
        args.dicom,
        args.labels,
        seed=args.seed,
        test_fraction=args.test_fraction,
        progress=lambda done, total: progress("files", done, total),
    )
    print(
        f"site {store.site_id}: {report.received} files: {report.stored} ingested, "
        f"{report.already_stored} already stored, {report.quarantined} quarantined"
    )
    for source, category, reason in report.quarantined_files:
        print(f"  quarantined {source}: {category}: {reason}")
    if report.burned_in_masked:
        print(f"  stored with burned-in text regions masked: {report.burned_in_masked}")
    for line, path in report.label_rows_missing_file:
        print(f"  labels.csv line {line}: no such file {path}")
    for line, path, reason in report.label_row_errors:
        print(f"  labels.csv line {line} ({path}): {reason}")
    print(
        f"report: {report.path}; quarantine (encrypted): medfed site quarantine --site-dir "
        f"{store.root}"
    )


def _quarantine(args: argparse.Namespace) -> None:
    from site_client.quarantine import StoreQuarantine
    from site_client.store import SiteStore

    store = SiteStore.open(args.site_dir)
    quarantine = StoreQuarantine(store)
    entries = quarantine.entries()
    print(f"site {store.site_id}: {len(entries)} files in quarantine")
    for e in entries:
        print(f"  {e.copy}  {e.source}: {e.category}: {e.reason}")
    if args.export is None:
        return
    args.export.mkdir(mode=0o700, parents=True, exist_ok=True)
    for e in entries:
        # The source's own path, flattened, after the copy's number (sources can repeat).
        target = args.export / f"{Path(e.copy).stem}_{e.source.replace('/', '_')}"
        target.write_bytes(quarantine.read_copy(e.copy))
    print(f"exported {len(entries)} files to {args.export}")


def _receive(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from site_client.policy import POLICY_FILE, ReceiverPolicy, read_policy
    from site_client.receiver import check_settings, serve
    from site_client.store import SiteStore

    policy_file = args.site_dir / POLICY_FILE
    settings = read_policy(args.site_dir).receiver if policy_file.exists() else ReceiverPolicy()
    overrides = {
        "ae_title": args.ae_title,
        "port": args.port,
        "bind": args.bind,
        "allowed_ae_titles": tuple(args.allow) if args.allow else None,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    check_settings(settings)  # before a new store is created
    store = SiteStore.create(args.site_dir)
    report = serve(store, settings, say=lambda line: print(line, flush=True))
    print(
        f"session: {report.received} instances received: {report.stored} stored, "
        f"{report.already_stored} already stored, {report.quarantined} quarantined, "
        f"{report.failed} failed"
    )
    for category, count in sorted(report.quarantine_reasons.items()):
        print(f"  quarantined, {category}: {count}")
    print(f"report: {report.path}")


def _label(args: argparse.Namespace) -> None:
    from site_client.received import label_received
    from site_client.store import SiteStore

    store = SiteStore.open(args.site_dir)
    outcome = label_received(store, args.labels, args.seed, args.test_fraction)
    splits = ", ".join(f"{n} {split}" for split, n in sorted(outcome.splits.items()))
    print(
        f"site {store.site_id}: {outcome.rows} rows: {outcome.labelled} cases labelled"
        f"{f' ({splits})' if splits else ''}, {outcome.already_labelled} already in the "
        f"manifest, {len(outcome.unknown_lines)} naming no received case, "
        f"{len(outcome.invalid)} invalid"
    )
    if outcome.unknown_lines:
        print(f"  no received case: lines {', '.join(map(str, outcome.unknown_lines))}")
    for error in outcome.invalid:
        print(f"  line {error.line}: {error.reason}")
    print(f"received cases still without a label: {outcome.waiting}")


def _budget(args: argparse.Namespace) -> None:
    import math
    from dataclasses import replace

    from site_client.ledger import PrivacyLedger
    from site_client.policy import PrivacyPolicy, write_policy
    from site_client.privacy import epsilon_spent
    from site_client.store import SiteStore
    from validation.privacy import recompute_epsilon

    store = SiteStore.open(args.site_dir)
    if args.max_epsilon is not None or args.delta is not None:
        ceiling = store.policy.privacy
        privacy = PrivacyPolicy(
            max_epsilon=ceiling.max_epsilon if args.max_epsilon is None else args.max_epsilon,
            delta=ceiling.delta if args.delta is None else args.delta,
        )
        write_policy(store.root, replace(store.policy, privacy=privacy))
        store = SiteStore.open(args.site_dir)
    entries = PrivacyLedger(store.root).entries()
    n_train = sum(r.split == "train" for r in store.read_manifest())
    policy = store.policy.privacy
    delta = policy.delta_for(n_train)
    ceiling = "none" if policy.max_epsilon is None else f"{policy.max_epsilon:g}"
    print(f"site {store.site_id}: ceiling epsilon {ceiling} at delta {delta:.3g}")
    print(f"ledger: {len(entries)} releases, chain intact")
    for e in entries:
        noise = f"noise {e.noise_multiplier:.3f}" if e.noise_multiplier else "no DP"
        print(
            f"  {e.time}  {e.run_id}  round {e.round:>3} {e.phase:<10} {e.steps:>5} steps  "
            f"{noise}  epsilon after: run {e.epsilon_run:.3f}, all runs {e.epsilon_total:.3f}"
        )
    releases = [(e.noise_multiplier, e.sample_rate, e.steps) for e in entries]
    accountant = entries[-1].accountant if entries else "rdp"
    spent = epsilon_spent(releases, delta, accountant)
    line = f"spent over all runs: epsilon {spent:.3f} ({accountant})"
    if entries and math.isfinite(spent):
        check = recompute_epsilon(releases, delta)
        line += (
            f"; recomputed by {check['library']}: RDP {check['rdp_epsilon']:.3f}, "
            f"PLD {check['pld_epsilon']:.3f}"
        )
    print(line)
    if policy.max_epsilon is not None:
        print(f"remaining: epsilon {max(policy.max_epsilon - spent, 0):.3f} of {ceiling}")


def _simulate(args: argparse.Namespace) -> None:
    from server.server_app import DataProvenance, FederationConfig
    from server.strategies import StrategyConfig
    from simulations.demo import stage_acceptance_plan
    from simulations.federation import run_simulated_federation
    from task.model import ModelConfig
    from task.training import recipe
    from validation.acceptance import resolve_plan

    if args.scenario is not None:
        _simulate_scenario(args)
        return
    if len(args.site_dir or ()) < 2:
        raise Usage("a federation needs at least two --site-dir (or a --scenario)")
    plan = resolve_plan(args.acceptance, args.task)
    if args.ray_address is not None:
        args.ray_address.check_reachable()  # before anything is written
    provenance = DataProvenance(
        description="site stores " + ", ".join(d.name for d in args.site_dir),
        simulated=args.simulated_data,
    )
    config = FederationConfig(
        run_dir=args.out,
        rounds=args.rounds,
        seed=args.seed,
        expected_sites=len(args.site_dir),
        holdout_sites=tuple(args.holdout or ()),
        strategy=StrategyConfig(name=args.strategy),
        training=recipe(args.model, args.local_epochs),
        model=ModelConfig(architecture=args.model),
        privacy=privacy_config(args),
        provenance=provenance,
    )
    stage_acceptance_plan(plan, args.site_dir, args.out)
    result = run_simulated_federation(
        args.site_dir,
        config,
        pooled_baseline=not args.no_pooled_baseline,
        progress=say,
        verbose=args.debug,
        cluster=args.ray_address,
    )
    print_evidence(result.evidence)


#: The options a scenario file sets, refused beside --scenario when they differ from their
#: defaults (as `medfed simulate`'s arguments name them).
_SCENARIO_SETS = (
    "site_dir", "holdout", "simulated_data", "task", "model", "local_epochs", "rounds",
    "strategy", "seed", "epsilon", "dp", "noise_multiplier", "max_grad_norm", "accountant",
)  # fmt: skip


def _simulate_scenario(args: argparse.Namespace) -> None:
    from simulations.scenario import load_scenario
    from simulations.scenario_run import run_scenario

    defaults = build_parser().parse_args(["simulate", "--scenario", "-", "--out", "-"])
    defaults.model = DEFAULT_MODELS[defaults.task]
    given = [
        "--" + name.replace("_", "-")
        for name in _SCENARIO_SETS
        if getattr(args, name) != getattr(defaults, name)
    ]
    if given:
        raise Usage(f"the scenario sets the federation: drop {', '.join(given)}")
    scenario = load_scenario(args.scenario)
    result = run_scenario(
        scenario,
        args.out,
        progress=say,
        verbose=args.debug,
        acceptance=args.acceptance,
        pooled_baseline=not args.no_pooled_baseline,
        cluster=args.ray_address,
    )
    print_evidence(result.evidence)


def _site_drift(args: argparse.Namespace) -> None:
    from flwr.app import ArrayRecord

    from server.checkpoints import load_frozen_model
    from site_client.drift import check_drift, describe, keep_report
    from site_client.store import SiteStore
    from task.model import ModelConfig, build_model
    from task.signing import model_sha256

    store = SiteStore.open(args.site_dir)
    config = ModelConfig(architecture=args.architecture)
    state = load_frozen_model(args.model, config)
    model = build_model(config)
    model.load_state_dict(state)
    report = check_drift(store, model, config.image_size)
    print(describe(report))
    say(f"report kept at {keep_report(store, report, model_sha256(ArrayRecord(state)))}")


def _validate(args: argparse.Namespace) -> None:
    from server.checkpoints import load_frozen_model
    from server.server_app import DataProvenance, FederationConfig
    from simulations.demo import stage_acceptance_plan
    from simulations.federation import run_simulated_federation
    from task.model import ModelConfig
    from task.privacy import PrivacyConfig
    from validation.acceptance import resolve_plan

    classification = args.task == CLASSIFICATION
    if args.threshold is not None and not classification:
        raise Usage("--threshold is a classification model's operating threshold")
    plan = resolve_plan(args.acceptance, args.task)
    model = ModelConfig(architecture=args.architecture)
    load_frozen_model(args.model, model)  # a wrong file fails here, before Ray starts
    config = FederationConfig(
        run_dir=args.out,
        expected_sites=len(args.site_dir),
        model=model,
        privacy=PrivacyConfig.for_epsilon(math.inf),
        provenance=DataProvenance(
            description="site stores " + ", ".join(d.name for d in args.site_dir),
            simulated=args.simulated_data,
        ),
        frozen_model=args.model.resolve(),
        operating_threshold=args.threshold,
        check_drift=classification,  # drift compares image scores
    )
    stage_acceptance_plan(plan, args.site_dir, args.out)
    result = run_simulated_federation(
        args.site_dir, config, pooled_baseline=False, progress=say, verbose=args.debug
    )
    print_evidence(result.evidence)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``medfed`` with ``argv``; returns the exit status."""
    apply_offline_environment()
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], None] = args.run
    try:
        if hasattr(args, "task"):
            resolve_model(args, "architecture" if hasattr(args, "architecture") else "model")
        command(args)
    except Usage as exc:
        parser.print_usage(sys.stderr)
        print(f"medfed: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medfed: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"medfed: error: {reason}", file=sys.stderr)
        return 1
    return 0
