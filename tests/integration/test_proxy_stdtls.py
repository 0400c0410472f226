"""
The stdlib TLS engine (modcluster/proxy/stdtls.py) of the proxy's ssl:
listeners over real sockets on 127.0.0.1, in front of in-process HTTP/1.1
nodes (test_proxy_http's Stack): Python ssl and curl (default ALPN offer),
HTTP/2 by ALPN, keep-alive, close_notify, session resumption with tickets,
a client that stops reading (bounded buffering), a failed handshake, and the
listener built by tls.server_endpoint as tap.py builds it.  Every wait is
bounded.
"""

from __future__ import annotations

import shutil
import socket
import time
import ssl as pyssl
import subprocess

import pytest
import pytest_twisted
from twisted.internet import defer, task, threads
from twisted.logger import globalLogPublisher

from modcluster.proxy.alpn import ALPN_PROTOCOLS, NegotiatingFactory
from modcluster.proxy.stdtls import TLSServerConnection, TLSServerFactory
from modcluster.tls import server_endpoint

from tests.integration.test_proxy_http2 import Client as H2Client
from tests.integration.test_proxy_http import Stack
from tests.support.waiting import until as _until

trustme = pytest.importorskip("trustme")
CURL = shutil.which("curl")
OPENSSL = shutil.which("openssl")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = trustme.CA()
    d = tmp_path_factory.mktemp("stdtls")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    pem = d / "server.pem"
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(pem))
    return {"ca": str(d / "ca.pem"), "pem": str(pem)}



async def with_listener(pki, fn, **stack_args):
    """Run C{fn(stack, port, pki)} with a Stack and an ssl: listener (stdlib engine,
    h2 offered) built by tls.server_endpoint as tap.py builds it."""
    stack = Stack(**stack_args)
    endpoint = server_endpoint(stack.reactor,
                               f"ssl:0:interface=127.0.0.1:privateKey={pki['pem']}",
                               ALPN_PROTOCOLS, "stdlib")
    port = await endpoint.listen(NegotiatingFactory(stack.factory))
    assert isinstance(port.factory, TLSServerFactory)
    try:
        d = defer.ensureDeferred(fn(stack, port.getHost().port, pki))
        d.addTimeout(60, stack.reactor)
        await d
    finally:
        await port.stopListening()
        await stack.stop()


def tls_test(fn):
    @pytest_twisted.ensureDeferred
    async def run(pki):
        await with_listener(pki, fn)

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


def _context(pki, alpn=("http/1.1",), **kw):
    ctx = pyssl.create_default_context(cafile=pki["ca"])
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def _read_response(s, buf=b""):
    """One HTTP/1.1 response with Content-Length from TLS socket C{s}: (head, body, rest)."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError(buf)
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = bytearray(rest)
    while len(body) < length:
        chunk = s.recv(1 << 20)
        if not chunk:
            raise EOFError(len(body))
        body += chunk
    return head, bytes(body[:length]), bytes(body[length:])


def _keep_alive(port, pki, count, session=None, context=None):
    """Blocking: C{count} requests on one connection; (heads, bodies, ALPN, reused, session)."""
    ctx = context or _context(pki)
    heads, bodies = [], []
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            rest = b""
            for i in range(count):
                s.sendall(b"GET /app/echo?i=%d HTTP/1.1\r\nHost: localhost\r\n"
                          b"Cookie: JSESSIONID=x\r\n\r\n" % i)
                head, body, rest = _read_response(s, rest)
                heads.append(head)
                bodies.append(body)
            return heads, bodies, s.selected_alpn_protocol(), s.session_reused, s.session


@tls_test
async def test_keep_alive_requests_over_python_ssl(stack, port, pki):
    """Many requests on one connection; the node sees them as https."""
    stack.serve("nA")
    heads, bodies, alpn, _, _ = await threads.deferToThread(_keep_alive, port, pki, 50)
    assert alpn == "http/1.1"
    assert all(h.startswith(b"HTTP/1.1 200") for h in heads)
    assert [b.split(b"\n")[1] for b in bodies] == [b"GET /app/echo?i=%d" % i
                                                   for i in range(50)]
    assert b"X-Forwarded-Proto: https" in bodies[0].split(b"\n")
    clients = [c for c in stack.factory._clients]
    assert all(isinstance(c.transport, TLSServerConnection) for c in clients)
    await _until(lambda: stack.in_flight() == 0)


def _close_notify(port, pki, path=b"/app/echo", wait=0.0):
    """Blocking: a Connection: close request; the server's close_notify ends the stream."""
    ctx = _context(pki)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        s = ctx.wrap_socket(raw, server_hostname="localhost")
        s.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % path)
        if wait:
            time.sleep(wait)  # a client that reads late
        data = b""
        while True:
            chunk = s.recv(65536)  # b"" on close_notify (a TCP close without it: error)
            if not chunk:
                break
            data += chunk
        s.unwrap()  # our close_notify answers theirs: both sides shut down cleanly
        return data


