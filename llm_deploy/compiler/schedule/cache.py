"""Transforms that place values in local buffers: a block of accumulators (expand_alloc), a
reduction accumulated in vector lanes (rfactor), costly values computed once (cache_invariant).

    expand_alloc(f, "acc", "io")    hoist a per-iteration buffer out of the loops under io
    rfactor(f, "k", 8)              a reduction over k accumulated in 8 lanes, then folded
    cache_invariant(f, "h")         cos(pos[i] * freq[j]) computed per (i, j), not per head h
"""

from __future__ import annotations

from dataclasses import replace

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import te
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.schedule.deps import why_dependent
from llm_deploy.compiler.schedule.ir import (
    ScheduleError,
    accesses,
    bound_names,
    find_loop,
    fresh,
    func_names,
    perfect_nest,
    rename,
    replace_loop,
    rewrite_buffer,
    subst,
    value_children,
    walk,
    walk_values,
)
from llm_deploy.compiler.shape import PrimExpr, SymVar


def expand_alloc(f: T.PrimFunc, buffer: str, under: str) -> T.PrimFunc:
    """Hoist the allocation of `buffer` to the top of the body of loop `under`, adding a leading
    dim per loop it leaves (indexed by that loop's variable), so each iteration keeps its slice.

    A reduction's accumulator, allocated per output element, becomes a block of accumulators
    that a reordered reduction loop updates together (register blocking)."""
    lp = find_loop(f, under)
    found = _extract_alloc(lp.body, buffer)
    if found is None:
        raise ScheduleError(f"expand_alloc: no allocation of {buffer!r} inside the loop over {under}")
    body, buf, passed = found
    for v, extent in passed:
        if not isinstance(extent, S.IntImm):
            raise ScheduleError(
                f"expand_alloc {buffer}: the loop over {v.name} has a symbolic extent {S.to_str(extent)}; "
                "only constant extents can be hoisted into a fixed-size buffer"
            )
    new = replace(buf, shape=(*(e for _, e in passed), *buf.shape))
    lead = tuple(v for v, _ in passed)
    body = rewrite_buffer(body, buffer, new, lambda idx: (*lead, *idx))
    return replace_loop(f, under, lambda x: replace(x, body=T.Allocate(new, body)))


def _extract_alloc(s: T.Stmt, name: str) -> tuple[T.Stmt, T.Buffer, list[tuple[SymVar, PrimExpr]]] | None:
    """`s` without the allocation of `name` (its body in its place), the buffer, and the loops
    between `s` and it, outermost first."""
    match s:
        case T.Allocate(buf, body) if buf.name == name:
            return body, buf, []
        case T.For(var, extent, body):
            inner = _extract_alloc(body, name)
            if inner is None:
                return None
            return replace(s, body=inner[0]), inner[1], [(var, extent), *inner[2]]
        case T.Let(_, _, body) | T.Allocate(_, body):
            inner = _extract_alloc(body, name)
            return None if inner is None else (replace(s, body=inner[0]), inner[1], inner[2])
        case T.IfThenElse(_, then_body, else_body):
            for side, other in ((then_body, "then_body"), (else_body, "else_body")):
                inner = None if side is None else _extract_alloc(side, name)
                if inner is not None:
                    return replace(s, **{other: inner[0]}), inner[1], inner[2]
            return None
        case T.Seq(stmts):
            for k, x in enumerate(stmts):
                inner = _extract_alloc(x, name)
                if inner is not None:
                    return T.seq(*stmts[:k], inner[0], *stmts[k + 1 :]), inner[1], inner[2]
    return None


# combine op -> identity for a dtype (the fold acc = acc op v starts from it)
IDENTITIES = {
    "add": lambda d: T.Imm(0.0 if d in T.FLOAT_DTYPES else 0, d),
    "mul": lambda d: T.Imm(1.0 if d in T.FLOAT_DTYPES else 1, d),
    "max": te.min_value,
    "min": te.max_value,
}


