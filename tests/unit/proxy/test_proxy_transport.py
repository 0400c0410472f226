"""
The direct-write adaptation pinned against the installed Twisted: a TCP
transport with an empty buffer sends at once; anything else keeps Twisted's
buffered path and order.
"""

import os
import select
import socket
import time

import pytest
from twisted.internet import tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport

from twisted.internet.error import ConnectionDone

from modcluster.proxy._transport import (
    SENT_WHOLE,
    close_sent,
    direct_writer,
    is_plain_tcp,
    lose_connection,
    send_last,
    set_nodelay,
)


def _server_transport(reactor_type=MemoryReactor):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    reactor = reactor_type()
    proto = Protocol()
    t = tcp.Server(a, proto, ("127.0.0.1", 1), None, 0, reactor)
    proto.makeConnection(t)
    return t, b, reactor


def test_non_tcp_transport_uses_its_own_write():
    t = StringTransport()
    write = direct_writer(t)
    write(b"abc")
    assert t.value() == b"abc"
    assert not is_plain_tcp(t)
    set_nodelay(t)  # no setTcpNoDelay: ignored


#: the direct writer on a reactor it knows nothing of (the transport's own
#: attributes tell it what is buffered) and on an epoll reactor (its set of
#: writing descriptors does)
_REACTORS = pytest.mark.parametrize("reactor_type", [MemoryReactorClock, EPollReactor])


@_REACTORS
def test_empty_buffer_sends_immediately(reactor_type):
    t, peer, reactor = _server_transport(reactor_type)
    write = direct_writer(t)
    assert is_plain_tcp(t)
    write(b"hello")
    assert peer.recv(100) == b"hello"
    assert t not in reactor.getWriters()  # no wait for writability
    assert t._tempDataLen == 0 and not t.dataBuffer


@_REACTORS
def test_buffered_data_keeps_order(reactor_type):
    t, peer, reactor = _server_transport(reactor_type)
    write = direct_writer(t)
    t.write(b"first,")  # Twisted's buffered path
    write(b"second")  # must queue behind it, not overtake it
    try:
        early = peer.recv(100)
    except BlockingIOError:
        early = b""
    assert early == b""
    t.doWrite()
    assert peer.recv(100) == b"first,second"


@_REACTORS
def test_partial_send_buffers_the_rest(reactor_type):
    t, peer, reactor = _server_transport(reactor_type)
    t.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    write = direct_writer(t)
    data = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes
    write(data)
    assert t._tempDataLen > 0  # the rest waits in Twisted's buffer
    assert t in reactor.getWriters()
    got = bytearray()
    while len(got) < len(data):
        try:
            got += peer.recv(1 << 20)
        except BlockingIOError:
            t.doWrite()
    assert bytes(got) == data


@_REACTORS
def test_disconnecting_transport_not_written_directly(reactor_type):
    t, peer, reactor = _server_transport(reactor_type)
    write = direct_writer(t)
    t.write(b"x")
    t.loseConnection()
    write(b"y")
    try:
        early = peer.recv(100)
    except BlockingIOError:
        early = b""
    assert early == b""


@_REACTORS
def test_writer_copies_the_class_defaults_it_tests_onto_the_transport(reactor_type):
    """
    disconnecting and _aborting, class-level defaults until Twisted sets them,
    are on the transport itself once its writer is made, with the same
    values (instance attributes: cheaper per read); a writer made after
    loseConnection keeps the transport disconnecting and writes nothing
    directly.
    """
    t, peer, reactor = _server_transport(reactor_type)
    assert "disconnecting" not in vars(t) and "_aborting" not in vars(t)
    direct_writer(t)
    assert vars(t)["disconnecting"] == tcp.Server.disconnecting
    assert vars(t)["_aborting"] is tcp.Server._aborting
    t2, peer2, reactor2 = _server_transport(reactor_type)
    t2.write(b"x")
    t2.loseConnection()
    write = direct_writer(t2)
    assert t2.disconnecting and not t2._aborting
    write(b"y")
    assert _nothing_at(peer2)


@_REACTORS
def test_closed_transport_never_writes_to_its_old_descriptor(reactor_type):
    """
    The direct writer writes to the descriptor it took when made only while
    the transport is connected: once the connection is lost (the socket
    closed) and the descriptor number is another socket's, a write goes
    through the transport (which drops it), never to that other socket.
    """
    from twisted.python.failure import Failure

    t, peer, reactor = _server_transport(reactor_type)
    write = direct_writer(t)
    fd = t.fileno()
    write(b"before")
    assert peer.recv(100) == b"before"
    other, other_peer = socket.socketpair()
    t.connectionLost(Failure(ConnectionDone()))
    # the old number made another socket's (a new socket gets the lowest free
    # number: the one just closed only if no lower one is free)
    os.dup2(other.fileno(), fd)
    try:
        write(b"after")
        other_peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            other_peer.recv(100)
    finally:
        os.close(fd)
        other.close()
        other_peer.close()
        peer.close()


