"""
AJP13 wire codec: bytes in, frozen attrs values out, and back.  No I/O, no clock,
no mutable module state.

Both directions are here, because a codec is naturally bidirectional and the
tests (and the fake container in L{modcluster.ajp.testing}) need the other side:

 - server (proxy) -> container: L{encode_forward_request} /
   L{ForwardRequestEncoder}, L{encode_body_chunk}, L{EMPTY_BODY_PACKET},
   L{CPING_PACKET}; decoded by L{RequestParser}.
 - container -> server: L{ResponseParser} (incremental, strict); encoded by
   L{encode_send_headers}, L{encode_send_body_chunk}, L{encode_end_response},
   L{encode_get_body_chunk}, L{CPONG_PACKET}.

Every malformed input raises a subclass of L{AJPProtocolError}; a request that
does not fit the packet size raises L{RequestTooLarge}.  See C{docs/ajp.md} and
C{shared/reference/ajp13.md} for the wire format.
"""

from __future__ import annotations

import re
import struct
from types import MappingProxyType
from typing import Iterable, Mapping, Optional, Sequence, Union

from attrs import frozen

__all__ = [
    "AJPError",
    "AJPProtocolError",
    "BadMagic",
    "PacketTooLarge",
    "MalformedPacket",
    "UnknownMessageType",
    "UnknownHeaderCode",
    "UnexpectedMessage",
    "AJPEncodeError",
    "RequestTooLarge",
    "DEFAULT_PACKET_SIZE",
    "MIN_PACKET_SIZE",
    "MAX_PACKET_SIZE",
    "check_packet_size",
    "max_request_chunk",
    "max_response_chunk",
    "FORWARD_REQUEST",
    "SEND_BODY_CHUNK",
    "SEND_HEADERS",
    "END_RESPONSE",
    "GET_BODY_CHUNK",
    "SHUTDOWN",
    "PING",
    "CPONG",
    "CPING",
    "STORED_METHOD",
    "METHOD_CODES",
    "METHOD_NAMES",
    "REQUEST_HEADER_CODES",
    "REQUEST_HEADER_NAMES",
    "RESPONSE_HEADER_CODES",
    "RESPONSE_HEADER_NAMES",
    "CPING_PACKET",
    "CPONG_PACKET",
    "EMPTY_BODY_PACKET",
    "ForwardRequest",
    "RequestBodyChunk",
    "CPing",
    "SendHeaders",
    "SendBodyChunk",
    "EndResponse",
    "GetBodyChunk",
    "CPong",
    "ResponseMessage",
    "RequestMessage",
    "ForwardRequestEncoder",
    "encode_forward_request",
    "encode_body_chunk",
    "body_chunk_header",
    "encode_send_headers",
    "encode_send_body_chunk",
    "encode_end_response",
    "encode_get_body_chunk",
    "decode_forward_request",
    "ResponseParser",
    "RequestParser",
    "message_from_tuple",
]


# --- errors ------------------------------------------------------------------


class AJPError(Exception):
    """
    Base class of every AJP error raised by this package.
    """


class AJPProtocolError(AJPError):
    """
    The peer broke the AJP13 protocol; the connection must be dropped.

    @ivar messages: the messages that a parser had decoded from the same
        C{feed()} call before it met the error (a tuple, possibly empty), so a
        caller can still act on them before dropping the connection.
    """

    messages: tuple = ()


class BadMagic(AJPProtocolError):
    """
    A packet did not start with the expected magic (C{AB} from a container,
    C{0x1234} from a server).
    """


class PacketTooLarge(AJPProtocolError):
    """
    A packet announced a length above the configured maximum packet size.
    """


class MalformedPacket(AJPProtocolError):
    """
    A packet's payload is inconsistent: a field overruns the packet, a string
    is truncated or not NUL-terminated, a chunk length disagrees with the
    packet length, a value is out of range, or bytes are left over.
    """


class UnknownMessageType(AJPProtocolError):
    """
    A packet carried a message type that is not valid in this direction.
    """


class UnknownHeaderCode(AJPProtocolError):
    """
    A header name was encoded as an C{0xA0nn} code that does not exist.
    """


class UnexpectedMessage(AJPProtocolError):
    """
    A well-formed message arrived when the connection's state does not allow
    it (e.g. a second SEND_HEADERS, data while idle).  Raised by the protocol,
    not by the parsers.
    """


class AJPEncodeError(AJPError, ValueError):
    """
    A value cannot be encoded (field out of range, or too large).
    """


class RequestTooLarge(AJPEncodeError):
    """
    The encoded packet would exceed the maximum packet size.  mod_proxy_ajp
    answers 400 in this case (AJP_EOVERFLOW).

    @ivar size: the size the packet would have had (or a lower bound).
    @ivar limit: the maximum packet size in force.
    """

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"AJP packet of at least {size} bytes exceeds the maximum packet size {limit}"
        )


