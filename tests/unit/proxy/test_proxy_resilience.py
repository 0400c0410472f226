"""
The front's side of passive health and the retry budget (docs/balancing.md,
"Beyond mod_proxy_cluster"), and issue 13 §2: one bad request never puts
every node of a context in error.
"""

from tests.support.proxy_testlib import OK_100, Harness, parse_requests, parse_responses
from twisted.internet.error import ConnectionLost

from modcluster.cluster.model import BalancerSettings

GET = b"GET /app/x HTTP/1.1\r\nHost: a\r\n\r\n"
GARBAGE = b"GET /app/garbage HTTP/1.1\r\nHost: a\r\n\r\n"


def two_nodes(**config) -> Harness:
    h = Harness(**config)
    h.node("n1", 8081, contexts=("/app",))
    h.node("n2", 8082, contexts=("/app",))
    return h


class Nodes:
    """The node ends of every connection the proxy opened, by port."""

    def __init__(self, h) -> None:
        self.h = h
        self.conns = []

    def exchange(self, c, request, answer_for):
        """Send one request; the node connection that gets it answers
        answer_for(port).  Returns (port, responses)."""
        c.send(request)
        while self.h.pending():
            self.conns.append(self.h.accept())
        for n in self.conns:
            if not n.aborted and n.received():
                n.respond(answer_for(n.port))
                return n.port, parse_responses(c.received())
        raise AssertionError("no node connection got the request")


def test_garbage_request_costs_one_502_and_the_cluster_keeps_serving():
    """Issue 13 §2: n1 answers /app/garbage with non-HTTP bytes; the client
    gets one 502 and every other request is served by both nodes."""
    h = two_nodes()
    nodes = Nodes(h)
    c = h.client()
    statuses = []
    for _ in range(4):
        port, [resp] = nodes.exchange(
            c, GARBAGE, lambda p: b"\x00\x01garbage\r\n\r\n" if p == 8081 else OK_100)
        statuses.append((port, resp.status))
    assert statuses.count((8081, 502)) == 2
    assert statuses.count((8082, 200)) == 2
    assert not h.nodeEntry("n1").rt.in_error
    assert h.failures == []
    ports = []
    for _ in range(4):
        port, [resp] = nodes.exchange(c, GET, lambda p: OK_100)
        assert resp.status == 200
        ports.append(port)
    assert sorted(ports) == [8081, 8081, 8082, 8082]


def test_consecutive_failures_eject_the_node():
    h = two_nodes(eject_failures=3, eject_time=30)
    nodes = Nodes(h)
    c = h.client()
    bad = 0
    while bad < 3:
        port, [resp] = nodes.exchange(
            c, GET, lambda p: b"garbage\r\n\r\n" if p == 8081 else OK_100)
        bad += resp.status == 502
    rt = h.nodeEntry("n1").rt
    assert rt.ejected_until == h.reactor.seconds() + 30
    assert rt.ejections == 1 and not rt.in_error
    for _ in range(5):
        port, [resp] = nodes.exchange(c, GET, lambda p: OK_100)
        assert (port, resp.status) == (8082, 200)
    h.advance(31)  # the ejection is over: back, through slow start
    ports = [nodes.exchange(c, GET, lambda p: OK_100)[0] for _ in range(40)]
    assert 1 <= ports.count(8081) <= 8


