# -*- test-case-name: tests.unit.tls.test_tls -*-
"""
TLS building blocks on L{twisted.internet.ssl} and C{service_identity}.

  - L{server_context_factory}: C{CertificateOptions} for the management (MCMP)
    listener, with client certificates verified against a CA (mutual TLS).
  - L{tls_server_endpoint}: a plain endpoint description wrapped in TLS with
    L{twisted.internet.endpoints.wrapServerTLS} plus a handshake timeout, so a client
    that stalls mid-handshake cannot hold a connection forever.
  - L{peer_identities}, L{describe_peer}, L{IdentityPolicy}: which names a verified
    client certificate carries, and which JVMRoutes each name may act for.
  - L{client_context_factory}: outgoing TLS (HTTPS/WSS to nodes) with hostname
    or IP verification by C{service_identity}.

Certificates, keys and CA bundles are PEM; every argument naming one accepts a path
(C{str}/C{os.PathLike}) or the PEM data itself (C{bytes}).  Problems with them raise
L{TLSConfigError} naming the file and the reason, at construction time, never at the
first connection.  Design notes: C{docs/tls.md}.
"""

from __future__ import annotations

import ipaddress
import os
import re
import weakref
from typing import Iterable, Mapping, Optional, Union, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import endpoints
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    ISSLTransport,
    IStreamServerEndpoint,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import alsoProvides, directlyProvides, implementer, providedBy

__all__ = [
    "HandshakeTimeoutFactory",
    "IdentityPolicy",
    "SERVER_ALPN_PROTOCOLS",
    "TLSConfigError",
    "answer_alpn",
    "resume_sessions",
    "client_context_factory",
    "describe_certificate",
    "describe_peer",
    "load_certificates",
    "load_private_key",
    "peer_certificate",
    "peer_identities",
    "server_context_factory",
    "server_endpoint",
    "tls_server_endpoint",
]

PemSource = Union[str, bytes, "os.PathLike[str]"]

_VERSIONS = {
    "1.2": TLSVersion.TLSv1_2,
    "1.3": TLSVersion.TLSv1_3,
    "TLSv1.2": TLSVersion.TLSv1_2,
    "TLSv1.3": TLSVersion.TLSv1_3,
}


class TLSConfigError(ValueError):
    """A certificate, key, CA file or TLS option cannot be used; C{str()} says why."""


# --- loading ----------------------------------------------------------------


def _read(source: PemSource, what: str) -> tuple[bytes, str]:
    if isinstance(source, bytes):
        return source, f"{what} (PEM data)"
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            with open(path, "rb") as f:
                return f.read(), path
        except OSError as e:
            raise TLSConfigError(f"{path}: cannot read {what}: {e.strerror}") from None
    raise TLSConfigError(f"{what} must be a file path or PEM bytes, not {type(source).__name__}")


