"""
The configuration file: one TOML document read into frozen attrs classes.

Every section is an attrs class whose fields carry their documentation and the
httpd directive they replace in ``metadata``; ``docs/configuration.md`` is
checked against these classes by the tests, so the two cannot drift apart.

Loading is strict: an unknown key, a value of the wrong type or a value that a
validator refuses raises L{ConfigError} naming the file, the dotted key and the
reason.  Nothing here touches the network or the reactor.
"""

from __future__ import annotations

import tomllib
import types
import typing
from typing import Any, Optional

import attrs
from attrs import field, frozen

__all__ = [
    "AdvertiseConfig",
    "Config",
    "ConfigError",
    "ConsoleConfig",
    "ManagerConfig",
    "ManagerTLSConfig",
    "NodeTLSConfig",
    "ProxyConfig",
    "load_config",
    "parse_config",
]


class ConfigError(Exception):
    """
    The configuration is invalid.  C{str()} gives C{file: key: reason}.
    """

    def __init__(self, source: str, key: str, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        super().__init__(f"{source}: {key or '(top level)'}: {reason}")


def _doc(text: str, directive: str = "") -> dict[str, str]:
    return {"doc": text, "directive": directive}


# --- validators ------------------------------------------------------------


def _positive(inst: object, att: attrs.Attribute, value: Any) -> None:
    if value is not None and value <= 0:
        raise ValueError("must be greater than 0", att)


def _non_negative(inst: object, att: attrs.Attribute, value: Any) -> None:
    if value is not None and value < 0:
        raise ValueError("must not be negative", att)


def _at_least(minimum: float):
    def check(inst: object, att: attrs.Attribute, value: Any) -> None:
        if value is not None and value < minimum:
            raise ValueError(f"must be at least {minimum}", att)

    return check


def _at_most(maximum: float):
    def check(inst: object, att: attrs.Attribute, value: Any) -> None:
        if value is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}", att)

    return check


def _one_of(*choices: object):
    def check(inst: object, att: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(map(repr, choices))}", att)

    return check


def _upgrade_tokens(inst: object, att: attrs.Attribute, value: str) -> None:
    if any(t.strip().lower() == "h2c" for t in value.split(",")):
        raise ValueError("h2c is never tunnelled (RFC 9113 deprecates the HTTP/1.1 upgrade "
                         "to HTTP/2; a tunnel would let a client's HTTP/2 reach the node "
                         "past the proxy's routing): see the h2c setting", att)


#: Listener kinds the worker processes can share (see modcluster/proxy/workers.py).
WORKER_LISTENER_KINDS = ("tcp", "tcp6", "ssl")


def _endpoint_list(inst: object, att: attrs.Attribute, value: tuple) -> None:
    for item in value:
        if not item.strip():
            raise ValueError("an endpoint description cannot be empty", att)
        kind = item.split(":", 1)[0]
        if kind not in ("tcp", "tcp6", "ssl", "unix", "systemd"):
            raise ValueError(
                f"{item!r}: not a server endpoint description "
                "(expected e.g. 'tcp:6666:interface=127.0.0.1')", att
            )


def _networks(inst: object, att: attrs.Attribute, value: tuple) -> None:
    from modcluster.access import parse_networks

    try:
        parse_networks(value)
    except ValueError as e:
        raise ValueError(str(e), att) from None


def _identity_list(inst: object, att: attrs.Attribute, value: tuple) -> None:
    for item in value:
        if not item.strip():
            raise ValueError("an identity cannot be empty", att)


def _url_path(inst: object, att: attrs.Attribute, value: str) -> None:
    if not value.startswith("/") or value != value.strip() or "?" in value:
        raise ValueError("must be a URL path starting with '/'", att)


# --- keys shared by [proxy] and [manager] ------------------------------------


class _HasHeaderTimeout(typing.Protocol):
    request_header_timeout: float


def _header_max(inst: _HasHeaderTimeout, att: attrs.Attribute, value: Any) -> None:
    if value < 0:
        raise ValueError("must not be negative", att)
    if 0 < value < inst.request_header_timeout:
        raise ValueError("must be 0 or at least request_header_timeout", att)


def _request_header_timeout(who: str):
    return field(default=20.0, validator=_non_negative, metadata=_doc(
        f"Seconds a {who} client may take to send a request head, counted from the "
        "connection's accept for its first request and from its first byte for the next "
        "ones (0 = off); extended by `request_header_min_rate` up to "
        "`request_header_timeout_max`.  On expiry the client gets 408 if it sent part of "
        "a head, else the connection is just closed.  Clients cut are logged (a few "
        "lines, however many) and counted in `modcluster_client_timeouts_total`.",
        "RequestReadTimeout header=20"))


def _request_header_timeout_max():
    return field(default=40.0, validator=_header_max, metadata=_doc(
        "Longest a request head may take with the extensions (0 = no extension).",
        "RequestReadTimeout header=20-40"))


def _request_header_min_rate():
    return field(default=500, validator=_non_negative, metadata=_doc(
        "Bytes per second of request head that extend its deadline by one second "
        "(0 = no extension).", "RequestReadTimeout header=…,MinRate=500"))


