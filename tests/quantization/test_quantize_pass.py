"""The quantize pass: weight params become packed arrays, linear/take become fused kernels."""

from __future__ import annotations

import numpy as np
import pytest

from llm_deploy.compiler import wellformed
from llm_deploy.compiler.expr import Function, VarBinding
from llm_deploy.compiler.functor import ExprVisitor
from llm_deploy.compiler.interpreter import run
from llm_deploy.compiler.parser import parse
from llm_deploy.compiler.passes.quantize import quantize
from llm_deploy.compiler.struct_info import TensorInfo
from llm_deploy.compiler.testing import assert_roundtrip, assert_structural_equal
from llm_deploy.quantization import QUANTIZATIONS, QuantizationError, pack, packing_from_key, unpack

BEFORE = """
@module
class Module:
    @function
    def main(ids: Tensor[(n,), "int32"], embed: Tensor[(100, 64), "float32"], proj: Tensor[(32, 64), "float32"],
             odd: Tensor[(32, 48), "float32"], norm: Tensor[(64,), "float32"]) -> Tensor[(n, 100), "float32"]:
        with dataflow():
            x: Tensor[(n, 64), "float32"] = take(embed, ids, axis=0)
            h: Tensor[(n, 64), "float32"] = rms_norm(x, norm, eps=1e-05, axis=-1)
            y: Tensor[(n, 32), "float32"] = linear(h, proj, out_dtype=None)
            z: Tensor[(n, 48), "float32"] = matmul(y, odd, out_dtype=None)
            logits: Tensor[(n, 100), "float32"] = linear(x, embed, out_dtype=None)
            output(logits)
        return logits
"""

# The tied table serves the take and the LM head from the same packed arrays; `odd` is used by
# a matmul (not as a [out, in] weight) and `norm` is 1-d: both stay as they are.
EXPECTED = """
@module
class Module:
    attrs(quantization={"name": "q4f16_1", "params": {
        "embed": {"packing": "group:4:32:float16", "shape": (100, 64), "arrays": ("embed.qweight", "embed.scale")},
        "proj": {"packing": "group:4:32:float16", "shape": (32, 64), "arrays": ("proj.qweight", "proj.scale")}}})

    @function
    def main(ids: Tensor[(n,), "int32"], embed_qweight: Tensor[(100, 8), "uint32"], embed_scale: Tensor[(100, 2), "float16"],
             proj_qweight: Tensor[(32, 8), "uint32"], proj_scale: Tensor[(32, 2), "float16"],
             odd: Tensor[(32, 48), "float32"], norm: Tensor[(64,), "float32"]) -> Tensor[(n, 100), "float32"]:
        with dataflow():
            x: Tensor[(n, 64), "float32"] = dequantize_take(ids, embed_qweight, embed_scale, packing="group:4:32:float16", shape=(100, 64))
            h: Tensor[(n, 64), "float32"] = rms_norm(x, norm, eps=1e-05, axis=-1)
            y: Tensor[(n, 32), "float32"] = dequantize_linear(h, proj_qweight, proj_scale, packing="group:4:32:float16", shape=(32, 64))
            z: Tensor[(n, 48), "float32"] = matmul(y, odd, out_dtype=None)
            logits: Tensor[(n, 100), "float32"] = dequantize_linear(x, embed_qweight, embed_scale, packing="group:4:32:float16", shape=(100, 64))
            output(logits)
        return logits
"""


def test_weights_become_packed_params_and_fused_ops():
    after = quantize(parse(BEFORE), "q4f16_1")
    assert_structural_equal(after, parse(EXPECTED))
    assert_roundtrip(after)


def test_q0f32_changes_no_function():
    before = parse(BEFORE)
    after = quantize(before, "q0f32")
    assert after["main"] == before["main"]
    assert after.attrs["quantization"]["name"] == "q0f32" and len(after.attrs["quantization"]["params"]) == 0


def test_a_weight_the_groups_do_not_divide_stays_float():
    text = """
@module
class Module:
    @function
    def main(x: Tensor[(n, 48), "float32"], a: Tensor[(16, 48), "float32"], b: Tensor[(16, 64), "float32"],
             x2: Tensor[(n, 64), "float32"]) -> Tensor[(n, 16), "float32"]:
        with dataflow():
            y: Tensor[(n, 16), "float32"] = linear(x, a, out_dtype=None)
            z: Tensor[(n, 16), "float32"] = linear(x2, b, out_dtype=None)
            s: Tensor[(n, 16), "float32"] = add(y, z)
            output(s)
        return s
"""
    after = quantize(parse(text), "q4f16_1")
    assert [p.name for p in after["main"].params] == ["x", "a", "b_qweight", "b_scale", "x2"]
    assert after.attrs["quantization"]["params"].keys() == ["b"]


