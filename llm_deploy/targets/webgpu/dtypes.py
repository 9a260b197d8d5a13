"""How tir dtypes live on a WebGPU device: their WGSL type in registers and in storage buffers.

WGSL has f32, f16 (with the `shader-f16` feature), i32, u32 and bool, and storage buffers hold
none of bool or the narrow integers. So a device buffer holds exactly numpy's bytes, and kernels
read and write them through 32-bit words:

- bool, int8, uint8 (four to a word) and int16, uint16 (two to a word) are extracted with a shift
  and a mask (sign-extended for the signed ones). Packed weights (GGUF blocks of uint8) stay as
  compact as on the host. A kernel that *writes* such a buffer declares it `atomic<u32>` and sets
  its byte with an atomicAnd and an atomicOr: each element belongs to one thread, and the two
  operations on other bits of the same word commute, so neighbours never clobber each other.
- int64/uint64 are two words per element (little-endian); kernels read the low word and store it
  sign-extended. Values are 32-bit on the device (index math is i32 too: a storage binding holds
  far fewer than 2**31 elements).
- float64 and bfloat16 have no WGSL type: codegen rejects them with the dtype's name.

No conversion on upload or readback: the device bytes are the host's. Runtime code: imports
nothing from the compiler (artifacts load without it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str  # the tir / numpy dtype
    wgsl: str  # type of a value in a shader
    storage: str  # element type of the storage array holding it
    itemsize: int  # bytes per element, as numpy

    @property
    def word_bytes(self) -> int:
        return 2 if self.storage == "f16" else 4

    @property
    def per_word(self) -> int:
        """Elements per storage word (4 for bytes, 2 for 16-bit ints, else 1)."""
        return max(1, self.word_bytes // self.itemsize)

    @property
    def words(self) -> int:
        """Storage words per element (2 for 64-bit ints, else 1)."""
        return max(1, self.itemsize // self.word_bytes)

    @property
    def bits(self) -> int:
        return 8 * self.itemsize


DTYPES = {
    d.name: d
    for d in (
        DType("float32", "f32", "f32", 4),
        DType("float16", "f16", "f16", 2),
        DType("int32", "i32", "i32", 4),
        DType("uint32", "u32", "u32", 4),
        DType("int8", "i32", "u32", 1),
        DType("uint8", "u32", "u32", 1),
        DType("bool", "bool", "u32", 1),
        DType("int16", "i32", "u32", 2),
        DType("uint16", "u32", "u32", 2),
        DType("int64", "i32", "i32", 8),
        DType("uint64", "u32", "u32", 8),
    )
}

# Bits of a narrow integer: arithmetic runs in 32 bits and wraps to them (C's conversion, as numpy).
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