# --- sizes and codes -----------------------------------------------------------

DEFAULT_PACKET_SIZE = 8192
MIN_PACKET_SIZE = 8192
MAX_PACKET_SIZE = 65536

_SERVER_MAGIC = 0x1234
_CONTAINER_MAGIC = 0x4142


def check_packet_size(size: int) -> int:
    """
    Validate a configured packet size (Tomcat's C{packetSize}).

    @return: C{size}
    @raise ValueError: outside 8192..65536.
    """
    if not isinstance(size, int) or not MIN_PACKET_SIZE <= size <= MAX_PACKET_SIZE:
        raise ValueError(
            f"AJP packet size must be an integer in {MIN_PACKET_SIZE}..{MAX_PACKET_SIZE}, "
            f"not {size!r}"
        )
    return size


def max_request_chunk(packet_size: int) -> int:
    """
    Largest request body chunk (server -> container) in one packet:
    C{packet_size - 6} (8186 by default).
    """
    return packet_size - 6


def max_response_chunk(packet_size: int) -> int:
    """
    Largest response body chunk (container -> server) in one packet:
    C{packet_size - 8} (8184 by default).
    """
    return packet_size - 8


FORWARD_REQUEST = 2
SEND_BODY_CHUNK = 3
SEND_HEADERS = 4
END_RESPONSE = 5
GET_BODY_CHUNK = 6
SHUTDOWN = 7
PING = 8
CPONG = 9
CPING = 10

STORED_METHOD = 0xFF

_METHODS = (
    b"OPTIONS", b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"TRACE",
    b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK",
    b"ACL", b"REPORT", b"VERSION-CONTROL", b"CHECKIN", b"CHECKOUT",
    b"UNCHECKOUT", b"SEARCH", b"MKWORKSPACE", b"UPDATE", b"LABEL", b"MERGE",
    b"BASELINE-CONTROL", b"MKACTIVITY",
)

#: HTTP method name -> AJP method code (case-sensitive, as HTTP methods are).
METHOD_CODES: Mapping[bytes, int] = MappingProxyType(
    {name: code for code, name in enumerate(_METHODS, 1)}
)
#: AJP method code -> HTTP method name.
METHOD_NAMES: Mapping[int, bytes] = MappingProxyType(
    {code: name for name, code in METHOD_CODES.items()}
)

_REQUEST_HEADERS = (
    b"accept", b"accept-charset", b"accept-encoding", b"accept-language",
    b"authorization", b"connection", b"content-type", b"content-length",
    b"cookie", b"cookie2", b"host", b"pragma", b"referer", b"user-agent",
)
#: lower-case request header name -> C{0xA0nn} code.
REQUEST_HEADER_CODES: Mapping[bytes, int] = MappingProxyType(
    {name: 0xA000 + i for i, name in enumerate(_REQUEST_HEADERS, 1)}
)
#: request header code -> lower-case name (as Tomcat reports it).
REQUEST_HEADER_NAMES: Mapping[int, bytes] = MappingProxyType(
    {code: name for name, code in REQUEST_HEADER_CODES.items()}
)

_RESPONSE_HEADERS = (
    b"Content-Type", b"Content-Language", b"Content-Length", b"Date",
    b"Last-Modified", b"Location", b"Set-Cookie", b"Set-Cookie2",
    b"Servlet-Engine", b"Status", b"WWW-Authenticate",
)
#: response header code -> canonical name.
RESPONSE_HEADER_NAMES: Mapping[int, bytes] = MappingProxyType(
    {0xA000 + i: name for i, name in enumerate(_RESPONSE_HEADERS, 1)}
)
#: lower-case response header name -> code.
RESPONSE_HEADER_CODES: Mapping[bytes, int] = MappingProxyType(
    {name.lower(): code for code, name in RESPONSE_HEADER_NAMES.items()}
)

# request attribute codes
_A_CONTEXT = 0x01
_A_SERVLET_PATH = 0x02
_A_REMOTE_USER = 0x03
_A_AUTH_TYPE = 0x04
_A_QUERY_STRING = 0x05
_A_JVM_ROUTE = 0x06
_A_SSL_CERT = 0x07
_A_SSL_CIPHER = 0x08
_A_SSL_SESSION = 0x09
_A_REQ_ATTRIBUTE = 0x0A
_A_SSL_KEY_SIZE = 0x0B
_A_SECRET = 0x0C
_A_STORED_METHOD = 0x0D
_A_ARE_DONE = 0xFF

#: C{12 34 00 01 0A}
CPING_PACKET = b"\x12\x34\x00\x01\x0a"
#: C{41 42 00 01 09}
CPONG_PACKET = b"AB\x00\x01\x09"
#: end of request body, as httpd sends it: C{12 34 00 02 00 00}
EMPTY_BODY_PACKET = b"\x12\x34\x00\x02\x00\x00"

