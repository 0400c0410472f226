"""
twistd plugin glue: C{twistd -n modcluster [--config FILE] [--check] [--demo]}.

This is the only module that assembles the application: it reads the
configuration and wires the registry, the management listener (MCMP, console,
API, metrics), the proxy listeners, advertise, health checks and persistence
into one L{MultiService}.  Everything below receives the reactor from here.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import attrs
from twisted.application import strports
from twisted.internet import defer
from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.python import usage

from modcluster.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from modcluster.lifecycle import BalancerService

log = Logger()


class Options(usage.Options):
    synopsis = "[--config FILE] [--check] [--demo]"
    longdesc = (
        "Run the txmodcluster mod_cluster balancer.  Without --config it runs on the "
        "built-in defaults: management (MCMP) on 127.0.0.1:6666, the console, API "
        "and metrics on 127.0.0.1:8090 and the proxy on 127.0.0.1:8000."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file (see docs/configuration.md)."],
    ]
    optFlags = [
        ["check", None, "Validate the configuration file and exit."],
        ["demo", None, "Also start two demo backends on loopback that register "
                       "themselves with this balancer over MCMP."],
    ]

    def opt_version(self) -> None:
        """
        Print the txmodcluster and Twisted versions and exit.
        """
        from modcluster.node.tap import print_version

        print_version()

    def postOptions(self) -> None:
        path = self["config"]
        try:
            self.config = load_config(path) if path else Config()
        except ConfigError as e:
            _refuse([str(e)])
        from modcluster.preflight import problems

        found = [f"{path or '(built-in defaults)'}: {p}" for p in problems(self.config)]
        if self["demo"] and self.config.manager.tls.enabled:
            found.append("--demo needs a plain (non-TLS) management listener "
                         "(manager.tls.enabled is true)")
        if found:
            _refuse(found)
        if self["check"]:
            sys.stdout.write(f"{path or '(built-in defaults)'}: configuration OK\n")
            sys.stdout.flush()
            raise SystemExit(0)


def _refuse(problems: list[str]) -> None:
    """
    Print each problem on its own line on stderr and exit with status 1: no
    usage text, no traceback (twistd would print both for a L{usage.UsageError}).
    """
    for line in problems:
        sys.stderr.write(f"{line}\n")
    sys.stderr.flush()
    raise SystemExit(1)


def makeService(options: Options) -> BalancerService:
    from twisted.internet import reactor

    path = options.config.manager.handover_socket
    takeover = None
    if path:
        from modcluster.handover import take_over

        try:
            takeover = take_over(path)
        except (OSError, ValueError, KeyError) as e:
            _refuse([f"{options['config']}: manager.handover_socket: cannot take over from "
                     f"the balancer at {path}: {e}"])
    top = build(options.config, reactor, demo=bool(options["demo"]))
    if path:
        _handover(top, options.config, reactor, path, takeover)
    top.config_path = options["config"]
    top.twistd_options = getattr(options, "parent", None)
    top.signals = True
    return top


def _handover(top, config: Config, reactor, path: str, takeover) -> None:
    """
    Hitless restarts (modcluster/handover.py): record (or adopt) the
    listeners, restore the registrations handed over, serve the handover
    socket.
    """
    from modcluster.handover import HandoverService, ListenerBook

    book = ListenerBook(reactor, takeover)
    top.listener_book = book
    if takeover is not None:
        # The handed state is fresher than the state file: the file is not
        # read when the service starts (BalancerService.taken_over).
        top.taken_over = True
        top.registry.clear()
        try:
            count = top.handler.restore_state(takeover.state)
        except Exception as e:
            top.registry.clear()
            log.error("handover: the registrations of process {pid} are not usable "
                      "({error}); starting empty, nodes register again", pid=takeover.pid,
                      error=e)
        else:
            log.info("handover: {count} nodes taken over from process {pid}",
                     count=count, pid=takeover.pid)
        if config.proxy.workers > 1:
            _adopt_worker_sockets(top, config, takeover)
    HandoverService(reactor, path, top, book, takeover).setServiceParent(top)


def _adopt_worker_sockets(top, config: Config, takeover) -> None:
    """Give the worker pool the proxy sockets handed over (bind the others)."""
    import socket

    from twisted.internet.endpoints import serverFromString

    from modcluster.proxy.sharing import AddressRecorder, SharedListener, bind_shared
    from modcluster.proxy.workers import WorkerPool

    for pool in top:
        if not isinstance(pool, WorkerPool):
            continue
        for description in config.proxy.listen:
            recorder = AddressRecorder()
            serverFromString(recorder, description).listen(None).addErrback(lambda _: None)
            if recorder.args is None:  # not a TCP/SSL listener: bind_shared says so
                pool.listeners.append(bind_shared(description, pool.count))
                continue
            kind, port, _, interface = recorder.args
            handed = takeover.pop(interface, port) if port else []
            if not handed:
                pool.listeners.append(bind_shared(description, pool.count))
                continue
            sockets = [socket.socket(fileno=fd) for fd, _ in handed]
            for extra in sockets[pool.count:]:
                extra.close()
            sockets = [sockets[i % len(sockets)] for i in range(pool.count)]
            host, bound = sockets[0].getsockname()[:2]
            pool.listeners.append(SharedListener(description, kind, sockets[0].family, host,
                                                 bound, tuple(sockets)))


def endpoint_address(description: str) -> tuple[str, int]:
    """
    The (host, port) a server endpoint description listens on, for the advertised
    address: C{tcp:6666:interface=10.0.0.1} → C{("10.0.0.1", 6666)}.  Host is
    C{0.0.0.0} / C{::} when no interface is given.
    """
    from modcluster.preflight import split_endpoint

    kind, positional, kw = split_endpoint(description)
    port = int(kw.get("port", positional[0] if positional else 0))
    default = "::" if kind == "tcp6" else "0.0.0.0"
    return kw.get("interface", default), port


def build(config: Config, reactor, demo: bool = False) -> BalancerService:
    """
    Assemble the whole balancer for C{config} on C{reactor}: a
    L{BalancerService} whose declared attributes (C{registry}, C{handler},
    C{metrics}, C{management_tls}, C{state_store}) tests and tools reach.
    Nothing is read from disk here: the saved state (C{manager.persist}) is
    restored when the service starts.
    """
    from twisted.application.internet import StreamServerEndpointService

    from modcluster.api import APIResource
    from modcluster.services.maintenance import Maintenance
    from modcluster.services.persistence import StateStore
    from modcluster.cluster.registry import Limits, Registry
    from modcluster.console.resources import ConsoleResource, mount
    from modcluster.health import NodeProber
    from modcluster.listening import ReadTimeouts, TimeoutReport, with_backlog
    from modcluster.mcmp.handler import MCMPHandler
    from modcluster.mcmp.resource import ManagementRoot, ManagementSite, MCMPResource
    from modcluster.metrics import Metrics

    from modcluster.lifecycle import BalancerService

    m = config.manager
    registry = Registry(
        reactor,
        Limits(max_nodes=m.max_nodes, max_hosts=m.max_hosts, max_contexts=m.max_contexts,
               wait_before_remove=m.wait_before_remove,
               lbstatus_recalc_time=m.lbstatus_recalc_time,
               idle_failures_before_remove=m.idle_failures_before_remove,
               worker_retry=m.worker_retry),
        default_balancer=m.balancer_name,
        event_log_size=config.console.event_log_size,
    )
    registry.slow_start = (config.proxy.slow_start if config.proxy.smooth_balancing else 0.0,
                           config.proxy.slow_start_min_share)
    node_tls = _node_tls(config)
    prober = NodeProber(reactor, config.proxy, node_tls)
    metrics = Metrics(registry, m.release,
                      per_context=config.console.metrics_per_context)
    policy = None
    identities = None
    if m.tls.enabled:
        from modcluster.tls import IdentityPolicy, peer_identities

        if m.tls.identities:
            policy = IdentityPolicy({k: list(v) for k, v in m.tls.identities.items()})
        identities = lambda request: peer_identities(request.channel.transport)  # noqa: E731
    from modcluster.loops import ProxyAddresses

    # the proxy listeners' bound addresses: a CONFIG naming one is refused
    # (a forwarding loop, modcluster/loops.py)
    own_addresses = ProxyAddresses()
    handler = MCMPHandler(
        registry, prober, reactor,
        default_balancer=m.balancer_name,
        max_message_size=m.max_message_size,
        release=m.release,
        ws_tunnel=config.proxy.enable_ws_tunnel,
        identity_policy=policy,
        stats=metrics.stats,
        probe_reuse=m.status_probe_reuse,
        own_addresses=own_addresses,
    )
    top = BalancerService(config, reactor, registry=registry, handler=handler, metrics=metrics)
    # Nodes registered before the proxy listeners were up (a saved state, a
    # handover) are checked for a forwarding loop once they listen, and again
    # on every reload (the addresses a wildcard listener takes can change).
    top.when_listening.append(handler.remove_looping_nodes)

    def recheck_loops(new: Config) -> None:
        handler.forget_named_loops()
        handler.remove_looping_nodes()

    top.every_reload.append(recheck_loops)
    if m.persist:
        # Restored through the MCMP handler (a saved state gets MCMP's checks
        # and quotas) when the top service starts (BalancerService.restore_state).
        top.state_store = StateStore(registry, m.state_file, reactor, handler.restore_state)
        top.state_store.setServiceParent(top)
    Maintenance(registry, prober, reactor,
                recovery_interval=m.recovery_probe_interval).setServiceParent(top)

    # the session ids the proxy saw (manager.max_session_ids > 0), for the
    # console and the API; the table is made with the proxy below
    session_table: list = []
    session_pairs = None
    if m.max_session_ids > 0:
        def session_pairs():
            return [(sid, route) for table in session_table
                    for sid, route, _ in table.entries(reactor.seconds())]

    c = config.console
    # console, API and metrics only on their own listener(s)
    separate = bool(c.listen)
    serve_console = c.enabled or c.api or c.metrics
    console_tls = c.tls if c.tls is not None else m.tls.enabled
    console = None
    if c.enabled:
        from modcluster.access import CommandAuthority
        from modcluster.tls import peer_identities

        console = ConsoleResource(
            registry, c, m.release, clock=reactor, mcmp=handler, sessions=session_pairs,
            display=[("Management listeners", ", ".join(m.listen)),
                     ("Console listeners", ", ".join(c.listen) or "the management listeners"),
                     ("Proxy listeners", ", ".join(config.proxy.listen) + (
                         f" ({config.proxy.workers} worker processes)"
                         if config.proxy.workers > 1 else "")),
                     ("Advertise", _advertise_summary(config))],
            authority=CommandAuthority(policy, m.tls.operators),
            identities=lambda request: peer_identities(request.channel.transport))

    proxy = _proxy(config, reactor, registry, node_tls, own_addresses,
                   on_node_loop=handler.forwarding_loop_found)
    pool = proxy if config.proxy.workers > 1 else None
    metrics.cluster.workers = pool
    if pool is not None:
        metrics.client_timeouts.add("proxy", lambda: pool.client_timeouts)
    else:
        metrics.client_timeouts.add("proxy", lambda: proxy.factory.timeouts.counts)
    _observe(config, reactor, top, metrics, proxy, pool)
    sessions = pool.sessions if pool is not None else proxy.factory.sessions
    session_table[:] = [sessions]
    metrics.cluster.data_plane = (pool.plane_totals if pool is not None
                                  else proxy.factory.plane_totals)

    def management_root(with_mcmp: bool, with_console: bool) -> ManagementRoot:
        root = ManagementRoot(MCMPResource(handler, identities) if with_mcmp else None,
                              index=c.path.encode())
        if with_console:
            if console is not None:
                mount(root, c.path, console)
            if c.api:
                mount(root, c.api_path, APIResource(registry, m.release, workers=pool,
                                                    sessions=sessions, clock=reactor))
            if c.metrics:
                mount(root, c.metrics_path, metrics.resource)
        return root

    from modcluster.access import AccessGuard, AllowList, HostCheck, RateLimitedLog

    refusals = RateLimitedLog(reactor)
    read_timeouts = ReadTimeouts.from_config(m)
    slow = TimeoutReport("manager")
    metrics.client_timeouts.add("manager", lambda: slow.counts)
    hosts = HostCheck(c.hosts)
    guarded = AccessGuard(
        management_root(True, not separate), listener="management", clock=reactor,
        allow=AllowList(m.allow), console_allow=None if separate else AllowList(c.allow),
        hosts=None if separate else hosts, log=refusals)
    site = ManagementSite(guarded, max_message_size=m.max_message_size,
                          timeout=m.request_timeout, read_timeouts=read_timeouts,
                          timeouts=slow, reactor=reactor)
    tls_live = top.management_tls  # the SwappableServerTLS of each TLS listener
    for description in m.listen:
        # (recorded: a CONFIG naming a management or console listener is
        # refused as a forwarding loop is, modcluster/loops.py)
        _listen(reactor, with_backlog(description, m.listen_backlog), site,
                m.tls, tls_live, _recorder(own_addresses, "management")).setServiceParent(top)
    if tls_live:
        top.on_reload([f"manager.tls.{k}" for k in MANAGER_TLS_LIVE],
                      lambda new: _renew_tls(tls_live, new.manager.tls))
    if separate and serve_console:
        from modcluster.tls import server_endpoint

        console_site = ManagementSite(
            AccessGuard(management_root(False, True), listener="console", clock=reactor,
                        allow=AllowList(c.allow), hosts=hosts, log=refusals),
            timeout=m.request_timeout, read_timeouts=read_timeouts, timeouts=slow,
            reactor=reactor)
        for description in c.listen:
            description = with_backlog(description, m.listen_backlog)
            record = _recorder(own_addresses, "console")
            if console_tls:
                _listen(reactor, description, console_site, m.tls,
                        tls_live, record).setServiceParent(top)
            else:
                StreamServerEndpointService(record(server_endpoint(reactor, description)),
                                            console_site).setServiceParent(top)
    console_guard = console_site.resource if separate and serve_console else None

    def access_settings(new: Config) -> None:
        nm, nc = new.manager, new.console
        new_hosts = HostCheck(nc.hosts)
        guarded.reconfigure(allow=AllowList(nm.allow),
                            console_allow=None if separate else AllowList(nc.allow),
                            hosts=None if separate else new_hosts)
        if console_guard is not None:
            console_guard.reconfigure(allow=AllowList(nc.allow), hosts=new_hosts)
        timeouts = ReadTimeouts.from_config(nm)
        site.read_timeouts = timeouts
        if console_guard is not None:
            console_site.read_timeouts = timeouts

    top.on_reload(("manager.allow", "console.allow", "console.hosts")
                  + tuple(f"manager.{k}" for k in READ_TIMEOUT_KEYS), access_settings)
    url = console_url(config)
    if url is not None:
        log.info("Console: {url} (JSON API under {api}, metrics at {metrics})", url=url,
                 api=c.api_path, metrics=c.metrics_path)

    proxy.setServiceParent(top)
    _live_settings(top, registry, console, proxy)
    if config.advertise.enabled:
        _advertiser(config, reactor).setServiceParent(top)
    if demo:
        from modcluster.demo import DemoNodes

        if m.tls.enabled:
            raise usage.UsageError("--demo needs a plain (non-TLS) management listener")
        DemoNodes(reactor, endpoint_address(m.listen[0]),
                  console=console_url(config)).setServiceParent(top)
    return top


def _live_settings(top, registry, console, proxy) -> None:
    """
    What a reload (SIGHUP) applies without a restart: one hook per group of
    keys (see modcluster/lifecycle.py and docs/operations.md, "Reload").
    """
    from modcluster.cluster.registry import Limits

    def quotas(new: Config) -> None:
        m = new.manager
        registry.limits = Limits(
            max_nodes=m.max_nodes, max_hosts=m.max_hosts, max_contexts=m.max_contexts,
            wait_before_remove=m.wait_before_remove,
            lbstatus_recalc_time=registry.limits.lbstatus_recalc_time,
            idle_failures_before_remove=m.idle_failures_before_remove,
            worker_retry=registry.limits.worker_retry)

    top.on_reload(("manager.max_nodes", "manager.max_hosts", "manager.max_contexts",
                   "manager.wait_before_remove", "manager.idle_failures_before_remove"),
                  quotas)
    if console is not None:
        def console_settings(new: Config) -> None:
            console._config = attrs.evolve(
                console._config, **{k: getattr(new.console, k) for k in CONSOLE_LIVE})

        top.on_reload([f"console.{k}" for k in CONSOLE_LIVE], console_settings)
    p = top.config.proxy
    if p.tls_engine == "stdlib" and any(
            d.split(":", 1)[0].strip().lower() == "ssl" for d in p.listen):
        # a reload re-reads the certificate files of the ssl: proxy listeners
        from modcluster.proxy.stdtls import reload_certificates

        reload_tls = getattr(  # worker processes: each re-reads
            proxy, "reload_certificates", reload_certificates)
        top.every_reload.append(lambda new: reload_tls())
        _ticket_keys(top, top.reactor, proxy, p)
    factory = getattr(proxy, "factory", None)
    if factory is not None:  # one process; worker processes keep theirs until a restart
        def proxy_settings(new: Config) -> None:
            factory.reconfigure(attrs.evolve(
                factory.config, **{k: getattr(new.proxy, k) for k in PROXY_LIVE}))

        top.on_reload([f"proxy.{k}" for k in PROXY_LIVE], proxy_settings)
        def stop_accepting():
            # Hold the factory open while its listeners stop: its last port
            # stopping would stop it, closing the node connections that the
            # requests in flight are using.
            factory.doStart()
            top.after_drain.append(factory.doStop)
            return defer.gatherResults([s.stopService() for s in list(proxy)])

        top.drainers.append(factory.drain)
        top.stop_accepting.append(stop_accepting)
    else:  # worker processes: the pool passes the live proxy settings on
        def worker_settings(new: Config) -> None:
            live = {k: getattr(new.proxy, k) for k in PROXY_LIVE}
            proxy.reconfigure(attrs.evolve(proxy.config,
                                           proxy=attrs.evolve(proxy.config.proxy, **live)))

        top.on_reload([f"proxy.{k}" for k in PROXY_LIVE], worker_settings)


#: Console settings a reload applies (read at every page).
CONSOLE_LIVE = ("check_nonce", "allow_cmd", "allow_display", "reduce_display")
#: Proxy settings a reload applies (read per request
#: or per sweep from the factory's configuration, in every worker process too).
#: The slow-client deadlines of C{[proxy]} and C{[manager]} (modcluster/listening.py).
READ_TIMEOUT_KEYS = ("request_header_timeout", "request_header_timeout_max",
                     "request_header_min_rate", "request_body_timeout",
                     "request_body_min_rate")
PROXY_LIVE = ("client_timeout", "max_request_body", "drain_timeout", "timeout",
              "max_idle_per_node", "allow_trace", "h2c") + READ_TIMEOUT_KEYS


class InProcessProxy(MultiService):
    """
    The data plane served by this process: the client listeners (child
    services) and the one factory they share.
    """

    def __init__(self, factory) -> None:
        super().__init__()
        self.factory = factory


def _proxy(config: Config, reactor, registry, node_tls, own_addresses=None,
           on_node_loop=None):
    """
    The data plane: the client listeners on one in-process factory, or, with
    C{proxy.workers} > 1, the worker processes that serve them.  Their bound
    addresses go to C{own_addresses} (a L{modcluster.loops.ProxyAddresses}).
    C{on_node_loop(route, address, peer, listener, kind)}: a node connection to
    a node named by a host name reached one of them, or one of the other
    listeners recorded in C{own_addresses} (L{modcluster.loops.LoopGuard}).
    """
    p = config.proxy
    if p.workers > 1:
        from modcluster.proxy.workers import WorkerPool

        workers = WorkerPool(reactor, config, registry)
        workers.on_node_loop = on_node_loop
        if own_addresses is not None:
            workers.other_listeners = own_addresses.others
            own_addresses.on_listening(workers.listeners_changed)
            own_addresses.add_source(
                lambda: [(listener.host, listener.port) for listener in workers.listeners])
        return workers
    factory = _proxy_factory(
        config, reactor, table=registry.snapshot,
        on_node_failure=registry.set_error,
        on_node_success=lambda route: registry.clear_error(route, "answered a request"),
        node_tls=node_tls,
        on_node_ejected=registry.node_ejected)
    if own_addresses is not None and on_node_loop is not None:
        from modcluster.loops import LoopGuard

        factory.guard_loops(LoopGuard(own_addresses.bound, on_node_loop,
                                      own_addresses.others))
    if config.manager.max_session_ids > 0:
        from modcluster.proxy.sessions import SessionTable

        factory.sessions = SessionTable(config.manager.max_session_ids)
    from modcluster.listening import with_backlog

    services = InProcessProxy(factory)
    from twisted.application.internet import StreamServerEndpointService

    from modcluster.tls import server_endpoint

    from modcluster.proxy.alpn import alpn_protocols, listener_factory

    for description in p.listen:
        # server_endpoint: an ssl: listener answers ALPN (browsers, curl offer it);
        # with [proxy] http2 it selects h2 first and serves it (listener_factory)
        endpoint = server_endpoint(reactor, with_backlog(description, p.listen_backlog),
                                   alpn_protocols(p), p.tls_engine)
        if p.fast_event_loop:
            endpoint = _accepting(endpoint, description, p.tls_engine)
        if own_addresses is not None:
            endpoint = own_addresses.record(endpoint)
        StreamServerEndpointService(
            endpoint, listener_factory(factory, description)).setServiceParent(services)
    return services


def _accepting(endpoint, description: str, tls_engine: str = "twisted"):
    """
    A plain TCP proxy listener (and an ssl: one with the stdlib TLS engine)
    accepts with modcluster/proxy/accept.py.
    """
    from modcluster.proxy.accept import AcceptingEndpoint, accepts_description

    return (AcceptingEndpoint(endpoint) if accepts_description(description, tls_engine)
            else endpoint)


def _observer(config: Config, reactor, send=None):
    """
    The data plane's L{Observer} (access log, client metrics), or C{None} when
    both are off.  C{send}: in a worker process, how access log lines for
    standard output reach the control process.
    """
    from modcluster.accesslog import AccessLine, LogFile
    from modcluster.proxy.observe import ClientStats, Observer

    p = config.proxy
    # counted only when /metrics serves them
    count = p.client_metrics and config.console.metrics
    if not p.access_log and not count:
        return None
    sink = line = None
    if p.access_log:
        try:
            sink = LogFile(p.access_log, send=(lambda text: send(["access", text]))
                           if send is not None and p.access_log == "-" else None)
        except OSError as e:
            raise usage.UsageError(
                f"proxy.access_log: cannot open {p.access_log!r}: {e.strerror}") from None
        line = AccessLine(p.access_log_format)
    stats = ClientStats(p.client_metrics_labels) if count else None
    return Observer(reactor.seconds, sink, line, stats)


def _observe(config: Config, reactor, top, metrics, proxy, pool) -> None:
    """Client metrics into C{metrics}; SIGUSR1 reopens the access log."""
    from modcluster.proxy.observe import merge_exports

    p = config.proxy
    if pool is not None:
        if p.client_metrics and config.console.metrics:
            metrics.add_client_stats(pool.client_stats)
        reopen = pool.reopen_logs
    else:
        observer = proxy.factory.observer
        if observer is None:
            return
        if observer.stats is not None:
            stats = observer.stats
            metrics.add_client_stats(lambda: merge_exports([stats.export()]))
        reopen = observer.access_log.reopen if observer.access_log is not None else None
    if p.access_log and reopen is not None:
        top.on_reopen(reopen)


def _proxy_factory(config: Config, reactor, table, on_node_failure, on_node_success,
                   node_tls, send=None, on_node_ejected=None):
    """The client-side factory with its HTTP and AJP forwarders and routing policy."""
    from modcluster.proxy.ajp import AJPForwarder
    from modcluster.balancer import RoutingPolicy
    from modcluster.balancer._health import resilience_settings
    from modcluster.proxy.front import ProxyFactory

    p = config.proxy
    factory = ProxyFactory(
        reactor, p, table=table,
        on_node_failure=on_node_failure,
        on_node_success=on_node_success,
        forwarders={"ajp": AJPForwarder(reactor, p)},
        node_tls=node_tls,
        policy=RoutingPolicy(
            use_alias=p.use_alias, deterministic_failover=p.deterministic_failover,
            worker_retry=config.manager.worker_retry,
            no_context_status=p.response_status_on_no_context,
            unavailable_context_status=p.unavailable_context_status,
            retry_after=p.retry_after,
            **resilience_settings(p)),
        observer=_observer(config, reactor, send),
        on_node_ejected=on_node_ejected,
    )
    if p.fast_event_loop:
        from modcluster.proxy import fastloop

        if fastloop.install(reactor):
            log.info("proxy: lean epoll event loop installed (proxy.fast_event_loop)")
        else:
            log.info("proxy: reactor {reactor} kept as it is (fast_event_loop needs an "
                     "unmodified epoll reactor)", reactor=type(reactor).__name__)
        if not getattr(reactor, "running", True):
            # twistd: once started (a worker process freezes after its build, worker.py)
            reactor.callWhenRunning(_freeze_heap)
    return factory


def _freeze_heap() -> None:
    from modcluster.proxy import fastloop

    log.info("proxy: {count} objects of the started process frozen out of the cyclic "
             "GC's full collections (proxy.fast_event_loop)", count=fastloop.freeze_heap())


def _ticket_keys(top, reactor, proxy, p) -> None:
    """
    The session ticket keys of the stdlib engine's ssl: listeners
    (modcluster/proxy/tickets.py): made here, given to the worker processes
    (C{proxy.publish_ticket_keys}), the key file re-read on every reload.
    """
    from modcluster.proxy.tickets import TicketKeyService

    tickets = TicketKeyService(reactor, p.tls_ticket_keys or "", p.tls_ticket_rotation,
                               p.tls_ticket_keys_kept,
                               getattr(proxy, "publish_ticket_keys", None))
    tickets.setServiceParent(top)
    top.every_reload.append(lambda new: tickets.reload())


def build_worker(config: Config, reactor, listeners, send):
    """
    Assemble a data-plane worker process (see modcluster/proxy/workers.py): the
    proxy factory routing on a L{Mirror} of the control process's registry,
    serving the inherited sockets C{listeners} = C{[(fd, family, description)]};
    C{send(message)} reaches the control process.
    """
    from modcluster.cluster.mirror import Mirror
    from modcluster.proxy.workers import WorkerService

    mirror = Mirror(reactor.seconds(), config.manager.lbstatus_recalc_time)

    def failed(route: str, reason: str) -> None:
        mirror.node_failed(route, reactor.seconds())
        send(["fail", route, reason])

    def answered(route: str) -> None:
        mirror.node_answered(route)
        send(["ok", route])

    def ejected(route: str, seconds: float, reason: str) -> None:
        send(["eject", route, seconds, reason])

    factory = _proxy_factory(config, reactor, mirror.snapshot, failed, answered,
                             _node_tls(config), send, ejected)
    from modcluster.loops import LoopGuard

    # the node connections of this worker are checked against the shared
    # listening sockets (every worker's are bound to the same addresses)
    bound = _bound_addresses(listeners)
    if config.manager.max_session_ids > 0:
        from modcluster.proxy.sessions import SessionTable

        factory.sessions = SessionTable(config.manager.max_session_ids, track_changes=True)
    service = WorkerService(reactor, mirror, factory, listeners, send)
    # and the management and console listeners, which the control process tells
    factory.guard_loops(LoopGuard(lambda: bound,
                                  lambda *found: send(["loop", *found]),
                                  lambda: service.other_listeners))
    return service


def _bound_addresses(listeners) -> list[tuple[str, int]]:
    """C{(host, port)} of inherited listening sockets C{[(fd, family, description)]}."""
    import os
    import socket

    out = []
    for fd, family, _ in listeners:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            with socket.socket(family, socket.SOCK_STREAM, fileno=os.dup(fd)) as s:
                host, port = s.getsockname()[:2]
        except OSError:
            continue
        out.append((host, port))
    return out


def console_url(config: Config):
    """
    The console's URL on its first listener (or on the first management listener
    when C{console.listen} is empty), for the start-up log line and the demo
    page; None when the console is off or listens on a UNIX socket.
    """
    c = config.console
    if not c.enabled:
        return None
    description = (c.listen or config.manager.listen)[0]
    kind = description.split(":", 1)[0]
    if kind not in ("tcp", "tcp6", "ssl"):
        return None
    tls = (c.tls if c.tls is not None else config.manager.tls.enabled) if c.listen \
        else config.manager.tls.enabled
    host, port = endpoint_address(description)
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if tls or kind == "ssl" else "http"
    return f"{scheme}://{host}:{port}{c.path}"


#: Management TLS settings a reload applies to new connections.
MANAGER_TLS_LIVE = ("certificate", "private_key", "ca", "require_client_certificate",
                    "minimum_version", "ciphers")


def _management_tls(tls_config):
    from modcluster.tls import server_context_factory

    return server_context_factory(
        tls_config.certificate, tls_config.private_key, tls_config.ca,
        require_client_cert=tls_config.require_client_certificate,
        min_version=tls_config.minimum_version, ciphers=tls_config.ciphers)


def _renew_tls(swappables: list, tls_config) -> None:
    """Reload: new certificates, key, CA for the management listeners' new connections."""
    if not tls_config.enabled:
        return  # turning TLS off needs a restart (reported as such)
    options = _management_tls(tls_config)
    for swappable in swappables:
        swappable.options = options
    log.info("management TLS: new connections use {certificate}",
             certificate=tls_config.certificate)


