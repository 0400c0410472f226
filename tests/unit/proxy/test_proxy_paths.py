"""
Path confusion and request-line edges (issue 13 §1 and §4): the balancer
routes on the path the node will serve, and a target whose servlet-container
view differs in its segments from what is forwarded (dot-segments, encoded
'/', '\\' or NUL, backslashes, malformed escapes, fragments) is refused with
400, for HTTP and AJP nodes, also for heads that skip the parser (the request
memos).  HTTP versions other than 1.0/1.1 → 505, an invalid Host → 400, TRACE
→ 405 unless C{allow_trace}.
"""

from __future__ import annotations

import struct
from typing import Optional

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from modcluster.proxy.ajp import AJPForwarder
from modcluster.ajp.container import decode_forward_request
from modcluster.balancer import match_path, path_refusal
from modcluster.cluster.model import ContextState
from modcluster.proxy.client import ClientProtocol
from tests.support.proxy_testlib import OK_100, Harness, parse_requests, parse_responses

# -- a model of Tomcat's view of a request path -------------------------------------
#
# Tomcat 10.1, org.apache.catalina.connector.CoyoteAdapter.postParseRequest, for
# an HTTP or AJP request: decodedURI = copy of the raw URI;
#   parsePathParameters(): from each ';' (searched from index 1, then again from
#     the position of the removed one) up to the next ';' or '/' is removed;
#   UDecoder.convert(decodedURI, EncodedSolidusHandling.REJECT): "%xx" decoded,
#     a truncated or non-hex escape and "%2F" throw (→ 400);
#   normalize(decodedURI, allowBackslash=false): empty or not starting with '/'
#     → false; any '\\' or NUL → false; "//" merged; a trailing "/." or "/.."
#     gets a '/'; "/./" removed; "/../" removes the segment before it, at the
#     start → false (400).
# The Mapper then picks the deployed context whose path is the longest
# segment-wise prefix of the result.


def _is_hex(c: int) -> bool:
    return c in b"0123456789abcdefABCDEF"


def tomcat_view(raw: bytes) -> Optional[bytes]:
    """The path Tomcat serves for the raw path C{raw}, or None (400)."""
    uri = bytearray(raw)
    # parsePathParameters
    semi = uri.find(b";", 1)
    while semi > -1:
        ends = [i for i in (uri.find(b";", semi + 1), uri.find(b"/", semi + 1)) if i >= 0]
        if ends:
            del uri[semi:min(ends)]
        else:
            del uri[semi:]
        semi = uri.find(b";", semi)
    # UDecoder.convert
    out = bytearray()
    i = 0
    while i < len(uri):
        c = uri[i]
        if c == 0x25:  # '%'
            if i + 2 >= len(uri):  # UDecoder: "EOF"
                return None
            h1, h2 = uri[i + 1], uri[i + 2]
            if not (_is_hex(h1) and _is_hex(h2)):
                return None
            v = int(bytes((h1, h2)), 16)
            if v == 0x2F:
                return None
            out.append(v)
            i += 3
        else:
            out.append(c)
            i += 1
    # normalize
    b = out
    if not b or b[0] not in b"/\\":
        return None
    if b"\\" in b or b"\x00" in b:
        return None
    while b"//" in b:
        b = b.replace(b"//", b"/")
    if b.endswith(b"/.") or b.endswith(b"/.."):
        b += b"/"
    while True:
        idx = b.find(b"/./")
        if idx < 0:
            break
        del b[idx:idx + 2]
    idx = 0
    while True:
        idx = b.find(b"/../", idx)
        if idx < 0:
            break
        if idx == 0:
            return None
        prev = b.rfind(b"/", 0, idx)
        del b[prev:idx + 3]
        idx = prev
    return bytes(b)


def tomcat_context(view: bytes, deployed) -> Optional[str]:
    """The Mapper: the longest deployed context that is a segment-wise prefix."""
    path = view.decode("utf-8", "surrogateescape")
    best = None
    for ctx in deployed:
        if path == ctx or path.startswith(ctx + "/") or ctx == "/":
            if best is None or len(ctx) > len(best):
                best = ctx
    return best


