#!/usr/bin/env python3
"""
txmodcluster benchmarks (not part of the test suite).  See docs/performance.md.

    bench/install                                   # once, as root
    /work/main/.venv/bin/python bench/run.py [--quick] [--only NAME[,NAME]] [--duration S]

Everything runs on 127.0.0.1 with free ports chosen here, from private
configuration files in a temporary directory (removed at the end unless --keep):

* two nginx instances (the static backends: a 100-byte file, a 64 KiB file and a
  sparse 1 GiB file);
* one httpd 2.4 (event MPM, mod_proxy_balancer + mod_proxy_http to the two nginx,
  and mod_proxy_ajp balancers to a Tomcat for the ``ajp`` benchmark; mod_ssl on a
  second port);
* one HAProxy (``nbthread 1``, ``http-reuse always``, round robin over the same two
  nginx; an ``ssl`` bind on a second port), when installed;
* a self-signed certificate made at run time with ``openssl req`` (the same for all);
* txmodcluster (``twistd -n modcluster --config <generated toml>``), with the two
  nginx registered over MCMP exactly as the Java listener registers a node
  (INFO, CONFIG, ENABLE-APP, STATUS Load=100);
* for ``ajp``: a Tomcat 10 from tests/support/tomcat.py.

Benchmarks (``--only``): ``http`` (direct / httpd / HAProxy / txmodcluster; 100 B and
64 KiB; keep-alive and Connection: close), ``tls`` (TLS to the client: keep-alive
requests through httpd + mod_ssl, HAProxy ``ssl`` and our ``ssl:`` listener, and new
TLS connections per second with ``openssl s_time``, full and resumed), ``h2`` (HTTP/2
to the client: ``h2load -c10 -m10`` against the same TLS listeners with h2 offered by
ALPN: httpd mod_http2, HAProxy ``alpn h2``, our ``ssl:``; Debian ``nghttp2-client``; and
h2c with prior knowledge on plain listeners: httpd ``Protocols h2c``, HAProxy ``proto h2``,
our ``tcp:`` with ``proxy.h2c``), ``ajp``,
``mcmp-status``, ``register-1000``, ``stream-1g``, ``console-1000`` (console, API and
metrics at 1 000 nodes x 10 contexts, and proxied req/s while the console is refreshed
every second).  A target that cannot run (e.g. txmodcluster before its proxy works) is reported as
"unavailable: <reason>" and the run goes on.

Results: a table on stdout and a JSON file under bench/results/ (gitignored) with
the machine description.  Every process started here lives in its own process
group and is killed on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote_plus

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
PYTHON = VENV / "bin" / "python"
TWISTD = VENV / "bin" / "twistd"
RESULTS_DIR = REPO / "bench" / "results"
LOOPBACK = "127.0.0.1"

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HTTPD = shutil.which("apache2") or "/usr/sbin/apache2"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
H2LOAD = shutil.which("h2load") or "/usr/bin/h2load"
HTTPD_MODULES = Path("/usr/lib/apache2/modules")

SIZES = {"100B": ("small.txt", 100), "64KiB": ("large.bin", 65536)}
BIG_FILE, BIG_SIZE = "big.bin", 1 << 30
BENCHES = ("http", "tls", "h2", "ajp", "mcmp-status", "register-1000", "stream-1g",
           "console-1000")

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Unavailable(Exception):
    """A target or benchmark cannot run; the message says why."""


def log(msg: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------------------
# Processes: own process group, die with us, killed on exit whatever happens
# ---------------------------------------------------------------------------------

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover
    _prctl = None


def _die_with_parent() -> None:  # preexec_fn (child, before exec)
    if _prctl is not None:
        _prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG


_PROCS: list[subprocess.Popen] = []


def spawn(cmd: list[str], log_path: Path, *, cwd: Path | None = None,
          env: dict | None = None) -> subprocess.Popen:
    """Start cmd in its own process group, stdout+stderr to log_path."""
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [str(c) for c in cmd], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent)
    _PROCS.append(proc)
    return proc


def stop(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers; reap."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group, if any
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass
    if proc in _PROCS:
        _PROCS.remove(proc)


def stop_all() -> None:
    for proc in list(reversed(_PROCS)):
        stop(proc, timeout=3.0)


atexit.register(stop_all)


def _on_signal(signum, frame):
    raise SystemExit(128 + signum)


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_accepts(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(port: int, proc: subprocess.Popen, timeout: float, what: str,
              log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while not port_accepts(port):
        if proc.poll() is not None:
            raise Unavailable(f"{what} exited with status {proc.returncode}: "
                              f"{log_reason(log_path)}")
        if time.monotonic() > deadline:
            raise Unavailable(f"{what} did not listen on {port} within {timeout:.0f} s: "
                              f"{log_reason(log_path)}")
        time.sleep(0.05)


def log_reason(path: Path) -> str:
    """The most telling line of a log: the last exception line, else the last line."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()
                 if ln.strip()]
    except OSError:
        return "(no log)"
    for ln in reversed(lines):
        if re.search(r"(Error|Exception|error|emerg|failed)\b", ln) and \
                not ln.startswith("File "):
            return ln[-300:]
    return lines[-1][-300:] if lines else "(empty log)"


# ---------------------------------------------------------------------------------
# /proc: CPU seconds and RSS of a process tree
# ---------------------------------------------------------------------------------

def _stat(pid: int):
    """(ppid, starttime, cpu ticks incl. reaped children) or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    # fields[0] = state (field 3); utime=14, stime=15, cutime=16, cstime=17, start=22
    ppid = int(fields[1])
    ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return ppid, int(fields[19]), ticks


def tree_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                children.setdefault(st[0], []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_snapshot(roots: list[int]) -> dict[int, tuple[int, int]]:
    snap = {}
    for root in roots:
        for pid in tree_pids(root):
            st = _stat(pid)
            if st is not None:
                snap[pid] = (st[1], st[2])
    return snap


def cpu_seconds(before: dict, after: dict) -> float:
    ticks = 0
    for pid, (start, t) in after.items():
        old = before.get(pid)
        ticks += t - old[1] if old is not None and old[0] == start else t
    return ticks / CLK_TCK


def machine_snapshot() -> tuple[int, int]:
    """(all jiffies, idle + iowait jiffies) of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]


