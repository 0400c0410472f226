"""
Helpers for the console tests: a registry with two registered nodes and an
in-memory HTTP client that sends raw requests through a real twisted.web
C{Site} over a L{StringTransport}.  (A module of its own, not conftest, so test
modules can import it.)
"""

from __future__ import annotations

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Site

from modcluster.cluster.model import BalancerSettings, NodeSettings
from modcluster.cluster.registry import Registry
from modcluster.config import ConsoleConfig
from modcluster.console.resources import ConsoleResource, mount

RELEASE = "mod_cluster/1.3.22.Final"
NONCE = "0b6c0f43-9a55-4e56-9f0e-4b1b2b7d1c11"
PATH = "/mod_cluster-manager"
PEER = IPv4Address("TCP", "127.0.0.1", 5555)


def two_nodes(clock) -> Registry:
    """
    node1 (ajp, no domain, Load 85) with /app and / on aliases localhost +
    default-host; node2 (http, domain dc1, Load 0 = hot standby) with /app
    DISABLED on alias example.com.
    """
    reg = Registry(clock)
    bal = BalancerSettings("mycluster", sticky_cookie="JSESSIONID", sticky_path="jsessionid",
                           sticky_remove=True, sticky_force=False, wait_worker=5.0,
                           max_attempts=3)
    reg.config(bal, NodeSettings(route="node1", host="10.0.0.21", port=8009),
               [(["localhost", "default-host"], ["/app", "/"])])
    reg.app("ENABLE-APP", "node1", ["localhost"], ["/app", "/"])
    assert reg.apply_status("node1", 85, True)
    reg.config(bal, NodeSettings(route="node2", host="10.0.0.22", port=8080, type="http",
                                 domain="dc1"))
    reg.app("DISABLE-APP", "node2", ["example.com"], ["/app"])
    assert reg.apply_status("node2", 0, True)
    return reg


@attrs.frozen
class Response:
    status: int
    headers: dict
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[-1] if values else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def _parse(raw: bytes) -> Response:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if "chunked" in headers.get("transfer-encoding", [""])[-1]:
        body = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2:]
    else:
        body = rest
    return Response(status, headers, body)


class Client:
    """Sends one raw HTTP/1.1 request per call through a fresh connection."""

    def __init__(self, site: Site) -> None:
        self.site = site

    def request(self, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> Response:
        proto = self.site.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        proto.makeConnection(transport)
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        proto.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        return _parse(transport.value())

    def get(self, path: str, **kw) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, form: dict[str, str], **kw) -> Response:
        from urllib.parse import urlencode

        return self.request("POST", path, urlencode(form).encode(), headers={
            "Content-Type": "application/x-www-form-urlencoded"}, **kw)


def console_client(registry, clock=None, console_kw=None, **config):
    """A L{Client} for a console on C{registry} mounted at L{PATH}, and the console."""
    console = ConsoleResource(registry, ConsoleConfig(**config), RELEASE, nonce=NONCE,
                              clock=clock, **(console_kw or {}))
    root = Resource()
    mount(root, PATH, console)
    return Client(Site(root)), console
