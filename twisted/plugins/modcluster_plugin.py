from twisted.application.service import ServiceMaker

modcluster = ServiceMaker(
    "txmodcluster",
    "modcluster.tap",
    "mod_cluster load balancer (MCMP management, AJP/HTTP/WebSocket proxy)",
    "modcluster",
)
