"""The privacy part of the evidence, and its independent check.

Inputs: the run's privacy settings (``run.json``) and the per-release records of
``rounds.jsonl``: each site's train replies carry the DP-SGD parameters of the release
(noise multiplier, sample rate, steps) and the epsilon the site's accountant (Opacus)
computed. Outputs: per site, what guarantee its participation carried and how it was
accounted; for the run, the mechanism and (central DP) the coordinator's epsilon.

The independent check recomputes each site's epsilon from the release parameters alone
with a different library, Google's ``dp-accounting``: its RDP accountant (the same
analysis as Opacus's, in another implementation) must agree within `AGREEMENT`, and the
reported epsilon must never be below its PLD accountant's (a tight accountant: a smaller
reported value would overstate the privacy).
"""

from __future__ import annotations

import logging
from importlib.metadata import version
from typing import Any

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

#: Largest relative difference between the reported and the recomputed RDP epsilon.
AGREEMENT = 0.05
#: Discretisation of the PLD accountant (its estimate is an upper bound to this order).
PLD_DISCRETIZATION = 1e-3
#: Slack for the tight bound: the reported epsilon may fall below the PLD value by at most
#: this (relative), the PLD's own discretisation error.
TIGHT_SLACK = 1e-3
ACCOUNTANT_NAMES = {
    "rdp": "Opacus RDPAccountant (Renyi DP, Mironov 2017)",
    "prv": "Opacus PRVAccountant (privacy random variables, Gopi et al. 2021)",
}

Release = tuple[float, float, int]  # noise multiplier, sample rate, steps


def recompute_epsilon(releases: list[Release], delta: float) -> dict[str, Any]:
    """Epsilon at ``delta`` of the composed DP-SGD ``releases`` (Poisson-subsampled Gaussian
    steps) by dp-accounting's RDP and PLD accountants."""
    merged: dict[tuple[float, float], int] = {}
    for z, q, steps in releases:  # identical releases compose as one, steps summed (exactly)
        merged[(z, q)] = merged.get((z, q), 0) + steps
    events = [
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps
        )
        for (z, q), steps in merged.items()
    ]
    event = dp_accounting.ComposedDpEvent(events)
    # dp-accounting warns, through absl, for each fractional RDP order whose series does
    # not converge at large sample rates; it leaves those orders out (its bound only gets
    # looser), which is no news to a reader of the evidence.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        rdp = rdp_privacy_accountant.RdpAccountant()
        rdp.compose(event)
        rdp_epsilon = float(rdp.get_epsilon(delta))
        pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
        pld.compose(event)
        pld_epsilon = float(pld.get_epsilon(delta))
    finally:
        absl_logger.setLevel(level)
    return {
        "library": f"dp-accounting {version('dp-accounting')}",
        "rdp_epsilon": rdp_epsilon,
        "pld_epsilon": pld_epsilon,
    }


def check_reported_epsilon(reported: float, accountant: str, recomputed: dict[str, Any]) -> dict:
    """Compare ``reported`` (by Opacus's ``accountant``) with `recompute_epsilon`'s values."""
    reference = recomputed["rdp_epsilon"] if accountant == "rdp" else recomputed["pld_epsilon"]
    difference = (reported - reference) / reference
    not_below_tight = reported >= recomputed["pld_epsilon"] * (1 - TIGHT_SLACK)
    return {
        **recomputed,
        "compared_with": "rdp_epsilon" if accountant == "rdp" else "pld_epsilon",
        "relative_difference": difference,
        "agrees": abs(difference) <= AGREEMENT and not_below_tight,
    }


