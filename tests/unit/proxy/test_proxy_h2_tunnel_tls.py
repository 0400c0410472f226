"""
WebSocket over HTTP/2 (RFC 8441) to a TLS (wss) node, through the real TLS
stack of node connections (Twisted's TLSMemoryBIOProtocol over pyOpenSSL) on
in-memory transports, the node's TLS played by the standard library
(test_node_tls_close's C{TlsNode}): the client's END_STREAM, the tunnelled
connection's FIN (§5), reaches a TLS 1.3 node as close_notify, which ends
only our sending (RFC 8446 §6.1), and the node's bytes still come; to a TLS
1.2 node, whose close_notify would ask it to close at once and drop what it
still has to send (RFC 5246 §7.2.1), it is not passed on.
"""

from __future__ import annotations

import ssl as pyssl

import pytest
from twisted.internet import ssl
from twisted.internet.error import ConnectionDone
from twisted.protocols import tls

from tests.support.proxy_testlib import Harness, parse_requests
from tests.unit.proxy.test_node_tls_close import TlsNode
from tests.unit.proxy.test_proxy_h2 import H2Client
from tests.unit.proxy.test_proxy_h2_tunnel import WS, _accept

trustme = pytest.importorskip("trustme")


class EofTlsNode(TlsNode):
    """A TLS node that tells when the proxy's close_notify came."""

    eof = False

    def pump(self) -> bytes:
        data = TlsNode.pump(self)
        try:
            if self.tls.read(65536) == b"":  # (no data: SSLWantReadError)
                self.eof = True  # close_notify received: SSL_read gives b""
        except pyssl.SSLWantReadError:
            pass
        return data


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def _open(ca, monkeypatch, version: pyssl.TLSVersion):
    context = pyssl.SSLContext(pyssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(context)
    context.maximum_version = version
    h = Harness(enable_ws_tunnel=True, client_timeout=10, timeout=100)
    # (Twisted's TLS joins small writes until the next iteration of its clock)
    monkeypatch.setattr(tls, "_get_default_clock", lambda: h.reactor)
    h.node("n1", 8443, type="wss")
    trust = ssl.Certificate.loadPEM(ca.cert_pem.bytes())
    h.factory.http.node_tls = lambda node: ssl.optionsForClientTLS("localhost",
                                                                   trustRoot=trust)
    c = H2Client(h)
    sid = c.request(b"/chat", method=b"CONNECT", end=False, extra=WS)
    c.pump()
    node = EofTlsNode(h, h.accept(8443), context)
    request = b""
    for _ in range(5):
        request += node.pump()
        if request.endswith(b"\r\n\r\n"):
            break
    [req] = parse_requests(request)
    assert req.header(b"Upgrade") == b"websocket"
    assert node.tls.version() == ("TLSv1.3" if version is pyssl.TLSVersion.TLSv1_3
                                  else "TLSv1.2")
    node.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
              + _accept(req.header(b"sec-websocket-key")) + b"\r\n\r\n")
    c.pump()
    assert c.status(sid) == 200
    return h, c, sid, node


def test_end_stream_reaches_a_tls13_node_as_close_notify(ca, monkeypatch):
    h, c, sid, node = _open(ca, monkeypatch, pyssl.TLSVersion.TLSv1_3)
    c.conn.send_data(sid, b"\x81\x82abcd\x09\x0b", end_stream=True)
    c.pump()
    assert node.pump() == b"\x81\x82abcd\x09\x0b"
    assert node.eof  # our sending ended (close_notify), the connection is open
    # the node still answers (TLS 1.3: a close_notify only ends its sender's
    # side), then closes: the stream is over, no reset
    node.send(b"\x81\x04last")
    c.pump()
    assert c.body[sid] == b"\x81\x04last"
    assert sid not in c.ended and h.in_flight() == 1
    node.close_notify()
    node.conn.close(ConnectionDone)
    c.pump()
    assert c.body[sid] == b"\x81\x04last" and sid in c.ended
    assert sid not in c.resets
    assert h.counters_idle() and not c.proto.streams
    assert h.nodeEntry("n1").rt.fails == 0


def test_end_stream_before_the_101_reaches_a_tls13_node_after_it(ca, monkeypatch):
    context = pyssl.SSLContext(pyssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(context)
    h = Harness(enable_ws_tunnel=True, client_timeout=10, timeout=100)
    monkeypatch.setattr(tls, "_get_default_clock", lambda: h.reactor)
    h.node("n1", 8443, type="wss")
    trust = ssl.Certificate.loadPEM(ca.cert_pem.bytes())
    h.factory.http.node_tls = lambda node: ssl.optionsForClientTLS("localhost",
                                                                   trustRoot=trust)
    c = H2Client(h)
    sid = c.request(b"/chat", method=b"CONNECT", end=False, extra=WS)
    c.conn.send_data(sid, b"only", end_stream=True)
    c.pump()
    node = EofTlsNode(h, h.accept(8443), context)
    request = b""
    for _ in range(5):
        request += node.pump()
        if request.endswith(b"\r\n\r\n"):
            break
    [req] = parse_requests(request)
    node.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
              + _accept(req.header(b"sec-websocket-key")) + b"\r\n\r\n")
    c.pump()
    assert c.status(sid) == 200
    assert node.pump() == b"only"
    assert node.eof


def test_end_stream_not_passed_on_to_a_tls12_node(ca, monkeypatch):
    h, c, sid, node = _open(ca, monkeypatch, pyssl.TLSVersion.TLSv1_2)
    c.conn.send_data(sid, b"bye", end_stream=True)
    c.pump()
    assert node.pump() == b"bye"
    assert not node.eof  # TLS 1.2: close_notify would close the whole connection
    node.send(b"\x81\x04last")
    c.pump()
    assert c.body[sid] == b"\x81\x04last" and sid not in c.ended
    node.close_notify()
    node.conn.close(ConnectionDone)
    c.pump()
    assert sid in c.ended and sid not in c.resets
    assert h.counters_idle() and not c.proto.streams