def test_tomcat_model_matches_known_tomcat_answers():
    """The model gives what Tomcat 10.1 gives for the forms of issue 13."""
    assert tomcat_view(b"/only1;/../secret/") == b"/secret/"
    assert tomcat_view(b"/only1;x/../dis1/") == b"/dis1/"
    assert tomcat_view(b"/only1%3B/../secret/") == b"/secret/"
    assert tomcat_view(b"/only1/..;/secret/") == b"/secret/"
    assert tomcat_view(b"/a;jsessionid=x.n1/b;v=1") == b"/a/b"
    assert tomcat_view(b"/a/%2e%2E/b") == b"/b"
    assert tomcat_view(b"/a%2Fb") is None
    assert tomcat_view(b"/a%5Cb") is None
    assert tomcat_view(b"/a%00b") is None
    assert tomcat_view(b"/a\\b") is None
    assert tomcat_view(b"/..") is None
    assert tomcat_view(b"/a%zz") is None
    assert tomcat_view(b"/a%4") is None
    assert tomcat_view(b"//a//b/.") == b"/a/b/"


# -- harness --------------------------------------------------------------------------

# Webapps deployed on the (single) Tomcat behind every node of the harness; only
# some are registered.  Each registered context lives on its own node, so the
# port a request reaches tells the context it was routed to.
DEPLOYED = ("/only1", "/secret", "/dis1", "/stop1", "/deep", "/deep/ok")
PORTS = {8101: "/only1", 8102: "/dis1", 8103: "/stop1", 8104: "/deep/ok"}


def cluster(node_type: str = "http", **config) -> Harness:
    if node_type == "ajp":
        config.setdefault("ajp_cping", "never")  # the first packet is the request
    h = Harness(**config)
    if node_type == "ajp":
        h.factory.forwarders["ajp"] = AJPForwarder(h.reactor, h.config)
    h.node("n1", 8101, contexts=("/only1",), type=node_type)
    h.node("n2", 8102, contexts=("/dis1",), type=node_type, state=ContextState.DISABLED)
    h.node("n3", 8103, contexts=("/stop1",), type=node_type, state=ContextState.STOPPED)
    h.node("n4", 8104, contexts=("/deep/ok",), type=node_type)
    return h


def forwarded_target(h: Harness, node_type: str) -> Optional[tuple[int, bytes]]:
    """(node port, request target as the node got it) of the pending attempt, or None."""
    pending = h.pending()
    if not pending:
        return None
    assert len(pending) == 1
    conn = h.accept(pending[0][1])
    data = conn.received()
    if node_type == "http":
        [req] = parse_requests(data)
        return conn.port, req.url
    assert data[:2] == b"\x12\x34"
    (length,) = struct.unpack(">H", data[2:4])
    fr = decode_forward_request(data[4:4 + length])
    target = fr.req_uri
    if fr.query_string is not None:
        target += b"?" + fr.query_string
    return conn.port, target


# -- the forms of issue 13, HTTP and AJP, with and without the memos --------------------

ISSUE_FORMS = [
    b"/only1;/../secret/",
    b"/only1;x/../dis1/",
    b"/only1%3B/../secret/",
    b"/only1%3b/../secret/",
    b"/only1/..;/secret/",
    b"/only1/%2e%2e/secret/",
    b"/only1/%2E%2E;x/secret/",
    b"/only1/.%2e/stop1/",
    b"/only1/./../secret/x?q=1",
    b"/only1;jsessionid=abc.n1/../secret/",
    b"/only1/..",
    b"/only1%2F..%2Fsecret/",
    b"/only1/..%5Csecret/",
    b"/only1\\..\\secret/",
    b"/only1/%00/x",
    b"/only1/%zz",
    b"/only1/x#/../../secret/",
    b"/only1/x?#",
]


