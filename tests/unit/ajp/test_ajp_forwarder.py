"""
L{modcluster.proxy.ajp.AJPForwarder} in memory: the real front
(L{ProxyFactory}) and a real L{Registry} on a L{MemoryReactorClock}, clients on
L{StringTransport}s, nodes as L{FakeAJPContainer}s paired with the
forwarder's connections through L{iosim}.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Optional

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import directlyProvides
from zope.interface.verify import verifyObject

from modcluster.proxy.ajp import AJPConnection, AJPForwarder
from modcluster.ajp.container import (
    encode_end_response,
    encode_send_body_chunk,
    encode_send_headers,
)
from modcluster.ajp.packets import CPING_PACKET, max_request_chunk
from modcluster.ajp.protocol import IAJPResponseReceiver
from modcluster.ajp.testing import ContainerExchange, FakeAJPContainer, echo, respond
from modcluster.cluster.model import BalancerSettings, NodeSettings
from modcluster.cluster.registry import Registry
from modcluster.config import ProxyConfig
from modcluster.proxy import ProxyFactory
from modcluster.proxy.interfaces import IForwarder, IUpstream
from tests.support.proxy_testlib import ClientConn
from tests.support.proxy_testlib import Response, parse_responses as parse

CLIENT_ADDR = "127.0.0.9"
SECRET = "s3cr3t"


# -- harness ------------------------------------------------------------------------


class RecordingTransport(iosim.FakeTransport):
    """The forwarder side of a node connection: records pause/resume."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.pauses = 0
        self.resumes = 0

    def pauseProducing(self) -> None:
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.resumes += 1


class Node:
    """One accepted node connection: a fake container and its pump."""

    def __init__(self, container: FakeAJPContainer, pump: iosim.IOPump,
                 transport: RecordingTransport, port: int) -> None:
        self.container = container
        self.pump = pump
        self.transport = transport
        self.port = port

    @property
    def requests(self):
        return self.container.requests

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnected)


class CountingTransport(StringTransport):
    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


class Client(ClientConn):
    """proxy_testlib's client connection, plus whether the proxy aborted it."""

    @property
    def aborted(self) -> bool:
        return self.transport.disconnected


class Harness:
    def __init__(self, **config) -> None:
        config.setdefault("ajp_secret", SECRET)
        self.reactor = MemoryReactorClock()
        self.registry = Registry(self.reactor)
        self.failures: list[tuple[str, str]] = []
        self.successes: list[str] = []
        self.config = ProxyConfig(**config)
        self.forwarder = AJPForwarder(self.reactor, self.config)
        self.factory = ProxyFactory(self.reactor, self.config, lambda: self.registry.table,
                                    self._failed, self.successes.append,
                                    forwarders={"ajp": self.forwarder})
        self.factory.startFactory()
        self.nodes: list[Node] = []

    def _failed(self, route: str, reason: str) -> None:
        self.failures.append((route, reason))
        self.registry.set_error(route, reason)

    def node(self, route: str, port: int, *, contexts=("/",), aliases=("localhost",),
             balancer: Optional[BalancerSettings] = None, **settings) -> None:
        b = balancer or self.registry.balancers.get("mycluster") or BalancerSettings("mycluster")
        self.registry.config(b, NodeSettings(route=route, host="127.0.0.1", port=port, type="ajp",
                                             balancer=b.name, **settings),
                             [(list(aliases), list(contexts))])
        self.registry.app("ENABLE-APP", route, list(aliases), list(contexts))
        self.registry.apply_status(route, 100, True)

    def entry(self, route: str):
        return self.registry.table.by_route[route]

    def counters_idle(self) -> bool:
        table = self.registry.table
        return (all(n.rt.busy == 0 for n in table.nodes)
                and all(rec.rt.in_flight == 0
                        for records in table.contexts.values() for rec in records))

    def client(self, secure: bool = False, transport=None) -> Client:
        t = transport or CountingTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8000),
                                           peerAddress=IPv4Address("TCP", CLIENT_ADDR, 40000))
        if secure:
            directlyProvides(t, ISSLTransport)
        p = self.factory.buildProtocol(t.getPeer())
        p.makeConnection(t)
        return Client(p, t)

    def pending(self, port: Optional[int] = None) -> list:
        return [c for c in self.reactor.tcpClients if port is None or c[1] == port]

    def _take(self, port: Optional[int]):
        for i, c in enumerate(self.reactor.tcpClients):
            if port is None or c[1] == port:
                del self.reactor.tcpClients[i]
                return c
        raise AssertionError(f"no pending connection to port {port}")

    def accept(self, port: Optional[int] = None,
               handler: Optional[Callable[[ContainerExchange], None]] = None,
               answer_cping: bool = True, flush: bool = True,
               packet_size: int = 8192) -> Node:
        host, p, factory, timeout, bind = self._take(port)
        proto = factory.buildProtocol(IPv4Address("TCP", host, p))
        container = FakeAJPContainer(handler if handler is not None else respond(
            200, [(b"Content-Type", b"text/plain"), (b"Content-Length", b"5")], b"hello"),
            packet_size)
        container.answerCPing = answer_cping
        server_t = iosim.FakeTransport(container, True,
                                       hostAddress=IPv4Address("TCP", host, p),
                                       peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        client_t = RecordingTransport(proto, False,
                                      hostAddress=IPv4Address("TCP", "127.0.0.1", 50000),
                                      peerAddress=IPv4Address("TCP", host, p))
        pump = iosim.connect(container, server_t, proto, client_t, greet=False,
                             clock=self.reactor)
        node = Node(container, pump, client_t, p)
        self.nodes.append(node)
        if flush:
            self.flush()
        return node

    def refuse(self, port: Optional[int] = None) -> None:
        host, p, factory, timeout, bind = self._take(port)
        connector = next(c for c in self.reactor.connectors if c.getDestination().port == p)
        self.reactor.connectors.remove(connector)
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))

    def flush(self) -> None:
        for _ in range(1000):
            moved = False
            for n in self.nodes:
                if n.pump.pump():
                    moved = True
            if not moved:
                return
        raise AssertionError("pumping never ends")

    def advance(self, seconds: float, step: float = 1.0) -> None:
        left = seconds
        while left > 0:
            d = min(step, left)
            self.reactor.advance(d)
            left -= d
            self.flush()


