"""The WebGPU runtime: a step of many kernels is one submission and one readback; pipelines and
bind groups are created once and reused; weights are uploaded once; a float16 module on a device
without `shader-f16` is an error naming the feature; saved kernels load without the compiler."""

from __future__ import annotations

import numpy as np
import pytest

from llm_deploy.compiler import ops
from llm_deploy.compiler import shape as S
from llm_deploy.compiler import struct_info as SI
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.builder import BlockBuilder
from llm_deploy.compiler.expr import Var
from llm_deploy.compiler.interpreter import run
from llm_deploy.compiler.passes.legalize import legalize
from llm_deploy.targets.webgpu.codegen import codegen
from llm_deploy.targets.webgpu.runtime import KernelCallError, WebGPUError, load, request_device
from tests.targets.webgpu_util import gpu, gpu_vm, prim_funcs  # noqa: F401

n = S.var("n")


def _mlp(dtype: str = "float32"):
    """rms_norm -> linear -> silu * linear -> linear -> add: a block's worth of kernels."""
    bb = BlockBuilder()
    x = Var("x", SI.tensor((n, 32), dtype))
    w = [Var(f"w{k}", SI.tensor(s, dtype)) for k, s in enumerate([(32,), (48, 32), (48, 32), (32, 48)])]
    with bb.function("main", [x, *w]):
        with bb.dataflow():
            h = bb.emit(ops.rms_norm(x, w[0], 1e-5))
            g = bb.emit(ops.multiply(ops.silu(ops.linear(h, w[1])), ops.linear(h, w[2])))
            out = bb.emit_output(ops.add(x, ops.linear(g, w[3])))
        bb.emit_func_output(out)
    return bb.get()


def _weights(rng, dtype="float32"):
    return [rng.standard_normal(s).astype(dtype) * 0.3 for s in [(32,), (48, 32), (48, 32), (32, 48)]]


@pytest.fixture(scope="module")
def mlp(gpu):  # noqa: F811
    mod = _mlp()
    low = legalize(mod)
    return mod, low, codegen(prim_funcs(low))


def test_a_step_is_one_submission_and_one_readback_with_everything_created_once(mlp, gpu):  # noqa: F811
    mod, low, kernels = mlp
    rng = np.random.default_rng(0)
    weights = _weights(rng)
    vm = gpu_vm(low, kernels.kernels, gpu)
    before = dict(gpu.stats)
    on_device = [gpu.from_host(w, persistent=True) for w in weights]  # uploaded once, now
    assert gpu.stats["uploads"] == before["uploads"]  # persistent uploads are not per step

    per_step = []
    for _ in range(4):
        x = rng.standard_normal((3, 32)).astype(np.float32)
        s0 = dict(gpu.stats)
        out = gpu.to_host(vm["main"](gpu.from_host(x), *on_device))
        per_step.append({k: gpu.stats[k] - s0[k] for k in s0})
        np.testing.assert_allclose(out, run(mod, "main", x, *weights), rtol=1e-4, atol=1e-4)
    for stats in per_step:
        assert stats["submissions"] == 1 and stats["readbacks"] == 1
        assert stats["uploads"] == 1  # the input only: weights stay on the device
        assert stats["dispatches"] >= 7  # rms_norm (2), 3 linears, silu, multiply, add
    for stats in per_step[1:]:  # same shapes: nothing new to create
        assert stats["pipelines"] == 0 and stats["bind_groups"] == 0 and stats["buffers"] == 0


def test_one_module_serves_every_length(mlp, gpu):  # noqa: F811
    mod, low, kernels = mlp
    rng = np.random.default_rng(1)
    weights = _weights(rng)
    vm = gpu_vm(low, kernels.kernels, gpu)
    for rows in (1, 2, 5, 33, 70):
        x = rng.standard_normal((rows, 32)).astype(np.float32)
        out = gpu.to_host(vm["main"](gpu.from_host(x), *[gpu.from_host(w) for w in weights]))
        np.testing.assert_allclose(out, run(mod, "main", x, *weights), rtol=1e-4, atol=1e-4)


