"""
The contract between the shared pool code (modcluster.proxy.pool) and the
two kinds of node connection, written down as INodeConnection: both classes
declare it and both instances provide every attribute and method of it.
"""

import pytest
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyClass, verifyObject

from modcluster.cluster.model import NodeEntry, NodeRuntime, NodeSettings
from modcluster.config import ProxyConfig
from modcluster.proxy.ajp import AJPConnection, AJPForwarder
from modcluster.proxy.http import HttpForwarder, NodeProtocol
from modcluster.proxy.interfaces import INodeConnection, IUpstream
from modcluster.proxy.pool import PoolBase


def _node(type):
    return NodeEntry(1, NodeSettings(route="n1", host="127.0.0.1", port=8009, type=type),
                     NodeRuntime())


@pytest.mark.parametrize("kind, forwarder, connection", [
    ("http", HttpForwarder, NodeProtocol),
    ("ajp", AJPForwarder, AJPConnection),
])
def test_both_node_connections_provide_the_pool_contract(kind, forwarder, connection):
    verifyClass(INodeConnection, connection)
    verifyClass(IUpstream, connection)
    fw = forwarder(MemoryReactorClock(), ProxyConfig())
    pool = fw.pool(_node(kind))
    assert isinstance(pool, PoolBase)
    conn = connection(pool)
    assert verifyObject(INodeConnection, conn)
    assert conn.pool is pool and conn.fw is fw and conn.ex is None
    assert not conn.up and not conn.closed and not conn.sync
    # what PoolBase does with it: an idle connection past its TTL beyond
    # max_idle leaves the idle list; retire() closes every idle one
    pool.conns.add(conn)
    pool.idle.append(conn)
    pool.max_idle, pool.ttl = 0, 1
    conn.idle_since = 4.5
    pool.trim_idle(5.0)
    assert pool.idle == [conn]
    conn.idle_since = 0.0
    pool.trim_idle(5.0)
    assert pool.idle == []
