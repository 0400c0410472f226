"""
What the HTTP (L{modcluster.proxy.http}) and AJP (L{modcluster.proxy.ajp})
forwarders share: the per-node pool bookkeeping (L{PoolBase}), the forwarder's
pools life cycle (L{PooledForwarder}: one pool per node registration, draining
of retired pools, the coarse timeout tick), connecting a node connection
(L{connect_node}, L{connect_failed}, L{node_endpoint}) and L{LocalUpstream},
an attempt answered without a node connection.

What a pool needs of its connections is written down as
L{modcluster.proxy.interfaces.INodeConnection}; both connection classes
declare it.
"""

from __future__ import annotations

import errno
from typing import Any, Optional

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from modcluster.proxy.headers import reason_phrase
from modcluster.proxy.interfaces import CONNECT, ForwardError, IExchange, IForwarder, IUpstream

__all__ = [
    "LocalUpstream",
    "PoolBase",
    "PooledForwarder",
    "connect_failed",
    "connect_node",
    "direct_address",
    "knock",
    "node_endpoint",
]


def node_endpoint(reactor, host: str, port: int, timeout: float,
                  tls=None) -> IStreamClientEndpoint:
    """
    A client endpoint for a node address: IPv4/IPv6 literals directly, names
    through C{HostnameEndpoint}; wrapped in TLS when C{tls} (an
    C{IOpenSSLClientConnectionCreator}) is given.
    """
    h = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    ep: IStreamClientEndpoint
    if isIPAddress(h):
        ep = TCP4ClientEndpoint(reactor, h, port, timeout=timeout)
    elif isIPv6Address(h):
        ep = TCP6ClientEndpoint(reactor, h, port, timeout=timeout)
    else:
        ep = HostnameEndpoint(reactor, h, port, timeout=timeout)
    if tls is not None:
        ep = wrapClientTLS(tls, ep)
    return ep



