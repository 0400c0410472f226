"""
WebSocket over HTTP/2 (RFC 8441) over real sockets on 127.0.0.1: a blocking
Python h2 client over TLS (ALPN h2, in a thread) opening WebSocket streams
through an ssl: listener to in-process WebSocket nodes (RFC 6455 over
HTTP/1.1 Upgrade).  Every wait is bounded.
"""

from __future__ import annotations

import os

import pytest_twisted
from twisted.internet import ssl, task, threads
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory
from zope.interface import implementer

from modcluster.proxy.alpn import ALPN_PROTOCOLS, NegotiatingFactory
from modcluster.proxy.h2 import STREAM_BUFFER, H2Protocol
from modcluster.tls import answer_alpn

from tests.integration.test_proxy_http import Stack, WSEcho, _frame, _parse_frames, _server_options
from tests.integration.test_proxy_http2 import Client, h2_test, pki  # noqa: F401 - pki: a fixture
from tests.support.waiting import until

WS = [(b":protocol", b"websocket"), (b"sec-websocket-version", b"13")]


class WSClient(Client):
    """The blocking h2 client, with WebSocket streams."""

    def open_ws(self, path: str, protocol: bytes = b"websocket", headers=()) -> int:
        sid = self.c.get_next_available_stream_id()
        fields = [(b":method", b"CONNECT"), (b":protocol", protocol), (b":scheme", b"https"),
                  (b":path", path.encode()), (b":authority", b"localhost:%d" % self.port),
                  *WS[1:], *headers]
        self.streams[sid] = {"headers": None, "body": bytearray(), "ended": False,
                             "reset": None}
        self.c.send_headers(sid, fields)
        self.flush()
        self.wait(lambda: self.streams[sid]["headers"] is not None or self.done(sid))
        return sid

    def send(self, sid: int, data: bytes, end: bool = False) -> None:
        view = memoryview(data)
        while True:
            window = min(self.c.local_flow_control_window(sid), self.c.max_outbound_frame_size)
            if window <= 0 and view:
                self.read_once()
                continue
            last = len(view) <= window
            self.c.send_data(sid, bytes(view[:window]), end_stream=end and last)
            view = view[window:]
            self.flush()
            if not view:
                return

    def frames(self, sid: int, count: int) -> list:
        """The next C{count} WebSocket frames the node sent on C{sid}."""
        st = self.streams[sid]
        while True:
            frames, _ = _parse_frames(bytes(st["body"]))
            if len(frames) >= count or self.done(sid):
                break
            self.read_once()
        frames, rest = _parse_frames(bytes(st["body"]))
        st["body"] = bytearray(rest)
        return frames


@implementer(IHalfCloseableProtocol)
class WSNode(WSEcho):
    """
    The echo node, reading header names in any case (the proxy forwards an
    HTTP/2 client's lower-case ones), which also says when the client's
    sending ended (FIN).
    """

    def connectionMade(self) -> None:
        WSEcho.connectionMade(self)
        self.factory.conns.append(self)
        self.lost = False
        self.request = b""

    def dataReceived(self, data: bytes) -> None:
        if not self.open and not self.request:
            self.buf += data
            if b"\r\n\r\n" not in self.buf:
                return
            head, rest = self.buf.split(b"\r\n\r\n", 1)
            self.request = head
            lines = head.split(b"\r\n")
            fields = dict(line.split(b": ", 1) for line in lines[1:])
            key = {n.lower(): v for n, v in fields.items()}[b"sec-websocket-key"]
            self.buf = (lines[0] + b"\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
            data = rest
        WSEcho.dataReceived(self, data)

    def readConnectionLost(self) -> None:
        self.transport.write(_frame(1, b"fin seen", mask=False))
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason=None) -> None:
        self.lost = True


def _ws_node(stack, route: str = "ws1", contexts=("/app",), type: str = "http"):
    server = Factory.forProtocol(WSNode)
    server.conns = []
    server.port = stack.reactor.listenTCP(0, server, interface="127.0.0.1")
    stack.servers.append(server)
    stack.register(route, server.port.getHost().port, contexts=contexts, type=type)
    return server


def _h2(stack) -> H2Protocol:
    (conn,) = [p for p in stack.factory._clients if isinstance(p, H2Protocol)]
    return conn


