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
    ("[fe80::1%eth0]", ips("fe80::1")),
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
