"""
Forwarding-loop detection for MCMP CONFIG: a node registered with the address
of one of the balancer's own proxy listeners would get each of its requests
sent back to the balancer, which forwards it again, until descriptor or
in-flight limits answer 503.  L{ProxyAddresses} knows the addresses the proxy
listeners are bound to (recorded when they listen, so port 0 and adopted
sockets give their real port) and tells whether a node's C{Host}/C{Port}
reaches one of them (L{ProxyAddresses.reached_by}); the MCMP handler refuses
such a CONFIG, and removes such a node registered before the listeners were up
(a saved state, a handover) once they listen, and at each reload
(L{modcluster.mcmp.handler.MCMPHandler.remove_looping_nodes}).

What a node's C{Host} is compared as, without blocking the reactor (node
connections resolve names asynchronously, L{modcluster.proxy.pool.node_endpoint}):
IP literals (the forms C{getaddrinfo} takes with C{AI_NUMERICHOST}, as the
node connection would read them, IPv4-mapped IPv6 as IPv4; L{node_addresses})
and C{localhost} (127.0.0.1 and ::1).  An unspecified address (C{0.0.0.0}, C{::})
is the local host's loopback, as a connection to it is on Linux.  Other names
are not resolved here; a node registered under a name of this host is caught
by the data plane instead, when a node connection to it is made: the address
the name resolved to is compared in the same way, with the proxy listeners and
the management and console listeners (L{LoopGuard}, called by
L{modcluster.proxy.pool.connect_node}), nothing is sent on that connection,
and the node is removed (docs/mcmp.md).

A listener bound to a wildcard address (C{0.0.0.0}; C{::}, which also takes
IPv4 on a dual-stack host) is reached by any local address: loopback, or an
address the kernel routes to this host (a UDP socket "connected" to it has it
as its own address: a route lookup, no packet, no name resolution; unlike
binding, it does not take a remote address for a local one where
C{ip_nonlocal_bind} is set).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Callable, Iterable, Optional, Union

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import HostnameEndpoint

__all__ = ["LoopGuard", "ProxyAddresses", "node_addresses", "reaches"]

_IP = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
_LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


def _normal(ip: _IP) -> _IP:
    """IPv4-mapped IPv6 as IPv4; an unspecified address as its family's loopback."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return _LOOPBACK[0] if ip.version == 4 else _LOOPBACK[1]
    return ip


#: Longer than any host name (253) or scoped IPv6 literal: no connection.
_MAX_HOST = 300


