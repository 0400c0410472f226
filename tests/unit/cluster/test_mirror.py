"""
The feed between the control process and the data-plane workers
(modcluster/cluster/mirror.py): snapshots rebuild an equivalent routing table,
node updates reach it, worker counters fold back into the registry.
"""

import gc
import json
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from modcluster.balancer import Decision, RoutingPolicy, choose
from modcluster.cluster.mirror import CounterSink, Mirror, encode_node_updates, encode_snapshot
from modcluster.cluster.model import BalancerSettings, NodeSettings
from modcluster.cluster.registry import Limits, Registry


def cluster():
    clock = Clock()
    clock.advance(1000)
    reg = Registry(clock, Limits(lbstatus_recalc_time=5.0))
    sticky = BalancerSettings("mycluster", sticky_force=False)
    other = BalancerSettings("other", sticky_cookie="SID", sticky_path="sid")
    for i, (bal, domain, load) in enumerate([(sticky, "d1", 50), (sticky, "d1", 30),
                                             (sticky, "d2", 0), (other, "", 20)], 1):
        reg.config(bal, NodeSettings(route=f"n{i}", balancer=bal.name, domain=domain,
                                     host="127.0.0.1", port=9000 + i, type="http"))
        reg.app("ENABLE-APP", f"n{i}", ["localhost", f"host{i}"], ["/app", "/"])
        reg.app("ENABLE-APP", f"n{i}", ["localhost"], ["/app/deep"])
        assert reg.apply_status(f"n{i}", load, True)
    reg.app("DISABLE-APP", "n2", ["localhost"], ["/app"])
    reg.app("STOP-APP", "n1", ["localhost"], ["/app/deep"])
    return clock, reg


def mirrored(reg, now=1000.0):
    m = Mirror(now, 5.0)
    # the snapshot crosses a process boundary as a pickle
    m.load(pickle.loads(pickle.dumps(encode_snapshot(reg.table))))
    return m


def shape(table):
    return (
        table.generation,
        [(n.id, n.settings, n.rt.lbfactor, n.rt.in_error) for n in table.nodes],
        sorted(table.by_route),
        table.balancers,
        {p: [(c.id, c.state, c.node.route, c.vhost_id, c.aliases) for c in recs]
         for p, recs in table.contexts.items()},
        {a: {p: [c.id for c in recs] for p, recs in m.items()}
         for a, m in table.by_alias.items()},
        table.removed_domains,
    )


def test_snapshot_rebuilds_an_equivalent_table():
    _, reg = cluster()
    m = mirrored(reg)
    assert shape(m.table) == shape(reg.table)
    # the worker's records are its own
    assert all(a.rt is not b.rt for a, b in zip(m.table.nodes, reg.table.nodes))
    assert [a.rt.serial for a in m.table.nodes] == [b.rt.serial for b in reg.table.nodes]


def test_snapshot_method_is_the_table():
    """Mirror.snapshot (a worker's table callable) gives what table gives,
    rebuilt after each snapshot loaded, the same between them."""
    _, reg = cluster()
    m = mirrored(reg)
    t1 = m.snapshot()
    assert t1 is m.table and m.snapshot() is t1
    m.load(pickle.loads(pickle.dumps(encode_snapshot(reg.table))))
    t2 = m.snapshot()
    assert t2 is not t1 and t2 is m.table and shape(t2) == shape(reg.table)


REQUESTS = st.tuples(
    st.sampled_from(["localhost", "host1", "host4", "nowhere"]),
    st.sampled_from(["/", "/app", "/app/x", "/app/deep/y", "/other", "/app;jsessionid=a.n2"]),
    st.sampled_from([None, "JSESSIONID=x.n1", "JSESSIONID=x.n3", "SID=y.n4", "JSESSIONID=z.gone"]),
    st.booleans(),
)


