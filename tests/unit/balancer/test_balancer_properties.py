"""
Property tests of choose() over random clusters and requests, and of the
request helpers over arbitrary input.
"""

import attrs
from hypothesis import assume, event, given
from hypothesis import strategies as st

from modcluster.balancer import (
    Decision,
    Refusal,
    RoutingPolicy,
    choose,
    match_path,
    parse_host,
    session_id,
    strip_session,
)
from modcluster.balancer._request import cookie_value
from modcluster.cluster.model import BalancerSettings, ContextState

from tests.support.balancer_testlib import Cluster

ROUTES = ["n1", "n2", "n.3", "n4", "n5", "n6"]
PATHS = ["/", "/app", "/app/x", "/b"]
COMMANDS = ["ENABLE-APP", "ENABLE-APP", "ENABLE-APP", "DISABLE-APP", "STOP-APP"]

balancer_st = st.builds(
    BalancerSettings,
    name=st.sampled_from(["one", "two"]),
    sticky_session=st.sampled_from([True, True, True, False]),
    sticky_cookie=st.sampled_from(["JSESSIONID", "JSESSIONID", "SID"]),
    sticky_path=st.sampled_from(["jsessionid", "jsessionid", "sid"]),
    sticky_remove=st.booleans(),
    sticky_force=st.booleans(),
)

node_st = st.fixed_dictionaries({
    "balancer": st.integers(0, 1),
    "domain": st.sampled_from(["", "d1", "d2"]),
    "load": st.sampled_from([1, 50, 100, 100, 0, -1, None]),
    "error": st.sampled_from([False, False, False, True]),
    "error_age": st.sampled_from([0, 30, 60, 120]),
    "contexts": st.lists(st.tuples(st.sampled_from(PATHS), st.sampled_from(COMMANDS)),
                         min_size=1, max_size=3),
    "alias": st.sampled_from(["localhost", "a.example"]),
    "elected": st.integers(0, 30),
})


@st.composite
def cluster_st(draw):
    balancers = [attrs.evolve(draw(balancer_st), name=n) for n in ("one", "two")]
    count = draw(st.integers(1, 6))
    nodes = [draw(node_st) for _ in range(count)]
    policy = RoutingPolicy(use_alias=draw(st.sampled_from([False, False, True])),
                           deterministic_failover=draw(st.booleans()))
    return balancers, nodes, policy


def build(balancers, nodes, policy):
    c = Cluster()
    c.policy = policy
    for route, spec in zip(ROUTES, nodes):
        b = balancers[spec["balancer"]]
        c.node(route, None, contexts=(), balancer=b, domain=spec["domain"])
        for path, command in spec["contexts"]:
            c.reg.app(command, route, [spec["alias"]], [path])
        if spec["load"] is not None:
            c.reg.apply_status(route, spec["load"], True)
        if spec["error"]:
            c.reg.set_error(route, "test")
        c.rt(route).elected = spec["elected"]
    # Errors of different ages: the newest is 0 s old at "now".
    ages = {route: spec["error_age"] for route, spec in zip(ROUTES, nodes)}
    c.clock.advance(max(ages.values()))
    for route, spec in zip(ROUTES, nodes):
        if spec["error"]:
            c.rt(route).error_since = c.clock.seconds() - spec["error_age"]
    return c


PARAM_VALUES = ["s", "s."] + [f"s.{r}" for r in ROUTES + ["zz"]]
COOKIE_NAMES = ["JSESSIONID", "JSESSIONID", "SID", "other"]
COOKIE_VALUES = ["t", "t.n1", "t.n2", "t.n.3", "t.zz"]

request_st = st.fixed_dictionaries({
    "path": st.sampled_from(["/", "/app", "/app/", "/app/x", "/app/x/y", "/apple", "/b/c",
                             "/zzz", "/app%2Fx", "/x/../app"]),
    "param": st.one_of(st.none(), st.tuples(st.sampled_from(["jsessionid", "sid"]),
                                            st.sampled_from(PARAM_VALUES))),
    "cookie": st.one_of(st.none(), st.tuples(st.sampled_from(COOKIE_NAMES),
                                             st.sampled_from(COOKIE_VALUES))),
    "host": st.sampled_from(["localhost", "localhost", "a.example", "b.example", None]),
    "exclude": st.one_of(st.just(frozenset()), st.frozensets(st.integers(1, 6), max_size=2)),
})


def _matches(ctx_path, mpath):
    n = len(ctx_path)
    return mpath.startswith(ctx_path) and (len(mpath) == n or mpath[n] == "/" or n == 1)


def _render(req):
    path = req["path"]
    if req["param"]:
        path += f";{req['param'][0]}={req['param'][1]}"
    cookie = f"x=1; {req['cookie'][0]}={req['cookie'][1]}" if req["cookie"] else None
    return path, cookie


