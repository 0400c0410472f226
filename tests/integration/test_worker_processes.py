"""
The data plane in worker processes (proxy.workers = 2), as deployed: the whole
balancer built by tap.build on the real reactor, real worker processes
(python -m modcluster.worker) sharing the proxy port, nodes registered over
MCMP on the management listener, requests over loopback.
"""

import json
import os
import re
import signal

import pytest_twisted
import trustme
from twisted.internet import ssl
from twisted.internet import defer, reactor, task
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    FileBodyProducer,
    HTTPConnectionPool,
    readBody,
)
from twisted.web.http_headers import Headers

from modcluster.config import parse_config
from modcluster.proxy import workers
from modcluster.tap import build
from tests.integration.test_proxy_http import NodeServer
from tests.support.tomcat import free_loopback_ports


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


async def until(predicate, timeout=30.0, what="condition"):
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Cluster:
    def __init__(self, workers=2, listen=None, client_tls=None, **proxy):
        self.mport, self.pport, self.cport = free_loopback_ports(3)
        extra = "".join(f"{k} = {v}\n" for k, v in proxy.items())
        listen = (listen or "tcp:{port}:interface=127.0.0.1").format(port=self.pport)
        self.scheme = "https" if listen.startswith("ssl:") else "http"
        self.config = parse_config(f"""
[manager]
listen = ["tcp:{self.mport}:interface=127.0.0.1"]
persist = false
[console]
allow_display = true
listen = ["tcp:{self.cport}:interface=127.0.0.1"]
[proxy]
listen = ["{listen}"]
workers = {workers}
enable_options = false
{extra}""")
        self.service = build(self.config, reactor)
        self.registry = self.service.registry
        self.pool = next(s for s in self.service if hasattr(s, "workers"))
        self.nodes = []
        self.http = HTTPConnectionPool(reactor, persistent=True)
        self.agent = Agent(reactor, pool=self.http)
        self.fresh = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False),
                           contextFactory=client_tls or BrowserLikePolicyForHTTPS())

    async def mcmp(self, method, body):
        d = self.agent.request(
            method.encode(), f"http://127.0.0.1:{self.mport}/".encode(),
            Headers({"content-type": ["application/x-www-form-urlencoded"]}),
            FileBodyProducer(__import__("io").BytesIO(body.encode())))
        response = await d.addTimeout(30, reactor)
        text = await readBody(response)
        assert response.code == 200, (method, body, response.code, text)
        return text.decode()

    async def node(self, route, context="/app", port=None):
        if port is None:
            server = NodeServer(route)
            server.port = reactor.listenTCP(0, server, interface="127.0.0.1")
            self.nodes.append(server)
            port = server.port.getHost().port
        await self.mcmp("CONFIG", f"JVMRoute={route}&Host=127.0.0.1&Port={port}&Type=http"
                                  "&StickySessionForce=No")
        await self.mcmp("ENABLE-APP", f"JVMRoute={route}&Alias=localhost&Context={context}")
        await self.mcmp("STATUS", f"JVMRoute={route}&Load=100")
        await until(self.pool.in_sync, what="workers in sync")
        return self.nodes[-1] if self.nodes and self.nodes[-1].route == route else None

    async def fetch(self, path):
        # console, API and metrics: on their own listener
        d = self.agent.request(b"GET", f"http://127.0.0.1:{self.cport}{path}".encode())
        response = await d.addTimeout(30, reactor)
        assert response.code == 200, path
        return await readBody(response)

    async def get(self, path, fresh=True):
        agent = self.fresh if fresh else self.agent
        d = agent.request(b"GET", f"{self.scheme}://localhost:{self.pport}{path}".encode())
        response = await d.addTimeout(30, reactor)
        return response.code, await readBody(response)

    async def start(self):
        self.service.startService()
        await until(self.pool.in_sync, 60, "workers ready")

    async def stop(self):
        await self.http.closeCachedConnections()
        await self.service.stopService()
        for server in self.nodes:
            await server.port.stopListening()


