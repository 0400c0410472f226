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
    "FILTER_FIELDS",
    "IndexEntry",
    "NodeFilter",
    "NodeIndex",
    "Summary",
    "NodeState",
    "NodeView",
    "VHostView",
    "domain_groups",
    "node_state",
    "node_view",
    "node_views",
    "summarize",
]


class NodeState(enum.Enum):
    """
    What an operator needs to know about a node, most important first: a node
    being removed is shown as such even if it was also in error.
    The value is the stable name used by the JSON API and CSS classes.
    """

    REMOVING = "removing"
    IN_ERROR = "in_error"
    EJECTED = "ejected"
    UNVERIFIED = "unverified"
    HOT_STANDBY = "hot_standby"
    OK = "ok"

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    NodeState.REMOVING: "Removing",
    NodeState.IN_ERROR: "In error",
    NodeState.EJECTED: "Ejected",
    NodeState.UNVERIFIED: "Unverified",
    NodeState.HOT_STANDBY: "Hot standby",
    NodeState.OK: "OK",
}


def node_state(node, now: Optional[float] = None) -> tuple[NodeState, str]:
    """
    The display state of a registry node and a reason (empty unless in error).

    Precedence: removing, in error, ejected by passive health (only with
    C{now}), unverified (restored from saved state and not heard from since),
    hot standby (Load=0), OK.
    """
    rt = node.rt
    if rt.removed:
        return NodeState.REMOVING, ""
    if rt.in_error:
        return NodeState.IN_ERROR, rt.error_reason or "no reason recorded"
    if now is not None and rt.ejected_until > now:
        return NodeState.EJECTED, "consecutive failures (passive health)"
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
    #: passive health: end of the current ejection (None: not ejected), times
    #: ejected, consecutive failures now
    ejected_until: Optional[float] = None
    ejections: int = 0
    consecutive_failures: int = 0
    #: slow start: the share of its full weight the node gets now (1.0: full)
    share: float = 1.0

    @property
    def in_flight(self) -> int:
        """Requests in flight on this node's contexts."""
        return sum(c.in_flight for v in self.vhosts for c in v.contexts)


def node_view(registry, node) -> NodeView:
    """A L{NodeView} of one registry node."""
    s, rt = node.settings, node.rt
    now = registry.seconds()
    state, reason = node_state(node, now)
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
        ejected_until=rt.ejected_until if rt.ejected_until > now else None,
        ejections=rt.ejections,
        consecutive_failures=rt.fails,
        share=registry.slow_start_share(rt, now),
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


# -- the console's read model at scale ------------------------------------------------
#
# The page of a 1 000-node cluster must not cost what all 1 000 nodes cost: a
# L{NodeIndex} is built once per registry structure version (the routing table's
# generation, which changes with every node, alias, context or context-state
# change) and holds what filtering and summarising need, so a request only
# computes node states (one attribute read each) and builds full L{NodeView}s for
# the nodes it actually shows.

#: Fields a filter can search in (C{any}: all of them).
FILTER_FIELDS = ("any", "route", "host", "domain", "alias", "context")

#: Filter values of C{state} beyond the L{NodeState} values.
DRAINING = "draining"
ATTENTION = "attention"


@frozen
class IndexEntry:
    """
    One node as the index knows it.  C{node} is the live registry record, read
    only for its changing numbers (state, load); everything else was copied when
    the index was built.
    """

    node: object
    id: int
    route: str
    domain: str
    balancer: str
    #: lower-cased text per filter field (aliases and contexts one per line)
    text: dict
    #: context count per status name (ENABLED, DISABLED, STOPPED)
    contexts: dict
    aliases: tuple[str, ...]

    @property
    def draining(self) -> bool:
        """Some context takes no new requests (DISABLED or STOPPED)."""
        return bool(self.contexts.get("DISABLED") or self.contexts.get("STOPPED"))


