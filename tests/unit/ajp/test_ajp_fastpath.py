"""
Tests for the fast paths of L{modcluster.ajp.packets}: they must give exactly
what the general code gives.

 - L{ResponseParser.feed_tuples} (the protocol's hot path) vs. L{ResponseParser.feed};
 - the SEND_HEADERS decoder's fast path vs. its checked fallback, on valid
   and on damaged payloads (same values, or the same error type and message);
 - L{ForwardRequestEncoder.encode_prepared} with pieces prepared once per
   client connection vs. L{ForwardRequestEncoder.encode_fields}.
"""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from modcluster.ajp import response
from modcluster.ajp.container import (
    decode_forward_request,
    encode_end_response,
    encode_get_body_chunk,
    encode_send_body_chunk,
    encode_send_headers,
)
from modcluster.ajp.packets import (
    AJPEncodeError,
    AJPProtocolError,
    CPONG,
    CPONG_PACKET,
    CPong,
    END_RESPONSE,
    EndResponse,
    ForwardRequest,
    ForwardRequestEncoder,
    GET_BODY_CHUNK,
    GetBodyChunk,
    RESPONSE_HEADER_CODES,
    RESPONSE_HEADER_NAMES,
    RequestTooLarge,
    SEND_BODY_CHUNK,
    SEND_HEADERS,
    SendBodyChunk,
    SendHeaders,
)
from modcluster.ajp.response import ResponseParser, message_from_tuple

from tests.unit.ajp.test_ajp_packets import forward_requests

# A SEND_HEADERS as Tomcat 10 sends it for a static file (ajp13.md worked example
# plus Tomcat's string-named headers).
TOMCAT_SEND_HEADERS = (
    bytes.fromhex("41 42 00 2d 04 00 c8 00 03 32 30 30 00 00 02 a0 01 00 17")
    + b"text/html;charset=UTF-8"
    + bytes.fromhex("00 a0 03 00 01 35 00")
)
TOMCAT_STATIC = encode_send_headers(200, b"200", [
    (b"Accept-Ranges", b"bytes"), (b"ETag", b'W/"100-1795329003448"'),
    (b"Last-Modified", b"Sun, 22 Nov 2026 06:30:03 GMT"), (b"Content-Type", b"text/plain"),
    (b"Content-Length", b"100"),
])


def _payload(packet: bytes) -> bytes:
    """The SEND_HEADERS payload after the type byte."""
    assert packet[:2] == b"AB" and packet[4] == SEND_HEADERS
    return packet[5:]


def _both(payload: bytes):
    """(fast result or error, checked result or error) for one payload."""
    out = []
    for decode in (response._send_headers, response._send_headers_checked):
        try:
            out.append(("ok", decode(payload, 0, len(payload))))
        except AJPProtocolError as e:
            out.append((type(e), str(e)))
    return out


def test_send_headers_fast_path_on_fixtures():
    """
    The fast SEND_HEADERS decoder gives the checked decoder's values for
    Tomcat's packets, with coded names in canonical spelling.
    """
    for packet in (TOMCAT_SEND_HEADERS, TOMCAT_STATIC):
        fast, checked = _both(_payload(packet))
        assert fast == checked
    payload = _payload(TOMCAT_SEND_HEADERS)
    assert response._send_headers(payload, 0, len(payload)) == (
        200, b"200", ((b"Content-Type", b"text/html;charset=UTF-8"), (b"Content-Length", b"5")))
    payload = _payload(TOMCAT_STATIC)
    assert response._send_headers(payload, 0, len(payload))[2][:2] == (
        (b"Accept-Ranges", b"bytes"), (b"ETag", b'W/"100-1795329003448"'))


@pytest.mark.parametrize("payload, error", [
    (b"\x00", "SEND_HEADERS status: integer truncated"),
    (b"\x00\x63\x00\x00\x00\x00\x00", "status 99 out of range"),
    (b"\x00\xc8\xff\xff\x00\x00", None),  # null reason: allowed, becomes b""
    (b"\x00\xc8\x00\x01\r\x00\x00\x00", "reason contains CR, LF or NUL"),
    (b"\x00\xc8\x00\x00\x00\x00\x01\xa0\x0c\x00\x00\x00", "unknown header code 0xA00C"),
    (b"\x00\xc8\x00\x00\x00\x00\x01\x00\x03a b\x00\x00\x00\x00", "invalid header name"),
    (b"\x00\xc8\x00\x00\x00\x00\x01\xa0\x01\x00\x03a\nb\x00", "contains CR, LF or NUL"),
    (b"\x00\xc8\x00\x00\x00\x00\x01\xa0\x01\x00\x05ab\x00", "overruns the packet"),
    (b"\x00\xc8\x00\x00\x00\x00\x01\xa0\x01\x00\x01ab", "not NUL-terminated"),
    (b"\x00\xc8\x00\x00\x00\x00\x01\xa0\x01\xff\xff", "null string not allowed"),
    (b"\x00\xc8\x00\x00\x00\x00\x02\xa0\x01\x00\x00\x00", "header list truncated"),
    (b"\x00\xc8\x00\x00\x00\x00\x00\x00", "1 unexpected trailing bytes"),
])
def test_send_headers_fast_path_errors(payload, error):
    """
    Every malformed payload gets the checked decoder's error (type and
    message) from the fast decoder.
    """
    fast, checked = _both(payload)
    assert fast == checked
    if error is None:
        assert fast[0] == "ok"
    else:
        assert error in fast[1]


