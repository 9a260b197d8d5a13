"""How tir dtypes live on a WebGPU device: their WGSL type in registers and in storage buffers.

WGSL has f32, f16 (with the `shader-f16` feature), i32, u32 and bool, and nothing else; storage
buffers cannot hold bool. So every other dtype is *represented*:

- bool and the narrow integers (int8/int16/uint8/uint16) are widened to one 32-bit word per
  element on the device: the runtime converts on upload and readback, kernels read plain words
  and wrap what they store to the dtype's range.
- int64/uint64 keep numpy's bytes (two 32-bit words per element, little-endian), so arrays of
  them need no conversion; kernels read the low word and store it sign-extended. Values are
  32-bit on the device (index math is i32 too: a storage binding is far below 2**31 elements).
- float64 and bfloat16 have no WGSL type: codegen rejects them with the dtype's name.

Runtime code: imports nothing from the compiler (artifacts load without it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str  # the tir / numpy dtype
    wgsl: str  # type of a value in a shader
    storage: str  # element type of the storage array holding it
    words: int  # storage elements per tensor element
    device: str  # numpy dtype of the device bytes (what uploads convert to)

    @property
    def word_bytes(self) -> int:
        return 2 if self.storage == "f16" else 4

    @property
    def device_itemsize(self) -> int:
        return self.word_bytes * self.words

    @property
    def widened(self) -> bool:
        """The device holds a different numpy dtype than the host (converted on copies)."""
        return self.device != self.name


DTYPES = {
    d.name: d
    for d in (
        DType("float32", "f32", "f32", 1, "float32"),
        DType("float16", "f16", "f16", 1, "float16"),
        DType("int32", "i32", "i32", 1, "int32"),
        DType("uint32", "u32", "u32", 1, "uint32"),
        DType("int8", "i32", "i32", 1, "int32"),
        DType("int16", "i32", "i32", 1, "int32"),
        DType("uint8", "u32", "u32", 1, "uint32"),
        DType("uint16", "u32", "u32", 1, "uint32"),
        DType("bool", "bool", "u32", 1, "uint32"),
        DType("int64", "i32", "i32", 2, "int64"),
        DType("uint64", "u32", "u32", 2, "uint64"),
    )
}

# Bits of a narrow integer: stores wrap a 32-bit value to them (C's conversion, as numpy does).
NARROW_BITS = {"int8": 8, "int16": 16, "uint8": 8, "uint16": 16}


class DTypeError(TypeError):
    """A dtype WebGPU cannot hold."""


def dtype(name: str) -> DType:
    if name not in DTYPES:
        raise DTypeError(
            f"WebGPU has no dtype {name!r} (WGSL has f32, f16, i32, u32, bool); supported: "
            f"{', '.join(DTYPES)}"
        )
    return DTYPES[name]


def to_device(array: np.ndarray) -> np.ndarray:
    """The bytes a device buffer holds for `array` (C order, widened where the dtype needs it)."""
    d = dtype(np.dtype(array.dtype).name)
    return np.ascontiguousarray(array, dtype=d.device)


def from_device(raw: np.ndarray, dtype_name: str) -> np.ndarray:
    """Device words back to a host array of `dtype_name` (raw is already shaped, device dtype)."""
    d = dtype(dtype_name)
    if not d.widened:
        return raw
    if dtype_name == "bool":
        return raw != 0
    return raw.astype(dtype_name)
