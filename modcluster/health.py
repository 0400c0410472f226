"""
Node probes (balancing.md §6): CPING/CPONG on a fresh connection for AJP nodes,
C{OPTIONS *} for HTTP/HTTPS/WS/WSS nodes (unless EnableOptions is off).  Used at
STATUS and PING time by the MCMP handler and for idle nodes by the watchdog.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from modcluster.ajp.protocol import AJPClientProtocol
from modcluster.interfaces import INodeProber
from modcluster.proxy.http import _OneShot, node_endpoint, probe_http

__all__ = ["NodeProber", "probe_ajp"]

DEFAULT_TIMEOUT = 10.0


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
        connecting = node_endpoint(reactor, s.host, s.port, timeout).connect(_OneShot(proto))
    except Exception:
        if timer.active():
            timer.cancel()
        return succeed(False)
    connecting.addCallback(connected)
    connecting.addCallbacks(finish, lambda f: finish(False))
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
