"""Visitor and mutator bases for graph-level passes that carry scope or state.

A mutator rebuilds only what changed (unchanged subtrees keep their identity) and renames
uses of vars whose binding it replaced (`var_remap`), so a pass that changes a var's struct
info updates every later use.
"""

from __future__ import annotations

from llm_deploy.compiler.expr import (
    Binding,
    BindingBlock,
    Call,
    DataflowBlock,
    Expr,
    Function,
    GetItem,
    If,
    MatchCast,
    SeqExpr,
    Tuple,
    Var,
    VarBinding,
)


class ExprVisitor:
    def visit_expr(self, expr: Expr) -> None:
        match expr:
            case Call(op, args):
                self.visit_expr(op)
                for a in args:
                    self.visit_expr(a)
            case Tuple(fields):
                for f in fields:
                    self.visit_expr(f)
            case GetItem(t, _):
                self.visit_expr(t)
            case If(cond, then_branch, else_branch):
                self.visit_expr(cond)
                self.visit_expr(then_branch)
                self.visit_expr(else_branch)
            case SeqExpr(blocks, body):
                for b in blocks:
                    self.visit_block(b)
                self.visit_expr(body)
            case Function(params, body):
                for p in params:
                    self.visit_var_def(p)
                self.visit_expr(body)
            case Var():
                self.visit_var_use(expr)

    def visit_block(self, block: BindingBlock) -> None:
        for b in block.bindings:
            self.visit_binding(b)

    def visit_binding(self, binding: Binding) -> None:
        self.visit_expr(binding.value)
        self.visit_var_def(binding.var)

    def visit_var_def(self, var: Var) -> None:
        pass

    def visit_var_use(self, var: Var) -> None:
        pass


class ExprMutator:
    def __init__(self) -> None:
        self.var_remap: dict[str, Var] = {}

    def visit_expr(self, expr: Expr) -> Expr:
        match expr:
            case Var(name):
                return self.var_remap.get(name, expr)
            case Call(op, args, attrs, sinfo_args):
                new_op = self.visit_expr(op)
                new_args = tuple(self.visit_expr(a) for a in args)
                if new_op is op and all(x is y for x, y in zip(new_args, args)):
                    return expr
                return Call(new_op, new_args, attrs, sinfo_args)
            case Tuple(fields):
                new_fields = tuple(self.visit_expr(f) for f in fields)
                return expr if all(x is y for x, y in zip(new_fields, fields)) else Tuple(new_fields)
            case GetItem(t, i):
                nt = self.visit_expr(t)
                return expr if nt is t else GetItem(nt, i)
            case If(cond, then_branch, else_branch):
                return If(self.visit_expr(cond), self.visit_seq(then_branch), self.visit_seq(else_branch))
            case SeqExpr():
                return self.visit_seq(expr)
            case Function():
                return self.visit_function(expr)
        return expr

    def visit_function(self, func: Function) -> Function:
        body = self.visit_seq(func.body)
        params = tuple(self.var_remap.get(p.name, p) for p in func.params)
        if body is func.body and params == func.params:
            return func
        return Function(params, body, func.ret_info, func.pure, func.attrs)

    def visit_seq(self, seq: SeqExpr) -> SeqExpr:
        blocks = tuple(self.visit_block(b) for b in seq.blocks)
        blocks = tuple(b for b in blocks if b.bindings)
        body = self.visit_expr(seq.body)
        if (
            body is seq.body
            and len(blocks) == len(seq.blocks)
            and all(x is y for x, y in zip(blocks, seq.blocks))
        ):
            return seq
        return SeqExpr(blocks, body)

    def visit_block(self, block: BindingBlock) -> BindingBlock:
        out: list[Binding] = []
        changed = False
        for b in block.bindings:
            new = self.visit_binding(b)
            changed |= len(new) != 1 or new[0] is not b
            out.extend(new)
        if not changed:
            return block
        return type(block)(tuple(out)) if isinstance(block, DataflowBlock) else BindingBlock(tuple(out))

    def visit_binding(self, binding: Binding) -> list[Binding]:
        """Return the bindings that replace `binding` (none to drop it, several to expand it)."""
        value = self.visit_expr(binding.value)
        if value is binding.value:
            return [binding]
        if isinstance(binding, MatchCast):
            return [MatchCast(binding.var, value, binding.info)]
        return [VarBinding(binding.var, value)]
