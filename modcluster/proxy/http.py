"""
The HTTP/HTTPS (and WS/WSS) forwarder: per-node pools of keep-alive
connections (over L{modcluster.proxy.pool}), each a L{NodeProtocol} that
writes requests and parses responses with httptools.

A L{NodeProtocol} is both the connection and the L{IUpstream} handle of the
exchange it carries, so a pooled request allocates nothing but its head bytes.
Timeouts (read timeout, idle TTL) are enforced by L{HttpForwarder.tick}, which
the front's sweep calls once a second; no timer is created per request.  What
depends only on bytes that repeat is computed once: the split of a response
head (L{NodePool.heads}, bounded), and for a head with Content-Length framing
the whole relay, so that such a response read at once skips the parser
(L{NodePool.whole}), and the X-Forwarded-For/-Proto/-Server lines of a client
address (L{HttpForwarder.forwarded}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from OpenSSL.SSL import RECEIVED_SHUTDOWN, Connection
from OpenSSL.SSL import Error as SSLError
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, ISystemHandle
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from modcluster.accesslog import LogLimiter
from modcluster.memo import BoundedMemo
from modcluster.proxy._transport import (
    IStreamTransport,
    direct_writer,
    end_tls_sending,
    is_plain_tcp,
    set_nodelay,
)
from modcluster.proxy.headers import (
    BAD_REASON,
    filter_trailers,
    reason_phrase,
    response_block_at,
    trailer_section,
)
from modcluster.proxy.interfaces import (
    CONNECT,
    PROTOCOL,
    RESET,
    TIMEOUT,
    ForwardError,
    IExchange,
    INodeConnection,
    IUpstream,
)
from modcluster.proxy.pool import (
    LocalUpstream,
    PoolBase,
    PooledForwarder,
    connect_failed,
    connect_node,
    direct_address,
    node_endpoint,
)

__all__ = ["HttpForwarder", "NodePool", "NodeProtocol"]

log = Logger(namespace="modcluster.proxy")

_TLS_TYPES = ("https", "wss")
_HEAD = b"HEAD"
_CHUNK_END = b"0\r\n\r\n"
#: how a chunked body without a trailer section usually ends
_NO_TRAILERS = b"\r\n0\r\n\r\n"
_FORWARDED = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Server: %s\r\n"


#: Response heads remembered per node (see L{split_head}): at most this many,
#: of at most this many bytes each.
HEAD_MEMO_SIZE = 64
HEAD_MEMO_BYTES = 2048
#: Interim (1xx) responses relayed per exchange; one more is a bad response
#: (httpd's AP_MAX_INTERIM_RESPONSES).
MAX_INTERIM = 10
#: Client addresses whose X-Forwarded-* lines are remembered.
FORWARDED_MEMO_SIZE = 4096


#: Host lines remembered per RequestHead (RequestHead.node_heads): one with
#: preserve_host (the default; the client's Host), one per node without it; at
#: most 16 per template (request_heads and request_blocks: 512 templates of
#: at most 2 KiB)
NODE_HEADS_PER_TEMPLATE = 16


def _node_head(t, host: bytes) -> tuple[bytes, bytes, bytes]:
    """
    The request head L{NodeProtocol._sendHead} writes for an exchange made
    from the remembered head C{t} (L{RequestHead}; no X-Forwarded-* header
    from the client, no Upgrade forwarded, no Expect), in three parts: from
    the end of the target to the end of the header lines, with C{host} as
    the Host line; the end with X-Forwarded-Host; the end without it.  The
    same bytes as the general path, which puts the X-Forwarded-For lines
    between the first two parts.  Remembered in C{t.node_heads} (at most
    L{NODE_HEADS_PER_TEMPLATE} Host lines).
    """
    (_, _, _, headers, thost, bl, _, _, _, _, _, _, _, _) = t.values
    parts = [b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    end = b"\r\n"
    if bl is not None:
        end = (b"Content-Length: %d\r\n\r\n" % bl if bl >= 0
               else b"Transfer-Encoding: chunked\r\n\r\n")
    m = (b"".join(parts),
         b"X-Forwarded-Host: " + thost + b"\r\n" + end if thost is not None else end,
         end)
    if len(t.node_heads) < NODE_HEADS_PER_TEMPLATE:
        t.node_heads[host] = m
    return m


class WholeHead:
    """
    A response head remembered in L{NodePool.whole}: what relaying it needs,
    as llhttp and L{split_head} gave it.  A slotted record: reading a field
    costs what indexing a tuple does.

    @ivar status: the status code.
    @ivar reason: the reason phrase to relay.
    @ivar headers: the header lines to relay (L{response_block_at}).
    @ivar length: the Content-Length value.
    @ivar keep_alive: llhttp's C{should_keep_alive()} for it.
    @ivar client_head: the head an HTTP/1.1 client that keeps its connection
        gets for it (status line, headers, empty line), made by the front's
        first L{IExchange.responseWhole} of it; C{None} until then.
    @ivar client_head10: the same for an HTTP/1.0 client (with
        C{Connection: keep-alive}).
    @ivar raw: the head as the node sent it, empty line included (the
        memo's key and CRLF).
    """

    __slots__ = ("status", "reason", "headers", "length", "keep_alive", "client_head",
                 "client_head10", "raw")

    def __init__(self, status: int, reason: bytes, headers: bytes, length: int,
                 keep_alive: bool, raw: bytes) -> None:
        self.raw = raw
        self.status = status
        self.reason = reason
        self.headers = headers
        self.length = length
        self.keep_alive = keep_alive
        self.client_head: Optional[bytes] = None
        self.client_head10: Optional[bytes] = None

    def __repr__(self) -> str:
        return (f"WholeHead({self.status}, {self.reason!r}, {self.headers!r}, {self.length}, "
                f"{self.keep_alive})")


class _Bad(Exception):
    """A response that cannot be relayed (raised inside parser callbacks)."""


def split_head(head: bytes) -> tuple:
    """
    A response head (status line and header lines, each ending with CRLF, as
    llhttp accepted it) as what is relayed: (reason phrase as received or
    C{b""}, then L{response_block} of the header lines).  A pure function of
    the bytes: L{NodePool.heads} remembers it, since a node repeats the same
    heads (same resource, same second).
    """
    line_end = head.find(b"\r\n")
    sp = head.find(b" ", 9, line_end)
    reason = head[sp + 1:line_end] if sp > 0 else b""
    if reason and BAD_REASON.search(reason) is not None:
        reason = b""  # control characters: the standard phrase is relayed
    return (reason,) + response_block_at(head, line_end + 2)


def _default_tls(node):
    from twisted.internet.ssl import optionsForClientTLS

    host = node.settings.host
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return optionsForClientTLS(host)


@implementer(IUpstream, IPushProducer, INodeConnection)
class NodeProtocol(Protocol):
    """
    One connection to a node.  Idle in its pool, or carrying one exchange.
    Push producer of its transport: when the node's receive side is full the
    client's request body is paused.
    """

    # Annotated only (no class attributes): None until connected (a
    # connection may be closed before)
    transport: Optional[IStreamTransport]
    #: the response head deadline (L{NodePool.tick}): the exchange whose
    #: response head the sweep saw started and not complete, the head's
    #: C{hpos} then and the sweep's time; class defaults, set by the sweep
    #: (head_ex forgotten when a final head is parsed: nothing on the
    #: whole-response path)
    head_ex: Optional[IExchange] = None
    head_pos = 0
    head_since = 0.0
    #: writes to the transport (L{direct_writer}); set by connectionMade,
    #: before which nothing is written (L{start} waits for it)
    write: Callable[[bytes], None]

    def __init__(self, pool: "NodePool") -> None:
        self.pool = pool
        self.fw = pool.fw
        self.rt = pool.rt
        self.ex: Optional[IExchange] = None
        self.parser = HttpResponseParser(self)
        self.up = False
        self.closed = False
        self.reused = False
        self.sync = False
        self.seen = 0.0
        self.idle_since = 0.0
        self.paused = False
        # per exchange
        self.sent = False
        self.body_done = False
        self.chunked = False
        self.got = False
        self.final = False
        self.complete = False
        self.tunnel = False
        self.upgrading = False
        self.keep_alive = False
        self.close_delimited = False
        self.broken = False
        self.dirty = False
        self.informational = False
        self.interim = 0
        # the response head(s) as received, until the final one is parsed
        self.hbuf = b""
        self.hpos = 0
        # a chunked response: the read before this one (None: not chunked),
        # where its trailer section may start (see _trailers)
        self.prev: Optional[bytes] = None

    # -- the pool's side -------------------------------------------------------

    def start(self, ex) -> None:
        """
        Carry C{ex}: send its head now if connected, else on connection.
        (L{HttpForwarder.forward} does the same inline for an idle connection.)
        """
        self.ex = ex
        self.seen = self.fw.now
        # (what a response read through the parser changes of the rest is
        # set back when it ends, in dataReceived: a whole response changes
        # none of it, and a connection is only reused after either)
        self.sent = self.body_done = self.got = False
        self.chunked = ex.body_length == -1
        if self.dirty:
            self.parser = HttpResponseParser(self)
            self.dirty = False
        if self.up:
            self._sendHead()

    def connect(self) -> None:
        connect_node(self, self)

    def _connectFailed(self, failure) -> None:
        connect_failed(self, failure)

    # -- connection events -------------------------------------------------------

    def connectionMade(self) -> None:
        self.up = True
        t = self.transport
        if TYPE_CHECKING:  # makeConnection set it
            assert t is not None
        set_nodelay(t)
        self.write = direct_writer(t)
        t.registerProducer(self, True)
        if self.ex is not None:
            self._sendHead()
        else:
            self.reused = True
            self.pool.release(self)  # the client left while we were connecting

    def connectionLost(self, reason=None) -> None:
        self.up = False
        self.closed = True
        self.pool.lost(self)
        ex = self.ex
        self.ex = None
        if ex is None:
            return
        if self.tunnel or (self.final and self.close_delimited and self._ended(reason)):
            # a tunnel, or a close-delimited body, ends here (else the body
            # was cut: the front then cuts the client connection)
            ex.responseEnd()
            return
        if not self.got and reason is not None and reason.check(SSLError):
            ex.responseFailed(ForwardError(
                CONNECT, f"TLS handshake with {self.pool.worker} failed: "
                         f"{reason.getErrorMessage()}"))
            return
        what = "during the response" if self.got else "before any response"
        ex.responseFailed(ForwardError(
            RESET, f"connection to {self.pool.worker} closed {what}",
            request_sent=self.sent, reused=self.reused and not self.got))

    def _ended(self, reason) -> bool:
        """
        Whether the close that ends a close-delimited body ends it in order.
        Over TCP: a close (FIN), not a reset.  Over TLS: the node's
        close_notify, whatever the TCP close after it (a reset that met our
        answering close_notify included); Twisted's TLS reports a TCP close
        without it as C{ConnectionLost}, as it does a record cut in the
        middle, and a forged record or a fatal alert as an OpenSSL error
        (OpenSSL records a fatal alert as the peer's shutdown too: hence the
        error check).  The OpenSSL contexts of node connections must not set
        C{OP_IGNORE_UNEXPECTED_EOF} (ours do not), which would report a TCP
        close as close_notify.
        """
        if not self.pool.secure:
            return reason is None or reason.check(ConnectionDone) is not None
        if reason is not None and reason.check(SSLError):
            return False
        handle = ISystemHandle(self.transport).getHandle()  # (the TLS wrapper's)
        return isinstance(handle, Connection) and bool(handle.get_shutdown() & RECEIVED_SHUTDOWN)

    def dataReceived(self, data: bytes) -> None:
        self.seen = now = self.fw.now  # (now: again for idle_since, a local read)
        self.rt.read += len(data)
        ex = self.ex
        if ex is None:
            self._close()  # unsolicited bytes on an idle connection
            return
        self.got = True
        if self.tunnel:
            ex.responseBody(data)
            ex.flush()
            return
        if not self.final:
            if not self.hbuf:
                # A whole response whose head this node sent before (llhttp
                # accepted it then): relayed without the parser, what its
                # callbacks would do for it (on_headers_complete, on_body,
                # on_message_complete).  llhttp stays at a message boundary,
                # where a complete keep-alive response leaves it.  The pool's
                # last such head is compared first (a memcmp: no head copied
                # and hashed when a node sends the same head again).
                pool = self.pool
                whole = pool.last_whole
                if whole is None or not data.startswith(whole.raw):
                    end = data.find(b"\r\n\r\n")
                    whole = pool.whole.entries.get(data[:end + 2]) if end > 0 else None
                    if whole is not None:
                        pool.last_whole = whole
                if whole is not None:
                    size = len(whole.raw)
                    if whole.length == len(data) - size and ex.method != _HEAD:
                        # The response is complete: the connection lets go of
                        # the exchange first (_finish, inlined: a call fewer
                        # per request; final, complete and keep_alive are not
                        # set for a whole response), then the front gets it
                        # with its end in one call (IExchange.responseWhole)
                        self.ex = None
                        self.reused = True
                        if self.paused:
                            self.paused = False
                            if TYPE_CHECKING:  # a response was read: connected
                                assert self.transport is not None
                            self.transport.resumeProducing()
                        if (whole.keep_alive and self.body_done and not self.broken
                                and not pool.closed and not self.closed):
                            self.idle_since = now
                            pool.idle.append(self)
                        else:
                            self._close()
                        ex.responseWhole(whole, data[size:] if whole.length else b"")
                        return
            hbuf = self.hbuf = self.hbuf + data if self.hbuf else data
            if len(hbuf) - self.hpos > self.fw.max_head and hbuf.find(b"\r\n\r\n",
                                                                      self.hpos) < 0:
                self._fail(PROTOCOL, "response head too large")
                return
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as e:
            if self.ex is not ex:
                return
            self.tunnel = True
            rest = data[e.args[0]:]
            if rest:
                ex.responseBody(rest)
        except HttpParserError as e:
            if self.ex is not ex:
                return
            if self.complete:
                self.broken = True  # garbage after a complete response
            else:
                cause = e.__context__
                if isinstance(cause, _Bad):
                    msg = str(cause)
                else:
                    msg = f"bad response: {e}"
                    if cause is not None and not isinstance(cause, HttpParserError):
                        log.failure("bug while relaying a response from {worker}",
                                    Failure(cause), worker=self.pool.worker)
                self._fail(PROTOCOL, msg)
                return
        if self.ex is not ex:
            return
        if self.complete:
            if self.prev is not None and not data.endswith(_NO_TRAILERS):
                self._trailers(ex, data)  # (chunked, and not a bare last chunk)
            # the parser's per-response state as a new connection has it, for
            # the next exchange (start does not set it: see there)
            self.hbuf = b""
            self.hpos = self.interim = 0
            self.prev = None
            self.tunnel = self.upgrading = self.close_delimited = False
            self._finish()
        else:
            if self.prev is not None:
                self.prev = data
            ex.flush()

    # -- parser callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            # bytes after the complete response, in the read that ended it, that
            # llhttp takes as the start of the next message: the connection is
            # not at a message boundary and is not reused (else they would
            # become part of the next exchange's response, maybe another
            # client's)
            self.broken = True

    def on_headers_complete(self) -> None:
        ex = self.ex
        if ex is None or self.complete:
            self.broken = True
            return
        p = self.parser
        status = p.get_status_code()
        self.keep_alive = p.should_keep_alive()
        # llhttp (strict) accepted this head: CRLF line ends, no folding.  Take it
        # as bytes rather than one callback per header.
        buf = self.hbuf
        pos = self.hpos
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            raise _Bad("response head not found in what was received")
        if end - pos > self.fw.max_head:
            raise _Bad("response head too large")
        self.hpos = end + 4
        head = buf[pos:end + 2]
        pool = self.pool
        split = pool.heads.entries.get(head)
        if split is None:
            split = split_head(head)
            if len(head) <= HEAD_MEMO_BYTES:
                pool.heads.put(head, split)
        reason, headers, cl, te, upg = split
        if not reason:
            reason = reason_phrase(status)
        if (cl is not None and te is None and status >= 200 and status != 204
                and status != 304 and len(head) <= HEAD_MEMO_BYTES and ex.method != _HEAD):
            # Head and framing known from these bytes alone: remembered for
            # whole responses that come in one read (L{dataReceived}).
            whole = pool.whole
            if head not in whole.entries:
                whole.put(head, WholeHead(status, reason, headers, int(cl), self.keep_alive,
                                          buf[pos:end + 4]))
        if status < 200:
            if status < 100:
                # llhttp takes any three digits; these are no HTTP status
                raise _Bad(f"status {status:03d} in the response")
            if status == 101:
                if ex.upgrade is None or upg is None:
                    raise _Bad("101 Switching Protocols without an Upgrade asked for")
                self.final = self.upgrading = True
                self.keep_alive = False
                self.hbuf = b""
                ex.responseHead(101, reason,
                                headers + b"Upgrade: %s\r\nConnection: Upgrade\r\n" % upg, 0)
                return
            self.interim += 1
            if self.interim > MAX_INTERIM:
                raise _Bad(f"more than {MAX_INTERIM} interim (1xx) responses")
            self.informational = True
            ex.responseInformational(status, reason, headers)
            return
        if te is not None and te.strip().lower() != b"chunked":
            raise _Bad("transfer codings other than chunked are not supported")
        self.final = True
        self.hbuf = b""
        # the head deadline the sweep may have started for this head
        # (NodePool.tick) ends with it: the next head on this connection may
        # belong to the same exchange object (a kept-alive client's finished
        # exchange serves its next request: client._remembered)
        self.head_ex = None
        if ex.method == _HEAD:
            length = 0
            self.dirty = True  # the parser would wait for a body that never comes
            self.complete = True
        elif status == 204 or status == 304:
            length = 0
        elif te is not None:
            length = -1
            self.prev = b""  # chunked: watch for a trailer section
        elif cl is not None:
            length = int(cl)
        else:
            length = -1
            self.close_delimited = True
        ex.responseHead(status, reason, headers, length)

    def on_body(self, data: bytes) -> None:
        ex = self.ex
        if ex is None or self.complete or not self.final:
            self.broken = True
            return
        ex.responseBody(data)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        if self.upgrading or self.complete:
            return
        if self.ex is None or not self.final:
            self.broken = True
            return
        self.complete = True

    def _trailers(self, ex, data: bytes) -> None:
        """
        A chunked response ended in C{data}: relay its trailer section, if
        any, to C{ex} (C{responseTrailers}, before C{responseEnd}).  llhttp
        does not report trailer fields without a Python call per header for
        every response; the section is found in the last bytes received
        instead (L{trailer_section}), in this read or with the one before.
        """
        self.prev, prev = None, self.prev
        if self.broken:
            return  # garbage after the end: the end is not where data ends
        section = trailer_section(data)
        if section is None and prev:
            section = trailer_section(prev + data)
        if section is None:
            self.fw.limiter.emit(
                f"trailers not relayed, node {self.pool.settings.route}", LogLevel.info,
                "trailer section from {worker} spread over more than two reads: "
                "not relayed", worker=self.pool.worker)
            return
        if section:
            block = filter_trailers(section)
            if block:
                ex.responseTrailers(block)

    # -- ending an exchange -----------------------------------------------------------

    def _finish(self) -> None:
        # (dataReceived does the same inline for a whole response)
        ex = self.ex
        if TYPE_CHECKING:  # called for the exchange being carried
            assert ex is not None
        self.ex = None
        self.complete = False
        self.final = False
        self.reused = True
        if self.paused:
            self.paused = False
            if TYPE_CHECKING:  # a response was read: connected
                assert self.transport is not None
            self.transport.resumeProducing()
        pool = self.pool
        if self.keep_alive and self.body_done and not self.broken and not pool.closed:
            # NodePool.release, inlined (a call fewer per request)
            if self.closed:
                self._close()
            else:
                self.idle_since = self.fw.now
                pool.idle.append(self)
        else:
            self._close()
        ex.responseEnd()

    def _close(self) -> None:
        self.broken = True
        if not self.closed and self.transport is not None:
            self.closed = True
            self.pool.lost(self)
            self.transport.loseConnection()

    def _fail(self, kind: str, message: str) -> None:
        ex = self.ex
        self.ex = None
        self.broken = True
        if self.transport is not None:
            self.closed = True
            self.pool.lost(self)
            self.transport.abortConnection()
        if ex is not None:
            ex.responseFailed(ForwardError(kind, f"{self.pool.worker}: {message}",
                                           request_sent=self.sent,
                                           reused=self.reused and not self.got))

    def timedOut(self) -> None:
        """No byte from (or to) the node for the read timeout."""
        ex = self.ex
        if ex is None:
            return
        if self.tunnel:
            self.ex = None
            self.broken = True
            if TYPE_CHECKING:  # a tunnel is connected
                assert self.transport is not None
            self.transport.abortConnection()
            ex.responseEnd()
            return
        self._fail(TIMEOUT, f"no data for {self.pool.read_timeout:g} s")

    def headTimedOut(self, limit: float) -> None:
        """
        The response head started arriving and was not complete within
        C{limit} seconds (L{NodePool.tick}): handled as a read timeout.
        """
        self.head_ex = None
        if self.ex is None:
            return
        self._fail(TIMEOUT, f"response head not complete {limit:g} s after its first byte "
                            f"({len(self.hbuf) - self.hpos} bytes)")

    # -- IUpstream -------------------------------------------------------------------

    def _sendHead(self) -> None:
        ex = self.ex
        if TYPE_CHECKING:  # called for the exchange being carried
            assert ex is not None
        fw = self.fw
        host = ex.host if fw.preserve_host and ex.host is not None else self.pool.host_header
        t = ex.head_template
        if t is not None and not ex.x_forwarded and ex.upgrade is None:
            # the headers of a remembered head, unchanged: all after the
            # request line's target was built once for this Host line
            m = t.node_heads.get(host)
            if m is None:
                m = _node_head(t, host)
            if fw.add_forwarded:
                # the client's X-Forwarded-* lines, kept on its ClientInfo
                lines = ex.client.http_forwarded
                if lines is None:
                    lines = fw.forwarded(ex.client)
                data = b"".join((ex.method, b" ", ex.target, m[0], lines, m[1]))
            else:
                data = b"".join((ex.method, b" ", ex.target, m[0], m[2]))
            self.rt.transferred += len(data)
            # a remembered head has no body: the request is complete once its
            # head is written (no resumeRequestBody, so no requestBodyEnd
            # back: IExchange.head_template)
            self.sent = self.body_done = True
            self.write(data)
            return
        # (a list joined once below: cheaper than a bytes % format)
        parts = [ex.method, b" ", ex.target, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
        if fw.add_forwarded:
            if ex.x_forwarded:
                parts += _merged_forwarded(ex, fw.server_name)
            else:
                for name, value in ex.headers:
                    parts += (name, b": ", value, b"\r\n")
                lines = ex.client.http_forwarded
                parts.append(fw.forwarded(ex.client) if lines is None else lines)
                if ex.host is not None:
                    parts += (b"X-Forwarded-Host: ", ex.host, b"\r\n")
        else:
            for name, value in ex.headers:
                parts += (name, b": ", value, b"\r\n")
        if ex.upgrade is not None:
            parts += (b"Connection: Upgrade\r\nUpgrade: ", ex.upgrade, b"\r\n")
        bl = ex.body_length
        if bl is not None:
            if bl >= 0:
                parts.append(b"Content-Length: %d\r\n" % bl)
            else:
                parts.append(b"Transfer-Encoding: chunked\r\n")
            if ex.expect_continue:
                parts.append(b"Expect: 100-continue\r\n")
        parts.append(b"\r\n")
        data = b"".join(parts)
        self.rt.transferred += len(data)
        self.sent = True
        self.write(data)
        ex.resumeRequestBody()

    def requestBody(self, data: bytes) -> None:
        if self.ex is None or not data:
            return
        self.seen = self.fw.now
        self.rt.transferred += len(data)
        if self.chunked:
            self.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.write(data)

    def requestBodyEnd(self) -> None:
        if self.ex is None:
            return
        self.body_done = True
        if self.chunked:
            trailers = getattr(self.ex, "request_trailers", None)
            self.write(b"0\r\n%s\r\n" % trailers if trailers else _CHUNK_END)

    def pauseResponse(self) -> None:
        if not self.paused:
            self.paused = True
            if self.up:
                if TYPE_CHECKING:
                    assert self.transport is not None
                self.transport.pauseProducing()

    def resumeResponse(self) -> None:
        if self.paused:
            self.paused = False
            if self.up:
                if TYPE_CHECKING:
                    assert self.transport is not None
                self.transport.resumeProducing()

    def halfClose(self) -> None:
        """
        The client's end of sending in a tunnel (an HTTP/2 stream's
        END_STREAM: RFC 8441 §5 maps it to the TCP FIN of the tunnelled
        connection): our sending side to the node is shut (its FIN after
        what is buffered), the node's bytes are still read.  Not part of
        L{IUpstream} (only HTTP/2 tunnels call it); nothing is done outside a
        tunnel.  Over TLS 1.3 it is close_notify (L{end_tls_sending}); over
        TLS 1.2, where close_notify would make the node close at once and
        drop what it still has to send, nothing: the tunnel then ends when
        the node closes, or at the read timeout.
        """
        t = self.transport
        if (self.tunnel or self.upgrading) and self.up and not self.closed:
            if TYPE_CHECKING:  # up: connected
                assert t is not None
            if is_plain_tcp(t):
                t.loseWriteConnection()
            else:
                end_tls_sending(t)

    def abort(self) -> None:
        ex = self.ex
        self.ex = None
        if ex is None:
            return
        if not self.up:
            return  # still connecting: the connection joins the pool when it is made
        self.broken = True
        if not self.closed:
            self.closed = True
            self.pool.lost(self)
            if TYPE_CHECKING:  # up: connected
                assert self.transport is not None
            self.transport.abortConnection()

    # -- IPushProducer (the node connection's write buffer) ------------------------

    def pauseProducing(self) -> None:
        ex = self.ex
        if ex is not None:
            ex.pauseRequestBody()

    def resumeProducing(self) -> None:
        ex = self.ex
        if ex is not None and self.sent:
            ex.resumeRequestBody()

    def stopProducing(self) -> None:
        pass


def _merged_forwarded(ex, server_name: bytes) -> list:
    """
    Header lines when the client already sent X-Forwarded-*: the client's
    address, host and our name are appended to the last header of each kind
    (list syntax), X-Forwarded-Proto is replaced by ours.
    """
    ip = ex.client.remote_addr.encode("ascii")
    ours = {b"x-forwarded-for": ip, b"x-forwarded-server": server_name}
    if ex.host is not None:
        ours[b"x-forwarded-host"] = ex.host
    last: dict[bytes, int] = {}
    headers = ex.headers
    for i, (name, _) in enumerate(headers):
        lname = name.lower()
        if lname in ours:
            last[lname] = i
    parts: list = []
    for i, (name, value) in enumerate(headers):
        lname = name.lower()
        if lname == b"x-forwarded-proto":
            continue
        if lname in ours and last[lname] == i:
            value = value + b", " + ours[lname]
        parts += (name, b": ", value, b"\r\n")
    for lname, canon in ((b"x-forwarded-for", b"X-Forwarded-For"),
                         (b"x-forwarded-host", b"X-Forwarded-Host"),
                         (b"x-forwarded-server", b"X-Forwarded-Server")):
        if lname in ours and lname not in last:
            parts += (canon, b": ", ours[lname], b"\r\n")
    parts += (b"X-Forwarded-Proto: ", b"https" if ex.client.secure else b"http", b"\r\n")
    return parts


class NodePool(PoolBase):
    """
    The connections to one node (one registration of it: a re-registered node
    gets a new pool).  Idle connections are reused most-recent first; the
    C{max_idle} most recent are kept, older idle ones are closed after C{ttl}
    seconds (mod_proxy C{smax}/C{ttl}).
    """

    def __init__(self, fw: "HttpForwarder", node) -> None:
        super().__init__(fw, node)
        s = node.settings
        self.connect_timeout = s.ping if s.ping > 0 else 10.0
        tls = None
        #: https/wss: its connections run TLS (see L{NodeProtocol._ended})
        self.secure = secure = s.type in _TLS_TYPES
        if secure:
            tls = (fw.node_tls or _default_tls)(node)
        host = s.host
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        shown = f"[{bare}]" if ":" in bare else bare
        default_port = 443 if secure else 80
        self.host_header = (shown if s.port == default_port else f"{shown}:{s.port}").encode(
            "idna" if not bare.isascii() else "ascii")
        self.endpoint = node_endpoint(fw.reactor, host, s.port, self.connect_timeout, tls)
        self.direct = direct_address(host, s.port) if tls is None else None
        #: response head bytes -> L{split_head} of them (bounded; emptied when full)
        self.heads: BoundedMemo[bytes, tuple] = BoundedMemo(
            "proxy.http.heads", HEAD_MEMO_SIZE, count_hits=False)
        #: the heads of those with a Content-Length (and no Transfer-Encoding),
        #: status 200-599 but 204/304, as answers to a method other than HEAD
        #: -> their L{WholeHead}: a response that is such a head and exactly
        #: C{length} more bytes is relayed without the parser.  Filled when
        #: the parser framed such a head (not on every miss of a lookup).
        self.whole: BoundedMemo[bytes, WholeHead] = BoundedMemo(
            "proxy.http.whole", HEAD_MEMO_SIZE, count_hits=False)
        #: the last of those a response was relayed with (L{NodeProtocol.dataReceived})
        self.last_whole: Optional[WholeHead] = None

    def acquire(self, ex, fresh: bool) -> NodeProtocol:
        idle = self.idle
        if not fresh:
            while idle:
                p = idle.pop()
                if p.up and not p.closed:
                    p.start(ex)
                    return p
        p = NodeProtocol(self)
        self.conns.add(p)
        p.start(ex)
        p.connect()
        return p

    def release(self, p: NodeProtocol) -> None:
        if self.closed or p.closed:
            p._close()
            return
        p.idle_since = self.fw.now
        self.idle.append(p)

    def tick(self, now: float, slack: float) -> None:
        timeout = self.read_timeout
        limit = timeout + slack
        for p in list(self.conns):
            ex = p.ex
            if ex is None or not p.up:
                if p.head_ex is not None:
                    p.head_ex = None
                continue
            if p.paused:
                p.head_ex = None  # we are the ones not reading
                continue
            if now - p.seen > limit:
                route = self.settings.route
                self.fw.limiter.emit(f"read timeout, node {route}", LogLevel.warn,
                                     "node {route}: no data for {timeout:g} s", route=route,
                                     timeout=timeout)
                p.timedOut()
            elif not p.final and len(p.hbuf) > p.hpos:
                # A response head has started and is not complete (interim
                # heads already relayed do not count: hpos is past them).
                # The read timeout is per read: a node trickling the head
                # would keep the client for up to max_header_size reads.
                # The whole head is due within the read timeout, timed from
                # the first sweep that sees it (never early, up to one sweep
                # late; nothing recorded per request or per read).
                if p.head_ex is not ex or p.head_pos != p.hpos:
                    p.head_ex = ex
                    p.head_pos = p.hpos
                    p.head_since = now
                elif now - p.head_since >= timeout:
                    route = self.settings.route
                    self.fw.limiter.emit(
                        f"head deadline, node {route}", LogLevel.warn,
                        "node {route}: response head not complete {timeout:g} s after its "
                        "first byte ({size} bytes)", route=route, timeout=timeout,
                        size=len(p.hbuf) - p.hpos)
                    p.headTimedOut(timeout)
            elif p.head_ex is not None:
                p.head_ex = None
        self.trim_idle(now)


class HttpForwarder(PooledForwarder):
    """
    L{IForwarder} for C{http}, C{https}, C{ws} and C{wss} nodes.

    @param node_tls: node → C{IOpenSSLClientConnectionCreator} for https/wss
        nodes; default C{optionsForClientTLS(host)} (system trust store).
    """

    pool_class = NodePool

    def __init__(self, reactor, config, node_tls: Optional[Callable] = None) -> None:
        self.reactor = reactor
        self.config = config
        self.node_tls = node_tls
        self.preserve_host = config.preserve_host
        self.add_forwarded = config.add_forwarded_headers
        self.server_name = config.server_name.encode("utf-8")
        self.max_head = config.max_header_size
        #: node-side log lines (read timeouts, ...) may come at the request
        #: rate: rate-limited per node and kind
        self.limiter = LogLimiter(log, reactor.seconds)
        # X-Forwarded-For/-Proto/-Server lines by client address (plain, TLS)
        self._fwd: tuple[BoundedMemo[str, bytes], BoundedMemo[str, bytes]] = (
            BoundedMemo("proxy.http.forwarded", FORWARDED_MEMO_SIZE, count_hits=False),
            BoundedMemo("proxy.http.forwarded_tls", FORWARDED_MEMO_SIZE, count_hits=False))
        super().__init__(reactor)

    def tick(self, now: float) -> None:
        PooledForwarder.tick(self, now)
        self.limiter.tick(now)  # the lines held back, once their interval is over

    def forwarded(self, client) -> bytes:
        """The X-Forwarded-For, -Proto and -Server lines for C{client} (remembered)."""
        memo = self._fwd[1 if client.secure else 0]
        addr = client.remote_addr
        lines = memo.entries.get(addr)
        if lines is None:
            lines = memo.put(addr, _FORWARDED % (
                addr.encode("ascii"), b"https" if client.secure else b"http", self.server_name))
        client.http_forwarded = lines
        return lines

    def forward(self, exchange, fresh: bool = False):
        node = exchange.node
        # (subscripts here: the interpreter's specialised dict lookup, no
        # method call)
        try:
            pool = self._pools[node.id]
        except KeyError:
            pool = None
        if pool is None or pool.rt is not node.rt or pool.settings is not node.settings:
            try:
                pool = self.pool(node)
            except Exception as e:
                log.failure("cannot set up connections to node {route}", route=node.route)
                return LocalUpstream(self.reactor, exchange,
                                     error=ForwardError(CONNECT, f"{type(e).__name__}: {e}"))
        if not fresh:
            # NodePool.acquire's reuse of the most recent idle connection,
            # inlined (a call fewer per request)
            idle = pool.idle
            while idle:
                p = idle.pop()
                if p.up and not p.closed:
                    # NodeProtocol.start for a connected one, inlined (a call
                    # fewer per request; the same stores, kept in step)
                    p.ex = exchange
                    p.seen = self.now
                    p.got = False
                    if p.dirty:
                        p.parser = HttpResponseParser(p)
                        p.dirty = False
                    t = exchange.head_template
                    if t is None or exchange.x_forwarded or exchange.upgrade is not None:
                        p.chunked = exchange.body_length == -1
                        p.sent = p.body_done = False
                        p._sendHead()
                        return p
                    # (a remembered head has no body: body_length is None, and
                    # the comparison with -1 would be a generic one)
                    p.chunked = False
                    # _sendHead for a remembered head, inlined (a call fewer
                    # per kept-alive request; the same bytes and stores, kept
                    # in step: test_proxy_memo.py compares the node's bytes
                    # with the parser's path, on new and reused connections)
                    host = (exchange.host if self.preserve_host and exchange.host is not None
                            else pool.host_header)
                    try:
                        m = t.node_heads[host]
                    except KeyError:
                        m = _node_head(t, host)
                    if self.add_forwarded:
                        lines = exchange.client.http_forwarded
                        if lines is None:
                            lines = self.forwarded(exchange.client)
                        data = b"".join((exchange.method, b" ", exchange.target, m[0], lines,
                                         m[1]))
                    else:
                        data = b"".join((exchange.method, b" ", exchange.target, m[0], m[2]))
                    p.rt.transferred += len(data)
                    p.sent = p.body_done = True
                    # (read, then called: an instance attribute called as
                    # p.write() is a method call CPython 3.11 does not
                    # specialise, a generic lookup per call)
                    write = p.write
                    write(data)
                    return p
        return pool.acquire(exchange, fresh)
