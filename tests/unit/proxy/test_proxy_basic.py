"""
Forwarding one request at a time: head rewriting both ways, framing, keep-alive
reuse, HEAD/204/304/1xx, chunked bodies, HTTP/1.0 clients.
"""

import pytest
from twisted.internet.error import ConnectionLost

from tests.support.proxy_testlib import OK_100, Harness, parse_requests, parse_responses


def one_node(**config) -> Harness:
    h = Harness(**config)
    h.node("n1", 8081)
    return h


def test_get_forwarded_and_relayed():
    """A GET reaches the node; the node's response reaches the client unchanged."""
    h = one_node()
    c = h.client()
    c.send(b"GET /app/x?y=1 HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: t\r\n\r\n")
    n = h.accept(8081)
    [req] = parse_requests(n.received())
    assert req.method == b"GET"
    assert req.url == b"/app/x?y=1"
    assert req.header(b"Host") == b"www.example.com"
    assert req.header(b"User-Agent") == b"t"
    n.respond(b"HTTP/1.1 200 OK\r\nServer: Apache-Coyote\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT"
              b"\r\nContent-Length: 5\r\n\r\nhello")
    [resp] = parse_responses(c.received())
    assert resp.status == 200
    assert resp.body == b"hello"
    assert resp.header(b"Server") == b"Apache-Coyote"
    assert resp.header(b"Date") == b"Mon, 01 Jan 2024 00:00:00 GMT"
    assert resp.keep_alive
    assert not c.closed
    assert h.counters_idle()
    node = h.nodeEntry("n1")
    assert node.rt.requests == 1
    assert node.rt.read == len(b"HTTP/1.1 200 OK\r\nServer: Apache-Coyote\r\nDate: Mon, 01 Jan "
                               b"2024 00:00:00 GMT\r\nContent-Length: 5\r\n\r\nhello")
    assert node.rt.transferred > 0


def test_request_hop_by_hop_removed_and_end_to_end_kept():
    """
    Connection and the headers it names, Keep-Alive, Proxy-Connection, TE,
    Trailer and a non-tunnelled Upgrade are removed; other headers keep their
    case, order and repeats.
    """
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\n"
           b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n"
           b"Trailer: X\r\nUpgrade: foo\r\nSOAPAction: urn:a\r\nx-custom-HEADER: 1\r\n"
           b"Accept: a\r\nAccept: b\r\n\r\n")
    n = h.accept()
    [req] = parse_requests(n.received())
    names = [x.lower() for x in req.names()]
    for hop in (b"connection", b"x-secret", b"keep-alive", b"proxy-connection", b"te",
                b"trailer", b"upgrade"):
        assert hop not in names
    assert b"SOAPAction" in req.names()
    assert b"x-custom-HEADER" in req.names()
    assert req.all(b"Accept") == [b"a", b"b"]
    assert req.names().index(b"SOAPAction") < req.names().index(b"x-custom-HEADER")


def test_forwarded_headers_added():
    """X-Forwarded-For/-Host/-Proto/-Server are added for a plain client."""
    h = one_node(server_name="proxy1")
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: shop.example:8000\r\n\r\n")
    [req] = parse_requests(h.accept().received())
    assert req.header(b"X-Forwarded-For") == b"127.0.0.9"
    assert req.header(b"X-Forwarded-Host") == b"shop.example:8000"
    assert req.header(b"X-Forwarded-Proto") == b"http"
    assert req.header(b"X-Forwarded-Server") == b"proxy1"


def test_forwarded_for_appended_never_overwritten():
    """An existing X-Forwarded-For gets the client appended; a client's
    X-Forwarded-Proto is replaced (the proxy knows the scheme)."""
    h = one_node()
    c = h.client(secure=True)
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.1.1.1\r\n"
           b"x-forwarded-for: 10.2.2.2\r\nX-Forwarded-Proto: http\r\n\r\n")
    [req] = parse_requests(h.accept().received())
    assert req.all(b"X-Forwarded-For") == [b"10.1.1.1", b"10.2.2.2, 127.0.0.9"]
    assert req.all(b"X-Forwarded-Proto") == [b"https"]
    assert req.header(b"X-Forwarded-Host") == b"a"


def test_no_forwarded_headers_when_disabled():
    h = one_node(add_forwarded_headers=False)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    [req] = parse_requests(h.accept().received())
    assert not [n for n in req.names() if n.lower().startswith(b"x-forwarded")]


