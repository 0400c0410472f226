"""
The front of the data plane: L{ProxyFactory} builds the client connections
(HTTP/1.x L{modcluster.proxy.client.ClientProtocol}; HTTP/2 in
L{modcluster.proxy.h2}) for every client listener and owns what they share:
the routing policy, the forwarders (and so the node pools), the request-head
memos, the admission queues, the coarse clock and the timeout sweep.
"""

from __future__ import annotations

from collections import deque
from email.utils import formatdate
from typing import Callable, Optional

from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from modcluster.accesslog import LogLimiter
from modcluster.balancer import (
    RoutingPolicy,
)
from modcluster.balancer._health import RetryBudget, record_failure, resilience_settings
from modcluster.cluster.model import RoutingTable, TableSource
from modcluster.listening import ReadTimeouts, TimeoutReport
from modcluster.memo import BoundedMemo
from modcluster.proxy.client import (
    REQUEST_MEMO_BYTES,
    REQUEST_MEMO_SIZE,
    REQUEST_SEEN_SIZE,
    SWEEP_INTERVAL,
    AcceptTime,
    ClientProtocol,
)
from modcluster.proxy._transport import lose_connection
from modcluster.proxy.exchange import _DIRECT_SCHEMES, RequestHead, RequestHeadMemo, _Exchange
from modcluster.proxy.headers import (
    upgrade_matcher,
)
from modcluster.proxy.http import HttpForwarder
from modcluster.proxy.observe import ClientStats, Observer

__all__ = ["ProxyFactory"]

log = Logger(namespace="modcluster.proxy")

#: Valid Host values remembered (L{ProxyFactory.valid_hosts}), at most.
VALID_HOSTS_SIZE = 256

#: answers counted as failures by passive health with C{eject_on_5xx}
_FAILURE_STATUSES = frozenset((500, 502, 503, 504))


