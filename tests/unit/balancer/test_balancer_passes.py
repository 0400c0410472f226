"""
The smooth election's virtual passes are floats holding integers (CPython
adds and compares floats at the same cost whatever their size; ints past 2^30
leave their fast paths).  These tests check that the routes and the passes are
exactly those of the integer arithmetic used before, over many elections:
large starting passes, ties, load factors 1..100 (and beyond, in a table built
by hand), nodes joining and leaving, errors, ejections, slow start, runtimes
that share a warm_latest cell or not, the fast path and the general one.
"""

from hypothesis import given, settings
from hypothesis import strategies as st

from modcluster.balancer import Decision, RoutingPolicy, choose
from modcluster.cluster.model import (
    BalancerSettings,
    ContextEntry,
    ContextRuntime,
    ContextState,
    NodeEntry,
    NodeRuntime,
    NodeSettings,
    RoutingTable,
)

from tests.support.balancer_testlib import Cluster

_ENABLED = ContextState.ENABLED
_STOPPED = ContextState.STOPPED
_STRIDE = 1 << 24
BALANCER = BalancerSettings("mycluster")


def _int_stride(rt, now, policy):
    """The stride as the code computed it with int passes."""
    stride = _STRIDE // rt.lbfactor
    slow = policy.slow_start
    if slow > 0:
        w = now - rt.warm_from
        if w < slow:
            m = slow * policy.slow_start_min_share
            stride = int(stride * slow / (w if w > m else m))
    return stride


def _int_election(records, passes, now, policy, exclude, has_session):
    """
    The smooth election with int passes (C{passes}: runtime -> int, moved on
    for the winner), as the code did it: the runtime elected by the passes,
    or C{None} when no node of positive load is a candidate.
    """
    best = second = None
    for rec in records:
        state = rec.state
        if state is not _ENABLED and (state is _STOPPED or not has_session):
            continue
        rt = rec.node.rt
        f = rt.lbfactor
        if f <= 0 or rt.in_error or rt.removed or rec.node.id in exclude:
            continue
        if rt.ejected_until > now:
            continue
        v = passes[rt]
        if best is None or v < passes[best]:
            second, best = best, rt
        elif second is None or v < passes[second]:
            second = rt
    if best is not None:
        v = passes[best]
        if second is not None:
            lag = passes[second] - _int_stride(second, now, policy)
            if lag > v:
                v = lag
        passes[best] = v + _int_stride(best, now, policy)
    return best


def _table(nodes):
    """A table built by hand: one balancer, one context C{/} on C{nodes}
    ((node id, runtime) in record order)."""
    records = []
    for nid, rt in nodes:
        node = NodeEntry(nid, NodeSettings(route=f"n{nid}", port=8000 + nid), rt)
        records.append(ContextEntry(nid, "/", _ENABLED, node, 1, frozenset({"localhost"}),
                                    ContextRuntime()))
    entries = tuple(r.node for r in records)
    return RoutingTable(1, entries, {n.route: n for n in entries}, {BALANCER.name: BALANCER},
                        {"/": tuple(records)}, {})


_loads = st.one_of(st.integers(1, 100), st.sampled_from([1, 2, 3, 7, 100, 0, -1, 150, 1000]))
_passes = st.one_of(st.integers(0, 1 << 20), st.integers(0, 1 << 52),
                    st.sampled_from([0, (1 << 30) - 1, 1 << 30, 1 << 40, 1 << 52]))
_node = st.tuples(_loads, _passes, st.booleans())  # load, pass, shares the cell
_step = st.one_of(
    st.tuples(st.just("elect"), st.sampled_from([None, "theme=dark", "JSESSIONID=x.gone"]),
              st.frozensets(st.integers(1, 12), max_size=2), st.integers(1, 60)),
    st.tuples(st.just("load"), st.integers(0, 11), _loads),
    st.tuples(st.just("error"), st.integers(0, 11), st.booleans()),
    st.tuples(st.just("eject"), st.integers(0, 11), st.sampled_from([-5.0, 0.0, 3.0, 50.0])),
    st.tuples(st.just("warm"), st.integers(0, 11),
              st.sampled_from([-100.0, -20.0, -1.0, 0.0, 0.5, 10.0])),
    st.tuples(st.just("time"), st.sampled_from([0.001, 0.5, 1.0, 7.0, 40.0])),
    st.tuples(st.just("join"), _node),
    st.tuples(st.just("leave"), st.integers(0, 11)),
    st.tuples(st.just("lift"), st.integers(0, 11), _passes),
    st.tuples(st.just("tie"), st.integers(0, 11), st.integers(0, 11)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_node, min_size=1, max_size=6), st.lists(_step, max_size=40),
       st.sampled_from([0.0, 30.0]), st.sampled_from([0.1, 0.01, 0.5]))
