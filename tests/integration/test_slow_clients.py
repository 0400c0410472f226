"""
Slow clients over real sockets on 127.0.0.1 (issue 13 §3): the whole balancer
(tap.build) with short read deadlines, a node (an in-process twisted.web
server), clients that trickle their request heads one byte a second on the
proxy and on the management listener.  They are cut at the deadline with a
408 while normal clients keep being served.  Every wait is bounded.
"""

from __future__ import annotations

import inspect
import resource
import sys
from pathlib import Path

import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import capturedLogs
from twisted.web.resource import Resource
from twisted.web.server import Site

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from modcluster.cluster.model import BalancerSettings, NodeSettings  # noqa: E402
from modcluster.config import parse_config  # noqa: E402
from modcluster.tap import build  # noqa: E402
from tests.support.tomcat import free_loopback_ports  # noqa: E402

SLOW_HEAD = b"GET /app/slow HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n"


def _reactor():
    from twisted.internet import reactor

    return reactor


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"


class Trickler(Protocol):
    """Sends C{data} one byte per L{tick}; remembers what came back and when it ended."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sent = 0
        self.received = b""
        self.done: defer.Deferred = defer.Deferred()
        self.open = False

    def connectionMade(self) -> None:
        self.open = True

    def tick(self) -> None:
        if self.open and self.sent < len(self.data):
            self.transport.write(self.data[self.sent:self.sent + 1])
            self.sent += 1

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.open = False
        self.done.callback(None)

    def status(self) -> int:
        line = self.received.split(b"\r\n", 1)[0].split(b" ")
        return int(line[1]) if len(line) > 1 and line[1].isdigit() else 0


class OneRequest(Protocol):
    """Sends one whole request (Connection: close) and reads the answer to the end."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = b""
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.done.callback(self.received)


class Balancer:
    def __init__(self, header_timeout: float, proxy_tls: str = "") -> None:
        self.reactor = _reactor()
        self.proxy_port, self.manager_port = free_loopback_ports(2)
        kind = f"ssl:{self.proxy_port}:privateKey={proxy_tls}" if proxy_tls else \
            f"tcp:{self.proxy_port}"
        config = parse_config(f"""
[manager]
listen = ["tcp:{self.manager_port}:interface=127.0.0.1"]
request_header_timeout = {header_timeout}
request_header_timeout_max = 0
[proxy]
listen = ["{kind}:interface=127.0.0.1"]
request_header_timeout = {header_timeout}
request_header_timeout_max = 0
fast_event_loop = false
""")
        self.service = build(config, self.reactor)
        self.node = self.reactor.listenTCP(0, Site(Hello()), interface="127.0.0.1")
        reg = self.service.registry
        reg.config(BalancerSettings("mycluster"),
                   NodeSettings(route="n1", host="127.0.0.1",
                                port=self.node.getHost().port, type="http"),
                   [(["localhost"], ["/app"])])
        reg.app("ENABLE-APP", "n1", ["localhost"], ["/app"])
        reg.apply_status("n1", 100, True)
        self.service.startService()
        self.proxy_factory = next(s.factory for s in self.service if hasattr(s, "factory")
                                  and hasattr(s.factory, "read_timeouts")
                                  and hasattr(s.factory, "request_heads"))

    async def connect(self, port: int, proto: Protocol) -> Protocol:
        return await connectProtocol(TCP4ClientEndpoint(self.reactor, "127.0.0.1", port),
                                     proto)

    async def request(self, port: int, request: bytes) -> bytes:
        p = await self.connect(port, OneRequest(request))
        return await p.done

    def timeouts(self, listener: str) -> dict:
        from prometheus_client.parser import text_string_to_metric_families
        from prometheus_client import generate_latest

        text = generate_latest(self.service.metrics.collector_registry).decode()
        return {s.labels["reason"]: s.value for f in text_string_to_metric_families(text)
                if f.name == "modcluster_client_timeouts" for s in f.samples
                if s.labels["listener"] == listener}

    async def stop(self) -> None:
        await self.service.stopService()
        await self.node.stopListening()
        await task.deferLater(self.reactor, 0.05, lambda: None)


