"""
Optional: an epoll event loop without Twisted's per-event logging context.

C{EPollReactor.doPoll} wraps every I/O event in C{log.callWithLogger}, which
copies the legacy logging context dictionary and pushes it on a context stack
so that old-style C{twisted.python.log.msg} calls made while handling the event
carry the transport's C{logPrefix()} as their C{system}.  For a proxy that
handles two small events per request this wrapper is a measurable share of the
CPU time (docs/data-plane.md, "Performance").

L{install} replaces C{doPoll}/C{doIteration} on one reactor B{instance} with
the same loop minus that wrapper.  For the most frequent event, "readable" on
a plain TCP connection (also with C{EPOLLHUP}/C{EPOLLERR}: a client that
sent and then closed or reset the connection, as C{openssl s_time} does
right after its handshake), it also does what C{tcp.Connection.doRead} and
C{_dataReceived} do inline (C{recv}, as C{os.read} of the event's descriptor
and of the transport classes' C{bufferSize}, then C{protocol.dataReceived}, or
disconnect with C{CONNECTION_DONE}/C{CONNECTION_LOST}; an exception from
C{dataReceived} is logged and disconnects, as C{_doReadOrWrite} does).  Every
other event goes through the reactor's own C{_doReadOrWrite}.  An exception
from anything is logged per event instead of ending the batch.  What changes:
legacy (C{twisted.python.log}) messages emitted while handling I/O get the
default system C{"-"} instead of the transport's prefix.  New-style
C{twisted.logger} events, which this project uses, are not affected.

It is applied only to an C{EPollReactor} whose C{doPoll} is the one this code
was written against (checked by identity against the class attribute), so a
different reactor or a patched reactor is left alone.
"""

from __future__ import annotations

import errno
import gc
import os
import select
from typing import Any

from twisted.internet import tcp
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.logger import Logger
from twisted.python.failure import Failure

from modcluster.proxy import _transport

__all__ = ["freeze_heap", "install"]

log = Logger()

_EPOLLIN = getattr(select, "EPOLLIN", 1)
os_read = os.read
_SERVER = tcp.Server
#: the reason a connection reset by the peer is lost with (Twisted's is a shared one too)
_LOST = Failure(CONNECTION_LOST)
_LOST.parents  # noqa: B018 - computed and cached now
_connection_lost = _transport._connection_lost
_EPOLLOUT = getattr(select, "EPOLLOUT", 4)
_TCP = (tcp.Server, tcp.Client)


def _plain_tcp_read_supported() -> bool:
    """
    The inlined read path copies C{tcp.Connection.doRead}/C{_dataReceived};
    use it only if those are the methods it was written against.
    """
    for cls in _TCP:
        if cls.doRead is not tcp.Connection.doRead:
            return False
        if cls._dataReceived is not tcp.Connection._dataReceived:
            return False
        if cls.bufferSize != tcp.Connection.bufferSize:
            return False
    return True


def _lean_reset_supported(reactor) -> bool:
    """
    A connection reset by the peer is closed without C{_disconnectSelectable}
    when what that does is what this code was written against: Twisted's
    C{_disconnectSelectable}, the C{EPollReactor}'s C{removeReader}/
    C{removeWriter}, and C{tcp.Server.connectionLost} as
    L{_connection_lost<modcluster.proxy._transport._connection_lost>} copies it.
    """
    from twisted.internet.epollreactor import EPollReactor
    from twisted.internet.posixbase import _DisconnectSelectableMixin

    cls = type(reactor)
    return (_transport._LEAN_LOST and _transport._LEAN_UNREGISTER
            and cls is _transport._EPOLL
            and cls._disconnectSelectable is _DisconnectSelectableMixin._disconnectSelectable
            and cls.removeReader is EPollReactor.removeReader
            and cls.removeWriter is EPollReactor.removeWriter
            and isinstance(getattr(reactor, "_reads", None), set)
            and isinstance(getattr(reactor, "_writes", None), set))


