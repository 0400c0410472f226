"""
Request routing and node election (balancing.md §2–§5, §8): a pure function of
a L{RoutingTable} snapshot, the request facts (host, path, cookie), the time and
the node counters.  The only side effect is C{node.rt.elected += 1} on the node
returned.

Cost per request (docs/balancing.md, "Performance"): the context lookup is
O(path depth) whatever the number of contexts; the election is one pass over the
records of the longest matching context, i.e. linear in the number of nodes that
serve it; a sticky hit also scans those records to find the node's own one.  No
sorting except for DeterministicFailover after a failed route.
"""

from __future__ import annotations

from typing import AbstractSet, Any, Optional

from attrs import field, frozen

from modcluster.balancer._request import match_path, session_id
from modcluster.cluster.model import (
    MEMO_MAX,
    MEMO_PATH_MAX,
    BalancerSettings,
    ContextEntry,
    ContextState,
    NodeEntry,
    NodeRuntime,
    RoutingTable,
)
from modcluster.memo import BoundedMemo

__all__ = ["RoutingPolicy", "Decision", "Refusal", "choose"]

_ENABLED = ContextState.ENABLED
_DISABLED = ContextState.DISABLED
_STOPPED = ContextState.STOPPED
_NOTHING: frozenset[int] = frozenset()
#: the smooth election's unit: a node of load factor f advances its virtual
#: pass by _STRIDE // f per election
_STRIDE = 1 << 24
#: _STRIDE // f as a float, by load factor f (MCMP's Load is at most 100;
#: index 0 is never read).  Virtual passes are floats holding integers:
#: CPython 3.11 adds and compares floats on specialised paths at the same
#: cost whatever their size, where ints past 2^30 leave theirs (every
#: request of a long-running process paid for it).  Integers below 2^53
#: add exactly, so the routes are the integer arithmetic's (docs/balancing.md,
#: "Smooth shares").
_STRIDES = [0.0] + [float(_STRIDE // f) for f in range(1, 101)]


@frozen
class RoutingPolicy:
    """
    Proxy-wide routing settings (httpd directives of mod_proxy_cluster).

    @ivar use_alias: UseAlias: a context is only used when the request's host name
        is one of its virtual host's aliases.
    @ivar deterministic_failover: DeterministicFailover (§3.4).
    @ivar worker_retry: seconds a node in error stays out before a sticky request
        may retry it (mod_proxy C{retry}).
    @ivar no_context_status: ResponseStatusCodeOnNoContext.
    @ivar unavailable_context_status: the status when a context matches but every
        record of the longest match is STOPPED, or DISABLED and the request has
        no session (a redeploy, a drain): 503 with Retry-After by default, 404
        as httpd answers.
    @ivar retry_after: Retry-After seconds suggested with a 503 (0: none).  The
        default is one node STATUS period, within which a recovered node is back.
    @ivar smooth: smooth shares (stride scheduling on C{rt.vpass}) instead of
        mod_proxy_cluster's lbstatus score with its periodic resets.
    @ivar slow_start: seconds over which a node that registers, is enabled,
        leaves the error state or comes back from ejection ramps up to its
        full share (0: off).
    @ivar slow_start_min_share: the share of its weight such a node starts with.
    @ivar eject_failures: consecutive response-level failures that eject a
        node (0: no ejection).
    @ivar eject_time: the first ejection's length in seconds; doubled at each
        repeated ejection.
    @ivar eject_max_time: the longest ejection; a node healthy that long after
        an ejection starts again from C{eject_time}.
    @ivar eject_max_share: most of a context's nodes that may be ejected at
        once (beyond, failures do not eject; if all usable nodes are ejected
        anyway, they are routed to: panic).
    @ivar eject_on_5xx: count 5xx answers (500, 502, 503, 504) as failures.
    """

    use_alias: bool = False
    deterministic_failover: bool = False
    worker_retry: float = 60.0
    no_context_status: int = 404
    retry_after: int = 10
    unavailable_context_status: int = 503
    smooth: bool = True
    slow_start: float = 30.0
    slow_start_min_share: float = 0.1
    eject_failures: int = 5
    eject_time: float = 30.0
    eject_max_time: float = 300.0
    eject_max_share: float = 0.5
    eject_on_5xx: bool = False
    #: the fast path's facts of the current snapshot (not a setting)
    routes: "RouteMemo" = field(init=False, factory=lambda: RouteMemo(), eq=False, repr=False)


class RouteMemo:
    """
    What the fast path of L{choose} derives from one routing snapshot alone
    (it is immutable, so they never go stale): L{_plain_route} by matched
    path (at most L{MEMO_MAX}, paths of at most L{MEMO_PATH_MAX}
    characters) and the balancers' sticky cookie names.  Owned by the
    L{RoutingPolicy} (one per data plane) rather than stored on the table;
    given another table, it forgets what it had (L{follow}).

    @ivar table: the snapshot the facts are from (held, so its identity is
        not reused meanwhile).
    @ivar paths: matched path -> L{_plain_route} of it.
    @ivar cookie_names: the sticky cookie names of the table's balancers, or
        C{None} until asked for.
    @ivar last_path: the path (the str object) of the last request routed
        by the fast path whose path needed no matching (no C{;}, C{%}, C{/.}
        or C{//}), and C{last_plain} its L{_plain_route}: a request with that
        very object (a remembered request head) skips the tests and the
        lookup.
    """

    __slots__ = ("table", "paths", "cookie_names", "last_path", "last_plain")

    def __init__(self) -> None:
        self.table: Optional[RoutingTable] = None
        self.paths: BoundedMemo[str, tuple] = BoundedMemo(
            "balancer.routes", MEMO_MAX, count_hits=False)
        self.cookie_names: Optional[tuple[str, ...]] = None
        self.last_path: Optional[str] = None
        self.last_plain: Optional[tuple] = None

    def follow(self, table: RoutingTable) -> None:
        """Hold the facts of C{table} from now on (none yet)."""
        self.table = table
        self.paths.clear()
        self.cookie_names = None
        self.last_path = self.last_plain = None


class Decision:
    """
    Where one request goes.  Built once per request (hot path: a plain slots
    class, no validation); on the fast path of L{choose}, once per record of a
    snapshot and returned to every request routed there.  Never changed once
    built.

    @ivar node: the chosen node.
    @ivar context: the context record chosen on that node (count C{in_flight} /
        C{requests} on C{context.rt}).
    @ivar balancer: that node's balancer settings (C{max_attempts},
        C{wait_worker}, sticky names).
    @ivar session_id: the sticky session id found for this balancer (cookie
        first, then path parameter), or C{None}.
    @ivar session_route: the text after the first C{.} of C{session_id} (C{None}
        without a non-empty one); AJP sends it as C{jvm_route}.
    @ivar sticky: the node was chosen because of the session route.
    @ivar route_changed: a route was present but the request goes elsewhere
        (httpd C{BALANCER_ROUTE_CHANGED}); never set when StickySession=No.
    @ivar strip: C{None}, C{"cookie"} or C{"path"}: StickySessionRemove says the
        session id must be removed from the cookie or the path before forwarding
        (use L{strip_session}).
    @ivar cookie_name: the balancer's sticky cookie name.
    @ivar path_name: the balancer's sticky path-parameter name.
    @ivar domain: the Domain of the session route's node (also of a removed
        node remembered in C{table.removed_domains}); C{""} if none.
    @ivar retrying: the node is in error and this sticky request is its retry
        after C{worker_retry} (mod_proxy C{retry}): the caller clears the error
        when the request succeeds and sets it again when it fails.
    """

    __slots__ = ("node", "context", "balancer", "session_id", "session_route", "sticky",
                 "route_changed", "strip", "cookie_name", "path_name", "domain", "retrying")

    def __init__(self, node: NodeEntry, context: ContextEntry, balancer: BalancerSettings,
                 session_id: Optional[str], session_route: Optional[str], sticky: bool,
                 route_changed: bool, strip: Optional[str], domain: str = "",
                 retrying: bool = False) -> None:
        self.node = node
        self.context = context
        self.balancer = balancer
        self.session_id = session_id
        self.session_route = session_route
        self.sticky = sticky
        self.route_changed = route_changed
        self.strip = strip
        self.cookie_name = balancer.sticky_cookie
        self.path_name = balancer.sticky_path
        self.domain = domain
        self.retrying = retrying

    def __repr__(self) -> str:
        return (f"<Decision node={self.node.route!r} context={self.context.path!r} "
                f"balancer={self.balancer.name!r} session_route={self.session_route!r} "
                f"sticky={self.sticky} route_changed={self.route_changed} "
                f"strip={self.strip!r} retrying={self.retrying}>")


@frozen
class Refusal:
    """
    The request cannot be routed.

    @ivar status: C{no_context_status} (404 by default) when no context matches;
        503 when no node can take it (or a forced sticky route is down).
    @ivar reason: short text for logs and the error page.
    @ivar wait_worker: the balancer's WaitWorker for a 503 that comes from the
        election: the caller may call L{choose} again for that long
        (balancing.md §3.5).  0 for a forced sticky route without domain (httpd
        answers that one at once).
    @ivar retry_after: suggested Retry-After seconds for a 503 (0: none).
    """

    status: int
    reason: str
    wait_worker: float = 0.0
    retry_after: int = 0


def _restricted(records: tuple[ContextEntry, ...], index, name: str
                ) -> tuple[ContextEntry, ...]:
    """
    The records at the longest context path that the balancer C{name} has among
    the prefixes of the request path (§2.2 with the balancer filter), given the
    unrestricted longest match C{records}.  Usually C{records} itself.
    """
    for rec in records:
        if rec.node.balancer == name:
            return records
    # Walk the shorter prefixes of the same request path (the same sequence as
    # RoutingTable.longest_match: cut at each '/', then '/').
    prefix = records[0].path
    while prefix != "/":
        i = prefix.rfind("/")
        prefix = prefix[:i] if i > 0 else "/"
        found = index.get(prefix)
        if found:
            for rec in found:
                if rec.node.balancer == name:
                    return found
    return ()


def _id_hash(sid: str) -> Optional[int]:
    """
    Sum of the bytes of the session id part before the first C{.} (leading dots
    skipped, as C{apr_strtok} does); C{None} when that part is empty.
    """
    part = sid.lstrip(".")
    dot = part.find(".")
    if dot >= 0:
        part = part[:dot]
    if not part:
        return None
    try:
        return sum(part.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return sum(map(ord, part))


def _route_key(rec: ContextEntry) -> bytes:
    # strcmp order of the JVMRoutes (UTF-8 byte order == code point order).
    return rec.node.route.encode("utf-8", "surrogatepass")


def _elect_deterministic(recs, name, has_session, exclude, dom, forced, h,
                         now: Optional[float] = None) -> tuple[Optional[ContextEntry], bool]:
    """
    The election of DeterministicFailover (§3.4): per pass, the candidates
    sorted by JVMRoute and the one at C{h mod n}.  Returns (record, domain_ok).
    With C{now}, nodes ejected at that time are left out.
    """
    in_domain: dict[int, ContextEntry] = {}
    active: dict[int, ContextEntry] = {}
    standby: dict[int, ContextEntry] = {}
    for rec in recs:
        n = rec.node
        if n.balancer != name:
            continue
        st = rec.state
        if st is not _ENABLED and (st is _STOPPED or not has_session):
            continue
        rt = n.rt
        f = rt.lbfactor
        if f < 0 or rt.in_error or rt.removed or (exclude and n.id in exclude):
            continue
        if now is not None and rt.ejected_until > now:
            continue
        if f == 0:
            standby.setdefault(n.id, rec)
            continue
        if dom and n.domain == dom:
            in_domain.setdefault(n.id, rec)
        active.setdefault(n.id, rec)
    passes = [(in_domain, True)] if dom else []
    if not forced:
        passes += [(active, False), (standby, False)]
    for candidates, domain_ok in passes:
        if candidates:
            ordered = sorted(candidates.values(), key=_route_key)
            return ordered[h % len(ordered)], domain_ok
    return None, False


def _stride(rt, now: float, policy: RoutingPolicy) -> float:
    """How far one election moves a node's virtual pass: the inverse of its
    weight (load factor, times its slow start share), a float holding an
    integer (L{_STRIDES})."""
    f = rt.lbfactor
    stride = _STRIDES[f] if f < len(_STRIDES) else float(_STRIDE // f)
    slow = policy.slow_start
    if slow > 0:
        w = now - rt.warm_from
        if w < slow:  # slow start: weight * max(w / slow, min share)
            m = slow * policy.slow_start_min_share
            stride = float(int(stride * slow / (w if w > m else m)))
    return stride


def _advance(rt, runner_up, now: float, policy: RoutingPolicy) -> None:
    """
    The smooth election's only bookkeeping: the winner's virtual pass moves
    on by its stride.  In steady state every node's pass minus its stride is
    at most the lowest pass (stride scheduling's invariant); a node that fell
    behind (new, back from error or ejection, idle in this context) is first
    brought up to the runner-up's pass minus the runner-up's stride, so it
    takes its share from now on instead of a burst that makes up for the past.
    """
    v = rt.vpass
    if runner_up is not None and runner_up.lbfactor > 0:
        lag = runner_up.vpass - _stride(runner_up, now, policy)
        if lag > v:
            v = lag
    rt.vpass = v + _stride(rt, now, policy)


def _no_context(policy: RoutingPolicy, reason: str) -> Refusal:
    if reason is _UNAVAILABLE:
        status = policy.unavailable_context_status
        return Refusal(status, reason, 0.0, policy.retry_after if status == 503 else 0)
    return Refusal(policy.no_context_status, reason)


#: the reason when the longest matching context has no usable record: the
#: application is there but stopped or disabled (L{_no_context} tells it apart)
_UNAVAILABLE = "every context matching the request is stopped or disabled"


def _no_cookie_session(memo: RouteMemo, table: RoutingTable, cookie: str) -> bool:
    """
    True when C{cookie} cannot hold a session id for any balancer of the table
    (none of their sticky cookie names occurs in it), so the request is routed
    as one without a cookie.
    """
    names = memo.cookie_names
    if names is None:
        names = memo.cookie_names = tuple(
            {bs.sticky_cookie for bs in table.balancers.values() if bs.sticky_cookie})
    for name in names:
        if name in cookie:
            return False
    return True


#: What L{_plain_route} finds for a path: (balancer or None, candidates,
#: reason, the candidates' L{NodeRuntime.warm_latest} cell).
_PlainRoute = tuple[
    Optional[BalancerSettings],
    tuple[tuple[ContextEntry, int, NodeRuntime, "Decision"], ...],
    str,
    list[float],
]
#: the warm_latest cell of candidates whose runtimes do not share one (a
#: table built by hand from runtimes of several registries): +inf, so that
#: every election tests slow start per node (_advance)
_UNSHARED_WARM = [float("inf")]
#: the cell of a route without candidates (never read)
_NO_WARM = [float("-inf")]


def _plain_route(memo: RouteMemo, table: RoutingTable, mpath: str) -> _PlainRoute:
    """
    What L{choose} needs for a request to C{mpath} that carries no session
    (no sticky cookie name in the cookie, no C{;} in the path) and no UseAlias; only the
    snapshot decides it, so it is memoised (L{RouteMemo}).  Returns (balancer settings, candidates,
    reason): the balancer of the first ENABLED record (§2.3 step 2) and, in
    record order, C{(record, node id, node runtime, decision)} for the ENABLED
    records of that balancer, where C{decision} is the L{Decision} for that
    record (it only depends on the snapshot, and a Decision is never changed
    once built, so every such request shares it); or (C{None}, (), reason for
    the 404).
    """
    records = table.longest_match(mpath)
    found: _PlainRoute
    if not records:
        found = (None, (), "no context matches the request", _NO_WARM)
    else:
        balancers = table.balancers
        b = None
        for rec in records:
            if rec.state is _ENABLED:
                b = balancers.get(rec.node.balancer)
                if b is not None:
                    break
        if b is None:
            found = (None, (), _UNAVAILABLE, _NO_WARM)
        else:
            name = b.name
            cands = tuple((rec, rec.node.id, rec.node.rt,
                           Decision(rec.node, rec, b, None, None, False, False, None))
                          for rec in records
                          if rec.state is _ENABLED and rec.node.balancer == name)
            cells = {id(c[2].warm_latest): c[2].warm_latest for c in cands}
            found = (b, cands, "",
                     next(iter(cells.values())) if len(cells) == 1 else _UNSHARED_WARM)
    if len(mpath) <= MEMO_PATH_MAX:
        memo.paths.put(mpath, found)
    return found


def choose(table: RoutingTable, host: Optional[str], path: str, cookie: Optional[str],
           now: float, policy: RoutingPolicy,
           exclude: AbstractSet[int] = _NOTHING) -> "Decision | Refusal":
    """
    Route one request (balancing.md §2.2–§5, §8).

    @param table: the current routing snapshot.
    @param host: the request's host name as L{parse_host} returns it (only used
        with C{policy.use_alias}).
    @param path: the raw request-target path, without the query string (it may
        carry C{;jsessionid=…} parameters and percent-escapes).  Decode the
        request line as UTF-8 with C{surrogateescape} (or ASCII).
    @param cookie: the C{Cookie} header values joined with C{"; "}, or C{None}.
    @param now: the current time (C{clock.seconds()}), for the error retry.
    @param exclude: ids of nodes already tried for this request (failover).
    @return: a L{Decision} (and the node's C{elected} counter was incremented),
        or a L{Refusal}.
    """
    # -- fast path: no session information, no UseAlias (the common request) ----
    # The same decisions as below with has_session False (so no route, no
    # domain, no DeterministicFailover hash), on facts memoised per snapshot.
    memo = policy.routes
    if memo.table is not table:
        memo.follow(table)
    plain: Optional[tuple]  # (the memo's value type, as RouteMemo.paths)
    if path is memo.last_path and not cookie:
        # the previous such request's path, the same object (a remembered
        # request head), and no cookie: known free of ';', '%', '/.' and '//'
        # (last_path is only ever set without UseAlias)
        plain = memo.last_plain
    elif not policy.use_alias and (not cookie or _no_cookie_session(memo, table, cookie)):
        plain = None
        if path is memo.last_path:
            # the previous such request's path, the same object (a remembered
            # request head): known free of ';', '%', '/.' and '//'
            plain = memo.last_plain
        elif ";" not in path:
            if "%" in path or "/." in path or "//" in path:
                mpath = match_path(path)
                plain = memo.paths.entries.get(mpath)
                if plain is None:
                    plain = _plain_route(memo, table, mpath)
            else:
                plain = memo.paths.entries.get(path)
                if plain is None:
                    plain = _plain_route(memo, table, path)
                memo.last_path = path
                memo.last_plain = plain
    else:
        plain = None
    if plain is not None:
        b, cands, reason, warm_latest = plain
        if b is None:
            return _no_context(policy, reason)
        best = standby = panic = None
        best_score = 0
        if policy.smooth:
            # Stride scheduling: the node with the lowest virtual pass wins and
            # its pass moves on by its stride (inverse of its weight); see
            # _advance for the runner-up.
            best_rt: Any = None  # (set with best: no test of its own)
            second = None
            second_score = 0
            for _, nid, rt, decision in cands:
                f = rt.lbfactor
                if f < 0 or rt.in_error or rt.removed or (exclude and nid in exclude):
                    continue
                if f == 0:
                    if standby is None:
                        standby = decision
                    continue
                if rt.ejected_until > now:
                    if panic is None:
                        panic = decision
                    continue
                v = rt.vpass
                if best is None or v < best_score:
                    second, second_score = best_rt, best_score
                    best, best_score, best_rt = decision, v, rt
                elif second is None or v < second_score:
                    second, second_score = rt, v
            if best is not None:
                # _advance, inlined for the common case: no node of the
                # candidates' registry ramps up now (no warm_from within
                # slow_start before now, NodeRuntime.warm_latest; a warm_from
                # still ahead, an ejection's end, sends even slow start off to
                # _advance, which then gives the same strides)
                if now - warm_latest[0] < policy.slow_start:
                    _advance(best_rt, second, now, policy)
                else:
                    try:
                        if second is not None:
                            lag = second_score - _STRIDES[second.lbfactor]
                            if lag > best_score:
                                best_score = lag
                        best_rt.vpass = best_score + _STRIDES[best_rt.lbfactor]
                    except IndexError:  # a load factor above 100 (a table built by hand)
                        _advance(best_rt, second, now, policy)
                best_rt.elected += 1
                return best
        else:
            for _, nid, rt, decision in cands:
                f = rt.lbfactor
                if f < 0 or rt.in_error or rt.removed or (exclude and nid in exclude):
                    continue
                if f == 0:
                    if standby is None:
                        standby = decision
                    continue
                if rt.ejected_until > now:
                    if panic is None:
                        panic = decision
                    continue
                score = ((rt.elected - rt.oldelected) * 1000) // f + rt.lbstatus
                if best is None or best_score > score:
                    best, best_score = decision, score
        if best is None:
            best = standby or panic
            if best is None:
                return Refusal(503, f"no usable node in balancer {b.name}", b.wait_worker,
                               policy.retry_after)
        best.node.rt.elected += 1
        return best

    # -- §2.1 the path used for matching, §2.2 the longest matching context ------
    mpath = path
    if ";" in path or "%" in path or "/." in path or "//" in path:
        mpath = match_path(path)
    if policy.use_alias:
        if host is None:
            return _no_context(policy, "no Host header (UseAlias)")
        index = table.by_alias.get(host)
        records = table.longest_match(mpath, host) if index else ()
    else:
        index = table.contexts
        records = table.longest_match(mpath)
    if not records:
        return _no_context(policy, "no context matches the request")

    balancers = table.balancers
    maybe_session = bool(cookie) or ";" in path
    # The session id for the sticky names (c_name, p_name); recomputed only when
    # a balancer uses other names than the previous one.
    c_name = p_name = None
    sid = src = None

    # -- §2.3 step 1: the balancer named by a session route ----------------------
    b = None
    recs = records
    route_node: Optional[NodeEntry] = None
    known_route = False
    domain = ""
    if maybe_session:
        for bs in balancers.values():
            if not bs.sticky_session:
                continue  # StickySession=No: no session routing at all (§4.5)
            if bs.sticky_cookie != c_name or bs.sticky_path != p_name:
                c_name, p_name = bs.sticky_cookie, bs.sticky_path
                sid, src = session_id(cookie, path, c_name, p_name)
            if sid is None:
                continue
            dot = sid.find(".")
            if dot < 0 or dot == len(sid) - 1:
                continue
            name = bs.name
            cand = _restricted(records, index, name)
            for rec in cand:  # a session is present: ENABLED or DISABLED will do
                if rec.node.balancer == name and rec.state is not _STOPPED:
                    break
            else:
                continue
            route = sid[dot + 1:]
            node = table.by_route.get(route)
            if node is not None and node.balancer == name:
                dom = node.domain
            else:
                remembered = table.removed_domains.get(route)
                if remembered is None or remembered[0] != name:
                    continue
                node, dom = None, remembered[1]
            b, recs, route_node, known_route, domain = bs, cand, node, True, dom
            break

    # -- §2.3 step 2: the balancer of the first usable record ---------------------
    if b is None:
        for rec in records:
            st = rec.state
            if st is _STOPPED:
                continue
            rec_b = balancers.get(rec.node.balancer)
            if rec_b is None:
                continue
            if st is _DISABLED:
                if not maybe_session:
                    continue
                if rec_b.sticky_cookie != c_name or rec_b.sticky_path != p_name:
                    c_name, p_name = rec_b.sticky_cookie, rec_b.sticky_path
                    sid, src = session_id(cookie, path, c_name, p_name)
                if sid is None:
                    continue
            b = rec_b
            break
        else:
            return _no_context(policy, _UNAVAILABLE)
        if not maybe_session:
            sid = src = None
        elif b.sticky_cookie != c_name or b.sticky_path != p_name:
            sid, src = session_id(cookie, path, b.sticky_cookie, b.sticky_path)

    has_session = sid is not None
    route_text = None
    if sid is not None:
        dot = sid.find(".")
        if 0 <= dot < len(sid) - 1:
            route_text = sid[dot + 1:]
    sticky_on = b.sticky_session

    # -- §4.3 honour the route -------------------------------------------------------
    if route_node is not None:
        rt = route_node.rt
        nid = route_node.id
        if ((not exclude or nid not in exclude) and rt.usable(now, policy.worker_retry)
                and (rt.ejected_until <= now or b.sticky_force)):
            for rec in recs:
                if rec.node.id == nid and rec.state is not _STOPPED:
                    rt.elected += 1
                    return Decision(route_node, rec, b, sid, route_text, True, False, None,
                                    domain, rt.in_error)
    forced = False
    if known_route and b.sticky_force:
        if not domain:
            return Refusal(503, f"session route {route_text} unavailable "
                           "(StickySessionForce, no domain)", 0.0, policy.retry_after)
        forced = True

    # -- §3 election: domain pass, all, hot standby ------------------------------
    name = b.name
    dom = domain if known_route else ""
    h = None
    if (policy.deterministic_failover and sticky_on and sid is not None and "." in sid):
        h = _id_hash(sid)
    if h is not None:
        winner, domain_ok = _elect_deterministic(recs, name, has_session, exclude, dom,
                                                 forced, h, now)
        if winner is None:  # every usable node ejected: route anyway (panic)
            winner, domain_ok = _elect_deterministic(recs, name, has_session, exclude, dom,
                                                     forced, h)
    else:
        # The hot loop: linear in the records of the matched context.  Plain
        # attribute reads only.
        best = dbest = standby = panic = None
        best_score = dscore = 0
        smooth = policy.smooth
        second = second_d = None
        second_score = second_dscore = 0
        for rec in recs:
            st = rec.state
            if st is not _ENABLED and (st is _STOPPED or not has_session):
                continue
            n = rec.node
            rt = n.rt
            f = rt.lbfactor
            if f < 0 or rt.in_error or rt.removed:
                continue
            if n.balancer != name or (exclude and n.id in exclude):
                continue
            if f == 0:
                if standby is None:
                    standby = rec
                continue
            if rt.ejected_until > now:
                if panic is None:
                    panic = rec
                continue
            if smooth:
                score = rt.vpass
            else:
                score = ((rt.elected - rt.oldelected) * 1000) // f + rt.lbstatus
            if best is None or best_score > score:
                second, second_score = best, best_score
                best, best_score = rec, score
            elif second is None or second_score > score:
                second, second_score = rec, score
            if dom and n.domain == dom:
                if dbest is None or dscore > score:
                    second_d, second_dscore = dbest, dscore
                    dbest, dscore = rec, score
                elif second_d is None or second_dscore > score:
                    second_d, second_dscore = rec, score
        domain_ok = dbest is not None
        if domain_ok:
            winner = dbest
        elif forced:
            winner = None
        else:
            winner = best if best is not None else (standby or panic)
        if smooth and winner is not None:
            winner_rt = winner.node.rt
            if winner_rt.lbfactor > 0 and (winner is best or winner is dbest):
                runner_up = second_d if winner is dbest else second
                _advance(winner_rt, runner_up.node.rt if runner_up is not None else None,
                         now, policy)

    if winner is None:
        if forced:
            reason = f"no usable node in domain {domain} for session route {route_text}"
        else:
            reason = f"no usable node in balancer {name}"
        return Refusal(503, reason, b.wait_worker, policy.retry_after)

    node = winner.node
    node.rt.elected += 1
    strip = src if (known_route and b.sticky_remove and not domain_ok) else None
    return Decision(node, winner, b, sid, route_text, False,
                    sticky_on and route_text is not None, strip, domain)
