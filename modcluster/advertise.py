# -*- test-case-name: tests.unit.advertise.test_advertise -*-
"""
Multicast advertise (httpd's mod_advertise): the balancer periodically multicasts a
small HTTP-response-shaped datagram naming its MCMP address; mod_cluster nodes that
listen on the group register with it.

Two layers, as in L{twisted.names}:

  - pure functions: the MD5 digest, the datagram codec (L{format_datagram},
    L{parse_datagram}, L{verify_datagram}) and the parsers of the directive values
    (L{parse_frequency}, L{parse_group}, L{parse_bind_address},
    L{parse_advertised_url}).  No I/O, no clock, no globals.
  - L{Advertiser}: a L{twisted.application.service.Service} owning one UDP socket,
    driven by a L{LoopingCall} on the injected reactor.

Reference: C{shared/reference/advertise.md} (format, digest, lifecycle) and
C{directives.md} section 3.  Design notes: C{docs/advertise.md}.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
import time
import uuid
from http import HTTPStatus
from typing import Optional, Union

from attrs import field, frozen
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_PORT",
    "MAX_DATAGRAM_SIZE",
    "MAX_PARSE_SIZE",
    "MAX_SEQUENCE",
    "Advertisement",
    "AdvertiseError",
    "Advertiser",
    "DatagramTooLarge",
    "DigestMismatch",
    "MalformedDatagram",
    "ManagerInfo",
    "compute_digest",
    "format_datagram",
    "format_host_port",
    "format_http_date",
    "parse_advertised_url",
    "parse_bind_address",
    "parse_datagram",
    "parse_frequency",
    "parse_group",
    "security_salt",
    "split_host_port",
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


def _key_bytes(key: SecurityKey) -> Optional[bytes]:
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
    raw = _key_bytes(key)
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


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def format_http_date(seconds: float) -> str:
    """
    RFC 1123 date in GMT as httpd prints it (C{Www, DD Mon YYYY HH:MM:SS GMT}),
    independent of the locale.
    """
    t = time.gmtime(seconds)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


# --- values -----------------------------------------------------------------

_TOKEN = re.compile(r"[!-~]+\Z")           # visible ASCII, no space
_TEXT = re.compile(r"[ -~]*\Z")            # printable ASCII, no CR/LF
_HEX32 = re.compile(r"[0-9a-fA-F]{32}\Z")
_DIGITS = re.compile(r"[0-9]+\Z")


def _check_token(name: str, value: str) -> str:
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
    _check_token("X-Manager-Address", value)


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


def _status_line(status: int) -> str:
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
    _check_token("Server", server)
    if (not isinstance(sequence, int) or isinstance(sequence, bool)
            or not 0 <= sequence <= MAX_SEQUENCE):
        raise AdvertiseError(f"Sequence must be an integer in 0..2**63-1, not {sequence!r}")
    digest = compute_digest(date, sequence, server, key)
    lines = [
        _status_line(status),
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
    _check_token("advertised host", host)
    return scheme, host, port


# --- the service ------------------------------------------------------------

#: The status whose reason phrase is longest, for the worst-case size check.
_LONGEST_STATUS = int(max(HTTPStatus, key=lambda s: len(s.phrase)))


class _SenderProtocol(DatagramProtocol):
    """The sending socket's protocol: datagrams arriving on it are ignored."""

    noisy = False

    def datagramReceived(self, datagram: bytes, addr: object) -> None:
        pass


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _is_loopback(host: str) -> Optional[bool]:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return None  # a host name: unknown


