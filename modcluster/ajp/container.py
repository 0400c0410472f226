"""
The container's side of the AJP13 codec, for the tests, the fuzz targets and
the fake container (L{modcluster.ajp.testing}); the proxy does not use it at
run time: encoding what a container sends (L{encode_send_headers},
L{encode_send_body_chunk}, L{encode_end_response}, L{encode_get_body_chunk})
and decoding what the server sends (L{decode_forward_request},
L{RequestParser}).  Pure like L{modcluster.ajp.packets}.
"""

from __future__ import annotations

import struct
from typing import Iterable, Optional

from modcluster.ajp.packets import (
    AJPProtocolError,
    BadMagic,
    CPING,
    DEFAULT_PACKET_SIZE,
    FORWARD_REQUEST,
    ForwardRequest,
    METHOD_NAMES,
    MalformedPacket,
    PacketTooLarge,
    REQUEST_HEADER_NAMES,
    RESPONSE_HEADER_CODES,
    RequestBodyChunk,
    RequestTooLarge,
    SEND_HEADERS,
    STORED_METHOD,
    UnknownHeaderCode,
    UnknownMessageType,
    _A_ARE_DONE,
    _A_AUTH_TYPE,
    _A_CONTEXT,
    _A_JVM_ROUTE,
    _A_QUERY_STRING,
    _A_REMOTE_USER,
    _A_REQ_ATTRIBUTE,
    _A_SECRET,
    _A_SERVLET_PATH,
    _A_SSL_CERT,
    _A_SSL_CIPHER,
    _A_SSL_KEY_SIZE,
    _A_SSL_SESSION,
    _A_STORED_METHOD,
    _CPING,
    _NUL,
    _SERVER_MAGIC,
    _pack_H,
    _read_int,
    _read_string,
    _string_piece,
    _type_name,
    _unpack_HH,
    check_packet_size,
)

__all__ = [
    "encode_send_headers",
    "encode_send_body_chunk",
    "encode_end_response",
    "encode_get_body_chunk",
    "decode_forward_request",
    "RequestParser",
]


# --- encoding: container -> server ---------------------------------------------


def _finish_container_packet(parts: list, max_packet_size: int) -> bytes:
    payload = b"".join(parts)
    size = len(payload) + 4
    if size > max_packet_size:
        raise RequestTooLarge(size, max_packet_size)
    return b"AB" + _pack_H(len(payload)) + payload


def encode_send_headers(
    status: int,
    reason: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
    max_packet_size: int = DEFAULT_PACKET_SIZE,
    use_codes: bool = True,
) -> bytes:
    """
    Encode SEND_HEADERS as a container does (known names as C{0xA0nn} codes
    when C{use_codes}, matched case-insensitively).

    @raise RequestTooLarge: the packet would exceed C{max_packet_size}.
    """
    headers = list(headers)
    try:
        parts = [bytes((SEND_HEADERS,)), _pack_H(status), _string_piece(reason),
                 _pack_H(len(headers))]
        for name, value in headers:
            code = RESPONSE_HEADER_CODES.get(name.lower()) if use_codes else None
            parts.append(_pack_H(code) if code is not None else _string_piece(name))
            parts.append(_string_piece(value))
    except struct.error:
        raise RequestTooLarge(0x10000, max_packet_size) from None
    return _finish_container_packet(parts, max_packet_size)


def encode_send_body_chunk(data: bytes, max_packet_size: int = DEFAULT_PACKET_SIZE) -> bytes:
    """
    Encode SEND_BODY_CHUNK with Tomcat's trailing C{00}; empty C{data} is
    Tomcat's flush packet.

    @raise RequestTooLarge: more than C{max_packet_size - 8} bytes.
    """
    n = len(data)
    if n + 8 > max_packet_size:
        raise RequestTooLarge(n + 8, max_packet_size)
    return b"AB" + _pack_H(n + 4) + b"\x03" + _pack_H(n) + data + _NUL


