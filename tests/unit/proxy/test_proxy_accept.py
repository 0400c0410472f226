"""
The proxy's own accept loop (modcluster/proxy/accept.py) against the
installed Twisted: the transports it builds are the ones C{tcp.Server} builds,
it accepts in bounded batches, and running out of descriptors pauses accepting
(with one log line) instead of spinning.  Listening and client sockets are
real (127.0.0.1); the reactor is a MemoryReactor and the clock a task.Clock.
"""

from __future__ import annotations

import errno
import select
import socket
import sys
from _socket import socket as _c_socket

import pytest
from twisted.internet import address, tcp, task
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.logger import capturedLogs, globalLogPublisher

from modcluster.proxy import accept
from modcluster.proxy._transport import lose_connection


class Recorder(Protocol):
    def __init__(self) -> None:
        self.made = 0

    def connectionMade(self) -> None:
        self.made += 1


class RecordingFactory(Factory):
    protocol = Recorder

    def __init__(self) -> None:
        self.built: list = []

    def buildProtocol(self, addr):
        p = Recorder()
        p.factory = self
        self.built.append((p, addr))
        return p


@pytest.fixture
def listening():
    reactor = MemoryReactor()
    factory = RecordingFactory()
    port = tcp.Port(0, factory, interface="127.0.0.1", reactor=reactor)
    port.startListening()
    clients: list[socket.socket] = []
    yield port, factory, reactor, clients
    for c in clients:
        c.close()
    for p, _ in factory.built:
        t = p.transport
        if t is not None and hasattr(t, "socket"):
            t.socket.close()
    port.socket.close()


def connect(port, clients, n=1) -> list[socket.socket]:
    made = []
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port.getHost().port), 5)
        clients.append(c)
        made.append(c)
    return made


def test_pins_twisted():
    """The attributes Acceptor sets are exactly those tcp.Server.__init__ sets."""
    assert accept.supported()
    assert accept._PORT_DOREAD is tcp.Port.doRead
    assert tcp.Connection._shouldShutdown is True


def test_transport_is_what_twisted_builds(listening):
    port, factory, reactor, clients = listening
    assert accept.install(port)
    (c,) = connect(port, clients)
    port.doRead()
    ((proto, addr),) = factory.built
    t = proto.transport
    # the same transport Twisted's loop builds for the same socket
    twisted = tcp.Server(socket.socket(), Recorder(), addr_tuple(addr), port, t.sessionno,
                         MemoryReactor())
    try:
        assert type(t) is tcp.Server
        # (logstr and repstr: made when read, from _accept_names)
        late = {name for name, _ in accept._LATE_DEFAULTS}
        assert set(vars(t)) - {"_shouldShutdown", "_nodelay_inherited", "_accept_names"} - (
            late) == (set(vars(twisted)) - {"logstr", "repstr"})
        # (FileDescriptor's class defaults, stored with their values)
        assert late == {"producer", "streamingProducer", "disconnecting", "_aborting",
                        "disconnected"}
        for name, value in accept._LATE_DEFAULTS:
            assert vars(t)[name] == getattr(tcp.Server, name) == value
            assert type(vars(t)[name]) is type(getattr(tcp.Server, name))
        # set in __init__'s order, one by one (the class's shared-key layout)
        assert [k for k in vars(t) if k in vars(twisted)] == [
            k for k in vars(twisted) if k not in ("logstr", "repstr")]
        assert t.logstr == f"Recorder,{t.sessionno},127.0.0.1" == twisted.logstr.replace(
            "Recorder", "Recorder")
        assert repr(t) == repr(twisted)
        assert t.connected == 1 and not t.disconnecting
    finally:
        twisted.socket.close()
    assert isinstance(addr, address.IPv4Address)
    assert (addr.host, addr.port) == c.getsockname()[:2]
    assert t.getPeer() == addr
    assert t.getHost().port == port.getHost().port
    assert proto.made == 1
    assert t in reactor.readers
    assert port.sessionno == 1
    assert t.socket.gettimeout() == 0.0  # non-blocking, as Connection.__init__ makes it
    # the C socket type (no Python-level __init__ and close() per connection),
    # with what Twisted's transport uses of a socket
    assert type(t.socket) is _c_socket
    assert t.socket.getpeername() == c.getsockname()
    assert t.socket.getsockname() == c.getpeername()
    # TCP_NODELAY comes from the listening socket, set_nodelay need not set it
    assert t._nodelay_inherited
    assert t.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_transport_stores_no_name_after_it_is_built(epoll_listening):
    """
    A transport the accept loop built stores no attribute name after that
    (producer, the first write's direct_writer, the close): CPython 3.11's
    shared key table of a class loses room with every instance made, so a
    name first stored late (a kept-alive connection's first answer, once
    other transports exist) gives every transport that stores it a
    dictionary of its own.
    """
    from modcluster.proxy import fastloop
    from modcluster.proxy._transport import direct_writer

    port, factory, reactor, clients, built = epoll_listening
    assert fastloop.install(reactor)  # (as the service: no logstr read per event)
    factory.answer = False  # registered for reading, as a kept-alive client
    c, p = _accept_one(port, clients, b"request", built)
    t = p.transport
    names = set(vars(t))
    class Producer:
        def pauseProducing(self):
            pass

        def resumeProducing(self):
            pass

        def stopProducing(self):
            pass

    t.registerProducer(Producer(), True)  # (what ClientProtocol.connectionMade sets)
    write = direct_writer(t)
    write(b"answer")
    assert c.recv(100) == b"answer"
    assert set(vars(t)) == names
    c.close()
    for _ in range(20):
        reactor.doIteration(0.05)
        if p.lost is not None:
            break
    assert p.lost is not None
    assert set(vars(t)) <= names, sorted(set(vars(t)) - names)


