"""Structure info: what the compiler knows statically about a value (Relax's StructInfo).

A tensor may have a known shape of symbolic expressions, only a known rank, or nothing. The
more precise info is *derived* from the less precise one (its base): `Tensor[(n, 4), "f32"]`
is a special case of `Tensor[ndim=2, "f32"]`, which is a special case of `Tensor`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from llm_deploy.compiler import shape as S
from llm_deploy.compiler.shape import Analyzer, IntLike, PrimExpr

DTYPES = (
    "float32",
    "float16",
    "bfloat16",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
)


class StructInfo:
    __slots__ = ()

    def __str__(self) -> str:
        from llm_deploy.compiler.printer import info_to_str

        return info_to_str(self)


@dataclass(frozen=True, slots=True)
class ObjectInfo(StructInfo):
    """Any runtime value (a KV cache, a string): the base of every other info."""


@dataclass(frozen=True, slots=True)
class PrimInfo(StructInfo):
    """A scalar; `value` is known when it equals a symbolic expression."""

    dtype: str = "int64"
    value: PrimExpr | None = None


@dataclass(frozen=True, slots=True)
class ShapeInfo(StructInfo):
    """A shape value (list of integers); `values` known, or only `ndim` (-1: unknown)."""

    values: tuple[PrimExpr, ...] | None = None
    ndim: int = -1

    def __post_init__(self) -> None:
        if self.values is not None:
            object.__setattr__(self, "values", S.as_prim(self.values))
            object.__setattr__(self, "ndim", len(self.values))


@dataclass(frozen=True, slots=True)
class TensorInfo(StructInfo):
    """A tensor: `shape` known (symbolic expressions), or only `ndim` (-1: unknown); dtype or None."""

    shape: tuple[PrimExpr, ...] | None = None
    dtype: str | None = None
    ndim: int = -1

    def __post_init__(self) -> None:
        if self.shape is not None:
            object.__setattr__(self, "shape", S.as_prim(self.shape))
            object.__setattr__(self, "ndim", len(self.shape))
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {', '.join(DTYPES)}")


@dataclass(frozen=True, slots=True)
class TupleInfo(StructInfo):
    fields: tuple[StructInfo, ...]


@dataclass(frozen=True, slots=True)
class FuncInfo(StructInfo):
    """A function's signature; `params` None means any arguments (an opaque callable)."""

    params: tuple[StructInfo, ...] | None
    ret: StructInfo
    pure: bool = True


def tensor(
    shape: Iterable[IntLike] | None = None, dtype: str | None = "float32", ndim: int = -1
) -> TensorInfo:
    return TensorInfo(None if shape is None else tuple(shape), dtype, ndim)


# ---------------------------------------------------------------------------------------------
# The base/derived relation.


def is_base_of(base: StructInfo, derived: StructInfo, analyzer: Analyzer | None = None) -> bool:
    """True when every value described by `derived` is also described by `base`.

    Symbolic dims compare by proof: `(n, 4)` is a base of `(n, 2 * 2)`; `(n, 4)` is not a
    base of `(m, 4)` unless the analyzer proves `n == m`.
    """
    analyzer = analyzer or Analyzer()
    match base:
        case ObjectInfo():
            return True
        case PrimInfo(dtype, value):
            if not isinstance(derived, PrimInfo) or derived.dtype != dtype:
                return False
            return value is None or (
                derived.value is not None and analyzer.can_prove_equal(value, derived.value)
            )
        case ShapeInfo(values, ndim):
            if not isinstance(derived, ShapeInfo):
                return False
            if ndim != -1 and derived.ndim != ndim:
                return False
            return values is None or (
                derived.values is not None and _dims_equal(values, derived.values, analyzer)
            )
        case TensorInfo(shape, dtype, ndim):
            if not isinstance(derived, TensorInfo):
                return False
            if dtype is not None and derived.dtype != dtype:
                return False
            if ndim != -1 and derived.ndim != ndim:
                return False
            return shape is None or (
                derived.shape is not None and _dims_equal(shape, derived.shape, analyzer)
            )
        case TupleInfo(fields):
            return (
                isinstance(derived, TupleInfo)
                and len(derived.fields) == len(fields)
                and all(is_base_of(b, d, analyzer) for b, d in zip(fields, derived.fields))
            )
        case FuncInfo(params, ret, pure):
            if not isinstance(derived, FuncInfo) or (pure and not derived.pure):
                return False
            if params is not None:
                # Parameters are contravariant: the derived function must accept everything the base does.
                if derived.params is None or len(derived.params) != len(params):
                    return False
                if not all(is_base_of(d, b, analyzer) for b, d in zip(params, derived.params)):
                    return False
            return is_base_of(ret, derived.ret, analyzer)
    raise TypeError(f"not a struct info: {base!r}")


