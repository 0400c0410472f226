"""
The client side of the data plane over HTTP/1.x: one L{ClientProtocol} per
client connection, created by L{modcluster.proxy.front.ProxyFactory}.

A client connection parses requests with httptools, serves them one at a time
(pipelined requests wait, parsed, in order), routes each with
L{modcluster.balancer.choose}, hands it as an L{IExchange} to the forwarder of
the node's scheme, relays the response with the client's framing, and fails
over, retries or answers an error as docs/data-plane.md describes.

Hot-path rules followed here: no Deferred, closure or log event per request;
one allocation per request (L{modcluster.proxy.exchange._Exchange}; none
for a remembered head on a kept-alive connection, which takes its previous
finished exchange again); one write per batch of response events (the head
waits for the body bytes of the same read); timeouts are enforced by one
sweep per second over all connections, not by timers.  A request head seen
before (the exact bytes, one request without a body) is not parsed again:
L{ProxyFactory.request_heads} remembers what parsing it gave.
"""

from __future__ import annotations

import re
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from httptools import (HttpParserCallbackError, HttpParserError, HttpParserUpgrade,
                       HttpRequestParser)
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    IPushProducer,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from modcluster.accesslog import text
from modcluster.balancer import (
    Decision,
    Refusal,
    choose,
    parse_host,
    path_refusal,
    valid_host,
)
from modcluster.proxy._transport import (
    LEAN_SERVER,
    SENT_WHOLE,
    IStreamTransport,
    close_sent,
    direct_writer,
    is_plain_tcp,
    lose_connection,
    send_last,
    set_nodelay,
)
from modcluster.proxy.deadlines import SWEEP_INTERVAL, ClientDeadlines
from modcluster.proxy.exchange import (
    _P_BUFFER,
    _P_EXCHANGE,
    _P_PIPELINE,
    _P_UPGRADE,
    _P_UPSTREAM,
    BODY_BUFFER,
    RequestHead,
    _Exchange,
)
from modcluster.proxy.headers import (
    PLAIN_CONNECTION,
    REQ_CONNECTION,
    REQ_CONTENT_LENGTH,
    REQ_COOKIE,
    REQ_EXPECT,
    REQ_FORWARDED,
    REQ_HOST,
    REQ_PROXY_CONNECTION,
    REQ_TRANSFER_ENCODING,
    REQ_UPGRADE,
    REQUEST_HEADER_EXACT,
    REQUEST_HEADER_KIND,
    connection_tokens,
    drop_listed,
    error_response,
)
from modcluster.proxy.interfaces import (
    IDEMPOTENT_METHODS,
    ClientInfo,
)
from modcluster.proxy.stdtls import LEAN_TLS as _LEAN_TLS
from modcluster.proxy.upgrade import BodyAfterUpgrade

if TYPE_CHECKING:
    from modcluster.proxy.front import ProxyFactory

__all__ = ["ClientProtocol", "SWEEP_INTERVAL"]

log = Logger(namespace="modcluster.proxy")

#: Pipelined requests parsed ahead of the one being served; more closes the
#: connection once the queue is served.
MAX_PIPELINE = 128
#: Seconds a connection closed after an unread request body keeps draining the
#: client (lingering close, so the error response is not destroyed by a RST).
LINGER = 2.0
#: Request heads remembered (L{ProxyFactory.request_heads}): at most this many,
#: of at most this many bytes each.
REQUEST_MEMO_SIZE = 256
REQUEST_MEMO_BYTES = 2048
#: Request heads seen once (L{ProxyFactory.request_seen}), at most.
REQUEST_SEEN_SIZE = 1024
#: Finished exchanges of remembered heads that closed connections left for
#: the next connections (L{ProxyFactory.spare_exchanges}), at most.
SPARE_EXCHANGES = 64

_HEAD = b"HEAD"
_CONNECT = b"CONNECT"
_TRACE = b"TRACE"
_CONTINUE = b"100-continue"
_HEAD_END = b"\r\n\r\n"
#: Request lines parsed here rather than by llhttp, for a header block seen
#: before (L{ProxyFactory.request_blocks}): a subset of what llhttp accepts
#: (usual methods, origin-form targets of RFC 3986 characters, HTTP/1.x);
#: anything else goes through the parser.
_REQUEST_LINE = re.compile(
    rb"(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH) (/[-A-Za-z0-9._~!$&'()*+,;=:@/?%]*) "
    rb"HTTP/1\.([01])")


#: The HTTP/2 connection preface (RFC 9113 §3.4), which llhttp reads as a
#: request and stops at with this error (its C{HPE_PAUSED_H2_UPGRADE}).
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_PREFACE_PAUSE = "Pause on PRI/Upgrade"


class AcceptTime(float):
    """
    The coarse clock at a connection's accept, as its first request head's
    start (C{ClientProtocol._head_start}, from L{ProxyFactory.accept_time}):
    a float whose class says that no request head was begun before on the
    connection (every later head start is a plain float, or None), which
    tells an h2c connection preface that it is the connection's first bytes
    (L{ClientProtocol._h2c}) without a per-request flag.
    """

    __slots__ = ()


_new = object.__new__
#: ClientProtocol._queue before a request is queued (read as an empty deque)
_NO_QUEUE: Any = ()


class _TooManyPipelined(Exception):
    pass


