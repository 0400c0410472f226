"""
Tests for the MCMP codec (L{modcluster.mcmp.names}, L{modcluster.mcmp.decode},
L{modcluster.mcmp.errors}, L{modcluster.mcmp.replies}): tokenising, value syntaxes, command
decoders, the error catalogue and the reply formatters.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modcluster.mcmp import errors
from modcluster.mcmp.decode import (
    DEFAULT_LIMITS,
    AppRequest,
    ConfigRequest,
    FieldLimits,
    Params,
    PingRequest,
    StatusRequest,
    decode_app,
    decode_config,
    decode_ping,
    decode_status,
    parse_body,
)
from modcluster.mcmp.errors import (
    MCMPError,
    MessageTooLarge,
    error_headers,
)
from modcluster.mcmp.names import (
    DEFAULT_RELEASE,
    KNOWN_KEYS,
    LOAD_PING_ONLY,
    canonical_key,
    is_legacy_method,
    is_mcmp_method,
    is_wildcard,
    method_name,
    wants_xml,
)
from modcluster.mcmp.replies import (
    DumpBalancer,
    InfoContext,
    InfoNode,
    InfoVhost,
    format_dump,
    format_info,
    format_ping_rsp,
    format_status_rsp,
    format_stop_app_rsp,
    format_version,
)
from modcluster.node.javaparse import (
    parse_info_as_java,
    parse_ping_state,
    parse_stop_app_requests,
)

MAX = 65536
SMESPAR = (
    "SYNTAX: Can't parse MCMP message. It might have contained illegal symbols "
    "or unknown elements."
)


def body(text: str | bytes) -> Params:
    """Parse a body with the default-ish limit."""
    return parse_body(text.encode("utf-8") if isinstance(text, str) else text, MAX)


def raises(mess: str, type: str = "SYNTAX"):
    """Context manager asserting an MCMPError with exactly this type and text."""

    class _Check:
        def __enter__(self):
            return self

        def __exit__(self, exc_type, exc, tb):
            assert exc_type is not None, f"no error raised, expected {mess!r}"
            assert isinstance(exc, MCMPError), exc
            assert exc.mess == mess
            assert exc.type == type
            return True

    return _Check()


def java_urlencode(text: str) -> str:
    """
    C{java.net.URLEncoder.encode(text, "UTF-8")}: letters, digits and
    C{.-*_} unchanged, space to C{+}, everything else C{%XX} (upper case) per
    UTF-8 byte.
    """
    safe = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-*_"
    out = []
    for ch in text:
        if ch == " ":
            out.append("+")
        elif ch in safe:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def java_body(jvm_route: str | None, params: dict[str, str]) -> bytes:
    """
    The body C{DefaultMCMPHandler} sends: JVMRoute first, then the other
    parameters in TreeMap (code-unit) order, names and values URL-encoded.
    """
    pieces = []
    if jvm_route is not None:
        pieces.append("JVMRoute=" + java_urlencode(jvm_route))
    for key in sorted(params):
        pieces.append(java_urlencode(key) + "=" + java_urlencode(params[key]))
    return "&".join(pieces).encode("ascii")


# ---------------------------------------------------------------------------
# Tokenising
# ---------------------------------------------------------------------------


class TestParseBody:
    def test_pairs_in_order_with_canonical_keys(self):
        """Known keys get their canonical spelling; unknown keys are kept as sent."""
        params = body("jvmroute=n1&HOST=h&bogus=1&STICKYSESSIONFORCE=No&FlushPackets=On")
        assert params.pairs == (
            ("JVMRoute", "n1"),
            ("Host", "h"),
            ("bogus", "1"),
            ("StickySessionForce", "No"),
            ("flushpackets", "On"),
        )

    def test_every_known_key_canonicalised(self):
        """Every known key is recognised in any case."""
        for key in KNOWN_KEYS:
            assert canonical_key(key.upper()) == key
            assert canonical_key(key.lower()) == key
            assert body(f"{key.swapcase()}=v").pairs == ((key, "v"),)

    def test_key_folding_is_ascii_only(self):
        """C{strcasecmp} folds ASCII only: KELVIN SIGN is not C{k}."""
        assert canonical_key("Stic\u212aySessionCookie") == "Stic\u212aySessionCookie"

    def test_empty_body(self):
        """An empty body is an empty list of pairs."""
        assert body(b"").pairs == ()
        assert not body(b"")

    def test_empty_pieces_skipped(self):
        """C{&&} and a leading or trailing C{&} produce nothing."""
        assert body("&&JVMRoute=n1&&&Load=5&").pairs == (("JVMRoute", "n1"), ("Load", "5"))
        assert body("&&&&").pairs == ()

    def test_first_equals_splits(self):
        """Further C{=} belong to the value (1.3.x)."""
        assert body("Context=/a=b=c").pairs == (("Context", "/a=b=c"),)
        assert body("Context=").pairs == (("Context", ""),)

    def test_piece_without_equals_is_key_with_empty_value(self):
        """C{JVMRoute=node1&Load} does not crash: C{Load} has an empty value."""
        assert body("JVMRoute=node1&Load").pairs == (("JVMRoute", "node1"), ("Load", ""))

    def test_empty_key_refused(self):
        """C{=value} is malformed."""
        with raises(SMESPAR):
            body("=x")
        with raises(SMESPAR):
            body("JVMRoute=a&=")

    def test_percent_decoding(self):
        """Only C{%XX} is decoded, in keys and values, after splitting."""
        params = body("Alias=default-host%2Clocalhost&Context=%2Fa%26b%3Dc&J%56MRoute=x")
        assert params.pairs == (
            ("Alias", "default-host,localhost"),
            ("Context", "/a&b=c"),
            ("JVMRoute", "x"),
        )
        assert body("Context=%2f%2F").get("Context") == "//"

    def test_plus_is_a_space(self):
        """
        Bodies are form-encoded (Java's C{URLEncoder}): C{+} is a space and a
        literal C{+} arrives as C{%2B} (httpd keeps C{+}; issue 14 §2).
        """
        assert body("Domain=a+b").get("Domain") == "a b"
        assert body("Domain=a%2Bb").get("Domain") == "a+b"
        assert body("Context=%2Fmy+app&JVMRoute=n+1").pairs == (
            ("Context", "/my app"), ("JVMRoute", "n 1"))
        assert body("Context=%2Fa%2B%2Bb+%2B").get("Context") == "/a++b +"
        assert body("Bogus+key=1").keys() == ("Bogus key",)

    @pytest.mark.parametrize(
        "raw",
        [b"JVMRoute=%", b"JVMRoute=%4", b"JVMRoute=%zz", b"JVMRoute=a%g1", b"J%=x", b"JVMRoute=%%41"],
    )
    def test_invalid_percent_sequence(self, raw):
        """A C{%} not followed by two hex digits is a parse error."""
        with raises(SMESPAR):
            parse_body(raw, MAX)

    @pytest.mark.parametrize(
        "raw", [b"JVMRoute=%ff", b"JVMRoute=\xff", b"JVMRoute=%C3", b"JVMRoute=%ED%A0%80", b"\xc3=x"]
    )
    def test_invalid_utf8(self, raw):
        """Decoded bytes must be UTF-8."""
        with raises(SMESPAR):
            parse_body(raw, MAX)

    def test_utf8_accepted(self):
        """Non-ASCII UTF-8 (Java encodes it as %XX) decodes to text."""
        assert body("Context=%2Fcaf%C3%A9").get("Context") == "/caf\u00e9"
        assert body("Context=/caf\u00e9").get("Context") == "/caf\u00e9"

    @pytest.mark.parametrize(
        "raw",
        [
            b"JVMRoute=a%3Cb",
            b"JVMRoute=a>b",
            b"JVMRoute=a%22b",
            b"JVMRoute=a'b",
            b"JVMRoute=a%0Db",
            b"JVMRoute=a%0Ab",
            b"JVMRoute=a\nb",
            b"JVMRoute=node1\r\n",
            b"JVMRoute=a%00b",
            b"JVMRoute=a\x00b",
            b"JVMRoute=a%09b",
            b"JVMRoute=a%7Fb",
            b"J%3CVMRoute=a",
        ],
    )
    def test_forbidden_characters(self, raw):
        """httpd's forbidden characters, NUL and other controls are refused."""
        with raises(SMESPAR):
            parse_body(raw, MAX)

    def test_too_large(self):
        """A body over the limit is refused with a typed SYNTAX error, never truncated."""
        raw = b"JVMRoute=n1&Load=5"
        assert parse_body(raw, len(raw)).get("Load") == "5"
        with pytest.raises(MessageTooLarge) as info:
            parse_body(raw, len(raw) - 1)
        err = info.value
        assert isinstance(err, MCMPError)
        assert (err.size, err.limit) == (len(raw), len(raw) - 1)
        assert err.type == "SYNTAX"
        assert err.mess == f"SYNTAX: MCMP message too big ({len(raw)} bytes, limit {len(raw) - 1})"

    def test_accepts_bytearray(self):
        """Any bytes-like body works."""
        assert parse_body(bytearray(b"Load=1"), MAX).get("Load") == "1"


_FORBIDDEN_CHARS = set("<>\"'\x7f") | {chr(c) for c in range(32)}
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_KEY = st.sampled_from(KNOWN_KEYS).map(str.swapcase) | st.text(
    st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12
)


class TestJavaEncodedRoundTrip:
    @given(st.lists(st.tuples(_KEY, _TEXT), max_size=8))
    def test_any_pairs(self, pairs):
        """
        Pairs URL-encoded like Java's URLEncoder parse back to the same keys
        (canonicalised) and values, unless a forbidden character is in them.
        """
        raw = "&".join(java_urlencode(k) + "=" + java_urlencode(v) for k, v in pairs).encode("ascii")
        forbidden = any(set(k + v) & _FORBIDDEN_CHARS for k, v in pairs)
        try:
            params = parse_body(raw, len(raw))
        except MCMPError as err:
            assert forbidden
            assert err.mess == SMESPAR
            return
        assert not forbidden
        assert params.pairs == tuple(
            (canonical_key(k), v) for k, v in pairs
        )

    @given(
        route=st.text("abcdefghijklmnopqrstuvwxyz0123456789-.:_", min_size=1, max_size=63),
        aliases=st.lists(st.text("abcdefghijKLMNOP0123456789-.", min_size=1, max_size=30),
                         min_size=1, max_size=5),
        path=st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="<>\"',"),
                     max_size=30).map(lambda p: "/" + p),
        command=st.sampled_from(["ENABLE-APP", "DISABLE-APP", "STOP-APP", "REMOVE-APP"]),
    )
    def test_java_context_command(self, route, aliases, path, command):
        """A context command built like DefaultMCMPRequestFactory decodes to its route, aliases, path."""
        raw = java_body(route, {"Alias": ",".join(aliases), "Context": path})
        limits = FieldLimits(context=400)
        app = decode_app(parse_body(raw, MAX), is_wildcard(b"/"), limits)
        assert app.jvm_route == route
        assert app.aliases == tuple(dict.fromkeys(a.lower() for a in aliases))
        assert app.contexts == (path,)
        wildcard = decode_app(parse_body(java_body(route, {}), MAX), is_wildcard(b"/*"))
        assert wildcard == AppRequest(route, True)


