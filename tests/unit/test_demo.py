"""The demo node's page (modcluster/demo.py), in memory."""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.web.server import Site

from modcluster.demo import DemoPage


def _ask(site: Site, request: bytes) -> bytes:
    proto = site.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(request)
    return transport.value()


def test_get_counts_a_visit_and_gives_a_session_bound_to_the_node():
    page = DemoPage("node1")
    answer = _ask(Site(page), b"GET /demo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"x-demo-node: node1" in answer.lower()
    assert b".node1; Path=/demo; HttpOnly" in answer
    assert b"Request 1 on this node" in answer
    assert page.hits == 1


def test_head_is_quiet_and_not_a_visit():
    """
    The node agent checks its backend with HEAD every few seconds: that is no
    visit (no hit counted, no session made) and logs nothing (twisted.web logs a
    warning for every HEAD answered with a body).
    """
    page = DemoPage("node1")
    site = Site(page)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        answer = _ask(site, b"HEAD /demo HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        globalLogPublisher.removeObserver(events.append)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == b""
    assert b"x-demo-node: node1" in head.lower()
    assert b"set-cookie" not in head.lower()
    assert page.hits == 0
    assert [e for e in events if "I think I'll eat it" in str(e.get("log_format"))] == []
    get = _ask(site, b"GET /demo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"Request 1 on this node" in get
