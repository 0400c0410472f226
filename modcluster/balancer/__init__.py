"""
The data plane's routing decisions (pure): which balancer, context and node a
client request goes to, sticky sessions, domains, hot standby and failover
exclusion (balancing.md §2–§5, §8).  See docs/balancing.md.
"""

from modcluster.balancer._election import Decision, Refusal, RoutingPolicy, choose
from modcluster.balancer._request import (
    match_path,
    parse_host,
    path_refusal,
    session_id,
    strip_session,
    valid_host,
)

__all__ = [
    "Decision",
    "Refusal",
    "RoutingPolicy",
    "choose",
    "match_path",
    "parse_host",
    "path_refusal",
    "session_id",
    "strip_session",
    "valid_host",
]