class TestParams:
    def test_accessors(self):
        """get: last value; get_all: every value in order; case-insensitive lookups."""
        params = body("Alias=a&JVMRoute=x&alias=b&JVMROUTE=y&Bogus=1&bogus=2")
        assert params.get("JVMRoute") == "y"
        assert params.get("jvmroute") == "y"
        assert params.get_all("Alias") == ("a", "b")
        assert params.get_all("BOGUS") == ("1", "2")
        assert params.get("Missing") is None
        assert params.get("Missing", "d") == "d"
        assert params.get_all("Missing") == ()
        assert "alias" in params and "Missing" not in params and 3 not in params
        assert params.keys() == ("Alias", "JVMRoute", "Alias", "JVMRoute", "Bogus", "bogus")
        assert len(params) == 6
        assert list(params) == list(params.pairs)

    def test_frozen_and_hashable(self):
        """Params is an immutable value."""
        params = body("JVMRoute=x")
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            params.pairs = ()  # type: ignore[misc]
        assert params == body("jvmroute=x")
        assert hash(params) == hash(body("JVMRoute=x"))

    def test_from_pairs(self):
        """from_pairs canonicalises keys and applies the forbidden-character check."""
        assert Params.from_pairs([("jvmroute", "n"), ("X", "y")]).pairs == (
            ("JVMRoute", "n"),
            ("X", "y"),
        )
        with raises(SMESPAR):
            Params.from_pairs([("JVMRoute", "a\r\nb")])
        with raises(SMESPAR):
            Params.from_pairs([("", "x")])


# ---------------------------------------------------------------------------
# Hostile input
# ---------------------------------------------------------------------------


def _decode_everything(params: Params) -> None:
    for decode_one in (
        lambda p: decode_config(p, "mycluster", DEFAULT_LIMITS),
        lambda p: decode_app(p, False),
        lambda p: decode_app(p, True),
        decode_status,
        decode_ping,
    ):
        try:
            decode_one(params)
        except MCMPError:
            pass


class TestHostile:
    @given(st.binary(max_size=300))
    def test_arbitrary_bytes_only_typed_errors(self, raw):
        """Arbitrary bytes never raise anything but MCMPError."""
        try:
            params = parse_body(raw, 200)
        except MCMPError:
            return
        _decode_everything(params)

    @given(
        st.lists(
            st.sampled_from(
                ["JVMRoute", "Load", "Alias", "Context", "Host", "Port", "Type", "ping", "ttl",
                 "flushwait", "Timeout", "smax", "Maxattempts", "WaitWorker", "Scheme",
                 "StickySession", "Balancer", "Domain", "flushpackets", "Reversed", "x",
                 "=", "&", "%", "%2C", ",", "%00", "-1", "101", "5ms", "abc", "", "%C3%A9",
                 "http", "ajp", "1h", "99999999999999"]
            ),
            max_size=30,
        )
    )
    def test_token_soup_only_typed_errors(self, tokens):
        """Bodies built from MCMP-looking tokens never raise anything but MCMPError."""
        raw = "".join(tokens).encode()
        try:
            params = parse_body(raw, MAX)
        except MCMPError:
            return
        _decode_everything(params)

    def test_status_dangling_load(self):
        """The body that crashed httpd is a plain SYNTAX error here."""
        with raises("SYNTAX: Bad value for Load"):
            decode_status(body("JVMRoute=node1&Load"))

    def test_ten_thousand_pairs(self):
        """10k pairs parse, and the decoders handle them."""
        raw = b"&".join([b"JVMRoute=n1"] + [b"Bogus%d=%d" % (i, i) for i in range(10_000)])
        params = parse_body(raw, len(raw))
        assert len(params) == 10_001
        config = decode_config(params)
        assert config.jvm_route == "n1"
        assert len(config.warnings) == 10_000
        with raises('SYNTAX: Invalid field "Bogus0" in message'):
            decode_status(params)

    def test_ten_thousand_aliases(self):
        """A huge alias list is handled (bounded only by the message size)."""
        aliases = ",".join(f"h{i}" for i in range(10_000))
        raw = f"JVMRoute=n&Alias={aliases}&Context=/a".encode()
        app = decode_app(parse_body(raw, len(raw)), False)
        assert len(app.aliases) == 10_000

    @pytest.mark.parametrize(
        "raw",
        [
            b"&" * 1_000_000,
            b"=" * 1_000_000,
            b"%41" * 333_333,
            b"a=" + b"%2C" * 333_000,
            (b"k=v&" * 250_000),
            b"Alias=" + b"," * 1_000_000,
        ],
    )
    def test_linear_time(self, raw):
        """1 MB of separators or escapes parses (or fails) quickly: no quadratic behaviour."""
        started = time.perf_counter()
        try:
            params = parse_body(raw, len(raw))
            _decode_everything(params)
        except MCMPError:
            pass
        assert time.perf_counter() - started < 5.0


# ---------------------------------------------------------------------------
# CONFIG
# ---------------------------------------------------------------------------


