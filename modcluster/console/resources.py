"""
The console resource tree: the status page, its commands and its stylesheet.

Commands come in two forms:

 - the page's own C{POST} forms (C{application/x-www-form-urlencoded}), which
   always carry the per-process nonce in a hidden field, and answer
   C{303 See Other} back to the page (post/redirect/get);
 - the query-string form of mod_cluster-manager that existing scripts use
   (C{GET ?nonce=…&Cmd=DISABLE-APP&Range=CONTEXT&JVMRoute=…&Alias=…&Context=…}),
   which needs the nonce only when C{check_nonce} is on and answers with the
   page itself, as httpd does.

Both go through the registry's C{app()} (the MCMP code path), so the next
INFO/DUMP shows the change.  See docs/console.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Callable, Iterable, Optional, Sequence
from urllib.parse import quote, unquote_to_bytes

from attrs import frozen
from twisted.logger import Logger
from twisted.python.filepath import FilePath
from twisted.web import http
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.template import renderElement

from modcluster import _version
from modcluster.cluster.errors import ClusterError
from modcluster.cluster.views import (
    DRAINING,
    FILTER_FIELDS,
    DomainGroup,
    NodeFilter,
    NodeIndex,
    NodeState,
    Summary,
    node_view,
    summarize,
)
from modcluster.console.elements import (
    BALANCER_ROUTES,
    DEFAULT_PAGE_SIZE,
    ConsolePage,
    ErrorPage,
    Finder,
    PageData,
    stat_items,
)
from modcluster.memo import BoundedMemo

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "ConsoleResource",
    "QueryError",
    "mount",
    "parse_form",
    "parse_query",
]

#: The page needs nothing but its own stylesheet, its own auto-refresh script
#: (which fetches the console's own C{update} JSON) and forms posting to itself.
CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; style-src 'self'; img-src 'self'; script-src 'self'; "
    b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

STATIC = FilePath(__file__).sibling("static")

#: APP commands the console runs (REMOVE-APP is left to the nodes themselves).
CONSOLE_COMMANDS = ("ENABLE-APP", "DISABLE-APP", "STOP-APP")

_MAX_FORM = 65536
_MAX_REFRESH = 86400

#: A result of at most this many nodes is shown as full node cards (contexts and
#: all), as long as they hold at most CARD_CONTEXTS contexts; anything larger
#: is a paged list of one row per node, each linking to its detail view.
CARD_LIMIT = 10
CARD_CONTEXTS = 400
#: The largest page of the node list (C{?size=}).
MAX_PAGE_SIZE = 200
#: Session ids listed on the page (all are counted).
MAX_SESSIONS_SHOWN = 100
_STATE_FILTERS = frozenset([s.value for s in NodeState] + ["draining", "attention"])


@frozen
class _Selection:
    """What one request shows (see L{ConsoleResource._select})."""

    index: NodeIndex
    views: list
    cards: bool
    summary: Optional[Summary]
    finder: Optional[Finder]
    detail: Optional[str]


def _positive_int(raw: Optional[str], default: int) -> int:
    try:
        value = int((raw or "").strip())
    except ValueError:
        return default
    return value if value >= 1 else default


def _page_size(params: dict[str, str]) -> int:
    return min(_positive_int(params.get("size"), DEFAULT_PAGE_SIZE), MAX_PAGE_SIZE)


def _parse_filter(params: dict[str, str]) -> NodeFilter:
    """The node filter of a console query; unknown values mean "no filter"."""
    query = " ".join(params.get("q", "").split())[:200]
    field = params.get("in", "any").lower()
    if field not in FILTER_FIELDS:
        field = "any"
    state = params.get("state", "").lower()
    if state not in _STATE_FILTERS:
        state = ""
    domain = params.get("domain")
    balancer = params.get("balancer")
    return NodeFilter(query=query, field=field, state=state,
                      domain=domain if domain else None,
                      balancer=balancer.lower() if balancer else None)


def _count_routes(sessions) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, route in sessions:
        counts[route] = counts.get(route, 0) + 1
    return counts


class QueryError(ValueError):
    """A malformed query string or form body."""


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise QueryError("parameter is not UTF-8") from None


def parse_query(query: bytes) -> dict[str, str]:
    """
    Parse a mod_cluster-manager query string: items split on C{&}, each must
    contain C{=}; the value is percent-decoded (a C{+} stays a C{+}, as httpd's
    unescaping leaves it); keys are case-insensitive (returned lower-cased);
    the last occurrence of a key wins.  Empty items are skipped.

    @raise QueryError: an item without C{=}, or a value that is not UTF-8.
    """
    params: dict[str, str] = {}
    for item in query.split(b"&"):
        if not item:
            continue
        if b"=" not in item:
            raise QueryError(f"query item {item[:40]!r} has no '='")
        key, value = item.split(b"=", 1)
        params[_decode(unquote_to_bytes(key)).lower()] = _decode(unquote_to_bytes(value))
    return params


def parse_form(body: bytes) -> dict[str, str]:
    """
    Parse an C{application/x-www-form-urlencoded} body (what the page's forms
    send: C{+} means a space).  Keys lower-cased, last occurrence wins.

    @raise QueryError: a malformed item or non-UTF-8 text.
    """
    return parse_query(body.replace(b"+", b"%20"))


def mount(root: Resource, path: str, resource: Resource) -> None:
    """
    Put C{resource} at URL C{path} (e.g. C{/mod_cluster-manager} or
    C{/admin/console}) under C{root}, creating plain intermediate resources.
    """
    segments = [s.encode("utf-8") for s in path.strip("/").split("/")]
    parent = root
    for segment in segments[:-1]:
        child = parent.children.get(segment)
        if child is None:
            child = Resource()
            parent.putChild(segment, child)
        parent = child
    parent.putChild(segments[-1], resource)


def secure_headers(request, content_type: bytes) -> None:
    """The security headers every console response carries."""
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-security-policy", CONTENT_SECURITY_POLICY)
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"referrer-policy", b"no-referrer")


def _peer(request) -> str:
    addr = request.getClientAddress()
    host = getattr(addr, "host", None)
    return f"{host}:{getattr(addr, 'port', '')}" if host else str(addr)


def _header_safe(text: str) -> bytes:
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean.encode("latin-1", "replace")


class CommandError(Exception):
    """A console command refused or failed; nothing was changed."""

    def __init__(self, code: int, mess: str, type: str = "SYNTAX") -> None:
        super().__init__(mess)
        self.code = code
        self.mess = mess
        self.type = type


@frozen
class Command:
    """A validated console command."""

    cmd: str
    range: str
    route: str = ""
    alias: str = ""
    context: str = ""
    domain: str = ""

    def describe(self) -> str:
        if self.range == "NODE":
            return f"{self.cmd} of all contexts of node {self.route}"
        if self.range == "DOMAIN":
            return f"{self.cmd} of all nodes of domain {self.domain}"
        return f"{self.cmd} of {self.context} (alias {self.alias}) on node {self.route}"


class _Asset(Resource):
    """A small static file (the stylesheet)."""

    isLeaf = True

    def __init__(self, data: bytes, content_type: bytes) -> None:
        super().__init__()
        self._data = data
        self._type = content_type

    def render_GET(self, request):
        secure_headers(request, self._type)
        request.setHeader(b"content-length", str(len(self._data)).encode())
        return self._data


class _Static(Resource):
    def __init__(self) -> None:
        super().__init__()
        self.putChild(b"console.css", _Asset(STATIC.child("console.css").getContent(),
                                             b"text/css; charset=utf-8"))
        self.putChild(b"console.js", _Asset(STATIC.child("console.js").getContent(),
                                            b"text/javascript; charset=utf-8"))

    def getChild(self, path, request):
        return notFound()


class _Update(Resource):
    """C{<console>/update}: the live numbers of a view, for the page's script."""

    isLeaf = True

    def __init__(self, console: "ConsoleResource") -> None:
        super().__init__()
        self._console = console

    def render_GET(self, request):
        query = request.uri.split(b"?", 1)[1] if b"?" in request.uri else b""
        try:
            params = parse_query(query)
            return self._console.update(request, params)
        except (QueryError, CommandError) as e:
            code = e.code if isinstance(e, CommandError) else 400
            request.setResponseCode(code)
            secure_headers(request, b"application/json")
            return json.dumps({"error": str(e)}).encode("utf-8")


