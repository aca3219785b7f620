"""A plain-text summary of evidence.json for the terminal."""

from __future__ import annotations

from typing import Any

_HEADER = (
    f"{'scope':<34}{'n':>5}{'pos':>5}  {'AUC [95% CI]':<21}{'sensitivity':<21}{'specificity':<21}"
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


def format_summary(evidence: dict[str, Any]) -> str:
    """Per-site and per-scanner results of the global model, the baselines, the cross-site
    matrix and the acceptance criteria, as lines of text."""
    run, performance = evidence["run"], evidence["performance"]
    simulated = " (simulated)" if run["data"]["simulated"] else ""
    lines = [
        f"Global model: {run['strategy']}, {run['rounds']} rounds, seed {run['seed']}; "
        f"held-out test data; threshold {evidence['operating_point']['threshold']:.3f} "
        "fixed on training data",
        f"Data: {run['data']['description']}{simulated}",
        "",
        _HEADER,
        _row("pooled", performance["pooled"]),
    ]
    lines += [_row(f"site {k}", v) for k, v in performance["by_site"].items()]
    lines += [_row(f"manufacturer {k}", v) for k, v in performance["by_scanner"].items()]
    lines += [_row(f"scanner {k}", v) for k, v in performance["by_scanner_model"].items()]
    for column, values in performance.get("by_subgroup", {}).items():
        lines += [_row(f"{column} {k}", v) for k, v in values.items()]
    external = evidence.get("external_validation") or {}
    if external.get("sites"):
        lines += [
            "",
            f"External validation (held out of all training): {', '.join(external['sites'])}",
        ]
        lines += [_row(f"held-out {k}", v) for k, v in external["by_site"].items()]
    heterogeneity = evidence.get("heterogeneity", {}).get("across_sites", {}).get("auc")
    if heterogeneity and heterogeneity["i2"] is not None:
        lines.append(
            f"Between-site heterogeneity of the AUC: I2 {heterogeneity['i2']:.0%}, "
            f"Cochran's Q {heterogeneity['q']:.2f} on {heterogeneity['df']} df "
            f"(p = {heterogeneity['q_p_value']:.3g})"
        )
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
    lines += ["", "Cross-site AUC (rows: models; columns: test data of each site)"]
    lines.append(" " * width + "".join(f"{s[:9]:>10}" for s in cross["sites"]))
    for model, row in zip(cross["models"], cross["auc"], strict=True):
        lines.append(f"{model:<{width}}" + "".join(f"{_value(c):>10}" for c in row))

    unseen = evidence["baselines"]["unseen_site_comparison"]
    if unseen:
        lines += [
            "",
            "Local-only models on the sites they never saw (pooled): local-only vs global AUC",
        ]
        lines += [
            f"  local-{site:<16} {_value(row['local_only_auc'])} vs {_value(row['global_auc'])}"
            for site, row in unseen.items()
        ]
    centralized = evidence["baselines"].get("pooled_centralized")
    if centralized:
        lines += [
            "",
            f"Pooled-centralized baseline, pooled test AUC: {_interval(centralized['auc'])}",
        ]
    plan = evidence.get("acceptance_plan")
    title = f"Acceptance: plan {plan['name']} ({plan['source']})" if plan else "Acceptance"
    lines += ["", *_privacy_lines(evidence), "", title]
    lines += [_acceptance_line(entry) for entry in evidence["acceptance"]]
    return "\n".join(line.rstrip() for line in lines)


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
