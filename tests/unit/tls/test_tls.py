"""
Unit tests for L{modcluster.tls}, in memory: TLS handshakes run over
L{twisted.test.iosim} on a L{MemoryReactorClock}; no sockets.
"""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    ISSLTransport,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, TLSVersion, optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from zope.interface import implementer
from zope.interface.verify import verifyObject

from modcluster.tls import (
    IdentityPolicy,
    TLSConfigError,
    client_context_factory,
    describe_certificate,
    describe_peer,
    load_certificates,
    load_private_key,
    peer_certificate,
    peer_identities,
    server_context_factory,
    tls_server_endpoint,
)

TIMEOUT = 5.0


@implementer(IHandshakeListener)
class Recorder(Protocol):
    """Records what happens to it; a server-side one echoes data back after b'echo:'."""

    def __init__(self, echo=False):
        self.echo = echo
        self.made = False
        self.handshake = False
        self.data = b""
        self.lost = None

    def connectionMade(self):
        self.made = True

    def handshakeCompleted(self):
        self.handshake = True

    def dataReceived(self, data):
        self.data += data
        if self.echo:
            self.transport.write(b"echo:" + data)

    def connectionLost(self, reason):
        self.lost = reason


class Silent(Protocol):
    """A raw TCP client: sends C{greeting} (default nothing) and waits."""

    greeting = b""

    def __init__(self):
        self.lost = None

    def connectionMade(self):
        if self.greeting:
            self.transport.write(self.greeting)

    def connectionLost(self, reason):
        self.lost = reason


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


class Harness:
    """A tls_server_endpoint listening on a MemoryReactorClock, and in-memory clients."""

    def __init__(self, server_options, timeout=TIMEOUT):
        self.reactor = MemoryReactorClock()
        self.apps: list[Recorder] = []

        def build(addr):
            p = Recorder(echo=True)
            self.apps.append(p)
            return p

        app_factory = Factory()
        app_factory.buildProtocol = build
        self.endpoint = tls_server_endpoint(
            self.reactor, "tcp:0:interface=127.0.0.1", server_options, timeout)
        self.endpoint.listen(app_factory)
        (port, self.factory, backlog, interface) = self.reactor.tcpServers[-1]
        assert interface == "127.0.0.1"

    def connect(self, client_protocol, client_creator=None, peer_port=40001):
        server = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", peer_port))
        if client_creator is not None:
            cf = TLSMemoryBIOFactory(client_creator, True, Factory.forProtocol(lambda: client_protocol),
                                     clock=self.reactor)
            client = cf.buildProtocol(None)
        else:
            client = client_protocol
        server_t = iosim.FakeTransport(server, isServer=True,
                                       peerAddress=IPv4Address("TCP", "127.0.0.1", peer_port))
        client_t = iosim.FakeTransport(client, isServer=False)
        pump = iosim.connect(server, server_t, client, client_t, greet=False, clock=self.reactor)
        pump.flush()
        return server_t, client_t, pump


def _opts(pki, **kw):
    args = dict(cert_pem_path=pki.server.cert, key_pem_path=pki.server.key,
                ca_pem_path=pki.ca, require_client_cert=True)
    args.update(kw)
    return server_context_factory(**args)


def _client(pki, leaf=None, host="localhost", ca=None):
    return client_context_factory(host, ca or pki.ca,
                                  leaf.cert if leaf else None, leaf.key if leaf else None)


def _texts(events):
    return [formatEvent(e) for e in events]


# --- server_context_factory -----------------------------------------------------


def test_server_options_from_paths_and_bytes(pki):
    """Paths and PEM bytes give working options; the result is a server creator."""
    for opts in (_opts(pki),
                 server_context_factory(pki.server.cert_pem, pki.server.key_pem, pki.ca_pem)):
        assert opts.getContext() is not None
        assert opts.verify and opts.requireCertificate


def test_server_options_key_in_certificate_file(pki, tmp_path):
    """key_pem_path None reads the key from the certificate file."""
    both = tmp_path / "both.pem"
    both.write_bytes(pki.server.cert_pem + pki.server.key_pem)
    assert server_context_factory(str(both), None, pki.ca).getContext() is not None


