"""
WebSocket over HTTP/2 (RFC 8441, extended CONNECT) in memory: an h2 client
state machine against H2Protocol, the real ProxyFactory, balancer and HTTP
forwarder, and nodes on StringTransports driven by hand (proxy_testlib).
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from twisted.internet.error import ConnectionDone

from modcluster.proxy.h2 import RESET_COST, STREAM_BUFFER
from modcluster.proxy.h2conn import _Malformed, request_fields

from tests.support.proxy_testlib import Harness, parse_requests
from tests.unit.proxy.test_proxy_h2 import H2Client

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS = [(b":protocol", b"websocket"), (b"sec-websocket-version", b"13"),
      (b"sec-websocket-protocol", b"chat, superchat"),
      (b"sec-websocket-extensions", b"permessage-deflate"), (b"origin", b"https://localhost")]


def _accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def _switch(node, extra: bytes = b"", key: bytes | None = None) -> None:
    """The node reads the Upgrade request and answers 101 (then C{extra} bytes)."""
    [req] = parse_requests(node.received())
    if key is None:
        key = req.header(b"sec-websocket-key")
    node.respond(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + _accept(key)
                 + b"\r\nSec-WebSocket-Protocol: chat\r\n\r\n" + extra)


def _open(h, path: bytes = b"/chat", extra=WS, node_port: int = 9001):
    """An h2 client with a WebSocket stream open to the node (101 answered)."""
    c = H2Client(h)
    sid = c.request(path, method=b"CONNECT", end=False, extra=extra)
    c.pump()
    node = h.accept(node_port)
    _switch(node)
    c.pump()
    return c, sid, node


@pytest.fixture
def h():
    return Harness(enable_ws_tunnel=True, client_timeout=10, timeout=100)


def test_request_fields_extended_connect():
    base = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"https"),
            (b":path", b"/chat?x=1"), (b":authority", b"example")]
    got = request_fields(base, True)
    assert got[0] == b"CONNECT" and got[2] == b"/chat?x=1" and got[9] == b"websocket"
    assert request_fields(base[:1] + base[2:], True)[9] is None  # no :protocol
    assert request_fields(base[:1] + base[3:4] + base[4:], True)[9] is None  # plain CONNECT
    bad = [
        base,  # not offered: :protocol is unknown
        [(b":method", b"GET")] + base[1:],  # :protocol on another method
        base[:2] + base[3:],  # no :scheme
        base[:3] + base[4:],  # no :path
        base[:3] + [(b":path", b"chat")] + base[4:],
        base[:1] + [(b":protocol", b"web socket")] + base[2:],  # not a token
        base[:1] + [(b":protocol", b"")] + base[2:],
        base + [(b":protocol", b"websocket")],  # repeated
        base[:2] + [(b"x", b"1")] + base[2:],  # pseudo-header after a regular field
    ]
    for i, headers in enumerate(bad):
        with pytest.raises(_Malformed):
            request_fields(headers, i > 0)


def test_enable_connect_protocol_sent_only_with_tunnels():
    on = H2Client(Harness(enable_ws_tunnel=True))
    assert on.conn.remote_settings.get(SettingCodes.ENABLE_CONNECT_PROTOCOL, 0) == 1
    off = H2Client(Harness())
    assert off.conn.remote_settings.get(SettingCodes.ENABLE_CONNECT_PROTOCOL, 0) == 0


def test_websocket_stream_becomes_the_nodes_upgrade_and_a_tunnel(h):
    h.node("n1", 9001)
    c = H2Client(h)
    sid = c.request(b"/chat?room=1", method=b"CONNECT", end=False,
                    extra=WS + [(b"cookie", b"a=1"), (b"sec-websocket-key", b"client's")])
    c.pump()
    node = h.accept(9001)
    raw = node.received()
    [req] = parse_requests(raw)
    assert raw.startswith(b"GET /chat?room=1 HTTP/1.1\r\n")
    assert req.header(b"Upgrade") == b"websocket"
    assert req.header(b"Connection") == b"Upgrade"
    key = req.header(b"sec-websocket-key")
    assert len(req.all(b"sec-websocket-key")) == 1 and key != b"client's"
    assert len(base64.b64decode(key)) == 16
    assert req.header(b"sec-websocket-version") == b"13"
    assert req.header(b"sec-websocket-protocol") == b"chat, superchat"
    assert req.header(b"sec-websocket-extensions") == b"permessage-deflate"
    assert req.header(b"cookie") == b"a=1"
    assert req.header(b"Content-Length") is None and req.header(b"Transfer-Encoding") is None
    assert req.header(b"Host") == b"localhost"
    assert not c.headers  # nothing answered before the node's
    node.respond(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + _accept(key)
                 + b"\r\nSec-WebSocket-Protocol: chat\r\n\r\n\x81\x02hi")
    c.pump()
    assert c.status(sid) == 200
    fields = dict(c.headers[sid])
    assert fields[b"sec-websocket-protocol"] == b"chat"
    for name in (b"sec-websocket-accept", b"upgrade", b"connection", b"content-length"):
        assert name not in fields
    assert c.body[sid] == b"\x81\x02hi"
    c.conn.send_data(sid, b"\x81\x82abcd\x09\x0b")
    c.pump()
    assert node.received() == b"\x81\x82abcd\x09\x0b"
    node.respond(b"\x81\x03you")
    c.pump()
    assert c.body[sid] == b"\x81\x02hi\x81\x03you"
    assert h.in_flight() == 1
    assert sid not in c.ended and sid not in c.resets
    # the node closes: the stream ends (END_STREAM, then RST_STREAM NO_ERROR
    # since the client's side was still open), counters released
    node.respond(b"\x88\x00")
    node.close()
    c.pump()
    assert c.body[sid].endswith(b"\x88\x00")
    assert sid in c.ended
    assert c.resets.get(sid, ErrorCodes.NO_ERROR) == ErrorCodes.NO_ERROR
    assert h.counters_idle()
    assert not c.proto.streams
    assert not c.t.disconnecting  # the connection goes on
    # and serves the next request
    sid2 = c.request(b"/x")
    c.pump()
    n2 = h.accept(9001)
    assert n2.received().startswith(b"GET /x HTTP/1.1")
    n2.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    c.pump()
    assert c.status(sid2) == 200 and c.body[sid2] == b"ok"


def test_data_before_the_101_waits_for_it(h):
    """
    DATA a client sends before the 200 reaches the node only after its 101,
    and is not acknowledged before (held within the stream window).
    """
    h.node("n1", 9001)
    c = H2Client(h)
    sid = c.request(b"/chat", method=b"CONNECT", end=False, extra=WS)
    c.conn.send_data(sid, b"early")
    c.pump()
    node = h.accept(9001)
    raw = node.received()
    assert raw.endswith(b"\r\n\r\n") and b"early" not in raw
    ex = c.proto.streams[sid]
    assert ex.unacked == 5  # held, not acknowledged
    node.respond(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                 + _accept(parse_requests(raw)[0].header(b"sec-websocket-key")) + b"\r\n\r\n")
    c.pump()
    assert node.received() == b"early"
    assert c.status(sid) == 200
    c.conn.send_data(sid, b"later")
    c.pump()
    assert node.received() == b"later"
    assert ex.unacked == 0 and not ex._pause  # acknowledged since


@pytest.mark.parametrize("status", [400, 404, 426])
def test_refused_upgrade_relayed_and_early_data_dropped(h, status):
    """
    A node answering other than 101: its answer is relayed, the stream
    ends; what the client sent meanwhile never reaches the node (it would be
    read as its next request) and its window goes back to the connection.
    """
    h.node("n1", 9001)
    c = H2Client(h)
    sid = c.request(b"/chat", method=b"CONNECT", end=False, extra=WS)
    c.conn.send_data(sid, b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n")
    c.pump()
    node = h.accept(9001)
    node.received()
    ex = c.proto.streams[sid]
    assert ex.unacked == 32  # held, not acknowledged
    node.respond(b"HTTP/1.1 %d Nope\r\nContent-Length: 4\r\n\r\nnope" % status)
    c.pump()
    assert c.status(sid) == status
    assert c.body[sid] == b"nope" and sid in c.ended
    assert node.received() == b""
    assert ex.unacked == 0  # given back to the connection window
    assert h.counters_idle() and not c.proto.streams


def test_a_2xx_other_than_101_is_no_tunnel(h):
    """A 200 relayed would tell the client its tunnel is open: 502 instead."""
    h.node("n1", 9001)
    c = H2Client(h)
    sid = c.request(b"/chat", method=b"CONNECT", end=False, extra=WS)
    c.pump()
    node = h.accept(9001)
    node.received()
    node.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npage")
    c.pump()
    assert c.status(sid) == 502
    assert b"page" not in c.body.get(sid, b"")
    assert h.counters_idle()


def test_a_101_without_our_accept_is_refused(h):
    h.node("n1", 9001)
    c = H2Client(h)
    sid = c.request(b"/chat", method=b"CONNECT", end=False, extra=WS)
    c.pump()
    node = h.accept(9001)
    _switch(node, key=b"dGhlIHNhbXBsZSBub25jZQ==")  # not the key we sent
    c.pump()
    assert c.status(sid) == 502
    assert node.aborted
    assert h.counters_idle()


def test_websocket_stream_routed_like_any_request(h):
    """No route for the path: 404, as for any request; sticky sessions apply."""
    h.node("n1", 9001, contexts=("/app",))
    h.node("n2", 9002, contexts=("/app",))
    c = H2Client(h)
    sid = c.request(b"/nothing", method=b"CONNECT", end=False, extra=WS)
    c.pump()
    assert c.status(sid) == 404
    assert not h.pending()
    for _ in range(4):
        sid = c.request(b"/app/ws", method=b"CONNECT", end=False,
                        extra=WS + [(b"cookie", b"JSESSIONID=abc.n2")])
        c.pump()
        node = h.accept()
        assert node.port == 9002
        c.conn.reset_stream(sid)
        c.pump()
    assert h.counters_idle()


def test_failover_before_anything_is_sent(h):
    h.node("n1", 9001)
    h.node("n2", 9002)
    c = H2Client(h)
    sid = c.request(b"/chat", method=b"CONNECT", end=False, extra=WS)
    c.pump()
    first = h.pending()[0][1]
    h.refuse(first)
    h.reactor.advance(0)
    c.pump()
    node = h.accept()
    assert node.port != first
    _switch(node)
    c.pump()
    assert c.status(sid) == 200


def test_other_protocol_not_tunnelled(h):
    """A :protocol that ws_upgrade_header does not allow: 501, nothing forwarded."""
    h.node("n1", 9001)
    c = H2Client(h)
    sid = c.request(b"/chat", method=b"CONNECT", end=False,
                    extra=[(b":protocol", b"connect-udp")])
    c.pump()
    assert c.status(sid) == 501
    assert not h.pending()
    plain = c.request(b"/", method=b"CONNECT", end=False)  # no :protocol: as before
    c.pump()
    assert c.status(plain) == 405
    assert h.counters_idle()


def test_any_protocol_tunnelled_with_star():
    h = Harness(enable_ws_tunnel=True, ws_upgrade_header="*")
    h.node("n1", 9001)
    c = H2Client(h)
    sid = c.request(b"/x", method=b"CONNECT", end=False, extra=[(b":protocol", b"foo")])
    c.pump()
    node = h.accept(9001)
    [req] = parse_requests(node.received())
    assert req.header(b"Upgrade") == b"foo"
    assert req.header(b"sec-websocket-key") is None  # WebSocket only
    node.respond(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\n"
                 b"Connection: Upgrade\r\n\r\n")
    c.pump()
    assert c.status(sid) == 200
    c.conn.send_data(sid, b"ping")
    c.pump()
    assert node.received() == b"ping"


@pytest.mark.parametrize("extra, end", [([(b"content-length", b"4")], False), ([], True)])
def test_extended_connect_with_a_body_or_end_stream_refused(h, extra, end):
    h.node("n1", 9001)
    c = H2Client(h)
    sid = c.request(b"/chat", method=b"CONNECT", end=end, extra=WS + extra)
    c.pump()
    assert c.status(sid) == 400
    assert not h.pending()
    assert h.counters_idle()


def test_client_reset_mid_tunnel_aborts_the_node_and_costs_the_budget(h):
    h.node("n1", 9001)
    c, sid, node = _open(h)
    calm = c.proto._calm
    c.conn.reset_stream(sid, ErrorCodes.CANCEL)
    c.pump()
    assert node.aborted
    assert h.counters_idle() and not c.proto.streams
    assert c.proto._calm <= calm - RESET_COST + 1


def test_client_end_stream_half_closes_the_node(h, monkeypatch):
    """END_STREAM is the tunnelled connection's FIN (RFC 8441 §5)."""
    import modcluster.proxy.http as http

    monkeypatch.setattr(http, "is_plain_tcp", lambda t: True)
    h.node("n1", 9001)
    c, sid, node = _open(h)
    shut = []
    node.transport.loseWriteConnection = lambda: shut.append(True)
    c.conn.send_data(sid, b"bye", end_stream=True)
    c.pump()
    assert node.received() == b"bye"
    assert shut == [True]
    # the node still answers, then closes: the stream is over
    node.respond(b"last")
    node.close(ConnectionDone)
    c.pump()
    assert c.body[sid] == b"last" and sid in c.ended
    assert sid not in c.resets
    assert h.counters_idle() and not c.proto.streams


