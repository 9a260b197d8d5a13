"""Dead code elimination: drop pure bindings nobody reads, and functions nothing calls.

    lv: Tensor[(n, 4), "float32"] = call_tir(exp, (x,), ...)     # lv never used: dropped
    gv: Tensor[(n, 4), "float32"] = call_extern(extern("print"), (x,), ...)   # impure: kept

A binding stays when its value is impure (an impure op or graph function) or a match_cast (a
run-time check). Functions: the graph functions that are not fusion groups (`primitive` attr)
are the module's entry points; a function (graph, tensor program or extern) that no entry point
reaches is dropped. A module without entry points keeps all its functions.
"""

from __future__ import annotations

from llm_deploy.compiler.expr import (
    BindingBlock,
    Call,
    DataflowBlock,
    Expr,
    ExternFunc,
    Function,
    GlobalVar,
    If,
    MatchCast,
    Op,
    SeqExpr,
    Var,
    VarBinding,
)
from llm_deploy.compiler.functor import ExprVisitor
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.ops.registry import OPS


def dce(mod: IRModule) -> IRModule:
    funcs = {name: _function(f, mod) if isinstance(f, Function) else f for name, f in mod.items()}
    entries = [n for n, f in funcs.items() if isinstance(f, Function) and not is_primitive(f)]
    if entries:
        keep = _reachable(funcs, entries)
        funcs = {n: f for n, f in funcs.items() if n in keep}
    out = IRModule(funcs, dict(mod.attrs.items()))
    return mod if out == mod else out


def is_primitive(f: Function) -> bool:
    """A fusion group outlined by fuse_ops: called by its caller, never an entry point."""
    return bool(f.attrs.get("primitive", False))


def is_pure_value(value: Expr, mod: IRModule | dict) -> bool:
    """Evaluating `value` has no effect besides its result (so it may be dropped or shared)."""
    match value:
        case Call(op=Op(name)):
            return name in OPS and OPS[name].pure
        case Call(op=GlobalVar(name)):
            f = mod[name] if name in mod else None
            return isinstance(f, Function) and f.pure
        case Call():
            return False
        case If(_, a, b):
            return all(is_pure_value(x.value, mod) for blk in (*a.blocks, *b.blocks) for x in blk.bindings)
    return True


class _Uses(ExprVisitor):
    def __init__(self) -> None:
        self.names: set[str] = set()
        self.globals: set[str] = set()

    def visit_var_use(self, var: Var) -> None:
        self.names.add(var.name)

    def visit_expr(self, expr: Expr) -> None:
        if isinstance(expr, (GlobalVar, ExternFunc)):
            self.globals.add(expr.name)
        super().visit_expr(expr)


def used_vars(expr: Expr) -> set[str]:
    v = _Uses()
    v.visit_expr(expr)
    return v.names


def _function(f: Function, mod: IRModule) -> Function:
    body = _seq(f.body, mod)
    return f if body == f.body else Function(f.params, body, f.ret_info, f.pure, f.attrs)


def _seq(seq: SeqExpr, mod: IRModule) -> SeqExpr:
    live = used_vars(seq.body)
    blocks: list[BindingBlock] = []
    for block in reversed(seq.blocks):
        kept = []
        for b in reversed(block.bindings):
            value = b.value
            if isinstance(value, If):
                value = If(value.cond, _seq(value.then_branch, mod), _seq(value.else_branch, mod))
            needed = b.var.name in live or isinstance(b, MatchCast) or not is_pure_value(value, mod)
            if not needed:
                continue
            live |= used_vars(value)
            kept.append(b if value is b.value else VarBinding(b.var, value))
        if kept:
            kept.reverse()
            blocks.append(
                DataflowBlock(tuple(kept)) if isinstance(block, DataflowBlock) else BindingBlock(tuple(kept))
            )
    blocks.reverse()
    return SeqExpr(tuple(blocks), seq.body)


def _reachable(funcs: dict, entries: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name in seen or name not in funcs:
            continue
        seen.add(name)
        f = funcs[name]
        if isinstance(f, Function):
            v = _Uses()
            v.visit_expr(f)
            todo.extend(v.globals)
    return seen
