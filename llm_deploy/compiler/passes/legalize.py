"""Legalize: lower graph-level op calls into calls of tensor programs of the same module.

    x: Tensor[(n, 576), "float32"] = add(a, b)
becomes
    x: Tensor[(n, 576), "float32"] = call_tir(add, (a, b), out=Tensor[(n, 576), "float32"])
with `add` a PrimFunc over symbolic n added to the module. The lowering of each op is
registered beside its deduction (`ops/lower_*.py`). Ops without a lowering, or calls a lowering
declines (unknown shapes), stay high-level: partial lowering is normal. Identical PrimFuncs are
shared by every call site (structural equality); different ones for the same op are named
`add`, `add1`, ... Every binding keeps its var, so its struct info is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from llm_deploy.compiler import struct_info as SI
from llm_deploy.compiler import tir
from llm_deploy.compiler.expr import Call, Expr, Function, GlobalVar, Op, VarBinding, info_of
from llm_deploy.compiler.functor import ExprMutator, ExprVisitor
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.ops import builtin
from llm_deploy.compiler.ops.lower_common import Lowered
from llm_deploy.compiler.ops.registry import OPS, InferContext, get_op
from llm_deploy.compiler.shape import Analyzer
from llm_deploy.compiler.struct_info import StructInfo

# A chooser sees each op call with its operand infos and the bound var's info, and returns the
# replacement value, or None to keep the call.
Chooser = Callable[[Call, list[StructInfo], StructInfo, "ModuleFuncs"], Expr | None]


class ModuleFuncs:
    """The module's functions as a pass adds to them, sharing structurally equal PrimFuncs."""

    def __init__(self, mod: IRModule):
        self.funcs = dict(mod.functions())
        self.attrs = dict(mod.attrs.items())
        self.existing: dict[tir.PrimFunc, str] = {}
        self.analyzer = Analyzer()  # bounds of the symbolic vars of the function being rewritten
        for name, f in self.funcs.items():
            if isinstance(f, tir.PrimFunc):
                self.existing.setdefault(f, name)

    def add_prim_func(self, func: tir.PrimFunc, hint: str) -> GlobalVar:
        name = self.existing.get(func)
        if name is None:
            name = hint
            i = 0
            while name in self.funcs:
                i += 1
                name = f"{hint}{i}"
            self.funcs[name] = func
            self.existing[func] = name
        return GlobalVar(name)

    def module(self) -> IRModule:
        return IRModule(self.funcs, self.attrs)


def lower_call(call: Call, infos: list[StructInfo], out_info: StructInfo, funcs: ModuleFuncs) -> Expr | None:
    """The call_tir that replaces `call`, or None when its op has no lowering for this call."""
    assert isinstance(call.op, Op)
    op = get_op(call.op.name)
    if op.legalize is None:
        return None
    res: Lowered | None = op.legalize(call, infos, out_info, InferContext(funcs.analyzer, funcs.module()))
    if res is None:
        return None
    gv = funcs.add_prim_func(res.func, res.name or op.name)
    return builtin.call_tir(gv, res.args, out_info, res.shape_args)


class _Rewriter(ExprMutator):
    def __init__(self, choose: Chooser, funcs: ModuleFuncs):
        super().__init__()
        self.choose = choose
        self.funcs = funcs

    def visit_binding(self, binding):
        value = binding.value
        if isinstance(binding, VarBinding) and isinstance(value, Call) and isinstance(value.op, Op):
            if value.op.name in OPS and value.op.name not in _CROSS_LEVEL:
                infos = [info_of(a) for a in value.args]
                new = self.choose(value, infos, binding.var.info, self.funcs)
                if new is not None:
                    return [VarBinding(binding.var, new)]
        return super().visit_binding(binding)


_CROSS_LEVEL = ("call_tir", "call_extern", "call_extern_pure")


def rewrite_calls(mod: IRModule, choose: Chooser) -> IRModule:
    """Apply `choose` to every op call of every graph function (the engine of legalize/dispatch)."""
    funcs = ModuleFuncs(mod)
    for name, f in list(funcs.funcs.items()):
        if isinstance(f, Function):
            funcs.analyzer = function_analyzer(f)
            new = _Rewriter(choose, funcs).visit_function(f)
            if new is not f:
                funcs.funcs[name] = new
    return funcs.module()


def function_analyzer(func: Function) -> Analyzer:
    """What the builder knew while deducing: every symbolic dim >= 0, and the `bounds` attr."""
    analyzer = Analyzer()
    infos = [p.info for p in func.params]

    class _Infos(ExprVisitor):
        def visit_var_def(self, var) -> None:
            infos.append(var.info)

    _Infos().visit_expr(func)
    for name in set().union(*(SI.free_vars(i) for i in infos)):
        analyzer.bind(name, 0)
    for name, (lo, hi) in dict(func.attrs.get("bounds", {})).items():
        analyzer.bind(name, lo, hi)
    return analyzer


def legalize(mod: IRModule, ops: Iterable[str] | None = None) -> IRModule:
    """Lower every op call (or only those of the ops named in `ops`) that has a lowering."""
    selected = None if ops is None else set(ops)
    if selected is not None:
        unknown = sorted(selected - OPS.keys())
        if unknown:
            raise KeyError(f"legalize: unknown op(s) {unknown}")

    def choose(call: Call, infos, out_info, funcs: ModuleFuncs) -> Expr | None:
        if selected is not None and call.op.name not in selected:  # type: ignore[attr-defined]
            return None
        return lower_call(call, infos, out_info, funcs)

    return rewrite_calls(mod, choose)


def has_lowering(op_name: str) -> bool:
    return get_op(op_name).legalize is not None
