"""The `medfed` command as a user meets it: help, exit codes, one-line errors, and the
bring-your-own-data path (ingest + simulate) on DICOM folders that are not phantoms."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IngestedFederation
from dicom_factory import CtSpec, truncate_in_pixel_data, write_ct

from task.model import ModelConfig, build_model

COMMANDS = [
    "demo",
    "phantoms",
    "deid",
    "site",
    "site ingest",
    "site quarantine",
    "site receive",
    "site label",
    "site budget",
    "site deliver",
    "site drift",
    "site review",
    "site review build",
    "site review list",
    "site review feedback",
    "simulate",
    "sweep",
    "validate",
    "quantize",
    "report",
    "dashboard",
    "audit",
    "audit verify",
    "consortium",
    "consortium init",
    "coordinator",
    "coordinator start",
    "site join",
    "site approve",
    "run",
]


def medfed(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medfed", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=900,
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = medfed(*command.split(), "--help")
    assert result.returncode == 0
    assert "usage: medfed" in result.stdout
    assert "--" in result.stdout  # documents its options


@pytest.mark.parametrize(
    "args",
    [
        ["simulate", "--out", "run"],  # no --site-dir
        ["demo", "--rounds", "0"],
        ["demo", "--strategy", "fedsomething"],
        ["phantoms"],  # no --out
        ["simulate", "--site-dir", "a", "--out", "run"],  # a federation of one
        ["demo", "--epsilon", "0"],
        ["demo", "--epsilon", "-3"],
        ["demo", "--accountant", "moments"],
        ["demo", "--epsilon", "inf", "--noise-multiplier", "1.2"],
    ],
)
def test_bad_usage_exits_2(args: list[str], tmp_path: Path) -> None:
    result = medfed(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert "Traceback" not in result.stderr


def test_failure_is_one_line_naming_the_problem(tmp_path: Path) -> None:
    result = medfed(
        "site", "ingest", "--site-dir", tmp_path / "site", "--dicom", tmp_path / "nowhere",
        "--labels", tmp_path / "labels.csv",
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medfed: error:")
    assert "labels.csv" in lines[0] or "nowhere" in lines[0]


def test_simulate_with_a_missing_site_store_fails_before_training(tmp_path: Path) -> None:
    result = medfed(
        "simulate", "--site-dir", tmp_path / "a", "--site-dir", tmp_path / "b", "--out",
        tmp_path / "run",
    )  # fmt: skip
    assert result.returncode == 1
    assert "no such site directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "evidence.json").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = medfed(
        "--debug", "simulate", "--site-dir", tmp_path / "a", "--site-dir", tmp_path / "b",
        "--out", tmp_path / "run",
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" in result.stderr


def _hospital(root: Path, manufacturer: int, n: int, seed: int) -> tuple[Path, Path]:
    """A hospital export that is not a phantom: 40x48 images, a bright disc when positive,
    a labels.csv with a subgroup column, and three files that cannot be used."""
    rng = np.random.default_rng(seed)
    dicom = root / "dicom"
    rows = []
    for i in range(n):
        label = i % 2
        pixels = rng.normal(1100, 20, (40, 48))
        if label:
            y, x = rng.integers(10, 30), rng.integers(10, 38)
            yy, xx = np.mgrid[:40, :48]
            pixels[(yy - y) ** 2 + (xx - x) ** 2 < 16] += 300
        spec = CtSpec(
            index=seed * 1000 + i,
            rows=40,
            columns=48,
            pixels=pixels.astype(np.uint16),
            bits_stored=16 if manufacturer else 12,
            photometric="MONOCHROME1" if manufacturer else "MONOCHROME2",
        )
        name = f"SMITH^ANNA_{i}/IMG{i:04d}.dcm"
        write_ct(dicom / name, spec)
        rows.append({"path": name, "label": label, "sex": "F" if i % 3 else "M"})
    (dicom / "notes.txt").write_text("not a DICOM file")
    write_ct(dicom / "broken" / "cut.dcm", CtSpec(index=seed * 1000 + 900, rows=40, columns=48))
    truncate_in_pixel_data(dicom / "broken" / "cut.dcm")
    write_ct(dicom / "nopix.dcm", CtSpec(index=seed * 1000 + 901, with_pixels=False))
    rows.append({"path": "gone/missing.dcm", "label": 1, "sex": "M"})
    labels = root / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "sex"])
        writer.writeheader()
        writer.writerows(rows)
    return dicom, labels


@pytest.mark.slow
def test_bring_your_own_dicom_folders(tmp_path: Path) -> None:
    site_dirs = []
    for index, name in enumerate(("hospital-a", "hospital-b")):
        dicom, labels = _hospital(
            tmp_path / "exports" / name, manufacturer=index, n=30, seed=index + 1
        )
        site = tmp_path / "sites" / name
        result = medfed("site", "ingest", "--site-dir", site, "--dicom", dicom, "--labels", labels)
        assert result.returncode == 0, result.stderr
        assert (
            f"site {name}: 33 files: 30 ingested, 0 already stored, 3 quarantined" in result.stdout
        )
        assert "no such file gone/missing.dcm" in result.stdout
        listed = medfed("site", "quarantine", "--site-dir", site, "--export", tmp_path / name)
        assert listed.returncode == 0, listed.stderr
        assert f"site {name}: 3 files in quarantine" in listed.stdout
        exported = sorted(p.name for p in (tmp_path / name).iterdir())
        assert len(exported) == 3 and all(p.startswith("0000") for p in exported)
        site_dirs.append(site)

    run = tmp_path / "run"
    result = medfed(
        "simulate", "--site-dir", site_dirs[0], "--site-dir", site_dirs[1], "--out", run,
        "--rounds", "2", "--local-epochs", "1", "--epsilon", "inf",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "pooled" in result.stdout and "site hospital-a" in result.stdout
    evidence = json.loads((run / "evidence.json").read_text())
    assert evidence["privacy"]["mode"] == "none"
    assert evidence["privacy"]["guarantee"].startswith("no differential privacy")
    assert all(s["privacy"]["epsilon"] is None for s in evidence["sites"])
    assert [s["id"] for s in evidence["sites"]] == ["hospital-a", "hospital-b"]
    assert evidence["run"]["data"]["simulated"] is False
    assert evidence["performance"]["pooled"]["n"] == sum(s["n_test"] for s in evidence["sites"])


@pytest.mark.slow
def test_demo_reruns_in_place_with_identical_results(tmp_path: Path) -> None:
    """The same seed twice: byte-identical phantoms and identical evidence metrics, with
    DP-SGD at epsilon 3 whose every site's epsilon an independent accountant confirms."""
    out = tmp_path / "demo"
    runs = []
    for _ in range(2):
        result = medfed(
            "demo", "--out", out, "--sites", "2", "--cases-per-site", "40", "--rounds", "2",
            "--epsilon", "3",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "Cross-site AUC" in result.stdout
        assert "simulated" in result.stdout
        assert f"evidence:      {(out / 'run' / 'evidence.json').resolve()}" in result.stdout
        assert f"dashboard:     medfed dashboard {out / 'run'}" in result.stdout
        phantoms = {
            p.relative_to(out).as_posix(): p.read_bytes()
            for p in sorted((out / "phantoms").rglob("*"))
            if p.is_file()
        }
        runs.append((phantoms, json.loads((out / "run" / "evidence.json").read_text())))
    (first_files, first), (second_files, second) = runs
    assert first_files == second_files
    for key in ("performance", "cross_site", "baselines", "acceptance", "operating_point"):
        assert first[key] == second[key], key
    assert first["privacy"]["mode"] == "local"
    assert first["privacy"]["settings"]["noise_multiplier"] is None  # derived from the target
    for site in first["sites"]:
        # the site's intake counts add up, and every stored case is in the run
        intake = site["intake"]
        assert intake["received"] == sum(
            intake[k] for k in ("stored", "already_stored", "quarantined", "failed")
        )
        assert intake["stored"] == site["n_train"] + site["n_test"]
        assert site["modalities"] == {"CT": intake["stored"]}
        assert site["body_parts"] == {"ABDOMEN": intake["stored"]}
        assert site["study_years"]["n"] == intake["stored"]
        assert site["deidentification"]["options"]
        privacy = site["privacy"]
        assert 2.5 < privacy["epsilon"] <= 3.0
        assert privacy["independent_check"]["agrees"], privacy["independent_check"]
        assert privacy["epsilon"] >= privacy["independent_check"]["pld_epsilon"]
        assert [h["stage"] for h in privacy["history"]] == ["local-only", "train", "train"]
    assert first["run"]["id"] != second["run"]["id"]
    # the report carries the demo's intended-use statement
    assert "The simulation's ground truth" in (out / "run" / "report.html").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["demo.json", "phantoms", "run", "sites"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.docx").write_text("precious")
    result = medfed("demo", "--out", tmp_path / "other", "--sites", "2")
    assert result.returncode == 1
    assert "not empty" in result.stderr
    assert (tmp_path / "other" / "thesis.docx").read_text() == "precious"


def test_cli_strategy_and_model_choices_are_the_packages() -> None:
    from medfed.options import MODELS, STRATEGIES
    from server.strategies import STRATEGY_NAMES
    from task.model import ARCHITECTURES
    from task.training import RECIPES

    assert STRATEGIES == STRATEGY_NAMES
    assert set(MODELS) == set(ARCHITECTURES) == set(RECIPES)


def test_deid_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    write_ct(tmp_path / "in" / "a.dcm", CtSpec(index=1))
    key = tmp_path / "site.key"
    first = medfed("deid", tmp_path / "in", tmp_path / "out1", "--key", key)
    assert first.returncode == 0, first.stderr
    assert key.stat().st_mode & 0o777 == 0o600
    second = medfed("deid", tmp_path / "in", tmp_path / "out2", "--key", key)
    assert second.returncode == 0, second.stderr
    # Same key, same replaced UIDs: the outputs have the same names.
    assert [p.name for p in (tmp_path / "out1").glob("*.dcm")] == [
        p.name for p in (tmp_path / "out2").glob("*.dcm")
    ]
    key.write_text("not hex")
    bad = medfed("deid", tmp_path / "in", tmp_path / "out3", "--key", key)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [f"medfed: error: {key}: secret file must hold hex"]


def test_site_budget_shows_and_sets_the_ceiling_and_refuses_a_damaged_ledger(
    small_federation: IngestedFederation, tmp_path: Path
) -> None:
    from site_client.ledger import LEDGER_FILE, LedgerEntry, PrivacyLedger

    site = small_federation.fresh_copies(tmp_path)[0]
    for round_ in (1, 2):
        PrivacyLedger(site).append(
            LedgerEntry(
                run_id="run-x", round=round_, phase="federated", steps=20, sample_rate=0.25,
                noise_multiplier=1.0, max_grad_norm=1.0, accountant="rdp", delta=1e-3,
                epsilon_run=0.0, epsilon_total=0.0, time="2026-11-29T00:00:00+00:00",
            )
        )  # fmt: skip
    result = medfed("site", "budget", "--site-dir", site, "--max-epsilon", "10")
    assert result.returncode == 0, result.stderr
    assert f"site {site.name}: ceiling epsilon 10 at delta" in result.stdout
    assert "ledger: 2 releases, chain intact" in result.stdout
    assert "recomputed by dp-accounting" in result.stdout
    assert "remaining: epsilon" in result.stdout
    assert "max_epsilon = 10" in (site / "site.toml").read_text()

    ledger = site / LEDGER_FILE
    ledger.write_text(ledger.read_text().replace('"steps": 20', '"steps": 2', 1))
    result = medfed("site", "budget", "--site-dir", site)
    assert result.returncode == 1
    assert "hash mismatch" in result.stderr and "Traceback" not in result.stderr


def test_a_run_on_spent_budgets_is_refused_in_one_line(
    small_federation: IngestedFederation, tmp_path: Path
) -> None:
    from site_client.ledger import LedgerEntry, PrivacyLedger

    sites = small_federation.fresh_copies(tmp_path)
    for site in sites:
        PrivacyLedger(site).append(
            LedgerEntry(
                run_id="earlier", round=1, phase="federated", steps=400, sample_rate=0.5,
                noise_multiplier=0.8, max_grad_norm=1.0, accountant="rdp", delta=1e-3,
                epsilon_run=0.0, epsilon_total=0.0, time="2026-11-29T00:00:00+00:00",
            )
        )  # fmt: skip
        assert medfed("site", "budget", "--site-dir", site, "--max-epsilon", "5").returncode == 0
    result = medfed(
        "simulate", "--site-dir", sites[0], "--site-dir", sites[1], "--out", tmp_path / "run",
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medfed: error: every site would refuse")
    assert "over its ceiling of 5" in lines[0]
    assert not (tmp_path / "run" / "evidence.json").exists()


def test_central_dp_with_fedadam_is_refused_before_anything_runs(tmp_path: Path) -> None:
    result = medfed(
        "simulate", "--site-dir", tmp_path / "a", "--site-dir", tmp_path / "b",
        "--out", tmp_path / "run", "--dp", "central", "--strategy", "fedadam",
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "medfed: error: central DP averages like FedAvg: use --strategy fedavg or fedprox"
    )


def test_validate_refuses_a_checkpoint_of_another_model_in_one_line(tmp_path: Path) -> None:
    cnn = tmp_path / "cnn.pt"
    torch.save(build_model(ModelConfig(architecture="cnn")).state_dict(), cnn)
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    for checkpoint, expected in (
        (cnn, "not a checkpoint of the blob model"),
        (tmp_path / "notes.pt", "not a PyTorch checkpoint"),
        (tmp_path / "missing.pt", "no such checkpoint file"),
    ):
        result = medfed(
            "validate", "--model", checkpoint, "--site-dir", tmp_path / "site-a",
            "--site-dir", tmp_path / "site-b", "--out", tmp_path / "run",
        )  # fmt: skip
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and str(checkpoint) in lines[0]
    assert not (tmp_path / "run").exists()  # refused before anything ran
