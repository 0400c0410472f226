"""
The MCMP codec (L{modcluster.mcmp.decode}, L{modcluster.mcmp.replies}) against real captured bytes: every request a Tomcat 10
node sent decodes to what the node meant, and our reply formats match what
httpd (mod_proxy_cluster) answered, field for field.  Where we differ on
purpose (docs/mcmp.md), the test says so.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest

from modcluster.mcmp.decode import (
    DEFAULT_LIMITS,
    AppRequest,
    ConfigRequest,
    StatusRequest,
    decode_app,
    decode_config,
    decode_ping,
    decode_status,
    parse_body,
)
from modcluster.mcmp.errors import (
    MCMPError,
    MessageTooLarge,
    error_headers,
    node_unknown,
)
from modcluster.mcmp.names import (
    LOAD_PING_ONLY,
    is_mcmp_method,
    is_wildcard,
    method_name,
    wants_xml,
)
from modcluster.mcmp.replies import (
    DumpBalancer,
    InfoContext,
    InfoNode,
    InfoVhost,
    format_dump,
    format_info,
    format_ping_rsp,
    format_status_rsp,
    format_version,
)
from modcluster.node.javaparse import JavaVirtualHost, parse_info_as_java
from tests.support.fixtures import Exchange, load_exchanges

MAX = 65536
TOMCAT = load_exchanges("tomcat10-mcmp-trace.txt")
HTTPD = load_exchanges("mod_proxy_cluster-responses.txt")
APP_METHODS = ("ENABLE-APP", "DISABLE-APP", "STOP-APP", "REMOVE-APP")


def httpd(label: str) -> Exchange:
    """The httpd exchange with this label."""
    (exchange,) = [e for e in HTTPD if e.label == label]
    return exchange


def raw_pairs(data: bytes) -> list[tuple[str, str]]:
    """An independent oracle: split and unquote with the standard library."""
    return [
        (unquote(k), unquote(v))
        for k, _, v in (piece.partition("=") for piece in data.decode().split("&") if piece)
    ]


def decode(exchange: Exchange):
    """Decode a request the way the resource will (method + URI + body)."""
    request = exchange.request
    method = method_name(request.method)
    params = parse_body(request.body, MAX)
    if method == "CONFIG":
        return decode_config(params, "mycluster", DEFAULT_LIMITS)
    if method in APP_METHODS:
        return decode_app(params, is_wildcard(request.uri))
    if method == "STATUS":
        return decode_status(params)
    if method == "PING":
        return decode_ping(params)
    return params


def test_fixture_files_complete():
    """The reader found every block of both files."""
    assert len(TOMCAT) == 57
    assert len(HTTPD) == 34
    assert all(e.request.method for e in TOMCAT + HTTPD)


# ---------------------------------------------------------------------------
# What a real Tomcat node sends
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("exchange", TOMCAT, ids=[e.label for e in TOMCAT])
def test_tomcat_requests_decode(exchange):
    """Every request of the Tomcat trace is an MCMP method and decodes to what was sent."""
    request = exchange.request
    assert is_mcmp_method(request.method)
    assert request.header("Content-Type") is None  # the Java client sends none
    sent = dict(raw_pairs(request.body))
    result = decode(exchange)
    method = request.method
    if method == "INFO":
        assert request.body == b"" and len(result) == 0
    elif method == "CONFIG":
        assert isinstance(result, ConfigRequest)
        assert result.warnings == ()
        node = balancer = result
        assert node.jvm_route == sent["JVMRoute"] == "node1"
        assert (node.host, node.port, node.type) == (sent["Host"], int(sent["Port"]), sent["Type"])
        assert balancer.sticky_session_force is False  # StickySessionForce=No
        assert (balancer.balancer, balancer.sticky_session, balancer.max_attempts) == ("mycluster", True, 1)
        assert (node.ping_ms, node.ttl_ms, node.flushwait_ms, node.smax) == (10_000, 60_000, 10, -1)
    elif method in APP_METHODS:
        assert isinstance(result, AppRequest)
        assert result.jvm_route == sent["JVMRoute"]
        if request.uri == "/*":
            assert result == AppRequest("node1", True, (), ())
            assert set(sent) == {"JVMRoute"}
        else:
            assert request.uri == "/"
            assert result.wildcard is False
            assert result.aliases == tuple(sent["Alias"].split(","))
            assert result.contexts == (sent["Context"],)
            assert sent["Context"] in ("/", "/app1", "/app2")
    elif method == "STATUS":
        assert result == StatusRequest(sent["JVMRoute"], int(sent["Load"]))
        assert 0 <= result.load <= 100
    else:  # pragma: no cover - the trace has no other methods
        pytest.fail(f"unexpected method {method}")


def test_tomcat_trace_covers_the_commands():
    """The trace exercises CONFIG, all four APP commands (wildcard too), STATUS and INFO."""
    seen = {(e.request.method, e.request.uri) for e in TOMCAT}
    assert {("CONFIG", "/"), ("ENABLE-APP", "/"), ("DISABLE-APP", "/"), ("STOP-APP", "/"),
            ("REMOVE-APP", "/"), ("REMOVE-APP", "/*"), ("STATUS", "/"), ("INFO", "/")} <= seen


def test_tomcat_info_reply_parses_as_java():
    """The INFO reply the node accepted (B8) reads back as node1 with / and /app1 ENABLED."""
    (b8,) = [e for e in TOMCAT if e.label.startswith("B8 ")]
    parsed = parse_info_as_java(b8.response.body)
    assert parsed == {
        "node1": (
            JavaVirtualHost(
                aliases=frozenset({"localhost"}),
                contexts=(("/", "ENABLED"), ("/app1", "ENABLED")),
            ),
        )
    }


def test_tomcat_info_reply_reproduced():
    """We produce the exact INFO text the node accepted in B8 from the equivalent records."""
    (b8,) = [e for e in TOMCAT if e.label.startswith("B8 ")]
    out = format_info(
        [InfoNode(1, "node1", "mycluster", "", "127.0.0.1", 28009, "ajp", "Off", 10, 10, 1, 60, 0,
                  0, 0, 0, 0, 100)],
        [InfoVhost(1, 1, 1, "localhost")],
        [InfoContext(1, 1, 1, "/", "ENABLED"), InfoContext(1, 1, 2, "/app1", "ENABLED")],
    )
    assert out == b8.response.body


def test_tomcat_status_reply_shape():
    """Our STATUS reply is the fake proxy's, plus httpd's trailing newline."""
    for exchange in TOMCAT:
        if exchange.request.method == "STATUS" and exchange.response.status == 200:
            body = exchange.response.body
            id_ = int(re.search(rb"&id=(-?\d+)", body).group(1))
            assert format_status_rsp("node1", True, id_) == body + b"\n"


# ---------------------------------------------------------------------------
# What httpd answers
# ---------------------------------------------------------------------------


def test_version_layout():
    """VERSION: same layout as httpd; only the release string is ours to choose."""
    plain = httpd("VERSION (plain)").response
    xml = httpd("VERSION (Accept: text/xml)").response
    assert plain.header("Content-Type") == "text/plain"
    assert xml.header("Content-Type") == "text/xml"
    assert not wants_xml(httpd("VERSION (plain)").request.header("Accept"))
    assert wants_xml(httpd("VERSION (Accept: text/xml)").request.header("Accept"))
    assert format_version("mod_proxy_cluster/2.0.0.Dev", False) == plain.body
    assert format_version("mod_proxy_cluster/2.0.0.Dev", True) == xml.body
    assert format_version() == plain.body.replace(b"mod_proxy_cluster/2.0.0.Dev", b"mod_cluster/1.3.22.Final")


def test_empty_info_and_dump():
    """No nodes: empty bodies."""
    assert httpd("INFO (no nodes)").response.body == format_info([], [], []) == b""
    assert httpd("DUMP (no nodes)").response.body == format_dump([], [], [], []) == b""


def test_status_and_ping_replies():
    """STATUS-RSP and PING-RSP byte for byte (httpd's id passed through)."""
    for label, route in (("STATUS node1 Load=50", "node1"), ("STATUS node2 Load=50", "node2")):
        body = httpd(label).response.body
        id_ = int(re.search(rb"&id=(\d+)", body).group(1))
        assert format_status_rsp(route, True, id_) == body
    body = httpd("PING node1").response.body
    id_ = int(re.search(rb"&id=(\d+)", body).group(1))
    assert format_ping_rsp("node1", True, id_) == body


def _httpd_nodes(names=("node1", "node2"), elected=0, read=0, transferred=0, node9=None):
    nodes = [
        InfoNode(i, name, "mycluster", "", "127.0.0.1", 8081 + i, "http", "Off", 10, 10, -1, 60, 0,
                 elected, read, transferred, 0, 50)
        for i, name in enumerate(names)
    ]
    if node9 is not None:
        nodes.append(InfoNode(2, node9, "mycluster", "", "127.0.0.1", 8089, "http", "Off", 10, 10, -1,
                              60, 0, 0, 0, 0, 0, 0))
    vhosts = [InfoVhost(0, 1, 0, "localhost"), InfoVhost(1, 1, 1, "localhost")]
    contexts = [InfoContext(0, 1, 0, "/ngx", "ENABLED"), InfoContext(1, 1, 1, "/ngx", "ENABLED")]
    return nodes, vhosts, contexts


@pytest.mark.parametrize(
    "label,kwargs",
    [
        ("INFO (2 nodes)", {}),
        ("INFO after the malformed messages (note node9 from the unknown-field CONFIG)", {"node9": "node9"}),
        ("INFO (2 nodes + node9, after 10 proxied requests)",
         {"node9": "node9", "elected": 5, "read": 575, "transferred": 1145}),
        ("INFO 13 s after REMOVE-APP /* node9",
         {"node9": "REMOVED", "elected": 5, "read": 575, "transferred": 1145}),
    ],
)
def test_info_text_matches_httpd(label, kwargs):
    """
    INFO text is httpd's byte for byte when given httpd's records (httpd 2.x
    numbers slots from 0; our model numbers from 1 like 1.3.x: the formatter
    prints what it is given).  Both parse the same way on the Java side.
    """
    expected = httpd(label).response.body
    out = format_info(*_httpd_nodes(**kwargs))
    assert out == expected
    assert parse_info_as_java(out) == parse_info_as_java(expected)
    parsed = parse_info_as_java(expected)
    assert parsed["node1"] == (JavaVirtualHost(frozenset({"localhost"}), (("/ngx", "ENABLED"),)),)


@pytest.mark.parametrize(
    "label,node9",
    [("DUMP (2 nodes)", None), ("DUMP 1 s after REMOVE-APP /* node9", "node9"),
     ("DUMP 13 s after REMOVE-APP /* node9", "REMOVED")],
)
def test_dump_text_matches_httpd(label, node9):
    """DUMP text is httpd's byte for byte when given httpd's records."""
    nodes, vhosts, contexts = _httpd_nodes(node9=node9)
    balancers = [DumpBalancer(0, "mycluster", True, "JSESSIONID", "jsessionid", False, True, 0, 1)]
    assert format_dump(balancers, nodes, vhosts, contexts) == httpd(label).response.body


def _records_from_config(config: ConfigRequest, id_: int) -> tuple[DumpBalancer, InfoNode]:
    """What the model will do: settings -> view records."""
    b = n = config
    return (
        DumpBalancer(id_, b.balancer, b.sticky_session, b.sticky_session_cookie, b.sticky_session_path,
                     b.sticky_session_remove, b.sticky_session_force, b.wait_worker, b.max_attempts),
        InfoNode(id_, n.jvm_route, n.balancer, n.domain, n.host, n.port, n.type, n.flushpackets,
                 n.flushwait_ms, n.ping_ms // 1000, n.smax, n.ttl_ms // 1000, n.timeout_ms // 1000),
    )


def test_config_defaults_match_httpd_dump():
    """
    Decoding httpd's CONFIG requests and printing the settings gives httpd's
    DUMP lines: our defaults (balancer, sticky/force, cookie, path, times, smax)
    are httpd's.
    """
    lines = []
    for i, label in enumerate(("CONFIG node1", "CONFIG node2")):
        balancer, node = _records_from_config(decode(httpd(label)), i)
        if i == 0:
            lines.append(format_dump([balancer], [], [], []))
        lines.append(format_dump([], [node], [], []))
    expected = httpd("DUMP (2 nodes)").response.body.splitlines(keepends=True)[:3]
    assert b"".join(lines) == b"".join(expected)


def test_error_headers_match_httpd():
    """Version/Type/Mess as httpd sends them, for the errors we answer the same way."""

    def unknown_node(exchange):
        # The request is valid; the registry then finds no such node.
        raise node_unknown(decode(exchange).jvm_route)

    cases = [
        ("CONFIG without JVMRoute", decode),
        ("CONFIG with empty body", decode),
        ("STATUS for unknown JVMRoute", unknown_node),
        ("ENABLE-APP for unknown JVMRoute", unknown_node),
    ]
    for label, run in cases:
        exchange = httpd(label)
        response = exchange.response
        assert (response.status, response.reason) == (500, "Internal Server Error")
        with pytest.raises(MCMPError) as info:
            run(exchange)
        headers = dict(error_headers(info.value))
        assert headers[b"Version"].decode() == response.header("Version") == "0.2.1"
        assert headers[b"Type"].decode() == response.header("Type")
        assert headers[b"Mess"].decode() == response.header("Mess")


def test_load_error_differs_only_in_prefix():
    """httpd 2.x says C{TODO: Bad value for Load}; we say C{SYNTAX: Bad value for Load} (docs/mcmp.md)."""
    exchange = httpd("STATUS with Load=101 (out of range)")
    with pytest.raises(MCMPError) as info:
        decode(exchange)
    assert info.value.type == exchange.response.header("Type") == "SYNTAX"
    assert info.value.mess == exchange.response.header("Mess").replace("TODO:", "SYNTAX:", 1)


def test_unknown_field_config_accepted():
    """CONFIG with C{Bogus=1} registers the node (httpd: 200), with a warning for the log."""
    result = decode(httpd("CONFIG with unknown field"))
    assert result.jvm_route == "node9" and result.port == 8089
    assert httpd("CONFIG with unknown field").response.status == 200
    assert len(result.warnings) == 1 and "Bogus" in result.warnings[0]


def test_unknown_method_not_ours():
    """FOOBAR is not an MCMP method (httpd: 501)."""
    exchange = httpd("Unknown method FOOBAR")
    assert not is_mcmp_method(exchange.request.method)
    assert exchange.response.status == 501


def test_oversized_config():
    """
    httpd truncated the 70 KB body and complained about the Alias; we refuse a
    body over the limit outright, and with a limit large enough we give
    httpd's answer.
    """
    exchange = httpd("CONFIG with oversized body (70,050 bytes)")
    request = exchange.request
    assert request.truncated
    prefix = b"JVMRoute=node8&Host=127.0.0.1&Port=8088&Type=http&Alias="
    full = prefix + b"a" * 70_000
    assert len(full) == int(request.header("Content-Length"))
    assert full.startswith(request.body.split(b"aaaa")[0])
    with pytest.raises(MessageTooLarge):
        parse_body(full, MAX)
    with pytest.raises(MCMPError) as info:
        decode_config(parse_body(full, len(full)))
    assert info.value.mess == exchange.response.header("Mess") == "SYNTAX: Alias field too big"


def test_dangling_load_no_crash():
    """The body that crashed an httpd child gets a SYNTAX answer here."""
    exchange = httpd(
        "STATUS with dangling field and no value (the worker child crashed: httpd error log shows "
        '"child pid N exit signal Segmentation fault (11)"; no response bytes)'
    )
    assert exchange.response is None
    with pytest.raises(MCMPError) as info:
        decode(exchange)
    assert info.value.mess == "SYNTAX: Bad value for Load"


def test_httpd_requests_decode():
    """The other MCMP requests of the httpd capture decode as intended."""
    assert decode(httpd("ENABLE-APP node1")) == AppRequest("node1", False, ("localhost",), ("/ngx",))
    assert decode(httpd("STATUS node1 Load=50")) == StatusRequest("node1", 50)
    assert decode(httpd("PING node1")).jvm_route == "node1"
    assert decode(httpd("REMOVE-APP /* for node9 (remove the node)")) == AppRequest("node9", True)
    assert decode_status(parse_body(b"JVMRoute=node1", MAX)).load == LOAD_PING_ONLY
