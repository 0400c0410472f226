"""
The shipped examples work as they are: examples/mtls.toml with certificates from
certs/generate, and examples/advertise.toml, each run with `twistd -n modcluster`.
Only the ports are changed (to free loopback ports) so tests do not collide.
"""

import http.client
import json
import os
import pathlib
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time

import pytest

from modcluster.advertise.codec import verify_datagram
from tests.support.tomcat import free_loopback_ports

ROOT = pathlib.Path(__file__).resolve().parents[2]
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def run_example(tmp_path, name, replacements):
    text = (ROOT / "examples" / name).read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    (tmp_path / name).write_text(text)
    proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "modcluster", "--config", name],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stdout.read().decode(errors="replace")


def wait_port(port, proc, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, stop(proc)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(stop(proc))


def tls_mcmp(port, certs, cert_name, method, body, uri="/", headers=None):
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if cert_name:
        ctx.load_cert_chain(str(certs / f"{cert_name}.pem"), str(certs / f"{cert_name}-key.pem"))
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    conn.request(method, uri, body=body,
                 headers={"User-Agent": "ClusterListener/1.0", **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


def test_mtls_example(tmp_path):
    certs = tmp_path / "certs" / "dev"
    subprocess.run([sys.executable, str(ROOT / "certs" / "generate"), "--out", str(certs),
                    "--nodes", "node1,node2,ops"],
                   check=True, capture_output=True, timeout=120)
    mport, pport, cport = free_loopback_ports(3)
    proc = run_example(tmp_path, "mtls.toml", [
        ('listen = ["tcp:6666:interface=127.0.0.1"]',
         f'listen = ["tcp:{mport}:interface=127.0.0.1"]\n'),
        ('listen = ["tcp:8090:interface=127.0.0.1"]',
         f'listen = ["tcp:{cport}:interface=127.0.0.1"]\n'),
        ("[manager.tls]\n", f'[proxy]\nlisten = ["tcp:{pport}:interface=127.0.0.1"]\n\n'
                            "[manager.tls]\n"),
    ])
    try:
        wait_port(mport, proc)
        resp, body = tls_mcmp(mport, certs, "node1", "CONFIG",
                              b"JVMRoute=node1&Host=127.0.0.1&Port=8009&Type=ajp")
        assert resp.status == 200
        resp, body = tls_mcmp(mport, certs, "node1", "CONFIG",
                              b"JVMRoute=node2&Host=127.0.0.1&Port=8010&Type=ajp")
        assert resp.status == 500 and resp.getheader("Type") == "SYNTAX"
        assert "node1" in resp.getheader("Mess")
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            tls_mcmp(mport, certs, None, "INFO", b"")
        resp, body = tls_mcmp(mport, certs, "node2", "INFO", b"")
        assert resp.status == 200 and b"Name: node1," in body and b"node2" not in body

        # The console is on its own mutual-TLS listener, no longer on the MCMP one.
        wait_port(cport, proc)
        resp, _ = tls_mcmp(mport, certs, "ops", "GET", None, "/mod_cluster-manager")
        assert resp.status == 404
        resp, page = tls_mcmp(cport, certs, "node2", "GET", None, "/mod_cluster-manager")
        assert resp.status == 200 and b"node1" in page
        nonce = re.search(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                          page).group().decode()
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        command = f"nonce={nonce}&cmd=DISABLE-APP&range=NODE&jvmroute=node1".encode()
        # node2's certificate may not act on node1 in the console either ...
        resp, body = tls_mcmp(cport, certs, "node2", "POST", command, "/mod_cluster-manager",
                              form)
        assert resp.status == 403 and b"node2" in body
        # ... node1's may, and so may the operator.
        resp, _ = tls_mcmp(cport, certs, "node1", "POST", command, "/mod_cluster-manager",
                           form)
        assert resp.status == 303
        command = command.replace(b"DISABLE-APP", b"ENABLE-APP")
        resp, _ = tls_mcmp(cport, certs, "ops", "POST", command, "/mod_cluster-manager", form)
        assert resp.status == 303
        resp, body = tls_mcmp(cport, certs, "ops", "GET", None, "/api/v1/events")
        events = json.loads(body)["events"]
        seen = {(e["event"], e.get("identity"), e.get("peer", "").split(":")[0])
                for e in events}
        assert ("console.refused", "node2", "127.0.0.1") in seen
        assert ("console.command", "node1", "127.0.0.1") in seen
        assert ("console.command", "ops", "127.0.0.1") in seen
        assert ("mcmp.refused", "node1", "127.0.0.1") in seen  # CONFIG for node2
    finally:
        log = stop(proc)
    assert "node1" in log
    assert "certificate identity ops" in log and "certificate identity node2" in log


def test_advertise_example(tmp_path):
    mport, pport, gport, cport = free_loopback_ports(4)
    proc = run_example(tmp_path, "advertise.toml", [
        ('listen = ["tcp:8090:interface=127.0.0.1"]',
         f'listen = ["tcp:{cport}:interface=127.0.0.1"]'),
        ('listen = ["tcp:6666:interface=127.0.0.1"]',
         f'listen = ["tcp:{mport}:interface=127.0.0.1"]\n\n'
         f'[proxy]\nlisten = ["tcp:{pport}:interface=127.0.0.1"]'),
        ('group = "224.0.1.105:23364"', f'group = "224.0.1.105:{gport}"\n'
                                         f'bind_address = "0.0.0.0:{gport}"'),
    ])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("224.0.1.105", gport))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                        struct.pack("4s4s", socket.inet_aton("224.0.1.105"),
                                    socket.inet_aton("127.0.0.1")))
        sock.settimeout(15)
        data, _ = sock.recvfrom(4096)
        ad = verify_datagram(data, "change-me")
        assert ad.manager_address == f"127.0.0.1:{mport}"
        assert ad.manager_protocol == "http"
    finally:
        sock.close()
        log = stop(proc)
    assert "127.0.0.1" in log
