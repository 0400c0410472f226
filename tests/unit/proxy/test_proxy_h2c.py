"""
HTTP/2 with prior knowledge (h2c, RFC 9113 §3.3) on plain listeners, in
memory: a plain L{ClientProtocol} whose connection starts with the HTTP/2
connection preface hands its transport to an L{H2Protocol} (C{[proxy] h2c}),
every other connection stays HTTP/1.1 (proxy_testlib's Harness, an h2 client
state machine on the client's StringTransport, which has a C{protocol}
attribute as a C{tcp.Server} has).
"""

from __future__ import annotations

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
)

from hyperframe.frame import DataFrame, HeadersFrame

from modcluster.config import ConfigError, ProxyConfig, parse_config
from modcluster.proxy.client import H2_PREFACE, ClientProtocol
from modcluster.proxy.h2 import H2Protocol
from modcluster.proxy.headers import upgrade_matcher

from tests.support.proxy_testlib import Harness, parse_requests, parse_responses
from tests.unit.proxy.test_proxy_h2 import _frames

GET = b"GET /app/x HTTP/1.1\r\nHost: localhost\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


class H2cClient:
    """An h2 client speaking HTTP/2 with prior knowledge to a plain client connection."""

    def __init__(self, h: Harness, secure: bool = False) -> None:
        self.h = h
        self.c = h.client(secure=secure)
        self.t = self.c.transport
        self.t.protocol = self.c.proto  # as a tcp.Server has it (the handover replaces it)
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.headers: dict[int, dict] = {}
        self.body: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.terminated = None
        self.settings = False

    def opening(self) -> bytes:
        """The preface and the client's SETTINGS, as the client would send them."""
        data = self.conn.data_to_send()
        assert data.startswith(H2_PREFACE)
        return data

    def send(self, data: bytes) -> None:
        self.t.protocol.dataReceived(data)

    @property
    def proto(self):
        return self.t.protocol

    def pump(self) -> None:
        for _ in range(100):
            out = self.conn.data_to_send()
            if out:
                self.send(out)
            data = self.t.value()
            self.t.clear()
            if data:
                for ev in self.conn.receive_data(data):
                    if isinstance(ev, ResponseReceived):
                        self.headers[ev.stream_id] = dict(ev.headers)
                    elif isinstance(ev, DataReceived):
                        self.body[ev.stream_id] = self.body.get(ev.stream_id, b"") + ev.data
                        self.conn.acknowledge_received_data(ev.flow_controlled_length,
                                                            ev.stream_id)
                    elif isinstance(ev, StreamEnded):
                        self.ended.add(ev.stream_id)
                    elif isinstance(ev, ConnectionTerminated):
                        self.terminated = ev
                    elif isinstance(ev, RemoteSettingsChanged):
                        self.settings = True
            if not out and not data:
                return

    def request(self, path: bytes = b"/app/x", end: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                                     (b":path", path), (b":authority", b"localhost")],
                               end_stream=end)
        return sid


def _served(h: Harness, c: H2cClient, node=None):
    """One request on the HTTP/2 connection, answered by node n1 (port 9001)."""
    sid = c.request(b"/app/x?q=1")
    c.pump()
    node = node or h.accept(9001)
    [req] = parse_requests(node.received())
    assert req.url == b"/app/x?q=1"
    assert req.header(b"X-Forwarded-Proto") == b"http"  # h2c: a plain connection
    assert req.header(b"X-Forwarded-For") is not None
    node.respond(OK)
    c.pump()
    assert c.headers[sid][b":status"] == b"200"
    assert c.body[sid] == b"hello" and sid in c.ended
    assert h.counters_idle()
    return node


@pytest.fixture
def h():
    h = Harness(h2c=True)
    h.node("n1", 9001, contexts=("/app",))
    return h


def test_h2c_is_off_by_default_and_documented():
    assert ProxyConfig().h2c is False
    assert parse_config("[proxy]\nh2c = true\n").proxy.h2c is True
    with pytest.raises(ConfigError):
        parse_config('[proxy]\nh2c = "yes"\n')


def test_preface_without_h2c_is_a_malformed_request():
    """The behaviour h2c changes: off, the preface is answered 400 and closed, as before."""
    h = Harness()
    h.node("n1", 9001, contexts=("/app",))
    c = H2cClient(h)
    c.send(c.opening())
    assert c.proto is c.c.proto and isinstance(c.proto, ClientProtocol)
    [resp] = parse_responses(c.t.value())
    assert resp.status == 400
    assert c.t.disconnecting
    assert not h.pending()


