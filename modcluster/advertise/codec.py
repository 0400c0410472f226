# -*- test-case-name: tests.unit.advertise.test_advertise -*-
"""
The advertise datagram codec (httpd's mod_advertise): the balancer periodically
multicasts a small HTTP-response-shaped datagram naming its MCMP address;
mod_cluster nodes that listen on the group register with it.

Pure functions, no I/O, no clock, no globals: the MD5 digest, the datagram codec
(L{format_datagram}, L{parse_datagram}, L{verify_datagram}) and the parsers of the
directive values (L{parse_frequency}, L{parse_group}, L{parse_bind_address},
L{parse_advertised_url}).  The configuration (L{modcluster.config}), the node
agent's listener (L{modcluster.node.discovery}) and the sending service
(L{modcluster.advertise.service}) use them.

Reference: C{shared/reference/advertise.md} (format, digest, lifecycle) and
C{directives.md} section 3.  Design notes: C{docs/advertise.md}.
"""

from __future__ import annotations

import email.utils
import hashlib
import ipaddress
import math
import re
from http import HTTPStatus
from typing import Optional, Union

from attrs import field, frozen

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_PORT",
    "MAX_DATAGRAM_SIZE",
    "MAX_PARSE_SIZE",
    "MAX_SEQUENCE",
    "Advertisement",
    "AdvertiseError",
    "DatagramTooLarge",
    "DigestMismatch",
    "MalformedDatagram",
    "ManagerInfo",
    "SecurityKey",
    "check_token",
    "compute_digest",
    "format_datagram",
    "format_host_port",
    "format_http_date",
    "key_bytes",
    "parse_advertised_url",
    "parse_bind_address",
    "parse_datagram",
    "parse_frequency",
    "parse_group",
    "security_salt",
    "split_host_port",
    "status_line",
    "verify_datagram",
]

#: Default multicast group (C{MA_DEFAULT_GROUP}); the Java listener's default too.
DEFAULT_GROUP = "224.0.1.105"
#: Default advertise port (C{MA_DEFAULT_ADVPORT}).
DEFAULT_PORT = 23364
#: The Java listener reads 512 bytes per datagram: never send more.
MAX_DATAGRAM_SIZE = 512
#: Largest datagram the parser accepts (httpd builds at most C{MA_BSIZE} bytes).
MAX_PARSE_SIZE = 4096
#: Largest Sequence value (a signed 64-bit counter on both sides).
MAX_SEQUENCE = 2**63 - 1

SecurityKey = Union[str, bytes, None]


class AdvertiseError(ValueError):
    """Base class of the advertise errors (a C{ValueError}, so config code can map it)."""


class DatagramTooLarge(AdvertiseError):
    """The datagram would exceed L{MAX_DATAGRAM_SIZE} bytes."""

    def __init__(self, size: int, limit: int = MAX_DATAGRAM_SIZE) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"advertise datagram would be {size} bytes, more than the {limit} bytes "
            "the Java listener reads (shorten the manager URL/host)"
        )


class MalformedDatagram(AdvertiseError):
    """Bytes that are not an advertise datagram."""


class DigestMismatch(AdvertiseError):
    """A well-formed datagram whose Digest does not match the key."""


# --- digest ---------------------------------------------------------------


def key_bytes(key: SecurityKey) -> Optional[bytes]:
    if key is None:
        return None
    if isinstance(key, bytes):
        return key
    try:
        return key.encode("ascii")
    except UnicodeEncodeError:
        raise AdvertiseError(
            "the advertise security key must be ASCII (the Java listener turns every "
            "other character into '?')"
        ) from None


def _md5(data: bytes) -> "hashlib._Hash":
    return hashlib.md5(data, usedforsecurity=False)


def security_salt(key: SecurityKey) -> bytes:
    """
    The 16-byte salt: MD5 of the key bytes, or 16 zero bytes without a key.

    An empty key is a key (MD5 of nothing), as in httpd and the Java listener.
    """
    raw = key_bytes(key)
    if raw is None:
        return bytes(16)
    return _md5(raw).digest()


def compute_digest(date: str, sequence: Union[int, str], server: str, key: SecurityKey) -> str:
    """
    Lowercase hex of C{MD5(salt || Date || Sequence || Server)}, each value exactly as
    it appears in the datagram (reference section 3).
    """
    h = _md5(security_salt(key))
    for part in (date, str(sequence), server):
        h.update(part.encode("latin-1"))
    return h.hexdigest()