def parse_head(data: bytes) -> tuple[bytes, dict, bytes]:
    """Status line, headers (lower-case names) and what follows, of one response head."""
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, rest


def hdr(request, name: bytes) -> list[bytes]:
    return [v for n, v in request.headers if n.lower() == name.lower()]


OK = (200, [(b"Content-Type", b"text/plain"), (b"Content-Length", b"5")], b"hello")


def one_node(**config) -> Harness:
    h = Harness(**config)
    h.node("n1", 8009)
    return h


def two_nodes(balancer: Optional[BalancerSettings] = None, **config) -> Harness:
    h = Harness(**config)
    b = balancer or BalancerSettings("mycluster", sticky_force=False)
    h.node("n1", 8009, balancer=b)
    h.node("n2", 8010, balancer=b)
    return h


# -- interfaces -----------------------------------------------------------------------


def test_interfaces():
    h = one_node()
    assert verifyObject(IForwarder, h.forwarder)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    [conn] = h.forwarder.pool(h.entry("n1")).conns
    assert verifyObject(IUpstream, conn)
    assert verifyObject(IAJPResponseReceiver, conn)
    assert isinstance(conn, AJPConnection)


def test_bad_cping_mode_refused():
    class Cfg:
        ajp_cping = "sometimes"

    with pytest.raises(ValueError):
        AJPForwarder(MemoryReactorClock(), Cfg())


# -- what is sent ---------------------------------------------------------------------


def test_get_forward_request_fields_and_response():
    """
    A GET becomes a FORWARD_REQUEST with the client facts of ajp13.md §3.1;
    Tomcat's numeric status message becomes the standard reason phrase.
    """
    h = one_node()
    c = h.client()
    c.send(b"GET /app/a%20b/x.jsp?y=1&z=%2F HTTP/1.1\r\nHost: www.example.com:8000\r\n"
           b"User-Agent: t\r\nAccept: a\r\nX-Custom: 1\r\nAccept: b\r\n\r\n")
    n = h.accept(8009)
    [req] = n.requests
    assert req.method == b"GET"
    assert req.protocol == b"HTTP/1.1"
    assert req.req_uri == b"/app/a%20b/x.jsp"
    assert req.query_string == b"y=1&z=%2F"
    assert req.remote_addr == req.remote_host == CLIENT_ADDR.encode()
    assert req.server_name == b"www.example.com"
    assert req.server_port == 8000
    assert req.is_ssl is False
    assert req.headers[0] == (b"host", b"www.example.com:8000")
    assert [v for n_, v in req.headers if n_.lower() == b"accept"] == [b"a", b"b"]
    assert (b"X-Custom", b"1") in req.headers
    assert hdr(req, b"content-length") == []
    assert req.secret == SECRET.encode()
    assert req.jvm_route is None
    assert req.ssl_cipher is None and req.ssl_cert is None
    assert list(req.attributes) == [(b"AJP_REMOTE_PORT", b"40000"),
                                    (b"AJP_LOCAL_ADDR", b"127.0.0.1")]
    [resp] = parse(c.received())
    assert resp.status == 200
    assert resp.reason == b"OK"
    assert resp.body == b"hello"
    assert resp.header(b"Content-Length") == b"5"
    assert resp.keep_alive
    node = h.entry("n1")
    assert node.rt.read > 0
    assert node.rt.transferred > 0
    assert h.counters_idle()
    assert h.failures == []


def test_no_query_no_secret_http10():
    h = one_node(ajp_secret=None)
    c = h.client()
    c.send(b"GET /x HTTP/1.0\r\n\r\n")
    [req] = h.accept().requests
    assert req.query_string is None
    assert req.secret is None
    assert req.protocol == b"HTTP/1.0"
    assert req.server_name == b"127.0.0.1"  # no Host: the address the client reached
    assert parse(c.received())[0].body == b"hello"


def test_jvm_route_is_the_session_route():
    """balancing.md §9.3: jvm_route carries the session route found for the request."""
    h = two_nodes()
    c = h.client()
    c.send(b"GET /a HTTP/1.1\r\nHost: a\r\nCookie: JSESSIONID=ABC.n2\r\n\r\n")
    n = h.accept(8010)
    [req] = n.requests
    assert req.jvm_route == b"n2"
    assert hdr(req, b"cookie") == [b"JSESSIONID=ABC.n2"]
    assert parse(c.received())[0].status == 200


def test_stored_method_and_head_code():
    h = one_node()
    c = h.client()
    c.send(b"PATCH /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nab")
    n = h.accept(handler=echo)
    assert n.requests[0].method == b"PATCH"
    assert parse(c.received())[0].body == b"ab"


def test_tls_client_facts_sent():
    """A TLS client: is_ssl, cipher, key size, client certificate and protocol."""

    class Handle:
        def get_cipher_name(self):
            return "TLS_AES_256_GCM_SHA384"

        def get_cipher_bits(self):
            return 256

        def get_protocol_version_name(self):
            return "TLSv1.3"

        def get_peer_certificate(self, as_cryptography=False):
            return None

    class TLSTransport(CountingTransport):
        def getHandle(self):
            return Handle()

    h = one_node()
    t = TLSTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8443),
                     peerAddress=IPv4Address("TCP", CLIENT_ADDR, 40001))
    c = h.client(secure=True, transport=t)
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    [req] = h.accept().requests
    assert req.is_ssl is True
    assert req.server_port == 8443
    assert req.ssl_cipher == b"TLS_AES_256_GCM_SHA384"
    assert req.ssl_key_size == 256
    assert req.ssl_cert is None
    assert list(req.attributes) == [(b"AJP_SSL_PROTOCOL", b"TLSv1.3"),
                                    (b"AJP_REMOTE_PORT", b"40001"),
                                    (b"AJP_LOCAL_ADDR", b"127.0.0.1")]


def test_request_head_too_large_for_packet_gets_400():
    """mod_proxy_ajp answers 400 when the head does not fit; no node connection, no error."""
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: " + b"x" * 9000 + b"\r\n\r\n")
    assert not h.pending()
    h.reactor.advance(0)
    [resp] = parse(c.received())
    assert resp.status == 400
    assert b"AJP packet size" in resp.body
    assert h.failures == []
    assert not h.entry("n1").rt.in_error
    assert h.counters_idle()


