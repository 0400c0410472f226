"""
The C{h2} (python-hyper) connection as the HTTP/2 front (L{modcluster.proxy.h2})
uses it, and the header fields it checks and converts: L{request_fields}
(a request's header list, RFC 9113 §8.2-8.3, as HTTP/1.1 request facts),
the response fields of an HTTP/1.1 response head, HPACK encoders and
decoders that remember the blocks they made or read
(C{_MemoEncoder}, C{_MemoDecoder}), and C{_H2Connection}, whose sends of
HEADERS and DATA skip what C{h2} re-checks for every frame.
"""

from __future__ import annotations

import re
import struct
from typing import Any, Callable, Optional

from h2.connection import (
    AllowedStreamIDs,
    ConnectionInputs,
    H2Connection,
    H2ConnectionStateMachine,
    _decode_headers,
)
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError, StreamClosedError, StreamIDTooLowError, TooManyStreamsError
from h2.frame_buffer import FrameBuffer
from h2.stream import STREAM_OPEN, H2StreamStateMachine, StreamInputs, StreamState
from h2.stream import _transitions as _stream_transitions
from h2.utilities import is_informational_response
from h2.windows import WindowManager
from hpack import Decoder, Encoder
from hyperframe.exceptions import InvalidDataError, InvalidFrameError
from hyperframe.frame import Frame, RstStreamFrame

__all__ = ["request_fields"]

_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
#: An RFC 9110 token (any case): the value of an extended CONNECT's C{:protocol}
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
#: Connection-specific header fields (RFC 9113 §8.2.2): a request carrying one
#: is malformed.
_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
_PSEUDO = frozenset((b":method", b":scheme", b":path", b":authority"))
#: Response header fields never sent to an HTTP/2 client (hop-by-hop, framing).
_RESP_DROP = frozenset((b"connection", b"keep-alive", b"proxy-connection",
                        b"transfer-encoding", b"upgrade", b"te", b"trailer"))
_X_FORWARDED = frozenset((b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-server",
                          b"x-forwarded-proto"))


class _Malformed(Exception):
    """A malformed request (RFC 9113 §8.1.1): reset the stream with PROTOCOL_ERROR."""


def request_fields(headers, extended: bool = False) -> tuple:
    """
    Check an HTTP/2 request header list (RFC 9113 §8.2, §8.3.1) and split it:
    C{(method, scheme, path, authority, fields, content_length, cookies,
    expect, x_forwarded, protocol)}, where C{fields} are the regular fields
    to forward (C{host}, C{cookie}, C{content-length}, C{te}, C{expect}
    taken out), C{cookies} the cookie crumbs in order (joined with C{"; "}
    for the node, RFC 9113 §8.2.3), C{content_length} an int or None.

    With C{extended} (we sent C{SETTINGS_ENABLE_CONNECT_PROTOCOL} = 1, RFC
    8441 §3), a CONNECT may carry C{:protocol} (a token), C{protocol}, and
    then needs C{:scheme} and C{:path} like any request (§4); without it, or
    on another method, C{:protocol} is malformed.  C{protocol} is None
    otherwise.  Raises L{_Malformed}.
    """
    method = scheme = path = authority = host = protocol = None
    fields = []
    cookies = None
    length = None
    expect = None
    x_forwarded = False
    regular = False
    for name, value in headers:
        if name[:1] == b":":
            if regular:
                raise _Malformed("pseudo-header after a regular header")
            if name not in _PSEUDO:
                if name == b":protocol" and extended:
                    if protocol is not None:
                        raise _Malformed("repeated :protocol")
                    if _TOKEN.match(value) is None:
                        raise _Malformed("bad :protocol")
                    protocol = value
                    continue
                raise _Malformed(f"unknown pseudo-header {name!r}")
            if name == b":method":
                if method is not None:
                    raise _Malformed("repeated :method")
                method = value
            elif name == b":scheme":
                if scheme is not None:
                    raise _Malformed("repeated :scheme")
                scheme = value
            elif name == b":path":
                if path is not None:
                    raise _Malformed("repeated :path")
                path = value
            else:
                if authority is not None:
                    raise _Malformed("repeated :authority")
                authority = value
            continue
        regular = True
        if _NAME.match(name) is None:
            raise _Malformed(f"bad field name {name!r}")
        if _BAD_VALUE.search(value) is not None or value[:1] in (b" ", b"\t") \
                or value[-1:] in (b" ", b"\t"):
            raise _Malformed(f"bad value of {name!r}")
        if name in _CONNECTION_SPECIFIC:
            raise _Malformed(f"connection-specific field {name!r}")
        if name == b"cookie":
            if cookies is None:
                cookies = [value]
            else:
                cookies.append(value)
        elif name == b"host":
            host = value
        elif name == b"content-length":
            if not value.isdigit():
                raise _Malformed("bad content-length")
            n = int(value)
            if length is not None and n != length:
                raise _Malformed("conflicting content-length")
            length = n
        elif name == b"te":
            if value.lower() != b"trailers":
                raise _Malformed("te other than trailers")
        elif name == b"expect":
            expect = value
        else:
            if name in _X_FORWARDED:
                x_forwarded = True
            fields.append((name, value))
    if method is None:
        raise _Malformed("no :method")
    if method != b"CONNECT":
        if not scheme or not path:
            raise _Malformed("no :scheme or :path")
        if path[:1] != b"/" and not (path == b"*" and method == b"OPTIONS"):
            raise _Malformed("bad :path")
        if protocol is not None:
            raise _Malformed(":protocol in a request other than CONNECT")
    elif protocol is not None:
        # an extended CONNECT (RFC 8441 §4): a request like others
        if not scheme or not path:
            raise _Malformed("extended CONNECT without :scheme or :path")
        if path[:1] != b"/":
            raise _Malformed("bad :path")
    if authority is None:
        authority = host  # else :authority wins (RFC 9113 §8.3.1); host is not forwarded
    if cookies is not None and len(cookies) > 1:
        cookies = [b"; ".join(cookies)]
    return (method, scheme, path, authority, fields, length, cookies, expect, x_forwarded,
            protocol)


