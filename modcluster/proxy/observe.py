"""
What the data plane records per request for operators: the access log line
and the client-side counters behind the C{modcluster_proxy_*} metrics.

The hot path pays little: L{Observer.done} is called once per finished
request (only when the access log or the client metrics are on); counters are
plain ints in lists found by one dictionary lookup, and they become Prometheus
metrics only at scrape time (L{ClientStats.export}, L{merge_exports},
L{modcluster.metrics.ClientCollector}).  With worker processes every worker
sends its L{ClientStats.export} to the control process once a second, which
sums them.

Label cardinality is bounded (docs/metrics.md): at most C{limit} distinct
(context, node) pairs get their own counters; beyond that a request counts
under (its context, C{other}) while fewer than C{limit} contexts are known, else
under (C{other}, C{other}).  The duration histogram has at most C{limit}
contexts, the upstream one at most C{limit} nodes, then C{other}.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Callable, Iterable, Optional

__all__ = ["BUCKETS", "ClientStats", "Observer", "merge_exports"]

#: Upper bounds (seconds) of the request and upstream duration histograms.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
           30.0)
_NB = len(BUCKETS) + 1  # + Inf
_B0, _B1, _B2, _B3 = BUCKETS[:4]
#: Status classes counted: index status // 100 (0: anything below 100 or above 599).
CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")
#: that index by status code, 0-999 (statuses are never negative; from 1000
#: on, 0 too): one tuple subscript instead of two comparisons and a division
_CLASS_OF = tuple(s // 100 if 100 <= s < 600 else 0 for s in range(1000))
OTHER = "other"
#: Reasons of a 503 (C{modcluster_proxy_unavailable_total{reason}}).
UNAVAILABLE_REASONS = ("no_node", "sticky_route_down", "context_unavailable", "node_failed",
                       "other")
#: Failure kinds of a failover (C{modcluster_proxy_failovers_total{kind}}).
FAILOVER_KINDS = ("connect", "reset", "timeout", "protocol")
#: Status logged for a request whose client left before any response (nginx's).
CLIENT_CLOSED = 499


def _histogram() -> list:
    # bucket counts (not cumulative), then the sum
    return [0] * _NB + [0.0]


class ClientStats:
    """
    The client-side counters of one data plane (one process).

    @param limit: label pairs / contexts / nodes with their own series.
    """

    def __init__(self, limit: int = 200) -> None:
        self.limit = limit
        #: (context, node) -> [by status class (6)..., duration histogram, upstream histogram]
        self.rows: dict[tuple, list] = {}
        self.durations: dict[str, list] = {}
        self.upstream: dict[str, list] = {}
        self.failovers = dict.fromkeys(FAILOVER_KINDS, 0)
        self.unavailable = dict.fromkeys(UNAVAILABLE_REASONS, 0)
        self.connections = 0
        self.open = 0
        self.tls_handshakes = 0
        self.tls_failures = 0
        #: requests counted under an C{other} label because of the limit
        self.overflow = 0
        #: node -> context -> row, for the rows counted under their own
        #: (context, node) (never an C{other} row of the limit): found by two
        #: subscripts, without building and hashing a key tuple (both strs
        #: cache their hash), whether or not requests alternate between nodes
        self._by_node: dict[str, dict[str, list]] = {}

    def _row(self, key: tuple) -> list:
        context, node = key
        rows = self.rows
        if len(rows) >= self.limit:
            self.overflow += 1
            key = (context, OTHER) if context in self.durations else (OTHER, OTHER)
            row = rows.get(key)
            if row is not None:
                return row
        durations = self.durations
        dur = durations.get(key[0])
        if dur is None:
            if len(durations) < self.limit:
                dur = durations[key[0]] = _histogram()
            else:
                dur = durations.get(OTHER) or durations.setdefault(OTHER, _histogram())
        upstream = self.upstream
        up = upstream.get(key[1])
        if up is None:
            if len(upstream) < self.limit:
                up = upstream[key[1]] = _histogram()
            else:
                up = upstream.get(OTHER) or upstream.setdefault(OTHER, _histogram())
        row = rows[key] = [0, 0, 0, 0, 0, 0, dur, up]
        return row

    def record(self, context: str, node: str, status: int, duration: float,
               upstream: float) -> None:
        """One finished request (C{upstream} < 0: no node answered)."""
        try:
            row = self._by_node[node][context]
        except KeyError:
            row = self._slow_row(context, node)
        row[_CLASS_OF[status] if status < 1000 else 0] += 1
        h = row[6]
        # the bucket: bisect_left(BUCKETS, duration), without the call for
        # the first four (up to 10 ms: most proxied requests, ~700 machine
        # instructions for a bisect_left against two to three comparisons)
        if duration <= _B0:
            i = 0
        elif duration <= _B2:
            i = 1 if duration <= _B1 else 2
        elif duration <= _B3:
            i = 3
        else:
            i = bisect_left(BUCKETS, duration)
        h[i] += 1
        h[_NB] += duration
        if upstream >= 0.0:
            h = row[7]
            if upstream <= _B0:
                i = 0
            elif upstream <= _B2:
                i = 1 if upstream <= _B1 else 2
            elif upstream <= _B3:
                i = 3
            else:
                i = bisect_left(BUCKETS, upstream)
            h[i] += 1
            h[_NB] += upstream

    def _slow_row(self, context: str, node: str) -> list:
        """The row of (C{context}, C{node}), remembered if it is its own (not C{other})."""
        key = (context, node)
        rows = self.rows
        row = rows.get(key)
        if row is None:
            row = self._row(key)  # counts the overflow of a pair past the limit
            if rows.get(key) is not row:
                return row  # an C{other} row: found (and counted) again next time
        self._by_node.setdefault(node, {})[context] = row
        return row

    def export(self) -> dict:
        """The totals as plain, JSON-able data (see L{merge_exports})."""
        return {
            "requests": [[c, n, row[:6]] for (c, n), row in self.rows.items()],
            "durations": {k: list(v) for k, v in self.durations.items()},
            "upstream": {k: list(v) for k, v in self.upstream.items()},
            "failovers": dict(self.failovers),
            "unavailable": dict(self.unavailable),
            "connections": self.connections,
            "open": self.open,
            "tls_handshakes": self.tls_handshakes,
            "tls_failures": self.tls_failures,
            "overflow": self.overflow,
        }


def empty_export() -> dict:
    return ClientStats().export()


def merge_exports(exports: Iterable[dict]) -> dict:
    """Sum L{ClientStats.export}s (of several workers) into one."""
    requests: dict[tuple, list] = {}
    durations: dict[str, list] = {}
    upstream: dict[str, list] = {}
    out = empty_export()
    for e in exports:
        for context, node, counts in e.get("requests", ()):
            row = requests.setdefault((str(context), str(node)), [0] * 6)
            for i, v in enumerate(counts[:6]):
                row[i] += int(v)
        for target, source in ((durations, e.get("durations", {})),
                               (upstream, e.get("upstream", {}))):
            for k, h in source.items():
                acc = target.setdefault(str(k), _histogram())
                if len(h) != _NB + 1:
                    continue
                for i in range(_NB):
                    acc[i] += int(h[i])
                acc[_NB] += float(h[_NB])
        for name in ("failovers", "unavailable"):
            for k, v in e.get(name, {}).items():
                if k in out[name]:
                    out[name][k] += int(v)
        for name in ("connections", "open", "tls_handshakes", "tls_failures", "overflow"):
            out[name] += int(e.get(name, 0))
    out["requests"] = [[c, n, row] for (c, n), row in requests.items()]
    out["durations"] = durations
    out["upstream"] = upstream
    return out


class Observer:
    """
    Called by the front when a request is finished (L{done}); writes the
    access log line and counts the request.

    @param clock: the current time (the reactor's C{seconds}).  The data
        plane reads it as C{clock = obs.clock}, then calls C{clock()}: an
        instance attribute called as C{obs.clock()} is a method call that
        CPython 3.11 does not specialise (a generic attribute lookup per
        call, ~150 machine instructions; C{LOAD_METHOD} only specialises
        methods of the class), a plain attribute read it does.
    @param access_log: a L{modcluster.accesslog.LogFile} or C{None}.
    @param line: the L{modcluster.accesslog.AccessLine} formatter.
    @param stats: L{ClientStats} or C{None}.
    """

    def __init__(self, clock: Callable[[], float], access_log=None, line=None,
                 stats: Optional[ClientStats] = None) -> None:
        self.clock = clock
        self.access_log = access_log
        self.line = line
        self.stats = stats
        #: exceptions while recording (a bug): logged the first time only
        self.failures = 0

    def done(self, ex, status: int, size: int, now: float = 0.0) -> None:
        """
        C{ex} (an C{_Exchange}) ended with C{status}, C{size} body bytes to the
        client, at C{now} (the clock read then, or C{0.0}: read here).  Never
        raises: a bug here must not break the request path.
        """
        try:
            if not now:
                clock = self.clock
                now = clock()
            duration = now - ex.start
            if duration < 0.0:  # (a float constant: the interpreter's float comparison)
                duration = 0.0
            upstream = ex.upstream_time
            d = ex.decision
            if d is not None:
                node = d.node.route
                context = d.context.path
            else:
                node = context = ""
            stats = self.stats
            if stats is not None:
                # ClientStats.record, inlined (a call fewer per request; the
                # same counts: tests/unit/proxy/test_proxy_observe.py)
                try:
                    row = stats._by_node[node][context]
                except KeyError:
                    row = stats._slow_row(context, node)
                row[_CLASS_OF[status] if status < 1000 else 0] += 1
                h = row[6]
                # (the bucket as ClientStats.record finds it)
                if duration <= _B0:
                    i = 0
                elif duration <= _B2:
                    i = 1 if duration <= _B1 else 2
                elif duration <= _B3:
                    i = 3
                else:
                    i = bisect_left(BUCKETS, duration)
                h[i] += 1
                h[_NB] += duration
                if upstream >= 0.0:
                    h = row[7]
                    if upstream <= _B0:
                        i = 0
                    elif upstream <= _B2:
                        i = 1 if upstream <= _B1 else 2
                    elif upstream <= _B3:
                        i = 3
                    else:
                        i = bisect_left(BUCKETS, upstream)
                    h[i] += 1
                    h[_NB] += upstream
            if self.access_log is not None:
                self._log(ex, now, status, size, duration, upstream, node, context)
        except Exception:
            self.failures += 1
            if self.failures == 1:
                from twisted.logger import Logger

                Logger(namespace="modcluster.proxy").failure(
                    "recording a finished request failed (logged once)")

    def _log(self, ex, now: float, status: int, size: int, duration: float, upstream: float,
             node: str, context: str) -> None:
        target = ex.target if ex.headers0 is None else ex._target()
        client = ex.client
        self.access_log.write(self.line.format(
            now, client.remote_addr if client is not None else "-", ex.method, target,
            ex.log_version or ex.version, status, size, ex.headers, duration, upstream,
            node, context, ex.attempts))

    def tick(self) -> None:
        """Once a second: write the buffered lines."""
        if self.access_log is not None:
            self.access_log.flush()
