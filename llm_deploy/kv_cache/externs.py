"""The KV cache's extern functions, in destination-passing style: `fn(*inputs, *outputs)`.

The model calls them with `call_extern("kv_cache.attention", (cache, q, k, v, layer), out_info)`;
the VM and the interpreter look them up in KV_EXTERNS (this package imports nothing of the compiler,
so artifacts run without it). The attention implementation is the numpy reference; compiled kernels
replace it per target.

The compiled kernels (kv_cache/kernels.py) read the cache's own arrays, handed to them as VM values
by two *value* externs, called `fn(*inputs) -> value` (`call_extern_value`), not in DPS: their
results are arrays the cache already holds, of sizes only the cache knows (pages, batch size).
    kv_cache.step_arrays(cache)        -> the current step's arrays named in STEP_ARRAYS, in order
    kv_cache.layer_pools(cache, layer) -> (k_pool, v_pool) of that layer
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


# What `kv_cache.step_arrays` returns, in order (the compiler's pass reads the same tuple):
# positions (n,) int32, append_slots (n,) int64, token_seq (n,) int32, page_indptr (b+1,) int32,
# page_indices (>= total,) int32: padded (ForwardStep.padded_page_indices). See ForwardStep.
STEP_ARRAYS = ("positions", "append_slots", "token_seq", "page_indptr", "page_indices")
_STEP_FIELDS = (*STEP_ARRAYS[:-1], "padded_page_indices")


def kv_step_arrays(cache: PagedKVCache) -> tuple[np.ndarray, ...]:
    """The current step's arrays named in STEP_ARRAYS (the cache's own, not copies)."""
    step = cache.step
    return tuple(getattr(step, name) for name in _STEP_FIELDS)


def kv_layer_pools(cache: PagedKVCache, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(k_pool, v_pool) of `layer`, each (num_pages, page_size, num_kv_heads, head_dim)."""
    layer = int(layer)
    if not 0 <= layer < cache.num_layers:
        raise ValueError(
            f"kv_cache.layer_pools: layer {layer} out of range for a {cache.num_layers}-layer cache"
        )
    return cache.k_pools[layer], cache.v_pools[layer]


KV_EXTERNS: dict[str, Callable[..., object]] = {
    "kv_cache.positions": kv_positions,
    "kv_cache.attention": kv_attention,
    "kv_cache.step_arrays": kv_step_arrays,
    "kv_cache.layer_pools": kv_layer_pools,
}
