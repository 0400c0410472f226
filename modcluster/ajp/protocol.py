"""
One AJP13 backend connection, client (proxy) side.

L{AJPClientProtocol} is thin: framing and decoding are in
L{modcluster.ajp.packets}; this module holds the per-connection state machine
(idle -> request -> response -> idle), request body flow control driven by the
container's GET_BODY_CHUNK, CPING/CPONG, the read timeout and the reuse
decision.  Results go to an L{IAJPResponseReceiver}; no Deferred is created per
request (only L{AJPClientProtocol.cping} returns one).

Typical use by a forwarder::

    body = proto.sendRequest(forwardRequest, receiver, bodyLength=None)
    body.registerProducer(clientTransport, True)   # paused when the container lags
    body.write(chunk) ...; body.finish()
    # receiver: requestWritten, headReceived, bodyReceived*, readComplete*,
    #           then responseEnded or responseFailed
    clientRequest.registerProducer(proto, True)     # response backpressure
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IProducer,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from .packets import (
    AJPError,
    AJPProtocolError,
    CPING_PACKET,
    CPONG,
    DEFAULT_PACKET_SIZE,
    EMPTY_BODY_PACKET,
    END_RESPONSE,
    ForwardRequest,
    ForwardRequestEncoder,
    GET_BODY_CHUNK,
    SEND_BODY_CHUNK,
    SEND_HEADERS,
    UnexpectedMessage,
    body_chunk_header,
    check_packet_size,
    max_request_chunk,
)
from .response import ResponseParser

if TYPE_CHECKING:
    from modcluster.proxy._transport import IStreamTransport

__all__ = [
    "IAJPResponseReceiver",
    "AJPClientProtocol",
    "AJPRequestBody",
    "AJPReadTimeout",
    "CPingFailed",
    "AJPConnectionBusy",
]


class AJPReadTimeout(AJPError):
    """
    The container sent nothing for the read timeout while a response was due.
    (mod_proxy_ajp answers 504 and does not mark the node in error.)
    """


class CPingFailed(AJPError):
    """
    The CPING sent before a request got no CPONG in time, or the connection
    failed before it.  The request was B{not} sent: it may be retried on a
    fresh connection.
    """


class AJPConnectionBusy(AJPError, RuntimeError):
    """
    A request or CPING was started on a connection that is not idle
    (programming error of the caller).
    """


class IAJPResponseReceiver(Interface):
    """
    Receives the outcome of one request sent with
    L{AJPClientProtocol.sendRequest}.  Exactly one of C{responseEnded} and
    C{responseFailed} is called, after which the receiver is forgotten.
    Callbacks may call back into the protocol (e.g. pause it, abort it, or
    send the next request from C{responseEnded}).
    """

    def requestWritten() -> None:
        """
        The FORWARD_REQUEST packet was just written: synchronously from
        C{sendRequest}, or on CPONG when C{pingTimeout} was given.  Until then
        nothing of the request reached the container (a failure is
        L{CPingFailed}), so a caller may hold the body back until this call.
        """

    def headReceived(status: int, reason: bytes, headers: tuple) -> None:
        """
        SEND_HEADERS arrived: status code, the container's status message
        (Tomcat sends the code as text) and the C{(name, value)} pairs, in
        order, repeats kept.
        """

    def bodyReceived(data: bytes) -> None:
        """
        A response body chunk.  Empty C{data} is the container's explicit
        flush request (Tomcat's C{flushBuffer()}).
        """

    def readComplete() -> None:
        """
        Every message of one read from the container has been delivered, and
        at least one of them was C{headReceived} or C{bodyReceived}: a good
        moment to write to the client.  Not called after C{responseEnded} or
        C{responseFailed}.
        """

    def responseEnded(reusable: bool) -> None:
        """
        END_RESPONSE arrived.  C{reusable} is true if the connection is back
        to idle and may carry another request; otherwise the protocol has
        already started closing it.
        """

    def responseFailed(reason: Failure, responseStarted: bool, requestSent: bool) -> None:
        """
        The exchange failed; the connection is being dropped.

        @param reason: L{CPingFailed} (request not sent), L{AJPReadTimeout},
            an L{AJPProtocolError}, or the connection-lost failure
            (C{ConnectionDone}/C{ConnectionLost}).
        @param responseStarted: C{headReceived} was already called.
        @param requestSent: the FORWARD_REQUEST was written (C{requestWritten}
            was called); whether body bytes went too is
            L{AJPClientProtocol.requestBodySent}.
        """


_IDLE = 0
_CPING = 1  # standalone CPING, waiting for CPONG
_PREPING = 2  # CPING before a request, forward packet held back
_WAIT_HEAD = 3  # request sent, waiting for SEND_HEADERS
_BODY = 4  # headers received, waiting for body chunks / END_RESPONSE
_CLOSED = 5

_STATE_NAMES = ("idle", "waiting for CPONG", "waiting for CPONG before a request",
                "waiting for SEND_HEADERS", "receiving the response body", "closed")

_MESSAGE_NAMES = {SEND_HEADERS: "SEND_HEADERS", SEND_BODY_CHUNK: "SEND_BODY_CHUNK",
                  END_RESPONSE: "END_RESPONSE", GET_BODY_CHUNK: "GET_BODY_CHUNK",
                  CPONG: "CPONG"}


@implementer(IConsumer)
class AJPRequestBody:
    """
    The request body channel of one exchange, returned by
    L{AJPClientProtocol.sendRequest}.  Once the exchange is over (response
    ended or failed, connection aborted) it is detached: writes are discarded
    and return C{False}, so a late write can never leak into the next request
    on the same connection.
    """

    __slots__ = ("_proto",)

    def __init__(self, proto: "AJPClientProtocol") -> None:
        self._proto: Optional[AJPClientProtocol] = proto

    @property
    def active(self) -> bool:
        """
        Whether the exchange is still in progress.
        """
        return self._proto is not None

    # IConsumer.write returns None; the bool (accepted or discarded) is an
    # addition that callers through IConsumer ignore
    def write(self, data: bytes) -> bool:  # type: ignore[override]
        """
        Queue request body bytes; they are sent as the container asks for
        them (the first packet unasked when the length is known).

        @return: C{False} if the exchange is over or the body was already
            finished (data discarded), else C{True}.
        """
        proto = self._proto
        if proto is None:
            return False
        return proto._bodyWrite(data)

    def finish(self) -> bool:
        """
        The client body is complete; the empty body packet is sent when the
        container next asks.

        @return: C{False} if the exchange is over, else C{True}.
        """
        proto = self._proto
        if proto is None:
            return False
        return proto._bodyFinish()

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """
        Register the source of the body (normally the client's transport or
        HTTP channel).  It is paused while a full packet of body is waiting
        for a GET_BODY_CHUNK and resumed when the backlog drains and when the
        exchange ends.  Only streaming (push) producers are supported.
        """
        if not streaming:
            raise TypeError("AJPRequestBody supports only streaming (push) producers")
        if TYPE_CHECKING:  # streaming: a push producer
            assert IPushProducer.providedBy(producer)
        proto = self._proto
        if proto is not None:
            proto._setBodyProducer(producer)

    def unregisterProducer(self) -> None:
        """
        Forget the producer (resuming it first if this channel paused it).
        """
        proto = self._proto
        if proto is not None:
            proto._setBodyProducer(None)


@implementer(IPushProducer)
class AJPClientProtocol(Protocol):
    """
    One AJP13 connection to a container.

    As an L{IPushProducer} of response data it can be registered with the
    client-side consumer: C{pauseProducing}/C{resumeProducing} pause reading
    from the container (and suspend the read timeout); C{stopProducing} aborts.

    @ivar onConnectionLost: optional C{callable(protocol, reason)} called when
        the connection is gone (for a pool to forget it).
    """

    _log = Logger()

    onConnectionLost: Optional[Callable[["AJPClientProtocol", Failure], None]] = None
    # None until connected (annotated only: the class attribute is Protocol's)
    transport: Optional[IStreamTransport]

    def __init__(
        self,
        clock: IReactorTime,
        maxPacketSize: int = DEFAULT_PACKET_SIZE,
        readTimeout: Optional[float] = None,
        encoder: Optional[ForwardRequestEncoder] = None,
        writer: Optional[Callable[[object], Callable[[bytes], None]]] = None,
    ) -> None:
        """
        @param clock: provider of C{callLater} and C{seconds} (the reactor,
            or a L{twisted.internet.task.Clock} in tests).
        @param maxPacketSize: must equal Tomcat's C{packetSize}.
        @param readTimeout: seconds without data from the container, while a
            response is due, after which the exchange fails with
            L{AJPReadTimeout}; C{None} disables it.
        @param encoder: shared L{ForwardRequestEncoder} (its header-name
            cache); one is created if omitted.
        @param writer: C{writer(transport)} returns the C{write(data)}
            function used for everything sent to the container (for instance
            L{modcluster.proxy._transport.direct_writer}); called once the
            connection is made.  C{None}: C{transport.write}, looked up at
            each write.
        """
        self._clock = clock
        self.maxPacketSize = check_packet_size(maxPacketSize)
        if encoder is None:
            encoder = ForwardRequestEncoder(maxPacketSize)
        elif encoder.max_packet_size != maxPacketSize:
            raise ValueError("encoder packet size differs from maxPacketSize")
        self._encoder = encoder
        self._parser = ResponseParser(maxPacketSize)
        self._chunkLimit = max_request_chunk(maxPacketSize)
        self._readTimeout = readTimeout
        self._state = _IDLE
        self._receiver: Optional[IAJPResponseReceiver] = None
        self._body: Optional[AJPRequestBody] = None
        self._pending = bytearray()
        self._bodyEnded = True
        self._owed = 0  # GET_BODY_CHUNK received and not answered yet (0/1)
        self._owedLimit = 0
        self._unsolicited = False  # first body packet may still be sent unasked
        self._emptySent = False
        self._bodySent = False
        self._requestSent = False
        self._responseStarted = False
        self._producer: Optional[IPushProducer] = None
        self._producerPaused = False
        self._forward: Optional[bytes] = None
        self._timer: Optional[IDelayedCall] = None
        self._lastRead = 0.0
        #: the head deadline (L{checkReadTimeout}): the exchange (its
        #: C{requestsSent} number) whose reply began, when, and whether a
        #: flush said so (else: a partial packet the sweep saw)
        self._headOf = 0
        self._headSince = 0.0
        self._headSure = False
        self._paused = False
        self._pingDeferred: Optional[Deferred] = None
        self._pingTimer: Optional[IDelayedCall] = None
        self.requestsSent = 0
        self._writer = writer

    # -- state ---------------------------------------------------------------------

    @property
    def reusable(self) -> bool:
        """
        Connected and idle: the last exchange ended with END_RESPONSE reuse=1,
        nothing owed in the request body exchange, no stray bytes.
        """
        return bool(self.connected) and self._state == _IDLE

    @property
    def requestBodySent(self) -> bool:
        """
        At least one request body byte of the current (or last) exchange was
        written.
        """
        return self._bodySent

    @property
    def busy(self) -> bool:
        """
        A request or CPING is in progress.
        """
        return self._state in (_CPING, _PREPING, _WAIT_HEAD, _BODY)

    def __repr__(self) -> str:
        return f"<AJPClientProtocol {_STATE_NAMES[self._state]}>"

    # -- Protocol --------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        # Without a writer: the transport's write, looked up at each call.
        if TYPE_CHECKING:  # nothing is written before the connection
            assert self.transport is not None
        self.transport.write(data)

    def connectionMade(self) -> None:
        writer = self._writer
        if writer is not None:
            # the writer's function shadows the method on purpose (mypy refuses
            # assigning to a method: ignore[assignment] covers method-assign)
            self._write = writer(self.transport)  # type: ignore[assignment]
        setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setNoDelay is not None:
            try:
                setNoDelay(True)
            except OSError:  # pragma: no cover - platform dependent
                pass

    def dataReceived(self, data: bytes) -> None:
        state = self._state
        if state == _CLOSED:
            return
        if state == _IDLE:
            # Nothing is due while idle: not even part of a packet, which the
            # parser would keep as the start of what the next exchange reads.
            self._protocolError(UnexpectedMessage(
                f"{len(data)} byte(s) while idle, starting {data[:8]!r}"))
            return
        self._lastRead = self._clock.seconds()
        parser = self._parser
        try:
            messages: Sequence[tuple] = parser.feed_tuples(data)
            error: Optional[AJPProtocolError] = None
        except AJPProtocolError as e:
            messages = e.messages
            error = e
        last = len(messages) - 1
        index = 0
        exchange = self.requestsSent
        delivered = False
        # Messages are the parser's tuples: (kind, fields...) in the order of
        # the SendHeaders, ... attributes.
        for message in messages:
            kind = message[0]
            state = self._state
            if TYPE_CHECKING:  # in _BODY and _WAIT_HEAD an exchange has its receiver
                assert self._receiver is not None
            if kind == SEND_BODY_CHUNK and state == _BODY:
                delivered = True
                self._receiver.bodyReceived(message[1])
            elif kind == SEND_HEADERS and state == _WAIT_HEAD:
                self._state = _BODY
                self._responseStarted = True
                delivered = True
                self._receiver.headReceived(message[1], message[2], message[3])
            elif kind == END_RESPONSE and state == _BODY:
                self._responseEnded(
                    message[1],
                    index == last and error is None and not parser._buf,
                )
            elif kind == GET_BODY_CHUNK and (state == _WAIT_HEAD or state == _BODY):
                if not self._getBodyChunk(message[1]):
                    return
            elif kind == CPONG and state == _CPING:
                self._cpong()
            elif kind == CPONG and state == _PREPING:
                self._prePong()
            elif kind == SEND_BODY_CHUNK and state == _WAIT_HEAD and not message[1]:
                # flush before the headers: nothing to flush (httpd ignores
                # it), but the reply has begun: its SEND_HEADERS is due within
                # the head deadline (L{checkReadTimeout})
                if self._headOf != exchange or not self._headSure:
                    self._headOf = exchange
                    self._headSince = self._lastRead
                    self._headSure = True
            else:
                self._protocolError(UnexpectedMessage(
                    f"unexpected {_MESSAGE_NAMES[kind]} while {_STATE_NAMES[state]}"))
                return
            if self._state == _CLOSED:
                return
            index += 1
        if error is not None:
            self._protocolError(error)
        elif delivered and self.requestsSent == exchange and self._receiver is not None:
            self._receiver.readComplete()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        state = self._state
        self._state = _CLOSED
        self.connected = 0
        self._cancelTimers()
        self._firePing(False)
        receiver = self._receiver
        if receiver is not None:
            started = self._responseStarted
            self._endExchange()
            if state == _PREPING:
                reason = Failure(CPingFailed(f"connection lost before CPONG: {reason.value}"))
            receiver.responseFailed(reason, started, state != _PREPING)
        callback = self.onConnectionLost
        if callback is not None:
            self.onConnectionLost = None
            callback(self, reason)

    # -- IPushProducer (response direction) ---------------------------------------

    def pauseProducing(self) -> None:
        """
        Stop reading from the container (client-side backpressure).  The read
        timeout is suspended while paused.
        """
        if not self._paused:
            self._paused = True
            if self.transport is not None and self._state != _CLOSED:
                self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """
        Resume reading from the container.
        """
        if self._paused:
            self._paused = False
            self._lastRead = self._clock.seconds()
            if self.transport is not None and self._state != _CLOSED:
                self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """
        The consumer is gone: same as L{abort}.
        """
        self.abort()

    # -- public API ------------------------------------------------------------------

    def sendRequest(
        self,
        request: Union[ForwardRequest, bytes],
        receiver: IAJPResponseReceiver,
        bodyLength: Optional[int] = 0,
        body: bytes = b"",
        pingTimeout: Optional[float] = None,
    ) -> AJPRequestBody:
        """
        Start one exchange.

        @param request: a L{ForwardRequest}, or its encoded packet (encode
            first with L{ForwardRequestEncoder} to turn L{RequestTooLarge}
            into a 400 before choosing a connection).
        @param receiver: gets the response (L{IAJPResponseReceiver}).
        @param bodyLength: C{0} for no body, C{n > 0} for a known
            C{Content-Length} (the first body packet is sent unasked), C{None}
            for an unknown length (chunked: everything waits for
            GET_BODY_CHUNK).
        @param body: body bytes already available; with a known length the
            first packet goes out in the same write as the request.
        @param pingTimeout: if set, send CPING first and hold the request back
            until CPONG; no CPONG within this many seconds fails the exchange
            with L{CPingFailed} (the request was not sent) and drops the
            connection.

        @return: the request body channel (also for C{bodyLength=0}, where
            C{finish()} is a no-op).
        @raise AJPConnectionBusy: the connection is not idle.
        @raise RequestTooLarge: C{request} does not fit the packet size.
        """
        if self._state != _IDLE or not self.connected:
            raise AJPConnectionBusy(
                f"cannot send a request: connection {_STATE_NAMES[self._state]}")
        if type(request) is not bytes:
            if TYPE_CHECKING:
                assert isinstance(request, ForwardRequest)
            request = self._encoder.encode(request)
        if bodyLength == 0:  # the usual case first
            if body:
                raise ValueError("body given for a request with bodyLength=0")
            self._unsolicited = False
            self._bodyEnded = True
        elif bodyLength is None:
            self._unsolicited = False
            self._bodyEnded = False
        elif bodyLength > 0:
            self._unsolicited = True
            self._bodyEnded = False
        else:
            raise ValueError(f"bad bodyLength {bodyLength!r}")
        self._receiver = receiver
        channel = self._body = AJPRequestBody(self)
        self._owed = 0
        self._emptySent = False
        self._bodySent = False
        self._requestSent = False
        self._responseStarted = False
        if body:
            self._pending += body
        self.requestsSent += 1
        if pingTimeout is not None:
            self._state = _PREPING
            self._forward = request
            self._pingTimer = self._clock.callLater(pingTimeout, self._prePingTimeout)
            self._write(CPING_PACKET)
        else:
            self._sendForward(request)
        return channel

    def cping(self, timeout: float) -> Deferred:
        """
        Send a standalone CPING on this idle connection.

        @return: a Deferred firing C{True} on CPONG within C{timeout} seconds
            (the connection stays idle and usable), or C{False} on timeout,
            a wrong answer or connection loss (the connection is dropped).
            Cancelling it drops the connection.
        @raise AJPConnectionBusy: the connection is not idle.
        """
        if self._state != _IDLE or not self.connected:
            raise AJPConnectionBusy(f"cannot CPING: connection {_STATE_NAMES[self._state]}")
        self._state = _CPING
        d = self._pingDeferred = Deferred(self._cancelPing)
        self._pingTimer = self._clock.callLater(timeout, self._cpingTimeout)
        self._write(CPING_PACKET)
        return d

    def abort(self) -> None:
        """
        Drop the connection now.  The current exchange, if any, ends without
        a receiver callback (the caller knows); a pending CPING fires C{False}.
        """
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self._endExchange()
        self._cancelTimers()
        self._firePing(False)
        if self.transport is not None:
            self.transport.abortConnection()

    # -- request body ---------------------------------------------------------------

    def _sendForward(self, packet: bytes) -> None:
        self._state = _WAIT_HEAD
        self._requestSent = True
        self._lastRead = self._clock.seconds()
        pending = self._pending
        if self._unsolicited and pending:
            self._unsolicited = False
            self._bodySent = True
            chunk = self._take(self._chunkLimit)
            self._write(packet + body_chunk_header(len(chunk)) + chunk)
            self._checkProducer()
        else:
            self._write(packet)
            if self._unsolicited and self._bodyEnded:
                # known length but the body ended empty: close the slot
                self._unsolicited = False
                self._emptySent = True
                self._write(EMPTY_BODY_PACKET)
        if self._readTimeout is not None and self._timer is None:
            # One timer per connection, not per request: it is left running
            # when an exchange ends and re-armed lazily from _lastRead.
            self._timer = self._clock.callLater(self._readTimeout, self._checkTimeout)
        if TYPE_CHECKING:  # sendRequest set it
            assert self._receiver is not None
        self._receiver.requestWritten()

    def _take(self, limit: int) -> bytes:
        pending = self._pending
        if len(pending) <= limit:
            chunk = bytes(pending)
            pending.clear()
        else:
            chunk = bytes(pending[:limit])
            del pending[:limit]
        return chunk

    def _bodyWrite(self, data: bytes) -> bool:
        if self._bodyEnded:
            return False
        if not data:
            return True
        state = self._state
        if not self._pending and (state == _WAIT_HEAD or state == _BODY):
            # fast path: the container is waiting and nothing is queued
            if self._owed:
                if len(data) <= self._owedLimit:
                    self._owed = 0
                    self._bodySent = True
                    self._write(body_chunk_header(len(data)) + data)
                    return True
            elif self._unsolicited and len(data) <= self._chunkLimit:
                self._unsolicited = False
                self._bodySent = True
                self._write(body_chunk_header(len(data)) + data)
                return True
        self._pending += data
        self._flushBody()
        return True

    def _bodyFinish(self) -> bool:
        if self._bodyEnded:
            return True
        self._bodyEnded = True
        state = self._state
        if state == _WAIT_HEAD or state == _BODY:
            if self._unsolicited and not self._pending:
                # Content-Length announced but no byte came: end the body now
                # rather than leave the container waiting for the first packet.
                self._unsolicited = False
                self._emptySent = True
                self._write(EMPTY_BODY_PACKET)
            else:
                self._flushBody()
        return True

    def _flushBody(self) -> None:
        """
        Answer the container if it is owed a packet and we have something.
        """
        state = self._state
        if state != _WAIT_HEAD and state != _BODY:
            self._checkProducer()
            return
        if self._owed:
            if self._pending:
                self._owed = 0
                self._bodySent = True
                chunk = self._take(self._owedLimit)
                self._write(body_chunk_header(len(chunk)) + chunk)
            elif self._bodyEnded:
                self._owed = 0
                self._emptySent = True
                self._write(EMPTY_BODY_PACKET)
        elif self._unsolicited and self._pending:
            self._unsolicited = False
            self._bodySent = True
            chunk = self._take(self._chunkLimit)
            self._write(body_chunk_header(len(chunk)) + chunk)
        self._checkProducer()

    def _checkProducer(self) -> None:
        producer = self._producer
        if producer is None:
            return
        if len(self._pending) >= self._chunkLimit:
            if not self._producerPaused:
                self._producerPaused = True
                producer.pauseProducing()
        elif self._producerPaused:
            self._producerPaused = False
            producer.resumeProducing()

    def _setBodyProducer(self, producer: Optional[IPushProducer]) -> None:
        old = self._producer
        if old is not None and self._producerPaused:
            self._producerPaused = False
            old.resumeProducing()
        self._producer = producer
        if producer is not None:
            self._checkProducer()

    def _getBodyChunk(self, requested: int) -> bool:
        if self._emptySent:
            self._protocolError(UnexpectedMessage(
                "GET_BODY_CHUNK after the end of the request body was sent"))
            return False
        if self._owed:
            self._protocolError(UnexpectedMessage(
                "GET_BODY_CHUNK while the previous one is unanswered"))
            return False
        # A GET while the unasked first packet is still due: one packet
        # answers both (Tomcat never does this; be lenient, not ambiguous).
        self._unsolicited = False
        self._owed = 1
        self._owedLimit = min(requested, self._chunkLimit)
        self._flushBody()
        return True

    # -- response --------------------------------------------------------------------

    def _responseEnded(self, reuse: bool, clean: bool) -> None:
        receiver = self._receiver
        if TYPE_CHECKING:  # in _BODY: an exchange, connected
            assert receiver is not None and self.transport is not None
        reusable = reuse and clean and not self._owed and not self._unsolicited
        self._endExchange()
        if reusable:
            self._state = _IDLE
        else:
            self._state = _CLOSED
            self._cancelTimers()
            if reuse and not clean:
                self._report(
                    "data after END_RESPONSE", LogLevel.warn,
                    "AJP container {peer} sent data after END_RESPONSE; closing",
                    peer=self._peer())
            elif reuse:
                self._log.debug(
                    "AJP request body exchange incomplete at END_RESPONSE; closing "
                    "connection to {peer}", peer=self._peer())
            self.transport.loseConnection()
        receiver.responseEnded(reusable)

    def _endExchange(self) -> None:
        """
        Forget the current exchange's receiver, body channel and producer.
        """
        self._receiver = None
        body = self._body
        if body is not None:
            body._proto = None
            self._body = None
        producer = self._producer
        if producer is not None:
            self._producer = None
            if self._producerPaused:
                self._producerPaused = False
                producer.resumeProducing()
        if self._pending:
            self._pending.clear()
        self._forward = None
        self._bodyEnded = True
        self._owed = 0
        self._unsolicited = False

    def checkReadTimeout(self, now: float, timeout: float,
                         headTimeout: Optional[float] = None) -> bool:
        """
        For a coarse sweep (instead of, or besides, C{readTimeout}): fail the
        current exchange with L{AJPReadTimeout} if the container sent nothing
        for C{timeout} seconds up to C{now} while a response is due.  Time
        spent paused by the client side, or waiting for client body the
        container asked for, does not count.

        With C{headTimeout}, also the head deadline: once the reply has
        begun (an empty SEND_BODY_CHUNK flush, or part of a packet this
        sweep sees held back) its SEND_HEADERS must be complete within
        C{headTimeout} seconds, however often data comes (the read timeout
        alone would let a container trickle it).  Time to the first byte is
        the read timeout's only.  A partly received packet is timed from the
        first sweep that sees it (so never early, up to one sweep late).

        @return: whether the exchange was failed.
        """
        return self._idleFor(now, timeout, headTimeout) is None

    def _idleFor(self, now: float, timeout: float,
                 head: Optional[float] = None) -> Optional[float]:
        """
        Seconds left before the read timeout (or the head deadline, with
        C{head}), or C{None} after failing the exchange because one expired;
        C{timeout} when nothing is due.
        """
        state = self._state
        if state != _WAIT_HEAD and state != _BODY:
            return timeout
        if self._paused or self._owed or self._unsolicited:
            # waiting on our client (body) or held back by it (backpressure)
            self._lastRead = now
            self._headOf = 0  # the head deadline starts again at the next reply byte
            return timeout
        left = timeout - (now - self._lastRead)
        if left <= 0:
            self._fail(AJPReadTimeout(
                f"no data from the AJP container for {timeout:g} s "
                f"while {_STATE_NAMES[state]}"), "AJP read timeout from {peer}: {error}",
                "read timeout")
            return None
        if head is None or state != _WAIT_HEAD:
            return left
        exchange = self.requestsSent
        if self._headOf != exchange:
            if not self._parser.buffered:
                return left  # nothing of the reply yet
            self._headOf = exchange
            self._headSince = now
            self._headSure = False
        elif not self._headSure and not self._parser.buffered:
            # the packet seen in part was not the reply's (a GET_BODY_CHUNK)
            self._headOf = 0
            return left
        head_left = head - (now - self._headSince)
        if head_left > 0:
            return min(left, head_left)
        self._fail(AJPReadTimeout(
            f"reply head (SEND_HEADERS) not complete {head:g} s after the reply began"),
            "AJP response head deadline, {peer}: {error}", "head deadline")
        return None

    def _checkTimeout(self) -> None:
        self._timer = None
        state = self._state
        if state != _WAIT_HEAD and state != _BODY:
            return  # idle: the timer lapses until the next request
        if TYPE_CHECKING:  # the timer is armed only with a read timeout
            assert self._readTimeout is not None
        left = self._idleFor(self._clock.seconds(), self._readTimeout, self._readTimeout)
        if left is not None and self._state != _CLOSED:
            self._timer = self._clock.callLater(left, self._checkTimeout)

    # -- CPING -------------------------------------------------------------------

    def _cpong(self) -> None:
        self._cancelPingTimer()
        self._state = _IDLE
        self._firePing(True)

    def _prePong(self) -> None:
        self._cancelPingTimer()
        packet = self._forward
        if TYPE_CHECKING:  # sendRequest kept it for the CPONG
            assert packet is not None
        self._forward = None
        self._sendForward(packet)

    def _cpingTimeout(self) -> None:
        self._pingTimer = None
        self._log.info("AJP CPING to {peer} timed out", peer=self._peer())
        self.abort()

    def _prePingTimeout(self) -> None:
        self._pingTimer = None
        self._fail(CPingFailed("no CPONG before the request within the ping timeout"),
                   "AJP CPING before request to {peer} failed: {error}", "CPING failed")

    def _cancelPing(self, d: Deferred) -> None:
        self._pingDeferred = None
        self.abort()

    def _firePing(self, result: bool) -> None:
        d = self._pingDeferred
        if d is not None:
            self._pingDeferred = None
            d.callback(result)

    def _cancelPingTimer(self) -> None:
        timer = self._pingTimer
        if timer is not None:
            self._pingTimer = None
            if timer.active():
                timer.cancel()

    def _cancelTimers(self) -> None:
        self._cancelPingTimer()
        timer = self._timer
        if timer is not None:
            self._timer = None
            if timer.active():
                timer.cancel()

    # -- failures ----------------------------------------------------------------

    def _peer(self) -> object:
        transport = self.transport
        try:
            return transport.getPeer() if transport is not None else None
        except Exception:  # pragma: no cover - exotic transports
            return None

    def _protocolError(self, error: AJPProtocolError) -> None:
        self._fail(error, "AJP protocol error from {peer}: {error}", "protocol error")

    def _report(self, kind: str, level: LogLevel, format: str, **fields) -> None:
        """
        Log a line about this connection's container (C{kind}: what
        happened, for a subclass that rate-limits the lines per kind).
        """
        self._log.emit(level, format, **fields)

    def _fail(self, error: AJPError, format: str, kind: str) -> None:
        """
        Drop the connection and report C{error} to the receiver (if any).
        """
        if self._state == _CLOSED:
            return
        self._report(kind, LogLevel.warn, format, peer=self._peer(), error=str(error))
        self._state = _CLOSED
        receiver = self._receiver
        started, sent = self._responseStarted, self._requestSent
        self._endExchange()
        self._cancelTimers()
        self._firePing(False)
        if TYPE_CHECKING:  # not _CLOSED: connected
            assert self.transport is not None
        self.transport.abortConnection()
        if receiver is not None:
            receiver.responseFailed(Failure(error), started, sent)
