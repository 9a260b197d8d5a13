"""GGUF (ggml) block formats, used as they are: no re-quantization, the same bits.

A ggml row is its blocks back to back, each block a little struct (`Q4_1`: float16 d, float16 m,
16 bytes of nibbles). The CPU kernels want each field as its own typed array, so `split_blocks`
cuts the rows along the struct's fields: the quantized bytes stay byte for byte, the float16
scales stay the same two bytes, only their order in memory changes (struct of arrays). The one
exception is the K-quants' 12-byte packed 6-bit scales and mins, unpacked here into one uint8
per sub-block (the same integers; no value changes). `dequantize` is the numpy reference of what
the kernels compute, in gguf's own arithmetic order, and is checked against
`gguf.quants.dequantize` in the tests.

Element t of a block, for the formats with nibbles (these index maps are what the kernels use):
    Q4_0/Q4_1  byte t % 16, nibble t // 16                 (32 per block)
    Q4_K/Q5_K  byte 32 * (t // 64) + t % 32, nibble (t // 32) % 2; Q5_K high bit: qh[t % 32] bit t // 32
    Q6_K       ql byte 64 * (t // 128) + t % 64, nibble (t // 64) % 2;
               qh byte 32 * (t // 128) + t % 32, bits 2 * ((t // 32) % 4)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Field:
    """One field of a block: `count` items of `dtype` at byte `offset` of the block."""

    name: str
    offset: int
    count: int
    dtype: str


@dataclass(frozen=True)
class Layout:
    block: int  # elements per block
    nbytes: int  # bytes per block
    fields: tuple[Field, ...]


_F16, _U8, _I8 = "float16", "uint8", "int8"
_KSCALES = Field("scales", 4, 12, _U8)  # K-quants' packed 6-bit scales and mins, unpacked below

GGML_LAYOUTS: dict[str, Layout] = {
    "F32": Layout(1, 4, (Field("weight", 0, 1, "float32"),)),
    "F16": Layout(1, 2, (Field("weight", 0, 1, _F16),)),
    "Q4_0": Layout(32, 18, (Field("d", 0, 1, _F16), Field("qs", 2, 16, _U8))),
    "Q4_1": Layout(32, 20, (Field("d", 0, 1, _F16), Field("m", 2, 1, _F16), Field("qs", 4, 16, _U8))),
    "Q8_0": Layout(32, 34, (Field("d", 0, 1, _F16), Field("qs", 2, 32, _I8))),
    "Q4_K": Layout(
        256, 144, (Field("d", 0, 1, _F16), Field("dmin", 2, 1, _F16), _KSCALES, Field("qs", 16, 128, _U8))
    ),
    "Q5_K": Layout(
        256,
        176,
        (
            Field("d", 0, 1, _F16),
            Field("dmin", 2, 1, _F16),
            _KSCALES,
            Field("qh", 16, 32, _U8),
            Field("qs", 48, 128, _U8),
        ),
    ),
    "Q6_K": Layout(
        256,
        210,
        (
            Field("ql", 0, 128, _U8),
            Field("qh", 128, 64, _U8),
            Field("sc", 192, 16, _I8),
            Field("d", 208, 1, _F16),
        ),
    ),
}


def _is_k_quant(ggml_type: str) -> bool:
    return ggml_type.endswith("_K")


def ggml_arrays(ggml_type: str, shape: tuple[int, int]) -> list[tuple[str, tuple[int, int], str]]:
    """(suffix, shape, dtype) of the arrays one (N, K) weight of `ggml_type` splits into."""
    layout = GGML_LAYOUTS[ggml_type]
    n, k = shape
    blocks = k // layout.block
    out = []
    for f in layout.fields:
        if f is _KSCALES:
            out += [("sc", (n, k // 32), _U8), ("mn", (n, k // 32), _U8)]
        else:
            out.append((f.name, (n, blocks * f.count), f.dtype))
    return out


def unsupported(ggml_type: str) -> str:
    return f"GGUF type {ggml_type} has no kernels here; supported: {', '.join(GGML_LAYOUTS)}"


def split_blocks(ggml_type: str, data: np.ndarray, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """The field arrays of a weight stored as ggml rows.

    `data` is what `Weights.raw(name).data` holds: uint8 (N, row bytes) for block formats,
    float32/float16 (N, K) for F32/F16.
    """
    if ggml_type not in GGML_LAYOUTS:
        raise ValueError(unsupported(ggml_type))
    layout = GGML_LAYOUTS[ggml_type]
    n, k = shape
    if layout.block == 1:
        return {"weight": np.ascontiguousarray(data, dtype=layout.fields[0].dtype).reshape(n, k)}
    nb = k // layout.block
    if data.dtype != np.uint8 or data.shape != (n, nb * layout.nbytes):
        raise ValueError(
            f"{ggml_type} rows of a {shape} weight: expected uint8 {(n, nb * layout.nbytes)}, "
            f"got {data.dtype} {data.shape}"
        )
    blocks = data.reshape(n, nb, layout.nbytes)
    out = {}
    for f in layout.fields:
        size = f.count * np.dtype(f.dtype).itemsize
        raw = np.ascontiguousarray(blocks[:, :, f.offset : f.offset + size])  # (n, nb, size)
        if f is _KSCALES:
            sc, mn = unpack_k_scales(raw.reshape(n * nb, 12))  # (n*nb, 8) each
            out["sc"], out["mn"] = sc.reshape(n, nb * 8), mn.reshape(n, nb * 8)
        else:
            out[f.name] = raw.view(f.dtype).reshape(n, nb * f.count)
    return out


def unpack_k_scales(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit scales and mins of each Q4_K/Q5_K block from its 12 bytes: (blocks, 8) each.

    Bytes 0-3 hold scales 0-3 (low 6 bits), 4-7 mins 0-3, and bytes 8-11 the low 4 bits of
    scales/mins 4-7; the top 2 bits of scales/mins 4-7 ride in the top of bytes 0-7.
    """
    s = scales.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc.astype(np.uint8), mn.astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# The numpy reference of the kernels


