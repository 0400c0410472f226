"""
Adversarial half-closes on the stdlib TLS layer (modcluster/proxy/stdtls.py)
over real sockets on 127.0.0.1: clients that end their sending (close_notify
or a FIN) and then misbehave (never read, send more, reset), during uploads,
100-continue and pipelined requests.  Whatever they do, no connection, node
request or node connection is left behind, and no error is logged.
"""

from __future__ import annotations

import socket
import struct
import ssl as pyssl

import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.logger import globalLogPublisher

from tests.integration.test_proxy_stdtls import _context, with_listener
from tests.support.waiting import until as _until

trustme = pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = trustme.CA()
    d = tmp_path_factory.mktemp("redteam-tls")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    pem = d / "server.pem"
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(pem))
    return {"ca": str(d / "ca.pem"), "pem": str(pem)}


class _Raw:
    """A TLS client on a real socket whose records are moved by hand."""

    def __init__(self, port, pki, alpn=("http/1.1",), rcvbuf=None):
        ctx = _context(pki, alpn)
        self.incoming, self.outgoing = pyssl.MemoryBIO(), pyssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(20)
        self.sock.connect(("127.0.0.1", port))
        while True:
            try:
                self.tls.do_handshake()
                break
            except pyssl.SSLWantReadError:
                self.flush()
                data = self.sock.recv(65536)
                assert data, "closed during the handshake"
                self.incoming.write(data)
        self.flush()

    def flush(self):
        if self.outgoing.pending:
            self.sock.sendall(self.outgoing.read())

    def send(self, data):
        self.tls.write(data)
        self.flush()

    def close_notify(self):
        try:
            self.tls.unwrap()
        except pyssl.SSLWantReadError:
            pass
        self.flush()

    def read_all(self, timeout=10):
        """Read until the end: (plaintext, "close_notify" / "eof" / "reset")."""
        self.sock.settimeout(timeout)
        data = b""
        while True:
            try:
                piece = self.tls.read(65536)
            except pyssl.SSLWantReadError:
                try:
                    raw = self.sock.recv(65536)
                except ConnectionResetError:
                    return data, "reset"
                if not raw:
                    self.incoming.write_eof()
                    if not self.incoming.pending:
                        return data, "eof"
                else:
                    self.incoming.write(raw)
                continue
            except pyssl.SSLZeroReturnError:
                return data, "close_notify"
            except pyssl.SSLError:
                return data, "eof"
            if not piece:
                return data, "close_notify"
            data += piece

    def close(self):
        self.sock.close()


def _errors():
    found = []

    def observer(event):
        if event.get("isError") or event.get("log_failure") is not None:
            found.append(event)

    globalLogPublisher.addObserver(observer)
    return found, lambda: globalLogPublisher.removeObserver(observer)


def _only_idle(stack) -> bool:
    """Every node connection left is idle in its pool (none carries a request)."""
    fw = stack.factory.forwarders["http"]
    return all(set(p.conns) == set(p.idle) and all(c.ex is None for c in p.conns)
               for p in list(fw._pools.values()) + fw._draining)


async def _settled(stack):
    await _until(lambda: not stack.factory._clients)
    await _until(lambda: stack.in_flight() == 0)


GET = b"GET /app/echo HTTP/1.1\r\nHost: localhost\r\n\r\n"


@pytest_twisted.ensureDeferred
async def test_close_notify_then_application_data_is_not_read(pki):
    """Records after close_notify (in the same segment) are dropped, not parsed
    as another request."""

    async def check(stack, port, pki):
        stack.serve("nA")

        def run():
            c = _Raw(port, pki)
            try:
                c.tls.write(GET)
                try:
                    c.tls.unwrap()
                except pyssl.SSLWantReadError:
                    pass
                first = c.outgoing.read()
                # a second request encrypted after our close_notify: write()
                # refuses, so a second connection's keys cannot be used; send
                # garbage records and plaintext instead
                c.sock.sendall(first + b"\x17\x03\x03\x00\x05hello" + GET)
                return c.read_all()
            finally:
                c.close()

        found, stop = _errors()
        try:
            data, how = await threads.deferToThread(run)
        finally:
            stop()
        assert data.count(b"HTTP/1.1 200 ") == 1, data
        assert how == "close_notify", how
        await _settled(stack)
        assert not found, found

    await with_listener(pki, check)


