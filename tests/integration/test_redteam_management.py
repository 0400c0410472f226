"""
The management and console listeners (twisted.web, ManagementChannel) against
a client that pipelines many requests whose answers are much larger than
they are (INFO, DUMP, the console page) and does not read: the answers must
not pile up in memory.  Real sockets on 127.0.0.1.
"""

from __future__ import annotations

import socket
import time

import pytest_twisted
from twisted.internet import defer, task, threads

from modcluster.cluster.model import BalancerSettings, NodeSettings
from modcluster.cluster.registry import Limits, Registry
from modcluster.mcmp.handler import MCMPHandler
from modcluster.mcmp.resource import ManagementRoot, ManagementSite, MCMPResource
from tests.support.waiting import until


class _Prober:
    def probe(self, node):
        return defer.succeed(True)


def _buffered(site) -> int:
    total = 0
    for channel in list(site._channels):
        t = channel.transport
        total += len(t.dataBuffer) + t._tempDataLen
    return total


INFO = b"INFO / HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest_twisted.ensureDeferred
async def test_pipelined_info_to_a_client_that_does_not_read_stays_bounded():
    """
    400 INFO requests in four bursts (12 KB), each answered with ~6 KB, to a
    client that does not read: twisted.web replays every pipelined request
    as soon as the one before it is answered, whether the answers are read
    or not, which buffered all 2.4 MB (2 000 requests: ~120 MB with 100
    nodes, from 60 KB sent).  The requests wait while the client does not
    read; once it reads, every answer comes, in order.
    """
    from twisted.internet import reactor

    registry = Registry(reactor, Limits())
    b = BalancerSettings("mycluster")
    for i in range(30):
        registry.config(b, NodeSettings(route=f"node{i:02d}", host="10.0.0.%d" % i,
                                        port=8080 + i, type="http", balancer="mycluster"),
                        [(["localhost"], ["/app%d" % j for j in range(3)])])
    site = ManagementSite(ManagementRoot(MCMPResource(MCMPHandler(registry, _Prober(),
                                                                  reactor))))
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    count = 400
    try:
        def connect():
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(20)
            s.connect(("127.0.0.1", port.getHost().port))
            for _ in range(4):  # in bursts: nothing more is read either
                s.sendall(INFO * (count // 4))
                time.sleep(0.1)
            return s

        s = await threads.deferToThread(connect)
        try:
            await until(lambda: site._channels)
            await task.deferLater(reactor, 0.5, lambda: None)
            assert _buffered(site) < 512 * 1024, _buffered(site)

            def drain():
                data = bytearray()
                while data.count(b"HTTP/1.1 200 ") < count:
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        break
                    data += chunk
                return bytes(data)

            data = await threads.deferToThread(drain)
            assert data.count(b"HTTP/1.1 200 ") == count
            assert data.count(b"Node: [1],Name: node00,") == count
        finally:
            s.close()
    finally:
        await port.stopListening()
