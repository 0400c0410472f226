"""
Request facts used for routing: matching path, session id, Host, and the
StickySessionRemove rewrite (balancing.md §2.1, §4.1, §4.4).
"""

import pytest

from modcluster.balancer import (
    match_path,
    parse_host,
    path_refusal,
    session_id,
    strip_session,
    valid_host,
)
from modcluster.balancer._request import cookie_value, path_param_value


class _Strip:
    def __init__(self, strip, cookie_name="JSESSIONID", path_name="jsessionid"):
        self.strip = strip
        self.cookie_name = cookie_name
        self.path_name = path_name


@pytest.mark.parametrize("raw, expected", [
    ("/app/x", "/app/x"),
    ("/app;jsessionid=a.b/x", "/app/x"),        # parameters removed per segment
    ("/app/x;v=1", "/app/x"),
    ("/a;x;y/b;z/c", "/a/b/c"),
    ("/caf%C3%A9/x", "/café/x"),
    ("/a%2Fb", "/a%2Fb"),
    ("/a%2fb", "/a%2fb"),
    ("/a%5Cb", "/a%5Cb"),
    ("/a%00b", "/a%00b"),
    ("/a%zzb", "/a%zzb"),
    ("/a%3Bx/y", "/a;x/y"),                     # an encoded ';' is no parameter
    ("/a/./b", "/a/b"),
    ("/a/../b", "/b"),
    ("/../../b", "/b"),
    ("/a/b/..", "/a/"),
    ("/a/.", "/a/"),
    ("//a///b/", "/a/b/"),
    ("/a/%2e%2e/b", "/b"),
    ("/a/..;x/b", "/b"),                        # Tomcat: "..;x" is ".."
    ("/only1;/../secret/", "/secret/"),
    ("/only1%3B/../secret/", "/secret/"),
    ("/%FF/x", "/\udcff/x"),
    ("", ""),
])
def test_match_path(raw, expected):
    assert match_path(raw) == expected


def test_match_path_survives_lone_surrogates():
    assert match_path("/a\ud800%41") == "/a\ud800%41"


@pytest.mark.parametrize("cookie, value", [
    ("JSESSIONID=abc", "abc"),
    ("JSESSIONID=abc.n1; other=x", "abc.n1"),
    ("other=x;JSESSIONID=abc", "abc"),
    ("other=x,JSESSIONID=abc,more=1", "abc"),
    ("other=x\tJSESSIONID=abc", "abc"),
    ("JSESSIONID  =  abc  ; x=1", "abc"),
    ('JSESSIONID="abc.n1"', "abc.n1"),
    ('JSESSIONID="', '"'),
    ('JSESSIONID=""', None),
    ("JSESSIONID=", None),
    ("JSESSIONID=;JSESSIONID=second", "second"),
    ("XJSESSIONID=abc", None),
    ("JSESSIONIDX=abc", None),
    ("jsessionid=abc", None),
    ("a=JSESSIONID=abc", None),
    ("JSESSIONID", None),
    ("", None),
])
def test_cookie_value(cookie, value):
    assert cookie_value(cookie, "JSESSIONID") == value


@pytest.mark.parametrize("path, value", [
    ("/app;jsessionid=abc.n1", "abc.n1"),
    ("/app;jsessionid=abc.n1;x=1", "abc.n1"),
    ("/app;jsessionid=abc.n1?x", "abc.n1"),
    ("/app;jsessionid=abc.n1&x", "abc.n1"),
    ("/app;x=1;jsessionid=abc/more", "abc/more"),
    ("/app;jsessionid=;jsessionid=b", "b"),
    ("/app/jsessionid=abc", None),
    ("/app;JSESSIONID=abc", None),
    ("/app;xjsessionid=abc", None),
    ("/app;jsessionid", None),
])
def test_path_param_value(path, value):
    assert path_param_value(path, "jsessionid") == value


def test_session_id_order_and_source():
    assert session_id("JSESSIONID=c.1", "/a;jsessionid=p.2", "JSESSIONID", "jsessionid") == \
        ("c.1", "cookie")
    assert session_id("x=1", "/a;jsessionid=p.2", "JSESSIONID", "jsessionid") == ("p.2", "path")
    assert session_id(None, "/a", "JSESSIONID", "jsessionid") == (None, None)
    assert session_id("JSESSIONID=c", "/a", "", "") == (None, None)


