"""Inlining an intermediate buffer of a tensor program, the two ways fusion needs (TVM's
compute_inline and reverse_compute_inline), plus the substitution they are built on.

    inline(body, T)          T's producer, one injective store `T[i, j] = f(i, j)`, is recomputed
                             where T is read: `... T[a, b] ...` becomes `... f(a, b) ...`
    inline_into_producer(body, T)
                             T's one reader, an injective store `O[i, j] = g(T[i, j], ...)`, moves
                             into T's producer, at its store: `T[u] = v` becomes `O[u] = g(v, ...)`
                             (v kept in a local when g reads it twice and it is not a plain load)

Both return None when the program does not have the required shape, so a caller can try one and
then the other, and keep the buffer when neither applies. Names bound in the result (loops, lets,
buffers) stay unique, which the schedules rely on.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.pattern import (
    Nest,
    is_loop_index,
    loads_of,
    stmt_values,
    store_context,
    stores_to,
    top_nests,
    walk,
    walk_values,
)
from llm_deploy.compiler.shape import PrimExpr, SymVar

# ---------------------------------------------------------------------------------------------
# Substitution


class Rewriter:
    """Rewrites a statement: symbolic vars by name (`sym`), buffers by name (`bufs`, whose shapes
    are rewritten too), and loads through `load` (a hook returning a replacement or None)."""

    def __init__(
        self,
        sym: Mapping[str, PrimExpr] | None = None,
        bufs: Mapping[str, T.Buffer] | None = None,
        load: Callable[[T.Load], T.Value | None] | None = None,
    ):
        self.sym = dict(sym or {})
        self.bufs = dict(bufs or {})
        self.load_hook = load

    def buffer(self, b: T.Buffer) -> T.Buffer:
        if b.name in self.bufs:
            return self.bufs[b.name]
        shape = tuple(self.index(d) for d in b.shape)
        return b if shape == b.shape else T.Buffer(b.name, shape, b.dtype, b.scope)

    def index(self, e: PrimExpr) -> PrimExpr:
        return S.substitute(e, self.sym) if self.sym else e

    def value(self, e: T.Value) -> T.Value:
        match e:
            case PrimExpr():
                return self.index(e)
            case T.Load(buffer, indices):
                if self.load_hook is not None:
                    new = self.load_hook(e)
                    if new is not None:
                        return new
                return T.Load(self.buffer(buffer), tuple(self.index(i) for i in indices))
            case T.Binary(op, a, b):
                return T.Binary(op, self.value(a), self.value(b))
            case T.Intrin(name, args):
                return T.Intrin(name, tuple(self.value(a) for a in args))
            case T.Cast(dtype, v):
                return T.Cast(dtype, self.value(v))
            case T.Select(c, a, b):
                return T.Select(self.value(c), self.value(a), self.value(b))
        return e

    def stmt(self, s: T.Stmt) -> T.Stmt:
        match s:
            case T.For(var, extent, body, kind, thread):
                return T.For(self._var(var), self.index(extent), self.stmt(body), kind, thread)
            case T.Store(buffer, indices, value):
                return T.Store(self.buffer(buffer), tuple(self.index(i) for i in indices), self.value(value))
            case T.Let(var, value, body):
                return T.Let(self._var(var), self.value(value), self.stmt(body))
            case T.IfThenElse(cond, a, b):
                return T.IfThenElse(self.value(cond), self.stmt(a), None if b is None else self.stmt(b))
            case T.Seq(stmts):
                return T.Seq(tuple(self.stmt(x) for x in stmts))
            case T.Allocate(buffer, body):
                return T.Allocate(self.buffer(buffer), self.stmt(body))
        return s

    def _var(self, v: SymVar) -> SymVar:
        new = self.sym.get(v.name, v)
        return new if isinstance(new, SymVar) else v


def bound_names(s: T.Stmt) -> list[str]:
    """Names a statement binds: loop and let variables, allocated buffers."""
    out = []
    for x in walk(s):
        match x:
            case T.For(var=var) | T.Let(var=var):
                out.append(var.name)
            case T.Allocate(buffer=buffer):
                out.append(buffer.name)
    return out


class Names:
    """Fresh names within one function: `hint`, then `hint_1`, `hint_2`, ..."""

    def __init__(self, taken: set[str] | None = None):
        self.taken = set(taken or ())

    def fresh(self, hint: str) -> str:
        base = re.sub(r"_\d+$", "", hint) or hint
        for name in itertools.chain([base], (f"{base}_{k}" for k in itertools.count(1))):
            if name not in self.taken:
                self.taken.add(name)
                return name
        raise AssertionError("unreachable")


def rename_bound(
    s: T.Stmt,
    names: Names,
    sym: Mapping[str, PrimExpr] | None = None,
    bufs: Mapping[str, T.Buffer] | None = None,
) -> T.Stmt:
    """`s` with each binding occurrence (loop, let, allocation) given a fresh name from `names`,
    and `sym` / `bufs` applied to what it reads."""

    def go(s: T.Stmt, sym: dict[str, PrimExpr], bufs: dict[str, T.Buffer]) -> T.Stmt:
        rw = Rewriter(sym, bufs)
        match s:
            case T.For(var, extent, body, kind, thread):
                new = SymVar(names.fresh(var.name))
                return T.For(new, rw.index(extent), go(body, {**sym, var.name: new}, bufs), kind, thread)
            case T.Let(var, value, body):
                new = SymVar(names.fresh(var.name))
                return T.Let(new, rw.value(value), go(body, {**sym, var.name: new}, bufs))
            case T.Allocate(b, body):
                nb = T.Buffer(names.fresh(b.name), tuple(rw.index(d) for d in b.shape), b.dtype, b.scope)
                return T.Allocate(nb, go(body, sym, {**bufs, b.name: nb}))
            case T.IfThenElse(cond, a, b):
                return T.IfThenElse(rw.value(cond), go(a, sym, bufs), None if b is None else go(b, sym, bufs))
            case T.Seq(stmts):
                return T.Seq(tuple(go(x, sym, bufs) for x in stmts))
        return rw.stmt(s)

    return go(s, dict(sym or {}), dict(bufs or {}))


# ---------------------------------------------------------------------------------------------
# Body surgery: nests are addressed by identity within the (Allocate/Seq) skeleton.


def replace_nest(body: T.Stmt, old: T.Stmt, new: T.Stmt | None) -> T.Stmt:
    """`body` with the top-level statement `old` replaced by `new` (removed when None)."""
    match body:
        case T.Allocate(buffer, inner) if buffer.scope == "global" and body is not old:
            return T.Allocate(buffer, replace_nest(inner, old, new))
        case T.Seq(stmts):
            out = []
            for x in stmts:
                if x is old:
                    if new is not None:
                        out.append(new)
                else:
                    out.append(replace_nest(x, old, new))
            return T.seq(*out) if out else T.Seq(())
    return (new if new is not None else T.Seq(())) if body is old else body


def drop_alloc(body: T.Stmt, name: str) -> T.Stmt:
    match body:
        case T.Allocate(buffer, inner) if buffer.name == name:
            return inner
        case T.Allocate(buffer, inner):
            return T.Allocate(buffer, drop_alloc(inner, name))
        case T.Seq(stmts):
            return T.Seq(tuple(drop_alloc(x, name) for x in stmts))
    return body


def nest_stmt(nest: Nest) -> T.Stmt:
    return nest.loops[0] if nest.loops else nest.body


def scopes(body: T.Stmt) -> dict[int, frozenset[str]]:
    """For each top-level nest (by id of its statement), the scratch buffers allocated around it."""
    out: dict[int, frozenset[str]] = {}

    def go(s: T.Stmt, live: frozenset[str]) -> None:
        match s:
            case T.Allocate(buffer, inner) if buffer.scope == "global":
                go(inner, live | {buffer.name})
            case T.Seq(stmts):
                for x in stmts:
                    go(x, live)
            case _:
                out[id(s)] = live

    go(body, frozenset())
    return out


def _visible(reads_from: Nest, at: list[Nest], body: T.Stmt) -> bool:
    """The scratch buffers `reads_from` loads are allocated around every nest of `at` too."""
    sc = scopes(body)
    need = {
        e.buffer.name
        for x in walk(reads_from.body)
        for v in stmt_values(x)
        for e in walk_values(v)
        if isinstance(e, T.Load)
    } & sc[id(nest_stmt(reads_from))]
    return all(need <= sc[id(nest_stmt(n))] for n in at)


def _lets_and_store(s: T.Stmt) -> tuple[list[T.Let], T.Store | None]:
    lets = []
    while isinstance(s, T.Let):
        lets.append(s)
        s = s.body
    return lets, s if isinstance(s, T.Store) else None


def _extents_match(nest: Nest, buf: T.Buffer, analyzer: S.Analyzer) -> bool:
    return len(nest.loops) == buf.ndim and all(
        analyzer.can_prove_equal(e, d) for e, d in zip(nest.extents, buf.shape)
    )


def _cheap(v: T.Value) -> bool:
    while isinstance(v, T.Cast):
        v = v.value
    return isinstance(v, (T.Load, T.Imm, PrimExpr))


# ---------------------------------------------------------------------------------------------
# compute_inline


def inline(body: T.Stmt, buf: T.Buffer, names: Names, analyzer: S.Analyzer) -> T.Stmt | None:
    """Recompute `buf` where it is read; None when its producer is not one injective store."""
    nests = top_nests(body)
    writers = [n for n in nests if stores_to(n.body, buf.name)]
    if len(writers) != 1 or writers[0].kind != "injective":
        return None
    producer = writers[0]
    lets, store = _lets_and_store(producer.body)
    if (
        store is None
        or store.buffer.name != buf.name
        or not is_loop_index(store.indices, producer)
        or not _extents_match(producer, buf, analyzer)
        or next(loads_of(producer.body, buf.name), None) is not None
    ):
        return None
    readers = [n for n in nests if n is not producer and next(loads_of(n.body, buf.name), None) is not None]
    if not _visible(producer, readers, body):
        return None
    # Recomputed later, the value must read what it read where it was computed: nothing after
    # the producer may store to what it loads (an in-place update would be seen).
    reads = {
        e.buffer.name
        for x in walk(producer.body)
        for v in stmt_values(x)
        for e in walk_values(v)
        if isinstance(e, T.Load)
    }
    after = nests[nests.index(producer) + 1 :]
    if any(st.buffer.name in reads for n in after for st in walk(n.body) if isinstance(st, T.Store)):
        return None
    loop_vars = [v.name for v in producer.vars]

    def expand(load: T.Load) -> tuple[list[tuple[SymVar, T.Value]], T.Value]:
        sym: dict[str, PrimExpr] = dict(zip(loop_vars, load.indices))
        new_lets = []
        for let in lets:
            rw = Rewriter(sym)
            fresh = SymVar(names.fresh(let.var.name))
            new_lets.append((fresh, rw.value(let.value)))
            sym[let.var.name] = fresh
        return new_lets, Rewriter(sym).value(store.value)

    new_body = replace_nest(body, nest_stmt(producer), None)
    new_body = _substitute_loads(new_body, buf.name, expand)
    return drop_alloc(new_body, buf.name)


def _substitute_loads(
    s: T.Stmt, name: str, expand: Callable[[T.Load], tuple[list[tuple[SymVar, T.Value]], T.Value]]
) -> T.Stmt:
    """Replace every load of `name`; the lets an expansion needs wrap the statement that reads."""

    def values(stmt: T.Stmt) -> tuple[T.Stmt, list[tuple[SymVar, T.Value]]]:
        pending: list[tuple[SymVar, T.Value]] = []

        def hook(load: T.Load) -> T.Value | None:
            if load.buffer.name != name:
                return None
            lets, value = expand(load)
            pending.extend(lets)
            return value

        rw = Rewriter(load=hook)
        match stmt:
            case T.Store(buffer, indices, value):
                return T.Store(buffer, indices, rw.value(value)), pending
            case T.Let(var, value, body):
                return T.Let(var, rw.value(value), go(body)), pending
            case T.IfThenElse(cond, a, b):
                return T.IfThenElse(rw.value(cond), go(a), None if b is None else go(b)), pending
        raise AssertionError(stmt)

    def go(stmt: T.Stmt) -> T.Stmt:
        match stmt:
            case T.Store() | T.Let() | T.IfThenElse():
                if not any(
                    isinstance(e, T.Load) and e.buffer.name == name
                    for v in stmt_values(stmt)
                    for e in walk_values(v)
                ):
                    if isinstance(stmt, T.Store):
                        return stmt
                    if isinstance(stmt, T.Let):
                        return T.Let(stmt.var, stmt.value, go(stmt.body))
                    return T.IfThenElse(
                        stmt.cond, go(stmt.then_body), None if stmt.else_body is None else go(stmt.else_body)
                    )
                new, lets = values(stmt)
                for var, value in reversed(lets):
                    new = T.Let(var, value, new)
                return new
            case T.For(var, extent, body, kind, thread):
                return T.For(var, extent, go(body), kind, thread)
            case T.Seq(stmts):
                return T.Seq(tuple(go(x) for x in stmts))
            case T.Allocate(buffer, body):
                return T.Allocate(buffer, go(body))
        return stmt

    return go(s)


# ---------------------------------------------------------------------------------------------
# reverse_compute_inline


def inline_into_producer(body: T.Stmt, buf: T.Buffer, names: Names, analyzer: S.Analyzer) -> T.Stmt | None:
    """Move `buf`'s one elementwise reader into its producer's store; None when not possible."""
    nests = top_nests(body)
    writers = [n for n in nests if stores_to(n.body, buf.name)]
    readers = [n for n in nests if next(loads_of(n.body, buf.name), None) is not None]
    if len(writers) != 1 or len(readers) != 1 or writers[0] is readers[0]:
        return None
    producer, reader = writers[0], readers[0]
    if nests.index(reader) < nests.index(producer) or not _extents_match(producer, buf, analyzer):
        return None
    for store, inner in store_context(producer):
        if store.buffer.name == buf.name and (inner or not is_loop_index(store.indices, producer)):
            return None
    # The reader: lets, then one store at its loop indices, reading buf only at those indices.
    lets, out_store = _lets_and_store(reader.body)
    if (
        reader.kind != "injective"
        or out_store is None
        or not is_loop_index(out_store.indices, reader)
        or not _extents_match(reader, buf, analyzer)
        or any(not is_loop_index(ld.indices, reader) for ld in loads_of(reader.body, buf.name))
    ):
        return None
    # What the reader reads must be ready where the producer stores: nothing between them writes it.
    between = nests[nests.index(producer) + 1 : nests.index(reader)]
    read = {
        ld.buffer.name
        for x in walk(reader.body)
        for v in stmt_values(x)
        for ld in walk_values(v)
        if isinstance(ld, T.Load)
    }
    for n in between:
        written = {st.buffer.name for st in walk(n.body) if isinstance(st, T.Store)}
        if written & (read | {out_store.buffer.name}) or next(loads_of(n.body, out_store.buffer.name), None):
            return None
    if not _visible(reader, [producer], body):
        return None
    uses = sum(1 for _ in loads_of(reader.body, buf.name))
    reader_vars = [v.name for v in reader.vars]

    def epilogue(store: T.Store) -> T.Stmt:
        sym: dict[str, PrimExpr] = dict(zip(reader_vars, store.indices))
        stmts: list[T.Stmt] = []
        local = None
        value = store.value
        if uses > 1 and not _cheap(value):
            local = T.Buffer(names.fresh(f"{buf.name}_local"), (1,), buf.dtype, "local")
            stmts.append(T.Store(local, (S.IntImm(0),), value))
            value = T.Load(local, (S.IntImm(0),))
        rw = Rewriter(sym, load=lambda ld: value if ld.buffer.name == buf.name else None)
        new_lets = []
        for let in lets:
            fresh = SymVar(names.fresh(let.var.name))
            new_lets.append((fresh, rw.value(let.value)))
            rw.sym[let.var.name] = fresh
        new: T.Stmt = T.Store(out_store.buffer, tuple(store.indices), rw.value(out_store.value))
        for var, v in reversed(new_lets):
            new = T.Let(var, v, new)
        if local is None:
            return new
        return T.Allocate(local, T.seq(*stmts, new))

    def go(s: T.Stmt) -> T.Stmt:
        match s:
            case T.Store(buffer) if buffer.name == buf.name:
                return epilogue(s)
            case T.For(var, extent, b, kind, thread):
                return T.For(var, extent, go(b), kind, thread)
            case T.Let(var, value, b):
                return T.Let(var, value, go(b))
            case T.IfThenElse(cond, a, b):
                return T.IfThenElse(cond, go(a), None if b is None else go(b))
            case T.Seq(stmts):
                return T.Seq(tuple(go(x) for x in stmts))
            case T.Allocate(buffer, b):
                return T.Allocate(buffer, go(b))
        return s

    new_body = replace_nest(body, nest_stmt(producer), go(nest_stmt(producer)))
    new_body = replace_nest(new_body, nest_stmt(reader), None)
    return drop_alloc(new_body, buf.name)


# ---------------------------------------------------------------------------------------------
# Index simplification with loop bounds


def simplify_indices(s: T.Stmt, analyzer: S.Analyzer) -> T.Stmt:
    """Indices simplified knowing 0 <= loop var < extent (e.g. `i + j // 64` with j < 64 is `i`)."""

    def bounded(var: SymVar, extent: PrimExpr) -> S.Analyzer:
        a = S.Analyzer(dict(analyzer.bounds))
        hi = a.upper_bound(extent)
        a.bind(var.name, 0, S.INF if hi is None else hi - 1)
        return a

    def go(s: T.Stmt, a: S.Analyzer) -> T.Stmt:
        rw = Rewriter()
        rw.index = a.simplify  # type: ignore[method-assign]
        match s:
            case T.For(var, extent, body, kind, thread):
                return T.For(var, extent, go(body, bounded(var, extent)), kind, thread)
            case T.Store(buffer, indices, value):
                return T.Store(buffer, tuple(a.simplify(i) for i in indices), rw.value(value))
            case T.Let(var, value, body):
                return T.Let(var, rw.value(value), go(body, a))
            case T.IfThenElse(cond, x, y):
                return T.IfThenElse(rw.value(cond), go(x, a), None if y is None else go(y, a))
            case T.Seq(stmts):
                return T.Seq(tuple(go(x, a) for x in stmts))
            case T.Allocate(buffer, body):
                return T.Allocate(buffer, go(body, a))
        return s

    return go(s, analyzer)
