"""
Node pools (smax/ttl, draining of removed or re-registered nodes), WebSocket
upgrades in memory, and the OPTIONS probe.
"""

import pytest

from tests.support.proxy_testlib import OK_100, Harness, parse_requests, parse_responses
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from modcluster.cluster.model import NodeEntry, NodeRuntime, NodeSettings
from modcluster.health import probe_http
from modcluster.proxy import IForwarder, IUpstream

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def test_interfaces_provided():
    h = Harness()
    h.node("n1", 8081)
    assert verifyObject(IForwarder, h.factory.http)
    c = h.client()
    c.send(GET)
    n = h.accept()
    assert verifyObject(IUpstream, n.proto)


def _two_busy_then_idle(h):
    c1, c2 = h.client(), h.client()
    c1.send(GET)
    c2.send(GET)
    n1, n2 = h.accept(), h.accept()
    n1.respond(OK_100)
    n2.respond(OK_100)
    return n1, n2


def test_idle_beyond_smax_closed_after_ttl():
    h = Harness()
    h.node("n1", 8081, smax=1, ttl=5.0)
    n1, n2 = _two_busy_then_idle(h)
    h.advance(3)
    assert not n1.closed and not n2.closed
    h.advance(4)
    # the most recently used one (n2) is kept: smax = 1
    assert n1.closed
    assert not n2.closed
    h.advance(100)
    assert not n2.closed


def test_smax_default_is_max_idle_per_node():
    h = Harness(max_idle_per_node=0)
    h.node("n1", 8081, ttl=5.0)
    n1, n2 = _two_busy_then_idle(h)
    h.advance(7)
    assert n1.closed and n2.closed


def test_removed_node_pool_drained():
    h = Harness()
    h.node("n1", 8081)
    h.node("n2", 8082)
    c = h.client()
    c.send(GET)
    idle = h.accept()
    idle.respond(OK_100)
    c2 = h.client()
    c2.send(GET)
    busy = h.accept()
    assert busy.port != idle.port
    route_idle = "n1" if idle.port == 8081 else "n2"
    route_busy = "n2" if route_idle == "n1" else "n1"
    busy_rt = h.nodeEntry(route_busy).rt
    ctx_rt = [rec.rt for rec in h.registry.table.contexts["/"]]
    h.registry.app("REMOVE-APP", route_idle, wildcard=True)
    h.registry.app("REMOVE-APP", route_busy, wildcard=True)
    h.advance(1)
    assert idle.closed  # idle connection of a vanished node: closed now
    assert not busy.closed  # busy: finishes its exchange first
    busy.respond(OK_100)
    assert parse_responses(c2.received())[0].status == 200
    assert busy.closed  # ...and is not pooled
    assert busy_rt.busy == 0
    assert [rt.in_flight for rt in ctx_rt] == [0, 0]


def test_reregistered_node_gets_new_pool():
    h = Harness()
    h.node("n1", 8081)
    c = h.client()
    c.send(GET)
    old = h.accept(8081)
    old.respond(OK_100)
    h.node("n1", 9091)  # same JVMRoute, another port: a new registration
    c.send(GET)
    new = h.accept(9091)
    assert parse_requests(new.received())[0].url == b"/"
    h.advance(1)
    assert old.closed


# -- WebSocket / Upgrade -----------------------------------------------------

