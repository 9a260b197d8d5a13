"""Paged attention (the `kv_cache.attention` extern) equals dense attention over each sequence's
full history, through prefill, decode, forks, removals with page reuse, and rollback."""

from __future__ import annotations

import numpy as np
import pytest

from llm_deploy.kv_cache import OutOfPagesError, PagedKVCache
from tests.kv_cache.harness import Harness, snapshot


def make(num_pages=64, page_size=4, layers=2, kv_heads=2, heads=4, head_dim=8, dtype="float32", seed=0):
    cache = PagedKVCache(layers, kv_heads, head_dim, page_size=page_size, num_pages=num_pages, dtype=dtype)
    return Harness(cache, heads, np.random.default_rng(seed))


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_ragged_prefill_then_decodes(heads, kv_heads):
    h = make(kv_heads=kv_heads, heads=heads)
    for s in range(3):
        h.add(s)
    h.step([0, 1, 2], [1, 7, 12])  # lengths below, across and at several page boundaries (page_size 4)
    for _ in range(6):
        h.step([2, 0, 1], [1, 1, 1])
    h.step([1, 0], [5, 3])  # a prefill chunk on top of a cached prefix, next to another
    h.check_pools()


def test_fork_continues_both_ways_and_parent_history_is_intact():
    h = make(page_size=4)
    h.add(0)
    h.step([0], [6])  # 1 full page + a partial one shared by the fork
    h.fork(0, 1)
    h.fork(0, 2)
    h.step([1], [3])  # the child copies the shared partial page before writing
    h.check_pools()
    h.step([0, 2], [1, 5])
    h.step([2, 1, 0], [1, 1, 1])
    h.fork(1, 3)  # a fork of a fork (length 10: shares a partial page)
    h.fork(2, 4)  # length 12: at a page boundary, nothing to copy
    h.step([3, 1, 4, 2], [2, 2, 1, 3])
    h.check_pools()


def test_removal_then_reuse_of_freed_pages():
    h = make(num_pages=8, page_size=4)
    h.add(0)
    h.add(1)
    h.step([0, 1], [9, 6])
    freed = set(h.cache.page_table(0))
    h.remove(0)
    h.add(2)
    h.step([2, 1], [11, 1])
    assert freed <= set(h.cache.page_table(2))  # the freed pages (with stale K/V) are in use again
    h.step([2, 1], [1, 1])
    h.check_pools()


def test_popn_then_reappend():
    h = make(page_size=4)
    h.add(0)
    h.step([0], [10])
    h.popn(0, 3)  # back into the middle of page 1
    h.step([0], [2])
    h.popn(0, 5)  # 9 -> 4: drops pages 1 and 2, back to one full page
    h.step([0], [6])
    h.check_pools()


def test_popn_into_a_shared_page_keeps_the_other_holder_intact():
    h = make(page_size=4)
    h.add(0)
    h.step([0], [8])  # two full pages
    h.fork(0, 1)
    h.popn(1, 2)  # the child's last page is now partial but still shared
    h.step([1], [3])  # copy on write: the parent's page 1 is not overwritten
    h.step([0], [1])
    h.check_pools()


def test_float16_pools():
    h = make(dtype="float16")
    assert h.cache.k_pools[0].dtype == np.float16
    h.add(0)
    h.add(1)
    h.step([0, 1], [5, 9])
    h.fork(1, 2)
    h.step([0, 1, 2], [1, 1, 2])
    h.check_pools()


@pytest.mark.parametrize("seed", range(6))
def test_random_operations(seed):
    """Random adds, forks, removals, rollbacks and ragged steps in a small pool, so that steps run out
    of pages: an OutOfPagesError leaves the cache as it was, and the attention stays exact."""
    rng = np.random.default_rng(100 + seed)
    h = make(num_pages=16, page_size=3, seed=seed)
    next_id = 0
    for _ in range(40):
        live = list(h.history)
        op = rng.choice(["add", "fork", "remove", "popn", "step", "step", "step"])
        if op == "add" or not live:
            h.add(next_id)
            next_id += 1
        elif op == "fork":
            h.fork(int(rng.choice(live)), next_id)
            next_id += 1
        elif op == "remove":
            h.remove(int(rng.choice(live)))
        elif op == "popn":
            s = int(rng.choice(live))
            h.popn(s, int(rng.integers(0, h.cache.seq_length(s) + 1)))
        else:
            ids = [int(i) for i in rng.permutation(live)[: rng.integers(1, len(live) + 1)]]
            lens = [int(rng.integers(1, 6)) for _ in ids]
            before = snapshot(h.cache)
            if not h.cache.can_allocate(ids, lens):
                with pytest.raises(OutOfPagesError):
                    h.cache.begin_forward(ids, lens)
                assert snapshot(h.cache) == before
                continue
            h.step(ids, lens)
        h.cache.validate()
        h.check_pools()
    for s in list(h.history):
        h.remove(s)
    assert h.cache.pages_in_use == 0
