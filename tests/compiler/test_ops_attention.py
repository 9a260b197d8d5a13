"""rope and attention: deduction, and execution against transformers / torch (the model's oracle).

rope is checked against transformers' own LlamaRotaryEmbedding + apply_rotary_pos_emb (plain,
linear and llama3 scaling), attention against torch's scaled_dot_product_attention with GQA.
"""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from llm_deploy.compiler import ops
from llm_deploy.compiler import shape as S
from llm_deploy.compiler.builder import BlockBuilder
from llm_deploy.compiler.expr import Var
from llm_deploy.compiler.interpreter import run
from llm_deploy.compiler.ops import ShapeError
from llm_deploy.compiler.struct_info import PrimInfo, TensorInfo, tensor

n, m, b = S.var("n"), S.var("m"), S.var("b")
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


# -- rope


@pytest.mark.parametrize(
    "x, pos",
    [
        (tensor((n, 4, 16)), PrimInfo("int64", m)),
        (tensor((b, n, 4, 16)), PrimInfo("int64")),
        (tensor((n, 4, 16)), tensor((n,), "int32")),
        (tensor((n, 4, 16)), tensor((m,), "int32")),  # m may equal n: a run-time check
        (TensorInfo(None, "float32", 3), PrimInfo("int64")),
    ],
)
def test_rope_keeps_the_input_info(deduce, x, pos):
    assert deduce(lambda p, q: ops.rope(p, 10000.0, q), x, pos) == x
    assert deduce(lambda p, q: ops.rope(p, 500000.0, q, scaling=LLAMA3), x, pos) == x


@pytest.mark.parametrize(
    "x, pos, message",
    [
        (
            tensor((4, 4, 16)),
            tensor((5,), "int32"),
            r"rope: the positions and x's seq dim must match \(5 vs 4\)",
        ),
        (tensor((n, 4, 16)), tensor((n,), "float32"), "positions must be an integer"),
        (tensor((n, 4, 16)), tensor((n, 1), "int32"), r"the positions must be 1-d \(seq,\)"),
        (tensor((n, 4, 15)), PrimInfo("int64"), "head_dim must be even, got 15"),
        (tensor((n, 64)), PrimInfo("int64"), r"rope: x must be \(seq, heads, head_dim\)"),
    ],
)
def test_rope_conflicts(deduce, x, pos, message):
    with pytest.raises(ShapeError, match=message):
        deduce(lambda p, q: ops.rope(p, 10000.0, q), x, pos)


@pytest.mark.parametrize(
    "scaling, message",
    [
        ({"rope_type": "yarn", "factor": 2.0}, "unsupported rope_type 'yarn'"),
        ({"rope_type": "llama3", "factor": 8.0}, "llama3 scaling needs"),
    ],
)
def test_rope_bad_scaling(scaling, message):
    with pytest.raises(ShapeError, match=message):
        ops.rope(Var("x", tensor((n, 4, 16))), 10000.0, 0, scaling)


def hf_rope(x, positions, theta, scaling):
    """transformers' rotation of x (seq, heads, head_dim) at the given positions."""
    rope = (
        {"rope_type": "default", "rope_theta": theta} if scaling is None else {**scaling, "rope_theta": theta}
    )
    config = LlamaConfig(
        hidden_size=x.shape[1] * x.shape[2], num_attention_heads=x.shape[1], rope_parameters=rope
    )
    xt = torch.from_numpy(x).transpose(0, 1)[None]  # (1, heads, seq, head_dim)
    cos, sin = LlamaRotaryEmbedding(config)(xt, torch.from_numpy(positions)[None])
    out, _ = apply_rotary_pos_emb(xt, xt, cos, sin)
    return out[0].transpose(0, 1).numpy()


def rope_module(x_info, pos_info, theta, scaling):
    x, pos = Var("x", x_info), Var("pos", pos_info)
    bb = BlockBuilder()
    with bb.function("f", [x, pos]):
        out = bb.emit(
            ops.rope(x, theta, pos, scaling)
            if isinstance(pos_info, PrimInfo)
            else ops.rope(x, theta, positions=pos, scaling=scaling)
        )
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize(
    "theta, scaling",
    [(10000.0, None), (500000.0, LLAMA3), (10000.0, {"rope_type": "linear", "factor": 4.0})],
)
@pytest.mark.parametrize("offset", [0, 61])
def test_rope_matches_transformers(rng, theta, scaling, offset):
    x = rng.standard_normal((7, 3, 32)).astype("float32")
    want = hf_rope(x, np.arange(offset, offset + 7), theta, scaling)
    # offset as a symbolic scalar parameter
    got = run(rope_module(tensor((n, 3, 32)), PrimInfo("int64", m), theta, scaling), "f", x, offset)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the same positions as an explicit tensor
    positions = np.arange(offset, offset + 7, dtype="int32")
    got = run(rope_module(tensor((n, 3, 32)), tensor((n,), "int32"), theta, scaling), "f", x, positions)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rope_scaling_changes_the_result(rng):
    # Guards the test above: with these positions llama3 scaling must matter.
    x = rng.standard_normal((7, 3, 32)).astype("float32")
    mod = rope_module(tensor((n, 3, 32)), PrimInfo("int64", m), 500000.0, None)
    scaled = rope_module(tensor((n, 3, 32)), PrimInfo("int64", m), 500000.0, LLAMA3)
    assert np.abs(run(mod, "f", x, 61) - run(scaled, "f", x, 61)).max() > 1e-2


