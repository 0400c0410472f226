"""
Unit tests for L{modcluster.advertise.codec} and L{modcluster.advertise.service}: digest, datagram codec, directive parsers and
the L{Advertiser} service driven by a fake multicast reactor and L{task.Clock}.
"""

from __future__ import annotations

import calendar
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.application.service import IService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from zope.interface.verify import verifyObject

from modcluster.advertise.codec import (
    MAX_DATAGRAM_SIZE,
    Advertisement,
    AdvertiseError,
    DatagramTooLarge,
    DigestMismatch,
    MalformedDatagram,
    ManagerInfo,
    compute_digest,
    format_datagram,
    format_host_port,
    format_http_date,
    parse_advertised_url,
    parse_bind_address,
    parse_datagram,
    parse_frequency,
    parse_group,
    security_salt,
    split_host_port,
    verify_datagram,
)
from modcluster.advertise.service import Advertiser

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "tomcat10-mcmp-advertise-trace.txt"

# Reference advertise.md section 2 / 3.1.
REF_DATE = "Tue, 21 Jul 2026 10:05:00 GMT"
REF_SERVER = "1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d"
REF_DATAGRAM = (
    b"HTTP/1.0 200 OK\r\n"
    b"Date: Tue, 21 Jul 2026 10:05:00 GMT\r\n"
    b"Sequence: 1\r\n"
    b"Digest: 643ffab688c0b9dfa2c31786c0d9f54f\r\n"
    b"Server: 1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d\r\n"
    b"X-Manager-Address: 192.168.1.5:6666\r\n"
    b"X-Manager-Url: /1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d\r\n"
    b"X-Manager-Protocol: http\r\n"
    b"X-Manager-Host: proxy1.example.com\r\n"
    b"\r\n"
)
REF_MANAGER = ManagerInfo(address="192.168.1.5:6666", url="/" + REF_SERVER,
                          protocol="http", host="proxy1.example.com")


# --- digest -----------------------------------------------------------------


def test_digest_worked_example_with_key():
    """The reference's worked example with key 'secret'."""
    assert security_salt("secret").hex() == "5ebe2294ecd0e0f08eab7690d2a6ee69"
    assert compute_digest(REF_DATE, 1, REF_SERVER, "secret") == "643ffab688c0b9dfa2c31786c0d9f54f"
    assert compute_digest(REF_DATE, "1", REF_SERVER, b"secret") == "643ffab688c0b9dfa2c31786c0d9f54f"


def test_digest_worked_example_without_key():
    """No key: the 16 zero bytes salt."""
    assert security_salt(None) == bytes(16)
    assert compute_digest(REF_DATE, 1, REF_SERVER, None) == "2609ab9b67cccb361fd8ac62547c1302"


def test_empty_key_is_a_key():
    """An empty key hashes to MD5(''), not to the zero salt (httpd and Java agree)."""
    assert security_salt("") == bytes.fromhex("d41d8cd98f00b204e9800998ecf8427e")
    assert compute_digest(REF_DATE, 1, REF_SERVER, "") != compute_digest(REF_DATE, 1, REF_SERVER, None)


def test_non_ascii_key_refused():
    """The Java listener mangles non-ASCII keys, so they are refused."""
    with pytest.raises(AdvertiseError, match="ASCII"):
        security_salt("sécret")


def test_http_date():
    """RFC 1123 GMT with zero-padded day, English names."""
    t = calendar.timegm((2026, 7, 21, 10, 5, 0))
    assert format_http_date(t) == REF_DATE
    assert format_http_date(calendar.timegm((2026, 11, 2, 2, 5, 5))) == "Mon, 02 Nov 2026 02:05:05 GMT"
    assert format_http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


# --- format -----------------------------------------------------------------


def test_format_reference_datagram():
    """The reference datagram of section 2, byte for byte (310 bytes)."""
    data = format_datagram(date=REF_DATE, sequence=1, server=REF_SERVER, key="secret",
                           manager=REF_MANAGER)
    assert data == REF_DATAGRAM
    assert len(data) == 310


def _fixture_datagrams():
    text = FIXTURE.read_bytes()
    blocks = re.findall(
        rb"=== (ADV\d+) [^\n]*\n--- datagram to ([0-9.]+):(\d+) \((\d+) bytes\) ---\n(.*?)--- end ---\n",
        text, re.S)
    assert len(blocks) == 10
    for name, _group, _port, size, body in blocks:
        assert len(body) == int(size), name
        yield name.decode(), body


