"""
twisted.web.template elements of the console.

The page is one XML template (C{templates/page.xml}); the repeated parts (domain
groups, nodes, virtual hosts, context rows) are rendered by nested elements
loaded from clones of the template's own tags (L{TagLoader}), so all markup stays
in the template and every value is escaped by the flattener.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence
from urllib.parse import quote

from attrs import field, frozen
from twisted.python.filepath import FilePath
from twisted.web.template import Element, TagLoader, XMLFile, renderer

from modcluster.cluster.model import BalancerSettings
from modcluster.console.views import DomainGroup, NodeState, NodeView, VHostView

__all__ = ["ConsolePage", "ErrorPage", "PageData", "TEMPLATES"]

TEMPLATES = FilePath(__file__).sibling("templates")


def _yes(flag: bool) -> str:
    return "Yes" if flag else "No"


def _size(n: int) -> str:
    """Bytes in a short human form (exact value goes in the tooltip)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{int(seconds)} s"
    if seconds < 7200:
        return f"{int(seconds // 60)} min"
    if seconds < 172800:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@frozen
class PageData:
    """
    Everything the page shows, collected by the resource before rendering.

    @ivar base: URL path of the console (links and form actions).
    @ivar nonce: value of the hidden C{nonce} field of the command forms.
    @ivar link_nonce: nonce put in the query-string links (empty when
        check_nonce is off).
    @ivar refresh: auto-refresh period in seconds, or C{None}.
    @ivar sessions: session id → route, or C{None} when sessions are not shown.
    @ivar now: current time (for ages), or C{None} when no clock was given.
    """

    release: str
    product: str
    base: str
    stylesheet: str
    nonce: str
    link_nonce: str
    allow_cmd: bool
    reduce: bool
    refresh: Optional[int]
    groups: Sequence[DomainGroup]
    balancers: Sequence[BalancerSettings]
    counts: dict
    show_outputs: bool
    config_items: Optional[Sequence[tuple[str, str]]] = None
    sessions: Optional[Sequence[tuple[str, str]]] = None
    now: Optional[float] = None
    wait_before_remove: float = 10.0
    api_link: Optional[str] = None
    metrics_link: Optional[str] = None
    session_counts: dict = field(factory=dict)

    def link(self, **params: str) -> str:
        """A console URL with C{nonce} first (when enabled) then C{params}."""
        items = ([("nonce", self.link_nonce)] if self.link_nonce else []) + list(params.items())
        if not items:
            return self.base
        return self.base + "?" + "&".join(f"{k}={quote(v, safe='/-._~')}" for k, v in items)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class _Shared(Element):
    """Renderers every nested part of the page needs."""

    def __init__(self, loader, data: PageData) -> None:
        super().__init__(loader)
        self.data = data

    @renderer
    def refreshField(self, request, tag):
        return tag if self.data.refresh else ""

    @renderer
    def ifCommands(self, request, tag):
        return tag if self.data.allow_cmd else ""


