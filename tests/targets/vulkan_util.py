"""Shared pieces of the Vulkan tests: one Vulkan device per session (Mesa's lavapipe in CI),
running a module's graph function on it through the VM, and spirv-val."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from llm_deploy.compiler import tir
from llm_deploy.compiler.vm_codegen import lower_to_vm
from llm_deploy.runtime.vm import VirtualMachine


@pytest.fixture(scope="session")
def vk_device():
    """The process's Vulkan device (the VM, the kernels and the runner all use this one)."""
    from llm_deploy.targets.vulkan.runtime import default_device

    return default_device()


PROMPTS = [[1, 72, 101, 108, 108, 111], [1, 84, 104, 101, 32, 113, 117, 105, 99, 107, 32], [1, 50]]


def greedy(runner, seq_id: int, prompt: list[int], steps: int, on_step=None) -> list[int]:
    """`steps` greedy tokens; `on_step(stats before, seconds)` after each decode."""
    runner.add_sequence(seq_id)
    logits = runner.prefill([seq_id], [prompt])
    tokens = [int(np.argmax(logits[0]))]
    for _ in range(steps - 1):
        before = dict(getattr(runner.device, "stats", {}))
        t0 = time.perf_counter()
        logits = runner.decode([seq_id], [tokens[-1]])
        if on_step is not None:
            on_step(before, time.perf_counter() - t0)
        tokens.append(int(np.argmax(logits[0])))
    runner.remove_sequence(seq_id)
    return tokens


def prim_funcs(mod) -> dict[str, tir.PrimFunc]:
    return {k: f for k, f in mod.items() if isinstance(f, tir.PrimFunc)}


def vk_vm(lowered, kernels, device) -> VirtualMachine:
    program, constants = lower_to_vm(lowered)
    return VirtualMachine(json.loads(json.dumps(program)), kernels, {}, constants, device)


def run_on_device(vm: VirtualMachine, device, name: str, *args: np.ndarray):
    return device.to_host(vm[name](*[device.from_host(a) for a in args]))


def spirv_val(binaries: list[bytes]) -> None:
    """Every SPIR-V module passes spirv-val (apt spirv-tools) for Vulkan 1.1; failures name it."""
    exe = shutil.which("spirv-val")
    assert exe is not None, "spirv-val is not installed (apt install spirv-tools; scripts/install.sh does)"
    with tempfile.TemporaryDirectory() as tmp:
        for i, code in enumerate(binaries):
            path = Path(tmp) / f"s{i}.spv"
            path.write_bytes(code)
            r = subprocess.run([exe, "--target-env", "vulkan1.1", str(path)], capture_output=True, text=True)
            assert r.returncode == 0, f"shader {i}: spirv-val: {r.stdout}{r.stderr}"
