"""
Resilience over real sockets on 127.0.0.1 (issue 13 §2, issue 17): plain HTTP
nodes in this process behind a real ProxyFactory, Registry and Maintenance
(with the real NodeProber).  No timing assertions: shares are counted over
consecutive requests, recovery is awaited with a bound.
"""

from __future__ import annotations

from collections import Counter

import httptools
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.protocol import Factory, Protocol
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from modcluster.services.maintenance import Maintenance
from modcluster.cluster.model import BalancerSettings, NodeSettings
from modcluster.cluster.registry import Registry
from modcluster.config import ProxyConfig
from modcluster.health import NodeProber
from modcluster.proxy import ProxyFactory


def _reactor():
    from twisted.internet import reactor

    return reactor


class Node(Protocol):
    """Answers C{<route> <path>}; with non-HTTP bytes when the server's
    C{garbage} is C{True} or the path ends with its C{garbage} text;
    C{…/slow} after 100 ms; OPTIONS * like any request."""

    def connectionMade(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def dataReceived(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.loseConnection()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        server = self.factory
        url, self.url = self.url, b""
        server.requests += 1
        g = server.garbage
        if g is True or (g and url.endswith(g)):
            self.transport.write(b"\x00\x01 not HTTP at all\r\n\r\n")
            return
        body = server.route.encode() + b" " + url
        answer = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        if url.endswith(b"/slow"):
            server.in_flight += 1
            server.peak = max(server.peak, server.in_flight)

            def later():
                server.in_flight -= 1
                if not self.transport.disconnecting:
                    self.transport.write(answer)

            _reactor().callLater(0.1, later)
            return
        self.transport.write(answer)


class NodeServer(Factory):
    protocol = Node

    def __init__(self, route: str) -> None:
        self.route = route
        self.requests = 0
        self.garbage: "bool | bytes" = False
        self.in_flight = 0
        self.peak = 0


class Cluster:
    """Registry + Maintenance (recovery probes) + ProxyFactory on 127.0.0.1."""

    def __init__(self, recovery_interval: float = 0.5, **config) -> None:
        self.reactor = _reactor()
        self.registry = Registry(self.reactor)
        self.config = ProxyConfig(**config)
        self.factory = ProxyFactory(self.reactor, self.config, lambda: self.registry.table,
                                    self.registry.set_error,
                                    lambda r: self.registry.clear_error(r, "answered"),
                                    on_node_ejected=self.registry.node_ejected)
        self.port = self.reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.maintenance = Maintenance(self.registry, NodeProber(self.reactor, self.config),
                                       self.reactor, interval=0.25,
                                       recovery_interval=recovery_interval)
        self.maintenance.startService()
        self.listening: dict = {}
        self.pool = HTTPConnectionPool(self.reactor, persistent=True)
        self.pool.retryAutomatically = False
        self.pool.maxPersistentPerHost = 16
        self.agent = Agent(self.reactor, pool=self.pool)

    def serve(self, route: str, load: int = 50, port: int = 0) -> NodeServer:
        server = NodeServer(route)
        p = self.reactor.listenTCP(port, server, interface="127.0.0.1")
        self.listening[route] = p
        b = BalancerSettings("mycluster")
        self.registry.config(b, NodeSettings(route=route, host="127.0.0.1",
                                             port=p.getHost().port, balancer=b.name,
                                             type="http"),
                             [(["localhost"], ["/app"])])
        self.registry.app("ENABLE-APP", route, ["localhost"], ["/app"])
        self.registry.apply_status(route, load, True)
        return server

    async def get(self, path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.port.getHost().port}{path}".encode()
        d = self.agent.request(b"GET", url)
        d.addTimeout(20, self.reactor)
        response = await d
        return response.code, await readBody(response)

    async def routes(self, n: int, path: str = "/app/x") -> list[str]:
        out = []
        for _ in range(n):
            code, body = await self.get(path)
            assert code == 200, body
            out.append(body.split(b" ", 1)[0].decode())
        return out

    async def stop(self) -> None:
        self.maintenance.stopService()
        await self.pool.closeCachedConnections()
        await self.port.stopListening()
        for p in self.listening.values():
            if p.connected:
                await p.stopListening()
        await task.deferLater(self.reactor, 0.05, lambda: None)


async def until(predicate, seconds: float, what: str) -> None:
    reactor = _reactor()
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


def cluster_test(**kw):
    def wrap(fn):
        @pytest_twisted.ensureDeferred
        async def run():
            c = Cluster(**kw)
            try:
                d = defer.ensureDeferred(fn(c))
                d.addTimeout(60, c.reactor)
                await d
            finally:
                await c.stop()

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        return run

    return wrap


@cluster_test(slow_start=0)
async def test_garbage_answer_costs_one_502_and_the_cluster_keeps_serving(c):
    """Issue 13 §2: two nodes serving /app, one answering /app/garbage with
    non-HTTP bytes: one 502, no node in error, the cluster keeps serving
    (main: 502, then 503 for everyone until the next STATUS)."""
    c.serve("good")
    bad = c.serve("bad")
    bad.garbage = b"/garbage"
    codes = []
    while 502 not in codes:
        code, _ = await c.get("/app/garbage")
        codes.append(code)
        assert len(codes) <= 2  # the election alternates between the two nodes
    assert not any(e.rt.in_error for e in c.registry.table.nodes)
    assert sorted(set(await c.routes(20))) == ["bad", "good"]


@cluster_test(slow_start=0)
async def test_broken_node_is_ejected_after_consecutive_failures(c):
    """Issue 17 §3: a node answering garbage to everything costs one 502 per
    request routed to it, never replayed nor put in error, until
    `eject_failures` in a row eject it; then only the other node serves."""
    c.serve("good")
    bad = c.serve("bad")
    bad.garbage = True
    codes = Counter()
    for _ in range(40):
        code, _ = await c.get("/app/x")
        codes[code] += 1
    assert codes[502] == c.config.eject_failures
    assert codes[200] == 40 - c.config.eject_failures
    rt = c.registry.table.by_route["bad"].rt
    assert rt.ejected_until > c.reactor.seconds() and not rt.in_error
    assert set(await c.routes(10)) == {"good"}


@cluster_test(slow_start=0)
async def test_node_in_error_comes_back_on_its_probe_without_status(c):
    """Issue 13 §2 / 17 §4: a node whose backend went away is put in error by a
    refused connect; when it listens again, the recovery probe (OPTIONS *)
    brings it back without any STATUS."""
    c.serve("a")
    b = c.serve("b")
    port = c.listening["b"].getHost().port
    await c.listening["b"].stopListening()
    routes = await c.routes(10)
    assert set(routes) == {"a"}
    assert c.registry.table.by_route["b"].rt.in_error
    c.listening["b"] = c.reactor.listenTCP(port, b, interface="127.0.0.1")
    rt = c.registry.table.by_route["b"].rt
    await until(lambda: not rt.in_error, 15, "recovery by probe")
    assert [e for e in c.registry.events if e["event"] == "node.recovered"][-1]["why"] == \
        "health probe succeeded"
    assert "b" in await c.routes(10)


@cluster_test(slow_start=30, slow_start_min_share=0.1)
async def test_new_node_ramps_up_instead_of_taking_everything(c):
    """Issue 17 §1: a node joining a busy context takes a small share of the
    next 100 requests (mod_proxy_cluster: 100 of 100)."""
    c.serve("a")
    c.serve("b")
    c.registry.table.by_route["a"].rt.warm_from = float("-inf")  # long in service
    c.registry.table.by_route["b"].rt.warm_from = float("-inf")
    await c.routes(200)
    c.serve("new")
    counts = Counter(await c.routes(100))
    assert 1 <= counts["new"] <= 15, counts


@cluster_test(slow_start=0)
async def test_smooth_shares_in_every_block_of_requests(c):
    """Issue 17 §2: loads 90 and 20 (long-run 18.2 % for the light node): in
    every block of 50 consecutive requests the light node's share is within
    ±5 points."""
    c.serve("heavy", load=90)
    c.serve("light", load=20)
    routes = await c.routes(300)
    for i in range(0, 300, 50):
        share = routes[i:i + 50].count("light") / 50
        assert abs(share - 20 / 110) <= 0.05, (i, share)


@cluster_test(max_in_flight_per_node=2, node_queue_size=50, node_queue_timeout=20)
async def test_in_flight_limit_queues_the_excess(c):
    """Issue 17 §6: 12 concurrent slow requests to one node with a limit of 2:
    all answered, never more than 2 at the node at once."""
    node = c.serve("only")
    results = await defer.gatherResults([defer.ensureDeferred(c.get("/app/slow"))
                                         for _ in range(12)])
    assert [code for code, _ in results] == [200] * 12
    assert node.peak == 2
    assert c.factory.queues == {} and c.factory.queue_rejected == 0
