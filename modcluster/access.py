# -*- test-case-name: tests.unit.test_access -*-
"""
Access control on the management and console listeners (docs/console.md,
"Access control"):

  - L{AllowList}: client addresses and networks allowed on a listener
    (httpd's C{Require ip}); others get 403.
  - L{HostCheck}: the C{Host} names the console, API and metrics answer to
    (against DNS rebinding); others get 421.
  - L{AccessGuard}: a resource wrapping a listener's root that applies both,
    with a rate-limited log line per refused client.
  - L{CommandAuthority}: which client certificate identities may run console
    commands on which nodes (the identity pinning of MCMP, extended to
    operators).

Pure values and one thin resource; the clock is injected.
"""

from __future__ import annotations

import ipaddress
from typing import Callable, Iterable, Optional, Union

from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource

from modcluster.mcmp.names import is_mcmp_method
from modcluster.ratelimit import RateLimit

__all__ = [
    "AccessGuard",
    "AllowList",
    "CommandAuthority",
    "HostCheck",
    "RateLimitedLog",
    "parse_networks",
]

_Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: Host names the console always answers to.
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def parse_networks(items: Iterable[str]) -> tuple[_Network, ...]:
    """
    C{"10.0.0.0/8"}, C{"192.0.2.7"}, C{"::1"}, C{"fd00::/8"} → networks (a bare
    address is a /32 or /128).  Host bits set in a network are refused
    (C{10.0.0.1/8} is most likely a typo).

    @raise ValueError: naming the item that is not an address or network.
    """
    networks = []
    for item in items:
        text = item.strip() if isinstance(item, str) else item
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{item!r} is not an IP address or network ({e})") from None
    return tuple(networks)


def _bare_ip(host: str):
    if host.startswith("::ffff:"):  # IPv4 client on an IPv6 socket
        host = host[7:]
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


class AllowList:
    """
    Client addresses allowed on a listener.  Empty: everyone the listener
    accepts.  Clients without an IP address (UNIX sockets) are allowed: the
    socket's file permissions decide who connects.
    """

    __slots__ = ("networks",)

    def __init__(self, items: Iterable[str] = ()) -> None:
        self.networks = parse_networks(items)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def permits(self, address) -> bool:
        if not self.networks:
            return True
        host = getattr(address, "host", None)
        if not isinstance(host, str):
            return True
        ip = _bare_ip(host)
        if ip is None:
            return False
        return any(ip.version == n.version and ip in n for n in self.networks)


def split_host(value: bytes) -> Optional[str]:
    """The host part of a C{Host} header, lower-cased, without port or brackets."""
    try:
        text = value.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        return text[1:end]
    if text.count(":") == 1:
        text = text.split(":", 1)[0]
    return text.rstrip(".")


class HostCheck:
    """
    The C{Host} values accepted: C{localhost}, C{127.0.0.1}, C{::1}, the address
    the connection arrived on, and C{names} (host names or addresses; C{"*"}
    accepts any).  A request without C{Host} (HTTP/1.0 scripts) is accepted:
    browsers always send one.
    """

    __slots__ = ("names", "any")

    def __init__(self, names: Iterable[str] = ()) -> None:
        names = {n.strip().lower().strip("[]").rstrip(".") for n in names}
        self.any = "*" in names
        self.names = frozenset(LOCAL_NAMES | (names - {"*"}))

    def accepts(self, request) -> bool:
        if self.any:
            return True
        raw = request.requestHeaders.getRawHeaders(b"host")
        if not raw:
            return True
        return all(self._accepts(value, request) for value in raw)

    def _accepts(self, value: bytes, request) -> bool:
        host = split_host(value)
        if host is None:
            return False
        if host in self.names:
            return True
        local = getattr(request.getHost(), "host", None)
        if isinstance(local, str):
            ip, mine = _bare_ip(host), _bare_ip(local)
            return ip is not None and ip == mine
        return False


class RateLimitedLog:
    """
    One warning per key (a client address) every C{interval} seconds; the next
    one says how many were not logged.  At most C{max_keys} keys remembered,
    and at most C{max_lines} lines in all per C{interval}: clients coming from
    many addresses cannot flood the log either.
    """

    log = Logger()

    def __init__(self, clock, interval: float = 60.0, max_keys: int = 1024,
                 max_lines: int = 100) -> None:
        self._clock = clock
        self._interval = interval
        self._max_lines = max_lines
        #: one line per client address per interval
        self._seen: RateLimit[str] = RateLimit(interval, 1, max_keys)
        #: and max_lines in all
        self._lines: RateLimit[None] = RateLimit(interval, max_lines)

    def warn(self, key: str, fmt: str, **fields) -> bool:
        """Log unless C{key} was logged less than C{interval} ago, or the
        interval's line budget is used up; True when logged."""
        now = self._clock.seconds()
        if not self._seen.allows(key, now):
            self._seen.admit(key, now)  # counted; said with its next line
            return False
        dropped = self._lines.admit(None, now)
        if dropped is None:
            return False  # over the budget: counted, said when the next interval starts
        if dropped:
            self.log.warn("{dropped} more refusal lines were not logged (over "
                          "{limit} in {interval:g} s)", dropped=dropped,
                          limit=self._max_lines, interval=self._interval)
        suppressed = self._seen.admit(key, now)
        self.log.warn(fmt + (" ({suppressed} more since the last such line)" if suppressed
                             else ""), suppressed=suppressed, **fields)
        return True


