"""
AJP13 wire codec: bytes in, frozen attrs values out, and back.  No I/O, no clock,
no mutable module state.

The codec is three modules, one per side:

 - here: the errors, sizes, codes and values both directions share, and what
   the server (proxy) sends to the container: L{encode_forward_request} /
   L{ForwardRequestEncoder}, L{encode_body_chunk}, L{EMPTY_BODY_PACKET},
   L{CPING_PACKET};
 - L{modcluster.ajp.response}: L{ResponseParser} (incremental, strict), the
   server's decoder of what the container sends;
 - L{modcluster.ajp.container}: the container's side, for the tests and the
   fake container (L{modcluster.ajp.testing}): C{RequestParser} and
   C{decode_forward_request} decode what the server sends;
   C{encode_send_headers}, C{encode_send_body_chunk}, C{encode_end_response},
   C{encode_get_body_chunk} and L{CPONG_PACKET} are what a container sends.

Every malformed input raises a subclass of L{AJPProtocolError}; a request that
does not fit the packet size raises L{RequestTooLarge}.  See C{docs/ajp.md} and
C{shared/reference/ajp13.md} for the wire format.
"""

from __future__ import annotations

import re
import struct
from types import MappingProxyType
from typing import Mapping, Optional, Sequence, Union

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


_TYPE_NAMES = {
    FORWARD_REQUEST: "FORWARD_REQUEST", SEND_BODY_CHUNK: "SEND_BODY_CHUNK",
    SEND_HEADERS: "SEND_HEADERS", END_RESPONSE: "END_RESPONSE",
    GET_BODY_CHUNK: "GET_BODY_CHUNK", SHUTDOWN: "SHUTDOWN", PING: "PING",
    CPONG: "CPONG", CPING: "CPING",
}


def _type_name(code: int) -> str:
    return _TYPE_NAMES.get(code, "unknown")
