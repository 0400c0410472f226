"""
modcluster.proxy.stdtls in memory: a real handshake between the server layer
(over a StringTransport standing for the TCP transport) and a client
(stdlib SSLObject on memory BIOs, or pyOpenSSL), no reactor.
"""

from __future__ import annotations

import ssl

import pytest
import trustme
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    ISSLTransport,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from modcluster.proxy.stdtls import (
    TLSServerConnection,
    TLSServerFactory,
    UnsupportedOptions,
    description_context,
    server_context,
)
from modcluster.tls import peer_certificate


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("stdtls")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    other = ca.issue_cert("other.example")
    both = d / "server.pem"
    server.private_key_and_cert_chain_pem.write_to_path(str(both))
    other_both = d / "other.pem"
    other.private_key_and_cert_chain_pem.write_to_path(str(other_both))
    ca_path = d / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return {"ca": ca, "both": str(both), "other": str(other_both), "ca_path": str(ca_path)}


@implementer(IHandshakeListener)
class Recorder(Protocol):
    def __init__(self):
        self.chunks = []
        self.handshakes = 0
        self.lost = None

    def dataReceived(self, data):
        self.chunks.append(data)

    def handshakeCompleted(self):
        self.handshakes += 1

    def connectionLost(self, reason=None):
        self.lost = reason


class Pair:
    """The server layer on a StringTransport, a client SSLObject, and a pump."""

    def __init__(self, factory, client_ctx, alpn=None, session=None, peer_port=40000):
        self.tcp = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", peer_port))
        self.conn = factory.buildProtocol(self.tcp.getPeer())
        self.app = self.conn.wrappedProtocol
        self.conn.makeConnection(self.tcp)
        if alpn is not None:
            client_ctx.set_alpn_protocols(alpn)
        self.cin, self.cout = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = client_ctx.wrap_bio(self.cin, self.cout, server_hostname="localhost",
                                          session=session)

    def to_server(self, data=None):
        data = self.cout.read() if data is None else data
        if data:
            self.conn.dataReceived(data)

    def to_client(self):
        data = self.tcp.value()
        self.tcp.clear()
        if data:
            self.cin.write(data)
        return data

    def handshake(self):
        for _ in range(10):
            try:
                self.client.do_handshake()
                self.to_server()
                self.to_client()
                return
            except ssl.SSLWantReadError:
                pass
            self.to_server()
            self.to_client()
        raise AssertionError("no handshake")

    def client_reads(self):
        self.to_client()
        out = b""
        while True:
            try:
                piece = self.client.read(65536)
            except ssl.SSLWantReadError:
                return out
            if not piece:
                return out
            out += piece


def factory_for(pki, protocols=(b"http/1.1",), clock=None, app=Recorder):
    context = description_context(f"ssl:0:privateKey={pki['both']}", protocols)
    return TLSServerFactory(context, Factory.forProtocol(app), clock or Clock())


def client_context(pki, **kw):
    ctx = ssl.create_default_context(cafile=pki["ca_path"])
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def test_handshake_alpn_and_data_both_ways(pki):
    pair = Pair(factory_for(pki, (b"h2", b"http/1.1")), client_context(pki),
                alpn=["h2", "http/1.1"])
    assert pair.app.transport is pair.conn
    assert ITCPTransport.providedBy(pair.conn) and ISSLTransport.providedBy(pair.conn)
    assert pair.app.handshakes == 0 and pair.conn.negotiatedProtocol is None
    pair.handshake()
    assert pair.app.handshakes == 1
    assert pair.conn.negotiatedProtocol == b"h2"
    assert pair.client.selected_alpn_protocol() == "h2"
    pair.client.write(b"GET / HTTP/1.1\r\n\r\n")
    pair.to_server()
    assert pair.app.chunks == [b"GET / HTTP/1.1\r\n\r\n"]
    # a write is encrypted and handed to the TCP transport at once
    pair.tcp.clear()
    pair.conn.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert pair.tcp.value()
    assert pair.client_reads() == b"HTTP/1.1 200 OK\r\n\r\n"
    pair.conn.writeSequence([b"a", b"b", b""])
    assert pair.client_reads() == b"ab"
    assert pair.conn.getPeer() == pair.tcp.getPeer()
    assert pair.conn.getHost() == pair.tcp.getHost()
    assert peer_certificate(pair.conn) is None  # no client certificate asked for


def test_alpn_offer_not_shared_goes_on_without_alpn(pki):
    pair = Pair(factory_for(pki), client_context(pki), alpn=["h2"])
    pair.handshake()
    assert pair.conn.negotiatedProtocol is None and pair.app.handshakes == 1
    pair2 = Pair(factory_for(pki), client_context(pki))  # no offer at all
    pair2.handshake()
    assert pair2.conn.negotiatedProtocol is None