@given(st.lists(REQUESTS, min_size=1, max_size=30))
def test_mirror_routes_like_the_registry(requests):
    """The same requests get the same decisions from both tables, counters included."""
    clock, reg = cluster()
    m = mirrored(reg)
    for host, path, cookie, use_alias in requests:
        policy = RoutingPolicy(use_alias=use_alias)
        a = choose(reg.table, host, path, cookie, clock.seconds(), policy)
        b = choose(m.table, host, path, cookie, clock.seconds(), policy)
        assert type(a) is type(b)
        if isinstance(a, Decision):
            assert (a.node.route, a.context.id, a.session_id, a.session_route) == \
                (b.node.route, b.context.id, b.session_id, b.session_route)
        else:
            assert (a.status, a.reason) == (b.status, b.reason)
    assert [n.rt.elected for n in m.table.nodes] == [n.rt.elected for n in reg.table.nodes]


def test_counters_survive_snapshots_and_new_nodes_start_fresh():
    _, reg = cluster()
    m = mirrored(reg)
    m.table.by_route["n1"].rt.elected = 7
    reg.app("ENABLE-APP", "n1", ["localhost"], ["/new"])
    m.load(encode_snapshot(reg.table))
    assert m.table.by_route["n1"].rt.elected == 7
    assert "/new" in m.table.contexts
    # n1 registers again as another backend: a new record, new counters
    reg.config(BalancerSettings("mycluster"),
               NodeSettings(route="n1", host="127.0.0.1", port=9999, type="http"))
    m.load(encode_snapshot(reg.table))
    assert m.table.by_route["n1"].rt.elected == 0


def test_node_updates_reach_the_table():
    _, reg = cluster()
    m = mirrored(reg)
    seen = []
    reg.on_node_change(seen.append)
    reg.apply_status("n1", 80, True)
    reg.set_error("n2", "connect refused")
    reg.apply_status("n3", 0, True)  # unchanged: no update
    assert [rt.serial for rt in seen] == [reg.node("n1").rt.serial, reg.node("n2").rt.serial]
    m.update(pickle.loads(pickle.dumps(encode_node_updates(seen))))
    n1, n2 = m.table.by_route["n1"].rt, m.table.by_route["n2"].rt
    assert n1.lbfactor == 80 and not n1.in_error
    assert n2.in_error and n2.error_since == reg.node("n2").rt.error_since
    m.update(((999999, 1, False, 0.0),))  # unknown serial: ignored


def test_local_failure_and_recovery():
    _, reg = cluster()
    m = mirrored(reg)
    m.node_failed("n1", 1234.0)
    rt = m.table.by_route["n1"].rt
    assert rt.in_error and rt.error_since == 1234.0
    m.node_answered("n1")
    assert not rt.in_error
    m.node_failed("unknown", 1.0)  # no effect, no error


def test_local_lbstatus_from_own_elections():
    _, reg = cluster()
    m = mirrored(reg, now=1000.0)
    rt = m.table.by_route["n1"].rt  # lbfactor 50
    rt.elected = 10
    m.tick(1002.0)
    assert rt.lbstatus == 0  # interval (5 s) not over
    m.tick(1005.0)
    assert rt.lbstatus == 10 * 1000 // 50 and rt.oldelected == 10


def report_roundtrip(m):
    """A report as the control process receives it (JSON)."""
    r = m.report()
    return None if r is None else tuple(json.loads(json.dumps(list(r))))


