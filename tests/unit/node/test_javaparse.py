"""
Tests for L{modcluster.node.javaparse} (the Java listener's parsing rules) and
the property that every INFO we emit is read back by them as intended.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modcluster.mcmp.replies import (
    InfoContext,
    InfoNode,
    InfoVhost,
    format_info,
)
from modcluster.node.javaparse import (
    JavaInfoError,
    JavaVirtualHost,
    java_parse_int,
    java_split,
    java_trim,
    parse_info_as_java,
    parse_ping_state,
    parse_stop_app_requests,
)

NODE = "Node: [1],Name: node1,Balancer: mycluster,LBGroup: ,Host: h,Port: 8009,Type: ajp,Load: 1\n"


class TestJavaPrimitives:
    @pytest.mark.parametrize(
        "text,parts",
        [
            ("a,b", ["a", "b"]),
            ("a,,b", ["a", "", "b"]),
            ("a,b,,", ["a", "b"]),
            (",a", ["", "a"]),
            ("", [""]),
            (",", []),
            ("abc", ["abc"]),
        ],
    )
    def test_split(self, text, parts):
        """String.split drops trailing empty strings, keeps leading ones."""
        assert java_split(text, ",") == parts

    def test_trim(self):
        """String.trim strips <= U+0020 only."""
        assert java_trim(" \t\x00a b\r\n ") == "a b"
        assert java_trim("\u00a0a\u00a0") == "\u00a0a\u00a0"

    @pytest.mark.parametrize(
        "text,value",
        [("3", 3), ("+3", 3), ("-3", -3), ("007", 7), ("2147483647", 2147483647),
         ("2147483648", None), ("-2147483648", -2147483648), ("", None), ("+", None),
         (" 3", None), ("3 ", None), ("1_000", None), ("0x10", None)],
    )
    def test_parse_int(self, text, value):
        """Integer.parseInt."""
        assert java_parse_int(text) == value


class TestStopAndPing:
    def test_java_unit_test_string(self):
        """The string the Java unit test uses (1.3.x with its truncated alias)."""
        assert parse_stop_app_requests(
            "Type=STOP-APP-RSP&JvmRoute=127.0.0.1:8009:jboss.web&Alias=localhos&Context=/context&Requests=3"
        ) == 3

    @pytest.mark.parametrize(
        "body,requests",
        [
            (None, 0),
            (b"", 0),
            (b"Requests=5\n", 5),
            (b"Type=STOP-APP-RSP&Requests=abc", 0),
            (b"Type=STOP-APP-RSP&Requests=", 0),
            (b"Type=STOP-APP-RSP&Requests=3=", 3),
            (b"Type=STOP-APP-RSP&Requests=2147483648", 0),
            (b"Type=STOP-APP-RSP&requests=3", 0),
            # 2.x-HEAD reply: multi-line, no Requests
            (b"Type=STOP-APP-RSP\nJvmRoute=node1\nAlias=localhost Contexts=/a\n\n", 0),
            # Undertow's malformed reply
            (b"Type=STOP-APP-RSP,JvmRoute=node1,Alias=localhost,Context=/a,Requests=3", 0),
            (b"Requests=1&Requests=2", 1),
        ],
    )
    def test_stop_app(self, body, requests):
        """Anything unparseable reads as 0."""
        assert parse_stop_app_requests(body) == requests

    @pytest.mark.parametrize(
        "body,state",
        [
            (b"Type=PING-RSP&State=OK&id=1\n", True),
            (b"Type=PING-RSP&JVMRoute=n&State=NOTOK&id=1\n", False),
            (b"Type=PING-RSP&State=ok", False),
            (b"", False),
            (None, False),
        ],
    )
    def test_ping(self, body, state):
        """State is exactly OK."""
        assert parse_ping_state(body) is state


class TestInfoRules:
    def test_node_without_vhosts(self):
        """A node with nothing else maps to no vhosts."""
        assert parse_info_as_java(NODE) == {"node1": ()}

    def test_grouping_by_vhost_id(self):
        """Aliases with the same node and vhost id form one virtual host."""
        text = NODE + (
            "Vhost: [1:1:1], Alias: a\nVhost: [1:1:2], Alias: b\nVhost: [1:2:3], Alias: c\n"
            "Context: [1:1:1], Context: /x, Status: ENABLED\n"
            "Context: [1:2:2], Context: /y, Status: STOPPED\n"
            "Context: [1:2:3], Context: /y, Status: DISABLED\n"
        )
        assert parse_info_as_java(text) == {
            "node1": (
                JavaVirtualHost(frozenset({"a", "b"}), (("/x", "ENABLED"),)),
                JavaVirtualHost(frozenset({"c"}), (("/y", "DISABLED"),)),
            )
        }

    def test_line_ends_and_other_lines(self):
        """CRLF, CR and LF all end lines; other lines are ignored."""
        text = NODE.replace("\n", "\r") + "garbage\r\nVhost: [1:1:1], Alias: a\r\n"
        assert parse_info_as_java(text) == {"node1": (JavaVirtualHost(frozenset({"a"}), ()),)}

    def test_fields_after_name_unchecked(self):
        """Fields after Name need no colon (the Java loop stops at Name)."""
        assert parse_info_as_java("Node: [1],Name: n,garbage\n") == {"n": ()}

    def test_node_without_name_is_ignored(self):
        """A Node line without Name adds nothing (and its vhosts then fail)."""
        assert parse_info_as_java("Node: [1],Balancer: b\n") == {}

    @pytest.mark.parametrize(
        "text",
        [
            "Node: 1,Name: n\n",
            "Node: [],Name: n\n",
            "Node: [1],Balancer,Name: n\n",
            "Vhost: [1:1:1], Alias: a\n",
            NODE + "Vhost: [1:1], Alias: a\n",
            NODE + "Vhost: [1:1:1:1], Alias: a\n",
            NODE + "Vhost: [2:1:1], Alias: a\n",
            NODE + "Vhost: [1:1:1], garbage, Alias: a\n",
            NODE + "Context: [1:1:1], Context: /, Status: ENABLED\n",
            NODE + "Vhost: [1:1:1], Alias: a\nContext: [1:2:1], Context: /, Status: ENABLED\n",
            NODE + "Vhost: [1:1:1], Alias: a\nContext: [1:1:1], Context: /, Status: REMOVED\n",
            NODE + "Vhost: [1:1:1], Alias: a\nContext: [1:1:1], Context: /\n",
            NODE + "Vhost: [1:1:1], Alias: a\nContext: [1:1:1], Status: ENABLED\n",
            NODE + "Vhost: [1:1:1], Alias: a\nContext: [1:1:1], Context: /a,b, Status: ENABLED\n",
            NODE + "Vhost: [1:1:1], Alias: a\nContext: [1:1:], Context: /, Status: ENABLED\n",
        ],
    )
    def test_rejected(self, text):
        """Everything the Java parser throws on."""
        with pytest.raises(JavaInfoError):
            parse_info_as_java(text)

    def test_fixture_style_zero_based_ids(self):
        """0-based ids (httpd 2.x) work too: ids are only keys."""
        text = (
            "Node: [0],Name: node1,Balancer: mycluster\n"
            "Vhost: [0:1:0], Alias: localhost\n"
            "Context: [0:1:0], Context: /ngx, Status: ENABLED\n"
        )
        assert parse_info_as_java(text.encode()) == {
            "node1": (JavaVirtualHost(frozenset({"localhost"}), (("/ngx", "ENABLED"),)),)
        }


# A model a registry could hold: node name -> [(aliases, {path: status})].
_NAME = st.text("abcdefghijklmnopqrstuvwxyz0123456789-.:_", min_size=1, max_size=40)
_ALIAS = st.text("abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=30)
_PATH = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._/~", max_size=20).map(lambda p: "/" + p)
_STATUS = st.sampled_from(["ENABLED", "DISABLED", "STOPPED"])
_VHOST = st.tuples(
    st.frozensets(_ALIAS, min_size=1, max_size=4),
    st.dictionaries(_PATH, _STATUS, min_size=1, max_size=4),
)
_MODEL = st.dictionaries(_NAME, st.lists(_VHOST, max_size=3), max_size=5)


@given(_MODEL, st.integers(0, 1))
def test_every_info_we_emit_is_read_back(model, first_id):
    """
    Any registry content printed by L{format_info} is accepted by the Java
    parser and read back as the same nodes, vhost alias sets and context
    states (ids 1-based or 0-based).
    """
    nodes, vhosts, contexts = [], [], []
    alias_id = context_id = first_id
    for node_id, (name, node_vhosts) in enumerate(model.items(), start=first_id):
        nodes.append(InfoNode(node_id, name, "mycluster", "", "h", 8009, "ajp"))
        for vhost_id, (aliases, paths) in enumerate(node_vhosts, start=1):
            for alias in sorted(aliases):
                vhosts.append(InfoVhost(node_id, vhost_id, alias_id, alias))
                alias_id += 1
            for path, status in paths.items():
                contexts.append(InfoContext(node_id, vhost_id, context_id, path, status))
                context_id += 1
    parsed = parse_info_as_java(format_info(nodes, vhosts, contexts, xml=False))
    assert parsed == {
        name: tuple(JavaVirtualHost(aliases, tuple(paths.items())) for aliases, paths in node_vhosts)
        for name, node_vhosts in model.items()
    }