def test_format_matches_fixture_trace():
    """
    Every valid datagram of the Tomcat trace (ADV2..ADV10) is reproduced byte for byte
    from its Date, Sequence and Server with key 'secret'.
    """
    checked = 0
    for name, body in _fixture_datagrams():
        if name == "ADV1":
            continue
        adv = parse_datagram(body)
        manager = ManagerInfo(address="127.0.0.1:26666", url="/" + adv.server,
                              protocol="http", host="localhost")
        assert format_datagram(date=adv.date, sequence=adv.sequence, server=adv.server,
                               key="secret", manager=manager) == body, name
        checked += 1
    assert checked == 9


def test_fixture_wrong_digest_is_refused():
    """ADV1 (the decoy with a wrong digest) does not verify; the others do."""
    for name, body in _fixture_datagrams():
        if name == "ADV1":
            with pytest.raises(DigestMismatch):
                verify_datagram(body, "secret")
        else:
            adv = verify_datagram(body, "secret")
            assert adv.manager_socket_address() == ("127.0.0.1", 26666)
            with pytest.raises(DigestMismatch):
                verify_datagram(body, None)


def test_format_status_datagram():
    """A STATUS datagram (shutdown) has no X-Manager-* lines."""
    data = format_datagram(date=REF_DATE, sequence=7, server=REF_SERVER, key=None, status=410)
    digest = compute_digest(REF_DATE, 7, REF_SERVER, None)
    assert data == (
        b"HTTP/1.0 410 Gone\r\nDate: " + REF_DATE.encode() + b"\r\nSequence: 7\r\n"
        b"Digest: " + digest.encode() + b"\r\nServer: " + REF_SERVER.encode() + b"\r\n\r\n"
    )
    assert format_datagram(date=REF_DATE, sequence=7, server=REF_SERVER, key=None,
                           status=403).startswith(b"HTTP/1.0 403 Forbidden\r\n")


def test_format_too_large():
    """More than 512 bytes raises DatagramTooLarge."""
    manager = ManagerInfo(address="127.0.0.1:6666", url="/" + "x" * 400, host="h")
    with pytest.raises(DatagramTooLarge) as e:
        format_datagram(date=REF_DATE, sequence=1, server=REF_SERVER, key=None, manager=manager)
    assert e.value.size > MAX_DATAGRAM_SIZE
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("kwargs", [
    {"date": "Tue\r\nX-Evil: 1"},
    {"server": "a b"},
    {"server": ""},
    {"sequence": -1},
    {"sequence": 2**63},
    {"status": 99},
    {"status": True},
])
def test_format_refuses_bad_values(kwargs):
    """Values that would break the header framing are refused."""
    args = dict(date=REF_DATE, sequence=1, server=REF_SERVER, key=None)
    args.update(kwargs)
    with pytest.raises(AdvertiseError):
        format_datagram(**args)


def test_manager_info_validation():
    """CR/LF, spaces in the address and unknown protocols are refused."""
    with pytest.raises(AdvertiseError):
        ManagerInfo(address="1.2.3.4:1 x", url="/")
    with pytest.raises(AdvertiseError):
        ManagerInfo(address="1.2.3.4:1", url="/\r\nX: y")
    with pytest.raises(AdvertiseError):
        ManagerInfo(address="1.2.3.4:1", url="/", protocol="ftp")


# --- parse ------------------------------------------------------------------


def test_parse_reference_datagram():
    """Parsing gives back every field."""
    adv = verify_datagram(REF_DATAGRAM, "secret")
    assert adv.status == 200 and adv.reason == "OK"
    assert adv.date == REF_DATE and adv.sequence == 1 and adv.server == REF_SERVER
    assert adv.digest == "643ffab688c0b9dfa2c31786c0d9f54f"
    assert adv.manager_address == "192.168.1.5:6666"
    assert adv.manager_url == "/" + REF_SERVER
    assert adv.manager_protocol == "http"
    assert adv.manager_host == "proxy1.example.com"
    assert adv.manager_socket_address() == ("192.168.1.5", 6666)


