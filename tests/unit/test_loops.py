"""
Forwarding-loop detection (modcluster/loops.py): which node addresses reach
which proxy listener addresses.  No listener is bound here; the local-address
test is a route lookup (a UDP socket "connected", nothing sent).
"""

from __future__ import annotations

import ipaddress
import socket

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from modcluster.loops import ProxyAddresses, node_addresses, reaches


def ips(*texts):
    return tuple(ipaddress.ip_address(t) for t in texts)


@pytest.mark.parametrize("host,expected", [
    ("127.0.0.1", ips("127.0.0.1")),
    ("10.1.2.3", ips("10.1.2.3")),
    ("[::1]", ips("::1")),
    ("::1", ips("::1")),
    ("[fe80::1]", ips("fe80::1")),  # zones: test_ipv6_zone_is_looked_up_as_the_connection_does
    ("[::ffff:127.0.0.1]", ips("127.0.0.1")),  # IPv4-mapped: the IPv4 address
    ("0.0.0.0", ips("127.0.0.1")),  # a connection to it reaches loopback
    ("[::]", ips("::1")),
    ("localhost", ips("127.0.0.1", "::1")),
    ("LocalHost.", ips("127.0.0.1", "::1")),
    ("127.1", ips("127.0.0.1")),  # as getaddrinfo reads it
    ("node1.example.com", None),  # a name: not resolved here
    ("", None),
])
def test_node_addresses(host, expected):
    assert node_addresses(host) == expected


