"""A paged cache driven side by side with a dense oracle: every sequence's K/V history per layer in
plain arrays, and attention computed from that history head by head, never through pages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from llm_deploy.kv_cache import KV_EXTERNS, PagedKVCache


def dense_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, first_pos: int) -> np.ndarray:
    """q (a, H, d) at positions first_pos.. over one sequence's full keys k, v (L, KV, d)."""
    a, num_heads, d = q.shape
    group = num_heads // k.shape[1]
    out = np.zeros(q.shape, np.float64)
    for i in range(a):
        visible = first_pos + i + 1
        for h in range(num_heads):
            kh, vh = k[:visible, h // group].astype(np.float64), v[:visible, h // group].astype(np.float64)
            s = kh @ q[i, h].astype(np.float64) / np.sqrt(d)
            p = np.exp(s - s.max())
            out[i, h] = (p / p.sum()) @ vh
    return out


@dataclass
class Harness:
    cache: PagedKVCache
    num_heads: int
    rng: np.random.Generator
    history: dict[int, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)  # per layer
    # attention(cache, q, k, v, layer, out): the extern, or a compiled kernel over the same arrays
    attention: Callable[..., None] = KV_EXTERNS["kv_cache.attention"]

    def _empty(self) -> list[tuple[np.ndarray, np.ndarray]]:
        c = self.cache
        e = np.zeros((0, c.num_kv_heads, c.head_dim), np.float32)
        return [(e, e) for _ in range(c.num_layers)]

    def add(self, seq_id: int) -> None:
        self.cache.add_sequence(seq_id)
        self.history[seq_id] = self._empty()

    def fork(self, parent: int, child: int) -> None:
        self.cache.fork_sequence(parent, child)
        self.history[child] = list(self.history[parent])

    def remove(self, seq_id: int) -> None:
        self.cache.remove_sequence(seq_id)
        del self.history[seq_id]

    def popn(self, seq_id: int, n: int) -> None:
        self.cache.popn(seq_id, n)
        keep = len(self.history[seq_id][0][0]) - n
        self.history[seq_id] = [(k[:keep], v[:keep]) for k, v in self.history[seq_id]]

    def step(self, seq_ids: list[int], lens: list[int], atol: float = 2e-5) -> None:
        """One forward step through the externs, every layer checked against the dense oracle."""
        c, rng = self.cache, self.rng
        c.begin_forward(seq_ids, lens)
        n = sum(lens)
        positions = np.zeros(n, np.int32)
        KV_EXTERNS["kv_cache.positions"](c, np.zeros(n, np.int32), positions)
        expected_pos = np.concatenate(
            [
                np.arange(len(self.history[s][0][0]), len(self.history[s][0][0]) + a)
                for s, a in zip(seq_ids, lens)
            ]
        )
        np.testing.assert_array_equal(positions, expected_pos)
        for layer in range(c.num_layers):
            q = rng.standard_normal((n, self.num_heads, c.head_dim)).astype(np.float32)
            k = rng.standard_normal((n, c.num_kv_heads, c.head_dim)).astype(np.float32)
            v = rng.standard_normal((n, c.num_kv_heads, c.head_dim)).astype(np.float32)
            out = np.full(q.shape, np.nan, np.float32)
            self.attention(c, q, k, v, layer, out)
            # what the pool holds is the K/V rounded to its dtype: the oracle keeps the same values
            k, v = k.astype(c.dtype).astype(np.float32), v.astype(c.dtype).astype(np.float32)
            starts = np.concatenate([[0], np.cumsum(lens)])  # the flat batch in batch order
            for s, sid in enumerate(seq_ids):
                rows = slice(starts[s], starts[s + 1])
                hk, hv = self.history[sid][layer]
                full_k, full_v = np.concatenate([hk, k[rows]]), np.concatenate([hv, v[rows]])
                expected = dense_attention(q[rows], full_k, full_v, len(hk))
                np.testing.assert_allclose(out[rows], expected, rtol=1e-4, atol=atol)
                self.history[sid][layer] = (full_k, full_v)
        c.end_forward()
        c.validate()

    def check_pools(self) -> None:
        """Every sequence's cached K/V, read through its page table, equals its dense history."""
        c = self.cache
        for sid, layers in self.history.items():
            length = c.seq_length(sid)
            assert length == len(layers[0][0])
            pages = list(c.page_table(sid))
            for layer, (k, v) in enumerate(layers):
                paged_k = c.k_pools[layer][pages].reshape(-1, c.num_kv_heads, c.head_dim)[:length]
                paged_v = c.v_pools[layer][pages].reshape(-1, c.num_kv_heads, c.head_dim)[:length]
                np.testing.assert_array_equal(paged_k.astype(np.float32), k)
                np.testing.assert_array_equal(paged_v.astype(np.float32), v)


def snapshot(cache: PagedKVCache) -> tuple:
    """Everything observable about a cache: sequences, page tables, refcounts, free count, pools."""
    seqs = {s: (cache.seq_length(s), cache.page_table(s)) for s in cache.seq_ids}
    refs = tuple(cache.page_refcount(p) for p in range(cache.num_pages))
    pools = tuple(p.tobytes() for p in (*cache.k_pools, *cache.v_pools))
    return seqs, refs, cache.free_pages, cache.in_step, pools