@pytest.mark.parametrize("cookie, expected", [
    ("JSESSIONID=a.b", None),
    ("JSESSIONID=a.b; x=1", "x=1"),
    ("x=1; JSESSIONID=a.b", "x=1"),
    ("x=1; JSESSIONID=a.b; y=2", "x=1; y=2"),
    ("x=1;JSESSIONID=a.b;y=2", "x=1;y=2"),
    ("x=1, JSESSIONID=a.b, y=2", "x=1, y=2"),
    ("JSESSIONID=a.b; x=1; JSESSIONID=c.d", "x=1"),
    ("x_JSESSIONID=keep; JSESSIONID=a.b", "x_JSESSIONID=keep"),
    ("x=1", "x=1"),
])
def test_strip_cookie(cookie, expected):
    assert strip_session("/p", cookie, _Strip("cookie")) == ("/p", expected)


@pytest.mark.parametrize("path, expected", [
    ("/app;jsessionid=a.b", "/app"),
    ("/app;jsessionid=a.b;v=1", "/app;v=1"),
    ("/app;v=1;jsessionid=a.b", "/app;v=1"),
    ("/app;jsessionid=a.b/x", "/app/x"),
    ("/app/x", "/app/x"),
])
def test_strip_path(path, expected):
    assert strip_session(path, "JSESSIONID=z", _Strip("path")) == (expected, "JSESSIONID=z")


def test_strip_nothing():
    assert strip_session("/a;jsessionid=x", "JSESSIONID=y", _Strip(None)) == \
        ("/a;jsessionid=x", "JSESSIONID=y")
    assert strip_session("/a", None, _Strip("cookie")) == ("/a", None)


@pytest.mark.parametrize("header, host", [
    (None, None),
    ("", None),
    ("  ", None),
    ("Example.COM", "example.com"),
    (b"example.com:8080", "example.com"),
    ("example.com:", "example.com"),
    ("example.com.", "example.com"),
    ("127.0.0.1:80", "127.0.0.1"),
    ("[::1]", "[::1]"),
    ("[::1]:8000", "[::1]"),
    (b"[FE80::1]:1", "[fe80::1]"),
    ("[::1", None),
    ("[::1]x", None),
    ("[zz]", None),
    ("::1", None),
    ("host:port", None),
    ("bad host", None),
    ("a/b", None),
    (b"\xffhost", None),
    (bytearray(b"h"), "h"),
])
def test_parse_host(header, host):
    assert parse_host(header) == host


@pytest.mark.parametrize("raw", [
    "/app/x", "/app;jsessionid=a.b/x", "/a%3Bx/y", "/caf%C3%A9", "/.well-known/x",
    "/a/...", "/a/..b", "/a/.x;y", "/a;./b", "/a%2e/", "/", "*", "/a%25/x",
])
def test_path_refusal_accepts(raw):
    assert path_refusal(raw) is None


@pytest.mark.parametrize("raw, why", [
    ("/a/../b", "dot-segment"),
    ("/a/./b", "dot-segment"),
    ("/a/..", "dot-segment"),
    ("/a/.", "dot-segment"),
    ("/..", "dot-segment"),
    ("/a/%2e%2e/b", "dot-segment"),
    ("/a/%2E./b", "dot-segment"),
    ("/a/.%2e", "dot-segment"),
    ("/a/%2e/b", "dot-segment"),
    ("/a/..;x/b", "dot-segment"),
    ("/a/.;jsessionid=x.n1/b", "dot-segment"),
    ("/only1;/../secret/", "dot-segment"),
    ("/only1;x/../dis1/", "dot-segment"),
    ("/only1%3B/../secret/", "dot-segment"),
    ("/a%2Fb", "encoded"),
    ("/a%2fb", "encoded"),
    ("/a%5cb", "encoded"),
    ("/a%00b", "encoded"),
    ("/a%zz", "malformed"),
    ("/a%", "malformed"),
    ("/a%4", "malformed"),
    ("/a\\b", "backslash"),
])
def test_path_refusal_refuses(raw, why):
    assert why in path_refusal(raw)


@pytest.mark.parametrize("value, ok", [
    (b"example.com", True), (b"example.com:8080", True), (b"", True), (b"[::1]:80", True),
    (b"127.0.0.1", True), (b"a%41b", True), (b"[v7.x:y]", True),
    (b"a b", False), (b"a\tb", False), (b"user@host", False), (b"host/x", False),
    (b"host:port", False), (b"[::1", False), (b"a%4", False), (b"h\x00", False),
    (b"a,b", True),  # reg-name sub-delims (RFC 3986)
])
def test_valid_host(value, ok):
    assert bool(valid_host(value)) is ok
