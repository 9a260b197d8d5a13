"""tir PrimFuncs -> WGSL shaders and host launch plans -> a WebGPU KernelModule.

    codegen({"add": prim_func, ...}, WebGPUOptions()) -> KernelModule

A PrimFunc scheduled for the GPU is a host part around device kernels (as in TVM's host/device
split): at the top, outside every loop bound to GPU threads, it may allocate global scratch
buffers (which the host allocates on the device), branch on its symbolic dims (choose a kernel
for a decode or a prefill shape), and run kernels in sequence; each outermost loop bound to
`blockIdx`/`threadIdx` is one kernel, one dispatch. Functions nobody scheduled get the default
GPU rules first (gpu_rules.py). What comes out is data: shader sources and a plan per kernel
(JSON), which the runtime executes without the compiler.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.shape import PrimExpr, SymVar
from llm_deploy.targets.llvm.abi import KernelSignature, ParamSpec
from llm_deploy.targets.webgpu import wgsl
from llm_deploy.targets.webgpu.dtypes import dtype
from llm_deploy.targets.webgpu.runtime import KernelModule
from llm_deploy.targets.webgpu.walk import loads, stores, walk, walk_values
from llm_deploy.targets.webgpu.wgsl import Binding, CodegenError

# The alignment of a storage binding's offset that every adapter accepts.
OFFSET_ALIGNMENT = 256
# A constant-size read-only buffer (a weight) larger than this is never copied to share a binding.
MERGE_MAX_STATIC_BYTES = 1 << 16


@dataclass(frozen=True)
class WebGPUOptions:
    """Limits the kernels are generated for. The defaults are WebGPU's guaranteed minimums, so
    an artifact runs on every adapter; schedules stay within them."""

    max_workgroup_size: int = 256  # maxComputeInvocationsPerWorkgroup
    max_workgroup_size_xyz: tuple[int, int, int] = (256, 256, 64)  # maxComputeWorkgroupSizeX/Y/Z
    max_workgroup_storage: int = 16384  # maxComputeWorkgroupStorageSize (bytes)
    max_storage_buffers: int = 8  # maxStorageBuffersPerShaderStage
    max_binding_bytes: int = 128 << 20  # maxStorageBufferBindingSize: larger buffers are split
    schedule: bool = True  # apply the default GPU rules to functions without thread bindings

    def __post_init__(self) -> None:
        if self.max_binding_bytes < OFFSET_ALIGNMENT or self.max_binding_bytes % OFFSET_ALIGNMENT:
            raise ValueError(
                f"max_binding_bytes must be a positive multiple of {OFFSET_ALIGNMENT}, "
                f"got {self.max_binding_bytes}"
            )


def signature_of(name: str, f: T.PrimFunc) -> KernelSignature:
    """Parameters and the order of symbolic variables: scalar params, then dims of the buffers
    in order of first appearance (each must appear bare in some buffer's shape)."""
    names = [s.name for s in f.scalars]
    bare = set(names)
    params = []
    for p in f.params:
        if isinstance(p, SymVar):
            params.append(ParamSpec(p.name, "scalar"))
            continue
        try:
            dtype(p.dtype)
        except TypeError as e:
            raise CodegenError(f"kernel {name}: buffer {p.name}: {e}") from None
        for dim in p.shape:
            if isinstance(dim, SymVar):
                bare.add(dim.name)
            for v in sorted(S.free_vars(dim)):
                if v not in names:
                    names.append(v)
        shape = tuple(d.value if isinstance(d, S.IntImm) else S.to_str(d) for d in p.shape)
        params.append(ParamSpec(p.name, "buffer", p.dtype, shape))
    unbound = [v for v in names if v not in bare]
    if unbound:
        raise CodegenError(
            f"kernel {name}: {', '.join(unbound)} appear only inside shape expressions, so no argument's "
            "shape binds them; make them scalar parameters or add a buffer with that dim"
        )
    return KernelSignature(name, tuple(params), tuple(names))


def is_scheduled(f: T.PrimFunc) -> bool:
    return any(isinstance(s, T.For) and s.kind == "thread" for s in walk(f.body))


def codegen(prim_funcs: Mapping[str, T.PrimFunc], options: WebGPUOptions | None = None) -> KernelModule:
    """Schedule (where needed) and translate every kernel; the module creates its pipelines on a
    device when first used."""
    options = options or WebGPUOptions()
    specs = [kernel_spec(name, f, options) for name, f in prim_funcs.items()]
    return KernelModule(specs)


def kernel_spec(name: str, f: T.PrimFunc, options: WebGPUOptions) -> dict[str, Any]:
    """The runtime's description of one kernel: signature, shaders and host plan (JSON-able)."""
    if not isinstance(f, T.PrimFunc):
        raise CodegenError(f"kernel {name}: expected a tir.PrimFunc, found {type(f).__name__}")
    sig = signature_of(name, f)
    if not is_scheduled(f):
        if not options.schedule:
            raise CodegenError(f"kernel {name}: no loop is bound to GPU threads and scheduling is off")
        from llm_deploy.targets.webgpu.gpu_rules import schedule

        f = schedule(f, options)
    return _HostSplit(name, f, sig, options).spec()


class _HostSplit:
    """Walks the host part of a PrimFunc, emitting a shader per device kernel."""

    def __init__(self, name: str, f: T.PrimFunc, sig: KernelSignature, options: WebGPUOptions):
        self.name, self.f, self.sig, self.options = name, f, sig, options
        self.shaders: list[dict[str, Any]] = []
        self.globals: dict[str, T.Buffer] = {b.name: b for b in f.buffers}
        self.uniform_names = set(sig.vars)
        self.scalars = {s.name for s in f.scalars}

    def spec(self) -> dict[str, Any]:
        plan = self.host(self.f.body)
        return {
            "name": self.name,
            "signature": self.sig.to_json() if hasattr(self.sig, "to_json") else _sig_json(self.sig),
            "shaders": self.shaders,
            "plan": plan,
        }

    def error(self, what: str) -> CodegenError:
        return CodegenError(f"kernel {self.name}: {what}")

    def host(self, s: T.Stmt) -> list[dict[str, Any]]:
        match s:
            case T.Seq(stmts):
                return [op for x in stmts for op in self.host(x)]
            case T.Allocate(buf, body) if buf.scope == "global":
                self.globals[buf.name] = buf
                alloc = {
                    "op": "alloc",
                    "buffer": buf.name,
                    "dtype": buf.dtype,
                    "shape": [_expr(d) for d in buf.shape],
                }
                dtype(buf.dtype)
                for d in buf.shape:
                    if not S.free_vars(d) <= self.uniform_names:
                        raise self.error(f"scratch buffer {buf.name} has a shape over unknown variables")
                return [alloc, *self.host(body)]
            case T.IfThenElse(cond, then_body, else_body):
                return [
                    {
                        "op": "if",
                        "cond": self.condition(cond),
                        "then": self.host(then_body),
                        "else": [] if else_body is None else self.host(else_body),
                    }
                ]
            case T.For(_, _, _, "thread", _):
                return [{"op": "dispatch", "shader": self.device(s)}]
        what = type(s).__name__
        if isinstance(s, T.For):
            what = f"loop {s.var.name} ({s.kind})"
        raise self.error(
            f"{what} at the top level is not bound to GPU threads: every statement outside a "
            "scratch allocation or a branch on the dims must be a workgroup loop (run gpu_rules)"
        )

    def condition(self, c: T.Value) -> list | str:
        match c:
            case T.Binary(op, a, b) if op in ("lt", "le", "eq", "ne", "gt", "ge"):
                if not (isinstance(a, PrimExpr) and isinstance(b, PrimExpr)):
                    raise self.error("a host branch may only compare symbolic dims")
                for x in (a, b):
                    if not S.free_vars(x) <= self.uniform_names:
                        raise self.error(
                            f"a host branch reads {S.to_str(x)}, which is not a dim of the kernel"
                        )
                return [op, _expr(a), _expr(b)]
            case T.Binary(op, a, b) if op in ("and", "or"):
                return [op, self.condition(a), self.condition(b)]
            case T.Intrin("not", (a,)):
                return ["not", self.condition(a)]
            case T.Imm(v, "bool"):
                return ["eq", "1", "1" if v else "0"]
        raise self.error(f"a host branch condition must compare dims, found {c}")

    def device(self, s: T.Stmt) -> int:
        written = {x.buffer.name for x in stores(s) if x.buffer.scope == "global"}
        used = written | {x.buffer.name for x in loads(s) if x.buffer.scope == "global"}
        local_allocs = {x.buffer.name for x in walk(s) if isinstance(x, T.Allocate)}
        bindings: dict[str, Binding] = {}
        for name in [b for b in self.globals if b in used and b not in local_allocs]:
            buf = self.globals[name]
            bindings[name] = self.binding(buf, name in written)
        merged = self.merge(bindings)
        free = _free_names(s)
        for b in bindings.values():
            for d in b.buffer.shape:
                free |= S.free_vars(d)
        uniforms = [v for v in self.sig.vars if v in free] + [wgsl.merged_offset(m) for m in merged]
        em = wgsl.KernelEmitter(
            f"{self.name}#{len(self.shaders)}",
            s,
            bindings,
            uniforms,
            self.scalars,
            (*self.options.max_workgroup_size_xyz, self.options.max_workgroup_size),
        )
        src = em.build()
        shared = sum(
            math.prod(d.value for d in b.shape) * _scratch_bytes(b.dtype) for b in em.shared.values()
        )
        if shared > self.options.max_workgroup_storage:
            raise self.error(
                f"shared memory of {shared} bytes exceeds the {self.options.max_workgroup_storage} a workgroup may use"
            )
        self.shaders.append(
            {
                "code": src.code,
                "bindings": [
                    {
                        "buffer": b.buffer.name,
                        "dtype": b.buffer.dtype,
                        "writable": b.writable,
                        "chunks": b.chunks,
                        "chunk_words": b.chunk_words,
                    }
                    for b in src.bindings
                    if not b.merged
                ],
                "merged": merged,
                "uniforms": src.uniforms,
                "grid": [_expr(g) for g in src.grid],
                "linear": src.linear,
                "workgroup": list(src.workgroup),
                "f16": src.f16,
            }
        )
        return len(self.shaders) - 1

    def merge(self, bindings: dict[str, Binding]) -> list[str]:
        """Keep a kernel within the storage buffers a stage may bind: when it needs more, the
        smallest read-only buffers (index arrays first, never a large constant-size one) are
        copied into one binding before the dispatch and read at word offsets. Rewrites
        `bindings` in place; returns the merged buffers' names, in binding order."""
        limit = self.options.max_storage_buffers
        count = sum(b.chunks for b in bindings.values())
        if count <= limit:
            return []

        def static_bytes(b: Binding) -> int:
            shape = b.buffer.shape
            if all(isinstance(d, S.IntImm) for d in shape):
                return math.prod(d.value for d in shape) * dtype(b.buffer.dtype).itemsize
            return 0  # per-step data: activations, page tables

        candidates = [
            b
            for b in bindings.values()
            if not b.writable and b.chunks == 1 and dtype(b.buffer.dtype).storage != "f16"
            and static_bytes(b) <= MERGE_MAX_STATIC_BYTES
        ]  # fmt: skip
        candidates.sort(key=lambda b: (dtype(b.buffer.dtype).storage == "f32", static_bytes(b)))
        need = count - limit + 1  # merging k buffers frees k - 1 bindings
        if len(candidates) < need:
            raise self.error(
                f"a kernel binds {count} storage buffers ({', '.join(bindings)}), more than the {limit} "
                f"a shader stage may have, and only {len(candidates)} are small read-only ones that could share one"
            )
        names = [b.buffer.name for b in candidates[:need]]
        for name in names:
            bindings[name] = Binding(bindings[name].buffer, False, merged=True)
        return [name for name in bindings if name in names]

    def binding(self, buf: T.Buffer, writable: bool) -> Binding:
        """One binding, or chunks when the buffer's (static) size exceeds what one may hold."""
        d = dtype(buf.dtype)
        if not all(isinstance(x, S.IntImm) for x in buf.shape):
            return Binding(buf, writable)
        words = -(-math.prod(x.value for x in buf.shape) * d.itemsize // d.word_bytes)
        limit = self.options.max_binding_bytes // d.word_bytes
        if words <= limit:
            return Binding(buf, writable)
        step = OFFSET_ALIGNMENT // d.word_bytes  # chunks start at aligned offsets, whole elements
        chunk_words = limit // step * step
        return Binding(buf, writable, -(-words // chunk_words), chunk_words)


def _scratch_bytes(dt: str) -> int:
    """Bytes of an element of a workgroup array (its WGSL value type: f16 2, others 4)."""
    return 2 if dtype(dt).wgsl == "f16" else 4


def _expr(e: PrimExpr) -> str | int:
    e = S.const(e)
    return e.value if isinstance(e, S.IntImm) else S.to_str(e)


def _free_names(s: T.Stmt) -> set[str]:
    from llm_deploy.targets.webgpu.walk import stmt_values

    out: set[str] = set()
    for x in walk(s):
        for v in stmt_values(x):
            for e in walk_values(v):
                if isinstance(e, PrimExpr):
                    out |= S.free_vars(e)
    return out


def _sig_json(sig: KernelSignature) -> dict[str, Any]:
    return {"name": sig.name, "params": [p.to_json() for p in sig.params], "vars": list(sig.vars)}