def _request_body_timeout(who: str):
    return field(default=20.0, validator=_non_negative, metadata=_doc(
        f"Seconds a request body sent to the {who} listener may take, extended by one "
        "second per `request_body_min_rate` bytes received, so a client sending more "
        "slowly than that rate is cut (408, or just a close once a response began).  "
        "Time the balancer is not reading the body itself (e.g. a slow node) does not "
        "count (0 = off).", "RequestReadTimeout body=20"))


def _request_body_min_rate():
    return field(default=500, validator=_non_negative, metadata=_doc(
        "Bytes per second a request body must keep up after its first "
        "`request_body_timeout` seconds (0: `request_body_timeout` is the total time a "
        "body may take).", "RequestReadTimeout body=…,MinRate=500"))


def _listen_backlog(who: str):
    return field(default=511, validator=[_at_least(1), _at_most(65535)], metadata=_doc(
        f"Listen queue length of the {who} listeners: `backlog=` is added to every "
        "`tcp`, `tcp6`, `ssl` and `unix` endpoint description that does not set it "
        "(Linux caps it at `net.core.somaxconn`).", "ListenBacklog"))


# --- sections --------------------------------------------------------------


@frozen
class ManagerTLSConfig:
    """Mutual TLS on the management (MCMP) listener."""

    enabled: bool = field(default=False, metadata=_doc(
        "Serve the management listener over TLS.  Every `manager.listen` endpoint is "
        "wrapped in TLS.", "SSLEngine on (in the MCMP VirtualHost)"))
    certificate: Optional[str] = field(default=None, metadata=_doc(
        "PEM file with the balancer's certificate (and chain).", "SSLCertificateFile"))
    private_key: Optional[str] = field(default=None, metadata=_doc(
        "PEM file with the certificate's private key.", "SSLCertificateKeyFile"))
    ca: Optional[str] = field(default=None, metadata=_doc(
        "PEM file with the CA certificate(s) that sign node client certificates.",
        "SSLCACertificateFile"))
    require_client_certificate: bool = field(default=True, metadata=_doc(
        "Refuse clients without a certificate signed by `ca`.",
        "SSLVerifyClient require"))
    minimum_version: str = field(default="1.2", validator=_one_of("1.2", "1.3"), metadata=_doc(
        "Lowest TLS version accepted.", "SSLProtocol"))
    ciphers: Optional[str] = field(default=None, metadata=_doc(
        "OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are OpenSSL's).",
        "SSLCipherSuite"))
    handshake_timeout: float = field(default=10.0, validator=_positive, metadata=_doc(
        "Seconds a client may take to complete the TLS handshake.", ""))
    identities: dict[str, tuple[str, ...]] = field(factory=dict, metadata=_doc(
        "Optional identity pinning: certificate identity (SAN DNS name, SAN URI or "
        "subject CN) → JVMRoutes it may register or change.  Empty: any verified "
        "certificate may act for any node.  Console commands obey it too: a node "
        "identity acts only on its own routes (see `operators`).", ""))
    operators: tuple[str, ...] = field(default=(), validator=_identity_list, metadata=_doc(
        "Certificate identities (SAN DNS name, SAN URI or subject CN) that may run console "
        "commands on every node.  When `identities` or `operators` is set, console commands "
        "need a client certificate: an operator acts on any node, a node identity only on "
        "its own routes, anyone else gets 403.  Empty with no `identities`: no restriction "
        "beyond the console's nonce.", ""))

    def __attrs_post_init__(self) -> None:
        if self.enabled:
            missing = [n for n in ("certificate", "private_key") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"TLS is enabled but {', '.join(missing)} is not set")
            if self.require_client_certificate and self.ca is None:
                raise ValueError("require_client_certificate needs `ca`")


