"""Default CPU schedules: a rule per kind of loop nest (analysis.py), written as loop transforms.

- injective: the innermost loop vectorized when the output is stride-1 in it, the loops around
  it fused into one parallel loop (a lone loop is cut into parallel chunks of vectors); costly
  values that a middle loop does not change are computed once outside it (cache_invariant).
- row reduction: the reduction accumulated in vector lanes (rfactor) when its reads are
  stride-1 along it, rows in parallel.
- matmul / matvec, `X[i, k] * W[j, k]` (weights [out, in]): parallel over chunks of W's rows,
  the rows of X inside, so one call streams W once whatever n is; a register block of R rows of
  X by C rows of W accumulates R*C vectors along k (each loaded value used C or R times), the
  lanes summed at the end. Rows that do not fill a block run as 1 x C blocks; for long k the
  rows of X are taken in tiles that stay in the L2 cache while W streams past them.
- matmul with W[k, j]: vectorized along j instead (a block of R rows by C vectors of columns).

A rule that cannot apply (a transform refuses) leaves its nest as it was: always correct.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.schedule import transforms as tr
from llm_deploy.compiler.schedule.analysis import Nest, classify, unit_stride
from llm_deploy.compiler.schedule.ir import (
    ScheduleError,
    accesses,
    find_loop,
    loop_path,
    loops,
    perfect_nest,
    unique_names,
    walk,
    walk_values,
)

DTYPE_BITS = {"float16": 16, "bfloat16": 16, "float32": 32, "float64": 64, "int8": 8, "uint8": 8,
              "int16": 16, "int32": 32, "uint32": 32, "int64": 64, "bool": 8}  # fmt: skip


@dataclass(frozen=True)
class CPUTarget:
    """What the rules need to know about the CPU: its SIMD width, caches and tile shapes."""

    vector_bits: int = 256
    l2_bytes: int = 256 * 1024  # the budget a tile of X may take in L2
    gemm_block: tuple[int, int] = (4, 3)  # rows of X x rows of W per register block
    gemv_cols: int = 4  # rows of W per block when X has one row
    # Vectors per accumulator for leftover rows (decode: n = 1). 1 keeps the summation order of the
    # main blocks, so a row's result does not depend on how many rows share the call (batch invariance).
    tail_vectors: int = 1
    parallel_chunk: int = 4096  # elements a parallel task takes at least (smaller work: one task)
    notes: list[str] = field(default_factory=list, compare=False)

    def lanes(self, dtype: str) -> int:
        return max(2, self.vector_bits // DTYPE_BITS.get(dtype, 32))


def schedule_cpu(f: T.PrimFunc, target: CPUTarget | None = None) -> T.PrimFunc:
    """Schedule every loop nest of `f` by the rule for its kind."""
    target = target or CPUTarget()
    if f.attrs.get("scheduled") or any(x.kind != "serial" for x in loops(f.body)):
        return f  # scheduled already (by hand or by an earlier pass): leave it
    f = tr.simplify_indices(unique_names(f))
    for nest in classify(f).nests:
        try:
            f = RULES[nest.kind](f, nest, target)
        except ScheduleError as e:
            target.notes.append(f"{nest.kind} nest {nest.root}: left serial: {e}")
    return f


# ---------------------------------------------------------------------------------------------
# Rules


def injective(f: T.PrimFunc, nest: Nest, t: CPUTarget) -> T.PrimFunc:
    names = list(nest.spatial)
    for depth in range(1, len(names) - 1):
        # costly values independent of a middle loop (rope's cos/sin of every head) are
        # computed once per iteration of the loops outside it
        try:
            cached = tr.cache_invariant(f, names[depth])
        except ScheduleError:
            continue
        new = [lp for lp in loops(cached.body) if lp.var.name not in _loop_names(f)]
        for lp in new:
            if isinstance(lp.body, T.Store):
                cached = tr.vectorize(cached, lp.var.name)
        if nest.contiguous and _long_enough(nest.extents[-1], 2):
            cached = tr.vectorize(cached, names[-1])
        return _parallel_outer(cached, names[:depth], _const_product(nest.extents[depth:]), t)
    inner = names[-1]
    vector = nest.contiguous and not _allocates(find_loop(f, inner)) and _long_enough(nest.extents[-1], 2)
    if vector:
        f = tr.vectorize(f, inner)
        names.pop()
        if not names:
            # one loop: parallel chunks of vectors, the rest a vector loop of its own
            extent = nest.extents[-1]
            if isinstance(extent, S.IntImm) and extent.value <= t.parallel_chunk:
                return f
            f = tr.split(f, inner, t.parallel_chunk, tail="loop")
            f = tr.parallel(f, f"{inner}_o")
            f = tr.annotate(f, f"{inner}_i", "vectorized")
            return tr.annotate(f, f"{inner}_t", "vectorized") if _has_loop(f, f"{inner}_t") else f
    inner_elems = _const_product(nest.extents[len(names) :])
    return _parallel_outer(f, names, inner_elems, t)


def reduction(f: T.PrimFunc, nest: Nest, t: CPUTarget) -> T.PrimFunc:
    red = nest.reduction
    assert red is not None
    k = red.loops[-1]
    lanes = t.lanes(_acc_dtype(f, red.acc))
    work = _const_product([find_loop(f, name).extent for name in red.loops])
    if red.op is not None and _stride1_reads(red.value, k) and _long_enough(find_loop(f, k).extent, lanes):
        f = tr.rfactor(f, k, lanes)
    return _parallel_outer(f, list(nest.spatial), work, t)


def matmul(f: T.PrimFunc, nest: Nest, t: CPUTarget) -> T.PrimFunc:
    mm = nest.matmul
    assert mm is not None and nest.reduction is not None
    if mm.layout == "outer":
        return _matmul_outer(f, nest, t)
    i, j, k = mm.rows, mm.cols, mm.k
    lanes = t.lanes(_acc_dtype(f, nest.reduction.acc))
    k_extent = find_loop(f, k).extent
    if not _long_enough(k_extent, lanes):
        return _parallel_outer(f, list(nest.spatial), _const_product([k_extent]), t)
    rows_extent = find_loop(f, i).extent
    gemv = nest.kind == "matvec"
    R, C = (1, t.gemv_cols) if gemv else t.gemm_block
    batch = list(mm.batch)
    if len(batch) > 1:
        f = tr.reorder(f, *batch, *(s for s in nest.spatial if s not in batch))
        for b in batch[1:]:
            f = tr.fuse(f, batch[0], b, name=f"{batch[0]}_b")
            batch[0] = f"{batch[0]}_b"
        batch = batch[:1]
    order = [*batch]
    tile = None
    if not gemv and isinstance(k_extent, S.IntImm):
        rows_per_tile = max(R, t.l2_bytes // (k_extent.value * 4) // R * R)
        fits = isinstance(rows_extent, S.IntImm) and rows_extent.value <= rows_per_tile
        if not fits:
            tile = rows_per_tile
    if tile is not None:
        f = tr.split(f, i, tile, tail="min", outer=f"{i}_c", inner=f"{i}_w")
        order.append(f"{i}_c")
        i = f"{i}_w"
    order += [j, i]
    f = _reorder_if_needed(f, order)
    f = tr.split(f, j, C, tail="loop", outer=f"{j}_o", inner=f"{j}_i")
    f = tr.reorder(f, i, f"{j}_i")
    if gemv:
        f = _block_dot(f, f"{j}_o", [i, f"{j}_i"], lanes)
    else:
        f = tr.split(f, i, R, tail="loop", outer=f"{i}_o", inner=f"{i}_i")
        f = _block_dot(f, f"{i}_o", [f"{i}_i", f"{j}_i"], lanes)
        if _has_loop(f, f"{i}_t"):
            tail = find_loop(f, f"{i}_t")
            f = _block_dot(f, f"{i}_t", [tail.body.var.name], lanes * t.tail_vectors)
    if _has_loop(f, f"{j}_t"):
        f = _rfactor_under(f, f"{j}_t", lanes)
    return tr.parallel(f, batch[0] if batch else f"{j}_o")


def _matmul_outer(f: T.PrimFunc, nest: Nest, t: CPUTarget) -> T.PrimFunc:
    """Out[i, j] = sum_k X[i, k] * W[k, j]: vectors along j, a block of R rows x C vectors."""
    mm = nest.matmul
    assert mm is not None and nest.reduction is not None
    i, j = mm.rows, mm.cols
    lanes = t.lanes(_acc_dtype(f, nest.reduction.acc))
    R, C = (1, 2) if nest.kind == "matvec" else (4, 2)
    batch = list(mm.batch)
    if len(batch) > 1:
        return _parallel_outer(f, list(nest.spatial), 1, t)
    f = _reorder_if_needed(f, [*batch, j, i])
    f = tr.split(f, j, lanes * C, tail="loop", outer=f"{j}_o", inner=f"{j}_v")
    f = tr.reorder(f, i, f"{j}_v")
    if R == 1:
        f = _block_outer(f, f"{j}_o", [i, f"{j}_v"])
    else:
        f = tr.split(f, i, R, tail="loop", outer=f"{i}_o", inner=f"{i}_i")
        f = _block_outer(f, f"{i}_o", [f"{i}_i", f"{j}_v"])
        if _has_loop(f, f"{i}_t"):
            tail = find_loop(f, f"{i}_t")
            f = _block_outer(f, f"{i}_t", [tail.body.var.name])
    return tr.parallel(f, batch[0] if batch else f"{j}_o")


RULES = {
    "injective": injective,
    "reduction": reduction,
    "matmul": matmul,
    "matvec": matmul,
    "opaque": lambda f, nest, t: f,
}


# ---------------------------------------------------------------------------------------------
# Building blocks


def _block(f: T.PrimFunc, under: str, block: list[str], kinds: list[str]) -> tuple[T.PrimFunc, str]:
    """Make `block` (the loops nested just under `under`, around one reduction) a register
    block: its accumulator hoisted and expanded, the loops distributed over init / update /
    store, and the reduction loop moved outside the block. Returns the reduction loop."""
    innermost = find_loop(f, block[-1])
    acc = next((s.buffer.name for s in walk(innermost.body) if isinstance(s, T.Allocate)), None)
    if acc is None:
        raise ScheduleError(f"block under {under}: no accumulator inside {block[-1]}")
    for name, kind in zip(block, kinds):
        f = tr.annotate(f, name, kind)  # copies made below keep the kind
    f = tr.expand_alloc(f, acc, under)
    for name in reversed(block):
        if isinstance(find_loop(f, name).body, T.Seq):
            f = tr.fission(f, name)
    # the update nest: the copy of the block whose body is the reduction loop
    k = next(
        s.var.name
        for s in walk(find_loop(f, under).body)
        if isinstance(s, T.For) and s.kind == "serial" and s.var.name not in block and _reads(s, acc)
    )
    path = [lp.var.name for lp in loop_path(f, k)]
    copies = path[path.index(under) + 1 : -1]
    f = tr.reorder(f, k, *copies)
    return f, k


def _block_dot(f: T.PrimFunc, under: str, block: list[str], lanes: int) -> T.PrimFunc:
    f, k = _block(f, under, block, ["unrolled"] * len(block))
    return tr.rfactor(f, k, lanes)


def _block_outer(f: T.PrimFunc, under: str, block: list[str]) -> T.PrimFunc:
    f, _ = _block(f, under, block, ["unrolled"] * (len(block) - 1) + ["vectorized"])
    return f


def _rfactor_under(f: T.PrimFunc, loop: str, lanes: int) -> T.PrimFunc:
    """rfactor every plain reduction loop under `loop` (a tail of single elements)."""
    for s in list(walk(find_loop(f, loop))):
        if isinstance(s, T.For) and s.var.name != loop and s.kind == "serial":
            body = s.body
            if isinstance(body, T.Store) and _long_enough(s.extent, lanes):
                try:
                    f = tr.rfactor(f, s.var.name, lanes)
                except ScheduleError:
                    pass
    return f


def _parallel_outer(f: T.PrimFunc, names: list[str], work: int, t: CPUTarget) -> T.PrimFunc:
    """Fuse the outer loops `names` (a perfect nest) into one and run it in parallel, in tasks
    of at least `t.parallel_chunk` elements (`work` per iteration): a decode step's tiny
    kernels then run as one task, which costs no dispatch, while prefill's spread out."""
    if not names:
        return f
    fused = names[0]
    for other in names[1:]:
        f = tr.fuse(f, fused, other, name=f"{fused}_f")
        fused = f"{fused}_f"
    per_task = max(1, t.parallel_chunk // max(1, work))
    if per_task > 1:
        f = tr.split(f, fused, per_task, tail="min", outer=f"{fused}_p", inner=f"{fused}_s")
        fused = f"{fused}_p"
    return tr.parallel(f, fused)


def _const_product(extents) -> int:
    """Product of the constant extents (a symbolic one counts as 1)."""
    out = 1
    for e in extents:
        out *= e.value if isinstance(e, S.IntImm) else 1
    return out


def _reorder_if_needed(f: T.PrimFunc, order: list[str]) -> T.PrimFunc:
    current = [lp.var.name for lp in perfect_nest(find_loop(f, order[0]))[: len(order)]]
    return f if current == order else tr.reorder(f, *order)


def _acc_dtype(f: T.PrimFunc, acc: str) -> str:
    for s in walk(f.body):
        if isinstance(s, T.Allocate) and s.buffer.name == acc:
            return s.buffer.dtype
    return "float32"


def _loop_names(f: T.PrimFunc) -> set[str]:
    return {lp.var.name for lp in loops(f.body)}


def _allocates(s: T.Stmt) -> bool:
    return any(isinstance(x, T.Allocate) for x in walk(s))


def _has_loop(f: T.PrimFunc, name: str) -> bool:
    return any(isinstance(x, T.For) and x.var.name == name for x in walk(f.body))


def _reads(s: T.Stmt, buffer: str) -> bool:
    return any(a.buffer.name == buffer for a in accesses(s))


def _long_enough(extent: S.PrimExpr, lanes: int) -> bool:
    return not isinstance(extent, S.IntImm) or extent.value >= lanes


def _stride1_reads(value: T.Value | None, k: str) -> bool:
    """Every load in `value` that depends on k reads consecutive elements as k counts up."""
    if value is None:
        return False
    loads = [e for e in walk_values(value) if isinstance(e, T.Load)]
    moving = [ld for ld in loads if any(k in S.free_vars(i) for i in ld.indices if isinstance(i, S.PrimExpr))]
    return bool(moving) and all(unit_stride(ld.indices[-1], k) for ld in moving)
