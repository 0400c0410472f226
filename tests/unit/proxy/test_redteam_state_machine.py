"""
A seeded random walk through the HTTP/1.1 front, the HTTP and AJP forwarders
and their sweeps, in memory: clients send valid, malformed, pipelined, Upgrade,
100-continue, chunked and oversized requests cut at random points, end their
sending, vanish or stop reading; nodes answer whole, in pieces, with interim
heads, 101, close-delimited, short or garbage answers, or close; the clock
jumps through the sweeps.  Whatever happens: nothing is logged as an error,
every in-flight counter goes back to zero, no node connection keeps an
exchange, and what an HTTP node received is well-formed HTTP/1.1.

Deterministic (one seed per case).  It found the misclassified errors after
an Upgrade request (test_redteam_upgrade_then_more.py).
"""

from __future__ import annotations

import random

import httptools
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from modcluster.ajp.container import (
    encode_end_response,
    encode_get_body_chunk,
    encode_send_body_chunk,
    encode_send_headers,
)
from modcluster.ajp.packets import CPONG_PACKET
from modcluster.proxy import ProxyFactory
from modcluster.proxy.ajp import AJPForwarder
from tests.support.proxy_testlib import CLIENT_ADDR, ClientConn, Harness

H = b"Host: localhost\r\n"
REQUESTS = [
    b"GET /app/a HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /app/a HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n",
    b"HEAD /app/h HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /app/a HTTP/1.0\r\n" + H + b"\r\n",
    b"GET /app/a HTTP/1.0\r\n" + H + b"Connection: keep-alive\r\n\r\n",
    b"POST /app/p HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello",
    b"POST /app/p HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
    b"POST /app/e HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nExpect: 100-continue\r\n\r\n",
    b"abc",
    b"POST /app/c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /app/c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
    b"X-T: 1\r\n\r\n",
    b"POST /app/big HTTP/1.1\r\n" + H + b"Content-Length: 300\r\n\r\n" + b"b" * 300,
    b"GET /app/ws HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"POST /app/ws HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Content-Length: 4\r\n\r\nbody",
    b"GET http://localhost/app/abs HTTP/1.1\r\n" + H + b"\r\n",
    b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /nope HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /app/a HTTP/1.1\r\n\r\n",
    b"BAD\r\n\r\n",
    b"GET /app/../x HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /app/a HTTP/1.1\r\n" + H + b"Cookie: JSESSIONID=x.n1\r\n\r\n",
]
HTTP_ANSWERS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: 1\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 103 Early\r\nLink: x\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\nclose-delimited",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nframes",
    b"HTTP/1.1 500 Oops\r\nContent-Length: 3\r\n\r\nbad",
    b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
]
_HEAD = encode_send_headers(200, b"OK", [(b"Content-Length", b"2")])
AJP_ANSWERS = [
    _HEAD + encode_send_body_chunk(b"ok") + encode_end_response(True),
    _HEAD + encode_send_body_chunk(b"ok") + encode_end_response(False),
    encode_send_body_chunk(b"") + _HEAD + encode_send_body_chunk(b"ok") + encode_end_response(True),
    encode_get_body_chunk(8186),
    encode_get_body_chunk(8186) + _HEAD + encode_end_response(True),
    CPONG_PACKET,
    CPONG_PACKET + CPONG_PACKET,
    encode_send_headers(304, b"NM") + encode_end_response(True),
    encode_send_headers(101, b"Switching", [(b"Upgrade", b"websocket")]) + encode_end_response(True),
    _HEAD + _HEAD + encode_end_response(True),
    encode_end_response(True),
    b"AB\x00\x05\x99garbage",
    b"XY\x00\x02\x05\x01",
    _HEAD + encode_send_body_chunk(b"ok") + encode_end_response(True) + CPONG_PACKET,
]


class _Transport(StringTransport):
    """A client transport that, like a real one, ignores pause and resume
    after loseConnection (StringTransport raises)."""

    def _checkState(self) -> None:
        pass


