"""The calling convention of compiled kernels, and the signature the runtime needs to call them.

Every kernel is exported as

    void llmd_kernel_<name>(void *const *buffers, const int64_t *vars);

- `buffers[i]` is the data pointer of the i-th buffer parameter (in parameter order), C-contiguous,
  with the dtype the kernel was compiled for. Buffers of one call must not overlap (destination
  passing style: outputs are distinct from inputs); the kernel is compiled assuming so (noalias).
- `vars[j]` is the value of the j-th symbolic variable of `KernelSignature.vars`: the scalar
  parameters first, in parameter order, then each symbolic dim of the buffer shapes that is not a
  scalar parameter, in order of first appearance. The caller binds them from the arguments' shapes
  and checks every dim; the kernel trusts them.

Two pointers whatever the kernel: one ctypes prototype serves all, and native code (a VM loop, a
fused launcher) calls kernels through one function-pointer type.

For calls from Python each kernel also has

    void llmd_py_<name>(PyObject *array0, ..., int64_t var0, ...);

taking the numpy arrays themselves and reading their data pointers at the offset stored in the
exported global `llmd_py_data_offset` (numpy's `PyArrayObject.data`; the runtime measures it on
a live array at load time). Getting a data pointer in Python (`a.ctypes.data`) costs more than
the whole call through this entry; the caller still checks dtypes and shapes. This file imports nothing from
the compiler, so the runtime can load artifacts without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KERNEL_PREFIX = "llmd_kernel_"
PY_PREFIX = "llmd_py_"
PY_DATA_OFFSET = "llmd_py_data_offset"


def symbol_of(name: str) -> str:
    """The exported symbol of kernel `name` (prefixed, so no kernel can shadow a libc function)."""
    return KERNEL_PREFIX + name


@dataclass(frozen=True)
class ParamSpec:
    """A kernel parameter: a buffer (dtype, shape of ints and symbolic text) or an int scalar."""

    name: str
    kind: str  # "buffer" | "scalar"
    dtype: str = "int64"
    shape: tuple[int | str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        if self.kind == "scalar":
            return {"name": self.name, "kind": "scalar"}
        return {"name": self.name, "kind": "buffer", "dtype": self.dtype, "shape": list(self.shape)}

    @staticmethod
    def from_json(d: dict[str, Any]) -> ParamSpec:
        return ParamSpec(d["name"], d["kind"], d.get("dtype", "int64"), tuple(d.get("shape", ())))


@dataclass(frozen=True)
class KernelSignature:
    name: str
    params: tuple[ParamSpec, ...]
    vars: tuple[str, ...]

    @property
    def symbol(self) -> str:
        return symbol_of(self.name)

    @property
    def py_symbol(self) -> str:
        return PY_PREFIX + self.name

    @property
    def buffers(self) -> tuple[ParamSpec, ...]:
        return tuple(p for p in self.params if p.kind == "buffer")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "params": [p.to_json() for p in self.params], "vars": list(self.vars)}

    @staticmethod
    def from_json(d: dict[str, Any]) -> KernelSignature:
        return KernelSignature(
            d["name"], tuple(ParamSpec.from_json(p) for p in d["params"]), tuple(d["vars"])
        )

    def __str__(self) -> str:
        parts = [
            f"{p.name}: {p.dtype}[{', '.join(map(str, p.shape))}]" if p.kind == "buffer" else f"{p.name}: int"
            for p in self.params
        ]
        return f"{self.name}({', '.join(parts)})"
