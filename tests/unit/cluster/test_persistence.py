"""
Restoring a damaged state file never hurts the service (issue 13 §5): a saved
state is replayed through MCMP's checks and quotas (modcluster/mcmp/replay.py);
anything MCMP would refuse sets the file aside as C{.bad} with one error line,
and the balancer starts empty and keeps working.
"""

from __future__ import annotations

import copy
import json
import os

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from modcluster.cluster.model import BalancerSettings, NodeSettings
from modcluster.services.persistence import StateStore, write_state
from modcluster.cluster.registry import Limits, Registry
from modcluster.mcmp.handler import MCMPHandler

BAL = BalancerSettings("mycluster", sticky_force=False)


def new_registry(limits=Limits()):
    clock = Clock()
    clock.advance(1_790_000_000)
    reg = Registry(clock, limits)
    return reg, MCMPHandler(reg, None, clock)


def valid_state(nodes=2):
    reg, _ = new_registry()
    for i in range(1, nodes + 1):
        reg.config(BAL, NodeSettings(route=f"node{i}", host="127.0.0.1", port=8000 + i,
                                     domain="d1" if i % 2 else ""))
        reg.app("ENABLE-APP", f"node{i}", ["localhost", "example.com"], ["/app", "/"])
        reg.app("STOP-APP", f"node{i}", ["localhost"], ["/old"])
        reg.app("ENABLE-APP", f"node{i}", ["other.example"], ["/my app"])
        reg.apply_status(f"node{i}", 10 * i, True)
    reg.app("DISABLE-APP", "node1", ["localhost"], ["/app"])
    return json.loads(json.dumps(reg.to_state()))


def restore_file(tmp_path, content, limits=Limits()):
    """Write C{content} (a state dict, or raw bytes) and restore it as the balancer does."""
    path = tmp_path / "state.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_state(str(path), content)
    reg, handler = new_registry(limits)
    store = StateStore(reg, str(path), reg._clock, handler.restore_state)
    with capturedLogs() as events:
        store.restore()
    return reg, handler, path, events


def errors(events):
    return [e for e in events if e["log_level"] >= LogLevel.error]


def assert_clean_start(reg, handler, path, events):
    """Empty registry, the file set aside, one error line, and MCMP still works."""
    assert reg.nodes() == [] and reg.balancers == {} and reg.counts["contexts"] == 0
    assert reg.table.nodes == ()
    assert not path.exists()
    assert (path.parent / "state.json.bad").exists()
    (line,) = errors(events)
    assert "set aside as" in line["log_format"] and "starting empty" in line["log_format"]
    reply = handler.handle("CONFIG", b"/", b"JVMRoute=fresh&Host=127.0.0.1&Port=9999")
    assert reply.status == 200 and reg.node("fresh") is not None


def test_valid_state_restores():
    state = valid_state()
    reg, handler = new_registry()
    assert handler.restore_state(state) == 2
    assert json.loads(json.dumps(reg.to_state())) == state
    assert all(n.rt.unverified for n in reg.nodes())


def test_huge_id_is_refused_without_allocating(tmp_path):
    """An id of 10**30 used to grow the id free list to that size at start-up."""
    for where in ("node", "alias", "context", "vhost"):
        state = valid_state()
        node = state["nodes"][1]
        if where == "node":
            node["id"] = 10**30
        elif where == "alias":
            node["vhosts"][0]["aliases"][0][1] = 10**30
        elif where == "context":
            node["vhosts"][0]["contexts"][0][0] = 10**30
        else:
            node["vhosts"][0]["id"] = 10**30
        sub = tmp_path / where
        sub.mkdir()
        reg, handler, path, events = restore_file(sub, state)
        assert_clean_start(reg, handler, path, events)
        assert "not an id" in str(errors(events)[0]["why"])


def test_ids_are_not_sizes():
    """Large but valid ids are only checked; the registry numbers records itself."""
    state = valid_state()
    state["nodes"][0]["id"], state["nodes"][1]["id"] = 2**31 - 1, 2**31 - 2
    reg, handler = new_registry()
    assert handler.restore_state(state) == 2
    # saved order kept (node2 had the smaller id), small ids
    assert [(n.id, n.route) for n in reg.nodes()] == [(1, "node2"), (2, "node1")]


