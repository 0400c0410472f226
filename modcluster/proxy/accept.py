"""
Optional: an accept loop of our own for plain TCP proxy listeners.

Twisted's C{tcp.Port.doRead} accepts up to C{numberAccepts} (100, growing by
20 whenever a batch fills it) connections per readable event, inside a
log-buffering context manager and a generator, and builds each transport with
C{tcp.Server.__init__} (three C{__init__}s, C{reflect.qual} of the protocol
class for the log prefix, a C{repr} string).  The first bytes of the new
connection are read only one reactor iteration later, when epoll reports the
new socket readable.  For C{Connection: close} clients (one connection per
request) that is a sizeable share of the per-request cost and one extra loop
iteration of latency (docs/performance.md, run K).

L{install} replaces C{doRead} on one C{tcp.Port} B{instance} with
L{Acceptor}, which:

 - accepts at most L{BATCH} connections per readable event (the listening
   socket stays readable, so the rest come at the next iteration, after the
   established connections' events: bounded work per iteration);
 - on Linux, accepts as many as the listening socket's accept queue holds
   (C{TCP_INFO}, read first), not until an C{accept()} fails with
   C{EAGAIN} (~5 us per batch, mostly in the kernel);
 - builds each C{tcp.Server} with the attributes C{tcp.Server.__init__}
   would give it, set directly (checked once per process against a real
   C{tcp.Server}, L{supported}), and registers it for reading as
   C{__init__} does;
 - tries to read the request at once after C{makeConnection} (a client
   usually sends it right after the handshake, before we accept), as the
   C{tcp.Connection.doRead} that the next iteration would run (with
   C{os.read} of the descriptor, as the fast event loop reads, instead of
   the socket's C{recv});
 - for a protocol with a C{deferReading()} method (on an epoll reactor),
   registers the transport for reading only after that first read, and not
   at all when C{deferReading()} returns true: the protocol then starts
   reading itself (C{transport.resumeProducing()}) when it wants to
   (L{modcluster.proxy.client.ClientProtocol.deferReading}: a C{Connection:
   close} request read whole is answered and closed without an C{epoll_ctl}
   pair);
 - builds the socket object with the C type (C{_socket.socket}): the Python
   C{socket.socket}'s C{__init__} and C{close()} are not needed by a
   transport;
 - for a factory with an C{accept_protocol} (the proxy's
   L{modcluster.proxy.front.ProxyFactory}), builds the protocol as
   C{accept_protocol(factory)}: no peer address object, no C{buildProtocol}
   call (the protocol reads the peer from the transport's C{client});
 - works out what depends only on the protocol's class (log prefix, whether
   it defers its reading, an inline C{makeConnection}) once per run of one
   class in a batch;
 - sets C{TCP_NODELAY} once on the listening socket (Linux hands it down to
   the accepted ones), so L{modcluster.proxy._transport.set_nodelay} skips
   the per-connection C{setsockopt};
 - closes those connections without the C{shutdown()} before C{close()}
   (Twisted's own comment: not needed when the descriptor is close-on-exec,
   which accepted sockets are; a FIN still follows the last byte written);
 - on C{EMFILE}/C{ENFILE}/C{ENOBUFS}/C{ENOMEM} stops accepting on that port
   for L{PAUSE} seconds (the pending clients wait in the backlog; Twisted's
   loop would retry at every iteration, busy) and logs at most one line per
   L{LOG_INTERVAL} seconds with the number of such failures.

Everything else stays Twisted's: the transport is a plain C{tcp.Server}
(writes, producers, C{loseConnection}, C{getPeer}, the fast paths of
L{modcluster.proxy.fastloop} and L{modcluster.proxy._transport}), the port
is the same C{tcp.Port} (C{stopListening}, handover, worker processes).
It is installed only on an exact C{tcp.Port} whose transport class is
C{tcp.Server} and whose C{doRead} is Twisted's own, when L{supported} holds.

C{ssl:} listeners with the stdlib TLS engine (L{modcluster.proxy.stdtls})
get it too (L{accepts_description}): their port is a plain C{tcp.Port} whose
factory builds the TLS layer, so the eager first read hands the client's
C{ClientHello} to the handshake in the accept's iteration.  Not a port whose
factory is Twisted's C{TLSMemoryBIOFactory} (C{tls_engine = "twisted"}, or
options the stdlib engine cannot do).
"""

from __future__ import annotations

