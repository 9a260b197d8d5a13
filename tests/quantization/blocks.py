"""GGUF rows for tests: real blocks from gguf's own quantizer where it has one, else random
blocks with finite float16 scales (gguf-py cannot quantize the K-quants, only decode them)."""

from __future__ import annotations

import gguf
import numpy as np

# byte offsets of the float16 fields of the K-quant blocks (d, dmin / d)
_F16_FIELDS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def ggml_rows(ggml_type: str, w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`w` (N, K) as GGUF stores it: float rows for F32/F16, uint8 (N, row bytes) of blocks else."""
    if ggml_type in ("F32", "F16"):
        return w.astype(ggml_type.replace("F", "float"))
    qt = gguf.GGMLQuantizationType[ggml_type]
    if ggml_type not in _F16_FIELDS:
        return gguf.quants.quantize(w, qt)
    block, nbytes = gguf.GGML_QUANT_SIZES[qt]
    n, k = w.shape
    raw = rng.integers(0, 256, (n, k // block, nbytes), dtype=np.uint8)
    for off in _F16_FIELDS[ggml_type]:
        scales = rng.uniform(1e-3, 2e-2, (n, k // block)).astype(np.float16)
        raw[:, :, off : off + 2] = scales[..., None].view(np.uint8)
    return raw.reshape(n, -1)


def gguf_dequantize(ggml_type: str, rows: np.ndarray) -> np.ndarray:
    """gguf-py's own decoding: the oracle."""
    if ggml_type in ("F32", "F16"):
        return rows.astype(np.float32)
    return gguf.quants.dequantize(rows, gguf.GGMLQuantizationType[ggml_type])


GGML_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
