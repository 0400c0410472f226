#!/usr/bin/env python3
"""
Quick data-plane benchmark (not a test; the full suite is bench/run.py).

    .venv/bin/python bench/proxy_quick.py [--seconds 5] [--rounds 2] [--size 100]
    .venv/bin/python bench/proxy_quick.py --serve PORT BACKEND_PORT...   # proxy only
    PROXY_TLS=server.pem [PROXY_TLS_ENGINE=twisted] ... --serve ...      # on ssl:PORT
    PROXY_ACCEPT=0 ... --serve ...   # Twisted's accept loop (tcp:, and ssl: with stdlib TLS)

Starts, on free 127.0.0.1 ports: one nginx with two static servers (the nodes),
httpd 2.4 with mod_proxy_balancer over them (keepalive), and the txmodcluster
data plane alone (a ProxyFactory fed by a Registry in which the two nginx are
registered directly, no MCMP).  Then runs ``wrk -t1 -c50`` against direct
nginx, httpd and txmodcluster in alternation and prints requests/s, p99 and
the proxy's CPU time per request (user+system of its processes, which is
steadier than requests/s on a shared machine).  Needs nginx, apache2 and wrk
(bench/install).  Every process started here is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    s = socket.socket()
    s.bind((LOOPBACK, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port: int, timeout: float = 10.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection((LOOPBACK, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / tick


def children(pid: int) -> list[int]:
    out = [pid]
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid == pid:
                    out.append(int(d))
            except OSError:
                pass
    return out


def serve(port: int, backends: list[int]) -> None:
    sys.path.insert(0, REPO)
    from twisted.internet import reactor

    from modcluster.cluster.model import BalancerSettings, NodeSettings
    from modcluster.cluster.registry import Registry
    from modcluster.config import ProxyConfig
    from modcluster.proxy import ProxyFactory

    reg = Registry(reactor)
    for i, bport in enumerate(backends):
        route = f"node{i}"
        reg.config(BalancerSettings("mycluster"),
                   NodeSettings(route=route, host=LOOPBACK, port=bport, type="http"),
                   [(["localhost"], ["/"])])
        reg.app("ENABLE-APP", route, ["localhost"], ["/"])
        reg.apply_status(route, 100, True)
    factory = ProxyFactory(reactor, ProxyConfig(), lambda: reg.table, reg.set_error,
                           lambda route: None)
    pem = os.environ.get("PROXY_TLS")  # a PEM (key + certificate): an ssl: listener
    if pem:
        from modcluster.tls import server_endpoint

        from modcluster.proxy.alpn import alpn_protocols, listener_factory

        engine = os.environ.get("PROXY_TLS_ENGINE", "stdlib")
        description = f"ssl:{port}:interface={LOOPBACK}:backlog=1024:privateKey={pem}"
        # as tap.py: with [proxy] http2 (default) the ALPN-negotiating factory
        d = server_endpoint(reactor, description, alpn_protocols(factory.config),
                            engine=engine).listen(listener_factory(factory, description))
        if os.environ.get("PROXY_ACCEPT", "1") == "1" and engine == "stdlib":
            from modcluster.proxy import accept

            d.addCallback(accept.install)
    else:
        listening = reactor.listenTCP(port, factory, interface=LOOPBACK, backlog=1024)
        if os.environ.get("PROXY_ACCEPT", "1") == "1":
            from modcluster.proxy import accept

            accept.install(listening)
    if os.environ.get("PROXY_FASTLOOP", "1") == "1":
        from modcluster.proxy import fastloop

        fastloop.install(reactor)
        if os.environ.get("PROXY_FREEZE", "1") == "1":
            reactor.callWhenRunning(fastloop.freeze_heap)
    if os.environ.get("PROXY_PROFILE"):
        import cProfile
        import pstats

        prof = cProfile.Profile()
        reactor.callLater(1, prof.enable)

        def dump():
            prof.disable()
            pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(35)

        reactor.addSystemEventTrigger("before", "shutdown", dump)
    reactor.run()


def wrk(url: str, seconds: float) -> tuple[float, float]:
    out = subprocess.run(["wrk", "-t1", "-c50", f"-d{seconds:g}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
    if "Non-2xx" in out or "Socket errors" in out:
        print("   wrk reported errors:", out.strip().splitlines()[-3:], file=sys.stderr)
    return rps, p99


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--serve", nargs="+", type=int)
    ap.add_argument("--compare-loop", action="store_true",
                    help="also run txmodcluster without modcluster.proxy.fastloop")
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], args.serve[1:])
        return
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} is not installed (bench/install)")
    tmp = tempfile.mkdtemp(prefix="txmc-quick-")
    procs: list[subprocess.Popen] = []
    try:
        www = os.path.join(tmp, "www")
        os.makedirs(www)
        with open(os.path.join(www, "f"), "wb") as f:
            f.write(b"x" * args.size)
        n1, n2, hp, tp = free_port(), free_port(), free_port(), free_port()
        with open(os.path.join(tmp, "nginx.conf"), "w") as f:
            f.write(f"""worker_processes 1; daemon off; pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen {LOOPBACK}:{n1}; root {www}; default_type text/plain; }}
  server {{ listen {LOOPBACK}:{n2}; root {www}; default_type text/plain; }} }}
