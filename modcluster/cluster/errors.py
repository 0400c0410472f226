"""
Errors the cluster model raises.  Each carries the MCMP error C{type}
(C{SYNTAX}, C{MEM} or C{GENERAL}) and the exact C{mess} text of mod_manager's
catalogue (reference mcmp.md §5), so the MCMP resource can answer with them as
they are.  A Java node resynchronises after MEM/GENERAL and gives up on a proxy
after SYNTAX, so the model only ever uses SYNTAX for malformed requests.
"""

from __future__ import annotations

__all__ = ["ClusterError", "mem_cant_read_node", "mem_cant_update_node"]


#: longest interpolated value kept in a message (as mcmp/errors.py), then "..."
MAX_VALUE = 128
#: longest message: a Mess header never grows with the request
MAX_MESS = 512


def _clean(value: str) -> str:
    # Messages travel in an HTTP header: never let a value smuggle a line break.
    return "".join(c if c.isprintable() else "?" for c in value)


def _short(value: str) -> str:
    """An interpolated value (route, alias list, context list), cut as mcmp.md says."""
    value = str(value)
    return value if len(value) <= MAX_VALUE else value[:MAX_VALUE] + "..."


class ClusterError(Exception):
    def __init__(self, type: str, mess: str) -> None:
        self.type = type
        mess = _clean(mess)
        self.mess = mess if len(mess) <= MAX_MESS else mess[:MAX_MESS] + "..."
        super().__init__(self.mess)


def mem_cant_read_node(route: str) -> ClusterError:
    return ClusterError("MEM", f'MEM: Can\'t read node with "{_short(route)}" JVMRoute')


def mem_cant_update_node(route: str) -> ClusterError:
    return ClusterError("MEM", f'MEM: Can\'t update or insert node with "{_short(route)}" JVMRoute')


def mem_cant_update_balancer(route: str) -> ClusterError:
    return ClusterError(
        "MEM", f'MEM: Can\'t update or insert balancer for node with "{_short(route)}" JVMRoute')


def mem_same_worker() -> ClusterError:
    return ClusterError("MEM", "MEM: Another for the same worker already exist")


def mem_cant_update_alias(route: str, alias: str) -> ClusterError:
    return ClusterError(
        "MEM", f'MEM: Can\'t update or insert host alias for node with "{_short(route)}" JVMRoute'
               f" ({_short(alias)})")


def mem_cant_update_context(route: str, context: str, alias: str) -> ClusterError:
    return ClusterError(
        "MEM", f'MEM: Can\'t update or insert context for node with "{_short(route)}" JVMRoute'
               f" ({_short(context)} and alias: {_short(alias)})")
