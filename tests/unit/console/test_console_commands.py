"""
Console commands (manager-console.md §2.2, §3): the page's POST forms and the
query-string form scripts use, with the nonce, AllowCmd, and clear errors that
change nothing.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
from twisted.logger import LogLevel, capturedLogs

from tests.support.console_helpers import NONCE, PATH
from modcluster.cluster.model import ContextState
from modcluster.mcmp.handler import MCMPHandler

ENABLED, DISABLED, STOPPED = ContextState.ENABLED, ContextState.DISABLED, ContextState.STOPPED


def states(registry) -> dict:
    """(route, alias-set, path) → state of every context (to check nothing changed)."""
    out = {}
    for node in registry.nodes():
        for vhost, ctx in registry.contexts_of(node):
            out[(node.settings.route, frozenset(vhost.aliases), ctx.path)] = ctx.state
    return out


def state(registry, route, alias, path):
    return registry.find_context(route, alias, path).state


def ctx_form(cmd, route="node1", alias="localhost", context="/app", nonce=NONCE, **extra):
    form = {"nonce": nonce, "Range": "CONTEXT", "JVMRoute": route, "Alias": alias,
            "Context": context, "Cmd": cmd}
    form.update(extra)
    return {k: v for k, v in form.items() if v is not None}


# -- POST forms ---------------------------------------------------------------


def test_post_disables_a_context_and_redirects_back(client, registry, clock):
    before = states(registry)
    r = client.post(PATH, ctx_form("DISABLE-APP"))
    assert r.status == 303
    assert r.header("location") == f"{PATH}#node-1"
    assert r.header("cache-control") == "no-store"
    assert state(registry, "node1", "localhost", "/app") is DISABLED
    # Only that context changed.
    after = states(registry)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {("node1", frozenset({"localhost", "default-host"}), "/app")}
    # The node's INFO (what the Java node parses) says DISABLED too.
    info = MCMPHandler(registry, None, clock).info().decode()
    assert "Context: [1:1:1], Context: /app, Status: DISABLED" in info
    # The page now offers Enable and Stop for it.
    page = client.get(PATH).text
    assert "badge status-disabled" in page


@pytest.mark.parametrize("cmd,expected", [("STOP-APP", STOPPED), ("DISABLE-APP", DISABLED),
                                          ("ENABLE-APP", ENABLED)])
def test_post_every_context_command(client, registry, cmd, expected):
    if cmd == "ENABLE-APP":
        registry.app("STOP-APP", "node1", ["localhost"], ["/"])
    assert client.post(PATH, ctx_form(cmd, context="/")).status == 303
    assert state(registry, "node1", "localhost", "/") is expected


def test_post_with_any_alias_of_the_vhost(client, registry):
    assert client.post(PATH, ctx_form("STOP-APP", alias="default-host")).status == 303
    assert state(registry, "node1", "localhost", "/app") is STOPPED


def test_post_node_range_changes_all_contexts_of_the_node(client, registry):
    r = client.post(PATH, {"nonce": NONCE, "Range": "NODE", "JVMRoute": "node1",
                           "Cmd": "STOP-APP"})
    assert r.status == 303 and r.header("location") == f"{PATH}#node-1"
    assert state(registry, "node1", "localhost", "/app") is STOPPED
    assert state(registry, "node1", "localhost", "/") is STOPPED
    assert state(registry, "node2", "example.com", "/app") is DISABLED


def test_post_domain_range(client, registry):
    r = client.post(PATH, {"nonce": NONCE, "Range": "DOMAIN", "Domain": "dc1",
                           "Cmd": "ENABLE-APP"})
    assert r.status == 303 and r.header("location") == PATH
    assert state(registry, "node2", "example.com", "/app") is ENABLED
    assert state(registry, "node1", "localhost", "/app") is ENABLED


def test_post_keeps_the_refresh_period(client):
    r = client.post(PATH, ctx_form("DISABLE-APP", refresh="5"))
    assert r.header("location") == f"{PATH}?refresh=5#node-1"


@pytest.mark.parametrize("nonce", ["", "wrong", NONCE.upper(), None])
def test_post_needs_the_nonce(client, registry, nonce):
    before = states(registry)
    r = client.post(PATH, ctx_form("DISABLE-APP", nonce=nonce))
    assert r.status == 403
    assert "nonce is missing or wrong" in r.text
    assert states(registry) == before


def test_post_needs_the_nonce_even_with_check_nonce_off(make_client, registry):
    """check_nonce only relaxes the query-string form; the page's forms always carry it."""
    client, _ = make_client(check_nonce=False)
    before = states(registry)
    assert client.post(PATH, ctx_form("DISABLE-APP", nonce=None)).status == 403
    assert states(registry) == before
    assert client.post(PATH, ctx_form("DISABLE-APP")).status == 303


