"""Every lowered op, compiled for Vulkan (GLSL -> SPIR-V) with the default GPU rules and run on
lavapipe, equals the interpreter at several values of each symbolic dim; every shader passes
spirv-val. The small cases are the legalize suite's; the larger ones reach the cross-thread
reduction (and its subgroup butterfly) and the register-tiled matrix rules."""

from __future__ import annotations

import numpy as np
import pytest

from llm_deploy.compiler import ops
from llm_deploy.compiler import shape as S
from llm_deploy.compiler.interpreter import run
from llm_deploy.compiler.passes.legalize import legalize
from llm_deploy.targets.vulkan.codegen import codegen
from tests.compiler.test_legalize import CASES, Case, _inputs, build
from tests.targets.vulkan_util import prim_funcs, run_on_device, spirv_val, vk_device, vk_vm  # noqa: F401

n, m = S.var("n"), S.var("m")
F32 = "float32"


def _big(id, params, call, sizes, rtol=1e-4, **kw):
    return Case(id, id.split("-")[0], params, call, sizes=sizes, rtol=rtol, **kw)


BIG = [
    _big("linear-gemv-gemm", [((n, 64), F32), ((40, 64), F32)], ops.linear, [{"n": 1}, {"n": 3}, {"n": 37}]),
    _big("matmul-f16-gemm", [((n, 48), "float16"), ((48, 70), "float16")], ops.matmul, [{"n": 2}, {"n": 9}], rtol=2e-2),
    _big("sum-rows", [((n, 300), F32)], lambda x: ops.sum(x, 1), [{"n": 1}, {"n": 7}]),
    _big("sum-all-symbolic", [((n, 13), F32)], ops.sum, [{"n": 1}, {"n": 40}]),
    _big("max-rows", [((n, 300), F32)], lambda x: ops.max(x, 1), [{"n": 1}, {"n": 7}]),
    _big("argmax-rows", [((n, 300), F32)], lambda x: ops.argmax(x, 1), [{"n": 1}, {"n": 7}]),
    _big("softmax-rows", [((n, 200), F32)], ops.softmax, [{"n": 1}, {"n": 3}]),
    _big("rms_norm-576", [((n, 576), F32), ((576,), F32)], lambda x, w: ops.rms_norm(x, w, 1e-5), [{"n": 1}, {"n": 4}]),
    _big("attention-long", [((n, 4, 8), F32), ((m, 2, 8), F32), ((m, 2, 8), F32)], ops.attention, [{"n": 1, "m": 40}, {"n": 5, "m": 70}]),
]  # fmt: skip
ALL = [*CASES, *BIG]


@pytest.fixture(scope="module")
def compiled():
    """Every case's tensor programs in one Vulkan module (pipelines are created at first call)."""
    lowered = {c.id: legalize(build(c)) for c in ALL}
    kernels = {f"{cid}__{name}": f for cid, low in lowered.items() for name, f in prim_funcs(low).items()}
    return lowered, codegen(kernels)


def test_every_shader_passes_spirv_val(compiled):
    _, module = compiled
    binaries = module.spirv()
    assert len(binaries) >= len(ALL)
    spirv_val(binaries)


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_op_on_vulkan_equals_the_interpreter(case, compiled, vk_device):  # noqa: F811
    lowered, module = compiled
    low = lowered[case.id]
    mine = {k: module[f"{case.id}__{k}"] for k in prim_funcs(low)}
    vm = vk_vm(low, mine, vk_device)
    rng = np.random.default_rng(0)
    mod = build(case)
    for sizes in case.sizes:
        args = _inputs(case, sizes, rng)
        expected = run(mod, "main", *args)
        got = run_on_device(vm, vk_device, "main", *args)
        for e, g in zip(expected, got):
            for x, y in zip(e if isinstance(e, tuple) else (e,), g if isinstance(g, tuple) else (g,)):
                assert y.dtype == x.dtype and y.shape == x.shape, f"{case.id} {sizes}"
                np.testing.assert_allclose(
                    y.astype(np.float64),
                    x.astype(np.float64),
                    rtol=case.rtol,
                    atol=case.rtol,
                    err_msg=f"{case.id} {sizes}",
                )
