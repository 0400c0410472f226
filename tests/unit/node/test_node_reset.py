"""
Reset requests after INFO (Java ResetRequestSourceImpl), from parsed INFO text.
"""

from __future__ import annotations

from modcluster.node.javaparse import parse_info_as_java
from modcluster.node.reset import AppState, reset_requests
from modcluster.node.wire import NodeRegistration, encode_request
from tests.support.node_testlib import trace_run, wire_bytes

NODE = NodeRegistration(jvm_route="node1", host="127.0.0.1", port=28009, type="ajp")
ENABLED = {"/": AppState.ENABLED, "/app1": AppState.ENABLED}

NODE_LINE = (
    "Node: [1],Name: node1,Balancer: mycluster,LBGroup: ,Host: 127.0.0.1,Port: 28009,"
    "Type: ajp,Flushpackets: Off,Flushwait: 10,Ping: 10,Smax: 1,Ttl: 60,Elected: 0,Read: 0,"
    "Transfered: 0,Connected: 0,Load: 100\n"
)


def lines(requests) -> list[str]:
    return [
        f"{r.method} {'*' if r.wildcard else '/'} {r.body()}" for r in requests
    ]


def test_empty_info_registers_everything_as_the_trace() -> None:
    """After an empty INFO: CONFIG then ENABLE-APP per context (trace A2..A4)."""
    requests = reset_requests(NODE, ["localhost"], ENABLED, parse_info_as_java(""))
    run = trace_run("A")
    assert [encode_request(r, "127.0.0.1", 26666) for r in requests] == [
        wire_bytes(e.raw_request) for e in run[1:4]
    ]


def test_info_showing_everything_gives_config_only() -> None:
    """Trace B8/B9: INFO lists node1 with both contexts ENABLED -> only CONFIG."""
    run = trace_run("B")
    info = run[7].response.body.decode()
    requests = reset_requests(NODE, ["localhost"], ENABLED, parse_info_as_java(info))
    assert [encode_request(r, "127.0.0.1", 26666) for r in requests] == [
        wire_bytes(run[8].raw_request)
    ]


def test_missing_and_different_contexts() -> None:
    """A context reported DISABLED is enabled again, an unknown one is enabled."""
    info = NODE_LINE + (
        "Vhost: [1:1:1], Alias: localhost\n"
        "Context: [1:1:1], Context: /, Status: DISABLED\n"
    )
    requests = reset_requests(NODE, ["localhost"], ENABLED, parse_info_as_java(info))
    assert lines(requests) == [
        "CONFIG / JVMRoute=node1&Host=127.0.0.1&Port=28009&StickySessionForce=No&Type=ajp",
        "ENABLE-APP / JVMRoute=node1&Alias=localhost&Context=%2F",
        "ENABLE-APP / JVMRoute=node1&Alias=localhost&Context=%2Fapp1",
    ]


def test_wanted_states_disabled_and_stopped() -> None:
    """DISABLE-APP and STOP-APP for contexts wanted so but reported otherwise."""
    info = NODE_LINE + (
        "Vhost: [1:1:1], Alias: localhost\n"
        "Context: [1:1:1], Context: /, Status: ENABLED\n"
        "Context: [1:1:2], Context: /a, Status: STOPPED\n"
        "Context: [1:1:3], Context: /b, Status: ENABLED\n"
    )
    wanted = {"/": AppState.DISABLED, "/a": AppState.STOPPED, "/b": AppState.STOPPED}
    requests = reset_requests(NODE, ["localhost"], wanted, parse_info_as_java(info))
    assert [r.method for r in requests] == ["CONFIG", "DISABLE-APP", "STOP-APP"]
    assert requests[1].parameter("Context") == "/" and requests[2].parameter("Context") == "/b"


def test_alias_set_differs_forces_full_reset() -> None:
    """A reported vhost with another alias set -> REMOVE-APP * first, then everything."""
    info = NODE_LINE + (
        "Vhost: [1:1:1], Alias: localhost\n"
        "Vhost: [1:1:2], Alias: old.example\n"
        "Context: [1:1:1], Context: /, Status: ENABLED\n"
        "Context: [1:1:2], Context: /app1, Status: ENABLED\n"
    )
    requests = reset_requests(NODE, ["localhost"], ENABLED, parse_info_as_java(info))
    assert lines(requests) == [
        "REMOVE-APP * JVMRoute=node1",
        "CONFIG / JVMRoute=node1&Host=127.0.0.1&Port=28009&StickySessionForce=No&Type=ajp",
        "ENABLE-APP / JVMRoute=node1&Alias=localhost&Context=%2F",
        "ENABLE-APP / JVMRoute=node1&Alias=localhost&Context=%2Fapp1",
    ]


def test_two_aliases_matching() -> None:
    """Our two aliases reported in one vhost (1.3.x model): nothing to reset."""
    info = NODE_LINE + (
        "Vhost: [1:1:1], Alias: localhost\n"
        "Vhost: [1:1:2], Alias: www.example\n"
        "Context: [1:1:1], Context: /, Status: ENABLED\n"
    )
    requests = reset_requests(
        NODE, ["localhost", "www.example"], {"/": AppState.ENABLED}, parse_info_as_java(info)
    )
    assert [r.method for r in requests] == ["CONFIG"]


def test_obsolete_context_removed_first() -> None:
    """A reported context we no longer have is removed (before CONFIG)."""
    info = NODE_LINE + (
        "Vhost: [1:1:1], Alias: localhost\n"
        "Context: [1:1:1], Context: /, Status: ENABLED\n"
        "Context: [1:1:2], Context: /gone, Status: ENABLED\n"
    )
    requests = reset_requests(NODE, ["localhost"], {"/": AppState.ENABLED},
                              parse_info_as_java(info))
    assert lines(requests) == [
        "REMOVE-APP / JVMRoute=node1&Alias=localhost&Context=%2Fgone",
        "CONFIG / JVMRoute=node1&Host=127.0.0.1&Port=28009&StickySessionForce=No&Type=ajp",
    ]


def test_all_reported_contexts_obsolete() -> None:
    """Every reported context unknown to us -> REMOVE-APP *."""
    info = NODE_LINE + (
        "Vhost: [1:1:1], Alias: localhost\n"
        "Context: [1:1:1], Context: /old, Status: ENABLED\n"
    )
    requests = reset_requests(NODE, ["localhost"], {"/": AppState.ENABLED},
                              parse_info_as_java(info))
    assert [r.method for r in requests] == ["REMOVE-APP", "CONFIG", "ENABLE-APP"]
    assert requests[0].wildcard


def test_other_nodes_are_ignored() -> None:
    """INFO about another JVMRoute does not change our requests."""
    info = NODE_LINE.replace("node1", "node2") + (
        "Vhost: [1:1:1], Alias: localhost\n"
        "Context: [1:1:1], Context: /, Status: ENABLED\n"
    )
    requests = reset_requests(NODE, ["localhost"], ENABLED, parse_info_as_java(info))
    assert [r.method for r in requests] == ["CONFIG", "ENABLE-APP", "ENABLE-APP"]