_token = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                 min_size=1, max_size=20).map(str.encode)
_names = st.one_of(
    st.sampled_from(sorted(RESPONSE_HEADER_CODES)),
    st.sampled_from(sorted(RESPONSE_HEADER_NAMES.values())),
    st.sampled_from(sorted(response._KNOWN_TOKENS)),
    _token,
)
_values = st.binary(max_size=40).filter(lambda v: not any(c in v for c in b"\r\n\x00"))
_heads = st.tuples(
    st.integers(100, 999), _values,
    st.lists(st.tuples(_names, _values), max_size=10), st.booleans())


def _encode_head(head) -> bytes:
    status, reason, headers, use_codes = head
    return encode_send_headers(status, reason, headers, 65536, use_codes)


@given(_heads)
def test_send_headers_fast_path_matches_checked(head):
    """
    On any valid SEND_HEADERS (coded or string names) both decoders agree.
    """
    payload = _payload(_encode_head(head))
    fast, checked = _both(payload)
    assert fast == checked
    assert fast[0] == "ok"


@given(_heads, st.data())
def test_send_headers_fast_path_matches_checked_when_damaged(head, data):
    """
    With bytes flipped, inserted or removed, both decoders give the same
    values or the same error.
    """
    payload = bytearray(_payload(_encode_head(head)))
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(payload)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "insert" or position == len(payload):
            payload[position:position] = bytes([data.draw(st.integers(0, 255))])
        elif action == "flip":
            payload[position] = data.draw(st.sampled_from([0, 0x0A, 0x0D, 0xA0, 0xFF]
                                                          + [data.draw(st.integers(0, 255))]))
        else:
            del payload[position]
    # also decode from the middle of a larger buffer, as the parser does
    prefix = data.draw(st.binary(max_size=3))
    suffix = data.draw(st.binary(max_size=3))
    buf = prefix + bytes(payload) + suffix
    results = []
    for decode in (response._send_headers, response._send_headers_checked):
        try:
            results.append(decode(buf, len(prefix), len(prefix) + len(payload)))
        except AJPProtocolError as e:
            results.append((type(e), str(e)))
    assert results[0] == results[1]


# --- feed_tuples vs feed ------------------------------------------------------------

response_messages = st.one_of(
    _heads.map(lambda h: ("head", h)),
    st.binary(max_size=100).map(lambda b: ("body", b)),
    st.booleans().map(lambda r: ("end", r)),
    st.integers(1, 0xFFFF).map(lambda n: ("get", n)),
    st.just(("cpong", None)),
)


def _encode(message) -> bytes:
    kind, value = message
    if kind == "head":
        return _encode_head(value)
    if kind == "body":
        return encode_send_body_chunk(value)
    if kind == "end":
        return encode_end_response(value)
    if kind == "get":
        return encode_get_body_chunk(value)
    return CPONG_PACKET


def test_feed_tuples_shapes():
    """
    The tuples carry the message fields in attribute order.
    """
    stream = (TOMCAT_SEND_HEADERS + encode_send_body_chunk(b"hello") + encode_get_body_chunk(10)
              + CPONG_PACKET + encode_end_response(True) + encode_end_response(False))
    assert ResponseParser().feed_tuples(stream) == [
        (SEND_HEADERS, 200, b"200",
         ((b"Content-Type", b"text/html;charset=UTF-8"), (b"Content-Length", b"5"))),
        (SEND_BODY_CHUNK, b"hello"), (GET_BODY_CHUNK, 10), (CPONG,),
        (END_RESPONSE, True), (END_RESPONSE, False),
    ]
    assert [message_from_tuple(t) for t in ResponseParser().feed_tuples(stream)] == [
        SendHeaders(200, b"200",
                    ((b"Content-Type", b"text/html;charset=UTF-8"), (b"Content-Length", b"5"))),
        SendBodyChunk(b"hello"), GetBodyChunk(10), CPong(), EndResponse(True), EndResponse(False),
    ]
    with pytest.raises(ValueError):
        message_from_tuple((42,))


