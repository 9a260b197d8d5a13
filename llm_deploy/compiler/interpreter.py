"""The numpy interpreter: reference execution of graph-level functions, the oracle of every test.

The semantics of the ops are a table, `IMPLS`, from op name to a numpy function (see
`interpreter_ops.py`); the walk over the IR is the `Interpreter` class. Running a function binds
its symbolic variables from the arguments' shapes, checks every `match_cast` (binding the new
variables it introduces), and by default checks that every bound value fits the struct info the
builder deduced for it, so each run also tests shape deduction.

Extending: `@register_impl("my_op")` adds an op; `@register_impl("call_tir", context=True)`
gets an `OpContext` first (the interpreter, the module, the call, the symbolic bindings), which
is what calls into tensor programs and libraries need.

    out = run(mod, "main", x, w)             # or Interpreter(mod).run("main", x, w)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from llm_deploy.compiler import shape as S
from llm_deploy.compiler.expr import (
    BindingBlock,
    Call,
    Constant,
    Expr,
    ExternFunc,
    Function,
    GetItem,
    GlobalVar,
    If,
    MatchCast,
    Op,
    PrimValue,
    SeqExpr,
    ShapeExpr,
    StringImm,
    Tuple,
    Var,
    VarBinding,
)
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.shape import PrimExpr, SymVar
from llm_deploy.compiler.struct_info import (
    FuncInfo,
    ObjectInfo,
    PrimInfo,
    ShapeInfo,
    StructInfo,
    TensorInfo,
    TupleInfo,
)


class InterpreterError(RuntimeError):
    """A run-time failure; the message names the function and binding where it happened."""


class StructInfoMismatch(InterpreterError):
    """A value that does not have the struct info asserted for it (a parameter's, or the one the
    builder deduced for a binding)."""


class MatchCastError(StructInfoMismatch):
    """A match_cast whose value does not have the asserted shape, dtype or structure."""


class SymbolBindingError(StructInfoMismatch):
    """Two values for one symbolic variable (e.g. parameters x (n, 4) and y (n,) with different n)."""


class ShapeTuple(tuple):
    """The run-time value of a ShapeExpr / a ShapeInfo var: a tuple of ints (unlike Tuple values)."""

    def __repr__(self) -> str:
        return f"ShapeTuple{tuple.__repr__(self)}"


# ---------------------------------------------------------------------------------------------
# The op table


@dataclass(frozen=True)
class Impl:
    fn: Callable[..., Any]
    context: bool


IMPLS: dict[str, Impl] = {}


def register_impl(name: str, *, context: bool = False) -> Callable[[Callable], Callable]:
    """Register the numpy semantics of op `name`: `fn(*operand_values, **attrs)`.

    With `context=True` the function is called as `fn(ctx, *operand_values, **attrs)`, `ctx` an
    OpContext. Registering a name twice replaces the implementation (later modules may refine).
    """

    def deco(fn: Callable) -> Callable:
        IMPLS[name] = Impl(fn, context)
        return fn

    return deco


@dataclass(frozen=True)
class OpContext:
    """What a context-taking impl sees: the interpreter, the module, the call being run and the
    symbolic bindings of the current function (name -> int; read-only for the impl)."""

    interpreter: Interpreter
    call: Call
    symbols: Mapping[str, int]

    @property
    def module(self) -> IRModule:
        return self.interpreter.mod

    def evaluate(self, e: PrimExpr | int) -> int:
        return _evaluate(e, self.symbols, f"call {_op_name(self.call)}")

    def shape_of(self, info: StructInfo) -> tuple[int, ...]:
        """The concrete shape a TensorInfo (e.g. call_tir's output info) has under the bindings."""
        if not isinstance(info, TensorInfo) or info.shape is None:
            raise InterpreterError(f"call {_op_name(self.call)}: {info} has no known shape to allocate")
        return tuple(self.evaluate(d) for d in info.shape)


def _op_name(call: Call) -> str:
    op = call.op
    return getattr(op, "name", type(op).__name__)


def _evaluate(e: PrimExpr | int, symbols: Mapping[str, int], where: str) -> int:
    try:
        return S.evaluate(e, symbols)
    except KeyError as err:
        raise InterpreterError(f"{where}: {err.args[0]}") from None


# ---------------------------------------------------------------------------------------------
# Matching values against struct info


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"tensor {tuple(value.shape)} {value.dtype}"
    if isinstance(value, ShapeTuple):
        return f"shape {tuple(value)}"
    if isinstance(value, tuple):
        return f"tuple of {len(value)}"
    return f"{type(value).__name__} {value!r}"


def info_str(info: StructInfo) -> str:
    match info:
        case TensorInfo(shape, dtype, ndim):
            dims = _dims_str(shape) if shape is not None else f"ndim={ndim}"
            return f"Tensor({dims}, {dtype})"
        case ShapeInfo(values, ndim):
            return f"Shape({_dims_str(values) if values is not None else f'ndim={ndim}'})"
        case PrimInfo(dtype, value):
            return f"Prim({dtype}{'' if value is None else ', ' + S.to_str(value)})"
        case TupleInfo(fields):
            return f"Tuple({', '.join(info_str(f) for f in fields)})"
    return type(info).__name__.removesuffix("Info")


def _dims_str(dims: tuple[PrimExpr, ...]) -> str:
    inner = ", ".join(S.to_str(d) for d in dims)
    return f"({inner},)" if len(dims) == 1 else f"({inner})"


class _Matcher:
    """Checks values against struct info. Bare symbolic vars not yet bound are bound (when
    `bind`); every other dim is checked in `finish`, once all the bare vars are known, so a
    parameter (n * 2,) may come before the parameter (n,) that defines n."""

    def __init__(self, frame: _Frame, what: str, bind: bool, error: type[StructInfoMismatch]):
        self.frame, self.what, self.bind, self.error = frame, what, bind, error
        self.deferred: list[tuple[PrimExpr, int, str, StructInfo, Any]] = []

    def check(self, value: Any, info: StructInfo) -> None:
        self.collect(value, info)
        self.finish()

    def fail(self, info: StructInfo, value: Any, detail: str) -> None:
        raise self.error(f"{self.what}: expected {info_str(info)}, got {_describe(value)}: {detail}")

    def collect(self, value: Any, info: StructInfo, path: str = "", top: tuple | None = None) -> None:
        top = top or (info, value)
        match info:
            case ObjectInfo() | FuncInfo():
                return
            case TensorInfo(shape, dtype, ndim):
                if not isinstance(value, np.ndarray):
                    self.fail(info, value, "not a tensor")
                if dtype is not None and str(value.dtype) != dtype:
                    self.fail(info, value, f"dtype {value.dtype}, expected {dtype}")
                if ndim != -1 and value.ndim != ndim:
                    self.fail(info, value, f"rank {value.ndim}, expected {ndim}")
                if shape is not None:
                    self.dims(shape, value.shape, f"{path}dim ", top)
            case ShapeInfo(values, ndim):
                if not isinstance(value, ShapeTuple):
                    self.fail(info, value, "not a shape")
                if ndim != -1 and len(value) != ndim:
                    self.fail(info, value, f"{len(value)} values, expected {ndim}")
                if values is not None:
                    self.dims(values, value, f"{path}value ", top)
            case PrimInfo(_, v):
                if not isinstance(value, (int, float, np.integer, np.floating)):
                    self.fail(info, value, "not a scalar")
                if v is not None:
                    self.dims((v,), (value,), f"{path}scalar ", top)
            case TupleInfo(fields):
                if not isinstance(value, tuple) or isinstance(value, ShapeTuple) or len(value) != len(fields):
                    self.fail(info, value, f"not a tuple of {len(fields)}")
                for i, (f, x) in enumerate(zip(fields, value)):
                    self.collect(x, f, f"{path}field {i} ", top)
            case _:
                raise InterpreterError(f"{self.what}: unknown struct info {info!r}")

    def dims(self, exprs: tuple[PrimExpr, ...], actual: tuple[Any, ...], label: str, top: tuple) -> None:
        symbols = self.frame.symbols
        for k, (e, a) in enumerate(zip(exprs, actual)):
            a = int(a)
            if self.bind and isinstance(e, SymVar) and e.name not in symbols:
                symbols[e.name] = a
                self.frame.sources[e.name] = f"{self.what} ({label.strip()} {k})"
            else:
                self.deferred.append((e, a, f"{label.strip()} {k}", *top))

    def finish(self) -> None:
        symbols = self.frame.symbols
        for e, actual, where, info, value in self.deferred:
            if isinstance(e, SymVar) and symbols.get(e.name, actual) != actual:
                source = self.frame.sources.get(e.name, "an earlier binding")
                error = SymbolBindingError if self.error is StructInfoMismatch else self.error
                raise error(
                    f"{self.what}: symbolic var {e.name} is {actual} at {where}, but "
                    f"{e.name} = {symbols[e.name]} from {source}; "
                    f"expected {info_str(info)}, got {_describe(value)}"
                )
            missing = S.free_vars(e) - symbols.keys()
            if missing:
                raise InterpreterError(
                    f"{self.what}: {where} is {S.to_str(e)}, but {', '.join(sorted(missing))} "
                    "has no value here (not defined by a parameter's shape or a match_cast)"
                )
            expected = S.evaluate(e, symbols)
            if expected != actual:
                self.fail(info, value, f"{where} is {actual}, expected {S.to_str(e)} = {expected}")
        self.deferred.clear()


# ---------------------------------------------------------------------------------------------
# The walk


@dataclass
class _Frame:
    func: str
    env: dict[str, Any]
    symbols: dict[str, int]
    sources: dict[str, str]


class Interpreter:
    """Runs graph functions of `mod` on numpy values.

    check_info: after every binding, check the value against the var's deduced struct info
    (catches a deduction that disagrees with the op's semantics).
    """

    def __init__(self, mod: IRModule, check_info: bool = True):
        self.mod = mod
        self.check_info = check_info

    def run(self, func_name: str, *args: Any) -> Any:
        func = self.mod[func_name]
        if not isinstance(func, Function):
            raise InterpreterError(f"{func_name} is a {type(func).__name__}, not a graph function")
        if len(args) != len(func.params):
            raise InterpreterError(f"{func_name} takes {len(func.params)} argument(s), got {len(args)}")
        return self.call_function(func_name, func, [_coerce(a, p.info) for a, p in zip(args, func.params)])

    def call_function(self, name: str, func: Function, args: list[Any]) -> Any:
        if len(args) != len(func.params):
            raise InterpreterError(f"{name} takes {len(func.params)} argument(s), got {len(args)}")
        frame = _Frame(name, {}, {}, {})
        matchers = []
        for p, a in zip(func.params, args):
            m = _Matcher(frame, f"{name}: parameter {p.name}", True, StructInfoMismatch)
            m.collect(a, p.info)
            matchers.append(m)
            frame.env[p.name] = a
        for m in matchers:
            m.finish()
        out = self.eval_seq(func.body, frame)
        if self.check_info:
            _Matcher(frame, f"{name}: return value", False, StructInfoMismatch).check(out, func.ret_info)
        return out

    def eval_seq(self, seq: SeqExpr, frame: _Frame) -> Any:
        for block in seq.blocks:
            self.eval_block(block, frame)
        return self.eval(seq.body, frame)

    def eval_block(self, block: BindingBlock, frame: _Frame) -> None:
        for b in block.bindings:
            match b:
                case MatchCast(var, value, info):
                    v = self.eval(value, frame)
                    _Matcher(frame, f"{frame.func}: match_cast {var.name}", True, MatchCastError).check(
                        v, info
                    )
                    frame.env[var.name] = v
                case VarBinding(var, value):
                    try:
                        v = self.eval(value, frame)
                    except InterpreterError:
                        raise
                    except (ArithmeticError, LookupError, ValueError, TypeError) as e:
                        # numpy's own complaint, placed: which function, which binding.
                        raise InterpreterError(f"{frame.func}: binding {var.name}: {e}") from e
                    if self.check_info:
                        what = f"{frame.func}: binding {var.name} (its deduced struct info)"
                        _Matcher(frame, what, False, StructInfoMismatch).check(v, var.info)
                    frame.env[var.name] = v

    def eval(self, expr: Expr, frame: _Frame) -> Any:
        match expr:
            case Var(name):
                try:
                    return frame.env[name]
                except KeyError:
                    raise InterpreterError(f"{frame.func}: {name} is used before it is bound") from None
            case Constant(data):
                return data
            case PrimValue(value):
                return _evaluate(value, frame.symbols, f"{frame.func}: PrimValue")
            case ShapeExpr(values):
                return ShapeTuple(_evaluate(v, frame.symbols, f"{frame.func}: shape") for v in values)
            case StringImm(value):
                return value
            case Tuple(fields):
                return tuple(self.eval(f, frame) for f in fields)
            case GetItem(tup, index):
                return self.eval(tup, frame)[index]
            case GlobalVar() | ExternFunc() | Op():
                return expr
            case If(cond, then_branch, else_branch):
                c = self.eval(cond, frame)
                return self.eval_seq(then_branch if bool(np.asarray(c)) else else_branch, frame)
            case Call():
                return self.eval_call(expr, frame)
            case SeqExpr():
                return self.eval_seq(expr, frame)
        raise InterpreterError(f"{frame.func}: cannot evaluate {type(expr).__name__}")

    def eval_call(self, call: Call, frame: _Frame) -> Any:
        args = [self.eval(a, frame) for a in call.args]
        op = call.op
        if isinstance(op, Var):
            op = self.eval(op, frame)
        match op:
            case Op(name):
                impl = IMPLS.get(name)
                if impl is None:
                    raise InterpreterError(
                        f"no numpy implementation of op {name!r}; add one with "
                        "llm_deploy.compiler.interpreter.register_impl"
                    )
                attrs = dict(call.attrs.items())
                if impl.context:
                    out = impl.fn(OpContext(self, call, frame.symbols), *args, **attrs)
                else:
                    out = impl.fn(*args, **attrs)
                return np.asarray(out) if isinstance(out, np.generic) else out
            case GlobalVar(name):
                func = self.mod[name]
                if not isinstance(func, Function):
                    raise InterpreterError(
                        f"{name} is a {type(func).__name__}; call it through call_tir / call_extern"
                    )
                return self.call_function(name, func, args)
            case Function():
                return self.call_function("<lambda>", op, args)
            case _ if callable(op):
                return op(*args)
        raise InterpreterError(f"{frame.func}: cannot call {op!r}")


def _coerce(value: Any, info: StructInfo) -> Any:
    """Accept plain Python values for parameters: a list/tuple of ints for a shape, a list for a
    tuple, anything array-like for a tensor."""
    match info:
        case ShapeInfo() if isinstance(value, (list, tuple)) and not isinstance(value, ShapeTuple):
            return ShapeTuple(int(v) for v in value)
        case TensorInfo() if not isinstance(value, np.ndarray):
            return np.asarray(value)
        case TupleInfo(fields) if isinstance(value, (list, tuple)) and len(value) == len(fields):
            return tuple(_coerce(v, f) for v, f in zip(value, fields))
    return value


def run(mod: IRModule, func_name: str, *args: Any, check_info: bool = True) -> Any:
    """Run `mod[func_name]` on numpy arrays (tensors), ints (scalars), tuples (shapes, tuples)."""
    return Interpreter(mod, check_info).run(func_name, *args)


# The built-in ops' numpy semantics; imported last since that module registers through this one.
from llm_deploy.compiler import interpreter_calls as _interpreter_calls  # noqa: E402, F401  call_tir, call_extern
from llm_deploy.compiler import interpreter_ops as _interpreter_ops  # noqa: E402, F401

from llm_deploy.compiler import interpreter_kv as _interpreter_kv  # noqa: F401, E402  isort: skip
