"""
Advertise discovery on the node side: digest verification with the shared
key, Java parsing rules, one proxy per new server id, and refusal of stale,
replayed or out-of-order datagrams (the clock is a task.Clock set to the
datagrams' Date).
"""

from __future__ import annotations

import calendar
import email.utils

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from modcluster.advertise.codec import ManagerInfo, format_datagram
from modcluster.node.discovery import AdvertiseListener
from tests.support.node_testlib import advertise_datagrams

DATE = "Tue, 21 Jul 2026 10:05:00 GMT"
SERVER = "1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d"


def at(date: str) -> Clock:
    clock = Clock()
    clock.advance(calendar.timegm(email.utils.parsedate(date)))
    return clock


def listener(key=None, clock=None, **kw):
    found: list[tuple[str, int]] = []
    return AdvertiseListener(lambda h, p: found.append((h, p)), key=key,
                             clock=clock or at(DATE), **kw), found


def datagram(key="secret", address="127.0.0.1:6666", server=SERVER, sequence=1,
             date=DATE) -> bytes:
    manager = ManagerInfo(address=address, url="/" + server) if address else None
    return format_datagram(date=date, sequence=sequence, server=server, key=key, manager=manager)


def warnings_for(proto: AdvertiseListener, data: bytes) -> list[dict]:
    with capturedLogs() as events:
        proto.datagramReceived(data, ("127.0.0.1", 40000))
    return [e for e in events if e["log_level"] == LogLevel.warn]


def test_right_key_adds_proxy_once() -> None:
    proto, found = listener("secret")
    assert warnings_for(proto, datagram()) == []
    proto.datagramReceived(datagram(sequence=2), ("127.0.0.1", 40000))
    assert found == [("127.0.0.1", 6666)]
    assert proto.servers == {SERVER: (200, "OK")}


def test_wrong_key_ignored_with_log() -> None:
    proto, found = listener("secret")
    assert len(warnings_for(proto, datagram(key="other"))) == 1
    assert len(warnings_for(proto, datagram(key=None))) == 1
    assert found == [] and proto.servers == {}


def test_no_key_on_both_sides() -> None:
    proto, found = listener(None)
    proto.datagramReceived(datagram(key=None), ("127.0.0.1", 40000))
    assert found == [("127.0.0.1", 6666)]


def test_missing_digest_ignored_with_log() -> None:
    """The Java listener's thread dies on this; we log and go on."""
    proto, found = listener("secret")
    data = datagram().replace(b"Digest: ", b"Digestx: ")
    assert len(warnings_for(proto, data)) == 1
    proto.datagramReceived(datagram(), ("127.0.0.1", 40000))
    assert found == [("127.0.0.1", 6666)]


def test_fixture_datagrams() -> None:
    """The trace's ADV1 (wrong digest) is ignored, ADV2 names 127.0.0.1:26666."""
    data = advertise_datagrams()
    proto, found = listener("secret", clock=at("Sun, 22 Nov 2026 02:05:05 GMT"))
    proto.datagramReceived(data["ADV1"], ("127.0.0.1", 40000))
    assert found == []
    for label in ("ADV2", "ADV3", "ADV4"):
        proto.datagramReceived(data[label], ("127.0.0.1", 40000))
    assert found == [("127.0.0.1", 26666)]


def test_ipv6_and_missing_port_and_shutdown_datagrams() -> None:
    proto, found = listener("secret")
    proto.datagramReceived(datagram(address="[::1]:6666", server="a"), None)
    proto.datagramReceived(datagram(address="127.0.0.1", server="b"), None)
    proto.datagramReceived(datagram(address=None, server="c"), None)
    assert found == [("::1", 6666)]
    assert set(proto.servers) == {"a", "b", "c"}


def test_garbage_never_raises() -> None:
    proto, found = listener("secret")
    for data in (b"", b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.0 abc\r\n", b"\xff" * 600,
                 datagram()[:40]):
        proto.datagramReceived(data, None)
    assert found == []
    # Like the Java listener, only the first 512 bytes count, and the headers
    # end at the first empty line: trailing junk does not matter.
    proto.datagramReceived(datagram() + b"\xff" * 1000, None)
    assert found == [("127.0.0.1", 6666)]


# --- replay, freshness, order -------------------------------------------------------


def test_trace_sequence_is_accepted_in_order() -> None:
    """The Tomcat trace's datagrams (Sequence 1..9, 5 s apart) all count, with the clock
    following them; repeating ADV3 after ADV4 is ignored."""
    data = advertise_datagrams()
    clock = at("Sun, 22 Nov 2026 02:05:05 GMT")
    proto, found = listener("secret", clock=clock)
    for label in ("ADV2", "ADV3", "ADV4", "ADV5"):
        assert warnings_for(proto, data[label]) == []
        clock.advance(5)
    assert proto._last["6a1e2f0c-7d3b-4c1a-9e55-1b2c3d4e5f60"][0] == 4
    assert len(warnings_for(proto, data["ADV3"])) == 1
    assert found == [("127.0.0.1", 26666)]


@pytest.mark.parametrize("offset", [-301, 301, -86400 * 30])
def test_stale_or_future_date_refused(offset) -> None:
    """A datagram dated more than max_skew (default 300 s) away is ignored with a log
    line: a capture replayed later, even for a server never heard, goes nowhere."""
    clock = at(DATE)
    clock.advance(-offset)
    proto, found = listener("secret", clock=clock)
    warnings = warnings_for(proto, datagram(address="127.0.0.1:7777"))
    assert len(warnings) == 1 and "Date" in warnings[0]["log_format"]
    assert found == [] and proto.servers == {}


