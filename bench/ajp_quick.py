#!/usr/bin/env python3
"""
Quick benchmark of the AJP forwarding path against the HTTP one (not a test;
the full suite is bench/run.py).

    .venv/bin/python bench/ajp_quick.py [--seconds 5] [--rounds 3] [--size 100]
                                        [--tomcat] [--profile]

Starts, on free 127.0.0.1 ports:

 - one nginx serving a C{--size}-byte file (the HTTP node);
 - the AJP node: a minimal AJP13 responder in its own process (framing only:
   CPONG for CPING, one canned SEND_HEADERS + SEND_BODY_CHUNK + END_RESPONSE,
   sent in one write, for each FORWARD_REQUEST; Tomcat's byte layout), or a
   real Tomcat 10 with C{--tomcat} (tests/support/tomcat.py, full JIT);
 - two txmodcluster data planes (C{ProxyFactory} + the real forwarders, fed by
   a L{Registry} in which the node is registered directly, no MCMP), one with
   the nginx as its C{Type=http} node, one with the AJP node as C{Type=ajp};
 - with C{--tomcat}, also httpd 2.4 with C{mod_proxy_ajp} to the same Tomcat
   (if apache2 is installed), the reference of the AJP target.

Then runs C{wrk -t1 -c50} keep-alive against each in alternation (order
rotated each round) and prints requests/s and the proxy's CPU microseconds per
request (user+system from /proc, steadier than requests/s on a shared
machine).  C{--profile} runs the AJP proxy under cProfile and prints its top
functions at the end.  C{--only ajp} skips the HTTP proxy.

    .venv/bin/python bench/ajp_quick.py --serve-proxy PORT ajp BACKEND_PORT
    .venv/bin/python bench/ajp_quick.py --serve-ajp PORT SIZE

run one piece alone (for py-spy, perf, ...).  Every process started here is
stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the tree whose modcluster the proxy processes import (--baseline sets it for some)
CODE = os.environ.get("AJPQ_REPO", REPO)
LOOPBACK = "127.0.0.1"


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from proxy_quick import children, cpu_seconds, free_port  # noqa: E402
from proxy_quick import wait_port as _wait_port  # noqa: E402


def wait_port(port: int, timeout: float = 20.0) -> None:
    _wait_port(port, timeout)


# -- the minimal AJP responder ---------------------------------------------------------


def canned_response(size: int) -> bytes:
    """SEND_HEADERS (200, Content-Type, Content-Length) + one body chunk + END_RESPONSE(reuse)."""
    body = b"x" * size
    cl = b"%d" % size
    payload = (b"\x04" + struct.pack(">H", 200) + struct.pack(">H", 3) + b"200\x00"
               + struct.pack(">H", 2)
               + b"\xa0\x01" + struct.pack(">H", 24) + b"text/plain;charset=UTF-8\x00"
               + b"\xa0\x03" + struct.pack(">H", len(cl)) + cl + b"\x00")
    out = b"AB" + struct.pack(">H", len(payload)) + payload
    out += b"AB" + struct.pack(">HBH", size + 4, 3, size) + body + b"\x00"
    out += b"AB\x00\x02\x05\x01"
    return out


def serve_ajp(port: int, size: int) -> None:
    """
    Answer every FORWARD_REQUEST with the canned response and every CPING
    with CPONG; request bodies (Content-Length) are not supported.
    """
    response = canned_response(size)
    cpong = b"AB\x00\x01\x09"
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((LOOPBACK, port))
    lsock.listen(1024)
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    bufs: dict = {}
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            if key.data is None:
                try:
                    c, _ = lsock.accept()
                except BlockingIOError:
                    continue
                c.setblocking(False)
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                bufs[c] = b""
                sel.register(c, selectors.EVENT_READ, 1)
                continue
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                del bufs[s]
                s.close()
                continue
            buf = bufs[s] + data
            out = []
            pos = 0
            while len(buf) - pos >= 4:
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                if len(buf) - pos < 4 + n:
                    break
                kind = buf[pos + 4] if n else -1
                out.append(cpong if kind == 10 else response if kind == 2 else b"")
                pos += 4 + n
            bufs[s] = buf[pos:]
            if out:
                try:
                    s.sendall(b"".join(out))  # small: fits the socket buffer
                except OSError:  # the proxy aborted this connection
                    sel.unregister(s)
                    del bufs[s]
                    s.close()


# -- one proxy -------------------------------------------------------------------------


def one_node_factory(reactor, kind: str, backend: int):
    """The real ProxyFactory (with the AJP forwarder) routing / to one node."""
    sys.path.insert(0, CODE)
    from modcluster.proxy.ajp import AJPForwarder
    from modcluster.cluster.model import BalancerSettings, NodeSettings
    from modcluster.cluster.registry import Registry
    from modcluster.config import ProxyConfig
    from modcluster.proxy import ProxyFactory

    reg = Registry(reactor)
    reg.config(BalancerSettings("mycluster"),
               NodeSettings(route="node0", host=LOOPBACK, port=backend, type=kind),
               [(["localhost"], ["/"])])
    reg.app("ENABLE-APP", "node0", ["localhost"], ["/"])
    reg.apply_status("node0", 100, True)
    config = ProxyConfig()
    obs = observer(reactor)
    extra = {} if obs is None else {"observer": obs}  # a --baseline tree may not have it
    return ProxyFactory(reactor, config, lambda: reg.table, reg.set_error,
                        lambda route: None, forwarders={"ajp": AJPForwarder(reactor, config)},
                        **extra)


def observer(reactor):
    """
    With C{AJPQ_OBSERVE} set (C{--observe}): the access log (C{AJPQ_LOG_FORMAT},
    default combined, to the file C{AJPQ_LOG}, default /dev/null) and the
    client metrics switched on, as C{proxy.access_log} and
    C{proxy.client_metrics} do; C{AJPQ_OBSERVE=metrics}: the metrics only.
    """
    what = os.environ.get("AJPQ_OBSERVE")
    if not what:
        return None
    from modcluster.accesslog import AccessLine, LogFile
    from modcluster.proxy.observe import ClientStats, Observer

    sink = line = None
    if what != "metrics":
        sink = LogFile(os.environ.get("AJPQ_LOG", os.devnull))
        line = AccessLine(os.environ.get("AJPQ_LOG_FORMAT", "combined"))
    # time.time is what a real reactor's seconds() is (MemoryReactorClock's is
    # a Python method, slower than production's)
    return Observer(time.time, sink, line, ClientStats())


def serve_proxy(port: int, kind: str, backend: int) -> None:
    sys.path.insert(0, CODE)
    from twisted.internet import reactor

    factory = one_node_factory(reactor, kind, backend)
    reactor.listenTCP(port, factory, interface=LOOPBACK, backlog=1024)
    if os.environ.get("AJPQ_COUNT_READS") and kind == "ajp":
        # how many reads from the node per response (Tomcat may split them)
        from modcluster.proxy import ajp as fwmod

        counts = [0, 0]
        read = fwmod._NodeProtocol.dataReceived
        ended = fwmod.AJPConnection.responseEnded

        def counting_read(self, data):
            counts[0] += 1
            read(self, data)

        def counting_end(self, reusable):
            counts[1] += 1
            ended(self, reusable)

        fwmod._NodeProtocol.dataReceived = counting_read
        fwmod.AJPConnection.responseEnded = counting_end
        reactor.addSystemEventTrigger(
            "before", "shutdown",
            lambda: print(f"AJP reads per response: {counts[0] / max(counts[1], 1):.2f} "
                          f"({counts[0]} reads, {counts[1]} responses)", file=sys.stderr))
    from modcluster.proxy import fastloop

    fastloop.install(reactor)
    if os.environ.get("PROXY_PROFILE"):
        import cProfile
        import pstats

        prof = cProfile.Profile()
        reactor.callLater(float(os.environ.get("PROXY_PROFILE_DELAY", "3")), prof.enable)

        def dump():
            prof.disable()
            st = pstats.Stats(prof, stream=sys.stderr)
            st.sort_stats("tottime").print_stats(40)
            st.sort_stats("cumulative").print_stats(30)

        reactor.addSystemEventTrigger("before", "shutdown", dump)
    reactor.run()


# -- in-process harness --------------------------------------------------------------


class _Sink:
    """A minimal transport: remembers what was written, nothing else."""

    connected = True
    disconnecting = False

    def __init__(self, peer=("127.0.0.1", 40000), host=("127.0.0.1", 8000)) -> None:
        from twisted.internet.address import IPv4Address

        self.out: list = []
        self.peer = IPv4Address("TCP", *peer)
        self.host = IPv4Address("TCP", *host)
        self.producer = None

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writeSequence(self, seq) -> None:
        self.out.extend(seq)

    def getPeer(self):
        return self.peer

    def getHost(self):
        return self.host

    def registerProducer(self, producer, streaming) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def setTcpNoDelay(self, enabled) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def loseConnection(self) -> None:
        raise AssertionError("connection closed during the benchmark")

    abortConnection = loseConnection


def inproc(kind: str, size: int, requests: int, profile: bool = False,
           headers: bytes = b"") -> float:
    """
    Python cost of one proxied request, without sockets: the real ProxyFactory
    and forwarder, a client connection and a node connection on L{_Sink}
    transports; the node's answer (canned AJP response, or an HTTP response
    like nginx's) is fed to the node connection's protocol.  Returns
    microseconds of CPU per request.
    """
    sys.path.insert(0, CODE)
    from twisted.internet.testing import MemoryReactorClock

    reactor = MemoryReactorClock()
    factory = one_node_factory(reactor, kind, 9)
    client = factory.buildProtocol(None)
    ct = _Sink()
    client.makeConnection(ct)
    request = (b"GET /f HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n" + headers + b"\r\n")
    if kind == "ajp":
        answer = canned_response(size)
    else:
        answer = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n"
                  b"Date: Sat, 22 Nov 2026 06:00:00 GMT\r\nContent-Type: text/plain\r\n"
                  b"Content-Length: %d\r\nLast-Modified: Sat, 22 Nov 2026 05:00:00 GMT\r\n"
                  b"Connection: keep-alive\r\nETag: \"6920f8a0-64\"\r\n"
                  b"Accept-Ranges: bytes\r\n\r\n" % size + b"x" * size)
    # first request: the node connection is made (and CPINGed, for AJP)
    client.dataReceived(request)
    host, port, nf = reactor.tcpClients[-1][:3]
    node = nf.buildProtocol(None)
    nt = _Sink(peer=(LOOPBACK, port), host=(LOOPBACK, 50000))
    node.makeConnection(nt)
    if kind == "ajp":
        if nt.out and nt.out[0] == b"\x12\x34\x00\x01\x0a":
            node.dataReceived(b"AB\x00\x01\x09")
    node.dataReceived(answer)
    if not ct.out or not ct.out[-1].endswith(b"x" * size):
        raise RuntimeError(f"no response relayed: {ct.out[-3:]!r}")
    expect = len(b"".join(ct.out))
    feed_client = client.dataReceived
    feed_node = node.dataReceived
    cout = ct.out
    nout = nt.out

    def run(n: int) -> None:
        for _ in range(n):
            feed_client(request)
            feed_node(answer)
            del cout[:]
            del nout[:]

    run(2000)
    feed_client(request)
    feed_node(answer)
    if len(b"".join(cout)) != expect:
        raise RuntimeError(f"unexpected response: {ct.out!r}")
    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(run, requests)
        st = pstats.Stats(prof, stream=sys.stdout)
        st.sort_stats("tottime").print_stats(30)
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        run(requests)
        best = min(best, time.process_time() - t0)
    return best / requests * 1e6


# -- driver ----------------------------------------------------------------------------


def wrk(url: str, seconds: float, connections: int) -> tuple[float, float, int]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
    if "Non-2xx" in out or "Socket errors" in out:
        print("   wrk reported errors:", out.strip().splitlines()[-3:], file=sys.stderr)
    return rps, p99, total


def check(port: int, path: str, size: int) -> None:
    with socket.create_connection((LOOPBACK, port), 5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                  .encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") or b"x" * size not in body:
        raise RuntimeError(f"bad answer from :{port}{path}: {head[:200]!r} + {len(body)} bytes")


def spawn(procs: list, args: list, env=None, **kw) -> subprocess.Popen:
    p = subprocess.Popen(args, start_new_session=True, env=env, **kw)
    procs.append(p)
    return p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--tomcat", action="store_true", help="real Tomcat 10 as the AJP node")
    ap.add_argument("--profile", action="store_true", help="cProfile the AJP proxy")
    ap.add_argument("--only", choices=("ajp", "all"), default="all")
    ap.add_argument("--inproc", action="store_true",
                    help="in-process Python cost per request (no sockets), HTTP and AJP")
    ap.add_argument("--requests", type=int, default=20000, help="per --inproc measurement")
    ap.add_argument("--baseline", metavar="DIR",
                    help="also measure the AJP proxy with the modcluster package of DIR "
                         "(a copy of the repository before a change), in alternation")
    ap.add_argument("--observe", action="store_true",
                    help="also measure each proxy with the access log (to a file) and the "
                         "client metrics on (AJPQ_LOG_FORMAT: combined, extended, json)")
    ap.add_argument("--inproc-one", nargs=2, metavar=("KIND", "HEADERS"), help=argparse.SUPPRESS)
    ap.add_argument("--serve-proxy", nargs=3, metavar=("PORT", "TYPE", "BACKEND"))
    ap.add_argument("--serve-ajp", nargs=2, type=int, metavar=("PORT", "SIZE"))
    args = ap.parse_args()
    me = os.path.abspath(__file__)
    if args.serve_proxy:
        serve_proxy(int(args.serve_proxy[0]), args.serve_proxy[1], int(args.serve_proxy[2]))
        return
    if args.serve_ajp:
        serve_ajp(*args.serve_ajp)
        return
    extra = (b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101\r\n"
             b"Accept: text/html,application/xhtml+xml,*/*;q=0.8\r\n"
             b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate\r\n"
             b"Cookie: theme=dark\r\n")
    if args.inproc_one:
        kind, hdrs = args.inproc_one
        print(inproc(kind, args.size, args.requests, args.profile,
                     extra if hdrs == "browser" else b""))
        return
    if args.inproc:
        # one child process per measurement (each imports its own tree), alternating
        variants = [] if args.only == "ajp" else [("http", "http", REPO)]
        variants.append(("ajp", "ajp", REPO))
        if args.baseline:
            variants.append(("ajp baseline", "ajp", os.path.abspath(args.baseline)))
        if args.observe:
            variants += [(f"{label} +observe", kind, code)
                         for label, kind, code in variants if "baseline" not in label]
        for hdrs in ("wrk", "browser"):
            runs: dict = {v[0]: [] for v in variants}
            for r in range(args.rounds):
                for label, kind, code in variants:
                    prof = args.profile and r == 0 and label == "ajp" and hdrs == "wrk"
                    env = dict(os.environ, AJPQ_REPO=code)
                    if label.endswith("+observe"):
                        env["AJPQ_OBSERVE"] = "1"
                    out = subprocess.run(
                        [sys.executable, me, "--inproc-one", kind, hdrs, "--size", str(args.size),
                         "--requests", str(args.requests)] + (["--profile"] if prof else []),
                        env=env, capture_output=True, text=True,
                        check=True).stdout
                    if prof:
                        print(out)
                    runs[label].append(float(out.split()[-1]))
            for label, values in runs.items():
                print(f"in-process, {hdrs:7s} request  {label:13s} {min(values):6.2f} us/request "
                      f"(min of {len(values)}: " + ", ".join(f"{v:.1f}" for v in values) + ")")
        return
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (bench/install)")
    tmp = tempfile.mkdtemp(prefix="txmc-ajpq-")
    procs: list[subprocess.Popen] = []
    tomcat = None
    try:
        targets: dict[str, tuple[int, str, object]] = {}
        www = os.path.join(tmp, "www")
        os.makedirs(www)
        with open(os.path.join(www, "f"), "wb") as f:
            f.write(b"x" * args.size)
        if args.only == "all":
            nport = free_port()
            with open(os.path.join(tmp, "nginx.conf"), "w") as f:
                f.write(f"""worker_processes 1; daemon off; pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen {LOOPBACK}:{nport}; root {www}; default_type text/plain; }} }}
