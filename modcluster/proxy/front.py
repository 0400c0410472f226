"""
The client side of the data plane: one L{ClientProtocol} per client
connection, created by L{ProxyFactory}.

A client connection parses requests with httptools, serves them one at a time
(pipelined requests wait, parsed, in order), routes each with
L{modcluster.balancer.choose}, hands it as an L{IExchange} to the forwarder of
the node's scheme, relays the response with the client's framing, and fails
over, retries or answers an error as docs/data-plane.md describes.

Hot-path rules followed here: no Deferred, closure or log event per request;
one allocation per request (L{_Exchange}); one write per batch of response
events (the head waits for the body bytes of the same read); timeouts are
enforced by one sweep per second over all connections, not by timers.  A
request head seen before (the exact bytes, one request without a body) is not
parsed again: L{ProxyFactory.request_heads} remembers what parsing it gave.
"""

from __future__ import annotations

import re
from collections import deque
from email.utils import formatdate
from typing import Callable, Optional

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from modcluster.accesslog import LogLimiter, text
from modcluster.balancer import (
    Decision,
    RoutingPolicy,
    choose,
    parse_host,
    path_refusal,
    strip_session,
    valid_host,
)
from modcluster.balancer._health import RetryBudget, record_failure, resilience_settings
from modcluster.listening import ReadTimeouts, TimeoutReport
from modcluster.proxy._transport import direct_writer, is_plain_tcp, lose_connection, set_nodelay
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
    header_block,
    informational_head,
    upgrade_matcher,
)
from modcluster.proxy.http import HttpForwarder
from modcluster.proxy.observe import CLIENT_CLOSED, ClientStats, Observer
from modcluster.proxy.interfaces import (
    CONNECT,
    IDEMPOTENT_METHODS,
    PROTOCOL,
    RESET,
    TIMEOUT,
    ClientInfo,
    ForwardError,
    IExchange,
)

__all__ = ["ClientProtocol", "ProxyFactory", "SWEEP_INTERVAL"]

log = Logger(namespace="modcluster.proxy")

#: Seconds between timeout sweeps (client idle/stall, node read timeouts, pool TTL).
SWEEP_INTERVAL = 1.0
#: Request body bytes held per request before the client is paused (while the
#: node connection is not ready, or for a queued pipelined request).
BODY_BUFFER = 256 * 1024
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

# Why the client transport is paused (bit set).
_P_PIPELINE = 1  # requests queued behind the current one
_P_BUFFER = 2  # too much request body held
_P_UPSTREAM = 4  # the node connection's write buffer is full
_P_UPGRADE = 8  # waiting for the node's answer to an Upgrade
_P_EXCHANGE = _P_BUFFER | _P_UPSTREAM | _P_UPGRADE  # reasons that end with the exchange

_HEAD = b"HEAD"
_CONNECT = b"CONNECT"
_TRACE = b"TRACE"
_CONTINUE = b"100-continue"
_CHUNKED_END = b"0\r\n\r\n"
_HEAD_END = b"\r\n\r\n"
#: Request lines parsed here rather than by llhttp, for a header block seen
#: before (L{ProxyFactory.request_blocks}): a subset of what llhttp accepts
#: (usual methods, origin-form targets of RFC 3986 characters, HTTP/1.x);
#: anything else goes through the parser.
_REQUEST_LINE = re.compile(
    rb"(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH) (/[-A-Za-z0-9._~!$&'()*+,;=:@/?%]*) "
    rb"HTTP/1\.([01])")
_DIRECT_SCHEMES = ("http", "https", "ws", "wss")
#: answers counted as failures by passive health with C{eject_on_5xx}
_FAILURE_STATUSES = frozenset((500, 502, 503, 504))


class _TooManyPipelined(Exception):
    pass


