"""
The read-only JSON API: the registry's balancers, nodes, virtual hosts,
contexts and recent cluster events, for scripts and dashboards.

Field names are stable and documented in docs/api.md; new fields may be added,
existing ones are not renamed or removed within C{/api/v1}.
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional
from urllib.parse import quote

from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from modcluster import _version
from modcluster.cluster.views import (
    FILTER_FIELDS,
    NodeFilter,
    NodeIndex,
    NodeState,
    NodeView,
    node_view,
    node_views,
)
from modcluster.memo import BoundedMemo

__all__ = ["APIResource", "balancer_json", "node_json"]

ENDPOINTS = ("balancers", "nodes", "vhosts", "contexts", "events", "workers", "sessions")
DEFAULT_EVENT_LIMIT = 100
#: C{state} values of the node filter.
NODE_STATES = frozenset([s.value for s in NodeState] + ["draining", "attention"])
#: Query parameters of C{/nodes} (anything else is refused, so a typo is not
#: silently "no filter").
NODE_PARAMS = frozenset({"limit", "offset", "q", "in", "state", "domain", "balancer"})


class _APIError(Exception):
    def __init__(self, code: int, error: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.error = error
        self.message = message


def node_json(view: NodeView) -> dict[str, Any]:
    """The JSON object of one node (docs/api.md, "Node")."""
    return {
        "id": view.id,
        "route": view.route,
        "balancer": view.balancer,
        "domain": view.domain,
        "type": view.type,
        "host": view.host,
        "port": view.port,
        "address": view.address,
        "reversed": view.reversed,
        "state": view.state.value,
        "error_reason": view.reason or None,
        "load": view.load,
        "elected": view.elected,
        "read": view.read,
        "transferred": view.transferred,
        "busy": view.busy,
        "in_flight": view.in_flight,
        "requests": view.requests,
        "failures": view.failures,
        "ejected_until": view.ejected_until,
        "ejections": view.ejections,
        "consecutive_failures": view.consecutive_failures,
        "share": view.share,
        "flushpackets": view.flushpackets,
        "flushwait_ms": view.flushwait_ms,
        "ping": view.ping,
        "smax": view.smax,
        "ttl": view.ttl,
        "timeout": view.timeout,
        "registered_at": view.registered_at,
        "removed_at": view.removed_at,
        "error_since": view.error_since,
        "last_status": view.last_status,
        "vhosts": [
            {
                "id": v.id,
                "aliases": list(v.aliases),
                "contexts": [_context_json(c) for c in v.contexts],
            }
            for v in view.vhosts
        ],
    }


def _context_json(c) -> dict[str, Any]:
    return {"id": c.id, "path": c.path, "status": c.status, "in_flight": c.in_flight,
            "requests": c.requests}


def balancer_json(settings, routes: list[str]) -> dict[str, Any]:
    """The JSON object of one balancer (docs/api.md, "Balancer")."""
    return {
        "name": settings.name,
        "sticky_session": settings.sticky_session,
        "sticky_cookie": settings.sticky_cookie,
        "sticky_path": settings.sticky_path,
        "sticky_remove": settings.sticky_remove,
        "sticky_force": settings.sticky_force,
        "wait_worker": settings.wait_worker,
        "max_attempts": settings.max_attempts,
        "nodes": routes,
    }


def _json_safe(value: Any) -> Any:
    """Event fields are plain values; anything else is shown as text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)


#: Nodes serialised per reactor turn when a long listing is written in slices.
STREAM_SLICE = 100


