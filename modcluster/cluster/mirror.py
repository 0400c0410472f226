"""
The routing state a data-plane worker process needs, and the counters it sends
back: both ends of the feed between the control process and the workers (see
docs/data-plane.md, "Worker processes").

The control process owns the L{Registry}.  It sends each worker

 - a I{snapshot} (L{encode_snapshot}) whenever nodes, aliases, contexts or
   balancers change: plain tuples, complete, so a worker never accumulates
   drift;
 - small I{node updates} (L{encode_node_updates}) when only what the election
   reads of a node changes (load factor, error state).

A worker keeps a L{Mirror}: it turns the snapshots into its own
L{RoutingTable} with its own L{NodeRuntime}/L{ContextRuntime} records (found
again by serial number, so a worker's counters survive snapshots), recomputes
lbstatus locally from its own elections, and produces L{Mirror.report}s of its
counters.  The control process folds the reports of every worker into the
registry's records with a L{CounterSink}, so INFO/DUMP, the console, STOP-APP
C{Requests=N}, idle detection and purging see the sums.

Everything here is pure: no I/O, time passed in.
"""

from __future__ import annotations

import weakref
from typing import Iterable, Optional

import attrs

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

__all__ = ["CounterSink", "Mirror", "encode_node_updates", "encode_snapshot"]

_NODE_FIELDS = tuple(f.name for f in attrs.fields(NodeSettings))
_BALANCER_FIELDS = tuple(f.name for f in attrs.fields(BalancerSettings))


def _values(obj, names: tuple[str, ...]) -> tuple:
    return tuple(getattr(obj, n) for n in names)


def encode_snapshot(table: RoutingTable) -> tuple:
    """
    The routing table as plain tuples:
    C{(generation, balancers, nodes, contexts, removed_domains)} with
    C{nodes = ((serial, id, settings, lbfactor, in_error, error_since,
    warm_from, ejected_until), ...)}
    and C{contexts = ((serial, id, path, state, node serial, vhost id,
    aliases), ...)} in the table's order.
    """
    nodes = tuple(
        (e.rt.serial, e.id, _values(e.settings, _NODE_FIELDS), e.rt.lbfactor,
         e.rt.in_error, e.rt.error_since, e.rt.warm_from, e.rt.ejected_until)
        for e in table.nodes)
    contexts = tuple(
        (c.rt.serial, c.id, c.path, int(c.state), c.node.rt.serial, c.vhost_id,
         tuple(sorted(c.aliases)))
        for records in table.contexts.values() for c in records)
    balancers = tuple(_values(b, _BALANCER_FIELDS) for b in table.balancers.values())
    return (table.generation, balancers, nodes, contexts, dict(table.removed_domains))


def encode_node_updates(runtimes: Iterable[NodeRuntime]) -> tuple:
    """
    C{((serial, lbfactor, in_error, error_since, warm_from, ejected_until), ...)}
    of changed nodes.
    """
    return tuple((rt.serial, rt.lbfactor, rt.in_error, rt.error_since, rt.warm_from,
                  rt.ejected_until) for rt in runtimes)


#: Counters of a node in a report, in order.
NODE_COUNTERS = ("elected", "read", "transferred", "requests", "busy")
#: Counters of a context in a report, in order.
CONTEXT_COUNTERS = ("requests", "in_flight")
#: Counters that are levels (summed over workers, taken back when a worker ends);
#: the others only grow.
_NODE_GAUGES = (4,)
_CONTEXT_GAUGES = (1,)
_ZERO_NODE = (0,) * len(NODE_COUNTERS)
_ZERO_CONTEXT = (0,) * len(CONTEXT_COUNTERS)


