"""
An in-memory AJP13 container for tests (not used at run time).

L{FakeAJPContainer} behaves like Tomcat's connector as far as the wire is
concerned: it answers CPING while idle, decodes FORWARD_REQUEST, expects the
first body packet unasked when C{Content-Length > 0}, pulls the rest with
GET_BODY_CHUNK, and sends SEND_HEADERS / SEND_BODY_CHUNK (with the trailing
byte) / END_RESPONSE.  What it answers is decided by a handler called with a
L{ContainerExchange} per request.  Pair it with an
L{modcluster.ajp.protocol.AJPClientProtocol} through
C{twisted.test.iosim.connectedServerAndClient} or two StringTransports.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from .container import (
    RequestParser,
    encode_end_response,
    encode_get_body_chunk,
    encode_send_body_chunk,
    encode_send_headers,
)
from .packets import (
    AJPProtocolError,
    CPONG_PACKET,
    CPing,
    DEFAULT_PACKET_SIZE,
    ForwardRequest,
    RequestBodyChunk,
    max_request_chunk,
    max_response_chunk,
)

__all__ = ["FakeAJPContainer", "ContainerExchange", "respond", "echo"]


def _content_length(request: ForwardRequest) -> Optional[int]:
    for name, value in request.headers:
        if name.lower() == b"content-length":
            return int(value)
    return None


class ContainerExchange:
    """
    One request as seen by the fake container.

    @ivar request: the decoded L{ForwardRequest}.
    @ivar contentLength: the request's Content-Length, or C{None}.
    @ivar body: request body bytes received so far.
    @ivar bodyComplete: the whole body has arrived (length reached or empty
        packet received).
    @ivar bodyRequests: how many GET_BODY_CHUNK were sent.
    @ivar ended: END_RESPONSE was sent.
    """

    def __init__(self, container: "FakeAJPContainer", request: ForwardRequest) -> None:
        self.container = container
        self.request = request
        self.contentLength = _content_length(request)
        self.body = bytearray()
        self.bodyComplete = self.contentLength == 0
        self.bodyRequests = 0
        self.packetsReceived = 0
        self.ended = False
        self._outstanding = bool(self.contentLength)  # the unasked first packet
        self._onBody: Optional[Callable[[ContainerExchange], None]] = None

    # -- request body ---------------------------------------------------------------

    def readBody(self, callback: Callable[["ContainerExchange"], None]) -> None:
        """
        Pull the whole request body as Tomcat does (use the unasked first
        packet, then GET_BODY_CHUNK until the length is reached or an empty
        packet arrives), then call C{callback(self)}.
        """
        self._onBody = callback
        self._pump()

    def requestChunk(self, length: Optional[int] = None) -> None:
        """
        Send one GET_BODY_CHUNK (default: the maximum, packet size - 6).
        """
        if length is None:
            length = max_request_chunk(self.container.maxPacketSize)
        self._outstanding = True
        self.bodyRequests += 1
        self.container.parser.expect_body_chunk()
        self.container.transport.write(encode_get_body_chunk(length))

    def _pump(self) -> None:
        if self.bodyComplete:
            callback, self._onBody = self._onBody, None
            if callback is not None:
                callback(self)
        elif not self._outstanding:
            self.requestChunk()

    def _bodyPacket(self, data: bytes) -> None:
        self._outstanding = False
        self.packetsReceived += 1
        if not data:
            self.bodyComplete = True
        else:
            self.body += data
            if self.contentLength is not None and len(self.body) >= self.contentLength:
                self.bodyComplete = True
        if self._onBody is not None:
            self._pump()

    # -- response --------------------------------------------------------------------

    def sendHeaders(
        self,
        status: int = 200,
        headers: Iterable[tuple[bytes, bytes]] = (),
        reason: Optional[bytes] = None,
    ) -> None:
        """
        Send SEND_HEADERS; the reason defaults to the code as text (Tomcat).
        """
        if reason is None:
            reason = str(status).encode("ascii")
        self.container.transport.write(encode_send_headers(
            status, reason, headers, self.container.maxPacketSize))

    def write(self, data: bytes) -> None:
        """
        Send C{data} as SEND_BODY_CHUNK packets of at most packet size - 8.
        """
        size = max_response_chunk(self.container.maxPacketSize)
        for start in range(0, len(data), size):
            self.container.transport.write(
                encode_send_body_chunk(data[start:start + size], self.container.maxPacketSize))

    def flush(self) -> None:
        """
        Send Tomcat's flush packet (an empty SEND_BODY_CHUNK).
        """
        self.container.transport.write(encode_send_body_chunk(b""))

    def end(self, reuse: bool = True) -> None:
        """
        Send END_RESPONSE; with C{reuse=False} also close the connection.
        """
        self.ended = True
        self.container.exchange = None
        self.container.transport.write(encode_end_response(reuse))
        if not reuse:
            self.container.transport.loseConnection()


def respond(
    status: int = 200,
    headers: Iterable[tuple[bytes, bytes]] = (),
    body: bytes = b"",
    reuse: bool = True,
    readBody: bool = True,
) -> Callable[[ContainerExchange], None]:
    """
    A handler that (optionally) reads the request body, then answers with a
    fixed response.
    """
    headers = tuple(headers)

    def answer(exchange: ContainerExchange) -> None:
        exchange.sendHeaders(status, headers)
        if body:
            exchange.write(body)
        exchange.end(reuse)

    def handler(exchange: ContainerExchange) -> None:
        if readBody:
            exchange.readBody(answer)
        else:
            answer(exchange)

    return handler


def echo(exchange: ContainerExchange) -> None:
    """
    A handler that reads the whole request body and sends it back.
    """

    def answer(exchange: ContainerExchange) -> None:
        body = bytes(exchange.body)
        exchange.sendHeaders(200, [(b"Content-Type", b"application/octet-stream"),
                                   (b"Content-Length", str(len(body)).encode())])
        exchange.write(body)
        exchange.end(True)

    exchange.readBody(answer)


class FakeAJPContainer(Protocol):
    """
    A Tomcat-like AJP container endpoint (one connection).

    @ivar handler: C{callable(ContainerExchange)} called for every request.
    @ivar requests: every L{ForwardRequest} received, in order.
    @ivar cpings: number of CPINGs answered.
    @ivar errors: protocol errors seen (the connection is then closed).
    @ivar answerCPing: set to C{False} to leave CPINGs unanswered.
    """

    # Set by makeConnection; nothing here runs before (annotated only: the
    # class attribute, None, is Protocol's)
    transport: ITransport

    def __init__(
        self,
        handler: Optional[Callable[[ContainerExchange], None]] = None,
        maxPacketSize: int = DEFAULT_PACKET_SIZE,
    ) -> None:
        self.handler = handler if handler is not None else respond()
        self.maxPacketSize = maxPacketSize
        self.parser = RequestParser(maxPacketSize)
        self.requests: list[ForwardRequest] = []
        self.exchange: Optional[ContainerExchange] = None
        self.cpings = 0
        self.errors: list[AJPProtocolError] = []
        self.answerCPing = True
        self.lost: Optional[Failure] = None

    def dataReceived(self, data: bytes) -> None:
        try:
            messages = self.parser.feed(data)
        except AJPProtocolError as e:
            self.errors.append(e)
            self.transport.loseConnection()
            return
        for message in messages:
            if isinstance(message, CPing):
                if self.exchange is not None:
                    self._error("CPING during a request")
                    return
                self.cpings += 1
                if self.answerCPing:
                    self.transport.write(CPONG_PACKET)
            elif isinstance(message, ForwardRequest):
                if self.exchange is not None:
                    self._error("FORWARD_REQUEST during a request")
                    return
                self.requests.append(message)
                exchange = self.exchange = ContainerExchange(self, message)
                self.handler(exchange)
            elif isinstance(message, RequestBodyChunk):
                if self.exchange is None:
                    self._error("body packet outside a request")
                    return
                self.exchange._bodyPacket(message.data)

    def _error(self, text: str) -> None:
        self.errors.append(AJPProtocolError(text))
        self.transport.loseConnection()

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self.lost = reason
