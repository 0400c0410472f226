"""
Slow clients on the proxy listener (issue 13 §3): the request head deadline,
the request body minimum rate, the rate-limited log and the counts, all driven
by the factory's once-a-second sweep on a fake clock.
"""

from tests.support.proxy_testlib import OK_100, Harness, parse_requests, parse_responses
from twisted.logger import capturedLogs

HEAD = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"x" * 200 + b"\r\n\r\n"


def one_node(**config) -> Harness:
    h = Harness(**config)
    h.node("n1", 8081)
    return h


def trickle(h: Harness, c, data: bytes, per_second: int, seconds: int) -> bytes:
    """Send C{per_second} bytes of C{data} each second for C{seconds} seconds
    (stops once the connection is closed); returns what was not sent."""
    for _ in range(seconds):
        if c.closed or c.transport.disconnected:
            break
        c.send(data[:per_second])
        data = data[per_second:]
        h.advance(1)
    return data


def test_head_sent_one_byte_a_second_gets_408_at_the_deadline():
    """1 byte/s: the head deadline (20 s + 1 s per 500 bytes) cuts it with a 408."""
    h = one_node()
    c = h.client()
    trickle(h, c, HEAD, 1, 19)
    assert not c.closed
    trickle(h, c, HEAD[19:], 1, 4)
    assert c.closed
    (r,) = parse_responses(c.received())
    assert r.status == 408
    assert r.header(b"connection") == b"close"
    assert h.factory.timeouts.counts == {"header": 1, "body": 0, "send": 0}
    assert not h.pending()  # nothing was forwarded


def test_head_deadline_extended_by_min_rate_up_to_the_maximum():
    """A head arriving at 1000 bytes/s earns 2 s per second, but not beyond 40 s."""
    h = one_node(max_header_size=100000)
    c = h.client()
    big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 90000
    rest = trickle(h, c, big, 1000, 38)
    assert not c.closed  # past 20 s thanks to the rate
    trickle(h, c, rest, 1000, 5)
    assert c.closed
    assert parse_responses(c.received())[0].status == 408


def test_head_deadline_without_extension_is_a_total():
    h = one_node(max_header_size=100000, request_header_timeout=5,
                 request_header_timeout_max=0)
    c = h.client()
    trickle(h, c, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 90000, 5000, 4)
    assert not c.closed
    h.advance(3)
    assert c.closed
    assert parse_responses(c.received())[0].status == 408


def test_connection_without_a_byte_is_closed_silently_at_the_head_deadline():
    h = one_node(request_header_timeout=10)
    c = h.client()
    h.advance(10)
    assert not c.closed
    h.advance(2)
    assert c.closed
    assert c.received() == b""
    assert h.factory.timeouts.counts["header"] == 1


def test_head_deadline_counts_from_the_first_byte_after_a_request():
    """On a kept-alive connection the next head is timed from its first byte."""
    h = one_node(request_header_timeout=10, request_header_timeout_max=0)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    h.accept().respond(OK_100)
    assert parse_responses(c.received())[0].status == 200
    h.advance(30)  # idle keep-alive, below client_timeout: not a head
    assert not c.closed
    trickle(h, c, HEAD, 1, 9)
    assert not c.closed
    trickle(h, c, HEAD[9:], 1, 3)
    assert c.closed
    assert parse_responses(c.received())[0].status == 408


def test_keep_alive_idle_timeout_unchanged():
    """An idle keep-alive connection is closed by client_timeout, not the head deadline."""
    h = one_node(client_timeout=60)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    h.accept().respond(OK_100)
    c.received()
    h.advance(60)
    assert not c.closed
    h.advance(2)
    assert c.closed
    assert c.received() == b""
    assert h.factory.timeouts.counts == {"header": 0, "body": 0, "send": 0}


def test_trickling_head_while_earlier_request_is_served_is_not_timed():
    """The clock of a pipelined head starts when the requests before it are done."""
    h = one_node(request_header_timeout=5, request_header_timeout_max=0, timeout=100)
    c = h.client()
    c.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HT")
    n = h.accept()
    h.advance(30)  # the node takes its time
    assert not c.closed
    n.respond(OK_100)
    assert parse_responses(c.received())[0].status == 200
    h.advance(4)
    assert not c.closed
    h.advance(4)
    assert c.closed
    assert parse_responses(c.received())[0].status == 408


def test_head_deadline_off():
    h = one_node(request_header_timeout=0)
    c = h.client()
    rest = trickle(h, c, HEAD, 1, 100)
    assert not c.closed
    c.send(rest)
    h.accept().respond(OK_100)
    assert parse_responses(c.received())[0].status == 200