class _Listing:
    """A node listing to write: the live records, and the fields after C{nodes}."""

    def __init__(self, nodes: list, tail: dict[str, Any]) -> None:
        self.nodes = nodes
        self.tail = tail


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class APIResource(Resource):
    """
    The JSON API, mounted at C{console.api_path} (e.g. C{/api/v1}).

    @param registry: the L{modcluster.cluster.registry.Registry}.
    @param release: the release string (as VERSION reports it).
    @param workers: the L{modcluster.proxy.workers.WorkerPool} when the data
        plane runs in worker processes, else C{None}.
    @param clock: an C{IReactorTime}; with it a listing of more than
        L{STREAM_SLICE} nodes is written in slices, one per reactor turn, so that
        a 1 000-node answer never holds the reactor (and the traffic it serves)
        for its whole length.  Without it the answer is built at once.
    """

    isLeaf = True

    def __init__(self, registry, release: str, workers=None, clock=None,
                 sessions=None) -> None:
        super().__init__()
        self._clock = clock
        self._registry = registry
        self._release = release
        self._pool = workers
        #: the node index of the registry's current structure version (one entry)
        self._node_index: BoundedMemo[int, NodeIndex] = BoundedMemo("api.node_index", 1)
        #: the L{modcluster.proxy.sessions.SessionTable}, or None (max_session_ids 0)
        self._session_table = sessions

    # -- HTTP ---------------------------------------------------------------

    def render(self, request):
        try:
            if request.method not in (b"GET", b"HEAD"):
                request.setHeader(b"allow", b"GET, HEAD")
                raise _APIError(http.NOT_ALLOWED, "method_not_allowed",
                                "the API is read-only: use GET or HEAD")
            body = self._dispatch(request)
            code = http.OK
        except _APIError as e:
            code = e.code
            body = {"error": e.error, "message": e.message}
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-security-policy",
                          b"default-src 'none'; frame-ancestors 'none'")
        if isinstance(body, _Listing):
            if (self._clock is not None and request.method == b"GET"
                    and len(body.nodes) > STREAM_SLICE):
                self._stream(request, body)
                return NOT_DONE_YET
            body = {"nodes": [node_json(node_view(self._registry, n)) for n in body.nodes],
                    **body.tail}
        # Compact: indenting runs the pure-Python encoder, four times slower on the
        # 1 000-node listings (pipe through `jq` to read).
        data = (_dumps(body) + "\n").encode("utf-8")
        request.setHeader(b"content-length", str(len(data)).encode())
        return data

    def _stream(self, request, listing: _Listing) -> None:
        """Write C{listing} a slice of nodes per reactor turn (same JSON as at once)."""
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        registry, nodes = self._registry, listing.nodes

        def write(start: int) -> None:
            if gone:
                return  # the client left: stop serialising
            chunk = ",".join(_dumps(node_json(node_view(registry, n)))
                             for n in nodes[start:start + STREAM_SLICE])
            head = '{"nodes":[' if start == 0 else ","
            request.write((head + chunk).encode("utf-8"))
            if start + STREAM_SLICE < len(nodes):
                self._clock.callLater(0, write, start + STREAM_SLICE)
                return
            tail = _dumps(listing.tail)
            request.write(("]," + tail[1:] + "\n").encode("utf-8"))
            request.finish()

        write(0)

    def _dispatch(self, request) -> Any:
        segments = [s for s in request.postpath]
        if segments and segments[-1] == b"":
            segments = segments[:-1]  # a trailing slash is the same resource
        try:
            parts = [s.decode("utf-8") for s in segments]
        except UnicodeDecodeError:
            raise _APIError(http.NOT_FOUND, "not_found", "no such resource") from None
        base = "/" + "/".join(quote(s.decode("utf-8", "replace"), safe="")
                              for s in request.prepath if s)
        if not parts:
            return self._root(base)
        head, rest = parts[0], parts[1:]
        if head == "nodes" and len(rest) == 1:
            return self._node(rest[0])
        if rest or head not in ENDPOINTS:
            raise _APIError(http.NOT_FOUND, "not_found",
                            f"no such resource: {'/'.join(parts)}; see {base or '/'}")
        if head == "events":
            return self._events(request)
        if head == "nodes":
            return self._nodes(request, base)
        if head == "sessions":
            return self._sessions(request)
        return getattr(self, "_" + head)()

    # -- endpoints ------------------------------------------------------------

    def _root(self, base: str) -> dict[str, Any]:
        base = base.rstrip("/")
        return {
            "release": self._release,
            "version": _version.__version__,
            "counts": dict(self._registry.counts),
            "endpoints": {name: f"{base}/{name}" for name in ENDPOINTS}
            | {"node": f"{base}/nodes/{{route}}"},
        }

    def _balancers(self) -> dict[str, Any]:
        members: dict[str, list[str]] = {}
        for node in self._registry.nodes():
            members.setdefault(node.settings.balancer, []).append(node.settings.route)
        balancers = self._registry.balancers
        return {"balancers": [balancer_json(balancers[name], members.get(name, []))
                              for name in sorted(balancers)]}

    def _workers(self) -> dict[str, Any]:
        pool = self._pool
        if pool is None:
            return {"mode": "in-process", "configured": 1, "restarts": 0, "workers": []}
        return {"mode": "processes", "configured": pool.count, "restarts": pool.restarts,
                "in_sync": pool.in_sync(), "workers": pool.status()}

    def _index(self) -> NodeIndex:
        """The node index of the current structure version (built once per version)."""
        return self._node_index.get(self._registry.table.generation, self._build_index)

    def _build_index(self, version: int) -> NodeIndex:
        return NodeIndex.build(self._registry, version)

    def _nodes(self, request, base: str) -> _Listing:
        args = request.args or {}
        unknown = sorted(k.decode("utf-8", "replace") for k in args
                         if k.decode("utf-8", "replace") not in NODE_PARAMS)
        if unknown:
            raise _APIError(http.BAD_REQUEST, "bad_request",
                            f"unknown parameter {unknown[0]!r}; nodes takes "
                            + ", ".join(sorted(NODE_PARAMS)))
        limit = _int_arg(args, b"limit", 0) or None
        offset = _nonnegative_arg(args, b"offset")
        field = _text_arg(args, b"in") or "any"
        if field not in FILTER_FIELDS:
            raise _APIError(http.BAD_REQUEST, "bad_request",
                            f"in must be one of {', '.join(FILTER_FIELDS)}")
        state = _text_arg(args, b"state")
        if state and state not in NODE_STATES:
            raise _APIError(http.BAD_REQUEST, "bad_request",
                            f"state must be one of {', '.join(sorted(NODE_STATES))}")
        balancer = _text_arg(args, b"balancer")
        domain = _text_arg(args, b"domain")
        flt = NodeFilter(query=_text_arg(args, b"q"), field=field, state=state,
                         balancer=balancer.lower() if balancer else None,
                         domain=domain if domain else None)
        if not flt.active and offset == 0 and limit is None:
            selected = self._registry.nodes()  # the whole list, as before
            total = len(selected)
        else:
            now = self._clock.seconds() if self._clock is not None else None
            entries = sorted((e for e, _ in flt.select(self._index(), now)),
                             key=lambda e: e.id)
            total = len(entries)
            end = total if limit is None else offset + limit
            selected = [e.node for e in entries[offset:end]]
        tail: dict[str, Any] = {"total": total, "offset": offset, "limit": limit,
                                "next": None}
        if limit is not None and offset + limit < total:
            query = [(k.decode(), v[-1].decode()) for k, v in args.items()
                     if k not in (b"offset",)] + [("offset", str(offset + limit))]
            tail["next"] = f"{base.rstrip('/')}/nodes?" + "&".join(
                f"{k}={quote(v, safe='')}" for k, v in query)
        return _Listing(selected, tail)

    def _node(self, route: str) -> dict[str, Any]:
        node = self._registry.node(route)
        if node is None:
            raise _APIError(http.NOT_FOUND, "not_found", f"no node with JVMRoute {route!r}")
        return {"node": node_json(node_view(self._registry, node))}

    def _vhosts(self) -> dict[str, Any]:
        vhosts = []
        for view in node_views(self._registry):
            for v in view.vhosts:
                vhosts.append({"node": view.route, "id": v.id, "aliases": list(v.aliases),
                               "contexts": [c.path for c in v.contexts]})
        return {"vhosts": vhosts}

    def _contexts(self) -> dict[str, Any]:
        contexts = []
        for view in node_views(self._registry):
            for v in view.vhosts:
                for c in v.contexts:
                    contexts.append({"node": view.route, "vhost": v.id,
                                     "aliases": list(v.aliases)} | _context_json(c))
        return {"contexts": contexts}

    def _sessions(self, request) -> dict[str, Any]:
        table = self._session_table
        if table is None:
            return {"tracked": False, "max": 0, "count": 0, "sessions": [],
                    "message": "session ids are not tracked (manager.max_session_ids = 0)"}
        limit = _int_arg(request.args or {}, b"limit", DEFAULT_EVENT_LIMIT)
        now = self._clock.seconds() if self._clock is not None else 0.0
        entries = table.entries(now) if self._clock is not None else table.entries(float("-inf"))
        route = _arg(request.args or {}, b"route")
        if route is not None:
            entries = [e for e in entries if e[1] == route]
        newest = entries[::-1][:limit]
        return {"tracked": True, "max": table.max_ids, "count": len(entries),
                "sessions": [{"id": sid, "route": r, "last_seen": t} for sid, r, t in newest]}

    def _events(self, request) -> dict[str, Any]:
        args = request.args or {}
        since = _float_arg(args, b"since")
        limit = _int_arg(args, b"limit", DEFAULT_EVENT_LIMIT)
        events = list(self._registry.events)
        if since is not None:
            # Paging forward: the oldest `limit` events after `since`, extended to
            # every event sharing the last one's time, so that the next page
            # (since = that time) loses nothing.
            after = [e for e in events if e.get("time", 0) > since]
            selected = after[:limit]
            if selected:
                last = selected[-1].get("time", 0)
                selected += [e for e in after[limit:] if e.get("time", 0) == last]
        else:
            selected = events[-limit:]
        out = [_json_safe(e) for e in selected]
        next_since = selected[-1].get("time") if selected else since
        return {"events": out, "count": len(out), "next_since": next_since}


