"""Run a PrimFunc on numpy arrays: the reference semantics of the loop level.

A PrimFunc is translated once (cached) into the source of a Python function over numpy and
executed; that is an interpreter with the dispatch done ahead of time, an order of magnitude
faster than walking the tree per element, which lets tests use real shapes. The rules:

- Buffer params are numpy arrays (inputs then outputs, written in place); scalar params ints.
  Symbolic dims bind from the first buffer that has them as a bare dim; every buffer's shape
  and dtype is then checked.
- Every loop kind runs serially. A perfect loop nest ending in one Store whose value does not
  read the stored buffer runs as one numpy expression over index grids (same result: no
  iteration reads what another writes).
- Values are numpy scalars of their tir dtype (float32 arithmetic stays float32). Integer `div`
  truncates toward zero (C, LLVM sdiv); `floordiv`/`floormod` floor. `round` is half to even.
  Select evaluates both operands, as compiled code does; an index below zero is an error
  (numpy would silently wrap it), as is one past the end. Allocated float buffers start NaN so
  that reading before writing shows.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir
from llm_deploy.compiler.shape import PrimExpr, SymVar


class TIRRuntimeError(RuntimeError):
    """A PrimFunc that failed on its inputs: wrong shapes, out-of-bounds access, unbound vars."""


def run(func: tir.PrimFunc, *args: Any, name: str = "prim_func", vectorize: bool = True) -> None:
    """Execute `func` on `args` (buffers as numpy arrays, scalars as ints); outputs in place."""
    compile_prim_func(func, name, vectorize)(*args)


@functools.lru_cache(maxsize=512)
def compile_prim_func(func: tir.PrimFunc, name: str = "prim_func", vectorize: bool = True):
    """A Python callable `kernel(*buffers, *scalars)` with the semantics of `func`.

    `vectorize=False` runs every loop element by element (tests compare the two paths)."""
    source = prim_func_source(func, name, vectorize)
    namespace = dict(_RUNTIME)
    try:
        exec(compile(source, f"<tir {name}>", "exec"), namespace)  # noqa: S102  our own generated code
    except SyntaxError as e:  # pragma: no cover - a bug in this file, shown with the source
        raise RuntimeError(f"generated source for {name} does not compile: {e}\n{source}") from e
    kernel = namespace["kernel"]

    @functools.wraps(kernel)
    def call(*args: Any) -> None:
        try:
            with np.errstate(all="ignore"):  # IEEE results (inf, nan) as compiled code gives them
                kernel(*args)
        except IndexError as e:
            raise TIRRuntimeError(f"{name}: {e}") from None

    call.source = source  # type: ignore[attr-defined]
    return call


def prim_func_source(func: tir.PrimFunc, name: str = "prim_func", vectorize: bool = True) -> str:
    return _Gen(func, name, vectorize).function()


# ---------------------------------------------------------------------------------------------
# Runtime helpers the generated code calls (its only globals besides np).


def _tdiv(a: Any, b: Any) -> Any:
    q = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -q, q).astype(np.result_type(a, b))[()]


def _check_rank(name: str, arr: Any, ndim: int) -> None:
    if not isinstance(arr, np.ndarray):
        raise TIRRuntimeError(f"buffer {name}: expected a numpy array, got {type(arr).__name__}")
    if arr.ndim != ndim:
        raise TIRRuntimeError(f"buffer {name}: expected rank {ndim}, got shape {arr.shape}")


def _check_shape(name: str, arr: np.ndarray, expected: tuple[int, ...], dtype: str) -> None:
    if arr.shape != expected:
        raise TIRRuntimeError(f"buffer {name}: expected shape {expected}, got {arr.shape}")
    if str(arr.dtype) != dtype:
        raise TIRRuntimeError(f"buffer {name}: expected dtype {dtype}, got {arr.dtype}")


def _nonneg(i: Any, where: str) -> Any:
    if np.any(np.asarray(i) < 0):
        raise TIRRuntimeError(f"negative index {np.min(i)} in {where}")
    return i


def _store(buf: np.ndarray, indices: tuple, value: Any) -> None:
    """buf[indices] = value over broadcast index grids (duplicates: the last write wins)."""
    parts = np.broadcast_arrays(*indices, np.asarray(value))
    buf[tuple(parts[:-1])] = parts[-1]


def _alloc(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return np.full(shape, np.nan, dtype)
    return np.zeros(shape, dtype)


def _select(c: Any, a: Any, b: Any) -> Any:
    return a if c else b


_FOLDS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _fold(op: str, acc: Any, values: Any, grid: tuple) -> Any:
    """acc op v[0] op v[1] ... in row-major (serial) order; add and mul accumulate sequentially,
    as the loop does, not pairwise."""
    shape = np.broadcast_shapes(*(np.shape(g) for g in grid))
    seq = np.broadcast_to(np.asarray(values), shape).ravel()
    acc = np.asarray(acc)
    seq = np.concatenate((acc.reshape(1), seq.astype(acc.dtype, copy=False)))
    ufunc = _FOLDS[op]
    if op in ("add", "mul"):
        return ufunc.accumulate(seq)[-1]
    return ufunc.reduce(seq)


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _erf_typed(x: Any) -> Any:
    return _erf(x).astype(np.asarray(x).dtype)[()]


def _rsqrt(x: Any) -> Any:
    return (np.asarray(1, dtype=np.asarray(x).dtype) / np.sqrt(x))[()]


def _sigmoid(x: Any) -> Any:
    one = np.asarray(1, dtype=np.asarray(x).dtype)
    return (one / (one + np.exp(-x)))[()]


_RUNTIME: dict[str, Any] = {
    "np": np,
    "_tdiv": _tdiv,
    "_check_rank": _check_rank,
    "_check_shape": _check_shape,
    "_nonneg": _nonneg,
    "_store": _store,
    "_fold": _fold,
    "_alloc": _alloc,
    "_select": _select,
    "_erf": _erf_typed,
    "_rsqrt": _rsqrt,
    "_sigmoid": _sigmoid,
    "TIRRuntimeError": TIRRuntimeError,
}

# Binary ops as Python operators: numpy arrays and scalars read them the same way.
_OPERATORS = {
    "add": "+", "sub": "-", "mul": "*", "floordiv": "//", "floormod": "%",
    "lt": "<", "le": "<=", "eq": "==", "ne": "!=", "gt": ">", "ge": ">=",
    "and": "&", "or": "|", "shl": "<<", "shr": ">>", "bitand": "&", "bitor": "|", "bitxor": "^",
}  # fmt: skip
_BINARY_CALLS = {"min": "np.minimum", "max": "np.maximum", "pow": "np.power"}
_INTRINSICS = {
    "exp": "np.exp", "log": "np.log", "sqrt": "np.sqrt", "rsqrt": "_rsqrt", "tanh": "np.tanh",
    "sigmoid": "_sigmoid", "abs": "np.abs", "neg": "np.negative", "floor": "np.floor",
    "ceil": "np.ceil", "cos": "np.cos", "sin": "np.sin", "erf": "_erf", "not": "np.logical_not",
    "round": "np.round",
}  # fmt: skip


class _Gen:
    """Generates the kernel's source; `scope` maps tir names to Python identifiers."""

    def __init__(self, func: tir.PrimFunc, name: str, vectorize: bool = True):
        self.func = func
        self.name = name
        self.allow_vector = vectorize
        self.lines: list[str] = []
        self.consts: dict[tuple[str, str], tuple[str, str]] = {}  # (value, dtype) -> (ident, expr)
        self.idents: set[str] = set(_RUNTIME) | {"kernel"}
        self.vars: dict[str, str] = {}  # symbolic / loop / let var name -> identifier
        self.bufs: dict[str, str] = {}  # buffer name -> identifier
        self.extents: dict[str, PrimExpr] = {}  # loop var -> extent
        self.let_vars: set[str] = set()  # let-bound (loaded) values may be negative
        self.vector: bool = False

    def fresh(self, prefix: str, name: str) -> str:
        base = prefix + "".join(c if c.isalnum() or c == "_" else "_" for c in name)
        ident, i = base, 0
        while ident in self.idents:
            i += 1
            ident = f"{base}_{i}"
        self.idents.add(ident)
        return ident

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    # -- the function
    def function(self) -> str:
        params = []
        buffers, scalars = [], []
        for p in self.func.params:
            if isinstance(p, tir.Buffer):
                ident = self.fresh("b_", p.name)
                self.bufs[p.name] = ident
                buffers.append((p, ident))
            else:
                ident = self.fresh("v_", p.name)
                self.vars[p.name] = ident
                scalars.append(ident)
            params.append(ident)
        self.emit(1, f"if len(_args) != {len(params)}:")
        self.emit(
            2,
            f"raise TIRRuntimeError('{self.name} takes {len(buffers)} buffer(s) and {len(scalars)} "
            f"scalar(s), got %d argument(s)' % len(_args))",
        )
        self.emit(1, f"({', '.join(params)}{',' if len(params) == 1 else ''}) = _args")
        for p, ident in buffers:
            self.emit(1, f"_check_rank({p.name!r}, {ident}, {p.ndim})")
        for ident in scalars:
            self.emit(1, f"{ident} = int({ident})")
        for p, ident in buffers:
            for k, d in enumerate(p.shape):
                if isinstance(d, SymVar) and d.name not in self.vars:
                    v = self.fresh("v_", d.name)
                    self.vars[d.name] = v
                    self.emit(1, f"{v} = {ident}.shape[{k}]")
        for p, ident in buffers:
            self.emit(1, f"_check_shape({p.name!r}, {ident}, {self.shape_tuple(p)}, {p.dtype!r})")
        self.stmt(self.func.body, 1)
        header = ["def kernel(*_args):"]
        consts = [f"{ident} = {expr}" for ident, expr in self.consts.values()]
        return "\n".join([*consts, *header, *self.lines]) + "\n"

    def shape_tuple(self, b: tir.Buffer) -> str:
        dims = [self.index(d) for d in b.shape]
        return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"

    # -- statements
    def stmt(self, s: tir.Stmt, depth: int) -> None:
        match s:
            case tir.For():
                if not (self.allow_vector and self.try_vector_nest(s, depth)):
                    self.scalar_loop(s, depth)
            case tir.Store(buffer, indices, value):
                self.emit(
                    depth, f"{self.buf(buffer)}[{self.subscript(buffer, indices)}] = {self.value(value)}"
                )
            case tir.Let(var, value, body):
                outer = self.vars.get(var.name)
                ident = self.fresh("v_", var.name)
                self.emit(depth, f"{ident} = int({self.value(value)})")
                self.vars[var.name] = ident
                was_let = var.name in self.let_vars
                self.let_vars.add(var.name)
                self.stmt(body, depth)
                self.restore(self.vars, var.name, outer)
                if not was_let:
                    self.let_vars.discard(var.name)
            case tir.IfThenElse(cond, then_body, else_body):
                self.emit(depth, f"if {self.value(cond)}:")
                self.stmt(then_body, depth + 1)
                if else_body is not None:
                    self.emit(depth, "else:")
                    self.stmt(else_body, depth + 1)
            case tir.Seq(stmts):
                for x in stmts:
                    self.stmt(x, depth)
                if not stmts:
                    self.emit(depth, "pass")
            case tir.Allocate(buffer, body):
                outer = self.bufs.get(buffer.name)
                ident = self.fresh("b_", buffer.name)
                self.emit(depth, f"{ident} = _alloc({self.shape_tuple(buffer)}, {buffer.dtype!r})")
                self.bufs[buffer.name] = ident
                self.stmt(body, depth)
                self.restore(self.bufs, buffer.name, outer)
            case tir.Barrier():
                self.emit(depth, "pass")
            case _:
                raise TypeError(f"not a tir statement: {s!r}")

    @staticmethod
    def restore(table: dict[str, str], key: str, outer: str | None) -> None:
        if outer is None:
            table.pop(key, None)
        else:
            table[key] = outer

    def scalar_loop(self, s: tir.For, depth: int) -> None:
        outer, outer_extent = self.vars.get(s.var.name), self.extents.get(s.var.name)
        ident = self.fresh("v_", s.var.name)
        self.emit(depth, f"for {ident} in range({self.index(s.extent)}):")
        self.vars[s.var.name] = ident
        self.extents[s.var.name] = s.extent
        self.stmt(s.body, depth + 1)
        self.restore(self.vars, s.var.name, outer)
        if outer_extent is None:
            self.extents.pop(s.var.name, None)
        else:
            self.extents[s.var.name] = outer_extent

    def try_vector_nest(self, s: tir.For, depth: int) -> bool:
        """A perfect nest ending in one Store, run as numpy over index grids when that gives the
        serial result: a store that does not read its own buffer, or a fold
        `acc[c] = acc[c] op v` (op add / mul / max / min, c the same element every iteration,
        v not reading acc), folded in iteration order."""
        loops: list[tir.For] = []
        node: tir.Stmt = s
        while isinstance(node, tir.For):
            loops.append(node)
            node = node.body
        if not isinstance(node, tir.Store):
            return False
        loop_names = {f.var.name for f in loops}
        if any(S.free_vars(f.extent) & loop_names for f in loops):
            return False  # a triangular nest: extents depend on outer loops
        fold = _fold_of(node, loop_names)
        if fold is None and _reads(node.value, node.buffer.name):
            return False
        if fold is not None and _const_trip_count(loops) < _MIN_FOLD:
            return False  # a short fold runs faster element by element
        saved = dict(self.vars), dict(self.extents), self.vector
        for k, f in enumerate(loops):
            ident = self.fresh("v_", f.var.name)
            shape = ["1"] * len(loops)
            shape[k] = "-1"
            self.emit(depth, f"{ident} = np.arange({self.index(f.extent)}).reshape({', '.join(shape)})")
            self.vars[f.var.name] = ident
            self.extents[f.var.name] = f.extent
        self.vector = True
        buf = self.buf(node.buffer)
        if fold is None:
            idx = ", ".join(self.checked_index(i, node.buffer, k) for k, i in enumerate(node.indices))
            self.emit(depth, f"_store({buf}, ({idx}{',' if idx else ''}), {self.value(node.value)})")
        else:
            op, value = fold
            grid = ", ".join(self.vars[f.var.name] for f in loops)
            self.vector = False  # the accumulator's element is a scalar index
            target = f"{buf}[{self.subscript(node.buffer, node.indices)}]"
            self.vector = True
            self.emit(depth, f"{target} = _fold({op!r}, {target}, {self.value(value)}, ({grid},))")
        self.vars, self.extents, self.vector = saved
        return True

    # -- values
    def buf(self, b: tir.Buffer) -> str:
        try:
            return self.bufs[b.name]
        except KeyError:
            raise TIRRuntimeError(
                f"{self.name}: buffer {b.name} is neither a parameter nor allocated in scope"
            ) from None

    def value(self, e: tir.Value) -> str:
        match e:
            case PrimExpr():
                text = self.index(e)
                return text if self.vector else f"np.int64({text})"
            case tir.Imm(value, dtype):
                return self.const_ref(value, dtype)
            case tir.Load(buffer, indices):
                return f"{self.buf(buffer)}[{self.subscript(buffer, indices)}]"
            case tir.Binary(op, a, b):
                text = self.binary(op, a, b)
                da, db = tir.dtype_of(a), tir.dtype_of(b)
                if op not in tir.COMPARE_OPS and da != db:
                    # Mixed operand dtypes: the result has the first operand's dtype (tir.dtype_of).
                    return f"np.{_np_dtype(da)}({text})"
                return text
            case tir.Intrin(name, args):
                if name == "neg":
                    return f"(-{self.value(args[0])})"
                return f"{_INTRINSICS[name]}({', '.join(self.value(a) for a in args)})"
            case tir.Cast(dtype, v):
                if dtype == "bool":
                    return f"np.asarray({self.value(v)}).astype(np.bool_)[()]"
                return f"np.{_np_dtype(dtype)}({self.value(v)})"
            case tir.Select(c, a, b):
                fn = "np.where" if self.vector else "_select"
                return f"{fn}({self.value(c)}, {self.value(a)}, {self.value(b)})"
        raise TypeError(f"not a tir value: {e!r}")

    def const_ref(self, value: Any, dtype: str) -> str:
        """Constants are typed numpy scalars defined once, outside the kernel."""
        key = (repr(value), dtype)
        if key not in self.consts:
            if dtype == "bool":
                expr = f"np.bool_({bool(value)})"
            elif isinstance(value, float) and not math.isfinite(value):
                text = "np.nan" if math.isnan(value) else ("np.inf" if value > 0 else "-np.inf")
                expr = f"np.{_np_dtype(dtype)}({text})"
            else:
                expr = f"np.{_np_dtype(dtype)}({value!r})"
            self.consts[key] = (self.fresh("c_", str(len(self.consts))), expr)
        return self.consts[key][0]

    def binary(self, op: str, a: tir.Value, b: tir.Value) -> str:
        x, y = self.value(a), self.value(b)
        if op in _OPERATORS:
            return f"({x} {_OPERATORS[op]} {y})"
        if op in _BINARY_CALLS:
            return f"{_BINARY_CALLS[op]}({x}, {y})"
        assert op == "div"
        if tir.dtype_of(a) in tir.FLOAT_DTYPES:
            return f"({x} / {y})"
        return f"_tdiv({x}, {y})"

    def index(self, e: PrimExpr) -> str:
        """A symbolic int expression as Python (ints, or int arrays inside a vector nest)."""
        match e:
            case S.IntImm(v):
                return str(v)
            case SymVar(name):
                if name not in self.vars:
                    raise TIRRuntimeError(
                        f"{self.name}: symbolic var {name} is used but neither a buffer's bare dim, "
                        "a scalar param, a loop nor a let defines it"
                    )
                return self.vars[name]
            case S.FloorDiv(a, b):
                return f"({self.index(a)} // {self.index(b)})"
            case S.FloorMod(a, b):
                return f"({self.index(a)} % {self.index(b)})"
            case S.Min(a, b):
                fn = "np.minimum" if self.vector else "min"
                return f"{fn}({self.index(a)}, {self.index(b)})"
            case S.Max(a, b):
                fn = "np.maximum" if self.vector else "max"
                return f"{fn}({self.index(a)}, {self.index(b)})"
            case S.Sum(terms, c):
                parts = []
                for mono, coeff in terms:
                    factors = [self.index(atom) for atom, p in mono for _ in range(p)]
                    if coeff != 1:
                        factors.insert(0, str(coeff))
                    parts.append(" * ".join(factors))
                if c:
                    parts.append(str(c))
                return "(" + " + ".join(parts) + ")"
        raise TypeError(f"not a symbolic int expression: {e!r}")

    def subscript(self, buffer: tir.Buffer, indices: tuple[PrimExpr, ...]) -> str:
        if not indices:
            return "()"  # a 0-d buffer
        return ", ".join(self.checked_index(i, buffer, k) for k, i in enumerate(indices))

    def checked_index(self, e: PrimExpr, buffer: tir.Buffer, axis: int) -> str:
        text = self.index(e)
        if _provably_nonneg(e, self.let_vars):
            return text
        return f"_nonneg({text}, {f'{buffer.name} axis {axis}'!r})"