def test_5xx_counts_only_when_configured():
    for on, expected in ((False, 0), (True, 1)):
        h = Harness(eject_on_5xx=on)
        h.node("n1", 8081, contexts=("/app",))
        c = h.client()
        c.send(GET)
        h.accept().respond(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
        assert parse_responses(c.received())[0].status == 503
        assert h.nodeEntry("n1").rt.fails == expected


def test_retry_budget_limits_failover():
    """With a budget of 0 replays (share 0, minimum 0), a refused connect is
    answered 503 at once instead of being replayed."""
    h = two_nodes(retry_budget=0.0, retry_budget_min=0)
    c = h.client()
    c.send(GET)
    h.refuse()
    assert parse_responses(c.received())[0].status == 503
    assert not h.pending()
    assert h.factory.retry_budget.refused == 1


def test_retry_budget_allows_the_minimum():
    h = Harness(retry_budget=0.0, retry_budget_min=1)
    b = BalancerSettings("mycluster", max_attempts=3)
    for i, port in enumerate((8081, 8082, 8083)):
        h.node(f"n{i}", port, contexts=("/app",), balancer=b)
    c = h.client()
    c.send(GET)
    h.refuse()  # replayed: the one replay of the window
    assert len(h.pending()) == 1
    h.refuse()  # not replayed: the budget is used up
    assert parse_responses(c.received())[0].status == 503
    assert not h.pending()
    assert h.factory.retry_budget.refused == 1


def test_keep_alive_race_retry_is_outside_the_budget():
    h = Harness(retry_budget=0.0, retry_budget_min=0)
    h.node("n1", 8081, contexts=("/app",))
    c = h.client()
    c.send(GET)
    n = h.accept()
    n.respond(OK_100)
    c.received()
    c.send(GET)
    n.close(ConnectionLost)  # the pooled connection was closed by the node
    m = h.accept(8081)
    m.respond(OK_100)
    assert parse_responses(c.received())[0].status == 200
    assert h.factory.retry_budget.refused == 0


# -- per-node concurrency limit with a bounded FIFO queue --------------------------


def test_excess_requests_wait_in_fifo_order_for_a_slot():
    h = Harness(max_in_flight_per_node=2, node_queue_size=10)
    h.node("n1", 8081, contexts=("/app",))
    clients = [h.client() for _ in range(4)]
    for i, c in enumerate(clients):
        c.send(b"GET /app/%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
    conns = [h.accept(), h.accept()]
    assert [parse_requests(n.received())[0].url for n in conns] == [b"/app/0", b"/app/1"]
    assert not h.pending()  # two in flight, two queued
    assert h.factory.queued() == 2
    assert h.nodeEntry("n1").rt.busy == 2
    for expected in (b"/app/2", b"/app/3"):
        conns[0].respond(OK_100)  # a slot frees: the oldest waiting request goes
        assert parse_requests(conns[0].received())[0].url == expected
        conns.append(conns.pop(0))
    for n in conns:
        n.respond(OK_100)
    for c in clients:
        assert parse_responses(c.received())[0].status == 200
    assert h.counters_idle()
    assert h.factory.queues == {}


def test_queue_timeout_gives_503_with_retry_after():
    h = Harness(max_in_flight_per_node=1, node_queue_timeout=3.0)
    h.node("n1", 8081, contexts=("/app",))
    a, b = h.client(), h.client()
    a.send(GET)
    n = h.accept()
    b.send(GET)
    h.advance(2)
    assert b.received() == b""
    h.advance(2)
    [resp] = parse_responses(b.received())
    assert resp.status == 503 and resp.header(b"Retry-After") == b"10"
    assert h.factory.queue_rejected == 1
    n.respond(OK_100)
    assert parse_responses(a.received())[0].status == 200
    assert h.counters_idle() and h.factory.queues == {}


def test_full_queue_gives_503_at_once():
    h = Harness(max_in_flight_per_node=1, node_queue_size=1)
    h.node("n1", 8081, contexts=("/app",))
    a, b, c = h.client(), h.client(), h.client()
    a.send(GET)
    h.accept()
    b.send(GET)
    c.send(GET)
    assert b.received() == b""
    assert parse_responses(c.received())[0].status == 503
    assert h.factory.queue_rejected == 1


def test_client_leaving_the_queue_frees_its_place():
    h = Harness(max_in_flight_per_node=1, node_queue_size=1)
    h.node("n1", 8081, contexts=("/app",))
    a, b, c = h.client(), h.client(), h.client()
    a.send(GET)
    n = h.accept()
    b.send(GET)
    b.lose()
    c.send(GET)  # b's place was taken back: c waits instead of a 503
    assert c.received() == b""
    n.respond(OK_100)
    m = [x for x in [n] if x.received()] or [h.accept()]
    m[0].respond(OK_100)
    assert parse_responses(c.received())[0].status == 200
    assert h.counters_idle()


def test_other_nodes_are_not_held_up_by_a_full_one():
    h = Harness(max_in_flight_per_node=1)
    h.node("n1", 8081, contexts=("/a",))
    h.node("n2", 8082, contexts=("/b",))
    x, y, z = h.client(), h.client(), h.client()
    x.send(b"GET /a/1 HTTP/1.1\r\nHost: a\r\n\r\n")
    h.accept(8081)
    y.send(b"GET /a/2 HTTP/1.1\r\nHost: a\r\n\r\n")  # waits for n1
    z.send(b"GET /b/1 HTTP/1.1\r\nHost: a\r\n\r\n")
    h.accept(8082).respond(OK_100)
    assert parse_responses(z.received())[0].status == 200



def test_failover_replays_sum_the_node_counters_only_past_the_minimum():
    """A failing cluster does not walk every node on each replay: the
    balancer's request total is asked for only once the budget's minimum
    of replays is reached."""
    h = Harness(retry_budget=0.0, retry_budget_min=2)
    b = BalancerSettings("mycluster", max_attempts=2)
    for i in range(6):
        h.node(f"n{i}", 8081 + i, contexts=("/app",), balancer=b)
    real = h.factory.balancer_requests
    asked = []

    def spy(name):
        asked.append(name)
        return real(name)

    h.factory.balancer_requests = spy
    for _ in range(5):
        c = h.client()
        c.send(GET)
        while h.pending():
            h.refuse()
        assert parse_responses(c.received())[0].status == 503
    refused = h.factory.retry_budget.refused
    assert refused >= 1
    assert asked == ["mycluster"] * refused  # never for the two allowed replays


def test_balancer_requests_is_summed_once_per_second():
    h = Harness()
    h.node("n1", 8081, contexts=("/app",))
    h.node("n2", 8082, contexts=("/app",))
    h.nodeEntry("n1").rt.requests = 5
    h.nodeEntry("n2").rt.requests = 7
    assert h.factory.balancer_requests("mycluster") == 12
    h.nodeEntry("n1").rt.requests = 50
    assert h.factory.balancer_requests("mycluster") == 12  # same second
    h.advance(1)  # the sweep: a new coarse-clock second
    assert h.factory.balancer_requests("mycluster") == 57
