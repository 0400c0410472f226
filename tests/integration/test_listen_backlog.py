"""
The listen backlog (issue 15 §4): every proxy, management and console
listener, plain or TLS, and the SO_REUSEPORT sockets of the worker processes,
listen with C{listen_backlog} (default 511) unless their endpoint description
says C{backlog=}.  Checked on the real sockets: the kernel's maximum accept
queue, read over netlink (what C{ss -lnt} shows), not Twisted's bookkeeping.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import pytest_twisted
import trustme

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from modcluster.config import parse_config  # noqa: E402
from modcluster.tap import build  # noqa: E402
from tests.support.listen_queue import listen_backlogs  # noqa: E402
from tests.support.tomcat import free_loopback_ports  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sock_diag")


@pytest.fixture
def certs(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    pem = tmp_path / "server.pem"
    key = tmp_path / "server-key.pem"
    cert.cert_chain_pems[0].write_to_path(str(pem))
    cert.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    both = tmp_path / "both.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(both))
    return {"cert": str(pem), "key": str(key), "ca": str(tmp_path / "ca.pem"),
            "both": str(both)}


async def _started(config):
    from twisted.internet import reactor

    service = build(config, reactor)
    service.startService()
    return service


@pytest_twisted.ensureDeferred
async def test_default_backlog_is_511_on_every_listener(certs):
    p1, p2, m1, c1 = free_loopback_ports(4)
    config = parse_config(f"""
[manager]
listen = ["tcp:{m1}:interface=127.0.0.1"]
[console]
listen = ["tcp:{c1}:interface=127.0.0.1"]
[proxy]
listen = ["tcp:{p1}:interface=127.0.0.1", "ssl:{p2}:interface=127.0.0.1:privateKey={certs['both']}"]
fast_event_loop = false
""")
    service = await _started(config)
    try:
        for port in (p1, p2, m1, c1):
            assert listen_backlogs(port) == [511], port
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_configured_backlog_and_endpoint_override(certs):
    p1, p2, m1, c1 = free_loopback_ports(4)
    config = parse_config(f"""
[manager]
listen = ["tcp:{m1}:interface=127.0.0.1"]
listen_backlog = 1024
[manager.tls]
enabled = true
certificate = "{certs['cert']}"
private_key = "{certs['key']}"
ca = "{certs['ca']}"
[console]
listen = ["tcp:{c1}:interface=127.0.0.1:backlog=17"]
[proxy]
listen = ["tcp:{p1}:interface=127.0.0.1", "tcp:{p2}:interface=127.0.0.1:backlog=33"]
listen_backlog = 2000
fast_event_loop = false
""")
    service = await _started(config)
    try:
        assert listen_backlogs(p1) == [2000]
        assert listen_backlogs(p2) == [33]
        assert listen_backlogs(m1) == [1024]  # TLS management listener
        assert listen_backlogs(c1) == [17]
    finally:
        await service.stopService()
