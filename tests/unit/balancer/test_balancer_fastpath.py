"""
choose() answers a request without session information (no sticky cookie name
in the Cookie header, no ';' in the path, UseAlias off) from facts memoised on
the routing snapshot.  These tests check that this gives exactly what the
general code gives: the same request with a cookie that names every sticky
cookie with an empty value (which carries no session) goes the general way.
"""

import attrs
from hypothesis import assume, given
from hypothesis import strategies as st

from modcluster.balancer import Decision, RoutingPolicy, choose
from modcluster.cluster.model import MEMO_MAX, MEMO_PATH_MAX

from tests.support.balancer_testlib import Cluster
from tests.unit.balancer.test_balancer_properties import build, cluster_st

FIELDS = ("node", "context", "balancer", "session_id", "session_route", "sticky",
          "route_changed", "strip", "cookie_name", "path_name", "domain", "retrying")

paths_st = st.sampled_from(["/", "/app", "/app/", "/app/x", "/app/x/y", "/apple", "/b/c",
                            "/zzz", "/app%2Fx", "/x/../app", "//app//x", "/b"])


def _outcome(d):
    if d.__class__ is Decision:
        return tuple(getattr(d, f) for f in FIELDS)
    return d


def _empty_cookie(table):
    return "; ".join(f"{b.sticky_cookie}=" for b in table.balancers.values()
                     if b.sticky_cookie) or None


@given(cluster_st(), st.lists(st.tuples(paths_st, st.frozensets(st.integers(1, 6),
                                                                  max_size=2)),
                              min_size=1, max_size=8),
       st.booleans())
def test_fast_path_decides_as_the_general_path(cluster, requests, level):
    balancers, nodes, policy = cluster
    policy = attrs.evolve(policy, use_alias=False)
    c = build(balancers, nodes, policy)
    if level:  # equal counters: ties between nodes of the same load
        for node in c.reg.table.nodes:
            node.rt.elected = 0
    table = c.reg.table
    general_cookie = _empty_cookie(table)
    assume(general_cookie is not None)  # no sticky cookie: nothing to compare against
    now = c.clock.seconds()
    for path, exclude in requests:
        for fast_cookie in (None, "theme=dark"):
            saved = [(n.rt, n.rt.elected, n.rt.vpass) for n in table.nodes]
            fast = choose(table, None, path, fast_cookie, now, policy, exclude)
            for rt, elected, vpass in saved:  # undo, so both see the same counters
                rt.elected, rt.vpass = elected, vpass
            general = choose(table, None, path, general_cookie, now, policy, exclude)
            assert _outcome(fast) == _outcome(general)
            if general.__class__ is Decision:
                # Both spread the load: counting the election moves the next one.
                assert general.sticky is False and general.session_id is None


def test_memo_is_per_snapshot_and_bounded():
    c = Cluster()
    c.node("n1", 100, contexts=("/app",))
    t1 = c.reg.table
    policy = RoutingPolicy()
    memo = policy.routes  # owned by the policy, following the snapshot
    assert choose(t1, None, "/app/x", None, 0.0, policy).node.route == "n1"
    assert memo.table is t1 and "/app/x" in memo.paths
    # A new snapshot (a new node) does not reuse the old one's facts.
    c.node("n2", 100, contexts=("/other",))
    t2 = c.reg.table
    assert t2 is not t1
    d = choose(t2, None, "/other/x", None, 0.0, policy)
    assert d.node.route == "n2"
    assert memo.table is t2 and list(memo.paths) == ["/other/x"]
    # The old snapshot still answers as it did.
    assert choose(t1, None, "/other/x", None, 0.0, policy).status == 404
    for i in range(MEMO_MAX + 10):
        choose(t2, None, f"/app/{i}", None, 0.0, policy)
        assert len(memo.paths) <= MEMO_MAX
    assert choose(t2, None, "/app/x", None, 0.0, policy).node.route == "n1"
    # Long paths are routed but not kept.
    memo.paths.clear()
    long_path = "/app/" + "x" * MEMO_PATH_MAX
    assert choose(t2, None, long_path, None, 0.0, policy).node.route == "n1"
    assert long_path not in memo.paths


