"""
Heads seen before skip the parser: request heads without a body
(L{ProxyFactory.request_heads}) and whole responses whose head a node sent
before (L{NodePool.whole}).  Whatever is sent, the node and the client see
exactly the same bytes, connection closes and counters as with the parser
alone; the remembered values are shared and never changed; the memos stay
bounded.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modcluster.cluster.model import BalancerSettings
from modcluster.proxy import client as client_module
from modcluster.proxy import exchange as exchange_module
from modcluster.proxy import front as front_module
from modcluster.proxy import http as http_module
from modcluster.proxy.client import REQUEST_MEMO_BYTES, REQUEST_MEMO_SIZE, REQUEST_SEEN_SIZE
from modcluster.proxy.client import _REQUEST_LINE

from tests.support.proxy_testlib import Harness, parse_requests, parse_responses


def _without_memo(run):
    """C{run()} with both memos off (nothing is small enough to be remembered)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(client_module, "REQUEST_MEMO_BYTES", 0)
        mp.setattr(front_module, "REQUEST_MEMO_BYTES", 0)
        mp.setattr(http_module, "HEAD_MEMO_BYTES", -1)
        return run()


def _harness(sticky_remove: bool = False, n1_error: bool = False) -> Harness:
    h = Harness()
    b = BalancerSettings("mycluster", sticky_remove=sticky_remove, sticky_force=False)
    h.node("n1", 8081, balancer=b)
    h.node("n2", 8082, balancer=b)
    if n1_error:
        h.registry.set_error("n1", "test")
    return h


def _transcript(h: Harness, exchanges: list) -> list:
    """
    Send each (request, response) in turn, on one client connection while
    the proxy keeps it open; the node that got the request answers on the
    connection it got it on.  Returns everything each side saw.
    """
    seen = []
    c = h.client()
    conns: list = []
    for request, response in exchanges:
        if c.closed:
            c = h.client()
        c.send(request)
        while h.pending():
            conns.append(h.accept())
        got = [(n, n.received()) for n in conns if not n.closed]
        got = [(n, data) for n, data in got if data]
        seen.append(("node", [(n.port, data) for n, data in got]))
        for n, _ in got:
            n.respond(response)
        seen.append(("client", c.received(), c.closed,
                     [(n.port, n.closed) for n in conns]))
    seen.append(("idle", h.counters_idle()))
    return seen


_METHODS = [b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"POST", b"CONNECT"]
_TARGETS = [b"/", b"/app/x?q=1", b"/app;jsessionid=abc.n2", b"http://other.example/app",
            b"*", b"/a%20b"]
_HEADERS = [b"Host: localhost", b"Host: localhost:8000", b"Cookie: JSESSIONID=abc.n1",
            b"Cookie: JSESSIONID=abc.gone", b"cookie: a=1", b"Connection: keep-alive",
            b"Connection: close", b"Connection: X-Hop", b"X-Hop: 1",
            b"Proxy-Connection: keep-alive", b"X-Forwarded-For: 10.0.0.1",
            b"Expect: 100-continue", b"Expect: nothing", b"Content-Length: 0",
            b"Upgrade: websocket", b"Connection: Upgrade", b"Accept: */*",
            b"Accept-Encoding: gzip", b"Keep-Alive: 5"]
_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nConnection: close\r\n\r\nno!",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\nuntil close",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 \r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello + garbage after it",
    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
]


@st.composite
def _requests(draw) -> bytes:
    method = draw(st.sampled_from(_METHODS))
    target = draw(st.sampled_from(_TARGETS))
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
    headers = draw(st.lists(st.sampled_from(_HEADERS), max_size=6))
    return b"%s %s HTTP/%s\r\n%s\r\n" % (method, target, version,
                                         b"".join(x + b"\r\n" for x in headers))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_requests(), st.sampled_from(_RESPONSES)), min_size=1, max_size=5),
       st.booleans(), st.booleans(), st.booleans())
def test_memo_changes_nothing_the_peers_see(exchanges, sticky_remove, n1_error, in_a_row):
    # each exchange three times in a row (a head is remembered the second time
    # it comes, used from the third) or the whole list three times
    plan = [e for e in exchanges for _ in (0, 1, 2)] if in_a_row else exchanges * 3
    with_memo = _transcript(_harness(sticky_remove, n1_error), plan)
    without = _without_memo(lambda: _transcript(_harness(sticky_remove, n1_error), plan))
    assert with_memo == without


@pytest.mark.parametrize("preserve_host", [True, False])
@pytest.mark.parametrize("add_forwarded", [True, False])
@pytest.mark.parametrize("sticky_remove", [True, False])
def test_node_head_of_a_remembered_head_is_the_parsed_ones(preserve_host, add_forwarded,
                                                           sticky_remove):
    """
    The request head a node gets for a remembered request head (built once
    per Host line: http._node_head) is the bytes the general path builds,
    for each forwarding setting, with and without a new target after a
    remembered header block.
    """
    heads = [
        b"GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /a?x=1 HTTP/1.1\r\nHost: localhost:8000\r\nAccept: */*\r\nUser-Agent: u\r\n\r\n",
        b"GET /b HTTP/1.1\r\nAccept: */*\r\n\r\n",
        b"DELETE /c HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n",
        b"GET /d HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
        b"GET /e;jsessionid=abc.n1 HTTP/1.1\r\nHost: h\r\nCookie: JSESSIONID=abc.n1; a=1\r\n\r\n",
        b"GET /f HTTP/1.1\r\nHost: h\r\nCookie: JSESSIONID=abc.n2\r\nX-B: 2\r\n\r\n",
        b"GET /g HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
    ]
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    # each head three times (remembered from the third), then with other
    # targets (a remembered header block)
    plan = [(head, response) for head in heads for _ in range(3)]
    plan += [(head.replace(b" /", b" /other/", 1), response) for head in heads for _ in range(2)]

    def run():
        h = Harness(preserve_host=preserve_host, add_forwarded_headers=add_forwarded)
        b = BalancerSettings("mycluster", sticky_remove=sticky_remove, sticky_force=False)
        h.node("n1", 8081, balancer=b)
        h.node("n2", 8082, balancer=b)
        return _transcript(h, plan), h

    without, _ = _without_memo(run)
    with_memo, h = run()
    assert with_memo == without
    templates = list(h.factory.request_heads.entries.values())
    assert templates and any(t.node_heads for t in templates)


