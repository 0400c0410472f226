"""
Prometheus metrics (docs/metrics.md): the collector reads the registry at
scrape time; MCMP messages are counted per method and outcome; each instance
has its own collector registry.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.server import Site

import modcluster
from modcluster.cluster.model import BalancerSettings, NodeSettings
from modcluster.cluster.registry import Registry
from modcluster.mcmp.handler import MCMPHandler
from modcluster.metrics import Metrics

RELEASE = "mod_cluster/1.3.22.Final"


def two_nodes(clock):
    reg = Registry(clock)
    bal = BalancerSettings("mycluster")
    reg.config(bal, NodeSettings(route="node1", host="10.0.0.21", port=8009),
               [(["localhost"], ["/app", "/"])])
    reg.app("ENABLE-APP", "node1", ["localhost"], ["/app", "/"])
    assert reg.apply_status("node1", 85, True)
    reg.config(bal, NodeSettings(route="node2", host="10.0.0.22", port=8080, type="http",
                                 domain="dc1"))
    reg.app("DISABLE-APP", "node2", ["example.com"], ["/app"])
    assert reg.apply_status("node2", 0, True)
    return reg


@pytest.fixture
def registry():
    return two_nodes(Clock())


def scrape(metrics: Metrics, accept: str = "") -> tuple[str, str]:
    proto = Site(metrics.resource).buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
    proto.makeConnection(transport)
    extra = f"Accept: {accept}\r\n" if accept else ""
    proto.dataReceived(f"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n"
                       .encode())
    head, _, body = transport.value().partition(b"\r\n\r\n")
    content_type = [line.split(":", 1)[1].strip() for line in head.decode().split("\r\n")
                    if line.lower().startswith("content-type:")][0]
    return content_type, body.decode()


def samples(text: str) -> dict:
    """(sample name, sorted label items) → value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_cluster_samples(registry):
    n1 = registry.node("node1").rt
    n1.elected, n1.requests, n1.failures, n1.busy = 12, 40, 2, 3
    n1.read, n1.transferred = 20480, 1024
    ctx = registry.find_context("node1", "localhost", "/app")
    ctx.rt.in_flight, ctx.rt.requests = 3, 39
    content_type, text = scrape(Metrics(registry, RELEASE, process=False, per_context=True))
    assert content_type.startswith("text/plain; version=")
    s = samples(text)
    r1, r2 = (("route", "node1"),), (("route", "node2"),)
    assert s[("modcluster_node_load", r1)] == 85
    assert s[("modcluster_node_load", r2)] == 0
    assert s[("modcluster_node_hot_standby", r2)] == 1
    assert s[("modcluster_node_hot_standby", r1)] == 0
    assert s[("modcluster_node_in_error", r1)] == 0
    assert s[("modcluster_node_elected_total", r1)] == 12
    assert s[("modcluster_node_requests_total", r1)] == 40
    assert s[("modcluster_node_failures_total", r1)] == 2
    assert s[("modcluster_node_busy", r1)] == 3
    assert s[("modcluster_node_read_bytes_total", r1)] == 20480
    assert s[("modcluster_node_transferred_bytes_total", r1)] == 1024
    info = (("balancer", "mycluster"), ("domain", "dc1"), ("host", "10.0.0.22"),
            ("port", "8080"), ("route", "node2"), ("type", "http"))
    assert s[("modcluster_node_info", info)] == 1
    ctx_l = (("context", "/app"), ("route", "node1"), ("vhost", "1"))
    assert s[("modcluster_context_in_flight", ctx_l)] == 3
    assert s[("modcluster_context_requests_total", ctx_l)] == 39
    status = {st: s[("modcluster_context_status",
                     tuple(sorted(dict(ctx_l, status=st).items())))]
              for st in ("ENABLED", "DISABLED", "STOPPED")}
    assert status == {"ENABLED": 1, "DISABLED": 0, "STOPPED": 0}
    n2_ctx = (("context", "/app"), ("route", "node2"), ("status", "DISABLED"), ("vhost", "1"))
    assert s[("modcluster_context_status", n2_ctx)] == 1
    assert s[("modcluster_nodes", ())] == 2
    assert s[("modcluster_contexts", ())] == 3
    assert s[("modcluster_aliases", ())] == 2
    assert s[("modcluster_balancers", ())] == 1
    assert s[("modcluster_nodes_by_state", (("state", "ok"),))] == 1
    assert s[("modcluster_nodes_by_state", (("state", "hot_standby"),))] == 1
    assert s[("modcluster_build_info", (("release", RELEASE), ("version", "0.1.0")))] == 1


