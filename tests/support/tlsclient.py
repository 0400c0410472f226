"""
An C{Agent} TLS policy for tests that talk HTTPS to a TLS listener: one
L{modcluster.tls.client_context_factory} per host name (CA, optional client
certificate and key), so the server certificate is verified as the balancer
verifies its nodes'.
"""

from __future__ import annotations

from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from modcluster.tls import client_context_factory


@implementer(IPolicyForHTTPS)
class ClientTLSPolicy:
    def __init__(self, ca, cert=None, key=None) -> None:
        self._args = (ca, cert, key)
        self._creators: dict = {}

    def creatorForNetloc(self, hostname: bytes, port: int):
        host = hostname.decode("ascii")
        if host not in self._creators:
            self._creators[host] = client_context_factory(host, *self._args)
        return self._creators[host]
