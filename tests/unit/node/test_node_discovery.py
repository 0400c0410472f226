"""
Advertise discovery on the node side: digest verification with the shared
key, Java parsing rules, one proxy per new server id.
"""

from __future__ import annotations

from twisted.logger import LogLevel, capturedLogs

from modcluster.advertise import ManagerInfo, format_datagram
from modcluster.node.discovery import AdvertiseListener
from node_testlib import advertise_datagrams

DATE = "Tue, 21 Jul 2026 10:05:00 GMT"
SERVER = "1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d"


def listener(key=None):
    found: list[tuple[str, int]] = []
    return AdvertiseListener(lambda h, p: found.append((h, p)), key=key), found


def datagram(key="secret", address="127.0.0.1:6666", server=SERVER, sequence=1) -> bytes:
    manager = ManagerInfo(address=address, url="/" + server) if address else None
    return format_datagram(date=DATE, sequence=sequence, server=server, key=key, manager=manager)


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
    proto, found = listener("secret")
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