def test_several_records_reach_the_protocol_in_one_call(pki):
    pair = Pair(factory_for(pki), client_context(pki))
    pair.handshake()
    for part in (b"one", b"two", b"three"):
        pair.client.write(part)  # a record each
    pair.to_server()
    assert pair.app.chunks == [b"onetwothree"]
    big = bytes(range(256)) * 300  # 76 800 bytes: five records
    pair.client.write(big)
    pair.to_server()
    assert pair.app.chunks[1:] == [big]


def test_records_split_anywhere_are_reassembled(pki):
    pair = Pair(factory_for(pki), client_context(pki))
    pair.handshake()
    pair.client.write(b"hello ")
    pair.client.write(b"world")
    wire = pair.cout.read()
    for i in range(len(wire)):
        pair.to_server(wire[i:i + 1])
    assert b"".join(pair.app.chunks) == b"hello world"


def test_handshake_and_request_in_one_segment(pki):
    """TLS 1.3: the client's Finished and its first request arrive together."""
    factory, ctx = factory_for(pki), client_context(pki)
    pair = Pair(factory, ctx)
    try:
        pair.client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    pair.to_server()  # ClientHello
    pair.to_client()  # ServerHello ... Finished
    pair.client.do_handshake()
    pair.client.write(b"GET /first HTTP/1.1\r\n\r\n")
    pair.to_server()  # Finished + request
    assert pair.app.handshakes == 1
    assert pair.app.chunks == [b"GET /first HTTP/1.1\r\n\r\n"]


def test_writes_before_the_handshake_wait_for_it(pki):
    pair = Pair(factory_for(pki), client_context(pki))
    pair.conn.write(b"early ")
    pair.conn.write(b"bird")
    assert pair.tcp.value() == b""
    pair.handshake()
    assert pair.client_reads() == b"early bird"


def test_lose_connection_sends_close_notify(pki):
    pair = Pair(factory_for(pki), client_context(pki))
    pair.handshake()
    pair.conn.write(b"bye")
    pair.conn.loseConnection()
    assert pair.tcp.disconnecting
    assert pair.client_reads() == b"bye"  # then b"": close_notify seen
    assert pair.client.unwrap() is None  # both close_notify seen: the shutdown completes
    pair.conn.write(b"dropped")  # after close_notify: nothing more is sent
    assert pair.tcp.value() == b""


@implementer(IHalfCloseableProtocol)
class HalfCloseable(Recorder):
    """A protocol that answers after the client's end of sending (as the proxy's)."""

    def __init__(self):
        super().__init__()
        self.read_closed = 0

    def readConnectionLost(self):
        self.read_closed += 1

    def writeConnectionLost(self):
        pass


def _unwrap(client):
    """The client's close_notify (its SSL_shutdown; ours is not waited for)."""
    try:
        client.unwrap()
    except ssl.SSLWantReadError:
        pass


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                         ids=["TLSv1.2", "TLSv1.3"])
def test_peer_close_notify_lets_a_half_closeable_protocol_answer(pki, version):
    """
    The client's close_notify right after its request: the request is
    delivered, then readConnectionLost (not a close), as a FIN over plain
    TCP; the answer still reaches the client (TLS 1.2 too), then our
    close_notify with the close.  Bytes after the client's close_notify are
    dropped, not kept.
    """
    pair = Pair(factory_for(pki, app=HalfCloseable),
                client_context(pki, maximum_version=version))
    pair.handshake()
    pair.client.write(b"last request")
    _unwrap(pair.client)
    pair.to_server()
    assert pair.app.chunks == [b"last request"]
    assert pair.app.read_closed == 1
    assert not pair.tcp.disconnecting and pair.app.lost is None
    pair.to_server(b"\x17\x03\x03\x00\x05junk!" * 1000)  # after close_notify: dropped
    assert pair.app.chunks == [b"last request"] and pair.app.read_closed == 1
    assert pair.conn._in.pending == 0 and not getattr(pair.tcp, "aborted", False)
    pair.conn.write(b"the answer")
    pair.conn.loseConnection()
    assert pair.tcp.disconnecting
    pair.to_client()
    assert pair.client.read(100) == b"the answer"
    with pytest.raises(ssl.SSLZeroReturnError):  # then our close_notify
        pair.client.read(100)
    pair.conn.connectionLost(None)
    assert pair.app.lost is None