class TestDecodeConfig:
    def test_java_defaults(self):
        """The CONFIG a default Tomcat node sends, with every other field at httpd's default."""
        config = decode_config(
            body("JVMRoute=node1&Host=127.0.0.1&Port=28009&StickySessionForce=No&Type=ajp"),
            "mycluster",
            DEFAULT_LIMITS,
        )
        assert config == ConfigRequest(
            jvm_route="node1",
            balancer="mycluster",
            sticky_session=True,
            sticky_session_cookie="JSESSIONID",
            sticky_session_path="jsessionid",
            sticky_session_remove=False,
            sticky_session_force=False,
            wait_worker=0,
            max_attempts=1,
            domain="",
            host="127.0.0.1",
            port=28009,
            type="ajp",
            reversed=False,
            flushpackets="Off",
            flushwait_ms=10,
            ping_ms=10_000,
            smax=-1,
            ttl_ms=60_000,
            timeout_ms=0,
            groups=(),
            warnings=(),
        )
        assert (config.ping_s, config.ttl_s, config.timeout_s) == (10.0, 60.0, 0.0)

    def test_all_fields(self):
        """The reference's "most optional parameters" example."""
        c = decode_config(
            body(
                "JVMRoute=node1&Balancer=mycluster&Domain=dc1&Host=10.0.0.21&Maxattempts=2"
                "&Port=8009&StickySessionCookie=MYSESSION&StickySessionForce=No"
                "&StickySessionPath=mysession&Timeout=30&Type=ajp&WaitWorker=5"
                "&flushpackets=On&flushwait=20&ping=5&smax=50&ttl=120"
            ),
            "other",
        )
        assert (c.balancer, c.sticky_session, c.sticky_session_cookie, c.sticky_session_path) == (
            "mycluster", True, "MYSESSION", "mysession",
        )
        assert (c.sticky_session_remove, c.sticky_session_force, c.wait_worker, c.max_attempts) == (
            False, False, 5, 2,
        )
        assert (c.domain, c.host, c.port, c.type) == ("dc1", "10.0.0.21", 8009, "ajp")
        assert (c.flushpackets, c.flushwait_ms, c.ping_ms, c.ping_s) == ("On", 20, 5000, 5.0)
        assert (c.smax, c.ttl_ms, c.timeout_ms) == (50, 120_000, 30_000)
        assert (c.ttl_s, c.timeout_s) == (120.0, 30.0)

    def test_sub_second_times(self):
        """Times below a second survive in the *_s properties as fractions."""
        c = decode_config(body("JVMRoute=n&ping=500ms&ttl=1500ms"))
        assert (c.ping_s, c.ttl_s) == (0.5, 1.5)

    def test_default_balancer_and_lower_casing(self):
        """The default balancer comes from the caller; Balancer values are lower-cased."""
        assert decode_config(body("JVMRoute=n"), "MyDefault").balancer == "mydefault"
        config = decode_config(body("JVMRoute=n&Balancer=BigCluster"))
        assert config.balancer == "bigcluster"
        assert any("lower-cased" in w for w in config.warnings)

    def test_booleans(self):
        """yes/no/on/off/true/false in any case; anything else keeps the default."""
        for true in ("yes", "YES", "On", "true", "TRUE"):
            c = decode_config(body(f"JVMRoute=n&StickySessionRemove={true}&Reversed={true}"))
            assert c.sticky_session_remove is True
            assert c.reversed is True
        for false in ("no", "No", "OFF", "false", "False"):
            c = decode_config(body(f"JVMRoute=n&StickySession={false}&StickySessionForce={false}"))
            assert c.sticky_session is False
            assert c.sticky_session_force is False
        c = decode_config(body("JVMRoute=n&StickySession=maybe&Reversed=1"))
        assert c.sticky_session is True
        assert c.reversed is False
        assert len(c.warnings) == 2

    def test_java_reversed_true(self):
        """Java sends C{Reversed=true}: recognised (the model ignores it)."""
        assert decode_config(body("JVMRoute=n&Reversed=true")).reversed is True

    @pytest.mark.parametrize(
        "value,mode",
        [("On", "On"), ("yes", "On"), ("auto", "Auto"), ("AUTO", "Auto"), ("off", "Off"),
         ("No", "Off"), ("sometimes", "Off")],
    )
    def test_flushpackets(self, value, mode):
        """flushpackets On/Yes, Auto, Off/No; unknown keeps Off."""
        assert decode_config(body(f"JVMRoute=n&flushpackets={value}")).flushpackets == mode

    @pytest.mark.parametrize(
        "key,attribute,value,ms",
        [
            ("flushwait", "flushwait_ms", "20", 20),
            ("flushwait", "flushwait_ms", "2s", 2000),
            ("flushwait", "flushwait_ms", "20ms", 20),
            ("ping", "ping_ms", "5", 5000),
            ("ping", "ping_ms", "500ms", 500),
            ("ping", "ping_ms", "2mi", 120_000),
            ("ping", "ping_ms", "1h", 3_600_000),
            ("ping", "ping_ms", "0", 0),
            ("ttl", "ttl_ms", "120", 120_000),
            ("ttl", "ttl_ms", "1mi", 60_000),
            ("Timeout", "timeout_ms", "30", 30_000),
            ("timeout", "timeout_ms", "250ms", 250),
            ("Timeout", "timeout_ms", "2147483647", 2147483647000),
        ],
    )
    def test_times(self, key, attribute, value, ms):
        """Times: decimal with optional ms/s/mi/h; flushwait defaults to ms, the others to s."""
        config = decode_config(body(f"JVMRoute=n&{key}={value}"))
        assert getattr(config, attribute) == ms

    @pytest.mark.parametrize(
        "key,mess",
        [
            ("flushwait", "SYNTAX: Flushwait field has bad value"),
            ("ping", "SYNTAX: Ping field has bad value"),
            ("ttl", "SYNTAX: TTL field has bad value"),
            ("Timeout", "SYNTAX: Timeout field has bad value"),
        ],
    )
    @pytest.mark.parametrize(
        "value", ["-1", "abc", "5x", "5S", "5 s", " 5", "+5", "1.5", "5m", "5sec", "2147483648s", "9" * 13]
    )
    def test_bad_times(self, key, mess, value):
        """Negative, non-numeric, unknown unit or absurdly large: the field's SYNTAX error."""
        with raises(mess):
            decode_config(body(f"JVMRoute=n&{key}={java_urlencode(value)}"))

    @pytest.mark.parametrize(
        "value,smax,attempts,wait",
        [
            ("50", 50, 50, 50),
            ("0", 0, 0, 0),
            ("12abc", 12, 12, 12),
            ("abc", 0, 0, 0),
            ("-1", -1, 0, 0),
            ("-7", -1, 0, 0),
            ("+3", 3, 3, 3),
            ("99999999999999999999", 2**31 - 1, 2**31 - 1, 2**31 - 1),
        ],
    )
    def test_integers_atoi(self, value, smax, attempts, wait):
        """smax/Maxattempts/WaitWorker use C atoi semantics, then are clamped to sane ranges."""
        c = decode_config(
            body(f"JVMRoute=n&smax={java_urlencode(value)}&Maxattempts={java_urlencode(value)}"
                 f"&WaitWorker={java_urlencode(value)}")
        )
        assert (c.smax, c.max_attempts, c.wait_worker) == (smax, attempts, wait)

    def test_host_zone_stripped(self):
        """A bracketed IPv6 host loses its %zone."""
        assert decode_config(body("JVMRoute=n&Host=%5Bfe80%3A%3A1%25eth0%5D")).host == "[fe80::1]"
        assert decode_config(body("JVMRoute=n&Host=%5B%3A%3A1%5D")).host == "[::1]"
        assert decode_config(body("JVMRoute=n&Host=a%25b")).host == "a%b"

    @pytest.mark.parametrize("value", ["ajp", "http", "https", "ws", "wss", "AJP", "Http"])
    def test_types(self, value):
        """ajp/http/https (and ws/wss) are accepted, lower-cased."""
        assert decode_config(body(f"JVMRoute=n&Type={value}")).type == value.lower()

    @pytest.mark.parametrize("value", ["h2c", "ftp", "fcgi", "ajp13"])
    def test_bad_type(self, value):
        """Other schemes are refused."""
        with raises("SYNTAX: Type field has bad value"):
            decode_config(body(f"JVMRoute=n&Type={value}"))

    @pytest.mark.parametrize("value", ["0", "65536", "80a", "-1", "+80", "0x50"])
    def test_bad_port(self, value):
        """Port must be 1..65535 in decimal."""
        with raises("SYNTAX: Port field has bad value"):
            decode_config(body(f"JVMRoute=n&Port={java_urlencode(value)}"))

    def test_port_leading_zeros(self):
        """Leading zeros are fine."""
        assert decode_config(body("JVMRoute=n&Port=08009")).port == 8009

    def test_empty_values_mean_default(self):
        """An empty value is treated as not sent (Java may send an empty Domain or Balancer)."""
        c = decode_config(
            body("JVMRoute=n&Balancer=&Domain=&Host=&Port=&Type=&ping=&ttl=&smax=&StickySession="
                 "&StickySessionCookie=&Bogus=&Load")
        )
        assert attrs.evolve(c, warnings=()) == ConfigRequest(jvm_route="n")
        assert len(c.warnings) == 12

    def test_unknown_and_foreign_keys_ignored(self):
        """Unknown keys and keys of other commands are ignored with a warning."""
        c = decode_config(body("JVMRoute=node9&Host=127.0.0.1&Port=8089&Type=http&Bogus=1&Load=5"))
        assert c.port == 8089
        assert len(c.warnings) == 2
        assert "Bogus" in c.warnings[1] or "Bogus" in c.warnings[0]

    def test_repeated_scalar_last_wins(self):
        """A repeated scalar key: the last occurrence wins."""
        assert decode_config(body("JVMRoute=a&Port=1&JVMRoute=b&Port=2")).port == 2
        assert decode_config(body("JVMRoute=a&JVMRoute=b")).jvm_route == "b"

    def test_vhost_groups(self):
        """1.3.x grouping: each Alias/Context pair is one virtual host."""
        c = decode_config(body("JVMRoute=n&Alias=A,b&Context=/x,/y&Alias=c&Context=/z"))
        assert c.groups == ((("a", "b"), ("/x", "/y")), (("c",), ("/z",)))
        c = decode_config(body("JVMRoute=n&Context=/x&Alias=a"))
        assert c.groups == ((("a",), ("/x",)),)
        c = decode_config(body("Alias=a,a,B,b&JVMRoute=n&Context=%2F"))
        assert c.groups == ((("a", "b"), ("/",)),)

    @pytest.mark.parametrize(
        "text,mess",
        [
            ("JVMRoute=n&Alias=a", "SYNTAX: Alias without Context"),
            ("JVMRoute=n&Alias=a&Alias=b&Context=/x", "SYNTAX: Alias without Context"),
            ("JVMRoute=n&Alias=a&Context=/x&Alias=b", "SYNTAX: Alias without Context"),
            ("JVMRoute=n&Context=/x", "SYNTAX: Context without Alias"),
            ("JVMRoute=n&Alias=a&Context=/x&Context=/y", "SYNTAX: Context without Alias"),
            ("JVMRoute=n&Context=/x&Context=/y&Alias=a", "SYNTAX: Context without Alias"),
            ("JVMRoute=n&Alias=a,,b&Context=/x", "SYNTAX: Empty Alias is not allowed"),
            ("JVMRoute=n&Alias=&Context=/x", "SYNTAX: Empty Alias is not allowed"),
            ("JVMRoute=n&Alias=a&Context=/x,", "SYNTAX: Empty Context is not allowed"),
        ],
    )
    def test_vhost_group_errors(self, text, mess):
        """Unpaired or empty Alias/Context."""
        with raises(mess):
            decode_config(body(text))

    def test_empty_body(self):
        """An empty CONFIG is unparseable (httpd fixture)."""
        with raises(SMESPAR):
            decode_config(body(""))
        with raises(SMESPAR):
            decode_config(body("&&"))

    def test_jvm_route_missing(self):
        """No JVMRoute (or an empty one)."""
        with raises("SYNTAX: JVMRoute can't be empty"):
            decode_config(body("Host=127.0.0.1&Port=8083&Type=http"))
        with raises("SYNTAX: JVMRoute can't be empty"):
            decode_config(body("JVMRoute=&Host=h"))

    @pytest.mark.parametrize(
        "key,limit,mess",
        [
            ("JVMRoute", 63, "SYNTAX: JVMRoute field too big"),
            ("Balancer", 39, "SYNTAX: Balancer field too big"),
            ("Domain", 19, "SYNTAX: LBGroup field too big"),
            ("Host", 63, "SYNTAX: Host field too big"),
            ("Type", 15, "SYNTAX: Type field too big"),
            ("StickySessionCookie", 29, "SYNTAX: A field is too big"),
            ("StickySessionPath", 29, "SYNTAX: A field is too big"),
        ],
    )
    def test_field_lengths(self, key, limit, mess):
        """Each field's limit: at the limit the length check passes, one more fails."""
        ok = "a" * limit
        if key != "Type":
            decode_config(body(f"JVMRoute=n&{key}={ok}"))
        else:
            with raises("SYNTAX: Type field has bad value"):
                decode_config(body(f"JVMRoute=n&{key}={ok}"))
        with raises(mess):
            decode_config(body(f"JVMRoute=n&{key}={ok}a"))

    def test_port_and_list_lengths(self):
        """Port (6), Alias element (254), Context element (79)."""
        with raises("SYNTAX: Port field too big"):
            decode_config(body("JVMRoute=n&Port=0008009"))
        decode_config(body(f"JVMRoute=n&Alias={'a' * 254}&Context=/{'c' * 78}"))
        with raises("SYNTAX: Alias field too big"):
            decode_config(body(f"JVMRoute=n&Alias=b,{'a' * 255}&Context=/x"))
        with raises("SYNTAX: Context field too big"):
            decode_config(body(f"JVMRoute=n&Alias=a&Context=/x,/{'c' * 79}"))

    def test_lengths_count_utf8_bytes(self):
        """Lengths are compared in bytes, like httpd's strlen."""
        with raises("SYNTAX: JVMRoute field too big"):
            decode_config(body("JVMRoute=" + "%C3%A9" * 32))
        assert decode_config(body("JVMRoute=" + "%C3%A9" * 31 + "a")).jvm_route == "\u00e9" * 31 + "a"

    def test_custom_limits(self):
        """FieldLimits makes the limits configurable."""
        limits = FieldLimits(jvm_route=100, alias=3)
        assert decode_config(body(f"JVMRoute={'r' * 100}"), "b", limits).jvm_route == "r" * 100
        with raises("SYNTAX: Alias field too big"):
            decode_config(body("JVMRoute=n&Alias=abcd&Context=/"), "b", limits)
        with pytest.raises(ValueError):
            FieldLimits(host=0)

    def test_first_problem_in_body_order(self):
        """Pairs are validated in the order sent; the missing JVMRoute comes after."""
        big_b, big_r = "b" * 40, "r" * 64
        with raises("SYNTAX: Balancer field too big"):
            decode_config(body(f"Balancer={big_b}&JVMRoute={big_r}"))
        with raises("SYNTAX: JVMRoute field too big"):
            decode_config(body(f"JVMRoute={big_r}&Balancer={big_b}"))
        with raises("SYNTAX: Host field too big"):
            decode_config(body(f"Host={'h' * 64}"))
        with raises("SYNTAX: Ping field has bad value"):
            decode_config(body("ping=x&Alias=a"))
        with raises("SYNTAX: JVMRoute can't be empty"):
            decode_config(body("Alias=a"))

    @settings(deadline=None)
    @given(
        route=st.text("abcdefghijklmnopqrstuvwxyz0123456789-.:_", min_size=1, max_size=63),
        host=st.sampled_from(["127.0.0.1", "node-1.example.com", "[::1]", "localhost"]),
        port=st.integers(1, 65535),
        node_type=st.sampled_from(["ajp", "http", "https"]),
        domain=st.none() | st.text("abc xyz-", min_size=1, max_size=19),
        balancer=st.none() | st.text("abcdefXYZ_-", min_size=1, max_size=39),
        flush=st.booleans(),
        ints=st.fixed_dictionaries(
            {k: st.none() | st.integers(0, 100_000) for k in ("flushwait", "ping", "smax", "ttl", "Timeout")}
        ),
        sticky=st.booleans(),
        remove=st.booleans(),
        force=st.booleans(),
        cookie=st.sampled_from(["JSESSIONID", "MYSESSION", "sid"]),
        worker_timeout=st.none() | st.integers(0, 600),
        attempts=st.none() | st.integers(0, 10),
    )
    def test_java_config_roundtrip(
        self, route, host, port, node_type, domain, balancer, flush, ints, sticky, remove,
        force, cookie, worker_timeout, attempts,
    ):
        """A CONFIG encoded like DefaultMCMPRequestFactory decodes to the node's settings."""
        params: dict[str, str] = {"Host": host, "Port": str(port), "Type": node_type}
        if domain is not None:
            params["Domain"] = domain
        if balancer is not None:
            params["Balancer"] = balancer
        if flush:
            params["flushpackets"] = "On"
        for key, value in ints.items():
            if value is not None:
                params[key] = str(value)
        if not sticky:
            params["StickySession"] = "No"
        if cookie != "JSESSIONID":
            params["StickySessionCookie"] = cookie
        if remove:
            params["StickySessionRemove"] = "Yes"
        if not force:
            params["StickySessionForce"] = "No"
        if worker_timeout is not None:
            params["WaitWorker"] = str(worker_timeout)
        if attempts is not None:
            params["Maxattempts"] = str(attempts)
        config = decode_config(parse_body(java_body(route, params), MAX), "mycluster")
        node = bal = config
        assert node.jvm_route == route
        assert (node.host, node.port, node.type) == (host, port, node_type)
        assert node.domain == ("" if domain is None else domain)
        expected_balancer = "mycluster" if balancer is None else balancer.lower()
        assert config.balancer == expected_balancer
        assert node.flushpackets == ("On" if flush else "Off")
        assert node.flushwait_ms == (10 if ints["flushwait"] is None else ints["flushwait"])
        assert node.ping_ms == 1000 * (10 if ints["ping"] is None else ints["ping"])
        assert node.smax == (-1 if ints["smax"] is None else ints["smax"])
        assert node.ttl_ms == 1000 * (60 if ints["ttl"] is None else ints["ttl"])
        assert node.timeout_ms == 1000 * (0 if ints["Timeout"] is None else ints["Timeout"])
        assert (bal.sticky_session, bal.sticky_session_remove, bal.sticky_session_force) == (
            sticky, remove, force,
        )
        assert bal.sticky_session_cookie == cookie
        assert bal.wait_worker == (0 if worker_timeout is None else worker_timeout)
        assert bal.max_attempts == (1 if attempts is None else attempts)


