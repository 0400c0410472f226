"""
Demo nodes for C{twistd -n modcluster --demo}: two tiny HTTP backends on
loopback that register themselves with this balancer through the node agent,
exactly as separate processes would, so a newcomer sees requests balanced,
sessions stick and the console populated.
"""

from __future__ import annotations

import html
import secrets
from typing import Optional

from twisted.application.service import MultiService
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from modcluster.node.agent import NodeAgent
from modcluster.node.config import LoadSettings, MetricSettings, NodeConfig

__all__ = ["DemoNodes", "DemoPage"]

CONTEXT = "/demo"


class DemoPage(Resource):
    """Says which node answered; gives each new visitor a session bound to it."""

    isLeaf = True

    def __init__(self, route: str, console: Optional[str] = None) -> None:
        super().__init__()
        self.route = route
        self.hits = 0
        self.console = console

    def render_GET(self, request):
        self.hits += 1
        session = request.getCookie(b"JSESSIONID")
        if session is None:
            session = f"{secrets.token_hex(8)}.{self.route}".encode()
            request.addCookie(b"JSESSIONID", session, path=CONTEXT.encode(), httpOnly=True)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"x-demo-node", self.route.encode())
        route = html.escape(self.route)
        sid = html.escape(session.decode("latin-1"))
        return (
            "<!DOCTYPE html><html><head><title>txmodcluster demo</title></head><body>"
            f"<h1>Served by demo node <code>{route}</code></h1>"
            f"<p>Request {self.hits} on this node. Session <code>{sid}</code>: reload and "
            "you stay on this node (sticky session); open a private window to be "
            "balanced again.</p>"
            + (f'<p><a href="{html.escape(self.console, quote=True)}">manager console</a></p>'
               if self.console else "")
            + "</body></html>"
        ).encode()

    def render_HEAD(self, request):
        """
        The node agent's backend check: the page's headers, but no visit (no
        hit, no session) and no body (twisted.web warns of a HEAD that
        returns one).
        """
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"x-demo-node", self.route.encode())
        return b""


class DemoNodes(MultiService):
    """
    Starts C{count} demo backends on 127.0.0.1 (ephemeral ports) and one node
    agent for each, registering with the balancer's management address.
    """

    log = Logger()

    def __init__(self, reactor, manager: tuple[str, int], count: int = 2,
                 console: Optional[str] = None) -> None:
        super().__init__()
        self._console = console
        self._reactor = reactor
        self._manager = manager
        self._count = count
        self._ports: list[IListeningPort] = []
        self.agents: list[NodeAgent] = []

    def startService(self) -> None:
        host, port = self._manager
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        for i in range(1, self._count + 1):
            route = f"demo{i}"
            listening = self._reactor.listenTCP(0, Site(DemoPage(route, self._console)),
                                                interface="127.0.0.1")
            self._ports.append(listening)
            backend = f"http://127.0.0.1:{listening.getHost().port}"
            config = NodeConfig(
                route=route, backend=backend, contexts=(CONTEXT,), aliases=("localhost",),
                proxies=((host, port),), status_period=5.0,
                load=LoadSettings(metrics=(MetricSettings("cpu"),)))
            agent = NodeAgent(config, self._reactor)
            agent.setServiceParent(self)
            self.agents.append(agent)
            self.log.info("demo node {route} serving {backend}{context}, registering with "
                          "{host}:{port}", route=route, backend=backend, context=CONTEXT,
                          host=host, port=port)
        super().startService()

    @inlineCallbacks
    def stopService(self):
        yield super().stopService()
        yield DeferredList([p.stopListening() for p in self._ports])
        self._ports = []
