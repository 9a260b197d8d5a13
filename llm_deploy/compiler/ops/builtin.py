"""Cross-level calls: `call_tir` (a tensor program of the module) and `call_extern` (a library).

Both are destination-passing: the caller allocates the output described by `out_info` (in
`sinfo_args`) and the callee writes into it. Symbolic values the callee needs that cannot be
read off its buffers' shapes travel in a ShapeExpr (`shape_args`).
"""

from __future__ import annotations

from collections.abc import Sequence

from llm_deploy.compiler.expr import Call, Expr, ExternFunc, GlobalVar, Op, ShapeExpr, Tuple
from llm_deploy.compiler.ops.registry import InferContext, ShapeError, register_op
from llm_deploy.compiler.shape import IntLike
from llm_deploy.compiler.struct_info import StructInfo, TupleInfo


def _infer_dps(call: Call, infos: list[StructInfo], ctx: InferContext) -> StructInfo:
    name = call.op.name  # type: ignore[attr-defined]
    if len(call.sinfo_args) != 1:
        raise ShapeError(f"{name} needs exactly one output struct info, got {len(call.sinfo_args)}")
    if len(infos) < 2 or not isinstance(infos[1], TupleInfo):
        raise ShapeError(f"{name}(callee, (args...), [shape_args]): the arguments must be a tuple")
    return call.sinfo_args[0]


register_op("call_tir")(_infer_dps)
register_op("call_extern", pure=False)(_infer_dps)
# A library call known to be pure may live inside dataflow blocks.
register_op("call_extern_pure")(_infer_dps)
# Not DPS: `fn(*args)` returns the value (a tensor or tuple of tensors the library already
# holds, e.g. the KV cache's pools), of sizes the caller cannot know; `out_info` says what it is,
# usually with unknown dims that a match_cast then names. Reads only, so pure.
register_op("call_extern_value")(_infer_dps)


def call_tir(
    func: GlobalVar, args: Sequence[Expr], out_info: StructInfo, shape_args: Sequence[IntLike] | None = None
) -> Call:
    operands: list[Expr] = [func, Tuple(tuple(args))]
    if shape_args:
        operands.append(ShapeExpr(tuple(shape_args)))
    return Call(Op("call_tir"), tuple(operands), sinfo_args=(out_info,))


def call_extern_value(name: str, args: Sequence[Expr], out_info: StructInfo) -> Call:
    return Call(Op("call_extern_value"), (ExternFunc(name), Tuple(tuple(args))), sinfo_args=(out_info,))


def call_extern(name: str, args: Sequence[Expr], out_info: StructInfo, pure: bool = False) -> Call:
    op = "call_extern_pure" if pure else "call_extern"
    return Call(Op(op), (ExternFunc(name), Tuple(tuple(args))), sinfo_args=(out_info,))