def cluster_test(**kwargs):
    def wrap(fn):
        @pytest_twisted.ensureDeferred
        async def run():
            c = Cluster(**kwargs)
            await c.start()
            try:
                d = defer.ensureDeferred(fn(c))
                d.addTimeout(180, reactor)
                await d
            finally:
                await c.stop()

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        return run

    return wrap


@cluster_test()
async def test_workers_share_the_port_route_and_report_counters(c):
    """Connections spread over both workers; their counters add up in the registry."""
    a = await c.node("nA")
    b = await c.node("nB")
    for i in range(40):
        code, body = await c.get(f"/app/echo?i={i}")
        assert code == 200 and body.split(b"\n")[0] in (b"nA", b"nB")
    assert a.requests + b.requests == 40 and a.requests and b.requests
    nodes = [c.registry.node(r).rt for r in ("nA", "nB")]
    await until(lambda: sum(rt.requests for rt in nodes) == 40, what="counters")
    assert sum(rt.elected for rt in nodes) == 40
    assert all(rt.read > 0 and rt.transferred > 0 and rt.busy == 0 for rt in nodes)
    per_worker = [w["requests"] for w in c.pool.status()]
    assert sum(per_worker) == 40 and all(per_worker), per_worker  # the kernel spread them
    # INFO (what the console and nodes read) shows the sums
    info = await c.mcmp("INFO", "")
    elected = [int(x) for x in re.findall(r"Elected: (\d+)", info)]
    assert sum(elected) == 40, info
    # the JSON API and the metrics show the workers
    api = json.loads(await c.fetch("/api/v1/workers"))
    assert api["mode"] == "processes" and api["configured"] == 2 and api["in_sync"]
    assert [w["pid"] for w in api["workers"]] == [w.pid for _, w in
                                                  sorted(c.pool.workers.items())]
    assert sum(w["requests"] for w in api["workers"]) == 40
    metrics = (await c.fetch("/metrics")).decode()
    assert "modcluster_proxy_workers 2.0" in metrics
    assert "modcluster_proxy_worker_restarts_total 0.0" in metrics
    assert 'modcluster_node_requests_total{route="nA"} %d.0' % nodes[0].requests in metrics
    console = (await c.fetch("/mod_cluster-manager")).decode()
    assert "(2 worker processes)" in console


@cluster_test()
async def test_stop_app_counts_requests_in_flight_in_every_worker(c):
    await c.node("nA")
    # long enough for STOP-APP to be answered while they are in flight, even under load
    slow = [defer.ensureDeferred(c.get("/app/slow?ms=4000")) for _ in range(4)]
    ctx = c.registry.find_context("nA", "localhost", "/app")
    await until(lambda: ctx.rt.in_flight == 4, what="4 requests in flight")
    text = await c.mcmp("STOP-APP", "JVMRoute=nA&Alias=localhost&Context=/app")
    assert "Requests=4" in text
    results = await defer.gatherResults(slow)
    assert [code for code, _ in results] == [200] * 4
    await until(lambda: ctx.rt.in_flight == 0, what="drained")
    text = await c.mcmp("STOP-APP", "JVMRoute=nA&Alias=localhost&Context=/app")
    assert "Requests=0" in text
    assert c.registry.node("nA").rt.busy == 0


@cluster_test()
async def test_node_failure_in_a_worker_puts_the_node_in_error(c):
    (dead,) = free_loopback_ports(1)  # nothing listens there
    await c.node("nDead", context="/dead", port=dead)
    await c.node("nA")
    code, _ = await c.get("/dead/x")
    assert code == 503
    rt = c.registry.node("nDead").rt
    await until(lambda: rt.in_error, what="node in error")
    assert rt.failures >= 1 and rt.error_reason
    assert (await c.get("/app/echo"))[0] == 200