def test_gguf_takes_each_weights_own_type_and_needs_it():
    after = quantize(parse(BEFORE), "gguf", {"embed": "Q8_0", "proj": "Q4_1"})
    record = after.attrs["quantization"]["params"]
    assert record["embed"]["packing"] == "ggml:Q8_0" and record["proj"]["arrays"] == (
        "proj.d",
        "proj.m",
        "proj.qs",
    )
    with pytest.raises(QuantizationError, match="weight 'proj' has no GGUF type"):
        quantize(parse(BEFORE), "gguf", {"embed": "Q8_0"})


@pytest.mark.parametrize("fmt", ["q0f16", "q4f16_1", "q4f32_1", "q8f16_1"])
def test_quantized_module_computes_the_model_on_dequantized_weights(fmt):
    """Semantics: the rewritten module equals the original run on unpack(pack(W))."""
    before, after = parse(BEFORE), quantize(parse(BEFORE), fmt)
    rng = np.random.default_rng(0)
    shapes = {"embed": (100, 64), "proj": (32, 64)}
    weights = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    odd, norm = rng.standard_normal((32, 48)).astype(np.float32), rng.uniform(0.5, 1.5, 64).astype(np.float32)
    ids = rng.integers(0, 100, 7).astype(np.int32)
    packing = packing_from_key(after.attrs["quantization"]["params"]["embed"]["packing"])
    packed = {k: pack(packing, w) for k, w in weights.items()}
    deq = {k: unpack(packing, packed[k], shapes[k]) for k in shapes}
    want = run(before, "main", ids, deq["embed"], deq["proj"], odd, norm)
    got = run(after, "main", ids, *packed["embed"].values(), *packed["proj"].values(), odd, norm)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


class _FloatWeightBindings(ExprVisitor):
    def __init__(self, weight_shapes):
        self.weight_shapes = weight_shapes
        self.found = []

    def visit_binding(self, binding):
        info = binding.var.info
        if isinstance(binding, VarBinding) and isinstance(info, TensorInfo) and info.shape is not None:
            if info.dtype.startswith("float") and tuple(info.shape) in self.weight_shapes:
                self.found.append(binding.var.name)
        super().visit_binding(binding)


@pytest.fixture(scope="module")
def tiny_model():
    from llm_deploy.models import MODELS
    from llm_deploy.models.llama import build_llama

    return build_llama(MODELS["llama-tiny"].config, "float32", 256)


@pytest.mark.parametrize("fmt", ["q0f16", "q4f16_1", "q8f16_1"])
def test_the_model_holds_no_float_tensor_of_a_weights_shape(tiny_model, fmt):
    from llm_deploy.compiler.passes.legalize import legalize

    after = quantize(tiny_model, fmt)
    wellformed.check(after)
    record = after.attrs["quantization"]["params"]
    weight_shapes = {tuple(record[k]["shape"]) for k in record.keys()}
    assert len(record) == 2 + 7 * 2  # embed_tokens, lm_head, 7 projections per layer
    for name, f in legalize(after).items():
        if isinstance(f, Function):
            assert f.params[0].info.shape[0].name in ("n", "b")  # the symbolic length is kept
            v = _FloatWeightBindings({tuple(_const_shape(s)) for s in weight_shapes})
            v.visit_expr(f)
            assert v.found == [], f"{name}: float bindings of a weight's shape: {v.found}"
            params = list(f.attrs["params"])
            assert params[-1] == ("lm_head.weight" if fmt == "q0f16" else "lm_head.scale")
            assert "layers.0.input_norm" in params
            assert len(params) == len(f.params) - (3 if name == "prefill" else 2)


def _const_shape(shape):
    from llm_deploy.compiler import shape as S

    return tuple(S.IntImm(d) for d in shape)


def test_registry_formats_all_pass_through_the_pass(tiny_model):
    for name in QUANTIZATIONS:
        if name != "gguf":
            quantize(tiny_model, name)
