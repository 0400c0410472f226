"""
The registry's state machines, quotas and snapshots (mcmp.md §3, §4).
"""

import json

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from modcluster.cluster.errors import ClusterError
from modcluster.cluster.model import BalancerSettings, ContextState, NodeSettings
from modcluster.cluster.registry import Limits, Registry


def make(limits=Limits(), **kw):
    clock = Clock()
    return clock, Registry(clock, limits, **kw)


def node(route="node1", port=8009, **kw):
    return NodeSettings(route=route, port=port, host="127.0.0.1", **kw)


BAL = BalancerSettings("mycluster", sticky_force=False)


def register(reg, route="node1", port=8009, contexts=("/app",), alias="localhost", load=None, **kw):
    reg.config(BAL, node(route, port, **kw))
    for c in contexts:
        reg.app("ENABLE-APP", route, [alias], [c])
    if load is not None:
        assert reg.apply_status(route, load, True)


def states(reg, route):
    n = reg.node(route)
    return {(v.id, c.path): c.state for v, c in reg.contexts_of(n)}


def test_config_creates_node_with_unbalanced_load():
    clock, reg = make()
    reg.config(BAL, node())
    n = reg.node("node1")
    assert n.id == 1
    assert n.rt.lbfactor == -1
    assert reg.table.by_route["node1"].settings.port == 8009
    assert reg.balancers["mycluster"] == BAL


def test_app_commands_state_machine():
    clock, reg = make()
    register(reg, contexts=("/app", "/"))
    assert set(states(reg, "node1").values()) == {ContextState.ENABLED}
    reg.app("DISABLE-APP", "node1", ["localhost"], ["/app"])
    assert states(reg, "node1")[(1, "/app")] is ContextState.DISABLED
    res = reg.app("STOP-APP", "node1", ["localhost"], ["/app"])
    assert res.requests == 0
    assert states(reg, "node1")[(1, "/app")] is ContextState.STOPPED
    reg.app("REMOVE-APP", "node1", ["localhost"], ["/app"])
    assert (1, "/app") not in states(reg, "node1")
    # DISABLE and STOP add the app back, REMOVE doesn't (app.t)
    reg.app("REMOVE-APP", "node1", ["localhost"], ["/gone"])
    assert (1, "/gone") not in states(reg, "node1")
    reg.app("STOP-APP", "node1", ["localhost"], ["/new"])
    assert states(reg, "node1")[(1, "/new")] is ContextState.STOPPED


def test_stop_app_reports_in_flight_requests():
    clock, reg = make()
    register(reg)
    ctx = reg.find_context("node1", "localhost", "/app")
    ctx.rt.in_flight = 3
    assert reg.app("STOP-APP", "node1", ["localhost"], ["/app"]).requests == 3


def test_aliases_group_into_one_vhost_and_accumulate():
    clock, reg = make()
    reg.config(BAL, node())
    reg.app("ENABLE-APP", "node1", ["default-host", "localhost"], ["/a"])
    reg.app("ENABLE-APP", "node1", ["localhost", "example.com"], ["/b"])
    n = reg.node("node1")
    assert list(n.vhosts) == [1]
    assert list(n.vhosts[1].aliases) == ["default-host", "localhost", "example.com"]
    reg.app("ENABLE-APP", "node1", ["other"], ["/c"])
    assert list(n.vhosts) == [1, 2]


def test_remove_last_context_deletes_vhost_and_aliases():
    clock, reg = make()
    register(reg)
    reg.app("REMOVE-APP", "node1", ["localhost"], ["/app"])
    assert reg.node("node1").vhosts == {}
    assert reg.counts["aliases"] == 0 and reg.counts["contexts"] == 0


def test_unknown_node_is_mem_except_remove():
    clock, reg = make()
    with pytest.raises(ClusterError) as e:
        reg.app("ENABLE-APP", "nope", ["localhost"], ["/"])
    assert e.value.type == "MEM"
    assert e.value.mess == 'MEM: Can\'t read node with "nope" JVMRoute'
    assert reg.app("REMOVE-APP", "nope", wildcard=True).requests is None
    with pytest.raises(ClusterError):
        reg.status_node("nope")


def test_wildcard_commands():
    clock, reg = make()
    register(reg, contexts=("/a", "/b"))
    reg.app("STOP-APP", "node1", wildcard=True)
    assert set(states(reg, "node1").values()) == {ContextState.STOPPED}
    reg.app("ENABLE-APP", "node1", wildcard=True)
    assert set(states(reg, "node1").values()) == {ContextState.ENABLED}