""")
            nginx = shutil.which("nginx") or "/usr/sbin/nginx"
            spawn(procs, [nginx, "-c", os.path.join(tmp, "nginx.conf")])
            hp = free_port()
            p = spawn(procs, [sys.executable, me, "--serve-proxy", str(hp), "http", str(nport)])
            targets["txmodcluster http"] = (hp, "/f", p)
            if args.observe:
                op = free_port()
                p = spawn(procs, [sys.executable, me, "--serve-proxy", str(op), "http",
                                  str(nport)],
                          env=dict(os.environ, AJPQ_OBSERVE="1",
                                   AJPQ_LOG=os.path.join(tmp, "access-http.log")))
                targets["txmodcluster http +observe"] = (op, "/f", p)
        path = "/f"
        if args.tomcat:
            sys.path.insert(0, REPO)
            from tests.support.tomcat import TomcatInstance

            tomcat = TomcatInstance(os.path.join(tmp, "tomcat"), jvm_route="tomcat1",
                                    heap_mb=256, quick_start=False)
            tomcat.build()
            shutil.copyfile(os.path.join(www, "f"),
                            os.path.join(tomcat.base_dir, "webapps", "echo", "f"))
            tomcat.start(timeout=120)
            aport = tomcat.ajp_port
            path = "/echo/f"
            httpd = shutil.which("apache2") or "/usr/sbin/apache2"
            if os.path.exists(httpd):
                hport = free_port()
                with open(os.path.join(tmp, "httpd.conf"), "w") as f:
                    f.write(f"""ServerRoot /usr/lib/apache2
