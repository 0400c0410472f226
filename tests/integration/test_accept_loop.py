"""
The proxy's own accept loop (modcluster/proxy/accept.py) over real sockets on
127.0.0.1: many short (C{Connection: close}) connections each get their whole
response, a client that resets its connection does not disturb the others,
and a process out of file descriptors pauses accepting (one log line), keeps
serving the connections it has and accepts the waiting clients once
descriptors are free again.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import subprocess
import sys
import textwrap
import time

import pytest
import pytest_twisted
from twisted.internet import defer, task, threads
from twisted.logger import globalLogPublisher

from modcluster.proxy import accept
from tests.integration.test_proxy_http import Stack


def _get(port: int, path: str) -> bytes:
    """One C{Connection: close} request; everything until the server closes."""
    with socket.create_connection(("127.0.0.1", port), 10) as c:
        c.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                  % path.encode())
        data = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                return data
            data += chunk


def _body(response: bytes) -> bytes:
    head, _, body = response.partition(b"\r\n\r\n")
    length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
              if line.lower().startswith(b"content-length:")]
    assert length == [len(body)], response
    return body


async def _stack() -> Stack:
    stack = Stack()
    assert accept.install(stack.port)
    assert isinstance(stack.port.doRead, accept.Acceptor)
    stack.serve("nA")
    return stack


@pytest_twisted.ensureDeferred
async def test_many_short_connections_get_their_last_byte():
    stack = await _stack()
    errors: list = []

    def failures(event):
        if event.get("log_failure") is not None:
            errors.append(event)

    globalLogPublisher.addObserver(failures)
    try:
        port = stack.port.getHost().port
        for batch in range(10):
            got = await defer.gatherResults([
                threads.deferToThread(_get, port, f"/app/x?i={batch}-{i}") for i in range(30)])
            for i, response in enumerate(got):
                assert response.startswith(b"HTTP/1.1 200 ")
                body = _body(response)
                # the peer address reaches the node
                assert body.startswith(b"nA\nGET /app/x?i=%d-%d\nHost: localhost\n"
                                       b"X-Forwarded-For: 127.0.0.1\n" % (batch, i))
        assert stack.port.sessionno >= 300
        assert not errors
        assert not stack.factory._clients  # every client connection closed
    finally:
        globalLogPublisher.removeObserver(failures)
        await stack.stop()


def _reset_after_request(port: int) -> None:
    c = socket.create_connection(("127.0.0.1", port), 10)
    c.sendall(b"GET /app/slow?ms=50 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # RST


def _reset_at_once(port: int) -> None:
    c = socket.create_connection(("127.0.0.1", port), 10)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # RST before (or while) the proxy accepts


@pytest_twisted.ensureDeferred
async def test_reset_clients_do_not_disturb_others():
    stack = await _stack()
    errors: list = []

    def failures(event):
        if event.get("log_failure") is not None:
            errors.append(event)

    globalLogPublisher.addObserver(failures)
    try:
        port = stack.port.getHost().port
        work = []
        for i in range(20):
            work.append(threads.deferToThread(_reset_after_request, port))
            work.append(threads.deferToThread(_reset_at_once, port))
            work.append(threads.deferToThread(_get, port, f"/app/ok?i={i}"))
        done = await defer.gatherResults(work)
        answers = [r for r in done if r is not None]
        assert len(answers) == 20
        for response in answers:
            assert _body(response).startswith(b"nA\nGET /app/ok?i=")
        await task.deferLater(stack.reactor, 0.3, lambda: None)  # the slow answers end
        assert not errors
        assert not stack.factory._clients
        assert _body(await threads.deferToThread(_get, port, "/app/after")).startswith(
            b"nA\nGET /app/after")
    finally:
        globalLogPublisher.removeObserver(failures)
        await stack.stop()


_SERVER = textwrap.dedent("""
    import resource, sys
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol
    from twisted.logger import globalLogPublisher
    from modcluster.proxy import accept

    lines = []
    globalLogPublisher.addObserver(
        lambda e: lines.append(e) if "cannot accept" in e.get("log_format", "") else None)

    class Answer(Protocol):
        def dataReceived(self, data):
            self.transport.write(b"ok " + data)

    port = reactor.listenTCP(0, Factory.forProtocol(Answer), interface="127.0.0.1",
                             backlog=100)
    assert accept.install(port)
    import os
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + 5, used + 5))
    print("PORT", port.getHost().port, flush=True)

    def report():
        print("FAILURES", port.doRead.failures, "LINES", len(lines), flush=True)
        reactor.stop()

    from twisted.internet import stdio
    class Cmd(Protocol):
        def dataReceived(self, data):
            if b"report" in data:
                report()
    stdio.StandardIO(Cmd())
    reactor.run()