def addr_tuple(addr):
    return (addr.host, addr.port)


def test_close_skips_shutdown_and_still_sends(listening):
    """The last bytes written reach the client, then the end of the stream."""
    port, factory, reactor, clients = listening
    accept.install(port)
    (c,) = connect(port, clients)
    port.doRead()
    ((proto, _),) = factory.built
    t = proto.transport
    assert t._shouldShutdown is False
    t.write(b"last bytes")
    t.doWrite()
    lose_connection(t)  # the proxy's close: at once, the buffer being empty
    assert not hasattr(t, "socket")
    c.settimeout(5)
    got = b""
    while True:
        data = c.recv(100)
        if not data:
            break
        got += data
    assert got == b"last bytes"


def test_bounded_batch(listening):
    port, factory, reactor, clients = listening
    accept.install(port)
    connect(port, clients, accept.BATCH + 3)
    port.doRead()
    assert len(factory.built) == accept.BATCH
    port.doRead()
    assert len(factory.built) == accept.BATCH + 3
    port.doRead()  # nothing waiting: no error
    assert len(factory.built) == accept.BATCH + 3


def _wait_queued(port, n: int) -> None:
    """Wait until the listening socket's accept queue holds C{n} connections."""
    for _ in range(200):
        if accept._queued(port.socket) == n:
            return
        select.select([], [], [], 0.01)
    raise AssertionError(f"accept queue never reached {n}")


class _CountingAccepts(socket.socket):
    """A listening socket that counts its accept() calls and their EAGAIN ends."""

    accepts = 0
    eagain = 0
    #: what getsockopt(TCP_INFO) reports as the queue length instead of the truth
    claim = None

    def _accept(self):
        self.accepts += 1
        try:
            return super()._accept()
        except BlockingIOError:
            self.eagain += 1
            raise

    def getsockopt(self, *args):
        value = super().getsockopt(*args)
        if self.claim is not None and args[1:2] == (socket.TCP_INFO,):
            value = (value[:accept._QUEUED_AT] + self.claim.to_bytes(4, sys.byteorder)
                     + value[accept._QUEUED_END:])
        return value


def _counting(port) -> _CountingAccepts:
    listener = port.socket
    port.socket = _CountingAccepts(listener.family, listener.type, listener.proto,
                                   listener.detach())
    port.fileno = port.socket.fileno
    return port.socket


def test_queue_length_read_from_tcp_info(listening):
    """On Linux the accept queue's length is known (TCP_INFO) and tracks the clients."""
    port, factory, reactor, clients = listening
    assert accept.queue_length_known() is sys.platform.startswith("linux")
    if not accept.queue_length_known():
        pytest.skip("Linux only")
    assert accept._queued(port.socket) == 0
    connect(port, clients, 3)
    _wait_queued(port, 3)