ServerName localhost
PidFile {tmp}/httpd.pid
DefaultRuntimeDir {tmp}
Listen {LOOPBACK}:{hport}
ErrorLog {tmp}/httpd-error.log
LoadModule mpm_event_module modules/mod_mpm_event.so
LoadModule authz_core_module modules/mod_authz_core.so
LoadModule proxy_module modules/mod_proxy.so
LoadModule proxy_ajp_module modules/mod_proxy_ajp.so
StartServers 2
ServerLimit 2
ThreadsPerChild 64
MaxRequestWorkers 128
KeepAlive On
MaxKeepAliveRequests 0
ProxyPass / ajp://{LOOPBACK}:{aport}/
ProxyPreserveHost On
""")
                p = spawn(procs, [httpd, "-f", os.path.join(tmp, "httpd.conf"), "-DFOREGROUND"],
                          stderr=subprocess.DEVNULL)
                targets["httpd mod_proxy_ajp"] = (hport, path, p)
        else:
            aport = free_port()
            spawn(procs, [sys.executable, me, "--serve-ajp", str(aport), str(args.size)])
        wait_port(aport)
        env = dict(os.environ)
        if args.profile:
            env["PROXY_PROFILE"] = "1"
        ap_port = free_port()
        p = spawn(procs, [sys.executable, me, "--serve-proxy", str(ap_port), "ajp", str(aport)],
                  env=env)
        targets["txmodcluster ajp"] = (ap_port, path, p)
        if args.observe:
            op = free_port()
            p = spawn(procs, [sys.executable, me, "--serve-proxy", str(op), "ajp", str(aport)],
                      env=dict(env, AJPQ_OBSERVE="1",
                               AJPQ_LOG=os.path.join(tmp, "access-ajp.log")))
            targets["txmodcluster ajp +observe"] = (op, path, p)
        if args.baseline:
            bp = free_port()
            p = spawn(procs, [sys.executable, me, "--serve-proxy", str(bp), "ajp", str(aport)],
                      env=dict(os.environ, AJPQ_REPO=os.path.abspath(args.baseline)))
            targets["txmodcluster ajp baseline"] = (bp, path, p)
        for port, tpath, _ in targets.values():
            wait_port(port)
            check(port, tpath, args.size)
        warm = 8 if args.tomcat else 1
        for port, tpath, _ in targets.values():
            wrk(f"http://{LOOPBACK}:{port}{tpath}", warm, args.connections)
        results: dict[str, list] = {name: [] for name in targets}
        names = list(targets)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                port, tpath, p = targets[name]
                pids = children(p.pid)
                before = cpu_seconds(pids)
                rps, p99, total = wrk(f"http://{LOOPBACK}:{port}{tpath}", args.seconds,
                                      args.connections)
                cpu = cpu_seconds(pids) - before
                results[name].append((rps, p99, cpu / total * 1e6))
        print(f"{args.size} B responses, wrk -t1 -c{args.connections}, {args.rounds} x "
              f"{args.seconds:g} s, {os.cpu_count()} CPUs, AJP node: "
              f"{'Tomcat 10' if args.tomcat else 'minimal responder'}")
        for name, runs in results.items():
            rps = sorted(r[0] for r in runs)[len(runs) // 2]
            cpu = sorted(r[2] for r in runs)[len(runs) // 2]
            print(f"  {name:22s} {rps:9.0f} req/s (median)  cpu {cpu:6.1f} us/req (median)"
                  f"  runs: " + ", ".join(f"{r[0]:.0f}/{r[2]:.1f}" for r in runs))
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if tomcat is not None:
            tomcat.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
