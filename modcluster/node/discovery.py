# -*- test-case-name: tests.unit.node.test_node_discovery -*-
"""
Proxy discovery by multicast advertise (reference C{advertise.md}), on the
worker side.

L{AdvertiseListener} is a DatagramProtocol: it joins the group on the
configured interface, parses each datagram with the shared codec
(L{modcluster.advertise.codec.parse_datagram}, Java rules) after cutting it to the
512 bytes the Java listener reads, checks the digest with the shared key (or
the no-key digest) and calls C{on_proxy(host, port)} for the first valid
datagram of each new C{Server} id that names an C{X-Manager-Address}.

Datagrams that are malformed, lack a C{Digest} or carry a wrong one are
ignored with a log line (the Java listener's thread dies on a datagram
without C{Digest}; ignoring it is the deliberate difference).

Replay (docs/advertise.md, "Replay"): the digest covers C{Date}, C{Sequence}
and C{Server} only, so a captured datagram stays valid forever and its
C{X-Manager-Address} is not authenticated.  This listener therefore also
ignores, with a log line:

  - a datagram whose C{Date} is more than C{max_skew} seconds away from the
    local clock (stale, or from the future), or unreadable;
  - for a C{Server} already heard, a datagram whose C{Sequence} is the last
    one accepted (a replay: ignored quietly) or lower, unless its C{Date} is
    later than the last accepted one (a sender that restarted and kept its
    server id counts again from 1; httpd and this balancer pick a new id at
    every start, so for them a restart is a new server anyway).
"""

from __future__ import annotations

import calendar
import email.utils
from typing import Callable, Optional

from twisted.internet.interfaces import IMulticastTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from modcluster.accesslog import LogLimiter
from modcluster.advertise.codec import (
    DEFAULT_GROUP,
    MAX_DATAGRAM_SIZE,
    MalformedDatagram,
    parse_datagram,
)

__all__ = ["AdvertiseListener"]


