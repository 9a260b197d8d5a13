"""One GPU kernel (a statement whose loops are bound to workgroups and threads) as a GLSL 450
compute shader, which glslang compiles to SPIR-V.

The translation is literal, as the WebGPU target's (the same schedules feed both):

- `for b in blockIdx.x(E)`: one workgroup per b; the grid may exceed the 65535 workgroups a
  dimension allows, so the host dispatches (x, y) groups and b = x + y * num_x, guarded by b < E
  (uniform per workgroup: barriers stay legal).
- `for t in threadIdx.x(E)`: t is the invocation's local id; the workgroup size is the largest
  (constant) such extent, smaller loops are guarded by `t < E`.
- Other loops are `for` loops, `Let` an `int`; `local` buffers are function-scope arrays (the
  leading dims a thread indexes by its own id dropped), `shared` buffers are `shared` arrays;
  `Barrier` is `memoryBarrierShared(); memoryBarrierBuffer(); barrier();`.
- Symbolic dims and scalar params are push constants (`dims`): one SPIR-V module serves every
  length, and changing a dim rebinds nothing.
- Global buffers are std430 storage blocks of 32-bit words (f16: 16-bit words), holding numpy's
  bytes exactly (the layout of `webgpu/dtypes.py`: bytes and shorts packed into words, written
  with atomicAnd/atomicOr; 64-bit ints as two words, used as 32-bit). Index math is `int`.
- Subgroups: in a workgroup-memory tree reduction (the GPU rules' halving steps of add, mul, max
  or min, each a thread loop followed by a barrier), when codegen is allowed subgroups, the steps
  whose half is below the subgroup size run as a butterfly of `subgroupShuffleXor` in registers,
  with one barrier for all of them. The butterfly pairs the same values as the tree, so results
  are bitwise the same. The subgroup size is a specialization constant (`constant_id = 0`) set
  when the pipeline is created: the device's size where it supports shuffles in compute shaders,
  0 otherwise (all tree: the fallback), so one SPIR-V module serves every device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.shape import PrimExpr, SymVar
from llm_deploy.targets.webgpu.dtypes import NARROW_BITS, DType, dtype
from llm_deploy.targets.webgpu.walk import children, stmt_values, walk_values

GRID_TAGS = ("blockIdx.x", "blockIdx.y", "blockIdx.z")
THREAD_TAGS = ("threadIdx.x", "threadIdx.y", "threadIdx.z")
AXIS = {"x": 0, "y": 1, "z": 2}
MERGED = "b_merged"
GLSL_TYPE = {"f32": "float", "f16": "float16_t", "i32": "int", "u32": "uint", "bool": "bool"}
STORAGE_TYPE = {"f32": "float", "f16": "float16_t", "i32": "int", "u32": "uint"}
BARRIER = "memoryBarrierShared(); memoryBarrierBuffer(); barrier();"
SUBGROUP_SPEC = "SUBGROUP_SIZE"


class CodegenError(ValueError):
    """A tir kernel the Vulkan target cannot run; the message names the kernel and why."""


@dataclass(frozen=True)
class Binding:
    """A global buffer of a kernel: bound as `chunks` storage buffers of `chunk_words` words."""

    buffer: T.Buffer
    writable: bool
    chunks: int = 1
    chunk_words: int = 0
    merged: bool = False  # read from the shared MERGED binding at a word offset (a push constant)


@dataclass
class KernelSource:
    code: str
    bindings: list[Binding]
    uniforms: list[str]  # push constant names, in order
    grid: list[PrimExpr]
    linear: bool
    workgroup: tuple[int, int, int]
    f16: bool
    subgroup_lanes: int  # widest butterfly the shader may run (0: it has none)


def var_name(name: str) -> str:
    return f"v_{name}"


def buf_name(name: str) -> str:
    return f"b_{name}"


def float_literal(value: float, ty: str) -> str:
    """An exact literal of `value` rounded to the type (bit patterns for inf and nan)."""
    np_type = np.float16 if ty == "f16" else np.float32
    with np.errstate(over="ignore"):
        v = np_type(value)
    if not np.isfinite(v):
        bits = int(np.float32(v).view(np.uint32))
        text = f"uintBitsToFloat({bits}u)"
    else:
        text = repr(float(v))
        if "e" not in text and "." not in text and "inf" not in text:
            text += ".0"
    return f"float16_t({text})" if ty == "f16" else text


def int_literal(value: int, ty: str) -> str:
    if ty == "u32":
        return f"{int(value) & 0xFFFFFFFF}u"
    v = max(-(2**31), min(2**31 - 1, int(value)))
    if v == -(2**31):
        return "(-2147483647 - 1)"
    return f"({v})" if v < 0 else str(v)


HELPERS = {
    # SPIR-V's OpSDiv truncates; floor division and modulo are built on it.
    "fdiv": "int fdiv(int a, int b) {\n  int q = a / b;\n  int r = a - q * b;\n"
    "  return (r != 0 && ((r < 0) != (b < 0))) ? q - 1 : q;\n}",
    "fmod": "int fmod(int a, int b) {\n  int r = a - (a / b) * b;\n"
    "  return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;\n}",
    "ipow": "int ipow(int a, int b) {\n  int r = 1;\n  for (int k = 0; k < b; k++) { r = r * a; }\n  return r;\n}",
    "upow": "uint upow(uint a, uint b) {\n  uint r = 1u;\n  for (uint k = 0u; k < b; k++) { r = r * a; }\n"
    "  return r;\n}",
    "erf": "float erf_f32(float x) {\n  float z = abs(x);\n  float t = 1.0 / (1.0 + 0.5 * z);\n"
    "  float r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +"
    " t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 +"
    " t * 0.17087277)))))))));\n  return x >= 0.0 ? 1.0 - r : r - 1.0;\n}",
    "tanh": "float tanh_f32(float x) {\n  float e = exp(-2.0 * abs(x));\n  float t = (1.0 - e) / (1.0 + e);\n"
    "  return x >= 0.0 ? t : -t;\n}",
}


@dataclass
class _Scope:
    analyzer: S.Analyzer
    threads: dict[str, str] = field(default_factory=dict)
    in_thread: bool = False


@dataclass(frozen=True)
class _TreeStep:
    """One halving step of a workgroup-memory reduction: buf[t] = op(buf[t], buf[t + half])."""

    buf: T.Buffer
    op: str
    half: int


class KernelEmitter:
    """Emits one device statement as a GLSL compute shader."""

    def __init__(
        self,
        kernel: str,
        stmt: T.Stmt,
        bindings: dict[str, Binding],
        uniforms: list[str],
        int_scalars: set[str],
        max_workgroup: tuple[int, int, int, int],
        subgroups: bool = True,
    ):
        self.kernel = kernel
        self.stmt = stmt
        self.bindings = bindings
        self.uniforms = uniforms
        self.int_scalars = int_scalars
        self.max_workgroup = max_workgroup
        self.subgroups = subgroups
        self.lines: list[str] = []
        self.indent = 1
        self.helpers: set[str] = set()
        self.shared: dict[str, T.Buffer] = {}
        self.private: dict[str, int] = {}
        self.f16 = False
        self.tmp = 0
        self.workgroup = [1, 1, 1]
        self.grid: list[PrimExpr] = [S.const(1), S.const(1), S.const(1)]
        self.linear = False
        self.subgroup_lanes = 0

    def error(self, what: str) -> CodegenError:
        return CodegenError(f"kernel {self.kernel}: {what}")

    def emit(self, line: str) -> None:
        self.lines.append("  " * self.indent + line)

    def fresh(self, hint: str) -> str:
        self.tmp += 1
        return f"t_{hint}{self.tmp}"

    def ty(self, dt: str) -> str:
        """The shader value type of a tir dtype (f32 f16 i32 u32 bool, as in webgpu/dtypes.py)."""
        try:
            d = dtype(dt)
        except TypeError as e:
            raise self.error(
                str(e).replace("WebGPU", "the Vulkan target").replace("WGSL", "its shaders")
            ) from None
        if d.wgsl == "f16":
            self.f16 = True
        return d.wgsl

    def glsl(self, dt: str) -> str:
        return GLSL_TYPE[self.ty(dt)]

    # -- the shader
    def build(self) -> KernelSource:
        self._scan_launch(self.stmt)
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
        head = ["#version 450"]
        if self.f16:
            head.append("#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require")
            head.append("#extension GL_EXT_shader_16bit_storage : require")
        if self.subgroup_lanes:
            head.append("#extension GL_KHR_shader_subgroup_shuffle : require")
            head.append(f"layout(constant_id = 0) const int {SUBGROUP_SPEC} = 0;")
        head.append(f"layout(local_size_x = {wg[0]}, local_size_y = {wg[1]}, local_size_z = {wg[2]}) in;")
        if self.uniforms:
            fields = " ".join(f"int {var_name(u)};" for u in self.uniforms)
            head.append(f"layout(push_constant) uniform Dims {{ {fields} }} dims;")
        slot = 0
        for b in self.bindings.values():
            if b.merged:
                continue
            d = dtype(b.buffer.dtype)
            access = "" if b.writable else "readonly "
            for c in range(b.chunks):
                name = buf_name(b.buffer.name) + (f"_{c}" if b.chunks > 1 else "")
                head.append(
                    f"layout(std430, set = 0, binding = {slot}) {access}buffer B{slot} "
                    f"{{ {STORAGE_TYPE[d.storage]} {name}[]; }};"
                )
                slot += 1
        if any(b.merged for b in self.bindings.values()):
            head.append(
                f"layout(std430, set = 0, binding = {slot}) readonly buffer B{slot} {{ uint {MERGED}[]; }};"
            )
        for buf in self.shared.values():
            head.append(f"shared {self.glsl(buf.dtype)} {buf_name(buf.name)}[{_size(buf)}];")
        for b in self.bindings.values():
            if b.chunks > 1:
                head.extend(_chunk_helpers(b))
        head.extend(HELPERS[h] for h in sorted(self.helpers))
        prologue = [f"  int {var_name(u)} = dims.{var_name(u)};" for u in self.uniforms]
        code = "\n".join([*head, "void main() {", *prologue, *self.lines, "}", ""])
        return KernelSource(
            code,
            list(self.bindings.values()),
            list(self.uniforms),
            self.grid,
            self.linear,
            wg,
            self.f16,
            self.subgroup_lanes,
        )

    def _scan_launch(self, s: T.Stmt) -> None:
        seen: set[str] = set()

        def visit(x: T.Stmt) -> None:
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
                    visit(body)
                case _:
                    for c in children(x):
                        visit(c)

        visit(s)
        self.linear = "blockIdx.y" not in seen and "blockIdx.z" not in seen

    # -- statements
    def stmt_(self, s: T.Stmt, sc: _Scope) -> None:
        match s:
            case T.Seq(stmts):
                self.seq(list(stmts), sc)
            case T.For():
                self.for_(s, sc)
            case T.Store(buffer, indices, value):
                self.store(buffer, indices, value, sc)
            case T.Let(var, value, body):
                code, dt = self.value(value, sc)
                if self.ty(dt) not in ("i32", "u32"):
                    raise self.error(f"let {var.name} binds a {dt} value; lets bind integer indices")
                self.emit(f"int {var_name(var.name)} = int({code});")
                self.stmt_(body, sc)
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
                self.emit(BARRIER)
            case _:
                raise self.error(f"cannot emit {type(s).__name__}")

    def seq(self, stmts: list[T.Stmt], sc: _Scope) -> None:
        k = 0
        while k < len(stmts):
            steps = _tree_steps(stmts, k) if self.subgroups and not sc.in_thread else []
            if steps and self.butterfly(steps, stmts[k : k + 2 * len(steps)], sc):
                k += 2 * len(steps)
                continue
            self.stmt_(stmts[k], sc)
            k += 1

    def butterfly(self, steps: list[_TreeStep], tree: list[T.Stmt], sc: _Scope) -> bool:
        """The halving steps with halves below the subgroup size (a specialization constant,
        0 without usable subgroups) as shuffles in registers, the larger ones as the tree's
        steps. Needs every invocation of the workgroup's x axis to hold a slot of the buffer
        (whole subgroups take part, in uniform control flow)."""
        buf, lanes = steps[0].buf, 2 * steps[0].half
        size = _size(buf)
        if self.workgroup[1] * self.workgroup[2] != 1 or size != self.workgroup[0] or size % lanes:
            return False
        if self.ty(buf.dtype) not in ("f32", "i32", "u32"):
            return False  # 16-bit shuffles need another extension
        self.subgroup_lanes = max(self.subgroup_lanes, lanes)
        for st, (loop, barrier) in zip(steps, zip(tree[::2], tree[1::2])):
            self.emit(f"if ({SUBGROUP_SPEC} <= {st.half}) {{")
            self.block(loop, sc)
            self.indent += 1
            self.stmt_(barrier, sc)
            self.indent -= 1
            self.emit("}")
        self.emit(f"if ({SUBGROUP_SPEC} > 1) {{")
        self.indent += 1
        t, v = self.fresh("t"), self.fresh("v")
        name = buf_name(buf.name)
        self.emit(f"int {t} = int(gl_LocalInvocationID.x);")
        self.emit(f"{self.glsl(buf.dtype)} {v} = {name}[{t}];")
        for st in steps:
            other = f"subgroupShuffleXor({v}, {st.half}u)"
            sym = {"add": "+", "mul": "*"}.get(st.op)
            combined = f"({v} {sym} {other})" if sym else f"{st.op}({v}, {other})"
            self.emit(f"if ({SUBGROUP_SPEC} > {st.half}) {{ {v} = {combined}; }}")
        self.emit(f"{name}[{t}] = {v};")
        self.emit(BARRIER)
        self.indent -= 1
        self.emit("}")
        return True

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
            if self.linear and axis == 0:
                idx = "int(gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x)"
            else:
                idx = f"int(gl_WorkGroupID.{'xyz'[axis]})"
            self.emit(f"int {v} = {idx};")
            self.emit(f"if ({v} < {self.index(s.extent, sc)}) {{")
            self.block(s.body, _Scope(inner, sc.threads, sc.in_thread))
            self.emit("}")
            return
        if s.kind == "thread":
            axis = AXIS[s.thread[-1]]
            threads = {**sc.threads, s.var.name: s.thread}
            self.emit("{")
            self.indent += 1
            self.emit(f"int {v} = int(gl_LocalInvocationID.{'xyz'[axis]});")
            if s.extent.value < self.workgroup[axis]:
                self.emit(f"if ({v} < {s.extent.value}) {{")
                self.block(s.body, _Scope(inner, threads, True))
                self.emit("}")
            else:
                self.stmt_(s.body, _Scope(inner, threads, True))
            self.indent -= 1
            self.emit("}")
            return
        self.emit(f"for (int {v} = 0; {v} < {self.index(s.extent, sc)}; {v}++) {{")
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
        self.emit(f"{self.glsl(buf.dtype)} {buf_name(buf.name)}[{max(size, 1)}];")
        self.stmt_(body, sc)

    def store(self, buf: T.Buffer, indices: tuple, value: T.Value, sc: _Scope) -> None:
        code, dt = self.value(value, sc)
        code = self.convert(code, dt, buf.dtype)
        if buf.scope != "global":
            self.emit(f"{buf_name(buf.name)}[{self.scratch_index(buf, indices, sc)}] = {code};")
            return
        b = self._binding(buf)
        d = dtype(buf.dtype)
        flat = self.flat_index(buf, indices, sc)
        if d.per_word > 1:
            self.store_packed(b, d, flat, code)
            return
        if d.words == 2:
            t, w = self.fresh("v"), self.fresh("w")
            hi = f"({t} < 0 ? -1 : 0)" if d.storage == "i32" else "0u"
            self.emit(f"{STORAGE_TYPE[d.storage]} {t} = {code};")
            self.emit(f"int {w} = 2 * ({flat});")
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
        bits = f"({code} ? 1u : 0u)" if d.name == "bool" else f"(uint({code}) & {mask}u)"
        i, v, sh = self.fresh("i"), self.fresh("v"), self.fresh("s")
        name = buf_name(b.buffer.name)
        self.emit("{")
        self.emit(f"  int {i} = {flat};")
        self.emit(f"  uint {v} = {bits};")
        self.emit(f"  uint {sh} = uint({i} % {d.per_word}) * {d.bits}u;")
        self.emit(f"  atomicAnd({name}[{i} / {d.per_word}], ~({mask}u << {sh}));")
        self.emit(f"  atomicOr({name}[{i} / {d.per_word}], {v} << {sh});")
        self.emit("}")

    # -- values: (code, tir dtype)
    def value(self, e: T.Value, sc: _Scope) -> tuple[str, str]:
        if isinstance(e, (bool, int, float)):
            e = T.as_value(e)
        match e:
            case PrimExpr():
                return self.index(e, sc), "int64"
            case T.Imm(v, dt):
                w = self.ty(dt)
                if w == "bool":
                    return ("true" if v else "false"), dt
                if w in ("f32", "f16"):
                    return float_literal(float(v), w), dt
                return int_literal(int(v), w), dt
            case T.Load(buf, indices):
                return self.load(buf, indices, sc), buf.dtype
            case T.Binary(op, a, b):
                return self.binary(op, a, b, sc), T.dtype_of(e)
            case T.Intrin(name, args):
                return self.intrinsic(name, args, sc), T.dtype_of(e)
            case T.Cast(dt, v):
                code, src = self.value(v, sc)
                return self.convert(code, src, dt), dt
            case T.Select(c, a, b):
                ca, dta = self.value(a, sc)
                cb, dtb = self.value(b, sc)
                cb = self.convert(cb, dtb, dta)
                return f"({self.cond(c, sc)} ? {ca} : {cb})", dta
        raise self.error(f"cannot emit the value {e!r}")

    def cond(self, e: T.Value, sc: _Scope) -> str:
        code, dt = self.value(e, sc)
        return self.convert(code, dt, "bool")

    def convert(self, code: str, src: str, dst: str) -> str:
        ws, wd = self.ty(src), self.ty(dst)
        if wd == "bool":
            if ws == "bool":
                return code
            zero = {"f32": "0.0", "f16": "float16_t(0.0)", "i32": "0", "u32": "0u"}[ws]
            return f"({code} != {zero})"
        out = code if ws == wd else f"{GLSL_TYPE[wd]}({code})"
        if ws in ("f32", "f16") and wd == "u32":
            out = f"uint(int({code}))"  # C's (and numpy's) wrap of negatives, not a clamp
        if dst in NARROW_BITS and src != dst:
            out = _wrap_narrow(out, dst)
        return out

    def load(self, buf: T.Buffer, indices: tuple, sc: _Scope) -> str:
        if buf.scope != "global":
            return f"{buf_name(buf.name)}[{self.scratch_index(buf, indices, sc)}]"
        b = self._binding(buf)
        d = dtype(buf.dtype)
        flat = self.flat_index(buf, indices, sc)
        if d.words == 2:
            return _word_load(b, f"2 * ({flat})")
        if d.per_word == 1:
            return _word_load(b, flat)
        word = _word_load(b, f"({flat}) / {d.per_word}")
        bits = f"(({word} >> (uint(({flat}) % {d.per_word}) * {d.bits}u)) & {(1 << d.bits) - 1}u)"
        if d.name == "bool":
            return f"({bits} != 0u)"
        if d.wgsl == "i32":
            return f"((int({bits}) << {32 - d.bits}) >> {32 - d.bits})"
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
        return "(" + " + ".join(reversed(parts)) + ")"

    def scratch_index(self, buf: T.Buffer, indices: tuple, sc: _Scope) -> str:
        drop = self.private.get(buf.name, 0)
        kept, shape = indices[drop:], buf.shape[drop:]
        if not kept:
            return "0"
        return self.flat_index(T.Buffer(buf.name, shape, buf.dtype, buf.scope), kept, sc)

    def int_value(self, e: T.Value, sc: _Scope) -> str:
        code, dt = self.value(e, sc)
        return code if self.ty(dt) == "i32" else f"int({code})"

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

    def binary(self, op: str, a: T.Value, b: T.Value, sc: _Scope) -> str:
        ca, dta = self.value(a, sc)
        cb, dtb = self.value(b, sc)
        w = self.ty(dta)
        if op not in ("shl", "shr") and self.ty(dtb) != w:
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
                return self._wrap(f"{helper}({ca}, {self.convert(cb, dta, dta)})", dta)
            case "lt" | "le" | "eq" | "ne" | "gt" | "ge":
                sym = {"lt": "<", "le": "<=", "eq": "==", "ne": "!=", "gt": ">", "ge": ">="}[op]
                return f"({ca} {sym} {cb})"
            case "and" | "or":
                sym = "&&" if op == "and" else "||"
                return f"({self.convert(ca, dta, 'bool')} {sym} {self.convert(cb, dta, 'bool')})"
            case "shl" | "shr":
                sym = "<<" if op == "shl" else ">>"
                return self._wrap(f"({ca} {sym} {self.convert(cb, dtb, 'uint32')})", dta)
            case "bitand" | "bitor" | "bitxor":
                if w == "bool":
                    sym = {"bitand": "&&", "bitor": "||", "bitxor": "!="}[op]
                else:
                    sym = {"bitand": "&", "bitor": "|", "bitxor": "^"}[op]
                return f"({ca} {sym} {cb})"
        raise self.error(f"unknown binary op {op!r}")

    def _wrap(self, code: str, dt: str) -> str:
        return _wrap_narrow(code, dt) if dt in NARROW_BITS else code

    def intrinsic(self, name: str, args: tuple, sc: _Scope) -> str:
        codes = [self.value(a, sc) for a in args]
        x, dt = codes[0]
        w = self.ty(dt)
        one = "float16_t(1.0)" if w == "f16" else "1.0"
        match name:
            case "exp" | "log" | "sqrt" | "floor" | "ceil" | "cos" | "sin" | "abs":
                if w == "f16" and name in ("exp", "log", "cos", "sin"):
                    return f"float16_t({name}(float({x})))"
                return f"{name}({x})"
            case "round":
                return f"roundEven({x})"
            case "rsqrt":
                return f"inversesqrt({x})"
            case "tanh" | "erf":
                self.helpers.add(name)
                fn = f"{name}_f32"
                return f"float16_t({fn}(float({x})))" if w == "f16" else f"{fn}({x})"
            case "sigmoid":
                return f"({one} / ({one} + exp(-({x}))))"
            case "neg":
                return f"(-({x}))"
            case "not":
                return f"!({self.convert(x, dt, 'bool')})"
        raise self.error(f"unknown intrinsic {name!r}")


# ---------------------------------------------------------------------------------------------


def _tree_steps(stmts: list[T.Stmt], k: int) -> list[_TreeStep]:
    """The halving steps (each a thread loop, then a barrier) starting at stmts[k]: halves h,
    h/2, ..., 1 over one shared buffer and one fold; [] when stmts[k] starts none."""
    steps: list[_TreeStep] = []
    while k + 1 < len(stmts) and isinstance(stmts[k + 1], T.Barrier):
        st = _tree_step(stmts[k])
        if st is None or (
            steps and (st.buf != steps[0].buf or st.op != steps[0].op or 2 * st.half != steps[-1].half)
        ):
            break
        steps.append(st)
        if st.half == 1:
            break
        k += 2
    if not steps or steps[-1].half != 1:
        return []
    return steps


def _tree_step(s: T.Stmt) -> _TreeStep | None:
    if not (isinstance(s, T.For) and s.kind == "thread" and s.thread == "threadIdx.x"):
        return None
    t, body = s.var, s.body
    if isinstance(body, T.IfThenElse) and body.else_body is None:
        body = body.then_body  # rows > 1: only the first `half` lanes of each row combine
    if not (isinstance(body, T.Store) and body.buffer.scope == "shared" and body.indices == (t,)):
        return None
    v = body.value
    if not (isinstance(v, T.Binary) and v.op in ("add", "mul", "max", "min")):
        return None
    me = T.Load(body.buffer, (t,))
    if v.a != me or not isinstance(v.b, T.Load) or v.b.buffer != body.buffer or len(v.b.indices) != 1:
        return None
    half = S.const(v.b.indices[0] - t)
    if not isinstance(half, S.IntImm) or half.value < 1 or half.value & (half.value - 1):
        return None
    return _TreeStep(body.buffer, v.op, half.value)


def _size(buf: T.Buffer) -> int:
    return math.prod(d.value for d in buf.shape)


def _wrap_narrow(code: str, dt: str) -> str:
    bits = NARROW_BITS[dt]
    if dt.startswith("u"):
        return f"({code} & {(1 << bits) - 1}u)"
    return f"(({code} << {32 - bits}) >> {32 - bits})"


def merged_offset(buffer: str) -> str:
    return f"merged_{buffer}"


def _word_load(b: Binding, word: str) -> str:
    name = buf_name(b.buffer.name)
    if b.merged:
        word = f"{MERGED}[{var_name(merged_offset(b.buffer.name))} + {word}]"
        storage = dtype(b.buffer.dtype).storage
        return {"u32": word, "i32": f"int({word})", "f32": f"uintBitsToFloat({word})"}[storage]
    if b.chunks > 1:
        return f"ld_{name}({word})"
    return f"{name}[{word}]"


def _word_store(b: Binding, word: str, value: str) -> str:
    name = buf_name(b.buffer.name)
    return f"st_{name}({word}, {value});" if b.chunks > 1 else f"{name}[{word}] = {value};"


def _chunk_helpers(b: Binding) -> list[str]:
    d: DType = dtype(b.buffer.dtype)
    ty = STORAGE_TYPE[d.storage]
    name, n = buf_name(b.buffer.name), b.chunk_words
    loads = "".join(f"  if (c == {c}) {{ return {name}_{c}[r]; }}\n" for c in range(b.chunks - 1))
    out = [
        f"{ty} ld_{name}(int w) {{\n  int c = w / {n};\n  int r = w % {n};\n{loads}"
        f"  return {name}_{b.chunks - 1}[r];\n}}"
    ]
    if b.writable:
        stores = "".join(f"  if (c == {c}) {{ {name}_{c}[r] = x; return; }}\n" for c in range(b.chunks - 1))
        out.append(
            f"void st_{name}(int w, {ty} x) {{\n  int c = w / {n};\n  int r = w % {n};\n{stores}"
            f"  {name}_{b.chunks - 1}[r] = x;\n}}"
        )
    return out


def _thread_dims(buf: T.Buffer, body: T.Stmt) -> int:
    """How many leading dims of a local buffer every access indexes by an enclosing thread loop's
    variable (the buffer's per-thread slices); those dims are dropped on the GPU."""
    counts: list[int] = []

    def visit(s: T.Stmt, threads: dict[str, str]) -> None:
        if isinstance(s, T.For) and s.kind == "thread" and s.thread in THREAD_TAGS:
            threads = {**threads, s.var.name: s.thread}
        if isinstance(s, T.Store) and s.buffer.name == buf.name:
            counts.append(_leading(s.indices, threads))
        for v in stmt_values(s):
            for x in walk_values(v):
                if isinstance(x, T.Load) and x.buffer.name == buf.name:
                    counts.append(_leading(x.indices, threads))
        for c in children(s):
            visit(c, threads)

    visit(body, {})
    return min(counts) if counts else 0


def _leading(indices: tuple, threads: dict[str, str]) -> int:
    k = 0
    for i in indices:
        if isinstance(i, SymVar) and i.name in threads:
            k += 1
        else:
            break
    return k
