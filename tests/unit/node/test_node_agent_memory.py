"""
The node agent on a MemoryReactorClock against scripted proxies: the Java
listener's request sequences of the Tomcat traces (runs A, B, C, D) replayed
byte for byte, error handling (MEM -> resync, SYNTAX -> DOWN), backoff, drain,
load reports and advertise discovery.
"""

from __future__ import annotations

from typing import Any, Optional

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs

from modcluster.node.agent import NodeAgent, ProxyState
from modcluster.node.config import node_config_from_dict
from modcluster.node.load import CallableMetric
from modcluster.node.probe import ProbeResult
from modcluster.node.reset import AppState
from tests.support.node_testlib import (
    FakeEndpoint,
    FakeProxy,
    Replay,
    advertise_datagrams,
    advertise_run,
    body_of,
    error,
    method_of,
    ok,
    trace_run,
    wire_bytes,
)

NODE_LINE = (
    "Node: [1],Name: node1,Balancer: mycluster,LBGroup: ,Host: 127.0.0.1,Port: 28009,"
    "Type: ajp,Flushpackets: Off,Flushwait: 10,Ping: 10,Smax: 1,Ttl: 60,Elected: 0,Read: 0,"
    "Transfered: 0,Connected: 0,Load: 100\n"
)


class MulticastClock(MemoryReactorClock):
    """A memory reactor that records listenMulticast calls."""

    def __init__(self) -> None:
        super().__init__()
        self.multicast: list[tuple[Any, ...]] = []

    def listenMulticast(self, port: int, protocol: Any, interface: str = "",
                        maxPacketSize: int = 8192, listenMultiple: bool = False) -> Any:
        self.multicast.append((port, protocol, interface, listenMultiple))

        class _Port:
            def stopListening(self) -> None:
                return None

        return _Port()


def fired(d: Deferred) -> list[object]:
    results: list[object] = []
    d.addBoth(lambda r: (results.append(r), r)[1])
    return results


def make_agent(answer: Any = None, *, proxies: Optional[dict] = None, metrics: Any = (),
               probe: Any = False, clock: Optional[MemoryReactorClock] = None,
               **settings: Any):
    clock = clock or MemoryReactorClock()
    if proxies is None:
        proxies = {("127.0.0.1", 26666): FakeProxy(clock, answer)}
    data = {
        "route": "node1",
        "backend": "ajp://127.0.0.1:28009",
        "contexts": ["/", "/app1"],
        "proxies": [f"{h}:{p}" for h, p in proxies],
        "status_period": 5,
        **settings,
    }
    if not data["proxies"]:
        del data["proxies"]
    config = node_config_from_dict(data)

    def endpoint(host: str, port: int) -> FakeEndpoint:
        if (host, port) not in proxies:
            proxies[(host, port)] = FakeProxy(clock)
        return FakeEndpoint(proxies[(host, port)])

    agent = NodeAgent(config, clock, metrics=list(metrics), probe=probe,
                      endpoint_factory=endpoint)
    return clock, proxies, agent


def only(proxies: dict) -> FakeProxy:
    (proxy,) = proxies.values()
    return proxy


# --- the traces, byte for byte --------------------------------------------------


def test_trace_a_registration_deploy_undeploy_and_stop() -> None:
    """
    Run A: INFO, CONFIG, ENABLE-APP x2, STATUS every period, /app2 deployed
    (ENABLE-APP) and undeployed (DISABLE, STOP, REMOVE), then the graceful stop.
    """
    replay = Replay(trace_run("A"))
    clock, proxies, agent = make_agent(replay)
    proxy = only(proxies)
    agent.startService()
    clock.advance(0)
    assert proxy.requests == replay.expected(5)
    for _ in range(3):
        clock.advance(5)
    agent.add_context("/app2")
    clock.advance(0)
    assert proxy.requests == replay.expected(9)
    clock.advance(5)
    clock.advance(5)
    agent.remove_context("/app2")
    clock.advance(0)
    assert proxy.requests == replay.expected(14)
    clock.advance(5)
    clock.advance(5)
    assert proxy.requests == replay.expected(16)

    stopped = fired(agent.stopService())
    clock.advance(0)
    assert stopped == [None]
    shutdown = proxy.requests[16:]
    run = {e.label.split()[0]: wire_bytes(e.raw_request) for e in trace_run("A")}
    # All contexts are drained together (same bytes as Java, which stops them
    # one after the other): DISABLE all, STOP all, REMOVE all, REMOVE-APP /*.
    assert shutdown == [run[k] for k in ("A17", "A20", "A18", "A21", "A19", "A22", "A23")]
    assert set(proxy.request_connections) == {1}
    assert proxy.transports[0].closed
    # Nothing more once stopped.
    clock.advance(30)
    assert len(proxy.requests) == 23