def test_last_plain_path_object_skips_the_memo(monkeypatch):
    """
    The fast path remembers the last path (the str object) that needed no
    matching: a request with that very object (a remembered request head)
    is routed without the path tests and the memo lookup; an equal path in
    another object, or a path that needs matching, goes through the memo;
    a new snapshot forgets it.
    """
    from modcluster.balancer import _election

    c = Cluster()
    c.node("n1", 100, contexts=("/app",))
    c.node("n2", 100, contexts=("/other",))
    t1 = c.reg.table
    policy = RoutingPolicy()
    memo = policy.routes
    path = "/app/x"
    assert choose(t1, None, path, None, 0.0, policy).node.route == "n1"
    assert memo.last_path is path and memo.last_plain is memo.paths["/app/x"]
    memo.paths.clear()

    def no_lookup(*args):
        raise AssertionError("looked up")

    with monkeypatch.context() as m:
        m.setattr(_election, "_plain_route", no_lookup)
        for _ in range(3):
            assert choose(t1, None, path, None, 0.0, policy).node.route == "n1"
    other = "".join(["/other", "/x"])
    assert choose(t1, None, other, None, 0.0, policy).node.route == "n2"
    assert memo.last_path is other
    # an equal path in another object: the memo (emptied above: computed again)
    equal = "".join(["/app", "/x"])
    assert equal is not path
    assert choose(t1, None, equal, None, 0.0, policy).node.route == "n1"
    assert memo.last_path is equal
    # paths that need matching are never the last one
    for p in ("/app;jsessionid=a.n1", "/oth%65r/x", "/app/./x", "//other/x"):
        choose(t1, None, p, None, 0.0, policy)
        assert memo.last_path is equal
    assert choose(t1, None, "/oth%65r/x", None, 0.0, policy).node.route == "n2"
    # a new snapshot forgets it
    c.node("n3", 100, contexts=("/app",))
    t2 = c.reg.table
    assert choose(t2, None, "/other/y", None, 0.0, policy).node.route == "n2"
    assert memo.table is t2 and memo.last_path == "/other/y"
    monkeypatch.setattr(_election, "_plain_route", no_lookup)
    c.node("n4", 100, contexts=("/app",))
    t3 = c.reg.table
    try:
        choose(t3, None, equal, None, 0.0, policy)
    except AssertionError:
        pass
    else:
        raise AssertionError("the last path of the old snapshot was used")


def test_cookie_without_sticky_name_routes_like_no_cookie():
    c = Cluster()
    c.node("n1", 100, contexts=("/app",))
    c.reg.app("DISABLE-APP", "n1", ["localhost"], ["/app"])
    c.node("n2", 100, contexts=("/app",))
    c.reg.app("DISABLE-APP", "n2", ["localhost"], ["/app"])
    table = c.reg.table
    policy = RoutingPolicy()
    # Only DISABLED contexts: a request without a session is refused ...
    assert choose(table, None, "/app/x", "theme=dark", 0.0, policy).status == 503
    # ... one with a session may still go there (§2.3).
    d = choose(table, None, "/app/x", "JSESSIONID=abc.n2", 0.0, policy)
    assert d.node.route == "n2" and d.sticky


def test_fast_path_shares_one_decision_per_record():
    """
    Without a session, the Decision for a record is built once per snapshot and
    returned to every request routed there (a Decision is never changed); each
    election still counts, so the load still spreads.
    """
    c = Cluster()
    c.node("n1", 100, contexts=("/app",))
    c.node("n2", 100, contexts=("/app",))
    table = c.reg.table
    policy = RoutingPolicy()
    seen: dict = {}
    for _ in range(6):
        d = choose(table, None, "/app/x", None, 0.0, policy)
        assert d.__class__ is Decision and d.session_id is None and not d.sticky
        assert seen.setdefault(d.node.route, d) is d
    assert set(seen) == {"n1", "n2"}
    assert c.rt("n1").elected == 3 and c.rt("n2").elected == 3
    # The same record from another path of the same context: same facts.
    other = choose(table, None, "/app/y", None, 0.0, policy)
    assert _outcome(other) == _outcome(seen[other.node.route])
    # A new snapshot builds its own.
    c.node("n3", 100, contexts=("/other",))
    d = choose(c.reg.table, None, "/app/x", None, 0.0, policy)
    assert d.node.route in seen and d is not seen[d.node.route]
