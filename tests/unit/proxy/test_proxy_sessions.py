"""
Session ids seen by the proxy (manager.max_session_ids > 0): the bounded
table, the data-plane hook, worker merging, the API and the console wiring.
"""

import json

from tests.support.proxy_testlib import OK_100, Harness, parse_responses
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Site

from modcluster.api import APIResource
from modcluster.cluster.model import BalancerSettings
from modcluster.proxy.sessions import SessionTable


def test_table_is_bounded_least_recently_seen_first_and_expires():
    t = SessionTable(3, timeout=100.0)
    t.seen("a", "n1", 1.0)
    t.seen("b", "n1", 2.0)
    t.seen("c", "n2", 3.0)
    t.seen("a", "n1", 4.0)  # seen again: now the most recent
    t.seen("d", "n2", 5.0)  # full: "b" goes
    assert t.entries(5.0) == [("c", "n2", 3.0), ("a", "n1", 4.0), ("d", "n2", 5.0)]
    assert t.entries(103.5) == [("a", "n1", 4.0), ("d", "n2", 5.0)]
    assert len(t) == 2


def test_worker_changes_merge_into_the_control_table():
    w1, w2 = SessionTable(10, track_changes=True), SessionTable(10, track_changes=True)
    w1.seen("a", "n1", 1.0)
    w2.seen("b", "n2", 2.0)
    w2.seen("a", "n2", 3.0)  # failed over in another worker, later
    control = SessionTable(10)
    for w in (w2, w1):  # w1's older news arrives last
        control.merge(json.loads(json.dumps(w.changes())))
    assert sorted(control.entries(3.0)) == [("a", "n2", 3.0), ("b", "n2", 2.0)]
    assert w1.changes() == []


def sticky_harness():
    h = Harness()
    b = BalancerSettings("mycluster")
    h.node("n1", 8081, contexts=("/app",), balancer=b)
    h.node("n2", 8082, contexts=("/app",), balancer=b)
    h.factory.sessions = SessionTable(100)
    return h


def test_proxy_records_the_session_ids_of_sticky_requests():
    h = sticky_harness()
    h.reactor.advance(7)
    h.factory.sweep()
    c = h.client()
    c.send(b"GET /app/x HTTP/1.1\r\nHost: a\r\nCookie: JSESSIONID=ABC.n2\r\n\r\n")
    n = h.accept(8082)
    n.received()
    n.respond(OK_100)
    c.send(b"GET /app/x;jsessionid=DEF.n1 HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept(8081)
    n.received()
    n.respond(OK_100)
    c.send(b"GET /app/x HTTP/1.1\r\nHost: a\r\n\r\n")  # no session: nothing recorded
    assert [r.status for r in parse_responses(c.received())] == [200, 200]
    assert h.factory.sessions.entries(7.0) == [("ABC.n2", "n2", 7.0), ("DEF.n1", "n1", 7.0)]


def api(table, clock):
    root = Resource()
    root.putChild(b"api", APIResource(h_registry(), "r", sessions=table, clock=clock))
    site = Site(root)

    def get(path):
        proto = site.buildProtocol(None)
        t = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        proto.makeConnection(t)
        proto.dataReceived(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                           .encode())
        return json.loads(t.value().partition(b"\r\n\r\n")[2])

    return get


def h_registry():
    from modcluster.cluster.registry import Registry

    return Registry(Clock())


def test_api_lists_sessions_newest_first_with_limit_and_route_filter():
    clock = Clock()
    clock.advance(50)
    table = SessionTable(10)
    table.seen("a", "n1", 10.0)
    table.seen("b", "n2", 20.0)
    table.seen("c", "n1", 30.0)
    get = api(table, clock)
    assert get("/api/sessions") == {
        "tracked": True, "max": 10, "count": 3,
        "sessions": [{"id": "c", "route": "n1", "last_seen": 30.0},
                     {"id": "b", "route": "n2", "last_seen": 20.0},
                     {"id": "a", "route": "n1", "last_seen": 10.0}]}
    assert [s["id"] for s in get("/api/sessions?limit=1")["sessions"]] == ["c"]
    body = get("/api/sessions?route=n1")
    assert body["count"] == 2 and [s["id"] for s in body["sessions"]] == ["c", "a"]
    assert api(None, clock)("/api/sessions")["tracked"] is False


def test_tap_wires_sessions_to_the_console_and_api():
    from twisted.internet.testing import MemoryReactorClock

    from modcluster.config import parse_config
    from modcluster.tap import build

    reactor = MemoryReactorClock()
    config = parse_config('[manager]\nmax_session_ids = 5\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
                          '[proxy]\nlisten = ["tcp:0:interface=127.0.0.1"]\n')
    from modcluster.proxy import ProxyFactory

    def proxy_factory(top):
        return next(s.factory for s in top
                    if isinstance(getattr(s, "factory", None), ProxyFactory))

    top = build(config, reactor)
    factory = proxy_factory(top)
    assert factory.sessions is not None and factory.sessions.max_ids == 5
    factory.sessions.seen("S1.n1", "n1", reactor.seconds())
    sites = [s.factory for s in top if isinstance(getattr(s, "factory", None), Site)]

    def get(path):
        # whichever listener serves the console (its own by default)
        for site in sites:
            proto = site.buildProtocol(None)
            t = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1),
                                hostAddress=IPv4Address("TCP", "127.0.0.1", 6666))
            proto.makeConnection(t)
            proto.dataReceived(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                               "Connection: close\r\n\r\n".encode())
            head, _, body = t.value().partition(b"\r\n\r\n")
            if head.startswith(b"HTTP/1.1 200"):
                if b"chunked" in head.lower():
                    body = b"".join(body.split(b"\r\n")[1::2])
                return body
        raise AssertionError(f"no listener serves {path}")

    assert b"SessionIDs" in get("/mod_cluster-manager") and b"S1.n1" in get("/mod_cluster-manager")
    assert json.loads(get("/api/v1/sessions"))["sessions"][0]["id"] == "S1.n1"
    off = build(parse_config('[manager]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
                             '[proxy]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'), reactor)
    assert proxy_factory(off).sessions is None


def test_worker_pool_merges_the_workers_sessions():
    from tests.unit.proxy.test_proxy_workers import ProcessReactor, registry_with_node

    from modcluster.config import parse_config
    from modcluster.proxy.workers import WorkerPool

    config = parse_config('[manager]\nmax_session_ids = 2\n[proxy]\n'
                          'listen = ["tcp:0:interface=127.0.0.1"]\nworkers = 2\n')
    reactor = ProcessReactor()
    pool = WorkerPool(reactor, config, registry_with_node(reactor), argv=["python"], env={})
    pool.startService()
    w0, w1 = reactor.processes
    w0.say("sessions", [["a", "n1", 1.0], ["b", "n1", 2.0]])
    w1.say("sessions", [["c", "n1", 3.0]])
    assert [e[0] for e in pool.sessions.entries(3.0)] == ["b", "c"]  # bounded to 2
    d = pool.stopService()
    for p in reactor.processes:
        p.end()
    assert d.called
