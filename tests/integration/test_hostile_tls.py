"""
Hostile clients against an ssl: proxy listener with the stdlib TLS engine
(modcluster/proxy/stdtls.py) behind the proxy's own accept loop
(modcluster/proxy/accept.py), as tap.py builds it, over 127.0.0.1: garbage
instead of a ClientHello, a ClientHello written one byte at a time, clients
that stall or reset mid-handshake or mid-response, alerts, a TLS 1.2
renegotiation attempt, records after close_notify, an upload burst while the
node does not read.  Each test checks the counters, that the next client is
served, and that every file descriptor the proxy opened for it is closed
again (/proc/self/fd).  Every wait is bounded.
"""

from __future__ import annotations

import os
import socket
import socketserver
import ssl as pyssl
import struct
import subprocess
import sys
import textwrap
import time

import pytest
import pytest_twisted
from twisted.internet import defer, task, threads
from twisted.logger import globalLogPublisher

from modcluster.proxy.accept import AcceptingEndpoint, Acceptor
from modcluster.proxy.alpn import ALPN_PROTOCOLS, NegotiatingFactory
from modcluster.proxy.observe import ClientStats
from modcluster.proxy.stdtls import TLSServerFactory
from modcluster.tls import server_endpoint

from tests.integration.test_proxy_http import Stack
from tests.integration.test_proxy_stdtls import _context, _keep_alive, _read_response
from tests.support.waiting import until as _until, open_fds as _fds

trustme = pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = trustme.CA()
    d = tmp_path_factory.mktemp("hostile")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    pem = d / "server.pem"
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(pem))
    return {"ca": str(d / "ca.pem"), "pem": str(pem)}




class Listener:
    def __init__(self, stack, port, pki, http2):
        self.stack = stack
        self.port = port
        self.number = port.getHost().port
        self.pki = pki
        self.http2 = http2
        self.stats = stack.factory.stats

    def served(self) -> bool:
        """Blocking: one good client gets a 200 (the listener still works)."""
        heads, _, _, _, _ = _keep_alive(self.number, self.pki, 1)
        return heads[0].startswith(b"HTTP/1.1 200")


async def with_listener(pki, fn, http2=True, **config):
    stack = Stack(http2=http2, **config)
    stack.factory.stats = ClientStats()
    stack.serve("nA")
    endpoint = AcceptingEndpoint(server_endpoint(
        stack.reactor, f"ssl:0:interface=127.0.0.1:privateKey={pki['pem']}",
        ALPN_PROTOCOLS if http2 else (b"http/1.1",), "stdlib"))
    factory = NegotiatingFactory(stack.factory) if http2 else stack.factory
    port = await endpoint.listen(factory)
    assert isinstance(port.factory, TLSServerFactory)
    assert isinstance(port.doRead, Acceptor)
    listener = Listener(stack, port, pki, http2)
    failures: list = []

    def unhandled(event):
        if event.get("log_failure") is not None:
            failures.append(event)

    globalLogPublisher.addObserver(unhandled)
    try:
        # one good client first: the pool's connection to the node exists
        assert await threads.deferToThread(listener.served)
        await _until(lambda: not stack.factory._clients)
        d = defer.ensureDeferred(fn(listener))
        d.addTimeout(90, stack.reactor)
        await d
    finally:
        globalLogPublisher.removeObserver(unhandled)
        await port.stopListening()
        await stack.stop()
    assert not failures, [e.get("log_format") for e in failures]


def hostile(fn=None, **kw):
    def wrap(fn):
        @pytest_twisted.ensureDeferred
        async def run(pki):
            await with_listener(pki, fn, **kw)

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        return run

    return wrap(fn) if fn is not None else wrap


def _client_hello(pki, **kw) -> tuple[pyssl.SSLObject, pyssl.MemoryBIO, pyssl.MemoryBIO, bytes]:
    ctx = _context(pki, **kw)
    cin, cout = pyssl.MemoryBIO(), pyssl.MemoryBIO()
    obj = ctx.wrap_bio(cin, cout, server_hostname="localhost")
    try:
        obj.do_handshake()
    except pyssl.SSLWantReadError:
        pass
    return obj, cin, cout, cout.read()


