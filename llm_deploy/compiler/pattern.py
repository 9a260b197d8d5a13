"""What a tensor program is, for fusion: read from its loops and accesses, never declared per op.

A PrimFunc lowered from te is a sequence of loop *nests* (under function-level allocations of its
intermediates): a perfect chain of spatial loops over one output, whose body is
- a store (under lets or an if): an **injective** nest (each output element computed on its own);
- an accumulator allocated per output element, initialized, updated in loops over reduction axes,
  then read by the output's store: a **reduction** nest.

The function's kind orders like TVM's OpPatternKind, from most to least fusable:

    ELEMWISE        one injective nest, every input read at the output's own index
    BROADCAST       ... or at a subsequence of it (dims of 1 read at 0): `B[i1]` for `Out[i0, i1]`
    INJECTIVE       one or more injective nests (reshape, transpose, gather, rope, concat)
    REDUCTION       a reduction nest (sum, max, norms, softmax)
    OUT_EWISE_FUSABLE  a reduction whose loads are reused across outputs (matmul: `X[i, k] * W[j, k]`)
    OPAQUE          anything else: several outputs, an output not stored once per element at its
                    loop indices, loops of unknown shape

Besides the kind, fusion needs to know where a consumer can be folded in (`epilogue`: the output
is stored once per element at the loop indices of the last nest), whether the function can be
recomputed where its output is read (`inlinable`), whether that is free (`data_movement`), and how
it reads each input (`Access`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.shape import PrimExpr, SymVar


class Kind(IntEnum):
    ELEMWISE = 0
    BROADCAST = 1
    INJECTIVE = 2
    REDUCTION = 3
    OUT_EWISE_FUSABLE = 4
    OPAQUE = 8


@dataclass(frozen=True)
class Nest:
    """A perfect chain of spatial loops (possibly none, for a 0-d output) and what they enclose."""

    loops: tuple[T.For, ...]
    body: T.Stmt
    kind: str  # injective | reduction | opaque

    @property
    def vars(self) -> tuple[SymVar, ...]:
        return tuple(lp.var for lp in self.loops)

    @property
    def extents(self) -> tuple[PrimExpr, ...]:
        return tuple(lp.extent for lp in self.loops)


@dataclass(frozen=True)
class Access:
    """How a function reads one input buffer, over all its load sites."""

    sites: int  # load sites in the program text
    identity: bool  # every load at the loop indices of an output-shaped injective nest
    broadcast: bool  # every index a spatial loop var (in loop order) or 0 on a dim of 1
    reuse: bool  # some enclosing loop does not index a load: an element is read more than once
    in_reduction: bool  # some load sits under a reduction loop


@dataclass(frozen=True)
class Pattern:
    kind: Kind
    nests: tuple[Nest, ...]
    accesses: tuple[Access, ...]  # per buffer parameter, in order (outputs included)
    written: frozenset[int]  # the buffer parameters it stores to (outputs, in-place updates)
    output: T.Buffer | None  # the single output (None when there are several or none)
    epilogue: bool  # consumers of the output may be folded into its store(s)
    inlinable: bool  # one injective nest storing the output at its loop indices, once
    data_movement: bool  # the stored value only moves data (loads, casts, selects)
    has_lets: bool  # the inlinable store sits under lets (a gather's computed index)

    @property
    def inputs(self) -> tuple[Access, ...]:
        """The accesses of the buffers it only reads."""
        return tuple(a for k, a in enumerate(self.accesses) if k not in self.written)


# ---------------------------------------------------------------------------------------------
# Walking


def walk(s: T.Stmt) -> Iterator[T.Stmt]:
    yield s
    match s:
        case T.For(body=body) | T.Let(body=body) | T.Allocate(body=body):
            yield from walk(body)
        case T.IfThenElse(_, then_body, else_body):
            yield from walk(then_body)
            if else_body is not None:
                yield from walk(else_body)
        case T.Seq(stmts):
            for x in stmts:
                yield from walk(x)


def walk_values(e: T.Value) -> Iterator[T.Value]:
    yield e
    match e:
        case T.Load(_, indices):
            for i in indices:
                yield from walk_values(i)
        case T.Binary(_, a, b):
            yield from walk_values(a)
            yield from walk_values(b)
        case T.Intrin(_, args):
            for a in args:
                yield from walk_values(a)
        case T.Cast(_, value):
            yield from walk_values(value)
        case T.Select(c, a, b):
            yield from walk_values(c)
            yield from walk_values(a)
            yield from walk_values(b)


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


def loads_of(s: T.Stmt, name: str) -> Iterator[T.Load]:
    for x in walk(s):
        for v in stmt_values(x):
            for e in walk_values(v):
                if isinstance(e, T.Load) and e.buffer.name == name:
                    yield e


def stores_to(s: T.Stmt, name: str) -> list[T.Store]:
    return [x for x in walk(s) if isinstance(x, T.Store) and x.buffer.name == name]


def value_vars(e: T.Value) -> set[str]:
    """Symbolic and loop variables an expression reads (in indices and as values)."""
    out: set[str] = set()
    for x in walk_values(e):
        if isinstance(x, PrimExpr):
            out |= S.free_vars(x)
    return out


# ---------------------------------------------------------------------------------------------
# Nests


def top_nests(body: T.Stmt) -> list[Nest]:
    """The nests of a function body, under its function-level (global) allocations."""
    match body:
        case T.Allocate(buffer, inner) if buffer.scope == "global":
            return top_nests(inner)
        case T.Seq(stmts):
            return [n for s in stmts for n in top_nests(s)]
    loops: list[T.For] = []
    s = body
    while isinstance(s, T.For):
        loops.append(s)
        s = s.body
    return [Nest(tuple(loops), s, _nest_kind(s))]


def _nest_kind(body: T.Stmt) -> str:
    inner = list(walk(body))
    if not any(isinstance(x, T.For) for x in inner):
        return "injective"
    if any(isinstance(x, T.Allocate) and x.buffer.scope == "local" for x in inner):
        return "reduction"
    return "opaque"


def global_allocs(body: T.Stmt) -> list[T.Buffer]:
    match body:
        case T.Allocate(buffer, inner) if buffer.scope == "global":
            return [buffer, *global_allocs(inner)]
        case T.Seq(stmts):
            return [b for s in stmts for b in global_allocs(s)]
    return []


def is_loop_index(indices: tuple[PrimExpr, ...], nest: Nest) -> bool:
    return len(indices) == len(nest.loops) and all(
        isinstance(i, SymVar) and i == v for i, v in zip(indices, nest.vars)
    )


def store_context(nest: Nest) -> Iterator[tuple[T.Store, tuple[T.For, ...]]]:
    """Every store of a nest with the loops below the spatial ones that enclose it."""

    def go(s: T.Stmt, inner: tuple[T.For, ...]) -> Iterator[tuple[T.Store, tuple[T.For, ...]]]:
        match s:
            case T.Store():
                yield s, inner
            case T.For(body=body):
                yield from go(body, (*inner, s))
            case T.Let(body=body) | T.Allocate(body=body):
                yield from go(body, inner)
            case T.IfThenElse(_, a, b):
                yield from go(a, inner)
                if b is not None:
                    yield from go(b, inner)
            case T.Seq(stmts):
                for x in stmts:
                    yield from go(x, inner)

    yield from go(nest.body, ())


# ---------------------------------------------------------------------------------------------
# Analysis


def analyze(func: T.PrimFunc) -> Pattern:
    """The fusion pattern of `func`; outputs are the parameter buffers it stores to."""
    nests = tuple(top_nests(func.body))
    written = {x.buffer.name for x in walk(func.body) if isinstance(x, T.Store)}
    outputs = [b for b in func.buffers if b.name in written]
    out = outputs[0] if len(outputs) == 1 else None
    out_nest = _output_nest(nests, out) if out is not None else None
    all_accesses = tuple(_access(func, nests, b, out) for b in func.buffers)
    written_at = frozenset(k for k, b in enumerate(func.buffers) if b.name in written)
    accesses = tuple(a for k, a in enumerate(all_accesses) if k not in written_at)
    opaque = out_nest is None or any(n.kind == "opaque" for n in nests)
    last = nests[-1] if nests else None

    inlinable = data_movement = has_lets = False
    if not opaque and len(nests) == 1 and nests[0].kind == "injective" and not global_allocs(func.body):
        lets, store = _lets_and_store(nests[0].body)
        if store is not None:
            inlinable = True
            has_lets = bool(lets)
            data_movement = all(_moves_data(v) for v in (store.value, *(v for _, v in lets)))

    if opaque:
        kind = Kind.OPAQUE
    elif any(n.kind == "reduction" for n in nests):
        reused = any(a.reuse and a.in_reduction for a in accesses)
        kind = Kind.OUT_EWISE_FUSABLE if reused else Kind.REDUCTION
    elif len(nests) == 1 and not has_lets and all(a.identity for a in accesses):
        kind = Kind.ELEMWISE
    elif len(nests) == 1 and not has_lets and all(a.identity or a.broadcast for a in accesses):
        kind = Kind.BROADCAST
    else:
        kind = Kind.INJECTIVE
    epilogue = (
        not opaque
        and out_nest is last
        and out is not None
        and next(loads_of(func.body, out.name), None) is None
    )
    return Pattern(kind, nests, all_accesses, written_at, out, epilogue, inlinable, data_movement, has_lets)


def _output_nest(nests: tuple[Nest, ...], out: T.Buffer) -> Nest | None:
    """The one nest that stores `out`, each element once at its loop indices; else None."""
    owners = [n for n in nests if stores_to(n.body, out.name)]
    if len(owners) != 1:
        return None
    nest = owners[0]
    if len(nest.loops) != out.ndim or not all(
        S.Analyzer().can_prove_equal(e, d) for e, d in zip(nest.extents, out.shape)
    ):
        return None
    for store, inner in store_context(nest):
        if store.buffer.name == out.name and (inner or not is_loop_index(store.indices, nest)):
            return None
    return nest


def _lets_and_store(body: T.Stmt) -> tuple[list[tuple[SymVar, T.Value]], T.Store | None]:
    lets = []
    while isinstance(body, T.Let):
        lets.append((body.var, body.value))
        body = body.body
    return lets, body if isinstance(body, T.Store) else None


def _moves_data(e: T.Value) -> bool:
    """Loads, casts and selects on index conditions: recomputing it costs no arithmetic."""
    match e:
        case PrimExpr() | T.Imm():
            return True
        case T.Load(_, indices):
            return all(isinstance(i, PrimExpr) for i in indices)
        case T.Cast(_, v):
            return _moves_data(v)
        case T.Select(c, a, b):
            return _index_only(c) and _moves_data(a) and _moves_data(b)
    return False


def _index_only(e: T.Value) -> bool:
    return all(not isinstance(x, (T.Load, T.Imm)) or isinstance(x, PrimExpr) for x in walk_values(e))


def _access(func: T.PrimFunc, nests: tuple[Nest, ...], buf: T.Buffer, out: T.Buffer | None) -> Access:
    identity = broadcast = True
    sites, reuse, in_reduction = 0, False, False
    for nest in nests:
        for load, loops, lets in _load_context(nest, buf.name):
            sites += 1
            used = set()
            for i in load.indices:
                used |= S.free_vars(i)
            for name in list(used):
                used |= lets.get(name, set())
            # a loop of one iteration reads nothing twice
            enclosing = {lp.var.name for lp in (*nest.loops, *loops) if lp.extent != S.IntImm(1)}
            reuse |= not enclosing <= used
            in_reduction |= bool(loops)
            same_shape = out is not None and _same_shape(buf.shape, out.shape)
            identity &= (
                not loops and same_shape and is_loop_index(load.indices, nest) and nest.kind == "injective"
            )
            broadcast &= not loops and nest.kind == "injective" and _is_broadcast(load, buf, nest)
    if sites == 0:
        identity = broadcast = True
    return Access(sites, identity, broadcast, reuse, in_reduction)


def _same_shape(a: tuple[PrimExpr, ...], b: tuple[PrimExpr, ...]) -> bool:
    return len(a) == len(b) and all(S.Analyzer().can_prove_equal(x, y) for x, y in zip(a, b))


def _is_broadcast(load: T.Load, buf: T.Buffer, nest: Nest) -> bool:
    """Each index is a spatial loop var over the same extent (in loop order), or 0 on a dim of 1."""
    last = -1
    for idx, dim in zip(load.indices, buf.shape):
        if idx == S.IntImm(0) and dim == S.IntImm(1):
            continue
        if not isinstance(idx, SymVar) or idx not in nest.vars:
            return False
        pos = nest.vars.index(idx)
        if pos <= last or not S.Analyzer().can_prove_equal(nest.extents[pos], dim):
            return False
        last = pos
    return True


def _load_context(nest: Nest, name: str) -> Iterator[tuple[T.Load, tuple[T.For, ...], dict[str, set[str]]]]:
    """Each load of buffer `name` with the non-spatial loops above it and what its lets read."""

    def go(s: T.Stmt, loops: tuple[T.For, ...], lets: dict[str, set[str]]):
        for v in stmt_values(s):
            for e in walk_values(v):
                if isinstance(e, T.Load) and e.buffer.name == name:
                    yield e, loops, lets
        match s:
            case T.For(body=body):
                yield from go(body, (*loops, s), lets)
            case T.Let(var, value, body):
                deps = set()
                for x in value_vars(value):
                    deps |= lets.get(x, {x})
                yield from go(body, loops, {**lets, var.name: deps})
            case T.Allocate(body=body):
                yield from go(body, loops, lets)
            case T.IfThenElse(_, a, b):
                yield from go(a, loops, lets)
                if b is not None:
                    yield from go(b, loops, lets)
            case T.Seq(stmts):
                for x in stmts:
                    yield from go(x, loops, lets)

    yield from go(nest.body, (), {})


def is_reshape(func: T.PrimFunc) -> bool:
    """The function copies its one input to its output in row-major order (a reshape, squeeze,
    expand_dims or flatten): the output is the input's bytes seen with another shape."""
    pat = analyze(func)
    if not pat.inlinable or pat.has_lets or len(pat.inputs) != 1 or pat.output is None:
        return False
    (nest,) = pat.nests
    _, store = _lets_and_store(nest.body)
    src = store.value
    if not isinstance(src, T.Load) or src.buffer.dtype != pat.output.dtype:
        return False
    analyzer = S.Analyzer()
    for lp in nest.loops:
        hi = analyzer.upper_bound(lp.extent)
        analyzer.bind(lp.var.name, 0, hi - 1 if hi is not None else S.INF)
    return analyzer.can_prove_equal(
        _without_mod(_flat_offset(src.indices, src.buffer.shape)),
        _without_mod(_flat_offset(store.indices, pat.output.shape)),
    ) and analyzer.can_prove_equal(_numel(src.buffer.shape), _numel(pat.output.shape))