def test_too_large_heads_are_logged_as_text_and_rate_limited():
    """A client sending oversized heads cannot flood the log (and no bytes reprs)."""
    from twisted.logger import formatEvent

    h = one_node()
    c = h.client()
    with capturedLogs() as events:
        for i in range(25):
            c.send(b"GET /big/%d HTTP/1.1\r\nHost: a\r\nCookie: " % i + b"x" * 9000
                   + b"\r\n\r\n")
            h.reactor.advance(0)
        h.reactor.advance(11)
        c.send(b"GET /big/last HTTP/1.1\r\nHost: a\r\nCookie: " + b"x" * 9000 + b"\r\n\r\n")
        h.reactor.advance(0)
    assert [r.status for r in parse(c.received())] == [400] * 26
    texts = [formatEvent(e) for e in events if e.get("log_namespace") == "modcluster.ajp"
             or "AJP request head" in e.get("log_format", "") or "suppressed" in
             e.get("log_format", "")]
    heads = [t for t in texts if t.startswith("AJP request head for")]
    assert len(heads) == 11 and heads[0].startswith("AJP request head for GET /big/0 too large")
    assert any(t.startswith("15 more similar messages (head too large)") for t in texts)
    assert not any("b'" in t for t in texts)


def test_bigger_packet_size_fits_bigger_head():
    h = one_node(ajp_packet_size=65536)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: " + b"x" * 9000 + b"\r\n\r\n")
    n = h.accept(packet_size=65536)
    assert len(hdr(n.requests[0], b"cookie")[0]) == 9000
    assert parse(c.received())[0].status == 200


# -- bodies ----------------------------------------------------------------------------


def test_post_known_length_streamed_with_flow_control():
    """20000 bytes: the first packet unasked, the rest on GET_BODY_CHUNK."""
    h = one_node()
    c = h.client()
    body = bytes(range(256)) * 78 + b"0123456789abcdef0123456789abcdef"
    assert len(body) == 20000
    c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 20000\r\n"
           b"Content-Type: application/octet-stream\r\n\r\n" + body[:5000])
    seen = {}

    def handler(ex: ContainerExchange) -> None:
        seen["ex"] = ex
        echo(ex)

    n = h.accept(handler=handler)
    c.send(body[5000:])
    h.flush()
    [req] = n.requests
    assert hdr(req, b"content-length") == [b"20000"]
    assert hdr(req, b"content-type") == [b"application/octet-stream"]
    assert seen["ex"].bodyRequests == 2  # 8186 unasked, then 8186 + 3628 asked for
    assert seen["ex"].packetsReceived == 3
    [resp] = parse(c.received())
    assert resp.status == 200
    assert hashlib.sha256(resp.body).digest() == hashlib.sha256(body).digest()
    assert h.entry("n1").rt.transferred >= 20000
    assert h.counters_idle()


def test_chunked_upload_dechunked():
    """A chunked client body: Transfer-Encoding forwarded, data packets plain."""
    h = one_node()
    c = h.client()
    c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n")
    seen = {}

    def handler(ex: ContainerExchange) -> None:
        seen["ex"] = ex
        echo(ex)

    n = h.accept(handler=handler)
    [req] = n.requests
    assert hdr(req, b"transfer-encoding") == [b"chunked"]
    assert hdr(req, b"content-length") == []
    c.send(b"2000\r\n" + b"z" * 0x2000 + b"\r\n")
    h.flush()
    c.send(b"0\r\n\r\n")
    h.flush()
    [resp] = parse(c.received())
    assert resp.body == b"hello" + b"z" * 0x2000
    assert seen["ex"].bodyRequests >= 2
    assert h.counters_idle()


def test_large_body_backpressure_towards_the_client():
    """Body the container has not asked for pauses the client once a packet waits."""
    h = one_node()
    c = h.client()
    c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
    holder = {}

    def slow(ex: ContainerExchange) -> None:
        holder["ex"] = ex  # never asks for more body until told

    h.accept(handler=slow)
    chunk = max_request_chunk(8192)
    c.send(b"a" * (3 * chunk))
    h.flush()
    assert c.transport.producerState == "paused"
    ex = holder["ex"]
    assert len(ex.body) == chunk  # only the unasked first packet went out
    ex.readBody(echo_answer)
    c.send(b"a" * (100000 - 3 * chunk))
    h.flush()
    [resp] = parse(c.received())
    assert resp.body == b"a" * 100000
    assert h.counters_idle()


def echo_answer(ex: ContainerExchange) -> None:
    body = bytes(ex.body)
    ex.sendHeaders(200, [(b"Content-Length", str(len(body)).encode())])
    ex.write(body)
    ex.end(True)


def test_expect_continue_answered():
    h = one_node()
    c = h.client()
    c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    n = h.accept(handler=echo)
    h.reactor.advance(0)
    assert c.received().startswith(b"HTTP/1.1 100 Continue\r\n")
    assert hdr(n.requests[0], b"expect") == []
    c.send(b"abc")
    h.flush()
    assert parse(c.received())[0].body == b"abc"


# -- response relaying -----------------------------------------------------------------