def install(reactor) -> bool:
    """
    Use the lean event loop on C{reactor} if it is an unmodified
    C{EPollReactor}.  Returns whether it was installed.
    """
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # pragma: no cover - not Linux
        return False
    if not isinstance(reactor, EPollReactor):
        return False
    if getattr(reactor, "_modcluster_fastloop", False):
        return True
    if type(reactor).doPoll is not EPollReactor.doPoll:
        return False
    poller = reactor._poller
    selectables = reactor._selectables
    drdw = reactor._doReadOrWrite
    disconnect = reactor._disconnectSelectable
    plain_read = _plain_tcp_read_supported()
    lean_reset = _lean_reset_supported(reactor)
    reads, writes = reactor._reads, reactor._writes
    continuous = reactor._continuousPolling
    # the read size: the transports' class-level bufferSize (Twisted sets none
    # per instance, nor does this project), read once instead of per event
    # (a class attribute read through the instance is a generic lookup)
    read_size = tcp.Connection.bufferSize

    # the transports read inline: none when the read path is not the one
    # this code copies (every event then goes to _doReadOrWrite)
    server_type, client_type = _TCP if plain_read else (None, None)

    def doPoll(timeout):
        if timeout is None:
            timeout = -1
        try:
            events = poller.poll(timeout, len(selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        for fd, event in events:
            # (a subscript: the interpreter's specialised dict lookup, no
            # method call; an earlier event of the batch may have closed fd)
            try:
                selectable = selectables[fd]
            except KeyError:
                continue
            # "readable" alone, the usual event, first: an int comparison
            # (specialised) before the two bitwise ands (generic) the other
            # readable events (with EPOLLHUP/EPOLLERR) take
            if event == _EPOLLIN or (event & _EPOLLIN and not event & _EPOLLOUT):
                # tcp.Connection.doRead + _dataReceived, one frame instead of
                # four; also with EPOLLHUP/EPOLLERR (the peer closed or reset
                # after sending): _doReadOrWrite reads first then too.  Once
                # per transport class, the same steps (client connections are
                # tcp.Server, node connections tcp.Client): CPython 3.11
                # specialises an attribute read at each place in the bytecode
                # for one type, and one place seeing both in turn is a generic
                # lookup each time.  os.read of the event's descriptor (the
                # selectable's socket's, non-blocking: the same read as
                # socket.recv, whose argument parsing, PyArg_ParseTuple, costs
                # ~300 machine instructions more).  An aborted transport is
                # left to the reactor (its doRead drops what it reads).
                cls = type(selectable)
                if cls is server_type:
                    if not selectable._aborting:
                        try:
                            data = os_read(fd, read_size)
                        except BlockingIOError:
                            continue
                        except OSError:
                            why = CONNECTION_LOST
                        else:
                            if data:
                                try:
                                    selectable.protocol.dataReceived(data)
                                    continue
                                except BaseException as e:
                                    log.failure("unhandled error in {protocol!r}.dataReceived",
                                                protocol=selectable.protocol)
                                    why = e
                            else:
                                why = CONNECTION_DONE
                    else:
                        why = None
                elif cls is client_type:
                    if not selectable._aborting:
                        try:
                            data = os_read(fd, read_size)
                        except BlockingIOError:
                            continue
                        except OSError:
                            why = CONNECTION_LOST
                        else:
                            if data:
                                try:
                                    selectable.protocol.dataReceived(data)
                                    continue
                                except BaseException as e:
                                    log.failure("unhandled error in {protocol!r}.dataReceived",
                                                protocol=selectable.protocol)
                                    why = e
                            else:
                                why = CONNECTION_DONE
                    else:
                        why = None
                else:
                    why = None
                if why is not None:
                    # the inline read found the connection closed (the read
                    # path above never comes here: no test per event)
                    if (why is CONNECTION_LOST and lean_reset and selectable.__class__ is _SERVER
                            and not continuous._readers and not continuous._writers):
                        # the peer reset the connection (s_time after its
                        # handshake): _disconnectSelectable(selectable,
                        # CONNECTION_LOST, True) without its ~12 Python calls
                        # (removeReader, removeWriter, _remove, stopReading,
                        # stopWriting, Failure.check...): out of the epoll set
                        # as those leave it, then tcp.Connection.connectionLost
                        try:
                            if fd in reads or fd in writes:
                                del selectables[fd]
                                poller.unregister(fd)
                                reads.discard(fd)
                                writes.discard(fd)
                            _connection_lost(selectable, _LOST)
                        except BaseException:
                            log.failure("unhandled error while closing {selectable!r}",
                                        selectable=selectable)
                        continue
                    try:
                        disconnect(selectable, why, True)
                    except BaseException:
                        log.failure("unhandled error while closing {selectable!r}",
                                    selectable=selectable)
                    continue
            try:
                drdw(selectable, fd, event)
            except BaseException:
                log.failure("unhandled error while handling {selectable!r}",
                            selectable=selectable)

    # this one instance's methods replaced on purpose (mypy refuses assigning
    # to a method): through an untyped name
    patched: Any = reactor
    patched.doPoll = doPoll
    patched.doIteration = doPoll
    patched._modcluster_fastloop = True
    return True


def freeze_heap() -> int:
    """
    Collect, then move every object that exists now (modules, configuration,
    the routing table as started, Twisted) out of the cyclic GC's reach
    (C{gc.freeze}); returns how many.

    A full (generation 2) collection walks every tracked object: with the
    ~50 000 of a started proxy that paused the process for 30-50 ms several
    times a minute under load, which made the p99 latency of short connections
    (docs/performance.md, run K).  Frozen, a full collection walks only what
    was allocated since (~3 ms).  Objects frozen are never collected by the
    cyclic GC (reference counting still frees them): call this once, when the
    process has started, not while garbage is being made.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
