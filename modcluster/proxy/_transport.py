"""
The one place where the data plane leans on Twisted internals: writing to a
plain TCP transport whose buffer is empty goes straight to the socket, and
closing one whose buffer is empty closes at once (L{lose_connection}).

Why: C{FileDescriptor.write} always appends to a buffer and registers for
"writable"; the bytes leave one reactor iteration later (an C{epoll_ctl}, a
poll wake-up and a C{doWrite} per message).  For a proxy that writes one
small message per read that is most of the per-request cost
(docs/data-plane.md, "Performance").  When nothing is buffered, sending at once
is exactly what C{doWrite} would do next; whatever the kernel does not take is
handed to C{transport.write}, so ordering, buffering, producer pausing and
error handling stay Twisted's.

Only exact C{twisted.internet.tcp.Server}/C{Client} instances with the
attributes this relies on get the fast path; anything else (TLS, test
transports, another reactor) uses C{transport.write}.  The attributes are
checked once per connection; tests/unit/proxy/test_proxy_transport.py pins the
behaviour against the installed Twisted.
"""

from __future__ import annotations

import os
import socket
import types
from typing import Any, Callable

from twisted.internet import abstract, tcp
from twisted.internet.interfaces import IConsumer, IPushProducer, ISSLTransport, ITCPTransport
from twisted.internet.main import CONNECTION_DONE
from twisted.python.failure import Failure

__all__ = ["SENT_WHOLE", "IStreamTransport", "close_sent", "direct_writer", "end_tls_sending",
           "is_plain_tcp", "lose_connection", "send_last", "set_nodelay"]


class IStreamTransport(ITCPTransport, IConsumer, IPushProducer):
    """
    What the data plane's connections use of their transport (for the type
    checker; nothing declares it): a TCP transport, with or without TLS, that
    is also a consumer (a protocol registers itself as its producer) and a push
    producer (the protocol pauses and resumes its reading).  Twisted's
    C{tcp.Server}/C{Client} and its TLS wrapper are all three.
    """

_FAST_TYPES = (tcp.Server, tcp.Client)

#: the reason given for every connection L{lose_connection} closes at once: one
#: Failure (its exception, CONNECTION_DONE, is Twisted's shared instance anyway)
#: with its class list computed once, instead of a new Failure whose
#: C{check()} in C{tcp.Connection.connectionLost} recomputes it per connection
_DONE = Failure(CONNECTION_DONE)
_DONE.parents  # noqa: B018 - computed and cached now
_NEEDED = ("socket", "dataBuffer", "_tempDataLen", "connected", "disconnecting",
           "_writeDisconnected", "_aborting")
#: of those, the ones to look for on each transport: the rest are class
#: attributes of both types (else every one is looked for)
_NEEDED_HERE = tuple(n for n in _NEEDED if not all(hasattr(c, n) for c in _FAST_TYPES))


def direct_writer(transport) -> Callable[[bytes], None]:
    """
    A C{write(data)} function for C{transport}: straight to the socket when
    the transport's buffer is empty, else C{transport.write}.
    """
    write = transport.write
    if type(transport) not in _FAST_TYPES or getattr(transport, "TLS", False):
        return write
    for name in _NEEDED_HERE:  # (the others: class attributes, checked once, _NEEDED)
        if not hasattr(transport, name):  # pragma: no cover - other Twisted versions
            return write
    t = transport
    # os.write of the socket's descriptor: the same send on a connected
    # non-blocking TCP socket as socket.send, without its argument parsing
    # (PyArg_ParseTuple).  Only while the transport is connected, and Twisted
    # closes the socket only after it set connected to 0 (connectionLost):
    # the descriptor is this socket's whenever it is written to here.
    fd = transport.socket.fileno()
    # disconnecting and _aborting are FileDescriptor's class-level defaults
    # until loseConnection / abortConnection set them on the instance: copied
    # onto the instance here (the same values, so nothing changes), every
    # write's test below and the fast loop's _aborting test per read event
    # (fastloop.py) read an instance attribute instead of a generic lookup
    # through the class (issue 18)
    t.disconnecting = t.disconnecting
    t._aborting = t._aborting
    writes = _fd_writers(transport)
    if writes is not None:
        return _EPOLL_WRITER[type(t)](t, fd, writes, write)

    def direct(data: bytes) -> None:
        if (t._tempDataLen or t.dataBuffer or not t.connected or t.disconnecting
                or t._writeDisconnected or t._aborting):
            write(data)
            return
        try:
            sent = os_write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # Let Twisted find the error on its own write path (connectionLost).
            write(data)
            return
        if sent < len(data):
            write(data[sent:])

    return direct


