"""
The worker-side mod_cluster agent: lets any HTTP, HTTPS or AJP backend join a
mod_cluster balancer (txmodcluster or httpd mod_proxy_cluster) the way the Java
C{ModClusterListener} does.  Public entry point: L{modcluster.node.agent.NodeAgent};
twistd plugin: C{twistd -n modcluster-node --help}.
"""

__all__: list[str] = []
