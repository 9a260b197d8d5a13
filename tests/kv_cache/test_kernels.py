"""The paged attention kernel (kv_cache/kernels.py), compiled for the CPU and run by the tir
interpreter, equals dense attention over each sequence's history (the harness's oracle) through
ragged prefill, decode, forks, removals with page reuse and rollback; it reads the cache's own
arrays as the model does, through the `kv_cache.step_arrays` / `kv_cache.layer_pools` externs."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from llm_deploy.compiler import tir_interpreter
from llm_deploy.kv_cache import KV_EXTERNS, OutOfPagesError, PagedKVCache, paged_attention
from llm_deploy.kv_cache.kernels import BLOCK, paged_attention_func
from tests.kv_cache.harness import Harness

BACKENDS = ("llvm", "interpreter")


@functools.cache
def kernel(backend: str, heads: int, kv_heads: int, head_dim: int, dtype: str, kv_dtype: str):
    func = paged_attention_func(heads, kv_heads, head_dim, dtype, kv_dtype)
    if backend == "interpreter":
        return functools.partial(tir_interpreter.run, func, name="paged_attention")
    from llm_deploy.targets.llvm.codegen import codegen

    module = codegen({"paged_attention": func})
    assert module.notes == []  # every vectorized loop became vector code
    return module["paged_attention"]


def kernel_attention(backend: str):
    """The extern's calling convention over the kernel: what the lowered model does per layer."""

    def attention(cache: PagedKVCache, q, k, v, layer, out) -> None:
        run = kernel(backend, q.shape[1], cache.num_kv_heads, cache.head_dim, q.dtype.name, cache.dtype.name)
        k_pool, v_pool = KV_EXTERNS["kv_cache.layer_pools"](cache, layer)
        run(q, k, v, k_pool, v_pool, *KV_EXTERNS["kv_cache.step_arrays"](cache), out)

    return attention


def make(
    backend, num_pages=64, page_size=4, layers=2, kv_heads=2, heads=4, head_dim=8, dtype="float32", seed=0
):
    cache = PagedKVCache(layers, kv_heads, head_dim, page_size=page_size, num_pages=num_pages, dtype=dtype)
    return Harness(cache, heads, np.random.default_rng(seed), attention=kernel_attention(backend))


@pytest.mark.parametrize(
    "backend,heads,kv_heads",
    [("llvm", 4, 4), ("llvm", 4, 2), ("llvm", 6, 1), ("interpreter", 6, 2)],
)
def test_ragged_prefill_then_decodes(backend, heads, kv_heads):
    h = make(backend, kv_heads=kv_heads, heads=heads)
    for s in range(3):
        h.add(s)
    h.step([0, 1, 2], [1, 7, 12])  # below, across and at page boundaries (page_size 4)
    for _ in range(6):
        h.step([2, 0, 1], [1, 1, 1])  # sequence 2 passes BLOCK keys: two softmax blocks
    h.step([1, 0], [5, 3])  # a prefill chunk on top of a cached prefix, next to another
    h.check_pools()


@pytest.mark.parametrize("backend,page_size", [("llvm", 5), ("llvm", 16), ("llvm", 32), ("interpreter", 5)])
def test_long_sequences_cross_blocks_and_pages(backend, page_size):
    """Blocks of keys and pages that do not line up, a chunk starting mid-page and mid-block."""
    heads, kv_heads, head_dim = (9, 3, 64) if backend == "llvm" else (2, 1, 8)  # the interpreter is slow
    h = make(
        backend,
        num_pages=48,
        page_size=page_size,
        layers=1,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
    )
    h.add(0)
    h.add(1)
    h.step([0, 1], [2 * BLOCK + 3, 5])
    h.step([1, 0], [BLOCK + 7, 9])
    h.step([0, 1], [1, 1])
    h.check_pools()


@pytest.mark.parametrize("backend", BACKENDS)
def test_fork_continues_both_ways_and_parent_history_is_intact(backend):
    h = make(backend, page_size=4)
    h.add(0)
    h.step([0], [6])  # 1 full page + a partial one shared by the fork
    h.fork(0, 1)
    h.fork(0, 2)
    h.step([1], [3])  # the child copies the shared partial page before writing
    h.step([0, 2], [1, 5])
    h.step([2, 1, 0], [1, 1, 1])
    h.fork(1, 3)
    h.fork(2, 4)  # at a page boundary: nothing to copy
    h.step([3, 1, 4, 2], [2, 2, 1, 3])
    h.check_pools()


@pytest.mark.parametrize("backend", BACKENDS)
def test_removal_then_reuse_of_freed_pages(backend):
    h = make(backend, num_pages=8, page_size=4)
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_popn_then_reappend(backend):
    h = make(backend, page_size=4)
    h.add(0)
    h.step([0], [10])
    h.popn(0, 3)  # stale K/V past the new end must not be attended to
    h.step([0], [2])
    h.fork(0, 1)
    h.popn(1, 5)
    h.step([1, 0], [6, 1])
    h.check_pools()