def test_values_are_read_at_scrape_time(registry):
    metrics = Metrics(registry, RELEASE, process=False, per_context=True)
    r1 = (("route", "node1"),)
    assert samples(scrape(metrics)[1])[("modcluster_node_in_error", r1)] == 0
    registry.set_error("node1", "probe failed")
    registry.app("REMOVE-APP", "node2", wildcard=True)
    s = samples(scrape(metrics)[1])
    assert s[("modcluster_node_in_error", r1)] == 1
    assert s[("modcluster_node_removed", (("route", "node2"),))] == 1
    assert s[("modcluster_nodes_by_state", (("state", "removing"),))] == 1
    assert s[("modcluster_nodes_by_state", (("state", "in_error"),))] == 1
    assert ("modcluster_context_in_flight",
            (("context", "/app"), ("route", "node2"), ("vhost", "1"))) not in s


def test_contexts_are_counted_per_node_by_default(registry):
    """
    Per-context series are opt-in (console.metrics_per_context): by default a
    node has 3 context series (one per status) whatever its number of contexts.
    """
    s = samples(scrape(Metrics(registry, RELEASE, process=False))[1])
    assert not [k for k in s if k[0].startswith("modcluster_context_")]
    node1 = {st: s[("modcluster_node_contexts", (("route", "node1"), ("status", st)))]
             for st in ("ENABLED", "DISABLED", "STOPPED")}
    assert node1 == {"ENABLED": 2, "DISABLED": 0, "STOPPED": 0}
    assert s[("modcluster_node_contexts", (("route", "node2"), ("status", "DISABLED")))] == 1
    assert s[("modcluster_contexts_by_status", (("status", "ENABLED"),))] == 2
    assert s[("modcluster_contexts_by_status", (("status", "DISABLED"),))] == 1
    assert s[("modcluster_contexts_by_status", (("status", "STOPPED"),))] == 0
    # With per_context the same counts are there, plus the per-context series.
    s = samples(scrape(Metrics(registry, RELEASE, process=False, per_context=True))[1])
    assert s[("modcluster_node_contexts", (("route", "node1"), ("status", "ENABLED")))] == 2
    assert len([k for k in s if k[0] == "modcluster_context_status"]) == 9


def test_series_per_node_do_not_grow_with_contexts():
    reg = Registry(Clock())
    reg.config(BalancerSettings("mycluster"), NodeSettings(route="n", host="127.0.0.1"))
    reg.app("ENABLE-APP", "n", ["localhost"], [f"/app{i}" for i in range(200)])
    s = samples(scrape(Metrics(reg, RELEASE, process=False))[1])
    assert len(s) < 60
    assert s[("modcluster_contexts_by_status", (("status", "ENABLED"),))] == 200


def test_mcmp_messages_counter(registry):
    metrics = Metrics(registry, RELEASE, process=False)
    metrics.stats.record("CONFIG", "ok")
    metrics.stats.record("CONFIG", "ok")
    metrics.stats.record("status", "ok")
    metrics.stats.record("ENABLE-APP", "MEM")
    # Unknown methods and outcomes do not create new label values.
    metrics.stats.record("X" * 100, "weird")
    s = samples(scrape(metrics)[1])
    name = "modcluster_mcmp_messages_total"
    assert s[(name, (("method", "CONFIG"), ("outcome", "ok")))] == 2
    assert s[(name, (("method", "STATUS"), ("outcome", "ok")))] == 1
    assert s[(name, (("method", "ENABLE-APP"), ("outcome", "MEM")))] == 1
    assert s[(name, (("method", "other"), ("outcome", "other")))] == 1
    assert len([k for k in s if k[0] == name]) == 4


def test_mcmp_handler_records_through_stats(registry):
    """The lead's handler calls stats.record(method, outcome) per message."""
    clock = Clock()
    metrics = Metrics(registry, RELEASE, process=False)
    handler = MCMPHandler(registry, None, clock, stats=metrics.stats)
    handler.handle("INFO", b"/", b"")
    handler.handle("ENABLE-APP", b"/", b"JVMRoute=ghost&Alias=a&Context=/c")
    s = samples(scrape(metrics)[1])
    name = "modcluster_mcmp_messages_total"
    assert s[(name, (("method", "INFO"), ("outcome", "ok")))] == 1
    assert s[(name, (("method", "ENABLE-APP"), ("outcome", "MEM")))] == 1