def test_host_rewritten_without_preserve_host():
    h = Harness(preserve_host=False)
    h.node("n1", 8081)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: public.example\r\n\r\n")
    [req] = parse_requests(h.accept().received())
    assert req.all(b"Host") == [b"127.0.0.1:8081"]
    assert req.header(b"X-Forwarded-Host") == b"public.example"


def test_response_hop_by_hop_removed_set_cookie_kept():
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.received()
    n.respond(b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nConnection: keep-alive, X-Node\r\n"
              b"X-Node: internal\r\nKeep-Alive: timeout=20\r\nset-cookie: b=2\r\n"
              b"Set-Cookie: c=3; Path=/\r\nContent-Length: 2\r\n\r\nok")
    raw = c.received()
    [resp] = parse_responses(raw)
    assert resp.all(b"Set-Cookie") == [b"a=1", b"b=2", b"c=3; Path=/"]
    assert b"set-cookie: b=2" in raw  # name case preserved
    assert resp.header(b"X-Node") is None
    assert resp.header(b"Keep-Alive") is None
    assert resp.header(b"Connection") is None


def test_keep_alive_connection_reused():
    """Sequential requests share one node connection."""
    h = one_node()
    c = h.client()
    c.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.received()
    n.respond(OK_100)
    c.send(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert not h.pending()
    [req] = parse_requests(n.received())
    assert req.url == b"/2"
    n.respond(OK_100)
    assert [r.status for r in parse_responses(c.received())] == [200, 200]
    # A second client uses the same idle connection too.
    c2 = h.client()
    c2.send(b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert not h.pending()
    assert parse_requests(n.received())[0].url == b"/3"


def test_node_connection_close_not_reused():
    h = one_node()
    c = h.client()
    c.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.respond(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    assert n.closed
    [resp] = parse_responses(c.received())
    assert resp.keep_alive  # the client connection stays open
    c.send(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert len(h.pending(8081)) == 1


def test_chunked_response_rechunked_for_http11_client():
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    n.respond(b"6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    raw = c.received()
    assert raw.count(b"Transfer-Encoding: chunked") == 1
    [resp] = parse_responses(raw)
    assert resp.body == b"hello world"
    assert resp.complete
    assert h.counters_idle()


def test_chunked_response_to_http10_client_is_close_delimited():
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    n = h.accept()
    n.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    raw = c.received()
    assert b"Transfer-Encoding" not in raw
    assert raw.endswith(b"\r\n\r\nhello")
    assert c.closed


def test_http10_keep_alive_with_length():
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    n = h.accept()
    [req] = parse_requests(n.received())
    assert req.header(b"Host") == b"127.0.0.1:8081"  # no Host from the client
    n.respond(OK_100)
    raw = c.received()
    assert b"Connection: keep-alive\r\n" in raw
    assert not c.closed


def test_http10_without_keep_alive_closes():
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.0\r\n\r\n")
    n = h.accept()
    n.respond(OK_100)
    assert parse_responses(c.received())[0].body == b"hello"
    assert c.closed


def test_close_delimited_response():
    """A node body ending with the connection is chunked for an HTTP/1.1 client."""
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.respond(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart1,")
    n.respond(b"part2")
    assert h.in_flight() == 1
    n.close()
    [resp] = parse_responses(c.received())
    assert resp.complete
    assert resp.body == b"part1,part2"
    assert not c.closed
    assert h.counters_idle()


@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
def test_close_delimited_response_cut_by_a_reset_is_not_complete(version):
    """
    A body that ends with the connection ends with a close (FIN), not a
    reset: a reset (a node that died, or closed with unread data, which also
    discards what was in flight) cuts the client connection, so an HTTP/1.1
    client gets no last chunk and an HTTP/1.0 client no orderly close.
    Before, it was relayed as a complete body.  It feeds passive health.
    """
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/" + version + b"\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.respond(b"HTTP/1.1 200 OK\r\n\r\npart1,")
    n.close(ConnectionLost)
    raw = c.received()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and b"part1," in raw
    assert not raw.endswith(b"0\r\n\r\n")
    assert c.transport.disconnected  # aborted, not closed in order
    assert h.counters_idle()
    assert h.nodeEntry("n1").rt.fails == 1


def test_client_connection_close_honoured():
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    n = h.accept()
    n.respond(OK_100)
    raw = c.received()
    assert b"Connection: close\r\n" in raw
    assert c.closed
    assert not n.closed  # the node connection goes back to the pool


def test_head_response_and_reuse():
    """HEAD: Content-Length relayed, no body expected, parser ready for the next."""
    h = one_node()
    c = h.client()
    c.send(b"HEAD /f HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.received()
    n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    raw = c.received()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 1234\r\n" in raw
    assert raw.endswith(b"\r\n\r\n")
    assert h.counters_idle()
    c.send(b"GET /g HTTP/1.1\r\nHost: a\r\n\r\n")
    assert not h.pending()
    assert parse_requests(n.received())[0].url == b"/g"
    n.respond(OK_100)
    assert parse_responses(c.received())[0].body == b"hello"


def test_204_and_304_have_no_body():
    h = one_node()
    c = h.client()
    c.send(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.respond(b"HTTP/1.1 204 No Content\r\n\r\n")
    c.send(b"GET /b HTTP/1.1\r\nHost: a\r\nIf-None-Match: x\r\n\r\n")
    n.respond(b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n")
    raw = c.received()
    assert b"Transfer-Encoding" not in raw
    resps = parse_responses(raw)
    assert [r.status for r in resps] == [204, 304]
    assert all(r.body == b"" for r in resps)
    assert not c.closed
    assert h.counters_idle()


def test_expect_100_continue_passed_through():
    """Expect travels to the node; its 100 Continue reaches the client."""
    h = one_node()
    c = h.client()
    c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    n = h.accept()
    [req] = parse_requests(n.received())
    assert req.header(b"Expect") == b"100-continue"
    n.respond(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert c.received() == b"HTTP/1.1 100 Continue\r\n\r\n"
    c.send(b"data")
    assert n.received() == b"data"
    n.respond(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    [resp] = parse_responses(c.received())
    assert resp.status == 201
    assert not c.closed


def test_early_final_response_to_expect_closes():
    """A final status instead of 100: the body never came, the client connection closes."""
    h = one_node()
    c = h.client()
    c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    n = h.accept()
    n.respond(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
    raw = c.received()
    assert parse_responses(raw)[0].status == 401
    assert b"Connection: close" in raw
    assert c.closed
    assert n.closed  # the node expected a body: not reusable
    assert h.counters_idle()


def test_103_early_hints_relayed():
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.respond(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n" + OK_100)
    raw = c.received()
    assert raw.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
    assert raw.endswith(b"hello")


def test_unknown_expectation_refused():
    h = one_node()
    c = h.client()
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\nContent-Length: 0\r\n\r\n")
    assert parse_responses(c.received())[0].status == 417
    assert not h.pending()


def test_chunked_request_body_streamed():
    h = one_node()
    c = h.client()
    c.send(b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n")
    n = h.accept()
    head = n.received()
    assert b"Transfer-Encoding: chunked\r\n" in head
    assert b"Content-Length" not in head
    assert head.endswith(b"\r\n\r\n4\r\nabcd\r\n")
    c.send(b"3\r\nefg\r\n0\r\nX-T: 1\r\n\r\n")
    assert n.received() == b"3\r\nefg\r\n0\r\n\r\n"
    n.respond(OK_100)
    assert parse_responses(c.received())[0].status == 200
    assert h.counters_idle()


def test_content_length_body_streamed():
    h = one_node()
    c = h.client()
    c.send(b"PUT /p HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01234")
    n = h.accept()
    [req] = parse_requests(n.received())
    assert req.header(b"Content-Length") == b"10"
    assert req.body == b"01234"
    c.send(b"56789")
    assert n.received() == b"56789"
    n.respond(OK_100)
    assert parse_responses(c.received())[0].status == 200


def test_absolute_form_target():
    h = one_node()
    c = h.client()
    c.send(b"GET http://Other.Example:81/x?q HTTP/1.1\r\nHost: ignored\r\n\r\n")
    [req] = parse_requests(h.accept().received())
    assert req.url == b"/x?q"
    assert req.header(b"Host") == b"Other.Example:81"


def test_error_page_for_head_has_no_body():
    h = Harness()
    c = h.client()
    c.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    raw = c.received()
    assert raw.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert raw.endswith(b"\r\n\r\n")


def test_stopped_or_disabled_context_is_503_with_retry_after_by_default():
    """
    Issue 14 §2: when the longest matching context is STOPPED (or DISABLED and
    the request has no session) the client gets 503 + Retry-After, not 404;
    C{unavailable_context_status = 404} restores httpd's answer.
    """
    from modcluster.cluster.model import ContextState

    for state in (ContextState.STOPPED, ContextState.DISABLED):
        h = Harness(retry_after=30)
        h.node("n1", 9001, contexts=("/app",), state=state)
        c = h.client()
        c.send(b"GET /app/x HTTP/1.1\r\nHost: a\r\n\r\n")
        raw = c.received()
        assert raw.startswith(b"HTTP/1.1 503 "), raw
        assert b"\r\nRetry-After: 30\r\n" in raw
        c.send(b"GET /elsewhere HTTP/1.1\r\nHost: a\r\n\r\n")
        raw = c.received()
        assert raw.startswith(b"HTTP/1.1 404 "), raw  # no context at all: still 404

        h = Harness(unavailable_context_status=404)
        h.node("n1", 9001, contexts=("/app",), state=state)
        c = h.client()
        c.send(b"GET /app/x HTTP/1.1\r\nHost: a\r\n\r\n")
        raw = c.received()
        assert raw.startswith(b"HTTP/1.1 404 "), raw
        assert b"Retry-After" not in raw


@pytest.mark.parametrize("extra", [
    b"HTTP/1.1 503 Service Unavailable\r\nX-From-The-First: ",  # a head's start
    b"H",  # what an over-long body may leave
])
@pytest.mark.parametrize("first", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
])
def test_bytes_after_a_complete_response_do_not_reach_the_next_one(first, extra):
    """
    A node sends more than its response in the read that ends it, bytes that
    begin another response (llhttp keeps them as the start of the next
    message): the connection is not reused, so they cannot become part of
    the next exchange's response (another client's): that one is answered on
    a fresh connection with its own status and fields.
    """
    h = one_node()
    c = h.client()
    c.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.received()
    n.respond(first + extra)
    [r1] = parse_responses(c.received())
    assert r1.status == 200 and r1.body == b"hello"
    c2 = h.client()
    c2.send(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert n.closed
    n2 = h.accept()
    assert parse_requests(n2.received())[0].url == b"/2"
    n2.respond(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno")
    [r2] = parse_responses(c2.received())
    assert r2.status == 404 and r2.body == b"no"
    assert r2.header(b"X-From-The-First") is None


@pytest.mark.parametrize("connection", [b"Content-Length", b"keep-alive, content-length"])
def test_content_length_named_in_connection_still_frames_the_relayed_response(connection):
    """
    A node names Content-Length in its Connection header: the header is its
    framing, which the proxy relays with the response, so it stays.  Before,
    it was cut as a listed hop-by-hop header while its value still framed
    the body: the client got a keep-alive response with no framing at all
    (an HTTP/1.1 client then reads to the close, and the next response on
    the connection becomes part of this body).
    """
    h = one_node()
    c = h.client()
    c.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.received()
    n.respond(b"HTTP/1.1 200 OK\r\nConnection: " + connection
              + b"\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello")
    c.send(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert parse_requests(n.received())[0].url == b"/2"
    n.respond(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno")
    r1, r2 = parse_responses(c.received())
    assert r1.status == 200 and r1.body == b"hello"
    assert r1.header(b"Content-Length") == b"5"
    assert r1.header(b"X-A") == b"1"
    assert r2.status == 404 and r2.body == b"no"
    assert not c.closed


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 099 Early\r\n\r\n",
    b"HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n",
])
def test_status_below_100_is_a_bad_response(head):
    """
    llhttp takes any three digits as a status; one below 100 is no HTTP
    status: 502, the node connection closed, the client connection usable.
    Before, it went the 1xx way: relayed as an interim "HTTP/1.1 99" or "0"
    (no client can read it) and the client waited for a final response.
    """
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.respond(head)
    [r] = parse_responses(c.received())
    assert r.status == 502
    assert n.aborted
    assert not c.closed
    assert h.counters_idle()
    assert h.failures == []


@pytest.mark.parametrize("one_read", [True, False])
def test_interim_responses_are_bounded(one_read):
    """
    A node that answers interim (1xx) responses without end: after 10 (httpd's
    AP_MAX_INTERIM_RESPONSES) the answer is a bad response (502, node
    connection closed, one log line), instead of relaying them for as long as
    the node sends them (the read timeout never came: data kept arriving)
    while the node connection's head buffer grew with each one.
    """
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    interim = b"HTTP/1.1 102 Processing\r\n\r\n"
    if one_read:
        n.respond(interim * 1000)
    else:
        for _ in range(1000):
            if n.aborted:
                break
            n.respond(interim)
    raw = c.received()
    assert raw.count(b"HTTP/1.1 102 Processing\r\n") == 10
    [r] = parse_responses(raw.replace(b"HTTP/1.1 102 Processing\r\n\r\n", b""))
    assert r.status == 502
    assert b"interim" in r.body
    assert n.aborted
    assert h.counters_idle()
    assert h.failures == []


def test_ten_interim_responses_then_the_final_one():
    """Up to 10 interim responses are relayed, then the final response."""
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.respond(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 10
              + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    raw = c.received()
    assert raw.count(b"HTTP/1.1 103 Early Hints\r\n") == 10
    [r] = parse_responses(raw.replace(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", b""))
    assert r.status == 200 and r.body == b"ok"
    assert not n.closed


_BAD_HEADS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\rX-Injected: 1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\nX-Injected: 1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A : a\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\nContent-Length: 0\r\n\r\n",
]


@pytest.mark.parametrize("answer", _BAD_HEADS, ids=range(len(_BAD_HEADS)))
@pytest.mark.parametrize("pieces", [1, 7])
def test_bad_response_heads_are_502_and_the_client_goes_on(answer, pieces):
    """
    Heads the proxy must not relay (ambiguous framing, codings it cannot
    frame, folding, CR/LF/NUL in a field, bare LF lines, a head over
    max_header_size), in one read or trickled: 502, the node connection
    closed (never pooled), the node not put in error (one bad answer, issue
    13 §2) but counted by passive health; the client's keep-alive connection
    goes on with its next request, answered on a new node connection.
    """
    h = one_node()
    c = h.client()
    c.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    size = -(-len(answer) // pieces)
    for i in range(0, len(answer), size):
        if n.aborted:
            break
        n.respond(answer[i:i + size])
    [r] = parse_responses(c.received())
    assert r.status == 502
    assert b"X-Injected" not in r.body and r.header(b"X-Injected") is None
    assert n.aborted
    assert not c.closed
    assert h.failures == [] and h.nodeEntry("n1").rt.fails == 1
    c.send(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    n2 = h.accept()
    assert parse_requests(n2.received())[0].url == b"/2"
    n2.respond(OK_100)
    [r2] = parse_responses(c.received())
    assert r2.status == 200 and r2.body == b"hello"
    assert h.counters_idle()


@pytest.mark.parametrize("answer,close", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", True),  # short, then FIN
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n", False),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n", False),
])
def test_body_framing_broken_after_the_head_cuts_the_client(answer, close):
    """
    The head went out, then the body breaks its own framing (too short
    before a close, a bad chunk size, chunk data longer than its size, a
    size overflowing): the client connection is cut (its framing cannot be
    completed), the node connection closed, passive health counts it.
    """
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.respond(answer)
    if close:
        n.close()
    raw = c.received()
    # (the head is written at the end of the node's read: when the body
    # breaks in the read that brought the head, the client gets nothing)
    assert raw == b"" or raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert not raw.endswith(b"0\r\n\r\n")
    assert c.transport.disconnected
    assert n.aborted or close
    assert h.counters_idle()
    assert h.failures == [] and h.nodeEntry("n1").rt.fails == 1


def test_head_response_with_a_body_in_the_same_read_is_not_pooled():
    """
    A HEAD response followed by a body in the same read: the client gets the
    head only, the node connection is not reused (the body bytes are no
    message boundary), the next request goes to a new connection.
    """
    h = one_node()
    c = h.client()
    c.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.received()
    n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    raw = c.received()
    assert raw.endswith(b"\r\n\r\n") and b"hello" not in raw
    assert n.closed
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n2 = h.accept()
    n2.respond(OK_100)
    assert parse_responses(c.received())[0].body == b"hello"


@pytest.mark.parametrize("reason", [b"O\x01K", b"OK\x7f", b"\x1b[31mred"])
def test_control_characters_in_a_reason_phrase_are_not_relayed(reason):
    """
    llhttp accepts control characters in a reason phrase (not CR or LF),
    which RFC 9112 does not allow (HTAB, SP, VCHAR, obs-text): the client
    gets the standard phrase instead, not bytes a strict parser refuses.
    """
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.respond(b"HTTP/1.1 200 " + reason + b"\r\nContent-Length: 2\r\n\r\nok")
    raw = c.received()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n"), raw
    assert parse_responses(raw)[0].body == b"ok"
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n.received()
    n.respond(b"HTTP/1.1 200 Fine \xe9t\xe9\tyes\r\nContent-Length: 2\r\n\r\nok")  # allowed
    assert c.received().startswith(b"HTTP/1.1 200 Fine \xe9t\xe9\tyes\r\n")
