"""
C{Connection: close} answers over real sockets on 127.0.0.1 (send_last,
modcluster/proxy/_transport.py: the answer sent with MSG_MORE and then the
FIN by shutdown): whatever the client does, it gets the whole answer and
then the end of the stream, without a held-back (corked) segment.
"""

from __future__ import annotations

import socket
import time

import pytest_twisted
from twisted.internet import task, threads

from modcluster.proxy import accept
from tests.integration.test_proxy_http import Stack


def _exchange(port: int, request: bytes, *, wait: float = 0.0, half_close: bool = False,
              timeout: float = 10) -> tuple[bytes, float, str]:
    """
    Send C{request}; (optionally wait before reading); read until the end of
    the stream.  Returns (bytes, seconds from the first read to the end, how
    it ended: "eof" or "reset").
    """
    with socket.socket() as c:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.settimeout(timeout)
        c.connect(("127.0.0.1", port))
        c.sendall(request)
        if half_close:
            c.shutdown(socket.SHUT_WR)
        if wait:
            time.sleep(wait)
        data = b""
        start = time.monotonic()
        while True:
            try:
                chunk = c.recv(65536)
            except ConnectionResetError:
                return data, time.monotonic() - start, "reset"
            if not chunk:
                return data, time.monotonic() - start, "eof"
            data += chunk


