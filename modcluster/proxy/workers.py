"""
Data-plane worker processes (C{proxy.workers} > 1).

One Python process forwards on one core.  With C{proxy.workers = N} the main
(control) process keeps MCMP, the registry, health checks, persistence, the
console, API and metrics, and starts N worker processes that accept the client
connections and forward them:

 - the control process binds, for every C{proxy.listen} endpoint, one listening
   socket per worker with C{SO_REUSEPORT} on the same address (the kernel
   spreads new connections over them), and hands each worker its sockets as
   inherited file descriptors (L{modcluster.proxy.sharing}); a worker that dies is started
   again on the same sockets, so connections waiting in its accept queue are
   served by its successor;
 - it feeds every worker routing snapshots and node updates over the worker's
   stdin (L{modcluster.cluster.mirror}), and reads the worker's counter reports,
   node failures and log events from the worker's file descriptor 3;
 - workers exit when their stdin closes, so they never outlive the control
   process.

Messages are length-prefixed frames: pickles from the control process to the
workers it started (it trusts them with its own configuration), JSON from the
workers back (the control process never unpickles what a worker sends).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import struct
import sys
from typing import TYPE_CHECKING, Callable, Optional

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel, formatEvent

from modcluster.cluster.mirror import CounterSink, Mirror, encode_node_updates, encode_snapshot
from modcluster.listening import TIMEOUT_REASONS
from modcluster.proxy.observe import merge_exports
from modcluster.proxy.sharing import Adopter, SharedListener, bind_shared

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall
    from twisted.python.failure import Failure

    from modcluster.cluster.model import NodeRuntime

__all__ = [
    "ControlChannel",
    "FrameDecoder",
    "WorkerPool",
    "WorkerService",
    "frame",
]

#: what a worker reports of its retry budget and node queues (L{WorkerPool.plane_totals})
PLANE_KEYS = ("retry_refused", "queued", "queue_rejected")

log = Logger(namespace="modcluster.workers")
worker_log = Logger(namespace="modcluster.worker")

_LENGTH = struct.Struct("!I")
#: Largest frame a worker accepts (snapshots of very large clusters).
MAX_TO_WORKER = 1 << 30
#: Largest frame the control process accepts from a worker.
MAX_FROM_WORKER = 16 << 20
#: After a snapshot of N records (nodes + contexts), the next one waits
#: N x SNAPSHOT_PACING seconds (at most SNAPSHOT_MAX_WAIT), so a burst of
#: registrations in a large cluster costs a bounded share of CPU while a small
#: cluster's changes reach the workers at once.
SNAPSHOT_PACING = 20e-6
SNAPSHOT_MAX_WAIT = 0.5
#: Seconds between a worker's counter reports (when something changed).
REPORT_INTERVAL = 0.1
#: Seconds between a worker's client-metrics reports (L{ClientStats.export}).
CLIENT_STATS_INTERVAL = 1.0
#: Seconds a stopping worker gets before it is killed.
STOP_TIMEOUT = 10.0
#: Restart delays after a worker died: first, maximum.
RESTART_DELAY = (0.5, 30.0)
#: A worker that ran this long before dying restarts after the first delay again.
STABLE_RUN = 10.0
#: Seconds between heartbeats to each worker.
HEARTBEAT_INTERVAL = 5.0
#: A worker not heard from for this long (no answer to heartbeats: hung,
#: stopped, or stuck in a loop) is killed and started again.
STALL_TIMEOUT = 30.0
#: A worker that has not said it is ready this long after it was started
#: (interpreter start-up and imports are slow on a loaded machine) is killed
#: and started again.
START_TIMEOUT = 60.0
#: Whatever the timeouts, a worker is killed only after it left at least this
#: many heartbeats in a row unanswered.  Heartbeats are counted by the control
#: process's own timer, which a busy or stopped control process delays and
#: coalesces (a stall of any length is one heartbeat), and the control process
#: reads what its workers sent between two heartbeats: so its own lag is never
#: taken for a silent worker.
MIN_MISSED_BEATS = 3
#: File descriptor of the worker -> control channel in the worker; the listening
#: sockets follow it.
CHANNEL_FD = 3


def frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into length-prefixed frames."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The complete frames C{data} finishes. @raise ValueError: a frame is too long."""
        buf = self._buffer
        buf += data
        frames = []
        offset = 0
        while len(buf) - offset >= 4:
            (length,) = _LENGTH.unpack_from(buf, offset)
            if length > self.max_length:
                raise ValueError(f"frame of {length} bytes (limit {self.max_length})")
            end = offset + 4 + length
            if end > len(buf):
                break
            frames.append(bytes(buf[offset + 4:end]))
            offset = end
        if offset:
            del buf[:offset]
        return frames