@frozen
class ManagerConfig:
    """The management side: MCMP receiver, cluster tables, persistence."""

    listen: tuple[str, ...] = field(
        default=("tcp:6666:interface=127.0.0.1",), validator=_endpoint_list, metadata=_doc(
            "Twisted endpoint descriptions the MCMP/management listener binds.  "
            "Loopback by default: open it to the nodes' network deliberately.",
            "EnableMCMPReceive (in a VirtualHost with Listen)"))
    balancer_name: str = field(default="mycluster", metadata=_doc(
        "Balancer used when a CONFIG carries no `Balancer`.  Lower-cased.",
        "ManagerBalancerName"))
    max_nodes: int = field(default=5000, validator=_positive, metadata=_doc(
        "Quota on registered nodes (no fixed table: memory grows with use).  A CONFIG "
        "beyond it is refused with a MEM error.", "Maxnode"))
    max_hosts: int = field(default=20000, validator=_positive, metadata=_doc(
        "Quota on host aliases (and balancers).", "Maxhost"))
    max_contexts: int = field(default=50000, validator=_positive, metadata=_doc(
        "Quota on context records.", "Maxcontext"))
    max_session_ids: int = field(default=0, validator=_non_negative, metadata=_doc(
        "Session ids the proxy remembers for display (0 = off): the console lists them "
        "with a per-node count and `/api/v1/sessions` returns them.  Ids seen longest ago "
        "are dropped first; an id not seen for 30 minutes is dropped.  Costs one "
        "dictionary update per request that carries a session id.",
        "Maxsessionid"))
    max_message_size: int = field(default=65536, validator=_at_least(1024), metadata=_doc(
        "Largest MCMP request body accepted, in bytes; larger messages are refused with "
        "a SYNTAX error (httpd silently truncates them).", "MaxMCMPMessSize"))
    wait_before_remove: float = field(default=10.0, validator=_at_least(10), metadata=_doc(
        "Seconds a node removed by `REMOVE-APP /*` (or by failed health checks) stays "
        "listed before it is purged.", "WaitBeforeRemove"))
    lbstatus_recalc_time: float = field(default=5.0, validator=_positive, metadata=_doc(
        "Seconds between load-statistics recomputations and idle-node probes.",
        "LBstatusRecalTime"))
    idle_failures_before_remove: int = field(default=60, validator=_positive, metadata=_doc(
        "Consecutive failed idle probes after which a node is removed (hard-coded 60 "
        "in httpd).", ""))
    worker_retry: float = field(default=60.0, validator=_non_negative, metadata=_doc(
        "Seconds after which a node in error may be tried again by a sticky request "
        "(mod_proxy `retry`).", ""))
    status_probe_reuse: float = field(default=1.0, validator=_non_negative, metadata=_doc(
        "A node that answered a probe less than this many seconds ago is not probed "
        "again for a STATUS (0: probe at every STATUS, as httpd does).", ""))
    recovery_probe_interval: float = field(default=5.0, validator=_non_negative, metadata=_doc(
        "Seconds between health probes (`OPTIONS *` for HTTP nodes, CPING for AJP) of a "
        "node in error or ejected: a node in error whose probe succeeds comes back "
        "(through slow start) without waiting for a STATUS; an ejected node whose probe "
        "fails is put in error.  0: only STATUS brings a node back (httpd).", ""))
    request_timeout: float = field(default=60.0, validator=_positive, metadata=_doc(
        "Seconds an idle or stalled management connection is kept open.", "Timeout"))
    request_header_timeout: float = _request_header_timeout("management")
    request_header_timeout_max: float = _request_header_timeout_max()
    request_header_min_rate: int = _request_header_min_rate()
    request_body_timeout: float = _request_body_timeout("management")
    request_body_min_rate: int = _request_body_min_rate()
    listen_backlog: int = _listen_backlog("management (and console)")
    persist: bool = field(default=False, metadata=_doc(
        "Save nodes, balancers, aliases and contexts to `state_file` and restore them at "
        "start-up (restored nodes stay unverified until their next STATUS or PING).  "
        "The file gets the checks and quotas of MCMP; one that fails them is set aside "
        "as `<state_file>.bad` and the balancer starts empty (docs/mcmp.md).",
        "PersistSlots"))
    state_file: str = field(default="txmodcluster-state.json", metadata=_doc(
        "Where the state is saved when `persist` is on (written atomically).",
        "MemManagerFile"))
    log_level: str = field(default="info", validator=_one_of(
        "debug", "info", "warn", "error", "critical"), metadata=_doc(
        "Least severe log events written (twistd's log and the worker processes'); live "
        "on reload.", "LogLevel"))
    handover_socket: Optional[str] = field(default=None, metadata=_doc(
        "Unix socket path for hitless restarts: a balancer started with the same "
        "setting while another one runs takes its listening sockets and registrations "
        "over, and the old one drains and exits (see docs/operations.md, \"Upgrade "
        "without dropping a request\").  Unset: no handover.", ""))
    release: str = field(default="mod_cluster/1.3.22.Final", metadata=_doc(
        "Release string VERSION and the console report.  The default keeps tools that "
        "match httpd's `mod_cluster/x.y.z.Final` working.", ""))
    tls: ManagerTLSConfig = field(factory=ManagerTLSConfig, metadata=_doc(
        "Mutual TLS on the management listener (section `[manager.tls]`).", ""))
    allow: tuple[str, ...] = field(default=(), validator=_networks, metadata=_doc(
        "Client addresses and networks (`10.0.0.0/8`, `192.0.2.7`, `fd00::/8`) allowed on "
        "the management listener; other clients get 403 (and a rate-limited log line).  "
        "Empty: every client the listener accepts (it binds loopback by default).",
        "Require ip (in the MCMP VirtualHost)"))


