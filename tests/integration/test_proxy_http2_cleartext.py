"""
HTTP/2 with prior knowledge (h2c) on a plain tcp: listener over real sockets
on 127.0.0.1 (C{[proxy] h2c}): curl --http2-prior-knowledge, h2load
(nghttp2-client, installed by scripts/install-test-deps; skipped without it)
and a blocking Python h2 client on a raw socket (in a thread), with HTTP/1.1
on the same port, through Twisted's accept and through the proxy's own accept
loop, and in worker processes.  Every wait is bounded.
"""

from __future__ import annotations

import re
import shutil
import socket
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
)
from twisted.internet import defer, threads

from modcluster.proxy import accept
from modcluster.proxy.client import H2_PREFACE
from modcluster.proxy.h2 import H2Protocol

from tests.integration.test_proxy_http import Stack

CURL = shutil.which("curl")
H2LOAD = shutil.which("h2load")


class Client:
    """A blocking HTTP/2 client with prior knowledge on a plain socket (run it in a thread)."""

    def __init__(self, port: int, byte_by_byte: bool = False) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.c = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.c.initiate_connection()
        self.port = port
        self.streams: dict[int, dict] = {}
        self.terminated = None
        opening = self.c.data_to_send()
        assert opening.startswith(H2_PREFACE)
        if byte_by_byte:
            for i in range(len(opening)):
                self.s.sendall(opening[i:i + 1])
        else:
            self.s.sendall(opening)

    def flush(self) -> None:
        data = self.c.data_to_send()
        if data:
            self.s.sendall(data)

    def request(self, path: str, headers=()) -> int:
        sid = self.c.get_next_available_stream_id()
        self.streams[sid] = {"headers": None, "body": bytearray(), "ended": False}
        self.c.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                                  (b":path", path.encode()),
                                  (b":authority", b"localhost:%d" % self.port), *headers],
                            end_stream=True)
        self.flush()
        return sid

    def read_once(self) -> None:
        data = self.s.recv(65536)
        if not data:
            raise EOFError("connection closed")
        for ev in self.c.receive_data(data):
            if isinstance(ev, ResponseReceived):
                self.streams[ev.stream_id]["headers"] = dict(ev.headers)
            elif isinstance(ev, DataReceived):
                self.streams[ev.stream_id]["body"] += ev.data
                self.c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, StreamEnded):
                self.streams[ev.stream_id]["ended"] = True
            elif isinstance(ev, ConnectionTerminated):
                self.terminated = ev
        self.flush()

    def get(self, path: str) -> dict:
        sid = self.request(path)
        while not self.streams[sid]["ended"]:
            self.read_once()
        return self.streams[sid]

    def close(self) -> None:
        self.s.close()


def _raw(port: int, data: bytes) -> bytes:
    """Send C{data} on a new connection; everything until the server closes."""
    with socket.create_connection(("127.0.0.1", port), 20) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def h2c_test(accept_loop: bool = False):
    def wrap(fn):
        @pytest_twisted.ensureDeferred
        async def run():
            stack = Stack(h2c=True)
            if accept_loop:
                assert accept.install(stack.port)
            try:
                stack.serve("nA")
                d = defer.ensureDeferred(fn(stack, stack.port.getHost().port))
                d.addTimeout(60, stack.reactor)
                await d
            finally:
                await stack.stop()

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        return run

    return wrap


