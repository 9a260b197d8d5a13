"""tir PrimFuncs -> GLSL compute shaders -> SPIR-V (glslang) and host launch plans.

    codegen({"add": prim_func, ...}, VulkanOptions()) -> KernelModule

The host/device split is the WebGPU target's (a PrimFunc scheduled for the GPU is host steps
around kernels: scratch allocations, branches on dims, one dispatch per outermost workgroup
loop), and so are the default GPU rules for functions nobody bound to threads: both targets
run the same schedules. Each kernel is emitted as GLSL by `glsl.py` and compiled to SPIR-V by
glslangValidator (apt `glslang-tools`) at build time; what comes out is data (SPIR-V words and
a JSON plan per kernel) that the Vulkan runtime executes without the compiler.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.targets.vulkan import glsl
from llm_deploy.targets.vulkan.glsl import CodegenError
from llm_deploy.targets.vulkan.runtime import KernelModule
from llm_deploy.targets.webgpu.codegen import OFFSET_ALIGNMENT, _expr, _free_names, _HostSplit, is_scheduled
from llm_deploy.targets.webgpu.codegen import signature_of as _signature_of
from llm_deploy.targets.webgpu.dtypes import dtype
from llm_deploy.targets.webgpu.walk import loads, stores, walk

SPIRV_ENV = "vulkan1.1"  # subgroup shuffles need SPIR-V 1.3


@dataclass(frozen=True)
class VulkanOptions:
    """Limits the kernels are generated for: Vulkan's guaranteed minimums where they are not too
    small to be useful (the runtime checks each shader against the device's own limits)."""

    max_workgroup_size: int = 256  # maxComputeWorkGroupInvocations (>= 128 guaranteed; 256 common)
    max_workgroup_size_xyz: tuple[int, int, int] = (256, 256, 64)
    max_workgroup_storage: int = 16384  # maxComputeSharedMemorySize (bytes)
    max_storage_buffers: int = 16  # maxPerStageDescriptorStorageBuffers (lavapipe: 32)
    max_binding_bytes: int = 128 << 20  # maxStorageBufferRange (2**27 guaranteed)
    subgroups: bool = True  # emit subgroup butterflies (chosen at run time by a specialization constant)
    schedule: bool = True  # apply the default GPU rules to functions without thread bindings

    def __post_init__(self) -> None:
        if self.max_binding_bytes < OFFSET_ALIGNMENT or self.max_binding_bytes % OFFSET_ALIGNMENT:
            raise ValueError(
                f"max_binding_bytes must be a positive multiple of {OFFSET_ALIGNMENT}, got {self.max_binding_bytes}"
            )


def signature_of(name: str, f: T.PrimFunc):
    try:
        return _signature_of(name, f)
    except Exception as e:  # the WebGPU codegen's error type: same message, our type
        raise CodegenError(str(e)) from None


def codegen(prim_funcs: Mapping[str, T.PrimFunc], options: VulkanOptions | None = None) -> KernelModule:
    """Schedule (where needed), translate and compile every kernel."""
    options = options or VulkanOptions()
    specs = [kernel_spec(name, f, options) for name, f in prim_funcs.items()]
    shaders = [s for k in specs for s in k["shaders"]]
    names = [f"{k['name']}#{i}" for k in specs for i in range(len(k["shaders"]))]
    for s, code in zip(shaders, compile_many([s["glsl"] for s in shaders], names)):
        s["spirv"] = code
    return KernelModule(specs)


def kernel_spec(name: str, f: T.PrimFunc, options: VulkanOptions) -> dict[str, Any]:
    """The runtime's description of one kernel: signature, GLSL shaders and host plan (codegen
    adds each shader's SPIR-V, compiling them all at once)."""
    if not isinstance(f, T.PrimFunc):
        raise CodegenError(f"kernel {name}: expected a tir.PrimFunc, found {type(f).__name__}")
    sig = signature_of(name, f)
    if not is_scheduled(f):
        if not options.schedule:
            raise CodegenError(f"kernel {name}: no loop is bound to GPU threads and scheduling is off")
        from llm_deploy.targets.webgpu.gpu_rules import schedule

        f = schedule(f, options)
    try:
        return _VulkanSplit(name, f, sig, options).spec()
    except CodegenError:
        raise
    except ValueError as e:  # the shared host split's errors (webgpu's CodegenError)
        raise CodegenError(str(e)) from None


class _VulkanSplit(_HostSplit):
    """The WebGPU target's host split, with kernels emitted as GLSL and compiled to SPIR-V."""

    def device(self, s: T.Stmt) -> int:
        written = {x.buffer.name for x in stores(s) if x.buffer.scope == "global"}
        used = written | {x.buffer.name for x in loads(s) if x.buffer.scope == "global"}
        local_allocs = {x.buffer.name for x in walk(s) if isinstance(x, T.Allocate)}
        bindings = {
            name: self.binding(self.globals[name], name in written)
            for name in self.globals
            if name in used and name not in local_allocs
        }
        merged = self.merge(bindings)
        free = _free_names(s)
        for b in bindings.values():
            for d in b.buffer.shape:
                free |= S.free_vars(d)
        uniforms = [v for v in self.sig.vars if v in free] + [glsl.merged_offset(m) for m in merged]
        em = glsl.KernelEmitter(
            f"{self.name}#{len(self.shaders)}",
            s,
            bindings,
            uniforms,
            self.scalars,
            (*self.options.max_workgroup_size_xyz, self.options.max_workgroup_size),
            self.options.subgroups,
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
                "glsl": src.code,
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
                "subgroup_lanes": src.subgroup_lanes,
            }
        )
        return len(self.shaders) - 1


