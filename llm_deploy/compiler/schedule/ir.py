"""What every loop transform shares: finding loops, rebuilding statements, renaming, accesses.

Transforms address loops by the name of their variable, so the names bound in a PrimFunc (loop
and let variables, allocated buffers) must be unique; `unique_names` makes them so, and every
transform keeps them so (copies of a body get fresh names).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.shape import PrimExpr, SymVar


class ScheduleError(ValueError):
    """A transform that cannot apply here; the message names the loop and what was found."""


# ---------------------------------------------------------------------------------------------
# Walking


def children(s: T.Stmt) -> tuple[T.Stmt, ...]:
    match s:
        case T.For(_, _, body) | T.Let(_, _, body) | T.Allocate(_, body):
            return (body,)
        case T.IfThenElse(_, then_body, else_body):
            return (then_body,) if else_body is None else (then_body, else_body)
        case T.Seq(stmts):
            return stmts
    return ()


def walk(s: T.Stmt) -> Iterator[T.Stmt]:
    yield s
    for c in children(s):
        yield from walk(c)


def value_children(e: T.Value) -> tuple[T.Value, ...]:
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
    for c in value_children(e):
        yield from walk_values(c)


def stmt_values(s: T.Stmt) -> tuple[T.Value, ...]:
    """The value expressions directly in `s` (not in nested statements)."""
    match s:
        case T.For(_, extent, _):
            return (extent,)
        case T.Store(_, indices, value):
            return (*indices, value)
        case T.Let(_, value, _):
            return (value,)
        case T.IfThenElse(cond, _, _):
            return (cond,)
        case T.Allocate(buffer, _):
            return buffer.shape
    return ()


def loops(s: T.Stmt) -> Iterator[T.For]:
    return (x for x in walk(s) if isinstance(x, T.For))


def bound_names(s: T.Stmt) -> set[str]:
    """Loop and let variables and allocated buffers bound anywhere in `s`."""
    out: set[str] = set()
    for x in walk(s):
        match x:
            case T.For(var) | T.Let(var):
                out.add(var.name)
            case T.Allocate(buffer):
                out.add(buffer.name)
    return out


def func_names(f: T.PrimFunc) -> set[str]:
    """Every name a new binder must avoid: params, symbolic dims, and names bound in the body."""
    out = bound_names(f.body)
    for p in f.params:
        out.add(p.name)
        if isinstance(p, T.Buffer):
            for d in p.shape:
                out |= S.free_vars(d)
    return out


def fresh(hint: str, taken: set[str]) -> str:
    """`hint`, or `hint_1`, `hint_2`, ... whichever is free first; the result is added to `taken`."""
    name = hint
    for i in itertools.count(1):
        if name not in taken:
            break
        name = f"{hint}_{i}"
    taken.add(name)
    return name


# ---------------------------------------------------------------------------------------------
# Rebuilding


def map_stmt(s: T.Stmt, fn: Callable[[T.Stmt], T.Stmt | None]) -> T.Stmt:
    """Post-order rebuild: children first, then `fn(node)` (None keeps the rebuilt node)."""
    match s:
        case T.For(_, _, body) | T.Let(_, _, body) | T.Allocate(_, body):
            new = map_stmt(body, fn)
            s = s if new is body else replace(s, body=new)
        case T.IfThenElse(_, then_body, else_body):
            t = map_stmt(then_body, fn)
            e = None if else_body is None else map_stmt(else_body, fn)
            if t is not then_body or e is not else_body:
                s = replace(s, then_body=t, else_body=e)
        case T.Seq(stmts):
            new_stmts = tuple(map_stmt(x, fn) for x in stmts)
            if any(a is not b for a, b in zip(new_stmts, stmts)):
                s = T.seq(*new_stmts)
    out = fn(s)
    return s if out is None else out


def replace_loop(f: T.PrimFunc, name: str, fn: Callable[[T.For], T.Stmt]) -> T.PrimFunc:
    """`f` with the loop over `name` replaced by `fn(loop)`."""
    find_loop(f, name)
    body = map_stmt(f.body, lambda s: fn(s) if isinstance(s, T.For) and s.var.name == name else None)
    return replace(f, body=body)


def find_loop(f: T.PrimFunc | T.Stmt, name: str) -> T.For:
    body = f.body if isinstance(f, T.PrimFunc) else f
    found = [x for x in loops(body) if x.var.name == name]
    if len(found) != 1:
        names = sorted({x.var.name for x in loops(body)})
        what = "no loop" if not found else f"{len(found)} loops"
        raise ScheduleError(
            f"{what} over {name!r}; a transform needs exactly one (loops: {', '.join(names) or 'none'})"
        )
    return found[0]


def loop_path(f: T.PrimFunc | T.Stmt, name: str) -> list[T.For]:
    """The loops enclosing the loop over `name`, outermost first, ending with that loop."""
    body = f.body if isinstance(f, T.PrimFunc) else f

    def search(s: T.Stmt, path: list[T.For]) -> list[T.For] | None:
        if isinstance(s, T.For):
            path = [*path, s]
            if s.var.name == name:
                return path
        for c in children(s):
            found = search(c, path)
            if found is not None:
                return found
        return None

    found = search(body, [])
    if found is None:
        find_loop(body, name)  # raises with the loops there are
        raise AssertionError("unreachable")
    return found


def perfect_nest(loop: T.For) -> list[T.For]:
    """`loop` and the loops that are each the whole body of the previous one."""
    out = [loop]
    while isinstance(out[-1].body, T.For):
        out.append(out[-1].body)
    return out


# ---------------------------------------------------------------------------------------------
# Substitution and renaming


def subst_value(e: T.Value, mapping: dict[str, PrimExpr]) -> T.Value:
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
    """Replace free variables of `s` by expressions (binders of the same name shadow them)."""
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
            # Allocation shapes never depend on loop or let variables (the accesses carry the
            # buffer's shape too, so they could not change apart).
            return T.Allocate(buffer, subst(body, mapping))
    return s


def rewrite_buffer(
    s: T.Stmt | T.Value, name: str, new: T.Buffer, indices: Callable[[tuple], tuple] = lambda i: i
) -> T.Stmt | T.Value:
    """Every access to buffer `name` goes to `new` at `indices(old_indices)`."""

    def value(e: T.Value) -> T.Value:
        match e:
            case T.Load(buffer, idx):
                idx = tuple(value(i) for i in idx)
                return T.Load(new, indices(idx)) if buffer.name == name else T.Load(buffer, idx)
            case T.Binary(op, a, b):
                return T.Binary(op, value(a), value(b))
            case T.Intrin(n, args):
                return T.Intrin(n, tuple(value(a) for a in args))
            case T.Cast(dtype, v):
                return T.Cast(dtype, value(v))
            case T.Select(c, a, b):
                return T.Select(value(c), value(a), value(b))
        return e

    def stmt(x: T.Stmt) -> T.Stmt | None:
        match x:
            case T.Store(buffer, idx, v):
                target, idx = (new, indices(idx)) if buffer.name == name else (buffer, idx)
                return T.Store(target, idx, value(v))
            case T.Let(_, v, _):
                return replace(x, value=value(v))
            case T.IfThenElse(c, _, _):
                return replace(x, cond=value(c))
        return None

    if isinstance(s, T.Stmt):
        return map_stmt(s, stmt)
    return value(s)


def rename_bound(s: T.Stmt, taken: set[str]) -> T.Stmt:
    """A copy of `s` whose loop/let variables and allocations have fresh names (for duplicates)."""
    for old in sorted(bound_names(s)):
        new = fresh(old, taken)
        s = rename(s, old, new)
    return s


def rename(s: T.Stmt, old: str, new: str) -> T.Stmt:
    """Rename the variable or allocated buffer `old` bound in `s` (binder and uses)."""
    var = SymVar(new)

    def fn(x: T.Stmt) -> T.Stmt | None:
        match x:
            case T.For(v, _, body) if v.name == old:
                return replace(x, var=var, body=subst(body, {old: var}))
            case T.Let(v, _, body) if v.name == old:
                return replace(x, var=var, body=subst(body, {old: var}))
            case T.Allocate(buffer, body) if buffer.name == old:
                nb = replace(buffer, name=new)
                return T.Allocate(nb, rewrite_buffer(body, old, nb))
        return None

    return map_stmt(s, fn)


def unique_names(f: T.PrimFunc) -> T.PrimFunc:
    """`f` with every loop/let variable and allocation bound once and apart from its params.

    te gives each compute nest the same axis names (i0, i1, ...); transforms need them apart.
    """
    taken = {p.name for p in f.params}
    for p in f.buffers:
        for d in p.shape:
            taken |= S.free_vars(d)
    return replace(f, body=_uniquify(f.body, taken))


def _uniquify(s: T.Stmt, taken: set[str]) -> T.Stmt:
    match s:
        case T.For(v) | T.Let(v):
            name = v.name
        case T.Allocate(b):
            name = b.name
        case _:
            name = None
    if name is not None:
        if name in taken:
            s = rename_top(s, fresh(name, taken))
        else:
            taken.add(name)
    match s:
        case T.For(_, _, body) | T.Let(_, _, body) | T.Allocate(_, body):
            return replace(s, body=_uniquify(body, taken))
        case T.IfThenElse(c, a, b):
            return T.IfThenElse(c, _uniquify(a, taken), None if b is None else _uniquify(b, taken))
        case T.Seq(stmts):
            return T.seq(*(_uniquify(x, taken) for x in stmts))
    return s


def rename_top(s: T.Stmt, new: str) -> T.Stmt:
    """Rename the binder at the root of `s` (a For, Let or Allocate) and its uses."""
    match s:
        case T.For(v, _, body) | T.Let(v, _, body):
            return replace(s, var=SymVar(new), body=subst(body, {v.name: SymVar(new)}))
        case T.Allocate(b, body):
            nb = replace(b, name=new)
            return T.Allocate(nb, rewrite_buffer(body, b.name, nb))
    raise ScheduleError(f"cannot rename a {type(s).__name__}")


# ---------------------------------------------------------------------------------------------
# Accesses


@dataclass(frozen=True)
class Access:
    buffer: T.Buffer
    indices: tuple[T.Value, ...]
    write: bool


def accesses(s: T.Stmt) -> list[Access]:
    """Every load and store in `s`, nested statements included."""
    out: list[Access] = []

    def values(e: T.Value) -> None:
        for x in walk_values(e):
            if isinstance(x, T.Load):
                out.append(Access(x.buffer, x.indices, False))

    for x in walk(s):
        if isinstance(x, T.Store):
            out.append(Access(x.buffer, x.indices, True))
        for v in stmt_values(x):
            values(v)
    return out


def allocated(s: T.Stmt) -> set[str]:
    return {x.buffer.name for x in walk(s) if isinstance(x, T.Allocate)}
