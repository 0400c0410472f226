"""
Node election (balancing.md §3, §8), context matching (§2.2) and the refusals
of choose().
"""

from collections import Counter

import pytest

from modcluster.balancer import Decision, Refusal, RoutingPolicy
from modcluster.cluster.model import BalancerSettings, ContextState

from tests.support.balancer_testlib import Cluster, score


# -- §3.3 worked example ---------------------------------------------------------

def test_worked_example_a100_b50_request_by_request():
    c = Cluster()
    c.node("A", 100)
    c.node("B", 50)
    a, b = c.rt("A"), c.rt("B")
    # The table of balancing.md §3.3: scores before each request, then the choice.
    expected = [(0, 0, "A"), (10, 0, "B"), (10, 20, "A"), (20, 20, "A"), (30, 20, "B"),
                (30, 40, "A")]
    for a_score, b_score, chosen in expected:
        assert (score(a), score(b)) == (a_score, b_score)
        d = c.choose("/app/page")
        assert isinstance(d, Decision)
        assert d.node.route == chosen
        assert d.context.path == "/app"
        assert d.context.node is d.node
        assert not d.sticky and not d.route_changed and d.strip is None
    assert (a.elected, b.elected) == (4, 2)


def test_worked_example_continues_smoothly_after_recomputation():
    c = Cluster()
    c.node("A", 100)
    c.node("B", 50)
    # One interval where A served 200 and B 100 requests ...
    assert c.spread(300) == Counter(A=200, B=100)
    c.recalc()
    a, b = c.rt("A"), c.rt("B")
    # ... gives lbstatus 200*1000/100 == 100*1000/50 == 2000 for both,
    assert (a.lbstatus, b.lbstatus) == (2000, 2000)
    # and the next interval starts exactly like the first one.
    assert [c.route_of() for _ in range(6)] == ["A", "B", "A", "A", "B", "A"]


# -- the mod_cluster FAQ case: loads 20 / 90 / 1 ------------------------------------

def _faq_cluster(**policy):
    c = Cluster(**policy)
    c.node("n20", 20)
    c.node("n90", 90)
    c.node("n1", 1)
    return c


