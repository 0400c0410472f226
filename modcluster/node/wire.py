# -*- test-case-name: tests.unit.node.test_node_wire -*-
"""
The worker (client) side of MCMP, as pure functions: requests built and encoded
byte for byte as the Java C{DefaultMCMPHandler} does, and responses parsed with
the Java client's rules.

Nothing here does I/O or reads a clock.

Request bytes (reference C{mcmp.md} section 1.2)::

    CONFIG / HTTP/1.1\\r\\n
    Host: 127.0.0.1:6666\\r\\n
    Content-Length: 71\\r\\n              (only with a body)
    User-Agent: ClusterListener/1.0\\r\\n
    Connection: Keep-Alive\\r\\n
    \\r\\n
    JVMRoute=node1&Host=...

The body is C{JVMRoute} first, then the other parameters in Java C{TreeMap}
order (plain code-point order of the names), each name and value encoded like
C{java.net.URLEncoder} (UTF-8).

Responses are parsed like the Java client (section 7): the status code is the
text between the first and the second space of the first line that contains a
space; headers C{Type} and C{Mess} (names case-insensitive) carry the error
type and message; C{Content-Length}, C{Transfer-Encoding: chunked} and
C{Connection: close} delimit the body; without any of them there is no body.
"""

from __future__ import annotations

import enum
from typing import Iterable, Mapping, Optional

from attrs import field, frozen

__all__ = [
    "MCMPRequest",
    "MCMPResponse",
    "MalformedResponse",
    "ResponseParser",
    "NodeRegistration",
    "config_request",
    "context_request",
    "dump_request",
    "encode_request",
    "engine_request",
    "host_header",
    "info_request",
    "java_urlencode",
    "ping_request",
    "status_request",
    "ENABLE_APP",
    "DISABLE_APP",
    "STOP_APP",
    "REMOVE_APP",
]

CONFIG = "CONFIG"
ENABLE_APP = "ENABLE-APP"
DISABLE_APP = "DISABLE-APP"
STOP_APP = "STOP-APP"
REMOVE_APP = "REMOVE-APP"
STATUS = "STATUS"
INFO = "INFO"
DUMP = "DUMP"
PING = "PING"

_APP_METHODS = (ENABLE_APP, DISABLE_APP, STOP_APP, REMOVE_APP)

# java.net.URLEncoder leaves exactly these bytes alone (plus ASCII letters and
# digits); a space becomes "+", every other byte "%XY" (upper-case hex).
_URL_SAFE = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-*_"
)
_ENCODED = {b: chr(b) if b in _URL_SAFE else "%%%02X" % b for b in range(256)}
_ENCODED[0x20] = "+"


def java_urlencode(text: str) -> str:
    """
    Encode C{text} as C{java.net.URLEncoder.encode(text, "UTF-8")} does.

    Lone surrogates (which Java would turn into C{?}) are encoded as C{?} too.
    """
    raw = text.encode("utf-8", errors="replace")
    return "".join(_ENCODED[b] for b in raw)


@frozen
class MCMPRequest:
    """
    One MCMP request as the Java C{MCMPRequest}: a method, the wildcard flag
    (URI ends in C{*}), an optional JVMRoute and the other parameters already in
    wire order.
    """

    method: str
    wildcard: bool = False
    jvm_route: Optional[str] = None
    parameters: tuple[tuple[str, str], ...] = ()

    def body(self) -> str:
        """
        The encoded body: C{JVMRoute} first, then the parameters in order.
        """
        pairs: list[tuple[str, str]] = []
        if self.jvm_route is not None:
            pairs.append(("JVMRoute", self.jvm_route))
        pairs.extend(self.parameters)
        return "&".join(f"{java_urlencode(k)}={java_urlencode(v)}" for k, v in pairs)

    def parameter(self, name: str) -> Optional[str]:
        """
        The value of parameter C{name} (exact name), or C{None}.
        """
        for key, value in self.parameters:
            if key == name:
                return value
        return None


