"""
choose()'s remembered last plain path (RouteMemo.last_path) against routing
changes, sessions, UseAlias and hosts: a request with the very same path
object is routed as a fresh policy routes it, whatever happened in between.
"""

from modcluster.balancer import Decision, RoutingPolicy, choose

from tests.support.balancer_testlib import Cluster


def _fresh(c, path, cookie=None, host=None, use_alias=False):
    d = choose(c.reg.table, host, path, cookie, c.clock.seconds(),
               RoutingPolicy(use_alias=use_alias))
    return d.node.route if d.__class__ is Decision else d.status


def _route(c, policy, path, cookie=None, host=None):
    d = choose(c.reg.table, host, path, cookie, c.clock.seconds(), policy)
    return d.node.route if d.__class__ is Decision else d.status


def test_same_path_object_across_routing_changes():
    c = Cluster()
    c.node("n1", 100, contexts=("/app",))
    policy = RoutingPolicy()
    path = "/app/x"
    steps = [
        lambda: None,
        lambda: c.set_state("n1", "DISABLE-APP"),
        lambda: c.node("n2", 100, contexts=("/app",)),
        lambda: c.set_state("n2", "STOP-APP"),
        lambda: c.set_state("n1", "ENABLE-APP"),
        lambda: c.set_state("n1", "REMOVE-APP"),
        lambda: c.set_state("n2", "ENABLE-APP"),
        lambda: c.node("n3", 100, contexts=("/app/x",)),
        lambda: c.set_state("n3", "REMOVE-APP", contexts=("/app/x",)),
    ]
    for step in steps:
        step()
        for _ in range(3):
            got = _route(c, policy, path)
            assert got == _fresh(c, path), step
            # a session request on the same path object in between
            _route(c, policy, path, cookie="JSESSIONID=abc.n2")
            _route(c, policy, "/app;jsessionid=abc.n1")
            assert _route(c, policy, path) == _fresh(c, path)


def test_use_alias_routes_by_host_with_the_same_path_object():
    c = Cluster(use_alias=True)
    c.node("n1", 100, contexts=("/app",), aliases=("one.example",))
    c.node("n2", 100, contexts=("/app",), aliases=("two.example",))
    path = "/app/x"
    for _ in range(3):
        for host, route in (("one.example", "n1"), ("two.example", "n2"),
                            ("other.example", 404)):
            assert c.route_of(path, host=host) == route
            assert c.route_of(path, host=host) == _fresh(c, path, host=host, use_alias=True)