# ---------------------------------------------------------------------------
# *-APP
# ---------------------------------------------------------------------------


class TestDecodeApp:
    def test_java_context_command(self):
        """The Java context command (aliases comma-joined, path encoded)."""
        app = decode_app(body("JVMRoute=node1&Alias=default-host%2Clocalhost&Context=%2Fmyapp"), False)
        assert app == AppRequest("node1", False, ("default-host", "localhost"), ("/myapp",))

    def test_wildcard(self):
        """A node-level command needs only JVMRoute; Alias/Context are ignored."""
        assert decode_app(body("JVMRoute=node1"), True) == AppRequest("node1", True, (), ())
        assert decode_app(body("JVMRoute=n&Alias=&Context=,&Alias=" + "a" * 300), True) == AppRequest(
            "n", True
        )

    def test_lower_case_repeats_dedupe(self):
        """Aliases lower-cased; repeated keys accumulated; duplicates dropped; order kept."""
        app = decode_app(
            body("JVMRoute=n&Alias=WWW.Example.com,b&Context=/x&alias=c,B&CONTEXT=/y,/x"), False
        )
        assert app.aliases == ("www.example.com", "b", "c")
        assert app.contexts == ("/x", "/y")

    def test_unknown_keys_ignored(self):
        """*-APP ignores unknown keys."""
        assert decode_app(body("JVMRoute=n&Load=5&Alias=a&Context=/&Bogus=x"), False).contexts == ("/",)

    @pytest.mark.parametrize(
        "text,wildcard,mess",
        [
            ("", False, SMESPAR),
            ("", True, SMESPAR),
            ("Alias=a&Context=/", False, "SYNTAX: JVMRoute can't be empty"),
            ("JVMRoute=", True, "SYNTAX: JVMRoute can't be empty"),
            ("JVMRoute=n", False, "SYNTAX: No Context and Alias in APP command"),
            ("JVMRoute=n&Alias=a", False, "SYNTAX: Alias without Context"),
            ("JVMRoute=n&Context=/", False, "SYNTAX: Context without Alias"),
            ("JVMRoute=n&Alias=a,&Context=/", False, "SYNTAX: Empty Alias is not allowed"),
            ("JVMRoute=n&Alias=a&Context=", False, "SYNTAX: Empty Context is not allowed"),
            ("JVMRoute=n&Alias=a&Context", False, "SYNTAX: Empty Context is not allowed"),
            (f"JVMRoute={'r' * 64}", True, "SYNTAX: JVMRoute field too big"),
            (f"JVMRoute=n&Alias={'a' * 255}&Context=/", False, "SYNTAX: Alias field too big"),
            (f"JVMRoute=n&Alias=a&Context=/{'c' * 79}", False, "SYNTAX: Context field too big"),
            # order: the list problem comes before the missing JVMRoute
            ("Alias=,&Context=/", False, "SYNTAX: Empty Alias is not allowed"),
        ],
    )
    def test_errors(self, text, wildcard, mess):
        """Every *-APP SYNTAX path."""
        with raises(mess):
            decode_app(body(text), wildcard)

    def test_limits_parameter(self):
        """decode_app takes the same FieldLimits."""
        with raises("SYNTAX: Context field too big"):
            decode_app(body("JVMRoute=n&Alias=a&Context=/abc"), False, FieldLimits(context=3))


