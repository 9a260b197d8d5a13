"""Default GPU schedules: every loop nest of a PrimFunc bound to workgroups and threads.

    f = schedule(f, WebGPUOptions())

A program is a host part (scratch allocations, branches on dims) around *stages*, each a nest of
independent ("spatial") loops over a body. The rule for a stage is chosen from its structure,
never from the op's name:

- elementwise / injective (and any body the rules below do not fit): the spatial loops are fused
  and split over workgroups of up to 256 threads, one thread per iteration; the body (inner
  loops included) runs in that thread.
- reduction (`acc = init; for k: acc = acc op v; out = f(acc)`, op add/mul/max/min, or the
  argmax/argmin pair): up to 32 threads per output (a SIMD group's worth) and 8 outputs per
  workgroup; the threads of an output fold strided slices of k into private accumulators, then
  combine them through workgroup memory in halving steps separated by barriers. Reductions
  shorter than 32 fold serially in one thread per output.
- matrix-vector / matrix-matrix (a sum whose value splits into a part that does not depend on
  one output dim j and a part that does not depend on another, i: `A[i, k] * B[j, k]`, or a
  dequantized weight in place of B): a host branch on the rows I. Few rows (decode) take the
  reduction rule: the weight row read once, by many threads. More rows (prefill) take a
  register-tiled matrix-matrix schedule: 64 threads per 32x32 tile of outputs, each thread a
  4x4 block (unrolled: registers), the A and B parts of each k loaded once and reused four times.
- rows: consecutive stages over the same rows that pass per-row values through scratch buffers
  (a norm's mean square; a softmax's max and sum) run as one workgroup per row, those values in
  workgroup memory, a barrier between stages: one dispatch, no scratch buffer.
- a stage with no independent loop runs in one thread.

A loop is independent when marked so (`parallel`, `vectorized`: a kernel author's or a pass's
promise) or when every access to each buffer it writes indexes one dim by exactly the loop's
variable. Every scheduled program runs equal to the original when its loops are run one after
another (the interpreter's semantics): per-thread values live in per-thread slots, each phase of
a workgroup is a thread loop, barriers sit between phases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.schedule.ir import rewrite_buffer
from llm_deploy.compiler.shape import PrimExpr, SymVar
from llm_deploy.targets.webgpu.walk import (
    free_names,
    loads,
    map_loads,
    stores,
    subst,
    subst_value,
    walk,
    walk_values,
)

if TYPE_CHECKING:
    from llm_deploy.targets.webgpu.codegen import WebGPUOptions

SERIAL_REDUCTION = 32  # reductions shorter than this fold in one thread
GEMV_ROWS = 4  # matrix products with at most this many rows use the reduction rule
TILE = 4  # outputs per thread along each dim in the matrix-matrix rule
TILE_THREADS = 8  # threads along each dim of a matrix-matrix workgroup (8x8: 32x32 outputs)
REDUCE_LANES = 32  # at most this many threads reduce one output (a GPU's SIMD width)
REDUCE_ROWS = 8  # outputs per workgroup in the reduction rule


def schedule(f: T.PrimFunc, options: WebGPUOptions | None = None) -> T.PrimFunc:
    """`f` with every stage bound to GPU workgroups and threads (see the module doc)."""
    from llm_deploy.targets.webgpu.codegen import WebGPUOptions

    ctx = _Context(f, options or WebGPUOptions())
    return T.PrimFunc(f.params, ctx.host(f.body), f.attrs)


class _Context:
    def __init__(self, f: T.PrimFunc, options: WebGPUOptions):
        self.options = options
        self.dims: set[str] = {s.name for s in f.scalars}
        for b in f.buffers:
            for d in b.shape:
                self.dims |= S.free_vars(d)
        self.taken = set(self.dims) | {p.name for p in f.params}
        for s in walk(f.body):
            match s:
                case T.For(var) | T.Let(var):
                    self.taken.add(var.name)
                case T.Allocate(buf):
                    self.taken.add(buf.name)
        self.analyzer = S.Analyzer()
        for d in self.dims - {s.name for s in f.scalars}:
            self.analyzer.bind(d, 0)

    def fresh(self, hint: str) -> str:
        name, k = hint, 0
        while name in self.taken:
            k += 1
            name = f"{hint}_{k}"
        self.taken.add(name)
        return name

    def var(self, hint: str) -> SymVar:
        return SymVar(self.fresh(hint))

    # -- the host part
    def host(self, s: T.Stmt, scratch: dict[str, T.Buffer] | None = None) -> T.Stmt:
        """`s` scheduled; `scratch`: the global buffers allocated around it on the host."""
        scratch = scratch or {}
        match s:
            case T.Seq(stmts):
                return T.seq(*self.fuse_rows(stmts, scratch))
            case T.Allocate(buf, body) if buf.scope == "global":
                new = self.host(body, {**scratch, buf.name: buf})
                used = any(x.buffer.name == buf.name for x in (*loads(new), *stores(new)))
                return T.Allocate(buf, new) if used else new  # kept per row in workgroup memory
            case T.IfThenElse(cond, then_body, else_body) if self.uniform(cond):
                e = None if else_body is None else self.host(else_body, scratch)
                return T.IfThenElse(cond, self.host(then_body, scratch), e)
            case T.For(_, _, _, "thread", _):
                return s
        return self.stage(s)

    def uniform(self, cond: T.Value) -> bool:
        """Depends on the dims only (the host can evaluate it)."""
        return not any(isinstance(e, T.Load) for e in walk_values(cond)) and free_names(cond) <= self.dims

    # -- one stage
    def stage(self, s: T.Stmt) -> T.Stmt:
        spatial, lets, body = self.nest(s)
        if not spatial:
            return self.single_thread(s)
        red = _match_reduction(body)
        if red is not None and all(S.free_vars(lp.extent) <= self.dims for lp in red.loops):
            length = _product([lp.extent for lp in red.loops])
            short = isinstance(length, S.IntImm) and length.value < SERIAL_REDUCTION
            if not short:
                mm = self.matmul(spatial, lets, red)
                if mm is not None:
                    return mm
                return self.cross_thread(spatial, lets, red, length)
        return self.elementwise(spatial, _wrap_lets(lets, body))

    def nest(self, s: T.Stmt) -> tuple[list[T.For], list[T.Let], T.Stmt]:
        """The independent loops at the top of `s` (with the lets between them) and the body."""
        spatial: list[T.For] = []
        lets: list[tuple[int, T.Let]] = []  # with the number of loops above each
        x = s
        while True:
            if isinstance(x, T.For) and x.kind != "thread" and S.free_vars(x.extent) <= self.dims:
                if not _independent(x):
                    break
                spatial.append(x)
                x = x.body
            elif isinstance(x, T.Let) and spatial:
                lets.append((len(spatial), x))
                x = x.body
            else:
                break
        # lets below the last loop belong to the body
        above = [lt for k, lt in lets if k < len(spatial)]
        below = [lt for k, lt in lets if k == len(spatial)]
        return spatial, above, _wrap_lets(below, x)

    # -- rules
    def single_thread(self, s: T.Stmt) -> T.Stmt:
        return T.For(
            self.var("bx"), 1, T.For(self.var("tx"), 1, s, "thread", "threadIdx.x"), "thread", "blockIdx.x"
        )

    def elementwise(self, spatial: list[T.For], body: T.Stmt) -> T.Stmt:
        """One thread per iteration of the fused spatial loops."""
        total = _product([lp.extent for lp in spatial])
        threads = self.options.max_workgroup_size
        if isinstance(total, S.IntImm) and total.value < threads:
            threads = max(32, 1 << (total.value - 1).bit_length())
        bx, tx = self.var("bx"), self.var("tx")
        flat = bx * threads + tx
        inner = subst(body, _decompose(flat, spatial))
        if not self.analyzer.can_prove_equal(S.floormod(total, threads), 0):
            inner = T.IfThenElse(T.binary("lt", flat, total), inner)
        blocks = S.floordiv(total + (threads - 1), threads)
        return T.For(bx, blocks, T.For(tx, threads, inner, "thread", "threadIdx.x"), "thread", "blockIdx.x")

    def cross_thread(
        self, spatial: list[T.For], lets: list[T.Let], red: _Reduction, length: PrimExpr
    ) -> T.Stmt:
        """`rows` outputs per workgroup, `lanes` threads per output: each lane folds a strided
        slice of k, then each row's lanes combine through workgroup memory in halving steps."""
        lanes, rows = self.reduce_shape(length)
        bx = self.var("bx")
        total = _product([lp.extent for lp in spatial])
        body = self.reduction_phases(spatial, lets, red, length, lanes, rows, bx)
        return T.For(bx, S.floordiv(total + (rows - 1), rows), body, "thread", "blockIdx.x")

    def reduction_phases(
        self,
        spatial: list[T.For],
        lets: list[T.Let],
        red: _Reduction,
        length: PrimExpr,
        lanes: int,
        rows: int,
        bx: SymVar,
    ) -> T.Stmt:
        """The work of workgroup `bx` in the reduction rule: fold, combine, finish."""
        threads = lanes * rows
        total = _product([lp.extent for lp in spatial])

        def output(t: PrimExpr) -> PrimExpr:
            return bx * rows + S.floordiv(t, lanes) if rows > 1 else bx

        def at_output(t: PrimExpr, body: T.Stmt) -> T.Stmt:
            """`body` for the output of thread t (nothing past the last output)."""
            body = subst(_wrap_lets(lets, body), _decompose(output(t), spatial))
            if rows > 1 and not self.analyzer.can_prove_equal(S.floormod(total, rows), 0):
                body = T.IfThenElse(T.binary("lt", output(t), total), body)
            return body

        shared = {
            a.name: T.Buffer(self.fresh(f"{a.name}_red"), (threads,), a.dtype, "shared") for a in red.accs
        }
        # phase 1: lane l of a row folds k = ko * lanes + l into private accumulators
        t1, ko = self.var("tx"), self.var("ko")
        kf = ko * lanes + S.floormod(t1, lanes)
        update = subst(red.update, _decompose(kf, red.loops))
        if not self.analyzer.can_prove_equal(S.floormod(length, lanes), 0):
            update = T.IfThenElse(T.binary("lt", kf, length), update)
        fold = at_output(t1, T.For(ko, S.floordiv(length + (lanes - 1), lanes), update))
        keep = [T.Store(shared[a.name], (t1,), T.Load(a, (S.const(0),))) for a in red.accs]
        phase1 = T.For(
            t1, threads, _alloc_all(red.accs, T.seq(*red.inits, fold, *keep)), "thread", "threadIdx.x"
        )

        # each row's lanes: halve the active ones until one value is left
        steps: list[T.Stmt] = [phase1, T.Barrier()]
        half = lanes // 2
        while half >= 1:
            t = self.var("tx")
            combine = _combine(red, shared, t, half)
            if rows > 1:
                combine = T.IfThenElse(T.binary("lt", S.floormod(t, lanes), half), combine)
                steps.append(T.For(t, threads - half, combine, "thread", "threadIdx.x"))
            else:
                steps.append(T.For(t, half, combine, "thread", "threadIdx.x"))
            steps.append(T.Barrier())
            half //= 2

        # a thread per row finishes: the accumulators from the row's slot 0, then the final stores
        t = self.var("tx")
        first = (t * lanes,)
        load = [T.Store(a, (S.const(0),), T.Load(shared[a.name], first)) for a in red.accs]
        last = _alloc_all(red.accs, T.seq(*load, *red.finals))
        steps.append(T.For(t, rows, at_output(t * lanes, last), "thread", "threadIdx.x"))
        body: T.Stmt = T.seq(*steps)
        for buf in shared.values():
            body = T.Allocate(buf, body)
        return body

    # -- several stages over the same rows: one workgroup per row
    def fuse_rows(self, stmts: tuple[T.Stmt, ...], scratch: dict[str, T.Buffer]) -> list[T.Stmt]:
        """Runs of stages over the same rows that pass per-row values through scratch buffers
        (a norm's mean square, a softmax's max and sum) become one kernel: one workgroup per
        row, the values kept in workgroup memory, a barrier between stages. The rest is
        scheduled stage by stage."""
        out: list[T.Stmt] = []
        k = 0
        while k < len(stmts):
            # the longest run from k whose stages fit, and whose per-row values stay inside it
            end = k + 1
            while end < len(stmts) and self.row_group(stmts[k : end + 1], scratch, ()) is not None:
                end += 1
            while end - k > 1 and self.row_group(stmts[k:end], scratch, stmts[end:]) is None:
                end -= 1
            if end - k > 1:
                out.append(self.rows_kernel(*self.row_group(stmts[k:end], scratch, stmts[end:])))  # type: ignore[misc]
            else:
                out.append(self.host(stmts[k], scratch))
            k = end
        return out

    def row_group(self, stmts, scratch: dict[str, T.Buffer], after) -> tuple | None:
        """(row extent, per stage (spatial, lets, body, reduction), the scratch buffers kept per
        row) when `stmts` can run as one workgroup per row, else None."""
        stages = []
        for x in stmts:
            if isinstance(x, T.For) and x.kind == "thread":
                return None
            spatial, lets, body = self.nest(x)
            if not spatial:
                return None
            stages.append((spatial, lets, body, _match_reduction(body)))
        rows = stages[0][0][0].extent
        if any(st[0][0].extent != rows for st in stages) or stages[0][3] is None:
            return None
        for spatial, _, _, red in stages:
            if red is not None and (len(spatial) != 1 or red.combine not in ("add", "mul", "max", "min")):
                return None
            if red is not None and not all(S.free_vars(lp.extent) <= self.dims for lp in red.loops):
                return None
        # per-row values: scratch buffers of shape (rows,), every access by the row variable
        kept: dict[str, T.Buffer] = {}
        for x, (spatial, _, _, _) in zip(stmts, stages):
            row = SymVar(spatial[0].var.name)
            for name, buf in scratch.items():
                accesses = [st.indices for st in stores(x) if st.buffer.name == name]
                accesses += [ld.indices for ld in loads(x) if ld.buffer.name == name]
                if not accesses:
                    continue
                if buf.shape != (rows,) or any(idx != (row,) for idx in accesses):
                    return None
                kept[name] = buf
        used_after = {ld.buffer.name for x in after for ld in loads(x)}
        if not kept or kept.keys() & used_after:
            return None
        return rows, stages, kept

    def rows_kernel(self, rows: PrimExpr, stages: list, kept: dict[str, T.Buffer]) -> T.Stmt:
        cap = self.options.max_workgroup_size
        lanes = 32
        for spatial, _, _, red in stages:
            extent = (
                _product([lp.extent for lp in red.loops])
                if red is not None
                else _product([lp.extent for lp in spatial[1:]])
            )
            want = self.reduce_shape(extent)[0] if red is not None else cap
            if isinstance(extent, S.IntImm):
                want = min(want, max(32, 1 << (max(1, extent.value) - 1).bit_length()))
            lanes = max(lanes, min(cap, want))
        bx = self.var("bx")
        phases: list[T.Stmt] = []
        for spatial, lets, body, red in stages:
            if red is not None:
                length = _product([lp.extent for lp in red.loops])
                phases.append(self.reduction_phases(spatial, lets, red, length, lanes, 1, bx))
            else:
                phases.append(self.row_elements(spatial, lets, body, lanes, bx))
            phases.append(T.Barrier())
        body: T.Stmt = T.seq(*phases[:-1])
        for name, buf in kept.items():
            local = T.Buffer(self.fresh(f"{name}_row"), (1,), buf.dtype, "shared")
            body = T.Allocate(local, rewrite_buffer(body, name, local, lambda idx: (S.const(0),)))
        return T.For(bx, rows, body, "thread", "blockIdx.x")

    def row_elements(
        self, spatial: list[T.For], lets: list[T.Let], body: T.Stmt, threads: int, bx: SymVar
    ) -> T.Stmt:
        """The elements of row bx of an elementwise stage, strided over the workgroup's threads."""
        inner = spatial[1:]
        count = _product([lp.extent for lp in inner])
        t, q = self.var("tx"), self.var("q")
        e = q * threads + t
        stmt = subst(_wrap_lets(lets, body), {spatial[0].var.name: bx, **_decompose(e, inner)})
        if not self.analyzer.can_prove_equal(S.floormod(count, threads), 0):
            stmt = T.IfThenElse(T.binary("lt", e, count), stmt)
        loop = T.For(q, S.floordiv(count + (threads - 1), threads), stmt)
        return T.For(t, threads, loop, "thread", "threadIdx.x")

    def reduce_shape(self, length: PrimExpr) -> tuple[int, int]:
        """(lanes per output, outputs per workgroup) for a reduction of `length`."""
        cap = self.options.max_workgroup_size
        if isinstance(length, S.IntImm):
            lanes = min(cap, REDUCE_LANES, max(8, 1 << (max(1, length.value // 16) - 1).bit_length()))
        else:
            lanes = min(cap, REDUCE_LANES)
        return lanes, max(1, min(REDUCE_ROWS, cap // lanes))

    def matmul(self, spatial: list[T.For], lets: list[T.Let], red: _Reduction) -> T.Stmt | None:
        """A host branch: the reduction rule for few rows, register tiles for many."""
        mm = _match_matmul(spatial, lets, red)
        if mm is None:
            return None
        rows = spatial[mm.i].extent
        length = _product([lp.extent for lp in red.loops])
        gemv = self.cross_thread(spatial, lets, red, length)
        if isinstance(rows, S.IntImm) and rows.value <= GEMV_ROWS:
            return gemv
        gemm = self.tiled(spatial, red, mm)
        if isinstance(rows, S.IntImm):
            return gemm
        return T.IfThenElse(T.binary("le", rows, GEMV_ROWS), gemv, gemm)

    def tiled(self, spatial: list[T.For], red: _Reduction, mm: _Matmul) -> T.Stmt:
        """Each of 64 threads computes a TILE x TILE block of a 32 x 32 tile of outputs."""
        i_loop, j_loop = spatial[mm.i], spatial[mm.j]
        rows, cols = i_loop.extent, j_loop.extent
        side = TILE * TILE_THREADS
        tiles_i = S.floordiv(rows + (side - 1), side)
        tiles_j = S.floordiv(cols + (side - 1), side)
        others = [lp for k, lp in enumerate(spatial) if k not in (mm.i, mm.j)]
        bx, t = self.var("bx"), self.var("tx")
        ti, tj = self.var("ti"), self.var("tj")
        grid = [*others, T.For(ti, tiles_i, T.Seq(())), T.For(tj, tiles_j, T.Seq(()))]
        outer = _decompose(bx, grid)
        ri, rj, k = self.var("ri"), self.var("rj"), red.loops[0].var
        i0 = outer[ti.name] * side + S.floordiv(t, TILE_THREADS) * TILE
        j0 = outer[tj.name] * side + S.floormod(t, TILE_THREADS) * TILE
        place = {lp.var.name: outer[lp.var.name] for lp in others}
        acc = red.accs[0]
        tile = T.Buffer(self.fresh(f"{acc.name}_tile"), (TILE, TILE), acc.dtype, "local")
        a_regs = [T.Buffer(self.fresh("a_reg"), (TILE,), T.dtype_of(e), "local") for e in mm.a_side]
        b_regs = [T.Buffer(self.fresh("b_reg"), (TILE,), T.dtype_of(e), "local") for e in mm.b_side]
        iv, jv = i_loop.var.name, j_loop.var.name

        def at(r: SymVar, c: SymVar) -> dict[str, PrimExpr]:
            return {**place, iv: i0 + r, jv: j0 + c}

        def fill(
            regs: list[T.Buffer], exprs: list[T.Value], var: str, base: PrimExpr, extent: PrimExpr
        ) -> T.Stmt:
            """Each side's values for this thread's TILE rows (or columns); zero past the end."""
            r = self.var("r")
            where = {**place, var: base + r}
            values = [T.Store(reg, (r,), subst_value(e, where)) for reg, e in zip(regs, exprs)]
            zeros = [T.Store(reg, (r,), T.Imm(0, reg.dtype)) for reg in regs]
            guarded = T.IfThenElse(T.binary("lt", base + r, extent), T.seq(*values), T.seq(*zeros))
            return T.For(r, TILE, guarded, "unrolled")

        def register(e: T.Value) -> T.Value | None:
            if not (isinstance(e, T.Load) and e.buffer.scope == "marker"):
                return None
            q = int(e.buffer.name[1:])
            return T.Load(a_regs[q], (ri,)) if e.buffer.name[0] == "a" else T.Load(b_regs[q], (rj,))

        value = map_loads(mm.value, register)
        value = subst_value(value, {**place, iv: i0 + ri, jv: j0 + rj})
        init_value = red.init_value
        step = T.seq(
            fill(a_regs, mm.a_side, iv, i0, rows),
            fill(b_regs, mm.b_side, jv, j0, cols),
            _unrolled(ri, rj, T.Store(tile, (ri, rj), T.binary("add", T.Load(tile, (ri, rj)), value))),
        )
        ri2, rj2 = self.var("ri"), self.var("rj")
        finals = subst(T.seq(*red.finals), at(ri2, rj2))
        finals = _rewrite_acc(finals, acc, tile, (ri2, rj2))
        inside = T.binary("and", T.binary("lt", i0 + ri2, rows), T.binary("lt", j0 + rj2, cols))
        ri0, rj0 = self.var("ri"), self.var("rj")
        body = T.Allocate(
            tile,
            T.seq(
                _unrolled(ri0, rj0, T.Store(tile, (ri0, rj0), init_value)),
                T.For(k, red.loops[0].extent, _alloc_all([*a_regs, *b_regs], step)),
                _unrolled(ri2, rj2, T.IfThenElse(inside, finals)),
            ),
        )
        blocks = _product([*(lp.extent for lp in others), tiles_i, tiles_j])
        threads = TILE_THREADS * TILE_THREADS
        return T.For(bx, blocks, T.For(t, threads, body, "thread", "threadIdx.x"), "thread", "blockIdx.x")


# ---------------------------------------------------------------------------------------------
# Pattern matching


@dataclass
class _Reduction:
    """`[allocate accs] { inits; for loops: update; finals }` with a recognized fold."""

    accs: list[T.Buffer]
    inits: list[T.Stmt]
    loops: list[T.For]
    update: T.Stmt
    finals: list[T.Stmt]
    combine: str  # add | mul | max | min | argmax | argmin
    value: T.Value | None = None  # the folded value (simple folds)
    best: T.Buffer | None = None  # argmax/argmin: the best value; accs also holds the index

    @property
    def init_value(self) -> T.Value:
        return self.inits[0].value  # type: ignore[attr-defined]


def _match_reduction(body: T.Stmt) -> _Reduction | None:
    accs: list[T.Buffer] = []
    x = body
    while isinstance(x, T.Allocate) and x.buffer.scope == "local" and x.buffer.shape == (S.const(1),):
        accs.append(x.buffer)
        x = x.body
    if not accs or not isinstance(x, T.Seq):
        return None
    names = {a.name for a in accs}
    stmts = list(x.stmts)
    fors = [k for k, s in enumerate(stmts) if isinstance(s, T.For)]
    if len(fors) != 1:
        return None
    k = fors[0]
    inits, loop, finals = stmts[:k], stmts[k], stmts[k + 1 :]
    if len(inits) != len(accs) or not all(isinstance(s, T.Store) and s.buffer.name in names for s in inits):
        return None
    if any(isinstance(s, T.For) for f in finals for s in walk(f)):
        return None
    loops = [loop]
    while isinstance(loops[-1].body, T.For):
        loops.append(loops[-1].body)
    update = loops[-1].body
    zero = (S.const(0),)
    if len(accs) == 1:
        acc = accs[0]
        if (
            isinstance(update, T.Store)
            and update.buffer.name == acc.name
            and isinstance(update.value, T.Binary)
        ):
            v = update.value
            me = T.Load(acc, zero)
            if v.op in ("add", "mul", "max", "min") and (v.a == me or v.b == me):
                other = v.b if v.a == me else v.a
                if not any(isinstance(e, T.Load) and e.buffer.name == acc.name for e in walk_values(other)):
                    return _Reduction(accs, inits, loops, update, finals, v.op, other)
        return None
    if len(accs) == 2 and isinstance(update, T.IfThenElse) and update.else_body is None:
        cond, then = update.cond, update.then_body
        if isinstance(cond, T.Binary) and cond.op in ("gt", "lt") and isinstance(cond.b, T.Load):
            best = cond.b.buffer
            idx = next((a for a in accs if a.name != best.name), None)
            if best.name in names and idx is not None and isinstance(then, T.Seq) and len(then.stmts) == 2:
                s0, s1 = then.stmts
                if (
                    isinstance(s0, T.Store) and s0.buffer.name == best.name and s0.value == cond.a
                    and isinstance(s1, T.Store) and s1.buffer.name == idx.name
                ):  # fmt: skip
                    kind = "argmax" if cond.op == "gt" else "argmin"
                    return _Reduction(
                        [idx, best], _order(inits, [idx, best]), loops, update, finals, kind, best=best
                    )
    return None


def _order(inits: list[T.Stmt], accs: list[T.Buffer]) -> list[T.Stmt]:
    by = {s.buffer.name: s for s in inits}  # type: ignore[attr-defined]
    return [by[a.name] for a in accs]


@dataclass
class _Matmul:
    i: int  # index of the row loop among the spatial loops
    j: int  # index of the column loop
    a_side: list[T.Value]  # subexpressions free of j
    b_side: list[T.Value]  # subexpressions free of i
    value: T.Value  # the folded value with markers in place of the sides


def _match_matmul(spatial: list[T.For], lets: list[T.Let], red: _Reduction) -> _Matmul | None:
    if red.combine != "add" or lets or len(red.loops) != 1 or len(spatial) < 2 or red.value is None:
        return None
    if not isinstance(red.update, T.Store):
        return None
    k = red.loops[0].var.name
    j = len(spatial) - 1
    for i in range(len(spatial) - 2, -1, -1):
        found = _split_sides(red.value, spatial[i].var.name, spatial[j].var.name, k)
        if found is not None:
            a_side, b_side, value = found
            return _Matmul(i, j, a_side, b_side, value)
    return None


def _split_sides(v: T.Value, i: str, j: str, k: str) -> tuple[list, list, T.Value] | None:
    """Maximal subexpressions of v that read i but not j (A side) and j but not i (B side)."""
    a_side: list[T.Value] = []
    b_side: list[T.Value] = []
    failed = False

    def marker(side: list, tag: str, e: T.Value) -> T.Load:
        if e not in side:
            side.append(e)
        return T.Load(T.Buffer(f"{tag}{side.index(e)}", (1,), T.dtype_of(e), "marker"), (S.const(0),))

    def fn(e: T.Value) -> T.Value | None:
        nonlocal failed
        names = free_names(e)
        if i in names and j not in names:
            return marker(a_side, "a", e)
        if j in names and i not in names:
            return marker(b_side, "b", e)
        if i not in names and j not in names:
            return e
        if isinstance(e, (T.Load, PrimExpr)):  # a leaf reading both: not a matrix product
            failed = True
            return e
        return None

    value = map_loads(v, fn)
    if failed or not a_side or not b_side:
        return None
    if not any(k in free_names(e) for e in a_side) or not any(k in free_names(e) for e in b_side):
        return None
    return a_side, b_side, value


def _independent(loop: T.For) -> bool:
    """Marked independent, or each written buffer has a dim indexed by exactly the loop variable
    in every access (different iterations then touch different slices)."""
    if loop.kind in ("parallel", "vectorized"):
        return True
    x = SymVar(loop.var.name)
    private = {s.buffer.name for s in walk(loop.body) if isinstance(s, T.Allocate)}
    written = {s.buffer.name for s in stores(loop.body)} - private
    for name in written:
        accesses = [s.indices for s in stores(loop.body) if s.buffer.name == name]
        accesses += [ld.indices for ld in loads(loop.body) if ld.buffer.name == name]
        ndim = len(accesses[0])
        if not any(all(idx[d] == x for idx in accesses) for d in range(ndim)):
            return False
    return True


def _combine(red: _Reduction, shared: dict[str, T.Buffer], t: SymVar, half: int) -> T.Stmt:
    if red.combine in ("add", "mul", "max", "min"):
        buf = shared[red.accs[0].name]
        return T.Store(buf, (t,), T.Binary(red.combine, T.Load(buf, (t,)), T.Load(buf, (t + half,))))
    best, idx = shared[red.best.name], shared[red.accs[0].name]  # type: ignore[union-attr]
    mine, other = T.Load(best, (t,)), T.Load(best, (t + half,))
    cmp = "gt" if red.combine == "argmax" else "lt"
    earlier = T.binary("lt", T.Load(idx, (t + half,)), T.Load(idx, (t,)))
    take = T.binary("or", T.binary(cmp, other, mine), T.binary("and", T.binary("eq", other, mine), earlier))
    return T.IfThenElse(take, T.seq(T.Store(best, (t,), other), T.Store(idx, (t,), T.Load(idx, (t + half,)))))


def _rewrite_acc(s: T.Stmt, acc: T.Buffer, tile: T.Buffer, at: tuple[SymVar, SymVar]) -> T.Stmt:
    """Reads of acc[0] in `s` become reads of tile[at]."""
    me = T.Load(acc, (S.const(0),))

    def value(e: T.Value) -> T.Value:
        return map_loads(e, lambda x: T.Load(tile, at) if x == me else None)

    match s:
        case T.Seq(stmts):
            return T.seq(*(_rewrite_acc(x, acc, tile, at) for x in stmts))
        case T.Store(buffer, indices, v):
            return T.Store(buffer, indices, value(v))
        case T.IfThenElse(c, a, b):
            return T.IfThenElse(
                value(c),
                _rewrite_acc(a, acc, tile, at),
                None if b is None else _rewrite_acc(b, acc, tile, at),
            )
        case T.Let(var, v, body):
            return T.Let(var, value(v), _rewrite_acc(body, acc, tile, at))
    return s


# ---------------------------------------------------------------------------------------------
# Helpers


def _unrolled(ri: SymVar, rj: SymVar, body: T.Stmt) -> T.Stmt:
    """body for every (ri, rj) of a TILE x TILE register block, unrolled (registers, not memory)."""
    return T.For(ri, TILE, T.For(rj, TILE, body, "unrolled"), "unrolled")


def _product(extents: list[PrimExpr]) -> PrimExpr:
    out = S.const(1)
    for e in extents:
        out = out * e
    return out


def _decompose(flat: PrimExpr, loops: list[T.For]) -> dict[str, PrimExpr]:
    """The loop variables of a row-major nest as functions of its fused index."""
    out: dict[str, PrimExpr] = {}
    stride = S.const(1)
    for k in range(len(loops) - 1, -1, -1):
        lp = loops[k]
        q = S.floordiv(flat, stride)
        out[lp.var.name] = q if k == 0 else S.floormod(q, lp.extent)
        stride = stride * lp.extent
    return out


def _wrap_lets(lets: list[T.Let], body: T.Stmt) -> T.Stmt:
    for lt in reversed(lets):
        body = T.Let(lt.var, lt.value, body)
    return body


def _alloc_all(bufs: list[T.Buffer], body: T.Stmt) -> T.Stmt:
    for b in reversed(bufs):
        body = T.Allocate(b, body)
    return body
