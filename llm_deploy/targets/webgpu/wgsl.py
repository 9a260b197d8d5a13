"""One GPU kernel (a statement whose loops are bound to workgroups and threads) as a WGSL shader.

The translation is literal; the schedule decided everything:

- `for b in blockIdx.x(E)`: one workgroup per b. The grid is one-dimensional and may exceed the
  65535 workgroups a dimension allows, so the host dispatches (x, y) groups and the shader reads
  b = x + y * num_x, returning when b >= E (uniform per workgroup: barriers stay legal).
- `for t in threadIdx.x(E)`: t is the invocation's local id; the workgroup size is the largest
  such (constant) extent, smaller loops are guarded by `t < E`.
- Other loops are `for` loops; `Let` is `let`; `local` buffers are function-scope arrays (private
  to an invocation), `shared` buffers are `var<workgroup>` arrays; `Barrier` is
  `workgroupBarrier()` and must sit in uniform control flow (outside thread loops).
- A local buffer allocated outside the thread loops holds one slice per thread in the tir (so
  running the loops one after another, as the interpreter does, gives the same result); its
  leading dims indexed by the thread variables are dropped here, since each invocation has its
  own copy anyway.
- Symbolic dims and scalar params are fields of a uniform struct (`dims`): one shader serves
  every length. Index math is i32; floor division and modulo become WGSL's truncating `/` and `%`
  where the bounds prove both operands non-negative, a helper otherwise.
- Global buffers are `array<word>` storage bindings (see dtypes.py for how each dtype is held).
  A buffer larger than one storage binding may be is bound as several chunks and read and
  written through helpers that pick the chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.shape import PrimExpr, SymVar
from llm_deploy.targets.webgpu.dtypes import NARROW_BITS, DType, dtype
from llm_deploy.targets.webgpu.walk import children, stmt_values, subst, walk, walk_values

GRID_TAGS = ("blockIdx.x", "blockIdx.y", "blockIdx.z")
MERGED = "b_merged"  # one binding holding copies of several small read-only buffers
UNROLL_LIMIT = 16  # `unrolled` loops up to this constant extent are emitted unrolled
THREAD_TAGS = ("threadIdx.x", "threadIdx.y", "threadIdx.z")
AXIS = {"x": 0, "y": 1, "z": 2}


class CodegenError(ValueError):
    """A tir kernel WebGPU cannot run; the message names the kernel and why."""


@dataclass(frozen=True)
class Binding:
    """A global buffer of a kernel: bound as `chunks` storage bindings of `chunk_words` words."""

    buffer: T.Buffer
    writable: bool
    chunks: int = 1
    chunk_words: int = 0  # 0: one binding holds the whole buffer
    merged: bool = False  # read from the shared MERGED binding at a word offset (a uniform)


@dataclass
class KernelSource:
    """What the host needs to dispatch one shader."""

    code: str
    bindings: list[Binding]
    uniforms: list[str]  # symbolic names, in the order of the `dims` struct
    grid: list[PrimExpr]  # extents of blockIdx.x, .y, .z
    linear: bool  # blockIdx.x spans (x, y) dispatch dims
    workgroup: tuple[int, int, int]
    f16: bool


# WGSL keywords and builtins never collide with ours: every tir name gets a prefix.
def var_name(name: str) -> str:
    return f"v_{name}"


def buf_name(name: str) -> str:
    return f"b_{name}"


def f32_literal(value: float, wgsl: str) -> str:
    """An exact literal of `value` rounded to the type (bitcasts for inf and nan)."""
    np_type = np.float16 if wgsl == "f16" else np.float32
    with np.errstate(over="ignore"):
        v = np_type(value)
    if not np.isfinite(v):
        bits = v.view(np.uint16 if wgsl == "f16" else np.uint32)
        if wgsl == "f16":
            return f"bitcast<vec2<f16>>({int(bits)}u).x"
        return f"bitcast<f32>({int(bits)}u)"
    text = repr(float(v))
    return f"{text}{'h' if wgsl == 'f16' else 'f'}"


def int_literal(value: int, wgsl: str) -> str:
    if wgsl == "u32":
        return f"{int(value) & 0xFFFFFFFF}u"
    v = max(-(2**31), min(2**31 - 1, int(value)))  # int64 values are 32-bit on the device
    return f"i32({v})" if v < 0 else f"{v}i"


HELPERS = {
    "fdiv": "fn fdiv(a: i32, b: i32) -> i32 {\n  let q = a / b;\n"
    "  return select(q, q - 1, (a % b != 0) && ((a < 0) != (b < 0)));\n}",
    "fmod": "fn fmod(a: i32, b: i32) -> i32 {\n  let r = a % b;\n"
    "  return select(r, r + b, (r != 0) && ((r < 0) != (b < 0)));\n}",
    # numpy raises on negative integer exponents; a negative count leaves 1 here.
    "ipow": "fn ipow(a: i32, b: i32) -> i32 {\n  var r = 1i;\n  for (var k = 0i; k < b; k++) { r = r * a; }\n"
    "  return r;\n}",
    "upow": "fn upow(a: u32, b: u32) -> u32 {\n  var r = 1u;\n  for (var k = 0u; k < b; k++) { r = r * a; }\n"
    "  return r;\n}",
    # Abramowitz & Stegun 7.1.26 refined (max abs error 1.2e-7): erf has no WGSL builtin.
    "erf": "fn erf_f32(x: f32) -> f32 {\n  let z = abs(x);\n  let t = 1.0 / (1.0 + 0.5 * z);\n"
    "  let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +"
    " t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 +"
    " t * 0.17087277)))))))));\n  return select(r - 1.0, 1.0 - r, x >= 0.0);\n}",
    # tanh(x) = (1 - e) / (1 + e) with e = exp(-2|x|): never inf / inf.
    "tanh": "fn tanh_f32(x: f32) -> f32 {\n  let e = exp(-2.0 * abs(x));\n  let t = (1.0 - e) / (1.0 + e);\n"
    "  return select(-t, t, x >= 0.0);\n}",
}


@dataclass
class _Scope:
    """What is known where a statement is emitted."""

    analyzer: S.Analyzer
    threads: dict[str, str] = field(default_factory=dict)  # thread loop var -> its tag
    in_thread: bool = False


class KernelEmitter:
    """Emits one device statement as a WGSL compute shader."""

    def __init__(
        self,
        kernel: str,
        stmt: T.Stmt,
        bindings: dict[str, Binding],
        uniforms: list[str],
        int_scalars: set[str],
        max_workgroup: tuple[int, int, int, int],
    ):
        self.kernel = kernel
        self.stmt = stmt
        self.bindings = bindings
        self.uniforms = uniforms
        self.int_scalars = int_scalars  # uniforms that are scalar params: unknown sign
        self.max_workgroup = max_workgroup  # x, y, z, invocations
        self.lines: list[str] = []
        self.indent = 1
        self.helpers: set[str] = set()
        self.shared: dict[str, T.Buffer] = {}
        self.private: dict[str, int] = {}  # local buffer -> leading thread dims to drop
        self.f16 = False
        self.tmp = 0
        self.workgroup = [1, 1, 1]
        self.grid: list[PrimExpr] = [S.const(1), S.const(1), S.const(1)]
        self.linear = False
        self.half_words: set[str] = set()  # float16 buffers only ever read as float32 (see build)
        self.scalars: set[str] = set()  # local buffers of one element, emitted as variables

    # -- errors
    def error(self, what: str) -> CodegenError:
        return CodegenError(f"kernel {self.kernel}: {what}")

    # -- output
    def emit(self, line: str) -> None:
        self.lines.append("  " * self.indent + line)

    def fresh(self, hint: str) -> str:
        self.tmp += 1
        return f"t_{hint}{self.tmp}"

    def wgsl_type(self, dt: str) -> str:
        try:
            d = dtype(dt)
        except TypeError as e:
            raise self.error(str(e)) from None
        if d.wgsl == "f16":
            self.f16 = True
        return d.wgsl

    # -- the shader
    def build(self) -> KernelSource:
        self._scan_launch(self.stmt)
        self.half_words = _read_as_f32(self.stmt, self.bindings)
        an = S.Analyzer()
        for u in self.uniforms:
            if u not in self.int_scalars:
                an.bind(u, 0)
        self.stmt_(self.stmt, _Scope(an))
        wg = tuple(self.workgroup)
        x, y, z, total = self.max_workgroup
        if wg[0] > x or wg[1] > y or wg[2] > z or wg[0] * wg[1] * wg[2] > total:
            raise self.error(
                f"workgroup size {wg} exceeds the limits (x <= {x}, y <= {y}, z <= {z}, {total} invocations)"
            )
        head = ["enable f16;"] if self.f16 else []
        if self.uniforms:
            fields = ", ".join(f"{var_name(u)}: i32" for u in self.uniforms)
            head.append(f"struct Dims {{ {fields} }}")
            head.append("@group(0) @binding(0) var<uniform> dims: Dims;")
        slot = 1
        for b in self.bindings.values():
            if b.merged:
                continue
            d = dtype(b.buffer.dtype)
            access = "read_write" if b.writable else "read"
            word = f"atomic<{d.storage}>" if _atomic(b) else d.storage
            if b.buffer.name in self.half_words:
                word = "u32"
            for c in range(b.chunks):
                name = buf_name(b.buffer.name) + (f"_{c}" if b.chunks > 1 else "")
                head.append(f"@group(0) @binding({slot}) var<storage, {access}> {name}: array<{word}>;")
                slot += 1
        if any(b.merged for b in self.bindings.values()):
            head.append(f"@group(0) @binding({slot}) var<storage, read> {MERGED}: array<u32>;")
        for buf in self.shared.values():
            head.append(
                f"var<workgroup> {buf_name(buf.name)}: array<{self.wgsl_type(buf.dtype)}, {_size(buf)}>;"
            )
        for b in self.bindings.values():
            if b.chunks > 1:
                head.extend(_chunk_helpers(b))
        head.extend(HELPERS[h] for h in sorted(self.helpers))
        entry = [
            f"@compute @workgroup_size({wg[0]}, {wg[1]}, {wg[2]})",
            "fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,"
            " @builtin(local_invocation_id) lid: vec3<u32>) {",
        ]
        prologue = [f"  let {var_name(u)}: i32 = dims.{var_name(u)};" for u in self.uniforms]
        code = "\n".join([*head, *entry, *prologue, *self.lines, "}", ""])
        return KernelSource(
            code, list(self.bindings.values()), list(self.uniforms), self.grid, self.linear, wg, self.f16
        )

    def _scan_launch(self, s: T.Stmt) -> None:
        """Workgroup size from the thread loops, grid from the block loops (each tag once)."""
        seen: set[str] = set()

        def visit(x: T.Stmt, in_block: bool) -> None:
            match x:
                case T.For(var, extent, body, "thread", tag):
                    axis = AXIS[tag[-1]]
                    if tag in GRID_TAGS:
                        if tag in seen:
                            raise self.error(f"{tag} is bound twice (loop {var.name})")
                        seen.add(tag)
                        self.grid[axis] = extent
                    else:
                        if not isinstance(extent, S.IntImm):
                            raise self.error(
                                f"the thread loop {var.name} ({tag}) has a symbolic extent "
                                f"{S.to_str(extent)}; workgroup sizes are constants (split it first)"
                            )
                        self.workgroup[axis] = max(self.workgroup[axis], extent.value)
                    visit(body, in_block)
                case _:
                    for c in children(x):
                        visit(c, in_block)

        visit(s, False)
        self.linear = "blockIdx.y" not in seen and "blockIdx.z" not in seen

    # -- statements
    def stmt_(self, s: T.Stmt, sc: _Scope) -> None:
        match s:
            case T.Seq(stmts):
                for x in stmts:
                    self.stmt_(x, sc)
            case T.For():
                self.for_(s, sc)
            case T.Store(buffer, indices, value):
                self.store(buffer, indices, value, sc)
            case T.Let(var, value, body):
                code, dt = self.value(value, sc)
                if self.wgsl_type(dt) not in ("i32", "u32"):
                    raise self.error(f"let {var.name} binds a {dt} value; lets bind integer indices")
                self.emit(f"let {var_name(var.name)}: i32 = i32({code});")
                self.stmt_(body, _Scope(sc.analyzer, sc.threads, sc.in_thread))
            case T.IfThenElse(cond, then_body, else_body):
                self.emit(f"if ({self.cond(cond, sc)}) {{")
                self.block(then_body, sc)
                if else_body is not None:
                    self.emit("} else {")
                    self.block(else_body, sc)
                self.emit("}")
            case T.Allocate(buffer, body):
                self.allocate(buffer, body, sc)
            case T.Barrier():
                if sc.in_thread:
                    raise self.error(
                        "a barrier inside a thread loop: barriers separate phases of the whole "
                        "workgroup and must sit between thread loops"
                    )
                self.emit("workgroupBarrier();")
            case _:
                raise self.error(f"cannot emit {type(s).__name__}")

    def block(self, s: T.Stmt, sc: _Scope) -> None:
        self.indent += 1
        self.stmt_(s, sc)
        self.indent -= 1

    def for_(self, s: T.For, sc: _Scope) -> None:
        v = var_name(s.var.name)
        hi = sc.analyzer.upper_bound(s.extent)
        inner = S.Analyzer(dict(sc.analyzer.bounds)).bind(s.var.name, 0, S.INF if hi is None else hi - 1)
        if s.kind == "thread" and s.thread in GRID_TAGS:
            axis = AXIS[s.thread[-1]]
            idx = "i32(wid.x + wid.y * nwg.x)" if (self.linear and axis == 0) else f"i32(wid.{'xyz'[axis]})"
            self.emit(f"let {v}: i32 = {idx};")
            self.emit(f"if ({v} < {self.index(s.extent, sc)}) {{")
            self.block(s.body, _Scope(inner, sc.threads, sc.in_thread))
            self.emit("}")
            return
        if s.kind == "thread":
            axis = AXIS[s.thread[-1]]
            threads = {**sc.threads, s.var.name: s.thread}
            self.emit("{")
            self.indent += 1
            self.emit(f"let {v}: i32 = i32(lid.{'xyz'[axis]});")
            guard = s.extent.value < self.workgroup[axis]
            if guard:
                self.emit(f"if ({v} < {s.extent.value}) {{")
                self.block(s.body, _Scope(inner, threads, True))
                self.emit("}")
            else:
                self.stmt_(s.body, _Scope(inner, threads, True))
            self.indent -= 1
            self.emit("}")
            return
        if isinstance(s.extent, S.IntImm) and s.extent.value == 1:  # no loop for one iteration
            self.emit("{")
            self.block(subst(s.body, {s.var.name: S.const(0)}), sc)
            self.emit("}")
            return
        if s.kind == "unrolled" and isinstance(s.extent, S.IntImm) and s.extent.value <= UNROLL_LIMIT:
            # one copy of the body per iteration: indices into local arrays become constants,
            # which lets the driver keep those arrays in registers
            for k in range(s.extent.value):
                self.emit("{")
                self.block(subst(s.body, {s.var.name: S.const(k)}), sc)
                self.emit("}")
            return
        # serial, unrolled, vectorized, parallel: a loop of one invocation
        self.emit(f"for (var {v}: i32 = 0; {v} < {self.index(s.extent, sc)}; {v}++) {{")
        self.block(s.body, _Scope(inner, sc.threads, sc.in_thread))
        self.emit("}")

    def allocate(self, buf: T.Buffer, body: T.Stmt, sc: _Scope) -> None:
        if buf.scope == "global":
            raise self.error(
                f"global buffer {buf.name} is allocated inside a kernel; allocate it outside the "
                "workgroup loops (the host allocates it on the device)"
            )
        if not all(isinstance(d, S.IntImm) for d in buf.shape):
            raise self.error(
                f"{buf.scope} buffer {buf.name} has a symbolic shape "
                f"({', '.join(S.to_str(d) for d in buf.shape)}); GPU scratch memory is sized at compile time"
            )
        if buf.scope == "shared":
            if sc.in_thread:
                raise self.error(f"shared buffer {buf.name} is allocated inside a thread loop")
            self.shared[buf.name] = buf
            self.stmt_(body, sc)
            return
        drop = 0 if sc.in_thread else _thread_dims(buf, body)
        self.private[buf.name] = drop
        size = math.prod(d.value for d in buf.shape[drop:])
        if size == 1:  # a scalar: a register, not an array in private memory
            self.scalars.add(buf.name)
            self.emit(f"var {buf_name(buf.name)}: {self.wgsl_type(buf.dtype)};")
        else:
            self.emit(f"var {buf_name(buf.name)}: array<{self.wgsl_type(buf.dtype)}, {size}>;")
        self.stmt_(body, sc)

    def store(self, buf: T.Buffer, indices: tuple, value: T.Value, sc: _Scope) -> None:
        code, dt = self.value(value, sc)
        code = self.convert(code, dt, buf.dtype)
        if buf.scope != "global":
            self.emit(f"{self.scratch(buf, indices, sc)} = {code};")
            return
        b = self._binding(buf)
        d = dtype(buf.dtype)
        flat = self.flat_index(buf, indices, sc)
        if d.per_word > 1:
            self.store_packed(b, d, flat, code)
            return
        if d.words == 2:
            t = self.fresh("v")
            w = self.fresh("w")
            hi = f"select(0, -1, {t} < 0)" if d.storage == "i32" else "0u"
            self.emit(f"let {t} = {code};")
            self.emit(f"let {w} = 2 * ({flat});")
            self.emit(_word_store(b, w, t) + " " + _word_store(b, f"{w} + 1", hi))
            return
        self.emit(_word_store(b, flat, code))

    def store_packed(self, b: Binding, d: DType, flat: str, code: str) -> None:
        """Set one element of a word shared with neighbours: clear its bits, then or them in."""
        if b.chunks > 1:
            raise self.error(
                f"writing {b.buffer.name}, a {d.name} buffer split into chunks, is not supported"
            )
        mask = (1 << d.bits) - 1
        bits = "select(0u, 1u, {})" if d.name == "bool" else "(u32({}) & " + f"{mask}u)"
        i, v, sh = self.fresh("i"), self.fresh("v"), self.fresh("s")
        name = buf_name(b.buffer.name)
        self.emit("{")
        self.emit(f"  let {i} = {flat};")
        self.emit(f"  let {v} = {bits.format(code)};")
        self.emit(f"  let {sh} = u32({i} % {d.per_word}) * {d.bits}u;")
        self.emit(f"  atomicAnd(&{name}[{i} / {d.per_word}], ~({mask}u << {sh}));")
        self.emit(f"  atomicOr(&{name}[{i} / {d.per_word}], {v} << {sh});")
        self.emit("}")

    # -- values: (code, tir dtype)
    def value(self, e: T.Value, sc: _Scope) -> tuple[str, str]:
        if isinstance(e, (bool, int, float)):
            e = T.as_value(e)
        match e:
            case PrimExpr():
                return self.index(e, sc), "int64"
            case T.Imm(v, dt):
                w = self.wgsl_type(dt)
                if w == "bool":
                    return ("true" if v else "false"), dt
                if w in ("f32", "f16"):
                    return f32_literal(float(v), w), dt
                return int_literal(int(v), w), dt
            case T.Load(buf, indices):
                return self.load(buf, indices, sc), buf.dtype
            case T.Binary(op, a, b):
                return self.binary(op, a, b, sc), T.dtype_of(e)
            case T.Intrin(name, args):
                return self.intrinsic(name, args, sc), T.dtype_of(e)
            case T.Cast("float32", T.Load(buf, indices)) if buf.name in self.half_words:
                # float16 read straight into float32: two halves per u32 word, no f16 extension
                flat = self.flat_index(buf, indices, sc)
                word = _word_load(self.bindings[buf.name], f"({flat}) / 2")
                return f"unpack2x16float({word})[({flat}) % 2]", "float32"
            case T.Cast(dt, v):
                code, src = self.value(v, sc)
                return self.convert(code, src, dt), dt
            case T.Select(c, a, b):
                ca, dta = self.value(a, sc)
                cb, dtb = self.value(b, sc)
                cb = self.convert(cb, dtb, dta)
                return f"select({cb}, {ca}, {self.cond(c, sc)})", dta
        raise self.error(f"cannot emit the value {e!r}")

    def cond(self, e: T.Value, sc: _Scope) -> str:
        code, dt = self.value(e, sc)
        return self.convert(code, dt, "bool")

    def convert(self, code: str, src: str, dst: str) -> str:
        ws, wd = self.wgsl_type(src), self.wgsl_type(dst)
        if wd == "bool":
            if ws == "bool":
                return code
            zero = {"f32": "0.0f", "f16": "0.0h", "i32": "0i", "u32": "0u"}[ws]
            return f"({code} != {zero})"
        out = code if ws == wd else f"{wd}({code})"
        if dst in NARROW_BITS and src != dst:
            out = _wrap_narrow(out, dst)
        return out

    def load(self, buf: T.Buffer, indices: tuple, sc: _Scope) -> str:
        if buf.scope != "global":
            return self.scratch(buf, indices, sc)
        b = self._binding(buf)
        d = dtype(buf.dtype)
        flat = self.flat_index(buf, indices, sc)
        if d.words == 2:
            return _word_load(b, f"2 * ({flat})")
        if d.per_word == 1:
            return _word_load(b, flat)
        word = _word_load(b, f"({flat}) / {d.per_word}")
        bits = f"(({word} >> (u32(({flat}) % {d.per_word}) * {d.bits}u)) & {(1 << d.bits) - 1}u)"
        if d.name == "bool":
            return f"({bits} != 0u)"
        if d.wgsl == "i32":  # sign-extend
            return f"((bitcast<i32>({bits}) << {32 - d.bits}u) >> {32 - d.bits}u)"
        return bits

    def _binding(self, buf: T.Buffer) -> Binding:
        if buf.name not in self.bindings:
            raise self.error(f"buffer {buf.name} is neither a parameter nor allocated on the host")
        return self.bindings[buf.name]

    def flat_index(self, buf: T.Buffer, indices: tuple, sc: _Scope) -> str:
        if all(isinstance(i, PrimExpr) for i in indices):
            flat, stride = S.const(0), S.const(1)
            for idx, dim in zip(reversed(indices), reversed(buf.shape)):
                flat = flat + idx * stride
                stride = stride * dim
            return self.index(sc.analyzer.simplify(flat), sc)
        parts, stride = [], "1"
        for idx, dim in zip(reversed(indices), reversed(buf.shape)):
            parts.append(f"({self.int_value(idx, sc)}) * {stride}")
            stride = f"{stride} * {self.index(dim, sc)}"
        return " + ".join(reversed(parts))

    def scratch(self, buf: T.Buffer, indices: tuple, sc: _Scope) -> str:
        """An element of a local or shared buffer (a local of one element is a plain variable)."""
        if buf.scope == "local" and buf.name in self.scalars:
            return buf_name(buf.name)
        return f"{buf_name(buf.name)}[{self.scratch_index(buf, indices, sc)}]"

    def scratch_index(self, buf: T.Buffer, indices: tuple, sc: _Scope) -> str:
        drop = self.private.get(buf.name, 0)
        kept, shape = indices[drop:], buf.shape[drop:]
        if not kept:
            return "0"
        return self.flat_index(T.Buffer(buf.name, shape, buf.dtype, buf.scope), kept, sc)

    def int_value(self, e: T.Value, sc: _Scope) -> str:
        code, dt = self.value(e, sc)
        return code if self.wgsl_type(dt) == "i32" else f"i32({code})"

    # -- index arithmetic (i32)
    def index(self, e: PrimExpr, sc: _Scope) -> str:
        e = S.const(e)
        match e:
            case S.IntImm(v):
                return int_literal(v, "i32")
            case SymVar(name):
                return var_name(name)
            case S.FloorDiv(a, b) | S.FloorMod(a, b):
                op = "/" if isinstance(e, S.FloorDiv) else "%"
                ca, cb = self.index(a, sc), self.index(b, sc)
                an = sc.analyzer
                if an.can_prove_nonneg(a) and an.can_prove_lt(0, b):
                    return f"({ca} {op} {cb})"
                name = "fdiv" if op == "/" else "fmod"
                self.helpers.add(name)
                return f"{name}({ca}, {cb})"
            case S.Min(a, b):
                return f"min({self.index(a, sc)}, {self.index(b, sc)})"
            case S.Max(a, b):
                return f"max({self.index(a, sc)}, {self.index(b, sc)})"
            case S.Sum(terms, c):
                parts = []
                for mono, coeff in terms:
                    factors = []
                    for atom, p in mono:
                        factors.extend([self.index(atom, sc)] * p)
                    body = " * ".join(factors)
                    parts.append(body if coeff == 1 else f"{int_literal(coeff, 'i32')} * {body}")
                if c:
                    parts.append(int_literal(c, "i32"))
                return "(" + " + ".join(parts) + ")"
        raise self.error(f"cannot emit the index {e!r}")

    # -- operators
    def binary(self, op: str, a: T.Value, b: T.Value, sc: _Scope) -> str:
        ca, dta = self.value(a, sc)
        cb, dtb = self.value(b, sc)
        w = self.wgsl_type(dta)
        if self.wgsl_type(dtb) != w:
            cb = self.convert(cb, dtb, dta)
        is_float = w in ("f32", "f16")
        match op:
            case "add" | "sub" | "mul":
                sym = {"add": "+", "sub": "-", "mul": "*"}[op]
                return self._wrap(f"({ca} {sym} {cb})", dta)
            case "div":
                return self._wrap(f"({ca} / {cb})", dta)
            case "floordiv":
                if is_float:
                    return f"floor({ca} / {cb})"
                if w == "u32":
                    return f"({ca} / {cb})"
                self.helpers.add("fdiv")
                return self._wrap(f"fdiv({ca}, {cb})", dta)
            case "floormod":
                if is_float:
                    return f"({ca} - {cb} * floor({ca} / {cb}))"
                if w == "u32":
                    return f"({ca} % {cb})"
                self.helpers.add("fmod")
                return f"fmod({ca}, {cb})"
            case "min" | "max":
                return f"{op}({ca}, {cb})"
            case "pow":
                if is_float:
                    return f"pow({ca}, {cb})"
                helper = "upow" if w == "u32" else "ipow"
                self.helpers.add(helper)
                return self._wrap(f"{helper}({ca}, {cb})", dta)
            case "lt" | "le" | "eq" | "ne" | "gt" | "ge":
                sym = {"lt": "<", "le": "<=", "eq": "==", "ne": "!=", "gt": ">", "ge": ">="}[op]
                return f"({ca} {sym} {cb})"
            case "and" | "or":
                sym = "&&" if op == "and" else "||"
                return f"({self.convert(ca, dta, 'bool')} {sym} {self.convert(cb, dta, 'bool')})"
            case "shl" | "shr":
                sym = "<<" if op == "shl" else ">>"
                return self._wrap(f"({ca} {sym} u32({cb}))", dta)
            case "bitand" | "bitor" | "bitxor":
                if w == "bool":
                    sym = {"bitand": "&&", "bitor": "||", "bitxor": "!="}[op]
                else:
                    sym = {"bitand": "&", "bitor": "|", "bitxor": "^"}[op]
                return f"({ca} {sym} {cb})"
        raise self.error(f"unknown binary op {op!r}")

    def _wrap(self, code: str, dt: str) -> str:
        """Arithmetic on narrow ints runs in 32 bits; wrap the result back to the dtype."""
        return _wrap_narrow(code, dt) if dt in NARROW_BITS else code

    def intrinsic(self, name: str, args: tuple, sc: _Scope) -> str:
        codes = [self.value(a, sc) for a in args]
        x, dt = codes[0]
        w = self.wgsl_type(dt)
        one = "1.0h" if w == "f16" else "1.0f"
        match name:
            case "exp" | "log" | "sqrt" | "floor" | "ceil" | "cos" | "sin" | "round" | "abs":
                return f"{name}({x})"
            case "rsqrt":
                return f"inverseSqrt({x})"
            case "tanh" | "erf":
                self.helpers.add(name)
                fn = f"{name}_f32"
                return f"{w}({fn}(f32({x})))" if w == "f16" else f"{fn}({x})"
            case "sigmoid":
                return f"({one} / ({one} + exp(-({x}))))"
            case "neg":
                return f"(-({x}))"
            case "not":
                return f"!({self.convert(x, dt, 'bool')})"
        raise self.error(f"unknown intrinsic {name!r}")


# ---------------------------------------------------------------------------------------------


def _size(buf: T.Buffer) -> int:
    return math.prod(d.value for d in buf.shape)


def _wrap_narrow(code: str, dt: str) -> str:
    bits = NARROW_BITS[dt]
    if dt.startswith("u"):
        return f"({code} & {(1 << bits) - 1}u)"
    return f"(({code} << {32 - bits}u) >> {32 - bits}u)"


def merged_offset(buffer: str) -> str:
    """The uniform holding a merged buffer's word offset in the MERGED binding."""
    return f"merged_{buffer}"