class AdvertiseListener(DatagramProtocol):
    """
    Listens to advertise datagrams and reports new proxies.

    @param on_proxy: called with C{(host, port)} for each new advertised proxy.
    @param key: the shared security key, or C{None} (the no-key digest).
    @param group: the multicast group to join.
    @param interface: the local interface address to join it on.
    @param clock: C{IReactorTime} for the freshness check (default: the reactor).
    @param max_skew: largest difference in seconds between a datagram's C{Date}
        and the local clock; C{None} or 0 turns the check off.
    @ivar servers: server id -> (status, reason) of every verified server seen.
    """

    #: Servers remembered at most (the oldest are forgotten first): without a
    #: key anyone can make up server ids.
    max_servers = 1024

    log = Logger()

    def __init__(
        self,
        on_proxy: Callable[[str, int], None],
        key: Optional[str] = None,
        group: str = DEFAULT_GROUP,
        interface: str = "0.0.0.0",
        *,
        clock=None,
        max_skew: Optional[float] = 300.0,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self._on_proxy = on_proxy
        self._key = key
        self._group = group
        self._interface = interface
        self._clock = clock
        self._max_skew = max_skew or None
        self.servers: dict[str, tuple[int, str]] = {}
        #: server id -> (last accepted Sequence, its Date in epoch seconds)
        self._last: dict[str, tuple[int, float]] = {}
        #: the lines about datagrams ignored: anyone can send them (and spoof
        #: their source), so at most a few per kind per 10 s, the rest counted
        self._limiter = LogLimiter(self.log, clock.seconds)

    def startProtocol(self) -> None:
        # Listening with reactor.listenMulticast: the transport is an IMulticastTransport.
        transport = self.transport
        assert IMulticastTransport.providedBy(transport)
        d = transport.joinGroup(self._group, self._interface)

        def failed(f: Failure) -> None:
            self.log.failure(
                "Could not join advertise group {group} on {interface}",
                f, group=self._group, interface=self._interface,
            )

        d.addErrback(failed)

    def _ignored(self, kind: str, fmt: str, **fields) -> None:
        """A line about a datagram ignored, rate-limited per C{kind}."""
        self._limiter.emit(kind, LogLevel.warn, fmt, **fields)

    def datagramReceived(self, datagram: bytes, addr: object) -> None:
        try:
            advertisement = parse_datagram(datagram[:MAX_DATAGRAM_SIZE])
        except MalformedDatagram as e:
            self._ignored("malformed", "Ignored advertise datagram from {addr}: {why}",
                          addr=addr, why=str(e))
            return
        if not advertisement.verify(self._key):
            self._ignored(
                "digest", "Ignored advertise datagram from {addr} (server {server}): the digest "
                "does not match the advertise key",
                addr=addr, server=advertisement.server,
            )
            return
        if not self._fresh(advertisement, addr):
            return
        known = advertisement.server in self.servers
        self.servers[advertisement.server] = (advertisement.status, advertisement.reason)
        while len(self.servers) > self.max_servers:
            del self.servers[next(iter(self.servers))]
        if known:
            return
        address = advertisement.manager_socket_address()
        if address is None:
            if advertisement.manager_address is not None:
                self._ignored("address", "Ignored advertised address {address!r}",
                              address=advertisement.manager_address)
            return
        host, port = address
        if port == 0:
            self._ignored("address", "Ignored advertised address {address!r}: no port",
                          address=advertisement.manager_address)
            return
        self.log.info(
            "Proxy {host}:{port} advertised by server {server}",
            host=host, port=port, server=advertisement.server,
        )
        self._on_proxy(host, port)

    def _fresh(self, advertisement, addr: object) -> bool:
        """
        Is this verified datagram recent and newer than the last one accepted
        from the same server?  Records it when it is.
        """
        server = advertisement.server
        try:
            parsed = email.utils.parsedate_tz(advertisement.date)
            date = float(calendar.timegm(parsed[:9]) - (parsed[9] or 0)) if parsed else None
        except (TypeError, ValueError, OverflowError, IndexError):
            date = None
        if date is None:
            self._ignored("date", "Ignored advertise datagram from {addr} (server {server}): "
                          "unreadable Date {date!r}", addr=addr, server=server,
                          date=advertisement.date[:64])
            return False
        if self._max_skew is not None:
            skew = date - self._clock.seconds()
            if abs(skew) > self._max_skew:
                self._ignored(
                    "date", "Ignored advertise datagram from {addr} (server {server}, Sequence "
                    "{sequence}): its Date {date!r} is {skew:.0f} s {direction} the local "
                    "clock (more than {max_skew} s: stale or replayed, or the clocks differ)",
                    addr=addr, server=server, sequence=advertisement.sequence,
                    date=advertisement.date, skew=abs(skew), max_skew=self._max_skew,
                    direction="behind" if skew < 0 else "ahead of")
                return False
        sequence = advertisement.sequence
        last = self._last.get(server)
        if last is not None:
            last_sequence, last_date = last
            if sequence == last_sequence:
                self.log.debug("Ignored replayed advertise datagram from {addr} (server "
                               "{server}, Sequence {sequence} already seen)",
                               addr=addr, server=server, sequence=sequence)
                return False
            if sequence < last_sequence:
                if date <= last_date:
                    self._ignored(
                        "order", "Ignored advertise datagram from {addr} (server {server}): "
                        "Sequence {sequence} after {last} and not newer (replayed or "
                        "out of order)", addr=addr, server=server, sequence=sequence,
                        last=last_sequence)
                    return False
                self.log.info("Advertise Sequence of server {server} restarted at "
                              "{sequence} (was {last})", server=server, sequence=sequence,
                              last=last_sequence)
        self._last.pop(server, None)
        self._last[server] = (sequence, date)
        while len(self._last) > self.max_servers:
            del self._last[next(iter(self._last))]
        return True
