"""``medfed simulate --ray-address``: a scenario run on an existing Ray cluster of two nodes
(a head and a worker node, each its own ``ray start`` on 127.0.0.1 with one CPU), and the
one-line refusals of an address where no cluster answers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dicom_network import free_port
from test_cli import medfed

from medfed.cli import main
from server.sites import FederationError
from simulations.ray_cluster import RayCluster

RAY = Path(sys.executable).with_name("ray")
#: A tiny federation: three phantom sites of 20 cases, two rounds, no baselines, no DP.
TINY = """name = "tiny-cluster"
[sites]
count = 3
cases = 20
[federation]
model = "blob"
rounds = 2
local_baselines = false
pooled_baseline = false
[privacy]
epsilon = "inf"
"""
#: What the test process asks of the cluster afterwards, in a process of its own (so this
#: one never joins a cluster): its live nodes, and the node of every ClientApp actor.
WHERE_ACTORS_RAN = """
import json, sys
import ray
from ray._private.state import actors
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
ran = sorted(a["Address"]["NodeID"] for a in actors().values()
             if a["ActorClassName"].endswith("ClientAppActor"))
print(json.dumps({"nodes": nodes, "client_app_actors": ran}))
"""


@dataclass(frozen=True)
class LocalCluster:
    """A Ray cluster of processes on this machine: its head's address and its nodes'
    process groups (each ``ray start`` leads a session of its own)."""

    address: str
    groups: list[int]


def _ray_start(temp_dir: Path, groups: list[int], *args: str) -> None:
    """``ray start ARGS`` on 127.0.0.1 with one CPU and its own ``temp_dir``, in a new
    session whose id goes into ``groups``; the test fails if Ray does not start."""
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    command = [str(RAY), "start", *args, "--num-cpus", "1", "--disable-usage-stats"]
    command += ["--temp-dir", str(temp_dir), "--dashboard-agent-listen-port", str(free_port())]
    process = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    groups.append(process.pid)
    output, _ = process.communicate(timeout=180)
    assert process.returncode == 0, f"{' '.join(command)} failed:\n{output.decode()[-3000:]}"


def _stop(groups: list[int]) -> None:
    """Stop the processes of ``groups`` (never another Ray on this machine, as `ray stop`
    would): SIGTERM, then SIGKILL to what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for group in reversed(groups):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 5
        while sig == signal.SIGTERM and time.monotonic() < deadline and _alive(groups):
            time.sleep(0.5)