def test_parse_without_final_empty_line_and_uppercase_digest():
    """Undertow omits the final empty line; hex case does not matter."""
    data = REF_DATAGRAM[:-2].replace(b"643ffab688c0b9dfa2c31786c0d9f54f",
                                     b"643FFAB688C0B9DFA2C31786C0D9F54F")
    assert verify_datagram(data, "secret").server == REF_SERVER


def test_parse_headers_before_server_ignored():
    """As in Java, headers before Server are not kept."""
    data = (b"HTTP/1.0 200 OK\r\nX-Manager-Address: 10.0.0.1:1\r\nDate: d\r\nSequence: 3\r\n"
            b"Digest: " + compute_digest("d", 3, "s1", None).encode() + b"\r\nServer: s1\r\n"
            b"X-Manager-Url: /u\r\n\r\n")
    adv = verify_datagram(data, None)
    assert adv.manager_address is None
    assert adv.manager_url == "/u"
    assert adv.manager_socket_address() is None


def test_parse_leading_zero_sequence_digest_uses_text():
    """The digest covers the Sequence text exactly as received."""
    digest = compute_digest("d", "007", "s1", "k")
    data = f"HTTP/1.0 200 OK\r\nDate: d\r\nSequence: 007\r\nDigest: {digest}\r\nServer: s1\r\n\r\n"
    adv = verify_datagram(data.encode(), "k")
    assert adv.sequence == 7


def test_ipv6_manager_address():
    """[v6]:port and a missing port (0, as Utils.parseSocketAddress)."""
    m = ManagerInfo(address="[2001:db8::5]:6666", url="/")
    adv = parse_datagram(format_datagram(date="d", sequence=1, server="s", key=None, manager=m))
    assert adv.manager_socket_address() == ("2001:db8::5", 6666)
    m = ManagerInfo(address="proxy", url="/")
    adv = parse_datagram(format_datagram(date="d", sequence=1, server="s", key=None, manager=m))
    assert adv.manager_socket_address() == ("proxy", 0)


@pytest.mark.parametrize("data, message", [
    (b"", "HTTP/1."),
    (b"GET / HTTP/1.0\r\n\r\n", "HTTP/1."),
    (b"HTTP/1.0 200\r\n\r\n", "status line"),
    (b"HTTP/1.0 abc OK\r\n\r\n", "status code"),
    (b"HTTP/1.0 099 OK\r\n\r\n", "status code"),
    (b"HTTP/1.0 200 OK\r\nDate: d\r\nSequence: 1\r\nServer: s\r\n\r\n", "Digest"),
    (b"HTTP/1.0 200 OK\r\nDate: d\r\nSequence: 1\r\nDigest: 00\r\n\r\n", "Server"),
    (b"HTTP/1.0 200 OK\r\nDate: d\r\nSequence: x\r\nDigest: " + b"0" * 32 + b"\r\nServer: s\r\n",
     "Sequence"),
    (b"HTTP/1.0 200 OK\r\nDate: d\r\nSequence: 1\r\nDigest: " + b"z" * 32 + b"\r\nServer: s\r\n",
     "Digest"),
    (b"HTTP/1.0 200 OK\r\n" + b"X" * 5000, "too large"),
])
def test_parse_malformed(data, message):
    """Each malformation gives a MalformedDatagram naming the problem."""
    with pytest.raises(MalformedDatagram, match=message):
        parse_datagram(data)


def test_parse_refuses_non_bytes():
    with pytest.raises(MalformedDatagram):
        parse_datagram("HTTP/1.0 200 OK")  # type: ignore[arg-type]


@given(st.binary(max_size=700))
def test_parse_never_crashes_on_garbage(data):
    """Arbitrary bytes: a value or MalformedDatagram, nothing else."""
    try:
        adv = parse_datagram(data)
    except MalformedDatagram:
        return
    assert isinstance(adv, Advertisement)
    adv.verify(None)
    adv.manager_socket_address()


_line_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@given(
    prefix=st.sampled_from([b"HTTP/1.0 200 OK\r\n", b"HTTP/1.1 403 Forbidden\r\n", b"HTTP/1.0 "]),
    lines=st.lists(st.tuples(st.sampled_from(["Date", "Sequence", "Digest", "Server",
                                              "X-Manager-Address", "Other"]), _line_text),
                   max_size=8),
    tail=st.binary(max_size=30),
)
def test_parse_never_crashes_on_near_datagrams(prefix, lines, tail):
    """Header-shaped input, too: only MalformedDatagram may escape."""
    data = prefix + b"".join(f"{n}: {v}\r\n".encode() for n, v in lines) + tail
    try:
        adv = parse_datagram(data)
    except MalformedDatagram:
        return
    adv.verify("k")
    adv.manager_socket_address()


