"""
The access log and client metrics of a real balancer (`twistd -n modcluster
--demo`, one process or two workers): lines reach the file, a logrotate-style
rename + SIGUSR1 moves new lines to a new file, and /metrics counts the requests.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.support.tomcat import free_loopback_ports

TWISTD = [os.path.join(os.path.dirname(sys.executable), "twistd")]


def get(port, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def wait_until(check, proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"twistd exited: {proc.stdout.read().decode()}")
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


@pytest.mark.parametrize("workers", [1, 2])
def test_access_log_file_reopened_on_sigusr1_and_metrics(tmp_path, workers):
    mport, pport, cport = free_loopback_ports(3)
    log = tmp_path / "access.log"
    config = tmp_path / "bal.toml"
    config.write_text(f"""
[manager]
listen = ["tcp:{mport}:interface=127.0.0.1"]
[console]
listen = ["tcp:{cport}:interface=127.0.0.1"]
[proxy]
listen = ["tcp:{pport}:interface=127.0.0.1"]
workers = {workers}
access_log = "{log}"
access_log_format = "json"
""")
    proc = subprocess.Popen(
        TWISTD + ["-n", "--pidfile=", "modcluster", "--config", str(config), "--demo"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        wait_until(lambda: get(pport, "/demo/")[0] == 200, proc)
        with socket.create_connection(("127.0.0.1", pport), timeout=10) as s:
            s.sendall(b'GET /demo/"x HTTP/1.1\r\nHost: a\r\nUser-Agent: evil"\t\xff\r\n'
                      b"Connection: close\r\n\r\n")
            while s.recv(65536):
                pass
        hostile = wait_until(lambda: [x for x in map(json.loads, lines(log))
                                      if x["target"] == '/demo/"x'], proc)
        assert hostile[0]["user_agent"] == 'evil"\t\\xff'
        before = [json.loads(x) for x in lines(log)]
        assert all(x["client"] == "127.0.0.1" for x in before)

        os.rename(log, tmp_path / "access.log.1")  # what logrotate does
        proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: log.exists(), proc)
        status, _ = get(pport, "/demo/after-rotation", {"User-Agent": "probe/1"})
        assert status == 200
        wait_until(lambda: lines(log), proc)
        [after] = [json.loads(x) for x in lines(log)]
        assert after["target"] == "/demo/after-rotation" and after["user_agent"] == "probe/1"
        assert after["context"] == "/demo" and after["node"] and after["status"] == 200
        rotated = [json.loads(x) for x in lines(tmp_path / "access.log.1")]
        assert all(x["target"] != "/demo/after-rotation" for x in rotated)
        assert len(rotated) >= len(before)

        def counted():
            _, body = get(cport, "/metrics")
            text = body.decode()
            total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith("modcluster_proxy_requests_total{")
                        and 'code_class="2xx"' in line)
            return total == sum(1 for x in rotated if 200 <= x["status"] < 300) + 1

        wait_until(counted, proc)
        assert proc.poll() is None  # SIGUSR1 did not stop it
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
