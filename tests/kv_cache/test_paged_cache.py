"""Bookkeeping of the paged cache: step arrays, page sharing and copy on write, rollback, sizing,
out-of-pages atomicity, and clear errors for misuse."""

from __future__ import annotations

import numpy as np
import pytest

from llm_deploy.kv_cache import KVCacheError, OutOfPagesError, PagedKVCache, SequenceError
from tests.kv_cache.harness import snapshot


def cache(num_pages=16, page_size=4, layers=2, dtype="float32") -> PagedKVCache:
    return PagedKVCache(layers, 2, 8, page_size=page_size, num_pages=num_pages, dtype=dtype)


def run_step(c: PagedKVCache, ids, lens) -> None:
    c.begin_forward(ids, lens)
    c.end_forward()


def test_step_arrays():
    c = cache(page_size=4)
    c.add_sequence(7)
    c.add_sequence(3)
    run_step(c, [7], [5])  # sequence 7: pages [0, 1], length 5
    step = c.begin_forward([3, 7], [2, 4])  # 3: 0 -> 2 tokens in a new page 2; 7: 5 -> 9, new page 3
    assert step.seq_ids == (3, 7) and step.num_tokens == 6 and step.batch_size == 2
    expected = {
        "positions": ([0, 1, 5, 6, 7, 8], np.int32),
        # slot = page * 4 + offset: seq 3 in page 2; seq 7 positions 5..7 in page 1, 8 in page 3
        "append_slots": ([8, 9, 5, 6, 7, 12], np.int64),
        "qo_indptr": ([0, 2, 6], np.int32),
        "page_indptr": ([0, 1, 4], np.int32),
        "page_indices": ([2, 0, 1, 3], np.int32),
        "seq_lens": ([2, 9], np.int32),
        "last_token_indices": ([1, 5], np.int32),
    }
    for name, (values, dtype) in expected.items():
        array = getattr(c, name)
        assert array.dtype == dtype, name
        np.testing.assert_array_equal(array, values, err_msg=name)
    assert c.seq_length(7) == 5  # not committed before end_forward
    c.end_forward()
    assert (c.seq_length(3), c.seq_length(7)) == (2, 9)
    with pytest.raises(KVCacheError, match="no forward step in progress"):
        _ = c.positions