def encode_end_response(reuse: bool) -> bytes:
    """
    Encode END_RESPONSE: C{41 42 00 02 05 <reuse>}.
    """
    return b"AB\x00\x02\x05\x01" if reuse else b"AB\x00\x02\x05\x00"


def encode_get_body_chunk(requested_length: int) -> bytes:
    """
    Encode GET_BODY_CHUNK: C{41 42 00 03 06 <requested_length>}.
    """
    return b"AB\x00\x03\x06" + _pack_H(requested_length)


# --- decoding: server -> container (tests, fake containers) ---------------------------


def _decode_attribute_string(data, pos, end, what):
    value, pos = _read_string(data, pos, end, what, nullable=True)
    return (b"" if value is None else value), pos


def decode_forward_request(payload: bytes) -> ForwardRequest:
    """
    Decode the payload (after magic and length) of a FORWARD_REQUEST.

    Coded header names come back in Tomcat's lower-case spelling; null strings
    become C{b""}; C{context} and C{servlet_path} attributes are skipped (as
    Tomcat does).

    @raise AJPProtocolError: (a subclass) on malformed input.
    """
    end = len(payload)
    if end < 2 or payload[0] != FORWARD_REQUEST:
        raise UnknownMessageType("not a FORWARD_REQUEST")
    code = payload[1]
    if code != STORED_METHOD and code not in METHOD_NAMES:
        raise MalformedPacket(f"FORWARD_REQUEST: unknown method code {code}")
    pos = 2
    fields = []
    for what in ("protocol", "req_uri", "remote_addr", "remote_host", "server_name"):
        value, pos = _decode_attribute_string(payload, pos, end, what)
        fields.append(value)
    port = _read_int(payload, pos, end, "server_port")
    pos += 2
    if pos >= end:
        raise MalformedPacket("is_ssl truncated")
    is_ssl = payload[pos] != 0
    count = _read_int(payload, pos + 1, end, "num_headers")
    pos += 3
    headers = []
    for _ in range(count):
        if pos + 2 > end:
            raise MalformedPacket("header list truncated")
        if payload[pos] == 0xA0:
            hcode = (0xA0 << 8) | payload[pos + 1]
            name = REQUEST_HEADER_NAMES.get(hcode)
            if name is None:
                raise UnknownHeaderCode(f"unknown request header code 0x{hcode:04X}")
            pos += 2
        else:
            name, pos = _read_string(payload, pos, end, "header name")
        value, pos = _decode_attribute_string(payload, pos, end, "header value")
        headers.append((name, value))
    opt: dict = {}
    attributes = []
    stored = None
    simple = {
        _A_REMOTE_USER: "remote_user", _A_AUTH_TYPE: "auth_type",
        _A_QUERY_STRING: "query_string", _A_JVM_ROUTE: "jvm_route",
        _A_SSL_CERT: "ssl_cert", _A_SSL_CIPHER: "ssl_cipher",
        _A_SSL_SESSION: "ssl_session", _A_SECRET: "secret",
    }
    while True:
        if pos >= end:
            raise MalformedPacket("attribute list not terminated by 0xFF")
        acode = payload[pos]
        pos += 1
        if acode == _A_ARE_DONE:
            break
        if acode in simple:
            opt[simple[acode]], pos = _decode_attribute_string(
                payload, pos, end, simple[acode])
        elif acode in (_A_CONTEXT, _A_SERVLET_PATH):
            _, pos = _decode_attribute_string(payload, pos, end, "context")
        elif acode == _A_STORED_METHOD:
            stored, pos = _decode_attribute_string(payload, pos, end, "stored_method")
        elif acode == _A_SSL_KEY_SIZE:
            opt["ssl_key_size"] = _read_int(payload, pos, end, "ssl_key_size")
            pos += 2
        elif acode == _A_REQ_ATTRIBUTE:
            name, pos = _decode_attribute_string(payload, pos, end, "req_attribute name")
            value, pos = _decode_attribute_string(payload, pos, end, "req_attribute value")
            attributes.append((name, value))
        else:
            raise MalformedPacket(f"unknown request attribute code 0x{acode:02X}")
    if pos != end:
        raise MalformedPacket(f"{end - pos} unexpected bytes after the attribute list")
    if code == STORED_METHOD:
        if not stored:
            raise MalformedPacket("method code 0xFF without a stored_method attribute")
        method = stored
    else:
        method = METHOD_NAMES[code]
    return ForwardRequest(
        method, fields[0], fields[1], fields[2], fields[3], fields[4], port, is_ssl,
        tuple(headers), attributes=tuple(attributes), **opt,
    )