def test_fin_without_close_notify_lets_a_half_closeable_protocol_answer(pki):
    """
    The TCP stream ends (readConnectionLost from the TCP transport) without
    the client's close_notify: taken as one (a complete request is framed by
    itself; a cut one is the protocol's partial request): told once, even
    when a close_notify came first.
    """
    pair = Pair(factory_for(pki, app=HalfCloseable), client_context(pki))
    pair.handshake()
    pair.client.write(b"request")
    pair.to_server()
    pair.conn.readConnectionLost()
    assert pair.app.read_closed == 1 and not pair.tcp.disconnecting
    pair.conn.write(b"answer")
    assert pair.client_reads() == b"answer"
    pair.conn.readConnectionLost()
    assert pair.app.read_closed == 1
    # a close_notify, then the FIN: told once
    pair = Pair(factory_for(pki, app=HalfCloseable), client_context(pki))
    pair.handshake()
    _unwrap(pair.client)
    pair.to_server()
    pair.conn.readConnectionLost()
    assert pair.app.read_closed == 1 and not pair.tcp.disconnecting


@pytest.mark.parametrize("how", ["close_notify", "fin"])
def test_end_of_sending_closes_a_protocol_that_is_not_half_closeable(pki, how):
    """Without readConnectionLost the end of the client's sending closes at once
    (what was received delivered first), with our close_notify."""
    pair = Pair(factory_for(pki), client_context(pki))
    pair.handshake()
    pair.client.write(b"last request")
    if how == "close_notify":
        _unwrap(pair.client)
        pair.to_server()
    else:
        pair.to_server()
        pair.conn.readConnectionLost()
    assert pair.app.chunks == [b"last request"]  # delivered before the close
    assert pair.tcp.disconnecting
    pair.to_client()
    if how == "close_notify":
        assert pair.client.unwrap() is None  # our close_notify arrived
    else:
        assert pair.client.read(100) == b""  # (its close_notify, read before its own)
    reason = object()
    pair.conn.connectionLost(reason)
    assert pair.app.lost is reason  # told, with the TCP transport's reason


def test_fin_during_the_handshake_closes(pki):
    """A FIN before the handshake is complete: closed, nothing told, no close_notify."""
    pair = Pair(factory_for(pki, app=HalfCloseable), client_context(pki))
    try:
        pair.client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    pair.to_server()  # the ClientHello
    pair.tcp.clear()
    pair.conn.readConnectionLost()
    assert pair.tcp.disconnecting and pair.tcp.value() == b""
    assert pair.app.read_closed == 0 and pair.app.handshakes == 0


def test_half_close_sends_close_notify_and_still_reads(pki):
    pair = Pair(factory_for(pki), client_context(pki))
    pair.handshake()
    half = []
    pair.tcp.loseWriteConnection = lambda: half.append(True)
    pair.conn.write(b"answer")
    pair.conn.loseWriteConnection()
    assert half == [True] and not pair.tcp.disconnecting
    assert pair.client_reads() == b"answer"  # then close_notify
    pair.client.write(b"more")  # the client may still send (TLS 1.3)
    pair.to_server()
    assert pair.app.chunks == [b"more"]
    pair.conn.write(b"dropped")
    assert pair.tcp.value() == b""


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_close_notify_answering_our_half_close_ends_cleanly(pki, version):
    """
    After our half-close, the client's own close_notify (a TLS 1.2 client's
    usual answer) is the orderly end: the connection is closed, not aborted,
    no TLS error is logged and the protocol is not told of one.
    """
    pair = Pair(factory_for(pki), client_context(pki, maximum_version=version))
    pair.handshake()
    pair.tcp.loseWriteConnection = lambda: None
    pair.conn.write(b"answer")
    pair.conn.loseWriteConnection()
    assert pair.client_reads() == b"answer"  # then our close_notify
    events = _log_events()
    try:
        assert pair.client.unwrap() is None  # answered with the client's
        pair.to_server()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert pair.tcp.disconnecting and not getattr(pair.tcp, "aborted", False)
    assert not [e for e in events if "TLS" in e.get("log_format", "")]
    pair.conn.connectionLost(None)
    assert pair.app.lost is None


@pytest.mark.parametrize("how", ["served", "failed handshake", "aborted before"])
def test_a_lost_connection_leaves_no_reference_cycle(pki, how):
    """
    Once lost, the connection's objects go by reference counting, as a
    tcp.Server's do (it drops its protocol): the application protocol keeps
    its transport, so the TLS layer must not keep the protocol.
    """
    import gc
    import weakref

    gc.collect()
    gc.disable()
    try:
        pair = Pair(factory_for(pki), client_context(pki))
        if how == "served":
            pair.handshake()
            pair.client.write(b"request")
            pair.to_server()
            pair.conn.write(b"response")
        elif how == "failed handshake":
            pair.to_server(b"\x16\x03\x01\x00\x05hello")
        pair.app.transport = pair.conn  # (as a protocol keeps its transport)
        pair.conn.connectionLost(None)
        # (the Recorder keeps the reason: a failure's traceback holds this test's
        # frames, hence the pair; the proxy's protocols keep no reason)
        pair.app.lost = None
        refs = [weakref.ref(pair.app), weakref.ref(pair.conn)]
        del pair
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()