def test_head_response_keeps_content_length_no_body():
    h = one_node()
    c = h.client()
    c.send(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")

    def handler(ex: ContainerExchange) -> None:
        ex.sendHeaders(200, [(b"Content-Length", b"5")])
        if ex.request.method != b"HEAD":
            ex.write(b"hello")
        ex.end(True)

    n = h.accept(handler=handler)
    assert n.requests[0].method == b"HEAD"
    status, headers, rest = parse_head(c.received())
    assert status == b"HTTP/1.1 200 OK"
    assert headers[b"content-length"] == b"5"
    assert b"transfer-encoding" not in headers
    assert rest == b""
    c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")  # same connection, reused
    h.flush()
    assert parse(c.received())[0].body == b"hello"
    assert len(n.requests) == 2
    assert h.counters_idle()


def test_304_and_204_have_no_body():
    h = one_node()
    c = h.client()
    c.send(b"GET /x HTTP/1.1\r\nHost: a\r\nIf-None-Match: \"e\"\r\n\r\n")
    h.accept(handler=respond(304, [(b"ETag", b'"e"')]))
    [resp] = parse(c.received())
    assert resp.status == 304
    assert resp.reason == b"Not Modified"
    assert resp.body == b""
    assert resp.keep_alive
    c.send(b"GET /y HTTP/1.1\r\nHost: a\r\n\r\n")
    h.nodes[0].container.handler = respond(204)
    h.flush()
    [resp] = parse(c.received())
    assert resp.status == 204 and resp.body == b""
    assert h.counters_idle()


def test_redirect_and_cookies_relayed():
    h = one_node()
    c = h.client()
    c.send(b"GET /r HTTP/1.1\r\nHost: a\r\n\r\n")
    h.accept(handler=respond(302, [(b"Location", b"http://a/next"),
                                   (b"Set-Cookie", b"a=1; Path=/"),
                                   (b"Set-Cookie", b"b=2; HttpOnly"),
                                   (b"Content-Length", b"0")]))
    [resp] = parse(c.received())
    assert resp.status == 302 and resp.reason == b"Found"
    assert resp.header(b"Location") == b"http://a/next"
    assert resp.all(b"Set-Cookie") == [b"a=1; Path=/", b"b=2; HttpOnly"]


def test_custom_reason_kept_and_hop_by_hop_dropped():
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")

    def handler(ex: ContainerExchange) -> None:
        ex.sendHeaders(403, [(b"Connection", b"X-Secret"), (b"X-Secret", b"s"),
                             (b"Keep-Alive", b"timeout=1"), (b"Transfer-Encoding", b"chunked"),
                             (b"X-Kept", b"1")], reason=b"Access Denied")
        ex.write(b"no")
        ex.end(True)

    h.accept(handler=handler)
    [resp] = parse(c.received())
    assert resp.status == 403
    assert resp.reason == b"Access Denied"
    assert resp.header(b"X-Kept") == b"1"
    for gone in (b"X-Secret", b"Keep-Alive"):
        assert resp.header(gone) is None
    assert resp.body == b"no"  # no Content-Length from the node: chunked by the front
    assert resp.header(b"Transfer-Encoding") == b"chunked"


def test_content_length_named_in_connection_still_frames_the_relayed_response():
    """
    A container names Content-Length in its Connection header: the header is
    the framing the proxy relays the body with, so it stays (before: cut as
    a listed header while its value still framed the body, a keep-alive
    client got a response with no framing and read the next one as its body).
    """
    h = one_node()
    c = h.client()
    c.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
    h.accept(handler=respond(200, [(b"Connection", b"keep-alive, Content-Length"),
                                   (b"Content-Length", b"5"), (b"X-A", b"1")], b"hello"))
    c.send(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    h.flush()
    r1, r2 = parse(c.received())
    assert r1.status == 200 and r1.body == b"hello"
    assert r1.header(b"Content-Length") == b"5" and r1.header(b"X-A") == b"1"
    assert r2.status == 200 and r2.body == b"hello"
    assert not c.closed


def test_control_characters_in_a_reason_are_not_relayed():
    """A container's message with control characters (not CR/LF/NUL, which the
    parser refuses): the standard phrase is relayed instead."""
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")

    def handler(ex: ContainerExchange) -> None:
        ex.sendHeaders(403, [(b"Content-Length", b"2")], reason=b"\x1b[31mDenied")
        ex.write(b"no")
        ex.end(True)

    h.accept(handler=handler)
    raw = c.received()
    assert raw.startswith(b"HTTP/1.1 403 Forbidden\r\n"), raw


def test_flush_packet_and_flushpackets_on():
    """An empty SEND_BODY_CHUNK flushes; with flushpackets On each chunk is written at once."""
    for mode, expected_writes in (("Off", 1), ("On", 3)):
        h = Harness()
        h.node("n1", 8009, flushpackets=mode)
        c = h.client()
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        box = {}
        h.accept(handler=lambda ex, box=box: box.setdefault("ex", ex))
        ex = box["ex"]
        c.transport.writes = 0
        # one read carrying the head and three chunks
        ex.container.transport.write(
            encode_send_headers(200, b"200", [(b"Content-Length", b"9")])
            + encode_send_body_chunk(b"abc") + encode_send_body_chunk(b"def")
            + encode_send_body_chunk(b"ghi"))
        h.flush()
        assert c.transport.writes == expected_writes, mode
        ex.end(True)
        h.flush()
        assert parse(c.received())[0].body == b"abcdefghi"


def test_client_backpressure_pauses_the_node_connection():
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    box = {}
    n = h.accept(handler=lambda ex: box.setdefault("ex", ex))
    ex = box["ex"]
    ex.sendHeaders(200, [(b"Content-Length", b"6")])
    ex.write(b"abc")
    h.flush()
    c.proto.pauseProducing()  # the client's socket buffer is full
    assert n.transport.pauses == 1
    c.proto.resumeProducing()
    assert n.transport.resumes == 1
    ex.write(b"def")
    ex.end(True)
    h.flush()
    assert parse(c.received())[0].body == b"abcdef"


# -- reuse and CPING ------------------------------------------------------------------


def _get(h: Harness, c: Client, path: bytes = b"/") -> Response:
    c.send(b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    h.flush()
    [resp] = parse(c.received())
    return resp


def test_reuse_idle_mode_cpings_new_and_long_idle_connections():
    """Default C{idle}: a new connection and one idle > ajp_cping_idle get a CPING."""
    h = one_node(ajp_cping_idle=5.0)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    assert n.container.cpings == 1
    assert parse(c.received())[0].status == 200
    h.advance(2)
    assert _get(h, c).status == 200
    assert n.container.cpings == 1  # reused soon after: no CPING
    h.advance(7)
    assert _get(h, c).status == 200
    assert n.container.cpings == 2  # idle longer than the threshold
    assert len(n.requests) == 3
    assert not h.pending()
    assert h.counters_idle()


@pytest.mark.parametrize("mode,cpings", [("always", 3), ("never", 0)])
def test_cping_always_and_never(mode, cpings):
    h = one_node(ajp_cping=mode)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    parse(c.received())
    assert _get(h, c).status == 200
    assert _get(h, c).status == 200
    assert n.container.cpings == cpings
    assert len(n.requests) == 3
    assert not h.pending()


def test_second_client_reuses_pooled_connection():
    h = one_node()
    c1 = h.client()
    c1.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    n = h.accept()
    assert parse(c1.received())[0].status == 200
    c2 = h.client()
    assert _get(h, c2).status == 200
    assert not h.pending()
    assert len(n.requests) == 2


def test_pooled_connection_cping_timeout_retries_fresh_then_fails_over():
    """
    balancing.md §6.2: a pooled connection that does not answer CPING is
    dropped and a fresh one is tried; when that one fails too, the node is
    put in error and the request fails over.
    """
    h = two_nodes(ajp_cping_idle=1.0)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: JSESSIONID=X.n1\r\n\r\n")
    n1 = h.accept(8009)
    assert parse(c.received())[0].status == 200
    n1.container.answerCPing = False  # the JVM hangs
    h.advance(3)
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: JSESSIONID=X.n1\r\n\r\n")
    h.flush()
    assert n1.container.cpings == 2
    h.advance(11)  # node ping (10 s) passes without CPONG
    assert n1.closed
    assert h.failures == []  # not yet: a fresh connection first
    fresh = h.accept(8009, answer_cping=False)
    assert fresh.container.cpings == 1
    h.advance(11)
    assert [f[0] for f in h.failures] == ["n1"]
    assert h.entry("n1").rt.in_error
    n2 = h.accept(8010)
    [resp] = parse(c.received())
    assert resp.status == 200
    assert len(n2.requests) == 1
    assert n2.requests[0].jvm_route == b"n1"  # the session route, not the node's
    assert h.counters_idle()


def test_pooled_connection_cping_timeout_fresh_connection_serves():
    """The fresh connection answers: the request is served by the same node, no error."""
    h = one_node(ajp_cping="always")
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n1 = h.accept(8009)
    parse(c.received())
    n1.container.answerCPing = False
    c.send(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    h.advance(11)
    fresh = h.accept(8009)
    [resp] = parse(c.received())
    assert resp.status == 200
    assert fresh.requests[0].req_uri == b"/2"
    assert h.failures == []
    assert not h.entry("n1").rt.in_error
    assert h.counters_idle()


def test_new_connection_cping_timeout_fails_over():
    h = two_nodes()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: JSESSIONID=X.n1\r\n\r\n")
    n1 = h.accept(8009, answer_cping=False)
    assert n1.requests == []
    h.advance(11)
    assert [f[0] for f in h.failures] == ["n1"]
    n2 = h.accept(8010)
    assert parse(c.received())[0].status == 200
    assert len(n2.requests) == 1
    assert h.counters_idle()


def test_pooled_connection_closed_by_node_retried_fresh():
    """The keep-alive race: the idle connection is gone before CPONG."""
    h = one_node(ajp_cping="never")
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    parse(c.received())

    def close_now(ex: ContainerExchange) -> None:
        ex.container.transport.loseConnection()

    n.container.handler = close_now
    c.send(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    h.flush()
    fresh = h.accept()
    assert parse(c.received())[0].status == 200
    assert fresh.requests[0].req_uri == b"/2"
    assert h.failures == []


def test_idle_connection_closed_by_node_leaves_pool():
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    parse(c.received())
    pool = h.forwarder.pool(h.entry("n1"))
    assert len(pool.idle) == 1
    n.container.transport.loseConnection()
    h.flush()
    assert pool.idle == [] and not pool.conns
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert len(h.pending()) == 1


def test_part_of_a_packet_on_an_idle_connection_closes_it():
    """
    A container sends the start of a packet on an idle pooled connection
    (after END_RESPONSE, in a later read): the connection is closed, so the
    next request (another client's) is answered on a fresh connection with
    its own response.  Before, the bytes waited in the parser and the next
    response on that connection was read as their rest (the client waited
    for the read timeout).
    """
    h = one_node(ajp_cping="never")
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    assert parse(c.received())[0].status == 200
    stale = encode_send_headers(200, b"OK", [(b"X-Stale", b"1"), (b"Content-Length", b"0")])
    with capturedLogs() as events:
        n.container.transport.write(stale[:5])
        h.flush()
    assert n.closed
    assert any("protocol error" in (e.get("log_format") or "") for e in events)
    c2 = h.client()
    c2.send(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    fresh = h.accept(handler=respond(404, [(b"Content-Length", b"2")], b"no"))
    [resp] = parse(c2.received())
    assert resp.status == 404 and resp.body == b"no"
    assert resp.header(b"X-Stale") is None
    assert fresh.requests[0].req_uri == b"/2"
    assert h.failures == [] and h.counters_idle()


# -- failures ---------------------------------------------------------------------------


def garbage(ex: ContainerExchange) -> None:
    ex.container.transport.write(b"HTTP/1.1 200 OK\r\n\r\n")


def test_garbage_from_container_gives_502_and_drops_connection():
    h = Harness()
    h.node("n1", 8009, balancer=BalancerSettings("mycluster", max_attempts=0))
    c = h.client()
    with capturedLogs() as events:
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        n = h.accept(handler=garbage)
    [resp] = parse(c.received())
    assert resp.status == 502
    assert n.closed
    # issue 13 §2: a response-level failure feeds passive health only
    assert not h.entry("n1").rt.in_error
    assert h.entry("n1").rt.fails == 1
    assert any("protocol error" in (e.get("log_format") or "") for e in events)
    assert h.counters_idle()
    assert not h.forwarder.pool(h.entry("n1")).conns


@pytest.mark.parametrize("bad", [
    b"\x12\x34\x00\x02\x05\x01",  # wrong magic
    b"AB\xff\xff" + b"x" * 10,  # oversize packet
    encode_send_body_chunk(b"early"),  # body before the headers
    encode_end_response(True),  # end before the headers
])
def test_bad_packets_give_502_without_failover(bad):
    """Issue 13 §2: a malformed answer fails that request only (no replay on
    every node, the node is not put in error)."""
    h = two_nodes()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: JSESSIONID=X.n1\r\n\r\n")
    n1 = h.accept(8009, handler=lambda ex: ex.container.transport.write(bad))
    assert n1.closed
    assert parse(c.received())[0].status == 502
    assert not h.pending(8010)
    assert not h.entry("n1").rt.in_error
    assert h.entry("n1").rt.fails == 1
    assert h.failures == []
    assert h.counters_idle()


def test_garbage_on_post_with_body_sent_gives_502():
    h = two_nodes()
    c = h.client()
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nCookie: JSESSIONID=X.n1\r\nContent-Length: 3\r\n\r\nabc")

    def read_then_garbage(ex: ContainerExchange) -> None:
        ex.readBody(garbage)

    h.accept(8009, handler=read_then_garbage)
    assert parse(c.received())[0].status == 502
    assert not h.pending(8010)  # not replayable: no failover
    assert h.counters_idle()


def test_protocol_error_mid_response_aborts_client():
    h = two_nodes()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: JSESSIONID=X.n1\r\n\r\n")

    def bad(ex: ContainerExchange) -> None:
        ex.sendHeaders(200, [(b"Content-Length", b"10")])
        ex.container.transport.write(b"\x12\x34\x00\x02\x05\x01")

    n1 = h.accept(8009, handler=bad)
    assert n1.closed
    assert c.aborted
    assert not h.pending(8010)
    assert h.counters_idle()
    # a broken packet mid-response feeds passive health (issue 13 §2)
    assert h.failures == []
    assert h.entry("n1").rt.fails == 1


def test_reset_before_response_is_502_without_failover():
    h = two_nodes()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: JSESSIONID=X.n1\r\n\r\n")
    h.accept(8009, handler=lambda ex: ex.container.transport.loseConnection())
    # retried once on a fresh connection to the same node, which resets again
    h.accept(8009, handler=lambda ex: ex.container.transport.loseConnection())
    # then knocked at (a connection that sends nothing): it is there
    assert c.received() == b""
    h.accept(8009)
    h.flush()
    assert parse(c.received())[0].status == 502
    assert not h.pending()
    assert h.failures == []
    assert h.entry("n1").rt.fails == 1
    assert h.counters_idle()


def test_reset_twice_by_a_node_that_died_fails_over():
    """The knock after the second reset is refused: the node is gone (in error),
    the request fails over."""
    h = two_nodes()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: JSESSIONID=X.n1\r\n\r\n")
    h.accept(8009, handler=lambda ex: ex.container.transport.loseConnection())
    h.accept(8009, handler=lambda ex: ex.container.transport.loseConnection())
    h.refuse(8009)
    h.accept(8010)
    h.flush()
    assert parse(c.received())[0].status == 200
    assert [f[0] for f in h.failures] == ["n1"]
    assert h.counters_idle()


def test_reset_mid_response_aborts_client():
    h = two_nodes()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: JSESSIONID=X.n1\r\n\r\n")

    def half(ex: ContainerExchange) -> None:
        ex.sendHeaders(200, [(b"Content-Length", b"10")])
        ex.write(b"12345")
        ex.container.transport.loseConnection()

    h.accept(8009, handler=half)
    assert c.aborted
    assert not h.pending(8010)
    assert h.counters_idle()


def test_connect_refused_fails_over_then_503():
    h = two_nodes()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: JSESSIONID=X.n1\r\n\r\n")
    h.refuse(8009)
    h.reactor.advance(0)
    h.refuse(8010)
    h.reactor.advance(0)
    [resp] = parse(c.received())
    assert resp.status == 503
    assert {f[0] for f in h.failures} == {"n1", "n2"}
    assert h.counters_idle()


@pytest.mark.parametrize("headers,body", [
    ([(b"Content-Length", b"3")], b"abcdef"),  # longer than announced
    ([(b"Content-Length", b"10")], b"abc"),  # shorter
])
def test_body_not_matching_content_length_aborts_client(headers, body):
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept(handler=respond(200, headers, body))
    assert c.aborted
    assert n.closed
    assert h.counters_idle()


@pytest.mark.parametrize("value", [b"1" * 5000, b"99999999999999999999"])
def test_content_length_too_long_to_be_a_number_is_a_protocol_error(value):
    """
    A Content-Length of thousands of digits (it fits an 8 KiB packet) or
    beyond 2**63: 502, the connection dropped.  Before, int() raised on more
    than 4300 digits (Python's limit) out of dataReceived (an unhandled
    error, the client answered only after a retry on a fresh connection
    failed alike).
    """
    h = Harness()
    h.node("n1", 8009, balancer=BalancerSettings("mycluster", max_attempts=0))
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept(handler=respond(200, [(b"Content-Length", value)], b"x"))
    assert parse(c.received())[0].status == 502
    assert n.closed
    assert not h.pending()
    assert h.counters_idle()


def test_a_bug_while_relaying_fails_the_exchange_not_the_reactor(monkeypatch):
    """
    An exception out of the forwarder's handling of a node's message (a bug,
    or input nobody thought of) is caught where the node's bytes come in,
    as the HTTP forwarder does: logged with its traceback, the connection
    dropped, 502; it does not escape dataReceived (an unhandled error, the
    protocol left mid-exchange).
    """
    def broken(self, status, reason, headers):
        raise RuntimeError("boom")

    monkeypatch.setattr(AJPConnection, "headReceived", broken)
    h = Harness()
    h.node("n1", 8009, balancer=BalancerSettings("mycluster", max_attempts=0))
    c = h.client()
    with capturedLogs() as events:
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        n = h.accept()
    assert parse(c.received())[0].status == 502
    assert n.closed
    assert any(e.get("log_failure") is not None and "boom" in str(e["log_failure"].value)
               for e in events)
    assert h.counters_idle()


def test_conflicting_content_length_is_a_protocol_error():
    h = Harness()
    h.node("n1", 8009, balancer=BalancerSettings("mycluster", max_attempts=0))
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    h.accept(handler=respond(200, [(b"Content-Length", b"3"), (b"Content-Length", b"4")], b"abc"))
    assert parse(c.received())[0].status == 502


def test_read_timeout_gives_504_without_error():
    h = one_node(timeout=5)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept(handler=lambda ex: None)
    h.advance(4)
    assert c.received() == b""
    h.advance(4)
    [resp] = parse(c.received())
    assert resp.status == 504
    assert n.closed
    assert h.failures == []
    assert not h.entry("n1").rt.in_error
    assert h.counters_idle()


def test_flushes_before_the_headers_bounded_by_the_head_deadline():
    """
    An AJP node sending empty SEND_BODY_CHUNK flushes before SEND_HEADERS,
    each within the read timeout: 504 once the read timeout has passed
    since the first flush (before, each flush renewed the read timeout),
    the node not put in error, one log line naming it.
    """
    from twisted.logger import capturedLogs, formatEvent

    h = one_node(timeout=5)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    box = {}
    n = h.accept(handler=lambda ex: box.setdefault("ex", ex))
    ex = box["ex"]
    h.advance(4)  # time to the first byte: the read timeout's
    flushes = 0
    with capturedLogs() as events:
        while not n.closed and flushes < 20:
            ex.container.transport.write(encode_send_body_chunk(b""))
            flushes += 1
            h.advance(2)
    [resp] = parse(c.received())
    assert resp.status == 504
    assert 3 <= flushes <= 4, flushes  # 5 s after the first, at most a sweep late
    assert n.closed
    assert h.failures == []
    assert not h.entry("n1").rt.in_error
    assert h.counters_idle()
    texts = [formatEvent(e) for e in events]
    [line] = [t for t in texts if t.startswith("AJP response head deadline")]
    assert "node n1 (" in line and "not complete 5 s after the reply began" in line, line


def test_node_timeout_overrides_proxy_timeout():
    h = Harness(timeout=60)
    h.node("n1", 8009, timeout=3)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    h.accept(handler=lambda ex: None)
    h.advance(6)
    assert parse(c.received())[0].status == 504


def test_client_abort_mid_response_drops_node_connection():
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    box = {}
    n = h.accept(handler=lambda ex: box.setdefault("ex", ex))
    box["ex"].sendHeaders(200, [(b"Content-Length", b"10")])
    h.flush()
    assert h.entry("n1").rt.busy == 1
    c.lose()
    h.flush()
    assert n.closed
    assert h.counters_idle()
    assert h.failures == []


def test_client_gone_after_whole_body_keeps_connection_for_end_response():
    """
    The client closes once it has the body, before END_RESPONSE arrives: the
    connection is not dropped; END_RESPONSE puts it back in the pool.
    """
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    box = {}
    n = h.accept(handler=lambda ex: box.setdefault("ex", ex))
    box["ex"].sendHeaders(200, [(b"Content-Length", b"3")])
    box["ex"].write(b"abc")
    h.flush()
    assert parse(c.received())[0].body == b"abc"
    c.lose()
    assert h.counters_idle()
    assert not n.closed
    pool = h.forwarder.pool(h.entry("n1"))
    assert pool.idle == []
    box["ex"].end(True)
    h.flush()
    assert len(pool.idle) == 1
    n.container.handler = respond(*OK)
    c2 = h.client()
    assert _get(h, c2).body == b"hello"
    assert not h.pending()
    assert len(n.requests) == 2


def test_client_gone_after_whole_body_end_response_never_comes():
    """... and if END_RESPONSE never comes, the read timeout closes it."""
    h = one_node(timeout=5)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    box = {}
    n = h.accept(handler=lambda ex: box.setdefault("ex", ex))
    box["ex"].sendHeaders(200, [(b"Content-Length", b"3")])
    box["ex"].write(b"abc")
    h.flush()
    c.lose()
    h.advance(8)
    assert n.closed
    assert not h.forwarder.pool(h.entry("n1")).conns
    assert h.failures == []


def test_client_abort_while_connecting_pools_connection():
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    c.lose()
    assert h.counters_idle()
    n = h.accept()
    assert n.requests == []
    c2 = h.client()
    assert _get(h, c2).status == 200
    assert not h.pending()
    assert n.container.cpings == 1  # never answered before: CPINGed on first use


def test_client_abort_mid_request_body():
    h = one_node()
    c = h.client()
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
    n = h.accept(handler=lambda ex: None)
    c.lose()
    h.flush()
    assert n.closed
    assert h.counters_idle()


# -- pool upkeep ------------------------------------------------------------------------


def test_idle_connections_beyond_smax_closed_after_ttl():
    h = Harness()
    h.node("n1", 8009, smax=1, ttl=10)
    clients = [h.client() for _ in range(3)]
    for c in clients:
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    nodes = [h.accept() for _ in range(3)]
    for c in clients:
        assert parse(c.received())[0].status == 200
    pool = h.forwarder.pool(h.entry("n1"))
    assert len(pool.idle) == 3
    h.advance(5)
    assert len(pool.idle) == 3
    h.advance(7)
    assert len(pool.idle) == 1
    assert sum(1 for n in nodes if n.closed) == 2


def test_removed_node_pool_drained():
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    parse(c.received())
    h.forwarder.retain(())  # n1 is no longer in the table
    h.flush()
    assert n.closed


def test_close_drops_everything():
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept(handler=lambda ex: None)
    h.forwarder.close()
    h.flush()
    assert n.closed


def test_packet_trace_of_get_on_the_wire():
    """The bytes a container reads: CPING first on a new connection, then the request."""
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    host, p, factory, timeout, bind = h._take(8009)
    proto = factory.buildProtocol(IPv4Address("TCP", host, p))
    t = StringTransport()
    proto.makeConnection(t)
    assert t.value() == CPING_PACKET
    assert timeout == 10.0  # connect timeout = node ping


def test_blocked_client_does_not_stop_the_cping():
    """
    A client whose socket is full when its request starts: reading from the
    node is paused only once the request is written, so the CPONG still gets
    through (no false CPING failure).
    """
    h = one_node()
    c = h.client()
    c.proto.pauseProducing()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    box = {}
    n = h.accept(handler=lambda ex: box.setdefault("ex", ex), flush=False)
    assert n.transport.pauses == 0
    h.flush()
    assert n.container.cpings == 1 and len(n.requests) == 1
    assert n.transport.pauses == 1
    c.proto.resumeProducing()
    assert n.transport.resumes == 1
    box["ex"].sendHeaders(200, [(b"Content-Length", b"2")])
    box["ex"].write(b"ok")
    box["ex"].end(True)
    h.flush()
    assert parse(c.received())[0].body == b"ok"
    assert h.counters_idle()


# -- the per-request fast paths (docs/ajp.md, "Performance notes") -------------------


def test_forward_request_pieces_kept_per_client_connection():
    """
    What the forwarder keeps per client connection (addresses, attributes,
    server_name per Host) never leaks into another connection's requests,
    and a connection's later requests with another Host or none get their
    own server_name; worked out once per connection.
    """
    h = one_node()
    clients = [
        h.client(transport=CountingTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8000),
            peerAddress=IPv4Address("TCP", addr, port)))
        for addr, port in ((CLIENT_ADDR, 40001), ("127.0.0.10", 40002))
    ]
    sends = [
        (0, b"GET /a HTTP/1.1\r\nHost: www.example.com:8000\r\n\r\n", b"www.example.com"),
        (1, b"GET /b HTTP/1.1\r\nHost: other.example\r\n\r\n", b"other.example"),
        (0, b"GET /c HTTP/1.1\r\nHost: [::1]:8000\r\n\r\n", b"::1"),
        (0, b"GET /d HTTP/1.0\r\n\r\n", b"127.0.0.1"),
        (1, b"GET /e HTTP/1.1\r\nHost: other.example\r\n\r\n", b"other.example"),
        (0, b"GET /f HTTP/1.1\r\nHost: www.example.com:8000\r\n\r\n", b"www.example.com"),
    ]
    node = None
    for i, (which, data, server_name) in enumerate(sends):
        clients[which].send(data)
        if node is None:
            node = h.accept()
        h.flush()
        req = node.requests[i]
        addr, port = ((CLIENT_ADDR, 40001), ("127.0.0.10", 40002))[which]
        assert req.server_name == server_name
        assert req.remote_addr == req.remote_host == addr.encode()
        assert list(req.attributes) == [(b"AJP_REMOTE_PORT", b"%d" % port),
                                        (b"AJP_LOCAL_ADDR", b"127.0.0.1")]
        assert parse(clients[which].received())[0].body == b"hello"
        if data.endswith(b"HTTP/1.0\r\n\r\n"):
            clients[which] = h.client(transport=CountingTransport(
                hostAddress=IPv4Address("TCP", "127.0.0.1", 8000),
                peerAddress=IPv4Address("TCP", addr, port)))
    assert h.forwarder.client_facts == 3  # two connections, then a new one after HTTP/1.0
    assert h.counters_idle()


def test_response_head_relayed_as_sent():
    """
    The relayed header block keeps the container's order, spelling and
    values (a Content-Length with blanks too), repeats included.
    """
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")

    def handler(ex: ContainerExchange) -> None:
        ex.sendHeaders(200, [(b"Set-Cookie", b"a=1"), (b"x-lower", b"v"), (b"Set-Cookie", b"b=2"),
                             (b"Content-Length", b" 2 "), (b"ETag", b'"e"')])
        ex.write(b"ok")
        ex.end(True)

    h.accept(handler=handler)
    raw = c.received()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nx-lower: v\r\n"
                          b"Set-Cookie: b=2\r\nContent-Length:  2 \r\nETag: \"e\"\r\n")
    assert raw.endswith(b"\r\n\r\nok")
    assert h.counters_idle()


def test_ip_literal_node_connects_without_endpoint_wrapper():
    """
    A node given by IP address is connected with the reactor's connectTCP
    and our protocol is the transport's protocol (no endpoint wrapper).
    """
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    [(host, port, factory, timeout, bind)] = h.pending()
    assert (host, port) == ("127.0.0.1", 8009)
    proto = factory.buildProtocol(IPv4Address("TCP", host, port))
    [conn] = h.forwarder._pools[h.entry("n1").id].conns
    assert proto is conn.proto
    assert timeout == 10.0


def _stray_after_end(ex: ContainerExchange) -> None:
    ex.sendHeaders(200, [(b"Content-Length", b"2")])
    ex.write(b"ok")
    ex.end(True)
    ex.container.transport.write(CPING_PACKET[:3])  # after END_RESPONSE, same read


@pytest.mark.parametrize("handler,what", [
    (garbage, "protocol error"),  # the protocol's line
    (respond(200, [(b"Content-Length", b"1")], b"too long"), "connection dropped"),
    (respond(200, [(b"Content-Length", b"9")], b"short"), "bytes short of"),
    (_stray_after_end, "after END_RESPONSE"),
])
def test_a_broken_node_cannot_flood_the_log(handler, what):
    """
    A node that answers every request brokenly gets its connections closed
    with log lines at the forwarder's rate limit (10 per kind and node per
    10 s, then one line saying how many were left out), not one line (or
    two) per request.
    """
    from twisted.logger import formatEvent

    h = Harness()
    h.node("n1", 8009, balancer=BalancerSettings("mycluster", max_attempts=0))
    with capturedLogs() as events:
        for i in range(30):
            c = h.client()
            c.send(b"GET /%d HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % i)
            h.accept(handler=handler)
            assert c.closed or c.aborted
        h.advance(11)
    texts = [formatEvent(e) for e in events]
    lines = [t for t in texts if what in t and "more similar messages" not in t]
    assert 1 <= len(lines) <= 10, lines
    assert any("more similar messages" in t and "node n1" in t for t in texts), texts
    assert h.counters_idle()


def _cut_mid_body(ex: ContainerExchange) -> None:
    ex.sendHeaders(200, [(b"Content-Length", b"10")])
    ex.write(b"abc")
    ex.container.transport.loseConnection()


#: broken container answers, each for one HTTP/2 stream: what the stream gets
_H2_BROKEN = [
    (garbage, 502),
    (respond(200, [(b"Content-Length", b"1")], b"too long"), "reset"),
    (respond(200, [(b"Content-Length", b"9")], b"short"), "reset"),
    (respond(200, [(b"Content-Length", b"3"), (b"Content-Length", b"4")], b"abc"), 502),
    (respond(200, [(b"Connection", b"content-length"), (b"Content-Length", b"5")], b"hello"),
     200),
    (_cut_mid_body, "reset"),
    (respond(200, [(b"Content-Length", b"4")], b"good"), 200),
]


def _h2_by_path(ex: ContainerExchange) -> None:
    _H2_BROKEN[int(ex.request.req_uri.rsplit(b"/", 1)[1])][0](ex)


def test_broken_container_answers_fail_only_their_own_http2_stream():
    """
    Broken AJP answers relayed to HTTP/2 streams of one connection: 502
    before the head, RST_STREAM INTERNAL_ERROR after it, the good streams
    answered, the connection up, counters at zero.
    """
    from h2.errors import ErrorCodes

    from tests.unit.proxy.test_proxy_h2 import H2Client

    h = Harness()
    h.node("n1", 8009, contexts=("/app",))
    c = H2Client(h)
    sids = []
    for i in range(len(_H2_BROKEN)):
        sids.append(c.request(b"/app/%d" % i))
        c.pump()
        while h.pending():
            h.accept(handler=_h2_by_path)
        c.pump()
    h.flush()
    c.pump()
    for sid, (_, outcome) in zip(sids, _H2_BROKEN):
        if outcome == "reset":
            assert c.resets.get(sid) == ErrorCodes.INTERNAL_ERROR, sid
        else:
            assert c.status(sid) == outcome and sid in c.ended, sid
    assert c.body[sids[4]] == b"hello" and c.body[sids[6]] == b"good"
    assert c.terminated is None
    assert h.counters_idle()
    assert not c.proto.streams
