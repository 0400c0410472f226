"""
Forwarding-loop detection over real sockets: a balancer built as twistd
builds it, its proxy listening on 127.0.0.1 (port 0: the port it really got is
the one compared), a CONFIG sent over its management listener naming that
address is refused with MEM, and no request can loop through it.
"""

from __future__ import annotations

import re
import socket

import pytest_twisted
from twisted.internet import reactor, threads

from modcluster.config import parse_config
from modcluster.tap import build
from tests.support.tomcat import free_loopback_ports


def _mcmp(port: int, method: bytes, body: bytes) -> bytes:
    """Blocking: one MCMP request, the whole answer (the balancer closes after an error)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"%s / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n"
                  b"Connection: close\r\n\r\n%s" % (method, len(body), body))
        out = b""
        while True:
            data = s.recv(65536)
            if not data:
                return out
            out += data


def _header(answer: bytes, name: bytes) -> bytes:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return b""


async def _refused(mport: int, node_host: bytes, pport: int) -> None:
    answer = await threads.deferToThread(
        _mcmp, mport, b"CONFIG", b"JVMRoute=loop&Host=%s&Port=%d&Type=http" % (node_host, pport))
    assert answer.startswith(b"HTTP/1.1 500 "), answer
    assert _header(answer, b"type") == b"MEM", answer
    assert _header(answer, b"mess") == (
        b'MEM: Can\'t update or insert node with "loop" JVMRoute (127.0.0.1:%d is a '
        b"proxy listener of this balancer: forwarding loop)" % pport), answer


def _balancer(mport: int, proxy_listen: list[str], manager: str = ""):
    """A balancer as twistd builds it: MCMP on 127.0.0.1:C{mport}, the proxy on
    C{proxy_listen}, more C{[manager]} settings in C{manager}."""
    listen = ", ".join(f'"{d}"' for d in proxy_listen)
    return build(parse_config(f"""