def _response_fields(status: int, headers) -> list:
    """C{:status} and the node's response fields, lower-cased, hop-by-hop ones dropped."""
    out = [(b":status", b"%d" % status)]
    if headers.__class__ is bytes:
        for line in headers.split(b"\r\n"):
            if not line:
                continue
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name and name not in _RESP_DROP:
                out.append((name, value.strip(b" \t")))
    else:
        for name, value in headers:
            name = name.lower()
            if name not in _RESP_DROP:
                out.append((name, value.strip(b" \t")))
    return out


def _skip_int(block: bytes, i: int, prefix: int) -> int:
    """The offset after the HPACK integer at C{i} with a C{prefix}-bit prefix (RFC 7541 §5.1)."""
    n = len(block)
    mask = (1 << prefix) - 1
    if block[i] & mask != mask:
        return i + 1
    i += 1
    while i < n and block[i] & 0x80:
        i += 1
    return i + 1


def _int_at(block: bytes, i: int, prefix: int) -> tuple:
    """The HPACK integer at C{i} with a C{prefix}-bit prefix and the offset after it."""
    mask = (1 << prefix) - 1
    v = block[i] & mask
    i += 1
    if v != mask:
        return v, i
    shift = 0
    n = len(block)
    while i < n:
        b = block[i]
        i += 1
        v += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return v, i


def _table_neutral(block: bytes) -> bool:
    """
    Whether decoding (or encoding) the HPACK header block C{block} leaves the
    dynamic table as it was: it holds indexed fields (RFC 7541 §6.1) and
    literals without indexing or never indexed (§6.2.2, §6.2.3) only — no
    literal with incremental indexing, no table size update.
    """
    i = 0
    n = len(block)
    while i < n:
        b = block[i]
        if b & 0x80:
            i = _skip_int(block, i, 7)
            continue
        if b & 0xE0:
            return False  # 01xxxxxx: added to the table; 001xxxxx: size update
        name_index, i = _int_at(block, i, 4)
        for _ in range(1 if name_index else 2):  # [name string] value string
            if i >= n:
                return False
            length, i = _int_at(block, i, 7)
            i += length
        if i > n:
            return False
    return True


