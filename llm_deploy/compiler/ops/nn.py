"""Neural-network ops: softmax, rms_norm, layer_norm.

The normalizations are single ops (not a chain of reductions) because every target wants them
fused anyway, and their numerics follow Hugging Face: statistics in float32 whatever the input
dtype, the result cast back to the input dtype before the weight is applied.
"""

from __future__ import annotations

from collections.abc import Sequence

from llm_deploy.compiler.expr import Call, Expr
from llm_deploy.compiler.ops.common import check_dims_equal, normalize_axis, same_dtype, tensor_args
from llm_deploy.compiler.ops.operands import as_axes, info_str, normalize_axes
from llm_deploy.compiler.ops.registry import InferContext, ShapeError, make_call, register_op
from llm_deploy.compiler.struct_info import StructInfo, TensorInfo


@register_op("softmax", attrs={"axis": -1})
def _infer_softmax(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    (x,) = tensor_args(call, infos, 1)
    if x.ndim != -1:
        normalize_axis(call, call.attrs["axis"], x.ndim)
    return x


def _check_params(call: Call, x: TensorInfo, params: dict[str, TensorInfo], ctx: InferContext) -> None:
    """Each parameter (weight, bias) has the shape of x's normalized axes, in order."""
    axes = as_axes(call.attrs["axis"])
    if x.ndim == -1:
        return
    axes = normalize_axes(call, axes, x.ndim)
    for name, p in params.items():
        if p.ndim not in (-1, len(axes)):
            raise ShapeError(
                f"{call.op.name}: the {name} must have one dim per normalized axis ({len(axes)}), "  # type: ignore[attr-defined]
                f"got {info_str(p)}"
            )
        if x.shape is not None and p.shape is not None:
            for a, d in zip(axes, p.shape):
                check_dims_equal(call, x.shape[a], d, f"dim {a} of the input and the {name}", ctx)


@register_op("rms_norm", attrs={"eps": 1e-5, "axis": -1})
def _infer_rms_norm(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """x * rsqrt(mean(x^2, axis) + eps) * weight."""
    x, w = tensor_args(call, infos, 2)
    same_dtype(call, x, w)
    _check_params(call, x, {"weight": w}, ctx)
    return x


@register_op("layer_norm", attrs={"eps": 1e-5, "axis": -1})
def _infer_layer_norm(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    """(x - mean) * rsqrt(var + eps) * gamma + beta, statistics over `axis`."""
    x, gamma, beta = tensor_args(call, infos, 3)
    same_dtype(call, x, gamma, beta)
    _check_params(call, x, {"gamma": gamma, "beta": beta}, ctx)
    return x


def _axis_attr(axis: int | Sequence[int]) -> int | tuple[int, ...]:
    return axis if isinstance(axis, int) else tuple(axis)


def softmax(x: Expr, axis: int = -1) -> Call:
    return make_call("softmax", (x,), axis=axis)


def rms_norm(x: Expr, weight: Expr, eps: float = 1e-5, axis: int | Sequence[int] = -1) -> Call:
    return make_call("rms_norm", (x, weight), eps=float(eps), axis=_axis_attr(axis))


def layer_norm(x: Expr, gamma: Expr, beta: Expr, eps: float = 1e-5, axis: int | Sequence[int] = -1) -> Call:
    return make_call("layer_norm", (x, gamma, beta), eps=float(eps), axis=_axis_attr(axis))
