"""Index simplification with the loops' ranges known (the analyzer's bound-driven rewrites)."""

from __future__ import annotations

from dataclasses import replace

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.shape import PrimExpr


def simplify_indices(f: T.PrimFunc) -> T.PrimFunc:
    """Simplify every index with the loops' ranges known: `(64*i1 + i2) // 576` is 0 when
    i1 < 9 and i2 < 64. A reshape's reads become contiguous, which vectorization needs."""
    an = S.Analyzer()
    for b in f.buffers:
        for d in b.shape:
            for v in S.free_vars(d):
                an.bind(v, 0)
    return replace(f, body=_simplify(f.body, an))


def _simplify(s: T.Stmt, an: S.Analyzer) -> T.Stmt:
    def idx(e: T.Value) -> T.Value:
        return an.simplify(e) if isinstance(e, PrimExpr) else _simplify_value(e, an)

    match s:
        case T.For(var, extent, body):
            hi = an.upper_bound(extent)
            inner = S.Analyzer(dict(an.bounds)).bind(var.name, 0, S.INF if hi is None else hi - 1)
            return replace(s, body=_simplify(body, inner))
        case T.Store(buffer, indices, value):
            return T.Store(buffer, tuple(idx(i) for i in indices), _simplify_value(value, an))
        case T.Let(var, value, body):
            return replace(s, value=_simplify_value(value, an), body=_simplify(body, an))
        case T.IfThenElse(cond, then_body, else_body):
            e = None if else_body is None else _simplify(else_body, an)
            return T.IfThenElse(_simplify_value(cond, an), _simplify(then_body, an), e)
        case T.Seq(stmts):
            return T.seq(*(_simplify(x, an) for x in stmts))
        case T.Allocate(buffer, body):
            return T.Allocate(buffer, _simplify(body, an))
    return s


def _simplify_value(e: T.Value, an: S.Analyzer) -> T.Value:
    match e:
        case PrimExpr():
            return an.simplify(e)
        case T.Load(buffer, indices):
            return T.Load(buffer, tuple(_simplify_value(i, an) for i in indices))
        case T.Binary(op, a, b):
            return T.Binary(op, _simplify_value(a, an), _simplify_value(b, an))
        case T.Intrin(name, args):
            return T.Intrin(name, tuple(_simplify_value(a, an) for a in args))
        case T.Cast(dtype, value):
            return T.Cast(dtype, _simplify_value(value, an))
        case T.Select(c, a, b):
            return T.Select(_simplify_value(c, an), _simplify_value(a, an), _simplify_value(b, an))
    return e
