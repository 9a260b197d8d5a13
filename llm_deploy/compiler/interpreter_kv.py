"""The interpreter's KV-cache ops: the runtime cache's own reference functions, so the model
runs unlowered with the same semantics as after `bind_kv_cache`."""

from __future__ import annotations

import numpy as np

from llm_deploy.compiler.interpreter import OpContext, register_impl
from llm_deploy.kv_cache.externs import KV_EXTERNS


@register_impl("kv_cache_positions", context=True)
def _positions(ctx: OpContext, cache, ids):
    out = np.empty(ids.shape, dtype="int32")
    KV_EXTERNS["kv_cache.positions"](cache, ids, out)
    return out


@register_impl("kv_cache_attention", context=True)
def _attention(ctx: OpContext, cache, q, k, v, layer):
    out = np.empty((q.shape[0], q.shape[1], v.shape[2]), dtype=q.dtype)
    KV_EXTERNS["kv_cache.attention"](cache, q, k, v, layer, out)
    return out
