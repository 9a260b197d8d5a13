"""Elementwise ops with numpy broadcasting: arithmetic, math, comparisons, where, astype."""

from __future__ import annotations

from llm_deploy.compiler.expr import Call, Expr
from llm_deploy.compiler.ops.common import broadcast, same_dtype, tensor_args
from llm_deploy.compiler.ops.registry import REQUIRED, InferContext, ShapeError, make_call, register_op
from llm_deploy.compiler.struct_info import DTYPES, StructInfo, TensorInfo

BINARY = ("add", "subtract", "multiply", "divide", "power", "maximum", "minimum")
UNARY = ("negative", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "silu", "gelu", "abs", "cos", "sin")
COMPARE = ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal")


def _infer_binary(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    a, b = tensor_args(call, infos, 2)
    dtype = same_dtype(call, a, b)
    shape, ndim = broadcast(call, [a, b], ctx)
    return TensorInfo(shape, dtype, ndim)


def _infer_compare(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    info = _infer_binary(call, infos, ctx)
    assert isinstance(info, TensorInfo)
    return TensorInfo(info.shape, "bool", info.ndim)


def _infer_unary(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    (a,) = tensor_args(call, infos, 1)
    return a


for _name in BINARY:
    register_op(_name)(_infer_binary)
for _name in COMPARE:
    register_op(_name)(_infer_compare)
for _name in UNARY:
    register_op(_name)(_infer_unary)


@register_op("where")
def _infer_where(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    cond, a, b = tensor_args(call, infos, 3)
    if cond.dtype not in (None, "bool"):
        raise ShapeError(f"where: the condition must be bool, got {cond.dtype}")
    dtype = same_dtype(call, a, b)
    shape, ndim = broadcast(call, [cond, a, b], ctx)
    return TensorInfo(shape, dtype, ndim)


@register_op("astype", attrs={"dtype": REQUIRED})
def _infer_astype(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    (a,) = tensor_args(call, infos, 1)
    dtype = call.attrs["dtype"]
    if dtype not in DTYPES:
        raise ShapeError(f"astype: unknown dtype {dtype!r}")
    return TensorInfo(a.shape, dtype, a.ndim)


# -- constructors: `ops.add(x, y)` builds the Call; the BlockBuilder deduces its info when emitting.


def _binary(name: str):
    def build(a: Expr, b: Expr) -> Call:
        return make_call(name, (a, b))

    build.__name__ = name
    return build


def _unary(name: str):
    def build(a: Expr) -> Call:
        return make_call(name, (a,))

    build.__name__ = name
    return build


add, subtract, multiply, divide, power, maximum, minimum = (_binary(n) for n in BINARY)
equal, not_equal, less, less_equal, greater, greater_equal = (_binary(n) for n in COMPARE)
negative, exp, log, sqrt, rsqrt, tanh, sigmoid, silu, gelu, abs, cos, sin = (_unary(n) for n in UNARY)


def where(cond: Expr, a: Expr, b: Expr) -> Call:
    return make_call("where", (cond, a, b))


def astype(a: Expr, dtype: str) -> Call:
    return make_call("astype", (a,), dtype=dtype)