@given(cluster_st(), st.lists(request_st, min_size=1, max_size=8))
def test_choose_invariants(cluster, requests):
    balancers, nodes, policy = cluster
    c = build(balancers, nodes, policy)
    table = c.reg.table
    for req in requests:
        path, cookie = _render(req)
        host = req["host"]
        exclude = req["exclude"]
        before = {n.id: n.rt.elected for n in table.nodes}
        result = choose(table, host, path, cookie, c.clock.seconds(), policy, exclude)
        after = {n.id: n.rt.elected for n in table.nodes}
        mpath = match_path(path)
        if isinstance(result, Refusal):
            event(f"refusal {result.status}")
            assert result.status in (404, 503)
            assert after == before
            if result.status == 404 or result.reason.endswith("stopped or disabled"):
                # No enabled context at all at the longest match.
                recs = table.longest_match(mpath, host) if policy.use_alias else \
                    table.longest_match(mpath)
                if policy.use_alias and host is None:
                    recs = ()
                assert not [r for r in recs if r.state is ContextState.ENABLED]
            continue
        assert isinstance(result, Decision)
        d = result
        event("sticky" if d.sticky else "strip" if d.strip else
              "route changed" if d.route_changed else "elected")
        node, ctx = d.node, d.context
        # The context belongs to the node, is usable and matches the path.
        assert ctx.node.id == node.id
        assert node in table.nodes and not node.rt.removed
        assert ctx.state is not ContextState.STOPPED
        assert _matches(ctx.path, mpath)
        if policy.use_alias:
            assert host in ctx.aliases
        # It is the longest context of that balancer for this request.
        for recs in table.contexts.values():
            for r in recs:
                if (r.node.balancer == d.balancer.name and _matches(r.path, mpath)
                        and (not policy.use_alias or host in r.aliases)):
                    assert len(r.path) <= len(ctx.path)
        # Sessions: DISABLED only with one, sticky only to its route.
        sid, src = session_id(cookie, path, d.balancer.sticky_cookie, d.balancer.sticky_path)
        assert d.session_id == sid
        if ctx.state is ContextState.DISABLED:
            assert sid is not None
        assert node.id not in exclude
        assert node.balancer == d.balancer.name
        assert table.balancers[node.balancer] == d.balancer
        if d.sticky:
            assert d.balancer.sticky_session
            assert node.route == d.session_route
            assert node.rt.usable(c.clock.seconds(), policy.worker_retry)
            assert d.retrying == node.rt.in_error
            assert d.strip is None
        else:
            assert node.rt.lbfactor >= 0 and not node.rt.in_error
            assert not d.retrying
        if d.strip is not None:
            assert d.strip == src and d.balancer.sticky_remove and not d.sticky
        # Only the chosen node's elected counter moved, by one.
        assert after[node.id] == before[node.id] + 1
        assert {k: v for k, v in after.items() if k != node.id} == \
            {k: v for k, v in before.items() if k != node.id}


@given(st.permutations(["n1", "n2", "n3", "n4", "gone"]),
       st.permutations(["n1", "n2", "n3", "n4", "gone"]),
       st.lists(st.sampled_from([1, 10, 100]), min_size=4, max_size=4),
       st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=12),
       st.integers(0, 20))
def test_deterministic_failover_is_independent_of_table_order(order1, order2, loads, sid, noise):
    load_of = dict(zip(["n1", "n2", "n3", "n4"], loads), gone=1)

    def make(order, warmup):
        c = Cluster(BalancerSettings("mycluster", sticky_force=False),
                    deterministic_failover=True)
        for r in order:
            c.node(r, load_of[r])
        c.reg.set_error("gone", "down")
        c.spread(warmup)  # different election counters on each side
        return c

    one, two = make(order1, 0), make(order2, noise)
    a = one.choose(cookie=f"JSESSIONID={sid}.gone")
    b = two.choose(cookie=f"JSESSIONID={sid}.gone")
    assert a.node.route == b.node.route


@given(st.text(max_size=40))
def test_match_path_total(path):
    out = match_path(path)
    if "%" not in path:
        assert ";" not in out  # path parameters removed (a decoded %3B is a character)


@given(st.one_of(st.none(), st.text(max_size=30), st.binary(max_size=30)))
def test_parse_host_total(header):
    host = parse_host(header)
    if host is not None:
        assert host == host.lower()
        assert host and not host.endswith(":")


cookie_names = st.sampled_from(["JSESSIONID", "a", "SID"])


@given(st.text(alphabet=st.sampled_from(list("JSESIONDa=;, \t\".x1")), max_size=40),
       cookie_names)
def test_strip_cookie_removes_the_session(cookie, name):
    class D:
        strip = "cookie"
        cookie_name = name
        path_name = "jsessionid"
    assume(cookie)
    _, out = strip_session("/p", cookie, D)
    if out is not None:
        assert cookie_value(out, name) is None


@given(st.text(alphabet=st.sampled_from(list("/;=jsesionid.x&?")), max_size=40))
def test_strip_path_removes_the_session(path):
    class D:
        strip = "path"
        cookie_name = "JSESSIONID"
        path_name = "jsessionid"
    out, cookie = strip_session(path, "c=1", D)
    assert cookie == "c=1"
    assert session_id(None, out, "JSESSIONID", "jsessionid") == (None, None)