def test_trace_b_mem_resync_then_syntax_down() -> None:
    """
    Run B: STATUS answered MEM -> connection closed, next period INFO on a new
    connection, the INFO shows everything -> CONFIG only; STATUS answered
    SYNTAX -> DOWN: nothing is sent any more, not even on stop.
    """
    replay = Replay(trace_run("B"))
    clock, proxies, agent = make_agent(replay)
    proxy = only(proxies)
    with capturedLogs() as events:
        agent.startService()
        clock.advance(0)
        for _ in range(5):
            clock.advance(5)
    assert proxy.requests == replay.expected()
    assert proxy.request_connections == [1] * 7 + [2] * 5
    assert all(t.closed for t in proxy.transports)
    assert [p.state for p in agent.proxies()] == [ProxyState.DOWN]
    critical = [e for e in events if e["log_level"] == LogLevel.critical]
    assert len(critical) == 1 and "SYNTAX" in critical[0]["log_format"]

    for _ in range(4):
        clock.advance(5)
    agent.add_context("/app2")
    done = fired(agent.stopService())
    clock.advance(0)
    assert done == [None]
    assert len(proxy.requests) == 12


def test_trace_c_load_ramp_and_busy_metric() -> None:
    """
    Run C: with a busy-threads metric (6 of 10 busy for three periods) the
    STATUS loads are Java's exactly: 50 75 88 64 52 46 73 87 93 97 98.
    """
    readings = iter([0, 0, 0, 6, 6, 6, 0, 0, 0, 0, 0])
    replay = Replay(trace_run("C"))
    clock, proxies, agent = make_agent(
        replay, metrics=[CallableMetric(lambda: next(readings), capacity=10)]
    )
    proxy = only(proxies)
    agent.startService()
    clock.advance(0)
    for _ in range(10):
        clock.advance(5)
    assert proxy.requests == replay.expected(15)
    assert agent.last_load == 98


def test_trace_d_advertise_then_register() -> None:
    """
    Run D: a datagram with a wrong digest is ignored; the first valid one
    adds the proxy it names, which is synchronised at once (INFO, CONFIG,
    ENABLE-APP x2), STATUS follows at the next period.
    """
    clock = MulticastClock()
    # The agent's reactor is the advertise clock: set it to the trace's time (the
    # datagrams' Date must be within [advertise] max_skew of it).
    clock.advance(1795313105)  # Sun, 22 Nov 2026 02:05:05 GMT (ADV2)
    clock_proxies: dict = {}
    clock, proxies, agent = make_agent(
        proxies=clock_proxies, clock=clock,
        advertise={"group": "224.0.1.105:23364", "interface": "127.0.0.1", "key": "secret"},
    )
    agent.startService()
    clock.advance(0)
    ((port, listener, interface, multiple),) = clock.multicast
    assert (port, interface, multiple) == (23364, "224.0.1.105", True)
    datagrams = advertise_datagrams()
    with capturedLogs() as events:
        listener.datagramReceived(datagrams["ADV1"], ("127.0.0.1", 40000))
    clock.advance(0)
    assert proxies == {}
    assert any("digest" in e["log_format"] for e in events)

    listener.datagramReceived(datagrams["ADV2"], ("127.0.0.1", 40000))
    clock.advance(0)
    proxy = proxies[("127.0.0.1", 26666)]
    run = advertise_run()
    assert proxy.requests == [wire_bytes(e.raw_request) for e in run[:4]]
    clock.advance(5)
    assert proxy.requests[4] == wire_bytes(run[4].raw_request)
    # Later datagrams of the same server add nothing.
    listener.datagramReceived(datagrams["ADV3"], ("127.0.0.1", 40000))
    assert list(proxies) == [("127.0.0.1", 26666)]


