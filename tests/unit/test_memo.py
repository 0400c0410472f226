"""
modcluster.memo: the bounded memo every speed cache off the hot path shares.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modcluster.memo import BoundedMemo, memo_stats


def test_computes_once_per_key_and_counts_hits_and_misses():
    calls = []
    memo = BoundedMemo("test.once", 4)

    def compute(key):
        calls.append(key)
        return key * 2

    assert [memo.get(k, compute) for k in (1, 2, 1, 1, 2)] == [2, 4, 2, 2, 4]
    assert calls == [1, 2]
    assert memo.stats() == {"size": 2, "max_size": 4, "hits": 3, "misses": 2, "evictions": 0}


def test_emptied_when_a_new_entry_would_exceed_the_bound():
    memo = BoundedMemo("test.bound", 2)
    memo.get("a", str.upper)
    memo.get("b", str.upper)
    assert len(memo) == 2
    assert memo.get("c", str.upper) == "C"
    assert len(memo) == 1 and "c" in memo and "a" not in memo
    assert memo.evictions == 2
    memo.clear()
    assert len(memo) == 0 and memo.misses == 3


@given(st.integers(1, 5), st.lists(st.integers(0, 20), max_size=60))
def test_values_are_always_what_compute_gives_and_the_size_stays_bounded(size, keys):
    memo = BoundedMemo("test.property", size)
    for key in keys:
        assert memo.get(key, lambda k: k * k) == key * key
        assert len(memo) <= size
    assert memo.hits + memo.misses == len(keys)


def test_a_size_below_one_is_refused():
    with pytest.raises(ValueError, match="test.empty: max_size"):
        BoundedMemo("test.empty", 0)


def test_memo_stats_lists_live_memos_by_name():
    memo = BoundedMemo("test.listed", 3)
    memo.get(1, str)
    assert {"size": 1, "max_size": 3, "hits": 0, "misses": 1,
            "evictions": 0} in memo_stats()["test.listed"]


def test_node_tls_creators_are_built_once_per_host_and_counted():
    from types import SimpleNamespace

    from modcluster.config import parse_config
    from modcluster.tap import _node_tls

    creator = _node_tls(parse_config(""))

    def node(host):
        return SimpleNamespace(settings=SimpleNamespace(host=host))

    first = creator(node("127.0.0.1"))
    assert creator(node("127.0.0.1")) is first
    assert creator(node("localhost")) is not first
    assert any(s["hits"] == 1 and s["misses"] == 2
               for s in memo_stats()["proxy.tls.creators"])


def test_console_and_api_build_the_node_index_once_per_structure_version():
    from twisted.internet.task import Clock

    from modcluster.api import APIResource
    from modcluster.cluster.model import BalancerSettings, NodeSettings
    from modcluster.cluster.registry import Limits, Registry

    registry = Registry(Clock(), Limits())
    api = APIResource(registry, "test")
    first = api._index()
    assert api._index() is first and api._node_index.hits == 1
    registry.config(BalancerSettings("b"), NodeSettings(route="n1", host="127.0.0.1", port=1))
    assert api._index() is not first and api._node_index.misses == 2


def test_inline_use_puts_counts_misses_and_evicts_and_leaves_hits_out():
    memo = BoundedMemo("test.inline", 2, count_hits=False)
    entries = memo.entries
    for key in ("a", "b", "a", "c", "c"):
        if entries.get(key) is None:
            memo.put(key, key.upper())
    assert dict(entries) == {"c": "C"}
    assert memo.stats() == {"size": 1, "max_size": 2, "misses": 3, "evictions": 2}
    # putting a key that is there replaces it without emptying the memo
    memo.put("d", "D")
    memo.put("d", "DD")
    assert dict(entries) == {"c": "C", "d": "DD"} and memo.evictions == 2


def test_get_and_put_share_the_entries():
    memo = BoundedMemo("test.shared", 3)
    assert memo.put(1, "one") == "one"
    assert memo.get(1, str) == "one"
    assert memo.entries == {1: "one"} and memo.hits == 1 and memo.misses == 1
