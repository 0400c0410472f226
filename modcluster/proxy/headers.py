"""
Pure HTTP/1.1 helpers of the data plane: which headers are hop-by-hop, the
proxy's own small error responses, status lines.  No I/O, no clock.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Iterable, Optional

__all__ = [
    "BAD_REASON",
    "REQ_HOST",
    "REQ_COOKIE",
    "REQ_CONNECTION",
    "REQ_DROP",
    "REQ_UPGRADE",
    "REQ_CONTENT_LENGTH",
    "REQ_EXPECT",
    "REQ_FORWARDED",
    "REQ_TRANSFER_ENCODING",
    "REQ_PROXY_CONNECTION",
    "PLAIN_CONNECTION",
    "REQUEST_HEADER_KIND",
    "RESP_CONNECTION",
    "RESP_DROP",
    "RESP_TRANSFER_ENCODING",
    "RESP_UPGRADE",
    "RESP_CONTENT_LENGTH",
    "RESPONSE_HEADER_KIND",
    "REQUEST_HEADER_EXACT",
    "RESPONSE_HEADER_EXACT",
    "connection_tokens",
    "drop_listed",
    "error_response",
    "header_block",
    "informational_head",
    "response_block",
    "response_block_at",
    "reason_phrase",
    "upgrade_matcher",
    "TRAILER_DROP",
    "filter_trailers",
    "trailer_section",
]

# -- request headers (client -> node) -----------------------------------------
# Lower-cased name -> what the front does with it.  Names not in the map are
# end-to-end and forwarded as they are.
REQ_HOST = 1  # kept aside as IExchange.host (the forwarder decides)
REQ_COOKIE = 2  # forwarded; also read for the sticky session
REQ_CONNECTION = 3  # hop-by-hop; its tokens are read
REQ_DROP = 4  # hop-by-hop or framing: removed
REQ_UPGRADE = 5  # hop-by-hop; kept aside for a tunnel
REQ_CONTENT_LENGTH = 6  # framing: the forwarder re-adds it from body_length
REQ_EXPECT = 7  # removed; IExchange.expect_continue
REQ_FORWARDED = 8  # forwarded; the forwarder appends to X-Forwarded-*
REQ_TRANSFER_ENCODING = 9  # framing: IExchange.body_length -1 (chunked)
REQ_PROXY_CONNECTION = 10  # hop-by-hop: removed (llhttp reads it as a Connection header)

REQUEST_HEADER_KIND: dict[bytes, int] = {
    b"host": REQ_HOST,
    b"cookie": REQ_COOKIE,
    b"connection": REQ_CONNECTION,
    b"keep-alive": REQ_DROP,
    b"proxy-connection": REQ_PROXY_CONNECTION,
    b"te": REQ_DROP,
    b"trailer": REQ_DROP,
    b"transfer-encoding": REQ_TRANSFER_ENCODING,
    b"upgrade": REQ_UPGRADE,
    b"content-length": REQ_CONTENT_LENGTH,
    b"expect": REQ_EXPECT,
    b"x-forwarded-for": REQ_FORWARDED,
    b"x-forwarded-host": REQ_FORWARDED,
    b"x-forwarded-server": REQ_FORWARDED,
    b"x-forwarded-proto": REQ_FORWARDED,
}

# -- response headers (node -> client) ----------------------------------------
RESP_CONNECTION = 1
RESP_DROP = 2
RESP_TRANSFER_ENCODING = 3
RESP_UPGRADE = 4
RESP_CONTENT_LENGTH = 5

RESPONSE_HEADER_KIND: dict[bytes, int] = {
    b"connection": RESP_CONNECTION,
    b"keep-alive": RESP_DROP,
    b"proxy-connection": RESP_DROP,
    b"te": RESP_DROP,
    b"trailer": RESP_DROP,
    b"transfer-encoding": RESP_TRANSFER_ENCODING,
    b"upgrade": RESP_UPGRADE,
    b"content-length": RESP_CONTENT_LENGTH,
}

# Exact-case lookups first: the usual spellings of the usual headers map to their
# kind (0 = forwarded as is) without a lower() per header.
_COMMON_END_TO_END = (
    b"Accept", b"Accept-Charset", b"Accept-Encoding", b"Accept-Language", b"Accept-Ranges",
    b"Age", b"Allow", b"Authorization", b"Cache-Control", b"Content-Disposition",
    b"Content-Encoding", b"Content-Language", b"Content-Location", b"Content-Range",
    b"Content-Type", b"Date", b"ETag", b"Etag", b"Expires", b"If-Match", b"If-Modified-Since",
    b"If-None-Match", b"If-Range", b"If-Unmodified-Since", b"Last-Modified", b"Location",
    b"Origin", b"Pragma", b"Range", b"Referer", b"Retry-After", b"Server", b"Set-Cookie",
    b"User-Agent", b"Vary", b"Via", b"WWW-Authenticate", b"X-Requested-With",
    b"Sec-Fetch-Dest", b"Sec-Fetch-Mode", b"Sec-Fetch-Site", b"Upgrade-Insecure-Requests",
    b"DNT", b"Priority",
    b"accept", b"accept-encoding", b"accept-language", b"user-agent", b"content-type",
    b"date", b"server", b"etag", b"last-modified", b"cache-control", b"set-cookie",
    b"referer", b"origin", b"vary",
)


def _exact(kinds: dict[bytes, int]) -> dict[bytes, int]:
    out = {name: 0 for name in _COMMON_END_TO_END if name.lower() not in kinds}
    for lname, kind in kinds.items():
        out[lname] = kind
        out[b"-".join(part.capitalize() for part in lname.split(b"-"))] = kind
        out[lname.upper()] = kind
    return out


#: Exact-case map for requests (C{kind} 0: forwarded); fall back to
#: C{REQUEST_HEADER_KIND.get(name.lower())} for other spellings.
REQUEST_HEADER_EXACT = _exact(REQUEST_HEADER_KIND)
REQUEST_HEADER_EXACT[b"TE"] = REQ_DROP
#: Exact-case map for responses, same use.
RESPONSE_HEADER_EXACT = _exact(RESPONSE_HEADER_KIND)
RESPONSE_HEADER_EXACT[b"TE"] = RESP_DROP

#: A byte a reason phrase may not carry (RFC 9112 §4: HTAB, SP, VCHAR and
#: obs-text only); llhttp accepts the other control characters but CR/LF.
BAD_REASON = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

#: Common lower-cased Connection values that name no header.
_PLAIN_CONNECTION_VALUES = frozenset((b"keep-alive", b"close", b"upgrade", b"keep-alive ",
                                      b"close "))

#: Connection tokens that are options, not header names.
_CONNECTION_OPTIONS = frozenset((b"close", b"keep-alive", b"upgrade"))

#: Connection tokens whose header is never dropped for being listed: the
#: options, and Content-Length, the framing the proxy consumes and relays with
#: the message (a node or client naming it must not leave a relayed message
#: with a length the proxy frames by but no header telling it).
_NOT_DROPPED = _CONNECTION_OPTIONS | {b"content-length"}

#: Usual C{Connection} values (as sent) made of options only: with one of them
#: alone, L{drop_listed} keeps every header.
PLAIN_CONNECTION = frozenset((b"keep-alive", b"Keep-Alive", b"close", b"Close", b"upgrade",
                              b"Upgrade"))


def connection_tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """The lower-cased tokens of one or more C{Connection} header values."""
    out = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip(b" \t").lower()
            if token:
                out.add(token)
    return frozenset(out)


def drop_listed(headers: list, tokens: frozenset[bytes]) -> list:
    """
    C{headers} without the ones whose names C{Connection} listed (other than
    the C{close}/C{keep-alive}/C{upgrade} options, and C{Content-Length}: the
    message's framing stays).  Returns C{headers} itself when nothing is
    listed.
    """
    names = tokens - _NOT_DROPPED
    if not names:
        return headers
    return [h for h in headers if h[0].lower() not in names]


# One C-level scan finds every header the proxy must look at in a response head
# (lower-cased, each preceded by the line feed of the previous line).
_SPECIAL = re.compile(rb"\n(connection|keep-alive|proxy-connection|te|trailer|"
                      rb"transfer-encoding|upgrade|content-length):[ \t]*([^\r]*)")


def response_block(block: bytes) -> tuple[bytes, Optional[bytes], Optional[bytes],
                                          Optional[bytes]]:
    """
    Split a response header block into what is relayed and what the proxy
    needs, without a Python call per header.

    @param block: the header lines of a response head exactly as received,
        each C{name:value CRLF}, as llhttp accepted them (strict mode: CRLF line
        ends, token names, no whitespace before the colon, no line folding).
    @return: (the block without hop-by-hop lines — Connection and the names it
        lists but Content-Length, Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding,
        Upgrade —, the first Content-Length value or C{None}, the
        Transfer-Encoding value(s) lower-cased or C{None}, the Upgrade value or
        C{None}).
    """
    return response_block_at(b"\n" + block, 1)


#: The names L{_SPECIAL} finds that are cut wherever they are.
_HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                         b"transfer-encoding", b"upgrade"))


def response_block_at(head: bytes, start: int) -> tuple[bytes, Optional[bytes],
                                                        Optional[bytes], Optional[bytes]]:
    """
    L{response_block} of C{head[start:]}, where C{head[start - 1]} is the line
    feed that ends the line before (the status line of a response head), so
    no copy of the block is made to scan it.
    """
    low = head.lower()
    cl = te = upg = None
    cuts = listed = None
    for m in _SPECIAL.finditer(low, start - 1):
        name, value = m.groups()
        if name == b"content-length":
            if cl is None:
                cl = value.rstrip(b" \t")
            continue
        i = m.start() + 1  # the line's first byte
        j = head.find(b"\r\n", m.end()) + 2
        if cuts is None:
            cuts = [(i, j)]
        else:
            cuts.append((i, j))
        if name == b"connection":
            if value in _PLAIN_CONNECTION_VALUES:
                continue
            for token in value.split(b","):
                token = token.strip(b" \t")
                if token and token not in _NOT_DROPPED and token not in _HOP_BY_HOP:
                    if listed is None:
                        listed = {token}
                    else:
                        listed.add(token)
        elif name == b"transfer-encoding":
            value = value.rstrip(b" \t")
            te = value if te is None else te + b", " + value
        elif name == b"upgrade":
            upg = head[i + 8:j - 2].strip(b" \t")
    if cuts is None:
        return head[start:], cl, None, None
    if listed is not None:
        # names listed in Connection (other than the ones cut above)
        for name in listed:
            pattern = b"\n" + name + b":"
            i = low.find(pattern, start - 1)
            while i >= 0:
                cuts.append((i + 1, head.find(b"\r\n", i + 1) + 2))
                i = low.find(pattern, i + 1)
        cuts.sort()
    out = []
    prev = start
    for i, j in cuts:
        out.append(head[prev:i])
        prev = j
    out.append(head[prev:])
    return b"".join(out), cl, te, upg


def header_block(pairs) -> bytes:
    """C{(name, value)} pairs as a header block (C{name: value CRLF} each)."""
    return b"".join([b"%s: %s\r\n" % (name, value) for name, value in pairs])


_H2C = b"h2c"


def upgrade_matcher(setting: str):
    """
    A predicate for C{Upgrade} header values from C{ws_upgrade_header}
    (balancing.md §10): C{*} accepts any token, otherwise a comma-separated list
    compared case-insensitively.  The predicate returns the token to forward
    (the client's first token) or C{None}.  C{h2c} never matches, not even
    C{*}: a node answering 101 to it would then speak HTTP/2 with the client
    through the tunnel, past the proxy's routing and checks ("h2c smuggling";
    RFC 9113 deprecates that upgrade); the request goes on as plain HTTP/1.1.
    """
    wanted = frozenset(t.strip().lower().encode("ascii", "replace")
                       for t in setting.split(",") if t.strip())
    wanted -= {_H2C}
    any_token = b"*" in wanted

    def match(value: bytes) -> Optional[bytes]:
        for token in value.split(b","):
            token = token.strip(b" \t")
            if not token:
                continue
            if (any_token or token.lower() in wanted) and token.lower() != _H2C:
                return token
        return None

    return match


def reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Unknown"


def informational_head(status: int, reason: bytes, headers: bytes) -> bytes:
    return b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason, headers)


def error_response(status: int, message: str, *, close: bool, date: bytes,
                   retry_after: int = 0, head_only: bool = False) -> bytes:
    """
    The proxy's own response: a one-line C{text/plain} body, C{Content-Length},
    C{Date}, C{Connection: close} when the connection ends after it,
    C{Retry-After} on 503 when C{retry_after} > 0.
    """
    reason = reason_phrase(status)
    body = b"%d %s: %s\n" % (status, reason, message.encode("utf-8", "replace"))
    parts = [b"HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
             b"Content-Length: %d\r\n" % (status, reason, date, len(body))]
    if status == 503 and retry_after > 0:
        parts.append(b"Retry-After: %d\r\n" % retry_after)
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


# -- trailer sections (chunked bodies, HTTP/2 trailing HEADERS) ------------------

#: Fields never relayed in a trailer section (RFC 9110 §6.5.1: framing,
#: routing, request modifiers, authentication, response control, content
#: metadata; RFC 9113 §8.2.2: connection-specific).
TRAILER_DROP = frozenset((
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
    b"te", b"trailer", b"content-length", b"content-type", b"content-encoding",
    b"content-range", b"host", b"cache-control", b"expires", b"age", b"date", b"location",
    b"retry-after", b"vary", b"set-cookie", b"cookie", b"www-authenticate",
    b"proxy-authenticate", b"authorization", b"proxy-authorization", b"expect",
    b"max-forwards", b"range", b"if-match", b"if-none-match", b"if-modified-since",
    b"if-unmodified-since", b"if-range"))

_LAST_CHUNK = re.compile(rb"0+[ \t]*(?:;[^\r\n]*)?\Z")


def trailer_section(buf: bytes) -> Optional[bytes]:
    """
    The trailer section (its field lines, each ending in CRLF; C{b""} when
    there is none) of a chunked body whose last bytes are the end of C{buf}
    (the end of the message, as llhttp accepted it: C{last-chunk
    *(field-line CRLF) CRLF}).  C{None} when C{buf} does not reach back to
    the last-chunk line (C{buf} starts within the section).

    A field line never looks like the last-chunk line (C{1*"0" [ext]}: a
    field name is a token followed by a colon), so the first such line
    found walking back from the end is it.
    """
    pos = len(buf) - 4  # the CRLF ending the last line before the empty one
    if pos < 0 or buf[pos:] != b"\r\n\r\n":
        return None
    end = pos + 2
    while True:
        start = buf.rfind(b"\r\n", 0, pos)
        if start < 0:
            return None  # the line may start before buf
        if _LAST_CHUNK.match(buf, start + 2, pos) is not None:
            return buf[pos + 2:end]
        pos = start


def filter_trailers(section: bytes) -> bytes:
    """C{section}'s field lines without the L{TRAILER_DROP} ones."""
    out = []
    for line in section.split(b"\r\n"):
        if line:
            name = line.partition(b":")[0].strip().lower()
            if name and name not in TRAILER_DROP and name[:1] != b":":
                out.append(line + b"\r\n")
    return b"".join(out)
