"""
One client request and its attempts (L{_Exchange}): the L{IExchange} that
the HTTP/1.x client connection (L{modcluster.proxy.client.ClientProtocol})
and the HTTP/2 streams (L{modcluster.proxy.h2}) hand to the forwarders.  It
routes (L{modcluster.balancer.choose}), starts attempts, fails over, and
relays the response to its client connection.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Optional, Union

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectingCancelledError
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from modcluster.accesslog import text
from modcluster.balancer import (
    Decision,
    Refusal,
    choose,
    parse_host,
    strip_session,
)
from modcluster.memo import BoundedMemo
from modcluster.proxy.headers import (
    header_block,
    informational_head,
)
from modcluster.proxy.interfaces import (
    CONNECT,
    PROTOCOL,
    RESET,
    TIMEOUT,
    ClientInfo,
    ForwardError,
    IExchange,
    IUpstream,
)
from modcluster.proxy.observe import CLIENT_CLOSED

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from modcluster.cluster.model import NodeEntry
    from modcluster.proxy.client import ClientProtocol
    from modcluster.proxy.h2 import _H2Exchange
    from modcluster.proxy.http import WholeHead

__all__: list[str] = []

log = Logger(namespace="modcluster.proxy")

#: Request body bytes held per request before the client is paused (while the
#: node connection is not ready, or for a queued pipelined request).
BODY_BUFFER = 256 * 1024

# Why the client transport is paused (bit set).
_P_PIPELINE = 1  # requests queued behind the current one
_P_BUFFER = 2  # too much request body held
_P_UPSTREAM = 4  # the node connection's write buffer is full
_P_UPGRADE = 8  # waiting for the node's answer to an Upgrade
_P_EXCHANGE = _P_BUFFER | _P_UPSTREAM | _P_UPGRADE  # reasons that end with the exchange

_HEAD = b"HEAD"
_CHUNKED_END = b"0\r\n\r\n"
_DIRECT_SCHEMES = ("http", "https", "ws", "wss")


class RequestHead:
    """
    What parsing a request head without a body gave (L{_Exchange.template}),
    remembered in L{ProxyFactory.request_heads} and, without its target
    (C{target}, C{path}, C{query} C{None}), in
    L{ProxyFactory.request_blocks}.  The fields (L{FIELDS}) are the
    L{_Exchange} slots of the same names, read by name; sequences are tuples
    (shared between requests, never changed).

    @ivar node_heads: see L{modcluster.proxy.http._node_head}.
    @ivar raw: the request head's bytes while it is remembered in
        L{ProxyFactory.request_heads} (its key there), else C{None}: a
        connection compares the next request with the last head it sent
        (C{ClientProtocol._last_head}) before the memo's lookup.
    @ivar values: the fields in L{FIELDS} order, an exact tuple:
        L{_Exchange.remembered} unpacks it in one step on the hot path (the
        interpreter's fast unpacking is for exact tuples only: unpacking a
        C{NamedTuple}, or copying 14 slots one by one, costs 470-740 more
        machine instructions per request).
    """

    __slots__ = ("values", "node_heads", "raw")

    FIELDS = ("method", "target", "version", "headers", "host", "body_length", "keep_alive",
              "path", "query", "cookies", "upgrade_token", "x_forwarded", "proxy_connection",
              "idempotent")

    method: bytes
    target: Optional[bytes]
    version: str
    headers: tuple
    host: Optional[bytes]
    body_length: Optional[int]
    keep_alive: bool
    path: Optional[str]
    query: Optional[bytes]
    cookies: Optional[tuple]
    upgrade_token: Optional[bytes]
    x_forwarded: object
    proxy_connection: object
    idempotent: bool

    def __init__(self, method: bytes, target: Optional[bytes], version: str, headers: tuple,
                 host: Optional[bytes], body_length: Optional[int], keep_alive: bool,
                 path: Optional[str], query: Optional[bytes], cookies: Optional[tuple],
                 upgrade_token: Optional[bytes], x_forwarded: object, proxy_connection: object,
                 idempotent: bool) -> None:
        self.values: tuple = (method, target, version, headers, host, body_length, keep_alive, path,
                       query, cookies, upgrade_token, x_forwarded, proxy_connection, idempotent)
        #: the HTTP forwarder's request head to a node for it, but for the
        #: method and target and the X-Forwarded-For lines, by Host line
        #: (modcluster.proxy.http._node_head)
        self.node_heads: dict[bytes, tuple[bytes, bytes, bytes]] = {}
        self.raw: Optional[bytes] = None

    def without_target(self) -> "RequestHead":
        """The same head for L{ProxyFactory.request_blocks}: no target."""
        (method, _, version, headers, host, body_length, keep_alive, _, _, cookies,
         upgrade_token, x_forwarded, proxy_connection, idempotent) = self.values
        return RequestHead(method, None, version, headers, host, body_length, keep_alive, None,
                           None, cookies, upgrade_token, x_forwarded, proxy_connection,
                           idempotent)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RequestHead) and other.values == self.values

    def __hash__(self) -> int:
        return hash(self.values)

    def __repr__(self) -> str:
        return "RequestHead(%s)" % ", ".join(
            f"{name}={value!r}" for name, value in zip(self.FIELDS, self.values))


class RequestHeadMemo(BoundedMemo[bytes, RequestHead]):
    """
    L{ProxyFactory.request_heads}: a L{BoundedMemo} whose templates know
    their key (L{RequestHead.raw}) while they are in it, so that a
    connection's last head (C{ClientProtocol._last_head}) is compared with
    the next request's bytes instead of hashing them for the lookup, and
    stops matching when the memo forgets it (emptied when full, or
    L{clear}): a forgotten head is looked up, parsed and remembered again as
    without the comparison.
    """

    __slots__ = ()

    def put(self, key: bytes, value: RequestHead) -> RequestHead:
        entries = self.entries
        if key in entries:  # (two connections parsed the same head)
            entries[key].raw = None
        BoundedMemo.put(self, key, value)
        value.raw = key
        return value

    def clear(self) -> None:
        for template in self.entries.values():
            template.raw = None
        BoundedMemo.clear(self)


def _field(index: int, name: str) -> property:
    return property(lambda self: self.values[index], doc=f"the {name} field")


for _index, _name in enumerate(RequestHead.FIELDS):
    setattr(RequestHead, _name, _field(_index, _name))
del _index, _name


#: b"HTTP/1.1 <status> " per status code seen (at most 900: 100-999)
_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = b"HTTP/1.1 %d " % status
    if 100 <= status <= 999:
        _STATUS_LINES[status] = line
    return line


def _whole_head(whole: WholeHead, end: bytes) -> bytes:
    """The head relayed for C{whole} (L{_Exchange.responseWhole}), ending in C{end}."""
    line = _STATUS_LINES.get(whole.status)
    if line is None:
        line = _status_line(whole.status)
    return b"".join((line, whole.reason, b"\r\n", whole.headers, end))


class _Knocking:
    """
    A knock at a node in progress (L{_Exchange._knock}), where the exchange
    keeps its WaitWorker call (C{wait_call}): what cancels that cancels it.
    """

    __slots__ = ("d",)

    def __init__(self, d) -> None:
        self.d = d

    def active(self) -> bool:
        return not self.d.called

    def cancel(self) -> None:
        self.d.cancel()


@implementer(IExchange)
class _Exchange:
    """
    One client request (and its attempts).  Implements L{IExchange}; see
    L{modcluster.proxy.interfaces} for the attributes the forwarder reads.
    """

    # Every slot, in one place.  The first group are the request
    # facts the forwarders read (see modcluster.proxy.interfaces); the others
    # are the front's own state.  HTTP/2 streams (_H2Exchange) use the same.
    __slots__ = (
        # -- request facts (IExchange) --
        "method",  # request method as received (bytes)
        "target",  # request target forwarded (after StickySessionRemove)
        "version",  # HTTP version forwarded: "1.0" or "1.1"
        "headers",  # header (name, value) pairs forwarded
        "host",  # Host header value, or None
        "body_length",  # None: no body, n >= 0: Content-Length n, -1: chunked
        "expect_continue",  # the client sent "Expect: 100-continue"
        "upgrade",  # the Upgrade token to forward (tunnel to http/ws nodes), or None
        "idempotent",  # the method may be replayed on another node (IDEMPOTENT_METHODS)
        "client",  # the connection's ClientInfo
        "decision",  # the balancer's Decision of the current attempt
        "node",  # the NodeEntry of the current attempt
        "x_forwarded",  # the client sent X-Forwarded-* headers (merged, not added)
        # -- parsing the request head --
        "proxy_connection",  # a Proxy-Connection header was removed
        "proto",  # the client connection (ClientProtocol, or H2Protocol for a stream)
        "keep_alive",  # the client connection may stay open after this exchange
        "path",  # decoded path (str, surrogateescape), for routing
        "query",  # the query after "?" (bytes, b"" when none)
        "cookies",  # Cookie header values (list), or None: for stickiness
        "error",  # (status, reason) the proxy answers instead of forwarding, or None
        "headers0",  # the headers as received, when StickySessionRemove changed them
        "connection",  # Connection header values (list), or None
        "upgrade_token",  # the client's Upgrade token, or None
        "skipped_body",  # llhttp did not read an Upgrade request's body: parsed afresh
        "tunnel_candidate",  # an Upgrade the factory may tunnel (no body, allowed token)
        "head_size",  # request head bytes counted so far; -1 for a remembered head
        "head_template",  # the RequestHead whose headers these are unchanged, or None
        # -- attempts (routing, failover) --
        "upstream",  # the IUpstream of the attempt in flight, or None
        "attempts",  # failovers to other nodes so far (max_attempts)
        "exclude",  # node ids already failed (frozenset), not chosen again
        "stale_retry",  # the once-per-node retry of a keep-alive race was used
        "wait_until",  # WaitWorker deadline (reactor seconds), 0.0 when not waiting
        "wait_call",  # the DelayedCall of the next WaitWorker election, or None
        # -- request body towards the node --
        "body",  # body chunks held (list) until the node connection takes them
        "body_held",  # bytes in body (the client is paused above BODY_BUFFER)
        "body_done",  # the whole request body was received from the client
        "body_received",  # request body bytes received from the client
        "body_sent",  # request body bytes handed to the upstream (no replay once > 0)
        "end_sent",  # requestBodyEnd() was called for the current attempt
        "flowing",  # the forwarder asked for the body (resumeRequestBody)
        # -- counters and response towards the client --
        "counted",  # node busy/requests and context in_flight are counted (released once)
        "resp_started",  # the response head was written to the client
        "resp_chunked",  # the response is relayed with chunked framing
        "resp_close",  # close the client connection after this response
        "done",  # finished: answered, failed or aborted (no more events handled)
        "tunnel",  # a 101 answer made the connection a byte tunnel
        "no_body",  # the response has no body (HEAD, 204, 304)
        # -- observing (access log, client metrics) --
        "start",  # observer clock at the start of the request (only set with an observer)
        "status",  # the status answered (0 until known)
        "sent",  # response body bytes to the client
        "up_start",  # observer clock at the start of the last attempt (idem)
        "upstream_time",  # seconds from that start to its response head (-1: none) (idem)
    )
    #: the client side's HTTP version for the access log when it is not
    #: C{version} (the version forwarded): "2.0" for HTTP/2 streams
    log_version: Optional[str] = None
    #: the request's trailer section for a chunked request to an HTTP node
    #: (IExchange.request_trailers): none from an HTTP/1.x client (its
    #: trailers are not forwarded); L{_H2Exchange} has a slot for it
    request_trailers: Optional[bytes] = None

    def __init__(self, proto: Union[ClientProtocol, _H2Exchange],
                 template: Optional[RequestHead] = None) -> None:
        # an HTTP/2 stream is its own client side (it overrides the methods
        # that write HTTP/1.x to ClientProtocol._out)
        self.proto = proto
        self.client: Optional[ClientInfo] = proto.client
        if template is None:
            self.method = b""
            self.target = b""
            self.version = "1.1"
            self.headers: list = []
            self.host: Optional[bytes] = None
            self.body_length: Optional[int] = None
            self.keep_alive = True
            self.path = ""
            self.query = b""
            self.cookies: Optional[list] = None
            self.upgrade_token: Optional[bytes] = None
            self.x_forwarded = False
            self.proxy_connection = False
            self.idempotent = True
            self.head_size = 0
            self.body_done = False
            self.head_template: Optional[RequestHead] = None
        else:
            # a remembered head (see remembered): its fields stored once,
            # not the defaults first
            (self.method, self.target, self.version, self.headers, self.host,
             self.body_length, self.keep_alive, self.path, self.query, self.cookies,
             self.upgrade_token, self.x_forwarded, self.proxy_connection,
             self.idempotent) = template.values
            self.head_size = -1
            self.body_done = True
            self.head_template = template
        self.expect_continue = False
        self.upgrade: Optional[bytes] = None
        self.decision: Optional[Decision] = None
        self.node: Optional[NodeEntry] = None
        self.error: Optional[tuple] = None
        self.headers0: Optional[list] = None
        self.connection: Optional[list] = None
        self.skipped_body = False
        self.tunnel_candidate = False
        self.upstream: Optional[IUpstream] = None
        self.attempts = 0
        self.exclude: frozenset = frozenset()
        self.stale_retry = False
        self.wait_until = 0.0
        self.wait_call: Optional[IDelayedCall] = None
        self.body: Optional[list[bytes]] = None
        self.body_held = 0
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
        self.status = 0
        self.sent = 0
        obs = proto._observer
        if obs is not None:
            # read by the observer only (the connection's, fixed when it was
            # made): left unset without one
            clock = obs.clock  # (read, then called: see Observer)
            self.start = clock()
            self.up_start = 0.0
            self.upstream_time = -1.0

    def template(self) -> RequestHead:
        """
        What parsing a request head without a body gave (the fields
        L{ClientProtocol.on_headers_complete} leaves set), for
        L{ProxyFactory.request_heads}; L{remembered} sets them again.  The
        sequences become tuples: shared between requests, never changed.
        """
        cookies = self.cookies
        return RequestHead(self.method, self.target, self.version, tuple(self.headers),
                           self.host, self.body_length, self.keep_alive, self.path, self.query,
                           None if cookies is None else tuple(cookies), self.upgrade_token,
                           self.x_forwarded, self.proxy_connection, self.idempotent)

    def remembered(self, template: RequestHead, target: Optional[bytes] = None) -> None:
        """
        Take a L{template} (of a head without a body, so the body is done);
        with C{target}, an origin-form target of the same request line
        syntax, that target instead of the template's (what C{_checkHead}
        makes of it).  C{_Exchange(proto, template)} does the first part
        as it is made (the client connection's remembered heads).
        """
        (self.method, self.target, self.version, self.headers, self.host,
         self.body_length, self.keep_alive, self.path, self.query, self.cookies,
         self.upgrade_token, self.x_forwarded, self.proxy_connection,
         self.idempotent) = template.values
        self.head_size = -1
        self.body_done = True
        self.head_template = template
        if target is not None:
            self.retarget(target)

    def retarget(self, target: bytes) -> None:
        """C{target} (origin-form, syntax checked) instead of the remembered head's."""
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
        table = f.table_now  # (as _remembered: an attribute read instead of a call)
        if table is None:
            table = f.table()
        d = choose(table, host, self.path, cookie, now, policy, self.exclude)
        if d.__class__ is Decision:
            if TYPE_CHECKING:  # (__class__ is: the hot path's cheaper isinstance)
                assert isinstance(d, Decision)
            self._attempt(d, cookie, False)
            return
        if TYPE_CHECKING:
            assert isinstance(d, Refusal)
        self._refused(d)

    def _refused(self, d: Refusal) -> None:
        """L{route}'s election gave C{d}: wait (WaitWorker) or answer it."""
        f = self.proto.factory
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

    def _attempt(self, d: Decision, cookie: Optional[str], fresh: bool,
                 queued: bool = False) -> None:
        f = self.proto.factory
        node = d.node
        self.decision = d
        self.node = node
        if d.strip is not None:
            self._strip(d, cookie)
        elif self.headers0 is not None:
            self.headers = self.headers0
            self.target = self._target()
        # (a subscript: the interpreter's specialised dict lookup, no
        # method call)
        try:
            forwarder = f.forwarders[node.settings.type]
        except KeyError:
            forwarder = None
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
            clock = obs.clock  # (read, then called: see Observer)
            self.up_start = clock()
        up = forwarder.forward(self, fresh)
        if self.done:  # pragma: no cover - forwarders do not fail synchronously
            return
        self.upstream = up
        if self.proto._blocked:
            up.pauseResponse()
        if self.flowing:  # resumeRequestBody() came during forward()
            if not self.body and self.body_done and not self.end_sent:
                # _deliver for a request whose body is done and held nothing
                # (no body: a remembered head): only the end (a call fewer)
                self.end_sent = True
                up.requestBodyEnd()
                proto = self.proto
                if proto._pause & _P_UPSTREAM:
                    proto._resumeReading(_P_UPSTREAM)
            else:
                self._deliver()

    def _target(self) -> bytes:
        path = self.path.encode("utf-8", "surrogateescape")
        return path + b"?" + self.query if self.query else path

    def _strip(self, d: Decision, cookie: Optional[str]) -> None:
        """StickySessionRemove: drop the session id from the path or Cookie."""
        self.head_template = None  # (the headers may change)
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
            if TYPE_CHECKING:  # counted by _attempt, which set it
                assert d is not None
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
        # called while an attempt is in flight: self.upstream is set (a failure
        # in requestBody clears flowing, an end sets done)
        proto = self.proto
        body = self.body
        if body:
            up = self.upstream
            if TYPE_CHECKING:
                assert up is not None
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
                if TYPE_CHECKING:
                    assert self.upstream is not None
                self.upstream.requestBodyEnd()
            if proto._pause & _P_UPSTREAM:  # (what _resumeReading asks first)
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
            if TYPE_CHECKING:  # HTTP/2 streams override this method
                assert isinstance(self.proto, ClientProtocol)
            self.proto._out.append(informational_head(status, reason, headers))

    def responseHead(self, status: int, reason: bytes, headers, length: int) -> None:
        if self.done or self.resp_started:
            return
        self.resp_started = True
        self.status = status
        if headers.__class__ is not bytes:
            headers = header_block(headers)
        proto = self.proto
        if TYPE_CHECKING:  # HTTP/2 streams override this method; a response has an attempt
            assert isinstance(proto, ClientProtocol) and self.decision is not None
        obs = proto._observer
        if obs is not None:
            clock = obs.clock  # (read, then called: see Observer)
            self.upstream_time = clock() - self.up_start
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
        line = _STATUS_LINES.get(status)
        if line is None:
            line = _status_line(status)
        # (joined: cheaper than a bytes % format with five arguments)
        proto._out.append(b"".join((line, reason, b"\r\n", headers, framing, end)))

    def responseWhole(self, whole: WholeHead, body: bytes) -> None:
        """
        L{responseHead}, L{responseBody} and L{responseEnd} of a whole
        response (the HTTP forwarder's remembered heads: status 200-599 but
        204 and 304, C{Content-Length} framing, a method other than HEAD),
        which the forwarder let go of before this call.  To a client that
        keeps its connection, the head it gets is the same bytes every time
        for its HTTP version: built once and kept in C{whole.client_head}
        (HTTP/1.1) or C{whole.client_head10}; the body is joined to it.
        """
        self.upstream = None  # (the forwarder let go: nothing to pause or abort)
        if (self.keep_alive and self.body_done and not self.tunnel_candidate
                and not self.done and not self.resp_started):
            # responseHead, responseBody and responseEnd for this case, in one
            # call (a call fewer per kept-alive request; the same steps in
            # the same order: node_answered, the counters, the observer, the
            # client side)
            status = whole.status
            self.resp_started = True
            self.status = status
            proto = self.proto
            if TYPE_CHECKING:  # HTTP/2 streams override this method; a response has an attempt
                assert isinstance(proto, ClientProtocol) and self.decision is not None
            obs = proto._observer
            if obs is not None:
                # one clock read for the head and the end of the response
                # (obs.clock read, then called: see Observer)
                clock = obs.clock
                now = clock()
                self.upstream_time = now - self.up_start
            d = self.decision
            node = d.node
            rt = node.rt
            if rt.fails or d.retrying or rt.in_error or status >= 500:
                proto.factory.node_answered(node, d.retrying, status)
            if self.version == "1.0":
                head = whole.client_head10
                if head is None:
                    head = whole.client_head10 = _whole_head(
                        whole, b"Connection: keep-alive\r\n\r\n")
            else:
                head = whole.client_head
                if head is None:
                    head = whole.client_head = _whole_head(whole, b"\r\n")
            # (sent was 0: nothing relayed before, not resp_started)
            size = self.sent = len(body)
            data = head + body if size else head
            self.done = True
            if self.counted:  # _release, inlined as in responseEnd
                self.counted = False
                rt.busy -= 1
                d.context.rt.in_flight -= 1
                queues = proto.factory.queues
                if queues and node.id in queues:
                    proto.factory.wake(node)
            if obs is not None:
                obs.done(self, status, size, now)
            # (the bytes handed over, not appended to proto._out: see there)
            proto._exchangeDone(self, self.resp_close, data)
            return
        self.responseHead(whole.status, whole.reason, whole.headers, len(body))
        self.responseBody(body)
        self.responseEnd()

    def responseBody(self, data: bytes) -> None:
        if self.done or not data:
            return
        self.sent += len(data)
        if TYPE_CHECKING:  # HTTP/2 streams override this method
            assert isinstance(self.proto, ClientProtocol)
        if self.resp_chunked:
            self.proto._out += (b"%x\r\n" % len(data), data, b"\r\n")
        elif not self.no_body:
            self.proto._out.append(data)

    def responseTrailers(self, block: bytes) -> None:
        # relayed as the trailer section of the re-chunked body (an HTTP/1.0
        # client's close-delimited body has none: dropped)
        if self.done or not self.resp_chunked:
            return
        self.resp_chunked = False  # the last chunk is written here
        if TYPE_CHECKING:  # HTTP/2 streams override this method
            assert isinstance(self.proto, ClientProtocol)
        self.proto._out += (b"0\r\n", block, b"\r\n")

    def flush(self) -> None:
        if not self.done:
            self.proto._flush()

    def responseEnd(self) -> None:
        if self.done:
            return
        self.done = True
        self.upstream = None
        if self.counted:  # _release, inlined (a call fewer per request)
            self.counted = False
            d = self.decision
            if TYPE_CHECKING:  # counted by _attempt, which set it
                assert d is not None
            d.node.rt.busy -= 1
            d.context.rt.in_flight -= 1
            queues = self.proto.factory.queues
            if queues and d.node.id in queues:
                self.proto.factory.wake(d.node)
        if TYPE_CHECKING:  # HTTP/2 streams override this method
            assert isinstance(self.proto, ClientProtocol)
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
        if TYPE_CHECKING:  # a failure comes from the attempt _attempt started
            assert node is not None and self.decision is not None
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
            if kind == RESET and safe and self.stale_retry:
                # Reset again on the fresh connection of the retry: a live node
                # resetting this request, or a node that died while its
                # listener was still there (a killed process's connections
                # are torn down before its listening socket: the retry was
                # taken into the listen queue, then reset with it).  Knock.
                self._knock(node, error.message)
                return
            self._response_failed(node, error.message)
            return
        self._node_failed(node, error, safe)

    def _response_failed(self, node: NodeEntry, message: str) -> None:
        # A response-level failure after a successful connect (reset before
        # the head, malformed head): this request fails, passive health
        # counts it.  Not replayed on other nodes and the node is not put in
        # error: one bad request must not take a context down (issue 13 §2).
        self.proto.factory.passive_failure(node, message)
        self.proto._respondError(self, 502, f"node {node.route}: {message}")

    def _knock(self, node: NodeEntry, message: str) -> None:
        """
        After a replayable request was reset by C{node} twice (the second
        time on a fresh connection): connect to the node again, sending
        nothing (L{modcluster.proxy.pool.knock}).  Connected: the node is
        alive and resets this request, a response-level failure (502, as
        before).  Refused (or timed out): the node is gone, a connect-level
        failure (node in error, failover).  The knock waits in C{wait_call},
        so that the client going away cancels it.
        """
        from modcluster.proxy.pool import knock

        f = self.proto.factory
        s = node.settings
        d = knock(f.reactor, s.host, s.port, s.ping if s.ping > 0 else 10.0)
        self.wait_call = _Knocking(d)  # type: ignore[assignment]
        d.addCallbacks(self._knocked, self._knock_failed, (node, message), None,
                       (node, message))

    def _knocked(self, _: None, node: NodeEntry, message: str) -> None:
        self.wait_call = None
        if not self.done:
            self._response_failed(node, message)

    def _knock_failed(self, failure, node: NodeEntry, message: str) -> None:
        self.wait_call = None
        if self.done or failure.check(CancelledError, ConnectingCancelledError):
            # Cancelled: whoever cancelled it (the client gone, an error
            # answer) owns the exchange; not a verdict on the node.
            return
        from modcluster.proxy.pool import local_shortage

        if local_shortage(failure):
            self._response_failed(node, message)
            return
        why = failure.getErrorMessage() or failure.type.__name__
        self._node_failed(node, ForwardError(
            CONNECT, f"{message}; then cannot connect to {node.settings.worker_name}: {why}"),
            True)

    def _node_failed(self, node: NodeEntry, error: ForwardError, safe: bool) -> None:
        proto = self.proto
        f = proto.factory
        route = node.route
        kind = error.kind
        if TYPE_CHECKING:
            assert self.decision is not None
        if error.local:
            # The proxy could not open a socket (out of descriptors or memory):
            # not the node's failure; another node would fail alike (and be put
            # in error in turn), so no failover either.
            proto._respondError(self, 503, f"proxy short of resources: {error.message}",
                                f.policy.retry_after)
            return
        # Connect-level failure: nothing reached the application.
        f.on_node_failure(route, error.message)
        f.passive_failure(node, error.message)
        b = self.decision.balancer
        if (safe and self.attempts < b.max_attempts
                and f.retry_budget.allow(b.name, partial(f.balancer_requests, b.name))):
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
