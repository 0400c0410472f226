# -*- test-case-name: tests.unit.mcmp.test_wire -*-
"""
MCMP reply bodies: STATUS-RSP, PING-RSP, STOP-APP-RSP, VERSION, INFO and DUMP,
as bytes (the error headers are L{modcluster.mcmp.errors.error_headers}).

Pure functions only: no I/O, no clock, no registry, no logging.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Optional, Union

import attrs
from attrs import field, frozen

from modcluster.mcmp.names import (
    CONTEXT_STATUSES,
    DEFAULT_RELEASE,
    FLUSHPACKETS_VALUES,
    PROTOCOL_VERSION,
)

__all__ = [
    "DumpBalancer",
    "InfoContext",
    "InfoNode",
    "InfoVhost",
    "format_dump",
    "format_info",
    "format_ping_rsp",
    "format_status_rsp",
    "format_stop_app_rsp",
    "format_version",
]

_CONTROL = re.compile("[\x00-\x1f\x7f]")


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