@pytest.mark.parametrize("content", [b"[]", b"[1, 2]", b"null", b"42", b'"state"', b"{}",
                                     b'{"format": 1}', b"\xff\xfe", b"{not json",
                                     b"[" * 100_000])
def test_not_a_state_object(tmp_path, content):
    """A top-level array (or anything but the state object) used to crash start-up."""
    assert_clean_start(*restore_file(tmp_path, content))


@pytest.mark.parametrize("change, why", [
    (lambda n: n["settings"].update(route="<script>alert(1)</script>"), "SYNTAX"),
    (lambda n: n["settings"].update(route=""), ""),
    (lambda n: n["settings"].update(route="r" * 64), "JVMRoute"),
    (lambda n: n["settings"].update(type="gopher"), "Type"),
    (lambda n: n["settings"].update(host="a\r\nb"), "SYNTAX"),
    (lambda n: n.update(load=1000), "Load"),
    (lambda n: n.update(load=-7), "Load"),
    (lambda n: n.update(load=True), "load"),
    (lambda n: n["vhosts"][0]["contexts"][0].__setitem__(2, "RUNNING"), "unknown state"),
    (lambda n: n["vhosts"][0]["contexts"][0].__setitem__(1, "no-slash\x00"), ""),
    (lambda n: n["vhosts"][0]["aliases"][0].__setitem__(0, "UPPER.example"), "normalises"),
    (lambda n: n["settings"].update(ping=0.0001), "milliseconds"),
])
def test_what_mcmp_refuses_is_refused(tmp_path, change, why):
    state = valid_state()
    change(state["nodes"][1])
    reg, handler, path, events = restore_file(tmp_path, state)
    assert_clean_start(reg, handler, path, events)
    assert why in str(errors(events)[0]["why"])


@pytest.mark.parametrize("kind", ["node", "alias", "context", "vhost"])
def test_duplicate_ids(tmp_path, kind):
    state = valid_state()
    a, b = state["nodes"]
    if kind == "node":
        b["id"] = a["id"]
    elif kind == "alias":
        b["vhosts"][0]["aliases"][0][1] = a["vhosts"][0]["aliases"][0][1]
    elif kind == "context":
        b["vhosts"][0]["contexts"][0][0] = a["vhosts"][0]["contexts"][0][0]
    else:
        b["vhosts"][1]["id"] = b["vhosts"][0]["id"]
    reg, handler, path, events = restore_file(tmp_path, state)
    assert_clean_start(reg, handler, path, events)
    assert "duplicate" in str(errors(events)[0]["why"])


def test_duplicate_route_and_same_backend(tmp_path):
    state = valid_state()
    twin = copy.deepcopy(state["nodes"][0])
    twin["id"] = 99
    for v in twin["vhosts"]:
        for pair in v["aliases"]:
            pair[1] += 100
        for triple in v["contexts"]:
            triple[0] += 100
    state["nodes"].append(twin)
    assert_clean_start(*restore_file(tmp_path / "", state))
    # another route on the same host:port: MCMP says "same worker"
    state = valid_state()
    state["nodes"][1]["settings"]["port"] = state["nodes"][0]["settings"]["port"]
    reg, handler, path, events = restore_file(tmp_path, state)
    assert_clean_start(reg, handler, path, events)
    assert "same worker" in str(errors(events)[0]["why"])


def test_more_nodes_than_the_quota(tmp_path):
    """100 nodes in the file, max_nodes = 20: MCMP's quota applies, nothing is kept."""
    reg, _ = new_registry()
    for i in range(100):
        reg.config(BAL, NodeSettings(route=f"n{i}", host="127.0.0.1", port=10000 + i))
        reg.app("ENABLE-APP", f"n{i}", ["localhost"], ["/app"])
    state = reg.to_state()
    reg, handler, path, events = restore_file(tmp_path, state, Limits(max_nodes=20))
    assert_clean_start(reg, handler, path, events)
    assert "MEM" in str(errors(events)[0]["why"])
    # and the context quota
    reg, handler, path, events = restore_file(tmp_path, state, Limits(max_contexts=50))
    assert reg.nodes() == [] and "MEM" in str(errors(events)[0]["why"])


