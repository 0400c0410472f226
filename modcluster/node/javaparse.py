# -*- test-case-name: tests.unit.node.test_javaparse -*-
"""
The Java mod_cluster listener's view of our replies, re-implemented.

A stock Tomcat/WildFly node parses three of our reply bodies
(C{DefaultMCMPResponseParser}): INFO (to resynchronise after an error), the
STOP-APP reply (C{Requests}, to drain sessions) and the PING reply
(C{State}).  These functions follow the Java rules exactly, including where
the Java parser throws, so tests can check that everything we emit is
accepted and read back as intended.  The node agent (L{modcluster.node.agent},
L{modcluster.node.reset}) reads the proxy's replies with them at run time.

Java details that matter: C{String.split} drops trailing empty strings,
C{String.trim} strips every character up to U+0020, C{Integer.parseInt}
accepts an optional sign and decimal digits within the C{int} range.
"""

from __future__ import annotations

import re
from typing import Optional, Union

from attrs import frozen

__all__ = [
    "JAVA_STATUSES",
    "JavaInfoError",
    "JavaVirtualHost",
    "java_parse_int",
    "java_split",
    "java_trim",
    "parse_info_as_java",
    "parse_ping_state",
    "parse_stop_app_requests",
]

#: C{ResetRequestSource.Status} values (C{Status.valueOf} throws on others).
JAVA_STATUSES = frozenset({"ENABLED", "DISABLED", "STOPPED"})


class JavaInfoError(ValueError):
    """The Java INFO parser would throw (C{IllegalArgumentException})."""


@frozen
class JavaVirtualHost:
    """
    One virtual host as the Java node rebuilds it from INFO.

    @ivar aliases: the alias set.
    @ivar contexts: C{((path, status), ...)} in first-seen order; a repeated
        path keeps its last status (Java C{Map.put}).
    """

    aliases: frozenset[str]
    contexts: tuple[tuple[str, str], ...]

    @property
    def context_map(self) -> dict[str, str]:
        """C{{path: status}}."""
        return dict(self.contexts)


def java_split(text: str, sep: str) -> list[str]:
    """
    C{String.split(sep)} for a one-character literal separator: no match
    gives C{[text]}; otherwise trailing empty strings are removed (a leading
    empty string is kept).
    """
    if sep not in text:
        return [text]
    parts = text.split(sep)
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def java_trim(text: str) -> str:
    """C{String.trim()}: strip characters <= U+0020 at both ends."""
    start, end = 0, len(text)
    while start < end and text[start] <= " ":
        start += 1
    while end > start and text[end - 1] <= " ":
        end -= 1
    return text[start:end]


_JAVA_INT = re.compile(r"[+-]?\d+")


def java_parse_int(text: str) -> Optional[int]:
    """C{Integer.parseInt}: the value, or C{None} where Java throws."""
    if _JAVA_INT.fullmatch(text) is None:
        return None
    value = int(text)
    if not -(2**31) <= value <= 2**31 - 1:
        return None
    return value


def _decode(body: Union[bytes, str, None]) -> Optional[str]:
    if body is None:
        return None
    if isinstance(body, str):
        return body
    return bytes(body).decode("utf-8", "replace")


def _parse_ids(entry: str) -> list[str]:
    start = entry.find("[") + 1
    end = entry.find("]")
    if start >= end:
        raise JavaInfoError(entry)
    ids = entry[start:end]
    return java_split(ids, ":") if len(ids) > 2 else [ids]


def _key_value(entry: str) -> tuple[str, str]:
    index = entry.find(":")
    if index < 0:
        raise JavaInfoError(entry)
    return java_trim(entry[:index]), java_trim(entry[index + 1 :])


_LINES = re.compile(r"\r\n|\r|\n")


def parse_info_as_java(text: Union[bytes, str]) -> dict[str, tuple[JavaVirtualHost, ...]]:
    """
    Parse an INFO body exactly as C{DefaultMCMPResponseParser.parseInfoResponse}.

    Lines are split on CRLF, CR or LF; only lines starting with C{Node:},
    C{Vhost:}, C{Context:} count.  A C{Node:} line maps its id (inside the
    first C{[...]}) to its C{Name}; every field before C{Name} needs a C{:}.
    A C{Vhost:} line needs 3 ids and a known node; its C{Alias} joins vhost
    C{b} of that node.  A C{Context:} line needs 3 ids, a known node, an
    existing vhost, fields C{Context} and C{Status} (ENABLED, DISABLED or
    STOPPED), and every field needs a C{:}.

    @return: C{{jvm_route: (JavaVirtualHost, ...)}} (vhosts in first-seen
        order); a node without vhosts maps to C{()}.
    @raise JavaInfoError: wherever the Java parser throws.
    """
    decoded = _decode(text) or ""
    node_names: dict[str, str] = {}
    # route -> vhost id -> [aliases set, contexts dict]
    hosts: dict[str, dict[str, tuple[set[str], dict[str, str]]]] = {}
    for line in _LINES.split(decoded):
        if line.startswith("Node:"):
            entries = java_split(line, ",")
            node_id = _parse_ids(entries[0])[0]
            for entry in entries[1:]:
                key, value = _key_value(entry)
                if key == "Name":
                    node_names[node_id] = value
                    hosts[value] = {}
                    break
        elif line.startswith("Vhost:"):
            entries = java_split(line, ",")
            ids = _parse_ids(entries[0])
            if len(ids) != 3:
                raise JavaInfoError(line)
            node = node_names.get(ids[0])
            if node is None:
                raise JavaInfoError(line)
            host = hosts[node].setdefault(ids[1], (set(), {}))
            for entry in entries[1:]:
                key, value = _key_value(entry)
                if key == "Alias":
                    host[0].add(value)
                    break
        elif line.startswith("Context:"):
            entries = java_split(line, ",")
            ids = _parse_ids(entries[0])
            if len(ids) != 3:
                raise JavaInfoError(line)
            node = node_names.get(ids[0])
            if node is None:
                raise JavaInfoError(line)
            vhost = hosts[node].get(ids[1])
            if vhost is None:
                raise JavaInfoError(line)
            context: Optional[str] = None
            status: Optional[str] = None
            for entry in entries[1:]:
                key, value = _key_value(entry)
                if key == "Context":
                    context = value
                elif key == "Status":
                    if value not in JAVA_STATUSES:
                        raise JavaInfoError(line)
                    status = value
            if context is None or status is None:
                raise JavaInfoError(line)
            vhost[1][context] = status
    return {
        route: tuple(
            JavaVirtualHost(aliases=frozenset(aliases), contexts=tuple(contexts.items()))
            for aliases, contexts in vhosts.values()
        )
        for route, vhosts in hosts.items()
    }


def _find_property(name: str, body: Union[bytes, str, None]) -> Optional[str]:
    response = _decode(body)
    if response is None:
        return None
    for piece in java_split(java_trim(response), "&"):
        pair = java_split(piece, "=")
        if len(pair) == 2 and pair[0] == name:
            return pair[1]
    return None


def parse_stop_app_requests(body: Union[bytes, str, None]) -> int:
    """
    C{parseStopAppResponse}: the C{Requests} value of an C{&}-separated
    reply; 0 when missing or not an C{int}.
    """
    value = _find_property("Requests", body)
    if value is None:
        return 0
    number = java_parse_int(value)
    return 0 if number is None else number


def parse_ping_state(body: Union[bytes, str, None]) -> bool:
    """C{parsePingResponse}: C{State} is exactly C{OK}."""
    return _find_property("State", body) == "OK"