def machine_busy(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """Share of the machine's CPU time (all cores) that was not idle in between."""
    total = after[0] - before[0]
    return None if total <= 0 else 1 - (after[1] - before[1]) / total


def generator_cpu() -> float:
    """
    CPU seconds of this script's children that have ended and been waited for.  The
    load generators (wrk, s_time, h2load) are the only children that end while a row is
    measured (the servers live until the end), so the difference over one measurement
    is the load generator's CPU.
    """
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def add_machine(res: dict, m0: tuple[int, int], g0: float) -> None:
    """Machine busy share and the load generator's CPU per 1 000 requests."""
    busy = machine_busy(m0, machine_snapshot())
    if busy is not None:
        res["machine_busy"] = busy
    res["client_cpu_s"] = generator_cpu() - g0
    res["client_cpu_s_per_1k"] = res["client_cpu_s"] * 1000 / max(1, res["requests"])


#: monotonic time of the last node registration over MCMP (register_node)
LAST_REGISTRATION: float | None = None
#: proxy.slow_start's default (modcluster/config.py): for that long after it registers,
#: a node takes the slow-start branch of the balancer's choice, which no deployment pays
#: after its first half minute; rows are measured after it (settle())
SLOW_START = 30.0


def settle() -> None:
    """Wait until SLOW_START seconds have passed since the last registration."""
    if LAST_REGISTRATION is None:
        return
    left = LAST_REGISTRATION + SLOW_START + 0.5 - time.monotonic()
    if left > 0:
        log(f"waiting {left:.0f} s: nodes registered less than proxy.slow_start "
            f"({SLOW_START:g} s) ago are still in slow start")
        time.sleep(left)


def rss_kib(roots: list[int]) -> tuple[int, int]:
    """(sum of VmRSS, sum of Pss) in KiB over the trees of roots."""
    rss = pss = 0
    for root in roots:
        for pid in tree_pids(root):
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmRSS:"):
                            rss += int(line.split()[1])
                            break
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    for line in f:
                        if line.startswith("Pss:"):
                            pss += int(line.split()[1])
                            break
            except (OSError, ValueError):
                pass
    return rss, pss


class RssSampler(threading.Thread):
    """Samples the RSS of process trees every `interval` seconds until stopped."""

    def __init__(self, roots: list[int], interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.roots, self.interval = roots, interval
        self.samples: list[tuple[float, int, int]] = []
        self._halt = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        while not self._halt.is_set():
            if self.roots:
                rss, pss = rss_kib(self.roots)
                self.samples.append((time.monotonic() - self._t0, rss, pss))
            self._halt.wait(self.interval)

    def finish(self) -> dict:
        self._halt.set()
        self.join()
        if not self.samples:
            return {}
        return {"rss_peak_kib": max(s[1] for s in self.samples),
                "pss_peak_kib": max(s[2] for s in self.samples),
                "rss_last_kib": self.samples[-1][1]}


# ---------------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(out: str) -> dict:
    res: dict = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    if m:
        res["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        res["rps"] = float(m.group(1))
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$",
                                       out, re.M):
        res[f"p{pct}_ms"] = float(value) * _UNITS[unit]
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    res["socket_error_detail"] = m.group(0) if m else ""
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    return res


def run_wrk(url: str, duration: float, connections: int, keepalive: bool = True,
            script: Path | None = None, tmp: Path | None = None) -> dict:
    cmd = [WRK, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency"]
    if not keepalive:
        cmd += ["-H", "Connection: close"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    log_path = (tmp or Path(tempfile.gettempdir())) / "wrk.out"
    log_path.write_bytes(b"")
    proc = spawn(cmd, log_path)
    try:
        proc.wait(duration + 60)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise Unavailable(f"wrk did not finish: {' '.join(cmd)}") from None
    stop(proc)
    out = log_path.read_text(errors="replace")
    res = parse_wrk(out)
    if "rps" not in res or "requests" not in res:
        raise Unavailable(f"wrk failed ({proc.returncode}): {out.strip()[-300:]}")
    res["errors"] = res["socket_errors"] + res["non2xx"]
    return res


def http_get(port: int, path: str, timeout: float = 5.0,
             tls: bool = False) -> tuple[int, bytes]:
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(LOOPBACK, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def check_target(port: int, path: str, size: int, tls: bool = False) -> None:
    """Raise Unavailable unless GET path answers 200 with size bytes."""
    try:
        status, body = http_get(port, path, tls=tls)
    except OSError as e:
        raise Unavailable(f"GET {path} on :{port} failed: {e!r}") from None
    except http.client.HTTPException as e:
        raise Unavailable(f"GET {path} on :{port}: bad response {e!r}") from None
    if status != 200 or len(body) != size:
        raise Unavailable(f"GET {path} on :{port} answered {status} with {len(body)} "
                          f"bytes (expected 200, {size}): {body[:120]!r}")


# ---------------------------------------------------------------------------------
# The backends and the proxies
# ---------------------------------------------------------------------------------

def make_docroot(tmp: Path) -> Path:
    www = tmp / "www"
    www.mkdir()
    (www / "small.txt").write_bytes((b"0123456789" * 10)[:99] + b"\n")
    (www / "large.bin").write_bytes(bytes(range(256)) * 256)
    with open(www / BIG_FILE, "wb") as f:  # sparse: costs no disk
        f.truncate(BIG_SIZE)
    for p in (tmp, www):
        p.chmod(0o755)  # nginx workers run as nobody when we are root
    for p in www.iterdir():
        p.chmod(0o644)
    return www


class Nginx:
    def __init__(self, tmp: Path, name: str, www: Path) -> None:
        self.name, self.www = name, www
        self.dir = tmp / name
        self.dir.mkdir()
        self.dir.chmod(0o755)
        self.port = free_ports(1)[0]
        self.proc: subprocess.Popen | None = None

    def conf(self) -> str:
        d = self.dir
        user = "user nobody nogroup;\n" if os.geteuid() == 0 else ""
        return f"""# generated by bench/run.py
{user}daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
    open_file_cache max=64 inactive=600s;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    types {{ text/plain txt; application/octet-stream bin; }}
    default_type application/octet-stream;
    server {{
        listen {LOOPBACK}:{self.port} backlog=4096;
        server_name localhost;
        root {self.www};
        location / {{ }}
    }}
}}
"""

    def start(self) -> None:
        conf = self.dir / "nginx.conf"
        conf.write_text(self.conf())
        log_path = self.dir / "console.log"
        self.proc = spawn([NGINX, "-p", f"{self.dir}/", "-c", conf, "-e",
                           self.dir / "error.log"], log_path)
        wait_port(self.port, self.proc, 15, f"nginx {self.name}", self.dir / "error.log")

    @property
    def pid(self) -> int:
        return self.proc.pid


class Cert:
    """A self-signed RSA 2048 certificate for 127.0.0.1, made with openssl at run time."""

    def __init__(self, tmp: Path) -> None:
        d = tmp / "cert"
        d.mkdir()
        self.key, self.cert, self.pem = d / "key.pem", d / "cert.pem", d / "both.pem"
        out = subprocess.run(
            [OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=127.0.0.1", "-keyout", str(self.key), "-out", str(self.cert)],
            capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise Unavailable(f"openssl req failed: {out.stderr.strip()[-300:]}")
        self.pem.write_text(self.cert.read_text() + self.key.read_text())
        for f in (self.key, self.cert, self.pem):
            f.chmod(0o644)
        d.chmod(0o755)


class Httpd:
    def __init__(self, tmp: Path, backends: list[Nginx], ajp_port: int | None,
                 cert: Cert | None = None) -> None:
        self.dir = tmp / "httpd"
        (self.dir / "run").mkdir(parents=True)
        self.port = free_ports(1)[0]
        self.cert = cert
        #: mod_ssl listener (same proxying), when a certificate is given
        self.ssl_port = free_ports(1)[0] if cert else None
        #: mod_http2 on the mod_ssl listener (``Protocols h2 http/1.1``)
        self.h2 = False
        #: a plain listener of its own with ``Protocols h2c http/1.1`` (h2c with
        #: prior knowledge; the HTTP/1.1 listener above stays without mod_http2)
        self.h2c = False
        self.h2c_port = free_ports(1)[0]
        self.backends, self.ajp_port = backends, ajp_port
        self.proc: subprocess.Popen | None = None

    def conf(self) -> str:
        d = self.dir
        # authn_core/authz_core: without them httpd answers 500 ("couldn't check user")
        mods = ["mpm_event", "authn_core", "authz_core", "proxy", "proxy_http", "proxy_balancer",
                "slotmem_shm", "lbmethod_byrequests", "proxy_ajp"]
        if self.cert:
            mods += ["ssl", "socache_shmcb"]
        if (self.cert and self.h2) or self.h2c:
            mods.append("http2")
        load = "\n".join(f"LoadModule {m}_module {HTTPD_MODULES}/mod_{m}.so" for m in mods)
        user = "User www-data\nGroup www-data\n" if os.geteuid() == 0 else ""
        members = "\n".join(f'    BalancerMember "http://{LOOPBACK}:{b.port}"'
                            for b in self.backends)
        ajp = ""
        if self.ajp_port:
            ajp = f"""<Proxy "balancer://ajp">
    BalancerMember "ajp://{LOOPBACK}:{self.ajp_port}"
</Proxy>
<Proxy "balancer://ajpping">
    BalancerMember "ajp://{LOOPBACK}:{self.ajp_port}" ping=10
</Proxy>
ProxyPass "/ajp-ping/" "balancer://ajpping/"
ProxyPass "/ajp/" "balancer://ajp/"
"""
        return f"""# generated by bench/run.py (private instance: nothing from /etc/apache2)
ServerRoot "{d}"
ServerName {LOOPBACK}
PidFile "{d}/httpd.pid"
DefaultRuntimeDir "{d}/run"
ErrorLog "{d}/error.log"
LogLevel info
{load}
{user}Listen {LOOPBACK}:{self.port}
# event MPM: a fixed 2 processes x 64 threads, all started before the first request.
# No process churn during a run, and each process alone has a thread for every one
# of the 50 connections (a process whose workers are all busy closes kept-alive
# connections, which wrk counts as read errors).
StartServers 2
ServerLimit 2
ThreadLimit 64
ThreadsPerChild 64
MinSpareThreads 16
MaxSpareThreads 128
MaxRequestWorkers 128
MaxConnectionsPerChild 0
ListenBacklog 4096
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 15
Timeout 60
# no access log (mod_log_config is compiled in but no CustomLog): same as nginx
ProxyPreserveHost On
ProxyTimeout 60
<Proxy "balancer://bench">
{members}
    ProxySet lbmethod=byrequests
</Proxy>
{ajp}ProxyPass "/" "balancer://bench/"
{self.h2c_conf()}{self.ssl_conf()}"""

    def h2c_conf(self) -> str:
        if not self.h2c:
            return ""
        return f"""Listen {LOOPBACK}:{self.h2c_port}
<VirtualHost {LOOPBACK}:{self.h2c_port}>
    Protocols h2c http/1.1
</VirtualHost>
"""

    def ssl_conf(self) -> str:
        if not self.cert:
            return ""
        # Session cache and tickets: mod_ssl's defaults (tickets on), a shared cache.
        return f"""Listen {LOOPBACK}:{self.ssl_port} https
SSLSessionCache "shmcb:{self.dir}/run/ssl_scache(512000)"
<VirtualHost {LOOPBACK}:{self.ssl_port}>
    SSLEngine on
    SSLCertificateFile "{self.cert.cert}"
    SSLCertificateKeyFile "{self.cert.key}"
{"    Protocols h2 http/1.1" if self.h2 else ""}
</VirtualHost>
"""

    def start(self) -> None:
        conf = self.dir / "httpd.conf"
        conf.write_text(self.conf())
        log_path = self.dir / "console.log"
        self.proc = spawn([HTTPD, "-d", self.dir, "-f", conf, "-DFOREGROUND"], log_path,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                               "LANG": "C"})
        try:
            wait_port(self.port, self.proc, 15, "httpd", log_path)
        except Unavailable as e:
            raise Unavailable(f"{e}; error.log: {log_reason(self.dir / 'error.log')}") from None

    @property
    def pid(self) -> int:
        return self.proc.pid


class Haproxy:
    """HAProxy (Debian), one thread, http-reuse always, round robin over the nginx."""

    def __init__(self, tmp: Path, backends: list[Nginx], cert: Cert | None = None) -> None:
        self.dir = tmp / "haproxy"
        self.dir.mkdir()
        self.port = free_ports(1)[0]
        self.cert = cert
        self.ssl_port = free_ports(1)[0] if cert else None
        #: h2 offered by ALPN on the ssl bind
        self.h2 = False
        #: a plain bind of its own speaking HTTP/2 only (``proto h2``: h2c with
        #: prior knowledge)
        self.h2c = False
        self.h2c_port = free_ports(1)[0]
        self.backends = backends
        self.proc: subprocess.Popen | None = None

    def conf(self) -> str:
        servers = "\n".join(f"    server n{i} {LOOPBACK}:{b.port}"
                            for i, b in enumerate(self.backends, 1))
        alpn = " alpn h2,http/1.1" if self.h2 else ""
        ssl_bind = (f"    bind {LOOPBACK}:{self.ssl_port} ssl crt {self.cert.pem}{alpn}\n"
                    if self.cert else "")
        if self.h2c:
            ssl_bind += f"    bind {LOOPBACK}:{self.h2c_port} proto h2\n"
        return f"""# generated by bench/run.py (private instance: nothing from /etc/haproxy)
global
    nbthread 1
    maxconn 4000
    pidfile {self.dir}/haproxy.pid
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 15s
frontend bench
    bind {LOOPBACK}:{self.port} backlog 4096
{ssl_bind}    default_backend nginx
backend nginx
    balance roundrobin
    http-reuse always
{servers}
"""

    def start(self) -> None:
        if not os.access(HAPROXY, os.X_OK):
            raise Unavailable(f"{HAPROXY} missing: run bench/install")
        conf = self.dir / "haproxy.cfg"
        conf.write_text(self.conf())
        log_path = self.dir / "console.log"
        self.proc = spawn([HAPROXY, "-db", "-f", conf], log_path)
        wait_port(self.port, self.proc, 15, "haproxy", log_path)

    @property
    def pid(self) -> int:
        return self.proc.pid


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


class Txmc:
    """txmodcluster under twistd with a generated TOML configuration."""

    def __init__(self, tmp: Path, name: str = "txmc", *, proxy: dict | None = None,
                 manager: dict | None = None, cert: Cert | None = None) -> None:
        self.name = name
        self.dir = tmp / name
        self.dir.mkdir()
        self.mport, self.pport = free_ports(2)
        self.cert = cert
        #: an ssl: proxy listener beside the tcp: one, when a certificate is given
        self.sport = free_ports(1)[0] if cert else None
        self.proxy_opts, self.manager_opts = dict(proxy or {}), dict(manager or {})
        self.proc: subprocess.Popen | None = None
        #: None when the proxy listener works, else why not.
        self.proxy_unavailable: str | None = "not started"
        self.log_path = self.dir / "twistd.log"

    def conf(self) -> str:
        manager = {"listen": [f"tcp:{self.mport}:interface={LOOPBACK}"],
                   "state_file": str(self.dir / "state.json"), **self.manager_opts}
        listen = [f"tcp:{self.pport}:interface={LOOPBACK}"]
        if self.cert:
            listen.append(f"ssl:{self.sport}:interface={LOOPBACK}:"
                          f"privateKey={self.cert.key}:certKey={self.cert.cert}")
        proxy = {"listen": listen, **self.proxy_opts}
        # The console, API and metrics on the management listener (console.listen = []):
        # its default, a fixed port of its own, would collide between instances.
        console = {"listen": []}
        out = ["# generated by bench/run.py"]
        for section, values in (("manager", manager), ("proxy", proxy), ("console", console)):
            out.append(f"[{section}]")
            out += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        return "\n".join(out) + "\n"

    def start(self, timeout: float = 30.0) -> None:
        """Raise Unavailable if the management listener does not come up."""
        if not TWISTD.exists():
            raise Unavailable(f"{TWISTD} missing (project venv)")
        conf = self.dir / "txmodcluster.toml"
        conf.write_text(self.conf())
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                         if env.get("PYTHONPATH") else "")
        self.proc = spawn([TWISTD, "-n", "--pidfile=", "modcluster", "--config", conf],
                          self.log_path, cwd=self.dir, env=env)
        wait_port(self.mport, self.proc, timeout, "txmodcluster (management)", self.log_path)
        deadline = time.monotonic() + 3.0
        while not port_accepts(self.pport):
            if self.proc.poll() is not None:
                self.proxy_unavailable = f"twistd exited: {log_reason(self.log_path)}"
                return
            if time.monotonic() > deadline:
                self.proxy_unavailable = (
                    f"proxy listener {LOOPBACK}:{self.pport} not listening "
                    "(modcluster/tap.py does not start the proxy yet?)")
                return
            time.sleep(0.05)
        self.proxy_unavailable = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def died(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return f"twistd exited ({self.proc.returncode}): {log_reason(self.log_path)}"
        return None

    @property
    def pid(self) -> int:
        return self.proc.pid


# ---------------------------------------------------------------------------------
# MCMP client: the bytes the Java ModClusterListener sends (mcmp.md §1.2)
# ---------------------------------------------------------------------------------

def mcmp_body(params) -> str:
    return "&".join(f"{quote_plus(str(k))}={quote_plus(str(v))}" for k, v in params)


class McmpClient:
    """One keep-alive connection, one request at a time, like DefaultMCMPHandler."""

    def __init__(self, port: int, timeout: float = 20.0) -> None:
        self.port, self.timeout = port, timeout
        self.sock: socket.socket | None = None
        self.buf = b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buf = None, b""

    def _connect(self) -> None:
        self.sock = socket.create_connection((LOOPBACK, self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, method: str, params=(), wildcard: bool = False) -> tuple[int, dict, bytes]:
        body = mcmp_body(params).encode()
        head = f"{method} {'/*' if wildcard else '/'} HTTP/1.1\r\nHost: {LOOPBACK}:{self.port}\r\n"
        if body:
            head += f"Content-Length: {len(body)}\r\n"
        head += "User-Agent: ClusterListener/1.0\r\nConnection: Keep-Alive\r\n\r\n"
        data = head.encode() + body
        reused = self.sock is not None
        try:
            if self.sock is None:
                self._connect()
            self.sock.sendall(data)
            return self._response()
        except (OSError, ConnectionError):
            self.close()
            if not reused:
                raise
            self._connect()  # the Java client retries once on a fresh connection
            self.sock.sendall(data)
            return self._response()

    def _read_more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("management connection closed")
        self.buf += chunk

    def _response(self) -> tuple[int, dict, bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._read_more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        version, status = lines[0].split(" ", 2)[:2]
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            n = int(headers["content-length"])
            while len(self.buf) < n:
                self._read_more()
            body, self.buf = self.buf[:n], self.buf[n:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    self._read_more()
                size_line, self.buf = self.buf.split(b"\r\n", 1)
                n = int(size_line.split(b";")[0], 16)
                while len(self.buf) < n + 2:
                    self._read_more()
                body += self.buf[:n]
                self.buf = self.buf[n + 2:]
                if n == 0:
                    break
        else:
            body = b""
        conn = headers.get("connection", "").lower()
        if conn == "close" or (version == "HTTP/1.0" and conn != "keep-alive"):
            self.close()
        return int(status), headers, body

    def ok(self, method: str, params=(), wildcard: bool = False) -> bytes:
        status, headers, body = self.request(method, params, wildcard)
        if status != 200:
            raise Unavailable(f"MCMP {method} {mcmp_body(params)} -> {status} "
                              f"{headers.get('mess', '')} {body[:200]!r}")
        return body


def register_node(client: McmpClient, route: str, host: str, port: int, type_: str,
                  contexts=("/",), load: int | None = 100, info: bool = True) -> bytes:
    """INFO, CONFIG, one ENABLE-APP per context, STATUS: a Java node's registration."""
    global LAST_REGISTRATION
    LAST_REGISTRATION = time.monotonic()
    if info:
        client.ok("INFO")
    client.ok("CONFIG", [("JVMRoute", route), ("Host", host), ("Port", port),
                         ("StickySessionForce", "No"), ("Type", type_)])
    for ctx in contexts:
        client.ok("ENABLE-APP", [("JVMRoute", route), ("Alias", "localhost"),
                                 ("Context", ctx)])
    if load is None:
        return b""
    return client.ok("STATUS", [("JVMRoute", route), ("Load", load)])


def info_counts(client: McmpClient) -> dict:
    body = client.ok("INFO").decode("utf-8", "replace")
    return {"nodes": len(re.findall(r"^Node: \[", body, re.M)),
            "contexts": len(re.findall(r"^Context: \[", body, re.M))}


# ---------------------------------------------------------------------------------
# Measurement of one target
# ---------------------------------------------------------------------------------

class Target:
    def __init__(self, name: str, port: int | None, prefix: str = "",
                 proxy_pid=None, backend_pids=(), unavailable: str | None = None,
                 health=None, tls: bool = False, only: tuple = ()) -> None:
        self.name, self.port, self.prefix = name, port, prefix
        #: scenario labels this target runs in (empty: all)
        self.only = only
        self.tls = tls
        self.proxy_pid = proxy_pid              # callable -> pid or None
        self.backend_pids = backend_pids        # callable -> list of pids
        self.unavailable = unavailable
        self.health = health                    # callable -> reason or None

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.port}{self.prefix}/{path}"


def measure(target: Target, path: str, duration: float, connections: int,
            keepalive: bool, tmp: Path, script: Path | None = None) -> dict:
    proxy = [target.proxy_pid()] if target.proxy_pid else []
    backends = list(target.backend_pids()) if target.backend_pids else []
    sampler = RssSampler(proxy)
    cpu0, bcpu0 = cpu_snapshot(proxy), cpu_snapshot(backends)
    m0, g0 = machine_snapshot(), generator_cpu()
    sampler.start()
    try:
        res = run_wrk(target.url(path), duration, connections, keepalive, script=script,
                      tmp=tmp)
    finally:
        mem = sampler.finish()
    cpu1, bcpu1 = cpu_snapshot(proxy), cpu_snapshot(backends)
    add_machine(res, m0, g0)
    res.update(mem)
    n = max(1, res["requests"])
    if proxy:
        res["proxy_cpu_s"] = cpu_seconds(cpu0, cpu1)
        res["proxy_cpu_s_per_1k"] = res["proxy_cpu_s"] * 1000 / n
    if backends:
        res["backend_cpu_s"] = cpu_seconds(bcpu0, bcpu1)
        res["backend_cpu_s_per_1k"] = res["backend_cpu_s"] * 1000 / n
    return res


def aggregate(runs: list[dict]) -> dict:
    if not runs:
        return {}
    agg = {"rounds": len(runs), "rps": statistics.mean(r["rps"] for r in runs),
           "requests": sum(r["requests"] for r in runs),
           "errors": sum(r["errors"] for r in runs)}
    for k in ("p50_ms", "p75_ms", "p90_ms", "p99_ms"):
        vals = [r[k] for r in runs if k in r]
        if vals:
            agg[k] = statistics.median(vals)
    if all("proxy_cpu_s" in r for r in runs):
        agg["proxy_cpu_s_per_1k"] = sum(r["proxy_cpu_s"] for r in runs) * 1000 / max(
            1, agg["requests"])
    if all("backend_cpu_s" in r for r in runs):
        agg["backend_cpu_s_per_1k"] = sum(r["backend_cpu_s"] for r in runs) * 1000 / max(
            1, agg["requests"])
    if all("client_cpu_s" in r for r in runs):
        agg["client_cpu_s_per_1k"] = sum(r["client_cpu_s"] for r in runs) * 1000 / max(
            1, agg["requests"])
    busy = [r["machine_busy"] for r in runs if "machine_busy" in r]
    if busy:
        agg["machine_busy"] = statistics.mean(busy)
    peaks = [r["rss_peak_kib"] for r in runs if "rss_peak_kib" in r]
    if peaks:
        agg["rss_peak_mib"] = max(peaks) / 1024
    if len(runs) > 1:
        agg["rps_rounds"] = [round(r["rps"], 1) for r in runs]
    return agg


def run_matrix(title: str, targets: list[Target], scenarios: list[tuple],
               args, tmp: Path, direct: str, baseline: str,
               haproxy: str | None = None) -> dict:
    """
    scenarios: (label, path, size, keepalive[, wrk script text]).  Alternates
    targets per round.
    """
    results: dict = {}
    for t in targets:
        if t.unavailable is None and t.port is not None:
            for _label, path, size, *_ in scenarios:
                try:
                    check_target(t.port, t.prefix + "/" + path, size, t.tls)
                except Unavailable as e:
                    t.unavailable = str(e)
                    break
        if t.unavailable:
            log(f"{title}: {t.name} unavailable: {t.unavailable}")
    live = [t for t in targets if not t.unavailable]
    for t in live:  # warm-up (JIT, pools, page cache); not recorded
        try:
            run_wrk(t.url(scenarios[0][1]), args.warmup, args.connections, tmp=tmp)
        except Unavailable as e:
            t.unavailable = f"warm-up failed: {e}"
    settle()
    for label, path, _size, keepalive, *more in scenarios:
        script = None
        if more:
            script = tmp / ("wrk-" + re.sub(r"\W+", "-", label) + ".lua")
            script.write_text(more[0])
        runs: dict[str, list[dict]] = {t.name: [] for t in targets}
        for rnd in range(args.rounds):
            order = [t for t in targets if not t.unavailable]
            k = rnd % max(1, len(order))
            for t in order[k:] + order[:k]:
                if t.unavailable or (t.only and label not in t.only):
                    continue
                log(f"{title} {label} round {rnd + 1}/{args.rounds}: {t.name}")
                try:
                    res = measure(t, path, args.duration, args.connections, keepalive, tmp,
                                  script)
                except Unavailable as e:
                    t.unavailable = str(e)
                    continue
                why = t.health() if t.health else None
                if why:
                    t.unavailable = why
                    continue
                runs[t.name].append(res)
        results[label] = {}
        for t in targets:
            if t.only and label not in t.only:
                continue
            if runs[t.name]:
                results[label][t.name] = {"aggregate": aggregate(runs[t.name]),
                                          "runs": runs[t.name]}
            else:
                results[label][t.name] = {"unavailable": t.unavailable or "no run"}
        add_ratios(results[label], direct, baseline, haproxy)
    return results


def add_ratios(table: dict, direct: str, baseline: str, haproxy: str | None = None) -> None:
    d = table.get(direct, {}).get("aggregate")
    b = table.get(baseline, {}).get("aggregate")
    h = table.get(haproxy, {}).get("aggregate") if haproxy else None
    for name, row in table.items():
        agg = row.get("aggregate")
        if not agg:
            continue
        if d and d.get("rps"):
            agg["x_direct"] = agg["rps"] / d["rps"]
        if b and b.get("rps") and name != direct:
            agg["x_httpd"] = agg["rps"] / b["rps"]
            if b.get("p99_ms") and "p99_ms" in agg:
                agg["p99_x_httpd"] = agg["p99_ms"] / b["p99_ms"]
            if b.get("proxy_cpu_s_per_1k") and "proxy_cpu_s_per_1k" in agg:
                agg["cpu_x_httpd"] = agg["proxy_cpu_s_per_1k"] / b["proxy_cpu_s_per_1k"]
        if h and h.get("rps") and name not in (direct, haproxy):
            agg["x_haproxy"] = agg["rps"] / h["rps"]
            if h.get("p99_ms") and "p99_ms" in agg:
                agg["p99_x_haproxy"] = agg["p99_ms"] / h["p99_ms"]
            if h.get("proxy_cpu_s_per_1k") and "proxy_cpu_s_per_1k" in agg:
                agg["cpu_x_haproxy"] = agg["proxy_cpu_s_per_1k"] / h["proxy_cpu_s_per_1k"]


def fmt(v, spec: str, dash: str = "-") -> str:
    return dash if v is None else format(v, spec)


def errors_cell(agg: dict) -> str:
    """The error count, with "!" when more than 1 % of the requests failed."""
    bad = agg["errors"] > 0.01 * max(1, agg["requests"])
    return f"{agg['errors']}{'!' if bad else ''}"


def pct(share: float | None) -> float | None:
    return None if share is None else 100 * share


def print_matrix(title: str, results: dict, args) -> None:
    print(f"\n== {title} (wrk -t1 -c{args.connections}, {args.duration:g} s x "
          f"{args.rounds} round(s), alternating) ==")
    hdr = (f"{'scenario':<22} {'target':<26} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
           f"{'CPU s/1k':>8} {'RSS MB':>7} {'x direct':>8} {'x httpd':>7} "
           f"{'p99 x h':>7} {'CPU x h':>7} {'x HAPr':>6} {'p99 x HA':>8} {'CPU x HA':>8} "
           f"{'errors':>6} {'busy %':>6} {'gen s/1k':>8}")
    print(hdr)
    print("-" * len(hdr))
    for label, table in results.items():
        for name, row in table.items():
            agg = row.get("aggregate")
            if not agg:
                print(f"{label:<22} {name:<26} unavailable: {row.get('unavailable')}")
                continue
            print(f"{label:<22} {name:<26} {agg['rps']:>9.0f} {fmt(agg.get('p50_ms'), '.2f'):>7} "
                  f"{fmt(agg.get('p99_ms'), '.2f'):>7} "
                  f"{fmt(agg.get('proxy_cpu_s_per_1k'), '.3f'):>8} "
                  f"{fmt(agg.get('rss_peak_mib'), '.1f'):>7} "
                  f"{fmt(agg.get('x_direct'), '.2f'):>8} {fmt(agg.get('x_httpd'), '.2f'):>7} "
                  f"{fmt(agg.get('p99_x_httpd'), '.2f'):>7} "
                  f"{fmt(agg.get('cpu_x_httpd'), '.2f'):>7} "
                  f"{fmt(agg.get('x_haproxy'), '.2f'):>6} "
                  f"{fmt(agg.get('p99_x_haproxy'), '.2f'):>8} "
                  f"{fmt(agg.get('cpu_x_haproxy'), '.2f'):>8} {errors_cell(agg):>6} "
                  f"{fmt(pct(agg.get('machine_busy')), '.0f'):>6} "
                  f"{fmt(agg.get('client_cpu_s_per_1k'), '.3f'):>8}")


# ---------------------------------------------------------------------------------
# The environment shared by the benchmarks
# ---------------------------------------------------------------------------------

class Env:
    def __init__(self, tmp: Path, args) -> None:
        self.tmp, self.args = tmp, args
        self.www = make_docroot(tmp)
        self.nginx = [Nginx(tmp, "nginx1", self.www), Nginx(tmp, "nginx2", self.www)]
        self.tomcat_ports = free_ports(2) if "ajp" in args.only else None
        self.cert = Cert(tmp) if {"http", "tls", "h2"} & set(args.only) else None
        self.httpd = Httpd(tmp, self.nginx, self.tomcat_ports[1] if self.tomcat_ports else None,
                           self.cert)
        self.haproxy = Haproxy(tmp, self.nginx, self.cert)
        self.httpd.h2 = self.haproxy.h2 = "h2" in args.only
        self.httpd.h2c = self.haproxy.h2c = "h2" in args.only
        self.haproxy_unavailable: str | None = None
        self.txmc: Txmc | None = None
        self.txmc_unavailable: str | None = None
        #: the same with proxy.workers = args.workers (None when --workers 1)
        self.txmcw: Txmc | None = None
        self.txmcw_unavailable: str | None = None
        #: with --tls-twisted: an instance with proxy.tls_engine = "twisted"
        self.txmct: Txmc | None = None
        self.txmct_unavailable: str | None = None
        #: the same with the access log (combined, to a file) and the client metrics on
        #: (the measured variant of issue 18), in OBSERVED_SCENARIOS of `http` only
        self.txmco: Txmc | None = None
        self.txmco_unavailable: str | None = None

    def start(self) -> None:
        for n in self.nginx:
            n.start()
        log("nginx: " + ", ".join(f"{n.name} :{n.port}" for n in self.nginx))
        for n in self.nginx:
            for name, size in SIZES.values():
                check_target(n.port, "/" + name, size)
        self.httpd.start()
        log(f"httpd :{self.httpd.port}")
        for name, size in SIZES.values():
            check_target(self.httpd.port, "/" + name, size)
        if {"http", "tls", "h2"} & set(self.args.only):
            try:
                self.haproxy.start()
                log(f"haproxy :{self.haproxy.port} (ssl :{self.haproxy.ssl_port})")
            except Unavailable as e:
                self.haproxy_unavailable = str(e)
                log(f"haproxy unavailable: {e}")
        # proxy.h2c on for the h2 benchmark's h2c rows (its HTTP/1.1 path is
        # the same: the preface is looked for only where llhttp refuses it)
        self.txmc = Txmc(self.tmp, cert=self.cert,
                         proxy={"h2c": True} if "h2" in self.args.only else None)
        self.txmc_unavailable = self._start_registered(self.txmc, "txmodcluster")
        if self.args.workers > 1 and {"http", "ajp", "tls", "h2"} & set(self.args.only):
            self.txmcw = Txmc(self.tmp, "txmc-workers", proxy={"workers": self.args.workers},
                              cert=self.cert)
            self.txmcw_unavailable = self._start_registered(
                self.txmcw, f"txmodcluster workers={self.args.workers}")
        if "http" in self.args.only and not self.args.no_observed:
            self.txmco = Txmc(self.tmp, "txmc-observed", proxy={
                "access_log": str(self.tmp / "txmc-observed-access.log"),
                "access_log_format": "combined", "client_metrics": True})
            self.txmco_unavailable = self._start_registered(self.txmco, OBSERVED_NAME)

        if getattr(self.args, "tls_twisted", False) and "tls" in self.args.only:
            self.txmct = Txmc(self.tmp, "txmc-twisted-tls", proxy={"tls_engine": "twisted"},
                              cert=self.cert)
            self.txmct_unavailable = self._start_registered(self.txmct, TWISTED_TLS_NAME)

    def _start_registered(self, txmc: Txmc, label: str) -> str | None:
        """Start C{txmc}, register both nginx over MCMP; None or why not."""
        try:
            txmc.start()
            client = McmpClient(txmc.mport)
            for i, n in enumerate(self.nginx, 1):
                register_node(client, f"nginx{i}", LOOPBACK, n.port, "http")
            client.close()
            log(f"{label}: manager :{txmc.mport} proxy :{txmc.pport}; "
                f"nginx1/nginx2 registered over MCMP")
            return None
        except (Unavailable, OSError) as e:
            why = str(e) if isinstance(e, Unavailable) else \
                f"MCMP registration failed: {e!r} ({txmc.died() or 'twistd alive'})"
            log(f"{label} unavailable: {why}")
            return why

    def txmc_proxy_reason(self) -> str | None:
        if self.txmc_unavailable:
            return self.txmc_unavailable
        return self.txmc.died() or self.txmc.proxy_unavailable

    def txmco_proxy_reason(self) -> str | None:
        if self.txmco_unavailable:
            return self.txmco_unavailable
        return self.txmco.died() or self.txmco.proxy_unavailable

    def txmcw_proxy_reason(self) -> str | None:
        if self.txmcw_unavailable:
            return self.txmcw_unavailable
        return self.txmcw.died() or self.txmcw.proxy_unavailable

    @property
    def workers_name(self) -> str:
        return f"txmodcluster workers={self.args.workers}"

    def nginx_pids(self) -> list[int]:
        return [n.pid for n in self.nginx]

    def targets(self) -> list[Target]:
        tx = self.txmc
        return [
            Target("direct (nginx1)", self.nginx[0].port, proxy_pid=None,
                   backend_pids=lambda: [self.nginx[0].pid]),
            Target("httpd mod_proxy_balancer", self.httpd.port,
                   proxy_pid=lambda: self.httpd.pid, backend_pids=self.nginx_pids),
            Target(HAPROXY_NAME, self.haproxy.port, proxy_pid=lambda: self.haproxy.pid,
                   backend_pids=self.nginx_pids, unavailable=self.haproxy_unavailable),
            Target("txmodcluster", tx.pport if tx else None,
                   proxy_pid=lambda: tx.pid, backend_pids=self.nginx_pids,
                   unavailable=self.txmc_proxy_reason(),
                   health=lambda: tx.died()),
        ] + self._workers_target(self.nginx_pids, "") + self._observed_target()

    def _observed_target(self) -> list:
        txo = self.txmco
        if txo is None:
            return []
        return [Target(OBSERVED_NAME, txo.pport, proxy_pid=lambda: txo.pid,
                       backend_pids=self.nginx_pids, unavailable=self.txmco_proxy_reason(),
                       health=lambda: txo.died(), only=OBSERVED_SCENARIOS)]

    def tls_targets(self) -> list[Target]:
        """The TLS listeners of the proxies (same processes as targets())."""
        tx, txw = self.txmc, self.txmcw
        out = [
            Target(HTTPD_SSL_NAME, self.httpd.ssl_port, proxy_pid=lambda: self.httpd.pid,
                   backend_pids=self.nginx_pids, tls=True),
            Target(HAPROXY_SSL_NAME, self.haproxy.ssl_port, proxy_pid=lambda: self.haproxy.pid,
                   backend_pids=self.nginx_pids, unavailable=self.haproxy_unavailable,
                   tls=True),
            Target("txmodcluster ssl:", tx.sport if tx else None, proxy_pid=lambda: tx.pid,
                   backend_pids=self.nginx_pids, unavailable=self.txmc_proxy_reason(),
                   health=lambda: tx.died(), tls=True),
        ]
        txt = self.txmct
        if txt is not None:
            out.append(Target(TWISTED_TLS_NAME, txt.sport, proxy_pid=lambda: txt.pid,
                              backend_pids=self.nginx_pids,
                              unavailable=self.txmct_unavailable or txt.died()
                              or txt.proxy_unavailable,
                              health=lambda: txt.died(), tls=True))
        if txw is not None:
            out.append(Target(self.workers_name + " ssl:", txw.sport, proxy_pid=lambda: txw.pid,
                              backend_pids=self.nginx_pids,
                              unavailable=self.txmcw_proxy_reason(),
                              health=lambda: txw.died(), tls=True))
        return out

    def _workers_target(self, backend_pids, prefix: str) -> list:
        txw = self.txmcw
        if txw is None:
            return []
        return [Target(self.workers_name, txw.pport, prefix,
                       proxy_pid=lambda: txw.pid, backend_pids=backend_pids,
                       unavailable=self.txmcw_proxy_reason(), health=lambda: txw.died())]


# ---------------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------------

HAPROXY_NAME = "HAProxy nbthread 1"
#: txmodcluster with proxy.access_log (combined, to a file) and proxy.client_metrics on
OBSERVED_NAME = "txmodcluster log+metrics"
OBSERVED_SCENARIOS = ("100B keep-alive", "100B close")
HTTPD_SSL_NAME = "httpd + mod_ssl"
HAPROXY_SSL_NAME = "HAProxy ssl nbthread 1"


def scenarios() -> list[tuple]:
    out = []
    for keepalive in (True, False):
        for label, (name, size) in SIZES.items():
            out.append((f"{label} {'keep-alive' if keepalive else 'close'}", name, size,
                        keepalive))
    return out


#: wrk scripts that make every request head different, so that what a proxy
#: remembers of whole heads cannot help (txmodcluster's request-head memo,
#: docs/data-plane.md): a counter in the query string (the header lines stay
#: the same, as a browser's do from one resource to the next), or in a header
#: (nothing of the head repeats: the parser runs for every request).
NEW_URL_LUA = """\
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, wrk.path .. "?n=" .. n)
end
"""
NEW_HEADER_LUA = """\
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, {["X-Request-Id"] = tostring(n)})
end
"""


def bench_http(env: Env) -> dict:
    name, size = SIZES["100B"]
    extra = [("100B new URL", name, size, True, NEW_URL_LUA),
             ("100B new header", name, size, True, NEW_HEADER_LUA)]
    res = run_matrix("http", env.targets(), scenarios() + extra, env.args, env.tmp,
                     "direct (nginx1)", "httpd mod_proxy_balancer", HAPROXY_NAME)
    print_matrix("HTTP nodes: two nginx behind each proxy", res, env.args)
    return res


#: the row of --tls-twisted: the same proxy with proxy.tls_engine = "twisted"
TWISTED_TLS_NAME = "txmodcluster ssl: twisted engine"

#: parallel `openssl s_time` clients for the new-TLS-connection rows
S_TIME_CLIENTS = 4


def run_s_time(port: int, duration: float, reuse: bool, tmp: Path) -> dict:
    """
    New TLS connections per second: S_TIME_CLIENTS parallel ``openssl s_time``, each
    connecting, handshaking and closing in a loop (no request: the handshake alone).
    C{reuse}: ``-reuse`` offers the first connection's session again (TLS 1.2, so
    that the session - a ticket when the server issues them, else its id - is known at
    the end of the handshake; s_time reads no TLS 1.3 post-handshake ticket).
    """
    cmd = [OPENSSL, "s_time", "-connect", f"{LOOPBACK}:{port}",
           "-time", str(max(1, round(duration))), "-reuse" if reuse else "-new"]
    if reuse:
        cmd.append("-tls1_2")
    procs, paths = [], []
    t0 = time.monotonic()
    for i in range(S_TIME_CLIENTS):
        path = tmp / f"s_time-{i}.out"
        path.write_bytes(b"")
        paths.append(path)
        procs.append(spawn(cmd, path))
    for proc in procs:
        try:
            proc.wait(duration + 60)
        except subprocess.TimeoutExpired:
            stop(proc)
            raise Unavailable(f"openssl s_time did not finish: {' '.join(cmd)}") from None
    elapsed = time.monotonic() - t0
    total, outs = 0, []
    for path in paths:
        out = path.read_text(errors="replace")
        outs.append(out)
        found = re.findall(r"^(\d+) connections in [\d.]+s;", out, re.M)
        if not found:
            raise Unavailable(f"openssl s_time failed: {out.strip()[-300:]}")
        total += int(found[-1])
    res = {"requests": total, "rps": total / elapsed, "errors": 0}
    if reuse:  # s_time prints "r" per resumed connection, "*" per full handshake
        marks = "".join("".join(re.findall(r"[r*]+(?=\d+ connections in|$)", o.split(
            "session id reuse", 1)[-1], re.M)) for o in outs)
        res["resumed"], res["full"] = marks.count("r"), marks.count("*")
    return res


def measure_s_time(target: Target, duration: float, reuse: bool, tmp: Path) -> dict:
    proxy = [target.proxy_pid()] if target.proxy_pid else []
    cpu0 = cpu_snapshot(proxy)
    m0, g0 = machine_snapshot(), generator_cpu()
    res = run_s_time(target.port, duration, reuse, tmp)
    cpu1 = cpu_snapshot(proxy)
    add_machine(res, m0, g0)
    if proxy:
        res["proxy_cpu_s"] = cpu_seconds(cpu0, cpu1)
        res["proxy_cpu_s_per_1k"] = res["proxy_cpu_s"] * 1000 / max(1, res["requests"])
    return res


def bench_tls(env: Env) -> dict:
    if env.cert is None:
        raise Unavailable("no certificate")
    targets = env.tls_targets()
    name, size = SIZES["100B"]
    res = run_matrix("tls", targets, [("100B TLS keep-alive", name, size, True)], env.args,
                     env.tmp, "-", HTTPD_SSL_NAME, HAPROXY_SSL_NAME)
    settle()
    for label, reuse in (("new TLS conn/s full", False), ("new TLS conn/s resumed", True)):
        runs: dict[str, list[dict]] = {t.name: [] for t in targets}
        for rnd in range(env.args.rounds):
            order = [t for t in targets if not t.unavailable]
            k = rnd % max(1, len(order))
            for t in order[k:] + order[:k]:
                log(f"tls {label} round {rnd + 1}/{env.args.rounds}: {t.name}")
                try:
                    runs[t.name].append(measure_s_time(t, env.args.duration, reuse, env.tmp))
                except Unavailable as e:
                    runs[t.name].append({"unavailable": str(e)})
        res[label] = {}
        for t in targets:
            ok = [r for r in runs[t.name] if "rps" in r]
            if ok:
                agg = aggregate(ok)
                if reuse:
                    agg["resumed"] = sum(r.get("resumed", 0) for r in ok)
                    agg["full"] = sum(r.get("full", 0) for r in ok)
                res[label][t.name] = {"aggregate": agg, "runs": ok}
            else:
                bad = [r["unavailable"] for r in runs[t.name] if "unavailable" in r]
                res[label][t.name] = {"unavailable": t.unavailable or
                                      (bad[0] if bad else "no run")}
        add_ratios(res[label], "-", HTTPD_SSL_NAME, HAPROXY_SSL_NAME)
    print_matrix("TLS to the client (wrk keep-alive; openssl s_time x "
                 f"{S_TIME_CLIENTS} for new connections: req/s = connections/s)", res,
                 env.args)
    for t in targets:
        agg = res["new TLS conn/s resumed"].get(t.name, {}).get("aggregate")
        if agg:
            print(f"  resumed run, {t.name}: {agg['resumed']} resumed, {agg['full']} full "
                  "handshakes")
    return res


H2_NAMES = {HTTPD_SSL_NAME: "httpd mod_http2", HAPROXY_SSL_NAME: "HAProxy h2 nbthread 1"}
HTTPD_H2_NAME = H2_NAMES[HTTPD_SSL_NAME]
HAPROXY_H2_NAME = H2_NAMES[HAPROXY_SSL_NAME]
#: the h2c rows (cleartext, prior knowledge)
HTTPD_H2C_NAME = "httpd mod_http2 h2c"
HAPROXY_H2C_NAME = "HAProxy h2c nbthread 1"
H2_CLIENTS, H2_STREAMS = 10, 10


def run_h2load(url: str, duration: float, clients: int = H2_CLIENTS,
               streams: int = H2_STREAMS) -> dict:
    """
    ``h2load -c -m -t1 -D``: req/s, requests, errors (failed, errored, non-2xx).
    An ``https`` URL must negotiate ``h2`` by ALPN; an ``http`` one is h2c with
    prior knowledge (h2load's default for it).
    """
    cmd = [H2LOAD, "-c", str(clients), "-m", str(streams), "-t", "1", "-D", f"{duration:g}",
           url]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True,
                             timeout=duration + 60).stdout
    except subprocess.TimeoutExpired:
        raise Unavailable(f"h2load did not finish: {' '.join(cmd)}") from None
    m = re.search(r"finished in [^,]+, ([\d.]+) req/s", out)
    req = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    proto = re.search(r"Application protocol: (\S+)", out)
    if m is None or req is None:
        raise Unavailable(f"h2load output not understood: {out.strip()[-300:]}")
    expected = "h2" if url.startswith("https:") else "h2c"
    if proto is None or proto.group(1) != expected:
        raise Unavailable(f"{expected} not spoken ({proto.group(1) if proto else 'no ALPN'})")
    done = int(req.group(2))
    errors = int(req.group(4)) + int(req.group(5)) + int(req.group(6))
    if codes:
        errors += sum(int(codes.group(i)) for i in (2, 3, 4))
    res = {"rps": float(m.group(1)), "requests": done, "errors": errors}
    lat = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if lat:
        v = lat.group(3)  # mean
        res["mean_ms"] = float(v[:-2]) if v.endswith("ms") else (
            float(v[:-2]) / 1000 if v.endswith("us") else float(v.rstrip("s")) * 1000)
    return res


def measure_h2(target: Target, path: str, duration: float) -> dict:
    proxy = [target.proxy_pid()] if target.proxy_pid else []
    sampler = RssSampler(proxy)
    cpu0 = cpu_snapshot(proxy)
    m0, g0 = machine_snapshot(), generator_cpu()
    sampler.start()
    try:
        res = run_h2load(target.url(path), duration)
    finally:
        mem = sampler.finish()
    cpu1 = cpu_snapshot(proxy)
    add_machine(res, m0, g0)
    res.update(mem)
    if proxy:
        res["proxy_cpu_s"] = cpu_seconds(cpu0, cpu1)
        res["proxy_cpu_s_per_1k"] = res["proxy_cpu_s"] * 1000 / max(1, res["requests"])
    return res


def bench_h2(env: Env) -> dict:
    """
    HTTP/2 to the client: h2load -c10 -m10 -t1 against the TLS listeners of
    httpd (mod_http2), HAProxy (``alpn h2``) and txmodcluster (``ssl:``, h2 by
    ALPN), alternating per round, 100 B and 64 KiB; then the same in cleartext
    with prior knowledge (h2c) against httpd's ``Protocols h2c`` listener,
    HAProxy's ``proto h2`` bind and txmodcluster's ``tcp:`` listener
    (``proxy.h2c``): the ``100B h2c`` and ``64KiB h2c`` tables.
    """
    if env.cert is None:
        raise Unavailable("no certificate")
    if not os.access(H2LOAD, os.X_OK):
        raise Unavailable(f"{H2LOAD} missing: apt-get install nghttp2-client")
    targets = env.tls_targets()
    for t in targets:
        t.name = H2_NAMES.get(t.name, t.name.replace(" ssl:", " h2"))
    # h2c with prior knowledge on plain listeners: httpd's Protocols h2c
    # vhost, HAProxy's proto h2 bind, txmodcluster's tcp: listener (proxy.h2c)
    tx = env.txmc
    h2c_targets = [
        Target(HTTPD_H2C_NAME, env.httpd.h2c_port, proxy_pid=lambda: env.httpd.pid,
               backend_pids=env.nginx_pids),
        Target(HAPROXY_H2C_NAME, env.haproxy.h2c_port, proxy_pid=lambda: env.haproxy.pid,
               backend_pids=env.nginx_pids, unavailable=env.haproxy_unavailable),
        Target("txmodcluster h2c", tx.pport if tx else None, proxy_pid=lambda: tx.pid,
               backend_pids=env.nginx_pids, unavailable=env.txmc_proxy_reason(),
               health=lambda: tx.died()),
    ]
    args = env.args
    for t in targets + h2c_targets:
        if t.unavailable is None and t.port is not None:
            try:
                run_h2load(t.url(SIZES["100B"][0]), 1.0)  # warm-up; checks h2 is offered
            except Unavailable as e:
                t.unavailable = str(e)
        if t.unavailable:
            log(f"h2: {t.name} unavailable: {t.unavailable}")
    res: dict = {}
    settle()
    for group, members, httpd_name, haproxy_name in (
            ("", targets, HTTPD_H2_NAME, HAPROXY_H2_NAME),
            (" h2c", h2c_targets, HTTPD_H2C_NAME, HAPROXY_H2C_NAME)):
        for label, (path, _size) in SIZES.items():
            key = label + group
            runs: dict[str, list[dict]] = {t.name: [] for t in members}
            for rnd in range(args.rounds):
                order = [t for t in members if not t.unavailable]
                k = rnd % max(1, len(order))
                for t in order[k:] + order[:k]:
                    log(f"h2 {key} round {rnd + 1}/{args.rounds}: {t.name}")
                    try:
                        runs[t.name].append(measure_h2(t, path, args.duration))
                    except Unavailable as e:
                        t.unavailable = str(e)
                        continue
                    why = t.health() if t.health else None
                    if why:
                        t.unavailable = why
            res[key] = {}
            for t in members:
                if runs[t.name]:
                    agg = aggregate(runs[t.name])
                    agg["rps_median"] = statistics.median(r["rps"] for r in runs[t.name])
                    means = [r["mean_ms"] for r in runs[t.name] if "mean_ms" in r]
                    if means:
                        agg["mean_ms"] = statistics.median(means)
                    res[key][t.name] = {"aggregate": agg, "runs": runs[t.name]}
                else:
                    res[key][t.name] = {"unavailable": t.unavailable or "no run"}
            add_ratios(res[key], "-", httpd_name, haproxy_name)
    print(f"\n== HTTP/2 to the client (h2load -c{H2_CLIENTS} -m{H2_STREAMS} -t1, "
          f"{args.duration:g} s x {args.rounds} round(s), alternating) ==")
    hdr = (f"{'scenario':<8} {'target':<30} {'req/s':>9} {'mean ms':>8} {'CPU s/1k':>8} "
           f"{'RSS MB':>7} {'x httpd':>7} {'CPU x h':>7} {'x HAPr':>6} {'errors':>6} "
           f"{'busy %':>6} {'gen s/1k':>8}")
    print(hdr)
    print("-" * len(hdr))
    for label, table in res.items():
        for name, row in table.items():
            agg = row.get("aggregate")
            if not agg:
                print(f"{label:<8} {name:<30} unavailable: {row.get('unavailable')}")
                continue
            print(f"{label:<8} {name:<30} {agg['rps']:>9.0f} {fmt(agg.get('mean_ms'), '.2f'):>8} "
                  f"{fmt(agg.get('proxy_cpu_s_per_1k'), '.3f'):>8} "
                  f"{fmt(agg.get('rss_peak_mib'), '.1f'):>7} "
                  f"{fmt(agg.get('x_httpd'), '.2f'):>7} {fmt(agg.get('cpu_x_httpd'), '.2f'):>7} "
                  f"{fmt(agg.get('x_haproxy'), '.2f'):>6} {errors_cell(agg):>6} "
                  f"{fmt(pct(agg.get('machine_busy')), '.0f'):>6} "
                  f"{fmt(agg.get('client_cpu_s_per_1k'), '.3f'):>8}")
    return res


def bench_ajp(env: Env) -> dict:
    sys.path.insert(0, str(REPO))
    try:
        from tests.support.tomcat import TomcatInstance, tomcat_installed
    except ImportError as e:
        return {"unavailable": f"tests/support/tomcat.py: {e}"}
    if not tomcat_installed():
        return {"unavailable": "tomcat10 not installed (run bench/install)"}
    http_port, ajp_port = env.tomcat_ports
    tomcat = TomcatInstance(env.tmp / "tomcat", jvm_route="tomcat1", http_port=http_port,
                            ajp_port=ajp_port, heap_mb=256, quick_start=False)
    tomcat.build()
    app = tomcat.base_dir / "webapps" / "echo"  # static files beside the echo JSPs
    for name, _ in SIZES.values():
        shutil.copyfile(env.www / name, app / name)
    log(f"starting Tomcat (http :{http_port}, ajp :{ajp_port})")
    try:
        tomcat.start(timeout=90)
    except Exception as e:  # noqa: BLE001 - TomcatError, OSError
        return {"unavailable": f"Tomcat did not start: {str(e)[:500]}"}
    registered = False
    try:
        tx = env.txmc
        reason = env.txmc_proxy_reason()
        if reason is None:
            try:
                client = McmpClient(tx.mport)
                register_node(client, "tomcat1", LOOPBACK, ajp_port, "ajp",
                              contexts=("/echo",))
                registered = True
                client.close()
            except (Unavailable, OSError) as e:
                reason = f"registering the AJP node failed: {e}"
        if env.txmcw is not None and env.txmcw_proxy_reason() is None:
            try:
                client = McmpClient(env.txmcw.mport)
                register_node(client, "tomcat1", LOOPBACK, ajp_port, "ajp",
                              contexts=("/echo",))
                client.close()
            except (Unavailable, OSError) as e:
                env.txmcw_unavailable = f"registering the AJP node failed: {e}"
        targets = [
            Target("direct (tomcat http)", http_port, "/echo",
                   backend_pids=lambda: [tomcat.pid]),
            Target("httpd mod_proxy_ajp", env.httpd.port, "/ajp/echo",
                   proxy_pid=lambda: env.httpd.pid, backend_pids=lambda: [tomcat.pid]),
            Target("httpd mod_proxy_ajp ping=10", env.httpd.port, "/ajp-ping/echo",
                   proxy_pid=lambda: env.httpd.pid, backend_pids=lambda: [tomcat.pid]),
            Target("txmodcluster ajp", tx.pport if tx else None, "/echo",
                   proxy_pid=lambda: tx.pid, backend_pids=lambda: [tomcat.pid],
                   unavailable=reason, health=lambda: tx.died()),
        ] + [
            Target(t.name.replace("txmodcluster", "txmodcluster ajp"), t.port, "/echo",
                   proxy_pid=t.proxy_pid, backend_pids=lambda: [tomcat.pid],
                   unavailable=t.unavailable, health=t.health)
            for t in env._workers_target(None, "/echo")
        ]
        args = argparse.Namespace(**vars(env.args))
        args.warmup = max(args.warmup, 3 if args.quick else 8)  # JIT
        res = run_matrix("ajp", targets, scenarios(), args, env.tmp,
                         "direct (tomcat http)", "httpd mod_proxy_ajp")
        print_matrix("AJP node: one Tomcat 10 behind each proxy", res, env.args)
        return res
    finally:
        if registered and env.txmc.alive():  # leave the main instance as it was
            try:
                McmpClient(env.txmc.mport).ok("REMOVE-APP", [("JVMRoute", "tomcat1")],
                                              wildcard=True)
            except (Unavailable, OSError) as e:
                log(f"REMOVE-APP tomcat1 failed: {e}")
        tomcat.stop()


def _status_script(tmp: Path, routes: list[str], port: int, load: int) -> Path:
    script = tmp / f"status-{len(routes)}.lua"
    lua_routes = ", ".join(json.dumps(r) for r in routes)
    script.write_text(f"""-- generated by bench/run.py: MCMP STATUS as the Java listener sends it.
-- wrk checks the first request() result with its HTTP parser, which only knows the
-- standard methods; that first call (never sent) therefore returns a GET.
local routes = {{{lua_routes}}}
local n = 0
request = function()
  n = n + 1
  if n == 1 then
    return wrk.format("GET", "/")
  end
  local route = routes[(n % #routes) + 1]
  return wrk.format("STATUS", "/", {{["Host"] = "{LOOPBACK}:{port}",
    ["User-Agent"] = "ClusterListener/1.0", ["Connection"] = "Keep-Alive"}},
    "JVMRoute=" .. route .. "&Load={load}")
end
""")
    return script


def _status_run(tx: Txmc, routes: list[str], args, tmp: Path, load: int = 100) -> dict:
    script = _status_script(tmp, routes, tx.mport, load)
    cpu0 = cpu_snapshot([tx.pid])
    res = run_wrk(f"http://{LOOPBACK}:{tx.mport}/", args.duration, args.mcmp_connections,
                  script=script, tmp=tmp)
    cpu1 = cpu_snapshot([tx.pid])
    res["proxy_cpu_s"] = cpu_seconds(cpu0, cpu1)
    res["cpu_us_per_msg"] = res["proxy_cpu_s"] * 1e6 / max(1, res["requests"])
    state = McmpClient(tx.mport).ok("STATUS", [("JVMRoute", routes[0]), ("Load", load)])
    res["last_reply"] = state.decode("utf-8", "replace").strip()
    if tx.died():
        raise Unavailable(tx.died())
    return res


def bench_mcmp_status(env: Env) -> dict:
    out: dict = {}
    tx = env.txmc
    if env.txmc_unavailable or tx is None:
        out["probe"] = {"unavailable": env.txmc_unavailable or "txmodcluster not started"}
    else:
        try:
            out["probe"] = _status_run(tx, ["nginx1", "nginx2"], env.args, env.tmp)
            out["probe"]["what"] = ("STATUS Load=100 for the 2 nginx nodes: each STATUS "
                                    "probes the node (OPTIONS *) before answering")
        except (Unavailable, OSError) as e:
            out["probe"] = {"unavailable": str(e)}
    # No probe: EnableOptions off, 50 registered nodes.
    tx2 = Txmc(env.tmp, "txmc-status", proxy={"enable_options": False})
    try:
        tx2.start()
        client = McmpClient(tx2.mport)
        routes = [f"n{i}" for i in range(50)]
        for i, r in enumerate(routes):
            register_node(client, r, f"127.2.0.{i + 1}", 9, "http", contexts=("/s",),
                          info=False)
        client.close()
        out["no-probe"] = _status_run(tx2, routes, env.args, env.tmp, load=50)
        out["no-probe"]["what"] = ("STATUS Load=50 round-robin over 50 nodes, "
                                   "enable_options=false (no probe): the handler alone")
    except (Unavailable, OSError) as e:
        out["no-probe"] = {"unavailable": str(e)}
    finally:
        stop(tx2.proc)
    print(f"\n== MCMP STATUS (wrk -t1 -c{env.args.mcmp_connections} keep-alive, "
          f"{env.args.duration:g} s) ==")
    for name, r in out.items():
        if "unavailable" in r:
            print(f"{name:<10} unavailable: {r['unavailable']}")
        else:
            print(f"{name:<10} {r['rps']:>9.0f} msgs/s  p50 {r.get('p50_ms', 0):.2f} ms  "
                  f"p99 {r.get('p99_ms', 0):.2f} ms  CPU {r['cpu_us_per_msg']:.0f} us/msg  "
                  f"errors {r['errors']}  ({r['what']}; last reply {r['last_reply']!r})")
    return out


def _register_many(port: int, nodes: list[tuple[str, str, list[str]]], threads: int,
                   load: int) -> tuple[float, int, list[str]]:
    """Register nodes (route, host, contexts) over `threads` connections.
    Returns (seconds, messages, errors)."""
    errors: list[str] = []
    counts = [0] * threads

    def worker(k: int) -> None:
        client = McmpClient(port)
        try:
            for route, host, contexts in nodes[k::threads]:
                try:
                    register_node(client, route, host, 9, "http", contexts=contexts,
                                  load=load, info=False)
                    counts[k] += 2 + len(contexts)
                except (Unavailable, OSError) as e:
                    errors.append(f"{route}: {e}")
                    client.close()
        finally:
            client.close()

    pool = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return time.perf_counter() - t0, sum(counts), errors


def _remove_many(port: int, routes: list[str], threads: int) -> list[str]:
    errors: list[str] = []

    def worker(k: int) -> None:
        client = McmpClient(port)
        try:
            for route in routes[k::threads]:
                try:
                    client.ok("REMOVE-APP", [("JVMRoute", route)], wildcard=True)
                except (Unavailable, OSError) as e:
                    errors.append(f"{route}: {e}")
                    client.close()
        finally:
            client.close()

    pool = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return errors


def fake_nodes(count: int, per_node: int = 10) -> list[tuple[str, str, list[str]]]:
    """count fake nodes on distinct loopback addresses (port 9: nothing listens), each
    with per_node contexts /appK: 1000 distinct contexts, each on per_node nodes.
    None of them matches the benchmark paths, so requests still go to the nginx
    nodes' "/" while routing works on a table of ~10 000 context records."""
    out = []
    for i in range(count):
        host = f"127.1.{i // 250}.{i % 250 + 1}"
        ctxs = [f"/app{(i * per_node + j) % 1000}" for j in range(per_node)]
        out.append((f"fake{i:04d}", host, ctxs))
    return out


def routing_inprocess(quick: bool) -> dict:
    """Cost of one routing decision (modcluster.balancer.choose) at 2 nodes and at
    1 000 nodes x 10 contexts, in this process, on Registry snapshots."""
    sys.path.insert(0, str(REPO))
    try:
        from twisted.internet.task import Clock

        from modcluster.balancer import RoutingPolicy, choose
        from modcluster.cluster.model import BalancerSettings, NodeSettings
        from modcluster.cluster.registry import Registry
    except Exception as e:  # noqa: BLE001 - report whatever is missing
        return {"unavailable": f"import failed: {e!r}"}

    def build(fakes: int, fake_root: bool, fake_load: int):
        reg = Registry(Clock())
        bal = BalancerSettings(name="mycluster", sticky_force=False)
        for i in (1, 2):
            reg.config(bal, NodeSettings(route=f"nginx{i}", host=LOOPBACK, port=10000 + i,
                                         type="http"))
            reg.app("ENABLE-APP", f"nginx{i}", ["localhost"], ["/"])
            reg.apply_status(f"nginx{i}", 100, True)
        for route, host, ctxs in fake_nodes(fakes):
            if fake_root:
                ctxs = ["/"] + ctxs[1:]
            reg.config(bal, NodeSettings(route=route, host=host, port=9, type="http"))
            for c in ctxs:
                reg.app("ENABLE-APP", route, ["localhost"], [c])
            reg.apply_status(route, fake_load, True if fake_load >= 0 else None)
        return reg

    cases = {}
    try:
        regs = {
            "2 nodes": build(0, False, 50),
            "1000 nodes x 10 contexts (other contexts)": build(998, False, 50),
            "1000 nodes, all also serving / (998 in error)": build(998, True, -1),
        }
        policy = RoutingPolicy()
        batch_s = 0.05 if quick else 0.15
        work = []
        for name, reg in regs.items():
            table = reg.table
            for label, cookie in (("no session", None),
                                  ("sticky", "JSESSIONID=0123456789ABCDEF.nginx2")):
                d = choose(table, "localhost", "/small.txt", cookie, 0.0, policy)
                if not hasattr(d, "node"):
                    raise Unavailable(f"{name}: choose() refused: {d!r}")
                key = f"{name} / {label}"
                cases[key] = {"us_per_request": None, "routed_to": d.node.settings.route}
                t0 = time.perf_counter()
                for _ in range(200):
                    choose(table, "localhost", "/small.txt", cookie, 0.0, policy)
                per_call = (time.perf_counter() - t0) / 200
                # each timed batch lasts about batch_s seconds
                work.append((key, table, cookie, max(200, int(batch_s / per_call))))
        for _ in range(5 if quick else 9):  # alternate the cases, keep each one's best
            for key, table, cookie, n in work:
                t0 = time.perf_counter()
                for _ in range(n):
                    choose(table, "localhost", "/small.txt", cookie, 0.0, policy)
                dt = (time.perf_counter() - t0) / n * 1e6
                best = cases[key]["us_per_request"]
                cases[key]["us_per_request"] = dt if best is None else min(best, dt)
    except Exception as e:  # noqa: BLE001
        return {"unavailable": f"{type(e).__name__}: {e}", **cases}
    for label in ("no session", "sticky"):
        base = cases[f"2 nodes / {label}"]["us_per_request"]
        for name in regs:
            cases[f"{name} / {label}"]["x_2_nodes"] = (
                cases[f"{name} / {label}"]["us_per_request"] / base)
    return cases


def bench_register(env: Env) -> dict:
    args, out = env.args, {}
    out["in-process routing"] = routing_inprocess(args.quick)
    tx = Txmc(env.tmp, "txmc-1000", proxy={"enable_options": False})
    try:
        tx.start()
        client = McmpClient(tx.mport)
        for i, n in enumerate(env.nginx, 1):
            register_node(client, f"nginx{i}", LOOPBACK, n.port, "http")
        target = Target("txmodcluster", tx.pport, proxy_pid=lambda: tx.pid,
                        backend_pids=env.nginx_pids, health=tx.died)
        path = SIZES["100B"][0]
        proxy_reason = tx.proxy_unavailable
        if proxy_reason is None:
            try:
                check_target(tx.pport, "/" + path, SIZES["100B"][1])
                run_wrk(target.url(path), args.warmup, args.connections, tmp=env.tmp)
            except Unavailable as e:
                proxy_reason = str(e)
        small_runs: list[dict] = []
        big_runs: list[dict] = []

        def through_proxy(runs: list, label: str) -> None:
            if proxy_reason is None:
                log(f"register-1000: wrk through the proxy, {label}")
                runs.append(measure(target, path, args.duration, args.connections, True,
                                    env.tmp))

        # Alternate: 2 nodes, 1000 nodes, 2 nodes, ... (fresh fake routes each round;
        # removed nodes leave the routing table at once and are purged later).
        registrations = []
        for rnd in range(args.rounds):
            through_proxy(small_runs, f"2 nodes, round {rnd + 1}")
            fakes = [(f"r{rnd}-{route}", host, ctxs) for route, host, ctxs in fake_nodes(998)]
            log(f"register-1000: registering 998 nodes x 10 contexts over MCMP "
                f"(round {rnd + 1})")
            cpu0 = cpu_snapshot([tx.pid])
            seconds, messages, errors = _register_many(tx.mport, fakes, args.mcmp_connections,
                                                       load=50)
            cpu = cpu_seconds(cpu0, cpu_snapshot([tx.pid]))
            registrations.append({
                "nodes": len(fakes), "contexts_per_node": 10,
                "connections": args.mcmp_connections, "messages": messages,
                "seconds": seconds, "msgs_per_s": messages / seconds, "proxy_cpu_s": cpu,
                "errors": len(errors), "first_errors": errors[:3],
                "info_after": info_counts(client),
                "rss_mib_after": rss_kib([tx.pid])[0] / 1024,
            })
            if rnd == 0:
                idle0 = cpu_snapshot([tx.pid])
                time.sleep(min(args.duration, 5.0))  # background work at this size
                registrations[0]["idle_cpu_percent"] = (
                    cpu_seconds(idle0, cpu_snapshot([tx.pid])) * 100
                    / min(args.duration, 5.0))
            through_proxy(big_runs, f"1000 nodes, round {rnd + 1}")
            errs = _remove_many(tx.mport, [r for r, _, _ in fakes], args.mcmp_connections)
            registrations[-1]["removal_errors"] = len(errs)
        through_proxy(small_runs, "2 nodes, last")
        out["registration"] = {
            **registrations[0],
            "what": "per node CONFIG + 10 x ENABLE-APP + STATUS Load=50 (as the Java "
                    "listener sends them), on parallel keep-alive connections; the first "
                    "round (empty table before)",
            "all_rounds_seconds": [round(r["seconds"], 2) for r in registrations],
        }
        if proxy_reason is not None:
            out["through proxy"] = {"unavailable": proxy_reason}
        else:
            small, big = aggregate(small_runs), aggregate(big_runs)
            base_cpu = small.get("proxy_cpu_s_per_1k")
            out["through proxy"] = {
                "2 nodes": small, "1000 nodes": big,
                "cpu_per_request_x_2_nodes": (big["proxy_cpu_s_per_1k"] / base_cpu
                                              if base_cpu else None),
                "rps_x_2_nodes": big["rps"] / small["rps"] if small.get("rps") else None,
                "runs": {"2 nodes": small_runs, "1000 nodes": big_runs},
            }
        client.close()
        if tx.died():
            out["error"] = tx.died()
    except (Unavailable, OSError) as e:
        out["error"] = str(e)
    finally:
        stop(tx.proc)
    print_register(out)
    return out


def print_register(out: dict) -> None:
    print("\n== register-1000: 1 000 nodes x 10 contexts ==")
    reg = out.get("registration")
    if reg:
        print(f"registration: {reg['nodes']} nodes, {reg['messages']} MCMP messages in "
              f"{reg['seconds']:.2f} s ({reg['msgs_per_s']:.0f} msgs/s, "
              f"{reg['connections']} connections), balancer CPU {reg['proxy_cpu_s']:.2f} s, "
              f"errors {reg['errors']}, INFO after: {reg['info_after']}, "
              f"RSS {reg['rss_mib_after']:.1f} MB, idle CPU afterwards "
              f"{fmt(reg.get('idle_cpu_percent'), '.1f')} %")
    if "error" in out:
        print(f"error: {out['error']}")
    tp = out.get("through proxy", {})
    if "unavailable" in tp:
        print(f"routing cost through the proxy: unavailable: {tp['unavailable']}")
    elif tp:
        for label in ("2 nodes", "1000 nodes"):
            a = tp[label]
            print(f"  wrk 100 B keep-alive, {label:<10} ({a['rounds']} runs) "
                  f"{a['rps']:>8.0f} req/s  "
                  f"CPU {a['proxy_cpu_s_per_1k']:.3f} s/1k req  p99 {a['p99_ms']:.2f} ms")
        print(f"  CPU per request at 1000 nodes = {fmt(tp['cpu_per_request_x_2_nodes'], '.3f')}"
              f" x 2 nodes; req/s = {fmt(tp['rps_x_2_nodes'], '.3f')} x")
    ip = out.get("in-process routing", {})
    if "unavailable" in ip:
        print(f"in-process routing: unavailable: {ip['unavailable']}")
    for name, r in ip.items():
        if isinstance(r, dict):
            print(f"  choose() {name:<62} {r['us_per_request']:6.2f} us  "
                  f"x2-nodes {r.get('x_2_nodes', 0):.2f}  -> {r['routed_to']}")


# ---------------------------------------------------------------------------------
# console-1000: the console, API and metrics of a 1 000-node cluster (issue 20)
# ---------------------------------------------------------------------------------

CONSOLE = "/mod_cluster-manager"


def _timed_get(port: int, path: str, repeat: int) -> dict:
    """GET path `repeat` times (fresh connection each, as a browser reload):
    median and worst seconds, body size, status."""
    times, size, status = [], 0, 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        status, body = http_get(port, path, timeout=120.0)
        times.append(time.perf_counter() - t0)
        size = len(body)
    return {"status": status, "bytes": size, "median_s": statistics.median(times),
            "max_s": max(times), "repeat": repeat}


class Refresher(threading.Thread):
    """GET `path` on the management port every `period` s (an operator's console
    with auto refresh on) until stopped; counts requests and the slowest."""

    def __init__(self, port: int, path: str, period: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.port, self.path, self.period = port, path, period
        self.count, self.errors, self.slowest = 0, 0, 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            t0 = time.perf_counter()
            try:
                status, _ = http_get(self.port, self.path, timeout=60.0)
                if status != 200:
                    self.errors += 1
            except (OSError, http.client.HTTPException):
                self.errors += 1
            took = time.perf_counter() - t0
            self.count += 1
            self.slowest = max(self.slowest, took)
            self._halt.wait(max(0.0, self.period - took))

    def finish(self) -> dict:
        self._halt.set()
        self.join(70)
        return {"refreshes": self.count, "errors": self.errors, "slowest_s": self.slowest}


def bench_console(env: Env) -> dict:
    args, out = env.args, {}
    tx = Txmc(env.tmp, "txmc-console", proxy={"enable_options": False})
    try:
        tx.start()
        client = McmpClient(tx.mport)
        for i, n in enumerate(env.nginx, 1):
            register_node(client, f"nginx{i}", LOOPBACK, n.port, "http")
        fakes = fake_nodes(998)
        log("console-1000: registering 998 nodes x 10 contexts over MCMP")
        seconds, messages, errors = _register_many(tx.mport, fakes, args.mcmp_connections,
                                                   load=50)
        out["registration"] = {"nodes": len(fakes) + 2, "messages": messages,
                               "seconds": seconds, "errors": len(errors),
                               "info_after": info_counts(client)}
        client.close()
        repeat = 3 if args.quick else 7
        route = fakes[len(fakes) // 2][0]
        pages = {
            "first page": CONSOLE,
            "node detail": f"{CONSOLE}?JVMRoute={route}",
            "page 10 of the list": f"{CONSOLE}?page=10",
            "filter (q=fake05)": f"{CONSOLE}?q=fake05",
            "live update JSON (auto refresh)": f"{CONSOLE}/update",
            "/api/v1/nodes": "/api/v1/nodes",
            "/api/v1/nodes?limit=100": "/api/v1/nodes?limit=100",
            "/metrics": "/metrics",
            "INFO": f"{CONSOLE}?Cmd=INFO&Range=ALL",
        }
        timings = {}
        for label, path in pages.items():
            log(f"console-1000: GET {path} x {repeat}")
            timings[label] = _timed_get(tx.mport, path, repeat)
        out["timings"] = timings
        path = SIZES["100B"][0]
        proxy_reason = tx.proxy_unavailable
        if proxy_reason is None:
            try:
                check_target(tx.pport, "/" + path, SIZES["100B"][1])
            except Unavailable as e:
                proxy_reason = str(e)
        if proxy_reason is not None:
            out["through proxy"] = {"unavailable": proxy_reason}
        else:
            target = Target("txmodcluster", tx.pport, proxy_pid=lambda: tx.pid,
                            backend_pids=env.nginx_pids, health=tx.died)
            run_wrk(target.url(path), args.warmup, args.connections, tmp=env.tmp)
            variants = {"no console": None, "page reload 1/s": CONSOLE,
                        "auto refresh 1/s (update JSON)": f"{CONSOLE}/update"}
            runs: dict[str, list] = {k: [] for k in variants}
            refresh: dict[str, list] = {k: [] for k in variants}
            for rnd in range(args.rounds):  # alternate the variants
                for label, console_path in variants.items():
                    log(f"console-1000: wrk through the proxy, {label}, round {rnd + 1}")
                    refresher = None
                    if console_path is not None:
                        refresher = Refresher(tx.mport, console_path)
                        refresher.start()
                    try:
                        runs[label].append(measure(target, path, args.duration,
                                                   args.connections, True, env.tmp))
                    finally:
                        if refresher is not None:
                            refresh[label].append(refresher.finish())
            base = aggregate(runs["no console"])
            tp = {"no console": base}
            for label in list(variants)[1:]:
                agg = aggregate(runs[label])
                agg["refresher"] = refresh[label]
                agg["rps_x_no_console"] = agg["rps"] / base["rps"] if base.get("rps") else None
                tp[label] = agg
            tp["runs"] = runs
            out["through proxy"] = tp
        if tx.died():
            out["error"] = tx.died()
    except (Unavailable, OSError) as e:
        out["error"] = str(e)
    finally:
        stop(tx.proc)
    print_console(out)
    return out


def print_console(out: dict) -> None:
    print("\n== console-1000: console, API and metrics at 1 000 nodes x 10 contexts ==")
    reg = out.get("registration")
    if reg:
        print(f"registered {reg['nodes']} nodes ({reg['messages']} MCMP messages, "
              f"{reg['seconds']:.1f} s, errors {reg['errors']}); INFO: {reg['info_after']}")
    if "error" in out:
        print(f"error: {out['error']}")
    for label, t in out.get("timings", {}).items():
        print(f"  {label:<34} {t['median_s'] * 1000:8.1f} ms median  "
              f"{t['max_s'] * 1000:8.1f} ms max  {t['bytes'] / 1024:8.1f} KiB  "
              f"HTTP {t['status']}")
    tp = out.get("through proxy", {})
    if "unavailable" in tp:
        print(f"proxied throughput: unavailable: {tp['unavailable']}")
    for label, a in tp.items():
        if label == "runs" or not isinstance(a, dict) or "rps" not in a:
            continue
        extra = ""
        if "rps_x_no_console" in a:
            slow = max((r["slowest_s"] for r in a["refresher"]), default=0.0)
            n = sum(r["refreshes"] for r in a["refresher"])
            extra = (f"  = {fmt(a['rps_x_no_console'], '.3f')} x no console "
                     f"({n} refreshes, slowest {slow * 1000:.0f} ms)")
        print(f"  wrk 100 B keep-alive, {label:<32} {a['rps']:>8.0f} req/s  "
              f"p99 {a['p99_ms']:.2f} ms{extra}")


class SlowReader:
    """GET a URL and read it at `rate` bytes/s with a small receive buffer."""

    def __init__(self, port: int, path: str, rate: float) -> None:
        self.port, self.path, self.rate = port, path, rate
        self.received = 0
        self.status_line = b""
        self.error: str | None = None
        self._halt = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        try:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.settimeout(30)
            s.connect((LOOPBACK, self.port))
            s.sendall(f"GET {self.path} HTTP/1.1\r\nHost: {LOOPBACK}:{self.port}\r\n"
                      f"Connection: close\r\n\r\n".encode())
            t0 = time.monotonic()
            first = True
            while not self._halt.is_set():
                data = s.recv(16384)
                if not data:
                    break
                if first:
                    self.status_line = data.split(b"\r\n", 1)[0]
                    first = False
                self.received += len(data)
                ahead = self.received / self.rate - (time.monotonic() - t0)
                if ahead > 0:
                    self._halt.wait(ahead)
            s.close()
        except OSError as e:
            self.error = repr(e)

    def stop(self) -> None:
        self._halt.set()
        self.thread.join(10)


def bench_stream(env: Env) -> dict:
    args, out = env.args, {}
    targets = [("httpd mod_proxy_balancer", env.httpd.port, lambda: env.httpd.pid, None)]
    reason = env.txmc_proxy_reason()
    targets.append(("txmodcluster", env.txmc.pport if env.txmc else None,
                    lambda: env.txmc.pid, reason))
    for name, port, pidf, unavailable in targets:
        if unavailable:
            out[name] = {"unavailable": unavailable}
            continue
        log(f"stream-1g: {name}, client at {args.stream_rate / 1e6:g} MB/s for "
            f"{args.stream_seconds:g} s")
        pid = pidf()
        rss0 = rss_kib([pid])[0]
        reader = SlowReader(port, "/" + BIG_FILE, args.stream_rate)
        samples = []
        t0 = time.monotonic()
        reader.thread.start()
        aborted = None
        while time.monotonic() - t0 < args.stream_seconds and reader.thread.is_alive():
            time.sleep(0.5)
            rss = rss_kib([pid])[0]
            samples.append((round(time.monotonic() - t0, 1), rss // 1024))
            if rss > 2 * 1024 * 1024:
                aborted = "RSS above 2 GiB: stopped early"
                break
        reader.stop()
        rss_mib = [s[1] for s in samples] or [rss0 // 1024]
        out[name] = {
            "rss_before_mib": rss0 / 1024, "rss_peak_mib": max(rss_mib),
            "rss_end_mib": rss_mib[-1], "growth_mib": max(rss_mib) - rss0 / 1024,
            "received_mb": reader.received / 1e6,
            "seconds": time.monotonic() - t0,
            "status": reader.status_line.decode("latin-1"),
            "client_error": reader.error, "aborted": aborted,
            "samples_mib": samples[:: max(1, len(samples) // 30)],
        }
        if name == "txmodcluster" and env.txmc.died():
            out[name]["error"] = env.txmc.died()
    print(f"\n== stream-1g: 1 GiB response, client reading at {args.stream_rate / 1e6:g} MB/s "
          f"for {args.stream_seconds:g} s ==")
    for name, r in out.items():
        if "unavailable" in r:
            print(f"{name:<26} unavailable: {r['unavailable']}")
        else:
            print(f"{name:<26} RSS before {r['rss_before_mib']:.1f} MB, peak "
                  f"{r['rss_peak_mib']:.1f} MB, end {r['rss_end_mib']:.1f} MB "
                  f"(growth {r['growth_mib']:.1f} MB); client got {r['received_mb']:.1f} MB "
                  f"[{r['status']}]" + (f" {r['aborted']}" if r['aborted'] else "")
                  + (f" client error {r['client_error']}" if r['client_error'] else ""))
    return out


# ---------------------------------------------------------------------------------
# Machine description and targets
# ---------------------------------------------------------------------------------

def _cmd_out(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({e})"


def machine() -> dict:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) // 1024} MiB"
    osname = ""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    pyver = _cmd_out([str(PYTHON), "-c",
                      "import sys, twisted; v = sys.version.split()[0]; "
                      "import importlib.metadata as m; "
                      "print(v, twisted.__version__, m.version('httptools'))"]).split()
    commit = _cmd_out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _cmd_out(["git", "-C", str(REPO), "status", "--porcelain"])
    tomcat = _cmd_out(["java", "-cp", "/usr/share/tomcat10/lib/catalina.jar",
                       "org.apache.catalina.util.ServerInfo"])
    m = re.search(r"Server number:\s*(\S+)", tomcat)
    return {
        "cpu": cpu, "nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
        "memory": mem, "kernel": platform.release(), "os": osname,
        "nginx": _cmd_out([NGINX, "-v"]).replace("nginx version: ", ""),
        "httpd": _cmd_out([HTTPD, "-v"]).splitlines()[0].replace("Server version: ", ""),
        "wrk": _cmd_out([WRK, "-v"]).splitlines()[0].split(" [")[0],
        "haproxy": (_cmd_out([HAPROXY, "-v"]).splitlines() or [""])[0].split(" - ")[0],
        "h2load": (_cmd_out([H2LOAD, "--version"]).splitlines() or [""])[0],
        "openssl": _cmd_out([OPENSSL, "version"]),
        "tomcat": m.group(1) if m else "",
        "java": _cmd_out(["java", "-version"]).splitlines()[0] if shutil.which("java") else "",
        "python": pyver[0] if pyver else "", "twisted": pyver[1] if len(pyver) > 1 else "",
        "httptools": pyver[2] if len(pyver) > 2 else "",
        "txmodcluster_commit": commit + (" (+uncommitted changes)" if dirty else ""),
        "loadavg_at_start": loadavg(),
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def _agg(results: dict, bench: str, scenario: str, target: str) -> dict | None:
    return results.get(bench, {}).get(scenario, {}).get(target, {}).get("aggregate")


def check_targets(results: dict) -> list[tuple[str, str, str]]:
    """(goal, measured, verdict) for each target of the issue."""
    rows = []

    def ratio(goal, bench, scenario, tx, base, key, limit, higher=True):
        a, b = _agg(results, bench, scenario, tx), _agg(results, bench, scenario, base)
        if a is None or b is None or key not in a or key not in b or not b[key]:
            rows.append((goal, "-", "not measured"))
            return
        r = a[key] / b[key]
        ok = r >= limit if higher else r <= limit
        if a.get("errors", 0) > 0.01 * max(1, a.get("requests", 0)):
            rows.append((goal, f"{r:.2f}", "INVALID (more than 1 % errors)"))
            return
        rows.append((goal, f"{r:.2f}", "PASS" if ok else "FAIL"))

    variants = [("", "txmodcluster")]
    names = sorted({name for bench in ("http", "ajp")
                    for scenario in results.get(bench, {}).values()
                    if isinstance(scenario, dict) for name in scenario})
    for name in names:
        if name.startswith("txmodcluster workers="):
            variants = [(" [1 process]", "txmodcluster"),
                        (" [" + name.split(" ", 1)[1] + "]", name)]
            break
    for tag, tx in variants:
        ajp = tx.replace("txmodcluster", "txmodcluster ajp")
        ratio("HTTP 100 B keep-alive req/s >= 1.5 x httpd" + tag, "http", "100B keep-alive",
              tx, "httpd mod_proxy_balancer", "rps", 1.5)
        ratio("HTTP 64 KiB keep-alive req/s >= 1.5 x httpd" + tag, "http", "64KiB keep-alive",
              tx, "httpd mod_proxy_balancer", "rps", 1.5)
        ratio("(extra) HTTP 100 B, a new URL each request, >= 1.5 x httpd" + tag, "http",
              "100B new URL", tx, "httpd mod_proxy_balancer", "rps", 1.5)
        ratio("(extra) HTTP 100 B, a new header each request, >= 1.5 x httpd" + tag, "http",
              "100B new header", tx, "httpd mod_proxy_balancer", "rps", 1.5)
        ratio("AJP 100 B keep-alive req/s >= 1.0 x httpd (no ping)" + tag, "ajp",
              "100B keep-alive", ajp, "httpd mod_proxy_ajp", "rps", 1.0)
        ratio("HTTP 100 B p99 <= 0.5 x httpd" + tag, "http", "100B keep-alive", tx,
              "httpd mod_proxy_balancer", "p99_ms", 0.5, higher=False)
        ratio("HTTP 100 B CPU per request <= 0.7 x httpd" + tag, "http", "100B keep-alive",
              tx, "httpd mod_proxy_balancer", "proxy_cpu_s_per_1k", 0.7, higher=False)
        # issue 18
        ratio("HTTP 100 B keep-alive req/s >= 0.85 x HAProxy nbthread 1" + tag, "http",
              "100B keep-alive", tx, HAPROXY_NAME, "rps", 0.85)
        ratio("HTTP 100 B Connection: close req/s >= 2.0 x httpd" + tag, "http", "100B close",
              tx, "httpd mod_proxy_balancer", "rps", 2.0)
        ratio("HTTP 100 B Connection: close p99 <= 0.5 x httpd" + tag, "http", "100B close",
              tx, "httpd mod_proxy_balancer", "p99_ms", 0.5, higher=False)
        ratio("TLS keep-alive req/s >= 2.0 x httpd + mod_ssl" + tag, "tls",
              "100B TLS keep-alive", tx + " ssl:", HTTPD_SSL_NAME, "rps", 2.0)
        ratio("TLS keep-alive req/s >= 0.65 x HAProxy ssl" + tag, "tls",
              "100B TLS keep-alive", tx + " ssl:", HAPROXY_SSL_NAME, "rps", 0.65)
        ratio("new TLS connections/s (full handshakes) >= 1.5 x httpd" + tag, "tls",
              "new TLS conn/s full", tx + " ssl:", HTTPD_SSL_NAME, "rps", 1.5)
        ratio("new TLS connections/s (resumed) >= 1.5 x httpd" + tag, "tls",
              "new TLS conn/s resumed", tx + " ssl:", HTTPD_SSL_NAME, "rps", 1.5)
        # issue 19
        ratio("HTTP/2 h2load -c10 -m10 100 B req/s >= 1.0 x httpd mod_http2" + tag, "h2",
              "100B", tx + " h2", HTTPD_H2_NAME, "rps", 1.0)
    st = results.get("mcmp-status", {}).get("probe", {})
    rows.append(("MCMP STATUS >= 5000 msgs/s (with probe)",
                 f"{st['rps']:.0f}" if "rps" in st else "-",
                 ("PASS" if st["rps"] >= 5000 else "FAIL") if "rps" in st else "not measured"))
    st = results.get("mcmp-status", {}).get("no-probe", {})
    rows.append(("MCMP STATUS >= 5000 msgs/s (handler alone, no probe)",
                 f"{st['rps']:.0f}" if "rps" in st else "-",
                 ("PASS" if st["rps"] >= 5000 else "FAIL") if "rps" in st else "not measured"))
    tp = results.get("register-1000", {}).get("through proxy", {})
    v = tp.get("cpu_per_request_x_2_nodes")
    rows.append(("routing CPU/request at 1000x10 within 10 % of 2 nodes",
                 f"{v:.3f}" if v else "-",
                 ("PASS" if v <= 1.10 else "FAIL") if v else "not measured"))
    ip = results.get("register-1000", {}).get("in-process routing", {})
    v = ip.get("1000 nodes x 10 contexts (other contexts) / no session", {}).get("x_2_nodes")
    rows.append(("routing (in-process choose()) at 1000x10 within 10 % of 2 nodes",
                 f"{v:.3f}" if v else "-",
                 ("PASS" if v <= 1.10 else "FAIL") if v else "not measured"))
    con = results.get("console-1000", {})
    for goal, label, limit_s, limit_bytes in (
            ("console first page at 1000x10 <= 0.25 s and <= 500 KB", "first page", 0.25,
             500_000),
            ("console node detail at 1000x10 <= 50 ms", "node detail", 0.05, None),
            ("/api/v1/nodes at 1000x10 <= 0.25 s", "/api/v1/nodes", 0.25, None),
            ("/metrics at 1000x10 <= 0.25 s", "/metrics", 0.25, None)):
        t = con.get("timings", {}).get(label)
        if not t:
            rows.append((goal, "-", "not measured"))
            continue
        ok = t["status"] == 200 and t["median_s"] <= limit_s and (
            limit_bytes is None or t["bytes"] <= limit_bytes)
        rows.append((goal, f"{t['median_s'] * 1000:.0f} ms, {t['bytes'] / 1000:.0f} KB",
                     "PASS" if ok else "FAIL"))
    for label in ("page reload 1/s", "auto refresh 1/s (update JSON)"):
        v = con.get("through proxy", {}).get(label, {}).get("rps_x_no_console")
        rows.append((f"proxied req/s with console {label} >= 0.85 x without",
                     f"{v:.3f}" if v else "-",
                     ("PASS" if v >= 0.85 else "FAIL") if v else "not measured"))
    s = results.get("stream-1g", {}).get("txmodcluster", {})
    if "rss_peak_mib" in s:
        ok = s["rss_peak_mib"] < 100 and s["growth_mib"] < 20 and not s.get("aborted")
        rows.append(("RSS < 100 MB and flat while streaming 1 GiB at 1 MB/s",
                     f"peak {s['rss_peak_mib']:.0f} MB, growth {s['growth_mib']:.0f} MB",
                     "PASS" if ok else "FAIL"))
    else:
        rows.append(("RSS < 100 MB and flat while streaming 1 GiB at 1 MB/s", "-",
                     "not measured"))
    return rows


# ---------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="short runs (about two minutes in all)")
    p.add_argument("--only", action="append", default=[],
                   help=f"run only these benchmarks (comma list, repeatable): {', '.join(BENCHES)}")
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 6, quick 2)")
    p.add_argument("--rounds", type=int, help="alternating rounds per scenario "
                                              "(default 2, quick 1)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (50)")
    p.add_argument("--tls-twisted", action="store_true",
                   help="tls: also measure an instance with proxy.tls_engine = \"twisted\" "
                        "(the TLS engine before the stdlib one)")
    p.add_argument("--workers", type=int, default=2,
                   help="also measure txmodcluster with proxy.workers = N (default 2; "
                        "1 = single process only)")
    p.add_argument("--no-observed", action="store_true",
                   help=f"leave out the `{OBSERVED_NAME}` row of `http` (access log and "
                        "client metrics on, 100 B keep-alive and close)")
    p.add_argument("--mcmp-connections", type=int, default=8,
                   help="parallel MCMP connections for mcmp-status / register-1000 (8)")
    p.add_argument("--stream-seconds", type=float,
                   help="how long the slow client of stream-1g reads (default 30, quick 10)")
    p.add_argument("--stream-rate", type=float, default=1e6,
                   help="slow client's bytes per second (1e6)")
    p.add_argument("--output", type=Path, help="JSON result file "
                                               "(default bench/results/bench-<time>.json)")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary directory (configurations and logs)")
    args = p.parse_args(argv)
    only = [x.strip() for item in args.only for x in item.split(",") if x.strip()]
    for name in only:
        if name not in BENCHES:
            p.error(f"unknown benchmark {name!r}; choose from {', '.join(BENCHES)}")
    args.only = only or list(BENCHES)
    args.duration = args.duration or (2.0 if args.quick else 6.0)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.warmup = 1.0 if args.quick else 2.0
    args.stream_seconds = args.stream_seconds or (10.0 if args.quick else 30.0)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    for tool in (NGINX, HTTPD, WRK):
        if not os.access(tool, os.X_OK):
            sys.stderr.write(f"{tool} missing: run bench/install (as root)\n")
            return 2
    # Ctrl-C raises KeyboardInterrupt even when started with SIGINT ignored (e.g. `&`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="txmc-bench-"))
    results: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "args": {k: (str(v) if isinstance(v, Path) else v)
                              for k, v in vars(args).items()}}
    try:
        results["machine"] = machine()
        mach = results["machine"]
        print(f"machine: {mach['nproc']} x {mach['cpu']}, {mach['memory']}, "
              f"kernel {mach['kernel']}, {mach['os']}")
        print(f"versions: nginx {mach['nginx']}, httpd {mach['httpd']}, {mach['wrk']}, "
              f"{mach['haproxy']}, {mach['openssl']}, Python {mach['python']}, "
              f"Twisted {mach['twisted']}, httptools "
              f"{mach['httptools']}, Tomcat {mach['tomcat']}; txmodcluster "
              f"{mach['txmodcluster_commit']}")
        parts = mach["loadavg_at_start"].split()
        one_minute = float(parts[0]) if parts else 0.0
        if one_minute > 1.0:
            print(f"WARNING: load average {mach['loadavg_at_start']} before the run: other "
                  "processes are using the CPU; absolute numbers will be noisy (compare "
                  "the ratios, measured in alternation)")
        env = Env(tmp, args)
        env.start()
        results["txmodcluster_status"] = env.txmc_proxy_reason() or "ok"
        runners = {"http": bench_http, "tls": bench_tls, "h2": bench_h2, "ajp": bench_ajp,
                   "mcmp-status": bench_mcmp_status,
                   "register-1000": bench_register, "stream-1g": bench_stream,
                   "console-1000": bench_console}
        for name in BENCHES:
            if name in args.only:
                t0 = time.monotonic()
                try:
                    results[name] = runners[name](env)
                except Unavailable as e:
                    results[name] = {"unavailable": str(e)}
                    print(f"\n== {name}: unavailable: {e}")
                except Exception as e:  # noqa: BLE001 - a broken bench must not stop the rest
                    import traceback
                    results[name] = {"error": f"{type(e).__name__}: {e}",
                                     "traceback": traceback.format_exc()}
                    print(f"\n== {name}: FAILED: {type(e).__name__}: {e}")
                    traceback.print_exc()
                log(f"{name} took {time.monotonic() - t0:.0f} s")
        print("\n== targets (txmodcluster, same run) ==")
        results["targets"] = []
        rows = check_targets(results)
        width = max((len(goal) for goal, _, _ in rows), default=0)
        for goal, value, verdict in rows:
            results["targets"].append({"goal": goal, "measured": value, "verdict": verdict})
            print(f"{goal:<{width}} {value:>26}  {verdict}")
    finally:
        results["seconds"] = round(time.time() - started, 1)
        results["loadavg_at_end"] = loadavg()
        stop_all()
        out = args.output or RESULTS_DIR / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nresults: {out}  ({results['seconds']:.0f} s)")
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
