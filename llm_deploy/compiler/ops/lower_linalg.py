"""Lowerings of matmul and linear: one reduction nest, accumulated in float32 at least."""

from __future__ import annotations

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import te, tir
from llm_deploy.compiler.expr import Call
from llm_deploy.compiler.ops.lower_common import (
    Lowered,
    all_known,
    known,
    lowered,
    placeholders,
    wide_dtype,
)
from llm_deploy.compiler.ops.registry import InferContext, register_legalize
from llm_deploy.compiler.struct_info import StructInfo


def _batch_index(t_batch: tuple, batch_idx: tuple) -> tuple:
    """Batch dims of one operand read at the output's batch index (numpy broadcasting)."""
    off = len(batch_idx) - len(t_batch)
    return tuple(S.IntImm(0) if d == 1 else batch_idx[off + k] for k, d in enumerate(t_batch))


@register_legalize("matmul")
def _lower_matmul(
    call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext
) -> Lowered | None:
    operands, out = all_known(infos), known(out_info)
    if operands is None or out is None:
        return None
    A, B = placeholders(operands)
    acc = wide_dtype(A.dtype)
    k = te.reduce_axis(A.shape[-1], "k")
    a_batch = A.shape[:-2] if A.ndim >= 2 else ()
    b_batch = B.shape[:-2] if B.ndim >= 2 else ()
    nb = out.ndim - (A.ndim >= 2) - (B.ndim >= 2)

    def element(*idx):
        batch = idx[:nb]
        a_idx = (*_batch_index(a_batch, batch), idx[nb], k) if A.ndim >= 2 else (k,)
        b_idx = (*_batch_index(b_batch, batch), k, idx[-1]) if B.ndim >= 2 else (k,)
        prod = tir.cast(acc, A[a_idx]) * tir.cast(acc, B[b_idx])  # widen each factor, not the product
        return tir.cast(out.dtype, te.sum(prod, k, dtype=acc))

    C = te.compute(out.shape, element, "Out")
    return lowered(call.args, [A, B], [C])


@register_legalize("linear")
def _lower_linear(
    call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext
) -> Lowered | None:
    operands, out = all_known(infos), known(out_info)
    if operands is None or out is None:
        return None
    X, W = placeholders(operands)
    acc = wide_dtype(X.dtype)
    k = te.reduce_axis(X.shape[-1], "k")

    def element(*idx):
        prod = tir.cast(acc, X[(*idx[:-1], k)]) * tir.cast(acc, W[idx[-1], k])
        return tir.cast(out.dtype, te.sum(prod, k, dtype=acc))

    Y = te.compute(out.shape, element, "Out")
    return lowered(call.args, [X, W], [Y])
