"""A consortium's keys and certificates, and one kit per site (`medfed consortium init`).

Layout of a consortium directory ``DIR/`` (made once, at the coordinator's institution)::

    consortium.toml                 sites, coordinator address, certificate fingerprints
    ca/ca.pem                       the consortium CA's certificate (public)
    ca/ca.key                       its private key (0600): move it offline after init
    coordinator/tls.pem, tls.key    the SuperLink's TLS certificate (signed by the CA) and key
    coordinator/model-signing.key   the coordinator's Ed25519 model-signing key (0600)
    coordinator/model-signing.pub   its public key
    coordinator/supernodes/<site>.pub   each site's SuperNode public key (OpenSSH), registered
    kits/<site>/                    what the site needs, and nothing else:
        kit.toml                    site id, coordinator address, what each file is
        ca.pem                      to check the coordinator's TLS certificate
        model-signing.pub           to check the coordinator's signature on every model
        supernode.key               the site's SuperNode authentication key (OpenSSH, 0600)
        supernode.pub               its public key (the coordinator has a copy)
        README.txt                  how to join

Private keys are written with mode 0600 and never printed or logged. A kit holds no other
site's key and no coordinator secret: handing a kit to the wrong site exposes only that
site's identity.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from task.signing import write_private_key, write_signing_key

CONSORTIUM_FILE = "consortium.toml"
KIT_FILE = "kit.toml"
#: The coordinator's one port: Flower 1.42's SuperLink serves the Fleet API (SuperNodes), the
#: Control API and the Runtime API on one HTTPS port; medfed's guard (`server.guard`) serves
#: only the Fleet API to other hosts.
SUPERLINK_PORT = 9092
_SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CA_YEARS = 5
CERT_YEARS = 2


class ConsortiumError(RuntimeError):
    """The consortium cannot be set up or read (one line)."""


@dataclass(frozen=True)
class ConsortiumLayout:
    """Paths inside a consortium directory."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def coordinator(self) -> Path:
        return self.root / "coordinator"

    @property
    def tls_cert(self) -> Path:
        return self.coordinator / "tls.pem"

    @property
    def tls_key(self) -> Path:
        return self.coordinator / "tls.key"

    @property
    def signing_key(self) -> Path:
        return self.coordinator / "model-signing.key"

    @property
    def signing_public_key(self) -> Path:
        return self.coordinator / "model-signing.pub"

    def supernode_public_key(self, site: str) -> Path:
        return self.coordinator / "supernodes" / f"{site}.pub"

    def kit(self, site: str) -> Path:
        return self.root / "kits" / site


def parse_sites(text: str) -> tuple[str, ...]:
    """Site ids from ``a,b,c``; `ConsortiumError` for an invalid, duplicate or missing id."""
    sites = tuple(s.strip() for s in text.split(",") if s.strip())
    if len(sites) < 2:
        raise ConsortiumError("a consortium needs at least 2 sites (--sites a,b)")
    for site in sites:
        if not _SITE_ID.match(site):
            raise ConsortiumError(f"site id {site!r} must be 1-64 letters, digits, '_', '.' or '-'")
    duplicates = sorted({s for s in sites if sites.count(s) > 1})
    if duplicates:
        raise ConsortiumError(f"site ids must be unique: {', '.join(duplicates)}")
    return sites


def init_consortium(out: Path, sites: tuple[str, ...], coordinator_host: str) -> ConsortiumLayout:
    """Create the consortium directory ``out`` (which must not exist or be empty): CA,
    coordinator TLS certificate for ``coordinator_host``, model-signing key, one SuperNode
    key pair and kit per site. Returns its layout."""
    if out.exists() and any(out.iterdir()):
        raise ConsortiumError(f"{out}: exists and is not empty; a consortium is made once")
    layout = ConsortiumLayout(out)
    for folder in (layout.ca_cert.parent, layout.coordinator / "supernodes"):
        folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = _ca_certificate(ca_key)
    write_private_key(layout.ca_key, ca_key)
    layout.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls_key = ec.generate_private_key(ec.SECP256R1())
    tls = _server_certificate(tls_key, ca, ca_key, coordinator_host)
    write_private_key(layout.tls_key, tls_key)
    layout.tls_cert.write_bytes(tls.public_bytes(serialization.Encoding.PEM))
    write_signing_key(layout.signing_key, layout.signing_public_key)

    address = f"{coordinator_host}:{SUPERLINK_PORT}"
    for site in sites:
        kit = layout.kit(site)
        kit.mkdir(parents=True)
        node_key = ec.generate_private_key(ec.SECP384R1())
        write_private_key(kit / "supernode.key", node_key, serialization.PrivateFormat.OpenSSH)
        public = node_key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        (kit / "supernode.pub").write_bytes(public + b"\n")
        layout.supernode_public_key(site).write_bytes(public + b"\n")
        (kit / "ca.pem").write_bytes(layout.ca_cert.read_bytes())
        (kit / "model-signing.pub").write_bytes(layout.signing_public_key.read_bytes())
        (kit / KIT_FILE).write_text(
            tomli_w.dumps(
                {
                    "site_id": site,
                    "coordinator": address,
                    "ca_certificate": "ca.pem",
                    "ca_sha256": _fingerprint(ca),
                    "model_signing_public_key": "model-signing.pub",
                    "supernode_private_key": "supernode.key",
                    "supernode_public_key": "supernode.pub",
                }
            ),
            encoding="utf-8",
        )
        (kit / "README.txt").write_text(_kit_readme(site, address), encoding="utf-8")
    (out / CONSORTIUM_FILE).write_text(
        tomli_w.dumps(
            {
                "sites": list(sites),
                "coordinator_host": coordinator_host,
                "port": SUPERLINK_PORT,
                "ca_sha256": _fingerprint(ca),
                "tls_sha256": _fingerprint(tls),
            }
        ),
        encoding="utf-8",
    )
    return layout


def _fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "medfed consortium"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = _name("medfed consortium CA")
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    host: str,
) -> x509.Certificate:
    """A TLS server certificate for ``host``, also valid for localhost and 127.0.0.1."""
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 * CERT_YEARS))
        .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(names))), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )


def _kit_readme(site: str, address: str) -> str:
    return f"""medfed consortium kit for site {site}

This folder is for {site} only. It holds {site}'s SuperNode key (supernode.key): keep it
readable by the account that runs medfed and by nobody else. It holds no patient data.

1. Check that ca.pem's SHA-256 fingerprint matches the one the coordinator gave you by
   another channel (phone, signed letter): kit.toml's ca_sha256.
2. Join the consortium with your site store (made by `medfed site ingest`):

       medfed site join --kit {site}-kit --site-dir SITE

   It checks the kit, records the coordinator's model-signing key in SITE/site.toml (every
   model is then checked before it is loaded) and connects to {address} over TLS.
3. Allow outgoing TCP to {address} through your firewall. Nothing connects to your site.
"""


def instructions(layout: ConsortiumLayout, sites: tuple[str, ...]) -> str:
    """What to do next, for the coordinator's operator (no secret in it)."""
    kits = "\n".join(f"  {site}: {layout.kit(site)}" for site in sites)
    return f"""consortium written to {layout.root}
  CA certificate:     {layout.ca_cert}  (its key, {layout.ca_key}: move it offline now)
  coordinator TLS:    {layout.tls_cert}
  model signing key:  {layout.signing_key}  (stays with the coordinator)
kits, one per site (send each to its site only, over a secure channel; tell each site
the CA fingerprint in {CONSORTIUM_FILE} by another channel):
{kits}
then: medfed coordinator start --consortium {layout.root}"""