def _recorder(own_addresses, kind: str):
    """C{endpoint -> endpoint}: recorded as a C{kind} listener in C{own_addresses} (if any)."""
    if own_addresses is None:
        return lambda endpoint: endpoint
    return lambda endpoint: own_addresses.record(endpoint, kind)


def _listen(reactor, description: str, site, tls_config, tls_live=None,
            record=lambda endpoint: endpoint):
    from twisted.application.internet import StreamServerEndpointService

    if not tls_config.enabled:
        service = strports.service(description, site, reactor=reactor)
        service.endpoint = record(service.endpoint)
        return service
    from modcluster.tls import SwappableServerTLS, tls_server_endpoint

    factory = SwappableServerTLS(_management_tls(tls_config))
    if tls_live is not None:
        tls_live.append(factory)
    endpoint = tls_server_endpoint(reactor, description, factory,
                                   tls_config.handshake_timeout)
    return StreamServerEndpointService(record(endpoint), site)


def _node_tls(config: Config):
    """C{callable(node) -> IOpenSSLClientConnectionCreator} for https/wss nodes."""
    from modcluster.tls import client_context_factory

    from modcluster.memo import BoundedMemo

    t = config.proxy.tls
    # one creator per node host (hosts come from CONFIG messages: bounded)
    creators: BoundedMemo[str, object] = BoundedMemo("proxy.tls.creators", NODE_TLS_CREATORS)

    def new_creator(host: str):
        return client_context_factory(
            host, t.ca, t.client_certificate, t.client_private_key, verify=t.verify)

    def creator(node):
        return creators.get(node.settings.host, new_creator)

    return creator


