"""
HTTP/2 or HTTP/1.1 on C{ssl:} proxy listeners, chosen by ALPN (RFC 7301):
L{NegotiatingFactory} wraps the L{modcluster.proxy.front.ProxyFactory} of an
C{ssl:} listener; when the TLS handshake completes, the connection gets an
L{modcluster.proxy.h2.H2Protocol} if the client selected C{h2}, else the
usual HTTP/1.1 L{modcluster.proxy.client.ClientProtocol} (the switch costs
HTTP/1.1 nothing after the handshake: the TLS transport is pointed at the
chosen protocol).

With the stdlib TLS engine (L{modcluster.proxy.stdtls}) the TLS connection
itself does the choosing (L{_NegotiatingTLS}, built by
L{NegotiatingFactory.tls_connection}): no protocol object stands in until
the handshake completes.  Twisted's TLS engine gets a L{_Negotiator} per
connection as its C{wrappedProtocol}, which does the same.  Until the
choice, either is in the L{ProxyFactory}'s clients, so the sweep times the
handshake (C{checkTimeout}: the request head deadline, from the accept),
a stop cuts it (C{drain}), and a connection lost before the handshake
completed counts as a failed TLS handshake.
"""

from __future__ import annotations

import weakref
from typing import Any, Optional, Union, cast

from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from modcluster.proxy._transport import IStreamTransport
from modcluster.proxy.client import ClientProtocol
from modcluster.proxy.h2 import H2Protocol
from modcluster.proxy.stdtls import LEAN_TLS, TLSServerConnection

__all__ = ["ALPN_PROTOCOLS", "NegotiatingFactory", "alpn_protocols", "listener_factory"]

log = Logger(namespace="modcluster.proxy.h2")

#: ALPN protocols of an C{ssl:} proxy listener with HTTP/2 on, preferred first.
ALPN_PROTOCOLS = (b"h2", b"http/1.1")


def alpn_protocols(config) -> tuple[bytes, ...]:
    """The ALPN protocols an C{ssl:} proxy listener selects from (C{config}: ProxyConfig)."""
    return ALPN_PROTOCOLS if config.http2 else (b"http/1.1",)


def listener_factory(factory, description: str):
    """
    The factory to listen with on C{description}: for an C{ssl:} listener with
    C{[proxy] http2} on, a L{NegotiatingFactory} around C{factory}; else
    C{factory} itself.
    """
    config = getattr(factory, "config", None)
    if getattr(config, "http2", False) and description.split(":", 1)[0].strip().lower() == "ssl":
        return NegotiatingFactory(factory)
    return factory


