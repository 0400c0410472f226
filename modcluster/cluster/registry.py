"""
The cluster registry: balancers, nodes, virtual hosts (alias groups) and
contexts, changed by MCMP commands and console commands, read by everyone else
through immutable L{RoutingTable} snapshots and plain view records.

It is pure state: no I/O, time from an injected clock (anything with
C{seconds()}), errors as L{ClusterError}.  Every change emits one structured
event (twisted.logger and a bounded in-memory list for the JSON API).
"""

from __future__ import annotations

import contextlib
import heapq
from collections import deque
from typing import Callable, Iterable, Optional, Sequence

import attrs
from attrs import frozen
from twisted.logger import Logger

from modcluster.cluster import errors
from modcluster.cluster.errors import ClusterError
from modcluster.cluster.model import (
    BalancerSettings,
    ContextEntry,
    ContextRuntime,
    ContextState,
    NodeEntry,
    NodeRuntime,
    NodeSettings,
    RoutingTable,
    TableSource,
    recalc_lbstatus,
)

__all__ = ["AppResult", "Limits", "Registry", "APP_COMMANDS"]

APP_COMMANDS = {
    "ENABLE-APP": ContextState.ENABLED,
    "DISABLE-APP": ContextState.DISABLED,
    "STOP-APP": ContextState.STOPPED,
    "REMOVE-APP": None,
}

#: Seconds a removed node's domain is remembered for session failover.
DOMAIN_MEMORY = 300.0


@frozen
class Limits:
    max_nodes: int = 5000
    max_hosts: int = 20000
    max_contexts: int = 50000
    wait_before_remove: float = 10.0
    lbstatus_recalc_time: float = 5.0
    idle_failures_before_remove: int = 60
    worker_retry: float = 60.0


@frozen
class AppResult:
    """What an APP command did; C{requests} is set for a context-level STOP-APP."""

    route: str
    alias: str = ""
    contexts: tuple[str, ...] = ()
    requests: Optional[int] = None


class _Ids:
    """Slot-like ids: the smallest free positive integer, reused after release."""

    def __init__(self) -> None:
        self._next = 1
        self._free: list[int] = []

    def take(self) -> int:
        # Never "take id N" from outside: a saved id is not a size (an id of
        # 10**30 in a state file once made start-up allocate without bound).
        if self._free:
            return heapq.heappop(self._free)
        self._next += 1
        return self._next - 1

    def release(self, i: int) -> None:
        heapq.heappush(self._free, i)


class _Context:
    __slots__ = ("id", "path", "state", "rt")

    def __init__(self, id: int, path: str, state: ContextState) -> None:
        self.id = id
        self.path = path
        self.state = state
        self.rt = ContextRuntime()


class _VHost:
    __slots__ = ("id", "aliases", "contexts")

    def __init__(self, id: int) -> None:
        self.id = id
        self.aliases: dict[str, int] = {}  # alias -> alias record id
        self.contexts: dict[str, _Context] = {}


class _Node:
    __slots__ = ("id", "settings", "rt", "vhosts", "removed_at", "registered_at")

    def __init__(self, id: int, settings: NodeSettings, now: float,
                 warm_latest: list[float]) -> None:
        self.id = id
        self.settings = settings
        self.rt = NodeRuntime(now, warm_latest=warm_latest)
        self.vhosts: dict[int, _VHost] = {}
        self.removed_at = 0.0
        self.registered_at = now

    @property
    def route(self) -> str:
        return self.settings.route

    def vhost_for_alias(self, alias: str) -> Optional[_VHost]:
        for vhost in self.vhosts.values():
            if alias in vhost.aliases:
                return vhost
        return None


