# -*- test-case-name: tests.unit.node.test_node_reset -*-
"""
The "reset requests" a node sends after a successful INFO, computed from what
the proxy reported (pure; Java C{ResetRequestSourceImpl}).

The node has one virtual host (its aliases; the first one is the host name
looked up in the report) and a set of contexts, each with the state the node
wants the proxy to hold.  The result is, in order:

 1. C{REMOVE-APP /*} when the reported vhost that contains our host name has
    a different alias set, or when every context reported for it is unknown
    to us; otherwise C{REMOVE-APP} for each reported context we no longer
    have;
 2. C{CONFIG};
 3. for every context whose reported state differs from the wanted one:
    C{ENABLE-APP}, C{DISABLE-APP} or C{STOP-APP}.

Deliberate difference from Java: after a C{REMOVE-APP /*} the proxy has
forgotten every context, so all contexts are re-sent (Java keeps skipping the
ones that the wiped report said were ENABLED, leaving them unregistered until
the next error).
"""

from __future__ import annotations

import enum
from typing import Mapping, Sequence

from modcluster.node.javaparse import JavaVirtualHost
from modcluster.node.wire import (
    DISABLE_APP,
    ENABLE_APP,
    REMOVE_APP,
    STOP_APP,
    MCMPRequest,
    NodeRegistration,
    config_request,
    context_request,
    engine_request,
)

__all__ = ["AppState", "reset_requests", "command_for"]


class AppState(enum.Enum):
    """
    The state a node wants a context to have on the proxies (the names are
    the INFO C{Status} values).
    """

    ENABLED = "ENABLED"
    DISABLED = "DISABLED"
    STOPPED = "STOPPED"


_COMMAND = {
    AppState.ENABLED: ENABLE_APP,
    AppState.DISABLED: DISABLE_APP,
    AppState.STOPPED: STOP_APP,
}


def command_for(state: AppState) -> str:
    """
    The APP command that puts a context into C{state}.
    """
    return _COMMAND[state]


def reset_requests(
    registration: NodeRegistration,
    aliases: Sequence[str],
    contexts: Mapping[str, AppState],
    reported: Mapping[str, Sequence[JavaVirtualHost]],
) -> list[MCMPRequest]:
    """
    The requests that bring a proxy from its C{reported} state (a parsed INFO:
    JVMRoute -> virtual hosts, as L{modcluster.node.javaparse.parse_info_as_java}
    returns) to ours.

    @param aliases: our virtual host's aliases, host name first.
    @param contexts: our contexts (path -> wanted state), in sending order.
    """
    route = registration.jvm_route
    ours = frozenset(aliases)
    host_name = aliases[0] if aliases else ""
    match = next(
        (host for host in reported.get(route, ()) if host_name in host.aliases), None
    )
    remove_all = False
    prefix: list[MCMPRequest] = []
    reported_contexts: Mapping[str, str] = {}
    if match is not None:
        reported_contexts = match.context_map
        if match.aliases != ours:
            remove_all = True
        obsolete = sorted(set(reported_contexts) - set(contexts))
        if obsolete:
            if len(obsolete) == len(reported_contexts):
                remove_all = True
            else:
                # Same alias list as the proxy holds (the sets are equal here
                # unless remove_all is already set).
                listed = sorted(match.aliases)
                prefix = [
                    context_request(REMOVE_APP, route, listed, path) for path in obsolete
                ]
    if remove_all:
        prefix = [engine_request(REMOVE_APP, route)]
        reported_contexts = {}
    requests = prefix + [config_request(registration)]
    for path, wanted in contexts.items():
        if reported_contexts.get(path) != wanted.value:
            requests.append(context_request(_COMMAND[wanted], route, aliases, path))
    return requests
