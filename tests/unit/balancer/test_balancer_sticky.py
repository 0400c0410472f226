"""
Sticky sessions, domains, StickySessionForce / StickySessionRemove,
DeterministicFailover and the error retry (balancing.md §2.3, §3.4, §4, §5).
"""

from collections import Counter

import pytest

from modcluster.balancer import Refusal, RoutingPolicy, strip_session
from modcluster.cluster.model import BalancerSettings

from tests.support.balancer_testlib import Cluster


def two_nodes(**balancer):
    c = Cluster(BalancerSettings("mycluster", **balancer))
    c.node("A", 100)
    c.node("B", 1)          # B is never elected while A is fine
    return c


# -- finding the session id and the route -----------------------------------------------

@pytest.mark.parametrize("cookie", [
    "JSESSIONID=abc.B",
    "JSESSIONID = abc.B",
    'JSESSIONID="abc.B"',
    "foo=1; JSESSIONID=abc.B; bar=2",
    "foo=1;JSESSIONID=abc.B",
    "foo=1, JSESSIONID=abc.B",
    "x_JSESSIONID=abc.A; JSESSIONID=abc.B",
    "JSESSIONID=; JSESSIONID=abc.B",
])
def test_sticky_by_cookie(cookie):
    c = two_nodes()
    d = c.choose("/app/x", cookie=cookie)
    assert d.node.route == "B"
    assert d.sticky and not d.route_changed
    assert d.session_id == "abc.B" and d.session_route == "B"
    assert d.strip is None


@pytest.mark.parametrize("path", [
    "/app;jsessionid=abc.B",
    "/app/x;jsessionid=abc.B",
    "/app/x;foo=1;jsessionid=abc.B;bar=2",
    "/app/x;jsessionid=abc.B&y=1",
])
def test_sticky_by_path_parameter(path):
    c = two_nodes()
    d = c.choose(path)
    assert d.node.route == "B" and d.sticky
    assert d.session_id == "abc.B"


def test_names_are_case_sensitive_and_balancer_specific():
    c = two_nodes()
    assert not c.choose(cookie="jsessionid=abc.B").sticky
    assert not c.choose("/app;JSESSIONID=abc.B").sticky
    custom = Cluster(BalancerSettings("mycluster", sticky_cookie="SID", sticky_path="sid"))
    custom.node("A", 100)
    custom.node("B", 1)
    assert custom.route_of(cookie="SID=1.B") == "B"
    assert custom.route_of("/app;sid=1.B") == "B"
    assert custom.route_of(cookie="JSESSIONID=1.B") == "A"


def test_cookie_is_searched_before_the_path():
    c = two_nodes()
    assert c.route_of("/app;jsessionid=x.B", cookie="JSESSIONID=x.A") == "A"
    d = c.choose("/app;jsessionid=x.B", cookie="other=1")
    assert d.node.route == "B" and d.session_id == "x.B"


def test_route_is_everything_after_the_first_dot():
    c = Cluster()
    c.node("node.1", 100)
    c.node("node", 1)
    c.node("1", 1)
    d = c.choose(cookie="JSESSIONID=ABC.node.1")
    assert d.node.route == "node.1" and d.session_route == "node.1" and d.sticky
    assert c.route_of(cookie="JSESSIONID=ABC.node") == "node"


@pytest.mark.parametrize("cookie", ["JSESSIONID=abc", "JSESSIONID=abc.", "JSESSIONID=abc.nobody"])
def test_no_usable_route_is_balanced_normally(cookie):
    c = two_nodes(sticky_force=True)
    d = c.choose(cookie=cookie)
    assert d.node.route == "A" and not d.sticky
    assert d.session_id == cookie.split("=", 1)[1]
    # An unknown route is not "present": no StickySessionForce 503 (as httpd).
    assert d.route_changed == cookie.endswith("nobody")