os_write = os.write


def _epoll_writer(t: Any, fd: int, writes: set, write: Callable[[bytes], None]
                  ) -> Callable[[bytes], None]:
    """L{direct_writer}'s writer on an epoll reactor (see there)."""
    # On an epoll reactor, "something buffered" (_tempDataLen, dataBuffer)
    # is "registered for writable" (Twisted's write registers, doWrite lets
    # go once both are empty): one look in the reactor's set of writing
    # descriptors instead of two class-level defaults read through the
    # instance (generic attribute lookups).  A half-closed transport
    # (_writeDisconnected) is not registered: its send fails (EPIPE) and
    # the data goes to transport.write, which drops it, as before.
    def direct_epoll(data: bytes) -> None:
        if fd in writes or not t.connected or t.disconnecting or t._aborting:
            write(data)
            return
        try:
            sent = os_write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            write(data)
            return
        if sent < len(data):
            write(data[sent:])

    return direct_epoll


def _clone(f: Any) -> Any:
    """
    A copy of C{f} (a function without free variables) whose code objects,
    its own and those of the functions it defines, are copies: the same
    bytecode with inline caches of their own.
    """
    code = f.__code__
    consts = tuple(c.replace() if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return types.FunctionType(code.replace(co_consts=consts), f.__globals__, f.__name__,
                              f.__defaults__)


#: L{_epoll_writer} per transport class, each a copy with code objects of its
#: own: CPython 3.11 specialises an attribute read at each place in the
#: bytecode for one type, and a writer's reads (C{t.connected},
#: C{t.disconnecting}, C{t._aborting}) see client transports (C{tcp.Server})
#: and node transports (C{tcp.Client}) in turn; with one code object for both
#: each read missed and was a generic lookup (~6 per kept-alive request).
_EPOLL_WRITER = {cls: _clone(_epoll_writer) for cls in _FAST_TYPES}


def _fd_writers(transport) -> Any:
    """The set of descriptors C{transport}'s reactor watches for writable, if
    it is an epoll reactor (else C{None})."""
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # pragma: no cover - not Linux
        return None
    reactor = getattr(transport, "reactor", None)
    if not isinstance(reactor, EPollReactor) or type(reactor._writes) is not set:
        return None
    return reactor._writes


#: MSG_MORE (Linux): the kernel holds a short segment back for more data, or the FIN
_MSG_MORE = getattr(socket, "MSG_MORE", 0)


#: L{send_last}: C{data} sent whole and the FIN with it
SENT_WHOLE = 2
#: L{send_last}: what the kernel did not take handed to C{transport.write}
_SENT_PART = 1


def send_last(transport, data: bytes) -> int:
    """
    Send C{data}, the last bytes of a plain TCP server transport that
    L{lose_connection} closes right after (the caller's promise), with the
    FIN in the same segment as their end: sent with C{MSG_MORE} (the kernel
    holds the last segment back), then C{shutdown(SHUT_WR)}, which puts the
    FIN on that segment and sends it.  Over loopback each segment is also the
    peer's receive work, done in this process: one segment fewer per
    C{Connection: close} response (docs/data-plane.md).  (Not C{MSG_MORE}
    and C{close()} alone: bytes the client sent after its request and nobody
    read make C{close()} reset the connection, and the held-back answer would
    be lost with it; after the shutdown it is already sent, as it was before.)

    Returns L{SENT_WHOLE} when C{data} was sent whole and the sending side
    shut (L{lose_connection} would close at once: the caller may call
    L{close_sent} instead, without its checks); a smaller true value when
    what the kernel did not take was handed to C{transport.write}, without
    the shutdown (the close then waits for Twisted's buffer); 0 when the
    transport is not one that L{lose_connection} closes at once (the caller
    then writes as usual).
    """
    t: Any = transport
    if not (_MSG_MORE and t.__class__ is tcp.Server and _LEAN_LOST and not t.TLS
            and t.connected and not t.disconnecting and not t._tempDataLen
            and not t.dataBuffer and not t._writeDisconnected):
        return 0
    skt = t.socket
    try:
        sent = skt.send(data, _MSG_MORE)
    except BlockingIOError:
        sent = 0
    except OSError:
        return 0  # Twisted's write path finds the error (connectionLost)
    if sent < len(data):
        # the rest when the socket is writable again (no MSG_MORE there)
        t.write(data[sent:])
        return _SENT_PART
    try:
        skt.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the client went away: the close finds out as before
    return SENT_WHOLE


def lose_connection(transport: IStreamTransport) -> None:
    """
    C{transport.loseConnection()}, but at once when it is a plain TCP
    transport with nothing buffered and no producer of its own waiting.

    Twisted's C{loseConnection} registers for "writable" and closes one
    reactor iteration later, after a C{doWrite} that sends nothing (an
    C{epoll_ctl} pair, a poll event and an empty C{send} per closed
    connection).  With an empty buffer that iteration only closes, so this does
    now what C{loseConnection} itself does for a half-closed transport:
    stop reading and writing, then C{connectionLost(CONNECTION_DONE)} (the
    same orderly shutdown and close of the socket, the protocol told in the
    same way, only synchronously: callers must expect the protocol's
    C{connectionLost} before this returns).
    """
    t: Any = transport  # read as a tcp.Server/Client only once type(t) says it is one
    if (type(t) in _FAST_TYPES and not getattr(t, "TLS", False) and t.connected
            and not t.disconnecting and not t._tempDataLen and not t.dataBuffer
            and not t._writeDisconnected and hasattr(t, "socket")):
        # FileDescriptor.connectionLost stops reading and writing (one epoll
        # unregister) before the socket is closed
        if type(t) is tcp.Server and _LEAN_LOST:
            _connection_lost(t)
        else:
            t.connectionLost(_DONE)
        return
    now = getattr(t, "lose_connection_now", None)
    if now is not None:  # the stdlib TLS engine's (modcluster/proxy/stdtls.py)
        now()
        return
    if ISSLTransport.providedBy(transport):
        # Twisted's TLS transport waits for its producer to unregister before
        # it closes: the client protocol's own registration would keep a
        # "Connection: close" HTTPS connection open until the client gave up.
        transport.unregisterProducer()
    elif getattr(t, "producer", None) is not None:
        # A plain TCP transport with bytes buffered: once they are sent,
        # FileDescriptor.doWrite resumes a producer it paused (the last write
        # went over its high-water mark, a client that reads slowly) instead
        # of closing, and the connection would stay open with all sent.
        transport.unregisterProducer()
    transport.loseConnection()


#: tcp.Server's connectionLost is tcp.Connection's, which _connection_lost copies
_LEAN_LOST = (tcp.Server.connectionLost is tcp.Connection.connectionLost
              and tcp.Connection.connectionLost.__qualname__ == "Connection.connectionLost"
              and tcp.Server._closeSocket is tcp.Connection._closeSocket
              and tcp.Connection._closeSocket.__qualname__ == "_SocketCloser._closeSocket"
              and hasattr(tcp.Server, "producer") and hasattr(tcp.Server, "disconnected"))


def _epoll_type() -> Any:
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # pragma: no cover - not Linux
        return None
    return EPollReactor


_EPOLL = _epoll_type()
#: stopReading()/stopWriting() of a tcp.Server are Twisted's, which on an
#: EPollReactor look the descriptor up in the reactor's _reads/_writes sets (or
#: its continuous polling) and do nothing when it is in none of them
_LEAN_UNREGISTER = (_EPOLL is not None
                    and tcp.Server.stopReading is abstract.FileDescriptor.stopReading
                    and tcp.Server.stopWriting is abstract.FileDescriptor.stopWriting
                    and all(hasattr(_EPOLL, n)
                            for n in ("removeReader", "removeWriter", "_remove")))


def _connection_lost(t: Any, reason: Failure = _DONE) -> None:
    """
    C{tcp.Connection.connectionLost(reason)} for a C{tcp.Server} (the same
    steps, with C{FileDescriptor.connectionLost} inlined), without what a
    closing connection of ours never needs: C{Failure.check} (a C{reflect.qual}
    string of the exception class per call) to tell an abort from a close,
    which it is not (C{reason}: C{CONNECTION_DONE}, or C{CONNECTION_LOST} for
    a connection the peer reset, L{modcluster.proxy.fastloop}).  Pinned by
    tests/unit/proxy/test_proxy_transport.py.
    """
    t.disconnected = 1
    t.connected = 0
    producer = t.producer
    if producer is not None:
        producer.stopProducing()
        t.producer = None
    r = t.reactor
    if r.__class__ is not _EPOLL or not _LEAN_UNREGISTER:
        t.stopReading()
        t.stopWriting()
    else:
        # what stopReading()/stopWriting() would look at first: a connection
        # the accept loop never registered (a Connection: close request answered
        # in one send, modcluster/proxy/accept.py) has nothing to unregister
        fd = t.fileno()
        if fd in r._reads or fd in r._writes or r._continuousPolling._readers or \
                r._continuousPolling._writers:
            t.stopReading()
            t.stopWriting()
    if t._shouldShutdown:
        t._closeSocket(True)
    else:
        # _closeSocket(True) of a socket the accept loop made: no shutdown(), a close()
        try:
            t.socket.close()
        except OSError:
            pass
    protocol = t.protocol
    del t.protocol
    del t.socket
    del t.fileno
    protocol.connectionLost(reason)


#: L{lose_connection} of a transport for which L{send_last} just returned
#: L{SENT_WHOLE}, nothing done with it in between: its fast path (a plain
#: C{tcp.Server} with nothing buffered, connected) without checking it all again
close_sent = _connection_lost


#: tcp.Server.registerProducer is Twisted's: without TLS, FileDescriptor's, which
#: for a streaming producer on a connected transport with none registered only
#: sets C{producer} and C{streamingProducer} (L{register_streaming} then does
#: that itself)
_LEAN_REGISTER = (tcp.Server.registerProducer.__qualname__ == "ConnectionMixin.registerProducer"
                  and abstract.FileDescriptor.registerProducer.__qualname__
                  == "_ConsumerMixin.registerProducer"
                  and tcp.Server.TLS is False and tcp.Server.producer is None)
#: the plain TCP server transport (L{LEAN_SERVER}: its registerProducer can be inlined)
LEAN_SERVER: Any = tcp.Server if _LEAN_REGISTER else None


def is_plain_tcp(transport) -> bool:
    """
    A TCP transport without TLS.  (A TLS wrapper forwards unknown attributes to
    the TCP transport below it, so C{hasattr(t, "loseWriteConnection")} is true
    for it too, and half-closing the raw socket under TLS would cut the
    record stream.)
    """
    return type(transport) in _FAST_TYPES and not getattr(transport, "TLS", False)


def end_tls_sending(transport) -> bool:
    """
    End our sending on a TLS node connection (Twisted's TLS:
    L{TLSMemoryBIOProtocol}), still reading what the node sends: close_notify
    alone, when TLS 1.3 was negotiated, where it ends only its sender's side
    (RFC 8446 §6.1); the node's own close_notify later closes the connection
    (Twisted's TLS then closes the TCP connection).  Not over TLS 1.2, where
    close_notify asks the peer to close at once, dropping what it still has
    to send (RFC 5246 §7.2.1), nor on any other transport.  True when sent
    (or due after what is buffered).
    """
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    if not isinstance(transport, TLSMemoryBIOProtocol) or transport.disconnecting:
        return False
    try:
        version = transport.getHandle().get_protocol_version_name()
    except Exception:  # pragma: no cover - no TLS connection (lost meanwhile)
        return False
    if version != "TLSv1.3":
        return False
    # Twisted's loseConnection sends close_notify (SSL_shutdown; the TCP
    # connection stays until the peer's close_notify, and what the peer sends
    # meanwhile is still read and delivered) once nothing is buffered and no
    # producer is registered: the node connection is one, for the bytes it
    # writes to the node, and it writes none any more.
    transport.unregisterProducer()
    transport.loseConnection()
    return True


def set_nodelay(transport) -> None:
    """
    Disable Nagle on C{transport} (also through a TLS wrapper).  Without it a
    head and a body sent in two segments wait for a delayed ACK (~40 ms).
    """
    t = transport
    if getattr(t, "_nodelay_inherited", False):
        return  # set on the listening socket (modcluster/proxy/accept.py)
    for _ in range(3):
        setter = getattr(t, "setTcpNoDelay", None)
        if setter is not None:
            try:
                setter(True)
            except (OSError, AttributeError):
                pass
            return
        t = getattr(t, "transport", None)
        if t is None:
            return
