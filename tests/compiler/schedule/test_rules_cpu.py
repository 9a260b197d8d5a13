"""The default CPU rules: every lowered op, scheduled, runs equal to the op, interpreted and
compiled, for sizes that the tiles, lanes and chunks do not divide; and each kind of program
gets the loop structure its rule promises."""

import json
from dataclasses import replace

import numpy as np
import pytest

from llm_deploy.compiler import ops, tir
from llm_deploy.compiler.interpreter import run
from llm_deploy.compiler.passes.legalize import legalize
from llm_deploy.compiler.schedule import CPUTarget, schedule_cpu
from llm_deploy.compiler.schedule.ir import loops
from llm_deploy.compiler.shape import evaluate, var
from llm_deploy.compiler.vm_codegen import lower_to_vm
from llm_deploy.runtime.vm import VirtualMachine
from llm_deploy.targets.llvm.codegen import LLVMOptions, codegen
from tests.compiler.test_legalize import CASES, Case, _ids, _inputs, build

n = var("n")
F32 = "float32"
NS = [{"n": v} for v in (1, 4, 5, 14)]  # under a block, a block, one more, past a SMALL tile

# Model-like kernels with sizes that nothing divides: k (37) by the 8 lanes, the 13 rows of W
# by the 3 of a block, the rows of X by the 4 of a block and by the tiles of SMALL.
BIG = [
    Case("linear", "linear", [((n, 37), F32), ((13, 37), F32)], ops.linear, NS, rtol=1e-4),
    Case("linear-one-row", "linear", [((1, 37), F32), ((13, 37), F32)], ops.linear, [{}], rtol=1e-4),
    Case("linear-long-k", "linear", [((n, 300), F32), ((7, 300), F32)], ops.linear, NS, rtol=1e-4),
    Case("matmul", "matmul", [((n, 19), F32), ((19, 21), F32)], ops.matmul, NS, rtol=1e-4),
    Case("matmul-one-row", "matmul", [((1, 19), F32), ((19, 21), F32)], ops.matmul, [{}], rtol=1e-4),
    Case("matmul-batched", "matmul", [((2, n, 19), F32), ((19, 21), F32)], ops.matmul, NS[:3], rtol=1e-4),
    Case("rms_norm", "rms_norm", [((n, 37), F32), ((37,), F32)], lambda x, w: ops.rms_norm(x, w, 1e-5), NS, rtol=1e-4),
    Case("softmax", "softmax", [((n, 45), F32)], ops.softmax, NS, rtol=1e-4),
    Case("sum-axis0", "sum", [((n, 37), F32)], lambda x: ops.sum(x, 0), NS, rtol=1e-4),
    Case("max-rows", "max", [((n, 37), F32)], lambda x: ops.max(x, 1), NS),
    Case("argmax-rows", "argmax", [((n, 37), F32)], lambda x: ops.argmax(x, 1), NS),
    Case("take", "take", [((50, 37), F32), ((n,), "int32")], ops.take, NS, gen=_ids(50)),
    Case("rope", "rope", [((n, 3, 16), F32), ((n,), "int32")], lambda x, p: ops.rope(x, positions=p), NS, gen=_ids(40), rtol=1e-4),
    Case("add", "add", [((n, 37), F32), ((37,), F32)], ops.add, NS),
    Case("silu-1d", "silu", [((n,), F32)], ops.silu, [{"n": v} for v in (1, 63, 64, 200, 1000)]),
    Case("reshape", "reshape", [((n, 48), F32)], lambda x: ops.reshape(x, (n, 3, 16)), NS),
    Case("permute", "permute_dims", [((n, 5, 7), F32)], lambda x: ops.permute_dims(x, (1, 0, 2)), NS),
]  # fmt: skip

# tiny caches and chunks: row tiles of 8 (37 floats a row), parallel tasks of 64 elements
SMALL = CPUTarget(l2_bytes=8 * 37 * 4, parallel_chunk=64)
TARGETS = {"host": CPUTarget(), "small": SMALL}


def schedule_module(mod, target: CPUTarget):
    for name, f in mod.items():
        if isinstance(f, tir.PrimFunc):
            mod = mod.with_function(name, schedule_cpu(f, target))
    return mod


@pytest.fixture(scope="module")
def compiled():
    """Every case of BIG (both targets) and of the legalize suite (host), lowered and scheduled;
    all their kernels in one LLVM module."""
    built = {}
    for key, cases in (("host", BIG), ("small", BIG), ("ops", CASES)):
        for case in cases:
            mod = build(case)
            lowered = legalize(mod)
            built[key, case.id] = (mod, lowered, schedule_module(lowered, TARGETS.get(key, CPUTarget())))
    kernels = {
        f"{key}__{cid.replace('-', '_')}__{name}": f
        for (key, cid), (_, _, scheduled) in built.items()
        for name, f in scheduled.items()
        if isinstance(f, tir.PrimFunc)
    }
    # unoptimized keeps this fast; the decoder layer of test_schedule_pass runs at -O3
    return built, codegen(kernels, LLVMOptions(opt_level=0))


