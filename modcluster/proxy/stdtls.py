# -*- test-case-name: tests.unit.proxy.test_stdtls -*-
"""
TLS to clients on the proxy's C{ssl:} listeners, on the stdlib C{ssl} module:
an C{ssl.SSLObject} between two C{ssl.MemoryBIO}s, under a plain
C{tcp.Server}.  (Management and console listeners keep Twisted's TLS,
L{modcluster.tls}.)

Why not Twisted's C{TLSMemoryBIOProtocol}: it costs ~36-60 µs per request
over plain TCP (docs/performance.md, run H): each received chunk goes
through pyOpenSSL (cffi) until an exception ends it (two C{SSL_read}s and
three Python exceptions per request), and each response is held back by a
C{callLater(0)} and then buffered by C{FileDescriptor.write} (two more loop
iterations before it is sent).  Here:

 - B{receiving} feeds the chunk to the incoming BIO and reads records until
   both the BIO and OpenSSL's record buffer are empty (no exception when the
   chunk ended on a record boundary, the usual case; C{SSLWantReadError} only
   for a partial record), then hands all the plaintext to the protocol in
   B{one} C{dataReceived}, as a TCP read would;
 - B{writing} encrypts at once and hands the records to
   L{direct_writer<modcluster.proxy._transport.direct_writer>} of the TCP
   transport: straight to the socket when nothing is buffered, else
   Twisted's buffer (whose producer pausing then applies as for plain TCP).

The application protocol sees an C{ITCPTransport} + C{ISSLTransport}: flow
control (C{registerProducer}, C{pauseProducing}, ...) is the TCP
transport's, since nothing is buffered in between once the handshake is
done.  C{wrappedProtocol} may be replaced after the handshake (the HTTP/2
L{NegotiatingFactory<modcluster.proxy.alpn.NegotiatingFactory>} does), and
C{negotiatedProtocol} is the ALPN result as bytes, as with Twisted.
C{loseConnection} sends C{close_notify}.  The client's C{close_notify}, or
the end of its TCP stream (FIN) without one, ends what is read, as a FIN ends
a plain TCP connection: a protocol that is an C{IHalfCloseableProtocol} gets
C{readConnectionLost} (the HTTP/1.1 front answers the complete requests it
has, then closes with our C{close_notify}); another one, or a handshake in
progress, is closed at once.  A failed handshake is logged, rate-limited per
client address, and the connection aborted.

L{server_context} builds the C{ssl.SSLContext} from the C{CertificateOptions}
that Twisted's C{ssl:} endpoint description parser made (certificate, chain,
key, DH parameters, protocol versions, cipher list), so an C{ssl:}
description means the same with either engine (C{proxy.tls_engine}).
Details: docs/tls.md, "The proxy's TLS engine".
"""

from __future__ import annotations

import hashlib
import os
import ssl
import weakref
from typing import Any, Iterable, Optional

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    INegotiated,
    ISSLTransport,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from modcluster.access import RateLimitedLog
from modcluster.proxy._transport import LEAN_SERVER, direct_writer, lose_connection

log = Logger(namespace="modcluster.proxy.stdtls")

__all__ = ["TLSServerConnection", "TLSServerFactory", "UnsupportedOptions",
           "description_context", "listener_factory", "reload_certificates",
           "server_context"]

#: The largest plaintext of one TLS record: one C{read} returns one record.
RECORD = 16384
#: TLS 1.3 session tickets sent after each handshake (OpenSSL's default: 2)
TLS13_TICKETS = 1

#: the ALPN protocol names as bytes (one encode less per connection)
_ALPN = {"h2": b"h2", "http/1.1": b"http/1.1"}

_MemoryBIO = ssl.MemoryBIO
_WantRead = ssl.SSLWantReadError
_SSLError = ssl.SSLError
_ZeroReturn = ssl.SSLZeroReturnError