""")


def test_out_of_descriptors_pauses_and_recovers(tmp_path):
    script = tmp_path / "server.py"
    script.write_text(_SERVER)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    clients: list[socket.socket] = []
    try:
        port = int(proc.stdout.readline().split()[1])
        # more clients than the server has descriptors for
        for i in range(15):
            c = socket.create_connection(("127.0.0.1", port), 10)
            c.sendall(b"%d" % i)
            clients.append(c)
        served, waiting = [], []
        for i, c in enumerate(clients):
            c.settimeout(0.5 if i < 5 else 0.1)
            try:
                answer = c.recv(100)
            except TimeoutError:
                waiting.append(c)
            else:
                assert answer == b"ok %d" % i
                served.append(c)
        assert served and waiting  # some were accepted, the rest wait in the backlog
        # the connections it has are still served
        served[0].sendall(b"again")
        served[0].settimeout(10)
        assert served[0].recv(100) == b"ok again"
        # descriptors freed: the waiting clients are accepted and answered
        for c in served:
            c.close()
        for c in waiting[:3]:
            c.settimeout(10)
            assert c.recv(100).startswith(b"ok ")
        proc.stdin.write("report\n")
        proc.stdin.flush()
        report = proc.stdout.readline().split()
        failures, lines = int(report[1]), int(report[3])
        # paused, not spinning: a few failed accepts (one per pause), one log line
        assert 1 <= failures < 100
        assert lines == 1
    finally:
        for c in clients:
            c.close()
        proc.kill()
        proc.wait(10)


@pytest_twisted.ensureDeferred
async def test_closed_connections_are_freed_without_the_cyclic_gc():
    """
    A closed client connection's objects (protocol, parser, transport, socket)
    go by reference counting: no cycle is left for the cyclic GC, whose full
    collections paused the process for tens of milliseconds.
    """
    import gc

    from modcluster.proxy.client import ClientProtocol

    stack = await _stack()
    gc.collect()
    gc.disable()
    try:
        # (what earlier tests of this process may still hold is not counted)
        before = {id(o) for o in gc.get_objects() if type(o) is ClientProtocol}
        port = stack.port.getHost().port
        for batch in range(3):
            got = await defer.gatherResults([
                threads.deferToThread(_get, port, f"/app/gc?i={batch}-{i}") for i in range(20)])
            assert all(r.startswith(b"HTTP/1.1 200 ") for r in got)
        await task.deferLater(stack.reactor, 0.05, lambda: None)
        assert not stack.factory._clients
        alive = [o for o in gc.get_objects()
                 if type(o) is ClientProtocol and id(o) not in before]
        assert alive == []
    finally:
        gc.enable()
        await stack.stop()


# -- Connection: close requests read whole at accept: never registered for reading ---------


def _read_all(c: socket.socket) -> bytes:
    """Everything until the end of the stream (a reset after it counts as its end)."""
    data = b""
    while True:
        try:
            chunk = c.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def _close_then_more(port: int, path: str, later: bool) -> bytes:
    """A close request and a second request, in the same send or while it is served."""
    first = b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % path.encode()
    second = b"GET /app/second HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), 10) as c:
        if later:
            c.sendall(first)
            time.sleep(0.05)
            c.sendall(second)
        else:
            c.sendall(first + second)
        return _read_all(c)


async def _sent_before_accept(stack, work: list) -> list:
    """
    The port does not accept while the clients of C{work} connect and send
    their first bytes (else the accept may come first: nothing to read yet,
    and the connection is registered as any other).
    """
    stack.port.stopReading()
    await task.deferLater(stack.reactor, 0.1, lambda: None)
    stack.port.startReading()
    return await defer.gatherResults(work)


async def _registered(stack, counts: list) -> None:
    """Count the client connections registered for reading (reactor.addReader)."""
    from twisted.internet import tcp

    add = stack.reactor.addReader

    def counting(reader):
        if type(reader) is tcp.Server and reader.server is stack.port:
            counts.append(reader)
        return add(reader)

    stack.reactor.addReader = counting


def _no_failures():
    errors: list = []

    def failures(event):
        if event.get("log_failure") is not None:
            errors.append(event)

    globalLogPublisher.addObserver(failures)
    return errors, failures


@pytest_twisted.ensureDeferred
async def test_close_request_is_answered_without_registering_for_reading():
    """
    A Connection: close request read whole at accept and answered in one write:
    its connection is never registered with epoll; a second request sent after
    it (at once or while it is served) is not answered.
    """
    stack = await _stack()
    errors, failures = _no_failures()
    globalLogPublisher.addObserver(failures)
    registered: list = []
    try:
        port = stack.port.getHost().port
        await _registered(stack, registered)
        # (accepted once their request is sent: _sent_before_accept)
        got = await _sent_before_accept(stack, [
            threads.deferToThread(_get, port, f"/app/x?i={i}") for i in range(10)])
        for i, response in enumerate(got):
            assert _body(response).startswith(b"nA\nGET /app/x?i=%d\n" % i)
        assert registered == []
        for path, later in [("/app/a", False), ("/app/slow?ms=200", True)]:
            (response,) = await _sent_before_accept(stack, [
                threads.deferToThread(_close_then_more, port, path, later)])
            assert response.count(b"HTTP/1.1 ") == 1, response
            assert _body(response).startswith(b"nA")
        assert stack.servers[0].requests == 12  # never /app/second
        await task.deferLater(stack.reactor, 0.05, lambda: None)
        assert not stack.factory._clients
        assert not errors
    finally:
        del stack.reactor.addReader
        globalLogPublisher.removeObserver(failures)
        await stack.stop()


def _close_request_then_reset(port: int, path: str) -> None:
    c = socket.create_connection(("127.0.0.1", port), 10)
    c.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
              % path.encode())
    time.sleep(0.02)  # accepted and read
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # RST


@pytest_twisted.ensureDeferred
async def test_close_request_client_resetting_is_noticed():
    """
    A client that resets after its close request: noticed when its answer is
    written (a node answering in 0.1 s), or by the sweep registering the
    connection for reading (a node taking 5 s: the request is aborted well
    before); nothing logged, the others are served.
    """
    stack = await _stack()
    errors, failures = _no_failures()
    globalLogPublisher.addObserver(failures)
    try:
        port = stack.port.getHost().port
        await defer.gatherResults([
            threads.deferToThread(_close_request_then_reset, port, "/app/slow?ms=100")
            for _ in range(10)])
        await task.deferLater(stack.reactor, 0.3, lambda: None)
        assert not stack.factory._clients
        await threads.deferToThread(_close_request_then_reset, port, "/app/slow?ms=5000")
        for _ in range(30):  # up to 3 s: the next sweep, within 1 s
            await task.deferLater(stack.reactor, 0.1, lambda: None)
            if not stack.factory._clients:
                break
        assert not stack.factory._clients
        assert _body(await threads.deferToThread(_get, port, "/app/after")).startswith(
            b"nA\nGET /app/after")
        assert not errors
    finally:
        globalLogPublisher.removeObserver(failures)
        await stack.stop()


def _half_closing(port: int) -> bytes:
    """A close request, then the client's end of stream (shutdown for writing)."""
    with socket.create_connection(("127.0.0.1", port), 10) as c:
        c.sendall(b"GET /app/slow?ms=200 HTTP/1.1\r\nHost: localhost\r\n"
                  b"Connection: close\r\n\r\n")
        c.shutdown(socket.SHUT_WR)
        return _read_all(c)