class ConsolePage(_Shared):
    """The whole console page."""

    loader = XMLFile(TEMPLATES.child("page.xml"))

    def __init__(self, data: PageData) -> None:
        super().__init__(self.loader, data)

    @renderer
    def page(self, request, tag):
        d = self.data
        counts = d.counts
        classes = ["console", "reduced"] if d.reduce else ["console"]
        return tag.fillSlots(
            release=d.release,
            product=d.product,
            nodeCount=_plural(counts.get("nodes", 0), "node"),
            contextCount=_plural(counts.get("contexts", 0), "context"),
            balancerCount=_plural(counts.get("balancers", 0), "balancer"),
            stylesheet=d.stylesheet,
            bodyClass=" ".join(classes),
            pageLink=d.base,
            autoRefreshLink=d.link(refresh="10"),
            refresh=str(d.refresh or ""),
            action=d.base,
            nonce=d.nonce,
        )

    @renderer
    def ifRefreshing(self, request, tag):
        return tag if self.data.refresh else ""

    @renderer
    def unlessRefreshing(self, request, tag):
        return "" if self.data.refresh else tag

    @renderer
    def outputLinks(self, request, tag):
        if not self.data.show_outputs:
            return ""
        return tag.fillSlots(dumpLink=self.data.link(Cmd="DUMP", Range="ALL"),
                             infoLink=self.data.link(Cmd="INFO", Range="ALL"))

    @renderer
    def unlessCommands(self, request, tag):
        return "" if self.data.allow_cmd else tag

    @renderer
    def configuration(self, request, tag):
        return "" if self.data.config_items is None else tag

    @renderer
    def configItems(self, request, tag):
        for label, value in self.data.config_items or ():
            yield tag.clone().fillSlots(label=label, value=value)

    @renderer
    def balancers(self, request, tag):
        return "" if self.data.reduce or not self.data.balancers else tag

    @renderer
    def balancerRows(self, request, tag):
        members: dict[str, list[str]] = {}
        for group in self.data.groups:
            for node in group.nodes:
                members.setdefault(node.balancer, []).append(node.route)
        for b in self.data.balancers:
            yield tag.clone().fillSlots(
                name=b.name, sticky=_yes(b.sticky_session), cookie=b.sticky_cookie,
                path=b.sticky_path, remove=_yes(b.sticky_remove), force=_yes(b.sticky_force),
                timeout=f"{_number(b.wait_worker)} s", maxAttempts=str(b.max_attempts),
                nodes=", ".join(members.get(b.name, ())) or "–")

    @renderer
    def unlessNodes(self, request, tag):
        return "" if any(g.nodes for g in self.data.groups) else tag

    @renderer
    def domains(self, request, tag):
        for group in self.data.groups:
            yield _DomainElement(TagLoader(tag.clone()), self.data, group)

    @renderer
    def sessions(self, request, tag):
        return "" if self.data.sessions is None else tag

    @renderer
    def sessionRows(self, request, tag):
        for sid, route in self.data.sessions or ():
            yield tag.clone().fillSlots(id=sid, route=route)

    @renderer
    def apiLink(self, request, tag):
        return "" if self.data.api_link is None else tag.fillSlots(href=self.data.api_link)

    @renderer
    def metricsLink(self, request, tag):
        if self.data.metrics_link is None:
            return ""
        return tag.fillSlots(href=self.data.metrics_link)


class _DomainElement(_Shared):
    """One LBGroup (domain) and its nodes."""

    def __init__(self, loader, data: PageData, group: DomainGroup) -> None:
        super().__init__(loader, data)
        self.group = group

    @renderer
    def domainHeader(self, request, tag):
        # mod_cluster-manager prints no LBGroup header for nodes without a domain.
        return tag.fillSlots(domain=self.group.domain) if self.group.domain else ""

    @renderer
    def domainCommands(self, request, tag):
        live = any(n.state is not NodeState.REMOVING for n in self.group.nodes)
        return tag if self.data.allow_cmd and live else ""

    @renderer
    def nodes(self, request, tag):
        for node in self.group.nodes:
            article = tag.clone().fillSlots(
                anchor=f"node-{node.id}", state=node.state.value.replace("_", "-"),
                route=node.route, address=node.address, stateLabel=node.state.label)
            yield _NodeElement(TagLoader(article), self.data, node)