_VERSIONS = (
    (ssl.TLSVersion.TLSv1, SSL.OP_NO_TLSv1),
    (ssl.TLSVersion.TLSv1_1, SSL.OP_NO_TLSv1_1),
    (ssl.TLSVersion.TLSv1_2, SSL.OP_NO_TLSv1_2),
    (ssl.TLSVersion.TLSv1_3, getattr(SSL, "OP_NO_TLSv1_3", 0)),
)
_VERSION_FLAGS = SSL.OP_NO_SSLv2 | SSL.OP_NO_SSLv3
for _v, _flag in _VERSIONS:
    _VERSION_FLAGS |= _flag


#: the protocol versions of each C{sslmethod=} of an C{ssl:} description
_METHODS = {
    SSL.TLS_METHOD: frozenset(v for v, _ in _VERSIONS),
    SSL.SSLv23_METHOD: frozenset(v for v, _ in _VERSIONS),
    SSL.TLSv1_2_METHOD: frozenset((ssl.TLSVersion.TLSv1_2,)),
    SSL.TLSv1_1_METHOD: frozenset((ssl.TLSVersion.TLSv1_1,)),
    SSL.TLSv1_METHOD: frozenset((ssl.TLSVersion.TLSv1,)),
}


def _new_ssl(context: ssl.SSLContext, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO):
    """
    The server side of a TLS connection between two memory BIOs: the C{_ssl}
    object that C{SSLContext.wrap_bio} would wrap in an C{SSLObject} (CPython's
    C{SSLContext._wrap_bio}; no C{owner}: it is what SNI and message callbacks
    would be given, and we set neither); the C{SSLObject} itself elsewhere.
    """
    if _WRAP_BIO:
        wrap: Any = context._wrap_bio  # type: ignore[attr-defined]
        return wrap(incoming, outgoing, True, None, owner=None, session=None)
    return context.wrap_bio(incoming, outgoing, server_side=True)  # pragma: no cover


_WRAP_BIO = hasattr(ssl.SSLContext, "_wrap_bio")


class UnsupportedOptions(ValueError):
    """C{CertificateOptions} this engine cannot reproduce (use C{tls_engine = "twisted"})."""


