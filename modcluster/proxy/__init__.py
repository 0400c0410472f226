"""
The data plane: the client-facing HTTP front (L{front}), the HTTP/HTTPS/WS
forwarder (L{http}) and the AJP forwarder (L{ajp}) over the shared node pools
(L{pool}), and the forwarder contract (L{interfaces}).  See docs/data-plane.md.
"""

from modcluster.proxy.client import ClientProtocol
from modcluster.proxy.front import ProxyFactory
from modcluster.proxy.http import HttpForwarder
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
]
