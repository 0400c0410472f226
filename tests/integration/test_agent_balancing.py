"""
The node agent and the balancer together, as deployed: the whole balancer built
by tap.build on the real reactor, two HTTP backends each joined by a node agent
whose load metric the test controls.  Load reports must change routing shares.
"""

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.server import Site

from modcluster.config import parse_config
from modcluster.demo import DemoPage
from modcluster.node.agent import NodeAgent
from modcluster.node.config import LoadSettings, NodeConfig
from modcluster.node.load import CallableMetric
from modcluster.tap import build
from tests.support.tomcat import free_loopback_ports


@inlineCallbacks
def shares(agent, port, n):
    counts = {}
    for _ in range(n):
        resp = yield agent.request(b"GET", b"http://127.0.0.1:%d/demo/" % port)
        yield readBody(resp)
        assert resp.code == 200
        node = resp.headers.getRawHeaders(b"x-demo-node")[0].decode()
        counts[node] = counts.get(node, 0) + 1
    return counts


@pytest_twisted.inlineCallbacks
def test_load_reports_change_routing_shares():
    mport, pport, cport = free_loopback_ports(3)
    config = parse_config(f"""
[manager]
listen = ["tcp:{mport}:interface=127.0.0.1"]
[console]
listen = ["tcp:{cport}:interface=127.0.0.1"]
[proxy]
listen = ["tcp:{pport}:interface=127.0.0.1"]
fast_event_loop = false
""")
    balancer = build(config, reactor)
    balancer.startService()
    readings = {"a": 0.1, "b": 0.9}  # busy fraction: load factors 90 and 10
    backends, agents = [], []
    try:
        for name in ("a", "b"):
            listening = reactor.listenTCP(0, Site(DemoPage(name)), interface="127.0.0.1")
            backends.append(listening)
            node = NodeAgent(
                NodeConfig(route=name, backend=f"http://127.0.0.1:{listening.getHost().port}",
                           contexts=("/demo",), proxies=(("127.0.0.1", mport),),
                           status_period=60.0, load=LoadSettings(history=0)),
                reactor,
                metrics=[CallableMetric(lambda name=name: readings[name])])
            node.startService()
            agents.append(node)
        for _ in range(100):
            table = balancer.registry.table
            if len(table.nodes) == 2 and all(n.rt.lbfactor > 0 for n in table.nodes):
                break
            yield deferLater(reactor, 0.05, lambda: None)
        assert {n.route: n.rt.lbfactor for n in balancer.registry.table.nodes} == \
            {"a": 90, "b": 10}

        pool = HTTPConnectionPool(reactor)
        client = Agent(reactor, pool=pool)
        first = yield shares(client, pport, 200)
        assert first["a"] >= 170 and first["b"] >= 10, first  # 9:1

        readings["b"] = 0.1  # b reports the same capacity as a
        yield agents[1].status_cycle()
        assert balancer.registry.node("b").rt.lbfactor == 90
        second = yield shares(client, pport, 200)
        # b now gets its equal share at once (smooth election, docs/balancing.md
        # "Beyond mod_proxy_cluster"; mod_proxy_cluster's score sends b most
        # requests until both have served the same share)
        assert 80 <= second.get("b", 0) <= 120, second
        yield pool.closeCachedConnections()
    finally:
        for node in agents:
            yield node.stopService()
        for listening in backends:
            yield listening.stopListening()
        yield balancer.stopService()
    # the drain on stop removed both nodes
    assert all(n.rt.removed for n in balancer.registry.nodes())
