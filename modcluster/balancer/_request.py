"""
Pure helpers that read routing facts out of a request: the path used for
context matching, the sticky session id (cookie or C{;name=} path parameter),
the Host name, and the removal of a session id (StickySessionRemove).

See docs/balancing.md for every choice made where mod_proxy_cluster leaves
room; reference: balancing.md §2.1, §4.1, §4.4.
"""

from __future__ import annotations

import functools
import re
from typing import Optional, Union

__all__ = ["match_path", "path_refusal", "session_id", "strip_session", "parse_host",
           "valid_host"]

# -- path used for context matching ------------------------------------------
#
# The balancer must route on the path the node will serve.  A servlet container
# (Tomcat's CoyoteAdapter.postParseRequest) takes the raw request path and
#   1. removes the path parameters of every segment (parsePathParameters: from
#      each raw ';' up to the next ';' or '/'), so an encoded ';' (%3B) is not
#      a parameter but a literal character of its segment;
#   2. percent-decodes (UDecoder; '%2F' refused by default, a malformed escape
#      refused);
#   3. normalizes (normalize: '\\' and NUL refused by default, '//' merged,
#      '/./' removed, '/../' resolved, '..' above the root refused).
# match_path gives that view (lenient: what the container would refuse is kept
# as literal text); path_refusal says which raw paths the front refuses before
# routing (docs/balancing.md "Path for matching").

_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_PARAMS = re.compile(r";[^/]*")
# Escapes kept as they are: an encoded "/" or "\" must not create a segment
# boundary and NUL is never a path character (the front refuses all three).
_KEEP_ENCODED = frozenset((0x2F, 0x5C, 0x00))
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})|%(?:2[Ff]|5[Cc]|00)")


def _decode_percent(path: str) -> str:
    """
    Percent-decode C{path} as UTF-8 (invalid sequences become surrogate
    escapes, so they can never equal a registered context path), except C{%2F},
    C{%5C} and C{%00}, which stay encoded.  Malformed escapes (C{%zz}) stay
    literal.
    """
    out = bytearray()
    pos = 0
    try:
        for m in _PCT.finditer(path):
            byte = int(m.group(1), 16)
            if byte in _KEEP_ENCODED:
                continue
            out += path[pos:m.start()].encode("utf-8", "surrogateescape")
            out.append(byte)
            pos = m.end()
        out += path[pos:].encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return path  # lone surrogates that are not byte escapes: leave it alone
    return out.decode("utf-8", "surrogateescape")


def _normalize_segments(path: str) -> str:
    """
    Merge repeated slashes and resolve C{.} and C{..} segments (RFC 3986
    §5.2.4; C{..} above the root stays at the root), keeping a trailing slash.
    """
    absolute = path.startswith("/")
    segments = path.split("/")
    out: list[str] = []
    for seg in segments:
        if seg == "" or seg == ".":
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    trailing = segments[-1] in ("", ".", "..") and len(segments) > 1
    result = "/".join(out)
    if absolute:
        result = "/" + result
    if trailing and not result.endswith("/"):
        result += "/"
    return result


def match_path(path: str) -> str:
    """
    The path that context matching uses (balancing.md §2.1): the servlet
    container's view of the raw path C{path} (without the query string).  The
    path parameters of every segment are removed (from a raw C{;} to the end
    of its segment), then percent-escapes are decoded (except C{%2F}, C{%5C},
    C{%00}; a decoded C{;} is an ordinary character), then repeated slashes
    are merged and dot-segments resolved.  Lenient: what the front refuses
    (L{path_refusal}) is given some view, never an error.  The common case (no
    C{;}, C{%}, C{/.}, C{//}) costs four C-level scans and returns C{path}
    itself.
    """
    if ";" in path:
        path = _PARAMS.sub("", path)
    if "%" in path:
        path = _decode_percent(path)
    if "/." in path or "//" in path:
        path = _normalize_segments(path)
    return path