def load_certificates(source: PemSource, what: str = "certificate") -> list[x509.Certificate]:
    """All PEM certificates in C{source}, in order (at least one)."""
    data, name = _read(source, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSConfigError(f"{name}: no valid PEM certificate found") from None
    return certs


_PEM_KEY = re.compile(rb"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----.*?-----END \1-----", re.S)


def load_private_key(source: PemSource, what: str = "private key"):
    """The first PEM private key in C{source} (which may also hold certificates)."""
    data, name = _read(source, what)
    m = _PEM_KEY.search(data)
    if m is None:
        raise TLSConfigError(f"{name}: no PEM private key found")
    try:
        return serialization.load_pem_private_key(m.group(0), password=None)
    except TypeError:
        raise TLSConfigError(
            f"{name}: the private key is encrypted; give an unencrypted key") from None
    except (ValueError, crypto.Error) as e:
        raise TLSConfigError(f"{name}: invalid private key ({e})") from None


def _min_version(min_version: str) -> TLSVersion:
    try:
        return _VERSIONS[min_version]
    except (KeyError, TypeError):
        raise TLSConfigError(
            f"minimum TLS version must be '1.2' or '1.3', not {min_version!r}") from None


def _ciphers(ciphers: Optional[str]):
    if ciphers is None:
        return None
    if not isinstance(ciphers, str) or not ciphers.strip():
        raise TLSConfigError(f"cipher string must be a non-empty string, not {ciphers!r}")
    return AcceptableCiphers.fromOpenSSLCipherString(ciphers)


# --- server -----------------------------------------------------------------


def server_context_factory(
    cert_pem_path: PemSource,
    key_pem_path: Optional[PemSource],
    ca_pem_path: Optional[PemSource] = None,
    require_client_cert: bool = True,
    min_version: str = "1.2",
    ciphers: Optional[str] = None,
) -> CertificateOptions:
    """
    Server-side TLS options usable with C{wrapServerTLS}.

    @param cert_pem_path: the server certificate, optionally followed by its chain.
    @param key_pem_path: its private key (None: read it from C{cert_pem_path}).
    @param ca_pem_path: CA certificate(s) client certificates must chain to.  With
        it, a presented client certificate is always verified (unknown CA, expired,
        not yet valid: handshake refused).
    @param require_client_cert: refuse clients without a certificate (needs
        C{ca_pem_path}).
    @param min_version: C{"1.2"} or C{"1.3"}.
    @param ciphers: OpenSSL cipher string for TLS <= 1.2 (None: Twisted's defaults).
    @raise TLSConfigError: unreadable/invalid files, key not matching the
        certificate, bad version or a cipher string selecting nothing.
    """
    chain = load_certificates(cert_pem_path, "server certificate")
    key = load_private_key(key_pem_path if key_pem_path is not None else cert_pem_path,
                           "server private key")
    ca_certs = None
    if ca_pem_path is not None:
        ca_certs = [crypto.X509.from_cryptography(c)
                    for c in load_certificates(ca_pem_path, "client CA certificate")]
    elif require_client_cert:
        raise TLSConfigError("require_client_cert needs a CA file (ca_pem_path)")
    try:
        options = CertificateOptions(
            privateKey=key,
            # pyOpenSSL takes cryptography certificates; Twisted's annotations say X509.
            certificate=chain[0],  # type: ignore[arg-type]
            extraCertChain=chain[1:] or None,  # type: ignore[arg-type]
            verify=ca_certs is not None,
            caCerts=ca_certs,
            requireCertificate=bool(require_client_cert),
            raiseMinimumTo=_min_version(min_version),
            acceptableCiphers=_ciphers(ciphers),
        )
        context = options.getContext()  # load everything now: a mismatched key fails here
        _set_alpn(context, SERVER_ALPN_PROTOCOLS)
        if ca_certs is not None:
            # Same verification, plus a note of why a client certificate was refused,
            # for the log line (OpenSSL only says "certificate verify failed").
            context.set_verify(context.get_verify_mode(), _record_verify_result)
    except TLSConfigError:
        raise
    except ValueError as e:
        raise TLSConfigError(f"TLS options: {e}") from None
    except SSL.Error as e:
        raise TLSConfigError(
            f"{_name(cert_pem_path)}: certificate and private key cannot be used together "
            f"({_ssl_reason(e)})") from None
    return options


#: ALPN protocols a server context selects, most preferred first.  HTTP/1.1 only
#: today; HTTP/2 support adds C{b"h2"} in front.
SERVER_ALPN_PROTOCOLS: tuple[bytes, ...] = (b"http/1.1",)


def _alpn_selector(protocols: tuple[bytes, ...]):
    def select(connection, offered):
        for protocol in protocols:
            if protocol in offered:
                return protocol
        # No overlap: go on without ALPN (RFC 7301 allows it; nginx does the
        # same) rather than abort the handshake with an alert.
        return SSL.NO_OVERLAPPING_PROTOCOLS

    return select


def _set_alpn(context: SSL.Context, protocols: Iterable[bytes]) -> None:
    protocols = tuple(protocols)
    if not protocols or not all(isinstance(p, bytes) and 0 < len(p) < 256 for p in protocols):
        raise TLSConfigError(f"ALPN protocols must be non-empty byte strings, not {protocols!r}")
    context.set_alpn_select_callback(_alpn_selector(protocols))


def answer_alpn(context_factory, protocols: Iterable[bytes] = SERVER_ALPN_PROTOCOLS):
    """
    Make the server context of C{context_factory} (a C{CertificateOptions}, or
    anything with C{getContext()}) answer ALPN: it selects the first of
    C{protocols} the client offers, and proceeds without ALPN when the client
    offers none of them.  Returns C{context_factory}.

    Twisted installs an ALPN callback on every context it builds; it selects
    from the protocols of the wrapped factory when that factory provides
    C{IProtocolNegotiationFactory} and otherwise returns an empty selection,
    which OpenSSL turns into an "internal error" alert: every client that
    offers ALPN (browsers, curl, Python, Prometheus) was refused.  Call this
    before the first connection (the context is cached and shared).
    """
    getContext = getattr(context_factory, "getContext", None)
    if getContext is None:
        raise TLSConfigError(f"{context_factory!r} has no server context to set ALPN on")
    _set_alpn(getContext(), protocols)
    return context_factory


def _name(source: PemSource) -> str:
    return "PEM data" if isinstance(source, bytes) else os.fspath(source)


def _ssl_reason(error: BaseException) -> str:
    """A readable reason from an OpenSSL.SSL.Error (its args hold (lib, func, reason))."""
    args = getattr(error, "args", ())
    if args and isinstance(args[0], list):
        reasons = [r[-1] for r in args[0] if isinstance(r, tuple) and r]
        if reasons:
            return "; ".join(str(r) for r in reasons)
    return str(error) or error.__class__.__name__


#: OpenSSL X509_V_ERR_* codes seen in practice, for log lines.
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate (unknown CA)",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
}