def test_float16_needs_shader_f16_and_float32_runs_without_it(gpu):  # noqa: F811
    if not gpu.has_f16:  # then the default device is itself the device without the feature
        plain = gpu
    else:
        plain = request_device(f16=False)
    assert not plain.has_f16
    low16 = legalize(_mlp("float16"))
    module = codegen(prim_funcs(low16))
    module._device = plain
    assert module.needs_f16
    with pytest.raises(WebGPUError, match="shader-f16"):
        module.prepare()
    low32 = legalize(_mlp("float32"))
    module32 = codegen(prim_funcs(low32))
    module32._device = plain
    module32.prepare()
    rng = np.random.default_rng(2)
    x, weights = rng.standard_normal((2, 32)).astype(np.float32), _weights(rng)
    vm = gpu_vm(low32, module32.kernels, plain)
    out = plain.to_host(vm["main"](plain.from_host(x), *[plain.from_host(w) for w in weights]))
    np.testing.assert_allclose(out, run(_mlp(), "main", x, *weights), rtol=1e-4, atol=1e-4)


def test_float16_model_on_a_device_with_the_feature(gpu):  # noqa: F811
    assert gpu.has_f16, "lavapipe offers shader-f16"
    mod = _mlp("float16")
    low = legalize(mod)
    vm = gpu_vm(low, codegen(prim_funcs(low)).kernels, gpu)
    rng = np.random.default_rng(3)
    x, weights = rng.standard_normal((4, 32)).astype(np.float16), _weights(rng, "float16")
    out = gpu.to_host(vm["main"](gpu.from_host(x), *[gpu.from_host(w) for w in weights]))
    assert out.dtype == np.float16
    np.testing.assert_allclose(
        out.astype(np.float32), run(mod, "main", x, *weights).astype(np.float32), rtol=3e-2, atol=3e-2
    )


def test_saved_kernels_load_and_run_the_same(mlp, gpu, tmp_path):  # noqa: F811
    mod, low, kernels = mlp
    kernels.save(tmp_path, "kernels")
    assert (tmp_path / "kernels.wgsl").read_text() == kernels.sources()
    loaded = load(tmp_path, "kernels", device=gpu)
    rng = np.random.default_rng(4)
    x, weights = rng.standard_normal((5, 32)).astype(np.float32), _weights(rng)
    outs = []
    for km in (kernels, loaded):
        vm = gpu_vm(low, km.kernels, gpu)
        outs.append(gpu.to_host(vm["main"](gpu.from_host(x), *[gpu.from_host(w) for w in weights])))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_kernel_arguments_are_checked(mlp, gpu):  # noqa: F811
    _, low, kernels = mlp
    name = next(k for k in kernels.kernels if k.startswith("add"))
    a = gpu.from_host(np.zeros((2, 32), np.float32))
    with pytest.raises(KernelCallError, match="argument 1 .B. must be a float32 GPUTensor"):
        kernels[name](a, gpu.from_host(np.zeros((2, 32), np.int32)), gpu.alloc((2, 32), "float32"))
    with pytest.raises(KernelCallError, match="n=2"):
        kernels[name](a, gpu.from_host(np.zeros((3, 32), np.float32)), gpu.alloc((2, 32), "float32"))
    with pytest.raises(KernelCallError, match="takes 3 arguments"):
        kernels[name](a)


def test_grids_beyond_65535_workgroups_and_empty_grids(gpu):  # noqa: F811
    bx, tx = S.var("bx"), S.var("tx")
    A, B = T.Buffer("A", (n,), "int32"), T.Buffer("B", (n,), "int32")
    body = T.For(
        bx, n, T.For(tx, 1, T.Store(B, (bx,), A[bx] + 1), "thread", "threadIdx.x"), "thread", "blockIdx.x"
    )
    module = codegen({"inc": T.PrimFunc((A, B), body)})
    for size in (70001, 0):
        a = np.arange(size, dtype=np.int32)
        out = gpu.alloc((size,), "int32")
        module["inc"](gpu.from_host(a), out)
        np.testing.assert_array_equal(gpu.to_host(out), a + 1)