def _nothing_at(peer):
    try:
        return peer.recv(100) == b""  # (an end of stream would be b"")
    except BlockingIOError:
        return True


@_REACTORS
def test_aborted_transport_not_written_directly(reactor_type):
    """
    After abortConnection nothing more is sent, written directly or not
    (Twisted drops what is buffered and never writes again), with or without
    something buffered when it was aborted.
    """
    for buffered in (False, True):
        t, peer, reactor = _server_transport(reactor_type)
        write = direct_writer(t)
        if buffered:
            t.write(b"x")
        t.abortConnection()
        write(b"y")
        assert _nothing_at(peer)


@_REACTORS
def test_half_closed_transport_drops_writes(reactor_type):
    """Once the sending side is shut (loseWriteConnection done), a write is
    dropped, as Twisted's write drops it."""
    t, peer, reactor = _server_transport(reactor_type)
    write = direct_writer(t)
    t.loseWriteConnection()
    t.doWrite()  # nothing buffered: the shutdown
    assert t._writeDisconnected and t not in reactor.getWriters()
    write(b"late")
    assert peer.recv(100) == b""  # the end of stream, nothing before it
    assert t._tempDataLen == 0 and not t.dataBuffer


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.lost = []

    def connectionLost(self, reason=None) -> None:
        self.lost.append(reason)


def _recorded_transport():
    a, b = socket.socketpair()
    a.setblocking(False)
    reactor = MemoryReactor()
    proto = _Recorder()
    t = tcp.Server(a, proto, ("127.0.0.1", 1), None, 0, reactor)
    proto.makeConnection(t)
    return t, b, reactor, proto


def _client_transport(reactor):
    """A tcp.Client (a node connection's transport) on one end of a socket pair."""
    a, b = socket.socketpair()
    b.setblocking(False)
    t = tcp.Client.__new__(tcp.Client)
    tcp.Connection.__init__(t, a, None, reactor)
    proto = Protocol()
    t.protocol = proto
    t.connected = 1
    proto.makeConnection(t)
    return t, b


def test_epoll_writer_is_a_copy_per_transport_class():
    """
    On an epoll reactor, client transports (tcp.Server) and node transports
    (tcp.Client) get writers of the same bytecode but of code objects of
    their own (CPython specialises each attribute read in a code object for
    one type): both send at once, and each holds back while something is
    buffered.
    """
    reactor = EPollReactor()
    try:
        a, peer_a, _ = _server_transport(lambda: reactor)
        b, peer_b = _client_transport(reactor)
        wa, wb, wa2 = direct_writer(a), direct_writer(b), direct_writer(a)
        assert wa.__code__ is not wb.__code__ and wa.__code__ is wa2.__code__
        assert wa.__code__.co_code == wb.__code__.co_code
        for t, write, peer in ((a, wa, peer_a), (b, wb, peer_b)):
            write(b"one,")
            assert peer.recv(100) == b"one," and not t.dataBuffer
            t.write(b"two,")  # Twisted's buffer: registered for writable
            write(b"three")
            assert t.fileno() in reactor._writes
            t.doWrite()
            assert peer.recv(100) == b"two,three"
    finally:
        reactor.removeAll()
        reactor._poller.close()


def test_lose_connection_with_nothing_buffered_closes_at_once():
    t, peer, reactor, proto = _recorded_transport()
    write = direct_writer(t)
    write(b"answer")
    lose_connection(t)
    [reason] = proto.lost
    assert reason.check(ConnectionDone)
    assert not t.connected and t not in reactor.getReaders() + reactor.getWriters()
    assert peer.recv(100) == b"answer"
    assert peer.recv(100) == b""  # orderly close (FIN), not a reset
    lose_connection(t)  # again: nothing more happens
    assert len(proto.lost) == 1


def test_lose_connection_gives_every_connection_one_prepared_reason():
    """
    The connections closed at once share one ConnectionDone Failure whose
    class list is already computed (tcp.Connection.connectionLost checks it
    for every close), rather than a new Failure per connection.
    """
    t1, _p1, _r1, proto1 = _recorded_transport()
    t2, _p2, _r2, proto2 = _recorded_transport()
    lose_connection(t1)
    lose_connection(t2)
    [r1], [r2] = proto1.lost, proto2.lost
    assert r1 is r2
    assert r1.check(ConnectionDone)
    assert r1._parents is not None


