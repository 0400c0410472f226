"""
The console of a large cluster (issue 20): what is shown is bounded (overview,
node finder, one page of node rows, a node's detail view), the work is linear
in what is shown, and auto refresh fetches only the live numbers.

No timings here (they are in bench/run.py, ``console-1000``); the linearity
tests count executed Python lines, which is deterministic.
"""

from __future__ import annotations

import json
import re
import sys

import pytest
from twisted.internet.task import Clock

from tests.support.console_helpers import NONCE, PATH, console_client
from modcluster.cluster.model import BalancerSettings, NodeSettings
from modcluster.cluster.registry import Limits, Registry
from modcluster.cluster import views


def cluster(clock, nodes: int, contexts: int = 10, domains: int = 4) -> Registry:
    """C{nodes} nodes n0000… with C{contexts} contexts each on two aliases."""
    reg = Registry(clock, Limits(max_contexts=200_000, max_hosts=50_000))
    bal = BalancerSettings("mycluster")
    for i in range(nodes):
        route = f"n{i:04d}"
        paths = [f"/app{j}" for j in range(contexts)]
        reg.config(bal, NodeSettings(route=route, host=f"10.1.{i // 250}.{i % 250}",
                                     port=8009, domain=f"dc{i % domains}" if domains else ""),
                   [([f"www{i}.example.com", "localhost"], paths)])
        reg.app("ENABLE-APP", route, ["localhost"], paths)
        reg.apply_status(route, 50, True)
    return reg


@pytest.fixture(scope="module")
def big():
    clock = Clock()
    clock.advance(1_000_000)
    return cluster(clock, 1000), clock


def row_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr id="node-(\d+)" class="node-row', html)]


def routes_shown(html: str) -> list[str]:
    """Routes of the node list (rows or cards), in page order."""
    return re.findall(r'(?:node-col"><a|<h3>Node <a) class="route" href="[^"]*JVMRoute=([^"&]+)',
                      html)


def lines_executed(fn) -> int:
    """Python lines executed by C{fn()} (a deterministic measure of work)."""
    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return local

    def tracer(frame, event, arg):
        return local

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


# -- bounded --------------------------------------------------------------------------


def test_first_page_at_1000_nodes_is_bounded(big):
    reg, clock = big
    client, _ = console_client(reg, clock)
    r = client.get(PATH)
    assert r.status == 200
    assert len(r.body) <= 500_000
    html = r.text
    # One page of rows, not 1 000 cards, nor 10 000 context rows.
    assert len(row_ids(html)) == 50
    assert 'class="node state-' not in html and 'class="ctx ' not in html
    assert html.count('name="Range" value="NODE"') == 50
    assert 'name="Range" value="CONTEXT"' not in html
    # The overview counts everything.
    assert '<span class="n" data-count="ok">1000</span>' in html
    assert '<span class="n" data-count="ctx-enabled">10000</span>' in html
    assert "1000 nodes · 10000 contexts · 1 balancer" in html
    assert "Nodes 1–50 of 1000 of the cluster" in html
    # The balancer table counts members instead of listing 1 000 routes.
    assert "1000 nodes</td>" in html
    # The domains table with one command form per domain.
    assert html.count('name="Range" value="DOMAIN"') == 4
    # Pages: first, window, last; no link per page.
    assert f'href="{PATH}?page=20#nodes"' in html
    assert len(re.findall(r'class="page[^"]*"', html)) < 20


def test_node_detail_at_1000_nodes(big):
    reg, clock = big
    client, _ = console_client(reg, clock)
    r = client.get(f"{PATH}?JVMRoute=n0500")
    assert r.status == 200
    html = r.text
    assert len(r.body) < 40_000
    assert re.findall(r'<article id="node-(\d+)"', html) == [str(reg.node("n0500").id)]
    assert html.count('name="Range" value="CONTEXT"') == 10
    assert "← All nodes" in html
    assert 'class="panel overview"' not in html  # the detail view skips the overview
    # mod_cluster-manager's own query (Range=NODE&JVMRoute=…) shows the same view.
    same = client.get(f"{PATH}?Range=NODE&JVMRoute=n0500").text
    assert re.findall(r'<article id="node-(\d+)"', same) == [str(reg.node("n0500").id)]
    r = client.get(f"{PATH}?JVMRoute=nosuch")
    assert r.status == 404 and 'No node with JVMRoute "nosuch"' in r.text


def test_page_size_is_capped(big):
    reg, clock = big
    client, _ = console_client(reg, clock)
    r = client.get(f"{PATH}?size=100000")
    assert len(row_ids(r.text)) == 200
    assert len(r.body) <= 500_000
    for bad in ("0", "-5", "x"):
        assert len(row_ids(client.get(f"{PATH}?size={bad}").text)) == 50


