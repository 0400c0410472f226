"""
Prometheus metrics.

The cluster numbers are read from the registry at scrape time by a custom
collector (L{ClusterCollector}), so request handling pays nothing for them.  The
only counter updated as things happen is the MCMP message counter, through
L{MCMPStats.record}, which the MCMP handler calls once per message.

Everything lives in a L{CollectorRegistry} of its own per application instance
(never prometheus_client's global default registry), so tests and several
instances in one process do not collide.  The resource does not use
C{prometheus_client.twisted}, which imports the global reactor.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from twisted.web.resource import Resource

from modcluster import _version
from modcluster.cluster.views import NodeState, node_state
from modcluster.listening import TIMEOUT_REASONS

__all__ = ["ClientCollector", "ClientTimeoutCollector", "ClusterCollector", "MCMPStats",
           "Metrics", "MetricsResource"]

#: Methods counted by name; anything else is counted as "other" (bounded labels).
MCMP_METHODS = frozenset({
    "CONFIG", "ENABLE-APP", "DISABLE-APP", "STOP-APP", "REMOVE-APP", "STATUS", "PING",
    "INFO", "DUMP", "VERSION",
})
#: Outcomes counted by name; anything else is counted as "other".
MCMP_OUTCOMES = frozenset({"ok", "SYNTAX", "MEM", "GENERAL"})

_CONTEXT_STATES = ("ENABLED", "DISABLED", "STOPPED")


class MCMPStats:
    """
    Counts MCMP messages by method and outcome
    (C{modcluster_mcmp_messages_total{method,outcome}}).

    @param collector_registry: where the counter is registered.
    """

    def __init__(self, collector_registry: CollectorRegistry) -> None:
        self._counter = Counter(
            "modcluster_mcmp_messages",
            "MCMP messages received, by method and outcome (ok or the MCMP error type).",
            ["method", "outcome"],
            registry=collector_registry,
        )

    def record(self, method: str, outcome: str) -> None:
        """Count one message.  Unknown methods/outcomes are counted as C{other}."""
        method = method.upper() if isinstance(method, str) else "other"
        if method not in MCMP_METHODS:
            method = "other"
        if outcome not in MCMP_OUTCOMES:
            outcome = "other"
        self._counter.labels(method=method, outcome=outcome).inc()


class ClusterCollector(Collector):
    """
    Reads the cluster registry at scrape time.

    @param registry: the L{modcluster.cluster.registry.Registry}.
    @param release: the release string (exported in C{modcluster_build_info}).
    """

    def __init__(self, registry, release: str, workers=None, *,
                 per_context: bool = False) -> None:
        self._registry = registry
        self._release = release
        #: the WorkerPool, set by tap.py when the data plane runs in workers
        self.workers = workers
        #: export one series per context (C{console.metrics_per_context});
        #: otherwise per-node context counts by status only (docs/metrics.md)
        self.per_context = per_context
        #: C{() -> dict} giving the data plane's retry budget refusals and node
        #: queues (C{ProxyFactory.plane_totals}, or the worker pool's sum;
        #: set by tap.py)
        self.data_plane = None

    def describe(self) -> Iterable[Metric]:
        # Nothing to check for duplicates at registration; collect() is cheap anyway.
        return []

    def collect(self) -> Iterable[Metric]:
        reg = self._registry
        build = InfoMetricFamily("modcluster_build", "Release and version of this balancer.")
        build.add_metric([], {"release": self._release, "version": _version.__version__})
        yield build

        pool = self.workers
        if pool is not None:
            status = pool.status()
            yield GaugeMetricFamily("modcluster_proxy_workers",
                                    "Data-plane worker processes running and serving.",
                                    value=sum(1 for w in status if w["ready"]))
            yield CounterMetricFamily("modcluster_proxy_worker_restarts",
                                      "Data-plane worker processes restarted after "
                                      "they ended unexpectedly.", value=pool.restarts)

        if self.data_plane is not None:
            plane = self.data_plane()
            yield CounterMetricFamily("modcluster_proxy_retry_budget_refused",
                                      "Failover replays refused because the retry "
                                      "budget was used up.",
                                      value=plane["retry_refused"])
            yield GaugeMetricFamily("modcluster_proxy_queued",
                                    "Requests waiting for a node at its in-flight limit.",
                                    value=plane["queued"])
            yield CounterMetricFamily("modcluster_proxy_queue_rejected",
                                      "Requests answered 503 because a node's queue was "
                                      "full or they waited too long.",
                                      value=plane["queue_rejected"])

        counts = reg.counts
        for key, doc in (("nodes", "Registered nodes (including nodes being removed)."),
                         ("balancers", "Balancers."),
                         ("aliases", "Virtual host aliases."),
                         ("contexts", "Context records.")):
            yield GaugeMetricFamily(f"modcluster_{key}", doc, value=counts.get(key, 0))

        node_l = ["route"]
        info = InfoMetricFamily("modcluster_node", "Static facts about a node.", labels=node_l)
        load = GaugeMetricFamily("modcluster_node_load",
                                 "Load factor from the last STATUS (-1: none or in error; "
                                 "0: hot standby).", labels=node_l)
        flags = {
            "in_error": GaugeMetricFamily("modcluster_node_in_error",
                                          "1 when the node is in error.", labels=node_l),
            "hot_standby": GaugeMetricFamily("modcluster_node_hot_standby",
                                             "1 when the node reported Load=0.",
                                             labels=node_l),
            "removed": GaugeMetricFamily("modcluster_node_removed",
                                         "1 while a removed node waits to be purged.",
                                         labels=node_l),
            "unverified": GaugeMetricFamily(
                "modcluster_node_unverified",
                "1 for a node restored from saved state and not heard from since.",
                labels=node_l),
        }
        elected = CounterMetricFamily("modcluster_node_elected",
                                      "Times the node was chosen by the balancer.",
                                      labels=node_l)
        requests = CounterMetricFamily("modcluster_node_requests",
                                       "Requests forwarded to the node.", labels=node_l)
        failures = CounterMetricFamily("modcluster_node_failures",
                                       "Forwarding failures on the node.", labels=node_l)
        ejected = GaugeMetricFamily("modcluster_node_ejected",
                                    "1 while passive health keeps the node out of the "
                                    "election.", labels=node_l)
        ejections = CounterMetricFamily("modcluster_node_ejections",
                                        "Times passive health ejected the node.",
                                        labels=node_l)
        share = GaugeMetricFamily("modcluster_node_slow_start_share",
                                  "Share of its full weight the node gets (slow start; "
                                  "1 = full).", labels=node_l)
        now = reg.seconds()
        busy = GaugeMetricFamily("modcluster_node_busy",
                                 "Requests in flight on the node.", labels=node_l)
        read = CounterMetricFamily("modcluster_node_read_bytes",
                                   "Bytes read from the node.", labels=node_l)
        sent = CounterMetricFamily("modcluster_node_transferred_bytes",
                                   "Bytes sent to the node.", labels=node_l)
        ctx_l = ["route", "vhost", "context"]
        ctx_status = GaugeMetricFamily(
            "modcluster_context_status",
            "1 for the current status of a context (ENABLED, DISABLED or STOPPED), else 0.",
            labels=ctx_l + ["status"])
        ctx_in_flight = GaugeMetricFamily("modcluster_context_in_flight",
                                          "Requests in flight on the context.", labels=ctx_l)
        ctx_requests = CounterMetricFamily("modcluster_context_requests",
                                           "Requests routed to the context.", labels=ctx_l)
        node_contexts = GaugeMetricFamily(
            "modcluster_node_contexts", "Contexts of the node, by status.",
            labels=node_l + ["status"])
        by_status = {name: 0 for name in _CONTEXT_STATES}
        per_context = self.per_context
        by_state = {s: 0 for s in NodeState}

        for node in reg.nodes():
            s, rt = node.settings, node.rt
            route = [s.route]
            state, _ = node_state(node, now)
            by_state[state] += 1
            info.add_metric(route, {"balancer": s.balancer, "domain": s.domain,
                                    "type": s.type, "host": s.host, "port": str(s.port)})
            load.add_metric(route, rt.lbfactor)
            flags["in_error"].add_metric(route, 1 if rt.in_error else 0)
            flags["hot_standby"].add_metric(route, 1 if rt.lbfactor == 0 else 0)
            flags["removed"].add_metric(route, 1 if rt.removed else 0)
            flags["unverified"].add_metric(route, 1 if rt.unverified else 0)
            elected.add_metric(route, rt.elected)
            requests.add_metric(route, rt.requests)
            failures.add_metric(route, rt.failures)
            ejected.add_metric(route, 1 if rt.ejected_until > now else 0)
            ejections.add_metric(route, rt.ejections)
            share.add_metric(route, reg.slow_start_share(rt, now))
            busy.add_metric(route, rt.busy)
            read.add_metric(route, rt.read)
            sent.add_metric(route, rt.transferred)
            mine = {name: 0 for name in _CONTEXT_STATES}
            if per_context:
                for vhost, ctx in reg.contexts_of(node):
                    mine[ctx.state.name] += 1
                    labels = [s.route, str(vhost.id), ctx.path]
                    for name in _CONTEXT_STATES:
                        ctx_status.add_metric(labels + [name],
                                              1 if ctx.state.name == name else 0)
                    ctx_in_flight.add_metric(labels, ctx.rt.in_flight)
                    ctx_requests.add_metric(labels, ctx.rt.requests)
            else:
                for vhost in node.vhosts.values():
                    for ctx in vhost.contexts.values():
                        mine[ctx.state.name] += 1
            for name, n in mine.items():
                node_contexts.add_metric([s.route, name], n)
                by_status[name] += n

        states = GaugeMetricFamily("modcluster_nodes_by_state",
                                   "Nodes per display state (as the console shows them).",
                                   labels=["state"])
        for state, n in by_state.items():
            states.add_metric([state.value], n)
        yield states
        contexts = GaugeMetricFamily("modcluster_contexts_by_status",
                                     "Contexts per status (ENABLED, DISABLED, STOPPED).",
                                     labels=["status"])
        for name, n in by_status.items():
            contexts.add_metric([name], n)
        yield contexts
        yield node_contexts
        yield info
        yield load
        yield from flags.values()
        yield from (elected, requests, failures, busy, read, sent)
        yield from (ejected, ejections, share)
        if per_context:
            yield from (ctx_status, ctx_in_flight, ctx_requests)


_LEGACY_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LEGACY_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_SUFFIX = {"counter": ("_total", "counter"), "gauge": ("", "gauge"), "info": ("_info", "gauge")}


class _One:
    """A collector of one family (to hand it to prometheus_client's encoder)."""

    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterable[Metric]:
        return [self._metric]


def _escape_value(v: str) -> str:
    if "\\" in v or "\n" in v or '"' in v:
        return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')
    return v


def _fast_family(metric: Metric) -> Optional[str]:
    """
    The Prometheus text of a plain gauge, counter or info family, exactly as
    C{generate_latest} writes it; C{None} for anything else (histograms,
    C{_created} samples, timestamps, names outside the legacy character set).
    """
    kind = _SUFFIX.get(metric.type)
    if kind is None:
        return None
    name = metric.name + kind[0]
    if not _LEGACY_NAME.match(name):
        return None
    doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
    out = [f"# HELP {name} {doc}\n# TYPE {name} {kind[1]}\n"]
    checked: dict[tuple, bool] = {}
    for sample in metric.samples:
        if sample.name != name or sample.timestamp is not None:
            return None
        labels = sample.labels
        if labels:
            keys = tuple(sorted(labels))
            ok = checked.get(keys)
            if ok is None:
                ok = checked[keys] = all(_LEGACY_LABEL.match(k) for k in keys)
            if not ok:
                return None
            text = ",".join([f'{k}="{_escape_value(labels[k])}"' for k in keys])
            out.append(f"{name}{{{text}}} {floatToGoString(sample.value)}\n")
        else:
            out.append(f"{name} {floatToGoString(sample.value)}\n")
    return "".join(out)


def encode_text(registry: Collector) -> bytes:
    """
    The Prometheus text format of C{registry}, byte for byte what
    C{prometheus_client.generate_latest} writes, several times faster on the
    plain per-node gauges and counters (the bulk of a large cluster's scrape);
    every other family goes through C{generate_latest} itself.
    """
    out = []
    for metric in registry.collect():
        text = _fast_family(metric)
        if text is None:
            text = generate_latest(_One(metric)).decode("utf-8")
        out.append(text)
    return "".join(out).encode("utf-8")


class ClientTimeoutCollector(Collector):
    """
    C{modcluster_client_timeouts_total{listener,reason}}: client connections
    cut for being slow (L{modcluster.listening.TimeoutReport}), read at
    scrape time.  Sources are added per listener kind (C{proxy},
    C{manager}); several sources of one kind are summed.
    """

    def __init__(self) -> None:
        self._sources: list = []

    def add(self, listener: str, counts) -> None:
        """C{counts()} returns reason -> clients cut so far."""
        self._sources.append((listener, counts))

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "modcluster_client_timeouts",
            "Client connections cut for being slow, by listener (proxy, manager) and "
            "reason (header: request head not complete in time; body: request body "
            "below the minimum rate; send: client not reading its response).",
            labels=["listener", "reason"])
        totals: dict = {}
        for listener, counts in self._sources:
            values = counts()
            for reason in TIMEOUT_REASONS:
                key = (listener, reason)
                totals[key] = totals.get(key, 0) + values.get(reason, 0)
        for (listener, reason), n in totals.items():
            family.add_metric([listener, reason], n)
        yield family


