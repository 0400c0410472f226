from twisted.application.service import ServiceMaker

modcluster_node = ServiceMaker(
    "modcluster-node",
    "modcluster.node.tap",
    "mod_cluster worker agent: registers an HTTP/AJP backend with mod_cluster balancers",
    "modcluster-node",
)
