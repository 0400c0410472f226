"""
AJP13 client side: the wire codec (L{modcluster.ajp.packets}, with the
response decoder in L{modcluster.ajp.response} and the container's side in
L{modcluster.ajp.container}), the per-connection
protocol (L{modcluster.ajp.protocol}) and an in-memory fake container for tests
(L{modcluster.ajp.testing}).  The forwarder that pools these connections for
the data plane is L{modcluster.proxy.ajp}.
"""

__all__: list[str] = []