def _content_length(request: ForwardRequest) -> Optional[int]:
    for name, value in request.headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                raise MalformedPacket(f"bad Content-Length {value[:32]!r}") from None
    return None


class RequestParser:
    """
    Incremental parser of server -> container packets, for fake containers.

    Request body packets carry no type byte, so, like Tomcat, the parser must
    know when one is due: one is expected right after a FORWARD_REQUEST whose
    C{Content-Length} is positive, and one after each
    L{expect_body_chunk} call (make it when sending GET_BODY_CHUNK).  Other
    packets are decoded as L{ForwardRequest} or L{CPing}.
    """

    def __init__(self, max_packet_size: int = DEFAULT_PACKET_SIZE) -> None:
        self.max_packet_size = check_packet_size(max_packet_size)
        self._buf = bytearray()
        self._body_due = 0
        self._dead: Optional[AJPProtocolError] = None

    def expect_body_chunk(self) -> None:
        """
        The next packet is a request body packet (a GET_BODY_CHUNK was sent).
        """
        self._body_due += 1

    def feed(self, data: bytes) -> list:
        """
        Parse C{data}; return the completed messages.

        @raise AJPProtocolError: on malformed input (with C{messages}).
        """
        if self._dead is not None:
            raise AJPProtocolError(f"parser stopped after an earlier error: {self._dead}")
        buf = self._buf
        buf += data
        out: list = []
        pos = 0
        end = len(buf)
        limit = self.max_packet_size
        try:
            while end - pos >= 4:
                magic, length = _unpack_HH(buf, pos)
                if magic != _SERVER_MAGIC:
                    raise BadMagic(f"bad packet magic 0x{magic:04X} from server")
                if length + 4 > limit:
                    raise PacketTooLarge(
                        f"server packet of {length + 4} bytes exceeds {limit}")
                if end - pos < length + 4:
                    break
                payload = bytes(buf[pos + 4:pos + 4 + length])
                pos += 4 + length
                if self._body_due:
                    self._body_due -= 1
                    if length == 0:
                        out.append(RequestBodyChunk(b""))
                        continue
                    if length < 2:
                        raise MalformedPacket("body packet too short")
                    n = (payload[0] << 8) | payload[1]
                    if n != length - 2:
                        raise MalformedPacket(
                            f"body chunk length {n} does not match packet length {length}")
                    out.append(RequestBodyChunk(payload[2:]))
                    continue
                if length == 0:
                    raise MalformedPacket("empty packet where a request was expected")
                kind = payload[0]
                if kind == CPING:
                    if length != 1:
                        raise MalformedPacket("CPING payload must be 1 byte")
                    out.append(_CPING)
                elif kind == FORWARD_REQUEST:
                    request = decode_forward_request(payload)
                    out.append(request)
                    cl = _content_length(request)
                    if cl is not None and cl > 0:
                        self._body_due += 1
                else:
                    raise UnknownMessageType(
                        f"unexpected message type {kind} ({_type_name(kind)}) from server")
        except AJPProtocolError as e:
            e.messages = tuple(out)
            self._dead = e
            raise
        del buf[:pos]
        return out