def _split(response: bytes) -> tuple[bytes, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return head, body


def _length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    raise AssertionError(head)


async def _stack(**config) -> Stack:
    stack = Stack(**config)
    assert accept.install(stack.port)
    stack.serve("nA")
    return stack


def _close_get(path: str, extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n%s\r\n" % (
        path.encode(), extra)


@pytest_twisted.ensureDeferred
async def test_large_answers_to_a_slow_reader_end_with_the_fin():
    stack = await _stack()
    try:
        port = stack.port.getHost().port
        for n in [100, 3_000_000] + list(range(20_000, 400_000, 37_919)):
            data, took, how = await threads.deferToThread(
                _exchange, port, _close_get(f"/app/download?bytes={n}"), wait=0.05)
            head, body = _split(data)
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert _length(head) == n == len(body), (n, len(body))
            assert how == "eof"
            assert took < 5
        await task.deferLater(stack.reactor, 0.1, lambda: None)
        assert not stack.factory._clients
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_small_close_answers_are_not_held_back():
    """No answer waits for the 200 ms of a held-back (MSG_MORE) segment."""
    stack = await _stack()
    try:
        port = stack.port.getHost().port
        times = []
        for _ in range(20):
            data, took, how = await threads.deferToThread(
                _exchange, port, _close_get("/app/echo"))
            assert how == "eof" and data.startswith(b"HTTP/1.1 200 ")
            times.append(took)
        assert sorted(times)[len(times) // 2] < 0.15, times
    finally:
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_close_variants():
    stack = await _stack(max_header_size=2048)
    try:
        port = stack.port.getHost().port

        async def run(request: bytes, **kw) -> tuple[bytes, str]:
            data, took, how = await threads.deferToThread(_exchange, port, request, **kw)
            assert took < 2, (request, took)
            return data, how

        # HTTP/1.0 without keep-alive
        data, how = await run(b"GET /app/echo HTTP/1.0\r\nHost: localhost\r\n\r\n")
        head, body = _split(data)
        assert head.startswith(b"HTTP/1.") and _length(head) == len(body) and how == "eof"
        # HEAD on a close connection
        data, how = await run(b"HEAD /app/echo HTTP/1.1\r\nHost: localhost\r\n"
                              b"Connection: close\r\n\r\n")
        head, body = _split(data)
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"" and how == "eof", data
        # a client that half-closed after its request (readConnectionLost:
        # answered, then closed; test_half_closed_client_gets_its_answers)
        data, how = await run(_close_get("/app/echo"), half_close=True)
        head, body = _split(data)
        assert head.startswith(b"HTTP/1.1 200 ") and _length(head) == len(body)
        # the proxy's own answers
        for request, status in [
                (b"GARBAGE\r\n\r\n", b"400"),
                (_close_get("/app/echo", b"X-Big: " + b"a" * 4000 + b"\r\n"), b"431"),
                (_close_get("/nowhere"), b"404"),
        ]:
            data, how = await run(request)
            head, body = _split(data)
            assert head.startswith(b"HTTP/1.1 " + status), (status, data[:200])
            assert _length(head) == len(body), data
        # pipelined: the close request first, another after it
        data, how = await run(_close_get("/app/echo?first") + _close_get("/app/echo?second"))
        head, body = _split(data)
        assert head.startswith(b"HTTP/1.1 200 ") and _length(head) == len(body), data
        assert b"first" in body and b"second" not in data
        # a close request, then bytes nobody reads
        data, how = await run(_close_get("/app/echo?extra") + b"x" * 100)
        head, body = _split(data)
        assert head.startswith(b"HTTP/1.1 200 ") and _length(head) == len(body), data
        # a keep-alive request, then the close one, in one send
        data, how = await run(b"GET /app/echo?one HTTP/1.1\r\nHost: localhost\r\n\r\n"
                              + _close_get("/app/echo?two"))
        assert data.count(b"HTTP/1.1 200 ") == 2 and how == "eof", data
        # the node gone: 502/503 on a close connection
        free = socket.socket()
        free.bind(("127.0.0.1", 0))
        dead = free.getsockname()[1]
        free.close()  # nobody listens there
        stack.register("nDown", dead, contexts=("/down",))
        data, how = await run(_close_get("/down/echo"))
        head, body = _split(data)
        assert head[:12] in (b"HTTP/1.1 502", b"HTTP/1.1 503"), data
        assert _length(head) == len(body) and how == "eof"
        await task.deferLater(stack.reactor, 0.1, lambda: None)
        assert not stack.factory._clients
    finally:
        await stack.stop()


def _half_closed(port: int, request: bytes, *, before: float) -> tuple[bytes, str]:
    """
    Connect, wait C{before} seconds (the accept loop's first read then finds
    nothing: the connection is registered for reading), send C{request}, shut
    the sending side (FIN), read the answer to the end of the stream.
    """
    with socket.socket() as c:
        c.settimeout(10)
        c.connect(("127.0.0.1", port))
        time.sleep(before)
        c.sendall(request)
        c.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            try:
                chunk = c.recv(65536)
            except ConnectionResetError:
                return data, "reset"
            if not chunk:
                return data, "eof"
            data += chunk


@pytest_twisted.ensureDeferred
async def test_half_closed_client_gets_its_answers():
    """
    A client that shuts its sending side right after its request(s) (FIN),
    read by a connection registered for reading (the request came after the
    accept loop's first read), gets every answer, then the end of the stream,
    as from httpd and HAProxy: the end of stream after complete requests is
    not a vanished client.  The sweep runs as usual meanwhile (a 300 ms
    node).  A partial request followed by the FIN gets no answer.
    """
    stack = await _stack()
    try:
        port = stack.port.getHost().port
        keep = b"GET /app/slow?ms=300 HTTP/1.1\r\nHost: localhost\r\n\r\n"
        for request, answers in [
                (keep, 1),  # keep-alive request: answered, then closed
                (_close_get("/app/slow?ms=300"), 1),
                (keep + b"GET /app/echo HTTP/1.1\r\nHost: localhost\r\n\r\n", 2),  # pipelined
                (b"GET /app/echo HTTP/1.1\r\nHost: localhost\r\n\r\n", 1),  # a remembered head
                (b"GET /app/echo HTTP/1.1\r\nHost: localhost\r\n\r\n", 1),
        ]:
            data, how = await threads.deferToThread(_half_closed, port, request, before=0.1)
            assert data.count(b"HTTP/1.1 200 ") == answers, (request, data)
            assert how == "eof", (request, data)
        data, how = await threads.deferToThread(
            _half_closed, port, b"GET /app/echo HTTP/1.1\r\nHost: loc", before=0.1)
        assert data == b""
        await task.deferLater(stack.reactor, 0.1, lambda: None)
        assert not stack.factory._clients
    finally:
        await stack.stop()
