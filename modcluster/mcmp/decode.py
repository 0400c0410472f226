# -*- test-case-name: tests.unit.mcmp.test_wire -*-
"""
MCMP request decoding: request bodies in, frozen values out.

  - L{parse_body} turns a request body into L{Params} (ordered, decoded pairs);
  - L{decode_config}, L{decode_app}, L{decode_status}, L{decode_ping} validate
    the pairs for one command and return frozen request values, or raise
    L{modcluster.mcmp.errors.MCMPError} with the exact httpd catalogue text.

Pure functions only: no I/O, no clock, no registry, no logging.  The choices
(1.3.x wire behaviour, where we are stricter than httpd, and why) are written
down in C{docs/mcmp.md}.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Optional

import attrs
from attrs import field, frozen

from modcluster.mcmp.errors import (
    alias_too_big,
    alias_without_context,
    bad_flushwait,
    bad_load,
    bad_ping,
    bad_port,
    bad_timeout,
    bad_ttl,
    bad_type,
    balancer_too_big,
    clean_value,
    context_too_big,
    context_without_alias,
    domain_too_big,
    empty_alias,
    empty_context,
    field_too_big,
    host_too_big,
    invalid_field,
    jvm_route_empty,
    jvm_route_too_big,
    mandatory_fields_missing,
    message_too_large,
    no_context_and_alias,
    no_jvm_route_given,
    port_too_big,
    type_too_big,
    unparseable,
    unsupported_ping_scheme,
)
from modcluster.mcmp.names import (
    ALIAS,
    CONTEXT,
    KNOWN_KEYS,
    LOAD_PING_ONLY,
    NODE_TYPES,
    PING_SCHEMES,
    ascii_lower,
    canonical_key,
)

__all__ = [
    "DEFAULT_LIMITS",
    "AppRequest",
    "ConfigRequest",
    "FieldLimits",
    "Params",
    "PingRequest",
    "StatusRequest",
    "VhostGroup",
    "decode_app",
    "decode_config",
    "decode_ping",
    "decode_status",
    "parse_body",
]

_KNOWN = frozenset(KNOWN_KEYS)

#: Largest time value accepted (in milliseconds): 2**31-1 seconds.
_MAX_TIME_MS = (2**31 - 1) * 1000

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1

# Characters never allowed in a decoded token: httpd's list (< > " ' CR LF)
# plus every other C0 control and DEL (NUL would truncate a C string; the rest
# have no business in routes, host names or paths and would corrupt INFO lines).
_FORBIDDEN = re.compile("[<>\"'\x00-\x1f\x7f]")


# ---------------------------------------------------------------------------
# Body tokenising
# ---------------------------------------------------------------------------

_HEX = frozenset(b"0123456789abcdefABCDEF")


def _decode_token(raw: bytes) -> str:
    """
    Decode one key or value as application/x-www-form-urlencoded (what the
    Java listener's C{URLEncoder} produces): C{+} is a space, C{%XX} a byte;
    then check it is UTF-8 without forbidden characters.

    @raise MCMPError: SMESPAR on a bad C{%} sequence, bad UTF-8 or a
        forbidden character.
    """
    if b"+" in raw:
        raw = raw.replace(b"+", b" ")
    if b"%" in raw:
        parts = raw.split(b"%")
        out = [parts[0]]
        for part in parts[1:]:
            if len(part) < 2 or part[0] not in _HEX or part[1] not in _HEX:
                raise unparseable()
            out.append(bytes((int(part[:2], 16),)))
            out.append(part[2:])
        raw = b"".join(out)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise unparseable() from None
    if _FORBIDDEN.search(text):
        raise unparseable()
    return text


@frozen
class Params:
    """
    The decoded parameters of one MCMP request body, in the order sent.

    Known keys carry their canonical spelling (L{KNOWN_KEYS}); unknown keys
    are kept as sent.  Lookups are case-insensitive.  A piece without C{=}
    (C{JVMRoute=node1&Load}) is a key with an empty value.

    @ivar pairs: C{((key, value), ...)}.
    """

    pairs: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> Params:
        """
        Build from already-decoded pairs (for the console and tests): keys are
        canonicalised and every key and value is checked like a decoded body.

        @raise MCMPError: SMESPAR on an empty key or a forbidden character.
        """
        out = []
        for key, value in pairs:
            if not key or _FORBIDDEN.search(key) or _FORBIDDEN.search(value):
                raise unparseable()
            out.append((canonical_key(key), value))
        return cls(tuple(out))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        wanted = ascii_lower(key)
        return any(ascii_lower(k) == wanted for k, _ in self.pairs)

    def keys(self) -> tuple[str, ...]:
        """The keys in order (repeats included)."""
        return tuple(k for k, _ in self.pairs)

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """The value of the last occurrence of C{key} (case-insensitive)."""
        wanted = ascii_lower(key)
        for k, v in reversed(self.pairs):
            if ascii_lower(k) == wanted:
                return v
        return default

    def get_all(self, key: str) -> tuple[str, ...]:
        """All values of C{key} (case-insensitive), in order."""
        wanted = ascii_lower(key)
        return tuple(v for k, v in self.pairs if ascii_lower(k) == wanted)


def parse_body(body: bytes, max_size: int) -> Params:
    """
    Tokenise an MCMP request body (1.3.x rules).

    Pieces are separated by C{&}; empty pieces are skipped.  The first C{=}
    of a piece separates key and value, further C{=} belong to the value; a
    piece without C{=} is a key with an empty value.  Key and value are then
    form-decoded (C{+} is a space, C{%XX} a byte), must be UTF-8 and may
    not contain C{< > " '} or control characters.  An empty body gives empty
    L{Params}.  Linear in the body size.

    @param body: the raw body.
    @param max_size: the largest body accepted, in bytes.
    @raise MessageTooLarge: if C{len(body) > max_size} (never truncated).
    @raise MCMPError: SMESPAR on any malformed piece or an empty key.
    """
    body = bytes(body)
    if len(body) > max_size:
        raise message_too_large(len(body), max_size)
    pairs = []
    for piece in body.split(b"&"):
        if not piece:
            continue
        rawkey, _, rawvalue = piece.partition(b"=")
        key = _decode_token(rawkey)
        if not key:
            raise unparseable()
        pairs.append((canonical_key(key), _decode_token(rawvalue)))
    return Params(tuple(pairs))


# ---------------------------------------------------------------------------
# Value syntaxes
# ---------------------------------------------------------------------------

_TRUE = frozenset({"yes", "on", "true"})
_FALSE = frozenset({"no", "off", "false"})


def _parse_bool(value: str) -> Optional[bool]:
    """yes/on/true, no/off/false (any case); anything else: C{None}."""
    folded = ascii_lower(value)
    if folded in _TRUE:
        return True
    if folded in _FALSE:
        return False
    return None


_TIME = re.compile(r"([0-9]{1,12})(ms|s|mi|h)?", re.ASCII)
_UNIT_MS = {"ms": 1, "s": 1000, "mi": 60_000, "h": 3_600_000}


def _parse_time_ms(value: str, default_unit: str) -> Optional[int]:
    """
    A non-negative decimal integer with an optional unit C{ms}, C{s}, C{mi}
    or C{h} (httpd C{ap_timeout_parameter_parse} units), in milliseconds.

    @return: C{None} if malformed or above 2**31-1 seconds.
    """
    match = _TIME.fullmatch(value)
    if match is None:
        return None
    ms = int(match.group(1)) * _UNIT_MS[match.group(2) or default_unit]
    if ms > _MAX_TIME_MS:
        return None
    return ms


_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?)([0-9]+)", re.ASCII)


def _atoi(value: str) -> int:
    """
    C C{atoi}: optional white space and sign, then leading digits; trailing
    garbage ignored; nothing numeric gives 0.  Clamped to the C int range.
    """
    match = _ATOI.match(value)
    if match is None:
        return 0
    digits = match.group(2).lstrip("0") or "0"
    if len(digits) > 10:
        number = _INT32_MAX + 1
    else:
        number = int(digits)
    if match.group(1) == "-":
        number = -number
    return max(_INT32_MIN, min(_INT32_MAX, number))


_STRICT_INT = re.compile(r"-?[0-9]{1,10}", re.ASCII)


def _parse_load(value: str) -> int:
    """Load: an integer in -1..100, nothing else."""
    if _STRICT_INT.fullmatch(value) is None:
        raise bad_load()
    load = int(value)
    if not -1 <= load <= 100:
        raise bad_load()
    return load


_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)


def _parse_port(value: str) -> int:
    if _PORT.fullmatch(value) is None:
        raise bad_port()
    port = int(value)
    if not 1 <= port <= 65535:
        raise bad_port()
    return port


def _utf8_len(value: str) -> int:
    # httpd compares strlen() (bytes) with its buffer sizes.
    return len(value.encode("utf-8")) if not value.isascii() else len(value)


def _strip_zone(host: str) -> str:
    """C{[fe80::1%eth0]} -> C{[fe80::1]} (only for bracketed hosts)."""
    if host.startswith("[") and "%" in host:
        return host[: host.index("%")] + "]"
    return host


def _split_list(value: str, limit: int, too_big, empty) -> list[str]:
    """Split a comma list; each element non-empty and at most C{limit} bytes."""
    items = value.split(",")
    for item in items:
        if not item:
            raise empty()
        if _utf8_len(item) > limit:
            raise too_big()
    return items


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


# ---------------------------------------------------------------------------
# Field limits
# ---------------------------------------------------------------------------


def _positive(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{attribute.name} must be a positive integer, not {value!r}")


@frozen
class FieldLimits:
    """
    Maximum lengths (in bytes, inclusive) of CONFIG / *-APP fields.  The
    defaults are httpd's buffer sizes minus one (C{mod_clustersize.h}, httpd
    2.4); longer values are refused with the catalogue's SYNTAX "too big"
    message.
    """

    jvm_route: int = field(default=63, validator=_positive)
    balancer: int = field(default=39, validator=_positive)
    domain: int = field(default=19, validator=_positive)
    host: int = field(default=63, validator=_positive)
    port: int = field(default=6, validator=_positive)
    type: int = field(default=15, validator=_positive)
    sticky_session_cookie: int = field(default=29, validator=_positive)
    sticky_session_path: int = field(default=29, validator=_positive)
    alias: int = field(default=254, validator=_positive)
    context: int = field(default=79, validator=_positive)


#: httpd's limits.
DEFAULT_LIMITS = FieldLimits()


# ---------------------------------------------------------------------------
# CONFIG
# ---------------------------------------------------------------------------


#: One 1.3.x virtual host of a CONFIG: (aliases, contexts).
VhostGroup = tuple[tuple[str, ...], tuple[str, ...]]


@frozen
class ConfigRequest:
    """
    A validated CONFIG: the node's settings and its balancer's settings (the
    last CONFIG for a balancer name wins for all its nodes).  Fields not sent
    have httpd's defaults.  Times are kept in integer milliseconds, whatever
    unit was sent; C{ping_s}, C{ttl_s}, C{timeout_s} give them in seconds.

    @ivar jvm_route: the node's identity.
    @ivar balancer: lower-cased balancer name.
    @ivar sticky_session: route requests by session id.
    @ivar sticky_session_cookie: session cookie name.
    @ivar sticky_session_path: session path-parameter name.
    @ivar sticky_session_remove: strip the session id when failing over.
    @ivar sticky_session_force: 503 rather than fail over a sticky request.
    @ivar wait_worker: seconds to wait for a usable worker (C{WaitWorker}).
    @ivar max_attempts: failover attempts (C{Maxattempts}).
    @ivar domain: load-balancing group ("LBGroup"), C{""} for none.
    @ivar host: as sent, with any IPv6 C{%zone} removed.
    @ivar port: 1..65535.
    @ivar type: one of L{NODE_TYPES}, lower case.
    @ivar reversed: C{Reversed=yes/true} was sent; reverse connections are not
        supported, the model ignores it.
    @ivar flushpackets: C{"Off"}, C{"On"} or C{"Auto"}.
    @ivar smax: soft maximum of idle connections, -1 for "choose".
    @ivar groups: 1.3.x grouping: each C{Alias=...&Context=...} pair of the
        body is one virtual host C{(aliases, contexts)}; aliases lower-cased,
        duplicates inside a group removed.  Java nodes never send these (they
        send one *-APP per context).
    @ivar warnings: human-readable notes for the log (unknown keys ignored,
        unrecognised boolean values ignored, balancer name lower-cased, ...).
    """

    jvm_route: str
    balancer: str = "mycluster"
    sticky_session: bool = True
    sticky_session_cookie: str = "JSESSIONID"
    sticky_session_path: str = "jsessionid"
    sticky_session_remove: bool = False
    sticky_session_force: bool = True
    wait_worker: int = 0
    max_attempts: int = 1
    domain: str = ""
    host: str = "localhost"
    port: int = 8009
    type: str = "ajp"
    reversed: bool = False
    flushpackets: str = "Off"
    flushwait_ms: int = 10
    ping_ms: int = 10_000
    smax: int = -1
    ttl_ms: int = 60_000
    timeout_ms: int = 0
    groups: tuple[VhostGroup, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ping_s(self) -> float:
        """C{ping} in seconds."""
        return self.ping_ms / 1000

    @property
    def ttl_s(self) -> float:
        """C{ttl} in seconds."""
        return self.ttl_ms / 1000

    @property
    def timeout_s(self) -> float:
        """C{Timeout} in seconds."""
        return self.timeout_ms / 1000


_BALANCER_BOOLS = {
    "StickySession": "sticky_session",
    "StickySessionRemove": "sticky_session_remove",
    "StickySessionForce": "sticky_session_force",
}
_TIMES = {
    # key: (attribute, default unit, error)
    "flushwait": ("flushwait_ms", "ms", bad_flushwait),
    "ping": ("ping_ms", "s", bad_ping),
    "ttl": ("ttl_ms", "s", bad_ttl),
    "Timeout": ("timeout_ms", "s", bad_timeout),
}
_FLUSHPACKETS = {
    "on": "On",
    "yes": "On",
    "true": "On",
    "auto": "Auto",
    "off": "Off",
    "no": "Off",
    "false": "Off",
}


def decode_config(
    params: Params,
    default_balancer: str = "mycluster",
    limits: FieldLimits = DEFAULT_LIMITS,
) -> ConfigRequest:
    """
    Validate a CONFIG.

    Pairs are checked in the order sent and the first problem is raised
    (httpd's order); then a missing JVMRoute; then an unfinished Alias/Context
    group.  An empty value means "not sent" (the default applies), except for
    Alias/Context, where it is an error.  Unknown keys are ignored.

    @param default_balancer: the balancer when none is sent (lower-cased).
    @param limits: maximum field lengths.
    @raise MCMPError: SYNTAX, with the catalogue message.
    """
    if not params:
        raise unparseable()
    warnings: list[str] = []
    balancer = ascii_lower(default_balancer)
    fields: dict[str, object] = {}
    jvm_route = ""
    groups: list[list[Optional[list[str]]]] = []  # [aliases|None, contexts|None]

    for key, value in params:
        if key == ALIAS or key == CONTEXT:
            is_alias = key == ALIAS
            if is_alias:
                items = _split_list(ascii_lower(value), limits.alias, alias_too_big, empty_alias)
            else:
                items = _split_list(value, limits.context, context_too_big, empty_context)
            current = groups[-1] if groups else None
            if is_alias:
                if current is not None and current[0] is not None and current[1] is None:
                    raise alias_without_context()
                if current is None or current[0] is not None:
                    groups.append([items, None])
                else:
                    current[0] = items
            else:
                # 1.3.x: a second Context before the next Alias is refused.
                if current is not None and current[1] is not None:
                    raise context_without_alias()
                if current is None:
                    groups.append([None, items])
                else:
                    current[1] = items
            continue
        if value == "":
            if key in _KNOWN:
                warnings.append(f"empty {key} ignored")
            else:
                warnings.append(f"unknown key {clean_value(key)!r} ignored")
            continue
        if key == "JVMRoute":
            if _utf8_len(value) > limits.jvm_route:
                raise jvm_route_too_big()
            jvm_route = value
        elif key == "Balancer":
            if _utf8_len(value) > limits.balancer:
                raise balancer_too_big()
            lowered = ascii_lower(value)
            if lowered != value:
                warnings.append(f"balancer name {clean_value(value)!r} lower-cased")
            balancer = lowered
        elif key in _BALANCER_BOOLS:
            flag = _parse_bool(value)
            if flag is None:
                warnings.append(f"{key}={clean_value(value)!r} not a boolean, ignored")
            else:
                fields[_BALANCER_BOOLS[key]] = flag
        elif key == "StickySessionCookie":
            if _utf8_len(value) > limits.sticky_session_cookie:
                raise field_too_big()
            fields["sticky_session_cookie"] = value
        elif key == "StickySessionPath":
            if _utf8_len(value) > limits.sticky_session_path:
                raise field_too_big()
            fields["sticky_session_path"] = value
        elif key == "WaitWorker":
            fields["wait_worker"] = max(0, _atoi(value))
        elif key == "Maxattempts":
            fields["max_attempts"] = max(0, _atoi(value))
        elif key == "Domain":
            if _utf8_len(value) > limits.domain:
                raise domain_too_big()
            fields["domain"] = value
        elif key == "Host":
            if _utf8_len(value) > limits.host:
                raise host_too_big()
            fields["host"] = _strip_zone(value)
        elif key == "Port":
            if _utf8_len(value) > limits.port:
                raise port_too_big()
            fields["port"] = _parse_port(value)
        elif key == "Type":
            if _utf8_len(value) > limits.type:
                raise type_too_big()
            node_type = ascii_lower(value)
            if node_type not in NODE_TYPES:
                raise bad_type()
            fields["type"] = node_type
        elif key == "Reversed":
            flag = _parse_bool(value)
            if flag is None:
                warnings.append(f"Reversed={clean_value(value)!r} not a boolean, ignored")
            else:
                fields["reversed"] = flag
        elif key == "flushpackets":
            mode = _FLUSHPACKETS.get(ascii_lower(value))
            if mode is None:
                warnings.append(f"flushpackets={clean_value(value)!r} unknown, ignored")
            else:
                fields["flushpackets"] = mode
        elif key in _TIMES:
            attribute, unit, error = _TIMES[key]
            ms = _parse_time_ms(value, unit)
            if ms is None:
                raise error()
            fields[attribute] = ms
        elif key == "smax":
            fields["smax"] = max(-1, _atoi(value))
        elif key in _KNOWN:
            warnings.append(f"{key} is not a CONFIG field, ignored")
        else:
            warnings.append(f"unknown key {clean_value(key)!r} ignored")

    if not jvm_route:
        raise jvm_route_empty()
    if groups:
        aliases, contexts = groups[-1]
        if contexts is None:
            raise alias_without_context()
        if aliases is None:
            raise context_without_alias()
    return ConfigRequest(
        jvm_route=jvm_route,
        balancer=balancer,
        groups=tuple((_dedupe(a or ()), _dedupe(c or ())) for a, c in groups),
        warnings=tuple(warnings),
        **fields,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------------
# ENABLE-APP, DISABLE-APP, STOP-APP, REMOVE-APP
# ---------------------------------------------------------------------------


@frozen
class AppRequest:
    """
    A validated *-APP command.

    @ivar wildcard: node-level command (URI C{*} or C{.../*}); then C{aliases}
        and C{contexts} are empty.
    @ivar aliases: lower-cased, comma lists split, repeated C{Alias} keys
        accumulated, duplicates removed, order kept.  They all name one
        virtual host (1.3.x model).
    @ivar contexts: likewise for C{Context}.
    """

    jvm_route: str
    wildcard: bool = False
    aliases: tuple[str, ...] = ()
    contexts: tuple[str, ...] = ()


def decode_app(
    params: Params, wildcard: bool, limits: FieldLimits = DEFAULT_LIMITS
) -> AppRequest:
    """
    Validate a *-APP command.

    Pairs are checked in order (JVMRoute length, Alias/Context elements:
    empty or too long); then: no JVMRoute; for a context-level command,
    neither Alias nor Context (2.x-HEAD), Alias without Context, Context
    without Alias.  Unknown keys are ignored; a wildcard command ignores
    Alias and Context altogether.

    @raise MCMPError: SYNTAX, with the catalogue message.
    """
    if not params:
        raise unparseable()
    jvm_route = ""
    aliases: list[str] = []
    contexts: list[str] = []
    for key, value in params:
        if key == "JVMRoute":
            if _utf8_len(value) > limits.jvm_route:
                raise jvm_route_too_big()
            if value:
                jvm_route = value
        elif wildcard:
            continue
        elif key == ALIAS:
            aliases.extend(
                _split_list(ascii_lower(value), limits.alias, alias_too_big, empty_alias)
            )
        elif key == CONTEXT:
            contexts.extend(_split_list(value, limits.context, context_too_big, empty_context))
    if not jvm_route:
        raise jvm_route_empty()
    if wildcard:
        return AppRequest(jvm_route=jvm_route, wildcard=True)
    if not aliases and not contexts:
        raise no_context_and_alias()
    if not contexts:
        raise alias_without_context()
    if not aliases:
        raise context_without_alias()
    return AppRequest(
        jvm_route=jvm_route,
        wildcard=False,
        aliases=_dedupe(aliases),
        contexts=_dedupe(contexts),
    )


# ---------------------------------------------------------------------------
# STATUS
# ---------------------------------------------------------------------------


@frozen
class StatusRequest:
    """
    A validated STATUS.

    @ivar load: -1..100 as sent, or L{LOAD_PING_ONLY} (-2) when no C{Load}
        was sent: probe the node and answer its state, leave the load alone.
    """

    jvm_route: str
    load: int = LOAD_PING_ONLY


def decode_status(params: Params, limits: FieldLimits = DEFAULT_LIMITS) -> StatusRequest:
    """
    Validate a STATUS: only C{JVMRoute} and C{Load} are allowed.

    Pairs are checked in order: JVMRoute too long, Load not an integer in
    -1..100 (including an empty value), any other key (C{Invalid field}).
    Then a missing JVMRoute.  An empty body is unparseable.

    @raise MCMPError: SYNTAX, with the catalogue message.
    """
    if not params:
        raise unparseable()
    jvm_route = ""
    load = LOAD_PING_ONLY
    for key, value in params:
        if key == "JVMRoute":
            if _utf8_len(value) > limits.jvm_route:
                raise jvm_route_too_big()
            jvm_route = value
        elif key == "Load":
            load = _parse_load(value)
        else:
            raise invalid_field(key)
    if not jvm_route:
        raise no_jvm_route_given()
    return StatusRequest(jvm_route=jvm_route, load=load)


# ---------------------------------------------------------------------------
# PING
# ---------------------------------------------------------------------------


@frozen
class PingRequest:
    """
    A validated PING: exactly one of three forms.

      - nothing: ping the proxy itself (L{target} C{"proxy"});
      - C{jvm_route}: probe that node (L{target} C{"node"});
      - C{scheme}, C{host}, C{port}: probe that address (L{target}
        C{"address"}).
    """

    jvm_route: Optional[str] = None
    scheme: Optional[str] = None
    host: Optional[str] = None
    port: Optional[int] = None

    @property
    def target(self) -> str:
        """C{"proxy"}, C{"node"} or C{"address"}."""
        if self.jvm_route is not None:
            return "node"
        if self.scheme is not None:
            return "address"
        return "proxy"


def decode_ping(params: Params, limits: FieldLimits = DEFAULT_LIMITS) -> PingRequest:
    """
    Validate a PING.

    Pairs are checked in order: JVMRoute too long, Scheme not supported,
    Host too long, any other key than JVMRoute/Scheme/Host/Port
    (C{Invalid field}).  A non-empty JVMRoute wins over Scheme/Host/Port.
    Otherwise Scheme, Host and Port must all be there (empty counts as
    missing) and Port must be a port number.

    @raise MCMPError: SYNTAX, with the catalogue message.
    """
    jvm_route = scheme = host = port = None
    for key, value in params:
        if key == "JVMRoute":
            if _utf8_len(value) > limits.jvm_route:
                raise jvm_route_too_big()
            jvm_route = value or None
        elif key == "Scheme":
            if value:
                folded = ascii_lower(value)
                if folded not in PING_SCHEMES:
                    raise unsupported_ping_scheme(value)
                scheme = folded
            else:
                scheme = None
        elif key == "Host":
            if _utf8_len(value) > limits.host:
                raise host_too_big()
            host = _strip_zone(value) or None
        elif key == "Port":
            port = value or None
        else:
            raise invalid_field(key)
    if jvm_route is not None:
        return PingRequest(jvm_route=jvm_route)
    if scheme is None and host is None and port is None:
        return PingRequest()
    if scheme is None or host is None or port is None:
        raise mandatory_fields_missing()
    return PingRequest(scheme=scheme, host=host, port=_parse_port(port))

