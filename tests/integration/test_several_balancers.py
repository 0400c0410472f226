"""
More than one balancer (docs/operations.md, "Several balancers"): every node
registers with every balancer (mod_cluster's proxyList, here `--proxy`
repeated); the balancers share nothing and route the same way; one going down
leaves the other serving.
"""

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from modcluster.config import parse_config
from modcluster.demo import DemoPage
from modcluster.node.agent import NodeAgent
from modcluster.node.tap import Options as NodeOptions
from modcluster.tap import build
from tests.support.tomcat import free_loopback_ports


@inlineCallbacks
def get(client, port, cookie=None):
    headers = Headers({b"cookie": [cookie]} if cookie else {})
    resp = yield client.request(b"GET", b"http://127.0.0.1:%d/demo/" % port, headers)
    yield readBody(resp)
    node = resp.headers.getRawHeaders(b"x-demo-node", [b"-"])[0].decode()
    set_cookie = resp.headers.getRawHeaders(b"set-cookie", [b""])[0].split(b";")[0]
    return resp.code, node, set_cookie or None


def test_node_options_take_several_proxies():
    options = NodeOptions()
    options.parseOptions(["--route", "a", "--backend", "http://127.0.0.1:8080",
                          "--proxy", "127.0.0.1:6666", "--proxy", "127.0.0.1:6667"])
    assert options["node_config"].proxies == (("127.0.0.1", 6666), ("127.0.0.1", 6667))


@pytest_twisted.inlineCallbacks
def test_two_balancers_route_the_same_way_and_survive_each_other():
    ports = free_loopback_ports(4)
    balancers = []
    for mport, pport in ((ports[0], ports[1]), (ports[2], ports[3])):
        config = parse_config(f"""
[manager]
listen = ["tcp:{mport}:interface=127.0.0.1"]
[proxy]
listen = ["tcp:{pport}:interface=127.0.0.1"]
fast_event_loop = false
drain_timeout = 0
[console]
listen = []
""")
        balancer = build(config, reactor)
        balancer.startService()
        balancers.append((balancer, pport))
    backends, agents = [], []
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = Agent(reactor, pool=pool)
    try:
        for name in ("a", "b"):
            listening = reactor.listenTCP(0, Site(DemoPage(name)), interface="127.0.0.1")
            backends.append(listening)
            options = NodeOptions()
            options.parseOptions([
                "--route", name, "--backend", f"http://127.0.0.1:{listening.getHost().port}",
                "--proxy", f"127.0.0.1:{ports[0]}", "--proxy", f"127.0.0.1:{ports[2]}",
                "--context", "/demo", "--status-period", "1"])
            agent = NodeAgent(options["node_config"], reactor)
            agent.startService()
            agents.append(agent)
        for _ in range(200):
            if all(len(b.registry.table.nodes) == 2
                   and all(n.rt.lbfactor > 0 for n in b.registry.table.nodes)
                   for b, _ in balancers):
                break
            yield deferLater(reactor, 0.05, lambda: None)
        for b, _ in balancers:
            assert sorted(n.route for n in b.registry.table.nodes) == ["a", "b"]

        (first, p1), (second, p2) = balancers
        # a session made through one balancer sticks to its node through the other
        sessions = {}
        for _ in range(6):
            code, node, cookie = yield get(client, p1)
            assert code == 200 and cookie is not None
            sessions.setdefault(node, cookie)
        assert set(sessions) == {"a", "b"}, sessions  # both nodes serve
        for node, cookie in sessions.items():
            for port in (p1, p2, p2, p1):
                code, served, _ = yield get(client, port, cookie)
                assert (code, served) == (200, node)

        # one balancer going down does not affect the other
        yield first.stopService()
        for node, cookie in sessions.items():
            code, served, _ = yield get(client, p2, cookie)
            assert (code, served) == (200, node)
        yield agents[0].status_cycle()  # the nodes keep reporting to the one left
        assert second.registry.node("a").rt.lbfactor > 0
        code, _, _ = yield get(client, p2)
        assert code == 200
    finally:
        for agent in agents:
            yield agent.stopService()
        for listening in backends:
            yield listening.stopListening()
        for b, _ in balancers:
            if b.running:
                yield b.stopService()
        yield pool.closeCachedConnections()
