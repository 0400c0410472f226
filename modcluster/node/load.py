# -*- test-case-name: tests.unit.node.test_node_load -*-
"""
Load factor computation, as mod_cluster's C{DynamicLoadBalanceFactorProvider}.

Every period each metric gives a reading, normalised by its capacity
(C{reading / capacity}, so 0 = idle and 1 = full).  Each metric keeps its own
history; the newest reading is C{L0}, older ones C{L1 ... LH}.  The metric's
load is the time-decayed average::

    L = sum(Li / D**i) / sum(1 / D**i)      for i = 0 .. H

with C{H} = C{history} (default 9, so up to 10 readings) and C{D} = C{decay}
(default 2).  The node load is the weight-averaged C{L} over the metrics with
weight > 0, and the value sent in STATUS is::

    load factor = 100 - clamp(round(100 * load), 0, 99)      (1 .. 100)

(C{round} is Java's C{Math.round}: half up; a load of 0/0 - no metric - gives
100).  A metric raising L{NodeUnavailable} makes the factor C{-1}.

As in Java, each history starts pre-filled with C{history} readings of the
C{initial_load} (default 0, i.e. "full load": readings of 1.0), so a new node
ramps up (50, 75, 88, ...) instead of being flooded; C{initial_load=None}
starts with an empty history.

The formula functions are pure; the metric classes read the system, run a
command or call the application, with the reactor injected.
"""

from __future__ import annotations

import math
import os
import shlex
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

__all__ = [
    "CallableMetric",
    "CommandMetric",
    "ILoadMetric",
    "LoadBalanceFactorProvider",
    "MemoryMetric",
    "MetricHistory",
    "NodeUnavailable",
    "ProbeLatencyMetric",
    "SystemLoadMetric",
    "decayed_average",
    "initial_history",
    "load_factor",
    "parse_meminfo",
    "parse_number",
    "weighted_load",
]

log = Logger()


class NodeUnavailable(Exception):
    """
    Raised by a metric to put the node in error (load factor C{-1}).
    """


# --- pure formula ------------------------------------------------------------


def decayed_average(history: Sequence[float], decay: float) -> float:
    """
    C{sum(Li / D**i) / sum(1 / D**i)} over C{history} (newest first).

    @raise ValueError: C{history} is empty.
    """
    if not history:
        raise ValueError("no readings")
    total = 0.0
    weights = 0.0
    for i, value in enumerate(history):
        weight = 1.0 / decay**i
        total += value * weight
        weights += weight
    return total / weights


def load_factor(load: float) -> int:
    """
    The STATUS load factor for a node load ratio (0 = idle, 1 = full): 1..100,
    higher means more capacity left.  NaN (no metric) gives 100, as in Java.
    """
    if math.isnan(load):
        return 100
    percent = math.floor(100 * min(max(load, 0.0), 1.0) + 0.5)
    return 100 - max(0, min(percent, 99))


def weighted_load(averages: Iterable[tuple[float, float]]) -> float:
    """
    The weight-averaged load of C{(average, weight)} pairs (weights > 0);
    NaN when there is none.
    """
    total = 0.0
    weights = 0.0
    for average, weight in averages:
        total += average * weight
        weights += weight
    if weights == 0:
        return math.nan
    return total / weights


def initial_history(initial_load: Optional[int], history: int) -> list[float]:
    """
    The pre-filled history of a new metric: C{history} readings of
    C{1 - initial_load/100}, or nothing when C{initial_load} is C{None}.
    """
    if initial_load is None:
        return []
    if not 0 <= initial_load <= 100:
        raise ValueError(f"initial load must be within 0..100, not {initial_load}")
    return [1.0 - initial_load / 100.0] * history


@define
class MetricHistory:
    """
    The readings of one metric, newest first, at most C{history + 1} of them.
    """

    history: int
    decay: float
    readings: list[float] = field(factory=list)

    def record(self, value: float) -> float:
        """
        Add a normalised reading and return the new decayed average.
        """
        del self.readings[self.history :]
        self.readings.insert(0, value)
        return decayed_average(self.readings, self.decay)