def path_refusal(path: str) -> Optional[str]:
    """
    Why a raw request path (no query string) must be refused with 400, or
    C{None}: a backslash, a malformed percent-escape, an encoded C{/}, C{\\}
    or NUL, or a dot-segment (C{.} or C{..}, also as C{%2e} or with path
    parameters such as C{..;x}).  Such a path reads differently to different
    servlet containers and proxies, so it is never forwarded; a path without
    them has the same segments for the balancer as for the node (the node only
    removes path parameters, decodes and merges slashes, as L{match_path}).

    Callers may skip it for paths that have none of C{%}, C{/.}, C{\\}: those
    are always accepted (path parameters alone cannot make a dot-segment).
    """
    if "\\" in path:
        return "backslash in the request path"
    if "%" in path:
        m = _BAD_ESCAPE.search(path)
        if m is not None:
            if m.end() - m.start() == 1:
                return "malformed percent-escape in the request path"
            return "encoded '/', '\\\\' or NUL in the request path"
        if "%2" in path:
            path = path.replace("%2e", ".").replace("%2E", ".")
    if "/." in path:
        if ";" in path:
            path = _PARAMS.sub("", path)
        for seg in path.split("/"):
            if seg == "." or seg == "..":
                return "dot-segment in the request path"
    return None


# -- sticky session id -------------------------------------------------------

_WS = " \t\r\n\x0b\x0c"   # C isspace()
#: sticky names whose compiled patterns are kept (a few per balancer)
_CACHE_MAX = 256


@functools.lru_cache(maxsize=_CACHE_MAX)
def _cookie_re(name: str) -> re.Pattern:
    # the name at the start or after ';', ',' or whitespace, optional
    # whitespace, '=', then the value up to the next ';' or ','.
    return re.compile(r"(?:^|(?<=[;,%s]))%s[%s]*=([^;,]*)" % (_WS, re.escape(name), _WS))


@functools.lru_cache(maxsize=_CACHE_MAX)
def _path_re(name: str) -> re.Pattern:
    return re.compile(r";%s=([^;?&]*)" % re.escape(name))


@functools.lru_cache(maxsize=_CACHE_MAX)
def _strip_path_re(name: str) -> re.Pattern:
    # As _path_re, but never beyond the end of the path segment.
    return re.compile(r";%s=[^;?&/]*" % re.escape(name))


def cookie_value(cookie: str, name: str) -> Optional[str]:
    """
    The value of cookie C{name} in a C{Cookie} header value (balancing.md §4.1),
    or C{None}.  Name match is case-sensitive; surrounding whitespace and one
    pair of double quotes are removed; an empty value does not count and the
    search goes on with the next occurrence.
    """
    if name not in cookie:
        return None
    for m in _cookie_re(name).finditer(cookie):
        value = m.group(1).strip(" \t")
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        if value:
            return value
    return None


def path_param_value(path: str, name: str) -> Optional[str]:
    """
    The value of the C{;name=value} path parameter (balancing.md §4.1): the name
    must follow a C{;} and be followed by C{=} and a non-empty value, which ends
    at the next C{;}, C{?} or C{&}.  The raw (undecoded) path is searched.
    """
    if name not in path:
        return None
    for m in _path_re(name).finditer(path):
        if m.group(1):
            return m.group(1)
    return None


def session_id(cookie: Optional[str], path: str, cookie_name: str, path_name: str
               ) -> tuple[Optional[str], Optional[str]]:
    """
    (session id, source) for one balancer's sticky names: the cookie first, then
    the path parameter; source is C{"cookie"}, C{"path"} or C{None}.
    """
    if cookie and cookie_name:
        value = cookie_value(cookie, cookie_name)
        if value is not None:
            return value, "cookie"
    if path_name and ";" in path:
        value = path_param_value(path, path_name)
        if value is not None:
            return value, "path"
    return None, None