class _MemoEncoder(Encoder):
    """
    The HPACK encoder of one connection, remembering its last header block
    (C{memo}) for a response head that repeats (same C{key}: the node's
    status and head bytes).

    A block may be reused only while it decodes to the same fields: it is
    kept only when its encoding did not change the dynamic table
    (L{_table_neutral}) and forgotten as soon as any encoding
    changes the table (a literal with indexing, an eviction) or the table is
    resized (the client's SETTINGS_HEADER_TABLE_SIZE).  The dynamic table
    evolves exactly as if every block had been encoded afresh: a reused block
    is one whose encoding would not have touched it.
    """

    def __init__(self) -> None:
        Encoder.__init__(self)
        # the key of the next encode() (set by responseHead): (status, head bytes)
        self.next_key: Optional[tuple[int, bytes]] = None
        self.memo_key: Optional[tuple[int, bytes]] = None
        self.memo_block = b""
        self.memo_fields: list = []

    @property
    def header_table_size(self) -> int:
        return self.header_table.maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        # hpack forgets a pending size update when the same size is set twice
        # (a client's SETTINGS repeating HEADER_TABLE_SIZE): its decoder would
        # then not have shrunk or grown its table as ours did
        if value == self.header_table.maxsize:
            return
        self.memo_key = None
        # mypy reads a property with a setter as an overloaded function
        Encoder.header_table_size.fset(self, value)  # type: ignore[attr-defined]

    def encode(self, headers, huffman: bool = True) -> bytes:
        key = self.next_key
        if key is not None:
            self.next_key = None
            if key == self.memo_key and not self.table_size_changes:
                return self.memo_block
        block = Encoder.encode(self, headers, huffman)
        if _table_neutral(block):
            if key is not None:
                self.memo_key = key
                self.memo_block = block
                self.memo_fields = headers
        else:
            self.memo_key = None
        return block


class _MemoDecoder(Decoder):
    """
    The HPACK decoder of one connection, remembering its last header block
    and what it decoded to: a client repeating a request (same block bytes)
    is not decoded again.  As with L{_MemoEncoder}, only a block whose
    decoding left the dynamic table unchanged (L{_table_neutral}) is
    remembered, and any other block (or a failed one) forgets it, so a reused
    result is what decoding would give.
    """

    def __init__(self, max_header_list_size: int) -> None:
        Decoder.__init__(self, max_header_list_size=max_header_list_size)
        self.memo_block: Optional[bytes] = None
        self.memo_headers: list = []
        self.memo_limit = 0

    @property
    def header_table_size(self) -> int:
        return self.header_table.maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self.memo_block = None
        # mypy reads a property with a setter as an overloaded function
        Decoder.header_table_size.fset(self, value)  # type: ignore[attr-defined]

    def decode(self, data, raw: bool = False):
        if data == self.memo_block and raw and self.max_header_list_size == self.memo_limit:
            return list(self.memo_headers)
        self.memo_block = None
        headers = Decoder.decode(self, data, raw)
        if raw and data.__class__ is bytes and _table_neutral(data):
            self.memo_block = data
            self.memo_headers = list(headers)
            self.memo_limit = self.max_header_list_size
        return headers


_DATA_HEAD = struct.Struct(">HBBBL")  # frame length (24 bits), type 0 (DATA), flags, stream
_HEADERS_HEAD = _DATA_HEAD  # (the same layout; type 1)
_SEND_DATA = ConnectionInputs.SEND_DATA
_SEND_HEADERS = ConnectionInputs.SEND_HEADERS
_STREAM_SEND_HEADERS = StreamInputs.SEND_HEADERS
_STREAM_SEND_DATA = StreamInputs.SEND_DATA
_STREAM_SEND_END = StreamInputs.SEND_END_STREAM
_RECV_HEADERS = ConnectionInputs.RECV_HEADERS
_RECV_DATA = ConnectionInputs.RECV_DATA
_IDLE = StreamState.IDLE
_CLOSED = StreamState.CLOSED
#: h2's stream transitions for a request's HEADERS (+ END_STREAM) on a new
#: stream (the callback and the next state), taken from h2's own table
_Transition = tuple[Callable[[H2StreamStateMachine, StreamState], list[Any]], StreamState]
_RECV_REQUEST: _Transition = _stream_transitions[  # type: ignore[assignment]
    (StreamState.IDLE, StreamInputs.RECV_HEADERS)]
