"""The registry of formats and the packings' array specs: what the pass and the converter share."""

from __future__ import annotations

import pytest

from llm_deploy.models.config import QUANTIZATION_NAMES
from llm_deploy.quantization import (
    QUANTIZATIONS,
    FloatPacking,
    GGMLPacking,
    GroupPacking,
    QuantizationError,
    get_quantization,
    packing_from_key,
)


def test_every_build_option_name_is_registered():
    assert set(QUANTIZATIONS) == set(QUANTIZATION_NAMES)


@pytest.mark.parametrize(
    ("name", "bits", "scale"),
    [("q4f16_1", 4, "float16"), ("q4f32_1", 4, "float32"), ("q8f16_1", 8, "float16")],
)
def test_group_formats_mean_what_mlc_llm_means(name, bits, scale):
    p = QUANTIZATIONS[name].packing
    assert p == GroupPacking(bits, 32, scale)
    assert p.max_int == 2 ** (bits - 1) - 1 and p.per_word == 32 // bits
    specs = p.arrays((576, 1536))
    assert [(s.suffix, s.shape, s.dtype) for s in specs] == [
        ("qweight", (576, 1536 * bits // 32), "uint32"),
        ("scale", (576, 1536 // 32), scale),
    ]


def test_float_formats_and_gguf():
    assert QUANTIZATIONS["q0f32"].packing is None
    assert QUANTIZATIONS["q0f16"].packing == FloatPacking("float16")
    gguf = QUANTIZATIONS["gguf"]
    assert gguf.per_tensor and gguf.packing_of("w", (64, 64), "Q8_0") == GGMLPacking("Q8_0")
    with pytest.raises(QuantizationError, match="has no GGUF type"):
        gguf.packing_of("w", (64, 64))


@pytest.mark.parametrize(
    ("ggml_type", "arrays"),
    [
        ("Q4_0", [("d", (8, 8), "float16"), ("qs", (8, 128), "uint8")]),
        ("Q4_1", [("d", (8, 8), "float16"), ("m", (8, 8), "float16"), ("qs", (8, 128), "uint8")]),
        ("Q8_0", [("d", (8, 8), "float16"), ("qs", (8, 256), "int8")]),
        (
            "Q4_K",
            [
                ("d", (8, 1), "float16"),
                ("dmin", (8, 1), "float16"),
                ("sc", (8, 8), "uint8"),
                ("mn", (8, 8), "uint8"),
                ("qs", (8, 128), "uint8"),
            ],
        ),  # fmt: skip
        (
            "Q6_K",
            [
                ("ql", (8, 128), "uint8"),
                ("qh", (8, 64), "uint8"),
                ("sc", (8, 16), "int8"),
                ("d", (8, 1), "float16"),
            ],
        ),
        ("F16", [("weight", (8, 256), "float16")]),
    ],
)
def test_ggml_packings_split_blocks_into_typed_arrays(ggml_type, arrays):
    specs = GGMLPacking(ggml_type).arrays((8, 256))
    assert [(s.suffix, s.shape, s.dtype) for s in specs] == arrays


@pytest.mark.parametrize(
    "packing",
    [
        FloatPacking("float16"),
        GroupPacking(4, 32, "float16"),
        GroupPacking(8, 64, "float32"),
        GGMLPacking("Q6_K"),
    ],
)
def test_a_packing_is_spelled_by_its_key(packing):
    assert packing_from_key(packing.key) == packing


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: get_quantization("q3f16_0"), "unknown quantization 'q3f16_0'; expected one of q0f32"),
        (lambda: GGMLPacking("IQ2_XS"), "GGUF type IQ2_XS has no kernels here; supported: F32, F16, Q4_0"),
        (lambda: GroupPacking(3), "bits must be 4 or 8, got 3"),
        (lambda: GroupPacking(4, 12), "group_size 12 must be a positive multiple of 8"),
        (lambda: packing_from_key("group:4:x"), "bad packing 'group:4:x'"),
        (lambda: packing_from_key("int4"), "unknown packing 'int4'"),
        (lambda: GroupPacking(4, 32).check((16, 48), "weight w"), r"weight w: its reduction dim 48 \(shape"),
        (lambda: GGMLPacking("Q4_K").check((16, 64), "weight w"), "not a multiple of the Q4_K block 256"),
        (lambda: FloatPacking().check((16,), "weight w"), "packs 2-d"),
    ],
)
def test_errors_name_what_was_expected(make, message):
    with pytest.raises(QuantizationError, match=message):
        make()
