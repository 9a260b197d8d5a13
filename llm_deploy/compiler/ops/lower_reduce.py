"""Lowerings of sum / mean / max / min and argmax / argmin: one reduction nest per op."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llm_deploy.compiler import te, tir
from llm_deploy.compiler.expr import Call
from llm_deploy.compiler.ops.common import normalize_axis
from llm_deploy.compiler.ops.lower_common import Lowered, known, lowered, placeholders, unravel, wide_dtype
from llm_deploy.compiler.ops.operands import as_axes, normalize_axes, prod
from llm_deploy.compiler.ops.registry import InferContext, register_legalize
from llm_deploy.compiler.shape import PrimExpr
from llm_deploy.compiler.struct_info import StructInfo


def input_index(
    ndim: int, axes: Sequence[int], keepdims: bool, out_idx: Sequence[PrimExpr], reduced: Sequence
) -> tuple:
    """The input index: reduction vars on `axes`, the output's index elsewhere."""
    red = dict(zip(axes, reduced))
    rest = iter(out_idx)
    out = []
    for k in range(ndim):
        if k in red:
            if keepdims:
                next(rest)
            out.append(red[k])
        else:
            out.append(next(rest))
    return tuple(out)


def _accumulate(dtype: str) -> str:
    """Sums of floats accumulate in float32 at least; integer sums in int64 (numpy's default)."""
    if dtype in tir.FLOAT_DTYPES:
        return wide_dtype(dtype)
    return "int64"


def _sum(value, axes, dtype):
    acc = _accumulate(dtype)
    return te.sum(tir.cast(acc, value), axes, dtype=acc)


# op -> (reduce(value, axes, dtype), finish(reduced, count, dtype))
REDUCERS: dict[str, tuple[Callable, Callable]] = {
    "sum": (_sum, lambda r, count, dtype: tir.cast(dtype, r)),
    "mean": (_sum, lambda r, count, dtype: tir.cast(dtype, _mean(r, count, dtype))),
    "max": (lambda v, axes, dtype: te.max(v, axes), lambda r, count, dtype: r),
    "min": (lambda v, axes, dtype: te.min(v, axes), lambda r, count, dtype: r),
}


def _mean(total, count: PrimExpr, dtype: str):
    # numpy's mean of integers is a float64 division (then cast back: truncation)
    fdtype = tir.dtype_of(total) if dtype in tir.FLOAT_DTYPES else "float64"
    return tir.cast(fdtype, total) / tir.cast(fdtype, count)


def _lower_reduce(name: str):
    reduce, finish = REDUCERS[name]

    def lower(call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext) -> Lowered | None:
        x, out = known(infos[0]), known(out_info)
        if x is None or out is None:
            return None
        (X,) = placeholders([x])
        axes_attr = as_axes(call.attrs["axis"])
        axes = tuple(range(X.ndim)) if axes_attr is None else normalize_axes(call, axes_attr, X.ndim)
        keepdims = call.attrs["keepdims"]
        count = prod(X.shape[a] for a in axes)

        def element(*idx):
            ks = [te.reduce_axis(X.shape[a], f"k{j}" if len(axes) > 1 else "k") for j, a in enumerate(axes)]
            value = X[input_index(X.ndim, axes, keepdims, idx, ks)]
            return finish(reduce(value, ks, X.dtype), count, X.dtype)

        Y = te.compute(out.shape, element, "Out", dtype=out.dtype)
        return lowered(call.args, [X], [Y])

    lower.__name__ = f"lower_{name}"
    return lower


def _lower_arg_reduce(name: str):
    reducer = te.argmax if name == "argmax" else te.argmin

    def lower(call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext) -> Lowered | None:
        x, out = known(infos[0]), known(out_info)
        if x is None or out is None:
            return None
        (X,) = placeholders([x])
        axis = call.attrs["axis"]

        if axis is None:  # over the flattened tensor

            def element(*idx):
                k = te.reduce_axis(prod(X.shape), "k")
                return reducer(X[unravel(k.var, X.shape)], k)

        else:
            a = normalize_axis(call, axis, X.ndim)

            def element(*idx):
                k = te.reduce_axis(X.shape[a], "k")
                return reducer(X[input_index(X.ndim, (a,), call.attrs["keepdims"], idx, [k])], k)

        Y = te.compute(out.shape, element, "Out", dtype=out.dtype)
        return lowered(call.args, [X], [Y])

    lower.__name__ = f"lower_{name}"
    return lower


for _name in REDUCERS:
    register_legalize(_name)(_lower_reduce(_name))
for _name in ("argmax", "argmin"):
    register_legalize(_name)(_lower_arg_reduce(_name))
