"""
Beyond mod_proxy_cluster (docs/balancing.md): smooth shares, slow start,
outlier ejection with a panic threshold, the retry budget.  Deterministic: the
time is a task.Clock, every request an explicit election.
"""

from collections import Counter

import pytest

from modcluster.balancer import Decision, Refusal
from modcluster.cluster import model
from modcluster.balancer._health import RetryBudget, may_eject, ramp, record_failure

from tests.support.balancer_testlib import Cluster


def _windows(c, seconds, per_second, tick=True):
    """Route per_second requests in each of `seconds` one-second windows; the
    counts per window."""
    out = []
    for _ in range(seconds):
        out.append(c.spread(per_second))
        c.clock.advance(1)
        if tick:
            c.reg.tick()
    return out


# -- smooth shares ------------------------------------------------------------------


def test_smooth_faq_proportions_with_recomputation():
    """The FAQ's loads 20/90/1: 1001 new sessions give 181/811/9, with the
    watchdog recomputing lbstatus every second as it does in service (the
    smooth election does not read lbstatus)."""
    c = Cluster()
    for route, load in (("n20", 20), ("n90", 90), ("n1", 1)):
        c.node(route, load)
    c.clock.advance(60)  # past the slow start
    counts = Counter()
    for k in range(1, 1002):
        counts[c.route_of()] += 1
        if k % 100 == 0:
            c.clock.advance(1)
            c.reg.tick()
    assert counts == Counter(n20=181, n90=811, n1=9)


@pytest.mark.parametrize("per_second", [20, 50, 100, 333])
def test_smooth_share_in_every_second_within_5_points(per_second):
    """Loads 90 and 20 (long-run share of the light node 20/110 = 18.2 %): the
    share in every 1 s window stays within ±5 points."""
    c = Cluster()
    c.node("heavy", 90)
    c.node("light", 20)
    c.clock.advance(60)
    windows = _windows(c, 30, per_second)
    long_run = 20 / 110
    for w in windows:
        assert abs(w["light"] / per_second - long_run) <= 0.05, w


def _staggered(**policy):
    """Loads 90 and 20, registered 2 s apart (so their LBstatusRecalTime
    intervals end at different times, as in service)."""
    c = Cluster(**policy)
    c.node("heavy", 90)
    c.clock.advance(2)
    c.node("light", 20)
    c.clock.advance(60)
    c.reg.tick()
    return c


def test_smooth_share_with_staggered_intervals_and_ticks():
    """Nodes registered 2 s apart, the watchdog ticking 10 times a second: the
    share of each 1 s window stays within ±5 points."""
    c = _staggered()
    for _ in range(30):
        counts = Counter()
        for _ in range(10):
            counts.update(c.spread(7))
            c.clock.advance(0.1)
            c.reg.tick()
        assert abs(counts["light"] / 70 - 20 / 110) <= 0.05, counts


def test_new_node_does_not_take_all_requests():
    """A node joining a busy context starts at the others' virtual pass: with
    slow start it takes a small share of the next 100 requests, not 100 %."""
    c = Cluster()
    c.node("a", 50)
    c.node("b", 50)
    c.clock.advance(60)
    _windows(c, 10, 100)  # busy: 1 000 requests over 10 s
    c.node("new", 50)
    counts = c.spread(100)
    assert 1 <= counts["new"] <= 10
    # Without slow start it gets its third at once, no more.
    c2 = Cluster(slow_start=0)
    c2.node("a", 50)
    c2.node("b", 50)
    c2.spread(1000)
    c2.node("new", 50)
    assert 30 <= c2.spread(99)["new"] <= 36


# -- slow start -----------------------------------------------------------------------


def test_slow_start_ramps_linearly_to_the_full_share():
    c = Cluster(slow_start=30.0, slow_start_min_share=0.1)
    c.node("old", 50)
    c.clock.advance(100)
    c.node("new", 50)
    shares = []
    for _ in range(40):
        shares.append(c.spread(100)["new"])
        c.clock.advance(1)
    # share of the new node: weight ramp/(1+ramp) of the pair
    assert shares[0] <= 10
    assert shares[0] < shares[10] < shares[20] < shares[29]
    assert all(45 <= s <= 55 for s in shares[31:])


