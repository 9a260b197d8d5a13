"""Which loops carry no dependence: the legality test behind parallel, vectorize, fission, reorder.

A loop is *independent* when two different iterations never touch the same element of a buffer
that the body writes (buffers allocated inside the body are private to an iteration). Then its
iterations may run in any order, at once, or split over statements.

The proof, per written buffer: some coordinate (a dim's index, or the flat offset) is, in every
access to it, `c * x + o + p` with the same `c != 0` and the same `o` (terms of outer variables
only), where the inner part `p` (terms with variables bound inside the loop) ranges over an
interval narrower than `|c|`. Two iterations x1 != x2 then differ in that coordinate by at least
|c| - width > 0. `Out[i, j]` in a loop over i, `acc[ii, ji, v]` in a loop over ii and
`Out[io*4 + ii, jo*3 + ji]` in a loop over jo all pass; a reduction's `acc[0]` does not.
"""

from __future__ import annotations

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.schedule.ir import accesses, allocated, walk
from llm_deploy.compiler.shape import PrimExpr


def why_dependent(
    loop: T.For, within: T.Stmt | None = None, analyzer: S.Analyzer | None = None
) -> str | None:
    """None when the loop is independent, else which buffer two iterations may share.

    Variables bound outside the loop are fixed while it runs. Pass `within`, a perfect nest
    holding the loop, to let that nest's other loops vary as well (the test reorder needs: a
    loop independent in that sense may move anywhere in the nest).
    """
    x = loop.var.name
    region = loop if within is None else within
    inner = _inner_bounds(region, x, analyzer or S.Analyzer())
    private = allocated(loop.body)
    acc = accesses(region)
    written = {a.buffer.name for a in acc if a.write} - private
    for name in sorted(written):
        group = [a for a in acc if a.buffer.name == name]
        coords = [[*a.indices, _flat(a.buffer, a.indices)] for a in group]
        if not any(_disjoint([c[d] for c in coords], x, inner) for d in range(len(coords[0]))):
            return f"iterations of {x} may touch the same element of {name}"
    return None


def independent(loop: T.For, within: T.Stmt | None = None, analyzer: S.Analyzer | None = None) -> bool:
    return why_dependent(loop, within, analyzer) is None


def _flat(buffer: T.Buffer, indices: tuple[T.Value, ...]) -> T.Value:
    if not all(isinstance(i, PrimExpr) for i in indices):
        return T.Imm(0, "int64")  # not an index expression: never proves anything
    offset, stride = S.const(0), S.const(1)
    for idx, dim in zip(reversed(indices), reversed(buffer.shape)):
        offset = offset + idx * stride
        stride = stride * dim
    return offset


def _inner_bounds(region: T.Stmt, x: str, outer: S.Analyzer) -> tuple[set[str], S.Analyzer]:
    """Names bound inside `region` other than x, and an analyzer knowing each loop's range."""
    names: set[str] = set()
    an = S.Analyzer(dict(outer.bounds))
    for s in walk(region):
        if isinstance(s, T.For):
            hi = an.upper_bound(s.extent)
            an.bind(s.var.name, 0, S.INF if hi is None else hi - 1)
            names.add(s.var.name)
        elif isinstance(s, T.Let):
            names.add(s.var.name)
    return names - {x}, an


def _split(e: PrimExpr, x: str, inner: set[str]) -> tuple[int, PrimExpr, PrimExpr] | None:
    """(c, o, p) with e == c*x + o + p, o free of inner names, p the terms using them; None if
    x appears other than linearly."""
    e = S.const(e)
    if not isinstance(e, S.Sum):
        if e == S.SymVar(x):
            return 1, S.const(0), S.const(0)
        names = S.free_vars(e)
        if x in names:
            return None
        return (0, S.const(0), e) if names & inner else (0, e, S.const(0))
    terms, const = e.terms, e.const
    c, o, p = 0, S.const(const), S.const(0)
    for mono, coeff in terms:
        names = set().union(*(S.free_vars(atom) for atom, _ in mono))
        if x in names:
            if mono != ((S.SymVar(x), 1),):
                return None
            c = coeff
            continue
        term = S.const(coeff)
        for atom, power in mono:
            for _ in range(power):
                term = term * atom
        if names & inner:
            p = p + term
        else:
            o = o + term
    return c, o, p


def _disjoint(coords: list[T.Value], x: str, inner_info: tuple[set[str], S.Analyzer]) -> bool:
    inner, an = inner_info
    if not all(isinstance(e, PrimExpr) for e in coords):
        return False
    parts = [_split(e, x, inner) for e in coords]
    if any(p is None for p in parts):
        return False
    c, o = parts[0][0], parts[0][1]
    if c == 0 or any(pc != c or po != o for pc, po, _ in parts):
        return False
    lo, hi = S.INF, -S.INF
    for _, _, p in parts:
        iv = an.interval(p)
        lo, hi = min(lo, iv.lo), max(hi, iv.hi)
    return hi - lo < abs(c)
