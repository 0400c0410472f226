"""
modcluster/ratelimit.py: the one rate limit behind the refusal log, the
slow-client report and the data plane's per-request lines.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, capturedLogs

from modcluster.accesslog import LogLimiter
from modcluster.ratelimit import RateLimit


def test_one_per_key_per_interval_and_the_count_held_back_comes_with_the_next():
    limit: RateLimit[str] = RateLimit(10.0)
    assert limit.admit("a", 0.0) == 0
    assert limit.admit("a", 1.0) is None
    assert limit.admit("b", 2.0) == 0  # keys are independent
    assert limit.admit("a", 9.9) is None
    assert limit.admit("a", 10.0) == 2  # a new window: two were held back
    assert limit.admit("a", 12.0) is None
    assert limit.admit("b", 12.0) == 0  # nothing held back for b


def test_a_window_lets_per_key_events_through_from_its_first():
    limit: RateLimit[str] = RateLimit(10.0, per_key=3)
    assert [limit.admit("k", t) for t in (5.0, 6.0, 7.0, 8.0, 14.9)] == [0, 0, 0, None, None]
    # the window started at 5.0, with the first event let through
    assert limit.admit("k", 15.0) == 2


def test_allows_changes_nothing():
    limit: RateLimit[str] = RateLimit(10.0)
    assert limit.allows("a", 0.0)
    assert limit.allows("a", 0.0) and len(limit) == 0
    limit.admit("a", 0.0)
    assert not limit.allows("a", 5.0)
    assert limit.allows("a", 10.0)
    assert limit.admit("a", 10.0) == 0  # allows() counted nothing held back


def test_remembered_keys_are_bounded_oldest_window_first():
    limit: RateLimit[str] = RateLimit(10.0, max_keys=2)
    limit.admit("a", 0.0)
    limit.admit("b", 1.0)
    limit.admit("a", 2.0)  # held back: a's window still started first
    limit.admit("c", 3.0)
    assert len(limit) == 2 and "a" not in limit and "b" in limit and "c" in limit
    assert limit.admit("a", 4.0) == 0  # forgotten with its count


def test_expire_hands_out_what_was_held_back_and_forgets_the_key():
    limit: RateLimit[str] = RateLimit(10.0)
    for key, t in (("a", 0.0), ("a", 1.0), ("b", 2.0), ("c", 5.0), ("c", 6.0)):
        limit.admit(key, t)
    assert not limit.due(9.0) and limit.due(10.0)
    assert list(limit.expire(9.0)) == []
    assert list(limit.expire(12.0)) == [("a", 1, 0.0)]  # b: over, nothing held
    assert len(limit) == 1 and "c" in limit
    assert list(limit.expire(15.0)) == [("c", 1, 5.0)]
    assert len(limit) == 0 and not limit.due(100.0)


def test_log_limiter_windows_are_per_key():
    """Each key's burst counts from its own first line (the summary says the
    key's own window), and keys beyond the bound share "other"."""
    clock = Clock()
    limiter = LogLimiter(Logger(namespace="t"), clock.seconds, burst=1, interval=10.0)
    limiter.max_keys = 2
    with capturedLogs() as events:
        assert limiter.emit("a", LogLevel.info, "a")
        clock.advance(5)
        assert limiter.emit("b", LogLevel.info, "b")
        assert not limiter.emit("a", LogLevel.info, "a")
        assert not limiter.emit("b", LogLevel.info, "b")
        assert limiter.emit("c", LogLevel.info, "c")  # a third key: counted as "other"
        assert not limiter.emit("d", LogLevel.info, "d")
        clock.advance(5)
        limiter.tick(clock.seconds())
    texts = [e["log_format"].format(**e) for e in events]
    assert texts == ["a", "b", "c", "1 more similar messages (a) suppressed in the last 10 s"]