@pytest_twisted.ensureDeferred
async def test_close_request_from_a_half_closing_client_is_answered():
    """
    A client that ends its stream after its close request still gets the
    answer of a node answering before the next sweep: its connection is not
    read again (a registered one read the end of stream and gave up the request).
    """
    stack = await _stack()
    try:
        port = stack.port.getHost().port
        (response,) = await _sent_before_accept(stack, [
            threads.deferToThread(_half_closing, port)])
        assert response.startswith(b"HTTP/1.1 200 ")
        assert _body(response) == b"nA slow"
    finally:
        await stack.stop()


def _slow_reader(port: int, size: int) -> bytes:
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.settimeout(10)
    c.connect(("127.0.0.1", port))
    with c:
        c.sendall(b"GET /app/download?bytes=%d HTTP/1.1\r\nHost: localhost\r\n"
                  b"Connection: close\r\n\r\n" % size)
        time.sleep(0.3)  # the proxy's writes are partial meanwhile
        return _read_all(c)


@pytest_twisted.ensureDeferred
async def test_close_request_to_a_slow_reader_gets_everything():
    stack = await _stack()
    try:
        port = stack.port.getHost().port
        size = 3 * 1024 * 1024
        response = await threads.deferToThread(_slow_reader, port, size)
        assert response.startswith(b"HTTP/1.1 200 ")
        assert len(_body(response)) == size
        await task.deferLater(stack.reactor, 0.05, lambda: None)
        assert not stack.factory._clients
    finally:
        await stack.stop()