class ClientCollector(Collector):
    """
    The client-side metrics of the data plane (C{modcluster_proxy_*}), from
    L{modcluster.proxy.observe.ClientStats} exports read at scrape time (summed
    over worker processes by the caller).

    @param source: returns one merged export
        (L{modcluster.proxy.observe.merge_exports}).
    """

    def __init__(self, source) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        from modcluster.proxy.observe import BUCKETS, CLASSES

        data = self._source()
        requests = CounterMetricFamily(
            "modcluster_proxy_requests",
            "Requests answered to clients, by context, node (route) and status class; "
            "empty context/node: none was chosen (404, 503, malformed request).",
            labels=["context", "node", "code_class"])
        for context, node, counts in data["requests"]:
            for cls, n in zip(CLASSES, counts):
                if n:
                    requests.add_metric([context, node, cls], n)
        yield requests
        bounds = [repr(b) if b != int(b) else f"{b:.1f}" for b in BUCKETS] + ["+Inf"]
        for name, doc, label, hists in (
                ("modcluster_proxy_request_duration_seconds",
                 "Time from the start of a request to the end of its response, by context.",
                 "context", data["durations"]),
                ("modcluster_proxy_upstream_duration_seconds",
                 "Time from handing a request to a node to its response head (the last "
                 "attempt), by node.", "node", data["upstream"])):
            family = HistogramMetricFamily(name, doc, labels=[label])
            for key, h in hists.items():
                total = 0
                buckets = []
                for bound, n in zip(bounds, h[:-1]):
                    total += n
                    buckets.append((bound, total))
                if total:
                    family.add_metric([key], buckets, sum_value=h[-1])
            yield family
        failovers = CounterMetricFamily(
            "modcluster_proxy_failovers",
            "Requests sent again to another node after a failure, by failure kind.",
            labels=["kind"])
        for kind, n in data["failovers"].items():
            failovers.add_metric([kind], n)
        yield failovers
        unavailable = CounterMetricFamily(
            "modcluster_proxy_unavailable",
            "503 answers by reason: no_node (no usable node for the context), "
            "sticky_route_down (StickySessionForce and the session's node is down), "
            "context_unavailable (every matching context stopped or disabled), "
            "node_failed (the chosen node failed and no failover was left).",
            labels=["reason"])
        for reason, n in data["unavailable"].items():
            unavailable.add_metric([reason], n)
        yield unavailable
        yield GaugeMetricFamily("modcluster_proxy_client_connections",
                                "Client connections open.", value=data["open"])
        yield CounterMetricFamily("modcluster_proxy_client_connections_accepted",
                                  "Client connections accepted.", value=data["connections"])
        yield CounterMetricFamily("modcluster_proxy_tls_handshakes",
                                  "TLS handshakes completed by clients.",
                                  value=data["tls_handshakes"])
        yield CounterMetricFamily("modcluster_proxy_tls_handshake_failures",
                                  "TLS client connections closed before their handshake "
                                  "completed.", value=data["tls_failures"])
        yield CounterMetricFamily("modcluster_proxy_metrics_overflow",
                                  "Requests counted under an `other` label because of "
                                  "proxy.client_metrics_labels.", value=data["overflow"])