def _nibbles_q4(qs: np.ndarray, n: int, k: int) -> np.ndarray:
    """Q4_0/Q4_1 values (N, K): element t of a block is byte t % 16, low nibble first."""
    b = qs.reshape(n, k // 32, 1, 16) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    return (b & 0x0F).reshape(n, k)


def _nibbles_k(qs: np.ndarray, n: int, k: int) -> np.ndarray:
    """Q4_K/Q5_K low nibbles (N, K): 32 bytes serve 64 elements, low nibbles first."""
    b = qs.reshape(n, k // 64, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    return (b & 0x0F).reshape(n, k)


def _per(a: np.ndarray, size: int) -> np.ndarray:
    """A per-block (or per-sub-block) array repeated over its `size` elements, as float32."""
    return np.repeat(a.astype(np.float32), size, axis=-1)


def dequantize(ggml_type: str, arrays: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """float32 (N, K) values from the split arrays, in gguf's arithmetic order."""
    n, k = shape
    a = arrays
    match ggml_type:
        case "F32" | "F16":
            return a["weight"].astype(np.float32)
        case "Q4_0":
            q = _nibbles_q4(a["qs"], n, k).astype(np.int8) - np.int8(8)
            return _per(a["d"], 32) * q.astype(np.float32)
        case "Q4_1":
            q = _nibbles_q4(a["qs"], n, k).astype(np.float32)
            return _per(a["d"], 32) * q + _per(a["m"], 32)
        case "Q8_0":
            return _per(a["d"], 32) * a["qs"].astype(np.float32)
        case "Q4_K" | "Q5_K":
            q = _nibbles_k(a["qs"], n, k)
            if ggml_type == "Q5_K":
                hb = a["qh"].reshape(n, k // 256, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)
                q = q | ((hb & 1).reshape(n, k) << np.uint8(4))
            d = _per(a["d"], 8) * a["sc"].astype(np.float32)  # (n, K/32): d * scale per sub-block
            dm = _per(a["dmin"], 8) * a["mn"].astype(np.float32)
            return np.repeat(d, 32, axis=-1) * q.astype(np.float32) - np.repeat(dm, 32, axis=-1)
        case "Q6_K":
            lo_shift = np.array([0, 4], np.uint8).reshape(1, 1, 1, 2, 1)
            hi_shift = np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 1, 4, 1)
            lo = (a["ql"].reshape(n, k // 256, 2, 1, 64) >> lo_shift) & 0x0F  # 128 elements per half
            hi = (a["qh"].reshape(n, k // 256, 2, 1, 32) >> hi_shift) & 0x03
            q = (lo.reshape(n, k) | (hi.reshape(n, k) << np.uint8(4))).astype(np.int8) - np.int8(32)
            d = _per(a["d"], 16) * a["sc"].astype(np.float32)  # (n, K/16)
            return np.repeat(d, 16, axis=-1) * q.astype(np.float32)
    raise ValueError(unsupported(ggml_type))
