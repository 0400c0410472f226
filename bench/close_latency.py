#!/usr/bin/env python3
"""
Where the latency of a ``Connection: close`` request goes, inside and around
the proxy process (not a test; bench/run.py is the full suite):

    .venv/bin/python bench/close_latency.py [--seconds 5] [--connections 50]

Starts, on free 127.0.0.1 ports, one nginx with two static servers (the
nodes, a 100-byte file) and the data plane alone (as ``proxy_quick.py
--serve``: the accept loop, the lean event loop, the frozen heap), with
instrumentation patched in; runs ``wrk -t1 -cN -H 'Connection: close'
--latency`` (a 1 s warm-up, then the measured run) and prints, per request
measured:

 - queue: from the request's arrival (the kernel's receive timestamp of its
   first bytes, C{SO_TIMESTAMPNS} set on the listening socket and read with
   C{MSG_PEEK} at accept) to the accept;
 - accept to forward: the proxy's work until the request is written to the
   node;
 - forward to the end of that loop iteration (the rest of the accept batch
   and of the other events);
 - from there to the poll that returns the node's answer (the node's time,
   and the proxy's other iterations or its wait for a CPU);
 - from that poll's return to the answer being read (the events served
   before it in the same iteration);
 - read to close (the answer relayed, the connection closed);

and per loop iteration: wall time against the thread's CPU time, and the
time spent waiting for a CPU (the run-queue delay of
C{/proc/thread-self/schedstat}), inside C{epoll_wait}'s wake-up and inside
the iteration's work; the cyclic GC's collections; the 1 s sweep; the sizes
of the accept batches; the node connections made.  The slowest 1 % of the
requests are broken down the same way.  The instrumentation costs CPU
(~10 µs per iteration and per connection): compare the shares, not the
absolute numbers, with wrk's own figures printed first.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import json
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import proxy_quick  # noqa: E402

#: Linux: SO_TIMESTAMPNS (the socket option) and SCM_TIMESTAMPNS (the control message)
_TIMESTAMPNS = 35


def serve(port: int, backends: list[int], out: str) -> None:
    """proxy_quick.serve, instrumented; the records go to C{out} on SIGUSR2."""
    sys.path.insert(0, REPO)
    import socket

    from modcluster.proxy import accept, fastloop, front, http
    from modcluster.proxy import client as client_module

    perf = time.perf_counter
    recording = [False]
    iterations: list[list] = []  # poll call, poll return, end, events, cpu, run delay x2
    conns: list[tuple] = []  # queue, accept, forward, its iteration, read, its iteration, close
    collections: list[tuple] = []
    sweeps: list[float] = []
    batches: list[int] = []
    connects = [0]
    current = [0]
    stat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)

    def run_delay() -> float:
        return int(os.pread(stat, 64, 0).split()[1]) / 1e9

    started = [0.0]

    def on_gc(phase, info) -> None:
        if phase == "start":
            started[0] = perf()
        elif recording[0]:
            collections.append((info["generation"], perf() - started[0]))

    gc.callbacks.append(on_gc)

    install_loop = fastloop.install

    def install(r) -> bool:
        real = r._poller
        real_poll = real.poll

        class Poller:
            def __getattr__(self, name):
                return getattr(real, name)

            def poll(self, timeout, n):
                d0 = run_delay()
                t0 = perf()
                events = real_poll(timeout, n)
                t1 = perf()
                d1 = run_delay()
                current[0] += 1
                if recording[0]:
                    iterations.append([t0, t1, 0.0, len(events), time.thread_time(),
                                       d1 - d0, d1, current[0]])
                return events

        r._poller = Poller()
        installed = install_loop(r)
        loop = r.doPoll

        def iteration(timeout) -> None:
            loop(timeout)
            if recording[0] and iterations and iterations[-1][7] == current[0]:
                it = iterations[-1]
                it[2] = perf()
                it[4] = time.thread_time() - it[4]
                it[6] = run_delay() - it[6]

        r.doIteration = r.doPoll = iteration
        return installed

    fastloop.install = install  # type: ignore[assignment]
    install_accept = accept.install

    def install_timestamps(port, clock=None):
        port.socket.setsockopt(socket.SOL_SOCKET, _TIMESTAMPNS, 1)
        return install_accept(port, clock)

    accept.install = install_timestamps  # type: ignore[assignment]
    acceptor_call = accept.Acceptor.__call__

    def accepting(self) -> None:
        before = self.port.sessionno
        acceptor_call(self)
        if recording[0]:
            batches.append(self.port.sessionno - before)

    accept.Acceptor.__call__ = accepting  # type: ignore[method-assign]
    protocol = client_module.ClientProtocol
    made, lost = protocol.connectionMade, protocol.connectionLost

    def connection_made(self) -> None:
        self._lat = [-1.0, perf(), None, 0, None, 0]
        now = time.time_ns()
        try:
            _, ancillary, _, _ = self.transport.socket.recvmsg(
                1, 64, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            for _level, kind, data in ancillary:
                if kind == _TIMESTAMPNS:
                    sec, ns = struct.unpack("qq", data[:16])
                    self._lat[0] = (now - (sec * 10**9 + ns)) / 1e9
        except OSError:
            pass
        made(self)

    def connection_lost(self, reason=None) -> None:
        lat = getattr(self, "_lat", None)
        if recording[0] and lat is not None and lat[0] >= 0 and lat[2] and lat[4]:
            conns.append((*lat, perf()))
        lost(self, reason)

    protocol.connectionMade = connection_made  # type: ignore[method-assign]
    protocol.connectionLost = connection_lost  # type: ignore[method-assign]
    forward = http.HttpForwarder.forward

    def forwarding(self, exchange, fresh=False):
        upstream = forward(self, exchange, fresh)
        lat = getattr(exchange.proto, "_lat", None)
        if lat is not None and lat[2] is None:
            lat[2] = perf()
            lat[3] = current[0]
        return upstream

    http.HttpForwarder.forward = forwarding  # type: ignore[method-assign]
    received = http.NodeProtocol.dataReceived

    def node_data(self, data) -> None:
        ex = self.ex
        lat = getattr(ex.proto, "_lat", None) if ex is not None else None
        if lat is not None and lat[4] is None:
            lat[4] = perf()
            lat[5] = current[0]
        received(self, data)

    http.NodeProtocol.dataReceived = node_data  # type: ignore[method-assign]
    connect = http.NodeProtocol.connect

    def connecting(self) -> None:
        if recording[0]:
            connects[0] += 1
        connect(self)

    http.NodeProtocol.connect = connecting  # type: ignore[method-assign]
    sweep = front.ProxyFactory.sweep

    def sweeping(self) -> None:
        t0 = perf()
        sweep(self)
        if recording[0]:
            sweeps.append(perf() - t0)

    front.ProxyFactory.sweep = sweeping  # type: ignore[method-assign]

    def start(*_) -> None:
        recording[0] = True

    def dump(*_) -> None:
        recording[0] = False
        with open(out + ".part", "w") as f:
            json.dump({"iterations": iterations, "conns": conns, "gc": collections,
                       "sweeps": sweeps, "batches": batches, "connects": connects[0]}, f)
        os.rename(out + ".part", out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, dump)
    proxy_quick.serve(port, backends)


def wrk(port: int, seconds: float, connections: int) -> str:
    return subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-H",
         "Connection: close", f"http://127.0.0.1:{port}/f"],
        capture_output=True, text=True, check=True).stdout


def quantiles(values: list[float], scale: float = 1e3) -> str:
    xs = sorted(values)
    if not xs:
        return "-"
    n = len(xs)
    return "  ".join(f"p{p:g} {xs[min(n - 1, int(n * p / 100))] * scale:6.2f}"
                     for p in (50, 90, 99, 99.9))


def report(data: dict) -> None:
    its = [it for it in data["iterations"] if it[2]]
    conns = data["conns"]
    if not its or not conns:
        print("nothing recorded")
        return
    index = {it[7]: it for it in its}
    conns = [c for c in conns if c[3] in index and c[5] in index]
    parts = [
        ("queue (arrival -> accept)", lambda c: c[0]),
        ("accept -> forwarded to the node", lambda c: c[2] - c[1]),
        ("forwarded -> end of that iteration", lambda c: index[c[3]][2] - c[2]),
        ("-> the poll returning the answer", lambda c: index[c[5]][1] - index[c[3]][2]),
        ("that poll -> the answer read", lambda c: c[4] - index[c[5]][1]),
        ("answer read -> closed", lambda c: c[6] - c[4]),
        ("arrival -> closed (total)", lambda c: c[0] + c[6] - c[1]),
    ]
    print(f"{len(conns)} requests, {len(its)} loop iterations; ms:")
    for name, f in parts:
        print(f"  {name:36s} {quantiles([f(c) for c in conns])}")
    totals = [c[0] + c[6] - c[1] for c in conns]
    threshold = sorted(totals)[int(len(totals) * 0.99)]
    slow = [c for c, t in zip(conns, totals) if t >= threshold]
    print(f"the slowest 1 % (>= {threshold * 1e3:.1f} ms), mean ms (all requests' mean):")
    for name, f in parts:
        print(f"  {name:36s} {statistics.mean(f(c) for c in slow) * 1e3:6.2f} "
              f"({statistics.mean(f(c) for c in conns) * 1e3:5.2f})")
    starts = [it[0] for it in its]

    def waited(a: float, b: float) -> float:
        # the iterations whose poll began after the accept, up to the close's
        # (the accept's own iteration is left out: its wait came before)
        k = bisect.bisect_left(starts, a)
        total = 0.0
        while k < len(its) and its[k][0] < b:
            total += its[k][5] + its[k][6]
            k += 1
        return total

    for name, group in (("the slowest 1 %", slow), ("every 20th", conns[::20])):
        stay = statistics.mean(c[6] - c[1] for c in group) * 1e3
        cpu_wait = statistics.mean(waited(c[1], c[6]) for c in group) * 1e3
        print(f"  {name}: accept -> closed {stay:.2f} ms; the proxy waited for a CPU "
              f"{cpu_wait:.2f} ms in the iterations after its accept")
    busy = [it[2] - it[1] for it in its]
    cpu = [it[4] for it in its]
    wall = its[-1][2] - its[0][0]
    print(f"iterations, ms: busy (wall) {quantiles(busy)}")
    print(f"                busy (CPU)  {quantiles(cpu)}")
    print(f"                events      {quantiles([float(it[3]) for it in its], 1)}")
    print(f"over {wall:.2f} s: busy {sum(busy):.2f} s (CPU {sum(cpu):.2f} s); waiting for a CPU "
          f"{sum(it[6] for it in its):.2f} s inside iterations, "
          f"{sum(it[5] for it in its):.2f} s waking from epoll_wait")
    for generation in (0, 1, 2):
        pauses = [t for g, t in data["gc"] if g == generation]
        print(f"GC generation {generation}: {len(pauses)} collections, ms {quantiles(pauses)}")
    print(f"sweeps: {len(data['sweeps'])}, ms {quantiles(data['sweeps'])}")
    b = data["batches"]
    print(f"accept batches: {len(b)}, mean {statistics.mean(b):.1f}, "
          f"of 1: {b.count(1)}, full ({max(b)}): {b.count(max(b))}")
    print(f"node connections made while measuring: {data['connects']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--serve", nargs="+")
    args = ap.parse_args()
    if args.serve:
        serve(int(args.serve[0]), [int(p) for p in args.serve[1:-1]], args.serve[-1])
        return
    tmp = tempfile.mkdtemp(prefix="txmc-close-")
    procs: list[subprocess.Popen] = []
    try:
        www = os.path.join(tmp, "www")
        os.makedirs(www)
        with open(os.path.join(www, "f"), "wb") as f:
            f.write(b"x" * 100)
        n1, n2, port = proxy_quick.free_port(), proxy_quick.free_port(), proxy_quick.free_port()
        with open(os.path.join(tmp, "nginx.conf"), "w") as f:
            f.write(f"""worker_processes 1; daemon off; pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen 127.0.0.1:{n1}; root {www}; default_type text/plain; }}
  server {{ listen 127.0.0.1:{n2}; root {www}; default_type text/plain; }} }}
""")
        procs.append(subprocess.Popen(["nginx", "-c", os.path.join(tmp, "nginx.conf")],
                                      start_new_session=True))
        out = os.path.join(tmp, "trace.json")
        p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", str(port),
                              str(n1), str(n2), out], start_new_session=True)
        procs.append(p)
        proxy_quick.wait_port(port)
        wrk(port, 1, args.connections)
        p.send_signal(signal.SIGUSR1)
        text = wrk(port, args.seconds, args.connections)
        p.send_signal(signal.SIGUSR2)
        for line in text.splitlines():
            if re.search(r"Requests/sec|\s(50|75|90|99)%\s", line):
                print("wrk:", line.strip())
        for _ in range(300):
            if os.path.exists(out):
                break
            time.sleep(0.1)
        with open(out) as f:
            report(json.load(f))
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
