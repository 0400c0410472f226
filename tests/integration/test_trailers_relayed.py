"""
Trailer sections through the proxy over real sockets on 127.0.0.1: a node
(raw Twisted protocol) answering chunked with trailer fields, read by an
HTTP/1.1 client, a Python h2 client and curl --http2; an h2 client's request
trailers reaching the node as chunked trailers.
"""

from __future__ import annotations

import socket

import pytest
from httptools import HttpRequestParser
from twisted.internet import threads
from twisted.internet.protocol import Factory, Protocol

from tests.integration.test_proxy_http2 import CURL, Client, _curl, h2_test, pki  # noqa: F401


class _TrailingNode(Protocol):
    """
    Answers every request chunked, with trailer fields: C{Grpc-Status: 0},
    C{X-Got: <the request's trailer fields, ';'-joined>} and a C{Set-Cookie}
    (never relayed in trailers).
    """

    def connectionMade(self) -> None:
        self.parser = HttpRequestParser(self)
        self.trailers: list = []
        self.in_body = False

    def dataReceived(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.trailers = []
        self.in_body = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_body:
            self.trailers.append(b"%s=%s" % (name.lower(), value))

    def on_headers_complete(self) -> None:
        self.in_body = True

    def on_message_complete(self) -> None:
        got = b";".join(self.trailers) or b"-"
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n"
            b"Trailer: Grpc-Status, X-Got\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\nGrpc-Status: 0\r\nX-Got: %s\r\n"
            b"Set-Cookie: no=1\r\n\r\n" % got)


def _serve(stack) -> None:
    node = stack.reactor.listenTCP(0, Factory.forProtocol(_TrailingNode),
                                   interface="127.0.0.1")
    stack.servers.append(type("S", (), {"port": node})())  # stopped with the stack
    stack.register("tr", node.getHost().port, contexts=("/tr",))


@h2_test
async def test_trailers_to_http11_client(stack, port, cafile):
    _serve(stack)
    plain = stack.port.getHost().port

    def fetch():
        with socket.create_connection(("127.0.0.1", plain), timeout=20) as s:
            s.sendall(b"GET /tr/x HTTP/1.1\r\nHost: localhost\r\nTE: trailers\r\n"
                      b"Connection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return data
                data += chunk

    data = await threads.deferToThread(fetch)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"\r\n0\r\nGrpc-Status: 0\r\nX-Got: -\r\n\r\n")
    assert b"no=1" not in data
    assert stack.in_flight() == 0


@h2_test
async def test_trailers_both_ways_with_h2_client(stack, port, cafile):
    _serve(stack)
    c = await threads.deferToThread(Client, port, cafile)
    try:
        def run():
            got = c.get("/tr/a", headers=[(b"te", b"trailers")])
            # a gRPC-style upload: body, then trailing HEADERS with END_STREAM
            sid = c.c.get_next_available_stream_id()
            c.streams[sid] = {"headers": None, "body": bytearray(), "ended": False,
                              "reset": None}
            c.c.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"https"),
                                   (b":path", b"/tr/up"), (b":authority", b"localhost"),
                                   (b"te", b"trailers")])
            c.c.send_data(sid, b"abc")
            c.c.send_headers(sid, [(b"x-sum", b"3"), (b"grpc-timeout", b"1S")],
                             end_stream=True)
            c.flush()
            c.wait(lambda: c.done(sid))
            return got, c.streams[sid]

        got, up = await threads.deferToThread(run)
        assert got["headers"][b":status"] == b"200" and bytes(got["body"]) == b"hello world"
        assert got["ended"] and got["trailers"] == [(b"grpc-status", b"0"), (b"x-got", b"-")]
        assert up["trailers"] == [(b"grpc-status", b"0"),
                                  (b"x-got", b"x-sum=3;grpc-timeout=1S")]
        assert c.terminated is None
        assert stack.in_flight() == 0
    finally:
        c.close()


@h2_test
async def test_trailers_shown_by_curl_http2(stack, port, cafile):
    if CURL is None:
        pytest.skip("curl is not installed (scripts/install-test-deps installs it)")
    _serve(stack)
    out = await threads.deferToThread(
        _curl, port, cafile, "-D", "-", f"https://localhost:{port}/tr/c")
    assert out.startswith(b"HTTP/2 200")
    assert out.endswith(b"hello worldgrpc-status: 0\r\nx-got: -\r\n")