def test_end_stream_before_the_101_half_closes_after_it(h, monkeypatch):
    import modcluster.proxy.http as http

    monkeypatch.setattr(http, "is_plain_tcp", lambda t: True)
    h.node("n1", 9001)
    c = H2Client(h)
    sid = c.request(b"/chat", method=b"CONNECT", end=False, extra=WS)
    c.conn.send_data(sid, b"only", end_stream=True)
    c.pump()
    node = h.accept(9001)
    shut = []
    node.transport.loseWriteConnection = lambda: shut.append(True)
    _switch(node)
    c.pump()
    assert node.received() == b"only"
    assert shut == [True]


def test_client_that_does_not_read_pauses_the_node_and_is_reset(h):
    h.node("n1", 9001)
    c, sid, node = _open(h)
    c.auto_ack = False
    chunk = b"x" * 16384
    for _ in range(12):  # 192 KiB: over the 64 KiB stream window and STREAM_BUFFER
        node.respond(chunk)
        c.pump()
    ex = c.proto.streams[sid]
    assert ex.pending_len >= STREAM_BUFFER
    assert node.transport.producerState == "paused"
    assert len(c.body[sid]) <= 65535
    h.advance(12)  # client_timeout: no window for the pending bytes
    c.pump()
    assert c.resets[sid] == ErrorCodes.INTERNAL_ERROR
    assert node.aborted
    assert h.counters_idle()


