"""
Restoring a saved registry state (PersistSlots) through the MCMP checks.

A state file is never trusted more than a node: each saved node is replayed as
the MCMP messages that would have built it — a CONFIG carrying its settings and
its balancer's, one ENABLE-APP / DISABLE-APP / STOP-APP per context with its
virtual host's aliases, its load checked as a STATUS C{Load} — through the same
decoders (L{modcluster.mcmp.decode}) and the same registry methods (quotas) the
MCMP handler uses.  Nothing of the file is used as a size: saved ids are only
checked (positive, unique) and the registry numbers the replayed records itself,
in the saved order.  The replayed registry must then describe exactly the saved
state (anything MCMP would have normalised, such as an upper-case alias, means
the file was not written by us).  Any problem raises L{StateError} and leaves
the registry empty.
"""

from __future__ import annotations

from urllib.parse import quote_plus

import attrs

from modcluster.cluster.errors import ClusterError
from modcluster.cluster.model import BalancerSettings, NodeSettings
from modcluster.mcmp import decode
from modcluster.mcmp import errors

__all__ = ["StateError", "replay_state"]

_NODE_KEYS = {"id", "settings", "load", "in_error", "vhosts"}
_VHOST_KEYS = {"id", "aliases", "contexts"}
_COMMANDS = {"ENABLED": "ENABLE-APP", "DISABLED": "DISABLE-APP", "STOPPED": "STOP-APP"}


class StateError(ValueError):
    """A saved state that cannot be restored; the message says why."""


def _int(value, what: str) -> int:
    if type(value) is not int:
        raise StateError(f"{what}: expected an integer, got {_show(value)}")
    return value


#: largest id MCMP ever prints (a C int); ids are numbered from 1 and reused
MAX_ID = 2**31 - 1


def _id(value, what: str, seen: set) -> None:
    if not 1 <= _int(value, what) <= MAX_ID:
        raise StateError(f"{what}: {_show(value)} is not an id (1..{MAX_ID})")
    if value in seen:
        raise StateError(f"{what}: duplicate id {value}")
    seen.add(value)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _list(value, what: str) -> list:
    if type(value) is not list:
        raise StateError(f"{what}: expected a list, got {type(value).__name__}")
    return value


def _dict(value, what: str, keys=None, optional=()) -> dict:
    if type(value) is not dict:
        raise StateError(f"{what}: expected an object, got {type(value).__name__}")
    if keys is not None:
        missing = keys - set(value) - set(optional)
        extra = set(value) - keys
        if missing or extra:
            raise StateError(f"{what}: fields {sorted(missing)} missing, "
                             f"{sorted(map(str, extra))} unknown")
    return value


def _ms(seconds: float, what: str) -> str:
    """Seconds as the integer milliseconds CONFIG carries (exactly, or refused)."""
    ms = round(seconds * 1000)
    if ms / 1000 != seconds:
        raise StateError(f"{what}: {seconds!r} s is not a whole number of milliseconds")
    return f"{ms}ms"


def _yes(flag: bool) -> str:
    return "Yes" if flag else "No"


def _body(pairs) -> bytes:
    """Form-encoded like the Java listener (what L{decode.parse_body} decodes)."""
    return "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in pairs).encode("ascii")


def _config_pairs(s: NodeSettings, b: BalancerSettings) -> list[tuple[str, str]]:
    pairs = [("JVMRoute", s.route), ("Balancer", s.balancer)]
    if s.domain:
        pairs.append(("Domain", s.domain))
    wait = b.wait_worker
    if wait != int(wait):
        raise StateError(f"balancer {b.name!r}: wait_worker {wait!r} is not whole seconds")
    pairs += [
        ("Host", s.host), ("Port", str(s.port)), ("Type", s.type),
        ("Reversed", _yes(s.reversed)), ("flushpackets", s.flushpackets),
        ("flushwait", str(s.flushwait_ms)), ("ping", _ms(s.ping, "ping")),
        ("smax", str(s.smax)), ("ttl", _ms(s.ttl, "ttl")),
        ("Timeout", _ms(s.timeout, "timeout")),
        ("StickySession", _yes(b.sticky_session)),
        ("StickySessionCookie", b.sticky_cookie), ("StickySessionPath", b.sticky_path),
        ("StickySessionRemove", _yes(b.sticky_remove)),
        ("StickySessionForce", _yes(b.sticky_force)),
        ("WaitWorker", str(int(wait))), ("Maxattempts", str(b.max_attempts)),
    ]
    return pairs


def _send(handler, method: str, pairs) -> None:
    body = _body(pairs)
    # Every field is checked as MCMP checks it; the message-size limit is a
    # property of one request, not of a saved node, so it does not apply.
    params = decode.parse_body(body, len(body))
    if method == "CONFIG":
        handler._config(params, None)
    elif method == "STATUS":
        decode.decode_status(params, handler._limits)
    else:
        handler._app(method, params, False, None)


def _normal(state: dict, balancers_used) -> tuple:
    """A state without its ids, for comparing the saved and the replayed one."""
    nodes = tuple(
        (tuple(sorted(n["settings"].items())), n["load"], n.get("in_error", False),
         tuple((tuple(a for a, _ in v["aliases"]), tuple((p, st) for _, p, st in v["contexts"]))
               for v in n["vhosts"]))
        for n in state["nodes"])
    balancers = {b["name"]: tuple(sorted(b.items())) for b in state["balancers"]
                 if b["name"] in balancers_used}
    return nodes, balancers


