"""
Routing outcomes and failover (balancing.md §3.5, §4.4, §6.5, §7).
"""

from tests.support.proxy_testlib import OK_100, Harness, parse_requests, parse_responses
from twisted.internet.error import ConnectionLost, TimeoutError

from modcluster.cluster.model import BalancerSettings

GET = b"GET /app/x HTTP/1.1\r\nHost: a\r\n\r\n"


def two_nodes(balancer=None, **config) -> Harness:
    h = Harness(**config)
    b = balancer or BalancerSettings("mycluster")
    h.node("n1", 8081, contexts=("/app",), balancer=b)
    h.node("n2", 8082, contexts=("/app",), balancer=b)
    return h


def test_connect_refused_fails_over_and_marks_node():
    h = two_nodes()
    c = h.client()
    c.send(GET)
    [(host, port, *_)] = h.pending()
    other = 8082 if port == 8081 else 8081
    h.refuse(port)
    assert [r for r, _ in h.failures] == ["n1" if port == 8081 else "n2"]
    assert h.nodeEntry("n1" if port == 8081 else "n2").rt.in_error
    n = h.accept(other)
    assert parse_requests(n.received())[0].url == b"/app/x"
    n.respond(OK_100)
    assert parse_responses(c.received())[0].status == 200
    assert h.counters_idle()


def test_connect_timeout_fails_over():
    h = two_nodes()
    c = h.client()
    c.send(GET)
    [(_, port, *_)] = h.pending()
    h.refuse(port, TimeoutError)
    assert len(h.failures) == 1
    h.accept().respond(OK_100)
    assert parse_responses(c.received())[0].status == 200


def test_all_attempts_fail_503_with_retry_after():
    h = two_nodes()
    c = h.client()
    c.send(GET)
    h.refuse()
    h.refuse()
    [resp] = parse_responses(c.received())
    assert resp.status == 503
    assert resp.header(b"Retry-After") == b"10"
    assert sorted(r for r, _ in h.failures) == ["n1", "n2"]
    assert h.counters_idle()
    assert not c.closed  # the request was complete: the connection stays usable


def test_max_attempts_zero_means_no_retry():
    h = two_nodes(BalancerSettings("mycluster", max_attempts=0))
    c = h.client()
    c.send(GET)
    h.refuse()
    assert parse_responses(c.received())[0].status == 503
    assert not h.pending()


def test_idempotent_reset_before_response_is_502_not_replayed():
    """Issue 13 §2: a reset after the request reached a fresh connection is
    retried once on a fresh connection to the same node; a second reset is a
    response-level failure: 502 for this request, counted by passive health,
    no failover and the node stays usable."""
    h = two_nodes()
    c = h.client()
    c.send(GET)
    n = h.accept()
    n.received()
    n.close(ConnectionLost)
    again = h.accept(n.port)
    assert parse_requests(again.received())[0].url == b"/app/x"
    again.close(ConnectionLost)
    # is the node still there?  A connection that sends nothing: it is
    knock = h.accept(n.port)
    assert knock.received() == b"" and knock.closed
    assert parse_responses(c.received())[0].status == 502
    assert h.failures == []
    assert not h.pending()
    rt = h.nodeEntry("n1" if n.port == 8081 else "n2").rt
    assert rt.fails == 1 and not rt.in_error
    assert h.counters_idle()


def test_idempotent_reset_twice_by_a_node_that_died_fails_over():
    """
    A killed node process: its connections are reset before its listening
    socket closes, so the retry on a fresh connection can still be taken
    into the listen queue and then be reset with it.  The node is knocked at
    (a connection that sends nothing), which is refused: a connect-level
    failure, the node is put in error and the request fails over.
    """
    h = two_nodes()
    c = h.client()
    c.send(GET)
    n = h.accept()
    n.received()
    n.close(ConnectionLost)
    again = h.accept(n.port)
    assert parse_requests(again.received())[0].url == b"/app/x"
    again.close(ConnectionLost)
    assert c.received() == b""  # (waiting for the knock)
    h.refuse(n.port)
    route = "n1" if n.port == 8081 else "n2"
    assert [r for r, _ in h.failures] == [route]
    assert "then cannot connect" in h.failures[0][1]
    assert h.nodeEntry(route).rt.in_error
    m = h.accept()
    assert m.port != n.port
    assert parse_requests(m.received())[0].url == b"/app/x"
    m.respond(OK_100)
    assert parse_responses(c.received())[0].status == 200
    assert h.counters_idle()


