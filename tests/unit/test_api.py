"""
The read-only JSON API (docs/api.md): shapes, lookups, events paging, errors.
"""

from __future__ import annotations

import json

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from modcluster.api import APIResource
from modcluster.cluster.model import BalancerSettings, NodeSettings
from modcluster.cluster.registry import Registry

RELEASE = "mod_cluster/1.3.22.Final"
API = "/api/v1"

NODE_KEYS = {
    "id", "route", "balancer", "domain", "type", "host", "port", "address", "reversed",
    "state", "error_reason", "load", "elected", "read", "transferred", "busy", "in_flight",
    "requests", "failures", "flushpackets", "flushwait_ms", "ping", "smax", "ttl",
    "timeout", "registered_at", "removed_at", "error_since", "last_status", "vhosts",
    # issue 17: passive health and slow start
    "ejected_until", "ejections", "consecutive_failures", "share",
}


def two_nodes(clock):
    reg = Registry(clock)
    bal = BalancerSettings("mycluster", sticky_remove=True, sticky_force=False,
                           wait_worker=5.0, max_attempts=3)
    reg.config(bal, NodeSettings(route="node1", host="10.0.0.21", port=8009),
               [(["localhost", "default-host"], ["/app", "/"])])
    reg.app("ENABLE-APP", "node1", ["localhost"], ["/app", "/"])
    assert reg.apply_status("node1", 85, True)
    clock.advance(1)
    reg.config(bal, NodeSettings(route="node/2", host="10.0.0.22", port=8080, type="http",
                                 domain="dc1"))
    reg.app("DISABLE-APP", "node/2", ["example.com"], ["/app"])
    reg.set_error("node/2", "probe at STATUS failed")
    return reg


@pytest.fixture
def clock():
    c = Clock()
    c.advance(1000)
    return c


@pytest.fixture
def registry(clock):
    return two_nodes(clock)


@pytest.fixture
def get(registry):
    root = Resource()
    api = Resource()
    root.putChild(b"api", api)
    api.putChild(b"v1", APIResource(registry, RELEASE))
    site = Site(root)

    def request(path, method="GET"):
        proto = site.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        proto.makeConnection(transport)
        proto.dataReceived(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                           "Content-Length: 0\r\n\r\n".encode())
        head, _, body = transport.value().partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        status = int(lines[0].split()[1])
        return status, headers, (json.loads(body) if body else None)

    return request


def test_root_lists_the_endpoints(get):
    status, headers, body = get(API)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"
    assert body["release"] == RELEASE
    assert body["counts"] == {"nodes": 2, "balancers": 1, "aliases": 3, "contexts": 3}
    assert body["endpoints"] == {
        "balancers": "/api/v1/balancers", "nodes": "/api/v1/nodes",
        "vhosts": "/api/v1/vhosts", "contexts": "/api/v1/contexts",
        "events": "/api/v1/events", "workers": "/api/v1/workers",
        "sessions": "/api/v1/sessions", "node": "/api/v1/nodes/{route}",
    }
    assert get(API + "/")[2] == body


def test_workers_in_process(get):
    """Without proxy.workers the data plane runs in this process (see the
    integration test test_worker_processes.py for the worker processes)."""
    status, _, body = get(API + "/workers")
    assert status == 200
    assert body == {"mode": "in-process", "configured": 1, "restarts": 0, "workers": []}


def test_nodes(get, registry):
    registry.node("node1").rt.elected = 7
    registry.find_context("node1", "localhost", "/app").rt.in_flight = 2
    status, _, body = get(API + "/nodes")
    assert status == 200
    n1, n2 = body["nodes"]
    assert set(n1) == NODE_KEYS and set(n2) == NODE_KEYS
    assert n1["route"] == "node1" and n1["address"] == "ajp://10.0.0.21:8009"
    assert n1["state"] == "ok" and n1["error_reason"] is None and n1["load"] == 85
    assert n1["elected"] == 7 and n1["in_flight"] == 2 and n1["port"] == 8009
    assert n1["registered_at"] == 1000.0 and n1["last_status"] == 1000.0
    assert n1["vhosts"] == [{"id": 1, "aliases": ["localhost", "default-host"], "contexts": [
        {"id": 1, "path": "/app", "status": "ENABLED", "in_flight": 2, "requests": 0},
        {"id": 2, "path": "/", "status": "ENABLED", "in_flight": 0, "requests": 0},
    ]}]
    assert n2["state"] == "in_error" and n2["error_reason"] == "probe at STATUS failed"
    assert n2["error_since"] == 1001.0 and n2["domain"] == "dc1" and n2["type"] == "http"
    assert n2["last_status"] is None


def test_one_node_by_route(get):
    status, _, body = get(API + "/nodes/node1")
    assert status == 200 and body["node"]["route"] == "node1"
    # A route with a slash is percent-encoded in the path.
    status, _, body = get(API + "/nodes/node%2F2")
    assert status == 200 and body["node"]["route"] == "node/2"
    status, _, body = get(API + "/nodes/ghost")
    assert status == 404 and body["error"] == "not_found" and "ghost" in body["message"]


