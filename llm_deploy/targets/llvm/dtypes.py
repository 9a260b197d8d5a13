"""How tir dtypes map to LLVM types, in registers and in memory.

A bool is an `i1` in registers but a byte in memory (numpy's layout), so loads and stores of bool
buffers go through `i8`. Integers carry no sign in LLVM; the sign decides which instructions
(sdiv/udiv, ashr/lshr, sext/zext, signed/unsigned compares) the codegen picks.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir


@dataclass(frozen=True)
class DType:
    name: str
    kind: str  # "float" | "int" | "uint" | "bool"
    bits: int

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def signed(self) -> bool:
        return self.kind == "int"

    @property
    def reg(self) -> ir.Type:
        if self.kind == "float":
            return {16: ir.HalfType(), 32: ir.FloatType(), 64: ir.DoubleType()}[self.bits]
        return ir.IntType(self.bits)

    @property
    def mem(self) -> ir.Type:
        return ir.IntType(8) if self.kind == "bool" else self.reg

    @property
    def mem_bytes(self) -> int:
        return max(self.bits, 8) // 8


DTYPES = {
    d.name: d
    for d in (
        DType("float16", "float", 16),
        DType("float32", "float", 32),
        DType("float64", "float", 64),
        DType("int8", "int", 8),
        DType("int16", "int", 16),
        DType("int32", "int", 32),
        DType("int64", "int", 64),
        DType("uint8", "uint", 8),
        DType("uint16", "uint", 16),
        DType("uint32", "uint", 32),
        DType("uint64", "uint", 64),
        DType("bool", "bool", 1),
    )
}

I64 = ir.IntType(64)
I32 = ir.IntType(32)
I8 = ir.IntType(8)
I1 = ir.IntType(1)
PTR = ir.PointerType()


def dtype(name: str) -> DType:
    if name not in DTYPES:
        raise NotImplementedError(f"the LLVM target has no dtype {name!r}; supported: {', '.join(DTYPES)}")
    return DTYPES[name]


def vec(t: ir.Type, lanes: int) -> ir.Type:
    return t if lanes == 1 else ir.VectorType(t, lanes)


def const(d: DType, value: float | int | bool, lanes: int = 1) -> ir.Constant:
    """A constant of dtype `d`; llvmlite prints float constants in hex, exactly."""
    if d.is_float:
        v: float | int = float(value)
    elif d.kind == "bool":
        v = int(bool(value))
    else:
        # Wrap into the type's range the way numpy's astype does (two's complement).
        v = int(value) & ((1 << d.bits) - 1)
        if d.signed and v >= 1 << (d.bits - 1):
            v -= 1 << d.bits
    c = ir.Constant(d.reg, v)
    return c if lanes == 1 else ir.Constant(ir.VectorType(d.reg, lanes), [c] * lanes)