#: SSL.Connection -> (leaf certificate, first verification error or None)
_verify_notes: "weakref.WeakKeyDictionary[SSL.Connection, list]" = weakref.WeakKeyDictionary()


def _record_verify_result(connection, cert, errno, depth, ok) -> bool:
    """OpenSSL verify callback: keeps OpenSSL's verdict, records the reason."""
    try:
        note = _verify_notes.setdefault(connection, [None, None])
        if depth == 0 and note[0] is None:
            note[0] = cert.to_cryptography()
        if not ok and note[1] is None:
            note[1] = (errno, depth)
    except Exception:
        pass
    return bool(ok)


def _verify_failure_text(transport) -> str:
    try:
        note = _verify_notes.get(transport.getHandle())
    except Exception:
        note = None
    if not note or note[1] is None:
        return ""
    errno, depth = note[1]
    reason = _VERIFY_ERRORS.get(errno, f"X509 verify error {errno}")
    where = "" if depth == 0 else f" at chain depth {depth}"
    return f" ({reason}{where}; {describe_certificate(note[0])})"


class _HandshakeTimeoutProtocol(ProtocolWrapper):
    """
    Sits between the TLS layer and the application protocol: drops the connection if
    the handshake is not done after the timeout, logs failed handshakes, and marks
    itself L{ISSLTransport} so C{twisted.web} reports C{request.isSecure()}.
    """

    _timer = None
    _handshakeDone = False
    # Below it, the TLS layer (a TLSMemoryBIOProtocol, an ITCPTransport).
    transport: Optional[ITCPTransport]

    def makeConnection(self, transport) -> None:
        directlyProvides(self, providedBy(transport))
        alsoProvides(self, ISSLTransport, IHandshakeListener)
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._timer = self.factory.clock.callLater(self.factory.timeout, self._timedOut)
        # It provides its transport's interfaces (directlyProvides above).
        self.wrappedProtocol.makeConnection(cast(ITransport, self))

    def handshakeCompleted(self) -> None:
        self._handshakeDone = True
        self._cancel()
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()

    def _timedOut(self) -> None:
        self._timer = None
        self.factory.log.info(
            "TLS handshake from {peer} not completed within {timeout} s: connection dropped",
            peer=_peer_text(self.transport), timeout=self.factory.timeout)
        assert self.transport is not None  # the timer is cancelled when the connection ends
        self.transport.abortConnection()

    def _cancel(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel()
        if not self._handshakeDone and reason.check(SSL.Error):
            self.factory.log.info(
                "TLS handshake from {peer} failed: {reason}{detail}",
                peer=_peer_text(self.transport), reason=_ssl_reason(reason.value),
                detail=_verify_failure_text(self.transport))
        ProtocolWrapper.connectionLost(self, reason)


class HandshakeTimeoutFactory(WrappingFactory):
    """
    Wraps an application factory; give the result to a TLS endpoint.

    @ivar clock: C{IReactorTime} for the timer.
    @ivar timeout: seconds allowed for the TLS handshake.
    """

    protocol = _HandshakeTimeoutProtocol
    log = Logger()

    def __init__(self, wrappedFactory, clock, timeout: float) -> None:
        super().__init__(wrappedFactory)
        self.clock = clock
        self.timeout = timeout

    def buildProtocol(self, addr):
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        return self.protocol(self, inner)


@implementer(IStreamServerEndpoint)
class _HandshakeTimeoutEndpoint:
    def __init__(self, tls_endpoint, clock, timeout: float) -> None:
        self._endpoint = tls_endpoint
        self._clock = clock
        self._timeout = timeout

    def listen(self, protocolFactory):
        return self._endpoint.listen(
            HandshakeTimeoutFactory(protocolFactory, self._clock, self._timeout))


@implementer(IOpenSSLServerConnectionCreator)
class SwappableServerTLS:
    """
    Server TLS whose options can be replaced while listening (reload): each
    new connection uses the current C{options} (e.g. from
    L{server_context_factory}); connections already made keep theirs.
    """

    def __init__(self, options: CertificateOptions) -> None:
        self.options = options

    def serverConnectionForTLS(self, tlsProtocol):
        return SSL.Connection(self.options.getContext(), None)


def tls_server_endpoint(
    reactor,
    endpoint_description: Union[str, IStreamServerEndpoint],
    context_factory,
    handshake_timeout: float,
) -> IStreamServerEndpoint:
    """
    A TLS server endpoint: C{endpoint_description} (a plain C{tcp:}/C{tcp6:}/C{unix:}
    description, or an endpoint) wrapped with C{wrapServerTLS(context_factory, ...)};
    a client that has not completed the handshake after C{handshake_timeout} seconds
    is disconnected.

    @param reactor: the reactor (also the clock for the timer and TLS buffering).
    @param context_factory: e.g. from L{server_context_factory}.
    @raise TLSConfigError: an C{ssl:}/C{tls:} description (it would be TLS twice),
        or a non-positive timeout.
    @raise ValueError: from C{serverFromString} for an invalid description.
    """
    if not handshake_timeout or handshake_timeout <= 0:
        raise TLSConfigError(f"handshake timeout must be > 0, not {handshake_timeout!r}")
    if isinstance(endpoint_description, str):
        kind = endpoint_description.split(":", 1)[0].strip().lower()
        if kind in ("ssl", "tls", "le", "lets"):
            raise TLSConfigError(
                f"{endpoint_description!r}: give a plain endpoint (e.g. "
                "'tcp:6666:interface=127.0.0.1'); TLS is added from the certificate settings")
        inner = endpoints.serverFromString(reactor, endpoint_description)
    else:
        inner = endpoint_description
    tls = endpoints.wrapServerTLS(context_factory, inner, clock=reactor)
    return _HandshakeTimeoutEndpoint(tls, reactor, handshake_timeout)


def resume_sessions(context_factory):
    """
    Let clients resume their TLS sessions on the server context of
    C{context_factory} (a C{CertificateOptions}, or anything with
    C{getContext()}): session tickets (RFC 5077; TLS 1.3 tickets stateless
    too), and OpenSSL's server session cache for clients that resume by
    session id.  Twisted's C{ssl:} endpoint builds its C{CertificateOptions}
    with both off (C{enableSessionTickets=False}, C{enableSessions=False}) and
    its description cannot say otherwise; without this every returning client
    paid a full handshake (a private-key operation, ~1 ms of CPU with RSA 2048;
    docs/performance.md, run H).  Tickets need C{OP_NO_TICKET} left out of the
    options the context is built with (pyOpenSSL cannot clear an option), so
    call this before anything builds the context.  The ticket key is OpenSSL's,
    random per context (per process: a worker process does not accept another's
    tickets, the client then gets a full handshake).  Returns C{context_factory}.
    """
    options = getattr(context_factory, "_options", None)
    if isinstance(options, int) and getattr(context_factory, "_context", True) is None:
        context_factory._options = options & ~SSL.OP_NO_TICKET
        context_factory.enableSessionTickets = True
    getContext = getattr(context_factory, "getContext", None)
    if getContext is not None:
        getContext().set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    return context_factory


_log = Logger(namespace="modcluster.tls")


class _ALPNReactor:
    """
    Stands in for the reactor while an C{ssl:} description is listened on: its
    C{listenSSL} sets ALPN on the context the description built (L{answer_alpn}),
    then delegates; everything else is the real reactor's.
    """

    def __init__(self, reactor, protocols: tuple[bytes, ...], engine: str = "twisted",
                 description: Optional[str] = None) -> None:
        self._reactor = reactor
        self._protocols = protocols
        self._engine = engine
        self._description = description

    def listenSSL(self, port, factory, contextFactory, backlog=50, interface=""):
        if self._engine == "stdlib":
            # TLS on the stdlib ssl module over a plain TCP port (the proxy's listeners)
            from modcluster.proxy.stdtls import UnsupportedOptions, listener_factory

            try:
                tls = listener_factory(contextFactory, self._protocols, factory,
                                       self._reactor, self._description)
            except UnsupportedOptions as e:
                _log.warn("{listener}: Twisted's TLS engine, the stdlib one cannot do {why}",
                          listener=self._description or f"ssl:{port}", why=str(e))
            else:
                return self._reactor.listenTCP(port, tls, backlog, interface)
        resume_sessions(contextFactory)  # before the context is built
        answer_alpn(contextFactory, self._protocols)
        return self._reactor.listenSSL(port, factory, contextFactory, backlog, interface)

    def __getattr__(self, name):
        return getattr(self._reactor, name)


def server_endpoint(reactor, description: str,
                    protocols: Iterable[bytes] = SERVER_ALPN_PROTOCOLS,
                    engine: str = "twisted") -> IStreamServerEndpoint:
    """
    C{serverFromString(reactor, description)}, except that an C{ssl:} endpoint
    answers ALPN with C{protocols} (see L{answer_alpn}) instead of aborting the
    handshake of every client that offers it.  C{engine="stdlib"}: the C{ssl:}
    listener does TLS with L{modcluster.proxy.stdtls} (C{proxy.tls_engine})
    instead of Twisted's C{TLSMemoryBIOProtocol}, from the same options.
    """
    protocols = tuple(protocols)
    if description.split(":", 1)[0].strip().lower() == "ssl":
        return endpoints.serverFromString(_ALPNReactor(reactor, protocols, engine, description),
                                          description)
    return endpoints.serverFromString(reactor, description)


# --- identities -------------------------------------------------------------


def _peer_text(transport) -> str:
    try:
        peer = transport.getPeer()
    except Exception:
        return "?"
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    if host is None:
        return str(peer)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_certificate(transport) -> Optional[x509.Certificate]:
    """
    The verified client certificate of a TLS transport (after the handshake), or None
    for plain TCP, no certificate or no transport.
    """
    if transport is None:
        return None
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    try:
        cert = get()
    except Exception:
        return None
    if cert is None:
        return None
    if isinstance(cert, x509.Certificate):
        return cert
    to_crypto = getattr(cert, "to_cryptography", None)
    return to_crypto() if to_crypto is not None else None


def _certificate_identities(cert: x509.Certificate) -> frozenset[str]:
    names: set[str] = set()
    try:
        san: Optional[x509.SubjectAlternativeName] = (
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except (x509.ExtensionNotFound, ValueError):
        san = None
    if san is not None:
        names.update(san.get_values_for_type(x509.DNSName))
        names.update(san.get_values_for_type(x509.UniformResourceIdentifier))
    for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attribute.value
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        names.add(value)
    return frozenset(n for n in names if n)


def peer_identities(transport) -> frozenset[str]:
    """
    The names the peer's certificate carries: SAN DNS names, SAN URIs and subject
    CN(s).  Empty for plain TCP or a client without certificate.
    """
    cert = peer_certificate(transport)
    if cert is None:
        return frozenset()
    return _certificate_identities(cert)


def describe_certificate(cert: Optional[x509.Certificate]) -> str:
    """One line for logs: subject, SANs, issuer, serial and validity."""
    if cert is None:
        return "no client certificate"
    parts = [f"subject={cert.subject.rfc4514_string()!r}"]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [f"DNS:{v}" for v in san.get_values_for_type(x509.DNSName)]
        sans += [f"URI:{v}" for v in san.get_values_for_type(x509.UniformResourceIdentifier)]
        sans += [f"IP:{v}" for v in san.get_values_for_type(x509.IPAddress)]
        parts.append("san=[" + ", ".join(sans) + "]")
    except (x509.ExtensionNotFound, ValueError):
        pass
    parts.append(f"issuer={cert.issuer.rfc4514_string()!r}")
    parts.append(f"serial={cert.serial_number:#x}")
    parts.append(f"valid={cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"
                 f"..{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
    return " ".join(parts)


def describe_peer(transport) -> str:
    """L{describe_certificate} of the transport's peer certificate, with its address."""
    return f"{_peer_text(transport)} {describe_certificate(peer_certificate(transport))}"


class IdentityPolicy:
    """
    Identity pinning: which certificate identities may act for which JVMRoutes.

    C{mapping} maps an identity (SAN DNS name, SAN URI or subject CN, compared
    case-insensitively) to the JVMRoutes it may register or change (compared
    exactly); the route C{"*"} means any.  An empty mapping allows everything (no
    pinning: any verified certificate may act for any node).
    """

    __slots__ = ("_routes",)

    def __init__(self, mapping: Optional[Mapping[str, Iterable[str]]] = None) -> None:
        routes: dict[str, frozenset[str]] = {}
        for identity, allowed in (mapping or {}).items():
            if not isinstance(identity, str) or not identity:
                raise TLSConfigError(f"identity must be a non-empty string, not {identity!r}")
            if isinstance(allowed, str):
                allowed = (allowed,)
            allowed = frozenset(allowed)
            if not all(isinstance(r, str) and r for r in allowed):
                raise TLSConfigError(f"identity {identity!r}: JVMRoutes must be non-empty strings")
            key = identity.casefold()
            routes[key] = routes.get(key, frozenset()) | allowed
        self._routes = routes

    @property
    def enabled(self) -> bool:
        """True when pinning is configured."""
        return bool(self._routes)

    def routes_for(self, identities: Iterable[str]) -> frozenset[str]:
        """The union of the routes allowed to these identities (may contain C{"*"})."""
        found: frozenset[str] = frozenset()
        for identity in identities or ():
            found |= self._routes.get(identity.casefold(), frozenset())
        return found

    def allowed(self, identities: Iterable[str], jvm_route: str) -> bool:
        """May a peer with C{identities} act for C{jvm_route}?"""
        if not self._routes:
            return True
        routes = self.routes_for(identities)
        return "*" in routes or jvm_route in routes

    def refusal(self, identities: Iterable[str], jvm_route: str) -> str:
        """Why L{allowed} said no, for a log line or an MCMP error message."""
        ids = sorted(identities or ())
        if not ids:
            return f"JVMRoute {jvm_route!r} refused: no client certificate identity"
        routes = sorted(self.routes_for(ids))
        return (f"JVMRoute {jvm_route!r} refused for certificate identities "
                f"{', '.join(ids)} (allowed: {', '.join(routes) or 'none'})")

    def __repr__(self) -> str:
        return f"IdentityPolicy({ {k: sorted(v) for k, v in sorted(self._routes.items())} !r})"


# --- client -----------------------------------------------------------------


def _client_credentials(client_cert_pem, client_key_pem):
    if client_cert_pem is None:
        if client_key_pem is not None:
            raise TLSConfigError("a client private key was given without its certificate")
        return {}
    chain = load_certificates(client_cert_pem, "client certificate")
    key = load_private_key(client_key_pem if client_key_pem is not None else client_cert_pem,
                           "client private key")
    return {"privateKey": key, "certificate": chain[0], "extraCertChain": chain[1:] or None}


def _bare_host(hostname: Union[str, bytes]) -> str:
    if isinstance(hostname, bytes):
        hostname = hostname.decode("ascii")
    if hostname.startswith("[") and hostname.endswith("]"):
        hostname = hostname[1:-1]
    if not hostname:
        raise TLSConfigError("empty host name")
    return hostname


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientCreator:
    """Client TLS without certificate checks (C{verify=False}); still sends SNI."""

    def __init__(self, options: CertificateOptions, hostname: str) -> None:
        self._options = options
        try:
            ipaddress.ip_address(hostname)
            self._sni = None
        except ValueError:
            self._sni = hostname.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol):
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        return connection


def client_context_factory(
    hostname: Union[str, bytes],
    ca_pem_path: Optional[PemSource] = None,
    client_cert_pem: Optional[PemSource] = None,
    client_key_pem: Optional[PemSource] = None,
    *,
    verify: bool = True,
    min_version: str = "1.2",
) -> IOpenSSLClientConnectionCreator:
    """
    Client TLS towards C{hostname} (a DNS name or an IP literal, IPv6 with or without
    brackets), for C{wrapClientTLS} or an Agent policy.

    @param ca_pem_path: CA certificate(s) the server must chain to (None: the
        system trust store).
    @param client_cert_pem: certificate (and chain) to present; None for none.
    @param client_key_pem: its key (None: read it from C{client_cert_pem}).
    @param verify: False disables all server certificate checks (not recommended).
    @return: C{optionsForClientTLS(...)}: the server certificate must chain to the CA
        and match the host name / IP address (C{service_identity}).
    """
    host = _bare_host(hostname)
    extra = _client_credentials(client_cert_pem, client_key_pem)
    extra["raiseMinimumTo"] = _min_version(min_version)
    if not verify:
        return _UnverifiedClientCreator(CertificateOptions(**extra), host)
    if ca_pem_path is not None:
        trust = trustRootFromCertificates(
            [Certificate(crypto.X509.from_cryptography(c))
             for c in load_certificates(ca_pem_path, "CA certificate")])
    else:
        trust = platformTrust()
    try:
        return optionsForClientTLS(host, trustRoot=trust, extraCertificateOptions=extra)
    except ValueError as e:
        raise TLSConfigError(f"client TLS options for {host!r}: {e}") from None

