# -*- test-case-name: tests.unit.node.test_node_config -*-
"""
The node agent's settings: frozen attrs values, loaded from a plain mapping
(a TOML document and/or command-line options) by L{node_config_from_dict}.

Loading is strict: an unknown key, a value of the wrong type or an invalid
value raises L{NodeConfigError} naming the source, the dotted key and the
reason.  Nothing here touches the network or the reactor.

The keys are documented in C{docs/node-agent.md}.
"""

from __future__ import annotations

import math
import tomllib
from typing import Any, Mapping, Optional, Union
from urllib.parse import urlsplit

from attrs import field, frozen

from modcluster.advertise.codec import DEFAULT_GROUP, DEFAULT_PORT, parse_group, split_host_port
from modcluster.node.wire import NodeRegistration

__all__ = [
    "AdvertiseSettings",
    "LoadSettings",
    "MetricSettings",
    "NodeConfig",
    "NodeConfigError",
    "ProbeSettings",
    "ProxyTLSSettings",
    "load_node_config_file",
    "node_config_from_dict",
    "parse_proxy",
    "DEFAULT_PROXY_PORT",
    "METRIC_TYPES",
]

#: The port assumed for a proxy given without one (Java C{ModClusterService.DEFAULT_PORT}).
DEFAULT_PROXY_PORT = 8000

METRIC_TYPES = ("cpu", "memory", "command", "probe-latency")

_SCHEMES = {"http": 80, "https": 443, "ajp": 8009}


class NodeConfigError(Exception):
    """
    The configuration is invalid; C{str()} gives C{source: key: reason}.
    """

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        super().__init__(f"{source}: {key or '(top level)'}: {reason}")


def parse_proxy(text: str) -> tuple[str, int]:
    """
    C{HOST[:PORT]} or C{[V6]:PORT} -> (host, port); the port defaults to 8000.

    @raise ValueError: malformed.
    """
    host, port = split_host_port(text, DEFAULT_PROXY_PORT)
    if port == 0:
        raise ValueError(f"bad port in {text!r}")
    return host, port


@frozen
class MetricSettings:
    """
    One load metric: C{type} is C{cpu}, C{memory}, C{command} or
    C{probe-latency}.
    """

    type: str
    weight: float = 1.0
    capacity: float = 1.0
    command: Optional[Union[str, tuple[str, ...]]] = None
    timeout: float = 5.0


@frozen
class LoadSettings:
    """
    History and decay of the load computation (Java defaults), and the metrics.
    C{initial_load} C{None} means "no pre-filled history".
    """

    history: int = 9
    decay: float = 2.0
    initial_load: Optional[int] = 0
    metrics: tuple[MetricSettings, ...] = (MetricSettings("cpu"),)


@frozen
class ProbeSettings:
    """
    The backend probe made every status period.
    """

    enabled: bool = True
    path: str = "/"
    method: str = "HEAD"
    timeout: float = 5.0


@frozen
class AdvertiseSettings:
    """
    Listening for advertise datagrams.
    """

    group: str = DEFAULT_GROUP
    port: int = DEFAULT_PORT
    interface: str = "0.0.0.0"
    key: Optional[str] = None
    #: largest |Date - local clock| accepted, seconds; 0 turns the check off
    max_skew: float = 300.0
    #: advertised proxies added at most (anyone on the group can advertise);
    #: the proxies given in C{proxies} do not count
    max_proxies: int = 32


@frozen
class ProxyTLSSettings:
    """
    TLS for MCMP to the proxies: C{ca} verifies the proxy certificate (and its
    host name); C{certificate}/C{private_key} are our client certificate.
    """

    ca: Optional[str] = None
    certificate: Optional[str] = None
    private_key: Optional[str] = None