@cluster_test()
async def test_a_killed_worker_is_replaced_and_nothing_is_lost(c):
    await c.node("nA")
    old = c.pool.workers[0].pid
    slow = defer.ensureDeferred(c.get("/app/slow?ms=3000", fresh=True))
    await until(lambda: c.registry.node("nA").rt.busy >= 1, what="busy")
    for w in list(c.pool.workers.values()):
        os.kill(w.pid, signal.SIGKILL)
    await until(lambda: all(w.pid not in (None, old) for w in c.pool.workers.values())
                and len(c.pool.workers) == 2 and all(w["ready"] for w in c.pool.status()),
                60, "workers restarted")
    assert c.pool.restarts == 2
    assert "modcluster_proxy_worker_restarts_total 2.0" in (await c.fetch("/metrics")).decode()
    # the killed worker's request in flight is taken back, not left counted
    await until(lambda: c.registry.node("nA").rt.busy == 0, what="busy back to 0")
    try:
        await slow
    except Exception:
        pass  # that client's connection died with its worker
    for i in range(10):
        assert (await c.get(f"/app/echo?i={i}"))[0] == 200


@pytest_twisted.ensureDeferred
async def test_a_hung_worker_is_killed_and_replaced(monkeypatch):
    """
    A worker that stops answering heartbeats (here: SIGSTOP) is replaced, and
    only that one.  The test drives the heartbeats itself, each after the
    healthy worker answered the previous one, so a loaded machine changes how
    long it takes, never what happens.
    """
    monkeypatch.setattr(workers, "HEARTBEAT_INTERVAL", 3600.0)  # no timer beats in the test
    c = Cluster()
    c.pool.stall_timeout = 0.0  # judged by missed heartbeats alone
    await c.start()
    try:
        await c.node("nA")
        healthy, stopped = c.pool.workers[0], c.pool.workers[1]
        os.kill(stopped.pid, signal.SIGSTOP)
        for _ in range(100):
            c.pool.heartbeat()
            if stopped.killed:
                break
            await until(lambda: healthy.unanswered == 0, 60, "the healthy worker's answer")
        assert stopped.killed and not healthy.killed
        await until(lambda: 1 in c.pool.workers and c.pool.workers[1] is not stopped
                    and c.pool.in_sync(), 60, "hung worker replaced")
        assert not alive(stopped.pid) and c.pool.restarts == 1
        assert c.pool.workers[0] is healthy
        for i in range(10):
            assert (await c.get(f"/app/echo?i={i}"))[0] == 200
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_workers_serve_https_on_a_shared_ssl_listener(tmp_path):
    """An `ssl:` listener works the same in worker processes (TLS on the adopted socket)."""
    ca = trustme.CA()
    pem = tmp_path / "proxy.pem"
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(pem))
    trust = ssl.Certificate.loadPEM(ca.cert_pem.bytes())

    c = Cluster(listen=f"ssl:{{port}}:interface=127.0.0.1:privateKey={pem}",
                client_tls=BrowserLikePolicyForHTTPS(trustRoot=trust))
    await c.start()
    try:
        await c.node("nA")
        for i in range(6):
            code, body = await c.get(f"/app/echo?i={i}")
            assert code == 200 and body.startswith(b"nA\n")
            assert b"X-Forwarded-Proto: https" in body
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_stopping_the_balancer_stops_its_workers():
    c = Cluster()
    await c.start()
    pids = [w.pid for w in c.pool.workers.values()]
    assert all(alive(p) for p in pids)
    await c.stop()
    assert not any(alive(p) for p in pids)
    assert c.pool.listeners == []


@cluster_test(request_header_timeout=2, request_header_timeout_max=0)
async def test_workers_cut_slow_clients_and_report_them(c):
    """The workers apply [proxy]'s head deadline (408 to a 1 byte/s client) and
    their counts reach the control process's metrics."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    from tests.integration.test_slow_clients import SLOW_HEAD, Trickler

    slow = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", c.pport),
                                 Trickler(SLOW_HEAD))
    loop = task.LoopingCall(slow.tick)
    loop.start(1.0)
    try:
        await slow.done
    finally:
        loop.stop()
    assert slow.status() == 408
    assert 2 <= slow.sent < len(SLOW_HEAD)
    await until(lambda: c.pool.client_timeouts["header"] == 1, what="worker report")
    text = (await c.fetch("/metrics")).decode()
    assert 'modcluster_client_timeouts_total{listener="proxy",reason="header"} 1.0' in text
