"""
The console page (manager-console.md §4): what it shows, its display options,
its links and its security headers.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.support.console_helpers import NONCE, PATH, RELEASE, Client, console_client
from modcluster.cluster.model import BalancerSettings, NodeSettings
from modcluster.cluster.registry import Registry
from modcluster.config import ConsoleConfig
from modcluster.console.resources import CONTENT_SECURITY_POLICY, ConsoleResource, mount
from modcluster.mcmp.handler import MCMPHandler


class _Forms(HTMLParser):
    """Collects forms (method, action, hidden fields, buttons) and link hrefs."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict] = []
        self.links: list[str] = []
        self.stylesheets: list[str] = []
        self.meta_refresh: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"method": a.get("method"), "action": a.get("action"),
                               "fields": {}, "buttons": []})
        elif tag == "input" and self.forms and a.get("type") == "hidden":
            self.forms[-1]["fields"][a["name"]] = a.get("value")
        elif tag == "button" and self.forms:
            self.forms[-1]["buttons"].append((a.get("name"), a.get("value")))
        elif tag == "a" and "href" in a:
            self.links.append(a["href"])
        elif tag == "link" and a.get("rel") == "stylesheet":
            self.stylesheets.append(a["href"])
        elif tag == "meta" and a.get("http-equiv") == "refresh":
            self.meta_refresh.append(a["content"])


def parse(html: str) -> _Forms:
    p = _Forms()
    p.feed(html)
    return p


def context_form(page: _Forms, route: str, context: str) -> dict:
    [form] = [f for f in page.forms if f["fields"].get("Range") == "CONTEXT"
              and f["fields"]["JVMRoute"] == route and f["fields"]["Context"] == context]
    return form


