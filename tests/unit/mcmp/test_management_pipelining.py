"""
How the management and console listeners hold the requests a client pipelines
(L{ManagementChannel.requestDone}) rests on twisted.web's private state; a
Twisted that renames it must neither reopen the memory hole (every pipelined
request answered whether or not the client reads) nor break requests: the
listeners then close the connection after each reply, and say so at start-up.
"""

from __future__ import annotations

import pytest
import twisted
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.web import http

from modcluster.cluster.registry import Registry
from modcluster.mcmp import resource
from modcluster.mcmp.handler import MCMPHandler
from modcluster.mcmp.resource import (
    ManagementChannel,
    ManagementRoot,
    ManagementSite,
    MCMPResource,
    pipelining_hooks_problem,
)

INFO = b"INFO / HTTP/1.1\r\nHost: a\r\n\r\n"


class _Prober:
    def probe(self, node):  # pragma: no cover - not reached by these tests
        raise AssertionError("no probe expected")


def _site() -> ManagementSite:
    clock = MemoryReactorClock()
    handler = MCMPHandler(Registry(clock), _Prober(), clock)
    return ManagementSite(ManagementRoot(MCMPResource(handler)), reactor=clock)


def _connect(site):
    channel = site.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.7", 41000))
    channel.makeConnection(transport)
    return channel, transport


def test_installed_twisted_has_what_pipelined_requests_are_held_with():
    """
    Fails loudly when the installed Twisted lacks (or changed) the private
    state ManagementChannel uses: the listeners would run without keep-alive
    until ManagementChannel is brought up to date with it.
    """
    assert resource.PIPELINING_HOOKS_PROBLEM is None, (
        f"Twisted {twisted.__version__}: {resource.PIPELINING_HOOKS_PROBLEM}; "
        "update ManagementChannel.requestDone/resumeProducing")
    assert ManagementChannel._hold_pipelined


class _NoNetworkProducer(http.HTTPChannel):
    def connectionMade(self):
        super().connectionMade()
        self._transport_producer = self.__dict__.pop("_networkProducer")


class _NoHandlingRequest(http.HTTPChannel):
    def __init__(self):
        super().__init__()
        del self._handlingRequest


class _WaitingRenamed(http.HTTPChannel):
    def pauseProducing(self):
        super().pauseProducing()
        self._blocked = self.__dict__.pop("_waitingForTransport")


class _NoLineBuffer(http.HTTPChannel):
    def dataReceived(self, data):
        super().dataReceived(data)
        self._pending = self.__dict__.pop("_buffer", b"")


class _Raises(http.HTTPChannel):
    def __init__(self):
        raise TypeError("a new signature")


@pytest.mark.parametrize("channel_class", [
    _NoNetworkProducer, _NoHandlingRequest, _WaitingRenamed, _NoLineBuffer, _Raises])
def test_probe_finds_a_twisted_without_the_private_state(channel_class):
    problem = pipelining_hooks_problem(channel_class)
    assert problem is not None


def test_probe_passes_the_installed_twisted():
    assert pipelining_hooks_problem(http.HTTPChannel) is None


def test_without_the_private_state_each_reply_closes_the_connection(monkeypatch):
    """
    The fallback: one request per connection.  A burst of pipelined INFO
    gets one reply, which says Connection: close, and the connection closes;
    the rest is dropped, not answered into the transport's buffer.
    """
    monkeypatch.setattr(ManagementChannel, "_hold_pipelined", False)
    site = _site()
    channel, t = _connect(site)
    channel.dataReceived(INFO * 100)
    out = t.value()
    assert out.count(b"HTTP/1.1 200 ") == 1
    assert b"\r\nConnection: close\r\n" in out
    assert t.disconnecting


def test_without_the_private_state_a_transport_that_fills_breaks_nothing(monkeypatch):
    monkeypatch.setattr(ManagementChannel, "_hold_pipelined", False)
    site = _site()
    channel, t = _connect(site)
    channel.pauseProducing()  # the client does not read
    channel.dataReceived(INFO + INFO)
    channel.resumeProducing()
    assert t.value().count(b"HTTP/1.1 200 ") == 1
    assert t.disconnecting


def test_with_the_private_state_keep_alive_stays():
    site = _site()
    channel, t = _connect(site)
    channel.dataReceived(INFO * 3)
    out = t.value()
    assert out.count(b"HTTP/1.1 200 ") == 3
    assert b"Connection: close" not in out
    assert not t.disconnecting


def test_fallback_is_logged_once_at_start(monkeypatch):
    monkeypatch.setattr(resource, "PIPELINING_HOOKS_PROBLEM", "HTTPChannel._x is missing")
    monkeypatch.setattr(resource, "_warned_fallback", False)
    with capturedLogs() as events:
        for _ in range(2):
            site = _site()
            site.startFactory()
            site.stopFactory()
    warnings = [e for e in events if "close the connection after every reply"
                in e["log_format"]]
    assert len(warnings) == 1
    assert warnings[0]["problem"] == "HTTPChannel._x is missing"


def test_nothing_logged_when_the_private_state_is_there(monkeypatch):
    monkeypatch.setattr(resource, "_warned_fallback", False)
    with capturedLogs() as events:
        site = _site()
        site.startFactory()
        site.stopFactory()
    assert not [e for e in events if "every reply" in e.get("log_format", "")]
