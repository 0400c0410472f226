"""
The AJP13 forwarder: L{AJPForwarder} implements
L{modcluster.proxy.interfaces.IForwarder} for nodes of type C{ajp}, with one
L{AJPPool} of keep-alive L{AJPConnection}s per node.

The front (L{modcluster.proxy.front}) owns routing, stickiness, failover,
counters and error pages for every node type; this module only moves one
exchange to one AJP connector and back:

 - FORWARD_REQUEST built from the L{IExchange} (ajp13.md §3.1, balancing.md
   §9.3) and encoded with the pool's shared L{ForwardRequestEncoder} before a
   connection is chosen (a request head that does not fit the packet size
   gets a local 400, as mod_proxy_ajp answers);
 - CPING before reuse according to C{proxy.ajp_cping} (C{always} /
   C{idle} / C{never});
 - request body streamed through L{AJPClientProtocol}'s GET_BODY_CHUNK flow
   control, response streamed back with the client's backpressure;
 - failures mapped to L{ForwardError} kinds the way the HTTP forwarder maps
   them, so the front treats both node types alike.

An L{AJPConnection} is both the L{IUpstream} of the exchange it carries and
the L{IAJPResponseReceiver} of its protocol, so a request on a pooled
connection allocates its FORWARD_REQUEST bytes, the protocol's body channel
and the relayed header block, and no Deferred.  Read timeouts and idle TTLs are
enforced from L{AJPForwarder.tick} (the front's once-a-second sweep); the only
timer per request is the CPING timeout, and only when a CPING is sent.
"""

from __future__ import annotations

import weakref
from http import HTTPStatus
from typing import TYPE_CHECKING, Optional, Union


from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from modcluster.accesslog import LogLimiter, text
from modcluster.ajp.packets import (
    AJPEncodeError,
    AJPProtocolError,
    ForwardRequestEncoder,
    RequestTooLarge,
)
from modcluster.ajp.protocol import (
    AJPClientProtocol,
    AJPReadTimeout,
    AJPRequestBody,
    CPingFailed,
    IAJPResponseReceiver,
)
from modcluster.memo import BoundedMemo
from modcluster.proxy._transport import direct_writer
from modcluster.proxy.headers import (
    BAD_REASON,
    RESP_CONNECTION,
    RESP_CONTENT_LENGTH,
    RESPONSE_HEADER_EXACT,
    RESPONSE_HEADER_KIND,
    connection_tokens,
    drop_listed,
    reason_phrase,
)
from modcluster.proxy.http import HEAD_MEMO_SIZE
from modcluster.proxy.pool import (
    PoolBase,
    PooledForwarder,
    LocalUpstream,
    connect_failed,
    connect_node,
    direct_address,
    node_endpoint,
)
from modcluster.proxy.interfaces import (
    CONNECT,
    PROTOCOL,
    RESET,
    TIMEOUT,
    ForwardError,
    IExchange,
    IForwarder,
    INodeConnection,
    IUpstream,
)

__all__ = ["AJPForwarder", "AJPPool", "AJPConnection", "CPING_MODES"]

log = Logger(namespace="modcluster.ajp")

#: Values of C{proxy.ajp_cping}.
CPING_MODES = ("always", "idle", "never")

_HEAD = b"HEAD"


class RelayedHead:
    """
    What is relayed of one SEND_HEADERS (L{AJPConnection._relayedHead}),
    remembered per pool by its C{headers} tuple (L{AJPPool.heads}).  A
    slotted record: reading a field costs what indexing a tuple does.

    @ivar headers: the headers tuple as the parser gave it (the memo key).
    @ivar status: the status code.
    @ivar reason: the reason phrase as received.
    @ivar out: the header lines to relay (bytes, or a list of (name, value)
        when the container sent C{Connection}).
    @ivar cl: the Content-Length value, or C{None}.
    @ivar length: its number, or C{None} if it is not one.
    @ivar relayed: the reason phrase to relay.
    """

    __slots__ = ("headers", "status", "reason", "out", "cl", "length", "relayed")

    def __init__(self, headers: tuple, status: int, reason: bytes, out: "bytes | list",
                 cl: Optional[bytes], length: Optional[int], relayed: bytes) -> None:
        self.headers = headers
        self.status = status
        self.reason = reason
        self.out = out
        self.cl = cl
        self.length = length
        self.relayed = relayed