@given(
    date=_line_text,
    sequence=st.integers(0, 2**63 - 1),
    server=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40),
    key=st.one_of(st.none(), st.text(st.characters(max_codepoint=0x7E), max_size=20)),
    status=st.sampled_from([200, 403, 410, 503]),
    with_manager=st.booleans(),
    port=st.integers(1, 65535),
)
def test_format_parse_round_trip(date, sequence, server, key, status, with_manager, port):
    """format -> parse gives the same values and verifies with the same key only."""
    manager = ManagerInfo(address=f"[::1]:{port}", url="/u", protocol="https", host="h") \
        if with_manager else None
    data = format_datagram(date=date, sequence=sequence, server=server, key=key,
                           status=status, manager=manager)
    adv = verify_datagram(data, key)
    assert (adv.date, adv.sequence, adv.server, adv.status) == (date, sequence, server, status)
    if with_manager:
        assert adv.manager_socket_address() == ("::1", port)
        assert adv.manager_protocol == "https"
    else:
        assert adv.headers == ()
    other = "other" if key is None else None
    with pytest.raises(DigestMismatch):
        verify_datagram(data, other)


# --- directive values ---------------------------------------------------------


@pytest.mark.parametrize("value, seconds", [
    ("10", 10.0),
    ("5.500", 5.5),
    ("5,500", 5.5),
    ("5.5", 5.005),
    ("5,5", 5.005),
    ("0.250", 0.25),
    ("1.5000", 6.0),
    (" 3 ", 3.0),
    (2, 2.0),
    (0.5, 0.5),
])
def test_parse_frequency(value, seconds):
    """seconds[.n] where n is milliseconds (httpd's atoi arithmetic)."""
    assert parse_frequency(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["0", "0.0", "0,000", "", "abc", "-1", "5.", ".5", "5.5.5",
                                   "5s", "1e3", 0, -2, float("nan"), float("inf"), True, None])
def test_parse_frequency_rejects(value):
    with pytest.raises(ValueError) as e:
        parse_frequency(value)
    assert "frequency" in str(e.value)


def test_parse_group():
    assert parse_group("224.0.1.105:23364") == ("224.0.1.105", 23364)
    assert parse_group("224.0.1.105") == ("224.0.1.105", 23364)
    assert parse_group("239.1.2.3:5000") == ("239.1.2.3", 5000)
    assert parse_group("[ff05::105]:23364") == ("ff05::105", 23364)
    assert parse_group("[FF05::105]") == ("ff05::105", 23364)
    assert parse_group("ff05::105") == ("ff05::105", 23364)


