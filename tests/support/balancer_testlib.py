"""
Shared helpers for the balancer unit tests: a registry-built cluster in memory
with a fake clock, and shortcuts to route requests through it.
"""

from collections import Counter

from twisted.internet.task import Clock

from modcluster.balancer import RoutingPolicy, choose
from modcluster.cluster.model import BalancerSettings, NodeSettings
from modcluster.cluster.registry import Limits, Registry


class Cluster:
    """A Registry plus a RoutingPolicy, as the proxy would use them."""

    def __init__(self, balancer=None, limits=Limits(), **policy):
        self.clock = Clock()
        self.reg = Registry(self.clock, limits)
        self.balancer = balancer or BalancerSettings("mycluster")
        self.policy = RoutingPolicy(**policy)
        self._port = 8000

    def node(self, route, load=1, contexts=("/app",), aliases=("localhost",),
             balancer=None, domain="", command="ENABLE-APP"):
        """Register a node (CONFIG, an APP command, then STATUS unless load is None)."""
        b = balancer or self.balancer
        self._port += 1
        self.reg.config(b, NodeSettings(route=route, balancer=b.name, domain=domain,
                                        host="127.0.0.1", port=self._port))
        if contexts:
            self.reg.app(command, route, list(aliases), list(contexts))
        if load is not None:
            assert self.reg.apply_status(route, load, True)
        return self.reg.table.by_route[route]

    def set_state(self, route, command, contexts=("/app",), aliases=("localhost",)):
        self.reg.app(command, route, list(aliases), list(contexts))

    def rt(self, route):
        return self.reg.node(route).rt

    def choose(self, path="/app", cookie=None, host=None, exclude=frozenset(), policy=None):
        return choose(self.reg.table, host, path, cookie, self.clock.seconds(),
                      policy or self.policy, exclude)

    def route_of(self, *args, **kw):
        d = self.choose(*args, **kw)
        return d.node.route if hasattr(d, "node") else d.status

    def spread(self, n, *args, **kw):
        return Counter(self.route_of(*args, **kw) for _ in range(n))

    def recalc(self):
        """Let one LBstatusRecalTime interval pass and recompute (watchdog tick)."""
        self.clock.advance(self.reg.limits.lbstatus_recalc_time)
        self.reg.tick()


def score(rt):
    """The election score of balancing.md §3.3."""
    return ((rt.elected - rt.oldelected) * 1000) // rt.lbfactor + rt.lbstatus
