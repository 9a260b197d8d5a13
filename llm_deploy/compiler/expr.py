"""Graph-level IR nodes (Relax's expressions), immutable with structural equality.

Struct info lives on binders (`Var.info`); the info of any other normalized expression is
computed from its parts by `info_of`. A Call's info is the info of the var it is bound to: the
BlockBuilder deduces it once, at emission, through the op's `infer_struct_info`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm_deploy.compiler import shape as S
from llm_deploy.compiler.shape import PrimExpr
from llm_deploy.compiler.struct_info import (
    FuncInfo,
    ObjectInfo,
    PrimInfo,
    ShapeInfo,
    StructInfo,
    TensorInfo,
    TupleInfo,
)


class Expr:
    __slots__ = ()

    def __str__(self) -> str:
        from llm_deploy.compiler.printer import expr_to_str

        return expr_to_str(self)


class BaseFunc:
    """Anything an IRModule maps a name to: a graph Function, a PrimFunc, an ExternFunc."""

    __slots__ = ()


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return Attrs.of(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


@dataclass(frozen=True, slots=True)
class Attrs:
    """An op's attributes: a frozen, hashable, ordered mapping."""

    items_: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def of(mapping: Mapping[str, Any] | Attrs | None = None, **kwargs: Any) -> Attrs:
        if isinstance(mapping, Attrs) and not kwargs:
            return mapping
        merged = dict(mapping.items() if mapping is not None else ())
        merged.update(kwargs)
        return Attrs(tuple((k, _freeze(v)) for k, v in merged.items()))

    def __getitem__(self, key: str) -> Any:
        for k, v in self.items_:
            if k == key:
                return v
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in self.items_:
            if k == key:
                return v
        return default

    def __contains__(self, key: object) -> bool:
        return any(k == key for k, _ in self.items_)

    def items(self) -> tuple[tuple[str, Any], ...]:
        return self.items_

    def keys(self) -> list[str]:
        return [k for k, _ in self.items_]

    def __len__(self) -> int:
        return len(self.items_)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def replace(self, **kwargs: Any) -> Attrs:
        return Attrs.of(dict(self.items_), **kwargs)


# ---------------------------------------------------------------------------------------------
# Leaves


@dataclass(frozen=True, slots=True)
class Var(Expr):
    """A value bound exactly once; identified by its name within a function."""

    name: str
    info: StructInfo = field(default_factory=ObjectInfo)


@dataclass(frozen=True, slots=True)
class DataflowVar(Var):
    """A var local to a dataflow block: pure, never visible outside it."""


@dataclass(frozen=True, slots=True, eq=False)
class Constant(Expr):
    data: np.ndarray

    def __post_init__(self) -> None:
        # np.ascontiguousarray would turn a 0-d scalar into shape (1,).
        object.__setattr__(self, "data", np.asarray(self.data, order="C"))

    @property
    def info(self) -> TensorInfo:
        return TensorInfo(self.data.shape, str(self.data.dtype))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Constant):
            return NotImplemented
        a, b = self.data, other.data
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()

    def __hash__(self) -> int:
        return hash((str(self.data.dtype), self.data.shape, self.data.tobytes()))


@dataclass(frozen=True, slots=True)
class PrimValue(Expr):
    """A scalar integer (often symbolic, e.g. a position offset) passed as a value."""

    value: PrimExpr
    dtype: str = "int64"

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", S.const(self.value))


@dataclass(frozen=True, slots=True)
class StringImm(Expr):
    value: str


@dataclass(frozen=True, slots=True)
class ShapeExpr(Expr):
    values: tuple[PrimExpr, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", S.as_prim(self.values))


@dataclass(frozen=True, slots=True)
class GlobalVar(Expr):
    """The name of a function of the module (graph function or tensor program)."""

    name: str


@dataclass(frozen=True, slots=True)
class Op(Expr):
    """A registered operator, by name; its definition lives in `ops.registry.OPS`."""

    name: str


@dataclass(frozen=True, slots=True)
class ExternFunc(Expr, BaseFunc):
    """A library function resolved by name at run time (`call_extern`)."""

    name: str


# ---------------------------------------------------------------------------------------------
# Composite expressions


@dataclass(frozen=True, slots=True)
class Tuple(Expr):
    fields: tuple[Expr, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))