@pytest.mark.parametrize("force", [False, True])
def test_sticky_needs_the_node_to_serve_the_context(force):
    c = Cluster(BalancerSettings("mycluster", sticky_force=force))
    c.node("A", 100, contexts=("/app",))
    c.node("B", 1, contexts=("/",))
    # B only has "/", the longest match for /app is A's: the route cannot be honoured
    # (the application was removed from B).
    d = c.choose("/app/x", cookie="JSESSIONID=s.B")
    if force:
        assert d.status == 503
        return
    assert d.node.route == "A" and not d.sticky and d.route_changed
    c.set_state("A", "STOP-APP")
    # Longest context stopped everywhere: no fallback to B's "/", even with a route.
    assert c.choose("/app/x", cookie="JSESSIONID=s.B").status == 503


@pytest.mark.parametrize("force", [False, True])
def test_sticky_to_disabled_context(force):
    c = two_nodes(sticky_force=force)
    c.set_state("B", "DISABLE-APP")
    assert c.route_of(cookie="JSESSIONID=s.B") == "B"
    c.set_state("B", "STOP-APP")
    d = c.choose(cookie="JSESSIONID=s.B")
    if force:
        assert d.status == 503
    else:
        assert d.node.route == "A" and d.route_changed


def test_sticky_session_no_disables_routing():
    c = two_nodes(sticky_session=False, sticky_force=True)
    d = c.choose(cookie="JSESSIONID=s.B")
    assert d.node.route == "A" and not d.sticky and not d.route_changed
    c.reg.set_error("A", "down")
    # No forced 503 either: session routing is off.
    assert c.route_of(cookie="JSESSIONID=s.A") == "B"


def test_sticky_counts_as_elected():
    c = two_nodes()
    for _ in range(3):
        c.choose(cookie="JSESSIONID=s.B")
    assert (c.rt("A").elected, c.rt("B").elected) == (0, 3)


def test_sticky_to_hot_standby_and_unreported_nodes_is_honoured():
    c = Cluster()
    c.node("A", 100)
    c.node("S", 0)
    c.node("fresh", None)   # lbfactor -1 but not in error: usable for its sessions
    assert c.route_of(cookie="JSESSIONID=s.S") == "S"
    assert c.route_of(cookie="JSESSIONID=s.fresh") == "fresh"
    assert c.spread(10) == Counter(A=10)


def test_sticky_route_selects_the_balancer():
    c = Cluster()
    one = BalancerSettings("one", sticky_force=False)
    two = BalancerSettings("two", sticky_force=False)
    c.node("A", 1, balancer=one)
    c.node("B", 1, balancer=two)
    d = c.choose(cookie="JSESSIONID=s.B")
    assert d.balancer == two and d.node.route == "B" and d.sticky
    d = c.choose()
    assert d.balancer == one


def test_sticky_route_selects_the_balancer_with_a_shorter_context():
    c = Cluster()
    one = BalancerSettings("one")
    two = BalancerSettings("two")
    c.node("A", 1, balancer=one, contexts=("/app/deep",))
    c.node("B", 1, balancer=two, contexts=("/app",))
    # For balancer "two" alone the longest match is "/app".
    d = c.choose("/app/deep/x", cookie="JSESSIONID=s.B")
    assert d.node.route == "B" and d.context.path == "/app" and d.sticky
    assert c.route_of("/app/deep/x") == "A"


# -- errors and the retry interval -------------------------------------------------------

def test_sticky_node_in_error_is_retried_after_worker_retry():
    c = two_nodes(sticky_force=False)
    c.reg.set_error("B", "connect refused")
    c.clock.advance(59)
    d = c.choose(cookie="JSESSIONID=s.B")
    assert d.node.route == "A" and d.route_changed and not d.retrying
    c.clock.advance(1)
    d = c.choose(cookie="JSESSIONID=s.B")
    assert d.node.route == "B" and d.sticky and d.retrying
    # Still out of the election: only the sticky request retries it.
    assert c.route_of() == "A"
    # The retry failed: the proxy sets the error again, the interval restarts.
    c.reg.set_error("B", "connect refused")
    assert c.route_of(cookie="JSESSIONID=s.B") == "A"
    c.clock.advance(60)
    assert c.route_of(cookie="JSESSIONID=s.B") == "B"


