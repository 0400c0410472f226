"""
The worker-process plumbing of modcluster/proxy/workers.py, in memory: framing,
shared sockets, the worker's service, and the control process's pool driven by
a fake process reactor.
"""

import json
import os
import pickle
import socket

import pytest
import trustme
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from modcluster.cluster.mirror import Mirror, encode_snapshot
from modcluster.cluster.model import BalancerSettings, NodeSettings
from modcluster.cluster.registry import Registry
from modcluster.config import ConfigError, parse_config
from modcluster.proxy import workers
from modcluster.proxy.workers import (
    FrameDecoder,
    WorkerPool,
    WorkerService,
    frame,
)
from modcluster.proxy.sharing import bind_shared


def test_frames_split_and_join():
    d = FrameDecoder(100)
    stream = frame(b"one") + frame(b"") + frame(b"three")
    got = []
    for i in range(len(stream)):
        got += d.feed(stream[i:i + 1])
    assert got == [b"one", b"", b"three"]
    assert d.feed(frame(b"a") + frame(b"b")[:3]) == [b"a"]
    with pytest.raises(ValueError):
        FrameDecoder(10).feed(frame(b"x" * 11))


def test_bind_shared_gives_each_worker_a_socket_on_one_port():
    listener = bind_shared("tcp:0:interface=127.0.0.1", 3)
    try:
        ports = {s.getsockname() for s in listener.sockets}
        assert len(listener.sockets) == 3 and len(ports) == 1
        assert (listener.kind, listener.family, listener.host) == ("tcp", socket.AF_INET,
                                                                  "127.0.0.1")
        assert listener.port == ports.pop()[1] != 0
        # the kernel spreads connections over the sockets; every one accepts
        clients = [socket.create_connection(("127.0.0.1", listener.port)) for _ in range(30)]
        accepted = 0
        for s in listener.sockets:
            s.setblocking(True)
            s.settimeout(0)
            while True:
                try:
                    conn, _ = s.accept()
                except (TimeoutError, BlockingIOError):
                    break
                conn.close()
                accepted += 1
        assert accepted == 30
        for c in clients:
            c.close()
    finally:
        for s in listener.sockets:
            s.close()


def test_bind_shared_ipv6_and_refusals():
    listener = bind_shared("tcp6:0:interface=\\:\\:1", 1)
    assert listener.family == socket.AF_INET6 and listener.host == "::1"
    listener.sockets[0].close()
    with pytest.raises(ValueError):
        bind_shared("unix:/tmp/nope.sock", 2)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        with pytest.raises(OSError):  # taken by a socket without SO_REUSEPORT
            bind_shared(f"tcp:{busy.getsockname()[1]}:interface=127.0.0.1", 2)
    finally:
        busy.close()


@pytest.fixture
def tls_files(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    path = tmp_path / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(path))
    return path


def test_worker_service_adopts_its_sockets(tls_files):
    plain = bind_shared("tcp:0:interface=127.0.0.1", 1)
    tls = bind_shared(f"ssl:0:interface=127.0.0.1:privateKey={tls_files}", 1)
    assert tls.kind == "ssl"
    reactor = MemoryReactorClock()
    sent = []
    factory = object()
    fds = [os.dup(plain.sockets[0].fileno()), os.dup(tls.sockets[0].fileno())]
    service = WorkerService(reactor, Mirror(), factory,
                            [(fds[0], socket.AF_INET, plain.description),
                             (fds[1], socket.AF_INET, tls.description)], sent.append)
    service.startService()
    try:
        (fd1, fam1, f1), (fd2, fam2, f2) = reactor.adoptedPorts
        assert (fd1, fam1, f1) == (fds[0], socket.AF_INET, factory)
        assert fd2 == fds[1] and isinstance(f2, TLSMemoryBIOFactory)
        assert f2.wrappedFactory is factory
        assert sent == [["ready"]]
        for fd in fds:  # handed over to the reactor, closed here
            with pytest.raises(OSError):
                os.fstat(fd)
    finally:
        for s in plain.sockets + tls.sockets:
            s.close()


def registry_with_node(reactor):
    reg = Registry(reactor)
    reg.config(BalancerSettings("mycluster"),
               NodeSettings(route="n1", host="127.0.0.1", port=9001, type="http"))
    reg.app("ENABLE-APP", "n1", ["localhost"], ["/app"])
    reg.apply_status("n1", 50, True)
    return reg