# ---------------------------------------------------------------------------
# STATUS
# ---------------------------------------------------------------------------


class TestDecodeStatus:
    @pytest.mark.parametrize("load", [-1, 0, 1, 50, 100])
    def test_loads(self, load):
        """Loads -1..100."""
        assert decode_status(body(f"JVMRoute=node1&Load={load}")) == StatusRequest("node1", load)

    def test_case_insensitive_and_order_free(self):
        """Key names are case-insensitive; order does not matter; last value wins."""
        assert decode_status(body("LOAD=5&jvmroute=n&Load=7")) == StatusRequest("n", 7)

    def test_missing_load_is_ping_only(self):
        """No Load: probe only (2.x-HEAD's -2)."""
        assert decode_status(body("JVMRoute=n")) == StatusRequest("n", LOAD_PING_ONLY)
        assert LOAD_PING_ONLY == -2

    @pytest.mark.parametrize("value", ["101", "-2", "", "abc", "5x", " 5", "+5", "5.0", "99999999999"])
    def test_bad_load(self, value):
        """Load is strict: an integer in -1..100."""
        with raises("SYNTAX: Bad value for Load"):
            decode_status(body(f"JVMRoute=n&Load={java_urlencode(value)}"))

    def test_invalid_field(self):
        """Any other key is refused, named as sent."""
        with raises('SYNTAX: Invalid field "bogus" in message'):
            decode_status(body("JVMRoute=n&Load=5&bogus=1"))
        with raises('SYNTAX: Invalid field "Alias" in message'):
            decode_status(body("JVMRoute=n&alias=1"))

    def test_order(self):
        """The first problem in body order wins."""
        with raises('SYNTAX: Invalid field "X" in message'):
            decode_status(body("X=1&Load=500"))
        with raises("SYNTAX: Bad value for Load"):
            decode_status(body("Load=500&X=1"))
        with raises("SYNTAX: JVMRoute field too big"):
            decode_status(body(f"JVMRoute={'r' * 64}&Load=500"))

    def test_no_route(self):
        """No JVMRoute, an empty one, or an empty body."""
        with raises("SYNTAX: No JVMRoute given!"):
            decode_status(body("Load=5"))
        with raises("SYNTAX: No JVMRoute given!"):
            decode_status(body("JVMRoute=&Load=5"))
        with raises(SMESPAR):
            decode_status(body(""))


# ---------------------------------------------------------------------------
# PING
# ---------------------------------------------------------------------------