def _check(case: Case, key: str, compiled) -> None:
    built, km = compiled
    mod, lowered, scheduled = built[key, case.id]
    program, constants = lower_to_vm(scheduled)
    prefix = f"{key}__{case.id.replace('-', '_')}__"
    mine = {k: km[prefix + k] for k, f in scheduled.items() if isinstance(f, tir.PrimFunc)}
    vm = VirtualMachine(json.loads(json.dumps(program)), mine, {}, constants)
    rng = np.random.default_rng(0)
    for sizes in case.sizes:
        args = _inputs(case, sizes, rng)
        expected = run(lowered, "main", *args)
        for how, got in (("interpreted", run(scheduled, "main", *args)), ("compiled", vm["main"](*args))):
            for e, g in zip(expected, got):
                for x, y in zip(e if isinstance(e, tuple) else (e,), g if isinstance(g, tuple) else (g,)):
                    np.testing.assert_allclose(
                        y, x, rtol=case.rtol, atol=case.rtol, err_msg=f"{case.id} {how} {key} {sizes}"
                    )


@pytest.mark.parametrize("key", ["host", "small"])
@pytest.mark.parametrize("case", BIG, ids=[c.id for c in BIG])
def test_scheduled_kernels_run_equal(case, key, compiled):
    _check(case, key, compiled)


def test_every_lowered_op_scheduled_runs_equal(compiled):
    for case in CASES:
        _check(case, "ops", compiled)


def _kinds(f: tir.PrimFunc) -> dict[str, str]:
    return {lp.var.name: lp.kind for lp in loops(f.body)}


def _scheduled(case_id: str, compiled, key="host") -> tir.PrimFunc:
    built, _ = compiled
    (f,) = [f for f in built[key, case_id][2].functions().values() if isinstance(f, tir.PrimFunc)]
    return f


def test_linear_is_blocked_parallel_over_weight_rows_and_vectorized_along_k(compiled):
    kinds = _kinds(_scheduled("linear", compiled))
    assert [k for k, v in kinds.items() if v == "parallel"] == ["i1_o"]
    assert kinds["k_v"] == "vectorized" and kinds["k_o"] == "serial"
    assert {"i0_w_o", "i0_w_t", "i1_t"} <= kinds.keys()  # row blocks, a tail of rows, a tail of W rows
    assert sum(v == "unrolled" for v in kinds.values()) >= 6  # the register block's loops
    # rows of X in tiles that fit the cache: 8 rows of 37 floats in SMALL's
    for key, tiles in (("host", 1), ("small", 13)):
        (tile_loop,) = [lp for lp in loops(_scheduled("linear", compiled, key).body) if lp.var.name == "i0_c"]
        assert evaluate(tile_loop.extent, {"n": 100}) == tiles


def test_matvec_blocks_only_weight_rows(compiled):
    kinds = _kinds(_scheduled("linear-one-row", compiled))
    assert kinds["i1_o"] == "parallel" and kinds["k_v"] == "vectorized"
    assert "i0_o" not in kinds


def test_matmul_with_columns_contiguous_vectorizes_columns(compiled):
    kinds = _kinds(_scheduled("matmul", compiled))
    assert kinds["i1_o"] == "parallel"
    assert [k for k, v in kinds.items() if v == "vectorized" and k.startswith("i1_v")]


def test_row_reductions_accumulate_in_lanes_rows_in_parallel(compiled):
    f = _scheduled("rms_norm", compiled)
    kinds = _kinds(f)
    assert list(kinds.values()).count("parallel") == 2  # the statistics, then the scaling
    assert "vectorized" in kinds.values() and any(k.endswith("_v") for k in kinds)


def test_elementwise_vectorizes_the_contiguous_axis(compiled):
    kinds = _kinds(_scheduled("add", compiled))
    assert kinds["i1"] == "vectorized" and "parallel" in kinds.values()
    one_d = _kinds(_scheduled("silu-1d", compiled, "small"))
    assert one_d["i0_o"] == "parallel" and one_d["i0_i"] == one_d["i0_t"] == "vectorized"


def test_decode_sized_kernels_run_as_one_task():
    """Tasks take at least `parallel_chunk` elements: at n = 1 the parallel loop has one
    iteration (no dispatch), at n = 100 several."""
    mod = legalize(build(BIG[13]))  # add (n, 37)
    (f,) = [f for f in mod.functions().values() if isinstance(f, tir.PrimFunc)]
    g = schedule_cpu(f, CPUTarget(parallel_chunk=37 * 8))
    (par,) = [lp for lp in loops(g.body) if lp.kind == "parallel"]
    assert evaluate(par.extent, {"n": 1}) == 1 and evaluate(par.extent, {"n": 100}) == 13


def test_a_scheduled_program_is_left_alone():
    mod = legalize(build(BIG[0]))
    (f,) = [f for f in mod.functions().values() if isinstance(f, tir.PrimFunc)]
    g = schedule_cpu(f)
    assert g != f and schedule_cpu(g) == g
    marked = replace(f, attrs={"scheduled": True})  # a hand-written kernel says so
    assert schedule_cpu(marked) == marked