def test_worker_service_messages_and_reports():
    reactor = MemoryReactorClock()
    reg = registry_with_node(reactor)
    sent = []
    mirror = Mirror()
    service = WorkerService(reactor, mirror, object(), [], sent.append)
    service.startService()
    service.deliver(("snapshot", encode_snapshot(reg.table)))
    assert mirror.table.by_route["n1"].rt.lbfactor == 50
    assert sent[-1] == ["loaded", reg.table.generation]
    serial = reg.node("n1").rt.serial
    service.deliver(("update", ((serial, 70, True, 5.0),)))
    assert mirror.table.by_route["n1"].rt.lbfactor == 70
    with capturedLogs() as events:
        service.deliver(("bogus",))
    assert "unknown message" in events[0]["log_format"]

    reactor.advance(workers.REPORT_INTERVAL)
    assert sent[-1][0] == "loaded"  # nothing counted yet: no report
    mirror.table.by_route["n1"].rt.busy = 1
    reactor.advance(workers.REPORT_INTERVAL)
    assert sent[-1][0] == "report" and sent[-1][1] == {serial: (0, 0, 0, 0, 1)}
    reactor.running = True
    service.deliver(("stop",))
    assert reactor.hasStopped


class FakeProcess:
    def __init__(self, proto, pid, args, child_fds):
        self.proto = proto
        self.pid = pid
        self.args = args
        self.child_fds = child_fds
        self.written = []
        self.stdin_closed = False
        self.signals = []

    def writeToChild(self, fd, data):
        assert fd == 0
        self.written.append(data)

    def closeStdin(self):
        self.stdin_closed = True

    def signalProcess(self, sig):
        self.signals.append(sig)

    def messages(self):
        d = FrameDecoder(1 << 30)
        return [pickle.loads(p) for p in d.feed(b"".join(self.written))]

    def say(self, *message):
        self.proto.childDataReceived(workers.CHANNEL_FD, frame(json.dumps(list(message)).encode()))

    def end(self, reason=None):
        self.proto.processEnded(Failure(reason or ProcessDone(0)))


class ProcessReactor(MemoryReactorClock):
    def __init__(self):
        super().__init__()
        self.processes = []

    def spawnProcess(self, proto, executable, args=(), env=None, path=None, uid=None,
                     gid=None, usePTY=False, childFDs=None):
        p = FakeProcess(proto, 1000 + len(self.processes), args, childFDs)
        self.processes.append(p)
        proto.makeConnection(p)
        return p


def make_pool(count=2):
    config = parse_config(f"""
[proxy]
listen = ["tcp:0:interface=127.0.0.1"]
workers = {count}
""")
    reactor = ProcessReactor()
    reactor.advance(1000)
    reg = registry_with_node(reactor)
    pool = WorkerPool(reactor, config, reg, argv=["python", "-m", "modcluster.worker"],
                      env={})
    return reactor, reg, pool


@pytest.fixture
def pool():
    reactor, reg, pool = make_pool()
    pool.startService()
    yield reactor, reg, pool
    if pool.running:
        d = pool.stopService()
        for p in reactor.processes:
            if p.proto.transport is not None:
                p.end()
        assert d.called


def test_pool_starts_workers_with_their_sockets_and_state(pool):
    reactor, reg, pool = pool
    assert len(reactor.processes) == 2
    listener = pool.listeners[0]
    for index, p in enumerate(reactor.processes):
        assert p.args == ["python", "-m", "modcluster.worker"]
        assert p.child_fds[0] == "w" and p.child_fds[workers.CHANNEL_FD] == "r"
        fd = workers.CHANNEL_FD + 1
        assert p.child_fds[fd] == listener.sockets[index].fileno()
        init, snapshot = p.messages()
        assert init[0] == "init" and init[2] == index
        assert init[1].proxy.workers == 2
        assert init[3] == [(fd, socket.AF_INET, "tcp:0:interface=127.0.0.1")]
        assert snapshot == ("snapshot", encode_snapshot(reg.table))
        assert not pool.in_sync()
        p.say("ready")
        p.say("loaded", reg.table.generation)
    assert [w["ready"] for w in pool.status()] == [True, True]
    assert pool.in_sync()


