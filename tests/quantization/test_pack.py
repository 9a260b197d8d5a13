"""Packing round trips against a plain-loop numpy reference of each format (MLC-LLM's rules)."""

from __future__ import annotations

import numpy as np
import pytest

from llm_deploy.quantization import QUANTIZATIONS, FloatPacking, GroupPacking, QuantizationError, pack, unpack
from llm_deploy.quantization.pack import pack_bits, unpack_bits


def reference_group_quantize(w: np.ndarray, bits: int, group: int, scale_dtype: str):
    """Element by element: scale = max|group| / max_int (stored dtype), code = clip(round(w/scale) + max_int)."""
    max_int = 2 ** (bits - 1) - 1
    n, k = w.shape
    codes = np.zeros((n, k), np.int64)
    scales = np.zeros((n, k // group), scale_dtype)
    for i in range(n):
        for g in range(k // group):
            vals = w[i, g * group : (g + 1) * group].astype(np.float32)
            s = np.array(np.abs(vals).max() / max_int).astype(scale_dtype)
            scales[i, g] = s
            for t, v in enumerate(vals):
                q = 0 if s == 0 else int(np.rint(v / np.float32(s)))
                codes[i, g * group + t] = min(max(q + max_int, 0), 2 * max_int)
    words = np.zeros((n, k * bits // 32), np.uint32)
    for i in range(n):
        for j in range(k):
            words[i, j * bits // 32] |= np.uint32(codes[i, j]) << np.uint32((j % (32 // bits)) * bits)
    return (
        words,
        scales,
        (codes - max_int).astype(np.float32) * scales.astype(np.float32).repeat(group, axis=1),
    )


@pytest.mark.parametrize("name", ["q4f16_1", "q4f32_1", "q8f16_1"])
def test_group_formats_pack_as_the_reference(name):
    p = QUANTIZATIONS[name].packing
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((6, 128)) * rng.uniform(0.01, 3, (6, 1))).astype(np.float32)
    w[2, 32:64] = 0.0  # an all-zero group: scale 0, every code max_int
    words, scales, values = reference_group_quantize(w, p.bits, p.group_size, p.scale_dtype)
    packed = pack(p, w)
    np.testing.assert_array_equal(packed["qweight"], words)
    np.testing.assert_array_equal(packed["scale"], scales)
    got = unpack(p, packed, w.shape)
    np.testing.assert_array_equal(got, values)
    # round trip: each value within half a step of its group's scale (the max hits exactly)
    step = np.repeat(packed["scale"].astype(np.float32), p.group_size, axis=1)
    assert np.all(np.abs(got - w) <= 0.5 * step * (1 + 1e-3) + 1e-7)
    assert np.all(got[2, 32:64] == 0)


def test_pack_then_unpack_is_the_identity_on_representable_weights():
    """Weights already on a format's grid come back bit for bit."""
    p = GroupPacking(4, 32, "float16")
    rng = np.random.default_rng(1)
    scale = rng.uniform(0.01, 1, (4, 2)).astype(np.float16)
    codes = rng.integers(-7, 8, (4, 64))
    codes[:, 0] = 7  # the group max sets the scale
    codes[:, 32] = -7
    w = codes * np.repeat(scale.astype(np.float32), 32, axis=1)
    packed = pack(p, w.astype(np.float32))
    np.testing.assert_array_equal(packed["scale"], scale)
    np.testing.assert_array_equal(unpack(p, packed, w.shape), w)


def test_bits_sit_in_mlc_llm_order():
    """Value j of a word at bits [bits*j, bits*(j+1))."""
    q = np.arange(16, dtype=np.uint32).reshape(1, 16) % 16
    assert pack_bits(q, 4)[0, 0] == 0x76543210 and pack_bits(q, 4)[0, 1] == 0xFEDCBA98
    assert pack_bits(np.array([[1, 2, 3, 255]]), 8)[0, 0] == 0xFF030201
    rng = np.random.default_rng(2)
    for bits in (4, 8):
        q = rng.integers(0, 2**bits, (3, 64)).astype(np.uint32)
        np.testing.assert_array_equal(unpack_bits(pack_bits(q, bits), bits), q)


def test_float16_is_a_cast():
    w = np.random.default_rng(3).standard_normal((5, 64)).astype(np.float32)
    packed = pack(FloatPacking("float16"), w)
    assert packed["weight"].dtype == np.float16
    np.testing.assert_array_equal(
        unpack(FloatPacking("float16"), packed, w.shape), w.astype(np.float16).astype(np.float32)
    )


def test_pack_refuses_what_it_cannot_hold():
    with pytest.raises(QuantizationError, match="its reduction dim 40"):
        pack(GroupPacking(4, 32), np.zeros((4, 40), np.float32))
    with pytest.raises(QuantizationError, match="packs raw blocks"):
        from llm_deploy.quantization import GGMLPacking

        pack(GGMLPacking("Q4_1"), np.zeros((4, 64), np.float32))
