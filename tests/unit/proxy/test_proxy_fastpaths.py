"""
The per-request shortcuts of the HTTP path give what the general code gives:
the HTTP version taken from keep-alive, the usual Connection values, the
response heads remembered per node, the X-Forwarded-* lines remembered per
client address.
"""

import httptools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modcluster.proxy import http as http_module
from modcluster.proxy.headers import (
    PLAIN_CONNECTION,
    connection_tokens,
    drop_listed,
    header_block,
    reason_phrase,
    response_block,
    response_block_at,
)
from modcluster.proxy.http import HEAD_MEMO_BYTES, HEAD_MEMO_SIZE, split_head

from tests.support.proxy_testlib import Harness, parse_requests, parse_responses


def one_node(**config) -> Harness:
    h = Harness(**config)
    h.node("n1", 8081)
    return h


class _Version:
    """What llhttp itself says, read in on_headers_complete as the front does."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.version = None

    def on_headers_complete(self) -> None:
        self.version = self.parser.get_http_version()


_CONNECTION_HEADERS = [b"", b"Connection: keep-alive\r\n", b"Connection: close\r\n",
                       b"Connection: Keep-Alive, X-A\r\n", b"Proxy-Connection: keep-alive\r\n",
                       b"proxy-connection: close\r\n", b"PROXY-CONNECTION: keep-alive\r\n",
                       b"Keep-Alive: timeout=5\r\n",
                       b"Connection: close\r\nProxy-Connection: keep-alive\r\n"]


@pytest.mark.parametrize("version", [b"1.0", b"1.1"])
@pytest.mark.parametrize("extra", _CONNECTION_HEADERS)
def test_version_is_llhttps(version, extra):
    head = b"GET / HTTP/" + version + b"\r\nHost: a\r\n" + extra + b"\r\n"
    ref = _Version()
    ref.parser.feed_data(head)
    h = one_node()
    c = h.client()
    c.send(head)
    ex = c.proto._current
    assert ex is not None and ex.version == ref.version


def test_http10_with_proxy_connection_keep_alive_is_still_http10():
    """llhttp keeps an HTTP/1.0 request alive on Proxy-Connection: keep-alive too."""
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.0\r\nHost: a\r\nProxy-Connection: keep-alive\r\n\r\n")
    n = h.accept()
    [req] = parse_requests(n.received())
    assert req.header(b"Proxy-Connection") is None
    n.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    raw = c.received()
    # a body of unknown length is close-delimited for an HTTP/1.0 client
    assert b"Transfer-Encoding" not in raw and raw.endswith(b"\r\n\r\nhello")
    assert c.closed


@pytest.mark.parametrize("value", sorted(PLAIN_CONNECTION))
def test_plain_connection_values_name_no_header(value):
    headers = [(b"Close", b"1"), (b"Keep-Alive", b"2"), (b"Upgrade", b"3"), (b"X", b"4")]
    assert drop_listed(headers, connection_tokens([value])) is headers


@pytest.mark.parametrize("value", [b"keep-alive", b"Keep-Alive", b"close, X-A", b"X-A"])
def test_connection_listed_headers_dropped(value):
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: " + value + b"\r\nX-A: 1\r\nX-B: 2\r\n\r\n")
    [req] = parse_requests(h.accept().received())
    assert req.header(b"X-B") == b"2"
    assert req.header(b"X-A") == (None if b"X-A" in value else b"1")


_HEAD = (b"HTTP/1.1 200 OK\r\nServer: s\r\nConnection: keep-alive, X-Hop\r\nX-Hop: h\r\n"
         b"Keep-Alive: timeout=5\r\nContent-Length: 5\r\nX-End: e\r\n")


@pytest.mark.parametrize("head", [
    _HEAD,
    b"HTTP/1.1 200 \r\nContent-Length: 5\r\n",
    b"HTTP/1.1 404 Not  Found here\r\nX: 1\r\n",
    b"HTTP/1.0 200 OK\r\n",
])
def test_split_head_is_reason_and_response_block(head):
    line_end = head.find(b"\r\n")
    status_line = head[:line_end]
    reason = status_line.split(b" ", 2)[2] if status_line.count(b" ") >= 2 else b""
    assert split_head(head) == (reason,) + response_block(head[line_end + 2:])


def _relay(h, c, n, response: bytes) -> bytes:
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n.received()
    n.respond(response)
    return c.received()


def test_repeated_head_relayed_the_same_and_remembered():
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.received()
    n.respond(_HEAD + b"\r\nhello")
    first = c.received()
    [resp] = parse_responses(first)
    assert resp.header(b"X-Hop") is None and resp.header(b"Keep-Alive") is None
    assert resp.header(b"Connection") is None and resp.header(b"X-End") == b"e"
    pool = n.proto.pool
    assert list(pool.heads) == [_HEAD]
    for _ in range(3):
        assert _relay(h, c, n, _HEAD + b"\r\nhello") == first
    assert len(pool.heads) == 1
    # the same headers after another status line are another head
    other = _relay(h, c, n, _HEAD.replace(b"200 OK", b"201 Created") + b"\r\nhello")
    assert other == first.replace(b"200 OK", b"201 Created")
    assert len(pool.heads) == 2
    # an empty reason phrase is filled in, from the memo too
    for _ in range(2):
        raw = _relay(h, c, n, b"HTTP/1.1 202 \r\nContent-Length: 0\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 202 " + reason_phrase(202) + b"\r\n")
    assert h.counters_idle()


def test_head_memo_is_bounded():
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.received()
    n.respond(b"HTTP/1.1 200 OK\r\nX-I: start\r\nContent-Length: 0\r\n\r\n")
    c.received()
    heads = n.proto.pool.heads
    for i in range(HEAD_MEMO_SIZE + 5):
        raw = _relay(h, c, n, b"HTTP/1.1 200 OK\r\nX-I: %d\r\nContent-Length: 0\r\n\r\n" % i)
        assert b"X-I: %d\r\n" % i in raw
        assert len(heads) <= HEAD_MEMO_SIZE
    heads.clear()
    big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * HEAD_MEMO_BYTES + b"\r\nContent-Length: 0\r\n"
    raw = _relay(h, c, n, big + b"\r\n")
    assert b"X-Big: bbb" in raw
    assert not heads  # relayed, not kept


def _forwarded(h, c) -> tuple:
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    [req] = parse_requests(n.received())
    return (req.header(b"X-Forwarded-For"), req.header(b"X-Forwarded-Proto"),
            req.header(b"X-Forwarded-Server"))


def test_forwarded_lines_per_client_address_and_scheme(monkeypatch):
    monkeypatch.setattr(http_module, "FORWARDED_MEMO_SIZE", 2)
    h = one_node(server_name="p1")
    cases = [("127.0.0.9", False), ("127.0.0.9", True), ("127.0.0.10", False),
             ("127.0.0.11", False), ("127.0.0.9", False), ("::1", True)]
    for _ in range(2):
        for peer, secure in cases:
            got = _forwarded(h, h.client(secure=secure, peer=peer))
            assert got == (peer.encode(), b"https" if secure else b"http", b"p1")
    plain, tls = h.factory.http._fwd
    assert len(plain) <= 2 and len(tls) <= 2


def test_forwarded_lines_kept_on_the_client_connection(monkeypatch):
    """
    A connection's later requests to HTTP nodes take its X-Forwarded-* lines
    from its ClientInfo (no call, no memo lookup): the same lines.
    """
    h = one_node(server_name="p1")
    h.node("n2", 8082)
    c = h.client(peer="127.0.0.9")
    head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    conns = []
    sent = []
    for i in range(6):
        c.send(head)
        while h.pending():
            conns.append(h.accept())
        for n in conns:
            data = n.received()
            if data:
                sent.append(data)
                n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        if i == 0:
            assert c.proto.client.http_forwarded == h.factory.http._fwd[0]["127.0.0.9"]
            monkeypatch.setattr(h.factory.http, "forwarded", None)  # not called again
    assert len(sent) == 6 and len(set(sent)) == 1
    [req] = parse_requests(sent[-1])
    assert (req.header(b"X-Forwarded-For"), req.header(b"X-Forwarded-Proto"),
            req.header(b"X-Forwarded-Server")) == (b"127.0.0.9", b"http", b"p1")


_NAMES = [b"Server", b"Content-Length", b"content-length", b"Connection", b"CONNECTION",
          b"Keep-Alive", b"Proxy-Connection", b"TE", b"Trailer", b"Transfer-Encoding",
          b"Upgrade", b"X-Node", b"X-Other", b"Te-Custom"]
_VALUES = [b"1", b" 42 ", b"keep-alive", b"close", b"X-Node", b"x-node, X-Other",
           b"content-length", b"Upgrade, x-other", b"chunked", b"websocket", b"a=1"]


@given(st.lists(st.tuples(st.sampled_from(_NAMES), st.sampled_from(_VALUES)), max_size=10),
       st.sampled_from([b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 101 Switching Protocols\r\n",
                        b"HTTP/1.0 404 \r\n"]))
def test_response_block_at_a_status_line_is_response_block(pairs, status_line):
    block = header_block(pairs)
    assert response_block_at(status_line + block, len(status_line)) == response_block(block)


def test_direct_address_only_for_ip_literals():
    from modcluster.proxy.pool import direct_address

    assert direct_address("127.0.0.1", 8009) == ("127.0.0.1", 8009)
    assert direct_address("[::1]", 8080) == ("::1", 8080)
    assert direct_address("::1", 8080) == ("::1", 8080)
    assert direct_address("localhost", 8009) is None
    assert direct_address("[localhost]", 8009) is None


#: CPython 3.11 shares one key table among a class's instances for the first
#: 29 attribute names ever stored on one of them (checked below); an instance
#: storing a name beyond those gets a dictionary of its own (~1.5 KB, built
#: when that name is stored: per connection)
SHARED_KEYS = 29


def test_shared_keys_hold_29_names():
    """What SHARED_KEYS says of this interpreter (a fresh class each time)."""
    import sys

    def dict_size(n: int) -> int:
        cls = type("C", (), {})
        first = cls()
        for i in range(n):
            setattr(first, f"a{i}", i)
        other = cls()
        for i in range(n):
            setattr(other, f"a{i}", i)
        return sys.getsizeof(vars(other))

    assert dict_size(SHARED_KEYS) * 2 < dict_size(SHARED_KEYS + 1)


def _serve(h, kind: str):
    """A client connection of C{kind} through C{h}; returns its protocol."""
    c = h.client(secure=kind == "tls")
    p = c.proto
    if kind == "tls":
        p.handshakeCompleted()
    if kind == "close":
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert p.deferReading()  # what the accept loop asks after its first read
        n = h.accept()
        n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        assert len(parse_responses(c.received())) == 1 and c.closed
    else:
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        n = h.accept()
        n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # remembered head
        n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
        assert len(parse_responses(c.received())) == 2
        h.advance(2)  # the sweep's checks
        assert p._addr is not None
    return p


@pytest.mark.parametrize("kind", ["keep-alive", "close", "tls"])
def test_client_connection_stores_only_the_names_of_init(kind):
    """
    A client connection stores no attribute name but those C{__init__} and
    C{makeConnection} store, at most L{SHARED_KEYS} of them, whatever it
    served: kept-alive requests (the peer address of buildProtocol, the
    sweep's checks), a C{Connection: close} request the accept loop leaves
    unread (C{deferReading}), a TLS handshake (C{handshakeCompleted}).  So no
    ordinary connection gets a dictionary of its own, whatever rare names
    other connections stored before.
    """
    from modcluster.proxy.client import ClientProtocol

    h = one_node()
    p = _serve(h, kind)
    init_names = set(vars(ClientProtocol(h.factory))) | {"connected", "transport"}
    assert len(init_names) <= SHARED_KEYS, sorted(init_names)
    assert set(vars(p)) <= init_names, sorted(set(vars(p)) - init_names)


def test_client_connections_keep_the_shared_key_dictionary():
    """
    In a new process (the shared key table is the class's, filled by the
    first instances in the order they store names: the production order,
    each protocol connected when built), kept-alive, C{Connection: close}
    and TLS connections keep a split dictionary, not one of their own.
    """
    import subprocess
    import sys

    script = """
import sys
from modcluster.proxy.client import ClientProtocol
from tests.unit.proxy.test_proxy_fastpaths import _serve, one_node
sizes = [sys.getsizeof(vars(_serve(one_node(), kind))) for kind in ("keep-alive", "close", "tls")]
fresh = ClientProtocol(one_node().factory)
fresh.connected, fresh.transport = 0, None
print(sizes, sys.getsizeof(vars(fresh)))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    sizes, fresh = out.rsplit(" ", 1)
    # a split dictionary is much smaller than one of its own with as many keys
    assert all(size <= 2 * int(fresh) for size in eval(sizes)), out


def test_pipeline_queue_made_by_the_first_queued_request():
    """
    A client connection has no pipeline deque (a 64-slot block) until a
    request waits behind another; then requests are served in order as before.
    """
    from collections import deque

    h = one_node()
    c = h.client()
    assert not c.proto._queue and not isinstance(c.proto._queue, deque)
    c.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(c.proto._queue, deque) and len(c.proto._queue) == 1
    n = h.accept()
    n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
    n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
    assert [r.body for r in parse_responses(c.received())] == [b"1", b"2"]