def _scratch_bytes(dt: str) -> int:
    return 2 if dtype(dt).wgsl == "f16" else 4


def glslang() -> str:
    """The glslangValidator executable (apt `glslang-tools`)."""
    exe = os.environ.get("LLM_DEPLOY_GLSLANG") or shutil.which("glslangValidator")
    if exe is None:
        raise CodegenError(
            "the Vulkan target compiles shaders with glslangValidator, which is not installed "
            "(apt install glslang-tools, or set LLM_DEPLOY_GLSLANG to its path)"
        )
    return exe


def cache_dir() -> Path:
    """Where compiled SPIR-V is kept, keyed by the GLSL's hash (`LLM_DEPLOY_CACHE` overrides)."""
    root = os.environ.get("LLM_DEPLOY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "llm_deploy")
    return Path(root) / "spirv"


def compile_many(codes: list[str], names: list[str]) -> list[bytes]:
    """SPIR-V for each GLSL source: from the cache, else compiled by glslang processes in
    parallel (starting glslang costs more than compiling one of our kernels)."""
    tag = f"{SPIRV_ENV}|{glslang()}|"
    keys = [hashlib.sha256((tag + c).encode()).hexdigest() for c in codes]
    folder = cache_dir()
    out: dict[str, bytes] = {}
    todo = {}
    for key, code, name in zip(keys, codes, names):
        path = folder / f"{key}.spv"
        if key in out or key in todo:
            continue
        if path.exists():
            out[key] = path.read_bytes()
        else:
            todo[key] = (code, name)
    if todo:
        with ThreadPoolExecutor(max_workers=min(8, len(todo))) as pool:
            done = dict(zip(todo, pool.map(lambda cn: compile_glsl(*cn), todo.values())))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for key, code in done.items():
                tmp = folder / f"{key}.{os.getpid()}.tmp"
                tmp.write_bytes(code)
                tmp.replace(folder / f"{key}.spv")
        except OSError:
            pass  # a read-only home: the cache is an optimization only
        out.update(done)
    return [out[k] for k in keys]


def compile_glsl(code: str, what: str) -> bytes:
    """SPIR-V for a GLSL compute shader; a compile error quotes glslang and the numbered source."""
    with tempfile.TemporaryDirectory(prefix="llm_deploy_glsl_") as tmp:
        src, out = Path(tmp) / "k.comp", Path(tmp) / "k.spv"
        src.write_text(code)
        r = subprocess.run(
            [glslang(), "-V", "--target-env", SPIRV_ENV, "-o", str(out), str(src)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            numbered = "\n".join(f"{i + 1:4} {line}" for i, line in enumerate(code.split("\n")))
            raise CodegenError(
                f"kernel {what}: glslang rejected the shader:\n{r.stdout}{r.stderr}\n{numbered}"
            )
        return out.read_bytes()