def test_remove_wildcard_marks_removed_then_purges_after_wait():
    clock, reg = make(Limits(wait_before_remove=10))
    register(reg, domain="dc1")
    reg.app("REMOVE-APP", "node1", wildcard=True)
    n = reg.node("node1")
    assert n.rt.removed and n.vhosts == {}
    assert reg.table.nodes == ()
    assert reg.table.removed_domains == {"node1": ("mycluster", "dc1")}
    with pytest.raises(ClusterError):
        reg.app("ENABLE-APP", "node1", ["localhost"], ["/app"])
    assert reg.apply_status("node1", 50, True) is False  # NOTOK while removed
    clock.advance(9)
    reg.tick()
    assert reg.node("node1") is not None
    clock.advance(1)
    reg.tick()
    assert reg.node("node1") is None
    assert reg.table.removed_domains == {"node1": ("mycluster", "dc1")}
    assert reg.balancers == {}
    clock.advance(301)
    reg.tick()
    assert reg.table.removed_domains == {}


def test_removed_node_with_requests_in_flight_waits():
    clock, reg = make()
    register(reg)
    reg.node("node1").rt.busy = 1
    reg.app("REMOVE-APP", "node1", wildcard=True)
    clock.advance(60)
    reg.tick()
    assert reg.node("node1") is not None
    reg.node("node1").rt.busy = 0
    reg.tick()
    assert reg.node("node1") is None


def test_config_revives_a_removed_node():
    clock, reg = make()
    register(reg)
    reg.app("REMOVE-APP", "node1", wildcard=True)
    reg.config(BAL, node())
    assert not reg.node("node1").rt.removed
    assert reg.table.by_route["node1"]


def test_config_soft_change_updates_in_place():
    clock, reg = make()
    register(reg, load=50)
    rt = reg.node("node1").rt
    reg.config(BAL, node(ping=3.0, domain="dc2"))
    assert reg.node("node1").rt is rt
    assert reg.node("node1").settings.ping == 3.0
    assert states(reg, "node1") == {(1, "/app"): ContextState.ENABLED}


def test_config_hard_change_replaces_node():
    clock, reg = make()
    register(reg, load=50)
    old_rt = reg.node("node1").rt
    with capturedLogs() as events:
        reg.config(BAL, node(port=9009))
    n = reg.node("node1")
    assert n.settings.port == 9009 and n.rt is not old_rt and old_rt.removed
    assert n.vhosts == {} and n.rt.lbfactor == -1
    assert any(e.get("cluster_event") == "node.replaced" for e in events)


def test_same_worker_other_route_is_mem():
    clock, reg = make()
    register(reg)
    with pytest.raises(ClusterError) as e:
        reg.config(BAL, node("node2"))
    assert e.value.mess == "MEM: Another for the same worker already exist"
    assert reg.node("node2") is None


def test_quotas_fail_loudly_and_change_nothing():
    clock, reg = make(Limits(max_nodes=2, max_hosts=3, max_contexts=3))
    register(reg, "n1", 1)
    register(reg, "n2", 2)
    with pytest.raises(ClusterError) as e:
        reg.config(BAL, node("n3", 3))
    assert e.value.type == "MEM" and "n3" in e.value.mess
    register(reg, "n1", 1, contexts=("/b",))
    with pytest.raises(ClusterError) as e:
        reg.app("ENABLE-APP", "n2", ["localhost"], ["/x"])
    assert e.value.mess.startswith("MEM: Can't update or insert context")
    assert reg.counts == {"nodes": 2, "balancers": 1, "aliases": 2, "contexts": 3}


def test_status_load_transitions():
    clock, reg = make()
    register(reg)
    rt = reg.node("node1").rt
    assert reg.apply_status("node1", 80, True) and rt.lbfactor == 80
    assert reg.apply_status("node1", 0, True) and rt.lbfactor == 0  # hot standby
    assert reg.apply_status("node1", -1, None) and rt.in_error and rt.lbfactor == -1
    assert reg.apply_status("node1", 30, True) and not rt.in_error and rt.lbfactor == 30
    # probe failure: error, load unchanged, NOTOK
    assert reg.apply_status("node1", 90, False) is False
    assert rt.in_error and rt.lbfactor == 30


def test_idle_probe_failures_remove_node():
    clock, reg = make(Limits(idle_failures_before_remove=2))
    register(reg, load=10)
    for _ in range(2):
        reg.probe_result("node1", False)
    assert not reg.node("node1").rt.removed
    reg.probe_result("node1", False)
    assert reg.node("node1").rt.removed


def test_tick_recomputes_lbstatus_and_reports_idle_nodes():
    clock, reg = make(Limits(lbstatus_recalc_time=5))
    register(reg, load=50)
    rt = reg.node("node1").rt
    rt.elected = 100
    rt.read = 10
    clock.advance(5)
    assert [e.route for e in reg.tick()] == []
    # requests of the interval just ended, normalised by the weight
    assert rt.lbstatus == (100 * 1000) // 50
    clock.advance(5)
    idle = reg.tick()
    assert rt.lbstatus == 0  # nothing elected during the second interval
    assert [e.route for e in idle] == ["node1"]  # and nothing read from it