def bounded(seconds: float):
    """Run an async test with a L{Balancer}-free deadline of C{seconds}."""

    def wrap(fn):
        @pytest_twisted.ensureDeferred
        async def run(**kwargs):
            d = defer.ensureDeferred(fn(**kwargs))
            d.addTimeout(seconds, _reactor())
            await d

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        run.__signature__ = inspect.signature(fn)
        return run

    return wrap


def status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


@bounded(30)
async def test_one_byte_a_second_client_is_cut_at_the_head_deadline():
    """On both listeners: 408 after the 3 s head deadline (never before), then close."""
    b = Balancer(header_timeout=3)
    loop = None
    try:
        clients = [
            await b.connect(b.proxy_port, Trickler(SLOW_HEAD)),
            await b.connect(b.manager_port, Trickler(
                b"INFO / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n")),
        ]
        loop = task.LoopingCall(lambda: [c.tick() for c in clients])
        loop.clock = b.reactor
        loop.start(1.0)
        await defer.gatherResults([c.done for c in clients])
        for c in clients:
            assert c.status() == 408
            assert b"Connection: close" in c.received or b"connection: close" in c.received
            assert c.sent >= 3  # one byte a second: never cut before the deadline
            assert c.sent < len(c.data)
        assert b.timeouts("proxy")["header"] == 1
        assert b.timeouts("manager")["header"] == 1
        # and the listeners still serve
        assert status(await b.request(b.proxy_port, b"GET /app/x HTTP/1.1\r\nHost: localhost"
                                                    b"\r\nConnection: close\r\n\r\n")) == 200
    finally:
        if loop is not None and loop.running:
            loop.stop()
        await b.stop()


@bounded(90)
async def test_500_trickling_connections_while_normal_clients_are_served():
    """
    500 connections trickle heads into the proxy and 500 into the management
    listener; meanwhile normal requests on both are answered; then every
    trickling connection is cut by the head deadline (408) by itself.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096
    if soft < wanted and (hard == resource.RLIM_INFINITY or hard >= wanted):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    b = Balancer(header_timeout=10)
    loop = None
    slow = []
    try:
        with capturedLogs() as events:
            for port in (b.proxy_port, b.manager_port):
                slow += await defer.gatherResults([
                    defer.ensureDeferred(b.connect(port, Trickler(SLOW_HEAD)))
                    for _ in range(500)])
            loop = task.LoopingCall(lambda: [c.tick() for c in slow])
            loop.clock = b.reactor
            loop.start(1.0)
            open_while_served = []
            for i in range(40):
                proxied = await b.request(
                    b.proxy_port, b"GET /app/%d HTTP/1.1\r\nHost: localhost\r\n"
                                  b"Connection: close\r\n\r\n" % i)
                managed = await b.request(
                    b.manager_port, b"INFO / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert status(proxied) == 200 and proxied.endswith(b"hello")
                assert status(managed) == 200
                open_while_served.append(sum(c.open for c in slow))
            assert open_while_served == [1000] * 40
            await defer.gatherResults([c.done for c in slow])
        assert [c.status() for c in slow] == [408] * 1000
        assert all(c.sent < len(c.data) for c in slow)
        assert b.timeouts("proxy")["header"] == 500
        assert b.timeouts("manager")["header"] == 500
        lines = [e for e in events if "cut" in e.get("log_format", "")]
        assert 2 <= len(lines) <= 10  # not one per client
    finally:
        if loop is not None and loop.running:
            loop.stop()
        for c in slow:
            if c.open:
                c.transport.abortConnection()
        await b.stop()


@bounded(30)
async def test_tls_handshake_that_never_ends_is_cut_at_the_head_deadline(tmp_path):
    """On an ssl: proxy listener the head deadline runs from the accept, so a
    client that starts a TLS handshake and never finishes it is closed too."""
    import trustme

    pem = tmp_path / "server.pem"
    trustme.CA().issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(pem))
    b = Balancer(header_timeout=2, proxy_tls=str(pem))
    loop = None
    try:
        # the first bytes of a TLS ClientHello record, one a second
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"r" * 200
        slow = await b.connect(b.proxy_port, Trickler(hello))
        loop = task.LoopingCall(slow.tick)
        loop.clock = b.reactor
        loop.start(1.0)
        await slow.done
        assert 2 <= slow.sent < len(hello)
        assert b.timeouts("proxy")["header"] == 1
    finally:
        if loop is not None and loop.running:
            loop.stop()
        await b.stop()