@pytest.mark.parametrize("node_type", ["http", "ajp"])
@pytest.mark.parametrize("target", ISSUE_FORMS)
def test_confusing_targets_refused(node_type, target):
    """
    Every form that would reach another webapp (or one Tomcat itself refuses)
    is answered 400 by the proxy and reaches no node, the first time and
    when the same head comes again (the request memo).
    """
    h = cluster(node_type)
    for _ in range(3):
        c = h.client()
        c.send(b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
        [resp] = parse_responses(c.received())
        assert resp.status == 400
        assert c.closed
        assert h.pending() == []
    assert h.counters_idle()


@pytest.mark.parametrize("node_type", ["http", "ajp"])
def test_confusing_targets_refused_after_remembered_header_block(node_type, monkeypatch):
    """
    A header block remembered with one target (the request_blocks memo, which
    takes the target from the request line without the parser) gets the same
    path checks for a new target.
    """
    skipped = []  # targets that took the memo (not the parser)
    remembered = ClientProtocol._remembered

    def spy(self, template, target=None):
        skipped.append(target)
        return remembered(self, template, target)

    monkeypatch.setattr(ClientProtocol, "_remembered", spy)
    h = cluster(node_type)
    head = b" HTTP/1.1\r\nHost: localhost\r\nUser-Agent: t\r\n\r\n"
    for i in range(3):
        c = h.client()
        c.send(b"GET /only1/p" + b"%d" % i + head)
        assert forwarded_target(h, node_type) == (8101, b"/only1/p%d" % i)
    assert h.factory.request_blocks  # the block is remembered
    for target in (b"/only1;/../secret/", b"/only1%3B/../secret/", b"/only1/%2e%2e/dis1/",
                   b"/only1/./x", b"/only1/a%2Fb", b"/only1/%zz"):
        c = h.client()
        c.send(b"GET " + target + head)
        [resp] = parse_responses(c.received())
        assert resp.status == 400, target
        assert c.closed
        assert h.pending() == []
        assert skipped[-1] == target  # refused on the memo path
    # and an ordinary new target still goes through the memo to the node
    c = h.client()
    c.send(b"GET /only1;jsessionid=abc.n1/z%41?x=%2F" + head)
    assert forwarded_target(h, node_type) == (8101, b"/only1;jsessionid=abc.n1/z%41?x=%2F")
    assert h.counters_idle() is False  # the last request is in flight


@pytest.mark.parametrize("node_type", ["http", "ajp"])
@pytest.mark.parametrize("target, port", [
    (b"/only1/", 8101),
    (b"/only1;jsessionid=abc.n1", 8101),
    (b"/only1/x;jsessionid=abc.n1", 8101),
    (b"/only1;v=1/x;y", 8101),
    (b"/%6Fnly1/x", 8101),                  # encoded unreserved character
    (b"//only1//x", 8101),                  # merged, as Tomcat does
    (b"/only1/.well-known/x", 8101),
    (b"/only1/.../x", 8101),
    (b"/only1/x?a=../..&b=%2F#", None),     # '#' anywhere in the target: 400
    (b"/deep;x/ok/y", 8104),
    (b"/deep/ok%3B/y", None),               # "ok;" is another segment: no context
])
def test_targets_routed_as_tomcat_serves_them(node_type, target, port):
    """Legitimate forms are forwarded unchanged, to the context Tomcat serves."""
    h = cluster(node_type)
    c = h.client()
    c.send(b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
    got = forwarded_target(h, node_type)
    if port is None:
        assert got is None
        [resp] = parse_responses(c.received())
        assert resp.status in (400, 404)
        return
    assert got == (port, target)
    path = target.split(b"?")[0]
    assert tomcat_context(tomcat_view(path), DEPLOYED) == PORTS[port]


def test_path_session_id_still_sticky():
    """A ;jsessionid= in the last segment still picks the node of its route."""
    h = Harness()
    h.node("n1", 8101, contexts=("/app",))
    h.node("n2", 8102, contexts=("/app",))
    for _ in range(4):
        c = h.client()
        c.send(b"GET /app/x;jsessionid=abc.n2 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        port, target = forwarded_target(h, "http")
        assert (port, target) == (8102, b"/app/x;jsessionid=abc.n2")


# -- the property ---------------------------------------------------------------------

_SEGMENTS = st.sampled_from([
    "only1", "secret", "dis1", "stop1", "deep", "ok", "x", "", ".", "..", "%2e", "%2E",
    "%2e%2e", ".%2E", "%2E.", "...", ".x", "only1%3B", "only1%3b", "%6Fnly1", "sec%72et",
    "%64is1", "a%2Fb", "%2f", "%5C", "%5c", "a\\b", "%00", "%zz", "%", "%2", "%25", "%3B..",
])
_PARAMS = st.sampled_from(["", "", "", ";", ";x", ";jsessionid=abc.n1", ";a=b;c", ";..",
                           ";%2e", ";x=/"])
_SEGMENT = st.tuples(_SEGMENTS, _PARAMS).map("".join)
_TARGET = st.tuples(
    st.lists(_SEGMENT, min_size=1, max_size=6),
    st.sampled_from(["", "/"]),
    st.sampled_from(["", "?q=1", "?a=/../secret/", "?%2F", "#", "#x/../secret", "?x#y"]),
).map(lambda t: ("/" + "/".join(t[0]) + t[1] + t[2]).encode("ascii"))


@settings(max_examples=300)
@given(st.lists(st.tuples(_TARGET, st.integers(1, 3)), min_size=1, max_size=6),
       st.sampled_from(["http", "ajp"]))
def test_forwarded_targets_reach_the_routed_context(requests, node_type):
    """
    Whenever the proxy forwards a request, the target is forwarded as received,
    Tomcat accepts it, its view of the path starts with the context the
    request was routed to (and Tomcat's Mapper, knowing every deployed
    webapp, picks that context), never a STOPPED one; otherwise the
    proxy answered 400/404/503 itself.  Several targets with the same header
    block, some repeated, on one factory: the request memos take part.
    """
    h = cluster(node_type)
    for target, times in requests:
        for _ in range(times):
            c = h.client()
            c.send(b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
            got = forwarded_target(h, node_type)
            if got is None:
                [resp] = parse_responses(c.received())
                assert resp.status in (400, 404, 503)
                event(f"refused {resp.status}")
                continue
            port, sent = got
            assert sent == target  # forwarded as received
            context = PORTS[port]
            assert context != "/stop1"  # never a STOPPED context
            if context == "/dis1":  # DISABLED: only requests with a session (§2.3)
                assert b";jsessionid=" in sent
            view = tomcat_view(sent.split(b"?")[0])
            assert view is not None  # nothing Tomcat would refuse is forwarded
            event("forwarded")
            path = view.decode("utf-8", "surrogateescape")
            assert path == context or path.startswith(context + "/"), (target, view)
            assert tomcat_context(view, DEPLOYED) == context


# -- §4: versions, Host, TRACE -----------------------------------------------------------

@pytest.mark.parametrize("line, extra", [
    (b"GET / HTTP/2.0", b""),
    (b"GET / HTTP/2.0", b"Connection: keep-alive\r\n"),
    (b"GET /only1/ HTTP/0.9", b""),
    (b"GET /only1/ HTTP/1.2", b""),
    (b"GET /only1/ HTTP/3.0", b""),
])
def test_unsupported_http_version(line, extra):
    h = cluster()
    for _ in range(3):
        c = h.client()
        c.send(line + b"\r\nHost: localhost\r\n" + extra + b"\r\n")
        [resp] = parse_responses(c.received())
        assert resp.status == 505
        assert c.closed
        assert h.pending() == []


@pytest.mark.parametrize("head", [
    b"GET /only1/ HTTP/1.1\r\nHost: local host\r\n\r\n",
    b"GET /only1/ HTTP/1.1\r\nHost: localhost extra\r\n\r\n",
    b"GET /only1/ HTTP/1.1\r\nHost: user@localhost\r\n\r\n",
    b"GET /only1/ HTTP/1.1\r\nHost: localhost/x\r\n\r\n",
    b"GET /only1/ HTTP/1.1\r\nHost: localhost:80x\r\n\r\n",
    b"GET /only1/ HTTP/1.0\r\nHost: a\tb\r\n\r\n",
    b"GET http://user@localhost/only1/ HTTP/1.1\r\nHost: localhost\r\n\r\n",
])
def test_invalid_host_refused(head):
    h = cluster()
    for _ in range(3):
        c = h.client()
        c.send(head)
        [resp] = parse_responses(c.received())
        assert resp.status == 400
        assert h.pending() == []


@pytest.mark.parametrize("host", [b"localhost", b"localhost:8000", b"[::1]:8000",
                                  b"127.0.0.1", b""])
def test_valid_host_forwarded(host):
    h = cluster()
    c = h.client()
    c.send(b"GET /only1/ HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert forwarded_target(h, "http") == (8101, b"/only1/")


def test_trace_refused_by_default():
    h = cluster()
    for _ in range(3):
        c = h.client()
        c.send(b"TRACE /only1/ HTTP/1.1\r\nHost: localhost\r\nCookie: s=1\r\n\r\n")
        [resp] = parse_responses(c.received())
        assert resp.status == 405
        assert h.pending() == []


def test_trace_forwarded_with_allow_trace():
    h = Harness(allow_trace=True)
    h.node("n1", 8101, contexts=("/only1",))
    n = None
    for _ in range(3):
        c = h.client()
        c.send(b"TRACE /only1/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        n = n or h.accept(8101)  # then the pooled connection
        [req] = parse_requests(n.received())
        assert req.method == b"TRACE"
        n.respond(OK_100)
        [resp] = parse_responses(c.received())
        assert resp.status == 200


@pytest.mark.parametrize("head", [
    b"GET /only1/a HTTP/2.0\r\nHost: localhost\r\nUser-Agent: t\r\n\r\n",
    b"GET /only1/a HTTP/0.9\r\nHost: localhost\r\nUser-Agent: t\r\n\r\n",
    b"TRACE /only1/a HTTP/1.1\r\nHost: localhost\r\nUser-Agent: t\r\n\r\n",
    b"GET /only1/a HTTP/1.1\r\nHost: local host\r\nUser-Agent: t\r\n\r\n",
    b"GET /only1/a#x HTTP/1.1\r\nHost: localhost\r\nUser-Agent: t\r\n\r\n",
    b"GET /only1/a\\..\\..\\secret HTTP/1.1\r\nHost: localhost\r\nUser-Agent: t\r\n\r\n",
])
def test_request_line_checks_hold_after_the_memos_are_warm(head):
    """
    With the head memo and the header-block memo holding the same headers
    (and request line), a refused variant is still refused, every time.
    """
    h = cluster()
    good = b"GET /only1/a HTTP/1.1\r\nHost: localhost\r\nUser-Agent: t\r\n\r\n"
    for _ in range(3):
        c = h.client()
        c.send(good)
        assert forwarded_target(h, "http") == (8101, b"/only1/a")
    assert good in h.factory.request_heads and h.factory.request_blocks
    for _ in range(3):
        c = h.client()
        c.send(head)
        [resp] = parse_responses(c.received())
        assert resp.status in (400, 405, 505)
        assert h.pending() == []


_PATH_CHARS = st.sampled_from(["/", "/", ";", ".", "..", "%2e", "%2E", "%3B", "%3b", "%2F",
                               "%5c", "%00", "%41", "%C3%A9", "%FF", "%", "%z", "\\", "a",
                               "b", "=", "jsessionid=x.n1", "~", "-"])


@settings(max_examples=500)
@given(st.lists(_PATH_CHARS, max_size=12).map(lambda parts: "/" + "".join(parts)))
def test_accepted_paths_are_routed_on_tomcats_view(path):
    """
    For every raw path the front accepts (path_refusal is None), Tomcat
    accepts it too and match_path is exactly Tomcat's view of it: the balancer
    routes on the path the node serves.
    """
    if path_refusal(path) is not None:
        event("refused")
        return
    view = tomcat_view(path.encode("ascii"))
    assert view is not None, path
    assert match_path(path).encode("utf-8", "surrogateescape") == view, path
    event("accepted")
