# -*- test-case-name: tests.unit.node.test_node_discovery -*-
"""
Proxy discovery by multicast advertise (reference C{advertise.md}), on the
worker side.

L{AdvertiseListener} is a DatagramProtocol: it joins the group on the
configured interface, parses each datagram with the shared codec
(L{modcluster.advertise.parse_datagram}, Java rules) after cutting it to the
512 bytes the Java listener reads, checks the digest with the shared key (or
the no-key digest) and calls C{on_proxy(host, port)} for the first valid
datagram of each new C{Server} id that names an C{X-Manager-Address}.

Datagrams that are malformed, lack a C{Digest} or carry a wrong one are
ignored with a log line (the Java listener's thread dies on a datagram
without C{Digest}; ignoring it is the deliberate difference).
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from modcluster.advertise import (
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
    @ivar servers: server id -> (status, reason) of every verified server seen.
    """

    log = Logger()

    def __init__(
        self,
        on_proxy: Callable[[str, int], None],
        key: Optional[str] = None,
        group: str = DEFAULT_GROUP,
        interface: str = "0.0.0.0",
    ) -> None:
        self._on_proxy = on_proxy
        self._key = key
        self._group = group
        self._interface = interface
        self.servers: dict[str, tuple[int, str]] = {}

    def startProtocol(self) -> None:
        d = self.transport.joinGroup(self._group, self._interface)

        def failed(f: object) -> None:
            self.log.failure(
                "Could not join advertise group {group} on {interface}",
                f, group=self._group, interface=self._interface,
            )

        d.addErrback(failed)

    def datagramReceived(self, datagram: bytes, addr: object) -> None:
        try:
            advertisement = parse_datagram(datagram[:MAX_DATAGRAM_SIZE])
        except MalformedDatagram as e:
            self.log.warn("Ignored advertise datagram from {addr}: {why}", addr=addr, why=str(e))
            return
        if not advertisement.verify(self._key):
            self.log.warn(
                "Ignored advertise datagram from {addr} (server {server}): the digest "
                "does not match the advertise key",
                addr=addr, server=advertisement.server,
            )
            return
        known = advertisement.server in self.servers
        self.servers[advertisement.server] = (advertisement.status, advertisement.reason)
        if known:
            return
        address = advertisement.manager_socket_address()
        if address is None:
            if advertisement.manager_address is not None:
                self.log.warn("Ignored advertised address {address!r}",
                              address=advertisement.manager_address)
            return
        host, port = address
        if port == 0:
            self.log.warn("Ignored advertised address {address!r}: no port",
                          address=advertisement.manager_address)
            return
        self.log.info(
            "Proxy {host}:{port} advertised by server {server}",
            host=host, port=port, server=advertisement.server,
        )
        self._on_proxy(host, port)