def rfactor(f: T.PrimFunc, loop: str, lanes: int) -> T.PrimFunc:
    """Accumulate the reduction over `loop` in `lanes` partial results, then fold them.

        for k in K: [for i...:] acc[idx] = acc[idx] op v(k)
    becomes
        accv = alloc(acc.shape + (lanes,))
        [for i...:] for r in vectorized(lanes): accv[idx, r] = identity
        for k_o in K // lanes: [for i...:] for k_v in vectorized(lanes): accv[idx, k_v] op= v(k_o * lanes + k_v)
        for k_t in K % lanes: [for i...:] accv[idx, k_t] op= v(K // lanes * lanes + k_t)
        [for i...:] lanes folded in halves (accv[idx, r] op= accv[idx, r + w], w = lanes/2 .. 1),
                    then acc[idx] = acc[idx] op accv[idx, 0]   (lanes a power of 2; else one by one)

    The loops between k and the update (a register block) must be independent, so that each
    acc element is one lane group's. The lanes run as one vector register: a float sum is
    reassociated (equal up to rounding), max and min stay exact."""
    if lanes < 2:
        raise ScheduleError(f"rfactor {loop}: lanes must be at least 2, got {lanes}")
    lp = find_loop(f, loop)
    nest = perfect_nest(lp)[1:]
    stmt = nest[-1].body if nest else lp.body
    lets: list[T.Let] = []
    while isinstance(stmt, T.Let):
        lets.append(stmt)
        stmt = stmt.body
    update = _accumulate(stmt)
    if update is None:
        raise ScheduleError(
            f"rfactor {loop}: the body must be one update `acc[idx] = acc[idx] op value` (op: add, mul, "
            f"max, min) under loops and lets; found {type(stmt).__name__}"
        )
    acc, idx, op, value = update
    x = lp.var.name
    let_names = {lt.var.name for lt in lets}
    if any(S.free_vars(i) & ({x} | let_names) for i in idx if isinstance(i, PrimExpr)):
        raise ScheduleError(f"rfactor {loop}: the accumulator's index depends on {x} or a let variable")
    if any(isinstance(e, T.Load) and e.buffer.name == acc.name for e in walk_values(value)):
        raise ScheduleError(f"rfactor {loop}: the updated value reads the accumulator {acc.name}")
    for inner in nest:
        reason = why_dependent(inner, within=nest[0])
        if reason is not None:
            raise ScheduleError(
                f"rfactor {loop}: the loop over {inner.var.name} is not independent: {reason}"
            )

    taken = func_names(f)
    accv = T.Buffer(fresh(f"{acc.name}_v", taken), (*acc.shape, lanes), acc.dtype, "local")
    extent = lp.extent
    groups = S.floordiv(extent, lanes)
    start = groups * lanes
    rest = S.sub(extent, start)

    copy_names = {lpn.var.name for lpn in nest} | let_names

    def wrap(inner: T.Stmt, copy: bool) -> T.Stmt:
        """inner under the nest's loops; a copy beside the original gets fresh names."""
        for lpn in reversed(nest):
            inner = T.For(lpn.var, lpn.extent, inner, lpn.kind, lpn.thread)
        if copy:
            for name in sorted(copy_names & bound_names(inner)):
                inner = rename(inner, name, fresh(name, taken))
        return inner

    def with_lets(s: T.Stmt, mapping: dict[str, PrimExpr]) -> T.Stmt:
        for lt in reversed(lets):
            s = T.Let(lt.var, lt.value, s)
        return subst(s, mapping)

    def lane_update(lane: PrimExpr, k: PrimExpr) -> T.Stmt:
        cur = T.Load(accv, (*idx, lane))
        return with_lets(T.Store(accv, (*idx, lane), T.Binary(op, cur, value)), {x: k})

    r0, kv, ko, kt, rr = (SymVar(fresh(f"{x}_{s}", taken)) for s in ("r0", "v", "o", "t", "r"))
    init = wrap(T.For(r0, lanes, T.Store(accv, (*idx, r0), IDENTITIES[op](acc.dtype)), "vectorized"), True)
    parts = [init]
    if groups != S.IntImm(0):
        vec = T.For(kv, lanes, lane_update(kv, ko * lanes + kv), "vectorized")
        parts.append(T.For(ko, groups, wrap(vec, False)))
    if rest != S.IntImm(0):
        parts.append(T.For(kt, rest, wrap(lane_update(kt, start + kt), True)))
    if lanes & (lanes - 1) == 0:
        # halve the lanes: a vector op per step instead of a scalar op per lane
        width = lanes // 2
        while width >= 1:
            r = SymVar(fresh(f"{x}_h{width}", taken))
            pair = T.Binary(op, T.Load(accv, (*idx, r)), T.Load(accv, (*idx, r + width)))
            parts.append(wrap(T.For(r, width, T.Store(accv, (*idx, r), pair), "vectorized"), True))
            width //= 2
        parts.append(
            wrap(T.Store(acc, idx, T.Binary(op, T.Load(acc, idx), T.Load(accv, (*idx, S.IntImm(0))))), True)
        )
    else:
        fold = T.Store(acc, idx, T.Binary(op, T.Load(acc, idx), T.Load(accv, (*idx, rr))))
        parts.append(wrap(T.For(rr, lanes, fold, "unrolled"), True))
    new = T.Allocate(accv, T.seq(*parts))
    return replace_loop(f, loop, lambda _: new)


def _accumulate(s: T.Stmt) -> tuple[T.Buffer, tuple, str, T.Value] | None:
    """(acc, idx, op, value) when `s` is `acc[idx] = acc[idx] op value` (or `value op acc[idx]`)."""
    if not isinstance(s, T.Store) or not isinstance(s.value, T.Binary) or s.value.op not in IDENTITIES:
        return None
    a, b = s.value.a, s.value.b
    me = T.Load(s.buffer, s.indices)
    if a == me:
        return s.buffer, s.indices, s.value.op, b
    if b == me:
        return s.buffer, s.indices, s.value.op, a
    return None


