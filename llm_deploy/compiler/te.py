"""Tensor expressions: an op's lowering written as a few lines of math, turned into a PrimFunc.

    A = te.placeholder((n, 576), "float32", "A")
    k = te.reduce_axis(576, "k")
    C = te.compute((n, 1536), lambda i, j: te.sum(A[i, k] * W[k, j], axis=k), "C")
    func = te.create_prim_func([A, W, C])

Each `compute` becomes its own perfect loop nest storing one element per innermost iteration.
A reduction in the body gets a local accumulator inside that nest (init store, update loop,
final store), so the spatial loops stay perfect for the schedules. Computes that are not
parameters are intermediates, allocated for the whole function. Shapes may be symbolic: the
PrimFunc serves every value of its symbolic dims, which bind from its buffers' shapes (or come
in as scalar params when no buffer dim is that bare variable).
"""

from __future__ import annotations

import builtins
import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir
from llm_deploy.compiler.shape import IntLike, PrimExpr, SymVar
from llm_deploy.compiler.tir import Buffer, Stmt, Value


class TEError(ValueError):
    """A tensor expression that cannot become a PrimFunc; the message names the tensor."""


# ---------------------------------------------------------------------------------------------
# Tensors and axes


@dataclass(frozen=True, eq=False)
class Tensor:
    """A placeholder (`body is None`: an input) or the result of a compute over `axes`."""

    buffer: Buffer
    axes: tuple[SymVar, ...] = ()
    body: Value | None = None

    @property
    def name(self) -> str:
        return self.buffer.name

    @property
    def shape(self) -> tuple[PrimExpr, ...]:
        return self.buffer.shape

    @property
    def dtype(self) -> str:
        return self.buffer.dtype

    @property
    def ndim(self) -> int:
        return self.buffer.ndim

    @property
    def is_placeholder(self) -> bool:
        return self.body is None

    def __getitem__(self, indices: Any) -> TensorLoad:
        if not isinstance(indices, tuple):
            indices = (indices,)
        if len(indices) != self.ndim:
            raise TEError(f"{self.name} has {self.ndim} dims but is indexed with {len(indices)}")
        return TensorLoad(self.buffer, tuple(_as_index(i) for i in indices), self)

    def __repr__(self) -> str:
        kind = "placeholder" if self.is_placeholder else "compute"
        return f"te.{kind}({self.name}: {tuple(S.to_str(d) for d in self.shape)}, {self.dtype})"


@dataclass(frozen=True)
class IterVar:
    """A reduction axis: a loop variable with its extent. Index arithmetic reads its variable."""

    var: SymVar
    extent: PrimExpr

    def __add__(self, o: IntLike) -> PrimExpr:
        return self.var + _unwrap(o)

    def __radd__(self, o: IntLike) -> PrimExpr:
        return _unwrap(o) + self.var

    def __sub__(self, o: IntLike) -> PrimExpr:
        return self.var - _unwrap(o)

    def __rsub__(self, o: IntLike) -> PrimExpr:
        return _unwrap(o) - self.var

    def __mul__(self, o: IntLike) -> PrimExpr:
        return self.var * _unwrap(o)

    def __rmul__(self, o: IntLike) -> PrimExpr:
        return _unwrap(o) * self.var

    def __floordiv__(self, o: IntLike) -> PrimExpr:
        return self.var // _unwrap(o)

    def __mod__(self, o: IntLike) -> PrimExpr:
        return self.var % _unwrap(o)


def _unwrap(v: Any) -> Any:
    return v.var if isinstance(v, IterVar) else v


def _as_index(i: Any) -> PrimExpr | Value:
    """Indices are int expressions; a computed value (a loaded token id) becomes a let-bound var."""
    i = _unwrap(i)
    if isinstance(i, tir.TExpr):
        return i
    return S.const(i)


# The te-only value nodes subclass tir nodes, so that every tir helper (dtype_of, binary, cast)
# accepts them; create_prim_func replaces each by plain tir.


@dataclass(frozen=True, slots=True)
class TensorLoad(tir.Load):
    """`tensor[indices]`: knows its producer, so create_prim_func can find intermediates.

    An index may be a computed value (gather by token id); it is let-bound when lowered.
    """

    tensor: Tensor = field(default=None, compare=False)  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Reduce(tir.Load):
    """A reduction over `axes`; reads as its accumulator (`buffer`, a local of shape (1,))."""

    combiner: str = "sum"
    value: Value = None  # type: ignore[assignment]
    axes: tuple[IterVar, ...] = ()