def test_slow_start_after_leaving_error():
    c = Cluster()
    c.node("a", 50)
    c.node("b", 50)
    c.clock.advance(100)
    c.reg.set_error("b", "connect refused")
    assert c.spread(50) == Counter(a=50)
    c.clock.advance(5)
    c.reg.recovery_probe_result("b", True)
    assert not c.rt("b").in_error
    assert c.rt("b").warm_from == c.clock.seconds()
    assert c.spread(100)["b"] <= 10
    c.clock.advance(31)
    assert 45 <= c.spread(100)["b"] <= 55


def test_enable_app_starts_slow_start():
    c = Cluster()
    c.node("a", 50)
    c.node("b", 50, command="DISABLE-APP")
    c.clock.advance(100)
    assert c.spread(20) == Counter(a=20)
    c.set_state("b", "ENABLE-APP")
    assert c.rt("b").warm_from == 100
    assert c.spread(100)["b"] <= 10


def test_slow_start_set_on_a_runtime_alone_is_seen_by_the_election():
    """The election skips its per-node slow start test while no runtime of the
    registry got a warm_from within slow_start (NodeRuntime.warm_latest, one
    cell per registry): a warm_from set on the runtime alone, as a worker's
    mirror does without a new snapshot, still ramps the node up from the next
    request on.  Another registry's runtimes (another cell) change nothing
    here."""
    c = Cluster()
    other = Cluster()
    c.node("a", 50)
    c.node("b", 50)
    other.node("x", 50)
    cell = c.reg.warm_latest
    assert c.rt("a").warm_latest is cell and c.rt("b").warm_latest is cell
    assert other.rt("x").warm_latest is other.reg.warm_latest is not cell
    c.clock.advance(100)
    assert c.spread(100) == Counter(a=50, b=50)  # no node ramps up: the short test
    other.rt("x").warm_from = 100.0
    assert cell[0] == 0.0 and other.reg.warm_latest[0] == 100.0
    c.rt("b").warm_from = c.clock.seconds()
    assert cell[0] == 100
    assert c.spread(100)["b"] <= 10
    c.rt("a").warm_from = 50.0  # an earlier time leaves the bound where it is
    assert cell[0] == 100
    c.clock.advance(15)
    assert 20 <= c.spread(100)["b"] <= 45
    c.clock.advance(16)
    assert 49 <= c.spread(100)["b"] <= 51


def test_slow_start_tested_per_node_when_candidates_share_no_cell():
    """A table built by hand from runtimes that share no warm_latest cell (of
    two registries): the election tests slow start per node on every request,
    so a node that ramps up still gets its small share."""
    from modcluster.balancer import RoutingPolicy, choose
    from modcluster.cluster.model import (
        ContextEntry,
        ContextRuntime,
        ContextState,
        NodeEntry,
        NodeRuntime,
        NodeSettings,
        RoutingTable,
    )

    b = model.BalancerSettings("mycluster")
    records = []
    runtimes = []
    for i, route in enumerate(("a", "b")):
        rt = NodeRuntime()  # (a cell of its own each)
        rt.lbfactor = 50
        runtimes.append(rt)
        node = NodeEntry(i + 1, NodeSettings(route=route, port=8000 + i), rt)
        records.append(ContextEntry(i + 1, "/", ContextState.ENABLED, node, 1,
                                    frozenset({"localhost"}), ContextRuntime()))
    nodes = tuple(r.node for r in records)
    table = RoutingTable(1, nodes, {n.route: n for n in nodes}, {"mycluster": b},
                         {"/": tuple(records)}, {})
    policy = RoutingPolicy(slow_start=30.0, slow_start_min_share=0.1)
    runtimes[1].warm_from = 100.0
    got = Counter(choose(table, None, "/", None, 101.0, policy).node.route for _ in range(100))
    assert got["b"] <= 12


def test_ramp_function():
    class RT:
        warm_from = 10.0

    assert ramp(RT, 10.0, 30, 0.1) == 0.1
    assert ramp(RT, 25.0, 30, 0.1) == 0.5
    assert ramp(RT, 40.0, 30, 0.1) == 1.0
    assert ramp(RT, 11.0, 0, 0.1) == 1.0


