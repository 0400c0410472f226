"""
The cluster model, pure state: the registry, routing snapshots, the worker
processes' mirror and the read-only views (L{modcluster.cluster.views}) the
console, the JSON API and the metrics share.  The Twisted services over it
(persistence, maintenance) are in L{modcluster.services}.
"""