[manager]
listen = ["tcp:{mport}:interface=127.0.0.1"]
{manager}
[proxy]
listen = [{listen}]
fast_event_loop = false
drain_timeout = 0
[console]
listen = []
"""), reactor)


@pytest_twisted.ensureDeferred
async def test_config_with_the_address_of_a_proxy_listener_is_refused():
    mport, pport, other = free_loopback_ports(3)
    balancer = _balancer(mport, [f"tcp:{pport}:interface=127.0.0.1",
                                 "tcp:0:interface=127.0.0.1"])
    balancer.startService()
    try:
        for node_host in (b"127.0.0.1", b"localhost", b"[::ffff:127.0.0.1]"):
            await _refused(mport, node_host, pport)
        assert [n.route for n in balancer.registry.table.nodes] == []
        # a node on another port of the same host registers as before
        answer = await threads.deferToThread(
            _mcmp, mport, b"CONFIG", b"JVMRoute=n1&Host=127.0.0.1&Port=%d&Type=http" % other)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert [n.route for n in balancer.registry.table.nodes] == ["n1"]
        # the listener on port 0: compared with the port it got
        bound = balancer.handler.own_addresses.bound()
        [any_port] = [port for host, port in bound if port != pport]
        await _refused(mport, b"127.0.0.1", any_port)
        assert [n.route for n in balancer.registry.table.nodes] == ["n1"]
    finally:
        await balancer.stopService()


def _state_file(path, nodes) -> None:
    """A state file written by hand, as an older balancer (or an operator) left it."""
    import json

    settings = {"route": "", "balancer": "mycluster", "domain": "", "host": "", "port": 0,
                "type": "http", "reversed": False, "flushpackets": "Off", "flushwait_ms": 10,
                "ping": 10.0, "smax": -1, "ttl": 60.0, "timeout": 0.0}
    path.write_text(json.dumps({
        "format": 1,
        "balancers": [{"name": "mycluster", "sticky_session": True,
                       "sticky_cookie": "JSESSIONID", "sticky_path": "jsessionid",
                       "sticky_remove": False, "sticky_force": False, "wait_worker": 0,
                       "max_attempts": 1}],
        "nodes": [{"id": i, "settings": dict(settings, route=route, host=host, port=port),
                   "load": 50, "in_error": False,
                   "vhosts": [{"id": i, "aliases": [["localhost", i]],
                               "contexts": [[i, "/app", "ENABLED"]]}]}
                  for i, (route, host, port) in enumerate(nodes, 1)]}))


@pytest_twisted.ensureDeferred
async def test_a_restored_node_reaching_a_proxy_listener_is_removed(tmp_path):
    mport, pport, other = free_loopback_ports(3)
    state = tmp_path / "state.json"
    _state_file(state, [("loop", "127.0.0.1", pport), ("fine", "127.0.0.1", other)])
    balancer = _balancer(mport, [f"tcp:{pport}:interface=127.0.0.1"],
                         f'persist = true\nstate_file = "{state}"\n')
    balancer.startService()
    try:
        assert not (tmp_path / "state.json.bad").exists()  # the state itself was usable
        assert [n.route for n in balancer.registry.table.nodes] == ["fine"]
        # its next CONFIG is refused as any other
        await _refused(mport, b"127.0.0.1", pport)
        assert [n.route for n in balancer.registry.table.nodes] == ["fine"]
    finally:
        await balancer.stopService()


#: Host forms whose connection does not depend on DNS or on this host's
#: interfaces: what node_endpoint really connects to is the truth the check
#: must agree with (a false "loop" refuses a node; a missed one loops).
_FORMS = [
    "127.0.0.1", "127.1", "2130706433", "0x7f.1", "0177.0.0.1", "127.000.000.001",
    "0x7f000001", "127.0.1", "[127.0.0.1]", "127\u30020\u30020\u30021",
    "::ffff:127.0.0.1", "[::ffff:127.0.0.1]", "0", "0.0.0.0", "[::ffff:0.0.0.0]",
    "localhost", "LOCALHOST",
    "127.0.0.2", "127.0.0.1%lo", "127.0.0.1 ", " 127.0.0.1", "localhost localhost",
    "\uff11\uff12\uff17.\uff10.\uff10.\uff11", "127.0.0.\uff11", "1.2.3.4.5", "a" * 300,
    "::1%no-such-interface", "[::127.0.0.1]",
]
_FORMS_V6 = ["::1", "[::1]", "[0:0:0:0:0:0:0:1]", "::", "[::]", "[::\uff11]"]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest_twisted.ensureDeferred
async def test_the_check_agrees_with_what_the_node_connection_reaches():
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Factory, Protocol

    from modcluster.loops import ProxyAddresses
    from modcluster.proxy.pool import node_endpoint

    accepted: list = []

    class Count(Protocol):
        def connectionMade(self):
            accepted.append(self.transport.getHost())

    ports = [reactor.listenTCP(0, Factory.forProtocol(Count), interface="127.0.0.1")]
    port = ports[0].getHost().port
    forms = list(_FORMS)
    if _has_ipv6_loopback():
        try:
            ports.append(reactor.listenTCP(port, Factory.forProtocol(Count), interface="::1"))
            forms += _FORMS_V6
        except Exception:  # the port is taken on ::1: the IPv4 forms only
            pass
    own = ProxyAddresses()
    own.add_source(lambda: [(p.getHost().host, port) for p in ports])
    try:
        disagree = []
        for host in forms:
            del accepted[:]
            try:
                conn = await node_endpoint(reactor, host, port, 5).connect(
                    Factory.forProtocol(Protocol))
            except Exception:
                connected = False
            else:
                conn.transport.loseConnection()
                connected = True
            while connected and not accepted:  # the accept follows the connect
                wait: Deferred = Deferred()
                reactor.callLater(0.01, wait.callback, None)
                await wait
            if connected != (own.reached_by(host, port) is not None):
                disagree.append((host, connected, own.reached_by(host, port)))
        assert disagree == []
    finally:
        for p in ports:
            await p.stopListening()


class _Names:
    """
    A name resolver for the reactor (IHostnameResolver) that answers C{names}
    itself and hands every other name to C{fallback}: a node's host name that
    resolves to this host without /etc/hosts.
    """

    def __init__(self, names: dict, fallback) -> None:
        self.names = names
        self.fallback = fallback

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None,
                        transportSemantics="TCP"):
        from twisted.internet.address import IPv4Address

        if hostName not in self.names:
            return self.fallback.resolveHostName(receiver, hostName, portNumber,
                                                 addressTypes, transportSemantics)
        receiver.resolutionBegan(None)
        receiver.addressResolved(IPv4Address("TCP", self.names[hostName], portNumber))
        receiver.resolutionComplete()
        return receiver


def _get(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                  % path.encode())
        out = b""
        while True:
            data = s.recv(65536)
            if not data:
                return out
            out += data


@pytest_twisted.ensureDeferred
async def test_a_node_named_by_a_name_of_this_host_is_caught_by_the_data_plane():
    """
    A node whose Host is a name (not resolved at CONFIG) that resolves to the
    proxy listener's address: the first node connection to it finds the loop
    before sending anything (modcluster.loops.LoopGuard), the request fails
    over to the other node, the looping node is removed with a warning and
    its next CONFIG is refused (MEM) until a reload.
    """
    from twisted.logger import globalLogPublisher

    from tests.integration.test_proxy_http import NodeServer

    mport, pport = free_loopback_ports(2)
    names = _Names({"balancer.loop.test": "127.0.0.1"}, reactor.nameResolver)
    old_resolver = reactor.resolver
    previous = reactor.installNameResolver(names)
    node = NodeServer("nA")
    node.port = reactor.listenTCP(0, node, interface="127.0.0.1")
    balancer = _balancer(mport, [f"tcp:{pport}:interface=127.0.0.1"])
    events: list = []
    globalLogPublisher.addObserver(events.append)
    balancer.startService()
    try:
        for body in (b"JVMRoute=loop&Host=balancer.loop.test&Port=%d&Type=http" % pport,
                     b"JVMRoute=loop&Alias=localhost&Context=/app",
                     b"JVMRoute=loop&Load=100",
                     b"JVMRoute=nA&Host=127.0.0.1&Port=%d&Type=http" % node.port.getHost().port,
                     b"JVMRoute=nA&Alias=localhost&Context=/app",
                     b"JVMRoute=nA&Load=1"):
            method = (b"CONFIG" if b"Type=" in body else b"ENABLE-APP" if b"Context" in body
                      else b"STATUS")
            answer = await threads.deferToThread(_mcmp, mport, method, body)
            assert answer.startswith(b"HTTP/1.1 200 "), (body, answer)
        assert {n.route for n in balancer.registry.table.nodes} == {"loop", "nA"}
        for i in range(6):
            out = await threads.deferToThread(_get, pport, f"/app/x?i={i}")
            assert out.startswith(b"HTTP/1.1 200 "), out
            assert b"\r\n\r\nnA\nGET /app/x?i=%d\n" % i in out
            # once through the proxy: a looped request would carry two addresses
            assert b"\nX-Forwarded-For: 127.0.0.1\n" in out and out.count(b"Forwarded-For") == 1
        assert [n.route for n in balancer.registry.table.nodes] == ["nA"]
        assert any("forwarding loop" in str(e.get("log_format", "")) and e.get("route") == "loop"
                   and e.get("peer") == f"127.0.0.1:{pport}" for e in events)
        answer = await threads.deferToThread(
            _mcmp, mport, b"CONFIG", b"JVMRoute=loop&Host=balancer.loop.test&Port=%d&Type=http"
            % pport)
        assert answer.startswith(b"HTTP/1.1 500 ") and _header(answer, b"type") == b"MEM", answer
    finally:
        globalLogPublisher.removeObserver(events.append)
        await balancer.stopService()
        await node.port.stopListening()
        reactor.installNameResolver(previous)
        reactor.resolver = old_resolver


def _own_loopback_name():
    """This host's name when it resolves to a loopback address only (else None)."""
    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return None, None
    addresses = {info[4][0] for info in infos}
    if len(addresses) != 1 or not next(iter(addresses)).startswith("127."):
        return None, None
    return name, addresses.pop()


