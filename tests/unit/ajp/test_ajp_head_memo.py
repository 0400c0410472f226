"""
Repeated SEND_HEADERS packets: the parser gives the very same decoded tuple
again (bounded, never for a packet it refuses), and the forwarder relays a
head it has relayed before from what it remembered, with the same bytes to
the client and the same errors as when every head is worked out anew.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modcluster.ajp import response as response_module
from modcluster.ajp.container import encode_send_headers
from modcluster.ajp.packets import AJPProtocolError
from modcluster.ajp.response import HEADS_MEMO_BYTES, HEADS_MEMO_SIZE, ResponseParser
from modcluster.ajp.testing import ContainerExchange

from tests.unit.ajp.test_ajp_forwarder import one_node


def _headers_packet(status=200, headers=((b"Content-Length", b"5"),), reason=b"OK",
                    size: int = 8192) -> bytes:
    return encode_send_headers(status, reason, list(headers), max_packet_size=size)


def test_repeated_packet_gives_the_same_tuple():
    p = ResponseParser()
    packet = _headers_packet(headers=((b"Content-Type", b"text/plain"),
                                      (b"Content-Length", b"5")))
    [first] = p.feed_tuples(packet)
    [again] = p.feed_tuples(packet)
    assert again is first
    assert first == (4, 200, b"OK", ((b"Content-Type", b"text/plain"),
                                     (b"Content-Length", b"5")))
    [msg] = p.feed(packet)  # the message API is unchanged
    assert (msg.status, msg.reason, tuple(msg.headers)) == first[1:]
    # split over two reads: the same too
    [split] = p.feed_tuples(packet[:7]) + p.feed_tuples(packet[7:])
    assert split is first


def test_packet_memo_bounded_and_large_packets_not_kept():
    p = ResponseParser(65536)
    for i in range(HEADS_MEMO_SIZE + 3):
        p.feed_tuples(_headers_packet(headers=((b"X-I", b"%d" % i),)))
        assert len(p._heads) <= HEADS_MEMO_SIZE
    p._heads.clear()
    big = _headers_packet(headers=((b"X-Big", b"b" * HEADS_MEMO_BYTES),), size=65536)
    [a] = p.feed_tuples(big)
    [b] = p.feed_tuples(big)
    assert a == b and a is not b and not p._heads


def test_refused_packet_refused_every_time():
    packet = bytearray(_headers_packet(headers=((b"X-A", b"ok"),)))
    packet[-3] = 0x0A  # an LF inside the value
    for _ in range(2):
        p = ResponseParser()
        with pytest.raises(AJPProtocolError):
            p.feed_tuples(bytes(packet))
        assert not p._heads


_RESPONSES = [
    (200, b"OK", ((b"Content-Type", b"text/plain"), (b"Content-Length", b"5")), b"hello"),
    (200, b"200", ((b"Content-Length", b"2"),), b"ok"),  # Tomcat: the code as reason
    (200, b"", ((b"Content-Length", b"2"),), b"ok"),
    (299, b"", ((b"Content-Length", b"2"),), b"ok"),
    (403, b"Access Denied", ((b"Connection", b"X-Secret"), (b"X-Secret", b"s"),
                             (b"Keep-Alive", b"timeout=1"), (b"X-Kept", b"1")), b"no"),
    (200, b"OK", ((b"Content-Length", b"abc"),), b""),  # refused unless no body is due
    (200, b"OK", ((b"Content-Length", b"2"), (b"Content-Length", b"3")), b"ok"),
    (200, b"OK", ((b"Content-Length", b" 2 "), (b"content-length", b"2")), b"ok"),
    (204, b"No Content", (), b""),
    (304, b"Not Modified", ((b"ETag", b'"e"'), (b"Content-Length", b"9")), b""),
    (302, b"Found", ((b"Location", b"/x"), (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"),
                     (b"Content-Length", b"0")), b""),
    (200, b"OK", ((b"X-No-Length", b"1"),), b"chunked to the client"),
]


def _transcript(plan: list) -> list:
    h = one_node()
    answers = iter([r for _, r in plan])

    def handler(ex: ContainerExchange) -> None:
        status, reason, headers, body = next(answers)
        ex.sendHeaders(status, list(headers), reason=reason)
        if body and ex.request.method != b"HEAD":
            ex.write(body)
        ex.end(True)

    seen = []
    c = h.client()
    for method, _ in plan:
        if c.closed:
            c = h.client()
        c.send(b"%s /x HTTP/1.1\r\nHost: a\r\n\r\n" % method)
        while h.pending():
            h.accept(handler=handler, flush=False)
        h.flush()
        seen.append((c.received(), c.closed, len(h.failures)))
    seen.append(h.counters_idle())
    return seen


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"GET", b"HEAD", b"POST"]),
                          st.sampled_from(_RESPONSES)), min_size=1, max_size=5),
       st.booleans())
def test_remembered_heads_change_nothing_the_client_sees(exchanges, in_a_row):
    plan = [e for e in exchanges for _ in (0, 1, 2)] if in_a_row else exchanges * 3
    with_memo = _transcript(plan)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(response_module, "HEADS_MEMO_BYTES", -1)
        without = _transcript(plan)
    assert with_memo == without


def test_forwarder_relays_a_repeated_head_from_its_memo():
    h = one_node()
    c = h.client()
    for i in range(3):
        c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        if i == 0:
            h.accept()
        h.flush()
        assert c.received().endswith(b"\r\n\r\nhello")
    [pool] = h.forwarder._pools.values()
    assert len(pool.heads) == 1
    [entry] = pool.heads.entries.values()
    assert entry.status == 200 and entry.length == 5
    assert entry.relayed == b"OK"  # Tomcat sent "200"


def test_relayed_head_memo_is_keyed_by_the_headers_not_their_identity(monkeypatch):
    """Issue 16: with the parser's own memo off, every SEND_HEADERS gives a
    new (equal) headers tuple; the pool's relayed-head memo still finds it
    (keyed by value, not by id()) and works it out once."""
    monkeypatch.setattr(response_module, "HEADS_MEMO_BYTES", -1)
    h = one_node()
    c = h.client()
    for i in range(3):
        c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        if i == 0:
            h.accept()
        h.flush()
        assert c.received().endswith(b"\r\n\r\nhello")
    [pool] = h.forwarder._pools.values()
    assert len(pool.heads) == 1 and pool.heads.misses == 1