# -- linear ---------------------------------------------------------------------------


def test_rendering_work_is_linear_in_rows_shown(clock):
    """
    Twice the rows cost at most about twice the work.  (With slots filled once
    for the whole page, the flattener's growing slot stack made every row scan
    everything rendered before it: 50 → 100 rows then cost 3-4 times as much.)
    """
    reg = cluster(clock, 240, contexts=3)
    client, _ = console_client(reg, clock)
    client.get(PATH)  # the index and the template are built once
    small = lines_executed(lambda: client.get(f"{PATH}?size=50"))
    large = lines_executed(lambda: client.get(f"{PATH}?size=100"))
    assert large < 2.1 * small


def test_detail_work_is_linear_in_contexts(clock):
    reg_a = cluster(clock, 1, contexts=100, domains=0)
    reg_b = cluster(clock, 1, contexts=200, domains=0)
    a, _ = console_client(reg_a, clock)
    b, _ = console_client(reg_b, clock)
    a.get(f"{PATH}?JVMRoute=n0000")
    b.get(f"{PATH}?JVMRoute=n0000")
    small = lines_executed(lambda: a.get(f"{PATH}?JVMRoute=n0000"))
    large = lines_executed(lambda: b.get(f"{PATH}?JVMRoute=n0000"))
    assert large < 2.1 * small


def test_first_page_work_is_linear_in_cluster_size(clock):
    """The first page shows the same amount; only the overview's counting grows."""
    a, _ = console_client(cluster(clock, 200, contexts=5), clock)
    b, _ = console_client(cluster(clock, 400, contexts=5), clock)
    a.get(PATH)
    b.get(PATH)
    small = lines_executed(lambda: a.get(PATH))
    large = lines_executed(lambda: b.get(PATH))
    assert large < 2 * small


def test_index_is_built_once_per_structure_version(clock, monkeypatch):
    reg = cluster(clock, 30, contexts=2)
    client, _ = console_client(reg, clock)
    builds = []
    real = views.NodeIndex.build.__func__

    def counting(cls, registry, version):
        builds.append(version)
        return real(cls, registry, version)

    monkeypatch.setattr(views.NodeIndex, "build", classmethod(counting))
    client.get(PATH)
    client.get(f"{PATH}?q=n001")
    client.get(f"{PATH}/update")
    reg.apply_status("n0001", 20, True)  # numbers only: same structure
    reg.set_error("n0002", "probe failed")
    client.get(PATH)
    assert len(builds) == 1
    reg.app("DISABLE-APP", "n0003", ["localhost"], ["/app0"])  # a context state changed
    html = client.get(PATH).text
    assert len(builds) == 2
    assert '<span class="n" data-count="ctx-disabled">1</span>' in html


# -- finder ---------------------------------------------------------------------------


@pytest.fixture
def forty(clock):
    reg = cluster(clock, 40, contexts=2)
    reg.config(BalancerSettings("other"), NodeSettings(
        route="special", balancer="other", host="192.0.2.7", port=8080, domain="edge"),
        [(["shop.example.org"], ["/checkout"])])
    reg.app("ENABLE-APP", "special", ["shop.example.org"], ["/checkout"])
    reg.apply_status("special", 10, True)
    return reg


@pytest.mark.parametrize("query,field,expected", [
    ("special", "route", ["special"]),
    ("SPECIAL", "any", ["special"]),
    ("192.0.2", "host", ["special"]),
    ("edge", "domain", ["special"]),
    ("shop.example", "alias", ["special"]),
    ("/checkout", "context", ["special"]),
    ("/check", "any", ["special"]),
    ("www7.example.com", "alias", ["n0007"]),
    ("n001", "route", [f"n001{i}" for i in range(10)]),
    ("/app1", "route", []),
])
def test_filter_by_field(forty, clock, query, field, expected):
    client, _ = console_client(forty, clock)
    html = client.get(f"{PATH}?q={query}&in={field}").text
    assert sorted(routes_shown(html)) == sorted(expected)
    if not expected:
        assert "No node matches the filter." in html
    # The form shows the filter it applied.
    assert f'value="{query}"' in html
    assert f'<option value="{field}" selected="selected">' in html


def test_small_results_are_shown_as_cards(forty, clock):
    client, _ = console_client(forty, clock)
    html = client.get(f"{PATH}?q=special").text
    assert re.search(r'<article id="node-\d+" class="node state-ok"', html)
    assert 'name="Context" value="/checkout"' in html
    assert "Clear" in html
    # Forty rows are not cards.
    html = client.get(PATH).text
    assert "<article" not in html and len(row_ids(html)) == 41


