# ruff: noqa: F401, F811
"""The fused dequantize kernels of every packing (group-quantized and GGUF blocks: packed bytes
read through 32-bit words), compiled for Vulkan and run on lavapipe, against numpy on the same
packed arrays: dequantize_linear for one row (decode) and several (prefill), dequantize_take for
embeddings; every shader passes spirv-val."""

from __future__ import annotations

import numpy as np
import pytest

from llm_deploy.compiler.passes.legalize import legalize
from llm_deploy.quantization import unpack
from llm_deploy.targets.vulkan.codegen import codegen
from tests.quantization.test_kernels import CASES, ROWS, K, _module
from tests.targets.vulkan_util import prim_funcs, spirv_val, vk_device, vk_vm


@pytest.fixture(scope="module")
def compiled():
    mods = {name: legalize(_module(p)) for name, (p, _, _) in CASES.items()}
    kernels = {f"{name}__{k}": f for name, mod in mods.items() for k, f in prim_funcs(mod).items()}
    return mods, codegen(kernels)


def test_dequantize_shaders_pass_spirv_val(compiled):
    spirv_val(compiled[1].spirv())


@pytest.mark.parametrize("name", list(CASES))
def test_dequantize_kernels_on_vulkan_match_numpy(name, compiled, vk_device):
    mods, module = compiled
    packing, arrays, _ = CASES[name]
    mod = mods[name]
    vm = vk_vm(mod, {k: module[f"{name}__{k}"] for k in prim_funcs(mod)}, vk_device)
    weights = [vk_device.from_host(a, persistent=True) for a in arrays.values()]
    w = unpack(packing, arrays, (len(next(iter(arrays.values()))), K))
    rng = np.random.default_rng(1)
    for n in ROWS:
        x = rng.standard_normal((n, K)).astype(np.float32)
        ids = rng.integers(0, w.shape[0], n).astype(np.int32)
        y, e = vk_device.to_host(vm["main"](vk_device.from_host(x), vk_device.from_host(ids), *weights))
        np.testing.assert_allclose(y, x @ w.T, rtol=1e-4, atol=1e-4 * np.abs(w).max() * np.sqrt(K))
        np.testing.assert_allclose(e, w[ids], rtol=1e-6, atol=0)
