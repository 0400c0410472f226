"""
How often a kind of log line may be written: the one rate limit behind the
refusal log (L{modcluster.access.RateLimitedLog}), the slow-client report
(L{modcluster.listening.TimeoutReport}) and the data plane's per-request
lines (L{modcluster.accesslog.LogLimiter}).

Pure counting on times handed in: the callers word and write the lines (and
what they say about the events held back), so their log text stays theirs.
"""

from __future__ import annotations

from typing import Generic, Hashable, Iterator, Optional, TypeVar

__all__ = ["RateLimit"]

K = TypeVar("K", bound=Hashable)


class RateLimit(Generic[K]):
    """
    At most C{per_key} events per key in a window of C{interval} seconds; the
    others are held back and counted.  A key's window starts with the first
    event let through after its previous window ended, so with C{per_key} 1
    it is "one per key every C{interval} seconds".

    The count held back in a key's window is handed out once that window is
    over: by L{admit} with the key's next event, or by L{expire}.

    @param max_keys: keys remembered at most (C{None}: no bound); beyond it
        the key whose window started first is forgotten, with its count.
    """

    def __init__(self, interval: float, per_key: int = 1,
                 max_keys: Optional[int] = None) -> None:
        self.interval = interval
        self.per_key = per_key
        self.max_keys = max_keys
        #: key -> [window start, let through, held back]; in window-start order
        #: (a key is moved to the end when its window starts).
        self._keys: dict[K, list] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def allows(self, key: K, now: float) -> bool:
        """Whether L{admit} would let an event of C{key} through now (no change)."""
        state = self._keys.get(key)
        return (state is None or now - state[0] >= self.interval
                or state[1] < self.per_key)

    def admit(self, key: K, now: float) -> Optional[int]:
        """
        Count one event of C{key} at C{now}.

        @return: C{None} when it is held back; else the number held back in
            the key's previous window if this event starts a new one (0 if
            none were, or when it is within the current window).
        """
        keys = self._keys
        state = keys.get(key)
        if state is not None and now - state[0] < self.interval:
            if state[1] < self.per_key:
                state[1] += 1
                return 0
            state[2] += 1
            return None
        held = 0
        if state is not None:
            held = state[2]
            del keys[key]
        keys[key] = [now, 1, 0]
        if self.max_keys is not None:
            while len(keys) > self.max_keys:
                del keys[next(iter(keys))]
        return held

    def due(self, now: float) -> bool:
        """Whether some key's window is over at C{now} (L{expire} has work)."""
        for start, _, _ in self._keys.values():
            return now - start >= self.interval  # the first started first
        return False

    def expire(self, now: float) -> Iterator[tuple[K, int, float]]:
        """
        Forget the keys whose window is over at C{now}, yielding C{(key, held
        back, window start)} for those that held events back.
        """
        keys = self._keys
        interval = self.interval
        while keys:
            key = next(iter(keys))
            start, _, held = keys[key]
            if now - start < interval:
                return  # the later keys' windows started later still
            del keys[key]
            if held:
                yield key, held, start