def test_batch_accepts_what_is_queued_without_eagain(listening):
    """
    A readable event accepts as many connections as the accept queue holds,
    without the accept() that fails with EAGAIN after the last one (~5 us).
    """
    port, factory, reactor, clients = listening
    if not accept.queue_length_known():
        pytest.skip("Linux only")
    accept.install(port)
    counting = _counting(port)
    connect(port, clients, 3)
    _wait_queued(port, 3)
    port.doRead()
    assert len(factory.built) == 3
    assert (counting.accepts, counting.eagain) == (3, 0)
    # nothing queued (someone else accepted): one accept(), ended by EAGAIN
    port.doRead()
    assert (counting.accepts, counting.eagain) == (4, 1)
    assert len(factory.built) == 3


def test_batch_ends_at_eagain_when_fewer_are_queued_than_told(listening):
    """A queue length larger than the truth: the batch still ends at EAGAIN."""
    port, factory, reactor, clients = listening
    if not accept.queue_length_known():
        pytest.skip("Linux only")
    accept.install(port)
    counting = _counting(port)
    connect(port, clients, 2)
    _wait_queued(port, 2)
    counting.claim = 5
    port.doRead()
    assert len(factory.built) == 2
    assert (counting.accepts, counting.eagain) == (3, 1)


def test_clients_queued_after_the_count_wait_for_the_next_event(listening):
    """
    A queue length smaller than the truth (clients that came after it was
    read): those are accepted at the next readable event, which a level-
    triggered poller reports while the queue is not empty.
    """
    port, factory, reactor, clients = listening
    if not accept.queue_length_known():
        pytest.skip("Linux only")
    accept.install(port)
    counting = _counting(port)
    connect(port, clients, 3)
    _wait_queued(port, 3)
    counting.claim = 1
    port.doRead()
    assert len(factory.built) == 1
    counting.claim = None
    assert accept._queued(port.socket) == 2
    port.doRead()
    assert len(factory.built) == 3
    assert counting.eagain == 0


def test_refused_by_factory(listening):
    port, factory, reactor, clients = listening
    factory.buildProtocol = lambda addr: None
    accept.install(port)
    (c,) = connect(port, clients)
    port.doRead()
    c.settimeout(5)
    assert c.recv(10) == b""  # closed at once


class _Failing:
    """A listening socket whose accept() fails with C{code}."""

    def __init__(self, real, code) -> None:
        self.real = real
        self.code = code
        self.family, self.type, self.proto = real.family, real.type, real.proto
        self.calls = 0

    def _accept(self):
        self.calls += 1
        raise OSError(self.code, "Too many open files")


def test_emfile_pauses_and_logs_once(listening):
    port, factory, reactor, clients = listening
    clock = task.Clock()
    accept.install(port, clock)
    real = port.socket
    failing = port.socket = _Failing(real, errno.EMFILE)
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        port.doRead()
        assert failing.calls == 1  # not retried in a loop
        assert port not in reactor.readers  # paused, so the event loop does not spin
        clock.advance(accept.PAUSE)
        assert port in reactor.readers
        for _ in range(3):
            port.doRead()
            clock.advance(accept.PAUSE)
        clock.advance(accept.LOG_INTERVAL)
        port.doRead()
        clock.advance(accept.PAUSE)
    finally:
        globalLogPublisher.removeObserver(events.append)
        port.socket = real
    lines = [e for e in events if "cannot accept" in e.get("log_format", "")]
    assert len(lines) == 2
    assert lines[0]["more"] == "" and "3 more" in lines[1]["more"]
    assert port.doRead.failures == 5
    # and it accepts again
    connect(port, clients)
    port.doRead()
    assert len(factory.built) == 1


def test_stop_reading_by_others_cancels_resume(listening):
    """A port paused by someone else (a handover) is not resumed by the EMFILE timer."""
    port, factory, reactor, clients = listening
    clock = task.Clock()
    accept.install(port, clock)
    real = port.socket
    port.socket = _Failing(real, errno.ENFILE)
    try:
        port.doRead()
        port.stopReading()
        clock.advance(accept.PAUSE * 2)
        assert port not in reactor.readers
        port.startReading()
        assert port in reactor.readers
    finally:
        port.socket = real


def test_one_client_error_skips_to_next(listening):
    port, factory, reactor, clients = listening
    accept.install(port)
    real = port.socket

    class Aborting:
        family, type, proto = real.family, real.type, real.proto
        first = True

        def _accept(self):
            if self.first:
                self.first = False
                raise OSError(errno.ECONNABORTED, "aborted")
            return real._accept()

    connect(port, clients)
    port.socket = Aborting()
    try:
        port.doRead()
    finally:
        port.socket = real
    assert len(factory.built) == 1


