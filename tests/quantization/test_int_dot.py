"""int8-activation products with GGUF blocks (`int_dot_linear`): the numpy meaning, the loop-nest
reference the tir interpreter runs, and the LLVM microkernel (AVX2 and the portable path), on
random blocks and at several row counts of the symbolic dim; and the pass that introduces the op.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm_deploy.compiler import struct_info as SI
from llm_deploy.compiler import tir, tir_interpreter
from llm_deploy.compiler.builder import BlockBuilder
from llm_deploy.compiler.expr import Tuple, Var
from llm_deploy.compiler.interpreter import run
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.ops.quantized import dequantize_linear, int_dot_linear
from llm_deploy.compiler.ops.registry import ShapeError
from llm_deploy.compiler.passes.int_dot import merge_int_dot, use_int_dot
from llm_deploy.compiler.passes.legalize import legalize
from llm_deploy.compiler.shape import var
from llm_deploy.compiler.vm_codegen import lower_to_vm
from llm_deploy.quantization import GGMLPacking, pack_ggml
from llm_deploy.quantization.int_dot import int_dot_linear as reference
from llm_deploy.quantization.int_dot import quantize_activations
from llm_deploy.runtime.vm import VirtualMachine
from llm_deploy.targets.llvm.codegen import LLVMOptions, codegen
from llm_deploy.targets.llvm.host import host
from tests.quantization.blocks import ggml_rows, gguf_dequantize

TYPES = ("Q4_0", "Q4_1", "Q8_0")
N, K = 22, 320  # 10 blocks per row: a group of 8 scales as vectors, 2 as scalars
K_ODD = 352  # 11 blocks: 4-bit rows go in pairs of blocks, the last one alone
ROWS = (1, 2, 5)


def _case(ggml_type: str, n: int = N, k: int = K, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = ggml_rows(ggml_type, rng.standard_normal((n, k)).astype(np.float32), rng)
    return pack_ggml(GGMLPacking(ggml_type), rows, (n, k)), gguf_dequantize(ggml_type, rows)


def _x(rows: int, k: int = K, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, k)).astype(np.float32)
    x[0, :32] = 0.0  # a block of zeros: scale 0, no division by it
    return x


def test_activation_quantization_is_per_block_int8():
    x = _x(3)
    q, d, s = quantize_activations(x)
    assert q.min() >= -127 and q.max() <= 127 and d[0, 0] == 0 and (q[0, :32] == 0).all()
    back = (q.reshape(3, -1, 32) * d[..., None]).reshape(3, -1)
    assert np.abs(back - x).max() <= d.max() / 2 + 1e-6  # within half a step
    assert np.allclose(s, d * q.reshape(3, -1, 32).sum(-1))


@pytest.mark.parametrize("ggml_type", TYPES)
def test_reference_is_close_to_the_exact_product(ggml_type):
    arrays, w = _case(ggml_type)
    x = _x(4)
    exact = x @ w.T
    got = reference(x, ggml_type, arrays)
    # Only x is rounded (to 8 bits per block): the error is a small fraction of the output scale.
    assert np.abs(got - exact).max() < 0.02 * np.abs(exact).max()
    assert not np.array_equal(got, exact)


def _module(ggml_type: str, fn=int_dot_linear, k: int = K):
    n = var("n")
    specs = GGMLPacking(ggml_type).arrays((N, k))
    x = Var("x", SI.tensor((n, k), "float32"))
    arrays = [Var(f"w_{s.suffix}", SI.tensor(s.shape, s.dtype)) for s in specs]
    bb = BlockBuilder()
    with bb.function("decode", [x, *arrays], attrs={"bounds": {"n": (1, 64)}}):
        with bb.dataflow():
            y = bb.emit_output(fn(x, arrays, f"ggml:{ggml_type}", (N, k)))
        bb.emit_func_output(y)
    return bb.get()


@pytest.mark.parametrize("ggml_type", TYPES)
def test_graph_interpreter_and_loop_reference_agree(ggml_type):
    arrays, _ = _case(ggml_type)
    mod = _module(ggml_type)
    legal = legalize(mod)
    ((name, func),) = [(k, f) for k, f in legal.items() if isinstance(f, tir.PrimFunc)]
    assert func.attrs["microkernel"] == f"q8dot:{ggml_type}"
    for rows in ROWS:
        x = _x(rows)
        want = reference(x, ggml_type, arrays)
        assert np.array_equal(run(mod, "decode", x, *arrays.values()), want)
        out = np.zeros((rows, N), np.float32)
        tir_interpreter.run(func, x, *arrays.values(), out)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.fixture(scope="module")
def compiled():
    """Every type's kernel, through the AVX2 path where the host has it and the portable one."""
    kernels = {}
    mods = {}
    for t in TYPES:
        for k in (K, K_ODD):
            mods[t, k] = legalize(_module(t, k=k))
            funcs = mods[t, k].items()
            kernels.update({f"{t}_{k}__{name}": f for name, f in funcs if isinstance(f, tir.PrimFunc)})
    portable = LLVMOptions(features=",".join(f for f in host().features.split(",") if "avx2" not in f))
    return mods, {"host": codegen(kernels, LLVMOptions()), "portable": codegen(kernels, portable)}


