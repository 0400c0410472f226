"""
Listener access control as deployed (tap.build on the real reactor, loopback
sockets): the console on its own listener only, allow lists (403), the Host
check against DNS rebinding (421).
"""

from __future__ import annotations

import http.client

import pytest_twisted
from twisted.internet import reactor, threads

from modcluster.config import parse_config
from modcluster.tap import build
from tests.support.tomcat import free_loopback_ports


def _request(port, method, path, host="localhost", body=b""):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True)
        conn.putheader("Host", host)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


async def _call(*args, **kw):
    return await threads.deferToThread(_request, *args, **kw)


@pytest_twisted.ensureDeferred
async def test_console_on_its_own_listener_with_host_check():
    mport, pport, cport = free_loopback_ports(3)
    service = build(parse_config(f"""
[manager]
listen = ["tcp:{mport}:interface=127.0.0.1"]
[console]
listen = ["tcp:{cport}:interface=127.0.0.1"]
hosts = ["balancer.example.com"]
[proxy]
listen = ["tcp:{pport}:interface=127.0.0.1"]
"""), reactor)
    service.startService()
    try:
        for path in ("/mod_cluster-manager", "/api/v1/", "/metrics"):
            assert (await _call(cport, "GET", path))[0] == 200, path
            assert (await _call(mport, "GET", path))[0] == 404, path   # not on MCMP
        assert (await _call(cport, "GET", "/metrics", host=f"127.0.0.1:{cport}"))[0] == 200
        assert (await _call(cport, "GET", "/metrics", host="balancer.example.com"))[0] == 200
        status, body = await _call(cport, "GET", "/api/v1/", host="rebind.attacker.example")
        assert status == 421 and b"Host" in body
        # MCMP stays on its port, whatever Host a node sends
        status, body = await _call(mport, "VERSION", "/", host="proxy.nodes.example")
        assert status == 200 and body.startswith(b"release: ")
        assert (await _call(cport, "VERSION", "/"))[0] == 501
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_allow_lists_refuse_other_addresses():
    """Loopback clients are outside these allow lists: 403 on both listeners."""
    mport, pport, cport = free_loopback_ports(3)
    service = build(parse_config(f"""
[manager]
listen = ["tcp:{mport}:interface=127.0.0.1"]
allow = ["10.0.0.0/8"]
[console]
listen = ["tcp:{cport}:interface=127.0.0.1"]
allow = ["::1", "192.0.2.0/24"]
[proxy]
listen = ["tcp:{pport}:interface=127.0.0.1"]
"""), reactor)
    service.startService()
    try:
        assert (await _call(mport, "CONFIG", "/",
                            body=b"JVMRoute=n1&Host=127.0.0.1&Port=8009"))[0] == 403
        assert service.registry.node("n1") is None
        assert (await _call(cport, "GET", "/mod_cluster-manager"))[0] == 403
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_console_on_the_management_listener_when_asked():
    """console.listen = []: served on the MCMP port as httpd does, Host-checked there."""
    mport, pport = free_loopback_ports(2)
    service = build(parse_config(f"""
[manager]
listen = ["tcp:{mport}:interface=127.0.0.1"]
[console]
listen = []
allow = ["127.0.0.1"]
[proxy]
listen = ["tcp:{pport}:interface=127.0.0.1"]
"""), reactor)
    service.startService()
    try:
        assert (await _call(mport, "GET", "/mod_cluster-manager"))[0] == 200
        assert (await _call(mport, "GET", "/mod_cluster-manager", host="evil.example"))[0] == 421
        assert (await _call(mport, "INFO", "/", host="evil.example"))[0] == 200
    finally:
        await service.stopService()
