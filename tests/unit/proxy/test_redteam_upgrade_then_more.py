"""
What follows an Upgrade request that is not tunnelled, in the same read, is
parsed by a fresh parser from inside the handler of httptools'
HttpParserUpgrade (client._upgraded): whatever goes wrong there must be
classified as it would be anywhere else (Python makes the Upgrade the
context of any exception raised in that handler).
"""

from twisted.logger import LogLevel, capturedLogs

from modcluster.proxy.client import MAX_PIPELINE
from tests.support.proxy_testlib import Harness, parse_requests, parse_responses

UPGRADE = (b"GET /app/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n"
           b"Upgrade: websocket\r\n\r\n")
GET = b"GET /app/x HTTP/1.1\r\nHost: localhost\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _harness() -> Harness:
    h = Harness()  # no WebSocket tunnel: the Upgrade is dropped, the request plain
    h.node("n1", 8081, contexts=("/app",))
    return h


def _critical(events) -> list:
    return [e for e in events
            if e["log_level"] in (LogLevel.critical, LogLevel.error)
            or e.get("log_failure") is not None]


def test_a_malformed_request_after_an_upgrade_is_a_400_not_a_bug():
    h = _harness()
    c = h.client()
    with capturedLogs() as events:
        c.send(UPGRADE + b"BAD\r\n\r\n")
        n = h.accept()
        [request] = parse_requests(n.received())
        assert request.url == b"/app/ws" and request.header(b"Upgrade") is None
        n.respond(OK)
    assert [r.status for r in parse_responses(c.received())] == [200, 400]
    assert c.closed
    assert not _critical(events), events
    assert h.counters_idle()


def test_too_many_pipelined_after_an_upgrade_are_not_answered_nor_a_bug():
    """Beyond MAX_PIPELINE requests behind the one being served, the rest is
    ignored (and the connection closed once those are answered), as without
    the Upgrade in front."""
    h = _harness()
    c = h.client()
    with capturedLogs() as events:
        c.send(UPGRADE + GET * (MAX_PIPELINE + 5))
        n = h.accept()
        for _ in range(MAX_PIPELINE + 1):
            n.received()
            n.respond(OK)
    statuses = [r.status for r in parse_responses(c.received())]
    assert statuses == [200] * (MAX_PIPELINE + 1), statuses
    assert not _critical(events), events
    assert h.counters_idle()
