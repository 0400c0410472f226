"""
Operating the balancer as twistd runs it: --check, start-up failures, SIGHUP
reload, SIGUSR1 log reopening, SIGTERM draining.  Real processes on loopback.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.tomcat import free_loopback_ports

TWISTD = [os.path.join(os.path.dirname(sys.executable), "twistd")]
ENV = {**os.environ, "PYTHONPATH": os.getcwd()}


def _check(tmp_path, text: str):
    config = tmp_path / "c.toml"
    config.write_text(text)
    out = subprocess.run(TWISTD + ["modcluster", "--config", str(config), "--check"],
                         capture_output=True, text=True, timeout=60, env=ENV, cwd=tmp_path)
    return config, out


@pytest.mark.parametrize("text, key, reason", [
    ('[manager.tls]\nenabled = true\ncertificate = "/nonexistent/cert.pem"\n'
     'private_key = "/dev/null"\nrequire_client_certificate = false\n',
     "manager.tls.certificate", "cannot read certificate /nonexistent/cert.pem"),
    ('[proxy]\nlisten = ["tcp:8000:interface=10.0.0.256"]\n',
     "proxy.listen[0]", "interface=10.0.0.256 is not an IP address"),
    ('[proxy]\nlisten = ["tcp:18000:interface=127.0.0.1", "tcp:18000:interface=127.0.0.1"]\n',
     "proxy.listen[1]", "uses the same address as proxy.listen[0]"),
    ('[proxy]\nlisten = ["ssl:18443:interface=127.0.0.1"]\n',
     "proxy.listen[0]", "an ssl listener needs privateKey=FILE"),
    ('[advertise]\nsecurity_key = "s\u00e9cret"\n',
     "advertise.security_key", "must be ASCII"),
    ('[manager]\nmax_nodes = -1\n', "manager.max_nodes", "must be greater than 0"),
])
def test_check_refuses_what_start_up_refuses(tmp_path, text, key, reason):
    config, out = _check(tmp_path, text)
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert lines == [line for line in lines if line.startswith(f"{config}: {key}: ")], lines
    assert len(lines) == 1 and reason in lines[0], lines
    # start-up refuses the same way, before twistd writes a pidfile
    run = subprocess.run(TWISTD + ["-n", "--pidfile=twistd.pid", "modcluster", "--config",
                                   str(config)],
                         capture_output=True, text=True, timeout=60, env=ENV, cwd=tmp_path)
    assert run.returncode == 1 and run.stderr.splitlines() == lines
    assert not (tmp_path / "twistd.pid").exists()


def test_check_lists_every_problem_one_line_each(tmp_path):
    config, out = _check(tmp_path, '[manager]\nlisten = ["tcp:1:interface=10.0.0.256"]\n'
                                   '[proxy]\nlisten = ["ssl:2", "tcp:3:bogus=1"]\n')
    assert out.returncode == 1
    assert [line.split(": ")[1] for line in out.stderr.splitlines()] == [
        "manager.listen[0]", "proxy.listen[0]", "proxy.listen[1]"]
    assert "Traceback" not in out.stderr and "Usage" not in out.stderr


def test_port_in_use_is_one_line_and_leaves_no_pidfile(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    (mport,) = free_loopback_ports(1)
    config = tmp_path / "c.toml"
    config.write_text(f'[manager]\nlisten = ["tcp:{mport}:interface=127.0.0.1"]\n'
                      f'[proxy]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
                      "[console]\nlisten = []\n")
    try:
        out = subprocess.run(TWISTD + ["-n", "--pidfile=twistd.pid", "--logfile=twistd.log",
                                       "modcluster", "--config", str(config)],
                             capture_output=True, text=True, timeout=60, env=ENV,
                             cwd=tmp_path)
    finally:
        busy.close()
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"{config}: proxy.listen[0]: cannot listen on 127.0.0.1:{port}: "
        "Address already in use"], out.stderr
    assert not (tmp_path / "twistd.pid").exists()
    assert "Traceback" not in (tmp_path / "twistd.log").read_text()


# -- a running balancer -------------------------------------------------------


def _mcmp(port, method, body=b""):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, "/", body=body or None, headers={"User-Agent": "ClusterListener/1.0"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


def _wait_for(predicate, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not seen after {timeout} s")


def _listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture
def running(tmp_path):
    """Starts twistd modcluster with a log file; returns (proc, config path, ports, log)."""
    procs = []

    def start(extra: str = "", logfile: str = "twistd.log"):
        mport, pport = free_loopback_ports(2)
        config = tmp_path / "balancer.toml"
        base = ("[console]\nlisten = []\n"  # on the management listener: no fixed port
                f'[manager]\nlisten = ["tcp:{mport}:interface=127.0.0.1"]\n'
                f'[proxy]\nlisten = ["tcp:{pport}:interface=127.0.0.1"]\n')
        config.write_text(base + extra)
        proc = subprocess.Popen(
            TWISTD + ["-n", "--pidfile=twistd.pid", f"--logfile={logfile}", "modcluster",
                      "--config", str(config)],
            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)
        _wait_for(lambda: _listening(mport) or proc.poll() is not None, "management port")
        assert proc.poll() is None, proc.stdout.read()
        return proc, config, base, mport, pport, tmp_path / logfile

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_sighup_applies_live_keys_names_restart_keys_and_keeps_running(running):
    proc, config, base, mport, pport, logfile = running()
    assert _mcmp(mport, "CONFIG", b"JVMRoute=n1&Host=127.0.0.1&Port=8009&Type=ajp")[0].status == 200
    config.write_text("[console]\nlisten = []\n"
                      f'[manager]\nlisten = ["tcp:{mport}:interface=127.0.0.1"]\n'
                      "max_nodes = 1\n"
                      f'[proxy]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
                      "client_timeout = 5.0\n")
    proc.send_signal(signal.SIGHUP)
    _wait_for(lambda: "reload: applied" in logfile.read_text(), "reload log line")
    line = [s for s in logfile.read_text().splitlines() if "reload: applied" in s][0]
    assert "manager.max_nodes, proxy.client_timeout" in line
    assert "needs a restart to take effect: proxy.listen" in line
    # the new quota is in force: a second node is refused with a MEM error
    resp, _ = _mcmp(mport, "CONFIG", b"JVMRoute=n2&Host=127.0.0.1&Port=8010&Type=ajp")
    assert resp.status == 500 and resp.getheader("Type") == "MEM"
    # an invalid file is refused: one error line, the running configuration stays
    config.write_text("[manager]\nmax_nodes = -5\n")
    proc.send_signal(signal.SIGHUP)
    _wait_for(lambda: "reload refused" in logfile.read_text(), "refusal")
    refused = [s for s in logfile.read_text().splitlines() if "reload refused" in s]
    assert len(refused) == 1 and "manager.max_nodes: must be greater than 0" in refused[0]
    assert proc.poll() is None
    assert _mcmp(mport, "INFO")[0].status == 200
    assert _listening(pport)


def test_sigusr1_reopens_the_log_file(running):
    proc, config, base, mport, pport, logfile = running()
    _wait_for(lambda: logfile.exists() and logfile.stat().st_size > 0, "log")
    rotated = logfile.with_name("twistd.log.rotated")
    os.rename(logfile, rotated)  # what logrotate does
    proc.send_signal(signal.SIGUSR1)
    _wait_for(lambda: logfile.exists() and "log files reopened" in logfile.read_text(),
              "a new log file")
    assert proc.poll() is None
    assert "log files reopened" not in rotated.read_text()


class _SlowHandler(BaseHTTPRequestHandler):
    delay = 2.0

    def do_GET(self):
        time.sleep(self.delay)
        body = b"slow answer"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_sigterm_lets_requests_in_flight_finish(running, tmp_path):
    backend = ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    try:
        proc, config, base, mport, pport, logfile = running("drain_timeout = 10.0\n")
        bport = backend.server_address[1]
        assert _mcmp(mport, "CONFIG",
                     f"JVMRoute=s1&Host=127.0.0.1&Port={bport}&Type=http".encode())[0].status == 200
        assert _mcmp(mport, "ENABLE-APP",
                     b"JVMRoute=s1&Alias=localhost&Context=%2Fslow")[0].status == 200
        assert _mcmp(mport, "STATUS", b"JVMRoute=s1&Load=100")[0].status == 200
        result = {}

        def get():
            conn = http.client.HTTPConnection("127.0.0.1", pport, timeout=30)
            conn.request("GET", "/slow/x", headers={"Host": "localhost"})
            resp = conn.getresponse()
            result["answer"] = (resp.status, resp.read())

        client = threading.Thread(target=get)
        client.start()
        time.sleep(0.5)  # the request reaches the slow backend
        idle = socket.create_connection(("127.0.0.1", pport), timeout=5)  # idle keep-alive
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        client.join(30)
        assert result["answer"] == (200, b"slow answer")
        assert idle.recv(10) == b""  # the idle connection was closed, not left hanging
        idle.close()
        # twistd ends by re-raising SIGTERM on itself (systemd counts that as a clean stop)
        assert proc.wait(20) in (0, -signal.SIGTERM)
        assert not (tmp_path / "twistd.pid").exists()
    finally:
        backend.shutdown()


# -- hitless restart ----------------------------------------------------------


class _FastHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"ok " + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _load(pport, stop, results, delay=0.0):
    """GET on a new connection each time until C{stop} is set; record every outcome."""
    n = 0
    while not stop.is_set():
        n += 1
        try:
            conn = http.client.HTTPConnection("127.0.0.1", pport, timeout=10)
            conn.request("GET", f"/app/{n}", headers={"Host": "localhost",
                                                      "Connection": "close"})
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            results.append((resp.status, body == f"ok /app/{n}".encode()))
        except OSError as e:
            results.append((repr(e), False))
        if delay:
            time.sleep(delay)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_new_process_takes_over_without_a_failed_request(tmp_path, workers):
    backend = ThreadingHTTPServer(("127.0.0.1", 0), _FastHandler)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    mport, pport = free_loopback_ports(2)
    config = tmp_path / "balancer.toml"
    config.write_text(f'[manager]\nlisten = ["tcp:{mport}:interface=127.0.0.1"]\n'
                      f'handover_socket = "{tmp_path}/handover.sock"\n'
                      f'[proxy]\nlisten = ["tcp:{pport}:interface=127.0.0.1"]\n'
                      f"workers = {workers}\n[console]\nlisten = []\n")
    procs = []

    def start(name):
        proc = subprocess.Popen(
            TWISTD + ["-n", f"--pidfile={name}.pid", f"--logfile={name}.log", "modcluster",
                      "--config", str(config)],
            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    stop = threading.Event()
    results: list = []
    loaders = [threading.Thread(target=_load, args=(pport, stop, results)) for _ in range(4)]
    try:
        old = start("old")
        _wait_for(lambda: _listening(mport) or old.poll() is not None, "old balancer")
        bport = backend.server_address[1]
        assert _mcmp(mport, "CONFIG",
                     f"JVMRoute=h1&Host=127.0.0.1&Port={bport}&Type=http".encode())[0].status == 200
        assert _mcmp(mport, "ENABLE-APP",
                     b"JVMRoute=h1&Alias=localhost&Context=%2Fapp")[0].status == 200
        assert _mcmp(mport, "STATUS", b"JVMRoute=h1&Load=100")[0].status == 200
        _wait_for(lambda: _get_status(pport) == 200, "routing through the old balancer")
        for t in loaders:
            t.start()
        _wait_for(lambda: len(results) > 20, "load before the restart")
        new = start("new")
        assert old.wait(60) == 0, (tmp_path / "old.log").read_text()
        before = len(results)
        _wait_for(lambda: len(results) > before + 50, "load after the restart")
        stop.set()
        for t in loaders:
            t.join(30)
        failed = [r for r in results if r != (200, True)]
        assert failed == [], failed[:5]
        assert new.poll() is None, (tmp_path / "new.log").read_text()
        # the registrations came over: the new balancer knows the node
        resp, body = _mcmp(mport, "INFO")
        assert b"Name: h1," in body and b"Context: /app, Status: ENABLED" in body
        log = (tmp_path / "new.log").read_text()
        assert "took over from process" in log
        assert not (tmp_path / "old.pid").exists()
    finally:
        stop.set()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        backend.shutdown()


def _get_status(pport):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", pport, timeout=5)
        conn.request("GET", "/app/probe", headers={"Host": "localhost"})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        return resp.status
    except OSError:
        return None


def test_sighup_changes_the_log_level(running):
    proc, config, base, mport, pport, logfile = running()
    config.write_text(base.replace("[proxy]", 'log_level = "error"\n[proxy]'))
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)  # the reload line itself is info: nothing shows it was applied
    assert _mcmp(mport, "CONFIG", b"JVMRoute=quiet&Host=127.0.0.1&Port=8009&Type=ajp")[0].status == 200
    config.write_text(base)
    proc.send_signal(signal.SIGHUP)
    _wait_for(lambda: "reload: applied manager.log_level" in logfile.read_text(), "level back")
    assert _mcmp(mport, "CONFIG", b"JVMRoute=loud&Host=127.0.0.1&Port=8010&Type=ajp")[0].status == 200
    _wait_for(lambda: "node loud registered" in logfile.read_text(), "info again")
    assert "node quiet registered" not in logfile.read_text()


@pytest.mark.slow
def test_reload_and_reopen_signals_to_the_process_group_spare_the_workers(tmp_path):
    mport, pport = free_loopback_ports(2)
    config = tmp_path / "balancer.toml"
    config.write_text(f'[manager]\nlisten = ["tcp:{mport}:interface=127.0.0.1"]\n'
                      f'[proxy]\nlisten = ["tcp:{pport}:interface=127.0.0.1"]\nworkers = 2\n'
                      "[console]\nlisten = []\n")
    logfile = tmp_path / "twistd.log"
    proc = subprocess.Popen(
        TWISTD + ["-n", "--pidfile=", f"--logfile={logfile}", "modcluster", "--config",
                  str(config)],
        cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        _wait_for(lambda: logfile.exists() and logfile.read_text().count(") serving") == 2,
                  "two workers serving", timeout=60)
        os.killpg(proc.pid, signal.SIGHUP)
        os.killpg(proc.pid, signal.SIGUSR1)
        _wait_for(lambda: "log files reopened" in logfile.read_text(), "reopen")
        _wait_for(lambda: "reload: applied" in logfile.read_text(), "reload")
        time.sleep(1.0)
        assert proc.poll() is None
        text = logfile.read_text()
        assert "ended" not in text and "exited" not in text, text[-2000:]
        assert _get_status(pport) == 404  # the workers serve (no context registered)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_successor_that_goes_away_before_serving_leaves_the_old_one_serving(running, tmp_path):
    import json

    sock_path = tmp_path / "handover.sock"
    proc, config, base, mport, pport, logfile = running()
    # restart with a handover socket: the running fixture's file plus the key
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    config.write_text(base.replace("[proxy]", f'handover_socket = "{sock_path}"\n[proxy]'))
    proc = subprocess.Popen(
        TWISTD + ["-n", "--pidfile=", f"--logfile={logfile}", "modcluster", "--config",
                  str(config)],
        cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: sock_path.exists() and _listening(pport), "balancer with handover")
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(sock_path))
        s.sendall(json.dumps({"takeover": True, "pid": 1}).encode() + b"\n")
        head, fds, _, _ = socket.recv_fds(s, 1 << 16, 16)
        assert len(fds) == 2  # the management and the proxy listener
        for fd in fds:
            os.close(fd)
        s.close()  # gone without "ready"
        _wait_for(lambda: "went away before serving; accepting again" in logfile.read_text(),
                  "resumption")
        assert _mcmp(mport, "INFO")[0].status == 200
        assert _get_status(pport) == 404
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