def _log_events():
    events = []
    globalLogPublisher.addObserver(events.append)
    return events


def test_bad_handshake_is_logged_rate_limited_and_aborted(pki):
    clock = Clock()
    factory = factory_for(pki, clock=clock)
    events = _log_events()
    try:
        pairs = []
        for port in (40001, 40002):
            pair = Pair(factory, client_context(pki), peer_port=port)
            pair.to_server(b"\x16\x03\x01\x00\x05hello")  # not a ClientHello
            pairs.append(pair)
        clock.advance(61)
        pair = Pair(factory, client_context(pki), peer_port=40003)
        pair.to_server(b"GET / HTTP/1.1\r\n\r\n")  # plain HTTP on the TLS port
        pairs.append(pair)
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [e for e in events if "TLS handshake" in e.get("log_format", "")]
    assert len(lines) == 2  # the second client (same address) within a minute: not logged
    assert lines[0]["peer"] == "127.0.0.1:40001" and lines[0]["reason"]
    assert "1 more since the last such line" in lines[1]["log_format"].format(
        **{k: v for k, v in lines[1].items() if not k.startswith("log_")} | {"suppressed": 1})
    for pair in pairs:
        assert pair.tcp.disconnecting or getattr(pair.tcp, "aborted", False)
        pair.conn.connectionLost(None)
        assert pair.app.handshakes == 0
        assert pair.app.lost.check(ssl.SSLError)  # the TLS error, as Twisted's TLS passes it
        assert pair.app.chunks == []


def test_client_refusing_our_certificate(pki):
    """A client that does not trust the certificate alerts: logged, aborted."""
    factory = factory_for(pki)
    pair = Pair(factory, ssl.create_default_context(cafile=None))  # system CAs only
    with pytest.raises(ssl.SSLCertVerificationError):
        pair.handshake()
    pair.to_server()  # its alert
    assert pair.tcp.disconnecting or getattr(pair.tcp, "aborted", False)


def test_flow_control_is_the_tcp_transports(pki):
    pair = Pair(factory_for(pki), client_context(pki))
    pair.handshake()
    producer = Recorder()
    pair.conn.registerProducer(producer, True)
    assert pair.tcp.producer is producer and pair.tcp.streaming
    pair.conn.pauseProducing()
    assert pair.tcp.producerState == "paused"
    pair.conn.resumeProducing()
    assert pair.tcp.producerState == "producing"
    pair.conn.unregisterProducer()
    assert pair.tcp.producer is None
    pair.conn.abortConnection()
    assert pair.conn.disconnecting


def test_negotiating_protocol_may_replace_itself(pki):
    """As proxy/alpn.py's _Negotiator does: a new wrappedProtocol gets the data."""
    chosen = Recorder()

    @implementer(IHandshakeListener)
    class Negotiator(Protocol):
        def handshakeCompleted(self):
            self.transport.wrappedProtocol = chosen
            chosen.makeConnection(self.transport)

    pair = Pair(factory_for(pki, (b"h2", b"http/1.1"), app=Negotiator), client_context(pki),
                alpn=["http/1.1"])
    pair.handshake()
    pair.client.write(b"after")
    pair.to_server()
    assert chosen.chunks == [b"after"] and chosen.transport is pair.conn


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_sessions_resume_with_tickets(pki, version):
    factory = factory_for(pki)
    ctx = client_context(pki, maximum_version=getattr(ssl.TLSVersion, version))
    first = Pair(factory, ctx)
    first.handshake()
    first.client.write(b"x")  # TLS 1.3 tickets arrive after the handshake
    first.to_server()
    first.conn.write(b"y")
    assert first.client_reads() == b"y"
    session = first.client.session
    assert session is not None and session.has_ticket
    second = Pair(factory, ctx, session=session)
    second.handshake()
    assert second.client.session_reused
    assert second.app.handshakes == 1