# --- state machine ---------------------------------------------------------------


def test_no_status_before_info_succeeds() -> None:
    """Nothing but INFO is sent until an INFO succeeded."""
    clock, proxies, agent = make_agent(lambda r: error("MEM", "busy"))
    proxy = only(proxies)
    agent.startService()
    clock.advance(0)
    clock.advance(5)
    assert proxy.methods == ["INFO", "INFO"]
    assert not agent.established


def test_mem_on_status_resyncs_missing_context() -> None:
    """After MEM the INFO shows /app1 missing: CONFIG then ENABLE-APP /app1 only."""
    info = NODE_LINE + (
        "Vhost: [1:1:1], Alias: localhost\nContext: [1:1:1], Context: /, Status: ENABLED\n"
    )
    state = {"mem": False}

    def answer(request: bytes):
        method = method_of(request)
        if method == "STATUS" and state["mem"]:
            state["mem"] = False
            return error("MEM", 'MEM: Can\'t read node with "node1" JVMRoute')
        if method == "INFO" and len(proxy.requests) > 1:
            return ok(info.encode())
        return ok()

    clock, proxies, agent = make_agent(answer)
    proxy = only(proxies)
    agent.startService()
    clock.advance(0)
    state["mem"] = True
    clock.advance(5)
    assert agent.proxies()[0].state is ProxyState.ERROR
    before = len(proxy.requests)
    clock.advance(5)
    assert proxy.methods[before:] == ["INFO", "CONFIG", "ENABLE-APP", "STATUS"]
    assert body_of(proxy.requests[before + 2]).endswith("Context=%2Fapp1")
    assert agent.proxies()[0].state is ProxyState.OK


def test_syntax_down_until_reset() -> None:
    """SYNTAX -> DOWN; reset() -> ERROR -> INFO + resync at the next cycle."""
    state = {"syntax": False}

    def answer(request: bytes):
        if method_of(request) == "STATUS" and state["syntax"]:
            state["syntax"] = False
            return error("SYNTAX", "bad")
        return ok()

    clock, proxies, agent = make_agent(answer)
    proxy = only(proxies)
    agent.startService()
    clock.advance(0)
    state["syntax"] = True
    clock.advance(5)
    count = len(proxy.requests)
    clock.advance(5)
    clock.advance(5)
    assert len(proxy.requests) == count
    agent.reset()
    assert agent.proxies()[0].state is ProxyState.ERROR
    clock.advance(5)
    assert proxy.methods[count:] == ["INFO", "CONFIG", "ENABLE-APP", "ENABLE-APP", "STATUS"]


def test_io_error_resync_and_backoff() -> None:
    """
    A refused proxy is retried with a backoff counted in cycles (1, 2, 4, 8
    periods, capped by reconnect_max_delay), and registered when it is back.
    """
    clock, proxies, agent = make_agent(reconnect_max_delay=30)
    proxy = only(proxies)
    proxy.refuse = True
    with capturedLogs() as events:
        agent.startService()
        clock.advance(0)
        attempts = [proxy.connects]
        for _ in range(20):
            clock.advance(5)
            attempts.append(proxy.connects)
    # Attempts at cycles 0, 1, 3, 7, then every 6 cycles (30 s / 5 s).
    increments = [i for i in range(1, len(attempts)) if attempts[i] > attempts[i - 1]]
    assert [0] + increments == [0, 1, 3, 7, 13, 19]
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 1  # an unreachable proxy is logged once
    assert proxy.requests == []
    proxy.refuse = False
    for _ in range(6):
        clock.advance(5)
    assert proxy.methods[:4] == ["INFO", "CONFIG", "ENABLE-APP", "ENABLE-APP"]
    assert agent.proxies()[0].state is ProxyState.OK


def test_reused_connection_closed_by_proxy_is_retried() -> None:
    """The proxy closes the kept-alive connection while idle: STATUS still goes out."""
    clock, proxies, agent = make_agent()
    proxy = only(proxies)
    agent.startService()
    clock.advance(0)
    proxy.transports[0].close_by_peer()
    clock.advance(5)
    assert proxy.methods[-1] == "STATUS"
    assert proxy.request_connections[-1] == 2
    assert agent.proxies()[0].state is ProxyState.OK