class _NodeElement(_Shared):
    """One node: title, state, commands, statistics, virtual hosts."""

    def __init__(self, loader, data: PageData, node: NodeView) -> None:
        super().__init__(loader, data)
        self.node = node

    @renderer
    def reason(self, request, tag):
        node, now = self.node, self.data.now
        if node.state is NodeState.IN_ERROR:
            text = node.reason
            if now is not None and node.error_since is not None:
                text += f" (for {_duration(now - node.error_since)})"
            return tag.fillSlots(reason=text)
        if node.state is NodeState.REMOVING:
            text = "removal pending"
            if now is not None and node.removed_at is not None:
                left = node.removed_at + self.data.wait_before_remove - now
                text += f", purged in about {_duration(left)}" if left > 0 else ", purging"
            return tag.fillSlots(reason=text)
        if node.state is NodeState.UNVERIFIED:
            return tag.fillSlots(reason="restored from saved state, no STATUS since")
        return ""

    @renderer
    def nodeCommands(self, request, tag):
        if not self.data.allow_cmd or self.node.state is NodeState.REMOVING:
            return ""
        return tag

    @renderer
    def stats(self, request, tag):
        return "" if self.data.reduce else tag

    def _stat_items(self) -> Iterable[tuple[str, str, str]]:
        n = self.node
        yield "Load", str(n.load), "Load factor from the last STATUS (-1: none yet or in error)"
        yield "Elected", str(n.elected), "Times chosen by the balancer"
        yield "Read", _size(n.read), f"{n.read} bytes read from the node"
        yield ("Transferred", _size(n.transferred),
               f"{n.transferred} bytes sent to the node")
        yield "Connected", str(n.busy), "Requests in flight on the node (busy)"
        yield "Requests", str(n.requests), "Requests forwarded in total"
        yield "Failures", str(n.failures), "Forwarding failures in total"
        if n.route in self.data.session_counts:
            yield "Num sessions", str(self.data.session_counts[n.route]), "Tracked sessions"

    def _meta_items(self) -> Iterable[tuple[str, str]]:
        n, now = self.node, self.data.now
        yield "Balancer", n.balancer
        yield "LBGroup", n.domain or "–"
        yield "Flushpackets", n.flushpackets
        yield "Flushwait", f"{n.flushwait_ms} ms"
        yield "Ping", f"{_number(n.ping)} s"
        yield "Smax", str(n.smax)
        yield "Ttl", f"{_number(n.ttl)} s"
        yield "Timeout", f"{_number(n.timeout)} s"
        if now is not None:
            yield "Registered", f"{_duration(now - n.registered_at)} ago"
            if n.last_status is not None:
                yield "Last STATUS", f"{_duration(now - n.last_status)} ago"

    @renderer
    def statItems(self, request, tag):
        for label, value, hint in self._stat_items():
            yield tag.clone().fillSlots(label=label, value=value, hint=hint)

    @renderer
    def metaItems(self, request, tag):
        for label, value in self._meta_items():
            yield tag.clone().fillSlots(label=label, value=value)

    @renderer
    def unlessVhosts(self, request, tag):
        return "" if self.node.vhosts else tag

    @renderer
    def vhosts(self, request, tag):
        for vhost in self.node.vhosts:
            part = tag.clone().fillSlots(vhostId=str(vhost.id))
            yield _VHostElement(TagLoader(part), self.data, self.node, vhost)


class _VHostElement(_Shared):
    """A virtual host: its aliases and its contexts."""

    def __init__(self, loader, data: PageData, node: NodeView, vhost: VHostView) -> None:
        super().__init__(loader, data)
        self.node = node
        self.vhost = vhost

    @renderer
    def aliases(self, request, tag):
        for alias in self.vhost.aliases:
            yield tag.clone().fillSlots(alias=alias)

    @renderer
    def contexts(self, request, tag):
        for ctx in self.vhost.contexts:
            row = tag.clone().fillSlots(
                path=ctx.path, status=ctx.status, statusClass=ctx.status.lower(),
                inFlight=str(ctx.in_flight), requests=str(ctx.requests),
                route=self.node.route, alias=self.vhost.alias)
            yield _ContextElement(TagLoader(row), self.data, self.node, self.vhost,
                                  ctx.status)


class _ContextElement(_Shared):
    """One context row with its state-dependent command buttons."""

    def __init__(self, loader, data: PageData, node: NodeView, vhost: VHostView,
                 status: str) -> None:
        super().__init__(loader, data)
        self.node = node
        self.vhost = vhost
        self.status = status

    @renderer
    def contextCommands(self, request, tag):
        # A vhost without alias cannot be named by a command; a removed node has
        # no contexts left to change.
        if not self.vhost.alias or self.node.state is NodeState.REMOVING:
            return ""
        return tag

    def _unless(self, status: str, tag):
        return "" if self.status == status else tag

    @renderer
    def unlessEnabled(self, request, tag):
        return self._unless("ENABLED", tag)

    @renderer
    def unlessDisabled(self, request, tag):
        return self._unless("DISABLED", tag)

    @renderer
    def unlessStopped(self, request, tag):
        return self._unless("STOPPED", tag)


class ErrorPage(Element):
    """A command that failed or was refused."""

    loader = XMLFile(TEMPLATES.child("error.xml"))

    def __init__(self, code: int, title: str, message: str, back: str, stylesheet: str,
                 release: str) -> None:
        super().__init__()
        self.code = code
        self.title = title
        self.message = message
        self.back = back
        self.stylesheet = stylesheet
        self.release = release

    @renderer
    def page(self, request, tag):
        return tag.fillSlots(code=str(self.code), title=self.title, message=self.message,
                             back=self.back, stylesheet=self.stylesheet,
                             release=self.release)
