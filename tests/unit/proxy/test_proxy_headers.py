"""
The pure header helpers: hop-by-hop classification in every letter case,
Connection tokens, Upgrade matching, error pages.
"""

from hypothesis import given
from hypothesis import strategies as st
from tests.support.proxy_testlib import Harness, parse_requests, parse_responses

from modcluster.proxy.headers import (
    REQUEST_HEADER_EXACT,
    REQUEST_HEADER_KIND,
    RESPONSE_HEADER_EXACT,
    RESPONSE_HEADER_KIND,
    connection_tokens,
    drop_listed,
    error_response,
    header_block,
    response_block,
    upgrade_matcher,
)


def _kind(exact, kinds, name):
    k = exact.get(name)
    return kinds.get(name.lower(), 0) if k is None else k


def _mixed_case(draw_bits, name: bytes) -> bytes:
    return bytes(c ^ 0x20 if bit and 97 <= (c | 0x20) <= 122 else c
                 for c, bit in zip(name, draw_bits, strict=False))


@given(st.sampled_from(sorted(REQUEST_HEADER_KIND)), st.lists(st.booleans(), min_size=20,
                                                               max_size=20))
def test_request_kind_is_case_insensitive(name, bits):
    spelled = _mixed_case(bits, name)
    assert _kind(REQUEST_HEADER_EXACT, REQUEST_HEADER_KIND, spelled) == REQUEST_HEADER_KIND[name]


@given(st.sampled_from(sorted(RESPONSE_HEADER_KIND)), st.lists(st.booleans(), min_size=20,
                                                                max_size=20))
def test_response_kind_is_case_insensitive(name, bits):
    spelled = _mixed_case(bits, name)
    assert (_kind(RESPONSE_HEADER_EXACT, RESPONSE_HEADER_KIND, spelled)
            == RESPONSE_HEADER_KIND[name])


def test_exact_maps_never_pass_a_hop_by_hop_name():
    for exact, kinds in ((REQUEST_HEADER_EXACT, REQUEST_HEADER_KIND),
                         (RESPONSE_HEADER_EXACT, RESPONSE_HEADER_KIND)):
        for name, kind in exact.items():
            assert kind == kinds.get(name.lower(), 0), name


@given(st.lists(st.sampled_from([b"Keep-Alive", b"TE", b"Trailer", b"Proxy-Connection",
                                 b"X-A", b"X-B"]), min_size=1, max_size=6))
def test_hop_by_hop_request_headers_never_reach_the_node(names):
    h = Harness()
    h.node("n1", 8081)
    c = h.client()
    head = b"".join(n + b": v%d\r\n" % i for i, n in enumerate(names))
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-b\r\n" + head + b"\r\n")
    [req] = parse_requests(h.accept().received())
    sent = [n.lower() for n in req.names()]
    for n in names:
        if n in (b"X-A",):
            assert b"x-a" in sent
        else:
            assert n.lower() not in sent


def test_connection_tokens_and_drop_listed():
    tokens = connection_tokens([b"keep-alive, X-Foo", b" upgrade ,close,"])
    assert tokens == {b"keep-alive", b"x-foo", b"upgrade", b"close"}
    headers = [(b"X-Foo", b"1"), (b"X-Bar", b"2"), (b"x-foo", b"3")]
    assert drop_listed(headers, tokens) == [(b"X-Bar", b"2")]
    same = [(b"A", b"1")]
    assert drop_listed(same, frozenset({b"close"})) is same


def test_upgrade_matcher():
    m = upgrade_matcher("websocket")
    assert m(b"WebSocket") == b"WebSocket"
    assert m(b"h2c") is None
    assert m(b"h2c, websocket") == b"websocket"
    assert upgrade_matcher("*")(b"anything/1") == b"anything/1"
    assert upgrade_matcher("foo, websocket")(b"foo") == b"foo"


def test_error_response_shape():
    raw = error_response(503, "no node", close=False, date=b"D", retry_after=7)
    [resp] = parse_responses(raw)
    assert resp.status == 503
    assert resp.header(b"Retry-After") == b"7"
    assert resp.header(b"Content-Length") == b"%d" % len(resp.body)
    assert resp.header(b"Connection") is None
    assert b"no node" in resp.body
    raw = error_response(400, "bad\r\nX-Injected: 1", close=True, date=b"D")
    [resp] = parse_responses(raw)
    assert resp.header(b"Connection") == b"close"
    assert resp.header(b"X-Injected") is None  # the message is only in the body


_NAMES = [b"Server", b"Content-Type", b"Set-Cookie", b"X-Node", b"X-Other", b"Content-Length",
          b"Connection", b"Keep-Alive", b"Proxy-Connection", b"TE", b"Trailer",
          b"Transfer-Encoding", b"Upgrade", b"Te-Custom", b"X-Connection", b"Upgrade-Insecure"]
_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade"}


def _reference(pairs):
    listed = set()
    for name, value in pairs:
        if name.lower() == b"connection":
            listed |= {t.strip().lower() for t in value.split(b",") if t.strip()}
    listed -= {b"close", b"keep-alive", b"upgrade"}
    kept = [(n, v) for n, v in pairs if n.lower() not in _HOP and n.lower() not in listed]
    cl = [v for n, v in pairs if n.lower() == b"content-length"]
    return kept, (cl[0].strip() if cl else None)


_values = st.sampled_from([b"1", b"keep-alive", b"close", b"X-Node", b"x-node, X-Other",
                           b"a=1; Path=/", b"chunked", b"websocket", b" 42 "])


@given(st.lists(st.tuples(st.sampled_from(_NAMES), st.lists(st.booleans(), min_size=20,
                                                                 max_size=20), _values),
                max_size=12))
def test_response_block_matches_a_per_header_filter(items):
    pairs = [(_mixed_case(bits, name), value) for name, bits, value in items]
    kept, cl = _reference(pairs)
    block, got_cl, te, upg = response_block(header_block(pairs))
    assert block == header_block(kept)
    assert got_cl == (cl.lower() if cl is not None else None)  # real values are digits
    tes = [v for n, v in pairs if n.lower() == b"transfer-encoding"]
    assert te == (b", ".join(v.strip().lower() for v in tes) if tes else None)
