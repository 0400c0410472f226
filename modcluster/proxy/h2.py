"""
HTTP/2 to clients (RFC 9113) on C{ssl:} listeners, negotiated by ALPN, and
with prior knowledge (h2c) on plain listeners.

L{modcluster.proxy.alpn.NegotiatingFactory} hands an C{ssl:} connection to
an L{H2Protocol} when the client selected C{h2} by ALPN; with C{[proxy] h2c}
a plain connection that starts with the connection preface is handed over by
its L{ClientProtocol<modcluster.proxy.client.ClientProtocol>} (C{_h2c}).  The header fields
and the C{h2} connection it drives are in L{modcluster.proxy.h2conn}.

L{H2Protocol} drives the C{h2} (python-hyper) state machine.  Every request
stream becomes an L{_H2Exchange}: an L{_Exchange} (the front's request, with
its routing, stickiness, failover, retries and counters, unchanged) whose
client side is the stream instead of an HTTP/1.1 connection.  Forwarders
(HTTP/1.1 and AJP to nodes) see the same L{IExchange} as for HTTP/1.1.

Flow control is wired to backpressure both ways:

 - response: DATA is sent within the stream and connection windows; what does
   not fit waits in the stream, and above L{STREAM_BUFFER} bytes waiting (or
   while the client's TCP buffer is full) the node connection is paused
   (C{upstream.pauseResponse()});
 - request: received DATA is acknowledged (WINDOW_UPDATE) only once it was
   handed to the node connection while that connection was accepting; a
   stream whose node is not reading gets no window, so the client stops.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import TYPE_CHECKING, Optional

from h2.config import H2Configuration
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from modcluster.accesslog import text
from modcluster.proxy._transport import IStreamTransport, direct_writer
from modcluster.proxy.exchange import _P_UPGRADE, _Exchange
from modcluster.proxy.h2conn import (
    _BAD_VALUE,
    _NAME,
    _H2Connection,
    _Malformed,
    _MemoDecoder,
    _MemoEncoder,
    _response_fields,
    request_fields,
)
from modcluster.proxy.headers import TRAILER_DROP, reason_phrase
from modcluster.proxy.interfaces import IDEMPOTENT_METHODS, ClientInfo

__all__ = ["H2Protocol", "STREAM_BUFFER"]

log = Logger(namespace="modcluster.proxy.h2")

#: Response bytes a stream holds (not yet within the client's windows) before
#: its node connection is paused; it is resumed below half of it.
STREAM_BUFFER = 64 * 1024
#: Abuse budget: a client-cancelled or refused stream costs this many tokens, a
#: PING, SETTINGS, PRIORITY or empty DATA frame one.
RESET_COST = 10

_HEAD = b"HEAD"
_CONTINUE = b"100-continue"
_WEBSOCKET = b"websocket"
#: RFC 6455 §1.3
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: a client's fields replaced by ours in the node's WebSocket handshake
_WS_HANDSHAKE = frozenset((b"sec-websocket-key", b"sec-websocket-accept"))


class _H2Exchange(_Exchange):
    """
    One HTTP/2 request stream: an L{_Exchange} that is its own client side
    (C{proto}), framing responses as HTTP/2 on stream C{sid} of C{conn}.
    """

    __slots__ = ("factory", "conn", "sid", "_blocked", "_pause", "unacked", "pending",
                 "pending_len", "out_end", "closed", "end_of_request", "seen", "_observer",
                 "trailers", "request_trailers")
    #: the access log names the client side's protocol (httpd's %r), not the
    #: HTTP/1.1 forwarded to the node
    log_version = "2.0"

    def __init__(self, conn: "H2Protocol", sid: int) -> None:
        self.client = conn.client
        self.factory = conn.factory
        self._observer = conn._observer  # access log, client metrics (or None)
        _Exchange.__init__(self, self)
        self.conn = conn
        self.sid = sid
        self._blocked = conn._blocked  # the node connection is paused
        self._pause = 0  # why the request body is not acknowledged (front's _P_* bits)
        self.unacked = 0  # flow-controlled bytes received and not acknowledged
        self.pending: list = []  # response bytes waiting for window
        self.pending_len = 0
        self.out_end = False  # the response is complete (END_STREAM once pending is sent)
        self.closed = False  # the stream is over on our side
        self.end_of_request = False  # the client sent END_STREAM
        self.seen = conn.factory.now  # last DATA received or sent (coarse clock)
        #: response trailer fields (sent after the last DATA)
        self.trailers: Optional[list] = None
        #: the client's trailer section, for a chunked request to a node
        self.request_trailers: Optional[bytes] = None

    # The exchange is its own client side.  A property, not the inherited slot:
    # a slot holding the exchange itself would be a reference cycle per stream,
    # leaving every finished request (and through C{conn} its connection) to
    # the cyclic GC instead of reference counting.
    @property
    def proto(self) -> "_H2Exchange":
        return self

    @proto.setter
    def proto(self, value) -> None:  # (set by _Exchange.__init__: always self)
        pass

    # -- the "client protocol" side the _Exchange calls --------------------------

    def _pauseReading(self, why: int) -> None:
        self._pause |= why

    def _resumeReading(self, why: int) -> None:
        if self._pause & why:
            self._pause &= ~why
            if not self._pause and self.unacked:
                n = self.unacked
                self.unacked = 0
                conn = self.conn
                conn._ack(self.sid, n)
                conn._write()

    def _flush(self) -> None:
        self.conn._flush()

    def _routingBug(self, ex) -> None:
        log.failure("bug while routing {method} {target}", method=self.method,
                    target=self.target)
        if self.resp_started:
            self._abortClient()
        else:
            self._respondError(self, 500, "internal error")

    def _abortClient(self) -> None:
        """Give up on the stream (response cut off): RST_STREAM INTERNAL_ERROR."""
        if not self.done:
            _Exchange.abort(self)
        self.conn._resetStream(self, ErrorCodes.INTERNAL_ERROR)

    def _respondError(self, ex, status: int, message: str, retry_after: int = 0) -> None:
        if self.closed:
            return
        if self.wait_call is not None and self.wait_call.active():
            self.wait_call.cancel()
        self.wait_call = None
        self.detach()
        obs = self._observer
        if self.resp_started:
            if obs is not None:
                obs.done(self, self.status, self.sent)
            self.conn._resetStream(self, ErrorCodes.INTERNAL_ERROR)
            return
        self.resp_started = True
        self.status = status
        client = self.client
        # one line per error response, rate-limited per status as for HTTP/1.1
        self.factory.limiter.emit(
            status, LogLevel.warn if status >= 500 else LogLevel.info,
            "{status} for {method} {target} from {client} (HTTP/2): {message}",
            status=status, method=text(self.method) or "-", target=text(self.target) or "-",
            client=client.remote_addr if client else "?", message=message)
        body = b"%d %s: %s\n" % (status, reason_phrase(status),
                                 message.encode("utf-8", "replace"))
        fields = [(b":status", b"%d" % status), (b"date", self.factory.date),
                  (b"content-type", b"text/plain; charset=utf-8"),
                  (b"content-length", b"%d" % len(body))]
        if status == 503 and retry_after > 0:
            fields.append((b"retry-after", b"%d" % retry_after))
        if obs is not None:
            obs.done(self, status, 0 if self.method == _HEAD else len(body))
        conn = self.conn
        try:
            conn.h2.send_headers(self.sid, fields)
        except H2Error:
            conn._resetStream(self, ErrorCodes.INTERNAL_ERROR)
            return
        if self.method != _HEAD:
            self.pending.append(body)
            self.pending_len += len(body)
        self.out_end = True
        conn._ready[self] = None
        conn._flush()

    def _exchangeDone(self, ex, close: bool) -> None:  # pragma: no cover - not used
        pass

    def _startTunnel(self, ex) -> None:  # pragma: no cover - HTTP/1.1's (see _H2Tunnel)
        pass

    # -- response from the forwarder ------------------------------------------------

    def responseInformational(self, status: int, reason: bytes, headers) -> None:
        if self.done or self.resp_started or self.closed:
            return
        try:
            self.conn.h2.send_headers(self.sid, _response_fields(status, headers))
        except H2Error:
            pass

    def responseHead(self, status: int, reason: bytes, headers, length: int) -> None:
        if self.done or self.resp_started or self.closed:
            return
        self.resp_started = True
        self.status = status
        obs = self._observer
        if obs is not None:
            self.upstream_time = obs.clock() - self.up_start
        d = self.decision
        if TYPE_CHECKING:  # a response comes from an attempt
            assert d is not None
        node = d.node
        if d.retrying or node.rt.in_error:
            self.factory.on_node_success(node.route)
        if self.method == _HEAD or status == 204 or status == 304:
            self.no_body = True
        h2 = self.conn.h2
        if headers.__class__ is bytes:
            # a repeated head (same status and bytes) reuses its HPACK block
            # (_MemoEncoder) while the dynamic table allows
            enc = h2.encoder
            key = (status, headers)
            if key == enc.memo_key and not enc.table_size_changes and status >= 200:
                try:
                    h2.send_remembered_head(self.sid)
                except H2Error as e:
                    enc.next_key = None
                    log.warn("response head from node {route} not sendable over HTTP/2: {e}",
                             route=node.route, e=e)
                    self._abortClient()
                return
            fields = _response_fields(status, headers)
            enc.next_key = key
        else:
            fields = _response_fields(status, headers)
        try:
            h2.send_headers(self.sid, fields)
        except H2Error as e:
            h2.encoder.next_key = None  # (raised before encoding)
            log.warn("response head from node {route} not sendable over HTTP/2: {e}",
                     route=node.route, e=e)
            self._abortClient()

    def responseWhole(self, whole, body: bytes) -> None:
        self.upstream = None  # (the forwarder let go: nothing to pause or abort)
        self.responseHead(whole.status, whole.reason, whole.headers, len(body))
        self.responseBody(body)
        self.responseEnd()

    def responseBody(self, data: bytes) -> None:
        if self.done or not data or self.no_body or self.closed:
            return
        self.sent += len(data)
        self.pending.append(data)
        self.pending_len += len(data)
        self.conn._ready[self] = None
        if self.pending_len >= STREAM_BUFFER and not self._blocked:
            self._blocked = True
            up = self.upstream
            if up is not None:
                up.pauseResponse()

    def responseTrailers(self, block: bytes) -> None:
        if self.done or self.closed or self.no_body:
            return
        fields = _response_fields(0, block)
        del fields[0]  # (no :status in trailers)
        if fields:
            self.trailers = fields

    def responseEnd(self) -> None:
        if self.done:
            return
        self.done = True
        self.upstream = None
        self._release()
        obs = self._observer
        if obs is not None:
            obs.done(self, self.status, 0 if self.no_body else self.sent)
        if self.closed:
            return
        self.out_end = True
        conn = self.conn
        conn._ready[self] = None
        conn._flush()

    def _send(self) -> bool:
        """Send what the windows allow; True when nothing is left waiting."""
        h2 = self.conn.h2
        sid = self.sid
        pending = self.pending
        try:
            if pending:
                window = h2.local_flow_control_window(sid)
                frame = h2.max_outbound_frame_size
                while pending and window > 0:
                    chunk = pending[0]
                    n = len(chunk)
                    size = min(window, frame)
                    if n > size:
                        pending[0] = chunk[size:]
                        chunk = chunk[:size]
                        n = size
                    else:
                        pending.pop(0)
                    window -= n
                    self.pending_len -= n
                    self.seen = self.factory.now
                    if self.out_end and not pending and self.trailers is None:
                        h2.send_data(sid, chunk, end_stream=True)
                        self._finished()
                        return True
                    h2.send_data(sid, chunk)
            if not pending and self.out_end:
                if self.trailers is not None:
                    # the node's trailer section: a trailing HEADERS frame
                    # with END_STREAM (RFC 9113 §8.1)
                    h2.send_headers(sid, self.trailers, end_stream=True)
                else:
                    h2.end_stream(sid)
                self._finished()
                return True
        except H2Error:
            # the stream was closed under us (reset by the client, GOAWAY)
            self.pending = []
            self.pending_len = 0
            self._finished()
            return True
        if self._blocked and self.pending_len < STREAM_BUFFER // 2 and not self.conn._blocked:
            self._blocked = False
            up = self.upstream
            if up is not None:
                up.resumeResponse()
        return not pending

    def _finished(self) -> None:
        """Our side of the stream is over (END_STREAM sent or reset)."""
        if self.closed:
            return
        self.closed = True
        conn = self.conn
        if not self.end_of_request:
            # answered before the whole request body came: tell the client to
            # stop sending it (RFC 9113 §8.1)
            try:
                conn.h2.reset_stream(self.sid, ErrorCodes.NO_ERROR)
            except H2Error:
                pass
            if self.unacked:
                # what was received while paused and never acknowledged goes
                # back to the connection's window (else lost for good)
                n, self.unacked = self.unacked, 0
                conn._ack(self.sid, n)
        conn._streamClosed(self)


class _H2Tunnel(_H2Exchange):
    """
    An extended CONNECT stream (RFC 8441): routed and forwarded as the
    HTTP/1.1 Upgrade request it stands for (C{GET}, C{Connection: Upgrade},
    C{Upgrade: <:protocol>}, for WebSocket a C{Sec-WebSocket-Key} of ours:
    HTTP/2 has no key nor accept, §5), the node's C{101} answered with
    C{:status 200}, then the stream's DATA and the node connection's bytes
    relayed both ways under flow control; another answer is relayed as a
    response and ends the stream (a 2xx other than 101, which the client
    would take for an open tunnel, becomes 502).  Until the node's C{101}
    the stream's DATA is held, unacknowledged (C{_P_UPGRADE}: bounded by
    the stream window), as the HTTP/1.1 front holds bytes after an Upgrade
    request head: a node that refuses never reads them as a request.
    """

    __slots__ = ("protocol", "early", "accept")

    def __init__(self, conn: "H2Protocol", sid: int, protocol: bytes) -> None:
        _H2Exchange.__init__(self, conn, sid)
        #: the client's :protocol
        self.protocol = protocol
        #: DATA received before the node's 101
        self.early: Optional[list] = None
        #: the Sec-WebSocket-Accept the node must answer with (WebSocket only)
        self.accept: Optional[bytes] = None
        self._pause = _P_UPGRADE  # nothing acknowledged before the 101

    def _bodyData(self, data: bytes) -> None:
        if self.tunnel:
            _Exchange._bodyData(self, data)
        elif self.early is None:
            self.early = [data]
        else:
            self.early.append(data)

    def _bodyEnd(self) -> None:
        """The client's END_STREAM: the FIN of the tunnelled connection (§5)."""
        self.body_done = True
        if self.tunnel:
            self._halfClose()

    def _halfClose(self) -> None:
        close = getattr(self.upstream, "halfClose", None)  # (NodeProtocol's)
        if close is not None:
            close()

    def responseHead(self, status: int, reason: bytes, headers, length: int) -> None:
        if self.done or self.resp_started or self.closed:
            return
        if status == 101:
            self._switched(reason, headers)
            return
        self.early = None  # refused: never sent to the node
        if 200 <= status < 300:
            d = self.decision
            if TYPE_CHECKING:  # a response comes from an attempt
                assert d is not None
            self._respondError(self, 502, f"node {d.node.route} answered {status} to an "
                                          f"Upgrade to {text(self.upgrade_token)}, not 101")
            return
        _H2Exchange.responseHead(self, status, reason, headers, length)

    def _switched(self, reason: bytes, headers) -> None:
        """The node's 101: our 200, then the tunnel."""
        fields = []
        accept = None
        for name, value in _response_fields(101, headers)[1:]:
            if name == b"sec-websocket-accept":
                accept = value
            elif name != b"content-length":  # (none in a 2xx to CONNECT: RFC 9110 §9.3.6)
                fields.append((name, value))
        if self.accept is not None and accept != self.accept:
            d = self.decision
            if TYPE_CHECKING:  # a response comes from an attempt
                assert d is not None
            self._respondError(self, 502, f"node {d.node.route}: 101 without the "
                                          "Sec-WebSocket-Accept of our key")
            return
        self.tunnel = True
        _H2Exchange.responseHead(self, 200, reason, fields, -1)
        if self.closed:
            return  # (the head could not be sent: reset)
        # logged and counted as the HTTP/1.1 front's tunnel is: the node's 101
        self.status = 101
        early, self.early = self.early, None
        if early:
            for chunk in early:
                _Exchange._bodyData(self, chunk)
        if self.end_of_request:
            self._halfClose()
        self._resumeReading(_P_UPGRADE)