@pytest_twisted.ensureDeferred
async def test_worker_processes_catch_a_node_named_by_this_hosts_name():
    """
    The same with proxy.workers = 2: the worker's node connection to the
    node named by this host's name (resolved by the system, /etc/hosts) finds
    its shared listening socket, tells the control process, which removes the
    node; requests fail over.  Skipped where the host name does not resolve
    to a loopback address only.
    """
    import pytest

    from tests.integration.test_worker_processes import Cluster, until

    name, address = _own_loopback_name()
    if name is None:
        pytest.skip("the host name does not resolve to one loopback address")
    c = Cluster(listen=f"tcp:{{port}}:interface={address}")
    await c.start()
    try:
        await c.node("nA")
        for body in (b"JVMRoute=loop&Host=%s&Port=%d&Type=http" % (name.encode(), c.pport),
                     b"JVMRoute=loop&Alias=localhost&Context=/app",
                     b"JVMRoute=loop&Load=100"):
            method = (b"CONFIG" if b"Type=" in body else b"ENABLE-APP" if b"Context" in body
                      else b"STATUS")
            await c.mcmp(method.decode(), body.decode())
        await until(c.pool.in_sync, what="workers in sync")
        for i in range(10):
            out = await threads.deferToThread(_get_at, address, c.pport, f"/app/x?i={i}")
            assert out.startswith(b"HTTP/1.1 200 "), out
            assert b"\r\n\r\nnA\n" in out
            # once through the proxy: a looped request would carry two addresses
            assert re.search(rb"\nX-Forwarded-For: [^,\n]+\n", out), out
        await until(lambda: [n.route for n in c.registry.table.nodes] == ["nA"],
                    what="the looping node removed")
    finally:
        await c.stop()


