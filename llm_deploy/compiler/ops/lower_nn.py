"""Lowerings of softmax, rms_norm and layer_norm: row statistics as intermediates, then one
elementwise nest. Statistics in float32 at least; the normalized value is cast back to the input
dtype before the weight is applied (Hugging Face's numerics, as the interpreter has them)."""

from __future__ import annotations

from llm_deploy.compiler import te
from llm_deploy.compiler.expr import Call
from llm_deploy.compiler.ops.common import normalize_axis
from llm_deploy.compiler.ops.lower_common import Lowered, all_known, known, lowered, placeholders, wide_dtype
from llm_deploy.compiler.ops.lower_reduce import input_index
from llm_deploy.compiler.ops.operands import as_axes, normalize_axes, prod
from llm_deploy.compiler.ops.registry import InferContext, register_legalize
from llm_deploy.compiler.struct_info import StructInfo
from llm_deploy.compiler.tir import cast, intrin


def _kept(shape, axes):
    return tuple(d for k, d in enumerate(shape) if k not in axes)


def _row(idx, axes):
    """The statistics' index (the input index without the normalized axes)."""
    return tuple(i for k, i in enumerate(idx) if k not in axes)


def _reduce_axes(X, axes, hint):
    return [te.reduce_axis(X.shape[a], f"{hint}{j}" if len(axes) > 1 else hint) for j, a in enumerate(axes)]


@register_legalize("softmax")
def _lower_softmax(
    call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext
) -> Lowered | None:
    x, out = known(infos[0]), known(out_info)
    if x is None or out is None:
        return None
    (X,) = placeholders([x])
    axes = (normalize_axis(call, call.attrs["axis"], X.ndim),)
    wide = wide_dtype(X.dtype)
    rows = _kept(X.shape, axes)

    def xw(idx):
        return cast(wide, X[idx])

    def max_row(*r):
        ks = _reduce_axes(X, axes, "k")
        return te.max(xw(input_index(X.ndim, axes, False, r, ks)), ks)

    mx = te.compute(rows, max_row, "row_max")

    def sum_row(*r):
        ks = _reduce_axes(X, axes, "k")
        return te.sum(intrin("exp", xw(input_index(X.ndim, axes, False, r, ks)) - mx[r]), ks)

    den = te.compute(rows, sum_row, "row_sum")

    def element(*idx):
        r = _row(idx, axes)
        return cast(X.dtype, intrin("exp", xw(idx) - mx[r]) / den[r])

    Y = te.compute(X.shape, element, "Out")
    return lowered(call.args, [X], [Y])


def _norm_axes(call: Call, ndim: int) -> tuple[int, ...]:
    """The normalized axes in the attribute's order (a weight's dim j is axis axes[j])."""
    return normalize_axes(call, as_axes(call.attrs["axis"]), ndim)


@register_legalize("rms_norm")
def _lower_rms_norm(
    call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext
) -> Lowered | None:
    operands, out = all_known(infos), known(out_info)
    if operands is None or out is None:
        return None
    X, W = placeholders(operands)
    axes = _norm_axes(call, X.ndim)
    red = tuple(sorted(axes))
    wide = wide_dtype(X.dtype)
    count = prod(X.shape[a] for a in red)

    def mean_square(*r):
        ks = _reduce_axes(X, red, "k")
        v = cast(wide, X[input_index(X.ndim, red, False, r, ks)])
        return te.sum(v * v, ks) / cast(wide, count)

    ms = te.compute(_kept(X.shape, red), mean_square, "ms")
    eps = call.attrs["eps"]

    def element(*idx):
        normed = cast(X.dtype, cast(wide, X[idx]) / intrin("sqrt", ms[_row(idx, red)] + float(eps)))
        return normed * W[tuple(idx[a] for a in axes)]

    Y = te.compute(X.shape, element, "Out")
    return lowered(call.args, [X, W], [Y])


@register_legalize("layer_norm")
def _lower_layer_norm(
    call: Call, infos: list[StructInfo], out_info: StructInfo, ctx: InferContext
) -> Lowered | None:
    operands, out = all_known(infos), known(out_info)
    if operands is None or out is None:
        return None
    X, G, B = placeholders(operands)
    axes = _norm_axes(call, X.ndim)
    red = tuple(sorted(axes))
    wide = wide_dtype(X.dtype)
    count = prod(X.shape[a] for a in red)
    rows = _kept(X.shape, red)

    def mean_row(*r):
        ks = _reduce_axes(X, red, "k")
        return te.sum(cast(wide, X[input_index(X.ndim, red, False, r, ks)]), ks) / cast(wide, count)

    mean = te.compute(rows, mean_row, "mean")

    def var_row(*r):
        ks = _reduce_axes(X, red, "k")
        d = cast(wide, X[input_index(X.ndim, red, False, r, ks)]) - mean[r]
        return te.sum(d * d, ks) / cast(wide, count)

    var = te.compute(rows, var_row, "var")
    eps = float(call.attrs["eps"])

    def element(*idx):
        r = _row(idx, red)
        normed = cast(X.dtype, (cast(wide, X[idx]) - mean[r]) / intrin("sqrt", var[r] + eps))
        p = tuple(idx[a] for a in axes)
        return normed * G[p] + B[p]

    Y = te.compute(X.shape, element, "Out")
    return lowered(call.args, [X, G, B], [Y])