_H = struct.Struct(">H")
_pack_H = _H.pack
_unpack_H = _H.unpack_from
_HH = struct.Struct(">HH")
_unpack_HH = _HH.unpack_from
_BODY_HEADER = struct.Struct(">HHH")  # magic, length, chunk length
_pack_body_header = _BODY_HEADER.pack
_pack_xH = struct.Struct(">xH").pack  # a NUL (end of the previous string), a length
_pack_xHBH = struct.Struct(">xHBH").pack  # NUL, server_port, is_ssl, num_headers
_NUL = b"\x00"

# header names Tomcat could never send and that an HTTP/1.1 front must not emit
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")


# --- values ------------------------------------------------------------------


@frozen
class ForwardRequest:
    """
    One AJP FORWARD_REQUEST (server -> container).

    String fields are bytes, sent as-is.  Optional attributes are sent only
    when not C{None}.  C{headers} and C{attributes} keep order and repeats.

    @ivar method: HTTP method; methods without an AJP code are sent as code
        0xFF plus the C{stored_method} attribute (as Tomcat requires).
    @ivar headers: all client request headers, C{(name, value)} pairs.
    @ivar attributes: generic request attributes (code 0x0A), C{(name, value)}
        pairs in order, e.g. C{(b"AJP_REMOTE_PORT", b"54321")},
        C{(b"AJP_LOCAL_ADDR", b"10.0.0.1")}, C{(b"AJP_SSL_PROTOCOL", b"TLSv1.3")}.
        Tomcat answers 403 to names outside its built-in list unless
        C{allowedRequestAttributesPattern} allows them.
    @ivar jvm_route: the session route found by the balancer (attribute 0x06).
    @ivar secret: the AJP secret (attribute 0x0C, sent first).
    """

    method: bytes
    protocol: bytes
    req_uri: bytes
    remote_addr: bytes
    remote_host: bytes
    server_name: bytes
    server_port: int
    is_ssl: bool = False
    headers: Sequence[tuple[bytes, bytes]] = ()
    secret: Optional[bytes] = None
    remote_user: Optional[bytes] = None
    auth_type: Optional[bytes] = None
    query_string: Optional[bytes] = None
    jvm_route: Optional[bytes] = None
    ssl_cert: Optional[bytes] = None
    ssl_cipher: Optional[bytes] = None
    ssl_session: Optional[bytes] = None
    ssl_key_size: Optional[int] = None
    attributes: Sequence[tuple[bytes, bytes]] = ()


@frozen
class RequestBodyChunk:
    """
    A request body packet (server -> container); empty C{data} = end of body.
    """

    data: bytes


@frozen
class CPing:
    """
    CPING (server -> container).
    """


@frozen
class SendHeaders:
    """
    SEND_HEADERS (container -> server).

    @ivar status: HTTP status code (100..999).
    @ivar reason: status message as sent (Tomcat sends the code as text).
    @ivar headers: C{(name, value)} pairs in order; coded names are mapped
        back to their canonical spelling (C{b"Content-Type"}, ...).
    """

    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


@frozen
class SendBodyChunk:
    """
    SEND_BODY_CHUNK (container -> server).  Empty C{data} is a flush request.
    """

    data: bytes


@frozen
class EndResponse:
    """
    END_RESPONSE (container -> server); C{reuse} says whether the container
    keeps the connection open for another request.
    """

    reuse: bool


@frozen
class GetBodyChunk:
    """
    GET_BODY_CHUNK (container -> server): send at most C{requested_length}
    more request body bytes in one packet.
    """

    requested_length: int


@frozen
class CPong:
    """
    CPONG (container -> server).
    """


ResponseMessage = Union[SendHeaders, SendBodyChunk, EndResponse, GetBodyChunk, CPong]
RequestMessage = Union[ForwardRequest, RequestBodyChunk, CPing]

_CPONG = CPong()
_END_REUSE = EndResponse(True)
_END_CLOSE = EndResponse(False)
_CPING = CPing()


# --- encoding: server -> container ------------------------------------------------


def _string_piece(value: bytes) -> bytes:
    return _pack_H(len(value)) + value + _NUL


def _request_header_name_piece(name: bytes) -> bytes:
    code = REQUEST_HEADER_CODES.get(name.lower())
    if code is not None:
        return _pack_H(code)
    return _string_piece(name)


def _seed_name_cache() -> dict[bytes, bytes]:
    seed: dict[bytes, bytes] = {}
    for name in _REQUEST_HEADERS:
        title = b"-".join(part.capitalize() for part in name.split(b"-"))
        for spelling in (name, title, name.upper()):
            seed[spelling] = _request_header_name_piece(spelling)
    seed[b"WWW-Authenticate"] = _request_header_name_piece(b"WWW-Authenticate")
    return seed