import errno
import os
import socket as _socket
import sys
from _socket import socket as _c_socket
from typing import Any

from twisted.internet import address, tcp
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["Acceptor", "install", "supported"]

log = Logger()

#: Connections accepted per readable event of one listening socket.
BATCH = 32
#: Seconds a port stops accepting after the process ran out of descriptors.
PAUSE = 0.25
#: Seconds between two log lines about accept failures of one port.
LOG_INTERVAL = 10.0
#: Linux: C{getsockopt(IPPROTO_TCP, TCP_INFO)} of a listening socket gives its
#: accept queue's length as C{tcpi_unacked} (bytes 24-27 of C{struct tcp_info})
_TCP_INFO = getattr(_socket, "TCP_INFO", None) if sys.platform.startswith("linux") else None
_QUEUED_AT = 24
_QUEUED_END = 28
_IPPROTO_TCP = _socket.IPPROTO_TCP
_BYTEORDER = sys.byteorder
_from_bytes = int.from_bytes
#: the first read: os.read of the accepted descriptor (the same read as the
#: socket's recv, without its argument parsing: ~450 machine instructions less)
_os_read = os.read
#: accept() errors that mean "out of resources": pause, do not spin.
_RESOURCE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
#: accept() errors that concern one client only: go on with the next.
_SKIP = (errno.ECONNABORTED, errno.EPERM, errno.EPROTO, errno.ENOPROTOOPT, errno.EHOSTDOWN,
         errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH)

_ATTRIBUTES = frozenset({"reactor", "_tempDataBuffer", "_tempDataLen", "socket", "fileno",
                         "protocol", "server", "client", "sessionno", "hostname", "logstr",
                         "repstr", "connected"})
_supported = None
#: Twisted's own C{Port.doRead}, to tell whether someone patched the class
_PORT_DOREAD = tcp.Port.doRead
#: what L{Acceptor} does inline for a protocol that does not override it
_MAKE_CONNECTION = Protocol.makeConnection


def _lean_address() -> bool:
    """
    Whether an C{IPv4Address} built by C{object.__new__} and three attribute
    stores (C{type}, C{host}, C{port}, in its C{__init__}'s order) is the same
    as one built by its attrs C{__init__}: no other field, no
    C{__attrs_post_init__}, the same instance dictionary, equal and hashed alike.
    """
    cls = address.IPv4Address
    try:
        import attr

        if [a.name for a in attr.fields(cls)] != ["type", "host", "port"]:
            return False
        if hasattr(cls, "__attrs_post_init__"):
            return False
        made = cls("TCP", "127.0.0.1", 1)
        lean = object.__new__(cls)
        lean.type = "TCP"
        lean.host, lean.port = ("127.0.0.1", 1)
        return (list(vars(lean).items()) == list(vars(made).items()) and lean == made
                and hash(lean) == hash(made))
    except Exception:  # pragma: no cover - another attrs or Twisted
        return False


_LEAN_ADDRESS = _lean_address()


def _queued(listener) -> int:
    """The length of a listening TCP socket's accept queue (Linux, L{_TCP_INFO})."""
    return int.from_bytes(
        listener.getsockopt(_socket.IPPROTO_TCP, _TCP_INFO, _QUEUED_END)[_QUEUED_AT:],
        sys.byteorder)


def _queue_length_works() -> bool:
    """
    Whether L{_queued} tells the accept queue's length on this system: 0 on
    a new listening socket, 1 once a client connected, 0 again after the
    accept (checked once per process, over 127.0.0.1).
    """
    if _TCP_INFO is None:
        return False
    import select

    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    client = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        if _queued(listener) != 0:
            return False
        client.connect(listener.getsockname())
        if not select.select([listener], [], [], 2.0)[0] or _queued(listener) != 1:
            return False
        listener.accept()[0].close()
        return _queued(listener) == 0
    except (OSError, ValueError):  # pragma: no cover - no loopback, another kernel
        return False
    finally:
        client.close()
        listener.close()


_queue_length = None


def queue_length_known() -> bool:
    """L{_queue_length_works}, once per process."""
    global _queue_length
    if _queue_length is None:
        _queue_length = _queue_length_works()
    return _queue_length


