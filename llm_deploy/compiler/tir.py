"""Loop-level tensor programs (TVM's TIR, reduced to what our kernels need).

Integer index arithmetic is `shape.PrimExpr` (canonical, analyzable): symbolic dims, loop
variables and let-bound indices are all `SymVar`s. Values computed by a kernel (floats, loaded
integers, comparisons) are the `TExpr` nodes below; a `shape.PrimExpr` used as a value means an
int64. Loops always start at 0. Buffers are row-major; their shapes may be symbolic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llm_deploy.compiler import shape as S
from llm_deploy.compiler.expr import Attrs, BaseFunc
from llm_deploy.compiler.shape import PrimExpr, SymVar

FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16")
INDEX_DTYPE = "int64"

BINARY_OPS = {
    # arithmetic: result has the operands' dtype
    "add", "sub", "mul", "div", "floordiv", "floormod", "min", "max", "pow",
    # comparisons and logic: result is bool
    "lt", "le", "eq", "ne", "gt", "ge", "and", "or",
    # bitwise on integers (dequantization unpacks with these)
    "shl", "shr", "bitand", "bitor", "bitxor",
}  # fmt: skip
COMPARE_OPS = {"lt", "le", "eq", "ne", "gt", "ge", "and", "or"}
INTRINSICS = {
    "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "abs", "neg", "floor", "ceil",
    "cos", "sin", "erf", "not", "round",
}  # fmt: skip


class TExpr:
    """A scalar value expression; arithmetic operators build nodes."""

    __slots__ = ()

    def __str__(self) -> str:
        from llm_deploy.compiler.printer import tir_value_to_str

        return tir_value_to_str(self)

    def __add__(self, o):
        return binary("add", self, o)

    def __radd__(self, o):
        return binary("add", o, self)

    def __sub__(self, o):
        return binary("sub", self, o)

    def __rsub__(self, o):
        return binary("sub", o, self)

    def __mul__(self, o):
        return binary("mul", self, o)

    def __rmul__(self, o):
        return binary("mul", o, self)

    def __truediv__(self, o):
        return binary("div", self, o)

    def __rtruediv__(self, o):
        return binary("div", o, self)

    def __neg__(self):
        return intrin("neg", self)

    def __lt__(self, o):
        return binary("lt", self, o)

    def __le__(self, o):
        return binary("le", self, o)

    def __gt__(self, o):
        return binary("gt", self, o)

    def __ge__(self, o):
        return binary("ge", self, o)


Value = TExpr | PrimExpr


@dataclass(frozen=True, slots=True)
class Imm(TExpr):
    """A constant of a given dtype (floats and fixed-width integers)."""

    value: float | int | bool
    dtype: str


@dataclass(frozen=True, slots=True)
class Buffer:
    """A named n-d array: a kernel parameter, or a local/shared allocation."""

    name: str
    shape: tuple[PrimExpr, ...]
    dtype: str = "float32"
    scope: str = "global"  # global | local | shared

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", S.as_prim(self.shape))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, indices) -> Load:
        if not isinstance(indices, tuple):
            indices = (indices,)
        return Load(self, tuple(S.const(i) for i in indices))


@dataclass(frozen=True, slots=True)
class Load(TExpr):
    buffer: Buffer
    indices: tuple[PrimExpr, ...]

    def __post_init__(self) -> None:
        if len(self.indices) != self.buffer.ndim:
            raise IndexError(
                f"{self.buffer.name} has {self.buffer.ndim} dims but is indexed with {len(self.indices)}"
            )


@dataclass(frozen=True, slots=True)
class Binary(TExpr):
    op: str
    a: Value
    b: Value

    def __post_init__(self) -> None:
        if self.op not in BINARY_OPS:
            raise ValueError(f"unknown binary op {self.op!r}")


@dataclass(frozen=True, slots=True)
class Intrin(TExpr):
    """A math intrinsic applied elementwise: exp, log, sqrt, rsqrt, tanh, ..."""

    name: str
    args: tuple[Value, ...]

    def __post_init__(self) -> None:
        if self.name not in INTRINSICS:
            raise ValueError(f"unknown intrinsic {self.name!r}")


@dataclass(frozen=True, slots=True)
class Cast(TExpr):
    dtype: str
    value: Value


@dataclass(frozen=True, slots=True)
class Select(TExpr):
    cond: Value
    a: Value
    b: Value


# ---------------------------------------------------------------------------------------------
# Statements


class Stmt:
    __slots__ = ()

    def __str__(self) -> str:
        from llm_deploy.compiler.printer import stmt_to_str

        return stmt_to_str(self)


LOOP_KINDS = ("serial", "parallel", "vectorized", "unrolled", "thread")


@dataclass(frozen=True, slots=True)
class For(Stmt):
    """`for var in range(extent)`; kind says how it maps to hardware, `thread` names a GPU axis."""

    var: SymVar
    extent: PrimExpr
    body: Stmt
    kind: str = "serial"
    thread: str | None = None  # blockIdx.x, threadIdx.x, ... when kind == "thread"

    def __post_init__(self) -> None:
        object.__setattr__(self, "extent", S.const(self.extent))
        if self.kind not in LOOP_KINDS:
            raise ValueError(f"unknown loop kind {self.kind!r}; expected one of {LOOP_KINDS}")
        if (self.kind == "thread") != (self.thread is not None):
            raise ValueError("a thread-bound loop needs a thread tag, and only it")


@dataclass(frozen=True, slots=True)
class Store(Stmt):
    buffer: Buffer
    indices: tuple[PrimExpr, ...]
    value: Value

    def __post_init__(self) -> None:
        object.__setattr__(self, "indices", tuple(S.const(i) for i in self.indices))
        if len(self.indices) != self.buffer.ndim:
            raise IndexError(
                f"{self.buffer.name} has {self.buffer.ndim} dims but is stored with {len(self.indices)}"
            )


@dataclass(frozen=True, slots=True)
class Let(Stmt):
    """Bind an integer index variable to a computed value (e.g. a token id read from a buffer)."""

    var: SymVar
    value: Value
    body: Stmt


@dataclass(frozen=True, slots=True)
class IfThenElse(Stmt):
    cond: Value
    then_body: Stmt
    else_body: Stmt | None = None


@dataclass(frozen=True, slots=True)
class Seq(Stmt):
    stmts: tuple[Stmt, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "stmts", tuple(self.stmts))


@dataclass(frozen=True, slots=True)
class Allocate(Stmt):
    """A scratch buffer (scope local or shared) live for `body`."""

    buffer: Buffer
    body: Stmt


@dataclass(frozen=True, slots=True)
class Barrier(Stmt):
    """Workgroup barrier (GPU targets); a no-op on the CPU."""


@dataclass(frozen=True, slots=True)
class PrimFunc(BaseFunc):
    """A tensor program. `params` are buffers (inputs then outputs) and scalar int params.

    Symbolic dims in buffer shapes are bound from the arguments' shapes at call time; scalar
    params (`SymVar`s) come from call_tir's `shape_args`, in order.
    """

    params: tuple[Buffer | SymVar, ...]
    body: Stmt
    attrs: Attrs = field(default_factory=Attrs)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(self.params))
        object.__setattr__(self, "attrs", Attrs.of(self.attrs))

    @property
    def buffers(self) -> tuple[Buffer, ...]:
        return tuple(p for p in self.params if isinstance(p, Buffer))

    @property
    def scalars(self) -> tuple[SymVar, ...]:
        return tuple(p for p in self.params if isinstance(p, SymVar))

    def __str__(self) -> str:
        from llm_deploy.compiler.printer import prim_func_to_str

        return prim_func_to_str(self)


# ---------------------------------------------------------------------------------------------
# Constructors and dtype deduction


def as_value(v: Value | float | int | bool) -> Value:
    if isinstance(v, (TExpr, PrimExpr)):
        return v
    if isinstance(v, bool):
        return Imm(v, "bool")
    if isinstance(v, int):
        return S.IntImm(v)
    if isinstance(v, float):
        return Imm(v, "float32")
    raise TypeError(f"not a scalar value: {v!r}")


def binary(op: str, a: Value | float | int, b: Value | float | int) -> Binary:
    a, b = as_value(a), as_value(b)
    # A Python float meets the other operand's float dtype (2.0 * x keeps x's float16).
    if isinstance(a, Imm) and isinstance(a.value, float) and dtype_of(b) in FLOAT_DTYPES:
        a = Imm(a.value, dtype_of(b))
    if isinstance(b, Imm) and isinstance(b.value, float) and dtype_of(a) in FLOAT_DTYPES:
        b = Imm(b.value, dtype_of(a))
    return Binary(op, a, b)


def intrin(name: str, *args: Value | float | int) -> Intrin:
    return Intrin(name, tuple(as_value(a) for a in args))


def cast(dtype: str, value: Value | float | int) -> Value:
    value = as_value(value)
    return value if dtype_of(value) == dtype else Cast(dtype, value)


def select(cond: Value, a: Value | float | int, b: Value | float | int) -> Select:
    a, b = as_value(a), as_value(b)
    return Select(as_value(cond), a, b)


def dtype_of(e: Value) -> str:
    match e:
        case PrimExpr():
            return INDEX_DTYPE
        case Imm(_, dtype) | Cast(dtype, _):
            return dtype
        case Load(buffer, _):
            return buffer.dtype
        case Binary(op, a, _):
            return "bool" if op in COMPARE_OPS else dtype_of(a)
        case Intrin("not", _):
            return "bool"
        case Intrin(_, args):
            return dtype_of(args[0])
        case Select(_, a, _):
            return dtype_of(a)
    raise TypeError(f"not a scalar value: {e!r}")


def seq(*stmts: Stmt) -> Stmt:
    flat: list[Stmt] = []
    for s in stmts:
        flat.extend(s.stmts if isinstance(s, Seq) else (s,))
    return flat[0] if len(flat) == 1 else Seq(tuple(flat))
