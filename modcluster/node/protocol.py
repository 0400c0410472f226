# -*- test-case-name: tests.unit.node.test_node_protocol -*-
"""
The MCMP client connection: a small Protocol that writes one request at a time
and parses the answer with L{modcluster.node.wire.ResponseParser}, and
L{ProxyConnection}, which keeps one persistent connection to one proxy.

Why not C{twisted.web.client.Agent}: it writes its own request head (its
C{User-Agent}, C{Host} rules, no C{Content-Length}-less bodies control), while
the Java listener's bytes are part of the contract (the balancer tests compare
them), and its response parser does not follow the Java client's rules
(status code between the first two spaces, C{Type}/C{Mess} headers, body
delimited only by C{Content-Length}, chunked or close).  The protocol here is
about a hundred lines.

Behaviour (Java C{DefaultMCMPHandler}):
 - one connection per proxy, kept alive between requests, one request at a
   time;
 - when a *reused* connection fails before any byte of the answer arrived
   (the proxy closed it while idle), the request is sent once more on a
   fresh connection;
 - a socket timeout (default 20 s) bounds the connect and every wait for
   answer bytes;
 - C{Connection: close} in an answer closes the connection afterwards.
"""

from __future__ import annotations

from typing import Callable, Optional, cast

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.error import TimeoutError
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from modcluster.node.wire import MalformedResponse, MCMPResponse, ResponseParser

__all__ = [
    "MCMPClientProtocol",
    "ProxyConnection",
    "ResponseNeverStarted",
]


class ResponseNeverStarted(Exception):
    """
    The connection was lost before any byte of the answer arrived.
    """


class MCMPClientProtocol(Protocol):
    """
    One TCP (or TLS) connection to a proxy.  L{request} writes the bytes and
    returns a Deferred firing with the L{MCMPResponse}; it fails with
    L{ResponseNeverStarted}, L{MalformedResponse} or C{TimeoutError}.
    """

    log = Logger()
    # Connected over TCP or TLS (both provide abortConnection).
    transport: Optional[ITCPTransport]

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self._clock = clock
        self._timeout = timeout
        self._parser: Optional[ResponseParser] = None
        self._waiting: Optional[Deferred[MCMPResponse]] = None
        self._timer: Optional[IDelayedCall] = None
        self.connected = False
        self.reusable = True

    def connectionMade(self) -> None:
        self.connected = True

    def request(self, data: bytes) -> Deferred[MCMPResponse]:
        if self._waiting is not None:
            raise RuntimeError("a request is already in progress on this connection")
        if not self.connected:
            raise RuntimeError("not connected")
        assert self.transport is not None
        self._parser = ResponseParser()
        self._waiting = Deferred()
        self._arm()
        self.transport.write(data)
        return self._waiting

    def _arm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._timeout)
        else:
            self._timer = self._clock.callLater(self._timeout, self._timedOut)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timedOut(self) -> None:
        self._timer = None
        self._fail(TimeoutError(f"no answer within {self._timeout} s"))

    def _fail(self, reason: Exception) -> None:
        self.reusable = False
        waiting, self._waiting = self._waiting, None
        self._parser = None
        self._disarm()
        assert self.transport is not None
        self.transport.abortConnection()
        if waiting is not None:
            waiting.errback(Failure(reason))

    def _deliver(self, response: MCMPResponse) -> None:
        waiting, self._waiting = self._waiting, None
        parser, self._parser = self._parser, None
        self._disarm()
        if not response.keep_alive or (parser is not None and parser.trailing):
            self.reusable = False
            assert self.transport is not None
            self.transport.loseConnection()
        if waiting is not None:
            waiting.callback(response)

    def dataReceived(self, data: bytes) -> None:
        if self._parser is None:
            # Bytes nobody asked for: the stream cannot be trusted any more.
            self.log.warn("Unexpected {n} bytes from the proxy; closing", n=len(data))
            self.reusable = False
            assert self.transport is not None
            self.transport.abortConnection()
            return
        self._arm()
        try:
            response = self._parser.feed(data)
        except MalformedResponse as e:
            self._fail(e)
            return
        if response is not None:
            self._deliver(response)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        self.reusable = False
        self._disarm()
        parser, self._parser = self._parser, None
        if self._waiting is None or parser is None:
            return
        if not parser.started:
            waiting, self._waiting = self._waiting, None
            waiting.errback(
                Failure(ResponseNeverStarted(reason.getErrorMessage()))
            )
            return
        try:
            response = parser.eof()
        except MalformedResponse as e:
            waiting, self._waiting = self._waiting, None
            waiting.errback(Failure(e))
            return
        self._parser = parser
        self._deliver(response)


class _ProtocolFactory(Factory):
    noisy = False

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self._clock = clock
        self._timeout = timeout

    def buildProtocol(self, addr: object) -> MCMPClientProtocol:
        return MCMPClientProtocol(self._clock, self._timeout)


class ProxyConnection:
    """
    The persistent MCMP connection to one proxy.

    @param clock: the reactor's time interface (timeouts).
    @param endpoint: a callable returning the C{IStreamClientEndpoint} to
        connect to (called for each new connection).
    @param timeout: the socket timeout in seconds (connect, and each wait for
        answer bytes).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        endpoint: Callable[[], IStreamClientEndpoint],
        timeout: float = 20.0,
    ) -> None:
        self._clock = clock
        self._endpoint = endpoint
        self._timeout = timeout
        self._protocol: Optional[MCMPClientProtocol] = None
        self._lock = DeferredLock()

    @property
    def connected(self) -> bool:
        """
        Whether an idle connection is open.
        """
        p = self._protocol
        return p is not None and bool(p.connected) and p.reusable

    @property
    def local_host(self) -> Optional[str]:
        """
        Our address on the open connection, if any.
        """
        p = self._protocol
        if p is None or not p.connected or p.transport is None:
            return None
        return getattr(p.transport.getHost(), "host", None)

    def close(self) -> None:
        """
        Close the connection (the next request opens a new one).
        """
        p, self._protocol = self._protocol, None
        if p is not None and p.connected and p.transport is not None:
            p.transport.loseConnection()

    def abort(self) -> None:
        """
        Abort the connection at once.
        """
        p, self._protocol = self._protocol, None
        if p is not None and p.connected and p.transport is not None:
            p.transport.abortConnection()

    def send(self, data: bytes) -> Deferred[MCMPResponse]:
        """
        Send one encoded request and return its answer; requests are queued
        so only one is on the connection at a time.
        """
        return self._lock.run(lambda: Deferred.fromCoroutine(self._send(data)))

    async def _connect(self) -> MCMPClientProtocol:
        d = self._endpoint().connect(_ProtocolFactory(self._clock, self._timeout))
        d.addTimeout(self._timeout, self._clock)
        # The endpoint's Deferred is typed for any IProtocol; this factory builds only these.
        protocol = cast(MCMPClientProtocol, await d)
        self._protocol = protocol
        return protocol

    async def _send(self, data: bytes) -> MCMPResponse:
        protocol = self._protocol
        reused = False
        if protocol is not None and protocol.connected and protocol.reusable:
            reused = True
        else:
            self.close()
            protocol = await self._connect()
        try:
            try:
                response = await protocol.request(data)
            except ResponseNeverStarted:
                self._protocol = None
                if not reused:
                    raise
                self.log.debug("Kept-alive connection was closed by the proxy; retrying")
                protocol = await self._connect()
                response = await protocol.request(data)
        except BaseException:
            self.abort()
            raise
        if not protocol.reusable:
            self._protocol = None
        return response
