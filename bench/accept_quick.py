#!/usr/bin/env python3
"""
The cost of a new client connection in the proxy process, without the node
and without wrk (not a test; bench/run.py is the full suite):

    .venv/bin/python bench/accept_quick.py [--batches 200] [--batch 25] [--rounds 6]
    .venv/bin/python bench/accept_quick.py --micro

C{--micro}: the accept path alone, no node, no nginx: per batch, 25 clients
connect and send a request head; timed (wall clock, µs per connection, min
and p25 of 400 alternating batches): accepting, building the transport, the
protocol's C{connectionMade} (what C{ClientProtocol} does with the transport:
C{set_nodelay}, C{direct_writer}, C{registerProducer}) and the first read of
each connection (for Twisted's loop, the C{doRead} the next iteration would
make, without its epoll event); then, separately, closing them
(C{lose_connection}).

A ProxyFactory routing to two nginx nodes (started here, as in
proxy_quick.py; a 100-byte file) listens on 127.0.0.1 on a private epoll
reactor with the lean event loop (fastloop).  Each batch: C{--batch} clients
connect and send C{GET /f HTTP/1.1 / Connection: close} (not timed); then the
reactor's loop iterations run until the proxy has answered and closed all of
them (timed: CPU time of this process, so neither the clients' sends and
reads nor nginx count); then the clients read their answers to the end
(checked) and close.

Rounds alternate Twisted's accept loop (C{tcp.Port.doRead}) and the proxy's
own (modcluster/proxy/accept.py) on two listening ports of the same reactor,
and print the CPU µs per connection (min and median over the rounds) and the
loop iterations a batch took.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

REQUEST = b"GET /f HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--micro", action="store_true")
    args = ap.parse_args()
    if args.micro:
        micro()
        return
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import proxy_quick

    tmp = tempfile.mkdtemp(prefix="txmc-accept-")
    www = os.path.join(tmp, "www")
    os.makedirs(www)
    with open(os.path.join(www, "f"), "wb") as f:
        f.write(b"x" * 100)
    n1, n2 = proxy_quick.free_port(), proxy_quick.free_port()
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
    nginx = subprocess.Popen(["nginx", "-c", os.path.join(tmp, "nginx.conf")],
                             start_new_session=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        proxy_quick.wait_port(n1)
        proxy_quick.wait_port(n2)
        run(args, (n1, n2))
    finally:
        os.killpg(nginx.pid, signal.SIGTERM)
        nginx.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, nodes) -> None:
    from twisted.internet.epollreactor import EPollReactor

    from modcluster.cluster.model import BalancerSettings, NodeSettings
    from modcluster.cluster.registry import Registry
    from modcluster.config import ProxyConfig
    from modcluster.proxy import ProxyFactory, accept, fastloop

    reactor = EPollReactor()
    assert fastloop.install(reactor)
    reg = Registry(reactor)
    for i, node in enumerate(nodes):
        route = f"node{i}"
        reg.config(BalancerSettings("mycluster"),
                   NodeSettings(route=route, host="127.0.0.1", port=node, type="http"),
                   [(["localhost"], ["/"])])
        reg.app("ENABLE-APP", route, ["localhost"], ["/"])
        reg.apply_status(route, 100, True)
    factory = ProxyFactory(reactor, ProxyConfig(), lambda: reg.table, reg.set_error,
                           lambda route: None)
    ports = {}
    for name in ("twisted", "own"):
        port = reactor.listenTCP(0, factory, interface="127.0.0.1", backlog=1024)
        if name == "own":
            assert accept.install(port)
        ports[name] = port
    factory.doStart()

    def batch(port) -> tuple[float, int]:
        clients = [socket.create_connection(("127.0.0.1", port.getHost().port))
                   for _ in range(args.batch)]
        for c in clients:
            c.sendall(REQUEST)
        start_clients = port.sessionno
        t0 = time.process_time()
        iterations = 0
        while port.sessionno - start_clients < args.batch or factory._clients:
            reactor.runUntilCurrent()
            t = reactor.timeout()
            reactor.doIteration(0.05 if t is None else min(t, 0.05))  # blocks: no CPU
            iterations += 1
        spent = time.process_time() - t0
        for c in clients:
            data = b""
            while True:
                chunk = c.recv(4096)
                if not chunk:
                    break
                data += chunk
            assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"x" * 100), data[:60]
            c.close()
        return spent, iterations

    for name in ports:  # warm up
        for _ in range(20):
            batch(ports[name])
    results = {name: [] for name in ports}
    loops = {name: [] for name in ports}
    for r in range(args.rounds):
        order = list(ports) if r % 2 == 0 else list(reversed(ports))
        for name in order:
            spent = its = 0
            for _ in range(args.batches):
                s, i = batch(ports[name])
                spent += s
                its += i
            results[name].append(spent / (args.batches * args.batch) * 1e6)
            loops[name].append(its / args.batches)
    print(f"{args.batch} clients a batch, {args.batches} batches x {args.rounds} rounds, "
          f"load average {os.getloadavg()[0]:.1f}")
    for name, runs in results.items():
        print(f"  {name:8s} CPU µs/connection min {min(runs):6.1f}  median "
              f"{statistics.median(runs):6.1f}   loop iterations a batch "
              f"{statistics.median(loops[name]):.1f}")


def micro(batch: int = 25, batches: int = 400) -> None:
    from twisted.internet import tcp
    from twisted.internet.epollreactor import EPollReactor
    from twisted.internet.protocol import Factory, Protocol

    from modcluster.proxy import accept
    from modcluster.proxy._transport import direct_writer, lose_connection, set_nodelay

    reactor = EPollReactor()
    got: list = []

    class Client(Protocol):
        def connectionMade(self):
            set_nodelay(self.transport)
            self.write = direct_writer(self.transport)
            self.transport.registerProducer(self, True)

        def pauseProducing(self):
            pass

        def resumeProducing(self):
            pass

        def stopProducing(self):
            pass

        def dataReceived(self, data):
            got.append(self)

    factory = Factory.forProtocol(Client)
    ports = {name: reactor.listenTCP(0, factory, interface="127.0.0.1", backlog=1024)
             for name in ("twisted", "own")}
    assert accept.install(ports["own"])

    def one(name):
        port = ports[name]
        clients = [socket.create_connection(("127.0.0.1", port.getHost().port))
                   for _ in range(batch)]
        for c in clients:
            c.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        del got[:]
        t0 = time.perf_counter()
        port.doRead()
        if name == "twisted":
            for fd in list(reactor._reads):
                s = reactor._selectables[fd]
                if s.__class__ is tcp.Server and s.protocol not in got:
                    s.doRead()
        t1 = time.perf_counter()
        for p in list(got):
            lose_connection(p.transport)
        t2 = time.perf_counter()
        assert len(got) == batch, len(got)
        for c in clients:
            c.close()
        return (t1 - t0) / batch * 1e6, (t2 - t1) / batch * 1e6

    res: dict = {name: [] for name in ports}
    for i in range(batches):
        for name in (list(ports) if i % 2 else list(reversed(list(ports)))):
            res[name].append(one(name))
    print(f"{batch} clients a batch, {batches} batches, load average {os.getloadavg()[0]:.1f}")
    for name, runs in res.items():
        opened = sorted(a for a, _ in runs)
        closed = sorted(b for _, b in runs)
        print(f"  {name:8s} accept+build+first read µs/connection min {opened[0]:.1f} "
              f"p25 {opened[len(opened) // 4]:.1f}   close min {closed[0]:.1f} "
              f"p25 {closed[len(closed) // 4]:.1f}")


if __name__ == "__main__":
    main()