def test_status_load_minus_one_when_backend_unreachable() -> None:
    """The backend probe fails -> Load=-1 (metrics not read); back -> metrics."""
    results = iter([ProbeResult(False, None, "refused"), ProbeResult(True, 0.01)])

    class Probe:
        def probe(self) -> Deferred:
            return succeed(next(results))

    clock, proxies, agent = make_agent(
        probe=Probe(), metrics=[CallableMetric(lambda: 0.0)], load={"initial_load": -1}
    )
    proxy = only(proxies)
    agent.startService()
    clock.advance(0)
    clock.advance(5)
    statuses = [body_of(r) for r in proxy.requests if method_of(r) == "STATUS"]
    assert statuses == ["JVMRoute=node1&Load=-1", "JVMRoute=node1&Load=100"]


def test_wildcard_backend_host_uses_local_address() -> None:
    """A backend on 0.0.0.0 is registered with our address on the MCMP connection."""
    clock, proxies, agent = make_agent(backend="http://0.0.0.0:8080")
    proxy = only(proxies)
    agent.startService()
    clock.advance(0)
    config = body_of(proxy.requests[1])
    local = proxy.transports[0].getHost().host
    assert config == f"JVMRoute=node1&Host={local}&Port=8080&StickySessionForce=No&Type=http"


def test_two_proxies_independent() -> None:
    """Each proxy has its own connection and state; one failing does not stop the other."""
    clock = MemoryReactorClock()
    good = FakeProxy(clock)
    bad = FakeProxy(clock, lambda r: error("GENERAL", "no"))
    clock, proxies, agent = make_agent(
        clock=clock, proxies={("127.0.0.1", 1): good, ("127.0.0.1", 2): bad}
    )
    agent.startService()
    clock.advance(0)
    assert good.methods == ["INFO", "CONFIG", "ENABLE-APP", "ENABLE-APP", "STATUS"]
    assert bad.methods == ["INFO"]
    states = {(p.host, p.port): p.state for p in agent.proxies()}
    assert states == {("127.0.0.1", 1): ProxyState.OK, ("127.0.0.1", 2): ProxyState.ERROR}
    assert [p.established for p in agent.proxies()] == [True, False]


# --- drain --------------------------------------------------------------------------


def stop_answer(counts: dict):
    """STOP-APP answered in the 1.3.x format with the next count of the context."""

    def answer(request: bytes):
        if method_of(request) == "STOP-APP":
            context = body_of(request).rsplit("Context=", 1)[1].replace("%2F", "/")
            remaining = counts.get(context, [0])
            n = remaining.pop(0) if len(remaining) > 1 else remaining[0]
            return ok(
                f"Type=STOP-APP-RSP&JvmRoute=node1&Alias=localhos&Context={context[:8]}"
                f"&Requests={n}\n".encode()
            )
        return ok()

    return answer


def test_drain_waits_for_requests() -> None:
    """
    DISABLE-APP, then STOP-APP repeated while Requests > 0 (3, 2, 1, 0), then
    REMOVE-APP per context and REMOVE-APP /*.
    """
    clock, proxies, agent = make_agent(
        stop_answer({"/": [3, 2, 1, 0]}), contexts=["/"], status_period=100,
        drain_poll_interval=1,
    )
    proxy = only(proxies)
    agent.startService()
    clock.advance(0)
    start = len(proxy.requests)
    result = fired(agent.drain())
    clock.advance(0)
    for _ in range(2):
        clock.advance(1)
        assert result == []
    clock.advance(1)
    assert result == [True]
    assert proxy.methods[start:] == [
        "DISABLE-APP", "STOP-APP", "STOP-APP", "STOP-APP", "STOP-APP", "REMOVE-APP", "REMOVE-APP",
    ]
    assert proxy.requests[-1].startswith(b"REMOVE-APP /* HTTP/1.1\r\n")
    assert agent.contexts == {"/": AppState.STOPPED}
    # The status cycle has stopped.
    clock.advance(500)
    assert proxy.methods[-1] == "REMOVE-APP"