@dataclass(frozen=True, slots=True)
class Conditional(tir.Select):
    """A lazy if/else: only the taken branch is evaluated (lowered to IfThenElse, not Select).

    Use it where the other branch would read out of bounds (concat, padding).
    """


# ---------------------------------------------------------------------------------------------
# Constructors


def placeholder(shape: Iterable[IntLike], dtype: str = "float32", name: str = "A") -> Tensor:
    return Tensor(Buffer(name, tuple(shape), dtype))


def compute(
    shape: Iterable[IntLike], fn: Callable[..., Any], name: str = "T", dtype: str | None = None
) -> Tensor:
    """The tensor whose element at `idx` is `fn(*idx)`; the index vars take fn's parameter names."""
    shape = S.as_prim(tuple(shape))
    axes = tuple(SymVar(n) for n in _axis_names(fn, len(shape)))
    body = tir.as_value(_unwrap(fn(*axes)))
    if dtype is not None:
        body = tir.cast(dtype, body)
    return Tensor(Buffer(name, shape, tir.dtype_of(body)), axes, body)


def _axis_names(fn: Callable[..., Any], ndim: int) -> list[str]:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) == ndim and len(set(positional)) == ndim:
        return positional
    return [f"i{k}" for k in range(ndim)]


def reduce_axis(extent: IntLike, name: str = "k") -> IterVar:
    return IterVar(SymVar(name), S.const(extent))


def if_then_else(cond: Value, then_value: Value | float | int, else_value: Value | float | int) -> Value:
    """Lazy select; must be the whole compute body (or a branch of another if_then_else)."""
    sel = tir.select(cond, then_value, else_value)
    return Conditional(sel.cond, sel.a, sel.b)


def _axes_of(axis: IterVar | Sequence[IterVar]) -> tuple[IterVar, ...]:
    axes = (axis,) if isinstance(axis, IterVar) else tuple(axis)
    if not axes or not all(isinstance(a, IterVar) for a in axes):
        raise TEError(f"a reduction needs reduce_axis(...) axes, got {axis!r}")
    return axes


def _reduce(combiner: str, value: Value | float | int, axis, dtype: str | None = None) -> Reduce:
    value = tir.as_value(value)
    acc_dtype = dtype or tir.dtype_of(value)
    if dtype is not None and combiner not in ("argmax", "argmin"):
        value = tir.cast(dtype, value)
    acc = Buffer("acc", (1,), acc_dtype, "local")
    return Reduce(acc, (S.IntImm(0),), combiner, value, _axes_of(axis))


def sum(value: Value | float | int, axis: IterVar | Sequence[IterVar], dtype: str | None = None) -> Reduce:  # noqa: A001
    """Sum over `axis`, accumulated in `dtype` (default: the value's dtype)."""
    return _reduce("sum", value, axis, dtype)


def max(value: Value, axis: IterVar | Sequence[IterVar]) -> Reduce:  # noqa: A001
    return _reduce("max", value, axis)


def min(value: Value, axis: IterVar | Sequence[IterVar]) -> Reduce:  # noqa: A001
    return _reduce("min", value, axis)


def prod(value: Value, axis: IterVar | Sequence[IterVar]) -> Reduce:
    return _reduce("prod", value, axis)


def argmax(value: Value, axis: IterVar, dtype: str = "int64") -> Reduce:
    """Index of the first maximum along one axis (numpy's tie rule)."""
    return _reduce("argmax", value, axis, dtype)


def argmin(value: Value, axis: IterVar, dtype: str = "int64") -> Reduce:
    return _reduce("argmin", value, axis, dtype)


def min_value(dtype: str) -> tir.Imm:
    """The identity of max: -inf for floats, the smallest integer otherwise."""
    if dtype in tir.FLOAT_DTYPES:
        return tir.Imm(-math.inf, dtype)
    if dtype == "bool":
        return tir.Imm(False, dtype)
    bits = int("".join(c for c in dtype if c.isdigit()))
    return tir.Imm(0 if dtype.startswith("uint") else -(2 ** (bits - 1)), dtype)


def max_value(dtype: str) -> tir.Imm:
    if dtype in tir.FLOAT_DTYPES:
        return tir.Imm(math.inf, dtype)
    if dtype == "bool":
        return tir.Imm(True, dtype)
    bits = int("".join(c for c in dtype if c.isdigit()))
    return tir.Imm(2**bits - 1 if dtype.startswith("uint") else 2 ** (bits - 1) - 1, dtype)


def _zero(dtype: str) -> tir.Imm:
    return tir.Imm(0.0 if dtype in tir.FLOAT_DTYPES else 0, dtype)


