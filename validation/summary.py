"""A plain-text summary of evidence.json for the terminal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from task.architectures import SEGMENTATION

_HEADER = (
    f"{'scope':<34}{'n':>5}{'pos':>5}  {'AUC [95% CI]':<21}{'sensitivity':<21}{'specificity':<21}"
)
_SEGMENTATION_HEADER = (
    f"{'scope':<34}{'n':>5}{'les':>5}  {'Dice mean [95% CI]':<21}{'Dice median':<21}"
    f"{'HD95 median (mm)':<23}{'FP rate (no lesion)':<21}"
)


def _interval(metric: dict[str, Any] | None) -> str:
    if not metric or metric.get("value") is None:
        return "n/a"
    if metric.get("ci_low") is None:
        return f"{metric['value']:.3f}"
    return f"{metric['value']:.3f} [{metric['ci_low']:.2f}, {metric['ci_high']:.2f}]"


def _row(scope: str, result: dict[str, Any]) -> str:
    return (
        f"{scope:<34}{result['n']:>5}{result['n_pos']:>5}  {_interval(result['auc']):<21}"
        f"{_interval(result['sensitivity']):<21}{_interval(result['specificity']):<21}"
    )


def _segmentation_row(scope: str, result: dict[str, Any]) -> str:
    hd95 = result["hd95_median"]
    hd95_text = (
        "n/a"
        if hd95["value"] is None
        else f"{hd95['value']:.1f}"
        + ("" if hd95["ci_low"] is None else f" [{hd95['ci_low']:.1f}, {_mm(hd95['ci_high'])}]")
    )
    return (
        f"{scope:<34}{result['n']:>5}{result['n_pos']:>5}  {_interval(result['dice_mean']):<21}"
        f"{_interval(result['dice_median']):<21}{hd95_text:<23}"
        f"{_interval(result['false_positive_rate']):<21}"
    )


def _mm(value: float | None) -> str:
    return "open" if value is None else f"{value:.1f}"


def _value(cell: float | None) -> str:
    return "  n/a" if cell is None else f"{cell:5.3f}"


def _privacy_lines(evidence: dict[str, Any]) -> list[str]:
    privacy = evidence["privacy"]
    lines = [f"Privacy: {privacy['mode']}: {privacy['guarantee']}"]
    if privacy["mode"] == "central" and privacy.get("epsilon") is not None:
        lines.append(
            f"  global models: epsilon {privacy['epsilon']:.3f} at delta {privacy['delta']:.2g}, "
            f"noise multiplier {privacy['noise_multiplier']:.3f} ({privacy['accountant']})"
        )
    for site in evidence["sites"]:
        record = site["privacy"]
        if record["epsilon"] is not None:
            check = record["independent_check"]
            agrees = "agrees" if check["agrees"] else "DISAGREES"
            lines.append(
                f"  site {site['id']}: epsilon {record['epsilon']:.3f} at delta "
                f"{record['delta']:.2g}, noise {record['noise_multiplier']:.3f}, "
                f"{record['steps']} steps; {check['library']} {agrees} "
                f"(RDP {check['rdp_epsilon']:.3f}, PLD {check['pld_epsilon']:.3f})"
            )
        for refusal in record["refusals"]:
            when = f" round {refusal['round']}" if refusal["round"] else ""
            lines.append(
                f"! site {site['id']} refused {refusal['stage']}{when}: {refusal['reason']}"
            )
    return lines


def _scope_lines(evidence: dict[str, Any], row: Callable[[str, dict[str, Any]], str]) -> list[str]:
    """One ``row`` per scope of the global model's performance and external validation."""
    performance = evidence["performance"]
    lines = [row("pooled", performance["pooled"])]
    lines += [row(f"site {k}", v) for k, v in performance["by_site"].items()]
    lines += [row(f"manufacturer {k}", v) for k, v in performance["by_scanner"].items()]
    lines += [row(f"scanner {k}", v) for k, v in performance["by_scanner_model"].items()]
    for column, values in performance.get("by_subgroup", {}).items():
        lines += [row(f"{column} {k}", v) for k, v in values.items()]
    external = evidence.get("external_validation") or {}
    if external.get("sites"):
        lines += [
            "",
            f"External validation (held out of all training): {', '.join(external['sites'])}",
        ]
        lines += [row(f"held-out {k}", v) for k, v in external["by_site"].items()]
    return lines


