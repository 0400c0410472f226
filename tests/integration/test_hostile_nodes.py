"""
Hostile HTTP nodes over real sockets on 127.0.0.1: a raw-socket node (a
thread per connection) answers what its request path asks for, clients are
raw sockets too (in threads), the proxy is the real ProxyFactory in the
reactor.  What a real socket changes: a reset (RST) is a reset, data the node
pipelines is read by the node, descriptors are real.  Each test checks what
the client got and how its connection ended, what the node saw, and that the
proxy's descriptors are back to their count before.  Every wait is bounded.
"""

from __future__ import annotations

import os
import socket
import socketserver
import ssl as pyssl
import struct
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import defer, ssl, task, threads

from modcluster.ajp.container import (
    encode_end_response,
    encode_send_body_chunk,
    encode_send_headers,
)
from tests.integration.test_proxy_http import Stack
from tests.support.proxy_testlib import parse_responses
from tests.support.waiting import until as _until, open_fds as _fds

WS_HEAD = (b"GET /app/chat HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")




def _read_head(sock: socket.socket, buf: bytes) -> tuple[bytes, bytes]:
    """One request head from C{sock} (after C{buf}): (head, what followed); b"" at EOF."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return b"", b""
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        node: HostileNode = self.server.node  # type: ignore[attr-defined]
        sock = self.request
        sock.settimeout(10)
        if node.tls is not None:
            try:
                sock = node.tls.wrap_socket(sock, server_side=True)
            except OSError:
                return
        buf = b""
        try:
            while True:
                head, buf = _read_head(sock, buf)
                if not head:
                    return
                path = head.split(b" ", 2)[1]
                with node.lock:
                    node.paths.append(path)
                if path.rsplit(b"/", 1)[-1] in (b"cut-by-reset", b"cut-by-tls-eof",
                                                b"cut-mid-record", b"closed-in-order"):
                    # a close-delimited body, ended by a reset or by a close
                    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart1,")
                    time.sleep(0.2)  # (the part reaches the proxy before the end)
                    if path.endswith(b"/cut-by-reset"):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                    elif path.endswith(b"/cut-mid-record"):
                        # (TLS) the start of an application data record of 64
                        # bytes, then the close
                        os.write(sock.fileno(), b"\x17\x03\x03\x00\x40" + bytes(20))
                    elif path.endswith(b"/closed-in-order") and node.tls is not None:
                        sock = sock.unwrap()  # close_notify, then the close
                    # (else over TLS: an SSLSocket closed without unwrap sends
                    # no close_notify, only the TCP close)
                    sock.close()
                    return
                if path.endswith(b"/trickle-head"):
                    # the response head a byte at a time, each well within
                    # the read timeout; the node stops at the first failed send
                    answer = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 60 + b"\r\n\r\n"
                    for i in range(len(answer)):
                        sock.sendall(answer[i:i + 1])
                        time.sleep(0.25)
                    return
                answer = _BROKEN.get(path.rsplit(b"/", 1)[-1])
                if answer is not None:
                    sock.sendall(answer)
                    continue
                if path.endswith(b"/chat"):
                    # refuses the upgrade; keeps the connection (keep-alive)
                    sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    continue
                body = b"node saw " + path
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
        except OSError:
            return


#: broken answers by the last segment of the request path
_BROKEN = {
    b"cl-in-connection": (b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\n"
                          b"Content-Length: 5\r\n\r\nhello"),
    b"status-099": b"HTTP/1.1 099 Early\r\n\r\n",
    b"interim-flood": b"HTTP/1.1 102 Processing\r\n\r\n" * 1000,
    b"extra-bytes": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                     b"HTTP/1.1 404 Smuggled\r\nContent-Length: 0\r\n\r\n"),
}


class HostileNode(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tls: "pyssl.SSLContext | None" = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.node = self
        self.tls = tls
        self.lock = threading.Lock()
        self.paths: list[bytes] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def _exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[bytes, str]:
    """Blocking: send C{data}, read until the proxy ends the connection: (bytes, how)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    out = b""
    try:
        s.sendall(data)
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return out, "reset"
            if not chunk:
                return out, "close"
            out += chunk
    except TimeoutError:
        return out, "timeout"
    finally:
        s.close()


