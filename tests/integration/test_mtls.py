"""
Mutual TLS over real sockets on 127.0.0.1: a twisted.web Site served through
L{modcluster.tls.tls_server_endpoint}, clients built with L{modcluster.tls}.
Certificates are generated per run by trustme.  Every wait is bounded.
"""

from __future__ import annotations

import datetime
import os
import time

import pytest
import pytest_twisted
import trustme
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, HTTPConnectionPool, ResponseNeverReceived, readBody
from twisted.web.resource import Resource
from twisted.web.server import Site

from modcluster.tls import (
    client_context_factory,
    peer_identities,
    server_context_factory,
    tls_server_endpoint,
)
from tests.support.tlsclient import ClientTLSPolicy

WAIT = 5.0

# Twisted 26.10's readBody warns for any Agent response (plain HTTP too): not ours.
pytestmark = pytest.mark.filterwarnings("ignore:Using readBody with a transport")


class WhoAmI(Resource):
    isLeaf = True

    def render_GET(self, request):
        ids = ",".join(sorted(peer_identities(request.channel.transport)))
        return f"secure={request.isSecure()} ids={ids}".encode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("mtls")
    ca, other_ca = trustme.CA(), trustme.CA()
    now = datetime.datetime.now(datetime.UTC)

    def leaf(name, cert):
        (d / f"{name}.pem").write_bytes(cert.cert_chain_pems[0].bytes())
        (d / f"{name}-key.pem").write_bytes(cert.private_key_pem.bytes())
        return str(d / f"{name}.pem"), str(d / f"{name}-key.pem")

    (d / "ca.pem").write_bytes(ca.cert_pem.bytes())
    return {
        "ca": str(d / "ca.pem"),
        "server": leaf("server", ca.issue_cert("localhost", "127.0.0.1", common_name="localhost")),
        "node1": leaf("node1", ca.issue_cert("node1", common_name="node1")),
        "other": leaf("other", other_ca.issue_cert("node1", common_name="node1")),
        "expired": leaf("expired", ca.issue_cert(
            "node3", common_name="node3", not_before=now - datetime.timedelta(days=5),
            not_after=now - datetime.timedelta(days=1))),
    }


async def _serve(reactor, pki, handshake_timeout=5.0):
    cert, key = pki["server"]
    options = server_context_factory(cert, key, pki["ca"], require_client_cert=True)
    endpoint = tls_server_endpoint(reactor, "tcp:0:interface=127.0.0.1", options, handshake_timeout)
    return await endpoint.listen(Site(WhoAmI()))


async def _get(reactor, port, pki, who):
    """GET / with an Agent presenting C{who}'s certificate (None: no certificate)."""
    cert, key = pki[who] if who else (None, None)
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent(reactor, contextFactory=ClientTLSPolicy(pki["ca"], cert, key), pool=pool)
    d = agent.request(b"GET", f"https://127.0.0.1:{port}/".encode())
    d.addCallback(readBody)
    d.addTimeout(WAIT, reactor)
    try:
        return await d
    finally:
        await pool.closeCachedConnections()


@pytest_twisted.ensureDeferred
async def test_good_client_then_refused_ones_then_good_again(pki):
    """
    A node certificate gets an answer (with its identity, over TLS); no certificate,
    another CA and an expired certificate are refused; the server keeps serving.
    """
    from twisted.internet import reactor

    port = await _serve(reactor, pki)
    try:
        n = port.getHost().port
        assert await _get(reactor, n, pki, "node1") == b"secure=True ids=node1"
        for who, alert in ((None, "certificate required"), ("other", "unknown ca"),
                           ("expired", "certificate expired")):
            with pytest.raises(ResponseNeverReceived) as e:
                await _get(reactor, n, pki, who)
            (reason,) = e.value.reasons
            assert reason.check(SSL.Error) and alert in str(reason.value), (who, reason)
        assert await _get(reactor, n, pki, "node1") == b"secure=True ids=node1"
    finally:
        await port.stopListening()


class Raw(Protocol):
    """Plain TCP client that sends nothing; fires C{closed} with the time it was cut."""

    def __init__(self):
        self.closed = defer.Deferred()

    def connectionLost(self, reason):
        self.closed.callback(time.monotonic())