# -- outlier ejection --------------------------------------------------------------------


def _fail(c, route, n, policy=None):
    node = c.reg.table.by_route[route]
    result = None
    for _ in range(n):
        result = record_failure(c.reg.table, node, c.clock.seconds(), policy or c.policy)
    return result


def test_consecutive_failures_eject_for_a_growing_time():
    c = Cluster(eject_failures=3, eject_time=10, eject_max_time=100)
    for r in ("a", "b", "c", "d"):
        c.node(r, 50)
    c.clock.advance(60)
    assert _fail(c, "a", 2) is None
    assert _fail(c, "a", 1) == 10
    assert c.rt("a").ejected_until == 70
    assert "a" not in c.spread(30)
    c.clock.advance(10)  # the ejection is over: back, through slow start
    assert c.rt("a").warm_from == 70
    assert "a" in c.spread(100)
    assert _fail(c, "a", 3) == 20  # again soon after: twice as long
    c.clock.advance(20)
    assert _fail(c, "a", 3) == 40
    c.clock.advance(40)
    assert _fail(c, "a", 3) == 80
    c.clock.advance(80)
    assert _fail(c, "a", 3) == 100  # the maximum
    c.clock.advance(100 + 101)  # healthy longer than the maximum: starts again
    assert _fail(c, "a", 3) == 10
    assert c.rt("a").ejections == 1


def test_an_answer_resets_the_consecutive_count():
    from modcluster.balancer._health import record_success

    c = Cluster(eject_failures=3)
    c.node("a", 50)
    c.node("b", 50)
    _fail(c, "a", 2)
    record_success(c.rt("a"))
    assert _fail(c, "a", 2) is None
    assert c.rt("a").ejected_until < c.clock.seconds()


def test_ejection_share_is_bounded_per_context():
    c = Cluster(eject_failures=1, eject_max_share=0.5)
    for r in ("a", "b", "c", "d"):
        c.node(r, 50)
    assert _fail(c, "a", 1) is not None
    assert _fail(c, "b", 1) is not None
    assert _fail(c, "c", 1) is None  # 2 of 4 already out
    assert not may_eject(c.reg.table, c.reg.table.by_route["d"], 0.0, 0.5)
    assert c.spread(20).keys() == {"c", "d"}


def test_single_node_context_is_never_ejected():
    c = Cluster(eject_failures=1)
    c.node("only", 50)
    assert _fail(c, "only", 5) is None
    assert c.route_of() == "only"


def test_panic_routes_to_ejected_nodes_when_all_are():
    """Ejection share checked per context; if every usable node of the
    request's context is ejected anyway (here: ejected for another context),
    route to them rather than refuse."""
    c = Cluster(eject_failures=1, eject_max_share=1.0)
    c.node("a", 50)
    c.node("b", 50)
    _fail(c, "a", 1)
    _fail(c, "b", 1)
    d = c.choose()
    assert isinstance(d, Decision)
    c.reg.set_error("a", "x")
    c.reg.set_error("b", "x")
    assert isinstance(c.choose(), Refusal)


def test_sticky_request_leaves_an_ejected_node_unless_forced():
    """A session on an ejected node fails over like one on a node in error;
    with StickySessionForce (which would refuse it) it stays on the node."""
    from modcluster.cluster.model import BalancerSettings

    c = Cluster(BalancerSettings("mycluster", sticky_force=False), eject_failures=1)
    c.node("a", 50)
    c.node("b", 50)
    _fail(c, "a", 1)
    d = c.choose(cookie="JSESSIONID=x.a")
    assert d.node.route == "b" and d.route_changed
    forced = Cluster(BalancerSettings("mycluster", sticky_force=True), eject_failures=1)
    forced.node("a", 50)
    forced.node("b", 50)
    _fail(forced, "a", 1)
    d = forced.choose(cookie="JSESSIONID=x.a")
    assert d.node.route == "a" and d.sticky


def test_ejection_off_with_zero_failures():
    c = Cluster(eject_failures=0)
    c.node("a", 50)
    c.node("b", 50)
    assert _fail(c, "a", 100) is None


