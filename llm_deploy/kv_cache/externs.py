"""The KV cache's extern functions, in destination-passing style: `fn(*inputs, *outputs)`.

The model calls them with `call_extern("kv_cache.attention", (cache, q, k, v, layer), out_info)`;
the VM and the interpreter look them up in KV_EXTERNS (this package imports nothing of the compiler,
so artifacts run without it). The attention implementation is the numpy reference; compiled kernels
replace it per target.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from llm_deploy.kv_cache.paged import PagedKVCache
from llm_deploy.kv_cache.reference_attention import append_kv, paged_attention


def _check_shape(what: str, array: np.ndarray, expected: tuple[int, ...]) -> None:
    if tuple(array.shape) != expected:
        raise ValueError(f"{what}: expected shape {expected}, got {tuple(array.shape)}")


def kv_positions(cache: PagedKVCache, ids: np.ndarray, out: np.ndarray) -> None:
    """out (n,) int32 = the position of each new token of the current step (ids only give n)."""
    n = cache.step.num_tokens
    if len(ids) != n:
        raise ValueError(
            f"kv_cache.positions: the step begun by begin_forward has {n} new tokens, "
            f"the model was given {len(ids)} token ids"
        )
    _check_shape("kv_cache.positions out", out, (n,))
    out[:] = cache.positions


def kv_attention(
    cache: PagedKVCache, q: np.ndarray, k: np.ndarray, v: np.ndarray, layer: int, out: np.ndarray
) -> None:
    """Append the step's K/V (n, KV, d) to `layer`'s pages, then ragged causal GQA attention.

    q (n, H, d) -> out (n, H, d); see reference_attention.paged_attention for the semantics.
    """
    step = cache.step
    layer = int(layer)
    if not 0 <= layer < cache.num_layers:
        raise ValueError(
            f"kv_cache.attention: layer {layer} out of range for a {cache.num_layers}-layer cache"
        )
    n, kv, d = step.num_tokens, cache.num_kv_heads, cache.head_dim
    if q.ndim != 3 or q.shape[0] != n or q.shape[2] != d or q.shape[1] % kv:
        raise ValueError(
            f"kv_cache.attention: q must be (n={n}, H, d={d}) with H a multiple of {kv} kv heads, "
            f"got {tuple(q.shape)}"
        )
    _check_shape("kv_cache.attention k", k, (n, kv, d))
    _check_shape("kv_cache.attention v", v, (n, kv, d))
    _check_shape("kv_cache.attention out", out, tuple(q.shape))
    k_pool, v_pool = cache.k_pools[layer], cache.v_pools[layer]
    append_kv(k_pool, v_pool, step.append_slots, k, v)
    out[...] = paged_attention(
        q, k_pool, v_pool, step.qo_indptr, step.page_indptr, step.page_indices, step.seq_lens
    )


KV_EXTERNS: dict[str, Callable[..., None]] = {
    "kv_cache.positions": kv_positions,
    "kv_cache.attention": kv_attention,
}