def test_require_client_cert_needs_ca(pki):
    with pytest.raises(TLSConfigError, match="CA"):
        server_context_factory(pki.server.cert, pki.server.key, None, require_client_cert=True)
    opts = server_context_factory(pki.server.cert, pki.server.key, None, require_client_cert=False)
    assert not opts.verify


@pytest.mark.parametrize("what", ["cert", "key", "ca"])
def test_missing_file_named_in_error(pki, tmp_path, what):
    missing = str(tmp_path / "nope.pem")
    args = dict(cert_pem_path=pki.server.cert, key_pem_path=pki.server.key, ca_pem_path=pki.ca)
    args[{"cert": "cert_pem_path", "key": "key_pem_path", "ca": "ca_pem_path"}[what]] = missing
    with pytest.raises(TLSConfigError, match="nope.pem"):
        server_context_factory(**args)


def test_garbage_and_mismatched_files(pki, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not a pem file\n")
    with pytest.raises(TLSConfigError, match="no valid PEM certificate"):
        server_context_factory(str(junk), pki.server.key, pki.ca)
    with pytest.raises(TLSConfigError, match="no PEM private key"):
        server_context_factory(pki.server.cert, str(junk), pki.ca)
    with pytest.raises(TLSConfigError, match="cannot be used together"):
        server_context_factory(pki.server.cert, pki.node1.key, pki.ca)


def test_encrypted_key_refused(pki, tmp_path):
    key = serialization.load_pem_private_key(pki.server.key_pem, None)
    enc = tmp_path / "enc.pem"
    enc.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(TLSConfigError, match="encrypted"):
        load_private_key(str(enc))


def _tls12_only_client(pki):
    return optionsForClientTLS(
        "localhost", trustRoot=Certificate.loadPEM(pki.ca_pem),
        extraCertificateOptions={"lowerMaximumSecurityTo": TLSVersion.TLSv1_2})


def test_min_version(pki):
    """'1.3' refuses a TLS 1.2-only client; '1.2' accepts it."""
    for min_version, works in (("1.3", False), ("1.2", True)):
        h = Harness(_opts(pki, min_version=min_version, require_client_cert=False))
        client = Recorder()
        _, _, pump = h.connect(client, _tls12_only_client(pki))
        client.transport.write(b"v")
        pump.flush()
        assert (client.data == b"echo:v") is works
        if works:
            assert h.apps[0].transport.getHandle().get_protocol_version_name() == "TLSv1.2"
    h = Harness(_opts(pki, min_version="1.3", require_client_cert=False))
    client = Recorder()
    _, _, pump = h.connect(client, _client(pki))
    client.transport.write(b"v")
    pump.flush()
    assert h.apps[0].transport.getHandle().get_protocol_version_name() == "TLSv1.3"
    with pytest.raises(TLSConfigError, match="1.2"):
        _opts(pki, min_version="1.1")


def test_ciphers(pki):
    """A cipher string restricts TLS 1.2 suites; one that selects nothing is refused."""
    h = Harness(_opts(pki, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256", require_client_cert=False))
    client = Recorder()
    _, _, pump = h.connect(client, _tls12_only_client(pki))
    client.transport.write(b"c")
    pump.flush()
    assert client.data == b"echo:c"
    assert h.apps[0].transport.getHandle().get_cipher_name() == "ECDHE-ECDSA-AES128-GCM-SHA256"
    with pytest.raises(TLSConfigError, match="cipher"):
        _opts(pki, ciphers="NO-SUCH-CIPHER")
    with pytest.raises(TLSConfigError, match="cipher"):
        _opts(pki, ciphers="")


def test_tls_endpoint_refuses_ssl_description_and_bad_timeout(pki):
    r = MemoryReactorClock()
    with pytest.raises(TLSConfigError, match="plain endpoint"):
        tls_server_endpoint(r, "ssl:443:privateKey=k.pem", _opts(pki), 5)
    with pytest.raises(TLSConfigError, match="timeout"):
        tls_server_endpoint(r, "tcp:0", _opts(pki), 0)
    verifyObject(IStreamServerEndpoint, tls_server_endpoint(r, "tcp:0", _opts(pki), 5))


# --- handshakes in memory -------------------------------------------------------


def test_mutual_tls_good_client(pki):
    """A CA-signed client certificate: data flows, identities and ISSLTransport visible."""
    h = Harness(_opts(pki))
    client = Recorder()
    server_t, client_t, pump = h.connect(client, _client(pki, pki.node1))
    client.transport.write(b"hello")
    pump.flush()
    (app,) = h.apps
    assert app.handshake and app.data == b"hello"
    assert client.data == b"echo:hello"
    assert ISSLTransport.providedBy(app.transport)
    assert peer_identities(app.transport) == {"node1"}
    assert "CN=node1" in describe_peer(app.transport)
    assert describe_peer(app.transport).startswith("127.0.0.1:40001 ")
    # the handshake timer was cancelled: idling past the timeout keeps the connection
    h.reactor.advance(TIMEOUT * 3)
    pump.flush()
    assert not server_t.disconnecting and app.lost is None


@pytest.mark.parametrize("who, reason_word", [
    ("none", "peer did not return a certificate"),
    ("other", "unknown CA"),
    ("expired", "certificate has expired"),
])
def test_mutual_tls_refusals(pki, logged, who, reason_word):
    """No certificate, another CA, expired: refused, logged; the next good client works."""
    h = Harness(_opts(pki))
    client = Recorder()
    leaf = None if who == "none" else getattr(pki, who)
    server_t, client_t, pump = h.connect(client, _client(pki, leaf))
    client.transport.write(b"hello")
    pump.flush()
    (app,) = h.apps
    assert app.data == b"" and not app.handshake
    assert app.lost is not None and app.lost.check(SSL.Error)
    assert client.lost is not None and client.data == b""
    refused = [t for t in _texts(logged) if "TLS handshake from 127.0.0.1:40001 failed" in t]
    assert len(refused) == 1 and reason_word in refused[0]
    if leaf is not None:  # the refused certificate is described
        assert "subject='CN=" in refused[0] and "serial=0x" in refused[0]
    for e in logged:
        if e.get("log_failure") is not None:
            e["log_failure"].cleanFailure()

    good = Recorder()
    _, _, pump = h.connect(good, _client(pki, pki.node1), peer_port=40002)
    good.transport.write(b"again")
    pump.flush()
    assert h.apps[1].data == b"again" and good.data == b"echo:again"


def test_optional_client_certificate(pki):
    """require_client_cert=False: no certificate accepted (no identities), a bad one refused."""
    h = Harness(_opts(pki, require_client_cert=False))
    anon = Recorder()
    _, _, pump = h.connect(anon, _client(pki))
    anon.transport.write(b"x")
    pump.flush()
    assert h.apps[0].data == b"x" and peer_identities(h.apps[0].transport) == frozenset()
    bad = Recorder()
    _, _, pump = h.connect(bad, _client(pki, pki.other), peer_port=40002)
    bad.transport.write(b"x")
    pump.flush()
    assert h.apps[1].data == b"" and h.apps[1].lost.check(SSL.Error)


@pytest.mark.parametrize("greeting", [b"", b"\x16\x03\x01\x00"])
def test_stalled_handshake_is_dropped(pki, logged, greeting):
    """A client that sends nothing (or half a ClientHello) is cut off at the timeout."""
    h = Harness(_opts(pki), timeout=2.5)
    raw = Silent()
    raw.greeting = greeting
    server_t, client_t, pump = h.connect(raw)
    h.reactor.advance(2.4)
    pump.flush()
    assert not server_t.disconnecting and raw.lost is None
    h.reactor.advance(0.2)
    pump.flush()
    assert server_t.disconnecting
    assert raw.lost is not None
    assert h.apps[0].lost is not None
    assert any("not completed within 2.5 s" in t and "127.0.0.1:40001" in t
               for t in _texts(logged))
    assert not h.reactor.getDelayedCalls()


def test_handshake_listener_forwarded_only_if_provided(pki):
    """An application protocol that is not an IHandshakeListener still works."""
    h = Harness(_opts(pki))
    plain_apps = []

    class Plain(Protocol):
        def dataReceived(self, data):
            plain_apps.append(data)

    h.factory.wrappedFactory.buildProtocol = lambda addr: Plain()
    client = Recorder()
    _, _, pump = h.connect(client, _client(pki, pki.node1))
    client.transport.write(b"ok")
    pump.flush()
    assert plain_apps == [b"ok"]


# --- client side ------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1", "[::1]", b"localhost"])
def test_client_verifies_server_name_and_ip(pki, host):
    """DNS names and IP literals (IPv6 with or without brackets) are verified."""
    h = Harness(_opts(pki, require_client_cert=False))
    client = Recorder()
    creator = client_context_factory(host, pki.ca)
    verifyObject(IOpenSSLClientConnectionCreator, creator)
    _, _, pump = h.connect(client, creator)
    client.transport.write(b"hi")
    pump.flush()
    assert client.data == b"echo:hi" and client.lost is None


@pytest.mark.parametrize("host, ca", [
    ("wrong.example", "ca"),
    ("127.0.0.2", "ca"),
    ("localhost", "other_ca"),
])
def test_client_refuses_wrong_name_or_ca(pki, host, ca):
    """Wrong host name, wrong IP, untrusted CA: the client refuses the server."""
    h = Harness(_opts(pki, require_client_cert=False))
    client = Recorder()
    _, _, pump = h.connect(client, client_context_factory(host, getattr(pki, ca)))
    client.transport.write(b"hi")
    pump.flush()
    assert client.data == b""
    assert client.lost is not None
    assert h.apps[0].data == b""


def test_client_without_verification(pki):
    """verify=False connects to a server the CA does not vouch for (still sends SNI)."""
    h = Harness(_opts(pki, require_client_cert=False))
    client = Recorder()
    _, _, pump = h.connect(client, client_context_factory("wrong.example", pki.other_ca,
                                                          verify=False))
    client.transport.write(b"hi")
    pump.flush()
    assert client.data == b"echo:hi"


def test_client_options_errors(pki):
    with pytest.raises(TLSConfigError, match="without its certificate"):
        client_context_factory("localhost", pki.ca, None, pki.node1.key)
    with pytest.raises(TLSConfigError, match="cannot read"):
        client_context_factory("localhost", "/nonexistent/ca.pem")
    with pytest.raises(TLSConfigError):
        client_context_factory("", pki.ca)


def test_client_creator_presents_the_certificate_and_verifies_the_host(pki):
    """A node connection presents the client certificate and verifies the host name."""
    creator = client_context_factory("localhost", pki.ca, pki.node1.cert, pki.node1.key)
    h = Harness(_opts(pki))
    client = Recorder()
    _, _, pump = h.connect(client, creator)
    client.transport.write(b"hi")
    pump.flush()
    assert client.data == b"echo:hi"
    assert peer_identities(h.apps[0].transport) == {"node1"}
    bad = Recorder()
    wrong_host = client_context_factory("127.0.0.2", pki.ca, pki.node1.cert, pki.node1.key)
    _, _, pump = h.connect(bad, wrong_host, peer_port=40002)
    bad.transport.write(b"hi")
    pump.flush()
    assert bad.data == b""


# --- identities ------------------------------------------------------------------


class FakeTLSTransport:
    def __init__(self, cert):
        self._cert = cert

    def getPeerCertificate(self):
        return self._cert

    def getPeer(self):
        return IPv4Address("TCP", "127.0.0.1", 5555)


def test_peer_identities_names(pki, sign_custom):
    """SAN DNS names, SAN URIs and the subject CN; not IP or e-mail SANs."""
    cert = sign_custom(pki.trustme_ca, "node-cn", [
        x509.DNSName("node1.example"),
        x509.DNSName("alias.example"),
        x509.UniformResourceIdentifier("spiffe://cluster/node1"),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        x509.RFC822Name("ops@example.com"),
    ])
    expected = {"node1.example", "alias.example", "spiffe://cluster/node1", "node-cn"}
    assert peer_identities(FakeTLSTransport(cert)) == expected
    # pyOpenSSL X509, as TLSMemoryBIOProtocol returns it
    assert peer_identities(FakeTLSTransport(crypto.X509.from_cryptography(cert))) == expected
    text = describe_peer(FakeTLSTransport(cert))
    for needle in ("127.0.0.1:5555", "CN=node-cn", "DNS:node1.example",
                   "URI:spiffe://cluster/node1", "IP:10.0.0.1", "serial=0x", "valid="):
        assert needle in text


def test_peer_identities_without_certificate():
    """Plain TCP, no transport, no certificate: empty."""
    class PlainTCP:
        pass

    class Broken:
        def getPeerCertificate(self):
            raise RuntimeError("not connected")

    for t in (None, PlainTCP(), FakeTLSTransport(None), Broken()):
        assert peer_identities(t) == frozenset()
        assert peer_certificate(t) is None
    assert describe_certificate(None) == "no client certificate"


def test_load_certificates_chain(pki):
    chain = load_certificates(pki.server.cert_pem + pki.ca_pem)
    assert len(chain) == 2


def test_identity_policy():
    """Identities compared case-insensitively, routes exactly, '*' for any."""
    open_policy = IdentityPolicy({})
    assert not open_policy.enabled
    assert open_policy.allowed(frozenset(), "node1")

    p = IdentityPolicy({"Node1": ["node1"], "ops.example": ("node1", "node2"), "admin": "*"})
    assert p.enabled
    assert p.allowed({"node1"}, "node1")
    assert not p.allowed({"node1"}, "node2")
    assert not p.allowed({"node1"}, "Node1")
    assert p.allowed({"OPS.example"}, "node2")
    assert p.allowed({"unknown", "admin"}, "anything")
    assert not p.allowed(frozenset(), "node1")
    assert not p.allowed({"stranger"}, "node1")
    assert p.routes_for({"node1", "ops.example"}) == {"node1", "node2"}
    msg = p.refusal({"node1"}, "node2")
    assert "node2" in msg and "node1" in msg and "allowed: node1" in msg
    assert "no client certificate" in p.refusal(frozenset(), "node1")
    assert "allowed: none" in p.refusal({"stranger"}, "node1")


@pytest.mark.parametrize("mapping", [{"": ["a"]}, {"x": [""]}, {"x": [1]}, {3: ["a"]}])
def test_identity_policy_rejects_bad_mapping(mapping):
    with pytest.raises(TLSConfigError):
        IdentityPolicy(mapping)



def _alpn_client(pki, offer):
    """Client TLS with the node1 certificate, offering C{offer} over ALPN."""
    from twisted.internet.ssl import PrivateCertificate

    mine = PrivateCertificate.loadPEM(pki.node1.key_pem + pki.node1.cert_pem)
    return optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(pki.ca_pem),
                               clientCertificate=mine, acceptableProtocols=offer)


@pytest.mark.parametrize("offer, selected", [
    ([b"h2", b"http/1.1"], b"http/1.1"),
    ([b"http/1.1"], b"http/1.1"),
    ([b"h2"], None),          # nothing shared: the handshake goes on without ALPN
    (None, None),
])
def test_server_answers_alpn_and_never_aborts(pki, offer, selected):
    """Clients offering ALPN (browsers, curl) complete the handshake; http/1.1 selected."""
    h = Harness(_opts(pki))
    client = Recorder()
    server_t, client_t, pump = h.connect(client, _alpn_client(pki, offer))
    client.transport.write(b"hello")
    pump.flush()
    (app,) = h.apps
    assert app.handshake and client.data == b"echo:hello"
    assert client.transport.negotiatedProtocol == selected


def test_answer_alpn_list(pki):
    """answer_alpn takes the preference list HTTP/2 will extend; bad lists are refused."""
    from modcluster.tls import SERVER_ALPN_PROTOCOLS, answer_alpn

    assert SERVER_ALPN_PROTOCOLS == (b"http/1.1",)
    options = answer_alpn(_opts(pki), (b"h2", b"http/1.1"))
    h = Harness(options)
    client = Recorder()
    h.connect(client, _alpn_client(pki, [b"h2", b"http/1.1"]))[2].flush()
    assert client.transport.negotiatedProtocol == b"h2"
    with pytest.raises(TLSConfigError):
        answer_alpn(_opts(pki), ())
    with pytest.raises(TLSConfigError):
        answer_alpn(object())
