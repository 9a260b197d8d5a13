"""Compilation targets, keyed by the names users type (`llm-deploy build --target llvm`).

A target is a package with the same small interface: `codegen(prim_funcs, options) -> kernels`
(compiler side) and a runtime that loads what codegen produced without the compiler. Entries name
their functions by import path, so importing this registry (the runtime does) never imports the
compiler.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    codegen_path: str  # "module:function", compiler side
    options_path: str  # "module:OptionsClass", a frozen dataclass of codegen options
    load_path: str  # "module:function", loads saved kernels (runtime side)

    def codegen(self, prim_funcs: Any, options: Any = None) -> Any:
        return _resolve(self.codegen_path)(prim_funcs, options)

    def options(self, **kwargs: Any) -> Any:
        return _resolve(self.options_path)(**kwargs)

    def load(self, *args: Any, **kwargs: Any) -> Any:
        return _resolve(self.load_path)(*args, **kwargs)


def _resolve(path: str) -> Any:
    module, attr = path.split(":")
    return getattr(importlib.import_module(module), attr)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "llvm",
            "CPU: native code through llvmlite for this host, with a thread pool in the code",
            "llm_deploy.targets.llvm.codegen:codegen",
            "llm_deploy.targets.llvm.codegen:LLVMOptions",
            "llm_deploy.targets.llvm.runtime:load",
        ),
        Target(
            "webgpu",
            "GPU: WGSL shaders run through WebGPU (wgpu: Vulkan, Metal, D3D12 or GL; a browser)",
            "llm_deploy.targets.webgpu.codegen:codegen",
            "llm_deploy.targets.webgpu.codegen:WebGPUOptions",
            "llm_deploy.targets.webgpu.runtime:load",
        ),
        Target(
            "vulkan",
            "GPU: GLSL compute shaders compiled to SPIR-V (glslang), run through Vulkan",
            "llm_deploy.targets.vulkan.codegen:codegen",
            "llm_deploy.targets.vulkan.codegen:VulkanOptions",
            "llm_deploy.targets.vulkan.runtime:load",
        ),
    )
}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise KeyError(f"unknown target {name!r}; available: {', '.join(sorted(TARGETS))}")
    return TARGETS[name]