_NAME_SEED: Mapping[bytes, bytes] = MappingProxyType(_seed_name_cache())

#: FORWARD_REQUEST and the method code (indexed by the code)
_FORWARD_TYPE = tuple(bytes((FORWARD_REQUEST, i)) for i in range(256))
_pack_server_head = struct.Struct(">HH").pack  # magic 0x1234, payload length
# private plain-dict copies for the hot path (a mappingproxy lookup costs more);
# never modified
_METHOD_CODES = dict(METHOD_CODES)
#: the protocol field, length included, for the usual values
_PROTOCOLS = {p: _pack_H(len(p)) + p for p in (b"HTTP/1.1", b"HTTP/1.0")}


class ForwardRequestEncoder:
    """
    Encodes L{ForwardRequest} values for one packet size, caching the encoded
    form of header names (bounded; share one encoder per node or pool).
    """

    #: how many header spellings beyond the built-in ones are remembered
    cacheLimit = 512

    def __init__(self, max_packet_size: int = DEFAULT_PACKET_SIZE) -> None:
        self.max_packet_size = check_packet_size(max_packet_size)
        self._names: dict[bytes, bytes] = dict(_NAME_SEED)
        self._limit = len(self._names) + self.cacheLimit

    def _name(self, name: bytes) -> bytes:
        piece = _request_header_name_piece(name)
        if len(self._names) < self._limit:
            self._names[name] = piece
        return piece

    def encode(self, request: ForwardRequest) -> bytes:
        """
        Encode one FORWARD_REQUEST packet (magic and length included).

        @raise RequestTooLarge: the packet would exceed the packet size.
        @raise AJPEncodeError: C{server_port} or C{ssl_key_size} is not a
            16-bit unsigned integer.
        """
        r = request
        return self.encode_fields(
            r.method, r.protocol, r.req_uri, r.remote_addr, r.remote_host,
            r.server_name, r.server_port, r.is_ssl, r.headers, r.secret,
            r.remote_user, r.auth_type, r.query_string, r.jvm_route, r.ssl_cert,
            r.ssl_cipher, r.ssl_session, r.ssl_key_size, r.attributes,
        )

    def encode_fields(
        self,
        method: bytes,
        protocol: bytes,
        req_uri: bytes,
        remote_addr: bytes,
        remote_host: bytes,
        server_name: bytes,
        server_port: int,
        is_ssl: bool = False,
        headers: Sequence[tuple[bytes, bytes]] = (),
        secret: Optional[bytes] = None,
        remote_user: Optional[bytes] = None,
        auth_type: Optional[bytes] = None,
        query_string: Optional[bytes] = None,
        jvm_route: Optional[bytes] = None,
        ssl_cert: Optional[bytes] = None,
        ssl_cipher: Optional[bytes] = None,
        ssl_session: Optional[bytes] = None,
        ssl_key_size: Optional[int] = None,
        attributes: Sequence[tuple[bytes, bytes]] = (),
    ) -> bytes:
        """
        Same as L{encode}, from the L{ForwardRequest} fields given directly
        (saves building the frozen value on the hot path).  Equivalent to
        L{encode_prepared} with L{encode_addresses} and L{encode_tail}.
        """
        if not 0 <= server_port <= 0xFFFF:
            raise AJPEncodeError(f"server_port {server_port!r} out of range")
        if not method:
            raise AJPEncodeError("empty method")
        return self.encode_prepared(
            method, protocol, req_uri, self.encode_addresses(remote_addr, remote_host),
            server_name, server_port, is_ssl, headers, secret, remote_user, auth_type,
            query_string, jvm_route,
            self.encode_tail(ssl_cert, ssl_cipher, ssl_session, ssl_key_size, attributes),
        )

    def encode_addresses(self, remote_addr: bytes, remote_host: bytes) -> bytes:
        """
        The C{remote_addr} and C{remote_host} fields as they sit in a
        FORWARD_REQUEST, for L{encode_prepared} (the same for every request
        of one client connection, so a caller may keep it).

        @raise RequestTooLarge: a string longer than 16 bits can count.
        """
        try:
            return b"".join((_pack_xH(len(remote_addr)), remote_addr,
                             _pack_xH(len(remote_host)), remote_host))
        except struct.error:
            raise RequestTooLarge(0x10000, self.max_packet_size) from None

    def encode_tail(
        self,
        ssl_cert: Optional[bytes] = None,
        ssl_cipher: Optional[bytes] = None,
        ssl_session: Optional[bytes] = None,
        ssl_key_size: Optional[int] = None,
        attributes: Sequence[tuple[bytes, bytes]] = (),
    ) -> bytes:
        """
        The last request attributes of a FORWARD_REQUEST (the TLS facts and
        the generic attributes, without the terminating C{0xFF}), for
        L{encode_prepared} (the same for every request of one client
        connection when the attributes describe the connection).

        @raise AJPEncodeError: C{ssl_key_size} is not a 16-bit unsigned integer.
        @raise RequestTooLarge: a string longer than 16 bits can count.
        """
        pack_H = _pack_H
        NUL = _NUL
        parts: list = []
        try:
            if ssl_cert is not None:
                parts += (b"\x07", pack_H(len(ssl_cert)), ssl_cert, NUL)
            if ssl_cipher is not None:
                parts += (b"\x08", pack_H(len(ssl_cipher)), ssl_cipher, NUL)
            if ssl_session is not None:
                parts += (b"\x09", pack_H(len(ssl_session)), ssl_session, NUL)
            if ssl_key_size is not None:
                if not 0 <= ssl_key_size <= 0xFFFF:
                    raise AJPEncodeError(f"ssl_key_size {ssl_key_size!r} out of range")
                parts += (b"\x0b", pack_H(ssl_key_size))
            for name, value in attributes:
                parts += (b"\x0a", pack_H(len(name)), name, _pack_xH(len(value)), value, NUL)
        except struct.error:
            raise RequestTooLarge(0x10000, self.max_packet_size) from None
        return b"".join(parts)

    def encode_prepared(
        self,
        method: bytes,
        protocol: bytes,
        req_uri: bytes,
        addresses: bytes,
        server_name: bytes,
        server_port: int,
        is_ssl: bool,
        headers: Sequence[tuple[bytes, bytes]],
        secret: Optional[bytes],
        remote_user: Optional[bytes],
        auth_type: Optional[bytes],
        query_string: Optional[bytes],
        jvm_route: Optional[bytes],
        tail: bytes,
    ) -> bytes:
        """
        Encode one FORWARD_REQUEST packet from the per-request fields and
        two pieces prepared once per client connection: C{addresses} from
        L{encode_addresses} and C{tail} from L{encode_tail}.

        @raise RequestTooLarge: the packet would exceed the packet size.
        @raise AJPEncodeError: C{server_port} is not a 16-bit unsigned
            integer, or C{method} is empty.
        """
        if not 0 <= server_port <= 0xFFFF:
            raise AJPEncodeError(f"server_port {server_port!r} out of range")
        if not method:
            raise AJPEncodeError("empty method")
        code = _METHOD_CODES.get(method, STORED_METHOD)
        pack_H = _pack_H
        names = self._names
        NUL = _NUL
        try:
            # Each string is its 16-bit length, the bytes and a NUL; ">xH"
            # packs the previous string's NUL with the next length.
            piece = _PROTOCOLS.get(protocol)
            if piece is None:
                piece = pack_H(len(protocol)) + protocol
            parts = [
                _FORWARD_TYPE[code], piece,
                _pack_xH(len(req_uri)), req_uri,
                addresses,
                _pack_xH(len(server_name)), server_name,
                _pack_xHBH(server_port, 1 if is_ssl else 0, len(headers)),
            ]
            for name, value in headers:
                piece = names.get(name)
                if piece is None:
                    piece = self._name(name)
                parts += (piece, pack_H(len(value)), value, NUL)
            # Optional string attributes, in mod_proxy_ajp's order (secret first).
            if secret is not None:
                parts += (b"\x0c", pack_H(len(secret)), secret, NUL)
            if code == STORED_METHOD:
                parts += (b"\x0d", pack_H(len(method)), method, NUL)
            if remote_user is not None:
                parts += (b"\x03", pack_H(len(remote_user)), remote_user, NUL)
            if auth_type is not None:
                parts += (b"\x04", pack_H(len(auth_type)), auth_type, NUL)
            if query_string is not None:
                parts += (b"\x05", pack_H(len(query_string)), query_string, NUL)
            if jvm_route is not None:
                parts += (b"\x06", pack_H(len(jvm_route)), jvm_route, NUL)
        except struct.error:
            # a string or a count did not fit 16 bits: far beyond any packet size
            raise RequestTooLarge(0x10000, self.max_packet_size) from None
        parts += (tail, b"\xff")
        payload = b"".join(parts)
        size = len(payload) + 4
        if size > self.max_packet_size:
            raise RequestTooLarge(size, self.max_packet_size)
        return _pack_server_head(0x1234, size - 4) + payload