# -- StickySessionRemove -----------------------------------------------------

def strip_session(path: str, cookie: Optional[str], decision) -> tuple[str, Optional[str]]:
    """
    Remove the session information that C{decision} says must go
    (C{decision.strip}, StickySessionRemove, balancing.md §4.4): every
    C{;name=value} path parameter when it came from the path (the value ends at
    C{;}, C{?}, C{&} or the end of the path segment, so no segment is ever
    removed), every cookie of
    that name (with its separator) when it came from the cookie.  Returns the new
    (path, cookie); cookie is C{None} when nothing is left of the header.  When
    C{decision.strip} is C{None} both are returned unchanged.
    """
    which = getattr(decision, "strip", None)
    if which == "path":
        name = decision.path_name
        if name and name in path:
            path = _strip_path_re(name).sub("", path)
        return path, cookie
    if which == "cookie" and cookie:
        name = decision.cookie_name
        if not name or name not in cookie:
            return path, cookie
        pieces = []
        pos = 0
        for m in _cookie_re(name).finditer(cookie):
            start = m.start()
            while start > pos and cookie[start - 1] in " \t":
                start -= 1
            if start > pos and cookie[start - 1] in ";,":
                start -= 1
            pieces.append(cookie[pos:start])
            pos = m.end()
        pieces.append(cookie[pos:])
        rest = "".join(pieces).strip(" \t;,")
        return path, (rest or None)
    return path, cookie


# -- Host --------------------------------------------------------------------

#: C{valid_host(value)}: a match (truthy) when the bytes of a C{Host} header
#: value have RFC 9110 §7.2 syntax, C{uri-host [":" port]} (RFC 3986 reg-name
#: with well-formed percent-escapes, IPv4, or a bracketed IPv6/IPvFuture
#: literal; the empty value is allowed), else C{None}.  No whitespace, no
#: userinfo, no path.  One C-level C{fullmatch}: the front runs it on every
#: parsed head.
valid_host = re.compile(
    rb"[A-Za-z0-9\-._~!$&'()*+,;=]*(?:%[0-9A-Fa-f]{2}[A-Za-z0-9\-._~!$&'()*+,;=]*)*"
    rb"(?::[0-9]*)?"
    rb"|\[[0-9A-Fa-f:.]+\](?::[0-9]*)?"
    rb"|\[[vV][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+\](?::[0-9]*)?").fullmatch

_REG_NAME = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=%]+\Z")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]+\]\Z|\[v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+\]\Z")
_PORT = re.compile(r"[0-9]*\Z")


def parse_host(host_header: Union[bytes, str, None]) -> Optional[str]:
    """
    The host name of a C{Host} header as httpd's C{ap_get_server_name} gives it:
    lower-cased, without the port, one trailing dot removed; IPv6 literals keep
    their brackets (C{"[::1]:8080"} → C{"[::1]"}).  C{None} if the header is
    absent, empty or not a valid host (RFC 3986 reg-name, IPv4 or bracketed IP
    literal, optional numeric port).
    """
    if host_header is None:
        return None
    if isinstance(host_header, (bytes, bytearray, memoryview)):
        try:
            host_header = bytes(host_header).decode("ascii")
        except UnicodeDecodeError:
            return None
    h = host_header.strip(" \t")
    if not h:
        return None
    if h[0] == "[":
        end = h.find("]")
        if end < 0:
            return None
        host, rest = h[:end + 1], h[end + 1:]
        if not _IPV6.match(host):
            return None
        if rest and (rest[0] != ":" or not _PORT.match(rest, 1)):
            return None
        return host.lower()
    host, sep, port = h.rpartition(":")
    if not sep:
        host = h
    elif not _PORT.match(port):
        return None
    if not host or not _REG_NAME.match(host):
        return None
    host = host.lower()
    if host.endswith(".") and len(host) > 1:
        host = host[:-1]
    return host
