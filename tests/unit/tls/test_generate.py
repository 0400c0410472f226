"""
certs/generate, run into a temporary directory: what it writes, that the material
chains and works with modcluster.tls (in-memory handshake), idempotence and --force.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim

from modcluster.tls import client_context_factory, peer_identities, server_context_factory

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "certs" / "generate"
FILES = {"ca.pem", "ca-key.pem", "balancer.pem", "balancer-key.pem", "truststore.p12",
         "node1.pem", "node1-key.pem", "node1.p12", "node2.pem", "node2-key.pem", "node2.p12"}


def run(*args, executable=None):
    cmd = [str(SCRIPT), *args] if executable is None else [executable, str(SCRIPT), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "dev"
    result = run("--out", str(out))  # through the shebang (and the .venv re-exec)
    assert result.returncode == 0, result.stderr
    return out


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(cert):
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_script_is_executable_and_ignored():
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env python3\n")
    assert "dev/" in (REPO / "certs" / ".gitignore").read_text().split()


def test_files_and_permissions(generated):
    assert {p.name for p in generated.iterdir()} == FILES
    for name in FILES:
        mode = stat.S_IMODE((generated / name).stat().st_mode)
        if name.endswith("-key.pem") or name in ("node1.p12", "node2.p12"):
            assert mode == 0o600, name
        else:
            assert mode & 0o077 == 0o044, name


def test_chain_names_and_usages(generated):
    ca = _cert(generated / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca_key = serialization.load_pem_private_key((generated / "ca-key.pem").read_bytes(), None)
    assert ca_key.public_key() == ca.public_key()

    balancer = _cert(generated / "balancer.pem")
    balancer.verify_directly_issued_by(ca)
    sans = _sans(balancer)
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert ExtendedKeyUsageOID.SERVER_AUTH in balancer.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value

    for node in ("node1", "node2"):
        cert = _cert(generated / f"{node}.pem")
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == node
        assert _sans(cert).get_values_for_type(x509.DNSName) == [node]
        assert ExtendedKeyUsageOID.CLIENT_AUTH in cert.extensions.get_extension_for_class(
            x509.ExtendedKeyUsage).value
        key = serialization.load_pem_private_key((generated / f"{node}-key.pem").read_bytes(), None)
        assert key.public_key() == cert.public_key()
        assert cert.not_valid_after_utc > cert.not_valid_before_utc


def test_pkcs12_keystores(generated):
    """node*.p12: key + certificate + CA under the password changeit, alias = node name."""
    ca = _cert(generated / "ca.pem")
    for node in ("node1", "node2"):
        p12 = pkcs12.load_pkcs12((generated / f"{node}.p12").read_bytes(), b"changeit")
        assert p12.cert.certificate == _cert(generated / f"{node}.pem")
        assert p12.cert.friendly_name == node.encode()
        assert p12.key.public_key() == p12.cert.certificate.public_key()
        assert [c.certificate for c in p12.additional_certs] == [ca]
        with pytest.raises(ValueError):
            pkcs12.load_pkcs12((generated / f"{node}.p12").read_bytes(), b"wrong")
    trust = pkcs12.load_pkcs12((generated / "truststore.p12").read_bytes(), b"changeit")
    assert trust.key is None
    assert [c.certificate for c in trust.additional_certs] == [ca]


@pytest.mark.skipif(shutil.which("keytool") is None, reason="no keytool (Java) here")
def test_java_keytool_reads_them(generated):
    """keytool sees a PrivateKeyEntry per node and a trustedCertEntry in the truststore."""
    for name, kind in (("node1.p12", "PrivateKeyEntry"), ("truststore.p12", "trustedCertEntry")):
        result = subprocess.run(
            ["keytool", "-list", "-storetype", "PKCS12", "-keystore", str(generated / name),
             "-storepass", "changeit"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert kind in result.stdout


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1"])
def test_material_works_with_modcluster_tls(generated, host):
    """balancer + node1 certificates complete a mutual TLS handshake (in memory)."""
    g = str(generated)
    server_opts = server_context_factory(f"{g}/balancer.pem", f"{g}/balancer-key.pem",
                                         f"{g}/ca.pem", require_client_cert=True)
    client_opts = client_context_factory(host, f"{g}/ca.pem", f"{g}/node1.pem",
                                         f"{g}/node1-key.pem")
    received = []

    class Server(Protocol):
        def dataReceived(self, data):
            received.append((data, peer_identities(self.transport)))

    clock = Clock()
    server = TLSMemoryBIOFactory(server_opts, False, Factory.forProtocol(Server),
                                 clock=clock).buildProtocol(None)
    client = TLSMemoryBIOFactory(client_opts, True, Factory.forProtocol(Protocol),
                                 clock=clock).buildProtocol(None)
    pump = iosim.connect(server, iosim.FakeTransport(server, True, IPv4Address("TCP", "127.0.0.1", 1)),
                         client, iosim.FakeTransport(client, False), clock=clock)
    client.write(b"ping")
    pump.flush()
    assert received == [(b"ping", frozenset({"node1"}))]


def test_idempotent_then_force(tmp_path):
    out = tmp_path / "dev"
    first = run("--out", str(out), executable=sys.executable)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = run("--out", str(out), executable=sys.executable)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    forced = run("--out", str(out), "--force", executable=sys.executable)
    assert forced.returncode == 0, forced.stderr
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after.keys() == before.keys()
    assert after["ca.pem"] != before["ca.pem"]


def test_incomplete_directory_needs_force(tmp_path):
    out = tmp_path / "dev"
    assert run("--out", str(out), executable=sys.executable).returncode == 0
    (out / "node2.p12").unlink()
    partial = run("--out", str(out), executable=sys.executable)
    assert partial.returncode == 1
    assert "node2.p12" in partial.stderr and "--force" in partial.stderr
    assert not (out / "node2.p12").exists()


def test_options(tmp_path):
    out = tmp_path / "dev"
    result = run("--out", str(out), "--nodes", "web-a", "--password", "s3cret", "--days", "30",
                 executable=sys.executable)
    assert result.returncode == 0, result.stderr
    assert {"web-a.pem", "web-a-key.pem", "web-a.p12"} <= {p.name for p in out.iterdir()}
    p12 = pkcs12.load_pkcs12((out / "web-a.p12").read_bytes(), b"s3cret")
    cert = p12.cert.certificate
    assert 29 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 31
    bad = run("--out", str(tmp_path / "x"), "--nodes", "a b", executable=sys.executable)
    assert bad.returncode == 2


def test_clear_error_without_cryptography(tmp_path):
    """A Python without cryptography (and no re-exec) explains what is missing."""
    env = dict(os.environ, TXMODCLUSTER_CERTS_REEXEC="1")
    result = subprocess.run([sys.executable, "-S", str(SCRIPT), "--out", str(tmp_path / "x")],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1
    assert "cryptography" in result.stderr and ".venv" in result.stderr
    assert not (tmp_path / "x").exists()