def test_pool_sends_snapshots_coalesced_and_updates_next_turn(pool):
    reactor, reg, pool = pool
    p = reactor.processes[0]
    reactor.advance(1)
    reg.app("ENABLE-APP", "n1", ["localhost"], ["/b"])
    reg.app("ENABLE-APP", "n1", ["localhost"], ["/c"])
    reactor.advance(0)
    assert [m[0] for m in p.messages()] == ["init", "snapshot", "snapshot"]
    reg.app("ENABLE-APP", "n1", ["localhost"], ["/d"])
    reactor.advance(0)
    assert len(p.messages()) == 3  # paced: 4 records were just sent
    reactor.advance(4 * workers.SNAPSHOT_PACING)
    last = p.messages()[-1]
    assert last[0] == "snapshot" and "/d" in {c[2] for c in last[1][3]}

    reg.apply_status("n1", 80, True)
    reg.set_error("n1", "refused")
    assert len(p.messages()) == 4
    reactor.advance(0)
    kind, updates = p.messages()[-1]
    assert kind == "update"
    rt = reg.node("n1").rt
    # the update carries the slow start and ejection times too (issue 17)
    assert updates == ((rt.serial, 80, True, reactor.seconds(), rt.warm_from,
                        rt.ejected_until),)


def test_pool_applies_worker_messages(pool):
    reactor, reg, pool = pool
    w0, w1 = reactor.processes
    serial = reg.node("n1").rt.serial
    w0.say("report", {str(serial): [2, 20, 10, 2, 1]}, {})
    w1.say("report", {str(serial): [3, 30, 15, 3, 0]}, {})
    rt = reg.node("n1").rt
    assert (rt.elected, rt.read, rt.transferred, rt.requests, rt.busy) == (5, 50, 25, 5, 1)
    w0.say("fail", "n1", "connection refused")
    assert rt.in_error and rt.failures == 1 and rt.error_reason == "connection refused"
    w1.say("ok", "n1")
    assert not rt.in_error
    with capturedLogs() as events:
        w0.say("log", "warn", "modcluster.proxy", "node n1 hung")
        w0.say("nonsense")
        w0.proto.childDataReceived(workers.CHANNEL_FD, frame(b"{not json"))
        w0.proto.childDataReceived(1, b"Fatal Python error: oops\npartial")
    texts = [(e["log_level"], e.get("text") or e.get("line") or e["log_format"])
             for e in events]
    assert (LogLevel.warn, "node n1 hung") in texts
    assert (LogLevel.warn, "Fatal Python error: oops") in texts
    assert sum(1 for e in events if e["log_level"] is LogLevel.critical) == 2  # bad messages
    # worker 0 dies with its request in flight: the level is taken back
    w0.end(ProcessTerminated(signal=9))
    assert rt.busy == 0 and rt.elected == 5


def test_pool_restarts_dead_workers_with_backoff(pool):
    reactor, reg, pool = pool
    with capturedLogs() as events:
        reactor.processes[1].end(ProcessTerminated(exitCode=1))
    (event,) = [e for e in events if e["log_level"] is LogLevel.error]
    assert event["worker"] == 1 and event["delay"] == 0.5 and "exit code 1" in event["status"]
    assert pool.restarts == 1 and 1 not in pool.workers
    reactor.advance(0.5)
    assert len(reactor.processes) == 3
    third = reactor.processes[2]
    assert third.messages()[0][2] == 1  # same index, same sockets
    assert third.child_fds[workers.CHANNEL_FD + 1] == pool.listeners[0].sockets[1].fileno()
    third.end(ProcessTerminated(exitCode=1))  # died at once again: longer delay
    reactor.advance(0.5)
    assert len(reactor.processes) == 3
    reactor.advance(0.5)
    assert len(reactor.processes) == 4
    reactor.advance(workers.STABLE_RUN)
    reactor.processes[3].end(ProcessTerminated(exitCode=1))  # ran long: first delay again
    reactor.advance(0.5)
    assert len(reactor.processes) == 5


def test_pool_stop_asks_workers_then_kills_stragglers():
    reactor, reg, pool = make_pool()
    pool.startService()
    sockets = pool.listeners[0].sockets
    d = pool.stopService()
    w0, w1 = reactor.processes
    for p in (w0, w1):
        assert p.messages()[-1] == ("stop",) and p.stdin_closed
    w0.end()
    assert not d.called
    reactor.advance(workers.STOP_TIMEOUT)
    assert w1.signals == []  # its requests in flight may still drain
    reactor.advance(pool.config.proxy.drain_timeout)
    assert w1.signals == ["KILL"]
    w1.end(ProcessTerminated(signal=9))
    assert d.called
    assert all(s.fileno() == -1 for s in sockets)
    assert len(reactor.processes) == 2  # no restart while stopping


