"""Tensor creation: full, zeros, ones, arange, causal_mask. Sizes are operands, so may be symbolic."""

from __future__ import annotations

from collections.abc import Sequence

from llm_deploy.compiler import shape as S
from llm_deploy.compiler.expr import Call, Expr
from llm_deploy.compiler.ops.operands import as_prim, as_shape, prim_value, shape_values
from llm_deploy.compiler.ops.registry import REQUIRED, InferContext, ShapeError, make_call, register_op
from llm_deploy.compiler.shape import IntLike
from llm_deploy.compiler.struct_info import DTYPES, StructInfo, TensorInfo


def _dtype(call: Call) -> str:
    dtype = call.attrs["dtype"]
    if dtype not in DTYPES:
        raise ShapeError(f"{call.op.name}: unknown dtype {dtype!r}")  # type: ignore[attr-defined]
    return dtype


def _infer_filled(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    if len(infos) != 1:
        raise ShapeError(f"{call.op.name} takes one operand, the shape; got {len(infos)}")  # type: ignore[attr-defined]
    dims = shape_values(call, infos[0], "the shape")
    return TensorInfo(dims, _dtype(call), infos[0].ndim)  # type: ignore[attr-defined]


register_op("full", attrs={"fill_value": REQUIRED, "dtype": "float32"})(_infer_filled)
register_op("zeros", attrs={"dtype": "float32"})(_infer_filled)
register_op("ones", attrs={"dtype": "float32"})(_infer_filled)


@register_op("arange", attrs={"dtype": "int64"})
def _infer_arange(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """arange(start, end, step): integer operands, symbolic start and end allowed, like range()."""
    if len(infos) != 3:
        raise ShapeError(f"arange takes start, end, step; got {len(infos)} operand(s)")
    start, end, step = (prim_value(call, i, w) for i, w in zip(infos, ("start", "end", "step")))
    dtype = _dtype(call)
    if step is not None and step == 0:
        raise ShapeError("arange: step must not be 0")
    if start is None or end is None or not isinstance(step, S.IntImm):
        return TensorInfo(None, dtype, 1)
    s = step.value
    # len(range(a, b, s)) == max(ceil((b - a) / s), 0), for either sign of s
    span = S.sub(end, start) if s > 0 else S.sub(start, end)
    length = S.floordiv(S.add(span, abs(s) - 1), abs(s))
    return TensorInfo((ctx.analyzer.simplify(S.maximum(length, 0)),), dtype)


@register_op("causal_mask", attrs={"dtype": "bool"})
def _infer_causal_mask(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """(n, m) mask, query i may see key j iff j <= i + offset.

    bool: True where allowed. A float dtype gives an additive mask: 0 where allowed, the
    dtype's most negative finite value where not (as transformers builds it).
    """
    if len(infos) != 2:
        raise ShapeError(f"causal_mask takes a shape (n, m) and an offset; got {len(infos)} operand(s)")
    dims = shape_values(call, infos[0], "the shape")
    prim_value(call, infos[1], "the offset")
    if infos[0].ndim not in (-1, 2):  # type: ignore[attr-defined]
        raise ShapeError(f"causal_mask: the shape must be (n, m), got {infos[0].ndim} dims")  # type: ignore[attr-defined]
    return TensorInfo(dims, _dtype(call), 2)


def full(shape: Expr | Sequence[IntLike], fill_value: float | int | bool, dtype: str = "float32") -> Call:
    return make_call("full", (as_shape(shape),), fill_value=fill_value, dtype=dtype)


def zeros(shape: Expr | Sequence[IntLike], dtype: str = "float32") -> Call:
    return make_call("zeros", (as_shape(shape),), dtype=dtype)


def ones(shape: Expr | Sequence[IntLike], dtype: str = "float32") -> Call:
    return make_call("ones", (as_shape(shape),), dtype=dtype)


def arange(
    start: Expr | IntLike, end: Expr | IntLike | None = None, step: Expr | IntLike = 1, dtype: str = "int64"
) -> Call:
    """Like range(): arange(n) is 0..n-1; arange(a, b) is a..b-1."""
    if end is None:
        start, end = 0, start
    return make_call("arange", (as_prim(start), as_prim(end), as_prim(step)), dtype=dtype)


def causal_mask(
    n: IntLike, m: IntLike | None = None, offset: Expr | IntLike | None = None, dtype: str = "bool"
) -> Call:
    """Mask for n queries over m keys; by default the queries are the last n of the m positions
    (offset m - n), which is what a prefill after cached tokens needs."""
    m = n if m is None else m
    if offset is None:
        offset = S.sub(m, n)
    return make_call("causal_mask", (as_shape((n, m)), as_prim(offset)), dtype=dtype)
