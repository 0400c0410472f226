"""
Trailer sections through the proxy over real sockets on 127.0.0.1: a node
(raw Twisted protocol) answering chunked with trailer fields, read by an
HTTP/1.1 client, a Python h2 client and curl --http2; an h2 client's request
trailers reaching the node as chunked trailers.  The same against a real Tomcat 10
(Servlet 4 setTrailerFields / getTrailerFields, tests/support/webapp/echo/trailers.jsp).
"""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from httptools import HttpRequestParser
from twisted.internet import defer, threads
from twisted.internet.protocol import Factory, Protocol

from modcluster.proxy.alpn import ALPN_PROTOCOLS, NegotiatingFactory
from modcluster.tls import answer_alpn
from tests.integration.test_proxy_http import Stack, _server_options
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


@pytest.fixture(scope="module")
def trailers_tomcat(tomcat_factory):
    """A Tomcat 10 whose /echo/trailers.jsp answers with setTrailerFields and
    reads the request trailers it allows (allowedTrailerHeaders)."""
    inst = tomcat_factory.create("trailers", jvm_route="tr",
                                 http_attributes={"allowedTrailerHeaders": "x-sum"})
    inst.start()
    return inst


def _tomcat_test(fn):
    """Like h2_test, with the Tomcat registered as HTTP node C{tr} for /echo."""

    @pytest.mark.tomcat
    @pytest_twisted.ensureDeferred
    async def run(pki, trailers_tomcat):  # noqa: F811 (the pki fixture)
        ca, cafile = pki
        stack = Stack()
        stack.register("tr", trailers_tomcat.http_port, contexts=("/echo",))
        opts = answer_alpn(_server_options(ca, "localhost"), ALPN_PROTOCOLS)
        port = stack.reactor.listenSSL(0, NegotiatingFactory(stack.factory), opts,
                                       interface="127.0.0.1")
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


@_tomcat_test
async def test_tomcat_trailers_to_http11_and_h2_clients(stack, port, cafile):
    """Tomcat's setTrailerFields through the proxy: chunked trailers to an
    HTTP/1.1 client, a trailing HEADERS frame to an h2 client, and an h2
    client's request trailer reaching Tomcat's getTrailerFields."""
    plain = stack.port.getHost().port

    def http11():
        with socket.create_connection(("127.0.0.1", plain), timeout=20) as s:
            s.sendall(b"GET /echo/trailers.jsp?status=7 HTTP/1.1\r\nHost: localhost\r\n"
                      b"Connection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return data
                data += chunk

    data = await threads.deferToThread(http11)
    assert data.startswith(b"HTTP/1.1 200")
    assert data.endswith(b"\r\n0\r\nX-Echo-Node-Trailer: tr\r\nGrpc-Status: 7\r\n"
                         b"X-Got: -\r\n\r\n")

    c = await threads.deferToThread(Client, port, cafile)
    try:
        def run():
            got = c.get("/echo/trailers.jsp", headers=[(b"te", b"trailers")])
            sid = c.c.get_next_available_stream_id()
            c.streams[sid] = {"headers": None, "body": bytearray(), "ended": False,
                              "reset": None}
            c.c.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"https"),
                                   (b":path", b"/echo/trailers.jsp"),
                                   (b":authority", b"localhost"), (b"te", b"trailers")])
            c.c.send_data(sid, b"abc")
            c.c.send_headers(sid, [(b"x-sum", b"3")], end_stream=True)
            c.flush()
            c.wait(lambda: c.done(sid))
            return got, c.streams[sid]

        got, up = await threads.deferToThread(run)
        assert got["headers"][b":status"] == b"200" and bytes(got["body"]) == b"hello world"
        assert got["trailers"] == [(b"x-echo-node-trailer", b"tr"), (b"grpc-status", b"0"),
                                   (b"x-got", b"-")]
        assert up["trailers"] == [(b"x-echo-node-trailer", b"tr"), (b"grpc-status", b"0"),
                                  (b"x-got", b"x-sum=3")]
    finally:
        c.close()
    assert stack.in_flight() == 0