def _one(dtype: str) -> tir.Imm:
    return tir.Imm(1.0 if dtype in tir.FLOAT_DTYPES else 1, dtype)


# combiner -> (identity of the accumulator's dtype, update(acc, value)); the algebra is the
# fold acc = update(acc, value[k]) over the reduction axes, starting from the identity.
COMBINERS: dict[str, tuple[Callable[[str], tir.Imm], Callable[[Value, Value], Value]]] = {
    "sum": (_zero, lambda acc, v: acc + v),
    "prod": (_one, lambda acc, v: acc * v),
    "max": (min_value, lambda acc, v: tir.binary("max", acc, v)),
    "min": (max_value, lambda acc, v: tir.binary("min", acc, v)),
}


# ---------------------------------------------------------------------------------------------
# te -> tir


def create_prim_func(
    tensors: Sequence[Tensor], scalar_params: Sequence[SymVar] = (), attrs: dict[str, Any] | None = None
) -> tir.PrimFunc:
    """A PrimFunc whose params are `tensors` (placeholders are inputs, computes outputs), in order.

    Computes reachable from the outputs that are not params become intermediates. Symbolic vars
    that no param buffer has as a bare dim and that are not in `scalar_params` are appended as
    scalar params, sorted by name: the caller passes them as call_tir's shape_args.
    """
    names = [t.name for t in tensors]
    if len(set(map(id, tensors))) != len(tensors):
        raise TEError(f"create_prim_func: a tensor is listed twice in {names}")
    outputs = [t for t in tensors if not t.is_placeholder]
    if not outputs:
        raise TEError(f"create_prim_func: no compute among {names}; nothing to write")
    order = _topo_order(outputs)
    params = set(map(id, tensors))
    for t in order:
        for dep in _producers(t.body):
            if dep.is_placeholder and id(dep) not in params:
                raise TEError(f"compute {t.name} reads placeholder {dep.name}, which is not a parameter")
    intermediates = [t for t in order if id(t) not in params]

    lowering = _Lowering()
    buffers = {id(t): lowering.new_buffer(t.buffer) for t in [*tensors, *intermediates]}
    scalars = list(scalar_params)
    lowering.reserved = _shape_vars(buffers.values()) | {v.name for v in scalars}
    for t in order:
        lowering.reserved |= _compute_free_vars(t)
    lowering.buffers = buffers
    body = tir.seq(*(lowering.compute_nest(t) for t in order))
    for t in reversed(intermediates):
        body = tir.Allocate(buffers[id(t)], body)

    param_buffers = [buffers[id(t)] for t in tensors]
    bound = {d.name for b in param_buffers for d in b.shape if isinstance(d, SymVar)}
    used = _shape_vars(list(buffers.values())) | _stmt_free_vars(body)
    missing = sorted(used - bound - {v.name for v in scalars})
    scalars += [SymVar(name) for name in missing]
    return tir.PrimFunc((*param_buffers, *scalars), body, attrs or {})


def _topo_order(outputs: Sequence[Tensor]) -> list[Tensor]:
    order: list[Tensor] = []
    state: dict[int, str] = {}

    def visit(t: Tensor) -> None:
        if t.is_placeholder or state.get(id(t)) == "done":
            return
        if state.get(id(t)) == "active":
            raise TEError(f"compute {t.name} depends on itself")
        state[id(t)] = "active"
        for dep in _producers(t.body):
            visit(dep)
        state[id(t)] = "done"
        order.append(t)

    for t in outputs:
        visit(t)
    return order


def _producers(e: Any) -> list[Tensor]:
    """The tensors a value reads, in first-read order."""
    found: dict[int, Tensor] = {}

    def walk(e: Any) -> None:
        if isinstance(e, TensorLoad):
            found.setdefault(id(e.tensor), e.tensor)
        for child in _children(e):
            walk(child)

    walk(e)
    return list(found.values())


def _children(e: Any) -> tuple[Any, ...]:
    match e:
        case Reduce():
            return (e.value,)
        case tir.Load(_, indices):
            return tuple(i for i in indices if isinstance(i, tir.TExpr))
        case tir.Binary(_, a, b):
            return (a, b)
        case tir.Intrin(_, args):
            return tuple(args)
        case tir.Cast(_, v):
            return (v,)
        case tir.Select(c, a, b):
            return (c, a, b)
    return ()


