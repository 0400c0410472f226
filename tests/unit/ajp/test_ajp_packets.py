"""
Tests for L{modcluster.ajp.packets}: the AJP13 codec.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, strategies as st

from modcluster.ajp.container import (
    RequestParser,
    decode_forward_request,
    encode_end_response,
    encode_get_body_chunk,
    encode_send_body_chunk,
    encode_send_headers,
)
from modcluster.ajp.packets import (
    AJPEncodeError,
    AJPProtocolError,
    BadMagic,
    CPING_PACKET,
    CPONG_PACKET,
    CPing,
    CPong,
    EMPTY_BODY_PACKET,
    EndResponse,
    ForwardRequest,
    ForwardRequestEncoder,
    GetBodyChunk,
    METHOD_CODES,
    MalformedPacket,
    PacketTooLarge,
    REQUEST_HEADER_CODES,
    RESPONSE_HEADER_CODES,
    RESPONSE_HEADER_NAMES,
    RequestBodyChunk,
    RequestTooLarge,
    SendBodyChunk,
    SendHeaders,
    UnknownHeaderCode,
    UnknownMessageType,
    body_chunk_header,
    check_packet_size,
    encode_body_chunk,
    encode_forward_request,
    max_request_chunk,
    max_response_chunk,
)
from modcluster.ajp.response import ResponseParser

# --- the reference's worked examples (ajp13.md) -----------------------------------

EXAMPLE_FORWARD = bytes.fromhex("""
12 34 00 f2 02 02 00 08 48 54 54 50 2f 31 2e 31
00 00 10 2f 6d 79 61 70 70 2f 69 6e 64 65 78 2e
6a 73 70 00 00 0d 31 39 32 2e 31 36 38 2e 31 2e
31 30 30 00 00 0d 31 39 32 2e 31 36 38 2e 31 2e
31 30 30 00 00 0f 77 77 77 2e 65 78 61 6d 70 6c
65 2e 63 6f 6d 00 00 50 00 00 04 a0 0b 00 0f 77
77 77 2e 65 78 61 6d 70 6c 65 2e 63 6f 6d 00 a0
0e 00 0a 63 75 72 6c 2f 38 2e 35 2e 30 00 a0 01
00 03 2a 2f 2a 00 a0 09 00 15 4a 53 45 53 53 49
4f 4e 49 44 3d 38 46 32 41 2e 6e 6f 64 65 31 00
0c 00 06 73 33 63 72 33 74 00 05 00 03 78 3d 31
00 06 00 05 6e 6f 64 65 31 00 0a 00 0f 41 4a 50
5f 52 45 4d 4f 54 45 5f 50 4f 52 54 00 00 05 35
34 33 32 31 00 0a 00 0e 41 4a 50 5f 4c 4f 43 41
4c 5f 41 44 44 52 00 00 0b 31 39 32 2e 31 36 38
2e 31 2e 35 00 ff
""")

EXAMPLE_REQUEST = ForwardRequest(
    method=b"GET",
    protocol=b"HTTP/1.1",
    req_uri=b"/myapp/index.jsp",
    remote_addr=b"192.168.1.100",
    remote_host=b"192.168.1.100",
    server_name=b"www.example.com",
    server_port=80,
    is_ssl=False,
    headers=(
        (b"Host", b"www.example.com"),
        (b"User-Agent", b"curl/8.5.0"),
        (b"Accept", b"*/*"),
        (b"Cookie", b"JSESSIONID=8F2A.node1"),
    ),
    secret=b"s3cr3t",
    query_string=b"x=1",
    jvm_route=b"node1",
    attributes=((b"AJP_REMOTE_PORT", b"54321"), (b"AJP_LOCAL_ADDR", b"192.168.1.5")),
)

EXAMPLE_SEND_HEADERS = (
    bytes.fromhex("41 42 00 2d 04 00 c8 00 03 32 30 30 00 00 02 a0 01 00 17")
    + b"text/html;charset=UTF-8"
    + bytes.fromhex("00 a0 03 00 01 35 00")
)


def test_forward_request_reference_example():
    """
    The reference's 246-byte FORWARD_REQUEST is reproduced byte for byte.
    """
    packet = encode_forward_request(EXAMPLE_REQUEST)
    assert len(packet) == 246
    assert packet == EXAMPLE_FORWARD


def test_forward_request_example_decodes():
    """
    The example decodes back to the request, coded header names in Tomcat's
    lower-case spelling.
    """
    [decoded] = RequestParser().feed(EXAMPLE_FORWARD)
    assert decoded == ForwardRequest(
        **{**_fields(EXAMPLE_REQUEST), "headers": (
            (b"host", b"www.example.com"),
            (b"user-agent", b"curl/8.5.0"),
            (b"accept", b"*/*"),
            (b"cookie", b"JSESSIONID=8F2A.node1"),
        )}
    )


def test_send_headers_reference_example():
    """
    The reference's SEND_HEADERS example is what a container encoder writes
    and parses to status, reason and canonical header names.
    """
    encoded = encode_send_headers(
        200, b"200", [(b"Content-Type", b"text/html;charset=UTF-8"), (b"Content-Length", b"5")])
    assert encoded == EXAMPLE_SEND_HEADERS
    assert ResponseParser().feed(EXAMPLE_SEND_HEADERS) == [
        SendHeaders(200, b"200", ((b"Content-Type", b"text/html;charset=UTF-8"),
                                  (b"Content-Length", b"5")))
    ]


def test_small_packets_reference_examples():
    """
    Body packets, GET_BODY_CHUNK, SEND_BODY_CHUNK, END_RESPONSE, CPING and
    CPONG match the reference bytes.
    """
    assert encode_body_chunk(b"a=1&b=2") == bytes.fromhex("12 34 00 09 00 07 61 3d 31 26 62 3d 32")
    assert EMPTY_BODY_PACKET == bytes.fromhex("12 34 00 02 00 00")
    assert encode_body_chunk(b"") == EMPTY_BODY_PACKET
    assert body_chunk_header(8186) == bytes.fromhex("12 34 1F FC 1F FA")
    assert body_chunk_header(3628) == bytes.fromhex("12 34 0E 2E 0E 2C")
    assert encode_get_body_chunk(8186) == bytes.fromhex("41 42 00 03 06 1F FA")
    assert encode_send_body_chunk(b"hello") == bytes.fromhex("41 42 00 09 03 00 05 68 65 6c 6c 6f 00")
    assert encode_end_response(True) == bytes.fromhex("41 42 00 02 05 01")
    assert encode_end_response(False) == bytes.fromhex("41 42 00 02 05 00")
    assert CPING_PACKET == bytes.fromhex("12 34 00 01 0A")
    assert CPONG_PACKET == bytes.fromhex("41 42 00 01 09")


def test_response_small_packets_decode():
    """
    Each container message decodes to its value.
    """
    stream = (encode_send_body_chunk(b"hello") + encode_send_body_chunk(b"")
              + encode_get_body_chunk(8186) + CPONG_PACKET
              + encode_end_response(False) + encode_end_response(True))
    assert ResponseParser().feed(stream) == [
        SendBodyChunk(b"hello"), SendBodyChunk(b""), GetBodyChunk(8186), CPong(),
        EndResponse(False), EndResponse(True),
    ]


# --- FORWARD_REQUEST details ---------------------------------------------------------


def _fields(request: ForwardRequest) -> dict:
    return attrs.asdict(request, recurse=False)


def _request(**changes) -> ForwardRequest:
    base = dict(method=b"GET", protocol=b"HTTP/1.1", req_uri=b"/", remote_addr=b"127.0.0.1",
                remote_host=b"127.0.0.1", server_name=b"localhost", server_port=8000)
    base.update(changes)
    return ForwardRequest(**base)


def _attribute_bytes(packet: bytes, request: ForwardRequest) -> bytes:
    """
    The attribute section of C{packet}: what follows the encoding of the same
    request without attributes (minus that one's terminator).
    """
    bare = encode_forward_request(ForwardRequest(**{
        **_fields(request), "attributes": (), "secret": None, "query_string": None,
        "jvm_route": None, "remote_user": None, "auth_type": None, "ssl_cert": None,
        "ssl_cipher": None, "ssl_session": None, "ssl_key_size": None,
        "method": request.method if request.method in METHOD_CODES else b"GET"}),
        65536)
    return packet[len(bare) - 1:]


@pytest.mark.parametrize("method", sorted(METHOD_CODES))
def test_method_codes(method):
    """
    Methods with an AJP code are sent as that code and no stored method.
    """
    packet = encode_forward_request(_request(method=method))
    assert packet[5] == METHOD_CODES[method]
    assert _attribute_bytes(packet, _request(method=method)) == b"\xff"
    assert decode_forward_request(packet[4:]).method == method


def test_method_codes_table():
    """
    The code table is Tomcat's: OPTIONS=1 ... MKACTIVITY=27, HEAD=3, POST=4.
    """
    assert METHOD_CODES[b"OPTIONS"] == 1
    assert METHOD_CODES[b"GET"] == 2
    assert METHOD_CODES[b"HEAD"] == 3
    assert METHOD_CODES[b"POST"] == 4
    assert METHOD_CODES[b"MKACTIVITY"] == 27
    assert len(METHOD_CODES) == 27


@pytest.mark.parametrize("method", [b"PATCH", b"PURGE", b"get", b"X-CUSTOM"])
def test_stored_method(method):
    """
    A method without a code is sent as 0xFF plus attribute 0x0D carrying the
    name (Tomcat leaves the method unset otherwise).
    """
    request = _request(method=method)
    packet = encode_forward_request(request)
    assert packet[5] == 0xFF
    attrs = _attribute_bytes(packet, request)
    assert attrs == b"\x0d" + len(method).to_bytes(2, "big") + method + b"\x00\xff"
    assert decode_forward_request(packet[4:]).method == method


def test_empty_method_refused():
    """
    An empty method cannot be encoded.
    """
    with pytest.raises(AJPEncodeError):
        encode_forward_request(_request(method=b""))


def test_header_codes_case_insensitive_and_order_kept():
    """
    Known request header names become codes whatever their case; others are
    strings; order and repeats are kept.
    """
    headers = ((b"HOST", b"a"), (b"x-Custom", b"1"), (b"hOsT", b"b"), (b"x-custom", b"2"),
               (b"Content-Length", b"0"), (b"Accept-Language", b"fr"))
    request = _request(headers=headers)
    packet = encode_forward_request(request)
    expected_headers = (
        b"\x00\x06" + b"\xa0\x0b" + b"\x00\x01a\x00"
        + b"\x00\x08x-Custom\x00" + b"\x00\x011\x00"
        + b"\xa0\x0b" + b"\x00\x01b\x00"
        + b"\x00\x08x-custom\x00" + b"\x00\x012\x00"
        + b"\xa0\x08" + b"\x00\x010\x00"
        + b"\xa0\x04" + b"\x00\x02fr\x00"
        + b"\xff"
    )
    assert packet.endswith(expected_headers)
    decoded = decode_forward_request(packet[4:])
    assert decoded.headers == ((b"host", b"a"), (b"x-Custom", b"1"), (b"host", b"b"),
                               (b"x-custom", b"2"), (b"content-length", b"0"),
                               (b"accept-language", b"fr"))


def test_all_request_header_codes():
    """
    Each of the 14 request header codes is used.
    """
    for name, code in REQUEST_HEADER_CODES.items():
        packet = encode_forward_request(_request(headers=((name.upper(), b"v"),)))
        assert packet.endswith(b"\x00\x01" + code.to_bytes(2, "big") + b"\x00\x01v\x00\xff")


def test_encoder_cache_is_bounded():
    """
    The header-name cache stops growing at its limit and stays correct.
    """
    encoder = ForwardRequestEncoder()
    start = len(encoder._names)
    for i in range(encoder.cacheLimit + 50):
        name = b"X-H%d" % i
        packet = encoder.encode(_request(headers=((name, b"v"),)))
        assert decode_forward_request(packet[4:]).headers == ((name, b"v"),)
    assert len(encoder._names) == start + encoder.cacheLimit


def test_attributes_all_kinds():
    """
    Secret first, then the optional attributes in httpd's order, ssl_key_size
    as an integer, req_attributes in order, then 0xFF.
    """
    request = _request(
        is_ssl=True, secret=b"S", remote_user=b"u", auth_type=b"Basic", query_string=b"a=b",
        jvm_route=b"r", ssl_cert=b"C", ssl_cipher=b"AES", ssl_session=b"ID", ssl_key_size=256,
        attributes=((b"AJP_SSL_PROTOCOL", b"TLSv1.3"), (b"AJP_REMOTE_PORT", b"1"),
                    (b"AJP_LOCAL_ADDR", b"127.0.0.1")),
    )
    packet = encode_forward_request(request)

    def s(value):
        return len(value).to_bytes(2, "big") + value + b"\x00"

    assert _attribute_bytes(packet, request) == (
        b"\x0c" + s(b"S") + b"\x03" + s(b"u") + b"\x04" + s(b"Basic") + b"\x05" + s(b"a=b")
        + b"\x06" + s(b"r") + b"\x07" + s(b"C") + b"\x08" + s(b"AES") + b"\x09" + s(b"ID")
        + b"\x0b\x01\x00"
        + b"\x0a" + s(b"AJP_SSL_PROTOCOL") + s(b"TLSv1.3")
        + b"\x0a" + s(b"AJP_REMOTE_PORT") + s(b"1")
        + b"\x0a" + s(b"AJP_LOCAL_ADDR") + s(b"127.0.0.1")
        + b"\xff"
    )
    assert decode_forward_request(packet[4:]) == request
    # magic+length+type+method, 5 strings (11 + 4 + 12 + 12 + 12 bytes), port: is_ssl
    offset = 6 + 11 + 4 + 12 + 12 + 12
    assert packet[offset:offset + 3] == b"\x1f\x40\x01"


def test_encode_fields_equals_encode():
    """
    L{ForwardRequestEncoder.encode_fields} gives the same bytes as encode().
    """
    encoder = ForwardRequestEncoder()
    assert encoder.encode_fields(**_fields(EXAMPLE_REQUEST)) == EXAMPLE_FORWARD


def test_forward_request_too_large():
    """
    A request whose packet exceeds the packet size raises RequestTooLarge; the
    exact limit is allowed; 65536 can be configured.
    """
    base = len(encode_forward_request(_request(headers=((b"X-Fill", b""),))))
    fill = 8192 - base
    at_limit = _request(headers=((b"X-Fill", b"x" * fill),))
    assert len(encode_forward_request(at_limit)) == 8192
    over = _request(headers=((b"X-Fill", b"x" * (fill + 1)),))
    with pytest.raises(RequestTooLarge) as info:
        encode_forward_request(over)
    assert (info.value.size, info.value.limit) == (8193, 8192)
    assert len(encode_forward_request(over, 65536)) == 8193
    with pytest.raises(RequestTooLarge):
        encode_forward_request(_request(headers=((b"X-Fill", b"x" * 70000),)), 65536)
    with pytest.raises(RequestTooLarge):
        encode_forward_request(_request(headers=((b"A", b"b"),) * 70000), 65536)


def test_forward_request_bad_integers():
    """
    server_port and ssl_key_size must fit 16 bits.
    """
    with pytest.raises(AJPEncodeError):
        encode_forward_request(_request(server_port=70000))
    with pytest.raises(AJPEncodeError):
        encode_forward_request(_request(server_port=-1))
    with pytest.raises(AJPEncodeError):
        encode_forward_request(_request(ssl_key_size=1 << 16))


def test_packet_size_bounds():
    """
    Packet sizes outside 8192..65536 are refused.
    """
    assert check_packet_size(8192) == 8192
    assert check_packet_size(65536) == 65536
    for bad in (8191, 65537, 0, "8192"):
        with pytest.raises(ValueError):
            check_packet_size(bad)
        with pytest.raises(ValueError):
            ResponseParser(bad)
        with pytest.raises(ValueError):
            ForwardRequestEncoder(bad)
    assert max_request_chunk(8192) == 8186
    assert max_response_chunk(8192) == 8184


def test_body_chunk_limits():
    """
    A request body packet carries at most packet size - 6 bytes, a response
    body packet at most packet size - 8.
    """
    assert len(encode_body_chunk(b"x" * 8186)) == 8192
    with pytest.raises(RequestTooLarge):
        encode_body_chunk(b"x" * 8187)
    assert len(encode_body_chunk(b"x" * 65530, 65536)) == 65536
    assert len(encode_send_body_chunk(b"x" * 8184)) == 8192
    with pytest.raises(RequestTooLarge):
        encode_send_body_chunk(b"x" * 8185)
    with pytest.raises(RequestTooLarge):
        encode_send_headers(200, b"200", [(b"X", b"x" * 9000)])


# --- Hypothesis round trips ------------------------------------------------------------

_text = st.binary(max_size=40)
_known_request_names = st.sampled_from(sorted(REQUEST_HEADER_CODES)).flatmap(
    lambda name: st.sampled_from([name, name.upper(), name.title()]))
_request_names = st.one_of(_known_request_names, st.binary(min_size=1, max_size=30))
_methods = st.one_of(st.sampled_from(sorted(METHOD_CODES)), st.binary(min_size=1, max_size=20))
_optional = st.one_of(st.none(), _text)

def forward_requests(protocol=_text):
    """Any L{ForwardRequest} (also used by test_ajp_fastpath)."""
    return st.builds(
        ForwardRequest,
        method=_methods,
        protocol=protocol,
        req_uri=_text,
        remote_addr=_text,
        remote_host=_text,
        server_name=_text,
        server_port=st.integers(0, 0xFFFF),
        is_ssl=st.booleans(),
        headers=st.lists(st.tuples(_request_names, _text), max_size=12).map(tuple),
        secret=_optional,
        remote_user=_optional,
        auth_type=_optional,
        query_string=_optional,
        jvm_route=_optional,
        ssl_cert=_optional,
        ssl_cipher=_optional,
        ssl_session=_optional,
        ssl_key_size=st.one_of(st.none(), st.integers(0, 0xFFFF)),
        attributes=st.lists(st.tuples(_text, _text), max_size=5).map(tuple),
    )


requests = forward_requests()


def _normalised(request: ForwardRequest) -> ForwardRequest:
    headers = tuple(
        (name.lower() if name.lower() in REQUEST_HEADER_CODES else name, value)
        for name, value in request.headers
    )
    return ForwardRequest(**{**_fields(request), "headers": headers})


@given(requests)
def test_forward_request_round_trip(request):
    """
    Any request decodes back to itself (coded header names lower-cased).
    """
    packet = encode_forward_request(request, 65536)
    assert packet[:2] == b"\x12\x34"
    assert int.from_bytes(packet[2:4], "big") == len(packet) - 4
    assert decode_forward_request(packet[4:]) == _normalised(request)


@given(requests, st.binary(min_size=1, max_size=300), st.integers(1, 50))
def test_request_stream_incremental(request, body, step):
    """
    FORWARD_REQUEST + body packets + empty packet parse the same whatever the
    read sizes (container side).
    """
    request = ForwardRequest(**{**_fields(request), "headers": ((b"Content-Length", b"%d" % len(body)),)})
    first, rest = body[:len(body) // 2 or 1], body[len(body) // 2 or 1:]
    stream = encode_forward_request(request, 65536) + encode_body_chunk(first) + CPING_PACKET
    parser = RequestParser(65536)
    out = []
    for i in range(0, len(stream), step):
        out += parser.feed(stream[i:i + step])
    assert out[0] == _normalised(request)
    assert out[1:] == [RequestBodyChunk(first), CPing()]
    parser.expect_body_chunk()
    parser.expect_body_chunk()
    assert parser.feed(encode_body_chunk(rest) + EMPTY_BODY_PACKET[:3]) == [RequestBodyChunk(rest)]
    assert parser.feed(EMPTY_BODY_PACKET[3:]) == [RequestBodyChunk(b"")]


_token = st.text(alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                 min_size=1, max_size=20).map(str.encode)
_known_response_names = st.sampled_from(sorted(RESPONSE_HEADER_CODES)).flatmap(
    lambda name: st.sampled_from([name, name.upper(), RESPONSE_HEADER_NAMES[RESPONSE_HEADER_CODES[name]]]))
_values = st.binary(max_size=40).filter(lambda v: not any(c in v for c in b"\r\n\x00"))

send_headers = st.builds(
    SendHeaders,
    status=st.integers(100, 999),
    reason=_values,
    headers=st.lists(st.tuples(st.one_of(_known_response_names, _token), _values),
                     max_size=10).map(tuple),
)
response_messages = st.one_of(
    send_headers,
    st.builds(SendBodyChunk, st.binary(max_size=100)),
    st.builds(EndResponse, st.booleans()),
    st.builds(GetBodyChunk, st.integers(1, 0xFFFF)),
    st.just(CPong()),
)


def _encode_response(message) -> bytes:
    if isinstance(message, SendHeaders):
        return encode_send_headers(message.status, message.reason, message.headers)
    if isinstance(message, SendBodyChunk):
        return encode_send_body_chunk(message.data)
    if isinstance(message, EndResponse):
        return encode_end_response(message.reuse)
    if isinstance(message, GetBodyChunk):
        return encode_get_body_chunk(message.requested_length)
    return CPONG_PACKET


def _canonical(message):
    if isinstance(message, SendHeaders):
        return SendHeaders(message.status, message.reason, tuple(
            (RESPONSE_HEADER_NAMES[RESPONSE_HEADER_CODES[n.lower()]]
             if n.lower() in RESPONSE_HEADER_CODES else n, v)
            for n, v in message.headers))
    return message


@given(st.lists(response_messages, max_size=8))
def test_response_round_trip(messages):
    """
    Any sequence of container messages parses back, in one feed.
    """
    stream = b"".join(map(_encode_response, messages))
    assert ResponseParser().feed(stream) == [_canonical(m) for m in messages]


@given(st.lists(response_messages, min_size=1, max_size=6), st.data())
def test_response_random_chunking(messages, data):
    """
    Feeding the stream in arbitrary pieces gives the same messages.
    """
    stream = b"".join(map(_encode_response, messages))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    parser = ResponseParser()
    out = []
    previous = 0
    for cut in cuts + [len(stream)]:
        out += parser.feed(stream[previous:cut])
        previous = cut
    assert out == [_canonical(m) for m in messages]
    assert parser.buffered == 0


def test_response_every_split_point():
    """
    A realistic response stream parses identically when split in two at every
    byte, and when split in three at many pairs of points.
    """
    stream = (EXAMPLE_SEND_HEADERS + encode_get_body_chunk(8186) + encode_send_body_chunk(b"hello")
              + encode_send_body_chunk(b"") + encode_send_body_chunk(b"x" * 300)
              + encode_end_response(True))
    expected = ResponseParser().feed(stream)
    assert len(expected) == 6
    for i in range(len(stream) + 1):
        parser = ResponseParser()
        assert parser.feed(stream[:i]) + parser.feed(stream[i:]) == expected
    for i in range(0, len(stream) + 1, 7):
        for j in range(i, len(stream) + 1, 5):
            parser = ResponseParser()
            assert (parser.feed(stream[:i]) + parser.feed(stream[i:j])
                    + parser.feed(stream[j:])) == expected
    parser = ResponseParser()
    out = []
    for byte in range(len(stream)):
        out += parser.feed(stream[byte:byte + 1])
    assert out == expected


def test_large_packet_byte_by_byte():
    """
    A maximum-size packet fed one byte at a time is parsed once, whole; the
    parser holds only the incomplete bytes in between.
    """
    packet = encode_send_body_chunk(b"z" * 65528, 65536)
    assert len(packet) == 65536
    parser = ResponseParser(65536)
    for i in range(len(packet) - 1):
        assert parser.feed(packet[i:i + 1]) == []
    assert parser.buffered == len(packet) - 1
    assert parser.feed(packet[-1:]) == [SendBodyChunk(b"z" * 65528)]
    assert parser.buffered == 0


def test_body_chunk_is_bytes_slice():
    """
    Body data is delivered as bytes (what transports accept), also from a
    bytearray or memoryview input.
    """
    chunk = encode_send_body_chunk(b"abc")
    for wrapped in (chunk, bytearray(chunk), memoryview(chunk)):
        [message] = ResponseParser().feed(wrapped)
        assert type(message.data) is bytes and message.data == b"abc"


# --- malformed input -> typed errors --------------------------------------------------


def _packet(payload: bytes, magic: bytes = b"AB") -> bytes:
    return magic + len(payload).to_bytes(2, "big") + payload


def _string(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value + b"\x00"


MALFORMED = [
    ("bad magic", b"\x12\x34\x00\x01\x09", BadMagic),
    ("garbage magic", b"HTTP/1.1 200 OK\r\n", BadMagic),
    ("too large", b"AB\x20\x00" + b"\x03", PacketTooLarge),
    ("max length", b"AB\xff\xff", PacketTooLarge),
    ("empty packet", b"AB\x00\x00", MalformedPacket),
    ("unknown type 0", _packet(b"\x00"), UnknownMessageType),
    ("forward request from container", _packet(b"\x02\x02"), UnknownMessageType),
    ("shutdown", _packet(b"\x07"), UnknownMessageType),
    ("cping from container", _packet(b"\x0a"), UnknownMessageType),
    ("type 0xff", _packet(b"\xff"), UnknownMessageType),
    ("body chunk too short", _packet(b"\x03\x00\x00"), MalformedPacket),
    ("body chunk length too long", _packet(b"\x03\x00\x06hello\x00"), MalformedPacket),
    ("body chunk length too short", _packet(b"\x03\x00\x04hello\x00"), MalformedPacket),
    ("body chunk without trailing byte", _packet(b"\x03\x00\x05hello"), MalformedPacket),
    ("end response short", _packet(b"\x05"), MalformedPacket),
    ("end response long", _packet(b"\x05\x01\x00"), MalformedPacket),
    ("end response bad flag", _packet(b"\x05\x02"), MalformedPacket),
    ("get body chunk short", _packet(b"\x06\x1f"), MalformedPacket),
    ("get body chunk long", _packet(b"\x06\x1f\xfa\x00"), MalformedPacket),
    ("get body chunk zero", _packet(b"\x06\x00\x00"), MalformedPacket),
    ("cpong long", _packet(b"\x09\x00"), MalformedPacket),
    ("headers: no status", _packet(b"\x04\x00"), MalformedPacket),
    ("headers: status 0", _packet(b"\x04\x00\x00" + _string(b"0") + b"\x00\x00"), MalformedPacket),
    ("headers: status 1000", _packet(b"\x04\x03\xe8" + _string(b"x") + b"\x00\x00"), MalformedPacket),
    ("headers: reason overruns", _packet(b"\x04\x00\xc8\x00\x10200\x00\x00\x00"), MalformedPacket),
    ("headers: reason not terminated", _packet(b"\x04\x00\xc8\x00\x03200X\x00\x00"), MalformedPacket),
    ("headers: reason with CRLF", _packet(b"\x04\x00\xc8" + _string(b"OK\r\nX: y") + b"\x00\x00"),
     MalformedPacket),
    ("headers: count truncated", _packet(b"\x04\x00\xc8" + _string(b"200") + b"\x00"), MalformedPacket),
    ("headers: count overruns", _packet(b"\x04\x00\xc8" + _string(b"200") + b"\x00\x02"
                                        + b"\xa0\x01" + _string(b"text/plain")), MalformedPacket),
    ("headers: unknown code", _packet(b"\x04\x00\xc8" + _string(b"200") + b"\x00\x01"
                                      + b"\xa0\x0c" + _string(b"v")), UnknownHeaderCode),
    ("headers: code 0xA000", _packet(b"\x04\x00\xc8" + _string(b"200") + b"\x00\x01"
                                     + b"\xa0\x00" + _string(b"v")), UnknownHeaderCode),
    ("headers: null name", _packet(b"\x04\x00\xc8" + _string(b"200") + b"\x00\x01"
                                   + b"\xff\xff" + _string(b"v")), MalformedPacket),
    ("headers: null value", _packet(b"\x04\x00\xc8" + _string(b"200") + b"\x00\x01"
                                    + _string(b"X-A") + b"\xff\xff"), MalformedPacket),
    ("headers: empty name", _packet(b"\x04\x00\xc8" + _string(b"200") + b"\x00\x01"
                                    + _string(b"") + _string(b"v")), MalformedPacket),
    ("headers: name with space", _packet(b"\x04\x00\xc8" + _string(b"200") + b"\x00\x01"
                                         + _string(b"Bad Name") + _string(b"v")), MalformedPacket),
    ("headers: value with LF", _packet(b"\x04\x00\xc8" + _string(b"200") + b"\x00\x01"
                                       + _string(b"X-A") + _string(b"a\nb")), MalformedPacket),
    ("headers: value with NUL", _packet(b"\x04\x00\xc8" + _string(b"200") + b"\x00\x01"
                                        + _string(b"X-A") + _string(b"a\x00b")), MalformedPacket),
    ("headers: value truncated", _packet(b"\x04\x00\xc8" + _string(b"200") + b"\x00\x01"
                                         + _string(b"X-A") + b"\x00\x05ab"), MalformedPacket),
    ("headers: trailing bytes", _packet(b"\x04\x00\xc8" + _string(b"200") + b"\x00\x00\x00"),
     MalformedPacket),
]


@pytest.mark.parametrize("name, data, error", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_response(name, data, error):
    """
    Every class of malformed container input raises its typed error, whole or
    byte by byte, and kills the parser.
    """
    parser = ResponseParser()
    with pytest.raises(error) as info:
        parser.feed(data)
    assert isinstance(info.value, AJPProtocolError)
    assert str(info.value)
    with pytest.raises(AJPProtocolError):
        parser.feed(CPONG_PACKET)

    parser = ResponseParser()
    with pytest.raises(error):
        for i in range(len(data)):
            parser.feed(data[i:i + 1])


def test_null_reason_is_empty():
    """
    A null status message (httpd tolerates it) reads as an empty reason.
    """
    data = _packet(b"\x04\x01\x30\xff\xff\x00\x00")
    assert ResponseParser().feed(data) == [SendHeaders(304, b"", ())]


def test_error_keeps_earlier_messages():
    """
    Messages decoded before the error in the same feed are on the exception.
    """
    stream = EXAMPLE_SEND_HEADERS + encode_send_body_chunk(b"hi") + b"XX\x00\x01\x09"
    with pytest.raises(BadMagic) as info:
        ResponseParser().feed(stream)
    assert info.value.messages == (ResponseParser().feed(EXAMPLE_SEND_HEADERS)[0],
                                   SendBodyChunk(b"hi"))


def test_packet_size_configurable():
    """
    A 64 KiB parser accepts packets an 8 KiB one refuses.
    """
    packet = encode_send_body_chunk(b"q" * 10000, 65536)
    with pytest.raises(PacketTooLarge):
        ResponseParser().feed(packet)
    assert ResponseParser(65536).feed(packet) == [SendBodyChunk(b"q" * 10000)]


@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_protocol_errors(data):
    """
    Arbitrary input gives messages or an AJPProtocolError, nothing else.
    """
    try:
        ResponseParser().feed(data)
    except AJPProtocolError:
        pass


@given(st.lists(response_messages, min_size=1, max_size=4), st.data())
def test_mutated_streams_only_protocol_errors(messages, data):
    """
    Valid streams with bytes flipped, inserted or removed never raise anything
    but AJPProtocolError, and whole vs. byte-wise feeding agree.
    """
    stream = bytearray(b"".join(map(_encode_response, messages)))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(stream)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "insert" or position == len(stream):
            stream[position:position] = bytes([data.draw(st.integers(0, 255))])
        elif action == "flip":
            stream[position] = data.draw(st.integers(0, 255))
        else:
            del stream[position]
    stream = bytes(stream)

    def run(pieces):
        parser = ResponseParser()
        out = []
        try:
            for piece in pieces:
                out += parser.feed(piece)
        except AJPProtocolError as e:
            return out + list(e.messages), type(e)
        return out, None

    whole = run([stream])
    bytewise = run([stream[i:i + 1] for i in range(len(stream))])
    assert whole == bytewise


# --- server -> container decoding (fake containers) -----------------------------------


def test_request_parser_errors():
    """
    The container-side parser checks magic, size, empty packets and types.
    """
    cases = [
        (b"AB\x00\x01\x09", BadMagic),
        (b"\x12\x34\x20\x00", PacketTooLarge),
        (b"\x12\x34\x00\x00", MalformedPacket),
        (_packet(b"\x07", b"\x12\x34"), UnknownMessageType),
        (_packet(b"\x0a\x00", b"\x12\x34"), MalformedPacket),
        (_packet(b"\x02\x63", b"\x12\x34"), MalformedPacket),
        (EXAMPLE_FORWARD[:-1].replace(b"\x12\x34\x00\xf2", b"\x12\x34\x00\xf1"), MalformedPacket),
    ]
    for data, error in cases:
        with pytest.raises(error):
            RequestParser().feed(data)
    parser = RequestParser()
    parser.expect_body_chunk()
    with pytest.raises(MalformedPacket):
        parser.feed(b"\x12\x34\x00\x03\x00\x05a")


def test_request_parser_body_packets():
    """
    With a positive Content-Length the next packet is a body packet; the
    4-byte and 6-byte empty packets both end the body.
    """
    request = _request(method=b"POST", headers=((b"Content-Length", b"3"),))
    parser = RequestParser()
    out = parser.feed(encode_forward_request(request) + encode_body_chunk(b"abc"))
    assert out == [_normalised(request), RequestBodyChunk(b"abc")]
    parser.expect_body_chunk()
    assert parser.feed(b"\x12\x34\x00\x00") == [RequestBodyChunk(b"")]
    parser.expect_body_chunk()
    assert parser.feed(EMPTY_BODY_PACKET) == [RequestBodyChunk(b"")]
    assert parser.feed(CPING_PACKET) == [CPing()]


@given(st.binary(max_size=200))
def test_request_parser_arbitrary_bytes(data):
    """
    The container-side parser also raises only AJPProtocolError.
    """
    try:
        RequestParser().feed(data)
    except AJPProtocolError:
        pass
    try:
        decode_forward_request(data)
    except AJPProtocolError:
        pass
