"""The ``medfed`` commands of a consortium across machines: argument parsing only.

``coordinator start``, ``site join``, ``site approve`` and ``run``; the work is in
`server.deployment`, `server.deploy_run`, `site_client.join` and `site_client.approval`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medfed import options


def add_coordinator_commands(commands: argparse._SubParsersAction) -> None:
    """``medfed coordinator start`` and ``medfed run``."""
    coordinator = commands.add_parser(
        "coordinator",
        help="the consortium's coordinator (Flower SuperLink)",
        description="The coordinator of a consortium across machines.",
    )
    coordinator_commands = coordinator.add_subparsers(
        dest="coordinator_command", required=True, metavar="COMMAND"
    )
    start = coordinator_commands.add_parser(
        "start",
        help="run the coordinator until interrupted",
        description="Runs Flower's SuperLink for the consortium DIR on one HTTPS port: TLS "
        "with DIR/coordinator/tls.pem, SuperNode authentication (only the sites' registered "
        "keys connect), state in DIR/coordinator/state.db (0600), runtime dependency "
        "installation and telemetry off, and medfed's guard: only the Fleet API (SuperNodes) "
        "is served to other hosts; the Control API (medfed run) only from this host. Registers "
        "every key in DIR/coordinator/supernodes/*.pub and records starts and registrations in "
        "DIR/coordinator/audit.jsonl. Open PORT to the sites' addresses only.",
    )
    start.add_argument("--consortium", type=Path, required=True, metavar="DIR", help="consortium")
    start.add_argument(
        "--port", type=int, default=9092, metavar="P", help="the HTTPS port (default: 9092)"
    )
    start.add_argument(
        "--host",
        default="0.0.0.0",
        metavar="H",
        help="the address to bind (default: 0.0.0.0, every interface)",
    )
    start.add_argument(
        "--resume",
        action="store_true",
        help="restart on the existing state database (sites stay registered; needed after "
        "the first start) and continue every run the coordinator was running when it stopped, "
        "from its last finished round (round numbers, checkpoints and the strategy's state, "
        "e.g. FedAdam's moments, carry on; the run directory gets its evidence as before)",
    )
    start.set_defaults(run=_coordinator_start)

    run = commands.add_parser(
        "run",
        help="run a federation on the consortium's coordinator and sites",
        description="Submits medfed's federated job to the coordinator of DIR (run it on the "
        "coordinator host: the Control API answers only there), shows progress, waits for it "
        "to finish and leaves RUN with evidence.json, as medfed simulate does. Every model "
        "sent is signed with the consortium's model-signing key. Sites run only apps they "
        "approved: --print-app-hash prints the hash to send them for `medfed site approve`.",
    )
    run.add_argument("--consortium", type=Path, required=True, metavar="DIR", help="consortium")
    run.add_argument("--out", type=Path, metavar="RUN", help="run directory (on this host)")
    run.add_argument(
        "--print-app-hash",
        action="store_true",
        help="print the SHA-256 of medfed's app bundle, which sites approve, and exit",
    )
    run.add_argument(
        "--min-sites",
        type=options.positive_int,
        default=2,
        metavar="N",
        help="a round goes on with N sites' replies (default: 2)",
    )
    run.add_argument(
        "--round-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="seconds to wait for the sites' replies to one message (default: 600)",
    )
    run.add_argument(
        "--no-local-baselines",
        action="store_true",
        help="skip the sites' local-only baseline models",
    )
    run.add_argument(
        "--simulated-data",
        action="store_true",
        help="say in the evidence that the sites or scanner differences are simulated",
    )
    options.add_federation_options(run)
    options.add_acceptance_option(run)
    run.set_defaults(run=_run)


def add_site_commands(site_commands: argparse._SubParsersAction) -> None:
    """``medfed site join`` and ``medfed site approve``."""
    join = site_commands.add_parser(
        "join",
        help="connect the site to its consortium's coordinator, until interrupted",
        description="Checks the kit (kit.toml, the CA certificate's fingerprint), copies the "
        "CA certificate, the coordinator's model-signing public key and the site's SuperNode "
        "key (0600) into SITE/consortium/, requires signed models in SITE/site.toml, and runs "
        "Flower's SuperNode over TLS with the site's key. The site runs only apps it approved "
        "(medfed site approve). It needs outgoing HTTPS to the coordinator, no inbound port, "
        "and a clock synchronised by NTP: before anything is installed it compares this "
        "host's clock with the Date of the coordinator's HTTPS answer (TLS checked with the "
        "kit's CA) and refuses to join when it is more than 4 s ahead or 240 s behind "
        "(Flower refuses a site more than 5 s ahead or about 5 min behind, without a "
        "reason). An unreachable coordinator is reported in one line and the SuperNode keeps "
        "trying to connect.",
    )
    join.add_argument("--kit", type=Path, required=True, metavar="KIT", help="the site's kit")
    join.add_argument("--site-dir", type=Path, required=True, metavar="SITE", help="site store")
    join.add_argument(
        "--coordinator", metavar="HOST:PORT", help="the coordinator (default: the kit's)"
    )
    join.add_argument(
        "--local-port",
        type=int,
        default=9094,
        metavar="P",
        help="the SuperNode's local port on 127.0.0.1, one per SuperNode (default: 9094)",
    )
    join.set_defaults(run=_site_join)

    approve = site_commands.add_parser(
        "approve",
        help="show what an app does and approve it to run at the site",
        description="Shows an app bundle (hash, files, components, configuration, and what "
        "each of medfed's messages makes the site send), then records its SHA-256 in "
        "SITE/approved-apps.txt and a TASK_APPROVED entry in SITE/audit.jsonl. The SuperNode "
        "refuses any other app before importing any of its code, and tells the coordinator "
        "why. Default app: medfed's own, built from this installation.",
    )
    approve.add_argument("--site-dir", type=Path, required=True, metavar="SITE", help="site store")
    approve.add_argument(
        "--app", type=Path, metavar="FAB_OR_DIR", help="a .fab file or an app folder"
    )
    approve.add_argument(
        "--expect-hash",
        metavar="SHA256",
        help="refuse unless the app's hash is this one (the hash the coordinator announced)",
    )
    approve.add_argument("--show", action="store_true", help="only show the app, approve nothing")
    approve.set_defaults(run=_site_approve)


def _coordinator_start(args: argparse.Namespace) -> None:
    from server.deployment import Coordinator, CoordinatorSettings

    coordinator = Coordinator(
        CoordinatorSettings(args.consortium, args.host, args.port, args.resume)
    )
    try:
        coordinator.start()
        if args.resume:
            from server.deploy_run import resume_interrupted
            from task.app_bundle import build_app_bundle

            resume_interrupted(args.consortium.resolve(), build_app_bundle(), options.say)
        status = coordinator.wait()
    finally:
        coordinator.stop()
    if status not in (0, -15):
        raise RuntimeError(f"the SuperLink exited with status {status}")


def _site_join(args: argparse.Namespace) -> None:
    from site_client.join import JoinSettings, SuperNode

    SuperNode(
        JoinSettings(args.kit, args.site_dir, args.coordinator, args.local_port), options.say
    ).run()


def _site_approve(args: argparse.Namespace) -> None:
    from site_client.approval import approve, describe
    from task.app_bundle import APP_DIR, build_app_bundle

    bundle = build_app_bundle(args.app or APP_DIR)
    print(describe(bundle))
    if args.expect_hash and args.expect_hash.lower() != bundle.sha256:
        raise RuntimeError(f"the app's hash is {bundle.sha256}, not {args.expect_hash}")
    if args.show:
        return
    new = approve(args.site_dir, bundle)
    print(f"{'approved' if new else 'already approved'} at {args.site_dir}")


def _run(args: argparse.Namespace) -> None:
    from server.deploy_run import run_on_coordinator
    from server.server_app import DataProvenance, FederationConfig
    from server.strategies import StrategyConfig
    from task.app_bundle import build_app_bundle
    from task.model import ModelConfig
    from task.training import recipe
    from validation.acceptance import resolve_plan, write_plan_record

    bundle = build_app_bundle()
    if args.print_app_hash:
        print(bundle.sha256)
        return
    if args.out is None:
        raise options.Usage("--out RUN is required")
    plan = resolve_plan(args.acceptance, args.task)
    out = args.out.resolve()
    config = FederationConfig(
        run_dir=out,
        rounds=args.rounds,
        seed=args.seed,
        strategy=StrategyConfig(name=args.strategy, min_sites=args.min_sites),
        training=recipe(args.model, args.local_epochs),
        model=ModelConfig(architecture=args.model),
        privacy=options.privacy_config(args),
        provenance=DataProvenance(
            description="site stores of the consortium's sites", simulated=args.simulated_data
        ),
        local_baselines=not args.no_local_baselines,
        timeout_s=args.round_timeout,
    )
    write_plan_record(plan, out)
    outcome = run_on_coordinator(args.consortium, config, bundle, options.say)
    options.say(
        f"run {outcome.run_id} {outcome.status} in {outcome.seconds:.0f} s; the coordinator "
        f"sent {outcome.bytes_sent} and received {outcome.bytes_recv} bytes"
    )
    options.print_evidence(out / "evidence.json")