def _np_dtype(dtype: str) -> str:
    if dtype == "bool":
        return "bool_"
    if dtype == "bfloat16":
        raise TIRRuntimeError("bfloat16 buffers are not supported by the numpy interpreter")
    return dtype


def _provably_nonneg(e: PrimExpr, let_vars: set[str]) -> bool:
    """Loop vars and symbolic dims are >= 0; so are their sums and products with positive
    coefficients, and floor division / modulo of those by positive constants. Let vars
    (loaded values) are not."""
    match e:
        case S.IntImm(v):
            return v >= 0
        case SymVar(name):
            return name not in let_vars
        case S.FloorDiv(a, S.IntImm(d)) | S.FloorMod(a, S.IntImm(d)):
            return d > 0 and _provably_nonneg(a, let_vars)
        case S.Min(a, b) | S.Max(a, b):
            return _provably_nonneg(a, let_vars) and _provably_nonneg(b, let_vars)
        case S.Sum(terms, c):
            return c >= 0 and all(
                coeff > 0 and all(_provably_nonneg(atom, let_vars) for atom, _ in mono)
                for mono, coeff in terms
            )
    return False


_MIN_FOLD = 32  # below this many iterations, numpy's per-call overhead loses to the scalar loop


def _const_trip_count(loops: list[tir.For]) -> float:
    count = 1.0
    for f in loops:
        count *= f.extent.value if isinstance(f.extent, S.IntImm) else math.inf
    return count


def _fold_of(store: tir.Store, loop_names: set[str]) -> tuple[str, tir.Value] | None:
    """(op, v) when `store` is acc[c] = acc[c] op v with c free of the loops and v not reading acc."""
    match store.value:
        case tir.Binary(op, tir.Load(buffer, indices), v) if op in _FOLDS:
            if buffer != store.buffer or indices != store.indices or _reads(v, buffer.name):
                return None
            if any(S.free_vars(i) & loop_names for i in indices):
                return None
            return op, v
    return None


def _reads(e: tir.Value, buffer_name: str) -> bool:
    match e:
        case tir.Load(buffer, _):
            return buffer.name == buffer_name
        case tir.Binary(_, a, b):
            return _reads(a, buffer_name) or _reads(b, buffer_name)
        case tir.Intrin(_, args):
            return any(_reads(a, buffer_name) for a in args)
        case tir.Cast(_, v):
            return _reads(v, buffer_name)
        case tir.Select(c, a, b):
            return any(_reads(x, buffer_name) for x in (c, a, b))
    return False
