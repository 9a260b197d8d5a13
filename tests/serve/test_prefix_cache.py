"""The prefix cache over a real PagedKVCache: longest match, covering entries, LRU eviction, and
page accounting (what it holds, what clearing it would free)."""

from __future__ import annotations

import numpy as np
import pytest

from llm_deploy.kv_cache import PagedKVCache
from llm_deploy.serve.prefix_cache import PrefixCache, common_prefix


def cache_with(pages: int = 32) -> PagedKVCache:
    return PagedKVCache(1, 1, 4, page_size=4, num_pages=pages)


def park(cache: PagedKVCache, prefix: PrefixCache, seq_id: int, tokens: list[int]) -> None:
    cache.add_sequence(seq_id)
    cache.begin_forward([seq_id], [len(tokens)])
    cache.end_forward()
    prefix.insert(seq_id, tokens)


@pytest.mark.parametrize(
    "a, b, n", [([], [1], 0), ([1, 2, 3], [1, 2, 4], 2), ([1, 2], [1, 2, 3], 2), ([5], [6], 0)]
)
def test_common_prefix(a, b, n):
    assert common_prefix(np.array(a), np.array(b)) == n


def test_longest_match_and_covering_entries():
    cache = cache_with()
    prefix = PrefixCache(cache, max_entries=8)
    park(cache, prefix, 0, [1, 2, 3, 4, 5])
    park(cache, prefix, 1, [1, 2, 9])
    assert prefix.match([1, 2, 3, 4, 7]) == (0, 4)
    assert prefix.match([1, 2, 9, 9]) == (1, 3)
    assert prefix.match([8]) == (None, 0)
    park(cache, prefix, 2, [1, 2, 3])  # covered by entry 0: dropped, entry 0 kept
    assert prefix.seq_ids == (1, 0) and 2 not in cache
    park(cache, prefix, 3, [1, 2, 9, 10, 11])  # covers entry 1: replaces it
    assert prefix.seq_ids == (0, 3) and 1 not in cache
    cache.validate()


def test_lru_eviction_and_page_accounting():
    cache = cache_with(pages=8)
    prefix = PrefixCache(cache, max_entries=2)
    park(cache, prefix, 0, list(range(8)))  # 2 pages
    park(cache, prefix, 1, list(range(100, 106)))  # 2 pages
    prefix.touch(0)
    park(cache, prefix, 2, list(range(200, 204)))  # over max_entries: the least recent (1) goes
    assert prefix.seq_ids == (0, 2) and prefix.pages == 3 == cache.pages_in_use

    cache.fork_sequence(0, 7)  # a live sequence shares entry 0's pages: evicting it frees nothing
    assert prefix.evictable_pages == 1
    prefix.clear()
    assert len(prefix) == 0 and cache.pages_in_use == 2 and cache.seq_ids == (7,)
    cache.remove_sequence(7)
    assert cache.pages_in_use == 0
    cache.validate()


def test_disabled_and_mismatched_inserts():
    cache = cache_with()
    off = PrefixCache(cache, max_entries=0)
    park(cache, off, 0, [1, 2, 3])
    assert len(off) == 0 and cache.pages_in_use == 0
    prefix = PrefixCache(cache)
    cache.add_sequence(1)
    with pytest.raises(ValueError, match="holds 0 tokens, 2 given"):
        prefix.insert(1, [1, 2])
