"""``medfed sweep``: argument parsing and printing only; the work is in `simulations.sweep`."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from medfed import options

_T = TypeVar("_T")


def add_sweep_command(commands: argparse._SubParsersAction) -> None:
    """``medfed sweep --scenario FILE --out DIR [--strategies] [--epsilons] [--seeds]``."""
    sweep = commands.add_parser(
        "sweep",
        help="a scenario's federation over strategies x epsilons x seeds, in one table",
        description="Makes the scenario's sites once, then runs its federation (as simulate "
        "--scenario does) for every strategy, epsilon and training seed, each run on fresh "
        "copies of the site stores (nothing spent yet), into DIR/runs/<strategy>-eps<e>-"
        "seed<s>/ with its whole evidence. Writes DIR/sweep.csv (one row per run: the global "
        "model's, the pooled-centralized and the local-only models' headline metric, read "
        "from the run's evidence.json) and DIR/sweep.md, the comparison table it prints: per "
        "epsilon, the pooled-centralized baseline (trained once per epsilon and seed), the "
        "local-only baselines and each strategy, mean, sample SD and min-max over seeds of "
        "the pooled test AUC (Dice for segmentation). A failed run is recorded with its "
        "reason and the sweep goes on; the exit status is then 1. Rerunning into DIR "
        "replaces an earlier sweep; any other non-empty folder is refused.",
    )
    sweep.add_argument(
        "--scenario", type=Path, required=True, metavar="FILE", help="scenario file (TOML)"
    )
    sweep.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    sweep.add_argument(
        "--strategies",
        type=_list_of(_strategy),
        default=(),
        metavar="A,B",
        help=f"strategies, comma-separated ({', '.join(options.STRATEGIES)}; default: the "
        "scenario's); the scenario's other [strategy] settings are kept",
    )
    sweep.add_argument(
        "--epsilons",
        type=_list_of(_epsilon),
        default=(),
        metavar="E,F",
        help="DP epsilons per site and run, comma-separated, 'inf' for no DP (default: the "
        "scenario's); the noise is derived from each (a fixed noise_multiplier is dropped)",
    )
    sweep.add_argument(
        "--seeds",
        type=_list_of(_seed),
        default=(),
        metavar="S,T",
        help="training seeds (initial weights, sampling, DP noise), comma-separated; the "
        "sites are the same in every run (default: the scenario's [seeds] training)",
    )
    sweep.add_argument(
        "--no-pooled-baseline",
        action="store_true",
        help="skip the pooled-centralized baseline (trained by default, once per epsilon and "
        "seed, whatever the scenario says)",
    )
    options.add_acceptance_option(sweep)
    options.add_ray_address_option(sweep)
    sweep.set_defaults(run=_sweep)


def _list_of(parse: Callable[[str], _T]) -> Callable[[str], tuple[_T, ...]]:
    """An argparse type: comma-separated values, each parsed by ``parse``, none twice."""

    def parse_list(text: str) -> tuple[_T, ...]:
        values = tuple(parse(part.strip()) for part in text.split(","))
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"a value is given twice in {text!r}")
        return values

    return parse_list


def _strategy(text: str) -> str:
    if text not in options.STRATEGIES:
        raise argparse.ArgumentTypeError(
            f"unknown strategy {text!r}; choose from {', '.join(options.STRATEGIES)}"
        )
    return text


def _epsilon(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise argparse.ArgumentTypeError(f"each must be a number > 0 or 'inf', got {text!r}")
    return value


def _seed(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"each must be an integer >= 0, got {text!r}")
    return int(text)


def _sweep(args: argparse.Namespace) -> None:
    from simulations.scenario import load_scenario
    from simulations.sweep import SweepConfig, run_sweep

    config = SweepConfig(
        scenario=load_scenario(args.scenario),
        out=args.out,
        strategies=args.strategies,
        epsilons=args.epsilons,
        seeds=args.seeds,
        pooled_baseline=not args.no_pooled_baseline,
        acceptance=args.acceptance,
        cluster=args.ray_address,
    )
    result = run_sweep(config, progress=options.say, verbose=args.debug)
    print(result.table)
    print(f"\ntable:  {result.markdown.resolve()}")
    print(f"runs:   {result.csv.resolve()}")
    if result.failed:
        raise options.Failure(
            f"{len(result.failed)} of {len(result.outcomes)} runs failed: see the table"
        )