def _atomic(b: Binding) -> bool:
    """Written packed elements: the buffer's words are atomics (see store_packed)."""
    return b.writable and dtype(b.buffer.dtype).per_word > 1


def _word_load(b: Binding, word: str) -> str:
    name = buf_name(b.buffer.name)
    if b.merged:
        word = f"{MERGED}[{var_name(merged_offset(b.buffer.name))} + {word}]"
        storage = dtype(b.buffer.dtype).storage
        return word if storage == "u32" else f"bitcast<{storage}>({word})"
    if b.chunks > 1:
        return f"ld_{name}({word})"
    return f"atomicLoad(&{name}[{word}])" if _atomic(b) else f"{name}[{word}]"


def _word_store(b: Binding, word: str, value: str) -> str:
    name = buf_name(b.buffer.name)
    return f"st_{name}({word}, {value});" if b.chunks > 1 else f"{name}[{word}] = {value};"


def _chunk_helpers(b: Binding) -> list[str]:
    """Word accessors of a buffer bound as several chunks of `chunk_words` words."""
    d: DType = dtype(b.buffer.dtype)
    name, n = buf_name(b.buffer.name), b.chunk_words
    loads = "".join(f"  if (c == {c}) {{ return {name}_{c}[r]; }}\n" for c in range(b.chunks - 1))
    out = [
        f"fn ld_{name}(w: i32) -> {d.storage} {{\n  let c = w / {n};\n  let r = w % {n};\n{loads}"
        f"  return {name}_{b.chunks - 1}[r];\n}}"
    ]
    if b.writable:
        stores = "".join(f"  if (c == {c}) {{ {name}_{c}[r] = x; return; }}\n" for c in range(b.chunks - 1))
        out.append(
            f"fn st_{name}(w: i32, x: {d.storage}) {{\n  let c = w / {n};\n  let r = w % {n};\n{stores}"
            f"  {name}_{b.chunks - 1}[r] = x;\n}}"
        )
    return out


