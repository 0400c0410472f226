"""
HTTP/2 to clients over real TLS on 127.0.0.1: a blocking Python h2 client (in
a thread) and curl --http2 against an ssl: listener that negotiates h2 by ALPN,
in front of in-process HTTP/1.1 nodes (test_proxy_http's Stack).  Every wait is
bounded.
"""

from __future__ import annotations

import shutil
import socket
import ssl as pyssl
import subprocess

import pytest
import pytest_twisted
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes
from twisted.internet import defer, threads
from twisted.internet.protocol import Factory, Protocol

from modcluster.proxy.alpn import ALPN_PROTOCOLS, NegotiatingFactory
from modcluster.proxy.h2 import H2Protocol, STREAM_BUFFER
from modcluster.tls import answer_alpn

from tests.integration.test_proxy_http import Stack, _server_options
from tests.support.waiting import until as _until

trustme = pytest.importorskip("trustme")
CURL = shutil.which("curl")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = trustme.CA()
    d = tmp_path_factory.mktemp("h2")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    return ca, str(d / "ca.pem")


class Client:
    """A blocking HTTP/2 client (run it in a thread)."""

    def __init__(self, port: int, cafile: str, window: int | None = None) -> None:
        ctx = pyssl.create_default_context(cafile=cafile)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.s = ctx.wrap_socket(raw, server_hostname="localhost")
        assert self.s.selected_alpn_protocol() == "h2"
        self.c = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.c.initiate_connection()
        if window is not None:
            self.c.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.port = port
        self.streams: dict[int, dict] = {}
        self.auto_ack = True
        self.terminated = None
        self.flush()

    def flush(self) -> None:
        data = self.c.data_to_send()
        if data:
            self.s.sendall(data)

    def request(self, path: str, method: str = "GET", headers=(), body: bytes | None = None,
                ) -> int:
        sid = self.c.get_next_available_stream_id()
        fields = [(b":method", method.encode()), (b":scheme", b"https"),
                  (b":path", path.encode()), (b":authority", b"localhost:%d" % self.port),
                  *headers]
        if body is not None:
            fields.append((b"content-length", b"%d" % len(body)))
        self.streams[sid] = {"headers": None, "body": bytearray(), "ended": False,
                             "reset": None}
        self.c.send_headers(sid, fields, end_stream=body is None)
        self.flush()
        if body is not None:
            view = memoryview(body)
            while view:
                window = min(self.c.local_flow_control_window(sid),
                             self.c.max_outbound_frame_size)
                if window <= 0:
                    self.read_once()
                    continue
                self.c.send_data(sid, bytes(view[:window]), end_stream=len(view) <= window)
                view = view[window:]
                self.flush()
        return sid

    def read_once(self) -> None:
        data = self.s.recv(65536)
        if not data:
            raise EOFError("connection closed")
        for ev in self.c.receive_data(data):
            st = self.streams.get(getattr(ev, "stream_id", 0))
            if isinstance(ev, ResponseReceived):
                st["headers"] = dict(ev.headers)
            elif isinstance(ev, DataReceived):
                st["body"] += ev.data
                if self.auto_ack:
                    self.c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, StreamEnded):
                st["ended"] = True
            elif isinstance(ev, StreamReset):
                st["reset"] = ev.error_code
            elif isinstance(ev, TrailersReceived):
                st["trailers"] = ev.headers
            elif isinstance(ev, ConnectionTerminated):
                self.terminated = ev
        self.flush()

    def wait(self, predicate) -> None:
        while not predicate():
            self.read_once()

    def done(self, sid: int) -> bool:
        st = self.streams[sid]
        return st["ended"] or st["reset"] is not None

    def get(self, path: str, **kw) -> dict:
        sid = self.request(path, **kw)
        self.wait(lambda: self.done(sid))
        return self.streams[sid]

    def close(self) -> None:
        self.s.close()



def h2_test(fn):
    """Run with a Stack, an h2-enabled ssl: listener on it, always cleaned up."""

    @pytest_twisted.ensureDeferred
    async def run(pki):
        ca, cafile = pki
        stack = Stack(**getattr(fn, "stack_args", {}))
        opts = answer_alpn(_server_options(ca, "localhost"), ALPN_PROTOCOLS)
        neg = NegotiatingFactory(stack.factory)
        port = stack.reactor.listenSSL(0, neg, opts, interface="127.0.0.1")
        try:
            d = defer.ensureDeferred(fn(stack, port.getHost().port, cafile))
            d.addTimeout(60, stack.reactor)
            await d
        finally:
            await port.stopListening()
            await stack.stop()

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


