"""
The seam between the client side of the data plane (L{modcluster.proxy.front})
and the forwarders that talk to nodes (HTTP/HTTPS/WS/WSS in
L{modcluster.proxy.http}, AJP in L{modcluster.proxy.ajp}), and between a
forwarder's per-node pools (L{modcluster.proxy.pool}) and their connections
(L{INodeConnection}).

The front owns everything that is the same whatever the node speaks: parsing
client requests, routing (L{modcluster.balancer.choose}), stickiness,
failover, counters, error pages, client timeouts and the framing of responses
to the client.  A forwarder only moves one exchange to one node and back.

One forwarded attempt looks like this (names are methods of the interfaces
below; "front" implements L{IExchange}, the forwarder returns an L{IUpstream})::

    front                                   forwarder
    -----                                   ---------
    upstream = forwarder.forward(ex, fresh)
                                            (pooled or new connection)
                                            ex.resumeRequestBody()   # head is out
    upstream.requestBody(data) ...
    upstream.requestBodyEnd()
                                            ex.responseInformational(100, ...)*
                                            ex.responseHead(status, reason, headers, length)
                                            ex.responseBody(data)*
                                            ex.flush()               # end of one read
                                            ex.responseEnd()
                                      or    ex.responseWhole(whole, body)  # all three
                                      or    ex.responseFailed(ForwardError(...))

The full contract, with every rule a forwarder must keep, is in
docs/data-plane.md ("The forwarder contract").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Union

from attrs import frozen
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.interfaces import ITransport

__all__ = [
    "ClientInfo",
    "ForwardError",
    "IExchange",
    "IForwarder",
    "INodeConnection",
    "IUpstream",
    "IDEMPOTENT_METHODS",
    "CONNECT",
    "RESET",
    "TIMEOUT",
    "PROTOCOL",
    "ResponseHeaders",
]

#: Could not reach the node: TCP connect refused or timed out (node C{ping}),
#: TLS handshake failed, AJP CPING/CPONG failed.  Nothing reached the
#: application.
CONNECT = "connect"
#: The connection ended (FIN or RST) before the response was complete.
RESET = "reset"
#: The node sent nothing for the read timeout (node C{Timeout} or
#: C{proxy.timeout}).  Answered with 504; the node is not marked in error.
TIMEOUT = "timeout"
#: The node sent something that is not a valid response.
PROTOCOL = "protocol"


@frozen
class ForwardError:
    """
    Why an attempt failed, as facts; the front decides what follows
    (failover, same-node retry, 502/503/504, marking the node in error).

    @ivar kind: L{CONNECT}, L{RESET}, L{TIMEOUT} or L{PROTOCOL}.
    @ivar message: short text for the log line.
    @ivar request_sent: some byte of the request may have reached the node's
        application (the head was written on an established connection).
        C{False} for every L{CONNECT} failure.
    @ivar reused: the connection had carried an earlier exchange (taken from
        an idle pool).  A L{RESET} on a reused connection before any response
        byte is the keep-alive race: the front retries it once on a fresh
        connection to the same node when the request is replayable.
    @ivar local: a L{CONNECT} failure that is the proxy's own (it could not
        open a socket: out of file descriptors or memory), not the node's:
        the front answers 503 without putting the node in error or failing
        over (every node would fail alike).
    """

    kind: str
    message: str
    request_sent: bool = False
    reused: bool = False
    local: bool = False


class ClientInfo:
    """
    Facts about the client connection, shared by all its exchanges.  Read
    only.

    @ivar remote_addr: the client's IP address (text).
    @ivar remote_port: the client's port.
    @ivar local_addr: the proxy address the client connected to.
    @ivar local_port: the proxy port the client connected to (AJP
        C{server_port}).
    @ivar secure: the client connection is TLS (C{X-Forwarded-Proto: https},
        AJP C{is_ssl}).
    @ivar transport: the client transport, for forwarders that need TLS
        details (AJP: cipher, key size, client certificate).  Do not write to it.
    @ivar forwarder_facts: a writable field: what a forwarder works out
        once per client connection and keeps for its later requests (the AJP
        forwarder's FORWARD_REQUEST pieces), or C{None}; it goes with the
        connection.
    @ivar http_forwarded: the other writable field, the HTTP forwarder's:
        the X-Forwarded-For, -Proto and -Server lines it sends for this
        client (L{modcluster.proxy.http.HttpForwarder.forwarded}), or
        C{None} until its first request to an HTTP node.

    Without C{local_addr}/C{local_port} they are read from
    C{transport.getHost()} when first asked for (a C{getsockname} system call
    that HTTP nodes never need), or C{""}/C{0} if that fails.
    """

    __slots__ = ("remote_addr", "remote_port", "secure", "transport", "_local",
                 "forwarder_facts", "http_forwarded", "__weakref__")

    def __init__(self, remote_addr: str, remote_port: int, local_addr: Optional[str] = None,
                 local_port: Optional[int] = None, secure: bool = False,
                 transport: Optional[ITransport] = None) -> None:
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        self.secure = secure
        self.transport = transport
        self.forwarder_facts: Optional[list] = None
        self.http_forwarded: Optional[bytes] = None
        self._local = (None if local_addr is None and local_port is None
                       else (local_addr or "", local_port or 0))

    def _getLocal(self) -> tuple:
        local = self._local
        if local is None:
            transport = self.transport
            try:
                host = transport.getHost() if transport is not None else None
            except Exception:  # closed
                host = None
            local = self._local = (getattr(host, "host", "") or "",
                                   getattr(host, "port", 0) or 0)
        return local

    @property
    def local_addr(self) -> str:
        return self._getLocal()[0]

    @property
    def local_port(self) -> int:
        return self._getLocal()[1]

    def __repr__(self) -> str:
        return (f"ClientInfo({self.remote_addr!r}, {self.remote_port!r}, "
                f"secure={self.secure!r})")


#: A response head's header lines as the forwarders give them (see
#: L{IExchange.responseHead}): one bytes block, or C{(name, value)} pairs.
ResponseHeaders = Union[bytes, Sequence[tuple[bytes, bytes]]]


class IExchange(Interface):
    """
    One client request as a forwarder sees it, implemented by the front.

    Request facts are plain attributes (read them, never change them).
    Methods are the forwarder's callbacks.  After C{responseEnd} or
    C{responseFailed}, or after the front called L{IUpstream.abort}, the
    forwarder calls nothing more (calls are ignored if it does).
    """

    method = Attribute("Request method (bytes), e.g. C{b'GET'}.")
    target = Attribute(
        "Request target to send (bytes): origin-form C{/path?query} as the client sent it "
        "(absolute-form reduced to origin-form; session id removed under "
        "StickySessionRemove).")
    version = Attribute("The client's HTTP version, C{'1.0'} or C{'1.1'}.")
    headers = Attribute(
        "End-to-end request headers as a sequence (list or tuple) of C{(name, value)} "
        "bytes pairs, in the "
        "client's order and name case, repeats kept.  Removed: hop-by-hop headers "
        "(Connection and the names it lists, Keep-Alive, Proxy-Connection, TE, Trailer, "
        "Upgrade, Transfer-Encoding), Content-Length, Expect and Host (see C{host}).  "
        "Trailers of a chunked body are dropped.  Read-only: requests with the same "
        "head share it.")
    host = Attribute("The client's Host header value (bytes) or C{None}.")
    body_length = Attribute(
        "Request body framing: C{None} no body, C{n >= 0} Content-Length n, C{-1} chunked "
        "(length unknown).  Body bytes are delivered de-chunked.")
    expect_continue = Attribute("The client sent C{Expect: 100-continue}.")
    request_trailers = Attribute(
        "Optional (read with C{getattr(ex, 'request_trailers', None)}): the request's "
        "trailer section for a chunked (C{body_length} -1) request to an HTTP node, as "
        "C{name: value CRLF} lines, or C{None}; set by the HTTP/2 front (an HTTP/2 "
        "client's trailing HEADERS), complete when the body has ended.")
    upgrade = Attribute(
        "The Upgrade token to tunnel (bytes, e.g. C{b'websocket'}) or C{None}.  Only set "
        "for requests the front may tunnel (tunnelling enabled, token allowed, no body).")
    idempotent = Attribute("The method is idempotent (RFC 9110 §9.2.2).")
    x_forwarded = Attribute(
        "The client sent some X-Forwarded-* header (a forwarder that adds them must append "
        "to the client's values rather than add a second header).")
    head_template = Attribute(
        "The remembered request head (C{modcluster.proxy.exchange.RequestHead}) whose "
        "C{headers}, C{host}, C{body_length} and C{x_forwarded} these are, unchanged, or "
        "C{None}: the HTTP forwarder keeps the head it builds from them in its "
        "C{node_heads}.  Such a request has no body: a forwarder may take it as "
        "complete once its head is written, without L{resumeRequestBody} (see there).")
    client = Attribute("L{ClientInfo} of the client connection.")
    decision = Attribute(
        "The L{modcluster.balancer.Decision} for this attempt (node, context, balancer, "
        "session id and route).")
    node = Attribute("C{decision.node}: the L{NodeEntry} to forward to.")

    def resumeRequestBody() -> None:
        """
        The forwarder can take request body now (call it once the request head
        is written to an established connection) or again after
        L{pauseRequestBody}.  The front then calls L{IUpstream.requestBody}
        with what it holds, synchronously, and with later bytes as they
        arrive.  Until the first call the front keeps the body (so a failed
        connect can be failed over with nothing lost).  For an exchange with a
        C{head_template} (no body) a forwarder need not call it: the front
        calls no L{IUpstream.requestBody} nor L{IUpstream.requestBodyEnd}
        until it does (then only C{requestBodyEnd}).
        """

    def pauseRequestBody() -> None:
        """
        Stop delivering request body (the node connection's write buffer is
        full).  The front stops reading the client.
        """

    def responseInformational(status: int, reason: bytes, headers: ResponseHeaders) -> None:
        """
        A 1xx interim response other than 101 (e.g. 100 Continue, 103).  The
        front relays it to HTTP/1.1 clients and drops it for HTTP/1.0 ones.
        C{headers} as for L{responseHead}.
        """

    def responseHead(status: int, reason: bytes, headers: ResponseHeaders, length: int) -> None:
        """
        The final response head (or C{101} when tunnelling C{upgrade}).

        @param reason: the reason phrase (may be empty).
        @param headers: the end-to-end response header lines as one bytes
            block, each C{Name: value CRLF} (no final empty line), node order
            and case, repeats (Set-Cookie) kept, Server/Date as the node sent
            them; or the same as a sequence of C{(name, value)} bytes pairs,
            which the front turns into a block
            (L{modcluster.proxy.headers.header_block}).  Hop-by-hop headers
            removed (Connection and what it lists,
            Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding,
            Upgrade except on a 101, where C{Upgrade} and C{Connection:
            Upgrade} are included).  Content-Length kept when the node sent
            one (also for HEAD).  Names and values must already be valid
            (no CR/LF): the front writes the block as it is.
        @param length: the body the forwarder will deliver: C{n >= 0} bytes,
            C{-1} unknown (the front chunks it for HTTP/1.1 clients or closes
            after it for HTTP/1.0), C{0} for responses without a body (HEAD,
            204, 304).  For a 101 the value is ignored: after it,
            C{responseBody} carries raw tunnel bytes.
        """

    def responseBody(data: bytes) -> None:
        """Response body bytes (de-chunked), or raw bytes in a tunnel."""

    def responseWhole(whole, body: bytes) -> None:
        """
        L{responseHead}, L{responseBody} and L{responseEnd} at once, for a
        complete response whose head the forwarder remembered
        (C{modcluster.proxy.http.WholeHead}: C{status} 200-599 but 204 and
        304, C{reason}, C{headers} as one bytes block, Content-Length framing,
        a request method other than HEAD; its C{client_head} and
        C{client_head10} slots belong to the front).  C{body} is the whole
        body (C{Content-Length} bytes, maybe none).  The forwarder has let go
        of the exchange and decided what happens to its connection before
        this call, as before L{responseEnd} (the front neither pauses nor
        aborts it, and may start the next request at once); nothing follows.
        """

    def flush() -> None:
        """
        Write what the front holds for the client.  The front may keep
        response bytes (a head, small bodies) until this call to send them in
        one write; a forwarder must call it at the end of every read from the
        node that delivered response events.  L{responseEnd} flushes by
        itself.
        """

    def responseTrailers(block: bytes) -> None:
        """
        The trailer section of a chunked response (called just before
        L{responseEnd}, only when there is one): its field lines as received,
        each C{name: value CRLF}, without the fields never relayed in trailers
        (L{modcluster.proxy.headers.TRAILER_DROP}).  AJP has no trailers.
        """

    def responseEnd() -> None:
        """
        The response is complete (for a tunnel: the node closed).  Call it
        B{after} deciding what happens to the node connection (back to the pool
        or closing): the front may start the next request at once.
        """

    def responseFailed(error: ForwardError) -> None:
        """
        The attempt failed.  The node connection is already being closed.  If
        a response head was delivered the front aborts the client connection;
        otherwise it fails over, retries, or answers 502/503/504 (see
        docs/data-plane.md).
        """

    def replayable() -> bool:
        """
        Whether the request could be sent again elsewhere: no request-body byte
        has been given to the forwarder, and the request has a body (the node
        cannot have acted on it without it) or its method is idempotent.
        Forwarders do not need it; the front applies it to L{ForwardError}s
        with C{request_sent}.
        """


class IUpstream(Interface):
    """
    The forwarder's handle for one attempt, used by the front.
    """

    def requestBody(data: bytes) -> None:
        """
        Request body bytes (de-chunked; raw bytes in a tunnel).  Only called
        between L{IExchange.resumeRequestBody} and
        L{IExchange.pauseRequestBody}.  The forwarder adds its own framing and
        counts C{node.rt.transferred}.
        """

    def requestBodyEnd() -> None:
        """The request body is complete (not called for tunnels)."""

    def pauseResponse() -> None:
        """The client's write buffer is full: stop reading the node."""

    def resumeResponse() -> None:
        """The client drained: read the node again."""

    def abort() -> None:
        """
        The front gives up on this attempt (client gone, client timeout, request
        refused mid-body, tunnel closed by the client).  Close the node
        connection unless the response was complete; call nothing more on the
        exchange.
        """


class IForwarder(Interface):
    """
    Moves exchanges to nodes of one or more schemes (the node's C{Type}).
    """

    def forward(exchange: IExchange, fresh: bool) -> IUpstream:
        """
        Start one attempt of C{exchange} towards C{exchange.node}.  Never raises.
        It may call L{IExchange.resumeRequestBody} and
        L{IExchange.pauseRequestBody} before returning (a pooled connection is
        ready at once), but no response callback: results, even an immediate
        failure, come from later reactor events.

        Counting is shared: the front counts C{busy}, C{requests} and the
        context's C{in_flight}/C{requests}; the forwarder counts the node's
        C{read} (bytes received from the node) and C{transferred} (bytes sent
        to it).

        @param fresh: do not reuse a pooled connection (retry after the
            keep-alive race).
        """

    def tick(now: float) -> None:
        """
        About once a second (from the front's sweep): enforce read timeouts
        (report L{TIMEOUT}), close idle connections past their TTL.
        """

    def retain(nodes: tuple) -> None:
        """
        C{nodes} is the current table's node tuple: drain pools of every other
        node (close idle connections now, busy ones when their exchange ends).
        """

    def close() -> None:
        """Close every connection (service stop)."""


class INodeConnection(Interface):
    """
    What the shared pool code (L{modcluster.proxy.pool}: C{PoolBase},
    C{PooledForwarder}, C{connect_node}, C{connect_failed}) and a forwarder's
    pool use of one keep-alive connection to a node.  Both kinds provide it:
    L{modcluster.proxy.http.NodeProtocol} and
    L{modcluster.proxy.ajp.AJPConnection}.

    Each kind also has a C{start(ex, ...)} that makes it carry an exchange;
    its arguments differ (the AJP one takes the encoded FORWARD_REQUEST and
    the CPING timeout), so it is left to the kind's own pool.
    """

    pool = Attribute("The per-node pool (a C{PoolBase}) this connection belongs to.")
    fw = Attribute("The pool's forwarder (has C{reactor}, C{now}).")
    rt = Attribute("The node's runtime counters (C{read}, C{transferred}).")
    ex = Attribute("The L{IExchange} carried now, or C{None} when idle.")
    up = Attribute("C{True} once connected, until the connection is lost.")
    closed = Attribute("C{True} once closed or lost: never reused again.")
    reused = Attribute("C{True} once it has been idle in its pool (AJP sets it).")
    sync = Attribute(
        "C{True} while C{connect_node} runs, so that a synchronous connect failure "
        "is reported from the next reactor turn (C{connect_failed}).")
    paused = Attribute("C{True} while the front has asked it to stop reading.")
    idle_since = Attribute(
        "The forwarder's clock (C{fw.now}) when it was last put back in the idle "
        "list; C{PoolBase.trim_idle} closes idle ones older than the node's C{ttl}.")

    def connect() -> None:
        """Open the transport (through C{connect_node})."""

    def _connectFailed(failure) -> None:
        """The connection could not be made (through C{connect_failed})."""

    def _close() -> None:
        """Close an idle or finished connection and leave the pool (C{pool.lost})."""

    def abort() -> None:
        """Drop the connection at once (service stop; L{IUpstream.abort})."""


#: The idempotent request methods (RFC 9110 §9.2.2): a request with one of
#: these may be sent again to another node after a failure.
IDEMPOTENT_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))

