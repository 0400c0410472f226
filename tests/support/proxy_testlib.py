"""
In-memory harness for the data plane: a real L{Registry} for the routing table,
the real balancer, a L{ProxyFactory} on a L{MemoryReactorClock}, client and
node connections on L{StringTransport}s driven by hand.
"""

from __future__ import annotations

from typing import Optional

import httptools
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import directlyProvides

from modcluster.cluster.model import BalancerSettings, ContextState, NodeSettings
from modcluster.cluster.registry import Registry
from modcluster.config import ProxyConfig
from modcluster.proxy import ProxyFactory

CLIENT_ADDR = "127.0.0.9"


class NodeConn:
    """One accepted node connection (the node's end, driven by the test)."""

    def __init__(self, proto, transport: StringTransport, port: int) -> None:
        self.proto = proto
        self.transport = transport
        self.port = port

    def received(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def respond(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def close(self, reason=ConnectionDone) -> None:
        self.proto.connectionLost(Failure(reason()))

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    @property
    def aborted(self) -> bool:
        return self.transport.disconnected


class ClientConn:
    """One client connection to the proxy."""

    def __init__(self, proto, transport: StringTransport) -> None:
        self.proto = proto
        self.transport = transport

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def received(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def lose(self) -> None:
        self.proto.connectionLost(Failure(ConnectionLost()))

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting


class Harness:
    def __init__(self, **config) -> None:
        self.reactor = MemoryReactorClock()
        self.registry = Registry(self.reactor)
        self.failures: list[tuple[str, str]] = []
        self.successes: list[str] = []
        self.config = ProxyConfig(**config)
        # registry.snapshot, as the service: the factory follows the
        # registry's table (table_now) instead of calling per request
        self.factory = ProxyFactory(self.reactor, self.config, self.registry.snapshot,
                                    self._failed, self.successes.append)
        self.factory.startFactory()

    def _failed(self, route: str, reason: str) -> None:
        self.failures.append((route, reason))
        self.registry.set_error(route, reason)

    # -- cluster -------------------------------------------------------------

    def node(self, route: str, port: int, *, contexts=("/",), aliases=("localhost",),
             load: int = 100, type: str = "http", host: str = "127.0.0.1",
             balancer: Optional[BalancerSettings] = None, state=ContextState.ENABLED,
             **settings) -> None:
        b = balancer or self.registry.balancers.get("mycluster") or BalancerSettings("mycluster")
        self.registry.config(b, NodeSettings(route=route, host=host, port=port, type=type,
                                             balancer=b.name, **settings),
                             [(list(aliases), list(contexts))])
        command = {ContextState.ENABLED: "ENABLE-APP", ContextState.DISABLED: "DISABLE-APP",
                   ContextState.STOPPED: "STOP-APP"}[state]
        self.registry.app(command, route, list(aliases), list(contexts))
        self.registry.apply_status(route, load, True)

    def nodeEntry(self, route: str):
        return self.registry.table.by_route[route]

    def counters_idle(self) -> bool:
        """Every node's busy count and every context's in-flight count is 0."""
        table = self.registry.table
        for node in table.nodes:
            if node.rt.busy != 0:
                return False
        for records in table.contexts.values():
            for rec in records:
                if rec.rt.in_flight != 0:
                    return False
        return True

    def in_flight(self, path: str = "/") -> int:
        return sum(rec.rt.in_flight for rec in self.registry.table.contexts.get(path, ()))

    # -- connections -------------------------------------------------------------

    def client(self, secure: bool = False, peer: str = CLIENT_ADDR) -> ClientConn:
        t = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8000),
                            peerAddress=IPv4Address("TCP", peer, 40000))
        if secure:
            directlyProvides(t, ISSLTransport)
        p = self.factory.buildProtocol(t.getPeer())
        p.makeConnection(t)
        return ClientConn(p, t)

    def pending(self, port: Optional[int] = None) -> list:
        return [c for c in self.reactor.tcpClients if port is None or c[1] == port]

    def _take(self, port: Optional[int]):
        for i, c in enumerate(self.reactor.tcpClients):
            if port is None or c[1] == port:
                del self.reactor.tcpClients[i]
                return i, c
        raise AssertionError(f"no pending connection to port {port}")

    def accept(self, port: Optional[int] = None) -> NodeConn:
        _, (host, p, factory, timeout, bind) = self._take(port)
        proto = factory.buildProtocol(IPv4Address("TCP", host, p))
        t = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 50000),
                            peerAddress=IPv4Address("TCP", host, p))
        proto.makeConnection(t)
        inner = getattr(proto, "_wrappedProtocol", proto)
        return NodeConn(inner, t, p)

    def refuse(self, port: Optional[int] = None, reason=ConnectionRefusedError) -> None:
        _, (host, p, factory, timeout, bind) = self._take(port)
        connector = next(c for c in self.reactor.connectors
                         if c.getDestination().port == p)
        self.reactor.connectors.remove(connector)
        factory.clientConnectionFailed(connector, Failure(reason()))

    def advance(self, seconds: float, step: float = 1.0) -> None:
        """Advance the clock in steps so that every sweep runs."""
        left = seconds
        while left > 0:
            d = min(step, left)
            self.reactor.advance(d)
            left -= d


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = False
        self.keep_alive = True

    def header(self, name: bytes) -> Optional[bytes]:
        values = self.all(name)
        return values[-1] if values else None

    def all(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


class _Collector:
    def __init__(self) -> None:
        self.messages: list[Response] = []
        self.parser = None

    def on_message_begin(self):
        self.messages.append(Response())

    def on_status(self, s):
        self.messages[-1].reason += s

    def on_header(self, n, v):
        self.messages[-1].headers.append((n, v))

    def on_headers_complete(self):
        self.messages[-1].status = self.parser.get_status_code()

    def on_body(self, b):
        self.messages[-1].body += b

    def on_message_complete(self):
        self.messages[-1].complete = True
        self.messages[-1].keep_alive = self.parser.should_keep_alive()


def parse_responses(data: bytes, eof: bool = False) -> list[Response]:
    """Responses in C{data} (no HEAD responses); C{eof} ends a close-delimited body."""
    c = _Collector()
    c.parser = httptools.HttpResponseParser(c)
    try:
        c.parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass
    if eof and c.messages and not c.messages[-1].complete:
        c.messages[-1].complete = True
    return c.messages


class Request:
    def __init__(self) -> None:
        self.method = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = False

    def header(self, name: bytes) -> Optional[bytes]:
        values = self.all(name)
        return values[-1] if values else None

    def all(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def names(self) -> list[bytes]:
        return [n for n, _ in self.headers]


class _RequestCollector(_Collector):
    def on_message_begin(self):
        self.messages.append(Request())

    def on_url(self, u):
        self.messages[-1].url += u

    def on_headers_complete(self):
        self.messages[-1].method = self.parser.get_method()

    def on_message_complete(self):
        self.messages[-1].complete = True


def parse_requests(data: bytes) -> list[Request]:
    """Requests in C{data} as a node would read them."""
    c = _RequestCollector()
    c.parser = httptools.HttpRequestParser(c)
    try:
        c.parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass
    return c.messages


OK_100 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"