class _Knocked(Protocol):
    def connectionMade(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.loseConnection()


def knock(reactor, host: str, port: int, timeout: float):
    """
    Whether a node still listens: a TCP connection to C{host}:C{port} (no
    TLS, nothing sent), closed as soon as it is made.  Returns a Deferred
    firing C{None} once connected, or failing as the connection failed.
    """
    endpoint = node_endpoint(reactor, host, port, timeout)
    return endpoint.connect(Factory.forProtocol(_Knocked)).addCallback(lambda _: None)


class _Direct(ClientFactory):
    """C{connectTCP} factory for one prepared node protocol; a failure goes to
    its node connection (C{conn._connectFailed})."""

    noisy = False

    def __init__(self, conn, proto: Protocol) -> None:
        self.conn = conn
        self.proto = proto

    def buildProtocol(self, addr) -> Protocol:
        return self.proto

    def clientConnectionFailed(self, connector, reason) -> None:
        self.conn._connectFailed(reason)



def direct_address(host: str, port: int) -> Optional[tuple[str, int]]:
    """
    C{(address, port)} when C{host} is an IP literal (IPv6 with or without
    brackets), so a plain-TCP node connection can use the reactor's own
    connector; C{None} for names (resolved by the endpoint).
    """
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return (bare, port) if isIPAddress(bare) or isIPv6Address(bare) else None



def connect_node(conn, proto: Protocol) -> None:
    """
    Connect C{proto} for the node connection C{conn} (HTTP or AJP; it has
    C{pool}, C{fw}, C{sync} and C{_connectFailed}): an IP literal without TLS
    through C{connectTCP} directly (no endpoint wrapper protocol between the
    transport and C{proto}: one call less per read), anything else through the
    pool's endpoint.  A synchronous failure is reported like any other.
    """
    pool = conn.pool
    conn.sync = True
    try:
        if pool.direct is not None:
            host, port = pool.direct
            conn.fw.reactor.connectTCP(host, port, _Direct(conn, proto),
                                       timeout=pool.connect_timeout)
        else:
            # (a name, or TLS: the address it reaches is checked once
            # connected, before anything is sent: _OneShot, LoopGuard)
            pool.endpoint.connect(_OneShot(proto, conn)).addErrback(conn._connectFailed)
    except Exception:  # a bad address can fail synchronously
        conn._connectFailed(Failure())
    conn.sync = False



def connect_failed(conn, failure) -> None:
    """
    A node connection (HTTP or AJP) could not be established: forget it and
    report a CONNECT failure to its exchange.  When the endpoint failed
    synchronously (C{conn.sync}), report from the next reactor turn so the
    front never sees a failure from inside its own C{forward} call.
    """
    if conn.sync:
        conn.fw.reactor.callLater(0, connect_failed, conn, failure)
        return
    conn.closed = True
    conn.pool.lost(conn)
    ex = conn.ex
    conn.ex = None
    if ex is not None:
        ex.responseFailed(ForwardError(
            CONNECT, f"cannot connect to {conn.pool.worker}: "
                     f"{failure.getErrorMessage() or failure.type.__name__}",
            local=local_shortage(failure)))


#: errno values of a socket the proxy could not open for want of its own
#: resources (descriptors, buffers, memory): not the node's failure
_SHORTAGE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def local_shortage(failure: Failure) -> bool:
    """
    Whether a node connect failed for lack of the proxy's own resources:
    Twisted's C{ConnectBindError} from C{socket()} (its C{osError} the
    errno), or such an C{OSError}.
    """
    value = failure.value
    code = getattr(value, "osError", None)
    if code is None and isinstance(value, OSError):
        code = value.errno
    return code in _SHORTAGE



class _OneShot(Factory):
    """
    Hands a prepared protocol to the endpoint, unless the forwarder's
    L{LoopGuard<modcluster.loops.LoopGuard>} (C{fw.loop_guard}) finds that the
    address C{addr} the endpoint connected to (the node's name resolved) is
    one of the balancer's own listeners (proxy, management, console): then a
    L{_Looping} takes the connection, which it closes before anything is sent.
    """

    noisy = False

    def __init__(self, proto: Protocol, conn=None) -> None:
        self.proto = proto
        self.conn = conn

    def buildProtocol(self, addr) -> Protocol:
        conn = self.conn
        if conn is not None:
            guard = getattr(conn.fw, "loop_guard", None)
            if guard is not None:
                found = guard.reached(addr)
                if found is not None:
                    return _Looping(conn, addr, *found)
        return self.proto


class ForwardingLoop(Exception):
    """A node connection reached one of the balancer's own listeners."""


class _Looping(Protocol):
    """
    The protocol of a node connection that reached a listener of the
    balancer (L{_OneShot}; C{kind} C{"proxy"}, C{"management"} or
    C{"console"}): it aborts the connection at once (no byte of the request
    is sent), has the node removed (the guard's C{report}) and fails the
    attempt as a connect failure (failover to another node, else 502/503).
    """

    def __init__(self, conn, addr, listener: str, kind: str = "proxy") -> None:
        self.conn = conn
        self.addr = addr
        self.listener = listener
        self.kind = kind

    def connectionMade(self) -> None:
        transport: Any = self.transport  # (a TCP or TLS transport: ITCPTransport)
        if transport is not None:
            transport.abortConnection()
        conn = self.conn
        pool = conn.pool
        s = pool.settings
        host = self.addr.host
        peer = f"[{host}]:{self.addr.port}" if ":" in host else f"{host}:{self.addr.port}"
        if self.kind == "proxy":
            why = f"forwarding loop: {s.host} is {peer}, proxy listener {self.listener}"
        else:
            why = f"not a node: {s.host} is {peer}, {self.kind} listener {self.listener}"
        try:
            conn.fw.loop_guard.report(s.route, f"{s.host}:{s.port}", peer, self.listener,
                                      self.kind)
        finally:
            conn._connectFailed(Failure(ForwardingLoop(why)))




class PoolBase:
    """
    The bookkeeping every per-node pool shares: which connections exist, which
    are idle (most recent last), the smax/ttl trimming of idle ones, retiring
    and closing.  Connections provide C{idle_since}, C{_close()} and C{abort()}.
    """

    def __init__(self, fw, node) -> None:
        s = node.settings
        cfg = fw.config
        self.fw = fw
        self.node_id = node.id
        self.settings = s
        self.rt = node.rt
        self.worker = s.worker_name
        self.idle: list = []
        self.conns: set = set()
        self.closed = False
        self.max_idle = s.smax if s.smax >= 0 else cfg.max_idle_per_node
        self.ttl = s.ttl
        self.read_timeout = s.timeout if s.timeout > 0 else cfg.timeout

    def lost(self, conn) -> None:
        self.conns.discard(conn)
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def trim_idle(self, now: float) -> None:
        """Close idle connections beyond C{max_idle} unused for longer than C{ttl}."""
        idle = self.idle
        excess = len(idle) - self.max_idle
        if excess > 0 and self.ttl > 0:
            n = 0
            while n < excess and now - idle[n].idle_since > self.ttl:
                n += 1
            if n:
                old = idle[:n]
                del idle[:n]
                for conn in old:
                    conn._close()

    def retire(self) -> None:
        """Close idle connections now; busy ones close when their exchange ends."""
        self.closed = True
        idle = self.idle
        self.idle = []
        for conn in idle:
            conn._close()

    def close(self) -> None:
        self.retire()
        for conn in list(self.conns):
            conn.abort()
            conn._close()



@implementer(IForwarder)
class PooledForwarder:
    """
    What every forwarder does with its per-node pools: one pool per node
    registration (a re-registered node gets a fresh pool), pools of nodes that
    left the table drain their busy connections, a coarse tick for timeouts.
    Subclasses set C{pool_class} (built as C{pool_class(self, node)}).
    """

    pool_class: type
    #: a L{LoopGuard<modcluster.loops.LoopGuard>} checking node connections
    #: to names (L{ProxyFactory.guard_loops<modcluster.proxy.front.ProxyFactory.guard_loops>}),
    #: or None
    loop_guard = None

    def __init__(self, reactor) -> None:
        self.now = reactor.seconds()
        self.slack = 1.0
        self._pools: dict = {}
        self._draining: list = []

    def forward(self, exchange: IExchange, fresh: bool = False) -> IUpstream:
        """L{IForwarder.forward}: each subclass starts an attempt its own way."""
        raise NotImplementedError

    def pool(self, node):
        """The pool of C{node}'s current registration (created on demand)."""
        pool = self._pools.get(node.id)
        if (pool is None or pool.rt is not node.rt
                or (pool.settings is not node.settings and pool.settings != node.settings)):
            if pool is not None:
                self._retire(pool)
            pool = self._pools[node.id] = self.pool_class(self, node)
        elif pool.settings is not node.settings:
            pool.settings = node.settings
        return pool

    def reconfigure(self, config) -> None:
        """
        Reload: C{config} (a L{ProxyConfig} whose other settings are unchanged)
        gives the read timeout and idle-connection limit of the nodes that do
        not set their own (CONFIG C{Timeout}, C{smax}), from now on.
        """
        self.config = config
        for pool in self._pools.values():
            if pool.settings.timeout <= 0:
                pool.read_timeout = config.timeout
            if pool.settings.smax < 0:
                pool.max_idle = config.max_idle_per_node

    def _retire(self, pool) -> None:
        pool.retire()
        if pool.conns:
            self._draining.append(pool)

    def retain(self, nodes) -> None:
        live = {n.id: n for n in nodes}
        for nid, pool in list(self._pools.items()):
            n = live.get(nid)
            if (n is None or n.rt is not pool.rt
                    or (n.settings is not pool.settings and n.settings != pool.settings)):
                del self._pools[nid]
                self._retire(pool)

    def tick(self, now: float) -> None:
        self.now = now
        for pool in list(self._pools.values()):
            pool.tick(now, self.slack)
        if self._draining:
            for pool in self._draining:
                pool.tick(now, self.slack)
            self._draining = [p for p in self._draining if p.conns]

    def close(self) -> None:
        for pool in list(self._pools.values()) + self._draining:
            pool.close()
        self._pools.clear()
        self._draining = []



@implementer(IUpstream)
class LocalUpstream:
    """
    An attempt answered without a node connection, for any forwarder: a
    failure (the pool cannot be built, e.g. bad TLS files) or the proxy's own
    response (e.g. a request head too large for AJP, mod_proxy_ajp's 400).
    Reported from the next reactor turn.
    """

    def __init__(self, reactor, ex, error: Optional[ForwardError] = None,
                 status: int = 0, message: str = "") -> None:
        self.ex = ex
        reactor.callLater(0, self._fire, error, status, message)

    def _fire(self, error, status, message) -> None:
        ex = self.ex
        self.ex = None
        if ex is None:
            return
        if error is not None:
            ex.responseFailed(error)
            return
        reason = reason_phrase(status)
        body = b"%d %s: %s\n" % (status, reason, message.encode("utf-8", "replace"))
        ex.responseHead(status, reason, [(b"Content-Type", b"text/plain; charset=utf-8"),
                                         (b"Content-Length", b"%d" % len(body))], len(body))
        ex.responseBody(body)
        ex.responseEnd()

    def requestBody(self, data: bytes) -> None:
        pass

    def requestBodyEnd(self) -> None:
        pass

    def pauseResponse(self) -> None:
        pass

    def resumeResponse(self) -> None:
        pass

    def abort(self) -> None:
        self.ex = None

