"""The converter half of each packing: numpy arrays in, packed arrays out (and back, for tests).

    pack(GroupPacking(4, 32, "float16"), w)   -> {"qweight": uint32 (N, K/8), "scale": float16 (N, K/32)}
    unpack(packing, arrays, shape)             -> float32 (N, K): what the kernels compute

The arrays' names, shapes and dtypes are `packing.arrays(shape)`, exactly (checked).
"""

from __future__ import annotations

import numpy as np

from llm_deploy.quantization import gguf_blocks
from llm_deploy.quantization.formats import (
    FloatPacking,
    GGMLPacking,
    GroupPacking,
    Packing,
    QuantizationError,
)


def group_quantize(w: np.ndarray, p: GroupPacking) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes in [0, 2 * max_int] (N, K) and per-group scales (N, K / group).

    MLC-LLM's rule: scale = max|w| / max_int over the group, q = round(w / scale) + max_int,
    clipped. The scale is rounded to its storage dtype first, so the codes fit the scale the
    kernel will read (a float16 scale can round down and push round(w / scale) past max_int).
    """
    n, k = w.shape
    g = w.astype(np.float32).reshape(n, k // p.group_size, p.group_size)
    scale = (np.abs(g).max(axis=-1) / p.max_int).astype(p.scale_dtype)  # (N, K/group)
    s = scale.astype(np.float32)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(s > 0, np.rint(g / s), 0.0)
    q = np.clip(q + p.max_int, 0, 2 * p.max_int).astype(np.uint32).reshape(n, k)
    return q, scale


def pack_bits(q: np.ndarray, bits: int) -> np.ndarray:
    """(N, K) codes < 2**bits -> (N, K * bits / 32) uint32, value j of a word at bits [bits*j, ...)."""
    n, k = q.shape
    per = 32 // bits
    shifts = (np.arange(per, dtype=np.uint32) * bits).reshape(1, 1, per)
    words = q.astype(np.uint32).reshape(n, k // per, per) << shifts
    return np.bitwise_or.reduce(words, axis=-1)


def unpack_bits(words: np.ndarray, bits: int) -> np.ndarray:
    n, w = words.shape
    per = 32 // bits
    shifts = (np.arange(per, dtype=np.uint32) * bits).reshape(1, 1, per)
    return ((words[..., None] >> shifts) & np.uint32(2**bits - 1)).reshape(n, w * per)


def pack(packing: Packing, w: np.ndarray) -> dict[str, np.ndarray]:
    """Pack a float (N, K) weight (GGML packings come from file blocks: `pack_ggml`)."""
    packing.check(w.shape)
    match packing:
        case FloatPacking(dtype):
            out = {"weight": np.ascontiguousarray(w, dtype=dtype)}
        case GroupPacking():
            return pack_codes(packing, *group_quantize(w, packing))
        case _:
            raise QuantizationError(
                f"{packing.key} keeps a GGUF file's blocks as they are; it packs raw blocks (pack_ggml), "
                "not float weights"
            )
    return _checked(packing, out, w.shape)


def pack_codes(packing: GroupPacking, q: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays of codes in [0, 2**bits - 1] (N, K) and scales (N, K / group) chosen elsewhere
    (round to nearest: `group_quantize`, codes up to 2 * max_int; calibrated: gptq.py, all
    levels)."""
    packing.check(q.shape)
    if q.size and int(q.max()) >= 2**packing.bits:
        raise QuantizationError(f"{packing.key}: code {int(q.max())} does not fit {packing.bits} bits")
    arrays = {"qweight": pack_bits(q, packing.bits), "scale": np.asarray(scale).astype(packing.scale_dtype)}
    return _checked(packing, arrays, q.shape)


def pack_ggml(packing: GGMLPacking, data: np.ndarray, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """The split arrays of a weight stored as GGUF rows (`Weights.raw(name).data`)."""
    packing.check(shape)
    return _checked(packing, gguf_blocks.split_blocks(packing.ggml_type, data, shape), shape)


def unpack(packing: Packing, arrays: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """float32 (N, K) values of packed arrays: the numpy reference of the kernels' dequantization."""
    match packing:
        case FloatPacking():
            return arrays["weight"].astype(np.float32)
        case GroupPacking(bits, group):
            q = unpack_bits(arrays["qweight"], bits).astype(np.float32) - packing.max_int
            scale = np.repeat(arrays["scale"].astype(np.float32), group, axis=-1)
            return q * scale
        case GGMLPacking(ggml_type):
            return gguf_blocks.dequantize(ggml_type, arrays, shape)
    raise QuantizationError(f"unknown packing {packing!r}")


def _checked(
    packing: Packing, arrays: dict[str, np.ndarray], shape: tuple[int, int]
) -> dict[str, np.ndarray]:
    specs = packing.arrays(shape)
    if [s.suffix for s in specs] != list(arrays):
        raise AssertionError(
            f"{packing.key}: packed arrays {list(arrays)}, spec says {[s.suffix for s in specs]}"
        )
    for s in specs:
        a = arrays[s.suffix]
        if a.shape != s.shape or a.dtype != np.dtype(s.dtype):
            raise AssertionError(
                f"{packing.key}: array {s.suffix} is {a.dtype} {a.shape}, spec says {s.dtype} {s.shape}"
            )
    return {s.suffix: np.ascontiguousarray(arrays[s.suffix]) for s in specs}