def test_node_that_does_not_read_stops_the_clients_window(h):
    h.node("n1", 9001)
    c, sid, node = _open(h)
    node.proto.pauseProducing()  # the node connection's write buffer is full
    window = c.conn.local_flow_control_window(sid)
    sent = 0
    while c.conn.local_flow_control_window(sid) > 0 and sent < 10 * window:
        n = min(16384, c.conn.local_flow_control_window(sid))
        c.conn.send_data(sid, b"y" * n)
        sent += n
        c.pump()
    assert c.conn.local_flow_control_window(sid) == 0
    assert sent <= window + 16384  # nothing more than the window is taken
    ex = c.proto.streams[sid]
    written = len(node.received())
    assert written + ex.body_held == sent  # the rest held (at most a window)
    node.proto.resumeProducing()
    c.pump()
    assert c.conn.local_flow_control_window(sid) > 0  # acknowledged again
    assert written + len(node.received()) == sent and ex.body_held == 0


def test_idle_tunnel_lives_until_the_node_read_timeout(h):
    """
    A tunnel with no traffic is no stalled request body: the stream's
    client timeout does not cut it; the node connection's read timeout
    (timeout, 100 s here) does, as for the HTTP/1.1 tunnel.
    """
    h.node("n1", 9001)
    c, sid, node = _open(h)
    h.advance(50)  # > client_timeout (10)
    c.pump()
    assert sid not in c.resets and sid not in c.ended
    assert not node.aborted
    h.advance(60)
    c.pump()
    assert node.aborted
    assert sid in c.ended
    assert h.counters_idle()