class Mirror(TableSource):
    """
    A worker's copy of the routing state.  L{table} is rebuilt lazily after a
    snapshot, so a burst of registrations costs one rebuild per use, not one
    per message.

    @param lbstatus_recalc_time: seconds between local lbstatus recomputations
        (the registry's C{LBstatusRecalTime}).
    """

    def __init__(self, now: float = 0.0, lbstatus_recalc_time: float = 5.0) -> None:
        self._interval = lbstatus_recalc_time
        self._now = now
        self._table = RoutingTable.empty()  # (TableSource: tells the followers)
        self._snapshot: Optional[tuple] = None
        #: serial -> runtime of the nodes in the latest snapshot
        self._nodes: dict[int, NodeRuntime] = {}
        self._routes: dict[str, NodeRuntime] = {}
        #: serial -> runtime of contexts (created when the table is built)
        self._contexts: dict[int, ContextRuntime] = {}
        #: node serial -> its context runtimes
        self._node_contexts: dict[int, list[ContextRuntime]] = {}
        #: serial -> runtime of nodes that left the table with requests in flight
        #: or counters not yet reported (the control process purges a removed
        #: node only once its busy count is 0)
        self._retired: dict[int, NodeRuntime] = {}
        #: serial -> counter tuple last reported
        self._sent_nodes: dict[int, tuple] = {}
        self._sent_contexts: dict[int, tuple] = {}
        #: the latest C{warm_from} of this mirror's node runtimes (their
        #: L{NodeRuntime.warm_latest}, one cell they share)
        self.warm_latest = [float("-inf")]

    # -- from the control process ---------------------------------------------

    def load(self, snapshot: tuple) -> None:
        """Take a new L{encode_snapshot}; the table is rebuilt on next use."""
        _, _, nodes, _, _ = snapshot
        fresh: dict[int, NodeRuntime] = {}
        for serial, _id, _settings, lbfactor, in_error, error_since, *health in nodes:
            rt = self._nodes.get(serial) or self._retired.pop(serial, None)
            if rt is None:
                rt = NodeRuntime(self._now, serial, self.warm_latest)
            rt.removed = False
            rt.lbfactor = lbfactor
            rt.in_error = in_error
            rt.error_since = error_since
            if health:
                rt.warm_from, rt.ejected_until = health
            fresh[serial] = rt
        for serial, rt in self._nodes.items():
            if serial not in fresh:
                rt.removed = True
                self._retired[serial] = rt
        self._nodes = fresh
        self._routes = {}
        self._snapshot = snapshot
        self._table = None

    def update(self, updates: tuple) -> None:
        """Apply L{encode_node_updates}; unknown serials are ignored."""
        nodes = self._nodes
        for serial, lbfactor, in_error, error_since, *health in updates:
            rt = nodes.get(serial)
            if rt is not None:
                rt.lbfactor = lbfactor
                rt.in_error = in_error
                rt.error_since = error_since
                if health:
                    # slow start and ejection decided by the control process
                    # (or by another worker) apply here too
                    rt.warm_from = health[0]
                    if health[1] > rt.ejected_until:
                        rt.ejected_until = health[1]

    @property
    def table(self) -> RoutingTable:
        if self._table is None:
            self._table = self._build()
        return self._table

    def snapshot(self) -> RoutingTable:
        """
        L{table}, as a bound method for a worker's data-plane C{table}
        callable (C{ProxyFactory}, once per request): one Python call, where
        a C{lambda} reading the property makes two (as C{Registry.snapshot}).
        """
        table = self._table
        if table is None:
            table = self._table = self._build()
        return table

    def _build(self) -> RoutingTable:
        if self._snapshot is None:
            raise RuntimeError("no routing snapshot received yet")
        generation, balancers, nodes, contexts, removed_domains = self._snapshot
        entries: dict[int, NodeEntry] = {}
        by_route: dict[str, NodeEntry] = {}
        for serial, node_id, settings, *_ in nodes:
            entry = NodeEntry(node_id, NodeSettings(*settings), self._nodes[serial])
            entries[serial] = entry
            by_route[entry.route] = entry
        old_contexts = self._contexts
        ctx_runtimes: dict[int, ContextRuntime] = {}
        node_contexts: dict[int, list[ContextRuntime]] = {s: [] for s in entries}
        by_path: dict[str, list[ContextEntry]] = {}
        by_alias: dict[str, dict[str, list[ContextEntry]]] = {}
        for serial, ctx_id, path, state, node_serial, vhost_id, aliases in contexts:
            node = entries.get(node_serial)
            if node is None:
                continue
            crt = old_contexts.get(serial) or ContextRuntime(serial)
            ctx_runtimes[serial] = crt
            node_contexts[node_serial].append(crt)
            record = ContextEntry(ctx_id, path, ContextState(state), node, vhost_id,
                                  frozenset(aliases), crt)
            by_path.setdefault(path, []).append(record)
            for alias in aliases:
                by_alias.setdefault(alias, {}).setdefault(path, []).append(record)
        for serial in old_contexts.keys() - ctx_runtimes.keys():
            # The registry dropped the context: nobody reads its counters any more.
            self._sent_contexts.pop(serial, None)
        self._contexts = ctx_runtimes
        self._node_contexts = node_contexts
        self._routes = {e.route: e.rt for e in entries.values()}
        return RoutingTable(
            generation=generation,
            nodes=tuple(entries.values()),
            by_route=by_route,
            balancers={b[0]: BalancerSettings(*b) for b in balancers},
            contexts={k: tuple(v) for k, v in by_path.items()},
            by_alias={a: {k: tuple(v) for k, v in m.items()} for a, m in by_alias.items()},
            removed_domains=dict(removed_domains),
        )

    # -- local events ------------------------------------------------------------

    def node_failed(self, route: str, now: float) -> None:
        """A forwarding failure: in error here at once (the control process is told too)."""
        rt = self._route(route)
        if rt is not None:
            rt.in_error = True
            rt.error_since = now

    def node_answered(self, route: str) -> None:
        rt = self._route(route)
        if rt is not None:
            rt.in_error = False

    def _route(self, route: str) -> Optional[NodeRuntime]:
        if not self._routes:
            self.table  # noqa: B018 - builds the route index
        return self._routes.get(route)

    def tick(self, now: float) -> None:
        """Periodic: local lbstatus from this worker's own elections."""
        self._now = now
        for rt in self._nodes.values():
            recalc_lbstatus(rt, now, self._interval)

    # -- to the control process ----------------------------------------------------

    def report(self) -> Optional[tuple]:
        """
        Counters changed since the last report, as
        C{({node serial: counters}, {context serial: counters})} with the
        totals of this worker (see L{NODE_COUNTERS}, L{CONTEXT_COUNTERS}), or
        C{None} when nothing changed.
        """
        self.table  # noqa: B018 - context runtimes exist only once built
        nodes: dict[int, tuple] = {}
        contexts: dict[int, tuple] = {}
        sent_n = self._sent_nodes
        for serial, rt in self._nodes.items():
            self._collect(serial, rt, self._node_contexts.get(serial, ()), nodes, contexts)
        for serial, rt in list(self._retired.items()):
            self._collect(serial, rt, (), nodes, contexts)
            if rt.busy == 0:
                del self._retired[serial]
                sent_n.pop(serial, None)
        if not nodes and not contexts:
            return None
        return nodes, contexts

    def _collect(self, serial, rt, crts, nodes, contexts) -> None:
        values = (rt.elected, rt.read, rt.transferred, rt.requests, rt.busy)
        if self._sent_nodes.get(serial, _ZERO_NODE) != values:
            self._sent_nodes[serial] = values
            nodes[serial] = values
            self._collect_contexts(crts, contexts)

    def _collect_contexts(self, crts, contexts) -> None:
        sent = self._sent_contexts
        for crt in crts:
            values = (crt.requests, crt.in_flight)
            if sent.get(crt.serial, _ZERO_CONTEXT) != values:
                sent[crt.serial] = values
                contexts[crt.serial] = values


