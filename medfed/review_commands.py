"""``medfed site review``: human review at the site, argument parsing and printing only.

``build``, ``list`` and ``feedback``; the work is in `site_client.review`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medfed import options
from medfed.delivery_commands import add_scoring_options


def add_review_commands(site_commands: argparse._SubParsersAction) -> None:
    """``medfed site review build|list|feedback``."""
    review = site_commands.add_parser(
        "review",
        help="human review at the site: uncertain cases with heatmaps, and corrected labels",
        description="A review queue of the cases a model is unsure of, with saliency "
        "heatmaps, for a reviewer at the site; and the reviewer's labels back into the "
        "site store. Nothing of it leaves the site.",
    )
    commands = review.add_subparsers(dest="review_command", required=True, metavar="COMMAND")
    build = commands.add_parser(
        "build",
        help="queue the cases whose score is near the threshold, with heatmaps",
        description="Scores the site's cases with a frozen model (as site deliver does) and "
        "queues those whose score is closer to the operating threshold than the uncertainty "
        "band, in SITE/review/<queue id>/ (0700; the first 16 hex digits of the checkpoint's "
        "SHA-256; replaced when built again for the model): per case the stored image as a "
        "PNG and the same with a saliency heatmap blended in (GradCAM for convolutional "
        "models, occlusion sensitivity for the ViT), and queue.json. Recorded in "
        "SITE/audit.jsonl.",
    )
    add_scoring_options(build)
    build.set_defaults(run=_build)

    listing = commands.add_parser(
        "list",
        help="the site's review queues and their cases",
        description="Lists the review queues of the site: model, threshold, band, cases "
        "queued and how many have been reviewed since (SITE/audit.jsonl); with --queue, its "
        "cases (pseudonymous case ids, scores, labels).",
    )
    listing.add_argument(
        "--site-dir", type=Path, required=True, metavar="SITE", help="the site store"
    )
    listing.add_argument("--queue", metavar="ID", help="list this queue's cases")
    listing.set_defaults(run=_list)

    feedback = commands.add_parser(
        "feedback",
        help="apply a reviewer's labels to the site store",
        description="Reads a CSV with columns case_id (as the queue names cases), label "
        "(0/1), optional reviewer (a short plain token) and comment (read, never kept), and "
        "sets those labels in the site's manifest: received cases waiting for a label join "
        "it (split as site label splits). All rows or none: an unusable row is a one-line "
        "error naming its line. Each row is recorded in SITE/audit.jsonl (case id, old and "
        "new label, reviewer). The site's next training and evaluation use the new labels.",
    )
    feedback.add_argument(
        "--site-dir", type=Path, required=True, metavar="SITE", help="the site store"
    )
    feedback.add_argument(
        "--labels",
        type=Path,
        required=True,
        metavar="CSV",
        help="CSV: case_id,label[,reviewer][,comment]",
    )
    feedback.add_argument("--reviewer", metavar="R", help="the reviewer of rows that name none")
    feedback.add_argument(
        "--test-fraction",
        type=float,
        default=0.3,
        help="test share of the received cases labelled (default: 0.3)",
    )
    options.add_seed(feedback)
    feedback.set_defaults(run=_feedback)


def _build(args: argparse.Namespace) -> None:
    from medfed.delivery_commands import scoring_options
    from medfed.progress import CountProgress
    from site_client.delivery.results import ScoringRequest
    from site_client.review.queue import build_queue

    request = ScoringRequest(args.site_dir, args.model, **scoring_options(args))
    progress = CountProgress()
    queue = build_queue(request, progress=lambda done, total: progress("heatmaps", done, total))
    print(
        f"{len(queue.cases)} of {queue.scored} cases entered the review queue: scores within "
        f"{queue.uncertainty_band:g} of the threshold {queue.threshold:.4f} "
        f"({queue.threshold_source})"
    )
    print(f"model {queue.architecture} (SHA-256 {queue.model_sha256}); heatmaps: {queue.saliency}")
    print(f"queue: {queue.path}")


def _list(args: argparse.Namespace) -> None:
    from site_client.review.feedback import reviewed_since
    from site_client.review.queue import list_queues
    from site_client.store import SiteStore

    store = SiteStore.open(args.site_dir)
    queues = list_queues(store)
    if args.queue is not None:
        queues = [q for q in queues if q.queue_id == args.queue]
        if not queues:
            raise ValueError(f"site {store.site_id} has no review queue {args.queue}")
    print(f"site {store.site_id}: {len(queues)} review queue(s)")
    labels = {r.case_id: r.label for r in store.read_manifest()}
    for queue in queues:
        reviewed = reviewed_since(store, queue.created)
        queued = {case.case_id for case in queue.cases}
        waiting = sum(case.case_id not in labels for case in queue.cases)
        print(
            f"  {queue.queue_id}  {queue.architecture}, threshold {queue.threshold:.4f}, band "
            f"{queue.uncertainty_band:g}, built {queue.created}: {queue.path}"
        )
        print(
            f"    {len(queue.cases)} of {queue.scored} cases queued, {len(queued & reviewed)} "
            f"reviewed since, {waiting} without a label"
        )
        if args.queue is None:
            continue
        print(f"    {'case':<18} {'cases':<9} {'score':>7}  label  reviewed")
        for case in queue.cases:
            label = labels.get(case.case_id, "-")
            seen = "yes" if case.case_id in reviewed else "no"
            print(f"    {case.case_id:<18} {case.group:<9} {case.score:>7.4f}  {label:>5}  {seen}")


def _feedback(args: argparse.Namespace) -> None:
    from site_client.review.feedback import apply_feedback
    from site_client.store import SiteStore

    store = SiteStore.open(args.site_dir)
    outcome = apply_feedback(store, args.labels, args.reviewer, args.seed, args.test_fraction)
    splits = ", ".join(f"{n} {split}" for split, n in sorted(outcome.splits.items()))
    print(
        f"site {store.site_id}: {outcome.rows} rows: {outcome.corrected} labels corrected, "
        f"{outcome.confirmed} confirmed, {outcome.labelled} received cases labelled"
        f"{f' ({splits})' if splits else ''}; recorded in {store.root / 'audit.jsonl'}"
    )
