"""
The MCMP client codec: request bytes equal to the Java listener's (fixture
trace), and responses parsed with the Java client's rules.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modcluster.node.wire import (
    DISABLE_APP,
    ENABLE_APP,
    REMOVE_APP,
    STOP_APP,
    MalformedResponse,
    MCMPRequest,
    MCMPResponse,
    NodeRegistration,
    ResponseParser,
    config_request,
    context_request,
    dump_request,
    encode_request,
    engine_request,
    host_header,
    info_request,
    java_urlencode,
    ping_request,
    status_request,
)
from tests.support.node_testlib import TRACE, body_of, wire_bytes
from tests.support.fixtures import load_exchanges

# --- encoding -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, encoded",
    [
        ("default-host,localhost", "default-host%2Clocalhost"),
        ("/myapp", "%2Fmyapp"),
        ("a b", "a+b"),
        ("[::1]:80", "%5B%3A%3A1%5D%3A80"),
        ("x~y", "x%7Ey"),
        ("*._-", "*._-"),
        ("é", "%C3%A9"),
        ("a=b&c", "a%3Db%26c"),
        ("", ""),
    ],
)
def test_java_urlencode(text: str, encoded: str) -> None:
    """Names and values are encoded like java.net.URLEncoder (UTF-8)."""
    assert java_urlencode(text) == encoded


@given(st.text())
def test_java_urlencode_round_trip(text: str) -> None:
    """The encoding is reversible and uses only the characters URLEncoder emits."""
    encoded = java_urlencode(text)
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-*_+%")
    assert set(encoded) <= allowed
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        assert unquote_plus(encoded) == text


def _java_request_for(raw: bytes) -> MCMPRequest:
    """Build, with our factories, the request the Java node sent in C{raw}."""
    line = raw.split(b"\r\n", 1)[0].decode()
    method, uri, _ = line.split(" ")
    params = dict(parse_qsl(body_of(raw), keep_blank_values=True))
    route = params.get("JVMRoute")
    if method == "INFO":
        return info_request()
    if method == "CONFIG":
        return config_request(
            NodeRegistration(
                jvm_route=route, host=params["Host"], port=int(params["Port"]),
                type=params["Type"],
            )
        )
    if method == "STATUS":
        return status_request(route, int(params["Load"]))
    if uri.endswith("*"):
        return engine_request(method, route)
    return context_request(method, route, params["Alias"].split(","), params["Context"])


def test_requests_equal_the_java_trace() -> None:
    """
    Every request of the Tomcat trace (runs A, B, C) is rebuilt from its
    parameters and encoded to exactly the same bytes.
    """
    exchanges = load_exchanges(TRACE)
    assert len(exchanges) > 50
    for exchange in exchanges:
        raw = wire_bytes(exchange.raw_request)
        request = _java_request_for(raw)
        assert encode_request(request, "127.0.0.1", 26666) == raw, exchange.label


def test_config_example_with_most_parameters() -> None:
    """The CONFIG body of mcmp.md section 1.2 (parameter order as Java's TreeMap)."""
    node = NodeRegistration(
        jvm_route="node1", host="10.0.0.21", port=8009, type="ajp", balancer="mycluster",
        domain="dc1", max_attempts=2, sticky_session_cookie="MYSESSION",
        sticky_session_path="mysession", node_timeout=30, worker_timeout=5,
        flush_packets=True, flush_wait=20, ping=5, smax=50, ttl=120,
    )
    assert config_request(node).body() == (
        "JVMRoute=node1&Balancer=mycluster&Domain=dc1&Host=10.0.0.21&Maxattempts=2&Port=8009"
        "&StickySessionCookie=MYSESSION&StickySessionForce=No&StickySessionPath=mysession"
        "&Timeout=30&Type=ajp&WaitWorker=5&flushpackets=On&flushwait=20&ping=5&smax=50&ttl=120"
    )


def test_config_bytes_of_reference_example() -> None:
    """The full request of mcmp.md section 1.2, Content-Length 70."""
    node = NodeRegistration(jvm_route="node1", host="10.0.0.21", port=8009)
    assert encode_request(config_request(node), "10.0.0.5", 6666) == (
        b"CONFIG / HTTP/1.1\r\nHost: 10.0.0.5:6666\r\nContent-Length: 70\r\n"
        b"User-Agent: ClusterListener/1.0\r\nConnection: Keep-Alive\r\n\r\n"
        b"JVMRoute=node1&Host=10.0.0.21&Port=8009&StickySessionForce=No&Type=ajp"
    )


def test_config_booleans_sent_only_when_not_java_default() -> None:
    """StickySession=No, StickySessionRemove=Yes, StickySessionForce omitted when forced."""
    node = NodeRegistration(
        jvm_route="n", host="H", port=1, sticky_session=False, sticky_session_remove=True,
        sticky_session_force=True, reversed=True,
    )
    assert config_request(node).body() == (
        "JVMRoute=n&Host=h&Port=1&Reversed=true&StickySession=No&StickySessionRemove=Yes&Type=ajp"
    )


def test_context_request_with_several_aliases() -> None:
    """The reference example: Alias=default-host%2Clocalhost&Context=%2Fmyapp."""
    request = context_request(ENABLE_APP, "node1", ["default-host", "localhost"], "/myapp")
    assert request.body() == "JVMRoute=node1&Alias=default-host%2Clocalhost&Context=%2Fmyapp"
    assert context_request(STOP_APP, "n", ["a"], "").parameter("Context") == "/"


def test_wildcard_and_proxy_url() -> None:
    """Wildcard URIs end in '*'; a proxy URL prefix gets a '/' appended."""
    request = engine_request(REMOVE_APP, "node1")
    assert encode_request(request, "h", 1).startswith(b"REMOVE-APP /* HTTP/1.1\r\n")
    assert encode_request(request, "h", 1, "/foo").startswith(b"REMOVE-APP /foo/* HTTP/1.1\r\n")
    assert encode_request(status_request("n", 5), "h", 1, "/foo/").startswith(
        b"STATUS /foo/ HTTP/1.1\r\n"
    )
    assert encode_request(dump_request(), "h", 1).startswith(b"DUMP /* HTTP/1.1\r\n")


def test_no_content_length_without_body() -> None:
    """INFO, DUMP and PING without parameters carry no Content-Length."""
    for request in (info_request(), dump_request(), ping_request()):
        data = encode_request(request, "h", 1)
        assert b"Content-Length" not in data
        assert data.endswith(b"\r\nConnection: Keep-Alive\r\n\r\n")
    assert b"Content-Length: 14\r\n" in encode_request(ping_request("node1"), "h", 1)


def test_host_header_ipv6() -> None:
    """IPv6 literals are bracketed in the Host header."""
    assert host_header("::1", 6666) == "[::1]:6666"
    assert host_header("proxy.example", 80) == "proxy.example:80"
    assert b"Host: [::1]:6666\r\n" in encode_request(info_request(), "::1", 6666)


def test_bad_method_rejected() -> None:
    with pytest.raises(ValueError):
        context_request("STATUS", "n", ["a"], "/")
    with pytest.raises(ValueError):
        engine_request("CONFIG", "n")
    assert DISABLE_APP == "DISABLE-APP"


# --- responses -------------------------------------------------------------------


def _parse(data: bytes, chunks: int = 1) -> MCMPResponse:
    parser = ResponseParser()
    result = None
    size = max(1, len(data) // chunks)
    for i in range(0, len(data), size):
        result = parser.feed(data[i : i + size]) or result
    assert result is not None
    return result


def test_trace_responses_parse() -> None:
    """Every proxy answer of the trace parses, whole or byte by byte."""
    for exchange in load_exchanges(TRACE):
        raw = wire_bytes(exchange.raw_response)
        whole = _parse(raw)
        assert whole == _parse(raw, chunks=len(raw))
        expected = exchange.response
        assert whole.status == expected.status
        assert whole.body.encode("latin-1") == expected.body
        assert whole.error_type == expected.header("Type")
        assert whole.message == expected.header("Mess")


def test_error_response_headers() -> None:
    """Type and Mess are read case-insensitively; status 500."""
    response = _parse(
        b"HTTP/1.1 500 Internal Server Error\r\nversion: 0.2.1\r\nTYPE: MEM\r\n"
        b"mess: MEM: Can't read node\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc"
    )
    assert (response.status, response.error_type, response.message) == (
        500, "MEM", "MEM: Can't read node",
    )
    assert response.body == "abc" and not response.keep_alive and not response.ok


def test_no_length_means_no_body() -> None:
    """Without Content-Length, chunked or close, the answer ends after the head."""
    parser = ResponseParser()
    response = parser.feed(b"HTTP/1.1 200 OK\r\n\r\nextra")
    assert response is not None and response.body == "" and response.ok
    assert parser.trailing == b"extra"


def test_chunked_body() -> None:
    """Chunked bodies are decoded (extensions and trailers tolerated)."""
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nType=\r\n4\r\nSTOP\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    assert _parse(data).body == "Type=STOP"
    assert _parse(data, chunks=len(data)).body == "Type=STOP"


def test_close_delimited_body() -> None:
    """With Connection: close and no length, the body runs to EOF."""
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nRequests=") is None
    assert parser.feed(b"2") is None
    response = parser.eof()
    assert response.body == "Requests=2" and not response.keep_alive


def test_lines_without_space_skipped_and_bare_cr() -> None:
    """The Java client skips leading lines without a space; CR alone ends a line."""
    response = _parse(b"\r\nHTTP/1.1\r\nHTTP/1.1 200 OK\rContent-Length: 2\r\r\nok")
    assert response.status == 200 and response.body == "ok"


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200\r\n\r\n",  # no reason phrase: the Java parse fails
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
    ],
)
def test_malformed(data: bytes) -> None:
    with pytest.raises(MalformedResponse):
        ResponseParser().feed(data)