class _Producing(_Recorder):
    """A recorder that is its transport's push producer (as ClientProtocol)."""

    stopped = 0

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.stopped += 1


def _as_twisted_closes(lose):
    a, b = socket.socketpair()
    a.setblocking(False)
    reactor = MemoryReactor()
    proto = _Producing()
    t = tcp.Server(a, proto, ("127.0.0.1", 1), None, 0, reactor)
    t._shouldShutdown = False  # as the accept loop builds them
    proto.makeConnection(t)
    t.startReading()
    lose(t)
    state = dict(vars(t))
    assert b.recv(10) == b""  # the end of the stream, not a reset
    b.close()
    return state, proto, reactor, a


def test_lose_connection_of_a_server_does_what_twisted_does():
    """
    lose_connection on a tcp.Server (its own copy of tcp.Connection.connectionLost,
    without Failure.check) leaves the transport, the reactor, the socket and the
    protocol as Twisted's connectionLost does.
    """
    from modcluster.proxy import _transport

    assert _transport._LEAN_LOST  # the installed Twisted is the one it copies
    ours = _as_twisted_closes(lose_connection)
    twisted = _as_twisted_closes(lambda t: t.connectionLost(_transport._DONE))
    (s1, p1, r1, sock1), (s2, p2, r2, sock2) = ours, twisted
    assert s1.keys() == s2.keys()
    assert "socket" not in s1 and "protocol" not in s1 and "fileno" not in s1
    for k in ("connected", "disconnected", "producer", "disconnecting"):
        assert s1.get(k) == s2.get(k), k
    assert p1.lost == p2.lost and len(p1.lost) == 1
    assert p1.stopped == p2.stopped == 1
    assert r1.getReaders() == r2.getReaders() == []
    assert sock1.fileno() == sock2.fileno() == -1  # closed


def test_close_sent_does_what_lose_connection_does_after_send_last():
    """
    close_sent, for a transport send_last sent whole: what lose_connection
    does then (its fast path), without its checks.
    """
    def sent_then(close):
        def lose(t):
            assert send_last(t, b"") == SENT_WHOLE  # (the harness reads the end)
            close(t)
        return lose

    ours = _as_twisted_closes(sent_then(close_sent))
    theirs = _as_twisted_closes(sent_then(lose_connection))
    (s1, p1, r1, sock1), (s2, p2, r2, sock2) = ours, theirs
    assert s1.keys() == s2.keys()
    for k in s1.keys() - {"reactor"}:
        assert s1[k] == s2[k], k
    assert p1.lost == p2.lost and len(p1.lost) == 1
    assert p1.stopped == p2.stopped == 1
    assert r1.getReaders() == r2.getReaders() == []
    assert sock1.fileno() == sock2.fileno() == -1


def test_lose_connection_with_buffered_data_waits_for_the_write():
    t, peer, reactor, proto = _recorded_transport()
    t.write(b"buffered")  # Twisted's buffered path: not sent yet
    lose_connection(t)
    assert proto.lost == [] and t.disconnecting
    assert t in reactor.getWriters()
    t.doWrite()
    assert peer.recv(100) == b"buffered"


def test_lose_connection_of_other_transports_is_theirs():
    st = StringTransport()
    lose_connection(st)
    assert st.disconnecting


def test_client_info_reads_the_local_address_only_when_asked():
    from twisted.internet.address import IPv4Address

    from modcluster.proxy.interfaces import ClientInfo

    class T:
        calls = 0

        def getHost(self):
            T.calls += 1
            return IPv4Address("TCP", "127.0.0.2", 8443)

    info = ClientInfo("127.0.0.9", 40000, transport=T(), secure=True)
    assert T.calls == 0
    assert (info.local_addr, info.local_port) == ("127.0.0.2", 8443)
    assert info.local_port == 8443 and T.calls == 1  # read once
    given = ClientInfo("127.0.0.9", 40000, "127.0.0.3", 80, False, T())
    assert (given.local_addr, given.local_port) == ("127.0.0.3", 80) and T.calls == 1

    class Closed:
        def getHost(self):
            raise AttributeError("socket")

    gone = ClientInfo("127.0.0.9", 40000, transport=Closed())
    assert (gone.local_addr, gone.local_port) == ("", 0)


