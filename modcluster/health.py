"""
Node probes (balancing.md §6): CPING/CPONG on a fresh connection for AJP nodes
(L{probe_ajp}), C{OPTIONS *} for HTTP/HTTPS/WS/WSS nodes (L{probe_http}, unless
EnableOptions is off).  Used at STATUS and PING time by the MCMP handler and
for idle nodes by the watchdog.  A probe opens its own connection through the
data plane's L{node_endpoint} (never a pooled one).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from modcluster.ajp.protocol import AJPClientProtocol
from modcluster.interfaces import INodeProber
from modcluster.proxy.pool import node_endpoint

__all__ = ["NodeProber", "PROBE_USER_AGENT", "probe_ajp", "probe_http"]

DEFAULT_TIMEOUT = 10.0
PROBE_USER_AGENT = b"txmodcluster (internal mod_cluster connection)"


def _connect(endpoint, proto: Protocol) -> Deferred:
    """
    C{endpoint.connect} for the prepared C{proto}: what
    C{twisted.internet.endpoints.connectProtocol} does, with a quiet factory
    (a noisy one logs "Starting factory" and "Stopping factory" for every probe).
    """
    factory = Factory.forProtocol(lambda: proto)
    factory.noisy = False
    return endpoint.connect(factory)


def probe_ajp(reactor, node, timeout: float, packet_size: int = 8192) -> Deferred:
    """
    Connect to an AJP node and CPING it; C{True} on CPONG within C{timeout}
    (connect time included).  Never fails.
    """
    result: Deferred = Deferred()
    proto = AJPClientProtocol(reactor, packet_size)
    s = node.settings

    def done(ok) -> None:
        if not result.called:
            result.callback(bool(ok))
        if proto.transport is not None:
            proto.transport.loseConnection()

    def expire() -> None:
        if not connecting.called:
            connecting.cancel()
        done(False)

    timer = reactor.callLater(timeout, expire)

    def connected(p) -> Deferred:
        remaining = max(0.1, timer.getTime() - reactor.seconds()) if timer.active() else 0.1
        return p.cping(remaining)

    def finish(ok) -> None:
        if timer.active():
            timer.cancel()
        done(ok)

    try:
        connecting = _connect(node_endpoint(reactor, s.host, s.port, timeout), proto)
    except Exception:
        if timer.active():
            timer.cancel()
        return succeed(False)
    connecting.addCallback(connected)
    connecting.addCallbacks(finish, lambda f: finish(False))
    return result


class _Probe(Protocol):
    def __init__(self, done: Callable[[bool], None]) -> None:
        self.done = done
        self.buf = b""

    def connectionMade(self) -> None:
        assert self.transport is not None  # makeConnection set it
        self.transport.write(b"OPTIONS * HTTP/1.0\r\nUser-Agent: " + PROBE_USER_AGENT
                             + b"\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        if b"\n" in self.buf or len(self.buf) >= 1024:
            line = self.buf.split(b"\n", 1)[0]
            self.done(line.startswith(b"HTTP/"))
            assert self.transport is not None  # connected: bytes came
            self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        self.done(False)


def probe_http(reactor, node, timeout: float, tls=None) -> Deferred:
    """
    Probe an HTTP/HTTPS node as mod_proxy_cluster does (balancing.md §6.1): on
    a fresh connection send C{OPTIONS * HTTP/1.0} with the internal
    User-Agent, succeed on any status line received within C{timeout}.

    @param node: a L{NodeEntry} (host, port and type are used).
    @param tls: an C{IOpenSSLClientConnectionCreator} for https/wss nodes.
    @return: Deferred firing C{True} or C{False}; it never fails.
    """
    result: Deferred = Deferred()
    state: dict[str, Any] = {"timer": None, "connect": None, "proto": None}

    def done(ok: bool) -> None:
        if result.called:
            return
        timer = state["timer"]
        if timer is not None and timer.active():
            timer.cancel()
        result.callback(ok)

    def expire() -> None:
        proto = state["proto"]
        if proto is not None and proto.transport is not None:
            proto.transport.abortConnection()
        connecting = state["connect"]
        if connecting is not None and not connecting.called:
            connecting.cancel()
        done(False)

    s = node.settings
    if timeout <= 0:
        timeout = 10.0
    proto = state["proto"] = _Probe(done)
    try:
        ep = node_endpoint(reactor, s.host, s.port, timeout, tls)
        d = state["connect"] = _connect(ep, proto)
    except Exception:
        done(False)
        return result
    state["timer"] = reactor.callLater(timeout, expire)
    d.addErrback(lambda f: done(False))
    return result


@implementer(INodeProber)
class NodeProber:
    """
    @param node_tls: C{callable(node) -> IOpenSSLClientConnectionCreator} for
        https/wss nodes.
    """

    log = Logger()

    def __init__(self, reactor, proxy_config, node_tls: Optional[Callable] = None) -> None:
        self._reactor = reactor
        self._config = proxy_config
        self._node_tls = node_tls

    def probe(self, node) -> Deferred:
        s = node.settings
        timeout = s.ping if s.ping > 0 else DEFAULT_TIMEOUT
        if s.type == "ajp":
            d = probe_ajp(self._reactor, node, timeout, self._config.ajp_packet_size)
        elif s.type in ("http", "https", "ws", "wss"):
            if not self._config.enable_options:
                return succeed(None)
            tls = None
            if s.type in ("https", "wss"):
                try:
                    tls = self._node_tls(node) if self._node_tls else None
                except Exception:
                    self.log.failure("no TLS settings for node {route}", route=s.route)
                    return succeed(False)
            d = probe_http(self._reactor, node, timeout, tls)
        else:
            return succeed(False)

        def report(ok):
            if not ok:
                self.log.info("probe of {route} ({worker}) failed", route=s.route,
                              worker=s.worker_name)
            return ok

        return d.addCallback(report)
