"""
AJP13 client side: the wire codec (L{modcluster.ajp.packets}), the per-connection
protocol (L{modcluster.ajp.protocol}) and an in-memory fake container for tests
(L{modcluster.ajp.testing}).
"""

__all__: list[str] = []