_RECV_REQUEST_END: _Transition = _stream_transitions[  # type: ignore[assignment]
    (_RECV_REQUEST[1], StreamInputs.RECV_END_STREAM)]
assert _RECV_REQUEST[0] is H2StreamStateMachine.request_received
#: h2's stream transitions for a DATA frame (and its END_STREAM) on a stream
#: in the states where h2 accepts one without error (open, half-closed
#: (local)), by state: (RECV_DATA's, RECV_END_STREAM's), from h2's table
_RECV_BODY: dict[StreamState, tuple[_Transition, _Transition]] = {
    state: (_stream_transitions[(state, StreamInputs.RECV_DATA)],  # type: ignore[misc]
            _stream_transitions[(_stream_transitions[(state, StreamInputs.RECV_DATA)][1],
                                 StreamInputs.RECV_END_STREAM)])
    for state in (StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL)}
assert all(data[0][0] is H2StreamStateMachine.data_received and data[0][1] is state
           for state, data in _RECV_BODY.items())
_OPEN = StreamState.OPEN
_HALF_CLOSED_LOCAL = StreamState.HALF_CLOSED_LOCAL
_RECV_BODY_OPEN = _RECV_BODY[_OPEN]
_RECV_BODY_HALF_CLOSED = _RECV_BODY[_HALF_CLOSED_LOCAL]