def format_http_date(seconds: float) -> str:
    """
    RFC 1123 date in GMT as httpd prints it (C{Www, DD Mon YYYY HH:MM:SS GMT}),
    independent of the locale.
    """
    return email.utils.formatdate(seconds, usegmt=True)


# --- values -----------------------------------------------------------------

_TOKEN = re.compile(r"[!-~]+\Z")           # visible ASCII, no space
_TEXT = re.compile(r"[ -~]*\Z")            # printable ASCII, no CR/LF
_HEX32 = re.compile(r"[0-9a-fA-F]{32}\Z")
_DIGITS = re.compile(r"[0-9]+\Z")


def check_token(name: str, value: str) -> str:
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise AdvertiseError(f"{name} must be non-empty visible ASCII without spaces: {value!r}")
    return value


def _check_text(name: str, value: str) -> str:
    if not isinstance(value, str) or not _TEXT.match(value):
        raise AdvertiseError(f"{name} must be printable ASCII without line breaks: {value!r}")
    return value


def _validate_protocol(inst: object, att: object, value: str) -> None:
    if value not in ("http", "https"):
        raise AdvertiseError(f"manager protocol must be 'http' or 'https', not {value!r}")


def _validate_address(inst: object, att: object, value: str) -> None:
    check_token("X-Manager-Address", value)


def _validate_text(inst: object, att: object, value: str) -> None:
    _check_text("X-Manager-* value", value)


@frozen
class ManagerInfo:
    """
    The C{X-Manager-*} lines of a "SERVER" datagram.

    @ivar address: C{host:port} where nodes send MCMP (IPv6 in brackets); see
        L{format_host_port}.
    @ivar url: C{X-Manager-Url} (informational; C{/<server uuid>} in httpd).
    @ivar protocol: C{http} or C{https}.
    @ivar host: C{X-Manager-Host} (httpd: the ServerName; informational).
    """

    address: str = field(validator=_validate_address)
    url: str = field(validator=_validate_text)
    protocol: str = field(default="http", validator=_validate_protocol)
    host: str = field(default="", validator=_validate_text)


@frozen
class Advertisement:
    """
    A parsed advertise datagram.

    @ivar status: the numeric status (200 while running, 403/410 at shutdown).
    @ivar reason: the reason phrase.
    @ivar date: the C{Date} value as received (it enters the digest as is).
    @ivar sequence: the C{Sequence} value.
    @ivar digest: the C{Digest} value as received.
    @ivar server: the C{Server} value (the proxy's id).
    @ivar headers: every other header that followed C{Server}, in order, as the Java
        listener keeps them (it ignores those before C{Server}).
    """

    status: int
    reason: str
    date: str
    sequence: int
    digest: str
    server: str
    headers: tuple[tuple[str, str], ...] = ()

    def header(self, name: str) -> Optional[str]:
        """The last value of header C{name} (case-sensitive, as in Java), or None."""
        found = None
        for n, v in self.headers:
            if n == name:
                found = v
        return found

    @property
    def manager_address(self) -> Optional[str]:
        return self.header("X-Manager-Address")

    @property
    def manager_url(self) -> Optional[str]:
        return self.header("X-Manager-Url")

    @property
    def manager_protocol(self) -> Optional[str]:
        return self.header("X-Manager-Protocol")

    @property
    def manager_host(self) -> Optional[str]:
        return self.header("X-Manager-Host")

    def manager_socket_address(self) -> Optional[tuple[str, int]]:
        """
        C{(host, port)} from C{X-Manager-Address} as the Java listener reads it
        (missing port -> 0), or None if absent or unparsable.
        """
        value = self.manager_address
        if value is None:
            return None
        try:
            return split_host_port(value, 0)
        except ValueError:
            return None

    def verify(self, key: SecurityKey) -> bool:
        """True if the digest matches C{key} (hex compared case-insensitively)."""
        expected = compute_digest(self.date, self._sequence_text, self.server, key)
        return expected == self.digest.lower()

    # The digest covers the Sequence text as sent; keep it even if it had leading zeros.
    _sequence_text: str = field(default="", repr=False, eq=False, alias="sequence_text")

    def __attrs_post_init__(self) -> None:
        if not self._sequence_text:
            object.__setattr__(self, "_sequence_text", str(self.sequence))


