"""
In-memory fakes for the node agent tests: a scripted MCMP proxy reached
through a fake endpoint, on a L{MemoryReactorClock}.

Each connection is a L{FakeProxyTransport} (a C{StringTransport}) that
collects the bytes the agent writes, cuts them into complete requests and
answers each one, after 0 s on the clock, with whatever the proxy's C{answer}
callable returns.  C{clock.advance(0)} (or any advance) delivers the answers.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

from twisted.internet.defer import fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from tests.support.fixtures import Exchange, load_exchanges

TRACE = "tomcat10-mcmp-trace.txt"

#: Special answers.
CLOSE = "close"  # close the connection instead of answering
HANG = "hang"  # never answer

Answer = Union[bytes, str, None]


def wire_bytes(raw: bytes) -> bytes:
    """
    The on-the-wire bytes of a captured request or response: the head plus
    exactly Content-Length body bytes (the capture adds a display-only LF).
    """
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, raw[:80]
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return head + sep + rest[:length]


def trace_run(run: str) -> list[Exchange]:
    """The exchanges of run C{run} ("A", "B", "C") of the Tomcat trace."""
    return [e for e in load_exchanges(TRACE) if e.label.startswith(run) and e.label[1].isdigit()]


def ok(body: bytes = b"", close: bool = False) -> bytes:
    """A 200 answer like the fake proxy of the trace."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
    if close:
        head += b"Connection: close\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def error(kind: str, mess: str) -> bytes:
    """An error answer with the mod_manager convention."""
    return (
        f"HTTP/1.1 500 ERROR\r\nVersion: 0.2.1\r\nType: {kind}\r\nMess: {mess}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode("ascii")


def split_requests(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete requests at the start of C{buffer}, and the rest."""
    found = []
    while True:
        head, sep, rest = buffer.partition(b"\r\n\r\n")
        if not sep:
            return found, buffer
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if len(rest) < length:
            return found, buffer
        found.append(head + sep + rest[:length])
        buffer = rest[length:]


def method_of(request: bytes) -> str:
    return request.split(b" ", 1)[0].decode("ascii")


def body_of(request: bytes) -> str:
    return request.partition(b"\r\n\r\n")[2].decode("ascii")


class FakeProxyTransport(StringTransport):
    def __init__(self, proxy: "FakeProxy", protocol: object, number: int) -> None:
        super().__init__()
        self.proxy = proxy
        self.protocol = protocol
        self.number = number
        self.closed = False
        self._pending = b""

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        super().write(data)
        self._pending += data
        requests, self._pending = split_requests(self._pending)
        for request in requests:
            self.proxy.requests.append(request)
            self.proxy.request_connections.append(self.number)
            answer = self.proxy.answer(request)
            if answer == CLOSE:
                self._close()
            elif answer == HANG or answer is None:
                pass
            else:
                self.proxy.clock.callLater(0, self._deliver, answer)

    def _deliver(self, data: bytes) -> None:
        if not self.closed:
            self.protocol.dataReceived(data)

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.proxy.clock.callLater(0, self.protocol.connectionLost, Failure(ConnectionDone()))

    def loseConnection(self) -> None:
        super().loseConnection()
        self._close()

    def abortConnection(self) -> None:
        self._close()

    def close_by_peer(self) -> None:
        """The proxy closes the (idle) connection."""
        self._close()


class FakeProxy:
    """
    A scripted proxy.

    @ivar requests: every complete request received, in order.
    @ivar request_connections: the connection number of each request.
    @ivar transports: every connection, in order.
    @ivar refuse: refuse new connections while true.
    """

    def __init__(self, clock: MemoryReactorClock,
                 answer: Optional[Callable[[bytes], Answer]] = None) -> None:
        self.clock = clock
        self.answer = answer or self.default_answer
        self.requests: list[bytes] = []
        self.request_connections: list[int] = []
        self.transports: list[FakeProxyTransport] = []
        self.refuse = False
        self.connects = 0

    @staticmethod
    def default_answer(request: bytes) -> bytes:
        if method_of(request) == "STATUS":
            return ok(b"Type=STATUS-RSP&JVMRoute=node1&State=OK&id=1")
        return ok()

    def connect(self, factory: object):
        self.connects += 1
        if self.refuse:
            return fail(ConnectionRefusedError("refused"))
        protocol = factory.buildProtocol(None)
        transport = FakeProxyTransport(self, protocol, len(self.transports) + 1)
        self.transports.append(transport)
        protocol.makeConnection(transport)
        return succeed(protocol)

    @property
    def methods(self) -> list[str]:
        return [method_of(r) for r in self.requests]


class FakeEndpoint:
    def __init__(self, proxy: FakeProxy) -> None:
        self.proxy = proxy

    def connect(self, factory: object):
        return self.proxy.connect(factory)


class Replay:
    """
    Answers each request with the response of the next exchange of a trace
    run and remembers what was expected.
    """

    def __init__(self, exchanges: list[Exchange]) -> None:
        self.exchanges = exchanges
        self.index = 0

    def __call__(self, request: bytes) -> Answer:
        if self.index >= len(self.exchanges):
            return ok()
        exchange = self.exchanges[self.index]
        self.index += 1
        return wire_bytes(exchange.raw_response)

    def expected(self, upto: Optional[int] = None) -> list[bytes]:
        return [wire_bytes(e.raw_request) for e in self.exchanges[:upto]]


ADVERTISE_TRACE = "tomcat10-mcmp-advertise-trace.txt"


def advertise_datagrams() -> dict[str, bytes]:
    """The ADV blocks of the advertise trace: label ("ADV1"...) -> datagram bytes."""
    from tests.support.fixtures import FIXTURES

    found: dict[str, bytes] = {}
    label = None
    parts: list[bytes] = []
    inside = False
    for line in (FIXTURES / ADVERTISE_TRACE).read_bytes().splitlines(keepends=True):
        if line.startswith(b"=== ADV"):
            label = line[4:].split(b" ", 1)[0].decode("ascii")
        elif line.startswith(b"--- datagram") and label:
            inside, parts = True, []
        elif line.startswith(b"--- end ---") and inside:
            found[label] = b"".join(parts)
            inside, label = False, None
        elif inside:
            parts.append(line)
    return found


def advertise_run() -> list[Exchange]:
    """The MCMP exchanges (D run) of the advertise trace."""
    return [e for e in load_exchanges(ADVERTISE_TRACE) if e.label.startswith("D")]
