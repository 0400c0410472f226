# -*- test-case-name: tests.unit.advertise.test_advertise -*-
"""
The advertise service (httpd's mod_advertise): L{Advertiser}, a
L{twisted.application.service.Service} owning one UDP socket, driven by a
L{LoopingCall} on the injected reactor, multicasts the datagrams that
L{modcluster.advertise.codec} builds.  It takes values already parsed (the
configuration parses the directive strings with the codec's parsers).

Reference: C{shared/reference/advertise.md} (format, digest, lifecycle) and
C{directives.md} section 3.  Design notes: C{docs/advertise.md}.
"""

from __future__ import annotations

import ipaddress
import math
import uuid
from http import HTTPStatus
from typing import Optional

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IMulticastTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from modcluster.advertise.codec import (
    DEFAULT_GROUP,
    DEFAULT_PORT,
    MAX_SEQUENCE,
    ManagerInfo,
    SecurityKey,
    check_token,
    format_datagram,
    format_host_port,
    format_http_date,
    key_bytes,
    split_host_port,
    status_line,
)

__all__ = ["Advertiser"]


#: The status whose reason phrase is longest, for the worst-case size check.
_LONGEST_STATUS = int(max(HTTPStatus, key=lambda s: len(s.phrase)))


class _SenderProtocol(DatagramProtocol):
    """The sending socket's protocol: datagrams arriving on it are ignored."""

    noisy = False

    def datagramReceived(self, datagram: bytes, addr: object) -> None:
        pass


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _is_loopback(host: str) -> Optional[bool]:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return None  # a host name: unknown