def test_decode_step_arrays_equal_the_general_construction():
    from llm_deploy.kv_cache.step import _decode_step, _general_step

    rng = np.random.default_rng(0)
    for b in (1, 2, 5):
        old = [int(x) for x in rng.integers(0, 70, b)]
        tables = [[int(p) for p in rng.permutation(200)[: (o + 1 + 15) // 16]] for o in old]
        args = (tuple(range(b)), (1,) * b, old, tables, 16)
        fast, general = _decode_step(*args), _general_step(*args)
        for name in ("positions", "append_slots", "qo_indptr", "page_indptr", "page_indices", "seq_lens",
                     "last_token_indices", "token_seq"):  # fmt: skip
            a, e = getattr(fast, name), getattr(general, name)
            assert a.dtype == e.dtype, name
            np.testing.assert_array_equal(a, e, err_msg=name)


def test_step_arrays_extern_pads_page_indices_to_a_power_of_two():
    from llm_deploy.kv_cache import KV_EXTERNS

    c = cache(num_pages=64, page_size=4)
    c.add_sequence(0)
    lengths = []
    for n in (3, 60, 70, 120):
        step = c.begin_forward([0], [n])
        *_, indptr, padded = KV_EXTERNS["kv_cache.step_arrays"](c)
        total = len(step.page_indices)
        assert len(padded) == max(16, 1 << (total - 1).bit_length()) and padded.dtype == np.int32
        np.testing.assert_array_equal(padded[:total], step.page_indices)  # the rest is never read
        np.testing.assert_array_equal(indptr, step.page_indptr)
        lengths.append(len(padded))
        c.end_forward()
    assert lengths == [16, 16, 64, 64]  # 1, 16, 34, 64 pages


def test_fork_shares_pages_and_copies_the_partial_page_once():
    c = cache(page_size=16)
    c.add_sequence(0)
    run_step(c, [0], [20])
    assert c.pages_in_use == 2
    c.fork_sequence(0, 1)
    assert c.pages_in_use == 2  # the fork takes no page; two independent sequences would hold 4
    assert c.page_table(1) == c.page_table(0)
    assert [c.page_refcount(p) for p in c.page_table(0)] == [2, 2]
    # both append into the shared partial page in one step: the first copies it, the last one
    # left holding it writes in place
    assert c.pages_needed([0, 1], [1, 1]) == 1
    run_step(c, [0, 1], [1, 1])
    assert c.pages_in_use == 3
    assert c.page_table(0)[0] == c.page_table(1)[0] and c.page_table(0)[1] != c.page_table(1)[1]
    c.validate()


def test_fork_at_a_page_boundary_copies_nothing():
    c = cache(page_size=4)
    c.add_sequence(0)
    run_step(c, [0], [8])
    c.fork_sequence(0, 1)
    assert c.pages_needed([1], [1]) == 1  # a fresh page, no copy: full pages are never written
    run_step(c, [1], [1])
    assert c.page_table(1)[:2] == c.page_table(0)
    assert c.pages_in_use == 3


def test_fork_copies_pages_contents():
    c = cache(page_size=4, layers=1)
    c.add_sequence(0)
    c.begin_forward([0], [3])
    c.k_pools[0][c.page_table(0)[0], :3] = 1.5  # stands in for the model's K write
    c.end_forward()
    c.fork_sequence(0, 1)
    c.begin_forward([1], [1])
    new = c.page_table(1)[0]
    assert new != c.page_table(0)[0]
    np.testing.assert_array_equal(c.k_pools[0][new, :3], 1.5)
    c.cancel_forward()


def test_popn_frees_empty_pages():
    c = cache(page_size=4)
    c.add_sequence(0)
    run_step(c, [0], [10])
    assert c.pages_in_use == 3
    c.popn(0, 2)
    assert (c.seq_length(0), c.pages_in_use) == (8, 2)
    c.popn(0, 0)
    assert c.pages_in_use == 2
    c.popn(0, 8)
    assert (c.seq_length(0), c.pages_in_use) == (0, 0)
    with pytest.raises(ValueError, match="cannot remove 1 tokens from sequence 0 of length 0"):
        c.popn(0, 1)


def test_popn_on_a_fork_keeps_shared_pages():
    c = cache(page_size=4)
    c.add_sequence(0)
    run_step(c, [0], [8])
    c.fork_sequence(0, 1)
    c.popn(1, 5)
    assert c.pages_in_use == 2 and c.page_refcount(c.page_table(0)[1]) == 1
    assert c.pages_needed([1], [1]) == 1  # 3 tokens in a shared page: copied before the append
    c.validate()


def test_pages_return_to_zero_after_forks_popn_and_cancel():
    c = cache(num_pages=32, page_size=4)
    for s in range(3):
        c.add_sequence(s)
    run_step(c, [0, 1, 2], [5, 9, 4])
    c.fork_sequence(1, 10)
    c.fork_sequence(10, 11)
    run_step(c, [11, 1, 10], [3, 1, 6])
    c.popn(10, 7)
    c.popn(0, 5)
    c.begin_forward([2, 11], [7, 2])
    c.cancel_forward()
    c.validate()
    assert c.pages_in_use > 0
    for s in (1, 11, 0, 10, 2):
        c.remove_sequence(s)
    assert c.pages_in_use == 0 and c.free_pages == c.num_pages
    c.validate()


def test_cancel_forward_restores_the_cache():
    c = cache(page_size=4)
    c.add_sequence(0)
    run_step(c, [0], [6])
    before = (c.seq_length(0), c.page_table(0), c.pages_in_use)
    c.begin_forward([0], [7])
    assert c.pages_in_use == 4
    c.cancel_forward()
    assert (c.seq_length(0), c.page_table(0), c.pages_in_use) == before
    assert not c.in_step


def test_out_of_pages_leaves_the_cache_unchanged():
    c = cache(num_pages=4, page_size=4)
    c.add_sequence(0)
    c.add_sequence(1)
    run_step(c, [0, 1], [6, 3])  # 3 pages in use
    c.fork_sequence(0, 2)
    before = snapshot(c)
    # sequence 2 would copy the shared partial page (1 page) and take 1 more; sequence 1 one more
    assert c.pages_needed([2, 1], [3, 2]) == 3 and not c.can_allocate([2, 1], [3, 2])
    with pytest.raises(OutOfPagesError) as err:
        c.begin_forward([2, 1], [3, 2])
    assert (err.value.needed, err.value.free) == (3, 1)
    assert "needs 3 free page(s), the pool has 1 free" in str(err.value)
    assert snapshot(c) == before
    c.validate()
    assert c.can_allocate([1], [1])
    run_step(c, [1], [1])  # the cache still works


def test_sizing_from_a_memory_budget():
    per_page = PagedKVCache.bytes_per_page(3, 2, 8, page_size=4, dtype="float16")
    assert per_page == 2 * 3 * 4 * 2 * 8 * 2
    c = PagedKVCache(3, 2, 8, page_size=4, memory_budget_bytes=5 * per_page + per_page // 2, dtype="float16")
    assert c.num_pages == 5 and c.free_pages == 5
    assert c.memory_bytes == 5 * per_page <= 5 * per_page + per_page // 2
    assert len(c.k_pools) == len(c.v_pools) == 3
    assert c.k_pools[0].shape == (5, 4, 2, 8) and c.v_pools[2].dtype == np.float16
    with pytest.raises(ValueError, match=f"holds no page.*takes {per_page} bytes"):
        PagedKVCache(3, 2, 8, page_size=4, memory_budget_bytes=per_page - 1, dtype="float16")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({}, "exactly one of num_pages or memory_budget_bytes"),
        ({"num_pages": 4, "memory_budget_bytes": 1 << 20}, "exactly one of"),
        ({"num_pages": 0}, "num_pages must be >= 1"),
        ({"num_pages": 4, "dtype": "int8"}, "must be one of float16, float32, got 'int8'"),
        ({"num_pages": 4, "page_size": 0}, "page_size must be >= 1"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PagedKVCache(2, 2, 8, **kwargs)


def test_sequence_id_errors():
    c = cache()
    c.add_sequence(1)
    with pytest.raises(SequenceError, match="sequence id 1 is already in the cache"):
        c.add_sequence(1)
    with pytest.raises(SequenceError, match="fork_sequence: sequence id 1 is already"):
        c.fork_sequence(1, 1)
    with pytest.raises(SequenceError, match="unknown sequence id 5; sequences in the cache: 1"):
        c.remove_sequence(5)
    with pytest.raises(SequenceError, match="unknown sequence id 5"):
        c.fork_sequence(5, 6)
    with pytest.raises(SequenceError, match="unknown sequence id 5"):
        c.begin_forward([1, 5], [1, 1])
    with pytest.raises(SequenceError, match=r"appear more than once in the batch \[1, 1\]"):
        c.begin_forward([1, 1], [1, 2])
    with pytest.raises(ValueError, match="append length must be >= 1, got 0"):
        c.begin_forward([1], [0])
    with pytest.raises(ValueError, match="2 sequence ids but 1 append lengths"):
        c.begin_forward([1, 2], [1])
    with pytest.raises(TypeError, match="sequence ids are ints"):
        c.add_sequence("a")
    assert not c.in_step and c.pages_in_use == 0


def test_a_step_in_progress_blocks_other_operations():
    c = cache()
    c.add_sequence(0)
    c.begin_forward([0], [3])
    for op in (
        lambda: c.add_sequence(1),
        lambda: c.remove_sequence(0),
        lambda: c.fork_sequence(0, 1),
        lambda: c.popn(0, 1),
        lambda: c.begin_forward([0], [1]),
    ):
        with pytest.raises(KVCacheError, match=r"forward step over sequences \[0\] is in progress"):
            op()
    c.end_forward()
    with pytest.raises(KVCacheError, match="no forward step in progress"):
        c.end_forward()
    with pytest.raises(KVCacheError, match="no forward step in progress"):
        c.cancel_forward()