def test_not_installed_elsewhere():
    reactor = MemoryReactor()

    class OtherPort(tcp.Port):
        pass

    other = OtherPort(0, Factory.forProtocol(Protocol), interface="127.0.0.1", reactor=reactor)
    other.startListening()
    try:
        assert not accept.install(other)
    finally:
        other.socket.close()
    not_listening = tcp.Port(0, Factory.forProtocol(Protocol), reactor=reactor)
    assert not accept.install(not_listening)
    port = tcp.Port(0, Factory.forProtocol(Protocol), interface="127.0.0.1", reactor=reactor)
    port.startListening()
    try:
        port.transport = type("OtherServer", (tcp.Server,), {})
        assert not accept.install(port)
        port.transport = tcp.Server
        assert accept.install(port)
        assert accept.install(port)  # idempotent
        assert isinstance(port.doRead, accept.Acceptor)
    finally:
        port.socket.close()


def test_descriptions():
    assert accept.is_plain_tcp_description("tcp:80:interface=127.0.0.1")
    assert accept.is_plain_tcp_description("TCP6:80")
    assert not accept.is_plain_tcp_description("ssl:443:privateKey=k.pem")
    assert not accept.is_plain_tcp_description("unix:/tmp/s")


def test_wired_for_plain_tcp_listeners_only():
    """tap.py wraps tcp: proxy listeners (the port they give gets the loop), not ssl: ones."""
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.epollreactor import EPollReactor

    from modcluster.tap import _accepting

    reactor = EPollReactor()
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    assert _accepting(endpoint, "ssl:0:privateKey=k.pem") is endpoint
    wrapped = _accepting(endpoint, "tcp:0:interface=127.0.0.1")
    assert isinstance(wrapped, accept.AcceptingEndpoint)
    ports = []
    wrapped.listen(Factory.forProtocol(Protocol)).addCallback(ports.append)
    (port,) = ports
    try:
        assert isinstance(port.doRead, accept.Acceptor)
    finally:
        port.stopReading()
        port.socket.close()
        reactor._poller.close()


def test_worker_adopted_sockets_get_the_loop():
    """A worker process's inherited tcp: socket (sharing.Adopter) accepts with the loop."""
    from twisted.internet.epollreactor import EPollReactor

    from modcluster.proxy.sharing import Adopter

    reactor = EPollReactor()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(5)
    s.setblocking(False)
    try:
        port = Adopter(reactor, s.fileno(), socket.AF_INET, fast_accept=True).listenTCP(
            0, Factory.forProtocol(Protocol))
        assert isinstance(port.doRead, accept.Acceptor)
        plain = Adopter(reactor, s.fileno(), socket.AF_INET).listenTCP(
            0, Factory.forProtocol(Protocol))
        assert not isinstance(plain.doRead, accept.Acceptor)
        for p in (port, plain):
            p.stopReading()
            p.socket.close()
    finally:
        s.close()
        reactor._poller.close()


def test_ipv6_peer():
    reactor = MemoryReactor()
    factory = RecordingFactory()
    port = tcp.Port(0, factory, interface="::1", reactor=reactor)
    port.startListening()
    try:
        assert accept.install(port)
        c = socket.create_connection(("::1", port.getHost().port), 5)
        port.doRead()
        ((proto, addr),) = factory.built
        t = proto.transport
        assert isinstance(addr, address.IPv6Address) and addr.host == "::1"
        assert addr.port == c.getsockname()[1]
        assert t.getPeer() == addr
        assert t.hostname == "::1"
        t.socket.close()
        c.close()
    finally:
        port.socket.close()


def test_twistd_freezes_the_heap_once_started():
    """tap.py: the started process freezes its start-up objects (proxy.fast_event_loop)."""
    from modcluster.config import parse_config
    from modcluster.tap import _freeze_heap, _proxy_factory

    from twisted.internet.testing import MemoryReactorClock

    for fast, hooks in (("true", 1), ("false", 0)):
        reactor = MemoryReactorClock()
        config = parse_config(f"[proxy]\nfast_event_loop = {fast}\n")
        _proxy_factory(config, reactor, lambda: None, lambda *a: None, lambda *a: None, None)
        assert [f for f, _, _ in reactor.whenRunningHooks if f is _freeze_heap] == \
            [_freeze_heap] * hooks


