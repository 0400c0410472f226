"""
The node agent over real loopback sockets: against a recording fake MCMP
proxy (a twisted.web Site answering like the trace's fake proxy), against
txmodcluster's own MCMP resource when present, with real backend probes, a
real load command, advertise discovery by multicast on 127.0.0.1 (TTL 0), and
the twistd plugin run as a process stopped by SIGTERM.  Every wait is bounded.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import deferLater
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web import resource, server

from modcluster.advertise.codec import ManagerInfo, format_datagram, format_http_date
from modcluster.node.agent import NodeAgent, ProxyState
from modcluster.node.config import node_config_from_dict
from modcluster.node.load import CommandMetric
from modcluster.node.probe import CPONG, AJPPing, HTTPProbe
from modcluster.node.wire import encode_request, info_request

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0


def reactor_() -> Any:
    from twisted.internet import reactor

    return reactor


async def wait_until(check: Callable[[], bool], timeout: float = TIMEOUT,
                     what: str = "condition") -> None:
    reactor = reactor_()
    deadline = reactor.seconds() + timeout
    while not check():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.02)


# --- a recording fake proxy ----------------------------------------------------


class _Spy(ProtocolWrapper):
    def dataReceived(self, data: bytes) -> None:
        self.factory.raw.append((id(self), data))
        super().dataReceived(data)


class RecordingProxy(resource.Resource):
    """
    Records every MCMP request and answers like the trace's fake proxy:
    200 OK text/plain; STATUS -> STATUS-RSP, STOP-APP -> the next scripted
    Requests count (1.3.x format), everything else empty.
    """

    isLeaf = True

    def __init__(self, stop_counts: Optional[list[int]] = None) -> None:
        super().__init__()
        self.requests: list[dict] = []
        self.stop_counts = list(stop_counts or [])

    def render(self, request: server.Request) -> bytes:
        body = request.content.read()
        self.requests.append({
            "method": request.method.decode(),
            "uri": request.uri.decode(),
            "headers": {k.decode().lower(): [v.decode() for v in vs]
                        for k, vs in request.requestHeaders.getAllRawHeaders()},
            "body": body.decode(),
            "channel": id(request.channel),
        })
        request.setHeader(b"content-type", b"text/plain")
        method = request.method
        if method == b"STATUS":
            return b"Type=STATUS-RSP&JVMRoute=node1&State=OK&id=1"
        if method == b"STOP-APP":
            n = self.stop_counts.pop(0) if self.stop_counts else 0
            return f"Type=STOP-APP-RSP&JvmRoute=node1&Alias=localhost&Context=/&Requests={n}\n".encode()
        return b""

    @property
    def methods(self) -> list[str]:
        return [r["method"] for r in self.requests]


async def listen_proxy(recorder: resource.Resource) -> tuple[Any, int, WrappingFactory]:
    site = server.Site(recorder)
    wrapper = WrappingFactory(site)
    wrapper.protocol = _Spy
    wrapper.raw = []
    port = await TCP4ServerEndpoint(reactor_(), 0, interface="127.0.0.1").listen(wrapper)
    return port, port.getHost().port, wrapper


class Hello(resource.Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        return b"hello"


async def listen_backend() -> tuple[Any, int]:
    port = await TCP4ServerEndpoint(reactor_(), 0, interface="127.0.0.1").listen(
        server.Site(Hello())
    )
    return port, port.getHost().port


def agent_for(proxy_port: int, backend_port: int, **settings: Any) -> NodeAgent:
    data = {
        "route": "node1",
        "backend": f"http://127.0.0.1:{backend_port}",
        "contexts": ["/", "/app1"],
        "proxies": [f"127.0.0.1:{proxy_port}"],
        "status_period": 0.2,
        "drain_poll_interval": 0.05,
        "socket_timeout": 5,
        **settings,
    }
    return NodeAgent(node_config_from_dict(data), reactor_(), metrics=[])


@pytest_twisted.ensureDeferred
async def test_register_report_and_drain_against_fake_proxy() -> None:
    """
    INFO, CONFIG, ENABLE-APP x2, STATUS... on one kept-alive connection with
    the Java header set; stopping drains while STOP-APP reports 2, 1, 0
    requests, then removes the contexts and the node.
    """
    recorder = RecordingProxy(stop_counts=[2, 2, 1, 1, 0, 0])
    port, proxy_port, wrapper = await listen_proxy(recorder)
    backend, backend_port = await listen_backend()
    agent = agent_for(proxy_port, backend_port)
    try:
        agent.startService()
        await wait_until(lambda: recorder.methods.count("STATUS") >= 2, what="two STATUS")
        assert recorder.methods[:5] == ["INFO", "CONFIG", "ENABLE-APP", "ENABLE-APP", "STATUS"]
        assert len({r["channel"] for r in recorder.requests}) == 1
        for r in recorder.requests:
            headers = r["headers"]
            assert headers["user-agent"] == ["ClusterListener/1.0"]
            assert headers["connection"] == ["Keep-Alive"]
            assert headers["host"] == [f"127.0.0.1:{proxy_port}"]
            assert "content-type" not in headers
            assert ("content-length" in headers) == bool(r["body"])
        assert recorder.requests[1]["body"] == (
            f"JVMRoute=node1&Host=127.0.0.1&Port={backend_port}&StickySessionForce=No&Type=http"
        )
        assert recorder.requests[4]["body"] == "JVMRoute=node1&Load=100"
        # The raw bytes on the wire start with exactly the Java INFO request.
        raw = b"".join(data for _, data in wrapper.raw)
        assert raw.startswith(encode_request(info_request(), "127.0.0.1", proxy_port))

        start = len(recorder.requests)
        before = reactor_().seconds()
        await agent.stopService()
        assert reactor_().seconds() - before < 5
        tail = [m for m in recorder.methods[start:] if m != "STATUS"]
        assert tail == ["DISABLE-APP", "DISABLE-APP"] + ["STOP-APP"] * 6 + ["REMOVE-APP"] * 3
        assert recorder.requests[-1]["uri"] == "/*"
        assert recorder.requests[-1]["body"] == "JVMRoute=node1"
    finally:
        await port.stopListening()
        await backend.stopListening()


@pytest_twisted.ensureDeferred
async def test_backend_down_reports_minus_one_and_proxy_restart() -> None:
    """
    An unreachable backend gives Load=-1; a proxy that goes away and comes
    back on the same port is re-registered by INFO + CONFIG.
    """
    recorder = RecordingProxy()
    port, proxy_port, wrapper = await listen_proxy(recorder)
    backend, backend_port = await listen_backend()
    await backend.stopListening()
    agent = agent_for(proxy_port, backend_port, probe={"timeout": 1})
    try:
        agent.startService()
        await wait_until(lambda: "STATUS" in recorder.methods, what="STATUS")
        status = next(r for r in recorder.requests if r["method"] == "STATUS")
        assert status["body"] == "JVMRoute=node1&Load=-1"

        await port.stopListening()
        for spy in list(wrapper.protocols):
            spy.transport.loseConnection()
        await wait_until(lambda: agent.proxies()[0].state is ProxyState.ERROR,
                         what="proxy in ERROR")
        recorder2 = RecordingProxy()
        port, _, _ = await listen_proxy_on(recorder2, proxy_port)
        await wait_until(lambda: "STATUS" in recorder2.methods, what="re-registration")
        assert recorder2.methods[:2] == ["INFO", "CONFIG"]
    finally:
        await agent.stopService()
        await stop(port)


async def stop(port: Any) -> None:
    d = port.stopListening()
    if d is not None:
        await d


async def listen_proxy_on(recorder: resource.Resource, number: int):
    site = server.Site(recorder)
    listening = await TCP4ServerEndpoint(reactor_(), number, interface="127.0.0.1").listen(site)
    return listening, number, site


# --- probes and metrics ------------------------------------------------------------


class _CPongServer(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(CPONG)


@pytest_twisted.ensureDeferred
async def test_real_probes_and_command_metric() -> None:
    """HTTP probe and AJP CPING over loopback; a load command run for real."""
    reactor = reactor_()
    backend, backend_port = await listen_backend()
    ajp = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(_CPongServer)
    )
    try:
        result = await HTTPProbe(reactor, f"http://127.0.0.1:{backend_port}/").probe()
        assert result.reachable and 0 <= result.latency < 5
        result = await AJPPing(reactor, "127.0.0.1", ajp.getHost().port, 2).probe()
        assert result.reachable
    finally:
        await backend.stopListening()
        await ajp.stopListening()
    result = await HTTPProbe(reactor, f"http://127.0.0.1:{backend_port}/", timeout=2).probe()
    assert not result.reachable
    assert await CommandMetric(reactor, "echo 0.25 busy").measure() == 0.25
    with pytest.raises(ValueError):
        await CommandMetric(reactor, "echo oops; exit 3").measure()


# --- advertise -------------------------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest_twisted.ensureDeferred
async def test_advertise_discovery_over_loopback_multicast() -> None:
    """
    Datagrams sent to the group from 127.0.0.1 with TTL 0: the one signed with
    a wrong key names a decoy proxy that is never contacted; the right one
    names the fake proxy, which gets INFO, CONFIG, ENABLE-APP and STATUS.
    """
    reactor = reactor_()
    recorder, decoy = RecordingProxy(), RecordingProxy()
    port, proxy_port, _ = await listen_proxy(recorder)
    decoy_port, decoy_number, _ = await listen_proxy(decoy)
    backend, backend_port = await listen_backend()
    group_port = free_udp_port()
    config = node_config_from_dict({
        "route": "node1",
        "backend": f"http://127.0.0.1:{backend_port}",
        "status_period": 0.2,
        "advertise": {"group": f"224.0.1.105:{group_port}", "interface": "127.0.0.1",
                      "key": "secret"},
    })
    agent = NodeAgent(config, reactor, metrics=[])
    sender = reactor.listenMulticast(0, protocol.DatagramProtocol())
    try:
        sender.setTTL(0)
        await sender.setOutgoingInterface("127.0.0.1")
        agent.startService()
        wrong = format_datagram(
            date=format_http_date(reactor.seconds()), sequence=1, server="decoy", key="other",
            manager=ManagerInfo(address=f"127.0.0.1:{decoy_number}", url="/decoy"))
        right = format_datagram(
            date=format_http_date(reactor.seconds()), sequence=1, server="real", key="secret",
            manager=ManagerInfo(address=f"127.0.0.1:{proxy_port}", url="/real"))
        deadline = reactor.seconds() + TIMEOUT
        while "STATUS" not in recorder.methods:
            assert reactor.seconds() < deadline, "advertised proxy never contacted"
            sender.write(wrong, ("224.0.1.105", group_port))
            sender.write(right, ("224.0.1.105", group_port))
            await deferLater(reactor, 0.1)
        assert recorder.methods[:3] == ["INFO", "CONFIG", "ENABLE-APP"]
        assert decoy.requests == []
        assert [(p.host, p.port) for p in agent.proxies()] == [("127.0.0.1", proxy_port)]
    finally:
        await agent.stopService()
        await sender.stopListening()
        await port.stopListening()
        await decoy_port.stopListening()
        await backend.stopListening()


# --- the twistd plugin -----------------------------------------------------------------


class _Collect(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value)


@pytest_twisted.ensureDeferred
async def test_twistd_plugin_registers_and_drains_on_sigterm(tmp_path: Path) -> None:
    """twistd -n modcluster-node registers, and drains + removes on SIGTERM."""
    reactor = reactor_()
    recorder = RecordingProxy()
    port, proxy_port, _ = await listen_proxy(recorder)
    backend, backend_port = await listen_backend()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    twistd = str(Path(sys.executable).with_name("twistd"))
    argv = [twistd, "-n", "--pidfile=", "--logfile=-", "modcluster-node",
            "--proxy", f"127.0.0.1:{proxy_port}", "--route", "plug1",
            "--backend", f"http://127.0.0.1:{backend_port}", "--context", "/shop",
            "--alias", "shop.example", "--status-period", "0.3"]
    process = _Collect()
    transport = reactor.spawnProcess(process, twistd, argv, env=env, path=str(tmp_path))
    try:
        await wait_until(lambda: "STATUS" in recorder.methods, timeout=20,
                         what=f"plugin registration; output: {process.output[-2000:]!r}")
        assert recorder.methods[:3] == ["INFO", "CONFIG", "ENABLE-APP"]
        assert recorder.requests[2]["body"] == (
            "JVMRoute=plug1&Alias=shop.example&Context=%2Fshop"
        )
        transport.signalProcess("TERM")
        ended = process.ended
        ended.addTimeout(20, reactor)
        await ended
        tail = [m for m in recorder.methods if m != "STATUS"][-4:]
        assert tail == ["DISABLE-APP", "STOP-APP", "REMOVE-APP", "REMOVE-APP"]
        assert recorder.requests[-1]["uri"] == "/*"
    finally:
        if process.ended.called is False:
            try:
                transport.signalProcess("KILL")
            except Exception:
                pass
        await port.stopListening()
        await backend.stopListening()


# --- against txmodcluster's own MCMP listener ---------------------------------------


class _AlwaysUp:
    """An INodeProber that finds every node up (the backend here is fake)."""

    def probe(self, node: Any) -> defer.Deferred:
        return defer.succeed(True)


class Balancer:
    """
    Our MCMP listener on loopback, recording each message; L{restart} swaps in
    an empty registry behind the same listener (a balancer that lost its state).
    """

    def __init__(self) -> None:
        from modcluster.mcmp.resource import ManagementRoot, ManagementSite, MCMPResource

        self.calls: list[tuple[str, bytes]] = []
        self.restart()
        outer = self

        class Recording:
            def handle(self, method: str, uri: bytes, body: bytes, *args: Any, **kw: Any):
                outer.calls.append((method, body))
                return outer.handler.handle(method, uri, body, *args, **kw)

        self.site = ManagementSite(ManagementRoot(MCMPResource(Recording())))

    def restart(self) -> None:
        from modcluster.cluster.registry import Registry
        from modcluster.mcmp.handler import MCMPHandler

        self.registry = Registry(reactor_())
        self.handler = MCMPHandler(self.registry, _AlwaysUp(), reactor_())

    def methods(self, start: int = 0) -> list[str]:
        return [m for m, _ in self.calls[start:]]


@pytest_twisted.ensureDeferred
async def test_against_txmodcluster_balancer() -> None:
    """
    The agent registers with our own MCMP listener (node, aliases, contexts
    ENABLED, load applied), recovers from the balancer forgetting it (MEM on
    STATUS -> INFO + CONFIG + ENABLE-APP), and drains two in-flight requests
    before it removes itself.
    """
    pytest.importorskip("modcluster.mcmp.resource")
    reactor = reactor_()
    balancer = Balancer()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(balancer.site)
    backend, backend_port = await listen_backend()
    agent = NodeAgent(
        node_config_from_dict({
            "route": "node1",
            "backend": f"http://127.0.0.1:{backend_port}",
            "contexts": ["/", "/app1"],
            "aliases": ["localhost", "www.example"],
            "proxies": [f"127.0.0.1:{port.getHost().port}"],
            "status_period": 0.2,
            "drain_poll_interval": 0.05,
            "drain_timeout": 5,
        }),
        reactor,
        metrics=[],
    )

    def registered() -> bool:
        node = balancer.registry.node("node1")
        return node is not None and node.rt.lbfactor == 100

    try:
        agent.startService()
        await wait_until(registered, what="registration with load 100")
        registry = balancer.registry
        node = registry.node("node1")
        assert (node.settings.type, node.settings.port) == ("http", backend_port)
        for alias in ("localhost", "www.example"):
            for path in ("/", "/app1"):
                ctx = registry.find_context("node1", alias, path)
                assert ctx is not None and ctx.state.name == "ENABLED", (alias, path)
        assert agent.proxies()[0].state is ProxyState.OK
        assert balancer.methods()[:5] == ["INFO", "CONFIG", "ENABLE-APP", "ENABLE-APP",
                                          "STATUS"]

        # The balancer loses its state: STATUS gets MEM, the agent resyncs.
        mark = len(balancer.calls)
        balancer.restart()
        await wait_until(registered, what="re-registration after MEM")
        assert balancer.methods(mark)[:6] == [
            "STATUS", "INFO", "CONFIG", "ENABLE-APP", "ENABLE-APP", "STATUS",
        ]
        registry = balancer.registry
        calls = balancer.calls

        # Two requests in flight on /app1: the drain waits for them.
        ctx = registry.find_context("node1", "localhost", "/app1")
        ctx.rt.in_flight = 2
        reactor.callLater(0.3, setattr, ctx.rt, "in_flight", 1)
        reactor.callLater(0.6, setattr, ctx.rt, "in_flight", 0)
        mark = len(calls)
        started = reactor.seconds()
        drained = await agent.drain()
        assert drained is True
        assert reactor.seconds() - started >= 0.6
        methods = [m for m, _ in calls[mark:] if m != "STATUS"]
        assert methods[:2] == ["DISABLE-APP", "DISABLE-APP"]
        assert methods.count("STOP-APP") >= 6
        assert methods[-3:] == ["REMOVE-APP"] * 3
        assert registry.node("node1") is None or registry.node("node1").rt.removed
    finally:
        await agent.stopService()
        await stop(port)
        await stop(backend)


# --- MCMP over mutual TLS ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_mcmp_over_mutual_tls(tmp_path: Path) -> None:
    """
    With --proxy-ca/--proxy-cert/--proxy-key the agent speaks MCMP over TLS,
    verifies the proxy certificate (IP SAN 127.0.0.1) and presents its own.
    """
    trustme = pytest.importorskip("trustme")
    from twisted.internet import ssl
    from twisted.internet.endpoints import SSL4ServerEndpoint

    from modcluster.node.tap import Options

    reactor = reactor_()
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("node1.example")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "node.pem"))
    client_cert.private_key_pem.write_to_path(str(tmp_path / "node.key"))
    authority = ssl.Certificate.loadPEM(ca.cert_pem.bytes())
    server_options = ssl.PrivateCertificate.loadPEM(
        server_cert.private_key_and_cert_chain_pem.bytes()
    ).options(authority)

    from cryptography import x509

    peers: list[list[str]] = []

    class Recorder(RecordingProxy):
        def render(self, request: server.Request) -> bytes:
            cert = request.channel.transport.getPeerCertificate()
            names: list[str] = []
            if cert is not None:
                san = cert.to_cryptography().extensions.get_extension_for_class(
                    x509.SubjectAlternativeName
                )
                names = san.value.get_values_for_type(x509.DNSName)
            peers.append(names)
            return super().render(request)

    recorder = Recorder()
    port = await SSL4ServerEndpoint(reactor, 0, server_options, interface="127.0.0.1").listen(
        server.Site(recorder)
    )
    backend, backend_port = await listen_backend()
    opts = Options()
    opts.parseOptions([
        "--proxy", f"127.0.0.1:{port.getHost().port}", "--route", "node1",
        "--backend", f"http://127.0.0.1:{backend_port}", "--status-period", "0.2",
        "--proxy-ca", str(tmp_path / "ca.pem"), "--proxy-cert", str(tmp_path / "node.pem"),
        "--proxy-key", str(tmp_path / "node.key"),
    ])
    agent = NodeAgent(opts["node_config"], reactor, metrics=[])
    try:
        agent.startService()
        await wait_until(lambda: "STATUS" in recorder.methods, what="STATUS over TLS")
        assert recorder.methods[:3] == ["INFO", "CONFIG", "ENABLE-APP"]
        assert peers and all(names == ["node1.example"] for names in peers)
        assert len({r["channel"] for r in recorder.requests}) == 1
    finally:
        await agent.stopService()
        await stop(port)
        await stop(backend)
