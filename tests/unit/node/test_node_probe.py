"""
Backend probes: the AJP CPING exchange and the probe choice per URL scheme.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock, StringTransport

from modcluster.node.probe import CPING, CPONG, AJPPing, HTTPProbe, _CPing, make_probe


def answer_of(protocol: _CPing) -> list[object]:
    results: list[object] = []
    protocol.answer.addBoth(results.append)
    return results


def test_cping_cpong() -> None:
    protocol = _CPing()
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert transport.value() == CPING
    results = answer_of(protocol)
    protocol.dataReceived(CPONG[:2])
    assert results == []
    protocol.dataReceived(CPONG[2:])
    assert results == [True]


def test_cping_wrong_answer_or_close() -> None:
    protocol = _CPing()
    protocol.makeConnection(StringTransport())
    results = answer_of(protocol)
    protocol.dataReceived(b"HTTP/")
    assert results == [False]
    protocol = _CPing()
    protocol.makeConnection(StringTransport())
    results = answer_of(protocol)
    protocol.connectionLost(None)
    assert results == [False]


def test_probe_per_scheme() -> None:
    reactor = MemoryReactorClock()
    assert isinstance(make_probe(reactor, "ajp://127.0.0.1:8009"), AJPPing)
    http = make_probe(reactor, "http://127.0.0.1:8080/", "health", "GET")
    assert isinstance(http, HTTPProbe) and http._url == b"http://127.0.0.1:8080/health"
    assert isinstance(make_probe(reactor, "https://127.0.0.1"), HTTPProbe)
