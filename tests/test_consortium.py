"""`medfed consortium init`: a CA, the coordinator's TLS certificate and signing key, and
kits that hold only what their site needs."""

from __future__ import annotations

import socket
import ssl
import threading
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from test_cli import medfed

from server.consortium import ConsortiumLayout

SITES = ("hospital-a", "hospital-b", "hospital-c")


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> ConsortiumLayout:
    out = tmp_path_factory.mktemp("consortium") / "consortium"
    result = medfed(
        "consortium", "init", "--out", out, "--sites", ",".join(SITES),
        "--coordinator-host", "10.1.2.3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    for site in SITES:
        assert str(out / "kits" / site) in result.stdout
    return ConsortiumLayout(out)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_the_coordinator_certificate_is_the_cas_and_names_its_host(
    consortium: ConsortiumLayout,
) -> None:
    ca, tls = _cert(consortium.ca_cert), _cert(consortium.tls_cert)
    tls.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = tls.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1",
        "10.1.2.3",
    }
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    usage = tls.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    record = tomllib.loads((consortium.root / "consortium.toml").read_text())
    assert record["sites"] == list(SITES)
    assert record["ca_sha256"] == ca.fingerprint(hashes.SHA256()).hex()


def test_each_kit_holds_only_its_sites_key_and_public_material(
    consortium: ConsortiumLayout,
) -> None:
    secrets = {
        p.read_bytes() for p in (consortium.ca_key, consortium.tls_key, consortium.signing_key)
    }
    node_keys = set()
    for site in SITES:
        kit = consortium.kit(site)
        assert sorted(p.name for p in kit.iterdir()) == [
            "README.txt",
            "ca.pem",
            "kit.toml",
            "model-signing.pub",
            "supernode.key",
            "supernode.pub",
        ]
        assert not {p.read_bytes() for p in kit.iterdir()} & secrets
        assert (kit / "supernode.key").stat().st_mode & 0o777 == 0o600
        # OpenSSH, the format Flower's SuperNode reads (it refuses PKCS#8)
        node_key = serialization.load_ssh_private_key((kit / "supernode.key").read_bytes(), None)
        public = node_key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        assert (kit / "supernode.pub").read_bytes().strip() == public
        assert consortium.supernode_public_key(site).read_bytes().strip() == public
        node_keys.add((kit / "supernode.key").read_bytes())
        settings = tomllib.loads((kit / "kit.toml").read_text())
        assert settings["site_id"] == site and settings["coordinator"].startswith("10.1.2.3:")
        ca = _cert(kit / "ca.pem")
        assert settings["ca_sha256"] == ca.fingerprint(hashes.SHA256()).hex()
        assert (
            kit / "model-signing.pub"
        ).read_bytes() == consortium.signing_public_key.read_bytes()
    assert len(node_keys) == len(SITES)
    for secret in (consortium.ca_key, consortium.tls_key, consortium.signing_key):
        assert secret.stat().st_mode & 0o777 == 0o600


def _handshake(consortium: ConsortiumLayout, ca_file: Path) -> str:
    """A real TLS connection on 127.0.0.1 to a server holding the coordinator's certificate;
    the client trusts ``ca_file`` only. Returns the negotiated TLS version."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(consortium.tls_cert, consortium.tls_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        connection, _ = listener.accept()
        try:
            with server_context.wrap_socket(connection, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            version = tls.version() or ""
            tls.sendall(b"x")
            return version
    finally:
        thread.join(timeout=10)
        listener.close()


def test_a_site_trusts_the_coordinator_through_its_kit_and_nothing_else(
    consortium: ConsortiumLayout, tmp_path: Path
) -> None:
    assert _handshake(consortium, consortium.kit(SITES[0]) / "ca.pem").startswith("TLSv1.")
    other = tmp_path / "other"
    assert medfed("consortium", "init", "--out", other, "--sites", "x,y").returncode == 0
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(consortium, other / "ca" / "ca.pem")


@pytest.mark.parametrize(
    ("sites", "message"),
    [
        ("a", "at least 2 sites"),
        ("a,a", "must be unique: a"),
        ("a,b c", "site id 'b c' must be"),
    ],
)
def test_bad_site_lists_are_one_line_errors(tmp_path: Path, sites: str, message: str) -> None:
    result = medfed("consortium", "init", "--out", tmp_path / "c", "--sites", sites)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not (tmp_path / "c").exists()


def test_an_existing_consortium_is_never_overwritten(consortium: ConsortiumLayout) -> None:
    before = consortium.ca_key.read_bytes()
    result = medfed("consortium", "init", "--out", consortium.root, "--sites", "a,b")
    assert result.returncode == 1 and "is not empty" in result.stderr
    assert consortium.ca_key.read_bytes() == before