def test_knock_timing_out_fails_over_too():
    h = two_nodes()
    c = h.client()
    c.send(GET)
    n = h.accept()
    n.close(ConnectionLost)
    h.accept(n.port).close(ConnectionLost)
    h.refuse(n.port, TimeoutError)
    h.accept().respond(OK_100)
    assert parse_responses(c.received())[0].status == 200


def test_client_gone_while_knocking_cancels_the_knock():
    h = two_nodes()
    c = h.client()
    c.send(GET)
    n = h.accept()
    n.close(ConnectionLost)
    h.accept(n.port).close(ConnectionLost)
    knock = [k for k in h.reactor.connectors if k.getDestination().port == n.port][-1]
    assert h.pending(n.port) and not knock.stoppedConnecting
    c.lose()
    assert knock.stoppedConnecting  # cancelled
    assert h.failures == []
    assert h.counters_idle()


def test_knock_cancelled_by_another_owner_judges_nothing():
    """
    Whoever cancels a knock (the client going away, an error answer taking
    the exchange) owns the exchange: the cancellation is not the node's
    failure (no node in error, no failover, no answer from the knock).
    """
    h = two_nodes()
    c = h.client()
    c.send(GET)
    n = h.accept()
    n.close(ConnectionLost)
    h.accept(n.port).close(ConnectionLost)
    ex = c.proto._current
    assert ex is not None and not ex.done and ex.wait_call is not None
    ex.wait_call.cancel()
    assert h.failures == []
    assert not h.nodeEntry("n1" if n.port == 8081 else "n2").rt.in_error
    assert [p for _, p, *_ in h.pending()] == [n.port]  # the knock only: no failover
    assert c.received() == b""