@pytest.fixture(scope="module")
def server_pem(tmp_path_factory):
    trustme = pytest.importorskip("trustme")
    pem = tmp_path_factory.mktemp("accept-tls") / "server.pem"
    trustme.CA().issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(pem))
    return str(pem)


def test_accepts_descriptions():
    assert accept.accepts_description("tcp:80", "twisted")
    assert accept.accepts_description("tcp6:80", "stdlib")
    assert accept.accepts_description("ssl:443:privateKey=k.pem", "stdlib")
    assert not accept.accepts_description("ssl:443:privateKey=k.pem", "twisted")
    assert not accept.accepts_description("unix:/tmp/s", "stdlib")


@pytest.mark.parametrize("engine", ["stdlib", "twisted"])
def test_wired_for_ssl_listeners_with_the_stdlib_engine_only(server_pem, engine):
    """tap.py: an ssl: proxy listener gets the loop with tls_engine=stdlib, not twisted."""
    from twisted.internet.epollreactor import EPollReactor

    from modcluster.proxy.stdtls import TLSServerFactory
    from modcluster.tap import _accepting
    from modcluster.tls import server_endpoint

    reactor = EPollReactor()
    description = f"ssl:0:interface=127.0.0.1:privateKey={server_pem}"
    endpoint = _accepting(server_endpoint(reactor, description, (b"http/1.1",), engine),
                          description, engine)
    assert isinstance(endpoint, accept.AcceptingEndpoint) == (engine == "stdlib")
    ports = []
    endpoint.listen(Factory.forProtocol(Protocol)).addCallback(ports.append)
    (port,) = ports
    try:
        assert isinstance(port.factory, TLSServerFactory) == (engine == "stdlib")
        assert isinstance(port.doRead, accept.Acceptor) == (engine == "stdlib")
        # a port under Twisted's TLS never gets it, even when asked
        if engine == "twisted":
            assert not accept.install(port)
    finally:
        port.stopReading()
        port.socket.close()
        reactor._poller.close()


def test_worker_adopted_ssl_sockets_get_the_loop_with_the_stdlib_engine(server_pem):
    """sharing.Adopter.listenSSL (stdlib engine): the inherited socket accepts with the loop."""
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.epollreactor import EPollReactor

    from modcluster.config import parse_config
    from modcluster.proxy.stdtls import TLSServerFactory
    from modcluster.proxy.sharing import Adopter

    reactor = EPollReactor()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(5)
    s.setblocking(False)
    description = f"ssl:0:interface=127.0.0.1:privateKey={server_pem}"
    ports: list = []
    try:
        for engine in ("stdlib", "twisted"):
            factory = Factory.forProtocol(Protocol)
            factory.config = parse_config(f"[proxy]\ntls_engine = \"{engine}\"\n").proxy
            serverFromString(Adopter(reactor, s.fileno(), socket.AF_INET, description,
                                      fast_accept=True), description).listen(
                factory).addCallback(ports.append)
        stdlib, twisted = ports
        assert isinstance(stdlib.factory, TLSServerFactory)
        assert isinstance(stdlib.doRead, accept.Acceptor)
        assert not isinstance(twisted.doRead, accept.Acceptor)
    finally:
        for p in ports:
            p.stopReading()
            p.socket.close()
        s.close()
        reactor._poller.close()


# -- protocols that register their reading themselves (deferReading) -----------------------