def _arg(args: dict, name: bytes) -> Optional[str]:
    values = args.get(name)
    if not values:
        return None
    try:
        return values[-1].decode("ascii").strip()
    except UnicodeDecodeError:
        raise _APIError(http.BAD_REQUEST, "bad_request",
                        f"{name.decode()} must be a number") from None


def _float_arg(args: dict, name: bytes) -> Optional[float]:
    raw = _arg(args, name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise _APIError(http.BAD_REQUEST, "bad_request", f"{name.decode()} must be a number")
    return value


def _text_arg(args: dict, name: bytes) -> str:
    values = args.get(name)
    if not values:
        return ""
    try:
        return " ".join(values[-1].decode("utf-8").split())[:200]
    except UnicodeDecodeError:
        raise _APIError(http.BAD_REQUEST, "bad_request",
                        f"{name.decode()} is not UTF-8") from None


def _nonnegative_arg(args: dict, name: bytes) -> int:
    raw = _arg(args, name)
    if raw is None or raw == "":
        return 0
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise _APIError(http.BAD_REQUEST, "bad_request",
                        f"{name.decode()} must be an integer >= 0")
    return value


def _int_arg(args: dict, name: bytes, default: int) -> int:
    raw = _arg(args, name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise _APIError(http.BAD_REQUEST, "bad_request",
                        f"{name.decode()} must be a positive integer")
    return value