@implementer(IPushProducer, IHandshakeListener, IHalfCloseableProtocol)
class ClientProtocol(Protocol, ClientDeadlines):
    """
    One client connection.  It is its transport's push producer, so a client
    that does not read pauses the node connection feeding it.
    """

    #: the address given to L{ProxyFactory.buildProtocol} (the peer), if any
    _addr = None
    #: bytes read after an Upgrade request head, held until the node answers
    #: 101 (L{_upgraded}, L{_startTunnel})
    _early: Optional[bytes] = None
    # Set by makeConnection before any other method is called (never None
    # after), and only annotated here: no class attribute.
    transport: IStreamTransport

    # State that few connections ever set (a lingering close, an Upgrade, a
    # timed request body, a client not reading, pipelined requests): class
    # defaults, not set by __init__.  CPython 3.11 shares one key table among
    # a class's instances for at most 29 attribute names, whose room shrinks
    # by one with every instance made (so only names stored early get in); an
    # instance that stores a name beyond those gets a dictionary
    # of its own (~1.5 KB, built and copied when it is stored, and freed:
    # ~4 500 - 6 000 machine instructions per connection).  So every name
    # an ordinary connection stores (plain TCP or TLS, kept alive or
    # Connection: close, read or left unread by the accept loop) is set by
    # __init__ (27) or by makeConnection (connected, transport): 29; the rare
    # ones come after (test_proxy_fastpaths.py checks).
    #: when a lingering close gives up (0: not lingering)
    _linger_until = 0.0
    #: the Upgrade request whose head the parser just finished
    _upgrading: Optional[_Exchange] = None
    #: the request body being timed (set by the sweep when it first sees the
    #: body): since when, from which byte count
    _body_timed: Optional[_Exchange] = None
    _body_since = 0.0
    _body_base = 0
    #: since when the client does not read its response (with _blocked)
    _blocked_since = 0.0
    #: in _next (pipelined requests, or a request after which nothing is read)
    _in_next = False

    def __init__(self, factory: "ProxyFactory", addr=None) -> None:
        self.factory = factory
        self._addr = addr
        # made by the first read that needs it (a request head remembered by
        # ProxyFactory.request_heads needs none: most Connection: close
        # clients never make one); None again once an Upgrade becomes a
        # tunnel (nothing more is parsed) or the connection is lost
        self._parser: Optional[HttpRequestParser] = None
        self._reading: Optional[_Exchange] = None
        self._current: Optional[_Exchange] = None
        # pipelined requests waiting: an empty tuple until the first one
        # (_enqueue makes the deque, a 64-slot block: most connections never
        # queue a request)
        self._queue: deque[_Exchange] = _NO_QUEUE
        self._out: list[bytes] = []
        self._pause = 0
        self._closing = False
        self._ignore = False
        self._seen = factory.now
        self._head_bytes = 0
        # read deadlines (checkTimeout): when the request head being received
        # began (the accept for the first one; None between requests); the
        # request body being timed is set by the sweep when it first sees the
        # body (class defaults above)
        # (an AcceptTime: no head begun before, see _h2c)
        self._head_start: Optional[float] = factory.accept_time
        self._blocked = False
        self._tunnel: Optional[_Exchange] = None
        # while the parser reads bytes that may be one request head to
        # remember (ProxyFactory.request_heads): the bytes, the request_blocks
        # key when the request line allows one, and the template once parsed
        self._record: Optional[bytes] = None
        self._record_block: Optional[tuple[bytes, bytes, bytes]] = None
        self._captured: Optional[RequestHead] = None
        self._feeding = False  # in the parser's feed_data
        # the template of the last request head of this connection found in
        # ProxyFactory.request_heads: the next read is compared with its bytes
        # (RequestHead.raw, None once the memo forgot it) before the lookup,
        # which hashes the read (a kept-alive client repeats its head).  Set
        # here, not a class default: an attribute most connections set later
        # would cost the instance its shared key dictionary.
        self._last_head: Optional[RequestHead] = None
        # the connection's last exchange once finished, if it can serve the
        # next remembered head (_exchangeDone, _remembered); None when lost
        # (it refers to this protocol: no cycle left for the cyclic GC)
        self._spare: Optional[_Exchange] = None
        # the connection's writer, made by the first write (_write)
        self._writer: Optional[Callable[[bytes], None]] = None
        # the client ended its sending (FIN) after complete requests: answer
        # them, then close (readConnectionLost).  Rarely set, but read after
        # every response (_exchangeDone): an attribute of the instance, which
        # CPython 3.11 reads specialised, not a class default (a generic
        # lookup through the class for every instance that lacks it)
        self._read_closed = False
        self.client: Optional[ClientInfo] = None
        #: the factory's L{Observer} (access log, client metrics) or None
        self._observer = factory.observer
        # the accept loop left the connection unregistered for reading
        # (deferReading, every Connection: close request read whole): the
        # sweep, or drain, registers it
        self._unread = False
        # a TLS client finished its handshake (handshakeCompleted)
        self._handshaken = False

    # -- connection ------------------------------------------------------------

    def connectionMade(self) -> None:
        t: Any = self.transport
        if (t.__class__ is LEAN_SERVER and not t.TLS and t.producer is None
                and not t.disconnected):
            # a plain TCP connection (the accept loop's, usually): what
            # set_nodelay, ISSLTransport.providedBy and registerProducer(self,
            # True) do for it, without their four Python calls
            if not getattr(t, "_nodelay_inherited", False):
                set_nodelay(t)
            # ClientInfo(host, port, transport=t) without the Python call of its
            # __init__ (the same slots: test_proxy_client.py compares them), the
            # peer's host and port from the transport's client tuple (what
            # getPeer() makes its address of: the accept loop makes none,
            # ProxyFactory.accept_protocol)
            client = t.client
            info = _new(ClientInfo)
            info.remote_addr = client[0]
            info.remote_port = client[1]
            info.secure = False
            info.transport = t
            info.forwarder_facts = None
            info.http_forwarded = None
            info._local = None
            self.client = info
            t.producer = self
            t.streamingProducer = True
        elif (t.__class__ in _LEAN_TLS and (tcp := t.transport).__class__ is LEAN_SERVER
                and tcp.producer is None and not tcp.disconnected):
            # the stdlib TLS layer on a plain tcp.Server (an ssl: listener): what
            # the branch below does, without the Python calls of ClientInfo's
            # __init__ and of the layer's registerProducer (the TCP transport's)
            peer = self._addr
            if peer is None:
                peer = t.getPeer()
            if not t._nodelay_inherited:
                set_nodelay(t)
            info = _new(ClientInfo)
            info.remote_addr = getattr(peer, "host", "") or ""
            info.remote_port = getattr(peer, "port", 0) or 0
            info.secure = True
            info.transport = t
            info.forwarder_facts = None
            info.http_forwarded = None
            info._local = None
            self.client = info
            tcp.producer = self
            tcp.streamingProducer = True
        else:
            # the peer address the listening port built for buildProtocol (the
            # same as getPeer() gives, also under TLS): not a second one
            peer = self._addr
            if peer is None:
                peer = t.getPeer()
            if not getattr(t, "_nodelay_inherited", False):  # (the TLS layer's too)
                set_nodelay(t)
            self.client = ClientInfo(  # the local address is read when a forwarder asks
                getattr(peer, "host", "") or "", getattr(peer, "port", 0) or 0,
                secure=ISSLTransport.providedBy(t), transport=t)
            t.registerProducer(self, True)
        self.factory._clients.add(self)
        stats = self.factory.stats
        if stats is not None:
            stats.connections += 1
            stats.open += 1

    def _write(self, data: bytes) -> None:
        """
        Write to the transport.  The first call makes the connection's writer
        (L{direct_writer}) and keeps it as C{_writer}, which the per-response
        writes (L{_exchangeDone}, L{_flush}) call themselves once it is made:
        a C{Connection: close} response goes out by L{send_last} and most
        such connections never make one.  (Not the writer kept as an
        instance attribute C{_write} over this method: an instance attribute
        that shadows a method of the class is a generic lookup per access in
        CPython 3.11, whose specialised attribute reads and method calls
        both give up on it; C{_writer} is an attribute of the instance only,
        read as a specialised one.)
        """
        write = self._writer
        if write is None:
            write = self._writer = direct_writer(self.transport)
        write(data)

    def deferReading(self) -> bool:
        """
        Asked by the accept loop (L{modcluster.proxy.accept}) after its eager
        first read, for a connection it has not registered for reading yet:
        true to leave it unregistered.  So while this protocol pauses its
        reading (resuming registers it, as C{transport.resumeProducing} does
        for any transport), and once a request after which nothing is read
        was read whole (C{Connection: close}, HTTP/1.0 without keep-alive, a
        refused request: C{_ignore}).  Reading would then only notice the
        client going away, which writing the response notices too; if the
        connection is still open at the next sweep (a slow node), the sweep
        registers it (L{startDeferredReading}).  A C{Connection: close}
        request answered in one write thus costs no C{epoll_ctl} pair.
        """
        if self._pause:
            return True
        if self._ignore and self._tunnel is None and not self._closing:
            self._unread = True
            return True
        return False

    def startDeferredReading(self) -> None:
        """Register the connection for reading if L{deferReading} left it unregistered."""
        if self._unread:
            self._unread = False
            if self.connected and not self._closing and not self._pause:
                self.transport.resumeProducing()

    def handshakeCompleted(self) -> None:
        """L{IHandshakeListener}: a TLS client finished its handshake."""
        self._handshaken = True
        stats = self.factory.stats
        if stats is not None:
            stats.tls_handshakes += 1

    def readConnectionLost(self) -> None:
        """
        L{IHalfCloseableProtocol}: the client shut its sending side (a plain
        TCP connection read to its end of stream).  After complete requests
        (one being served, others queued behind it, nothing partial) that is
        not a vanished client: they are answered, then the connection is
        closed, as httpd and HAProxy do.  Otherwise (no request in flight, a
        partial one, a tunnel, a close already under way) the connection
        ends now, as a full close would end it.
        """
        if (self._current is not None and self._reading is None and self._head_start is None
                and not self._closing and self._tunnel is None and self.connected):
            self._read_closed = True
            return
        if self.connected:
            if self._reading is None and not self._feeding:
                lose_connection(self.transport)
            else:
                self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """L{IHalfCloseableProtocol}: our sending side is shut (a lingering close)."""

    def connectionLost(self, reason=None) -> None:
        self.connected = 0
        f = self.factory
        if self in f._clients:
            f._clients.discard(self)
            stats = f.stats
            if stats is not None:
                stats.open -= 1
                client = self.client
                if client is not None and client.secure and not self._handshaken:
                    stats.tls_failures += 1
        self._closing = True
        if self._out:
            self._out = []
        ex = self._current
        self._current = None
        if ex is not None:
            ex.abort()
        queue = self._queue
        if queue:
            for queued in queue:
                queued.done = True
            queue.clear()
        self._reading = None
        spare = self._spare
        if spare is not None:
            # the connection's finished exchange (see _exchangeDone) serves
            # a later connection's first remembered head (_remembered): it
            # lets go of this connection now (no protocol, transport or
            # ClientInfo kept alive by the factory's list, no cycle left)
            self._spare = None
            spares = f.spare_exchanges
            if len(spares) < SPARE_EXCHANGES and not spare.tunnel:
                # (proto: None until taken again, which sets it; resp_close:
                # a close answer's, not reset by _remembered, which a
                # connection's own spare never needs)
                spare.proto = spare.client = None  # type: ignore[assignment]
                spare.resp_close = False
                spares.append(spare)
        if not self._feeding:
            # The parser holds bound methods of this protocol: without that cycle
            # the connection's objects go when the transport lets go of them,
            # instead of waiting for the cyclic GC (whose collections, driven by
            # ~24 such objects per connection, paused the process for up to 50 ms)
            self._parser = None

    # -- IPushProducer (the client's write buffer) -------------------------------

    def pauseProducing(self) -> None:
        self._blocked = True
        self._blocked_since = self.factory.now
        ex = self._current
        if ex is not None and ex.upstream is not None:
            ex.upstream.pauseResponse()

    def resumeProducing(self) -> None:
        self._blocked = False
        ex = self._current
        if ex is not None and ex.upstream is not None:
            ex.upstream.resumeResponse()

    def stopProducing(self) -> None:
        pass

    # -- reading ---------------------------------------------------------------

    def _pauseReading(self, why: int) -> None:
        if not self._pause and self.connected:
            self.transport.pauseProducing()
        self._pause |= why

    def _resumeReading(self, why: int) -> None:
        if self._pause & why:
            self._pause &= ~why
            if not self._pause and self.connected and not self._closing:
                self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        self._seen = self.factory.now
        tunnel = self._tunnel
        if tunnel is not None:
            if not tunnel.done:
                tunnel._bodyData(data)
            return
        if self._ignore:
            return
        reading = self._reading
        record = None
        if reading is None:
            last = self._last_head
            if last is not None and data == last.raw:
                # the same request head as this connection's last one
                if self._current is None and not self._queue:
                    self._remembered(last)
                    return
            elif data.endswith(_HEAD_END) and len(data) <= REQUEST_MEMO_BYTES:
                # One request head without a body, as seen before?
                f = self.factory
                template = f.request_heads.entries.get(data)
                if template is None:
                    key: Union[bytes, tuple[bytes, bytes, bytes]] = data
                    if f.split_heads:
                        # the same header block after another request line?
                        i = data.find(b"\r\n")
                        m = _REQUEST_LINE.fullmatch(data, 0, i)
                        if m is not None:
                            key = (m[1], m[3], data[i + 2:])
                            template = f.request_blocks.entries.get(key)
                            if (template is not None and self._current is None
                                    and not self._queue):
                                self._remembered(template, m[2])
                                return
                    # remembered from the second time on: a head seen once
                    # costs no template
                    seen = f.request_seen
                    if key in seen.entries:
                        self._record = record = data
                        if key is not data:
                            if TYPE_CHECKING:  # the request_blocks key, not the bytes
                                assert isinstance(key, tuple)
                            self._record_block = key
                    else:
                        seen.put(key, True)
                elif self._current is None and not self._queue:
                    self._last_head = template
                    self._remembered(template)
                    return
            if self._head_start is None:
                self._head_start = self._seen
            self._head_bytes += len(data)
        elif reading.head_size >= 0:
            self._head_bytes += len(data)
        self._feeding = True
        parser = self._parser
        if parser is None:  # (a tunnel, which has none, returned above)
            parser = self._parser = HttpRequestParser(self)
        try:
            parser.feed_data(data)
        except HttpParserUpgrade as e:
            self._upgraded(data[e.args[0]:])
        except HttpParserError as e:
            self._parseFailed(e, data)
        else:
            if record is not None:
                captured = self._captured
                if captured is not None and self._reading is None:
                    # exactly one request, complete: remember its head
                    f = self.factory
                    f.request_heads.put(record, captured)
                    block = self._record_block
                    if block is not None:
                        # and its header block, for other targets
                        f.request_blocks.put(block, captured.without_target())
        finally:
            self._feeding = False
        if record is not None:
            self._record = self._captured = self._record_block = None
        reading = self._reading
        if (reading is not None and reading.head_size >= 0
                and self._head_bytes > self.factory.config.max_header_size and not self._ignore):
            self._requestError(431, "request head too large")

    def _feed(self, data: bytes) -> None:
        parser = self._parser
        if TYPE_CHECKING:  # not fed once a tunnel (nothing parsed after an Upgrade)
            assert parser is not None
        try:
            parser.feed_data(data)
        except HttpParserUpgrade as e:
            self._upgraded(data[e.args[0]:])
        except HttpParserError as e:
            self._parseFailed(e)

    def _parseFailed(self, e: HttpParserError, data: bytes = b"") -> None:
        """
        llhttp refused the bytes it was fed: answer the request 400 (505,
        431, 500), or, for an HTTP/2 connection preface with C{h2c} on, hand
        the connection to HTTP/2 (L{_h2c}; C{data}: the bytes fed).
        """
        if self._ignore:
            return
        cause = e.__context__ if e.__context__ is not None else e
        if isinstance(cause, HttpParserUpgrade):
            # raised while _upgraded fed what followed an Upgrade request,
            # inside the handler of its HttpParserUpgrade: Python made that the
            # context, in place of what a callback raised (_TooManyPipelined
            # and _RequestRefused set _ignore before raising, so only a bug
            # lands here as a callback error)
            cause = e if not isinstance(e, HttpParserCallbackError) else RuntimeError(
                f"a request callback failed after an Upgrade request: {e}")
        if isinstance(cause, _TooManyPipelined):
            self._ignore = True
            return
        if isinstance(cause, _RequestRefused):
            return
        if not isinstance(cause, HttpParserError):
            log.failure("bug while parsing a request", Failure(cause))
            self._requestError(500, "internal error")
            return
        why = str(e)
        if why == "Invalid HTTP version":
            # llhttp refuses versions other than 0.9, 1.0, 1.1, 2.0
            self._requestError(505, "HTTP version not supported")
            return
        if why == _PREFACE_PAUSE and self._h2c(data):
            return
        self._requestError(400, f"malformed request: {e}")

    def _h2c(self, data: bytes) -> bool:
        """
        llhttp stopped at the end of an HTTP/2 connection preface
        (L{H2_PREFACE}), the last of its bytes in C{data}.  With C{h2c} on, on
        a plain (not TLS) connection whose first bytes it is, the connection
        becomes an L{H2Protocol<modcluster.proxy.h2.H2Protocol>} (HTTP/2 with
        prior knowledge, RFC 9113 §3.3), given what followed the preface in
        C{data}; true then.  False: the preface is answered as any malformed
        request (400), as without C{h2c}.

        Only this error path looks for the preface: an HTTP/1.1 request
        never comes here, and a preface split over several reads (even
        byte by byte) is reassembled by llhttp itself.  Its first bytes: no
        request head was begun before it on the connection (C{_head_start}
        is still the accept's L{AcceptTime}; the head of a request served
        or pipelined before made it a plain float or None), and the bytes
        llhttp read for it are exactly the preface's 24 (L{_head_bytes} has
        counted every byte of the connection; llhttp allows a leading CRLF
        and other target forms in front of its own check of the rest, and
        this refuses them).
        """
        f = self.factory
        client = self.client
        t: Any = self.transport
        ex = self._reading
        if (not f.config.h2c or client is None or client.secure
                or self._head_start.__class__ is not AcceptTime
                or ex is None or ex.target != b"*" or self._current is not None
                or self._queue or getattr(t, "protocol", None) is not self):
            return False
        after = self._head_bytes - len(H2_PREFACE)  # bytes after the preface, all in data
        cut = len(data) - after
        if after < 0 or cut < 0 or not H2_PREFACE.endswith(data[:cut]):
            return False
        from modcluster.proxy.h2 import H2Protocol  # (not imported by HTTP/1.1-only processes)

        # this protocol lets go of the connection: nothing more is read,
        # written or counted by it (the H2Protocol counts the connection)
        self._reading = None
        self._parser = None
        self._closing = self._ignore = True
        self.connected = 0
        f._clients.discard(self)
        stats = f.stats
        if stats is not None:
            stats.connections -= 1
            stats.open -= 1
        if t.producer is self:
            t.unregisterProducer()
        h2 = H2Protocol(f)
        t.protocol = h2  # (the transport reads it for every event)
        h2.makeConnection(t)
        # (h2 reads the preface itself, as on a connection of its own)
        h2.dataReceived(H2_PREFACE + data[cut:] if after else H2_PREFACE)
        if h2._blocked:
            # the client does not read: the accept loop's first read asks
            # deferReading whether to register the connection for reading
            # (H2Protocol.resumeProducing does it)
            self._pause = _P_UPSTREAM
        return True

    def on_message_begin(self) -> None:
        if len(self._queue) >= MAX_PIPELINE:
            self._ignore = True  # (set here too: see _parseFailed)
            raise _TooManyPipelined()
        ex = _Exchange(self)
        self._reading = ex
        self._captured = None  # a second request in the bytes being recorded

    def on_url(self, url: bytes) -> None:
        ex = self._reading
        if TYPE_CHECKING:  # the parser calls back only between message begin and complete
            assert ex is not None
        ex.target += url
        ex.head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self._reading
        if TYPE_CHECKING:  # the parser calls back only between message begin and complete
            assert ex is not None
        if ex.head_size < 0:
            return  # a trailer of a chunked body: not forwarded
        ex.head_size += len(name) + len(value) + 4
        kind = REQUEST_HEADER_EXACT.get(name)
        if kind is None:
            kind = REQUEST_HEADER_KIND.get(name.lower(), 0)
        if not kind:
            ex.headers.append((name, value))
        elif kind == REQ_HOST:
            if ex.host is not None:
                ex.error = (400, "more than one Host header")
            ex.host = value
        elif kind == REQ_COOKIE:
            ex.headers.append((name, value))
            if ex.cookies is None:
                ex.cookies = [value]
            else:
                ex.cookies.append(value)
        elif kind == REQ_CONTENT_LENGTH:
            try:
                ex.body_length = int(value)
            except ValueError:
                ex.error = (400, "bad Content-Length")
        elif kind == REQ_CONNECTION:
            if ex.connection is None:
                ex.connection = [value]
            else:
                ex.connection.append(value)
        elif kind == REQ_FORWARDED:
            ex.headers.append((name, value))
            ex.x_forwarded = True
        elif kind == REQ_EXPECT:
            if value.strip().lower() == _CONTINUE:
                ex.expect_continue = True
            else:
                ex.error = (417, "unsupported Expect")
        elif kind == REQ_UPGRADE:
            ex.upgrade_token = value
        elif kind == REQ_TRANSFER_ENCODING:
            # llhttp refuses a request whose last coding is not chunked
            ex.body_length = -1
            if value.strip().lower() != b"chunked":
                ex.error = (501, "transfer codings other than chunked are not supported")
        elif kind == REQ_PROXY_CONNECTION:
            ex.proxy_connection = True  # removed
        # other REQ_DROP names: removed

    def on_headers_complete(self) -> None:
        ex = self._reading
        p = self._parser
        if TYPE_CHECKING:  # the parser calls back only between message begin and complete
            assert ex is not None and p is not None
        f = self.factory
        cfg = f.config
        keep_alive = ex.keep_alive = p.should_keep_alive()
        connection = ex.connection
        if keep_alive and connection is None and not ex.proxy_connection:
            # llhttp: without Connection (or Proxy-Connection) only HTTP/1.1 is
            # keep-alive; get_http_version() formats a new string each time.
            ex.version = "1.1"
        else:
            ex.version = p.get_http_version()
            if ex.version != "1.0" and ex.version != "1.1" and ex.error is None:
                # llhttp accepts 0.9 and 2.0 (refusing other versions itself,
                # see _parseFailed); only these two are not keep-alive by
                # default, so the branch above never sees them.
                ex.error = (505, f"HTTP/{ex.version} is not supported")
        method = ex.method = p.get_method()
        upgrade = p.should_upgrade()
        size = ex.head_size
        ex.head_size = -1
        self._head_bytes = 0
        self._head_start = None
        if connection is not None and (len(connection) > 1
                                       or connection[0] not in PLAIN_CONNECTION):
            ex.headers = drop_listed(ex.headers, connection_tokens(connection))
        ex.idempotent = method in IDEMPOTENT_METHODS
        if not ex.body_length:
            ex.expect_continue = False
            if not upgrade:
                ex.body_done = True  # nothing more to read for this request
        elif ex.version == "1.0":
            ex.expect_continue = False
        if upgrade:
            self._upgrading = ex
        if ex.error is None:
            ex.error = self._checkHead(ex, size, upgrade, cfg)
        if upgrade and ex.body_length:
            ex.skipped_body = True  # llhttp does not read the body of an Upgrade request
        if (upgrade and ex.error is None and ex.upgrade_token is not None and f.tunnel
                and not ex.body_length and f.upgrade_match(ex.upgrade_token) is not None):
            ex.tunnel_candidate = True
            ex.upgrade_token = f.upgrade_match(ex.upgrade_token)
        if self._record is not None:
            # the first request of bytes that may be exactly one head: what
            # parsing it gave, if it has no body (nor Upgrade, nor error)
            self._record = None
            if ex.error is None and not upgrade and not ex.body_length:
                self._captured = ex.template()
        if self._current is None and not self._queue:
            self._current = ex
            if ex.error is None:
                try:
                    ex.route()
                except Exception:
                    self._routingBug(ex)
            else:
                self._start(ex)
        else:
            self._enqueue(ex)
            self._pauseReading(_P_PIPELINE)

    def _enqueue(self, ex: _Exchange) -> None:
        """Queue C{ex} behind the exchange being served."""
        queue = self._queue
        if queue is _NO_QUEUE:
            queue = self._queue = deque()
        queue.append(ex)

    def _checkHead(self, ex: _Exchange, size: int, upgrade: bool, cfg) -> Optional[tuple]:
        limit = cfg.max_header_size
        if len(ex.target) > limit:
            return (414, "request target too long")
        if size > limit:
            return (431, "request head too large")
        if ex.method == _CONNECT:
            return (405, "CONNECT is not supported")
        if ex.method == _TRACE and not cfg.allow_trace:
            return (405, "TRACE is not allowed")
        if ex.version == "1.1" and ex.host is None:
            return (400, "HTTP/1.1 request without Host")
        target = ex.target
        if target[:1] != b"/":
            if target == b"*":
                pass
            else:
                i = target.find(b"://")
                if i <= 0:
                    return (400, "bad request target")
                rest = target[i + 3:]
                j = rest.find(b"/")
                authority, target = (rest, b"/") if j < 0 else (rest[:j], rest[j:])
                if not authority:
                    return (400, "bad request target")
                ex.host = authority
                ex.target = target
        host = ex.host
        if host is not None and host not in self.factory.valid_hosts.entries:
            if not valid_host(host):
                return (400, "invalid Host")
            self.factory.rememberHost(host)
        if 0x23 in target:  # '#' (an int: memchr, no buffer protocol)
            return (400, "fragment in the request target")
        q = target.find(b"?")
        if q >= 0:
            ex.query = target[q + 1:]
            target = target[:q]
        path = ex.path = target.decode("utf-8", "surrogateescape")
        if "%" in path or "/." in path or "\\" in path:
            why = path_refusal(path)
            if why is not None:
                return (400, why)
        if ex.body_length is not None and ex.body_length > 0 and cfg.max_request_body \
                and ex.body_length > cfg.max_request_body:
            return (413, "request body larger than max_request_body")
        return None

    def _remembered(self, template: RequestHead, target: Optional[bytes] = None) -> None:
        """
        A request head in L{ProxyFactory.request_heads} (or its header block
        in L{ProxyFactory.request_blocks}, with C{target} from the request
        line): what C{on_message_begin}, C{on_url}, C{on_header},
        C{on_headers_complete} and C{on_message_complete} do for it, without
        the parser (which stays at the message boundary where the previous
        request left it).
        """
        f = self.factory
        ex = self._spare
        if ex is None:
            spares = f.spare_exchanges
            if spares:
                # one a lost connection left (connectionLost): made this
                # connection's
                ex = spares.pop()
                ex.proto = self
                ex.client = self.client
        if ex is None:
            ex = _Exchange(self, template)
        else:
            self._spare = None
            # this connection's last exchange or another's, finished (see
            # _exchangeDone): what _Exchange(self, template) sets, on the
            # slots that a finished exchange of a remembered head can differ
            # in (a test compares every slot with a new exchange's).  No
            # allocation, no ~50 slot stores and their deallocation per
            # request.
            if ex.head_template is not template:
                (ex.method, ex.target, ex.version, ex.headers, ex.host,
                 ex.body_length, ex.keep_alive, ex.path, ex.query, ex.cookies,
                 ex.upgrade_token, ex.x_forwarded, ex.proxy_connection,
                 ex.idempotent) = template.values
                ex.head_template = template
            # (else: the same template, whose fields a kept exchange still
            # has: nothing changes them once made but StickySessionRemove,
            # whose exchanges are not kept, and retarget, of the header
            # blocks' templates, which a target always comes with: below)
            ex.flowing = ex.end_sent = ex.resp_started = ex.done = ex.no_body = \
                ex.resp_chunked = False
            ex.status = ex.sent = 0
            obs = self._observer
            if obs is not None:
                # (obs.clock read, then called: an instance attribute called
                # as obs.clock() is a method call the interpreter does not
                # specialise, a generic lookup per call; see Observer)
                clock = obs.clock
                ex.start = clock()
                ex.up_start = 0.0
                ex.upstream_time = -1.0
        if target is not None:
            ex.retarget(target)
        self._head_start = None
        self._reading = ex
        self._current = ex
        path = ex.path
        if target is not None and ("%" in path or "/." in path):
            # a new target after a remembered header block: the path checks
            # of _checkHead (_REQUEST_LINE admits no '#' nor '\\')
            why = path_refusal(path)
            if why is not None:
                ex.error = (400, why)
                ex.keep_alive = False
                self._reading = None
                self._respondError(ex, 400, why)
                return
        try:
            # _Exchange.route, inlined (a call fewer per request; a new
            # exchange: no wait, not done, nothing excluded)
            policy = f.policy
            host = (parse_host(ex.host) if policy.use_alias and ex.host is not None
                    else None)
            cookie = None
            if ex.cookies is not None:
                cookie = b"; ".join(ex.cookies).decode("utf-8", "surrogateescape")
            # the table as an attribute the registry keeps current (a call
            # fewer per request; None after a change: snapshot() builds it)
            table = f.table_now
            if table is None:
                table = f.table()
            d = choose(table, host, path, cookie, f.now, policy, ex.exclude)
            if d.__class__ is Decision:
                if TYPE_CHECKING:  # (__class__ is: the hot path's cheaper isinstance)
                    assert isinstance(d, Decision)
                ex._attempt(d, cookie, False)
            else:
                if TYPE_CHECKING:
                    assert isinstance(d, Refusal)
                ex._refused(d)
        except Exception:
            self._routingBug(ex)
        # (no _bodyEnd: the body is done from the start, and the end goes
        # when a forwarder asks for the body: _attempt, _deliver)
        self._reading = None
        if not ex.keep_alive:
            self._ignore = True  # nothing after a "close" request is read

    def on_body(self, data: bytes) -> None:
        ex = self._reading
        if TYPE_CHECKING:  # the parser calls back only between message begin and complete
            assert ex is not None
        ex.body_received += len(data)
        limit = self.factory.config.max_request_body
        if limit and ex.body_received > limit:
            self._requestError(413, "request body larger than max_request_body")
            raise _RequestRefused()
        if ex is self._current and not ex.done:
            ex._bodyData(data)
        elif not ex.done:
            if ex.body is None:
                ex.body = [data]
            else:
                ex.body.append(data)
            ex.body_held += len(data)

    def on_message_complete(self) -> None:
        ex = self._reading
        if TYPE_CHECKING:  # the parser calls back only between message begin and complete
            assert ex is not None
        self._reading = None
        if ex.skipped_body or ex.tunnel_candidate:
            return  # the body (or the tunnel) is read after the Upgrade exception
        if ex is self._current and not ex.done:
            ex._bodyEnd()
        else:
            ex.body_done = True
        if not ex.keep_alive:
            self._ignore = True  # nothing after a "close" request is read

    def _upgraded(self, rest: bytes) -> None:
        """httptools stopped at the end of an Upgrade (or CONNECT) request head."""
        ex = self._upgrading
        self._upgrading = None
        if ex is None or ex.error is not None or ex.done:
            self._ignore = True
            return
        if ex.tunnel_candidate:
            # Hold what follows (early tunnel bytes) until the node answers
            # 101 (_startTunnel): sent at once, they would follow the Upgrade
            # request on the node connection, and a node that refuses the
            # upgrade would read them as its next request, one this proxy
            # never checked nor routed (upgrade request smuggling).
            self._parser = None
            self._ignore = True
            if rest:
                self._early = rest
            self._pauseReading(_P_UPGRADE)
            return
        # Not tunnelled: the Upgrade header is dropped and the request is plain
        # HTTP.  llhttp skipped its body, so a fresh parser reads on.
        self._parser = HttpRequestParser(self)
        if ex.skipped_body:
            ex.skipped_body = False
            wrapper = BodyAfterUpgrade(self, ex)
            self._parser = parser = HttpRequestParser(wrapper)
            wrapper.parser = parser
            self._reading = ex
            ex.head_size = -1
            length = ex.body_length
            if TYPE_CHECKING:  # skipped_body: llhttp skipped a body, so it has a length
                assert length is not None
            framing = (b"Transfer-Encoding: chunked" if length == -1
                       else b"Content-Length: %d" % length)
            parser.feed_data(b"POST / HTTP/1.1\r\n" + framing + b"\r\n\r\n")
        if rest:
            self._feed(rest)

    def _requestError(self, status: int, message: str) -> None:
        """
        The request being parsed is refused (malformed, too large, too slow):
        answer it in turn, then close; nothing more is read.
        """
        self._ignore = True
        ex = self._reading
        self._reading = None
        if ex is not None and ex.head_size < 0:
            # in the body of a request already being served or queued
            if ex is self._current:
                if ex.resp_started:
                    self._abortClient()
                else:
                    self._respondError(ex, status, message)
            elif not ex.done:
                ex.error = (status, message)
            return
        ex = _Exchange(self)
        ex.error = (status, message)
        ex.keep_alive = False
        if self._current is None and not self._queue:
            self._current = ex
            self._start(ex)
        else:
            self._enqueue(ex)

    # -- serving -----------------------------------------------------------------

    def _start(self, ex: _Exchange) -> None:
        if ex.error is not None:
            self._respondError(ex, *ex.error)
            return
        if ex.body_held >= BODY_BUFFER:
            self._pauseReading(_P_BUFFER)
        try:
            ex.route()
        except Exception:
            self._routingBug(ex)

    def _routingBug(self, ex: _Exchange) -> None:
        log.failure("bug while routing {method} {target}", method=text(ex.method),
                    target=text(ex.target))
        if ex.resp_started:
            self._abortClient()
        else:
            self._respondError(ex, 500, "internal error")

    def _exchangeDone(self, ex: _Exchange, close: bool, last: Optional[bytes] = None) -> None:
        """
        C{ex}, the current exchange, is done (its response written to
        C{_out}, and C{last}, its whole response's bytes, if given: what
        L{_Exchange.responseWhole} hands over instead of appending it to
        C{_out}, a list append and a list fewer per request): write what
        it left, then close the connection or go on with the next request.
        """
        if ex is not self._current:
            if last is not None:
                self._out.append(last)
            return
        self._current = None
        if (ex.head_template is not None and not ex.attempts and not ex.stale_retry
                and not ex.wait_until):
            # An exchange made from a remembered head (_remembered), answered
            # on its one attempt and finished (done: the forwarder and the
            # observer let go of it before responseEnd), keeps the state of
            # a new one but for the slots _remembered sets again: kept for
            # this connection's next remembered head, or, once the connection
            # is lost (a close answer: below), another connection's
            # (connectionLost).  Not one that failed over, retried or waited
            # (attempts, exclude, stale_retry, wait_until), nor one whose
            # headers StickySessionRemove changed (no head_template); not
            # another connection's if it became a tunnel (a 101 answer ends
            # the connection: connectionLost).  Its attempt's decision is let go now (no routing
            # snapshot kept alive by an idle connection).  Kept before the
            # answer is written: a write that finds the connection lost
            # (connectionLost, now) hands it on too.
            ex.decision = ex.node = None
            self._spare = ex
        # (_pause tested alone first: 0 but for a paused client, and the
        # interpreter's bitwise and of ints is a generic operation)
        if self._pause and self._pause & _P_EXCHANGE:
            self._resumeReading(_P_EXCHANGE)
        out = self._out
        if out:
            # (what an earlier step of the response left, as _flush writes it)
            if last is not None:
                out.append(last)
            data = None
            if self.connected:
                data = out[0] if len(out) == 1 else b"".join(out)
                self._out = []
        elif last is not None and not self.connected:
            out.append(last)  # (kept as it was: the connection is gone)
            data = None
        else:
            data = last
        if data is not None:
            if close and ex.body_done and self._reading is None and not self._feeding:
                # the last bytes before the close below (lose_connection at
                # once): their segment carries the FIN (send_last)
                sent = send_last(self.transport, data)
                if sent == SENT_WHOLE:
                    # what _close(linger=False) then does: lose_connection's
                    # fast path, which send_last found open to it
                    self._closing = True
                    self._ignore = True
                    t: Any = self.transport
                    if t.producer is self and self.__class__ is ClientProtocol:
                        t.producer = None  # (its stopProducing does nothing: not called)
                    close_sent(t)  # connectionLost, now
                    return
                if not sent:
                    self._write(data)
            else:
                write = self._writer  # (made by the first write: _write)
                if write is not None:
                    write(data)
                else:
                    self._write(data)
        if close or not ex.body_done:
            self._close(linger=not ex.body_done and not ex.tunnel)
            return
        if self._queue or self._ignore:
            self._next()
        elif self._read_closed:
            # the client sent nothing after this request (readConnectionLost)
            self._close(linger=False)
        elif self._pause and self._pause & _P_PIPELINE:
            self._resumeReading(_P_PIPELINE)

    def _next(self) -> None:
        if self._in_next:
            return
        self._in_next = True
        try:
            while self._current is None and self._queue and self.connected:
                ex = self._queue.popleft()
                self._current = ex
                self._start(ex)
        finally:
            self._in_next = False
        if self._current is None and (self._ignore or self._read_closed) and not self._tunnel:
            # (_read_closed: every request the client sent is answered)
            self._flush()
            self._close(linger=False)
            return
        if not self._queue:
            self._resumeReading(_P_PIPELINE)

    def _startTunnel(self, ex: _Exchange) -> None:
        self._tunnel = ex
        self._flush()
        early = self._early
        if early is not None:
            self._early = None
            ex._bodyData(early)
        self._resumeReading(_P_UPGRADE)

    def _respondError(self, ex: _Exchange, status: int, message: str,
                      retry_after: int = 0) -> None:
        """
        Answer C{ex} (the exchange being served) with the proxy's own error
        response, with one log line.
        """
        if ex is not self._current:
            return
        ex.detach()
        obs = self._observer
        if ex.resp_started:
            if obs is not None:
                obs.done(ex, ex.status, ex.sent)
            self._abortClient()
            return
        f = self.factory
        client = self.client
        # one line per error response, rate-limited per status (a client must
        # not be able to flood the log)
        if status != 408:  # a slow client: logged, rate-limited, by checkTimeout
            f.limiter.emit(status, LogLevel.warn if status >= 500 else LogLevel.info,
                           "{status} for {method} {target} from {client}: {message}",
                           status=status, method=text(ex.method) or "-",
                           target=text(ex.target) or "-",
                           client=client.remote_addr if client else "?", message=message)
        close = (not ex.keep_alive or not ex.body_done or ex.error is not None
                 or ex.tunnel_candidate)
        head_only = ex.method == _HEAD
        response = error_response(status, message, close=close, date=f.date,
                                  retry_after=retry_after, head_only=head_only)
        self._out.append(response)
        if obs is not None:
            ex.status = status
            obs.done(ex, status,
                     0 if head_only else len(response) - response.find(b"\r\n\r\n") - 4)
        self._current = None
        self._resumeReading(_P_UPSTREAM | _P_BUFFER | _P_UPGRADE)
        self._flush()
        if close:
            self._close(linger=not ex.body_done)
        else:
            self._next()

    # -- writing and closing -------------------------------------------------------

    def _flush(self) -> None:
        out = self._out
        if out and self.connected:
            data = out[0] if len(out) == 1 else b"".join(out)
            write = self._writer  # (made by the first write: _write)
            if write is not None:
                write(data)
            else:
                self._write(data)
            self._out = []

    def _close(self, linger: bool) -> None:
        self._closing = True
        self._ignore = True
        if not self.connected:
            return
        if linger and is_plain_tcp(self.transport):
            # Read and drop what the client still sends for a while, so our
            # answer reaches it before the socket is closed.
            self._linger_until = self.factory.now + LINGER
            self._pause = 0
            t: Any = self.transport  # a tcp.Server or tcp.Client (is_plain_tcp)
            t.resumeProducing()
            if t.producer is not None:
                # else, the answer over Twisted's high-water mark, the buffer
                # drained resumes us as producer instead of sending the FIN
                t.unregisterProducer()
            t.loseWriteConnection()
        elif self._reading is None and not self._feeding:
            lose_connection(self.transport)  # may call connectionLost now
        else:
            # inside parser callbacks: connectionLost must not run under them
            t = self.transport
            if is_plain_tcp(t) and t.producer is not None:
                t.unregisterProducer()  # (as lose_connection does)
            t.loseConnection()

    def _abortClient(self) -> None:
        self._closing = True
        self._ignore = True
        self._out = []
        ex = self._current
        if ex is not None:
            ex.abort()
            self._current = None
        if self.connected:
            self.transport.abortConnection()


class _RequestRefused(Exception):
    """Raised from a parser callback to stop parsing a refused request."""
