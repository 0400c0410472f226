"""
Access control on the management and console listeners (modcluster/access.py):
allow lists, the Host check, the rate-limited refusal log, the guard on a real
ManagementSite fed raw requests over StringTransport, command authority, and
the configuration keys.
"""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.web.resource import Resource

from modcluster.access import (
    AccessGuard,
    AllowList,
    CommandAuthority,
    HostCheck,
    RateLimitedLog,
    parse_networks,
    split_host,
)
from modcluster.config import ConfigError, parse_config
from modcluster.mcmp.resource import ManagementRoot, ManagementSite
from modcluster.tls import IdentityPolicy


def v4(host, port=5555):
    return IPv4Address("TCP", host, port)


# --- AllowList -------------------------------------------------------------------


def test_allow_list_addresses_and_networks():
    allow = AllowList(["10.0.0.0/8", "192.0.2.7", "fd00::/8", "::1"])
    assert allow.permits(v4("10.1.2.3")) and allow.permits(v4("192.0.2.7"))
    assert not allow.permits(v4("192.0.2.8")) and not allow.permits(v4("127.0.0.1"))
    assert allow.permits(IPv6Address("TCP", "fd12::1", 1))
    assert allow.permits(IPv6Address("TCP", "::1", 1))
    assert not allow.permits(IPv6Address("TCP", "fe80::1%lo", 1))
    # an IPv4 client on a dual-stack socket
    assert allow.permits(IPv6Address("TCP", "::ffff:10.0.0.1", 1))
    # UNIX sockets: file permissions decide
    assert allow.permits(UNIXAddress(b"/run/mc.sock"))


def test_empty_allow_list_permits_everyone():
    allow = AllowList()
    assert not allow and allow.permits(v4("203.0.113.9"))


@pytest.mark.parametrize("bad", ["10.0.0.1/8", "10.0.0.256", "example.com", "", "10.0.0.0/33"])
def test_bad_networks_refused(bad):
    with pytest.raises(ValueError, match="not an IP address or network"):
        parse_networks([bad])


# --- Host check ------------------------------------------------------------------


@pytest.mark.parametrize("raw, host", [
    (b"localhost", "localhost"), (b"LOCALHOST:8090", "localhost"), (b"[::1]:8090", "::1"),
    (b"127.0.0.1:1", "127.0.0.1"), (b"example.com.", "example.com"), (b"[::1", None),
    (b"\xff", None),
])
def test_split_host(raw, host):
    assert split_host(raw) == host


class FakeRequest:
    def __init__(self, host_header, local="127.0.0.1"):
        from twisted.web.http_headers import Headers

        values = host_header if isinstance(host_header, list) else [host_header]
        self.requestHeaders = Headers({b"host": values} if host_header else {})
        self._local = local

    def getHost(self):
        return v4(self._local, 8090)


def test_host_check_defaults_and_names():
    check = HostCheck(["Balancer.example.com"])
    for host in (b"localhost:8090", b"127.0.0.1", b"[::1]:8090", b"balancer.example.com"):
        assert check.accepts(FakeRequest(host)), host
    assert not check.accepts(FakeRequest(b"evil.example:8090"))
    assert not check.accepts(FakeRequest(b"rebind.attacker.example"))
    # the address the connection arrived on
    assert check.accepts(FakeRequest(b"10.0.0.5:8090", local="10.0.0.5"))
    assert not check.accepts(FakeRequest(b"10.0.0.6:8090", local="10.0.0.5"))
    # no Host at all (HTTP/1.0 scripts): accepted
    assert check.accepts(FakeRequest(None))
    assert HostCheck(["*"]).accepts(FakeRequest(b"anything.example"))
    # two Host headers: both must be acceptable
    assert not check.accepts(FakeRequest([b"localhost", b"evil.example"]))


# --- rate-limited log --------------------------------------------------------------