# -- ssl: listeners with the stdlib TLS engine (accept.accepts_description) ------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    d = tmp_path_factory.mktemp("accept-tls")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    pem = d / "server.pem"
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(pem))
    return {"ca": str(d / "ca.pem"), "pem": str(pem)}


def _tls_get(port: int, ctx, path: str, session=None):
    """One C{Connection: close} request over TLS: (everything until close_notify, reused, session)."""
    with socket.create_connection(("127.0.0.1", port), 10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            s.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                      % path.encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return data, s.session_reused, s.session
                data += chunk


async def _short_tls_connections(port: int, ca: str, batches: int = 6, per: int = 20) -> None:
    """Full handshakes and resumed ones (a ticket from a first connection): each gets its body."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["http/1.1"])
    first, reused, session = await threads.deferToThread(_tls_get, port, ctx, "/app/first")
    assert first.startswith(b"HTTP/1.1 200 ") and not reused
    for batch in range(batches):
        got = await defer.gatherResults([
            threads.deferToThread(_tls_get, port, ctx, f"/app/x?i={batch}-{i}",
                                  session if i % 2 else None) for i in range(per)])
        for i, (response, was_reused, _) in enumerate(got):
            assert response.startswith(b"HTTP/1.1 200 "), response
            assert _body(response).startswith(b"nA\nGET /app/x?i=%d-%d\n" % (batch, i))
            assert was_reused == bool(i % 2)


@pytest_twisted.ensureDeferred
async def test_many_short_tls_connections_get_their_last_byte(pki):
    """An ssl: listener (stdlib engine) wired as tap.py wires it accepts with the loop."""
    from modcluster.proxy.alpn import ALPN_PROTOCOLS, NegotiatingFactory
    from modcluster.proxy.stdtls import TLSServerFactory
    from modcluster.tap import _accepting
    from modcluster.tls import server_endpoint

    stack = Stack()
    errors: list = []

    def failures(event):
        if event.get("log_failure") is not None:
            errors.append(event)

    description = f"ssl:0:interface=127.0.0.1:privateKey={pki['pem']}"
    endpoint = _accepting(server_endpoint(stack.reactor, description, ALPN_PROTOCOLS,
                                          "stdlib"), description, "stdlib")
    port = await endpoint.listen(NegotiatingFactory(stack.factory))
    globalLogPublisher.addObserver(failures)
    try:
        assert isinstance(port.factory, TLSServerFactory)
        assert isinstance(port.doRead, accept.Acceptor)
        stack.serve("nA")
        await _short_tls_connections(port.getHost().port, pki["ca"])
        assert port.sessionno >= 121
        assert not errors
        for _ in range(100):  # the last connections' close
            if not stack.factory._clients:
                break
            await task.deferLater(stack.reactor, 0.02, lambda: None)
        assert not stack.factory._clients
    finally:
        globalLogPublisher.removeObserver(failures)
        await port.stopListening()
        await stack.stop()


@pytest_twisted.ensureDeferred
async def test_worker_processes_short_tls_connections(pki):
    """Two worker processes on a shared ssl: listener (their adopted socket gets the loop)."""
    from tests.integration.test_worker_processes import Cluster

    c = Cluster(listen=f"ssl:{{port}}:interface=127.0.0.1:privateKey={pki['pem']}")
    await c.start()
    try:
        await c.node("nA")
        d = defer.ensureDeferred(_short_tls_connections(c.pport, pki["ca"], batches=4))
        d.addTimeout(120, c.pool.reactor)
        await d
    finally:
        await c.stop()