class TestDecodePing:
    def test_forms(self):
        """Proxy, node and address pings."""
        assert decode_ping(body("")) == PingRequest()
        assert decode_ping(body("")).target == "proxy"
        assert decode_ping(body("JVMRoute=node1")) == PingRequest(jvm_route="node1")
        assert decode_ping(body("JVMRoute=node1")).target == "node"
        ping = decode_ping(body("Host=127.0.0.1&Port=8009&Scheme=ajp"))
        assert ping == PingRequest(scheme="ajp", host="127.0.0.1", port=8009)
        assert ping.target == "address"

    def test_route_wins(self):
        """JVMRoute wins over Scheme/Host/Port, even a partial triple."""
        assert decode_ping(body("JVMRoute=x&Scheme=http&Host=h&Port=1")) == PingRequest(jvm_route="x")
        assert decode_ping(body("Host=h&JVMRoute=x")) == PingRequest(jvm_route="x")

    def test_case_insensitive_key(self):
        """The Perl tests' C{JVMroute} is the JVMRoute key (so an unknown node is MEM, later)."""
        assert decode_ping(body("JVMroute=nonexsiting-route")) == PingRequest(jvm_route="nonexsiting-route")

    def test_scheme_normalised_and_zone(self):
        """Scheme lower-cased; bracketed host zone stripped."""
        ping = decode_ping(body("Scheme=HTTPS&Host=%5Bfe80%3A%3A1%25lo%5D&Port=443"))
        assert (ping.scheme, ping.host, ping.port) == ("https", "[fe80::1]", 443)

    @pytest.mark.parametrize(
        "text,mess",
        [
            ("Host=h&Port=1", "SYNTAX: Mandatory field(s) missing in message"),
            ("Scheme=ajp", "SYNTAX: Mandatory field(s) missing in message"),
            ("Scheme=ajp&Host=&Port=1", "SYNTAX: Mandatory field(s) missing in message"),
            ("JVMRoute=&Scheme=ajp", "SYNTAX: Mandatory field(s) missing in message"),
            ("Scheme=ftp&Host=h&Port=1", "SYNTAX: PING Unsupported scheme: ftp"),
            ("JVMRoute=x&Scheme=gopher", "SYNTAX: PING Unsupported scheme: gopher"),
            ("JVMRoute=x&Load=1", 'SYNTAX: Invalid field "Load" in message'),
            ("Scheme=ajp&Host=h&Port=99999", "SYNTAX: Port field has bad value"),
            ("Scheme=ajp&Host=h&Port=x", "SYNTAX: Port field has bad value"),
            (f"JVMRoute={'r' * 64}", "SYNTAX: JVMRoute field too big"),
            (f"Scheme=ajp&Host={'h' * 64}&Port=1", "SYNTAX: Host field too big"),
        ],
    )
    def test_errors(self, text, mess):
        """Every PING SYNTAX path."""
        with raises(mess):
            decode_ping(body(text))


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

CATALOGUE = [
    (errors.unparseable(), "SYNTAX", SMESPAR),
    (errors.balancer_too_big(), "SYNTAX", "SYNTAX: Balancer field too big"),
    (errors.field_too_big(), "SYNTAX", "SYNTAX: A field is too big"),
    (errors.jvm_route_too_big(), "SYNTAX", "SYNTAX: JVMRoute field too big"),
    (errors.jvm_route_empty(), "SYNTAX", "SYNTAX: JVMRoute can't be empty"),
    (errors.domain_too_big(), "SYNTAX", "SYNTAX: LBGroup field too big"),
    (errors.host_too_big(), "SYNTAX", "SYNTAX: Host field too big"),
    (errors.port_too_big(), "SYNTAX", "SYNTAX: Port field too big"),
    (errors.type_too_big(), "SYNTAX", "SYNTAX: Type field too big"),
    (errors.alias_too_big(), "SYNTAX", "SYNTAX: Alias field too big"),
    (errors.context_too_big(), "SYNTAX", "SYNTAX: Context field too big"),
    (errors.bad_flushwait(), "SYNTAX", "SYNTAX: Flushwait field has bad value"),
    (errors.bad_ping(), "SYNTAX", "SYNTAX: Ping field has bad value"),
    (errors.bad_ttl(), "SYNTAX", "SYNTAX: TTL field has bad value"),
    (errors.bad_timeout(), "SYNTAX", "SYNTAX: Timeout field has bad value"),
    (errors.alias_without_context(), "SYNTAX", "SYNTAX: Alias without Context"),
    (errors.context_without_alias(), "SYNTAX", "SYNTAX: Context without Alias"),
    (errors.no_context_and_alias(), "SYNTAX", "SYNTAX: No Context and Alias in APP command"),
    (errors.only_one_alias(), "SYNTAX", "SYNTAX: Only one Alias in APP command"),
    (errors.only_one_context(), "SYNTAX", "SYNTAX: Only one Context in APP command"),
    (errors.invalid_field("Bogus"), "SYNTAX", 'SYNTAX: Invalid field "Bogus" in message'),
    (errors.mandatory_fields_missing(), "SYNTAX", "SYNTAX: Mandatory field(s) missing in message"),
    (errors.command_not_supported(), "SYNTAX", "SYNTAX: Command is not supported"),
    (errors.cannot_read_post_data("CONFIG"), "SYNTAX", "SYNTAX: CONFIG can't read POST data"),
    (errors.bad_load(), "SYNTAX", "SYNTAX: Bad value for Load"),
    (errors.no_jvm_route_given(), "SYNTAX", "SYNTAX: No JVMRoute given!"),
    (errors.empty_alias(), "SYNTAX", "SYNTAX: Empty Alias is not allowed"),
    (errors.empty_context(), "SYNTAX", "SYNTAX: Empty Context is not allowed"),
    (errors.unsupported_ping_scheme("ftp"), "SYNTAX", "SYNTAX: PING Unsupported scheme: ftp"),
    (errors.bad_type(), "SYNTAX", "SYNTAX: Type field has bad value"),
    (errors.bad_port(), "SYNTAX", "SYNTAX: Port field has bad value"),
    (errors.message_too_large(70056, 65536), "SYNTAX", "SYNTAX: MCMP message too big (70056 bytes, limit 65536)"),
    (errors.node_insert_failed("n1"), "MEM", 'MEM: Can\'t update or insert node with "n1" JVMRoute'),
    (errors.old_node_exists("REMOVED"), "MEM", 'MEM: Old node with "REMOVED" JVMRoute still exists'),
    (errors.node_exists("n1"), "MEM", 'MEM: Node with "n1" JVMRoute already exists'),
    (errors.balancer_insert_failed("n1"), "MEM", 'MEM: Can\'t update or insert balancer for node with "n1" JVMRoute'),
    (errors.node_unknown("nosuchnode"), "MEM", 'MEM: Can\'t read node with "nosuchnode" JVMRoute'),
    (errors.host_read_failed("n1"), "MEM", 'MEM: Can\'t read host alias for node with "n1" JVMRoute'),
    (errors.host_insert_failed("n1"), "MEM", 'MEM: Can\'t update or insert host alias for node with "n1" JVMRoute'),
    (errors.host_insert_failed("n1", "example.com"), "MEM",
     'MEM: Can\'t update or insert host alias for node with "n1" JVMRoute (example.com)'),
    (errors.host_insert_failed("n1", type="GENERAL"), "GENERAL",
     'MEM: Can\'t update or insert host alias for node with "n1" JVMRoute'),
    (errors.context_insert_failed("n1"), "MEM", 'MEM: Can\'t update or insert context for node with "n1" JVMRoute'),
    (errors.context_insert_failed("n1", "/context100", "localhost"), "MEM",
     'MEM: Can\'t update or insert context for node with "n1" JVMRoute (/context100 and alias: localhost)'),
    (errors.same_worker_exists(), "MEM", "MEM: Another for the same worker already exist"),
]


