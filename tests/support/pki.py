"""A throwaway PKI for TLS tests: a CA, another (untrusted) CA, a server certificate for 127.0.0.1/localhost
signed by the CA, and a client certificate. Keys are EC P-256; everything is valid for one hour."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str, key, issuer_name: str, issuer_key, *, ca: bool, server: bool = False
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key) -> tuple[str, str]:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(path.with_suffix(".crt")), str(path.with_suffix(".key"))


def make_pki(d: Path) -> dict:
    ca_key, other_key = _key(), _key()
    ca = _cert("mesh-test-ca", ca_key, "mesh-test-ca", ca_key, ca=True)
    other_ca = _cert("other-ca", other_key, "other-ca", other_key, ca=True)
    server_key, client_key = _key(), _key()
    files = {
        "ca": _write(d / "ca", ca, ca_key)[0],
        "other_ca": _write(d / "other", other_ca, other_key)[0],
        "server": _write(
            d / "server", _cert("etcd", server_key, "mesh-test-ca", ca_key, ca=False, server=True), server_key
        ),
        "client": _write(
            d / "client", _cert("mesh", client_key, "mesh-test-ca", ca_key, ca=False), client_key
        ),
    }
    return files