def _stack_test(fn, tls: bool = False, **config):
    @pytest_twisted.ensureDeferred
    async def run():
        node_tls = None
        if tls:
            trustme = pytest.importorskip("trustme")
            ca = trustme.CA()
            context = pyssl.SSLContext(pyssl.PROTOCOL_TLS_SERVER)
            ca.issue_cert("localhost").configure_cert(context)
            node = HostileNode(context)
            trust = ssl.Certificate.loadPEM(ca.cert_pem.bytes())

            def node_tls(n):
                return ssl.optionsForClientTLS("localhost", trustRoot=trust)
        else:
            node = HostileNode()
        stack = Stack(node_tls=node_tls, **{"enable_ws_tunnel": True, **config})
        stack.register("n1", node.port, contexts=("/app",), type="https" if tls else "http")
        before = _fds()
        try:
            d = defer.ensureDeferred(fn(stack, node))
            d.addTimeout(60, stack.reactor)
            await d
            # every node and client connection the test made is closed again,
            # once the pooled (idle, good) node connections are let go
            stack.factory.forwarders["http"].close()
            await _until(lambda: _fds() <= before)
        finally:
            await stack.stop()
            node.stop()

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


@_stack_test
async def test_close_delimited_body_cut_by_a_reset_reaches_the_client_cut(stack, node):
    """
    A close-delimited body the node ends with a reset reaches the client as a
    cut response (its connection reset, no last chunk); one the node ends
    with an orderly close is complete (last chunk, keep-alive).
    """
    port = stack.port.getHost().port
    get = b"GET /app/%s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    data, how = await threads.deferToThread(_exchange, port, get % b"closed-in-order")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked" in data
    assert data.endswith(b"6\r\npart1,\r\n0\r\n\r\n") and how == "close", (data, how)
    data, how = await threads.deferToThread(_exchange, port, get % b"cut-by-reset")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"part1," in data
    assert not data.endswith(b"0\r\n\r\n") and how == "reset", (data, how)
    entry = stack.registry.table.by_route["n1"]
    assert entry.rt.fails >= 1 and not entry.rt.in_error
    assert entry.rt.busy == 0


@_stack_test
async def test_a_node_refusing_an_upgrade_never_reads_what_followed_it(stack, node):
    """
    A client sends a WebSocket upgrade and, in the same segment, another
    request the proxy would refuse (a dot-segment path): the node refuses
    the upgrade and keeps its connection open for a next request, yet it
    never reads the second one; the client gets the 404 and a closed
    connection.
    """
    port = stack.port.getHost().port
    smuggled = b"GET /app/x/../../admin HTTP/1.1\r\nHost: localhost\r\n\r\n"
    data, how = await threads.deferToThread(_exchange, port, WS_HEAD + smuggled)
    assert data.startswith(b"HTTP/1.1 404 Not Found\r\n"), data
    assert data.count(b"HTTP/1.1 ") == 1 and how == "close", (data, how)
    await task.deferLater(stack.reactor, 0.3, lambda: None)
    with node.lock:
        assert node.paths == [b"/app/chat"], node.paths