def test_snapshot_is_rebuilt_only_on_structure_change():
    clock, reg = make()
    register(reg, load=10)
    t1 = reg.table
    reg.apply_status("node1", 20, True)
    assert reg.table is t1  # load lives in the shared runtime record
    assert t1.by_route["node1"].rt.lbfactor == 20
    reg.app("DISABLE-APP", "node1", ["localhost"], ["/app"])
    t2 = reg.table
    assert t2 is not t1 and t2.generation > t1.generation
    assert t1.contexts["/app"][0].state is ContextState.ENABLED  # old snapshot unchanged
    assert t2.contexts["/app"][0].state is ContextState.DISABLED


def test_snapshot_method_is_the_table():
    """Registry.snapshot (the data plane's table callable) gives what table gives."""
    clock, reg = make()
    t0 = reg.snapshot()
    assert t0 is reg.table
    register(reg, load=10)
    t1 = reg.snapshot()
    assert t1 is not t0 and t1 is reg.table and "node1" in t1.by_route
    reg.apply_status("node1", 20, True)
    assert reg.snapshot() is t1
    reg.app("DISABLE-APP", "node1", ["localhost"], ["/app"])
    t2 = reg.table
    assert t2 is not t1 and reg.snapshot() is t2
    reg.app("ENABLE-APP", "node1", ["localhost"], ["/app"])
    t3 = reg.snapshot()
    assert t3 is not t2 and t3 is reg.table


def test_longest_match_on_slash_boundaries():
    clock, reg = make()
    register(reg, contexts=("/", "/app", "/app/sub"))
    t = reg.table
    assert t.longest_match("/app/sub/x")[0].path == "/app/sub"
    assert t.longest_match("/app/x")[0].path == "/app"
    assert t.longest_match("/application")[0].path == "/"
    assert t.longest_match("/app")[0].path == "/app"
    assert t.by_alias["localhost"]["/app"][0].node.route == "node1"
    assert t.longest_match("/app", host="other") == ()


def test_events_are_structured_and_bounded():
    clock, reg = make()
    register(reg, contexts=("/a", "/b"), load=5)
    kinds = [e["event"] for e in reg.events]
    assert kinds[:2] == ["balancer.updated", "node.registered"] and len(kinds) > 3
    assert all({"time", "event"} <= set(e) for e in reg.events)
    clock, small = make(event_log_size=3)
    register(small, contexts=("/a", "/b"), load=5)
    assert [e["event"] for e in small.events] == kinds[-3:]  # the latest three


def restore(reg, state, **kw):
    """Restore as the balancer does: replayed through the MCMP handler's checks."""
    from modcluster.mcmp.handler import MCMPHandler

    return MCMPHandler(reg, None, reg._clock, **kw).restore_state(state)


def test_state_round_trip_through_json():
    clock, reg = make()
    register(reg, "n1", 1, contexts=("/a", "/b"), load=40, domain="d")
    register(reg, "n2", 2, contexts=("/a",), alias="example.com", load=0)
    reg.app("DISABLE-APP", "n1", ["localhost"], ["/b"])
    state = json.loads(json.dumps(reg.to_state()))
    clock2, reg2 = make()
    assert restore(reg2, state) == 2
    for route in ("n1", "n2"):
        a, b = reg.node(route), reg2.node(route)
        assert (a.id, a.settings, a.rt.lbfactor) == (b.id, b.settings, b.rt.lbfactor)
        assert states(reg, route) == states(reg2, route)
        assert b.rt.unverified
    assert reg2.balancers == reg.balancers
    # new ids do not collide with restored ones
    reg2.config(BAL, node("n3", 3))
    assert reg2.node("n3").id == 3
    reg2.apply_status("n1", 40, True)
    assert not reg2.node("n1").rt.unverified


def test_restore_rejects_unknown_format():
    clock, reg = make()
    with pytest.raises(ValueError):
        restore(reg, {"format": 99, "balancers": [], "nodes": []})


def test_forwarding_failures_are_counted_and_cleared_by_a_success():
    clock, reg = make()
    register(reg, load=10)
    reg.set_error("node1", "connect refused")
    reg.set_error("node1", "connect refused")
    rt = reg.node("node1").rt
    assert rt.failures == 2 and rt.in_error and rt.error_reason == "connect refused"
    reg.clear_error("node1", "answered a request")
    assert not rt.in_error and rt.failures == 2