class Registry(TableSource):
    """
    @param clock: provides C{seconds()}.
    @param limits: quotas and timers.
    @param default_balancer: balancer for CONFIGs without C{Balancer}.
    """

    log = Logger()

    def __init__(self, clock, limits: Limits = Limits(),
                 default_balancer: str = "mycluster", event_log_size: int = 1000) -> None:
        self._clock = clock
        self.limits = limits
        self.default_balancer = default_balancer.lower()
        self.balancers: dict[str, BalancerSettings] = {}
        self._nodes: dict[str, _Node] = {}
        self._node_ids = _Ids()
        self._alias_ids = _Ids()
        self._context_ids = _Ids()
        self._alias_count = 0
        self._context_count = 0
        self._removed_domains: dict[str, tuple[str, str, float]] = {}
        self._generation = 0
        self._table = RoutingTable.empty()  # (TableSource: tells the followers)
        self.events: deque[dict] = deque(maxlen=event_log_size)
        self._structure_observers: list[Callable[[], None]] = []
        self._node_observers: list[Callable[[NodeRuntime], None]] = []
        #: replaying a saved state (L{restoring}): no per-command events
        self._quiet = False
        #: the latest C{warm_from} of this registry's node runtimes (their
        #: L{NodeRuntime.warm_latest}, one cell they share): the election
        #: skips its slow start test while no node of them ramps up
        self.warm_latest = [float("-inf")]

    # -- events ------------------------------------------------------------

    def on_structure_change(self, callback: Callable[[], None]) -> None:
        """Call C{callback()} whenever nodes, aliases or contexts change (persistence)."""
        self._structure_observers.append(callback)

    def on_node_change(self, callback: Callable[[NodeRuntime], None]) -> None:
        """
        Call C{callback(rt)} whenever what the election reads of one node changes
        without a structure change: its load factor or error state (the data-plane
        workers get these as small updates instead of a new snapshot).
        """
        self._node_observers.append(callback)

    def _node_changed(self, node: _Node) -> None:
        for callback in self._node_observers:
            try:
                callback(node.rt)
            except Exception:
                self.log.failure("node observer failed")

    def record(self, kind: str, fmt: str, *, log: bool = True, **fields) -> None:
        """
        Record an event that is not a registry change (a console command, an MCMP
        refusal): kept in L{events} for the JSON API like the cluster's own
        events, and logged with C{fmt} unless C{log} is false (the caller logs
        it itself).
        """
        if log:
            self._event(kind, fmt, **fields)
            return
        self.events.append({"time": self._clock.seconds(), "event": kind, **fields})

    def _event(self, kind: str, fmt: str, **fields) -> None:
        if self._quiet:
            return
        self.events.append({"time": self._clock.seconds(), "event": kind, **fields})
        self.log.info(fmt, cluster_event=kind, **fields)

    def _changed(self) -> None:
        self._table = None
        if self._quiet:
            return
        for callback in self._structure_observers:
            try:
                callback()
            except Exception:
                self.log.failure("structure observer failed")

    # -- lookup ------------------------------------------------------------

    def node(self, route: str) -> Optional[_Node]:
        return self._nodes.get(route)

    def nodes(self) -> list[_Node]:
        """All nodes (removed ones until purged), in id order."""
        return sorted(self._nodes.values(), key=lambda n: n.id)

    def _live_node(self, route: str) -> _Node:
        node = self._nodes.get(route)
        if node is None or node.rt.removed:
            raise errors.mem_cant_read_node(route)
        return node

    @property
    def table(self) -> RoutingTable:
        """The current routing snapshot (rebuilt lazily after a change)."""
        if self._table is None:
            self._table = self._build_table()
        return self._table

    def snapshot(self) -> RoutingTable:
        """
        L{table}, as a bound method for the data plane's C{table} callable
        (C{ProxyFactory}, once per request): one Python call, where a
        C{lambda} reading the property makes two.
        """
        table = self._table
        if table is None:
            table = self._table = self._build_table()
        return table

    def _build_table(self) -> RoutingTable:
        self._generation += 1
        nodes = []
        by_route = {}
        contexts: dict[str, list[ContextEntry]] = {}
        by_alias: dict[str, dict[str, list[ContextEntry]]] = {}
        removed_domains = {r: (b, d) for r, (b, d, _) in self._removed_domains.items()}
        for node in self.nodes():
            if node.rt.removed:
                # Until it is purged, a removed node's sessions still fail over
                # inside its domain (mod_cluster finds it in the node table).
                if node.settings.domain:
                    removed_domains[node.route] = (node.settings.balancer,
                                                   node.settings.domain)
                continue
            entry = NodeEntry(node.id, node.settings, node.rt)
            nodes.append(entry)
            by_route[node.route] = entry
            for vhost in node.vhosts.values():
                aliases = frozenset(vhost.aliases)
                for ctx in vhost.contexts.values():
                    ce = ContextEntry(ctx.id, ctx.path, ctx.state, entry, vhost.id,
                                      aliases, ctx.rt)
                    contexts.setdefault(ctx.path, []).append(ce)
                    for alias in aliases:
                        by_alias.setdefault(alias, {}).setdefault(ctx.path, []).append(ce)
        return RoutingTable(
            generation=self._generation,
            nodes=tuple(nodes),
            by_route=by_route,
            balancers=dict(self.balancers),
            contexts={k: tuple(v) for k, v in contexts.items()},
            by_alias={a: {k: tuple(v) for k, v in m.items()} for a, m in by_alias.items()},
            removed_domains=removed_domains,
        )

    # -- CONFIG ------------------------------------------------------------

    def config(self, balancer: BalancerSettings, settings: NodeSettings,
               groups: Sequence[tuple[Sequence[str], Sequence[str]]] = ()) -> None:
        """
        Register or update a node and its balancer (MCMP CONFIG).

        @param groups: (aliases, contexts) pairs; each pair becomes one virtual
            host whose contexts start STOPPED.
        @raise ClusterError: MEM when a quota is reached or another node already
            uses the same backend; nothing is changed then.
        """
        route = settings.route
        now = self._clock.seconds()
        existing = self._nodes.get(route)
        for other in self._nodes.values():
            if (other is not existing and not other.rt.removed
                    and other.settings.worker_key() == settings.worker_key()):
                raise errors.mem_same_worker()
        if existing is None and len(self._nodes) >= self.limits.max_nodes:
            self._purge(now, force=True)
            if len(self._nodes) >= self.limits.max_nodes:
                raise errors.mem_cant_update_node(route)
        if balancer.name not in self.balancers and len(self.balancers) >= self.limits.max_hosts:
            raise errors.mem_cant_update_balancer(route)
        new_aliases = sum(len(a) for a, _ in groups)
        new_contexts = sum(len(c) for _, c in groups)
        if self._alias_count + new_aliases > self.limits.max_hosts:
            raise errors.mem_cant_update_alias(route, ",".join(groups[0][0]))
        if self._context_count + new_contexts > self.limits.max_contexts:
            raise errors.mem_cant_update_context(route, ",".join(groups[0][1]),
                                                 ",".join(groups[0][0]))

        old_balancer = self.balancers.get(balancer.name)
        self.balancers[balancer.name] = balancer
        if old_balancer != balancer:
            self._event("balancer.updated", "balancer {balancer} settings set by {route}",
                        balancer=balancer.name, route=route)

        if existing is None:
            node = _Node(self._node_ids.take(), settings, now, self.warm_latest)
            self._nodes[route] = node
            self._event("node.registered",
                        "node {route} registered: {worker} balancer={balancer} domain={domain!r}",
                        route=route, worker=settings.worker_name, balancer=settings.balancer,
                        domain=settings.domain)
        elif existing.settings.hard_key() != settings.hard_key():
            # The same JVMRoute now names another backend (e.g. the node restarted on
            # another port).  Replace it: its contexts belonged to the old instance.
            old = existing.settings
            self._drop_node(existing)
            node = _Node(self._node_ids.take(), settings, now, self.warm_latest)
            self._nodes[route] = node
            self._event("node.replaced",
                        "node {route} re-registered as {worker} (was {old_worker}); "
                        "its contexts were reset",
                        route=route, worker=settings.worker_name, old_worker=old.worker_name)
        else:
            node = existing
            revived = node.rt.removed
            changed = node.settings != settings
            node.settings = settings
            if revived:
                node.rt.removed = False
                node.removed_at = 0.0
                self._event("node.revived", "node {route} registered again before removal",
                            route=route)
            elif changed:
                self._event("node.updated", "node {route} updated its settings", route=route)
        for aliases, contexts in groups:
            vhost = self._vhost_for_any(node, aliases) or self._new_vhost(node)
            self._add_aliases(node, vhost, aliases)
            for path in contexts:
                if path not in vhost.contexts:
                    self._set_context(node, vhost, path, ContextState.STOPPED, create=True)
        self._changed()

    @staticmethod
    def _vhost_for_any(node: _Node, aliases: Iterable[str]) -> Optional[_VHost]:
        """The vhost of the first alias the node already has (mod_cluster 2.x-pre385)."""
        for alias in aliases:
            vhost = node.vhost_for_alias(alias)
            if vhost is not None:
                return vhost
        return None

    def _new_vhost(self, node: _Node) -> _VHost:
        vhost = _VHost(max(node.vhosts, default=0) + 1)
        node.vhosts[vhost.id] = vhost
        return vhost

    def _add_aliases(self, node: _Node, vhost: _VHost, aliases: Iterable[str]) -> None:
        for alias in aliases:
            if alias in vhost.aliases or node.vhost_for_alias(alias) is not None:
                continue
            if self._alias_count >= self.limits.max_hosts:
                raise errors.mem_cant_update_alias(node.route, alias)
            vhost.aliases[alias] = self._alias_ids.take()
            self._alias_count += 1

    def _set_context(self, node: _Node, vhost: _VHost, path: str,
                     state: ContextState, create: bool) -> Optional[_Context]:
        ctx = vhost.contexts.get(path)
        if ctx is None:
            if not create:
                return None
            if self._context_count >= self.limits.max_contexts:
                raise errors.mem_cant_update_context(node.route, path,
                                                     ",".join(vhost.aliases))
            ctx = _Context(self._context_ids.take(), path, state)
            vhost.contexts[path] = ctx
            self._context_count += 1
            self._event("context.added", "context {path} of {route} added as {state}",
                        route=node.route, path=path, vhost=vhost.id, state=state.name)
        elif ctx.state != state:
            old = ctx.state
            ctx.state = state
            self._event("context.state", "context {path} of {route}: {old} -> {state}",
                        route=node.route, path=path, vhost=vhost.id, old=old.name,
                        state=state.name)
        return ctx

    def _delete_vhost(self, node: _Node, vhost: _VHost) -> None:
        for ctx in vhost.contexts.values():
            self._context_ids.release(ctx.id)
            self._context_count -= 1
        for alias_id in vhost.aliases.values():
            self._alias_ids.release(alias_id)
            self._alias_count -= 1
        del node.vhosts[vhost.id]

    def _clear_node(self, node: _Node) -> None:
        for vhost in list(node.vhosts.values()):
            self._delete_vhost(node, vhost)

    def _drop_node(self, node: _Node) -> None:
        self._clear_node(node)
        node.rt.removed = True
        del self._nodes[node.route]
        self._node_ids.release(node.id)
        if node.settings.domain:
            self._removed_domains[node.route] = (node.settings.balancer,
                                                 node.settings.domain, self._clock.seconds())

    # -- ENABLE/DISABLE/STOP/REMOVE-APP ----------------------------------------

    def app(self, command: str, route: str, aliases: Sequence[str] = (),
            contexts: Sequence[str] = (), wildcard: bool = False) -> AppResult:
        """
        Apply an APP command.  With C{wildcard} every context of the node changes
        (and C{REMOVE-APP} marks the node removed).

        @raise ClusterError: MEM for an unknown or removed node (except REMOVE-APP,
            which is then a no-op, as in mod_cluster 1.3.x).
        """
        state = APP_COMMANDS[command]
        node = self._nodes.get(route)
        if node is None or node.rt.removed:
            if command == "REMOVE-APP":
                return AppResult(route)
            raise errors.mem_cant_read_node(route)
        if wildcard:
            if state is None:
                self._clear_node(node)
                self._mark_removed(node, "REMOVE-APP /*")
            else:
                cold = command == "ENABLE-APP" and not self._serving(node)
                for each_vhost in node.vhosts.values():
                    for each_ctx in each_vhost.contexts.values():
                        self._set_context(node, each_vhost, each_ctx.path, state, create=False)
                if cold and self._serving(node):
                    node.rt.warm_from = self._clock.seconds()  # slow start
            self._changed()
            return AppResult(route)

        cold = command == "ENABLE-APP" and not self._serving(node)
        vhost = self._vhost_for_any(node, aliases)
        if state is None:
            if vhost is not None:
                for path in contexts:
                    ctx = vhost.contexts.pop(path, None)
                    if ctx is not None:
                        self._context_ids.release(ctx.id)
                        self._context_count -= 1
                        self._event("context.removed", "context {path} of {route} removed",
                                    route=route, path=path, vhost=vhost.id)
                if not vhost.contexts:
                    self._delete_vhost(node, vhost)
                self._changed()
            return AppResult(route, aliases[0] if aliases else "", tuple(contexts))
        self._check_app_quotas(node, vhost, route, aliases, contexts)
        created = vhost is None
        if vhost is None:
            vhost = self._new_vhost(node)
        try:
            self._add_aliases(node, vhost, aliases)
            ctxs = [self._set_context(node, vhost, path, state, create=True)
                    for path in contexts]
        except ClusterError:
            if created and not vhost.contexts:
                self._delete_vhost(node, vhost)
            self._changed()
            raise
        if command == "ENABLE-APP":
            self._warn_other_balancers(node, contexts)
            if cold and self._serving(node):
                node.rt.warm_from = self._clock.seconds()  # slow start
        self._changed()
        requests = None
        if command == "STOP-APP":
            requests = sum(c.rt.in_flight for c in ctxs if c is not None)
        return AppResult(route, aliases[0] if aliases else "", tuple(contexts), requests)

    def _check_app_quotas(self, node: _Node, vhost: Optional[_VHost], route: str,
                          aliases: Sequence[str], contexts: Sequence[str]) -> None:
        """
        Refuse an APP command whose new aliases or contexts do not all fit the
        quotas before anything changes: a multi-context command is all or nothing.
        """
        new_aliases = [a for a in dict.fromkeys(aliases)
                       if (vhost is None or a not in vhost.aliases)
                       and node.vhost_for_alias(a) is None]
        room = self.limits.max_hosts - self._alias_count
        if len(new_aliases) > room:
            raise errors.mem_cant_update_alias(route, ",".join(new_aliases[max(room, 0):]))
        new_paths = [p for p in dict.fromkeys(contexts)
                     if vhost is None or p not in vhost.contexts]
        room = self.limits.max_contexts - self._context_count
        if len(new_paths) > room:
            names = vhost.aliases if vhost is not None else new_aliases
            raise errors.mem_cant_update_context(route, ",".join(new_paths[max(room, 0):]),
                                                 ",".join(names))

    @staticmethod
    def _serving(node: _Node) -> bool:
        """The node has an ENABLED context."""
        return any(ctx.state is ContextState.ENABLED
                   for vhost in node.vhosts.values() for ctx in vhost.contexts.values())

    def _warn_other_balancers(self, node: _Node, contexts: Sequence[str]) -> None:
        for other in self._nodes.values():
            if other.settings.balancer == node.settings.balancer or other.rt.removed:
                continue
            for vhost in other.vhosts.values():
                for path in contexts:
                    if path in vhost.contexts:
                        self.log.warn(
                            "context {path} of {route} also exists on {other} in balancer "
                            "{balancer}: there is no load balancing between balancers",
                            path=path, route=node.route, other=other.route,
                            balancer=other.settings.balancer)

    def remove_node(self, route: str, why: str) -> bool:
        """
        Take a live node out as C{REMOVE-APP /*} does (its contexts deleted,
        marked removed, purged after C{wait_before_remove}), for a reason of
        the balancer's own (C{why}, in the C{node.removing} event).  Returns
        whether there was a live node C{route}.
        """
        node = self._nodes.get(route)
        if node is None or node.rt.removed:
            return False
        self._clear_node(node)
        self._mark_removed(node, why)
        self._changed()
        return True

    def _mark_removed(self, node: _Node, why: str) -> None:
        if node.rt.removed:
            return
        node.rt.removed = True
        node.removed_at = self._clock.seconds()
        self._event("node.removing", "node {route} marked removed ({why}); purged after "
                    "{wait} s", route=node.route, why=why, wait=self.limits.wait_before_remove)

    # -- STATUS / PING / errors -----------------------------------------------

    def status_node(self, route: str) -> _Node:
        """The node a STATUS/PING names. @raise ClusterError: MEM if unknown."""
        node = self._nodes.get(route)
        if node is None:
            raise errors.mem_cant_read_node(route)
        return node

    def apply_status(self, route: str, load: int, probe_ok: Optional[bool]) -> bool:
        """
        Apply a STATUS: C{load} −1 puts the node in error (no probe); otherwise
        C{probe_ok} is the result of the node probe (C{None}: no probe was done,
        e.g. EnableOptions off).  Returns the State to answer (True = OK).
        """
        node = self._nodes.get(route)
        if node is None or node.rt.removed:
            return False
        rt = node.rt
        rt.last_status = self._clock.seconds()
        rt.unverified = False
        if load == -1:
            if rt.lbfactor != -1 or not rt.in_error:
                self._event("node.load", "node {route} reports Load=-1: in error",
                            route=route, load=-1, old=rt.lbfactor)
            rt.lbfactor = -1
            self._set_error(node, "Load=-1 reported by the node")
            return True
        if probe_ok is False:
            self._set_error(node, "probe at STATUS failed")
            return False
        if load == -2:  # ping only
            return True
        if rt.lbfactor != load:
            self._event("node.load", "node {route} load {old} -> {load}",
                        route=route, load=load, old=rt.lbfactor)
            if rt.lbfactor < 0 < load:
                rt.warm_from = self._clock.seconds()  # slow start: first in service
            rt.lbfactor = load
            self._node_changed(node)
        self._clear_error(node, f"STATUS with Load={load}")
        return True

    def set_error(self, route: str, reason: str) -> None:
        """Put a node in error after a forwarding failure (counted in C{failures})."""
        node = self._nodes.get(route)
        if node is not None:
            node.rt.failures += 1
            if not node.rt.removed:
                self._set_error(node, reason)

    def clear_error(self, route: str, why: str) -> None:
        """A node in error answered a request (mod_proxy's retry succeeded)."""
        node = self._nodes.get(route)
        if node is not None and not node.rt.removed:
            self._clear_error(node, why)

    def _set_error(self, node: _Node, reason: str) -> None:
        rt = node.rt
        rt.error_since = self._clock.seconds()
        if not rt.in_error:
            rt.in_error = True
            rt.error_reason = reason
            self._event("node.error", "node {route} in error: {reason}",
                        route=node.route, reason=reason)
        self._node_changed(node)

    def _clear_error(self, node: _Node, why: str) -> None:
        if node.rt.in_error:
            node.rt.in_error = False
            node.rt.error_reason = ""
            node.rt.warm_from = self._clock.seconds()  # slow start
            self._event("node.recovered", "node {route} recovered ({why})",
                        route=node.route, why=why)
            self._node_changed(node)

    def probe_result(self, route: str, ok: bool) -> None:
        """Result of an idle-node health probe (balancing.md §6.3)."""
        node = self._nodes.get(route)
        if node is None or node.rt.removed:
            return
        if ok:
            node.rt.num_failure_idle = 0
            node.rt.last_alive = self._clock.seconds()
            if node.rt.in_error and node.rt.lbfactor != -1:
                self._clear_error(node, "health probe succeeded")
            return
        node.rt.num_failure_idle += 1
        self._set_error(node, "idle health probe failed")
        if node.rt.num_failure_idle > self.limits.idle_failures_before_remove:
            self._clear_node(node)
            self._mark_removed(node, f"{node.rt.num_failure_idle} failed health probes")
            self._changed()

    def seconds(self) -> float:
        """The registry's clock (for views)."""
        return self._clock.seconds()

    #: slow start settings for L{slow_start_share} (set by the assembly from
    #: the C{[proxy]} settings; views only)
    slow_start = (30.0, 0.1)

    def slow_start_share(self, rt, now: float) -> float:
        """The share of its full weight C{rt}'s node gets now (slow start)."""
        from modcluster.balancer._health import ramp

        return ramp(rt, now, *self.slow_start)

    def recovering(self) -> list[NodeEntry]:
        """
        Nodes to health-probe for recovery (balancing.md, "Beyond
        mod_proxy_cluster"): nodes in error that did not report Load=-1
        themselves, and nodes ejected by passive health.
        """
        now = self._clock.seconds()
        return [e for e in self.table.nodes
                if not e.rt.removed and e.rt.lbfactor != -1
                and (e.rt.in_error or e.rt.ejected_until > now)]

    def recovery_probe_result(self, route: str, ok: bool) -> None:
        """
        Result of a recovery probe: a node in error that answers comes back
        (through slow start); a node that does not stays in error, and an
        ejected node that does not answer is put in error.
        """
        node = self._nodes.get(route)
        if node is None or node.rt.removed:
            return
        rt = node.rt
        if ok:
            rt.last_alive = self._clock.seconds()
            if rt.in_error and rt.lbfactor != -1:
                self._clear_error(node, "health probe succeeded")
            return
        if not rt.in_error:
            self._set_error(node, "health probe failed")

    def node_ejected(self, route: str, seconds: float, reason: str) -> None:
        """
        Passive health ejected a node (in this process, or in a worker
        process): shown on the registry's record too, and logged.
        """
        node = self._nodes.get(route)
        if node is None or node.rt.removed:
            return
        now = self._clock.seconds()
        rt = node.rt
        if rt.ejected_until < now + seconds:  # not already set in this process
            rt.ejections += 1
            rt.ejected_until = now + seconds
            rt.warm_from = rt.ejected_until
            self._node_changed(node)
        self._event("node.ejected", "node {route} ejected for {seconds:g} s: {reason}",
                    route=route, seconds=seconds, reason=reason)

    # -- maintenance -----------------------------------------------------------

    def tick(self) -> list[NodeEntry]:
        """
        Periodic work (call about once a second): recompute load statistics of
        nodes whose interval elapsed, purge removed nodes whose wait is over, expire
        remembered domains.  Returns the idle nodes that should be health-probed.
        """
        now = self._clock.seconds()
        self._purge(now)
        idle = []
        table = self.table
        interval = self.limits.lbstatus_recalc_time
        for entry in table.nodes:
            was_idle = recalc_lbstatus(entry.rt, now, interval)
            if was_idle:
                idle.append(entry)
            elif was_idle is not None:
                entry.rt.num_failure_idle = 0
        return idle

    def _purge(self, now: float, force: bool = False) -> None:
        changed = False
        for node in list(self._nodes.values()):
            if not node.rt.removed:
                continue
            waited = now - node.removed_at >= self.limits.wait_before_remove
            if (waited and node.rt.busy == 0) or (force and node.rt.busy == 0):
                self._drop_node(node)
                self._event("node.purged", "node {route} removed", route=node.route)
                changed = True
        for route, (_, _, since) in list(self._removed_domains.items()):
            if now - since > DOMAIN_MEMORY or route in self._nodes:
                del self._removed_domains[route]
                changed = True
        used = {n.settings.balancer for n in self._nodes.values()}
        for name in list(self.balancers):
            if name not in used:
                del self.balancers[name]
                changed = True
        if changed:
            self._changed()

    # -- views ---------------------------------------------------------------

    def contexts_of(self, node: _Node):
        """(vhost, context) pairs of a node, in vhost then context-id order."""
        for vhost in sorted(node.vhosts.values(), key=lambda v: v.id):
            for ctx in sorted(vhost.contexts.values(), key=lambda c: c.id):
                yield vhost, ctx

    def find_context(self, route: str, alias: str, path: str) -> Optional[_Context]:
        node = self._nodes.get(route)
        if node is None:
            return None
        vhost = node.vhost_for_alias(alias)
        if vhost is None:
            return None
        return vhost.contexts.get(path)

    @property
    def counts(self) -> dict[str, int]:
        return {"nodes": len(self._nodes), "balancers": len(self.balancers),
                "aliases": self._alias_count, "contexts": self._context_count}

    # -- persistence -----------------------------------------------------------

    def to_state(self) -> dict:
        """A JSON-able dict of everything a restart must restore."""
        nodes = []
        for node in self.nodes():
            if node.rt.removed:
                continue
            s = node.settings
            nodes.append({
                "id": node.id,
                "settings": attrs.asdict(s),
                "load": node.rt.lbfactor,
                "in_error": node.rt.in_error,
                "vhosts": [
                    {"id": v.id, "aliases": [[a, i] for a, i in v.aliases.items()],
                     "contexts": [[c.id, c.path, c.state.name] for c in v.contexts.values()]}
                    for v in node.vhosts.values()
                ],
            })
        balancers = [attrs.asdict(b) for b in self.balancers.values()]
        return {"format": 1, "balancers": balancers, "nodes": nodes}

    # Restoring goes through the MCMP validation: modcluster/mcmp/replay.py
    # replays a saved state as CONFIG and *-APP commands into an empty
    # registry inside L{restoring}, then sets each node's saved load with
    # L{mark_restored}; on any problem it calls L{clear}.

    @contextlib.contextmanager
    def restoring(self):
        """
        Replay a saved state: no events, log lines or structure callbacks for
        each replayed command; one C{registry.restored} event at the end if
        nodes were restored.  Needs an empty registry.
        """
        if self._nodes:
            raise ValueError("restoring needs an empty registry")
        self._quiet = True
        try:
            yield self
        finally:
            self._quiet = False
        self._table = None
        if self._nodes:
            self._event("registry.restored", "restored {count} nodes from saved state",
                        count=len(self._nodes))
            self._changed()

    def mark_restored(self, route: str, load: int, in_error: bool) -> None:
        """A replayed node's saved load and error flag; unverified until its next STATUS."""
        rt = self._nodes[route].rt
        now = self._clock.seconds()
        rt.lbfactor = load
        rt.in_error = in_error
        rt.error_since = now
        rt.unverified = True

    def clear(self) -> None:
        """Forget everything (a replay that failed half way)."""
        self.balancers = {}
        self._nodes = {}
        self._node_ids = _Ids()
        self._alias_ids = _Ids()
        self._context_ids = _Ids()
        self._alias_count = 0
        self._context_count = 0
        self._removed_domains = {}
        self._table = None