def test_config_allows_only_shareable_listeners_with_workers():
    with pytest.raises(ConfigError) as e:
        parse_config('[proxy]\nworkers = 2\nlisten = ["unix:/tmp/x.sock"]\n')
    assert e.value.key == "proxy.listen"
    with pytest.raises(ConfigError):
        parse_config("[proxy]\nworkers = 0\n")
    with pytest.raises(ConfigError):
        parse_config("[proxy]\nworkers = 65\n")
    assert parse_config('[proxy]\nlisten = ["unix:/tmp/x.sock"]\n').proxy.workers == 1


def test_pool_heartbeat_kills_silent_workers(pool):
    reactor, reg, pool = pool
    w0, w1 = reactor.processes
    for p in (w0, w1):
        p.say("ready")
    for _ in range(int(workers.STALL_TIMEOUT / workers.HEARTBEAT_INTERVAL) + 1):
        reactor.advance(workers.HEARTBEAT_INTERVAL)
        assert w0.messages()[-1] == ("ping",)
        w0.say("pong")  # w0 answers, w1 is hung
    assert w0.signals == []
    assert w1.signals == ["KILL"]
    w1.end(ProcessTerminated(signal=9))
    assert pool.restarts == 1


def test_a_stalled_control_process_kills_no_healthy_worker(pool):
    """
    The control process does not run for ten times the stall timeout (a loaded
    machine, a long garbage collection, SIGSTOP): its heartbeat timer fires once
    when it runs again, before it reads what its workers sent meanwhile.  That
    is one unanswered heartbeat, not a silent worker: nobody is killed.
    """
    reactor, reg, pool = pool
    w0, w1 = reactor.processes
    for p in (w0, w1):
        p.say("ready")
    for _ in range(2 * workers.MIN_MISSED_BEATS):
        reactor.advance(10 * workers.STALL_TIMEOUT)
        for p in (w0, w1):
            assert p.messages()[-1] == ("ping",)
            p.say("pong")  # it was in the pipe, read after the timers ran
    assert w0.signals == w1.signals == [] and pool.restarts == 0


def test_a_hung_worker_is_judged_by_heartbeats_not_by_the_control_process_stall(pool):
    reactor, reg, pool = pool
    w0, w1 = reactor.processes
    for p in (w0, w1):
        p.say("ready")
    reactor.advance(10 * workers.STALL_TIMEOUT)  # w1 hangs while the control process stalls
    w0.say("pong")
    assert w1.signals == []
    beats = 1
    while not w1.signals:
        reactor.advance(workers.HEARTBEAT_INTERVAL)
        w0.say("pong")
        beats += 1
    needed = workers.STALL_TIMEOUT / workers.HEARTBEAT_INTERVAL
    assert beats == needed + 1  # killed at the first heartbeat after `needed` unanswered
    assert w0.signals == [] and w1.signals == ["KILL"]


def test_a_loaded_worker_answering_late_is_not_killed(pool):
    """A busy worker answers only every fifth heartbeat (25 s late): it is kept."""
    reactor, reg, pool = pool
    w0, w1 = reactor.processes
    for p in (w0, w1):
        p.say("ready")
    for beat in range(1, 50):
        reactor.advance(workers.HEARTBEAT_INTERVAL)
        w0.say("pong")
        if beat % 5 == 0:
            w1.say("pong")
    assert w0.signals == w1.signals == [] and pool.restarts == 0


def test_a_slowly_starting_worker_gets_the_start_timeout(pool):
    """
    On a loaded machine a worker may take long to import and build before it
    says it is ready: it is judged against the start timeout, not the stall
    timeout, and killed only if it never gets there.
    """
    reactor, reg, pool = pool
    w0, w1 = reactor.processes
    w0.say("ready")
    assert workers.START_TIMEOUT > workers.STALL_TIMEOUT + workers.HEARTBEAT_INTERVAL
    while reactor.seconds() - pool.workers[1].started < workers.START_TIMEOUT - 5:
        reactor.advance(workers.HEARTBEAT_INTERVAL)
        w0.say("pong")
    assert w1.signals == [] and ("ping",) not in w1.messages()  # not pinged while starting
    w1.say("ready")
    reactor.advance(workers.HEARTBEAT_INTERVAL)
    assert w1.messages()[-1] == ("ping",) and w1.signals == []
    # a worker that never becomes ready is replaced after the start timeout
    w1.end(ProcessTerminated(exitCode=1))
    reactor.advance(workers.RESTART_DELAY[0])
    w2 = reactor.processes[2]
    started = pool.workers[1].started
    while not w2.signals:
        reactor.advance(workers.HEARTBEAT_INTERVAL)
        w0.say("pong")
    waited = reactor.seconds() - started
    assert workers.START_TIMEOUT <= waited <= workers.START_TIMEOUT + 2 * workers.HEARTBEAT_INTERVAL
    assert w0.signals == []