# -- control process --------------------------------------------------------------


class _Worker(ProcessProtocol):
    """The control process's end of one worker process."""

    def __init__(self, pool: "WorkerPool", index: int) -> None:
        self.pool = pool
        self.index = index
        self.pid: Optional[int] = None
        #: the inherited sockets, (fd, family, description) (set by WorkerPool._spawn)
        self.listeners: list[tuple[int, int, str]] = []
        self.started = pool.reactor.seconds()
        self.ready = False
        #: when the control process last received anything from the worker
        self.last_heard = self.started
        #: heartbeats since the control process last received anything from it
        self.unanswered = 0
        self.killed = False
        #: generation of the last snapshot the worker loaded
        self.generation = 0
        self.ended: defer.Deferred = defer.Deferred()
        #: the frame that starts the worker (config, index, sockets)
        self.init = b""
        self._decoder = FrameDecoder(MAX_FROM_WORKER)
        self._stray = {1: b"", 2: b""}

    def connectionMade(self) -> None:
        assert self.transport is not None  # spawnProcess set it
        self.pid = self.transport.pid
        self.pool._worker_started(self)

    def send(self, payload: bytes) -> None:
        if self.transport is not None:
            self.transport.writeToChild(0, payload)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != CHANNEL_FD:
            self._stray_output(childFD, data)
            return
        try:
            frames = self._decoder.feed(data)
        except ValueError as e:
            log.error("worker {worker}: broken channel ({why}); killing it",
                      worker=self.index, why=str(e))
            self._kill()
            return
        if frames:
            self.last_heard = self.pool.reactor.seconds()
            self.unanswered = 0
        for payload in frames:
            try:
                message = json.loads(payload)
                self.pool._message(self, message)
            except Exception:
                log.failure("worker {worker}: bad message {head!r}", worker=self.index,
                            head=payload[:80])

    def _stray_output(self, fd: int, data: bytes) -> None:
        buf = self._stray.get(fd, b"") + data
        *lines, rest = buf.split(b"\n")
        self._stray[fd] = rest[-4096:]
        for line in lines:
            worker_log.warn("worker {worker} (pid {pid}) wrote: {line}", worker=self.index,
                            pid=self.pid, line=line.decode("utf-8", "replace"))

    def _kill(self) -> None:
        self.killed = True
        transport = self.transport
        if transport is None:
            return  # (not started)
        try:
            transport.signalProcess("KILL")
        except Exception:
            pass

    def processEnded(self, reason) -> None:
        for fd, rest in self._stray.items():
            if rest:
                self._stray_output(fd, b"\n")
        self.transport = None
        self.pool._worker_ended(self, reason)
        self.ended.callback(None)