@frozen
class ConsoleConfig:
    """The manager web console, JSON API and metrics (on their own listener by default)."""

    enabled: bool = field(default=True, metadata=_doc(
        "Serve the console.", "SetHandler mod_cluster-manager"))
    path: str = field(default="/mod_cluster-manager", validator=_url_path, metadata=_doc(
        "URL path of the console.", "<Location /mod_cluster-manager>"))
    listen: tuple[str, ...] = field(
        default=("tcp:8090:interface=127.0.0.1",), validator=_endpoint_list, metadata=_doc(
            "Endpoints serving the console, API and metrics, and only those; they are then "
            "not served on the management (MCMP) listener.  `[]` serves them on the "
            "management listener(s) instead, as httpd does.  The default port is one "
            "browsers open (6666, the MCMP port, is on their unsafe-port list).",
            "Listen + <Location /mod_cluster-manager>"))
    allow: tuple[str, ...] = field(default=(), validator=_networks, metadata=_doc(
        "Client addresses and networks allowed to use the console, API and metrics; "
        "others get 403 (and a rate-limited log line).  Empty: every client the listener "
        "accepts (loopback by default).", "Require ip (in the console Location)"))
    hosts: tuple[str, ...] = field(default=(), validator=_identity_list, metadata=_doc(
        "Host names or addresses the console, API and metrics answer to, besides "
        "`localhost`, `127.0.0.1`, `::1` and the address the connection arrived on; a "
        "request with another `Host` gets 421 (protection against DNS rebinding).  `*` "
        "accepts any.", "ServerName / ServerAlias"))
    tls: Optional[bool] = field(default=None, metadata=_doc(
        "Serve `listen` with the `[manager.tls]` certificate and client-certificate "
        "settings (needed for identity-checked commands).  Default: on when "
        "`manager.tls.enabled`.  `false` serves plain HTTP (or whatever an `ssl:` "
        "description says).", "SSLEngine on (in the console VirtualHost)"))
    check_nonce: bool = field(default=True, metadata=_doc(
        "Require the per-start random nonce on query-string commands.", "CheckNonce"))
    allow_cmd: bool = field(default=True, metadata=_doc(
        "Allow enable/disable/stop commands from the console.", "AllowCmd"))
    allow_display: bool = field(default=False, metadata=_doc(
        "Show the extra configuration block.", "AllowDisplay"))
    reduce_display: bool = field(default=False, metadata=_doc(
        "Compact layout.", "ReduceDisplay"))
    api_path: str = field(default="/api/v1", validator=_url_path, metadata=_doc(
        "URL path prefix of the read-only JSON API (empty to disable is not allowed; "
        "set `api` to false).", ""))
    api: bool = field(default=True, metadata=_doc("Serve the JSON API.", ""))
    metrics_path: str = field(default="/metrics", validator=_url_path, metadata=_doc(
        "URL path of the Prometheus metrics.", ""))
    metrics: bool = field(default=True, metadata=_doc("Serve Prometheus metrics.", ""))
    metrics_per_context: bool = field(default=False, metadata=_doc(
        "Also export one series per context (`modcluster_context_status`, `_in_flight`, "
        "`_requests_total`: 5 series per context).  Off: contexts are counted per node "
        "and status (`modcluster_node_contexts`), which keeps a scrape of 1 000 nodes x "
        "10 contexts small (see docs/metrics.md).", ""))
    event_log_size: int = field(default=1000, validator=_positive, metadata=_doc(
        "Number of recent cluster events kept for the API.", ""))


@frozen
class NodeTLSConfig:
    """TLS towards `https`/`wss` nodes."""

    ca: Optional[str] = field(default=None, metadata=_doc(
        "PEM CA file used to verify node certificates (default: the system trust store).",
        "SSLProxyCACertificateFile"))
    client_certificate: Optional[str] = field(default=None, metadata=_doc(
        "PEM certificate the proxy presents to nodes.", "SSLProxyMachineCertificateFile"))
    client_private_key: Optional[str] = field(default=None, metadata=_doc(
        "PEM private key of `client_certificate`.", "SSLProxyMachineCertificateFile"))
    verify: bool = field(default=True, metadata=_doc(
        "Verify the node certificate and host name (service_identity).",
        "SSLProxyVerify require / SSLProxyCheckPeerName"))