@frozen
class NodeIndex:
    """All nodes in display order (domain, then id) for one structure version."""

    version: int
    entries: tuple[IndexEntry, ...]
    by_route: dict
    #: context count per status over the whole registry
    contexts: dict

    @classmethod
    def build(cls, registry, version: int) -> "NodeIndex":
        entries = []
        totals = {"ENABLED": 0, "DISABLED": 0, "STOPPED": 0}
        for node in registry.nodes():
            s = node.settings
            aliases: list[str] = []
            paths: list[str] = []
            counts = {"ENABLED": 0, "DISABLED": 0, "STOPPED": 0}
            for vhost in sorted(node.vhosts.values(), key=lambda v: v.id):
                aliases.extend(vhost.aliases)
                for ctx in vhost.contexts.values():
                    paths.append(ctx.path)
                    name = ctx.state.name
                    counts[name] = counts.get(name, 0) + 1
                    totals[name] = totals.get(name, 0) + 1
            text = {"route": s.route.lower(), "host": s.host.lower(),
                    "domain": s.domain.lower(), "alias": "\n".join(aliases).lower(),
                    "context": "\n".join(paths).lower()}
            text["any"] = "\n".join(text.values())
            entries.append(IndexEntry(node=node, id=node.id, route=s.route, domain=s.domain,
                                      balancer=s.balancer, text=text, contexts=counts,
                                      aliases=tuple(aliases)))
        entries.sort(key=lambda e: (e.domain, e.id))
        return cls(version=version, entries=tuple(entries),
                   by_route={e.route: e for e in entries}, contexts=totals)


@frozen
class NodeFilter:
    """
    Which nodes to list: C{query} (case-insensitive substring, in C{field}),
    C{state} (a L{NodeState} value, C{draining} or C{attention}: in error,
    removing or draining), C{balancer} and C{domain} (exact; C{None}: any).
    """

    query: str = ""
    field: str = "any"
    state: str = ""
    balancer: Optional[str] = None
    domain: Optional[str] = None

    @property
    def active(self) -> bool:
        return bool(self.query or self.state or self.balancer is not None
                    or self.domain is not None)

    def matches(self, entry: IndexEntry, state: NodeState) -> bool:
        if self.balancer is not None and entry.balancer != self.balancer:
            return False
        if self.domain is not None and entry.domain != self.domain:
            return False
        if self.state:
            if self.state == DRAINING:
                if not entry.draining or state is NodeState.REMOVING:
                    return False
            elif self.state == ATTENTION:
                if not needs_attention(entry, state):
                    return False
            elif state.value != self.state:
                return False
        if self.query and self.query.lower() not in entry.text[self.field]:
            return False
        return True

    def select(self, index: NodeIndex,
               now: Optional[float] = None) -> list[tuple[IndexEntry, NodeState]]:
        """The matching entries, in display order, with their current state
        (C{now}: ejected nodes show as such)."""
        out = []
        for entry in index.entries:
            state = node_state(entry.node, now)[0]
            if self.matches(entry, state):
                out.append((entry, state))
        return out


def needs_attention(entry: IndexEntry, state: NodeState) -> bool:
    """In error, ejected, being removed, or draining (some context disabled or
    stopped)."""
    return (state in (NodeState.IN_ERROR, NodeState.EJECTED, NodeState.REMOVING)
            or entry.draining)


@frozen
class Summary:
    """
    The cluster at a glance: node counts by state, contexts by status, domains
    (name → [nodes, live nodes, in error]) and the first nodes that need
    attention (in error, removing or draining; C{attention_total} counts all).
    """

    nodes: int
    by_state: dict
    draining: int
    contexts: dict
    domains: tuple[tuple[str, int, int, int], ...]
    attention: tuple[tuple[IndexEntry, NodeState], ...]
    attention_total: int


def summarize(index: NodeIndex, attention_limit: int = 20,
              now: Optional[float] = None) -> Summary:
    """One pass over the index: O(nodes), no per-context work (C{now}: ejected
    nodes count as such)."""
    by_state = {s: 0 for s in NodeState}
    draining = 0
    domains: dict[str, list[int]] = {}
    attention: list[tuple[IndexEntry, NodeState]] = []
    attention_total = 0
    for entry in index.entries:
        state = node_state(entry.node, now)[0]
        by_state[state] += 1
        d = domains.get(entry.domain)
        if d is None:
            d = domains[entry.domain] = [0, 0, 0]
        d[0] += 1
        if state is not NodeState.REMOVING:
            d[1] += 1
            if entry.draining:
                draining += 1
        if state is NodeState.IN_ERROR:
            d[2] += 1
        if needs_attention(entry, state):
            attention_total += 1
            if len(attention) < attention_limit:
                attention.append((entry, state))
    return Summary(nodes=len(index.entries), by_state=by_state, draining=draining,
                   contexts=dict(index.contexts),
                   domains=tuple((name, d[0], d[1], d[2])
                                 for name, d in sorted(domains.items())),
                   attention=tuple(attention), attention_total=attention_total)
