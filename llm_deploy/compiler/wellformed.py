"""Well-formedness checker: the rules every module must keep, run after every pass in tests.

Graph functions (scopes and deduction):
- a var is bound once per function and used only after its binding, within its scope (an If
  branch, a dataflow block for DataflowVars); a use carries the same node as its binding;
- DataflowVars are bound only inside dataflow blocks and never leave them;
- every symbolic var is defined before use: by a bare variable in a parameter's shape, or by a
  match_cast that binds it;
- only pure calls inside dataflow blocks; a function declared pure makes no impure call;
- a binding's struct info is a base of the info deduced again from its value (the same op
  deduction the BlockBuilder ran, so a pass that rewrites a value must keep its var honest);
- cross-level calls are well-shaped: call_tir names a tensor program of the module with as many
  input and output buffers as the call passes, and as many scalar params as shape_args.

Tensor programs get a light check: loop and let vars, buffers and index arity.

Every problem is reported with the function and the binding it was found in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import struct_info as SI
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.expr import (
    BindingBlock,
    Call,
    Constant,
    DataflowBlock,
    DataflowVar,
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
    info_of,
)
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.ops.registry import OPS, REQUIRED, InferContext
from llm_deploy.compiler.shape import Analyzer, SymVar
from llm_deploy.compiler.struct_info import StructInfo

# Importing the op families registers them, so deduction sees every op.
from llm_deploy.compiler import ops as _ops  # noqa: F401  isort: skip


# Library calls: destination-passing (call_extern, call_extern_pure) or returning a value.
EXTERN_CALLS = ("call_extern", "call_extern_pure", "call_extern_value")


class WellFormedError(ValueError):
    """A module that breaks an IR invariant; the message names the function and the binding."""


def check(mod: IRModule) -> None:
    """Raise WellFormedError listing every problem in `mod`; return quietly when there is none."""
    problems = errors(mod)
    if problems:
        raise WellFormedError(
            f"module is not well formed ({len(problems)} problem(s)):\n" + "\n".join(problems)
        )


def errors(mod: IRModule) -> list[str]:
    """Every problem in `mod`, one message each, in program order."""
    out: list[str] = []
    for name, func in mod.items():
        if isinstance(func, Function):
            out += _FunctionChecker(mod, name).run(func)
        elif isinstance(func, T.PrimFunc):
            out += _prim_func_errors(name, func)
    return out


# ---------------------------------------------------------------------------------------------
# Graph functions

_TEXT_LIMIT = 240


def _text(expr: object) -> str:
    try:
        text = str(expr)
    except Exception:  # the printer is a convenience here, never the cause of an error
        text = type(expr).__name__
    text = " ".join(text.split())  # one line per problem
    return text if len(text) <= _TEXT_LIMIT else text[: _TEXT_LIMIT - 3] + "..."


@dataclass(frozen=True)
class _At:
    """Where a problem is: a binding, printed only when there is a problem to report."""

    name: str
    value: object

    def __str__(self) -> str:
        return f"binding {self.name} ({self.name} = {_text(self.value)})"


_Where = str | _At


def _symbolic_defs(info: StructInfo) -> set[str]:
    """Symbolic vars a value of this info defines when matched: bare variables in its shapes."""
    match info:
        case SI.TensorInfo(shape=tuple() as dims) | SI.ShapeInfo(values=tuple() as dims):
            return {d.name for d in dims if isinstance(d, SymVar)}
        case SI.PrimInfo(value=SymVar(name)):
            return {name}
        case SI.TupleInfo(fields):
            return set().union(*(_symbolic_defs(f) for f in fields)) if fields else set()
    return set()


def _used_symbols(info: StructInfo) -> set[str]:
    """Symbolic vars `info` refers to from its scope; a signature's own vars belong to it."""
    match info:
        case SI.FuncInfo():
            return set()
        case SI.TupleInfo(fields):
            return set().union(*(_used_symbols(f) for f in fields)) if fields else set()
    return SI.free_vars(info)


