"""
twisted.web.template elements of the console.

The page is one XML template (C{templates/page.xml}); the repeated parts (domain
groups, nodes, virtual hosts, context rows) are rendered by nested elements
loaded from clones of the template's own tags (L{TagLoader}), so all markup stays
in the template and every value is escaped by the flattener.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional, Sequence
from urllib.parse import quote

from attrs import field, frozen
from twisted.python.filepath import FilePath
from twisted.web.iweb import IRequest, ITemplateLoader
from twisted.web.template import Element, Tag, TagLoader, XMLFile, renderer
from zope.interface import implementer

from modcluster.cluster.model import BalancerSettings
from modcluster.cluster.views import (
    ATTENTION,
    DRAINING,
    DomainGroup,
    NodeFilter,
    NodeState,
    NodeView,
    Summary,
    VHostView,
    node_state,
)

__all__ = ["ConsolePage", "ErrorPage", "Finder", "PageData", "TEMPLATES", "stat_items"]

TEMPLATES = FilePath(__file__).sibling("templates")


#: Containers whose whitespace-only text between child tags is layout only
#: (blocks, tables, forms, flex rows): dropped once when the template is loaded,
#: which removes about a third of what the flattener walks per node row.
_BLOCKS = frozenset({"html", "head", "body", "header", "main", "section", "article",
                     "footer", "nav", "div", "table", "thead", "tbody", "tr", "form",
                     "ul", "dl", "select", "noscript"})


def _compact(node) -> None:
    if not isinstance(node, Tag):
        return
    if node.tagName in _BLOCKS:
        node.children[:] = [c for c in node.children
                            if not (isinstance(c, str) and not c.strip() and "\n" in c)]
    for child in node.children:
        _compact(child)


@implementer(ITemplateLoader)
class _CompactLoader:
    """An C{ITemplateLoader} giving L{XMLFile}'s tags without layout whitespace."""

    def __init__(self, path: FilePath) -> None:
        self._file = XMLFile(path)
        self._tags = None

    def load(self):
        if self._tags is None:
            tags = self._file.load()
            for tag in tags:
                _compact(tag)
            self._tags = tags
        return self._tags


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


#: Filter fields offered in the node finder, with their labels.
FIELD_LABELS = (("any", "any field"), ("route", "route"), ("host", "host"),
                ("domain", "domain"), ("alias", "alias"), ("context", "context"))


def _state_choices() -> list[tuple[str, str]]:
    """(value, label) of every node state, OK first, then draining (not a state)."""
    first = [NodeState.OK, NodeState.IN_ERROR, NodeState.HOT_STANDBY, NodeState.UNVERIFIED,
             NodeState.REMOVING]
    states = first + [st for st in NodeState if st not in first]
    return [(st.value, st.label) for st in states] + [(DRAINING, "Draining")]


#: State filters offered in the node finder (derived from L{NodeState}, so a
#: state added to the read model is offered and counted without a change here).
STATE_LABELS = [("", "all"), (ATTENTION, "needs attention")] + _state_choices()
#: Aliases shown in a node row (the rest are counted).
ROW_ALIASES = 3
#: Member routes listed in the balancer table (more are counted).
BALANCER_ROUTES = 10


@frozen
class Finder:
    """
    The node list's filter and paging: C{total} nodes match C{filter}; this is
    page C{page} (1-based) of C{pages}, C{size} nodes a page, starting at
    C{first} (0-based).
    """

    filter: NodeFilter
    total: int
    page: int
    pages: int
    size: int
    first: int
    shown: int
    cluster_nodes: int