def test_repeated_request_head_skips_the_parser_and_is_relayed_the_same():
    h = _harness()
    head = (b"GET /app/x?q=1 HTTP/1.1\r\nHost: localhost\r\nCookie: JSESSIONID=abc.n1\r\n"
            b"Accept: */*\r\n\r\n")
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    c = h.client()
    c.send(head)
    n = h.accept(8081)
    first = n.received()
    n.respond(response)
    assert c.received().endswith(b"\r\n\r\nhello")
    # seen once: not remembered yet (a head that never comes again costs no
    # template); the second time it is
    assert not h.factory.request_heads and not h.factory.request_blocks
    assert (b"GET", b"1", head[head.index(b"\r\n") + 2:]) in h.factory.request_seen
    c.send(head)
    assert n.received() == first
    n.respond(response)
    assert c.received().endswith(b"\r\n\r\nhello")
    assert list(h.factory.request_heads) == [head]
    template = h.factory.request_heads[head]
    fed = []
    parser = c.proto._parser
    c.proto._parser = type("Spy", (), {"feed_data": lambda self, d: fed.append(d)})()
    try:
        for _ in range(3):
            c.send(head)
            assert n.received() == first  # same node (sticky), same bytes
            n.respond(response)
            assert c.received().endswith(b"\r\n\r\nhello")
    finally:
        c.proto._parser = parser
    assert fed == []
    assert h.factory.request_heads[head] is template  # shared, unchanged
    assert isinstance(template.headers, tuple)
    assert h.counters_idle()
    # another connection uses it too
    c2 = h.client()
    c2.send(head)
    assert n.received() == first


def test_connection_with_a_remembered_head_makes_no_parser():
    """
    A Connection: close client whose one request head is remembered is served
    without a parser being made for its connection; one whose head is not
    gets one.
    """
    h = Harness()
    h.node("n1", 8081)
    head = b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    n = None
    for i in range(3):  # seen once, then remembered, then served from memory
        c = h.client()
        c.send(head)
        n = h.accept() if n is None or n.closed else n
        assert parse_requests(n.received())[0].url == b"/x"
        assert (c.proto._parser is None) == (i == 2)
        n.respond(ok)
        assert parse_responses(c.received())[0].body == b"ok"
        assert c.closed
    assert h.counters_idle()
    c = h.client()
    c.send(b"GET /x HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nConnection: close\r\n\r\n")
    assert c.proto._parser is not None  # a head (and header block) not seen before


