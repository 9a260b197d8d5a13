"""The golden test of the graph IR: a Llama decoder layer built with the BlockBuilder over a
symbolic sequence length n, checked, and run by the interpreter, against transformers' own
LlamaDecoderLayer (torch, CPU) with the same random weights."""

import numpy as np
import pytest

# The oracle; imported here so that its import time (seconds) is not charged to the first test.
import transformers.models.llama.modeling_llama  # noqa: F401

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import wellformed
from llm_deploy.compiler.interpreter import run
from llm_deploy.compiler.struct_info import tensor
from tests.compiler.llama_layer import (
    LayerConfig,
    build_decoder_layer,
    hf_decoder_layer_forward,
    random_weights,
)

CONFIG = LayerConfig(hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128)
LLAMA3 = LayerConfig(
    hidden_size=64,
    num_heads=2,
    num_kv_heads=1,
    intermediate_size=96,
    rope_theta=500000.0,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    },
)


@pytest.fixture(scope="module")
def layer():
    mod = build_decoder_layer(CONFIG)
    wellformed.check(mod)
    return mod, random_weights(CONFIG, seed=0)


def test_the_layer_is_symbolic_in_n(layer):
    mod, _ = layer
    func = mod["decoder_layer"]
    n = S.var("n")
    assert func.params[0].info == tensor((n, 64))
    assert func.ret_info == tensor((n, 64))
    attn = next(b.var for block in func.body.blocks for b in block.bindings if b.var.name == "attn")
    assert attn.info == tensor((n, 4, 16))


@pytest.mark.parametrize("n", [1, 5, 17, 128])
def test_decoder_layer_matches_transformers(layer, n):
    mod, weights = layer
    x = np.random.default_rng(n).standard_normal((n, CONFIG.hidden_size)).astype("float32")
    got = run(mod, "decoder_layer", x, *weights.values())
    want = hf_decoder_layer_forward(CONFIG, weights, x)
    assert got.shape == (n, CONFIG.hidden_size)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_decoder_layer_with_llama3_rope_scaling_matches_transformers():
    mod = build_decoder_layer(LLAMA3)
    weights = random_weights(LLAMA3, seed=1)
    x = np.random.default_rng(7).standard_normal((40, LLAMA3.hidden_size)).astype("float32")
    np.testing.assert_allclose(
        run(mod, "decoder_layer", x, *weights.values()),
        hf_decoder_layer_forward(LLAMA3, weights, x),
        rtol=1e-4,
        atol=1e-4,
    )
