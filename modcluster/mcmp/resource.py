"""
The management listener: a twisted.web Site whose root sends MCMP methods
(whatever the path) to the L{MCMPHandler} and everything else (GET/HEAD/POST) to
the ordinary resource tree (console, JSON API, metrics).  Its channels keep
the request read deadlines (L{ManagementChannel}), checked by a sweep once a
second as on the proxy listener.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.pages import notFound
from twisted.web.resource import Resource

from modcluster import _version
from modcluster.listening import ReadTimeouts, TimeoutReport
from modcluster.mcmp import names

__all__ = ["ManagementChannel", "ManagementRoot", "ManagementSite", "MCMPRequest"]

SERVER = f"txmodcluster/{_version.__version__}".encode()
_STANDARD = {b"GET", b"HEAD", b"POST"}


def _peer(request) -> str:
    addr = request.getClientAddress()
    host = getattr(addr, "host", None)
    return f"{host}:{getattr(addr, 'port', '')}" if host else str(addr)


class MCMPRequest(server.Request):
    """
    A request that refuses bodies above the site's limit before buffering them,
    and answers an MCMP error at once when a node sends too much.
    """

    _received = 0
    _refused = False

    def gotLength(self, length):
        limit = self.channel.site.max_message_size
        if length is not None and length > limit and self._is_mcmp():
            self._refuse(f"message of {length} bytes exceeds the {limit} bytes limit")
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self._refused:
            return
        self._received += len(data)
        limit = self.channel.site.max_message_size
        if self._received > limit and (self._is_mcmp() or self._received > 1 << 20):
            self._refuse(f"message exceeds the {limit} bytes limit")
            return
        super().handleContentChunk(data)

    def _is_mcmp(self) -> bool:
        # The method is only set on the request once the body has been read;
        # until then the channel holds it.
        method = getattr(self.channel, "_command", None) or self.method
        return method is not None and names.is_mcmp_method(method)

    def _refuse(self, why: str) -> None:
        self._refused = True
        from modcluster.accesslog import text

        method = getattr(self.channel, "_command", None) or self.method or b"-"
        Logger().warn("MCMP {method} from {peer} refused: {why}",
                      method=text(method), peer=_peer(self), why=why)
        mess = f"SYNTAX: {why}".encode()
        transport = self.channel.transport
        assert transport is not None  # called while the request is being read
        transport.write(
            b"HTTP/1.1 500 Internal Server Error\r\nServer: " + SERVER +
            b"\r\nVersion: 0.2.1\r\nType: SYNTAX\r\nMess: " + mess +
            b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        transport.loseConnection()

    def requestReceived(self, command, path, version):
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def _handleStar(self):
        # twisted.web answers every "* " request-URI like "OPTIONS *"; MCMP uses
        # "*" as the node-wide form of the APP commands.
        if not names.is_mcmp_method(self.method):
            return super()._handleStar()
        try:
            self.render(self.site.getResourceFor(self))
        except BaseException:
            self.processingFailed(Failure())

    def finish(self):
        # A reply that says "Connection: close" (MCMP errors, as httpd) must
        # really close once it is written: the Java listener reads such a
        # reply until EOF.  twisted.web decides persistence from the request
        # headers only, so tell the channel; requestDone then calls
        # loseConnection, which sends what is buffered first.
        if self.channel is not None and not self._disconnected:
            for value in self.responseHeaders.getRawHeaders(b"connection", ()):
                if b"close" in value.lower().replace(b",", b" ").split():
                    self.channel.persistent = False
                    break
        super().finish()

    def setHeader(self, name, value):
        # One product name on every management response, not TwistedWeb's.
        if name.lower() == b"server" if isinstance(name, bytes) else name.lower() == "server":
            value = SERVER
        super().setHeader(name, value)


def pipelining_hooks_problem(channel_class: type = http.HTTPChannel) -> Optional[str]:
    """
    Check that C{channel_class} (twisted.web's HTTPChannel) still has the
    private state L{ManagementChannel} relies on to hold pipelined requests
    while the client does not read, and that it behaves as it did when that
    was written (Twisted 26.10): C{_networkProducer} is the transport,
    C{_waitingForTransport} follows pauseProducing/resumeProducing,
    C{_handlingRequest} is set while a request is answered, and LineReceiver
    keeps unparsed bytes in C{_buffer} while C{paused}.  Drives one channel on
    an in-memory transport and a private clock; binds and schedules nothing.

    @return: C{None} if all is there, else what is missing or different.
    """
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    channel = None
    try:
        channel = channel_class()
        channel.callLater = Clock().callLater  # the idle timeout, never the reactor's
        transport = StringTransport()
        channel.makeConnection(transport)
        if getattr(channel, "_networkProducer", None) is not transport:
            return "HTTPChannel._networkProducer is not the transport"
        if getattr(channel, "_waitingForTransport", None) is not False:
            return "HTTPChannel._waitingForTransport is missing"
        channel.pauseProducing()
        if channel._waitingForTransport is not True or transport.producerState != "paused":
            return "HTTPChannel.pauseProducing does not set _waitingForTransport"
        channel.resumeProducing()
        if channel._waitingForTransport is not False:
            return "HTTPChannel.resumeProducing does not clear _waitingForTransport"
        if getattr(channel, "_handlingRequest", None) is not False:
            return "HTTPChannel._handlingRequest is missing"
        head = b"GET / HTTP/1.1\r\nHost: a\r\n"
        channel.paused = True
        channel.dataReceived(head)
        if getattr(channel, "_buffer", None) != head or channel.requests:
            return "LineReceiver does not keep unparsed bytes in _buffer while paused"
        channel.paused = False
        channel.dataReceived(b"\r\n")
        if channel._buffer != b"" or channel._handlingRequest is not True:
            return "HTTPChannel._handlingRequest is not set while a request is answered"
    except Exception as e:
        return f"probing HTTPChannel failed: {e!r}"
    finally:
        if channel is not None and getattr(channel, "transport", None) is not None:
            try:
                channel.connectionLost(Failure(connectionDone.value))
            except Exception:
                pass
    return None


#: Why ManagementChannel cannot hold pipelined requests with the installed
#: Twisted (C{None}: it can).  When it cannot, every management and console
#: reply says C{Connection: close} and the connection closes after it.
PIPELINING_HOOKS_PROBLEM = pipelining_hooks_problem()


def _warn_pipelining_fallback() -> None:
    global _warned_fallback
    if PIPELINING_HOOKS_PROBLEM is None or _warned_fallback:
        return
    _warned_fallback = True
    from twisted import __version__ as twisted_version

    Logger().warn(
        "Twisted {version}: management and console listeners close the connection after "
        "every reply (no keep-alive): {problem}; txmodcluster needs an update for this "
        "Twisted to hold pipelined requests of a client that does not read",
        version=twisted_version, problem=PIPELINING_HOOKS_PROBLEM)


_warned_fallback = False


#: Seconds between read-deadline sweeps of a management site.
SWEEP_INTERVAL = 1.0

# What a management channel is reading (ManagementChannel._phase).
_IDLE = 0  # between requests: the idle timeout (request_timeout) applies
_HEAD = 1  # a request head (from the accept, for the first one)
_BODY = 2  # a request body
_BUSY = 3  # a request being answered, or the connection being closed

_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\nServer: " + SERVER +
                     b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


class ManagementChannel(http.HTTPChannel):
    """
    An HTTP channel that knows how long its client has been sending the
    current request head or body, for the site's read deadlines (httpd's
    C{RequestReadTimeout}).  twisted.web's own timeout (C{request_timeout})
    stays the idle timeout.  Costs one time stamp per request; no timer.
    """

    _phase = _HEAD
    _since = 0.0
    _bytes = 0
    #: Whether twisted.web's private state lets requestDone hold pipelined
    #: requests (L{pipelining_hooks_problem}); without it, no keep-alive.
    _hold_pipelined = PIPELINING_HOOKS_PROBLEM is None
    #: Set by the site's buildProtocol.
    site: ManagementSite

    def connectionMade(self) -> None:
        super().connectionMade()
        self._since = self.site.reactor.seconds()
        self.site._channels.add(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.site._channels.discard(self)
        self._phase = _BUSY
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        phase = self._phase
        if phase == _IDLE:
            self._phase = _HEAD
            self._since = self.site.reactor.seconds()
            self._bytes = len(data)
        elif phase == _HEAD:
            self._bytes += len(data)
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if self._phase == _BODY:
            self._bytes += len(data)
        super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        self._phase = _BODY
        self._since = self.site.reactor.seconds()
        self._bytes = 0
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._phase = _BUSY
        super().allContentReceived()

    def checkPersistence(self, request, version) -> bool:
        if not self._hold_pipelined:
            # Without the means to hold pipelined requests, one request per
            # connection: twisted.web would answer every request of a read
            # whether or not the client reads the replies.  What the client
            # sent after it is dropped (lineReceived), the reply says so.
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        return super().checkPersistence(request, version)

    def requestDone(self, request) -> None:
        # before the base class replays what was pipelined meanwhile
        if self._phase == _BUSY:
            self._phase = _IDLE
        super().requestDone(request)
        if not self._hold_pipelined:
            return
        if self._waitingForTransport and self.persistent:
            # The client does not read our answers (the transport's buffer is
            # full): what it pipelined behind this request waits until it
            # does (resumeProducing), and nothing more is read.  twisted.web
            # goes on parsing the requests left in the read that brought this
            # one (LineReceiver's loop) and answers each whether or not
            # anything is read: a burst of small requests with large answers
            # (INFO, DUMP, the console page) was buffered whole, thousands of
            # times what the client sent.  LineReceiver's own pause flag stops
            # its loop, the unparsed bytes kept in its buffer, in order.
            self._networkProducer.pauseProducing()
            if self._buffer:
                self.paused = True

    def resumeProducing(self) -> None:
        super().resumeProducing()
        if self._hold_pipelined and self.paused and not self._handlingRequest:
            self.paused = False
            if self.transport is not None and not getattr(self.transport, "disconnecting",
                                                           False):
                self.dataReceived(b"")  # the held requests, from LineReceiver's buffer

    def timeoutConnection(self) -> None:
        # The idle timeout (request_timeout), as twisted.web does it, without
        # its log line per connection: closing an idle keep-alive connection
        # is routine, and a flood of them must not flood the log.
        if self.abortTimeout is not None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()

    def checkReadDeadlines(self, now: float, rt: ReadTimeouts, report: TimeoutReport) -> None:
        """Cut the client if its request head or body is late (called by the sweep)."""
        transport = self.transport
        if transport is None or getattr(transport, "disconnecting", False):
            return  # already being closed (e.g. an MCMP message refused for its size)
        phase = self._phase
        if phase == _HEAD and rt.header:
            allowed = rt.header_allowed(self._bytes)
            if now - self._since <= allowed:
                return
            if self._bytes:
                what = f"request head not complete after {allowed:g} s ({self._bytes} bytes)"
            else:
                what = f"no request in {allowed:g} s"
            reason = "header"
        elif phase == _BODY and rt.body:
            allowed = rt.body_allowed(self._bytes)
            if now - self._since <= allowed:
                return
            what = (f"request body too slow ({self._bytes} bytes in "
                    f"{now - self._since:.0f} s)")
            reason = "body"
        else:
            return
        report.timedOut(reason, _channel_peer(self), what, now)
        self._phase = _BUSY
        if self._bytes or phase == _BODY:
            transport.write(_TIMEOUT_RESPONSE)
        self.loseConnection()


def _channel_peer(channel) -> str:
    try:
        addr = channel.transport.getPeer()
    except Exception:
        return "?"
    host = getattr(addr, "host", None)
    return f"{host}:{getattr(addr, 'port', '')}" if host else str(addr)


class ManagementSite(server.Site):
    """
    @ivar max_message_size: largest MCMP body accepted.
    @ivar read_timeouts: the request head and body deadlines.
    @ivar timeouts: counts (and logs, rate-limited) the clients cut for being
        slow; several sites may share one.
    """

    requestFactory = MCMPRequest
    # HTTPFactory annotates protocol as its HTTP/1.1-or-HTTP/2 wrapper's factory, but
    # documents any HTTPChannel subclass; management stays HTTP/1.1.
    protocol = ManagementChannel  # type: ignore[assignment]

    def __init__(self, resource, max_message_size: int = 65536, timeout: float = 60.0,
                 read_timeouts: Optional[ReadTimeouts] = None,
                 timeouts: Optional[TimeoutReport] = None, **kw) -> None:
        super().__init__(resource, timeout=timeout, **kw)
        self.max_message_size = max_message_size
        self.displayTracebacks = False
        self.read_timeouts = read_timeouts if read_timeouts is not None else ReadTimeouts()
        self.timeouts = timeouts if timeouts is not None else TimeoutReport("manager")
        self._channels: set[ManagementChannel] = set()
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = self.reactor

    def startFactory(self) -> None:
        super().startFactory()
        _warn_pipelining_fallback()
        if not self._sweeper.running:
            self._sweeper.start(SWEEP_INTERVAL, now=False)

    def stopFactory(self) -> None:
        super().stopFactory()
        if self._sweeper.running:
            self._sweeper.stop()

    def sweep(self) -> None:
        """Once a second: cut the clients whose request head or body is late."""
        now = self.reactor.seconds()
        rt, report = self.read_timeouts, self.timeouts
        for channel in list(self._channels):
            try:
                channel.checkReadDeadlines(now, rt, report)
            except Exception:
                Logger().failure("management read deadline check failed")

    def log(self, request):
        # Successful MCMP messages (a STATUS per node every few seconds) are not
        # access-logged: the registry logs every change they cause, and refusals
        # are logged by the handler.  Everything else is.
        if request.code == 200 and names.is_mcmp_method(request.method):
            return
        super().log(request)


class MCMPResource(Resource):
    """Renders one MCMP request through the handler."""

    isLeaf = True
    log = Logger()

    def __init__(self, handler, identities=None) -> None:
        super().__init__()
        self._handler = handler
        self._identities = identities or (lambda request: None)

    def render(self, request):
        method = request.method.decode("ascii", "replace")
        body = request.content.read() if request.content is not None else b""
        accept = request.getHeader(b"accept")
        try:
            identities = self._identities(request)
        except Exception:
            self.log.failure("cannot read the client certificate identity")
            identities = frozenset()
        result = self._handler.handle(method, request.uri, body, accept, identities,
                                      peer=_peer(request))
        if not isinstance(result, Deferred):
            return self._write(request, result)
        # A reply that is already there (a probe answered synchronously, e.g.
        # with EnableOptions off) is written at once, without the
        # NOT_DONE_YET/notifyFinish machinery.
        early = []
        result.addBoth(lambda r: early.append(r) or r)
        if early and not isinstance(early[0], Failure):
            return self._write(request, early[0])
        finished = []
        request.notifyFinish().addErrback(lambda _: finished.append(True))

        def send(reply):
            if not finished:
                request.write(self._write(request, reply))
                request.finish()

        result.addCallback(send).addErrback(
            lambda f: self.log.failure("writing the MCMP reply failed", f))
        return server.NOT_DONE_YET

    @staticmethod
    def _write(request, reply) -> bytes:
        request.setResponseCode(reply.status)
        request.responseHeaders.setRawHeaders(b"server", [SERVER])
        for name, value in reply.headers:
            request.responseHeaders.setRawHeaders(name, [value])
        request.setHeader(b"content-length", str(len(reply.body)).encode())
        if reply.close:
            request.setHeader(b"connection", b"close")
        return reply.body


class ManagementRoot(Resource):
    """
    Root of the management listener: MCMP methods on any path go to the MCMP
    resource; GET/HEAD/POST walk the children (console, API, metrics); anything
    else is 501.
    """

    def __init__(self, mcmp: Resource | None, index: bytes = b"/mod_cluster-manager") -> None:
        super().__init__()
        self._mcmp = mcmp
        self._index = index

    def getChildWithDefault(self, path, request):
        if request.method not in _STANDARD:
            if self._mcmp is not None and names.is_mcmp_method(request.method):
                return self._mcmp
            return _NotImplemented()
        return super().getChildWithDefault(path, request)

    def getChild(self, path, request):
        if path == b"":
            return self
        return notFound()

    def render(self, request):
        if self._mcmp is not None and names.is_mcmp_method(request.method):
            return self._mcmp.render(request)
        if request.method not in _STANDARD:
            return _NotImplemented().render(request)
        request.redirect(self._index)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"see " + self._index + b"\n"


class _NotImplemented(Resource):
    isLeaf = True

    def render(self, request):
        request.setResponseCode(http.NOT_IMPLEMENTED)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"allow", b"GET, HEAD, POST, " + b", ".join(
            m.encode() for m in sorted(names.METHODS)))
        return b"method not implemented\n"