def test_sticky_remove_does_not_change_the_remembered_head():
    h = _harness(sticky_remove=True, n1_error=True)
    head = b"GET / HTTP/1.1\r\nHost: localhost\r\nCookie: JSESSIONID=abc.n1; x=1\r\n\r\n"
    c = h.client()
    for _ in range(3):
        _, sent = _serve(h, c, head, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        [req] = parse_requests(sent)
        assert req.header(b"Cookie") == b"x=1"
    template = h.factory.request_heads[head]
    assert (b"Cookie", b"JSESSIONID=abc.n1; x=1") in template.headers


@pytest.mark.parametrize("reads", [
    # two requests in one read
    [b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"],
    # a body (in the same read or not)
    [b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab"],
    [b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n"],
    [b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"],
    # an Upgrade, tunnelled or not
    [b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"],
    # refused: no Host, CONNECT, a bad Expect, malformed
    [b"GET / HTTP/1.1\r\n\r\n"],
    [b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n"],
    # larger than the memo's limit
    [b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * REQUEST_MEMO_BYTES + b"\r\n\r\n"],
    # a head in two reads
    [b"GET / HTTP/1.1\r\nHost: x\r\n", b"\r\n"],
])
def test_not_remembered(reads):
    h = _harness()
    for _ in range(3):
        c = h.client()
        for data in reads:
            c.send(data)
    assert not h.factory.request_heads


def test_remembered_heads_have_no_chunked_body():
    """
    A remembered head (request_heads, request_blocks) is of a request without
    a body or with Content-Length: 0, never a chunked one: HttpForwarder.forward
    sends such a head on an idle connection with chunked False, without
    comparing body_length with -1.
    """
    h = _harness()
    for head in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                 b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"0\r\n\r\n"):
        for _ in range(3):
            h.client().send(head)
    templates = (list(h.factory.request_heads.entries.values())
                 + list(h.factory.request_blocks.entries.values()))
    assert len(h.factory.request_heads.entries) == 2
    assert templates and all(t.body_length in (None, 0) for t in templates)


def test_request_memo_is_bounded():
    h = _harness()
    for i in range(REQUEST_MEMO_SIZE + 10):
        for _ in range(2):
            h.client().send(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        assert len(h.factory.request_heads) <= REQUEST_MEMO_SIZE
    assert h.factory.request_heads  # emptied when full, then filled again


def test_heads_seen_once_are_bounded_and_get_no_template():
    h = _harness()
    for i in range(REQUEST_SEEN_SIZE + 10):
        h.client().send(b"GET /%d HTTP/1.1\r\nHost: x\r\nX-I: %d\r\n\r\n" % (i, i))
        h.client().send(b"GET /%d HTTP/1.1\r\nHost: x\r\nX-J: %d\r\n\r\n" % (i, i))
        assert len(h.factory.request_seen) <= REQUEST_SEEN_SIZE
    assert not h.factory.request_heads and not h.factory.request_blocks


def test_pipelined_request_behind_a_busy_one_uses_the_parser():
    h = _harness()
    head = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID=a.n1\r\n\r\n"
    for _ in range(2):  # then remembered
        n, _ = _serve(h, h.client(), head, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert head in h.factory.request_heads
    n.close()
    c = h.client()
    c.send(head)
    n = h.accept(8081)
    c.send(head)  # the first is not answered yet: queued, parsed
    assert len(c.proto._queue) == 1
    assert len(parse_requests(n.received())) == 1
    n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
    assert len(parse_requests(n.received())) == 1
    n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
    [r1, r2] = parse_responses(c.received())
    assert (r1.body, r2.body) == (b"a", b"b")
    assert h.counters_idle()


_STICKY = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID=a.n1\r\n\r\n"


def _serve(h, c, request: bytes, response: bytes) -> tuple:
    """Send C{request}; the node connection that gets it answers C{response}."""
    c.send(request)
    conns = h.__dict__.setdefault("conns", [])
    while h.pending():
        conns.append(h.accept())
    for n in conns:
        sent = n.received()
        if sent:
            n.respond(response)
            return n, sent
    raise AssertionError("no request reached a node")


def _one(h, c, response: bytes):
    return _serve(h, c, _STICKY, response)[0]


def test_whole_response_relayed_without_the_parser():
    h = _harness()
    c = h.client()
    response = (b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 5\r\n"
                b"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\nhello")
    n = _one(h, c, response)
    first = c.received()
    pool = n.proto.pool
    head = response[:response.index(b"\r\n\r\n") + 2]
    assert list(pool.whole) == [head]
    whole = pool.whole[head]
    assert (whole.status, whole.reason, whole.length, whole.keep_alive) == (200, b"OK", 5, True)
    fed = []
    n.proto.parser = type("Spy", (), {"feed_data": lambda self, d: fed.append(d)})()
    for _ in range(3):
        assert _one(h, c, response) is n
        assert c.received() == first
    assert fed == []
    assert not n.closed and h.counters_idle()
    # the same head in two reads, or the body in two reads: the parser
    n.proto.parser = http_module.HttpResponseParser(n.proto)
    assert _one(h, c, response[:10]) is n
    n.respond(response[10:])
    assert c.received() == first
    assert _one(h, c, response[:-1]) is n
    assert c.received() == first[:-1]
    n.respond(response[-1:])
    assert c.received() == b"o"
    assert not n.closed and h.counters_idle()
    # then from the memo again
    assert _one(h, c, response) is n
    assert c.received() == first


def test_whole_response_same_head_again_without_a_lookup():
    """
    The pool's last whole head is compared before the memo is looked up: a
    node that sends the same head again is relayed without a lookup (here
    with the memo emptied after the first time), another head is looked up
    and becomes the last, a longer or shorter body goes to the parser.
    """
    h = _harness()
    c = h.client()
    a = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    b = b"HTTP/1.1 200 OK\r\nX-B: 1\r\nContent-Length: 2\r\n\r\nhi"
    n = _one(h, c, a)
    first_a = c.received()
    assert _one(h, c, a) is n and c.received() == first_a
    pool = n.proto.pool
    assert pool.last_whole is pool.whole[a[:a.index(b"\r\n\r\n") + 2]]
    assert pool.last_whole.raw == a[:-5]
    fed = []
    parser = n.proto.parser
    n.proto.parser = type("Spy", (), {"feed_data": lambda self, d: fed.append(d)})()
    pool.whole.entries.clear()
    for _ in range(2):
        assert _one(h, c, a) is n and c.received() == first_a
    assert fed == []
    n.proto.parser = parser
    assert _one(h, c, b) is n
    first_b = c.received()
    assert first_b.endswith(b"X-B: 1\r\nContent-Length: 2\r\n\r\nhi")
    assert _one(h, c, b) is n and c.received() == first_b
    assert pool.last_whole.raw == b[:-2]
    # a (no longer in the memo): the parser, which remembers it again
    assert _one(h, c, a) is n and c.received() == first_a
    assert pool.last_whole.raw == b[:-2] and list(pool.whole) == [b[:-4], a[:-7]]
    assert _one(h, c, a) is n and c.received() == first_a
    assert pool.last_whole.raw == a[:-5]
    # the last head with a body of another size: the parser frames it
    assert _one(h, c, a[:-1]) is n
    assert c.received() == first_a[:-1]
    n.respond(b"o")
    assert c.received() == b"o"
    assert _one(h, c, a + b"HTTP/1.1 200 OK\r\n") is n
    # bytes after the response: the parser relays it and closes the node connection
    assert c.received() == first_a and not c.closed and n.closed
    assert h.counters_idle()


@pytest.mark.parametrize("request_line, extra", [
    (b"GET / HTTP/1.1", b""),
    (b"GET / HTTP/1.1", b"Connection: close\r\n"),
    (b"GET / HTTP/1.0", b"Connection: keep-alive\r\n"),
    (b"GET / HTTP/1.0", b""),
    (b"GET /?q HTTP/1.1", b"Upgrade: websocket\r\nConnection: Upgrade\r\n"),
])
@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 503 Busy\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno",
    b"HTTP/1.1 299 \r\nContent-Length: 1\r\n\r\nx",
])
def test_whole_response_relayed_as_the_parser_relays_it(request_line, extra, response):
    """
    What a client gets for a remembered response head (responseWhole, its
    head built once per HTTP version) is what it gets through llhttp, the
    first time and the times after, for clients that keep their connection
    and clients that do not.
    """
    request = request_line + b"\r\nHost: x\r\nCookie: JSESSIONID=a.n1\r\n" + extra + b"\r\n"

    def run():
        h = _harness()
        got = []
        for _ in range(4):
            c = h.client()
            n = _serve(h, c, request, response)[0]
            got.append((c.received(), c.closed))
            if not n.closed:
                n.proto.transport.loseConnection()
        assert h.counters_idle()
        return got, h

    plain, _ = _without_memo(run)
    remembered, h = run()
    assert remembered == plain
    pool = h.__dict__["conns"][0].proto.pool
    assert list(pool.whole)  # the later answers took the whole-response path


def test_whole_response_not_for_head_requests():
    h = _harness()
    c = h.client()
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    n = _one(h, c, response)
    c.received()
    c.send(b"HEAD / HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID=a.n1\r\n\r\n")
    assert n.received()
    n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    raw = c.received()
    assert raw.endswith(b"Content-Length: 5\r\n\r\n")
    assert h.counters_idle()


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
])
def test_whole_response_only_for_content_length_framing(response):
    h = _harness()
    c = h.client()
    n = _one(h, c, response)
    assert not n.proto.pool.whole


def test_whole_response_memo_is_bounded():
    h = _harness()
    c = h.client()
    n = None
    for i in range(http_module.HEAD_MEMO_SIZE + 5):
        n = _one(h, c, b"HTTP/1.1 200 OK\r\nX-I: %d\r\nContent-Length: 0\r\n\r\n" % i)
        assert b"X-I: %d\r\n" % i in c.received()
        assert len(n.proto.pool.whole) <= http_module.HEAD_MEMO_SIZE


def test_header_block_remembered_for_other_targets():
    """A browser's requests for other resources (same headers) skip the parser too."""
    h = Harness()
    h.node("n1", 8081, contexts=("/app",))
    h.node("n2", 8082, contexts=("/other",))
    block = b"Host: localhost\r\nAccept: */*\r\nCookie: a=1\r\n\r\n"
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    c = h.client()
    for target in (b"/app/1", b"/app/2?x=1"):  # seen, then remembered
        _serve(h, c, b"GET " + target + b" HTTP/1.1\r\n" + block, ok)
    assert (b"GET", b"1", block) in h.factory.request_blocks
    fed = []
    parser = c.proto._parser
    c.proto._parser = type("Spy", (), {"feed_data": lambda self, d: fed.append(d)})()
    try:
        for target, port in ((b"/other/%C3%A9?q=%20", 8082), (b"/app", 8081),
                             (b"/app/x;jsessionid=s.n1", 8081)):
            n, sent = _serve(h, c, b"GET " + target + b" HTTP/1.1\r\n" + block, ok)
            assert n.port == port
            [req] = parse_requests(sent)
            assert req.url == target and req.header(b"Cookie") == b"a=1"
    finally:
        c.proto._parser = parser
    assert fed == []
    # what a target becomes (as _checkHead makes it)
    ex = exchange_module._Exchange(c.proto)
    ex.remembered(h.factory.request_blocks[(b"GET", b"1", block)], b"/a%20b/\xc3\xa9?q")
    assert (ex.target, ex.path, ex.query) == (b"/a%20b/\xc3\xa9?q", "/a%20b/\u00e9", b"q")
    assert h.counters_idle()


def test_header_block_memo_off_when_max_header_size_is_small():
    h = Harness(max_header_size=1024)
    h.node("n1", 8081)
    for target in (b"/1", b"/2", b"/3"):
        h.client().send(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not h.factory.split_heads and not h.factory.request_blocks


_TARGET_CHARS = st.sampled_from(list(b"abz/09?%-._~!$&'()*+,;=:@#\"<>[]^`{|} "))


_BLOCK_TARGETS = st.one_of(
    st.sampled_from([b"/", b"*", b"http://h.example/app?x", b"/app;jsessionid=a.n2",
                     b"/app/x?y=1", b"//", b"/app?"]),
    st.lists(_TARGET_CHARS, max_size=12).map(lambda cs: b"/" + bytes(cs)))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"POST", b"PUT", b"PATCH",
                        b"TRACE", b"get"]),
       st.lists(_BLOCK_TARGETS, min_size=2, max_size=8),
       st.lists(st.sampled_from(_HEADERS), max_size=5), st.sampled_from([b"1.1", b"1.0"]),
       st.booleans(), st.booleans())
def test_header_block_memo_changes_nothing_the_peers_see(method, targets, headers, version,
                                                         sticky_remove, n1_error):
    block = b"".join(x + b"\r\n" for x in headers) + b"\r\n"
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    plan = [(b"%s %s HTTP/%s\r\n" % (method, t, version) + block, ok) for t in targets] * 2
    with_memo = _transcript(_harness(sticky_remove, n1_error), plan)
    without = _without_memo(lambda: _transcript(_harness(sticky_remove, n1_error), plan))
    assert with_memo == without


def test_request_line_pattern_is_a_subset_of_what_llhttp_accepts():
    import httptools

    class Url:
        url = None

        def on_url(self, u):
            self.url = u

    for c in b"-._~!$&'()*+,;=:@/?%" + bytes(range(48, 58)) + bytes(range(65, 91)) + bytes(
            range(97, 123)):
        line = b"GET /a%cb HTTP/1.1" % c
        assert _REQUEST_LINE.fullmatch(line)
        u = Url()
        httptools.HttpRequestParser(u).feed_data(line + b"\r\nHost: x\r\n\r\n")
        assert u.url == b"/a%cb" % c
    for line in (b"GET * HTTP/1.1", b"GET http://x/ HTTP/1.1", b"GET /a#b HTTP/1.1",
                 b"CONNECT /a HTTP/1.1", b"GET /a HTTP/2.0", b"GET  /a HTTP/1.1",
                 b"get /a HTTP/1.1", b"GET /a\"b HTTP/1.1"):
        assert not _REQUEST_LINE.fullmatch(line)


def test_client_gone_during_a_remembered_request():
    """
    A request from the memo whose client leaves before the answer: the node
    connection is aborted (as for a parsed request), its late whole answer
    reaches no one, the counters return to idle, and the next client is served.
    """
    h = _harness()
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    c = h.client()
    for _ in range(2):
        n, _ = _serve(h, c, _STICKY, ok)
        c.received()
    assert _STICKY in h.factory.request_heads and n.proto.pool.whole
    c.send(_STICKY)  # from the memo
    assert n.received()
    c.lose()
    assert n.aborted and h.counters_idle()
    n.respond(ok)  # too late: ignored
    assert h.counters_idle()
    c2 = h.client()
    n2, sent = _serve(h, c2, _STICKY, ok)
    assert n2 is not n and sent and c2.received().endswith(b"\r\n\r\nhello")
    assert h.counters_idle()


def test_hot_path_memos_count_their_misses_for_memo_stats():
    """Issue 16: the data plane's memos are BoundedMemos read inline; their
    misses and sizes show in memo_stats() (hits are not counted per
    request: they are the requests less the misses)."""
    from modcluster.memo import memo_stats

    h = _harness()
    c = h.client()
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    n = _one(h, c, response)
    for _ in range(4):
        assert _one(h, c, response) is n
    f = h.factory
    assert f.request_heads.stats() == {"size": 1, "max_size": REQUEST_MEMO_SIZE,
                                       "misses": 1, "evictions": 0}
    pool = n.proto.pool
    assert pool.heads.misses == 1 and pool.whole.misses == 1
    stats = memo_stats()
    for name in ("proxy.request_heads", "proxy.http.heads", "proxy.http.whole",
                 "balancer.routes", "cluster.longest_match"):
        assert name in stats, name
    assert f.request_heads.stats() in stats["proxy.request_heads"]


class _CountingGets(dict):
    """A memo's entries that count their C{get} calls (the inline lookups)."""

    gets = 0

    def get(self, key, default=None):
        self.gets += 1
        return dict.get(self, key, default)


def test_connection_compares_its_last_head_before_the_lookup():
    """
    A connection that sends the head it sent last is answered from that
    head's template without the memo's lookup (no hash of the read), the
    same bytes to the node and the client; once the memo forgets the head
    (emptied), it is looked up, parsed and remembered again as before; another
    head is looked up and becomes the last one.
    """
    h = _harness()
    c = h.client()
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    n, first = _serve(h, c, _STICKY, response)
    answer = c.received()
    assert _one(h, c, response) is n  # remembered the second time
    assert c.received() == answer
    f = h.factory
    template = f.request_heads[_STICKY]
    assert template.raw is _STICKY
    counting = _CountingGets(f.request_heads.entries)
    f.request_heads.entries = counting
    for _ in range(3):
        n2, sent = _serve(h, c, _STICKY, response)
        assert (n2, sent, c.received()) == (n, first, answer)
    assert counting.gets == 1  # the first time only: then the last head
    assert f.request_heads.stats()["misses"] == 1
    # forgotten by the memos: looked up (a miss), parsed, remembered anew
    f.request_heads.clear()
    f.request_blocks.clear()
    assert template.raw is None
    for _ in range(2):
        n2, sent = _serve(h, c, _STICKY, response)
        assert (n2, sent, c.received()) == (n, first, answer)
    assert counting.gets == 3
    assert f.request_heads.stats()["misses"] == 2
    again = f.request_heads[_STICKY]
    assert again is not template and again == template and again.raw == _STICKY
    # another head is looked up, and becomes the last one
    other = _STICKY.replace(b"Host: x", b"Host: x\r\nX-A: 1")  # another header block
    assert other != _STICKY
    for _ in range(4):
        _serve(h, c, other, response)
        c.received()
    assert c.proto._last_head is f.request_heads[other]
    assert counting.gets == 3 + 3  # seen, remembered, then the last head
    n2, sent = _serve(h, c, _STICKY, response)
    assert (n2, sent, c.received()) == (n, first, answer)
    assert c.proto._last_head is again and counting.gets == 7
    assert h.counters_idle()


def test_request_head_memo_forgets_the_key_of_a_replaced_or_evicted_template():
    from modcluster.proxy.exchange import RequestHeadMemo

    memo = RequestHeadMemo("t", 2, count_hits=False)
    a, b, a2, c = (_template(h) for h in (b"/a", b"/b", b"/a", b"/c"))
    memo.put(b"A", a)
    memo.put(b"B", b)
    assert (a.raw, b.raw) == (b"A", b"B")
    memo.put(b"A", a2)  # the same head parsed by two connections: the newer one
    assert (a.raw, a2.raw, memo[b"A"]) == (None, b"A", a2)
    memo.put(b"C", c)  # full: emptied first
    assert (a2.raw, b.raw, c.raw, list(memo)) == (None, None, b"C", [b"C"])
    assert memo.stats()["evictions"] == 2


def _template(path: bytes):
    from modcluster.proxy.exchange import RequestHead

    return RequestHead(b"GET", path, "1.1", (), b"x", None, True, path.decode(), None, None,
                       None, None, None, True)


_STICKY_HEAD = b"HEAD / HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID=a.n1\r\n\r\n"


def test_last_whole_head_attacks():
    """
    The pool's last whole head (startswith) never relays what it should not:
    a HEAD answer with that head, the head with more header lines after it,
    two responses in one read (the second is not a later client's answer),
    the head and body in several reads.
    """
    h = _harness()
    c = h.client()
    a = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    n = _one(h, c, a)
    first_a = c.received()
    assert _one(h, c, a) is n and c.received() == first_a
    pool = n.proto.pool
    assert pool.last_whole.raw == a[:-5]
    # HEAD: the same head, no body
    assert _serve(h, c, _STICKY_HEAD, a[:-5])[0] is n
    assert c.received() == first_a[:-5]
    assert not n.closed and h.counters_idle()
    # HEAD with exactly Content-Length bytes after the head: not a body
    c2 = h.client()
    _serve(h, c2, _STICKY_HEAD, a)
    assert c2.received() == first_a[:-5]
    # the same first lines and more headers
    more = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-More: 1\r\n\r\nhello"
    c3 = h.client()
    _serve(h, c3, _STICKY, more)
    [r] = parse_responses(c3.received())
    assert r.body == b"hello" and r.header(b"x-more") == b"1"
    # two responses in one read: the second is not relayed to a later request
    c4 = h.client()
    m, _ = _serve(h, c4, _STICKY, a + a)
    got = c4.received()
    assert got == first_a
    assert m.closed  # not reused with the second response waiting in it
    c5 = h.client()
    _serve(h, c5, _STICKY, a)
    assert c5.received() == first_a
    # a response split across reads right after the head
    c6 = h.client()
    m, _ = _serve(h, c6, _STICKY, a[:-5])
    m.respond(b"hel")
    m.respond(b"lo")
    assert c6.received() == first_a
    assert h.counters_idle()


_UNSET = object()


def _slots(ex) -> dict:
    return {name: getattr(ex, name, _UNSET) for name in exchange_module._Exchange.__slots__}


def _recycling_harness(monkeypatch, observer: bool):
    """
    Two nodes (one with StickySessionRemove's balancer); every remembered
    head's exchange is compared, when its first attempt starts, with a new
    exchange of the same template (and target): C{made} lists them.
    """
    from modcluster.proxy.observe import ClientStats, Observer

    h = Harness()
    b = BalancerSettings("mycluster", sticky_remove=True, sticky_force=False)
    h.node("n1", 8081, balancer=b)
    h.node("n2", 8082, balancer=b)
    if observer:
        h.factory.observer = Observer(h.reactor.seconds, None, None, ClientStats())
    made: list = []
    attempt = exchange_module._Exchange._attempt

    def checking_attempt(ex, *args, **kw):
        if ex.head_template is not None and ex.decision is None:  # a remembered head, 1st attempt
            fresh = exchange_module._Exchange(ex.proto, ex.head_template)
            if ex.head_template.target is None:
                fresh.retarget(ex.target)
            assert _slots(ex) == _slots(fresh)
            made.append(ex)
        attempt(ex, *args, **kw)

    monkeypatch.setattr(exchange_module._Exchange, "_attempt", checking_attempt)
    return h, made


@pytest.mark.parametrize("observer", [False, True])
def test_finished_exchange_serves_the_connections_next_remembered_head(monkeypatch, observer):
    """
    A connection's exchange of a remembered head, once answered on its one
    attempt, is taken again for the connection's next remembered head, set
    as a new one would be (every slot, whatever the last response was: whole,
    chunked with and without trailers, to HEAD, 204, 304; after another
    request line of the same header block); the peers see what they see
    without the memos.  One that failed over, was retried, or whose headers
    StickySessionRemove changed is not taken again; a lost connection lets
    go of its last one.
    """
    whole = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    responses = [
        whole,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno!",
        whole,
    ]
    get = b"GET /a?q=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    head = b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n"
    other = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"  # the header block of /a: request_blocks
    plan = [(r, resp) for r in (get, head, other) for resp in responses]
    plan = [(r, resp) for r, resp in plan for _ in (0, 1, 2)]
    h, made = _recycling_harness(monkeypatch, observer)
    with_memo = _transcript(h, plan)
    without = _without_memo(
        lambda: _transcript(_recycling_harness(monkeypatch, observer)[0], plan))
    assert with_memo == without
    assert len(made) >= len(plan) - 6
    assert len({id(ex) for ex in made}) < len(made) // 4  # mostly the same one
    assert with_memo[-1] == ("idle", True)
    h, made = _recycling_harness(monkeypatch, observer)
    c = h.client()
    for _ in range(3):
        _serve(h, c, get, whole)
    spare = c.proto._spare
    assert spare is not None and spare.done and spare.decision is None
    _serve(h, c, get, whole)
    assert c.proto._spare is spare and made[-1] is spare
    c.lose()
    assert c.proto._spare is None


def test_exchange_not_taken_again_after_a_failover_retry_or_sticky_remove(monkeypatch):
    h, made = _recycling_harness(monkeypatch, True)
    c = h.client()
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    plain = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(3):
        _serve(h, c, plain, response)
    spare = c.proto._spare
    assert spare is not None
    # StickySessionRemove changes the headers (the session's node n1 is in
    # error): no template, a new exchange next
    h.registry.set_error("n1", "test")
    sticky = b"GET /a HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID=s.n1; a=1\r\n\r\n"
    for _ in range(3):
        _, sent = _serve(h, c, sticky, response)
        assert b"Cookie: a=1\r\n" in sent
    assert c.proto._spare is None
    h.registry.apply_status("n1", 100, True)
    _serve(h, c, plain, response)
    assert c.proto._spare is not None
    # a failover: the next request's node refuses the connection
    for n in h.conns:
        n.close()
    c.send(plain)
    h.refuse(h.pending()[0][1])
    n = h.accept()
    n.respond(response)
    assert parse_responses(c.received())[-1].status == 200
    assert made[-1].attempts == 1 and c.proto._spare is None
    # the keep-alive race: the idle node connection closed as the request
    # came, retried once on a new connection
    h.conns = [n]
    _serve(h, c, plain, response)
    assert c.proto._spare is not None
    c.send(plain)
    assert n.received()
    n.close()
    n = h.accept()
    n.respond(response)
    assert parse_responses(c.received())[-1].status == 200
    assert c.proto._spare is None
    h.conns = [n]
    _serve(h, c, plain, response)
    assert c.proto._spare is not None
    assert h.counters_idle()


def _close_transcript(h: Harness, exchanges: list) -> list:
    """
    L{_transcript} for requests after which the proxy closes the client
    connection: each on a new client connection, lost once the proxy closed
    it (its transport's C{connectionLost}, which the harness leaves to the
    test); a kept-alive connection is lost after its request too.
    """
    seen = []
    conns: list = []
    for request, response in exchanges:
        c = h.client()
        c.send(request)
        while h.pending():
            conns.append(h.accept())
        got = [(n, n.received()) for n in conns if not n.closed]
        got = [(n, data) for n, data in got if data]
        seen.append(("node", [(n.port, data) for n, data in got]))
        for n, _ in got:
            n.respond(response)
        seen.append(("client", c.received(), c.closed,
                     [(n.port, n.closed) for n in conns]))
        c.lose()
    seen.append(("idle", h.counters_idle()))
    return seen


@pytest.mark.parametrize("observer", [False, True])
def test_finished_exchange_of_a_lost_connection_serves_the_next_connection(
        monkeypatch, observer):
    """
    A lost connection's finished exchange of a remembered head (a
    C{Connection: close} answer, or a kept-alive connection's last one)
    serves another connection's first remembered head: every slot as a new
    exchange's, whatever the last response was; the peers see what they see
    without the memos.
    """
    whole = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    responses = [
        whole,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno!",
        b"HTTP/1.1 200 OK\r\n\r\nclose-delimited",
        whole,
    ]
    close = b"GET /a?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    head = b"HEAD /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    other = b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    kept = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    old = b"GET /a HTTP/1.0\r\nHost: x\r\n\r\n"
    plan = [(r, resp) for r in (close, head, other, kept, old) for resp in responses]
    plan = [(r, resp) for r, resp in plan for _ in (0, 1, 2)]
    h, made = _recycling_harness(monkeypatch, observer)
    with_memo = _close_transcript(h, plan)
    without = _without_memo(
        lambda: _close_transcript(_recycling_harness(monkeypatch, observer)[0], plan))
    assert with_memo == without
    assert len(made) >= len(plan) - 10
    assert len({id(ex) for ex in made}) < len(made) // 4  # mostly the same one
    assert with_memo[-1] == ("idle", True)
    assert not h.factory._clients


def test_spare_exchanges_let_go_of_their_connections_and_are_bounded(monkeypatch):
    """
    A finished exchange kept for the next connections refers to no
    connection, client facts, decision, node or upstream, and nothing but the
    factory's list refers to it; taken again, it refers to its new
    connection only.  The list holds at most SPARE_EXCHANGES; exchanges that
    failed over or whose headers StickySessionRemove changed are not in it.
    """
    import gc

    monkeypatch.setattr(client_module, "SPARE_EXCHANGES", 3)
    h = _harness(sticky_remove=True)
    spares = h.factory.spare_exchanges
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    close = b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    for _ in range(3):  # remembered from the second one on
        c = h.client()
        _serve(h, c, close, response)
        assert c.closed
        c.lose()
    assert len(spares) == 1
    ex = spares[0]
    assert (ex.proto, ex.client, ex.decision, ex.node, ex.upstream) == (None,) * 5
    assert ex.done and ex.head_template is not None
    gc.collect()
    assert [r for r in gc.get_referrers(ex) if r is not spares] == []
    c = h.client()
    _serve(h, c, close, response)
    assert spares == [] and c.proto._spare is ex  # taken, then kept again
    assert c.received().startswith(b"HTTP/1.1 200 OK\r\n")
    c.lose()
    assert spares == [ex] and ex.proto is None and ex.client is None
    # taken by a connection whose request is in flight: its own
    c = h.client()
    c.send(close)
    assert spares == [] and h.factory._clients == {c.proto}
    cur = c.proto._current
    assert cur is ex and ex.proto is c.proto and ex.client is c.proto.client
    c.lose()  # lost before the answer: the exchange aborted, not kept
    assert spares == [] and c.proto._spare is None
    # many connections lost at once: at most SPARE_EXCHANGES kept
    clients = []
    for _ in range(6):
        c = h.client()
        c.send(close)
        clients.append(c)
    while h.pending():
        h.conns.append(h.accept())
    for n in h.conns:
        if n.received():
            n.respond(response)
    for c in clients:
        assert c.closed
        c.lose()
    assert len(spares) == 3 and len({id(x) for x in spares}) == 3
    assert all(x.proto is None and x.client is None for x in spares)
    # a failover: not kept for later connections
    for n in h.conns:
        n.close()
    del spares[:]
    c = h.client()
    c.send(close)
    h.refuse(h.pending()[0][1])
    n = h.accept()
    assert n.received().startswith(b"GET /a ")
    n.respond(response)
    assert parse_responses(c.received())[-1].status == 200
    assert c.proto._spare is None
    c.lose()
    assert spares == []
    assert h.counters_idle()
    # StickySessionRemove changed the headers: not kept either
    h = _harness(sticky_remove=True, n1_error=True)
    spares = h.factory.spare_exchanges
    sticky = b"GET /a HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID=s.n1; a=1\r\nConnection: close\r\n\r\n"
    for _ in range(3):
        c = h.client()
        _, sent = _serve(h, c, sticky, response)
        assert b"Cookie: a=1\r\n" in sent
        c.lose()
    assert spares == []
    assert h.counters_idle()


#: what a node connection resets per exchange (NodeProtocol.__init__'s "per
#: exchange" group but the request's and the framing set by each response)
_NODE_STATE = ("sent", "body_done", "got", "final", "complete", "tunnel", "upgrading",
               "close_delimited", "broken", "informational", "interim", "hbuf", "hpos", "prev")


def test_reused_node_connection_starts_as_a_new_one(monkeypatch):
    """
    A node connection taken again after any response it relayed (whole,
    through the parser in one or more reads, after interim responses,
    chunked with or without trailers, to HEAD, 204) starts its next exchange
    in the state a new connection starts it in: checked when its head is
    sent, by _sendHead or by HttpForwarder.forward itself (a remembered
    head on an idle connection: sent and body_done are then set, the
    request being complete once written).
    """
    h = Harness()
    h.node("n1", 8081)
    c = h.client()
    checked = []
    sending = []
    send_head = http_module.NodeProtocol._sendHead

    def check(p, written):
        fresh = http_module.NodeProtocol(p.pool)
        fresh.start(p.ex)
        names = [k for k in _NODE_STATE if not written or k not in ("sent", "body_done")]
        assert {k: getattr(p, k) for k in names} == {k: getattr(fresh, k) for k in names}
        if written:
            assert p.sent and p.body_done
        checked.append((p, written))

    def checking(p):
        check(p, False)
        sending.append(p)
        try:
            send_head(p)
        finally:
            sending.remove(p)

    monkeypatch.setattr(http_module.NodeProtocol, "_sendHead", checking)
    whole = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    plan = [
        (get, [whole]), (get, [whole]), (get, [whole]),
        (get, [whole[:20], whole[20:]]),
        (get, [b"HTTP/1.1 100 Continue\r\n\r\n", whole]),
        (get, [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + whole]),
        (get, [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
               b"0\r\nX-T: 1\r\n\r\n"]),
        (get, [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"]),
        (b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"]),
        (get, [b"HTTP/1.1 204 No Content\r\n\r\n"]),
        (get, [whole]), (get, [whole]),
    ]
    n = None
    for request, reads in plan:
        c.send(request)
        if n is None:
            n = h.accept()
            write = n.proto.write

            def writing(data, p=n.proto, write=write):
                if p not in sending:
                    check(p, True)
                write(data)

            n.proto.write = writing
        assert n.received()
        for data in reads:
            n.respond(data)
        assert c.received() and not c.closed
    assert len(checked) == len(plan) and {p for p, _ in checked} == {n.proto}
    # both ways: the parsed heads by _sendHead, the remembered ones by forward
    assert {w for _, w in checked} == {False, True}
    assert not n.closed and h.counters_idle()


def test_remembered_head_is_complete_once_written(monkeypatch):
    """
    The HTTP forwarder takes a remembered head's request (no body) as
    complete once its head is written: no resumeRequestBody, no
    requestBodyEnd, the node connection is reused; a node write buffer that
    fills and drains meanwhile pauses nothing and adds nothing to what the
    node gets.
    """
    calls = []
    for cls, name in ((exchange_module._Exchange, "resumeRequestBody"),
                      (http_module.NodeProtocol, "requestBodyEnd")):
        real = getattr(cls, name)

        def spy(self, *a, _real=real, _name=name):
            calls.append(_name)
            return _real(self, *a)

        monkeypatch.setattr(cls, name, spy)
    h = Harness()
    h.node("n1", 8081)
    c = h.client()
    head = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    for _ in range(2):  # parsed: the general path
        n, first = _serve(h, c, head, response)
        assert calls == ["resumeRequestBody", "requestBodyEnd"]
        del calls[:]
        answer = c.received()
    for _ in range(3):
        n2, sent = _serve(h, c, head, response)
        assert (n2, sent, c.received(), calls) == (n, first, answer, [])
    c.send(head)
    assert n.received() == first
    n.proto.pauseProducing()
    assert c.proto._pause == 0
    n.proto.resumeProducing()
    assert n.received() == b"" and c.proto._pause == 0
    n.respond(response)
    assert c.received() == answer
    assert not n.closed and h.counters_idle()
    n2, sent = _serve(h, c, head, response)
    assert (n2, sent, c.received()) == (n, first, answer)


@pytest.mark.parametrize("eject_on_5xx", [False, True])
def test_whole_response_recorded_and_counted_as_the_parser_does(eject_on_5xx):
    """
    A whole response (IExchange.responseWhole: head, body and end in one
    call, the node connection back in its pool before it) leaves the access
    log, the client metrics, the node and context counters, passive health
    and the pools as the parser's path does: kept-alive HTTP/1.1 and
    HTTP/1.0 clients, two nodes, 2xx, 4xx and 5xx answers (which
    eject_on_5xx counts as failures, ejecting a node), a node that closes.
    """
    from modcluster.accesslog import AccessLine
    from modcluster.proxy.observe import ClientStats, Observer

    requests = [b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /b HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"]
    responses = [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                 b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                 b"HTTP/1.1 503 Busy\r\nContent-Length: 2\r\n\r\nno",
                 b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"]

    def run():
        h = Harness(eject_failures=3, eject_on_5xx=eject_on_5xx)
        h.node("n1", 8081)
        h.node("n2", 8082)
        lines: list = []
        sink = type("Lines", (), {"write": lambda self, line: lines.append(line),
                                  "flush": lambda self: None})()
        stats = ClientStats()
        h.factory.observer = Observer(h.reactor.seconds, sink, AccessLine("extended"), stats)
        h.factory.stats = stats
        conns: list = []
        seen = []
        for request in requests:
            c = h.client()
            for i in range(12):
                c.send(request)
                while h.pending():
                    conns.append(h.accept())
                [n] = [n for n in conns if not n.closed and n.transport.value()]
                n.received()
                # three 5xx in a row for each node (ejected with eject_on_5xx)
                n.respond(responses[2 if 3 <= i < 9 else 3 if i == 11 else i % 2])
                if n.closed:
                    n.close()
                seen.append((n.port, c.received(), c.closed))
                h.reactor.advance(0.25)
        nodes = [(e.route, e.rt.requests, e.rt.elected, e.rt.busy, e.rt.read,
                  e.rt.transferred, e.rt.fails, e.rt.ejections, e.rt.ejected_until)
                 for e in h.registry.table.nodes]
        pools = sorted((pool.settings.port, len(pool.idle), len(pool.conns))
                       for pool in h.factory.http._pools.values())
        return seen, lines, stats.export(), nodes, pools, h.counters_idle()

    plain = _without_memo(run)
    remembered = run()
    assert remembered == plain
    assert remembered[-1]
    # (eject_max_share 0.5: one of the two is ejected)
    assert sum(rt[7] for rt in remembered[3]) == (1 if eject_on_5xx else 0)


def test_whole_response_after_bytes_left_in_out_written_after_them():
    """
    A whole response is handed to the client connection with its end
    (IExchange.responseWhole), not appended to C{_out}: what an earlier step
    left there is written first, the response after it, in one write; with
    the connection gone, both stay in C{_out} as before.
    """
    h = _harness()
    c = h.client()
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    n = _one(h, c, response)
    first = c.received()
    c.send(_STICKY)
    assert n.received()
    c.proto._out.append(b"EARLIER")
    writes = []
    real = c.transport.write
    c.transport.write = lambda data: (writes.append(data), real(data))
    c.proto._writer = None
    n.respond(response)
    assert c.received() == b"EARLIER" + first
    assert writes == [b"EARLIER" + first]
    assert c.proto._out == [] and h.counters_idle()
    # the connection gone (not connected): nothing written, both kept
    c.send(_STICKY)
    assert n.received()
    c.proto._out.append(b"EARLIER")
    c.proto.connected = False
    n.respond(response)
    assert c.received() == b""
    assert c.proto._out == [b"EARLIER", first]
