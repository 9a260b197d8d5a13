"""Numpy reference of the paged attention kernels: the oracle that compiled kernels must match.

Both functions read only the pools and the step arrays (see ForwardStep), exactly what a kernel
gets, so a compiled kernel is tested by running it and this on the same arrays.
"""

from __future__ import annotations

import numpy as np


def append_kv(
    k_pool: np.ndarray, v_pool: np.ndarray, append_slots: np.ndarray, k: np.ndarray, v: np.ndarray
) -> None:
    """Write the new tokens' K/V (n, KV, d) into one layer's pools (num_pages, page_size, KV, d)."""
    page_size = k_pool.shape[1]
    pages, offsets = np.divmod(append_slots.astype(np.int64), page_size)
    k_pool[pages, offsets] = k
    v_pool[pages, offsets] = v


def paged_attention(
    q: np.ndarray,
    k_pool: np.ndarray,
    v_pool: np.ndarray,
    qo_indptr: np.ndarray,
    page_indptr: np.ndarray,
    page_indices: np.ndarray,
    seq_lens: np.ndarray,
) -> np.ndarray:
    """Ragged causal attention over paged K/V, in float32; returns (n, H, d).

    New token i of sequence s (of length seq_lens[s] after the append, with a_s new tokens) sits
    at position p = seq_lens[s] - a_s + i and attends to keys 0..p of its own sequence. Query head
    h reads kv head h // (H // KV); scores are scaled by 1/sqrt(d).
    """
    n, num_heads, head_dim = q.shape
    num_kv_heads = k_pool.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} kv heads")
    group = num_heads // num_kv_heads
    out = np.empty((n, num_heads, head_dim), np.float32)
    for s in range(len(seq_lens)):
        q0, q1 = int(qo_indptr[s]), int(qo_indptr[s + 1])
        length, new = int(seq_lens[s]), q1 - q0
        pages = page_indices[page_indptr[s] : page_indptr[s + 1]]
        k = k_pool[pages].reshape(-1, num_kv_heads, head_dim)[:length].astype(np.float32)  # (L, KV, d)
        v = v_pool[pages].reshape(-1, num_kv_heads, head_dim)[:length].astype(np.float32)
        qs = q[q0:q1].astype(np.float32).reshape(new, num_kv_heads, group, head_dim)  # (a, KV, g, d)
        scores = np.einsum("akgd,lkd->kgal", qs, k) / np.float32(np.sqrt(head_dim))  # (KV, g, a, L)
        query_pos = np.arange(length - new, length)[:, None]
        scores = np.where(np.arange(length)[None, :] <= query_pos, scores, -np.inf)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        out[q0:q1] = np.einsum("kgal,lkd->akgd", probs, v).reshape(new, num_heads, head_dim)
    return out
