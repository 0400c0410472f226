"""
modcluster.lifecycle: the one "apply a new configuration" path, in memory.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs

from modcluster.config import parse_config
from modcluster.lifecycle import BalancerService, changed_keys
from modcluster.tap import build


def test_changed_keys_in_file_order():
    old = parse_config("")
    new = parse_config("[proxy]\nclient_timeout = 3.0\nlisten = ['tcp:1']\n"
                       "[manager]\nmax_nodes = 7\n")
    assert changed_keys(old, new) == ["manager.max_nodes", "proxy.listen",
                                      "proxy.client_timeout"]
    assert changed_keys(new, new) == []


def test_hooks_run_once_for_their_keys_and_the_rest_needs_a_restart():
    top = BalancerService(parse_config(""), Clock())
    calls = []
    top.on_reload(("proxy.client_timeout", "proxy.max_request_body"),
                  lambda new: calls.append(("proxy", new.proxy.client_timeout)))
    top.on_reload(("console.*",), lambda new: calls.append(("console", new.console.allow_cmd)))
    new = parse_config("[proxy]\nclient_timeout = 3.0\nmax_request_body = 10\n"
                       "listen = ['tcp:1']\n")
    with capturedLogs() as events:
        applied, restart = top.apply_config(new)
    assert applied == ["proxy.client_timeout", "proxy.max_request_body"]
    assert restart == ["proxy.listen"]
    assert calls == [("proxy", 3.0)]
    assert top.config is new
    (line,) = [e for e in events if "reload" in e.get("log_format", "")]
    assert line["applied"] == "proxy.client_timeout, proxy.max_request_body"
    # a second reload compares with the previous one for hooks, with the start for restarts
    calls.clear()
    newer = parse_config("[proxy]\nclient_timeout = 3.0\nmax_request_body = 10\n"
                         "listen = ['tcp:1']\n[console]\nallow_cmd = false\n")
    applied, restart = top.apply_config(newer)
    assert applied == ["console.allow_cmd"] and restart == ["proxy.listen"]
    assert calls == [("console", False)]


def test_a_failing_hook_is_logged_and_the_others_still_run():
    top = BalancerService(parse_config(""), Clock())
    ran = []

    def broken(new):
        raise RuntimeError("boom")

    top.on_reload(("manager.max_nodes",), broken)
    top.on_reload(("manager.max_nodes",), lambda new: ran.append(new.manager.max_nodes))
    with capturedLogs() as events:
        top.apply_config(parse_config("[manager]\nmax_nodes = 3\n"))
    assert ran == [3]
    assert any(e.get("log_level") == LogLevel.critical and "reload" in e["log_format"]
               for e in events)


def test_reload_without_a_file_keeps_the_configuration():
    top = BalancerService(parse_config(""), Clock())
    assert top.reload() is False


def test_reload_refuses_an_invalid_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[manager]\nmax_nodes = 2\n")
    top = BalancerService(parse_config(path.read_text()), Clock())
    top.config_path = str(path)
    path.write_text("[proxy]\nlisten = ['tcp:8000:interface=10.0.0.256']\n")
    with capturedLogs() as events:
        assert top.reload() is False
    assert top.config.manager.max_nodes == 2
    (error,) = [e for e in events if e.get("log_level") == LogLevel.error]
    assert "interface=10.0.0.256" in error["problems"]


def test_built_balancer_applies_quotas_console_and_proxy_settings_live():
    reactor = MemoryReactorClock()
    top = build(parse_config(""), reactor)
    assert {"manager.max_nodes", "console.allow_cmd", "proxy.client_timeout",
            "proxy.drain_timeout"} <= set(top.live_keys())
    top.apply_config(parse_config("[manager]\nmax_nodes = 1\n[console]\nallow_cmd = false\n"
                                  "[proxy]\nclient_timeout = 2.5\n"))
    assert top.registry.limits.max_nodes == 1
    factory = top.drainers[0].__self__
    assert factory.config.client_timeout == 2.5


def test_reload_gives_new_management_tls_connections_the_new_certificate(tmp_path):
    import trustme
    from cryptography import x509

    from modcluster.tls import SwappableServerTLS

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    for name in ("old", "new"):
        cert = ca.issue_cert(f"{name}.example")
        cert.cert_chain_pems[0].write_to_path(str(tmp_path / f"{name}.pem"))
        cert.private_key_pem.write_to_path(str(tmp_path / f"{name}-key.pem"))

    def config(name):
        return parse_config(f"""