def _bind_symbols(param: StructInfo, arg: StructInfo, mapping: dict[str, S.PrimExpr]) -> None:
    """Map a callee's bare symbolic dims to the caller's dims at the same places."""
    match param, arg:
        case (SI.TensorInfo(shape=tuple() as p), SI.TensorInfo(shape=tuple() as a)) | (
            SI.ShapeInfo(values=tuple() as p),
            SI.ShapeInfo(values=tuple() as a),
        ) if len(p) == len(a):
            for pd, ad in zip(p, a):
                if isinstance(pd, SymVar):
                    mapping.setdefault(pd.name, ad)
        case SI.PrimInfo(value=SymVar(name)), SI.PrimInfo(value=v) if v is not None:
            mapping.setdefault(name, v)
        case SI.TupleInfo(pf), SI.TupleInfo(af) if len(pf) == len(af):
            for x, y in zip(pf, af):
                _bind_symbols(x, y, mapping)


def _may_match(value: StructInfo, target: StructInfo, analyzer: Analyzer) -> bool:
    """Whether a match_cast of a value of info `value` to `target` can succeed at run time."""
    if isinstance(value, SI.ObjectInfo) or isinstance(target, SI.ObjectInfo):
        return True
    match value, target:
        case SI.TensorInfo(), SI.TensorInfo():
            if None not in (value.dtype, target.dtype) and value.dtype != target.dtype:
                return False
            return _dims_may_match(value.shape, value.ndim, target.shape, target.ndim, analyzer)
        case SI.ShapeInfo(), SI.ShapeInfo():
            return _dims_may_match(value.values, value.ndim, target.values, target.ndim, analyzer)
        case SI.PrimInfo(), SI.PrimInfo():
            return value.dtype == target.dtype
        case SI.TupleInfo(a), SI.TupleInfo(b):
            return len(a) == len(b) and all(_may_match(x, y, analyzer) for x, y in zip(a, b))
        case SI.FuncInfo(), SI.FuncInfo():
            return True
    return False


def _dims_may_match(a, a_ndim: int, b, b_ndim: int, analyzer: Analyzer) -> bool:
    if -1 not in (a_ndim, b_ndim) and a_ndim != b_ndim:
        return False
    if a is None or b is None:
        return True
    return not any(analyzer.can_prove_ne(x, y) for x, y in zip(a, b))


def _output_tensors(info: StructInfo) -> list[SI.TensorInfo] | None:
    match info:
        case SI.TensorInfo():
            return [info]
        case SI.TupleInfo(fields) if all(isinstance(f, SI.TensorInfo) for f in fields):
            return list(fields)  # type: ignore[arg-type]
    return None


def _shape_str(dims: Iterable[S.PrimExpr]) -> str:
    return "(" + ", ".join(S.to_str(d) for d in dims) + ")"


