"""
modcluster/listening.py: the backlog added to endpoint descriptions, the read
deadline arithmetic, the rate-limited report of slow clients, and their
Prometheus counter (wired by tap.build for both listeners).
"""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs

from modcluster.config import parse_config
from modcluster.listening import ReadTimeouts, TimeoutReport, with_backlog


def test_with_backlog_adds_it_where_the_endpoint_takes_one():
    assert with_backlog("tcp:8000:interface=127.0.0.1", 511) == \
        "tcp:8000:interface=127.0.0.1:backlog=511"
    assert with_backlog("tcp6:8000:interface=\\:\\:1", 600) == \
        "tcp6:8000:interface=\\:\\:1:backlog=600"
    assert with_backlog("ssl:443:privateKey=k.pem", 7) == "ssl:443:privateKey=k.pem:backlog=7"
    assert with_backlog("unix:/run/mc.sock", 9) == "unix:/run/mc.sock:backlog=9"


def test_with_backlog_keeps_an_explicit_one_and_sockets_made_elsewhere():
    assert with_backlog("tcp:8000:backlog=20", 511) == "tcp:8000:backlog=20"
    assert with_backlog("tcp:port=8000:BACKLOG=20", 511) == "tcp:port=8000:BACKLOG=20"
    assert with_backlog("systemd:domain=INET:index=0", 511) == "systemd:domain=INET:index=0"
    # an escaped colon is not a separator: "backlog=" inside a value is not the key
    assert with_backlog("unix:/tmp/x\\:backlog=3", 5) == "unix:/tmp/x\\:backlog=3:backlog=5"


def test_read_timeouts_arithmetic():
    rt = ReadTimeouts(header=20, header_max=40, header_min_rate=500, body=20,
                      body_min_rate=500)
    assert rt.header_allowed(0) == 20
    assert rt.header_allowed(5000) == 30
    assert rt.header_allowed(10 ** 6) == 40
    assert ReadTimeouts(header=20, header_max=0).header_allowed(10 ** 6) == 20
    assert rt.body_allowed(0) == 20
    assert rt.body_allowed(50000) == 120
    assert ReadTimeouts(body=20, body_min_rate=0).body_allowed(10 ** 9) == 20


def test_read_timeouts_from_config():
    c = parse_config("""
[proxy]
request_header_timeout = 5
request_header_timeout_max = 9
request_header_min_rate = 100
request_body_timeout = 7
request_body_min_rate = 0
[manager]
request_header_timeout = 0
""")
    assert ReadTimeouts.from_config(c.proxy) == ReadTimeouts(5, 9, 100, 7, 0)
    assert ReadTimeouts.from_config(c.manager).header == 0
    assert ReadTimeouts.from_config(c.manager).body == 20


def test_report_limits_log_lines_and_says_how_many_were_left_out():
    report = TimeoutReport("proxy", interval=10.0)
    with capturedLogs() as events:
        for i in range(100):
            report.timedOut("header", f"127.0.0.{i % 250}", "late", 1000.0 + i * 0.1)
        report.timedOut("body", "127.0.0.1", "slow", 1005.0)
        report.timedOut("header", "127.0.0.1", "late", 1011.0)
    assert report.counts == {"header": 101, "body": 1, "send": 0}
    lines = [(e["reason"], e["left_out"]) for e in events]
    assert lines == [("header", 0), ("body", 0), ("header", 99)]
    assert report.take() == {"header": 101, "body": 1}
    assert report.take() == {}


def test_build_exports_the_counter_for_both_listeners():
    from modcluster.tap import build

    config = parse_config("""
[manager]
listen = ["tcp:0:interface=127.0.0.1"]
[proxy]
listen = ["tcp:0:interface=127.0.0.1"]
fast_event_loop = false
""")
    service = build(config, MemoryReactorClock())
    from modcluster.proxy.front import ProxyFactory

    (factory,) = [s.factory for s in service if isinstance(getattr(s, "factory", None),
                                                            ProxyFactory)]
    factory.timeouts.timedOut("body", "127.0.0.1", "slow", 0.0)
    text = generate_latest(service.metrics.collector_registry).decode()
    samples = {(s.labels["listener"], s.labels["reason"]): s.value
               for f in text_string_to_metric_families(text)
               if f.name == "modcluster_client_timeouts" for s in f.samples}
    assert samples == {("proxy", "header"): 0, ("proxy", "body"): 1, ("proxy", "send"): 0,
                       ("manager", "header"): 0, ("manager", "body"): 0,
                       ("manager", "send"): 0}