def test_drain_timeout() -> None:
    """Requests never reach 0: the drain gives up after drain_timeout."""
    clock, proxies, agent = make_agent(
        stop_answer({"/": [5]}), contexts=["/"], status_period=100, drain_timeout=3,
        drain_poll_interval=1,
    )
    proxy = only(proxies)
    agent.startService()
    clock.advance(0)
    with capturedLogs() as events:
        result = fired(agent.drain())
        clock.advance(0)
        for _ in range(3):
            clock.advance(1)
    assert result == [False]
    assert proxy.methods.count("STOP-APP") == 4
    assert proxy.methods[-2:] == ["REMOVE-APP", "REMOVE-APP"]
    assert any(e["log_level"] == LogLevel.warn for e in events)


def test_drain_sums_all_proxies_and_contexts() -> None:
    """The drain goes on while any proxy reports requests on any context."""
    clock = MemoryReactorClock()
    one = FakeProxy(clock, stop_answer({"/": [1, 0], "/app1": [0]}))
    two = FakeProxy(clock, stop_answer({"/": [0], "/app1": [2, 1, 0]}))
    clock, proxies, agent = make_agent(
        clock=clock, proxies={("127.0.0.1", 1): one, ("127.0.0.1", 2): two},
        status_period=100, drain_poll_interval=1,
    )
    agent.startService()
    clock.advance(0)
    result = fired(agent.drain())
    clock.advance(0)
    clock.advance(1)
    assert result == []
    clock.advance(1)
    assert result == [True]
    for proxy in (one, two):
        assert proxy.methods.count("STOP-APP") == 6
        assert proxy.methods[-3:] == ["REMOVE-APP"] * 3


def test_status_continues_during_drain_but_not_after_removal() -> None:
    clock, proxies, agent = make_agent(
        stop_answer({"/": [1] * 12 + [0]}), contexts=["/"], drain_timeout=20,
        drain_poll_interval=1,
    )
    proxy = only(proxies)
    agent.startService()
    clock.advance(0)
    result = fired(agent.drain())
    for _ in range(14):
        clock.advance(1)
    assert result == [True]
    methods = proxy.methods
    assert "STATUS" in methods[methods.index("DISABLE-APP"):]
    last_removal = len(methods) - 1
    assert methods[last_removal] == "REMOVE-APP"
    clock.advance(50)
    assert len(proxy.methods) == last_removal + 1


def test_drain_then_resume() -> None:
    """After a drain, resume() registers everything again."""
    clock, proxies, agent = make_agent(contexts=["/"])
    proxy = only(proxies)
    agent.startService()
    clock.advance(0)
    fired(agent.drain())
    clock.advance(0)
    count = len(proxy.requests)
    agent.resume()
    clock.advance(0)
    assert proxy.methods[count:] == ["INFO", "CONFIG", "ENABLE-APP", "STATUS"]


def test_drain_before_any_registration() -> None:
    """Nothing was ever registered: the drain sends nothing and succeeds."""
    clock, proxies, agent = make_agent()
    proxy = only(proxies)
    proxy.refuse = True
    agent.startService()
    clock.advance(0)
    result = fired(agent.stopService())
    clock.advance(0)
    assert result == [None]
    assert proxy.requests == []


def test_context_commands() -> None:
    """enable/disable/stop/add contexts send the matching APP commands."""
    clock, proxies, agent = make_agent(contexts=["/"], status_period=100)
    proxy = only(proxies)
    agent.startService()
    clock.advance(0)
    start = len(proxy.requests)
    agent.disable_context("/")
    agent.enable_context("/")
    stopped = fired(agent.stop_context("/"))
    clock.advance(0)
    assert stopped == [True]
    agent.add_context("/new")
    agent.remove_context("/")
    clock.advance(0)
    assert proxy.methods[start:] == [
        "DISABLE-APP", "ENABLE-APP", "DISABLE-APP", "STOP-APP", "ENABLE-APP", "REMOVE-APP",
    ]
    assert agent.contexts == {"/new": AppState.ENABLED}
    with pytest.raises(ValueError):
        agent.enable_context("no-slash")