def test_refusal_log_is_rate_limited_per_client():
    clock = Clock()
    log = RateLimitedLog(clock, interval=60)
    with capturedLogs() as events:
        assert log.warn("a", "refused {who}", who="a")
        assert not log.warn("a", "refused {who}", who="a")
        assert not log.warn("a", "refused {who}", who="a")
        assert log.warn("b", "refused {who}", who="b")
        clock.advance(61)
        assert log.warn("a", "refused {who}", who="a")
    assert [e["who"] for e in events] == ["a", "b", "a"]
    assert events[-1]["suppressed"] == 2 and "2 more" in events[-1]["log_format"].format(
        **events[-1])
    assert all(e["log_level"] is LogLevel.warn for e in events)


def test_refusal_log_is_bounded_across_many_client_addresses():
    clock = Clock()
    log = RateLimitedLog(clock, interval=60, max_lines=5)
    with capturedLogs() as events:
        logged = [log.warn(f"10.0.0.{i}", "refused {who}", who=i) for i in range(50)]
        assert logged.count(True) == 5 and len(events) == 5
        clock.advance(61)
        assert log.warn("10.0.1.1", "refused {who}", who="late")
    assert "45 more refusal lines" in events[5]["log_format"].format(**events[5])
    assert events[-1]["who"] == "late"


def test_refusal_log_remembers_a_bounded_number_of_clients():
    log = RateLimitedLog(Clock(), max_keys=3)
    for i in range(10):
        log.warn(str(i), "x")
    assert len(log._seen) == 3


# --- the guard on a real site ----------------------------------------------------------


