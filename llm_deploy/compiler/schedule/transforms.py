"""Loop transforms on PrimFuncs: each is `transform(func, loop names..., options) -> PrimFunc`.

Loops are named by their variable (see ir.py: names are unique within a function). Every
transform keeps the program equal; the ones whose legality depends on the program (parallel,
vectorize, bind, fission, reorder) prove it first with deps.py and raise `ScheduleError` when
they cannot. Floating-point sums that `rfactor` reassociates are equal up to rounding.

    split(f, "i", 8)               for i in n  ->  for i_o in n // 8: for i_i in 8 (+ a tail)
    fuse(f, "i", "j")              for i: for j  ->  for i_j in ni * nj
    reorder(f, "k", "i", "j")      permute a perfect nest
    fission(f, "i")                for i: {a; b}  ->  {for i: a; for i_1: b}
    expand_alloc(f, "acc", "io")   hoist a per-iteration buffer out of the loops under io
    rfactor(f, "k", 8)             a reduction over k accumulated in 8 lanes, then folded
    parallel / vectorize / unroll / bind(f, "i", "threadIdx.x")
"""

from __future__ import annotations

from dataclasses import replace

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import te
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.schedule.deps import why_dependent
from llm_deploy.compiler.schedule.ir import (
    ScheduleError,
    bound_names,
    find_loop,
    fresh,
    func_names,
    loop_path,
    perfect_nest,
    rename,
    rename_bound,
    replace_loop,
    rewrite_buffer,
    subst,
    walk_values,
)
from llm_deploy.compiler.shape import PrimExpr, SymVar

THREAD_TAGS = ("blockIdx.x", "blockIdx.y", "blockIdx.z", "threadIdx.x", "threadIdx.y", "threadIdx.z")


# ---------------------------------------------------------------------------------------------
# Loop structure


def split(
    f: T.PrimFunc,
    loop: str,
    factor: int,
    tail: str = "guard",
    outer: str | None = None,
    inner: str | None = None,
) -> T.PrimFunc:
    """`for x in E` -> `for x_o in E // factor: for x_i in factor` with x = x_o * factor + x_i.

    When `factor` may not divide E, the rest is handled by `tail`:
    - "guard": x_o runs ceil(E / factor) times and the body is guarded by `if x < E`;
    - "loop": a main nest over the full groups, then a loop `x_t` over the E % factor last
      iterations with a copy of the body (fresh names): no test in the hot loop;
    - "min": x_o runs ceil(E / factor) times and x_i runs min(factor, E - x_o * factor) times
      (cache tiles: the last tile is shorter, the body is not copied).
    The outer loop keeps the loop's kind; the inner and tail loops are serial.
    """
    if factor < 1:
        raise ScheduleError(f"split {loop}: factor must be positive, got {factor}")
    if tail not in ("guard", "loop", "min"):
        raise ScheduleError(f"split {loop}: tail must be 'guard', 'loop' or 'min', got {tail!r}")
    taken = func_names(f)
    for name in (outer, inner):
        if name is not None and name in taken:
            raise ScheduleError(f"split {loop}: the name {name!r} is already used")
    o = SymVar(outer or fresh(f"{loop}_o", taken))
    i = SymVar(inner or fresh(f"{loop}_i", taken))

    def rewrite(lp: T.For) -> T.Stmt:
        x, extent = lp.var.name, lp.extent
        body = subst(lp.body, {x: o * factor + i})
        groups = S.floordiv(extent, factor)
        rest = S.sub(extent, groups * factor)
        if rest == S.IntImm(0):
            return T.For(o, groups, T.For(i, factor, body), lp.kind, lp.thread)
        ceil = S.floordiv(extent + (factor - 1), factor)
        if tail == "min":
            inner_extent = S.minimum(factor, extent - o * factor)
            return T.For(o, ceil, T.For(i, inner_extent, body), lp.kind, lp.thread)
        if tail == "guard":
            guarded = T.IfThenElse(T.binary("lt", o * factor + i, extent), body)
            return T.For(o, ceil, T.For(i, factor, guarded), lp.kind, lp.thread)
        t = SymVar(fresh(f"{loop}_t", taken))
        tail_body = rename_bound(subst(lp.body, {x: groups * factor + t}), taken)
        parts = (
            [] if groups == S.IntImm(0) else [T.For(o, groups, T.For(i, factor, body), lp.kind, lp.thread)]
        )
        return T.seq(*parts, T.For(t, rest, tail_body))

    return replace_loop(f, loop, rewrite)