def encode_forward_request(
    request: ForwardRequest, max_packet_size: int = DEFAULT_PACKET_SIZE
) -> bytes:
    """
    Encode one FORWARD_REQUEST packet.  Convenience wrapper around a fresh
    L{ForwardRequestEncoder}; on a hot path keep and reuse an encoder instead.

    @raise RequestTooLarge: the packet would exceed C{max_packet_size}.
    """
    return ForwardRequestEncoder(max_packet_size).encode(request)


def body_chunk_header(length: int) -> bytes:
    """
    The 6 bytes that precede C{length} bytes of request body in a packet.
    """
    return _pack_body_header(_SERVER_MAGIC, length + 2, length)


def encode_body_chunk(data: bytes, max_packet_size: int = DEFAULT_PACKET_SIZE) -> bytes:
    """
    One request body packet (no type byte): C{12 34 <n+2> <n> data}.
    Empty C{data} gives L{EMPTY_BODY_PACKET} (end of body).

    @raise RequestTooLarge: more than C{max_packet_size - 6} bytes.
    """
    n = len(data)
    if n + 6 > max_packet_size:
        raise RequestTooLarge(n + 6, max_packet_size)
    return _pack_body_header(_SERVER_MAGIC, n + 2, n) + data


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


# --- decoding helpers -------------------------------------------------------------


