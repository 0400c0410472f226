"""
The client side: pipelining, refused requests (400/405/413/414/431), client
timeouts, client aborts and the exactness of the in-flight counters.
"""

import pytest
from tests.support.proxy_testlib import OK_100, Harness, parse_requests, parse_responses


def one_node(**config) -> Harness:
    h = Harness(**config)
    h.node("n1", 8081)
    return h


def test_pipelined_requests_answered_in_order():
    """Two requests in one read: the second is forwarded only after the first is answered."""
    h = one_node()
    c = h.client()
    c.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    assert [r.url for r in parse_requests(n.received())] == [b"/1"]
    assert c.transport.producerState == "paused"  # not reading further meanwhile
    n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
    assert [r.url for r in parse_requests(n.received())] == [b"/2"]
    n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
    assert [r.body for r in parse_responses(c.received())] == [b"1", b"2"]
    assert c.transport.producerState == "producing"
    assert h.counters_idle()


def test_pipelined_request_with_body_held_until_its_turn():
    h = one_node()
    c = h.client()
    c.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
           b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
           b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    assert [r.url for r in parse_requests(n.received())] == [b"/1"]
    n.respond(OK_100)
    [post] = parse_requests(n.received())
    assert (post.url, post.body) == (b"/2", b"abc")
    n.respond(OK_100)
    assert parse_requests(n.received())[0].url == b"/3"
    n.respond(OK_100)
    assert len(parse_responses(c.received())) == 3


def test_pipelined_error_answered_after_earlier_requests():
    h = one_node()
    c = h.client()
    c.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nBAD REQUEST LINE\r\n\r\n")
    n = h.accept()
    assert c.received() == b""
    n.respond(OK_100)
    raw = c.received()
    assert [r.status for r in parse_responses(raw)] == [200, 400]
    assert c.closed


@pytest.mark.parametrize("data,status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 405),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
])
def test_malformed_requests_refused_and_closed(data, status):
    h = one_node()
    c = h.client()
    c.send(data)
    [resp] = parse_responses(c.received())
    assert resp.status == status
    assert resp.header(b"Connection") == b"close"
    assert int(resp.header(b"Content-Length")) == len(resp.body)
    assert c.closed
    assert not h.pending()


def test_head_too_large():
    h = one_node(max_header_size=1024)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 2000 + b"\r\n\r\n")
    assert parse_responses(c.received())[0].status == 431
    assert c.closed


def test_head_too_large_arriving_slowly():
    """A head that never ends is refused once it passes the cap (memory bounded)."""
    h = one_node(max_header_size=1024)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
    for _ in range(3):
        c.send(b"x" * 500)
    assert parse_responses(c.received())[0].status == 431
    assert c.closed