class _Refused(Resource):
    isLeaf = True

    def __init__(self, code: int, message: str) -> None:
        super().__init__()
        self._code = code
        self._message = message

    def render(self, request):
        request.setResponseCode(self._code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return (self._message + "\n").encode("utf-8")


def _client(request) -> str:
    addr = request.getClientAddress()
    host = getattr(addr, "host", None)
    if host is None:
        return str(addr)
    return f"[{host}]:{addr.port}" if ":" in host else f"{host}:{addr.port}"


class AccessGuard(Resource):
    """
    Wraps the root resource of a listener.

    @param inner: the root (e.g. L{modcluster.mcmp.resource.ManagementRoot}).
    @param listener: name for log lines (C{"management"}, C{"console"}).
    @param allow: the listener's L{AllowList} (every request).
    @param console_allow: an L{AllowList} for the console, API and metrics
        requests, i.e. everything but MCMP methods.
    @param hosts: a L{HostCheck} for those same requests, or None.
    @param clock: C{IReactorTime} for the log rate limit.
    """

    def __init__(self, inner: Resource, *, listener: str, clock,
                 allow: Optional[AllowList] = None,
                 console_allow: Optional[AllowList] = None,
                 hosts: Optional[HostCheck] = None,
                 log: Optional[RateLimitedLog] = None) -> None:
        super().__init__()
        self._inner = inner
        self._listener = listener
        self._allow = allow or None
        self._console_allow = console_allow or None
        self._hosts = hosts
        self._log = log or RateLimitedLog(clock)

    def reconfigure(self, *, allow: Optional[AllowList] = None,
                    console_allow: Optional[AllowList] = None,
                    hosts: Optional[HostCheck] = None) -> None:
        """Reload: new allow lists and Host check, for the requests from now on."""
        self._allow = allow or None
        self._console_allow = console_allow or None
        self._hosts = hosts

    def _refusal(self, request) -> Optional[Resource]:
        address = request.getClientAddress()
        if self._allow is not None and not self._allow.permits(address):
            return self._refuse(request, http.FORBIDDEN, "client address not allowed")
        if is_mcmp_method(request.method):
            return None
        if self._console_allow is not None and not self._console_allow.permits(address):
            return self._refuse(request, http.FORBIDDEN, "client address not allowed")
        if self._hosts is not None and not self._hosts.accepts(request):
            return self._refuse(request, 421, "unknown Host (see console.hosts)")
        return None

    def _refuse(self, request, code: int, why: str) -> Resource:
        client = _client(request)
        host = getattr(request.getClientAddress(), "host", client)
        self._log.warn(
            f"{self._listener}:{host}",
            "{listener} listener: {method} {uri} from {client} refused with {code}: {why}",
            listener=self._listener, client=client, code=code, why=why,
            method=request.method.decode("latin-1")[:20],
            uri=request.uri[:200].decode("latin-1"),
            host_header=(request.getHeader(b"host") or b"")[:200].decode("latin-1"))
        text = ("Forbidden: your address may not use this listener" if code == http.FORBIDDEN
                else "Misdirected request: this server does not answer to that Host name")
        return _Refused(code, text)

    def getChildWithDefault(self, path, request):
        refused = self._refusal(request)
        if refused is not None:
            return refused
        return self._inner.getChildWithDefault(path, request)

    def render(self, request):
        refused = self._refusal(request)
        if refused is not None:
            return refused.render(request)
        return self._inner.render(request)


class CommandAuthority:
    """
    Who may run console commands, under mutual TLS with identity pinning.

    @param policy: the L{modcluster.tls.IdentityPolicy} of C{[manager.tls]
        identities} (node identity → its JVMRoutes), or None.
    @param operators: identities allowed to act on every node.

    When neither pins nor operators are configured, every client may run
    commands (as before; the console's nonce and C{allow_cmd} still apply).
    Otherwise an operator may act on any node; a node identity only on the
    routes it is pinned to (a command touching several nodes needs them all);
    anyone else — no certificate, an unknown identity — is refused.
    """

    def __init__(self, policy=None, operators: Iterable[str] = ()) -> None:
        self._policy = policy if policy is not None and policy.enabled else None
        self._operators = frozenset(o.casefold() for o in operators)

    @property
    def enabled(self) -> bool:
        return self._policy is not None or bool(self._operators)

    def is_operator(self, identities: Iterable[str]) -> bool:
        return any(i.casefold() in self._operators for i in identities or ())

    def refusal(self, identities: Iterable[str], routes: Iterable[str]) -> Optional[str]:
        """None when allowed, else why not (for the 403 and the log line)."""
        if not self.enabled:
            return None
        ids = sorted(identities or ())
        if not ids:
            return "no client certificate identity (console commands need an operator or " \
                   "node certificate)"
        if self.is_operator(ids):
            return None
        routes = sorted(set(routes))
        if self._policy is not None:
            denied = [r for r in routes if not self._policy.allowed(ids, r)]
            if routes and not denied:
                return None
            allowed = sorted(self._policy.routes_for(ids))
            if allowed:
                return (f"certificate identities {', '.join(ids)} may act only on "
                        f"{', '.join(allowed)}, not on {', '.join(denied or routes)}")
        return f"certificate identities {', '.join(ids)} are neither an operator nor a node"


#: C{request -> frozenset of identities}: how the console reads the peer's identities.
IdentitiesOf = Callable[[object], frozenset]
