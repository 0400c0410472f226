# -*- test-case-name: tests.unit.node.test_node_agent_memory -*-
"""
L{NodeAgent}: the worker-side mod_cluster agent as a Twisted service.

It registers one backend (an HTTP, HTTPS or AJP server) with every known
proxy exactly like the Java C{ModClusterListener}: per-proxy state machine,
INFO + reset requests after an error, periodic STATUS with a load factor,
graceful drain on stop.

Per-proxy state (Java C{MCMPServerState.State})::

    (new) --> ERROR --INFO 200 + reset requests--> OK
    OK --non-200 (not SYNTAX) or I/O error--> ERROR   (recovered next cycle)
    any --answer with Type: SYNTAX--> DOWN            (nothing more is sent to it
                                                        until reset())

While a proxy is not OK every request but INFO is skipped for it.  Each status
cycle (every C{status_period} seconds) recovers the proxies in ERROR (closing
the connection, INFO, reset requests), then, once any INFO ever succeeded,
sends STATUS with the load factor to every proxy.  A proxy that cannot be
reached at all is retried with an exponential backoff counted in cycles (the
next cycle, then every 2nd, 4th ... cycle, at most every
C{reconnect_max_delay} seconds).
"""

from __future__ import annotations

import enum
import math
from typing import Any, Callable, Iterable, Optional, Sequence

from attrs import frozen
from twisted.application.service import Service
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, DeferredLock, gatherResults
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger, LogLevel

from modcluster.accesslog import LogLimiter
from modcluster.node.javaparse import JavaInfoError, parse_info_as_java, parse_stop_app_requests
from modcluster.node.config import NodeConfig
from modcluster.node.load import (
    CommandMetric,
    LoadBalanceFactorProvider,
    MemoryMetric,
    ProbeLatencyMetric,
    SystemLoadMetric,
)
from modcluster.node.probe import IBackendProbe, make_probe
from modcluster.node.protocol import ProxyConnection
from modcluster.node.reset import AppState, command_for, reset_requests
from modcluster.node.wire import (
    CONFIG,
    INFO,
    REMOVE_APP,
    STOP_APP,
    MCMPRequest,
    MCMPResponse,
    context_request,
    encode_request,
    engine_request,
    info_request,
    status_request,
)

__all__ = ["NodeAgent", "ProxyState", "ProxyStatus", "load_tls_options"]

_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


class ProxyState(enum.Enum):
    """
    The state of one proxy as seen by the node.
    """

    OK = "OK"
    ERROR = "ERROR"
    DOWN = "DOWN"


@frozen
class ProxyStatus:
    """
    A read-only view of one proxy (for status pages and tests).

    @ivar established: whether a CONFIG to it ever succeeded.
    """

    host: str
    port: int
    state: ProxyState
    established: bool


class _Proxy:
    def __init__(self, host: str, port: int, connection: ProxyConnection) -> None:
        self.host = host
        self.port = port
        self.connection = connection
        self.state = ProxyState.ERROR
        self.established = False
        self.lock = DeferredLock()
        self.failures = 0
        self.skip = 0
        self.io_error = False
        self.io_error_logged = False
        self.recovering = False

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _when_done(d: Deferred) -> Deferred[None]:
    """
    A Deferred firing (with C{None}) when C{d} fires, leaving C{d} alone.
    """
    done: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        done.callback(None)
        return result

    d.addBoth(fire)
    return done