def test_general_path_skips_ejected_and_keeps_smooth_shares():
    """A request with a session cookie of an unknown route goes the general way."""
    c = Cluster(eject_failures=1)
    c.node("a", 50)
    c.node("b", 50)
    c.node("c", 50)
    c.clock.advance(60)
    _fail(c, "a", 1)
    counts = c.spread(100, cookie="JSESSIONID=x.zzz")
    assert counts.keys() == {"b", "c"}
    assert abs(counts["b"] - counts["c"]) <= 1


def test_deterministic_failover_skips_ejected():
    c = Cluster(eject_failures=1, deterministic_failover=True)
    c.node("a", 50)
    c.node("b", 50)
    c.node("c", 50)
    _fail(c, "b", 1)
    routes = {c.route_of(cookie=f"JSESSIONID={i}abc.zzz") for i in range(30)}
    assert routes == {"a", "c"}


# -- retry budget ------------------------------------------------------------------


def test_retry_budget_share_of_the_window():
    b = RetryBudget(share=0.2, window=10, minimum=3)
    b.observe({"lb": 0})
    assert [b.allow("lb") for _ in range(4)] == [True, True, True, False]
    b.observe({"lb": 100})  # 100 requests in the window: 20 replays
    assert sum(b.allow("lb") for _ in range(30)) == 17  # 3 already used
    assert b.refused == 14
    for _ in range(11):  # the window moves on: the old replays age out
        b.observe({"lb": 100})
    assert b.allow("lb")


def test_retry_budget_forgets_balancers_that_went_away():
    b = RetryBudget()
    b.observe({"lb": 5})
    b.observe({})
    assert b.used("lb") == (0, 0)


def test_retry_budget_counts_the_requests_of_the_current_second():
    b = RetryBudget(share=0.2, window=10, minimum=3)
    # before the first once-a-second sample: the requests so far count
    assert sum(b.allow("lb", 100) for _ in range(30)) == 20
    b.observe({"lb": 100})
    # the window now starts at that sample: 100 more requests, 20 more replays
    assert sum(b.allow("lb", 200) for _ in range(30)) == 20


def test_retry_budget_of_a_young_balancer_counts_every_request_so_far():
    """
    While the balancer's history is younger than the window, the window
    reaches back to its start: the requests before the first once-a-second
    sample count.  (It started at that sample: a burst of failovers in the
    first seconds after a start, when a node died, was measured against the
    few requests made since the sample, and refused past the minimum.)
    """
    b = RetryBudget(share=0.2, window=10, minimum=3)
    b.observe({"lb": 100})  # 100 requests in the first second
    assert sum(b.allow("lb", 110) for _ in range(30)) == 22  # 0.2 x 110
    for _ in range(9):
        b.observe({"lb": 110})
    assert not b.allow("lb", 110)
    b.observe({"lb": 110})  # the window is full: it starts at the first sample
    assert b.used("lb") == (22, 10)
    for _ in range(10):  # the old replays age out
        b.observe({"lb": 110})
    assert b.allow("lb", 120)


def test_warm_from_ahead_of_the_coarse_clock():
    """The data plane's clock is coarse (once a second): a node warmed a bit
    'in the future' is at its minimum share, and with slow start off at its
    full share, never a division by zero."""
    for slow, expected in ((0, (45, 55)), (30, (1, 10))):
        c = Cluster(slow_start=slow)
        c.node("a", 50)
        c.node("b", 50)
        c.rt("a").warm_from = float("-inf")
        c.rt("b").warm_from = c.clock.seconds() + 0.5
        low, high = expected
        assert low <= c.spread(100)["b"] <= high
        assert low <= c.spread(100, cookie="JSESSIONID=x.zzz")["b"] <= high


def test_retry_budget_counts_requests_only_once_the_minimum_is_reached():
    """The request counter (a sum over the balancer's nodes) is asked for
    only when the replays of the window reach the minimum."""
    b = RetryBudget(share=0.2, window=10, minimum=3)
    b.observe({"lb": 0})
    asked = []

    def total():
        asked.append(1)
        return 10

    assert [b.allow("lb", total) for _ in range(3)] == [True, True, True]
    assert asked == []
    assert not b.allow("lb", total)  # 3 replays >= 0.2 x 10 requests
    assert asked == [1]