@pytest.mark.parametrize("form,code,message", [
    (ctx_form("DISABLE-APP", route="nodeX"), 404,
     "MEM: Can't read node with \"nodeX\" JVMRoute"),
    (ctx_form("DISABLE-APP", alias="nosuch.example"), 404,
     "Can't find alias \"nosuch.example\" on node \"node1\""),
    (ctx_form("DISABLE-APP", context="/nosuch"), 404,
     "Can't find context \"/nosuch\" of alias \"localhost\" on node \"node1\""),
    (ctx_form("DISABLE-APP", route=""), 400, "JVMRoute can"),
    (ctx_form("DISABLE-APP", alias=""), 400, "Alias can"),
    (ctx_form("DISABLE-APP", context=""), 400, "Context can"),
    (ctx_form("REMOVE-APP"), 400, "REMOVE-APP is not available from the console"),
    (ctx_form("FROB-APP"), 400, "Command is not supported"),
    (ctx_form(None), 400, "Command is not supported"),
    (ctx_form("DISABLE-APP", Range=None), 400, "Range is required"),
    ({"nonce": NONCE, "Range": "NODE", "JVMRoute": "ghost", "Cmd": "STOP-APP"}, 404,
     "ghost"),
    ({"nonce": NONCE, "Range": "DOMAIN", "Domain": "nowhere", "Cmd": "STOP-APP"}, 404,
     "nowhere"),
    ({"nonce": NONCE, "Range": "DOMAIN", "Domain": "", "Cmd": "STOP-APP"}, 400,
     "Domain can"),
])
def test_post_errors_change_nothing(client, registry, form, code, message):
    before = states(registry)
    counts = dict(registry.counts)
    r = client.post(PATH, form)
    assert r.status == code
    assert message in r.text
    assert "Command failed" in r.text
    assert r.header("type") in ("SYNTAX", "MEM")
    assert r.header("mess")
    assert r.header("content-type") == "text/html; charset=utf-8"
    assert r.header("x-content-type-options") == "nosniff"
    # Nothing changed, and in particular no context was created (DISABLE-APP on an
    # unknown context would create it through MCMP).
    assert states(registry) == before
    assert registry.counts == counts


def test_removed_node_cannot_be_commanded(client, registry):
    registry.app("REMOVE-APP", "node2", wildcard=True)
    r = client.post(PATH, {"nonce": NONCE, "Range": "NODE", "JVMRoute": "node2",
                           "Cmd": "ENABLE-APP"})
    assert r.status == 404


def test_allow_cmd_off_refuses_commands(make_client, registry):
    client, _ = make_client(allow_cmd=False)
    before = states(registry)
    r = client.post(PATH, ctx_form("DISABLE-APP"))
    assert r.status == 403 and "Commands are disabled" in r.text
    r = client.get(f"{PATH}?nonce={NONCE}&Cmd=DISABLE-APP&Range=CONTEXT&JVMRoute=node1"
                   "&Alias=localhost&Context=/app")
    assert r.status == 403
    assert states(registry) == before


def test_error_text_is_escaped(client, registry):
    r = client.post(PATH, ctx_form("DISABLE-APP", route="<script>x</script>"))
    assert r.status == 404
    assert "<script>" not in r.text and "&lt;script&gt;x&lt;/script&gt;" in r.text