def format_summary(evidence: dict[str, Any]) -> str:
    """Per-site and per-scanner results of the global model, the baselines, the cross-site
    matrix and the acceptance criteria, as lines of text: AUC and the rest, or for a
    segmentation run Dice, HD95 and the false-positive rate."""
    run = evidence["run"]
    simulated = " (simulated)" if run["data"]["simulated"] else ""
    header = f"Global model: {run['strategy']}, {run['rounds']} rounds, seed {run['seed']}; "
    if run.get("task") == SEGMENTATION:
        method = evidence["segmentation"]
        lines = [
            f"{header}held-out test data; lesion where the pixel probability >= "
            f"{method['pixel_threshold']:g}",
            f"Data: {run['data']['description']}{simulated}",
            "",
            _SEGMENTATION_HEADER,
            *_scope_lines(evidence, _segmentation_row),
        ]
        return "\n".join(line.rstrip() for line in lines + _shared_lines(evidence, "dice_mean"))
    lines = [
        f"{header}held-out test data; threshold "
        f"{evidence['operating_point']['threshold']:.3f} fixed on training data",
        f"Data: {run['data']['description']}{simulated}",
        "",
        _HEADER,
        *_scope_lines(evidence, _row),
    ]
    heterogeneity = evidence.get("heterogeneity", {}).get("across_sites", {}).get("auc")
    if heterogeneity and heterogeneity["i2"] is not None:
        lines.append(
            f"Between-site heterogeneity of the AUC: I2 {heterogeneity['i2']:.0%}, "
            f"Cochran's Q {heterogeneity['q']:.2f} on {heterogeneity['df']} df "
            f"(p = {heterogeneity['q_p_value']:.3g})"
        )
    return "\n".join(line.rstrip() for line in lines + _shared_lines(evidence, "auc"))


#: How the summary names each task's headline metric.
_HEADLINE_NAMES = {"auc": "AUC", "dice_mean": "mean Dice"}


def _shared_lines(evidence: dict[str, Any], key: str) -> list[str]:
    """Failures, withheld strata, the cross-site matrix and baselines of the headline
    metric ``key`` (``auc``, ``dice_mean``), privacy and acceptance."""
    name = _HEADLINE_NAMES[key]
    lines: list[str] = []
    for failure in evidence["site_failures"]:
        when = f" round {failure['round']}" if failure["round"] else ""
        lines.append(
            f"! site {failure['site']} failed in {failure['stage']}{when}: {failure['reason']}"
        )
    if evidence["suppressed"]:
        lines.append(
            f"({len(evidence['suppressed'])} strata below a site's minimum cell size withheld)"
        )

    cross = evidence["cross_site"]
    width = max(len(m) for m in cross["models"]) + 2
    lines += ["", f"Cross-site {name} (rows: models; columns: test data of each site)"]
    lines.append(" " * width + "".join(f"{s[:9]:>10}" for s in cross["sites"]))
    for model, row in zip(cross["models"], cross[key], strict=True):
        lines.append(f"{model:<{width}}" + "".join(f"{_value(c):>10}" for c in row))

    unseen = evidence["baselines"]["unseen_site_comparison"]
    if unseen:
        lines += [
            "",
            f"Local-only models on the sites they never saw (pooled): local-only vs global {name}",
        ]
        lines += [
            f"  local-{site:<16} {_value(row[f'local_only_{key}'])} vs "
            f"{_value(row[f'global_{key}'])}"
            for site, row in unseen.items()
        ]
    centralized = evidence["baselines"].get("pooled_centralized")
    if centralized:
        lines += [
            "",
            f"Pooled-centralized baseline, pooled test {name}: {_interval(centralized[key])}",
        ]
    plan = evidence.get("acceptance_plan")
    title = f"Acceptance: plan {plan['name']} ({plan['source']})" if plan else "Acceptance"
    lines += ["", *_privacy_lines(evidence), "", title]
    lines += [_acceptance_line(entry) for entry in evidence["acceptance"]]
    return lines


def _acceptance_line(entry: dict[str, Any]) -> str:
    """``PASS  <criterion> [<scope>]: <value> <operator> <threshold>``; for a criterion not
    evaluated, its value (if any) and the reason."""
    verdict = {True: "PASS", False: "FAIL", None: "n/a "}[entry["passed"]]
    value = "n/a" if entry["value"] is None else f"{entry['value']:.3f}"
    threshold = "n/a" if entry["threshold"] is None else f"{entry['threshold']:.3f}"
    line = f"  {verdict}  {entry['criterion']} [{entry['scope']}]: {value}"
    if entry.get("reason"):
        return f"{line} ({entry['reason']})"
    return f"{line} {entry.get('operator', 'vs')} {threshold}"
