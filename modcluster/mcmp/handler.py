"""
The MCMP controller: decodes a request with L{modcluster.mcmp.decode}, applies it
to the registry (probing nodes where mod_proxy_cluster does), and produces the
reply.  Transport-free, so the twisted.web resource stays thin and the whole
protocol can be tested without sockets.
"""

from __future__ import annotations

from typing import Optional, Union

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from modcluster.cluster.errors import ClusterError
from modcluster.cluster.model import (
    BalancerSettings,
    NodeEntry,
    NodeRuntime,
    NodeSettings,
)
from modcluster.mcmp import decode
from modcluster.mcmp import errors
from modcluster.mcmp import names
from modcluster.mcmp import replies

__all__ = ["MCMPHandler", "Reply"]

TEXT = (b"Content-Type", b"text/plain")
XML = (b"Content-Type", b"text/xml")
#: Methods that act on one node's registration (identity pinning applies).
_NODE_METHODS = {"CONFIG", "ENABLE-APP", "DISABLE-APP", "STOP-APP", "REMOVE-APP", "STATUS"}


@frozen
class Reply:
    status: int
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    #: close the connection after the reply (httpd does after an error)
    close: bool = False


class _NullStats:
    def record(self, method: str, outcome: str) -> None:
        pass


class MCMPHandler:
    """
    @param registry: the L{modcluster.cluster.registry.Registry}.
    @param prober: an L{modcluster.interfaces.INodeProber}.
    @param clock: provides C{seconds()}.
    @param identity_policy: optional; C{allowed(identities, route) -> bool} and
        C{describe(identities) -> str} (mutual TLS identity pinning).
    @param stats: optional; C{record(method, outcome)} per message (metrics).
    @param probe_reuse: a node that answered a probe less than this many seconds
        ago is not probed again for a STATUS (0: probe every time, as httpd).
    @param own_addresses: optional; C{own_listener(host, port)} gives the
        balancer's listener a node address would reach and its kind, or
        C{None} (L{modcluster.loops.ProxyAddresses}): a CONFIG for such a node
        is refused (a proxy listener: a forwarding loop; the management or
        console listener: not a node).
    """

    log = Logger()

    def __init__(self, registry, prober, clock, *, default_balancer: str = "mycluster",
                 max_message_size: int = 65536, release: str = "mod_cluster/1.3.22.Final",
                 ws_tunnel: bool = False, identity_policy=None, stats=None,
                 field_limits: Optional["decode.FieldLimits"] = None,
                 probe_reuse: float = 1.0, own_addresses=None) -> None:
        self._registry = registry
        self._prober = prober
        self._clock = clock
        self._default_balancer = default_balancer.lower()
        self.max_message_size = max_message_size
        self._release = release
        self._ws_tunnel = ws_tunnel
        self._policy = identity_policy
        self._stats = stats or _NullStats()
        self._limits = field_limits or decode.FieldLimits()
        #: seconds a successful probe of a node stands in for the next one
        self.probe_reuse = probe_reuse
        self._probing: dict[tuple, list[Deferred]] = {}
        #: see C{own_addresses} above
        self.own_addresses = own_addresses
        #: (Host, Port) of nodes named by a host name that the data plane
        #: found reaching a listener of ours (L{forwarding_loop_found}) ->
        #: (the listener, its kind): their CONFIG is refused as a literal's
        #: is, until the next reload (a name may resolve elsewhere later;
        #: L{forget_named_loops})
        self.named_loops: dict[tuple[str, int], tuple[str, str]] = {}
        # Stable for the life of the process, fits the 32-bit int 1.3.x prints.
        self.server_id = int(clock.seconds()) & 0x7FFFFFFF

    # -- entry point -----------------------------------------------------------

    def handle(self, method: str, uri: bytes, body: bytes, accept: Optional[bytes] = None,
               identities: Optional[frozenset] = None, peer: str = "?"
               ) -> Union[Reply, Deferred]:
        """
        Handle one MCMP request.  Returns a L{Reply}, or a Deferred firing with one
        (STATUS and PING wait for a node probe).  Never raises.
        """
        method = method.upper()
        try:
            result = self._dispatch(method, uri, body, accept, identities)
        except (errors.MCMPError, ClusterError) as e:
            return self._error(method, e, peer, identities)
        except Exception:
            self.log.failure("MCMP {method} from {peer} failed", method=method, peer=peer)
            return self._error(method, errors.MCMPError(
                "GENERAL", "GENERAL: internal error, see the balancer log"), peer)
        if isinstance(result, Deferred):
            def failed(f):
                self.log.failure("MCMP {method} from {peer} failed", f, method=method,
                                 peer=peer)
                return self._error(method, errors.MCMPError(
                    "GENERAL", "GENERAL: internal error, see the balancer log"), peer)

            return result.addCallbacks(self._ok(method), failed)
        return self._ok(method)(result)

    def _ok(self, method: str):
        def record(reply: Reply) -> Reply:
            self._stats.record(method, "ok")
            return reply

        return record

    def _error(self, method: str, err, peer: str, identities=None) -> Reply:
        self._stats.record(method, err.type)
        identity = ", ".join(sorted(identities)) if identities else "-"
        self.log.warn("MCMP {method} from {peer} (certificate identity {identity}) refused: "
                      "{mess}", method=method, peer=peer, identity=identity,
                      mess=err.mess, mcmp_error=err.type)
        record = getattr(self._registry, "record", None)
        if record is not None:
            record("mcmp.refused", "", log=False, method=method, peer=peer,
                   identity=identity, type=err.type, mess=err.mess)
        headers = tuple((k.encode("latin-1") if isinstance(k, str) else k,
                         v.encode("latin-1", "replace") if isinstance(v, str) else v)
                        for k, v in errors.error_headers(err))
        return Reply(500, headers + (TEXT,), b"", close=True)

    def _dispatch(self, method, uri, body, accept, identities):
        if method not in names.METHODS:
            raise errors.command_not_supported()
        xml = names.wants_xml(accept)
        # INFO, DUMP and VERSION take no parameters: their bodies are ignored.
        if method == "INFO":
            return Reply(200, (XML if xml else TEXT,), self.info(xml))
        if method == "DUMP":
            return Reply(200, (XML if xml else TEXT,), self.dump(xml))
        if method == "VERSION":
            return Reply(200, (XML if xml else TEXT,), replies.format_version(self._release, xml))
        params = decode.parse_body(body, self.max_message_size)
        wildcard = names.is_wildcard(uri)
        if method == "CONFIG":
            return self._config(params, identities)
        if method in ("ENABLE-APP", "DISABLE-APP", "STOP-APP", "REMOVE-APP"):
            return self._app(method, params, wildcard, identities)
        if method == "STATUS":
            return self._status(params, identities)
        return self._ping(params)

    def _check_identity(self, identities, route: str) -> None:
        if self._policy is None or identities is None:
            return
        if not self._policy.allowed(identities, route):
            # SYNTAX: the node must not keep retrying with a certificate that
            # will never be allowed; an operator has to look.
            raise errors.MCMPError("SYNTAX", "SYNTAX: " + self._policy.refusal(identities, route))

    # -- commands ----------------------------------------------------------------

    def _config(self, params, identities) -> Reply:
        req = decode.decode_config(params, self._default_balancer, self._limits)
        self._check_identity(identities, req.jvm_route)
        for warning in req.warnings:
            self.log.info("CONFIG for {route}: {warning}", route=req.jvm_route, warning=warning)
        if self.own_addresses is not None:
            own = self.own_addresses.own_listener(req.host, int(req.port))
            if own is None and self.named_loops:
                own = self.named_loops.get((req.host, int(req.port)))
            if own is not None:
                raise errors.forwarding_loop(req.jvm_route, *own)
        node_type = self.node_type(req.type)
        balancer = BalancerSettings(
            name=req.balancer,
            sticky_session=req.sticky_session,
            sticky_cookie=req.sticky_session_cookie,
            sticky_path=req.sticky_session_path,
            sticky_remove=req.sticky_session_remove,
            sticky_force=req.sticky_session_force,
            wait_worker=float(req.wait_worker),
            max_attempts=req.max_attempts,
        )
        settings = NodeSettings(
            route=req.jvm_route,
            balancer=req.balancer,
            domain=req.domain,
            host=req.host,
            port=int(req.port),
            type=node_type,
            reversed=req.reversed,
            flushpackets=req.flushpackets,
            flushwait_ms=req.flushwait_ms,
            ping=req.ping_s,
            smax=req.smax,
            ttl=req.ttl_s,
            timeout=req.timeout_s,
        )
        self._registry.config(balancer, settings, req.groups)
        return Reply(200, (TEXT,))

    def node_type(self, node_type: str) -> str:
        """The type a node of C{Type=node_type} is registered with (EnableWsTunnel)."""
        if self._ws_tunnel and node_type in ("http", "https"):
            return "ws" if node_type == "http" else "wss"
        return node_type

    def restore_state(self, state) -> int:
        """
        Restore a saved registry state through the MCMP checks (see
        L{modcluster.mcmp.replay}).  Returns the number of nodes.

        @raise modcluster.mcmp.replay.StateError: the state is not usable; the
            registry is left empty.
        """
        from modcluster.mcmp.replay import replay_state

        return replay_state(self, self._registry, state)

    def remove_looping_nodes(self) -> list[str]:
        """
        Remove every live node whose Host/Port reach one of the proxy
        listeners (C{own_addresses}), as CONFIG refuses them: nodes restored
        from a saved state or taken over in a handover were registered before
        the listeners were up, and a reload may find the host's addresses
        changed.  Each is logged (node, address, listener) and gets a
        C{node.removing} event; its next CONFIG is refused.  Returns the
        routes removed.
        """
        if self.own_addresses is None:
            return []
        removed = []
        for node in self._registry.nodes():
            if node.rt.removed:
                continue
            s = node.settings
            own = self.own_addresses.own_listener(s.host, s.port)
            if own is None:
                continue
            listener, kind = own
            address = f"{s.host}:{s.port}"
            if kind == "proxy":
                self.log.warn("node {route} at {address} reaches {listener}, a proxy listener "
                              "of this balancer (forwarding loop): removed; its next CONFIG "
                              "is refused", route=s.route, address=address, listener=listener)
                why = f"forwarding loop: {address} reaches proxy listener {listener}"
            else:
                self.log.warn("node {route} at {address} reaches {listener}, a {kind} listener "
                              "of this balancer, not a node: removed; its next CONFIG is "
                              "refused", route=s.route, address=address, listener=listener,
                              kind=kind)
                why = f"not a node: {address} reaches {kind} listener {listener}"
            self._registry.remove_node(s.route, why)
            removed.append(s.route)
        return removed

    #: (Host, Port) pairs remembered by L{forwarding_loop_found}, at most
    NAMED_LOOPS = 1024

    def forwarding_loop_found(self, route: str, address: str, peer: str,
                              listener: str, kind: str = "proxy") -> None:
        """
        The data plane connected to node C{route} (C{address}: its
        C{Host:Port}, a host name) and reached C{peer}, the listener
        C{listener} of this balancer (L{modcluster.loops.LoopGuard}; nothing
        was sent), of C{kind} C{"proxy"} (a forwarding loop), C{"management"}
        or C{"console"} (not a node): remove the node as
        L{remove_looping_nodes} does, with a warning and a C{node.removing}
        event, and refuse its C{Host:Port} at CONFIG until the next reload.
        Several connections finding it remove it once.
        """
        node = self._registry.node(route)
        if node is None or node.rt.removed:
            return
        s = node.settings
        if f"{s.host}:{s.port}" != address:
            return  # re-registered elsewhere since that connection was made
        if len(self.named_loops) >= self.NAMED_LOOPS:
            self.named_loops.clear()
        self.named_loops[(s.host, s.port)] = (listener, kind)
        if kind == "proxy":
            self.log.warn("node {route} at {address} ({peer}) reaches {listener}, a proxy "
                          "listener of this balancer (forwarding loop): removed; its next "
                          "CONFIG is refused", route=route, address=address, peer=peer,
                          listener=listener, kind=kind)
            why = f"forwarding loop: {address} ({peer}) reaches proxy listener {listener}"
        else:
            self.log.warn("node {route} at {address} ({peer}) reaches {listener}, a {kind} "
                          "listener of this balancer, not a node: removed; its next CONFIG "
                          "is refused", route=route, address=address, peer=peer,
                          listener=listener, kind=kind)
            why = f"not a node: {address} ({peer}) reaches {kind} listener {listener}"
        self._registry.remove_node(route, why)

    def forget_named_loops(self) -> None:
        """Reload: names found looping may be registered again (and are checked again)."""
        self.named_loops.clear()

    def _app(self, method, params, wildcard, identities) -> Reply:
        req = decode.decode_app(params, wildcard, self._limits)
        self._check_identity(identities, req.jvm_route)
        result = self._registry.app(method, req.jvm_route, req.aliases, req.contexts,
                                    wildcard)
        if result.requests is None:
            return Reply(200, (TEXT,))
        body = replies.format_stop_app_rsp(result.route, result.alias,
                                        ",".join(result.contexts), result.requests)
        return Reply(200, (TEXT,), body)

    def _status(self, params, identities):
        req = decode.decode_status(params, self._limits)
        self._check_identity(identities, req.jvm_route)
        node = self._registry.status_node(req.jvm_route)
        route = req.jvm_route

        def reply(ok: bool) -> Reply:
            return Reply(200, (TEXT,), replies.format_status_rsp(route, ok, self.server_id))

        if node.rt.removed:
            return reply(False)
        if req.load == -1:
            return reply(self._registry.apply_status(route, -1, None))
        if self._recently_alive(node.rt):
            # Probed (or answered) a moment ago: no new connection for this report.
            return reply(self._registry.apply_status(route, req.load, True))
        d = self._probe(NodeEntry(node.id, node.settings, node.rt))
        d.addCallback(lambda ok: reply(self._registry.apply_status(route, req.load, ok)))
        return d

    def _recently_alive(self, rt) -> bool:
        return (self.probe_reuse > 0 and not rt.in_error
                and self._clock.seconds() - rt.last_alive < self.probe_reuse)

    def _ping(self, params):
        req = decode.decode_ping(params, self._limits)
        if req.jvm_route is not None:
            node = self._registry.status_node(req.jvm_route)
            route = req.jvm_route
            if node.rt.removed:
                return Reply(200, (TEXT,), replies.format_ping_rsp(route, False, self.server_id))
            d = self._probe(NodeEntry(node.id, node.settings, node.rt))

            def done(ok):
                state = self._registry.apply_status(route, -2, ok)
                return Reply(200, (TEXT,), replies.format_ping_rsp(route, state, self.server_id))

            return d.addCallback(done)
        if req.scheme is None:
            return Reply(200, (TEXT,), replies.format_ping_rsp(None, True, self.server_id))
        port = int(req.port)
        # Only addresses of registered nodes are probed (as 2.x-HEAD, which pings
        # through an existing worker): the MCMP port must not let any client make
        # the balancer connect anywhere.
        known = {(n.settings.host.lower(), n.settings.port) for n in self._registry.nodes()}
        if (req.host.lower(), port) not in known:
            return Reply(200, (TEXT,), replies.format_ping_rsp(None, False, self.server_id))
        adhoc = NodeEntry(0, NodeSettings(route="", host=req.host, port=port,
                                          type=req.scheme), NodeRuntime())
        d = self._probe(adhoc)
        d.addCallback(lambda ok: Reply(200, (TEXT,), replies.format_ping_rsp(
            None, ok is not False, self.server_id)))
        return d

    def _probe(self, entry: NodeEntry) -> Deferred:
        """
        Probe a node; concurrent probes of the same node (several STATUS/PING in
        flight) share one connection attempt.
        """
        key = (entry.id, entry.settings.host, entry.settings.port, entry.settings.type)
        waiters = self._probing.get(key)
        if waiters is not None:
            d: Deferred[bool] = Deferred()
            waiters.append(d)
            return d
        waiters = self._probing[key] = []
        try:
            d = self._prober.probe(entry)
        except Exception:
            self.log.failure("probe of {route} raised", route=entry.route)
            d = succeed(False)

        def broken(f):
            self.log.failure("probe of {route} failed", f, route=entry.route)
            return False

        def done(ok):
            del self._probing[key]
            if ok:
                entry.rt.last_alive = self._clock.seconds()
            for w in waiters:
                w.callback(ok)
            return ok

        return d.addErrback(broken).addCallback(done)

    # -- INFO / DUMP -------------------------------------------------------------

    def _records(
        self,
    ) -> tuple[list[replies.InfoNode], list[replies.InfoVhost], list[replies.InfoContext]]:
        nodes: list[replies.InfoNode] = []
        vhosts: list[replies.InfoVhost] = []
        contexts: list[replies.InfoContext] = []
        for node in self._registry.nodes():
            s, rt = node.settings, node.rt
            nodes.append(replies.InfoNode(
                id=node.id, name=s.route, balancer=s.balancer, domain=s.domain,
                host=s.host, port=str(s.port), type=s.type, flushpackets=s.flushpackets,
                flushwait_ms=s.flushwait_ms, ping_s=int(s.ping), smax=s.smax,
                ttl_s=int(s.ttl), timeout_s=int(s.timeout), elected=rt.elected,
                read=rt.read, transferred=rt.transferred, connected=rt.busy,
                load=rt.lbfactor))
            for vhost in sorted(node.vhosts.values(), key=lambda v: v.id):
                for alias, alias_id in vhost.aliases.items():
                    vhosts.append(replies.InfoVhost(node_id=node.id, vhost_id=vhost.id,
                                                 alias_id=alias_id, alias=alias))
                for ctx in sorted(vhost.contexts.values(), key=lambda c: c.id):
                    contexts.append(replies.InfoContext(
                        node_id=node.id, vhost_id=vhost.id, context_id=ctx.id,
                        path=ctx.path, status=ctx.state.name))
        return nodes, vhosts, contexts

    def info(self, xml: bool = False) -> bytes:
        return replies.format_info(*self._records(), xml=xml)

    def dump(self, xml: bool = False) -> bytes:
        nodes, vhosts, contexts = self._records()
        balancers = [
            replies.DumpBalancer(id=i, name=b.name, sticky=b.sticky_session,
                              cookie=b.sticky_cookie, path=b.sticky_path,
                              remove=b.sticky_remove, force=b.sticky_force,
                              timeout_s=int(b.wait_worker), max_attempts=b.max_attempts)
            for i, b in enumerate(self._registry.balancers.values(), start=1)
        ]
        return replies.format_dump(balancers, nodes, vhosts, contexts, xml=xml)
