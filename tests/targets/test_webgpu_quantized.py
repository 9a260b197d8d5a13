"""The fused dequantize kernels of every packing (group-quantized and GGUF blocks), compiled for
WebGPU and run by wgpu, against numpy on the same packed arrays: dequantize_linear for one row
(decode) and several (prefill), dequantize_take for embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from llm_deploy.compiler.passes.legalize import legalize
from llm_deploy.quantization import unpack
from llm_deploy.targets.webgpu.codegen import codegen
from llm_deploy.targets.webgpu.lower_quantized import lower_quantized
from tests.quantization.test_kernels import CASES, ROWS, K, _module
from tests.targets.webgpu_util import gpu, gpu_vm, prim_funcs  # noqa: F401


@pytest.fixture(scope="module")
def compiled(gpu):  # noqa: F811
    mods = {name: legalize(lower_quantized(_module(p))) for name, (p, _, _) in CASES.items()}
    kernels = {f"{name}__{k}": f for name, mod in mods.items() for k, f in prim_funcs(mod).items()}
    return mods, codegen(kernels)


@pytest.mark.parametrize("name", list(CASES))
def test_dequantize_kernels_on_webgpu_match_numpy(name, compiled, gpu):  # noqa: F811
    mods, module = compiled
    packing, arrays, _ = CASES[name]
    mod = mods[name]
    vm = gpu_vm(mod, {k: module[f"{name}__{k}"] for k in prim_funcs(mod)}, gpu)
    weights = [gpu.from_host(a, persistent=True) for a in arrays.values()]
    w = unpack(packing, arrays, (len(next(iter(arrays.values()))), K))
    rng = np.random.default_rng(1)
    for n in ROWS:
        x = rng.standard_normal((n, K)).astype(np.float32)
        ids = rng.integers(0, w.shape[0], n).astype(np.int32)
        y, e = gpu.to_host(vm["main"](gpu.from_host(x), gpu.from_host(ids), *weights))
        np.testing.assert_allclose(y, x @ w.T, rtol=1e-4, atol=1e-4 * np.abs(w).max() * np.sqrt(K))
        np.testing.assert_allclose(e, w[ids], rtol=1e-6, atol=0)


def test_float16_scales_need_no_shader_f16(compiled, gpu):  # noqa: F811
    """Packed weights keep float16 scales, read straight into float32 (unpacked from u32 words):
    quantized models run on adapters without `shader-f16` (a browser's SwiftShader)."""
    from llm_deploy.targets.webgpu.runtime import request_device

    mods, module = compiled
    assert not module.needs_f16
    plain = gpu if not gpu.has_f16 else request_device(f16=False)
    for name in ("q4f16_1", "Q4_1"):
        packing, arrays, _ = CASES[name]
        mod = mods[name]
        local = codegen({k: f for k, f in prim_funcs(mod).items()})
        local._device = plain
        vm = gpu_vm(mod, local.kernels, plain)
        w = unpack(packing, arrays, (len(next(iter(arrays.values()))), K))
        x = np.random.default_rng(3).standard_normal((2, K)).astype(np.float32)
        ids = np.array([0, 5], np.int32)
        y, e = plain.to_host(
            vm["main"](
                plain.from_host(x), plain.from_host(ids), *[plain.from_host(a) for a in arrays.values()]
            )
        )
        np.testing.assert_allclose(y, x @ w.T, rtol=1e-4, atol=1e-4 * np.abs(w).max() * np.sqrt(K))
        np.testing.assert_allclose(e, w[ids], rtol=1e-6, atol=0)