def ws_test(fn):
    fn.stack_args = {"enable_ws_tunnel": True}
    return h2_test(fn)


@ws_test
async def test_websocket_over_h2_echo_on_the_pages_connection(stack, port, cafile):
    """
    The WebSocket is a stream of the connection the page came over: frames
    both ways (a 300 KB one, over the stream windows), a request on another
    stream meanwhile, then the close handshake ends the stream.
    """
    node = _ws_node(stack)
    stack.serve("nA", contexts=("/page",))
    c = await threads.deferToThread(WSClient, port, cafile)
    try:
        page = await threads.deferToThread(c.get, "/page/echo")
        assert page["headers"][b":status"] == b"200"
        sid = await threads.deferToThread(c.open_ws, "/app/chat?room=1",
                                          headers=[(b"sec-websocket-protocol", b"chat")])
        head = c.streams[sid]["headers"]
        assert head[b":status"] == b"200"
        assert b"sec-websocket-accept" not in head and b"upgrade" not in head
        assert len(stack.factory._clients) == 1  # one connection for both

        def talk():
            c.send(sid, _frame(1, b"hello", mask=True))
            first = c.frames(sid, 1)
            big = os.urandom(300_000)
            c.send(sid, _frame(2, big, mask=True))
            second = c.frames(sid, 1)
            other = c.get("/page/echo")  # another stream, while the tunnel is open
            return first, second, big, other

        first, second, big, other = await threads.deferToThread(talk)
        assert first == [(1, b"hello")]
        assert second == [(2, big)]
        assert other["headers"][b":status"] == b"200"
        assert stack.in_flight() == 1

        def close():
            c.send(sid, _frame(8, b"\x03\xe8", mask=True))
            frames = c.frames(sid, 1)
            c.wait(lambda: c.done(sid))
            return frames

        assert await threads.deferToThread(close) == [(8, b"\x03\xe8")]
        assert c.streams[sid]["ended"]
        await until(lambda: stack.in_flight() == 0 and node.conns[0].lost)
        assert not _h2(stack).streams
    finally:
        c.close()


@ws_test
async def test_end_stream_is_the_tunnels_fin(stack, port, cafile):
    """The client's END_STREAM reaches the node as a FIN; the node still answers."""
    node = _ws_node(stack)
    c = await threads.deferToThread(WSClient, port, cafile)
    try:
        sid = await threads.deferToThread(c.open_ws, "/app/chat")

        def run():
            c.send(sid, _frame(1, b"last words", mask=True), end=True)
            frames = c.frames(sid, 2)
            c.wait(lambda: c.done(sid))
            return frames

        assert await threads.deferToThread(run) == [(1, b"last words"), (1, b"fin seen")]
        assert c.streams[sid]["ended"] and c.streams[sid]["reset"] is None
        await until(lambda: stack.in_flight() == 0 and node.conns[0].lost)
    finally:
        c.close()


@ws_test
async def test_client_that_never_reads_the_tunnel_pauses_the_node(stack, port, cafile):
    """
    A client that stops giving window: the proxy holds a bounded amount for
    the stream and pauses the node connection; once it reads again every
    byte arrives.
    """
    _ws_node(stack)
    c = await threads.deferToThread(WSClient, port, cafile)
    try:
        sid = await threads.deferToThread(c.open_ws, "/app/chat")
        c.auto_ack = False
        big = os.urandom(4 * 1024 * 1024)
        # the node echoes 4 MiB; the client acknowledges none of it
        await threads.deferToThread(c.send, sid, _frame(2, big, mask=True))
        conn = _h2(stack)
        ex = conn.streams[sid]
        await until(lambda: ex.upstream is not None and ex.upstream.paused)
        held = ex.pending_len
        assert held <= STREAM_BUFFER + 256 * 1024
        await task.deferLater(stack.reactor, 0.2, lambda: None)
        assert ex.pending_len == held  # paused: nothing more read from the node

        def drain():
            c.auto_ack = True
            st = c.streams[sid]
            c.c.acknowledge_received_data(len(st["body"]), sid)
            c.flush()
            return c.frames(sid, 1)

        assert await threads.deferToThread(drain) == [(2, big)]
    finally:
        c.close()