def test_routes_and_passes_are_the_integer_arithmetics(nodes, steps, slow_start, min_share):
    policy = RoutingPolicy(slow_start=slow_start, slow_start_min_share=min_share)
    cell = [float("-inf")]  # the cell of the runtimes that share one (a registry's)
    now = 1000.0
    live = []  # (node id, runtime), record order
    passes = {}  # runtime -> int pass
    ids = iter(range(1, 1000))

    def join(load, start, shared):
        rt = NodeRuntime(warm_latest=cell if shared else None)
        rt.lbfactor = load
        rt.vpass = float(start)
        passes[rt] = start
        live.append((next(ids), rt))

    for spec in nodes:
        join(*spec)
    table = _table(live)
    for step in steps:
        kind = step[0]
        if kind == "elect":
            _, cookie, exclude, count = step
            for _ in range(count):
                d = choose(table, None, "/x", cookie, now, policy, exclude)
                want = _int_election(table.contexts["/"], passes, now, policy, exclude,
                                     cookie is not None and "JSESSIONID" in cookie)
                if want is not None:
                    assert d.__class__ is Decision and d.node.rt is want
                for _, rt in live:
                    assert rt.vpass.__class__ is float and rt.vpass == passes[rt]
            continue
        if kind == "join":
            join(*step[1])
            table = _table(live)
            continue
        if kind == "time":
            now += step[1]
            continue
        if not live:
            continue
        i = step[1] % len(live)
        rt = live[i][1]
        if kind == "load":
            rt.lbfactor = step[2]
        elif kind == "error":
            rt.in_error = step[2]
            rt.error_since = now
        elif kind == "eject":
            rt.ejected_until = now + step[2]
        elif kind == "warm":
            rt.warm_from = now + step[2]
        elif kind == "leave":
            del live[i]
            table = _table(live)
        elif kind == "lift":
            rt.vpass = float(step[2])
            passes[rt] = step[2]
        elif kind == "tie":
            other = live[step[2] % len(live)][1]
            rt.vpass = other.vpass
            passes[rt] = passes[other]


def test_many_elections_from_large_passes_through_the_registry():
    """
    A registry's nodes, load factors 1..100 and ties, 20 000 elections from
    passes past 2^40, one node joining on the way: the same routes and passes
    as with ints, and the passes stay floats (fast path and general path).
    """
    c = Cluster(slow_start=30.0)
    loads = [1, 2, 3, 50, 99, 100, 100]
    for i, load in enumerate(loads):
        c.node(f"n{i}", load)
    passes = {}
    for i in range(len(loads)):
        rt = c.rt(f"n{i}")
        start = (1 << 40) + (i // 2) * 12345  # pairs of equal passes: ties
        rt.vpass = float(start)
        passes[rt] = start
    c.clock.advance(100.0)  # out of slow start
    for n in range(20_000):
        if n == 10_000:
            c.node("late", 7)  # slow start from here on
            passes[c.rt("late")] = 0
        cookie = "JSESSIONID=x.gone" if n % 3 == 0 else None
        table = c.reg.table
        d = choose(table, None, "/app", cookie, c.clock.seconds(), c.policy)
        want = _int_election(table.longest_match("/app"), passes, c.clock.seconds(),
                             c.policy, frozenset(), cookie is not None)
        assert d.node.rt is want
        if n % 97 == 0:
            c.clock.advance(0.01)
    for rt, v in passes.items():
        assert rt.vpass.__class__ is float and rt.vpass == v
    assert max(passes.values()) > 1 << 40


def test_passes_are_floats():
    """Passes are floats from the start and stay so, whatever path moved them
    (ints past 2^30 would slow every election down)."""
    c = Cluster(slow_start=30.0)
    c.node("a", 1)
    c.node("b", 100)
    assert c.rt("a").vpass.__class__ is float
    for _ in range(10):
        c.choose()  # slow start: _advance
    c.clock.advance(60.0)
    for _ in range(10):
        c.choose()  # the inlined advance
        c.choose(cookie="JSESSIONID=x.gone")  # the general path
    for route in ("a", "b"):
        assert c.rt(route).vpass.__class__ is float and c.rt(route).vpass > 0
