"""Emits one tir function body as LLVM IR: statements, loops, memory, and values.

Values are scalars or, inside a vectorized loop, `<lanes x T>` vectors (see vectorize.py): a
value that does not depend on the loop variable stays a scalar and is broadcast where it meets a
vector. Index arithmetic is int64 with `nsw` (indices never wrap), which lets LLVM fold address
computations and hoist them out of loops.

A parallel loop's body is outlined into a closure `void(i64 task, i64 ntasks, ptr env)` that
runs a contiguous share of the iterations; everything in scope (buffer pointers, symbolic dims,
loop and let variables) travels in an `env` struct on the caller's stack. Parallel loops nested
in another parallel loop run serially inside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from llvmlite import ir

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.targets.llvm import vectorize as V
from llm_deploy.targets.llvm.dtypes import I32, I64, PTR, DType, const, dtype, vec
from llm_deploy.targets.llvm.ops import Ops, lanes_of
from llm_deploy.targets.llvm.threadpool import PARALLEL_FOR

INDEX = dtype("int64")
NSW = ("nsw",)


class CodegenError(ValueError):
    """A tir function that the CPU target cannot compile; the message names the kernel and why."""


@dataclass
class ModuleState:
    """What every function of one LLVM module shares."""

    module: ir.Module
    ops: Ops
    vector_bits: int
    vector_lanes: int | None  # forced lane count, or None to derive it from the element width
    unroll_limit: int
    stack_limit: int  # larger (or symbolic) allocations go to the heap
    noalias: bool
    closures: int = 0
    loop_ids: int = 0
    notes: list[str] = field(default_factory=list)  # loops that could not be vectorized, and why
    # Kernels whose body is a microkernel: its symbol -> (ggml type, N, K) (microkernels.py).
    microkernels: dict[str, tuple[str, int, int]] = field(default_factory=dict)

    def short_loop_id(self) -> ir.MDValue:
        """Loop metadata: do not vectorize or unroll (a distinct, self-referencing node per loop)."""
        m = self.module
        opts = [
            m.add_metadata(
                [ir.MetaDataString(m, "llvm.loop.vectorize.enable"), ir.Constant(ir.IntType(1), 0)]
            ),
            m.add_metadata([ir.MetaDataString(m, "llvm.loop.unroll.disable")]),
        ]
        self.loop_ids += 1
        node = m.add_metadata([ir.MetaDataString(m, f"loop{self.loop_ids}"), *opts])
        node.operands = [node, *opts]
        return node

    def function(self, name: str, ret: ir.Type, args: list[ir.Type], linkage: str = "") -> ir.Function:
        fn = ir.Function(self.module, ir.FunctionType(ret, args), name)
        if linkage:
            fn.linkage = linkage
        return fn


@dataclass
class VecLoop:
    var: str
    lanes: int
    base: ir.Value  # i64: the loop variable's value in lane 0


class FunctionEmitter:
    def __init__(self, state: ModuleState, fn: ir.Function, kernel: str, in_parallel: bool = False):
        self.st = state
        self.fn = fn
        self.kernel = kernel
        self.in_parallel = in_parallel
        self.entry = fn.append_basic_block("entry")
        self.b = ir.IRBuilder(fn.append_basic_block("body"))
        self.vars: dict[str, ir.Value] = {}  # SymVar name -> i64 (or <lanes x i64> when varying)
        self.bufs: dict[str, ir.Value] = {}  # buffer name -> ptr
        self.analyzer = S.Analyzer()
        self.vec: VecLoop | None = None
        self.varying: set[str] = set()
        self.mask: ir.Value | None = None  # lanes a masked load may touch (under a varying select)

    @property
    def ops(self) -> Ops:
        # One Ops per module, shared by a kernel and its outlined closures: point it at our builder.
        self.st.ops.b = self.b
        return self.st.ops

    def finish(self) -> None:
        """Close the entry block (allocas only) into the body and end the function."""
        ir.IRBuilder(self.entry).branch(self.fn.blocks[1])
        self.b.ret_void()

    def entry_alloca(self, t: ir.Type) -> ir.Instruction:
        a = ir.IRBuilder(self.entry).alloca(t)
        a.type = PTR  # an opaque pointer, so that loads and stores of any type may use it
        return a

    def error(self, msg: str) -> CodegenError:
        return CodegenError(f"kernel {self.kernel}: {msg}")

    # --- scopes -------------------------------------------------------------------------------

    def bind(self, name: str, value: ir.Value, lo: float = -S.INF, hi: float = S.INF) -> Callable[[], None]:
        """Bind a symbolic variable for a scope; returns the function that ends the scope."""
        old_value, old_bounds = self.vars.get(name), self.analyzer.bounds.pop(name, None)
        was_varying = name in self.varying
        self.vars[name] = value
        if lo > -S.INF or hi < S.INF:
            self.analyzer.bounds[name] = (lo, hi)
        if lanes_of(value) > 1:
            self.varying.add(name)
        else:
            self.varying.discard(name)

        def restore() -> None:
            if old_value is None:
                self.vars.pop(name, None)
            else:
                self.vars[name] = old_value
            self.analyzer.bounds.pop(name, None)
            if old_bounds is not None:
                self.analyzer.bounds[name] = old_bounds
            (self.varying.add if was_varying else self.varying.discard)(name)

        return restore

    # --- statements ---------------------------------------------------------------------------

    def stmt(self, s: T.Stmt) -> None:
        match s:
            case T.Seq(stmts):
                for x in stmts:
                    self.stmt(x)
            case T.Store():
                self.store(s)
            case T.Let(var, value, body):
                v = self.as_index(value)
                lo = 0 if isinstance(value, S.PrimExpr) and self.analyzer.can_prove_nonneg(value) else -S.INF
                end = self.bind(var.name, v, lo=lo)
                self.stmt(body)
                end()
            case T.IfThenElse(cond, then_body, else_body):
                self.if_then_else(cond, then_body, else_body)
            case T.Allocate(buffer, body):
                self.allocate(buffer, body)
            case T.Barrier():
                pass  # one thread per task on the CPU: nothing to wait for
            case T.For():
                self.loop(s)
            case _:
                raise self.error(f"cannot compile statement {type(s).__name__}")

    def if_then_else(self, cond: T.Value, then_body: T.Stmt, else_body: T.Stmt | None) -> None:
        c = self.cond(cond)
        if lanes_of(c) > 1:
            raise self.error("an if inside a vectorized loop branches on a value that differs between lanes")
        if else_body is None:
            with self.b.if_then(c):
                self.stmt(then_body)
            return
        with self.b.if_else(c) as (then, otherwise):
            with then:
                self.stmt(then_body)
            with otherwise:
                self.stmt(else_body)

    def allocate(self, buffer: T.Buffer, body: T.Stmt) -> None:
        d = dtype(buffer.dtype)
        size = S.const(1)
        for dim in buffer.shape:
            size = size * dim
        heap = not isinstance(size, S.IntImm) or size.value * d.mem_bytes > self.st.stack_limit
        if heap:
            nbytes = self.b.mul(self.index(size), ir.Constant(I64, d.mem_bytes), flags=NSW)
            malloc = self.ops.declare("malloc", PTR, [I64])
            ptr = self.b.call(malloc, [nbytes])
        else:
            # In the entry block: allocated once per call, however often the body runs.
            ptr = self.entry_alloca(ir.ArrayType(d.mem, max(size.value, 1)))
            ptr.align = 64
        old = self.bufs.get(buffer.name)
        self.bufs[buffer.name] = ptr
        self.stmt(body)
        if old is None:
            del self.bufs[buffer.name]
        else:
            self.bufs[buffer.name] = old
        if heap:
            self.b.call(self.ops.declare("free", ir.VoidType(), [PTR]), [ptr])

    # --- loops --------------------------------------------------------------------------------

    def counted_loop(
        self, begin: ir.Value, end: ir.Value, body: Callable[[ir.Value], None], short: bool = False
    ) -> None:
        """for (i = begin; i < end; i++) body(i); a `short` loop (a vector loop's scalar tail)
        is left alone by LLVM's vectorizer and unroller, which would only grow the code."""
        b = self.b
        pre = b.block
        header = self.fn.append_basic_block("loop")
        inner = self.fn.append_basic_block("loop.body")
        done = self.fn.append_basic_block("loop.end")
        b.branch(header)
        b.position_at_end(header)
        i = b.phi(I64)
        i.add_incoming(begin, pre)
        b.cbranch(b.icmp_signed("<", i, end), inner, done)
        b.position_at_end(inner)
        body(i)
        i.add_incoming(b.add(i, ir.Constant(I64, 1), flags=NSW), b.block)
        latch = b.branch(header)
        if short:
            latch.set_metadata("llvm.loop", self.st.short_loop_id())
        b.position_at_end(done)

    def loop(self, loop: T.For) -> None:
        match loop.kind:
            case "thread":
                raise self.error(
                    f"the loop over {loop.var.name} is bound to {loop.thread}, which the CPU cannot run; "
                    "schedule this kernel for the CPU (parallel/vectorized loops) or compile it for a GPU target"
                )
            case "vectorized":
                reason = V.why_not_vectorizable(loop)
                if reason is None:
                    return self.vectorized(loop)
                self.st.notes.append(
                    f"{self.kernel}: vectorized loop over {loop.var.name} stays scalar: {reason}"
                )
            case "unrolled" if (
                isinstance(loop.extent, S.IntImm) and loop.extent.value <= self.st.unroll_limit
            ):
                for k in range(loop.extent.value):
                    end = self.bind(loop.var.name, ir.Constant(I64, k), lo=k, hi=k)
                    self.stmt(loop.body)
                    end()
                return
            case "parallel" if not self.in_parallel and self.vec is None:
                return self.parallel(loop)
        self.serial(loop.var.name, ir.Constant(I64, 0), self.index(loop.extent), loop.body)

    def serial(self, var: str, begin: ir.Value, end: ir.Value, body: T.Stmt, short: bool = False) -> None:
        def emit(i: ir.Value) -> None:
            restore = self.bind(var, i, lo=0)
            self.stmt(body)
            restore()

        self.counted_loop(begin, end, emit, short)

    def vectorized(self, loop: T.For) -> None:
        """The body once on `<lanes x T>` vectors for each full group of lanes, then a scalar tail."""
        lanes = self.st.vector_lanes or max(2, self.st.vector_bits // V.widest_bits(loop))
        extent = loop.extent
        if isinstance(extent, S.IntImm):
            if extent.value <= 0:
                return
            lanes = min(lanes, extent.value)
            if lanes == 1:  # one iteration: nothing to run side by side
                return self.serial(loop.var.name, ir.Constant(I64, 0), ir.Constant(I64, 1), loop.body)
        elif not self.analyzer.can_prove_nonneg(extent):
            extent = S.maximum(extent, 0)  # a negative count would make the tail run backwards
        groups, tail_start = extent // lanes, (extent // lanes) * lanes
        name = loop.var.name

        def vector_body(base: ir.Value) -> None:
            outer_vec, outer_mask = self.vec, self.mask
            self.vec, self.mask = VecLoop(name, lanes, base), None
            steps = ir.Constant(ir.VectorType(I64, lanes), list(range(lanes)))
            restore = self.bind(name, self.b.add(self.broadcast(base, lanes), steps, flags=NSW), lo=0)
            self.stmt(loop.body)
            restore()
            self.vec, self.mask = outer_vec, outer_mask

        if groups == S.IntImm(1):
            vector_body(ir.Constant(I64, 0))
        elif groups != S.IntImm(0):
            step = ir.Constant(I64, lanes)
            self.counted_loop(
                ir.Constant(I64, 0),
                self.index(groups),
                lambda g: vector_body(self.b.mul(g, step, flags=NSW)),
            )
        if S.sub(extent, tail_start) != S.IntImm(0):
            self.serial(name, self.index(tail_start), self.index(extent), loop.body, short=True)

    def parallel(self, loop: T.For) -> None:
        st = self.st
        st.closures += 1
        closure = st.function(
            f"{self.fn.name}.parallel{st.closures}", ir.VoidType(), [I64, I64, PTR], "internal"
        )
        captured = [(k, v) for k, v in self.vars.items()] + [(k, v) for k, v in self.bufs.items()]
        env_type = ir.LiteralStructType([v.type for _, v in captured])
        env = self.entry_alloca(env_type)
        for i, (_, v) in enumerate(captured):
            slot = self.b.gep(
                env, [ir.Constant(I32, 0), ir.Constant(I32, i)], inbounds=True, source_etype=env_type
            )
            self.b.store(v, slot)
        extent = self.index(loop.extent)
        pfor = self.ops.declare(PARALLEL_FOR, ir.VoidType(), [PTR, PTR, I64])
        self.b.call(pfor, [closure, env, extent])

        # The closure unpacks env into the arguments of the body function, whose buffer
        # pointers are noalias like the kernel's: LLVM keeps that knowledge when it inlines.
        body_fn = st.function(
            f"{closure.name}.body", ir.VoidType(), [I64, I64] + [v.type for _, v in captured], "internal"
        )
        b = ir.IRBuilder(closure.append_basic_block("entry"))
        task, ntasks, env_arg = closure.args
        values = [
            b.load(
                b.gep(
                    env_arg, [ir.Constant(I32, 0), ir.Constant(I32, i)], inbounds=True, source_etype=env_type
                ),
                typ=v.type,
            )
            for i, (_, v) in enumerate(captured)
        ]
        b.call(body_fn, [task, ntasks, *values])
        b.ret_void()

        inner = FunctionEmitter(st, body_fn, self.kernel, in_parallel=True)
        task, ntasks, *args = body_fn.args
        b = inner.b
        for (name, _), arg in zip(captured, args):
            arg.name = name
            if name in self.vars:
                inner.vars[name] = arg
            else:
                inner.bufs[name] = arg
                if st.noalias:
                    arg.add_attribute("noalias")
        inner.varying = set()
        inner.analyzer = S.Analyzer(dict(self.analyzer.bounds))
        # Task t runs iterations [t * E / n, (t + 1) * E / n): shares differ by at most one.
        e = inner.index(loop.extent)
        begin = b.udiv(b.mul(task, e, flags=NSW), ntasks)
        end = b.udiv(b.mul(b.add(task, ir.Constant(I64, 1), flags=NSW), e, flags=NSW), ntasks)
        inner.serial(loop.var.name, begin, end, loop.body)
        inner.finish()

    # --- memory -------------------------------------------------------------------------------

    def flat_offset(self, buffer: T.Buffer, indices: tuple[S.PrimExpr, ...]) -> S.PrimExpr:
        offset, stride = S.const(0), S.const(1)
        for idx, dim in zip(reversed(indices), reversed(buffer.shape)):
            offset = offset + idx * stride
            stride = stride * dim
        return offset

    def buffer_ptr(self, buffer: T.Buffer) -> ir.Value:
        if buffer.name not in self.bufs:
            raise self.error(f"buffer {buffer.name} is neither a parameter nor allocated in scope")
        return self.bufs[buffer.name]

    def access(self, buffer: T.Buffer, indices: tuple[S.PrimExpr, ...]) -> tuple[str, ir.Value]:
        """How to reach buffer[indices]: ("scalar", ptr), ("contiguous", ptr) or ("lanes", <n x ptr>)."""
        d = dtype(buffer.dtype)
        ptr, offset = self.buffer_ptr(buffer), self.flat_offset(buffer, indices)
        gep = lambda off: self.b.gep(ptr, [off], inbounds=True, source_etype=d.mem)  # noqa: E731
        if not (S.free_vars(offset) & self.varying):
            return "scalar", gep(self.index(offset))
        v = self.vec
        others = self.varying - {v.var}
        if V.linear_coeff(offset, v.var) == 1 and not (S.free_vars(offset) & others):
            rest = S.substitute(offset, {v.var: 0})
            return "contiguous", gep(self.b.add(self.index(rest), v.base, flags=NSW))
        ptrs = gep(self.index(offset))
        ptrs.type = ir.VectorType(PTR, v.lanes)  # llvmlite types a vector GEP as a scalar ptr
        return "lanes", ptrs

    def load(self, e: T.Load) -> ir.Value:
        d = dtype(e.buffer.dtype)
        how, ptr = self.access(e.buffer, e.indices)
        b, align = self.b, d.mem_bytes
        if how == "scalar":
            x = b.load(ptr, typ=d.mem, align=align)
        else:
            lanes = self.vec.lanes
            vt = ir.VectorType(d.mem, lanes)
            if how == "contiguous" and self.mask is None:
                x = b.load(ptr, typ=vt, align=align)
            else:
                mask = self.mask if self.mask is not None else const(dtype("bool"), True, lanes)
                pass_through = ir.Constant(vt, None)
                if how == "contiguous":
                    name = f"llvm.masked.load.v{lanes}{_mangle(d.mem)}.p0"
                    fn = self.ops.declare(name, vt, [PTR, I32, mask.type, vt])
                else:
                    name = f"llvm.masked.gather.v{lanes}{_mangle(d.mem)}.v{lanes}p0"
                    fn = self.ops.declare(name, vt, [ptr.type, I32, mask.type, vt])
                x = b.call(fn, [ptr, ir.Constant(I32, align), mask, pass_through])
        return self.ops.to_bool(dtype("uint8"), x) if d.kind == "bool" else x

    def store(self, s: T.Store) -> None:
        d = dtype(s.buffer.dtype)
        x = self.value_as(s.value, d)
        if d.kind == "bool":
            x = self.b.zext(x, vec(d.mem, lanes_of(x)))
        how, ptr = self.access(s.buffer, s.indices)
        b, align = self.b, d.mem_bytes
        if how == "scalar":
            if lanes_of(x) > 1:
                # Every lane writes the same element; the last one wins, as in a scalar loop.
                x = b.extract_element(x, ir.Constant(I32, lanes_of(x) - 1))
            b.store(x, ptr, align=align)
            return
        x = self.broadcast(x, self.vec.lanes)
        if how == "contiguous":
            b.store(x, ptr, align=align)
            return
        # Overlapping lanes of a scatter are written in lane order, so the last one wins here too.
        mask = const(dtype("bool"), True, self.vec.lanes)
        name = f"llvm.masked.scatter.v{self.vec.lanes}{_mangle(d.mem)}.v{self.vec.lanes}p0"
        fn = self.ops.declare(name, ir.VoidType(), [x.type, ptr.type, I32, mask.type])
        b.call(fn, [x, ptr, ir.Constant(I32, align), mask])

    # --- values -------------------------------------------------------------------------------

    def broadcast(self, x: ir.Value, lanes: int) -> ir.Value:
        if lanes_of(x) == lanes:
            return x
        if lanes_of(x) != 1:
            raise self.error(f"cannot combine values of {lanes_of(x)} and {lanes} lanes")
        vt = ir.VectorType(x.type, lanes)
        one = self.b.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(I32, 0))
        return self.b.shuffle_vector(
            one, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(I32, lanes), None)
        )

    def same_lanes(self, *xs: ir.Value) -> list[ir.Value]:
        lanes = max(lanes_of(x) for x in xs)
        return [self.broadcast(x, lanes) for x in xs]

    def value_as(self, e: T.Value, d: DType) -> ir.Value:
        e = T.as_value(e)  # a plain Python number stored or compared is a constant
        return self.ops.cast(dtype(T.dtype_of(e)), d, self.value(e))

    def cond(self, e: T.Value) -> ir.Value:
        e = T.as_value(e)
        return self.ops.to_bool(dtype(T.dtype_of(e)), self.value(e))

    def as_index(self, e: T.Value) -> ir.Value:
        """An int64 index from any integer value (a token id loaded from an int32 buffer, ...)."""
        e = T.as_value(e)
        d = dtype(T.dtype_of(e))
        if d.is_float:
            raise self.error(f"an index variable is bound to a {d.name} value; cast it to an integer")
        return self.ops.cast(d, INDEX, self.value(e))

    def value(self, e: T.Value) -> ir.Value:
        match e:
            case S.PrimExpr():
                return self.index(e)
            case T.Imm(value, dt):
                return const(dtype(dt), value)
            case T.Load():
                return self.load(e)
            case T.Binary(op, a, b):
                da, db = T.dtype_of(a), T.dtype_of(b)
                # Mixed operands compute in numpy's promoted type; the result then takes a's
                # dtype (tir.dtype_of), exactly as the interpreter does.
                d = dtype(da if da == db else np.result_type(da, db).name)
                x, y = self.same_lanes(self.value_as(a, d), self.value_as(b, d))
                out = self.ops.binary(op, d, x, y)
                return out if op in T.COMPARE_OPS else self.ops.cast(d, dtype(da), out)
            case T.Intrin(name, args):
                if len(args) != 1:
                    raise self.error(f"intrinsic {name} takes one argument, found {len(args)}")
                return self.ops.intrin(name, dtype(T.dtype_of(args[0])), self.value(args[0]))
            case T.Cast(dt, value):
                return self.value_as(value, dtype(dt))
            case T.Select(c, a, b):
                return self.select(c, a, b)
        raise self.error(f"cannot compile value {e!r}")

    def select(self, c: T.Value, a: T.Value, b: T.Value) -> ir.Value:
        d = dtype(T.dtype_of(a))
        cond = self.cond(c)
        has_load = any(isinstance(x, T.Load) for side in (a, b) for x in V.walk_values(side))
        if not has_load:
            x, y, cond = self.same_lanes(self.value(a), self.value_as(b, d), cond)
            return self.b.select(cond, x, y)
        if lanes_of(cond) > 1:
            # Lanes read memory only where their side is selected (a guard like `i < n` may
            # protect an out-of-bounds index): masked loads and gathers.
            outer = self.mask
            self.mask = cond if outer is None else self.b.and_(outer, cond)
            x = self.value(a)
            not_cond = self.b.xor(cond, const(dtype("bool"), True, lanes_of(cond)))
            self.mask = not_cond if outer is None else self.b.and_(outer, not_cond)
            y = self.value_as(b, d)
            self.mask = outer
            x, y, cond = self.same_lanes(x, y, cond)
            return self.b.select(cond, x, y)
        # A uniform condition guarding a load: branch, so the other side's load never runs.
        then_bb = self.fn.append_basic_block("select.then")
        else_bb = self.fn.append_basic_block("select.else")
        merge = self.fn.append_basic_block("select.end")
        self.b.cbranch(cond, then_bb, else_bb)
        self.b.position_at_end(then_bb)
        x = self.value(a)
        x_end = self.b.block
        self.b.position_at_end(else_bb)
        y = self.value_as(b, d)
        y_end = self.b.block
        lanes = max(lanes_of(x), lanes_of(y))
        self.b.position_at_end(x_end)
        x = self.broadcast(x, lanes)
        self.b.branch(merge)
        self.b.position_at_end(y_end)
        y = self.broadcast(y, lanes)
        self.b.branch(merge)
        self.b.position_at_end(merge)
        phi = self.b.phi(x.type)
        phi.add_incoming(x, x_end)
        phi.add_incoming(y, y_end)
        return phi

    # --- index arithmetic ---------------------------------------------------------------------

    def index(self, e: S.PrimExpr) -> ir.Value:
        """An int64 (or `<lanes x i64>`) value of a canonical symbolic expression."""
        b = self.b
        match e:
            case S.IntImm(v):
                return ir.Constant(I64, v)
            case S.SymVar(name):
                if name not in self.vars:
                    raise self.error(
                        f"variable {name} is used but nothing binds it (not a parameter, shape dim, loop or let)"
                    )
                return self.vars[name]
            case S.Sum(terms, c):
                total: ir.Value | None = ir.Constant(I64, c) if c else None
                for mono, coeff in terms:
                    term = None
                    for atom, p in mono:
                        x = self.index(atom)
                        for _ in range(p):
                            term = x if term is None else self.mul(term, x)
                    if coeff != 1:
                        term = self.mul(term, ir.Constant(I64, coeff))
                    total = term if total is None else self.add(total, term)
                return total
            case S.FloorDiv(x, y) | S.FloorMod(x, y):
                xv, yv = self.same_lanes(self.index(x), self.index(y))
                if self.analyzer.can_prove_nonneg(x) and self.analyzer.can_prove_lt(0, y):
                    return b.udiv(xv, yv) if isinstance(e, S.FloorDiv) else b.urem(xv, yv)
                return self.ops.floordiv(xv, yv) if isinstance(e, S.FloorDiv) else self.ops.floormod(xv, yv)
            case S.Min(x, y) | S.Max(x, y):
                xv, yv = self.same_lanes(self.index(x), self.index(y))
                less = b.icmp_signed("<", xv, yv)
                return b.select(less, xv, yv) if isinstance(e, S.Min) else b.select(less, yv, xv)
        raise self.error(f"cannot compile index expression {e!r}")

    def add(self, x: ir.Value, y: ir.Value) -> ir.Value:
        x, y = self.same_lanes(x, y)
        return self.b.add(x, y, flags=NSW)

    def mul(self, x: ir.Value, y: ir.Value) -> ir.Value:
        x, y = self.same_lanes(x, y)
        return self.b.mul(x, y, flags=NSW)


def _mangle(t: ir.Type) -> str:
    if isinstance(t, ir.IntType):
        return f"i{t.width}"
    return {ir.HalfType: "f16", ir.FloatType: "f32", ir.DoubleType: "f64"}[type(t)]
