"""
Interfaces shared between the layers.
"""

from zope.interface import Interface


class INodeProber(Interface):
    """
    Checks whether a node answers (CPING/CPONG for AJP nodes, ``OPTIONS *`` for
    HTTP nodes), as mod_proxy_cluster does at STATUS time and for idle nodes.
    """

    def probe(node):
        """
        Probe C{node} (a L{modcluster.cluster.model.NodeEntry}) within its ping
        timeout.

        @return: a Deferred firing with C{True} (answered), C{False} (did not), or
            C{None} when this kind of node is not probed (e.g. EnableOptions off).
            It never fails.
        """