def _gives_window(window: WindowManager, size: int) -> bool:
    """
    Whether h2's C{window.process_bytes(size)} would do more than count the
    bytes (C{WindowManager._maybe_update_window}'s test: an increment to
    send as WINDOW_UPDATE, the count reset).
    """
    processed = window._bytes_processed + size
    if not processed:
        return False
    largest = window.max_window_size
    return ((window.current_window_size == 0 and processed > min(1024, largest // 4))
            or processed >= largest // 2)


class _StateMachine(H2ConnectionStateMachine):
    """
    h2's connection state machine with its transitions looked up by the
    enums' values: the same table and results, without two Python-level
    C{Enum.__hash__} calls per input (three inputs per request).
    """

    _by_value = {(state.value, inp.value): result
                 for (state, inp), result in H2ConnectionStateMachine._transitions.items()}

    def process_input(self, input_):
        if input_.__class__ is ConnectionInputs:
            result = self._by_value.get((self.state._value_, input_._value_))
            if result is not None:
                func, self.state = result
                return func() if func is not None else []
        return H2ConnectionStateMachine.process_input(self, input_)


class _FrameBuffer(FrameBuffer):
    """
    h2's frame buffer, which checks a frame's length against
    SETTINGS_MAX_FRAME_SIZE only once the whole frame is in: a client
    announcing a 16 MiB frame could make it hold up to 16 MiB per connection
    (and keep the connection open while it trickles).  Here the length is
    checked as soon as the frame's 9-byte header is in (h2's
    C{FrameTooLargeError}: GOAWAY FRAME_SIZE_ERROR), so a connection holds
    at most one frame of the allowed size and one read.
    """

    def __next__(self):
        data = self._data
        if len(data) >= 9:
            length = (data[0] << 16) | (data[1] << 8) | data[2]
            if length > self.max_frame_size:
                # h2's order: an invalid frame header (a DATA frame on
                # stream 0…) is a PROTOCOL_ERROR before the length is checked
                try:
                    Frame.parse_frame_header(memoryview(data[:9]))
                except (InvalidDataError, InvalidFrameError) as err:
                    raise ProtocolError(f"Received frame with invalid header: {err!s}") from err
                self._validate_frame_length(length)  # (raises)
        return FrameBuffer.__next__(self)


class _H2Connection(H2Connection):
    """
    h2's connection with a cheaper C{send_data} for the common case (bytes,
    no padding, within the windows and the frame size): the same state
    machine inputs and window accounting as h2's, the frame written by hand
    instead of through a hyperframe object.  Anything else goes to h2's.
    """

    # H2Protocol replaces h2's coders with these before any frame (annotated
    # only: no class attributes)
    encoder: _MemoEncoder
    decoder: _MemoDecoder

    def __init__(self, config) -> None:
        H2Connection.__init__(self, config)
        self.state_machine = _StateMachine()
        # (before any byte: the same preamble state and limit as h2's)
        buffer = _FrameBuffer(server=not self.config.client_side)
        buffer.max_frame_size = self.incoming_buffer.max_frame_size
        self.incoming_buffer = buffer
        #: streams opened beyond SETTINGS_MAX_CONCURRENT_STREAMS, to refuse
        self.over_limit: set = set()
        self._inbound_ids = AllowedStreamIDs(not self.config.client_side)
        #: the request fast path of _receive_headers_frame: h2's inbound
        #: header processing must be the identity (as H2Protocol configures it)
        self._fast_headers = not (
            self.config.normalize_inbound_headers or self.config.validate_inbound_headers
            or isinstance(self.config.header_encoding, str))
        #: DATA frames read by receive_data itself (L{_receive_body})
        self._fast_data = True

    def _open_streams(self, remainder: int) -> int:
        """
        h2's (the open streams with C{stream id % 2 == remainder}, the closed
        ones moved to C{_closed_streams}), reading each stream's state once
        instead of through its C{open} and C{closed} properties: it runs over
        every stream for each new stream.
        """
        count = 0
        to_delete = None
        for stream_id, stream in self.streams.items():
            state = stream.state_machine.state
            if STREAM_OPEN[state] and stream_id % 2 == remainder:
                count += 1
            elif state is _CLOSED:
                if to_delete is None:
                    to_delete = [stream_id]
                else:
                    to_delete.append(stream_id)
        if to_delete is not None:
            for stream_id in to_delete:
                stream = self.streams.pop(stream_id)
                self._closed_streams[stream_id] = stream.closed_by
        return count

    def _receive_frame(self, frame):
        """
        h2's (4.x), without its trace log line, whose argument (the frame's
        repr, with a hex dump of its payload) h2 builds for every frame
        received even though nothing logs it.
        """
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            # closed by RST_STREAM: a stream error (RST_STREAM back), else
            # a connection error
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events

    def _receive_headers_frame(self, frame):
        """
        h2's, except that a HEADERS frame opening a stream beyond our
        SETTINGS_MAX_CONCURRENT_STREAMS is not a connection error (h2 raises
        TooManyStreamsError, closing the connection): the stream is opened
        and noted in C{over_limit}, and L{H2Protocol} refuses it with
        RST_STREAM REFUSED_STREAM (RFC 9113 §5.1.2), which a client may
        retry.  Its header block is still decoded (the HPACK table stays in
        step).

        A request opening a new stream (no PRIORITY flag) takes a shorter
        way with the same steps and results as h2's: the stream's own state
        machine inputs (RECV_HEADERS, RECV_END_STREAM) are applied from h2's
        transition table directly, without its per-input checks, header
        validation flags and generator pipeline (our configuration has
        h2's inbound normalization and validation off).
        """
        sid = frame.stream_id
        if not self._fast_headers or sid in self.streams or "PRIORITY" in frame.flags:
            return self._receive_headers_frame_h2(frame)
        return [], self._receive_request(sid, frame.data, "END_STREAM" in frame.flags)

    def _receive_request(self, sid: int, block: bytes, end: bool) -> list:
        """
        The fast path of L{_receive_headers_frame} (a HEADERS frame without
        PRIORITY, END_HEADERS, on stream C{sid} not in C{streams}): its
        events.
        """
        # (h2's order: the stream limit, decoding, the connection's input,
        # the new stream)
        if self.open_inbound_streams + 1 > self.local_settings.max_concurrent_streams:
            return self._receive_over_limit(sid, block, end)[1]
        headers = _decode_headers(self.decoder, block)
        events = self.state_machine.process_input(_RECV_HEADERS)
        stream = self._begin_new_stream(sid, self._inbound_ids)
        sm = stream.state_machine
        if sm.state is not _IDLE or is_informational_response(headers):
            return events + stream.receive_headers(
                headers, end, self.config.header_encoding)[1]
        # stream.receive_headers, for a request on an idle stream
        func, sm.state = _RECV_REQUEST
        try:
            # (RequestReceived, then StreamEnded)
            stream_events: list[Any] = func(sm, _IDLE)
            if end:
                previous = sm.state
                func, sm.state = _RECV_REQUEST_END
                ended = func(sm, previous)
                stream_events[0].stream_ended = ended[0]
                stream_events += ended
        except ProtocolError:  # pragma: no cover - (h2's own handling, kept)
            sm.state = StreamState.CLOSED
            raise
        stream._initialize_content_length(headers)
        stream_events[0].headers = list(headers)
        return events + stream_events

    def receive_data(self, data: Any) -> list[Any]:
        """
        h2's, with the frames at the start of C{data} that are requests'
        HEADERS (END_HEADERS, no PADDED or PRIORITY, within
        SETTINGS_MAX_FRAME_SIZE) on new client streams (L{_receive_request})
        or DATA frames within the frame size and the windows on open streams
        (L{_receive_body}) read directly (no frame objects), while nothing is
        buffered; the rest of C{data} goes to h2's.
        """
        buf = self.incoming_buffer
        fast_headers = self._fast_headers
        fast_data = self._fast_data
        if (not (fast_headers or fast_data) or buf._data or buf._preamble_len
                or buf._headers_buffer or data.__class__ is not bytes):
            return H2Connection.receive_data(self, data)
        events: list = []
        i = 0
        total = len(data)
        limit = self.max_inbound_frame_size
        try:
            while total - i >= 9:
                hi, lo, kind, flags, sid = _DATA_HEAD.unpack_from(data, i)
                n = (hi << 8) + lo
                sid &= 0x7FFFFFFF
                if n > limit or total - i - 9 < n:
                    break
                if kind == 0:
                    if not fast_data or flags & 0xFE:  # (END_STREAM only: no PADDED)
                        break
                    i += 9 + n  # (as h2's buffer, should it raise)
                    body = self._receive_body(sid, data, i - n, n, flags)
                    if body is None:
                        i -= 9 + n
                        break
                    events += body
                    continue
                if (kind != 1 or not fast_headers or flags & 0x2C != 0x4
                        or not sid & 1 or sid <= self.highest_inbound_stream_id):
                    # (an odd id above the highest opened is a new stream)
                    break
                i += 9 + n
                events += self._receive_request(sid, data[i - n:i], bool(flags & 0x1))
        except ProtocolError as e:
            buf.add_data(data[i:])  # (what h2's buffer would hold after that frame)
            self._terminate_connection(e.error_code)
            raise
        if i == total:
            return events
        if i:
            data = data[i:]
        return events + H2Connection.receive_data(self, data)

    def _receive_body(self, sid: int, data: bytes, at: int, n: int, flags: int):
        """
        The DATA frame on stream C{sid} whose C{n}-byte payload is at C{at} in
        C{data} (no PADDED flag, within SETTINGS_MAX_FRAME_SIZE), read as
        h2's C{_receive_data_frame} would, if it is one h2 accepts without
        error: its stream known, open or half-closed (local), its headers
        received, within the connection's and the stream's inbound windows
        and the stream's content-length.  Its events, or None (nothing
        changed: the frame is for h2's own path).

        The same steps in h2's order: the connection's RECV_DATA input, the
        connection's window consumed, the stream's RECV_DATA transition
        (DataReceived), its window consumed, the body length tracked, on
        END_STREAM the stream's RECV_END_STREAM transition (StreamEnded).
        """
        stream = self.streams.get(sid)
        if stream is None:
            return None
        sm = stream.state_machine
        state = sm.state
        # (by identity: an Enum's hash is a Python-level call)
        if state is _OPEN:
            transitions = _RECV_BODY_OPEN
        elif state is _HALF_CLOSED_LOCAL:
            transitions = _RECV_BODY_HALF_CLOSED
        else:
            return None
        if not sm.headers_received:
            return None
        conn_window = self._inbound_flow_control_window_manager
        stream_window = stream._inbound_window_manager
        if n > conn_window.current_window_size or n > stream_window.current_window_size:
            return None  # (FlowControlError)
        end = flags == 1
        actual = stream._actual_content_length + n
        expected = stream._expected_content_length
        if expected is not None and (actual > expected or end and actual != expected):
            return None  # (InvalidBodyLengthError)
        events = self.state_machine.process_input(_RECV_DATA)
        conn_window.current_window_size -= n
        (func, sm.state), end_transition = transitions
        received = func(sm, state)
        stream_window.current_window_size -= n
        stream._actual_content_length = actual
        event = received[0]
        if end:
            func, sm.state = end_transition
            ended = func(sm, state)
            event.stream_ended = ended[0]
            received += ended
        event.data = data[at:at + n]
        event.flow_controlled_length = n
        return events + received if events else received

    def _receive_headers_frame_h2(self, frame):
        """h2's C{_receive_headers_frame}, streams over the limit refused (above)."""
        try:
            return H2Connection._receive_headers_frame(self, frame)
        except TooManyStreamsError:
            # (raised before anything changed: the block is not decoded yet)
            return self._receive_over_limit(
                frame.stream_id, frame.data, "END_STREAM" in frame.flags)

    def _receive_over_limit(self, sid: int, block: bytes, end: bool):
        """A HEADERS frame opening a stream over the limit: opened, noted in C{over_limit}."""
        headers = _decode_headers(self.decoder, block)
        events = self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        stream = self._get_or_create_stream(
            sid, AllowedStreamIDs(not self.config.client_side))
        frames, stream_events = stream.receive_headers(
            headers, end, self.config.header_encoding)
        self.over_limit.add(sid)
        return frames, events + stream_events

    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None:
        """
        h2's, shorter when neither the connection's nor the (open) stream's
        window manager would give window back (no WINDOW_UPDATE: most
        acknowledgements, each under half a window): then all h2's does is
        add C{acknowledged_size} to both managers' processed bytes, as here.
        Anything else (a WINDOW_UPDATE due, a stream not in C{streams}, a
        bad argument) goes to h2's.
        """
        stream = self.streams.get(stream_id)
        conn_window = self._inbound_flow_control_window_manager
        if (stream is None or acknowledged_size < 0
                or _gives_window(conn_window, acknowledged_size)):
            return H2Connection.acknowledge_received_data(self, acknowledged_size, stream_id)
        if STREAM_OPEN[stream.state_machine.state]:
            stream_window = stream._inbound_window_manager
            if _gives_window(stream_window, acknowledged_size):
                return H2Connection.acknowledge_received_data(
                    self, acknowledged_size, stream_id)
            stream_window._bytes_processed += acknowledged_size
        conn_window._bytes_processed += acknowledged_size

    def send_data(self, stream_id: int, data, end_stream: bool = False,
                  pad_length=None) -> None:
        n = len(data)
        if (pad_length is not None or data.__class__ is not bytes or not n
                or n > self.max_outbound_frame_size
                or n > self.local_flow_control_window(stream_id)):
            return H2Connection.send_data(self, stream_id, data, end_stream, pad_length)
        self.state_machine.process_input(_SEND_DATA)
        stream = self.streams[stream_id]
        sm = stream.state_machine
        sm.process_input(_STREAM_SEND_DATA)
        if end_stream:
            sm.process_input(_STREAM_SEND_END)
        stream.outbound_flow_control_window -= n
        out = self._data_to_send
        out += _DATA_HEAD.pack(n >> 8, n & 0xFF, 0, 1 if end_stream else 0, stream_id)
        out += data
        self.outbound_flow_control_window -= n

    def send_remembered_head(self, stream_id: int) -> None:
        """
        Send the encoder's remembered response head (L{_MemoEncoder}: its
        block is valid now) on C{stream_id} as h2's C{send_headers} would (a
        final response, no END_STREAM): the same state machine inputs, the
        HEADERS frame written by hand.  A stream h2 does not have or a block
        over the frame size goes through h2's own C{send_headers}.
        """
        enc = self.encoder
        block = enc.memo_block
        n = len(block)
        stream = self.streams.get(stream_id)
        if stream is None or n > self.max_outbound_frame_size:
            enc.next_key = enc.memo_key
            self.send_headers(stream_id, enc.memo_fields)
            return
        self.state_machine.process_input(_SEND_HEADERS)
        stream.state_machine.process_input(_STREAM_SEND_HEADERS)
        stream.request_method = None  # (h2 takes it from the block sent: none in a response)
        out = self._data_to_send
        out += _HEADERS_HEAD.pack(n >> 8, n & 0xFF, 1, 0x4, stream_id)  # END_HEADERS
        out += block
