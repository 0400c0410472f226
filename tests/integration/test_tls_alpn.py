"""
ALPN on every TLS listener, as deployed (tap.build on the real reactor): the
mutual-TLS management listener, an C{ssl:} proxy listener in the main process and
the same in worker processes.  Clients offer ALPN the way browsers, curl and
Python do; the server selects C{http/1.1} and goes on without ALPN when nothing
offered is shared (it used to abort with "tlsv1 alert internal error").
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess

import pytest
import pytest_twisted
import trustme
from twisted.internet import reactor, threads

from modcluster.config import parse_config
from modcluster.tap import build
from tests.support.tomcat import free_loopback_ports
from tests.support.waiting import until as _until

CURL = shutil.which("curl")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("alpn")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", common_name="localhost")
    client = ca.issue_cert("node1", common_name="node1")
    paths = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server-key.pem",
             "both": d / "server-both.pem", "ccert": d / "node1.pem", "ckey": d / "node1-key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    server.private_key_and_cert_chain_pem.write_to_path(str(paths["both"]))
    client.cert_chain_pems[0].write_to_path(str(paths["ccert"]))
    client.private_key_pem.write_to_path(str(paths["ckey"]))
    return {k: str(v) for k, v in paths.items()}


def _fetch(port, pki, offer, path="/", client_cert=False, method="GET"):
    """Blocking: handshake offering C{offer}, one request; (selected ALPN, status line)."""
    ctx = ssl.create_default_context(cafile=pki["ca"])
    if offer is not None:
        ctx.set_alpn_protocols(offer)
    if client_cert:
        ctx.load_cert_chain(pki["ccert"], pki["ckey"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            selected = s.selected_alpn_protocol()
            s.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                      "Content-Length: 0\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    return selected, data.split(b"\r\n", 1)[0].decode("latin-1")  # h2 answers binary


def _curl(port, pki, path="/", client_cert=False):
    """Blocking: curl with its default ALPN offer (h2, http/1.1); (http version, status)."""
    args = [CURL, "-sS", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
            "--max-time", "10", "--cacert", pki["ca"],
            "--resolve", f"localhost:{port}:127.0.0.1", f"https://localhost:{port}{path}"]
    if client_cert:
        args[1:1] = ["--cert", pki["ccert"], "--key", pki["ckey"]]
    out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


async def _check_listener(port, pki, path, status, client_cert=False, h2=False):
    """
    C{h2}: the listener serves HTTP/2 too (an ssl: proxy listener with [proxy]
    http2): an offer of h2 selects it (the HTTP/2 answers are tested in
    test_proxy_http2.py; here only the selection is checked for those offers).
    """
    for offer, selected in ((["h2", "http/1.1"], "h2" if h2 else "http/1.1"),
                            (["http/1.1"], "http/1.1"),
                            (["h2"], "h2" if h2 else None), (None, None)):
        got = await threads.deferToThread(_fetch, port, pki, offer, path, client_cert)
        assert got[0] == selected, (offer, got)
        if selected != "h2":
            assert got[1].startswith(f"HTTP/1.1 {status}"), (offer, got)
    if CURL is None:
        pytest.skip("curl is not installed (scripts/install-test-deps installs it)")
    version_status = await threads.deferToThread(_curl, port, pki, path, client_cert)
    assert version_status == f"{'2' if h2 else '1.1'} {status}", version_status



@pytest_twisted.ensureDeferred
async def test_management_listener_answers_alpn(pki):
    """
    The mutual-TLS management listener: MCMP and the console (served there with
    console.listen = []) for clients offering h2 + http/1.1, only h2, or nothing.
    """
    mport, pport = free_loopback_ports(2)
    config = parse_config(f"""