def test_worker_retry_policy_is_used():
    c = two_nodes(sticky_force=False)
    c.policy = RoutingPolicy(worker_retry=5)
    c.reg.set_error("B", "down")
    c.clock.advance(5)
    assert c.choose(cookie="JSESSIONID=s.B").retrying
    c.policy = RoutingPolicy(worker_retry=0)
    assert c.route_of(cookie="JSESSIONID=s.B") == "A"   # 0: never retried


def test_excluded_sticky_node_fails_over():
    c = two_nodes(sticky_force=False)
    b = c.reg.table.by_route["B"]
    d = c.choose(cookie="JSESSIONID=s.B", exclude={b.id})
    assert d.node.route == "A" and d.route_changed
    forced = two_nodes(sticky_force=True)
    b = forced.reg.table.by_route["B"]
    r = forced.choose(cookie="JSESSIONID=s.B", exclude={b.id})
    assert r.status == 503


# -- StickySessionForce and domains --------------------------------------------------------

def test_force_without_domain_is_503_at_once():
    c = two_nodes(sticky_force=True, wait_worker=3.0)
    c.reg.set_error("B", "down")
    r = c.choose(cookie="JSESSIONID=s.B")
    assert isinstance(r, Refusal)
    assert (r.status, r.wait_worker) == (503, 0.0)
    assert "route B" in r.reason


def test_no_force_fails_over_anywhere():
    c = two_nodes(sticky_force=False)
    c.reg.set_error("B", "down")
    d = c.choose(cookie="JSESSIONID=s.B")
    assert d.node.route == "A" and d.route_changed and not d.sticky


def domains(force, remove=False, wait=0.0):
    c = Cluster(BalancerSettings("mycluster", sticky_force=force, sticky_remove=remove,
                                 wait_worker=wait))
    c.node("A1", 1, domain="d1")
    c.node("A2", 1, domain="d1")
    c.node("B1", 100, domain="d2")   # the least loaded node, other domain
    c.node("N", 100)                 # no domain
    return c


@pytest.mark.parametrize("force", [True, False])
def test_failover_prefers_the_domain(force):
    c = domains(force)
    c.reg.set_error("A1", "down")
    for _ in range(5):
        d = c.choose(cookie="JSESSIONID=s.A1")
        assert d.node.route == "A2" and d.domain == "d1" and d.route_changed
    # New sessions go to the best scores regardless of domain.
    assert set(c.spread(10)) <= {"B1", "N"}


def test_force_with_domain_fails_over_only_inside():
    c = domains(True, wait=1.5)
    c.reg.set_error("A1", "down")
    c.reg.set_error("A2", "down")
    r = c.choose(cookie="JSESSIONID=s.A1")
    assert (r.status, r.wait_worker) == (503, 1.5)
    assert "d1" in r.reason
    # A hot standby in the domain does not count: only pass 1 runs.
    c.node("S", 0, domain="d1")
    assert c.choose(cookie="JSESSIONID=s.A1").status == 503


def test_no_force_with_domain_leaves_it_when_empty():
    c = domains(False)
    c.reg.set_error("A1", "down")
    c.reg.set_error("A2", "down")
    d = c.choose(cookie="JSESSIONID=s.A1")
    assert d.node.route in ("B1", "N") and d.route_changed


def test_removed_node_domain_is_remembered():
    c = domains(True)
    c.reg.app("REMOVE-APP", "A1", wildcard=True)
    c.clock.advance(c.reg.limits.wait_before_remove)
    c.reg.tick()
    assert c.reg.node("A1") is None
    assert c.reg.table.removed_domains["A1"] == ("mycluster", "d1")
    for _ in range(3):
        d = c.choose(cookie="JSESSIONID=s.A1")
        assert d.node.route == "A2" and d.domain == "d1" and not d.sticky
    # Forgotten after 300 s: the route is unknown, normal election.
    c.clock.advance(301)
    c.reg.tick()
    d = c.choose(cookie="JSESSIONID=s.A1")
    assert d.node.route in ("B1", "N") and d.domain == ""


# -- StickySessionRemove ---------------------------------------------------------------------