@pytest_twisted.ensureDeferred
async def test_stalled_handshake_is_dropped(pki):
    """A client that connects and never says ClientHello is disconnected at the timeout."""
    from twisted.internet import reactor

    port = await _serve(reactor, pki, handshake_timeout=0.5)
    try:
        raw = Raw()
        started = time.monotonic()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), raw)
        cut = await raw.closed.addTimeout(WAIT, reactor)
        assert 0.4 <= cut - started < 3.0
        # and the listener still works
        assert await _get(reactor, port.getHost().port, pki, "node1") == b"secure=True ids=node1"
    finally:
        await port.stopListening()


class Collect(Protocol):
    def __init__(self):
        self.data = b""
        self.reason = None
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.reason = reason
        self.done.callback(None)


@pytest_twisted.ensureDeferred
async def test_client_context_factory_checks_the_server_name(pki):
    """The right name (DNS or IP) is accepted; a wrong one is refused by the client."""
    from twisted.internet import reactor

    cert, key = pki["node1"]
    port = await _serve(reactor, pki)
    try:
        n = port.getHost().port
        for host, ok in (("localhost", True), ("127.0.0.1", True), ("wrong.example", False)):
            creator = client_context_factory(host, pki["ca"], cert, key)
            proto = Collect()
            ep = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", n))
            await connectProtocol(ep, proto)
            await proto.done.addTimeout(WAIT, reactor)
            if ok:
                assert proto.data.startswith(b"HTTP/1.0 200") and b"ids=node1" in proto.data
            else:
                assert proto.data == b""
                assert proto.reason.check(VerificationError), proto.reason
    finally:
        await port.stopListening()



# A JSSE client configured like mod_cluster's JSSESocketFactory (PKCS12 keystore and
# truststore through KeyManagerFactory/TrustManagerFactory), plus host name checking.
JAVA_CLIENT = r"""
import java.io.*;
import java.net.*;
import java.security.KeyStore;
import javax.net.ssl.*;

public class MtlsClient {
    public static void main(String[] args) throws Exception {
        char[] pw = args[3].toCharArray();
        KeyStore ks = KeyStore.getInstance("PKCS12");
        try (InputStream in = new FileInputStream(args[1])) { ks.load(in, pw); }
        KeyStore ts = KeyStore.getInstance("PKCS12");
        try (InputStream in = new FileInputStream(args[2])) { ts.load(in, pw); }
        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        kmf.init(ks, pw);
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(ts);
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(kmf.getKeyManagers(), tmf.getTrustManagers(), null);
        try (SSLSocket s = (SSLSocket) ctx.getSocketFactory().createSocket("127.0.0.1", Integer.parseInt(args[0]))) {
            SSLParameters p = s.getSSLParameters();
            p.setEndpointIdentificationAlgorithm("HTTPS");
            s.setSSLParameters(p);
            s.setSoTimeout(10000);
            s.getOutputStream().write("GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".getBytes("ISO-8859-1"));
            s.getOutputStream().flush();
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            s.getInputStream().transferTo(out);
            System.out.print(out.toString("ISO-8859-1"));
        }
    }
}
"""


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_java_client_with_generated_keystores(tmp_path):
    """
    certs/generate's PKCS#12 keystore and truststore work in a real JSSE client doing
    mutual TLS against tls_server_endpoint with the generated balancer certificate.
    """
    import shutil
    import sys
    from pathlib import Path

    from twisted.internet import reactor
    from twisted.internet.utils import getProcessOutputAndValue

    java = shutil.which("java")
    if java is None:
        pytest.skip("no java on this machine (extra Java interoperability check)")
    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "dev"
    gen = await getProcessOutputAndValue(
        sys.executable, [str(repo / "certs" / "generate"), "--out", str(out)], env=dict(os.environ)
    ).addTimeout(60, reactor)
    assert gen[2] == 0, gen
    options = server_context_factory(str(out / "balancer.pem"), str(out / "balancer-key.pem"),
                                     str(out / "ca.pem"), require_client_cert=True)
    port = await tls_server_endpoint(reactor, "tcp:0:interface=127.0.0.1", options, 10).listen(
        Site(WhoAmI()))
    try:
        (tmp_path / "MtlsClient.java").write_text(JAVA_CLIENT)
        stdout, stderr, code = await getProcessOutputAndValue(
            java, ["-Xshare:auto", str(tmp_path / "MtlsClient.java"), str(port.getHost().port),
                   str(out / "node1.p12"), str(out / "truststore.p12"), "changeit"],
            env=dict(os.environ), path=str(tmp_path),
        ).addTimeout(60, reactor)
        assert code == 0, stderr.decode(errors="replace")
        assert stdout.startswith(b"HTTP/1.0 200"), stdout
        assert stdout.endswith(b"secure=True ids=node1"), stdout
    finally:
        await port.stopListening()
