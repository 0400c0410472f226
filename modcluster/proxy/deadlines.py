"""
The read deadlines and idle/stall timeouts of an HTTP/1.x client connection
(L{modcluster.proxy.client.ClientProtocol}), checked by the proxy factory's
once-a-second sweep rather than by timers: the idle and stall timeout
(C{client_timeout}), a client that does not read its response, lingering
closes, connections the accept loop left unregistered for reading
(C{ClientProtocol.deferReading}: registered at the first sweep), and the
request head and body deadlines (httpd's C{RequestReadTimeout}:
L{modcluster.listening.ReadTimeouts}).

A mixin of C{ClientProtocol}: it reads and sets that protocol's connection
state, declared below for the type checker only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from modcluster.proxy._transport import lose_connection
from modcluster.proxy.exchange import _P_BUFFER, _P_UPGRADE, _P_UPSTREAM

if TYPE_CHECKING:
    from collections import deque

    from modcluster.proxy._transport import IStreamTransport
    from modcluster.proxy.exchange import _Exchange
    from modcluster.proxy.front import ProxyFactory
    from modcluster.proxy.interfaces import ClientInfo

__all__ = ["ClientDeadlines", "SWEEP_INTERVAL"]

#: Seconds between timeout sweeps (client idle/stall, node read timeouts, pool TTL).
SWEEP_INTERVAL = 1.0


class ClientDeadlines:
    """The sweep's checks of one client connection (see the module docstring)."""

    if TYPE_CHECKING:
        # ClientProtocol's state and methods this mixin uses (set and
        # defined there).
        factory: ProxyFactory
        transport: IStreamTransport
        client: Optional[ClientInfo]
        _reading: Optional[_Exchange]
        _current: Optional[_Exchange]
        _queue: deque[_Exchange]
        _tunnel: Optional[_Exchange]
        _pause: int
        _closing: bool
        _ignore: bool
        _seen: float
        _head_bytes: int
        _head_start: Optional[float]
        _body_timed: Optional[_Exchange]
        _body_since: float
        _body_base: int
        _blocked: bool
        _blocked_since: float
        _linger_until: float
        _unread: bool

        def startDeferredReading(self) -> None: ...

        def _abortClient(self) -> None: ...

        def _requestError(self, status: int, message: str) -> None: ...

        def _respondError(self, ex: _Exchange, status: int, message: str,
                          retry_after: int = 0) -> None: ...

    def checkTimeout(self, now: float, limit: float) -> None:
        """
        Called once a second by the sweep: the idle/stall timeout C{limit}
        (C{client_timeout}), the request read deadlines
        (L{ProxyFactory.read_timeouts}), lingering closes.  Deadlines are
        never early, and up to one sweep interval late.
        """
        if self._unread:
            self.startDeferredReading()
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
                lose_connection(self.transport)
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
                if self._body_timed is not None:
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
        if self._body_timed is not None:
            # (stored only when set: a name every connection stored would be
            # one more in ClientProtocol's shared key table, see there)
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
            lose_connection(self.transport)
        return True

    def _timedOut(self, reason: str, what: str, now: float) -> None:
        client = self.client
        self.factory.timeouts.timedOut(reason, client.remote_addr if client else "?",
                                       what, now)