def test_target_too_long():
    h = one_node(max_header_size=1024)
    c = h.client()
    c.send(b"GET /" + b"a" * 1500 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert parse_responses(c.received())[0].status in (414, 431)
    assert c.closed


def test_body_too_large_by_content_length():
    h = one_node(max_request_body=10)
    c = h.client()
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n")
    assert parse_responses(c.received())[0].status == 413
    assert not h.pending()
    assert c.closed


def test_body_too_large_chunked_aborts_upstream():
    """A chunked body passing the cap mid-stream: 413, node exchange cancelled, counters back."""
    h = one_node(max_request_body=10)
    c = h.client()
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n01234567\r\n")
    n = h.accept()
    n.received()
    assert h.in_flight() == 1
    c.send(b"8\r\n89abcdef\r\n")
    assert parse_responses(c.received())[0].status == 413
    assert n.aborted
    assert h.counters_idle()


def test_client_abort_mid_response_cancels_node_exchange():
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
    assert h.in_flight() == 1
    assert h.nodeEntry("n1").rt.busy == 1
    c.lose()
    assert n.aborted
    assert h.counters_idle()
    n.close()  # the node connection's end arrives later: nothing breaks
    assert h.counters_idle()
    assert h.failures == []


def test_client_abort_before_response():
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    c.lose()
    assert n.aborted
    assert h.counters_idle()


def test_client_abort_while_connecting_keeps_new_connection_pooled():
    h = one_node()
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    c.lose()
    assert h.counters_idle()
    n = h.accept()  # the connection completes after the client left
    assert n.received() == b""
    c2 = h.client()
    c2.send(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
    assert not h.pending()
    assert parse_requests(n.received())[0].url == b"/again"


def test_client_abort_mid_request_body():
    h = one_node()
    c = h.client()
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
    n = h.accept()
    n.received()
    c.lose()
    assert n.aborted
    assert h.counters_idle()


def test_idle_keep_alive_client_closed_after_timeout():
    h = one_node(client_timeout=5)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    h.accept().respond(OK_100)
    c.received()
    h.advance(4)
    assert not c.closed
    h.advance(4)
    assert c.closed
    assert c.received() == b""  # idle close: no response


def test_stalled_head_gets_408():
    h = one_node(client_timeout=5)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n")
    h.advance(8)
    assert parse_responses(c.received())[0].status == 408
    assert c.closed


def test_stalled_request_body_gets_408_and_cancels():
    h = one_node(client_timeout=5)
    c = h.client()
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    n = h.accept()
    n.received()
    h.advance(8)
    assert parse_responses(c.received())[0].status == 408
    assert n.aborted
    assert h.counters_idle()


def test_waiting_for_node_is_not_a_client_timeout():
    h = one_node(client_timeout=5, timeout=30)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    h.advance(20)
    assert not c.closed
    n.respond(OK_100)
    assert parse_responses(c.received())[0].status == 200


def test_client_not_reading_response_pauses_node_and_times_out():
    h = one_node(client_timeout=5)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    n = h.accept()
    n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
    c.proto.pauseProducing()  # what the transport does when its buffer is full
    assert n.transport.producerState == "paused"
    c.proto.resumeProducing()
    assert n.transport.producerState == "producing"
    c.proto.pauseProducing()
    h.advance(10)
    assert c.transport.disconnected
    assert n.aborted
    assert h.counters_idle()


def test_slow_node_pauses_client_body():
    """The node connection's write buffer is full: the client is not read."""
    h = one_node()
    c = h.client()
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
    n = h.accept()
    n.proto.pauseProducing()  # the node transport says: stop writing
    assert c.transport.producerState == "paused"
    c.send(b"defgh")  # what was already read is still passed on
    n.proto.resumeProducing()
    assert c.transport.producerState == "producing"
    assert parse_requests(n.received())[0].body == b"abcdefgh"


def test_body_buffered_while_connecting_then_paused():
    """Until the node connection exists the body is held, up to a bound."""
    from modcluster.proxy.exchange import BODY_BUFFER

    h = one_node()
    c = h.client()
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (BODY_BUFFER * 2))
    c.send(b"x" * (BODY_BUFFER + 10))
    assert c.transport.producerState == "paused"
    n = h.accept()
    assert c.transport.producerState == "producing"
    assert len(parse_requests(n.received())[0].body) == BODY_BUFFER + 10


def test_routing_bug_gives_500_and_frees_counters(monkeypatch):
    import modcluster.proxy.exchange as exchange

    def broken(*args):
        raise ZeroDivisionError("bug")

    h = one_node()
    monkeypatch.setattr(exchange, "choose", broken)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert parse_responses(c.received())[0].status == 500
    assert h.counters_idle()
    assert not h.pending()


def test_error_after_forward_started_frees_counters(monkeypatch):
    """A bug while handing the exchange over (after counting) still releases."""
    h = one_node()
    monkeypatch.setattr(h.factory.http, "forward", lambda ex, fresh: 1 / 0)
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert parse_responses(c.received())[0].status == 500
    assert h.counters_idle()


def test_too_many_pipelined_requests_close_after_serving_the_queue():
    from modcluster.proxy.client import MAX_PIPELINE

    h = one_node()
    c = h.client()
    c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n" * (MAX_PIPELINE + 5))
    n = h.accept()
    served = 0
    while True:
        reqs = parse_requests(n.received())
        if not reqs:
            break
        served += len(reqs)
        n.respond(OK_100)
    assert served == MAX_PIPELINE + 1  # the one being served + the queue
    assert len(parse_responses(c.received())) == served
    assert c.closed
    assert h.counters_idle()


def test_forwarded_host_and_server_appended_to_client_values():
    h = one_node(server_name="p2")
    c = h.client()
    c.send(b"GET / HTTP/1.1\r\nHost: b\r\nX-Forwarded-Host: a\r\n"
           b"X-Forwarded-Server: p1\r\n\r\n")
    [req] = parse_requests(h.accept().received())
    assert req.all(b"X-Forwarded-Host") == [b"a, b"]
    assert req.all(b"X-Forwarded-Server") == [b"p1, p2"]
    assert req.all(b"X-Forwarded-For") == [b"127.0.0.9"]


def test_client_address_is_the_one_given_to_build_protocol():
    """
    The listening port builds the peer's address once for buildProtocol; the
    connection uses that one (X-Forwarded-For) instead of building another
    with the transport's getPeer() on every accept.
    """
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    h = one_node()
    t = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8000),
                        peerAddress=IPv4Address("TCP", "127.0.0.9", 40000))
    calls = []
    get_peer = t.getPeer
    t.getPeer = lambda: calls.append(1) or get_peer()
    p = h.factory.buildProtocol(IPv4Address("TCP", "127.0.0.7", 40001))
    p.makeConnection(t)
    assert calls == []
    assert (p.client.remote_addr, p.client.remote_port) == ("127.0.0.7", 40001)
    p.dataReceived(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
    [req] = parse_requests(h.accept().received())
    assert req.all(b"X-Forwarded-For") == [b"127.0.0.7"]


# -- reading left unregistered by the accept loop (ClientProtocol.deferReading) -------------

def _resumes(c) -> list:
    """Record the client transport's resumeProducing calls (its registration for reading)."""
    calls: list = []
    resume = c.transport.resumeProducing

    def recording():
        calls.append(True)
        resume()

    c.transport.resumeProducing = recording
    return calls


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
])
def test_close_request_read_whole_defers_reading_until_the_sweep(request_bytes):
    """
    A request after which nothing is read, read whole: the accept loop need not
    register the connection; if it is still open at the next sweep (a slow
    node), the sweep registers it, so a client going away is noticed then.
    """
    h = one_node(timeout=30)
    c = h.client()
    resumes = _resumes(c)
    c.send(request_bytes)
    assert c.proto.deferReading()
    n = h.accept()
    assert [r.url for r in parse_requests(n.received())] == [b"/"]  # never /2
    assert resumes == []
    h.advance(1)
    assert resumes == [True]  # registered by the sweep
    h.advance(3)
    assert resumes == [True]  # once
    c.lose()  # the client went away: noticed now that it is read
    assert n.aborted
    assert h.counters_idle()


