# -*- test-case-name: tests.unit.node.test_node_probe -*-
"""
Backend probes: each status period the agent checks that its backend answers
before it reports a load (an unreachable backend is reported with load C{-1},
as the Java listener does when its connector is unavailable).

 - C{http}: one request (default C{HEAD /}) through C{twisted.web.client.Agent};
   any HTTP answer counts as reachable, and its latency feeds the optional
   C{probe-latency} metric.
 - C{https}: the same over TLS, without certificate verification (the probe
   only checks liveness and carries no data).
 - C{ajp}: a TCP connection and an AJP CPING answered by CPONG.

Connection failures and timeouts count as unreachable.  A probe never fails;
it fires with a L{ProbeResult}.
"""

from __future__ import annotations

from typing import Any, Optional, cast
from urllib.parse import urlsplit

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

__all__ = [
    "AJPPing",
    "HTTPProbe",
    "IBackendProbe",
    "ProbeResult",
    "make_probe",
    "CPING",
    "CPONG",
]

log = Logger()

#: AJP13 CPING (server to container) and CPONG (container to server).
CPING = b"\x12\x34\x00\x01\x0a"
CPONG = b"\x41\x42\x00\x01\x09"


@frozen
class ProbeResult:
    """
    @ivar reachable: whether the backend answered.
    @ivar latency: seconds the answer took (C{None} when unreachable).
    @ivar reason: why it is unreachable.
    """

    reachable: bool
    latency: Optional[float] = None
    reason: str = ""


class IBackendProbe(Interface):
    def probe():
        """
        Check the backend once.

        @return: a Deferred firing with a L{ProbeResult}; it never fails.
        """

    def close():
        """
        Release what the probe keeps open.

        @return: a Deferred, or C{None}.
        """


class _Discard(Protocol):
    def __init__(self, done: Deferred) -> None:
        self._done = done

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._done.callback(None)


def _insecure_policy() -> Any:
    from OpenSSL import SSL
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
    from twisted.web.iweb import IPolicyForHTTPS
    from twisted.internet.ssl import CertificateOptions

    @implementer(IOpenSSLClientConnectionCreator)
    class _Creator:
        def __init__(self, hostname: bytes) -> None:
            self._hostname = hostname
            self._context = CertificateOptions(verify=False).getContext()

        def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
            connection = SSL.Connection(self._context, None)
            connection.set_app_data(tlsProtocol)
            connection.set_tlsext_host_name(self._hostname)
            return connection

    @implementer(IPolicyForHTTPS)
    class _Policy:
        def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
            return _Creator(hostname)

    return _Policy()


@implementer(IBackendProbe)
class HTTPProbe:
    """
    Probe an HTTP(S) backend with one request.

    @param url: the full URL to request (backend URL + probe path).
    """

    def __init__(
        self, reactor: Any, url: str, method: str = "HEAD", timeout: float = 5.0
    ) -> None:
        from twisted.web.client import Agent, HTTPConnectionPool

        self._reactor = reactor
        self._url = url.encode("ascii")
        self._method = method.encode("ascii")
        self._timeout = timeout
        # One kept-alive connection: a probe per period does not open (and
        # log) a new connection each time; a dead backend still fails the
        # next request (the pool retries a stale connection once).
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 1
        self._pool = pool
        if url.startswith("https:"):
            self._agent = Agent(reactor, contextFactory=_insecure_policy(), pool=pool)
        else:
            self._agent = Agent(reactor, pool=pool)

    def probe(self) -> Deferred[ProbeResult]:
        return Deferred.fromCoroutine(self._probe())

    def close(self) -> Deferred[None]:
        """
        Close the kept-alive probe connection.
        """
        return self._pool.closeCachedConnections()

    async def _probe(self) -> ProbeResult:
        start = self._reactor.seconds()
        try:
            d = self._agent.request(self._method, self._url)
            d.addTimeout(self._timeout, self._reactor)
            response = await d
            done: Deferred[None] = Deferred()
            response.deliverBody(_Discard(done))
            done.addTimeout(self._timeout, self._reactor)
            await done
        except Exception as e:
            return ProbeResult(False, None, f"{type(e).__name__}: {e}")
        return ProbeResult(True, self._reactor.seconds() - start)


class _CPing(Protocol):
    # Connected over TCP (HostnameEndpoint).
    transport: Optional[ITCPTransport]

    def __init__(self) -> None:
        self.answer: Deferred[bool] = Deferred()
        self._buffer = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(CPING)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= len(CPONG):
            ok = self._buffer[: len(CPONG)] == CPONG
            assert self.transport is not None
            self.transport.loseConnection()
            if not self.answer.called:
                self.answer.callback(ok)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.answer.called:
            self.answer.callback(False)


@implementer(IBackendProbe)
class AJPPing:
    """
    Probe an AJP backend with CPING/CPONG on a fresh connection.
    """

    def __init__(self, reactor: Any, host: str, port: int, timeout: float = 5.0) -> None:
        self._reactor = reactor
        self._host = host
        self._port = port
        self._timeout = timeout

    def probe(self) -> Deferred[ProbeResult]:
        return Deferred.fromCoroutine(self._probe())

    def close(self) -> None:
        return None

    async def _probe(self) -> ProbeResult:
        start = self._reactor.seconds()
        endpoint = HostnameEndpoint(self._reactor, self._host, self._port, timeout=self._timeout)
        protocol: Optional[_CPing] = None
        try:
            factory = Factory.forProtocol(_CPing)
            factory.noisy = False
            d = endpoint.connect(factory)
            d.addTimeout(self._timeout, self._reactor)
            # The endpoint's Deferred is typed for any IProtocol; the factory builds _CPing.
            protocol = cast(_CPing, await d)
            answer = protocol.answer
            answer.addTimeout(self._timeout, self._reactor)
            ok = await answer
        except Exception as e:
            if protocol is not None and protocol.transport is not None:
                protocol.transport.abortConnection()
            return ProbeResult(False, None, f"{type(e).__name__}: {e}")
        if not ok:
            return ProbeResult(False, None, "no CPONG")
        return ProbeResult(True, self._reactor.seconds() - start)


def make_probe(reactor: Any, backend: str, path: str = "/", method: str = "HEAD",
               timeout: float = 5.0) -> IBackendProbe:
    """
    The probe for backend URL C{backend} (C{http://}, C{https://} or C{ajp://}).
    """
    parts = urlsplit(backend)
    if parts.scheme == "ajp":
        return AJPPing(reactor, parts.hostname or "localhost", parts.port or 8009, timeout)
    base = backend.rstrip("/")
    if not path.startswith("/"):
        path = "/" + path
    return HTTPProbe(reactor, base + path, method, timeout)