def test_pyopenssl_client(pki):
    """The other TLS stack as the client: handshake, ALPN, data both ways."""
    factory = factory_for(pki, (b"h2", b"http/1.1"))
    tcp = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40010))
    conn = factory.buildProtocol(tcp.getPeer())
    conn.makeConnection(tcp)
    cctx = SSL.Context(SSL.TLS_METHOD)
    cctx.load_verify_locations(pki["ca_path"])
    cctx.set_verify(SSL.VERIFY_PEER, lambda *a: a[-1])
    cctx.set_alpn_protos([b"http/1.1"])
    client = SSL.Connection(cctx, None)
    client.set_connect_state()
    client.set_tlsext_host_name(b"localhost")
    for _ in range(10):
        try:
            client.do_handshake()
            break
        except SSL.WantReadError:
            pass
        conn.dataReceived(client.bio_read(65536))
        client.bio_write(tcp.value())
        tcp.clear()
    conn.dataReceived(client.bio_read(65536) if client.want_read() or True else b"")
    assert conn.negotiatedProtocol == b"http/1.1"
    assert client.get_alpn_proto_negotiated() == b"http/1.1"
    client.send(b"ping")
    conn.dataReceived(client.bio_read(65536))
    assert b"".join(conn.wrappedProtocol.chunks) == b"ping"
    conn.write(b"pong")
    client.bio_write(tcp.value())
    assert client.recv(100) == b"pong"


