# -*- test-case-name: tests.unit.node.test_node_config -*-
"""
C{twistd modcluster-node}: command-line options and service assembly.

Options are merged over the optional TOML file (C{--config}): a value given on
the command line replaces the file's; repeatable options (C{--proxy},
C{--context}, C{--alias}) replace the file's list.  Everything is validated in
L{Options.postOptions}, so a bad setting fails before twistd daemonizes.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from modcluster.node.config import (
    NodeConfigError,
    load_node_config_file,
    node_config_from_dict,
)

__all__ = ["Options", "makeService", "print_version"]


def print_version() -> None:
    """
    C{--version} of both plugins: txmodcluster's version, then Twisted's.
    """
    import sys

    import twisted

    from modcluster._version import __version__

    sys.stdout.write(f"txmodcluster {__version__} (Twisted {twisted.__version__})\n")
    sys.stdout.flush()
    raise SystemExit(0)


def _number(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise usage.UsageError(f"--{name}: not a number: {text!r}") from None


class Options(usage.Options):
    """
    Options of C{twistd modcluster-node}.
    """

    synopsis = (
        "--route NAME --backend URL (--proxy HOST:PORT ... | --advertise-group ADDR[:PORT]) "
        "[options]"
    )
    longdesc = (
        "Registers the backend at URL (http://, https:// or ajp://) with mod_cluster "
        "balancers under the JVMRoute NAME, reports its load every status period and "
        "drains it gracefully on shutdown (SIGTERM)."
    )

    optParameters = [
        ["route", "r", None, "JVMRoute of this node (required)."],
        ["backend", "b", None, "The backend URL, e.g. http://127.0.0.1:8080 (required)."],
        ["domain", None, None, "Load-balancing group (Domain)."],
        ["balancer", None, None, "Balancer name (default: the balancer's default)."],
        ["proxy-url", None, None, "URL prefix of the MCMP requests (Java proxyURL)."],
        ["node-host", None, None, "Host to register instead of the backend URL's host."],
        ["advertise-group", None, None,
         "Listen for advertise datagrams on this multicast ADDR[:PORT] "
         "(e.g. 224.0.1.105:23364)."],
        ["advertise-key", None, None, "Shared advertise security key."],
        ["advertise-interface", None, None,
         "Local interface address on which to join the advertise group (default 0.0.0.0)."],
        ["load-command", None, None,
         "Shell command printing the load (replaces the configured metrics)."],
        ["load-capacity", None, None, "The --load-command output that means full load (1)."],
        ["status-period", None, None, "Seconds between STATUS reports (10)."],
        ["socket-timeout", None, None, "MCMP socket timeout in seconds (20)."],
        ["drain-timeout", None, None, "Seconds to wait for requests to drain on stop (10)."],
        ["proxy-ca", None, None,
         "Use TLS for MCMP; verify the proxies' certificates with this CA (PEM)."],
        ["proxy-cert", None, None, "Client certificate (PEM) for MCMP over TLS."],
        ["proxy-key", None, None, "Private key (PEM) of --proxy-cert."],
        ["config", "c", None, "TOML configuration file (see docs/node-agent.md)."],
    ]
    optFlags = [
        ["no-probe", None, "Do not probe the backend before each STATUS."],
        ["no-auto-enable", None, "Register contexts DISABLED instead of ENABLED."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["proxies"] = []
        self["contexts"] = []
        self["aliases"] = []

    def opt_version(self) -> None:
        """
        Print the txmodcluster and Twisted versions and exit.
        """
        print_version()

    def opt_proxy(self, value: str) -> None:
        """
        A proxy's MCMP address HOST:PORT (repeatable).
        """
        self["proxies"].append(value)

    def opt_context(self, value: str) -> None:
        """
        A context path to register, e.g. /app (repeatable; default /).
        """
        self["contexts"].append(value)

    def opt_alias(self, value: str) -> None:
        """
        A virtual host alias (repeatable; default localhost).
        """
        self["aliases"].append(value)

    def postOptions(self) -> None:
        source = "command line"
        data: dict[str, Any] = {}
        if self["config"]:
            source = self["config"]
            try:
                data = load_node_config_file(self["config"])
            except NodeConfigError as e:
                raise usage.UsageError(str(e)) from None
        for option, key in (
            ("route", "route"), ("backend", "backend"), ("domain", "domain"),
            ("balancer", "balancer"), ("proxy-url", "proxy_url"), ("node-host", "node_host"),
        ):
            if self[option] is not None:
                data[key] = self[option]
        for option, key in (("proxies", "proxies"), ("contexts", "contexts"),
                            ("aliases", "aliases")):
            if self[option]:
                data[key] = list(self[option])
        for option, key in (("status-period", "status_period"),
                            ("socket-timeout", "socket_timeout"),
                            ("drain-timeout", "drain_timeout")):
            if self[option] is not None:
                data[key] = _number(option, self[option])
        def table(key: str) -> dict[str, Any]:
            current = data.get(key, {})
            if not isinstance(current, dict):
                raise usage.UsageError(f"{source}: {key}: must be a table")
            return dict(current)

        if self["no-probe"]:
            data["probe"] = {**table("probe"), "enabled": False}
        if self["no-auto-enable"]:
            data["auto_enable"] = False
        if self["load-command"] is not None:
            metric: dict[str, Any] = {"type": "command", "command": self["load-command"]}
            if self["load-capacity"] is not None:
                metric["capacity"] = _number("load-capacity", self["load-capacity"])
            data["load"] = {**table("load"), "metrics": [metric]}
        elif self["load-capacity"] is not None:
            raise usage.UsageError("--load-capacity goes with --load-command")
        for section, options in (
            ("advertise", (("advertise-group", "group"), ("advertise-key", "key"),
                           ("advertise-interface", "interface"))),
            ("tls", (("proxy-ca", "ca"), ("proxy-cert", "certificate"),
                     ("proxy-key", "private_key"))),
        ):
            given = {key: self[option] for option, key in options if self[option] is not None}
            if given:
                data[section] = {**table(section), **given}
        try:
            self["node_config"] = config = node_config_from_dict(data, source)
        except NodeConfigError as e:
            raise usage.UsageError(str(e)) from None
        if config.tls is not None:
            from modcluster.node.agent import load_tls_options

            try:
                load_tls_options(config.tls)
            except Exception as e:
                raise usage.UsageError(f"{source}: tls: cannot load: {e}") from None


def makeService(options: Options) -> Any:
    """
    Build the L{modcluster.node.agent.NodeAgent} service.
    """
    from twisted.internet import reactor

    from modcluster.node.agent import NodeAgent

    return NodeAgent(options["node_config"], reactor)
