"""
What clients see, recorded: the access log line of every proxied request
(formats, escaping), the client-side counters behind the C{modcluster_proxy_*}
metrics, and the rate limit on per-request warnings.
"""

import json
import os
import re

from prometheus_client import CollectorRegistry, generate_latest
from tests.support.proxy_testlib import OK_100, Harness, parse_responses
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, capturedLogs

from modcluster.accesslog import AccessLine, LogFile, LogLimiter, escape, text
from modcluster.cluster.model import BalancerSettings
from modcluster.metrics import ClientCollector
from modcluster.proxy.observe import ClientStats, Observer, merge_exports

GET = b"GET /app/x?q=1 HTTP/1.1\r\nHost: a\r\nUser-Agent: curl/8\r\nReferer: http://r/\r\n\r\n"
#: httpd's combined format, as a log parser reads it
COMBINED = re.compile(
    rb'^(\S+) - - \[([^\]]+)\] "((?:[^"\\]|\\.)*)" (\d{3}) (\d+|-) '
    rb'"((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)"(.*)\n$')


class Lines:
    """A L{LogFile} stand-in that keeps the lines."""

    def __init__(self):
        self.lines = []

    def write(self, line):
        self.lines.append(line)

    def flush(self):
        pass


def observed(fmt="combined", limit=200, **config):
    h = Harness(**config)
    sink = Lines()
    stats = ClientStats(limit)
    obs = Observer(h.reactor.seconds, sink, AccessLine(fmt), stats)
    h.factory.observer = obs
    h.factory.stats = stats
    return h, sink, stats


def two_nodes(h):
    b = BalancerSettings("mycluster")
    h.node("n1", 8081, contexts=("/app",), balancer=b)
    h.node("n2", 8082, contexts=("/app",), balancer=b)


def test_combined_line_of_a_proxied_request():
    h, sink, stats = observed()
    h.node("n1", 8081, contexts=("/app",))
    h.reactor.advance(1_765_000_000)
    c = h.client()
    c.send(GET)
    n = h.accept()
    n.received()
    n.respond(OK_100)
    assert parse_responses(c.received())[0].status == 200
    assert sink.lines == [b'127.0.0.9 - - [06/Dec/2025:05:46:40 +0000] "GET /app/x?q=1 HTTP/1.1" '
                          b'200 5 "http://r/" "curl/8"\n']
    assert stats.rows[("/app", "n1")][:6] == [0, 0, 1, 0, 0, 0]


def test_extended_line_has_durations_node_context_failovers():
    h, sink, stats = observed("extended")
    two_nodes(h)
    c = h.client()
    c.send(GET)
    h.reactor.advance(0.25)
    h.refuse()
    n = h.accept()
    n.received()
    h.reactor.advance(0.5)
    n.respond(OK_100)
    [line] = sink.lines
    m = COMBINED.match(line)
    assert m is not None, line
    duration, upstream, node, context, failovers = m[8].split()
    assert float(duration) == 0.75 and float(upstream) == 0.5
    assert node in (b"n1", b"n2") and context == b'"/app"' and failovers == b"1"
    assert stats.failovers["connect"] == 1


def test_hostile_target_and_agent_cannot_forge_lines_or_fields():
    # what llhttp and the path checks let through: quotes in the target,
    # backslashes in its query; tabs,
    # quotes, backslashes and non-ASCII bytes in header values
    h, sink, _ = observed()
    h.node("n1", 8081, contexts=("/",))
    c = h.client()
    c.send(b'GET /a"b?c=\\ HTTP/1.1\r\nHost: a\r\n'
           b'User-Agent: x" 200 1 "-" "evil\t\\\x80\r\nReferer: \xc3\xa9\r\n\r\n')
    n = h.accept()
    n.received()
    n.respond(OK_100)
    [line] = sink.lines
    assert line.count(b"\n") == 1 and line.isascii()
    m = COMBINED.match(line)
    assert m is not None, line
    assert m[3] == b'GET /a\\"b?c=\\\\ HTTP/1.1'
    assert m[4] == b"200"
    assert m[6] == b"\\xc3\\xa9"
    assert m[7] == b'x\\" 200 1 \\"-\\" \\"evil\\x09\\\\\\x80'
    assert m[8] == b""


