"""Reads the text form (see printer.py) back into an IRModule.

The text is Python syntax, so Python's `ast` module tokenizes and parses it (exact line and
column for every node, nothing hand-written to get wrong); the text is never executed. This file
turns the syntax tree into IR nodes, resolving names by scope, checking arities and struct info,
and filling defaulted op attributes as `make_call` does.

Every problem raises `ParseError(message, line, col)` (1-based, columns in characters) naming
what was expected; an exception from an IR constructor is reported at the node being read.

Hand-written text may leave out what the builder would deduce: a binding's annotation (the op's
deduction runs, as in the BlockBuilder), a function's return annotation (the body's info with
symbolic vars that are not the parameters' erased), `pure=` (impure when the body calls an
impure op or a function declared `pure=False`), defaulted op attributes.

Reading is split by idea: parser_common.py (errors and positions, scopes, symbolic integers,
struct info, attribute literals), parser_tir.py (tensor programs), this file (modules and graph
functions, and the entry points).

`parse(text, canonical_names=True)` names every var, symbolic var and buffer by its position of
definition (v0, v1, ...; s0, ...; b0, ...), so two alpha-equivalent modules parse equal; the
test helpers compare modules that way.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

import numpy as np

from llm_deploy.compiler import struct_info as SI
from llm_deploy.compiler.expr import (
    Attrs,
    BaseFunc,
    Binding,
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
    NotNormalizedError,
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
from llm_deploy.compiler.parser_common import (
    Frame,
    ParseError,
    Source,
    call_name,
    is_str,
    located,
    replace_bits,
    suggest,
)
from llm_deploy.compiler.parser_tir import TirReader
from llm_deploy.compiler.printer import (
    BUILTINS,
    SINFO_KWARG,
    deduced_purity,
    info_to_str,
)
from llm_deploy.compiler.shape import PrimExpr, SymVar
from llm_deploy.compiler.struct_info import StructInfo

# Importing the op families registers them, so every op name resolves.
from llm_deploy.compiler import ops as _ops  # noqa: F401  isort: skip


def parse(text: str, *, canonical_names: bool = False) -> IRModule:
    """Read a module: one `@module class`, or top-level `@function` / `@prim_func` definitions."""
    src = Source(text)
    tree = src.syntax_tree()
    parser = _Parser(src, canonical_names)
    try:
        return parser.module(tree)
    except ParseError:
        raise
    except RecursionError:
        raise ParseError("the text is nested too deeply", 1, 1) from None
    except Exception as e:  # every node is read under located; this is the last resort
        raise ParseError(f"cannot read the text ({type(e).__name__}: {e})", 1, 1) from None


def parse_function(text: str, *, canonical_names: bool = False) -> BaseFunc:
    """Read text holding exactly one function definition."""
    mod = parse(text, canonical_names=canonical_names)
    if len(mod) != 1:
        raise ParseError(f"expected exactly one function, found {len(mod)}", 1, 1)
    return next(iter(mod.functions().values()))


def parse_struct_info(text: str) -> StructInfo:
    """Read one struct info, e.g. `Tensor[(n, 4), "float32"]`; its symbolic vars are free."""
    src = Source(text)
    tree = src.syntax_tree(mode="eval")
    parser = _Parser(src, False)
    parser.frames.append(Frame())
    return parser.info(tree.body, define=True)


# ---------------------------------------------------------------------------------------------


@dataclass
class _Entry:
    kind: str  # function | prim_func | extern
    node: ast.AST
    pure: bool | None = None  # as declared by @function(pure=...)


class _Parser(TirReader):
    """Reads a module: its graph functions here, tensor programs in TirReader."""

    def __init__(self, src: Source, canonical: bool):
        super().__init__(src, canonical)
        self.entries: dict[str, _Entry] = {}
        self.funcs: dict[str, BaseFunc] = {}
        self.class_name: str | None = None

    # -- module -------------------------------------------------------------------------------
    def module(self, tree: ast.Module) -> IRModule:
        stmts = tree.body
        if len(stmts) == 1 and isinstance(stmts[0], ast.ClassDef):
            cls = stmts[0]
            if [self.node_text(d) for d in cls.decorator_list] != ["module"]:
                raise self.error(cls, "expected the decorator @module on the class")
            if cls.bases or cls.keywords:
                raise self.error(cls, "a @module class takes no base classes")
            self.class_name = cls.name
            stmts = cls.body
        elif not stmts:
            raise self.error(None, "expected a @module class or @function / @prim_func definitions")
        for st in stmts:
            self.entry(st)
        attrs_stmts = [st for st in stmts if isinstance(st, ast.Expr) and call_name(st.value) == "attrs"]
        if len(attrs_stmts) > 1:
            raise self.error(attrs_stmts[1], "the module's attrs(...) are given twice")
        mod_attrs = self.attrs_stmt(attrs_stmts[0].value) if attrs_stmts else Attrs()
        for name, entry in self.entries.items():
            self.counters = {"v": 0, "s": 0, "b": 0}
            match entry.kind:
                case "function":
                    self.funcs[name] = self.function(entry.node)
                case "prim_func":
                    self.funcs[name] = self.prim_func(entry.node)
                case "extern":
                    self.funcs[name] = self.extern(entry.node)
        return IRModule(self.funcs, dict(mod_attrs.items()))

    def entry(self, st: ast.stmt) -> None:
        match st:
            case ast.FunctionDef(name=name):
                kind, pure = self.decorator(st)
            case ast.Assign(targets=[ast.Name(id=name)], value=value) if call_name(value) == "extern":
                kind, pure = "extern", None
            case ast.Expr(value=value) if call_name(value) == "attrs" and self.class_name is not None:
                return
            case ast.Pass() if self.class_name is not None:
                return
            case _:
                raise self.error(
                    st,
                    'expected a @function or @prim_func definition, `name = extern("symbol")`'
                    + (" or module attrs(...)" if self.class_name is not None else ""),
                )
        if name in self.entries:
            first = self.entries[name].node.lineno
            raise self.error(st, f"the module already defines {name!r} (line {first})")
        self.entries[name] = _Entry(kind, st, pure)

    @located
    def decorator(self, node: ast.FunctionDef) -> tuple[str, bool | None]:
        if len(node.decorator_list) != 1:
            raise self.error(node, "expected exactly one decorator: @function or @prim_func")
        deco = node.decorator_list[0]
        match deco:
            case ast.Name(id="function" | "prim_func" as kind):
                return kind, None
            case ast.Call(func=ast.Name(id="function"), args=[], keywords=keywords):
                pure = None
                for kw in keywords:
                    if kw.arg != "pure" or not isinstance(kw.value, ast.Constant):
                        raise self.error(kw, "@function takes only pure=True or pure=False")
                    if not isinstance(kw.value.value, bool):
                        raise self.error(kw.value, "expected pure=True or pure=False")
                    pure = kw.value.value
                return "function", pure
        raise self.error(
            deco, f"expected @function, @function(pure=False) or @prim_func, found @{self.node_text(deco)}"
        )

    @located
    def extern(self, node: ast.Assign) -> ExternFunc:
        return self.builtin_extern(node.value)

    # -- names --------------------------------------------------------------------------------
    def lookup_var(self, name: str) -> Var | None:
        for frame in reversed(self.frames):
            for scope in reversed(frame.vars):
                if name in scope:
                    return scope[name]
        return None

    def visible_vars(self) -> set[str]:
        return {n for f in self.frames for scope in f.vars for n in scope}

    def global_ref(self, node: ast.AST, name: str) -> GlobalVar:
        if name not in self.entries:
            raise self.error(node, f"the module has no function {name!r}{suggest(name, self.entries)}")
        return GlobalVar(name)

    def qualified(self, node: ast.Attribute) -> Expr | None:
        """`ops.name` (an operator) or `cls.name` / `<class name>.name` (a module function)."""
        if not isinstance(node.value, ast.Name):
            return None
        if node.value.id == "ops":
            if node.attr not in OPS:
                raise self.error(node, f"no operator named {node.attr!r}{suggest(node.attr, OPS)}")
            return Op(node.attr)
        if node.value.id in ("cls", self.class_name):
            return self.global_ref(node, node.attr)
        return None

    @located
    def function(self, node: ast.FunctionDef) -> Function:
        self.frames.append(Frame())
        try:
            return self.function_in_frame(node)
        finally:
            self.frames.pop()

    def function_in_frame(self, node: ast.FunctionDef) -> Function:
        _, declared_pure = self.decorator(node)
        params = self.params(node)
        param_syms = set().union(*(SI.free_vars(p.info) for p in params)) if params else set()
        ret = self.info(node.returns) if node.returns is not None else None
        attrs, stmts = self.body_attrs(node.body)
        self.apply_bounds(attrs, node)
        if not stmts or not isinstance(stmts[-1], ast.Return) or stmts[-1].value is None:
            last = stmts[-1] if stmts else node
            raise self.error(last, "a function ends with `return value`")
        blocks = self.blocks(stmts[:-1])
        body_expr = self.value(stmts[-1].value)
        if ret is None:
            ret = self.deduced_ret(stmts[-1], body_expr, param_syms)
        body = SeqExpr(tuple(blocks), body_expr)
        pure = declared_pure if declared_pure is not None else deduced_purity(body, self.impure_call)
        return Function(tuple(params), body, ret, pure, attrs)

    @located
    def deduced_ret(self, node: ast.AST, body: Expr, keep: set[str]) -> StructInfo:
        return SI.erase(info_of(body), keep)

    def params(self, node: ast.FunctionDef) -> list[Var]:
        params = []
        for arg in self.check_params(node):
            info = self.info(arg.annotation, define=True)
            params.append(self.new_var(arg, arg.arg, info, dataflow=False))
        return params

    def apply_bounds(self, attrs: Attrs, node: ast.AST) -> None:
        bounds = attrs.get("bounds")
        if not isinstance(bounds, Attrs):
            return
        for name, value in bounds.items():
            sym = self.lookup_sym(name)
            if sym is not None and isinstance(value, tuple) and len(value) == 2:
                self.frame.analyzer.bind(sym.name, *value)

    def impure_call(self, value: Expr) -> bool:
        if not isinstance(value, Call):
            return False
        match value.op:
            case Op(name):
                return not OPS[name].pure
            case GlobalVar(name):
                entry = self.entries.get(name)
                if entry is None or entry.kind != "function":
                    return False
                if entry.pure is not None:
                    return not entry.pure
                f = self.funcs.get(name)
                return isinstance(f, Function) and not f.pure
        return False

    def new_var(self, node: ast.AST, name: str, info: StructInfo, dataflow: bool) -> Var:
        if name in self.frame.bound:
            raise self.error(
                node, f"{name!r} is already bound (line {self.frame.bound[name]}); a var is bound once"
            )
        self.frame.bound[name] = getattr(node, "lineno", 0)
        var = (DataflowVar if dataflow else Var)(self.fresh("v", name), info)
        self.frame.vars[-1][name] = var
        return var

    def blocks(self, stmts: list[ast.stmt]) -> list[BindingBlock]:
        blocks: list[BindingBlock] = []
        plain: list[Binding] = []
        for st in stmts:
            kind = self.with_kind(st)
            if kind is None:
                plain.append(self.binding(st, dataflow=False, outputs=set()))
                continue
            if plain:
                blocks.append(BindingBlock(tuple(plain)))
                plain = []
            blocks.append(self.dataflow_block(st) if kind == "dataflow" else self.plain_block(st))
        if plain:
            blocks.append(BindingBlock(tuple(plain)))
        return blocks

    def with_kind(self, st: ast.stmt) -> str | None:
        if not isinstance(st, ast.With):
            return None
        if len(st.items) == 1 and st.items[0].optional_vars is None:
            head = st.items[0].context_expr
            name = call_name(head)
            if name in ("dataflow", "block") and not head.args and not head.keywords:  # type: ignore[attr-defined]
                return name
        raise self.error(st, "expected `with dataflow():` or `with block():`")

    @located
    def dataflow_block(self, node: ast.With) -> DataflowBlock:
        last = node.body[-1]
        if not (isinstance(last, ast.Expr) and call_name(last.value) == "output"):
            raise self.error(last, "a dataflow block ends with output(...) naming the vars that leave it")
        call = last.value
        if call.keywords or not all(isinstance(a, ast.Name) for a in call.args):  # type: ignore[attr-defined]
            raise self.error(call, "output(...) takes the names of vars bound in the block")
        outputs = {a.id: a for a in call.args}  # type: ignore[attr-defined]
        self.frame.vars.append({})
        try:
            bindings = [self.binding(st, dataflow=True, outputs=set(outputs)) for st in node.body[:-1]]
            local = self.frame.vars[-1]
        finally:
            self.frame.vars.pop()
        for name, arg in outputs.items():
            if name not in local:
                raise self.error(arg, f"output {name!r} is not bound in this dataflow block")
            self.frame.vars[-1][name] = local[name]
        return DataflowBlock(tuple(bindings))

    @located
    def plain_block(self, node: ast.With) -> BindingBlock:
        if len(node.body) == 1 and isinstance(node.body[0], ast.Pass):
            return BindingBlock(())
        return BindingBlock(tuple(self.binding(st, dataflow=False, outputs=set()) for st in node.body))

    @located
    def binding(self, st: ast.stmt, dataflow: bool, outputs: set[str]) -> Binding:
        match st:
            case ast.AnnAssign(target=ast.Name(id=name), annotation=ann, value=value) if value is not None:
                pass
            case ast.Assign(targets=[ast.Name(id=name)], value=value):
                ann = None
            case ast.If():
                return self.if_binding(st, dataflow, outputs)
            case ast.FunctionDef():
                func = self.function(st)
                return VarBinding(
                    self.new_var(st, st.name, func.info, dataflow and st.name not in outputs), func
                )
            case ast.Return():
                raise self.error(st, "`return` ends the function; nothing may follow it here")
            case ast.Expr(value=value) if call_name(value) == "output":
                raise self.error(st, "output(...) is the last line of a `with dataflow():` block")
            case ast.With():
                raise self.error(st, "blocks do not nest; close this block first")
            case _:
                raise self.error(
                    st, f"expected a binding `name: StructInfo = value`, found {self.node_text(st)}"
                )
        is_dataflow = dataflow and name not in outputs
        if call_name(value) == "match_cast":
            source, info = self.match_cast(value)
            var_info = self.info(ann) if ann is not None else info
            return MatchCast(
                self.new_var(st.target if ann else st, name, var_info, is_dataflow), source, info
            )
        expr = self.value(value)
        if ann is None:
            info = self.deduce(value, expr)
        else:
            self.validate(value, expr)
            info = self.info(ann)
        target = st.target if isinstance(st, ast.AnnAssign) else st.targets[0]  # type: ignore[union-attr]
        return VarBinding(self.new_var(target, name, info, is_dataflow), expr)

    @located
    def match_cast(self, node: ast.Call) -> tuple[Expr, StructInfo]:
        if len(node.args) != 2 or node.keywords:
            raise self.error(node, "expected match_cast(value, StructInfo)")
        value = self.value(node.args[0])
        return value, self.info(node.args[1], define=True)

    def if_binding(self, node: ast.If, dataflow: bool, outputs: set[str]) -> VarBinding:
        cond = self.value(node.test)
        if not node.orelse:
            raise self.error(node, "an If binding needs an else branch; both branches assign the result")
        then_seq, then_last = self.branch(node.body)
        else_seq, else_last = self.branch(node.orelse)
        name = then_last.targets[0].id if isinstance(then_last, ast.Assign) else then_last.target.id  # type: ignore
        else_name = else_last.targets[0].id if isinstance(else_last, ast.Assign) else else_last.target.id  # type: ignore
        if else_name != name:
            raise self.error(
                else_last, f"both branches must assign the If's result {name!r}, not {else_name!r}"
            )
        infos = [
            (last.annotation, self.info(last.annotation))
            for last in (then_last, else_last)
            if isinstance(last, ast.AnnAssign)
        ]
        if len(infos) == 2 and infos[0][1] != infos[1][1]:
            raise self.error(infos[1][0], f"the branches annotate {name!r} differently")
        if infos:
            info = infos[0][1]
        else:
            keep = {s.name for s in self.all_syms()}
            a = SI.erase(info_of(then_seq.body), keep)
            b = SI.erase(info_of(else_seq.body), keep)
            info = SI.lca(a, b, self.frame.analyzer)
        var = self.new_var(node, name, info, dataflow and name not in outputs)
        return VarBinding(var, If(cond, then_seq, else_seq))

    def all_syms(self) -> list[SymVar]:
        return [s for f in self.frames for scope in f.syms for s in scope.values()]

    def branch(self, stmts: list[ast.stmt]) -> tuple[SeqExpr, ast.Assign | ast.AnnAssign]:
        last = stmts[-1]
        ok = (
            isinstance(last, ast.AnnAssign) and isinstance(last.target, ast.Name) and last.value is not None
        ) or (
            isinstance(last, ast.Assign) and len(last.targets) == 1 and isinstance(last.targets[0], ast.Name)
        )
        if not ok:
            raise self.error(
                last, "the last line of an If branch assigns its result: `r: StructInfo = value`"
            )
        self.frame.vars.append({})
        self.frame.syms.append({})
        try:
            blocks = self.blocks(stmts[:-1])
            body = self.value(last.value)  # type: ignore[arg-type]
        finally:
            self.frame.vars.pop()
            self.frame.syms.pop()
        return SeqExpr(tuple(blocks), body), last  # type: ignore[return-value]

    # -- deduction for bindings written without an annotation ----------------------------------
    def validate(self, node: ast.AST, value: Expr) -> None:
        """Run an annotated call's deduction too, so a call that cannot be right (wrong arity,
        shapes that provably conflict, bad attribute values) is reported where it is written."""
        if not isinstance(value, Call):
            return
        if isinstance(value.op, GlobalVar):
            entry = self.entries.get(value.op.name)
            if entry is None or entry.kind != "function":
                return
        elif not isinstance(value.op, Op):
            return
        try:
            for a in value.args:
                self.arg_info(a)
        except NotNormalizedError:
            return  # nested calls (not normalized) have no infos to deduce from
        self.deduce(node, value)

    @located
    def deduce(self, node: ast.AST, value: Expr) -> StructInfo:
        match value:
            case Call(op=Op(name)):
                infos = [self.arg_info(a) for a in value.args]
                ctx = InferContext(self.frame.analyzer, IRModule(self.funcs))
                return OPS[name].infer(value, infos, ctx)
            case Call(op=GlobalVar(name)):
                sig = self.signature(node, name)
                if sig.params is None or len(sig.params) != len(value.args):
                    raise self.error(
                        node, f"{name} takes {len(sig.params or ())} argument(s), got {len(value.args)}"
                    )
                infos = [info_of(a) for a in value.args]
                mapping: dict[str, PrimExpr] = {}
                for p, a in zip(sig.params, infos):
                    _bind_symbols(p, a, mapping)
                analyzer = self.frame.analyzer
                for i, (p, a) in enumerate(zip(sig.params, infos)):
                    p = SI.substitute(p, mapping)
                    if not (SI.is_base_of(p, a, analyzer) or SI.is_base_of(a, p, analyzer)):
                        raise self.error(
                            node, f"argument {i} of {name}: expected {info_to_str(p)}, got {info_to_str(a)}"
                        )
                # Callee vars the arguments did not bind have no meaning here.
                keep = {sym.name for sym in self.all_syms()}
                return SI.erase(SI.substitute(sig.ret, mapping), keep)
            case Call(op=Var(info=SI.FuncInfo(ret=ret))):
                return ret
        try:
            return info_of(value)
        except NotNormalizedError:
            raise self.error(node, "cannot deduce this value's struct info; annotate the binding") from None

    def arg_info(self, arg: Expr) -> StructInfo:
        if isinstance(arg, GlobalVar):
            entry = self.entries.get(arg.name)
            return (
                self.signature(entry.node, arg.name)
                if entry and entry.kind == "function"
                else SI.ObjectInfo()
            )
        return info_of(arg)

    def signature(self, node: ast.AST, name: str) -> SI.FuncInfo:
        """A graph function's signature, read from its definition (it may come later in the text)."""
        f = self.funcs.get(name)
        if isinstance(f, Function):
            return f.info
        entry = self.entries.get(name)
        if entry is None or entry.kind != "function":
            raise self.error(node, f"{name!r} is not a graph function of the module; annotate the binding")
        saved, saved_counters = self.frames, dict(self.counters)
        self.frames = [Frame()]
        try:
            params = self.params(entry.node)
            ret = self.info(entry.node.returns) if entry.node.returns is not None else SI.ObjectInfo()
        finally:
            self.frames, self.counters = saved, saved_counters
        pure = entry.pure if entry.pure is not None else True
        return SI.FuncInfo(tuple(p.info for p in params), ret, pure)

    # -- graph values ---------------------------------------------------------------------------
    @located
    def value(self, node: ast.AST) -> Expr:
        match node:
            case ast.Name(id=name):
                var = self.lookup_var(name)
                if var is not None:
                    return var
                if name in self.entries:
                    return GlobalVar(name)
                if name in OPS:
                    return Op(name)
                hint = suggest(name, self.visible_vars() | set(self.entries))
                raise self.error(node, f"unknown variable {name!r}{hint}")
            case ast.Attribute():
                found = self.qualified(node)
                if found is None:
                    raise self.error(node, "expected ops.<operator> or cls.<function>")
                return found
            case ast.Tuple(elts):
                return Tuple(tuple(self.value(e) for e in elts))
            case ast.Subscript(value=tup, slice=index):
                return GetItem(self.value(tup), self.index_literal(index))
            case ast.Constant(value=str() as s):
                return StringImm(s)
            case ast.Constant(value=int() | float() | bool()) | ast.UnaryOp(operand=ast.Constant()):
                raise self.error(
                    node,
                    f'a bare number is not a value; write prim({self.node_text(node)}) or const({self.node_text(node)}, "dtype")',
                )
            case ast.Call():
                return self.call(node)
        raise self.error(
            node, f"expected a value (a var, a call, a tuple, t[i], const(...)), found {self.node_text(node)}"
        )

    def index_literal(self, node: ast.AST) -> int:
        match node:
            case ast.Constant(value=int() as i) if not isinstance(i, bool):
                return i
            case ast.UnaryOp(ast.USub(), ast.Constant(value=int() as i)) if not isinstance(i, bool):
                return -i
        raise self.error(node, f"expected an integer tuple index, found {self.node_text(node)}")

    def callee(self, node: ast.AST) -> Expr:
        match node:
            case ast.Name(id=name):
                var = self.lookup_var(name)
                if var is not None:
                    return var
                entry = self.entries.get(name)
                if entry is not None and entry.kind == "function":
                    return GlobalVar(name)
                if name in OPS:
                    return Op(name)
                if entry is not None:
                    return GlobalVar(name)
                hint = suggest(name, set(OPS) | set(self.entries) | BUILTINS)
                raise self.error(node, f"unknown op or function {name!r}{hint}")
            case ast.Attribute():
                found = self.qualified(node)
                if found is not None:
                    return found
        return self.value(node)

    @located
    def call(self, node: ast.Call) -> Expr:
        name = call_name(node)
        if name in BUILTINS:
            if name == "match_cast":
                raise self.error(
                    node, "match_cast(...) is a whole binding: `y: StructInfo = match_cast(x, StructInfo)`"
                )
            return getattr(self, f"builtin_{name}")(node)
        op = self.callee(node.func)
        args = []
        for a in node.args:
            if isinstance(a, ast.Starred):
                raise self.error(a, "*args is not part of the text form")
            args.append(self.value(a))
        attrs: dict[str, Any] = {}
        nodes: dict[str, ast.AST] = {}
        sinfo: tuple[StructInfo, ...] = ()
        for kw in node.keywords:
            if kw.arg == SINFO_KWARG:
                items = kw.value.elts if isinstance(kw.value, ast.List) else [kw.value]
                sinfo = tuple(self.info(i) for i in items)
                continue
            if kw.arg is None and not isinstance(kw.value, ast.Dict):
                raise self.error(kw, 'expected **{"key": value}')
            pairs = self.attr(kw.value).items() if kw.arg is None else [(kw.arg, self.attr(kw.value))]
            for k, v in pairs:
                if k in attrs:
                    raise self.error(kw, f"attribute {k!r} is given twice")
                attrs[k], nodes[k] = v, kw
        if isinstance(op, Op):
            attrs = self.op_attrs(node, op.name, attrs, nodes)
        return Call(op, tuple(args), Attrs.of(attrs), sinfo)

    def op_attrs(self, node: ast.Call, name: str, given: dict[str, Any], nodes: dict[str, ast.AST]) -> dict:
        """Check attribute names against the op's registration and fill defaults, as make_call does."""
        schema = OPS[name].attrs
        for key in given:
            if key not in schema:
                takes = ", ".join(schema) or "no attributes"
                raise self.error(
                    nodes[key], f"{name} has no attribute {key!r}{suggest(key, schema)}; it takes {takes}"
                )
        full = {}
        for key, default in schema.items():
            if key in given:
                full[key] = given[key]
            elif default is REQUIRED:
                raise self.error(node, f"{name} needs the attribute {key}=...")
            else:
                full[key] = default
        return full

    # -- builtin value forms
    def builtin_const(self, node: ast.Call) -> Constant:
        if len(node.args) != 2:
            raise self.error(node, 'expected const(data, "dtype"), e.g. const([[1.0, 2.0]], "float32")')
        dtype = self.dtype(node.args[1])
        if dtype == "bfloat16":
            raise self.error(node.args[1], "bfloat16 constants cannot be written inline")
        literal = self.literal(node.args[0])
        raw_bits: list[tuple[int, int]] = []  # (flat index, bit pattern) of bits(...) elements
        try:
            with np.errstate(over="raise", invalid="raise"):
                data = np.array(replace_bits(literal, raw_bits), dtype=dtype)
        except (ValueError, OverflowError, TypeError, FloatingPointError) as e:
            raise self.error(node.args[0], f"const data does not make a {dtype} array: {e}") from None
        if raw_bits:
            if data.dtype.kind != "f":
                raise self.error(node.args[0], "bits(...) elements are for float constants")
            flat = data.reshape(-1).view(f"u{data.dtype.itemsize}")
            for index, pattern in raw_bits:
                flat[index] = pattern
        for kw in node.keywords:
            if kw.arg != "shape":
                raise self.error(kw, "const(...) takes only shape=(...) besides the data and dtype")
            shape = self.attr(kw.value)
            if not isinstance(shape, tuple) or not all(isinstance(d, int) for d in shape):
                raise self.error(kw.value, "expected shape=(d0, d1, ...) with integers")
            data = data.reshape(shape)
        return Constant(data)

    def builtin_shape(self, node: ast.Call) -> ShapeExpr:
        if node.keywords:
            raise self.error(node, "expected shape(d0, d1, ...)")
        return ShapeExpr(tuple(self.sym(a) for a in node.args))

    def builtin_prim(self, node: ast.Call) -> PrimValue:
        if not 1 <= len(node.args) <= 2 or node.keywords:
            raise self.error(node, 'expected prim(value) or prim(value, "dtype")')
        dtype = self.dtype(node.args[1]) if len(node.args) == 2 else "int64"
        return PrimValue(self.sym(node.args[0]), dtype)

    def builtin_extern(self, node: ast.AST) -> ExternFunc:
        if not (
            isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords and is_str(node.args[0])
        ):
            raise self.error(node, 'expected extern("symbol")')
        return ExternFunc(node.args[0].value)


def _bind_symbols(param: StructInfo, arg: StructInfo, mapping: dict[str, PrimExpr]) -> None:
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