def test_instances_do_not_collide(registry):
    a = Metrics(registry, RELEASE)
    b = Metrics(two_nodes(Clock()), RELEASE)
    a.stats.record("PING", "ok")
    sa, sb = samples(scrape(a)[1]), samples(scrape(b)[1])
    key = ("modcluster_mcmp_messages_total", (("method", "PING"), ("outcome", "ok")))
    assert sa[key] == 1 and key not in sb
    # Process metrics are there when asked for.
    assert any(k[0] == "process_cpu_seconds_total" for k in sa)


def test_openmetrics_on_request(registry):
    content_type, text = scrape(Metrics(registry, RELEASE, process=False),
                                accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")


def test_modules_do_not_import_the_global_reactor():
    """Pitfall 13: metrics, API and console are importable before twistd picks a reactor."""
    code = ("import sys, modcluster.metrics, modcluster.api, modcluster.console.resources\n"
            "bad = [m for m in ('twisted.internet.reactor', 'prometheus_client.twisted')"
            " if m in sys.modules]\n"
            "assert not bad, bad\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(modcluster.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=env)


def test_fast_text_encoding_is_byte_for_byte_prometheus_client():
    """
    /metrics writes plain gauges and counters itself (encode_text): the same
    bytes as prometheus_client's generate_latest, odd label values included, and
    every other kind of family handed to generate_latest.
    """
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.exposition import generate_latest

    from modcluster.metrics import encode_text

    reg = Registry(Clock())
    odd = 'a"b\\c\nd é'
    reg.config(BalancerSettings("mycluster"), NodeSettings(route=odd, host="127.0.0.1",
                                                           domain=odd))
    reg.app("ENABLE-APP", odd, [odd], ["/" + odd, "/x"])
    reg.apply_status(odd, 7, True)
    reg.node(odd).rt.read = 2 ** 53 + 1
    reg.node(odd).rt.transferred = 12345678901
    for per_context in (False, True):
        metrics = Metrics(reg, RELEASE, process=False, per_context=per_context)
        extra = CollectorRegistry()
        Histogram("a_histogram", "A histogram.", registry=metrics.collector_registry).observe(3)
        Counter("with_created", "Counter with _created.", ["x"], registry=extra).labels(
            x="1").inc()
        for registry in (metrics.collector_registry, extra):
            assert encode_text(registry) == generate_latest(registry)
        # And through the resource.
        assert scrape(metrics)[1].encode("utf-8") == generate_latest(metrics.collector_registry)


def test_passive_health_slow_start_and_retry_budget_samples():
    """Issue 17: ejection, slow start share and retry budget refusals."""
    from modcluster.balancer._health import RetryBudget
    from modcluster.config import ProxyConfig
    from modcluster.proxy.front import ProxyFactory

    clock = Clock()
    reg = two_nodes(clock)
    clock.advance(15)  # node1 (first STATUS at 0) is half way through its slow start
    reg.node_ejected("node2", 30.0, "resets")
    m = Metrics(reg, RELEASE, process=False)
    budget = RetryBudget(share=0.0, minimum=0)
    budget.allow("mycluster")
    plane = ProxyFactory(clock, ProxyConfig(), lambda: reg.table, lambda *a: None,
                         lambda *a: None, retry_budget=budget)
    plane.queue_rejected = 2
    m.cluster.data_plane = plane.plane_totals
    s = samples(scrape(m)[1])
    assert s[("modcluster_node_ejected", (("route", "node2"),))] == 1
    assert s[("modcluster_node_ejected", (("route", "node1"),))] == 0
    assert s[("modcluster_node_ejections_total", (("route", "node2"),))] == 1
    assert s[("modcluster_node_slow_start_share", (("route", "node1"),))] == 0.5
    assert s[("modcluster_nodes_by_state", (("state", "ejected"),))] == 1
    assert s[("modcluster_proxy_retry_budget_refused_total", ())] == 1
    assert s[("modcluster_proxy_queue_rejected_total", ())] == 2
    assert s[("modcluster_proxy_queued", ())] == 0