class ConsoleResource(Resource):
    """
    The mod_cluster-manager console.

    @param registry: the L{modcluster.cluster.registry.Registry}.
    @param config: the L{modcluster.config.ConsoleConfig}.
    @param release: release string shown in the C{<h1>} (the VERSION release).
    @param nonce: the per-process command nonce; a random UUID when C{None}.
    @param clock: provides C{seconds()}; used only to show ages ("in error for
        12 s"); no ages are shown when C{None}.
    @param mcmp: optional object with C{info(xml: bool) -> bytes} and
        C{dump(xml: bool) -> bytes} (the L{modcluster.mcmp.handler.MCMPHandler}):
        serves C{?Cmd=INFO} / C{?Cmd=DUMP}.  Without it those links are not shown.
    @param sessions: optional callable returning C{(session id, route)} pairs;
        when given, the page lists them and shows per-node session counts (pass
        it only when C{manager.max_session_ids} > 0).
    @param display: C{(label, value)} lines of the configuration block shown
        with C{allow_display}.
    @param authority: a L{modcluster.access.CommandAuthority}: which client
        certificate identities may run commands on which nodes (None: anyone
        who passes the nonce and C{allow_cmd} checks).
    @param identities: C{request -> frozenset} of the client certificate's
        identities (L{modcluster.tls.peer_identities} of the transport).
    """

    log = Logger()

    def __init__(self, registry, config, release: str, nonce: Optional[str] = None,
                 clock=None, *, mcmp=None,
                 sessions: Optional[Callable[[], Iterable[tuple[str, str]]]] = None,
                 display: Sequence[tuple[str, str]] = (),
                 authority=None,
                 identities: Optional[Callable[[Request], frozenset]] = None) -> None:
        super().__init__()
        self._authority = authority
        self._identities = identities
        self._registry = registry
        self._config = config
        self._release = release
        self.nonce = nonce or str(uuid.uuid4())
        self._clock = clock
        self._mcmp = mcmp
        self._sessions = sessions
        self._display = tuple(display)
        #: the node index of the registry's current structure version (one entry)
        self._node_index: BoundedMemo[int, NodeIndex] = BoundedMemo("console.node_index", 1)
        self.putChild(b"static", _Static())
        self.putChild(b"update", _Update(self))

    def getChild(self, path, request):
        if path == b"":
            return self
        return notFound()

    # -- helpers ----------------------------------------------------------------

    @staticmethod
    def _base(request) -> str:
        segments = [s for s in request.prepath if s]
        return "/" + "/".join(quote(s.decode("utf-8", "replace"), safe="") for s in segments)

    def _stylesheet(self, base: str) -> str:
        return base.rstrip("/") + "/static/console.css"

    def _error(self, request, err: CommandError):
        base = self._base(request)
        request.setResponseCode(err.code)
        secure_headers(request, b"text/html; charset=utf-8")
        # The MCMP error headers mod_cluster-manager attaches to a failed command.
        request.setHeader(b"version", b"0.2.1")
        request.setHeader(b"type", _header_safe(err.type))
        request.setHeader(b"mess", _header_safe(err.mess))
        title = http.RESPONSES.get(err.code, b"Error").decode("ascii")
        return renderElement(request, ErrorPage(err.code, title, err.mess, base,
                                                self._stylesheet(base), self._release))

    def _refresh(self, params: dict[str, str]) -> Optional[int]:
        raw = params.get("refresh")
        if raw is None:
            return None
        try:
            value = int(raw.strip())
        except ValueError:
            value = 0
        if value < 1:
            value = 10  # as mod_cluster-manager: values < 1 become 10
        return min(value, _MAX_REFRESH)

    def _nonce_ok(self, given: Optional[str]) -> bool:
        return given is not None and hmac.compare_digest(given.encode("utf-8"),
                                                         self.nonce.encode("utf-8"))

    # -- rendering ----------------------------------------------------------------

    def _index(self) -> NodeIndex:
        """
        The node index of the registry's current structure version (the routing
        table's generation: it changes with every node, alias, context or
        context-state change), built at most once per version.
        """
        return self._node_index.get(self._registry.table.generation, self._build_index)

    def _build_index(self, version: int) -> NodeIndex:
        return NodeIndex.build(self._registry, version)

    def _select(self, params: dict[str, str]) -> "_Selection":
        """Which nodes a request shows: one node's detail, or a page of the list."""
        registry = self._registry
        index = self._index()
        route = params.get("jvmroute", "")
        if route:
            entry = index.by_route.get(route)
            if entry is None:
                raise CommandError(404, f'No node with JVMRoute "{route}"', "GENERAL")
            view = node_view(registry, entry.node)
            return _Selection(index, [view], True, None, None, route)
        flt = _parse_filter(params)
        now = self._clock.seconds() if self._clock is not None else None
        summary = summarize(index, now=now)
        selected = flt.select(index, now)
        total = len(selected)
        if total <= CARD_LIMIT and (flt.active or len(index.entries) <= CARD_LIMIT) and sum(
                sum(e.contexts.values()) for e, _ in selected) <= CARD_CONTEXTS:
            shown = selected
            finder = None
            if flt.active or len(index.entries) > CARD_LIMIT:
                finder = Finder(flt, total, 1, 1, _page_size(params), 0, total,
                                len(index.entries))
            cards = True
        else:
            size = _page_size(params)
            pages = max(1, -(-total // size))
            page = min(_positive_int(params.get("page"), 1), pages)
            first = (page - 1) * size
            shown = selected[first:first + size]
            finder = Finder(flt, total, page, pages, size, first, len(shown),
                            len(index.entries))
            cards = False
        views = [node_view(registry, e.node) for e, _ in shown]
        return _Selection(index, views, cards, summary, finder, None)

    def _view_query(self, sel: "_Selection") -> list[tuple[str, str]]:
        """The query naming the same view (for the live-update URL)."""
        if sel.detail is not None:
            return [("JVMRoute", sel.detail)]
        f = sel.finder
        if f is None:
            return []
        flt = f.filter
        items = [("q", flt.query), ("in", "" if flt.field == "any" else flt.field),
                 ("state", flt.state), ("domain", flt.domain or ""),
                 ("balancer", flt.balancer or ""),
                 ("page", str(f.page) if f.page > 1 else ""),
                 ("size", str(f.size) if f.size != DEFAULT_PAGE_SIZE else "")]
        return [(k, v) for k, v in items if v]

    def _page(self, request, refresh: Optional[int], params: Optional[dict] = None):
        cfg = self._config
        base = self._base(request)
        registry = self._registry
        try:
            sel = self._select(params or {})
        except CommandError as e:
            return self._error(request, e)
        sessions = None
        sessions_more = 0
        session_counts: dict[str, int] = {}
        if self._sessions is not None:
            sessions = sorted(self._sessions())
            for _, route in sessions:
                session_counts[route] = session_counts.get(route, 0) + 1
            sessions_more = max(0, len(sessions) - MAX_SESSIONS_SHOWN)
            sessions = sessions[:MAX_SESSIONS_SHOWN]
        config_items = None
        if cfg.allow_display:
            config_items = list(self._display) + [
                ("Release", self._release),
                ("Console path", cfg.path),
                ("Check nonce", "on" if cfg.check_nonce else "off"),
                ("Allow commands", "on" if cfg.allow_cmd else "off"),
                ("Reduced display", "on" if cfg.reduce_display else "off"),
            ]
        members: dict[str, tuple[int, list[str]]] = {}
        for entry in sel.index.entries:
            count, routes = members.get(entry.balancer, (0, []))
            if len(routes) < BALANCER_ROUTES:
                routes.append(entry.route)
            members[entry.balancer] = (count + 1, routes)
        groups: list[DomainGroup] = []
        for view in sel.views:  # already in domain order
            if groups and groups[-1].domain == view.domain:
                groups[-1] = DomainGroup(view.domain, groups[-1].nodes + (view,))
            else:
                groups.append(DomainGroup(view.domain, (view,)))
        update = base.rstrip("/") + "/update"
        query = self._view_query(sel)
        if query:
            update += "?" + "&".join(f"{k}={quote(v, safe='/-._~')}" for k, v in query)
        data = PageData(
            release=self._release,
            product=f"txmodcluster {_version.__version__}",
            base=base,
            stylesheet=self._stylesheet(base),
            script=base.rstrip("/") + "/static/console.js",
            nonce=self.nonce,
            link_nonce=self.nonce if cfg.check_nonce else "",
            allow_cmd=cfg.allow_cmd,
            reduce=cfg.reduce_display,
            refresh=refresh,
            groups=groups,
            cards=sel.cards,
            summary=sel.summary,
            detail=sel.detail,
            finder=sel.finder,
            members=members,
            balancers=[registry.balancers[k] for k in sorted(registry.balancers)],
            counts=registry.counts,
            show_outputs=self._mcmp is not None,
            config_items=config_items,
            sessions=sessions,
            sessions_more=sessions_more,
            session_counts=session_counts,
            now=self._clock.seconds() if self._clock is not None else None,
            wait_before_remove=registry.limits.wait_before_remove,
            api_link=cfg.api_path if cfg.api else None,
            metrics_link=cfg.metrics_path if cfg.metrics else None,
            update_link=update,
            structure=str(sel.index.version),
            empty_message=("No node is registered." if not sel.index.entries
                           else "No node matches the filter."),
        )
        secure_headers(request, b"text/html; charset=utf-8")
        return renderElement(request, ConsolePage(data))

    def update(self, request, params: dict[str, str]) -> bytes:
        """
        The live part of a view, as JSON, for the page's auto refresh
        (C{static/console.js}): the structure version and the ids shown (a change
        makes the script reload the page), counts by state, and each shown node's
        counters.  Answers C{304} when the client's C{If-None-Match} is current.
        """
        sel = self._select(params)
        counts: dict[str, int] = {}
        if sel.summary is not None:
            s = sel.summary
            counts = {state.value: n for state, n in s.by_state.items()}
            counts[DRAINING] = s.draining
            for status, n in s.contexts.items():
                counts["ctx-" + status.lower()] = n
        data = PageData(release="", product="", base="", stylesheet="", nonce="",
                        link_nonce="", allow_cmd=False, reduce=False, refresh=None,
                        groups=(), balancers=(), counts={}, show_outputs=False,
                        session_counts={} if self._sessions is None else _count_routes(
                            self._sessions()))
        nodes = {}
        for view in sel.views:
            fields = {key: value for key, _, value, _ in stat_items(view, data)}
            entry: dict = {"state": view.state.value, "f": fields}
            if sel.cards:
                entry["ctx"] = {str(c.id): {"in_flight": str(c.in_flight),
                                            "requests": str(c.requests)}
                                for v in view.vhosts for c in v.contexts}
            nodes[str(view.id)] = entry
        body = json.dumps({"structure": str(sel.index.version),
                           "ids": [v.id for v in sel.views], "counts": counts,
                           "nodes": nodes}, separators=(",", ":")).encode("utf-8")
        etag = b'"' + hashlib.sha1(body).hexdigest().encode("ascii") + b'"'
        secure_headers(request, b"application/json")
        request.setHeader(b"etag", etag)
        if request.getHeader(b"if-none-match") == etag:
            request.setResponseCode(http.NOT_MODIFIED)
            return b""
        request.setHeader(b"content-length", str(len(body)).encode())
        return body

    def _output(self, request, cmd: str):
        if self._mcmp is None:
            return self._error(request, CommandError(
                404, f"{cmd} output is not available on this console", "GENERAL"))
        xml = b"text/xml" in (request.getHeader(b"accept") or b"")
        body = self._mcmp.dump(xml) if cmd == "DUMP" else self._mcmp.info(xml)
        secure_headers(request, b"text/xml; charset=utf-8" if xml
                       else b"text/plain; charset=utf-8")
        request.setHeader(b"content-length", str(len(body)).encode())
        return body

    # -- commands -----------------------------------------------------------------

    def _parse_command(self, params: dict[str, str]) -> Command:
        cmd = params.get("cmd", "").upper()
        if cmd == "REMOVE-APP":
            raise CommandError(400, "SYNTAX: REMOVE-APP is not available from the console "
                                    "(a node removes itself)")
        if cmd not in CONSOLE_COMMANDS:
            raise CommandError(400, "SYNTAX: Command is not supported")
        rng = params.get("range")
        if rng is None:
            raise CommandError(400, "SYNTAX: Range is required for APP commands")
        rng = rng.upper()
        if rng not in ("NODE", "DOMAIN"):
            rng = "CONTEXT"  # mod_cluster-manager: any other value means CONTEXT
        if rng == "DOMAIN":
            domain = params.get("domain", "")
            if not domain:
                raise CommandError(400, "SYNTAX: Domain can't be empty")
            return Command(cmd, rng, domain=domain)
        route = params.get("jvmroute", "")
        if not route:
            raise CommandError(400, "SYNTAX: JVMRoute can't be empty")
        if rng == "NODE":
            return Command(cmd, rng, route=route)
        alias = params.get("alias", "")
        context = params.get("context", "")
        if not alias:
            raise CommandError(400, "SYNTAX: Alias can't be empty")
        if not context:
            raise CommandError(400, "SYNTAX: Context can't be empty")
        return Command(cmd, rng, route=route, alias=alias, context=context)

    def _live_node(self, route: str):
        node = self._registry.node(route)
        if node is None or node.rt.removed:
            raise CommandError(404, f'MEM: Can\'t read node with "{route}" JVMRoute', "MEM")
        return node

    def _apply(self, command: Command) -> None:
        """Run a validated command on the registry; nothing changes on error."""
        registry = self._registry
        try:
            if command.range == "DOMAIN":
                routes = [n.settings.route for n in registry.nodes()
                          if n.settings.domain == command.domain and not n.rt.removed]
                if not routes:
                    raise CommandError(
                        404, f'MEM: Can\'t find any node in domain "{command.domain}"', "MEM")
                for route in routes:
                    registry.app(command.cmd, route, wildcard=True)
            elif command.range == "NODE":
                self._live_node(command.route)
                registry.app(command.cmd, command.route, wildcard=True)
            else:
                node = self._live_node(command.route)
                vhost = node.vhost_for_alias(command.alias)
                if vhost is None:
                    raise CommandError(
                        404, f'MEM: Can\'t find alias "{command.alias}" on node '
                             f'"{command.route}"', "MEM")
                if command.context not in vhost.contexts:
                    raise CommandError(
                        404, f'MEM: Can\'t find context "{command.context}" of alias '
                             f'"{command.alias}" on node "{command.route}"', "MEM")
                registry.app(command.cmd, command.route, [command.alias], [command.context])
        except ClusterError as e:
            raise CommandError(409, e.mess, e.type) from None

    def _peer_identities(self, request) -> frozenset:
        if self._identities is None:
            return frozenset()
        try:
            return frozenset(self._identities(request))
        except Exception:
            self.log.failure("cannot read the client certificate identity")
            return frozenset()

    def _routes_of(self, command: Command) -> list[str]:
        if command.range == "DOMAIN":
            return [n.settings.route for n in self._registry.nodes()
                    if n.settings.domain == command.domain and not n.rt.removed]
        return [command.route]

    def _authorize(self, command: Command, identities: frozenset) -> None:
        if self._authority is None:
            return
        why = self._authority.refusal(identities, self._routes_of(command))
        if why is not None:
            raise CommandError(403, f"Forbidden: {why}", "GENERAL")

    def _record(self, kind: str, fmt: str, **fields) -> None:
        record = getattr(self._registry, "record", None)
        if record is not None:
            record(kind, fmt, log=False, **fields)

    def _run(self, request, params: dict[str, str], via: str) -> Command:
        """
        Authorise, validate and apply the command in C{params}, logging who did
        what (client address and certificate identity) and recording it in the
        event log.  @raise CommandError: refused or failed (logged).
        """
        peer = _peer(request)
        identities = self._peer_identities(request)
        identity = ", ".join(sorted(identities)) or "-"
        try:
            if not self._config.allow_cmd:
                raise CommandError(403, "Commands are disabled on this console", "GENERAL")
            if (via == "POST" or self._config.check_nonce) and not self._nonce_ok(
                    params.get("nonce")):
                raise CommandError(403, "The nonce is missing or wrong: reload the console "
                                        "page and try again", "GENERAL")
            command = self._parse_command(params)
            self._authorize(command, identities)
            self._apply(command)
        except CommandError as e:
            self.log.warn(
                "console command from {peer} (certificate identity {identity}) refused "
                "({via} {cmd} Range={range}): {mess}",
                peer=peer, identity=identity, via=via, cmd=params.get("cmd", "")[:40],
                range=params.get("range", "")[:40], mess=e.mess,
                console_command="refused", status=e.code)
            self._record(
                "console.refused",
                "console command from {peer} (identity {identity}) refused: {mess}",
                peer=peer, identity=identity, via=via, command=params.get("cmd", "")[:40],
                range=params.get("range", "")[:40], route=params.get("jvmroute", "")[:200],
                domain=params.get("domain", "")[:200], status=e.code, mess=e.mess)
            raise
        self.log.info("console command from {peer} (certificate identity {identity}): {what}",
                      peer=peer, identity=identity, via=via,
                      what=command.describe(), console_command=command.cmd,
                      range=command.range, route=command.route, alias=command.alias,
                      context=command.context, domain=command.domain)
        self._record("console.command",
                     "console command from {peer} (identity {identity}): {what}",
                     peer=peer, identity=identity, via=via, what=command.describe(),
                     command=command.cmd, range=command.range, route=command.route,
                     alias=command.alias, context=command.context, domain=command.domain)
        return command

    # -- HTTP -------------------------------------------------------------------

    def render(self, request):
        if request.method in (b"GET", b"HEAD"):
            return self.render_GET(request)
        if request.method == b"POST":
            return self.render_POST(request)
        request.setHeader(b"allow", b"GET, HEAD, POST")
        return self._error(request, CommandError(405, "Method not allowed on the console"))

    def render_GET(self, request):
        query = request.uri.split(b"?", 1)[1] if b"?" in request.uri else b""
        try:
            params = parse_query(query)
        except QueryError as e:
            return self._error(request, CommandError(400, f"Bad query string: {e}"))
        cmd = params.get("cmd")
        if cmd is not None and cmd.upper() in ("DUMP", "INFO"):
            return self._output(request, cmd.upper())
        if cmd is not None and request.method == b"GET":  # HEAD never changes anything
            try:
                self._run(request, params, "GET")
            except CommandError as e:
                return self._error(request, e)
        return self._page(request, self._refresh(params), params)

    def render_POST(self, request: Request) -> bytes:
        body = request.content.read(_MAX_FORM + 1) if request.content is not None else b""
        if len(body) > _MAX_FORM:
            return self._error(request, CommandError(413, "The form is too large"))
        try:
            params = parse_form(body)
        except QueryError as e:
            return self._error(request, CommandError(400, f"Bad form data: {e}"))
        try:
            command = self._run(request, params, "POST")
        except CommandError as e:
            return self._error(request, e)
        base = self._base(request)
        query: list[tuple[str, str]] = []
        fragment = ""
        node = self._registry.node(command.route) if command.route else None
        if self._registry.counts["nodes"] > CARD_LIMIT:
            # A large cluster's first page may not show the node (or domain)
            # changed: go back to a view that does.
            if node is not None:
                query.append(("JVMRoute", command.route))
            elif command.domain:
                query.append(("domain", command.domain))
                fragment = "#nodes"
        refresh = self._refresh(params)
        if refresh:
            query.append(("refresh", str(refresh)))
        if node is not None:
            fragment = f"#node-{node.id}"
        target = base
        if query:
            target += "?" + "&".join(f"{k}={quote(v, safe='/-._~')}" for k, v in query)
        target += fragment
        request.setResponseCode(http.SEE_OTHER)
        request.setHeader(b"location", target.encode("ascii"))
        secure_headers(request, b"text/plain; charset=utf-8")
        return f"Done: {command.describe()}. See {base}\n".encode()