class _FunctionChecker:
    """Walks one graph function in program order, carrying what is in scope at each point."""

    def __init__(self, mod: IRModule, name: str):
        self.mod = mod
        self.name = name
        self.errors: list[str] = []
        self.visible: dict[str, Var] = {}  # vars in scope here
        self.symbols: set[str] = set()  # symbolic vars defined here
        self.param_symbols: set[str] = set()
        self.bound: set[str] = set()  # every var bound so far in this function
        self.all_bound: set[str] = set()  # every var bound anywhere in it (to say "before")
        self.left_block: set[str] = set()  # dataflow vars whose block has ended
        self.impure_at: list[str] = []
        self.analyzer = Analyzer()

    def error(self, where: _Where, problem: str) -> None:
        message = f"{self.name}: {where}: {problem}"
        if message not in self.errors:  # a binding's info and its value may show one problem twice
            self.errors.append(message)

    # -- function
    def run(self, func: Function, outer: _FunctionChecker | None = None) -> list[str]:
        if outer is not None:  # a nested function sees what its definition sees
            self.visible, self.symbols = dict(outer.visible), set(outer.symbols)
            self.analyzer = outer.analyzer
        self.all_bound = _bound_names(func.body)
        self._params(func)
        for key, bounds in dict(func.attrs.get("bounds", {})).items():
            self.analyzer.bind(key, *bounds)
        body_info = self._seq(func.body, "the function's return value")
        ret_symbols_ok = self._check_symbols(
            _used_symbols(func.ret_info), "the return info", self.param_symbols
        )
        if body_info is not None and ret_symbols_ok:
            erased = SI.erase(body_info, self.param_symbols)
            if not SI.is_base_of(func.ret_info, erased, self.analyzer):
                self.error(
                    "the return info",
                    f"declared {func.ret_info} but the body returns {erased}",
                )
        if func.pure and self.impure_at:
            self.error(
                ", ".join(self.impure_at),
                "the function is declared pure but makes an impure call here",
            )
        return self.errors

    def _params(self, func: Function) -> None:
        for p in func.params:
            where = f"parameter {getattr(p, 'name', p)!r}"
            if not isinstance(p, Var) or isinstance(p, DataflowVar):
                self.error(where, f"a parameter must be a Var, got {type(p).__name__}")
                if not isinstance(p, Var):
                    continue
            if p.name in self.bound:
                self.error(where, f"parameter {p.name} is declared twice")
            self.bound.add(p.name)
            self.visible[p.name] = p
            self.symbols |= _symbolic_defs(p.info)
            for sym in SI.free_vars(p.info):
                self.analyzer.bind(sym, 0)
        self.param_symbols = set(self.symbols)
        for p in func.params:
            if isinstance(p, Var):
                self._check_symbols(_used_symbols(p.info), f"parameter {p.name!r}")

    def _check_symbols(self, names: set[str], where: _Where, scope: set[str] | None = None) -> bool:
        missing = sorted(names - (self.symbols if scope is None else scope))
        if missing:
            self.error(
                where,
                f"symbolic var(s) {', '.join(missing)} not defined here; define them by a "
                "parameter's shape or a match_cast first",
            )
        return not missing

    # -- scopes
    def _seq(self, seq: SeqExpr, where: _Where) -> StructInfo | None:
        for block in seq.blocks:
            self._block(block)
        body = seq.body
        if isinstance(body, DataflowVar):
            self.error(where, f"returns dataflow var {body.name}; only Vars may leave a dataflow block")
            return None
        if not self._operand(body, where):
            return None
        return self._info(body, where)

    def _block(self, block: BindingBlock) -> None:
        if not isinstance(block, BindingBlock):
            self.error("a block", f"expected a BindingBlock, got {type(block).__name__}")
            return
        in_dataflow = isinstance(block, DataflowBlock)
        local: list[str] = []
        for binding in block.bindings:
            self._binding(binding, in_dataflow)
            if isinstance(binding.var, DataflowVar):
                local.append(binding.var.name)
        for name in local:
            self.visible.pop(name, None)
            self.left_block.add(name)

    def _binding(self, binding: VarBinding | MatchCast, in_dataflow: bool) -> None:
        var, value = binding.var, binding.value
        name = getattr(var, "name", "?")
        where = _At(name, value)
        before = len(self.errors)
        if not isinstance(binding, (VarBinding, MatchCast)):
            self.error(where, f"expected a VarBinding or MatchCast, got {type(binding).__name__}")
            return
        if not isinstance(var, Var):
            self.error(where, f"binds a {type(var).__name__}, not a Var")
            return
        if isinstance(var, DataflowVar) and not in_dataflow:
            self.error(where, f"dataflow var {name} is bound outside a dataflow block")

        match value:
            case If():
                self._if(value, where, in_dataflow)
            case Call():
                self._call(value, where, in_dataflow)
            case Function():
                self.errors += _FunctionChecker(self.mod, f"{self.name}.{name}").run(value, outer=self)
            case SeqExpr():
                self.error(where, "a SeqExpr cannot be bound directly (not normalized)")
            case _:
                self._operand(value, where)

        if isinstance(binding, MatchCast):
            self._match_cast(binding, where)
        if name in self.bound:
            self.error(where, f"{name} is bound twice")
        self._check_symbols(_used_symbols(var.info), where)
        if isinstance(binding, VarBinding) and len(self.errors) == before:
            deduced = self._deduce(value, where)
            if deduced is not None and not SI.is_base_of(var.info, deduced, self.analyzer):
                self.error(where, f"{name} is declared {var.info} but its value deduces {deduced}")
        self.bound.add(name)
        self.visible[name] = var

    def _match_cast(self, binding: MatchCast, where: _Where) -> None:
        new = _symbolic_defs(binding.info) - self.symbols
        self.symbols |= new
        for sym in new:
            self.analyzer.bind(sym, 0)
        self._check_symbols(_used_symbols(binding.info), where)
        if binding.var.info != binding.info:
            self.error(
                where, f"the var is declared {binding.var.info} but the match_cast is to {binding.info}"
            )
        value_info = self._info(binding.value, where)
        if value_info is not None and not _may_match(value_info, binding.info, self.analyzer):
            self.error(where, f"a value of {value_info} can never match {binding.info}")

    def _if(self, node: If, where: _Where, in_dataflow: bool) -> None:
        if in_dataflow:
            self.error(where, "an If cannot appear inside a dataflow block")
        if self._operand(node.cond, where):
            cond = self._info(node.cond, where)
            scalar_dtypes = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint32", "uint64")
            ok = (isinstance(cond, SI.PrimInfo) and cond.dtype in scalar_dtypes) or (
                isinstance(cond, SI.TensorInfo)
                and cond.ndim in (0, -1)
                and cond.dtype in (None, *scalar_dtypes)
            )
            if cond is not None and not ok:
                self.error(where, f"the If condition must be a bool/int scalar, got {cond}")
        for label, branch in (("then", node.then_branch), ("else", node.else_branch)):
            if not isinstance(branch, SeqExpr):
                self.error(where, f"the {label} branch must be a SeqExpr, got {type(branch).__name__}")
                continue
            saved = dict(self.visible), set(self.symbols)
            self._seq(branch, f"{where}, {label} branch result")
            self.visible, self.symbols = saved

    # -- values
    def _operand(self, expr: Expr, where: _Where) -> bool:
        """Check a normalized operand (leaf, tuple of operands, item of one); False on error."""
        match expr:
            case Var():
                return self._use(expr, where)
            case Constant() | StringImm() | Op() | ExternFunc():
                return True
            case PrimValue(value):
                self._check_symbols(S.free_vars(value), where)
                return True
            case ShapeExpr(values):
                self._check_symbols(set().union(*(S.free_vars(v) for v in values)), where)
                return True
            case GlobalVar(name):
                if name not in self.mod:
                    self.error(where, f"GlobalVar {name!r} names no function of the module")
                    return False
                return True
            case Tuple(fields):
                return all([self._operand(f, where) for f in fields])
            case GetItem(tup, _):
                if not self._operand(tup, where):
                    return False
                return self._info(expr, where) is not None
            case Call() | If() | SeqExpr() | Function():
                self.error(
                    where, f"a nested {type(expr).__name__} must be bound to a var first (not normalized)"
                )
                return False
        self.error(where, f"unexpected {type(expr).__name__} in the graph IR")
        return False

    def _use(self, var: Var, where: _Where) -> bool:
        name = var.name
        bound = self.visible.get(name)
        if bound is None:
            if name in self.left_block:
                why = "is a dataflow var used outside its dataflow block"
            elif name in self.bound:
                why = "is used outside the If branch that binds it"
            elif name in self.all_bound:
                why = "is used before its binding"
            else:
                why = "is not defined"
            self.error(where, f"{name} {why}")
            return False
        if bound != var:
            self.error(where, f"this use of {name} is {var!r} but it was bound as {bound!r}")
            return False
        return True

    def _info(self, expr: Expr, where: _Where) -> StructInfo | None:
        try:
            return info_of(expr)
        except (IndexError, TypeError) as e:
            self.error(where, str(e))
            return None

    def _call(self, call: Call, where: _Where, in_dataflow: bool) -> None:
        match call.op:
            case Op(name) if name not in OPS:
                self.error(where, f"no operator named {name!r}")
                return
            case Op(name):
                self._attrs(call, name, where)
            case GlobalVar(name) if name not in self.mod:
                self.error(where, f"calls {name!r}, which names no function of the module")
                return
            case GlobalVar(name) if not isinstance(self.mod[name], Function):
                self.error(
                    where,
                    f"{name} is a {type(self.mod[name]).__name__}; call it through call_tir / call_extern",
                )
                return
            case GlobalVar():
                pass
            case Var():
                if not self._use(call.op, where):
                    return
                if not isinstance(call.op.info, SI.FuncInfo):
                    self.error(where, f"calls {call.op.name}, whose info {call.op.info} is not a function")
                    return
            case ExternFunc():
                pass
            case _:
                self.error(where, f"cannot call a {type(call.op).__name__}")
                return
        args_ok = all([self._operand(a, where) for a in call.args])
        for info in call.sinfo_args:
            self._check_symbols(_used_symbols(info), where)
        if not args_ok:
            return
        if isinstance(call.op, Op) and call.op.name == "call_tir":
            self._call_tir(call, where)
        elif isinstance(call.op, Op) and call.op.name in EXTERN_CALLS:
            self._call_extern(call, where)
        if not self._pure(call):
            if in_dataflow:
                self.error(where, f"impure call to {_callee(call)} inside a dataflow block")
            self.impure_at.append(f"binding {where.name}" if isinstance(where, _At) else str(where))

    def _attrs(self, call: Call, name: str, where: _Where) -> None:
        declared = OPS[name].attrs
        unknown = sorted(set(call.attrs.keys()) - set(declared))
        missing = sorted(k for k, d in declared.items() if d is REQUIRED and k not in call.attrs)
        if unknown:
            self.error(where, f"{name} has no attribute(s) {', '.join(unknown)}")
        if missing:
            self.error(where, f"{name} is missing required attribute(s) {', '.join(missing)}")

    def _pure(self, call: Call) -> bool:
        match call.op:
            case Op(name):
                return OPS[name].pure
            case GlobalVar(name):
                func = self.mod[name]
                return isinstance(func, Function) and func.pure
            case Var(info=SI.FuncInfo(pure=pure)):
                return pure
        return False

    def _call_tir(self, call: Call, where: _Where) -> None:
        args = call.args
        if not 2 <= len(args) <= 3:
            self.error(where, f"call_tir takes (callee, (args...), [shape_args]), got {len(args)} operand(s)")
            return
        callee, inputs = args[0], args[1]
        shape_args = args[2] if len(args) == 3 else ShapeExpr(())
        ok = True
        if not isinstance(callee, GlobalVar) or not isinstance(self.mod[callee.name], T.PrimFunc):
            found = type(self.mod[callee.name] if isinstance(callee, GlobalVar) else callee).__name__
            self.error(where, f"call_tir must call a tensor program (PrimFunc) of the module, got a {found}")
            ok = False
        if not isinstance(inputs, Tuple):
            self.error(where, f"call_tir's arguments must be a Tuple, got {type(inputs).__name__}")
            ok = False
        if not isinstance(shape_args, ShapeExpr):
            self.error(where, f"call_tir's shape_args must be a ShapeExpr, got {type(shape_args).__name__}")
            ok = False
        if len(call.sinfo_args) != 1:
            self.error(where, f"call_tir needs exactly one output struct info, got {len(call.sinfo_args)}")
            ok = False
        if not ok:
            return
        outs = _output_tensors(call.sinfo_args[0])
        if outs is None:
            self.error(
                where, f"call_tir's output must be a tensor or a tuple of tensors, got {call.sinfo_args[0]}"
            )
            return
        prim: T.PrimFunc = self.mod[callee.name]  # type: ignore[assignment]
        buffers, scalars = prim.buffers, prim.scalars
        n_in = len(buffers) - len(outs)
        if n_in != len(inputs.fields):  # type: ignore[union-attr]
            self.error(
                where,
                f"call_tir to {callee.name}: the tensor program takes {len(buffers)} buffer(s), so with "
                f"{len(outs)} output(s) it needs {n_in} input(s), got {len(inputs.fields)}",  # type: ignore[union-attr]
            )
            return
        if len(scalars) != len(shape_args.values):  # type: ignore[union-attr]
            self.error(
                where,
                f"call_tir to {callee.name}: the tensor program takes {len(scalars)} scalar param(s) "
                f"({', '.join(s.name for s in scalars) or 'none'}), got {len(shape_args.values)} shape_args",  # type: ignore[union-attr]
            )
        infos = [info_of(a) for a in inputs.fields] + outs  # type: ignore[union-attr]
        for buf, info in zip(buffers, infos):
            if not isinstance(info, SI.TensorInfo):
                self.error(where, f"call_tir to {callee.name}: buffer {buf.name} gets a {info}, not a tensor")
            elif info.ndim not in (-1, buf.ndim) or info.dtype not in (None, buf.dtype):
                self.error(
                    where,
                    f"call_tir to {callee.name}: buffer {buf.name} is {_shape_str(buf.shape)} {buf.dtype} "
                    f"but gets {info}",
                )

    def _call_extern(self, call: Call, where: _Where) -> None:
        name = call.op.name  # type: ignore[attr-defined]
        args = call.args
        if len(args) != 2:
            self.error(where, f"{name} takes (callee, (args...)), got {len(args)} operand(s)")
            return
        callee = args[0]
        if isinstance(callee, GlobalVar):
            if not isinstance(self.mod[callee.name], ExternFunc):
                self.error(where, f"{name} must call an extern function, {callee.name} is not one")
        elif not isinstance(callee, ExternFunc):
            self.error(where, f"{name} must call an ExternFunc, got a {type(callee).__name__}")
        if not isinstance(args[1], Tuple):
            self.error(where, f"{name}'s arguments must be a Tuple, got {type(args[1]).__name__}")
        if len(call.sinfo_args) != 1:
            self.error(where, f"{name} needs exactly one output struct info, got {len(call.sinfo_args)}")

    # -- deduction, as the BlockBuilder does it
    def _deduce(self, value: Expr, where: _Where) -> StructInfo | None:
        match value:
            case Call(op=Op(name)):
                infos = [self._arg_info(a) for a in value.args]
                try:
                    return OPS[name].infer(value, infos, InferContext(self.analyzer, self.mod))
                except (ValueError, KeyError, IndexError, TypeError) as e:
                    self.error(where, f"deduction fails: {e}")
                    return None
            case Call(op=GlobalVar(name)):
                return self._deduce_global_call(value, self.mod[name], where)  # type: ignore[arg-type]
            case Call(op=Var(info=SI.FuncInfo(params=params, ret=ret))):
                mapping: dict[str, S.PrimExpr] = {}
                for param, arg in zip(params or (), value.args):
                    _bind_symbols(param, info_of(arg), mapping)
                return SI.substitute(SI.erase(ret, set(mapping)), mapping)
            case Call(op=ExternFunc()):
                return SI.ObjectInfo()
            case If(_, then_branch, else_branch):
                a = SI.erase(info_of(then_branch.body), self.symbols)
                b = SI.erase(info_of(else_branch.body), self.symbols)
                return SI.lca(a, b, self.analyzer)
        return self._info(value, where)

    def _arg_info(self, arg: Expr) -> StructInfo:
        if isinstance(arg, GlobalVar):
            func = self.mod[arg.name]
            return func.info if isinstance(func, Function) else SI.ObjectInfo()
        return info_of(arg)

    def _deduce_global_call(self, call: Call, func: Function, where: _Where) -> StructInfo | None:
        name = call.op.name  # type: ignore[attr-defined]
        if len(call.args) != len(func.params):
            self.error(where, f"{name} takes {len(func.params)} argument(s), got {len(call.args)}")
            return None
        mapping: dict[str, S.PrimExpr] = {}
        infos = [info_of(a) for a in call.args]
        for param, info in zip(func.params, infos):
            _bind_symbols(param.info, info, mapping)
        for param, info in zip(func.params, infos):
            expected = SI.substitute(param.info, mapping)
            if not _may_match(info, expected, self.analyzer):
                self.error(where, f"{name}: parameter {param.name} expects {expected}, got {info}")
                return None
        # A callee symbol no argument pins down is unknown here (the caller may use the same name).
        return SI.substitute(SI.erase(func.ret_info, set(mapping)), mapping)


