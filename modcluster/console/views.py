"""
Plain, immutable views of the registry for display (console) and export (JSON
API): which state a node is in, its numbers, its virtual hosts and contexts.

Pure functions of the registry's current contents; nothing here keeps a
reference to live records, so a view can be rendered after the registry moved on.
"""

from __future__ import annotations

import enum
from typing import Optional

from attrs import frozen

__all__ = [
    "ContextView",
    "DomainGroup",
    "NodeState",
    "NodeView",
    "VHostView",
    "domain_groups",
    "node_state",
    "node_view",
    "node_views",
]


class NodeState(enum.Enum):
    """
    What an operator needs to know about a node, most important first: a node
    being removed is shown as such even if it was also in error.
    The value is the stable name used by the JSON API and CSS classes.
    """

    REMOVING = "removing"
    IN_ERROR = "in_error"
    UNVERIFIED = "unverified"
    HOT_STANDBY = "hot_standby"
    OK = "ok"

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    NodeState.REMOVING: "Removing",
    NodeState.IN_ERROR: "In error",
    NodeState.UNVERIFIED: "Unverified",
    NodeState.HOT_STANDBY: "Hot standby",
    NodeState.OK: "OK",
}


def node_state(node) -> tuple[NodeState, str]:
    """
    The display state of a registry node and a reason (empty unless in error).

    Precedence: removing, in error, unverified (restored from saved state and not
    heard from since), hot standby (Load=0), OK.
    """
    rt = node.rt
    if rt.removed:
        return NodeState.REMOVING, ""
    if rt.in_error:
        return NodeState.IN_ERROR, rt.error_reason or "no reason recorded"
    if rt.unverified:
        return NodeState.UNVERIFIED, ""
    if rt.lbfactor == 0:
        return NodeState.HOT_STANDBY, ""
    return NodeState.OK, ""


@frozen
class ContextView:
    """One context record of a node's virtual host."""

    id: int
    path: str
    status: str
    in_flight: int
    requests: int


@frozen
class VHostView:
    """
    A virtual host of a node.  C{alias} is the first alias (the one console
    commands name, as mod_cluster's links do); empty if the vhost has none.
    """

    id: int
    aliases: tuple[str, ...]
    contexts: tuple[ContextView, ...]

    @property
    def alias(self) -> str:
        return self.aliases[0] if self.aliases else ""


@frozen
class NodeView:
    """Everything shown about one node."""

    id: int
    route: str
    balancer: str
    domain: str
    type: str
    host: str
    port: int
    address: str
    reversed: bool
    flushpackets: str
    flushwait_ms: int
    ping: float
    smax: int
    ttl: float
    timeout: float
    state: NodeState
    reason: str
    load: int
    elected: int
    read: int
    transferred: int
    busy: int
    requests: int
    failures: int
    registered_at: float
    removed_at: Optional[float]
    error_since: Optional[float]
    last_status: Optional[float]
    vhosts: tuple[VHostView, ...]

    @property
    def in_flight(self) -> int:
        """Requests in flight on this node's contexts."""
        return sum(c.in_flight for v in self.vhosts for c in v.contexts)


def node_view(registry, node) -> NodeView:
    """A L{NodeView} of one registry node."""
    s, rt = node.settings, node.rt
    state, reason = node_state(node)
    vhosts: dict[int, tuple] = {}
    for vhost in sorted(node.vhosts.values(), key=lambda v: v.id):
        vhosts[vhost.id] = (tuple(vhost.aliases), [])
    for vhost, ctx in registry.contexts_of(node):
        vhosts[vhost.id][1].append(ContextView(
            id=ctx.id, path=ctx.path, status=ctx.state.name,
            in_flight=ctx.rt.in_flight, requests=ctx.rt.requests))
    return NodeView(
        id=node.id, route=s.route, balancer=s.balancer, domain=s.domain, type=s.type,
        host=s.host, port=s.port, address=s.worker_name, reversed=s.reversed,
        flushpackets=s.flushpackets, flushwait_ms=s.flushwait_ms, ping=s.ping,
        smax=s.smax, ttl=s.ttl, timeout=s.timeout, state=state, reason=reason,
        load=rt.lbfactor, elected=rt.elected, read=rt.read, transferred=rt.transferred,
        busy=rt.busy, requests=rt.requests, failures=rt.failures,
        registered_at=node.registered_at,
        removed_at=node.removed_at if rt.removed else None,
        error_since=rt.error_since if rt.in_error else None,
        last_status=rt.last_status or None,
        vhosts=tuple(VHostView(id=i, aliases=a, contexts=tuple(c))
                     for i, (a, c) in vhosts.items()),
    )


def node_views(registry) -> list[NodeView]:
    """Views of all nodes (removed ones until purged), in id order."""
    return [node_view(registry, n) for n in registry.nodes()]


@frozen
class DomainGroup:
    """The nodes of one domain (LBGroup); C{domain} is empty for nodes without one."""

    domain: str
    nodes: tuple[NodeView, ...]


def domain_groups(registry) -> list[DomainGroup]:
    """
    Nodes grouped by domain, sorted by domain name (nodes without a domain
    first, as mod_cluster-manager sorts them), id order inside a group.
    """
    groups: dict[str, list[NodeView]] = {}
    for view in node_views(registry):
        groups.setdefault(view.domain, []).append(view)
    return [DomainGroup(d, tuple(groups[d])) for d in sorted(groups)]