@frozen
class PageData:
    """
    Everything the page shows, collected by the resource before rendering.
    Only the nodes in C{groups} are rendered in full; everything else comes
    from the bounded L{Summary}.

    @ivar base: URL path of the console (links and form actions).
    @ivar nonce: value of the hidden C{nonce} field of the command forms.
    @ivar link_nonce: nonce put in the query-string links (empty when
        check_nonce is off).
    @ivar refresh: auto-refresh period in seconds, or C{None}.
    @ivar groups: the nodes shown on this page, by domain.
    @ivar cards: show full node cards (contexts and all) instead of one row per node.
    @ivar summary: the cluster overview (C{None} on a node's detail view).
    @ivar detail: the route of the node shown by the detail view, else C{None}.
    @ivar finder: filter and paging of the node list (C{None}: no finder).
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
    cards: bool = True
    summary: Optional[Summary] = None
    detail: Optional[str] = None
    finder: Optional[Finder] = None
    members: dict = field(factory=dict)
    sessions_more: int = 0
    script: str = ""
    update_link: str = ""
    structure: str = ""
    empty_message: str = "No node is registered."
    domain_limit: int = 50

    def link(self, **params: str) -> str:
        """A console URL with C{nonce} first (when enabled) then C{params}."""
        items = ([("nonce", self.link_nonce)] if self.link_nonce else []) + list(params.items())
        return _url(self.base, items)

    def href(self, **params) -> str:
        """A read-only console URL (no nonce); keeps the auto-refresh period."""
        items = [(k, str(v)) for k, v in params.items() if v not in (None, "")]
        if self.refresh:
            items.append(("refresh", str(self.refresh)))
        return _url(self.base, items)

    def detail_link(self, route: str) -> str:
        return self.href(JVMRoute=route)


def _url(base: str, items) -> str:
    if not items:
        return base
    return base + "?" + "&".join(f"{k}={quote(v, safe='/-._~')}" for k, v in items)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _contexts_text(counts: dict) -> list[tuple[str, int]]:
    return [(status, counts[status]) for status in ("ENABLED", "DISABLED", "STOPPED")
            if counts.get(status)]


class _Shared(Element):
    """
    Renderers every nested part of the page needs.

    Every slot a repeated part uses is filled on that part's own tag: the
    twisted.web.template flattener keeps a stack of slot frames that only grows
    while a page is flattened (twisted/twisted#9383), so a slot filled once at
    the top of the page and read in every row costs a scan of everything
    rendered so far -- quadratic in the size of the page.
    """

    def __init__(self, loader, data: PageData) -> None:
        super().__init__(loader)
        self.data = data

    def _form(self, tag):
        return tag.fillSlots(action=self.data.base, nonce=self.data.nonce)

    @renderer
    def refreshField(self, request, tag):
        return tag.fillSlots(refresh=str(self.data.refresh)) if self.data.refresh else ""

    @renderer
    def ifCommands(self, request, tag):
        return tag if self.data.allow_cmd else ""


class ConsolePage(_Shared):
    """The whole console page: overview, node finder, a page of nodes (or one node)."""

    loader = _CompactLoader(TEMPLATES.child("page.xml"))

    def __init__(self, data: PageData) -> None:
        super().__init__(self.loader, data)

    @renderer
    def page(self, request, tag):
        d = self.data
        counts = d.counts
        classes = ["console", "reduced"] if d.reduce else ["console"]
        if d.detail is not None:
            classes.append("detail")
        ids = ",".join(str(n.id) for g in d.groups for n in g.nodes)
        return tag.fillSlots(
            release=d.release,
            product=d.product,
            nodeCount=_plural(counts.get("nodes", 0), "node"),
            contextCount=_plural(counts.get("contexts", 0), "context"),
            balancerCount=_plural(counts.get("balancers", 0), "balancer"),
            stylesheet=d.stylesheet,
            script=d.script,
            bodyClass=" ".join(classes),
            pageLink=d.base if d.detail is None else d.href(JVMRoute=d.detail),
            autoRefreshLink=d.link(refresh="10"),
            stopRefreshLink=d.base if d.detail is None else _url(
                d.base, [("JVMRoute", d.detail)]),
            refresh=str(d.refresh or ""),
            updateLink=d.update_link if d.refresh else "",
            structure=d.structure,
            ids=ids,
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
            yield tag.clone(False).fillSlots(label=label, value=value)

    # -- detail view ------------------------------------------------------------

    @renderer
    def crumbs(self, request, tag):
        d = self.data
        if d.detail is None:
            return ""
        return tag.fillSlots(back=d.href(), route=d.detail)

    # -- overview ---------------------------------------------------------------

    @renderer
    def overview(self, request, tag):
        s = self.data.summary
        return "" if s is None or not s.nodes else tag

    @renderer
    def stateTiles(self, request, tag):
        s = self.data.summary
        for key, label in _state_choices():
            count = s.draining if key == DRAINING else s.by_state[NodeState(key)]
            cls = key.replace("_", "-") + ("" if count else " zero")
            yield tag.clone(False).fillSlots(href=self.data.href(state=key) + "#nodes", cls=cls,
                                        key=key, count=str(count), label=label)

    @renderer
    def contextTotals(self, request, tag):
        totals = self.data.summary.contexts
        for status in ("ENABLED", "DISABLED", "STOPPED"):
            yield tag.clone(False).fillSlots(status=status, cls=status.lower(),
                                        count=str(totals.get(status, 0)))

    @renderer
    def attention(self, request, tag):
        return tag if self.data.summary.attention else ""

    @renderer
    def attentionItems(self, request, tag):
        for entry, state in self.data.summary.attention:
            reason = (node_state(entry.node, self.data.now)[1]
                      if state in (NodeState.IN_ERROR, NodeState.EJECTED) else "")
            if not reason and state is not NodeState.REMOVING and entry.draining:
                reason = ", ".join(f"{n} {s.lower()}" for s, n in
                                   _contexts_text(entry.contexts) if s != "ENABLED")
            yield tag.clone(False).fillSlots(href=self.data.detail_link(entry.route),
                                        route=entry.route,
                                        cls=state.value.replace("_", "-"),
                                        label=state.label, reason=reason)

    @renderer
    def attentionMore(self, request, tag):
        s = self.data.summary
        if s.attention_total <= len(s.attention):
            return ""
        return tag.fillSlots(href=self.data.href(state=ATTENTION) + "#nodes",
                             count=str(s.attention_total))

    @renderer
    def balancers(self, request, tag):
        d = self.data
        return "" if d.reduce or not d.balancers or d.summary is None else tag

    @renderer
    def balancerRows(self, request, tag):
        for b in self.data.balancers:
            count, routes = self.data.members.get(b.name, (0, ()))
            if count > len(routes):
                nodes = f"{count} nodes"
            else:
                nodes = ", ".join(routes) or "–"
            yield tag.clone(False).fillSlots(
                name=b.name, sticky=_yes(b.sticky_session), cookie=b.sticky_cookie,
                path=b.sticky_path, remove=_yes(b.sticky_remove), force=_yes(b.sticky_force),
                timeout=f"{_number(b.wait_worker)} s", maxAttempts=str(b.max_attempts),
                nodes=nodes)

    @renderer
    def domainPanel(self, request, tag):
        s = self.data.summary
        if s is None or not any(name for name, *_ in s.domains):
            return ""
        return tag

    @renderer
    def domainRows(self, request, tag):
        shown = 0
        for name, nodes, live, errors in self.data.summary.domains:
            if not name:
                continue  # nodes without a domain have no domain commands
            if shown >= self.data.domain_limit:
                break
            shown += 1
            row = tag.clone(False).fillSlots(
                domain=name, href=self.data.href(domain=name) + "#nodes", nodes=str(nodes),
                live=str(live), errors=str(errors))
            yield _DomainRow(TagLoader(row), self.data, live)

    @renderer
    def domainMore(self, request, tag):
        named = sum(1 for name, *_ in self.data.summary.domains if name)
        more = named - self.data.domain_limit
        return tag.fillSlots(count=str(more)) if more > 0 else ""

    # -- node finder ------------------------------------------------------------

    @renderer
    def finder(self, request, tag):
        f = self.data.finder
        if f is None:
            return ""
        flt = f.filter
        # The fragment survives a GET form's submission: the results, not the overview.
        return tag.fillSlots(action=self.data.base + "#nodes", query=flt.query,
                             result=self._result_text(f))

    @staticmethod
    def _result_text(f: Finder) -> str:
        what = "matching" if f.filter.active else "of"
        if not f.total:
            return "No node matches the filter." if f.filter.active else "No node."
        if f.total <= f.shown:
            return (f"{_plural(f.total, 'node')} matching the filter" if f.filter.active
                    else f"All {_plural(f.total, 'node')}")
        return (f"Nodes {f.first + 1}–{f.first + f.shown} of {f.total} {what} "
                f"{'the filter' if f.filter.active else 'the cluster'}"
                + (f" (out of {f.cluster_nodes})" if f.filter.active else ""))

    @renderer
    def fieldOptions(self, request, tag):
        current = self.data.finder.filter.field
        for value, label in FIELD_LABELS:
            option = tag.clone(False).fillSlots(value=value, label=label)
            if value == current:
                option(selected="selected")
            yield option

    @renderer
    def stateOptions(self, request, tag):
        current = self.data.finder.filter.state
        for value, label in STATE_LABELS:
            option = tag.clone(False).fillSlots(value=value, label=label)
            if value == current:
                option(selected="selected")
            yield option

    @renderer
    def domainField(self, request, tag):
        d = self.data.finder.filter.domain
        return "" if d is None else tag.fillSlots(domain=d)

    @renderer
    def balancerField(self, request, tag):
        b = self.data.finder.filter.balancer
        return "" if b is None else tag.fillSlots(balancer=b)

    @renderer
    def clearLink(self, request, tag):
        if not self.data.finder.filter.active:
            return ""
        return tag.fillSlots(href=self.data.href() + "#nodes")

    @staticmethod
    def _filter_params(finder: Finder) -> dict:
        flt = finder.filter
        return {"q": flt.query, "in": "" if flt.field == "any" else flt.field,
                "state": flt.state, "domain": flt.domain, "balancer": flt.balancer,
                "size": "" if finder.size == DEFAULT_PAGE_SIZE else str(finder.size)}

    @renderer
    def pager(self, request, tag):
        f = self.data.finder
        return tag if f is not None and f.pages > 1 else ""

    @renderer
    def pageLinks(self, request, tag):
        f = self.data.finder
        params = self._filter_params(f)

        def link(page: int, label: str, cls: str = "page"):
            return tag.clone(False).fillSlots(
                href=self.data.href(**params, page=str(page) if page > 1 else "") + "#nodes",
                label=label, cls=cls)

        if f.page > 1:
            yield link(f.page - 1, "‹ Previous", "page prev")
        # First, last, and a window around the current page: bounded whatever the size.
        wanted = sorted({1, f.pages} | set(range(max(1, f.page - 3),
                                                 min(f.pages, f.page + 3) + 1)))
        last = 0
        for page in wanted:
            if page > last + 1:
                yield tag.clone(False).fillSlots(href="#nodes", label="…", cls="gap")
            yield link(page, str(page), "page current" if page == f.page else "page")
            last = page
        if f.page < f.pages:
            yield link(f.page + 1, "Next ›", "page next")

    # -- nodes ------------------------------------------------------------------

    @renderer
    def unlessNodes(self, request, tag):
        if any(g.nodes for g in self.data.groups):
            return ""
        return tag.fillSlots(message=self.data.empty_message)

    @renderer
    def domains(self, request, tag):
        for group in self.data.groups:
            yield _DomainElement(TagLoader(tag.clone(False)), self.data, group)

    @renderer
    def sessions(self, request, tag):
        return "" if self.data.sessions is None else tag

    @renderer
    def sessionRows(self, request, tag):
        for sid, route in self.data.sessions or ():
            yield tag.clone(False).fillSlots(id=sid, route=route)

    @renderer
    def sessionMore(self, request, tag):
        more = self.data.sessions_more
        return tag.fillSlots(count=str(more)) if more else ""

    @renderer
    def apiLink(self, request, tag):
        return "" if self.data.api_link is None else tag.fillSlots(href=self.data.api_link)

    @renderer
    def metricsLink(self, request, tag):
        if self.data.metrics_link is None:
            return ""
        return tag.fillSlots(href=self.data.metrics_link)


#: Nodes per page of the node list unless C{?size=} says otherwise.
DEFAULT_PAGE_SIZE = 50


class _DomainRow(_Shared):
    """A row of the domain table, with its commands while it has live nodes."""

    def __init__(self, loader, data: PageData, live: int) -> None:
        super().__init__(loader, data)
        self.live = live

    @renderer
    def domainCommands(self, request, tag):
        return self._form(tag) if self.data.allow_cmd and self.live else ""


class _DomainElement(_Shared):
    """The shown nodes of one LBGroup (domain), as cards or as rows."""

    def __init__(self, loader, data: PageData, group: DomainGroup) -> None:
        super().__init__(loader, data)
        self.group = group

    @renderer
    def domainHeader(self, request, tag):
        # mod_cluster-manager prints no LBGroup header for nodes without a domain.
        return tag.fillSlots(domain=self.group.domain) if self.group.domain else ""

    @renderer
    def nodeTable(self, request, tag):
        return "" if self.data.cards else tag

    @renderer
    def rows(self, request: IRequest, tag: Tag) -> Iterator[_RowElement]:
        for node in self.group.nodes:
            counts: dict[str, int] = {}
            aliases: list[str] = []
            for v in node.vhosts:
                aliases.extend(v.aliases)
                for c in v.contexts:
                    counts[c.status] = counts.get(c.status, 0) + 1
            alias_text = " ".join(aliases[:ROW_ALIASES])
            if len(aliases) > ROW_ALIASES:
                alias_text += f" +{len(aliases) - ROW_ALIASES}"
            row = tag.clone(False).fillSlots(
                anchor=f"node-{node.id}", state=node.state.value.replace("_", "-"),
                href=self.data.detail_link(node.route), route=node.route,
                address=node.address, balancer=node.balancer, stateLabel=node.state.label,
                reason=_reason(node, self.data), load=str(node.load),
                elected=str(node.elected), busy=str(node.busy), aliases=alias_text or "–")
            yield _RowElement(TagLoader(row), self.data, node, counts)

    @renderer
    def nodes(self, request, tag):
        if not self.data.cards:
            return
        for node in self.group.nodes:
            article = tag.clone(False).fillSlots(
                anchor=f"node-{node.id}", state=node.state.value.replace("_", "-"),
                route=node.route, href=self.data.detail_link(node.route),
                address=node.address, stateLabel=node.state.label)
            yield _NodeElement(TagLoader(article), self.data, node)


def _reason(node: NodeView, data: PageData) -> str:
    """The state's explanation shown next to the badge (empty for OK nodes)."""
    now = data.now
    if node.state is NodeState.IN_ERROR:
        text = node.reason
        if now is not None and node.error_since is not None:
            text += f" (for {_duration(now - node.error_since)})"
        return text
    if node.state is NodeState.REMOVING:
        text = "removal pending"
        if now is not None and node.removed_at is not None:
            left = node.removed_at + data.wait_before_remove - now
            text += f", purged in about {_duration(left)}" if left > 0 else ", purging"
        return text
    if node.state is NodeState.UNVERIFIED:
        return "restored from saved state, no STATUS since"
    if node.state is NodeState.EJECTED and now is not None and node.ejected_until:
        return f"{node.reason}, back in about {_duration(node.ejected_until - now)}"
    if node.share < 1.0:
        return f"slow start: {node.share:.0%} of its share"
    return ""


class _RowElement(_Shared):
    """One node as a row of the node list."""

    def __init__(self, loader, data: PageData, node: NodeView, counts: dict) -> None:
        super().__init__(loader, data)
        self.node = node
        self.counts = counts

    @renderer
    def ctxCounts(self, request, tag):
        items = _contexts_text(self.counts)
        if not items:
            return "–"
        return [tag.clone(False).fillSlots(status=status.lower(), cls=status.lower(),
                                      count=str(n)) for status, n in items]

    @renderer
    def nodeCommands(self, request, tag):
        if not self.data.allow_cmd or self.node.state is NodeState.REMOVING:
            return ""
        return self._form(tag)


def stat_items(node: NodeView, data: PageData) -> Iterable[tuple[str, str, str, str]]:
    """(key, label, shown value, hint) of a node card's counters."""
    n = node
    yield "load", "Load", str(n.load), "Load factor from the last STATUS (-1: none yet or in error)"
    yield "elected", "Elected", str(n.elected), "Times chosen by the balancer"
    yield "read", "Read", _size(n.read), f"{n.read} bytes read from the node"
    yield ("transferred", "Transferred", _size(n.transferred),
           f"{n.transferred} bytes sent to the node")
    yield "busy", "Connected", str(n.busy), "Requests in flight on the node (busy)"
    yield "requests", "Requests", str(n.requests), "Requests forwarded in total"
    yield "failures", "Failures", str(n.failures), "Forwarding failures in total"
    yield ("ejections", "Ejections", str(n.ejections),
           "Times ejected by passive health (consecutive failures)")
    if n.route in data.session_counts:
        yield "sessions", "Num sessions", str(data.session_counts[n.route]), "Tracked sessions"


class _NodeElement(_Shared):
    """One node: title, state, commands, statistics, virtual hosts."""

    def __init__(self, loader, data: PageData, node: NodeView) -> None:
        super().__init__(loader, data)
        self.node = node

    @renderer
    def reason(self, request, tag):
        text = _reason(self.node, self.data)
        return tag.fillSlots(reason=text) if text else ""

    @renderer
    def nodeCommands(self, request, tag):
        if not self.data.allow_cmd or self.node.state is NodeState.REMOVING:
            return ""
        return self._form(tag)

    @renderer
    def stats(self, request, tag):
        return "" if self.data.reduce else tag

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
        for key, label, value, hint in stat_items(self.node, self.data):
            yield tag.clone(False).fillSlots(key=key, label=label, value=value, hint=hint)

    @renderer
    def metaItems(self, request, tag):
        for label, value in self._meta_items():
            yield tag.clone(False).fillSlots(label=label, value=value)

    @renderer
    def unlessVhosts(self, request, tag):
        return "" if self.node.vhosts else tag

    @renderer
    def vhosts(self, request, tag):
        for vhost in self.node.vhosts:
            part = tag.clone(False).fillSlots(vhostId=str(vhost.id))
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
            yield tag.clone(False).fillSlots(alias=alias)

    @renderer
    def contexts(self, request, tag):
        for ctx in self.vhost.contexts:
            row = tag.clone(False).fillSlots(
                anchor=f"ctx-{ctx.id}",
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
        return self._form(tag)

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
