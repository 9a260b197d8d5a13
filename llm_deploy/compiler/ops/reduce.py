"""Reductions: sum, mean, max, min over some axes (None: all), argmax and argmin over one axis."""

from __future__ import annotations

from collections.abc import Sequence

from llm_deploy.compiler.expr import Call, Expr
from llm_deploy.compiler.ops.common import normalize_axis, tensor_args
from llm_deploy.compiler.ops.operands import as_axes, normalize_axes
from llm_deploy.compiler.ops.registry import InferContext, make_call, register_op
from llm_deploy.compiler.shape import IntImm
from llm_deploy.compiler.struct_info import StructInfo, TensorInfo

REDUCE = ("sum", "mean", "max", "min")
ARG_REDUCE = ("argmax", "argmin")


def _reduced(x: TensorInfo, axes: tuple[int, ...] | None, keepdims: bool, dtype: str | None) -> TensorInfo:
    if x.ndim == -1:
        return TensorInfo(None, dtype, -1)
    axes = tuple(range(x.ndim)) if axes is None else axes
    ndim = x.ndim if keepdims else x.ndim - len(axes)
    if x.shape is None:
        return TensorInfo(None, dtype, ndim)
    if keepdims:
        return TensorInfo(tuple(IntImm(1) if k in axes else d for k, d in enumerate(x.shape)), dtype)
    return TensorInfo(tuple(d for k, d in enumerate(x.shape) if k not in axes), dtype)


def _infer_reduce(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    (x,) = tensor_args(call, infos, 1)
    axes = as_axes(call.attrs["axis"])
    if axes is not None and x.ndim != -1:
        axes = normalize_axes(call, axes, x.ndim)
    if axes is not None and x.ndim == -1 and not call.attrs["keepdims"]:
        return TensorInfo(None, x.dtype, -1)
    return _reduced(x, axes, call.attrs["keepdims"], x.dtype)


def _infer_arg_reduce(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """The index (int64) of the extreme element along `axis`; axis=None flattens first."""
    (x,) = tensor_args(call, infos, 1)
    axis = call.attrs["axis"]
    if axis is None:
        if call.attrs["keepdims"]:
            return _reduced(x, None, True, "int64")
        return TensorInfo((), "int64")
    if x.ndim == -1:
        return TensorInfo(None, "int64", -1)
    return _reduced(x, (normalize_axis(call, axis, x.ndim),), call.attrs["keepdims"], "int64")


for _name in REDUCE:
    register_op(_name, attrs={"axis": None, "keepdims": False})(_infer_reduce)
for _name in ARG_REDUCE:
    register_op(_name, attrs={"axis": None, "keepdims": False})(_infer_arg_reduce)


def _reduce(name: str):
    def build(x: Expr, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Call:
        return make_call(name, (x,), axis=as_axes(axis), keepdims=keepdims)

    build.__name__ = name
    return build


def _arg_reduce(name: str):
    def build(x: Expr, axis: int | None = None, keepdims: bool = False) -> Call:
        return make_call(name, (x,), axis=axis, keepdims=keepdims)

    build.__name__ = name
    return build


sum, mean, max, min = (_reduce(n) for n in REDUCE)  # noqa: A001  (the ops' own names, like numpy's)
argmax, argmin = (_arg_reduce(n) for n in ARG_REDUCE)