def test_tunnel_bytes_not_bounded_by_max_request_body():
    h = Harness(enable_ws_tunnel=True, max_request_body=10)
    h.node("n1", 9001)
    c, sid, node = _open(h)
    c.conn.send_data(sid, b"z" * 100)
    c.pump()
    assert node.received() == b"z" * 100
    assert sid not in c.resets and c.status(sid) == 200


def test_tunnel_counts_as_a_stream():
    h = Harness(enable_ws_tunnel=True, http2_max_concurrent_streams=2)
    h.node("n1", 9001)
    c = H2Client(h)
    sids = [c.request(b"/chat", method=b"CONNECT", end=False, extra=WS) for _ in range(2)]
    c.pump()
    c.conn.remote_settings.acknowledge()  # a client ignoring the limit
    c.conn.remote_settings[SettingCodes.MAX_CONCURRENT_STREAMS] = 100
    c.conn.remote_settings.acknowledge()
    over = c.request(b"/chat", method=b"CONNECT", end=False, extra=WS)
    c.pump()
    assert c.resets[over] == ErrorCodes.REFUSED_STREAM
    assert len(h.pending()) == 2 and sorted(c.proto.streams) == sids


def test_ajp_node_gets_no_upgrade(h):
    """
    As the HTTP/1.1 front does for an Upgrade to an AJP node: the request is
    forwarded without it and the answer relayed (a 2xx would read as an
    open tunnel: 502).
    """
    from zope.interface import implementer

    from modcluster.proxy.interfaces import IUpstream

    seen = []

    @implementer(IUpstream)
    class Up:
        def requestBody(self, data):
            pass

        def requestBodyEnd(self):
            pass

        def pauseResponse(self):
            pass

        def resumeResponse(self):
            pass

        def abort(self):
            pass

    class Ajp:
        def forward(self, ex, fresh):
            seen.append(ex)
            return Up()

    h.factory.forwarders["ajp"] = Ajp()
    h.node("a1", 8009, type="ajp")
    c = H2Client(h)
    for status, want in ((404, 404), (200, 502)):
        sid = c.request(b"/chat", method=b"CONNECT", end=False, extra=WS)
        c.pump()
        ex = seen[-1]
        assert ex.upgrade is None and ex.method == b"GET"
        ex.responseHead(status, b"X", b"Content-Length: 0\r\n", 0)
        ex.responseEnd()
        c.pump()
        assert c.status(sid) == want
    assert h.counters_idle()


def test_tunnel_logged_and_counted_as_the_http11_one():
    """One access log line when the tunnel ends, as the HTTP/1.1 tunnel's:
    the node's 101, the bytes sent to the client."""
    from modcluster.accesslog import AccessLine
    from modcluster.proxy.observe import ClientStats, Observer

    class Lines:
        def __init__(self):
            self.lines = []

        def write(self, line):
            self.lines.append(line)

        def flush(self):
            pass

    h = Harness(enable_ws_tunnel=True)
    sink = Lines()
    stats = ClientStats(200)
    h.factory.observer = Observer(h.reactor.seconds, sink, AccessLine("combined"), stats)
    h.node("n1", 9001)
    c, sid, node = _open(h)
    assert sink.lines == []
    node.respond(b"12345")
    node.close()
    c.pump()
    assert len(sink.lines) == 1
    assert b'"GET /chat HTTP/2.0" 101 5 ' in sink.lines[0]
    assert stats.export()["requests"][0][2][1] == 1  # 1xx