def _flat_offset(indices: tuple[PrimExpr, ...], shape: tuple[PrimExpr, ...]) -> PrimExpr:
    offset: PrimExpr = S.IntImm(0)
    for i, d in zip(indices, shape):
        offset = offset * d + i
    return offset


def _numel(shape: tuple[PrimExpr, ...]) -> PrimExpr:
    out: PrimExpr = S.IntImm(1)
    for d in shape:
        out = out * d
    return out


def _without_mod(e: PrimExpr) -> PrimExpr:
    """`a % b` written `a - b * (a // b)`, so that the canonical form can cancel row-major digits:
    12 * (i // 12) + 4 * (i // 4 % 3) + i % 4 == i."""
    match e:
        case S.FloorMod(a, b):
            a, b = _without_mod(a), _without_mod(b)
            return a - b * S.floordiv(a, b)
        case S.FloorDiv(a, b):
            return S.floordiv(_without_mod(a), _without_mod(b))
        case S.Min(a, b):
            return S.minimum(_without_mod(a), _without_mod(b))
        case S.Max(a, b):
            return S.maximum(_without_mod(a), _without_mod(b))
        case S.Sum(terms, c):
            out: PrimExpr = S.IntImm(c)
            for mono, coeff in terms:
                t: PrimExpr = S.IntImm(coeff)
                for atom, p in mono:
                    for _ in range(p):
                        t = t * _without_mod(atom)
                out = out + t
            return out
    return e
