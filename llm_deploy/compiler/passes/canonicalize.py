"""Canonicalize bindings: a var that only renames another var goes away.

    y = x                              uses of y read x
    y = match_cast(x, Tensor[(n, 4)])  the same, when x is already known to be (n, 4) and the cast
                                       binds no new symbolic var (a check that cannot fail)
    t = (a, b); y = t[1]               uses of y read b

A dataflow var never escapes its block: when `y` is the block's output and `x` a dataflow var
bound in the block, x's binding binds y instead (with x's struct info, at least as precise).
"""

from __future__ import annotations

from llm_deploy.compiler import struct_info as SI
from llm_deploy.compiler.expr import (
    Binding,
    BindingBlock,
    DataflowBlock,
    DataflowVar,
    Expr,
    Function,
    GetItem,
    MatchCast,
    Tuple,
    Var,
    VarBinding,
    info_of,
)
from llm_deploy.compiler.functor import ExprMutator
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.passes.legalize import function_analyzer

MAX_ROUNDS = 8


def canonicalize(mod: IRModule) -> IRModule:
    funcs = {}
    for name, f in mod.items():
        if isinstance(f, Function):
            for _ in range(MAX_ROUNDS):
                new = _Canonicalize(f).visit_function(f)
                if new == f:
                    break
                f = new
        funcs[name] = f
    out = IRModule(funcs, dict(mod.attrs.items()))
    return mod if out == mod else out


class _Canonicalize(ExprMutator):
    def __init__(self, func: Function):
        super().__init__()
        self.analyzer = function_analyzer(func)
        self.known: set[str] = set().union(*(SI.free_vars(p.info) for p in func.params))
        self.tuples: dict[str, Tuple] = {}

    def visit_binding(self, binding: Binding) -> list[Binding]:
        (new,) = super().visit_binding(binding)
        target = self._alias_of(new)
        if isinstance(new, MatchCast) and target is None:
            self.known |= SI.free_vars(new.info)
        if target is None:
            if isinstance(new.value, Tuple):
                self.tuples[new.var.name] = new.value
            return [new]
        var = new.var
        if isinstance(var, DataflowVar) or not isinstance(target, DataflowVar):
            self.var_remap[var.name] = target
            return []
        return [VarBinding(var, target)]  # an output alias: resolved by visit_block

    def _alias_of(self, b: Binding) -> Expr | None:
        value = b.value
        if isinstance(value, GetItem):
            tup = value.tuple_value
            fields = (
                tup.fields
                if isinstance(tup, Tuple)
                else getattr(self.tuples.get(getattr(tup, "name", "")), "fields", None)
            )
            if fields is not None:
                value = fields[value.index]
        if not isinstance(value, Var):
            return None
        if isinstance(b, MatchCast):
            trivial = SI.free_vars(b.info) <= self.known and SI.is_base_of(
                b.info, info_of(value), self.analyzer
            )
            return value if trivial else None
        return value

    def visit_block(self, block: BindingBlock) -> BindingBlock:
        out = super().visit_block(block)
        if not isinstance(out, DataflowBlock):
            return out
        bindings = list(out.bindings)
        bound = {b.var.name: i for i, b in enumerate(bindings)}
        for i, b in enumerate(bindings):
            x = b.value
            if not (isinstance(b, VarBinding) and isinstance(x, DataflowVar) and x.name in bound):
                continue
            if not isinstance(b.var, DataflowVar) and SI.is_base_of(b.var.info, x.info, self.analyzer):
                # x's binding binds the output var itself; later rounds rename x's uses.
                y = Var(b.var.name, x.info)
                j = bound[x.name]
                bindings[j] = _rebind(bindings[j], y)
                bindings[i] = None  # type: ignore[call-overload]
                for k, v in self.var_remap.items():
                    if isinstance(v, Var) and v.name == x.name:
                        self.var_remap[k] = y
                self.var_remap[b.var.name] = y
                self.var_remap[x.name] = y
                bound.pop(x.name)
        kept = [b for b in bindings if b is not None]
        return _Rename(self.var_remap).visit_block(DataflowBlock(tuple(kept)))


def _rebind(b: Binding, var: Var) -> Binding:
    return MatchCast(var, b.value, b.info) if isinstance(b, MatchCast) else VarBinding(var, b.value)


class _Rename(ExprMutator):
    def __init__(self, remap: dict[str, Var]):
        super().__init__()
        self.var_remap = dict(remap)