def test_prior_knowledge_connection_is_served_as_http2(h):
    from modcluster.proxy.observe import ClientStats

    h.factory.stats = stats = ClientStats()
    c = H2cClient(h)
    old = c.c.proto
    c.send(c.opening())
    assert isinstance(c.proto, H2Protocol)
    assert c.proto.client.secure is False
    # our server preface (SETTINGS) first, no HTTP/1.1 answer
    assert c.t.value()[3:4] == b"\x04" and not c.t.value().startswith(b"HTTP/")
    assert c.t.producer is c.proto  # the push producer of the transport now
    # the ClientProtocol let go: not swept, not counted twice, not connected
    assert old not in h.factory._clients and c.proto in h.factory._clients
    assert not old.connected and old.deferReading() is False
    assert (stats.connections, stats.open, stats.tls_handshakes) == (1, 1, 0)
    c.pump()
    assert c.settings and c.terminated is None
    node = _served(h, c)
    _served(h, c, node)  # the connection goes on
    c.proto.connectionLost(None)
    assert stats.open == 0


def test_preface_and_a_request_in_one_read(h):
    c = H2cClient(h)
    sid = c.request()
    c.send(c.conn.data_to_send())  # preface, SETTINGS, HEADERS: one read
    node = h.accept(9001)
    assert node.received().startswith(b"GET /app/x HTTP/1.1\r\n")
    node.respond(OK)
    c.pump()
    assert c.body[sid] == b"hello"


@pytest.mark.parametrize("cut", range(1, len(H2_PREFACE) + 9))
def test_preface_split_in_two_reads_anywhere(h, cut):
    c = H2cClient(h)
    data = c.opening()
    c.send(data[:cut])
    assert isinstance(c.proto, ClientProtocol) == (cut < len(H2_PREFACE))
    assert not c.t.value().startswith(b"HTTP/")
    c.send(data[cut:])
    assert isinstance(c.proto, H2Protocol)
    c.pump()
    _served(h, c)


def test_preface_byte_by_byte(h):
    c = H2cClient(h)
    sid = c.request()
    data = c.conn.data_to_send()
    for i in range(len(data)):
        c.send(data[i:i + 1])
        assert not c.t.value().startswith(b"HTTP/")
    assert isinstance(c.proto, H2Protocol)
    node = h.accept(9001)
    node.respond(OK)
    c.pump()
    assert c.body[sid] == b"hello"