def text_of(html: str) -> str:
    """Visible text with tags removed and whitespace collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_page_shows_release_nodes_vhosts_and_contexts(client):
    """The version header, both nodes with address, state and stats, vhosts, contexts."""
    r = client.get(PATH)
    assert r.status == 200
    html = r.text
    assert html.startswith("<!DOCTYPE html>")
    # The reference's tests find the release in an <h1> on the page.
    assert f"<h1>{RELEASE}</h1>" in html
    text = text_of(html)
    assert "Node node1 (ajp://10.0.0.21:8009)" in text
    assert "Node node2 (http://10.0.0.22:8080)" in text
    assert "LBGroup dc1" in text
    # node1 is OK with load 85; node2 reported Load=0: hot standby.
    assert re.search(r'id="node-1" class="node state-ok"', html)
    assert re.search(r'id="node-2" class="node state-hot-standby"', html)
    assert "Hot standby" in text
    assert "Load 85" in text
    # Aliases of each vhost, contexts with status and request counts.
    assert "Aliases: localhost default-host" in text
    assert "Aliases: example.com" in text
    assert "/app ENABLED 0 0" in text
    assert "/ ENABLED 0 0" in text
    assert "/app DISABLED 0 0" in text
    assert "2 nodes · 3 contexts · 1 balancer" in text


def test_balancer_sticky_settings(client):
    text = text_of(client.get(PATH).text)
    # name, sticky, cookie, path, remove, force, timeout, max attempts, nodes
    assert "mycluster Yes JSESSIONID jsessionid Yes No 5 s 3 node1, node2" in text


def test_counters_are_shown(client, registry):
    n1 = registry.node("node1")
    n1.rt.elected, n1.rt.read, n1.rt.transferred, n1.rt.busy = 12, 20480, 1024, 2
    n1.rt.requests, n1.rt.failures = 40, 1
    ctx = registry.find_context("node1", "localhost", "/app")
    ctx.rt.in_flight, ctx.rt.requests = 2, 39
    text = text_of(client.get(PATH).text)
    for fragment in ("Elected 12", "Read 20.0 KiB", "Transferred 1.0 KiB", "Connected 2",
                     "Requests 40", "Failures 1", "/app ENABLED 2 39"):
        assert fragment in text


def test_nodes_sorted_by_domain_without_domain_first(clock):
    reg = Registry(clock)
    bal = BalancerSettings("mycluster")
    reg.config(bal, NodeSettings(route="zeta", host="127.0.0.1", port=1, domain="b"))
    reg.config(bal, NodeSettings(route="alpha", host="127.0.0.1", port=2, domain="a"))
    reg.config(bal, NodeSettings(route="plain", host="127.0.0.1", port=3))
    client, _ = console_client(reg)
    text = text_of(client.get(PATH).text)
    order = [text.index(s) for s in ("Node plain", "LBGroup a", "Node alpha", "LBGroup b",
                                     "Node zeta")]
    assert order == sorted(order)
    assert "No context registered." in text


def test_states_in_error_removing_unverified(client, registry, clock):
    registry.set_error("node1", "probe at STATUS failed")
    clock.advance(7)
    text = text_of(client.get(PATH).text)
    assert "In error probe at STATUS failed (for 7 s)" in text
    registry.app("REMOVE-APP", "node2", wildcard=True)
    text = text_of(client.get(PATH).text)
    assert "Removing removal pending, purged in about 10 s" in text
    # The removed node has no command buttons, and the domain has no live node.
    page = parse(client.get(PATH).text)
    assert not [f for f in page.forms if f["fields"].get("JVMRoute") == "node2"]
    assert not [f for f in page.forms if f["fields"].get("Range") == "DOMAIN"]


def test_unverified_node(clock):
    src = Registry(clock)
    src.config(BalancerSettings("mycluster"), NodeSettings(route="n", host="127.0.0.1"))
    reg = Registry(clock)
    from modcluster.mcmp.handler import MCMPHandler

    assert MCMPHandler(reg, None, clock).restore_state(src.to_state()) == 1
    client, _ = console_client(reg)
    text = text_of(client.get(PATH).text)
    assert "Unverified restored from saved state, no STATUS since" in text


def test_context_buttons_depend_on_state(client):
    page = parse(client.get(PATH).text)
    enabled = context_form(page, "node1", "/app")
    assert enabled["method"] == "post" and enabled["action"] == PATH
    assert enabled["fields"] == {"nonce": NONCE, "Range": "CONTEXT", "JVMRoute": "node1",
                                 "Alias": "localhost", "Context": "/app"}
    assert enabled["buttons"] == [("Cmd", "DISABLE-APP"), ("Cmd", "STOP-APP")]
    disabled = context_form(page, "node2", "/app")
    assert disabled["fields"]["Alias"] == "example.com"
    assert disabled["buttons"] == [("Cmd", "ENABLE-APP"), ("Cmd", "STOP-APP")]
    [node_form] = [f for f in page.forms if f["fields"].get("Range") == "NODE"
                   and f["fields"]["JVMRoute"] == "node1"]
    assert node_form["buttons"] == [("Cmd", "ENABLE-APP"), ("Cmd", "DISABLE-APP"),
                                    ("Cmd", "STOP-APP")]
    [domain_form] = [f for f in page.forms if f["fields"].get("Range") == "DOMAIN"]
    assert domain_form["fields"]["Domain"] == "dc1"


def test_stopped_context_offers_enable_and_disable(client, registry):
    registry.app("STOP-APP", "node1", ["localhost"], ["/"])
    page = parse(client.get(PATH).text)
    assert context_form(page, "node1", "/")["buttons"] == [("Cmd", "ENABLE-APP"),
                                                          ("Cmd", "DISABLE-APP")]


def test_allow_cmd_off_hides_every_command(make_client):
    client, _ = make_client(allow_cmd=False)
    r = client.get(PATH)
    page = parse(r.text)
    assert page.forms == []
    assert "<button" not in r.text
    assert "Actions" not in r.text
    assert "Commands are disabled" in r.text


def test_registry_text_is_escaped(clock):
    reg = Registry(clock)
    reg.config(BalancerSettings("b<i>"), NodeSettings(route='<script>alert("r")</script>',
                                                      balancer="b<i>", host="127.0.0.1",
                                                      domain="d&<x>"))
    reg.app("ENABLE-APP", '<script>alert("r")</script>', ['a"><img src=x>'], ["/<b>"])
    reg.set_error('<script>alert("r")</script>', "<em>bad</em>")
    client, _ = console_client(reg)
    html = client.get(PATH).text
    assert "<script>" not in html and "<img" not in html and "<em>" not in html
    assert "<b>" not in html and "<i>" not in html
    assert "&lt;script&gt;alert(\"r\")&lt;/script&gt;" in html
    assert 'value="a&quot;&gt;&lt;img src=x&gt;"' in html
    assert "&lt;em&gt;bad&lt;/em&gt;" in html


def test_security_headers(client):
    r = client.get(PATH)
    assert r.header("content-type") == "text/html; charset=utf-8"
    assert r.header("x-content-type-options") == "nosniff"
    assert r.header("cache-control") == "no-store"
    assert r.header("x-frame-options") == "DENY"
    csp = r.header("content-security-policy")
    assert csp == CONTENT_SECURITY_POLICY.decode()
    assert "default-src 'none'" in csp
    # The only script is the console's own file (auto refresh), fetching only
    # the console's own update JSON: no inline code, no other origin.
    assert "script-src 'self';" in csp and "connect-src 'self';" in csp
    assert "unsafe" not in csp
    assert "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
    assert "<script" not in r.text and "style=" not in r.text
    refreshing = client.get(f"{PATH}?refresh=5").text
    assert re.findall(r"<script[^>]*>", refreshing) == [
        f'<script defer="defer" src="{PATH}/static/console.js">']
    assert "style=" not in refreshing and not re.search(r"\son[a-z]+=", refreshing)


def test_stylesheet_is_served_from_the_console_path(client):
    page = parse(client.get(PATH).text)
    assert page.stylesheets == [PATH + "/static/console.css"]
    r = client.get(PATH + "/static/console.css")
    assert r.status == 200
    assert r.header("content-type") == "text/css; charset=utf-8"
    assert r.header("x-content-type-options") == "nosniff"
    assert b".node" in r.body and b"url(" not in r.body and b"@import" not in r.body


def test_trailing_slash_is_the_same_page(client):
    r = client.get(PATH + "/")
    assert r.status == 200 and f"<h1>{RELEASE}</h1>" in r.text
    assert parse(r.text).stylesheets == [PATH + "/static/console.css"]


def test_links_carry_the_nonce_when_check_nonce_is_on(make_client, registry, clock):
    client, _ = make_client(console_kw={"mcmp": MCMPHandler(registry, None, clock)})
    links = parse(client.get(PATH).text).links
    assert f"{PATH}?nonce={NONCE}&refresh=10" in links
    assert f"{PATH}?nonce={NONCE}&Cmd=DUMP&Range=ALL" in links
    assert f"{PATH}?nonce={NONCE}&Cmd=INFO&Range=ALL" in links
    client, _ = make_client(check_nonce=False,
                            console_kw={"mcmp": MCMPHandler(registry, None, clock)})
    links = parse(client.get(PATH).text).links
    assert f"{PATH}?refresh=10" in links
    assert f"{PATH}?Cmd=INFO&Range=ALL" in links
    assert not [link for link in links if "nonce" in link]


def test_info_and_dump_outputs(make_client, registry, clock):
    handler = MCMPHandler(registry, None, clock)
    client, _ = make_client(console_kw={"mcmp": handler})
    r = client.get(f"{PATH}?nonce={NONCE}&Cmd=INFO&Range=ALL")
    assert r.status == 200 and r.header("content-type") == "text/plain; charset=utf-8"
    assert r.body == handler.info()
    assert b"Context: [2:1:3], Context: /app, Status: DISABLED" in r.body
    r = client.get(f"{PATH}?Cmd=DUMP&Range=ALL", headers={"Accept": "text/xml"})
    assert r.header("content-type") == "text/xml; charset=utf-8"
    assert r.body == handler.dump(True)
    assert r.header("x-content-type-options") == "nosniff"


def test_outputs_absent_without_an_mcmp_source(client):
    assert not [link for link in parse(client.get(PATH).text).links if "Cmd=" in link]
    r = client.get(f"{PATH}?Cmd=INFO")
    assert r.status == 404 and "INFO output is not available" in r.text


def test_refresh(client):
    """
    Auto refresh updates the page in place (static/console.js polls
    <path>/update); the Refresh header that reloads everything is gone, and
    the <meta> reload is kept only inside <noscript> for browsers without it.
    """
    r = client.get(f"{PATH}?refresh=5")
    assert r.header("refresh") is None
    assert 'data-refresh="5"' in r.text
    assert f'data-update="{PATH}/update"' in r.text
    assert re.search(r'<noscript><meta http-equiv="refresh" content="5"\s*/?></noscript>',
                     r.text)
    page = parse(r.text)
    assert page.meta_refresh == ["5"]
    # The forms keep the refresh period across a command.
    assert {f["fields"].get("refresh") for f in page.forms} == {"5"}
    assert "Auto refresh: every 5 s" in text_of(r.text)
    # As mod_cluster-manager: values < 1 (or not numbers) become 10.
    for value in ("0", "-3", "abc"):
        assert 'data-refresh="10"' in client.get(f"{PATH}?refresh={value}").text
    r = client.get(PATH)
    assert parse(r.text).meta_refresh == [] and "console.js" not in r.text
    # Key is case-insensitive (the reference documents `Refresh`).
    assert 'data-refresh="7"' in client.get(f"{PATH}?Refresh=7").text


def test_reduce_display(make_client):
    client, _ = make_client(reduce_display=True)
    r = client.get(PATH)
    text = text_of(r.text)
    assert "Balancers" not in text
    assert "Elected" not in text and "Flushwait" not in text
    assert "Node node1 (ajp://10.0.0.21:8009) OK" in text
    assert "/app ENABLED" in text and "Aliases: localhost default-host" in text
    assert 'class="console reduced"' in r.text
    # Commands are still available.
    assert context_form(parse(r.text), "node1", "/app")


def test_allow_display(make_client):
    client, _ = make_client()
    assert "Configuration" not in client.get(PATH).text
    client, _ = make_client(allow_display=True,
                            console_kw={"display": [("Management listener",
                                                      "tcp:6666:interface=127.0.0.1")]})
    text = text_of(client.get(PATH).text)
    assert "Configuration" in text
    assert "Management listener tcp:6666:interface=127.0.0.1" in text
    assert "Check nonce on" in text and "Allow commands on" in text


def test_sessions_only_with_a_source(make_client):
    client, _ = make_client()
    text = text_of(client.get(PATH).text)
    assert "SessionIDs" not in text and "Num sessions" not in text
    sessions = [("A1B2", "node1"), ("C3D4", "node1"), ("E5F6", "node2")]
    client, _ = make_client(console_kw={"sessions": lambda: sessions})
    text = text_of(client.get(PATH).text)
    assert "SessionIDs" in text
    assert "A1B2 node1 C3D4 node1 E5F6 node2" in text
    assert re.search(r"Node node1 .*Num sessions 2 .*Node node2 .*Num sessions 1", text)


def test_footer_links_follow_config(make_client):
    client, _ = make_client()
    links = parse(client.get(PATH).text).links
    assert "/api/v1" in links and "/metrics" in links
    client, _ = make_client(api=False, metrics=False)
    links = parse(client.get(PATH).text).links
    assert "/api/v1" not in links and "/metrics" not in links


def test_empty_registry(clock):
    root = Resource()
    mount(root, "/a/b", ConsoleResource(Registry(clock), ConsoleConfig(), RELEASE))
    r = Client(Site(root)).get("/a/b")
    assert r.status == 200
    assert "No node is registered." in r.text
    assert "Balancers" not in r.text
    assert parse(r.text).stylesheets == ["/a/b/static/console.css"]


def test_head_and_unsupported_methods(client):
    r = client.request("HEAD", PATH)
    assert r.status == 200 and r.body == b""
    r = client.request("PUT", PATH)
    assert r.status == 405
    assert r.header("allow") == "GET, HEAD, POST"
    assert r.header("x-frame-options") == "DENY"


def test_random_nonce_per_instance(registry):
    a = ConsoleResource(registry, ConsoleConfig(), RELEASE)
    b = ConsoleResource(registry, ConsoleConfig(), RELEASE)
    assert a.nonce != b.nonce
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                        a.nonce)


def test_unknown_children_are_404(client):
    for path in ("/nope", "/static/nope.css", "/static/"):
        r = client.get(PATH + path)
        assert r.status == 404


def test_states_ejected_and_slow_start(client, registry, clock):
    """Issue 17: an ejected node and a node in slow start say so."""
    registry.node_ejected("node1", 30.0, "resets")
    clock.advance(10)
    text = text_of(client.get(PATH).text)
    assert "Ejected consecutive failures (passive health), back in about 20 s" in text
    assert "Ejections 1" in text
    clock.advance(35)  # 15 s into its 30 s slow start
    text = text_of(client.get(PATH).text)
    assert "slow start: 50% of its share" in text