class MetricsResource(Resource):
    """
    Serves a collector registry in the Prometheus text format (or OpenMetrics
    when the scraper asks for it in C{Accept}).
    """

    isLeaf = True

    def __init__(self, collector_registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = collector_registry

    def render_GET(self, request):
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        if encoder is generate_latest:
            encoder = encode_text  # same bytes, faster (see encode_text)
        body = encoder(self._registry)
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", str(len(body)).encode())
        return body


class Metrics:
    """
    The metrics of one application instance.

    @param registry: the cluster registry.
    @param release: the release string.
    @param process: also export the process/platform/GC collectors.
    @param per_context: also export one series per context (status, in-flight and
        requests): 5 series per context, 50 000 at 1 000 nodes x 10 contexts.

    @ivar collector_registry: the instance's own L{CollectorRegistry}.
    @ivar stats: the L{MCMPStats} to hand to the MCMP handler (C{stats=}).
    @ivar resource: the L{MetricsResource} to mount at C{console.metrics_path}.
    """

    def __init__(self, registry, release: str, *, process: bool = True,
                 per_context: bool = False) -> None:
        self.collector_registry = CollectorRegistry()
        self.cluster = ClusterCollector(registry, release, per_context=per_context)
        self.collector_registry.register(self.cluster)
        self.stats = MCMPStats(self.collector_registry)
        #: slow clients cut by the listeners (tap.py adds the sources)
        self.client_timeouts = ClientTimeoutCollector()
        self.collector_registry.register(self.client_timeouts)
        if process:
            ProcessCollector(registry=self.collector_registry)
            PlatformCollector(registry=self.collector_registry)
            GCCollector(registry=self.collector_registry)
        self.resource = MetricsResource(self.collector_registry)

    def add_client_stats(self, source) -> ClientCollector:
        """Export the data plane's client-side metrics (see L{ClientCollector})."""
        collector = ClientCollector(source)
        self.collector_registry.register(collector)
        return collector