[manager]
listen = ["tcp:{mport}:interface=127.0.0.1"]
[manager.tls]
enabled = true
certificate = "{pki['cert']}"
private_key = "{pki['key']}"
ca = "{pki['ca']}"
[console]
listen = []
[proxy]
listen = ["tcp:{pport}:interface=127.0.0.1"]
""")
    service = build(config, reactor)
    service.startService()
    try:
        await _check_listener(mport, pki, "/mod_cluster-manager", 200, client_cert=True)
        got = await threads.deferToThread(_fetch, mport, pki, ["h2", "http/1.1"], "/", True,
                                          "VERSION")
        assert got == ("http/1.1", "HTTP/1.1 200 OK")
    finally:
        await service.stopService()


@pytest.mark.parametrize("http2", [True, False], ids=["http2", "no-http2"])
@pytest_twisted.ensureDeferred
async def test_proxy_ssl_listener_answers_alpn(pki, http2):
    """An `ssl:` proxy listener in the main process (404: no context registered);
    with [proxy] http2 = false, h2 is never selected."""
    mport, pport, cport = free_loopback_ports(3)
    config = parse_config(f"""
[manager]
listen = ["tcp:{mport}:interface=127.0.0.1"]
[console]
listen = ["tcp:{cport}:interface=127.0.0.1"]
[proxy]
listen = ["ssl:{pport}:interface=127.0.0.1:privateKey={pki['key']}:certKey={pki['cert']}"]
http2 = {"true" if http2 else "false"}
""")
    service = build(config, reactor)
    service.startService()
    try:
        await _check_listener(pport, pki, "/nowhere", 404, h2=http2)
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_worker_process_ssl_listener_answers_alpn(pki):
    """The same `ssl:` listener served by two worker processes (TLS rebuilt there)."""
    mport, pport, cport = free_loopback_ports(3)
    config = parse_config(f"""
[manager]
listen = ["tcp:{mport}:interface=127.0.0.1"]
[console]
listen = ["tcp:{cport}:interface=127.0.0.1"]
[proxy]
listen = ["ssl:{pport}:interface=127.0.0.1:privateKey={pki['both']}"]
workers = 2
""")
    service = build(config, reactor)
    pool = next(s for s in service if hasattr(s, "workers"))
    service.startService()
    try:
        await _until(pool.in_sync)
        await _check_listener(pport, pki, "/nowhere", 404, h2=True)
    finally:
        await service.stopService()


def _resumed(port, pki, version, clean):
    """Blocking: two handshakes, the second offering the first's session; reused?"""
    ctx = ssl.create_default_context(cafile=pki["ca"])
    ctx.minimum_version = ctx.maximum_version = version
    session = None
    reused = []
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
                # one exchange, so that a TLS 1.3 ticket (sent after the handshake) arrives
                s.sendall(b"GET /nowhere HTTP/1.1\r\nHost: localhost\r\n"
                          b"Connection: close\r\n\r\n")
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                reused.append(s.session_reused)
                session = s.session
                if clean:  # close_notify; without (as openssl s_time, many clients), a
                    s.unwrap()  # session-id session is dropped: a ticket still resumes
    return reused


@pytest_twisted.ensureDeferred
async def test_proxy_ssl_listener_resumes_sessions(pki):
    """
    A client coming back resumes its TLS session (abbreviated handshake, no
    private-key operation) with TLS 1.2 and 1.3, instead of a full handshake
    every time (Twisted's ssl: endpoint turns the session cache off).
    """
    mport, pport, cport = free_loopback_ports(3)
    config = parse_config(f"""
[manager]
listen = ["tcp:{mport}:interface=127.0.0.1"]
[console]
listen = ["tcp:{cport}:interface=127.0.0.1"]
[proxy]
listen = ["ssl:{pport}:interface=127.0.0.1:privateKey={pki['key']}:certKey={pki['cert']}"]
""")
    service = build(config, reactor)
    service.startService()
    try:
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            for clean in (True, False):
                reused = await threads.deferToThread(_resumed, pport, pki, version, clean)
                assert reused == [False, True], (version, clean)
    finally:
        await service.stopService()
