"""Every lowered op, compiled for WebGPU with the default GPU rules and run for real by wgpu
(lavapipe in CI), equals the interpreter at several values of each symbolic dim; one compiled
module serves every size. The small cases are the legalize suite's; the larger ones reach the
cross-thread reduction and the register-tiled matrix rules (reductions of 32 or more)."""

from __future__ import annotations

import numpy as np
import pytest

from llm_deploy.compiler import ops
from llm_deploy.compiler import shape as S
from llm_deploy.compiler.interpreter import run
from llm_deploy.compiler.passes.legalize import legalize
from llm_deploy.targets.webgpu.codegen import codegen
from tests.compiler.test_legalize import CASES, Case, _inputs, build
from tests.targets.webgpu_util import gpu, gpu_vm, prim_funcs, run_on_gpu  # noqa: F401

n, m = S.var("n"), S.var("m")
F32 = "float32"


def _big(id, params, call, sizes, rtol=1e-4, **kw):
    return Case(id, id.split("-")[0], params, call, sizes=sizes, rtol=rtol, **kw)


BIG = [
    _big("linear-gemv-gemm", [((n, 64), F32), ((40, 64), F32)], ops.linear, [{"n": 1}, {"n": 3}, {"n": 37}]),
    _big("matmul-gemm", [((n, 48), F32), ((48, 70), F32)], ops.matmul, [{"n": 2}, {"n": 9}, {"n": 33}]),
    _big("matmul-batched-gemm", [((3, n, 40), F32), ((40, m), F32)], ops.matmul, [{"n": 1, "m": 5}, {"n": 6, "m": 33}]),
    _big("matmul-f16-gemm", [((n, 48), "float16"), ((48, 70), "float16")], ops.matmul, [{"n": 2}, {"n": 9}], rtol=2e-2),
    _big("sum-rows", [((n, 300), F32)], lambda x: ops.sum(x, 1), [{"n": 1}, {"n": 7}]),
    _big("sum-all-symbolic", [((n, 13), F32)], ops.sum, [{"n": 1}, {"n": 40}]),
    _big("max-rows", [((n, 300), F32)], lambda x: ops.max(x, 1), [{"n": 1}, {"n": 7}]),
    _big("argmax-rows", [((n, 300), F32)], lambda x: ops.argmax(x, 1), [{"n": 1}, {"n": 7}]),
    _big("argmin-all", [((n, 100), F32)], ops.argmin, [{"n": 1}, {"n": 7}]),
    _big("softmax-rows", [((n, 200), F32)], ops.softmax, [{"n": 1}, {"n": 3}]),
    _big("rms_norm-576", [((n, 576), F32), ((576,), F32)], lambda x, w: ops.rms_norm(x, w, 1e-5), [{"n": 1}, {"n": 4}]),
    _big("attention-long", [((n, 4, 8), F32), ((m, 2, 8), F32), ((m, 2, 8), F32)], ops.attention, [{"n": 1, "m": 40}, {"n": 5, "m": 70}]),
]  # fmt: skip
ALL = [*CASES, *BIG]


@pytest.fixture(scope="module")
def compiled(gpu):  # noqa: F811
    """Every case's tensor programs in one WebGPU module (pipelines are created at first call)."""
    lowered = {c.id: legalize(build(c)) for c in ALL}
    kernels = {f"{cid}__{name}": f for cid, low in lowered.items() for name, f in prim_funcs(low).items()}
    return lowered, codegen(kernels)


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_op_on_webgpu_equals_the_interpreter(case, compiled, gpu):  # noqa: F811
    lowered, module = compiled
    low = lowered[case.id]
    mine = {k: module[f"{case.id}__{k}"] for k in prim_funcs(low)}
    vm = gpu_vm(low, mine, gpu)
    rng = np.random.default_rng(0)
    mod = build(case)
    for sizes in case.sizes:
        args = _inputs(case, sizes, rng)
        expected = run(mod, "main", *args)
        got = run_on_gpu(vm, gpu, "main", *args)
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


def test_the_large_cases_reach_every_gpu_rule(compiled):
    """The big cases are there for the rules they exercise: workgroup-memory reductions (shared
    buffers and barriers) and the matrix branch on the row count."""
    from llm_deploy.targets.webgpu.gpu_rules import schedule

    lowered, _ = compiled

    def scheduled(cid):
        return [str(schedule(f)) for f in prim_funcs(lowered[cid]).values()]

    assert any("shared" in s and "barrier()" in s for s in scheduled("sum-rows"))
    linear = scheduled("linear-gemv-gemm")[0]
    assert "if n <= 4:" in linear and "shared" in linear and "_tile" in linear
    assert "_tile" in scheduled("matmul-batched-gemm")[0]
    assert "shared" not in scheduled("sum")[0]  # a reduction of 4 folds in one thread
