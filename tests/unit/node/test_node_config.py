"""
Node agent settings: TOML + command line, validation, defaults, the plugin.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from modcluster.node.agent import NodeAgent
from modcluster.node.config import (
    NodeConfigError,
    load_node_config_file,
    node_config_from_dict,
    parse_proxy,
)
from modcluster.node.load import CommandMetric, MemoryMetric, SystemLoadMetric
from modcluster.node.tap import Options, makeService

MINIMAL = {"route": "node1", "backend": "http://127.0.0.1:8080", "proxies": ["127.0.0.1:6666"]}


def options(*argv: str) -> Options:
    opts = Options()
    opts.parseOptions(list(argv))
    return opts


def test_defaults() -> None:
    """Alias localhost, context /, balancer unset, Type from the URL scheme."""
    config = node_config_from_dict(MINIMAL)
    assert config.aliases == ("localhost",)
    assert config.contexts == ("/",)
    assert config.balancer is None
    assert (config.status_period, config.socket_timeout, config.drain_timeout) == (10, 20, 10)
    assert (config.load.history, config.load.decay, config.load.initial_load) == (9, 2.0, 0)
    registration = config.registration()
    assert (registration.host, registration.port, registration.type) == ("127.0.0.1", 8080, "http")
    https = node_config_from_dict({**MINIMAL, "backend": "https://Backend.example"})
    assert https.registration().type == "https" and https.backend_port == 443
    assert https.registration().host == "backend.example"
    ajp = node_config_from_dict({**MINIMAL, "backend": "ajp://127.0.0.1"})
    assert (ajp.backend_type, ajp.backend_port) == ("ajp", 8009)


def test_proxy_addresses() -> None:
    assert parse_proxy("10.0.0.1:6666") == ("10.0.0.1", 6666)
    assert parse_proxy("proxy") == ("proxy", 8000)
    assert parse_proxy("[::1]:6666") == ("::1", 6666)
    for bad in ("h:0", "h:x", ":80", "[::1"):
        with pytest.raises(ValueError):
            parse_proxy(bad)


@pytest.mark.parametrize(
    "change, key",
    [
        ({"route": ""}, "route"),
        ({"backend": "ftp://h"}, "backend"),
        ({"backend": "http://h:99999"}, "backend"),
        ({"contexts": ["app"]}, "contexts"),
        ({"contexts": ["/a", "/a"]}, "contexts"),
        ({"aliases": ["a,b"]}, "aliases"),
        ({"aliases": []}, "aliases"),
        ({"proxies": ["h:x"]}, "proxies"),
        ({"proxies": []}, "proxies"),
        ({"status_period": 0}, "status_period"),
        ({"status_period": "10"}, "status_period"),
        ({"domain": "x" * 20}, "domain"),
        ({"balancer": "<b>"}, "balancer"),
        ({"bogus": 1}, "bogus"),
        ({"load": {"history": -1}}, "load.history"),
        ({"load": {"decay": 0.5}}, "load.decay"),
        ({"load": {"metrics": [{"type": "gpu"}]}}, "load.metrics[0].type"),
        ({"load": {"metrics": [{"type": "command"}]}}, "load.metrics[0].command"),
        ({"load": {"metrics": [{"type": "cpu", "capacity": 0}]}}, "load.metrics[0].capacity"),
        ({"advertise": {"group": "10.0.0.1"}}, "advertise.group"),
        ({"advertise": {"key": "clé"}}, "advertise.key"),
        ({"advertise": {"max_skew": -1}}, "advertise.max_skew"),
        ({"tls": {"certificate": "c.pem"}}, "tls"),
        ({"probe": {"path": "x"}}, "probe.path"),
    ],
)
def test_invalid(change: dict, key: str) -> None:
    """Each bad value is reported with its dotted key."""
    with pytest.raises(NodeConfigError) as caught:
        node_config_from_dict({**MINIMAL, **change}, "test.toml")
    assert caught.value.key == key
    assert str(caught.value).startswith("test.toml: ")


def test_advertise_instead_of_proxies() -> None:
    config = node_config_from_dict(
        {"route": "n", "backend": "http://h:1", "advertise": {"interface": "127.0.0.1"}}
    )
    assert config.proxies == ()
    assert (config.advertise.group, config.advertise.port) == ("224.0.1.105", 23364)
    assert config.advertise.max_skew == 300.0
    config = node_config_from_dict(
        {"route": "n", "backend": "http://h:1", "advertise": {"max_skew": 0}})
    assert config.advertise.max_skew == 0.0


def test_command_line() -> None:
    """The brief's command line, every option."""
    opts = options(
        "--proxy", "127.0.0.1:6666", "--proxy", "127.0.0.2:6667", "--route", "web1",
        "--backend", "http://127.0.0.1:8080", "--context", "/app", "--context", "/api",
        "--alias", "www.example", "--alias", "Example", "--domain", "dc1", "--balancer", "lb",
        "--advertise-group", "224.0.1.105:23365", "--advertise-key", "secret",
        "--advertise-interface", "127.0.0.1", "--load-command", "echo 0.5",
        "--load-capacity", "2", "--status-period", "3", "--drain-timeout", "4",
        "--socket-timeout", "5", "--proxy-url", "/mcmp", "--no-probe",
    )
    config = opts["node_config"]
    assert config.proxies == (("127.0.0.1", 6666), ("127.0.0.2", 6667))
    assert config.route == "web1" and config.contexts == ("/app", "/api")
    assert config.aliases == ("www.example", "example")
    assert (config.domain, config.balancer, config.proxy_url) == ("dc1", "lb", "/mcmp")
    assert (config.advertise.group, config.advertise.port) == ("224.0.1.105", 23365)
    assert (config.advertise.key, config.advertise.interface) == ("secret", "127.0.0.1")
    (metric,) = config.load.metrics
    assert (metric.type, metric.command, metric.capacity) == ("command", "echo 0.5", 2.0)
    assert (config.status_period, config.drain_timeout, config.socket_timeout) == (3, 4, 5)
    assert not config.probe.enabled