def _dims_equal(a: tuple[PrimExpr, ...], b: tuple[PrimExpr, ...], analyzer: Analyzer) -> bool:
    return len(a) == len(b) and all(analyzer.can_prove_equal(x, y) for x, y in zip(a, b))


def free_vars(info: StructInfo) -> set[str]:
    """Symbolic variables mentioned anywhere in `info`."""
    match info:
        case TensorInfo(shape=tuple() as dims) | ShapeInfo(values=tuple() as dims):
            out: set[str] = set()
            for d in dims:
                out |= S.free_vars(d)
            return out
        case PrimInfo(value=PrimExpr() as v):
            return S.free_vars(v)
        case TupleInfo(fields):
            return set().union(*(free_vars(f) for f in fields)) if fields else set()
        case FuncInfo(params, ret, _):
            out = free_vars(ret)
            for p in params or ():
                out |= free_vars(p)
            return out
    return set()


def erase(info: StructInfo, keep: set[str] | frozenset[str]) -> StructInfo:
    """Forget the dims that mention symbolic variables outside `keep` (they left their scope).

    The result is a base of `info`: a shape with an out-of-scope variable degrades to its rank.
    A function signature binds the variables of its parameters itself (they are matched from the
    arguments at each call, as in Relax), so those stay, in the parameters and in the return.
    """
    match info:
        case TensorInfo(shape, dtype, ndim) if shape is not None:
            if all(S.free_vars(d) <= keep for d in shape):
                return info
            return TensorInfo(None, dtype, ndim)
        case ShapeInfo(values, ndim) if values is not None:
            if all(S.free_vars(d) <= keep for d in values):
                return info
            return ShapeInfo(None, ndim)
        case PrimInfo(dtype, value) if value is not None:
            return info if S.free_vars(value) <= keep else PrimInfo(dtype)
        case TupleInfo(fields):
            return TupleInfo(tuple(erase(f, keep) for f in fields))
        case FuncInfo(params, ret, pure):
            # Erasing a parameter would widen what the function accepts, and parameters are
            # contravariant: the result would no longer be a base of `info`.
            bound = set(keep).union(*(free_vars(p) for p in params or ()))
            return FuncInfo(params, erase(ret, bound), pure)
    return info


def substitute(info: StructInfo, mapping: Mapping[str, IntLike]) -> StructInfo:
    """Replace symbolic variables by expressions throughout `info`."""
    match info:
        case TensorInfo(shape, dtype, ndim) if shape is not None:
            return TensorInfo(tuple(S.substitute(d, mapping) for d in shape), dtype, ndim)
        case ShapeInfo(values, ndim) if values is not None:
            return ShapeInfo(tuple(S.substitute(d, mapping) for d in values), ndim)
        case PrimInfo(dtype, value) if value is not None:
            return PrimInfo(dtype, S.substitute(value, mapping))
        case TupleInfo(fields):
            return TupleInfo(tuple(substitute(f, mapping) for f in fields))
        case FuncInfo(params, ret, pure):
            return FuncInfo(
                None if params is None else tuple(substitute(p, mapping) for p in params),
                substitute(ret, mapping),
                pure,
            )
    return info


def lca(a: StructInfo, b: StructInfo, analyzer: Analyzer | None = None) -> StructInfo:
    """The most precise info that is a base of both (used to join the branches of an If)."""
    analyzer = analyzer or Analyzer()
    if is_base_of(a, b, analyzer):
        return a
    if is_base_of(b, a, analyzer):
        return b
    match a, b:
        case TensorInfo(), TensorInfo():
            dtype = a.dtype if a.dtype == b.dtype else None
            ndim = a.ndim if a.ndim == b.ndim else -1
            shape = a.shape if _known_equal(a.shape, b.shape, analyzer) else None
            return TensorInfo(shape, dtype, ndim)
        case ShapeInfo(), ShapeInfo():
            return ShapeInfo(None, a.ndim if a.ndim == b.ndim else -1)
        case PrimInfo(), PrimInfo() if a.dtype == b.dtype:
            return PrimInfo(a.dtype)
        case TupleInfo(), TupleInfo() if len(a.fields) == len(b.fields):
            return TupleInfo(tuple(lca(x, y, analyzer) for x, y in zip(a.fields, b.fields)))
        case FuncInfo(), FuncInfo():
            # Parameters are contravariant, so only the same ones stay; otherwise an opaque
            # callable (any arguments) returning what either may return.
            params = a.params if a.params == b.params else None
            return FuncInfo(params, lca(a.ret, b.ret, analyzer), a.pure and b.pure)
    return ObjectInfo()


def _known_equal(a: tuple[PrimExpr, ...] | None, b: tuple[PrimExpr, ...] | None, analyzer: Analyzer) -> bool:
    return a is not None and b is not None and _dims_equal(a, b, analyzer)