class Advertiser(Service):
    """
    Multicast the MCMP address every C{frequency} seconds (mod_advertise).

    Lifecycle (reference section 4): on start the socket is bound, TTL and outgoing
    interface set, and the first datagram goes out at once; then one every
    C{frequency} seconds and immediately on L{status_changed}; on stop a 403 then a
    410 "STATUS" datagram.  Nothing is ever sent before the outgoing interface is set
    (so a datagram never leaves through the default-route interface by mistake).
    Send and socket errors are logged, never raised.

    @ivar server_id: the C{Server} value (random UUID per instance unless given).
    @ivar sequence: the last C{Sequence} sent (0 before the first).
    @ivar status: the current advertised status.
    @ivar datagrams_sent: datagrams handed to the socket.
    @ivar send_failures: datagrams the socket refused.
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        manager_address: str,
        *,
        group: tuple[str, int] = (DEFAULT_GROUP, DEFAULT_PORT),
        bind_address: tuple[str, int] = ("0.0.0.0", DEFAULT_PORT),
        interface: str = "127.0.0.1",
        ttl: int = 0,
        frequency: float = 10.0,
        security_key: SecurityKey = None,
        server_id: Optional[str] = None,
        manager_url: Optional[str] = None,
        manager_protocol: str = "http",
        manager_host: Optional[str] = None,
    ) -> None:
        """
        @param reactor: provider of C{IReactorMulticast} and C{IReactorTime}.
        @param manager_address: C{host:port} nodes must send MCMP to (IPv6 in brackets).
        @param group: C{(address, port)}, as L{modcluster.advertise.codec.parse_group}
            returns it; IPv4 only for sending.
        @param bind_address: local C{(address, port)} of the sending socket (0 = any
            port), as L{modcluster.advertise.codec.parse_bind_address} returns it.
        @param interface: IPv4 address of the interface multicast leaves from.
        @param ttl: multicast TTL (0 keeps datagrams on this host).
        @param frequency: seconds (L{modcluster.advertise.codec.parse_frequency} reads the
            C{AdvertiseFrequency} syntax).
        @param security_key: C{AdvertiseSecurityKey} (None: zero salt).
        @param server_id: the C{Server} value; default a fresh random UUID.
        @param manager_url: C{X-Manager-Url}; default C{/<server id>}.
        @param manager_protocol: C{http} or C{https} (C{https} when MCMP is on TLS).
        @param manager_host: C{X-Manager-Host}; default the host of C{manager_address}.
        @raise ValueError: (an L{AdvertiseError} or plain C{ValueError}) on a bad
            argument, including a datagram that could exceed 512 bytes.
        """
        self._reactor = reactor
        g_host, g_port = group
        g_ip = ipaddress.ip_address(g_host)
        if not g_ip.is_multicast or not 0 < g_port <= 65535:
            raise ValueError(f"advertise group {group!r} is not a multicast address and port")
        if g_ip.version != 4:
            raise ValueError(f"advertise group {g_host}: only IPv4 multicast groups can be sent to")
        self.group: tuple[str, int] = (str(g_ip), g_port)

        b_host, b_port = bind_address
        if ipaddress.ip_address(b_host).version != 4:
            raise ValueError(f"advertise bind address {b_host} must be IPv4 (the group is IPv4)")
        self.bind_address: tuple[str, int] = (b_host, b_port)

        try:
            if_ip = ipaddress.ip_address(interface)
        except ValueError:
            raise ValueError(
                f"advertise interface {interface!r} must be the IPv4 address of an interface"
            ) from None
        if if_ip.version != 4 or if_ip.is_multicast or if_ip.is_unspecified:
            raise ValueError(
                f"advertise interface {interface!r} must be the IPv4 address of an interface"
            )
        self.interface = str(if_ip)

        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= 255:
            raise ValueError(f"advertise TTL must be 0..255, not {ttl!r}")
        self.ttl = ttl
        if (isinstance(frequency, bool) or not isinstance(frequency, (int, float))
                or not math.isfinite(frequency) or frequency <= 0):
            raise ValueError(f"advertise frequency must be a number of seconds > 0, "
                             f"not {frequency!r}")
        self.frequency = float(frequency)
        key_bytes(security_key)  # ASCII check now, not at the first send
        self._key = security_key
        self.server_id = check_token("server id", server_id or str(uuid.uuid4()))
        m_host, _ = split_host_port(manager_address, 0)
        self.manager = ManagerInfo(
            address=manager_address,
            url=manager_url if manager_url is not None else "/" + self.server_id,
            protocol=manager_protocol,
            host=manager_host if manager_host is not None else m_host,
        )
        # Fail now, not at the first tick, if the largest possible datagram is too big.
        format_datagram(date=format_http_date(0), sequence=MAX_SEQUENCE,
                        server=self.server_id, key=self._key, status=_LONGEST_STATUS,
                        manager=self.manager)

        self.sequence = 0
        self.status = 200
        self.datagrams_sent = 0
        self.send_failures = 0
        self._port: Optional[IMulticastTransport] = None
        self._ready = False
        self._loop: Optional[LoopingCall] = None
        self._starting: Optional[Deferred] = None

    # -- Service ---------------------------------------------------------------

    def startService(self) -> None:
        Service.startService(self)
        b_host, b_port = self.bind_address
        try:
            self._port = self._reactor.listenMulticast(
                b_port, _SenderProtocol(), interface=b_host, listenMultiple=True)
            self._port.setTTL(self.ttl)
            self._port.setLoopbackMode(True)
            d = self._port.setOutgoingInterface(self.interface)
        except Exception:
            self.log.failure(
                "Advertise disabled: cannot open the multicast socket on {bind} "
                "(interface {interface}, TTL {ttl})",
                bind=format_host_port(b_host, b_port), interface=self.interface, ttl=self.ttl)
            self._close()
            return
        d.addCallbacks(self._interfaceSet, self._interfaceFailed)
        self._starting = d

    def _interfaceSet(self, _: object) -> None:
        self._starting = None
        if not self.running or self._port is None:
            return
        self._ready = True
        g_host, g_port = self.group
        self.log.info(
            "Advertising MCMP address {address} ({protocol}) to {group} via interface "
            "{interface}, TTL {ttl}, every {frequency} s, from {bind}, server {server_id}, "
            "{keyed}",
            address=self.manager.address, protocol=self.manager.protocol,
            group=format_host_port(g_host, g_port), interface=self.interface, ttl=self.ttl,
            frequency=self.frequency, bind=format_host_port(*self.bind_address),
            server_id=self.server_id,
            keyed="with a security key" if self._key is not None else "without a security key",
        )
        self._warnMisconfiguration()
        self._startLoop()

    def _interfaceFailed(self, failure: Failure) -> None:
        self._starting = None
        if failure.check(CancelledError):
            return  # stopService came first
        self.log.failure(
            "Advertise disabled: cannot send multicast through interface {interface}",
            failure, interface=self.interface)
        self._close()

    def _warnMisconfiguration(self) -> None:
        m_host, _ = split_host_port(self.manager.address, 0)
        if_loop = ipaddress.ip_address(self.interface).is_loopback
        if _is_wildcard(m_host):
            self.log.warn(
                "Advertised address {address} is a wildcard address: nodes cannot connect "
                "to it; set the advertised address explicitly", address=self.manager.address)
        elif if_loop and _is_loopback(m_host) is False:
            self.log.warn(
                "Advertise interface is loopback ({interface}): only nodes on this host "
                "hear the datagrams advertising {address}",
                interface=self.interface, address=self.manager.address)
        elif not if_loop and _is_loopback(m_host):
            self.log.warn(
                "Advertised address {address} is loopback but datagrams go out through "
                "{interface}: remote nodes will fail to connect",
                address=self.manager.address, interface=self.interface)
        if not if_loop and self.ttl == 0:
            self.log.warn(
                "Advertise TTL is 0: datagrams sent through {interface} never leave this host",
                interface=self.interface)

    def stopService(self) -> Deferred:
        Service.stopService(self)
        starting, self._starting = self._starting, None
        if starting is not None:
            starting.cancel()
        if self._ready:
            self._send(403, with_manager=False)
        self._stopLoop()
        if self._ready:
            self._send(410, with_manager=False)
        self._ready = False
        return self._close()

    # -- the lead's hook -------------------------------------------------------

    def status_changed(self, status: int) -> None:
        """
        Set the advertised status (200 normally); a different value is sent at once
        and the period restarts from now, as mod_advertise does.
        """
        status_line(status)
        if status == self.status:
            return
        self.log.info("Advertise status {old} -> {new}", old=self.status, new=status)
        self.status = status
        if self._ready:
            self._stopLoop()
            self._startLoop()

    # -- internals -------------------------------------------------------------

    def _startLoop(self) -> None:
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._reactor
        d = self._loop.start(self.frequency, now=True)
        d.addErrback(lambda f: self.log.failure("Advertise loop stopped", f))

    def _stopLoop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _tick(self) -> None:
        self._send(self.status, with_manager=True)

    def _next_sequence(self) -> int:
        self.sequence += 1
        if self.sequence < 1 or self.sequence > MAX_SEQUENCE:
            self.sequence = 1
        return self.sequence

    def build_datagram(self, status: Optional[int] = None, with_manager: bool = True) -> bytes:
        """
        Format the next datagram (consumes a Sequence number).  Exposed for tests and
        for a future "advertise now" command; L{Advertiser} calls it for every send.
        """
        return format_datagram(
            date=format_http_date(self._reactor.seconds()),
            sequence=self._next_sequence(),
            server=self.server_id,
            key=self._key,
            status=self.status if status is None else status,
            manager=self.manager if with_manager else None,
        )

    def _send(self, status: int, with_manager: bool) -> None:
        try:
            data = self.build_datagram(status, with_manager)
            assert self._port is not None  # sent only while _ready
            self._port.write(data, self.group)
        except Exception:
            self.send_failures += 1
            self.log.failure(
                "Advertise datagram {sequence} to {group} via {interface} failed",
                sequence=self.sequence, group=format_host_port(*self.group),
                interface=self.interface)
        else:
            self.datagrams_sent += 1
            self.log.debug("Advertise datagram {sequence} (status {status}) sent to {group}",
                           sequence=self.sequence, status=status,
                           group=format_host_port(*self.group))

    def _close(self) -> Deferred:
        port, self._port = self._port, None
        self._ready = False
        if port is None:
            return succeed(None)
        d = maybeDeferred(port.stopListening)
        d.addErrback(lambda f: self.log.failure("Closing the advertise socket failed", f))
        return d