@implementer(IExchange)
class _Exchange:
    """
    One client request (and its attempts).  Implements L{IExchange}; see
    L{modcluster.proxy.interfaces} for the attributes the forwarder reads.
    """

    __slots__ = (
        # request facts (IExchange)
        "method", "target", "version", "headers", "host", "body_length",
        "expect_continue", "upgrade", "idempotent", "client", "decision", "node",
        "x_forwarded",
        # front state
        "proxy_connection",
        "proto", "keep_alive", "path", "query", "cookies", "error", "headers0", "connection",
        "upgrade_token", "skipped_body", "tunnel_candidate", "head_size",
        "upstream", "attempts", "exclude", "stale_retry", "wait_until", "wait_call",
        "body", "body_held", "body_done", "body_received", "body_sent", "end_sent",
        "flowing", "counted", "resp_started", "resp_chunked", "resp_close", "done",
        "tunnel", "no_body",
        # observing (access log, client metrics): start time, status, body
        # bytes to the client, last attempt's start, time to its response head
        "start", "status", "sent", "up_start", "upstream_time",
    )
    #: the client side's HTTP version for the access log when it is not
    #: C{version} (the version forwarded): "2.0" for HTTP/2 streams
    log_version: Optional[str] = None

    def __init__(self, proto: "ClientProtocol") -> None:
        self.proto = proto
        self.client = proto.client
        self.method = b""
        self.target = b""
        self.version = "1.1"
        self.headers: list = []
        self.host: Optional[bytes] = None
        self.body_length: Optional[int] = None
        self.expect_continue = False
        self.upgrade: Optional[bytes] = None
        self.idempotent = True
        self.decision = None
        self.node = None
        self.x_forwarded = False
        self.proxy_connection = False
        self.keep_alive = True
        self.path = ""
        self.query = b""
        self.cookies: Optional[list] = None
        self.error: Optional[tuple] = None
        self.headers0: Optional[list] = None
        self.connection: Optional[list] = None
        self.upgrade_token: Optional[bytes] = None
        self.skipped_body = False
        self.tunnel_candidate = False
        self.head_size = 0
        self.upstream = None
        self.attempts = 0
        self.exclude: frozenset = frozenset()
        self.stale_retry = False
        self.wait_until = 0.0
        self.wait_call = None
        self.body: Optional[list] = None
        self.body_held = 0
        self.body_done = False
        self.body_received = 0
        self.body_sent = 0
        self.end_sent = False
        self.flowing = False
        self.counted = False
        self.resp_started = False
        self.resp_chunked = False
        self.resp_close = False
        self.done = False
        self.tunnel = False
        self.no_body = False
        obs = proto._observer
        self.start = obs.clock() if obs is not None else 0.0
        self.status = 0
        self.sent = 0
        self.up_start = 0.0
        self.upstream_time = -1.0

    def template(self) -> tuple:
        """
        What parsing a request head without a body gave (the fields
        L{ClientProtocol.on_headers_complete} leaves set), for
        L{ProxyFactory.request_heads}; L{remembered} sets them again.  The
        sequences become tuples: shared between requests, never changed.
        """
        cookies = self.cookies
        return (self.method, self.target, self.version, tuple(self.headers), self.host,
                self.body_length, self.keep_alive, self.path, self.query,
                None if cookies is None else tuple(cookies), self.upgrade_token,
                self.x_forwarded, self.proxy_connection, self.idempotent)

    def remembered(self, template: tuple, target: Optional[bytes] = None) -> None:
        """
        Take a L{template} (of a head without a body, so the body is done);
        with C{target}, an origin-form target of the same request line
        syntax, that target instead of the template's (what C{_checkHead}
        makes of it).
        """
        (self.method, self.target, self.version, self.headers, self.host,
         self.body_length, self.keep_alive, self.path, self.query, self.cookies,
         self.upgrade_token, self.x_forwarded, self.proxy_connection,
         self.idempotent) = template
        self.head_size = -1
        self.body_done = True
        if target is not None:
            self.target = target
            q = target.find(b"?")
            if q >= 0:
                self.query = target[q + 1:]
                target = target[:q]
            else:
                self.query = b""
            self.path = target.decode("utf-8", "surrogateescape")

    # -- routing ------------------------------------------------------------

    def route(self) -> None:
        """Elect a node (again, on failover) and start an attempt."""
        self.wait_call = None
        if self.done:
            return
        f = self.proto.factory
        policy = f.policy
        host = parse_host(self.host) if policy.use_alias and self.host is not None else None
        cookie = None
        if self.cookies is not None:
            cookie = b"; ".join(self.cookies).decode("utf-8", "surrogateescape")
        now = f.now  # coarse (sweep) clock: only used for the worker retry interval
        d = choose(f.table(), host, self.path, cookie, now, policy, self.exclude)
        if d.__class__ is Decision:
            self._attempt(d, cookie, False)
            return
        if d.status == 503 and d.wait_worker > 0:
            now = f.reactor.seconds()
            if not self.wait_until:
                self.wait_until = now + d.wait_worker
            left = self.wait_until - now
            if left > 0:
                step = min(max(d.wait_worker / 100.0, 0.05), left)
                self.wait_call = f.reactor.callLater(step, self._reroute)
                return
        if d.status == 503 and f.stats is not None:
            reason = d.reason
            f.stats.unavailable[
                "sticky_route_down" if "session route" in reason
                else "context_unavailable" if reason.startswith("every context")
                else "no_node"] += 1
        self.proto._respondError(self, d.status, d.reason, d.retry_after)

    def _reroute(self) -> None:
        """L{route} from a callback (failover, WaitWorker): a bug must not hang the client."""
        try:
            self.route()
        except Exception:
            self.proto._routingBug(self)

    def _attempt(self, d, cookie: Optional[str], fresh: bool, queued: bool = False) -> None:
        f = self.proto.factory
        node = d.node
        self.decision = d
        self.node = node
        if d.strip is not None:
            self._strip(d, cookie)
        elif self.headers0 is not None:
            self.headers = self.headers0
            self.target = self._target()
        forwarder = f.forwarders.get(node.settings.type)
        if forwarder is None:
            self.proto._respondError(
                self, 502, f"no forwarder for node {node.route} of type {node.settings.type}")
            return
        if self.tunnel_candidate:
            self.upgrade = self.upgrade_token if node.settings.type in _DIRECT_SCHEMES else None
        if d.session_id is not None and f.sessions is not None:
            f.sessions.seen(d.session_id, node.route, f.now)
        rt = node.rt
        limit = f.node_limit
        if limit and not queued and (rt.busy >= limit or f.queues):
            if f.admit(self, node, limit, cookie, fresh):
                return
        rt.busy += 1
        rt.requests += 1
        crt = d.context.rt
        crt.in_flight += 1
        crt.requests += 1
        self.counted = True
        self.flowing = False
        self.end_sent = False  # a new attempt gets the end of the body again
        self.upstream = None
        obs = self.proto._observer
        if obs is not None:
            self.up_start = obs.clock()
        up = forwarder.forward(self, fresh)
        if self.done:  # pragma: no cover - forwarders do not fail synchronously
            return
        self.upstream = up
        if self.proto._blocked:
            up.pauseResponse()
        if self.flowing:  # resumeRequestBody() came during forward()
            self._deliver()

    def _target(self) -> bytes:
        path = self.path.encode("utf-8", "surrogateescape")
        return path + b"?" + self.query if self.query else path

    def _strip(self, d, cookie: Optional[str]) -> None:
        """StickySessionRemove: drop the session id from the path or Cookie."""
        if self.headers0 is None:
            self.headers0 = self.headers
        path, new_cookie = strip_session(self.path, cookie, d)
        if path != self.path:
            target = path.encode("utf-8", "surrogateescape")
            self.target = target + b"?" + self.query if self.query else target
        else:
            self.target = self._target()
        headers = self.headers0
        if new_cookie != cookie:
            out = []
            placed = False
            for name, value in headers:
                if name.lower() == b"cookie":
                    if not placed and new_cookie is not None:
                        out.append((name, new_cookie.encode("utf-8", "surrogateescape")))
                    placed = True
                    continue
                out.append((name, value))
            headers = out
        self.headers = headers

    def detach(self) -> None:
        """
        Done, answered by the proxy itself: abort the node request in flight,
        if any, and give back the attempt's counters (the error answers of
        HTTP/1.1 and HTTP/2).
        """
        self.done = True
        up = self.upstream
        self.upstream = None
        self._release()
        if up is not None:
            up.abort()

    def _release(self) -> None:
        """Give back the counters of the current attempt (exactly once)."""
        if self.counted:
            self.counted = False
            d = self.decision
            d.node.rt.busy -= 1
            d.context.rt.in_flight -= 1
            queues = self.proto.factory.queues
            if queues and d.node.id in queues:
                self.proto.factory.wake(d.node)

    # -- request body towards the forwarder ---------------------------------

    def resumeRequestBody(self) -> None:
        if self.done:
            return
        self.flowing = True
        if self.upstream is not None:
            self._deliver()

    def _deliver(self) -> None:
        proto = self.proto
        body = self.body
        if body:
            up = self.upstream
            while body and self.flowing and not self.done:
                chunk = body.pop(0)
                self.body_held -= len(chunk)
                self.body_sent += len(chunk)
                up.requestBody(chunk)
            if self.body_held < BODY_BUFFER:
                proto._resumeReading(_P_BUFFER)
        if self.flowing and not self.done:
            if self.body_done and not self.end_sent and not body:
                self.end_sent = True
                self.upstream.requestBodyEnd()
            proto._resumeReading(_P_UPSTREAM)

    def pauseRequestBody(self) -> None:
        if self.done:
            return
        self.flowing = False
        if not self.body_done or self.tunnel:
            self.proto._pauseReading(_P_UPSTREAM)

    def _bodyData(self, data: bytes) -> None:
        if self.flowing and self.upstream is not None:
            self.body_sent += len(data)
            self.upstream.requestBody(data)
            return
        if self.body is None:
            self.body = [data]
        else:
            self.body.append(data)
        self.body_held += len(data)
        if self.body_held >= BODY_BUFFER:
            self.proto._pauseReading(_P_BUFFER)

    def _bodyEnd(self) -> None:
        self.body_done = True
        if self.end_sent:
            return
        if self.flowing and not self.body and not self.end_sent and self.upstream is not None:
            self.end_sent = True
            self.upstream.requestBodyEnd()

    def replayable(self) -> bool:
        if self.body_sent:
            return False
        if self.idempotent:
            return True
        return self.body_length is not None and self.body_length != 0 and not self.end_sent

    # -- response from the forwarder -----------------------------------------

    def responseInformational(self, status: int, reason: bytes, headers) -> None:
        if self.done or self.resp_started:
            return
        if headers.__class__ is not bytes:
            headers = header_block(headers)
        if self.version != "1.0":
            self.proto._out.append(informational_head(status, reason, headers))

    def responseHead(self, status: int, reason: bytes, headers, length: int) -> None:
        if self.done or self.resp_started:
            return
        self.resp_started = True
        self.status = status
        if headers.__class__ is not bytes:
            headers = header_block(headers)
        proto = self.proto
        if proto._observer is not None:
            self.upstream_time = proto._observer.clock() - self.up_start
        d = self.decision
        node = d.node
        rt = node.rt
        if rt.fails or d.retrying or rt.in_error or status >= 500:
            proto.factory.node_answered(node, d.retrying, status)
        if status == 101:
            self.tunnel = True
            self.resp_close = True
            proto._out.append(b"HTTP/1.1 101 %s\r\n%s\r\n" % (reason, headers))
            proto._startTunnel(self)
            return
        close = not self.keep_alive or not self.body_done or self.tunnel_candidate
        framing = b""
        if self.method == _HEAD or status == 204 or status == 304:
            self.no_body = True
        elif length < 0:
            if self.version == "1.0":
                close = True
            else:
                self.resp_chunked = True
                framing = b"Transfer-Encoding: chunked\r\n"
        self.resp_close = close
        if close:
            end = b"\r\n" if self.version == "1.0" else b"Connection: close\r\n\r\n"
        else:
            end = b"Connection: keep-alive\r\n\r\n" if self.version == "1.0" else b"\r\n"
        proto._out.append(b"HTTP/1.1 %d %s\r\n%s%s%s" % (status, reason, headers, framing, end))

    def responseBody(self, data: bytes) -> None:
        if self.done or not data:
            return
        self.sent += len(data)
        if self.resp_chunked:
            self.proto._out += (b"%x\r\n" % len(data), data, b"\r\n")
        elif not self.no_body:
            self.proto._out.append(data)

    def flush(self) -> None:
        if not self.done:
            self.proto._flush()

    def responseEnd(self) -> None:
        if self.done:
            return
        self.done = True
        self.upstream = None
        self._release()
        if self.resp_chunked:
            self.proto._out.append(_CHUNKED_END)
        obs = self.proto._observer
        if obs is not None:
            obs.done(self, self.status, 0 if self.no_body else self.sent)
        self.proto._exchangeDone(self, self.resp_close)

    def responseFailed(self, error: ForwardError) -> None:
        if self.done:
            return
        self.upstream = None
        self.flowing = False
        self._release()
        proto = self.proto
        f = proto.factory
        node = self.node
        route = node.route
        kind = error.kind
        if self.resp_started:
            f.limiter.emit("cut off", LogLevel.warn,
                           "response from node {route} for {method} {target} cut off: "
                           "{message}", route=route, method=text(self.method),
                           target=text(self.target), message=error.message)
            self.done = True
            if proto._observer is not None:
                proto._observer.done(self, self.status, self.sent)
            if kind == PROTOCOL or kind == RESET:
                # A broken or cut response feeds passive health; it does not put
                # the node in error by itself (one bad answer is not an outage).
                f.passive_failure(node, error.message)
            proto._abortClient()
            return
        safe = not error.request_sent or self.replayable()
        if kind == TIMEOUT:
            proto._respondError(self, 504, f"node {route}: {error.message}")
            return
        if kind == RESET and (error.reused or error.request_sent):
            if safe and not self.stale_retry:
                # Keep-alive race: the pooled connection was closed by the node
                # before it read the request.  Always retried once, on a fresh
                # connection to the same node (outside the retry budget).  A
                # reset of a fresh connection before the head is retried there
                # once too: a node that died is then a connect failure
                # (failover, within the budget), a live node resetting again is
                # a response-level failure (502).
                self.stale_retry = True
                cookie = None
                if self.cookies is not None:
                    cookie = b"; ".join(self.cookies).decode("utf-8", "surrogateescape")
                try:
                    self._attempt(self.decision, cookie, True)
                except Exception:
                    proto._routingBug(self)
                return
            if not safe and error.reused:
                proto._respondError(self, 502, f"node {route}: {error.message}")
                return
        if kind != CONNECT and error.request_sent:
            # A response-level failure after a successful connect (reset before
            # the head, malformed head): this request fails, passive health
            # counts it.  Not replayed on other nodes and the node is not put in
            # error: one bad request must not take a context down (issue 13 §2).
            f.passive_failure(node, error.message)
            proto._respondError(self, 502, f"node {route}: {error.message}")
            return
        # Connect-level failure: nothing reached the application.
        f.on_node_failure(route, error.message)
        f.passive_failure(node, error.message)
        b = self.decision.balancer
        if (safe and self.attempts < b.max_attempts
                and f.retry_budget.allow(b.name, f.balancer_requests(b.name))):
            self.attempts += 1
            self.exclude = self.exclude | {node.id}
            self.stale_retry = False
            if f.stats is not None and kind in f.stats.failovers:
                f.stats.failovers[kind] += 1
            f.limiter.emit("failover", LogLevel.info,
                           "failing over {method} {target} from node {route}: {message}",
                           method=text(self.method), target=text(self.target), route=route,
                           message=error.message)
            self._reroute()
            return
        if kind == CONNECT:
            if f.stats is not None:
                f.stats.unavailable["node_failed"] += 1
            proto._respondError(self, 503, f"node {route}: {error.message}",
                                f.policy.retry_after)
        else:
            proto._respondError(self, 502, f"node {route}: {error.message}")

    # -- client side ends ----------------------------------------------------

    def abort(self) -> None:
        """The client connection is gone or the front gives up on it."""
        if self.done:
            return
        self.done = True
        if self.wait_call is not None and self.wait_call.active():
            self.wait_call.cancel()
        self.wait_call = None
        up = self.upstream
        self.upstream = None
        self._release()
        obs = self.proto._observer
        if obs is not None and (self.method or self.resp_started):
            obs.done(self, self.status if self.resp_started else CLIENT_CLOSED, self.sent)
        if up is not None:
            up.abort()