def _tree_order(parameters: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    # Java TreeMap<String, String> sorts by UTF-16 code units; every MCMP
    # parameter name is ASCII, where that equals Python's str ordering.
    return tuple(sorted(parameters.items()))


def host_header(host: str, port: int) -> str:
    """
    The C{Host} header value the Java client sends: C{host:port}, or
    C{[host]:port} for an IPv6 literal (any host containing a colon).
    """
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def encode_request(
    request: MCMPRequest, host: str, port: int, proxy_url: Optional[str] = None
) -> bytes:
    """
    The exact bytes the Java listener writes for C{request} to the proxy at
    C{host}:C{port}.

    @param proxy_url: the optional URL prefix (Java C{proxyURL}); a C{/} is
        appended unless it already ends with one.
    """
    uri = proxy_url or ""
    if not uri.endswith("/"):
        uri += "/"
    if request.wildcard:
        uri += "*"
    body = request.body()
    lines = [f"{request.method} {uri} HTTP/1.1", f"Host: {host_header(host, port)}"]
    if body:
        # The body is pure ASCII after URL encoding, so characters == bytes.
        lines.append(f"Content-Length: {len(body)}")
    lines.append("User-Agent: ClusterListener/1.0")
    lines.append("Connection: Keep-Alive")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("ascii")


# --- request factories (DefaultMCMPRequestFactory) ---------------------------


def _optional_int(value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an int, got {value!r}")


@frozen
class NodeRegistration:
    """
    What a node says about itself in CONFIG, with the Java defaults: a value of
    C{-1} (numbers) or C{None} (strings) means "not sent, the proxy's default".

    The booleans are sent only when they differ from the Java default, exactly
    as C{DefaultMCMPRequestFactory.createConfigRequest} does; in particular
    C{StickySessionForce=No} is sent by default.
    """

    jvm_route: str
    host: str
    port: int
    type: str = "ajp"
    domain: Optional[str] = None
    balancer: Optional[str] = None
    reversed: bool = False
    flush_packets: bool = False
    flush_wait: int = field(default=-1, validator=lambda i, a, v: _optional_int(v))
    ping: int = field(default=-1, validator=lambda i, a, v: _optional_int(v))
    smax: int = field(default=-1, validator=lambda i, a, v: _optional_int(v))
    ttl: int = field(default=-1, validator=lambda i, a, v: _optional_int(v))
    node_timeout: int = field(default=-1, validator=lambda i, a, v: _optional_int(v))
    sticky_session: bool = True
    sticky_session_cookie: str = "JSESSIONID"
    sticky_session_path: str = "jsessionid"
    sticky_session_remove: bool = False
    sticky_session_force: bool = False
    worker_timeout: int = field(default=-1, validator=lambda i, a, v: _optional_int(v))
    max_attempts: int = field(default=-1, validator=lambda i, a, v: _optional_int(v))


def config_request(node: NodeRegistration) -> MCMPRequest:
    """
    The CONFIG request for C{node}.
    """
    params: dict[str, str] = {}
    if node.reversed:
        params["Reversed"] = "true"
    params["Host"] = node.host.lower()
    params["Port"] = str(node.port)
    params["Type"] = node.type
    if node.domain is not None:
        params["Domain"] = node.domain
    if node.flush_packets:
        params["flushpackets"] = "On"
    for key, number in (
        ("flushwait", node.flush_wait),
        ("ping", node.ping),
        ("smax", node.smax),
        ("ttl", node.ttl),
        ("Timeout", node.node_timeout),
    ):
        if number != -1:
            params[key] = str(number)
    if node.balancer is not None:
        params["Balancer"] = node.balancer
    if not node.sticky_session:
        params["StickySession"] = "No"
    if node.sticky_session_cookie != "JSESSIONID":
        params["StickySessionCookie"] = node.sticky_session_cookie
    if node.sticky_session_path != "jsessionid":
        params["StickySessionPath"] = node.sticky_session_path
    if node.sticky_session_remove:
        params["StickySessionRemove"] = "Yes"
    if not node.sticky_session_force:
        params["StickySessionForce"] = "No"
    if node.worker_timeout != -1:
        params["WaitWorker"] = str(node.worker_timeout)
    if node.max_attempts != -1:
        params["Maxattempts"] = str(node.max_attempts)
    return MCMPRequest(CONFIG, False, node.jvm_route, _tree_order(params))


def context_request(
    method: str, jvm_route: str, aliases: Iterable[str], path: str
) -> MCMPRequest:
    """
    An ENABLE/DISABLE/STOP/REMOVE-APP request for one context of one virtual
    host (aliases joined with C{,}; an empty path is sent as C{/}).
    """
    if method not in _APP_METHODS:
        raise ValueError(f"not an application command: {method!r}")
    params = {"Context": path or "/", "Alias": ",".join(aliases)}
    return MCMPRequest(method, False, jvm_route, _tree_order(params))


def engine_request(method: str, jvm_route: str) -> MCMPRequest:
    """
    A node-wide (wildcard) ENABLE/DISABLE/STOP/REMOVE-APP request.
    """
    if method not in _APP_METHODS:
        raise ValueError(f"not an application command: {method!r}")
    return MCMPRequest(method, True, jvm_route)


def status_request(jvm_route: str, load: int) -> MCMPRequest:
    """
    The periodic STATUS request carrying the load factor.
    """
    return MCMPRequest(STATUS, False, jvm_route, (("Load", str(load)),))


def info_request() -> MCMPRequest:
    """
    The INFO request (no body).
    """
    return MCMPRequest(INFO)


def dump_request() -> MCMPRequest:
    """
    The DUMP request (wildcard, no body).
    """
    return MCMPRequest(DUMP, True)


def ping_request(jvm_route: Optional[str] = None) -> MCMPRequest:
    """
    A PING request, of the proxy itself or of node C{jvm_route}.
    """
    return MCMPRequest(PING, False, jvm_route)


# --- responses ----------------------------------------------------------------


class MalformedResponse(Exception):
    """
    The proxy's answer cannot be parsed (the Java client counts it as an
    error without a type: the proxy goes to ERROR).
    """


@frozen
class MCMPResponse:
    """
    A parsed proxy answer.

    @ivar status: the numeric status (C{200} means success).
    @ivar error_type: header C{Type} (C{SYNTAX}, C{MEM}, C{GENERAL}...), or C{None}.
    @ivar message: header C{Mess}, or C{None}.
    @ivar body: the body decoded as ISO-8859-1 (never fails).
    @ivar keep_alive: C{False} when the proxy said C{Connection: close}.
    """

    status: int
    error_type: Optional[str] = None
    message: Optional[str] = None
    body: str = ""
    keep_alive: bool = True

    @property
    def ok(self) -> bool:
        return self.status == 200


class _Stage(enum.Enum):
    STATUS = 1
    HEADERS = 2
    BODY_LENGTH = 3
    CHUNK_SIZE = 4
    CHUNK_DATA = 5
    CHUNK_CRLF = 6
    TRAILERS = 7
    BODY_CLOSE = 8
    DONE = 9


class ResponseParser:
    """
    Incremental parser for one proxy answer, with the Java client's rules.

    Feed it bytes with L{feed}; it returns the L{MCMPResponse} once complete
    (and C{None} until then). Call L{eof} when the connection closes. Any
    violation raises L{MalformedResponse}.

    @ivar started: whether any byte of the answer has been received.
    @ivar trailing: bytes received after the end of the answer (their presence
        means the connection must not be reused).
    """

    def __init__(self, max_line: int = 65536, max_body: int = 16 * 1024 * 1024) -> None:
        self._buffer = bytearray()
        self._stage = _Stage.STATUS
        self._max_line = max_line
        self._max_body = max_body
        self._status = 0
        self._type: Optional[str] = None
        self._mess: Optional[str] = None
        self._length: Optional[int] = None
        self._chunked = False
        self._close = False
        self._remaining = 0
        self._body = bytearray()
        self._result: Optional[MCMPResponse] = None
        self.started = False
        self.trailing = b""

    def _line(self) -> Optional[str]:
        # Java BufferedReader.readLine: a line ends at \n, \r or \r\n.  A lone
        # \r at the very end of the buffer may still be followed by \n, so
        # wait for the next byte in that case.
        buf = self._buffer
        ends = [i for i in (buf.find(b"\r"), buf.find(b"\n")) if i >= 0]
        if not ends:
            if len(buf) > self._max_line:
                raise MalformedResponse("response line too long")
            return None
        i = min(ends)
        if i > self._max_line:
            raise MalformedResponse("response line too long")
        if buf[i] == 0x0D:
            if i + 1 >= len(buf):
                return None
            end = i + 2 if buf[i + 1] == 0x0A else i + 1
        else:
            end = i + 1
        line = bytes(buf[:i]).decode("latin-1")
        del buf[:end]
        return line

    def feed(self, data: bytes) -> Optional[MCMPResponse]:
        """
        Add received bytes.

        @return: the complete answer, or C{None} if more bytes are needed.
        @raise MalformedResponse: the bytes are not a valid answer.
        """
        if self._stage is _Stage.DONE:
            self.trailing += data
            return self._result
        if data:
            self.started = True
        self._buffer += data
        while self._stage is not _Stage.DONE:
            if not self._step():
                break
        return self._result

    def _step(self) -> bool:
        stage = self._stage
        if stage is _Stage.STATUS:
            line = self._line()
            if line is None:
                return False
            space = line.find(" ")
            if space < 0:
                return True  # the Java client skips lines without a space
            second = line.find(" ", space + 1)
            if second < 0:
                raise MalformedResponse(f"status line without reason phrase: {line!r}")
            code = line[space + 1 : second]
            if not code.isdigit() or not code.isascii():
                raise MalformedResponse(f"bad status code in {line!r}")
            self._status = int(code)
            self._stage = _Stage.HEADERS
            return True
        if stage is _Stage.HEADERS:
            line = self._line()
            if line is None:
                return False
            if line == "":
                self._end_of_headers()
                return True
            colon = line.find(":")
            if colon < 0:
                raise MalformedResponse(f"header line without colon: {line!r}")
            name = line[:colon].strip().lower()
            value = line[colon + 1 :].strip()
            if name == "type":
                self._type = value
            elif name == "mess":
                self._mess = value
            elif name == "content-length":
                if not value.isdigit() or not value.isascii():
                    raise MalformedResponse(f"bad Content-Length {value!r}")
                self._length = int(value)
                if self._length > self._max_body:
                    raise MalformedResponse("response body too large")
            elif name == "connection":
                self._close = value.lower() == "close"
            elif name == "transfer-encoding":
                if value.lower() == "chunked":
                    self._chunked = True
            return True
        if stage is _Stage.BODY_LENGTH:
            take = min(self._remaining, len(self._buffer))
            self._body += self._buffer[:take]
            del self._buffer[:take]
            self._remaining -= take
            if self._remaining == 0:
                self._finish()
                return True
            return False
        if stage is _Stage.CHUNK_SIZE:
            line = self._line()
            if line is None:
                return False
            size_text = line.split(";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise MalformedResponse(f"bad chunk size {line!r}") from None
            if size < 0:
                raise MalformedResponse(f"bad chunk size {line!r}")
            if size == 0:
                self._stage = _Stage.TRAILERS
                return True
            if len(self._body) + size > self._max_body:
                raise MalformedResponse("response body too large")
            self._remaining = size
            self._stage = _Stage.CHUNK_DATA
            return True
        if stage is _Stage.CHUNK_DATA:
            take = min(self._remaining, len(self._buffer))
            self._body += self._buffer[:take]
            del self._buffer[:take]
            self._remaining -= take
            if self._remaining == 0:
                self._stage = _Stage.CHUNK_CRLF
                return True
            return False
        if stage is _Stage.CHUNK_CRLF:
            line = self._line()
            if line is None:
                return False
            if line != "":
                raise MalformedResponse("chunk not followed by CRLF")
            self._stage = _Stage.CHUNK_SIZE
            return True
        if stage is _Stage.TRAILERS:
            line = self._line()
            if line is None:
                return False
            if line == "":
                self._finish()
            return True
        if stage is _Stage.BODY_CLOSE:
            if len(self._body) + len(self._buffer) > self._max_body:
                raise MalformedResponse("response body too large")
            self._body += self._buffer
            self._buffer.clear()
            return False
        raise AssertionError(stage)  # pragma: no cover

    def _end_of_headers(self) -> None:
        if self._chunked:
            self._stage = _Stage.CHUNK_SIZE
        elif self._length:
            # With Connection: close the Java client reads to EOF; a correct
            # Content-Length ends the same body earlier, without waiting.
            self._remaining = self._length
            self._stage = _Stage.BODY_LENGTH
        elif self._close and self._length is None:
            self._stage = _Stage.BODY_CLOSE
        else:
            self._finish()

    def _finish(self) -> None:
        self._stage = _Stage.DONE
        self.trailing = bytes(self._buffer)
        self._buffer.clear()
        self._result = MCMPResponse(
            status=self._status,
            error_type=self._type,
            message=self._mess,
            body=bytes(self._body).decode("latin-1"),
            keep_alive=not self._close,
        )

    def eof(self) -> MCMPResponse:
        """
        The connection was closed by the proxy.

        @return: the answer, if it is complete (a close-delimited body ends here).
        @raise MalformedResponse: the answer was cut short.
        """
        if self._stage is _Stage.BODY_CLOSE:
            self._finish()
        if self._result is None:
            raise MalformedResponse("connection closed before the end of the response")
        return self._result