[manager]
listen = ["tcp:0:interface=127.0.0.1"]
[manager.tls]
enabled = true
certificate = "{tmp_path}/{name}.pem"
private_key = "{tmp_path}/{name}-key.pem"
ca = "{tmp_path}/ca.pem"
""")

    def served_name(swappable):
        cert = swappable.serverConnectionForTLS(None).get_certificate().to_cryptography()
        return cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)

    top = build(config("old"), MemoryReactorClock())
    swappables = top.management_tls
    assert all(isinstance(s, SwappableServerTLS) for s in swappables)
    # the management listener and the console's own listener (TLS like it)
    assert len(swappables) == 2
    assert all(served_name(s) == ["old.example"] for s in swappables)
    applied, restart = top.apply_config(config("new"))
    assert applied == ["manager.tls.certificate", "manager.tls.private_key"]
    assert restart == []
    assert all(served_name(s) == ["new.example"] for s in swappables)



def test_reload_gives_node_pools_the_new_read_timeout_and_idle_limit():
    from modcluster.cluster.model import BalancerSettings, NodeSettings

    reactor = MemoryReactorClock()
    top = build(parse_config(""), reactor)
    factory = top.drainers[0].__self__
    registry = top.registry

    registry.config(BalancerSettings(name="mycluster"),
                    NodeSettings(route="own", host="127.0.0.1", port=9001, type="http",
                                 timeout=7.0))
    registry.config(BalancerSettings(name="mycluster"),
                    NodeSettings(route="dflt", host="127.0.0.1", port=9002, type="ajp"))
    pools = {n.route: factory.forwarders[n.settings.type].pool(n) for n in registry.nodes()}
    assert pools["dflt"].read_timeout == 60.0 and pools["own"].read_timeout == 7.0
    applied, _ = top.apply_config(parse_config("[proxy]\ntimeout = 20.0\n"
                                               "max_idle_per_node = 3\n"))
    assert applied == ["proxy.timeout", "proxy.max_idle_per_node"]
    assert pools["dflt"].read_timeout == 20.0 and pools["dflt"].max_idle == 3
    assert pools["own"].read_timeout == 7.0  # the node's own Timeout wins
    assert factory.forwarders["ajp"].config.timeout == 20.0
    assert factory.config.timeout == 20.0


def test_reload_applies_slow_client_deadlines_trace_and_allow_lists():
    """The keys other parts added are live too: the proxy's and the management
    listener's read deadlines, allow_trace, the allow lists and the Host check."""
    from twisted.internet.address import IPv4Address

    def ip(host):
        return IPv4Address("TCP", host, 1)

    reactor = MemoryReactorClock()
    top = build(parse_config(""), reactor)
    factory = top.drainers[0].__self__
    assert factory.read_timeouts.header == 20.0 and not factory.config.allow_trace
    applied, restart = top.apply_config(parse_config(
        "[proxy]\nrequest_header_timeout = 5.0\nallow_trace = true\n"
        "[manager]\nrequest_body_min_rate = 900\nallow = [\"127.0.0.2\"]\n"
        "[console]\nallow = [\"127.0.0.3\"]\nhosts = [\"ops.example\"]\n"))
    assert restart == []
    assert set(applied) == {"proxy.request_header_timeout", "proxy.allow_trace",
                            "manager.request_body_min_rate", "manager.allow",
                            "console.allow", "console.hosts"}
    assert factory.read_timeouts.header == 5.0 and factory.config.allow_trace
    from modcluster.mcmp.resource import ManagementSite

    sites = [s.factory for s in top if isinstance(getattr(s, "factory", None), ManagementSite)]
    assert len(sites) == 2 and all(s.read_timeouts.body_min_rate == 900 for s in sites)
    guards = {s.resource._listener: s.resource for s in sites}
    assert guards["management"]._allow.permits(ip("127.0.0.2"))
    assert not guards["management"]._allow.permits(ip("127.0.0.1"))
    assert guards["console"]._allow.permits(ip("127.0.0.3"))
    assert "ops.example" in guards["console"]._hosts.names


def test_reload_and_reopen_signals_are_ours_before_the_first_listener_binds():
    """A SIGHUP/SIGUSR1 sent as soon as a port accepts must not end the process:
    the handlers are in place before any listener binds, and put back at stop."""
    import signal

    from twisted.application.service import Service

    seen = []

    class Listener(Service):
        def privilegedStartService(self):
            seen.append((signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGUSR1)))

    before = signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGUSR1)
    top = BalancerService(parse_config(""), MemoryReactorClock())
    top.signals = True
    Listener().setServiceParent(top)
    top.privilegedStartService()
    try:
        [(hup, usr1)] = seen
        assert callable(hup) and callable(usr1)
        assert (hup, usr1) != before
    finally:
        top._restore_signals()  # what stopService does (not started: no log filter)
    assert (signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGUSR1)) == before


def _saved_state(path) -> None:
    from modcluster.cluster.model import BalancerSettings, NodeSettings
    from modcluster.cluster.registry import Limits, Registry
    from modcluster.services.persistence import write_state

    reg = Registry(Clock(), Limits())
    reg.config(BalancerSettings("mycluster"), NodeSettings(route="saved", host="127.0.0.1",
                                                           port=8009))
    write_state(str(path), reg.to_state())


