"""`medfed site join`'s clock check against a real TLS server whose Date header we set."""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import IngestedFederation
from test_cli import medfed

from server.consortium import ConsortiumLayout, init_consortium
from site_client.join import JoinError, check_clock, clock_offset
from site_client.policy import read_policy

SITE = "site-a"


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> ConsortiumLayout:
    return init_consortium(tmp_path_factory.mktemp("clock") / "cons", (SITE,), "127.0.0.1")


@contextlib.contextmanager
def coordinator(layout: ConsortiumLayout, shift: float) -> Iterator[str]:
    """An HTTPS server on 127.0.0.1 with the consortium's TLS certificate whose Date header
    runs ``shift`` seconds from this host's clock. It answers 403 to everything, as medfed's
    guard answers other hosts. Yields its HOST:PORT."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn

        def do_GET(self) -> None:
            body = b'{"detail": "medfed: only the Fleet API is served to remote peers"}'
            self.send_response(403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def date_time_string(self, timestamp: float | None = None) -> str:
            return formatdate(time.time() + shift, usegmt=True)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(layout.tls_cert, layout.tls_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _ca(layout: ConsortiumLayout) -> Path:
    return layout.kit(SITE) / "ca.pem"


@pytest.mark.parametrize("shift", [-30.0, 0.0, 60.0])
def test_clock_offset_reads_the_coordinators_date(layout: ConsortiumLayout, shift: float) -> None:
    with coordinator(layout, shift) as address:
        ahead = clock_offset(address, _ca(layout))
    assert abs(ahead + shift) < 1.5, ahead  # Date has whole seconds


@pytest.mark.parametrize(
    ("shift", "refusal"),
    [
        (-30.0, r"clock is (29|30|31)\.\d s ahead of the coordinator's .* 4 s ahead allowed"),
        (400.0, r"clock is (399|400|401)\.\d s behind the coordinator's .* 240 s behind allowed"),
        (0.0, None),
        (60.0, None),  # Flower accepts a site up to 305 s behind
    ],
)
def test_a_site_clock_out_of_range_is_refused(
    layout: ConsortiumLayout, shift: float, refusal: str | None
) -> None:
    """``shift``: the coordinator's clock minus the site's."""
    said: list[str] = []
    with coordinator(layout, shift) as address:
        if refusal is None:
            check_clock(address, _ca(layout), said.append)
            assert len(said) == 1 and said[0].startswith("clock: "), said
            return
        with pytest.raises(JoinError, match=refusal) as refused:
            check_clock(address, _ca(layout), said.append)
    assert "synchronise this host's clock with NTP" in str(refused.value)
    assert not said


def test_a_coordinator_with_another_ca_is_refused(layout: ConsortiumLayout, tmp_path: Path) -> None:
    other = init_consortium(tmp_path / "other", (SITE,), "127.0.0.1")
    with (
        coordinator(other, 0.0) as address,
        pytest.raises(JoinError, match="does not verify with the kit's CA"),
    ):
        check_clock(address, _ca(layout), print)


def test_an_unreachable_coordinator_is_reported_and_let_be(layout: ConsortiumLayout) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: refused
        said: list[str] = []
        check_clock(address, _ca(layout), said.append)
    assert len(said) == 1 and said[0].startswith(f"clock not checked: {address} did not answer")


def test_site_join_refuses_a_clock_ahead_before_starting_the_supernode(
    small_federation: IngestedFederation, tmp_path: Path
) -> None:
    site_dir = small_federation.fresh_copies(tmp_path / "sites")[0]
    site = read_policy(site_dir).site_id
    consortium = init_consortium(tmp_path / "cons", (site,), "127.0.0.1")
    with coordinator(consortium, -30.0) as address:
        result = medfed("site", "join", "--kit", consortium.kit(site), "--site-dir", site_dir,
                        "--coordinator", address)  # fmt: skip
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert re.search(r"clock is (29|30|31)\.\d s ahead of the coordinator's", error), error
    assert error.endswith("synchronise this host's clock with NTP")
    assert "connecting to" not in result.stderr  # no SuperNode was started
    assert not (site_dir / "consortium").exists()  # nor the kit installed
