"""Reshapes become views: a tensor program that only copies its input in row-major order is
replaced by a `reshape` of the input, which the VM runs as a view of the same storage.

    q: Tensor[(n, 9, 64), "float32"] = call_tir(reshape3, (lv,), out_sinfo=Tensor[(n, 9, 64), "float32"])
becomes
    q: Tensor[(n, 9, 64), "float32"] = reshape(lv, shape(n, 9, 64))

Which programs qualify is read from their loops (`pattern.is_reshape`), so squeeze, expand_dims
and flatten lowerings qualify as well: no kernel runs, no memory moves, and fusion sees one
operand fewer to carry through index arithmetic. TVM does the same (RewriteDataflowReshape).
"""

from __future__ import annotations

from llm_deploy.compiler import tir
from llm_deploy.compiler.expr import Binding, Call, GlobalVar, Op, ShapeExpr, Tuple, VarBinding, info_of
from llm_deploy.compiler.functor import ExprMutator
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.ops import manipulate
from llm_deploy.compiler.pattern import is_reshape
from llm_deploy.compiler.struct_info import TensorInfo


def rewrite_reshape(mod: IRModule) -> IRModule:
    copies = {name for name, f in mod.items() if isinstance(f, tir.PrimFunc) and is_reshape(f)}
    if not copies:
        return mod
    funcs = {}
    for name, f in mod.items():
        funcs[name] = _Rewrite(copies).visit_expr(f) if not isinstance(f, tir.PrimFunc) else f
    out = IRModule(funcs, dict(mod.attrs.items()))
    return mod if out == mod else out


class _Rewrite(ExprMutator):
    def __init__(self, copies: set[str]):
        super().__init__()
        self.copies = copies

    def visit_binding(self, binding: Binding) -> list[Binding]:
        (new,) = super().visit_binding(binding)
        value, info = new.value, new.var.info
        if not (
            isinstance(new, VarBinding)
            and isinstance(value, Call)
            and value.op == Op("call_tir")
            and isinstance(value.args[0], GlobalVar)
            and value.args[0].name in self.copies
            and isinstance(value.args[1], Tuple)
            and len(value.args[1].fields) == 1
            and isinstance(info, TensorInfo)
            and info.shape is not None
        ):
            return [new]
        (src,) = value.args[1].fields
        src_info = info_of(src)
        if not isinstance(src_info, TensorInfo) or src_info.dtype != info.dtype:
            return [new]
        return [VarBinding(new.var, manipulate.reshape(src, ShapeExpr(info.shape)))]