def _callee(call: Call) -> str:
    op = call.op
    if isinstance(op, Op) and op.name in (*EXTERN_CALLS, "call_tir") and call.args:
        return f"{op.name}({getattr(call.args[0], 'name', '?')})"
    return getattr(op, "name", type(op).__name__)


def _bound_names(seq: SeqExpr) -> set[str]:
    """Names of every var bound anywhere in `seq` (If branches included)."""
    out: set[str] = set()
    for block in getattr(seq, "blocks", ()):
        for b in getattr(block, "bindings", ()):
            name = getattr(getattr(b, "var", None), "name", None)
            if name is not None:
                out.add(name)
            if isinstance(getattr(b, "value", None), If):
                out |= _bound_names(b.value.then_branch) | _bound_names(b.value.else_branch)
    return out


# ---------------------------------------------------------------------------------------------
# Tensor programs: a light check of scoping and indexing.


def _prim_func_errors(name: str, func: T.PrimFunc) -> list[str]:
    out: list[str] = []
    where = f"{name} (tensor program)"
    symbols: set[str] = set()
    buffers: dict[str, T.Buffer] = {}
    for p in func.params:
        match p:
            case T.Buffer(shape=shape):
                if p.name in buffers:
                    out.append(f"{where}: buffer parameter {p.name} is declared twice")
                buffers[p.name] = p
                symbols |= {d.name for d in shape if isinstance(d, SymVar)}
            case SymVar(sym):
                if sym in symbols:
                    out.append(f"{where}: scalar parameter {sym} is declared twice")
                symbols.add(sym)
            case _:
                out.append(f"{where}: a parameter must be a Buffer or a SymVar, got {type(p).__name__}")
    for buf in buffers.values():
        missing = sorted(set().union(*(S.free_vars(d) for d in buf.shape)) - symbols)
        if missing:
            out.append(f"{where}: buffer {buf.name}'s shape uses undefined {', '.join(missing)}")
    _PrimChecker(where, out).stmt(func.body, symbols, buffers)
    return out