class Fixed(Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body

    def render(self, request):
        return self.body


def site_for(guard_kw, console=True, mcmp=True):
    root = ManagementRoot(Fixed(b"mcmp") if mcmp else None)
    if console:
        root.putChild(b"mod_cluster-manager", Fixed(b"console page"))
    return ManagementSite(AccessGuard(root, listener="test", clock=Clock(), **guard_kw))


def send(site, method="GET", path="/mod_cluster-manager", host="localhost", peer="127.0.0.1",
         local="127.0.0.1"):
    address = v4(peer)
    proto = site.buildProtocol(address)
    transport = StringTransport(hostAddress=v4(local, 8090), peerAddress=address)
    proto.makeConnection(transport)
    head = f"{method} {path} HTTP/1.1\r\n" + (f"Host: {host}\r\n" if host else "")
    proto.dataReceived((head + "Content-Length: 0\r\n\r\n").encode())
    raw = transport.value()
    status = int(raw.split(b" ", 2)[1]) if raw else None
    return status, raw.partition(b"\r\n\r\n")[2]


def test_listener_allow_list_applies_to_mcmp_and_console():
    site = site_for({"allow": AllowList(["10.0.0.0/8"])})
    with capturedLogs() as events:
        assert send(site, "CONFIG", "/", peer="192.0.2.1")[0] == 403
        assert send(site, "GET", peer="192.0.2.1")[0] == 403
    assert send(site, "CONFIG", "/", peer="10.0.0.9") == (200, b"mcmp")
    assert send(site, "GET", peer="10.0.0.9", host="10.0.0.9")[0] == 200
    # one line for that client within the minute, naming it and the listener
    (line,) = [e for e in events if e["log_level"] is LogLevel.warn]
    assert line["client"] == "192.0.2.1:5555" and line["listener"] == "test"
    assert line["code"] == 403


def test_console_allow_and_host_check_leave_mcmp_alone():
    site = site_for({"console_allow": AllowList(["127.0.0.1"]), "hosts": HostCheck()})
    # MCMP: nodes may send any Host and come from anywhere the listener accepts
    assert send(site, "STATUS", "/", host="balancer.nodes.example", peer="10.0.0.9") == \
        (200, b"mcmp")
    assert send(site, "GET", peer="10.0.0.9")[0] == 403
    assert send(site, "GET", host="rebind.attacker.example")[0] == 421
    assert send(site, "GET", host="localhost:8090") == (200, b"console page")
    assert send(site, "GET", path="/", host="evil.example")[0] == 421  # root redirect too


def test_guard_on_a_console_only_listener():
    site = site_for({"allow": AllowList(["127.0.0.0/8"]), "hosts": HostCheck(["ops.example"])},
                    mcmp=False)
    assert send(site, "GET", host="ops.example") == (200, b"console page")
    assert send(site, "GET", host="other.example")[0] == 421
    assert send(site, "GET", peer="10.1.1.1")[0] == 403
    assert send(site, "CONFIG", "/")[0] == 501  # no MCMP on the console listener


# --- command authority ------------------------------------------------------------------


def test_command_authority_rules():
    auth = CommandAuthority(IdentityPolicy({"node1": ["node1"], "all": ["*"]}), ["ops"])
    assert auth.enabled
    assert auth.refusal({"ops"}, ["node1", "node2"]) is None
    assert auth.refusal({"node1"}, ["node1"]) is None
    assert "node2" in auth.refusal({"node1"}, ["node1", "node2"])
    assert auth.refusal({"all"}, ["node7"]) is None
    assert "no client certificate" in auth.refusal(set(), ["node1"])
    assert "neither an operator nor a node" in auth.refusal({"x"}, ["node1"])
    assert auth.refusal({"node1"}, []) is not None  # an empty domain is not "all its nodes"
    free = CommandAuthority(IdentityPolicy({}), ())
    assert not free.enabled and free.refusal(set(), ["node1"]) is None


# --- configuration -------------------------------------------------------------------------

#: The Fetch standard's "bad ports" (Chrome and Firefox refuse them: ERR_UNSAFE_PORT).
BROWSER_BAD_PORTS = {
    1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95,
    101, 102, 103, 104, 109, 110, 111, 113, 115, 117, 119, 123, 135, 137, 139, 143, 161,
    179, 389, 427, 465, 512, 513, 514, 515, 526, 530, 531, 532, 540, 548, 554, 556, 563,
    587, 601, 636, 989, 990, 993, 995, 1719, 1720, 1723, 2049, 3659, 4045, 4190, 5060,
    5061, 6000, 6566, 6665, 6666, 6667, 6668, 6669, 6679, 6697, 10080,
}


def test_console_default_listener_is_browser_safe_and_not_the_mcmp_port():
    from modcluster.tap import console_url, endpoint_address

    config = parse_config("")
    (console,) = config.console.listen
    host, port = endpoint_address(console)
    assert host == "127.0.0.1" and port not in BROWSER_BAD_PORTS
    assert endpoint_address(config.manager.listen[0]) == ("127.0.0.1", 6666)
    assert 6666 in BROWSER_BAD_PORTS  # why the console had to move
    assert console_url(config) == f"http://127.0.0.1:{port}/mod_cluster-manager"


def test_console_url_follows_the_configuration():
    from modcluster.tap import console_url

    assert console_url(parse_config("[console]\nlisten = []\n")) == \
        "http://127.0.0.1:6666/mod_cluster-manager"
    assert console_url(parse_config(
        '[console]\nlisten = ["tcp6:8443:interface=\\\\:\\\\:"]\npath = "/admin"\n')) == \
        "http://[::1]:8443/admin"
    assert console_url(parse_config("[console]\nenabled = false\n")) is None


def test_access_keys_parse():
    config = parse_config("""
[manager]
allow = ["10.0.0.0/8", "::1"]
[manager.tls]
operators = ["ops"]
[console]
allow = ["127.0.0.1"]
hosts = ["balancer.example.com", "*"]
""")
    assert config.manager.allow == ("10.0.0.0/8", "::1")
    assert config.manager.tls.operators == ("ops",)
    assert config.console.hosts == ("balancer.example.com", "*")
    assert config.console.tls is None
    # an ssl: console listener is fine when the console does not take [manager.tls]
    assert parse_config('[console]\nlisten = ["ssl:8443:privateKey=k.pem"]\n').console.listen


@pytest.mark.parametrize("text, key", [
    ('[manager]\nallow = ["10.0.0.256"]\n', "manager.allow"),
    ('[console]\nallow = ["nowhere"]\n', "console.allow"),
    ('[console]\nhosts = [" "]\n', "console.hosts"),
    ('[manager.tls]\noperators = [""]\n', "manager.tls.operators"),
    ('[console]\ntls = true\n', "console.tls"),
    ('[manager.tls]\nenabled = true\ncertificate = "c"\nprivate_key = "k"\n'
     'require_client_certificate = false\n[console]\nlisten = ["ssl:8443:privateKey=k"]\n',
     "console.listen"),
])
def test_bad_access_keys(text, key):
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert e.value.key == key
