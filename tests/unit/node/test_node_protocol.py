"""
The MCMP client connection: keep-alive, one request at a time, retry once on
a stale kept-alive connection, socket timeout.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from modcluster.node.protocol import ProxyConnection, ResponseNeverStarted
from modcluster.node.wire import MalformedResponse, MCMPResponse, encode_request, info_request
from tests.support.node_testlib import CLOSE, HANG, FakeEndpoint, FakeProxy, ok

INFO = encode_request(info_request(), "127.0.0.1", 6666)


def result_of(d: Deferred) -> object:
    results: list[object] = []
    d.addBoth(results.append)
    assert results, "Deferred has not fired"
    return results[0]


def fired(d: Deferred) -> bool:
    results: list[object] = []
    d.addBoth(lambda r: (results.append(r), r)[1])
    return bool(results)


def make(answer=None, timeout: float = 20.0):
    clock = MemoryReactorClock()
    proxy = FakeProxy(clock, answer)
    connection = ProxyConnection(clock, lambda: FakeEndpoint(proxy), timeout)
    return clock, proxy, connection


def test_request_and_keep_alive() -> None:
    """Two requests go over one connection, one after the other."""
    clock, proxy, connection = make()
    first = connection.send(INFO)
    second = connection.send(INFO)
    # Only the first is on the wire until it is answered.
    assert proxy.requests == [INFO]
    clock.advance(0)
    assert isinstance(result_of(first), MCMPResponse)
    assert isinstance(result_of(second), MCMPResponse)
    assert proxy.requests == [INFO, INFO]
    assert proxy.request_connections == [1, 1]
    assert connection.connected


def test_connection_close_answer() -> None:
    """After 'Connection: close' the next request opens a new connection."""
    clock, proxy, connection = make(lambda r: ok(close=True))
    connection.send(INFO)
    clock.advance(0)
    assert not connection.connected
    connection.send(INFO)
    clock.advance(0)
    assert proxy.request_connections == [1, 2]


def test_retry_once_on_stale_connection() -> None:
    """A reused connection closed by the proxy: the request is sent again, once."""
    answers = iter([ok(), CLOSE, ok(b"second")])
    clock, proxy, connection = make(lambda r: next(answers))
    connection.send(INFO)
    clock.advance(0)
    d = connection.send(INFO)
    clock.advance(0)
    response = result_of(d)
    assert isinstance(response, MCMPResponse) and response.body == "second"
    assert proxy.requests == [INFO, INFO, INFO]
    assert proxy.request_connections == [1, 1, 2]


def test_idle_close_noticed_before_sending() -> None:
    """An idle connection the proxy closed is not reused (no retry needed)."""
    clock, proxy, connection = make()
    connection.send(INFO)
    clock.advance(0)
    proxy.transports[0].close_by_peer()
    clock.advance(0)
    d = connection.send(INFO)
    clock.advance(0)
    assert isinstance(result_of(d), MCMPResponse)
    assert proxy.request_connections == [1, 2]


def test_no_retry_on_fresh_connection() -> None:
    """A fresh connection closed before an answer fails without retry."""
    clock, proxy, connection = make(lambda r: CLOSE)
    d = connection.send(INFO)
    clock.advance(0)
    failure = result_of(d)
    assert isinstance(failure, Failure) and failure.check(ResponseNeverStarted)
    assert len(proxy.requests) == 1


def test_retry_fails_too() -> None:
    """The retry happens only once."""
    answers = iter([ok(), CLOSE, CLOSE, ok()])
    clock, proxy, connection = make(lambda r: next(answers))
    connection.send(INFO)
    clock.advance(0)
    d = connection.send(INFO)
    clock.advance(0)
    assert result_of(d).check(ResponseNeverStarted)
    assert len(proxy.requests) == 3


def test_timeout() -> None:
    """No answer within the socket timeout: TimeoutError, connection aborted."""
    clock, proxy, connection = make(lambda r: HANG, timeout=20.0)
    d = connection.send(INFO)
    clock.advance(19.9)
    assert not fired(d)
    clock.advance(0.2)
    clock.advance(0)
    failure = result_of(d)
    assert isinstance(failure, Failure)
    assert proxy.transports[0].closed
    assert not connection.connected


def test_timeout_reset_by_data() -> None:
    """The timeout bounds each wait for bytes, not the whole answer."""
    clock, proxy, connection = make(lambda r: HANG, timeout=10.0)
    d = connection.send(INFO)
    protocol = proxy.transports[0].protocol
    clock.advance(8)
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    clock.advance(8)
    protocol.dataReceived(b"ok")
    assert result_of(d).body == "ok"


def test_malformed_answer_aborts() -> None:
    """A malformed answer fails the request and drops the connection."""
    clock, proxy, connection = make(lambda r: b"HTTP/1.1 200\r\n\r\n")
    d = connection.send(INFO)
    clock.advance(0)
    assert result_of(d).check(MalformedResponse)
    assert proxy.transports[0].closed


def test_close_delimited_answer() -> None:
    """A body delimited by the connection close is delivered at EOF."""
    clock, proxy, connection = make(lambda r: HANG)
    d = connection.send(INFO)
    transport = proxy.transports[0]
    transport.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nRequests=1")
    assert not fired(d)
    transport.close_by_peer()
    clock.advance(0)
    assert result_of(d).body == "Requests=1"


def test_unsolicited_bytes_close_connection() -> None:
    """Bytes arriving while no request is pending make the connection unusable."""
    clock, proxy, connection = make()
    connection.send(INFO)
    clock.advance(0)
    proxy.transports[0].protocol.dataReceived(b"garbage")
    clock.advance(0)
    assert not connection.connected
    connection.send(INFO)
    clock.advance(0)
    assert proxy.request_connections == [1, 2]


def test_connection_refused() -> None:
    clock, proxy, connection = make()
    proxy.refuse = True
    d = connection.send(INFO)
    assert result_of(d).check(ConnectionRefusedError)


def test_protocol_rejects_concurrent_requests() -> None:
    clock, proxy, connection = make(lambda r: HANG)
    connection.send(INFO)
    protocol = proxy.transports[0].protocol
    with pytest.raises(RuntimeError):
        protocol.request(INFO)