# --- codec ------------------------------------------------------------------


def status_line(status: int) -> str:
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 999:
        raise AdvertiseError(f"advertise status must be a 3-digit HTTP status, not {status!r}")
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    return f"HTTP/1.0 {status} {reason}"


def format_datagram(
    *,
    date: str,
    sequence: int,
    server: str,
    key: SecurityKey,
    status: int = 200,
    manager: Optional[ManagerInfo] = None,
    limit: int = MAX_DATAGRAM_SIZE,
) -> bytes:
    """
    Build one datagram byte for byte as mod_advertise does.

    With C{manager} it is a "SERVER" datagram (the periodic one); without, a
    "STATUS" datagram (C{Date}, C{Sequence}, C{Digest}, C{Server} only; the shutdown
    403/410).

    @raise DatagramTooLarge: if the result exceeds C{limit} bytes.
    @raise AdvertiseError: on a value that cannot go into a header.
    """
    _check_text("Date", date)
    check_token("Server", server)
    if (not isinstance(sequence, int) or isinstance(sequence, bool)
            or not 0 <= sequence <= MAX_SEQUENCE):
        raise AdvertiseError(f"Sequence must be an integer in 0..2**63-1, not {sequence!r}")
    digest = compute_digest(date, sequence, server, key)
    lines = [
        status_line(status),
        f"Date: {date}",
        f"Sequence: {sequence}",
        f"Digest: {digest}",
        f"Server: {server}",
    ]
    if manager is not None:
        lines += [
            f"X-Manager-Address: {manager.address}",
            f"X-Manager-Url: {manager.url}",
            f"X-Manager-Protocol: {manager.protocol}",
            f"X-Manager-Host: {manager.host}",
        ]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    if len(data) > limit:
        raise DatagramTooLarge(len(data), limit)
    return data


