"""The coordinator's SuperLink with a peer guard: only the Fleet API is served to other hosts.

Flower 1.42 (open source) serves the Fleet API (SuperNodes), the Control API (register
nodes, submit, stop and list runs) and the Runtime API (the ServerApp's) on one HTTPS port,
and the last two have no authentication. Anyone who reaches the port, and every site holds
the CA certificate, could register a SuperNode key of their own or run code on the
coordinator. The guard wraps Flower's own ``flower_superlink()``: the FastAPI app it builds
gets one outer ASGI middleware that answers 403 to any path outside ``/v1/fleet/`` unless
the TCP peer is loopback. The SuperLink's own superexec and ServerApp connect over loopback,
so ``medfed run`` must run on the coordinator host.

Run as ``python -m server.guard -- <flower-superlink arguments>``.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from task.runtime import apply_offline_environment

#: The only API path prefix served to non-loopback peers.
FLEET_PREFIX = "/v1/fleet/"
REFUSAL = b'{"detail": "medfed: only the Fleet API is served to remote peers"}'

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (an address string, or None when unknown) is a loopback address."""
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PeerGuard:
    """ASGI middleware: non-Fleet paths only for loopback peers (403 with a JSON reason
    otherwise); streaming responses pass untouched."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path = str(scope.get("path", ""))
            client = scope.get("client")
            peer = client[0] if client else None
            if not path.startswith(FLEET_PREFIX) and not is_loopback(peer):
                if scope["type"] == "websocket":  # no such endpoint today; closed all the same
                    await send({"type": "websocket.close", "code": 1008})
                else:
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 403,
                            "headers": [
                                (b"content-type", b"application/json"),
                                (b"content-length", str(len(REFUSAL)).encode()),
                            ],
                        }
                    )
                    await send({"type": "http.response.body", "body": REFUSAL})
                print(
                    json.dumps({"medfed_guard": "refused", "peer": peer, "path": path}),
                    file=sys.stderr,
                    flush=True,
                )
                return
        await self.app(scope, receive, send)


def install_guard() -> None:
    """Wrap ``flwr.superlink.main.create_app`` (looked up when the SuperLink starts) so that
    every app it builds has `PeerGuard` outermost. Fails if the pinned Flower lacks it."""
    import flwr.superlink.main as superlink_main

    original = superlink_main.create_app

    def create_app(*args: Any, **kwargs: Any) -> Any:
        app = original(*args, **kwargs)
        app.add_middleware(PeerGuard)  # added last: outermost
        return app

    superlink_main.create_app = create_app


def main(argv: list[str] | None = None) -> None:
    """``python -m server.guard [--] FLAGS``: Flower's SuperLink with FLAGS, guarded."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    apply_offline_environment()
    install_guard()
    from flwr.superlink.cli.flower_superlink import flower_superlink

    sys.argv = ["flower-superlink", *args]
    flower_superlink()


if __name__ == "__main__":
    main()