def test_context_keeps_the_descriptions_policy(pki):
    context = description_context(f"ssl:0:privateKey={pki['both']}", (b"http/1.1",))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2  # Twisted's default minimum
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert not context.options & ssl.OP_NO_TICKET
    from twisted.internet.ssl import CertificateOptions

    names = {c["name"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"}
    expected = set(CertificateOptions()._cipherString.split(":"))
    assert names and names <= expected


def test_unsupported_options_are_refused(pki):
    from twisted.internet.ssl import CertificateOptions

    with pytest.raises(UnsupportedOptions):
        server_context(CertificateOptions(), (b"http/1.1",))  # no certificate
    with pytest.raises(OSError):
        description_context("ssl:0:privateKey=/nonexistent.pem", (b"http/1.1",))


def test_factory_is_transparent(pki):
    class App(Factory):
        started = stopped = 0
        protocol = Recorder

        def doStart(self):
            self.started += 1

        def doStop(self):
            self.stopped += 1

        def logPrefix(self):
            return "App"

    class Refusing(App):
        def buildProtocol(self, addr):
            return None

    app = App()
    factory = TLSServerFactory(description_context(f"ssl:0:privateKey={pki['both']}",
                                                   (b"http/1.1",)), app, Clock())
    factory.doStart()
    factory.doStop()
    assert (app.started, app.stopped) == (1, 1)
    assert factory.logPrefix() == "App (TLS)"
    assert isinstance(factory.buildProtocol(None), TLSServerConnection)
    assert TLSServerFactory(factory.context, Refusing(), Clock()).buildProtocol(None) is None


def test_context_swap_applies_to_new_connections(pki):
    factory = factory_for(pki)
    old = Pair(factory, client_context(pki))
    old.handshake()
    factory.context = description_context(f"ssl:0:privateKey={pki['other']}",
                                          (b"http/1.1",))
    new = Pair(factory, client_context(pki, check_hostname=False))
    new.handshake()
    names = [v for k, v in new.client.getpeercert()["subjectAltName"]]
    assert names == ["other.example"]
    old.client.write(b"still")  # the open connection keeps its certificate and works
    old.to_server()
    assert old.app.chunks == [b"still"]


def test_handover_adopts_the_socket_with_the_stdlib_engine(pki):
    """server_endpoint(..., "stdlib") listens with listenTCP: the handover's
    ListenerBook adopts a handed-over socket with the TLS factory on it."""
    import os
    import socket

    from twisted.internet.testing import MemoryReactor

    from modcluster.handover import ListenerBook, Takeover
    from modcluster.tls import server_endpoint

    reactor = MemoryReactor()
    handed = socket.socket()
    a, b = socket.socketpair()
    takeover = Takeover(a, {("127.0.0.1", 8443): [(os.dup(handed.fileno()), socket.AF_INET)]},
                        {}, 1)
    book = ListenerBook(reactor, takeover)
    book.install()
    app = Factory.forProtocol(Recorder)
    try:
        server_endpoint(reactor, f"ssl:8443:interface=127.0.0.1:privateKey={pki['both']}",
                        engine="stdlib").listen(app)
    finally:
        book.uninstall()
        for s in (handed, a, b):
            s.close()
    (adopted,) = reactor.adoptedPorts
    assert isinstance(adopted[2], TLSServerFactory) and adopted[2].wrappedFactory is app
    assert reactor.sslServers == [] and len(book.ports) == 1


def test_reload_certificates_swaps_only_changed_files(tmp_path, pki):
    from modcluster.proxy.stdtls import _description_options, listener_factory, reload_certificates

    pem = tmp_path / "server.pem"
    pem.write_bytes(open(pki["both"], "rb").read())
    description = f"ssl:0:privateKey={pem}"
    factory = listener_factory(_description_options(description), (b"http/1.1",),
                               Factory.forProtocol(Recorder), Clock(), description)
    first = factory.context
    assert not factory.reload() and factory.context is first  # unchanged: kept
    pem.write_bytes(open(pki["other"], "rb").read())
    assert reload_certificates() >= 1 and factory.context is not first
    pair = Pair(factory, client_context(pki, check_hostname=False))
    pair.handshake()
    assert [v for _, v in pair.client.getpeercert()["subjectAltName"]] == ["other.example"]
    pem.write_bytes(b"garbage")
    swapped = factory.context
    assert not factory.reload() and factory.context is swapped  # a bad file: kept


def test_sslmethod_of_the_description_is_kept(pki):
    context = description_context(
        f"ssl:0:privateKey={pki['both']}:sslmethod=TLSv1_2_METHOD", (b"http/1.1",))
    assert context.minimum_version == context.maximum_version == ssl.TLSVersion.TLSv1_2


def test_unsupported_description_falls_back_to_twisteds_tls(pki):
    """A description the stdlib engine cannot reproduce still listens (Twisted's
    TLS), with a warning."""
    from twisted.internet.testing import MemoryReactor

    from modcluster.tls import server_endpoint

    reactor = MemoryReactor()
    events = _log_events()
    try:
        server_endpoint(reactor, f"ssl:8443:privateKey={pki['both']}:sslmethod=DTLS_METHOD",
                        engine="stdlib").listen(Factory.forProtocol(Recorder))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert len(reactor.sslServers) == 1 and reactor.tcpServers == []
    (line,) = [e for e in events if "Twisted's TLS engine" in e.get("log_format", "")]
    assert "sslmethod" in line["why"]


def test_lose_connection_helper_sends_close_notify_and_closes(pki):
    """modcluster.proxy._transport.lose_connection on this transport: close_notify,
    then the TCP transport's close (a StringTransport here: its loseConnection; over
    a real tcp.Server with nothing buffered: at once, tests/integration)."""
    from modcluster.proxy._transport import lose_connection

    pair = Pair(factory_for(pki), client_context(pki))
    pair.handshake()
    pair.conn.write(b"bye")
    lose_connection(pair.conn)
    assert pair.tcp.disconnecting and pair.conn.disconnecting
    assert pair.client_reads() == b"bye"
    assert pair.client.unwrap() is None
    lose_connection(pair.conn)  # twice: nothing more
    assert pair.tcp.value() == b""


# -- an ssl: listener with HTTP/2 on: the TLS connection picks the protocol itself --------


def _negotiating(pki, **config):
    """The listener chain tap.py builds: stdtls around the ALPN NegotiatingFactory."""
    from modcluster.proxy.alpn import ALPN_PROTOCOLS, NegotiatingFactory
    from modcluster.proxy.observe import ClientStats
    from tests.support.proxy_testlib import Harness

    h = Harness(**config)
    h.factory.stats = ClientStats()
    neg = NegotiatingFactory(h.factory)
    context = description_context(f"ssl:0:privateKey={pki['both']}", ALPN_PROTOCOLS)
    return h, neg, TLSServerFactory(context, neg, h.reactor)


@pytest.mark.parametrize("alpn", [["h2", "http/1.1"], ["http/1.1"], None])
def test_negotiating_connection_picks_the_protocol_at_handshake(pki, alpn):
    """No protocol object until the handshake completes; then H2Protocol or ClientProtocol."""
    from modcluster.proxy.alpn import _NegotiatingTLS
    from modcluster.proxy.client import ClientProtocol
    from modcluster.proxy.h2 import H2Protocol

    h, neg, factory = _negotiating(pki)
    pair = Pair(factory, client_context(pki), alpn=alpn, peer_port=40123)
    assert isinstance(pair.conn, _NegotiatingTLS) and pair.app is None
    assert pair.conn in h.factory._clients  # timed by the sweep until the handshake ends
    pair.handshake()
    chosen = pair.conn.wrappedProtocol
    assert pair.conn not in h.factory._clients
    if alpn and alpn[0] == "h2":
        assert isinstance(chosen, H2Protocol) and chosen in neg.h2_connections
        assert h.factory.stats.tls_handshakes == 1
    else:
        assert type(chosen) is ClientProtocol and chosen.transport is pair.conn
        assert chosen in h.factory._clients
        # the accepted address, not a getPeer() of its own; handshake counted once
        assert chosen._addr is not None and chosen._addr.port == 40123
        assert chosen.client.remote_port == 40123 and chosen.client.secure
        assert chosen._handshaken and h.factory.stats.tls_handshakes == 1
        pair.client.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        pair.to_server()
        assert b" 404 " in pair.client_reads()  # no node: ClientProtocol answered
    assert h.factory.stats.tls_failures == 0


def test_negotiating_connection_head_deadline_from_the_accept(pki):
    h, neg, factory = _negotiating(pki, request_header_timeout=5)
    pair = Pair(factory, client_context(pki))
    h.advance(3)
    assert not pair.tcp.disconnected
    h.advance(5)
    assert pair.tcp.disconnected  # aborted: the handshake never completed
    assert h.factory.timeouts.counts["header"] == 1
    assert pair.conn not in h.factory._clients


def test_negotiating_connection_deadline_also_for_the_chosen_head(pki):
    """The HTTP/1.1 head deadline runs from the accept, handshake included."""
    h, neg, factory = _negotiating(pki, request_header_timeout=5)
    pair = Pair(factory, client_context(pki), alpn=["http/1.1"])
    h.advance(4)
    pair.handshake()
    pair.client.write(b"GET / HTTP/1.1\r\n")
    pair.to_server()
    h.advance(4)
    assert pair.tcp.disconnected or pair.tcp.disconnecting
    assert h.factory.timeouts.counts["header"] == 1


def test_negotiating_connection_drain_cuts_a_handshake(pki):
    h, neg, factory = _negotiating(pki)
    pending = Pair(factory, client_context(pki), peer_port=40001)
    done = Pair(factory, client_context(pki), alpn=["http/1.1"], peer_port=40002)
    done.handshake()
    assert h.factory.drain() == 0
    assert pending.tcp.disconnected  # aborted
    assert done.tcp.disconnecting  # idle HTTP/1.1 connection: closed
    assert pending.conn not in h.factory._clients


def test_negotiating_connection_failed_handshake_counted(pki):
    from twisted.python.failure import Failure
    from twisted.internet.error import ConnectionLost

    h, neg, factory = _negotiating(pki)
    bad = Pair(factory, client_context(pki))
    bad.to_server(b"GET / HTTP/1.1\r\n\r\n")  # not TLS: aborted
    assert bad.tcp.disconnected
    bad.conn.connectionLost(Failure(ConnectionLost()))
    gone = Pair(factory, client_context(pki))
    gone.conn.connectionLost(Failure(ConnectionLost()))  # closed before a ClientHello
    stats = h.factory.stats
    assert (stats.connections, stats.tls_failures, stats.tls_handshakes) == (2, 2, 0)
    assert not h.factory._clients
    assert bad.conn.logPrefix() == gone.conn.logPrefix() == "ClientProtocol (TLS)"


def test_closed_connection_leaves_no_reference_cycle(pki):
    """The protocol and the TLS layer go without the cyclic GC (and so the SSL object)."""
    import gc
    import weakref

    from twisted.internet.main import CONNECTION_DONE
    from twisted.python.failure import Failure

    h, neg, factory = _negotiating(pki)
    pair = Pair(factory, client_context(pki), alpn=["http/1.1"])
    pair.handshake()
    conn, protocol = weakref.ref(pair.conn), weakref.ref(pair.conn.wrappedProtocol)
    gc.disable()
    try:
        pair.tcp.producer = None  # as tcp.Server.connectionLost lets go of its producer
        pair.conn.connectionLost(Failure(CONNECTION_DONE))
        del pair
        assert conn() is None and protocol() is None
    finally:
        gc.enable()


def test_nodelay_inherited_from_the_listening_socket_is_not_set_again(pki):
    """TCP_NODELAY set on the listening socket (accept loop): no setsockopt per connection."""
    from modcluster.proxy._transport import set_nodelay

    class TCP(StringTransport):
        calls = 0

        def setTcpNoDelay(self, enabled):
            TCP.calls += 1

    for inherited, calls in ((True, 0), (False, 1)):
        TCP.calls = 0
        tcp = TCP()
        tcp._nodelay_inherited = inherited
        conn = factory_for(pki).buildProtocol(None)
        conn.makeConnection(tcp)
        set_nodelay(conn)
        assert TCP.calls == calls


def _records(data: bytes) -> int:
    n = 0
    while data:
        data = data[5 + int.from_bytes(data[3:5], "big"):]
        n += 1
    return n


def test_one_tls13_ticket_per_handshake(pki):
    """After the client's Finished the server sends one NewSessionTicket (one record)."""
    factory, ctx = factory_for(pki), client_context(pki)
    pair = Pair(factory, ctx)
    try:
        pair.client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    pair.to_server()  # ClientHello
    pair.to_client()  # ServerHello ... Finished
    pair.client.do_handshake()
    pair.to_server(pair.cout.read())  # the client's Finished
    after = pair.tcp.value()
    assert pair.conn.negotiatedProtocol is None and not pair.conn._handshaking
    assert _records(after) == 1
    pair.conn.write(b"y")
    assert pair.client_reads() == b"y"  # the ticket read on the way
    assert pair.client.session is not None and pair.client.session.has_ticket
    resumed = Pair(factory, ctx, session=pair.client.session)
    resumed.handshake()
    assert resumed.client.session_reused


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_full_size_records_whole_and_cut_anywhere(pki, version):
    """Records of 16 KiB plaintext (one read each) with the next one partly there."""
    body = bytes(range(256)) * 160  # 40 960 bytes: records of 16 384, 16 384, 8 192
    for cut in (None, 5, 16384 + 21, 16384 + 22 + 3, 2 * (16384 + 22) + 1):
        pair = Pair(factory_for(pki), client_context(
            pki, maximum_version=getattr(ssl.TLSVersion, version)))
        pair.handshake()
        pair.client.write(body)
        wire = pair.cout.read()
        if cut is None:
            pair.to_server(wire)
            assert pair.app.chunks == [body]  # all the records in one dataReceived
        else:
            pair.to_server(wire[:cut])
            pair.to_server(wire[cut:])
            assert b"".join(pair.app.chunks) == body and len(pair.app.chunks) <= 2


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_no_read_after_a_handshake_that_took_every_record(pki, version):
    """A client's last handshake flight alone: no SSL read (it could only raise WantRead)."""

    class Counting:
        def __init__(self, inner):
            self.inner, self.reads = inner, 0

        def read(self, n):
            self.reads += 1
            return self.inner.read(n)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    pair = Pair(factory_for(pki), client_context(
        pki, maximum_version=getattr(ssl.TLSVersion, version)))
    counting = pair.conn._ssl = Counting(pair.conn._ssl)
    pair.handshake()
    assert not pair.conn._handshaking and counting.reads == 0
    pair.client.write(b"GET")
    pair.to_server()
    assert pair.app.chunks == [b"GET"] and counting.reads == 1


@pytest.mark.parametrize("negotiating", [False, True], ids=["http/1.1", "ALPN"])
def test_client_protocol_on_the_tls_layer_of_a_plain_tcp_server(pki, negotiating, monkeypatch):
    """
    ClientProtocol.connectionMade on the stdlib TLS layer over a plain
    tcp.Server (an ssl: listener) builds its ClientInfo and registers as the
    TCP transport's streaming producer without the Python calls of
    ClientInfo's __init__ and of the layer's registerProducer: every slot as
    ClientInfo(host, port, secure=True, transport=layer) sets it, the local
    address still read when asked for.  With ALPN (the HTTP/2 listener's
    connection) the protocol is chosen when the handshake completes.
    """
    import socket

    from twisted.internet import address, tcp
    from twisted.internet.error import ConnectionDone
    from twisted.internet.testing import MemoryReactor
    from twisted.python.failure import Failure

    from modcluster.proxy.alpn import NegotiatingFactory, alpn_protocols
    from modcluster.proxy.client import ClientProtocol
    from modcluster.proxy.interfaces import ClientInfo
    from tests.support.proxy_testlib import Harness

    h = Harness()
    wrapped = NegotiatingFactory(h.factory) if negotiating else h.factory
    context = description_context(f"ssl:0:privateKey={pki['both']}",
                                  alpn_protocols(h.factory.config))
    factory = TLSServerFactory(context, wrapped, Clock())
    listener = socket.create_server(("127.0.0.1", 0))
    b = socket.create_connection(listener.getsockname())
    a = listener.accept()[0]
    listener.close()
    try:
        peer = address.IPv4Address("TCP", "127.0.0.7", 4711)
        conn = factory.buildProtocol(peer)
        t = tcp.Server(a, conn, ("127.0.0.7", 4711), None, 0, MemoryReactor())

        def not_called(*args, **kwargs):
            raise AssertionError("called")

        with monkeypatch.context() as m:
            m.setattr(ClientInfo, "__init__", not_called)
            m.setattr(TLSServerConnection, "registerProducer", not_called)
            conn.makeConnection(t)
            if negotiating:
                assert conn.wrappedProtocol is None
                conn._handshaking = False  # (a completed handshake, ALPN http/1.1)
                conn._completed()
        proto = conn.wrappedProtocol
        assert type(proto) is ClientProtocol and proto.transport is conn
        ours = proto.client
        theirs = ClientInfo("127.0.0.7", 4711, secure=True, transport=conn)
        assert type(ours) is ClientInfo
        for name in [n for n in ClientInfo.__slots__ if n != "__weakref__"]:
            assert getattr(ours, name) == getattr(theirs, name), name
        assert (ours.local_addr, ours.local_port) == a.getsockname()[:2]
        assert t.producer is proto and t.streamingProducer
        assert proto in h.factory._clients
        t.connectionLost(Failure(ConnectionDone()))
        assert t.producer is None and proto not in h.factory._clients
    finally:
        a.close()
        b.close()
