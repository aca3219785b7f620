"""Simulated federations on an existing Ray cluster (``medfed simulate --ray-address``).

Flower's simulation runtime is built on Ray: without a cluster it starts a private Ray
instance on this machine; given a `RayCluster` it connects to that cluster instead, and the
sites' ClientApps run as Ray actors on its nodes (one CPU each), while the coordinator (the
ServerApp) runs in this process, which writes the run directory.

What every node needs (README, "On a Ray cluster"): medfed installed in the Python
environment that runs ``ray start``, the same version as here; the site stores at the same
absolute paths (a shared filesystem), with their keys (the store's key file, or
``MEDFED_STORE_KEY`` in the environment ``ray start`` was given). Ray's own ``RAY_ADDRESS``
is not read: a run goes to a cluster only when asked with ``--ray-address``.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass

import ray

from server.sites import FederationError
from task.runtime import OFFLINE_ENVIRONMENT

#: How long the reachability check waits for the head to answer (s).
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RayCluster:
    """An existing Ray cluster: ``host`` and ``port`` of its head's GCS (the ``--port`` of
    ``ray start --head``, 6379 by default)."""

    host: str
    port: int

    @classmethod
    def parse(cls, address: str) -> RayCluster:
        """``HOST:PORT`` (IPv6 as ``[::1]:PORT``) as a `RayCluster`; ValueError otherwise."""
        host, sep, port = address.strip().rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if "://" in address or not sep or not host or not port.isdigit():
            raise ValueError(f"expected HOST:PORT of the Ray cluster's head, got {address!r}")
        if not 0 < int(port) < 65536:
            raise ValueError(f"port out of range in {address!r}")
        return cls(host, int(port))

    @property
    def address(self) -> str:
        """``HOST:PORT``, as ``ray start --address`` and ``ray.init`` take it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def check_reachable(self, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        """Raise `FederationError` naming the address unless a Ray head answers there
        within ``timeout_s``: ``ray.init`` itself would wait for minutes on a dead
        address, and forever on a port that is not a Ray head's."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout_s):
                pass
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise FederationError(f"no Ray cluster at {self.address}: {reason}") from exc
        if not _answers_as_gcs(self.address, timeout_s):
            raise FederationError(
                f"no Ray cluster at {self.address}: something listens there but does not "
                "answer as a Ray head (the GCS port of `ray start --head --port`)"
            )

    def connect(self, verbose: bool = False) -> str:
        """Connect this process to the cluster (``ray.init``); returns a line saying where
        the run goes ("on the Ray cluster at ADDR: N nodes, C CPUs").

        Flower's runtime then finds Ray initialised and uses this connection; its workers
        import medfed by this process's ``sys.path`` (as Flower sets it for a local run) and
        get `OFFLINE_ENVIRONMENT`. Raises `FederationError` if the cluster refuses us.
        """
        self.check_reachable()
        pythonpath = os.pathsep.join(p for p in sys.path if p)
        try:
            ray.init(
                address=self.address,
                logging_level=logging.INFO if verbose else logging.ERROR,
                log_to_driver=verbose,
                runtime_env={"env_vars": {"PYTHONPATH": pythonpath, **OFFLINE_ENVIRONMENT}},
            )
        except Exception as exc:  # Ray's own errors: one line, naming the address
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise FederationError(
                f"could not join the Ray cluster at {self.address} (run medfed on one of its "
                f"nodes, with its Ray version): {reason}"
            ) from exc
        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources")]
        cpus = sum(n["Resources"].get("CPU", 0) for n in nodes)
        if cpus < 1:
            ray.shutdown()
            raise FederationError(f"the Ray cluster at {self.address} has no CPU to run sites")
        return f"on the Ray cluster at {self.address}: {len(nodes)} nodes, {cpus:g} CPUs"


def _answers_as_gcs(address: str, timeout_s: float) -> bool:
    """Whether the gRPC server at ``address`` answers the Ray GCS's GetClusterId call."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return True