@frozen
class NodeConfig:
    """
    Everything the agent needs.  See C{docs/node-agent.md} for each key.
    """

    route: str
    backend: str
    contexts: tuple[str, ...] = ("/",)
    aliases: tuple[str, ...] = ("localhost",)
    proxies: tuple[tuple[str, int], ...] = ()
    proxy_url: Optional[str] = None
    node_host: Optional[str] = None
    domain: Optional[str] = None
    balancer: Optional[str] = None
    sticky_session: bool = True
    sticky_session_cookie: str = "JSESSIONID"
    sticky_session_path: str = "jsessionid"
    sticky_session_remove: bool = False
    sticky_session_force: bool = False
    worker_timeout: int = -1
    max_attempts: int = -1
    flush_packets: bool = False
    flush_wait: int = -1
    ping: int = -1
    smax: int = -1
    ttl: int = -1
    node_timeout: int = -1
    auto_enable: bool = True
    status_period: float = 10.0
    socket_timeout: float = 20.0
    drain_timeout: float = 10.0
    drain_poll_interval: float = 1.0
    reconnect_max_delay: float = 60.0
    load: LoadSettings = field(factory=LoadSettings)
    probe: ProbeSettings = field(factory=ProbeSettings)
    advertise: Optional[AdvertiseSettings] = None
    tls: Optional[ProxyTLSSettings] = None

    @property
    def backend_type(self) -> str:
        """
        C{http}, C{https} or C{ajp}: the CONFIG C{Type}.
        """
        return urlsplit(self.backend).scheme

    @property
    def backend_host(self) -> str:
        return urlsplit(self.backend).hostname or "localhost"

    @property
    def backend_port(self) -> int:
        parts = urlsplit(self.backend)
        return parts.port or _SCHEMES[parts.scheme]

    def registration(self, host: Optional[str] = None) -> NodeRegistration:
        """
        The CONFIG contents; C{host} overrides the advertised backend host.
        """
        return NodeRegistration(
            jvm_route=self.route,
            host=host or self.node_host or self.backend_host,
            port=self.backend_port,
            type=self.backend_type,
            domain=self.domain,
            balancer=self.balancer,
            flush_packets=self.flush_packets,
            flush_wait=self.flush_wait,
            ping=self.ping,
            smax=self.smax,
            ttl=self.ttl,
            node_timeout=self.node_timeout,
            sticky_session=self.sticky_session,
            sticky_session_cookie=self.sticky_session_cookie,
            sticky_session_path=self.sticky_session_path,
            sticky_session_remove=self.sticky_session_remove,
            sticky_session_force=self.sticky_session_force,
            worker_timeout=self.worker_timeout,
            max_attempts=self.max_attempts,
        )


# --- loading ---------------------------------------------------------------------

_FORBIDDEN = set("<>\"'\r\n")


class _Loader:
    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, reason: str) -> NodeConfigError:
        return NodeConfigError(self.source, key, reason)

    def take(self, data: Mapping[str, Any], prefix: str, allowed: set[str]) -> None:
        for key in data:
            if key not in allowed:
                raise self.error(prefix + str(key), "unknown key")

    def string(self, data: Mapping[str, Any], key: str, prefix: str,
               default: Any = None, required: bool = False, wire: bool = True) -> Any:
        """
        A string; with C{wire} (values sent in MCMP) the characters a proxy
        rejects (C{<>"'}, control characters) are refused too.
        """
        if key not in data:
            if required:
                raise self.error(prefix + key, "is required")
            return default
        value = data[key]
        if not isinstance(value, str):
            raise self.error(prefix + key, f"must be a string, not {type(value).__name__}")
        if not value:
            raise self.error(prefix + key, "must not be empty")
        if (wire and _FORBIDDEN & set(value)) or any(ord(c) < 32 for c in value):
            raise self.error(prefix + key, "contains a forbidden character")
        return value

    def strings(self, data: Mapping[str, Any], key: str, prefix: str,
                default: tuple[str, ...]) -> tuple[str, ...]:
        if key not in data:
            return default
        value = data[key]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise self.error(prefix + key, "must be a list of strings")
        for v in value:
            if _FORBIDDEN & set(v) or any(ord(c) < 32 for c in v):
                raise self.error(prefix + key, f"{v!r} contains a forbidden character")
        return tuple(value)

    def boolean(self, data: Mapping[str, Any], key: str, prefix: str, default: bool) -> bool:
        if key not in data:
            return default
        value = data[key]
        if not isinstance(value, bool):
            raise self.error(prefix + key, "must be true or false")
        return value

    def integer(self, data: Mapping[str, Any], key: str, prefix: str, default: int,
                minimum: int = -1, maximum: Optional[int] = None) -> int:
        if key not in data:
            return default
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(prefix + key, "must be an integer")
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
            raise self.error(prefix + key, f"must be {bounds}")
        return value

    def number(self, data: Mapping[str, Any], key: str, prefix: str, default: float,
               minimum: float = 0.0, exclusive: bool = True) -> float:
        if key not in data:
            return default
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(prefix + key, "must be a number")
        value = float(value)
        if not math.isfinite(value) or value < minimum or (exclusive and value == minimum):
            raise self.error(prefix + key, f"must be {'>' if exclusive else '>='} {minimum:g}")
        return value

    def table(self, data: Mapping[str, Any], key: str) -> Optional[Mapping[str, Any]]:
        if key not in data:
            return None
        value = data[key]
        if not isinstance(value, Mapping):
            raise self.error(key, "must be a table")
        return value


