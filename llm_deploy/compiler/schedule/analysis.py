"""What a tensor program computes, read from its loops and accesses (never from its op name).

A PrimFunc from te is a sequence of loop nests (under function-level allocations of its
intermediates). Each nest is a perfect nest of spatial loops over one output, ending in
- a store (possibly under lets or an if): **injective** (elementwise, broadcast, gather, reshape);
- a reduction: an accumulator allocated per output element, initialized, updated by a loop nest
  over the reduction axes, then read by the output's store. A reduction whose update multiplies
  two operands that each miss one of two spatial axes (`X[i, k] * W[j, k]`) has data reuse:
  **matmul** (a matrix-vector product when the row axis has one or a few constant rows).
  Any other is a **row reduction** (sums, norms, softmax statistics, argmax).
Whatever else is **opaque**: the rules leave it serial and correct.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.schedule.ir import walk, walk_values
from llm_deploy.compiler.shape import PrimExpr

GEMV_MAX_ROWS = 4  # a matmul with at most this many (constant) rows is a matrix-vector product


@dataclass(frozen=True)
class Reduction:
    acc: str  # the accumulator buffer (shape (1,), allocated per output element)
    loops: tuple[str, ...]  # the reduction loops, outer to inner
    op: str | None  # add | mul | max | min for a plain fold (rfactor applies), else None
    value: T.Value | None  # what is folded in per iteration (None when not a plain fold)


@dataclass(frozen=True)
class Matmul:
    rows: str  # spatial loop indexing the first operand only (X's rows)
    cols: str  # spatial loop indexing the second operand only (W's rows or columns)
    batch: tuple[str, ...]  # other spatial loops (outer)
    k: str  # the reduction loop
    layout: str  # "dot": both operands contiguous along k; "outer": W contiguous along cols
    x: str  # buffer names of the operands
    w: str


@dataclass(frozen=True)
class Nest:
    kind: str  # injective | reduction | matmul | matvec | opaque
    root: str  # the outermost loop
    spatial: tuple[str, ...]  # the perfect spatial loops, outer to inner
    extents: tuple[PrimExpr, ...]
    reduction: Reduction | None = None
    matmul: Matmul | None = None
    contiguous: bool = False  # the output's store is stride-1 in the innermost spatial loop


@dataclass(frozen=True)
class FuncInfo:
    kind: str  # the kind of the costliest nest
    nests: tuple[Nest, ...]


KIND_COST = {"opaque": 0, "injective": 1, "reduction": 2, "matvec": 3, "matmul": 4}


def classify(f: T.PrimFunc) -> FuncInfo:
    nests = tuple(analyze_nest(lp) for lp in top_nests(f.body))
    kind = max((n.kind for n in nests), key=KIND_COST.__getitem__, default="opaque")
    return FuncInfo(kind, nests)


def top_nests(s: T.Stmt) -> list[T.For]:
    """The loop nests of a function body, under its function-level allocations and sequences."""
    match s:
        case T.For():
            return [s]
        case T.Allocate(_, body):
            return top_nests(body)
        case T.Seq(stmts):
            return [lp for x in stmts for lp in top_nests(x)]
    return []


def analyze_nest(root: T.For) -> Nest:
    spatial: list[T.For] = [root]
    while isinstance(spatial[-1].body, T.For):
        spatial.append(spatial[-1].body)
    names = tuple(lp.var.name for lp in spatial)
    extents = tuple(lp.extent for lp in spatial)
    body = spatial[-1].body
    base = dict(root=root.var.name, spatial=names, extents=extents)
    inner = body
    while isinstance(inner, T.Let):
        inner = inner.body
    if isinstance(inner, (T.Store, T.IfThenElse)) and not any(isinstance(x, T.For) for x in walk(body)):
        return Nest("injective", contiguous=_store_contiguous(body, names[-1]), **base)
    red = _reduction(body)
    if red is None:
        return Nest("opaque", **base)
    contiguous = _store_contiguous(body, names[-1])
    mm = _matmul(red, names, body)
    if mm is None:
        return Nest("reduction", reduction=red, contiguous=contiguous, **base)
    rows = extents[names.index(mm.rows)]
    small = isinstance(rows, S.IntImm) and rows.value <= GEMV_MAX_ROWS
    return Nest("matvec" if small else "matmul", reduction=red, matmul=mm, contiguous=contiguous, **base)


def _store_contiguous(body: T.Stmt, innermost: str) -> bool:
    """Every store's last index is the innermost loop plus something independent of it."""
    stores = [x for x in walk(body) if isinstance(x, T.Store)]
    return bool(stores) and all(unit_stride(s.indices[-1], innermost) for s in stores)