def test_removed_node_state(get, registry):
    registry.app("REMOVE-APP", "node1", wildcard=True)
    node = get(API + "/nodes/node1")[2]["node"]
    assert node["state"] == "removing" and node["removed_at"] == 1001.0
    assert node["vhosts"] == []


def test_balancers(get):
    status, _, body = get(API + "/balancers")
    assert status == 200
    assert body == {"balancers": [{
        "name": "mycluster", "sticky_session": True, "sticky_cookie": "JSESSIONID",
        "sticky_path": "jsessionid", "sticky_remove": True, "sticky_force": False,
        "wait_worker": 5.0, "max_attempts": 3, "nodes": ["node1", "node/2"],
    }]}


def test_vhosts_and_contexts(get):
    assert get(API + "/vhosts")[2] == {"vhosts": [
        {"node": "node1", "id": 1, "aliases": ["localhost", "default-host"],
         "contexts": ["/app", "/"]},
        {"node": "node/2", "id": 1, "aliases": ["example.com"], "contexts": ["/app"]},
    ]}
    contexts = get(API + "/contexts")[2]["contexts"]
    assert contexts[2] == {"node": "node/2", "vhost": 1, "aliases": ["example.com"],
                           "id": 3, "path": "/app", "status": "DISABLED", "in_flight": 0,
                           "requests": 0}
    assert [c["path"] for c in contexts] == ["/app", "/", "/app"]


def test_events(get, registry):
    all_events = get(API + "/events")[2]
    kinds = [e["event"] for e in all_events["events"]]
    assert kinds[0] == "balancer.updated" and "node.error" in kinds
    assert all_events["count"] == len(registry.events)
    assert all_events["next_since"] == 1001.0
    # Without since: the most recent `limit` events.
    last = get(API + "/events?limit=2")[2]
    assert [e["event"] for e in last["events"]] == kinds[-2:]
    # With since: the events strictly after it, oldest first.
    after = get(API + "/events?since=1000.5")[2]
    assert after["events"] and all(e["time"] > 1000.5 for e in after["events"])
    assert [e["event"] for e in after["events"]] == kinds[-len(after["events"]):]
    assert after["events"][0]["event"] == "node.registered"
    assert after["events"][0]["route"] == "node/2"
    # Nothing new: empty page, next_since unchanged.
    none = get(API + "/events?since=1001")[2]
    assert none == {"events": [], "count": 0, "next_since": 1001.0}


def test_events_paging_never_splits_a_timestamp(get, registry, clock):
    # Four events at 1000.0 (balancer, node, 2 contexts); a page of 1 after 999
    # returns all events sharing the first one's time, so the next page starting
    # at that time misses nothing.
    page = get(API + "/events?since=999&limit=1")[2]
    times = [e["time"] for e in page["events"]]
    assert set(times) == {1000.0} and len(times) == sum(
        1 for e in registry.events if e["time"] == 1000.0)
    rest = get(API + f"/events?since={page['next_since']}")[2]
    assert page["count"] + rest["count"] == len(registry.events)


@pytest.mark.parametrize("query", ["since=abc", "since=nan", "limit=0", "limit=-1",
                                   "limit=x", "since=inf"])
def test_bad_event_parameters(get, query):
    status, _, body = get(API + "/events?" + query)
    assert status == 400 and body["error"] == "bad_request"


@pytest.mark.parametrize("path", ["/nope", "/nodes/node1/extra", "/balancers/x",
                                  "/events/1", "/%ff"])
def test_unknown_paths_are_404_json(get, path):
    status, headers, body = get(API + path)
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert body["error"] == "not_found"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_read_only(get, registry, method):
    status, headers, body = get(API + "/nodes", method=method)
    assert status == 405
    assert headers["allow"] == "GET, HEAD"
    assert body["error"] == "method_not_allowed"
    assert registry.node("node1") is not None


def test_head(get):
    status, headers, body = get(API + "/nodes", method="HEAD")
    assert status == 200 and body is None
    assert int(headers["content-length"]) > 0


def test_event_fields_are_json_safe(get, registry, clock):
    registry.events.append({"time": 1002.0, "event": "custom", "obj": object(),
                            "nested": {"t": (1, 2)}, "bad": float("inf")})
    event = get(API + "/events?since=1001.5")[2]["events"][0]
    assert event["event"] == "custom" and event["obj"].startswith("<object")
    assert event["nested"] == {"t": [1, 2]} and event["bad"] == "inf"


# -- /nodes: filter and pages (issue 20) ----------------------------------------------


