"""
The packaged plugin as an operator runs it: `twistd -n modcluster --config FILE`
in a subprocess, driven over real HTTP on loopback.
"""

import http.client
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.tomcat import free_loopback_ports

TWISTD = [os.path.join(os.path.dirname(sys.executable), "twistd")]


def mcmp(port, method, body=b"", uri="/"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"User-Agent": "ClusterListener/1.0"}
    conn.request(method, uri, body=body or None, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


def wait_for_port(port, proc, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"twistd exited: {proc.stdout.read().decode()}")
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"port {port} not listening after {timeout} s")


@pytest.fixture
def balancer(tmp_path):
    procs = []

    def start(extra=""):
        mport, pport, cport = free_loopback_ports(3)
        config = tmp_path / "bal.toml"
        config.write_text(f"""
[manager]
listen = ["tcp:{mport}:interface=127.0.0.1"]
persist = true
state_file = "{tmp_path / 'state.json'}"
[console]
listen = ["tcp:{cport}:interface=127.0.0.1"]
[proxy]
listen = ["tcp:{pport}:interface=127.0.0.1"]
{extra}
""")
        proc = subprocess.Popen(
            TWISTD + ["-n", "--pidfile=", "modcluster", "--config", str(config)],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": os.getcwd()})
        procs.append(proc)
        wait_for_port(mport, proc)
        wait_for_port(cport, proc)
        start.console_port = cport
        return proc, mport, pport

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_check_flag_validates_and_reports_errors(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text("[manager]\nbalancer_name = 'x'\n")
    out = subprocess.run(TWISTD + ["modcluster", "--config", str(good), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "configuration OK" in out.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[manager]\nmax_nodes = -1\n")
    out = subprocess.run(TWISTD + ["-n", "modcluster", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert f"{bad}: manager.max_nodes: must be greater than 0" in out.stdout + out.stderr


def test_mcmp_session_over_real_http_and_restart_keeps_registrations(balancer):
    proc, mport, pport = balancer()
    resp, body = mcmp(mport, "CONFIG", b"JVMRoute=node1&Host=127.0.0.1&Port=8009&Type=ajp")
    assert (resp.status, resp.reason, body) == (200, "OK", b"")
    resp, _ = mcmp(mport, "ENABLE-APP", b"JVMRoute=node1&Alias=localhost&Context=%2Fapp")
    assert resp.status == 200
    resp, body = mcmp(mport, "INFO")
    assert b"Node: [1],Name: node1," in body
    assert b"Context: [1:1:1], Context: /app, Status: ENABLED" in body
    resp, body = mcmp(mport, "STATUS", b"JVMRoute=node1&Load")
    assert resp.status == 500 and resp.getheader("Type") == "SYNTAX"
    resp, body = mcmp(mport, "VERSION")
    assert body.startswith(b"release: ")
    # The console is on its own listener, not on the MCMP one.
    resp, body = mcmp(balancer.console_port, "GET", uri="/mod_cluster-manager")
    assert resp.status == 200 and b"node1" in body
    resp, body = mcmp(mport, "GET", uri="/mod_cluster-manager")
    assert resp.status == 404

    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    proc2, mport2, _ = balancer()
    resp, body = mcmp(mport2, "INFO")
    assert b"Name: node1," in body
    assert b"Context: /app, Status: ENABLED" in body


def test_damaged_state_file_is_set_aside_and_the_balancer_serves(balancer, tmp_path):
    """Issue 13 §5: a top-level JSON array used to crash start-up with a traceback."""
    (tmp_path / "state.json").write_text("[1, 2, 3]")
    proc, mport, _ = balancer()
    resp, _ = mcmp(mport, "CONFIG", b"JVMRoute=node1&Host=127.0.0.1&Port=8009&Type=ajp")
    assert resp.status == 200
    assert (tmp_path / "state.json.bad").read_text() == "[1, 2, 3]"
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=20)[0].decode()
    assert "set aside as" in out and "Traceback" not in out