""")
        procs.append(subprocess.Popen(["nginx", "-c", os.path.join(tmp, "nginx.conf")],
                                      start_new_session=True))
        targets = {"direct nginx": (n1, None)}
        httpd = shutil.which("apache2") or "/usr/sbin/apache2"
        if os.path.exists(httpd):
            with open(os.path.join(tmp, "httpd.conf"), "w") as f:
                f.write(f"""ServerRoot /usr/lib/apache2
ServerName localhost
PidFile {tmp}/httpd.pid
DefaultRuntimeDir {tmp}
Listen {LOOPBACK}:{hp}
ErrorLog {tmp}/httpd-error.log
LoadModule mpm_event_module modules/mod_mpm_event.so
LoadModule authz_core_module modules/mod_authz_core.so
LoadModule proxy_module modules/mod_proxy.so
LoadModule proxy_http_module modules/mod_proxy_http.so
LoadModule proxy_balancer_module modules/mod_proxy_balancer.so
LoadModule slotmem_shm_module modules/mod_slotmem_shm.so
LoadModule lbmethod_byrequests_module modules/mod_lbmethod_byrequests.so
KeepAlive On
MaxKeepAliveRequests 0
<Proxy balancer://mycluster>
  BalancerMember http://{LOOPBACK}:{n1} keepalive=On
  BalancerMember http://{LOOPBACK}:{n2} keepalive=On
</Proxy>
ProxyPass / balancer://mycluster/
ProxyPreserveHost On
""")
            p = subprocess.Popen([httpd, "-f", os.path.join(tmp, "httpd.conf"), "-DFOREGROUND"],
                                 start_new_session=True, stderr=subprocess.DEVNULL)
            procs.append(p)
            targets["httpd mod_proxy_balancer"] = (hp, p.pid)
        p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", str(tp),
                              str(n1), str(n2)], start_new_session=True)
        procs.append(p)
        targets["txmodcluster"] = (tp, p.pid)
        if args.compare_loop:
            tp2 = free_port()
            p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", str(tp2),
                                  str(n1), str(n2)], start_new_session=True,
                                 env=dict(os.environ, PROXY_FASTLOOP="0"))
            procs.append(p)
            targets["txmodcluster, no fastloop"] = (tp2, p.pid)
        for port, _ in targets.values():
            wait_port(port)
        for port, _ in targets.values():  # warm up pools and caches
            wrk(f"http://{LOOPBACK}:{port}/f", 1)
        results: dict[str, list] = {name: [] for name in targets}
        for _ in range(args.rounds):
            for name, (port, pid) in targets.items():
                pids = children(pid) if pid else []
                before = cpu_seconds(pids)
                rps, p99 = wrk(f"http://{LOOPBACK}:{port}/f", args.seconds)
                cpu = cpu_seconds(pids) - before
                results[name].append((rps, p99, cpu / (rps * args.seconds) * 1e6 if pid else 0))
        print(f"{args.size} B responses, wrk -t1 -c50, {args.rounds} x {args.seconds:g} s, "
              f"{os.cpu_count()} CPUs")
        base = max(r[0] for r in results.get("httpd mod_proxy_balancer", [(1, 0, 0)]))
        for name, runs in results.items():
            best = max(runs)
            print(f"  {name:26s} {best[0]:9.0f} req/s  p99 {best[1]:6.2f} ms"
                  + (f"  cpu {best[2]:5.1f} us/req" if best[2] else "")
                  + (f"  x httpd {best[0] / base:4.2f}" if name != "direct nginx" else ""))
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