@implementer(IHandshakeListener)
class _Negotiator(Protocol):
    """
    The protocol of an C{ssl:} connection until its handshake completes: then
    L{H2Protocol} for ALPN C{h2}, L{ClientProtocol} otherwise, which takes
    the TLS transport over (nothing was received before).
    """

    # set by makeConnection (annotated only: no class attribute)
    transport: IStreamTransport

    def __init__(self, factory: "NegotiatingFactory") -> None:
        self._factory = factory
        self._chosen: Optional[Protocol] = None
        self._accepted = factory.wrapped.now

    def connectionMade(self) -> None:
        # the sweep times the handshake (checkTimeout) until a protocol is chosen
        self._factory.wrapped._clients.add(self)

    def handshakeCompleted(self) -> None:
        t = self.transport
        negotiated = getattr(t, "negotiatedProtocol", None)
        f = self._factory
        f.wrapped._clients.discard(self)
        p: Union[H2Protocol, ClientProtocol]
        if negotiated == b"h2":
            p = H2Protocol(f.wrapped)
            f.h2_connections.add(p)
        else:
            p = ClientProtocol(f.wrapped)
            if getattr(p, "_head_start", None) is not None:
                p._head_start = self._accepted  # the head deadline runs from the accept
        self._chosen = p
        if getattr(t, "wrappedProtocol", None) is self:
            # from now on the TLS transport calls it directly (Twisted's TLS
            # transport: the one whose wrappedProtocol we are)
            cast(TLSMemoryBIOProtocol, t).wrappedProtocol = p
        p.makeConnection(t)
        if p.__class__ is ClientProtocol and IHandshakeListener.providedBy(p):
            p.handshakeCompleted()  # (it missed the TLS transport's own call)

    def checkTimeout(self, now: float, limit: float) -> None:
        """
        Called by the sweep while the TLS handshake is not complete: it gets
        the request head deadline (C{request_header_timeout}, else
        C{client_timeout}) from the accept, as the HTTP/1.1 front's head does.
        """
        if self._chosen is not None:
            return
        f = self._factory.wrapped
        allowed = _handshake_deadline(f, self._accepted, now, limit)
        if allowed is None:
            return
        f._clients.discard(self)
        _handshake_timed_out(f, self.transport.getPeer(), allowed, now)
        self.transport.abortConnection()

    def drain(self) -> int:
        """Stopping (L{ProxyFactory.drain}): a handshake in progress is cut."""
        self._factory.wrapped._clients.discard(self)
        if self._chosen is None:
            self.transport.abortConnection()
        return 0

    def dataReceived(self, data: bytes) -> None:
        if self._chosen is not None:  # a transport without wrappedProtocol
            self._chosen.dataReceived(data)

    def connectionLost(self, reason=None) -> None:
        f = self._factory.wrapped
        f._clients.discard(self)
        if self._chosen is None:  # the handshake never completed (cut by the sweep,
            # a drain, the client, a TLS error): counted as the HTTP/1.1 front counts it
            _handshake_failed(f)
        else:
            self._chosen.connectionLost(reason)


def _handshake_deadline(proxy, accepted: float, now: float, limit: float) -> Optional[float]:
    """
    The seconds allowed for the TLS handshake when they are over at C{now}
    (else None): the request head deadline (C{request_header_timeout}, else
    C{limit}: C{client_timeout}) from the accept, as the HTTP/1.1 front's head.
    """
    rt = getattr(proxy, "read_timeouts", None)
    allowed = rt.header_allowed(0) if rt is not None and rt.header else limit
    return None if now - accepted <= allowed + 1.0 else allowed


def _handshake_timed_out(proxy, peer, allowed: float, now: float) -> None:
    timeouts = getattr(proxy, "timeouts", None)
    if timeouts is not None:
        timeouts.timedOut("header", getattr(peer, "host", "?"),
                          f"TLS handshake not complete after {allowed:g} s", now)


def _handshake_failed(proxy) -> None:
    """A connection lost before its TLS handshake completed."""
    stats = getattr(proxy, "stats", None)
    if stats is not None:
        stats.connections += 1
        stats.tls_failures += 1


#: ClientProtocol connects as every Protocol does (inlined by _NegotiatingTLS)
_PLAIN_MAKE_CONNECTION = ClientProtocol.makeConnection is Protocol.makeConnection