def test_rope_ragged_positions_and_batch(rng):
    x = rng.standard_normal((2, 5, 2, 8)).astype("float32")
    positions = np.array([0, 1, 2, 0, 1], dtype="int64")  # two sequences packed together
    got = run(rope_module(tensor((b, n, 2, 8)), tensor((n,), "int64"), 10000.0, None), "f", x, positions)
    for i in range(2):
        np.testing.assert_allclose(got[i], hf_rope(x[i], positions, 10000.0, None), rtol=1e-5, atol=1e-5)


# -- attention


@pytest.mark.parametrize(
    "q, k, v, expected",
    [
        (tensor((n, 8, 16)), tensor((m, 2, 16)), tensor((m, 2, 32)), tensor((n, 8, 32))),
        (tensor((b, n, 4, 16)), tensor((b, n, 4, 16)), tensor((b, n, 4, 16)), tensor((b, n, 4, 16))),
        (tensor((n, 8, 16)), TensorInfo(None, "float32", 3), tensor((m, 2, 16)), tensor((n, 8, 16))),
        (
            TensorInfo(None, "float32", 3),
            tensor((m, 2, 16)),
            tensor((m, 2, 16)),
            TensorInfo(None, "float32", 3),
        ),
    ],
)
def test_attention_deduction(deduce, q, k, v, expected):
    assert deduce(ops.attention, q, k, v) == expected


@pytest.mark.parametrize(
    "q, k, v, message",
    [
        (
            tensor((n, 6, 16)),
            tensor((m, 4, 16)),
            tensor((m, 4, 16)),
            r"query heads \(6\) must be a multiple of kv heads \(4\)",
        ),
        (
            tensor((n, 8, 16)),
            tensor((m, 2, 8)),
            tensor((m, 2, 16)),
            r"attention: head_dim of q and k must match \(16 vs 8\)",
        ),
        (
            tensor((n, 8, 16)),
            tensor((m, 2, 16)),
            tensor((m + 1, 2, 16)),
            r"seq dims of k and v must match \(m vs m \+ 1\)",
        ),
        (
            tensor((n, 8, 16)),
            tensor((m, 2, 16)),
            tensor((m, 4, 16)),
            r"kv heads of k and v must match \(2 vs 4\)",
        ),
        (
            tensor((2, n, 8, 16)),
            tensor((3, m, 2, 16)),
            tensor((3, m, 2, 16)),
            r"batch of q and k must match \(2 vs 3\)",
        ),
        (tensor((n, 8, 16)), tensor((1, m, 2, 16)), tensor((1, m, 2, 16)), "ranks differ"),
        (tensor((n, 128)), tensor((m, 128)), tensor((m, 128)), r"q must be \(seq, heads, head_dim\)"),
    ],
)
def test_attention_conflicts(deduce, q, k, v, message):
    with pytest.raises(ShapeError, match=message):
        deduce(ops.attention, q, k, v)


def torch_attention(q, k, v, causal, scale):
    """torch SDPA on (seq, heads, dim) inputs; causal aligned to the last keys like ours."""
    n_, m_ = q.shape[0], k.shape[0]
    qt, kt, vt = (torch.from_numpy(t).transpose(0, 1)[None] for t in (q, k, v))
    mask = torch.ones(n_, m_, dtype=torch.bool).tril(m_ - n_) if causal else None
    out = torch.nn.functional.scaled_dot_product_attention(
        qt, kt, vt, attn_mask=mask, scale=scale, enable_gqa=True
    )
    return out[0].transpose(0, 1).numpy()


@pytest.mark.parametrize("n_, m_", [(1, 1), (5, 5), (3, 9), (1, 17)])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_attention_matches_torch(run_op, rng, n_, m_, causal, scale):
    q = rng.standard_normal((n_, 8, 16)).astype("float32")
    k = rng.standard_normal((m_, 2, 16)).astype("float32")
    v = rng.standard_normal((m_, 2, 12)).astype("float32")
    got = run_op(lambda a, b_, c: ops.attention(a, b_, c, causal, scale), q, k, v, symbolic=True)
    np.testing.assert_allclose(got, torch_attention(q, k, v, causal, scale), rtol=1e-5, atol=1e-5)


def test_attention_batched(run_op, rng):
    q = rng.standard_normal((2, 4, 4, 8)).astype("float32")
    k, v = (rng.standard_normal((2, 6, 2, 8)).astype("float32") for _ in range(2))
    got = run_op(ops.attention, q, k, v)
    for i in range(2):
        np.testing.assert_allclose(
            got[i], torch_attention(q[i], k[i], v[i], True, None), rtol=1e-5, atol=1e-5
        )