def _persisting(path):
    return parse_config(f'[manager]\nlisten = ["tcp:0:interface=127.0.0.1"]\npersist = true\n'
                        f'state_file = "{path}"\n[proxy]\nlisten = ["tcp:0:interface=127.0.0.1"]\n')


def test_build_reads_no_file_the_saved_state_is_restored_when_the_service_starts(tmp_path):
    path = tmp_path / "state.json"
    _saved_state(path)
    top = build(_persisting(path), MemoryReactorClock())
    assert top.state_store is not None and top.registry.node("saved") is None
    top.startService()
    try:
        assert top.registry.node("saved") is not None
    finally:
        top.stopService()


def test_a_taken_over_registry_is_not_overwritten_by_the_state_file(tmp_path):
    path = tmp_path / "state.json"
    _saved_state(path)
    top = build(_persisting(path), MemoryReactorClock())
    top.taken_over = True  # as modcluster.tap._handover marks it
    top.startService()
    try:
        assert top.registry.node("saved") is None
    finally:
        top.stopService()


def _looping_state(path, port: int) -> None:
    """A saved state (as a balancer whose proxy listened elsewhere wrote it): one
    node at 127.0.0.1:<port>, one at 127.0.0.1:<port + 1>."""
    from modcluster.cluster.model import BalancerSettings, NodeSettings
    from modcluster.cluster.registry import Limits, Registry
    from modcluster.services.persistence import write_state

    reg = Registry(Clock(), Limits())
    for route, p in (("loop", port), ("fine", port + 1)):
        reg.config(BalancerSettings("mycluster"),
                   NodeSettings(route=route, host="127.0.0.1", port=p),
                   [(["localhost"], ["/app"])])
    write_state(str(path), reg.to_state())


def test_a_restored_node_reaching_a_proxy_listener_is_removed_once_it_listens(tmp_path):
    path = tmp_path / "state.json"
    _looping_state(path, 18009)
    config = parse_config(
        f'[manager]\nlisten = ["tcp:0:interface=127.0.0.1"]\npersist = true\n'
        f'state_file = "{path}"\n[proxy]\nlisten = ["tcp:18009:interface=127.0.0.1"]\n')
    top = build(config, MemoryReactorClock())  # its ports say 0.0.0.0:<port>
    with capturedLogs() as events:
        top.startService()
    try:
        assert [n.route for n in top.registry.table.nodes] == ["fine"]
        assert top.registry.node("loop").rt.removed
        [line] = [e for e in events if e.get("log_level") == LogLevel.warn
                  and "forwarding loop" in e.get("log_format", "")]
        assert (line["route"], line["address"], line["listener"]) == (
            "loop", "127.0.0.1:18009", "0.0.0.0:18009")
        [removing] = [e for e in top.registry.events if e["event"] == "node.removing"]
        assert removing["route"] == "loop"
        assert removing["why"] == ("forwarding loop: 127.0.0.1:18009 reaches proxy "
                                   "listener 0.0.0.0:18009")
        # the state written next has it no more
        assert [n["settings"]["route"] for n in top.registry.to_state()["nodes"]] == ["fine"]
    finally:
        top.stopService()


def test_a_reload_checks_the_registered_nodes_again(tmp_path):
    path = tmp_path / "state.json"
    _looping_state(path, 18009)
    top = build(_persisting(path), MemoryReactorClock())
    top.startService()
    try:
        assert top.registry.node("fine") is not None and not top.registry.node("fine").rt.removed
        # the listeners now take 127.0.0.1:18010 (on a wildcard listener, the
        # host gained the node's address): the next reload removes the node
        top.handler.own_addresses.add_source(lambda: [("127.0.0.1", 18010)])
        top.apply_config(top.config)
        assert top.registry.node("fine").rt.removed
        assert not top.registry.node("loop").rt.removed
    finally:
        top.stopService()


def test_registrations_taken_over_are_checked_once_the_listeners_listen(tmp_path):
    """A hitless restart restores the predecessor's registrations at build time
    (tap._handover), before any listener, maybe with another proxy.listen."""
    from modcluster.services.persistence import read_state

    path = tmp_path / "state.json"
    _looping_state(path, 18009)
    config = parse_config('[manager]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
                          '[proxy]\nlisten = ["tcp:18010:interface=127.0.0.1"]\n')
    top = build(config, MemoryReactorClock())
    top.taken_over = True
    top.handler.restore_state(read_state(str(path)))  # as tap._handover does
    assert not top.registry.node("fine").rt.removed
    top.startService()
    try:
        assert [n.route for n in top.registry.table.nodes] == ["loop"]
        assert top.registry.node("fine").rt.removed
    finally:
        top.stopService()