class _NegotiatingTLS(TLSServerConnection):
    """
    A stdlib-engine TLS connection of an C{ssl:} listener with HTTP/2, which
    is its own negotiator: when the handshake completes it connects an
    L{H2Protocol} (ALPN C{h2}) or a L{ClientProtocol} (anything else) and
    hands it the connection, as L{_Negotiator} does for Twisted's engine,
    without a protocol object in between until then.  Until the handshake
    completes it is in the L{ProxyFactory}'s clients (L{checkTimeout},
    L{drain}).
    """

    wrappedProtocol: Any = None
    #: for the accept loop (L{modcluster.proxy.accept}): C{logPrefix()} is the
    #: same for every connection it builds (no protocol chosen yet), so it is
    #: asked once per class, not per connection
    constant_log_prefix = True

    def __init__(self, factory, addr) -> None:
        """
        C{factory}: the L{TLSServerFactory<modcluster.proxy.stdtls.TLSServerFactory>},
        whose C{wrappedFactory} is the L{NegotiatingFactory}.
        """
        self.factory = factory
        self._negotiating = negotiating = factory.wrappedFactory
        self._addr = addr
        self._accepted = negotiating.wrapped.now

    def _started(self) -> None:
        # the sweep times the handshake (checkTimeout) until a protocol is chosen
        self._negotiating.wrapped._clients.add(self)

    def _completed(self) -> None:
        f = self._negotiating
        proxy = f.wrapped
        proxy._clients.discard(self)
        if self.negotiatedProtocol == b"h2":
            h2 = H2Protocol(proxy)
            f.h2_connections.add(h2)
            self.wrappedProtocol = h2
            h2.makeConnection(self)
            return
        p = ClientProtocol(proxy)
        p._addr = self._addr  # the peer address of the accept (no getPeer())
        p._head_start = self._accepted  # the head deadline runs from the accept
        self.wrappedProtocol = p
        if _PLAIN_MAKE_CONNECTION:  # Protocol.makeConnection, inline
            p.connected = 1
            p.transport = self  # type: ignore[assignment]  # (what makeConnection stores)
            p.connectionMade()
        else:  # pragma: no cover - a ClientProtocol with its own makeConnection
            p.makeConnection(self)
        p.handshakeCompleted()

    def checkTimeout(self, now: float, limit: float) -> None:
        """The sweep, while the handshake is not complete (L{_handshake_deadline})."""
        if not self._handshaking:
            return
        proxy = self._negotiating.wrapped
        allowed = _handshake_deadline(proxy, self._accepted, now, limit)
        if allowed is None:
            return
        proxy._clients.discard(self)
        _handshake_timed_out(proxy, self._addr or self.getPeer(), allowed, now)
        self.abortConnection()

    def drain(self) -> int:
        """Stopping (L{ProxyFactory.drain}): a handshake in progress is cut."""
        self._negotiating.wrapped._clients.discard(self)
        if self._handshaking:
            self.abortConnection()
        return 0

    def connectionLost(self, reason=connectionDone) -> None:
        proxy = self._negotiating.wrapped
        proxy._clients.discard(self)
        if self.wrappedProtocol is None:  # the handshake never completed (cut by the
            # sweep, a drain, the client, a TLS error): counted as the HTTP/1.1 front does
            _handshake_failed(proxy)
        TLSServerConnection.connectionLost(self, reason)  # (no super() object)

    def logPrefix(self) -> str:
        if self.wrappedProtocol is None:
            return "ClientProtocol (TLS)"
        return super().logPrefix()


LEAN_TLS.add(_NegotiatingTLS)  # (ClientProtocol.connectionMade)


class NegotiatingFactory(Factory):
    """
    The factory of an C{ssl:} proxy listener with HTTP/2: builds
    L{_Negotiator}s around the shared L{ProxyFactory} (C{wrapped}); on stop it
    sends GOAWAY to its HTTP/2 connections (graceful shutdown).
    """

    noisy = False

    def __init__(self, wrapped) -> None:
        self.wrapped = wrapped
        self.h2_connections: "weakref.WeakSet[H2Protocol]" = weakref.WeakSet()

    def buildProtocol(self, addr) -> _Negotiator:
        """Twisted's TLS engine: the protocol that stands in until the handshake completes."""
        return _Negotiator(self)

    #: The stdlib TLS engine (L{TLSServerFactory.buildProtocol}):
    #: C{tls_connection(tls_factory, addr)} builds the whole connection (the
    #: class itself: no Python frame in between; C{tls_factory.wrappedFactory}
    #: is this factory)
    tls_connection = _NegotiatingTLS

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.goAway()
        self.wrapped.doStop()

    def goAway(self) -> None:
        """GOAWAY to every HTTP/2 connection of this listener."""
        for p in list(self.h2_connections):
            try:
                p.goAway()
            except Exception:
                log.failure("GOAWAY failed")