def _get_at(address: str, port: int, path: str) -> bytes:
    with socket.create_connection((address, port), timeout=10) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                  % path.encode())
        out = b""
        while True:
            data = s.recv(65536)
            if not data:
                return out
            out += data


def _balancer_with_console(mport: int, cport: int, pport: int):
    return build(parse_config(f"""
[manager]
listen = ["tcp:{mport}:interface=127.0.0.1"]
[proxy]
listen = ["tcp:{pport}:interface=127.0.0.1"]
fast_event_loop = false
drain_timeout = 0
[console]
listen = ["tcp:{cport}:interface=127.0.0.1"]
"""), reactor)


@pytest_twisted.ensureDeferred
async def test_config_with_the_address_of_the_management_or_console_listener_is_refused():
    """
    A node at the MCMP or console listener's address (a port mix-up) would
    let every proxy client send MCMP commands or console actions through the
    proxy, from 127.0.0.1, which those listeners admit by default: refused
    with MEM like a forwarding loop, naming the listener.
    """
    mport, cport, pport = free_loopback_ports(3)
    balancer = _balancer_with_console(mport, cport, pport)
    balancer.startService()
    try:
        for port, kind in ((mport, b"management"), (cport, b"console")):
            for node_host in (b"127.0.0.1", b"localhost"):
                answer = await threads.deferToThread(
                    _mcmp, mport, b"CONFIG",
                    b"JVMRoute=own&Host=%s&Port=%d&Type=http" % (node_host, port))
                assert answer.startswith(b"HTTP/1.1 500 "), answer
                assert _header(answer, b"type") == b"MEM", answer
                assert _header(answer, b"mess") == (
                    b'MEM: Can\'t update or insert node with "own" JVMRoute (127.0.0.1:%d is '
                    b"a %s listener of this balancer, not a node)" % (port, kind)), answer
        assert [n.route for n in balancer.registry.table.nodes] == []
        # the proxy listener's refusal is unchanged
        await _refused(mport, b"127.0.0.1", pport)
    finally:
        await balancer.stopService()


@pytest_twisted.ensureDeferred
async def test_a_restored_node_at_the_management_listener_is_removed(tmp_path):
    mport, pport = free_loopback_ports(2)
    state = tmp_path / "state.json"
    _state_file(state, [("own", "127.0.0.1", mport), ("ok", "127.0.0.1", 1)])
    balancer = _balancer(mport, [f"tcp:{pport}:interface=127.0.0.1"],
                         manager=f'persist = true\nstate_file = "{state}"')
    balancer.startService()
    try:
        assert [n.route for n in balancer.registry.table.nodes] == ["ok"]
    finally:
        await balancer.stopService()