def test_short_timeouts_still_need_several_missed_heartbeats(pool):
    reactor, reg, pool = pool
    pool.stall_timeout = 0.0
    w0, w1 = reactor.processes
    for p in (w0, w1):
        p.say("ready")
    for _ in range(workers.MIN_MISSED_BEATS):
        reactor.advance(workers.HEARTBEAT_INTERVAL)
        w0.say("pong")
    assert w1.signals == []
    reactor.advance(workers.HEARTBEAT_INTERVAL)
    assert w1.signals == ["KILL"] and w0.signals == []


def test_pool_heartbeat_can_be_driven_by_hand(pool):
    """heartbeat() is what the timer calls; with the timer far away a test drives it."""
    reactor, reg, pool = pool
    w0, w1 = reactor.processes
    for p in (w0, w1):
        p.say("ready")
    pool.heartbeat()
    assert w0.messages()[-1] == w1.messages()[-1] == ("ping",)
    assert pool.workers[0].unanswered == 1
    w0.say("pong")
    assert pool.workers[0].unanswered == 0 and pool.workers[1].unanswered == 1


def test_worker_service_answers_heartbeats():
    reactor = MemoryReactorClock()
    sent = []
    service = WorkerService(reactor, Mirror(), object(), [], sent.append)
    service.deliver(("ping",))
    assert sent == [["pong"]]


def test_pool_binds_worker_sockets_with_the_listen_backlog():
    """Each SO_REUSEPORT socket of the workers listens with proxy.listen_backlog
    (the kernel's own accept-queue limit, read over netlink), unless the
    endpoint says backlog=; the workers get the description as written."""
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[3])
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.support.listen_queue import listen_backlogs

    config = parse_config("""
[proxy]
listen = ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1:backlog=40"]
workers = 3
listen_backlog = 900
""")
    reactor = ProcessReactor()
    pool = WorkerPool(reactor, config, registry_with_node(reactor), argv=["python"], env={})
    pool.startService()
    try:
        first, second = pool.listeners
        assert listen_backlogs(first.port) == [900] * 3
        assert listen_backlogs(second.port) == [40] * 3
        init = reactor.processes[0].messages()[0]
        assert [d for _, _, d in init[3]] == list(config.proxy.listen)
    finally:
        d = pool.stopService()
        for p in reactor.processes:
            p.end()
        assert d.called


def test_pool_sums_the_workers_slow_client_counts(pool):
    reactor, reg, pool = pool
    a, b = reactor.processes
    a.say("timeouts", {"header": 3, "send": 1})
    b.say("timeouts", {"header": 2, "body": 4, "bogus": 9})
    a.say("timeouts", {"header": 1})
    assert pool.client_timeouts == {"header": 6, "body": 4, "send": 1}


def test_pool_sums_retry_budget_and_queues_of_the_workers(pool):
    """Issue 17's data-plane counters reach /metrics with worker processes too:
    summed, an ended worker's counters kept and its queued requests dropped."""
    from twisted.internet.error import ProcessTerminated

    reactor, reg, pool = pool
    a, b = reactor.processes
    a.say("plane", {"retry_refused": 3, "queued": 2, "queue_rejected": 1})
    b.say("plane", {"retry_refused": 1, "queued": 5, "queue_rejected": 0})
    b.say("plane", {"retry_refused": 2, "queued": 4, "queue_rejected": 7})
    assert pool.plane_totals() == {"retry_refused": 5, "queued": 6, "queue_rejected": 8}
    b.end(ProcessTerminated(signal=9))
    assert pool.plane_totals() == {"retry_refused": 5, "queued": 2, "queue_rejected": 8}
    with pytest.raises(ValueError):
        pool._message(pool.workers[0], ["plane", {"retry_refused": "x"}])


