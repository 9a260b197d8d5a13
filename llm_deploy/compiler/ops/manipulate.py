"""Layout ops: permute_dims, reshape, broadcast_to, expand_dims, squeeze, concat, split,
strided_slice, take. Semantics are numpy's; symbolic dims travel through every one of them.

Target shapes and slice bounds are operands (ShapeExpr), so they may be symbolic: `reshape(x,
(n, 4, 16))`, `strided_slice(x, axes=[0], begin=[n - 1], end=[n])`.
"""

from __future__ import annotations

from collections.abc import Sequence

from llm_deploy.compiler import shape as S
from llm_deploy.compiler.expr import Call, Expr, Tuple
from llm_deploy.compiler.ops.common import check_dims_equal, normalize_axis, same_dtype, tensor_args
from llm_deploy.compiler.ops.operands import (
    as_axes,
    as_shape,
    info_str,
    is_int_dtype,
    normalize_axes,
    prod,
    shape_str,
    shape_values,
)
from llm_deploy.compiler.ops.registry import REQUIRED, InferContext, ShapeError, make_call, register_op
from llm_deploy.compiler.shape import IntImm, IntLike, PrimExpr
from llm_deploy.compiler.struct_info import StructInfo, TensorInfo, TupleInfo


@register_op("permute_dims", attrs={"axes": None})
def _infer_permute_dims(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """axes=None reverses the dims (a matrix transpose for 2-d)."""
    (x,) = tensor_args(call, infos, 1)
    axes = call.attrs["axes"]
    ndim = x.ndim if axes is None else len(axes)
    if x.ndim not in (-1, ndim):
        raise ShapeError(f"permute_dims: axes {tuple(axes)} do not fit a tensor of rank {x.ndim}")
    if ndim == -1:
        return x
    axes = tuple(reversed(range(ndim))) if axes is None else normalize_axes(call, axes, ndim)
    if x.shape is None:
        return TensorInfo(None, x.dtype, ndim)
    return TensorInfo(tuple(x.shape[a] for a in axes), x.dtype)


@register_op("reshape")
def _infer_reshape(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """One -1 in the new shape stands for what the element count leaves; counts must agree."""
    x = tensor_args(call, infos[:1], 1)[0]
    if len(infos) != 2:
        raise ShapeError(f"reshape takes a tensor and a shape, got {len(infos)} operand(s)")
    new = shape_values(call, infos[1], "the new shape")
    if new is None:
        return TensorInfo(None, x.dtype, infos[1].ndim)  # type: ignore[attr-defined]
    holes = [i for i, d in enumerate(new) if isinstance(d, IntImm) and d.value == -1]
    if len(holes) > 1 or any(isinstance(d, IntImm) and d.value < -1 for d in new):
        raise ShapeError(
            f"reshape: bad new shape {shape_str(new)}; use at most one -1 and no other negatives"
        )
    if x.shape is None:
        return TensorInfo(None if holes else new, x.dtype, len(new))
    count = prod(x.shape)
    if holes:
        rest = prod(d for i, d in enumerate(new) if i != holes[0])
        if ctx.analyzer.can_prove_equal(rest, 0) or ctx.analyzer.can_prove_ne(S.floormod(count, rest), 0):
            raise ShapeError(
                f"reshape: cannot reshape {shape_str(x.shape)} into {shape_str(new)}: "
                f"{S.to_str(count)} elements do not divide into parts of {S.to_str(rest)}"
            )
        new = tuple(S.floordiv(count, rest) if i == holes[0] else d for i, d in enumerate(new))
    elif ctx.analyzer.can_prove_ne(count, prod(new)):
        raise ShapeError(
            f"reshape: cannot reshape {shape_str(x.shape)} ({S.to_str(count)} elements) into "
            f"{shape_str(new)} ({S.to_str(prod(new))} elements)"
        )
    return TensorInfo(new, x.dtype)


@register_op("broadcast_to")
def _infer_broadcast_to(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    x = tensor_args(call, infos[:1], 1)[0]
    target = shape_values(call, infos[1], "the target shape")
    ndim = infos[1].ndim  # type: ignore[attr-defined]
    if x.ndim != -1 and ndim != -1 and x.ndim > ndim:
        raise ShapeError(f"broadcast_to: cannot broadcast {info_str(x)} to fewer dims ({ndim})")
    if target is None:
        return TensorInfo(None, x.dtype, ndim)
    if x.shape is not None:
        for k in range(1, x.ndim + 1):
            src, dst = x.shape[-k], target[-k]
            if src != IntImm(1) and ctx.analyzer.can_prove_ne(src, dst):
                raise ShapeError(
                    f"broadcast_to: cannot broadcast {shape_str(x.shape)} to {shape_str(target)} "
                    f"(dim {x.ndim - k}: {S.to_str(src)} vs {S.to_str(dst)})"
                )
    return TensorInfo(target, x.dtype)


@register_op("expand_dims", attrs={"axis": REQUIRED})
def _infer_expand_dims(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """Axes index the *output*: expand_dims(x (n, 4), axis=[0, 2]) is (1, n, 1, 4)."""
    (x,) = tensor_args(call, infos, 1)
    axes = as_axes(call.attrs["axis"])
    if x.ndim == -1:
        return x
    ndim = x.ndim + len(axes)
    axes = normalize_axes(call, axes, ndim)
    if x.shape is None:
        return TensorInfo(None, x.dtype, ndim)
    rest = iter(x.shape)
    return TensorInfo(tuple(IntImm(1) if k in axes else next(rest) for k in range(ndim)), x.dtype)


@register_op("squeeze", attrs={"axis": None})
def _infer_squeeze(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """axis=None drops every dim of size 1; a symbolic dim that might be 1 leaves the rank unknown."""
    (x,) = tensor_args(call, infos, 1)
    axes = as_axes(call.attrs["axis"])
    if x.ndim == -1:
        return x
    if axes is None:
        if x.shape is None:
            return TensorInfo(None, x.dtype, -1)
        keep = []
        for d in x.shape:
            if ctx.analyzer.can_prove_equal(d, 1):
                continue
            if not ctx.analyzer.can_prove_ne(d, 1):
                return TensorInfo(None, x.dtype, -1)
            keep.append(d)
        return TensorInfo(tuple(keep), x.dtype)
    axes = normalize_axes(call, axes, x.ndim)
    if x.shape is None:
        return TensorInfo(None, x.dtype, x.ndim - len(axes))
    for a in axes:
        if ctx.analyzer.can_prove_ne(x.shape[a], 1):
            raise ShapeError(f"squeeze: dim {a} of {shape_str(x.shape)} is {S.to_str(x.shape[a])}, not 1")
    return TensorInfo(tuple(d for k, d in enumerate(x.shape) if k not in axes), x.dtype)


@register_op("concat", attrs={"axis": 0})
def _infer_concat(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """concat((a, b, ...), axis): one tuple operand; dims other than `axis` must agree."""
    if len(infos) != 1 or not isinstance(infos[0], TupleInfo):
        raise ShapeError("concat takes one operand, a tuple of tensors")
    parts = tensor_args(call, list(infos[0].fields))
    if not parts:
        raise ShapeError("concat: needs at least one tensor")
    dtype = same_dtype(call, *parts)
    ndims = {p.ndim for p in parts if p.ndim != -1}
    if len(ndims) > 1:
        raise ShapeError(f"concat: ranks differ ({', '.join(info_str(p) for p in parts)})")
    if not ndims:
        return TensorInfo(None, dtype, -1)
    ndim = ndims.pop()
    axis = normalize_axis(call, call.attrs["axis"], ndim)
    if any(p.shape is None for p in parts):
        return TensorInfo(None, dtype, ndim)
    out = list(parts[0].shape)  # type: ignore[arg-type]
    for i, p in enumerate(parts[1:], 1):
        for k in range(ndim):
            if k != axis:
                check_dims_equal(call, out[k], p.shape[k], f"dim {k} of operands 0 and {i}", ctx)  # type: ignore[index]
    out[axis] = _sum(p.shape[axis] for p in parts)  # type: ignore[index]
    return TensorInfo(tuple(out), dtype)


def _sum(dims) -> PrimExpr:
    out: PrimExpr = IntImm(0)
    for d in dims:
        out = S.add(out, d)
    return out


@register_op("split", attrs={"indices_or_sections": REQUIRED, "axis": 0})
def _infer_split(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """numpy.split: an int splits into that many equal parts; a list gives the split points."""
    (x,) = tensor_args(call, infos, 1)
    spec = call.attrs["indices_or_sections"]
    count = spec if isinstance(spec, int) else len(spec) + 1
    if isinstance(spec, int) and spec < 1:
        raise ShapeError(f"split: sections must be >= 1, got {spec}")
    if x.ndim == -1:
        return TupleInfo(tuple(TensorInfo(None, x.dtype, -1) for _ in range(count)))
    axis = normalize_axis(call, call.attrs["axis"], x.ndim)
    if x.shape is None:
        return TupleInfo(tuple(TensorInfo(None, x.dtype, x.ndim) for _ in range(count)))
    dim = x.shape[axis]
    if isinstance(spec, int):
        if ctx.analyzer.can_prove_ne(S.floormod(dim, spec), 0):
            raise ShapeError(
                f"split: dim {axis} of {shape_str(x.shape)} ({S.to_str(dim)}) is not divisible by {spec}"
            )
        sizes = [S.floordiv(dim, spec)] * spec
    else:
        points = [S.const(0), *(S.const(i) for i in spec), dim]
        for lo, hi in zip(points, points[1:]):
            if ctx.analyzer.can_prove_lt(hi, lo):
                raise ShapeError(
                    f"split: split points {tuple(spec)} must be increasing and within dim {axis} "
                    f"of {shape_str(x.shape)}"
                )
        sizes = [S.sub(hi, lo) for lo, hi in zip(points, points[1:])]
    fields = tuple(
        TensorInfo(tuple(s if k == axis else d for k, d in enumerate(x.shape)), x.dtype) for s in sizes
    )
    return TupleInfo(fields)


@register_op("strided_slice", attrs={"axes": REQUIRED, "strides": None})
def _infer_strided_slice(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """Python slicing x[begin:end:stride] on each of `axes`; begin and end are operands.

    Constant negative bounds count from the end as in Python; symbolic bounds must be
    non-negative at run time. Bounds are clamped to the dim, so an out-of-range end is allowed.
    """
    if len(infos) != 3:
        raise ShapeError(f"strided_slice takes x, begin, end; got {len(infos)} operand(s)")
    x = tensor_args(call, infos[:1], 1)[0]
    axes = tuple(call.attrs["axes"])
    strides = tuple(call.attrs["strides"] or (1,) * len(axes))
    begin = shape_values(call, infos[1], "begin")
    end = shape_values(call, infos[2], "end")
    for what, info in (("begin", infos[1]), ("end", infos[2]), ("strides", None)):
        n = len(strides) if info is None else info.ndim  # type: ignore[attr-defined]
        if n not in (-1, len(axes)):
            raise ShapeError(f"strided_slice: {what} has {n} entries for {len(axes)} axes")
    if any(not isinstance(s, int) or s < 1 for s in strides):
        raise ShapeError(f"strided_slice: strides must be positive ints, got {strides}")
    if x.ndim == -1:
        return x
    axes = normalize_axes(call, axes, x.ndim)
    if x.shape is None or begin is None or end is None:
        return TensorInfo(None, x.dtype, x.ndim)
    out = list(x.shape)
    for a, b, e, s in zip(axes, begin, end, strides):
        out[a] = _slice_extent(x.shape[a], b, e, s, ctx)
    return TensorInfo(tuple(out), x.dtype)


def _slice_extent(dim: PrimExpr, begin: PrimExpr, end: PrimExpr, stride: int, ctx: InferContext) -> PrimExpr:
    simplify = ctx.analyzer.simplify

    def clamp(v: PrimExpr) -> PrimExpr:
        if isinstance(v, IntImm) and v.value < 0:
            v = S.add(dim, v)
        return simplify(S.minimum(S.maximum(v, 0), dim))

    b, e = clamp(begin), clamp(end)
    # len(range(b, e, s)) == max(ceil((e - b) / s), 0)
    return simplify(S.maximum(S.floordiv(S.add(S.sub(e, b), stride - 1), stride), 0))


@register_op("take", attrs={"axis": 0})
def _infer_take(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """numpy.take: out = x.shape[:axis] + indices.shape + x.shape[axis + 1:] (embedding lookup)."""
    x, idx = tensor_args(call, infos, 2)
    if idx.dtype is not None and not is_int_dtype(idx.dtype):
        raise ShapeError(f"take: indices must be integers, got {idx.dtype}")
    if x.ndim == -1 or idx.ndim == -1:
        return TensorInfo(None, x.dtype, -1)
    if x.ndim == 0:
        raise ShapeError("take: cannot index a 0-d tensor")
    axis = normalize_axis(call, call.attrs["axis"], x.ndim)
    ndim = x.ndim - 1 + idx.ndim
    if x.shape is None or idx.shape is None:
        return TensorInfo(None, x.dtype, ndim)
    return TensorInfo(x.shape[:axis] + idx.shape + x.shape[axis + 1 :], x.dtype)


# -- constructors


def permute_dims(x: Expr, axes: Sequence[int] | None = None) -> Call:
    return make_call("permute_dims", (x,), axes=None if axes is None else tuple(axes))


def reshape(x: Expr, shape: Expr | Sequence[IntLike]) -> Call:
    return make_call("reshape", (x, as_shape(shape)))


def broadcast_to(x: Expr, shape: Expr | Sequence[IntLike]) -> Call:
    return make_call("broadcast_to", (x, as_shape(shape)))


def expand_dims(x: Expr, axis: int | Sequence[int]) -> Call:
    return make_call("expand_dims", (x,), axis=as_axes(axis))


def squeeze(x: Expr, axis: int | Sequence[int] | None = None) -> Call:
    return make_call("squeeze", (x,), axis=as_axes(axis))


def concat(tensors: Expr | Sequence[Expr], axis: int = 0) -> Call:
    operand = tensors if isinstance(tensors, Expr) else Tuple(tuple(tensors))
    return make_call("concat", (operand,), axis=axis)


def split(x: Expr, indices_or_sections: int | Sequence[int], axis: int = 0) -> Call:
    spec = indices_or_sections if isinstance(indices_or_sections, int) else tuple(indices_or_sections)
    return make_call("split", (x,), indices_or_sections=spec, axis=axis)


def strided_slice(
    x: Expr,
    axes: Sequence[int],
    begin: Expr | Sequence[IntLike],
    end: Expr | Sequence[IntLike],
    strides: Sequence[int] | None = None,
) -> Call:
    return make_call(
        "strided_slice",
        (x, as_shape(begin), as_shape(end)),
        axes=tuple(axes),
        strides=None if strides is None else tuple(strides),
    )


def take(x: Expr, indices: Expr, axis: int = 0) -> Call:
    return make_call("take", (x, indices), axis=axis)


__all__ = [
    "broadcast_to",
    "concat",
    "expand_dims",
    "permute_dims",
    "reshape",
    "split",
    "squeeze",
    "strided_slice",
    "take",
]