def test_faq_loads_20_90_1_one_interval():
    """
    1001 new-session requests inside one LBstatusRecalTime interval: the score
    of a node that served k requests is floor(1000*k/f) and every request goes to
    the lowest score (ties: worker order).  The counts are therefore the
    proportional shares 1001*f/111 = 180.4 / 811.6 / 9.0, rounded the way the
    greedy choice does: the last request of every node was taken at a score no
    higher than the lowest current score, and at the common score 9000 the tie
    goes n20, n90, n1, which gives exactly 181 / 811 / 9.
    """
    c = _faq_cluster()
    counts = c.spread(1001)
    assert counts == Counter(n20=181, n90=811, n1=9)
    # The greedy invariant that produces those numbers, checked on the counters:
    current = {r: (1000 * counts[r]) // f for r, f in (("n20", 20), ("n90", 90), ("n1", 1))}
    for r, f in (("n20", 20), ("n90", 90), ("n1", 1)):
        assert (1000 * (counts[r] - 1)) // f <= min(current.values())
        assert c.rt(r).elected == counts[r]


def test_faq_loads_20_90_1_with_recomputation():
    """
    The same 1001 requests spread over ~10 s (a watchdog tick every 100
    requests, 1 s apart): lbstatus is recomputed after request 500 (n20=90,
    n90=405, n1=5 → lbstatus 4500 / 4500 / 5000) and after request 1000
    (n20=181, n90=810, n1=9).  The lbstatus term carries the previous interval
    over, so the split stays proportional: request 1001 starts a fresh interval
    where n1 (lbstatus 4000) has the lowest score → 181 / 810 / 10.

    This is mod_proxy_cluster's score (proxy.smooth_balancing = false).
    """
    c = _faq_cluster(smooth=False)
    counts = Counter()
    seen = []
    for k in range(1, 1002):
        counts[c.route_of()] += 1
        if k % 100 == 0:
            c.clock.advance(1)
            c.reg.tick()
            if k % 500 == 0:
                seen.append((dict(counts), [c.rt(r).lbstatus for r in ("n20", "n90", "n1")]))
    assert seen == [({"n20": 90, "n90": 405, "n1": 5}, [4500, 4500, 5000]),
                    ({"n20": 181, "n90": 810, "n1": 9}, [4550, 4500, 4000])]
    assert counts == Counter(n20=181, n90=810, n1=10)


# -- candidates: load factor, errors, hot standby ------------------------------------

def test_load_minus_one_is_never_elected():
    c = Cluster()
    c.node("fresh", None)          # CONFIG + ENABLE-APP, no STATUS yet: lbfactor -1
    c.node("broken", -1)           # STATUS Load=-1: lbfactor -1 and in error
    c.node("ok", 1)
    assert c.rt("fresh").lbfactor == -1 and not c.rt("fresh").in_error
    assert c.spread(50) == Counter(ok=50)
    c.reg.apply_status("ok", -1, None)
    r = c.choose()
    assert isinstance(r, Refusal) and r.status == 503


def test_node_in_error_is_skipped_even_after_retry_interval():
    c = Cluster()
    c.node("A", 100)
    c.node("B", 1)
    c.reg.set_error("A", "connect failed")
    assert c.spread(5) == Counter(B=5)
    c.clock.advance(3600)
    # The election never retries a node in error; only a sticky request does.
    assert c.spread(5) == Counter(B=5)


def test_hot_standby_only_when_nothing_else():
    c = Cluster()
    c.node("S1", 0)
    c.node("S2", 0)
    c.node("A", 1)
    c.node("B", 1)
    assert set(c.spread(20)) == {"A", "B"}
    c.reg.set_error("A", "down")
    assert c.spread(10) == Counter(B=10)
    c.reg.set_error("B", "down")
    # The first standby in worker order is taken, without scoring.
    assert c.spread(10) == Counter(S1=10)
    c.reg.set_error("S1", "down")
    assert c.spread(3) == Counter(S2=3)
    c.reg.apply_status("A", 1, True)
    assert c.spread(3) == Counter(A=3)


def test_no_usable_node_gives_503_with_wait_worker_and_retry_after():
    c = Cluster(BalancerSettings("mycluster", wait_worker=2.5), retry_after=7)
    c.node("A", 1)
    c.reg.set_error("A", "down")
    r = c.choose()
    assert r == Refusal(503, r.reason, wait_worker=2.5, retry_after=7)
    assert "mycluster" in r.reason


def test_elected_is_the_only_counter_touched():
    """elected, and the virtual pass of the smooth election."""
    c = Cluster()
    c.node("A", 1)
    rt = c.rt("A")
    before = {k: getattr(rt, k) for k in type(rt).__slots__}
    d = c.choose()
    after = {k: getattr(rt, k) for k in type(rt).__slots__}
    assert after.pop("elected") == before.pop("elected") + 1
    assert after.pop("vpass") > before.pop("vpass")
    assert after == before
    assert (d.context.rt.in_flight, d.context.rt.requests) == (0, 0)


def test_exclude_skips_tried_nodes():
    c = Cluster()
    a = c.node("A", 100)
    b = c.node("B", 1)
    assert c.route_of(exclude={a.id}) == "B"
    assert c.route_of(exclude=frozenset({b.id})) == "A"
    r = c.choose(exclude={a.id, b.id})
    assert isinstance(r, Refusal) and r.status == 503


def test_removed_node_in_an_old_snapshot_is_not_chosen():
    c = Cluster()
    c.node("A", 100)
    c.node("B", 1)
    old = c.reg.table
    c.reg.app("REMOVE-APP", "A", wildcard=True)
    from modcluster.balancer import choose
    for _ in range(5):
        d = choose(old, None, "/app", None, c.clock.seconds(), c.policy)
        assert d.node.route == "B"


# -- §2.2 context matching -----------------------------------------------------------

def test_longest_context_wins_and_boundaries():
    c = Cluster()
    c.node("root", 1, contexts=("/",))
    c.node("app", 1, contexts=("/app",))
    c.node("deep", 1, contexts=("/app/admin",))
    assert c.route_of("/app") == "app"
    assert c.route_of("/app/") == "app"
    assert c.route_of("/app/x/y") == "app"
    assert c.route_of("/application") == "root"
    assert c.route_of("/app/admin/users") == "deep"
    assert c.route_of("/app/administrator") == "app"
    assert c.route_of("/") == "root"
    assert c.route_of("/App") == "root"  # case-sensitive


def test_path_parameters_and_encoding_for_matching():
    c = Cluster()
    c.node("root", 1, contexts=("/",))
    c.node("app", 1, contexts=("/app",))
    assert c.route_of("/app;foo=bar/x") == "app"
    assert c.route_of("/ap%70/x") == "app"            # percent-decoded
    assert c.route_of("/x/../app/y") == "app"          # dot segments resolved
    assert c.route_of("//app//y") == "app"             # slashes merged
    assert c.route_of("/app%2Fy") == "root"            # an encoded '/' is no boundary
    # A decoded ';' is an ordinary character (Tomcat removes path parameters
    # before decoding), so "/app;junk" is another first segment than "/app".
    assert c.route_of("/app%3Bjunk") == "root"
    assert c.route_of("/app%3Bjunk/../x") == "root"    # the node serves /x
    assert c.route_of("/app;x/../other;y/z") == "root"  # parameters per segment


def test_stopped_longest_context_does_not_fall_back():
    c = Cluster()
    c.node("root", 1, contexts=("/",))
    c.node("app", 1, contexts=("/app",), command="STOP-APP")
    r = c.choose("/app/x")
    assert r == Refusal(503, r.reason, 0.0, 10)  # the application is there, but stopped
    assert c.route_of("/other") == "root"
    httpd = RoutingPolicy(unavailable_context_status=404)
    r = c.choose("/app/x", policy=httpd)
    assert r == Refusal(404, r.reason)  # httpd's answer, no Retry-After


def test_unavailable_context_is_503_with_retry_after():
    """
    Every record of the longest match STOPPED, or DISABLED without a session: 503
    with Retry-After by default (issue 14 §2), the configured status otherwise; a
    path no context matches stays no_context_status.
    """
    for command in ("STOP-APP", "DISABLE-APP"):
        c = Cluster(retry_after=7)
        c.node("A", 50, command=command)
        c.node("B", 50, command=command)
        for cookie in (None, "theme=dark"):
            r = c.choose("/app/x", cookie=cookie)
            assert (r.status, r.retry_after, r.wait_worker) == (503, 7, 0.0), (command, r)
        assert c.choose("/nothing").status == 404
        r = c.choose("/app/x", policy=RoutingPolicy(unavailable_context_status=404,
                                                    retry_after=7))
        assert (r.status, r.retry_after) == (404, 0)
        # one enabled record again: routed
        c.set_state("B", "ENABLE-APP")
        assert c.route_of("/app/x") == "B"


def test_disabled_context_needs_a_session():
    c = Cluster()
    c.node("D", 100, command="DISABLE-APP")
    assert c.choose("/app/x").status == 503
    # Any value of the balancer's cookie or path parameter is a session, route or not.
    assert c.route_of("/app/x", cookie="JSESSIONID=abc") == "D"
    assert c.route_of("/app/x;jsessionid=abc") == "D"
    assert c.choose("/app/x", cookie="OTHER=abc").status == 503
    c.node("E", 100)
    # Without a session only the enabled node; with one both are candidates.
    assert c.spread(10, "/app") == Counter(E=10)
    assert set(c.spread(30, "/app", cookie="JSESSIONID=new")) == {"D", "E"}


def test_no_context_status_is_configurable():
    c = Cluster(no_context_status=410)
    c.node("A", 1)
    assert c.choose("/nothing").status == 410
    empty = Cluster()
    assert empty.choose("/app").status == 404


def test_use_alias():
    c = Cluster(use_alias=True)
    c.node("A", 1, contexts=("/",), aliases=("a.example", "localhost"))
    c.node("B", 1, contexts=("/",), aliases=("b.example",))
    assert c.spread(5, "/x", host="a.example") == Counter(A=5)
    assert c.spread(5, "/x", host="b.example") == Counter(B=5)
    assert c.choose("/x", host="c.example").status == 404
    assert c.choose("/x", host=None).status == 404
    off = RoutingPolicy(use_alias=False)
    assert set(c.spread(10, "/x", host="c.example", policy=off)) == {"A", "B"}


def test_use_alias_longest_match_is_per_host():
    c = Cluster(use_alias=True)
    c.node("A", 1, contexts=("/",), aliases=("a.example",))
    c.node("B", 1, contexts=("/app",), aliases=("b.example",))
    assert c.route_of("/app/x", host="a.example") == "A"
    assert c.route_of("/app/x", host="b.example") == "B"


def test_each_request_uses_a_single_balancer():
    c = Cluster()
    one = BalancerSettings("one")
    two = BalancerSettings("two")
    c.node("A", 1, balancer=one)
    c.node("B", 100, balancer=two)
    # Both serve /app: the first record (worker order) decides the balancer.
    d = c.choose()
    assert d.balancer == one and d.node.route == "A"
    assert c.spread(5) == Counter(A=5)
    c.reg.set_error("A", "down")
    # No load balancing between balancers (httpd behaves the same).
    assert c.choose().status == 503


@pytest.mark.parametrize("path", ["", "*", "app"])
def test_odd_paths_do_not_crash(path):
    c = Cluster()
    c.node("A", 1, contexts=("/",))
    r = c.choose(path)
    assert isinstance(r, (Decision, Refusal))


def test_context_states_reach_the_decision():
    c = Cluster()
    c.node("A", 1)
    d = c.choose(cookie="JSESSIONID=x")
    assert d.context.state is ContextState.ENABLED
    c.set_state("A", "DISABLE-APP")
    d = c.choose(cookie="JSESSIONID=x")
    assert d.context.state is ContextState.DISABLED