def test_worker_service_reports_its_plane_totals():
    class Factory:
        def plane_totals(self):
            return {"retry_refused": 1, "queued": 0, "queue_rejected": 2}

    sent = []
    service = WorkerService(MemoryReactorClock(), Mirror(), Factory(), [], sent.append)
    service.report_clients()
    assert ["plane", {"retry_refused": 1, "queued": 0, "queue_rejected": 2}] in sent


def test_worker_reports_slow_client_counts_once():
    from modcluster.listening import TimeoutReport

    class Factory:
        timeouts = TimeoutReport("proxy")

    reactor = MemoryReactorClock()
    sent = []
    service = WorkerService(reactor, Mirror(), Factory(), [], sent.append)
    service.startService()
    Factory.timeouts.timedOut("header", "127.0.0.1", "test", 0.0)
    Factory.timeouts.timedOut("header", "127.0.0.1", "test", 0.0)
    reactor.advance(workers.REPORT_INTERVAL)
    assert sent[-1] == ["timeouts", {"header": 2}]
    reactor.advance(workers.REPORT_INTERVAL)
    assert sent[-1] == ["timeouts", {"header": 2}] and len(
        [m for m in sent if m[0] == "timeouts"]) == 1


def test_reload_reaches_running_and_later_workers(pool):
    """A reload's live proxy settings go to every worker, and into a restarted one's init."""
    import attrs

    reactor, reg, pool = pool
    new = attrs.evolve(pool.config, proxy=attrs.evolve(pool.config.proxy, client_timeout=3.0))
    pool.reconfigure(new)
    for p in reactor.processes:
        assert p.messages()[-1] == ("reconfigure", new.proxy)
    assert all(pickle.loads(w.init[4:])[1] == new for w in pool.workers.values())


def test_worker_service_applies_a_reconfigure_message():
    class Factory:
        config = None

        def reconfigure(self, config):
            self.config = config

    factory = Factory()
    service = WorkerService(MemoryReactorClock(), Mirror(), factory, [], [].append)
    proxy = parse_config("[proxy]\nclient_timeout = 4.0\n").proxy
    service.deliver(("reconfigure", proxy))
    assert factory.config is proxy


def test_pool_passes_a_worker_ejection_to_every_worker(pool):
    """Issue 17: a worker's passive-health ejection reaches the registry (shown
    in the console, API, metrics) and, as a node update, every worker."""
    reactor, reg, pool = pool
    w0, w1 = reactor.processes
    reactor.advance(1)
    w0.say("eject", "n1", 30.0, "5 malformed responses")
    rt = reg.node("n1").rt
    assert rt.ejected_until == reactor.seconds() + 30 and rt.ejections == 1
    assert rt.warm_from == rt.ejected_until  # back through slow start
    reactor.advance(0)
    for w in (w0, w1):
        kind, updates = w.messages()[-1]
        assert kind == "update" and updates[0][-1] == rt.ejected_until


def test_worker_ssl_listener_issues_session_tickets(tmp_path):
    """
    A worker's adopted ssl: socket gets the same session resumption as an ssl:
    listener of the main process (modcluster.tls.resume_sessions): tickets on,
    the server session cache on.
    """
    import trustme
    from OpenSSL import SSL
    from twisted.internet import ssl as tssl
    from twisted.internet.protocol import Factory

    from modcluster.proxy.sharing import Adopter

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    pem = leaf.private_key_and_cert_chain_pem.bytes()
    options = tssl.CertificateOptions(
        privateKey=tssl.PrivateCertificate.loadPEM(pem).privateKey.original,
        certificate=tssl.PrivateCertificate.loadPEM(pem).original)
    adopted = []

    class Reactor:
        def adoptStreamPort(self, fd, family, factory):
            adopted.append((fd, factory))
            return "port"

    assert Adopter(Reactor(), 7, 2).listenSSL(0, Factory(), options) == "port"
    assert adopted and adopted[0][0] == 7
    ctx = options.getContext()
    assert not options._options & SSL.OP_NO_TICKET
    assert ctx.get_session_cache_mode() & SSL.SESS_CACHE_SERVER