def _epoll_transport():
    from twisted.internet.epollreactor import EPollReactor

    a, b = socket.socketpair()
    a.setblocking(False)
    reactor = EPollReactor()
    proto = _Producing()
    t = tcp.Server(a, proto, ("127.0.0.1", 1), None, 0, reactor)
    t._shouldShutdown = False  # as the accept loop builds them
    proto.makeConnection(t)
    t.stopReading()  # (tcp.Server.__init__ registers it; the accept loop would not)
    calls = []
    for name in ("removeReader", "removeWriter"):
        real = getattr(reactor, name)

        def spy(selectable, name=name, real=real):
            calls.append(name)
            real(selectable)
        setattr(reactor, name, spy)
    return t, b, reactor, proto, calls


def test_lose_connection_of_a_never_registered_connection_unregisters_nothing():
    """
    On an epoll reactor, a connection that was never registered (a
    Connection: close request the accept loop read whole) is closed without
    removeReader/removeWriter (which would only look it up); a registered one
    is unregistered as before.
    """
    t, peer, reactor, proto, calls = _epoll_transport()
    try:
        fd = t.fileno()
        direct_writer(t)(b"answer")
        lose_connection(t)
        assert calls == []
        assert len(proto.lost) == 1 and proto.stopped == 1
        assert t.disconnected and not t.connected
        assert peer.recv(100) == b"answer" and peer.recv(100) == b""
        assert fd not in reactor._reads and fd not in reactor._writes
        assert fd not in reactor._selectables

        t2, peer2, reactor2, proto2, calls2 = _epoll_transport()
        fd = t2.fileno()
        t2.startReading()
        assert fd in reactor2._reads
        lose_connection(t2)
        assert calls2 == ["removeReader", "removeWriter"]
        assert fd not in reactor2._reads and fd not in reactor2._selectables
        assert len(proto2.lost) == 1
        peer2.close()
        reactor2._poller.close()
    finally:
        peer.close()
        reactor._poller.close()


class _FlagsSocket:
    """A socket that records the flags of each send."""

    def __init__(self, sock, take=None) -> None:
        self._sock = sock
        self.flags: list = []
        self.take = take

    def send(self, data, flags=0):
        self.flags.append(flags)
        if self.take is not None:
            data = data[:self.take]
        return self._sock.send(data, flags)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def _tcp_pair():
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    ls.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c = socket.create_connection(ls.getsockname(), 5)
    a, _ = ls.accept()
    ls.close()
    a.setblocking(False)
    reactor = MemoryReactor()
    proto = _Producing()
    t = tcp.Server(a, proto, ("127.0.0.1", 1), None, 0, reactor)
    t._shouldShutdown = False  # as the accept loop builds them
    proto.makeConnection(t)
    return t, c, a, proto


def _read_to_the_end(c) -> tuple:
    got = b""
    try:
        while True:
            more = c.recv(100)
            if not more:
                return got, "end"
            got += more
    except ConnectionResetError:
        return got, "reset"


@pytest.mark.parametrize("unread", [b"", b"GET /more HTTP/1.1\r\n\r\n"])
def test_send_last_sends_with_msg_more_and_the_fin(unread):
    """
    send_last sends the last bytes with MSG_MORE and then shuts the sending
    side (the FIN goes in their segment); the close that follows changes
    nothing the client sees.  Bytes the client sent after its request and
    nobody read (they make the close a reset) do not cost it the answer:
    it gets all of it before the reset, as when the answer was sent without
    MSG_MORE.
    """
    t, c, a, proto = _tcp_pair()
    recorded = _FlagsSocket(a)
    t.socket = recorded
    try:
        if unread:
            c.sendall(unread)
            time.sleep(0.02)
        start = time.monotonic()
        assert send_last(t, b"the answer") == SENT_WHOLE
        assert recorded.flags == [socket.MSG_MORE]
        lose_connection(t)
        got, end = _read_to_the_end(c)
        assert got == b"the answer"
        # (with bytes unread the close still resets the connection, after the
        # FIN: the client may read the end of the stream first)
        assert end == "end" or unread
        assert time.monotonic() - start < 0.1  # not held back for the cork's 200 ms
        assert len(proto.lost) == 1
    finally:
        c.close()
        a.close()


def test_send_last_whole_shuts_the_sending_side():
    t, c, a, proto = _tcp_pair()
    try:
        assert send_last(t, b"the answer") == SENT_WHOLE
        # the FIN is out before the close: the client reads the end of the stream
        assert _read_to_the_end(c) == (b"the answer", "end")
        assert t.connected and not proto.lost
        lose_connection(t)
        assert len(proto.lost) == 1
    finally:
        c.close()
        a.close()


