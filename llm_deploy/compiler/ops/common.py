"""Deduction helpers shared by the op families: operand checks and symbolic broadcasting."""

from __future__ import annotations

from llm_deploy.compiler import shape as S
from llm_deploy.compiler.expr import Call
from llm_deploy.compiler.ops.registry import InferContext, ShapeError
from llm_deploy.compiler.shape import PrimExpr
from llm_deploy.compiler.struct_info import StructInfo, TensorInfo


def op_name(call: Call) -> str:
    name = getattr(call.op, "name", None)
    return name if name is not None else type(call.op).__name__


def tensor_args(call: Call, infos: list[StructInfo], count: int | None = None) -> list[TensorInfo]:
    """The operands as TensorInfo, or a ShapeError naming the op and the offending operand."""
    name = op_name(call)
    if count is not None and len(infos) != count:
        raise ShapeError(f"{name} takes {count} operand(s), got {len(infos)}")
    for i, info in enumerate(infos):
        if not isinstance(info, TensorInfo):
            raise ShapeError(f"{name}: operand {i} must be a tensor, got {type(info).__name__}")
    return list(infos)  # type: ignore[return-value]


def same_dtype(call: Call, *infos: TensorInfo) -> str | None:
    dtypes = {i.dtype for i in infos if i.dtype is not None}
    if len(dtypes) > 1:
        raise ShapeError(
            f"{op_name(call)}: operand dtypes differ ({', '.join(sorted(dtypes))}); use astype first"
        )
    return dtypes.pop() if dtypes else None


def dims_conflict(a: PrimExpr, b: PrimExpr, ctx: InferContext) -> bool:
    """True when a != b is proven (constants that differ, or the analyzer shows it)."""
    return ctx.analyzer.can_prove_ne(a, b)


def broadcast_dim(call: Call, a: PrimExpr, b: PrimExpr, axis: int, ctx: InferContext) -> PrimExpr | None:
    """The broadcast of two dims, None when it cannot be known statically."""
    if ctx.analyzer.can_prove_equal(a, b):
        return a
    if a == S.IntImm(1):
        return b
    if b == S.IntImm(1):
        return a
    if isinstance(a, S.IntImm) and isinstance(b, S.IntImm):
        raise ShapeError(f"{op_name(call)}: cannot broadcast dim {axis} ({a} vs {b})")
    return None


def broadcast(
    call: Call, infos: list[TensorInfo], ctx: InferContext
) -> tuple[tuple[PrimExpr, ...] | None, int]:
    """numpy broadcasting of several operands: (shape or None, ndim or -1)."""
    if any(i.ndim == -1 for i in infos):
        return None, -1
    ndim = max(i.ndim for i in infos)
    if any(i.shape is None for i in infos):
        return None, ndim
    out: list[PrimExpr] = []
    for k in range(ndim):
        axis = k - ndim  # negative, aligned from the right
        dims = [i.shape[axis] for i in infos if i.ndim >= -axis]
        dim: PrimExpr | None = dims[0]
        for d in dims[1:]:
            if dim is None:
                break
            try:
                dim = broadcast_dim(call, dim, d, k, ctx)
            except ShapeError:
                shapes = " and ".join(str(tuple(S.to_str(x) for x in i.shape)) for i in infos)
                raise ShapeError(
                    f"{op_name(call)}: cannot broadcast shapes {shapes} (dim {k}: {dim} vs {d})"
                ) from None
        if dim is None:
            return None, ndim
        out.append(dim)
    return tuple(out), ndim


def normalize_axis(call: Call, axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ShapeError(f"{op_name(call)}: axis {axis} out of range for a tensor of rank {ndim}")
    return axis % ndim


def check_dims_equal(call: Call, a: PrimExpr, b: PrimExpr, what: str, ctx: InferContext) -> None:
    if dims_conflict(a, b, ctx):
        raise ShapeError(f"{op_name(call)}: {what} must match ({S.to_str(a)} vs {S.to_str(b)})")