class WorkerPool(Service):
    """
    Starts and supervises the worker processes and keeps them fed.

    @param reactor: provides C{IReactorProcess} and C{IReactorTime}.
    @param config: the whole L{modcluster.config.Config} (sent to the workers).
    @param registry: the L{Registry} whose snapshots the workers route on.
    @param argv: command line of a worker (default: this Python, C{-m
        modcluster.worker}).
    """

    def __init__(self, reactor, config, registry, argv: Optional[list[str]] = None,
                 env: Optional[dict] = None) -> None:
        self.reactor = reactor
        self.config = config
        self.registry = registry
        self.count = config.proxy.workers
        #: C{(route, address, peer, listener, kind)}: a worker's node
        #: connection reached a listener of ours (tap.py: the MCMP handler
        #: removes the node)
        self.on_node_loop: Optional[Callable[[str, str, str, str, str], None]] = None
        #: gives the C{(host, port, kind)} of the management and console
        #: listeners (L{modcluster.loops.ProxyAddresses.others}), which the
        #: workers' node connections are checked against too: sent to each
        #: worker when it starts and whenever they change (L{listeners_changed})
        self.other_listeners: Optional[Callable[[], list]] = None
        self._others_sent: Optional[bytes] = None
        self.argv = argv or [sys.executable, "-m", "modcluster.worker"]
        self.env = env if env is not None else _worker_env()
        self.sink = CounterSink()
        self.listeners: list[SharedListener] = []
        self.workers: dict[int, _Worker] = {}
        self.restarts = 0
        #: slow clients cut by the workers, by reason (summed from their reports)
        self.client_timeouts = dict.fromkeys(TIMEOUT_REASONS, 0)
        self._delays: dict[int, float] = {}
        self._restart_calls: dict[int, IDelayedCall] = {}
        self._stopping = False
        self._snapshot_call: Optional[IDelayedCall] = None
        self._next_snapshot = 0.0
        self._updates: dict[int, NodeRuntime] = {}
        self._update_call: Optional[IDelayedCall] = None
        self.stall_timeout = STALL_TIMEOUT
        self.start_timeout = START_TIMEOUT
        self.heartbeat_interval = HEARTBEAT_INTERVAL
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = reactor
        #: worker index -> its last client-metrics export; what ended workers
        #: had counted (without their open connections)
        self.client_exports: dict[int, dict] = {}
        self._retired_clients: dict = merge_exports(())
        #: each worker's retry-budget and queue totals (L{plane_totals}), and
        #: the counters of workers that ended
        self.plane_exports: dict[int, dict] = {}
        self._retired_plane = {"retry_refused": 0, "queue_rejected": 0}
        #: session ids seen by the workers (manager.max_session_ids > 0)
        self.sessions = None
        if config.manager.max_session_ids > 0:
            from modcluster.proxy.sessions import SessionTable

            self.sessions = SessionTable(config.manager.max_session_ids)
        #: with proxy.access_log = "-": where the workers' lines are written
        self.access_sink = None
        if config.proxy.access_log == "-":
            from modcluster.accesslog import LogFile

            self.access_sink = LogFile("-")
        registry.on_structure_change(self._structure_changed)
        registry.on_node_change(self._node_changed)

    # -- lifecycle ---------------------------------------------------------------

    def startService(self) -> None:
        self._stopping = False
        if not self.listeners:
            backlog = self.config.proxy.listen_backlog
            self.listeners = [bind_shared(d, self.count, backlog=backlog)
                              for d in self.config.proxy.listen]
        for listener in self.listeners:
            log.info("proxy: {description} bound on {host}:{port} for {count} workers",
                     description=listener.description, host=listener.host,
                     port=listener.port, count=self.count)
        super().startService()
        for index in range(self.count):
            self._spawn(index)
        self.heartbeat_interval = HEARTBEAT_INTERVAL
        self._heartbeat.start(self.heartbeat_interval, now=False)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        self._stopping = True
        if self._heartbeat.running:
            self._heartbeat.stop()
        for call in (self._snapshot_call, self._update_call,
                     *self._restart_calls.values()):
            if call is not None and call.active():
                call.cancel()
        self._restart_calls.clear()
        waits = []
        for worker in list(self.workers.values()):
            waits.append(worker.ended)
            try:
                worker.send(frame(pickle.dumps(("stop",))))
                assert worker.transport is not None  # (else: killed below)
                worker.transport.closeStdin()
            except Exception:
                worker._kill()
        killer = self.reactor.callLater(
            STOP_TIMEOUT + getattr(self.config.proxy, "drain_timeout", 0.0), self._kill_all)
        done = defer.gatherResults(waits)

        def finished(_):
            if killer.active():
                killer.cancel()
            for listener in self.listeners:
                for s in listener.sockets:
                    s.close()
            self.listeners = []

        return done.addBoth(finished)

    def reconfigure(self, config) -> None:
        """
        Reload: C{config} (differing only in settings the workers apply live)
        goes to every worker now and to workers started later.
        """
        self.config = config
        payload = frame(pickle.dumps(("reconfigure", config.proxy)))
        for worker in list(self.workers.values()):
            # a worker not started yet gets the new configuration with its init
            worker.init = frame(pickle.dumps(("init", config, worker.index,
                                              worker.listeners)))
            worker.send(payload)

    def _beat(self) -> None:
        """The heartbeat timer's call."""
        self.heartbeat()
        self.listeners_changed()

    def heartbeat(self) -> None:
        """
        Ask every ready worker for a sign of life; kill the silent ones.

        A worker is silent when it left C{N} heartbeats in a row unanswered
        B{and} has not been heard from for the timeout (C{stall_timeout}, or
        C{start_timeout} while it has not said it is ready), where C{N} is
        the timeout in heartbeat intervals, at least L{MIN_MISSED_BEATS}.
        Counting heartbeats as well as seconds keeps the control process's
        own lag (a heavily loaded machine, a long garbage collection, a
        suspended process) from killing healthy workers: the heartbeat timer
        fires once after a stall of any length, and what the workers sent in
        the meantime is read before the next heartbeat.
        """
        now = self.reactor.seconds()
        ping = frame(pickle.dumps(("ping",)))
        interval = self.heartbeat_interval
        for worker in list(self.workers.values()):
            if worker.killed:
                continue  # its end is on the way
            timeout = self.stall_timeout if worker.ready else self.start_timeout
            needed = max(MIN_MISSED_BEATS, math.ceil(timeout / interval) if interval else 0)
            silent = now - worker.last_heard
            if worker.unanswered >= needed and silent >= timeout:
                if worker.ready:
                    log.error("worker {worker} (pid {pid}) silent for {silent:.0f} s and "
                              "{beats} heartbeats (hung?); killing it", worker=worker.index,
                              pid=worker.pid, silent=silent, beats=worker.unanswered)
                else:
                    log.error("worker {worker} (pid {pid}) started but silent and not ready "
                              "for {silent:.0f} s; killing it", worker=worker.index,
                              pid=worker.pid, silent=silent)
                worker._kill()
                continue
            worker.unanswered += 1
            if worker.ready:
                worker.send(ping)

    def _kill_all(self) -> None:
        for worker in list(self.workers.values()):
            log.warn("worker {worker} (pid {pid}) did not stop in {timeout} s; killing it",
                     worker=worker.index, pid=worker.pid, timeout=STOP_TIMEOUT)
            worker._kill()

    def _spawn(self, index: int) -> None:
        self._restart_calls.pop(index, None)
        child_fds = {0: "w", 1: "r", 2: "r", CHANNEL_FD: "r"}
        listeners: list[tuple[int, int, str]] = []
        fd = CHANNEL_FD + 1
        for listener in self.listeners:
            child_fds[fd] = listener.sockets[index].fileno()
            listeners.append((fd, listener.family, listener.description))
            fd += 1
        worker = _Worker(self, index)
        self.workers[index] = worker
        worker.listeners = listeners
        worker.init = frame(pickle.dumps(("init", self.config, index, listeners)))
        try:
            self.reactor.spawnProcess(worker, self.argv[0], self.argv, env=self.env,
                                      childFDs=child_fds)
        except Exception:
            log.failure("worker {worker}: cannot start", worker=index)
            del self.workers[index]
            self._schedule_restart(index, 0.0)

    def _worker_started(self, worker: _Worker) -> None:
        worker.send(worker.init)
        if self.ticket_keys is not None:
            worker.send(self.ticket_keys)
        others = self._others_payload()
        if others is not None:
            worker.send(others)
        worker.send(self._snapshot_payload())

    def _others_payload(self) -> Optional[bytes]:
        if self.other_listeners is None:
            return None
        others = [(str(h), int(p), str(k)) for h, p, k in self.other_listeners()]
        return frame(pickle.dumps(("others", others)))

    def listeners_changed(self) -> None:
        """
        The management or console listeners may have changed (one started or
        stopped listening; also checked at each heartbeat): tell the workers
        if they did.
        """
        payload = self._others_payload()
        if payload is None or payload == self._others_sent:
            return
        self._others_sent = payload
        for worker in list(self.workers.values()):
            worker.send(payload)

    def _worker_ended(self, worker: _Worker, reason) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        self.sink.forget(worker.index)
        plane = self.plane_exports.pop(worker.index, None)
        if plane is not None:
            for key in self._retired_plane:
                self._retired_plane[key] += plane[key]
        last = self.client_exports.pop(worker.index, None)
        if last is not None:
            last = dict(last, open=0)
            self._retired_clients = merge_exports([self._retired_clients, last])
        if self._stopping:
            log.info("worker {worker} (pid {pid}) stopped", worker=worker.index, pid=worker.pid)
            return
        ran = self.reactor.seconds() - worker.started
        status = ("exited normally" if reason.check(ProcessDone)
                  else str(reason.value))
        self.restarts += 1
        self._schedule_restart(worker.index, ran)
        log.error("worker {worker} (pid {pid}) ended after {ran:.1f} s: {status}; "
                  "restarting it in {delay} s", worker=worker.index, pid=worker.pid,
                  ran=ran, status=status, delay=self._delays[worker.index])

    def _schedule_restart(self, index: int, ran: float) -> None:
        first, most = RESTART_DELAY
        previous = self._delays.get(index)
        delay = first if previous is None or ran >= STABLE_RUN else min(previous * 2, most)
        self._delays[index] = delay
        self._restart_calls[index] = self.reactor.callLater(delay, self._spawn, index)

    # -- feeding -----------------------------------------------------------------

    def _snapshot_payload(self) -> bytes:
        table = self.registry.table
        self.sink.track(table)
        snapshot = encode_snapshot(table)
        records = len(snapshot[2]) + len(snapshot[3])
        self._next_snapshot = self.reactor.seconds() + min(SNAPSHOT_MAX_WAIT,
                                                           records * SNAPSHOT_PACING)
        return frame(pickle.dumps(("snapshot", snapshot), protocol=pickle.HIGHEST_PROTOCOL))

    def _structure_changed(self) -> None:
        if self._snapshot_call is not None or not self.running:
            return
        delay = max(0.0, self._next_snapshot - self.reactor.seconds())
        self._snapshot_call = self.reactor.callLater(delay, self._send_snapshot)

    def _send_snapshot(self) -> None:
        self._snapshot_call = None
        payload = self._snapshot_payload()
        for worker in self.workers.values():
            worker.send(payload)

    def _node_changed(self, rt) -> None:
        if not self.running:
            return
        self._updates[rt.serial] = rt
        if self._update_call is None:
            self._update_call = self.reactor.callLater(0, self._send_updates)

    def _send_updates(self) -> None:
        self._update_call = None
        updates, self._updates = self._updates, {}
        payload = frame(pickle.dumps(("update", encode_node_updates(updates.values()))))
        for worker in self.workers.values():
            worker.send(payload)

    # -- from the workers --------------------------------------------------------------

    def _message(self, worker: _Worker, message: list) -> None:
        kind = message[0]
        if kind == "report":
            self.sink.apply(worker.index, (message[1], message[2]))
        elif kind == "timeouts":
            for reason, n in message[1].items():
                if reason in self.client_timeouts and isinstance(n, int) and n > 0:
                    self.client_timeouts[reason] += n
        elif kind == "fail":
            self.registry.set_error(str(message[1]), str(message[2]))
        elif kind == "loop":
            # a node connection of the worker reached a listener of ours
            # (modcluster.loops.LoopGuard): route, address, peer, listener, kind
            if self.on_node_loop is not None and len(message) == 6:
                self.on_node_loop(*(str(x) for x in message[1:]))
        elif kind == "eject":
            self.registry.node_ejected(str(message[1]), float(message[2]), str(message[3]))
        elif kind == "ok":
            self.registry.clear_error(str(message[1]), "answered a request")
        elif kind == "log":
            _, level, namespace, text = message
            worker_log.emit(LogLevel.levelWithName(level), "worker {worker}: {text}",
                            worker=worker.index, pid=worker.pid, text=text,
                            worker_namespace=namespace)
        elif kind == "pong":
            pass  # last_heard is updated for every message
        elif kind == "clients":
            if not isinstance(message[1], dict):
                raise ValueError("bad client metrics report")
            self.client_exports[worker.index] = message[1]
        elif kind == "plane":
            totals = message[1]
            if not (isinstance(totals, dict) and all(
                    isinstance(totals.get(k), int) for k in PLANE_KEYS)):
                raise ValueError("bad data plane report")
            self.plane_exports[worker.index] = {k: totals[k] for k in PLANE_KEYS}
        elif kind == "sessions":
            if self.sessions is not None:
                self.sessions.merge(message[1])
        elif kind == "access":
            if self.access_sink is not None:
                self.access_sink.write(str(message[1]).encode("ascii", "backslashreplace"))
                self.access_sink.flush()
        elif kind == "loaded":
            worker.generation = int(message[1])
        elif kind == "ready":
            worker.ready = True
            log.info("worker {worker} (pid {pid}) serving", worker=worker.index,
                     pid=worker.pid)
        else:
            raise ValueError(f"unknown message {kind!r}")

    def client_stats(self) -> dict:
        """The client-side metrics of every worker, summed (L{merge_exports})."""
        return merge_exports([self._retired_clients, *self.client_exports.values()])

    def plane_totals(self) -> dict:
        """Retry budget refusals and node queues of every worker, summed (the
        counters of workers that ended included; requests queued: live ones)."""
        totals = dict(self._retired_plane, queued=0)
        for plane in self.plane_exports.values():
            for key in PLANE_KEYS:
                totals[key] += plane[key]
        return totals

    def reload_certificates(self) -> None:
        """Tell every worker to re-read the certificates of its C{ssl:} listeners."""
        payload = frame(pickle.dumps(("tls",)))
        for worker in self.workers.values():
            worker.send(payload)

    #: the session ticket keys the workers get (L{publish_ticket_keys})
    ticket_keys: Optional[bytes] = None

    def publish_ticket_keys(self, keys) -> None:
        """The session ticket key set (L{modcluster.proxy.tickets.KeySet}) every
        worker uses from now on, workers started later included."""
        self.ticket_keys = frame(pickle.dumps(("tickets", keys.keys)))
        for worker in self.workers.values():
            worker.send(self.ticket_keys)

    def reopen_logs(self) -> None:
        """Tell every worker to reopen its access log file (SIGUSR1)."""
        payload = frame(pickle.dumps(("reopen",)))
        for worker in self.workers.values():
            worker.send(payload)

    def in_sync(self) -> bool:
        """Every worker runs on the registry's current routing snapshot."""
        generation = self.registry.table.generation
        return len(self.workers) == self.count and all(
            w.ready and w.generation == generation for w in self.workers.values())

    def status(self) -> list[dict]:
        """
        The running workers: index, pid, start time, ready, generation of the
        routing snapshot they have, requests forwarded.
        """
        return [{"index": w.index, "pid": w.pid, "started": w.started, "ready": w.ready,
                 "generation": w.generation, "requests": self.sink.requests(w.index)}
                for _, w in sorted(self.workers.items())]


