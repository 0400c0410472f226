"""
The watchdog: once a second, let the registry recompute load statistics and
purge removed nodes, and health-probe the nodes it reports idle
(balancing.md §3.1, §6.3); every C{recovery_interval} seconds, probe the nodes
in error or ejected, so a node whose probe succeeds comes back without waiting
for a STATUS (balancing.md, "Beyond mod_proxy_cluster").
"""

from __future__ import annotations

from typing import Optional

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["Maintenance"]


class Maintenance(Service):
    log = Logger()

    def __init__(self, registry, prober, clock, interval: float = 1.0,
                 recovery_interval: float = 5.0) -> None:
        self._registry = registry
        self._prober = prober
        self._clock = clock
        self._interval = interval
        self._recovery_interval = recovery_interval
        self._probing: set[str] = set()
        #: route -> time of its last recovery probe
        self._recovery_times: dict[str, float] = {}
        self._loop: Optional[LoopingCall] = None

    def startService(self) -> None:
        super().startService()
        loop = self._loop = LoopingCall(self.tick)
        loop.clock = self._clock
        loop.start(self._interval, now=False).addErrback(
            lambda f: self.log.failure("maintenance loop stopped", f))

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def tick(self) -> None:
        try:
            idle = self._registry.tick()
        except Exception:
            self.log.failure("registry maintenance failed")
            return
        for entry in idle:
            if entry.route in self._probing:
                continue
            self._probing.add(entry.route)
            d = self._prober.probe(entry)
            d.addCallback(self._probed, entry)
            d.addErrback(lambda f, e=entry: self.log.failure(
                "idle probe of {route} failed", f, route=e.route))
            d.addBoth(lambda _, r=entry.route: self._probing.discard(r))
        if self._recovery_interval > 0:
            try:
                self._recover()
            except Exception:
                self.log.failure("recovery probes failed")

    def _recover(self) -> None:
        now = self._clock.seconds()
        last = self._recovery_times
        nodes = self._registry.recovering()
        routes = {e.route for e in nodes}
        for route in [r for r in last if r not in routes]:
            del last[route]
        for entry in nodes:
            route = entry.route
            if route in self._probing or now - last.get(route, float("-inf")) < \
                    self._recovery_interval:
                continue
            last[route] = now
            self._probing.add(route)
            d = self._prober.probe(entry)
            d.addCallback(self._recovery_probed, entry)
            d.addErrback(lambda f, e=entry: self.log.failure(
                "recovery probe of {route} failed", f, route=e.route))
            d.addBoth(lambda _, r=route: self._probing.discard(r))

    def _recovery_probed(self, ok, entry) -> None:
        if ok is None:
            return  # no probe for this node type (EnableOptions off)
        node = self._registry.node(entry.route)
        if node is None or node.id != entry.id:
            return
        self._registry.recovery_probe_result(entry.route, bool(ok))

    def _probed(self, ok, entry) -> None:
        if ok is None:
            return
        node = self._registry.node(entry.route)
        if node is None or node.id != entry.id:
            return  # replaced or purged while the probe ran
        self._registry.probe_result(entry.route, bool(ok))
