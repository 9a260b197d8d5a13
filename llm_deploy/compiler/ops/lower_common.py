"""What every lowering shares: the result type, te placeholders from struct info, indexing helpers.

A lowering is `lower(call, arg_infos, out_info, ctx) -> Lowered | None`, registered beside the
op's deduction with `register_legalize(name)`. It returns None when it cannot lower this call
(an unknown shape, an unsupported attribute): the op then stays high-level, which is normal.
The legalize pass turns a `Lowered` into `call_tir(gv, args, out_info, shape_args)`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import te, tir
from llm_deploy.compiler.expr import Expr, GetItem, Tuple
from llm_deploy.compiler.shape import PrimExpr, SymVar
from llm_deploy.compiler.struct_info import StructInfo, TensorInfo, TupleInfo


@dataclass(frozen=True)
class Lowered:
    """A tensor program for one call: `func(*args, *outputs, *shape_args)` in DPS.

    `shape_args` are the caller's values for `func.scalars`, in order; `name` is the PrimFunc's
    name hint in the module (the op's name when empty).
    """

    func: tir.PrimFunc
    args: tuple[Expr, ...]
    shape_args: tuple[PrimExpr, ...] = ()
    name: str = ""


def known(info: StructInfo) -> TensorInfo | None:
    """The info as a tensor of known shape and dtype, or None (then nothing can be lowered)."""
    if isinstance(info, TensorInfo) and info.shape is not None and info.dtype is not None:
        return info
    return None


def all_known(infos: Sequence[StructInfo]) -> list[TensorInfo] | None:
    out = [known(i) for i in infos]
    return None if any(i is None for i in out) else out  # type: ignore[return-value]


INPUT_NAMES = "ABCDEFGH"


def placeholders(infos: Sequence[TensorInfo]) -> list[te.Tensor]:
    return [te.placeholder(i.shape, i.dtype, INPUT_NAMES[k]) for k, i in enumerate(infos)]  # type: ignore[arg-type]


def output_names(count: int) -> list[str]:
    return ["Out"] if count == 1 else [f"Out{k}" for k in range(count)]


def lowered(
    args: Sequence[Expr],
    inputs: Sequence[te.Tensor],
    outputs: Sequence[te.Tensor],
    scalars: Mapping[str, PrimExpr] | None = None,
    name: str = "",
) -> Lowered:
    """Build the PrimFunc of `inputs` -> `outputs`; `scalars` maps a scalar param name to the
    caller's value (params not in it are symbolic vars the caller has under the same name)."""
    scalars = dict(scalars or {})
    func = te.create_prim_func([*inputs, *outputs], [SymVar(k) for k in scalars])
    shape_args = tuple(scalars.get(v.name, v) for v in func.scalars)
    return Lowered(func, tuple(args), shape_args, name)


def tensor_fields(expr: Expr, info: StructInfo) -> tuple[list[Expr], list[StructInfo]]:
    """The tensors of a tuple operand (a Tuple, or a var of TupleInfo read field by field)."""
    if isinstance(expr, Tuple):
        return list(expr.fields), list(info.fields)  # type: ignore[attr-defined]
    assert isinstance(info, TupleInfo)
    return [GetItem(expr, k) for k in range(len(info.fields))], list(info.fields)


def broadcast_index(t: te.Tensor, out_shape: Sequence[PrimExpr], idx: Sequence[PrimExpr]) -> te.TensorLoad:
    """t read at an output index under numpy broadcasting (aligned right; a 1 dim reads index 0)."""
    off = len(out_shape) - t.ndim
    return t[
        tuple(
            S.IntImm(0) if d == 1 and out_shape[off + k] != 1 else idx[off + k] for k, d in enumerate(t.shape)
        )
    ]


def wide_dtype(dtype: str) -> str:
    """Statistics are computed in float32 at least (as the interpreter and transformers do)."""
    return "float32" if dtype in ("float16", "bfloat16") else dtype


def row_major_strides(shape: Sequence[PrimExpr]) -> list[PrimExpr]:
    strides: list[PrimExpr] = []
    acc: PrimExpr = S.IntImm(1)
    for d in reversed(shape):
        strides.append(acc)
        acc = S.mul(acc, d)
    return strides[::-1]


def flat_index(shape: Sequence[PrimExpr], idx: Sequence[PrimExpr]) -> PrimExpr:
    out: PrimExpr = S.IntImm(0)
    for i, s in zip(idx, row_major_strides(shape)):
        out = S.add(out, S.mul(i, s))
    return out


def unravel(flat: PrimExpr, shape: Sequence[PrimExpr]) -> tuple[PrimExpr, ...]:
    """The row-major index of element `flat` of a tensor of `shape`."""
    out = []
    for k, s in enumerate(row_major_strides(shape)):
        q = S.floordiv(flat, s) if s != 1 else flat
        out.append(S.floormod(q, shape[k]) if k > 0 else q)
    return tuple(out)


def fresh_scalar(hint: str, infos: Sequence[StructInfo]) -> str:
    """A scalar param name that no symbolic var of the operands' shapes already uses."""
    used: set[str] = set()
    for info in infos:
        if isinstance(info, TensorInfo) and info.shape is not None:
            for d in info.shape:
                used |= S.free_vars(d)
    name, k = hint, 0
    while name in used:
        k += 1
        name = f"{hint}{k}"
    return name
