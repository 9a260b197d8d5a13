"""Pass pipelines per target, and `build`: IRModule -> Executable.

A pipeline is a named list of passes `IRModule -> IRModule`. Running one can dump the IR text
after every pass and run the well-formedness checker after each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llm_deploy.compiler import tir
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.passes.canonicalize import canonicalize
from llm_deploy.compiler.passes.cse import cse
from llm_deploy.compiler.passes.dce import dce
from llm_deploy.compiler.passes.fold_constant import fold_constant
from llm_deploy.compiler.passes.fuse_ops import fuse_ops
from llm_deploy.compiler.passes.fuse_tir import fuse_tir
from llm_deploy.compiler.passes.int_dot import int_dot, merge_int_dot
from llm_deploy.compiler.passes.kv_cache import bind_kv_cache, lower_kv_cache
from llm_deploy.compiler.passes.legalize import legalize
from llm_deploy.compiler.passes.memory_plan import memory_plan
from llm_deploy.compiler.passes.rewrite_reshape import rewrite_reshape
from llm_deploy.compiler.passes.schedule import default_schedule
from llm_deploy.compiler.vm_codegen import lower_to_vm
from llm_deploy.runtime.executable import Executable
from llm_deploy.targets.webgpu.lower_quantized import lower_quantized

Pass = Callable[[IRModule], IRModule]

PIPELINES: dict[str, list[Pass]] = {
    "default": [lower_kv_cache, legalize, default_schedule],
}
# The same with the KV cache's numpy externs for attention instead of the paged kernels: the
# reference to compare the kernels against.
PIPELINES["kv_extern"] = [bind_kv_cache if p is lower_kv_cache else p for p in PIPELINES["default"]]

# Graph optimizations on legalized modules: clean-up, reshapes as views, fusion (before the
# schedules, which then schedule the fused programs).
OPTIMIZE: list[Pass] = [canonicalize, fold_constant, cse, dce, rewrite_reshape, fuse_ops, fuse_tir, dce]


def _optimized(passes: list[Pass]) -> list[Pass]:
    """`passes` with OPTIMIZE right after legalize and memory planning last."""
    at = passes.index(legalize) + 1
    return [*passes[:at], *OPTIMIZE, *passes[at:], memory_plan]


# Per target: the CPU runs fused programs and plans memory (its Device makes views of storage).
# "unoptimized" is the reference they are checked and measured against.
PIPELINES["unoptimized"] = list(PIPELINES["default"])
# The CPU's decode multiplies GGUF blocks with int8 activations, one kernel for the products that
# share an input (passes/int_dot.py; the module attribute int_dot=False keeps the exact kernels).
PIPELINES["llvm"] = _optimized([lower_kv_cache, int_dot, legalize, merge_int_dot, default_schedule])


def webgpu_schedule(mod: IRModule) -> IRModule:
    """The GPU's default schedules: every tensor program bound to workgroups and threads."""
    return default_schedule(mod, "webgpu")


# WebGPU: the quantized ops as plain loops (the CPU's come scheduled), then the same
# optimizations with the GPU's schedules (planned tensors: views of device buffers).
PIPELINES["webgpu"] = _optimized([lower_kv_cache, lower_quantized, legalize, webgpu_schedule])
# Vulkan runs the same GPU schedules.
PIPELINES["vulkan"] = PIPELINES["webgpu"]


def run_passes(
    mod: IRModule, passes: Sequence[Pass], dump_dir: str | Path | None = None, check: bool = False
) -> IRModule:
    """Apply `passes` in order; optionally dump `NN_name.ir` after each and check well-formedness."""
    if dump_dir is not None:
        Path(dump_dir).mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(passes):
        mod = p(mod)
        if check:
            from llm_deploy.compiler.wellformed import check as check_wellformed

            check_wellformed(mod)
        if dump_dir is not None:
            (Path(dump_dir) / f"{i:02d}_{p.__name__}.ir").write_text(str(mod))
    return mod


def build(
    mod: IRModule,
    target: str = "llvm",
    options: Any = None,
    pipeline: str | Sequence[Pass] = "default",
    metadata: dict[str, Any] | None = None,
    dump_dir: str | Path | None = None,
    check: bool = False,
) -> Executable:
    """Optimize and lower `mod`, compile its tensor programs for `target`, and return the executable."""
    from llm_deploy.targets import get_target

    if isinstance(pipeline, str):
        # "default" is the target's own pipeline where it has one.
        passes = PIPELINES[target if pipeline == "default" and target in PIPELINES else pipeline]
    else:
        passes = list(pipeline)
    mod = run_passes(mod, passes, dump_dir, check)
    program, constants = lower_to_vm(mod)
    prim_funcs = {name: f for name, f in mod.items() if isinstance(f, tir.PrimFunc)}
    t = get_target(target)
    kernels = t.codegen(prim_funcs, options if options is not None else t.options())
    return Executable(program, kernels, constants, target, metadata)
