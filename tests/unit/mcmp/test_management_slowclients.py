"""
Slow clients on the management listener (issue 13 §3): the request head
deadline and the request body minimum rate of L{ManagementSite}, swept once a
second on a fake clock; the idle timeout of twisted.web is unchanged.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs

from modcluster.cluster.registry import Registry
from modcluster.listening import ReadTimeouts
from modcluster.mcmp.handler import MCMPHandler
from modcluster.mcmp.resource import ManagementRoot, ManagementSite, MCMPResource

CONFIG = b"JVMRoute=node1&Host=127.0.0.1&Port=8009&Type=ajp"


class _Prober:
    def probe(self, node):  # pragma: no cover - not reached by these tests
        raise AssertionError("no probe expected")


class Listener:
    def __init__(self, read_timeouts=None, timeout=60.0) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(1_790_000_000)
        self.registry = Registry(self.clock)
        handler = MCMPHandler(self.registry, _Prober(), self.clock)
        self.site = ManagementSite(ManagementRoot(MCMPResource(handler)), timeout=timeout,
                                   read_timeouts=read_timeouts, reactor=self.clock)
        self.site.startFactory()

    def connect(self):
        channel = self.site.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.7", 41000))
        channel.makeConnection(transport)
        return channel, transport

    def advance(self, seconds: int) -> None:
        for _ in range(seconds):
            self.clock.advance(1)


def closed(transport) -> bool:
    return transport.disconnecting or transport.disconnected


def trickle(listener, channel, transport, data: bytes, per_second: int, seconds: int) -> bytes:
    for _ in range(seconds):
        if closed(transport):
            break
        channel.dataReceived(data[:per_second])
        data = data[per_second:]
        listener.advance(1)
    return data


def test_head_sent_one_byte_a_second_gets_408():
    m = Listener()
    channel, t = m.connect()
    head = b"CONFIG / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"x" * 100 + b"\r\n\r\n"
    rest = trickle(m, channel, t, head, 1, 20)
    assert not closed(t)
    trickle(m, channel, t, rest, 1, 3)
    assert closed(t)
    assert t.value().startswith(b"HTTP/1.1 408 ")
    assert m.site.timeouts.counts == {"header": 1, "body": 0, "send": 0}


def test_connection_without_a_byte_closed_silently():
    m = Listener(ReadTimeouts(header=10))
    _, t = m.connect()
    m.advance(10)
    assert not closed(t)
    m.advance(2)
    assert closed(t)
    assert t.value() == b""
    assert m.site.timeouts.counts["header"] == 1


def test_body_below_min_rate_gets_408_and_is_not_handled():
    m = Listener()
    channel, t = m.connect()
    channel.dataReceived(b"CONFIG / HTTP/1.1\r\nHost: x\r\nContent-Length: 30000\r\n\r\n")
    rest = trickle(m, channel, t, CONFIG + b"&" + b"x" * 30000, 100, 24)
    assert not closed(t)
    trickle(m, channel, t, rest, 100, 4)
    assert closed(t)
    assert t.value().startswith(b"HTTP/1.1 408 ")
    assert m.registry.node("node1") is None
    assert m.site.timeouts.counts == {"header": 0, "body": 1, "send": 0}


def test_body_at_a_good_rate_survives():
    m = Listener()
    channel, t = m.connect()
    body = CONFIG + b"&Reversed=false" * 2
    pad = body + b"&" + b"p" * (600 * 60 - len(body) - 1)
    channel.dataReceived(b"CONFIG / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                         % len(pad))
    assert trickle(m, channel, t, pad, 600, 60) == b""
    assert not closed(t)
    assert m.site.timeouts.counts["body"] == 0
    # the request was answered (the padding is a syntax error, but an MCMP one)
    assert t.value().startswith(b"HTTP/1.1 ")
    assert not t.value().startswith(b"HTTP/1.1 408")


def test_keep_alive_idle_timeout_unchanged():
    m = Listener(timeout=60.0)
    channel, t = m.connect()
    channel.dataReceived(b"CONFIG / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(CONFIG), CONFIG))
    assert t.value().startswith(b"HTTP/1.1 200 ")
    assert m.registry.node("node1") is not None
    t.clear()
    m.advance(59)  # longer than the 20 s head deadline: idle is not a head
    assert not closed(t)
    with capturedLogs() as events:
        m.advance(2)
    assert closed(t)
    assert t.value() == b""
    assert m.site.timeouts.counts == {"header": 0, "body": 0, "send": 0}
    assert events == []  # routine: no log line per idle connection
    m.advance(20)
    assert t.disconnected  # aborted if it does not go away (abortTimeout)


def test_next_head_timed_from_its_first_byte():
    m = Listener(ReadTimeouts(header=10, header_max=0))
    channel, t = m.connect()
    channel.dataReceived(b"INFO / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert t.value().startswith(b"HTTP/1.1 200 ")
    t.clear()
    m.advance(30)
    assert not closed(t)
    trickle(m, channel, t, b"INFO / HTTP/1.1\r\nHost: x\r\n\r\n", 1, 9)
    assert not closed(t)
    trickle(m, channel, t, b"xxxxxx", 1, 3)
    assert closed(t)
    assert t.value().startswith(b"HTTP/1.1 408 ")


def test_deadlines_off():
    m = Listener(ReadTimeouts(header=0, body=0), timeout=5)
    channel, t = m.connect()
    channel.dataReceived(b"CONFIG / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                         % len(CONFIG))
    assert trickle(m, channel, t, CONFIG, 1, len(CONFIG)) == b""
    assert t.value().startswith(b"HTTP/1.1 200 ")


def test_a_flood_of_slow_clients_costs_a_few_log_lines():
    m = Listener(ReadTimeouts(header=5, header_max=0))
    with capturedLogs() as events:
        transports = []
        for _ in range(3):
            for _ in range(40):
                channel, t = m.connect()
                channel.dataReceived(b"G")
                transports.append(t)
            m.advance(7)
    assert all(closed(t) for t in transports)
    assert m.site.timeouts.counts["header"] == 120
    lines = [e for e in events if "cut" in e.get("log_format", "")]
    assert 1 <= len(lines) <= 3
    assert not [e for e in events if "Timing out" in e.get("log_format", "")]


def test_refused_oversized_message_is_not_timed_again():
    """A body refused for its size (500 + close) is not also cut as slow."""
    m = Listener()
    m.site.max_message_size = 1024
    channel, t = m.connect()
    channel.dataReceived(b"CONFIG / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nJ")
    assert b"Type: SYNTAX" in t.value()
    m.advance(60)
    assert m.site.timeouts.counts == {"header": 0, "body": 0, "send": 0}
    assert b"408" not in t.value()
