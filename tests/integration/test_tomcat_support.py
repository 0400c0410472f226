"""The real-Tomcat test infrastructure works (tests/support/tomcat.py + the echo webapp).

Plain blocking http.client / socket code against Tomcat's own connectors on 127.0.0.1;
no txmodcluster code is involved.  Instances are shared through the session-scoped
``tomcat_factory`` so the whole module starts three JVMs.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import struct
import time
from collections.abc import Iterator, Sequence

import pytest

from tests.support.tomcat import (
    TomcatError,
    TomcatInstance,
    free_loopback_ports,
    port_accepts,
    stream_pattern,
)

pytestmark = pytest.mark.tomcat

MiB = 1024 * 1024
CPING = bytes.fromhex("1234 0001 0a")
CPONG = bytes.fromhex("4142 0001 09")


# -- helpers ------------------------------------------------------------------------


def http_request(
    node: TomcatInstance,
    method: str,
    path: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | Iterator[bytes] | None = None,
    chunked: bool = False,
    timeout: float = 30.0,
) -> tuple[http.client.HTTPResponse, bytes, int]:
    """One request on a fresh connection: (response, body, client port)."""
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        elif isinstance(body, bytes):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        client_port = conn.sock.getsockname()[1]
        if body is not None:
            if chunked:
                for piece in body:
                    if piece:
                        conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                conn.send(b"0\r\n\r\n")
            else:
                conn.send(body)
        resp = conn.getresponse()
        data = resp.read()
        return resp, data, client_port
    finally:
        conn.close()


def get_json(node: TomcatInstance, path: str, **kwargs) -> tuple[http.client.HTTPResponse, dict]:
    resp, data, _ = http_request(node, kwargs.pop("method", "GET"), path, **kwargs)
    assert resp.status == 200, data
    assert resp.getheader("Content-Type") == "application/json;charset=UTF-8"
    return resp, json.loads(data)


def ajp_string(value: bytes | None) -> bytes:
    if value is None:
        return b"\xff\xff"
    return struct.pack(">H", len(value)) + value + b"\x00"


def ajp_forward_request(
    uri: bytes,
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
    secret: bytes | None = None,
    query: bytes | None = None,
    remote_port: int | None = None,
    method_code: int = 2,
) -> bytes:
    """A minimal FORWARD_REQUEST (ajp13.md §3.1), test-local: just enough to prove
    that the connector's secret and packetSize settings reach Tomcat."""
    payload = bytearray([0x02, method_code])
    payload += ajp_string(b"HTTP/1.1") + ajp_string(uri)
    payload += ajp_string(b"127.0.0.1") + ajp_string(b"127.0.0.1") + ajp_string(b"localhost")
    payload += struct.pack(">H", 80) + b"\x00" + struct.pack(">H", len(headers))
    for name, value in headers:
        payload += ajp_string(name) + ajp_string(value)
    if secret is not None:
        payload += b"\x0c" + ajp_string(secret)
    if query is not None:
        payload += b"\x05" + ajp_string(query)
    if remote_port is not None:
        payload += b"\x0a" + ajp_string(b"AJP_REMOTE_PORT") + ajp_string(str(remote_port).encode())
    payload += b"\xff"
    return b"\x12\x34" + struct.pack(">H", len(payload)) + bytes(payload)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def ajp_exchange(port: int, packet: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send one FORWARD_REQUEST; return (status, body) once END_RESPONSE arrives."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(packet)
        status, body = None, b""
        while True:
            magic, length = struct.unpack(">2sH", recv_exact(sock, 4))
            assert magic == b"AB"
            payload = recv_exact(sock, length)
            kind = payload[0]
            if kind == 4:  # SEND_HEADERS
                (status,) = struct.unpack(">H", payload[1:3])
            elif kind == 3:  # SEND_BODY_CHUNK
                (n,) = struct.unpack(">H", payload[1:3])
                body += payload[3 : 3 + n]
            elif kind == 6:  # GET_BODY_CHUNK: no body to send
                sock.sendall(b"\x12\x34\x00\x00")
            elif kind == 5:  # END_RESPONSE
                assert status is not None
                return status, body
            else:
                raise AssertionError(f"unexpected AJP message type {kind}")


@pytest.fixture(scope="module")
def second_node(tomcat_factory) -> TomcatInstance:
    """A second configuration: other route, no AJP secret, packetSize 16384."""
    return tomcat_factory.shared("node2", ajp_secret=None, ajp_packet_size=16384)


# -- start-up and configuration ------------------------------------------------------


def test_node_is_up_on_loopback_ports(tomcat_node: TomcatInstance) -> None:
    assert tomcat_node.running
    assert tomcat_node.jvm_route == tomcat_node.route == "node1"
    assert tomcat_node.ajp_secret  # the shared node requires a secret
    assert tomcat_node.http_port != tomcat_node.ajp_port
    assert port_accepts(tomcat_node.http_port) and port_accepts(tomcat_node.ajp_port)
    # Loopback only: the connectors are bound to 127.0.0.1, not to the wildcard.
    server_xml = (tomcat_node.base_dir / "conf" / "server.xml").read_text()
    assert server_xml.count('address="127.0.0.1"') == 2
    assert 'port="-1"' in server_xml
    # start() measured itself (JVM launch to all JSPs compiled).
    assert tomcat_node.last_start_seconds is not None and tomcat_node.last_start_seconds < 60


def test_free_loopback_ports_are_distinct_and_bindable() -> None:
    ports = free_loopback_ports(5)
    assert len(set(ports)) == 5
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


# -- /echo/info.jsp -----------------------------------------------------------------


def test_info_echoes_request_facts(tomcat_node: TomcatInstance) -> None:
    resp, data, client_port = http_request(
        tomcat_node,
        "GET",
        "/echo/info.jsp?a=1&b=two%20words",
        headers=[("X-Rep", "one"), ("X-Rep", "two"), ("User-Agent", "txmc-test")],
    )
    assert resp.status == 200
    assert resp.getheader("X-Echo-Node") == "node1"
    assert resp.getheader("Set-Cookie") is None  # info never creates a session
    info = json.loads(data)
    assert info["node"] == "node1"
    assert info["method"] == "GET"
    assert info["requestURI"] == "/echo/info.jsp"
    assert info["queryString"] == "a=1&b=two%20words"
    assert info["protocol"] == "HTTP/1.1"
    assert info["scheme"] == "http" and info["isSecure"] is False
    assert info["serverName"] == "127.0.0.1"
    assert info["serverPort"] == tomcat_node.http_port
    assert info["localPort"] == tomcat_node.http_port
    assert info["remoteAddr"] == "127.0.0.1"
    assert info["remotePort"] == client_port
    assert info["remoteUser"] is None
    assert info["contextPath"] == "/echo" and info["servletPath"] == "/info.jsp"
    headers = [(n.lower(), v) for n, v in info["headers"]]
    assert [v for n, v in headers if n == "x-rep"] == ["one", "two"]
    assert ("user-agent", "txmc-test") in headers
    assert ("host", f"127.0.0.1:{tomcat_node.http_port}") in headers
    assert info["sessionId"] is None and info["requestedSessionId"] is None
    assert info["jvmRouteAttribute"] is None
    assert info["body"] is None


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"])
def test_info_accepts_any_method_and_summarises_body(tomcat_node: TomcatInstance, method) -> None:
    payload = b"hello " * 1000
    _, info = get_json(
        tomcat_node,
        "/echo/info.jsp",
        method=method,
        body=payload,
        headers=[("Content-Type", "application/octet-stream")],
    )
    assert info["method"] == method
    assert info["contentLength"] == len(payload)
    assert info["contentType"] == "application/octet-stream"
    assert info["body"] == {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


def test_head_has_headers_but_no_body(tomcat_node: TomcatInstance) -> None:
    resp, data, _ = http_request(tomcat_node, "HEAD", "/echo/info.jsp")
    assert resp.status == 200 and data == b""
    assert resp.getheader("X-Echo-Node") == "node1"


# -- /echo/session.jsp --------------------------------------------------------------


def test_session_is_created_found_and_suffixed_with_route(tomcat_node: TomcatInstance) -> None:
    resp, first = get_json(tomcat_node, "/echo/session.jsp")
    assert first["created"] is True and first["existing"] is False and first["hits"] == 1
    sid = first["id"]
    assert sid.endswith(".node1") and len(sid) > len(".node1") + 8
    cookie = resp.getheader("Set-Cookie")
    assert cookie.startswith(f"JSESSIONID={sid};") and "Path=/echo" in cookie
    assert "HttpOnly" in cookie

    resp, second = get_json(tomcat_node, "/echo/session.jsp", headers=[("Cookie", f"JSESSIONID={sid}")])
    assert second["existing"] is True and second["created"] is False
    assert second["id"] == sid and second["hits"] == 2
    assert resp.getheader("Set-Cookie") is None

    _, info = get_json(tomcat_node, "/echo/info.jsp", headers=[("Cookie", f"JSESSIONID={sid}")])
    assert info["sessionId"] == sid
    assert info["requestedSessionId"] == sid and info["requestedSessionIdValid"] is True
    assert info["cookies"] == [["JSESSIONID", sid]]

    _, gone = get_json(
        tomcat_node, "/echo/session.jsp?invalidate=1", headers=[("Cookie", f"JSESSIONID={sid}")]
    )
    assert gone["existing"] is True and gone["invalidatedId"] == sid and gone["id"] is None
    _, info = get_json(tomcat_node, "/echo/info.jsp", headers=[("Cookie", f"JSESSIONID={sid}")])
    assert info["sessionId"] is None and info["requestedSessionIdValid"] is False


def test_session_from_another_route_is_not_found(tomcat_node, second_node) -> None:
    _, on1 = get_json(tomcat_node, "/echo/session.jsp")
    resp, on2 = get_json(second_node, "/echo/session.jsp", headers=[("Cookie", f"JSESSIONID={on1['id']}")])
    assert on2["node"] == "node2" and resp.getheader("X-Echo-Node") == "node2"
    assert on2["existing"] is False and on2["created"] is True
    assert on2["requestedSessionId"] == on1["id"]
    assert on2["id"].endswith(".node2")


# -- /echo/stream.jsp ----------------------------------------------------------------


def test_stream_20_mib_with_content_length(tomcat_node: TomcatInstance) -> None:
    size = 20 * MiB
    conn = http.client.HTTPConnection("127.0.0.1", tomcat_node.http_port, timeout=30)
    try:
        conn.request("GET", f"/echo/stream.jsp?bytes={size}")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Length") == str(size)
        assert resp.getheader("Transfer-Encoding") is None
        assert resp.getheader("X-Echo-Bytes") == str(size)
        assert resp.getheader("Content-Type") == "application/octet-stream"
        digest, received = hashlib.sha256(), 0
        while piece := resp.read(1 << 20):
            # Spot-check the pattern at every offset where a piece starts.
            assert piece[:512] == stream_pattern(min(512, len(piece)), received)
            digest.update(piece)
            received += len(piece)
    finally:
        conn.close()
    assert received == size
    assert digest.hexdigest() == hashlib.sha256(stream_pattern(size)).hexdigest()


def test_stream_chunked_with_small_pieces(tomcat_node: TomcatInstance) -> None:
    size = 3 * MiB + 17
    resp, data, _ = http_request(tomcat_node, "GET", f"/echo/stream.jsp?bytes={size}&chunked=1&chunk=10000")
    assert resp.status == 200
    assert resp.getheader("Transfer-Encoding") == "chunked"
    assert resp.getheader("Content-Length") is None
    assert data == stream_pattern(size)


def test_stream_delay_paces_the_body(tomcat_node: TomcatInstance) -> None:
    started = time.monotonic()
    resp, data, _ = http_request(tomcat_node, "GET", "/echo/stream.jsp?bytes=5000&chunk=1000&delay_ms=100")
    assert resp.status == 200 and data == stream_pattern(5000)
    assert time.monotonic() - started >= 0.39  # 4 pauses between 5 chunks


def test_stream_pattern_helper() -> None:
    assert stream_pattern(3) == b"\x00\x01\x02"
    assert stream_pattern(3, 250) == b"\xfa\x00\x01"
    assert stream_pattern(600)[251:254] == b"\x00\x01\x02"
    assert stream_pattern(0, 7) == b""


# -- /echo/upload.jsp ----------------------------------------------------------------


def test_upload_20_mib_chunked(tomcat_node: TomcatInstance) -> None:
    size, piece = 20 * MiB, 256 * 1024
    digest = hashlib.sha256()

    def pieces() -> Iterator[bytes]:
        for offset in range(0, size, piece):
            data = stream_pattern(min(piece, size - offset), offset)
            digest.update(data)
            yield data

    resp, data, _ = http_request(tomcat_node, "POST", "/echo/upload.jsp", body=pieces(), chunked=True)
    assert resp.status == 200, data
    result = json.loads(data)
    assert result["bytes"] == size
    assert result["sha256"] == digest.hexdigest()
    assert result["transferEncoding"] == "chunked"
    assert result["contentLength"] == -1
    assert result["node"] == "node1"


def test_upload_with_content_length(tomcat_node: TomcatInstance) -> None:
    payload = stream_pattern(MiB + 3, 5)
    _, result = get_json(tomcat_node, "/echo/upload.jsp", method="PUT", body=payload)
    assert result["method"] == "PUT"
    assert result["contentLength"] == len(payload) == result["bytes"]
    assert result["sha256"] == hashlib.sha256(payload).hexdigest()
    assert result["transferEncoding"] is None


def test_upload_read_delay_slows_the_reader(tomcat_node: TomcatInstance) -> None:
    payload = b"x" * 40000
    started = time.monotonic()
    _, result = get_json(
        tomcat_node, "/echo/upload.jsp?buffer=10000&read_delay_ms=100", method="POST", body=payload
    )
    assert result["bytes"] == 40000
    assert time.monotonic() - started >= 0.35


# -- /echo/status.jsp, /echo/redirect.jsp --------------------------------------------


@pytest.mark.parametrize("code", [200, 201, 404, 500, 503])
def test_status_with_body(tomcat_node: TomcatInstance, code: int) -> None:
    resp, data, _ = http_request(tomcat_node, "GET", f"/echo/status.jsp?code={code}&header=Retry-After:7")
    assert resp.status == code
    assert data == f"status {code}\n".encode()
    assert resp.getheader("Content-Length") == str(len(data))
    assert resp.getheader("Retry-After") == "7"
    assert resp.getheader("X-Echo-Node") == "node1"


@pytest.mark.parametrize("code", [204, 304])
def test_status_without_body(tomcat_node: TomcatInstance, code: int) -> None:
    resp, data, _ = http_request(tomcat_node, "GET", f"/echo/status.jsp?code={code}")
    assert resp.status == code and data == b""
    assert resp.getheader("Content-Type") is None
    assert resp.getheader("X-Echo-Node") == "node1"


def test_status_can_carry_location(tomcat_node: TomcatInstance) -> None:
    resp, _, _ = http_request(tomcat_node, "GET", "/echo/status.jsp?code=301&location=/elsewhere")
    assert resp.status == 301 and resp.getheader("Location") == "/elsewhere"


def test_redirect_defaults_and_parameters(tomcat_node: TomcatInstance) -> None:
    resp, data, _ = http_request(tomcat_node, "GET", "/echo/redirect.jsp")
    assert resp.status == 302 and resp.getheader("Location") == "/echo/info.jsp"
    assert data == b"redirect to /echo/info.jsp\n"
    target = "http://example.invalid/x?y=1"
    resp, _, _ = http_request(tomcat_node, "GET", "/echo/redirect.jsp?code=307&to=http%3A%2F%2Fexample.invalid%2Fx%3Fy%3D1")
    assert resp.status == 307 and resp.getheader("Location") == target


# -- /echo/slow.jsp ------------------------------------------------------------------


def test_slow_answers_after_the_delay(tomcat_node: TomcatInstance) -> None:
    started = time.monotonic()
    _, result = get_json(tomcat_node, "/echo/slow.jsp?ms=300")
    assert time.monotonic() - started >= 0.3
    assert result["slept_ms"] == 300 and result["elapsed_ms"] >= 300


def test_slow_trips_a_client_timeout(tomcat_node: TomcatInstance) -> None:
    with pytest.raises(TimeoutError):
        http_request(tomcat_node, "GET", "/echo/slow.jsp?ms=2000", timeout=0.3)


def test_slow_flush_first_sends_headers_before_sleeping(tomcat_node: TomcatInstance) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", tomcat_node.http_port, timeout=10)
    try:
        started = time.monotonic()
        conn.request("GET", "/echo/slow.jsp?ms=800&flush_first=1")
        resp = conn.getresponse()
        headers_at = time.monotonic() - started
        body = json.loads(resp.read())
        body_at = time.monotonic() - started
    finally:
        conn.close()
    assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
    assert headers_at < 0.6 <= 0.8 <= body_at
    assert body["slept_ms"] == 800


# -- /echo/headers.jsp ---------------------------------------------------------------


def test_repeated_response_headers(tomcat_node: TomcatInstance) -> None:
    resp, data, _ = http_request(tomcat_node, "GET", "/echo/headers.jsp?header=X-Extra:a&header=X-Extra:b")
    assert resp.status == 200
    assert resp.msg.get_all("Set-Cookie") == [
        "c1=v1; Path=/echo",
        "c2=v2; Path=/echo; HttpOnly",
        "c3=v3; Path=/echo; Max-Age=60",
    ]
    assert resp.msg.get_all("X-Echo-Multi") == ["value-1", "value-2", "value-3"]
    assert resp.msg.get_all("X-Extra") == ["a", "b"]
    listed = json.loads(data)["set"]
    assert len(listed) == 8 and listed[0] == ["Set-Cookie", "c1=v1; Path=/echo"]


def test_repeated_response_headers_counts(tomcat_node: TomcatInstance) -> None:
    resp, _, _ = http_request(tomcat_node, "GET", "/echo/headers.jsp?cookies=5&repeat=0")
    assert len(resp.msg.get_all("Set-Cookie")) == 5
    assert resp.msg.get_all("X-Echo-Multi") is None


# -- AJP connector -------------------------------------------------------------------


def test_ajp_cping_cpong(tomcat_node: TomcatInstance) -> None:
    with socket.create_connection(("127.0.0.1", tomcat_node.ajp_port), timeout=5) as sock:
        for _ in range(3):  # any number of times on one connection
            sock.sendall(CPING)
            assert recv_exact(sock, 5) == CPONG


def test_ajp_secret_is_enforced(tomcat_node: TomcatInstance) -> None:
    without = ajp_forward_request(b"/echo/info.jsp", headers=[(b"Host", b"proxy.test")])
    assert ajp_exchange(tomcat_node.ajp_port, without)[0] == 403
    wrong = ajp_forward_request(b"/echo/info.jsp", secret=b"nope", headers=[(b"Host", b"proxy.test")])
    assert ajp_exchange(tomcat_node.ajp_port, wrong)[0] == 403
    right = ajp_forward_request(
        b"/echo/info.jsp",
        secret=tomcat_node.ajp_secret.encode(),
        query=b"q=1",
        remote_port=54321,
        headers=[(b"Host", b"proxy.test:8000")],
    )
    status, body = ajp_exchange(tomcat_node.ajp_port, right)
    assert status == 200
    info = json.loads(body)
    assert info["node"] == "node1"
    assert info["queryString"] == "q=1"
    assert info["remotePort"] == 54321
    assert info["serverName"] == "proxy.test" and info["serverPort"] == 8000


def test_ajp_without_secret_and_larger_packet_size(tomcat_node, second_node) -> None:
    # A 12 KB header only fits a packetSize of 16384 (ajp13.md §1).
    big = [(b"X-Big", b"b" * 12000), (b"Host", b"proxy.test")]
    status, body = ajp_exchange(second_node.ajp_port, ajp_forward_request(b"/echo/info.jsp", headers=big))
    assert status == 200
    info = json.loads(body)
    assert info["node"] == "node2"
    assert ["x-big", "b" * 12000] in [[n.lower(), v] for n, v in info["headers"]]
    # The 8192-byte connector refuses the same packet (error answer or closed connection).
    packet = ajp_forward_request(b"/echo/info.jsp", secret=tomcat_node.ajp_secret.encode(), headers=big)
    try:
        status, _ = ajp_exchange(tomcat_node.ajp_port, packet)
    except (ConnectionError, TimeoutError):
        status = None
    assert status != 200


# -- crash and restart ----------------------------------------------------------------


def test_kill_refuses_connections_and_restart_recovers(tomcat_factory) -> None:
    node = tomcat_factory.start("crash", jvm_route="crash1")
    pid = node.pid
    assert port_accepts(node.http_port) and port_accepts(node.ajp_port)
    node.kill()
    assert not node.running and node.pid is None
    for port in (node.http_port, node.ajp_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    # Same base, same ports: the node comes back (no sessions survive).
    node.start()
    _, info = get_json(node, "/echo/info.jsp")
    assert info["node"] == "crash1"
    node.stop()
    assert not port_accepts(node.http_port) and not port_accepts(node.ajp_port)


def test_start_failure_raises_with_log_tail(tomcat_factory) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        # The AJP port is taken: HTTP would accept, AJP must be reported.
        node = tomcat_factory.create("clash", jvm_route="clash", ajp_port=taken)
        with pytest.raises(TomcatError) as failure:
            node.start(timeout=30)
    message = str(failure.value)
    assert str(taken) in message
    assert "catalina.out tail" in message and "Address already in use" in message
    assert not node.running