def test_close_request_answered_before_the_sweep_is_never_registered():
    h = one_node()
    c = h.client()
    resumes = _resumes(c)
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert c.proto.deferReading()
    h.accept().respond(OK_100)
    [resp] = parse_responses(c.received())
    assert resp.status == 200
    assert c.closed
    h.advance(2)
    assert resumes == []
    assert h.counters_idle()


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",  # keep-alive: the next request is read
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n",  # head not complete
    b"POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 5\r\n\r\nab",  # body
    b"",  # nothing read yet
])
def test_connection_still_to_be_read_is_registered(request_bytes):
    h = one_node()
    c = h.client()
    if request_bytes:
        c.send(request_bytes)
    assert not c.proto.deferReading()
    assert not c.proto._unread


def test_paused_connection_registers_when_it_resumes():
    """Pipelined requests pause the reading: resuming it registers the connection."""
    h = one_node()
    c = h.client()
    resumes = _resumes(c)
    c.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert c.proto.deferReading()
    assert not c.proto._unread  # not the sweep's business
    n = h.accept()
    n.respond(OK_100)
    n.respond(OK_100)
    assert len(parse_responses(c.received())) == 2
    assert resumes == [True]


def test_drain_registers_a_deferred_busy_connection():
    h = one_node(timeout=30)
    c = h.client()
    resumes = _resumes(c)
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert c.proto.deferReading()
    h.accept()
    assert h.factory.drain() == 1
    assert resumes == [True]