WS_REQ = (b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
WS_101 = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")


def test_websocket_tunnel():
    h = Harness(enable_ws_tunnel=True)
    h.node("n1", 8081, type="ws")
    c = h.client()
    c.send(WS_REQ)
    n = h.accept()
    [req] = parse_requests(n.received())
    assert req.header(b"Upgrade") == b"websocket"
    assert req.header(b"Connection") == b"Upgrade"
    assert req.header(b"Sec-WebSocket-Key") == b"dGhlIHNhbXBsZSBub25jZQ=="
    n.respond(WS_101 + b"\x81\x02hi")
    raw = c.received()
    assert raw.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Upgrade: websocket\r\n" in raw and b"Connection: Upgrade\r\n" in raw
    assert raw.endswith(b"\r\n\r\n\x81\x02hi")
    c.send(b"\x81\x82abcd\x09\x0b")
    assert n.received() == b"\x81\x82abcd\x09\x0b"
    assert h.in_flight() == 1
    h.advance(120)  # idle tunnels are bounded by the read timeout
    assert c.closed
    assert h.counters_idle()


def test_websocket_tunnel_ends_when_node_closes():
    h = Harness(enable_ws_tunnel=True)
    h.node("n1", 8081, type="http")
    c = h.client()
    c.send(WS_REQ)
    n = h.accept()
    n.respond(WS_101)
    c.received()
    n.respond(b"\x88\x00")
    n.close()
    assert c.received() == b"\x88\x00"
    assert c.closed
    assert h.counters_idle()


def test_websocket_tunnel_ends_when_client_closes():
    h = Harness(enable_ws_tunnel=True)
    h.node("n1", 8081, type="wss")
    c = h.client()
    c.send(WS_REQ)
    n = h.accept()
    n.respond(WS_101)
    c.lose()
    assert n.aborted
    assert h.counters_idle()


SMUGGLED = b"GET /secret/../admin HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.mark.parametrize("pipelined", [False, True])
def test_bytes_after_an_upgrade_request_wait_for_the_101(pipelined):
    """
    Bytes a client sends right after an Upgrade request (in the same read)
    reach the node only once it has answered 101: a node that refuses the
    upgrade never sees them, else they would be its next request on that
    connection, one the proxy never checked or routed (WebSocket upgrade
    request smuggling: here a dot-segment path the proxy refuses, in a
    context it does not route).  Before, they went to the node right after
    the Upgrade request, also when that request waited behind another.
    """
    h = Harness(enable_ws_tunnel=True)
    h.node("n1", 8081, contexts=("/chat", "/"))
    c = h.client()
    c.send((GET if pipelined else b"") + WS_REQ + SMUGGLED)
    n = h.accept()
    if pipelined:
        assert parse_requests(n.received())[0].url == b"/"
        n.respond(OK_100)
    raw = n.received()
    assert raw.startswith(b"GET /chat HTTP/1.1\r\n") and raw.endswith(b"\r\n\r\n")
    assert b"admin" not in raw
    n.respond(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert n.received() == b""  # nothing after the refused upgrade
    assert [r.status for r in parse_responses(c.received())] == (
        [200, 404] if pipelined else [404])
    assert c.closed and n.closed
    assert h.counters_idle()


def test_bytes_after_an_upgrade_request_follow_the_101():
    """The early bytes go into the tunnel once the node answered 101, in order."""
    h = Harness(enable_ws_tunnel=True)
    h.node("n1", 8081)
    c = h.client()
    c.send(WS_REQ + b"\x81\x82abcd\x09\x0b")
    n = h.accept()
    raw = n.received()
    assert raw.startswith(b"GET /chat HTTP/1.1\r\n") and raw.endswith(b"\r\n\r\n")
    n.respond(WS_101)
    assert n.received() == b"\x81\x82abcd\x09\x0b"
    assert c.received().startswith(b"HTTP/1.1 101 ")
    c.send(b"\x81\x80more")
    assert n.received() == b"\x81\x80more"


def test_upgrade_stripped_without_tunnel():
    h = Harness()
    h.node("n1", 8081)
    c = h.client()
    c.send(WS_REQ + GET)
    n = h.accept()
    [req] = parse_requests(n.received())
    assert req.header(b"Upgrade") is None and req.header(b"Connection") is None
    n.respond(OK_100)
    # the pipelined GET after it is parsed and served as usual
    assert parse_requests(n.received())[0].url == b"/"
    n.respond(OK_100)
    assert [r.status for r in parse_responses(c.received())] == [200, 200]


def test_non_matching_upgrade_token_stripped():
    h = Harness(enable_ws_tunnel=True, ws_upgrade_header="websocket")
    h.node("n1", 8081)
    c = h.client()
    c.send(b"POST /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
           b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: 5\r\n\r\nhello"
           + GET)
    n = h.accept()
    [req] = parse_requests(n.received())
    assert req.header(b"Upgrade") is None
    assert req.header(b"HTTP2-Settings") is None  # listed in Connection
    assert req.body == b"hello"  # the body llhttp skipped is still forwarded
    n.respond(OK_100)
    assert parse_requests(n.received())[0].url == b"/"
    n.respond(OK_100)
    assert [r.status for r in parse_responses(c.received())] == [200, 200]


def test_any_upgrade_token_with_star():
    h = Harness(enable_ws_tunnel=True, ws_upgrade_header="*")
    h.node("n1", 8081)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: foo/2\r\nConnection: upgrade\r\n\r\n")
    [req] = parse_requests(h.accept().received())
    assert req.header(b"Upgrade") == b"foo/2"


def test_upgrade_refused_by_node_closes_client():
    h = Harness(enable_ws_tunnel=True)
    h.node("n1", 8081)
    c = h.client()
    c.send(WS_REQ)
    n = h.accept()
    n.respond(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
    raw = c.received()
    assert parse_responses(raw)[0].status == 426
    assert b"Connection: close" in raw
    assert c.closed
    assert n.closed
    assert h.counters_idle()


def test_unexpected_101_is_a_protocol_error():
    h = Harness()
    h.node("n1", 8081)
    c = h.client()
    c.send(GET)
    h.accept().respond(WS_101)
    assert parse_responses(c.received())[0].status in (502, 503)
    assert h.counters_idle()


# -- probe -------------------------------------------------------------------------


def _entry(port=8081, type="http"):
    return NodeEntry(1, NodeSettings(route="n1", host="127.0.0.1", port=port, type=type),
                     NodeRuntime())


def _probe_conn(reactor):
    host, port, factory, timeout, _ = reactor.tcpClients.pop()
    proto = factory.buildProtocol(IPv4Address("TCP", host, port))
    t = StringTransport()
    proto.makeConnection(t)
    return proto, t


def test_probe_sends_options_and_accepts_any_status():
    reactor = MemoryReactorClock()
    results = []
    probe_http(reactor, _entry(), 5.0).addCallback(results.append)
    proto, t = _probe_conn(reactor)
    assert t.value() == (b"OPTIONS * HTTP/1.0\r\n"
                         b"User-Agent: txmodcluster (internal mod_cluster connection)\r\n\r\n")
    proto.dataReceived(b"HTTP/1.1 400 Bad")
    assert results == []
    proto.dataReceived(b" Request\r\n")
    assert results == [True]
    assert t.disconnecting
    assert not reactor.getDelayedCalls()


def test_probe_times_out():
    reactor = MemoryReactorClock()
    results = []
    probe_http(reactor, _entry(), 3.0).addCallback(results.append)
    proto, t = _probe_conn(reactor)
    reactor.advance(2.9)
    assert results == []
    reactor.advance(0.2)
    assert results == [False]
    assert t.disconnecting


def test_probe_refused_and_garbage():
    reactor = MemoryReactorClock()
    results = []
    probe_http(reactor, _entry(), 3.0).addCallback(results.append)
    host, port, factory, timeout, _ = reactor.tcpClients.pop()
    factory.clientConnectionFailed(reactor.connectors[-1], Failure(ConnectionRefusedError()))
    assert results == [False]
    probe_http(reactor, _entry(), 3.0).addCallback(results.append)
    proto, t = _probe_conn(reactor)
    proto.dataReceived(b"SSH-2.0-OpenSSH\r\n")
    assert results == [False, False]


def test_forwarder_may_pass_header_pairs():
    """A forwarder with decoded headers (AJP) may hand the front (name, value) pairs."""
    h = Harness()
    h.node("n1", 8081)
    c = h.client()
    c.send(GET)
    h.accept()
    ex = c.proto._current
    ex.responseInformational(100, b"Continue", [])
    ex.responseHead(200, b"OK", [(b"Set-Cookie", b"a=1"), (b"Content-Length", b"2")], 2)
    ex.responseBody(b"ok")
    ex.responseEnd()
    raw = c.received()
    assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\n")
    assert parse_responses(raw.split(b"\r\n\r\n", 1)[1])[0].body == b"ok"