class _Named:
    """
    C{tcp.Server}'s C{logstr} or C{repstr}, for the transports L{Acceptor}
    builds, made when first read (and then kept on the transport): the same
    strings C{tcp.Server.__init__} makes (two f-strings per connection, most
    never read: ~4 500 instructions per C{Connection: close} request), from
    the log prefix, class name and port number the accept recorded in
    C{_accept_names}, and the transport's C{sessionno} and C{hostname}.  A
    non-data descriptor on the class: a transport built by Twisted's
    C{__init__} sets both as instance attributes, which come first.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, t, owner=None) -> Any:
        if t is None:
            return self
        names = getattr(t, "_accept_names", None)
        if names is None:
            if self.name == "logstr":
                return tcp.Connection.logstr  # the class default ("Uninitialized")
            raise AttributeError(self.name)
        if self.name == "logstr":
            value = f"{names[0]},{t.sessionno},{t.hostname}"
        else:
            value = f"<{names[1]} #{t.sessionno} on {names[2]}>"
        setattr(t, self.name, value)
        return value


def _install_named() -> bool:
    """
    Put L{_Named} descriptors for C{logstr} and C{repstr} on C{tcp.Server}
    (once), if that class defines neither itself; returns whether they are
    there.
    """
    own = vars(tcp.Server)
    if isinstance(own.get("logstr"), _Named) and isinstance(own.get("repstr"), _Named):
        return True
    if "logstr" in own or "repstr" in own or not hasattr(tcp.Connection, "logstr"):
        return False  # pragma: no cover - another Twisted
    server: Any = tcp.Server
    server.logstr = _Named("logstr")
    server.repstr = _Named("repstr")
    return True


class _StubReactor:
    def addReader(self, reader) -> None:
        pass


def supported() -> bool:
    """
    Whether this Twisted's C{tcp.Port}/C{tcp.Server} are the ones this code
    was written against: C{Port.doRead} unpatched, and a C{tcp.Server} built
    by its C{__init__} (over a socket pair, once per process) has exactly the
    instance attributes L{Acceptor} sets.
    """
    global _supported
    if _supported is None:
        _supported = _check()
    return _supported


#: what L{Acceptor} stores on each transport it builds, as tcp.Server's class
#: defaults (checked by L{supported})
_LATE_DEFAULTS = (("producer", None), ("streamingProducer", False), ("disconnecting", 0),
                  ("_aborting", False), ("disconnected", 0))


def _check() -> bool:
    if not hasattr(tcp.Port, "doRead") or not hasattr(tcp.Connection, "_closeSocket"):
        return False
    for name, value in _LATE_DEFAULTS:
        default = getattr(tcp.Server, name, _StubReactor)
        if default is not value and not (type(default) is type(value) and default == value):
            return False
    if getattr(tcp.Connection, "_shouldShutdown", None) is not True:
        return False
    a, b = _socket.socketpair()
    try:
        class _Port:
            _realPortNumber = 1

        # stand-ins (typed Any): only the attributes Server.__init__ sets are looked at
        protocol: Any = object()
        port: Any = _Port()
        reactor: Any = _StubReactor()
        s = tcp.Server(a, protocol, ("127.0.0.1", 1), port, 0, reactor)
        return set(vars(s)) == _ATTRIBUTES and s.connected == 1
    except Exception:
        return False
    finally:
        a.close()
        b.close()


class Acceptor:
    """
    The C{doRead} of one listening C{tcp.Port} (see the module docstring).

    @ivar failures: accept() calls that failed for lack of resources.
    """

    def __init__(self, port, clock=None) -> None:
        self.port = port
        self.clock = clock if clock is not None else port.reactor
        self.failures = 0
        self._unlogged = 0
        self._last_log = None
        self._resume = None
        #: the listening socket whose family, type and protocol are in _kind
        self._listener = None
        self._kind = (0, 0, 0)
        #: the listening socket's accept queue length is read before a batch
        #: (L{_queued}): the batch accepts that many, not until EAGAIN
        self._count = False
        #: protocol class -> (log prefix, class name, port number) for classes
        #: with Protocol's logPrefix
        self._prefixes: dict = {}
        #: tcp.Server's logstr and repstr are made when read (_Named)
        self._lazy_names = _install_named()
        #: TCP_NODELAY is set on the listening socket, and Linux gives it to every
        #: accepted socket: L{set_nodelay} need not set it again per connection
        self.nodelay = False
        if sys.platform.startswith("linux"):
            try:
                port.socket.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
                self.nodelay = True
            except OSError:
                pass
        reactor = port.reactor
        # the eager first read needs to know whether the protocol left the
        # connection registered for reading (an epoll reactor's fd set)
        self._reads = getattr(reactor, "_reads", None)
        if not isinstance(self._reads, set):
            self._reads = None
        self._disconnect = getattr(reactor, "_disconnectSelectable", None)
        #: the registration for reading may be left to the protocol (deferReading):
        #: only on an epoll reactor, whose _reads holds descriptors
        self._defer = self._reads is not None and _is_epoll(reactor)
        # stopReading from someone else (a handover pausing the port) cancels
        # a pending resume of ours
        self._stop_reading = port.stopReading
        port.stopReading = self._stopped

    def _stopped(self) -> None:
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None
        self._stop_reading()

    def __call__(self) -> None:
        port = self.port
        listener = port.socket
        accept = listener._accept
        if listener is not self._listener:
            # socket.socket's family and type are Python properties making enums
            # (eight Python calls): read once per listening socket
            self._listener = listener
            self._kind = (int(listener.family), int(listener.type), listener.proto)
            self._count = (isinstance(listener, _c_socket) and queue_length_known()
                           and self._kind[0] in (_socket.AF_INET, _socket.AF_INET6)
                           and self._kind[1] & 0xF == _socket.SOCK_STREAM)
        family, type_, proto = self._kind
        batch = BATCH
        if self._count:
            # Accept as many as are queued: the accept() after the last one,
            # failing with EAGAIN, costs ~5 us (the kernel makes and frees a
            # socket and a file for it; a BlockingIOError and its traceback)
            # against ~0.7 for this getsockopt.  Level-triggered epoll reports
            # the socket again for clients queued after it; with none queued
            # (another process accepted them, as in a handover), one accept() as before.
            try:
                batch = _from_bytes(listener.getsockopt(_IPPROTO_TCP, _TCP_INFO, _QUEUED_END)
                                    [_QUEUED_AT:], _BYTEORDER)  # _queued, inline
            except OSError:
                batch = BATCH
            if batch > BATCH:
                batch = BATCH
            elif batch <= 0:
                batch = 1
        factory = port.factory
        reactor = port.reactor
        add_reader = reactor.addReader
        reads = self._reads
        new = object.__new__
        Server = tcp.Server
        # (the transports' bufferSize, as tcp.Connection.doRead reads it: a
        # class attribute, read once per batch, not through each instance)
        read_size = Server.bufferSize
        prefixes = self._prefixes
        lazy_names = self._lazy_names
        nodelay = self.nodelay
        on = port._realPortNumber
        defer = self._defer
        ipv6 = port.addressFamily == _socket.AF_INET6
        AddressType = port._addressType
        lean_address = not ipv6 and AddressType is address.IPv4Address and _LEAN_ADDRESS
        # a factory whose protocols take the peer from the transport (the
        # proxy's, ProxyFactory.accept_protocol): no address object to build
        peerless = getattr(factory, "accept_protocol", None)
        last_cls: Any = None
        names: Any = None
        deferred = inline_make = False
        for _ in range(batch):
            try:
                fd, addr = accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in _SKIP:
                    continue
                if e.errno in _RESOURCE:
                    self._out_of_resources(e)
                    return
                log.failure("proxy: accept() failed on port {port}", port=on)
                return
            # the C socket type, not socket.socket: its Python __init__ and close()
            # (makefile() reference counting) are not needed by a transport
            skt = _c_socket(family, type_, proto, fd)
            try:
                if ipv6:
                    host = _socket.getnameinfo(
                        addr, _socket.NI_NUMERICHOST | _socket.NI_NUMERICSERV)[0]
                    addr = (host,) + tuple(addr[1:])
                skt.setblocking(False)
                if peerless is not None:
                    protocol = peerless(factory)
                elif lean_address:
                    # IPv4Address("TCP", *addr) without its attrs __init__ and the
                    # validator of "TCP" (two Python calls): the same instance
                    peer = new(AddressType)
                    peer.type = "TCP"
                    peer.host, peer.port = addr
                    protocol = factory.buildProtocol(peer)
                else:
                    protocol = factory.buildProtocol(AddressType("TCP", *addr))
            except Exception:
                skt.close()
                log.failure("proxy: a connection accepted on port {port} could not be set up",
                            port=on)
                continue
            if protocol is None:
                skt.close()
                continue
            s = port.sessionno
            port.sessionno = s + 1
            host = addr[0]
            cls = protocol.__class__
            if cls is not last_cls:
                # what depends only on the protocol's class: once per batch
                # (the batch's protocols are of one class, usually)
                names = prefixes.get(cls)
                last_cls = cls
                if names is None or names[2] != on:
                    names = (port._getLogPrefix(protocol), cls.__name__, on)
                    if (getattr(cls, "logPrefix", None) is Protocol.logPrefix
                            or getattr(cls, "constant_log_prefix", False)):
                        # (constant_log_prefix: the class says its logPrefix() is
                        # the same for every connection built, as the TLS layer
                        # of alpn._NegotiatingTLS before its handshake)
                        prefixes[cls] = names
                    else:
                        last_cls = None  # a logPrefix of its own: asked per connection
                # a protocol with deferReading is registered for reading only
                # after its first read, and not at all if it says so (see
                # deferReading)
                deferred = defer and getattr(cls, "deferReading", None) is not None
                inline_make = cls.makeConnection is _MAKE_CONNECTION
            # attribute by attribute, in __init__'s order: an instance whose
            # __dict__ is assigned whole gets a plain dict instead of the class's
            # shared-key layout, and every attribute read on it (and, shared call
            # sites thrashing, on the other transports) gets slower
            t = new(Server)
            t.reactor = reactor
            t._tempDataBuffer = []
            t._tempDataLen = 0
            t.socket = skt  # type: ignore[assignment]  # the C type: what it uses of it
            t.fileno = skt.fileno
            t.protocol = protocol
            t.server = port
            t.client = addr
            t.sessionno = s
            t.hostname = host
            if lazy_names:
                # logstr and repstr are made when first read (_Named): most
                # transports are never logged nor repr'd
                t._accept_names = names  # type: ignore[attr-defined]
            else:
                t.logstr = f"{names[0]},{s},{host}"
                t.repstr = f"<{names[1]} #{s} on {on}>"
            t._shouldShutdown = False
            # our own mark on Twisted's transport (read by _transport.set_nodelay)
            t._nodelay_inherited = nodelay  # type: ignore[attr-defined]
            # FileDescriptor's class defaults that a connection stores later
            # (producer, streamingProducer: connectionMade, the TLS layer's
            # after its handshake; disconnecting, _aborting: the first write's
            # direct_writer; disconnected: the close), stored now with the
            # same values (_LATE_DEFAULTS): CPython 3.11 gives a class's
            # instances one shared key table, whose room shrinks by one with
            # every instance made, so a name first stored once many transports
            # exist (a kept-alive connection's first answer) is not in it, and
            # every transport storing it then builds a dictionary of its own
            t.producer = None
            t.streamingProducer = False
            t.disconnecting = 0
            t._aborting = False
            t.disconnected = 0
            if ipv6:
                t._addressType = address.IPv6Address
            try:
                if not deferred:
                    add_reader(t)
                t.connected = 1
                if inline_make:
                    # Protocol.makeConnection, inline
                    protocol.connected = 1
                    protocol.transport = t
                    protocol.connectionMade()
                else:
                    protocol.makeConnection(t)
            except BaseException:
                log.failure("proxy: unhandled error in {protocol!r}.makeConnection",
                            protocol=protocol)
                self._close(t, CONNECTION_LOST)
                continue
            if reads is None or not t.connected or t.disconnecting:
                continue
            if deferred:
                self._first_read(t, fd, read_size)
                if t.connected and not t.disconnecting and fd not in reads:
                    # registered unless the protocol defers it
                    try:
                        if protocol.deferReading():
                            continue
                    except BaseException:
                        log.failure("unhandled error in {protocol!r}.deferReading",
                                    protocol=protocol)
                    add_reader(t)
            elif fd in reads:
                self._first_read(t, fd, read_size)

    def _first_read(self, t, fd: int, size: int) -> None:
        """
        What C{tcp.Connection.doRead} would do when epoll reports it readable
        (C{recv} as C{os.read} of the descriptor, as the fast event loop reads).
        """
        try:
            data = _os_read(fd, size)
        except BlockingIOError:
            return
        except OSError:
            self._close(t, CONNECTION_LOST)
            return
        if not data:
            self._close(t, CONNECTION_DONE)
            return
        try:
            t.protocol.dataReceived(data)
        except BaseException as e:
            log.failure("unhandled error in {protocol!r}.dataReceived", protocol=t.protocol)
            self._close(t, e)

    def _close(self, t, why) -> None:
        try:
            if self._disconnect is not None:
                self._disconnect(t, why, True)
            elif hasattr(t, "socket"):
                t.connectionLost(Failure(CONNECTION_LOST))
        except BaseException:
            log.failure("unhandled error while closing {transport!r}", transport=t)

    def _out_of_resources(self, e: OSError) -> None:
        """Stop accepting for L{PAUSE} seconds; log at most once per L{LOG_INTERVAL}."""
        self.failures += 1
        now = self.clock.seconds()
        if self._last_log is None or now - self._last_log >= LOG_INTERVAL:
            more = self._unlogged
            self._unlogged = 0
            self._last_log = now
            log.error(
                "proxy: cannot accept connections on port {port}: {error}; pausing "
                "accepts for {pause} s (waiting clients stay in the backlog){more}",
                port=self.port._realPortNumber, error=errno.errorcode.get(
                    e.errno or 0, str(e.errno)) + f" ({e.strerror})", pause=PAUSE,
                failures=self.failures,
                more=f"; {more} more such failures since the last line" if more else "")
        else:
            self._unlogged += 1
        if self._resume is None or not self._resume.active():
            self._stop_reading()
            self._resume = self.clock.callLater(PAUSE, self._resumed)

    def _resumed(self) -> None:
        self._resume = None
        port = self.port
        if getattr(port, "connected", False) and not port.disconnecting:
            port.startReading()


def _is_epoll(reactor) -> bool:
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # pragma: no cover - not Linux
        return False
    return isinstance(reactor, EPollReactor)


def install(port, clock=None) -> bool:
    """
    Accept on C{port} with an L{Acceptor} if it is an exact, listening
    C{tcp.Port} serving plain C{tcp.Server} transports and L{supported}
    holds.  Returns whether it was installed.
    """
    if type(port) is not tcp.Port or port.transport is not tcp.Server:
        return False
    if _twisted_tls(getattr(port, "factory", None)):
        return False  # Twisted's TLS (an ssl: listener the stdlib engine could not take)
    if isinstance(getattr(port, "doRead", None), Acceptor):
        return True
    if tcp.Port.doRead is not _PORT_DOREAD or "doRead" in vars(port):
        return False
    if not getattr(port, "connected", False) or not supported():
        return False
    # this one port's doRead replaced on purpose (mypy refuses assigning to a
    # method): through an untyped name
    patched: Any = port
    patched.doRead = Acceptor(port, clock)
    return True


def install_logged(port) -> bool:
    """L{install}, with a log line saying which accept loop C{port} runs."""
    installed = install(port)
    where = getattr(port, "_realPortNumber", None)
    if installed:
        log.info("proxy: port {port} accepts with the proxy's own accept loop "
                 "(proxy.fast_event_loop)", port=where)
    else:
        log.info("proxy: port {port} keeps Twisted's accept loop (the proxy's own needs "
                 "Twisted's tcp.Port and tcp.Server as written against)", port=where)
    return installed


class AcceptingEndpoint:
    """
    A stream server endpoint that listens with C{endpoint} and then installs
    the L{Acceptor} on the port it gives (L{install_logged}).
    """

    def __init__(self, endpoint) -> None:
        self.endpoint = endpoint

    def listen(self, factory):
        def listening(port):
            install_logged(port)
            return port

        return self.endpoint.listen(factory).addCallback(listening)


def _twisted_tls(factory) -> bool:
    from twisted.protocols.tls import TLSMemoryBIOFactory

    return isinstance(factory, TLSMemoryBIOFactory)


def accepts_description(description: str, tls_engine: str) -> bool:
    """
    Whether a proxy listener gets the accept loop: plain TCP ones, and
    C{ssl:} ones whose TLS is the stdlib engine's (C{proxy.tls_engine =
    "stdlib"}: a plain C{tcp.Port} under L{modcluster.proxy.stdtls}).
    """
    scheme = description.split(":", 1)[0].strip().lower()
    return scheme in ("tcp", "tcp6") or (scheme == "ssl" and tls_engine == "stdlib")


def is_plain_tcp_description(description: str) -> bool:
    """Whether an endpoint description is a plain TCP one (C{tcp:}, C{tcp6:})."""
    return description.split(":", 1)[0].strip().lower() in ("tcp", "tcp6")
