"""
Reader for the captured exchanges in C{tests/fixtures/*.txt} (copies of the
project's shared fixtures: exact bytes captured from real peers).

File layout (see each file's header)::

    === label ===
    --- request ---
    <request bytes, head lines with CRLF>
    --- response ---
    <response bytes>
    --- end ---

Lines starting with C{#} or C{@@} outside a block are comments / TCP events.
Bodies are cut by C{Content-Length} (or chunked-decoded), so the display-only
LF the tomcat trace adds after a body is never part of a body.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from attrs import frozen

__all__ = [
    "FIXTURES",
    "Exchange",
    "HTTPMessage",
    "load_exchanges",
    "parse_request",
    "parse_response",
]

#: Where the fixture files live (override with TXMC_FIXTURES).
FIXTURES = Path(os.environ.get("TXMC_FIXTURES",
                               Path(__file__).resolve().parents[1] / "fixtures"))


@frozen
class HTTPMessage:
    """
    One parsed request or response.

    @ivar start: the request line or status line (text).
    @ivar headers: C{((name, value), ...)} as sent.
    @ivar body: the body as on the wire (chunked already decoded).
    @ivar truncated: the capture shows fewer body bytes than Content-Length
        (the abbreviated oversized request).
    """

    start: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    truncated: bool = False

    def header(self, name: str) -> Optional[str]:
        """The last value of header C{name} (case-insensitive), or C{None}."""
        wanted = name.lower()
        value = None
        for key, val in self.headers:
            if key.lower() == wanted:
                value = val
        return value

    @property
    def method(self) -> str:
        """The request method."""
        return self.start.split(" ")[0]

    @property
    def uri(self) -> str:
        """The request URI."""
        return self.start.split(" ")[1]

    @property
    def status(self) -> int:
        """The response status code."""
        return int(self.start.split(" ")[1])

    @property
    def reason(self) -> str:
        """The response reason phrase."""
        return self.start.split(" ", 2)[2]


@frozen
class Exchange:
    """One block of a fixture file: the label, the raw request and response bytes."""

    label: str
    raw_request: bytes
    raw_response: bytes

    @property
    def request(self) -> HTTPMessage:
        """The parsed request."""
        return parse_request(self.raw_request)

    @property
    def response(self) -> Optional[HTTPMessage]:
        """The parsed response, C{None} if nothing was received."""
        if not self.raw_response.strip():
            return None
        return parse_response(self.raw_response)


def _split_head(raw: bytes) -> tuple[str, tuple[tuple[str, str], ...], bytes]:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError(f"no end of head in {raw[:80]!r}")
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return lines[0], tuple(headers), rest


def _dechunk(data: bytes) -> bytes:
    out = []
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            return b"".join(out)
        out.append(data[:size])
        if data[size : size + 2] != b"\r\n":
            raise ValueError("bad chunk terminator")
        data = data[size + 2 :]


def parse_request(raw: bytes) -> HTTPMessage:
    """Parse captured request bytes."""
    start, headers, rest = _split_head(raw)
    message = HTTPMessage(start, headers, b"")
    length = message.header("Content-Length")
    if length is None:
        return message
    size = int(length)
    return HTTPMessage(start, headers, rest[:size], truncated=len(rest) < size)


def parse_response(raw: bytes) -> HTTPMessage:
    """Parse captured response bytes."""
    start, headers, rest = _split_head(raw)
    message = HTTPMessage(start, headers, b"")
    if (message.header("Transfer-Encoding") or "").lower() == "chunked":
        return HTTPMessage(start, headers, _dechunk(rest))
    length = message.header("Content-Length")
    if length is not None:
        size = int(length)
        return HTTPMessage(start, headers, rest[:size], truncated=len(rest) < size)
    return HTTPMessage(start, headers, rest)


def load_exchanges(name: str) -> list[Exchange]:
    """
    All exchanges of fixture file C{name} (e.g.
    C{"tomcat10-mcmp-trace.txt"}), in file order.
    """
    data = (FIXTURES / name).read_bytes()
    exchanges: list[Exchange] = []
    label: Optional[str] = None
    section: Optional[str] = None
    parts: dict[str, list[bytes]] = {}
    for line in data.splitlines(keepends=True):
        marker = line.rstrip(b"\r\n")
        if section is None:
            if marker.startswith(b"=== ") and marker.endswith(b" ==="):
                label = marker[4:-4].decode("utf-8")
                parts = {"request": [], "response": []}
            elif marker == b"--- request ---" and label is not None:
                section = "request"
            continue
        if marker == b"--- response ---" and section == "request":
            section = "response"
        elif marker == b"--- end ---" and section == "response":
            assert label is not None
            exchanges.append(
                Exchange(label, b"".join(parts["request"]), b"".join(parts["response"]))
            )
            label = section = None
        else:
            parts[section].append(line)
    return exchanges