@frozen
class ProxyConfig:
    """The data plane: client listeners and how requests reach nodes."""

    listen: tuple[str, ...] = field(
        default=("tcp:8000:interface=127.0.0.1",), validator=_endpoint_list, metadata=_doc(
            "Endpoint descriptions for client traffic; an `ssl:` endpoint serves HTTPS.",
            "Listen"))
    workers: int = field(default=1, validator=[_at_least(1), _at_most(64)], metadata=_doc(
        "Data-plane processes.  1 serves clients in the main process.  With N > 1 the "
        "main process keeps MCMP, the registry, health checks and the console, and N "
        "worker processes accept client connections on `listen` (one `SO_REUSEPORT` "
        "socket each) and forward them, fed routing snapshots by the main process.  "
        "Set it to the number of cores the proxy may use.  Only `tcp`, `tcp6` and "
        "`ssl` listeners then (see docs/data-plane.md, \"Worker processes\").", ""))
    use_alias: bool = field(default=False, metadata=_doc(
        "Route a request only to contexts whose virtual host has the request's host name "
        "as an alias.", "UseAlias"))
    response_status_on_no_context: int = field(default=404, metadata=_doc(
        "Status returned when no registered context matches the request.",
        "ResponseStatusCodeOnNoContext"))
    unavailable_context_status: int = field(default=503, validator=_one_of(503, 404),
                                            metadata=_doc(
        "Status returned when a context matches but every node's record of the longest "
        "match is stopped, or disabled and the request has no session (a redeploy, a "
        "drain): `503` (with `Retry-After`) says \"come back later\"; `404` is what "
        "httpd answers, which browsers, caches and crawlers take as \"gone\".", ""))
    retry_after: int = field(default=10, validator=[_non_negative, _at_most(86400)],
                             metadata=_doc(
        "Seconds sent in `Retry-After` with the 503 answers the balancer makes itself "
        "(no usable node, unavailable context); 0 sends none.", ""))
    preserve_host: bool = field(default=True, metadata=_doc(
        "Send the client's Host header to HTTP nodes (Tomcat picks its virtual host "
        "from it).", "ProxyPreserveHost"))
    add_forwarded_headers: bool = field(default=True, metadata=_doc(
        "Append X-Forwarded-For and set X-Forwarded-Host/-Proto/-Server for HTTP nodes.",
        "ProxyAddHeaders"))
    enable_options: bool = field(default=True, metadata=_doc(
        "Probe HTTP nodes with `OPTIONS *` (health checks and STATUS probes).",
        "EnableOptions"))
    deterministic_failover: bool = field(default=False, metadata=_doc(
        "Pick the failover node of a session by hashing its id.", "DeterministicFailover"))
    enable_ws_tunnel: bool = field(default=False, metadata=_doc(
        "Tunnel WebSocket upgrades to http/https nodes (registered as ws/wss): HTTP/1.1 "
        "Upgrade requests, and HTTP/2 extended CONNECT (RFC 8441, offered by "
        "SETTINGS_ENABLE_CONNECT_PROTOCOL).",
        "EnableWsTunnel"))
    ws_upgrade_header: str = field(default="websocket", validator=_upgrade_tokens,
                                   metadata=_doc(
        "Upgrade token(s) (over HTTP/2: `:protocol` values) tunnelled; `*` accepts any but "
        "`h2c` (never tunnelled: a node's HTTP/2 behind a 101 would escape the proxy's "
        "routing, \"h2c smuggling\"; listing it is refused).", "WSUpgradeHeader"))
    ajp_secret: Optional[str] = field(default=None, metadata=_doc(
        "Secret sent to AJP nodes (Tomcat's `secret`).", "AJPSecret"))
    ajp_packet_size: int = field(default=8192, metadata=_doc(
        "AJP packet size; must equal Tomcat's `packetSize` (8192..65536).",
        "ProxyIOBufferSize"))
    ajp_cping: str = field(default="idle", validator=_one_of("always", "idle", "never"),
                           metadata=_doc(
        "When to CPING a pooled AJP connection before reusing it: `always` (as "
        "mod_proxy_cluster does), `idle` (only after `ajp_cping_idle` seconds unused), "
        "`never`.", ""))
    ajp_cping_idle: float = field(default=5.0, validator=_non_negative, metadata=_doc(
        "Idle seconds after which a pooled AJP connection is CPINGed before reuse.", ""))
    timeout: float = field(default=60.0, validator=_positive, metadata=_doc(
        "Backend read timeout when the node's CONFIG `Timeout` is 0.  The same value "
        "bounds a response head once its first byte came (for AJP the SEND_HEADERS once "
        "the reply began): a node trickling it is cut as by the read timeout.",
        "ProxyTimeout"))
    client_timeout: float = field(default=60.0, validator=_positive, metadata=_doc(
        "Seconds an idle client keep-alive connection, or a client sending a request "
        "head, may stall.", "KeepAliveTimeout / Timeout"))
    request_header_timeout: float = _request_header_timeout("proxy")
    request_header_timeout_max: float = _request_header_timeout_max()
    request_header_min_rate: int = _request_header_min_rate()
    request_body_timeout: float = _request_body_timeout("proxy")
    request_body_min_rate: int = _request_body_min_rate()
    listen_backlog: int = _listen_backlog("proxy")
    max_request_body: int = field(default=0, validator=_non_negative, metadata=_doc(
        "Largest request body accepted, in bytes (0 = unlimited, streamed).",
        "LimitRequestBody"))
    max_header_size: int = field(default=65536, validator=_at_least(1024), metadata=_doc(
        "Largest request or response head accepted, in bytes.",
        "LimitRequestFieldSize / ResponseFieldSize"))
    max_idle_per_node: int = field(default=64, validator=_non_negative, metadata=_doc(
        "Idle keep-alive connections kept per node when the node's `smax` is -1.", ""))
    fast_event_loop: bool = field(default=True, metadata=_doc(
        "Run the epoll reactor without Twisted's per-event legacy logging context "
        "(about 25 % more proxy throughput; legacy `twisted.python.log` messages "
        "emitted while handling I/O lose their per-connection prefix).  Only applies "
        "to an unmodified epoll reactor.  Also: plain TCP proxy listeners (and `ssl:` "
        "ones with `tls_engine = \"stdlib\"`) accept with the proxy's own accept loop "
        "(bounded batches, the request read at once, "
        "out of descriptors pauses accepting), and the started process freezes its "
        "start-up objects out of the cyclic GC's full collections (`gc.freeze`); see "
        "docs/data-plane.md.", ""))
    allow_trace: bool = field(default=False, metadata=_doc(
        "Forward TRACE requests to nodes.  Off: TRACE is answered 405 by the proxy "
        "(a TRACE echo exposes request headers such as cookies to scripts).",
        "TraceEnable"))
    server_name: str = field(default="txmodcluster", metadata=_doc(
        "Value of X-Forwarded-Server.", "ServerName"))
    drain_timeout: float = field(default=10.0, validator=_non_negative, metadata=_doc(
        "On stop (SIGTERM), seconds requests in flight may take to finish after the "
        "proxy listeners stopped accepting (idle keep-alive connections are closed at "
        "once); 0 stops at once.  Live on reload.", "GracefulShutdownTimeout"))
    access_log: Optional[str] = field(default=None, metadata=_doc(
        "Access log: one line per proxied request, to this file (opened for appending, "
        "reopened on SIGUSR1 for log rotation) or `-` for standard output.  Unset (the "
        "default, as httpd without `CustomLog`): no access log.  See docs/access-log.md.",
        "CustomLog"))
    access_log_format: str = field(
        default="combined", validator=_one_of("combined", "extended", "json"),
        metadata=_doc(
            "`combined` (httpd/nginx combined log format), `extended` (combined + duration, "
            "upstream time, node, context, failovers) or `json` (one object per line).",
            "LogFormat"))
    client_metrics: bool = field(default=True, metadata=_doc(
        "Count proxied requests for `/metrics` (`modcluster_proxy_*`: requests by context, "
        "node and status class, durations, failovers, 503s by reason, client connections, "
        "TLS handshakes); see docs/metrics.md.  Nothing is counted when "
        "`console.metrics` is off.", ""))
    client_metrics_labels: int = field(default=200, validator=_positive, metadata=_doc(
        "Bound on label values of the client metrics, per process: at most this many "
        "(context, node) pairs, contexts and nodes get their own series; the rest are "
        "counted as `other`.", ""))
    smooth_balancing: bool = field(default=True, metadata=_doc(
        "Elect nodes by smooth weighted shares (stride scheduling on the load factors): "
        "the same long-run proportions as mod_proxy_cluster, steady from one second to "
        "the next.  false: mod_proxy_cluster's score with its `LBstatusRecalTime` "
        "resets (see docs/balancing.md, \"Beyond mod_proxy_cluster\").", ""))
    slow_start: float = field(default=30.0, validator=_non_negative, metadata=_doc(
        "Seconds over which a node that registers, is enabled, leaves the error state or "
        "comes back from ejection ramps from `slow_start_min_share` of its share to all "
        "of it (0: off).  Needs `smooth_balancing`.", ""))
    slow_start_min_share: float = field(default=0.1, validator=[_positive, _at_most(1)],
                                        metadata=_doc(
        "Share of its weight a node starts its slow start with.", ""))
    eject_failures: int = field(default=5, validator=_non_negative, metadata=_doc(
        "Passive health: consecutive failures of a node (connect errors, resets, "
        "malformed responses; 5xx with `eject_on_5xx`) that eject it from the election "
        "for `eject_time` (0: no ejection).", ""))
    eject_time: float = field(default=30.0, validator=_positive, metadata=_doc(
        "Seconds of a first ejection; doubled at each repeated ejection, up to "
        "`eject_max_time`.", ""))
    eject_max_time: float = field(default=300.0, validator=_positive, metadata=_doc(
        "Longest ejection; a node healthy this long after an ejection starts again "
        "from `eject_time`.", ""))
    eject_max_share: float = field(default=0.5, validator=[_non_negative, _at_most(1)],
                                   metadata=_doc(
        "Largest share of a context's nodes ejected at once (rounded down: a context "
        "with one node never loses it).  If every usable node is ejected anyway, "
        "requests are routed to them (panic threshold).", ""))
    eject_on_5xx: bool = field(default=False, metadata=_doc(
        "Count 500, 502, 503 and 504 answers as passive-health failures.", ""))
    retry_budget: float = field(default=0.2, validator=[_non_negative, _at_most(1)],
                                metadata=_doc(
        "Failover replays allowed per balancer, as a share of its requests over "
        "`retry_budget_window` (the keep-alive race retry on a fresh connection is "
        "always allowed once and not counted).", ""))
    retry_budget_window: float = field(default=10.0, validator=_at_least(1), metadata=_doc(
        "Seconds of the retry budget's sliding window.", ""))
    retry_budget_min: int = field(default=10, validator=_non_negative, metadata=_doc(
        "Replays always allowed per window, whatever the share (so a quiet balancer "
        "can still fail over).", ""))
    max_in_flight_per_node: int = field(default=1000, validator=_non_negative, metadata=_doc(
        "Requests in flight allowed per node; the excess waits in a FIFO queue (0: no "
        "limit).  Set it to what a node can serve at once (Tomcat's `maxThreads`).  "
        "Divided among the `workers` processes.  (A node's CONFIG `smax` stays the soft "
        "bound of its idle connection pool, as in mod_proxy.)", "max / acquire"))
    node_queue_size: int = field(default=100, validator=_non_negative, metadata=_doc(
        "Requests that may wait for a node at its limit; beyond, 503 with Retry-After "
        "at once.", ""))
    node_queue_timeout: float = field(default=10.0, validator=_positive, metadata=_doc(
        "Seconds a request waits for a node at its limit before a 503 with "
        "Retry-After.", "acquire"))
    http2: bool = field(default=True, metadata=_doc(
        "Serve HTTP/2 on `ssl:` listeners to clients that offer `h2` by ALPN (HTTP/1.1 "
        "stays on the same port for the others).  Plain listeners: see `h2c`.  See "
        "docs/data-plane.md, \"HTTP/2\".", "Protocols h2 http/1.1"))
    h2c: bool = field(default=False, metadata=_doc(
        "Serve HTTP/2 over cleartext with prior knowledge (h2c, RFC 9113 §3.3) on plain "
        "(`tcp:`, `tcp6:`, `unix:`) listeners: a connection whose first bytes are the "
        "HTTP/2 connection preface is served as HTTP/2 (the same protocol, limits and "
        "flood protections as `h2` on `ssl:` listeners, independent of `http2`), every "
        "other connection as HTTP/1.1, at no cost to it.  For a TLS-terminating load "
        "balancer, a service mesh sidecar or gRPC clients in front speaking h2c.  Off "
        "by default, as in httpd (`Protocols`), HAProxy (`proto h2`) and nginx: a "
        "plain listener is often reached through an HTTP/1.1 proxy, and HTTP/2 is a "
        "larger surface and costs more per request here.  The HTTP/1.1 `Upgrade: h2c` "
        "(deprecated by RFC 9113) is never done nor tunnelled.  Applied by a reload to "
        "new connections.  See docs/data-plane.md, \"h2c\".", "Protocols h2c http/1.1"))
    http2_max_concurrent_streams: int = field(default=100, validator=[_at_least(1),
                                                                      _at_most(10000)],
                                              metadata=_doc(
        "SETTINGS_MAX_CONCURRENT_STREAMS announced to HTTP/2 clients: requests one "
        "connection may have open at once.", "H2MaxSessionStreams"))
    http2_window: int = field(default=262144, validator=[_at_least(65535),
                                                         _at_most(2**31 - 1)], metadata=_doc(
        "HTTP/2 receive window per stream, in bytes (request body a client may send "
        "ahead of the node reading it); the connection window is this times "
        "`http2_max_concurrent_streams`, so one stalled stream does not stall the "
        "others.", "H2WindowSize"))
    http2_max_resets: int = field(default=200, validator=_at_least(1), metadata=_doc(
        "Streams an HTTP/2 client may cancel (RST_STREAM) or have refused as malformed "
        "per second, with as large a burst, before its connection is closed with GOAWAY "
        "ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487).  PING, SETTINGS, PRIORITY and "
        "empty DATA frames draw on the same budget at a tenth of a reset each.", ""))
    tls_engine: str = field(default="stdlib", validator=_one_of("stdlib", "twisted"),
                            metadata=_doc(
        "TLS implementation of the `ssl:` listeners: `stdlib` (Python's `ssl` module "
        "with memory BIOs, records sent at once: ~2 x less CPU per HTTPS request) or "
        "`twisted` (Twisted's `TLSMemoryBIOProtocol` on pyOpenSSL, the fallback).  The "
        "same certificate, versions, ciphers, ALPN and session tickets with either.  See "
        "docs/tls.md, \"The proxy's TLS engine\".", ""))
    tls_ticket_keys: Optional[str] = field(default=None, metadata=_doc(
        "File of the TLS session ticket keys of the `ssl:` listeners (stdlib engine), for "
        "several balancers behind one name: nginx's format, one or more 80-byte keys back "
        "to back (`openssl rand 80 > FILE`), the first one encrypting, all decrypting; "
        "re-read on reload (a damaged file keeps the current keys).  Unset: the keys are "
        "generated and rotated (`tls_ticket_rotation`).  Either way one key set serves "
        "every worker process and survives certificate reloads.  See docs/tls.md.", ""))
    tls_ticket_rotation: float = field(default=3600.0, validator=_non_negative, metadata=_doc(
        "Seconds between two new generated session ticket encryption keys (0: never; "
        "not used with `tls_ticket_keys`).", ""))
    tls_ticket_keys_kept: int = field(default=2, validator=_non_negative, metadata=_doc(
        "Previous generated ticket keys kept for decryption after a rotation: a ticket "
        "resumes for at least `tls_ticket_rotation` x this many seconds (the defaults: "
        "2 hours, OpenSSL's ticket lifetime).", ""))
    tls: NodeTLSConfig = field(factory=NodeTLSConfig, metadata=_doc(
        "TLS towards https/wss nodes (section `[proxy.tls]`).", ""))

    def __attrs_post_init__(self) -> None:
        if not 8192 <= self.ajp_packet_size <= 65536:
            raise ValueError("ajp_packet_size must be between 8192 and 65536")
        if not 100 <= self.response_status_on_no_context <= 599:
            raise ValueError("response_status_on_no_context must be an HTTP status")