def test_body_below_min_rate_gets_408_and_the_node_request_is_aborted():
    """100 bytes/s against 20 s + 1 s per 500 bytes: cut after about 25 s."""
    h = one_node()
    c = h.client()
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
    n = h.accept()
    trickle(h, c, b"y" * 100000, 100, 24)
    assert not c.closed
    trickle(h, c, b"y" * 1000, 100, 5)
    assert c.closed
    assert parse_responses(c.received())[0].status == 408
    assert n.aborted
    assert h.counters_idle()
    assert h.factory.timeouts.counts == {"header": 0, "body": 1, "send": 0}


def test_body_at_a_good_rate_survives():
    """600 bytes/s for 90 s: never cut; the whole body reaches the node."""
    h = one_node()
    c = h.client()
    size = 600 * 90
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
    n = h.accept()
    rest = trickle(h, c, b"z" * size, 600, 90)
    assert rest == b""
    assert not c.closed
    (req,) = parse_requests(n.received())
    assert len(req.body) == size and req.complete
    n.respond(OK_100)
    assert parse_responses(c.received())[0].status == 200
    assert h.factory.timeouts.counts["body"] == 0


def test_body_total_deadline_without_min_rate():
    h = one_node(request_body_timeout=10, request_body_min_rate=0)
    c = h.client()
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
    h.accept()
    trickle(h, c, b"y" * 100000, 5000, 9)
    assert not c.closed
    trickle(h, c, b"y" * 100000, 5000, 4)
    assert c.closed
    assert parse_responses(c.received())[0].status == 408


def test_body_not_timed_while_the_node_does_not_read():
    """A slow node pauses the client: that time is not the client's."""
    h = one_node(request_body_timeout=5, client_timeout=300, timeout=300)
    c = h.client()
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nabc")
    n = h.accept()
    n.proto.pauseProducing()
    h.advance(60)
    assert not c.closed
    n.proto.resumeProducing()
    c.send(b"d" * 997)
    assert parse_requests(n.received())[0].complete
    n.respond(OK_100)
    assert parse_responses(c.received())[0].status == 200


def test_body_deadline_after_response_began_just_closes():
    """The node answered early; the client keeps trickling its body: cut, no 408."""
    h = one_node(request_body_timeout=5, request_body_min_rate=0)
    c = h.client()
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nabc")
    n = h.accept()
    n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"r" * 10)
    c.received()
    trickle(h, c, b"y" * 1000, 1, 10)
    assert c.transport.disconnected
    assert b"408" not in c.received()
    assert h.counters_idle()


def test_client_not_reading_is_counted_as_send():
    h = one_node(client_timeout=5)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
    c.proto.pauseProducing()
    h.advance(10)
    assert c.transport.disconnected
    assert h.factory.timeouts.counts["send"] == 1


def test_a_flood_of_slow_clients_costs_a_few_log_lines():
    """200 trickling clients are all cut and counted; the log says it in a few lines."""
    h = one_node(request_header_timeout=5, request_header_timeout_max=0)
    with capturedLogs() as events:
        clients = []
        for _wave in range(4):
            for _ in range(50):
                c = h.client()
                c.send(b"G")
                clients.append(c)
            h.advance(8)
    assert all(c.closed for c in clients)
    assert h.factory.timeouts.counts["header"] == 200
    lines = [e for e in events if "cut" in e.get("log_format", "")]
    assert 1 <= len(lines) <= 4
    assert sum(e["left_out"] for e in lines) + len(lines) <= 200
    assert any(e["left_out"] > 0 for e in lines)
    assert not [e for e in events if e.get("status") == 408]  # no per-request 408 line


def test_body_not_timed_while_the_client_waits_for_100_continue():
    """Expect: 100-continue: the body clock starts with the first body byte
    (the node may take its time to say 100); the idle timeout still applies."""
    h = one_node(request_body_timeout=5, request_body_min_rate=0, client_timeout=60,
                 timeout=120)
    c = h.client()
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n"
           b"Expect: 100-continue\r\n\r\n")
    n = h.accept()
    h.advance(30)
    assert not c.closed
    n.respond(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert c.received().startswith(b"HTTP/1.1 100")
    c.send(b"0123456789")
    assert parse_requests(n.received())[0].body == b"0123456789"
    n.respond(OK_100)
    assert parse_responses(c.received())[0].status == 200
    # and a client that never sends its body is cut by the idle timeout
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n"
           b"Expect: 100-continue\r\n\r\n")
    h.advance(63)
    assert c.closed
    assert parse_responses(c.received())[-1].status == 408
