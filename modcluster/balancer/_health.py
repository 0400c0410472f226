"""
Passive health (outlier ejection), slow start and the retry budget
(docs/balancing.md, "Beyond mod_proxy_cluster").  Pure: runtime records,
the routing table and the time in, decisions out; no I/O.

The process that forwards requests observes the failures: it counts a
node's consecutive response-level failures on the node's runtime record
(C{rt.fails}) and, at the threshold, ejects the node for a while
(C{rt.ejected_until}).  The election skips ejected nodes unless every usable
node of the context is ejected (panic: route anyway).
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Optional, Union

__all__ = ["record_failure", "record_success", "may_eject", "ramp", "RetryBudget",
           "resilience_settings"]


def resilience_settings(config) -> dict:
    """The L{RoutingPolicy} keyword arguments from the C{[proxy]} settings."""
    return dict(
        smooth=config.smooth_balancing,
        slow_start=config.slow_start if config.smooth_balancing else 0.0,
        slow_start_min_share=config.slow_start_min_share,
        eject_failures=config.eject_failures,
        eject_time=config.eject_time,
        eject_max_time=config.eject_max_time,
        eject_max_share=config.eject_max_share,
        eject_on_5xx=config.eject_on_5xx,
    )


def ramp(rt, now: float, slow_start: float, min_share: float) -> float:
    """
    The share of its full weight a node gets at C{now} under slow start: from
    C{min_share} when its ramp begins (C{rt.warm_from}) up to 1 after
    C{slow_start} seconds (linear).
    """
    if slow_start <= 0:
        return 1.0
    elapsed = now - rt.warm_from
    if elapsed >= slow_start:
        return 1.0
    share = elapsed / slow_start
    return share if share > min_share else min_share


def may_eject(table, node, now: float, max_share: float) -> bool:
    """
    Whether ejecting C{node} keeps, for every context it serves, the ejected
    nodes at most C{max_share} of that context's nodes (rounded down, so a
    context with a single node never loses it).
    """
    nid = node.id
    seen: set = set()
    for records in table.contexts.values():
        ids = {rec.node.id for rec in records}
        if nid not in ids:
            continue
        key = frozenset(ids)
        if key in seen:
            continue
        seen.add(key)
        ejected = 1  # the node itself
        for rec in records:
            rt = rec.node.rt
            if rec.node.id != nid and rt.ejected_until > now and not rt.removed:
                ejected += 1
        # every node of the context counts once (several records per node)
        if ejected > int(max_share * len(ids)):
            return False
    return True


def record_failure(table, node, now: float, policy) -> Optional[float]:
    """
    One more consecutive response-level failure of C{node}.  Returns the
    ejection time when the node is ejected now, C{None} otherwise (below the
    threshold, already ejected, or the context's ejection share is used up).

    The ejection time is C{policy.eject_time} doubled at each ejection that
    follows within C{policy.eject_max_time} of the previous one ending, never
    more than C{policy.eject_max_time}.
    """
    rt = node.rt
    rt.fails += 1
    threshold = policy.eject_failures
    if threshold <= 0 or rt.fails < threshold or rt.ejected_until > now:
        return None
    if not may_eject(table, node, now, policy.eject_max_share):
        return None
    if now - rt.ejected_until > policy.eject_max_time:
        rt.ejections = 0  # healthy long enough: the backoff starts again
    rt.ejections += 1
    duration = min(policy.eject_time * (2 ** min(rt.ejections - 1, 30)), policy.eject_max_time)
    rt.ejected_until = now + duration
    rt.warm_from = rt.ejected_until
    rt.fails = 0
    return duration


def record_success(rt) -> None:
    """The node answered: its consecutive failures start again from 0."""
    rt.fails = 0


class RetryBudget:
    """
    Failover replays allowed per balancer: at most C{share} of the requests
    routed to it over the last C{window} seconds (at least C{minimum} in any
    window), so a sick cluster is not hammered by retries.

    Requests are not counted one by one: L{observe} is called once a second
    with the total of the balancer's node request counters; retries are
    counted when they are made.  The window is kept in one-second buckets.
    """

    def __init__(self, share: float = 0.2, window: float = 10.0, minimum: int = 10) -> None:
        self.share = share
        self.minimum = minimum
        self._size = max(1, int(window))
        #: balancer -> deque of (requests total, retries) per second
        self._history: dict[str, deque] = {}
        self._retries: dict[str, int] = {}
        self._totals: dict[str, int] = {}
        #: replays refused because the budget was used up (for /metrics)
        self.refused = 0

    def observe(self, totals: dict[str, int]) -> None:
        """Once a second: C{totals} = balancer name -> requests sent to its nodes so far."""
        for name, total in totals.items():
            h = self._history.get(name)
            if h is None:
                h = self._history[name] = deque(maxlen=self._size + 1)
            h.append((total, self._retries.get(name, 0)))
            self._totals[name] = total
        for name in [n for n in self._history if n not in totals]:
            del self._history[name]
            self._retries.pop(name, None)
            self._totals.pop(name, None)

    def allow(self, name: str,
              current_total: Union[int, Callable[[], int], None] = None) -> bool:
        """
        May one more replay go to balancer C{name}?  Counts it when allowed.
        C{current_total} (optional) is the balancer's request counter now, for
        the requests of the current second, or a function giving it: called
        only once the window's replays reach C{minimum} (below it a replay is
        always allowed, so the count is not needed).
        """
        retries = self._retries.get(name, 0)
        h = self._history.get(name)
        if h and len(h) > self._size:
            first_total, first_retries = h[0]
            used = retries - first_retries
        else:
            # a history younger than the window: every request and replay so
            # far (the window reaches back before the first sample)
            first_total = 0
            used = retries
        if used >= self.minimum:
            total = current_total() if callable(current_total) else current_total
            if total is None:
                total = h[-1][0] if h else 0
            requests = max(0, total - first_total)
            if used >= self.share * requests:
                self.refused += 1
                return False
        self._retries[name] = retries + 1
        return True

    def used(self, name: str) -> tuple[int, int]:
        """(replays, requests) in the current window of C{name}."""
        h = self._history.get(name)
        retries = self._retries.get(name, 0)
        if not h:
            return retries, 0
        if len(h) <= self._size:  # younger than the window: everything so far
            return retries, self._totals.get(name, 0)
        return retries - h[0][1], max(0, self._totals.get(name, 0) - h[0][0])