@pytest.mark.parametrize("value, message", [
    ("127.0.0.1:23364", "not a multicast"),
    ("localhost:23364", "not an IP address"),
    ("224.0.1.105:70000", "port"),
    ("224.0.1.105:x", "port"),
    ("224.0.1.105:0", "port 0"),
    ("[ff05::105", "]"),
    ("", "no host"),
])
def test_parse_group_rejects(value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_group(value)


def test_parse_bind_address():
    assert parse_bind_address("0.0.0.0:23364") == ("0.0.0.0", 23364)
    assert parse_bind_address("127.0.0.1") == ("127.0.0.1", 23364)
    assert parse_bind_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_bind_address("[::1]:5") == ("::1", 5)
    with pytest.raises(ValueError):
        parse_bind_address("example.com:1")


def test_parse_advertised_url():
    assert parse_advertised_url("https://10.0.0.5:6666") == ("https", "10.0.0.5", 6666)
    assert parse_advertised_url("proxy1:6666") == ("http", "proxy1", 6666)
    assert parse_advertised_url("http://[2001:db8::5]:6666/") == ("http", "2001:db8::5", 6666)
    for bad in ("ftp://a:1", "proxy1", "http://a:b", ""):
        with pytest.raises(ValueError):
            parse_advertised_url(bad)


def test_split_and_format_host_port():
    assert split_host_port("a:1", 9) == ("a", 1)
    assert split_host_port("a", 9) == ("a", 9)
    assert split_host_port("[::1]", 9) == ("::1", 9)
    assert format_host_port("::1", 6666) == "[::1]:6666"
    assert format_host_port("10.0.0.1", 6666) == "10.0.0.1:6666"
    with pytest.raises(ValueError):
        split_host_port("[::1]x", 9)


# --- the service --------------------------------------------------------------


class FakeMulticastPort:
    """The IMulticastTransport/IListeningPort methods the Advertiser uses, recorded."""

    def __init__(self, reactor, port, protocol, interface, listenMultiple):
        self.reactor = reactor
        self.port = port
        self.protocol = protocol
        self.interface = interface
        self.listenMultiple = listenMultiple
        self.ttl = None
        self.loopback = None
        self.outgoing = None
        self.written: list[tuple[bytes, tuple[str, int], float]] = []
        self.stopped = False
        self.fail_writes: Exception | None = None
        self.interface_result: Deferred | None = None

    def setTTL(self, ttl):
        self.ttl = ttl

    def setLoopbackMode(self, mode):
        self.loopback = bool(mode)

    def setOutgoingInterface(self, addr):
        self.outgoing = addr
        if self.reactor.interface_deferred is not None:
            return self.reactor.interface_deferred
        return succeed(1)

    def write(self, data, addr):
        if self.fail_writes is not None:
            raise self.fail_writes
        assert self.outgoing is not None, "sent before the outgoing interface was set"
        self.written.append((data, addr, self.reactor.seconds()))

    def stopListening(self):
        self.stopped = True
        self.protocol.doStop()
        return succeed(None)


class FakeMulticastReactor(Clock):
    """task.Clock plus a recording listenMulticast."""

    def __init__(self):
        super().__init__()
        self.ports: list[FakeMulticastPort] = []
        self.listen_error: Exception | None = None
        self.interface_deferred: Deferred | None = None

    def listenMulticast(self, port, protocol, interface="", maxPacketSize=8192,
                        listenMultiple=False):
        if self.listen_error is not None:
            raise self.listen_error
        p = FakeMulticastPort(self, port, protocol, interface, listenMultiple)
        protocol.makeConnection(p)
        self.ports.append(p)
        return p


@pytest.fixture
def reactor():
    r = FakeMulticastReactor()
    r.advance(calendar.timegm((2026, 7, 21, 10, 5, 0)))
    return r


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def _text(event):
    from twisted.logger import formatEvent
    return formatEvent(event)


def _make(reactor, **kw):
    args = dict(group=("224.0.1.105", 23364), bind_address=("127.0.0.1", 0),
                interface="127.0.0.1", ttl=0, frequency=10.0, security_key="secret",
                server_id=REF_SERVER)
    args.update(kw)
    return Advertiser(reactor, "127.0.0.1:6666", **args)


def test_advertiser_is_a_service(reactor):
    verifyObject(IService, _make(reactor))


def test_start_configures_socket_and_sends_first_datagram(reactor, logged):
    """Bind, TTL, loopback, interface, then datagram 1 at once; the start is logged."""
    adv = _make(reactor, ttl=3)
    adv.startService()
    (port,) = reactor.ports
    assert (port.port, port.interface, port.listenMultiple) == (0, "127.0.0.1", True)
    assert port.ttl == 3 and port.loopback is True and port.outgoing == "127.0.0.1"
    assert len(port.written) == 1
    data, addr, when = port.written[0]
    assert addr == ("224.0.1.105", 23364)
    assert data == (b"HTTP/1.0 200 OK\r\nDate: Tue, 21 Jul 2026 10:05:00 GMT\r\nSequence: 1\r\n"
                    b"Digest: 643ffab688c0b9dfa2c31786c0d9f54f\r\n"
                    b"Server: 1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d\r\n"
                    b"X-Manager-Address: 127.0.0.1:6666\r\n"
                    b"X-Manager-Url: /1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d\r\n"
                    b"X-Manager-Protocol: http\r\nX-Manager-Host: 127.0.0.1\r\n\r\n")
    start = [_text(e) for e in logged if "Advertising" in _text(e)]
    assert len(start) == 1
    for needle in ("127.0.0.1:6666", "224.0.1.105:23364", "interface 127.0.0.1", "TTL 3",
                   "every 10.0 s", REF_SERVER, "with a security key"):
        assert needle in start[0]


def test_cadence_with_clock_pump(reactor):
    """One datagram per period, Sequence 1, 2, 3..., fresh Date each time."""
    adv = _make(reactor, frequency=parse_frequency("5.500"))
    adv.startService()
    port = reactor.ports[0]
    reactor.pump([0.5] * 43)  # 21.5 s in small steps
    times = [w[2] - port.written[0][2] for w in port.written]
    assert times == pytest.approx([0.0, 5.5, 11.0, 16.5])
    seqs = [parse_datagram(w[0]).sequence for w in port.written]
    assert seqs == [1, 2, 3, 4]
    for data, _, when in port.written:
        a = verify_datagram(data, "secret")
        assert a.date == format_http_date(when)
    assert adv.sequence == 4 and adv.datagrams_sent == 4


def test_no_key_uses_zero_salt(reactor):
    adv = _make(reactor, security_key=None)
    adv.startService()
    data = reactor.ports[0].written[0][0]
    verify_datagram(data, None)
    with pytest.raises(DigestMismatch):
        verify_datagram(data, "secret")


def test_https_protocol_url_host_and_random_server_id(reactor):
    """X-Manager-Protocol https when told; server id random per instance unless given."""
    adv = Advertiser(reactor, "[::1]:6443", bind_address=("127.0.0.1", 0), frequency=1,
                     manager_protocol="https", manager_url="/mcmp", manager_host="balancer1")
    other = Advertiser(reactor, "[::1]:6443", bind_address=("127.0.0.1", 0))
    assert adv.server_id != other.server_id
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                        adv.server_id)
    adv.startService()
    a = parse_datagram(reactor.ports[0].written[0][0])
    assert a.server == adv.server_id
    assert (a.manager_address, a.manager_protocol, a.manager_url, a.manager_host) == (
        "[::1]:6443", "https", "/mcmp", "balancer1")