@tls_test
async def test_connection_close_ends_with_close_notify(stack, port, pki):
    stack.serve("nA")
    data = await threads.deferToThread(_close_notify, port, pki)
    assert data.startswith(b"HTTP/1.1 200")
    # a large answer to a client that reads late, and the proxy's own answer
    # (not send_last's path: these are TLS connections)
    data = await threads.deferToThread(_close_notify, port, pki,
                                       b"/app/download?bytes=2000000", 0.3)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and len(body) == 2_000_000
    data = await threads.deferToThread(_close_notify, port, pki, b"/nowhere")
    assert data.startswith(b"HTTP/1.1 404")


def _ends_sending(port, pki, request, *, how="close_notify", version=None,
                  alpn=("http/1.1",)):
    """
    Blocking: send C{request} with Python's ssl (an C{SSLObject} on a real
    socket, its records moved by hand so that C{unwrap()} sends close_notify
    and returns at once: an C{SSLSocket}'s C{unwrap()} calls C{SSL_shutdown}
    twice and refuses an answer that is already there), then end the sending
    side: C{close_notify} (C{unwrap()}) or a TCP FIN without it (C{"fin"});
    then read the answers.  Returns (the bytes read, how the stream ended:
    "close_notify", "eof" without one, or "reset").
    """
    ctx = _context(pki, alpn)
    if version is not None:
        ctx.maximum_version = getattr(pyssl.TLSVersion, version)
    incoming, outgoing = pyssl.MemoryBIO(), pyssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:

        def flush():
            if outgoing.pending:
                raw.sendall(outgoing.read())

        def receive() -> bool:
            try:
                data = raw.recv(65536)
            except ConnectionResetError:
                return False
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()
            return bool(data)

        while True:
            try:
                tls.do_handshake()
                break
            except pyssl.SSLWantReadError:
                flush()
                assert receive(), "closed during the handshake"
        flush()
        tls.write(request)
        if how == "close_notify":
            try:
                tls.unwrap()
            except pyssl.SSLWantReadError:
                pass  # ours is written; the server's is not here yet
            flush()
        else:
            flush()
            raw.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            try:
                piece = tls.read(65536)
            except pyssl.SSLWantReadError:
                if not receive() and not incoming.eof:
                    return data, "reset"
                continue
            except pyssl.SSLZeroReturnError:
                return data, "close_notify"
            except pyssl.SSLEOFError:
                return data, "eof"
            except pyssl.SSLError:
                return data, "reset"
            if not piece:
                return data, "close_notify"
            data += piece


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
@pytest.mark.parametrize("how", ["close_notify", "fin"])
@pytest_twisted.ensureDeferred
async def test_client_that_ends_its_sending_gets_its_answers(pki, version, how):
    """
    A client that sends close_notify (or a TCP FIN without one) right after
    complete requests gets every answer, then our close_notify and the close,
    as over plain TCP (test_close_answers) and from httpd and HAProxy: the
    requests are framed by their heads and lengths, so the end of the
    client's sending adds nothing to them; the close only waits for the
    answers.  After a partial request the connection ends at once, unanswered.
    Both TLS versions: TLS 1.3 lets the receiver of close_notify write on,
    and a TLS 1.2 client reads what comes before the server's close_notify.
    """

    async def check(stack, port, pki):
        stack.serve("nA")
        keep = b"GET /app/slow?ms=300 HTTP/1.1\r\nHost: localhost\r\n\r\n"
        echo = b"GET /app/echo HTTP/1.1\r\nHost: localhost\r\n\r\n"
        for request, answers in [
                (keep, 1),  # a keep-alive request whose node is slow
                (keep.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"), 1),
                (keep + echo, 2),  # pipelined
                (echo, 1),
                (b"POST /app/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n\r\n"
                 b"abc", 1),
        ]:
            data, ended = await threads.deferToThread(
                _ends_sending, port, pki, request, how=how, version=version)
            assert data.count(b"HTTP/1.1 200 ") == answers, (request, data)
            assert ended == "close_notify", (request, data, ended)
        for partial in [b"GET /app/echo HTTP/1.1\r\nHost: loc",
                        b"POST /app/echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 9\r\n"
                        b"\r\nabc"]:
            data, ended = await threads.deferToThread(
                _ends_sending, port, pki, partial, how=how, version=version)
            assert data == b"", (partial, data)
        await _until(lambda: not stack.factory._clients)
        await _until(lambda: stack.in_flight() == 0)

    await with_listener(pki, check)


@pytest.mark.parametrize("how", ["close_notify", "fin"])
@pytest_twisted.ensureDeferred
async def test_h2_client_that_ends_its_sending_gets_its_complete_streams(pki, how):
    """
    HTTP/2: after the client's close_notify (or FIN), the streams it sent
    whole are answered (a slow one too), a GOAWAY follows, then our
    close_notify; a stream whose body was still coming is reset (CANCEL).
    """
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.errors import ErrorCodes
    from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame

    async def check(stack, port, pki):
        stack.serve("nA")
        c = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        c.initiate_connection()
        base = [(b":scheme", b"https"), (b":authority", b"localhost")]
        c.send_headers(1, [(b":method", b"GET"), (b":path", b"/app/slow?ms=300"), *base],
                       end_stream=True)
        c.send_headers(3, [(b":method", b"GET"), (b":path", b"/app/echo"), *base],
                       end_stream=True)
        c.send_headers(5, [(b":method", b"POST"), (b":path", b"/app/echo"), *base,
                           (b"content-length", b"10")])
        c.send_data(5, b"abc")
        data, ended = await threads.deferToThread(
            _ends_sending, port, pki, c.data_to_send(), how=how, alpn=("h2",))
        assert ended == "close_notify", (data, ended)
        frames = []
        while data:
            frame, length = Frame.parse_frame_header(memoryview(data[:9]))
            frame.parse_body(memoryview(data[9:9 + length]))
            frames.append(frame)
            data = data[9 + length:]
        ends = [f.stream_id for f in frames
                if isinstance(f, DataFrame) and "END_STREAM" in f.flags]
        assert sorted(ends) == [1, 3], frames
        assert [f.stream_id for f in frames if isinstance(f, HeadersFrame)] == ends
        resets = [f for f in frames if isinstance(f, RstStreamFrame)]
        assert [(f.stream_id, f.error_code) for f in resets] == [(5, ErrorCodes.CANCEL)]
        goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
        assert [(f.error_code, f.last_stream_id) for f in goaways] == [(0, 5)]
        await _until(lambda: not stack.factory._clients)
        await _until(lambda: stack.in_flight() == 0)

    await with_listener(pki, check)


def _curl(port, pki, *extra):
    out = subprocess.run([CURL, "-sS", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                          "--max-time", "10", "--cacert", pki["ca"], *extra,
                          f"https://localhost:{port}/app/echo",
                          "--resolve", f"localhost:{port}:127.0.0.1"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
@tls_test
async def test_curl_defaults_get_http2_and_http11_on_request(stack, port, pki):
    """curl offers h2 and http/1.1 by ALPN: the negotiating factory switches on it."""
    stack.serve("nA")
    assert await threads.deferToThread(_curl, port, pki) == "2 200"
    assert await threads.deferToThread(_curl, port, pki, "--http1.1") == "1.1 200"


@tls_test
async def test_h2_client(stack, port, pki):
    stack.serve("nA")

    def run():
        c = H2Client(port, pki["ca"])
        try:
            return [c.get(f"/app/echo?i={i}") for i in range(5)]
        finally:
            c.close()

    for st in await threads.deferToThread(run):
        assert st["headers"][b":status"] == b"200"
        assert b"X-Forwarded-Proto: https" in bytes(st["body"]).split(b"\n")


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
@pytest_twisted.ensureDeferred
async def test_sessions_resume_with_tickets(pki, version):
    async def check(stack, port, pki):
        stack.serve("nA")
        ctx = _context(pki, maximum_version=getattr(pyssl.TLSVersion, version))
        _, _, _, reused, session = await threads.deferToThread(
            _keep_alive, port, pki, 1, context=ctx)
        assert not reused and session is not None and session.has_ticket
        _, bodies, _, reused, _ = await threads.deferToThread(
            _keep_alive, port, pki, 1, session=session, context=ctx)
        assert reused and bodies[0].startswith(b"nA")

    await with_listener(pki, check)


def _s_time_reuse(port):
    out = subprocess.run([OPENSSL, "s_time", "-connect", f"127.0.0.1:{port}", "-reuse",
                          "-tls1_2", "-time", "1"], capture_output=True, text=True, timeout=60)
    return out.stdout.split("session id reuse", 1)[-1]


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
@tls_test
async def test_openssl_s_time_reuse_resumes(stack, port, pki):
    """As bench/run.py measures it: s_time marks resumed connections with 'r'."""
    reuse = await threads.deferToThread(_s_time_reuse, port)
    assert reuse.count("r") > 5 and "*" not in reuse.replace("* ", ""), reuse[:300]


@tls_test
async def test_client_that_stops_reading_keeps_buffering_bounded(stack, port, pki):
    """
    A 48 MiB download to a client that does not read: the TLS layer buffers
    nothing, the TCP transport's buffer pauses the node connection; once the
    client reads, every byte arrives.
    """
    server = stack.serve("nA")
    protos = []
    build = server.buildProtocol

    def recording(addr):
        p = build(addr)
        protos.append(p)
        return p

    server.buildProtocol = recording
    size = 48 * 1024 * 1024
    ctx = _context(pki)

    def start():
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s = ctx.wrap_socket(raw, server_hostname="localhost")
        s.sendall(b"GET /app/download?bytes=%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % size)
        return s

    s = await threads.deferToThread(start)
    try:
        await _until(lambda: protos and protos[0].streaming is not None
                     and protos[0].streaming.paused)
        (client,) = list(stack.factory._clients)
        tcp = client.transport.transport
        buffered = len(tcp.dataBuffer) + tcp._tempDataLen + sum(map(len, tcp._tempDataBuffer))
        assert buffered < 2 * 1024 * 1024
        sent = size - protos[0].streaming.left
        assert sent < size // 2  # the node was stopped well before the end

        def drain():
            head, body, _ = _read_response(s)
            return head, len(body)

        head, got = await threads.deferToThread(drain)
        assert head.startswith(b"HTTP/1.1 200") and got == size
    finally:
        s.close()


@tls_test
async def test_failed_handshake_is_logged_and_the_next_client_served(stack, port, pki):
    stack.serve("nA")
    events = []
    globalLogPublisher.addObserver(events.append)

    def plain_http():
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                return s.recv(100)  # an alert, then the close
            except ConnectionResetError:
                return b""

    try:
        await threads.deferToThread(plain_http)
        await _until(lambda: any("TLS handshake from" in e.get("log_format", "")
                                 for e in events))
    finally:
        globalLogPublisher.removeObserver(events.append)
    (line,) = [e for e in events if "TLS handshake from" in e.get("log_format", "")]
    assert line["peer"].startswith("127.0.0.1:") and line["reason"]
    heads, _, _, _, _ = await threads.deferToThread(_keep_alive, port, pki, 1)
    assert heads[0].startswith(b"HTTP/1.1 200")


# -- as deployed: tap.build, reload, the fallback engine ---------------------------------


def _port_factories(service) -> list:
    """The factories of the listening ports under C{service} (started)."""
    found = []

    def walk(s):
        for child in getattr(s, "services", ()):
            waiting = getattr(child, "_waitingForPort", None)
            if waiting is not None:
                waiting.addCallback(lambda p: found.append(p.factory) or p)
            walk(child)

    walk(service)
    return found


def _served_names(port, pki, hold=None):
    """Blocking: the SAN DNS names of the certificate served, and the status line."""
    ctx = _context(pki, check_hostname=False)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            names = [v for k, v in s.getpeercert()["subjectAltName"] if k == "DNS"]
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            head, _, _ = _read_response(s)
            return names, head.split(b"\r\n", 1)[0]


def _config(pki_pem, engine="stdlib"):
    from modcluster.config import parse_config

    from tests.support.tomcat import free_loopback_ports

    mport, pport = free_loopback_ports(2)
    return pport, parse_config(f"""
[manager]
listen = ["tcp:{mport}:interface=127.0.0.1"]
[console]
listen = []
[proxy]
listen = ["ssl:{pport}:interface=127.0.0.1:privateKey={pki_pem}"]
tls_engine = "{engine}"
""")


@pytest.fixture
def certs(tmp_path):
    ca = trustme.CA()
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    first = ca.issue_cert("localhost", "first.example").private_key_and_cert_chain_pem.bytes()
    second = ca.issue_cert("localhost", "second.example").private_key_and_cert_chain_pem.bytes()
    pem = tmp_path / "server.pem"
    pem.write_bytes(first)
    return {"ca": str(tmp_path / "ca.pem"), "pem": str(pem), "second": second}


@pytest_twisted.ensureDeferred
async def test_reload_swaps_the_certificate_for_new_connections(certs):
    """
    SIGHUP's reload re-reads the certificate files of the ssl: proxy listeners:
    new connections get the new certificate, an open one goes on with its own;
    a broken file keeps the current certificate (an error line).
    """
    from twisted.internet import reactor

    from modcluster.tap import build

    port, config = _config(certs["pem"])
    service = build(config, reactor)
    service.startService()
    try:
        assert any(isinstance(f, TLSServerFactory) for f in _port_factories(service))
        names, status = await threads.deferToThread(_served_names, port, certs)
        assert "first.example" in names and status.startswith(b"HTTP/1.1 404")

        ctx = _context(certs)
        held = await threads.deferToThread(
            lambda: ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20),
                                    server_hostname="localhost"))
        try:
            with open(certs["pem"], "wb") as f:
                f.write(certs["second"])
            service.apply_config(config)  # what reload() does once the file is parsed
            names, _ = await threads.deferToThread(_served_names, port, certs)
            assert "second.example" in names

            def old_connection():
                held.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                return _read_response(held)[0]

            assert (await threads.deferToThread(old_connection)).startswith(b"HTTP/1.1 404")
        finally:
            held.close()

        events = []
        globalLogPublisher.addObserver(events.append)
        try:
            with open(certs["pem"], "wb") as f:
                f.write(b"not a certificate")
            service.apply_config(config)
        finally:
            globalLogPublisher.removeObserver(events.append)
        assert any("certificate not reloaded" in e.get("log_format", "") for e in events)
        names, _ = await threads.deferToThread(_served_names, port, certs)
        assert "second.example" in names
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_twisted_engine_is_still_selectable(certs):
    """proxy.tls_engine = "twisted": Twisted's TLS on the same description."""
    from twisted.internet import reactor
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from modcluster.tap import build

    port, config = _config(certs["pem"], "twisted")
    service = build(config, reactor)
    service.startService()
    try:
        factories = _port_factories(service)
        assert any(isinstance(f, TLSMemoryBIOFactory) for f in factories)
        assert not any(isinstance(f, TLSServerFactory) for f in factories)
        names, status = await threads.deferToThread(_served_names, port, certs)
        assert "first.example" in names and status.startswith(b"HTTP/1.1 404")
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_reload_swaps_the_certificate_in_worker_processes(certs):
    """With proxy.workers = 2, the reload reaches every worker ('tls' message)."""
    from twisted.internet import reactor

    from tests.integration.test_worker_processes import Cluster

    c = Cluster(listen=f"ssl:{{port}}:interface=127.0.0.1:privateKey={certs['pem']}")
    await c.start()
    try:
        names, _ = await threads.deferToThread(_served_names, c.pport, certs)
        assert "first.example" in names
        with open(certs["pem"], "wb") as f:
            f.write(certs["second"])
        c.service.apply_config(c.config)
        # the workers get the message asynchronously: wait until ten connections
        # in a row (spread over both workers by the kernel) have the new certificate
        streak = 0
        for _ in range(300):
            names, status = await threads.deferToThread(_served_names, c.pport, certs)
            assert status.startswith(b"HTTP/1.1 404")
            streak = streak + 1 if "second.example" in names else 0
            if streak == 10:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        assert streak == 10
    finally:
        await c.stop()


def _resume(port, ctx, session=None):
    """Blocking: one request on a new connection offering C{session}; (reused, session)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            head, _, _ = _read_response(s)
            assert head.startswith(b"HTTP/1.1 404")
            return s.session_reused, s.session


async def _resumptions(port, ctx, session, count=24):
    """How many of C{count} new connections resumed C{session} (the kernel spreads
    them over the worker processes: with a key per worker, about half would not)."""
    n = 0
    for _ in range(count):
        reused, _ = await threads.deferToThread(_resume, port, ctx, session)
        n += reused
    return n


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
@pytest_twisted.ensureDeferred
async def test_tickets_resume_on_every_worker_process_and_after_a_reload(certs, version):
    """
    proxy.workers = 2: a ticket issued by one worker resumes on the other (one key
    set made by the control process), also after a certificate reload; after a
    rotation it still resumes, and once its key is no longer kept it gets a full
    handshake on every worker.
    """
    from tests.integration.test_worker_processes import Cluster

    from modcluster.proxy.tickets import TicketKeyService

    c = Cluster(listen=f"ssl:{{port}}:interface=127.0.0.1:privateKey={certs['pem']}")
    await c.start()
    try:
        keys = next(s for s in c.service if isinstance(s, TicketKeyService))
        ctx = _context(certs, check_hostname=False,
                       maximum_version=getattr(pyssl.TLSVersion, version))
        reused, session = await threads.deferToThread(_resume, c.pport, ctx)
        assert not reused and session.has_ticket
        assert await _resumptions(c.pport, ctx, session) == 24

        with open(certs["pem"], "wb") as f:
            f.write(certs["second"])
        c.service.apply_config(c.config)
        streak = 0
        for _ in range(300):
            names, _ = await threads.deferToThread(_served_names, c.pport, certs)
            streak = streak + 1 if "second.example" in names else 0
            if streak == 10:
                break
        assert streak == 10
        assert await _resumptions(c.pport, ctx, session) == 24

        keys.rotate()  # the ticket's key is kept for decryption
        assert await _resumptions(c.pport, ctx, session) == 24
        for _ in range(keys.kept):
            keys.rotate()  # now it is not
        for _ in range(300):  # the workers get the keys asynchronously
            if not (await threads.deferToThread(_resume, c.pport, ctx, session))[0]:
                break
        assert await _resumptions(c.pport, ctx, session, 12) == 0
    finally:
        await c.stop()


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
@pytest_twisted.ensureDeferred
async def test_openssl_s_time_reuse_resumes_with_two_workers(certs):
    """As bench/run.py --workers 2 measures it: every reused connection resumes."""
    from tests.integration.test_worker_processes import Cluster

    c = Cluster(listen=f"ssl:{{port}}:interface=127.0.0.1:privateKey={certs['pem']}")
    await c.start()
    try:
        reuse = await threads.deferToThread(_s_time_reuse, c.pport)
        assert reuse.count("r") > 5 and "*" not in reuse.replace("* ", ""), reuse[:300]
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_lose_connection_closes_at_once_over_a_real_socket(pki):
    """A response then lose_connection (the proxy's Connection: close): close_notify
    goes out and the TCP connection is closed before lose_connection returns, no loop
    iteration later; the client reads the response and a clean TLS end."""
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    from modcluster.proxy._transport import lose_connection
    from modcluster.proxy.stdtls import description_context

    seen = []

    class Answer(Protocol):
        lost = False

        def dataReceived(self, data):
            self.transport.write(b"answer")
            lose_connection(self.transport)
            seen.append(self.lost)

        def connectionLost(self, reason=None):
            self.lost = True

    context = description_context(f"ssl:0:privateKey={pki['pem']}", (b"http/1.1",))
    port = reactor.listenTCP(0, TLSServerFactory(context, Factory.forProtocol(Answer),
                                                 reactor), interface="127.0.0.1")

    def client():
        ctx = _context(pki, alpn=())
        with socket.create_connection(("127.0.0.1", port.getHost().port), timeout=20) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"question")
                out = b""
                while True:
                    piece = s.recv(100)
                    if not piece:
                        return out
                    out += piece

    try:
        assert await threads.deferToThread(client) == b"answer"
        assert seen == [True]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_key_file_tickets_and_a_damaged_file_at_reload(certs, tmp_path):
    """
    proxy.tls_ticket_keys as deployed (tap.build, one process): the file's keys
    serve; a reload re-reads the file (rotated: a new key first, the old one
    after it, so the ticket issued before still resumes); a damaged file refuses
    the reload (its check names the key) and the current keys stay.
    """
    import os

    from twisted.internet import reactor

    from modcluster.config import load_config
    from modcluster.proxy import tickets
    from modcluster.tap import build

    keyfile = tmp_path / "ticket.keys"
    keyfile.write_bytes(os.urandom(160))
    from tests.support.tomcat import free_loopback_ports

    mport, port = free_loopback_ports(2)
    path = tmp_path / "modcluster.toml"
    path.write_text(f"""
[manager]
listen = ["tcp:{mport}:interface=127.0.0.1"]
[console]
listen = []
[proxy]
listen = ["ssl:{port}:interface=127.0.0.1:privateKey={certs['pem']}"]
tls_ticket_keys = "{keyfile}"
""")
    service = build(load_config(str(path)), reactor)
    service.config_path = str(path)
    service.startService()
    try:
        keys = next(s for s in service if isinstance(s, tickets.TicketKeyService))
        assert tickets.current_keys().keys == tickets.load_key_file(str(keyfile)).keys
        ctx = _context(certs, check_hostname=False)
        reused, session = await threads.deferToThread(_resume, port, ctx)
        assert not reused
        assert (await threads.deferToThread(_resume, port, ctx, session))[0]

        data = keyfile.read_bytes()
        keyfile.write_bytes(os.urandom(80) + data[:80])  # rotated: a new key first
        assert service.reload()
        first = tickets.parse_key_file(data).keys[0]
        assert keys.keys is tickets.current_keys()
        assert len(keys.keys.keys) == 2 and keys.keys.keys[1] == first
        assert (await threads.deferToThread(_resume, port, ctx, session))[0]

        current = tickets.current_keys()
        keyfile.write_bytes(b"damaged")
        events = []
        globalLogPublisher.addObserver(events.append)
        try:
            assert not service.reload()
        finally:
            globalLogPublisher.removeObserver(events.append)
        assert any("proxy.tls_ticket_keys" in str(e.get("problems", "")) for e in events)
        assert tickets.current_keys() is current
        assert (await threads.deferToThread(_resume, port, ctx, session))[0]
    finally:
        await service.stopService()