def test_command_line_errors() -> None:
    with pytest.raises(usage.UsageError, match="route"):
        options("--backend", "http://h:1", "--proxy", "h:1")
    with pytest.raises(usage.UsageError, match="status-period"):
        options("--route", "n", "--backend", "http://h:1", "--proxy", "h:1",
                "--status-period", "x")
    with pytest.raises(usage.UsageError, match="load-capacity"):
        options("--route", "n", "--backend", "http://h:1", "--proxy", "h:1",
                "--load-capacity", "3")


def test_toml_file_and_overrides(tmp_path: Path) -> None:
    """The TOML file is read; command-line values replace its values."""
    path = tmp_path / "node.toml"
    path.write_text(
        'route = "fromfile"\n'
        'backend = "ajp://127.0.0.1:8009"\n'
        'proxies = ["127.0.0.1:6666"]\n'
        'contexts = ["/a", "/b"]\n'
        "sticky_session_force = true\n"
        "max_attempts = 3\n"
        "[load]\nhistory = 4\ndecay = 3\ninitial_load = -1\n"
        '[[load.metrics]]\ntype = "cpu"\nweight = 2\n'
        '[[load.metrics]]\ntype = "memory"\n'
        '[[load.metrics]]\ntype = "command"\ncommand = ["/bin/echo", "1"]\ncapacity = 4\n'
        "[probe]\npath = \"/health\"\nmethod = \"get\"\n"
    )
    opts = options("--config", str(path), "--route", "fromcli")
    config = opts["node_config"]
    assert config.route == "fromcli" and config.contexts == ("/a", "/b")
    assert config.sticky_session_force and config.max_attempts == 3
    assert (config.load.history, config.load.decay, config.load.initial_load) == (4, 3.0, None)
    assert [m.type for m in config.load.metrics] == ["cpu", "memory", "command"]
    assert config.load.metrics[2].command == ("/bin/echo", "1")
    assert (config.probe.path, config.probe.method) == ("/health", "GET")
    body = config.registration().jvm_route
    assert body == "fromcli"

    agent = NodeAgent(config, MemoryReactorClock(), probe=False)
    kinds = [type(m) for m in agent._metrics]
    assert kinds == [SystemLoadMetric, MemoryMetric, CommandMetric]


def test_bad_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("route = \n")
    with pytest.raises(usage.UsageError, match="invalid TOML"):
        options("--config", str(path))
    with pytest.raises(NodeConfigError, match="cannot read"):
        load_node_config_file(str(tmp_path / "missing.toml"))


def test_make_service() -> None:
    """makeService builds the agent from the options."""
    opts = options("--route", "n", "--backend", "http://127.0.0.1:1", "--proxy", "127.0.0.1:2")
    service = makeService(opts)
    assert isinstance(service, NodeAgent)
    assert service.config is opts["node_config"]


def test_plugin_listed() -> None:
    """twistd finds the modcluster-node plugin (one ServiceMaker line)."""
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    import twisted.plugins

    names = {p.tapname: p for p in getPlugins(IServiceMaker, twisted.plugins)}
    assert "modcluster-node" in names
    assert names["modcluster-node"].module == "modcluster.node.tap"


def test_toml_sections_of_wrong_type(tmp_path: Path) -> None:
    """A section given as a scalar is an error, not a crash."""
    path = tmp_path / "node.toml"
    path.write_text('route = "n"\nbackend = "http://h:1"\nproxies = ["h:1"]\nprobe = 1\nload = 2\n')
    with pytest.raises(usage.UsageError, match="probe: must be a table"):
        options("--config", str(path), "--no-probe")
    with pytest.raises(usage.UsageError, match="load: must be a table"):
        options("--config", str(path), "--load-command", "echo 1")
    with pytest.raises(usage.UsageError, match="must be a table"):
        options("--config", str(path))


def test_unreadable_tls_files(tmp_path: Path) -> None:
    """Missing or bad PEM files fail at option time, before twistd daemonizes."""
    (tmp_path / "bad.pem").write_text("not a certificate")
    base = ["--route", "n", "--backend", "http://h:1", "--proxy", "h:1"]
    with pytest.raises(usage.UsageError, match="tls: cannot load"):
        options(*base, "--proxy-ca", str(tmp_path / "missing.pem"))
    with pytest.raises(usage.UsageError, match="tls: cannot load"):
        options(*base, "--proxy-ca", str(tmp_path / "bad.pem"))
