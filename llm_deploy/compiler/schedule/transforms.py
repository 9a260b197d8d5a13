"""Loop transforms on PrimFuncs: each is `transform(func, loop names..., options) -> PrimFunc`.

Loops are named by their variable (see ir.py: names are unique within a function). Every
transform keeps the program equal; the ones whose legality depends on the program (parallel,
vectorize, bind, fission, reorder) prove it first with deps.py and raise `ScheduleError` when
they cannot. Floating-point sums that `rfactor` reassociates are equal up to rounding.

    split(f, "i", 8)               for i in n  ->  for i_o in n // 8: for i_i in 8 (+ a tail)
    fuse(f, "i", "j")              for i: for j  ->  for i_j in ni * nj
    reorder(f, "k", "i", "j")      permute a perfect nest
    fission(f, "i")                for i: {a; b}  ->  {for i: a; for i_1: b}
    parallel / vectorize / unroll / bind(f, "i", "threadIdx.x")
    expand_alloc, rfactor, cache_invariant (cache.py), simplify_indices (simplify.py)
"""

from __future__ import annotations

from dataclasses import replace

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T

# the transforms that place values in buffers, and index simplification, are part of this interface
from llm_deploy.compiler.schedule.cache import cache_invariant, expand_alloc, rfactor
from llm_deploy.compiler.schedule.deps import why_dependent
from llm_deploy.compiler.schedule.ir import (
    ScheduleError,
    find_loop,
    fresh,
    func_names,
    loop_path,
    perfect_nest,
    rename_bound,
    replace_loop,
    subst,
)
from llm_deploy.compiler.schedule.simplify import simplify_indices
from llm_deploy.compiler.shape import SymVar

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


__all__ = [
    "annotate", "bind", "cache_invariant", "expand_alloc", "fission", "fuse", "parallel", "reorder",
    "rfactor", "simplify_indices", "split", "unroll", "vectorize",
]  # fmt: skip