def test_skew_is_configurable_and_can_be_off() -> None:
    clock = at(DATE)
    clock.advance(1000)
    proto, found = listener("secret", clock=clock, max_skew=2000)
    proto.datagramReceived(datagram(), None)
    assert found == [("127.0.0.1", 6666)]
    proto, found = listener("secret", clock=at("Sun, 22 Nov 2020 02:05:05 GMT"), max_skew=0)
    proto.datagramReceived(datagram(), None)
    assert found == [("127.0.0.1", 6666)]
    proto, found = listener("secret", clock=clock, max_skew=999)
    proto.datagramReceived(datagram(), None)
    assert found == []


def test_unreadable_date_refused() -> None:
    proto, found = listener("secret")
    assert len(warnings_for(proto, datagram(date="yesterday"))) == 1
    assert found == []


def test_replayed_datagram_with_the_same_sequence_is_ignored() -> None:
    """A captured datagram sent again (same Date, Sequence, digest) changes nothing and
    logs no warning (one replay per period is a cheap attack; httpd may also be heard
    twice on two interfaces)."""
    proto, found = listener("secret")
    first = datagram(sequence=7)
    proto.datagramReceived(first, None)
    before = dict(proto._last)
    for _ in range(3):
        assert warnings_for(proto, first) == []
    assert proto._last == before and found == [("127.0.0.1", 6666)]


def test_sequence_going_backwards_is_refused() -> None:
    proto, found = listener("secret")
    proto.datagramReceived(datagram(sequence=5), None)
    older = datagram(sequence=4, date="Tue, 21 Jul 2026 10:04:55 GMT")
    assert len(warnings_for(proto, older)) == 1
    same_second = datagram(sequence=3)
    assert len(warnings_for(proto, same_second)) == 1
    assert proto._last[SERVER][0] == 5
    # still moving forward afterwards
    assert warnings_for(proto, datagram(sequence=6, date="Tue, 21 Jul 2026 10:05:10 GMT")) == []
    assert proto._last[SERVER][0] == 6


def test_restarted_sender_with_the_same_server_id_is_followed() -> None:
    """A sender that keeps its server id over a restart counts from 1 again: accepted
    because its Date is later.  httpd and this balancer take a new id at each start
    (a new server: its Sequence starts fresh), which is accepted too."""
    clock = at(DATE)
    proto, found = listener("secret", clock=clock)
    proto.datagramReceived(datagram(sequence=40), None)
    clock.advance(20)
    with capturedLogs() as events:
        proto.datagramReceived(datagram(sequence=1, date="Tue, 21 Jul 2026 10:05:20 GMT"), None)
    assert not [e for e in events if e["log_level"] == LogLevel.warn]
    assert proto._last[SERVER][0] == 1
    proto.datagramReceived(datagram(sequence=1, server="new-id", address="127.0.0.1:6667"), None)
    assert found == [("127.0.0.1", 6666), ("127.0.0.1", 6667)]


def test_balancer_datagrams_over_a_restart() -> None:
    """Datagrams of this balancer's Advertiser (real format, new server id at each
    start): the node follows both incarnations and refuses a replay of the first."""
    from modcluster.advertise.codec import format_http_date

    clock = at(DATE)
    proto, found = listener("secret", clock=clock)
    now = clock.seconds()
    first = [format_datagram(date=format_http_date(now + 10 * i), sequence=i + 1,
                             server="id-one", key="secret",
                             manager=ManagerInfo(address="127.0.0.1:6666", url="/id-one"))
             for i in range(3)]
    for i, d in enumerate(first):
        clock.advance(10 if i else 0)
        assert warnings_for(proto, d) == []
    clock.advance(10)
    second = format_datagram(date=format_http_date(clock.seconds()), sequence=1,
                             server="id-two", key="secret",
                             manager=ManagerInfo(address="127.0.0.1:6668", url="/id-two"))
    assert warnings_for(proto, second) == []
    assert len(warnings_for(proto, first[0])) == 1   # replayed old datagram
    assert found == [("127.0.0.1", 6666), ("127.0.0.1", 6668)]


def test_remembered_servers_are_bounded() -> None:
    proto, found = listener(None)
    proto.max_servers = 4
    for i in range(10):
        proto.datagramReceived(datagram(key=None, server=f"s{i}"), None)
    assert len(proto.servers) == 4 and len(proto._last) == 4


def test_a_flood_of_bad_datagrams_costs_a_few_log_lines() -> None:
    """
    Anyone on the network can send datagrams to the group (and spoof their
    source): garbage, wrong digests, stale dates, replays from many source
    addresses are logged at most a few times per kind per 10 s, the rest
    counted in one line, as the proxy's own refusal lines are.
    """
    clock = at(DATE)
    proto, found = listener("secret", clock=clock)
    proto.datagramReceived(datagram(sequence=5), ("127.0.0.1", 40000))
    bad = [b"\xff" * 600, datagram(key="other"), datagram(date="Mon, 01 Jan 2001 00:00:00 GMT"),
           datagram(sequence=3, server=SERVER)]
    with capturedLogs() as events:
        for i in range(1000):
            for data in bad:
                proto.datagramReceived(data, (f"10.0.{i // 250}.{i % 250}", 40000 + i))
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert 4 <= len(warnings) <= 40, len(warnings)
    clock.advance(11)
    with capturedLogs() as events:
        proto.datagramReceived(b"\xff", ("10.9.9.9", 1))
    texts = [e["log_format"] for e in events]
    assert any("suppressed" in t for t in texts), texts
    assert found == [("127.0.0.1", 6666)]