@ws_test
async def test_reset_mid_tunnel_closes_the_node_and_the_connection_goes_on(stack, port, cafile):
    node = _ws_node(stack)
    stack.serve("nA", contexts=("/page",))
    c = await threads.deferToThread(WSClient, port, cafile)
    try:
        sid = await threads.deferToThread(c.open_ws, "/app/chat")
        await threads.deferToThread(c.send, sid, _frame(1, b"x", mask=True))
        assert await threads.deferToThread(c.frames, sid, 1) == [(1, b"x")]

        def reset():
            c.c.reset_stream(sid)
            c.flush()
            return c.get("/page/echo")

        after = await threads.deferToThread(reset)
        assert after["headers"][b":status"] == b"200"
        await until(lambda: node.conns[0].lost and stack.in_flight() == 0)
    finally:
        c.close()


@ws_test
async def test_node_closing_ends_the_stream(stack, port, cafile):
    node = _ws_node(stack)
    c = await threads.deferToThread(WSClient, port, cafile)
    try:
        sid = await threads.deferToThread(c.open_ws, "/app/chat")
        await until(lambda: node.conns and node.conns[0].open)
        node.conns[0].transport.write(b"\x81\x03bye")
        node.conns[0].transport.loseConnection()
        await threads.deferToThread(c.wait, lambda: c.done(sid))
        st = c.streams[sid]
        assert st["ended"] and bytes(st["body"]) == b"\x81\x03bye"
        await until(lambda: stack.in_flight() == 0)
    finally:
        c.close()


@ws_test
async def test_no_route_and_other_protocols_answered_on_the_stream(stack, port, cafile):
    _ws_node(stack)
    c = await threads.deferToThread(WSClient, port, cafile)
    try:
        nowhere = await threads.deferToThread(c.open_ws, "/nothing/chat")
        assert c.streams[nowhere]["headers"][b":status"] == b"404"
        other = await threads.deferToThread(c.open_ws, "/app/chat", b"connect-udp")
        assert c.streams[other]["headers"][b":status"] == b"501"
        ok = await threads.deferToThread(c.open_ws, "/app/chat")
        assert c.streams[ok]["headers"][b":status"] == b"200"
    finally:
        c.close()


@pytest_twisted.ensureDeferred
async def test_websocket_over_h2_to_a_wss_node(pki):  # noqa: F811 - the fixture
    """
    A TLS (wss) node: the tunnel works the same; the client's END_STREAM
    reaches it as close_notify (TLS 1.3: the end of our sending only, RFC
    8446 §6.1).  Twisted's TLS, this node's, has no half-close: it answers
    with its own close_notify and closes, and the stream ends.
    """
    ca, cafile = pki
    trust = ssl.Certificate.loadPEM(ca.cert_pem.bytes())
    stack = Stack(enable_ws_tunnel=True,
                  node_tls=lambda node: ssl.optionsForClientTLS("localhost", trustRoot=trust))
    server = Factory.forProtocol(WSNode)
    server.conns = []
    server.port = stack.reactor.listenSSL(0, server, _server_options(ca, "localhost"),
                                          interface="127.0.0.1")
    stack.servers.append(server)
    stack.register("wss1", server.port.getHost().port, type="wss", host="localhost")
    opts = answer_alpn(_server_options(ca, "localhost"), ALPN_PROTOCOLS)
    port = stack.reactor.listenSSL(0, NegotiatingFactory(stack.factory), opts,
                                   interface="127.0.0.1")
    c = None
    try:
        c = await threads.deferToThread(WSClient, port.getHost().port, cafile)
        sid = await threads.deferToThread(c.open_ws, "/app/chat")
        assert c.streams[sid]["headers"][b":status"] == b"200"

        def talk():
            c.send(sid, _frame(1, b"over tls", mask=True))
            return c.frames(sid, 1)

        assert await threads.deferToThread(talk) == [(1, b"over tls")]
        node = server.conns[0]
        assert node.transport.getHandle().get_protocol_version_name() == "TLSv1.3"
        assert not c.done(sid) and not node.lost

        def end():
            c.send(sid, b"", end=True)
            c.wait(lambda: c.done(sid))

        await threads.deferToThread(end)
        assert c.streams[sid]["ended"] and c.streams[sid]["reset"] is None
        await until(lambda: stack.in_flight() == 0 and node.lost)
    finally:
        if c is not None:
            c.close()
        await port.stopListening()
        await stack.stop()