#: Node hosts whose TLS connection creators are kept (more distinct hosts
#: empty the memo; a creator is only rebuilt then).
NODE_TLS_CREATORS = 4096


def _advertise_summary(config: Config) -> str:
    a = config.advertise
    if not a.enabled:
        return "off"
    return f"group {a.group} via {a.interface}, ttl {a.ttl}, every {a.frequency} s"


def _advertiser(config: Config, reactor):
    from modcluster.advertise.codec import (
        parse_advertised_url,
        parse_bind_address,
        parse_frequency,
        parse_group,
    )
    from modcluster.advertise.service import Advertiser

    a = config.advertise
    tls = config.manager.tls.enabled
    if a.address:
        scheme, host, port = parse_advertised_url(a.address)
        protocol = scheme if "://" in a.address else ("https" if tls else "http")
    else:
        host, port = endpoint_address(config.manager.listen[0])
        protocol = "https" if tls else "http"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return Advertiser(
        reactor, f"{host}:{port}",
        group=parse_group(a.group), bind_address=parse_bind_address(a.bind_address),
        interface=a.interface, ttl=a.ttl,
        frequency=parse_frequency(a.frequency), security_key=a.security_key,
        manager_url=a.manager_url, manager_protocol=protocol)


__all__ = ["Options", "makeService", "build", "build_worker", "console_url",
           "endpoint_address"]