@pytest.mark.parametrize("change", [
    lambda n: n["settings"].update(port="8009"),
    lambda n: n["settings"].update(port=0),
    lambda n: n["settings"].update(reversed="no"),
    lambda n: n["settings"].update(ping=None),
    lambda n: n["settings"].update(bogus=1),
])
def test_restore_refuses_damaged_settings(change):
    clock, reg = make()
    register(reg, load=40)
    register(reg, "node2", 9009)
    state2 = json.loads(json.dumps(reg.to_state()))
    change(state2["nodes"][1])  # the second node is damaged: nothing is kept
    clock2, reg2 = make()
    with pytest.raises((TypeError, ValueError)):
        restore(reg2, state2)
    assert reg2.nodes() == [] and reg2.balancers == {} and reg2.counts["contexts"] == 0
    assert reg2.table.nodes == ()


def test_state_store_quarantines_a_damaged_file(tmp_path):
    from modcluster.services.persistence import StateStore, write_state

    clock, reg = make()
    register(reg, load=40)
    state = reg.to_state()
    state["nodes"][0]["settings"]["port"] = "8009"
    path = tmp_path / "state.json"
    write_state(str(path), state)
    clock2, reg2 = make()
    StateStore(reg2, str(path), clock2, lambda st: restore(reg2, st)).restore()
    assert reg2.nodes() == [] and (tmp_path / "state.json.bad").exists()


def _snapshot(reg):
    return ({r: states(reg, r) for r in (n.route for n in reg.nodes())},
            {r: sorted(a for v in reg.node(r).vhosts.values() for a in v.aliases)
             for r in (n.route for n in reg.nodes())},
            reg.counts)


def test_multi_context_app_refused_for_quota_changes_nothing():
    """
    Issue 13 §4: an ENABLE-APP (or any multi-context command) that does not fit
    the context quota is refused as a whole: no context of it is created or
    changes state (it used to leave the first 197 enabled).
    """
    clock, reg = make(Limits(max_contexts=200))
    register(reg, "n1", 1, contexts=("/a", "/b", "/c"))
    reg.app("STOP-APP", "n1", ["localhost"], ["/a"])
    before = _snapshot(reg)
    many = ["/a"] + [f"/x{i}" for i in range(300)]
    for command in ("ENABLE-APP", "DISABLE-APP", "STOP-APP"):
        with pytest.raises(ClusterError) as e:
            reg.app(command, "n1", ["localhost"], many)
        assert e.value.type == "MEM"
        assert e.value.mess.startswith("MEM: Can't update or insert context")
        assert _snapshot(reg) == before
        assert states(reg, "n1")[(1, "/a")] is ContextState.STOPPED
    # exactly filling the quota is fine, one more is not
    fits = [f"/y{i}" for i in range(197)]
    reg.app("ENABLE-APP", "n1", ["localhost"], fits)
    assert reg.counts["contexts"] == 200
    with pytest.raises(ClusterError):
        reg.app("ENABLE-APP", "n1", ["localhost"], ["/y0", "/z"])
    assert states(reg, "n1").get((1, "/z")) is None


def test_multi_alias_app_refused_for_quota_changes_nothing():
    """The same for aliases (max_hosts): no alias joins, no vhost is created."""
    clock, reg = make(Limits(max_hosts=5))
    register(reg, "n1", 1, contexts=("/a",))
    before = _snapshot(reg)
    # existing vhost (first alias known) + too many new aliases
    with pytest.raises(ClusterError) as e:
        reg.app("ENABLE-APP", "n1", ["localhost"] + [f"h{i}" for i in range(10)], ["/b"])
    assert e.value.mess.startswith("MEM: Can't update or insert host alias")
    assert _snapshot(reg) == before
    # new vhost
    with pytest.raises(ClusterError):
        reg.app("ENABLE-APP", "n1", [f"h{i}" for i in range(10)], ["/b"])
    assert _snapshot(reg) == before


def test_quota_error_messages_are_shortened():
    """
    Issue 13 §4: a refused command with hundreds of long aliases used to echo
    them all in Mess (3.5 KB); interpolated values are cut as mcmp.md says.
    """
    clock, reg = make(Limits(max_hosts=3, max_contexts=3))
    register(reg, "n1", 1, contexts=("/a",))
    aliases = [("h%03d." % i) + "x" * 240 for i in range(20)]
    for call in (lambda: reg.app("ENABLE-APP", "n1", aliases, ["/b"]),
                 lambda: reg.config(BAL, node("n2", 2), [(aliases, ["/c"])]),
                 lambda: reg.app("ENABLE-APP", "n1", ["localhost"],
                                 ["/" + "p" * 70 + str(i) for i in range(20)])):
        with pytest.raises(ClusterError) as e:
            call()
        assert len(e.value.mess) < 400, len(e.value.mess)
        assert "..." in e.value.mess