@implementer(IPushProducer, IHandshakeListener)
class ClientProtocol(Protocol):
    """
    One client connection.  It is its transport's push producer, so a client
    that does not read pauses the node connection feeding it.
    """

    #: the address given to L{ProxyFactory.buildProtocol} (the peer), if any
    _addr = None

    def __init__(self, factory: "ProxyFactory") -> None:
        self.factory = factory
        self._parser = HttpRequestParser(self)
        self._reading: Optional[_Exchange] = None
        self._current: Optional[_Exchange] = None
        self._queue: deque = deque()
        self._out: list = []
        self._pause = 0
        self._closing = False
        self._ignore = False
        self._seen = factory.now
        self._head_bytes = 0
        # read deadlines (checkTimeout): when the request head being received
        # began (the accept for the first one; None between requests), and the
        # request body being timed, since when, from which byte count (set by
        # the sweep when it first sees the body, so no per-request work)
        self._head_start: Optional[float] = factory.now
        self._body_timed: Optional[_Exchange] = None
        self._body_since = 0.0
        self._body_base = 0
        self._blocked = False
        self._blocked_since = 0.0
        self._linger_until = 0.0
        self._tunnel: Optional[_Exchange] = None
        self._upgrading: Optional[_Exchange] = None
        self._in_next = False
        self._write = None
        # while the parser reads bytes that may be one request head to
        # remember (ProxyFactory.request_heads): the bytes, the request_blocks
        # key when the request line allows one, and the template once parsed
        self._record: Optional[bytes] = None
        self._record_block: Optional[tuple] = None
        self._captured: Optional[tuple] = None
        self._feeding = False  # in the parser's feed_data
        self.client: Optional[ClientInfo] = None
        #: the factory's L{Observer} (access log, client metrics) or None
        self._observer = factory.observer
        self._handshaken = False

    # -- connection ------------------------------------------------------------

    def connectionMade(self) -> None:
        t = self.transport
        set_nodelay(t)
        self._write = direct_writer(t)
        # the peer address the listening port built for buildProtocol (the
        # same as getPeer() gives, also under TLS): not a second one
        peer = self._addr
        if peer is None:
            peer = t.getPeer()
        self.client = ClientInfo(  # the local address is read when a forwarder asks
            getattr(peer, "host", "") or "", getattr(peer, "port", 0) or 0,
            secure=ISSLTransport.providedBy(t), transport=t)
        t.registerProducer(self, True)
        self.factory._clients.add(self)
        stats = self.factory.stats
        if stats is not None:
            stats.connections += 1
            stats.open += 1

    def handshakeCompleted(self) -> None:
        """L{IHandshakeListener}: a TLS client finished its handshake."""
        self._handshaken = True
        stats = self.factory.stats
        if stats is not None:
            stats.tls_handshakes += 1

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
        self._out = []
        ex = self._current
        self._current = None
        if ex is not None:
            ex.abort()
        for queued in self._queue:
            queued.done = True
        self._queue.clear()
        self._reading = None

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
            if data.endswith(_HEAD_END) and len(data) <= REQUEST_MEMO_BYTES:
                # One request head without a body, as seen before?
                f = self.factory
                template = f.request_heads.get(data)
                if template is None:
                    key = data
                    if f.split_heads:
                        # the same header block after another request line?
                        i = data.find(b"\r\n")
                        m = _REQUEST_LINE.fullmatch(data, 0, i)
                        if m is not None:
                            key = (m[1], m[3], data[i + 2:])
                            template = f.request_blocks.get(key)
                            if (template is not None and self._current is None
                                    and not self._queue):
                                self._remembered(template, m[2])
                                return
                    # remembered from the second time on: a head seen once
                    # costs no template
                    seen = f.request_seen
                    if key in seen:
                        self._record = record = data
                        if key is not data:
                            self._record_block = key
                    else:
                        if len(seen) >= REQUEST_SEEN_SIZE:
                            seen.clear()
                        seen.add(key)
                elif self._current is None and not self._queue:
                    self._remembered(template)
                    return
            if self._head_start is None:
                self._head_start = self._seen
            self._head_bytes += len(data)
        elif reading.head_size >= 0:
            self._head_bytes += len(data)
        self._feeding = True
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade as e:
            self._upgraded(data[e.args[0]:])
        except HttpParserError as e:
            self._parseFailed(e)
        else:
            if record is not None:
                captured = self._captured
                if captured is not None and self._reading is None:
                    # exactly one request, complete: remember its head
                    f = self.factory
                    memo = f.request_heads
                    if len(memo) >= REQUEST_MEMO_SIZE:
                        memo.clear()
                    memo[record] = captured
                    block = self._record_block
                    if block is not None:
                        # and its header block, for other targets
                        blocks = f.request_blocks
                        if len(blocks) >= REQUEST_MEMO_SIZE:
                            blocks.clear()
                        blocks[block] = captured[:1] + (None,) + captured[2:7] + (
                            None, None) + captured[9:]
        finally:
            self._feeding = False
        if record is not None:
            self._record = self._captured = self._record_block = None
        reading = self._reading
        if (reading is not None and reading.head_size >= 0
                and self._head_bytes > self.factory.config.max_header_size and not self._ignore):
            self._requestError(431, "request head too large")

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade as e:
            self._upgraded(data[e.args[0]:])
        except HttpParserError as e:
            self._parseFailed(e)

    def _parseFailed(self, e: HttpParserError) -> None:
        if self._ignore:
            return
        cause = e.__context__ if e.__context__ is not None else e
        if isinstance(cause, _TooManyPipelined):
            self._ignore = True
            return
        if isinstance(cause, _RequestRefused):
            return
        if not isinstance(cause, HttpParserError):
            log.failure("bug while parsing a request", Failure(cause))
            self._requestError(500, "internal error")
            return
        if str(e) == "Invalid HTTP version":
            # llhttp refuses versions other than 0.9, 1.0, 1.1, 2.0
            self._requestError(505, "HTTP version not supported")
            return
        self._requestError(400, f"malformed request: {e}")

    def on_message_begin(self) -> None:
        if len(self._queue) >= MAX_PIPELINE:
            raise _TooManyPipelined()
        ex = _Exchange(self)
        self._reading = ex
        self._captured = None  # a second request in the bytes being recorded

    def on_url(self, url: bytes) -> None:
        ex = self._reading
        ex.target += url
        ex.head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self._reading
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
            self._queue.append(ex)
            self._pauseReading(_P_PIPELINE)

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
        if host is not None and host not in self.factory.valid_hosts:
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

    def _remembered(self, template: tuple, target: Optional[bytes] = None) -> None:
        """
        A request head in L{ProxyFactory.request_heads} (or its header block
        in L{ProxyFactory.request_blocks}, with C{target} from the request
        line): what C{on_message_begin}, C{on_url}, C{on_header},
        C{on_headers_complete} and C{on_message_complete} do for it, without
        the parser (which stays at the message boundary where the previous
        request left it).
        """
        ex = _Exchange(self)
        ex.remembered(template, target)
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
            ex.route()
        except Exception:
            self._routingBug(ex)
        self._reading = None
        if ex is self._current and not ex.done:
            ex._bodyEnd()
        if not ex.keep_alive:
            self._ignore = True  # nothing after a "close" request is read

    def on_body(self, data: bytes) -> None:
        ex = self._reading
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
            # Hold what follows (early tunnel bytes) until the node answers 101.
            self._parser = None
            self._ignore = True
            if rest:
                if ex is self._current:
                    ex._bodyData(rest)
                else:
                    ex.body = [rest]
            self._pauseReading(_P_UPGRADE)
            return
        # Not tunnelled: the Upgrade header is dropped and the request is plain
        # HTTP.  llhttp skipped its body, so a fresh parser reads on.
        self._parser = HttpRequestParser(self)
        if ex.skipped_body:
            ex.skipped_body = False
            wrapper = _BodyAfterUpgrade(self, ex)
            self._parser = parser = HttpRequestParser(wrapper)
            wrapper.parser = parser
            self._reading = ex
            ex.head_size = -1
            framing = (b"Transfer-Encoding: chunked" if ex.body_length == -1
                       else b"Content-Length: %d" % ex.body_length)
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
            self._queue.append(ex)

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

    def _exchangeDone(self, ex: _Exchange, close: bool) -> None:
        if ex is not self._current:
            return
        self._current = None
        if self._pause & _P_EXCHANGE:
            self._resumeReading(_P_EXCHANGE)
        out = self._out
        if out and self.connected:
            self._write(out[0] if len(out) == 1 else b"".join(out))
            self._out = []
        if close or not ex.body_done:
            self._close(linger=not ex.body_done and not ex.tunnel)
        elif self._queue or self._ignore:
            self._next()
        elif self._pause & _P_PIPELINE:
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
        if self._current is None and self._ignore and not self._tunnel:
            self._flush()
            self._close(linger=False)
            return
        if not self._queue:
            self._resumeReading(_P_PIPELINE)

    def _startTunnel(self, ex: _Exchange) -> None:
        self._tunnel = ex
        self._flush()
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
            self._write(out[0] if len(out) == 1 else b"".join(out))
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
            self.transport.resumeProducing()
            self.transport.loseWriteConnection()
        elif self._reading is None and not self._feeding:
            lose_connection(self.transport)  # may call connectionLost now
        else:
            # inside parser callbacks: connectionLost must not run under them
            self.transport.loseConnection()

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

    # -- timeouts (called by the factory's sweep) ---------------------------------

    def checkTimeout(self, now: float, limit: float) -> None:
        """
        Called once a second by the sweep: the idle/stall timeout C{limit}
        (C{client_timeout}), the request read deadlines
        (L{ProxyFactory.read_timeouts}), lingering closes.  Deadlines are
        never early, and up to one sweep interval late.
        """
        if self._linger_until:
            if now >= self._linger_until:
                self.transport.abortConnection()
            return
        limit += SWEEP_INTERVAL  # coarse clock: never early
        if self._blocked:
            if now - self._blocked_since > limit:
                if not self._closing:
                    self._timedOut("send", f"did not read its response for {limit:g} s", now)
                self._abortClient()
            return
        if self._tunnel is not None:
            return
        if not self._ignore and self._checkReadDeadlines(now):
            return
        if now - self._seen <= limit:
            return
        ex = self._current
        if ex is None:
            if self._reading is not None and self._reading.head_size >= 0:
                self._timedOut("header", f"request head stalled for {limit:g} s", now)
                self._requestError(408, "request head not received in time")
            else:
                self._closing = True
                self.transport.loseConnection()
            return
        if self._pause & (_P_UPSTREAM | _P_BUFFER | _P_UPGRADE):
            return  # we are the ones not reading
        if not ex.body_done and not ex.skipped_body:
            self._timedOut("body", f"request body stalled for {limit:g} s", now)
            if ex.resp_started:
                self._abortClient()
            else:
                self._respondError(ex, 408, "request body not received in time")

    def _checkReadDeadlines(self, now: float) -> bool:
        """
        The request head and body deadlines (httpd's C{RequestReadTimeout});
        true when the client was cut.
        """
        rt = self.factory.read_timeouts
        reading = self._reading
        if reading is not None and reading.head_size < 0:
            # a request body on its way: timed from when the sweep first sees
            # it, and only while we read (not while a slow node, a full
            # buffer or a queued request makes us pause the client)
            if (self._pause or not rt.body
                    or (reading.expect_continue and not reading.body_received)):
                # (a client that asked for 100-continue may wait for it: the
                # node sends it; until the first body byte only the idle
                # timeout applies)
                self._body_timed = None
            elif self._body_timed is not reading:
                self._body_timed = reading
                self._body_since = now
                self._body_base = reading.body_received
            else:
                received = reading.body_received - self._body_base
                allowed = rt.body_allowed(received)
                if now - self._body_since > allowed + SWEEP_INTERVAL:
                    self._timedOut("body", f"request body too slow ({received} bytes in "
                                   f"{now - self._body_since:.0f} s)", now)
                    self._requestError(408, "request body not received in time")
                    return True
            return False
        self._body_timed = None
        if not rt.header or (reading is None and self._head_start is None):
            return False  # between requests: the idle timeout applies
        start = self._head_start
        if start is None or self._current is not None or self._queue:
            # first seen now (a head after another request in the same read),
            # or we are still serving earlier requests: the clock starts now
            self._head_start = now
            return False
        allowed = rt.header_allowed(self._head_bytes)
        if now - start <= allowed + SWEEP_INTERVAL:
            return False
        if reading is not None or self._head_bytes:
            self._timedOut("header", f"request head not complete after {allowed:g} s "
                           f"({self._head_bytes} bytes)", now)
            self._requestError(408, "request head not received in time")
        else:
            self._timedOut("header", f"no request in {allowed:g} s", now)
            self._closing = True
            self._ignore = True
            self.transport.loseConnection()
        return True

    def _timedOut(self, reason: str, what: str, now: float) -> None:
        client = self.client
        self.factory.timeouts.timedOut(reason, client.remote_addr if client else "?",
                                       what, now)


