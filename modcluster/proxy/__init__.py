"""
The data plane: the client-facing HTTP front (L{front}), the HTTP/HTTPS/WS
forwarder with its node pools (L{http}) and the forwarder contract
(L{interfaces}).  See docs/data-plane.md.
"""

from modcluster.proxy.front import ClientProtocol, ProxyFactory
from modcluster.proxy.http import HttpForwarder, probe_http
from modcluster.proxy.interfaces import ClientInfo, ForwardError, IExchange, IForwarder, IUpstream

__all__ = [
    "ClientInfo",
    "ClientProtocol",
    "ForwardError",
    "HttpForwarder",
    "IExchange",
    "IForwarder",
    "IUpstream",
    "ProxyFactory",
    "probe_http",
]
