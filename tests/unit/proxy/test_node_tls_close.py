"""
How an https node's close-delimited body (no Content-Length, not chunked)
ends, through the real TLS stack of node connections (Twisted's
TLSMemoryBIOProtocol over pyOpenSSL) on in-memory transports, with the node's
TLS played by the standard library (an C{SSLObject} on memory BIOs): the
body is complete when the node sent close_notify, whatever the TCP close
after it; a TCP close without it, a record cut in the middle or a record
that fails its integrity check is a truncation (the client connection is
cut, the node's failure recorded), as a reset is over plain TCP.
"""

from __future__ import annotations

import ssl as pyssl

import pytest
from twisted.internet import ssl
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.protocols import tls

from tests.support.proxy_testlib import Harness, NodeConn, parse_responses

trustme = pytest.importorskip("trustme")

GET = b"GET /app/x HTTP/1.1\r\nHost: a\r\n\r\n"
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"


class TlsNode:
    """The node's end of one node connection, speaking TLS (server side)."""

    def __init__(self, h: Harness, conn: NodeConn, context: pyssl.SSLContext) -> None:
        self.h = h
        self.conn = conn
        self.incoming = pyssl.MemoryBIO()
        self.outgoing = pyssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.handshaken = False

    def pump(self) -> bytes:
        """Take in what the proxy sent, answer the handshake; the plaintext read."""
        self.h.reactor.advance(0)  # (the proxy's joined writes go out)
        self.incoming.write(self.conn.received())
        data = b""
        try:
            if not self.handshaken:
                self.tls.do_handshake()
                self.handshaken = True
            while True:
                chunk = self.tls.read(65536)
                if not chunk:
                    break
                data += chunk
        except pyssl.SSLWantReadError:
            pass
        self.flush()
        return data

    def flush(self) -> None:
        out = self.outgoing.read()
        if out:
            self.conn.respond(out)

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.flush()

    def records(self, data: bytes) -> bytes:
        """C{data} as TLS records, not sent."""
        self.tls.write(data)
        return self.outgoing.read()

    def close_notify(self) -> None:
        """Send close_notify (not waiting for the proxy's)."""
        try:
            self.tls.unwrap()
        except pyssl.SSLWantReadError:
            pass
        self.flush()


@pytest.fixture(scope="module")
def pki():
    ca = trustme.CA()
    context = pyssl.SSLContext(pyssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(context)
    return ca, context


def _start(pki, monkeypatch, head: bytes = GET) -> tuple[Harness, object, TlsNode]:
    """A client's request reaches an https node, which answers a close-delimited head and part."""
    ca, context = pki
    h = Harness()
    # (Twisted's TLS joins small writes until the next iteration of its clock)
    monkeypatch.setattr(tls, "_get_default_clock", lambda: h.reactor)
    h.node("n1", 8443, type="https", contexts=("/app",))
    trust = ssl.Certificate.loadPEM(ca.cert_pem.bytes())
    h.factory.http.node_tls = lambda node: ssl.optionsForClientTLS("localhost",
                                                                   trustRoot=trust)
    c = h.client()
    c.send(head)
    node = TlsNode(h, h.accept(8443), context)
    request = b""
    for _ in range(5):
        request += node.pump()
        if request.endswith(b"\r\n\r\n"):
            break
    assert request.startswith(head.split(b"\r\n")[0]), request
    node.send(HEAD + b"part1,")
    return h, c, node


def _complete(h: Harness, c) -> None:
    [resp] = parse_responses(c.received())
    assert resp.complete and resp.body == b"part1,part2", resp.body
    assert not c.transport.disconnected and not c.closed  # keep-alive
    assert h.counters_idle()
    assert h.nodeEntry("n1").rt.fails == 0


def _cut(h: Harness, c) -> None:
    raw = c.received()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and b"part1," in raw, raw
    assert b"part2" not in raw and not raw.endswith(b"0\r\n\r\n"), raw  # no last chunk
    assert c.transport.disconnected  # aborted, not closed in order
    assert h.counters_idle()
    entry = h.nodeEntry("n1")
    assert entry.rt.fails == 1 and not entry.rt.in_error  # as for a reset


def test_close_notify_then_close_ends_the_body(pki, monkeypatch):
    h, c, node = _start(pki, monkeypatch)
    node.send(b"part2")
    node.close_notify()
    assert node.conn.closed  # the proxy answered with its own and closes
    node.conn.close(ConnectionDone)
    _complete(h, c)


def test_close_notify_then_a_reset_ends_the_body(pki, monkeypatch):
    """
    close_notify is the end of the data: a reset after it (the node closed
    before the proxy's close_notify reached it, or with unread bytes, and
    the proxy's answer met the reset) does not cut the body.  Before, it
    was cut, as a reset without close_notify.
    """
    h, c, node = _start(pki, monkeypatch)
    node.send(b"part2")
    node.close_notify()
    node.conn.close(ConnectionLost)
    _complete(h, c)


@pytest.mark.parametrize("end", [ConnectionDone, ConnectionLost])
def test_a_close_without_close_notify_cuts_the_body(pki, end, monkeypatch):
    """A TCP close (FIN or reset) at a record boundary without close_notify: truncation."""
    h, c, node = _start(pki, monkeypatch)
    node.conn.close(end)
    _cut(h, c)


def test_a_record_cut_in_the_middle_cuts_the_body(pki, monkeypatch):
    h, c, node = _start(pki, monkeypatch)
    record = node.records(b"part2")
    node.conn.respond(record[:-3])
    node.conn.close(ConnectionDone)
    _cut(h, c)


def test_a_forged_record_then_close_notify_cuts_the_body(pki, monkeypatch):
    """
    A record that fails its integrity check (bytes changed on the way) ends
    the TLS connection with an error: a truncation, even when a
    close_notify follows (it cannot be read any more).
    """
    h, c, node = _start(pki, monkeypatch)
    record = bytearray(node.records(b"part2"))
    record[-1] ^= 1
    node.conn.respond(bytes(record))
    node.close_notify()
    node.conn.close(ConnectionDone)
    _cut(h, c)


def test_a_fatal_alert_cuts_the_body(pki, monkeypatch):
    """
    A fatal alert from the node (here: it got a forged record of the request
    body) ends its TLS connection with an error, not with close_notify
    (OpenSSL records both as the peer's shutdown): a truncation.
    """
    h, c, node = _start(pki, monkeypatch, b"POST /app/x HTTP/1.1\r\nHost: a\r\n"
                                          b"Content-Length: 5\r\n\r\n")
    c.send(b"12345")
    h.reactor.advance(0)
    record = bytearray(node.conn.received())
    record[-1] ^= 1
    node.incoming.write(bytes(record))
    with pytest.raises(pyssl.SSLError):
        node.tls.read(65536)
    node.flush()  # its alert
    node.conn.close(ConnectionDone)
    _cut(h, c)
