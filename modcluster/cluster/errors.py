"""
Errors the cluster model raises.  Each carries the MCMP error C{type}
(C{SYNTAX}, C{MEM} or C{GENERAL}) and the exact C{mess} text of mod_manager's
catalogue (reference mcmp.md §5), so the MCMP resource can answer with them as
they are.  A Java node resynchronises after MEM/GENERAL and gives up on a proxy
after SYNTAX, so the model only ever uses SYNTAX for malformed requests.
"""

from __future__ import annotations

__all__ = ["ClusterError", "mem_cant_read_node", "mem_cant_update_node"]


def _clean(value: str) -> str:
    # Messages travel in an HTTP header: never let a value smuggle a line break.
    return "".join(c if c.isprintable() else "?" for c in value)


class ClusterError(Exception):
    def __init__(self, type: str, mess: str) -> None:
        self.type = type
        self.mess = _clean(mess)
        super().__init__(self.mess)


def mem_cant_read_node(route: str) -> ClusterError:
    return ClusterError("MEM", f'MEM: Can\'t read node with "{route}" JVMRoute')


def mem_cant_update_node(route: str) -> ClusterError:
    return ClusterError("MEM", f'MEM: Can\'t update or insert node with "{route}" JVMRoute')


def mem_cant_update_balancer(route: str) -> ClusterError:
    return ClusterError(
        "MEM", f'MEM: Can\'t update or insert balancer for node with "{route}" JVMRoute')


def mem_same_worker() -> ClusterError:
    return ClusterError("MEM", "MEM: Another for the same worker already exist")


def mem_cant_update_alias(route: str, alias: str) -> ClusterError:
    return ClusterError(
        "MEM", f'MEM: Can\'t update or insert host alias for node with "{route}" JVMRoute'
               f" ({alias})")


def mem_cant_update_context(route: str, context: str, alias: str) -> ClusterError:
    return ClusterError(
        "MEM", f'MEM: Can\'t update or insert context for node with "{route}" JVMRoute'
               f" ({context} and alias: {alias})")