def test_send_last_hands_what_the_kernel_did_not_take_to_twisted():
    t, peer, reactor, proto = _recorded_transport()
    recorded = _FlagsSocket(t.socket, take=3)
    t.socket = recorded
    sent = send_last(t, b"abcdef")
    assert sent and sent != SENT_WHOLE  # handed over: the caller's close waits
    assert t._tempDataLen == 3 and t in reactor.getWriters()
    lose_connection(t)  # waits for the buffer: Twisted's loseConnection
    assert proto.lost == [] and t.disconnecting
    assert peer.recv(100) == b"abc"


def test_send_last_not_for_other_transports():
    """Not a plain TCP server transport ready to close at once: the caller writes."""
    assert not send_last(StringTransport(), b"x")
    t, peer, reactor, proto = _recorded_transport()
    t.write(b"buffered")
    assert not send_last(t, b"x")
    t2, peer2, reactor2, proto2 = _recorded_transport()
    t2.TLS = True
    assert not send_last(t2, b"x")
    t2.TLS = False
    t2.loseConnection()
    assert not send_last(t2, b"x")


def test_send_last_partial_over_a_real_socket_still_ends_with_the_fin():
    """
    An answer larger than the socket takes (a client that stops reading):
    what the kernel did not take goes through Twisted's buffer, the stream
    still ends (the close after the buffer drained), every byte arrives and
    no segment is held back (MSG_MORE's cork) once the client reads again.
    """
    import threading

    from twisted.python.failure import Failure

    t, c, a, proto = _tcp_pair()
    data = bytes(range(256)) * (4 * 4096)  # 4 MiB
    got: list = []

    def read() -> None:
        time.sleep(0.2)  # the client reads nothing meanwhile
        buf = bytearray()  # (bytes += would copy all so far on each read: ~130 MB for 4 MiB)
        while True:
            more = c.recv(65536)
            if not more:
                got.append((bytes(buf), time.monotonic()))
                return
            buf += more

    reader = threading.Thread(target=read)
    try:
        reader.start()
        assert send_last(t, data)
        assert t._tempDataLen or t.dataBuffer  # partial: the rest is Twisted's
        lose_connection(t)
        assert not proto.lost and t.disconnecting
        deadline = time.monotonic() + 10
        while t.connected and time.monotonic() < deadline:
            select.select([], [a], [], 0.05)
            why = t.doWrite()
            if why:
                t.connectionLost(Failure(why))
        closed = time.monotonic()
        reader.join(10)
        assert got and got[0][0] == data
        assert len(proto.lost) == 1
        # nothing held back after the close (what the reader still had to take
        # from its socket buffer is a few ms with the bytearray)
        assert got[0][1] - closed < 0.15
    finally:
        c.close()
        a.close()


@pytest.mark.parametrize("how", ["send_last", "write"])
def test_lose_connection_after_the_buffer_paused_its_producer_closes(how):
    """
    The last bytes before a close go over Twisted's high-water mark (a
    client that reads slowly): Twisted pauses the registered producer (the
    client protocol), and when its buffer has drained it resumes that
    producer instead of closing (FileDescriptor.doWrite).  lose_connection
    still ends the connection once everything is sent, as the reactor runs
    it: doWrite only while the transport is registered for writing.
    """
    import threading

    from twisted.python.failure import Failure

    t, c, a, proto = _tcp_pair()
    reactor = t.reactor
    data = b"x" * (4 << 20)
    got: list = []

    def read() -> None:
        time.sleep(0.2)
        c.settimeout(3)
        n = 0
        try:
            while True:
                more = c.recv(65536)
                if not more:
                    got.append((n, "end"))
                    return
                n += len(more)
        except TimeoutError:
            got.append((n, "timeout"))

    reader = threading.Thread(target=read)
    try:
        reader.start()
        if how == "send_last":
            assert send_last(t, data)
        else:
            t.write(data)
        assert t.producerPaused  # over the high-water mark: the producer paused
        lose_connection(t)
        deadline = time.monotonic() + 10
        while t.connected and t in reactor.getWriters() and time.monotonic() < deadline:
            select.select([], [a], [], 0.05)
            why = t.doWrite()
            if why:
                t.connectionLost(Failure(why))
        assert not t.connected and len(proto.lost) == 1
        reader.join(10)
        assert got == [(len(data), "end")]
    finally:
        c.close()
        a.close()
