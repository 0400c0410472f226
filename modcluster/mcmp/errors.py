# -*- test-case-name: tests.unit.mcmp.test_wire -*-
"""
MCMP error replies: the catalogue of httpd's C{mod_manager.c} texts and the
L{MCMPError} they become.

One table (L{CATALOGUE}) lists every error: its httpd code name, its type
(C{SYNTAX} or C{MEM}) and its exact message text; each entry is a callable
L{ErrorKind} that builds the L{MCMPError} (interpolated values are made safe
for a header first).  The module-level names (C{unparseable}, C{node_unknown},
...) are the entries, so a caller raises C{errors.node_unknown(route)}.
The few errors whose text varies in more than one placeholder
(L{host_insert_failed}, L{context_insert_failed}, L{message_too_large}) are
functions.  Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import re
from typing import Optional

from attrs import frozen

from modcluster.mcmp.names import PROTOCOL_VERSION

__all__ = [
    "CATALOGUE",
    "TYPE_GENERAL",
    "TYPE_MEM",
    "TYPE_SYNTAX",
    "ErrorKind",
    "MCMPError",
    "MessageTooLarge",
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
    "clean_value",
    "command_not_supported",
    "context_insert_failed",
    "context_too_big",
    "context_without_alias",
    "domain_too_big",
    "empty_alias",
    "empty_context",
    "error_headers",
    "field_too_big",
    "forwarding_loop",
    "host_insert_failed",
    "host_read_failed",
    "host_too_big",
    "invalid_field",
    "jvm_route_empty",
    "jvm_route_too_big",
    "mandatory_fields_missing",
    "mem_error",
    "message_too_large",
    "no_context_and_alias",
    "no_jvm_route_given",
    "node_exists",
    "node_insert_failed",
    "node_unknown",
    "old_node_exists",
    "only_one_alias",
    "only_one_context",
    "port_too_big",
    "same_worker_exists",
    "syntax_error",
    "type_too_big",
    "unparseable",
    "unsupported_ping_scheme",
]

TYPE_SYNTAX = "SYNTAX"
TYPE_MEM = "MEM"
TYPE_GENERAL = "GENERAL"
_ERROR_TYPES = frozenset({TYPE_SYNTAX, TYPE_MEM, TYPE_GENERAL})

_CONTROL = re.compile("[\x00-\x1f\x7f]")
_MAX_INTERPOLATED = 128
#: longest C{Mess} text (values are cut first; this bounds the whole message)
_MAX_MESS = 512


def clean_value(value: object) -> str:
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
        super().__init__(TYPE_SYNTAX, _TOO_LARGE.text.format(size, limit))


def syntax_error(mess: str) -> MCMPError:
    """A SYNTAX error with the given text."""
    return MCMPError(TYPE_SYNTAX, mess)


def mem_error(mess: str) -> MCMPError:
    """A MEM error with the given text."""
    return MCMPError(TYPE_MEM, mess)


@frozen
class ErrorKind:
    """
    One catalogue entry: calling it returns the L{MCMPError}.

    @ivar code: httpd's name of the text (C{SMESPAR}, C{MNODERD}, ...).
    @ivar type: C{SYNTAX} or C{MEM}.
    @ivar text: the exact message, starting with C{"<type>: "}; C{{}} marks
        where the (cleaned) arguments go.
    @ivar doc: when it is sent.
    """

    code: str
    type: str
    text: str
    doc: str

    def __call__(self, *values: object) -> MCMPError:
        if not values:
            return MCMPError(self.type, self.text)
        return MCMPError(self.type, self.text.format(*(clean_value(v) for v in values)))


#: The catalogue, by code name (names as in httpd's mod_manager.c).
CATALOGUE: dict[str, ErrorKind] = {}


def _entry(code: str, type: str, text: str, doc: str) -> ErrorKind:
    if not text.startswith(type + ": "):
        raise ValueError(f"{code}: text does not start with its type {type!r}")
    kind = CATALOGUE[code] = ErrorKind(code, type, text, doc)
    return kind


S, M = TYPE_SYNTAX, TYPE_MEM

# name = _entry(code, type, exact text, when)
unparseable = _entry("SMESPAR", S, "SYNTAX: Can't parse MCMP message. It might have contained "
                     "illegal symbols or unknown elements.",
                     "unparseable body, forbidden character, empty body")
balancer_too_big = _entry("SBALBIG", S, "SYNTAX: Balancer field too big", "")
field_too_big = _entry("SBAFBIG", S, "SYNTAX: A field is too big",
                       "StickySessionCookie or StickySessionPath too long")
jvm_route_too_big = _entry("SROUBIG", S, "SYNTAX: JVMRoute field too big", "")
jvm_route_empty = _entry("SROUBAD", S, "SYNTAX: JVMRoute can't be empty",
                         "CONFIG or *-APP without JVMRoute")
domain_too_big = _entry("SDOMBIG", S, "SYNTAX: LBGroup field too big",
                        "the Domain is called LBGroup in outputs")
host_too_big = _entry("SHOSBIG", S, "SYNTAX: Host field too big", "")
port_too_big = _entry("SPORBIG", S, "SYNTAX: Port field too big", "")
type_too_big = _entry("STYPBIG", S, "SYNTAX: Type field too big", "")
alias_too_big = _entry("SALIBIG", S, "SYNTAX: Alias field too big", "2.x")
context_too_big = _entry("SCONBIG", S, "SYNTAX: Context field too big", "2.x")
bad_flushwait = _entry("SFLUBAD", S, "SYNTAX: Flushwait field has bad value", "")
bad_ping = _entry("SPNGBAD", S, "SYNTAX: Ping field has bad value", "")
bad_ttl = _entry("STTLBAD", S, "SYNTAX: TTL field has bad value", "")
bad_timeout = _entry("STIMBAD", S, "SYNTAX: Timeout field has bad value", "")
alias_without_context = _entry("SALIBAD", S, "SYNTAX: Alias without Context", "")
context_without_alias = _entry("SCONBAD", S, "SYNTAX: Context without Alias", "")
no_context_and_alias = _entry("NOCONAL", S, "SYNTAX: No Context and Alias in APP command",
                              "2.x-HEAD: a context-level *-APP with neither")
only_one_alias = _entry("SMULALB", S, "SYNTAX: Only one Alias in APP command",
                        "1.3.x; we accumulate repeated keys instead")
only_one_context = _entry("SMULCTB", S, "SYNTAX: Only one Context in APP command",
                          "1.3.x; we accumulate repeated keys instead")
invalid_field = _entry("SBADFLD", S, 'SYNTAX: Invalid field "{}" in message',
                       "STATUS/PING with a key they do not know; argument: the key")
mandatory_fields_missing = _entry("SMISFLD", S, "SYNTAX: Mandatory field(s) missing in message",
                                  "PING with part of Scheme/Host/Port")
command_not_supported = _entry("SCMDUNS", S, "SYNTAX: Command is not supported", "")
cannot_read_post_data = _entry("SREADER", S, "SYNTAX: {} can't read POST data",
                               "the body could not be read; argument: the method")
# 2.x-HEAD placeholders ("TODO: ..." there); same words, SYNTAX prefix here.
bad_load = _entry("SLOADBAD", S, "SYNTAX: Bad value for Load",
                  "STATUS Load not an integer in -1..100")
no_jvm_route_given = _entry("SNOROUTE", S, "SYNTAX: No JVMRoute given!", "STATUS without JVMRoute")
empty_alias = _entry("SALIEMP", S, "SYNTAX: Empty Alias is not allowed",
                     "an empty Alias list element")
empty_context = _entry("SCONEMP", S, "SYNTAX: Empty Context is not allowed",
                       "an empty Context list element")
unsupported_ping_scheme = _entry("SPNGSCH", S, "SYNTAX: PING Unsupported scheme: {}",
                                 "PING with a Scheme other than ajp/http/https/ws/wss")
# Ours (no httpd equivalent: httpd accepts any string and fails later).
bad_type = _entry("STYPBAD", S, "SYNTAX: Type field has bad value",
                  "CONFIG Type not one of NODE_TYPES")
bad_port = _entry("SPORBAD", S, "SYNTAX: Port field has bad value",
                  "Port not a decimal number in 1..65535")
_TOO_LARGE = _entry("SMESBIG", S, "SYNTAX: MCMP message too big ({} bytes, limit {})",
                 "the body (or its announced Content-Length) exceeds the limit; "
                 "raised as MessageTooLarge")

node_insert_failed = _entry("MNODEUI", M, 'MEM: Can\'t update or insert node with "{}" JVMRoute',
                            "node quota reached / insert failed")
old_node_exists = _entry("MNODERM", M, 'MEM: Old node with "{}" JVMRoute still exists',
                         "1.3.x: CONFIG changed a hard field; old node marked removed")
node_exists = _entry("MNODEEX", M, 'MEM: Node with "{}" JVMRoute already exists',
                     "2.x-HEAD: CONFIG changed a hard field; nothing changed")
balancer_insert_failed = _entry("MBALAUI", M, "MEM: Can't update or insert balancer for node "
                                'with "{}" JVMRoute', "balancer quota reached")
node_unknown = _entry("MNODERD", M, 'MEM: Can\'t read node with "{}" JVMRoute',
                      "unknown (or removed) node in *-APP, STATUS, PING")
host_read_failed = _entry("MHOSTRD", M, "MEM: Can't read host alias for node with "
                          '"{}" JVMRoute', "1.3.x internal failure")
_HOST_INSERT = _entry("MHOSTUI", M, "MEM: Can't update or insert host alias for node with "
                 '"{}" JVMRoute', "alias quota reached; see host_insert_failed")
_CONTEXT_INSERT = _entry("MCONTUI", M, "MEM: Can't update or insert context for node with "
                 '"{}" JVMRoute', "context quota reached; see context_insert_failed")
same_worker_exists = _entry("MNODEET", M, "MEM: Another for the same worker already exist",
                            "another JVMRoute already uses this host/port/type/balancer")

del S, M


def message_too_large(size: int, limit: int) -> MessageTooLarge:
    """The body (or its announced Content-Length) exceeds the limit."""
    return MessageTooLarge(size, limit)


def host_insert_failed(
    route: str, alias: Optional[str] = None, type: str = TYPE_MEM
) -> MCMPError:
    """
    C{MHOSTUI}: alias quota reached.  With C{alias}, the 2.x suffix
    C{" (<alias>)"} is added.  httpd sends this one with C{Type: GENERAL} (it
    forgets to set the type); pass C{type="GENERAL"} to imitate that.
    """
    mess = _HOST_INSERT.text.format(clean_value(route))
    if alias is not None:
        mess += f" ({clean_value(alias)})"
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
    mess = _CONTEXT_INSERT.text.format(clean_value(route))
    if context is not None:
        mess += f" ({clean_value(context)} and alias: {clean_value(alias or '')})"
    return MCMPError(type, mess)


def forwarding_loop(route: str, listener: str, kind: str = "proxy") -> MCMPError:
    """
    Ours (no httpd equivalent): a CONFIG whose Host and Port reach one of
    the balancer's own proxy listeners C{listener} (C{"host:port"}): every
    request to that node would come back to the balancer.  MEM, the type of
    a well-formed CONFIG the balancer cannot take (as
    L{same_worker_exists}), with the text of L{node_insert_failed} and the
    reason in parentheses as 2.x adds them; not SYNTAX, which would make
    the node give up on this balancer until an operator resets it, for a
    refusal that depends on the balancer's listeners (a reload can change
    them) and goes away when the node's address is corrected.
    """
    if kind != "proxy":
        # another listener of ours (management, console): not a loop, but
        # every proxy client would reach it through the node, from this host
        return MCMPError(TYPE_MEM, node_insert_failed.text.format(clean_value(route))
                         + f" ({clean_value(listener)} is a {kind} listener of this"
                           " balancer, not a node)")
    return MCMPError(TYPE_MEM, node_insert_failed.text.format(clean_value(route))
                     + f" ({clean_value(listener)} is a proxy listener of this balancer:"
                       " forwarding loop)")


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