def parse_datagram(data: bytes) -> Advertisement:
    """
    Parse an advertise datagram the way the Java listener does (reference section 6),
    without checking the digest.

    Never raises anything but L{MalformedDatagram} for bad input.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedDatagram("advertise datagram must be bytes")
    if len(data) > MAX_PARSE_SIZE:
        raise MalformedDatagram(f"datagram of {len(data)} bytes is too large")
    text = bytes(data).decode("latin-1")
    if not text.startswith("HTTP/1."):
        raise MalformedDatagram("does not start with 'HTTP/1.'")
    lines = text.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) != 3:
        raise MalformedDatagram("status line needs protocol, code and reason")
    if not re.fullmatch(r"[0-9]{3}", parts[1]) or int(parts[1]) < 100:
        raise MalformedDatagram(f"bad status code {parts[1][:20]!r}")
    status, reason = int(parts[1]), parts[2]

    fields: dict[str, str] = {}
    others: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(": ")
        if not sep:
            break  # the final empty line (or anything without ': ') ends the headers
        if name in ("Date", "Digest", "Sequence", "Server"):
            fields[name] = value
        elif "Server" in fields:
            others.append((name, value))

    for required in ("Server", "Date", "Sequence", "Digest"):
        if required not in fields:
            raise MalformedDatagram(f"no {required} header")
    seq_text = fields["Sequence"]
    if not _DIGITS.match(seq_text) or len(seq_text) > 19 or int(seq_text) > MAX_SEQUENCE:
        raise MalformedDatagram(f"bad Sequence {seq_text[:30]!r}")
    if not _HEX32.match(fields["Digest"]):
        raise MalformedDatagram("Digest is not 32 hex digits")
    if not fields["Server"]:
        raise MalformedDatagram("empty Server")
    return Advertisement(
        status=status,
        reason=reason,
        date=fields["Date"],
        sequence=int(seq_text),
        digest=fields["Digest"],
        server=fields["Server"],
        headers=tuple(others),
        sequence_text=seq_text,
    )


def verify_datagram(data: bytes, key: SecurityKey) -> Advertisement:
    """
    Parse and authenticate a datagram with C{key} (None: the zero salt, as a node
    without C{advertiseSecurityKey}).

    @raise MalformedDatagram: not an advertise datagram.
    @raise DigestMismatch: the digest does not match the key.
    """
    adv = parse_datagram(data)
    if not adv.verify(key):
        raise DigestMismatch(f"digest mismatch for server {adv.server[:64]!r}")
    return adv


# --- directive values -------------------------------------------------------

_FREQUENCY = re.compile(r"([0-9]+)(?:[.,]([0-9]+))?\Z")


def parse_frequency(value: Union[str, int, float]) -> float:
    """
    C{AdvertiseFrequency} in seconds: C{seconds[.n]} or C{seconds[,n]} where C{n} is
    added as B{milliseconds} (httpd semantics: C{"5.500"} -> 5.5, C{"5.5"} -> 5.005).
    A number (int/float) is taken as seconds.

    @raise ValueError: zero, negative or not of that form.
    """
    if isinstance(value, bool):
        raise ValueError(f"advertise frequency must be a number of seconds, not {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"advertise frequency must be greater than 0, not {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(
            f"advertise frequency must be a string like '10' or '5.500', not {value!r}")
    m = _FREQUENCY.match(value.strip())
    if not m:
        raise ValueError(
            f"invalid advertise frequency {value!r}: expected seconds[.milliseconds], "
            "e.g. '10' or '5.500' (note: '5.5' means 5 s + 5 ms)"
        )
    seconds = int(m.group(1)) + (int(m.group(2)) / 1000.0 if m.group(2) else 0.0)
    if seconds <= 0:
        raise ValueError(f"invalid advertise frequency {value!r}: must be greater than 0")
    return seconds


def split_host_port(value: str, default_port: int) -> tuple[str, int]:
    """
    Split C{host[:port]}, C{[v6][:port]} or a bare IPv6 literal (several colons, no
    brackets: no port).  The host is returned without brackets.

    @raise ValueError: empty host, bad brackets or a port outside 0..65535.
    """
    if not isinstance(value, str):
        raise ValueError(f"address must be a string, not {value!r}")
    v = value.strip()
    if v.startswith("["):
        end = v.find("]")
        if end < 0:
            raise ValueError(f"{value!r}: missing ']'")
        host, rest = v[1:end], v[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{value!r}: unexpected text after ']'")
        port_text = rest[1:] if rest else None
    elif v.count(":") > 1:
        host, port_text = v, None
    else:
        host, sep, port_text = v.partition(":")
        if not sep:
            port_text = None
    if not host:
        raise ValueError(f"{value!r}: no host")
    if port_text is None:
        return host, default_port
    if not _DIGITS.match(port_text) or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r}: port must be a number in 0..65535")
    return host, int(port_text)


def format_host_port(host: str, port: int) -> str:
    """C{host:port}, with IPv6 literals in brackets (as mod_advertise prints them)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _ip(host: str, what: str, value: str):
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"invalid {what} {value!r}: {host!r} is not an IP address") from None


def parse_group(value: str) -> tuple[str, int]:
    """
    C{AdvertiseGroup}: C{address[:port]} (C{224.0.1.105:23364}, C{[ff05::105]:23364},
    C{ff05::105}); port default 23364.  The address must be a multicast IP literal.

    @raise ValueError: with the reason.
    """
    host, port = split_host_port(value, DEFAULT_PORT)
    ip = _ip(host, "advertise group", value)
    if not ip.is_multicast:
        raise ValueError(f"invalid advertise group {value!r}: {host} is not a multicast address")
    if port == 0:
        raise ValueError(f"invalid advertise group {value!r}: port 0")
    return str(ip), port


def parse_bind_address(value: str) -> tuple[str, int]:
    """
    C{AdvertiseBindAddress}: C{address[:port]}, port default 23364 (C{0} = any free
    port).  The address must be an IP literal (C{0.0.0.0} = any).
    """
    host, port = split_host_port(value, DEFAULT_PORT)
    return str(_ip(host, "advertise bind address", value)), port


def parse_advertised_url(value: str) -> tuple[str, str, int]:
    """
    The address given to C{ServerAdvertise On [scheme://]host:port}: returns
    C{(scheme, host, port)}; scheme defaults to C{http}; the port is required.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError("advertised address must be '[http|https://]host:port'")
    v = value.strip()
    scheme = "http"
    if "://" in v:
        scheme, v = v.split("://", 1)
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"advertised address {value!r}: scheme must be http or https")
    v = v.rstrip("/")
    host, port = split_host_port(v, -1)
    if port <= 0:
        raise ValueError(f"advertised address {value!r}: needs a port, e.g. {host}:6666")
    check_token("advertised host", host)
    return scheme, host, port