def parse_number(text: Union[str, bytes]) -> float:
    """
    The number a load command printed: the first whitespace-separated token
    of its output.

    @raise ValueError: no finite number there.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    tokens = text.split()
    if not tokens:
        raise ValueError("the command printed nothing")
    value = float(tokens[0])
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {tokens[0]!r}")
    return value


def parse_meminfo(text: str) -> float:
    """
    Used-memory ratio from C{/proc/meminfo}: C{1 - MemAvailable / MemTotal}.

    @raise ValueError: the fields are missing.
    """
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name.strip()] = int(parts[0])
    total = fields.get("MemTotal")
    available = fields.get("MemAvailable")
    if not total or available is None:
        raise ValueError("MemTotal/MemAvailable not found")
    return max(0.0, 1.0 - available / total)


# --- metrics -------------------------------------------------------------------


class ILoadMetric(Interface):
    """
    A source of load readings.
    """

    name = Attribute("Short name for logs.")
    weight = Attribute("Relative weight (float >= 0; 0 disables the metric).")
    capacity = Attribute("The reading that means 'full' (float > 0).")

    def measure():
        """
        Take a reading.

        @return: a number, or a Deferred firing with one; may raise (or fail
            with) L{NodeUnavailable} to report the node in error, or any other
            exception to skip this metric for this period.
        """


@implementer(ILoadMetric)
@frozen
class SystemLoadMetric:
    """
    One-minute system load average divided by the number of CPUs (Java
    C{AverageSystemLoadMetric}).
    """

    weight: float = 1.0
    capacity: float = 1.0
    getloadavg: Callable[[], tuple[float, float, float]] = os.getloadavg
    cpu_count: Callable[[], Optional[int]] = os.cpu_count
    name: str = "cpu"

    def measure(self) -> float:
        return self.getloadavg()[0] / (self.cpu_count() or 1)


@implementer(ILoadMetric)
@frozen
class MemoryMetric:
    """
    Used share of the system memory (C{/proc/meminfo}).
    """

    weight: float = 1.0
    capacity: float = 1.0
    read: Callable[[], str] = field(default=None)
    name: str = "memory"

    def measure(self) -> float:
        if self.read is None:
            with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
                return parse_meminfo(f.read())
        return parse_meminfo(self.read())


@implementer(ILoadMetric)
@frozen
class CallableMetric:
    """
    A reading supplied by the application: C{function()} returns a number (or
    a Deferred firing with one), e.g. the number of requests in progress with
    C{capacity} the maximum concurrency.
    """

    function: Callable[[], Any]
    weight: float = 1.0
    capacity: float = 1.0
    name: str = "callable"

    def measure(self) -> Any:
        return self.function()


@implementer(ILoadMetric)
@frozen
class CommandMetric:
    """
    Runs a command each period; its output's first token is the reading.

    A string command is run by C{/bin/sh -c}; a list is run as is.  A command
    that fails, prints no number or outlives C{timeout} is skipped for this
    period (with a log line).
    """

    reactor: Any
    command: Union[str, tuple[str, ...]]
    weight: float = 1.0
    capacity: float = 1.0
    timeout: float = 5.0
    name: str = "command"

    def argv(self) -> tuple[str, ...]:
        if isinstance(self.command, str):
            return ("/bin/sh", "-c", self.command)
        return tuple(self.command)

    def measure(self) -> Deferred:
        from twisted.internet.utils import getProcessOutputAndValue

        argv = self.argv()
        d = getProcessOutputAndValue(
            argv[0], argv[1:], env=dict(os.environ), reactor=self.reactor
        )
        d.addTimeout(self.timeout, self.reactor)

        def parsed(result: tuple[bytes, bytes, int]) -> float:
            out, err, code = result
            if code != 0:
                raise ValueError(
                    f"{shlex.join(argv)} exited with {code}: "
                    f"{err.decode('utf-8', 'replace').strip()[:200]}"
                )
            return parse_number(out)

        return d.addCallback(parsed)


@implementer(ILoadMetric)
@define
class ProbeLatencyMetric:
    """
    The latency of the agent's backend probe (seconds) this period; with
    C{capacity} the latency that means "full" (default 1 s).  The agent feeds
    it through L{observe}.
    """

    weight: float = 1.0
    capacity: float = 1.0
    name: str = "probe-latency"
    latency: Optional[float] = None

    def observe(self, latency: Optional[float]) -> None:
        self.latency = latency

    def measure(self) -> float:
        if self.latency is None:
            raise ValueError("no probe latency this period")
        return self.latency


class LoadBalanceFactorProvider:
    """
    Combines metrics into a load factor with history and decay.

    @ivar metrics: the L{ILoadMetric} providers, in order.
    """

    def __init__(
        self,
        metrics: Sequence[Any],
        history: int = 9,
        decay: float = 2.0,
        initial_load: Optional[int] = 0,
    ) -> None:
        if history < 0:
            raise ValueError("history must not be negative")
        if decay < 1:
            raise ValueError("decay must be at least 1")
        self.metrics = list(metrics)
        self._histories = [
            MetricHistory(history, decay, initial_history(initial_load, history))
            for _ in self.metrics
        ]

    def averages(self) -> dict[str, Optional[float]]:
        """
        The current decayed average of each metric (by name), for reporting.
        """
        return {
            metric.name: (decayed_average(h.readings, h.decay) if h.readings else None)
            for metric, h in zip(self.metrics, self._histories)
        }

    async def load_factor(self) -> int:
        """
        Read every metric once and return the load factor (1..100, or -1).
        """
        unavailable = False
        pairs: list[tuple[float, float]] = []
        for metric, history in zip(self.metrics, self._histories):
            if metric.weight <= 0:
                continue
            try:
                reading = await maybeDeferred(metric.measure)
                value = float(reading) / metric.capacity
                if math.isnan(value):
                    raise ValueError("reading is NaN")
            except NodeUnavailable:
                unavailable = True
                continue
            except Exception as e:
                log.warn(
                    "Load metric {metric} failed, skipped this period: {error}",
                    metric=metric.name,
                    error=e,
                )
                continue
            pairs.append((history.record(value), metric.weight))
        if unavailable:
            return -1
        return load_factor(weighted_load(pairs))
