"""
Console commands under identity pinning (issue 14 §4): with [manager.tls]
identities/operators, a node certificate acts only on its own routes, an
operator on any, anyone else gets 403; every command, done or refused, is
logged with the client address and certificate identity and recorded in the
registry's event log (what /api/v1/events serves).
"""

from __future__ import annotations

import pytest
from twisted.logger import LogLevel, capturedLogs

from tests.support.console_helpers import NONCE, PATH
from modcluster.access import CommandAuthority
from modcluster.cluster.model import ContextState
from modcluster.tls import IdentityPolicy

ENABLED, DISABLED = ContextState.ENABLED, ContextState.DISABLED


def node_form(cmd, route, nonce=NONCE):
    return {"nonce": nonce, "Range": "NODE", "JVMRoute": route, "Cmd": cmd}


@pytest.fixture
def as_identity(make_client):
    """C{as_identity(ids, operators=..., pins=...)} -> Client whose peer has C{ids}."""

    def make(ids, operators=("ops",), pins=None):
        policy = IdentityPolicy(pins if pins is not None else {"node1": ["node1"],
                                                               "node2": ["node2"]})
        client, _ = make_client(console_kw={
            "authority": CommandAuthority(policy, operators),
            "identities": lambda request: frozenset(ids)})
        return client

    return make


def test_node_identity_acts_only_on_its_own_node(as_identity, registry):
    client = as_identity({"node2"})
    r = client.post(PATH, node_form("DISABLE-APP", "node1"))
    assert r.status == 403 and "node2" in r.text and "node1" in r.text
    assert registry.find_context("node1", "localhost", "/app").state is ENABLED
    r = client.post(PATH, node_form("ENABLE-APP", "node2"))
    assert r.status == 303
    assert registry.find_context("node2", "example.com", "/app").state is ENABLED


def test_query_string_commands_are_checked_too(as_identity, registry):
    client = as_identity({"node2"})
    r = client.get(f"{PATH}?nonce={NONCE}&Cmd=DISABLE-APP&Range=CONTEXT&JVMRoute=node1"
                   "&Alias=localhost&Context=/app")
    assert r.status == 403
    assert registry.find_context("node1", "localhost", "/app").state is ENABLED


def test_domain_command_needs_every_node_of_the_domain(as_identity, registry):
    """node2 is the only node of dc1: node2 may command the domain, node1 may not."""
    form = {"nonce": NONCE, "Range": "DOMAIN", "Domain": "dc1", "Cmd": "ENABLE-APP"}
    assert as_identity({"node1"}).post(PATH, form).status == 403
    assert as_identity({"node2"}).post(PATH, form).status == 303


def test_operator_acts_on_every_node(as_identity, registry):
    client = as_identity({"OPS"})  # identities compare case-insensitively
    assert client.post(PATH, node_form("DISABLE-APP", "node1")).status == 303
    assert client.post(PATH, node_form("DISABLE-APP", "node2")).status == 303
    assert registry.find_context("node1", "localhost", "/app").state is DISABLED


@pytest.mark.parametrize("ids", [set(), {"stranger"}])
def test_anyone_else_gets_403(as_identity, registry, ids):
    r = as_identity(ids).post(PATH, node_form("DISABLE-APP", "node1"))
    assert r.status == 403
    assert registry.find_context("node1", "localhost", "/app").state is ENABLED


def test_operators_alone_restrict_commands(as_identity, registry):
    """Operators without node pins: only operators may run commands."""
    assert as_identity({"node1"}, pins={}).post(
        PATH, node_form("DISABLE-APP", "node1")).status == 403
    assert as_identity({"ops"}, pins={}).post(
        PATH, node_form("DISABLE-APP", "node1")).status == 303


def test_no_pins_no_operators_means_no_restriction(as_identity, registry):
    assert as_identity(set(), operators=(), pins={}).post(
        PATH, node_form("DISABLE-APP", "node1")).status == 303


def test_pages_are_still_readable_by_any_identity(as_identity):
    assert as_identity({"node2"}).get(PATH).status == 200


def test_commands_are_logged_and_recorded_with_identity_and_address(as_identity, registry):
    with capturedLogs() as events:
        as_identity({"node2"}).post(PATH, node_form("DISABLE-APP", "node1"))
        as_identity({"ops"}).post(PATH, node_form("DISABLE-APP", "node1"))
    refused = [e for e in events if e.get("console_command") == "refused"]
    done = [e for e in events if e.get("console_command") == "DISABLE-APP"]
    assert len(refused) == 1 and len(done) == 1
    assert refused[0]["identity"] == "node2" and refused[0]["peer"] == "127.0.0.1:5555"
    assert refused[0]["log_level"] is LogLevel.warn
    assert done[0]["identity"] == "ops" and done[0]["log_level"] is LogLevel.info
    assert "certificate identity ops" in done[0]["log_format"].format(**done[0])
    recorded = [e for e in registry.events if e["event"].startswith("console.")]
    assert [(e["event"], e["identity"], e["peer"], e["status"] if "status" in e else None)
            for e in recorded] == [("console.refused", "node2", "127.0.0.1:5555", 403),
                                   ("console.command", "ops", "127.0.0.1:5555", None)]
    assert recorded[1]["command"] == "DISABLE-APP" and recorded[1]["route"] == "node1"
    # recorded once, logged once (the console's own line, not a second registry line)
    assert not [e for e in events if e.get("cluster_event", "").startswith("console.")]


def test_commands_without_certificate_are_recorded_with_a_dash(make_client, registry):
    client, _ = make_client()
    client.post(PATH, node_form("DISABLE-APP", "node1"))
    (event,) = [e for e in registry.events if e["event"] == "console.command"]
    assert event["identity"] == "-" and event["via"] == "POST"
