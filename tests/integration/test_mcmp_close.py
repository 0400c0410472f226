"""
Replies of the management listener that say C{Connection: close} really close
the connection once the whole reply is written (issue 14 §1), over real
loopback sockets, plain and TLS.  The stock Java listener reads such a reply
until EOF: a connection left open makes it wait for its socket timeout.

The clients below send exactly what the Java listener sends
(C{Connection: Keep-Alive}), collect every byte, and report when the server
closes.  Each wait is bounded; an open connection fails the test at the bound.
"""

from __future__ import annotations

import pytest
import pytest_twisted
import trustme
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol

from modcluster.cluster.registry import Limits, Registry
from modcluster.mcmp.handler import MCMPHandler
from modcluster.mcmp.resource import ManagementRoot, ManagementSite, MCMPResource
from modcluster.tls import client_context_factory, server_context_factory, tls_server_endpoint
from tests.support.fixtures import parse_response

#: generous bound for "promptly": the old code kept the connection 60 s (idle timeout)
WAIT = 10.0


@pytest.fixture
def reactor():
    """The global reactor pytest-twisted runs."""
    from twisted.internet import reactor

    return reactor


class _Prober:
    def probe(self, node):
        return defer.succeed(True)


class Collect(Protocol):
    """Collects everything received; C{closed} fires with it at EOF."""

    def __init__(self):
        self.data = b""
        self.closed = defer.Deferred()
        self.got = defer.Deferred()
        self.want = None

    def dataReceived(self, data):
        self.data += data
        if self.want is not None and self.want(self.data) and not self.got.called:
            self.got.callback(self.data)

    def connectionLost(self, reason):
        self.closed.callback(self.data)


def _site(reactor):
    registry = Registry(reactor, Limits())
    handler = MCMPHandler(registry, _Prober(), reactor)
    return ManagementSite(ManagementRoot(MCMPResource(handler)), timeout=60.0)


def _request(method: bytes, body: bytes, port: int) -> bytes:
    head = [method + b" / HTTP/1.1", b"Host: 127.0.0.1:%d" % port]
    if body:
        head.append(b"Content-Length: %d" % len(body))
    head += [b"User-Agent: ClusterListener/1.0", b"Connection: Keep-Alive"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def _exchange(reactor, endpoint, port, requests, until_close: bool):
    proto = Collect()
    await connectProtocol(endpoint, proto)
    try:
        for method, body in requests:
            proto.transport.write(_request(method, body, port))
        if until_close:
            data = await proto.closed.addTimeout(WAIT, reactor)
        else:
            proto.want = lambda d: d.count(b"HTTP/1.1 ") == len(requests) and d.endswith(
                b"\r\n\r\n") or b"State=OK" in d
            data = await proto.got.addTimeout(WAIT, reactor)
        return data, proto
    finally:
        if not proto.closed.called:
            proto.transport.loseConnection()
            await proto.closed


def _split(data: bytes) -> list[bytes]:
    parts = [b"HTTP/1.1 " + p for p in data.split(b"HTTP/1.1 ")[1:]]
    return parts


@pytest_twisted.ensureDeferred
async def test_status_for_unknown_route_closes_after_the_whole_reply(reactor):
    """The issue's reproduction: STATUS for an unknown JVMRoute, Keep-Alive, raw socket."""
    port = reactor.listenTCP(0, _site(reactor), interface="127.0.0.1")
    try:
        n = port.getHost().port
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", n)
        data, _ = await _exchange(reactor, endpoint, n,
                                  [(b"STATUS", b"JVMRoute=nobody&Load=50")], until_close=True)
    finally:
        await port.stopListening()
    response = parse_response(data)
    assert response.status == 500
    assert response.header("Type") == "MEM"
    assert response.header("Connection") == "close"
    assert response.header("Content-Length") == "0"
    assert data.endswith(b"\r\n\r\n")


@pytest_twisted.ensureDeferred
async def test_keep_alive_reply_keeps_the_connection(reactor):
    """A successful reply does not say close and the connection stays usable."""
    port = reactor.listenTCP(0, _site(reactor), interface="127.0.0.1")
    try:
        n = port.getHost().port
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", n)
        proto = Collect()
        await connectProtocol(endpoint, proto)
        proto.want = lambda d: d.count(b"HTTP/1.1 200") == 2
        proto.transport.write(_request(b"CONFIG", b"JVMRoute=node1&Host=127.0.0.1&Port=8009",
                                       n))
        proto.transport.write(_request(b"INFO", b"", n))
        data = await proto.got.addTimeout(WAIT, reactor)
        assert not proto.closed.called
        assert b"connection: close" not in data.lower()
        # an error on the same connection: whole reply, then EOF
        proto.transport.write(_request(b"STATUS", b"JVMRoute=other&Load=1", n))
        data = await proto.closed.addTimeout(WAIT, reactor)
    finally:
        await port.stopListening()
    last = parse_response(_split(data)[-1])
    assert last.status == 500 and last.header("Connection") == "close"


@pytest_twisted.ensureDeferred
async def test_pipelined_request_after_an_error_is_not_answered(reactor):
    """After a closing reply nothing more is read: the next request gets EOF, not a reply."""
    port = reactor.listenTCP(0, _site(reactor), interface="127.0.0.1")
    try:
        n = port.getHost().port
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", n)
        data, _ = await _exchange(reactor, endpoint, n,
                                  [(b"STATUS", b"JVMRoute=x&Load=1"), (b"INFO", b"")],
                                  until_close=True)
    finally:
        await port.stopListening()
    assert len(_split(data)) == 1
    assert parse_response(data).status == 500


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("mcmp-close-tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1", common_name="localhost")
    (d / "ca.pem").write_bytes(ca.cert_pem.bytes())
    (d / "server.pem").write_bytes(leaf.cert_chain_pems[0].bytes())
    (d / "server-key.pem").write_bytes(leaf.private_key_pem.bytes())
    return {k: str(d / f"{k}.pem") for k in ("ca", "server", "server-key")}


@pytest_twisted.ensureDeferred
async def test_tls_listener_closes_after_an_error_reply(reactor, pki):
    """Same over the TLS management listener (close_notify, then EOF)."""
    options = server_context_factory(pki["server"], pki["server-key"], None,
                                     require_client_cert=False)
    endpoint = tls_server_endpoint(reactor, "tcp:0:interface=127.0.0.1", options, 5.0)
    port = await endpoint.listen(_site(reactor))
    try:
        n = port.getHost().port
        client = wrapClientTLS(client_context_factory("127.0.0.1", pki["ca"]),
                               TCP4ClientEndpoint(reactor, "127.0.0.1", n))
        data, _ = await _exchange(reactor, client, n,
                                  [(b"ENABLE-APP", b"JVMRoute=ghost&Alias=localhost&Context=/a")],
                                  until_close=True)
    finally:
        await port.stopListening()
    response = parse_response(data)
    assert response.status == 500
    assert response.header("Connection") == "close"