def run_privacy(run_privacy_settings: dict[str, Any], rounds: list[dict[str, Any]]) -> dict:
    """The run's privacy: mechanism, guarantee, settings and, for central DP, the epsilon
    the coordinator's accountant reached."""
    settings = dict(run_privacy_settings)
    for key in _NOT_APPLICABLE[settings["mode"]]:
        settings.pop(key, None)
    if settings.get("noise_multiplier") == 0:
        settings["noise_multiplier"] = None  # derived from the target epsilon
    section: dict[str, Any] = {
        "mode": settings.pop("mode"),
        "guarantee": settings.pop("guarantee"),
        "settings": settings,
    }
    if section["mode"] == "local":
        section["accountant"] = ACCOUNTANT_NAMES[settings["accountant"]]
    if section["mode"] == "central":
        spent = [e for e in rounds if e.get("phase") == "central-dp"]
        last = spent[-1] if spent else {}
        section |= {
            "accountant": "Flower RdpAccountant (dp-accounting), no amplification",
            "epsilon": last.get("epsilon"),
            "delta": last.get("delta"),
            "noise_multiplier": last.get("noise_multiplier"),
            "clipping_norm": settings["clipping_norm"],
            "history": [{"round": e["round"], "epsilon": e["epsilon"]} for e in spent],
        }
    return section


def site_privacy(site: str, mode: str, accountant: str, rounds: list[dict[str, Any]]) -> dict:
    """One site's privacy record: DESIGN.md's keys (epsilon, delta, noise_multiplier,
    sample_rate, steps, accountant), the per-release history, refusals, and the
    independent check of its epsilon."""
    entries = [e for e in rounds if e.get("site") == site and _is_training(e)]
    refusals = [
        {"round": e["round"], "stage": e["phase"], "reason": e["refused"]}
        for e in entries
        if "refused" in e
    ]
    releases = [e for e in entries if "dp-epsilon" in e.get("metrics", {})]
    record: dict[str, Any] = {
        "mechanism": _MECHANISMS[mode],
        "epsilon": None,
        "delta": None,
        "noise_multiplier": None,
        "sample_rate": None,
        "steps": sum(int(e["metrics"].get("steps", 0)) for e in entries if "metrics" in e) or None,
        "accountant": None,
        "history": [],
        "refusals": refusals,
    }
    if not releases:
        return record
    last = releases[-1]["metrics"]
    total = last.get("dp-epsilon-total")
    record |= {
        "epsilon": last["dp-epsilon"],
        "epsilon_all_runs": total,
        "epsilon_all_runs_note": None
        if total is not None
        else "unbounded: this site's store released models trained without DP before",
        "delta": last["dp-delta"],
        "noise_multiplier": last["dp-noise-multiplier"],
        "sample_rate": last["dp-sample-rate"],
        "max_grad_norm": last["dp-max-grad-norm"],
        "accountant": ACCOUNTANT_NAMES[accountant],
        "history": [
            {
                "round": e["round"],
                "stage": e["phase"],
                "steps": int(e["metrics"]["steps"]),
                "noise_multiplier": e["metrics"]["dp-noise-multiplier"],
                "sample_rate": e["metrics"]["dp-sample-rate"],
                "epsilon": e["metrics"]["dp-epsilon"],
            }
            for e in releases
        ],
    }
    parameters: list[Release] = [
        (
            float(e["metrics"]["dp-noise-multiplier"]),
            float(e["metrics"]["dp-sample-rate"]),
            int(e["metrics"]["steps"]),
        )
        for e in releases
    ]
    record["independent_check"] = check_reported_epsilon(
        float(last["dp-epsilon"]), accountant, recompute_epsilon(parameters, last["dp-delta"])
    )
    return record


#: Settings that mean nothing under each mode, left out of the evidence.
_NOT_APPLICABLE = {
    "local": ("delta", "clipping_norm"),
    "central": ("max_grad_norm", "accountant"),
    "none": (
        "target_epsilon",
        "noise_multiplier",
        "max_grad_norm",
        "clipping_norm",
        "accountant",
        "delta",
    ),
}
_MECHANISMS = {
    "local": "DP-SGD at the site (Opacus): Poisson sampling, per-sample clipping, Gaussian noise",
    "central": "none at the site: central DP at the coordinator covers the global models",
    "none": "none: trained without differential privacy",
}


def _is_training(entry: dict[str, Any]) -> bool:
    return entry.get("phase") in ("train", "local-only")
