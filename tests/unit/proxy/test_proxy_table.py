"""
The data plane's routing table: a C{ProxyFactory} whose C{table} is a
registry's (or a worker mirror's) C{snapshot} reads C{table_now}, which the
registry keeps equal to its table (or None after a change), instead of
calling per request; any other callable is called per request.  Either way
a request is routed on the table as it is when the request comes.
"""

from twisted.internet.testing import MemoryReactorClock

from modcluster.cluster.mirror import Mirror, encode_snapshot
from modcluster.config import ProxyConfig
from modcluster.proxy import ProxyFactory

from tests.support.proxy_testlib import Harness, parse_requests, parse_responses

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_table_now_follows_the_registry():
    h = Harness()
    registry = h.registry
    assert h.factory.table_now is registry.table  # (the empty table: built)
    h.node("n1", 8081)
    assert h.factory.table_now is None  # dropped with the registry's
    table = h.factory.table()
    assert table is registry.table and h.factory.table_now is table
    h.registry.apply_status("n1", 50, True)  # no structural change: kept
    assert h.factory.table_now is table
    h.node("n2", 8082)
    assert h.factory.table_now is None
    assert registry.table is not table  # built by the property: pushed too
    assert h.factory.table_now is registry.table
    h.registry.app("DISABLE-APP", "n2", ["localhost"], ["/"])
    assert h.factory.table_now is None
    assert h.factory.table() is registry.table  # built by snapshot
    assert h.factory.table_now is registry.table


def test_two_factories_follow_one_registry():
    h = Harness()
    other = ProxyFactory(h.reactor, h.config, h.registry.snapshot, lambda r, m: None,
                         lambda r: None)
    h.node("n1", 8081)
    assert h.factory.table_now is None and other.table_now is None
    table = other.table()
    assert h.factory.table_now is table and other.table_now is table


def test_any_other_callable_is_called_per_request():
    h = Harness()
    h.node("n1", 8081)
    calls = []

    def table():
        calls.append(1)
        return h.registry.table

    f = ProxyFactory(h.reactor, h.config, table, lambda r, m: None, lambda r: None)
    assert f.table_now is None
    f.table()
    assert f.table_now is None
    h.factory = f
    f.startFactory()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert len(calls) == 2
    h.accept().respond(OK)
    assert parse_responses(c.received())[0].body == b"ok"


def test_a_remembered_head_is_routed_on_the_table_after_a_change():
    """
    Kept-alive requests with a remembered head (the path that reads
    table_now): after n1's context is removed and n2 registered, the next
    request goes to n2.
    """
    h = Harness()
    h.node("n1", 8081)
    c = h.client()
    head = b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n"
    n1 = None
    for _ in range(3):  # seen once, then remembered, then served from memory
        c.send(head)
        n1 = h.accept(8081) if n1 is None else n1
        n1.respond(OK)
    assert c.proto._last_head is not None  # the remembered head's path
    assert h.factory.table_now is h.registry.table
    h.registry.app("REMOVE-APP", "n1", ["localhost"], ["/"])
    h.node("n2", 8082)
    assert h.factory.table_now is None
    c.send(head)
    n2 = h.accept(8082)
    assert parse_requests(n2.received())[0].url == b"/x"
    n2.respond(OK)
    assert [r.body for r in parse_responses(c.received())] == [b"ok"] * 4
    assert h.factory.table_now is h.registry.table
    assert h.registry.table.by_route["n2"].rt.requests == 1
    assert h.counters_idle()


def test_table_now_follows_a_worker_mirror():
    h = Harness()
    h.node("n1", 8081)
    mirror = Mirror(0.0, 5.0)
    f = ProxyFactory(MemoryReactorClock(), ProxyConfig(), mirror.snapshot, lambda r, m: None,
                     lambda r: None)
    empty = f.table_now
    assert empty is not None and not empty.nodes
    mirror.load(encode_snapshot(h.registry.table))
    assert f.table_now is None
    table = f.table()
    assert f.table_now is table and [n.route for n in table.nodes] == ["n1"]