def _curl(*args) -> bytes:
    out = subprocess.run([CURL, "-sS", "--max-time", "20", *args], capture_output=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


async def _curl_prior_knowledge_and_http11(stack, port) -> None:
    if CURL is None:
        pytest.skip("curl is not installed (scripts/install-test-deps installs it)")
    url = f"http://127.0.0.1:{port}"
    # one URL per curl: Debian 12's curl 7.88.1 fails to reuse a prior-knowledge
    # connection ("Error in the HTTP2 framing layer" before sending anything;
    # curl/curl#10634, fixed in 8.0); h2load and the Python client reuse theirs
    out = await threads.deferToThread(
        _curl, "--http2-prior-knowledge", "-w", "\n%{http_version} %{http_code}",
        f"{url}/app/echo?a=1")
    assert out.startswith(b"nA\nGET /app/echo?a=1\n")
    assert b"X-Forwarded-Proto: http\n" in out
    assert out.endswith(b"\n2 200")
    out = await threads.deferToThread(
        _curl, "--http2-prior-knowledge", "-w", "\n%{http_version} %{http_code}",
        f"{url}/app/download?bytes=3000000")
    assert out.endswith(b"\n2 200") and len(out) > 3000000
    # HTTP/1.1 on the same port, as before
    out = await threads.deferToThread(_curl, "--http1.1", "-w", "\n%{http_version} %{http_code}",
                                      f"{url}/app/echo", f"{url}/app/echo")
    assert out.count(b"\n1.1 200") == 2


@h2c_test()
async def test_curl_http2_prior_knowledge(stack, port):
    await _curl_prior_knowledge_and_http11(stack, port)


@h2c_test(accept_loop=True)
async def test_curl_http2_prior_knowledge_through_the_accept_loop(stack, port):
    await _curl_prior_knowledge_and_http11(stack, port)


@h2c_test(accept_loop=True)
async def test_h2load_prior_knowledge(stack, port):
    if H2LOAD is None:
        pytest.skip("h2load is not installed (scripts/install-test-deps installs "
                    "nghttp2-client)")

    def run() -> str:
        out = subprocess.run([H2LOAD, "-n", "400", "-c", "4", "-m", "10",
                              f"http://127.0.0.1:{port}/app/echo"],
                             capture_output=True, timeout=60, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout

    out = await threads.deferToThread(run)
    assert re.search(r"requests: 400 total, 400 started, 400 done, 400 succeeded", out), out
    assert re.search(r"status codes: 400 2xx", out), out
    assert "Application protocol: h2c" in out, out
    assert stack.in_flight() == 0


@h2c_test()
async def test_python_h2_client_preface_byte_by_byte(stack, port):
    stack.serve("nB")

    def run():
        c = Client(port, byte_by_byte=True)
        try:
            sids = [c.request(f"/app/echo?i={i}") for i in range(20)]
            while not all(c.streams[s]["ended"] for s in sids):
                c.read_once()
            return [c.streams[s] for s in sids]
        finally:
            c.close()

    results = await threads.deferToThread(run)
    routes = set()
    for st in results:
        assert st["headers"][b":status"] == b"200"
        lines = bytes(st["body"]).split(b"\n")
        routes.add(lines[0])
        assert b"X-Forwarded-Proto: http" in lines
    assert routes == {b"nA", b"nB"}
    assert stack.in_flight() == 0


@h2c_test(accept_loop=True)
async def test_h2c_connections_are_http2_protocols_and_drain_with_goaway(stack, port):
    c = await threads.deferToThread(Client, port)
    try:
        st = await threads.deferToThread(c.get, "/app/echo")
        assert st["headers"][b":status"] == b"200"
        [conn] = [p for p in stack.factory._clients if isinstance(p, H2Protocol)]
        assert conn.client.secure is False
        assert stack.factory.drain() == 0  # idle: GOAWAY and closed
        def read_to_end():
            try:
                while True:
                    c.read_once()
            except (EOFError, OSError):
                pass

        await threads.deferToThread(read_to_end)
        assert c.terminated is not None and c.terminated.error_code == ErrorCodes.NO_ERROR
    finally:
        c.close()


@h2c_test()
async def test_wrong_preface_and_pipelined_http11(stack, port):
    out = await threads.deferToThread(_raw, port, b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")
    get = b"GET /app/echo HTTP/1.1\r\nHost: localhost\r\n\r\n"
    out = await threads.deferToThread(
        _raw, port, get + get + b"GET /app/echo HTTP/1.1\r\nHost: localhost\r\n"
                                b"Connection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 200 OK\r\n") == 3
    # the preface after a request is no HTTP/2
    out = await threads.deferToThread(_raw, port, get + H2_PREFACE)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"HTTP/1.1 400 " in out


@pytest_twisted.ensureDeferred
async def test_h2c_in_worker_processes():
    """Worker processes serve h2c on their shared sockets, counted in the client metrics."""
    if CURL is None:
        pytest.skip("curl is not installed (scripts/install-test-deps installs it)")
    from tests.integration.test_worker_processes import Cluster, until

    c = Cluster(h2c="true")
    await c.start()
    try:
        await c.node("nA")
        url = f"http://127.0.0.1:{c.pport}/app/echo"
        for _ in range(20):
            out = await threads.deferToThread(
                _curl, "--http2-prior-knowledge", "-w", "\n%{http_version} %{http_code}",
                url)  # (one URL per curl: see _curl_prior_knowledge_and_http11)
            assert out.startswith(b"nA\nGET /app/echo\n")
            assert out.endswith(b"\n2 200")
        await until(lambda: sum(w["requests"] for w in c.pool.status()) == 20,
                    what="requests counted")
        assert all(w["requests"] for w in c.pool.status())  # both workers served some
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_h2c_on_a_unix_listener(tmp_path):
    """A unix: listener is a plain one: h2c there too (curl --unix-socket)."""
    if CURL is None:
        pytest.skip("curl is not installed (scripts/install-test-deps installs it)")
    stack = Stack(h2c=True)
    path = str(tmp_path / "proxy.sock")
    port = stack.reactor.listenUNIX(path, stack.factory)
    try:
        stack.serve("nA")
        out = await threads.deferToThread(
            _curl, "--unix-socket", path, "--http2-prior-knowledge", "-w",
            "\n%{http_version} %{http_code}", "http://localhost/app/echo")
        assert out.startswith(b"nA\nGET /app/echo\n")
        assert b"X-Forwarded-Proto: http\n" in out
        assert out.endswith(b"\n2 200")
    finally:
        await port.stopListening()
        await stack.stop()
