"""The fused kernels, compiled for the CPU, against the numpy reference of each packing.

Every packing's dequantize_linear (one row of x: dequantized in registers; several rows: a row
block dequantized once) and dequantize_take run on the VM next to numpy on the same packed
arrays; the GGUF ones also against gguf-py's own decoding of the blocks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm_deploy.compiler import struct_info as SI
from llm_deploy.compiler import tir
from llm_deploy.compiler.builder import BlockBuilder
from llm_deploy.compiler.expr import Tuple, Var
from llm_deploy.compiler.interpreter import run
from llm_deploy.compiler.ops.quantized import dequantize_linear, dequantize_take
from llm_deploy.compiler.passes.legalize import legalize
from llm_deploy.compiler.shape import var
from llm_deploy.compiler.vm_codegen import lower_to_vm
from llm_deploy.quantization import QUANTIZATIONS, GGMLPacking, pack, pack_ggml, unpack
from llm_deploy.runtime.vm import VirtualMachine
from llm_deploy.targets.llvm.codegen import LLVMOptions, codegen
from tests.quantization.blocks import GGML_TYPES, ggml_rows, gguf_dequantize

N, K = 20, 512  # 20 rows: blocks of 4; K holds two K-quant super-blocks
ROWS = (1, 3, 9)


def _cases():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((N, K)).astype(np.float32)
    cases = {}
    for name in ("q0f16", "q4f16_1", "q4f32_1", "q8f16_1"):
        p = QUANTIZATIONS[name].packing
        cases[name] = (p, pack(p, w), None)
    for t in GGML_TYPES:
        rows = ggml_rows(t, w, rng)
        cases[t] = (GGMLPacking(t), pack_ggml(GGMLPacking(t), rows, (N, K)), gguf_dequantize(t, rows))
    return cases


CASES = _cases()


def _module(packing):
    n = var("n")
    specs = packing.arrays((N, K))
    x = Var("x", SI.tensor((n, K), "float32"))
    ids = Var("ids", SI.tensor((n,), "int32"))
    arrays = [Var(f"w_{s.suffix}", SI.tensor(s.shape, s.dtype)) for s in specs]
    bb = BlockBuilder()
    with bb.function("main", [x, ids, *arrays], attrs={"bounds": {"n": (1, 64)}}):
        with bb.dataflow():
            y = bb.emit(dequantize_linear(x, arrays, packing.key, (N, K)))
            e = bb.emit(dequantize_take(ids, arrays, packing.key, (N, K)))
            out = bb.emit_output(Tuple((y, e)))
        bb.emit_func_output(out)
    return bb.get()


@pytest.fixture(scope="module")
def legalized():
    return {name: legalize(_module(p)) for name, (p, _, _) in CASES.items()}


@pytest.fixture(scope="module")
def compiled(legalized):
    """All the cases' kernels compiled in one LLVM module (about 10 s: the tests using it are slow)."""
    mods = legalized
    kernels = {
        f"{name}__{k}": f for name, mod in mods.items() for k, f in mod.items() if isinstance(f, tir.PrimFunc)
    }
    return mods, codegen(kernels, LLVMOptions())


def _vm(name, mods, km):
    mod = mods[name]
    program, constants = lower_to_vm(mod)
    mine = {k: km[f"{name}__{k}"] for k, f in mod.items() if isinstance(f, tir.PrimFunc)}
    return VirtualMachine(json.loads(json.dumps(program)), mine, {}, constants)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_compiled_kernels_match_numpy(name, compiled):
    mods, km = compiled
    packing, arrays, _ = CASES[name]
    vm = _vm(name, mods, km)
    w = unpack(packing, arrays, (N, K))
    rng = np.random.default_rng(1)
    for n in ROWS:
        x = rng.standard_normal((n, K)).astype(np.float32)
        ids = rng.integers(0, N, n).astype(np.int32)
        y, e = vm["main"](x, ids, *arrays.values())
        np.testing.assert_allclose(y, x @ w.T, rtol=1e-5, atol=1e-5 * np.abs(w).max() * np.sqrt(K))
        np.testing.assert_allclose(e, w[ids], rtol=1e-6, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", GGML_TYPES)
def test_gguf_kernels_decode_as_gguf_does(name, compiled):
    """The take kernel reads every row: what it returns is the kernels' decoding of the blocks."""
    mods, km = compiled
    packing, arrays, reference = CASES[name]
    _, rows = _vm(name, mods, km)["main"](
        np.zeros((N, K), np.float32), np.arange(N, dtype=np.int32), *arrays.values()
    )
    np.testing.assert_allclose(rows, reference, rtol=1e-6, atol=0)  # fused multiply-add: at most an ulp


@pytest.mark.slow
def test_kernels_vectorize_every_loop_they_mark(compiled):
    """No vectorized loop falls back to scalar code (no gathers, no lane-varying branches)."""
    _, km = compiled
    assert km.notes == []


@pytest.mark.parametrize("name", ["q4f16_1", "Q4_K"])
def test_the_interpreter_and_the_tir_interpreter_agree(name, legalized):
    """The graph-level op (numpy) and its tensor programs (tir interpreter) on the same inputs:
    both paths of the kernel (one row of x, several)."""
    mods = legalized
    packing, arrays, _ = CASES[name]
    rng = np.random.default_rng(2)
    for n in (1, 4):
        x = rng.standard_normal((n, K)).astype(np.float32)
        ids = rng.integers(0, N, n).astype(np.int32)
        want = run(_module(packing), "main", x, ids, *arrays.values())
        got = run(mods[name], "main", x, ids, *arrays.values())
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(got[1], want[1])


def test_lowered_kernels_round_trip_through_text(legalized):
    from llm_deploy.compiler.testing import assert_roundtrip

    mods = legalized
    assert_roundtrip(mods["Q4_1"])
    assert_roundtrip(mods["q8f16_1"])