@pytest.mark.parametrize("reads", [
    [b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"],  # a wrong preface
    [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r"],
    [b"PRI * HTTP/2.0\r\n\r\n"],  # then HTTP/1.1
    [b"\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"],  # llhttp skips a leading CRLF
    [b"\r\n", H2_PREFACE],
    [b"PRI  * HTTP/2.0\r\n\r\nSM\r\n\r\n"],  # llhttp allows two spaces
    [b"PRI /x HTTP/2.0\r\n\r\nSM\r\n\r\n"],  # and another target
    [b"PRI / HTTP/2.0\r\n\r\nSM\r\n\r\n"],  # as long as the preface
    [b"PRI / HTTP/2", b".0\r\n\r\nSM\r\n\r\n"],  # its last read looking right
    [b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n"],
])
def test_not_the_preface_is_not_http2(h, reads):
    c = H2cClient(h)
    for data in reads:
        c.send(data)
    c.send(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + GET)
    assert isinstance(c.proto, ClientProtocol)
    responses = parse_responses(c.t.value())
    assert responses and responses[0].status in (400, 405, 501), responses
    assert c.t.disconnecting
    assert not h.pending()  # nothing went to a node


def test_preface_after_a_pipelined_request_is_not_http2(h):
    """The preface must be the connection's first bytes: after a request, 400."""
    c = H2cClient(h)
    c.send(GET + H2_PREFACE)
    assert isinstance(c.proto, ClientProtocol)
    node = h.accept(9001)
    assert node.received().startswith(b"GET /app/x HTTP/1.1\r\n")
    node.respond(OK)
    statuses = [r.status for r in parse_responses(c.t.value())]
    assert statuses == [200, 400]
    assert c.t.disconnecting


@pytest.mark.parametrize("first", [
    GET,  # parsed (then remembered: the factory's request memo)
    b"GET /app/y HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\nab",
])
def test_preface_on_a_kept_alive_connection_is_not_http2(h, first):
    """After answered requests (parsed or remembered), in a read of its own: 400."""
    c = H2cClient(h)
    node = None
    for _ in range(3):  # the third time GET is a remembered head
        c.send(first)
        node = node or h.accept(9001)
        node.received()
        node.respond(OK)
        [resp] = parse_responses(c.t.value())
        c.t.clear()
        assert resp.status == 200
    c.send(H2_PREFACE)
    assert isinstance(c.proto, ClientProtocol)
    [resp] = parse_responses(c.t.value())
    assert resp.status == 400


def test_preface_split_after_a_request_is_not_http2(h):
    c = H2cClient(h)
    c.send(GET)
    node = h.accept(9001)
    node.respond(OK)
    c.t.clear()
    for i in range(len(H2_PREFACE)):
        c.send(H2_PREFACE[i:i + 1])
    assert isinstance(c.proto, ClientProtocol)
    [resp] = parse_responses(c.t.value())
    assert resp.status == 400


def test_no_h2c_over_tls(h):
    """A TLS connection speaks HTTP/2 only by ALPN (RFC 9113 §3.2): the preface is a 400."""
    c = H2cClient(h, secure=True)
    c.send(c.opening())
    assert isinstance(c.proto, ClientProtocol)
    [resp] = parse_responses(c.t.value())
    assert resp.status == 400


def test_pipelined_http11_unchanged_with_h2c_on(h):
    c = H2cClient(h)
    c.send(GET + b"GET /app/z HTTP/1.1\r\nHost: localhost\r\n\r\n" + GET)
    node = h.accept(9001)
    for _ in range(3):
        node.received()
        node.respond(OK)
    assert isinstance(c.proto, ClientProtocol)
    assert [r.status for r in parse_responses(c.t.value())] == [200, 200, 200]
    assert not c.t.disconnecting


def test_upgrade_h2c_is_plain_http11_even_with_any_token_tunnelled():
    """
    C{Upgrade: h2c} (RFC 9113 deprecates it) is never tunnelled, not even with
    C{ws_upgrade_header = "*"}: a node answering 101 would speak HTTP/2 with
    the client past the proxy (h2c smuggling).  The request goes on as HTTP/1.1.
    """
    for setting in ("*", "websocket"):
        h = Harness(enable_ws_tunnel=True, ws_upgrade_header=setting, h2c=True)
        h.node("n1", 9001)
        c = h.client()
        c.send(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
               b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
        n = h.accept()
        [req] = parse_requests(n.received())
        assert req.header(b"Upgrade") is None
        assert req.header(b"Connection") is None
        assert req.header(b"HTTP2-Settings") is None
        n.respond(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n"
                  b"Connection: Upgrade\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        assert c.proto._tunnel is None
        # the node's 101 to a request without Upgrade is not a tunnel
        assert not c.received().startswith(b"HTTP/1.1 101")
    assert upgrade_matcher("*")(b"h2c") is None
    assert upgrade_matcher("*")(b"H2C, websocket") == b"websocket"
    assert upgrade_matcher("*")(b"websocket") == b"websocket"


def test_listing_h2c_as_a_tunnelled_upgrade_is_refused():
    for value in ("h2c", "websocket, H2C"):
        with pytest.raises(ValueError, match="h2c"):
            ProxyConfig(ws_upgrade_header=value)
        with pytest.raises(ConfigError, match="ws_upgrade_header"):
            parse_config(f'[proxy]\nws_upgrade_header = "{value}"\n')


def test_rapid_reset_protection_on_h2c(h):
    c = H2cClient(h)
    c.send(c.opening())
    c.pump()
    for _ in range(h.config.http2_max_resets + 5):
        sid = c.request()
        c.conn.reset_stream(sid, ErrorCodes.CANCEL)
        c.pump()
        if c.terminated is not None:
            break
    assert c.terminated is not None
    assert c.terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert c.t.disconnecting
    assert h.counters_idle()


def test_ping_flood_in_the_first_read_closes(h):
    """Frames after the preface in the same read go through the same budget."""
    c = H2cClient(h)
    c.opening()
    for i in range(h.config.http2_max_resets * 10 + 5):
        c.conn.ping(b"%08d" % i)
    data = H2_PREFACE + c.conn.data_to_send()
    c.send(data)
    assert isinstance(c.proto, H2Protocol)
    assert c.t.disconnecting
    c.pump()
    assert c.terminated is not None
    assert c.terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_a_bad_frame_after_the_preface_is_an_http2_protocol_error(h):
    c = H2cClient(h)
    c.send(H2_PREFACE + b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")  # DATA on stream 0
    assert isinstance(c.proto, H2Protocol)
    assert c.t.disconnecting
    c.pump()
    assert c.terminated is not None
    assert c.terminated.error_code == ErrorCodes.PROTOCOL_ERROR
    assert not h.pending()


def test_drain_sends_goaway_to_h2c_connections(h):
    c = H2cClient(h)
    c.send(c.opening())
    c.pump()
    sid = c.request()
    c.pump()
    node = h.accept(9001)
    assert h.factory.drain() == 1  # busy: a stream open
    c.pump()
    assert c.terminated is not None and c.terminated.error_code == ErrorCodes.NO_ERROR
    assert c.terminated.last_stream_id == sid
    # (the h2 client library stops at a GOAWAY: the frames are read raw)
    node.respond(OK)
    frames = _frames(c.t.value())
    assert [f.__class__ for f in frames] == [HeadersFrame, DataFrame]
    assert frames[1].data == b"hello" and "END_STREAM" in frames[1].flags
    assert c.t.disconnecting


def test_h2c_follows_a_reload(h):
    """C{h2c} is live (tap.PROXY_LIVE): read when a preface arrives."""
    import attrs

    from modcluster.tap import PROXY_LIVE

    assert "h2c" in PROXY_LIVE
    h.factory.reconfigure(attrs.evolve(h.config, h2c=False))
    c = H2cClient(h)
    c.send(c.opening())
    assert isinstance(c.proto, ClientProtocol)
    h.factory.reconfigure(attrs.evolve(h.config, h2c=True))
    c = H2cClient(h)
    c.send(c.opening())
    assert isinstance(c.proto, H2Protocol)


def test_access_log_and_metrics_of_an_h2c_request(h):
    import json

    from modcluster.accesslog import AccessLine
    from modcluster.proxy.observe import ClientStats, Observer

    class Lines:
        def __init__(self):
            self.lines = []

        def write(self, line):
            self.lines.append(line)

        def flush(self):
            pass

    sink = Lines()
    h.factory.observer = obs = Observer(h.reactor.seconds, sink, AccessLine("json"),
                                        ClientStats(200))
    h.factory.stats = obs.stats
    c = H2cClient(h)
    c.send(c.opening())
    c.pump()
    _served(h, c)
    [line] = sink.lines
    record = json.loads(line)
    assert record["protocol"] == "HTTP/2.0" and record["status"] == 200
    assert obs.stats.connections == 1 and obs.stats.tls_handshakes == 0
    assert sum(sum(row[:6]) for row in obs.stats.rows.values()) == 1


@pytest.mark.parametrize("reactor_type", ["memory", "epoll"])
def test_h2c_writes_straight_to_the_socket_without_pausing_nodes(reactor_type):
    """
    On a real TCP transport (a socket pair), an h2c connection writes its
    frames as the HTTP/1.1 front and the TLS layer do (the direct writer):
    straight to the socket while nothing is buffered.  Through Twisted's
    write, every write waited for writability (two epoll_ctl), and a 64 KiB
    response, more than Twisted's buffer size in one write, paused the
    connection as a producer and with it every stream's node connection, to
    resume them all once written: ~20 epoll_ctl per request under h2load.
    """
    import socket

    from twisted.internet import tcp
    from twisted.internet.epollreactor import EPollReactor
    from twisted.internet.testing import MemoryReactorClock

    h = Harness(h2c=True)
    h.node("n1", 9001, contexts=("/app",))
    a, peer = socket.socketpair()
    a.setblocking(False)
    peer.setblocking(False)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    reactor = EPollReactor() if reactor_type == "epoll" else MemoryReactorClock()
    proto = h.factory.buildProtocol(None)
    t = tcp.Server(a, proto, ("127.0.0.1", 40000), None, 0, reactor)
    proto.makeConnection(t)
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    conn.increment_flow_control_window(2**30)
    conn.update_settings({0x4: 2**30})  # INITIAL_WINDOW_SIZE: no flow-control wait
    t.protocol.dataReceived(conn.data_to_send())
    assert isinstance(t.protocol, H2Protocol)
    got: dict[int, bytes] = {}
    ended: set[int] = set()

    def pump() -> None:
        out = conn.data_to_send()
        if out:
            t.protocol.dataReceived(out)
        while True:
            try:
                data = peer.recv(1 << 20)
            except BlockingIOError:
                return
            for ev in conn.receive_data(data):
                if isinstance(ev, DataReceived):
                    got[ev.stream_id] = got.get(ev.stream_id, b"") + ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, StreamEnded):
                    ended.add(ev.stream_id)

    pump()
    body = bytes(range(256)) * 256  # 64 KiB
    sids = []
    for _ in range(3):
        sids.append(conn.get_next_available_stream_id())
        conn.send_headers(sids[-1], [(b":method", b"GET"), (b":scheme", b"http"),
                                     (b":path", b"/app/x"), (b":authority", b"localhost")],
                          end_stream=True)
    pump()
    node = h.accept(9001)
    nodes = [node] + [h.accept(9001) for _ in sids[1:]]
    for n in nodes:
        n.received()
    for n in nodes:
        n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n" + body)
        # written at once: nothing left in Twisted's buffer, no wait for writability
        assert t not in reactor.getWriters()
        assert t._tempDataLen == 0 and not t.dataBuffer
        # no node connection paused
        assert all(m.transport.producerState == "producing" for m in nodes)
        assert not t.protocol._blocked
    pump()
    assert all(got[sid] == body for sid in sids) and ended == set(sids)
    t.protocol.connectionLost(None)
    a.close()
    peer.close()
