"""
The AJP13 server side's decoder of what a container sends (container ->
server): L{ResponseParser}, incremental and strict, with the SEND_HEADERS
decoders and the per-connection memo of decoded heads.  Pure like
L{modcluster.ajp.packets}, whose values and errors it returns.
"""

from __future__ import annotations

from typing import Optional

from modcluster.ajp.packets import (
    AJPProtocolError,
    BadMagic,
    CPONG,
    DEFAULT_PACKET_SIZE,
    END_RESPONSE,
    GET_BODY_CHUNK,
    GetBodyChunk,
    MalformedPacket,
    PacketTooLarge,
    RESPONSE_HEADER_NAMES,
    ResponseMessage,
    SEND_BODY_CHUNK,
    SEND_HEADERS,
    SendBodyChunk,
    SendHeaders,
    UnknownHeaderCode,
    UnknownMessageType,
    _BAD_VALUE,
    _CPONG,
    _END_CLOSE,
    _END_REUSE,
    _TOKEN,
    _read_int,
    _read_string,
    _type_name,
    check_packet_size,
)
from modcluster.memo import BoundedMemo

__all__ = [
    "ResponseParser",
    "message_from_tuple",
]


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
    headers: list[tuple[bytes, bytes]] = []
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
        headers: list[tuple[bytes, bytes]] = []
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
        self._heads: BoundedMemo[bytes, tuple] = BoundedMemo(
            "ajp.response.heads", HEADS_MEMO_SIZE, count_hits=False)

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
                    key = data[start:stop]
                    head = self._heads.entries.get(key)
                    if head is None:
                        head = (4, *_send_headers(data, start + 1, stop))
                        if length <= HEADS_MEMO_BYTES:
                            self._heads.put(key, head)
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
