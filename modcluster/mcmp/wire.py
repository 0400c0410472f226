# -*- test-case-name: tests.unit.mcmp.test_wire -*-
"""
The MCMP wire codec: request bodies in, frozen values out; replies out as bytes.

Pure functions only: no I/O, no clock, no registry, no logging.  Everything a
caller needs to answer a node is here:

  - L{parse_body} turns a request body into L{Params} (ordered, decoded pairs);
  - L{decode_config}, L{decode_app}, L{decode_status}, L{decode_ping} validate
    the pairs for one command and return frozen request values, or raise
    L{MCMPError} with the exact httpd catalogue text;
  - the C{format_*} functions build the reply bodies (STATUS-RSP, PING-RSP,
    STOP-APP-RSP, VERSION, INFO, DUMP) and L{error_headers} the error headers.

The choices (1.3.x wire behaviour, where we are stricter than httpd, and why)
are written down in C{docs/mcmp.md}.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Optional, Union

import attrs
from attrs import field, frozen

__all__ = [
    "ALIAS",
    "CONTEXT",
    "CONTEXT_STATUSES",
    "DEFAULT_LIMITS",
    "DEFAULT_RELEASE",
    "FLUSHPACKETS_VALUES",
    "KNOWN_KEYS",
    "LEGACY_METHODS",
    "LOAD_PING_ONLY",
    "MBALAUI",
    "MCONTUI",
    "METHODS",
    "MHOSTRD",
    "MHOSTUI",
    "MNODEET",
    "MNODEEX",
    "MNODERD",
    "MNODERM",
    "MNODEUI",
    "NOCONAL",
    "NODE_TYPES",
    "PING_SCHEMES",
    "PROTOCOL_VERSION",
    "SALIBAD",
    "SALIBIG",
    "SALIEMP",
    "SBADFLD",
    "SBAFBIG",
    "SBALBIG",
    "SCMDUNS",
    "SCONBAD",
    "SCONBIG",
    "SCONEMP",
    "SDOMBIG",
    "SFLUBAD",
    "SHOSBIG",
    "SLOADBAD",
    "SMESBIG",
    "SMESPAR",
    "SMISFLD",
    "SMULALB",
    "SMULCTB",
    "SNOROUTE",
    "SPNGBAD",
    "SPNGSCH",
    "SPORBAD",
    "SPORBIG",
    "SREADER",
    "SROUBAD",
    "SROUBIG",
    "STIMBAD",
    "STTLBAD",
    "STYPBAD",
    "STYPBIG",
    "TYPE_GENERAL",
    "TYPE_MEM",
    "TYPE_SYNTAX",
    "AppRequest",
    "ConfigRequest",
    "DumpBalancer",
    "FieldLimits",
    "InfoContext",
    "InfoNode",
    "InfoVhost",
    "MCMPError",
    "MessageTooLarge",
    "Params",
    "PingRequest",
    "StatusRequest",
    "VhostGroup",
    "alias_too_big",
    "alias_without_context",
    "bad_flushwait",
    "bad_load",
    "bad_ping",
    "bad_port",
    "bad_timeout",
    "bad_ttl",
    "bad_type",
    "balancer_insert_failed",
    "balancer_too_big",
    "cannot_read_post_data",
    "canonical_key",
    "command_not_supported",
    "context_insert_failed",
    "context_too_big",
    "context_without_alias",
    "decode_app",
    "decode_config",
    "decode_ping",
    "decode_status",
    "domain_too_big",
    "empty_alias",
    "empty_context",
    "error_headers",
    "field_too_big",
    "format_dump",
    "format_info",
    "format_ping_rsp",
    "format_status_rsp",
    "format_stop_app_rsp",
    "format_version",
    "host_insert_failed",
    "host_read_failed",
    "host_too_big",
    "invalid_field",
    "is_legacy_method",
    "is_mcmp_method",
    "is_wildcard",
    "jvm_route_empty",
    "jvm_route_too_big",
    "mandatory_fields_missing",
    "mem_error",
    "message_too_large",
    "method_name",
    "no_context_and_alias",
    "no_jvm_route_given",
    "node_exists",
    "node_insert_failed",
    "node_unknown",
    "old_node_exists",
    "only_one_alias",
    "only_one_context",
    "parse_body",
    "port_too_big",
    "same_worker_exists",
    "syntax_error",
    "type_too_big",
    "unparseable",
    "unsupported_ping_scheme",
    "wants_xml",
]

#: Protocol version sent in every error reply (C{Version} header) and by VERSION.
PROTOCOL_VERSION = "0.2.1"

#: Default release string for VERSION.  It matches the pattern management tools
#: and the mod_proxy_cluster test-suite expect
#: (C{(mod_cluster|mod_proxy_cluster)/x.y.z.Final}); the C{Server} header is
#: where txmodcluster names itself.
DEFAULT_RELEASE = "mod_cluster/1.3.22.Final"

#: The MCMP methods we serve (upper case).  Method names are matched
#: case-insensitively, as httpd does.
METHODS: frozenset[str] = frozenset(
    {
        "CONFIG",
        "ENABLE-APP",
        "DISABLE-APP",
        "STOP-APP",
        "REMOVE-APP",
        "STATUS",
        "DUMP",
        "INFO",
        "PING",
        "VERSION",
    }
)

#: Methods httpd 1.3.x recognised but that no current node sends (C{ERROR} had
#: no handler at all; the JGroups id table is gone).  A resource may answer them
#: with L{command_not_supported}.
LEGACY_METHODS: frozenset[str] = frozenset({"ERROR", "ADDID", "REMOVEID", "QUERY"})

#: Key names with a canonical spelling (keys are matched case-insensitively).
KNOWN_KEYS: tuple[str, ...] = (
    "JVMRoute",
    "Balancer",
    "Domain",
    "Host",
    "Port",
    "Type",
    "Reversed",
    "flushpackets",
    "flushwait",
    "ping",
    "smax",
    "ttl",
    "Timeout",
    "StickySession",
    "StickySessionCookie",
    "StickySessionPath",
    "StickySessionRemove",
    "StickySessionForce",
    "WaitWorker",
    "Maxattempts",
    "Alias",
    "Context",
    "Load",
    "Scheme",
)

ALIAS = "Alias"
CONTEXT = "Context"

#: Node types (C{Type} in CONFIG) we accept.  C{ws}/C{wss} are what httpd
#: substitutes with C{EnableWsTunnel}; accepting them lets a node state it.
NODE_TYPES: frozenset[str] = frozenset({"ajp", "http", "https", "ws", "wss"})

#: Schemes accepted by PING with Scheme/Host/Port (2.x-HEAD list).
PING_SCHEMES: frozenset[str] = NODE_TYPES

#: Context states that may be reported (the Java parser knows only these).
CONTEXT_STATUSES: dict[str, int] = {"ENABLED": 1, "DISABLED": 2, "STOPPED": 3}

#: C{flushpackets} display values and their numeric form in DUMP (httpd enum).
FLUSHPACKETS_VALUES: dict[str, int] = {"Off": 0, "On": 1, "Auto": 2}

#: STATUS without C{Load}: probe the node and report its state, leave its load
#: factor untouched (2.x-HEAD semantics; 1.3.x used -1, i.e. "node in error").
LOAD_PING_ONLY = -2

#: Largest time value accepted (in milliseconds): 2**31-1 seconds.
_MAX_TIME_MS = (2**31 - 1) * 1000

_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1

# ASCII-only case folding, as C strcasecmp/apr_tolower do (str.lower() would
# also fold e.g. KELVIN SIGN to "k").
_ASCII_LOWER = str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"
)


_ASCII_UPPER = str.maketrans(
    "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def _lower(text: str) -> str:
    return text.translate(_ASCII_LOWER)


_CANONICAL: dict[str, str] = {_lower(k): k for k in KNOWN_KEYS}
_KNOWN = frozenset(KNOWN_KEYS)


def canonical_key(key: str) -> str:
    """
    The canonical spelling of a known key (case-insensitive match), else the
    key as given.

    @param key: a decoded key name.
    @return: e.g. C{"JVMRoute"} for C{"jvmroute"}; C{"Bogus"} for C{"Bogus"}.
    """
    return _CANONICAL.get(_lower(key), key)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

# Catalogue texts (names as in httpd's mod_manager.c).
SMESPAR = (
    "SYNTAX: Can't parse MCMP message. It might have contained illegal symbols "
    "or unknown elements."
)
SBALBIG = "SYNTAX: Balancer field too big"
SBAFBIG = "SYNTAX: A field is too big"
SROUBIG = "SYNTAX: JVMRoute field too big"
SROUBAD = "SYNTAX: JVMRoute can't be empty"
SDOMBIG = "SYNTAX: LBGroup field too big"
SHOSBIG = "SYNTAX: Host field too big"
SPORBIG = "SYNTAX: Port field too big"
STYPBIG = "SYNTAX: Type field too big"
SALIBIG = "SYNTAX: Alias field too big"
SCONBIG = "SYNTAX: Context field too big"
SFLUBAD = "SYNTAX: Flushwait field has bad value"
SPNGBAD = "SYNTAX: Ping field has bad value"
STTLBAD = "SYNTAX: TTL field has bad value"
STIMBAD = "SYNTAX: Timeout field has bad value"
SALIBAD = "SYNTAX: Alias without Context"
SCONBAD = "SYNTAX: Context without Alias"
NOCONAL = "SYNTAX: No Context and Alias in APP command"
SMULALB = "SYNTAX: Only one Alias in APP command"
SMULCTB = "SYNTAX: Only one Context in APP command"
SBADFLD = 'SYNTAX: Invalid field "{}" in message'
SMISFLD = "SYNTAX: Mandatory field(s) missing in message"
SCMDUNS = "SYNTAX: Command is not supported"
SREADER = "SYNTAX: {} can't read POST data"
# 2.x-HEAD placeholders ("TODO: ..." there); same words, SYNTAX prefix here.
SLOADBAD = "SYNTAX: Bad value for Load"
SNOROUTE = "SYNTAX: No JVMRoute given!"
SALIEMP = "SYNTAX: Empty Alias is not allowed"
SCONEMP = "SYNTAX: Empty Context is not allowed"
SPNGSCH = "SYNTAX: PING Unsupported scheme: {}"
# Ours (no httpd equivalent: httpd accepts any string and fails later).
STYPBAD = "SYNTAX: Type field has bad value"
SPORBAD = "SYNTAX: Port field has bad value"
SMESBIG = "SYNTAX: MCMP message too big ({} bytes, limit {})"

MNODEUI = 'MEM: Can\'t update or insert node with "{}" JVMRoute'
MNODERM = 'MEM: Old node with "{}" JVMRoute still exists'
MNODEEX = 'MEM: Node with "{}" JVMRoute already exists'
MBALAUI = 'MEM: Can\'t update or insert balancer for node with "{}" JVMRoute'
MNODERD = 'MEM: Can\'t read node with "{}" JVMRoute'
MHOSTRD = 'MEM: Can\'t read host alias for node with "{}" JVMRoute'
MHOSTUI = 'MEM: Can\'t update or insert host alias for node with "{}" JVMRoute'
MCONTUI = 'MEM: Can\'t update or insert context for node with "{}" JVMRoute'
MNODEET = "MEM: Another for the same worker already exist"

TYPE_SYNTAX = "SYNTAX"
TYPE_MEM = "MEM"
TYPE_GENERAL = "GENERAL"
_ERROR_TYPES = frozenset({TYPE_SYNTAX, TYPE_MEM, TYPE_GENERAL})

# Characters never allowed in a decoded token: httpd's list (< > " ' CR LF)
# plus every other C0 control and DEL (NUL would truncate a C string; the rest
# have no business in routes, host names or paths and would corrupt INFO lines).
_FORBIDDEN = re.compile("[<>\"'\x00-\x1f\x7f]")
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_MAX_INTERPOLATED = 128
#: longest C{Mess} text (values are cut first; this bounds the whole message)
_MAX_MESS = 512


def _clean(value: object) -> str:
    """
    Make a value safe to interpolate into a message that becomes a header:
    control characters (CR, LF, ...) become C{?}, and very long values are
    shortened.
    """
    text = _CONTROL.sub("?", str(value))
    if len(text) > _MAX_INTERPOLATED:
        text = text[:_MAX_INTERPOLATED] + "..."
    return text


class MCMPError(Exception):
    """
    An MCMP command failed; the reply is C{500} with headers C{Version},
    C{Type} and C{Mess} (see L{error_headers}).

    @ivar type: C{"SYNTAX"}, C{"MEM"} or C{"GENERAL"}.  The Java node treats
        SYNTAX as fatal (the proxy is marked DOWN until an operator resets the
        node); MEM and GENERAL are recovered on the next status cycle.
    @ivar mess: the message text, e.g. C{"SYNTAX: JVMRoute can't be empty"}.
        Never contains CR, LF or other control characters.
    """

    def __init__(self, type: str, mess: str) -> None:
        if type not in _ERROR_TYPES:
            raise ValueError(f"unknown MCMP error type {type!r}")
        self.type = type
        mess = _CONTROL.sub("?", mess)
        # A final bound: whatever a message interpolates, Mess stays a short header.
        self.mess = mess if len(mess) <= _MAX_MESS else mess[:_MAX_MESS] + "..."
        super().__init__(self.mess)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.type!r}, {self.mess!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MCMPError):
            return NotImplemented
        return (type(self), self.type, self.mess) == (type(other), other.type, other.mess)

    def __hash__(self) -> int:
        return hash((type(self), self.type, self.mess))


class MessageTooLarge(MCMPError):
    """
    The request body is larger than the configured maximum.  httpd silently
    truncates such a body; we refuse it with a SYNTAX answer instead.

    @ivar size: the body size in bytes.
    @ivar limit: the maximum allowed.
    """

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(TYPE_SYNTAX, SMESBIG.format(size, limit))


def syntax_error(mess: str) -> MCMPError:
    """A SYNTAX error with the given text."""
    return MCMPError(TYPE_SYNTAX, mess)


def mem_error(mess: str) -> MCMPError:
    """A MEM error with the given text."""
    return MCMPError(TYPE_MEM, mess)


def unparseable() -> MCMPError:
    """C{SMESPAR}: unparseable body, forbidden character, empty body."""
    return syntax_error(SMESPAR)


def balancer_too_big() -> MCMPError:
    """C{SBALBIG}."""
    return syntax_error(SBALBIG)


def field_too_big() -> MCMPError:
    """C{SBAFBIG}: StickySessionCookie or StickySessionPath too long."""
    return syntax_error(SBAFBIG)


def jvm_route_too_big() -> MCMPError:
    """C{SROUBIG}."""
    return syntax_error(SROUBIG)


def jvm_route_empty() -> MCMPError:
    """C{SROUBAD}: CONFIG or *-APP without JVMRoute."""
    return syntax_error(SROUBAD)


def domain_too_big() -> MCMPError:
    """C{SDOMBIG} (the Domain is called LBGroup in outputs)."""
    return syntax_error(SDOMBIG)


def host_too_big() -> MCMPError:
    """C{SHOSBIG}."""
    return syntax_error(SHOSBIG)


def port_too_big() -> MCMPError:
    """C{SPORBIG}."""
    return syntax_error(SPORBIG)


def type_too_big() -> MCMPError:
    """C{STYPBIG}."""
    return syntax_error(STYPBIG)


def alias_too_big() -> MCMPError:
    """C{SALIBIG} (2.x)."""
    return syntax_error(SALIBIG)


def context_too_big() -> MCMPError:
    """C{SCONBIG} (2.x)."""
    return syntax_error(SCONBIG)


def bad_flushwait() -> MCMPError:
    """C{SFLUBAD}."""
    return syntax_error(SFLUBAD)


def bad_ping() -> MCMPError:
    """C{SPNGBAD}."""
    return syntax_error(SPNGBAD)


def bad_ttl() -> MCMPError:
    """C{STTLBAD}."""
    return syntax_error(STTLBAD)


def bad_timeout() -> MCMPError:
    """C{STIMBAD}."""
    return syntax_error(STIMBAD)


def alias_without_context() -> MCMPError:
    """C{SALIBAD}."""
    return syntax_error(SALIBAD)


def context_without_alias() -> MCMPError:
    """C{SCONBAD}."""
    return syntax_error(SCONBAD)


def no_context_and_alias() -> MCMPError:
    """C{NOCONAL} (2.x-HEAD): a context-level *-APP with neither."""
    return syntax_error(NOCONAL)


def only_one_alias() -> MCMPError:
    """C{SMULALB} (1.3.x; we accumulate repeated keys instead)."""
    return syntax_error(SMULALB)


def only_one_context() -> MCMPError:
    """C{SMULCTB} (1.3.x; we accumulate repeated keys instead)."""
    return syntax_error(SMULCTB)


def invalid_field(key: str) -> MCMPError:
    """C{SBADFLD}: STATUS/PING with a key they do not know."""
    return syntax_error(SBADFLD.format(_clean(key)))


def mandatory_fields_missing() -> MCMPError:
    """C{SMISFLD}: PING with part of Scheme/Host/Port."""
    return syntax_error(SMISFLD)


def command_not_supported() -> MCMPError:
    """C{SCMDUNS}."""
    return syntax_error(SCMDUNS)


def cannot_read_post_data(method: str) -> MCMPError:
    """C{SREADER}: the body could not be read."""
    return syntax_error(SREADER.format(_clean(method)))


def bad_load() -> MCMPError:
    """STATUS Load not an integer in -1..100 (2.x: C{TODO: Bad value for Load})."""
    return syntax_error(SLOADBAD)


def no_jvm_route_given() -> MCMPError:
    """STATUS without JVMRoute (2.x: C{TODO: No JVMRoute given!})."""
    return syntax_error(SNOROUTE)


def empty_alias() -> MCMPError:
    """An empty Alias list element (2.x: C{TODO: Empty Alias is not allowed})."""
    return syntax_error(SALIEMP)


def empty_context() -> MCMPError:
    """An empty Context list element (2.x: C{TODO: Empty Context is not allowed})."""
    return syntax_error(SCONEMP)


def unsupported_ping_scheme(scheme: str) -> MCMPError:
    """PING with a Scheme other than ajp/http/https/ws/wss (2.x-HEAD)."""
    return syntax_error(SPNGSCH.format(_clean(scheme)))


def bad_type() -> MCMPError:
    """CONFIG Type not one of L{NODE_TYPES} (ours)."""
    return syntax_error(STYPBAD)


def bad_port() -> MCMPError:
    """Port not a decimal number in 1..65535 (ours)."""
    return syntax_error(SPORBAD)


def message_too_large(size: int, limit: int) -> MessageTooLarge:
    """The body (or its announced Content-Length) exceeds the limit."""
    return MessageTooLarge(size, limit)


def node_insert_failed(route: str) -> MCMPError:
    """C{MNODEUI}: node quota reached / insert failed."""
    return mem_error(MNODEUI.format(_clean(route)))


def old_node_exists(route: str) -> MCMPError:
    """C{MNODERM} (1.3.x): CONFIG changed a hard field; old node marked removed."""
    return mem_error(MNODERM.format(_clean(route)))


def node_exists(route: str) -> MCMPError:
    """2.x-HEAD: CONFIG changed a hard field; nothing changed."""
    return mem_error(MNODEEX.format(_clean(route)))


def balancer_insert_failed(route: str) -> MCMPError:
    """C{MBALAUI}: balancer quota reached."""
    return mem_error(MBALAUI.format(_clean(route)))


def node_unknown(route: str) -> MCMPError:
    """C{MNODERD}: unknown (or removed) node in *-APP, STATUS, PING."""
    return mem_error(MNODERD.format(_clean(route)))


def host_read_failed(route: str) -> MCMPError:
    """C{MHOSTRD} (1.3.x internal failure)."""
    return mem_error(MHOSTRD.format(_clean(route)))


def host_insert_failed(
    route: str, alias: Optional[str] = None, type: str = TYPE_MEM
) -> MCMPError:
    """
    C{MHOSTUI}: alias quota reached.  With C{alias}, the 2.x suffix
    C{" (<alias>)"} is added.  httpd sends this one with C{Type: GENERAL} (it
    forgets to set the type); pass C{type="GENERAL"} to imitate that.
    """
    mess = MHOSTUI.format(_clean(route))
    if alias is not None:
        mess += f" ({_clean(alias)})"
    return MCMPError(type, mess)


def context_insert_failed(
    route: str,
    context: Optional[str] = None,
    alias: Optional[str] = None,
    type: str = TYPE_MEM,
) -> MCMPError:
    """
    C{MCONTUI}: context quota reached.  With C{context} and C{alias}, the 2.x
    suffix C{" (<context> and alias: <alias>)"} is added.  See
    L{host_insert_failed} about C{type}.
    """
    mess = MCONTUI.format(_clean(route))
    if context is not None:
        mess += f" ({_clean(context)} and alias: {_clean(alias or '')})"
    return MCMPError(type, mess)


def same_worker_exists() -> MCMPError:
    """C{MNODEET}: another JVMRoute already uses this host/port/type/balancer."""
    return mem_error(MNODEET)


def error_headers(err: MCMPError) -> list[tuple[bytes, bytes]]:
    """
    The response headers of an MCMP error (the status is C{500 Internal Server
    Error}).

    @return: C{[(b"Version", b"0.2.1"), (b"Type", ...), (b"Mess", ...)]}; values
        are ASCII (anything else is backslash-escaped) without CR/LF.
    """
    mess = _CONTROL.sub("?", err.mess).encode("ascii", "backslashreplace")
    return [
        (b"Version", PROTOCOL_VERSION.encode("ascii")),
        (b"Type", err.type.encode("ascii")),
        (b"Mess", mess),
    ]


# ---------------------------------------------------------------------------
# Methods and URIs
# ---------------------------------------------------------------------------


def _text(value: Union[bytes, str]) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("latin-1")
    return value


def method_name(name: Union[bytes, str]) -> Optional[str]:
    """
    The canonical (upper-case) MCMP method name, or C{None} if C{name} is not
    one of L{METHODS} (compared case-insensitively).
    """
    upper = _text(name).translate(_ASCII_UPPER)
    return upper if upper in METHODS else None


def is_mcmp_method(name: Union[bytes, str]) -> bool:
    """Whether C{name} is one of L{METHODS}, case-insensitively."""
    return method_name(name) is not None


def is_legacy_method(name: Union[bytes, str]) -> bool:
    """Whether C{name} is one of L{LEGACY_METHODS}, case-insensitively."""
    return _text(name).translate(_ASCII_UPPER) in LEGACY_METHODS


def is_wildcard(uri: Union[bytes, str]) -> bool:
    """
    Whether the request URI designates the whole node: exactly C{*} or ending
    in C{/*} (any query string is ignored).
    """
    path = _text(uri).split("?", 1)[0]
    return path == "*" or path.endswith("/*")


def wants_xml(accept_header: Union[bytes, str, None]) -> bool:
    """
    Whether INFO/DUMP/VERSION should answer XML: the C{Accept} header contains
    C{text/xml} (httpd does a substring match; we also ignore case).
    """
    if accept_header is None:
        return False
    return "text/xml" in _lower(_text(accept_header))


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
        wanted = _lower(key)
        return any(_lower(k) == wanted for k, _ in self.pairs)

    def keys(self) -> tuple[str, ...]:
        """The keys in order (repeats included)."""
        return tuple(k for k, _ in self.pairs)

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """The value of the last occurrence of C{key} (case-insensitive)."""
        wanted = _lower(key)
        for k, v in reversed(self.pairs):
            if _lower(k) == wanted:
                return v
        return default

    def get_all(self, key: str) -> tuple[str, ...]:
        """All values of C{key} (case-insensitive), in order."""
        wanted = _lower(key)
        return tuple(v for k, v in self.pairs if _lower(k) == wanted)


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
    folded = _lower(value)
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
    balancer = _lower(default_balancer)
    fields: dict[str, object] = {}
    jvm_route = ""
    groups: list[list[Optional[list[str]]]] = []  # [aliases|None, contexts|None]

    for key, value in params:
        if key == ALIAS or key == CONTEXT:
            is_alias = key == ALIAS
            if is_alias:
                items = _split_list(_lower(value), limits.alias, alias_too_big, empty_alias)
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
                warnings.append(f"unknown key {_clean(key)!r} ignored")
            continue
        if key == "JVMRoute":
            if _utf8_len(value) > limits.jvm_route:
                raise jvm_route_too_big()
            jvm_route = value
        elif key == "Balancer":
            if _utf8_len(value) > limits.balancer:
                raise balancer_too_big()
            lowered = _lower(value)
            if lowered != value:
                warnings.append(f"balancer name {_clean(value)!r} lower-cased")
            balancer = lowered
        elif key in _BALANCER_BOOLS:
            flag = _parse_bool(value)
            if flag is None:
                warnings.append(f"{key}={_clean(value)!r} not a boolean, ignored")
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
            node_type = _lower(value)
            if node_type not in NODE_TYPES:
                raise bad_type()
            fields["type"] = node_type
        elif key == "Reversed":
            flag = _parse_bool(value)
            if flag is None:
                warnings.append(f"Reversed={_clean(value)!r} not a boolean, ignored")
            else:
                fields["reversed"] = flag
        elif key == "flushpackets":
            mode = _FLUSHPACKETS.get(_lower(value))
            if mode is None:
                warnings.append(f"flushpackets={_clean(value)!r} unknown, ignored")
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
            warnings.append(f"unknown key {_clean(key)!r} ignored")

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
            aliases.extend(_split_list(_lower(value), limits.alias, alias_too_big, empty_alias))
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
                folded = _lower(value)
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


# ---------------------------------------------------------------------------
# Replies
# ---------------------------------------------------------------------------

_AMP_ESCAPES = str.maketrans({"%": "%25", "&": "%26", "=": "%3D"})


def _amp_value(value: object) -> str:
    """A value for the C{&}-separated replies: no C{& = %}, no controls."""
    return _CONTROL.sub("?", str(value)).translate(_AMP_ESCAPES)


def _state(ok: bool) -> str:
    return "OK" if ok else "NOTOK"


def format_status_rsp(route: str, ok: bool, id: int) -> bytes:
    """
    The STATUS reply body, as httpd sends it::

        Type=STATUS-RSP&JVMRoute=node1&State=OK&id=1795312129645537\\n

    @param ok: the node answered its probe (C{State=OK}) or not (C{NOTOK}).
    @param id: an integer stable for the life of the proxy (httpd: its
        restart time).
    """
    return (
        f"Type=STATUS-RSP&JVMRoute={_amp_value(route)}&State={_state(ok)}&id={int(id)}\n"
    ).encode()


def format_ping_rsp(route: Optional[str], ok: bool, id: int) -> bytes:
    """
    The PING reply body: C{Type=PING-RSP[&JVMRoute=<route>]&State=OK|NOTOK&id=<id>\\n}
    (the JVMRoute part only when a node was pinged by route).
    """
    parts = ["Type=PING-RSP"]
    if route:
        parts.append(f"JVMRoute={_amp_value(route)}")
    parts.append(f"State={_state(ok)}")
    parts.append(f"id={int(id)}")
    return ("&".join(parts) + "\n").encode("utf-8")


def format_stop_app_rsp(route: str, alias: str, context: str, requests: int) -> bytes:
    """
    The context-level STOP-APP reply body in the 1.3.x form the Java node
    parses (it only reads C{Requests})::

        Type=STOP-APP-RSP&JvmRoute=node1&Alias=localhost&Context=/app&Requests=3\\n

    Alias and context are printed in full (1.3.x truncated them to 8
    characters by accident).  A wildcard STOP-APP has an empty body.
    """
    return (
        f"Type=STOP-APP-RSP&JvmRoute={_amp_value(route)}&Alias={_amp_value(alias)}"
        f"&Context={_amp_value(context)}&Requests={int(requests)}\n"
    ).encode()


_XML_DECL = '<?xml version="1.0" standalone="yes" ?>\n'
_XML_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"}
)
# Characters XML 1.0 cannot carry at all.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def _x(value: object) -> str:
    """Escape for XML text and attribute values."""
    return _XML_INVALID.sub("\ufffd", str(value)).translate(_XML_ESCAPES)


def _t(value: object) -> str:
    """A value for the line-oriented text formats: no control characters."""
    return _CONTROL.sub("?", str(value))


def format_version(release: str = DEFAULT_RELEASE, xml: bool = False) -> bytes:
    """
    The VERSION reply body::

        release: mod_cluster/1.3.22.Final, protocol: 0.2.1\\n

    or, for XML::

        <?xml version="1.0" standalone="yes" ?>\\n
        <version><release>...</release><protocol>0.2.1</protocol></version>\\n
    """
    if xml:
        text = (
            f"{_XML_DECL}<version><release>{_x(release)}</release>"
            f"<protocol>{PROTOCOL_VERSION}</protocol></version>\n"
        )
    else:
        text = f"release: {_t(release)}, protocol: {PROTOCOL_VERSION}\n"
    return text.encode("utf-8")


def _flushpackets(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if value not in FLUSHPACKETS_VALUES:
        raise ValueError(f"flushpackets must be Off, On or Auto, not {value!r}")


def _context_status(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if value not in CONTEXT_STATUSES:
        raise ValueError(f"context status must be ENABLED, DISABLED or STOPPED, not {value!r}")


@frozen
class InfoNode:
    """
    One node as INFO and DUMP show it.  The model fills these; the codec only
    prints them.

    @ivar id: the node's id (we number from 1, like 1.3.x).
    @ivar name: the JVMRoute (C{"REMOVED"} for a removed node still listed).
    @ivar port: printed as given.
    @ivar read: bytes read from the node; C{transferred}: bytes sent to it;
        C{connected}: requests in flight; C{load}: current load factor.
    """

    id: int
    name: str
    balancer: str
    domain: str
    host: str
    port: Union[int, str]
    type: str
    flushpackets: str = field(default="Off", validator=_flushpackets)
    flushwait_ms: int = 10
    ping_s: int = 10
    smax: int = -1
    ttl_s: int = 60
    timeout_s: int = 0
    elected: int = 0
    read: int = 0
    transferred: int = 0
    connected: int = 0
    load: int = -1


@frozen
class InfoVhost:
    """
    One alias record: alias C{alias} (record id C{alias_id}) of virtual host
    C{vhost_id} of node C{node_id}.
    """

    node_id: int
    vhost_id: int
    alias_id: int
    alias: str


@frozen
class InfoContext:
    """One context record; C{status} is ENABLED, DISABLED or STOPPED (never REMOVED)."""

    node_id: int
    vhost_id: int
    context_id: int
    path: str
    status: str = field(validator=_context_status)


@frozen
class DumpBalancer:
    """
    One balancer as DUMP shows it.

    @ivar sticky: sticky sessions on; C{cookie}/C{path}: session cookie and
        path-parameter names; C{remove}/C{force}: StickySessionRemove/Force;
        C{timeout_s}: WaitWorker seconds; C{max_attempts}: Maxattempts.
    """

    id: int
    name: str
    sticky: bool = True
    cookie: str = "JSESSIONID"
    path: str = "jsessionid"
    remove: bool = False
    force: bool = True
    timeout_s: int = 0
    max_attempts: int = 1


def _i(value: object) -> int:
    return int(value)  # type: ignore[call-overload]


def format_info(
    nodes: Iterable[InfoNode],
    vhosts: Iterable[InfoVhost],
    contexts: Iterable[InfoContext],
    xml: bool = False,
) -> bytes:
    """
    The INFO reply body.  The Java node parses the text form to resynchronise
    (every context must belong to a vhost listed before it, of a node listed
    before that), so the layout is exactly httpd's: all C{Node:} lines, then
    all C{Vhost:} lines, then all C{Context:} lines, each ending in C{\\n};
    nothing for empty tables.

    @param xml: the XML form (no indentation whitespace, no trailing newline,
        as 2.x).
    """
    out: list[str] = []
    if xml:
        out.append(_XML_DECL)
        out.append("<Info><Nodes>")
        for n in nodes:
            out.append(
                f'<Node id="{_i(n.id)}" name="{_x(n.name)}">'
                f"<Balancer>{_x(n.balancer)}</Balancer>"
                f"<LBGroup>{_x(n.domain)}</LBGroup>"
                f"<Host>{_x(n.host)}</Host>"
                f"<Port>{_x(n.port)}</Port>"
                f"<Type>{_x(n.type)}</Type>"
                f"<Flushpackets>{n.flushpackets}</Flushpackets>"
                f"<Flushwait>{_i(n.flushwait_ms)}</Flushwait>"
                f"<Ping>{_i(n.ping_s)}</Ping>"
                f"<Smax>{_i(n.smax)}</Smax>"
                f"<Ttl>{_i(n.ttl_s)}</Ttl>"
                f"<Elected>{_i(n.elected)}</Elected>"
                f"<Read>{_i(n.read)}</Read>"
                f"<Transfered>{_i(n.transferred)}</Transfered>"
                f"<Connected>{_i(n.connected)}</Connected>"
                f"<Load>{_i(n.load)}</Load>"
                "</Node>"
            )
        out.append("</Nodes><Vhosts>")
        for v in vhosts:
            out.append(
                f'<Vhost id="{_i(v.vhost_id)}" alias="{_x(v.alias)}">'
                f'<Node id="{_i(v.node_id)}"/></Vhost>'
            )
        out.append("</Vhosts><Contexts>")
        for c in contexts:
            out.append(
                f'<Context id="{_i(c.context_id)}">'
                f'<Status id="{CONTEXT_STATUSES[c.status]}">{c.status}</Status>'
                f"<Context>{_x(c.path)}</Context>"
                f'<Node id="{_i(c.node_id)}"/>'
                f'<Vhost id="{_i(c.vhost_id)}"/>'
                "</Context>"
            )
        out.append("</Contexts></Info>")
    else:
        for n in nodes:
            out.append(
                f"Node: [{_i(n.id)}],Name: {_t(n.name)},Balancer: {_t(n.balancer)},"
                f"LBGroup: {_t(n.domain)},Host: {_t(n.host)},Port: {_t(n.port)},"
                f"Type: {_t(n.type)},Flushpackets: {n.flushpackets},"
                f"Flushwait: {_i(n.flushwait_ms)},Ping: {_i(n.ping_s)},"
                f"Smax: {_i(n.smax)},Ttl: {_i(n.ttl_s)},Elected: {_i(n.elected)},"
                f"Read: {_i(n.read)},Transfered: {_i(n.transferred)},"
                f"Connected: {_i(n.connected)},Load: {_i(n.load)}\n"
            )
        for v in vhosts:
            out.append(
                f"Vhost: [{_i(v.node_id)}:{_i(v.vhost_id)}:{_i(v.alias_id)}], "
                f"Alias: {_t(v.alias)}\n"
            )
        for c in contexts:
            out.append(
                f"Context: [{_i(c.node_id)}:{_i(c.vhost_id)}:{_i(c.context_id)}], "
                f"Context: {_t(c.path)}, Status: {c.status}\n"
            )
    return "".join(out).encode("utf-8")


def format_dump(
    balancers: Iterable[DumpBalancer],
    nodes: Iterable[InfoNode],
    vhosts: Iterable[InfoVhost],
    contexts: Iterable[InfoContext],
    xml: bool = False,
) -> bytes:
    """
    The DUMP reply body: all balancers, all nodes, all hosts (alias records),
    all contexts, in httpd's layouts (text: one line each ending C{\\n},
    nothing for empty tables; XML: without 1.3.x/2.x indentation whitespace,
    no trailing newline).  The node line's C{[slot:id]} prints the node id
    twice (we have no separate slot numbers).
    """
    out: list[str] = []
    if xml:
        out.append(_XML_DECL)
        out.append("<Dump><Balancers>")
        for b in balancers:
            out.append(
                f'<Balancer id="{_i(b.id)}" name="{_x(b.name)}">'
                "<StickySession>"
                f"<Enabled>{int(bool(b.sticky))}</Enabled>"
                f"<Cookie>{_x(b.cookie)}</Cookie>"
                f"<Path>{_x(b.path)}</Path>"
                f"<Remove>{int(bool(b.remove))}</Remove>"
                f"<Force>{int(bool(b.force))}</Force>"
                "</StickySession>"
                f"<Timeout>{_i(b.timeout_s)}</Timeout>"
                f"<MaxAttempts>{_i(b.max_attempts)}</MaxAttempts>"
                "</Balancer>"
            )
        out.append("</Balancers><Nodes>")
        for n in nodes:
            out.append(
                f'<Node id="{_i(n.id)}">'
                f"<Balancer>{_x(n.balancer)}</Balancer>"
                f"<JVMRoute>{_x(n.name)}</JVMRoute>"
                f"<LBGroup>{_x(n.domain)}</LBGroup>"
                f"<Host>{_x(n.host)}</Host>"
                f"<Port>{_x(n.port)}</Port>"
                f"<Type>{_x(n.type)}</Type>"
                f"<FlushPackets>{FLUSHPACKETS_VALUES[n.flushpackets]}</FlushPackets>"
                f"<FlushWait>{_i(n.flushwait_ms)}</FlushWait>"
                f"<Ping>{_i(n.ping_s)}</Ping>"
                f"<Smax>{_i(n.smax)}</Smax>"
                f"<Ttl>{_i(n.ttl_s)}</Ttl>"
                f"<Timeout>{_i(n.timeout_s)}</Timeout>"
                "</Node>"
            )
        out.append("</Nodes><Hosts>")
        for v in vhosts:
            out.append(
                f'<Host id="{_i(v.alias_id)}" alias="{_x(v.alias)}">'
                f"<Vhost>{_i(v.vhost_id)}</Vhost><Node>{_i(v.node_id)}</Node></Host>"
            )
        out.append("</Hosts><Contexts>")
        for c in contexts:
            out.append(
                f'<Context id="{_i(c.context_id)}" path="{_x(c.path)}">'
                f"<Vhost>{_i(c.vhost_id)}</Vhost><Node>{_i(c.node_id)}</Node>"
                f'<Status id="{CONTEXT_STATUSES[c.status]}">{c.status}</Status>'
                "</Context>"
            )
        out.append("</Contexts></Dump>")
    else:
        for b in balancers:
            out.append(
                f"balancer: [{_i(b.id)}] Name: {_t(b.name)} Sticky: {int(bool(b.sticky))} "
                f"[{_t(b.cookie)}]/[{_t(b.path)}] remove: {int(bool(b.remove))} "
                f"force: {int(bool(b.force))} Timeout: {_i(b.timeout_s)} "
                f"maxAttempts: {_i(b.max_attempts)}\n"
            )
        for n in nodes:
            out.append(
                f"node: [{_i(n.id)}:{_i(n.id)}],Balancer: {_t(n.balancer)},"
                f"JVMRoute: {_t(n.name)},LBGroup: [{_t(n.domain)}],Host: {_t(n.host)},"
                f"Port: {_t(n.port)},Type: {_t(n.type)},"
                f"flushpackets: {FLUSHPACKETS_VALUES[n.flushpackets]},"
                f"flushwait: {_i(n.flushwait_ms)},ping: {_i(n.ping_s)},"
                f"smax: {_i(n.smax)},ttl: {_i(n.ttl_s)},timeout: {_i(n.timeout_s)}\n"
            )
        for v in vhosts:
            out.append(
                f"host: {_i(v.alias_id)} [{_t(v.alias)}] vhost: {_i(v.vhost_id)} "
                f"node: {_i(v.node_id)}\n"
            )
        for c in contexts:
            out.append(
                f"context: {_i(c.context_id)} [{_t(c.path)}] vhost: {_i(c.vhost_id)} "
                f"node: {_i(c.node_id)} status: {CONTEXT_STATUSES[c.status]}\n"
            )
    return "".join(out).encode("utf-8")
