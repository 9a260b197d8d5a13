# ruff: noqa: F811
"""The Vulkan codegen's own choices: dims as push constants (one SPIR-V module for every length),
subgroup butterflies for workgroup-memory reductions and the forced fallback (both run and equal
the tree bitwise), GLSL that glslang rejects named with its kernel, save/load of SPIR-V."""

from __future__ import annotations

import numpy as np
import pytest

from llm_deploy.compiler import ops
from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.interpreter import run
from llm_deploy.compiler.passes.legalize import legalize
from llm_deploy.targets.vulkan.codegen import VulkanOptions, codegen, compile_glsl
from llm_deploy.targets.vulkan.glsl import CodegenError
from llm_deploy.targets.vulkan.runtime import VulkanDevice, load
from tests.compiler.test_legalize import Case, _inputs, build
from tests.targets.vulkan_util import prim_funcs, run_on_device, spirv_val, vk_device, vk_vm  # noqa: F401

n = S.var("n")
F32 = "float32"
REDUCTIONS = [
    Case("sum-rows", "sum", [((n, 300), F32)], lambda x: ops.sum(x, 1), sizes=[{"n": 1}, {"n": 7}], rtol=1e-4),
    Case("max-rows", "max", [((n, 100), F32)], lambda x: ops.max(x, 1), sizes=[{"n": 3}], rtol=1e-6),
    Case("rms_norm", "rms_norm", [((n, 64), F32), ((64,), F32)], lambda x, w: ops.rms_norm(x, w, 1e-5), sizes=[{"n": 2}, {"n": 5}], rtol=1e-4),
]  # fmt: skip


@pytest.fixture(scope="module")
def reductions():
    lowered = {c.id: legalize(build(c)) for c in REDUCTIONS}
    kernels = {f"{cid}__{k}": f for cid, low in lowered.items() for k, f in prim_funcs(low).items()}
    return lowered, kernels, codegen(kernels), codegen(kernels, VulkanOptions(subgroups=False))


@pytest.fixture(scope="module")
def no_subgroup_device():
    """A second device on the same GPU that never uses subgroups (as one without them)."""
    return VulkanDevice(0, subgroups=False)


def test_reductions_get_a_subgroup_butterfly_and_a_tree(reductions):
    _, _, with_sg, without = reductions
    sg = with_sg.sources()
    assert "subgroupShuffleXor" in sg and "constant_id = 0" in sg and "barrier()" in sg
    assert "subgroup" not in without.sources()
    spirv_val(with_sg.spirv() + without.spirv())


def _run(case, lowered, module, device, sizes):
    low = lowered[case.id]
    vm = vk_vm(low, {k: module[f"{case.id}__{k}"] for k in prim_funcs(low)}, device)
    args = _inputs(case, sizes, np.random.default_rng(1))
    return args, run_on_device(vm, device, "main", *args)


@pytest.mark.parametrize("case", REDUCTIONS, ids=[c.id for c in REDUCTIONS])
def test_subgroups_and_the_forced_fallback_equal_the_interpreter(
    case, reductions, vk_device, no_subgroup_device
):  # noqa: F811
    lowered, _, with_sg, without = reductions
    assert vk_device.subgroup_size >= 8, "lavapipe reports subgroups of 8 with shuffles"
    assert no_subgroup_device.subgroup_size == 0
    for sizes in case.sizes:
        results = []
        for module, device in ((with_sg, vk_device), (with_sg, no_subgroup_device), (without, vk_device)):
            module = type(module)(module.specs, device)
            args, got = _run(case, lowered, module, device, sizes)
            results.append(got)
        used = [p.subgroups for k in module.kernels.values() for p in k.pipelines()]
        assert not any(used)  # the last module has no butterflies at all
        expected = run(build(case), "main", *args)
        for got in results:
            np.testing.assert_allclose(
                got, expected, rtol=case.rtol, atol=case.rtol, err_msg=f"{case.id} {sizes}"
            )
        # the butterfly pairs the values as the tree does: the same bits
        np.testing.assert_array_equal(results[0], results[1])
        np.testing.assert_array_equal(results[0], results[2])


def test_the_butterfly_is_chosen_only_where_the_device_has_subgroups(
    reductions, vk_device, no_subgroup_device
):  # noqa: F811
    _, _, with_sg, _ = reductions
    on = type(with_sg)(with_sg.specs, vk_device).prepare()
    off = type(with_sg)(with_sg.specs, no_subgroup_device).prepare()
    assert any(p.subgroups for k in on.kernels.values() for p in k.pipelines())
    assert not any(p.subgroups for k in off.kernels.values() for p in k.pipelines())


def test_one_shader_serves_every_length_through_push_constants(reductions):
    _, kernels, module, _ = reductions
    spec = next(k for k in module.specs if k["name"].startswith("sum-rows"))
    assert all("n" in s["uniforms"] for s in spec["shaders"])
    assert all("push_constant" in s["glsl"] for s in spec["shaders"])


def test_saved_kernels_load_and_run(tmp_path, reductions, vk_device):  # noqa: F811
    lowered, _, module, _ = reductions
    module.save(tmp_path)
    assert (tmp_path / "kernels.spv").is_file() and (tmp_path / "kernels.comp").is_file()
    again = load(tmp_path, device=vk_device)
    assert again.spirv() == module.spirv()
    case = REDUCTIONS[0]
    args, got = _run(case, lowered, again, vk_device, {"n": 2})
    np.testing.assert_allclose(got, run(build(case), "main", *args), rtol=1e-4)


def test_glslang_errors_name_the_kernel():
    with pytest.raises(CodegenError, match="kernel k#0: glslang rejected"):
        compile_glsl("#version 450\nvoid main() { undefined_thing; }\n", "k#0")


def test_unsupported_dtype_is_named():
    a = T.Buffer("a", (S.const(4),), "float64")
    i = S.var("i")
    f = T.PrimFunc((a,), T.For(i, 4, T.Store(a, (i,), T.Imm(1.0, "float64"))), {})
    with pytest.raises(CodegenError, match="float64"):
        codegen({"k": f})
