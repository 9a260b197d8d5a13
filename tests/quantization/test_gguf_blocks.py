"""GGUF blocks used as they are: splitting rows into field arrays keeps every bit, and the numpy
reference of the kernels decodes them exactly as gguf-py does."""

from __future__ import annotations

import numpy as np
import pytest

from llm_deploy.quantization import GGMLPacking, QuantizationError, pack_ggml, unpack
from llm_deploy.quantization.gguf_blocks import GGML_LAYOUTS, split_blocks, unpack_k_scales
from tests.quantization.blocks import GGML_TYPES, ggml_rows, gguf_dequantize


@pytest.mark.parametrize("ggml_type", GGML_TYPES)
def test_split_blocks_decode_exactly_as_gguf(ggml_type):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 512)).astype(np.float32)
    rows = ggml_rows(ggml_type, w, rng)
    arrays = pack_ggml(GGMLPacking(ggml_type), rows, w.shape)
    np.testing.assert_array_equal(
        unpack(GGMLPacking(ggml_type), arrays, w.shape), gguf_dequantize(ggml_type, rows)
    )


@pytest.mark.parametrize("ggml_type", ["Q4_0", "Q4_1", "Q8_0", "Q5_K", "Q6_K"])
def test_split_keeps_every_byte_of_the_blocks(ggml_type):
    """Only the K-quants' packed 6-bit scales are re-laid (unpacked); every other byte survives."""
    rng = np.random.default_rng(2)
    rows = ggml_rows(ggml_type, rng.standard_normal((3, 256)).astype(np.float32), rng)
    layout = GGML_LAYOUTS[ggml_type]
    arrays = split_blocks(ggml_type, rows, (3, 256))
    blocks = rows.reshape(3, -1, layout.nbytes)
    for f in layout.fields:
        if f.name in arrays:
            size = f.count * np.dtype(f.dtype).itemsize
            got = arrays[f.name].reshape(3, -1, f.count).view(np.uint8).reshape(3, -1, size)
            np.testing.assert_array_equal(got, blocks[:, :, f.offset : f.offset + size])


def test_k_scales_unpack_as_gguf_does():
    import gguf

    rng = np.random.default_rng(3)
    packed = rng.integers(0, 256, (50, 12), dtype=np.uint8)
    sc, mn = unpack_k_scales(packed)
    ref_sc, ref_mn = gguf.quants.Q4_K.get_scale_min(packed)
    np.testing.assert_array_equal(sc, ref_sc)
    np.testing.assert_array_equal(mn, ref_mn)
    assert sc.max() < 64 and mn.max() < 64


def test_rows_of_the_wrong_size_are_refused():
    with pytest.raises(ValueError, match=r"Q4_1 rows of a \(2, 64\) weight: expected uint8 \(2, 40\)"):
        split_blocks("Q4_1", np.zeros((2, 36), np.uint8), (2, 64))
    with pytest.raises(QuantizationError, match="not a multiple of the Q8_0 block 32"):
        pack_ggml(GGMLPacking("Q8_0"), np.zeros((2, 34), np.uint8), (2, 48))


@pytest.mark.slow
def test_the_shipped_model_file_decodes_exactly(smollm2):
    """Every quantized tensor of the default model's GGUF (Q4_1, Q8_0) through our split."""
    weights = smollm2.weights
    seen = set()
    for name in ("embed_tokens", "layers.0.q_proj", "layers.7.down_proj", "layers.29.k_proj"):
        raw = weights.raw(name)
        packing = GGMLPacking(raw.ggml_type.name)
        seen.add(packing.ggml_type)
        got = unpack(packing, pack_ggml(packing, raw.data, raw.shape), raw.shape)
        np.testing.assert_array_equal(got, weights[name])
    assert seen == {"Q4_1", "Q8_0"}