def test_formatter_escapes_cr_lf_and_quotes():
    line = AccessLine("combined").format(
        0.0, "::1", b"GET", b"/x\r\n127.0.0.1 - - fake", "1.0", 404, 0,
        ((b"User-Agent", b'a\r\nb"'),), 0.0, -1.0, "", "", 0)
    assert line == (b'::1 - - [01/Jan/1970:00:00:00 +0000] "GET /x\\x0d\\x0a127.0.0.1 - - fake '
                    b'HTTP/1.0" 404 - "-" "a\\x0d\\x0ab\\""\n')
    assert escape(b"plain/target?x=1") == b"plain/target?x=1"
    assert text(b"GET") == "GET" and text("/p\n") == "/p\\x0a"


def test_json_lines_are_valid_and_complete():
    h, sink, _ = observed("json")
    h.node("n1", 8081, contexts=("/app",))
    c = h.client()
    c.send(b'GET /app/"?\\ HTTP/1.1\r\nHost: a\r\nUser-Agent: \xe2\x82\xac\t"\xff\r\n\r\n')
    n = h.accept()
    n.received()
    n.respond(OK_100)
    c.send(b"GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n")
    first, second = (json.loads(line) for line in sink.lines)
    assert all(line.count(b"\n") == 1 and line.isascii() for line in sink.lines)
    assert first == {
        "time": "1970-01-01T00:00:00.000Z", "client": "127.0.0.9", "method": "GET",
        "target": '/app/"?\\', "protocol": "HTTP/1.1", "status": 200, "bytes": 5,
        "duration": 0.0, "upstream_time": 0.0, "node": "n1", "context": "/app",
        "failovers": 0, "referer": None, "user_agent": '\u20ac\t"\\xff'}
    assert second["status"] == 404 and second["node"] is None and second["bytes"] > 0
    assert second["upstream_time"] is None


def test_503_404_and_client_abort_are_logged_and_counted():
    h, sink, stats = observed()
    two_nodes(h)
    c = h.client()
    c.send(b"GET /none HTTP/1.1\r\nHost: a\r\n\r\n")
    assert parse_responses(c.received())[0].status == 404
    c.send(b"GET /app/x HTTP/1.1\r\nHost: a\r\n\r\n")
    h.refuse()
    h.refuse()
    assert parse_responses(c.received())[0].status == 503
    h.registry.clear_error("n1", "back")
    c.send(b"GET /app/y HTTP/1.1\r\nHost: a\r\n\r\n")
    assert h.pending()
    c.lose()  # before any answer
    statuses = [COMBINED.match(line)[4] for line in sink.lines]
    assert statuses == [b"404", b"503", b"499"]
    assert stats.unavailable == {"no_node": 0, "sticky_route_down": 0,
                                 "context_unavailable": 0, "node_failed": 1, "other": 0}
    assert stats.failovers["connect"] == 1
    assert stats.rows[("", "")][4] == 1
    assert sum(row[5] for row in stats.rows.values()) == 1
    assert sum(row[4] for row in stats.rows.values()) == 2  # the 404 and the 499
    assert stats.open == 0 and stats.connections == 1
    assert h.counters_idle()


