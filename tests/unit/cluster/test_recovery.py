"""
Probe-driven recovery (issue 13 §2, issue 17 §4): the watchdog probes nodes in
error or ejected every recovery interval; a node in error whose probe
succeeds comes back, through slow start, without a STATUS.
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from zope.interface import implementer

from modcluster.services.maintenance import Maintenance
from modcluster.cluster.model import BalancerSettings, NodeSettings
from modcluster.cluster.registry import Limits, Registry
from modcluster.interfaces import INodeProber


@implementer(INodeProber)
class ScriptedProber:
    """Records the probes asked for; the test fires them."""

    def __init__(self) -> None:
        self.asked: list = []

    def probe(self, node) -> Deferred:
        d: Deferred = Deferred()
        self.asked.append((node.route, d))
        return d

    def answer(self, route: str, ok) -> None:
        for i, (r, d) in enumerate(self.asked):
            if r == route:
                del self.asked[i]
                d.callback(ok)
                return
        raise AssertionError(f"no probe of {route} pending")

    def routes(self) -> list:
        return [r for r, _ in self.asked]


def cluster(recovery_interval=5.0):
    clock = Clock()
    reg = Registry(clock, Limits(lbstatus_recalc_time=1000))  # no idle probes here
    b = BalancerSettings("mycluster")
    for i, route in enumerate(("n1", "n2")):
        reg.config(b, NodeSettings(route=route, balancer=b.name, host="127.0.0.1",
                                   port=8081 + i))
        reg.app("ENABLE-APP", route, ["localhost"], ["/app"])
        reg.apply_status(route, 50, True)
    prober = ScriptedProber()
    m = Maintenance(reg, prober, clock, recovery_interval=recovery_interval)
    m.startService()
    return clock, reg, prober, m


def test_node_in_error_comes_back_when_its_probe_succeeds():
    clock, reg, prober, m = cluster()
    clock.advance(100)
    reg.set_error("n1", "connect refused")
    clock.advance(1)
    assert prober.routes() == ["n1"]
    prober.answer("n1", False)
    assert reg.node("n1").rt.in_error
    clock.advance(1)
    assert prober.routes() == []  # not again before the interval
    clock.advance(4)
    assert prober.routes() == ["n1"]
    prober.answer("n1", True)
    rt = reg.node("n1").rt
    assert not rt.in_error
    assert rt.warm_from == clock.seconds()  # slow start from now
    assert [e for e in reg.events if e["event"] == "node.recovered"][-1]["why"] == \
        "health probe succeeded"


def test_load_minus_one_is_not_revived_by_a_probe():
    clock, reg, prober, m = cluster()
    reg.apply_status("n1", -1, None)
    clock.advance(10)
    assert "n1" not in prober.routes()


def test_recovery_probes_off():
    clock, reg, prober, m = cluster(recovery_interval=0)
    reg.set_error("n1", "connect refused")
    clock.advance(10)
    assert prober.routes() == []


def test_ejected_node_failing_its_probe_goes_in_error():
    clock, reg, prober, m = cluster()
    rt = reg.node("n2").rt
    reg.node_ejected("n2", 30.0, "3 malformed responses")
    assert rt.ejected_until == clock.seconds() + 30
    clock.advance(1)
    prober.answer("n2", False)
    assert rt.in_error
    clock.advance(5)
    prober.answer("n2", True)
    assert not rt.in_error


def test_ejected_node_answering_waits_for_the_end_of_its_ejection():
    clock, reg, prober, m = cluster()
    rt = reg.node("n2").rt
    reg.node_ejected("n2", 30.0, "resets")
    clock.advance(1)
    prober.answer("n2", True)
    assert not rt.in_error
    assert rt.ejected_until == 30.0 and rt.warm_from == 30.0
    assert rt.ejections == 1
    reg.node_ejected("n2", 30.0 - clock.seconds(), "same ejection seen again")
    assert rt.ejections == 1


def test_idle_probe_success_also_recovers_a_node_in_error():
    clock = Clock()
    reg = Registry(clock)
    b = BalancerSettings("mycluster")
    reg.config(b, NodeSettings(route="n1", balancer=b.name, host="127.0.0.1", port=8081))
    reg.apply_status("n1", 50, True)
    reg.set_error("n1", "connect refused")
    reg.probe_result("n1", True)
    assert not reg.node("n1").rt.in_error
