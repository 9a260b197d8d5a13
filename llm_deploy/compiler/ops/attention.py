"""Rotary position embedding and scaled dot-product attention with grouped-query heads.

Layout, for both ops: (seq, heads, head_dim), optionally with a leading batch dim
(batch, seq, heads, head_dim) -- the layout a projection's output has after a reshape, so no
transpose is needed before or after attention.

`rope_inv_freq` is the one definition of the rotary frequencies (plain, linear, llama3 scaling);
the interpreter and the lowerings both read it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from llm_deploy.compiler import shape as S
from llm_deploy.compiler.expr import Call, Expr
from llm_deploy.compiler.ops.common import check_dims_equal, same_dtype, tensor_args
from llm_deploy.compiler.ops.operands import as_prim, info_str, is_int_dtype
from llm_deploy.compiler.ops.registry import InferContext, ShapeError, make_call, register_op
from llm_deploy.compiler.shape import IntImm, IntLike
from llm_deploy.compiler.struct_info import PrimInfo, StructInfo, TensorInfo

ROPE_TYPES = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def check_rope_scaling(scaling: Mapping[str, Any] | None) -> None:
    if scaling is None:
        return
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ShapeError(f"rope: unsupported rope_type {kind!r}; supported: {', '.join(ROPE_TYPES)}")
    missing = [k for k in ROPE_TYPES[kind] if k not in scaling]
    if missing:
        raise ShapeError(f"rope: {kind} scaling needs {', '.join(missing)}")


def rope_inv_freq(head_dim: int, theta: float, scaling: Mapping[str, Any] | None = None) -> np.ndarray:
    """Inverse frequencies (head_dim // 2,), float64, as transformers computes them.

    llama3 (Llama 3.1): wavelengths longer than original_max / low_freq_factor are divided by
    `factor`, shorter than original_max / high_freq_factor kept, and those between interpolated.
    """
    check_rope_scaling(scaling)
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    kind = "default" if scaling is None else scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "linear":
        return inv / scaling["factor"]  # type: ignore[index]
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]  # type: ignore[index]
        old = scaling["original_max_position_embeddings"]  # type: ignore[index]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / high) & ~(wavelen > old / low)
        return np.where(medium, smoothed, scaled)
    return inv


def _layout(call: Call, x: TensorInfo, what: str) -> None:
    if x.ndim not in (-1, 3, 4):
        raise ShapeError(
            f"{call.op.name}: {what} must be (seq, heads, head_dim) or (batch, seq, heads, head_dim), "  # type: ignore[attr-defined]
            f"got {info_str(x)}"
        )


@register_op("rope", attrs={"theta": 10000.0, "scaling": None})
def _infer_rope(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """rope(x, pos): rotates pairs (d, d + head_dim/2) of x (rotate_half, as transformers).

    `pos` is either an integer scalar, the position of the first token (the rest follow), or an
    integer tensor (seq,) holding each token's position (ragged batches of sequences).
    """
    if len(infos) != 2:
        raise ShapeError(f"rope takes x and positions; got {len(infos)} operand(s)")
    x = tensor_args(call, infos[:1], 1)[0]
    _layout(call, x, "x")
    check_rope_scaling(call.attrs["scaling"])
    pos = infos[1]
    match pos:
        case PrimInfo(dtype) if is_int_dtype(dtype):
            pass
        case TensorInfo() if is_int_dtype(pos.dtype) or pos.dtype is None:
            if pos.ndim not in (-1, 1):
                raise ShapeError(f"rope: the positions must be 1-d (seq,), got {info_str(pos)}")
            if pos.shape is not None and x.shape is not None:
                check_dims_equal(call, pos.shape[0], x.shape[-3], "the positions and x's seq dim", ctx)
        case _:
            raise ShapeError(
                f"rope: positions must be an integer scalar offset or an integer tensor, got {pos}"
            )
    if x.shape is not None:
        head_dim = x.shape[-1]
        if isinstance(head_dim, IntImm) and head_dim.value % 2:
            raise ShapeError(f"rope: head_dim must be even, got {head_dim.value} in {info_str(x)}")
    return x


@register_op("attention", attrs={"causal": True, "scale": None})
def _infer_attention(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """softmax(q k^T * scale [+ causal mask]) v, per head; query head h reads kv head h // (H / KV).

    q (n, H, d), k (m, KV, d), v (m, KV, dv) -> (n, H, dv); H a multiple of KV. The causal mask
    aligns the queries with the *last* n keys (query i sees key j iff j <= i + m - n), as after a
    KV cache of m - n tokens. scale defaults to 1 / sqrt(d).
    """
    q, k, v = tensor_args(call, infos, 3)
    dtype = same_dtype(call, q, k, v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        _layout(call, t, name)
    ndims = {t.ndim for t in (q, k, v) if t.ndim != -1}
    if len(ndims) > 1:
        raise ShapeError(f"attention: q, k, v ranks differ ({info_str(q)}, {info_str(k)}, {info_str(v)})")
    if not ndims:
        return TensorInfo(None, dtype, -1)
    ndim = ndims.pop()
    if q.shape is None or v.shape is None:
        return TensorInfo(None, dtype, ndim)
    if k.shape is not None:
        pairs = [
            (q.shape[-1], k.shape[-1], "head_dim of q and k"),
            (k.shape[-3], v.shape[-3], "seq dims of k and v"),
            (k.shape[-2], v.shape[-2], "kv heads of k and v"),
        ]
        if ndim == 4:
            pairs += [
                (q.shape[0], k.shape[0], "batch of q and k"),
                (k.shape[0], v.shape[0], "batch of k and v"),
            ]
        for a, b, what in pairs:
            check_dims_equal(call, a, b, what, ctx)
        heads, kv_heads = q.shape[-2], k.shape[-2]
        if ctx.analyzer.can_prove_equal(kv_heads, 0) or ctx.analyzer.can_prove_ne(
            S.floormod(heads, kv_heads), 0
        ):
            raise ShapeError(
                f"attention: query heads ({heads}) must be a multiple of kv heads ({kv_heads}); "
                f"q {info_str(q)}, k {info_str(k)}"
            )
    return TensorInfo((*q.shape[:-1], v.shape[-1]), dtype)


def rope(
    x: Expr,
    theta: float = 10000.0,
    offset: Expr | IntLike = 0,
    scaling: Mapping[str, Any] | None = None,
    *,
    positions: Expr | None = None,
) -> Call:
    """Rotary embedding of x (seq, heads, head_dim) at positions offset, offset + 1, ...; or at
    explicit `positions` (an integer tensor (seq,)) when given."""
    if scaling is not None:
        scaling = {k: v for k, v in dict(scaling).items() if v is not None}
        check_rope_scaling(scaling)
    pos = positions if positions is not None else as_prim(offset)
    return make_call("rope", (x, pos), theta=float(theta), scaling=scaling)


def attention(q: Expr, k: Expr, v: Expr, causal: bool = True, scale: float | None = None) -> Call:
    return make_call("attention", (q, k, v), causal=causal, scale=None if scale is None else float(scale))
