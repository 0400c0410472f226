"""
Values of the cluster model.

Two kinds of object live here:

 - frozen settings (L{BalancerSettings}, L{NodeSettings}) that only change when a
   node sends CONFIG again, and the immutable L{RoutingTable} snapshot built from
   them;
 - small mutable runtime records (L{NodeRuntime}, L{ContextRuntime}) that hold the
   numbers which change per request or per STATUS message (load factor, error
   flag, elected/read/transferred counters, requests in flight).  A snapshot
   refers to them, so a STATUS that only changes a load factor, or a request that
   bumps a counter, does not rebuild the routing table.  They are written by the
   registry (load, error state) and by the data plane (counters) on the reactor
   thread only.
"""

from __future__ import annotations

import enum
import itertools

import attrs
from typing import Optional

from attrs import field, frozen

from modcluster.memo import BoundedMemo

__all__ = [
    "BalancerSettings",
    "ContextEntry",
    "ContextRuntime",
    "ContextState",
    "NodeEntry",
    "NodeRuntime",
    "NodeSettings",
    "RoutingTable",
    "FLUSH_MODES",
    "MEMO_MAX",
    "MEMO_PATH_MAX",
    "recalc_lbstatus",
]

#: Process-wide serial numbers of runtime records: a node or context that is
#: registered again gets a new record and a new serial, so the counters of the
#: data-plane workers (modcluster/cluster/mirror.py) never land on a successor.
_serials = itertools.count(1)

def _check_types(value) -> None:
    """
    Refuse settings whose fields have the wrong type (e.g. from a damaged state
    file): C{TypeError} naming the field.
    """
    for f in attrs.fields(type(value)):
        v = getattr(value, f.name)
        want = f.type
        ok = (type(v) is bool if want == "bool"
              else isinstance(v, str) if want == "str"
              else isinstance(v, int) and not isinstance(v, bool) if want == "int"
              else isinstance(v, (int, float)) and not isinstance(v, bool))
        if not ok:
            raise TypeError(f"{type(value).__name__}.{f.name}: expected {want}, got {v!r}")


class ContextState(enum.IntEnum):
    """State of a context; the numbers are the ones DUMP and the XML INFO print."""

    ENABLED = 1
    DISABLED = 2
    STOPPED = 3


FLUSH_MODES = ("Off", "On", "Auto")


@frozen
class BalancerSettings:
    """Per-balancer settings; the last CONFIG naming a balancer sets them."""

    name: str
    sticky_session: bool = True
    sticky_cookie: str = "JSESSIONID"
    sticky_path: str = "jsessionid"
    sticky_remove: bool = False
    sticky_force: bool = True
    wait_worker: float = 0.0
    max_attempts: int = 1

    def __attrs_post_init__(self) -> None:
        _check_types(self)


@frozen
class NodeSettings:
    """What a node said about itself in CONFIG."""

    route: str
    balancer: str = "mycluster"
    domain: str = ""
    host: str = "localhost"
    port: int = 8009
    type: str = "ajp"
    reversed: bool = False
    flushpackets: str = "Off"
    flushwait_ms: int = 10
    ping: float = 10.0
    smax: int = -1
    ttl: float = 60.0
    timeout: float = 0.0

    def __attrs_post_init__(self) -> None:
        _check_types(self)
        if not 0 < self.port < 65536:
            raise ValueError(f"NodeSettings.port: {self.port} is not a TCP port")

    def hard_key(self) -> tuple:
        """
        The fields that identify the backend worker: a CONFIG that changes any of
        them re-registers the node (see docs/mcmp.md).
        """
        return (self.balancer, self.host.lower(), self.port, self.type, self.reversed,
                self.smax, self.ttl)

    def worker_key(self) -> tuple:
        """Two nodes with the same worker key would be the same backend."""
        return (self.balancer, self.host.lower(), self.port, self.type, self.reversed)

    @property
    def worker_name(self) -> str:
        host = self.host.lower()
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{self.type}://{host}:{self.port}"