_TOP = {
    "route", "backend", "contexts", "aliases", "proxies", "proxy_url", "node_host",
    "domain", "balancer", "sticky_session", "sticky_session_cookie",
    "sticky_session_path", "sticky_session_remove", "sticky_session_force",
    "worker_timeout", "max_attempts", "flush_packets", "flush_wait", "ping", "smax",
    "ttl", "node_timeout", "auto_enable", "status_period", "socket_timeout",
    "drain_timeout", "drain_poll_interval", "reconnect_max_delay", "load", "probe",
    "advertise", "tls",
}


def _metric(loader: _Loader, data: Any, prefix: str) -> MetricSettings:
    if not isinstance(data, Mapping):
        raise loader.error(prefix.rstrip("."), "must be a table")
    loader.take(data, prefix, {"type", "weight", "capacity", "command", "timeout"})
    kind = loader.string(data, "type", prefix, required=True)
    if kind not in METRIC_TYPES:
        raise loader.error(prefix + "type", f"must be one of {', '.join(METRIC_TYPES)}")
    command: Any = None
    if kind == "command":
        if "command" not in data:
            raise loader.error(prefix + "command", "is required for a command metric")
        raw = data["command"]
        if isinstance(raw, str) and raw.strip():
            command = raw
        elif isinstance(raw, list) and raw and all(isinstance(a, str) for a in raw):
            command = tuple(raw)
        else:
            raise loader.error(prefix + "command", "must be a string or a list of strings")
    elif "command" in data:
        raise loader.error(prefix + "command", "only for a command metric")
    return MetricSettings(
        type=kind,
        weight=loader.number(data, "weight", prefix, 1.0, exclusive=False),
        capacity=loader.number(data, "capacity", prefix, 1.0),
        command=command,
        timeout=loader.number(data, "timeout", prefix, 5.0),
    )