def test_plain_tcp_transport_registration_is_twisteds():
    """
    On a plain tcp.Server, connectionMade registers the protocol as its
    streaming producer itself (no registerProducer call); the transport and
    the client facts end up as Twisted's registerProducer path leaves them
    (a subclass of tcp.Server takes that path).
    """
    import socket

    from twisted.internet import address, tcp
    from twisted.internet.testing import MemoryReactor

    class Sub(tcp.Server):
        pass

    h = Harness()
    states = []
    for cls in (tcp.Server, Sub):
        a, b = socket.socketpair()
        try:
            peer = address.IPv4Address("TCP", "127.0.0.7", 4711)
            proto = h.factory.buildProtocol(peer)
            t = cls(a, proto, ("127.0.0.7", 4711), None, 0, MemoryReactor())
            calls = []
            real = t.registerProducer
            t.registerProducer = lambda p, s, real=real, calls=calls: (calls.append(p),
                                                                       real(p, s))
            proto.makeConnection(t)
            assert t.producer is proto and t.streamingProducer is True
            client = proto.client
            states.append((len(calls), client.remote_addr, client.remote_port, client.secure,
                           client.transport is t, proto in h.factory._clients))
            proto.connectionLost(None)
        finally:
            a.close()
            b.close()
    assert states == [(0, "127.0.0.7", 4711, False, True, True),
                      (1, "127.0.0.7", 4711, False, True, True)]


def test_client_facts_on_a_plain_tcp_transport_are_client_infos():
    """
    connectionMade on a plain tcp.Server with an IPv4 peer builds its
    ClientInfo without the __init__ call: every slot as ClientInfo(host,
    port, transport=t) sets it, and the local address is
    still read when asked for.
    """
    import socket

    from twisted.internet import address, tcp
    from twisted.internet.testing import MemoryReactor

    from modcluster.proxy.interfaces import ClientInfo

    h = Harness()
    listener = socket.create_server(("127.0.0.1", 0))
    b = socket.create_connection(listener.getsockname())
    a = listener.accept()[0]
    listener.close()
    try:
        peer = address.IPv4Address("TCP", "127.0.0.7", 4711)
        proto = h.factory.buildProtocol(peer)
        t = tcp.Server(a, proto, ("127.0.0.7", 4711), None, 0, MemoryReactor())
        proto.makeConnection(t)
        ours = proto.client
        theirs = ClientInfo("127.0.0.7", 4711, transport=t)
        assert type(ours) is ClientInfo
        slots = [n for n in ClientInfo.__slots__ if n != "__weakref__"]
        for name in slots:
            assert getattr(ours, name) == getattr(theirs, name), name
        assert (ours.local_addr, ours.local_port) == a.getsockname()[:2]
        proto.connectionLost(None)
    finally:
        a.close()
        b.close()


def test_writer_made_at_the_first_write():
    """
    The connection's writer (direct_writer) is made by the first write, not
    by connectionMade: a Connection: close response goes out by send_last,
    and such a connection never needs one.
    """
    import socket

    from twisted.internet import address, tcp
    from twisted.internet.testing import MemoryReactor

    h = Harness()
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        proto = h.factory.buildProtocol(address.IPv4Address("TCP", "127.0.0.7", 4711))
        t = tcp.Server(a, proto, ("127.0.0.7", 4711), None, 0, MemoryReactor())
        proto.makeConnection(t)
        assert proto._writer is None
        proto._write(b"one,")
        writer = proto._writer
        assert writer is not None
        proto._write(b"two")
        assert proto._writer is writer
        # kept as an attribute of the instance only (none of the class: a
        # specialised read), the method not shadowed
        assert "_writer" in vars(proto) and not hasattr(type(proto), "_writer")
        assert "_write" not in vars(proto)
        assert b.recv(100) == b"one,two"
        proto.connectionLost(None)
    finally:
        a.close()
        b.close()