def _read_string(data: bytes, pos: int, end: int, what: str, nullable: bool = False):
    """
    Read an AJP string at C{pos}; return C{(value, next_pos)}.  A null string
    (C{0xFFFF}) gives C{None} when C{nullable}, else is an error.
    """
    if pos + 2 > end:
        raise MalformedPacket(f"{what}: string length truncated")
    n = (data[pos] << 8) | data[pos + 1]
    pos += 2
    if n == 0xFFFF:
        if nullable:
            return None, pos
        raise MalformedPacket(f"{what}: null string not allowed here")
    stop = pos + n
    if stop >= end:
        raise MalformedPacket(
            f"{what}: string of {n} bytes overruns the packet"
        )
    if data[stop] != 0:
        raise MalformedPacket(f"{what}: string is not NUL-terminated")
    return data[pos:stop], stop + 1


def _read_int(data: bytes, pos: int, end: int, what: str) -> int:
    if pos + 2 > end:
        raise MalformedPacket(f"{what}: integer truncated")
    return (data[pos] << 8) | data[pos + 1]


def _send_headers_checked(data: bytes, pos: int, end: int) -> tuple:
    """
    The general SEND_HEADERS decoder: the payload after the type byte, from
    C{pos} to C{end}; returns C{(status, reason, headers)}.  Every check has
    its own error message; L{_send_headers} handles the common case faster
    and falls back to this function for anything unusual.
    """
    status = _read_int(data, pos, end, "SEND_HEADERS status")
    if not 100 <= status <= 999:
        raise MalformedPacket(f"SEND_HEADERS: status {status} out of range 100..999")
    reason, pos = _read_string(data, pos + 2, end, "SEND_HEADERS reason", nullable=True)
    if reason is None:
        reason = b""
    elif _BAD_VALUE.search(reason):
        raise MalformedPacket("SEND_HEADERS: reason contains CR, LF or NUL")
    count = _read_int(data, pos, end, "SEND_HEADERS header count")
    pos += 2
    headers = []
    append = headers.append
    names = RESPONSE_HEADER_NAMES
    token = _TOKEN.fullmatch
    bad = _BAD_VALUE.search
    for _ in range(count):
        if pos + 2 > end:
            raise MalformedPacket("SEND_HEADERS: header list truncated")
        if data[pos] == 0xA0:
            code = (0xA0 << 8) | data[pos + 1]
            name = names.get(code)
            if name is None:
                raise UnknownHeaderCode(f"SEND_HEADERS: unknown header code 0x{code:04X}")
            pos += 2
        else:
            name, pos = _read_string(data, pos, end, "SEND_HEADERS header name")
            if token(name) is None:
                raise MalformedPacket(f"SEND_HEADERS: invalid header name {name[:64]!r}")
        value, pos = _read_string(data, pos, end, "SEND_HEADERS header value")
        if bad(value):
            raise MalformedPacket(f"SEND_HEADERS: value of {name!r} contains CR, LF or NUL")
        append((name, value))
    if pos != end:
        raise MalformedPacket(f"SEND_HEADERS: {end - pos} unexpected trailing bytes")
    return status, reason, tuple(headers)


#: response header name by the low byte of its C{0xA0nn} code (C{None}: no such code)
_CODED_RESPONSE_NAMES = tuple(RESPONSE_HEADER_NAMES.get(0xA000 + i) for i in range(256))

#: header names sent as strings that need no token check (they are tokens)
_KNOWN_TOKENS = frozenset((
    b"Accept-Ranges", b"ETag", b"Cache-Control", b"Expires", b"Pragma", b"Vary",
    b"Content-Encoding", b"Content-Disposition", b"Content-Range", b"Content-Location",
    b"Transfer-Encoding", b"Connection", b"Keep-Alive", b"Server", b"Allow", b"Age",
    b"Retry-After", b"Access-Control-Allow-Origin", b"Strict-Transport-Security",
    b"X-Content-Type-Options", b"X-Frame-Options", b"X-Powered-By",
    b"Content-Security-Policy", b"Link", b"Trailer", b"Upgrade", b"Via", b"Warning",
))