def fuse(f: T.PrimFunc, outer: str, inner: str, name: str | None = None) -> T.PrimFunc:
    """`for a in A: for b in B` (b the whole body of a) -> `for a_b in A * B` with a = a_b // B,
    b = a_b % B; the fused loop keeps the outer loop's kind."""
    lo = find_loop(f, outer)
    li = lo.body
    if not (isinstance(li, T.For) and li.var.name == inner):
        raise ScheduleError(f"fuse {outer}, {inner}: the loop over {inner} must be the whole body of {outer}")
    if outer in S.free_vars(li.extent):
        raise ScheduleError(f"fuse {outer}, {inner}: the extent of {inner} depends on {outer}")
    v = SymVar(name or fresh(f"{outer}_{inner}", func_names(f)))
    body = subst(li.body, {outer: S.floordiv(v, li.extent), inner: S.floormod(v, li.extent)})
    return replace_loop(f, outer, lambda lp: T.For(v, lp.extent * li.extent, body, lp.kind, lp.thread))


def reorder(f: T.PrimFunc, *order: str) -> T.PrimFunc:
    """Permute the loops of a perfect nest (the named loops, each the whole body of the previous
    one in the current order) into `order`. Legal when the loops that carry a dependence keep
    their relative order: the others touch disjoint data per iteration, wherever they sit."""
    if len(set(order)) != len(order):
        raise ScheduleError(f"reorder {order}: a loop is named twice")
    paths = {name: loop_path(f, name) for name in order}
    top = min(order, key=lambda name: len(paths[name]))
    nest = perfect_nest(paths[top][-1])[: len(order)]
    if {lp.var.name for lp in nest} != set(order):
        raise ScheduleError(
            f"reorder {', '.join(order)}: these loops must form a perfect nest; under {top} the nest is "
            f"{', '.join(lp.var.name for lp in perfect_nest(paths[top][-1]))}"
        )
    names = {lp.var.name for lp in nest}
    by_name = {lp.var.name: lp for lp in nest}
    for p, name in enumerate(order):
        later = S.free_vars(by_name[name].extent) & names - set(order[:p])
        if later:
            raise ScheduleError(
                f"reorder: the extent of {name} depends on {', '.join(sorted(later))}, put inside it"
            )
    dependent = [lp.var.name for lp in nest if why_dependent(lp, within=nest[0]) is not None]
    if [x for x in order if x in dependent] != dependent:
        raise ScheduleError(
            f"reorder {', '.join(order)}: {', '.join(dependent)} carry dependences and must keep their order"
        )
    body = nest[-1].body
    for name in reversed(order):
        lp = by_name[name]
        body = T.For(lp.var, lp.extent, body, lp.kind, lp.thread)
    return replace_loop(f, top, lambda _: body)


def fission(f: T.PrimFunc, loop: str) -> T.PrimFunc:
    """Distribute a loop over the statements of its body: `for i: {a; b}` -> `for i: a; for i_1: b`.
    Legal when the loop is independent (then no statement waits on another iteration)."""
    lp = find_loop(f, loop)
    if not isinstance(lp.body, T.Seq):
        raise ScheduleError(
            f"fission {loop}: its body is a {type(lp.body).__name__}, not a sequence of statements"
        )
    _require_independent(lp, "fission")
    taken = func_names(f)
    parts = []
    for k, s in enumerate(lp.body.stmts):
        v = lp.var if k == 0 else SymVar(fresh(loop, taken))
        parts.append(T.For(v, lp.extent, subst(s, {loop: v}) if k else s, lp.kind, lp.thread))
    return replace_loop(f, loop, lambda _: T.seq(*parts))


# ---------------------------------------------------------------------------------------------
# Loop kinds


def annotate(f: T.PrimFunc, loop: str, kind: str, thread: str | None = None) -> T.PrimFunc:
    """Set a loop's kind. parallel, vectorized and thread loops must be independent."""
    if kind not in T.LOOP_KINDS:
        raise ScheduleError(f"unknown loop kind {kind!r}; expected one of {T.LOOP_KINDS}")
    lp = find_loop(f, loop)
    if kind in ("parallel", "vectorized", "thread"):
        _require_independent(lp, kind)
    return replace_loop(f, loop, lambda x: replace(x, kind=kind, thread=thread))


def parallel(f: T.PrimFunc, loop: str) -> T.PrimFunc:
    return annotate(f, loop, "parallel")


def vectorize(f: T.PrimFunc, loop: str) -> T.PrimFunc:
    return annotate(f, loop, "vectorized")


def unroll(f: T.PrimFunc, loop: str) -> T.PrimFunc:
    return annotate(f, loop, "unrolled")


def bind(f: T.PrimFunc, loop: str, thread: str) -> T.PrimFunc:
    """Map a loop to a GPU grid axis: each value of the loop runs on its own block/thread."""
    if thread not in THREAD_TAGS:
        raise ScheduleError(f"bind {loop}: unknown thread tag {thread!r}; expected one of {THREAD_TAGS}")
    return annotate(f, loop, "thread", thread)


def _require_independent(lp: T.For, what: str) -> None:
    reason = why_dependent(lp)
    if reason is not None:
        raise ScheduleError(f"{what} {lp.var.name}: {reason}")


# ---------------------------------------------------------------------------------------------
# Buffers


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
# Index simplification


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


def names_of(f: T.PrimFunc) -> set[str]:
    """The loop/let variables and allocations of `f` (to check what a transform created)."""
    return bound_names(f.body)