def replay_state(handler, registry, state) -> int:
    """
    Restore C{state} (a L{Registry.to_state} dict read from a file) into the
    empty C{registry} through C{handler}'s MCMP checks.

    @param handler: the L{modcluster.mcmp.handler.MCMPHandler} serving MCMP.
    @return: the number of nodes restored.
    @raise StateError: the state is not one MCMP could have built (reason in the
        message); the registry is left empty.
    """
    if registry.nodes():
        raise ValueError("a saved state is only restored into an empty registry")
    try:
        with registry.restoring():
            count = _replay(handler, registry, state)
    except StateError:
        registry.clear()
        raise
    except (errors.MCMPError, ClusterError) as e:
        registry.clear()
        raise StateError(f"refused as MCMP would refuse it: {e.mess}") from None
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError,
            RecursionError) as e:
        registry.clear()
        raise StateError(f"{type(e).__name__}: {_show(str(e))}") from None
    return count


def _replay(handler, registry, state) -> int:
    state = _dict(state, "state", {"format", "balancers", "nodes"})
    if state["format"] != 1:
        raise StateError(f"unknown state format {_show(state['format'])}")
    balancers: dict[str, BalancerSettings] = {}
    for i, b in enumerate(_list(state["balancers"], "balancers")):
        balancer = BalancerSettings(**_dict(b, f"balancers[{i}]"))
        if balancer.name in balancers:
            raise StateError(f"balancers[{i}]: duplicate balancer {balancer.name!r}")
        balancers[balancer.name] = balancer

    nodes = _list(state["nodes"], "nodes")
    node_ids: set = set()
    alias_ids: set = set()
    context_ids: set = set()
    routes: set = set()
    checked = []
    for i, n in enumerate(nodes):
        what = f"nodes[{i}]"
        _dict(n, what, _NODE_KEYS, optional=("in_error",))
        _id(n["id"], f"{what}.id", node_ids)
        settings = NodeSettings(**_dict(n["settings"], f"{what}.settings"))
        if settings.route in routes:
            raise StateError(f"{what}: duplicate JVMRoute {settings.route!r}")
        routes.add(settings.route)
        if settings.balancer not in balancers:
            raise StateError(f"{what}: balancer {settings.balancer!r} is not saved")
        load = _int(n["load"], f"{what}.load")
        in_error = n.get("in_error", False)
        if type(in_error) is not bool:
            raise StateError(f"{what}.in_error: expected true or false")
        vhost_ids: set = set()
        vhosts = []
        for j, v in enumerate(_list(n["vhosts"], f"{what}.vhosts")):
            vw = f"{what}.vhosts[{j}]"
            _dict(v, vw, _VHOST_KEYS)
            _id(v["id"], f"{vw}.id", vhost_ids)
            aliases = []
            for k, pair in enumerate(_list(v["aliases"], f"{vw}.aliases")):
                alias, alias_id = _list(pair, f"{vw}.aliases[{k}]")
                _id(alias_id, f"{vw}.aliases[{k}] id", alias_ids)
                aliases.append(alias)
            contexts = []
            for k, triple in enumerate(_list(v["contexts"], f"{vw}.contexts")):
                ctx_id, path, st = _list(triple, f"{vw}.contexts[{k}]")
                _id(ctx_id, f"{vw}.contexts[{k}] id", context_ids)
                if st not in _COMMANDS:
                    raise StateError(f"{vw}.contexts[{k}]: unknown state {_show(st)}")
                contexts.append((path, st))
            if not aliases or not contexts:
                raise StateError(f"{vw}: a virtual host needs aliases and contexts")
            vhosts.append((aliases, contexts))
        checked.append((n["id"], settings, load, in_error, vhosts))

    # Replay in the saved id order, so ids numbered afresh keep that order.
    for _, settings, load, in_error, vhosts in sorted(checked, key=lambda c: c[0]):
        route = settings.route
        _send(handler, "CONFIG", _config_pairs(settings, balancers[settings.balancer]))
        _send(handler, "STATUS", [("JVMRoute", route), ("Load", str(load))])
        for aliases, contexts in vhosts:
            alias_list = ",".join(a if isinstance(a, str) else _show(a) for a in aliases)
            for path, st in contexts:
                if not isinstance(path, str):
                    raise StateError(f"context of {route!r}: not a path: {_show(path)}")
                _send(handler, _COMMANDS[st],
                      [("JVMRoute", route), ("Alias", alias_list), ("Context", path)])
        registry.mark_restored(route, load, in_error)

    # The replayed registry must say exactly what the file says.
    used = {s.balancer for _, s, _, _, _ in checked}
    expected = []
    for n in sorted(nodes, key=lambda n: n["id"]):
        saved_settings = dict(n["settings"])
        # EnableWsTunnel (now on) registers http/https nodes as ws/wss, as for a CONFIG.
        saved_settings["type"] = handler.node_type(saved_settings["type"])
        expected.append({**n, "settings": saved_settings})
    saved = _normal({"balancers": [attrs.asdict(b) for b in balancers.values()],
                     "nodes": expected}, used)
    got = _normal(registry.to_state(), used)
    if saved != got:
        raise StateError("the saved nodes are not what MCMP would have registered "
                         "(values MCMP normalises, or records it would merge)")
    return len(checked)