_NEVER = float("-inf")
_DEFAULT_PING = 10.0
_CONTINUE = b"Continue"
#: status -> (the code as text, its reason phrase), for the usual codes
_REASONS = {int(s): (b"%d" % s, reason_phrase(int(s))) for s in HTTPStatus}


class _NodeProtocol(AJPClientProtocol):
    """
    L{AJPClientProtocol} that tells its L{AJPConnection} when the TCP
    connection is up, counts the bytes read from the node and writes through
    L{direct_writer}.
    """

    link: "AJPConnection"

    def connectionMade(self) -> None:
        AJPClientProtocol.connectionMade(self)
        self.link._connected()

    def dataReceived(self, data: bytes) -> None:
        link = self.link
        link.rt.read += len(data)
        link.got = True
        try:
            AJPClientProtocol.dataReceived(self, data)
        except Exception:
            # a bug relaying a message (or input nobody thought of): this
            # exchange fails, not the reactor's read loop (as http.py does)
            pool = link.pool
            log.failure("bug while relaying a response from AJP node {route}",
                        route=pool.route)
            link._bad("internal error while relaying the response")
            self.abort()

    def _report(self, kind: str, level: LogLevel, format: str, **fields) -> None:
        # at the forwarder's rate limit, per node and kind: a broken node
        # answering every request must not write lines at the request rate
        pool = self.link.pool
        pool.fw.limiter.emit(f"AJP {kind}, node {pool.route}", level,
                             format.replace("{peer}", "node {route} ({peer})", 1),
                             route=pool.route, **fields)


def _relayed(headers) -> list:
    """
    The C{(name, value)} pairs of a response head that are relayed before
    C{Connection} is applied: end-to-end headers and the first
    Content-Length (the caller has checked that the others agree with it).
    """
    out = []
    cl = False
    for header in headers:
        kind = RESPONSE_HEADER_KIND.get(header[0].lower(), 0)
        if not kind:
            out.append(header)
        elif kind == RESP_CONTENT_LENGTH and not cl:
            cl = True
            out.append(header)
    return out