def _compute_free_vars(t: Tensor) -> set[str]:
    """Symbolic vars a compute's body reads besides its own spatial and reduction axes."""
    reductions: list[Reduce] = []
    _collect_reductions(t.body, reductions, t.name)
    own = {a.name for a in t.axes} | {ax.var.name for r in reductions for ax in r.axes}
    extents = builtins.set().union(*(S.free_vars(ax.extent) for r in reductions for ax in r.axes))
    return (_value_free_vars(t.body) | extents) - own


def _shape_vars(buffers: Iterable[Buffer]) -> set[str]:
    out: set[str] = set()
    for b in buffers:
        for d in b.shape:
            out |= S.free_vars(d)
    return out


def _value_free_vars(e: Value) -> set[str]:
    if isinstance(e, PrimExpr):
        return S.free_vars(e)
    out: set[str] = set()
    if isinstance(e, tir.Load):
        for i in e.indices:
            out |= S.free_vars(i) if isinstance(i, PrimExpr) else set()
    for c in _children(e):
        out |= _value_free_vars(c)
    return out


def _stmt_free_vars(s: Stmt) -> set[str]:
    """Symbolic vars a statement reads that it does not bind itself (loop and let vars)."""
    match s:
        case tir.For(var, extent, body):
            return S.free_vars(extent) | (_stmt_free_vars(body) - {var.name})
        case tir.Store(buffer, indices, value):
            out = _value_free_vars(value) | _shape_vars([buffer])
            for i in indices:
                out |= S.free_vars(i)
            return out
        case tir.Let(var, value, body):
            return _value_free_vars(value) | (_stmt_free_vars(body) - {var.name})
        case tir.IfThenElse(cond, then_body, else_body):
            out = _value_free_vars(cond) | _stmt_free_vars(then_body)
            return out | (_stmt_free_vars(else_body) if else_body is not None else set())
        case tir.Seq(stmts):
            return builtins.set().union(*(_stmt_free_vars(x) for x in stmts))
        case tir.Allocate(buffer, body):
            return _shape_vars([buffer]) | _stmt_free_vars(body)
    return set()