def test_not_replayable_request_reset_twice_is_not_knocked_for():
    """A body was sent: 502 at the first reset, as before; no knock."""
    h = two_nodes()
    c = h.client()
    c.send(b"POST /app/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
    n = h.accept()
    n.received()
    n.close(ConnectionLost)
    assert parse_responses(c.received())[0].status == 502
    assert not h.pending()


def test_failed_over_connection_stays_reusable():
    """The attempt after a failover is complete (end of request sent): its
    connection goes back to the pool."""
    h = two_nodes()
    c = h.client()
    c.send(GET)
    h.refuse()
    m = h.accept()
    m.respond(OK_100)
    assert not m.closed
    c.send(b"GET /app/x HTTP/1.1\r\nHost: a\r\nCookie: JSESSIONID=x.%s\r\n\r\n"
           % (b"n1" if m.port == 8081 else b"n2"))
    assert not h.pending()
    assert parse_requests(m.received())[-1].url == b"/app/x"


def test_chunked_post_failed_over_gets_its_terminating_chunk():
    h = two_nodes()
    c = h.client()
    c.send(b"POST /app/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n0\r\n\r\n")
    h.refuse()  # nothing sent: the body (held until connected) goes to the other node
    m = h.accept()
    raw = m.received()
    assert raw.endswith(b"3\r\nabc\r\n0\r\n\r\n")
    assert parse_requests(raw)[0].complete


def test_body_sent_then_reset_is_not_replayed():
    h = two_nodes()
    c = h.client()
    c.send(b"POST /app/x HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
    n = h.accept()
    assert parse_requests(n.received())[0].body == b"abc"
    n.close(ConnectionLost)
    [resp] = parse_responses(c.received())
    assert resp.status == 502
    assert not h.pending()  # never replayed elsewhere
    assert h.failures == []  # response-level: passive health only (issue 13 §2)
    assert c.closed  # the rest of the body will never be read
    assert h.counters_idle()


def test_empty_post_reset_after_head_is_not_replayed():
    """A non-idempotent request complete without a body may have been processed."""
    h = two_nodes()
    c = h.client()
    c.send(b"POST /app/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    n = h.accept()
    n.received()
    n.close(ConnectionLost)
    assert parse_responses(c.received())[0].status == 502
    assert not h.pending()


def test_post_whose_body_was_not_sent_yet_fails_over():
    """Waiting for 100 Continue: nothing of the body went out, so it can go elsewhere."""
    h = two_nodes()
    c = h.client()
    c.send(b"POST /app/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    h.refuse()
    m = h.accept()
    m.received()
    m.respond(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert c.received() == b"HTTP/1.1 100 Continue\r\n\r\n"
    c.send(b"abc")
    assert m.received() == b"abc"
    m.respond(OK_100)
    assert parse_responses(c.received())[0].status == 200


def test_response_started_then_reset_aborts_client():
    h = two_nodes()
    c = h.client()
    c.send(GET)
    n = h.accept()
    n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    n.close(ConnectionLost)
    raw = c.received()
    assert raw.endswith(b"abc")
    assert c.transport.disconnected
    assert not h.pending()
    assert h.failures == []
    assert h.counters_idle()


def test_read_timeout_gives_504_without_marking():
    h = two_nodes(timeout=10)
    c = h.client()
    c.send(GET)
    n = h.accept()
    h.advance(9)
    assert c.received() == b""
    h.advance(4)
    assert parse_responses(c.received())[0].status == 504
    assert n.aborted
    assert h.failures == []
    assert not h.pending()
    assert h.counters_idle()


def test_node_timeout_setting_overrides_proxy_timeout():
    h = Harness(timeout=100)
    h.node("n1", 8081, timeout=3.0)
    c = h.client()
    c.send(GET)
    h.accept()
    h.advance(6)
    assert parse_responses(c.received())[0].status == 504


def test_trickled_response_head_times_out_after_the_read_timeout():
    """
    A node that trickles its response head a byte at a time, each byte
    within the read timeout, no longer keeps the client waiting: the whole
    head is due within the read timeout once its first byte came (504, the
    node not put in error, its connection dropped).  Before, each byte
    renewed the read timeout and the client waited for up to
    max_header_size bytes' worth of timeouts.
    """
    h = two_nodes(timeout=10)
    c = h.client()
    c.send(GET)
    n = h.accept()
    h.advance(8)  # time to first byte: only the read timeout applies
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    sent = 0
    while sent < len(head) and not n.aborted:
        n.respond(head[sent:sent + 1])
        sent += 1
        h.advance(4)
    [resp] = parse_responses(c.received())
    assert resp.status == 504
    assert n.aborted
    # 10 s after the first byte, at most two sweeps late: 3 or 4 more bytes
    assert 3 <= sent <= 4, sent
    assert h.failures == []
    assert not h.pending()
    assert h.counters_idle()
    assert not c.closed  # the request was complete: the client keeps its connection


def test_head_deadline_logged_naming_the_node_rate_limited():
    """
    Each expiry is logged as the read timeout's are: naming the node, at
    most 10 lines per 10 s per node, then one line counting the others.
    """
    from twisted.logger import capturedLogs, formatEvent

    h = one_node(timeout=5)
    clients, nodes = [], []
    with capturedLogs() as events:
        for _ in range(15):
            c = h.client()
            c.send(GET)
            n = h.accept()
            n.respond(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            clients.append(c)
            nodes.append(n)
        for _ in range(5):
            h.advance(2)
            for n in nodes:
                if not n.aborted:
                    n.respond(b"a")
        h.advance(11)
    assert all(parse_responses(c.received())[0].status == 504 for c in clients)
    texts = [formatEvent(e) for e in events]
    lines = [t for t in texts if t.startswith("node n1: response head not complete")]
    assert 1 <= len(lines) <= 10, lines
    assert lines[0].startswith("node n1: response head not complete 5 s after its first "
                               "byte"), lines
    assert any("more similar messages" in t and "node n1" in t for t in texts), texts
    assert h.counters_idle()


def test_slow_first_byte_then_whole_head_is_not_cut():
    """
    The head deadline starts at the first byte: a node that takes almost the
    read timeout before answering and then sends its head in pieces over a
    few seconds is relayed, as are heads in pieces after an interim
    response and a 100-continue wait.
    """
    h = one_node(timeout=10)
    c = h.client()
    c.send(GET)
    n = h.accept()
    _play(h, n, 9, b"HTTP/1.1 200 OK\r\n", 6, b"Content-Length: 2\r\n", 3, b"\r\nok")
    assert parse_responses(c.received())[0].status == 200
    # the next request on the same node connection: the deadline of the
    # previous head does not carry over
    c.send(GET)
    _play(h, n, 9, b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 2",
          8, b"00 OK\r\nContent-Length: 0\r\n\r\n")
    assert [r.status for r in parse_responses(c.received())] == [102, 200]
    assert not n.aborted
    assert h.counters_idle()


def test_head_deadline_restarts_after_an_interim_response():
    """
    An interim (1xx) head that is complete ends its deadline: the node may
    take up to the read timeout before the final head's first byte (a 100
    Continue, then a long-running request), whose own deadline starts then.
    """
    h = one_node(timeout=10)
    c = h.client()
    c.send(GET)
    n = h.accept()
    _play(h, n, b"HTTP/1.1 10", 6, b"2 Processing\r\n\r\n",
          9, b"HTTP/1.1 200 OK\r\n", 6, b"Content-Length: 0\r\n\r\n")
    assert [r.status for r in parse_responses(c.received())] == [102, 200]
    assert not n.aborted


def _play(h: Harness, n, *timeline) -> None:
    """The node's side of a timeline: a number is seconds passing, bytes are sent."""
    for step in timeline:
        if isinstance(step, bytes):
            n.respond(step)
        else:
            h.advance(step)


def one_node(**config) -> Harness:
    h = Harness(**config)
    h.node("n1", 8081, contexts=("/app",))
    return h


def test_stale_pooled_connection_retried_fresh_on_same_node():
    h = one_node()
    c = h.client()
    c.send(GET)
    n = h.accept()
    n.respond(OK_100)
    c.received()
    port = n.port
    c.send(GET)
    assert not h.pending()
    n.close()  # the node had closed the idle connection: keep-alive race
    assert h.failures == []
    m = h.accept(port)  # a fresh connection to the same node
    assert parse_requests(m.received())[0].url == b"/app/x"
    m.respond(OK_100)
    assert parse_responses(c.received())[0].status == 200
    assert h.counters_idle()


def test_stale_pooled_connection_not_replayable_gives_502():
    h = one_node()
    c = h.client()
    c.send(GET)
    n = h.accept()
    n.respond(OK_100)
    c.received()
    c.send(b"POST /app/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    n.close()
    assert parse_responses(c.received())[0].status == 502
    assert h.failures == []
    assert not h.pending()


def test_garbage_from_node_is_502_without_marking_or_failover():
    """Issue 13 §2: a malformed response head fails that request only."""
    h = two_nodes()
    c = h.client()
    c.send(GET)
    n = h.accept()
    n.respond(b"SPDY/9 nonsense\r\n\r\n")
    assert n.aborted
    assert parse_responses(c.received())[0].status == 502
    assert h.failures == []
    assert not h.pending()
    route = "n1" if n.port == 8081 else "n2"
    assert h.nodeEntry(route).rt.fails == 1
    assert not h.nodeEntry(route).rt.in_error
    assert h.counters_idle()
    # the next requests are still served by both nodes
    ports = set()
    for _ in range(2):
        c.send(GET)
        m = h.accept()
        ports.add(m.port)
        m.respond(OK_100)
        assert parse_responses(c.received())[0].status == 200
    assert ports == {8081, 8082}
    assert h.nodeEntry(route).rt.fails == 0  # an answer resets the count


def test_garbage_after_body_sent_is_502():
    h = one_node()
    c = h.client()
    c.send(b"POST /app/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nz")
    n = h.accept()
    n.respond(b"HTTP/1.1 2000 What\r\n\r\n")
    assert parse_responses(c.received())[0].status == 502
    assert h.failures == []  # response-level: passive health only
    assert h.nodeEntry("n1").rt.fails == 1
    assert h.counters_idle()


def test_last_node_failing_gives_503():
    h = one_node()
    c = h.client()
    c.send(GET)
    h.refuse()
    assert parse_responses(c.received())[0].status == 503
    assert h.counters_idle()


def test_no_context_gives_configured_status():
    h = Harness(response_status_on_no_context=410)
    h.node("n1", 8081, contexts=("/app",))
    c = h.client()
    c.send(b"GET /other HTTP/1.1\r\nHost: a\r\n\r\n")
    assert parse_responses(c.received())[0].status == 410
    assert not c.closed
    assert not h.pending()


def test_no_usable_node_503():
    h = Harness()
    h.node("n1", 8081, contexts=("/app",), load=-1)
    c = h.client()
    c.send(GET)
    resp = parse_responses(c.received())[0]
    assert resp.status == 503
    assert resp.header(b"Retry-After") is not None


def test_wait_worker_retries_election_until_a_node_comes_back():
    b = BalancerSettings("mycluster", wait_worker=3.0)
    h = Harness()
    h.node("n1", 8081, contexts=("/app",), balancer=b, load=-1)
    c = h.client()
    c.send(GET)
    h.advance(1)
    assert c.received() == b""
    assert not h.pending()
    h.registry.apply_status("n1", 100, True)
    h.advance(0.2, step=0.05)
    n = h.accept()
    n.respond(OK_100)
    assert parse_responses(c.received())[0].status == 200


def test_wait_worker_gives_up_with_503():
    b = BalancerSettings("mycluster", wait_worker=2.0)
    h = Harness()
    h.node("n1", 8081, contexts=("/app",), balancer=b, load=-1)
    c = h.client()
    c.send(GET)
    h.advance(1.5, step=0.05)
    assert c.received() == b""
    h.advance(1, step=0.05)
    assert parse_responses(c.received())[0].status == 503


def test_client_leaving_during_wait_worker_cancels_retry():
    b = BalancerSettings("mycluster", wait_worker=5.0)
    h = Harness()
    h.node("n1", 8081, contexts=("/app",), balancer=b, load=-1)
    c = h.client()
    c.send(GET)
    h.advance(0.5, step=0.05)
    c.lose()
    h.registry.apply_status("n1", 100, True)
    h.advance(1, step=0.05)
    assert not h.pending()
    assert h.counters_idle()


def test_sticky_route_followed():
    h = two_nodes()
    c = h.client()
    c.send(b"GET /app/x HTTP/1.1\r\nHost: a\r\nCookie: JSESSIONID=abc.n2\r\n\r\n")
    n = h.accept(8082)
    n.respond(OK_100)
    for _ in range(3):
        c.send(b"GET /app/x HTTP/1.1\r\nHost: a\r\nCookie: JSESSIONID=abc.n2\r\n\r\n")
        assert not h.pending()
        assert parse_requests(n.received())[0].url == b"/app/x"
        n.respond(OK_100)
    assert h.nodeEntry("n2").rt.requests == 4
    assert h.nodeEntry("n1").rt.requests == 0


def test_sticky_session_remove_strips_cookie_on_failover():
    b = BalancerSettings("mycluster", sticky_remove=True, sticky_force=False)
    h = two_nodes(b)
    h.registry.set_error("n1", "test")
    c = h.client()
    c.send(b"GET /app/x HTTP/1.1\r\nHost: a\r\nCookie: other=1; JSESSIONID=abc.n1\r\n\r\n")
    n = h.accept(8082)
    [req] = parse_requests(n.received())
    assert req.all(b"Cookie") == [b"other=1"]


def test_sticky_session_remove_strips_path_parameter():
    b = BalancerSettings("mycluster", sticky_remove=True, sticky_force=False)
    h = two_nodes(b)
    h.registry.set_error("n1", "test")
    c = h.client()
    c.send(b"GET /app/x;jsessionid=abc.n1?q=1 HTTP/1.1\r\nHost: a\r\n\r\n")
    [req] = parse_requests(h.accept(8082).received())
    assert req.url == b"/app/x?q=1"


def test_node_in_error_answering_is_reported_as_recovered():
    """A sticky request retries a node in error after worker_retry; success is reported."""
    h = two_nodes()
    h.registry.set_error("n1", "test")
    h.advance(61)
    c = h.client()
    c.send(b"GET /app/x HTTP/1.1\r\nHost: a\r\nCookie: JSESSIONID=abc.n1\r\n\r\n")
    n = h.accept(8081)
    n.respond(OK_100)
    assert h.successes == ["n1"]


def test_unknown_node_type_gives_502():
    h = Harness()
    h.node("n1", 8009, contexts=("/app",), type="ajp")
    c = h.client()
    c.send(GET)
    assert parse_responses(c.received())[0].status == 502
    assert h.counters_idle()


def test_counters_exact_across_failover():
    h = two_nodes()
    c = h.client()
    c.send(GET)
    assert h.in_flight("/app") == 1
    h.refuse()
    assert h.in_flight("/app") == 1
    assert sum(n.rt.busy for n in h.registry.table.nodes) == 1
    n = h.accept()
    n.respond(OK_100)
    assert h.counters_idle()
    assert sum(n.rt.requests for n in h.registry.table.nodes) == 2


def test_endless_response_head_is_a_protocol_error():
    h = Harness(max_header_size=1024)
    h.node("n1", 8081, contexts=("/app",))
    c = h.client()
    c.send(b"POST /app/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nz")
    n = h.accept()
    n.respond(b"HTTP/1.1 200 OK\r\nX-Big: ")
    for _ in range(3):
        n.respond(b"y" * 600)
    assert n.aborted
    assert parse_responses(c.received())[0].status == 502
    assert h.failures == []  # response-level: passive health only
    assert h.nodeEntry("n1").rt.fails == 1
    assert h.counters_idle()


def test_unsupported_response_transfer_coding():
    h = Harness()
    h.node("n1", 8081, contexts=("/app",))
    c = h.client()
    c.send(b"POST /app/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nz")
    n = h.accept()
    n.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
    assert parse_responses(c.received())[0].status == 502
    assert h.counters_idle()


def test_reset_then_refused_fails_over():
    """A node killed while it had the request: the reset is retried once on a
    fresh connection to it, which is refused (connect-level): the request
    fails over and the node is put in error."""
    h = two_nodes()
    c = h.client()
    c.send(GET)
    n = h.accept()
    n.received()
    n.close(ConnectionLost)
    h.refuse(n.port)
    assert [r for r, _ in h.failures] == ["n1" if n.port == 8081 else "n2"]
    m = h.accept()
    assert m.port != n.port
    m.respond(OK_100)
    assert parse_responses(c.received())[0].status == 200
    assert h.counters_idle()


def test_proxy_out_of_descriptors_is_not_a_node_failure():
    """
    The proxy itself cannot open a socket to the node (EMFILE: Twisted's
    ConnectBindError from socket()): the client gets 503 with Retry-After,
    one log line says why; the node is not put in error and no other node is
    tried (each would fail alike, and be put in error: a local shortage must
    not take the cluster down).  Once descriptors are back, the same node
    serves.
    """
    import errno

    from twisted.internet.error import ConnectBindError
    from twisted.logger import capturedLogs, formatEvent

    h = two_nodes()
    c = h.client()
    with capturedLogs() as events:
        c.send(GET)
        [(_, port, *_)] = h.pending()
        h.refuse(port, lambda: ConnectBindError(errno.EMFILE, "Too many open files"))
    [resp] = parse_responses(c.received())
    assert resp.status == 503 and resp.header(b"Retry-After") == b"10"
    assert h.failures == [] and not h.pending()
    assert not h.nodeEntry("n1").rt.in_error and not h.nodeEntry("n2").rt.in_error
    assert any("Too many open files" in formatEvent(e) for e in events)
    assert h.counters_idle()
    c.send(GET)
    n = h.accept()
    n.respond(OK_100)
    assert parse_responses(c.received())[0].status == 200


def test_a_node_timing_out_every_request_cannot_flood_the_log():
    """
    30 requests to a node that never answers time out together: 504 each, and
    the forwarder's "no data" lines are rate-limited per node (10 per 10 s,
    then one line counting those left out), as the front's 504 lines are.
    """
    from twisted.logger import capturedLogs, formatEvent

    h = Harness(timeout=10)
    h.node("n1", 8081, contexts=("/app",))
    clients = []
    with capturedLogs() as events:
        for _ in range(30):
            c = h.client()
            c.send(GET)
            h.accept()
            clients.append(c)
        h.advance(13)
        h.advance(11)
    assert all(parse_responses(c.received())[0].status == 504 for c in clients)
    texts = [formatEvent(e) for e in events]
    lines = [t for t in texts if "no data for" in t and t.startswith("node n1")]
    assert 1 <= len(lines) <= 10, lines
    assert any("more similar messages" in t and "node n1" in t for t in texts), texts
    assert h.counters_idle()