def _send_headers(data: bytes, pos: int, end: int) -> tuple:
    """
    Decode a SEND_HEADERS payload (after the type byte, C{pos} to C{end}) into
    C{(status, reason, headers)}.  Same result as L{_send_headers_checked}
    (which it falls back to, for the error, at the first unusual byte) with
    fewer steps for the usual packet.

    A string length of C{0xFFFF} (null) needs no test of its own here: it
    always runs past C{end}, because a packet is at most 65536 bytes.
    """
    try:
        status = (data[pos] << 8) | data[pos + 1]
        p = pos + 4
        stop = p + ((data[pos + 2] << 8) | data[pos + 3])
        if stop + 2 >= end or data[stop] or not 100 <= status <= 999:
            return _send_headers_checked(data, pos, end)
        reason = data[p:stop]
        count = (data[stop + 1] << 8) | data[stop + 2]
        p = stop + 3
        headers = []
        append = headers.append
        # the reason and the values, checked for CR, LF and NUL in one search
        texts = [reason]
        text = texts.append
        coded = _CODED_RESPONSE_NAMES
        for _ in range(count):
            c = data[p]
            if c == 0xA0:
                name = coded[data[p + 1]]
                if name is None:
                    return _send_headers_checked(data, pos, end)
                p += 2
            else:
                stop = p + 2 + ((c << 8) | data[p + 1])
                if stop >= end or data[stop]:
                    return _send_headers_checked(data, pos, end)
                name = data[p + 2:stop]
                if name not in _KNOWN_TOKENS and _TOKEN.fullmatch(name) is None:
                    return _send_headers_checked(data, pos, end)
                p = stop + 1
            stop = p + 2 + ((data[p] << 8) | data[p + 1])
            if stop >= end or data[stop]:
                return _send_headers_checked(data, pos, end)
            value = data[p + 2:stop]
            text(value)
            append((name, value))
            p = stop + 1
    except IndexError:  # read past the end of the buffer: truncated
        return _send_headers_checked(data, pos, end)
    if p != end or _BAD_VALUE.search(b"".join(texts)):
        return _send_headers_checked(data, pos, end)
    return status, reason, tuple(headers)


_TYPE_NAMES = {
    FORWARD_REQUEST: "FORWARD_REQUEST", SEND_BODY_CHUNK: "SEND_BODY_CHUNK",
    SEND_HEADERS: "SEND_HEADERS", END_RESPONSE: "END_RESPONSE",
    GET_BODY_CHUNK: "GET_BODY_CHUNK", SHUTDOWN: "SHUTDOWN", PING: "PING",
    CPONG: "CPONG", CPING: "CPING",
}


def _type_name(code: int) -> str:
    return _TYPE_NAMES.get(code, "unknown")


_T_END_REUSE = (END_RESPONSE, True)
_T_END_CLOSE = (END_RESPONSE, False)
_T_CPONG = (CPONG,)


def message_from_tuple(t: tuple) -> ResponseMessage:
    """
    The message value of one tuple from L{ResponseParser.feed_tuples}.
    """
    kind = t[0]
    if kind == SEND_BODY_CHUNK:
        return SendBodyChunk(t[1])
    if kind == SEND_HEADERS:
        return SendHeaders(t[1], t[2], t[3])
    if kind == END_RESPONSE:
        return _END_REUSE if t[1] else _END_CLOSE
    if kind == GET_BODY_CHUNK:
        return GetBodyChunk(t[1])
    if kind == CPONG:
        return _CPONG
    raise ValueError(f"not a response message tuple: {t!r}")


#: SEND_HEADERS packets remembered per L{ResponseParser}: at most this many,
#: of at most this many bytes each.
HEADS_MEMO_SIZE = 16
HEADS_MEMO_BYTES = 2048