def unit_stride(e: T.Value, v: str) -> bool:
    """`e` is `v + rest` with rest independent of v: consecutive v read consecutive elements."""
    if not isinstance(e, PrimExpr):
        return False
    e = S.const(e)
    if e == S.SymVar(v):
        return True
    if not isinstance(e, S.Sum):
        return False
    coeff = 0
    for mono, c in e.terms:
        if mono == ((S.SymVar(v), 1),):
            coeff = c
        elif any(v in S.free_vars(atom) for atom, _ in mono):
            return False
    return coeff == 1


def _reduction(body: T.Stmt) -> Reduction | None:
    """`alloc acc; acc[0] = init; for k...: acc[0] = acc[0] op v; ...` -> the reduction's parts."""
    if not isinstance(body, T.Allocate) or body.buffer.scope != "local" or not isinstance(body.body, T.Seq):
        return None
    acc = body.buffer.name
    stmts = body.body.stmts
    loops = [s for s in stmts if isinstance(s, T.For)]
    if len(loops) != 1:
        return None
    nest = [loops[0]]
    while isinstance(nest[-1].body, T.For):
        nest.append(nest[-1].body)
    update = nest[-1].body
    lets = 0
    while isinstance(update, T.Let):
        update, lets = update.body, lets + 1
    op = value = None
    if (
        isinstance(update, T.Store)
        and update.buffer.name == acc
        and isinstance(update.value, T.Binary)
        and update.value.op in ("add", "mul", "max", "min")
        and update.value.a == T.Load(update.buffer, update.indices)
        and not lets
    ):
        op, value = update.value.op, update.value.b
    return Reduction(acc, tuple(lp.var.name for lp in nest), op, value)


def _matmul(red: Reduction, spatial: tuple[str, ...], body: T.Stmt) -> Matmul | None:
    """X[.., i, k] * W[.., j, k] (or W[.., k, j]) with one reduction loop k."""
    if red.op != "add" or len(red.loops) != 1 or red.value is None:
        return None
    k = red.loops[0]
    loads = [e for e in walk_values(red.value) if isinstance(e, T.Load)]
    if len(loads) != 2 or not _is_product(red.value):
        return None
    uses = []
    for ld in loads:
        names = set()
        for i in ld.indices:
            if not isinstance(i, PrimExpr):
                return None
            names |= S.free_vars(i)
        if k not in names:
            return None
        uses.append(names & set(spatial))
    only = [uses[0] - uses[1], uses[1] - uses[0]]
    if not all(len(o) == 1 for o in only):
        return None
    (i,), (j,) = only
    x, w = loads
    # the operand without a symbolic dim (a weight) is W; X keeps the rows
    if _symbolic(w.buffer) and not _symbolic(x.buffer):
        (x, w), (i, j) = (w, x), (j, i)
    if unit_stride(w.indices[-1], k) and unit_stride(x.indices[-1], k):
        layout = "dot"
    elif unit_stride(w.indices[-1], j):
        layout = "outer"
    else:
        return None
    batch = tuple(s for s in spatial if s not in (i, j))
    return Matmul(i, j, batch, k, layout, x.buffer.name, w.buffer.name)


def _is_product(v: T.Value) -> bool:
    while isinstance(v, T.Cast):
        v = v.value
    return isinstance(v, T.Binary) and v.op == "mul"


def _symbolic(b: T.Buffer) -> bool:
    return any(not isinstance(d, S.IntImm) for d in b.shape)