def test_filter_by_state_domain_and_balancer(forty, clock):
    forty.set_error("n0003", "probe at STATUS failed")
    forty.app("DISABLE-APP", "n0004", ["localhost"], ["/app1"])
    forty.app("REMOVE-APP", "n0005", wildcard=True)
    client, _ = console_client(forty, clock)
    assert routes_shown(client.get(f"{PATH}?state=in_error").text) == ["n0003"]
    assert routes_shown(client.get(f"{PATH}?state=removing").text) == ["n0005"]
    assert routes_shown(client.get(f"{PATH}?state=draining").text) == ["n0004"]
    assert sorted(routes_shown(client.get(f"{PATH}?state=attention").text)) == [
        "n0003", "n0004", "n0005"]
    assert routes_shown(client.get(f"{PATH}?balancer=other").text) == ["special"]
    shown = routes_shown(client.get(f"{PATH}?domain=dc1").text)
    assert shown == [f"n{i:04d}" for i in range(1, 40, 4)]
    # Unknown filter values are ignored rather than refused.
    assert len(row_ids(client.get(f"{PATH}?state=bogus&in=nowhere").text)) == 41


def test_pages(forty, clock):
    client, _ = console_client(forty, clock)
    html = client.get(f"{PATH}?size=10&page=2").text
    # Domain order (no domain first, then dc0, dc1, …), id order inside a domain.
    everything = routes_shown(client.get(PATH).text)
    assert routes_shown(html) == everything[10:20]
    assert "Nodes 11–20 of 41 of the cluster" in html
    assert f'href="{PATH}?size=10&amp;page=3#nodes"' in html  # next page keeps the size
    last = client.get(f"{PATH}?size=10&page=99").text
    assert routes_shown(last) == everything[40:]
    # Filter and page together; the auto refresh period is kept in links.
    html = client.get(f"{PATH}?q=n00&size=5&page=2&refresh=3").text
    assert routes_shown(html) == [r for r in everything if r.startswith("n00")][5:10]
    assert f'href="{PATH}?q=n00&amp;size=5&amp;page=3&amp;refresh=3#nodes"' in html
    assert f'data-update="{PATH}/update?q=n00&amp;page=2&amp;size=5"' in html


def test_domain_headers_in_the_list(forty, clock):
    client, _ = console_client(forty, clock)
    html = client.get(PATH).text
    text = re.sub(r"<[^>]+>", " ", html)
    order = [text.index(f"LBGroup {d}") for d in ("dc0", "dc1", "dc2", "dc3", "edge")]
    assert order == sorted(order)


# -- overview -------------------------------------------------------------------------


def test_overview_counts_and_attention(clock):
    reg = cluster(clock, 60, contexts=2)
    for i in range(25):
        reg.set_error(f"n{i:04d}", "probe at STATUS failed")
    reg.app("STOP-APP", "n0030", ["localhost"], ["/app0"])
    reg.apply_status("n0040", 0, True)
    client, _ = console_client(reg, clock)
    html = client.get(PATH).text
    for key, n in (("ok", 34), ("in_error", 25), ("hot_standby", 1), ("draining", 1),
                   ("ctx-enabled", 119), ("ctx-stopped", 1), ("ctx-disabled", 0)):
        assert f'<span class="n" data-count="{key}">{n}</span>' in html
    attention = re.search(r'<ul class="attention-list">(.*?)</ul>', html, re.S).group(1)
    assert attention.count("<li>") == 20  # bounded; the rest are one click away
    assert "All 26 nodes that need attention" in html
    assert f'href="{PATH}?state=attention#nodes"' in html
    assert "probe at STATUS failed" in attention


# -- auto refresh ---------------------------------------------------------------------


def test_update_sends_the_live_numbers_of_the_view(forty, clock):
    client, console = console_client(forty, clock)
    r = client.get(f"{PATH}/update?size=10&page=2")
    assert r.status == 200
    assert r.header("content-type") == "application/json"
    assert r.header("x-content-type-options") == "nosniff"
    data = json.loads(r.body)
    page = client.get(f"{PATH}?size=10&page=2").text
    assert data["ids"] == row_ids(page)
    assert re.search(r'data-structure="%s"' % data["structure"], page)
    assert data["counts"]["ok"] == 41 and data["counts"]["ctx-enabled"] == 81
    node = forty.node(routes_shown(page)[0])
    assert data["nodes"][str(node.id)]["state"] == "ok"
    assert data["nodes"][str(node.id)]["f"]["load"] == "50"
    # Nothing changed: 304 with no body.
    etag = r.header("etag")
    again = client.get(f"{PATH}/update?size=10&page=2", headers={"If-None-Match": etag})
    assert again.status == 304 and again.body == b""
    # A counter changed: new numbers, same structure.
    node.rt.elected = 77
    changed = json.loads(client.get(f"{PATH}/update?size=10&page=2",
                                    headers={"If-None-Match": etag}).body)
    assert changed["nodes"][str(node.id)]["f"]["elected"] == "77"
    assert changed["structure"] == data["structure"]
    # A structural change is announced by a new structure version.
    forty.app("STOP-APP", node.settings.route, wildcard=True)
    assert json.loads(client.get(f"{PATH}/update?size=10&page=2").body)["structure"] != \
        data["structure"]


