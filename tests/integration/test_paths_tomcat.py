"""
Path confusion against a real Tomcat 10 (issue 13 §1).

One Tomcat with four static webapps, C{only1}, C{secret}, C{dis1}, C{stop1}
(no ROOT), is registered through the proxy with C{/only1} ENABLED, C{/dis1}
DISABLED, C{/stop1} STOPPED and C{/secret} not at all; once as an HTTP node,
once as an AJP node.  Every path-confusion form is sent over real sockets:
Tomcat itself, asked directly, serves the other webapps for them (so the forms
are live on this Tomcat), while through the proxy none of them reaches
anything but C{only1}.
"""

from __future__ import annotations

import socket
from typing import Optional

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from modcluster.proxy.ajp import AJPForwarder
from modcluster.cluster.model import BalancerSettings, NodeSettings
from modcluster.cluster.registry import Registry
from modcluster.config import ProxyConfig
from modcluster.proxy import ProxyFactory
from tests.integration.conftest import AJP_SECRET

pytestmark = pytest.mark.tomcat

WEBAPPS = ("only1", "secret", "dis1", "stop1")
BALANCER = BalancerSettings("mycluster")

#: Targets that reach another webapp than the routed one on Tomcat (or that
#: Tomcat refuses).  Sent byte for byte.
FORMS = [
    b"/only1;/../secret/",
    b"/only1;x/../dis1/",
    b"/only1;x/../stop1/",
    b"/only1%3B/../secret/",
    b"/only1%3b/../dis1/",
    b"/only1/..;/secret/",
    b"/only1/..;x/stop1/",
    b"/only1/%2e%2e/secret/",
    b"/only1/.%2E/dis1/",
    b"/only1/%2E%2E;x/stop1/",
    b"/only1/./../secret/",
    b"/only1;jsessionid=abc.paths/../secret/",
    b"/only1/..%2Fsecret/",
    b"/only1/..%5Csecret/",
    b"/only1\\..\\secret/",
    b"/only1/x#/../../secret/",
    b"//secret/",
    b"/%73ecret/",
    b"/secret/",
    b"/dis1/",
    b"/stop1/",
]


@pytest.fixture(scope="module")
def paths_tomcat(tomcat_factory):
    inst = tomcat_factory.create("paths", jvm_route="paths", ajp_secret=AJP_SECRET)
    inst.build()
    for name in WEBAPPS:
        app = inst.base_dir / "webapps" / name
        app.mkdir()
        (app / "index.html").write_text(f"webapp:{name}\n")
    inst.start()
    return inst


class Proxy:
    """The proxy on 127.0.0.1 with the Tomcat registered as one node of C{node_type}."""

    def __init__(self, tomcat, node_type: str) -> None:
        self.config = ProxyConfig(ajp_secret=AJP_SECRET, timeout=30.0)
        self.registry = Registry(reactor)
        self.factory = ProxyFactory(reactor, self.config, lambda: self.registry.table,
                                    self.registry.set_error, lambda route: None,
                                    forwarders={"ajp": AJPForwarder(reactor, self.config)})
        port = tomcat.ajp_port if node_type == "ajp" else tomcat.http_port
        self.registry.config(BALANCER, NodeSettings(route="paths", host="127.0.0.1", port=port,
                                                    type=node_type, balancer=BALANCER.name),
                             [(["localhost"], ["/only1", "/dis1", "/stop1"])])
        self.registry.app("ENABLE-APP", "paths", ["localhost"], ["/only1"])
        self.registry.app("DISABLE-APP", "paths", ["localhost"], ["/dis1"])
        self.registry.app("STOP-APP", "paths", ["localhost"], ["/stop1"])
        self.registry.apply_status("paths", 100, True)
        self.listening = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.port = self.listening.getHost().port

    async def close(self) -> None:
        await self.listening.stopListening()
        self.factory.stopFactory()


def _exchange(port: int, target: bytes, line_end: bytes = b" HTTP/1.1") -> tuple[int, bytes]:
    """One request on a new connection, read to the end: (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"GET " + target + line_end + b"\r\nHost: localhost\r\n"
                  b"Connection: close\r\n\r\n")
        data = b""
        while True:
            piece = s.recv(65536)
            if not piece:
                break
            data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size.split(b";")[0], 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return status, body


async def exchange(port: int, target: bytes) -> tuple[int, bytes]:
    return await threads.deferToThread(_exchange, port, target)


def served_by(body: bytes) -> Optional[str]:
    for name in WEBAPPS:
        if body == f"webapp:{name}\n".encode():
            return name
    return None


@pytest_twisted.ensureDeferred
async def test_forms_are_live_on_tomcat_itself(paths_tomcat):
    """Asked directly, Tomcat serves other webapps for the forms (the threat is real)."""
    reached = {}
    for target in (b"/only1;/../secret/", b"/only1;x/../dis1/", b"/only1%3B/../secret/",
                   b"/only1/..;/stop1/", b"/only1/%2e%2e/secret/"):
        status, body = await exchange(paths_tomcat.http_port, target)
        reached[target] = (status, served_by(body))
    assert reached == {
        b"/only1;/../secret/": (200, "secret"),
        b"/only1;x/../dis1/": (200, "dis1"),
        b"/only1%3B/../secret/": (200, "secret"),
        b"/only1/..;/stop1/": (200, "stop1"),
        b"/only1/%2e%2e/secret/": (200, "secret"),
    }


@pytest.mark.parametrize("node_type", ["http", "ajp"])
@pytest_twisted.ensureDeferred
async def test_only_the_registered_webapp_is_reachable(paths_tomcat, node_type):
    """
    Through the proxy, over HTTP and AJP, each form twice (the second time
    from the request memo): never anything but C{only1}; the confusing forms
    are refused by the proxy itself (its text/plain error, not Tomcat's).
    """
    p = Proxy(paths_tomcat, node_type)
    try:
        status, body = await exchange(p.port, b"/only1/")
        assert (status, served_by(body)) == (200, "only1")
        status, body = await exchange(p.port, b"/only1;jsessionid=abc.paths")
        assert status in (200, 302)  # Tomcat redirects /only1 to /only1/
        for target in FORMS:
            for _ in range(2):
                status, body = await exchange(p.port, target)
                assert served_by(body) is None, (target, status, body)
                assert status in (400, 404, 503), (target, status, body)
                # the proxy's own answer ("400 Bad Request: ..."), not Tomcat's page
                assert body.startswith(b"%d " % status), (target, body)
        # the forms did not stop the proxy serving only1
        status, body = await exchange(p.port, b"/only1/index.html")
        assert (status, served_by(body)) == (200, "only1")
    finally:
        await p.close()