def _h2_conns(stack) -> list:
    return [p for p in stack.factory._clients if isinstance(p, H2Protocol)]


@h2_test
async def test_many_concurrent_streams_on_one_connection(stack, port, cafile):
    """60 streams at once on one connection, balanced over two nodes; RFC 9113 mapping."""
    stack.serve("nA")
    stack.serve("nB")
    c = await threads.deferToThread(Client, port, cafile)
    try:
        def run():
            sids = [c.request(f"/app/echo?i={i}",
                              headers=[(b"cookie", b"a=1"), (b"cookie", b"b=2")])
                    for i in range(60)]
            c.wait(lambda: all(c.done(s) for s in sids))
            return [c.streams[s] for s in sids]

        results = await threads.deferToThread(run)
        routes = set()
        for st in results:
            assert st["headers"][b":status"] == b"200"
            lines = bytes(st["body"]).split(b"\n")
            routes.add(lines[0])
            assert lines[1].startswith(b"GET /app/echo?i=")
            assert b"X-Forwarded-Proto: https" in lines
            assert b"Host: localhost:%d" % port in lines
            assert b"cookie: a=1; b=2" in lines  # crumbs joined for the node
        assert routes == {b"nA", b"nB"}
        assert len(_h2_conns(stack)) == 1
        assert stack.in_flight() == 0
    finally:
        c.close()


@h2_test
async def test_sticky_session_over_h2(stack, port, cafile):
    stack.serve("nA")
    stack.serve("nB")
    c = await threads.deferToThread(Client, port, cafile)
    try:
        first = await threads.deferToThread(c.get, "/app/echo")
        route = bytes(first["body"]).split(b"\n")[0]
        cookie = first["headers"][b"set-cookie"].split(b";")[0]
        for _ in range(6):
            st = await threads.deferToThread(c.get, "/app/echo",
                                             headers=[(b"cookie", cookie)])
            assert bytes(st["body"]).split(b"\n")[0] == route
    finally:
        c.close()


@h2_test
async def test_large_upload_streams_with_flow_control(stack, port, cafile):
    stack.serve("nA")
    body = b"u" * (8 * 1024 * 1024 + 17)
    c = await threads.deferToThread(Client, port, cafile)
    try:
        st = await threads.deferToThread(c.get, "/app/upload", method="POST", body=body)
        assert st["headers"][b":status"] == b"200"
        assert bytes(st["body"]) == b"%d" % len(body)
    finally:
        c.close()


@h2_test
async def test_slow_client_download_keeps_buffering_bounded(stack, port, cafile):
    """
    A client that stops reading: the node connection is paused and the proxy
    holds a bounded amount; once the client reads again, every byte arrives.
    """
    server = stack.serve("nA")
    protos = []
    build = server.buildProtocol

    def recording(addr):
        p = build(addr)
        protos.append(p)
        return p

    server.buildProtocol = recording
    size = 48 * 1024 * 1024
    c = await threads.deferToThread(Client, port, cafile)
    try:
        c.auto_ack = False  # no window given back: the server may send 64 KiB
        sid = await threads.deferToThread(c.request, f"/app/download?bytes={size}")
        await threads.deferToThread(c.wait, lambda: len(c.streams[sid]["body"]) >= 65535)
        await _until(lambda: protos and protos[0].streaming is not None
                     and protos[0].streaming.paused)
        (conn,) = _h2_conns(stack)
        ex = conn.streams[sid]
        assert ex.pending_len <= STREAM_BUFFER + 256 * 1024
        assert ex._blocked
        sent = size - protos[0].streaming.left
        assert sent < size  # the node was stopped well before the end

        def drain():
            c.auto_ack = True
            c.c.acknowledge_received_data(len(c.streams[sid]["body"]), sid)
            c.flush()
            c.wait(lambda: c.done(sid))
            return c.streams[sid]

        st = await threads.deferToThread(drain)
        assert st["ended"] and len(st["body"]) == size
        assert stack.in_flight() == 0
    finally:
        c.close()


@h2_test
async def test_reset_mid_stream_aborts_the_node_request(stack, port, cafile):
    server = stack.serve("nA")
    c = await threads.deferToThread(Client, port, cafile)
    try:
        sid = await threads.deferToThread(c.request, "/app/download?bytes=200000000")
        await threads.deferToThread(c.wait, lambda: len(c.streams[sid]["body"]) > 100000)

        def cancel():
            c.c.reset_stream(sid, ErrorCodes.CANCEL)
            c.flush()

        await threads.deferToThread(cancel)
        await _until(lambda: server.lost >= 1)  # the node connection was closed
        await _until(lambda: stack.in_flight() == 0)
        # the connection goes on serving
        st = await threads.deferToThread(c.get, "/app/echo")
        assert st["headers"][b":status"] == b"200"
    finally:
        c.close()


