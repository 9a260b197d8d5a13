"""Walking tir statements and values (what the codegen and the GPU rules both need)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T

# The generic walkers are the schedule layer's; re-exported for the GPU codegens.
from llm_deploy.compiler.schedule.ir import children, stmt_values, value_children, walk, walk_values  # noqa: F401
from llm_deploy.compiler.shape import PrimExpr


def loads(s: T.Stmt) -> Iterator[T.Load]:
    """Every load anywhere in `s`."""
    for x in walk(s):
        for v in stmt_values(x):
            for e in walk_values(v):
                if isinstance(e, T.Load):
                    yield e


def stores(s: T.Stmt) -> Iterator[T.Store]:
    return (x for x in walk(s) if isinstance(x, T.Store))


def subst_value(e: T.Value, mapping: dict[str, PrimExpr]) -> T.Value:
    """`e` with symbolic variables replaced by index expressions."""
    if not mapping:
        return e
    match e:
        case PrimExpr():
            return S.substitute(e, mapping) if S.free_vars(e) & mapping.keys() else e
        case T.Load(buffer, indices):
            return T.Load(buffer, tuple(subst_value(i, mapping) for i in indices))
        case T.Binary(op, a, b):
            return T.Binary(op, subst_value(a, mapping), subst_value(b, mapping))
        case T.Intrin(name, args):
            return T.Intrin(name, tuple(subst_value(a, mapping) for a in args))
        case T.Cast(dtype, value):
            return T.Cast(dtype, subst_value(value, mapping))
        case T.Select(c, a, b):
            return T.Select(subst_value(c, mapping), subst_value(a, mapping), subst_value(b, mapping))
    return e


def subst(s: T.Stmt, mapping: dict[str, PrimExpr]) -> T.Stmt:
    """Replace free variables of `s` (binders of the same name shadow them)."""
    if not mapping:
        return s
    sv = lambda e: subst_value(e, mapping)  # noqa: E731
    match s:
        case T.For(var, extent, body):
            inner = {k: v for k, v in mapping.items() if k != var.name}
            return replace(s, extent=sv(extent), body=subst(body, inner))
        case T.Let(var, value, body):
            inner = {k: v for k, v in mapping.items() if k != var.name}
            return replace(s, value=sv(value), body=subst(body, inner))
        case T.Store(buffer, indices, value):
            return T.Store(buffer, tuple(sv(i) for i in indices), sv(value))
        case T.IfThenElse(cond, then_body, else_body):
            e = None if else_body is None else subst(else_body, mapping)
            return T.IfThenElse(sv(cond), subst(then_body, mapping), e)
        case T.Seq(stmts):
            return T.seq(*(subst(x, mapping) for x in stmts))
        case T.Allocate(buffer, body):
            return T.Allocate(buffer, subst(body, mapping))
    return s


def map_loads(e: T.Value, fn) -> T.Value:
    """`e` with each maximal subexpression for which `fn` returns a value replaced by it."""
    out = fn(e)
    if out is not None:
        return out
    match e:
        case T.Load(buffer, indices):
            return T.Load(buffer, tuple(map_loads(i, fn) if isinstance(i, T.TExpr) else i for i in indices))
        case T.Binary(op, a, b):
            return T.Binary(op, map_loads(a, fn), map_loads(b, fn))
        case T.Intrin(name, args):
            return T.Intrin(name, tuple(map_loads(a, fn) for a in args))
        case T.Cast(dtype, value):
            return T.Cast(dtype, map_loads(value, fn))
        case T.Select(c, a, b):
            return T.Select(map_loads(c, fn), map_loads(a, fn), map_loads(b, fn))
    return e


def free_names(e: T.Value) -> set[str]:
    """Symbolic variables a value reads (in its index math and nested loads)."""
    out: set[str] = set()
    for x in walk_values(e):
        if isinstance(x, PrimExpr):
            out |= S.free_vars(x)
    return out


def stmt_free_names(s: T.Stmt) -> set[str]:
    out: set[str] = set()
    for x in walk(s):
        for v in stmt_values(x):
            out |= free_names(v)
    return out
