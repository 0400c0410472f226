"""
Trailer sections relayed by the proxy, in memory: a chunked HTTP/1.1 node
response's trailer fields to HTTP/1.1 clients (chunked trailers) and to
HTTP/2 clients (a trailing HEADERS frame with END_STREAM), and an HTTP/2
client's request trailers to an HTTP/1.1 node (chunked trailers).
"""

from __future__ import annotations

from h2.events import TrailersReceived

from modcluster.proxy.headers import filter_trailers, trailer_section

from tests.support.proxy_testlib import Harness, parse_responses
from tests.unit.proxy.test_proxy_h2 import H2Client

_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
_TRAILERS = (b"Grpc-Status: 0\r\nX-Checksum: abc\r\nCache-Control: no-store\r\n"
             b"Set-Cookie: s=1\r\nVary: *\r\n")


def _one_node() -> Harness:
    h = Harness()
    h.node("n1", 8081)
    return h


def test_trailer_section_found_from_the_end():
    assert trailer_section(b"abc\r\n0\r\n\r\n") == b""
    assert trailer_section(b"abc\r\n0;x=y\r\nA: 1\r\nB: 2\r\n\r\n") == b"A: 1\r\nB: 2\r\n"
    # a field whose value ends in 0 is not the last chunk
    assert trailer_section(b"\r\n0\r\nA: 10\r\n\r\n") == b"A: 10\r\n"
    # not reaching back to the last-chunk line: unknown
    assert trailer_section(b"A: 10\r\n\r\n") is None
    assert trailer_section(b"0\r\n\r\n") is None
    assert filter_trailers(_TRAILERS) == b"Grpc-Status: 0\r\nX-Checksum: abc\r\n"
    assert filter_trailers(b"Content-Length: 5\r\nTransfer-Encoding: gzip\r\n"
                           b"Connection: close\r\nTE: x\r\nTrailer: a\r\nHost: h\r\n"
                           b"Keep-Alive: 1\r\nA: 1\r\n") == b"A: 1\r\n"