class NodeRuntime:
    """
    The changing numbers of one node, shared by the registry, the routing table
    snapshots and the data plane.  Field names follow mod_proxy's worker fields.
    """

    __slots__ = (
        "lbfactor", "in_error", "error_since", "error_reason", "removed", "unverified",
        "elected", "oldelected", "lbstatus", "read", "oldread", "transferred", "busy",
        "num_failure_idle", "updatetimelb", "requests", "failures", "last_status",
        "last_alive", "serial", "fails", "ejections", "ejected_until", "_warm_from",
        "vpass", "warm_latest", "__weakref__",
    )

    def __init__(self, now: float = 0.0, serial: Optional[int] = None,
                 warm_latest: Optional[list[float]] = None) -> None:
        self.serial = next(_serials) if serial is None else serial
        #: the latest C{warm_from} given to this runtime or to any other
        #: sharing this cell (a one-item list: the runtimes of one registry,
        #: or of one worker's mirror, share theirs; without one given, a
        #: cell of its own).  No node of those is in slow start once C{now -
        #: warm_latest[0] >= slow_start}, and the election then skips its
        #: per-node slow start test (docs/balancing.md, "Performance").  It
        #: only grows: an upper bound, so the test it stands for stays exact.
        self.warm_latest = [float("-inf")] if warm_latest is None else warm_latest
        self.lbfactor = -1
        self.in_error = False
        self.error_since = 0.0
        self.error_reason = ""
        self.removed = False
        self.unverified = False
        self.elected = 0
        self.oldelected = 0
        self.lbstatus = 0
        self.read = 0
        self.oldread = 0
        self.transferred = 0
        self.busy = 0
        self.num_failure_idle = 0
        self.updatetimelb = now
        self.requests = 0
        self.failures = 0
        self.last_status = 0.0
        #: last time the node answered a probe
        self.last_alive = float("-inf")
        #: consecutive response-level failures seen by this process (passive
        #: health; reset by any answer)
        self.fails = 0
        #: times the node was ejected (passive health); the next ejection lasts
        #: longer, until the node stays healthy for a while
        self.ejections = 0
        #: the node is out of the election until then (passive health)
        self.ejected_until = float("-inf")
        #: (L{warm_from})
        self._warm_from = float("-inf")
        #: smooth election: the node's virtual pass (stride scheduling), a
        #: float holding an integer (balancer._election._STRIDES)
        self.vpass = 0.0

    @property
    def warm_from(self) -> float:
        """Slow start: the node ramps up from this time (set when it
        registers, is enabled, leaves the error state or its ejection ends);
        setting it moves L{warm_latest} on."""
        return self._warm_from

    @warm_from.setter
    def warm_from(self, when: float) -> None:
        self._warm_from = when
        latest = self.warm_latest
        if when > latest[0]:
            latest[0] = when

    def usable(self, now: float, retry: float) -> bool:
        """Not removed and not in error (or in error for longer than C{retry})."""
        if self.removed:
            return False
        if self.in_error:
            return retry > 0 and now - self.error_since >= retry
        return True


def recalc_lbstatus(rt: NodeRuntime, now: float, interval: float) -> Optional[bool]:
    """
    mod_proxy_cluster's periodic load statistics of one node: once per
    C{interval} seconds, C{lbstatus} becomes the elections of the last interval
    scaled by the load factor, and C{oldelected}/C{oldread} move on.  Returns
    C{None} when the interval has not elapsed, else whether the node was idle
    (nothing read from it during the interval).
    """
    if now - rt.updatetimelb < interval:
        return None
    oldelected_prev = rt.oldelected
    rt.oldelected = rt.elected
    oldread_prev = rt.oldread
    rt.oldread = rt.read
    rt.updatetimelb = now
    if rt.lbfactor > 0:
        rt.lbstatus = ((rt.elected - oldelected_prev) * 1000) // rt.lbfactor
    return rt.read == oldread_prev


class ContextRuntime:
    """Changing numbers of one context record."""

    __slots__ = ("in_flight", "requests", "serial", "__weakref__")

    def __init__(self, serial: Optional[int] = None) -> None:
        self.serial = next(_serials) if serial is None else serial
        self.in_flight = 0
        self.requests = 0


@frozen
class NodeEntry:
    """A node as the routing table sees it."""

    id: int
    settings: NodeSettings
    rt: NodeRuntime = field(eq=False)
    # Copies of settings.route/.domain/.balancer as plain slots: the data plane
    # reads them for every request (a property costs a Python call each time).
    route: str = field(init=False, eq=False, repr=False)
    domain: str = field(init=False, eq=False, repr=False)
    balancer: str = field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        s = self.settings
        object.__setattr__(self, "route", s.route)
        object.__setattr__(self, "domain", s.domain)
        object.__setattr__(self, "balancer", s.balancer)


