"""
The load formula (history with decay, weights, clamping) and the metrics.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed

from modcluster.node.load import (
    CallableMetric,
    CommandMetric,
    LoadBalanceFactorProvider,
    MemoryMetric,
    MetricHistory,
    NodeUnavailable,
    ProbeLatencyMetric,
    SystemLoadMetric,
    decayed_average,
    initial_history,
    load_factor,
    parse_meminfo,
    parse_number,
    weighted_load,
)


def test_decayed_average_formula() -> None:
    """L = sum(Li / D^i) / sum(1 / D^i)."""
    assert decayed_average([1.0], 2) == 1.0
    assert decayed_average([0.0, 1.0], 2) == pytest.approx(0.5 / 1.5)
    assert decayed_average([0.3, 0.6, 0.9], 3) == pytest.approx(
        (0.3 + 0.6 / 3 + 0.9 / 9) / (1 + 1 / 3 + 1 / 9)
    )
    with pytest.raises(ValueError):
        decayed_average([], 2)


@pytest.mark.parametrize(
    "load, factor",
    [(0.0, 100), (1.0, 1), (2.5, 1), (0.5, 50), (0.005, 99), (0.004, 100), (0.995, 1),
     (0.125, 87), (-0.3, 100), (math.nan, 100)],
)
def test_load_factor_clamped(load: float, factor: int) -> None:
    """100 - round(100 L) clamped to 1..100; half up as Java's Math.round; NaN -> 100."""
    assert load_factor(load) == factor


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_load_factor_range(load: float) -> None:
    assert 1 <= load_factor(load) <= 100


@given(st.lists(st.floats(0, 10), min_size=1, max_size=20), st.floats(1, 10))
def test_decayed_average_bounded(values: list[float], decay: float) -> None:
    average = decayed_average(values, decay)
    assert min(values) - 1e-9 <= average <= max(values) + 1e-9


def test_history_keeps_h_plus_one_readings() -> None:
    """History 9 keeps the new reading plus 9 older ones."""
    history = MetricHistory(9, 2.0, initial_history(0, 9))
    assert history.readings == [1.0] * 9
    for _ in range(12):
        history.record(0.0)
    assert history.readings == [0.0] * 10
    assert initial_history(None, 9) == [] and initial_history(100, 2) == [0.0, 0.0]
    with pytest.raises(ValueError):
        initial_history(101, 9)


def test_weighted_load() -> None:
    assert weighted_load([(0.2, 1), (0.8, 3)]) == pytest.approx(0.65)
    assert math.isnan(weighted_load([]))


def _factors(provider: LoadBalanceFactorProvider, n: int) -> list[int]:
    """Run C{n} periods; every metric here answers synchronously."""
    out: list[int] = []
    for _ in range(n):
        d = Deferred.fromCoroutine(provider.load_factor())
        results: list[object] = []
        d.addBoth(results.append)
        assert len(results) == 1 and isinstance(results[0], int), results
        out.append(results[0])
    return out


def test_ramp_up_and_busy_sequence_of_trace_c() -> None:
    """
    Trace C: a busy-threads metric reading 0, 0, 0, then 6/10 for three periods,
    then 0 again gives exactly the Java loads 50 75 88 64 52 46 73 87 93 97 98.
    """
    readings = iter([0, 0, 0, 6, 6, 6, 0, 0, 0, 0, 0])
    metric = CallableMetric(lambda: next(readings), capacity=10)
    provider = LoadBalanceFactorProvider([metric])
    assert _factors(provider, 11) == [50, 75, 88, 64, 52, 46, 73, 87, 93, 97, 98]


def test_no_initial_history() -> None:
    """Without pre-filled history an idle node reports 100 at once."""
    provider = LoadBalanceFactorProvider([CallableMetric(lambda: 0.0)], initial_load=None)
    assert _factors(provider, 2) == [100, 100]


def test_weights_and_zero_weight() -> None:
    """Loads combine by weight; weight 0 metrics are not even read."""
    def boom() -> float:
        raise AssertionError("read")

    metrics = [
        CallableMetric(lambda: 0.2, weight=1),
        CallableMetric(lambda: 0.8, weight=3),
        CallableMetric(boom, weight=0),
    ]
    provider = LoadBalanceFactorProvider(metrics, initial_load=None)
    assert _factors(provider, 1) == [100 - 65]


def test_failing_metric_skipped_and_unavailable() -> None:
    """A failing metric is skipped; NodeUnavailable gives -1."""
    def fails() -> float:
        raise OSError("no reading")

    provider = LoadBalanceFactorProvider(
        [CallableMetric(fails), CallableMetric(lambda: 0.3)], initial_load=None
    )
    assert _factors(provider, 1) == [70]

    def unavailable() -> float:
        raise NodeUnavailable()

    provider = LoadBalanceFactorProvider([CallableMetric(unavailable)])
    assert _factors(provider, 1) == [-1]


def test_no_metric_is_java_nan_100() -> None:
    """No metric at all: 0/0 load -> factor 100 (the trace's Load=100)."""
    assert _factors(LoadBalanceFactorProvider([]), 1) == [100]


def test_deferred_metric() -> None:
    """A metric may answer with a Deferred."""
    provider = LoadBalanceFactorProvider(
        [CallableMetric(lambda: succeed(0.25))], initial_load=None
    )
    assert _factors(provider, 1) == [75]


def test_system_and_memory_metrics() -> None:
    """CPU = 1-minute load average / CPUs; memory = 1 - available/total."""
    cpu = SystemLoadMetric(getloadavg=lambda: (3.0, 0.0, 0.0), cpu_count=lambda: 4)
    assert cpu.measure() == 0.75
    meminfo = "MemTotal:       1000 kB\nMemFree:   10 kB\nMemAvailable:    250 kB\n"
    assert MemoryMetric(read=lambda: meminfo).measure() == 0.75
    assert parse_meminfo(meminfo) == 0.75
    with pytest.raises(ValueError):
        parse_meminfo("MemTotal: 0 kB\n")


def test_probe_latency_metric() -> None:
    metric = ProbeLatencyMetric(capacity=2.0)
    with pytest.raises(ValueError):
        metric.measure()
    metric.observe(0.5)
    assert metric.measure() == 0.5


def test_parse_number() -> None:
    assert parse_number(b" 0.75\n") == 0.75
    assert parse_number("12 busy") == 12.0
    for bad in ("", "abc", "nan", "inf"):
        with pytest.raises(ValueError):
            parse_number(bad)


def test_command_metric_argv() -> None:
    """A string command runs through /bin/sh -c, a list as is."""
    assert CommandMetric(None, "echo 1").argv() == ("/bin/sh", "-c", "echo 1")
    assert CommandMetric(None, ("/bin/echo", "1")).argv() == ("/bin/echo", "1")


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        LoadBalanceFactorProvider([], history=-1)
    with pytest.raises(ValueError):
        LoadBalanceFactorProvider([], decay=0.5)
