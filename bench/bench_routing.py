"""
Micro benchmark of modcluster.balancer.choose() (not a test).

    .venv/bin/python bench/bench_routing.py [--seconds 1.0]

Prints the cost per routed request in microseconds for:
  - 2 nodes sharing one context (the common small cluster), without and with
    a sticky session cookie;
  - 1 000 nodes x 10 contexts, every node with its own 10 contexts (the election
    sees one candidate);
  - 1 000 nodes all sharing the same 10 contexts (the election scans 1 000
    candidates), without and with a sticky cookie.
Tables are built through the Registry, as in production.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from modcluster.balancer import Decision, RoutingPolicy, choose  # noqa: E402
from modcluster.cluster.model import BalancerSettings, NodeSettings  # noqa: E402
from modcluster.cluster.registry import Limits, Registry  # noqa: E402


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def seconds(self) -> float:
        return self.now


def build(nodes: int, contexts_of) -> tuple[Registry, _Clock]:
    clock = _Clock()
    reg = Registry(clock, Limits(max_nodes=nodes + 10, max_contexts=nodes * 10 + 10))
    balancer = BalancerSettings("mycluster", sticky_force=False)
    for i in range(nodes):
        route = f"node{i}"
        reg.config(balancer, NodeSettings(route=route, host="127.0.0.1", port=10000 + i))
        reg.app("ENABLE-APP", route, ["localhost"], list(contexts_of(i)))
        reg.apply_status(route, 1 + i % 100, True)
    _ = reg.table  # build the snapshot once
    return reg, clock


def measure(label: str, reg: Registry, clock: _Clock, requests: list[tuple[str, str | None]],
            seconds: float) -> float:
    table = reg.table
    policy = RoutingPolicy()
    now = clock.seconds()
    # Sanity: every request is routed.
    for path, cookie in requests:
        assert isinstance(choose(table, None, path, cookie, now, policy), Decision), path
    n = len(requests)
    loops = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        for path, cookie in requests:
            choose(table, None, path, cookie, now, policy)
        loops += 1
        t1 = time.perf_counter()
        if t1 >= deadline:
            break
    us = (t1 - t0) / (loops * n) * 1e6
    print(f"{label:<62} {us:9.2f} us/request")
    return us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per case")
    args = parser.parse_args()
    s = args.seconds
    print(f"python {sys.version.split()[0]}")

    reg, clock = build(2, lambda i: ["/app"])
    measure("2 nodes, shared /app, no session", reg, clock,
            [("/app/index.jsp", None), ("/app/img/logo.png", "theme=dark")], s)
    measure("2 nodes, shared /app, sticky cookie", reg, clock,
            [("/app/index.jsp", "theme=dark; JSESSIONID=ABCDEF0123456789.node1")], s)
    measure("2 nodes, shared /app, sticky path parameter", reg, clock,
            [("/app/index.jsp;jsessionid=ABCDEF0123456789.node0", None)], s)

    reg, clock = build(1000, lambda i: [f"/app{i}-{j}" for j in range(10)])
    reqs = [(f"/app{i}-{i % 10}/page/x", None) for i in range(0, 1000, 7)]
    measure("1000 nodes x 10 own contexts, no session", reg, clock, reqs, s)
    reqs = [(f"/app{i}-{i % 10}/page/x", f"JSESSIONID=ABC.node{i}") for i in range(0, 1000, 7)]
    measure("1000 nodes x 10 own contexts, sticky cookie", reg, clock, reqs, s)

    reg, clock = build(1000, lambda i: [f"/ctx{j}" for j in range(10)])
    reqs = [(f"/ctx{j}/page/x", None) for j in range(10)]
    measure("1000 nodes sharing 10 contexts, no session", reg, clock, reqs, s)
    reqs = [(f"/ctx{j}/page/x", f"JSESSIONID=ABC.node{(j * 97) % 1000}") for j in range(10)]
    measure("1000 nodes sharing 10 contexts, sticky cookie", reg, clock, reqs, s)


if __name__ == "__main__":
    main()