def _own_ip():
    """A non-loopback address of this host, if it has one (a route lookup)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))
            ip = ipaddress.ip_address(s.getsockname()[0])
    except OSError:
        return None
    return None if ip.is_loopback else ip


def test_specific_listener_reached_by_its_own_address_only():
    listeners = [("127.0.0.1", 8000), ("::1", 8001)]
    assert reaches(ips("127.0.0.1"), 8000, listeners) == "127.0.0.1:8000"
    assert reaches(ips("127.0.0.1"), 8001, listeners) is None
    assert reaches(ips("127.0.0.2"), 8000, listeners) is None  # another loopback address
    assert reaches(ips("::1"), 8001, listeners) == "[::1]:8001"
    assert reaches(ips("::1", "127.0.0.1"), 8001, listeners) == "[::1]:8001"
    assert reaches(ips("10.9.9.9"), 8000, listeners) is None


def test_wildcard_listener_reached_by_any_local_address():
    v4 = [("0.0.0.0", 8000)]
    v6 = [("::", 8000)]
    for address in ("127.0.0.1", "127.0.0.2"):
        assert reaches(ips(address), 8000, v4) == "0.0.0.0:8000"
        assert reaches(ips(address), 8000, v6) == "[::]:8000"  # dual stack
    assert reaches(ips("::1"), 8000, v6) == "[::]:8000"
    assert reaches(ips("::1"), 8000, v4) is None  # an IPv4 listener takes no IPv6
    assert reaches(ips("127.0.0.1"), 8080, v4) is None
    # TEST-NET-3 (RFC 5737): never an address of this host
    assert reaches(ips("203.0.113.7"), 8000, v4 + v6) is None
    own = _own_ip()
    if own is not None:
        assert reaches((own,), 8000, v4) == "0.0.0.0:8000"


class _Port:
    def __init__(self, address, connected=True):
        self.address = address
        self.connected = connected

    def getHost(self):
        return self.address


class _Endpoint:
    def __init__(self, port):
        self.port = port

    def listen(self, factory):
        from twisted.internet.defer import succeed

        return succeed(self.port)


def test_proxy_addresses_from_listening_ports_and_sources():
    own = ProxyAddresses()
    ports = [_Port(IPv4Address("TCP", "127.0.0.1", 41000)),
             _Port(IPv6Address("TCP", "::", 41001)),
             _Port(UNIXAddress(b"/run/proxy.sock"))]
    got = [own.record(_Endpoint(p)).listen(None) for p in ports]
    assert [d.result for d in got] == ports  # the port is passed on
    own.add_source(lambda: [("0.0.0.0", 42000)])
    assert own.bound() == [("127.0.0.1", 41000), ("::", 41001), ("0.0.0.0", 42000)]
    assert own.reached_by("127.0.0.1", 41000) == "127.0.0.1:41000"
    assert own.reached_by("localhost", 41001) == "[::]:41001"
    assert own.reached_by("[::1]", 42000) is None
    assert own.reached_by("127.0.0.3", 42000) == "0.0.0.0:42000"
    assert own.reached_by("node.example.com", 41000) is None
    ports[0].connected = False  # stopped listening: forgotten
    assert own.reached_by("127.0.0.1", 41000) is None
    assert own.bound() == [("::", 41001), ("0.0.0.0", 42000)]


# What the node connection (modcluster.proxy.pool.node_endpoint) connects to
# decides: checked against real connections in
# tests/integration/test_forwarding_loop.py.
@pytest.mark.parametrize("host", [
    "127.1", "127.0.1", "2130706433", "0x7f.1", "0x7F.0.0.1", "0x7f000001", "0177.0.0.1",
    "017700000001", "127.000.000.001", "127.0.0.01",  # getaddrinfo reads them as 127.0.0.1
    "::ffff:127.0.0.1", "[::ffff:127.0.0.1]", "::ffff:7f00:1",  # IPv4-mapped
    "[127.0.0.1]",  # node_endpoint takes the brackets off any host
    "127\u30020\u30020\u30021",  # ideographic full stops: IDNA dots, 127.0.0.1
    "0", "0.0.0.0", "[::ffff:0.0.0.0]",  # unspecified: a connection reaches loopback
])
def test_ipv4_loopback_forms(host):
    assert node_addresses(host) == ips("127.0.0.1")


@pytest.mark.parametrize("host", ["::1", "[::1]", "[0:0:0:0:0:0:0:1]", "::", "[::]"])
def test_ipv6_loopback_forms(host):
    assert node_addresses(host) == ips("::1")


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "locaLhost", "LOCALHOST.",
                                  "[localhost]"])
def test_localhost_forms(host):
    assert node_addresses(host) == ips("127.0.0.1", "::1")


@pytest.mark.parametrize("host", ["localhost\u3002", "LOCALHOST\uff0e", "localhost\uff61",
                                  "[localhost\u3002]"])
def test_localhost_with_a_root_dot_of_another_script(host):
    # HostnameEndpoint resolves these as "localhost." (the IDNA codec reads
    # the ideographic, fullwidth and halfwidth full stops as dots), so they
    # reach what "localhost." reaches
    from twisted.internet.endpoints import HostnameEndpoint

    invalid, name, _ = HostnameEndpoint._hostAsBytesAndText(host.strip("[]"))
    assert not invalid and name.lower() == b"localhost."
    assert node_addresses(host) == ips("127.0.0.1", "::1")


@pytest.mark.parametrize("host", [
    # not valid IDNA: HostnameEndpoint refuses them, the connection never starts
    "127.0.0.1%lo", "127.0.0.1%25lo", "127.0.0.1 ", " 127.0.0.1", "127.0.0.1\t",
    "localhost localhost", "\uff11\uff12\uff17.\uff10.\uff10.\uff11", "127.0.0.\uff11",
    "[::\uff11]", "\uff2c\uff2f\uff23\uff21\uff2c\uff28\uff2f\uff33\uff34", "\ud800",
    "a" * 300, "1" * 100_000, "[]", "[", "]", "%lo",
    # names: not resolved here (localhost6 and ip6-localhost exist only where
    # /etc/hosts says so), nor a dotted quad with a root dot or five parts
    "localhost6", "ip6-localhost", "foo.localhost", "127.0.0.1.", "1.2.3.4.5", "x",
])
def test_hosts_without_a_loopback_connection(host):
    assert node_addresses(host) is None


def test_ipv6_zone_is_looked_up_as_the_connection_does():
    # node_endpoint gives "::1%<zone>" to getaddrinfo as it is: an interface
    # that does not exist fails the connection, so nothing is reached
    assert node_addresses("::1%no-such-interface") is None
    assert node_addresses("[::1%no-such-interface]") is None
    try:
        socket.getaddrinfo("::1%lo", None, flags=socket.AI_NUMERICHOST)
    except OSError:
        assert node_addresses("::1%lo") is None  # (sandboxes without "lo" scopes)
    else:
        assert node_addresses("::1%lo") == ips("::1")
    # a link-local address is not this host's unless an interface has it
    assert node_addresses("[fe80::1%no-such-interface]") is None


def test_addresses_near_loopback_do_not_reach_a_specific_listener():
    listeners = [("127.0.0.1", 8000), ("::1", 8000)]
    for host in ("127.0.0.2", "127.255.255.255", "[::127.0.0.1]", "::2"):
        assert reaches(node_addresses(host), 8000, listeners) is None, host


@pytest.mark.parametrize("port", [0, -1, 65536, 2**70])
def test_ports_no_listener_has(port):
    # (a connection to port 0 is refused: not even a listener whose source
    # says 0, one not bound yet, is reached)
    own = ProxyAddresses()
    own.add_source(lambda: [("127.0.0.1", 8000), ("0.0.0.0", 8001), ("::", 0)])
    assert own.reached_by("127.0.0.1", port) is None


def test_a_huge_host_is_answered_at_once():
    import time

    own = ProxyAddresses()
    own.add_source(lambda: [("0.0.0.0", 8000)])
    started = time.monotonic()
    for host in ("a" * 10**6, "1." * 500_000, "[" + ":" * 10**6 + "]", "\u30021" * 10**5):
        assert own.reached_by(host, 8000) is None
    assert time.monotonic() - started < 1.0


# -- the data plane's check of node connections (LoopGuard, proxy/pool.py) --------------


def test_loop_guard_compares_the_resolved_peer_with_the_listeners():
    from modcluster.loops import LoopGuard

    listeners = [("127.0.0.1", 8000)]
    calls = []

    def bound():
        calls.append(1)
        return list(listeners)

    guard = LoopGuard(bound, lambda *a: None)
    proxy = ("127.0.0.1:8000", "proxy")
    assert guard.reached(IPv4Address("TCP", "127.0.0.1", 8000)) == proxy
    assert guard.reached(IPv4Address("TCP", "127.0.0.1", 8001)) is None
    assert guard.reached(IPv4Address("TCP", "127.0.0.2", 8000)) is None
    assert guard.reached(IPv6Address("TCP", "::ffff:127.0.0.1", 8000)) == proxy
    assert guard.reached(UNIXAddress(b"/tmp/x")) is None
    assert guard.reached(None) is None
    # remembered while the listeners are the same, asked again when they change
    assert guard.reached(IPv4Address("TCP", "127.0.0.1", 8000)) == proxy
    listeners[:] = [("127.0.0.1", 9000)]
    assert guard.reached(IPv4Address("TCP", "127.0.0.1", 8000)) is None
    listeners[:] = [("0.0.0.0", 8000)]  # a wildcard listener: any local address
    assert guard.reached(IPv4Address("TCP", "127.0.0.5", 8000)) == ("0.0.0.0:8000", "proxy")
    assert guard.reached(IPv4Address("TCP", "192.0.2.1", 8000)) is None


def test_loop_guard_compares_the_resolved_peer_with_the_other_listeners_too():
    """
    A node named by a host name that resolves to the management or console
    listener: not a loop, but every proxy client would reach that listener
    through it, from this host's address, which its allow list admits.
    """
    from modcluster.loops import LoopGuard

    others = [("127.0.0.1", 6666, "management"), ("0.0.0.0", 8090, "console")]
    guard = LoopGuard(lambda: [("127.0.0.1", 8000)], lambda *a: None, lambda: list(others))
    assert guard.reached(IPv4Address("TCP", "127.0.0.1", 8000)) == ("127.0.0.1:8000", "proxy")
    assert guard.reached(IPv4Address("TCP", "127.0.0.1", 6666)) == ("127.0.0.1:6666",
                                                                    "management")
    assert guard.reached(IPv6Address("TCP", "::ffff:127.0.0.1", 6666)) == ("127.0.0.1:6666",
                                                                            "management")
    assert guard.reached(IPv4Address("TCP", "127.0.0.9", 8090)) == ("0.0.0.0:8090", "console")
    assert guard.reached(IPv4Address("TCP", "127.0.0.2", 6666)) is None
    assert guard.reached(IPv4Address("TCP", "192.0.2.1", 8090)) is None
    others[:] = []  # stopped listening: asked again
    assert guard.reached(IPv4Address("TCP", "127.0.0.1", 6666)) is None


def test_proxy_addresses_give_the_other_listeners_and_say_when_one_listens():
    own = ProxyAddresses()
    calls = []
    own.on_listening(lambda: calls.append(own.others()))
    management = _Port(IPv4Address("TCP", "127.0.0.1", 6666))
    console = _Port(IPv4Address("TCP", "0.0.0.0", 8090))
    own.record(_Endpoint(_Port(IPv4Address("TCP", "127.0.0.1", 41000)))).listen(None)
    own.record(_Endpoint(management), "management").listen(None)
    own.record(_Endpoint(console), "console").listen(None)
    assert calls == [[], [("127.0.0.1", 6666, "management")],
                     [("127.0.0.1", 6666, "management"), ("0.0.0.0", 8090, "console")]]
    management.connected = False
    assert own.others() == [("0.0.0.0", 8090, "console")]


class _Pool:
    def __init__(self, settings):
        self.settings = settings
        self.worker = f"http://{settings.host}:{settings.port}"
        self.lost_conns = []

    def lost(self, conn):
        self.lost_conns.append(conn)


class _Conn:
    """What connect_node and connect_failed need of a node connection."""

    def __init__(self, fw, pool):
        self.fw = fw
        self.pool = pool
        self.sync = False
        self.closed = False
        self.ex = self
        self.failed = []

    def _connectFailed(self, failure):
        from modcluster.proxy.pool import connect_failed

        connect_failed(self, failure)

    def responseFailed(self, error):  # (the exchange)
        self.failed.append(error)


def test_a_node_connection_reaching_a_proxy_listener_sends_nothing():
    """
    _OneShot (the endpoint's factory for named and TLS nodes): a connection
    that reached a proxy listener gets a _Looping protocol, which aborts it
    before the node protocol ever connects, reports the node and fails the
    attempt as a connect failure (failover).
    """
    from twisted.internet.testing import StringTransport
    from twisted.internet.protocol import Protocol

    from modcluster.cluster.model import NodeSettings
    from modcluster.loops import LoopGuard
    from modcluster.proxy.interfaces import CONNECT
    from modcluster.proxy.pool import PooledForwarder, _OneShot

    reports = []

    class Fw:
        loop_guard = LoopGuard(lambda: [("127.0.0.1", 8000)],
                               lambda *found: reports.append(found))

    assert PooledForwarder.loop_guard is None  # off unless the factory sets one
    proto = Protocol()
    settings = NodeSettings(route="loop", host="proxy.example", port=8000, type="http")
    conn = _Conn(Fw, _Pool(settings))
    factory = _OneShot(proto, conn)
    p = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8000))
    assert p is not proto
    t = StringTransport()
    p.makeConnection(t)
    assert t.disconnected or t.disconnecting  # aborted
    assert t.value() == b""  # nothing sent
    assert not proto.connected
    assert reports == [("loop", "proxy.example:8000", "127.0.0.1:8000", "127.0.0.1:8000",
                        "proxy")]
    [error] = conn.failed
    assert error.kind == CONNECT and "forwarding loop" in error.message
    assert conn.closed and conn.pool.lost_conns == [conn]
    # another address: the node protocol itself
    conn = _Conn(Fw, _Pool(settings))
    assert _OneShot(proto, conn).buildProtocol(IPv4Address("TCP", "127.0.0.1", 8001)) is proto
    assert _OneShot(proto).buildProtocol(IPv4Address("TCP", "127.0.0.1", 8000)) is proto


def test_a_node_connection_reaching_the_management_listener_sends_nothing():
    from twisted.internet.protocol import Protocol
    from twisted.internet.testing import StringTransport

    from modcluster.cluster.model import NodeSettings
    from modcluster.loops import LoopGuard
    from modcluster.proxy.interfaces import CONNECT
    from modcluster.proxy.pool import _OneShot

    reports = []

    class Fw:
        loop_guard = LoopGuard(lambda: [("127.0.0.1", 8000)],
                               lambda *found: reports.append(found),
                               lambda: [("127.0.0.1", 6666, "management")])

    proto = Protocol()
    settings = NodeSettings(route="own", host="balancer.example", port=6666, type="http")
    conn = _Conn(Fw, _Pool(settings))
    p = _OneShot(proto, conn).buildProtocol(IPv4Address("TCP", "127.0.0.1", 6666))
    assert p is not proto
    t = StringTransport()
    p.makeConnection(t)
    assert t.disconnected or t.disconnecting
    assert t.value() == b""
    assert reports == [("own", "balancer.example:6666", "127.0.0.1:6666", "127.0.0.1:6666",
                        "management")]
    [error] = conn.failed
    assert error.kind == CONNECT and "not a node" in error.message
    assert "management listener 127.0.0.1:6666" in error.message


def test_own_listener_names_the_kind_proxy_first():
    own = ProxyAddresses()
    proxy = _Port(IPv4Address("TCP", "127.0.0.1", 41000))
    management = _Port(IPv4Address("TCP", "127.0.0.1", 6666))
    console = _Port(IPv4Address("TCP", "0.0.0.0", 8090))
    own.record(_Endpoint(proxy)).listen(None)
    own.record(_Endpoint(management), "management").listen(None)
    own.record(_Endpoint(console), "console").listen(None)
    assert own.own_listener("127.0.0.1", 41000) == ("127.0.0.1:41000", "proxy")
    assert own.own_listener("localhost", 6666) == ("127.0.0.1:6666", "management")
    assert own.own_listener("127.0.0.5", 8090) == ("0.0.0.0:8090", "console")
    assert own.own_listener("127.0.0.2", 6666) is None
    assert own.own_listener("node.example.com", 6666) is None
    # only proxy listeners are forwarding loops (bound, reached_by)
    assert own.bound() == [("127.0.0.1", 41000)]
    assert own.reached_by("127.0.0.1", 6666) is None
    management.connected = False  # stopped listening: forgotten
    assert own.own_listener("127.0.0.1", 6666) is None