def _answer_over_the_high_water_mark(request: bytes, check, ended) -> None:
    """
    The client protocol on a real socket whose peer reads nothing (its
    socket full), C{request} received, the node's answer four times Twisted's
    high-water mark; C{check(factory, proto, transport)} after the answer,
    then the transport's writes pumped as the reactor would until
    C{ended(transport)}, which must hold; the client then reads the whole
    answer and the end of the stream.
    """
    import select
    import socket

    from twisted.internet import address, tcp
    from twisted.internet.testing import MemoryReactor
    from twisted.python.failure import Failure

    h = Harness()
    h.node("n1", 8081)
    a, b = socket.socketpair()
    reactor = MemoryReactor()
    try:
        a.setblocking(False)
        proto = h.factory.buildProtocol(address.IPv4Address("TCP", "127.0.0.7", 4711))
        t = tcp.Server(a, proto, ("127.0.0.7", 4711), None, 0, reactor)
        proto.makeConnection(t)
        assert t.producer is proto
        filled = 0
        try:
            while True:  # the client reads nothing: its socket is full
                filled += a.send(b"z" * 65536)
        except BlockingIOError:
            pass
        proto.dataReceived(request)
        n = h.accept()
        body = b"y" * (4 * t.bufferSize)
        n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        check(h.factory, proto, t)
        got = b""
        b.setblocking(False)
        for _ in range(10_000):
            if ended(t):
                break
            try:
                got += b.recv(1 << 20)
            except BlockingIOError:
                pass
            if t in reactor.getWriters() and select.select([], [a], [], 0.05)[1]:
                why = t.doWrite()
                if why:
                    t.connectionLost(Failure(why))
        assert ended(t)
        b.settimeout(2)
        while True:
            more = b.recv(1 << 20)
            if not more:
                break
            got += more
        assert got[filled:].startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(body)
    finally:
        a.close()
        b.close()


def test_close_answer_over_the_high_water_mark_ends():
    """
    A Connection: close answer that the client's socket does not take (a
    client that stopped reading) and that is larger than Twisted's
    high-water mark: Twisted pauses the client protocol (its registered
    producer); once everything is sent the connection is closed, not left
    open with the protocol resumed as producer.
    """
    def check(factory, proto, t):
        assert t.disconnecting and t.connected  # the rest is in Twisted's buffer

    _answer_over_the_high_water_mark(
        b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", check,
        lambda t: not t.connected)


def test_lingering_close_over_the_high_water_mark_sends_the_fin():
    """
    The answer ends before the request body (a lingering close: the proxy
    half-closes and reads what the client still sends) and is larger than
    Twisted's high-water mark with the client's socket full: once it is
    sent, the FIN follows, as for a smaller answer.
    """
    def check(factory, proto, t):
        assert t._writeDisconnecting or t.disconnecting

    _answer_over_the_high_water_mark(
        b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n"
        + b"u" * 1000, check, lambda t: t._writeDisconnected or not t.connected)


def test_drain_closes_an_idle_connection_over_the_high_water_mark():
    """
    Stopping (L{ProxyFactory.drain}) closes an idle kept-alive connection
    whose last answer is still in Twisted's buffer over its high-water mark
    (a client that reads slowly: the client protocol, its producer, paused):
    once everything is sent the connection is closed, not left open with the
    protocol resumed as producer until the shutdown gives up.
    """
    def check(factory, proto, t):
        assert proto._current is None and t.connected and not t.disconnecting  # idle, kept
        assert t.producerPaused  # the answer went over the high-water mark
        assert factory.drain() == 0  # idle: closed, nothing busy

    _answer_over_the_high_water_mark(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n", check,
                                     lambda t: not t.connected)


def test_end_of_stream_after_complete_requests_answers_them_then_closes():
    """
    readConnectionLost (the client shut its sending side): requests read
    whole, the one being served and those queued, are answered, then the
    connection closes; the node connections go back to the pool.
    """
    h = one_node()
    c = h.client()
    c.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    c.proto.readConnectionLost()
    assert not c.closed
    n = h.accept()
    n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
    assert not c.closed
    n.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
    assert [r.body for r in parse_responses(c.received())] == [b"1", b"2"]
    assert c.closed
    assert h.counters_idle()


def test_end_of_stream_before_an_error_answer_closes_after_it():
    """The proxy's own answer to the last request (its node refused), then the close."""
    h = one_node()
    c = h.client()
    c.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
    c.proto.readConnectionLost()
    assert not c.closed
    h.refuse()
    assert parse_responses(c.received())[0].status == 503
    assert c.closed


@pytest.mark.parametrize("sent", [b"", b"GET /1 HTTP/1.1\r\nHo",
                                  b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nabc"])
def test_end_of_stream_without_a_complete_request_closes_at_once(sent):
    """Nothing in flight, a partial head or a partial body: the connection ends now."""
    h = one_node()
    c = h.client()
    if sent:
        c.send(sent)
    c.proto.readConnectionLost()
    assert c.closed
    assert b"HTTP/1.1 200" not in c.received()