@pytest_twisted.ensureDeferred
async def test_close_notify_then_never_reading_a_large_answer_is_cut(pki):
    """A client that half-closes after a large download's request and never
    reads: the answer is not buffered whole, and the send timeout cuts it."""

    async def check(stack, port, pki):
        stack.serve("nA")
        size = 64 * 1024 * 1024

        def run():
            c = _Raw(port, pki, rcvbuf=4096)
            c.send(b"GET /app/download?bytes=%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % size)
            c.close_notify()
            return c

        c = await threads.deferToThread(run)
        try:
            buffered: list[int] = []

            def blocked() -> bool:
                # (the factory's clients include connections still negotiating)
                for client in list(stack.factory._clients):
                    if getattr(client, "_blocked", False):
                        tcp = client.transport.transport
                        buffered.append(len(tcp.dataBuffer) + tcp._tempDataLen + sum(
                            map(len, tcp._tempDataBuffer)))
                        return True
                return False

            await _until(blocked, timeout=20)
            assert buffered[-1] < 4 * 1024 * 1024
            await _settled(stack)  # client_timeout=1: cut within a few seconds
            await _until(lambda: _only_idle(stack))
        finally:
            c.close()

    await with_listener(pki, check, client_timeout=1)


@pytest.mark.parametrize("how", ["close_notify", "fin"])
@pytest.mark.parametrize("request_bytes", [
    # an upload cut short
    b"POST /app/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000\r\n\r\n"
    + b"x" * 50_000,
    # 100-continue: the head, no body
    b"POST /app/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n"
    b"Expect: 100-continue\r\n\r\n",
    # a chunked upload without its last chunk
    b"POST /app/upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n",
    # a complete request, then a partial pipelined one
    GET + b"POST /app/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nab",
    GET + b"GET /app/ec",
], ids=["upload", "100-continue", "chunked", "then-partial-body", "then-partial-head"])
@pytest_twisted.ensureDeferred
async def test_end_of_sending_in_a_partial_request_closes_and_releases(pki, how,
                                                                        request_bytes):
    async def check(stack, port, pki):
        stack.serve("nA")

        def run():
            c = _Raw(port, pki)
            try:
                c.send(request_bytes)
                if how == "close_notify":
                    c.close_notify()
                else:
                    c.sock.shutdown(socket.SHUT_WR)
                return c.read_all()
            finally:
                c.close()

        found, stop = _errors()
        try:
            data, ended = await threads.deferToThread(run)
        finally:
            stop()
        assert b"HTTP/1.1 200 " not in data or request_bytes.startswith(GET), data
        assert ended in ("close_notify", "eof", "reset")
        await _settled(stack)
        await _until(lambda: _only_idle(stack))
        assert not found, found

    await with_listener(pki, check)


@pytest_twisted.ensureDeferred
async def test_close_notify_then_reset_while_answered(pki):
    """close_notify after a slow request, then a reset before the answer: the
    node request is let go, nothing is logged as an error."""

    async def check(stack, port, pki):
        stack.serve("nA")

        def run():
            c = _Raw(port, pki)
            c.send(b"GET /app/slow?ms=300 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            c.close_notify()
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()

        found, stop = _errors()
        try:
            await threads.deferToThread(run)
            await _settled(stack)
        finally:
            stop()
        assert not found, found

    await with_listener(pki, check)


def _h2_client():
    from h2.config import H2Configuration
    from h2.connection import H2Connection

    c = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    return c


_BASE = [(b":scheme", b"https"), (b":authority", b"localhost")]


@pytest_twisted.ensureDeferred
async def test_h2_close_notify_then_never_reading_is_cut(pki):
    """HTTP/2: a complete stream with a large answer, then close_notify, and
    the client never reads (nor sends WINDOW_UPDATE): the stream and the
    connection are cut by the send timeout, the node connection let go."""

    async def check(stack, port, pki):
        stack.serve("nA")
        c = _h2_client()
        c.increment_flow_control_window(2**30)
        c.update_settings({4: 2**31 - 1})  # INITIAL_WINDOW_SIZE: no flow control stop
        c.send_headers(1, [(b":method", b"GET"),
                           (b":path", b"/app/download?bytes=%d" % (64 << 20)), *_BASE],
                       end_stream=True)

        def run():
            raw = _Raw(port, pki, alpn=("h2",), rcvbuf=4096)
            raw.send(c.data_to_send())
            raw.close_notify()
            return raw

        raw = await threads.deferToThread(run)
        try:
            found, stop = _errors()
            try:
                await _settled(stack)
                await _until(lambda: _only_idle(stack))
            finally:
                stop()
            assert not found, found
        finally:
            raw.close()

    await with_listener(pki, check, client_timeout=1)


@pytest.mark.parametrize("how", ["close_notify", "fin"])
@pytest_twisted.ensureDeferred
async def test_h2_goaway_and_new_streams_then_end_of_sending(pki, how):
    """HTTP/2: the client's own GOAWAY, a new stream after it, a stream reset
    by the client, then the end of its sending: complete streams are
    answered, the rest let go, no error logged."""
    from h2.errors import ErrorCodes
    from hyperframe.frame import GoAwayFrame

    async def check(stack, port, pki):
        stack.serve("nA")
        c = _h2_client()
        c.send_headers(1, [(b":method", b"GET"), (b":path", b"/app/slow?ms=200"), *_BASE],
                       end_stream=True)
        c.send_headers(3, [(b":method", b"POST"), (b":path", b"/app/upload"), *_BASE,
                           (b"content-length", b"100")])
        c.send_data(3, b"abc")
        c.reset_stream(3, ErrorCodes.CANCEL)
        c.send_headers(5, [(b":method", b"GET"), (b":path", b"/app/echo"), *_BASE],
                       end_stream=True)
        data = c.data_to_send()
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = 0
        data += goaway.serialize()
        c2 = _h2_client()  # (frames h2 would no longer send after its GOAWAY)
        c2.send_headers(7, [(b":method", b"GET"), (b":path", b"/app/echo"), *_BASE],
                        end_stream=True)
        frames7 = c2.data_to_send()
        # only the HEADERS frame of stream 7: skip the preface and SETTINGS
        data += frames7[frames7.index(b"\x01\x05\x00\x00\x00\x07") - 5:]

        def run():
            raw = _Raw(port, pki, alpn=("h2",))
            try:
                raw.send(data)
                if how == "close_notify":
                    raw.close_notify()
                else:
                    raw.sock.shutdown(socket.SHUT_WR)
                return raw.read_all()
            finally:
                raw.close()

        found, stop = _errors()
        try:
            out, ended = await threads.deferToThread(run)
            await _settled(stack)
            await _until(lambda: _only_idle(stack))
        finally:
            stop()
        assert ended in ("close_notify", "eof", "reset")
        assert not found, found

    await with_listener(pki, check)