def test_reports_fold_into_the_registry_from_several_workers():
    _, reg = cluster()
    sink = CounterSink()
    sink.track(reg.table)
    w1, w2 = mirrored(reg), mirrored(reg)
    assert report_roundtrip(w1) is None  # nothing happened yet
    for m, n in ((w1, 3), (w2, 4)):
        node = m.table.by_route["n1"]
        ctx = next(c for c in m.table.contexts["/app"] if c.node is node)
        node.rt.elected += n
        node.rt.requests += n
        node.rt.read += 100 * n
        node.rt.transferred += 10 * n
        node.rt.busy += 1
        ctx.rt.requests += n
        ctx.rt.in_flight += 1
    sink.apply("w1", report_roundtrip(w1))
    sink.apply("w2", report_roundtrip(w2))
    rt = reg.node("n1").rt
    assert (rt.elected, rt.requests, rt.read, rt.transferred, rt.busy) == (7, 7, 700, 70, 2)
    ctx = reg.find_context("n1", "localhost", "/app")
    assert (ctx.rt.requests, ctx.rt.in_flight) == (7, 2)
    assert reg.app("STOP-APP", "n1", ["localhost"], ["/app"]).requests == 2

    # worker 1 finishes its request; only the changes travel
    node = w1.table.by_route["n1"]
    node.rt.busy -= 1
    next(c for c in w1.table.contexts["/app"] if c.node is node).rt.in_flight -= 1
    nodes, contexts = report_roundtrip(w1)
    assert list(nodes) == [str(rt.serial)] and list(contexts) == [str(ctx.rt.serial)]
    sink.apply("w1", (nodes, contexts))
    assert (rt.busy, ctx.rt.in_flight, rt.elected) == (1, 1, 7)
    assert report_roundtrip(w1) is None

    # worker 2 dies with a request in flight: its levels are taken back, totals stay
    sink.forget("w2")
    assert (rt.busy, ctx.rt.in_flight, rt.elected, rt.requests) == (0, 0, 7, 7)


def test_removed_node_keeps_reporting_until_idle():
    """The registry purges a removed node only at busy 0: the worker must say so."""
    clock, reg = cluster()
    sink = CounterSink()
    sink.track(reg.table)
    m = mirrored(reg)
    wrt = m.table.by_route["n4"].rt
    wrt.busy = 1
    m.table.by_route["n1"].rt.elected = 2
    n1_serial = reg.node("n1").rt.serial
    sink.apply("w", m.report())
    reg.app("REMOVE-APP", "n4", wildcard=True)
    m.load(encode_snapshot(reg.table))
    assert "n4" not in m.table.by_route and wrt.removed
    clock.advance(60)
    reg.tick()
    assert reg.node("n4") is not None  # busy: not purged
    wrt.busy = 0
    sink.apply("w", m.report())
    assert m.report() is None  # retired record dropped once reported idle
    reg.tick()
    assert reg.node("n4") is None
    # the control process forgets the purged node's counters at the next snapshot
    # (the registry's record is gone, so the weak index no longer has it)
    gc.collect()
    sink.track(reg.table)
    assert set(sink._last_nodes["w"]) == {n1_serial}


def test_malformed_reports_are_refused():
    _, reg = cluster()
    sink = CounterSink()
    sink.track(reg.table)
    serial = reg.node("n1").rt.serial
    with pytest.raises(ValueError):
        sink.apply("w", ({str(serial): [1, 2]}, {}))
    with pytest.raises(ValueError):
        sink.apply("w", ({"x": [1, 2, 3, 4, 5]}, {}))
    sink.apply("w", ({"424242": [1, 1, 1, 1, 1]}, {}))  # unknown record: ignored


def test_slow_start_and_ejection_reach_the_workers():
    """Issue 17: the control process's slow start and ejection times are
    applied to a worker's records (by snapshot and by node update)."""
    clock = Clock()
    reg = Registry(clock)
    b = BalancerSettings("mycluster")
    reg.config(b, NodeSettings(route="n1", balancer=b.name, host="127.0.0.1", port=8081))
    reg.app("ENABLE-APP", "n1", ["localhost"], ["/app"])
    clock.advance(7)
    reg.apply_status("n1", 50, True)
    m = Mirror()
    m.load(encode_snapshot(reg.table))
    [entry] = m.table.nodes
    assert entry.rt.warm_from == 7
    # the mirror's runtimes share its cell (the election's slow start bound),
    # not the control process's registry's
    assert entry.rt.warm_latest is m.warm_latest is not reg.warm_latest
    assert m.warm_latest == [7]
    seen = []
    reg.on_node_change(seen.append)
    reg.node_ejected("n1", 30.0, "resets")
    m.update(encode_node_updates(seen))
    assert entry.rt.ejected_until == 37 and entry.rt.warm_from == 37
    assert m.warm_latest == [37]
