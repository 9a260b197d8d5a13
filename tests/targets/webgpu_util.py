"""Shared pieces of the WebGPU tests: one wgpu device per session (Mesa's lavapipe in CI, chosen
through the Vulkan backend), and running a module's graph function on it through the VM."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import pytest

from llm_deploy.compiler import tir
from llm_deploy.compiler.vm_codegen import lower_to_vm
from llm_deploy.runtime.vm import VirtualMachine


@pytest.fixture(scope="session")
def gpu():
    """The process's WebGPU device (the VM, the kernels and the runner all use this one)."""
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="xdg-"))
    os.environ.setdefault("LLM_DEPLOY_WEBGPU_BACKEND", "Vulkan")
    from llm_deploy.targets.webgpu.runtime import default_device

    return default_device()


def prim_funcs(mod) -> dict[str, tir.PrimFunc]:
    return {k: f for k, f in mod.items() if isinstance(f, tir.PrimFunc)}


def gpu_vm(lowered, kernels, device) -> VirtualMachine:
    """A VM over `lowered`'s graph functions with WebGPU kernels, on `device`."""
    program, constants = lower_to_vm(lowered)
    return VirtualMachine(json.loads(json.dumps(program)), kernels, {}, constants, device)


def run_on_gpu(vm: VirtualMachine, device, name: str, *args: np.ndarray):
    """Upload the inputs, run, read the result back (one submission)."""
    return device.to_host(vm[name](*[device.from_host(a) for a in args]))
