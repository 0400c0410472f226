"""
The AJP forwarder against real Tomcat 10 AJP connectors.

A L{ProxyFactory} with L{AJPForwarder} registered for C{ajp} listens on
127.0.0.1; Tomcat instances (tests/support/tomcat.py) are registered as AJP
nodes directly in a L{Registry}; requests go over real HTTP with blocking
C{http.client} in reactor threads.  Three JVMs: the shared C{node1} and
C{node2}, and a private C{node3} that is frozen (SIGSTOP) and then killed.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import time
from typing import Iterable, Optional

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater

from modcluster.proxy.ajp import AJPForwarder
from modcluster.cluster.model import BalancerSettings, NodeSettings
from modcluster.cluster.registry import Registry
from modcluster.config import ProxyConfig
from modcluster.proxy import ProxyFactory
from tests.integration.conftest import AJP_SECRET
from tests.support.tomcat import stream_pattern

pytestmark = pytest.mark.tomcat

MiB = 1024 * 1024
BALANCER = BalancerSettings("mycluster", sticky_force=False)


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture
def node1(tomcat_factory):
    return tomcat_factory.shared("node1", jvm_route="node1", ajp_secret=AJP_SECRET)


@pytest.fixture
def node2(tomcat_factory):
    return tomcat_factory.shared("node2", jvm_route="node2", ajp_secret=AJP_SECRET)


@pytest.fixture(scope="module")
def _node3(tomcat_factory):
    return tomcat_factory.start("ajp-node3", jvm_route="node3", ajp_secret=AJP_SECRET)


@pytest.fixture
def node3(_node3):
    """A private node this module freezes and kills (restarted if found dead)."""
    if not _node3.running:
        _node3.start()
    return _node3


class Proxy:
    """A loopback proxy with the AJP forwarder and a registry of Tomcat nodes."""

    def __init__(self, nodes: Iterable, **config) -> None:
        config.setdefault("ajp_secret", AJP_SECRET)
        config.setdefault("timeout", 30.0)
        self.config = ProxyConfig(**config)
        self.registry = Registry(reactor)
        self.failures: list[tuple[str, str]] = []
        self.forwarder = AJPForwarder(reactor, self.config)
        self.factory = ProxyFactory(reactor, self.config, lambda: self.registry.table,
                                    self._failed, lambda route: None,
                                    forwarders={"ajp": self.forwarder})
        for node, settings in nodes:
            self.add(node, **settings)
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.number = self.port.getHost().port

    def _failed(self, route: str, reason: str) -> None:
        self.failures.append((route, reason))
        self.registry.set_error(route, reason)

    def add(self, tomcat, **settings) -> None:
        route = tomcat.jvm_route
        self.registry.config(BALANCER, NodeSettings(route=route, host="127.0.0.1",
                                                    port=tomcat.ajp_port, type="ajp",
                                                    balancer=BALANCER.name, **settings),
                             [(["localhost"], ["/echo"])])
        self.registry.app("ENABLE-APP", route, ["localhost"], ["/echo"])
        self.registry.apply_status(route, 100, True)

    def in_error(self, route: str) -> bool:
        return self.registry.table.by_route[route].rt.in_error

    def counters_idle(self) -> bool:
        table = self.registry.table
        return (all(n.rt.busy == 0 for n in table.nodes)
                and all(r.rt.in_flight == 0 for rs in table.contexts.values() for r in rs))

    async def settled(self) -> bool:
        """
        Whether the counters come back to 0 within a second (a client can have
        the whole body before the proxy reads Tomcat's END_RESPONSE).
        """
        for _ in range(50):
            if self.counters_idle():
                return True
            await sleep(0.02)
        return False

    async def close(self) -> None:
        await self.port.stopListening()


class Result:
    def __init__(self, resp: http.client.HTTPResponse, body: bytes, client_port: int) -> None:
        self.status = resp.status
        self.reason = resp.reason
        self.headers = resp.getheaders()
        self.msg = resp.msg
        self.body = body
        self.client_port = client_port

    def header(self, name: str) -> Optional[str]:
        return self.msg.get(name)

    def json(self) -> dict:
        return json.loads(self.body)


def _blocking(port: int, method: str, path: str, headers=(), body=None, chunks=None,
              conn: Optional[http.client.HTTPConnection] = None, timeout: float = 30.0,
              hash_only: bool = False) -> Result:
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", f"localhost:{port}")
        for name, value in headers:
            conn.putheader(name, value)
        if chunks is not None:
            conn.putheader("Transfer-Encoding", "chunked")
        elif body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        client_port = conn.sock.getsockname()[1]
        if chunks is not None:
            for piece in chunks:
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.send(b"0\r\n\r\n")
        elif body is not None:
            view = memoryview(body)
            for start in range(0, len(body), MiB):
                conn.send(view[start:start + MiB])
        resp = conn.getresponse()
        if hash_only:
            digest = hashlib.sha256()
            size = 0
            while True:
                piece = resp.read(256 * 1024)
                if not piece:
                    break
                digest.update(piece)
                size += len(piece)
            data = b"%d:%s" % (size, digest.hexdigest().encode())
        else:
            data = resp.read()
        return Result(resp, data, client_port)
    finally:
        if own:
            conn.close()


async def request(proxy: Proxy, method: str, path: str, **kwargs) -> Result:
    return await threads.deferToThread(_blocking, proxy.number, method, path, **kwargs)


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


# -- forwarding ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_get_request_facts_reach_tomcat(node1):
    """What Tomcat sees of a GET (ajp13.md §3.1) and what the client gets back."""
    p = Proxy([(node1, {})])
    try:
        r = await request(p, "GET", "/echo/info.jsp?x=1&y=a%2Fb",
                          headers=[("X-Test", "one"), ("Cookie", "c=1")])
        assert r.status == 200
        assert r.reason == "OK"  # Tomcat sends "200": the standard phrase is generated
        assert r.header("X-Echo-Node") == "node1"
        info = r.json()
        assert info["method"] == "GET"
        assert info["requestURI"] == "/echo/info.jsp"
        assert info["queryString"] == "x=1&y=a%2Fb"
        assert info["protocol"] == "HTTP/1.1"
        assert info["scheme"] == "http" and info["isSecure"] is False
        assert info["serverName"] == "localhost"
        assert info["serverPort"] == p.number
        assert info["remoteAddr"] == "127.0.0.1"
        assert info["remotePort"] == r.client_port  # AJP_REMOTE_PORT
        assert info["localAddr"] == "127.0.0.1"  # AJP_LOCAL_ADDR
        headers = {name.lower(): value for name, value in info["headers"]}
        assert headers["host"] == f"localhost:{p.number}"
        assert headers["x-test"] == "one"
        assert info["cookies"] == [["c", "1"]]
        assert info["jvmRouteAttribute"] is None
        assert await p.settled()
        assert p.failures == []
    finally:
        await p.close()


@pytest_twisted.ensureDeferred
async def test_large_post_and_response_streamed(node1):
    """20 MiB up (Content-Length) and 20 MiB down, sha256 checked."""
    p = Proxy([(node1, {})])
    try:
        body = os.urandom(20 * MiB)
        r = await request(p, "POST", "/echo/upload.jsp", body=body,
                          headers=[("Content-Type", "application/octet-stream")], timeout=60)
        assert r.status == 200, r.body[:300]
        info = r.json()
        assert info["bytes"] == len(body)
        assert info["sha256"] == hashlib.sha256(body).hexdigest()
        assert info["contentLength"] == len(body)
        n = 20 * MiB
        r = await request(p, "GET", f"/echo/stream.jsp?bytes={n}", hash_only=True, timeout=60)
        assert r.status == 200
        assert r.header("Content-Length") == str(n)
        assert r.body == b"%d:%s" % (n, hashlib.sha256(stream_pattern(n)).hexdigest().encode())
        node = p.registry.table.by_route["node1"]
        assert node.rt.transferred >= len(body)
        assert node.rt.read >= n
        assert await p.settled()
    finally:
        await p.close()


@pytest_twisted.ensureDeferred
async def test_chunked_upload(node1):
    """A chunked client body reaches Tomcat whole, in pieces of odd sizes."""
    p = Proxy([(node1, {})])
    try:
        pieces = [os.urandom(size) for size in (1, 100, 8186, 8187, 65536, 300000, 7)] * 4
        whole = b"".join(pieces)
        r = await request(p, "POST", "/echo/upload.jsp", chunks=pieces)
        assert r.status == 200, r.body[:300]
        info = r.json()
        assert info["bytes"] == len(whole)
        assert info["sha256"] == hashlib.sha256(whole).hexdigest()
        assert info["transferEncoding"] == "chunked"
        assert info["contentLength"] == -1
        assert await p.settled()
    finally:
        await p.close()


@pytest_twisted.ensureDeferred
async def test_head_304_redirect_and_cookies_on_one_connection(node1):
    """HEAD, 304 and 302 keep the client connection's framing intact."""
    p = Proxy([(node1, {})])
    conn = http.client.HTTPConnection("127.0.0.1", p.number, timeout=30)
    try:
        r = await request(p, "HEAD", "/echo/info.jsp", conn=conn)
        assert r.status == 200 and r.body == b""
        assert r.header("X-Echo-Node") == "node1"
        r = await request(p, "GET", "/echo/status.jsp?code=304", conn=conn)
        assert (r.status, r.reason, r.body) == (304, "Not Modified", b"")
        r = await request(p, "GET", "/echo/redirect.jsp?to=/echo/info.jsp%3Fa%3D1&code=302",
                          conn=conn)
        assert (r.status, r.reason) == (302, "Found")
        assert r.header("Location") == "/echo/info.jsp?a=1"
        r = await request(p, "GET", "/echo/headers.jsp?cookies=3&repeat=2", conn=conn)
        assert r.status == 200
        assert r.msg.get_all("Set-Cookie") == ["c1=v1; Path=/echo", "c2=v2; Path=/echo; HttpOnly",
                                               "c3=v3; Path=/echo; Max-Age=60"]
        assert r.msg.get_all("X-Echo-Multi") == ["value-1", "value-2"]
        r = await request(p, "GET", "/echo/status.jsp?code=418", conn=conn)
        assert r.status == 418 and r.body == b"status 418\n"
        # one client connection and one pooled node connection carried all of it
        pool = p.forwarder.pool(p.registry.table.by_route["node1"])
        assert len(pool.conns) == 1
        assert await p.settled()
    finally:
        conn.close()
        await p.close()


@pytest_twisted.ensureDeferred
async def test_sessions_stick_to_their_tomcat(node1, node2):
    """Tomcat's own JSESSIONID ends in .<jvmRoute>; later requests go back there."""
    p = Proxy([(node1, {}), (node2, {})])
    try:
        sessions: dict[str, str] = {}
        for _ in range(12):
            r = await request(p, "GET", "/echo/session.jsp")
            assert r.status == 200
            info = r.json()
            sid = info["id"]
            assert sid.endswith("." + info["node"])
            assert f"JSESSIONID={sid}" in r.header("Set-Cookie")
            sessions.setdefault(info["node"], sid)
            if len(sessions) == 2:
                break
        assert set(sessions) == {"node1", "node2"}
        for route, sid in sessions.items():
            for hit in range(2, 6):
                r = await request(p, "GET", "/echo/session.jsp",
                                  headers=[("Cookie", f"JSESSIONID={sid}")])
                info = r.json()
                assert info["node"] == route
                assert info["id"] == sid and info["hits"] == hit
        assert await p.settled()
    finally:
        await p.close()


@pytest_twisted.ensureDeferred
async def test_wrong_or_missing_secret_is_refused_by_tomcat(node1):
    """Tomcat answers 403 to a wrong secret; that is a response, not a node failure."""
    for secret in ("not-the-secret", None):
        p = Proxy([(node1, {})], ajp_secret=secret)
        try:
            r = await request(p, "GET", "/echo/info.jsp")
            assert r.status == 403
            assert r.reason == "Forbidden"
            assert p.failures == []
            assert not p.in_error("node1")
            assert await p.settled()
        finally:
            await p.close()


@pytest_twisted.ensureDeferred
async def test_head_too_large_for_packet_gets_400(node1):
    p = Proxy([(node1, {})])
    try:
        r = await request(p, "GET", "/echo/info.jsp", headers=[("Cookie", "x" * 9000)])
        assert r.status == 400
        assert p.failures == []
    finally:
        await p.close()


# -- failures ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cping_timeout_on_frozen_tomcat_fails_over(node1, node3):
    """
    node3's JVM is frozen (SIGSTOP): its kernel still accepts connections, only
    CPING shows it is dead.  The pooled connection's CPING times out, a fresh
    connection's CPING too, then node3 is in error and the request goes to node1.
    """
    p = Proxy([(node1, {}), (node3, {"ping": 1.0})], ajp_cping="idle", ajp_cping_idle=0.2)
    try:
        r = await request(p, "GET", "/echo/info.jsp",
                          headers=[("Cookie", "JSESSIONID=abc.node3")])
        assert r.header("X-Echo-Node") == "node3"
        # The client has the whole body before END_RESPONSE arrives: wait for
        # the connection to be back in the pool before freezing the JVM.
        pool = p.forwarder.pool(p.registry.table.by_route["node3"])
        for _ in range(100):
            if pool.idle:
                break
            await sleep(0.02)
        assert len(pool.idle) == 1
        os.killpg(node3.pid, signal.SIGSTOP)
        try:
            await sleep(0.5)
            started = time.monotonic()
            r = await request(p, "GET", "/echo/info.jsp",
                              headers=[("Cookie", "JSESSIONID=abc.node3")])
            elapsed = time.monotonic() - started
            assert r.status == 200
            assert r.header("X-Echo-Node") == "node1"
            assert 1.8 <= elapsed < 8, (elapsed, p.failures)  # two CPING timeouts of 1 s
            assert p.in_error("node3")
            assert [route for route, _ in p.failures] == ["node3"]
            assert "CPING" in p.failures[0][1]
            # while node3 is in error its session requests go to node1 at once
            started = time.monotonic()
            r = await request(p, "GET", "/echo/info.jsp",
                              headers=[("Cookie", "JSESSIONID=abc.node3")])
            assert r.header("X-Echo-Node") == "node1"
            assert time.monotonic() - started < 1
        finally:
            os.killpg(node3.pid, signal.SIGCONT)
        assert await p.settled()
    finally:
        await p.close()


@pytest_twisted.ensureDeferred
async def test_tomcat_killed_mid_run_requests_fail_over(node1, node3):
    """
    node3 is killed while it holds four idempotent requests (slow.jsp) and
    more keep coming: every request is answered 200, by node1 once node3 died.
    """
    p = Proxy([(node1, {}), (node3, {})])
    try:
        cookie = [("Cookie", "JSESSIONID=abc.node3")]
        r = await request(p, "GET", "/echo/info.jsp", headers=cookie)
        assert r.header("X-Echo-Node") == "node3"
        inflight = [threads.deferToThread(_blocking, p.number, "GET", "/echo/slow.jsp?ms=3000",
                                          headers=cookie) for _ in range(4)]
        for _ in range(50):
            await sleep(0.05)
            if p.registry.table.by_route["node3"].rt.busy == 4:
                break
        assert p.registry.table.by_route["node3"].rt.busy == 4
        node3.kill()
        answers = []
        for d in inflight:
            answers.append(await d)
        assert [a.status for a in answers] == [200] * 4
        assert {a.header("X-Echo-Node") for a in answers} == {"node1"}
        for _ in range(5):
            r = await request(p, "GET", "/echo/info.jsp", headers=cookie)
            assert r.status == 200 and r.header("X-Echo-Node") == "node1"
        assert p.in_error("node3")
        assert await p.settled()
    finally:
        await p.close()


# -- TLS clients -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tls_client_facts_reach_tomcat(node1, tmp_path):
    """A TLS client with a certificate: is_ssl, cipher, key size, protocol, certificate."""
    import ssl as stdlib_ssl

    import trustme
    from twisted.internet import ssl

    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("client.example")
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    client_path = tmp_path / "client.pem"
    client.private_key_and_cert_chain_pem.write_to_path(str(client_path))
    options = ssl.PrivateCertificate.loadPEM(
        server.private_key_and_cert_chain_pem.bytes()).options(
        ssl.Certificate.loadPEM(ca.cert_pem.bytes()))
    p = Proxy([(node1, {})])
    port = reactor.listenSSL(0, p.factory, options, interface="127.0.0.1")
    number = port.getHost().port

    def get() -> tuple[int, dict]:
        ctx = stdlib_ssl.create_default_context(cafile=str(ca_path))
        ctx.load_cert_chain(str(client_path))
        conn = http.client.HTTPSConnection("127.0.0.1", number, context=ctx, timeout=30)
        try:
            conn.request("GET", "/echo/info.jsp")
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    try:
        status, info = await threads.deferToThread(get)
        assert status == 200
        assert info["isSecure"] is True and info["scheme"] == "https"
        assert info["serverPort"] == number
        attrs = info["attributes"]
        assert attrs.get("jakarta.servlet.request.cipher_suite")
        assert int(attrs["jakarta.servlet.request.key_size"]) >= 128
        assert attrs.get("org.apache.tomcat.util.net.secure_protocol_version", "").startswith("TLS")
        assert "DNSName: client.example" in attrs["jakarta.servlet.request.X509Certificate"]
    finally:
        await port.stopListening()
        await p.close()