@pytest.fixture
def many(registry):
    bal = BalancerSettings("mycluster")
    for i in range(3, 13):
        route = f"n{i:02d}"
        registry.config(bal, NodeSettings(route=route, host=f"10.0.1.{i}", port=8009,
                                          domain="dc2" if i % 2 else ""),
                        [([f"www{i}.example.com"], [f"/shop{i}"])])
        registry.app("ENABLE-APP", route, [f"www{i}.example.com"], [f"/shop{i}"])
        registry.apply_status(route, 10, True)
    return registry


def test_nodes_without_parameters_lists_everything(get, many):
    status, _, body = get(API + "/nodes")
    assert status == 200
    assert len(body["nodes"]) == 12 == body["total"]
    assert [n["id"] for n in body["nodes"]] == sorted(n["id"] for n in body["nodes"])
    assert body["offset"] == 0 and body["limit"] is None and body["next"] is None


def test_nodes_pages(get, many):
    ids = [n["route"] for n in get(API + "/nodes")[2]["nodes"]]
    status, _, body = get(API + "/nodes?limit=5")
    assert status == 200
    assert [n["route"] for n in body["nodes"]] == ids[:5]
    assert body["total"] == 12 and body["limit"] == 5
    assert body["next"] == API + "/nodes?limit=5&offset=5"
    body = get(body["next"])[2]
    assert [n["route"] for n in body["nodes"]] == ids[5:10]
    body = get(body["next"])[2]
    assert [n["route"] for n in body["nodes"]] == ids[10:] and body["next"] is None
    assert get(API + "/nodes?offset=50")[2]["nodes"] == []


@pytest.mark.parametrize("query,routes", [
    ("q=shop1", ["n10", "n11", "n12"]),
    ("q=WWW7&in=alias", ["n07"]),
    ("q=10.0.1.4&in=host", ["n04"]),
    ("q=/shop9&in=context", ["n09"]),
    ("q=n0&in=route", ["n03", "n04", "n05", "n06", "n07", "n08", "n09"]),
    ("domain=dc1", ["node/2"]),
    ("q=dc2&in=domain&limit=2", ["n03", "n05"]),
    ("state=in_error", ["node/2"]),
    ("state=attention", ["node/2"]),
    ("balancer=MYCLUSTER&q=node", ["node1", "node/2"]),
])
def test_nodes_filter(get, many, query, routes):
    status, _, body = get(f"{API}/nodes?{query}")
    assert status == 200
    assert [n["route"] for n in body["nodes"]] == routes


@pytest.mark.parametrize("query", ["limit=0", "limit=x", "offset=-1", "in=everywhere",
                                   "state=sleepy", "page=2", "Q=x"])
def test_nodes_bad_parameters(get, query):
    status, _, body = get(f"{API}/nodes?{query}")
    assert status == 400 and body["error"] == "bad_request"


def test_long_listing_is_written_a_slice_per_reactor_turn(registry, clock):
    """With a clock, 250 nodes are written in three slices, one per reactor turn,
    and the result is the same JSON as written at once."""
    from twisted.web.test.requesthelper import DummyRequest

    from modcluster.api import STREAM_SLICE

    bal = BalancerSettings("mycluster")
    for i in range(248):
        registry.config(bal, NodeSettings(route=f"s{i:03d}", host="127.0.0.1", port=1000 + i),
                        [(["localhost"], ["/a", "/b"])])
    at_once = APIResource(registry, RELEASE)
    sliced = APIResource(registry, RELEASE, clock=clock)

    def request():
        req = DummyRequest([b"nodes"])
        req.prepath = [b"api", b"v1"]
        return req

    whole = request()
    expected = at_once.render(whole)
    req = request()
    assert sliced.render(req) == NOT_DONE_YET
    assert len(req.written) == 1 and not req.finished
    assert req.written[0].count(b'"route"') == STREAM_SLICE
    while clock.getDelayedCalls():
        clock.advance(0)
    assert req.finished
    assert b"".join(req.written) == expected
    assert len(json.loads(expected)["nodes"]) == 250
    # A client that leaves stops the serialisation.
    req = request()
    sliced.render(req)
    req.processingFailed(Exception("connection lost"))
    clock.advance(0)
    assert len(req.written) == 1 and not clock.getDelayedCalls()


def test_node_shows_ejection_and_slow_start():
    """Issue 17: the API shows passive health and slow start."""
    from modcluster.api import node_json
    from modcluster.cluster.views import NodeState, node_view

    clock = Clock()
    reg = two_nodes(clock)
    clock.advance(3)
    t0 = clock.seconds()
    reg.node_ejected("node1", 30.0, "3 malformed responses")
    view = node_view(reg, reg.node("node1"))
    assert view.state is NodeState.EJECTED
    assert view.ejected_until == t0 + 30 and view.ejections == 1
    assert view.share == 0.1  # back through slow start when the ejection ends
    body = node_json(view)
    assert body["state"] == "ejected" and body["ejected_until"] == t0 + 30
    clock.advance(45)  # 15 s after the ejection ended: half way up
    body = node_json(node_view(reg, reg.node("node1")))
    assert body["state"] == "ok" and body["ejected_until"] is None and body["share"] == 0.5
