"""
Certificates for the TLS tests, generated per test run with trustme (and
cryptography where trustme cannot express something, e.g. SAN URIs).
"""

from __future__ import annotations

import datetime
from types import SimpleNamespace

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _write(directory, name, data: bytes) -> str:
    path = directory / name
    path.write_bytes(data)
    return str(path)


def _leaf(directory, name, leaf):
    return SimpleNamespace(
        cert=_write(directory, f"{name}.pem", leaf.cert_chain_pems[0].bytes()),
        key=_write(directory, f"{name}-key.pem", leaf.private_key_pem.bytes()),
        cert_pem=leaf.cert_chain_pems[0].bytes(),
        key_pem=leaf.private_key_pem.bytes(),
    )


def _sign_custom(ca: trustme.CA, subject_cn: str, sans: list[x509.GeneralName]) -> x509.Certificate:
    """A client certificate with arbitrary SANs, signed by a trustme CA."""
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


@pytest.fixture
def sign_custom():
    """C{sign_custom(trustme_ca, subject_cn, [GeneralName, ...]) -> x509.Certificate}."""
    return _sign_custom


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """
    ca: the trusted CA; server: localhost/127.0.0.1/::1; node1: client cert CN/SAN
    node1; other: client cert from another CA; expired: node3 from the right CA but
    expired yesterday.
    """
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    other_ca = trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    return SimpleNamespace(
        dir=d,
        trustme_ca=ca,
        ca=_write(d, "ca.pem", ca.cert_pem.bytes()),
        ca_pem=ca.cert_pem.bytes(),
        other_ca=_write(d, "other-ca.pem", other_ca.cert_pem.bytes()),
        server=_leaf(d, "server", ca.issue_cert("localhost", "127.0.0.1", "::1",
                                                common_name="localhost")),
        node1=_leaf(d, "node1", ca.issue_cert("node1", common_name="node1")),
        node2=_leaf(d, "node2", ca.issue_cert("node2", common_name="node2")),
        other=_leaf(d, "other", other_ca.issue_cert("node1", common_name="node1")),
        expired=_leaf(d, "expired", ca.issue_cert(
            "node3", common_name="node3",
            not_before=now - datetime.timedelta(days=10),
            not_after=now - datetime.timedelta(days=1))),
    )