@frozen
class AdvertiseConfig:
    """UDP multicast advertisement of the management address."""

    enabled: bool = field(default=False, metadata=_doc(
        "Multicast the MCMP address so nodes find the balancer.", "ServerAdvertise On"))
    group: str = field(default="224.0.1.105:23364", metadata=_doc(
        "Multicast group and port.", "AdvertiseGroup"))
    bind_address: str = field(default="0.0.0.0:23364", metadata=_doc(
        "Local address and port of the sending socket.", "AdvertiseBindAddress"))
    interface: str = field(default="127.0.0.1", metadata=_doc(
        "Address of the interface multicast leaves from.  Loopback by default: set it "
        "to the address on the nodes' network.", "AdvertiseBindAddress (interface part)"))
    ttl: int = field(default=0, validator=_non_negative, metadata=_doc(
        "Multicast TTL (hops): 0 keeps datagrams on this host; httpd uses 10.", ""))
    frequency: str = field(default="10", metadata=_doc(
        "Seconds between datagrams; `5.500` means 5.5 s (httpd syntax).",
        "AdvertiseFrequency"))
    security_key: Optional[str] = field(default=None, metadata=_doc(
        "Shared key for the MD5 digest nodes verify.", "AdvertiseSecurityKey"))
    manager_url: Optional[str] = field(default=None, metadata=_doc(
        "X-Manager-Url value (default `/<server uuid>`).", "AdvertiseManagerUrl"))
    address: Optional[str] = field(default=None, metadata=_doc(
        "Advertised `[scheme://]host:port`; default: the first management listener.",
        "ServerAdvertise On <url>"))


