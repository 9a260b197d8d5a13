"""Constant folding: a pure call whose operands are all constants is computed at build time.

    c: Tensor[(4,), "float32"] = call_tir(exp, (const([0.0, 1.0, 2.0, 3.0], "float32"),), ...)
    d = add(x, c)                        ->  d = add(x, const([1.0, 2.7182817, ...], "float32"))

The value comes from the interpreter (the one definition of every op and tensor program), so
folding cannot disagree with running. Uses of the folded var read the constant; the binding
stays only when it is a dataflow block's output. Results above `max_elements` stay computed at
run time (the artifact would carry them), as do library calls (they may read state).
"""

from __future__ import annotations

import numpy as np

from llm_deploy.compiler import shape as S
from llm_deploy.compiler.expr import (
    Binding,
    BindingBlock,
    Call,
    Constant,
    DataflowVar,
    Expr,
    Function,
    GlobalVar,
    Op,
    PrimValue,
    SeqExpr,
    ShapeExpr,
    StringImm,
    Tuple,
    Var,
    VarBinding,
)
from llm_deploy.compiler.functor import ExprMutator
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.passes.dce import is_pure_value
from llm_deploy.compiler.struct_info import TensorInfo

MAX_ELEMENTS = 1 << 16


def fold_constant(mod: IRModule, max_elements: int = MAX_ELEMENTS) -> IRModule:
    funcs = {}
    for name, f in mod.items():
        funcs[name] = _Fold(mod, max_elements).visit_function(f) if isinstance(f, Function) else f
    out = IRModule(funcs, dict(mod.attrs.items()))
    return mod if out == mod else out


def _is_const(e: Expr) -> bool:
    match e:
        case Constant() | StringImm():
            return True
        case PrimValue(value):
            return isinstance(value, S.IntImm)
        case ShapeExpr(values):
            return all(isinstance(v, S.IntImm) for v in values)
        case Tuple(fields):
            return all(_is_const(f) for f in fields)
    return False


class _Fold(ExprMutator):
    def __init__(self, mod: IRModule, max_elements: int):
        super().__init__()
        self.mod = mod
        self.max_elements = max_elements

    def visit_binding(self, binding: Binding) -> list[Binding]:
        (new,) = super().visit_binding(binding)
        data = self._evaluate(new)
        if data is None:
            return [new]
        const = Constant(data)
        self.var_remap[new.var.name] = const
        return [] if isinstance(new.var, DataflowVar) else [VarBinding(new.var, const)]

    def _evaluate(self, b: Binding) -> np.ndarray | None:
        value, info = b.value, b.var.info
        if not isinstance(b, VarBinding) or not isinstance(value, Call) or not isinstance(info, TensorInfo):
            return None
        callee = value.op
        if isinstance(callee, Op) and callee.name in ("call_extern", "call_extern_pure", "call_extern_value"):
            return None
        if not isinstance(callee, Op) or not is_pure_value(value, self.mod):
            return None
        operands = value.args[1:] if callee.name == "call_tir" else value.args
        if callee.name == "call_tir" and not isinstance(value.args[0], GlobalVar):
            return None
        if not all(_is_const(a) for a in operands):
            return None
        if info.shape is None or not all(isinstance(d, S.IntImm) for d in info.shape):
            return None
        if int(np.prod([d.value for d in info.shape])) > self.max_elements:
            return None
        from llm_deploy.compiler.interpreter import Interpreter

        r = Var("r", info)
        probe = Function((), SeqExpr((BindingBlock((VarBinding(r, value),)),), r), info)
        result = Interpreter(self.mod.with_function("__fold_constant__", probe)).run("__fold_constant__")
        return np.asarray(result)