class Advertiser(Service):
    """
    Multicast the MCMP address every C{frequency} seconds (mod_advertise).

    Lifecycle (reference section 4): on start the socket is bound, TTL and outgoing
    interface set, and the first datagram goes out at once; then one every
    C{frequency} seconds and immediately on L{status_changed}; on stop a 403 then a
    410 "STATUS" datagram.  Nothing is ever sent before the outgoing interface is set
    (so a datagram never leaves through the default-route interface by mistake).
    Send and socket errors are logged, never raised.

    @ivar server_id: the C{Server} value (random UUID per instance unless given).
    @ivar sequence: the last C{Sequence} sent (0 before the first).
    @ivar status: the current advertised status.
    @ivar datagrams_sent: datagrams handed to the socket.
    @ivar send_failures: datagrams the socket refused.
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        manager_address: str,
        *,
        group: Union[str, tuple[str, int]] = f"{DEFAULT_GROUP}:{DEFAULT_PORT}",
        bind_address: Union[str, tuple[str, int]] = f"0.0.0.0:{DEFAULT_PORT}",
        interface: str = "127.0.0.1",
        ttl: int = 0,
        frequency: Union[str, float] = 10.0,
        security_key: SecurityKey = None,
        server_id: Optional[str] = None,
        manager_url: Optional[str] = None,
        manager_protocol: str = "http",
        manager_host: Optional[str] = None,
    ) -> None:
        """
        @param reactor: provider of C{IReactorMulticast} and C{IReactorTime}.
        @param manager_address: C{host:port} nodes must send MCMP to (IPv6 in brackets).
        @param group: C{"address[:port]"} or C{(address, port)}; IPv4 only for sending.
        @param bind_address: local C{"address[:port]"} of the sending socket (port
            default 23364, 0 = any).
        @param interface: IPv4 address of the interface multicast leaves from.
        @param ttl: multicast TTL (0 keeps datagrams on this host).
        @param frequency: seconds, or an C{AdvertiseFrequency} string (see
            L{parse_frequency}).
        @param security_key: C{AdvertiseSecurityKey} (None: zero salt).
        @param server_id: the C{Server} value; default a fresh random UUID.
        @param manager_url: C{X-Manager-Url}; default C{/<server id>}.
        @param manager_protocol: C{http} or C{https} (C{https} when MCMP is on TLS).
        @param manager_host: C{X-Manager-Host}; default the host of C{manager_address}.
        @raise ValueError: (an L{AdvertiseError} or plain C{ValueError}) on a bad
            argument, including a datagram that could exceed 512 bytes.
        """
        self._reactor = reactor
        if isinstance(group, str):
            group = parse_group(group)
        g_host, g_port = group
        g_ip = ipaddress.ip_address(g_host)
        if not g_ip.is_multicast or not 0 < g_port <= 65535:
            raise ValueError(f"advertise group {group!r} is not a multicast address and port")
        if g_ip.version != 4:
            raise ValueError(f"advertise group {g_host}: only IPv4 multicast groups can be sent to")
        self.group: tuple[str, int] = (str(g_ip), g_port)

        if isinstance(bind_address, str):
            bind_address = parse_bind_address(bind_address)
        b_host, b_port = bind_address
        if ipaddress.ip_address(b_host).version != 4:
            raise ValueError(f"advertise bind address {b_host} must be IPv4 (the group is IPv4)")
        self.bind_address: tuple[str, int] = (b_host, b_port)

        try:
            if_ip = ipaddress.ip_address(interface)
        except ValueError:
            raise ValueError(
                f"advertise interface {interface!r} must be the IPv4 address of an interface"
            ) from None
        if if_ip.version != 4 or if_ip.is_multicast or if_ip.is_unspecified:
            raise ValueError(
                f"advertise interface {interface!r} must be the IPv4 address of an interface"
            )
        self.interface = str(if_ip)

        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= 255:
            raise ValueError(f"advertise TTL must be 0..255, not {ttl!r}")
        self.ttl = ttl
        self.frequency = parse_frequency(frequency)
        _key_bytes(security_key)  # ASCII check now, not at the first send
        self._key = security_key
        self.server_id = _check_token("server id", server_id or str(uuid.uuid4()))
        m_host, _ = split_host_port(manager_address, 0)
        self.manager = ManagerInfo(
            address=manager_address,
            url=manager_url if manager_url is not None else "/" + self.server_id,
            protocol=manager_protocol,
            host=manager_host if manager_host is not None else m_host,
        )
        # Fail now, not at the first tick, if the largest possible datagram is too big.
        format_datagram(date=format_http_date(0), sequence=MAX_SEQUENCE,
                        server=self.server_id, key=self._key, status=_LONGEST_STATUS,
                        manager=self.manager)

        self.sequence = 0
        self.status = 200
        self.datagrams_sent = 0
        self.send_failures = 0
        self._port = None
        self._ready = False
        self._loop: Optional[LoopingCall] = None
        self._starting: Optional[Deferred] = None

    # -- Service ---------------------------------------------------------------

    def startService(self) -> None:
        Service.startService(self)
        b_host, b_port = self.bind_address
        try:
            self._port = self._reactor.listenMulticast(
                b_port, _SenderProtocol(), interface=b_host, listenMultiple=True)
            self._port.setTTL(self.ttl)
            self._port.setLoopbackMode(True)
            d = self._port.setOutgoingInterface(self.interface)
        except Exception:
            self.log.failure(
                "Advertise disabled: cannot open the multicast socket on {bind} "
                "(interface {interface}, TTL {ttl})",
                bind=format_host_port(b_host, b_port), interface=self.interface, ttl=self.ttl)
            self._close()
            return
        d.addCallbacks(self._interfaceSet, self._interfaceFailed)
        self._starting = d

    def _interfaceSet(self, _: object) -> None:
        self._starting = None
        if not self.running or self._port is None:
            return
        self._ready = True
        g_host, g_port = self.group
        self.log.info(
            "Advertising MCMP address {address} ({protocol}) to {group} via interface "
            "{interface}, TTL {ttl}, every {frequency} s, from {bind}, server {server_id}, "
            "{keyed}",
            address=self.manager.address, protocol=self.manager.protocol,
            group=format_host_port(g_host, g_port), interface=self.interface, ttl=self.ttl,
            frequency=self.frequency, bind=format_host_port(*self.bind_address),
            server_id=self.server_id,
            keyed="with a security key" if self._key is not None else "without a security key",
        )
        self._warnMisconfiguration()
        self._startLoop()

    def _interfaceFailed(self, failure: Failure) -> None:
        self._starting = None
        if failure.check(CancelledError):
            return  # stopService came first
        self.log.failure(
            "Advertise disabled: cannot send multicast through interface {interface}",
            failure, interface=self.interface)
        self._close()

    def _warnMisconfiguration(self) -> None:
        m_host, _ = split_host_port(self.manager.address, 0)
        if_loop = ipaddress.ip_address(self.interface).is_loopback
        if _is_wildcard(m_host):
            self.log.warn(
                "Advertised address {address} is a wildcard address: nodes cannot connect "
                "to it; set the advertised address explicitly", address=self.manager.address)
        elif if_loop and _is_loopback(m_host) is False:
            self.log.warn(
                "Advertise interface is loopback ({interface}): only nodes on this host "
                "hear the datagrams advertising {address}",
                interface=self.interface, address=self.manager.address)
        elif not if_loop and _is_loopback(m_host):
            self.log.warn(
                "Advertised address {address} is loopback but datagrams go out through "
                "{interface}: remote nodes will fail to connect",
                address=self.manager.address, interface=self.interface)
        if not if_loop and self.ttl == 0:
            self.log.warn(
                "Advertise TTL is 0: datagrams sent through {interface} never leave this host",
                interface=self.interface)

    def stopService(self) -> Deferred:
        Service.stopService(self)
        starting, self._starting = self._starting, None
        if starting is not None:
            starting.cancel()
        if self._ready:
            self._send(403, with_manager=False)
        self._stopLoop()
        if self._ready:
            self._send(410, with_manager=False)
        self._ready = False
        return self._close()

    # -- the lead's hook -------------------------------------------------------

    def status_changed(self, status: int) -> None:
        """
        Set the advertised status (200 normally); a different value is sent at once
        and the period restarts from now, as mod_advertise does.
        """
        _status_line(status)
        if status == self.status:
            return
        self.log.info("Advertise status {old} -> {new}", old=self.status, new=status)
        self.status = status
        if self._ready:
            self._stopLoop()
            self._startLoop()

    # -- internals -------------------------------------------------------------

    def _startLoop(self) -> None:
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._reactor
        d = self._loop.start(self.frequency, now=True)
        d.addErrback(lambda f: self.log.failure("Advertise loop stopped", f))

    def _stopLoop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def _tick(self) -> None:
        self._send(self.status, with_manager=True)

    def _next_sequence(self) -> int:
        self.sequence += 1
        if self.sequence < 1 or self.sequence > MAX_SEQUENCE:
            self.sequence = 1
        return self.sequence

    def build_datagram(self, status: Optional[int] = None, with_manager: bool = True) -> bytes:
        """
        Format the next datagram (consumes a Sequence number).  Exposed for tests and
        for a future "advertise now" command; L{Advertiser} calls it for every send.
        """
        return format_datagram(
            date=format_http_date(self._reactor.seconds()),
            sequence=self._next_sequence(),
            server=self.server_id,
            key=self._key,
            status=self.status if status is None else status,
            manager=self.manager if with_manager else None,
        )

    def _send(self, status: int, with_manager: bool) -> None:
        try:
            data = self.build_datagram(status, with_manager)
            self._port.write(data, self.group)
        except Exception:
            self.send_failures += 1
            self.log.failure(
                "Advertise datagram {sequence} to {group} via {interface} failed",
                sequence=self.sequence, group=format_host_port(*self.group),
                interface=self.interface)
        else:
            self.datagrams_sent += 1
            self.log.debug("Advertise datagram {sequence} (status {status}) sent to {group}",
                           sequence=self.sequence, status=status,
                           group=format_host_port(*self.group))

    def _close(self) -> Deferred:
        port, self._port = self._port, None
        self._ready = False
        if port is None:
            return succeed(None)
        d = maybeDeferred(port.stopListening)
        d.addErrback(lambda f: self.log.failure("Closing the advertise socket failed", f))
        return d