class TestErrors:
    @pytest.mark.parametrize("err,type,mess", CATALOGUE, ids=[m for _, _, m in CATALOGUE])
    def test_catalogue(self, err, type, mess):
        """Every catalogue entry has its exact type and text."""
        assert isinstance(err, MCMPError)
        assert (err.type, err.mess, str(err)) == (type, mess, mess)

    def test_table(self):
        """
        The catalogue table names every httpd code once, each entry's text starts
        with its type, and the module-level constructors are its entries.
        """
        table = errors.CATALOGUE
        assert len(table) == 41
        assert table["SMESPAR"] is errors.unparseable
        assert table["MNODERD"] is errors.node_unknown
        for code, kind in table.items():
            assert kind.code == code
            assert kind.type in ("SYNTAX", "MEM")
            assert kind.text.startswith(kind.type + ": ")
        assert table["SBADFLD"]("Bogus") == MCMPError(
            "SYNTAX", 'SYNTAX: Invalid field "Bogus" in message'
        )

    def test_headers(self):
        """Version, Type and Mess headers."""
        assert error_headers(errors.jvm_route_empty()) == [
            (b"Version", b"0.2.1"),
            (b"Type", b"SYNTAX"),
            (b"Mess", b"SYNTAX: JVMRoute can't be empty"),
        ]

    def test_interpolated_values_sanitised(self):
        """Interpolated values can never put CR/LF (or other controls) into a header."""
        err = errors.node_unknown("evil\r\nSet-Cookie: x=1\x00")
        assert "\r" not in err.mess and "\n" not in err.mess and "\x00" not in err.mess
        assert err.mess == 'MEM: Can\'t read node with "evil??Set-Cookie: x=1?" JVMRoute'
        name, value = error_headers(err)[2]
        assert b"\r" not in value and b"\n" not in value
        assert MCMPError("GENERAL", "a\nb").mess == "a?b"

    def test_long_values_shortened(self):
        """A huge route does not make a huge header."""
        err = errors.node_unknown("r" * 10_000)
        assert len(err.mess) < 200
        assert "r" * 128 + "..." in err.mess

    def test_non_ascii_header(self):
        """Header values are ASCII."""
        assert error_headers(errors.node_unknown("caf\u00e9"))[2][1] == b'MEM: Can\'t read node with "caf\\xe9" JVMRoute'

    def test_type_checked(self):
        """Only SYNTAX, MEM and GENERAL."""
        with pytest.raises(ValueError):
            MCMPError("OOPS", "x")

    def test_equality(self):
        """Errors compare by type and text (handy in tests and logs)."""
        assert errors.bad_load() == errors.bad_load()
        assert errors.bad_load() != errors.bad_ping()
        assert hash(errors.bad_load()) == hash(errors.bad_load())


# ---------------------------------------------------------------------------
# Methods, URIs, Accept
# ---------------------------------------------------------------------------


class TestMethods:
    def test_methods(self):
        """MCMP methods, case-insensitive, bytes or str."""
        for name in ("CONFIG", "ENABLE-APP", "DISABLE-APP", "STOP-APP", "REMOVE-APP", "STATUS",
                     "DUMP", "INFO", "PING", "VERSION"):
            assert is_mcmp_method(name)
            assert is_mcmp_method(name.lower().encode())
            assert method_name(name.lower()) == name
        for name in ("GET", "POST", "FOOBAR", "ERROR", "enable_app", "", "CONFIG "):
            assert not is_mcmp_method(name)
            assert method_name(name) is None
        assert is_legacy_method(b"error") and is_legacy_method("ADDID")
        assert not is_legacy_method("CONFIG")

    @pytest.mark.parametrize(
        "uri,wildcard",
        [(b"*", True), (b"/*", True), (b"/foo/*", True), ("/*", True), (b"/*?x=1", True),
         (b"/", False), (b"/foo/", False), (b"/foo*", False), (b"", False), (b"/*/", False)],
    )
    def test_wildcard(self, uri, wildcard):
        """C{*} or C{.../*}."""
        assert is_wildcard(uri) is wildcard

    def test_wants_xml(self):
        """Accept containing text/xml."""
        assert wants_xml(b"text/xml")
        assert wants_xml("application/json, TEXT/XML;q=0.5")
        assert not wants_xml(b"*/*")
        assert not wants_xml(None)
        assert not wants_xml(b"application/xml")


# ---------------------------------------------------------------------------
# Replies
# ---------------------------------------------------------------------------


class TestReplies:
    def test_status_rsp(self):
        """STATUS-RSP as httpd, with the trailing newline; the Java ping parser reads State."""
        assert format_status_rsp("node1", True, 1795312129645537) == (
            b"Type=STATUS-RSP&JVMRoute=node1&State=OK&id=1795312129645537\n"
        )
        assert format_status_rsp("node1", False, -5) == b"Type=STATUS-RSP&JVMRoute=node1&State=NOTOK&id=-5\n"

    def test_ping_rsp(self):
        """PING-RSP with and without JVMRoute."""
        assert format_ping_rsp("node1", True, 7) == b"Type=PING-RSP&JVMRoute=node1&State=OK&id=7\n"
        assert format_ping_rsp(None, True, 7) == b"Type=PING-RSP&State=OK&id=7\n"
        assert format_ping_rsp(None, False, 7) == b"Type=PING-RSP&State=NOTOK&id=7\n"
        assert parse_ping_state(format_ping_rsp("n", True, 1)) is True
        assert parse_ping_state(format_ping_rsp(None, False, 1)) is False

    def test_stop_app_rsp(self):
        """1.3.x form, full alias and context, read back by the Java parser."""
        rsp = format_stop_app_rsp("127.0.0.1:8009:jboss.web", "localhost", "/context", 3)
        assert rsp == (
            b"Type=STOP-APP-RSP&JvmRoute=127.0.0.1:8009:jboss.web&Alias=localhost"
            b"&Context=/context&Requests=3\n"
        )
        assert parse_stop_app_requests(rsp) == 3
        assert parse_stop_app_requests(format_stop_app_rsp("n", "a", "/", 0)) == 0

    def test_stop_app_rsp_escapes_separators(self):
        """A context holding C{&Requests=} cannot fool the Java parser."""
        rsp = format_stop_app_rsp("n&x", "a=b", "/x&Requests=99", 4)
        assert rsp == b"Type=STOP-APP-RSP&JvmRoute=n%26x&Alias=a%3Db&Context=/x%26Requests%3D99&Requests=4\n"
        assert parse_stop_app_requests(rsp) == 4

    @given(
        route=st.text(min_size=1, max_size=40),
        alias=st.text(min_size=1, max_size=40),
        context=st.text(min_size=1, max_size=40),
        requests=st.integers(0, 2**31 - 1),
    )
    def test_stop_app_rsp_always_parses(self, route, alias, context, requests):
        """Whatever the values, the Java parser reads the right Requests and the body is one line."""
        rsp = format_stop_app_rsp(route, alias, context, requests)
        assert parse_stop_app_requests(rsp) == requests
        assert rsp.count(b"\n") == 1 and rsp.endswith(b"\n") and b"\r" not in rsp

    def test_version(self):
        """VERSION text and XML; the default release matches the tools' pattern."""
        assert format_version("txmc/1.0.0.Final", False) == b"release: txmc/1.0.0.Final, protocol: 0.2.1\n"
        assert format_version("a&b", True) == (
            b'<?xml version="1.0" standalone="yes" ?>\n'
            b"<version><release>a&amp;b</release><protocol>0.2.1</protocol></version>\n"
        )
        import re

        text = format_version().decode()
        assert DEFAULT_RELEASE == "mod_cluster/1.3.22.Final"
        assert re.match(
            r"release: (mod_cluster|mod_proxy_cluster)/\d+.\d+.\d+.(Dev|Alpha\d+|Beta\d+|CR\d+|Final), "
            r"protocol: \d+.\d+.\d+",
            text,
        )


NODE1 = InfoNode(1, "node1", "mycluster", "", "10.0.0.21", 8009, "ajp", "Off", 10, 10, -1, 60, 0,
                 12, 20480, 1024, 0, 85)
NODE2 = InfoNode(2, "node2", "mycluster", "dc1", "10.0.0.22", 8009, "ajp", "Off", 10, 10, -1, 60, 0,
                 0, 0, 0, 0, -1)