def _alive(groups: list[int]) -> bool:
    for group in groups:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            continue
        return True
    return False


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[LocalCluster]:
    """A head and a worker node (two raylets on one host, as Ray's own multi-node tests
    run them), each with one CPU and its own temp dir (short: Ray's socket paths)."""
    root = Path(tempfile.mkdtemp(prefix="medfed-ray-", dir="/tmp"))
    port = free_port()
    groups: list[int] = []
    try:
        head = ["--head", "--port", str(port), "--include-dashboard=false"]
        head += ["--ray-client-server-port", str(free_port()), "--node-ip-address", "127.0.0.1"]
        _ray_start(root / "head", groups, *head)
        address = f"127.0.0.1:{port}"
        _ray_start(root / "worker", groups, "--address", address, "--node-ip-address", "127.0.0.1")
        yield LocalCluster(address, groups)
    finally:
        _stop(groups)
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class ClusterRun:
    """`TINY` run by ``medfed simulate --scenario ... --ray-address`` on the cluster."""

    run: Path
    result: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def cluster_run(
    local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> ClusterRun:
    root = tmp_path_factory.mktemp("cluster-run")
    scenario = root / "tiny.toml"
    scenario.write_text(TINY)
    run = root / "run"
    address = local_cluster.address
    return ClusterRun(
        run, medfed("simulate", "--scenario", scenario, "--out", run, "--ray-address", address)
    )


@pytest.mark.slow
def test_a_scenario_runs_on_both_nodes_of_an_existing_cluster(
    local_cluster: LocalCluster, cluster_run: ClusterRun
) -> None:
    result, address = cluster_run.result, local_cluster.address
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"sites on the Ray cluster at {address}: 2 nodes, 2 CPUs" in result.stderr

    evidence = json.loads((cluster_run.run / "evidence.json").read_text())
    sites = ["site-a", "site-b", "site-c"]
    assert [s["id"] for s in evidence["sites"]] == sites
    assert [r["round"] for r in evidence["rounds"]] == [1, 2]
    for record in evidence["rounds"]:
        assert record["participation"]["accepted"] == sites
        assert record["participation"]["evaluated"] == sites

    # The sites ran as Ray actors on the cluster's two nodes: a run that started a Ray of
    # its own would have left no actor there.
    where = subprocess.run(
        [sys.executable, "-c", WHERE_ACTORS_RAN, address],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"),
    )
    assert where.returncode == 0, where.stderr[-3000:]
    placed = json.loads(where.stdout.strip().splitlines()[-1])
    assert len(placed["nodes"]) == 2
    assert set(placed["client_app_actors"]) == set(placed["nodes"])


@pytest.mark.slow
def test_without_ray_address_a_run_stays_on_this_machine_whatever_ray_address_says(
    local_cluster: LocalCluster, cluster_run: ClusterRun, tmp_path: Path
) -> None:
    """RAY_ADDRESS (Ray's own variable) naming a live cluster neither sends the run there
    nor breaks it (Ray would join the cluster and refuse the local run's CPU count)."""
    assert cluster_run.result.returncode == 0, cluster_run.result.stderr[-3000:]
    stores = sorted((cluster_run.run / "sites").iterdir())[:2]
    listed = [arg for site in stores for arg in ("--site-dir", site)]
    options = ["--model", "blob", "--rounds", "1", "--epsilon", "inf", "--no-pooled-baseline"]
    env = dict(os.environ, RAY_ADDRESS=local_cluster.address)
    result = subprocess.run(
        [sys.executable, "-m", "medfed", "simulate", *map(str, listed), "--out",
         str(tmp_path / "run"), *options],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Ray cluster" not in result.stderr
    assert (tmp_path / "run" / "evidence.json").exists()


@pytest.mark.parametrize("command", ["simulate", "sweep"])
def test_an_address_where_no_cluster_answers_is_one_line_and_writes_nothing(
    command: str, tmp_path: Path
) -> None:
    small = Path(__file__).resolve().parents[1] / "simulations" / "scenarios" / "small.toml"
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    result = medfed(
        command, "--scenario", small, "--out", tmp_path / "run", "--ray-address", address
    )
    assert time.monotonic() - started < 60
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"medfed: error: no Ray cluster at {address}: Connection refused"
    ]
    assert not (tmp_path / "run").exists()


def test_the_address_is_checked_before_a_site_store_is_opened_or_anything_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{free_port()}"
    sites = [tmp_path / "a", tmp_path / "b"]  # not even site stores
    listed = [str(arg) for site in sites for arg in ("--site-dir", site)]
    assert (
        main(["simulate", *listed, "--out", str(tmp_path / "run"), "--ray-address", address]) == 1
    )
    assert capsys.readouterr().err.splitlines() == [
        f"medfed: error: no Ray cluster at {address}: Connection refused"
    ]
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit) as usage:
        main(["simulate", *listed, "--out", str(tmp_path / "run"), "--ray-address", "ray://h:1"])
    assert usage.value.code == 2 and "HOST:PORT" in capsys.readouterr().err


def test_a_port_that_is_not_a_ray_head_is_refused_within_the_timeout() -> None:
    """A listening port that never speaks Ray's protocol (ray.init would wait forever)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        cluster = RayCluster.parse(f"127.0.0.1:{listener.getsockname()[1]}")
        started = time.monotonic()
        with pytest.raises(FederationError, match="does not answer as a Ray head"):
            cluster.check_reachable(timeout_s=2.0)
    assert time.monotonic() - started < 10


def test_ray_address_parses_host_and_port_only() -> None:
    assert RayCluster.parse("10.0.0.5:6379") == RayCluster("10.0.0.5", 6379)
    assert RayCluster.parse("[::1]:6379").address == "[::1]:6379"
    for bad in ("ray://head:10001", "head", "head:port", "head:0", ":6379"):
        with pytest.raises(ValueError):
            RayCluster.parse(bad)
