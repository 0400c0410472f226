"""
The lean epoll loop (modcluster.proxy.fastloop) on a private EPollReactor
instance (never installed as the global reactor, never run): events are
dispatched as Twisted would, errors are logged without stopping the batch.
"""

import socket
import struct

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor
from twisted.logger import capturedLogs

epollreactor = pytest.importorskip("twisted.internet.epollreactor")

from modcluster.proxy import fastloop  # noqa: E402


class _Recorder(Protocol):
    def __init__(self, fail_on_lost=False):
        self.data = b""
        self.lost = False
        self.fail_on_lost = fail_on_lost

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason=None):
        self.lost = True
        self.reason = reason
        if self.fail_on_lost:
            raise RuntimeError("boom in connectionLost")


def _connection(reactor, proto):
    a, b = socket.socketpair()
    a.setblocking(False)
    t = tcp.Server(a, proto, ("127.0.0.1", 1), None, 0, reactor)
    proto.makeConnection(t)
    return t, b


def test_install_only_on_epoll():
    assert fastloop.install(MemoryReactor()) is False


def test_events_dispatched_and_errors_logged():
    reactor = epollreactor.EPollReactor()
    try:
        assert fastloop.install(reactor) is True
        assert fastloop.install(reactor) is True  # idempotent
        good = _Recorder()
        bad = _Recorder(fail_on_lost=True)
        tg, peer_good = _connection(reactor, good)
        tb, peer_bad = _connection(reactor, bad)
        peer_good.send(b"hello")
        peer_bad.close()  # EOF: connectionLost raises
        with capturedLogs() as events:
            for _ in range(5):
                reactor.doIteration(0)
                if good.data and bad.lost:
                    break
        assert good.data == b"hello"
        assert bad.lost
        failures = [e["log_failure"] for e in events if "log_failure" in e]
        assert [f.getErrorMessage() for f in failures] == ["boom in connectionLost"]
        peer_good.send(b" again")
        reactor.doIteration(0)
        assert good.data == b"hello again"
        tg.loseConnection()
        peer_good.close()
    finally:
        reactor.removeAll()
        reactor._poller.close()


def test_event_of_a_descriptor_no_longer_the_reactors_skipped():
    """
    An event whose descriptor is no longer among the reactor's selectables
    (a connection closed by an earlier event of the same batch) is skipped:
    nothing is read from it, nothing is logged, the batch goes on.
    """
    reactor = epollreactor.EPollReactor()
    try:
        assert fastloop.install(reactor) is True
        gone, kept = _Recorder(), _Recorder()
        tg, peer_gone = _connection(reactor, gone)
        tk, peer_kept = _connection(reactor, kept)
        tg.startReading()
        tk.startReading()
        peer_gone.send(b"late")
        peer_kept.send(b"hello")
        # still registered with epoll, no longer the reactor's
        del reactor._selectables[tg.fileno()]
        with capturedLogs() as events:
            reactor.doIteration(0)
        assert kept.data == b"hello"
        assert gone.data == b"" and not gone.lost
        assert [e for e in events if "log_failure" in e] == []
        assert tg.socket.recv(16) == b"late"  # not read
        reactor._selectables[tg.fileno()] = tg
        peer_gone.close()
        peer_kept.close()
    finally:
        reactor.removeAll()
        reactor._poller.close()


def test_read_error_and_end_of_stream_as_twisted_reports_them():
    """
    The inline read (os.read of the event's descriptor) reports a reset as
    ConnectionLost and an orderly end as ConnectionDone, what
    tcp.Connection.doRead gives; data before the end is delivered first.
    """
    from twisted.internet.error import ConnectionDone, ConnectionLost

    reactor = epollreactor.EPollReactor()
    try:
        assert fastloop.install(reactor) is True
        reset, done = _Recorder(), _Recorder()
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        peer = socket.create_connection(lsock.getsockname())
        a, _ = lsock.accept()
        lsock.close()
        a.setblocking(False)
        t = tcp.Server(a, reset, ("127.0.0.1", 1), None, 0, reactor)
        reset.makeConnection(t)
        t.startReading()
        # an RST: SO_LINGER with a zero timeout, then close
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        t2, peer2 = _connection(reactor, done)
        t2.startReading()
        peer2.send(b"last words")
        peer2.shutdown(socket.SHUT_WR)
        for _ in range(5):
            reactor.doIteration(0)
            if reset.lost and done.lost:
                break
        assert reset.lost and reset.reason.check(ConnectionLost)
        assert done.lost and done.reason.check(ConnectionDone) and done.data == b"last words"
        peer2.close()
    finally:
        reactor.removeAll()
        reactor._poller.close()


