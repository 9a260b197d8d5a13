"""default_schedule: give every tensor program of a module the default schedule of a target.

    mod = default_schedule(mod, target="llvm")

Runs after legalize (and after fusion, on the fused programs). A PrimFunc already scheduled
(attribute `scheduled`, or any loop not serial) is left as it is, so hand-written kernels and a
second run of the pass keep what they have. The rules are chosen
by analysing each program's loops and accesses (schedule/analysis.py), never by op name.
"""

from __future__ import annotations

from collections.abc import Callable

from llm_deploy.compiler import tir
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.schedule.rules_cpu import CPUTarget, schedule_cpu


def host_cpu() -> CPUTarget:
    """The CPU rules' view of this host: its SIMD width (AVX2: 256 bits, AVX-512: 512)."""
    from llm_deploy.targets.llvm.codegen import LLVMOptions

    options = LLVMOptions()
    return CPUTarget(vector_bits=options.lanes_bits(options.target()))


def _llvm() -> Callable[[tir.PrimFunc], tir.PrimFunc]:
    target = host_cpu()
    return lambda f: schedule_cpu(f, target)


def _webgpu() -> Callable[[tir.PrimFunc], tir.PrimFunc]:
    from llm_deploy.targets.webgpu.gpu_rules import schedule

    return schedule


# target name -> a maker of its per-PrimFunc scheduler (made once per pass run)
SCHEDULERS: dict[str, Callable[[], Callable[[tir.PrimFunc], tir.PrimFunc]]] = {
    "llvm": _llvm,
    "webgpu": _webgpu,
}


def default_schedule(mod: IRModule, target: str = "llvm") -> IRModule:
    """Schedule every PrimFunc of `mod` with `target`'s default rules."""
    if target not in SCHEDULERS:
        raise ValueError(f"no default schedule for target {target!r}; available: {', '.join(SCHEDULERS)}")
    schedule = SCHEDULERS[target]()
    for name, f in mod.items():
        if isinstance(f, tir.PrimFunc):
            mod = mod.with_function(name, schedule(f))
    return mod