def _run(method: str, pieces):
    parser = ResponseParser(65536)
    out = []
    try:
        for piece in pieces:
            out += getattr(parser, method)(piece)
    except AJPProtocolError as e:
        return out + list(e.messages), (type(e), str(e))
    return out, None


@given(st.lists(response_messages, max_size=6), st.data())
def test_feed_tuples_matches_feed(messages, data):
    """
    feed_tuples and feed give the same messages and the same error (with the
    same messages decoded before it), for valid and damaged streams fed in
    random pieces.
    """
    stream = bytearray(b"".join(map(_encode, messages)))
    if stream and data.draw(st.booleans()):
        position = data.draw(st.integers(0, len(stream) - 1))
        stream[position] = data.draw(st.integers(0, 255))
    stream = bytes(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    pieces = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    tuples, terror = _run("feed_tuples", pieces)
    objects, oerror = _run("feed", pieces)
    assert [message_from_tuple(t) for t in tuples] == objects
    assert terror == oerror


# --- encode_prepared vs encode_fields ------------------------------------------------

requests = forward_requests(
    protocol=st.one_of(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]), st.binary(max_size=40)))


def _prepared(encoder: ForwardRequestEncoder, r: ForwardRequest, addresses: bytes,
              tail: bytes) -> bytes:
    return encoder.encode_prepared(
        r.method, r.protocol, r.req_uri, addresses, r.server_name, r.server_port, r.is_ssl,
        r.headers, r.secret, r.remote_user, r.auth_type, r.query_string, r.jvm_route, tail)


@given(requests, requests)
def test_encode_prepared_matches_encode_fields(first, second):
    """
    Pieces prepared once (addresses, TLS facts and attributes) and reused for
    another request of the same connection give the bytes encode gives.
    """
    encoder = ForwardRequestEncoder(65536)
    addresses = encoder.encode_addresses(first.remote_addr, first.remote_host)
    tail = encoder.encode_tail(first.ssl_cert, first.ssl_cipher, first.ssl_session,
                               first.ssl_key_size, first.attributes)
    # the second request of the same client connection: its own per-request fields
    same_client = ForwardRequest(
        second.method, second.protocol, second.req_uri, first.remote_addr, first.remote_host,
        second.server_name, second.server_port, second.is_ssl, second.headers, second.secret,
        second.remote_user, second.auth_type, second.query_string, second.jvm_route,
        first.ssl_cert, first.ssl_cipher, first.ssl_session, first.ssl_key_size,
        first.attributes)
    for request in (first, same_client):
        packet = _prepared(encoder, request, addresses, tail)
        assert packet == ForwardRequestEncoder(65536).encode(request)
        assert decode_forward_request(packet[4:]).attributes == first.attributes


def test_encode_prepared_checks():
    """
    encode_prepared checks what encode_fields checks, and the pieces check
    their own fields.
    """
    encoder = ForwardRequestEncoder()
    addresses = encoder.encode_addresses(b"10.0.0.1", b"10.0.0.1")
    assert addresses == b"\x00\x00\x0810.0.0.1\x00\x00\x0810.0.0.1"
    args = [b"GET", b"HTTP/1.1", b"/", addresses, b"h", 80, False, (), None, None, None, None,
            None, b""]
    with pytest.raises(AJPEncodeError, match="server_port"):
        encoder.encode_prepared(*args[:5], 0x10000, *args[6:])
    with pytest.raises(AJPEncodeError, match="empty method"):
        encoder.encode_prepared(b"", *args[1:])
    with pytest.raises(RequestTooLarge):
        encoder.encode_prepared(*args[:2], b"/" + b"x" * 9000, *args[3:])
    with pytest.raises(AJPEncodeError, match="ssl_key_size"):
        encoder.encode_tail(ssl_key_size=0x10000)
    with pytest.raises(RequestTooLarge):
        encoder.encode_tail(attributes=[(b"x" * 0x10000, b"")])
    with pytest.raises(RequestTooLarge):
        encoder.encode_addresses(b"x" * 0x10000, b"")
    assert encoder.encode_tail() == b""
    assert encoder.encode_tail(ssl_key_size=256, attributes=[(b"A", b"b")]) == (
        b"\x0b\x01\x00" + b"\x0a\x00\x01A\x00\x00\x01b\x00")
