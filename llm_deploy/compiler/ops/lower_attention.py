"""Lowerings of rope and attention (layout (seq, heads, head_dim), optionally batched).

rope: the inverse frequencies come from `rope_inv_freq` (the one definition, which the
interpreter reads too) as a constant operand, so every scaling variant is the same kernel; the
position offset is a scalar param, so every offset is the same kernel. Angles in float32.

attention: the default, unscheduled program: scores (heads, n, m) in float32 as an
intermediate, then the row max, the row sum of exponentials, and the weighted sum of values.
"""

from __future__ import annotations

import math

import numpy as np

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import te, tir
from llm_deploy.compiler.expr import Call, Constant
from llm_deploy.compiler.ops.attention import rope_inv_freq
from llm_deploy.compiler.ops.lower_common import (
    Lowered,
    all_known,
    fresh_scalar,
    known,
    lowered,
    placeholders,
    wide_dtype,
)
from llm_deploy.compiler.ops.registry import InferContext, register_legalize
from llm_deploy.compiler.shape import IntImm, SymVar
from llm_deploy.compiler.struct_info import PrimInfo, StructInfo
from llm_deploy.compiler.tir import binary, cast, intrin, select


@register_legalize("rope")
def _lower_rope(
    call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext
) -> Lowered | None:
    x, out = known(infos[0]), known(out_info)
    if x is None or out is None or not isinstance(x.shape[-1], IntImm):
        return None
    head_dim = x.shape[-1].value
    half = head_dim // 2
    inv = rope_inv_freq(head_dim, call.attrs["theta"], call.attrs["scaling"]).astype("float32")
    inv_const = Constant(inv)
    pos = infos[1]
    X = te.placeholder(x.shape, x.dtype, "A")  # type: ignore[arg-type]
    Inv = te.placeholder((half,), "float32", "inv_freq")
    scalars = {}
    if isinstance(pos, PrimInfo):
        if pos.value is None:
            return None
        off = SymVar(fresh_scalar("offset", [x]))
        scalars[off.name] = pos.value
        inputs, args = [X, Inv], (call.args[0], inv_const)

        def position(s):
            return cast("float32", s + off)

    else:
        p = known(pos)
        if p is None:
            return None
        P = te.placeholder(p.shape, p.dtype, "positions")  # type: ignore[arg-type]
        inputs, args = [X, P, Inv], (call.args[0], call.args[1], inv_const)

        def position(s):
            return cast("float32", P[s])

    seq_axis = x.ndim - 3

    def element(*idx):
        s, d = idx[seq_axis], idx[-1]
        angle = position(s) * Inv[S.floormod(d, half)]
        partner = X[(*idx[:-1], S.floormod(d + half, head_dim))]  # rotate_half: (-x2, x1)
        xf, pf = cast("float32", X[idx]), cast("float32", partner)
        rotated = select(binary("lt", d, half), -pf, pf)
        return cast(x.dtype, xf * intrin("cos", angle) + rotated * intrin("sin", angle))  # type: ignore[arg-type]

    Y = te.compute(x.shape, element, "Out")  # type: ignore[arg-type]
    return lowered(args, inputs, [Y], scalars=scalars)


@register_legalize("attention")
def _lower_attention(
    call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext
) -> Lowered | None:
    operands, out = all_known(infos), known(out_info)
    if operands is None or out is None:
        return None
    Q, K, V = placeholders(operands)
    batched = Q.ndim == 4
    n, heads, d = Q.shape[-3:]
    m, kv_heads = K.shape[-3], K.shape[-2]
    group = S.floordiv(heads, kv_heads)
    wide = wide_dtype(Q.dtype)
    scale = call.attrs["scale"]
    scale_value = (
        tir.Imm(float(scale), wide)
        if scale is not None
        else (
            tir.Imm(1.0 / math.sqrt(d.value), wide)
            if isinstance(d, IntImm)
            else intrin("rsqrt", cast(wide, d))
        )
    )
    lowest = tir.Imm(float(np.finfo(wide).min), wide)
    bdims = Q.shape[:1] if batched else ()

    def q_at(b, i, h, e):
        return cast(wide, Q[(*b, i, h, e)])

    def kv_at(T, b, j, h, e):
        return cast(wide, T[(*b, j, S.floordiv(h, group), e)])  # query head h reads kv head h // group

    def score(*idx):
        b, (h, i, j) = idx[:-3], idx[-3:]
        e = te.reduce_axis(d, "e")
        s = te.sum(q_at(b, i, h, e) * kv_at(K, b, j, h, e), e) * scale_value
        if not call.attrs["causal"]:
            return s
        # queries are the last n of m positions: query i sees key j iff j <= i + m - n
        return select(binary("le", j, i + S.sub(m, n)), s, lowest)

    scores = te.compute((*bdims, heads, n, m), score, "scores")

    def row_max(*r):
        j = te.reduce_axis(m, "j")
        return te.max(scores[(*r, j)], j)

    mx = te.compute((*bdims, heads, n), row_max, "row_max")

    def row_sum(*r):
        j = te.reduce_axis(m, "j")
        return te.sum(intrin("exp", scores[(*r, j)] - mx[r]), j)

    den = te.compute((*bdims, heads, n), row_sum, "row_sum")

    def element(*idx):
        b, (i, h, e) = idx[:-3], idx[-3:]
        j = te.reduce_axis(m, "j")
        r = (*b, h, i)
        prob = intrin("exp", scores[(*r, j)] - mx[r]) / den[r]
        return cast(Q.dtype, te.sum(prob * kv_at(V, b, j, h, e), j))

    Y = te.compute(out.shape, element, "Out")  # type: ignore[arg-type]
    return lowered(call.args, [Q, K, V], [Y])
