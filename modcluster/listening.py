"""
What the proxy and management listeners share about their clients: the listen
backlog added to endpoint descriptions, the request read deadlines (httpd's
C{RequestReadTimeout}) and the rate-limited reporting of the clients they cut.

Nothing here touches the network or the reactor: the deadlines are pure
arithmetic on times and byte counts that the listeners' once-a-second sweeps
(L{modcluster.proxy.front.ProxyFactory.sweep},
L{modcluster.mcmp.resource.ManagementSite.sweep}) hand in.
"""

from __future__ import annotations

from typing import Optional

from attrs import frozen
from twisted.logger import Logger

from modcluster.ratelimit import RateLimit

__all__ = ["ReadTimeouts", "TimeoutReport", "TIMEOUT_REASONS", "with_backlog"]

#: Why a client connection was cut (the C{reason} label of
#: C{modcluster_client_timeouts_total}): its request head did not arrive in
#: time, its request body came too slowly, it did not read what we sent.
TIMEOUT_REASONS = ("header", "body", "send")
#: Endpoint kinds whose description takes C{backlog=}.
_BACKLOG_KINDS = ("tcp", "tcp6", "ssl", "unix")
#: Seconds between two log lines of one listener for one reason; the clients
#: cut in between are counted in the next line.
LOG_INTERVAL = 10.0


def _split(description: str) -> list[str]:
    """The C{:}-separated parts of an endpoint description (C{\\:} escapes)."""
    parts, current, escaped = [], [], False
    for ch in description:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def with_backlog(description: str, backlog: int) -> str:
    """
    C{description} with C{:backlog=N} appended, unless it sets C{backlog=}
    itself or its kind (C{systemd:}, a socket made by someone else) has none.

    >>> with_backlog("tcp:8000:interface=127.0.0.1", 511)
    'tcp:8000:interface=127.0.0.1:backlog=511'
    """
    parts = _split(description)
    if parts[0].strip().lower() not in _BACKLOG_KINDS:
        return description
    if any(p.strip().lower().startswith("backlog=") for p in parts[1:]):
        return description
    return f"{description}:backlog={backlog}"


@frozen
class ReadTimeouts:
    """
    How long a client may take to send a request, as httpd's
    C{RequestReadTimeout header=H-HMAX,MinRate=HR body=B,MinRate=BR}:

     - the request head must be complete C{header} seconds after it began
       (after the connection was accepted, for the first request), extended by
       one second per C{header_min_rate} bytes received, up to C{header_max}
       seconds (0: no extension);
     - a request body may take C{body} seconds, extended by one second per
       C{body_min_rate} bytes received (0: C{body} is a total deadline), so a
       body sent at C{body_min_rate} bytes/s or faster never times out.

    C{header} or C{body} 0 turns that deadline off.
    """

    header: float = 20.0
    header_max: float = 40.0
    header_min_rate: int = 500
    body: float = 20.0
    body_min_rate: int = 500

    @classmethod
    def from_config(cls, section) -> "ReadTimeouts":
        """From the C{request_*} keys of a C{[proxy]} or C{[manager]} section."""
        return cls(section.request_header_timeout, section.request_header_timeout_max,
                   section.request_header_min_rate, section.request_body_timeout,
                   section.request_body_min_rate)

    def header_allowed(self, received: int) -> float:
        """Seconds a request head of which C{received} bytes came may take."""
        allowed = self.header
        if self.header_max > allowed and self.header_min_rate:
            allowed = min(self.header_max, allowed + received / self.header_min_rate)
        return allowed

    def body_allowed(self, received: int) -> float:
        """Seconds a request body of which C{received} bytes came may take."""
        if self.body_min_rate:
            return self.body + received / self.body_min_rate
        return self.body


class TimeoutReport:
    """
    Counts the clients a listener cut for being slow (by reason) and logs
    them, at most one line per reason every L{LOG_INTERVAL} seconds: a flood
    of slow clients costs a few log lines, with the number left out.

    @param listener: C{"proxy"} or C{"manager"} (log lines and metrics label).
    @ivar counts: reason (L{TIMEOUT_REASONS}) -> clients cut, since start.
    """

    def __init__(self, listener: str, log: Optional[Logger] = None,
                 interval: float = LOG_INTERVAL) -> None:
        self.listener = listener
        self.counts = dict.fromkeys(TIMEOUT_REASONS, 0)
        self._log = log or Logger(namespace=f"modcluster.{listener}")
        self._lines: RateLimit[str] = RateLimit(interval)
        self._reported = dict.fromkeys(TIMEOUT_REASONS, 0)

    def timedOut(self, reason: str, peer: str, what: str, now: float) -> None:
        """Client C{peer} was cut at time C{now}: C{what} (for the log line)."""
        self.counts[reason] += 1
        more = self._lines.admit(reason, now)
        if more is None:
            return  # counted; said with the next line for this reason
        self._log.info(
            "{listener}: client {peer} cut: {what}{more}", listener=self.listener,
            peer=peer, what=what, reason=reason, left_out=more,
            more=f" ({more} more since the last such line)" if more else "")

    def take(self) -> dict[str, int]:
        """The counts added since the last call (for worker reports)."""
        delta = {}
        for reason, n in self.counts.items():
            d = n - self._reported[reason]
            if d:
                delta[reason] = d
                self._reported[reason] = n
        return delta