def test_pool_gives_the_ticket_keys_to_every_worker_and_to_restarted_ones(pool):
    """The session ticket keys (modcluster/proxy/tickets.py): to the running workers
    on every change, to a worker started later right after its init."""
    from modcluster.proxy.tickets import KeySet

    reactor, reg, pool = pool
    keys = KeySet.generate()
    pool.publish_ticket_keys(keys)
    for p in reactor.processes:
        assert p.messages()[-1] == ("tickets", keys.keys)
    reactor.processes[0].end(ProcessTerminated(exitCode=1))
    reactor.advance(0.5)
    init, tickets, _snapshot = reactor.processes[-1].messages()
    assert init[0] == "init" and tickets == ("tickets", keys.keys)


def test_worker_service_takes_the_ticket_keys():
    from modcluster.proxy import tickets
    from modcluster.proxy.tickets import KeySet

    service = WorkerService(MemoryReactorClock(), Mirror(), object(), [], [].append)
    keys = KeySet.generate()
    service.deliver(("tickets", keys.keys))
    assert tickets.current_keys().keys == keys.keys
    with capturedLogs() as events:
        service.deliver(("tickets", ((b"short", b"", b""),)))
    assert tickets.current_keys().keys == keys.keys  # bad keys: the current ones stay
    assert any(e["log_level"] is LogLevel.critical for e in events)


def test_a_workers_forwarding_loop_report_reaches_the_pool_hook(pool):
    """A worker's node connection that reached a proxy listener (LoopGuard): its
    message goes to the hook that removes the node (tap.py: the MCMP handler)."""
    reactor, reg, pool = pool
    w0, _ = reactor.processes
    found = []
    w0.say("loop", "n1", "proxy.example:8000", "127.0.0.1:8000", "127.0.0.1:8000", "proxy")
    pool.on_node_loop = lambda *a: found.append(a)
    w0.say("loop", "n1", "proxy.example:8000", "127.0.0.1:8000", "127.0.0.1:8000", "proxy")
    w0.say("loop", "n1", "own.example:6666", "127.0.0.1:6666", "127.0.0.1:6666",
           "management")
    w0.say("loop", "n1")  # malformed: ignored
    assert found == [("n1", "proxy.example:8000", "127.0.0.1:8000", "127.0.0.1:8000", "proxy"),
                     ("n1", "own.example:6666", "127.0.0.1:6666", "127.0.0.1:6666",
                      "management")]


def test_workers_are_told_the_management_and_console_listeners():
    """
    The workers' node connections are checked against the control process's
    management and console listeners too: each worker gets them when it
    starts and again whenever they change (a listener started, or stopped:
    checked at each heartbeat).
    """
    reactor, reg, pool = make_pool()
    others = [("127.0.0.1", 6666, "management")]
    pool.other_listeners = lambda: list(others)
    pool.startService()
    try:
        for p in reactor.processes:
            init, listeners, snapshot = p.messages()
            assert listeners == ("others", [("127.0.0.1", 6666, "management")])
            p.say("ready")
            p.written.clear()
        others.append(("0.0.0.0", 8090, "console"))
        pool.listeners_changed()
        pool.listeners_changed()  # unchanged: not sent again
        for p in reactor.processes:
            assert p.messages() == [("others", [("127.0.0.1", 6666, "management"),
                                                ("0.0.0.0", 8090, "console")])]
            p.written.clear()
        del others[0]
        reactor.advance(workers.HEARTBEAT_INTERVAL)
        for p in reactor.processes:
            assert ("others", [("0.0.0.0", 8090, "console")]) in p.messages()
    finally:
        d = pool.stopService()
        for p in reactor.processes:
            if p.proto.transport is not None:
                p.end()
        assert d.called


def test_a_worker_keeps_what_it_is_told_of_the_other_listeners():
    service = WorkerService(MemoryReactorClock(), Mirror(), object(), [], [].append)
    assert service.other_listeners == []
    service.deliver(("others", [("127.0.0.1", 6666, "management")]))
    assert service.other_listeners == [("127.0.0.1", 6666, "management")]


def test_worker_loop_guard_knows_the_shared_sockets():
    """build_worker checks node connections against the sockets it inherited."""
    import socket

    from modcluster.tap import _bound_addresses

    with socket.socket() as s, socket.socket(socket.AF_UNIX) as u:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        listeners = [(s.fileno(), socket.AF_INET, f"tcp:{port}"),
                     (u.fileno(), socket.AF_UNIX, "unix:/x"), (999999, socket.AF_INET, "x")]
        assert _bound_addresses(listeners) == [("127.0.0.1", port)]
        assert s.getsockname()[1] == port  # (its own descriptor untouched)
