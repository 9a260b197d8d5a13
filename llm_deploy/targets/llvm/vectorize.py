"""What a `vectorized` loop may become: the static analysis behind emitting its body on vectors.

TVM's VectorizeLoop, reduced to what the codegen needs. Inside the loop over `v`, every value is
either *uniform* (the same for all lanes: emitted once as a scalar, broadcast when combined with
a vector) or *varying* (a `<lanes x T>` vector). A memory access whose flat offset is `v + rest`
with a uniform `rest` is contiguous (one vector load/store); one whose offset does not depend on
a varying value is a scalar access; anything else is a gather/scatter, lane by lane.

A loop whose body branches on a varying condition, allocates scratch memory (one copy per lane),
or holds a parallel or vectorized loop cannot be run as one vector body; it stays a scalar loop
(and an inner vectorized loop is vectorized on its own).

As in TVM, the schedule promises that iterations of a vectorized loop do not depend on each
other through memory: the vector body runs each statement for all lanes before the next one.
"""

from __future__ import annotations

from collections.abc import Iterator

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T


def linear_coeff(e: S.PrimExpr, v: str) -> int | None:
    """c when `e == c * v + rest` with `v` absent from `rest`; None when `e` is not linear in v."""
    match e:
        case S.IntImm():
            return 0
        case S.SymVar(name):
            return 1 if name == v else 0
        case S.Sum(terms, _):
            coeff = 0
            for mono, c in terms:
                if mono == ((S.SymVar(v), 1),):
                    coeff = c
                elif any(v in S.free_vars(atom) for atom, _ in mono):
                    return None
            return coeff
    return None if v in S.free_vars(e) else 0


def sub_values(e: T.Value) -> tuple[T.Value, ...]:
    match e:
        case T.Load(_, indices):
            return indices
        case T.Binary(_, a, b):
            return (a, b)
        case T.Intrin(_, args):
            return args
        case T.Cast(_, value):
            return (value,)
        case T.Select(c, a, b):
            return (c, a, b)
    return ()


def walk_values(e: T.Value) -> Iterator[T.Value]:
    yield e
    for s in sub_values(e):
        yield from walk_values(s)


def varies(e: T.Value, varying: set[str]) -> bool:
    """Whether `e` may differ between lanes, given the names of the varying index variables."""
    if isinstance(e, S.PrimExpr):
        return bool(S.free_vars(e) & varying)
    return any(varies(s, varying) for s in sub_values(e))


def stmt_values(s: T.Stmt) -> Iterator[T.Value]:
    """Every value expression directly in `s` (not in nested statements)."""
    match s:
        case T.For(_, extent, _):
            yield extent
        case T.Store(_, indices, value):
            yield from indices
            yield value
        case T.Let(_, value, _):
            yield value
        case T.IfThenElse(cond, _, _):
            yield cond


def child_stmts(s: T.Stmt) -> tuple[T.Stmt, ...]:
    match s:
        case T.For(_, _, body) | T.Let(_, _, body) | T.Allocate(_, body):
            return (body,)
        case T.IfThenElse(_, then_body, else_body):
            return (then_body,) if else_body is None else (then_body, else_body)
        case T.Seq(stmts):
            return stmts
    return ()


def walk_stmts(s: T.Stmt) -> Iterator[T.Stmt]:
    yield s
    for c in child_stmts(s):
        yield from walk_stmts(c)


def why_not_vectorizable(loop: T.For) -> str | None:
    """None if the loop's body can be emitted once on vectors, else the reason it cannot."""
    return _check(loop.body, {loop.var.name})


def _check(s: T.Stmt, varying: set[str]) -> str | None:
    match s:
        case T.For(var, extent, body, kind):
            if kind in ("parallel", "vectorized", "thread"):
                return f"it contains a {kind} loop over {var.name}"
            if varies(extent, varying):
                return f"the extent of the loop over {var.name} differs between lanes"
            return _check(body, varying)
        case T.Let(var, value, body):
            return _check(body, varying | {var.name} if varies(value, varying) else varying)
        case T.IfThenElse(cond, _, _):
            if varies(cond, varying):
                return "it branches on a condition that differs between lanes"
        case T.Allocate(buffer, _):
            return f"it allocates {buffer.name}, which would need one copy per lane"
    for c in child_stmts(s):
        reason = _check(c, varying)
        if reason:
            return reason
    return None


def widest_bits(loop: T.For) -> int:
    """The widest element type the body loads, stores, casts to or computes in (index math aside)."""
    from llm_deploy.targets.llvm.dtypes import dtype

    bits = 8
    for s in walk_stmts(loop.body):
        if isinstance(s, T.Store):
            bits = max(bits, dtype(s.buffer.dtype).bits)
        for v in stmt_values(s):
            for e in walk_values(v):
                if isinstance(e, (T.Load, T.Cast, T.Imm)):
                    bits = max(bits, dtype(T.dtype_of(e)).bits)
    return bits