# ---------------------------------------------------------------------------------------------
# Loop-invariant values

COSTLY = {"exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "cos", "sin", "erf"}


def cache_invariant(f: T.PrimFunc, loop: str) -> T.PrimFunc:
    """Compute each costly value (a math intrinsic) of the nest under `loop` that does not
    depend on `loop` once, before it: into a local buffer indexed by the inner loops it depends
    on, read back inside. Rope's cos/sin of (position, frequency) then cost one call per
    position and frequency instead of one per head as well.

    The body under `loop` must be a perfect nest (constant extents) ending in a store."""
    lp = find_loop(f, loop)
    nest = perfect_nest(lp)[1:]
    if any(not isinstance(x.extent, S.IntImm) for x in nest):
        raise ScheduleError(f"cache_invariant {loop}: the loops inside it need constant extents")
    body = nest[-1].body if nest else lp.body
    if any(isinstance(x, (T.For, T.Allocate)) for x in walk(body)):
        raise ScheduleError(f"cache_invariant {loop}: the body under it must be a perfect nest")
    varying = {lp.var.name} | {x.var.name for x in walk(body) if isinstance(x, T.Let)}
    written = {a.buffer.name for a in accesses(body) if a.write}
    found: list[T.Value] = []
    for x in walk(body):
        for v in _values_of(x):
            _collect_invariant(v, varying, written, found)
    if not found:
        raise ScheduleError(f"cache_invariant {loop}: no costly value there is independent of {loop}")
    taken = func_names(f)
    mapping: dict[T.Value, T.Value] = {}
    computes: list[tuple[T.Buffer, T.Stmt]] = []
    for e in found:
        deps = [x for x in nest if x.var.name in _value_vars(e)]
        buf = T.Buffer(
            fresh(f"{loop}_c", taken), tuple(x.extent for x in deps) or (1,), T.dtype_of(e), "local"
        )
        index = tuple(x.var for x in deps) or (S.IntImm(0),)
        mapping[e] = T.Load(buf, index)
        fresh_vars = {x.var.name: SymVar(fresh(x.var.name, taken)) for x in deps}
        stmt: T.Stmt = subst(T.Store(buf, index, e), fresh_vars)
        for x in reversed(deps):
            stmt = T.For(fresh_vars[x.var.name], x.extent, stmt)
        computes.append((buf, stmt))
    new_loop = _replace_values(lp, mapping)
    out: T.Stmt = T.seq(*(c for _, c in computes), new_loop)
    for buf, _ in reversed(computes):
        out = T.Allocate(buf, out)
    return replace_loop(f, loop, lambda _: out)


def _values_of(s: T.Stmt) -> tuple[T.Value, ...]:
    match s:
        case T.Store(_, _, value):
            return (value,)
        case T.Let(_, value, _):
            return (value,)
        case T.IfThenElse(cond, _, _):
            return (cond,)
    return ()


def _value_vars(e: T.Value) -> set[str]:
    out: set[str] = set()
    for x in walk_values(e):
        if isinstance(x, PrimExpr):
            out |= S.free_vars(x)
    return out


def _collect_invariant(e: T.Value, varying: set[str], written: set[str], found: list[T.Value]) -> None:
    """The largest costly subexpressions of e that read nothing varying or written."""
    costly = any(isinstance(x, T.Intrin) and x.name in COSTLY for x in walk_values(e))
    if not costly:
        return
    reads_written = any(isinstance(x, T.Load) and x.buffer.name in written for x in walk_values(e))
    if not (_value_vars(e) & varying) and not reads_written and not isinstance(e, PrimExpr):
        if e not in found:
            found.append(e)
        return
    for c in value_children(e):
        _collect_invariant(c, varying, written, found)


def _replace_values(s: T.Stmt, mapping: dict[T.Value, T.Value]) -> T.Stmt:
    def value(e: T.Value) -> T.Value:
        if not isinstance(e, PrimExpr) and e in mapping:
            return mapping[e]
        match e:
            case T.Load(buffer, idx):
                return T.Load(buffer, tuple(value(i) for i in idx))
            case T.Binary(op, a, b):
                return T.Binary(op, value(a), value(b))
            case T.Intrin(name, args):
                return T.Intrin(name, tuple(value(a) for a in args))
            case T.Cast(dtype, v):
                return T.Cast(dtype, value(v))
            case T.Select(c, a, b):
                return T.Select(value(c), value(a), value(b))
        return e

    def stmt(x: T.Stmt) -> T.Stmt:
        match x:
            case T.For(_, _, body) | T.Allocate(_, body):
                return replace(x, body=stmt(body))
            case T.Let(_, v, body):
                return replace(x, value=value(v), body=stmt(body))
            case T.Store(buffer, idx, v):
                return T.Store(buffer, idx, value(v))
            case T.IfThenElse(c, a, b):
                return T.IfThenElse(value(c), stmt(a), None if b is None else stmt(b))
            case T.Seq(stmts):
                return T.seq(*(stmt(y) for y in stmts))
        return x

    return stmt(s)