def test_status_change_sends_at_once_and_restarts_period(reactor):
    """A new status is sent immediately; the next periodic one is a period later."""
    adv = _make(reactor, frequency=10)
    adv.startService()
    port = reactor.ports[0]
    reactor.pump([1] * 4)
    adv.status_changed(200)  # unchanged: nothing sent
    assert len(port.written) == 1
    adv.status_changed(503)
    assert len(port.written) == 2
    a = verify_datagram(port.written[1][0], "secret")
    assert (a.status, a.reason, a.sequence) == (503, "Service Unavailable", 2)
    assert a.manager_address == "127.0.0.1:6666"
    reactor.pump([1] * 9)
    assert len(port.written) == 2
    reactor.pump([1])
    assert len(port.written) == 3
    assert parse_datagram(port.written[2][0]).status == 503
    assert port.written[2][2] - port.written[1][2] == 10
    with pytest.raises(AdvertiseError):
        adv.status_changed(42)


def test_status_change_before_start_is_remembered(reactor):
    adv = _make(reactor)
    adv.status_changed(503)
    adv.startService()
    assert parse_datagram(reactor.ports[0].written[0][0]).status == 503


def test_stop_sends_403_then_410_and_closes(reactor):
    """Shutdown: a 403 then a 410 STATUS datagram, no X-Manager lines, then close."""
    adv = _make(reactor)
    adv.startService()
    reactor.pump([5] * 2)
    port = reactor.ports[0]
    d = adv.stopService()
    assert d.called and port.stopped
    sent = [verify_datagram(w[0], "secret") for w in port.written]
    assert [(a.status, a.sequence) for a in sent] == [(200, 1), (200, 2), (403, 3), (410, 4)]
    assert sent[2].reason == "Forbidden" and sent[3].reason == "Gone"
    assert sent[2].headers == () and sent[3].headers == ()
    reactor.pump([10] * 3)
    assert len(port.written) == 4  # the loop is stopped
    assert not reactor.getDelayedCalls()


def test_sequence_wraps_to_one(reactor):
    adv = _make(reactor)
    adv.sequence = 2**63 - 1
    adv.startService()
    assert parse_datagram(reactor.ports[0].written[0][0]).sequence == 1