@pytest.mark.parametrize("backend", BACKENDS)
def test_float16_pools(backend):
    h = make(backend, dtype="float16")
    h.add(0)
    h.add(1)
    h.step([0, 1], [5, 19])
    h.fork(1, 2)
    h.step([0, 1, 2], [1, 1, 2])
    assert h.cache.k_pools[0].dtype == np.float16
    h.check_pools()


@pytest.mark.parametrize("seed", range(4))
def test_random_operations(seed):
    """Random adds, forks, removals, rollbacks and ragged steps in a small pool, compiled kernel."""
    rng = np.random.default_rng(200 + seed)
    h = make("llvm", num_pages=16, page_size=3, seed=seed)
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
            lens = [int(rng.integers(1, 8)) for _ in ids]
            try:
                h.step(ids, lens)
            except OutOfPagesError:
                assert not h.cache.in_step
        h.check_pools()
    for s in list(h.history):
        h.remove(s)
    assert h.cache.pages_in_use == 0


def test_a_sequence_is_computed_bit_for_bit_the_same_in_any_batch():
    """Batch and chunk invariance: a token's output depends on its own sequence's keys only, in a
    fixed order, so it is identical alone, beside other sequences, and after a chunked prefill."""
    rng = np.random.default_rng(7)
    heads, kv, d = 6, 2, 16
    prompt = {name: rng.standard_normal((40, width, d)).astype(np.float32) for name, width in
              (("q", heads), ("k", kv), ("v", kv))}  # fmt: skip
    other = {name: rng.standard_normal(x.shape).astype(np.float32) for name, x in prompt.items()}
    attention = kernel_attention("llvm")

    def run(chunks: list[int], with_other: bool) -> np.ndarray:
        cache = PagedKVCache(1, kv, d, page_size=16, num_pages=16)
        cache.add_sequence(0)
        cache.add_sequence(1)
        outs, start = [], 0
        for i, a in enumerate(chunks):
            ids, lens = ([1, 0], [7, a]) if with_other else ([0], [a])
            cache.begin_forward(ids, lens)
            q, k, v = (x[start : start + a] for x in (prompt["q"], prompt["k"], prompt["v"]))
            if with_other:
                q, k, v = (
                    np.concatenate([other[name][7 * i : 7 * i + 7], x]) for name, x in zip("qkv", (q, k, v))
                )
            out = np.empty_like(q)
            attention(cache, q, k, v, 0, out)
            outs.append(out[7:] if with_other else out)
            cache.end_forward()
            start += a
        return np.concatenate(outs)

    alone = run([40], False)
    np.testing.assert_array_equal(run([40], True), alone)
    np.testing.assert_array_equal(run([16, 16, 8], False), alone)
    np.testing.assert_array_equal(run([5, 30, 5], True), alone)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float16_activations(backend):
    cache = PagedKVCache(1, 2, 8, page_size=4, num_pages=16, dtype="float16")
    cache.add_sequence(0)
    cache.add_sequence(1)
    rng = np.random.default_rng(3)
    for lens in ([6, 3], [1, 1]):
        cache.begin_forward([0, 1], lens)
        n = sum(lens)
        q, k, v = (rng.standard_normal((n, h, 8)).astype(np.float16) for h in (4, 2, 2))
        out = np.empty_like(q)
        kernel_attention(backend)(cache, q, k, v, 0, out)
        s = cache.step
        ref = paged_attention(
            q, cache.k_pools[0], cache.v_pools[0], s.qo_indptr, s.page_indptr, s.page_indices, s.seq_lens
        )
        np.testing.assert_allclose(out.astype(np.float32), ref, rtol=2e-3, atol=2e-3)
        cache.end_forward()


def test_kernel_checks_its_arguments():
    """A pool of the wrong dtype or head count is refused by the compiled kernel, not misread."""
    from llm_deploy.targets.llvm.runtime import KernelCallError

    cache = PagedKVCache(1, 2, 8, page_size=4, num_pages=8, dtype="float16")
    cache.add_sequence(0)
    cache.begin_forward([0], [3])
    q = np.zeros((3, 4, 8), np.float32)
    k = np.zeros((3, 2, 8), np.float32)
    run = kernel("llvm", 4, 2, 8, "float32", "float32")
    with pytest.raises(KernelCallError):
        run(
            q,
            k,
            k,
            *KV_EXTERNS["kv_cache.layer_pools"](cache, 0),
            *KV_EXTERNS["kv_cache.step_arrays"](cache),
            q.copy(),
        )
