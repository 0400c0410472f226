"""
One shape for the balancer's speed caches: L{BoundedMemo}, a named, bounded
mapping from a key to a value computed once, with hit, miss and eviction
counters.

One eviction policy for all of them: when a new entry would exceed
C{max_size}, the memo is emptied first.  That is the policy the data plane's
head memos use (no per-hit bookkeeping: a hit is one dictionary lookup), and
it is right for caches whose keys repeat a lot (a few request heads, a few
node hosts, one registry version) and that must stay bounded when keys are
client input.  A memo is a speed-up only: every value can be computed again.

L{memo_stats} lists the counters of every live memo by name (for bench/ and
tests).

Two ways to use one:

 - C{memo.get(key, compute)}: the value, computed on a miss.  Counts hits
   and misses.
 - On the per-request hot path, where a call and a callback cost more than
   the lookup itself (about 45 ns against an inline C{dict.get}): read
   C{memo.entries} (a plain dict: C{memo.entries.get(key)}, or keep its bound
   C{get}), compute inline on a miss, then C{memo.put(key, value)}, which
   counts the miss and evicts.  Such a memo is made with C{count_hits=False}:
   its hits are not counted (a counter per request is work the request does
   not need); L{BoundedMemo.stats} then has no C{hits}, and the hits are the
   lookups (requests) less the misses.
"""

from __future__ import annotations

import weakref
from typing import Callable, Generic, Hashable, Iterator, TypeVar

__all__ = ["BoundedMemo", "memo_stats"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_LIVE: "weakref.WeakSet[BoundedMemo]" = weakref.WeakSet()


class BoundedMemo(Generic[K, V]):
    """
    C{key -> value}, at most C{max_size} entries, emptied when full.

    @ivar name: what the memo caches (dotted, as in L{memo_stats}).
    @ivar max_size: the most entries it holds (at least 1).
    @ivar hits: lookups answered from the memo.
    @ivar misses: lookups that computed their value.
    @ivar evictions: entries dropped because the memo was full.
    @ivar entries: the C{key -> value} dict itself, for inline lookups on the
        hot path (read it; add to it only with L{put}).
    @ivar count_hits: L{get} counts hits (C{False} for memos read inline
        through C{entries}, whose hits are not counted).
    """

    __slots__ = ("name", "max_size", "hits", "misses", "evictions", "entries", "count_hits",
                 "__weakref__")

    def __init__(self, name: str, max_size: int, count_hits: bool = True) -> None:
        if max_size < 1:
            raise ValueError(f"{name}: max_size must be at least 1, not {max_size!r}")
        self.name = name
        self.max_size = max_size
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.count_hits = count_hits
        self.entries: dict[K, V] = {}
        _LIVE.add(self)

    def get(self, key: K, compute: Callable[[K], V]) -> V:
        """The value remembered for C{key}, or C{compute(key)}, remembered."""
        entries = self.entries
        try:
            value = entries[key]
        except KeyError:
            pass
        else:
            self.hits += 1
            return value
        return self.put(key, compute(key))

    def put(self, key: K, value: V) -> V:
        """
        Remember C{value} for C{key}, computed by the caller after a miss
        (counted here); when C{key} is new and the memo full, it is emptied
        first.  Returns C{value}.
        """
        entries = self.entries
        self.misses += 1
        if len(entries) >= self.max_size and key not in entries:
            self.evictions += len(entries)
            self.clear()
        entries[key] = value
        return value

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def __getitem__(self, key: K) -> V:
        return self.entries[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self.entries)

    def clear(self) -> None:
        """Forget every entry (the counters stay)."""
        self.entries.clear()

    def stats(self) -> dict[str, int]:
        """C{size}, C{max_size}, C{hits} (if counted), C{misses}, C{evictions}."""
        found = {"size": len(self.entries), "max_size": self.max_size, "hits": self.hits,
                 "misses": self.misses, "evictions": self.evictions}
        if not self.count_hits:
            del found["hits"]
        return found

    def __repr__(self) -> str:
        return f"<BoundedMemo {self.name} {self.stats()}>"


def memo_stats() -> dict[str, list[dict[str, int]]]:
    """The L{BoundedMemo.stats} of every live memo, by name (one per instance)."""
    found: dict[str, list[dict[str, int]]] = {}
    for memo in list(_LIVE):
        found.setdefault(memo.name, []).append(memo.stats())
    return found