@dataclass
class _Lowering:
    """State of one create_prim_func: final buffers, names in use, the loop vars' renaming."""

    reserved: set[str] = field(default_factory=set)
    buffers: dict[int, Buffer] = field(default_factory=dict)
    buffer_names: set[str] = field(default_factory=set)
    rename: dict[str, PrimExpr] = field(default_factory=dict)
    # per compute nest: accumulators of its reductions, and the loop/let names it uses
    accs: dict[int, tuple[Buffer, ...]] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)

    def new_buffer(self, b: Buffer) -> Buffer:
        name = self.fresh_buffer_name(b.name)
        return Buffer(name, b.shape, b.dtype, b.scope)

    def fresh_buffer_name(self, hint: str) -> str:
        name, i = hint, 0
        while name in self.buffer_names:
            i += 1
            name = f"{hint}{i}"
        self.buffer_names.add(name)
        return name

    def fresh_var(self, hint: str, taken: set[str]) -> SymVar:
        name, i = hint, 0
        while name in self.reserved or name in taken:
            i += 1
            name = f"{hint}{i}"
        taken.add(name)
        return SymVar(name)

    # -- one loop nest per compute
    def compute_nest(self, t: Tensor) -> Stmt:
        taken: set[str] = set()
        self.rename = {}
        axes = []
        for a in t.axes:
            v = self.fresh_var(a.name, taken)
            self.rename[a.name] = v
            axes.append(v)
        out = self.buffers[id(t)]
        assert t.body is not None
        reductions: list[Reduce] = []
        _collect_reductions(t.body, reductions, t.name)
        accs: dict[int, tuple[Buffer, ...]] = {}
        for r in reductions:
            acc = self.acc_buffer(r, t.name)
            accs[id(r)] = acc
            for ax in r.axes:
                self.rename[ax.var.name] = self.fresh_var(ax.var.name, taken)
        self.accs = accs
        self.taken = taken
        stmts = [self.reduction(r) for r in reductions]
        stmts.append(self.store(out, tuple(axes), t.body))
        body = tir.seq(*stmts)
        for r in reversed(reductions):
            for acc in reversed(accs[id(r)]):
                body = tir.Allocate(acc, body)
        for v, extent in reversed(list(zip(axes, t.shape))):
            body = tir.For(v, extent, body)
        return body

    def acc_buffer(self, r: Reduce, owner: str) -> tuple[Buffer, ...]:
        acc = Buffer(self.fresh_buffer_name(f"{owner}_acc"), (1,), r.buffer.dtype, "local")
        if r.combiner in ("argmax", "argmin"):
            value_dtype = tir.dtype_of(r.value)
            best = Buffer(self.fresh_buffer_name(f"{owner}_best"), (1,), value_dtype, "local")
            return (acc, best)
        return (acc,)

    def reduction(self, r: Reduce) -> Stmt:
        """acc = identity; for k...: acc = update(acc, value); the compute's store reads acc."""
        acc = self.accs[id(r)]
        a0 = acc[0][0]
        loop_vars = [self.rename[ax.var.name] for ax in r.axes]
        if r.combiner in ("argmax", "argmin"):
            if len(r.axes) != 1:
                raise TEError(f"{r.combiner} reduces over exactly one axis, got {len(r.axes)}")
            best = acc[1]
            vdtype = best.dtype
            init = tir.seq(
                tir.Store(acc[0], (0,), _zero(acc[0].dtype)),
                tir.Store(best, (0,), min_value(vdtype) if r.combiner == "argmax" else max_value(vdtype)),
            )
            update = self.with_lets(
                r.value,
                lambda v: tir.IfThenElse(
                    (v > best[0]) if r.combiner == "argmax" else (v < best[0]),
                    tir.seq(
                        tir.Store(best, (0,), v),
                        tir.Store(acc[0], (0,), tir.cast(acc[0].dtype, loop_vars[0])),
                    ),
                ),
            )
        else:
            if r.combiner not in COMBINERS:
                raise TEError(f"unknown reduction {r.combiner!r}; expected one of {sorted(COMBINERS)}")
            identity, combine = COMBINERS[r.combiner]
            init = tir.Store(acc[0], (0,), identity(acc[0].dtype))
            update = self.with_lets(r.value, lambda v: tir.Store(acc[0], (0,), combine(a0, v)))
        for v, ax in reversed(list(zip(loop_vars, r.axes))):
            update = tir.For(v, S.substitute(ax.extent, self.rename), update)
        return tir.seq(init, update)

    def store(self, out: Buffer, axes: tuple[SymVar, ...], body: Value) -> Stmt:
        if isinstance(body, Conditional):
            cond = body.cond
            return self.with_lets(
                cond,
                lambda c: tir.IfThenElse(c, self.store(out, axes, body.a), self.store(out, axes, body.b)),
            )
        return self.with_lets(body, lambda v: tir.Store(out, axes, tir.cast(out.dtype, v)))

    def with_lets(self, value: Value, make: Callable[[Value], Stmt]) -> Stmt:
        lets: list[tuple[SymVar, Value]] = []
        v = self.value(value, lets)
        stmt = make(v)
        for var, val in reversed(lets):
            stmt = tir.Let(var, val, stmt)
        return stmt

    def value(self, e: Value, lets: list[tuple[SymVar, Value]]) -> Value:
        """te value -> tir value; computed indices are appended to `lets` as (var, int64 value)."""
        match e:
            case PrimExpr():
                return S.substitute(e, self.rename) if self.rename else e
            case Reduce():
                return tir.Load(self.accs[id(e)][0], (S.IntImm(0),))
            case tir.Load(buffer, indices):
                target = self.buffers.get(id(e.tensor), buffer) if isinstance(e, TensorLoad) else buffer
                new_indices = []
                for i in indices:
                    if isinstance(i, tir.TExpr):
                        var = self.fresh_var("idx", self.taken)
                        lets.append((var, tir.cast("int64", self.value(i, lets))))
                        new_indices.append(var)
                    else:
                        new_indices.append(self.value(i, lets))
                return tir.Load(target, tuple(new_indices))
            case Conditional():
                raise TEError(
                    "if_then_else must be the whole compute body (or a branch of one); "
                    f"found one nested in an expression: {e!r}"
                )
            case tir.Binary(op, a, b):
                return tir.Binary(op, self.value(a, lets), self.value(b, lets))
            case tir.Intrin(name, args):
                return tir.Intrin(name, tuple(self.value(a, lets) for a in args))
            case tir.Cast(dtype, v):
                return tir.Cast(dtype, self.value(v, lets))
            case tir.Select(c, a, b):
                return tir.Select(self.value(c, lets), self.value(a, lets), self.value(b, lets))
            case tir.Imm():
                return e
        raise TEError(f"not a tensor-expression value: {e!r}")


def _collect_reductions(e: Any, out: list[Reduce], owner: str, inside: bool = False) -> None:
    if isinstance(e, Reduce):
        if inside:
            raise TEError(f"compute {owner}: a reduction inside another reduction's value is not supported")
        if all(r is not e for r in out):
            out.append(e)
        _collect_reductions(e.value, out, owner, True)
        return
    for c in _children(e):
        _collect_reductions(c, out, owner, inside)