def test_auto_enable_off_registers_disabled() -> None:
    clock, proxies, agent = make_agent(contexts=["/"], auto_enable=False)
    proxy = only(proxies)
    agent.startService()
    clock.advance(0)
    assert proxy.methods == ["INFO", "CONFIG", "DISABLE-APP", "STATUS"]


def test_unparseable_info_registers_everything() -> None:
    """An INFO the Java parser would reject is logged and treated as empty."""
    clock, proxies, agent = make_agent(
        lambda r: ok(b"Vhost: [9:1:1], Alias: x\n") if method_of(r) == "INFO" else ok()
    )
    proxy = only(proxies)
    with capturedLogs() as events:
        agent.startService()
        clock.advance(0)
    assert proxy.methods == ["INFO", "CONFIG", "ENABLE-APP", "ENABLE-APP", "STATUS"]
    assert any("cannot be parsed" in e["log_format"] for e in events)


def test_refresh_resyncs_ok_proxies() -> None:
    clock, proxies, agent = make_agent(contexts=["/"])
    proxy = only(proxies)
    agent.startService()
    clock.advance(0)
    count = len(proxy.requests)
    agent.refresh()
    clock.advance(5)
    assert proxy.methods[count:] == ["INFO", "CONFIG", "ENABLE-APP", "STATUS"]


def test_restart_after_stop() -> None:
    """stopService then startService: the node registers again."""
    clock, proxies, agent = make_agent(contexts=["/"])
    proxy = only(proxies)
    agent.startService()
    clock.advance(0)
    fired(agent.stopService())
    clock.advance(0)
    count = len(proxy.requests)
    agent.startService()
    clock.advance(0)
    assert proxy.methods[count:] == ["INFO", "CONFIG", "ENABLE-APP", "STATUS"]


def test_cycles_never_overlap() -> None:
    """status_cycle() calls while a cycle waits for an answer run after it, one by one."""
    clock, proxies, agent = make_agent(contexts=["/"], status_period=100)
    proxy = only(proxies)
    agent.startService()
    clock.advance(0)
    proxy.answer = lambda r: "hang"
    first = fired(agent.status_cycle())
    second = fired(agent.status_cycle())
    third = fired(agent.status_cycle())
    mark = len(proxy.requests)
    assert proxy.methods[-1] == "STATUS"  # the first manual cycle waits for its answer
    proxy.answer = proxy.default_answer
    clock.advance(20)  # socket timeout: proxy in ERROR; the queued cycles run in turn
    assert first == second == third == [None]
    assert proxy.methods[mark:] == ["INFO", "CONFIG", "ENABLE-APP", "STATUS", "STATUS"]


def test_advertised_proxies_are_capped() -> None:
    """
    Anyone on the group can advertise (without a key, with any source and
    server id): at most C{[advertise] max_proxies} advertised proxies are
    added; the rest are ignored with a rate-limited warning.  Proxies given in
    C{proxies} do not count, and an advertised proxy already known is no new one.
    """
    clock, proxies, agent = make_agent(
        clock=MulticastClock(),
        advertise={"group": "224.0.1.105:23364", "interface": "127.0.0.1",
                   "max_proxies": 3})
    agent.startService()
    clock.advance(0)
    with capturedLogs() as events:
        for i in range(10):
            agent._advertised("127.0.0.1", 30000 + i)
        agent._advertised("127.0.0.1", 30000)  # known: nothing new
    clock.advance(0)
    assert sorted(p.port for p in agent.proxies()) == [26666, 30000, 30001, 30002]
    ignored = [e for e in events if "max_proxies" in str(e.get("log_format", ""))]
    assert 1 <= len(ignored) <= 10
    agent.stopService()


def test_advertise_max_proxies_validated() -> None:
    config = node_config_from_dict({
        "route": "n", "backend": "http://127.0.0.1:8080",
        "advertise": {"max_proxies": 5}})
    assert config.advertise is not None and config.advertise.max_proxies == 5
    with pytest.raises(Exception, match="max_proxies"):
        node_config_from_dict({"route": "n", "backend": "http://127.0.0.1:8080",
                               "advertise": {"max_proxies": 0}})