class CounterSink:
    """
    The control process's side: adds the counters of every worker into the
    registry's runtime records.  Records are found by serial through a weak
    index filled by L{track}, so purged nodes simply drop out.
    """

    def __init__(self) -> None:
        self._nodes: "weakref.WeakValueDictionary[int, NodeRuntime]" = \
            weakref.WeakValueDictionary()
        self._contexts: "weakref.WeakValueDictionary[int, ContextRuntime]" = \
            weakref.WeakValueDictionary()
        #: worker -> serial -> last counters
        self._last_nodes: dict[object, dict[int, tuple]] = {}
        self._last_contexts: dict[object, dict[int, tuple]] = {}

    def track(self, table: RoutingTable) -> None:
        """Make the records of C{table} findable (call for every snapshot sent)."""
        for entry in table.nodes:
            self._nodes[entry.rt.serial] = entry.rt
        for records in table.contexts.values():
            for c in records:
                self._contexts[c.rt.serial] = c.rt
        # Forget what workers said about records the registry has dropped.
        for index, per_worker in ((self._nodes, self._last_nodes),
                                  (self._contexts, self._last_contexts)):
            for last in per_worker.values():
                for serial in [s for s in last if s not in index]:
                    del last[serial]

    def apply(self, worker, report: tuple) -> None:
        """Fold one L{Mirror.report} of C{worker} into the records."""
        nodes, contexts = report
        self._fold(self._nodes, self._last_nodes.setdefault(worker, {}), nodes,
                   NODE_COUNTERS)
        self._fold(self._contexts, self._last_contexts.setdefault(worker, {}), contexts,
                   CONTEXT_COUNTERS)

    @staticmethod
    def _fold(index, last: dict, values: dict, names: tuple[str, ...]) -> None:
        for serial, new in values.items():
            serial = int(serial)
            new = tuple(int(v) for v in new)
            if len(new) != len(names):
                raise ValueError(f"counter record of {len(new)} values, expected {len(names)}")
            old = last.get(serial, (0,) * len(names))
            last[serial] = new
            rt = index.get(serial)
            if rt is None:
                continue
            for name, a, b in zip(names, old, new):
                if a != b:
                    setattr(rt, name, getattr(rt, name) + (b - a))

    def requests(self, worker) -> int:
        """Requests C{worker} has forwarded (over the nodes it reported)."""
        index = NODE_COUNTERS.index("requests")
        return sum(v[index] for v in self._last_nodes.get(worker, {}).values())

    def forget(self, worker) -> None:
        """A worker ended: take back its levels (requests in flight)."""
        for index, last, names, gauges in (
                (self._nodes, self._last_nodes.pop(worker, {}), NODE_COUNTERS, _NODE_GAUGES),
                (self._contexts, self._last_contexts.pop(worker, {}), CONTEXT_COUNTERS,
                 _CONTEXT_GAUGES)):
            for serial, values in last.items():
                rt = index.get(serial)
                if rt is None:
                    continue
                for i in gauges:
                    if values[i]:
                        setattr(rt, names[i], getattr(rt, names[i]) - values[i])