def test_limits() -> None:
    """Overlong lines and bodies are refused, not buffered without bound."""
    with pytest.raises(MalformedResponse):
        ResponseParser(max_line=100).feed(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 200)
    with pytest.raises(MalformedResponse):
        ResponseParser(max_body=10).feed(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n")
    parser = ResponseParser(max_body=10)
    parser.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    with pytest.raises(MalformedResponse):
        parser.feed(b"x" * 11)


def test_eof_before_end() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(MalformedResponse):
        parser.eof()


@given(st.binary(max_size=300))
def test_garbage_never_crashes(data: bytes) -> None:
    """Arbitrary bytes give a response, need more, or MalformedResponse: nothing else."""
    parser = ResponseParser(max_line=200, max_body=200)
    try:
        parser.feed(data)
        parser.eof()
    except MalformedResponse:
        pass


@given(st.data())
def test_any_split_gives_same_response(data: st.DataObject) -> None:
    """Feeding the bytes in arbitrary pieces gives the same answer."""
    raw = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 53\r\n\r\n"
        b"Type=STATUS-RSP&JVMRoute=node1&State=OK&id=1795312159"
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=6)))
    parser = ResponseParser()
    result = None
    previous = 0
    for cut in cuts + [len(raw)]:
        result = parser.feed(raw[previous:cut]) or result
        previous = cut
    assert result == _parse(raw)