def test_remove_strips_cookie_when_leaving_the_domain():
    c = domains(False, remove=True)
    c.reg.set_error("A1", "down")
    c.reg.set_error("A2", "down")
    cookie = "a=1; JSESSIONID=s.A1; b=2"
    d = c.choose("/app/x", cookie=cookie)
    assert d.strip == "cookie" and d.cookie_name == "JSESSIONID"
    assert strip_session("/app/x", cookie, d) == ("/app/x", "a=1; b=2")


def test_remove_strips_path_parameter_when_leaving_the_domain():
    c = domains(False, remove=True)
    c.reg.set_error("A1", "down")
    c.reg.set_error("A2", "down")
    d = c.choose("/app/x;jsessionid=s.A1", cookie="a=1")
    assert d.strip == "path" and d.path_name == "jsessionid"
    assert strip_session("/app/x;jsessionid=s.A1", "a=1", d) == ("/app/x", "a=1")


def test_remove_keeps_the_session_inside_the_domain_or_when_sticky():
    c = domains(False, remove=True)
    d = c.choose(cookie="JSESSIONID=s.A1")
    assert d.sticky and d.strip is None
    c.reg.set_error("A1", "down")
    d = c.choose(cookie="JSESSIONID=s.A1")
    assert d.node.route == "A2" and d.strip is None
    assert strip_session("/app", "JSESSIONID=s.A1", d) == ("/app", "JSESSIONID=s.A1")


def test_remove_off_never_strips():
    c = domains(False, remove=False)
    c.reg.set_error("A1", "down")
    c.reg.set_error("A2", "down")
    assert c.choose(cookie="JSESSIONID=s.A1").strip is None


def test_remove_without_domain_strips_on_any_failover():
    c = two_nodes(sticky_force=False, sticky_remove=True)
    c.reg.set_error("B", "down")
    d = c.choose(cookie="JSESSIONID=s.B")
    assert d.strip == "cookie"
    assert strip_session("/app", "JSESSIONID=s.B", d) == ("/app", None)


# -- DeterministicFailover ------------------------------------------------------------------

def det_cluster(order):
    c = Cluster(BalancerSettings("mycluster", sticky_force=False), deterministic_failover=True)
    loads = {"n1": 5, "n2": 50, "n3": 100, "gone": 1}
    for route in order:
        c.node(route, loads[route])
    c.reg.set_error("gone", "down")
    return c


def test_deterministic_failover_same_node_on_independent_tables():
    one = det_cluster(["n1", "n2", "n3", "gone"])
    two = det_cluster(["gone", "n3", "n1", "n2"])
    for i in range(40):
        sid = f"S{i:03d}XY.gone"
        a = one.choose(cookie=f"JSESSIONID={sid}")
        b = two.choose(cookie=f"JSESSIONID={sid}")
        assert a.node.route == b.node.route
        # sorted routes n1, n2, n3; index = byte sum of the part before '.' mod 3
        expected = ["n1", "n2", "n3"][sum(sid.split(".")[0].encode()) % 3]
        assert a.node.route == expected
        assert a.route_changed and not a.sticky


def test_deterministic_failover_applies_only_to_sessions_with_a_dot():
    c = det_cluster(["n1", "n2", "n3", "gone"])
    # No session or no '.': score election, proportional to the loads 5/50/100.
    assert c.spread(155) == Counter(n1=5, n2=50, n3=100)
    assert c.spread(155, cookie="JSESSIONID=nodot") == Counter(n1=5, n2=50, n3=100)
    # A usable route is simply honoured.
    assert c.route_of(cookie="JSESSIONID=ab.n2") == "n2"


def test_deterministic_failover_respects_domain_and_exclude():
    c = Cluster(BalancerSettings("mycluster", sticky_force=False), deterministic_failover=True)
    c.node("x", 1, domain="d")
    c.node("y", 1, domain="d")
    c.node("z", 100)
    c.reg.set_error("x", "down")
    for i in range(10):
        assert c.route_of(cookie=f"JSESSIONID=k{i}.x") == "y"
    y = c.reg.table.by_route["y"]
    assert c.route_of(cookie="JSESSIONID=k.x", exclude={y.id}) == "z"
