"""
The mod_cluster-manager web console: a twisted.web resource tree
(L{modcluster.console.resources.ConsoleResource}) rendered with
twisted.web.template (L{modcluster.console.elements}), showing the cluster
registry and running enable/disable/stop commands on it.
"""

__all__: list[str] = []
