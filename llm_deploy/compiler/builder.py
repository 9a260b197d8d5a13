"""BlockBuilder: emits bindings, normalizes nested calls, deduces struct info, names vars uniquely."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from llm_deploy.compiler import struct_info as SI
from llm_deploy.compiler.expr import (
    BaseFunc,
    Binding,
    BindingBlock,
    Call,
    Constant,
    DataflowBlock,
    DataflowVar,
    Expr,
    Function,
    GetItem,
    GlobalVar,
    If,
    MatchCast,
    Op,
    SeqExpr,
    Tuple,
    Var,
    VarBinding,
    info_of,
    is_leaf,
)
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.ops.registry import InferContext, ShapeError, get_op
from llm_deploy.compiler.shape import Analyzer
from llm_deploy.compiler.struct_info import StructInfo

# Importing the op families registers them.
from llm_deploy.compiler import ops as _ops  # noqa: F401  isort: skip


class BuildError(ValueError):
    """A program the builder cannot construct; the message names the binding."""


def _symbolic_defs(info: StructInfo) -> set[str]:
    """Symbolic vars a value of this info *defines* when matched (bare variables in its shapes)."""
    from llm_deploy.compiler.shape import SymVar

    match info:
        case SI.TensorInfo(shape=tuple() as dims) | SI.ShapeInfo(values=tuple() as dims):
            return {d.name for d in dims if isinstance(d, SymVar)}
        case SI.PrimInfo(value=SymVar(name)):
            return {name}
        case SI.TupleInfo(fields):
            out: set[str] = set()
            for f in fields:
                out |= _symbolic_defs(f)
            return out
    return set()


def _call_text(value: Expr) -> str:
    try:
        return str(value)
    except Exception:  # the printer is a convenience here, never the cause of an error
        return type(value).__name__


@dataclass
class _FunctionFrame:
    name: str
    params: tuple[Var, ...]
    pure: bool | None
    attrs: dict[str, Any]
    names: set[str] = field(default_factory=set)
    symbols: set[str] = field(default_factory=set)
    param_symbols: set[str] = field(default_factory=set)
    # Stack of open scopes (the function body, If branches), each a list of finished blocks.
    scopes: list[list[BindingBlock]] = field(default_factory=list)
    bindings: list[Binding] = field(default_factory=list)
    in_dataflow: bool = False
    impure: bool = False
    # The last suffix tried per hint: names are never released, so the search resumes there.
    suffix: dict[str, int] = field(default_factory=dict)


class BlockBuilder:
    """Builds graph functions binding by binding, as Relax's BlockBuilder does.

    bb = BlockBuilder()
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit(ops.matmul(x, w))
            out = bb.emit_output(ops.silu(y))
        bb.emit_func_output(out)
    mod = bb.get()
    """

    def __init__(self, mod: IRModule | None = None, analyzer: Analyzer | None = None):
        self._funcs: dict[str, BaseFunc] = dict(mod.functions()) if mod is not None else {}
        self._mod_attrs = dict(mod.attrs.items()) if mod is not None else {}
        self._frame: _FunctionFrame | None = None
        self.analyzer = analyzer or Analyzer()

    # -- module level
    def add_func(self, func: BaseFunc, name: str) -> GlobalVar:
        """Add a function under a fresh name based on `name`; an identical one is shared."""
        for existing, f in self._funcs.items():
            if f == func and (existing == name or existing.startswith(name)):
                return GlobalVar(existing)
        unique = self.get().unique_name(name)
        self._funcs[unique] = func
        return GlobalVar(unique)

    def update_func(self, gv: GlobalVar | str, func: BaseFunc) -> None:
        self._funcs[gv.name if isinstance(gv, GlobalVar) else gv] = func

    def get(self) -> IRModule:
        return IRModule(self._funcs, self._mod_attrs)

    # -- function scope
    @contextmanager
    def function(
        self, name: str, params: Sequence[Var], pure: bool | None = None, attrs: dict[str, Any] | None = None
    ) -> Iterator[None]:
        if self._frame is not None:
            raise BuildError(f"cannot open function {name!r} inside function {self._frame.name!r}")
        frame = _FunctionFrame(name, tuple(params), pure, dict(attrs or {}))
        for p in frame.params:
            if not isinstance(p, Var) or isinstance(p, DataflowVar):
                raise BuildError(f"{name}: parameter {p!r} must be a Var")
            if p.name in frame.names:
                raise BuildError(f"{name}: parameter name {p.name!r} is used twice")
            frame.names.add(p.name)
            frame.symbols |= _symbolic_defs(p.info)
            for sym in SI.free_vars(p.info):
                self.analyzer.bind(sym, 0)
        frame.param_symbols = set(frame.symbols)
        for sym, (lo, hi) in dict(frame.attrs.get("bounds", {})).items():
            self.analyzer.bind(sym, lo, hi)
        frame.scopes.append([])
        self._frame = frame
        try:
            yield
        finally:
            self._frame = None
        if name not in self._funcs:
            raise BuildError(f"function {name!r} ended without emit_func_output")

    @contextmanager
    def dataflow(self) -> Iterator[None]:
        frame = self._require_frame("dataflow")
        if frame.in_dataflow:
            raise BuildError("dataflow blocks do not nest")
        self._close_block()
        frame.in_dataflow = True
        try:
            yield
        finally:
            dataflow_bindings = frame.bindings
            frame.bindings = []
            frame.in_dataflow = False
            if dataflow_bindings:
                frame.scopes[-1].append(DataflowBlock(tuple(dataflow_bindings)))

    def emit_func_output(self, output: Expr | Sequence[Expr]) -> GlobalVar:
        frame = self._require_frame("emit_func_output")
        if frame.in_dataflow:
            raise BuildError(f"{frame.name}: close the dataflow block before emit_func_output")
        if isinstance(output, (list, tuple)):
            output = Tuple(tuple(output))
        body = self.normalize(output)
        for leaf in body.fields if isinstance(body, Tuple) else (body,):
            if isinstance(leaf, DataflowVar):
                raise BuildError(
                    f"{frame.name}: returns dataflow var {leaf.name}, which cannot leave its block; "
                    "bind it with emit_output"
                )
        self._close_block()
        blocks = frame.scopes.pop()
        ret = SI.erase(info_of(body), frame.param_symbols)
        pure = not frame.impure if frame.pure is None else frame.pure
        if pure and frame.impure:
            raise BuildError(f"{frame.name}: declared pure but contains impure calls")
        func = Function(frame.params, SeqExpr(tuple(blocks), body), ret, pure, frame.attrs)
        self._funcs[frame.name] = func
        return GlobalVar(frame.name)

    # -- bindings
    def emit(self, value: Expr, name_hint: str = "lv") -> Var:
        """Bind `value` (normalized first) to a new var: a DataflowVar inside a dataflow block."""
        frame = self._require_frame("emit")
        value = self._normalize_value(value)
        info = self._deduce(value, name_hint)
        var_cls = DataflowVar if frame.in_dataflow else Var
        var = var_cls(self._fresh(name_hint), info)
        self._check_purity(value, var)
        frame.bindings.append(VarBinding(var, value))
        return var

    def emit_output(self, value: Expr, name_hint: str = "gv") -> Var:
        """Bind a value that escapes the current dataflow block (a plain Var)."""
        frame = self._require_frame("emit_output")
        if not frame.in_dataflow:
            raise BuildError("emit_output is only meaningful inside a dataflow block; use emit")
        value = self._normalize_value(value)
        info = self._deduce(value, name_hint)
        var = Var(self._fresh(name_hint), info)
        self._check_purity(value, var)
        frame.bindings.append(VarBinding(var, value))
        return var

    def match_cast(self, value: Expr, info: StructInfo, name_hint: str = "lv") -> Var:
        """Assert `info` at run time; its symbolic vars not yet defined become defined here."""
        frame = self._require_frame("match_cast")
        value = self.normalize(value)
        value_info = info_of(value)
        if not (
            SI.is_base_of(value_info, info, self.analyzer) or SI.is_base_of(info, value_info, self.analyzer)
        ):
            if type(value_info) is type(info) and isinstance(info, SI.TensorInfo):
                # Same kind: shapes may still agree at run time unless the ranks/dtypes conflict.
                if value_info.ndim not in (-1, info.ndim) or value_info.dtype not in (None, info.dtype):
                    raise BuildError(f"match_cast {name_hint}: {value_info} can never match {info}")
            elif not isinstance(value_info, SI.ObjectInfo):
                raise BuildError(f"match_cast {name_hint}: {value_info} can never match {info}")
        var_cls = DataflowVar if frame.in_dataflow else Var
        var = var_cls(self._fresh(name_hint), info)
        frame.symbols |= _symbolic_defs(info)
        for sym in SI.free_vars(info):
            self.analyzer.bind(sym, 0)
        frame.bindings.append(MatchCast(var, value, info))
        return var

    def if_(
        self,
        cond: Expr,
        then_fn: Callable[[BlockBuilder], Expr],
        else_fn: Callable[[BlockBuilder], Expr],
        name_hint: str = "lv",
    ) -> Var:
        """Bind `if cond: then_fn(bb) else: else_fn(bb)`; each branch builds its own bindings."""
        frame = self._require_frame("if_")
        if frame.in_dataflow:
            raise BuildError("an If cannot appear inside a dataflow block")
        cond = self.normalize(cond)
        branches = []
        # The enclosing block goes on after the If (one block, as the text form reads it back).
        outer, frame.bindings = frame.bindings, []
        for fn in (then_fn, else_fn):
            frame.scopes.append([])
            symbols_before = set(frame.symbols)
            result = self.normalize(fn(self))
            self._close_block()
            branches.append(SeqExpr(tuple(frame.scopes.pop()), result))
            frame.symbols = symbols_before
        frame.bindings = outer
        return self.emit(If(cond, branches[0], branches[1]), name_hint)

    def normalize(self, expr: Expr) -> Expr:
        """Turn `expr` into a leaf (or tuple of leaves), emitting nested calls as bindings."""
        if is_leaf(expr):
            return expr
        if isinstance(expr, Tuple):
            return Tuple(tuple(self.normalize(f) for f in expr.fields))
        if isinstance(expr, GetItem):
            return GetItem(self.normalize(expr.tuple_value), expr.index)
        return self.emit(expr)

    # -- deduction
    def infer(self, value: Expr) -> StructInfo:
        """Struct info of a normalized value, deduced forward."""
        match value:
            case Call(op=Op(name)):
                infos = [self._arg_info(a) for a in value.args]
                return get_op(name).infer(value, infos, InferContext(self.analyzer, self.get()))
            case Call(op=GlobalVar(name)):
                return self._infer_global_call(value, name)
            case Call(op=Var(info=SI.FuncInfo(params=params, ret=ret))):
                mapping: dict[str, Any] = {}
                for param, arg in zip(params or (), value.args):
                    _bind_symbols(param, info_of(arg), mapping)
                return SI.substitute(SI.erase(ret, set(mapping)), mapping)
            case If(_, then_branch, else_branch):
                keep = self._require_frame("if").symbols
                a = SI.erase(info_of(then_branch.body), keep)
                b = SI.erase(info_of(else_branch.body), keep)
                return SI.lca(a, b, self.analyzer)
        return info_of(value)

    def _arg_info(self, arg: Expr) -> StructInfo:
        if isinstance(arg, GlobalVar) and arg.name in self._funcs:
            f = self._funcs[arg.name]
            return f.info if isinstance(f, Function) else SI.ObjectInfo()
        return info_of(arg)

    def _infer_global_call(self, call: Call, name: str) -> StructInfo:
        if name not in self._funcs:
            raise ShapeError(f"call to unknown function {name!r}")
        func = self._funcs[name]
        if not isinstance(func, Function):
            raise ShapeError(f"{name} is a tensor program or extern; call it through call_tir / call_extern")
        if len(call.args) != len(func.params):
            raise ShapeError(f"{name} takes {len(func.params)} argument(s), got {len(call.args)}")
        mapping: dict[str, Any] = {}
        for param, arg in zip(func.params, call.args):
            _bind_symbols(param.info, info_of(arg), mapping)
        # A callee symbol no argument pins down is unknown here (the caller may use the same name).
        return SI.substitute(SI.erase(func.ret_info, set(mapping)), mapping)

    # -- internals
    def _deduce(self, value: Expr, name_hint: str) -> StructInfo:
        try:
            return self.infer(value)
        except ShapeError as e:
            raise ShapeError(f"{e}\n  in binding {name_hint} = {_call_text(value)}") from None

    def _normalize_value(self, value: Expr) -> Expr:
        if isinstance(value, Call):
            return Call(value.op, tuple(self.normalize(a) for a in value.args), value.attrs, value.sinfo_args)
        if isinstance(value, (If, Constant, Function)):
            return value
        return self.normalize(value) if not is_leaf(value) else value

    def _check_purity(self, value: Expr, var: Var) -> None:
        frame = self._require_frame("emit")
        impure = isinstance(value, Call) and (
            (isinstance(value.op, Op) and not get_op(value.op.name).pure)
            or (isinstance(value.op, GlobalVar) and not self._is_pure_global(value.op.name))
        )
        if impure:
            if frame.in_dataflow:
                raise BuildError(
                    f"binding {var.name}: impure call {_call_text(value)} inside a dataflow block"
                )
            frame.impure = True

    def _is_pure_global(self, name: str) -> bool:
        f = self._funcs.get(name)
        return not isinstance(f, Function) or f.pure

    def _fresh(self, hint: str) -> str:
        frame = self._require_frame("emit")
        i = frame.suffix.get(hint, 0)
        name = f"{hint}{i}" if i else hint
        while name in frame.names:
            i += 1
            name = f"{hint}{i}"
        frame.suffix[hint] = i
        frame.names.add(name)
        return name

    def _close_block(self) -> None:
        frame = self._require_frame("emit")
        if frame.bindings and not frame.in_dataflow:
            frame.scopes[-1].append(BindingBlock(tuple(frame.bindings)))
            frame.bindings = []

    def _require_frame(self, what: str) -> _FunctionFrame:
        if self._frame is None:
            raise BuildError(f"{what} outside of a function; open one with `with bb.function(...)`")
        return self._frame


def _bind_symbols(param: StructInfo, arg: StructInfo, mapping: dict[str, Any]) -> None:
    """Match a parameter's symbolic dims against an argument's to map callee vars to caller exprs."""
    from llm_deploy.compiler.shape import SymVar

    match param, arg:
        case SI.TensorInfo(shape=tuple() as p), SI.TensorInfo(shape=tuple() as a) if len(p) == len(a):
            for pd, ad in zip(p, a):
                if isinstance(pd, SymVar) and pd.name not in mapping:
                    mapping[pd.name] = ad
        case SI.ShapeInfo(values=tuple() as p), SI.ShapeInfo(values=tuple() as a) if len(p) == len(a):
            for pd, ad in zip(p, a):
                if isinstance(pd, SymVar) and pd.name not in mapping:
                    mapping[pd.name] = ad
        case SI.PrimInfo(value=SymVar(name)), SI.PrimInfo(value=v) if v is not None:
            mapping.setdefault(name, v)
        case SI.TupleInfo(pf), SI.TupleInfo(af) if len(pf) == len(af):
            for x, y in zip(pf, af):
                _bind_symbols(x, y, mapping)
