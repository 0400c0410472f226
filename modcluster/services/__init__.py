"""
Twisted services over the cluster model (L{modcluster.cluster}, pure state):
saving and restoring the registry (L{modcluster.services.persistence}) and its
periodic upkeep and node recovery probes (L{modcluster.services.maintenance}).
They are started and stopped by the top service
(L{modcluster.lifecycle.BalancerService}, assembled in L{modcluster.tap}).
"""

__all__: list[str] = []