@frozen
class ContextEntry:
    """One (context path, virtual host, node) record."""

    id: int
    path: str
    state: ContextState
    node: NodeEntry
    vhost_id: int
    aliases: frozenset[str]
    rt: ContextRuntime = field(eq=False)


#: Entries kept in a routing memo (L{RoutingTable.longest_match}'s, the
#: balancer's per-snapshot route memo) before it is emptied (request paths are
#: client input, so the caches must stay bounded).
MEMO_MAX = 4096
#: Longer paths are not memoised (bounds the memory a client can make them hold:
#: at most MEMO_MAX x MEMO_PATH_MAX characters of keys per snapshot).
MEMO_PATH_MAX = 512


@frozen
class RoutingTable:
    """
    An immutable view of the registry for request routing.  Rebuilt by the
    registry whenever nodes, aliases or contexts change.

    @ivar nodes: routable nodes (not removed), in registration (worker) order.
    @ivar by_route: JVMRoute → node.
    @ivar balancers: balancer name → settings.
    @ivar contexts: context path → records with that path (all states), node order.
    @ivar by_alias: alias → context path → records (for UseAlias).
    @ivar removed_domains: JVMRoute of a removed node → (balancer, domain), so that
        sessions of a vanished node can fail over inside its domain.
    """

    generation: int
    nodes: tuple[NodeEntry, ...]
    by_route: dict[str, NodeEntry]
    balancers: dict[str, BalancerSettings]
    contexts: dict[str, tuple[ContextEntry, ...]]
    by_alias: dict[str, dict[str, tuple[ContextEntry, ...]]]
    removed_domains: dict[str, tuple[str, str]] = field(factory=dict)
    #: longest_match() results of this snapshot, by path (or (host, path)).
    _matches: BoundedMemo = field(
        init=False, factory=lambda: BoundedMemo("cluster.longest_match", MEMO_MAX,
                                                count_hits=False),
        eq=False, repr=False)

    @classmethod
    def empty(cls) -> "RoutingTable":
        return cls(0, (), {}, {}, {}, {})

    def longest_match(self, path: str, host: Optional[str] = None
                      ) -> tuple[ContextEntry, ...]:
        """
        All context records (every state) with the longest context path matching
        C{path} on a C{/} boundary; with C{host} (UseAlias on) only records whose
        virtual host has that alias.  Empty when nothing matches.  Cost is linear in
        the depth of C{path}, independent of the number of contexts.
        """
        key = path if host is None else (host, path)
        matches = self._matches
        found = matches.entries.get(key)
        if found is not None:
            return found
        index = self.contexts if host is None else self.by_alias.get(host)
        found = ()
        if index:
            # The path itself, then every prefix ending just before a '/', then '/'.
            found = index.get(path)
            if not found:
                i = path.rfind("/")
                while i > 0:
                    found = index.get(path[:i])
                    if found:
                        break
                    i = path.rfind("/", 0, i)
                else:
                    found = index.get("/") if path != "/" else None
            found = found or ()
        if len(path) <= MEMO_PATH_MAX:
            matches.put(key, found)
        return found


class TableSource:
    """
    What holds the current L{RoutingTable} (the L{Registry
    <modcluster.cluster.registry.Registry>}, a worker's L{Mirror
    <modcluster.cluster.mirror.Mirror>}) and tells its followers.

    A follower (the data plane's C{ProxyFactory}) has a C{table_now}
    attribute that is always this source's table as C{_table} holds it: the
    built table, or C{None} once a change dropped it (then the follower
    calls C{snapshot}, which builds it and so sets C{table_now} again).  The
    data plane reads an attribute per request instead of making a Python
    call (issue 18).  C{_table} is a property so that every place that drops
    or builds the table keeps the followers in step, without a call of its
    own.
    """

    #: the table C{_table} holds (None: dropped after a change, built on demand)
    _built: Optional[RoutingTable] = None
    #: the objects whose C{table_now} follows C{_table}
    _followers: tuple = ()

    @property
    def _table(self) -> Optional[RoutingTable]:
        return self._built

    @_table.setter
    def _table(self, table: Optional[RoutingTable]) -> None:
        self._built = table
        for follower in self._followers:
            follower.table_now = table

    def follow(self, follower) -> None:
        """
        Keep C{follower.table_now} equal to this source's table (or None).
        Followers are kept for the source's life (never let go): the
        service makes one C{ProxyFactory} per process, at start-up.
        """
        self._followers += (follower,)
        follower.table_now = self._built