def node_addresses(host: str) -> Optional[tuple[_IP, ...]]:
    """
    The addresses a node C{Host} (as CONFIG gives it: IPv6 in brackets or
    not) stands for, or C{None} for a name this check does not resolve or a
    C{Host} the node connection cannot connect to.

    Read as L{modcluster.proxy.pool.node_endpoint} reads it: a dotted quad
    or an IPv6 literal (a C{%zone} included) is an address, looked up as the
    connection does (C{getaddrinfo} with C{AI_NUMERICHOST}); anything else
    goes through C{HostnameEndpoint}, which refuses a name that is not valid
    IDNA (C{127.0.0.1%lo}, spaces, fullwidth digits: no connection at all)
    and otherwise resolves the NFC-normalised text with C{getaddrinfo},
    which also reads C{127.1}, C{2130706433}, C{0x7f.1}, C{0177.0.0.1} as
    127.0.0.1: those are compared numerically here too, other names not.
    """
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not bare or len(bare) > _MAX_HOST:
        return None
    if not (isIPAddress(bare) or isIPv6Address(bare)):
        invalid, name, bare = HostnameEndpoint._hostAsBytesAndText(bare)
        if invalid:
            return None  # the node connection fails at once (ValueError)
        # (its IDNA form: the resolver is given the text, which the IDNA
        # codec reads with the ideographic, fullwidth and halfwidth full
        # stops as dots, so "localhost\u3002" is looked up as "localhost.")
        if name.lower().rstrip(b".") == b"localhost":
            return _LOOPBACK
    try:
        infos = socket.getaddrinfo(bare, None, type=socket.SOCK_STREAM,
                                   flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):
        return None  # not a literal (socket.gaierror is an OSError)
    found: list[_IP] = []
    for info in infos:
        try:
            ip = _normal(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
        except ValueError:  # pragma: no cover - getaddrinfo gave an address
            continue
        if ip not in found:
            found.append(ip)
    return tuple(found) or None


def _local(ip: _IP) -> bool:
    """Whether C{ip} is an address of this host (see the module docstring)."""
    if ip.is_loopback:
        return True
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((str(ip), 9))
            own = s.getsockname()[0]
    except OSError:
        return False  # no route (or a scoped address without its scope)
    try:
        return _normal(ipaddress.ip_address(str(own).split("%", 1)[0])) == ip
    except ValueError:  # pragma: no cover
        return False


def reaches(addresses: Iterable[_IP], port: int,
            listeners: Iterable[tuple[str, int]]) -> Optional[str]:
    """
    The first listener C{(host, port)} of C{listeners} that a connection to
    one of C{addresses} on C{port} reaches, as C{"host:port"}, else C{None}.
    """
    if not 0 < port < 65536:
        return None  # no connection (port 0 is refused, not a listener's)
    addresses = tuple(addresses)
    for lhost, lport in listeners:
        if lport != port:
            continue
        bare = lhost[1:-1] if lhost.startswith("[") and lhost.endswith("]") else lhost
        try:
            listening = ipaddress.ip_address((bare or "0.0.0.0").split("%", 1)[0])
        except ValueError:
            continue
        shown = f"[{bare}]:{lport}" if ":" in bare else f"{bare or '0.0.0.0'}:{lport}"
        if listening.is_unspecified:
            for ip in addresses:
                if (listening.version == 6 or ip.version == 4) and _local(ip):
                    return shown
        else:
            listening = _normal(listening)
            if listening in addresses:
                return shown
    return None


class _Recording:
    """A server endpoint that records the port its C{listen} gives."""

    def __init__(self, endpoint, ports: list, notify: Callable[[], None]) -> None:
        self.endpoint = endpoint
        self._ports = ports
        self._notify = notify

    def listen(self, factory):
        def listening(port):
            self._ports.append(port)
            self._notify()
            return port

        return self.endpoint.listen(factory).addCallback(listening)


class ProxyAddresses:
    """
    The addresses the proxy listeners are bound to: ports recorded by
    L{record}ed endpoints while they listen, plus C{sources} (callables
    giving C{(host, port)} pairs, e.g. the sockets a worker pool bound).
    """

    def __init__(self) -> None:
        self._ports: list = []
        self._sources: list[Callable[[], Iterable[tuple[str, int]]]] = []
        #: the other listeners' ports by kind (C{"management"}, C{"console"}):
        #: a node there is not a loop but would open that listener to every
        #: proxy client, as 127.0.0.1 (L{own_listener})
        self._others: dict[str, list] = {}
        self._observers: list[Callable[[], None]] = []

    def record(self, endpoint, kind: str = "proxy"):
        """
        C{endpoint}, whose listening port is recorded here: a proxy listener,
        or another C{kind} of listener of this balancer (L{own_listener}).
        """
        if kind == "proxy":
            return _Recording(endpoint, self._ports, self._listening)
        return _Recording(endpoint, self._others.setdefault(kind, []), self._listening)

    def on_listening(self, observer: Callable[[], None]) -> None:
        """Call C{observer()} whenever a recorded endpoint starts listening."""
        self._observers.append(observer)

    def _listening(self) -> None:
        for observer in self._observers:
            observer()

    def add_source(self, source: Callable[[], Iterable[tuple[str, int]]]) -> None:
        self._sources.append(source)

    def bound(self) -> list[tuple[str, int]]:
        """C{(host, port)} of every proxy listener listening now (TCP ones)."""
        out: list[tuple[str, int]] = []
        live = []
        for port in self._ports:
            if not getattr(port, "connected", True):
                continue  # stopped listening
            live.append(port)
            addr = port.getHost()
            if isinstance(addr, (IPv4Address, IPv6Address)):
                out.append((addr.host, addr.port))
        self._ports[:] = live
        for source in self._sources:
            out.extend(source())
        return out

    def reached_by(self, host: str, port: int) -> Optional[str]:
        """
        The proxy listener (C{"host:port"}) a node at C{host}:C{port} would
        reach, or C{None} (also for a C{host} name that is not checked).
        """
        addresses = node_addresses(host)
        if addresses is None:
            return None
        return reaches(addresses, port, self.bound())

    def others(self) -> list[tuple[str, int, str]]:
        """
        C{(host, port, kind)} of the other listeners (management, console)
        listening now (TCP ones), in the order they were recorded by kind.
        """
        out: list[tuple[str, int, str]] = []
        for kind, ports in self._others.items():
            live = [p for p in ports if getattr(p, "connected", True)]
            ports[:] = live
            for p in live:
                addr = p.getHost()
                if isinstance(addr, (IPv4Address, IPv6Address)):
                    out.append((addr.host, addr.port, kind))
        return out

    def own_listener(self, host: str, port: int) -> Optional[tuple[str, str]]:
        """
        C{(listener, kind)}: the listener of this balancer (C{"host:port"})
        a node at C{host}:C{port} would reach, a proxy listener first
        (C{kind} C{"proxy"}: a forwarding loop), else one of the other kinds
        recorded (C{"management"}, C{"console"}: proxy clients would reach
        that listener through the node, from this host's address, which its
        allow list admits by default), or C{None} (also for a C{host} name
        that is not checked).
        """
        addresses = node_addresses(host)
        if addresses is None:
            return None
        return _own_listener(addresses, port, self.bound(), self.others())


def _own_listener(addresses: tuple[_IP, ...], port: int,
                  proxies: Iterable[tuple[str, int]],
                  others: Iterable[tuple[str, int, str]]) -> Optional[tuple[str, str]]:
    """L{ProxyAddresses.own_listener}'s answer for given listeners."""
    found = reaches(addresses, port, proxies)
    if found is not None:
        return found, "proxy"
    kinds: dict[str, list[tuple[str, int]]] = {}
    for host, lport, kind in others:
        kinds.setdefault(kind, []).append((host, lport))
    for kind, pairs in kinds.items():
        found = reaches(addresses, port, pairs)
        if found is not None:
            return found, kind
    return None


#: Peer addresses a L{LoopGuard} remembers its answer for, at most.
GUARD_MEMO = 1024


def _no_others() -> list[tuple[str, int, str]]:
    return []


class LoopGuard:
    """
    The data plane's check of a node connection, for nodes named by a host
    name (the CONFIG check, L{ProxyAddresses.own_listener}, reads IP literals
    and C{localhost} only): the address the name resolved to, given when the
    connection is made (the endpoint's C{buildProtocol(peer)}, before anything
    is sent), compared with the balancer's listeners as
    L{ProxyAddresses.own_listener} compares them: the proxy listeners (a
    forwarding loop), then the management and console listeners (not a node:
    every proxy client would reach that listener through it, from this host's
    address).  Once per new node connection of such a node (and of a TLS
    node), not per request; the answer is remembered per peer address while
    the listeners are the same (L{GUARD_MEMO} of them).

    @param listeners: gives the C{(host, port)} of the proxy listeners
        listening now (L{ProxyAddresses.bound}, or a worker process's sockets).
    @param report: C{report(route, address, peer, listener, kind)} for a node
        that reaches one of them (C{address}: its C{Host:Port}; C{peer}: what
        it resolved to; C{kind}: C{"proxy"}, C{"management"}, C{"console"}):
        remove it, as L{modcluster.mcmp.handler.MCMPHandler.forwarding_loop_found}
        does (or a worker process's message to the control process that does).
    @param others: gives the C{(host, port, kind)} of the other listeners
        listening now (L{ProxyAddresses.others}, or what the control process
        told a worker process); none by default.
    """

    def __init__(self, listeners: Callable[[], Iterable[tuple[str, int]]],
                 report: Callable[[str, str, str, str, str], None],
                 others: Callable[[], Iterable[tuple[str, int, str]]] = _no_others) -> None:
        self._listeners = listeners
        self._others = others
        self.report = report
        self._memo: dict[tuple[str, int], tuple[tuple, Optional[tuple[str, str]]]] = {}

    def reached(self, peer) -> Optional[tuple[str, str]]:
        """
        C{(listener, kind)}: the listener of this balancer (C{"host:port"})
        that a connection to C{peer} (an C{IPv4Address}/C{IPv6Address})
        reaches, and its kind (C{"proxy"} first), else C{None}.
        """
        host = getattr(peer, "host", None)
        port = getattr(peer, "port", None)
        if not isinstance(host, str) or not isinstance(port, int):
            return None  # (not an INET peer: no listener of ours)
        listeners = (tuple(self._listeners()), tuple(self._others()))
        key = (host, port)
        memo = self._memo
        known = memo.get(key)
        if known is not None and known[0] == listeners:
            return known[1]
        try:
            ip = _normal(ipaddress.ip_address(host.split("%", 1)[0]))
        except ValueError:
            return None
        found = _own_listener((ip,), port, *listeners)
        if len(memo) >= GUARD_MEMO:
            memo.clear()
        memo[key] = (listeners, found)
        return found