class TestInfo:
    def test_reference_text(self):
        """The reference §3.5 text example, byte for byte."""
        out = format_info(
            [NODE1, NODE2],
            [InfoVhost(1, 1, 1, "default-host"), InfoVhost(1, 1, 2, "localhost")],
            [InfoContext(1, 1, 1, "/myapp", "ENABLED"), InfoContext(1, 1, 2, "/", "STOPPED")],
            xml=False,
        )
        assert out == (
            b"Node: [1],Name: node1,Balancer: mycluster,LBGroup: ,Host: 10.0.0.21,Port: 8009,Type: ajp,"
            b"Flushpackets: Off,Flushwait: 10,Ping: 10,Smax: -1,Ttl: 60,Elected: 12,Read: 20480,"
            b"Transfered: 1024,Connected: 0,Load: 85\n"
            b"Node: [2],Name: node2,Balancer: mycluster,LBGroup: dc1,Host: 10.0.0.22,Port: 8009,Type: ajp,"
            b"Flushpackets: Off,Flushwait: 10,Ping: 10,Smax: -1,Ttl: 60,Elected: 0,Read: 0,"
            b"Transfered: 0,Connected: 0,Load: -1\n"
            b"Vhost: [1:1:1], Alias: default-host\n"
            b"Vhost: [1:1:2], Alias: localhost\n"
            b"Context: [1:1:1], Context: /myapp, Status: ENABLED\n"
            b"Context: [1:1:2], Context: /, Status: STOPPED\n"
        )
        parsed = parse_info_as_java(out)
        assert set(parsed) == {"node1", "node2"}
        (vhost,) = parsed["node1"]
        assert vhost.aliases == {"default-host", "localhost"}
        assert vhost.context_map == {"/myapp": "ENABLED", "/": "STOPPED"}
        assert parsed["node2"] == ()

    def test_reference_xml(self):
        """The reference §3.5 XML example, byte for byte."""
        node = attrs.evolve(NODE1, elected=0, read=0, transferred=0)
        out = format_info([node], [InfoVhost(1, 1, 1, "localhost")],
                          [InfoContext(1, 1, 1, "/myapp", "ENABLED")], xml=True)
        assert out == (
            b'<?xml version="1.0" standalone="yes" ?>\n'
            b'<Info><Nodes><Node id="1" name="node1"><Balancer>mycluster</Balancer><LBGroup></LBGroup>'
            b"<Host>10.0.0.21</Host><Port>8009</Port><Type>ajp</Type><Flushpackets>Off</Flushpackets>"
            b"<Flushwait>10</Flushwait><Ping>10</Ping><Smax>-1</Smax><Ttl>60</Ttl><Elected>0</Elected>"
            b"<Read>0</Read><Transfered>0</Transfered><Connected>0</Connected><Load>85</Load></Node>"
            b'</Nodes><Vhosts><Vhost id="1" alias="localhost"><Node id="1"/></Vhost></Vhosts>'
            b'<Contexts><Context id="1"><Status id="1">ENABLED</Status><Context>/myapp</Context>'
            b'<Node id="1"/><Vhost id="1"/></Context></Contexts></Info>'
        )

    def test_empty(self):
        """Empty tables: empty text body; XML skeleton."""
        assert format_info([], [], [], xml=False) == b""
        assert format_info([], [], [], xml=True) == (
            b'<?xml version="1.0" standalone="yes" ?>\n'
            b"<Info><Nodes></Nodes><Vhosts></Vhosts><Contexts></Contexts></Info>"
        )
        assert parse_info_as_java(b"") == {}

    def test_xml_escaping(self):
        """XML text and attributes are escaped; the document parses back to the values."""
        node = attrs.evolve(NODE1, name="a&b", balancer="<x>", domain="q\"'")
        out = format_info([node], [InfoVhost(1, 1, 1, "h&\"<>'")],
                          [InfoContext(1, 1, 1, "/a&b", "DISABLED")], xml=True)
        root = ET.fromstring(out)
        xnode = root.find("Nodes/Node")
        assert xnode.get("name") == "a&b"
        assert xnode.findtext("Balancer") == "<x>"
        assert xnode.findtext("LBGroup") == "q\"'"
        assert root.find("Vhosts/Vhost").get("alias") == "h&\"<>'"
        ctx = root.find("Contexts/Context")
        assert ctx.findtext("Context") == "/a&b"
        assert ctx.find("Status").get("id") == "2"

    def test_xml_invalid_characters_replaced(self):
        """Characters XML cannot carry are replaced, so the document stays well-formed."""
        out = format_info([attrs.evolve(NODE1, name="a\x01b")], [], [], xml=True)
        assert ET.fromstring(out).find("Nodes/Node").get("name") == "a\ufffdb"

    def test_text_control_characters_replaced(self):
        """A value can never start a new INFO line (no forged Node/Vhost/Context lines)."""
        node = attrs.evolve(NODE1, name="x\nNode: [9],Name: forged")
        out = format_info([node], [InfoVhost(1, 1, 1, "a\rVhost: [9:9:9], Alias: z")], [], xml=False)
        assert out.count(b"\n") == 2
        assert b"\r" not in out
        assert set(parse_info_as_java(out)) == {"x?Node: [9]"}

    def test_status_validated(self):
        """REMOVED (or anything else) can never be reported: the Java parser would throw."""
        with pytest.raises(ValueError):
            InfoContext(1, 1, 1, "/", "REMOVED")
        with pytest.raises(ValueError):
            attrs.evolve(NODE1, flushpackets="on")

    def test_flushpackets_modes(self):
        """Off/On/Auto are printed as such in INFO and as 0/1/2 in DUMP."""
        for mode, number in (("Off", 0), ("On", 1), ("Auto", 2)):
            node = attrs.evolve(NODE1, flushpackets=mode)
            assert f"Flushpackets: {mode},".encode() in format_info([node], [], [], xml=False)
            assert f"flushpackets: {number},".encode() in format_dump([], [node], [], [], xml=False)
            assert f"<FlushPackets>{number}</FlushPackets>".encode() in format_dump([], [node], [], [], xml=True)


BALANCER = DumpBalancer(1, "mycluster", True, "JSESSIONID", "jsessionid", False, False, 0, 1)


class TestDump:
    def test_reference_text(self):
        """The reference §3.6 text example, byte for byte."""
        out = format_dump(
            [BALANCER],
            [attrs.evolve(NODE1, timeout_s=0)],
            [InfoVhost(1, 1, 1, "localhost")],
            [InfoContext(1, 1, 1, "/myapp", "ENABLED")],
            xml=False,
        )
        assert out == (
            b"balancer: [1] Name: mycluster Sticky: 1 [JSESSIONID]/[jsessionid] remove: 0 force: 0 "
            b"Timeout: 0 maxAttempts: 1\n"
            b"node: [1:1],Balancer: mycluster,JVMRoute: node1,LBGroup: [],Host: 10.0.0.21,Port: 8009,"
            b"Type: ajp,flushpackets: 0,flushwait: 10,ping: 10,smax: -1,ttl: 60,timeout: 0\n"
            b"host: 1 [localhost] vhost: 1 node: 1\n"
            b"context: 1 [/myapp] vhost: 1 node: 1 status: 1\n"
        )

    def test_reference_xml(self):
        """The reference §3.6 XML example without the 2.x whitespace in <Host>."""
        out = format_dump(
            [BALANCER], [NODE1], [InfoVhost(1, 1, 1, "localhost")],
            [InfoContext(1, 1, 1, "/myapp", "ENABLED")], xml=True,
        )
        assert out == (
            b'<?xml version="1.0" standalone="yes" ?>\n'
            b'<Dump><Balancers><Balancer id="1" name="mycluster"><StickySession><Enabled>1</Enabled>'
            b"<Cookie>JSESSIONID</Cookie><Path>jsessionid</Path><Remove>0</Remove><Force>0</Force>"
            b"</StickySession><Timeout>0</Timeout><MaxAttempts>1</MaxAttempts></Balancer></Balancers>"
            b'<Nodes><Node id="1"><Balancer>mycluster</Balancer><JVMRoute>node1</JVMRoute><LBGroup>'
            b"</LBGroup><Host>10.0.0.21</Host><Port>8009</Port><Type>ajp</Type><FlushPackets>0"
            b"</FlushPackets><FlushWait>10</FlushWait><Ping>10</Ping><Smax>-1</Smax><Ttl>60</Ttl>"
            b'<Timeout>0</Timeout></Node></Nodes><Hosts><Host id="1" alias="localhost"><Vhost>1</Vhost>'
            b'<Node>1</Node></Host></Hosts><Contexts><Context id="1" path="/myapp"><Vhost>1</Vhost>'
            b'<Node>1</Node><Status id="1">ENABLED</Status></Context></Contexts></Dump>'
        )
        ET.fromstring(out)

    def test_empty(self):
        """Empty tables."""
        assert format_dump([], [], [], [], xml=False) == b""
        assert format_dump([], [], [], [], xml=True) == (
            b'<?xml version="1.0" standalone="yes" ?>\n'
            b"<Dump><Balancers></Balancers><Nodes></Nodes><Hosts></Hosts><Contexts></Contexts></Dump>"
        )

    def test_statuses_numeric(self):
        """Context status numbers 1/2/3."""
        out = format_dump([], [], [], [InfoContext(1, 1, n, "/", s) for n, s in
                                       ((1, "ENABLED"), (2, "DISABLED"), (3, "STOPPED"))])
        assert out.splitlines() == [
            b"context: 1 [/] vhost: 1 node: 1 status: 1",
            b"context: 2 [/] vhost: 1 node: 1 status: 2",
            b"context: 3 [/] vhost: 1 node: 1 status: 3",
        ]