@pytest.mark.parametrize("ggml_type", TYPES)
@pytest.mark.parametrize("path", ["host", "portable"])
@pytest.mark.parametrize("k", [K, K_ODD])
def test_microkernel_matches_the_reference(ggml_type, path, k, compiled):
    mods, modules = compiled
    km = modules[path]
    mod = mods[ggml_type, k]
    program, constants = lower_to_vm(mod)
    mine = {name: km[f"{ggml_type}_{k}__{name}"] for name, f in mod.items() if isinstance(f, tir.PrimFunc)}
    vm = VirtualMachine(json.loads(json.dumps(program)), mine, {}, constants)
    arrays, _ = _case(ggml_type, k=k)
    for rows in ROWS:
        x = _x(rows, k=k, seed=rows)
        want = reference(x, ggml_type, arrays)
        got = vm["decode"](x, *arrays.values())
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6 * np.abs(want).max())


def test_host_path_uses_the_integer_multiply_add(compiled):
    _, modules = compiled
    if "avx2" not in host().features:
        pytest.fail("this test expects an AVX2 host (the project's machines have it)")
    assert "llvm.x86.avx2.pmadd.ub.sw" in modules["host"].optimized_ir
    assert "llvm.x86.avx2.pmadd.ub.sw" not in modules["portable"].optimized_ir


def test_pass_rewrites_decode_only_and_can_be_turned_off():
    mod = _module("Q4_1", dequantize_linear)
    both = IRModule({"decode": mod["decode"], "prefill": mod["decode"]}, {})
    out = use_int_dot(both)
    assert "int_dot_linear" in str(out["decode"]) and "int_dot_linear" not in str(out["prefill"])
    off = both.with_attrs(int_dot=False)
    assert use_int_dot(off) is off
    # Formats without an integer kernel stay as they are.
    f16 = _module("F16", dequantize_linear)
    assert use_int_dot(f16) is f16


def test_op_refuses_packings_without_an_integer_kernel():
    with pytest.raises(ShapeError, match="no integer kernel"):
        _module("Q4_K")


def _shared_input_module():
    """q/k/v-like products of one x (two shapes), and one of another input."""
    n = var("n")
    x = Var("x", SI.tensor((n, K), "float32"))
    y = Var("y", SI.tensor((n, K), "float32"))
    shapes = [(N, K), (8, K), (8, K), (N, K)]
    weights = [
        [Var(f"w{i}_{s.suffix}", SI.tensor(s.shape, s.dtype)) for s in GGMLPacking("Q4_1").arrays(sh)]
        for i, sh in enumerate(shapes)
    ]
    bb = BlockBuilder()
    with bb.function("decode", [x, y, *(a for w in weights for a in w)], attrs={"bounds": {"n": (1, 64)}}):
        with bb.dataflow():
            outs = [
                bb.emit(int_dot_linear(x if i < 3 else y, w, "ggml:Q4_1", sh))
                for i, (w, sh) in enumerate(zip(weights, shapes))
            ]
            out = bb.emit_output(Tuple(tuple(outs)))
        bb.emit_func_output(out)
    return bb.get(), shapes


def test_products_of_one_input_merge_into_one_kernel():
    mod, shapes = _shared_input_module()
    merged = merge_int_dot(legalize(mod))
    kernels = {k: f for k, f in merged.items() if isinstance(f, tir.PrimFunc)}
    calls = [i for i in lower_to_vm(merged)[0]["functions"]["decode"]["instrs"] if i["op"] == "call_tir"]
    assert len(calls) == 2  # x's three products in one launch, y's alone
    (multi,) = [f for f in kernels.values() if len(f.buffers) == 1 + 3 * 4]
    assert multi.attrs["microkernel"] == "q8dot:Q4_1"

    rng = np.random.default_rng(3)
    arrays = []
    for sh in shapes:
        rows = ggml_rows("Q4_1", rng.standard_normal(sh).astype(np.float32), rng)
        arrays += list(pack_ggml(GGMLPacking("Q4_1"), rows, sh).values())
    km = codegen(kernels, LLVMOptions())
    program, constants = lower_to_vm(merged)
    vm = VirtualMachine(json.loads(json.dumps(program)), {k: km[k] for k in kernels}, {}, constants)
    for rows in ROWS:
        x, y = _x(rows, seed=rows), _x(rows, seed=10 + rows)
        want = run(mod, "decode", x, y, *arrays)
        by_interpreter = run(merged, "decode", x, y, *arrays)
        compiled = vm["decode"](x, y, *arrays)
        for w, a, c in zip(want, by_interpreter, compiled, strict=True):
            np.testing.assert_allclose(a, w, rtol=1e-5, atol=1e-5 * np.abs(w).max())
            np.testing.assert_allclose(c, w, rtol=1e-5, atol=2e-6 * np.abs(w).max())