def _pem_fd(data: bytes) -> int:
    """An anonymous in-memory file holding C{data} (C{ssl} only loads from paths)."""
    fd = os.memfd_create("modcluster-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
    except BaseException:
        os.close(fd)
        raise
    return fd


def server_context(options, protocols: Iterable[bytes]) -> ssl.SSLContext:
    """See L{_server_context}; the context alone."""
    return _server_context(options, protocols)[0]


def _server_context(options, protocols: Iterable[bytes]) -> tuple[ssl.SSLContext, bytes]:
    """
    An C{ssl.SSLContext} (server side) equivalent to the C{CertificateOptions}
    C{options} built by Twisted's C{ssl:} description parser, answering ALPN
    with C{protocols} (the first one the client also offers; no ALPN when
    nothing is shared, the same as L{modcluster.tls.answer_alpn}), with session
    tickets and the server session cache on (as L{modcluster.tls.resume_sessions}).

    Kept from C{options}: certificate, extra chain, private key, DH parameters,
    the enabled protocol versions (its C{OP_NO_*} flags), its cipher list for
    TLS <= 1.2 and its other option flags.  Added: no client-initiated
    renegotiation (C{OP_NO_RENEGOTIATION}).

    @raise UnsupportedOptions: client certificate verification, a DTLS
        C{sslmethod}, no private key or no protocol version left (the caller
        falls back to Twisted's TLS: L{modcluster.tls.server_endpoint}).
    """
    if getattr(options, "verify", False):
        raise UnsupportedOptions("client certificate verification")
    method = getattr(options, "method", SSL.TLS_METHOD)
    if method not in _METHODS:
        raise UnsupportedOptions(f"sslmethod {method!r}")
    key, cert = getattr(options, "privateKey", None), getattr(options, "certificate", None)
    if key is None or cert is None:
        raise UnsupportedOptions("no certificate and key")
    flags = options._options
    enabled = [version for version, flag in _VERSIONS
               if not flags & flag and version in _METHODS[method]]
    if not enabled:
        raise UnsupportedOptions("no protocol version enabled")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = enabled[0]
    ctx.maximum_version = enabled[-1]
    # Twisted's flags (compression off, server cipher preference, single-use
    # DH keys...) on top of the stdlib's; tickets stay on (resume_sessions)
    ctx.options |= (flags & ~_VERSION_FLAGS & ~SSL.OP_NO_TICKET) | ssl.OP_NO_RENEGOTIATION
    ctx.set_ciphers(options._cipherString)
    dh = getattr(options, "dhParameters", None)
    if dh is not None:
        ctx.load_dh_params(dh._dhFile.path)
    chain = b"".join(c.to_cryptography().public_bytes(serialization.Encoding.PEM)
                     for c in [cert, *(options.extraCertChain or ())])
    key_pem = key.to_cryptography_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    digest = hashlib.sha256(chain + key_pem).digest()
    cert_fd, key_fd = _pem_fd(chain), _pem_fd(key_pem)
    try:
        ctx.load_cert_chain(f"/proc/self/fd/{cert_fd}", f"/proc/self/fd/{key_fd}")
    finally:
        os.close(cert_fd)
        os.close(key_fd)
    ctx.set_alpn_protocols([p.decode("ascii") for p in protocols])
    # one TLS 1.3 ticket per handshake, not OpenSSL's two: each costs as much
    # server CPU as a third of a resumed handshake (docs/tls.md)
    ctx.num_tickets = TLS13_TICKETS
    # tickets with the process's shared, rotated key set (kept across reloads)
    from modcluster.proxy.tickets import install

    install(ctx)
    return ctx, digest


class _OptionsRecorder:
    """Stands in for the reactor: keeps the C{CertificateOptions} of an C{ssl:} description."""

    options = None

    def listenSSL(self, port, factory, contextFactory, backlog=50, interface=""):
        self.options = contextFactory


def description_context(description: str, protocols: Iterable[bytes]) -> ssl.SSLContext:
    """
    L{server_context} for an C{ssl:} endpoint description (its files read now).

    @raise ValueError: from Twisted's parser (bad description, invalid
        certificate or key), or L{UnsupportedOptions}.
    @raise OSError: a certificate or key file cannot be read.
    """
    return server_context(_description_options(description), protocols)


def _description_options(description: str):
    """
    The C{CertificateOptions} Twisted's parser builds for an C{ssl:} description.

    @raise ValueError: from Twisted's parser (bad description, invalid
        certificate or key), or L{UnsupportedOptions}.
    @raise OSError: a certificate or key file cannot be read.
    """
    from twisted.internet.endpoints import serverFromString

    recorder = _OptionsRecorder()
    failures: list = []
    serverFromString(recorder, description).listen(None).addErrback(failures.append)
    if failures:
        failures[0].raiseException()
    if recorder.options is None:
        raise ValueError(f"{description!r} is not an ssl: description")
    return recorder.options


@implementer(ITCPTransport, ISSLTransport, INegotiated, IHalfCloseableProtocol)
class TLSServerConnection(Protocol):
    """
    One server-side TLS connection: the protocol of a C{tcp.Server} (a
    half-closeable one: the client's FIN is L{readConnectionLost}), and the
    transport of C{wrappedProtocol}.
    """

    #: the TCP transport (a C{tcp.Server}) under the TLS layer
    transport: Any
    #: the application protocol (None until alpn._NegotiatingTLS chooses one;
    #: the _CLOSED stand-in once the connection is lost)
    wrappedProtocol: Any
    #: so helpers that look for it (L{modcluster.proxy._transport}) see TLS
    TLS = True
    disconnecting = False
    #: the ALPN protocol selected (bytes), None without ALPN or before the handshake
    negotiatedProtocol: Optional[bytes] = None
    _handshaking = True
    _closed = False  # close_notify sent: nothing can be written any more
    #: the client's close_notify or FIN came: what it sends is no longer read
    #: (set per instance by makeConnection: read on every dataReceived, where a
    #: class attribute read through the instance is a generic lookup)
    _read_closed: bool
    _failure: Optional[Failure] = None  # the TLS error that ends the connection
    _early: Optional[list] = None  # writes before the handshake completed
    _nodelay_inherited = False  # (set by makeConnection)

    def __init__(self, factory: "TLSServerFactory", wrapped: Protocol) -> None:
        self.factory = factory
        self.wrappedProtocol = wrapped

    # -- from the TCP transport ---------------------------------------------------

    def makeConnection(self, transport) -> None:
        self.transport = transport
        self.connected = 1
        self._read_closed = False
        self._in = incoming = _MemoryBIO()
        self._out = outgoing = _MemoryBIO()
        # the C object an SSLObject wraps, made directly: no SSLObject (and its
        # three Python calls) per connection, one Python frame less per call
        # (_new_ssl, inline)
        context = self.factory.context
        self._ssl = (context._wrap_bio(incoming, outgoing, True, None) if _WRAP_BIO
                     else _new_ssl(context, incoming, outgoing))
        self._send = direct_writer(transport)
        #: L{set_nodelay<modcluster.proxy._transport.set_nodelay>}: C{TCP_NODELAY}
        #: came from the listening socket (the accept loop), no C{setsockopt}
        #: (a plain attribute: read without a Python call)
        self._nodelay_inherited = getattr(transport, "_nodelay_inherited", False)
        self._started()

    def _started(self) -> None:
        """The TLS layer is set up (before any byte): the application protocol is connected."""
        self.wrappedProtocol.makeConnection(self)

    def dataReceived(self, data: bytes) -> None:
        if self._read_closed:
            return  # after the client's close_notify: dropped (not kept in the BIO)
        incoming = self._in
        incoming.write(data)
        if self._handshaking:
            try:
                self._ssl.do_handshake()
            except _WantRead:  # the usual end of the first flight: sent, no call
                out = self._out
                if out.pending:
                    self._send(out.read())
                return
            except _SSLError as e:
                self._flush()  # the alert
                self._fail(e, "TLS handshake from {peer} failed: {reason}")
                return
            if not self._handshake_done() or not incoming.pending:
                # (the handshake took every record there was: no read to raise
                # SSLWantReadError, e.g. a client's Finished alone)
                return
        read = self._ssl.read
        received = b""
        chunks = None
        closed = False
        failed = None
        # one read per record: a RECORD-sized read takes a whole record, so
        # OpenSSL keeps no plaintext back (SSL_pending is 0) and only the BIO
        # says whether another record follows (OpenSSL reads no further than
        # the record it decrypts: no read-ahead)
        try:
            received = read(RECORD)
            if not received:  # close_notify
                closed = True
            elif incoming.pending:
                chunks = [received]
                while True:
                    piece = read(RECORD)
                    if not piece:
                        closed = True
                        break
                    chunks.append(piece)
                    if not incoming.pending:
                        break
        except _WantRead:  # the rest of a record is still to come
            pass
        except _ZeroReturn:  # close_notify after ours (half-close): the orderly end
            closed = True
        except _SSLError as e:
            failed = e
        if chunks is not None:
            received = b"".join(chunks)
        if self._out.pending:  # post-handshake messages (tickets, key update)
            self._flush()
        if received and self.connected:
            self.wrappedProtocol.dataReceived(received)
        if failed is not None:
            self._fail(failed, "TLS error from {peer}: {reason}")
        elif closed:
            self._end_of_input()

    def readConnectionLost(self) -> None:
        """
        C{IHalfCloseableProtocol}: the TCP stream ended (the client's FIN)
        with no C{close_notify} before it: taken as one (L{_end_of_input}).
        A truncation only matters for a request cut short, which the HTTP/1.1
        front sees as a partial request and closes on at once; a complete
        request is framed by its own head and body length, so the missing
        C{close_notify} cannot make a cut one look whole.
        """
        if not self._read_closed:
            self._end_of_input()

    def writeConnectionLost(self) -> None:
        """C{IHalfCloseableProtocol}: our sending side is shut (L{loseWriteConnection})."""
        wrapped = self.wrappedProtocol
        half = IHalfCloseableProtocol(wrapped, None) if wrapped is not None else None
        if half is not None:
            half.writeConnectionLost()

    def _end_of_input(self) -> None:
        """
        The client sends nothing more (its C{close_notify}, or its FIN).  A
        protocol that is an C{IHalfCloseableProtocol} is told
        (C{readConnectionLost}) and may still write, then closes (our
        C{close_notify} goes out with the close), as over plain TCP; another
        one, a handshake in progress or nothing connected: the connection is
        closed now.  TLS 1.3 lets the side that received C{close_notify}
        write on (RFC 8446 6.1); for TLS 1.2 (RFC 5246 7.2.1 asks for an
        immediate answer) httpd and HAProxy do the same, and OpenSSL still
        writes and the client still reads.
        """
        self._read_closed = True
        if not self.connected or self.disconnecting:
            return
        wrapped = self.wrappedProtocol
        half = (IHalfCloseableProtocol(wrapped, None)
                if wrapped is not None and not self._handshaking else None)
        if half is None:
            self.loseConnection()  # (close_notify once the handshake is complete)
        else:
            half.readConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = 0
        self.disconnecting = True
        failure, self._failure = self._failure, None
        wrapped = self.wrappedProtocol
        if wrapped is None:  # no protocol chosen yet (alpn._NegotiatingTLS)
            return
        try:
            wrapped.connectionLost(failure if failure is not None else reason)
        finally:
            # the protocol keeps its transport (this): without letting go of it
            # the pair would wait for the cyclic GC, whose collections pause the
            # process (tcp.Server drops its protocol likewise); a stand-in takes
            # its place
            self.wrappedProtocol = _CLOSED

    # -- handshake ------------------------------------------------------------------

    def _handshake_done(self) -> bool:
        """
        The handshake is complete (C{do_handshake} returned; in
        L{dataReceived}): send what it left, tell the protocol; True while the
        connection stays open for reading.
        """
        self._handshaking = False
        out = self._out
        if out.pending:  # (none after a resumed TLS 1.2 handshake: no read for b"")
            self._send(out.read())
        selected = self._ssl.selected_alpn_protocol()
        if selected is not None:
            self.negotiatedProtocol = _ALPN.get(selected) or selected.encode("ascii")
        self._completed()
        early, self._early = self._early, None
        if early and self.connected and not self._closed:
            self.write(b"".join(early))
        if self.disconnecting and not self._closed and self.connected:
            self._shutdown()
        return bool(self.connected) and not self.disconnecting

    def _completed(self) -> None:
        """The handshake is complete (C{negotiatedProtocol} set): tell the protocol."""
        wrapped: Any = self.wrappedProtocol
        if IHandshakeListener.providedBy(wrapped):
            wrapped.handshakeCompleted()

    def _fail(self, error: ssl.SSLError, fmt: str) -> None:
        self._failure = Failure(error)
        self.factory.log_failure(self.transport, fmt, error)
        self.disconnecting = True
        self.transport.abortConnection()

    # -- to the TCP transport ---------------------------------------------------------

    def _flush(self) -> None:
        data = self._out.read()
        if data:
            self._send(data)

    def _shutdown(self) -> None:
        """Send close_notify (once); then nothing more can be written."""
        self._closed = True
        try:
            self._ssl.shutdown()
        except _SSLError:  # SSLWantReadError: the peer's close_notify is not awaited
            pass
        self._flush()

    # -- ITransport (for the application protocol) ----------------------------------

    def write(self, data) -> None:
        if self._handshaking:
            if self._early is None:
                self._early = []
            self._early.append(bytes(data))
            return
        if self._closed or not self.connected or not data:
            return
        try:
            self._ssl.write(data)
        except _SSLError as e:
            self._fail(e, "TLS error writing to {peer}: {reason}")
            return
        self._send(self._out.read())

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self.disconnecting or not self.connected:
            return
        self.disconnecting = True
        if not self._handshaking and not self._closed:
            self._shutdown()
        self.transport.loseConnection()

    def lose_connection_now(self) -> None:
        """
        L{loseConnection} for L{modcluster.proxy._transport.lose_connection}:
        C{close_notify}, then the TCP connection closed at once when it went
        out whole (no loop iteration waiting for "writable" to close), so
        the protocol's C{connectionLost} may run before this returns.
        """
        if self.disconnecting or not self.connected:
            return
        if self._handshaking:
            self.loseConnection()
            return
        self.disconnecting = True
        if not self._closed:
            self._shutdown()
        lose_connection(self.transport)

    def abortConnection(self) -> None:
        self.disconnecting = True
        self.transport.abortConnection()

    def getPeer(self):
        return self.transport.getPeer()

    def getHost(self):
        return self.transport.getHost()

    # ITCPTransport (TCP options: the TCP transport's)

    def setTcpNoDelay(self, enabled) -> None:
        self.transport.setTcpNoDelay(enabled)

    def getTcpNoDelay(self):
        return self.transport.getTcpNoDelay()

    def setTcpKeepAlive(self, enabled) -> None:
        self.transport.setTcpKeepAlive(enabled)

    def getTcpKeepAlive(self):
        return self.transport.getTcpKeepAlive()

    def loseWriteConnection(self) -> None:
        """
        Half-close: C{close_notify}, then the TCP write side is shut; what the
        client still sends is read (TLS 1.3 allows it; a TLS 1.2 client
        usually answers with its own C{close_notify}, which closes).
        """
        if self.disconnecting or not self.connected:
            return
        if self._handshaking:
            self.loseConnection()
            return
        if not self._closed:
            self._shutdown()
        self.transport.loseWriteConnection()

    # IConsumer / IPushProducer: the TCP transport's (nothing is buffered here)

    def registerProducer(self, producer, streaming) -> None:
        t = self.transport
        if (t.__class__ is LEAN_SERVER and streaming and t.producer is None
                and not t.disconnected):
            # a plain tcp.Server: what its registerProducer does for a
            # streaming producer, without its two Python calls
            t.producer = producer
            t.streamingProducer = True
            return
        t.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    # ISSLTransport

    def getPeerCertificate(self) -> Optional[x509.Certificate]:
        """The client's certificate (C{ssl:} listeners ask for none: None)."""
        der = self._ssl.getpeercert(True) if not self._handshaking else None
        return x509.load_der_x509_certificate(der) if der else None

    def logPrefix(self) -> str:
        wrapped = self.wrappedProtocol
        if wrapped is None:  # not chosen yet (ALPN), or the connection is gone
            return "TLS"
        prefix = getattr(wrapped, "logPrefix", None)
        return (prefix() if prefix is not None else wrapped.__class__.__name__) + " (TLS)"


#: L{TLSServerConnection} and its subclasses that keep its C{registerProducer}
#: and C{getPeer}: C{ClientProtocol.connectionMade} registers with their TCP
#: transport directly (L{modcluster.proxy.client})
LEAN_TLS: set = {TLSServerConnection}


class _Closed(Protocol):
    """The application protocol's stand-in once the connection is lost."""

    def logPrefix(self) -> str:
        return "closed"


_CLOSED = _Closed()


#: the listeners made by L{listener_factory}, for L{reload_certificates}
_listeners: "weakref.WeakSet[TLSServerFactory]" = weakref.WeakSet()


class TLSServerFactory(Factory):
    """
    Wraps the application factory of an C{ssl:} listener: each connection
    gets a L{TLSServerConnection} with the current C{context} (replace it to
    serve new connections with other certificates; open ones keep theirs).

    @ivar description: the C{ssl:} description the context was built from
        (None: not reloadable), with C{protocols} the ALPN protocols.
    """

    protocol = TLSServerConnection
    description: Optional[str] = None
    protocols: tuple[bytes, ...] = ()
    _digest = b""

    def __init__(self, context: ssl.SSLContext, wrappedFactory, clock) -> None:
        self.context = context
        self.wrappedFactory = wrappedFactory
        self.failures = RateLimitedLog(clock)
        #: C{wrappedFactory.tls_connection(self, addr)}, when it has one: it builds
        #: the whole connection, which picks its protocol when the handshake is
        #: complete (L{modcluster.proxy.alpn.NegotiatingFactory}), instead of a
        #: L{TLSServerConnection} around C{wrappedFactory.buildProtocol(addr)}
        self._negotiating = getattr(wrappedFactory, "tls_connection", None)

    def reload(self) -> bool:
        """
        Re-read the certificate, chain and key files of C{description}; when
        they changed, new connections use them (a new context, with the same
        session ticket keys: L{modcluster.proxy.tickets}).
        Errors are logged and keep the current certificate.  True when swapped.
        """
        if self.description is None:
            return False
        try:
            options = _description_options(self.description)
            context, digest = _server_context(options, self.protocols)
        except Exception as e:  # a bad file must not stop the reload or the listener
            log.error("proxy TLS listener {listener}: certificate not reloaded, the current "
                      "one stays: {error}", listener=self.description, error=e)
            return False
        if digest == self._digest:
            return False
        self.context, self._digest = context, digest
        from modcluster.tls import describe_certificate

        log.info("proxy TLS listener {listener}: new connections use {certificate}",
                 listener=self.description,
                 certificate=describe_certificate(options.certificate.to_cryptography()))
        return True

    def logPrefix(self) -> str:
        wrapped = self.wrappedFactory
        prefix = getattr(wrapped, "logPrefix", None)
        return (prefix() if prefix is not None else wrapped.__class__.__name__) + " (TLS)"

    def doStart(self) -> None:
        self.wrappedFactory.doStart()

    def doStop(self) -> None:
        self.wrappedFactory.doStop()

    def buildProtocol(self, addr) -> Optional[TLSServerConnection]:
        negotiating = self._negotiating
        if negotiating is not None:
            return negotiating(self, addr)
        inner = self.wrappedFactory.buildProtocol(addr)
        if inner is None:
            return None
        return self.protocol(self, inner)

    def log_failure(self, transport, fmt: str, error: ssl.SSLError) -> None:
        """A TLS error, logged at most once a minute per client address."""
        try:
            peer = transport.getPeer()
            host = getattr(peer, "host", None) or str(peer)
            port = getattr(peer, "port", "")
        except Exception:
            host, port = "?", ""
        text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        reason = getattr(error, "reason", None) or str(error) or error.__class__.__name__
        self.failures.warn(host, fmt, peer=text, reason=reason)


def listener_factory(options, protocols: Iterable[bytes], wrapped, clock,
                     description: Optional[str] = None) -> TLSServerFactory:
    """
    The factory to listen with on a plain TCP port for an C{ssl:} listener
    whose description gave C{options} (a C{CertificateOptions}); with
    C{description}, L{reload_certificates} re-reads its files.
    """
    protocols = tuple(protocols)
    context, digest = _server_context(options, protocols)
    factory = TLSServerFactory(context, wrapped, clock)
    if description is not None:
        factory.description, factory.protocols, factory._digest = description, protocols, digest
        _listeners.add(factory)
    return factory


def reload_certificates() -> int:
    """L{TLSServerFactory.reload} for every listener of this process; how many changed."""
    return sum(1 for factory in list(_listeners) if factory.reload())
