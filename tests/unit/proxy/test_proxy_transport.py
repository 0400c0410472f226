"""
The direct-write adaptation pinned against the installed Twisted: a TCP
transport with an empty buffer sends at once; anything else keeps Twisted's
buffered path and order.
"""

import socket

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport

from modcluster.proxy._transport import direct_writer, is_plain_tcp, set_nodelay


def _server_transport():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    reactor = MemoryReactor()
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


def test_empty_buffer_sends_immediately():
    t, peer, reactor = _server_transport()
    write = direct_writer(t)
    assert is_plain_tcp(t)
    write(b"hello")
    assert peer.recv(100) == b"hello"
    assert t not in reactor.getWriters()  # no wait for writability
    assert t._tempDataLen == 0 and not t.dataBuffer


def test_buffered_data_keeps_order():
    t, peer, reactor = _server_transport()
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


def test_partial_send_buffers_the_rest():
    t, peer, reactor = _server_transport()
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


def test_disconnecting_transport_not_written_directly():
    t, peer, reactor = _server_transport()
    write = direct_writer(t)
    t.write(b"x")
    t.loseConnection()
    write(b"y")
    try:
        early = peer.recv(100)
    except BlockingIOError:
        early = b""
    assert early == b""