def _client(h: Harness) -> ClientConn:
    t = _Transport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8000),
                   peerAddress=IPv4Address("TCP", CLIENT_ADDR, 40000))
    p = h.factory.buildProtocol(t.getPeer())
    p.makeConnection(t)
    return ClientConn(p, t)


def _send_cut(rnd: random.Random, send, data: bytes) -> None:
    """C{data} in random pieces, maybe not all of it."""
    while data:
        cut = rnd.randint(1, len(data))
        send(data[:cut])
        data = data[cut:]
        if rnd.random() < 0.15:
            break


def _walk(seed: int, kind: str, steps: int = 120) -> None:
    rnd = random.Random(seed)
    config: dict = {"timeout": 10, "client_timeout": 15}
    if rnd.random() < 0.5:
        config["enable_ws_tunnel"] = True
    if rnd.random() < 0.3:
        config["max_request_body"] = 50
    if rnd.random() < 0.3:
        config["request_header_timeout"] = 5
    h = Harness(**config)
    answers = HTTP_ANSWERS
    if kind == "ajp":
        answers = AJP_ANSWERS
        h.factory = ProxyFactory(h.reactor, h.config, h.registry.snapshot, h._failed,
                                 h.successes.append,
                                 forwarders={"ajp": AJPForwarder(h.reactor, h.config)})
        h.factory.startFactory()
    h.node("n1", 8081, contexts=("/app",), type=kind)
    if rnd.random() < 0.5:
        h.node("n2", 8082, contexts=("/app",), type=kind)
    clients = [_client(h)]
    nodes: list = []
    received: dict = {}
    for _ in range(steps):
        a = rnd.random()
        live = [c for c in clients if not c.closed and c.proto.connected]
        if a < 0.25 and live:
            data = b"".join(rnd.choice(REQUESTS) for _ in range(rnd.choice([1, 1, 1, 2, 3])))
            _send_cut(rnd, rnd.choice(live).send, data)
        elif a < 0.30 and live:
            rnd.choice(live).proto.readConnectionLost()  # the client's FIN
        elif a < 0.33 and live:
            rnd.choice(live).lose()
        elif a < 0.36:
            clients.append(_client(h))
        elif a < 0.50 and h.pending():
            if rnd.random() < 0.85:
                nodes.append(h.accept())
            else:
                h.refuse()
        elif a < 0.75 and nodes:
            n = rnd.choice(nodes)
            if not (n.aborted or n.closed):
                received.setdefault(id(n), [n, b""])[1] += n.received()
                _send_cut(rnd, n.respond, rnd.choice(answers))
        elif a < 0.80 and nodes:
            n = rnd.choice(nodes)
            if not n.aborted:
                n.close(rnd.choice([ConnectionDone, ConnectionLost]))
        elif a < 0.85 and live:
            c = rnd.choice(live)
            if rnd.random() < 0.5:
                c.proto.pauseProducing()  # the client stops reading
            else:
                c.proto.resumeProducing()
        else:
            h.advance(rnd.choice([0.5, 1, 2, 5, 11, 20]))
    for c in clients:
        if c.proto.connected:
            c.lose()
    h.advance(100)
    fw = h.factory.forwarders[kind]
    for pool in list(fw._pools.values()) + fw._draining:
        assert all(conn.ex is None for conn in pool.conns)
    assert h.counters_idle()
    if kind == "http":
        for n, data in received.values():
            data += n.received()
            if b"Upgrade: websocket" in data:
                continue  # a tunnel's bytes follow its request
            parser = httptools.HttpRequestParser(object())
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                pass


@pytest.mark.parametrize("kind,seed", [("http", s) for s in range(80)]
                         + [("ajp", s) for s in range(40)])
def test_random_walk(kind, seed):
    errors: list = []

    def observe(event) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            errors.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        _walk(seed, kind)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert not errors, [(e.get("log_format"), e.get("log_failure")) for e in errors][:3]