@implementer(IUpstream, IAJPResponseReceiver, IPushProducer, INodeConnection)
class AJPConnection:
    """
    One connection to an AJP connector: idle in its pool, or carrying one
    exchange.  Also the push producer of the exchange's request body (the
    protocol pauses it while a packet's worth waits for GET_BODY_CHUNK).
    """

    def __init__(self, pool: "AJPPool") -> None:
        self.pool = pool
        self.fw = pool.fw
        self.rt = pool.rt
        proto = self.proto = _NodeProtocol(pool.fw.reactor, pool.packet_size, None,
                                           pool.encoder, direct_writer)
        proto.link = self
        proto.onConnectionLost = self._lost
        self.ex: Optional[IExchange] = None
        self.up = False
        self.closed = False
        self.reused = False
        self.sync = False
        self.paused = False  # the front asked us to stop reading (client blocked)
        self.held = False  # ... and the protocol is paused for it
        self.last_ok = _NEVER
        self.idle_since = 0.0
        self.body: Optional[AJPRequestBody] = None
        # per exchange
        self.packet: Optional[bytes] = None
        self.ping: Optional[float] = None
        self.early = False
        self.sent = False
        self.got = False
        self.head = False
        self.no_body = False
        self.remaining = -1
        self.body_done = False
        #: the L{RelayedHead} this connection relayed last
        self.last_head: Optional[RelayedHead] = None

    def __repr__(self) -> str:
        return f"<AJPConnection {self.pool.worker} {self.proto!r}>"

    # -- the pool's side ---------------------------------------------------------

    def start(self, ex, packet: bytes, ping: Optional[float]) -> None:
        """Carry C{ex}: send C{packet} now if connected, else on connection."""
        self.ex = ex
        self.ping = ping
        self.sent = self.got = self.head = self.no_body = self.early = self.paused = False
        self.remaining = -1
        self.body = None
        bl = ex.body_length
        self.body_done = bl is None or bl == 0
        if self.up:
            self._send(packet)
        else:
            self.packet = packet

    def connect(self) -> None:
        connect_node(self, self.proto)

    def _connectFailed(self, failure) -> None:
        connect_failed(self, failure)

    def _connected(self) -> None:
        self.up = True
        if self.ex is not None:
            packet = self.packet
            if TYPE_CHECKING:  # start() kept it for the connection
                assert packet is not None
            self.packet = None
            self._send(packet)
        else:
            self.pool.release(self)  # the client left while we were connecting

    def _send(self, packet: bytes) -> None:
        ex = self.ex
        if TYPE_CHECKING:  # called for the exchange being carried
            assert ex is not None
        bl = ex.body_length
        length = 0 if bl is None else (bl if bl >= 0 else None)
        self.rt.transferred += len(packet)
        body = self.proto.sendRequest(packet, self, length, b"", self.ping)
        if self.ex is not ex:
            return
        self.body = body
        if length != 0:
            body.registerProducer(self, True)
        if self.early:
            self.early = False
            self._written()

    def _lost(self, proto, reason) -> None:
        self.up = False
        self.closed = True
        self.pool.lost(self)
        ex = self.ex
        if ex is not None:  # pragma: no cover - the protocol reports first
            self.ex = None
            ex.responseFailed(ForwardError(
                RESET, f"connection to {self.pool.worker} lost", request_sent=self.sent))

    def _close(self) -> None:
        """Close an idle or finished connection."""
        if not self.closed:
            self.closed = True
            self.pool.lost(self)
            t = self.proto.transport
            if t is not None:
                t.loseConnection()

    def _drop(self) -> None:
        """Drop the connection now (the exchange on it is abandoned)."""
        self.closed = True
        self.pool.lost(self)
        self.proto.abort()

    # -- IAJPResponseReceiver ------------------------------------------------------

    def requestWritten(self) -> None:
        if self.body is None:
            self.early = True  # inside sendRequest: finish in _send
            return
        self._written()

    def _written(self) -> None:
        ex = self.ex
        if ex is None:
            return
        self.sent = True
        if self.paused and not self.held:
            # Not before: the CPONG must be read whatever the client does.
            self.held = True
            self.proto.pauseProducing()
        if ex.expect_continue:
            # The first body packet is due at once (known length) or on the
            # container's request: the client may send now.
            if self.fw.in_forward:
                self.fw.reactor.callLater(0, self._continue, ex)
            else:
                self._continue(ex)
                if self.ex is not ex:
                    return
        ex.resumeRequestBody()

    def _continue(self, ex: IExchange) -> None:
        if self.ex is ex and not self.head:
            ex.responseInformational(100, _CONTINUE, [])
            ex.flush()

    def headReceived(self, status: int, reason: bytes, headers: tuple) -> None:
        ex = self.ex
        if ex is None:
            return
        if status < 200:
            self._bad(f"status {status} over AJP")
            return
        # The parser gives the same headers tuple for a repeated SEND_HEADERS
        # packet: the last head relayed on this connection is checked first
        # by identity (it holds the tuple), then the pool's memo by value.
        entry = self.last_head
        if (entry is None or entry.headers is not headers or entry.status != status
                or entry.reason != reason):
            memo = self.pool.heads
            entry = memo.entries.get(headers)
            if entry is None or entry.status != status or entry.reason != reason:
                entry = self._relayedHead(status, reason, headers)
                if entry is None:
                    return
                memo.put(headers, entry)
            self.last_head = entry
        out, cl, reason = entry.out, entry.cl, entry.relayed
        length: Optional[int]  # (annotation only) None: a Content-Length not a number
        if ex.method == _HEAD or status == 204 or status == 304:
            self.no_body = True
            length = 0
        elif cl is not None:
            length = entry.length
            if length is None:
                self._bad(f"bad Content-Length {cl!r}")
                return
            self.remaining = length
        else:
            length = -1
        self.head = True
        ex.responseHead(status, reason, out, length)

    def _relayedHead(self, status: int, reason: bytes, headers: tuple
                     ) -> Optional[RelayedHead]:
        """
        The L{RelayedHead} of a SEND_HEADERS, or C{None} after reporting a
        head that cannot be relayed.
        """
        # The relayed headers go straight into the block the front writes
        # (IExchange.responseHead takes bytes); a Connection header, which
        # can name others to drop, takes the list way.
        parts: list[bytes] = []
        cl = None
        conn = None
        exact = RESPONSE_HEADER_EXACT
        kinds = RESPONSE_HEADER_KIND
        for name, value in headers:
            kind = exact.get(name)
            if kind is None:
                kind = kinds.get(name.lower(), 0)
            if not kind:
                parts += (name, b": ", value, b"\r\n")
            elif kind == RESP_CONTENT_LENGTH:
                stripped = value.strip()
                if cl is None:
                    cl = stripped
                    parts += (name, b": ", value, b"\r\n")
                elif stripped != cl:
                    self._bad("conflicting Content-Length headers")
                    return None
            elif kind == RESP_CONNECTION:
                if conn is None:
                    conn = [value]
                else:
                    conn.append(value)
            # other hop-by-hop names (Transfer-Encoding, Keep-Alive, ...) dropped
        out: Union[list, bytes]  # (annotation only) what IExchange.responseHead takes
        if conn is not None:
            out = drop_listed(_relayed(headers), connection_tokens(conn))
        else:
            out = b"".join(parts)
        # a number below 10**18 (not thousands of digits: int() refuses more
        # than 4300, and no body is an exabyte)
        length = (int(cl) if cl is not None and cl.isdigit() and len(cl.lstrip(b"0")) <= 18
                  else None)
        relayed = reason
        known = _REASONS.get(status)
        if known is None:
            known = (b"%d" % status, reason_phrase(status))
        if not reason or reason == known[0] or BAD_REASON.search(reason) is not None:
            # Tomcat sends the code as its message; control characters are
            # not relayed
            relayed = known[1]
        return RelayedHead(headers, status, reason, out, cl, length, relayed)

    def bodyReceived(self, data: bytes) -> None:
        ex = self.ex
        if ex is None:
            return
        if not data:
            ex.flush()  # the container's explicit flush (ajpFlush)
            return
        if self.no_body:
            return
        r = self.remaining
        if r >= 0:
            r -= len(data)
            if r < 0:
                self._bad("response body longer than its Content-Length")
                return
            self.remaining = r
        ex.responseBody(data)
        if self.pool.flush_each:
            ex.flush()

    def readComplete(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.flush()

    def responseEnded(self, reusable: bool) -> None:
        ex = self.ex
        self.ex = None
        self.body = None
        self.reused = True
        self.paused = False
        if self.held:
            self.held = False
            self.proto.resumeProducing()
        short = self.remaining > 0
        pool = self.pool
        if reusable and not short and not pool.closed:
            self.last_ok = self.fw.reactor.seconds()
            pool.release(self)
        else:
            self._close()
        if ex is None:
            return
        if short:
            self.fw.limiter.emit(
                f"AJP response too short, node {pool.route}", LogLevel.warn,
                "AJP node {route}: response ended {left} bytes short of its Content-Length",
                route=pool.route, left=self.remaining)
            ex.responseFailed(ForwardError(
                PROTOCOL, f"{self.pool.worker}: response body shorter than its Content-Length",
                request_sent=True))
            return
        ex.responseEnd()

    def responseFailed(self, reason, responseStarted: bool, requestSent: bool) -> None:
        ex = self.ex
        self.ex = None
        self.body = None
        self.closed = True
        self.pool.lost(self)
        if ex is None:
            return
        err = reason.value
        worker = self.pool.worker
        reused = self.reused and not self.got
        if isinstance(err, CPingFailed):
            if self.reused:
                # A pooled connection that does not answer CPING: the front
                # retries once on a fresh connection (CPINGed too) before the
                # node is put in error (mod_proxy_ajp, balancing.md §6.2).
                error = ForwardError(RESET, f"{worker}: CPING on a pooled connection failed: "
                                            f"{err}", reused=True)
            else:
                error = ForwardError(CONNECT, f"{worker}: CPING failed: {err}")
        elif isinstance(err, AJPReadTimeout):
            error = ForwardError(TIMEOUT, f"{worker}: {err}", request_sent=requestSent)
        elif isinstance(err, AJPProtocolError):
            error = ForwardError(PROTOCOL, f"{worker}: {err}", request_sent=requestSent,
                                 reused=False)
        else:
            what = "during the response" if responseStarted else "before any response"
            error = ForwardError(RESET, f"connection to {worker} closed {what}",
                                 request_sent=requestSent, reused=reused)
        ex.responseFailed(error)

    def _bad(self, message: str) -> None:
        """Bad response from the node: drop the connection, fail the exchange."""
        ex = self.ex
        self.ex = None
        self.body = None
        self.fw.limiter.emit(f"AJP bad response, node {self.pool.route}", LogLevel.warn,
                             "AJP node {route} ({worker}): {message}; connection dropped",
                             route=self.pool.route, worker=self.pool.worker, message=message)
        self._drop()
        if ex is not None:
            ex.responseFailed(ForwardError(PROTOCOL, f"{self.pool.worker}: {message}",
                                           request_sent=True))

    # -- IUpstream ------------------------------------------------------------------

    def requestBody(self, data: bytes) -> None:
        body = self.body
        if body is None or not data:
            return
        self.rt.transferred += len(data)
        body.write(data)

    def requestBodyEnd(self) -> None:
        body = self.body
        if body is not None and not self.body_done:  # (no-op for a request without body)
            self.body_done = True
            body.finish()

    def pauseResponse(self) -> None:
        self.paused = True
        if self.sent and not self.held and self.ex is not None:
            self.held = True
            self.proto.pauseProducing()

    def resumeResponse(self) -> None:
        self.paused = False
        if self.held:
            self.held = False
            self.proto.resumeProducing()

    def _unhold(self) -> None:
        self.paused = False
        if self.held:
            self.held = False
            self.proto.resumeProducing()

    def abort(self) -> None:
        ex = self.ex
        self.ex = None
        if ex is None:
            return
        self.body = None
        self.packet = None
        if not self.up:
            return  # still connecting: the connection joins the pool when it is made
        if self.head and self.body_done and (self.no_body or self.remaining == 0):
            # Everything was relayed; only END_RESPONSE is still on its way (the
            # client may close as soon as it has the body): let it arrive and
            # put the connection back in the pool (or time out in tick).
            self._unhold()
            return
        self._drop()

    # -- IPushProducer (request body, driven by the protocol) -----------------------

    def pauseProducing(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.pauseRequestBody()

    def resumeProducing(self) -> None:
        ex = self.ex
        body = self.body
        if ex is not None and self.sent and body is not None and body.active:
            ex.resumeRequestBody()

    def stopProducing(self) -> None:
        pass


class AJPPool(PoolBase):
    """
    The connections to one AJP node (one registration of it: a re-registered
    node gets a new pool).  Same semantics as the HTTP forwarder's
    L{modcluster.proxy.http.NodePool}: idle connections are reused most
    recent first; the C{max_idle} most recent (node C{smax}, or
    C{proxy.max_idle_per_node} when it is -1) are kept, older idle ones are
    closed after the node's C{ttl}.
    """

    def __init__(self, fw: "AJPForwarder", node) -> None:
        super().__init__(fw, node)
        s = node.settings
        self.route = s.route
        self.ping_timeout = s.ping if s.ping > 0 else _DEFAULT_PING
        self.connect_timeout = self.ping_timeout
        self.flush_each = s.flushpackets == "On"
        self.packet_size = fw.packet_size
        self.encoder = ForwardRequestEncoder(fw.packet_size)
        self.endpoint = node_endpoint(fw.reactor, s.host, s.port, self.connect_timeout)
        self.direct = direct_address(s.host, s.port)
        #: SEND_HEADERS headers tuple -> its L{RelayedHead} (bounded; emptied
        #: when full)
        self.heads: BoundedMemo[tuple, RelayedHead] = BoundedMemo(
            "proxy.ajp.heads", HEAD_MEMO_SIZE, count_hits=False)

    def acquire(self, ex, packet: bytes, fresh: bool) -> AJPConnection:
        fw = self.fw
        mode = fw.cping
        idle = self.idle
        if not fresh:
            while idle:
                c = idle.pop()
                if c.up and not c.closed and c.proto.reusable:
                    if mode == "never":
                        ping = None
                    elif mode == "always" or (
                            fw.reactor.seconds() - c.last_ok > fw.cping_idle):
                        ping = self.ping_timeout
                    else:
                        ping = None
                    c.start(ex, packet, ping)
                    return c
                c._close()
        c = AJPConnection(self)
        self.conns.add(c)
        # A new connection has never answered: CPING it unless told never to.
        c.start(ex, packet, None if mode == "never" else self.ping_timeout)
        c.connect()
        return c

    def release(self, c: AJPConnection) -> None:
        if self.closed or c.closed:
            c._close()
            return
        c.idle_since = self.fw.now
        c.reused = True
        self.idle.append(c)

    def tick(self, now: float, slack: float) -> None:
        limit = self.read_timeout + slack
        for c in list(self.conns):
            if c.up and c.proto.busy:
                # the reply head is due within the read timeout of its first
                # packet (timed by the sweep's exact clock: no slack)
                c.proto.checkReadTimeout(now, limit, self.read_timeout)
        self.trim_idle(now)


_tls_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _tls_facts(transport) -> tuple:
    """
    (ssl_cipher, ssl_key_size, ssl_cert PEM, protocol name) of a TLS client
    transport, as mod_proxy_ajp sends them; cached per connection.
    """
    try:
        return _tls_cache[transport]
    except (KeyError, TypeError):
        pass
    cipher = bits = cert = version = None
    try:
        conn = transport.getHandle()
        name = conn.get_cipher_name()
        cipher = name.encode("ascii") if name else None
        bits = conn.get_cipher_bits()
        v = conn.get_protocol_version_name()
        version = v.encode("ascii") if v and v != "Unknown" else None
        peer = conn.get_peer_certificate(as_cryptography=True)
        if peer is not None:
            from cryptography.hazmat.primitives.serialization import Encoding

            cert = peer.public_bytes(Encoding.PEM)
    except Exception:
        log.failure("cannot read TLS facts of a client connection")
    facts = (cipher, bits if isinstance(bits, int) and 0 <= bits <= 0xFFFF else None, cert,
             version)
    if cipher is not None:  # handshake done: the facts will not change
        try:
            _tls_cache[transport] = facts
        except TypeError:  # pragma: no cover - not weak-referenceable
            pass
    return facts


def _server_name(host: Optional[bytes], client) -> bytes:
    """The host part of the client's Host header (httpd C{ap_get_server_name})."""
    if host:
        if host[:1] == b"[":
            end = host.find(b"]")
            if end > 0:
                return host[1:end]
        i = host.rfind(b":")
        return host[:i] if i >= 0 else host
    return client.local_addr.encode("ascii", "replace")


@implementer(IForwarder)
class AJPForwarder(PooledForwarder):
    """
    L{IForwarder} for C{ajp} nodes.

    @param reactor: provides C{IReactorTCP} and C{IReactorTime}.
    @param config: the L{modcluster.config.ProxyConfig}: C{ajp_secret},
        C{ajp_packet_size}, C{ajp_cping}, C{ajp_cping_idle}, C{timeout},
        C{max_idle_per_node}.
    """

    pool_class = AJPPool

    def __init__(self, reactor, config) -> None:
        if config.ajp_cping not in CPING_MODES:
            raise ValueError(f"ajp_cping must be one of {CPING_MODES}")
        self.reactor = reactor
        #: requests refused here are client-driven, node-side failures may
        #: come at the request rate: their log lines are rate-limited
        self.limiter = LogLimiter(log, reactor.seconds)
        self.config = config
        self.packet_size = config.ajp_packet_size
        self.secret: Optional[bytes] = (config.ajp_secret.encode("utf-8")
                                        if config.ajp_secret is not None else None)
        self.cping = config.ajp_cping
        self.cping_idle = config.ajp_cping_idle
        self.in_forward = False
        #: client connections whose FORWARD_REQUEST pieces were worked out
        #: (and kept on their L{ClientInfo}), for tests and bench
        self.client_facts = 0
        super().__init__(reactor)

    def encode(self, ex, pool: AJPPool) -> bytes:
        """
        The FORWARD_REQUEST packet for C{ex} (ajp13.md §3.1, balancing.md
        §9.3).

        @raise RequestTooLarge: it does not fit the packet size.
        """
        client = ex.client
        facts = client.forwarder_facts
        if facts is None or facts[0] is not self:
            facts = self._clientFacts(client, pool.encoder)
        target = ex.target
        q = target.find(b"?")
        if q >= 0:
            uri = target[:q]
            query = target[q + 1:]
        else:
            uri = target
            query = None
        host = ex.host
        if host is not None:
            headers = [(b"Host", host)]
            headers += ex.headers
            if host == facts[3]:
                server_name = facts[4]
            else:
                server_name = _server_name(host, client)
                if len(host) <= 255:
                    facts[3] = host
                    facts[4] = server_name
        else:
            headers = list(ex.headers)
            server_name = facts[5]
        bl = ex.body_length
        if bl is not None:
            headers.append((b"Content-Length", b"%d" % bl) if bl >= 0
                           else (b"Transfer-Encoding", b"chunked"))
        route = ex.decision.session_route
        user = getattr(ex, "remote_user", None)
        if isinstance(user, str):
            user = user.encode("utf-8")
        return pool.encoder.encode_prepared(
            ex.method,
            b"HTTP/1.1" if ex.version == "1.1" else b"HTTP/1.0",
            uri,
            facts[1],
            server_name,
            client.local_port,
            client.secure,
            headers,
            self.secret,
            user,
            None,
            query,
            route.encode("utf-8", "surrogateescape") if route else None,
            facts[2],
        )

    def _clientFacts(self, client, encoder: ForwardRequestEncoder) -> list:
        """
        What every FORWARD_REQUEST of one client connection shares: C{[this
        forwarder, encoded remote_addr and remote_host, encoded TLS facts and
        attributes, last Host value, its server_name, the server_name without
        a Host]}.  Kept on the client connection's L{ClientInfo} (its
        C{forwarder_facts}: gone with the connection) once final, i.e. for
        TLS once the handshake is done.
        """
        remote = client.remote_addr.encode("ascii", "replace")
        local = client.local_addr.encode("ascii", "replace")
        attributes = [(b"AJP_REMOTE_PORT", b"%d" % client.remote_port),
                      (b"AJP_LOCAL_ADDR", local)]
        cipher = key_size = cert = None
        final = True
        if client.secure:
            cipher, key_size, cert, version = _tls_facts(client.transport)
            if version is not None:
                attributes.insert(0, (b"AJP_SSL_PROTOCOL", version))
            final = cipher is not None
        facts = [self, encoder.encode_addresses(remote, remote),
                 encoder.encode_tail(cert, cipher, None, key_size, attributes), None, None, local]
        if final:
            client.forwarder_facts = facts
            self.client_facts += 1
        return facts

    def tick(self, now: float) -> None:
        PooledForwarder.tick(self, now)
        self.limiter.tick(now)  # the lines held back, once their interval is over

    def forward(self, exchange, fresh: bool = False):
        self.in_forward = True
        try:
            try:
                pool = self.pool(exchange.node)
            except Exception as e:
                log.failure("cannot set up connections to AJP node {route}",
                            route=exchange.node.route)
                return LocalUpstream(self.reactor, exchange,
                              ForwardError(CONNECT, f"{type(e).__name__}: {e}"))
            try:
                packet = self.encode(exchange, pool)
            except RequestTooLarge as e:
                self.limiter.emit("head too large", LogLevel.info,
                                  "AJP request head for {method} {target} too large: {error}",
                                  method=text(exchange.method), target=text(exchange.target),
                                  error=str(e))
                return LocalUpstream(self.reactor, exchange, status=400,
                              message="request head too large for the AJP packet size")
            except AJPEncodeError as e:
                self.limiter.emit("cannot encode", LogLevel.info,
                                  "cannot encode {method} {target} for AJP: {error}",
                                  method=text(exchange.method), target=text(exchange.target),
                                  error=str(e))
                return LocalUpstream(self.reactor, exchange, status=400, message=str(e))
            return pool.acquire(exchange, packet, fresh)
        finally:
            self.in_forward = False


