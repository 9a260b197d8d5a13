"""Ops through which a model reads and writes its KV cache, an opaque object.

The model never sees pages: it asks the cache for the positions of the tokens of the current
step, and hands it each layer's new K/V with the queries to get the attention output. Which
cache serves (the reference numpy one, paged kernels) is decided by a pass, not by the model.

`kv_cache_attention` writes K/V into the cache, yet it is registered pure, as MLC-LLM does: the
write is what `begin_forward` prepared for this step, so running it twice gives the same cache
and the same result, and the op may live in dataflow blocks where fusion can see it.
"""

from __future__ import annotations

from llm_deploy.compiler.expr import Call, Expr
from llm_deploy.compiler.ops.common import check_dims_equal, same_dtype, tensor_args
from llm_deploy.compiler.ops.registry import REQUIRED, InferContext, ShapeError, make_call, register_op
from llm_deploy.compiler.struct_info import ObjectInfo, StructInfo, TensorInfo


def _cache(call: Call, info: StructInfo) -> None:
    if not isinstance(info, ObjectInfo):
        raise ShapeError(f"{call.op.name}: the first operand must be the KV cache object, got {info}")  # type: ignore[attr-defined]


@register_op("kv_cache_positions")
def _infer_positions(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """kv_cache_positions(cache, ids (n,)) -> (n,) int32: each token's position in its sequence."""
    if len(infos) != 2:
        raise ShapeError(f"kv_cache_positions takes (cache, ids), got {len(infos)} operand(s)")
    _cache(call, infos[0])
    (ids,) = tensor_args(call, infos[1:], 1)
    if ids.ndim not in (-1, 1):
        raise ShapeError(f"kv_cache_positions: ids must be 1-d (n,), got rank {ids.ndim}")
    return TensorInfo(ids.shape, "int32", 1)


@register_op("kv_cache_attention", attrs={"layer": REQUIRED})
def _infer_attention(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """kv_cache_attention(cache, q (n, H, d), k (n, KV, d), v (n, KV, d), layer) -> (n, H, d)."""
    if len(infos) != 4:
        raise ShapeError(f"kv_cache_attention takes (cache, q, k, v), got {len(infos)} operand(s)")
    _cache(call, infos[0])
    q, k, v = tensor_args(call, infos[1:], 3)
    dtype = same_dtype(call, q, k, v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim not in (-1, 3):
            raise ShapeError(f"kv_cache_attention: {name} must be (n, heads, head_dim), got rank {t.ndim}")
    if q.shape is None or k.shape is None or v.shape is None:
        return TensorInfo(None, dtype, 3)
    check_dims_equal(call, q.shape[0], k.shape[0], "the token counts of q and k", ctx)
    check_dims_equal(call, k.shape[0], v.shape[0], "the token counts of k and v", ctx)
    check_dims_equal(call, k.shape[1], v.shape[1], "the kv heads of k and v", ctx)
    check_dims_equal(call, q.shape[2], k.shape[2], "the head_dim of q and k", ctx)
    if ctx.analyzer.can_prove_ne(q.shape[1] % k.shape[1], 0):
        raise ShapeError(
            f"kv_cache_attention: query heads ({q.shape[1]}) must be a multiple of kv heads ({k.shape[1]})"
        )
    return TensorInfo((q.shape[0], q.shape[1], v.shape[2]), dtype)


def kv_cache_positions(cache: Expr, ids: Expr) -> Call:
    return make_call("kv_cache_positions", (cache, ids))


def kv_cache_attention(cache: Expr, q: Expr, k: Expr, v: Expr, layer: int) -> Call:
    return make_call("kv_cache_attention", (cache, q, k, v), layer=int(layer))