def _rst(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def _recv_all(s: socket.socket, limit: float = 10.0) -> bytes:
    """What the server sends until it closes (EOF or reset)."""
    s.settimeout(limit)
    out = b""
    try:
        while True:
            piece = s.recv(65536)
            if not piece:
                return out
            out += piece
    except ConnectionResetError:
        return out


async def _settled(listener, fds: int, failures: int | None = None) -> None:
    """No client connection left, the fd count back to C{fds}, the next client served."""
    stack = listener.stack
    await _until(lambda: not stack.factory._clients)
    await _until(lambda: _fds() <= fds, 10)
    if failures is not None:
        assert listener.stats.tls_failures == failures
    assert await threads.deferToThread(listener.served)


# -- before the handshake completes ------------------------------------------------------


@hostile
async def test_garbage_instead_of_a_client_hello(listener):
    fds, failures = _fds(), listener.stats.tls_failures

    def garbage():
        got = []
        for junk in (b"\x00" * 300, b"\x80" + os.urandom(5000),
                     b"\x16\x03\x01\xff\xff" + b"A" * 100):
            with socket.create_connection(("127.0.0.1", listener.number), timeout=10) as s:
                s.sendall(junk)
                got.append(_recv_all(s))
        return got

    answers = await threads.deferToThread(garbage)
    for answer in answers:  # at most an alert, then the end
        assert len(answer) < 100
    await _settled(listener, fds, failures + 3)


@hostile
async def test_client_hello_one_byte_at_a_time(listener):
    fds = _fds()

    def trickle():
        obj, cin, cout, hello = _client_hello(listener.pki)
        with socket.create_connection(("127.0.0.1", listener.number), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(len(hello)):
                s.send(hello[i:i + 1])
                time.sleep(0.001)
            s.settimeout(10)
            while True:
                try:
                    obj.do_handshake()
                    break
                except pyssl.SSLWantReadError:
                    out = cout.read()
                    if out:
                        s.sendall(out)
                    data = s.recv(65536)
                    assert data
                    cin.write(data)
            out = cout.read()
            if out:
                for i in range(len(out)):
                    s.send(out[i:i + 1])
            obj.write(b"GET /app/echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            request = cout.read()
            for i in range(len(request)):
                s.send(request[i:i + 1])
            raw = _recv_all(s)
            cin.write(raw)
            plain = b""
            while True:
                try:
                    piece = obj.read(65536)
                except (pyssl.SSLWantReadError, pyssl.SSLZeroReturnError):
                    break
                if not piece:
                    break
                plain += piece
            return plain

    plain = await threads.deferToThread(trickle)
    assert plain.startswith(b"HTTP/1.1 200"), plain[:200]
    await _settled(listener, fds)


async def _stalled(listener):
    """Nothing, half a ClientHello, a whole one and no Finished: each cut, counted."""
    fds, failures = _fds(), listener.stats.tls_failures
    timeouts = listener.stack.factory.timeouts.counts.get("header", 0)
    _, _, _, hello = _client_hello(listener.pki)

    def stall():
        socks = []
        for first in (b"", hello[:len(hello) // 2], hello):
            s = socket.create_connection(("127.0.0.1", listener.number), timeout=10)
            if first:
                s.sendall(first)
            socks.append(s)
        started = time.monotonic()
        ends = [(_recv_all(s, 15), time.monotonic() - started) for s in socks]
        for s in socks:
            s.close()
        return ends

    ends = await threads.deferToThread(stall)
    for _, after in ends:
        assert after < 8  # request_header_timeout 1 s (+ 1 s, the sweep's second)
    await _settled(listener, fds, failures + 3)
    assert listener.stack.factory.timeouts.counts["header"] == timeouts + 3


@pytest.mark.parametrize("http2", [True, False])
@pytest_twisted.ensureDeferred
async def test_stalled_handshakes_are_cut_at_the_head_deadline(pki, http2):
    """(http2 on, the default: the ALPN negotiator times the handshake; off:
    the HTTP/1.1 front itself)"""
    await with_listener(pki, _stalled, http2=http2, request_header_timeout=1.0)


@hostile
async def test_resets_and_fins_mid_handshake(listener):
    fds, failures = _fds(), listener.stats.tls_failures

    def resets():
        _, _, _, hello = _client_hello(listener.pki)
        for first in (b"", hello[:20], hello):
            s = socket.create_connection(("127.0.0.1", listener.number), timeout=10)
            if first:
                s.sendall(first)
                time.sleep(0.05)
            _rst(s)
        # a FIN at once, and after half a ClientHello (the accept loop's eager
        # first read may get the 0 bytes)
        for first in (b"", hello[:20]):
            with socket.create_connection(("127.0.0.1", listener.number), timeout=10) as s:
                s.sendall(first)
                s.shutdown(socket.SHUT_WR)
                _recv_all(s)

    await threads.deferToThread(resets)
    await _settled(listener, fds, failures + 5)


@hostile
async def test_alerts_mid_handshake(listener):
    """A fatal alert in place of the ClientHello and after the ServerHello."""
    fds, failures = _fds(), listener.stats.tls_failures

    def alerts():
        alert = b"\x15\x03\x03\x00\x02\x02\x28"  # fatal handshake_failure, plaintext
        with socket.create_connection(("127.0.0.1", listener.number), timeout=10) as s:
            s.sendall(alert)
            _recv_all(s)
        _, _, _, hello = _client_hello(listener.pki)
        with socket.create_connection(("127.0.0.1", listener.number), timeout=10) as s:
            s.sendall(hello)
            s.recv(65536)
            s.sendall(alert)
            _recv_all(s)

    await threads.deferToThread(alerts)
    await _settled(listener, fds, failures + 2)


# -- after the handshake -------------------------------------------------------------------


def _tls(listener, **kw):
    ctx = _context(listener.pki, **kw)
    raw = socket.create_connection(("127.0.0.1", listener.number), timeout=20)
    return ctx.wrap_socket(raw, server_hostname="localhost")


@hostile
async def test_reset_mid_response(listener):
    fds = _fds()

    def reset():
        s = _tls(listener)
        s.sendall(b"GET /app/download?bytes=%d HTTP/1.1\r\nHost: localhost\r\n\r\n"
                  % (32 << 20))
        got = 0
        while got < 1 << 20:
            got += len(s.recv(65536))
        _rst(s)

    await threads.deferToThread(reset)
    await _settled(listener, fds)


def _handshaken(listener):
    """A raw socket, and the client SSLObject (memory BIOs) that completed a handshake on it."""
    obj, cin, cout, hello = _client_hello(listener.pki)
    s = socket.create_connection(("127.0.0.1", listener.number), timeout=10)
    s.sendall(hello)
    while True:
        data = s.recv(65536)
        assert data
        cin.write(data)
        try:
            obj.do_handshake()
            break
        except pyssl.SSLWantReadError:
            out = cout.read()
            if out:
                s.sendall(out)
    s.sendall(cout.read())
    return s, obj, cin, cout


@hostile
async def test_plaintext_alert_and_garbage_after_the_handshake(listener):
    """Records that do not decrypt (a plaintext fatal alert, garbage): the
    connection ends, the next client is served (no TLS failure: the handshake
    had completed)."""
    fds, failures = _fds(), listener.stats.tls_failures

    def alert():
        for junk in (b"\x15\x03\x03\x00\x02\x02\x28", b"\x17\x03\x03\x00\x20" + b"x" * 32):
            s, _, _, _ = _handshaken(listener)
            s.sendall(junk)
            _recv_all(s)
            s.close()

    await threads.deferToThread(alert)
    await _settled(listener, fds, failures)


@hostile
async def test_tls12_renegotiation_is_refused(listener):
    """A TLS 1.2 client asks to renegotiate: refused, the connection serves on or ends."""
    from OpenSSL import SSL

    fds = _fds()

    def renegotiate():
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
        ctx.load_verify_locations(listener.pki["ca"])
        raw = socket.create_connection(("127.0.0.1", listener.number), timeout=10)
        raw.settimeout(None)  # pyOpenSSL on a blocking socket
        c = SSL.Connection(ctx, raw)
        c.set_tlsext_host_name(b"localhost")
        c.set_connect_state()
        c.do_handshake()
        results = []
        for _ in range(3):
            try:
                c.renegotiate()
                c.do_handshake()
                results.append("renegotiated")
            except SSL.Error as e:
                results.append(repr(e))
                break
        try:
            c.sendall(b"GET /app/echo HTTP/1.1\r\nHost: localhost\r\n\r\n")
            got = c.recv(65536)
            results.append(got[:12])
        except (SSL.Error, OSError) as e:
            results.append(repr(e))
        raw.close()
        return results

    results = await threads.deferToThread(renegotiate)
    assert "renegotiated" not in results, results
    await _settled(listener, fds)


@hostile
async def test_records_after_close_notify_are_ignored(listener):
    """
    A request, close_notify and garbage in one segment: the request is
    answered, then our close_notify ends the connection (as a FIN after a
    complete request does on plain TCP), the garbage after the client's
    close_notify is never read (no TLS error logged), nothing is left behind.
    """
    fds = _fds()
    events: list = []

    def after_close():
        s, obj, cin, cout = _handshaken(listener)
        obj.write(b"GET /app/echo HTTP/1.1\r\nHost: localhost\r\n\r\n")
        request = cout.read()
        try:
            obj.unwrap()
        except pyssl.SSLWantReadError:
            pass
        s.sendall(request + cout.read() + os.urandom(3000))
        cin.write(_recv_all(s))
        s.close()
        answer = b""
        while True:
            try:
                piece = obj.read(65536)
            except pyssl.SSLZeroReturnError:  # our close_notify, after the answer
                break
            assert piece, answer
            answer += piece
        return answer, obj.unwrap()  # which completes the shutdown

    globalLogPublisher.addObserver(events.append)
    try:
        answer, unwrapped = await threads.deferToThread(after_close)
        assert answer.startswith(b"HTTP/1.1 200 ") and unwrapped is None
        await _settled(listener, fds)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not [e for e in events if "TLS" in e.get("log_format", "")]


def _buffered(transport) -> int:
    return len(transport.dataBuffer) + transport._tempDataLen + sum(
        map(len, transport._tempDataBuffer))


@hostile
async def test_upload_burst_while_the_node_does_not_read(listener):
    """
    A 64 MiB upload to a node that reads nothing: the proxy stops reading the
    client once its connection to the node is full (its buffers stay bounded),
    and closing the client releases everything.
    """
    stack = listener.stack
    node = stack.servers[0]
    build = node.buildProtocol
    nodes = []

    def deaf(addr):  # the node reads nothing from new connections
        p = build(addr)
        made = p.connectionMade

        def connectionMade():
            made()
            p.transport.pauseProducing()

        p.connectionMade = connectionMade
        nodes.append(p)
        return p

    node.buildProtocol = deaf
    await stack.pool.closeCachedConnections()
    for conn in list(stack.reactor.getReaders()):  # the proxy's idle node connections
        if conn.__class__.__name__ == "Client" and \
                conn.getPeer().port == node.port.getHost().port:
            conn.abortConnection()
    fds = _fds()
    size = 64 << 20
    sent = [0]

    def upload():
        s = _tls(listener)
        s.settimeout(3)
        s.sendall(b"POST /app/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n"
                  b"\r\n" % size)
        chunk = b"x" * 65536
        try:
            while sent[0] < size:
                sent[0] += s.send(chunk)
        except TimeoutError:
            pass
        return s

    s = await threads.deferToThread(upload)
    try:
        assert nodes
        assert sent[0] < size // 4
        (client,) = list(stack.factory._clients)
        tls = client.transport
        assert _buffered(tls.transport) < 1 << 20
        assert tls.transport.fileno() not in stack.reactor._reads  # not read any more
        to_node = [c for c in stack.reactor.getWriters() + stack.reactor.getReaders()
                   if c.__class__.__name__ == "Client"
                   and c.getPeer().port == node.port.getHost().port]
        assert to_node
        assert sum(_buffered(c) for c in to_node) < 8 << 20
    finally:
        s.close()
    for p in nodes:  # (paused, the proxy does not see the client's FIN until then)
        p.transport.abortConnection()
    await _until(lambda: not stack.factory._clients)
    node.buildProtocol = build
    await _settled(listener, fds)


@hostile
async def test_tls_connections_good_and_bad_are_freed_without_the_cyclic_gc(listener):
    """
    Closed TLS connections (served, garbage, reset mid-handshake, stalled then
    closed by the client, h2 without a request) leave no reference cycle: their
    objects go by reference counting, as plain TCP ones do
    (tests/integration/test_accept_loop.py).  (An h2 connection that served
    requests: test_proxy_h2's test_served_http2_requests_leave_no_reference_cycle.)
    """
    import gc

    from modcluster.proxy.alpn import _Negotiator
    from modcluster.proxy.client import ClientProtocol
    from modcluster.proxy.h2 import H2Protocol
    from modcluster.proxy.stdtls import TLSServerConnection

    kinds = (TLSServerConnection, ClientProtocol, _Negotiator, H2Protocol)

    def clients():
        _, _, _, hello = _client_hello(listener.pki)
        for _ in range(3):
            assert listener.served()
            with socket.create_connection(("127.0.0.1", listener.number), timeout=10) as s:
                s.sendall(b"\x00" * 100)
                _recv_all(s)
            s = socket.create_connection(("127.0.0.1", listener.number), timeout=10)
            s.sendall(hello[:30])
            time.sleep(0.05)
            _rst(s)
            with socket.create_connection(("127.0.0.1", listener.number), timeout=10) as s:
                s.sendall(hello)
                s.recv(65536)
            h2 = _tls(listener, alpn=("h2",))
            h2.close()

    gc.collect()
    gc.disable()
    try:
        # (what earlier tests of this process may still hold is not counted)
        before = {id(o) for o in gc.get_objects() if isinstance(o, kinds)}
        await threads.deferToThread(clients)
        await _until(lambda: not listener.stack.factory._clients)
        await task.deferLater(listener.stack.reactor, 0.1, lambda: None)
        alive = [o for o in gc.get_objects() if isinstance(o, kinds) and id(o) not in before]
        assert alive == [], [type(o).__name__ for o in alive]
    finally:
        gc.enable()


# -- a process out of file descriptors -------------------------------------------------------

_OUT_OF_FDS = textwrap.dedent("""
    import os, resource, sys
    from twisted.internet import reactor, stdio
    from twisted.internet.protocol import Protocol
    from modcluster.proxy.accept import AcceptingEndpoint
    from modcluster.proxy.alpn import ALPN_PROTOCOLS, NegotiatingFactory
    from modcluster.tls import server_endpoint
    from tests.integration.test_proxy_http import Stack

    pem, node_port = sys.argv[1], int(sys.argv[2])
    stack = Stack()
    stack.register("nA", node_port)
    endpoint = AcceptingEndpoint(server_endpoint(
        reactor, f"ssl:0:interface=127.0.0.1:privateKey={pem}", ALPN_PROTOCOLS, "stdlib"))

    class Cmd(Protocol):
        def dataReceived(self, data):
            words = data.split()
            if words[0] == b"limit":  # N descriptors more than are open now
                used = len(os.listdir("/proc/self/fd")) - 1  # (listdir's own)
                spare = int(words[1])
                resource.setrlimit(resource.RLIMIT_NOFILE, (used + spare, used + spare))
                print("LIMITED", used + spare, flush=True)
            elif words[0] == b"state":
                node = stack.registry.table.by_route["nA"]
                print("IN_ERROR", node.rt.in_error, flush=True)

    stdio.StandardIO(Cmd())
    endpoint.listen(NegotiatingFactory(stack.factory)).addCallback(
        lambda port: print("PORT", port.getHost().port, flush=True))
    reactor.run()
""")


class _SlowNode(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """An HTTP/1.1 node in threads: C{/…/slow} answers after a second, the rest at once."""

    daemon_threads = True
    allow_reuse_address = True

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = self.rfile.readline()
                    if not line:
                        return
                    head += line
                if b"/slow" in head.split(b"\r\n", 1)[0]:
                    time.sleep(1.0)
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def __init__(self):
        super().__init__(("127.0.0.1", 0), self.Handler)


def test_out_of_descriptors_answers_503_and_keeps_the_node(pki):
    """
    A TLS listener in a process whose descriptors run out: the client whose
    node connection cannot be opened (EMFILE on socket()) gets 503 with
    Retry-After; the node is not put in error (the shortage is the proxy's),
    the clients before it are served, and once descriptors are free again
    the next client is served at once.
    """
    import threading

    node = _SlowNode()
    threading.Thread(target=node.serve_forever, daemon=True).start()
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen([sys.executable, "-c", _OUT_OF_FDS, pki["pem"],
                             str(node.server_address[1])],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    ctx = _context(pki)
    socks = []
    try:
        port = int(proc.stdout.readline().split()[1])

        def request(path):
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            socks.append(s)
            s.sendall(b"GET /app/%s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path)
            return s

        warm = request(b"ok")  # (what a first request opens for good, and a pooled
        assert _read_response(warm)[1] == b"ok"  # node connection)
        warm.close()
        socks.clear()
        time.sleep(0.3)
        # 4 spare descriptors: the first client (the pooled node connection), the
        # second (its own node connection), then a third client's socket takes the
        # last one and its node connection cannot be opened
        proc.stdin.write("limit 4\n")
        proc.stdin.flush()
        assert proc.stdout.readline().startswith("LIMITED")
        slow = [request(b"slow"), request(b"slow")]
        time.sleep(0.3)  # (both node connections open)
        third = request(b"ok")
        head, _, _ = _read_response(third)
        assert head.startswith(b"HTTP/1.1 503") and b"Retry-After:" in head, head
        proc.stdin.write("state\n")
        proc.stdin.flush()
        assert proc.stdout.readline().split() == ["IN_ERROR", "False"]
        for s in slow:
            head, body, _ = _read_response(s)
            assert head.startswith(b"HTTP/1.1 200") and body == b"ok"
        for s in socks:
            s.close()
        time.sleep(0.3)  # (the proxy sees the closes)
        again = request(b"ok")
        head, body, _ = _read_response(again)
        assert head.startswith(b"HTTP/1.1 200") and body == b"ok", head
        again.close()
    finally:
        for s in socks:
            s.close()
        proc.kill()
        proc.wait(10)
        node.shutdown()
        node.server_close()
