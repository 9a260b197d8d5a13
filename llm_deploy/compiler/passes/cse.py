"""Common subexpression elimination: a pure call computed twice is computed once.

    a: Tensor[(n, 4), "float32"] = call_tir(exp, (x,), ...)
    b: Tensor[(n, 4), "float32"] = call_tir(exp, (x,), ...)     # uses of b now read a
    c = add(a, b)                                              -> c = add(a, a)

Two values are the same when they are structurally equal after earlier replacements (same op,
arguments, attributes, output info) and their vars have the same struct info. Impure calls and
match_casts are never shared. Scoping: a dataflow var is not visible after its block, so it is
forgotten there; when the duplicate is a block's output var and the original a dataflow var, the
duplicate becomes `b = a` (canonicalize then folds it).
"""

from __future__ import annotations

from llm_deploy.compiler.expr import (
    Binding,
    BindingBlock,
    Call,
    DataflowBlock,
    DataflowVar,
    Expr,
    Function,
    GetItem,
    SeqExpr,
    Tuple,
    VarBinding,
)
from llm_deploy.compiler.functor import ExprMutator
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.passes.dce import is_pure_value


def cse(mod: IRModule) -> IRModule:
    funcs = {}
    for name, f in mod.items():
        funcs[name] = _CSE(mod).visit_function(f) if isinstance(f, Function) else f
    out = IRModule(funcs, dict(mod.attrs.items()))
    return mod if out == mod else out


class _CSE(ExprMutator):
    def __init__(self, mod: IRModule):
        super().__init__()
        self.mod = mod
        self.seen: dict[Expr, object] = {}  # value -> the var that holds it

    def visit_seq(self, seq: SeqExpr) -> SeqExpr:
        saved = dict(self.seen)
        out = super().visit_seq(seq)
        self.seen = saved  # what a branch computed is not visible after it
        return out

    def visit_block(self, block: BindingBlock) -> BindingBlock:
        out = super().visit_block(block)
        if isinstance(block, DataflowBlock):
            self.seen = {k: v for k, v in self.seen.items() if not isinstance(v, DataflowVar)}
        return out

    def visit_binding(self, binding: Binding) -> list[Binding]:
        (new,) = super().visit_binding(binding)
        value = new.value
        if not isinstance(new, VarBinding) or not isinstance(value, (Call, Tuple, GetItem)):
            return [new]
        if isinstance(value, Call) and not is_pure_value(value, self.mod):
            return [new]
        prior = self.seen.get(value)
        var = new.var
        if prior is None or prior.info != var.info:
            self.seen.setdefault(value, var)
            return [new]
        if isinstance(var, DataflowVar) or not isinstance(prior, DataflowVar):
            self.var_remap[var.name] = prior
            return []
        return [VarBinding(var, prior)]