def test_send_failure_is_logged_not_raised(reactor, logged):
    """A socket error on write is logged; the loop keeps going."""
    adv = _make(reactor, frequency=1)
    adv.startService()
    port = reactor.ports[0]
    port.fail_writes = OSError(101, "Network is unreachable")
    reactor.pump([1] * 3)
    assert adv.send_failures == 3
    failures = [e for e in logged if e.get("log_failure") is not None]
    assert len(failures) == 3
    assert "failed" in _text(failures[0])
    for e in failures:
        e["log_failure"].cleanFailure()
    port.fail_writes = None
    reactor.pump([1])
    assert len(port.written) == 2 and adv.running
    assert [parse_datagram(w[0]).sequence for w in port.written] == [1, 5]


def test_listen_failure_is_logged(reactor, logged):
    """Cannot bind: logged, service keeps running without sending, stop works."""
    reactor.listen_error = CannotListenError("127.0.0.1", 23364, OSError(98, "in use"))
    adv = _make(reactor)
    adv.startService()
    assert adv.running and reactor.ports == []
    assert any("Advertise disabled" in _text(e) for e in logged)
    assert adv.stopService().called


def test_interface_failure_sends_nothing(reactor, logged):
    """If the outgoing interface cannot be set nothing is sent (never the wrong NIC)."""
    reactor.interface_deferred = fail(OSError(99, "Cannot assign requested address"))
    adv = _make(reactor)
    adv.startService()
    port = reactor.ports[0]
    reactor.pump([10] * 3)
    assert port.written == [] and port.stopped
    assert any("Advertise disabled" in _text(e) and "interface 127.0.0.1" in _text(e)
               for e in logged)
    adv.stopService()
    assert port.written == []


def test_stop_while_interface_pending(reactor, logged):
    """Stopping before the interface is set sends nothing and logs no error."""
    reactor.interface_deferred = Deferred()
    adv = _make(reactor)
    adv.startService()
    port = reactor.ports[0]
    adv.stopService()
    assert port.written == [] and port.stopped
    assert not [e for e in logged if e.get("log_failure") is not None]


def test_warns_about_misconfiguration(reactor, logged):
    """Wildcard advertised address and loopback-vs-remote mismatches are warned about."""
    Advertiser(reactor, "0.0.0.0:6666", bind_address=("127.0.0.1", 0)).startService()
    assert any("wildcard" in _text(e) for e in logged)
    del logged[:]
    Advertiser(reactor, "10.1.2.3:6666", bind_address=("127.0.0.1", 0)).startService()
    assert any("only nodes on this host" in _text(e) for e in logged)


@pytest.mark.parametrize("kwargs, message", [
    ({"group": ("127.0.0.1", 23364)}, "multicast"),
    ({"group": ("ff05::105", 23364)}, "IPv4"),
    ({"interface": "lo"}, "interface"),
    ({"interface": "0.0.0.0"}, "interface"),
    ({"interface": "::1"}, "interface"),
    ({"ttl": 256}, "TTL"),
    ({"ttl": -1}, "TTL"),
    ({"frequency": 0.0}, "frequency"),
    ({"frequency": "10"}, "frequency"),
    ({"security_key": "clé"}, "ASCII"),
    ({"server_id": "has space"}, "server id"),
    ({"manager_protocol": "ftp"}, "protocol"),
    ({"manager_url": "/" + "u" * 300}, "512"),
    ({"bind_address": ("::1", 0)}, "IPv4"),
])
def test_constructor_validation(reactor, kwargs, message):
    """Bad arguments fail at construction with a clear ValueError."""
    with pytest.raises(ValueError, match=message):
        _make(reactor, **kwargs)


def test_configuration_needs_only_the_codec():
    """
    Reading a configuration parses the advertise values with the pure codec; the
    service module (sockets, LoopingCall) is not imported for that.
    """
    code = (
        "import sys\n"
        "from modcluster.config import parse_config\n"
        "parse_config('[advertise]\\nenabled = true\\nfrequency = \"5.500\"\\n', 'x')\n"
        "assert 'modcluster.advertise.codec' in sys.modules\n"
        "assert 'modcluster.advertise.service' not in sys.modules, 'service imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parents[3])


def test_service_takes_parsed_values(reactor):
    """The Advertiser takes what the codec's parsers return (tuples, seconds)."""
    adv = _make(reactor, group=parse_group("224.0.1.105"),
                bind_address=parse_bind_address("127.0.0.1:0"),
                frequency=parse_frequency("5,250"))
    assert (adv.group, adv.bind_address, adv.frequency) == (
        ("224.0.1.105", 23364), ("127.0.0.1", 0), 5.25)
