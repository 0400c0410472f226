# -*- test-case-name: tests.unit.mcmp.test_wire -*-
"""
MCMP names: the protocol version, the methods, the known keys and the value
sets shared by the request decoders (L{modcluster.mcmp.decode}), the error
catalogue (L{modcluster.mcmp.errors}) and the reply formatters
(L{modcluster.mcmp.replies}); method and URI helpers for the resource.
"""

from __future__ import annotations

from typing import Optional, Union

__all__ = [
    "ALIAS",
    "CONTEXT",
    "CONTEXT_STATUSES",
    "DEFAULT_RELEASE",
    "FLUSHPACKETS_VALUES",
    "KNOWN_KEYS",
    "LEGACY_METHODS",
    "LOAD_PING_ONLY",
    "METHODS",
    "NODE_TYPES",
    "PING_SCHEMES",
    "PROTOCOL_VERSION",
    "ascii_lower",
    "canonical_key",
    "is_legacy_method",
    "is_mcmp_method",
    "is_wildcard",
    "method_name",
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

# ASCII-only case folding, as C strcasecmp/apr_tolower do (str.lower() would
# also fold e.g. KELVIN SIGN to "k").
_ASCII_LOWER = str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"
)


_ASCII_UPPER = str.maketrans(
    "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def ascii_lower(text: str) -> str:
    """C{text} with ASCII letters lower-cased (C{strcasecmp}/C{apr_tolower} rules)."""
    return text.translate(_ASCII_LOWER)


_CANONICAL: dict[str, str] = {ascii_lower(k): k for k in KNOWN_KEYS}


def canonical_key(key: str) -> str:
    """
    The canonical spelling of a known key (case-insensitive match), else the
    key as given.

    @param key: a decoded key name.
    @return: e.g. C{"JVMRoute"} for C{"jvmroute"}; C{"Bogus"} for C{"Bogus"}.
    """
    return _CANONICAL.get(ascii_lower(key), key)




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
    return "text/xml" in ascii_lower(_text(accept_header))