class Deferring(Protocol):
    """Says whether the accept loop should leave its connection unregistered."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.got = b""
        self.asked = 0
        self.lost = None

    def dataReceived(self, data: bytes) -> None:
        self.got += data
        if data.endswith(b"bye"):
            self.transport.loseConnection()

    def deferReading(self) -> bool:
        self.asked += 1
        if self.answer == "boom":
            raise RuntimeError("boom in deferReading")
        return self.answer

    def connectionLost(self, reason=None) -> None:
        self.lost = reason


@pytest.fixture
def epoll_listening():
    """A listening port with the accept loop on a private EPollReactor (never run)."""
    epollreactor = pytest.importorskip("twisted.internet.epollreactor")
    reactor = epollreactor.EPollReactor()
    built: list = []

    class Building(Factory):
        answer = True

        def buildProtocol(self, addr):
            p = Deferring(self.answer)
            built.append(p)
            return p

    factory = Building()
    port = tcp.Port(0, factory, interface="127.0.0.1", reactor=reactor)
    port.startListening()
    assert accept.install(port)
    clients: list[socket.socket] = []
    yield port, factory, reactor, clients, built
    for c in clients:
        c.close()
    reactor.removeAll()
    port.socket.close()
    reactor._poller.close()


def _accept_one(port, clients, data: bytes, built):
    (c,) = connect(port, clients)
    if data:
        c.sendall(data)
    n = len(built)
    for _ in range(50):
        port.doRead()
        if len(built) > n:
            break
    (p,) = built[n:]
    return c, p


def test_deferred_reading_is_not_registered(epoll_listening):
    """First read done, the protocol keeps it unregistered: no epoll registration at all."""
    port, factory, reactor, clients, built = epoll_listening
    c, p = _accept_one(port, clients, b"request", built)
    t = p.transport
    assert p.got == b"request" and p.asked == 1
    fd = t.fileno()
    assert fd not in reactor._reads and fd not in reactor._selectables
    # what reactor.addReader would have given epoll: refused as unknown
    with pytest.raises(FileNotFoundError):
        reactor._poller.modify(fd, 1)
    # written and closed as any transport
    t.write(b"answer")
    t.loseConnection()
    for _ in range(5):
        reactor.doIteration(0)
    assert p.lost is not None
    assert c.recv(100) == b"answer" and c.recv(100) == b""


def test_deferred_reading_starts_when_the_protocol_resumes(epoll_listening):
    port, factory, reactor, clients, built = epoll_listening
    c, p = _accept_one(port, clients, b"first", built)
    t = p.transport
    c.sendall(b" second")
    reactor.doIteration(0)
    assert p.got == b"first"  # not registered: not read
    t.resumeProducing()  # what ClientProtocol's reading does (startReading)
    assert t.fileno() in reactor._reads
    reactor.doIteration(0)
    assert p.got == b"first second"


@pytest.mark.parametrize("answer,data", [(False, b"request"), (False, b""), ("boom", b"x")])
def test_registered_when_the_protocol_says_so(epoll_listening, answer, data):
    """The protocol wants reading (with or without a first read), or asking it failed."""
    port, factory, reactor, clients, built = epoll_listening
    factory.answer = answer
    with capturedLogs() as events:
        c, p = _accept_one(port, clients, data, built)
    t = p.transport
    assert t.fileno() in reactor._reads
    assert p.got == data
    errors = [e["log_failure"].getErrorMessage() for e in events if "log_failure" in e]
    assert errors == (["boom in deferReading"] if answer == "boom" else [])
    assert p.asked == 1


def test_first_read_is_os_read_of_the_descriptor(epoll_listening, monkeypatch):
    """
    The eager first read is C{os.read} of the accepted descriptor, of the
    transports' C{bufferSize} (what C{tcp.Connection.doRead} asks C{recv}
    for), not the socket object's C{recv}: the protocol gets the same bytes;
    nothing sent yet is no data (C{EAGAIN}), a reset a lost connection.
    """
    import os
    import struct

    port, factory, reactor, clients, built = epoll_listening
    reads: list = []

    def counted(fd, size):
        reads.append((fd, size))
        return os.read(fd, size)

    monkeypatch.setattr(accept, "_os_read", counted)
    c, p = _accept_one(port, clients, b"request", built)
    assert p.got == b"request"
    assert reads == [(p.transport.fileno(), tcp.Server.bufferSize)]
    reads.clear()
    c2, p2 = _accept_one(port, clients, b"", built)  # nothing sent yet: EAGAIN
    assert reads == [(p2.transport.fileno(), tcp.Server.bufferSize)]
    assert p2.got == b"" and p2.lost is None
    # a client that reset the connection before the accept: lost at the first read
    c3 = socket.create_connection(("127.0.0.1", port.getHost().port))
    clients.append(c3)
    c3.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c3.close()
    n = len(built)
    for _ in range(50):
        port.doRead()
        if len(built) > n:
            break
    (p3,) = built[n:]
    assert p3.lost is not None and p3.got == b""


def test_deferred_connection_closed_at_the_first_read_is_not_registered(epoll_listening):
    port, factory, reactor, clients, built = epoll_listening
    c, p = _accept_one(port, clients, b"bye", built)
    reactor.doIteration(0)
    reactor.doIteration(0)
    assert p.lost is not None
    assert c.recv(100) == b""


def test_other_protocols_registered_before_connection_made(epoll_listening):
    """A protocol without deferReading: registered before makeConnection, as Twisted's loop."""
    port, factory, reactor, clients, built = epoll_listening
    seen = []

    class Plain(Protocol):
        def connectionMade(self):
            seen.append(self.transport.fileno() in reactor._reads)

    factory.buildProtocol = lambda addr: Plain()
    connect(port, clients)
    port.doRead()
    assert seen == [True]