class _PrimChecker:
    def __init__(self, where: str, out: list[str]):
        self.where, self.out = where, out

    def error(self, problem: str) -> None:
        self.out.append(f"{self.where}: {problem}")

    def index(self, e: S.PrimExpr, symbols: set[str], what: str) -> None:
        missing = sorted(S.free_vars(e) - symbols)
        if missing:
            self.error(f"{what} uses {', '.join(missing)} outside its scope ({S.to_str(e)})")

    def buffer(self, buf: T.Buffer, indices: tuple, symbols: set[str], buffers: dict, what: str) -> None:
        if buffers.get(buf.name) != buf:
            self.error(
                f"{what} of buffer {buf.name}, which is neither a parameter nor an allocation in scope"
            )
        if len(indices) != buf.ndim:
            self.error(f"{what} of {buf.name} has {len(indices)} indices for {buf.ndim} dims")
        for i in indices:
            self.index(i, symbols, f"{what} of {buf.name}")

    def value(self, v: T.Value, symbols: set[str], buffers: dict) -> None:
        match v:
            case S.PrimExpr():
                self.index(v, symbols, "a value")
            case T.Imm():
                pass
            case T.Load(buf, indices):
                self.buffer(buf, indices, symbols, buffers, "a load")
            case T.Binary(_, a, b):
                self.value(a, symbols, buffers)
                self.value(b, symbols, buffers)
            case T.Intrin(_, args):
                for a in args:
                    self.value(a, symbols, buffers)
            case T.Cast(_, x):
                self.value(x, symbols, buffers)
            case T.Select(c, a, b):
                for x in (c, a, b):
                    self.value(x, symbols, buffers)
            case _:
                self.error(f"unexpected value {type(v).__name__}")

    def stmt(self, s: T.Stmt, symbols: set[str], buffers: dict) -> None:
        match s:
            case T.For(var, extent, body):
                self.index(extent, symbols, f"the extent of loop {var.name}")
                if var.name in symbols:
                    self.error(f"loop var {var.name} is already defined")
                self.stmt(body, symbols | {var.name}, buffers)
            case T.Let(var, value, body):
                self.value(value, symbols, buffers)
                if var.name in symbols:
                    self.error(f"let var {var.name} is already defined")
                self.stmt(body, symbols | {var.name}, buffers)
            case T.Store(buf, indices, value):
                self.buffer(buf, indices, symbols, buffers, "a store")
                self.value(value, symbols, buffers)
            case T.IfThenElse(cond, then_body, else_body):
                self.value(cond, symbols, buffers)
                self.stmt(then_body, symbols, buffers)
                if else_body is not None:
                    self.stmt(else_body, symbols, buffers)
            case T.Seq(stmts):
                for x in stmts:
                    self.stmt(x, symbols, buffers)
            case T.Allocate(buf, body):
                for d in buf.shape:
                    self.index(d, symbols, f"the shape of allocation {buf.name}")
                if buf.name in buffers:
                    self.error(f"allocation {buf.name} shadows a buffer of the same name")
                self.stmt(body, symbols, {**buffers, buf.name: buf})
            case T.Barrier():
                pass
            case _:
                self.error(f"unexpected statement {type(s).__name__}")
