"""Operand helpers for the op families that take symbolic values (shapes, offsets, positions).

A symbolic quantity an op needs (a target shape, slice bounds, a position offset) is an *operand*
(a ShapeExpr or PrimValue, or a Var holding one), never an attribute: the interpreter evaluates it
under the current symbolic bindings like any other value, and the checker and the passes see its
symbolic variables without knowing the op. Attributes hold only plain Python data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from llm_deploy.compiler import shape as S
from llm_deploy.compiler.expr import Call, Expr, PrimValue, ShapeExpr
from llm_deploy.compiler.ops.common import normalize_axis, op_name
from llm_deploy.compiler.ops.registry import ShapeError
from llm_deploy.compiler.shape import IntLike, PrimExpr
from llm_deploy.compiler.struct_info import PrimInfo, ShapeInfo, StructInfo, TensorInfo

INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


# -- constructors' side: plain Python values become operands


def as_shape(value: Expr | Iterable[IntLike]) -> Expr:
    """A ShapeExpr from ints / PrimExprs; an Expr (ShapeExpr, or a Var of ShapeInfo) as it is."""
    if isinstance(value, Expr):
        return value
    return ShapeExpr(tuple(value))


def as_prim(value: Expr | IntLike) -> Expr:
    """A PrimValue from an int / PrimExpr; an Expr (PrimValue, or a Var of PrimInfo) as it is."""
    if isinstance(value, Expr):
        return value
    return PrimValue(S.const(value))


def as_axes(axis: int | Sequence[int] | None) -> tuple[int, ...] | None:
    if axis is None:
        return None
    if isinstance(axis, int):
        return (axis,)
    return tuple(int(a) for a in axis)


# -- deduction side: operand infos read back as symbolic values


def shape_values(call: Call, info: StructInfo, what: str) -> tuple[PrimExpr, ...] | None:
    """The values of a shape operand, None when only its rank (or nothing) is known."""
    if not isinstance(info, ShapeInfo):
        raise ShapeError(f"{op_name(call)}: {what} must be a shape, got {type(info).__name__}")
    return info.values


def shape_ndim(info: StructInfo) -> int:
    assert isinstance(info, ShapeInfo)
    return info.ndim


def prim_value(call: Call, info: StructInfo, what: str) -> PrimExpr | None:
    """The value of an integer scalar operand, None when it is not known statically."""
    if not isinstance(info, PrimInfo):
        raise ShapeError(f"{op_name(call)}: {what} must be a scalar (PrimValue), got {type(info).__name__}")
    if info.dtype not in INT_DTYPES:
        raise ShapeError(f"{op_name(call)}: {what} must be an integer scalar, got {info.dtype}")
    return info.value


def prod(dims: Iterable[IntLike]) -> PrimExpr:
    out: PrimExpr = S.IntImm(1)
    for d in dims:
        out = S.mul(out, d)
    return out


def shape_str(dims: Sequence[PrimExpr] | None) -> str:
    if dims is None:
        return "(?)"
    inner = ", ".join(S.to_str(d) for d in dims)
    return f"({inner},)" if len(dims) == 1 else f"({inner})"


def info_str(info: TensorInfo) -> str:
    """`(n, 64) float32`, or `ndim=2 float32` when the shape is unknown; for error messages."""
    dims = shape_str(info.shape) if info.shape is not None else f"ndim={info.ndim if info.ndim >= 0 else '?'}"
    return f"{dims} {info.dtype or '?'}"


def normalize_axes(call: Call, axes: Sequence[int], ndim: int) -> tuple[int, ...]:
    """Axes in [0, ndim), each once, or a ShapeError naming the op."""
    out = tuple(normalize_axis(call, a, ndim) for a in axes)
    if len(set(out)) != len(out):
        raise ShapeError(f"{op_name(call)}: repeated axis in {tuple(axes)}")
    return out


def is_int_dtype(dtype: str | None) -> bool:
    return dtype in INT_DTYPES