def test_peer_address_is_the_one_twisted_builds(listening):
    """
    The address given to buildProtocol, built without IPv4Address's attrs
    __init__ (accept._LEAN_ADDRESS), is the instance that __init__ builds:
    same class, same attributes in the same order, equal, hashed alike.
    """
    port, factory, reactor, clients = listening
    assert accept._LEAN_ADDRESS  # the installed attrs/Twisted: the lean path is used
    accept.install(port)
    (c,) = connect(port, clients)
    port.doRead()
    ((proto, addr),) = factory.built
    made = address.IPv4Address("TCP", *c.getsockname()[:2])
    assert type(addr) is address.IPv4Address
    assert list(vars(addr).items()) == list(vars(made).items())
    assert addr == made and hash(addr) == hash(made)
    assert addr.type == "TCP"


class _OwnMakeConnection(Recorder):
    def makeConnection(self, transport) -> None:
        self.own = transport
        Protocol.makeConnection(self, transport)


def test_make_connection_inline_or_the_protocols_own(listening):
    """
    Protocol.makeConnection is done inline (connected, transport, then
    connectionMade); a protocol with its own makeConnection gets it called.
    """
    port, factory, reactor, clients = listening
    accept.install(port)
    built = []

    def build(addr):
        p = (_OwnMakeConnection if built else Recorder)()
        built.append(p)
        return p

    factory.buildProtocol = build
    connect(port, clients, 2)
    port.doRead()
    plain, own = built
    for p in built:
        assert p.connected == 1 and p.made == 1 and type(p.transport) is tcp.Server
    assert own.own is own.transport
    assert not hasattr(plain, "own")
    for p in built:
        p.transport.socket.close()


def test_listening_socket_kind_read_once_per_socket(listening):
    """
    The family and type of the listening socket (Python properties making
    enums) are read once per listening socket, not per readable event; a new
    listening socket (a port listening again) is read again.
    """
    port, factory, reactor, clients = listening
    accept.install(port)
    reads = []

    class Counting(socket.socket):
        @property
        def family(self):
            reads.append("family")
            return super().family

    listener = port.socket
    counting = Counting(listener.family, listener.type, listener.proto, listener.detach())
    port.socket = counting
    for _ in range(3):
        connect(port, clients)
        port.doRead()
    assert reads == ["family"]
    assert len(factory.built) == 3
    port.socket = Counting(counting.family, counting.type, counting.proto, counting.detach())
    reads.clear()
    connect(port, clients)
    port.doRead()
    assert reads == ["family"] and len(factory.built) == 4


def test_log_prefix_and_repr_made_when_read(listening):
    """
    The transport's logstr and repr are Twisted's strings, made when first
    read (then kept on the transport), from what the accept recorded: the
    port number in the repr stays the one accepted on after the port stops
    listening.  Twisted's own transports keep theirs.
    """
    port, factory, reactor, clients = listening
    accept.install(port)
    number = port.getHost().port
    connect(port, clients, 2)
    port.doRead()
    (p1, a1), (p2, a2) = factory.built
    t1, t2 = p1.transport, p2.transport
    assert "logstr" not in vars(t1) and "repstr" not in vars(t1)
    assert t1.logPrefix() == f"Recorder,{t1.sessionno},127.0.0.1"
    assert repr(t1) == f"<Recorder #{t1.sessionno} on {number}>"
    assert vars(t1)["logstr"] == t1.logPrefix() and vars(t1)["repstr"] == repr(t1)
    port._realPortNumber = None  # as stopListening leaves it
    assert repr(t2) == f"<Recorder #{t2.sessionno} on {number}>"
    twisted = tcp.Server(socket.socket(), Recorder(), ("127.0.0.1", 1), port, 7, MemoryReactor())
    try:
        assert vars(twisted)["logstr"] == twisted.logPrefix() == "Recorder,7,127.0.0.1"
        assert repr(twisted) == "<Recorder #7 on None>"
    finally:
        twisted.socket.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_proxy_factory_protocols_built_without_a_peer_address(host):
    """
    For the ProxyFactory (accept_protocol) the accept loop builds the client
    protocol without a peer address object: its ClientInfo has the peer's
    host and port all the same (from the transport's client tuple), and
    getPeer() still gives Twisted's address.
    """
    from tests.support.proxy_testlib import Harness

    h = Harness()
    calls: list = []
    real = h.factory.buildProtocol
    h.factory.buildProtocol = lambda addr: (calls.append(addr), real(addr))[1]
    port = tcp.Port(0, h.factory, interface=host, reactor=MemoryReactor())
    port.startListening()
    try:
        assert accept.install(port)
        assert h.factory.accept_protocol is not None
        c = socket.create_connection((host, port.getHost().port), 5)
        port.doRead()
        (proto,) = h.factory._clients
        assert calls == []  # not buildProtocol: no address made
        assert proto._addr is None
        info = proto.client
        assert (info.remote_addr, info.remote_port) == (host, c.getsockname()[1])
        peer = proto.transport.getPeer()
        assert (peer.host, peer.port) == (host, c.getsockname()[1])
        lose_connection(proto.transport)
        c.close()
    finally:
        port.socket.close()