def _read_as_f32(s: T.Stmt, bindings: dict[str, Binding]) -> set[str]:
    """The float16 buffers this kernel only reads, each load cast to float32 at once (a packed
    weight's scales): read as u32 words and unpacked, they need no `shader-f16`."""
    candidates = {
        name
        for name, b in bindings.items()
        if b.buffer.dtype == "float16" and not b.writable and not b.merged and b.chunks == 1
    }
    cast_loads: set[int] = set()
    all_loads: list[T.Load] = []
    for x in walk(s):
        for v in stmt_values(x):
            for e in walk_values(v):
                if isinstance(e, T.Cast) and e.dtype == "float32" and isinstance(e.value, T.Load):
                    cast_loads.add(id(e.value))
                if isinstance(e, T.Load):
                    all_loads.append(e)
    for ld in all_loads:
        if ld.buffer.name in candidates and id(ld) not in cast_loads:
            candidates.discard(ld.buffer.name)
    return candidates


def _thread_dims(buf: T.Buffer, body: T.Stmt) -> int:
    """How many leading dims of a local buffer every access indexes by an enclosing thread loop's
    variable (the buffer's per-thread slices); those dims are dropped on the GPU."""
    counts: list[int] = []

    def value_accesses(e: T.Value, threads: dict[str, str]) -> None:
        for x in walk_values(e):
            if isinstance(x, T.Load) and x.buffer.name == buf.name:
                counts.append(_leading(x.indices, threads))

    def visit(s: T.Stmt, threads: dict[str, str]) -> None:
        if isinstance(s, T.For) and s.kind == "thread" and s.thread in THREAD_TAGS:
            threads = {**threads, s.var.name: s.thread}
        if isinstance(s, T.Store) and s.buffer.name == buf.name:
            counts.append(_leading(s.indices, threads))
        for v in stmt_values(s):
            value_accesses(v, threads)
        for c in children(s):
            visit(c, threads)

    visit(body, {})
    if not counts:
        return 0
    return min(counts)


def _leading(indices: tuple, threads: dict[str, str]) -> int:
    k = 0
    for i in indices:
        if isinstance(i, SymVar) and i.name in threads:
            k += 1
        else:
            break
    return k