@dataclass(frozen=True, slots=True)
class GetItem(Expr):
    tuple_value: Expr
    index: int


@dataclass(frozen=True, slots=True)
class Call(Expr):
    """`op(args, attrs)`; `sinfo_args` carries struct info an op cannot deduce (call_tir's output)."""

    op: Expr  # Op | GlobalVar | ExternFunc | Var
    args: tuple[Expr, ...]
    attrs: Attrs = field(default_factory=Attrs)
    sinfo_args: tuple[StructInfo, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "attrs", Attrs.of(self.attrs))
        object.__setattr__(self, "sinfo_args", tuple(self.sinfo_args))


@dataclass(frozen=True, slots=True)
class VarBinding:
    var: Var
    value: Expr


@dataclass(frozen=True, slots=True)
class MatchCast:
    """`var = match_cast(value, info)`: checked at run time; binds info's new symbolic vars."""

    var: Var
    value: Expr
    info: StructInfo


Binding = VarBinding | MatchCast


@dataclass(frozen=True, slots=True)
class BindingBlock:
    bindings: tuple[Binding, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "bindings", tuple(self.bindings))


@dataclass(frozen=True, slots=True)
class DataflowBlock(BindingBlock):
    """Pure bindings only; its DataflowVars never escape it."""


@dataclass(frozen=True, slots=True)
class SeqExpr(Expr):
    blocks: tuple[BindingBlock, ...]
    body: Expr

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))


@dataclass(frozen=True, slots=True)
class If(Expr):
    cond: Expr
    then_branch: SeqExpr
    else_branch: SeqExpr


@dataclass(frozen=True, slots=True)
class Function(Expr, BaseFunc):
    """A graph-level function; the symbolic vars in its params' shapes are its symbolic parameters."""

    params: tuple[Var, ...]
    body: SeqExpr
    ret_info: StructInfo
    pure: bool = True
    attrs: Attrs = field(default_factory=Attrs)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(self.params))
        object.__setattr__(self, "attrs", Attrs.of(self.attrs))

    @property
    def info(self) -> FuncInfo:
        return FuncInfo(tuple(p.info for p in self.params), self.ret_info, self.pure)


# ---------------------------------------------------------------------------------------------


class NotNormalizedError(TypeError):
    pass


def info_of(expr: Expr) -> StructInfo:
    """Struct info of a normalized expression (leaves, tuples of them, items of tuples)."""
    match expr:
        case Var(info=info):
            return info
        case Constant():
            return expr.info
        case PrimValue(value, dtype):
            return PrimInfo(dtype, value)
        case StringImm():
            return ObjectInfo()
        case ShapeExpr(values):
            return ShapeInfo(values)
        case Tuple(fields):
            return TupleInfo(tuple(info_of(f) for f in fields))
        case GetItem(tup, index):
            tinfo = info_of(tup)
            if isinstance(tinfo, TupleInfo):
                if not 0 <= index < len(tinfo.fields):
                    raise IndexError(f"tuple index {index} out of range for a tuple of {len(tinfo.fields)}")
                return tinfo.fields[index]
            return ObjectInfo()
        case Function():
            return expr.info
        case ExternFunc():
            return FuncInfo(None, ObjectInfo(), pure=False)
        case GlobalVar() | Op():
            return ObjectInfo()
    raise NotNormalizedError(
        f"{type(expr).__name__} has no struct info of its own; bind it to a var first (BlockBuilder.emit)"
    )


def is_leaf(expr: Expr) -> bool:
    """Leaves may appear as call arguments in normalized form."""
    return isinstance(expr, (Var, Constant, PrimValue, StringImm, ShapeExpr, GlobalVar, ExternFunc, Op))