def test_chunked_trailers_relayed_to_http11_client():
    h = _one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n")
    n = h.accept()
    n.received()
    n.respond(_HEAD + b"5\r\nhello\r\n")
    n.respond(b"0\r\n" + _TRAILERS + b"\r\n")
    raw = c.received()
    assert raw.endswith(b"5\r\nhello\r\n0\r\nGrpc-Status: 0\r\nX-Checksum: abc\r\n\r\n")
    [resp] = parse_responses(raw)
    assert resp.complete and resp.body == b"hello" and resp.keep_alive
    assert resp.header(b"Grpc-Status") == b"0"  # (the test parser lists trailers too)
    assert resp.header(b"Set-Cookie") is None and resp.header(b"Cache-Control") is None
    assert h.counters_idle()
    # the connection goes on: the next request is served on it
    c.send(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert n.received().startswith(b"GET /2 ")
    n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    [resp2] = parse_responses(c.received())
    assert resp2.body == b"ok"


def test_trailers_in_the_same_read_as_the_head_and_split_over_two_reads():
    h = _one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.respond(_HEAD + b"2\r\nhi\r\n0\r\nX-A: 1\r\n\r\n")
    assert c.received().endswith(b"2\r\nhi\r\n0\r\nX-A: 1\r\n\r\n")
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n.received()
    n.respond(_HEAD + b"2\r\nhi\r\n0\r\nX-A: 1")
    n.respond(b"0\r\nX-B: 2\r\n\r\n")
    assert c.received().endswith(b"0\r\nX-A: 10\r\nX-B: 2\r\n\r\n")
    assert h.counters_idle()


def test_no_trailers_unchanged_and_http10_client_gets_none():
    h = _one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.respond(_HEAD + b"2\r\nhi\r\n0\r\n\r\n")
    assert c.received().endswith(b"2\r\nhi\r\n0\r\n\r\n")
    n.received()
    c10 = h.client()
    c10.send(b"GET / HTTP/1.0\r\n\r\n")
    assert n.received()  # (on the pooled node connection)
    n.respond(_HEAD + b"2\r\nhi\r\n0\r\nX-A: 1\r\n\r\n")
    raw = c10.received()
    assert raw.endswith(b"\r\n\r\nhi") and b"X-A" not in raw
    assert h.counters_idle()


def test_trailers_relayed_to_http2_client_after_the_data():
    h = _one_node()
    c = H2Client(h)
    c.auto_ack = False  # the body waits for window: trailers must wait behind it
    sid = c.request(b"/x", extra=[(b"te", b"trailers")])
    c.pump()
    n = h.accept(8081)
    body = b"x" * 100_000
    n.respond(_HEAD + b"%x\r\n%s\r\n0\r\n%s\r\n" % (len(body), body, _TRAILERS))
    c.pump()
    assert sid not in c.ended and len(c.body[sid]) < len(body)
    c.auto_ack = True
    c.conn.acknowledge_received_data(len(c.body[sid]), sid)
    c.pump()
    assert c.body[sid] == body and sid in c.ended
    [tr] = [ev for ev in c.events if isinstance(ev, TrailersReceived)]
    assert tr.headers == [(b"grpc-status", b"0"), (b"x-checksum", b"abc")]
    assert tr.stream_ended is not None
    assert c.status(sid) == 200 and c.terminated is None
    assert h.counters_idle()


def test_trailers_only_chunked_response_to_http2_client():
    h = _one_node()
    c = H2Client(h)
    sid = c.request(b"/x")
    c.pump()
    h.accept(8081).respond(_HEAD + b"0\r\nGrpc-Status: 12\r\n\r\n")
    c.pump()
    [tr] = [ev for ev in c.events if isinstance(ev, TrailersReceived)]
    assert tr.headers == [(b"grpc-status", b"12")] and sid in c.ended
    assert sid not in c.body


def test_http2_request_trailers_to_http11_node_as_chunked_trailers():
    h = _one_node()
    c = H2Client(h)
    sid = c.request(b"/up", b"POST", extra=[(b"te", b"trailers")], end=False)
    c.conn.send_data(sid, b"hello")
    c.conn.send_headers(sid, [(b"x-sum", b"5"), (b"content-length", b"9"),
                              (b":path", b"/evil"), (b"bad name", b"x")], end_stream=True)
    c.pump()
    n = h.accept(8081)
    got = n.received()
    assert b"Transfer-Encoding: chunked\r\n" in got
    assert got.endswith(b"\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 5\r\n\r\n")
    n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    c.pump()
    assert c.status(sid) == 200 and c.body[sid] == b"ok"


def test_http2_request_trailers_dropped_with_a_content_length():
    h = _one_node()
    c = H2Client(h)
    sid = c.request(b"/up", b"POST", extra=[(b"content-length", b"5")], end=False)
    c.conn.send_data(sid, b"hello")
    c.conn.send_headers(sid, [(b"x-sum", b"5")], end_stream=True)
    c.pump()
    n = h.accept(8081)
    got = n.received()
    assert got.endswith(b"Content-Length: 5\r\n\r\nhello") and b"x-sum" not in got
    n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    c.pump()
    assert c.status(sid) == 200


def test_trailer_section_over_three_reads_not_relayed_but_the_response_completes():
    """The section is looked for in the last two reads only: spread wider
    (a node writing it piecemeal), it is dropped with a log line and the
    response still ends cleanly."""
    from twisted.logger import capturedLogs

    h = _one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.received()
    with capturedLogs() as events:
        n.respond(_HEAD + b"2\r\nhi\r\n0\r\n")
        n.respond(b"X-A: 1\r\n")
        n.respond(b"X-B: 2\r\n")
        n.respond(b"\r\n")
    raw = c.received()
    assert raw.endswith(b"2\r\nhi\r\n0\r\n\r\n") and b"X-A" not in raw
    [resp] = parse_responses(raw)
    assert resp.complete and resp.keep_alive
    assert any("more than two reads" in e.get("log_format", "") for e in events)
    assert h.counters_idle()