class _RequestRefused(Exception):
    """Raised from a parser callback to stop parsing a refused request."""


class _BodyAfterUpgrade:
    """
    Parser callbacks for the body of an Upgrade request that is not tunnelled:
    a fresh parser is given a made-up head with the request's framing, then the
    bytes llhttp did not read; from the next request on everything goes to the
    client protocol as usual.
    """

    def __init__(self, proto: ClientProtocol, ex: _Exchange) -> None:
        self.proto = proto
        self.ex = ex
        self.parser = None
        self.made_up = True

    def on_message_begin(self) -> None:
        if not self.made_up:
            self.proto.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self.made_up:
            self.proto.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.made_up:
            self.proto.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.made_up:
            self.made_up = False
            self.proto._reading = self.ex
        else:
            self.proto._parser = self.parser
            self.proto.on_headers_complete()

    def on_body(self, data: bytes) -> None:
        self.proto.on_body(data)

    def on_message_complete(self) -> None:
        self.proto.on_message_complete()


class ProxyFactory(Factory):
    """
    Builds L{ClientProtocol}s for every client listener and owns what they
    share: the routing policy, the forwarders (and so the node pools), the
    coarse clock, and the timeout sweep.

    @param reactor: provides C{IReactorTCP}, C{IReactorTime}.
    @param config: the C{[proxy]} settings.
    @param table: returns the current L{RoutingTable} (called per request).
    @param on_node_failure: C{(route, reason)}: a connect-level forwarding
        failure that puts the node in error (refused, connect timeout, TLS
        handshake, a node gone on retry).  Response-level failures feed passive
        health instead (L{passive_failure}).
    @param on_node_success: C{(route)}: a node in error (or tried after its
        retry interval) answered.
    @param forwarders: node C{Type} → L{IForwarder}, added to (and overriding)
        the built-in HTTP forwarder for C{http}, C{https}, C{ws}, C{wss}.
    @param node_tls: node → C{IOpenSSLClientConnectionCreator} for https/wss
        nodes (default: C{optionsForClientTLS(host)} with the system trust).
    @param policy: the routing policy; default built from C{config} (with
        C{worker_retry} 60 s).
    @param on_node_ejected: C{(route, seconds, reason)}: passive health ejected
        a node (for the control process of worker processes; optional).
    @param retry_budget: the L{RetryBudget} of failover replays (default from
        C{config}).
    """

    noisy = False

    def __init__(self, reactor, config, table: Callable,
                 on_node_failure: Callable[[str, str], None],
                 on_node_success: Callable[[str], None], forwarders: Optional[dict] = None,
                 node_tls: Optional[Callable] = None,
                 policy: Optional[RoutingPolicy] = None,
                 observer: Optional[Observer] = None,
                 on_node_ejected: Optional[Callable[[str, float, str], None]] = None,
                 retry_budget: Optional[RetryBudget] = None) -> None:
        self.reactor = reactor
        #: what records finished requests (access log, client metrics), or None
        self.observer = observer
        #: the client-side counters (C{observer.stats}), or None
        self.stats: Optional[ClientStats] = observer.stats if observer is not None else None
        #: the L{modcluster.proxy.sessions.SessionTable} (manager.max_session_ids > 0)
        self.sessions = None
        self.config = config
        self.table = table
        self.on_node_failure = on_node_failure
        self.on_node_success = on_node_success
        self.on_node_ejected = on_node_ejected
        #: requests in flight allowed per node and process (0: no limit), and
        #: the number of data-plane processes.  Not the node's CONFIG smax:
        #: in mod_proxy that is the soft bound of the idle pool (see
        #: docs/balancing.md, "Beyond mod_proxy_cluster")
        self.processes = max(1, getattr(config, "workers", 1))
        self.node_limit = -(-config.max_in_flight_per_node // self.processes)
        #: node id -> FIFO of (exchange, cookie, fresh) waiting for a slot
        self.queues: dict = {}
        #: requests answered 503 because the queue was full or they waited too long
        self.queue_rejected = 0
        self.retry_budget = retry_budget or RetryBudget(
            config.retry_budget, config.retry_budget_window, config.retry_budget_min)
        self.policy = policy or RoutingPolicy(
            use_alias=config.use_alias,
            deterministic_failover=config.deterministic_failover,
            no_context_status=config.response_status_on_no_context,
            unavailable_context_status=config.unavailable_context_status,
            retry_after=config.retry_after,
            **resilience_settings(config))
        self.http = HttpForwarder(reactor, config, node_tls)
        self.forwarders = {scheme: self.http for scheme in _DIRECT_SCHEMES}
        if forwarders:
            self.forwarders.update(forwarders)
        self.tunnel = config.enable_ws_tunnel
        self.upgrade_match = upgrade_matcher(config.ws_upgrade_header)
        self._clients: set[ClientProtocol] = set()
        #: request head bytes -> L{_Exchange.template} of what parsing them
        #: gave, for heads that were exactly one request without a body
        #: (bounded; emptied when full).  Clients repeat their heads (same
        #: resource, same cookies), so most requests skip the parser.
        self.request_heads: dict[bytes, tuple] = {}
        #: heads (at most 2 KiB) seen once, as their bytes or, for those with
        #: a L{_REQUEST_LINE}, their L{request_blocks} key: a head is
        #: remembered the second time it comes (bounded; emptied when full)
        self.request_seen: set = set()
        #: (method, minor version, header block) -> the template of a request
        #: with that request line syntax (L{_REQUEST_LINE}) and header block,
        #: without its target: requests for other resources with the same
        #: headers (a browser's, a counter in the query string) skip the
        #: parser too.  Only when a head within the memo's size limit cannot
        #: exceed C{max_header_size} (the size checks need no recount).
        self.request_blocks: dict[tuple, tuple] = {}
        self.split_heads = config.max_header_size >= REQUEST_MEMO_BYTES
        #: Host values that passed L{valid_host} (bounded; emptied when full):
        #: a set lookup instead of the regex for the usual few host names
        self.valid_hosts: set = set()
        self._generation = -1
        self.now = reactor.seconds()
        self.date = formatdate(self.now, usegmt=True).encode("ascii")
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = reactor
        #: the request head/body deadlines (C{request_*} keys of C{[proxy]})
        self.read_timeouts = ReadTimeouts.from_config(config)
        #: clients cut for being slow: counts by reason, rate-limited log
        self.timeouts = TimeoutReport("proxy", log)
        #: per-request log lines (errors, failovers), rate-limited on the coarse clock
        self.limiter = LogLimiter(log, lambda: self.now)

    def rememberHost(self, host: bytes) -> None:
        """Remember a valid Host value (at most 256 of at most 255 bytes)."""
        if len(host) <= 255:
            hosts = self.valid_hosts
            if len(hosts) >= 256:
                hosts.clear()
            hosts.add(host)

    def reconfigure(self, config) -> None:
        """
        Reload: take C{config}, a L{ProxyConfig} differing from the current one
        only in settings read per request or per sweep (see
        modcluster/tap.py C{PROXY_LIVE}); the forwarders take theirs.
        """
        self.config = config
        self.read_timeouts = ReadTimeouts.from_config(config)
        for fw in self._uniqueForwarders():
            reconfigure = getattr(fw, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(config)

    def drain(self) -> int:
        """
        Stopping: close the idle client connections; return how many are
        still busy (a request in flight, a request head arriving, a tunnel).
        """
        busy = 0
        for client in list(self._clients):
            drain = getattr(client, "drain", None)
            if drain is not None:  # HTTP/2 connections, TLS handshakes (proxy/h2.py)
                busy += drain()
                continue
            if client._current is None and not client._queue and client._tunnel is None \
                    and (client._reading is None or client._reading.head_size < 0):
                client._closing = True
                client.transport.loseConnection()
            else:
                busy += 1
        return busy

    # -- per-node concurrency limit (docs/balancing.md, "Beyond mod_proxy_cluster")

    def admit(self, ex: _Exchange, node, limit: int, cookie, fresh: bool) -> bool:
        """
        C{node} is at its limit of requests in flight (or others wait for it):
        queue C{ex} (FIFO, bounded) until a slot frees, or answer 503 at once
        when the queue is full.  Returns C{True} when C{ex} was queued or
        answered, C{False} when it may go now.
        """
        queue = self.queues.get(node.id)
        if queue is not None:
            while queue and queue[0][0].done:  # clients that left while waiting
                queue.popleft()
        if not queue:
            if node.rt.busy < limit:
                return False  # others wait for other nodes only
            if queue is None:
                queue = self.queues[node.id] = deque()
        if len(queue) >= self.config.node_queue_size:
            self.queue_rejected += 1
            ex.proto._respondError(ex, 503, f"node {node.route} busy ({limit} requests in "
                                   "flight, queue full)", self.policy.retry_after)
            return True
        ex.counted = False
        entry = (ex, cookie, fresh)
        queue.append(entry)
        ex.wait_call = self.reactor.callLater(self.config.node_queue_timeout,
                                              self._queueTimeout, node, entry, limit)
        return True

    def _queueTimeout(self, node, entry, limit: int) -> None:
        ex = entry[0]
        ex.wait_call = None
        queue = self.queues.get(node.id)
        if queue is not None:
            try:
                queue.remove(entry)
            except ValueError:
                pass
            if not queue:
                del self.queues[node.id]
        if not ex.done:
            self.queue_rejected += 1
            ex.proto._respondError(ex, 503, f"node {node.route} busy ({limit} requests in "
                                   f"flight for {self.config.node_queue_timeout:g} s)",
                                   self.policy.retry_after)

    def wake(self, node) -> None:
        """A request on C{node} ended: let the next waiting ones go."""
        queue = self.queues.get(node.id)
        limit = self.node_limit
        rt = node.rt
        while queue and (not limit or rt.busy < limit):
            ex, cookie, fresh = queue.popleft()
            if ex.done:
                continue
            call = ex.wait_call
            if call is not None and call.active():
                call.cancel()
            ex.wait_call = None
            try:
                ex._attempt(ex.decision, cookie, fresh, queued=True)
            except Exception:
                ex.proto._routingBug(ex)
        if not queue:
            self.queues.pop(node.id, None)

    def balancer_requests(self, name: str) -> int:
        """Requests sent to the nodes of balancer C{name} so far (for the retry budget)."""
        return sum(e.rt.requests for e in self.table().nodes if e.settings.balancer == name)

    def plane_totals(self) -> dict:
        """Retry budget refusals, requests queued now and queue refusals, for
        /metrics (summed over worker processes by the pool)."""
        return {"retry_refused": self.retry_budget.refused, "queued": self.queued(),
                "queue_rejected": self.queue_rejected}

    def queued(self) -> int:
        """Requests waiting for a node slot now."""
        return sum(len(q) for q in self.queues.values())

    def passive_failure(self, node, reason: str) -> None:
        """
        A failure of C{node} for passive health (a connect error, a reset, a
        malformed response, a 5xx with C{eject_on_5xx}): consecutive ones eject
        the node for a while (L{record_failure}).
        """
        now = self.reactor.seconds()
        try:
            duration = record_failure(self.table(), node, now, self.policy)
        except Exception:
            log.failure("passive health of node {route}", route=node.route)
            return
        if duration is None:
            return
        log.warn("node {route} ejected for {seconds:g} s after {count} consecutive "
                 "failures (last: {reason})", route=node.route, seconds=duration,
                 count=self.policy.eject_failures, reason=reason)
        if self.on_node_ejected is not None:
            self.on_node_ejected(node.route, duration, reason)

    def node_answered(self, node, retrying: bool, status: int) -> None:
        """
        A response head came from C{node} while it had failures, was in error
        or retried, or the status is 5xx.
        """
        rt = node.rt
        if status >= 500:
            if self.policy.eject_on_5xx and status in _FAILURE_STATUSES:
                self.passive_failure(node, f"status {status}")
                return
        rt.fails = 0
        if retrying or rt.in_error:
            self.on_node_success(node.route)

    def buildProtocol(self, addr) -> ClientProtocol:
        p = ClientProtocol(self)
        p._addr = addr
        return p

    def startFactory(self) -> None:
        if not self._sweeper.running:
            self._sweeper.start(SWEEP_INTERVAL, now=False)

    def stopFactory(self) -> None:
        if self._sweeper.running:
            self._sweeper.stop()
        for fw in self._uniqueForwarders():
            fw.close()
        if self.observer is not None:
            self.observer.tick()

    def _uniqueForwarders(self) -> list:
        seen = []
        for fw in self.forwarders.values():
            if all(fw is not other for other in seen):
                seen.append(fw)
        return seen

    def sweep(self) -> None:
        """Once a second: coarse clock, Date, timeouts, pool upkeep."""
        now = self.reactor.seconds()
        self.now = now
        self.date = formatdate(now, usegmt=True).encode("ascii")
        self.limiter.tick(now)
        if self.observer is not None:
            try:
                self.observer.tick()
            except Exception:
                log.failure("access log flush failed")
        limit = self.config.client_timeout
        for client in list(self._clients):
            try:
                client.checkTimeout(now, limit)
            except Exception:
                log.failure("client timeout check failed")
        table = self.table()
        try:
            totals: dict = {}
            for entry in table.nodes:
                name = entry.settings.balancer
                totals[name] = totals.get(name, 0) + entry.rt.requests
            self.retry_budget.observe(totals)
        except Exception:
            log.failure("retry budget upkeep failed")
        forwarders = self._uniqueForwarders()
        if table.generation != self._generation:
            self._generation = table.generation
            for fw in forwarders:
                fw.retain(table.nodes)
        for fw in forwarders:
            try:
                fw.tick(now)
            except Exception:
                log.failure("forwarder upkeep failed")