@frozen
class Config:
    """The whole file."""

    manager: ManagerConfig = field(factory=ManagerConfig, metadata=_doc(
        "Section `[manager]`.", ""))
    console: ConsoleConfig = field(factory=ConsoleConfig, metadata=_doc(
        "Section `[console]`.", ""))
    proxy: ProxyConfig = field(factory=ProxyConfig, metadata=_doc(
        "Section `[proxy]`.", ""))
    advertise: AdvertiseConfig = field(factory=AdvertiseConfig, metadata=_doc(
        "Section `[advertise]`.", ""))


# --- loading ---------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None:
            return None
        return _convert(value, non_none[0], source, key)
    if attrs.has(tp):
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"expected a table (section), got {value!r}")
        return _build(tp, value, source, key)
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(source, key, f"expected a list, got {value!r}")
        return tuple(_convert(v, args[0], source, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"expected a table, got {value!r}")
        return {
            _convert(k, args[0], source, key): _convert(v, args[1], source, f"{key}.{k}")
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(source, key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if (isinstance(value, (int, float)) and not isinstance(value, bool)
                and key.endswith("frequency")):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(source, key, f"expected a string, got {value!r}")
        return value
    raise ConfigError(source, key, f"unsupported type {_type_name(tp)}")  # pragma: no cover


def _build(cls: type, table: dict[str, Any], source: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls)}
    kwargs = {}
    for name, value in table.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(source, key, f"unknown key (known keys here: {known})")
        kwargs[name] = _convert(value, hints[name], source, key)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        # Find which key the validator complained about, when attrs tells us.
        bad = ""
        if len(e.args) >= 2 and isinstance(e.args[1], attrs.Attribute):
            bad = e.args[1].name
        msg = str(e.args[0]) if e.args else str(e)
        key = f"{prefix}.{bad}" if prefix and bad else (bad or prefix)
        raise ConfigError(source, key, msg) from None


def parse_config(text: str, source: str = "<config>") -> Config:
    """
    Parse TOML text into a L{Config}.

    @raise ConfigError: on any problem, naming C{source} and the key.
    """
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, "", f"not valid TOML: {e}") from None
    config = _build(Config, table, source, "")
    _cross_checks(config, source)
    return config


def load_config(path: str) -> Config:
    """Read and parse the TOML file at C{path}."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(path, "", f"cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(path, "", "not UTF-8 text") from None
    return parse_config(text, path)


def _cross_checks(config: Config, source: str) -> None:
    from modcluster.advertise.codec import (  # pure helpers
        parse_advertised_url,
        parse_bind_address,
        parse_frequency,
        parse_group,
    )

    adv = config.advertise
    for key, parse, value in (("advertise.bind_address", parse_bind_address, adv.bind_address),
                              ("advertise.address", parse_advertised_url, adv.address)):
        if value is not None:
            try:
                parse(value)
            except ValueError as e:
                raise ConfigError(source, key, str(e)) from None
    try:
        parse_frequency(adv.frequency)
    except ValueError as e:
        raise ConfigError(source, "advertise.frequency", str(e)) from None
    try:
        parse_group(adv.group)
    except ValueError as e:
        raise ConfigError(source, "advertise.group", str(e)) from None
    console_tls = config.console.tls if config.console.tls is not None \
        else config.manager.tls.enabled
    for key, items, tls in (("manager.listen", config.manager.listen,
                             config.manager.tls.enabled),
                            ("console.listen", config.console.listen, console_tls)):
        for item in items:
            if tls and item.split(":", 1)[0] == "ssl":
                raise ConfigError(
                    source, key, f"{item!r}: give a plain endpoint (e.g. 'tcp:...'); TLS "
                                 "is added from the [manager.tls] settings")
    if config.console.tls and not config.manager.tls.enabled:
        raise ConfigError(source, "console.tls", "needs manager.tls.enabled (it uses the "
                                                 "[manager.tls] certificate settings)")
    if not config.manager.listen:
        raise ConfigError(source, "manager.listen", "at least one listener is needed")
    if config.proxy.workers > 1:
        for item in config.proxy.listen:
            if item.split(":", 1)[0] not in WORKER_LISTENER_KINDS:
                raise ConfigError(
                    source, "proxy.listen",
                    f"{item!r}: with proxy.workers > 1 only "
                    f"{', '.join(WORKER_LISTENER_KINDS)} listeners can be shared")


def iter_fields(cls: type = Config, prefix: str = ""):
    """
    Yield C{(dotted key, attrs field, default)} for every leaf setting, for the
    documentation check and C{--print-defaults}.
    """
    for f in attrs.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        hints = typing.get_type_hints(cls)
        if attrs.has(hints[f.name]):
            yield from iter_fields(hints[f.name], key)
        else:
            # attrs' stubs declare Factory a function; it is the class of factory defaults.
            is_factory = isinstance(f.default, attrs.Factory)  # type: ignore[arg-type]
            default = f.default.factory() if is_factory else f.default
            yield key, f, default