class ResponseParser:
    """
    Incremental, strict parser of container -> server packets.

    C{feed(data)} returns the list of complete messages (L{SendHeaders},
    L{SendBodyChunk}, L{EndResponse}, L{GetBodyChunk}, L{CPong}); a partial
    packet is kept for the next call.  Cost is linear in the input: a packet
    that arrives whole in one C{feed} is decoded straight from the caller's
    bytes (a body chunk is one slice of them); only an incomplete tail is
    buffered, and buffered bytes are converted once when a packet completes.

    C{feed_tuples(data)} is the same parser giving plain tuples (no object
    per message) for the protocol's hot path; C{feed} is C{feed_tuples}
    mapped through L{message_from_tuple}.

    After an error the parser is dead: every later C{feed} raises
    L{AJPProtocolError}.

    A container repeats its SEND_HEADERS packets (the same resource): the
    decoded C{(status, reason, headers)} of the last L{HEADS_MEMO_SIZE}
    distinct packets of at most L{HEADS_MEMO_BYTES} are kept, and a repeated
    packet gives the very same (immutable) tuple again.
    """

    __slots__ = ("max_packet_size", "_buf", "_need", "_dead", "_heads")

    def __init__(self, max_packet_size: int = DEFAULT_PACKET_SIZE) -> None:
        self.max_packet_size = check_packet_size(max_packet_size)
        self._buf = bytearray()
        self._need = 4
        self._dead: Optional[AJPProtocolError] = None
        self._heads: dict[bytes, tuple] = {}

    @property
    def buffered(self) -> int:
        """
        Number of bytes of an incomplete packet held back.
        """
        return len(self._buf)

    def feed(self, data: bytes) -> list:
        """
        Parse C{data}; return the messages completed by it, in order.

        @raise AJPProtocolError: (a subclass) on malformed input; its
            C{messages} holds the messages decoded before the error.
        """
        try:
            raw = self.feed_tuples(data)
        except AJPProtocolError as e:
            e.messages = tuple([message_from_tuple(t) for t in e.messages])
            raise
        return [message_from_tuple(t) for t in raw]

    def feed_tuples(self, data: bytes) -> list:
        """
        Parse C{data}; return the messages completed by it, in order, as
        tuples: C{(SEND_HEADERS, status, reason, headers)},
        C{(SEND_BODY_CHUNK, data)}, C{(END_RESPONSE, reuse)},
        C{(GET_BODY_CHUNK, requested_length)}, C{(CPONG,)} (the fields of
        the L{SendHeaders}, ... values, in the same order).

        @raise AJPProtocolError: (a subclass) on malformed input; its
            C{messages} holds the tuples decoded before the error.
        """
        if self._dead is not None:
            raise AJPProtocolError(f"parser stopped after an earlier error: {self._dead}")
        if type(data) is not bytes:
            data = bytes(data)
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return []
            data = bytes(buf)
            buf.clear()
        out: list = []
        end = len(data)
        pos = 0
        limit = self.max_packet_size
        need = 4
        try:
            while True:
                avail = end - pos
                if avail < 4:
                    need = 4
                    break
                if data[pos] != 0x41 or data[pos + 1] != 0x42:
                    magic = (data[pos] << 8) | data[pos + 1]
                    raise BadMagic(
                        f"bad packet magic 0x{magic:04X} from container (expected 0x4142 'AB')"
                    )
                length = (data[pos + 2] << 8) | data[pos + 3]
                if length + 4 > limit:
                    raise PacketTooLarge(
                        f"container packet of {length + 4} bytes exceeds the "
                        f"maximum packet size {limit}"
                    )
                if avail < length + 4:
                    need = length + 4
                    break
                start = pos + 4
                pos = stop = start + length
                if length == 0:
                    raise MalformedPacket("empty packet from container")
                kind = data[start]
                if kind == 3:  # SEND_BODY_CHUNK
                    if length < 4:
                        raise MalformedPacket(
                            f"SEND_BODY_CHUNK packet of {length} bytes is too short"
                        )
                    n = (data[start + 1] << 8) | data[start + 2]
                    if n != length - 4:
                        raise MalformedPacket(
                            f"SEND_BODY_CHUNK: chunk length {n} does not match "
                            f"packet length {length} (expected {length - 4})"
                        )
                    out.append((3, data[start + 3:start + 3 + n]))
                elif kind == 4:
                    heads = self._heads
                    key = data[start:stop]
                    head = heads.get(key)
                    if head is None:
                        head = (4, *_send_headers(data, start + 1, stop))
                        if length <= HEADS_MEMO_BYTES:
                            if len(heads) >= HEADS_MEMO_SIZE:
                                heads.clear()
                            heads[key] = head
                    out.append(head)
                elif kind == 5:
                    if length != 2:
                        raise MalformedPacket(
                            f"END_RESPONSE payload must be 2 bytes, not {length}"
                        )
                    reuse = data[start + 1]
                    if reuse == 1:
                        out.append(_T_END_REUSE)
                    elif reuse == 0:
                        out.append(_T_END_CLOSE)
                    else:
                        raise MalformedPacket(f"END_RESPONSE: bad reuse flag {reuse}")
                elif kind == 6:
                    if length != 3:
                        raise MalformedPacket(
                            f"GET_BODY_CHUNK payload must be 3 bytes, not {length}"
                        )
                    requested = (data[start + 1] << 8) | data[start + 2]
                    if requested == 0:
                        raise MalformedPacket("GET_BODY_CHUNK asks for 0 bytes")
                    out.append((6, requested))
                elif kind == 9:
                    if length != 1:
                        raise MalformedPacket(f"CPONG payload must be 1 byte, not {length}")
                    out.append(_T_CPONG)
                else:
                    raise UnknownMessageType(
                        f"unknown message type {kind} ({_type_name(kind)}) from container"
                    )
        except AJPProtocolError as e:
            e.messages = tuple(out)
            self._dead = e
            raise
        if pos < end:
            buf += memoryview(data)[pos:]
            self._need = need
        return out


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