def node_config_from_dict(data: Mapping[str, Any], source: str = "<config>") -> NodeConfig:
    """
    Build a L{NodeConfig} from a mapping shaped like the TOML file.

    @raise NodeConfigError: on the first problem found.
    """
    ld = _Loader(source)
    ld.take(data, "", _TOP)
    route = ld.string(data, "route", "", required=True)
    if not route or len(route) > 63:
        raise ld.error("route", "must be 1..63 characters")
    backend = ld.string(data, "backend", "", required=True)
    parts = urlsplit(backend)
    if parts.scheme not in _SCHEMES or not parts.hostname:
        raise ld.error("backend", "must be an http://, https:// or ajp:// URL with a host")
    try:
        _ = parts.port  # raises for a bad port
    except ValueError:
        raise ld.error("backend", "bad port") from None
    contexts = ld.strings(data, "contexts", "", ("/",))
    for path in contexts:
        if not path.startswith("/") or "," in path or len(path) > 79:
            raise ld.error("contexts",
                           f"{path!r}: must start with '/', no ',', at most 79 characters")
    if len(set(contexts)) != len(contexts):
        raise ld.error("contexts", "duplicate context")
    aliases = tuple(a.lower() for a in ld.strings(data, "aliases", "", ("localhost",)))
    if not aliases:
        raise ld.error("aliases", "at least one alias is needed")
    for alias in aliases:
        if not alias or "," in alias or " " in alias or len(alias) > 254:
            raise ld.error("aliases", f"{alias!r}: not a host name")
    aliases = tuple(dict.fromkeys(aliases))
    proxies = []
    for text in ld.strings(data, "proxies", "", ()):
        try:
            proxies.append(parse_proxy(text))
        except ValueError as e:
            raise ld.error("proxies", str(e)) from None
    proxy_url = ld.string(data, "proxy_url", "")
    if proxy_url is not None and not proxy_url.startswith("/"):
        raise ld.error("proxy_url", "must start with '/'")

    load_data = ld.table(data, "load") or {}
    ld.take(load_data, "load.", {"history", "decay", "initial_load", "metrics"})
    initial = ld.integer(load_data, "initial_load", "load.", 0, minimum=-1, maximum=100)
    metrics_raw = load_data.get("metrics")
    if metrics_raw is None:
        metrics: tuple[MetricSettings, ...] = (MetricSettings("cpu"),)
    elif isinstance(metrics_raw, list):
        metrics = tuple(_metric(ld, m, f"load.metrics[{i}].") for i, m in enumerate(metrics_raw))
    else:
        raise ld.error("load.metrics", "must be an array of tables")
    load = LoadSettings(
        history=ld.integer(load_data, "history", "load.", 9, minimum=0),
        decay=ld.number(load_data, "decay", "load.", 2.0, minimum=1.0, exclusive=False),
        initial_load=None if initial == -1 else initial,
        metrics=metrics,
    )

    probe_data = ld.table(data, "probe") or {}
    ld.take(probe_data, "probe.", {"enabled", "path", "method", "timeout"})
    method = ld.string(probe_data, "method", "probe.", "HEAD")
    if not method.isascii() or not method.isalpha():
        raise ld.error("probe.method", "must be an HTTP method name")
    probe = ProbeSettings(
        enabled=ld.boolean(probe_data, "enabled", "probe.", True),
        path=ld.string(probe_data, "path", "probe.", "/"),
        method=method.upper(),
        timeout=ld.number(probe_data, "timeout", "probe.", 5.0),
    )
    if not probe.path.startswith("/"):
        raise ld.error("probe.path", "must start with '/'")

    advertise = None
    adv_data = ld.table(data, "advertise")
    if adv_data is not None:
        ld.take(adv_data, "advertise.",
                {"group", "port", "interface", "key", "max_skew", "max_proxies"})
        group_text = ld.string(adv_data, "group", "advertise.", DEFAULT_GROUP)
        try:
            group, group_port = parse_group(group_text)
        except ValueError as e:
            raise ld.error("advertise.group", str(e)) from None
        key = ld.string(adv_data, "key", "advertise.", None, wire=False)
        if key is not None and not key.isascii():
            raise ld.error("advertise.key", "must be ASCII (as the Java listener needs)")
        advertise = AdvertiseSettings(
            group=group,
            port=ld.integer(adv_data, "port", "advertise.", group_port, minimum=1,
                            maximum=65535),
            interface=ld.string(adv_data, "interface", "advertise.", "0.0.0.0", wire=False),
            key=key,
            max_skew=ld.number(adv_data, "max_skew", "advertise.", 300.0, exclusive=False),
            max_proxies=ld.integer(adv_data, "max_proxies", "advertise.", 32, minimum=1),
        )

    tls = None
    tls_data = ld.table(data, "tls")
    if tls_data is not None:
        ld.take(tls_data, "tls.", {"ca", "certificate", "private_key"})
        tls = ProxyTLSSettings(
            ca=ld.string(tls_data, "ca", "tls.", wire=False),
            certificate=ld.string(tls_data, "certificate", "tls.", wire=False),
            private_key=ld.string(tls_data, "private_key", "tls.", wire=False),
        )
        if (tls.certificate is None) != (tls.private_key is None):
            raise ld.error("tls", "certificate and private_key go together")

    if not proxies and advertise is None:
        raise ld.error("proxies", "give at least one proxy, or [advertise]")

    def cfg_string(key: str, limit: int, default: Any = None) -> Any:
        value = ld.string(data, key, "", default)
        if value is not None and len(value) > limit:
            raise ld.error(key, f"must be 1..{limit} characters")
        return value

    return NodeConfig(
        route=route,
        backend=backend,
        contexts=contexts,
        aliases=aliases,
        proxies=tuple(dict.fromkeys(proxies)),
        proxy_url=proxy_url,
        node_host=cfg_string("node_host", 63),
        domain=cfg_string("domain", 19),
        balancer=cfg_string("balancer", 39),
        sticky_session=ld.boolean(data, "sticky_session", "", True),
        sticky_session_cookie=cfg_string("sticky_session_cookie", 29, "JSESSIONID"),
        sticky_session_path=cfg_string("sticky_session_path", 29, "jsessionid"),
        sticky_session_remove=ld.boolean(data, "sticky_session_remove", "", False),
        sticky_session_force=ld.boolean(data, "sticky_session_force", "", False),
        worker_timeout=ld.integer(data, "worker_timeout", "", -1),
        max_attempts=ld.integer(data, "max_attempts", "", -1),
        flush_packets=ld.boolean(data, "flush_packets", "", False),
        flush_wait=ld.integer(data, "flush_wait", "", -1),
        ping=ld.integer(data, "ping", "", -1),
        smax=ld.integer(data, "smax", "", -1),
        ttl=ld.integer(data, "ttl", "", -1),
        node_timeout=ld.integer(data, "node_timeout", "", -1),
        auto_enable=ld.boolean(data, "auto_enable", "", True),
        status_period=ld.number(data, "status_period", "", 10.0),
        socket_timeout=ld.number(data, "socket_timeout", "", 20.0),
        drain_timeout=ld.number(data, "drain_timeout", "", 10.0, exclusive=False),
        drain_poll_interval=ld.number(data, "drain_poll_interval", "", 1.0),
        reconnect_max_delay=ld.number(data, "reconnect_max_delay", "", 60.0),
        load=load,
        probe=probe,
        advertise=advertise,
        tls=tls,
    )


def load_node_config_file(path: str) -> dict[str, Any]:
    """
    Read a TOML file into a mapping (validated later by L{node_config_from_dict}).

    @raise NodeConfigError: unreadable file or invalid TOML.
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise NodeConfigError(path, "", f"cannot read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise NodeConfigError(path, "", f"invalid TOML: {e}") from None
