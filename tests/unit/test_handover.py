"""
modcluster.handover pieces that need no second process: finding nobody to take
over from, and the listener book adopting handed sockets instead of binding.
"""

from __future__ import annotations

import os
import socket

from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactor
from twisted.protocols.tls import TLSMemoryBIOFactory

from modcluster.handover import ListenerBook, Takeover, take_over


def test_nobody_to_take_over_from(tmp_path):
    assert take_over(str(tmp_path / "missing.sock")) is None
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # the file stays, nobody listens: a balancer that was killed
    assert take_over(str(stale)) is None
    assert not stale.exists()


def test_book_adopts_handed_sockets_and_binds_the_rest():
    reactor = MemoryReactor()
    handed = socket.socket()
    a, b = socket.socketpair()  # stand-ins for listening sockets
    takeover = Takeover(a, {("127.0.0.1", 8000): [(os.dup(handed.fileno()), socket.AF_INET)],
                            ("0.0.0.0", 8443): [(os.dup(handed.fileno()), socket.AF_INET)]},
                        {}, 1)
    book = ListenerBook(reactor, takeover)
    book.install()
    factory = object()
    reactor.listenTCP(8000, factory, interface="127.0.0.1")
    reactor.listenTCP(9000, factory, interface="127.0.0.1")
    reactor.listenSSL(8443, factory, CertificateOptions())
    book.uninstall()
    assert [(fam, f) for _, fam, f in reactor.adoptedPorts][0] == (socket.AF_INET, factory)
    assert isinstance(reactor.adoptedPorts[1][2], TLSMemoryBIOFactory)
    assert [(port, iface) for port, _, _, iface in reactor.tcpClients] == []
    assert [t[0] for t in reactor.tcpServers] == [9000]
    assert len(book.ports) == 3
    assert takeover.sockets == {}
    assert "listenTCP" not in vars(reactor)
    for s in (handed, a, b):
        s.close()


def test_a_peer_that_never_ends_its_line_is_closed():
    """The handover socket's reader is bounded: no newline within MAX_LINE
    bytes closes the connection (and hands nothing over)."""
    from twisted.internet.testing import StringTransport

    from modcluster import handover

    class Service:
        calls = []

        def hand_over(self, proto, line):
            self.calls.append(line)

    service = Service()
    proto = handover._HandoverProtocol(service)
    transport = StringTransport()
    proto.makeConnection(transport)
    for _ in range(handover.MAX_LINE // 4096 + 1):
        proto.dataReceived(b"x" * 4096)
    assert transport.disconnecting and proto.buffer == b""
    assert service.calls == []


def _refused_connection(data: bytes):
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from modcluster import handover

    reactor = MemoryReactorClock()
    service = handover.HandoverService(reactor, "unused.sock", top=None, book=None)
    service.busy = True  # another successor is taking over right now
    proto = handover._HandoverProtocol(service)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(data)
    return reactor, service, proto, transport


def test_a_refused_successor_going_away_leaves_the_handover_in_progress():
    """A second successor asking while a handover is in progress is refused;
    its connection closing must not end the other one's handover (it once
    reset C{busy}, so a third could pause the listeners again)."""
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    _, service, proto, transport = _refused_connection(b'{"pid": 5, "takeover": true}\n')
    assert transport.disconnecting
    proto.connectionLost(Failure(ConnectionDone()))
    assert service.busy


def test_ready_from_a_refused_successor_is_ignored():
    """C{ready} only counts from the successor that was handed the sockets: a
    refused one saying it (in the same packet as its request) neither raises
    nor stops this balancer."""
    reactor, service, proto, transport = _refused_connection(
        b'{"pid": 5, "takeover": true}\nready\n')
    assert transport.disconnecting
    assert reactor.getDelayedCalls() == []
    assert service.busy


def _other_uid(monkeypatch):
    from modcluster import handover

    monkeypatch.setattr(handover, "peer_uid", lambda sock: os.getuid() + 1, raising=False)


def test_a_balancer_of_another_user_is_not_taken_over_from(tmp_path, monkeypatch):
    """
    The process listening on the handover socket must run as this user (or
    root): a socket someone else made at the path (a shared directory, a
    socket left by another account) would otherwise hand this balancer its
    registrations (nodes it would forward to) and its listening sockets.
    """
    import threading

    import pytest

    _other_uid(monkeypatch)
    path = str(tmp_path / "handover.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    answered = []

    def impostor():
        try:
            conn, _ = server.accept()
        except OSError:  # closed by the test once take_over gave up
            return
        with conn:
            conn.settimeout(5)
            try:
                asked = conn.recv(65536)
                if asked:
                    answered.append(asked)
                    conn.sendall(b'{"pid": 1, "listeners": [], "state_length": 2}\n{}')
                    conn.recv(1)
            except OSError:
                pass

    thread = threading.Thread(target=impostor, daemon=True)
    thread.start()
    try:
        with pytest.raises(PermissionError, match="uid"):
            take_over(path, timeout=5)
    finally:
        server.close()
        thread.join(5)
    assert answered == []  # nothing was asked of it (it may see the connection close)


def test_a_successor_of_another_user_is_refused(monkeypatch):
    """The running balancer hands nothing to a process of another user (the
    socket is made 0600, but only once it is bound)."""
    from twisted.internet.testing import StringTransport

    from modcluster import handover

    _other_uid(monkeypatch)

    class Service:
        calls: list = []

        def hand_over(self, proto, line):
            self.calls.append(line)

    service = Service()
    proto = handover._HandoverProtocol(service)
    transport = StringTransport()
    transport.getHandle = lambda: None  # (what peer_uid reads: patched above)
    proto.makeConnection(transport)
    proto.dataReceived(b'{"pid": 5, "takeover": true}\n')
    assert service.calls == []
    assert transport.disconnecting
