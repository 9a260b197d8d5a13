"""Matrix-vector products of GGUF blocks with int8-quantized activations, in numpy: the meaning of
the `int_dot_linear` op (the reference its kernels are checked against).

Each row of x is cut into blocks of 32 and quantized to int8 with one scale per block,
d = max|x| / 127, q = round-half-even(x / d), as llama.cpp's `quantize_row_q8_1` does; the block's
products with W are then summed exactly in integers and scaled once:

    Q4_1: dw*dx*sum(qw*qx) + mw * dx*sum(qx)      Q4_0: dw*dx*sum(qw*qx) - 8*dw * dx*sum(qx)
    Q8_0: dw*dx*sum(qw*qx)

Only the activations lose precision (8 bits per value, per-block scale); the weights are used as
they are stored.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

BLOCK = 32
INT_DOT_TYPES = ("Q4_0", "Q4_1", "Q8_0")


def int_dot_type(packing_key: str) -> str | None:
    """The GGML type of a packing key ("ggml:Q4_1") when it has an integer kernel, else None."""
    kind, _, ggml_type = str(packing_key).partition(":")
    return ggml_type if kind == "ggml" and ggml_type in INT_DOT_TYPES else None


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q int32 (rows, K), d float32 (rows, K/32), s = d * sum(q) float32 (rows, K/32))."""
    rows, k = x.shape
    blocks = x.astype(np.float32).reshape(rows, k // BLOCK, BLOCK)
    d = (np.abs(blocks).max(axis=-1) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    q = np.rint(blocks * inv[..., None]).astype(np.int32)
    s = (d * q.sum(axis=-1).astype(np.float32)).astype(np.float32)
    return q.reshape(rows, k), d, s


def weight_codes(ggml_type: str, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """The integer codes of W (N, K): nibbles 0..15 for Q4_0/Q4_1, int8 for Q8_0."""
    qs = arrays["qs"]
    if ggml_type == "Q8_0":
        return qs.astype(np.int32)
    n = qs.shape[0]
    b = qs.reshape(n, -1, 16).astype(np.int32)
    return np.concatenate([b & 0x0F, b >> 4], axis=-1).reshape(n, -1)


def int_dot_linear(x: np.ndarray, ggml_type: str, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """x (..., K) float32 against W (N, K) stored as `ggml_type` blocks: (..., N) float32."""
    if ggml_type not in INT_DOT_TYPES:
        raise ValueError(f"int_dot_linear: no integer kernel for {ggml_type}; supported: {INT_DOT_TYPES}")
    lead, k = x.shape[:-1], x.shape[-1]
    q, dx, sx = quantize_activations(x.reshape(-1, k))
    w = weight_codes(ggml_type, arrays)
    n = w.shape[0]
    # (rows, N, blocks) exact integer sums, then float scaling per block.
    isum = np.einsum("rbt,nbt->rnb", q.reshape(len(q), -1, BLOCK), w.reshape(n, -1, BLOCK), dtype=np.int64)
    dw = arrays["d"].astype(np.float32)
    out = (isum.astype(np.float32) * (dw[None] * dx[:, None])).sum(-1, dtype=np.float32)
    if ggml_type == "Q4_1":
        out += (arrays["m"].astype(np.float32)[None] * sx[:, None]).sum(-1, dtype=np.float32)
    elif ggml_type == "Q4_0":
        out -= (8 * dw[None] * sx[:, None]).sum(-1, dtype=np.float32)
    return out.astype(np.float32).reshape(*lead, n)
