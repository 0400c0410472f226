"""
The L{Advertiser} over a real multicast socket on loopback: outgoing interface
127.0.0.1, TTL 0 (datagrams never leave the host), a receiver joined to the group on
127.0.0.1 as a mod_cluster node would be.  Bounded to a few seconds.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol

from modcluster.advertise.codec import DigestMismatch, verify_datagram
from modcluster.advertise.service import Advertiser

GROUP = "224.0.1.105"
KEY = "integration-key"


class Receiver(DatagramProtocol):
    """Joins GROUP on 127.0.0.1 and collects datagrams; fires waiters at a count."""

    def __init__(self):
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self._waiters: list[tuple[int, defer.Deferred]] = []

    def startProtocol(self):
        self.joined = self.transport.joinGroup(GROUP, "127.0.0.1")

    def datagramReceived(self, data, addr):
        self.received.append((data, addr))
        for n, d in list(self._waiters):
            if len(self.received) >= n:
                self._waiters.remove((n, d))
                d.callback(None)

    def wait_for(self, count, reactor, timeout=3.0):
        d = defer.Deferred()
        if len(self.received) >= count:
            d.callback(None)
        else:
            self._waiters.append((count, d))
        return d.addTimeout(timeout, reactor)


@pytest_twisted.inlineCallbacks
def test_advertise_reaches_a_loopback_receiver():
    """
    Datagrams arrive from 127.0.0.1 every period, verify with the key (and not
    without), carry increasing Sequence numbers, and end with 403 then 410.
    """
    from twisted.internet import reactor

    receiver = Receiver()
    rport = reactor.listenMulticast(0, receiver, interface=GROUP, listenMultiple=True)
    try:
        yield receiver.joined
        group_port = rport.getHost().port
        adv = Advertiser(
            reactor, "127.0.0.1:6666", group=(GROUP, group_port), bind_address=("127.0.0.1", 0),
            interface="127.0.0.1", ttl=0, frequency=0.2, security_key=KEY)
        adv.startService()
        try:
            yield receiver.wait_for(3, reactor)
        finally:
            yield adv.stopService()
        # every datagram the service sent, the 403 and 410 included, arrives
        yield receiver.wait_for(adv.datagrams_sent, reactor)
        assert adv.send_failures == 0

        ads = []
        for data, addr in receiver.received:
            assert addr[0] == "127.0.0.1"
            ads.append(verify_datagram(data, KEY))
            try:
                verify_datagram(data, None)
            except DigestMismatch:
                pass
            else:
                raise AssertionError("datagram verified without the key")
        seqs = [a.sequence for a in ads]
        assert seqs == list(range(1, len(ads) + 1))
        assert [a.status for a in ads[-2:]] == [403, 410]
        assert all(a.status == 200 for a in ads[:-2]) and len(ads) >= 5
        for a in ads[:-2]:
            assert a.server == adv.server_id
            assert a.manager_socket_address() == ("127.0.0.1", 6666)
    finally:
        yield rport.stopListening()
