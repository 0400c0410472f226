"""
The response head deadline (modcluster/proxy/http.py, NodePool.tick) attacked
at its edges: heads that start in the same sweep interval in which the
previous response on the node connection ended.
"""

from tests.support.proxy_testlib import Harness, parse_responses

GET = b"GET /app/x HTTP/1.1\r\nHost: a\r\n\r\n"
WHOLE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def one_node(**config) -> Harness:
    h = Harness(**config)
    h.node("n1", 8081, contexts=("/app",))
    return h


def test_a_head_started_right_after_a_slow_one_gets_its_own_deadline():
    """
    A keep-alive client repeats its request (a remembered head: its
    connection's finished exchange serves the next one) on the same node
    connection.  The first answer's head takes most of the read timeout; the
    next answer's head starts in the same sweep interval as the first one
    ends.  The second head's deadline starts at its own first byte: it is
    not cut seconds later, on the clock of the first head.
    """
    h = one_node(timeout=10)
    c = h.client()
    c.send(GET)
    n = h.accept()
    n.respond(WHOLE)
    for _ in range(3):  # the head is remembered, the exchange kept for the next
        c.send(GET)
        n.respond(WHOLE)
    assert [r.status for r in parse_responses(c.received())] == [200] * 4
    c.send(GET)
    n.respond(b"HTTP/1.1 200 OK\r\n")
    h.advance(8)  # the head seen started by the sweeps, not complete
    n.respond(b"Content-Length: 2\r\n\r\nok")
    assert [r.status for r in parse_responses(c.received())] == [200]
    c.send(GET)  # the next one, in the same sweep interval
    n.respond(b"HTTP/1.1 200 OK\r\n")
    for _ in range(6):  # well within 10 s of this head's first byte
        h.advance(1)
        assert not n.aborted
        assert c.received() == b""
    n.respond(b"Content-Length: 2\r\n\r\nok")
    assert [r.status for r in parse_responses(c.received())] == [200]
    assert not n.aborted
    assert h.counters_idle()