@_stack_test
async def test_broken_answers_leave_the_keep_alive_client_in_step(stack, node):
    """
    A keep-alive client pipelines a request the node answers brokenly and a
    good one: the broken one gets what docs/data-plane.md says (its
    response framed as relayed, or 10 interim responses and a 502, or a
    502), the good one its own answer, on the same client connection, and
    the node is not put in error.
    """
    port = stack.port.getHost().port
    expected = {b"cl-in-connection": (200, b"hello"), b"status-099": (502, None),
                b"interim-flood": (502, None), b"extra-bytes": (200, b"hello")}
    for name, (status, body) in expected.items():
        data, how = await threads.deferToThread(
            _exchange, port,
            b"GET /app/%s HTTP/1.1\r\nHost: localhost\r\n\r\n" % name
            + b"GET /app/ok HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert how == "close", (name, data, how)
        responses = [r for r in parse_responses(data) if r.status >= 200]
        assert [r.status for r in responses] == [status, 200], (name, data)
        assert all(r.complete for r in responses), (name, data)
        if body is not None:
            assert responses[0].body == body, (name, data)
        assert responses[1].body == b"node saw /app/ok", (name, data)
        interim = data.count(b"HTTP/1.1 102 ")
        assert interim == (10 if name == b"interim-flood" else 0), (name, interim)
    assert not stack.registry.table.by_route["n1"].rt.in_error


def _configured(**config):
    return lambda fn: _stack_test(fn, **config)


async def _head_cut_off(stack, path: bytes) -> None:
    """
    A GET of C{path} whose node is slow with its response head (read
    timeout 1 s): a 504 within a few seconds, node C{n1} not put in error
    and not busy.
    """
    started = time.monotonic()
    data, how = await threads.deferToThread(
        _exchange, stack.port.getHost().port,
        b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % path)
    took = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 504 "), (data, how)
    assert took < 6, took
    entry = stack.registry.table.by_route["n1"]
    assert not entry.rt.in_error and entry.rt.busy == 0


@_configured(timeout=1.0)
async def test_a_node_trickling_its_response_head_is_cut_off(stack, node):
    """
    A node sends its response head a byte every 0.25 s: each byte within the
    read timeout (1 s), so the read timeout alone would wait for the whole
    head (19 s here).  The head is due within the read timeout of its first
    byte: the client gets a 504 within a few seconds, the node connection
    is closed and the node is not put in error.
    """
    await _head_cut_off(stack, b"/app/trickle-head")
    # a node that answers at once still does, on the same proxy
    data, how = await threads.deferToThread(
        _exchange, stack.port.getHost().port,
        b"GET /app/ok HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"node saw /app/ok")


def _ajp_flusher(server: socket.socket, flushes: int, gap: float) -> None:
    """
    A raw AJP node (a thread): answers CPING, then to a FORWARD_REQUEST sends
    empty SEND_BODY_CHUNK flushes every C{gap} seconds, then a 200.
    """
    sock, _ = server.accept()
    sock.settimeout(10)
    buf = b""
    try:
        while True:
            while len(buf) < 4 or len(buf) < 4 + struct.unpack(">H", buf[2:4])[0]:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            size = struct.unpack(">H", buf[2:4])[0]
            packet, buf = buf[4:4 + size], buf[4 + size:]
            if packet[:1] == b"\x0a":  # CPING
                sock.sendall(b"AB\x00\x01\x09")
                continue
            for _ in range(flushes):
                sock.sendall(encode_send_body_chunk(b""))
                time.sleep(gap)
            sock.sendall(encode_send_headers(200, b"OK", [(b"Content-Length", b"0")])
                         + encode_end_response(False))
            return
    except OSError:
        return
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_an_ajp_node_flushing_before_its_headers_is_cut_off():
    """
    A real AJP node sends an empty SEND_BODY_CHUNK every 0.25 s before its
    SEND_HEADERS: each within the read timeout (1 s), for 20 s.  The head is
    due within the read timeout of the first flush: 504 within a few
    seconds, the node not put in error.
    """
    server = socket.create_server(("127.0.0.1", 0))
    node = threading.Thread(target=_ajp_flusher, args=(server, 80, 0.25), daemon=True)
    node.start()
    from modcluster.proxy.ajp import AJPForwarder

    stack = Stack(timeout=1.0)
    stack.factory.forwarders["ajp"] = AJPForwarder(stack.reactor, stack.config)
    stack.register("n1", server.getsockname()[1], contexts=("/app",), type="ajp")
    try:
        await _head_cut_off(stack, b"/app/x")
        await threads.deferToThread(node.join, 10)
        assert not node.is_alive()
    finally:
        await stack.stop()
        server.close()


@pytest_twisted.ensureDeferred
async def test_close_delimited_body_over_tls_needs_close_notify():
    """
    Over TLS, a close-delimited body ends with close_notify: without it (a
    TCP close only, at a record boundary or in the middle of a record, as a
    truncation would look) the client connection is cut and the node's
    failure recorded, as for a reset; with it the body is complete.
    (Before, this was an expected failure whose node sent close_notify in
    both cases.)
    """

    async def check(stack, node):
        port = stack.port.getHost().port
        entry = stack.registry.table.by_route["n1"]
        get = b"GET /app/%s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        for cut in (b"cut-by-tls-eof", b"cut-mid-record"):
            data, how = await threads.deferToThread(_exchange, port, get % b"closed-in-order")
            assert data.endswith(b"6\r\npart1,\r\n0\r\n\r\n") and how == "close", (data, how)
            assert entry.rt.fails == 0
            data, how = await threads.deferToThread(_exchange, port, get % cut)
            assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"part1," in data
            assert not data.endswith(b"0\r\n\r\n") and how == "reset", (cut, data, how)
            assert entry.rt.fails == 1 and not entry.rt.in_error, cut
            assert entry.rt.busy == 0

    await _stack_test(check, tls=True)()