def test_update_of_a_detail_view_has_context_numbers(forty, clock):
    client, _ = console_client(forty, clock)
    ctx = forty.find_context("n0002", "localhost", "/app1")
    ctx.rt.in_flight, ctx.rt.requests = 3, 12
    data = json.loads(client.get(f"{PATH}/update?JVMRoute=n0002").body)
    [node] = data["nodes"].values()
    assert node["ctx"][str(ctx.id)] == {"in_flight": "3", "requests": "12"}
    page = client.get(f"{PATH}?JVMRoute=n0002").text
    assert f'id="ctx-{ctx.id}"' in page
    assert client.get(f"{PATH}/update?JVMRoute=nosuch").status == 404
    assert client.get(f"{PATH}/update?bad").status == 400


def test_script_is_served_and_only_loaded_when_refreshing(forty, clock):
    client, _ = console_client(forty, clock)
    r = client.get(f"{PATH}/static/console.js")
    assert r.status == 200
    assert r.header("content-type") == "text/javascript; charset=utf-8"
    assert b"If-None-Match" in r.body and b"eval(" not in r.body
    assert b"innerHTML" not in r.body  # text only: registry strings are never parsed as HTML
    assert "console.js" not in client.get(PATH).text
    assert "console.js" in client.get(f"{PATH}?refresh=1").text


def test_commands_still_work_from_a_big_page(forty, clock):
    client, _ = console_client(forty, clock)
    r = client.post(PATH, {"nonce": NONCE, "Range": "NODE", "JVMRoute": "n0007",
                           "Cmd": "DISABLE-APP", "refresh": "2"})
    assert r.status == 303
    # Back to a view that shows the node (page 1 of 41 nodes may not).
    node_id = forty.node("n0007").id
    assert r.header("location") == f"{PATH}?JVMRoute=n0007&refresh=2#node-{node_id}"
    html = client.get(f"{PATH}?state=draining").text
    assert routes_shown(html) == ["n0007"]
    r = client.post(PATH, {"nonce": NONCE, "Range": "DOMAIN", "Domain": "dc1",
                           "Cmd": "STOP-APP"})
    assert r.header("location") == f"{PATH}?domain=dc1#nodes"


def test_get_commands_answer_a_view_of_what_they_changed(forty, clock):
    """The query-string form answers the page (as httpd): here the changed node's
    detail, or the changed domain's nodes."""
    client, _ = console_client(forty, clock)
    r = client.get(f"{PATH}?nonce={NONCE}&Cmd=DISABLE-APP&Range=CONTEXT&JVMRoute=n0009"
                   "&Alias=localhost&Context=/app1")
    assert r.status == 200
    assert re.findall(r'<article id="node-(\d+)"', r.text) == [str(forty.node("n0009").id)]
    assert "badge status-disabled" in r.text
    r = client.get(f"{PATH}?nonce={NONCE}&Cmd=ENABLE-APP&Range=DOMAIN&Domain=dc2")
    assert r.status == 200
    assert routes_shown(r.text) == [f"n{i:04d}" for i in range(2, 40, 4)]


def test_ejected_nodes_are_counted_filtered_and_need_attention(clock):
    """Passive health's ejected nodes show as such in the overview, the state
    filter, the attention list and the API's state filter (not as OK)."""
    reg = cluster(clock, 30, contexts=1)
    reg.node_ejected("n0003", 30.0, "5 consecutive failures")
    client, _ = console_client(reg, clock)
    html = client.get(PATH).text
    assert '<span class="n" data-count="ejected">1</span>' in html
    assert '<span class="n" data-count="ok">29</span>' in html
    attention = re.search(r'<ul class="attention-list">(.*?)</ul>', html, re.S).group(1)
    assert "n0003" in attention and "passive health" in attention
    assert routes_shown(client.get(PATH + "?state=ejected").text) == ["n0003"]
    clock.advance(31)
    html = client.get(PATH).text
    assert '<span class="n" data-count="ejected">0</span>' in html