class NodeAgent(Service):
    """
    The worker-side agent.

    @param config: the settings (L{NodeConfig}).
    @param reactor: the reactor (C{IReactorTime} + C{IReactorTCP}; also
        C{IReactorMulticast} for advertise and C{IReactorProcess} for command
        metrics).
    @param metrics: the L{modcluster.node.load.ILoadMetric} providers to use
        instead of the ones C{config.load.metrics} names (e.g. a
        L{modcluster.node.load.CallableMetric} when embedded).
    @param probe: the L{IBackendProbe} to use instead of the configured one;
        C{False} disables probing.
    @param endpoint_factory: C{(host, port) -> IStreamClientEndpoint} for the
        MCMP connections (default: TCP, or TLS with C{config.tls}).
    """

    log = Logger()

    def __init__(
        self,
        config: NodeConfig,
        reactor: Any,
        *,
        metrics: Optional[Sequence[Any]] = None,
        probe: Any = None,
        endpoint_factory: Optional[Callable[[str, int], IStreamClientEndpoint]] = None,
    ) -> None:
        self.config = config
        self._reactor = reactor
        self._endpoint_factory = endpoint_factory or self._default_endpoint
        self._tls_options: Optional[Callable[[str], Any]] = None
        if config.tls is not None and endpoint_factory is None:
            self._tls_options = load_tls_options(config.tls)
        if metrics is None:
            metrics = self._configured_metrics()
        self._metrics = list(metrics)
        self._load = LoadBalanceFactorProvider(
            self._metrics,
            history=config.load.history,
            decay=config.load.decay,
            initial_load=config.load.initial_load,
        )
        if probe is None and config.probe.enabled:
            probe = make_probe(
                reactor, config.backend, config.probe.path, config.probe.method,
                config.probe.timeout,
            )
        self._probe: Optional[IBackendProbe] = probe or None
        self._backend_reachable: Optional[bool] = None
        self._initial_state = AppState.ENABLED if config.auto_enable else AppState.DISABLED
        self._contexts: dict[str, AppState] = {c: self._initial_state for c in config.contexts}
        self._proxies: list[_Proxy] = []
        for host, port in config.proxies:
            self.add_proxy(host, port)
        self._established = False
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor
        self._cycle: Optional[Deferred] = None
        self._drain: Optional[Deferred[bool]] = None
        self._removed = False
        self._advertise_port: Any = None
        #: the proxies added by advertise (at most [advertise] max_proxies)
        self._advertised_proxies: set[tuple[str, int]] = set()
        #: rate-limited lines (advertised proxies over the limit)
        self._limiter = LogLimiter(self.log, self._reactor.seconds)
        self.last_load: Optional[int] = None

    # --- construction helpers ---------------------------------------------------

    def _configured_metrics(self) -> list[Any]:
        metrics: list[Any] = []
        for m in self.config.load.metrics:
            if m.type == "cpu":
                metrics.append(SystemLoadMetric(weight=m.weight, capacity=m.capacity))
            elif m.type == "memory":
                metrics.append(MemoryMetric(weight=m.weight, capacity=m.capacity))
            elif m.type == "command":
                assert m.command is not None  # node_config_from_dict requires it
                metrics.append(CommandMetric(self._reactor, m.command, m.weight, m.capacity,
                                             m.timeout))
            elif m.type == "probe-latency":
                metrics.append(ProbeLatencyMetric(weight=m.weight, capacity=m.capacity))
        return metrics

    def _default_endpoint(self, host: str, port: int) -> IStreamClientEndpoint:
        from twisted.internet.endpoints import (
            HostnameEndpoint,
            TCP4ClientEndpoint,
            TCP6ClientEndpoint,
            wrapClientTLS,
        )

        timeout = self.config.socket_timeout
        if self._tls_options is not None:
            inner = HostnameEndpoint(self._reactor, host, port, timeout=timeout)
            return wrapClientTLS(self._tls_options(host), inner)
        if isIPAddress(host):
            return TCP4ClientEndpoint(self._reactor, host, port, timeout=timeout)
        if isIPv6Address(host):
            return TCP6ClientEndpoint(self._reactor, host, port, timeout=timeout)
        return HostnameEndpoint(self._reactor, host, port, timeout=timeout)

    # --- public API ------------------------------------------------------------

    @property
    def established(self) -> bool:
        """
        Whether an INFO ever succeeded (STATUS is sent only from then on).
        """
        return self._established

    @property
    def contexts(self) -> dict[str, AppState]:
        """
        A copy of our contexts and the state we want the proxies to hold.
        """
        return dict(self._contexts)

    def proxies(self) -> list[ProxyStatus]:
        """
        The known proxies and their states.
        """
        return [ProxyStatus(p.host, p.port, p.state, p.established) for p in self._proxies]

    def add_proxy(self, host: str, port: int) -> bool:
        """
        Add a proxy (in ERROR state, so it is synchronised at the next cycle).

        @return: C{False} if it was already known.
        """
        if any(p.address == (host, port) for p in self._proxies):
            return False
        connection = ProxyConnection(
            self._reactor,
            lambda: self._endpoint_factory(host, port),
            self.config.socket_timeout,
        )
        self._proxies.append(_Proxy(host, port, connection))
        self.log.info("Added proxy {host}:{port}", host=host, port=port)
        return True

    def reset(self) -> None:
        """
        Give the proxies in DOWN state another chance: they go to ERROR and are
        resynchronised at the next cycle (Java C{reset()}).
        """
        for p in self._proxies:
            if p.state is ProxyState.DOWN:
                self.log.info("Proxy {proxy} reset from DOWN to ERROR", proxy=str(p))
                p.state = ProxyState.ERROR
                p.failures = p.skip = 0

    def refresh(self) -> None:
        """
        Resynchronise every OK proxy at the next cycle (Java C{refresh()}).
        """
        for p in self._proxies:
            if p.state is ProxyState.OK:
                p.state = ProxyState.ERROR

    def status_cycle(self) -> Deferred[None]:
        """
        Run one status cycle now (recover proxies in error, then STATUS).
        """
        return Deferred.fromCoroutine(self._run_cycle())

    def enable_context(self, path: str) -> Deferred[None]:
        """
        Enable C{path} (adding it if new) on every proxy.
        """
        return self._set_context(path, AppState.ENABLED)

    def disable_context(self, path: str) -> Deferred[None]:
        """
        Disable C{path} (no new sessions) on every proxy.
        """
        return self._set_context(path, AppState.DISABLED)

    def stop_context(self, path: str) -> Deferred[bool]:
        """
        Stop C{path} as the Java listener stops a context: DISABLE-APP, then
        STOP-APP repeated until the proxies report no request in progress on it
        (bounded by C{drain_timeout}).

        @return: a Deferred firing with C{True} if the requests drained in time.
        """
        self._check_path(path)
        return Deferred.fromCoroutine(self._drain_paths([path]))

    def add_context(self, path: str) -> Deferred[None]:
        """
        Add C{path}; it is enabled (or disabled without C{auto_enable}).
        """
        return self._set_context(path, self._initial_state)

    def remove_context(self, path: str) -> Deferred[None]:
        """
        Remove C{path} as the Java listener undeploys a context: L{stop_context}
        (unless already stopped), then REMOVE-APP.
        """
        return Deferred.fromCoroutine(self._remove_context(path))

    async def _remove_context(self, path: str) -> None:
        if path not in self._contexts:
            return
        if self._contexts[path] is not AppState.STOPPED:
            await self._drain_paths([path])
        self._contexts.pop(path, None)
        request = context_request(REMOVE_APP, self.config.route, self.config.aliases, path)
        await self._send_everywhere([request])

    @staticmethod
    def _check_path(path: str) -> None:
        if not path.startswith("/"):
            raise ValueError(f"a context path starts with '/': {path!r}")

    def _set_context(self, path: str, state: AppState) -> Deferred[None]:
        self._check_path(path)
        self._contexts[path] = state
        request = context_request(command_for(state), self.config.route,
                                  self.config.aliases, path)
        return Deferred.fromCoroutine(self._send_everywhere([request]))

    def drain(self) -> Deferred[bool]:
        """
        Leave the cluster gracefully: DISABLE-APP each context, STOP-APP each
        context repeatedly until the proxies report no request in progress
        (or C{drain_timeout} passed), then REMOVE-APP each context and
        C{REMOVE-APP /*}.  The status cycle stops before the removal.

        @return: a Deferred firing with C{True} if the requests drained in
            time.  Calling it again returns the same outcome.
        """
        if self._drain is None:
            self._drain = Deferred.fromCoroutine(self._guarded_drain())
        result: Deferred[bool] = Deferred()

        def relay(value: bool) -> bool:
            result.callback(value)
            return value

        self._drain.addCallback(relay)
        return result

    def resume(self) -> None:
        """
        Join again after L{drain}: contexts back to their initial state, every
        proxy resynchronised, status cycle restarted.
        """
        if self._drain is None or not self._drain.called:
            return
        self._drain = None
        self._removed = False
        for path in self._contexts:
            self._contexts[path] = self._initial_state
        for p in self._proxies:
            if p.state is ProxyState.OK:
                p.state = ProxyState.ERROR
        if self.running and not self._loop.running:
            self._loop.start(self.config.status_period, now=True)

    # --- service ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        adv = self.config.advertise
        if adv is not None:
            from modcluster.node.discovery import AdvertiseListener

            listener = AdvertiseListener(self._advertised, adv.key, adv.group, adv.interface,
                                         clock=self._reactor, max_skew=adv.max_skew)
            self._advertise_port = self._reactor.listenMulticast(
                adv.port, listener, interface=adv.group, listenMultiple=True
            )
            self.log.info(
                "Listening for advertise datagrams on {group}:{port} (interface {iface})",
                group=adv.group, port=adv.port, iface=adv.interface,
            )
        if self._drain is not None:
            # Started again after a stop: join again, as at the first start.
            self.resume()
        elif not self._loop.running:
            self._loop.start(self.config.status_period, now=True)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._shutdown())

    async def _shutdown(self) -> None:
        await self.drain()
        await self._stop_loop()
        if self._advertise_port is not None:
            port, self._advertise_port = self._advertise_port, None
            stopped = port.stopListening()
            if stopped is not None:
                await stopped
        for p in self._proxies:
            p.connection.close()
        close = getattr(self._probe, "close", None)
        if close is not None:
            closed = close()
            if closed is not None:
                await closed

    def _advertised(self, host: str, port: int) -> None:
        if self._removed or self._drain is not None:
            return
        adv = self.config.advertise
        if (adv is not None and len(self._advertised_proxies) >= adv.max_proxies
                and not any(p.address == (host, port) for p in self._proxies)):
            # anyone on the group can advertise (with any source and server
            # id, and without a key any digest): a bounded number of proxies
            self._limiter.emit(
                "max_proxies", LogLevel.warn,
                "Ignored proxy {host}:{port}: {count} advertised proxies already "
                "([advertise] max_proxies)", host=host, port=port,
                count=len(self._advertised_proxies))
            return
        if self.add_proxy(host, port):
            self._advertised_proxies.add((host, port))
        else:
            return
        if self.running:
            proxy = self._proxies[-1]
            d = Deferred.fromCoroutine(self._recover(proxy))
            d.addErrback(lambda f: self.log.failure("Sync of {proxy} failed", f, proxy=str(proxy)))

    # --- sending -----------------------------------------------------------------

    async def _send(self, proxy: _Proxy, request: MCMPRequest) -> Optional[MCMPResponse]:
        await proxy.lock.acquire()
        try:
            if proxy.state is ProxyState.DOWN:
                return None
            if proxy.state is ProxyState.ERROR and request.method != INFO:
                return None
            data = encode_request(request, proxy.host, proxy.port, self.config.proxy_url)
            try:
                response = await proxy.connection.send(data)
            except Exception as e:
                proxy.state = ProxyState.ERROR
                proxy.io_error = True
                proxy.connection.abort()
                if not proxy.io_error_logged:
                    proxy.io_error_logged = True
                    self.log.warn(
                        "{method} to proxy {proxy} failed: {error}",
                        method=request.method, proxy=str(proxy),
                        error=f"{type(e).__name__}: {e}",
                    )
                return None
            proxy.io_error = False
            if response.ok:
                if proxy.state is not ProxyState.OK or proxy.io_error_logged:
                    self.log.info("Proxy {proxy} is OK", proxy=str(proxy))
                proxy.state = ProxyState.OK
                proxy.io_error_logged = False
                if request.method == CONFIG:
                    proxy.established = True
            elif response.error_type == "SYNTAX":
                proxy.state = ProxyState.DOWN
                self.log.critical(
                    "Proxy {proxy} answered {method} with a SYNTAX error ({message}): it is "
                    "marked DOWN and will get nothing more until reset() is called",
                    proxy=str(proxy), method=request.method, message=response.message,
                )
            else:
                proxy.state = ProxyState.ERROR
                self.log.warn(
                    "Proxy {proxy} answered {method} with {status} {type}: {message}; "
                    "it will be resynchronised at the next cycle",
                    proxy=str(proxy), method=request.method, status=response.status,
                    type=response.error_type, message=response.message,
                )
            if proxy.state is not ProxyState.OK:
                proxy.connection.close()
            return response
        finally:
            proxy.lock.release()

    async def _send_sequence(self, proxy: _Proxy, requests: Iterable[MCMPRequest]
                             ) -> list[Optional[MCMPResponse]]:
        return [await self._send(proxy, r) for r in requests]

    async def _each_proxy(self, requests: Sequence[MCMPRequest]
                          ) -> list[list[Optional[MCMPResponse]]]:
        """
        Send C{requests} in order to every proxy; proxies in parallel.
        """
        proxies = list(self._proxies)
        return await gatherResults(
            [Deferred.fromCoroutine(self._send_sequence(p, requests)) for p in proxies]
        )

    async def _send_everywhere(self, requests: Sequence[MCMPRequest]) -> None:
        if self._established:
            await self._each_proxy(requests)

    # --- status cycle ------------------------------------------------------------

    def _tick(self) -> Deferred[None]:
        d = Deferred.fromCoroutine(self._run_cycle())
        d.addErrback(lambda f: self.log.failure("Status cycle failed", f))
        return d

    async def _run_cycle(self) -> None:
        # One cycle at a time (the loop and status_cycle() may overlap).
        while self._cycle is not None and not self._cycle.called:
            await _when_done(self._cycle)
        self._cycle = Deferred.fromCoroutine(self._one_cycle())
        await _when_done(self._cycle)

    def _backoff_cycles(self, failures: int) -> int:
        limit = max(0, math.ceil(self.config.reconnect_max_delay / self.config.status_period) - 1)
        return min(2 ** min(failures - 1, 30) - 1, limit)

    async def _one_cycle(self) -> None:
        if self._removed:
            return
        recover = []
        for p in list(self._proxies):
            if p.state is not ProxyState.ERROR:
                continue
            if p.skip > 0:
                p.skip -= 1
                continue
            recover.append(Deferred.fromCoroutine(self._recover(p)))
        if recover:
            await gatherResults(recover)
        if not self._established or self._removed:
            return
        load = await self._compute_load()
        self.last_load = load
        request = status_request(self.config.route, load)
        await self._each_proxy([request])

    async def _recover(self, proxy: _Proxy) -> None:
        if proxy.recovering:
            return
        proxy.recovering = True
        try:
            proxy.connection.close()
            response = await self._send(proxy, info_request())
            if proxy.state is not ProxyState.OK or response is None:
                if proxy.io_error:
                    proxy.failures += 1
                    proxy.skip = self._backoff_cycles(proxy.failures)
                return
            proxy.failures = proxy.skip = 0
            if not self._established:
                self._established = True
                self.log.info("Connection to the proxies established ({proxy})",
                              proxy=str(proxy))
            reported = self._parse_info(proxy, response.body)
            requests = reset_requests(
                self._registration(proxy), self.config.aliases, self._contexts, reported
            )
            await self._send_sequence(proxy, requests)
        finally:
            proxy.recovering = False

    def _parse_info(self, proxy: _Proxy, body: str) -> dict:
        try:
            return parse_info_as_java(body)
        except JavaInfoError as e:
            self.log.warn(
                "INFO answer of proxy {proxy} cannot be parsed ({error}); "
                "registering everything again", proxy=str(proxy), error=str(e),
            )
            return {}

    def _registration(self, proxy: _Proxy) -> Any:
        host = self.config.node_host or self.config.backend_host
        if host in _WILDCARD_HOSTS:
            host = proxy.connection.local_host or "localhost"
        return self.config.registration(host)

    async def _compute_load(self) -> int:
        if self._probe is not None:
            result = await self._probe.probe()
            for metric in self._metrics:
                if isinstance(metric, ProbeLatencyMetric):
                    metric.observe(result.latency)
            if result.reachable != self._backend_reachable:
                if result.reachable:
                    self.log.info("Backend {backend} is reachable", backend=self.config.backend)
                else:
                    self.log.warn("Backend {backend} is unreachable ({reason}): load -1",
                                  backend=self.config.backend, reason=result.reason)
                self._backend_reachable = result.reachable
            if not result.reachable:
                return -1
        return await self._load.load_factor()

    async def _stop_loop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._cycle is not None and not self._cycle.called:
            await _when_done(self._cycle)

    # --- drain ---------------------------------------------------------------------

    async def _guarded_drain(self) -> bool:
        try:
            return await self._do_drain()
        except Exception:
            self.log.failure("Drain failed")
            await self._stop_loop()
            self._removed = True
            return False

    async def _drain_paths(self, paths: Sequence[str]) -> bool:
        """
        DISABLE-APP each path, then STOP-APP them until no request is reported
        in progress on any proxy or C{drain_timeout} passed (Java
        C{ModClusterService.stop(Context)} + C{drainRequests}, for several
        contexts at once).
        """
        route = self.config.route
        aliases = self.config.aliases
        for path in paths:
            self._contexts[path] = AppState.DISABLED
        if not self._established:
            for path in paths:
                self._contexts[path] = AppState.STOPPED
            return True
        await self._each_proxy(
            [context_request(command_for(AppState.DISABLED), route, aliases, p) for p in paths]
        )
        for path in paths:
            self._contexts[path] = AppState.STOPPED
        stops = [context_request(STOP_APP, route, aliases, p) for p in paths]
        deadline = self._reactor.seconds() + self.config.drain_timeout
        while True:
            answers = await self._each_proxy(stops)
            pending = sum(
                parse_stop_app_requests(r.body if r is not None else None)
                for per_proxy in answers for r in per_proxy
            )
            if pending <= 0:
                return True
            remaining = deadline - self._reactor.seconds()
            if remaining <= 0:
                self.log.warn(
                    "{pending} request(s) still in progress on {paths} after {timeout} s; "
                    "stopping anyway",
                    pending=pending, paths=", ".join(paths), timeout=self.config.drain_timeout,
                )
                return False
            self.log.info("Draining {paths}: {pending} request(s) in progress",
                          paths=", ".join(paths), pending=pending)
            await deferLater(self._reactor, min(self.config.drain_poll_interval, remaining))

    async def _do_drain(self) -> bool:
        paths = list(self._contexts)
        drained = await self._drain_paths(paths)
        await self._stop_loop()
        if self._established:
            route = self.config.route
            removals = [context_request(REMOVE_APP, route, self.config.aliases, p) for p in paths]
            removals.append(engine_request(REMOVE_APP, route))
            await self._each_proxy(removals)
        self._removed = True
        if drained:
            self.log.info("Left the cluster; requests drained")
        return drained


def load_tls_options(tls: Any) -> Callable[[str], Any]:
    """
    Read the PEM files of a L{modcluster.node.config.ProxyTLSSettings}.

    @return: C{host -> client TLS options} (verifying C{host} with the CA, or
        the platform trust without one, and presenting our certificate).
    @raise Exception: a file is unreadable or not PEM.
    """
    from twisted.internet import ssl

    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    trust = ssl.Certificate.loadPEM(read(tls.ca)) if tls.ca else None
    client = None
    if tls.certificate:
        client = ssl.PrivateCertificate.loadPEM(read(tls.certificate) + b"\n" +
                                                read(tls.private_key))

    def options(host: str) -> Any:
        return ssl.optionsForClientTLS(host, trustRoot=trust, clientCertificate=client)

    return options