class ProxyFactory(Factory):
    """
    Builds L{ClientProtocol}s for every client listener and owns what they
    share: the routing policy, the forwarders (and so the node pools), the
    coarse clock, and the timeout sweep.

    @param reactor: provides C{IReactorTCP}, C{IReactorTime}.
    @param config: the C{[proxy]} settings.
    @param table: returns the current L{RoutingTable} (called per request).
    @param on_node_failure: C{(route, reason)}: a connect-level forwarding
        failure that puts the node in error (refused, connect timeout, TLS
        handshake, a node gone on retry).  Response-level failures feed passive
        health instead (L{passive_failure}).
    @param on_node_success: C{(route)}: a node in error (or tried after its
        retry interval) answered.
    @param forwarders: node C{Type} → L{IForwarder}, added to (and overriding)
        the built-in HTTP forwarder for C{http}, C{https}, C{ws}, C{wss}.
    @param node_tls: node → C{IOpenSSLClientConnectionCreator} for https/wss
        nodes (default: C{optionsForClientTLS(host)} with the system trust).
    @param policy: the routing policy; default built from C{config} (with
        C{worker_retry} 60 s).
    @param on_node_ejected: C{(route, seconds, reason)}: passive health ejected
        a node (for the control process of worker processes; optional).
    @param retry_budget: the L{RetryBudget} of failover replays (default from
        C{config}).
    """

    noisy = False

    def __init__(self, reactor, config, table: Callable,
                 on_node_failure: Callable[[str, str], None],
                 on_node_success: Callable[[str], None], forwarders: Optional[dict] = None,
                 node_tls: Optional[Callable] = None,
                 policy: Optional[RoutingPolicy] = None,
                 observer: Optional[Observer] = None,
                 on_node_ejected: Optional[Callable[[str, float, str], None]] = None,
                 retry_budget: Optional[RetryBudget] = None) -> None:
        self.reactor = reactor
        #: what records finished requests (access log, client metrics), or None
        self.observer = observer
        #: the client-side counters (C{observer.stats}), or None
        self.stats: Optional[ClientStats] = observer.stats if observer is not None else None
        #: the L{modcluster.proxy.sessions.SessionTable} (manager.max_session_ids > 0)
        self.sessions = None
        self.config = config
        self.table = table
        #: the routing table C{table()} would return, or None (then call it):
        #: kept current by the registry or mirror whose C{snapshot} is
        #: C{table} (L{TableSource.follow}), so that a request reads an
        #: attribute instead of making a Python call; None for any other
        #: callable (a test's), which is then called per request as before
        self.table_now: Optional[RoutingTable] = None
        source = getattr(table, "__self__", None)
        if isinstance(source, TableSource) and table == getattr(source, "snapshot", None):
            source.follow(self)
        self.on_node_failure = on_node_failure
        self.on_node_success = on_node_success
        self.on_node_ejected = on_node_ejected
        #: requests in flight allowed per node and process (0: no limit), and
        #: the number of data-plane processes.  Not the node's CONFIG smax:
        #: in mod_proxy that is the soft bound of the idle pool (see
        #: docs/balancing.md, "Beyond mod_proxy_cluster")
        self.processes = max(1, getattr(config, "workers", 1))
        self.node_limit = -(-config.max_in_flight_per_node // self.processes)
        #: node id -> FIFO of (exchange, cookie, fresh) waiting for a slot
        self.queues: dict = {}
        #: requests answered 503 because the queue was full or they waited too long
        self.queue_rejected = 0
        self.retry_budget = retry_budget or RetryBudget(
            config.retry_budget, config.retry_budget_window, config.retry_budget_min)
        #: balancer name -> L{balancer_requests} this coarse-clock second
        self._balancer_totals: dict[str, int] = {}
        self.policy = policy or RoutingPolicy(
            use_alias=config.use_alias,
            deterministic_failover=config.deterministic_failover,
            no_context_status=config.response_status_on_no_context,
            unavailable_context_status=config.unavailable_context_status,
            retry_after=config.retry_after,
            **resilience_settings(config))
        self.http = HttpForwarder(reactor, config, node_tls)
        self.forwarders = {scheme: self.http for scheme in _DIRECT_SCHEMES}
        if forwarders:
            self.forwarders.update(forwarders)
        self.tunnel = config.enable_ws_tunnel
        self.upgrade_match = upgrade_matcher(config.ws_upgrade_header)
        self._clients: set[ClientProtocol] = set()
        #: finished exchanges of remembered heads that lost connections left
        #: (L{ClientProtocol.connectionLost}), taken by the next connections'
        #: first remembered heads (L{ClientProtocol._remembered}); at most
        #: L{modcluster.proxy.client.SPARE_EXCHANGES}, none referring to a
        #: connection or a decision
        self.spare_exchanges: list[_Exchange] = []
        #: request head bytes -> L{_Exchange.template} of what parsing them
        #: gave, for heads that were exactly one request without a body
        #: (bounded; emptied when full).  Clients repeat their heads (same
        #: resource, same cookies), so most requests skip the parser.
        self.request_heads = RequestHeadMemo(
            "proxy.request_heads", REQUEST_MEMO_SIZE, count_hits=False)
        #: heads (at most 2 KiB) seen once, as their bytes or, for those with
        #: a L{_REQUEST_LINE}, their L{request_blocks} key: a head is
        #: remembered the second time it comes (bounded; emptied when full)
        self.request_seen: BoundedMemo[object, bool] = BoundedMemo(
            "proxy.request_seen", REQUEST_SEEN_SIZE, count_hits=False)
        #: (method, minor version, header block) -> the template of a request
        #: with that request line syntax (L{_REQUEST_LINE}) and header block,
        #: without its target: requests for other resources with the same
        #: headers (a browser's, a counter in the query string) skip the
        #: parser too.  Only when a head within the memo's size limit cannot
        #: exceed C{max_header_size} (the size checks need no recount).
        self.request_blocks: BoundedMemo[tuple, RequestHead] = BoundedMemo(
            "proxy.request_blocks", REQUEST_MEMO_SIZE, count_hits=False)
        self.split_heads = config.max_header_size >= REQUEST_MEMO_BYTES
        #: Host values that passed L{valid_host} (bounded; emptied when full):
        #: a set lookup instead of the regex for the usual few host names
        self.valid_hosts: BoundedMemo[bytes, bool] = BoundedMemo(
            "proxy.valid_hosts", VALID_HOSTS_SIZE, count_hits=False)
        self._generation = -1
        self.now = reactor.seconds()
        #: C{now} as a connection's first head start (L{AcceptTime}, see
        #: C{ClientProtocol._h2c}), made with C{now}, not per connection
        self.accept_time = AcceptTime(self.now)
        self.date = formatdate(self.now, usegmt=True).encode("ascii")
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = reactor
        #: the request head/body deadlines (C{request_*} keys of C{[proxy]})
        self.read_timeouts = ReadTimeouts.from_config(config)
        #: clients cut for being slow: counts by reason, rate-limited log
        self.timeouts = TimeoutReport("proxy", log)
        #: per-request log lines (errors, failovers), rate-limited on the coarse clock
        self.limiter = LogLimiter(log, lambda: self.now)

    def rememberHost(self, host: bytes) -> None:
        """Remember a valid Host value (at most 256 of at most 255 bytes)."""
        if len(host) <= 255:
            self.valid_hosts.put(host, True)

    def reconfigure(self, config) -> None:
        """
        Reload: take C{config}, a L{ProxyConfig} differing from the current one
        only in settings read per request or per sweep (see
        modcluster/tap.py C{PROXY_LIVE}); the forwarders take theirs.
        """
        self.config = config
        self.read_timeouts = ReadTimeouts.from_config(config)
        for fw in self._uniqueForwarders():
            reconfigure = getattr(fw, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(config)

    def guard_loops(self, guard) -> None:
        """
        Check the node connections the forwarders make to nodes named by a
        host name (and TLS nodes) against the proxy's own listeners, with
        C{guard} (a L{modcluster.loops.LoopGuard}): a connection that reaches
        one is closed before anything is sent and its node removed.
        """
        for fw in self._uniqueForwarders():
            if hasattr(fw, "loop_guard"):
                fw.loop_guard = guard

    def drain(self) -> int:
        """
        Stopping: close the idle client connections; return how many are
        still busy (a request in flight, a request head arriving, a tunnel).
        """
        busy = 0
        for client in list(self._clients):
            drain = getattr(client, "drain", None)
            if drain is not None:  # HTTP/2 connections, TLS handshakes (proxy/h2.py)
                busy += drain()
                continue
            if client._current is None and not client._queue and client._tunnel is None \
                    and (client._reading is None or client._reading.head_size < 0):
                client._closing = True
                # (not transport.loseConnection(): a client still paused as the
                # transport's producer, its last answer over the high-water
                # mark, would be resumed instead of closed once it is sent)
                lose_connection(client.transport)
            else:
                # in the reactor's set from now on, whatever stops it
                client.startDeferredReading()
                busy += 1
        return busy

    # -- per-node concurrency limit (docs/balancing.md, "Beyond mod_proxy_cluster")

    def admit(self, ex: _Exchange, node, limit: int, cookie, fresh: bool) -> bool:
        """
        C{node} is at its limit of requests in flight (or others wait for it):
        queue C{ex} (FIFO, bounded) until a slot frees, or answer 503 at once
        when the queue is full.  Returns C{True} when C{ex} was queued or
        answered, C{False} when it may go now.
        """
        queue = self.queues.get(node.id)
        if queue is not None:
            while queue and queue[0][0].done:  # clients that left while waiting
                queue.popleft()
        if not queue:
            if node.rt.busy < limit:
                return False  # others wait for other nodes only
            if queue is None:
                queue = self.queues[node.id] = deque()
        if len(queue) >= self.config.node_queue_size:
            self.queue_rejected += 1
            ex.proto._respondError(ex, 503, f"node {node.route} busy ({limit} requests in "
                                   "flight, queue full)", self.policy.retry_after)
            return True
        ex.counted = False
        entry = (ex, cookie, fresh)
        queue.append(entry)
        ex.wait_call = self.reactor.callLater(self.config.node_queue_timeout,
                                              self._queueTimeout, node, entry, limit)
        return True

    def _queueTimeout(self, node, entry, limit: int) -> None:
        ex = entry[0]
        ex.wait_call = None
        queue = self.queues.get(node.id)
        if queue is not None:
            try:
                queue.remove(entry)
            except ValueError:
                pass
            if not queue:
                del self.queues[node.id]
        if not ex.done:
            self.queue_rejected += 1
            ex.proto._respondError(ex, 503, f"node {node.route} busy ({limit} requests in "
                                   f"flight for {self.config.node_queue_timeout:g} s)",
                                   self.policy.retry_after)

    def wake(self, node) -> None:
        """A request on C{node} ended: let the next waiting ones go."""
        queue = self.queues.get(node.id)
        limit = self.node_limit
        rt = node.rt
        while queue and (not limit or rt.busy < limit):
            ex, cookie, fresh = queue.popleft()
            if ex.done:
                continue
            call = ex.wait_call
            if call is not None and call.active():
                call.cancel()
            ex.wait_call = None
            try:
                ex._attempt(ex.decision, cookie, fresh, queued=True)
            except Exception:
                ex.proto._routingBug(ex)
        if not queue:
            self.queues.pop(node.id, None)

    def balancer_requests(self, name: str) -> int:
        """
        Requests sent to the nodes of balancer C{name} so far (for the retry
        budget).  A sum over the table's nodes, so computed at most once per
        balancer and coarse-clock second (L{sweep} forgets it), and only when
        the budget needs it (L{RetryBudget.allow} calls it once the window's
        replays reach its minimum): a failing cluster of many nodes does not
        pay it per failed request.
        """
        total = self._balancer_totals.get(name)
        if total is None:
            total = self._balancer_totals[name] = sum(
                e.rt.requests for e in self.table().nodes if e.balancer == name)
        return total

    def plane_totals(self) -> dict:
        """Retry budget refusals, requests queued now and queue refusals, for
        /metrics (summed over worker processes by the pool)."""
        return {"retry_refused": self.retry_budget.refused, "queued": self.queued(),
                "queue_rejected": self.queue_rejected}

    def queued(self) -> int:
        """Requests waiting for a node slot now."""
        return sum(len(q) for q in self.queues.values())

    def passive_failure(self, node, reason: str) -> None:
        """
        A failure of C{node} for passive health (a connect error, a reset, a
        malformed response, a 5xx with C{eject_on_5xx}): consecutive ones eject
        the node for a while (L{record_failure}).
        """
        now = self.reactor.seconds()
        try:
            duration = record_failure(self.table(), node, now, self.policy)
        except Exception:
            log.failure("passive health of node {route}", route=node.route)
            return
        if duration is None:
            return
        log.warn("node {route} ejected for {seconds:g} s after {count} consecutive "
                 "failures (last: {reason})", route=node.route, seconds=duration,
                 count=self.policy.eject_failures, reason=reason)
        if self.on_node_ejected is not None:
            self.on_node_ejected(node.route, duration, reason)

    def node_answered(self, node, retrying: bool, status: int) -> None:
        """
        A response head came from C{node} while it had failures, was in error
        or retried, or the status is 5xx.
        """
        rt = node.rt
        if status >= 500:
            if self.policy.eject_on_5xx and status in _FAILURE_STATUSES:
                self.passive_failure(node, f"status {status}")
                return
        rt.fails = 0
        if retrying or rt.in_error:
            self.on_node_success(node.route)

    def buildProtocol(self, addr) -> ClientProtocol:
        return ClientProtocol(self, addr)

    @property
    def accept_protocol(self) -> Optional[type]:
        """
        For the accept loop (L{modcluster.proxy.accept}): a class it may build
        a connection's protocol with as C{accept_protocol(factory)}, instead
        of C{buildProtocol(peer)}, without making the peer address object
        (C{ClientProtocol.connectionMade} takes the peer's host and port from
        a plain C{tcp.Server}'s C{client}); None when a subclass builds its
        protocols itself.
        """
        if type(self).buildProtocol is ProxyFactory.buildProtocol:
            return ClientProtocol
        return None

    def startFactory(self) -> None:
        if not self._sweeper.running:
            self._sweeper.start(SWEEP_INTERVAL, now=False)

    def stopFactory(self) -> None:
        if self._sweeper.running:
            self._sweeper.stop()
        for fw in self._uniqueForwarders():
            fw.close()
        if self.observer is not None:
            self.observer.tick()

    def _uniqueForwarders(self) -> list:
        seen: list = []
        for fw in self.forwarders.values():
            if all(fw is not other for other in seen):
                seen.append(fw)
        return seen

    def sweep(self) -> None:
        """Once a second: coarse clock, Date, timeouts, pool upkeep."""
        now = self.reactor.seconds()
        self.now = now
        self.accept_time = AcceptTime(now)
        self.date = formatdate(now, usegmt=True).encode("ascii")
        self._balancer_totals.clear()
        self.limiter.tick(now)
        if self.observer is not None:
            try:
                self.observer.tick()
            except Exception:
                log.failure("access log flush failed")
        limit = self.config.client_timeout
        for client in list(self._clients):
            try:
                client.checkTimeout(now, limit)
            except Exception:
                log.failure("client timeout check failed")
        table = self.table()
        try:
            totals: dict = {}
            for entry in table.nodes:
                name = entry.settings.balancer
                totals[name] = totals.get(name, 0) + entry.rt.requests
            self.retry_budget.observe(totals)
        except Exception:
            log.failure("retry budget upkeep failed")
        forwarders = self._uniqueForwarders()
        if table.generation != self._generation:
            self._generation = table.generation
            for fw in forwarders:
                fw.retain(table.nodes)
        for fw in forwarders:
            try:
                fw.tick(now)
            except Exception:
                log.failure("forwarder upkeep failed")