@pytest_twisted.ensureDeferred
async def test_a_node_named_by_a_name_of_this_host_at_the_management_or_console_listener():
    """
    A node whose Host is a name that resolves to this host and whose Port is
    the MCMP or console listener's: not resolved at CONFIG, so the data plane
    checks the address it connected to against those listeners too (as
    against the proxy's), sends nothing, the request fails over and the node
    is removed, its next CONFIG refused.  Without that, every proxy client
    reached the management listener through it, from 127.0.0.1.
    """
    from twisted.logger import globalLogPublisher

    from tests.integration.test_proxy_http import NodeServer

    mport, cport, pport = free_loopback_ports(3)
    names = _Names({"balancer.own.test": "127.0.0.1"}, reactor.nameResolver)
    old_resolver = reactor.resolver
    previous = reactor.installNameResolver(names)
    node = NodeServer("nA")
    node.port = reactor.listenTCP(0, node, interface="127.0.0.1")
    balancer = _balancer_with_console(mport, cport, pport)
    events: list = []
    globalLogPublisher.addObserver(events.append)
    balancer.startService()
    try:
        answer = await threads.deferToThread(
            _mcmp, mport, b"CONFIG",
            b"JVMRoute=nA&Host=127.0.0.1&Port=%d&Type=http" % node.port.getHost().port)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        for body in (b"JVMRoute=nA&Alias=localhost&Context=/app", b"JVMRoute=nA&Load=1"):
            method = b"ENABLE-APP" if b"Context" in body else b"STATUS"
            answer = await threads.deferToThread(_mcmp, mport, method, body)
            assert answer.startswith(b"HTTP/1.1 200 "), (body, answer)
        for port, kind in ((mport, "management"), (cport, "console")):
            for body in (b"JVMRoute=own&Host=balancer.own.test&Port=%d&Type=http" % port,
                         b"JVMRoute=own&Alias=localhost&Context=/app",
                         b"JVMRoute=own&Load=100"):
                method = (b"CONFIG" if b"Type=" in body else b"ENABLE-APP" if b"Context" in body
                          else b"STATUS")
                answer = await threads.deferToThread(_mcmp, mport, method, body)
                assert answer.startswith(b"HTTP/1.1 200 "), (body, answer)
            assert {n.route for n in balancer.registry.table.nodes} == {"own", "nA"}
            for i in range(6):
                out = await threads.deferToThread(_get, pport, f"/app/x?i={i}")
                assert out.startswith(b"HTTP/1.1 200 "), out
                assert b"\r\n\r\nnA\nGET /app/x?i=%d\n" % i in out, out
            assert [n.route for n in balancer.registry.table.nodes] == ["nA"]
            assert any(e.get("route") == "own" and e.get("kind") == kind
                       and e.get("peer") == f"127.0.0.1:{port}" for e in events), kind
            answer = await threads.deferToThread(
                _mcmp, mport, b"CONFIG",
                b"JVMRoute=own&Host=balancer.own.test&Port=%d&Type=http" % port)
            assert answer.startswith(b"HTTP/1.1 500 ") and _header(answer, b"type") == b"MEM"
            assert _header(answer, b"mess").endswith(
                b"(127.0.0.1:%d is a %s listener of this balancer, not a node)"
                % (port, kind.encode())), answer
    finally:
        globalLogPublisher.removeObserver(events.append)
        await balancer.stopService()
        await node.port.stopListening()
        reactor.installNameResolver(previous)
        reactor.resolver = old_resolver


@pytest_twisted.ensureDeferred
async def test_worker_processes_catch_a_node_named_by_this_hosts_name_at_the_console():
    """
    With proxy.workers = 2: a node named by this host's name whose Port is
    the console's or the MCMP listener's (both in the control process, which
    tells the workers their addresses): the worker's node connection finds
    it, the node is removed, requests fail over.  Skipped where the host name
    does not resolve to 127.0.0.1 only (the listeners' address).
    """
    import pytest

    from tests.integration.test_worker_processes import Cluster, until

    name, address = _own_loopback_name()
    if name is None or address != "127.0.0.1":
        pytest.skip("the host name does not resolve to 127.0.0.1 only")
    c = Cluster()
    await c.start()
    try:
        await c.node("nA")
        for port in (c.cport, c.mport):
            for body in (b"JVMRoute=own&Host=%s&Port=%d&Type=http" % (name.encode(), port),
                         b"JVMRoute=own&Alias=localhost&Context=/app",
                         b"JVMRoute=own&Load=100"):
                method = (b"CONFIG" if b"Type=" in body else b"ENABLE-APP" if b"Context" in body
                          else b"STATUS")
                await c.mcmp(method.decode(), body.decode())
            await until(c.pool.in_sync, what="workers in sync")
            assert {n.route for n in c.registry.table.nodes} == {"own", "nA"}
            for i in range(10):
                out = await threads.deferToThread(_get_at, address, c.pport, f"/app/x?i={i}")
                assert out.startswith(b"HTTP/1.1 200 "), out
                assert b"\r\n\r\nnA\n" in out, out
            await until(lambda: [n.route for n in c.registry.table.nodes] == ["nA"],
                        what="the node at the balancer's own listener removed")
            c.service.handler.forget_named_loops()  # (as a reload: the next port)
    finally:
        await c.stop()