def test_proxy_factory_subclass_building_its_own_protocols_gets_the_address():
    """A ProxyFactory subclass with its own buildProtocol: the accept loop calls it."""
    from modcluster.proxy.front import ProxyFactory
    from tests.support.proxy_testlib import Harness

    h = Harness()
    built: list = []

    class Own(ProxyFactory):
        def buildProtocol(self, addr):
            built.append(addr)
            return ProxyFactory.buildProtocol(self, addr)

    factory = Own(h.reactor, h.config, lambda: h.registry.table, h._failed,
                  h.successes.append)
    assert factory.accept_protocol is None
    port = tcp.Port(0, factory, interface="127.0.0.1", reactor=MemoryReactor())
    port.startListening()
    try:
        assert accept.install(port)
        c = socket.create_connection(("127.0.0.1", port.getHost().port), 5)
        port.doRead()
        (addr,) = built
        assert addr == address.IPv4Address("TCP", "127.0.0.1", c.getsockname()[1])
        (proto,) = factory._clients
        assert proto.client.remote_port == c.getsockname()[1]
        lose_connection(proto.transport)
        c.close()
    finally:
        port.socket.close()


def test_per_class_facts_follow_the_class_within_a_batch(listening):
    """
    What depends on the protocol's class (log prefix, inline makeConnection)
    is worked out once per run of one class in a batch: a batch of mixed
    classes gets each protocol's own; a class with its own logPrefix is asked
    per connection.
    """
    port, factory, reactor, clients = listening
    accept.install(port)
    built = []
    asked = []

    class Named(Recorder):
        def logPrefix(self):
            asked.append(self)
            return f"Named{len(asked)}"

    kinds = [Recorder, _OwnMakeConnection, Recorder, Named, Named]

    def build(addr):
        p = kinds[len(built)]()
        built.append(p)
        return p

    factory.buildProtocol = build
    connect(port, clients, len(kinds))
    port.doRead()
    assert [type(p) for p in built] == kinds
    for p in built:
        assert p.connected == 1 and p.made == 1
        assert hasattr(p, "own") == (type(p) is _OwnMakeConnection)
    prefixes = [p.transport.logPrefix().split(",")[0] for p in built]
    assert prefixes == ["Recorder", "_OwnMakeConnection", "Recorder", "Named1", "Named2"]
    for p in built:
        p.transport.socket.close()


class _Prefixed(Recorder):
    asked = 0

    def logPrefix(self) -> str:
        type(self).asked += 1
        return "Prefixed (TLS)"


class _ConstantPrefix(_Prefixed):
    asked = 0
    constant_log_prefix = True


@pytest.mark.parametrize("cls, asked", [(_Prefixed, 2), (_ConstantPrefix, 1)])
def test_log_prefix_of_a_protocol_with_its_own(listening, cls, asked):
    """
    A protocol class with its own logPrefix() is asked for it per connection,
    unless it says the prefix is the same for every connection it is built
    for (constant_log_prefix, as alpn._NegotiatingTLS): then once per class.
    The transports' logstr is the same either way.
    """
    port, factory, reactor, clients = listening

    def build(addr):
        p = cls()
        p.factory = factory
        factory.built.append((p, addr))
        return p

    factory.buildProtocol = build
    accept.install(port)
    connect(port, clients, 2)
    port.doRead()
    assert cls.asked == asked
    for p, _ in factory.built:
        t = p.transport
        assert t.logPrefix() == f"Prefixed (TLS),{t.sessionno},127.0.0.1"