def test_freeze_heap():
    """What exists at start-up is moved out of the cyclic GC's full collections."""
    import gc

    from modcluster.proxy import fastloop

    try:
        frozen = fastloop.freeze_heap()
        assert frozen == gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0


def test_readable_and_hung_up_read_inline():
    """
    "Readable" with EPOLLHUP (the peer sent, then closed) is read inline as a
    plain "readable" is: the data, then the end of the stream, without the
    reactor's _doReadOrWrite.
    """
    reactor = epollreactor.EPollReactor()
    through_reactor = []
    drdw = reactor._doReadOrWrite

    def recording(selectable, fd, event):
        through_reactor.append(event)
        drdw(selectable, fd, event)

    reactor._doReadOrWrite = recording
    try:
        assert fastloop.install(reactor) is True
        proto = _Recorder()
        t, peer = _connection(reactor, proto)
        reactor.addReader(t)
        peer.send(b"last words")
        peer.close()
        for _ in range(5):
            reactor.doIteration(0)
            if proto.lost:
                break
        assert proto.data == b"last words"
        assert proto.lost
        assert through_reactor == []
    finally:
        reactor.removeAll()
        reactor._poller.close()


def test_reset_by_the_peer_closed_without_disconnect_selectable():
    """
    A connection the peer reset (RST, ECONNRESET on recv) after sending is
    closed as _disconnectSelectable(CONNECTION_LOST) closes it, without it:
    the data first, then connectionLost with ConnectionLost, the descriptor
    out of the epoll set and the socket closed.
    """
    from twisted.internet import error

    reactor = epollreactor.EPollReactor()
    through_reactor = []
    disconnect = reactor._disconnectSelectable

    def recording(selectable, why, isRead):
        through_reactor.append(why)
        disconnect(selectable, why, isRead)

    reactor._disconnectSelectable = recording
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    server, addr = listener.accept()
    listener.close()
    try:
        assert fastloop.install(reactor) is True
        reasons = []

        class Lost(_Recorder):
            def connectionLost(self, reason=None):
                super().connectionLost(reason)
                reasons.append(reason)

        proto = Lost()
        server.setblocking(False)
        t = tcp.Server(server, proto, addr, None, 0, reactor)
        proto.makeConnection(t)
        t.startReading()
        fd = t.fileno()
        client.send(b"last words")
        # linger 0: the close sends a reset
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()
        for _ in range(5):
            reactor.doIteration(0)
            if proto.lost:
                break
        assert proto.data == b"last words"
        assert [r.type for r in reasons] == [error.ConnectionLost]
        assert through_reactor == []
        assert fd not in reactor._reads and fd not in reactor._selectables
        assert server.fileno() == -1 and not hasattr(t, "socket") and t.disconnected
    finally:
        reactor.removeAll()
        reactor._poller.close()
        server.close()


def test_node_transports_read_inline_too():
    """
    A tcp.Client (a node connection's transport) is read inline as a
    tcp.Server is, each in the fast loop's branch for its class, without the
    reactor's _doReadOrWrite; an aborted one is left to it.
    """
    reactor = epollreactor.EPollReactor()
    through_reactor = []
    drdw = reactor._doReadOrWrite

    def recording(selectable, fd, event):
        through_reactor.append(type(selectable))
        drdw(selectable, fd, event)

    reactor._doReadOrWrite = recording
    try:
        assert fastloop.install(reactor) is True
        server_proto, client_proto = _Recorder(), _Recorder()
        ts, peer_s = _connection(reactor, server_proto)
        a, peer_c = socket.socketpair()
        tc = tcp.Client.__new__(tcp.Client)
        tcp.Connection.__init__(tc, a, None, reactor)
        tc.protocol = client_proto
        tc.connected = 1
        client_proto.makeConnection(tc)
        reactor.addReader(ts)
        reactor.addReader(tc)
        for round in range(3):
            peer_s.send(b"s%d," % round)
            peer_c.send(b"c%d," % round)
            reactor.doIteration(0)
        assert server_proto.data == b"s0,s1,s2,"
        assert client_proto.data == b"c0,c1,c2,"
        assert through_reactor == []
        tc._aborting = True  # abortConnection's mark: Twisted's doRead then
        peer_c.send(b"late")
        reactor.doIteration(0)
        assert through_reactor == [tcp.Client]
    finally:
        reactor.removeAll()
        reactor._poller.close()