def test_oversized_form(client, registry):
    before = states(registry)
    r = client.request("POST", PATH, b"nonce=" + b"x" * 70000,
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 413
    assert states(registry) == before


def test_undecodable_form(client, registry):
    r = client.request("POST", PATH, b"nonce=%ff%fe&Cmd=STOP-APP",
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 400


# -- query-string commands (existing scripts) --------------------------------------


def query(cmd="DISABLE-APP", route="node1", alias="localhost", context="/app",
          nonce=NONCE, rng="CONTEXT"):
    parts = []
    if nonce is not None:
        parts.append(f"nonce={nonce}")
    parts.append(f"Cmd={cmd}")
    if rng is not None:
        parts.append(f"Range={rng}")
    parts += [f"JVMRoute={route}", f"Alias={alias}", f"Context={context}"]
    return PATH + "?" + "&".join(parts)


def test_get_command_runs_and_renders_the_page(client, registry):
    r = client.get(query())
    # As mod_cluster-manager: the normal page, no redirect.
    assert r.status == 200
    assert "<h1>mod_cluster/1.3.22.Final</h1>" in r.text
    assert state(registry, "node1", "localhost", "/app") is DISABLED
    assert "badge status-disabled" in r.text


def test_head_never_runs_a_command(client, registry):
    before = states(registry)
    r = client.request("HEAD", query())
    assert r.status == 200 and r.body == b""
    assert states(registry) == before


def test_get_command_keys_are_case_insensitive(client, registry):
    r = client.get(f"{PATH}?NONCE={NONCE}&cmd=stop-app&range=context&jvmroute=node1"
                   "&alias=localhost&context=/app")
    assert r.status == 200
    assert state(registry, "node1", "localhost", "/app") is STOPPED


def test_get_command_with_encoded_values(client, registry):
    r = client.get(query(context=quote("/app", safe="")))  # Context=%2Fapp
    assert r.status == 200
    assert state(registry, "node1", "localhost", "/app") is DISABLED


def test_get_node_range(client, registry):
    r = client.get(f"{PATH}?nonce={NONCE}&Cmd=DISABLE-APP&Range=NODE&JVMRoute=node1")
    assert r.status == 200
    assert state(registry, "node1", "localhost", "/app") is DISABLED
    assert state(registry, "node1", "localhost", "/") is DISABLED


def test_get_unknown_range_means_context(client, registry):
    assert client.get(query(rng="WHATEVER")).status == 200
    assert state(registry, "node1", "localhost", "/app") is DISABLED


@pytest.mark.parametrize("nonce", [None, "", "nope"])
def test_get_command_needs_the_nonce_when_checked(client, registry, nonce):
    before = states(registry)
    r = client.get(query(nonce=nonce))
    assert r.status == 403
    assert states(registry) == before


def test_get_command_without_nonce_when_not_checked(make_client, registry):
    client, _ = make_client(check_nonce=False)
    r = client.get(query(nonce=None))
    assert r.status == 200
    assert state(registry, "node1", "localhost", "/app") is DISABLED


def test_get_command_failures(client, registry):
    before = states(registry)
    r = client.get(query(route="nodeX"))
    assert r.status == 404
    assert "Command failed: MEM: Can't read node with \"nodeX\" JVMRoute" in r.text
    assert r.header("type") == "MEM"
    assert r.header("mess") == 'MEM: Can\'t read node with "nodeX" JVMRoute'
    assert r.header("version") == "0.2.1"
    assert client.get(query(rng=None)).status == 400
    assert client.get(query(cmd="REMOVE-APP")).status == 400
    assert states(registry) == before


def test_query_item_without_equals_is_400(client, registry):
    before = states(registry)
    r = client.get(f"{PATH}?nonce={NONCE}&Cmd=DISABLE-APP&bogus")
    assert r.status == 400
    assert "has no" in r.text
    assert states(registry) == before


def test_stale_nonce_on_a_plain_page_is_ignored(client):
    """Only commands need the nonce; an old bookmark still shows the page."""
    r = client.get(f"{PATH}?nonce=old-one&refresh=10")
    assert r.status == 200 and 'data-refresh="10"' in r.text


# -- logging --------------------------------------------------------------------


def test_commands_are_logged_with_the_client_address(client):
    with capturedLogs() as events:
        client.post(PATH, ctx_form("DISABLE-APP"))
        client.post(PATH, ctx_form("DISABLE-APP", nonce="bad"))
    done = [e for e in events if e.get("console_command") == "DISABLE-APP"]
    assert len(done) == 1
    assert done[0]["peer"] == "127.0.0.1:5555"
    assert done[0]["route"] == "node1" and done[0]["context"] == "/app"
    assert done[0]["log_level"] is LogLevel.info
    refused = [e for e in events if e.get("console_command") == "refused"]
    assert len(refused) == 1
    assert refused[0]["peer"] == "127.0.0.1:5555"
    assert refused[0]["status"] == 403
    assert refused[0]["log_level"] is LogLevel.warn