def _worker_env() -> dict:
    """This process's environment, with the directory holding C{modcluster} first
    on C{PYTHONPATH} (so a worker imports the same code)."""
    import modcluster

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(modcluster.__file__)))
    paths = [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


# -- worker process ---------------------------------------------------------------


class ControlChannel(Protocol):
    """
    The worker's end of the channel (over C{StandardIO(stdin=0,
    stdout=CHANNEL_FD)}): pickled messages in, JSON messages out.

    @param deliver: called with each message from the control process.
    @param lost: called once when the control process goes away.
    """

    def __init__(self, deliver: Callable[[tuple], None], lost: Callable[[], None]) -> None:
        self.deliver = deliver
        self.lost = lost
        self._decoder = FrameDecoder(MAX_TO_WORKER)

    def dataReceived(self, data: bytes) -> None:
        for payload in self._decoder.feed(data):
            self.deliver(pickle.loads(payload))

    def send(self, message: list) -> None:
        if self.transport is not None:
            self.transport.write(frame(json.dumps(message).encode()))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.transport = None
        self.lost()


class WorkerService(Service):
    """
    What runs in a worker process: the client listeners on the inherited
    sockets, the routing L{Mirror}, the counter reports and the local lbstatus
    tick.

    @param factory: the L{modcluster.proxy.front.ProxyFactory}, routing on
        C{mirror.table}.
    @param listeners: C{(fd, family, description)} of the inherited sockets.
    @param send: sends a message to the control process.
    """

    def __init__(self, reactor, mirror: Mirror, factory, listeners, send) -> None:
        self.reactor = reactor
        self.mirror = mirror
        self.factory = factory
        self.listeners = listeners
        self.send = send
        #: C{(host, port, kind)} of the control process's management and
        #: console listeners, as it last told (the node connections'
        #: L{modcluster.loops.LoopGuard} compares with them)
        self.other_listeners: list[tuple[str, int, str]] = []
        self.ports: list = []
        self._report = LoopingCall(self.report)
        self._report.clock = reactor
        self._tick = LoopingCall(lambda: mirror.tick(reactor.seconds()))
        self._tick.clock = reactor
        self._clients = LoopingCall(self.report_clients)
        self._clients.clock = reactor

    def deliver(self, message: tuple) -> None:
        kind = message[0]
        if kind == "snapshot":
            self.mirror.load(message[1])
            self.send(["loaded", message[1][0]])
        elif kind == "update":
            self.mirror.update(message[1])
        elif kind == "ping":
            self.send(["pong"])
        elif kind == "reconfigure":
            self.factory.reconfigure(message[1])
        elif kind == "others":  # the management and console listeners (LoopGuard)
            self.other_listeners[:] = [tuple(x) for x in message[1]]
        elif kind == "tls":  # reload: re-read the certificates of the ssl: listeners
            from modcluster.proxy.stdtls import reload_certificates

            reload_certificates()
        elif kind == "tickets":  # the session ticket keys (modcluster/proxy/tickets.py)
            from modcluster.proxy.tickets import KeySet, set_keys

            try:
                set_keys(KeySet(message[1]))
            except Exception:
                log.failure("bad session ticket keys from the control process")
        elif kind == "reopen":
            observer = getattr(self.factory, "observer", None)
            if observer is not None and observer.access_log is not None:
                observer.access_log.reopen()
        elif kind == "stop":
            self.reactor.stop()
        else:
            log.error("unknown message {kind!r} from the control process", kind=kind)

    def startService(self) -> None:
        super().startService()
        for fd, family, description in self.listeners:
            factory = self.factory
            if description.split(":", 1)[0].strip().lower() == "ssl":
                # (h2 is imported only by workers that may serve it)
                from modcluster.proxy.alpn import listener_factory

                factory = listener_factory(factory, description)
            fast_accept = bool(getattr(getattr(self.factory, "config", None),
                                       "fast_event_loop", False))
            self.ports.append(serverFromString(
                Adopter(self.reactor, fd, family, description, fast_accept=fast_accept),
                description).listen(factory))
            os.close(fd)  # adoptStreamPort took its own copy
        self._report.start(REPORT_INTERVAL, now=False)
        self._tick.start(1.0, now=False)
        if (getattr(self.factory, "stats", None) is not None
                or getattr(self.factory, "sessions", None) is not None):
            self._clients.start(CLIENT_STATS_INTERVAL, now=False)
        self.send(["ready"])

    def stopService(self):
        super().stopService()
        for loop in (self._report, self._tick, self._clients):
            if loop.running:
                loop.stop()
        self.report()
        self.report_clients()
        timeout = getattr(self.factory.config, "drain_timeout", 0.0)
        draining = timeout > 0 and hasattr(self.factory, "drain")
        if draining:
            # Hold the factory open while its listeners stop: its last port
            # stopping would close the node connections of requests in flight.
            self.factory.doStart()
        waits = []
        for d in self.ports:
            waits.append(d.addCallback(lambda port: port.stopListening()))
        done = defer.gatherResults(waits)
        if draining:
            done.addCallback(lambda _: self._drain(self.reactor.seconds() + timeout))
            done.addBoth(lambda result: (self.factory.doStop(), result)[1])
        return done

    def _drain(self, deadline: float):
        """Let requests in flight finish (idle connections are closed) until C{deadline}."""
        busy = self.factory.drain()
        if not busy or self.reactor.seconds() >= deadline:
            return None
        d: defer.Deferred[None] = defer.Deferred()
        self.reactor.callLater(0.1, d.callback, None)
        return d.addCallback(lambda _: self._drain(deadline))

    def report(self) -> None:
        r = self.mirror.report()
        if r is not None:
            self.send(["report", r[0], r[1]])
        report = getattr(self.factory, "timeouts", None)  # slow clients cut (ProxyFactory)
        timeouts = report.take() if report is not None else None
        if timeouts:
            self.send(["timeouts", timeouts])

    def report_clients(self) -> None:
        """Send this worker's client-metrics totals (once a second)."""
        stats = getattr(self.factory, "stats", None)
        if stats is not None:
            self.send(["clients", stats.export()])
        plane_totals = getattr(self.factory, "plane_totals", None)
        if plane_totals is not None:
            self.send(["plane", plane_totals()])
        sessions = getattr(self.factory, "sessions", None)
        if sessions is not None:
            changes = sessions.changes()
            if changes:
                self.send(["sessions", changes])


def log_forwarder(send: Callable[[list], None]) -> Callable[[dict], None]:
    """A twisted.logger observer that sends every event to the control process."""

    def observe(event: dict) -> None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback()}"
        level = event.get("log_level", LogLevel.info)
        try:
            send(["log", level.name, event.get("log_namespace", ""), text])
        except Exception:
            pass

    return observe
