"""Matrix products: numpy's matmul, and `linear` for weights stored [out, in].

Weight convention: the models keep Hugging Face's layout, a linear weight is [out_features,
in_features] and `y = x @ W^T`. They write that as `linear(x, W)`, one op rather than
`matmul(x, permute_dims(W))`, so that quantization rewrites and kernels (a gemv reads a row of W
contiguously) see the weight in its stored layout without matching a transpose pattern.
"""

from __future__ import annotations

from llm_deploy.compiler.expr import Call, Expr
from llm_deploy.compiler.ops.common import broadcast, same_dtype, tensor_args
from llm_deploy.compiler.ops.operands import info_str, shape_str
from llm_deploy.compiler.ops.registry import InferContext, ShapeError, make_call, register_op
from llm_deploy.compiler.shape import IntImm
from llm_deploy.compiler.struct_info import DTYPES, StructInfo, TensorInfo


def _out_dtype(call: Call, *operands: TensorInfo) -> str | None:
    out = call.attrs["out_dtype"]
    if out is None:
        return same_dtype(call, *operands)
    if out not in DTYPES:
        raise ShapeError(f"{call.op.name}: unknown out_dtype {out!r}")  # type: ignore[attr-defined]
    return out


@register_op("matmul", attrs={"out_dtype": None})
def _infer_matmul(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """numpy.matmul: batch dims broadcast; a 1-d operand gains a unit dim that the result drops."""
    a, b = tensor_args(call, infos, 2)
    dtype = _out_dtype(call, a, b)
    if a.ndim == -1 or b.ndim == -1:
        return TensorInfo(None, dtype, -1)
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError(f"matmul: operands must have rank >= 1, got {info_str(a)} and {info_str(b)}")
    batch_ndim = max(a.ndim, b.ndim, 2) - 2
    ndim = batch_ndim + (a.ndim >= 2) + (b.ndim >= 2)
    if a.shape is None or b.shape is None:
        return TensorInfo(None, dtype, ndim)
    ash = a.shape if a.ndim >= 2 else (IntImm(1), *a.shape)
    bsh = b.shape if b.ndim >= 2 else (*b.shape, IntImm(1))
    if ctx.analyzer.can_prove_ne(ash[-1], bsh[-2]):
        raise ShapeError(
            f"matmul: contraction dims differ: {shape_str(a.shape)} @ {shape_str(b.shape)} "
            f"({ash[-1]} vs {bsh[-2]})"
        )
    try:
        batch, _ = broadcast(call, [TensorInfo(ash[:-2]), TensorInfo(bsh[:-2])], ctx)
    except ShapeError:
        raise ShapeError(
            f"matmul: batch dims of {shape_str(a.shape)} and {shape_str(b.shape)} do not broadcast"
        ) from None
    if batch is None:
        return TensorInfo(None, dtype, ndim)
    rows = (ash[-2],) if a.ndim >= 2 else ()
    cols = (bsh[-1],) if b.ndim >= 2 else ()
    return TensorInfo((*batch, *rows, *cols), dtype)


@register_op("linear", attrs={"out_dtype": None})
def _infer_linear(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """linear(x (..., in), w (out, in)) -> (..., out), i.e. x @ w^T."""
    x, w = tensor_args(call, infos, 2)
    dtype = _out_dtype(call, x, w)
    if w.ndim not in (-1, 2):
        raise ShapeError(f"linear: the weight must be 2-d [out, in], got {info_str(w)}")
    if x.ndim == 0:
        raise ShapeError("linear: the input must have rank >= 1")
    if x.ndim == -1:
        return TensorInfo(None, dtype, -1)
    if x.shape is None or w.shape is None:
        return TensorInfo(None, dtype, x.ndim)
    if ctx.analyzer.can_prove_ne(x.shape[-1], w.shape[1]):
        raise ShapeError(
            f"linear: input features differ: x {shape_str(x.shape)} has {x.shape[-1]}, "
            f"weight [out, in] {shape_str(w.shape)} has {w.shape[1]}"
        )
    return TensorInfo((*x.shape[:-1], w.shape[0]), dtype)


def matmul(a: Expr, b: Expr, out_dtype: str | None = None) -> Call:
    return make_call("matmul", (a, b), out_dtype=out_dtype)


def linear(x: Expr, weight: Expr, out_dtype: str | None = None) -> Call:
    """x @ weight^T with the weight stored [out_features, in_features] (Hugging Face layout)."""
    return make_call("linear", (x, weight), out_dtype=out_dtype)