def test_503_without_usable_node_is_no_node():
    h, sink, stats = observed()
    h.node("n1", 8081, contexts=("/app",))
    h.registry.set_error("n1", "down")
    c = h.client()
    c.send(b"GET /app/x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert parse_responses(c.received())[0].status == 503
    assert stats.unavailable["no_node"] == 1


def test_503_reasons_stopped_context_and_forced_sticky_route():
    from modcluster.cluster.model import ContextState

    h, _, stats = observed()
    h.node("n1", 8081, contexts=("/app",), state=ContextState.STOPPED)
    b = BalancerSettings("forced", sticky_force=True)
    h.node("n2", 8082, contexts=("/f",), balancer=b)
    h.node("n3", 8083, contexts=("/f",), balancer=b)
    h.registry.set_error("n3", "down")
    c = h.client()
    c.send(b"GET /app/x HTTP/1.1\r\nHost: a\r\n\r\n")
    c.send(b"GET /f/x HTTP/1.1\r\nHost: a\r\nCookie: JSESSIONID=X.n3\r\n\r\n")
    assert [r.status for r in parse_responses(c.received())] == [503, 503]
    assert stats.unavailable["context_unavailable"] == 1
    assert stats.unavailable["sticky_route_down"] == 1


def test_error_log_lines_show_text_not_reprs_and_are_rate_limited():
    h, _, _ = observed()
    c = h.client()
    with capturedLogs() as events:
        for i in range(30):
            c.send(b"GET /nothing/%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
        assert len(parse_responses(c.received())) == 30
        h.advance(11)
    from twisted.logger import formatEvent

    texts = [formatEvent(e) for e in events]
    refused = [t for t in texts if t.startswith("404 for")]
    assert len(refused) == 10
    assert refused[0].startswith("404 for GET /nothing/0 from 127.0.0.9:")
    assert not any("b'" in t for t in texts)
    assert any(t.startswith("20 more similar messages (404) suppressed") for t in texts)


def test_log_limiter_on_a_clock():
    clock = Clock()
    logger = Logger(namespace="t")
    limiter = LogLimiter(logger, clock.seconds, burst=3, interval=10.0)
    with capturedLogs() as events:
        emitted = [limiter.emit("k", LogLevel.warn, "event {n}", n=n) for n in range(5)]
        assert limiter.emit("other", LogLevel.info, "another")
        clock.advance(9)
        limiter.tick(clock.seconds())
        assert len(events) == 4
        clock.advance(1)
        assert limiter.emit("k", LogLevel.warn, "event {n}", n=5)
    assert emitted == [True, True, True, False, False]
    assert events[4]["held"] == 2 and "suppressed" in events[4]["log_format"]
    assert events[5]["n"] == 5


def test_tls_handshakes_and_open_connections_counted():
    h, _, stats = observed()
    a = h.client(secure=True)
    b = h.client(secure=True)
    plain = h.client()
    assert stats.open == 3 and stats.connections == 3
    a.proto.handshakeCompleted()
    a.lose()
    b.lose()
    plain.lose()
    plain.lose()
    assert (stats.tls_handshakes, stats.tls_failures, stats.open) == (1, 1, 0)


def test_tls_handshakes_cut_before_alpn_chose_a_protocol_are_counted():
    """
    With HTTP/2 on, an ssl: connection belongs to the ALPN negotiator until its
    handshake completes: one cut at the handshake deadline, one cut by a drain
    and one the client closed count as accepted and as TLS failures, as on the
    HTTP/1.1-only listener; a completed one counts once, as a handshake.
    """
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from modcluster.proxy.alpn import NegotiatingFactory

    h, _, stats = observed(request_header_timeout=5)
    neg = NegotiatingFactory(h.factory)
    conns = []
    for port in (40001, 40002, 40003, 40004):
        n = neg.buildProtocol(None)
        t = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        t.negotiatedProtocol = b"http/1.1"
        t.wrappedProtocol = n
        n.makeConnection(t)
        conns.append((n, t))
    (stalled, _), (drained, t_drained), (closed, _), (good, t_good) = conns
    t_good.negotiatedProtocol = None
    good.handshakeCompleted()
    closed.connectionLost(None)
    h.advance(8)  # the handshake deadline (request_header_timeout)
    assert conns[0][1].disconnected
    stalled.connectionLost(None)
    drained.drain()
    assert t_drained.disconnected
    drained.connectionLost(None)
    t_good.wrappedProtocol.connectionLost(None)
    assert (stats.connections, stats.tls_handshakes, stats.tls_failures, stats.open) == \
        (4, 1, 3, 0)


def test_label_pairs_are_bounded():
    stats = ClientStats(limit=2)
    stats.record("/a", "n1", 200, 0.01, 0.005)
    stats.record("/a", "n2", 200, 0.01, 0.005)
    stats.record("/a", "n3", 500, 0.01, 0.005)  # known context, new pair
    stats.record("/b", "n1", 200, 0.01, -1)  # new context
    assert set(stats.rows) == {("/a", "n1"), ("/a", "n2"), ("/a", "other"), ("other", "other")}
    assert set(stats.durations) == {"/a", "other"}
    assert set(stats.upstream) == {"n1", "n2", "other"}
    assert stats.overflow == 2
    assert stats.rows[("/a", "other")][5] == 1


def test_every_request_past_the_label_limit_counts_as_overflow():
    # consecutive requests of a pair past the limit, and requests alternating
    # between pairs: each one counted under "other" is one overflow
    stats = ClientStats(limit=1)
    stats.record("/a", "n1", 200, 0.01, 0.005)
    for _ in range(3):
        stats.record("/a", "n2", 200, 0.01, 0.005)
    stats.record("/a", "n1", 200, 0.01, 0.005)
    stats.record("/a", "n2", 404, 0.01, 0.005)
    assert stats.overflow == 4
    assert stats.rows[("/a", "n1")][2] == 2
    assert stats.rows[("/a", "other")][2:5] == [3, 0, 1]


def test_rows_and_buckets_of_requests_alternating_between_nodes():
    stats = ClientStats()
    a1, a2 = ("/app", "n1"), ("/app", "n2")
    # the bucket bounds: le 0.001 takes 0.001 itself, 0.0011 the next one; above
    # 30 s: +Inf
    for (context, node), status, duration, upstream in (
            (a1, 200, 0.0, 0.0), (a2, 200, 0.001, -1), (a1, 503, 0.0011, 0.001),
            (a2, 302, 0.0025, 0.0026), (a1, 200, 31.0, 30.5), (a2, 99, 0.0004, 0.0002)):
        stats.record(context, node, status, duration, upstream)
    r1, r2 = stats.rows[a1], stats.rows[a2]
    assert r1[:6] == [0, 0, 2, 0, 0, 1] and r2[:6] == [1, 0, 1, 1, 0, 0]
    durations, n1, n2 = stats.durations["/app"], stats.upstream["n1"], stats.upstream["n2"]
    assert r1[6] is durations and r2[6] is durations and r1[7] is n1 and r2[7] is n2
    assert durations[:15] == [3, 2] + [0] * 12 + [1]
    assert n1[:15] == [2] + [0] * 13 + [1] and n2[:15] == [1, 0, 1] + [0] * 12
    assert (round(durations[15], 4), round(n1[15], 4), round(n2[15], 4)) == \
        (31.005, 30.501, 0.0028)


def test_observer_counts_as_client_stats_record():
    # Observer.done counts in ClientStats inline: the same rows, histograms,
    # sums and overflow as ClientStats.record given the same requests
    class Named:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    t = [100.0]
    direct, inline = ClientStats(limit=3), ClientStats(limit=3)
    obs = Observer(lambda: t[0], None, None, inline)
    for context, node, status, duration, upstream in (
            ("/a", "n1", 200, 0.0004, 0.0003), ("/a", "n2", 503, 0.002, -1.0),
            ("/a", "n1", 302, 0.001, 0.001), ("/b", "n1", 404, 0.3, 0.2),
            ("/b", "n3", 200, 12.0, 11.0), ("/b", "n3", 200, 0.0, 0.0),
            ("/a", "n2", 99, 40.0, 39.0), ("/a", "n1", 600, 0.01, 0.01),
            ("", "", 499, 0.005, -1.0)):
        d = None if not node else Named(node=Named(route=node), context=Named(path=context))
        ex = Named(start=t[0] - duration, upstream_time=upstream, decision=d)
        obs.done(ex, status, 100)
        direct.record(context, node, status, t[0] - ex.start, upstream)
        t[0] += 1.0
    assert obs.failures == 0
    assert inline.export() == direct.export()
    assert inline.overflow == direct.overflow == 3


def test_duration_buckets_are_bisect_left_of_the_bounds():
    """
    The histogram bucket of a duration (ClientStats.record, Observer.done,
    which compare with the first four bounds before bisecting) is
    bisect_left(BUCKETS, duration) for every duration: each bound, its
    neighbouring floats, values between bounds, zero, huge and NaN.
    """
    import math
    from bisect import bisect_left

    from modcluster.proxy.observe import BUCKETS

    class Named:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    values = [0.0, 5e-324, 1e-9, 0.0005, 31.0, 1e300, math.inf, math.nan]
    for b in BUCKETS:
        values += [b, math.nextafter(b, 0.0), math.nextafter(b, math.inf), b * 0.9, b * 1.1]
    for v in values:
        direct, inline = ClientStats(), ClientStats()
        direct.record("/a", "n1", 200, v, v)
        obs = Observer(lambda: 100.0, None, None, inline)
        ex = Named(start=0.0, upstream_time=v,
                   decision=Named(node=Named(route="n1"), context=Named(path="/a")))
        obs.done(ex, 200, 1, 100.0)
        want = [0] * (len(BUCKETS) + 1)
        want[bisect_left(BUCKETS, v)] = 1
        assert direct.durations["/a"][:-1] == want, v
        if not math.isnan(v):  # (>= 0.0: counted)
            assert direct.upstream["n1"][:-1] == want, v
        assert inline.upstream["n1"][:-1] == direct.upstream["n1"][:-1], v
    # Observer.done's duration is now - start (100 s here): its bucket too
    assert inline.durations["/a"][:-1] == [0] * 13 + [0, 1]


def test_status_classes():
    """Each status counts in its class (1xx-5xx), anything else under other."""
    statuses = [0, 1, 99, 100, 101, 199, 200, 204, 299, 300, 399, 400, 499, 500, 599, 600,
                999, 1000, 5000]
    stats = ClientStats()
    obs = Observer(lambda: 1.0, None, None, ClientStats())
    for status in statuses:
        stats.record("/", "n1", status, 0.0, 0.0)
        obs.done(_Ex(), status, 0)
    expected = [0] * 6
    for status in statuses:
        expected[status // 100 if 100 <= status < 600 else 0] += 1
    assert stats.export()["requests"] == [["/", "n1", expected]]
    assert obs.stats.export()["requests"] == [["/", "n1", expected]]


class _Ex:
    """What Observer.done reads of an exchange."""

    start = 1.0
    upstream_time = 0.0

    class decision:  # noqa: N801 - an attribute
        class node:  # noqa: N801
            route = "n1"

        class context:  # noqa: N801
            path = "/"


def test_prometheus_exposition_of_client_metrics():
    h, _, stats = observed()
    two_nodes(h)
    c = h.client()
    c.send(b"GET /app/x HTTP/1.1\r\nHost: a\r\n\r\n")
    h.reactor.advance(0.003)
    h.refuse()
    n = h.accept()
    n.received()
    n.respond(OK_100)
    node = next(iter(stats.upstream))
    registry = CollectorRegistry()
    registry.register(ClientCollector(lambda: merge_exports([stats.export()])))
    out = generate_latest(registry).decode()
    assert (f'modcluster_proxy_requests_total{{code_class="2xx",context="/app",node="{node}"}} '
            "1.0") in out
    assert ('modcluster_proxy_request_duration_seconds_bucket{context="/app",le="0.0025"} 0.0'
            in out)
    assert ('modcluster_proxy_request_duration_seconds_bucket{context="/app",le="0.005"} 1.0'
            in out)
    assert f'modcluster_proxy_upstream_duration_seconds_count{{node="{node}"}} 1.0' in out
    assert 'modcluster_proxy_failovers_total{kind="connect"} 1.0' in out
    assert 'modcluster_proxy_unavailable_total{reason="node_failed"} 0.0' in out
    assert "modcluster_proxy_client_connections 1.0" in out
    assert "modcluster_proxy_client_connections_accepted_total 1.0" in out


def test_merge_sums_workers():
    a, b = ClientStats(), ClientStats()
    a.record("/a", "n1", 200, 0.002, 0.001)
    b.record("/a", "n1", 503, 0.002, -1)
    b.record("/b", "n2", 200, 20.0, 0.5)
    a.open, b.open = 2, 3
    b.failovers["reset"] = 4
    merged = merge_exports([a.export(), json.loads(json.dumps(b.export()))])
    assert sorted(map(tuple, ((c, n, tuple(v)) for c, n, v in merged["requests"]))) == [
        ("/a", "n1", (0, 0, 1, 0, 0, 1)), ("/b", "n2", (0, 0, 1, 0, 0, 0))]
    assert merged["open"] == 5 and merged["failovers"]["reset"] == 4
    assert sum(merged["durations"]["/a"][:-1]) == 2
    assert merged["durations"]["/b"][-1] == 20.0


def test_log_file_buffers_and_reopens_after_rename(tmp_path):
    path = tmp_path / "access.log"
    sink = LogFile(str(path), limit=100)
    sink.write(b"one\n")
    assert path.read_bytes() == b""  # buffered
    sink.write(b"x" * 100 + b"\n")  # over the limit: written
    assert path.read_bytes() == b"one\n" + b"x" * 100 + b"\n"
    os.rename(path, tmp_path / "access.log.1")
    sink.write(b"two\n")
    sink.reopen()  # flushes into the old file, then opens a new one
    sink.write(b"three\n")
    sink.close()
    assert (tmp_path / "access.log.1").read_bytes().endswith(b"two\n")
    assert path.read_bytes() == b"three\n"
    assert oct(os.stat(path).st_mode & 0o777) == "0o640"


def test_log_file_write_errors_drop_lines_with_one_error(tmp_path):
    sink = LogFile(str(tmp_path / "a.log"))
    os.close(sink._fd)
    sink._fd = os.open(os.devnull, os.O_RDONLY)
    with capturedLogs() as events:
        for _ in range(3):
            sink.write(b"line\n")
            sink.flush()
    assert sink.dropped == 3
    assert len(events) == 1 and "cannot write" in events[0]["log_format"]


def test_worker_client_metrics_are_summed_and_survive_a_dead_worker():
    from tests.unit.proxy.test_proxy_workers import make_pool
    from twisted.internet.error import ProcessTerminated

    reactor, reg, pool = make_pool()
    pool.startService()
    w0, w1 = reactor.processes
    a, b = ClientStats(), ClientStats()
    a.record("/app", "n1", 200, 0.01, 0.005)
    a.open = 4
    b.record("/app", "n1", 200, 0.01, 0.005)
    b.unavailable["no_node"] = 2
    b.open = 1
    w0.say("clients", a.export())
    w1.say("clients", b.export())
    total = pool.client_stats()
    assert total["requests"] == [["/app", "n1", [0, 0, 2, 0, 0, 0]]]
    assert total["open"] == 5 and total["unavailable"]["no_node"] == 2
    w0.end(ProcessTerminated(signal=9))
    total = pool.client_stats()
    assert total["requests"] == [["/app", "n1", [0, 0, 2, 0, 0, 0]]]  # counters kept
    assert total["open"] == 1  # its connections are gone
    pool.reopen_logs()
    assert w1.messages()[-1] == ("reopen",)
    d = pool.stopService()
    for p in reactor.processes:
        if p.proto.transport is not None:
            p.end()
    assert d.called


def test_worker_service_reports_client_totals_and_reopens(tmp_path):
    from twisted.internet.testing import MemoryReactorClock

    from modcluster.cluster.mirror import Mirror
    from modcluster.proxy import workers
    from modcluster.proxy.workers import WorkerService

    class Factory:
        pass

    reactor = MemoryReactorClock()
    factory = Factory()
    factory.stats = ClientStats()
    path = tmp_path / "a.log"
    factory.observer = Observer(reactor.seconds, LogFile(str(path)), AccessLine(),
                                factory.stats)
    sent = []
    service = WorkerService(reactor, Mirror(), factory, [], sent.append)
    service.startService()
    factory.stats.record("/app", "n1", 404, 0.1, -1)
    reactor.advance(workers.CLIENT_STATS_INTERVAL)
    clients = [m for m in sent if m[0] == "clients"]
    assert len(clients) == 1 and clients[0][1]["requests"] == [["/app", "n1",
                                                                 [0, 0, 0, 0, 1, 0]]]
    from modcluster.proxy.sessions import SessionTable

    factory.sessions = SessionTable(10, track_changes=True)
    factory.sessions.seen("S.n1", "n1", 3.0)
    reactor.advance(workers.CLIENT_STATS_INTERVAL)
    assert sent[-1] == ["sessions", [["S.n1", "n1", 3.0]]]
    reactor.advance(workers.CLIENT_STATS_INTERVAL)
    assert sent[-1][0] == "clients"  # no new session: none sent
    factory.observer.access_log.write(b"old\n")
    os.rename(path, tmp_path / "a.log.1")
    service.deliver(("reopen",))
    factory.observer.access_log.write(b"new\n")
    factory.observer.access_log.flush()
    assert (tmp_path / "a.log.1").read_bytes() == b"old\n"
    assert path.read_bytes() == b"new\n"


def test_worker_lines_for_stdout_go_through_the_control_process(capfd):
    from tests.unit.proxy.test_proxy_workers import make_pool

    from modcluster.config import parse_config
    from modcluster.tap import _observer

    sent = []
    config = parse_config('[proxy]\naccess_log = "-"\naccess_log_format = "json"\n')
    obs = _observer(config, Clock(), sent.append)
    obs.access_log.write(b'{"a":1}\n')
    obs.tick()
    assert sent == [["access", '{"a":1}\n']]
    capfd.readouterr()
    reactor, reg, pool = make_pool()
    pool.access_sink = LogFile("-")
    pool.startService()
    reactor.processes[0].say(*sent[0])
    assert capfd.readouterr().out == '{"a":1}\n'
    d = pool.stopService()
    for p in reactor.processes:
        p.end()
    assert d.called


def test_unusable_access_log_path_is_refused_by_check(tmp_path, capsys):
    import pytest

    from modcluster.accesslog import path_problem
    from modcluster.tap import Options

    assert path_problem(None) is None and path_problem("-") is None
    assert path_problem(str(tmp_path / "new.log")) is None
    assert "is a directory" in path_problem(str(tmp_path))
    assert "does not exist" in path_problem(str(tmp_path / "no" / "a.log"))
    config = tmp_path / "c.toml"
    config.write_text(f'[proxy]\naccess_log = "{tmp_path / "no" / "a.log"}"\n')
    with pytest.raises(SystemExit) as exit_:
        Options().parseOptions(["--config", str(config), "--check"])
    assert exit_.value.code == 1
    assert re.search(r"c\.toml: proxy\.access_log: directory .* does not exist",
                     capsys.readouterr().err)
    assert not (tmp_path / "no").exists()


def test_observer_only_for_what_is_switched_on(tmp_path):
    from modcluster.config import parse_config
    from modcluster.tap import _observer

    clock = Clock()
    assert _observer(parse_config("[proxy]\nclient_metrics = false\n"), clock) is None
    assert _observer(parse_config("[console]\nmetrics = false\n"), clock) is None
    obs = _observer(parse_config("[proxy]\n"), clock)
    assert obs.stats is not None and obs.access_log is None
    log = tmp_path / "a.log"
    obs = _observer(parse_config(f'[console]\nmetrics = false\n[proxy]\naccess_log = "{log}"\n'
                                 'access_log_format = "extended"\n'), clock)
    assert obs.stats is None and obs.line.fmt == "extended" and log.exists()


def test_a_failing_observer_does_not_break_requests():
    h, sink, stats = observed()
    h.node("n1", 8081, contexts=("/app",))

    def broken(line):
        raise RuntimeError("disk on fire")

    sink.write = broken
    c = h.client()
    n = None  # the node connection, reused by the second request
    with capturedLogs() as events:
        for _ in range(2):
            c.send(b"GET /app/x HTTP/1.1\r\nHost: a\r\n\r\n")
            n = h.accept() if h.pending() else n
            n.received()
            n.respond(OK_100)
    assert [r.status for r in parse_responses(c.received())] == [200, 200]
    assert h.factory.observer.failures == 2
    assert len([e for e in events if "log_failure" in e]) == 1
    assert h.counters_idle()


def test_whole_response_head_and_end_share_one_clock_read():
    """
    A remembered whole response (C{responseWhole}, its end included): one
    clock read for its head and its end, so the duration ends
    where the upstream time does.  Through the parser: a read for each.
    Here the clock steps one second per read.
    """
    h, sink, stats = observed("extended")
    h.node("n1", 8081, contexts=("/app",))
    reads = []

    def clock():
        reads.append(1)
        return 1_765_000_000.0 + len(reads)

    h.factory.observer.clock = clock
    c = h.client()
    n = None
    for _ in range(3):
        c.send(GET)
        if n is None:
            n = h.accept()
        n.received()
        n.respond(OK_100)
        assert parse_responses(c.received())[0].status == 200
    assert len(sink.lines) == 3
    times = []
    for line in sink.lines:
        m = COMBINED.match(line)
        assert m is not None, line
        duration, upstream = m[8].split()[:2]
        times.append((float(duration), float(upstream)))
    # start, attempt, head, end: the first through llhttp, then whole
    assert times == [(3.0, 1.0), (2.0, 1.0), (2.0, 1.0)]
    assert len(reads) == 4 + 3 + 3