def test_earlier_bad_file_is_not_overwritten(tmp_path):
    for n in range(3):
        path = tmp_path / "state.json"
        path.write_bytes(b"[%d]" % n)
        reg, handler = new_registry()
        StateStore(reg, str(path), reg._clock, handler.restore_state).restore()
    bad = sorted(p.name for p in tmp_path.iterdir())
    assert len(bad) == 3 and bad[0] == "state.json.bad"
    assert all(name.startswith("state.json.bad") for name in bad)
    contents = sorted((tmp_path / name).read_bytes() for name in bad)
    assert contents == [b"[0]", b"[1]", b"[2]"]


def test_missing_file_starts_empty_quietly(tmp_path):
    reg, handler = new_registry()
    store = StateStore(reg, str(tmp_path / "none.json"), reg._clock, handler.restore_state)
    with capturedLogs() as events:
        store.restore()
    assert reg.nodes() == [] and not errors(events)
    assert list(tmp_path.iterdir()) == []


# -- random damage -------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)

_SPECIAL = st.sampled_from([
    0, -1, 1, 2, 10**30, 2**31, True, None, "", "/", "ENABLED", "STOPPED", "ws", "http",
    "localhost", "<x>", "a,b", "UPPER", 0.5, 100, 101, [], {}, "node1", "mycluster",
])


def _paths(value, prefix=()):
    """Every (container path) in a JSON value, with the value there."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


@st.composite
def damaged_states(draw):
    state = valid_state(draw(st.integers(1, 3)))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(state))
        path, _ = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "special", "delete", "duplicate",
                                       "reverse", "reverse"]))
        if action == "reverse":  # often harmless: order of nodes, vhosts, aliases
            lists = [v for _, v in paths if isinstance(v, list)]
            if lists:
                draw(st.sampled_from(lists)).reverse()
            continue
        if not path:
            if action in ("replace", "special"):
                state = draw(_json if action == "replace" else _SPECIAL)
            continue
        parent = state
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        if action == "replace":
            parent[key] = draw(_json)
        elif action == "special":
            parent[key] = draw(_SPECIAL)
        elif action == "delete":
            del parent[key]
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
        else:
            parent[str(key) + "x"] = copy.deepcopy(parent[key])
    return state


def _passes_validation(reg, limits) -> None:
    """What was restored is a state MCMP could have built: it replays unchanged."""
    state = json.loads(json.dumps(reg.to_state()))
    again, handler = new_registry(limits)
    assert handler.restore_state(state) == len(reg.nodes())
    assert json.loads(json.dumps(again.to_state())) == state
    counts = reg.counts
    assert counts["nodes"] <= limits.max_nodes and counts["contexts"] <= limits.max_contexts
    for node in reg.nodes():
        assert -1 <= node.rt.lbfactor <= 100 and node.rt.unverified


@settings(max_examples=300)
@given(damaged_states())
def test_random_damage_never_raises(tmp_path_factory, state):
    """
    Random mutations of a valid state file never raise out of restore: either
    the result passes validation, or the file is set aside and the start is clean.
    """
    limits = Limits(max_nodes=3, max_contexts=20)
    tmp = tmp_path_factory.mktemp("state")
    path = tmp / "state.json"
    try:
        text = json.dumps(state)
    except (ValueError, RecursionError):
        return
    path.write_text(text)
    reg, handler = new_registry(limits)
    store = StateStore(reg, str(path), reg._clock, handler.restore_state)
    with capturedLogs() as events:
        store.restore()
    if path.exists():
        event("restored")
        assert not errors(events)
        _passes_validation(reg, limits)
    else:
        event("set aside")
        assert reg.nodes() == [] and reg.counts == {
            "nodes": 0, "balancers": 0, "aliases": 0, "contexts": 0}
        assert len(errors(events)) == 1 and os.path.exists(str(path) + ".bad")