@implementer(IPushProducer, IHalfCloseableProtocol)
class H2Protocol(Protocol):
    """
    One HTTP/2 client connection.  Registered with the factory's clients, so
    the sweep's timeouts apply; its transport's push producer, so a client
    that does not read pauses every node connection feeding it.
    """

    # Set by makeConnection before any other method is called (annotated
    # only: no class attribute).
    transport: IStreamTransport

    def __init__(self, factory) -> None:
        self.factory = factory
        cfg = factory.config
        self.h2 = _H2Connection(H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=False,
            normalize_inbound_headers=False, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        self.h2.encoder = _MemoEncoder()
        self.h2.decoder = _MemoDecoder(self.h2.decoder.max_header_list_size)
        self.streams: dict[int, _H2Exchange] = {}
        self._ready: dict = {}  # exchanges with response bytes or an end to send
        self._blocked = False
        self._blocked_since = 0.0
        self._seen = factory.now
        self._going_away = False
        self._calm_rate = cfg.http2_max_resets * RESET_COST
        self._calm = float(self._calm_rate)
        self._calm_at = factory.now
        self.client: Optional[ClientInfo] = None
        self._closing = False
        self._observer = getattr(factory, "observer", None)
        #: extended CONNECT (RFC 8441) offered: SETTINGS_ENABLE_CONNECT_PROTOCOL
        #: sent, :protocol accepted (WebSocket tunnels are on)
        self._extended = bool(getattr(factory, "tunnel", False))

    # -- connection ---------------------------------------------------------------

    def connectionMade(self) -> None:
        t = self.transport
        peer = t.getPeer()
        self.client = ClientInfo(getattr(peer, "host", "") or "", getattr(peer, "port", 0) or 0,
                                 secure=ISSLTransport.providedBy(t), transport=t)
        cfg = self.factory.config
        h2 = self.h2
        # our SETTINGS, in force from the start (the client cannot exceed the
        # defaults before it has them)
        h2.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: cfg.http2_max_concurrent_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: cfg.http2_window,
            SettingCodes.MAX_HEADER_LIST_SIZE: cfg.max_header_size,
            SettingCodes.ENABLE_PUSH: 0,
            SettingCodes.ENABLE_CONNECT_PROTOCOL: 1 if self._extended else 0,
        })
        h2.decoder.max_header_list_size = cfg.max_header_size
        h2.initiate_connection()
        extra = cfg.http2_window * cfg.http2_max_concurrent_streams - 65535
        if extra > 0:
            h2.increment_flow_control_window(min(extra, 2**31 - 1 - 65535))
        t.registerProducer(self, True)
        #: writes to the transport: straight to the socket while nothing is
        #: buffered on a plain TCP transport (h2c), as the HTTP/1.1 front and
        #: the TLS layer under h2 write (L{direct_writer}).  Through Twisted's
        #: write each one waited for writability, and a write beyond its
        #: buffer size (a 64 KiB response) paused this producer, and with it
        #: every stream's node connection, until it was sent.
        self._writer = direct_writer(t)
        self.factory._clients.add(self)
        stats = getattr(self.factory, "stats", None)
        if stats is not None:  # as ClientProtocol counts (the handshake is done)
            stats.connections += 1
            stats.open += 1
            if self.client.secure:  # (not h2c: ClientProtocol._h2c)
                stats.tls_handshakes += 1
        self._write()

    def connectionLost(self, reason=None) -> None:
        self.connected = 0
        self._closing = True
        f = self.factory
        if self in f._clients:
            f._clients.discard(self)
            stats = getattr(f, "stats", None)
            if stats is not None:
                stats.open -= 1
        streams = list(self.streams.values())
        self.streams.clear()
        self._ready.clear()
        for ex in streams:
            ex.closed = True
            if not ex.done:
                _Exchange.abort(ex)

    def readConnectionLost(self) -> None:
        """
        L{IHalfCloseableProtocol}: the client ended its sending (its TLS
        C{close_notify}, or its FIN).  The streams whose request it sent
        whole are answered, as the HTTP/1.1 front answers complete requests;
        the others can never be complete: their node request is aborted and
        they get C{RST_STREAM} C{CANCEL}.  Then a GOAWAY (C{NO_ERROR}) and
        the close after the last stream (at once when none is left).  The
        client sends no C{WINDOW_UPDATE} any more: an answer larger than its
        windows waits for one until the send timeout cuts its stream.
        """
        if self._closing or not self.connected:
            return
        for ex in list(self.streams.values()):
            if not ex.end_of_request:
                if not ex.done:
                    _Exchange.abort(ex)  # the node request, its counters released
                self._resetStream(ex, ErrorCodes.CANCEL)
        if not self._closing:
            self.goAway()
        if not self._closing and not self.streams:
            self._close()

    def writeConnectionLost(self) -> None:
        """L{IHalfCloseableProtocol}: our sending side is shut (not done for HTTP/2)."""

    def _write(self) -> None:
        data = self.h2.data_to_send()
        if data and self.connected:
            self._writer(data)

    def _flush(self) -> None:
        ready = self._ready
        if ready:
            for ex in list(ready):
                if ex._send():
                    ready.pop(ex, None)
        self._write()

    # -- IPushProducer (the client's TCP buffer) ----------------------------------------

    def pauseProducing(self) -> None:
        if self._blocked:
            return
        self._blocked = True
        self._blocked_since = self.factory.now
        # stop reading too: nothing (PING or SETTINGS acknowledgements either)
        # piles up for a client that does not read
        self.transport.pauseProducing()
        for ex in self.streams.values():
            if not ex._blocked:
                ex._blocked = True
                if ex.upstream is not None:
                    ex.upstream.pauseResponse()

    def resumeProducing(self) -> None:
        if not self._blocked:
            return
        self._blocked = False
        if self.connected and not self._closing:
            self.transport.resumeProducing()
        for ex in list(self.streams.values()):
            if ex._blocked and ex.pending_len < STREAM_BUFFER // 2:
                ex._blocked = False
                if ex.upstream is not None:
                    ex.upstream.resumeResponse()

    def stopProducing(self) -> None:
        pass

    # -- input ----------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._seen = self.factory.now
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as e:
            # h2 queued a GOAWAY with the error code (PROTOCOL_ERROR,
            # ENHANCE_YOUR_CALM for a CONTINUATION flood or an oversized header
            # list, FLOW_CONTROL_ERROR, …)
            if TYPE_CHECKING:  # set by connectionMade, before any frame
                assert self.client is not None
            self.factory.limiter.emit(
                "h2 protocol error", LogLevel.info, "HTTP/2 client {client}: {error}; closing",
                client=self.client.remote_addr, error=str(e) or e.__class__.__name__)
            self._fail()
            return
        for ev in events:
            if self._closing:
                return
            cls = ev.__class__
            if cls is DataReceived:
                self._data(ev)
            elif cls is RequestReceived:
                self._request(ev)
            elif cls is StreamEnded:
                if TYPE_CHECKING:
                    assert isinstance(ev, StreamEnded)
                ex = self.streams.get(ev.stream_id)
                if ex is not None:
                    self._requestEnded(ex)
            elif cls is WindowUpdated or cls is RemoteSettingsChanged:
                if cls is RemoteSettingsChanged:
                    self._charge(1)
                self._flush()
            elif cls is StreamReset:
                self._reset(ev)
            elif cls is TrailersReceived:
                # the end of the stream comes as StreamEnded, after this
                self._trailers(ev)
            elif cls is PingReceived or cls is PriorityUpdated:
                self._charge(1)
            elif cls is ConnectionTerminated:
                # the client's GOAWAY: h2 sends nothing more after it
                self._close()
                return
        if not self._closing:
            self._flush()

    def _request(self, ev) -> None:
        sid = ev.stream_id
        ended = ev.stream_ended is not None
        over = self.h2.over_limit
        if over and sid in over:
            # beyond SETTINGS_MAX_CONCURRENT_STREAMS: refused, the client may
            # retry it (RFC 9113 §5.1.2); it costs the abuse budget as a reset
            over.discard(sid)
            self.factory.limiter.emit(
                "h2 refused stream", LogLevel.info,
                "HTTP/2 client {client}: stream over SETTINGS_MAX_CONCURRENT_STREAMS "
                "refused", client=self.client.remote_addr if self.client is not None else "?")
            self._refuse(sid, ErrorCodes.REFUSED_STREAM)
            self._charge(RESET_COST)
            return
        if self._going_away:
            self._refuse(sid, ErrorCodes.REFUSED_STREAM)
            return
        try:
            (method, scheme, path, authority, fields, length, cookies, expect,
             x_forwarded, protocol) = request_fields(ev.headers, self._extended)
        except _Malformed as e:
            if TYPE_CHECKING:  # set by connectionMade, before any frame
                assert self.client is not None
            self.factory.limiter.emit(
                "h2 malformed request", LogLevel.info,
                "HTTP/2 client {client}: malformed request: {why}",
                client=self.client.remote_addr, why=str(e))
            self._charge(RESET_COST)
            self._refuse(sid, ErrorCodes.PROTOCOL_ERROR)
            return
        ex = _H2Exchange(self, sid) if protocol is None else _H2Tunnel(self, sid, protocol)
        self.streams[sid] = ex
        ex.method = method
        ex.idempotent = method in IDEMPOTENT_METHODS
        ex.host = authority
        ex.x_forwarded = x_forwarded
        if cookies is not None:
            fields.append((b"cookie", cookies[0]))
            ex.cookies = cookies
        ex.headers = fields
        if protocol is not None:
            if TYPE_CHECKING:
                assert isinstance(ex, _H2Tunnel)
            self._connect(ex, path, length, ended)
            return
        if ended and length:
            self._charge(RESET_COST)
            self._refuse(sid, ErrorCodes.PROTOCOL_ERROR)
            del self.streams[sid]
            return
        if ended:
            ex.end_of_request = True
            ex.body_done = True
            ex.body_length = None if not length else length
        else:
            ex.body_length = -1 if length is None else length
        if expect is not None and not ended:
            if expect.lower() == _CONTINUE:
                ex.expect_continue = bool(ex.body_length)
            else:
                ex._respondError(ex, 417, "unsupported Expect")
                return
        cfg = self.factory.config
        ex.target = path or b""
        if method == b"CONNECT":
            ex._respondError(ex, 405, "CONNECT is not supported")
            return
        if len(path) > cfg.max_header_size:
            ex._respondError(ex, 414, "request target too long")
            return
        if authority is None:
            ex._respondError(ex, 400, "request without :authority or Host")
            return
        q = path.find(b"?")
        if q >= 0:
            ex.query = path[q + 1:]
            path = path[:q]
        ex.path = path.decode("utf-8", "surrogateescape")
        if (length and cfg.max_request_body and length > cfg.max_request_body):
            ex._respondError(ex, 413, "request body larger than max_request_body")
            return
        try:
            ex.route()
        except Exception:
            ex._routingBug(ex)

    def _connect(self, ex: _H2Tunnel, path: bytes, length: Optional[int], ended: bool) -> None:
        """
        An extended CONNECT (RFC 8441) on this connection, which offered it:
        checked, then routed like any request for its Host and path, as the
        HTTP/1.1 Upgrade request the node gets (the HTTP/1.1 front's
        C{tunnel_candidate}: to an AJP node the Upgrade is dropped).
        """
        f = self.factory
        cfg = f.config
        ex.target = path
        ex.method = b"GET"  # (forwarded, logged and counted as such, as for HTTP/1.1)
        ex.idempotent = True
        if ended:
            ex.end_of_request = True
            ex.body_done = True
        if ended or length is not None:
            ex._respondError(ex, 400, "extended CONNECT with a request body or END_STREAM")
            return
        token = f.upgrade_match(ex.protocol) if f.tunnel else None
        if token is None:
            ex._respondError(ex, 501, f"no tunnel for :protocol {text(ex.protocol)}")
            return
        if len(path) > cfg.max_header_size:
            ex._respondError(ex, 414, "request target too long")
            return
        if ex.host is None:
            ex._respondError(ex, 400, "request without :authority or Host")
            return
        q = path.find(b"?")
        if q >= 0:
            ex.query = path[q + 1:]
            path = path[:q]
        ex.path = path.decode("utf-8", "surrogateescape")
        ex.upgrade_token = token
        ex.tunnel_candidate = True
        ex.body_length = None
        if token.lower() == _WEBSOCKET:
            key = base64.b64encode(os.urandom(16))
            ex.accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
            ex.headers = [field for field in ex.headers if field[0] not in _WS_HANDSHAKE]
            ex.headers.append((b"sec-websocket-key", key))
        try:
            ex.route()
        except Exception:
            ex._routingBug(ex)

    def _data(self, ev) -> None:
        sid = ev.stream_id
        n = ev.flow_controlled_length
        data = ev.data
        ex = self.streams.get(sid)
        if ex is None or ex.done or ex.end_of_request:
            if n:
                self._ack(sid, n)
            if ex is not None and ev.stream_ended is not None:
                self._requestEnded(ex)
            return
        if not data and ev.stream_ended is None:
            self._charge(1)  # empty DATA frames flood (CVE-2019-9518)
        ex.seen = self.factory.now
        ex.body_received += len(data)
        limit = self.factory.config.max_request_body
        if limit and ex.body_received > limit and not ex.tunnel_candidate:
            self._ack(sid, n)
            ex._respondError(ex, 413, "request body larger than max_request_body")
            return
        if data:
            ex._bodyData(data)
        if n:
            # acknowledged (window given back) only while the stream is not
            # paused: the node connection is accepting, or what waits for it
            # is under BODY_BUFFER
            if ex._pause:
                ex.unacked += n
            else:
                self._ack(sid, n)

    def _trailers(self, ev) -> None:
        """
        The client's trailing HEADERS: kept for the node as the trailer
        section of a chunked request body (HTTP nodes; a request with a
        content-length, or to an AJP node, cannot carry them: dropped).
        Pseudo-headers, fields not allowed in trailers and malformed fields
        are left out.
        """
        ex = self.streams.get(ev.stream_id)
        if ex is None or ex.done or ex.body_length != -1:
            return
        lines = []
        for name, value in ev.headers:
            if (name in TRAILER_DROP or _NAME.match(name) is None
                    or _BAD_VALUE.search(value) is not None):
                continue
            lines.append(b"%s: %s\r\n" % (name, value.strip(b" \t")))
        if lines:
            ex.request_trailers = b"".join(lines)

    def _requestEnded(self, ex: _H2Exchange) -> None:
        if ex.end_of_request:
            return
        ex.end_of_request = True
        if ex.unacked:
            n, ex.unacked = ex.unacked, 0
            self._ack(ex.sid, n)
        if not ex.done:
            ex._bodyEnd()

    def _ack(self, sid: int, n: int) -> None:
        try:
            self.h2.acknowledge_received_data(n, sid)
        except H2Error:
            pass

    def _reset(self, ev) -> None:
        ex = self.streams.pop(ev.stream_id, None)
        if ev.remote_reset:
            self._charge(RESET_COST)
        if ex is None:
            return
        ex.closed = True
        self._ready.pop(ex, None)
        if ex.unacked:
            n, ex.unacked = ex.unacked, 0
            self._ack(ex.sid, n)
        if not ex.done:
            _Exchange.abort(ex)  # the node request is aborted, its counters released
        self._maybeGone()

    def _refuse(self, sid: int, code) -> None:
        try:
            self.h2.reset_stream(sid, code)
        except H2Error:
            pass

    def _resetStream(self, ex: _H2Exchange, code) -> None:
        if ex.closed:
            return
        ex.closed = True
        self._ready.pop(ex, None)
        self._refuse(ex.sid, code)
        if ex.unacked:
            n, ex.unacked = ex.unacked, 0
            self._ack(ex.sid, n)
        self._streamClosed(ex)
        self._write()

    def _streamClosed(self, ex: _H2Exchange) -> None:
        self.streams.pop(ex.sid, None)
        self._maybeGone()

    def _maybeGone(self) -> None:
        if self._going_away and not self.streams and not self._closing:
            self._flush()
            self._close()

    # -- limits ---------------------------------------------------------------------

    def _charge(self, cost: int) -> None:
        """Spend C{cost} tokens of the abuse budget; overdrawn: ENHANCE_YOUR_CALM."""
        now = self.factory.now
        if now != self._calm_at:
            self._calm = min(float(self._calm_rate),
                             self._calm + (now - self._calm_at) * self._calm_rate)
            self._calm_at = now
        self._calm -= cost
        if self._calm < 0 and not self._closing:
            if TYPE_CHECKING:  # set by connectionMade, before any frame
                assert self.client is not None
            self.factory.limiter.emit(
                "h2 calm", LogLevel.warn,
                "HTTP/2 client {client} resets streams or sends control frames too fast; "
                "GOAWAY ENHANCE_YOUR_CALM", client=self.client.remote_addr)
            try:
                self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
            except H2Error:
                pass
            self._fail()

    def _fail(self) -> None:
        """Send what h2 queued (its GOAWAY) and close; every stream is aborted."""
        self._write()
        self._close()

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self.connected:
            # TLS waits for a registered producer to go before it closes
            self.transport.unregisterProducer()
            self.transport.loseConnection()
        streams = list(self.streams.values())
        self.streams.clear()
        self._ready.clear()
        for ex in streams:
            ex.closed = True
            if not ex.done:
                _Exchange.abort(ex)

    def goAway(self) -> None:
        """
        Graceful shutdown: GOAWAY (NO_ERROR) naming the last stream served;
        streams already open finish, then the connection is closed.
        """
        if self._going_away or self._closing or not self.connected:
            return
        self._going_away = True
        # h2's close_connection() would refuse to send anything more on open
        # streams: the frame is written after h2's pending output instead.
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.h2.highest_inbound_stream_id
        frame.error_code = 0
        self._flush()
        self._writer(frame.serialize())
        self._maybeGone()

    def drain(self) -> int:
        """
        Stopping (L{ProxyFactory.drain}): GOAWAY; 1 while streams are open
        (the connection closes after the last one), else 0 (closed now).
        """
        self.goAway()
        if self._going_away and self.streams and not self._closing:
            return 1
        if not self._closing:
            self._close()
        return 0

    # -- timeouts (the factory's sweep) ------------------------------------------------

    def checkTimeout(self, now: float, limit: float) -> None:
        limit += 1.0  # coarse clock: never early
        if self._blocked:
            if now - self._blocked_since > limit:
                self._timedOut("send", f"HTTP/2: did not read for {limit:g} s", now)
                self._closing = True
                self.transport.abortConnection()
            return
        if not self.streams:
            if now - self._seen > limit:
                self.goAway()
                if not self._closing:
                    self._close()
            return
        for ex in list(self.streams.values()):
            # a stream waiting for the client: request body not all received
            # (and not held back by us), or response bytes waiting for window
            if ((not ex.end_of_request and not ex._pause and not ex.tunnel) or ex.pending_len) \
                    and now - ex.seen > limit:
                if ex.pending_len:
                    self._timedOut("send", f"HTTP/2 stream {ex.sid}: no window for "
                                   f"{limit:g} s", now)
                else:
                    self._timedOut("body", f"HTTP/2 stream {ex.sid}: request body stalled "
                                   f"for {limit:g} s", now)
                if not ex.resp_started and not ex.done:
                    ex._respondError(ex, 408, "request body not received in time")
                else:
                    ex._abortClient()

    def _timedOut(self, reason: str, what: str, now: float) -> None:
        """Count (and log, rate-limited) a client cut, as the HTTP/1.1 front does."""
        timeouts = getattr(self.factory, "timeouts", None)
        if timeouts is not None:
            if TYPE_CHECKING:  # set by connectionMade, before the sweep knows us
                assert self.client is not None
            timeouts.timedOut(reason, self.client.remote_addr, what, now)