class _Failing(Protocol):
    """A node that sends part of a response and dies."""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"
                                 + b"f" * 1000)
            self.transport.loseConnection()


@h2_test
async def test_node_failing_mid_stream_resets_only_that_stream(stack, port, cafile):
    stack.serve("nA")
    dead = stack.reactor.listenTCP(0, Factory.forProtocol(_Failing), interface="127.0.0.1")
    try:
        stack.register("bad", dead.getHost().port, contexts=("/bad",))
        c = await threads.deferToThread(Client, port, cafile)
        try:
            def run():
                ok = c.request("/app/slow?ms=100")
                bad = c.request("/bad/x")
                c.wait(lambda: c.done(ok) and c.done(bad))
                return c.streams[ok], c.streams[bad]

            ok, bad = await threads.deferToThread(run)
            assert bad["headers"][b":status"] == b"200"
            assert bad["reset"] == ErrorCodes.INTERNAL_ERROR  # truncation is visible
            assert ok["headers"][b":status"] == b"200" and ok["ended"]
            assert bytes(ok["body"]) == b"nA slow"
            assert c.terminated is None
            await _until(lambda: stack.in_flight() == 0)
        finally:
            c.close()
    finally:
        await dead.stopListening()


@h2_test
async def test_http11_still_served_on_the_same_port(stack, port, cafile):
    stack.serve("nA")

    def fetch():
        ctx = pyssl.create_default_context(cafile=cafile)
        ctx.set_alpn_protocols(["http/1.1"])
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"GET /app/echo HTTP/1.1\r\nHost: localhost\r\n"
                          b"Connection: close\r\n\r\n")
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        return s.selected_alpn_protocol(), data
                    data += chunk

    alpn, data = await threads.deferToThread(fetch)
    assert alpn == "http/1.1"
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"X-Forwarded-Proto: https" in data


def _curl(port, cafile, *args):
    cmd = [CURL, "-sS", "--http2", "--max-time", "20", "--cacert", cafile,
           "--resolve", f"localhost:{port}:127.0.0.1", *args]
    out = subprocess.run(cmd, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@h2_test
async def test_curl_http2_default_settings(stack, port, cafile):
    if CURL is None:
        pytest.skip("curl is not installed (scripts/install-test-deps installs it)")
    stack.serve("nA")
    url = f"https://localhost:{port}"
    out = await threads.deferToThread(
        _curl, port, cafile, "-w", "\n%{http_version} %{http_code}", f"{url}/app/echo",
        f"{url}/app/download?bytes=3000000")
    assert out.startswith(b"nA\nGET /app/echo")
    assert out.count(b"\n2 200") == 2
    assert len(out) > 3000000
    body = b"p" * 2000000
    out = await threads.deferToThread(_curl_post, port, cafile, f"{url}/app/upload", body)
    assert out == b"%d" % len(body)


def _curl_post(port, cafile, url, body):
    cmd = [CURL, "-sS", "--http2", "--max-time", "20", "--cacert", cafile,
           "--resolve", f"localhost:{port}:127.0.0.1", "--data-binary", "@-", url]
    out = subprocess.run(cmd, input=body, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest_twisted.ensureDeferred
async def test_listener_stop_sends_goaway_and_open_streams_finish(pki):
    """Graceful shutdown: GOAWAY to HTTP/2 clients; a request in flight still completes."""
    if CURL is None:
        pytest.skip("curl is not installed (scripts/install-test-deps installs it)")
    ca, cafile = pki
    stack = Stack()
    opts = answer_alpn(_server_options(ca, "localhost"), ALPN_PROTOCOLS)
    neg = NegotiatingFactory(stack.factory)
    port = stack.reactor.listenSSL(0, neg, opts, interface="127.0.0.1")
    p = port.getHost().port
    try:
        stack.serve("nA")
        d = threads.deferToThread(_curl, p, cafile, "-w", "\n%{http_version} %{http_code}",
                                  f"https://localhost:{p}/app/slow?ms=1500")
        await _until(lambda: stack.in_flight() == 1)
        (conn,) = _h2_conns(stack)
        await defer.maybeDeferred(port.stopListening)
        assert conn._going_away  # GOAWAY sent, the stream still open
        out = await d
        assert out == b"nA slow\n2 200"
        await _until(lambda: not conn.connected)
    finally:
        await defer.maybeDeferred(port.stopListening)
        await stack.stop()
