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
impure op or a function declared `pure=False`), defaulted op attributes. A bare float in a tensor
program takes the float dtype of the other operand (or of the stored buffer), float32 otherwise.

`parse(text, canonical_names=True)` names every var, symbolic var and buffer by its position of
definition (v0, v1, ...; s0, ...; b0, ...), so two alpha-equivalent modules parse equal; the
test helpers compare modules that way.
"""

from __future__ import annotations

import ast
import difflib
import functools
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import struct_info as SI
from llm_deploy.compiler import tir as T
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
from llm_deploy.compiler.ops.registry import OPS, REQUIRED, InferContext, ShapeError
from llm_deploy.compiler.printer import (
    BUILTINS,
    IMPURE_MARK,
    INDEX_OPS,
    SINFO_KWARG,
    deduced_purity,
    info_to_str,
)
from llm_deploy.compiler.shape import Analyzer, PrimExpr, SymVar
from llm_deploy.compiler.struct_info import DTYPES, StructInfo

# Importing the op families registers them, so every op name resolves.
from llm_deploy.compiler import ops as _ops  # noqa: F401  isort: skip


class ParseError(ValueError):
    """Text that is not the IR's text form, with the 1-based line and column of the culprit."""

    def __init__(self, message: str, line: int, col: int, source_line: str | None = None):
        self.message, self.line, self.col, self.source_line = message, line, col, source_line
        super().__init__(message, line, col)

    def __str__(self) -> str:
        text = f"line {self.line}, column {self.col}: {self.message}"
        if self.source_line is not None and self.source_line.strip():
            text += f"\n    {self.source_line}\n    {' ' * max(self.col - 1, 0)}^"
        return text


def parse(text: str, *, canonical_names: bool = False) -> IRModule:
    """Read a module: one `@module class`, or top-level `@function` / `@prim_func` definitions."""
    src = _Source(text)
    tree = src.syntax_tree()
    parser = _Parser(src, canonical_names)
    try:
        return parser.module(tree)
    except ParseError:
        raise
    except RecursionError:
        raise ParseError("the text is nested too deeply", 1, 1) from None
    except Exception as e:  # every node is read under _located; this is the last resort
        raise ParseError(f"cannot read the text ({type(e).__name__}: {e})", 1, 1) from None


def parse_function(text: str, *, canonical_names: bool = False) -> BaseFunc:
    """Read text holding exactly one function definition."""
    mod = parse(text, canonical_names=canonical_names)
    if len(mod) != 1:
        raise ParseError(f"expected exactly one function, found {len(mod)}", 1, 1)
    return next(iter(mod.functions().values()))


def parse_struct_info(text: str) -> StructInfo:
    """Read one struct info, e.g. `Tensor[(n, 4), "float32"]`; its symbolic vars are free."""
    src = _Source(text)
    tree = src.syntax_tree(mode="eval")
    parser = _Parser(src, False)
    parser.frames.append(_Frame())
    return parser.info(tree.body, define=True)


# ---------------------------------------------------------------------------------------------
# Source positions


class _Source:
    """The text, its common indentation removed (so tests can indent it), and positions in it."""

    def __init__(self, text: str):
        self.raw_lines = re.split(r"\r\n|\r|\n", text)
        indents = [len(line) - len(line.lstrip(" \t")) for line in self.raw_lines if line.strip()]
        margin = min(indents, default=0)
        prefix = next((line[:margin] for line in self.raw_lines if line.strip()), "")
        if any(line.strip() and not line.startswith(prefix) for line in self.raw_lines):
            margin = 0
        self.margin = margin
        self.lines = [line[margin:] if line.strip() else "" for line in self.raw_lines]
        self.text = "\n".join(self.lines)

    def syntax_tree(self, mode: str = "exec") -> ast.AST:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return ast.parse(self.text, mode=mode)
        except SyntaxError as e:
            line = e.lineno or 1
            col = e.offset or 1
            if isinstance(e, IndentationError) and self._in_range(line):
                # Python points at the indentation; the culprit is the first thing after it.
                text = self.lines[line - 1]
                col = max(col, len(text) - len(text.lstrip()) + 1)
            col += self.margin if self._in_range(line) else 0
            message = e.msg if e.msg else "invalid syntax"
            raise ParseError(f"invalid syntax: {message}", line, col, self._raw(line)) from None
        except (ValueError, RecursionError, MemoryError, OverflowError) as e:
            raise ParseError(f"cannot read the text: {e}", 1, 1, self._raw(1)) from None

    def _in_range(self, line: int) -> bool:
        return 1 <= line <= len(self.lines)

    def _raw(self, line: int) -> str | None:
        return self.raw_lines[line - 1] if self._in_range(line) else None

    def position(self, node: ast.AST | None) -> tuple[int, int]:
        line = getattr(node, "lineno", None)
        if line is None or not self._in_range(line):
            return 1, 1
        # ast columns count UTF-8 bytes; report characters.
        offset = getattr(node, "col_offset", 0) or 0
        chars = len(self.lines[line - 1].encode("utf-8")[:offset].decode("utf-8", "replace"))
        return line, chars + 1 + self.margin

    def error(self, node: ast.AST | None, message: str) -> ParseError:
        line, col = self.position(node)
        return ParseError(message, line, col, self._raw(line))


def _located(method: Callable) -> Callable:
    """Report any failure while reading `node` (an IR constructor's ValueError, a deduction's
    ShapeError) as a ParseError at that node; inner nodes report first."""

    @functools.wraps(method)
    def wrapper(self: _Parser, node: ast.AST, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, node, *args, **kwargs)
        except ParseError:
            raise
        except RecursionError:
            raise self.src.error(node, "the text is nested too deeply") from None
        except (ShapeError, NotNormalizedError) as e:
            raise self.src.error(node, str(e)) from None
        except Exception as e:
            raise self.src.error(node, f"{type(e).__name__}: {e}") from None

    return wrapper


def _suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _node_text(node: ast.AST, source: str | None = None) -> str:
    """The node as written (its source segment), shortened for messages."""
    try:
        text = ast.get_source_segment(source, node) if source is not None else None
        text = text if text is not None else ast.unparse(node)
    except Exception:
        text = type(node).__name__
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


def _call_name(node: ast.AST) -> str | None:
    """`name` for a call `name(...)`, else None."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id
    return None


def _is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


INFO_HEADS = ("Object", "Tensor", "Shape", "Prim", "Tuple", "Callable")
LOOP_KINDS = {"range": "serial", "parallel": "parallel", "vectorized": "vectorized", "unrolled": "unrolled"}
_BINOPS = {
    ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.FloorDiv: "floordiv",
    ast.Mod: "floormod", ast.Pow: "pow", ast.LShift: "shl", ast.RShift: "shr",
    ast.BitAnd: "bitand", ast.BitOr: "bitor", ast.BitXor: "bitxor",
}  # fmt: skip
_CMPOPS = {ast.Lt: "lt", ast.LtE: "le", ast.Eq: "eq", ast.NotEq: "ne", ast.Gt: "gt", ast.GtE: "ge"}
_INDEX_ARITH = {
    "add": S.add, "sub": S.sub, "mul": S.mul, "floordiv": S.floordiv, "floormod": S.floormod,
    "min": S.minimum, "max": S.maximum,
}  # fmt: skip
_SYM_BINOPS = {ast.Add: S.add, ast.Sub: S.sub, ast.Mult: S.mul, ast.FloorDiv: S.floordiv, ast.Mod: S.floormod}
EXPECT_INFO = (
    'a struct info: Tensor[(n, 4), "float32"], Tensor[ndim(2), "float32"], Tensor, Shape[(n, 4)], '
    'Prim["int64"], Tuple[A, B], Object or Callable[(A, B), R]'
)
EXPECT_SYM = "a symbolic integer expression (names, integers, + - * // %, min, max)"


@dataclass(frozen=True)
class _Bare:
    """A float literal whose dtype comes from where it is used (see the module docstring)."""

    value: float


@dataclass(frozen=True)
class _Bits:
    """A constant's element given by its bit pattern (a NaN with a sign or payload)."""

    pattern: int


def _replace_bits(data: Any, found: list[tuple[int, int]], counter: list[int] | None = None) -> Any:
    """`data` with bits(...) elements as NaN placeholders, noting their flat positions."""
    counter = counter if counter is not None else [0]
    if isinstance(data, list):
        return [_replace_bits(d, found, counter) for d in data]
    counter[0] += 1
    if isinstance(data, _Bits):
        found.append((counter[0] - 1, data.pattern))
        return float("nan")
    return data


@dataclass
class _Frame:
    """Scopes of one function being read: vars, symbolic vars and buffers, innermost last."""

    vars: list[dict[str, Var]] = field(default_factory=lambda: [{}])
    syms: list[dict[str, SymVar]] = field(default_factory=lambda: [{}])
    buffers: list[dict[str, T.Buffer]] = field(default_factory=lambda: [{}])
    bound: dict[str, int] = field(default_factory=dict)  # var name -> line of its binding
    analyzer: Analyzer = field(default_factory=Analyzer)


@dataclass
class _Entry:
    kind: str  # function | prim_func | extern
    node: ast.AST
    pure: bool | None = None  # as declared by @function(pure=...)


# ---------------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, src: _Source, canonical: bool):
        self.src = src
        self.canonical = canonical
        self.entries: dict[str, _Entry] = {}
        self.funcs: dict[str, BaseFunc] = {}
        self.class_name: str | None = None
        self.frames: list[_Frame] = []
        self.counters = {"v": 0, "s": 0, "b": 0}

    def error(self, node: ast.AST | None, message: str) -> ParseError:
        return self.src.error(node, message)

    def node_text(self, node: ast.AST) -> str:
        return _node_text(node, self.src.text)

    def fresh(self, kind: str, name: str) -> str:
        """The IR name of a definition: as written, or by position in canonical mode."""
        if not self.canonical:
            return name
        self.counters[kind] += 1
        return f"{kind}{self.counters[kind] - 1}"

    @property
    def frame(self) -> _Frame:
        return self.frames[-1]

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
        attrs_stmts = [st for st in stmts if isinstance(st, ast.Expr) and _call_name(st.value) == "attrs"]
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
            case ast.Assign(targets=[ast.Name(id=name)], value=value) if _call_name(value) == "extern":
                kind, pure = "extern", None
            case ast.Expr(value=value) if _call_name(value) == "attrs" and self.class_name is not None:
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

    @_located
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

    @_located
    def extern(self, node: ast.Assign) -> ExternFunc:
        return self.builtin_extern(node.value)

    @_located
    def attrs_stmt(self, node: ast.Call) -> Attrs:
        """`attrs(key=value, ...)` or `attrs({"key": value})`."""
        items: dict[str, Any] = {}
        for arg in node.args:
            if not isinstance(arg, ast.Dict):
                raise self.error(arg, 'expected attrs(key=value, ...) or attrs({"key": value})')
            items.update(self.attr(arg).items())
        for kw in node.keywords:
            if kw.arg is None:
                items.update(self.attr(kw.value).items())
            else:
                items[kw.arg] = self.attr(kw.value)
        return Attrs.of(items)

    def body_attrs(self, body: list[ast.stmt]) -> tuple[Attrs, list[ast.stmt]]:
        if body and isinstance(body[0], ast.Expr) and _call_name(body[0].value) == "attrs":
            return self.attrs_stmt(body[0].value), body[1:]
        return Attrs(), body

    # -- names --------------------------------------------------------------------------------
    def lookup_var(self, name: str) -> Var | None:
        for frame in reversed(self.frames):
            for scope in reversed(frame.vars):
                if name in scope:
                    return scope[name]
        return None

    def lookup_sym(self, name: str) -> SymVar | None:
        for frame in reversed(self.frames):
            for scope in reversed(frame.syms):
                if name in scope:
                    return scope[name]
        return None

    def lookup_buffer(self, name: str) -> T.Buffer | None:
        for scope in reversed(self.frame.buffers):
            if name in scope:
                return scope[name]
        return None

    def visible_vars(self) -> set[str]:
        return {n for f in self.frames for scope in f.vars for n in scope}

    def visible_syms(self) -> set[str]:
        return {n for f in self.frames for scope in f.syms for n in scope}

    def define_sym(self, name: str) -> SymVar:
        sym = SymVar(self.fresh("s", name))
        self.frame.syms[-1][name] = sym
        self.frame.analyzer.bind(sym.name, 0)
        return sym

    def global_ref(self, node: ast.AST, name: str) -> GlobalVar:
        if name not in self.entries:
            raise self.error(node, f"the module has no function {name!r}{_suggest(name, self.entries)}")
        return GlobalVar(name)

    def qualified(self, node: ast.Attribute) -> Expr | None:
        """`ops.name` (an operator) or `cls.name` / `<class name>.name` (a module function)."""
        if not isinstance(node.value, ast.Name):
            return None
        if node.value.id == "ops":
            if node.attr not in OPS:
                raise self.error(node, f"no operator named {node.attr!r}{_suggest(node.attr, OPS)}")
            return Op(node.attr)
        if node.value.id in ("cls", self.class_name):
            return self.global_ref(node, node.attr)
        return None

    # -- struct info and symbolic expressions ---------------------------------------------------
    @_located
    def sym(self, node: ast.AST, define: bool = False) -> PrimExpr:
        """A symbolic integer; with `define`, unknown names become new symbolic vars."""
        match node:
            case ast.Constant(value=int() as v) if not isinstance(v, bool):
                return S.const(v)
            case ast.Name(id=name):
                found = self.lookup_sym(name)
                if found is not None:
                    return found
                if define:
                    return self.define_sym(name)
                hint = _suggest(name, self.visible_syms())
                raise self.error(
                    node,
                    f"unknown symbolic variable {name!r}{hint}; symbolic vars are defined by the "
                    "parameters' shapes and by match_cast",
                )
            case ast.BinOp(left, op, right) if type(op) in _SYM_BINOPS:
                a, b = self.sym(left, define), self.sym(right, define)
                try:
                    return _SYM_BINOPS[type(op)](a, b)
                except ZeroDivisionError:
                    raise self.error(node, f"division by zero in {self.node_text(node)}") from None
            case ast.UnaryOp(ast.USub(), operand):
                return S.mul(self.sym(operand, define), -1)
            case ast.Call(func=ast.Name(id="min" | "max" as fn), args=args, keywords=[]) if len(args) >= 2:
                values = [self.sym(a, define) for a in args]
                combine = S.minimum if fn == "min" else S.maximum
                return functools.reduce(combine, values)
        raise self.error(node, f"expected {EXPECT_SYM}, found {self.node_text(node)}")

    def dims(self, node: ast.AST, define: bool) -> tuple[PrimExpr, ...]:
        if not isinstance(node, ast.Tuple):
            raise self.error(
                node, f"expected a shape tuple like (n, 4) or (n,), found {self.node_text(node)}"
            )
        return tuple(self.sym(e, define) for e in node.elts)

    def dtype(self, node: ast.AST) -> str:
        if not _is_str(node):
            raise self.error(node, f'expected a dtype string such as "float32", found {self.node_text(node)}')
        if node.value not in DTYPES:
            raise self.error(node, f"unknown dtype {node.value!r}; expected one of {', '.join(DTYPES)}")
        return node.value

    def shape_spec(self, node: ast.AST | None, define: bool) -> tuple[tuple[PrimExpr, ...] | None, int]:
        """A shape tuple, `ndim(k)`, or nothing (None): (dims or None, ndim)."""
        if node is None:
            return None, -1
        if _call_name(node) == "ndim":
            args = node.args  # type: ignore[attr-defined]
            if len(args) != 1 or node.keywords or not isinstance(args[0], ast.Constant):  # type: ignore[attr-defined]
                raise self.error(node, "expected ndim(k) with an integer k")
            k = args[0].value
            if not isinstance(k, int) or isinstance(k, bool) or k < 0:
                raise self.error(
                    args[0], f"expected a non-negative integer rank, found {self.node_text(args[0])}"
                )
            return None, k
        dims = self.dims(node, define)
        return dims, len(dims)

    @_located
    def info(self, node: ast.AST, define: bool = False) -> StructInfo:
        """A struct info; with `define`, new symbolic vars in it become defined (params, match_cast)."""
        match node:
            case ast.Name(id="Object"):
                return SI.ObjectInfo()
            case ast.Name(id="Tensor"):
                return SI.TensorInfo()
            case ast.Name(id="Shape"):
                return SI.ShapeInfo()
            case ast.Subscript(value=ast.Name(id=head), slice=sl) if head in INFO_HEADS:
                return self.info_subscript(head, sl, define)
        raise self.error(node, f"expected {EXPECT_INFO}; found {self.node_text(node)}")

    def info_subscript(self, head: str, sl: ast.AST, define: bool) -> StructInfo:
        elts = sl.elts if isinstance(sl, ast.Tuple) else [sl]
        match head:
            case "Tensor":
                if elts and _is_str(elts[-1]):
                    if len(elts) > 2:
                        raise self.error(sl, 'expected Tensor[shape, "dtype"] with a shape tuple like (n, 4)')
                    dims, ndim = self.shape_spec(elts[0] if len(elts) == 2 else None, define)
                    return SI.TensorInfo(dims, self.dtype(elts[-1]), ndim)
                dims, ndim = self.shape_spec(sl, define)
                return SI.TensorInfo(dims, None, ndim)
            case "Shape":
                dims, ndim = self.shape_spec(sl, define)
                return SI.ShapeInfo(dims, ndim)
            case "Prim":
                if not elts or not _is_str(elts[-1]) or len(elts) > 2:
                    raise self.error(sl, 'expected Prim["int64"] or Prim[value, "int64"]')
                value = self.sym(elts[0], define) if len(elts) == 2 else None
                return SI.PrimInfo(self.dtype(elts[-1]), value)
            case "Tuple":
                return SI.TupleInfo(tuple(self.info(e, define) for e in elts))
            case "Object":
                raise self.error(sl, "Object takes no parameters")
        # Callable[(A, B), R] / Callable[..., R] / Callable[(A,), R, "impure"]
        if not isinstance(sl, ast.Tuple) or len(elts) not in (2, 3):
            raise self.error(
                sl, 'expected Callable[(A, B), R], Callable[..., R] or Callable[(A,), R, "impure"]'
            )
        pure = True
        if len(elts) == 3:
            if not (_is_str(elts[2]) and elts[2].value == IMPURE_MARK):
                raise self.error(elts[2], f'expected "{IMPURE_MARK}" as the third part of Callable[...]')
            pure = False
        first = elts[0]
        if isinstance(first, ast.Constant) and first.value is Ellipsis:
            params = None
        elif isinstance(first, ast.Tuple):
            params = tuple(self.info(p, define) for p in first.elts)
        else:
            raise self.error(first, "expected the parameters' infos as a tuple, (A, B) or (A,), or ...")
        return SI.FuncInfo(params, self.info(elts[1], define), pure)

    @_located
    def attr(self, node: ast.AST) -> Any:
        """An attribute value: None, bools, numbers, strings, tuples, dicts, symbolic ints, infos."""
        match node:
            case ast.Constant(value=None | bool() | int() | float() | str() as v):
                return v
            case ast.UnaryOp(ast.USub() | ast.UAdd() as op, ast.Constant(value=int() | float() as v)) if (
                not isinstance(v, bool)
            ):
                return -v if isinstance(op, ast.USub) else v
            case ast.Tuple(elts) | ast.List(elts):
                return tuple(self.attr(e) for e in elts)
            case ast.Dict(keys, values):
                items = {}
                for k, v in zip(keys, values):
                    if k is None or not _is_str(k):
                        raise self.error(v if k is None else k, "dict attribute keys must be strings")
                    items[k.value] = self.attr(v)
                return Attrs.of(items)
            case ast.Call(func=ast.Name(id="float")):
                return self.float_call(node)
            case ast.Name(id="Object" | "Tensor" | "Shape") | ast.Subscript(value=ast.Name(id=_)):
                return self.info(node)
        return self.sym(node)

    def float_call(self, node: ast.Call) -> float:
        if len(node.args) != 1 or node.keywords or not _is_str(node.args[0]):
            raise self.error(node, 'expected float("inf"), float("-inf") or float("nan")')
        try:
            return float(node.args[0].value)
        except ValueError:
            raise self.error(node.args[0], f"not a float: {node.args[0].value!r}") from None

    # -- graph functions ------------------------------------------------------------------------
    def check_params(self, node: ast.FunctionDef) -> list[ast.arg]:
        a = node.args
        if a.posonlyargs or a.vararg or a.kwonlyargs or a.kwarg or a.defaults:
            raise self.error(node, "parameters are plain `name: StructInfo` (no defaults, *args or keywords)")
        for arg in a.args:
            if arg.annotation is None:
                raise self.error(arg, f"parameter {arg.arg!r} needs an annotation")
        return a.args

    @_located
    def function(self, node: ast.FunctionDef) -> Function:
        self.frames.append(_Frame())
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

    @_located
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
            name = _call_name(head)
            if name in ("dataflow", "block") and not head.args and not head.keywords:  # type: ignore[attr-defined]
                return name
        raise self.error(st, "expected `with dataflow():` or `with block():`")

    @_located
    def dataflow_block(self, node: ast.With) -> DataflowBlock:
        last = node.body[-1]
        if not (isinstance(last, ast.Expr) and _call_name(last.value) == "output"):
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

    @_located
    def plain_block(self, node: ast.With) -> BindingBlock:
        if len(node.body) == 1 and isinstance(node.body[0], ast.Pass):
            return BindingBlock(())
        return BindingBlock(tuple(self.binding(st, dataflow=False, outputs=set()) for st in node.body))

    @_located
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
            case ast.Expr(value=value) if _call_name(value) == "output":
                raise self.error(st, "output(...) is the last line of a `with dataflow():` block")
            case ast.With():
                raise self.error(st, "blocks do not nest; close this block first")
            case _:
                raise self.error(
                    st, f"expected a binding `name: StructInfo = value`, found {self.node_text(st)}"
                )
        is_dataflow = dataflow and name not in outputs
        if _call_name(value) == "match_cast":
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

    @_located
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

    @_located
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
        self.frames = [_Frame()]
        try:
            params = self.params(entry.node)
            ret = self.info(entry.node.returns) if entry.node.returns is not None else SI.ObjectInfo()
        finally:
            self.frames, self.counters = saved, saved_counters
        pure = entry.pure if entry.pure is not None else True
        return SI.FuncInfo(tuple(p.info for p in params), ret, pure)

    # -- graph values ---------------------------------------------------------------------------
    @_located
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
                hint = _suggest(name, self.visible_vars() | set(self.entries))
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
                hint = _suggest(name, set(OPS) | set(self.entries) | BUILTINS)
                raise self.error(node, f"unknown op or function {name!r}{hint}")
            case ast.Attribute():
                found = self.qualified(node)
                if found is not None:
                    return found
        return self.value(node)

    @_located
    def call(self, node: ast.Call) -> Expr:
        name = _call_name(node)
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
                    nodes[key], f"{name} has no attribute {key!r}{_suggest(key, schema)}; it takes {takes}"
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
                data = np.array(_replace_bits(literal, raw_bits), dtype=dtype)
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

    @_located
    def literal(self, node: ast.AST) -> Any:
        """Nested lists of numbers (a constant's data)."""
        match node:
            case ast.List(elts) | ast.Tuple(elts):
                return [self.literal(e) for e in elts]
            case ast.Constant(value=bool() | int() | float() as v):
                return v
            case ast.UnaryOp(ast.USub() | ast.UAdd() as op, ast.Constant(value=int() | float() as v)) if (
                not isinstance(v, bool)
            ):
                return -v if isinstance(op, ast.USub) else v
            case ast.Call(func=ast.Name(id="float")):
                return self.float_call(node)
            case ast.Call(func=ast.Name(id="bits"), args=[ast.Constant(value=int() as v)], keywords=[]):
                if isinstance(v, bool) or not 0 <= v < 2**64:
                    raise self.error(node, "expected bits(pattern) with a non-negative bit pattern")
                return _Bits(v)
        raise self.error(node, f"expected a number or a nested list of numbers, found {self.node_text(node)}")

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
            isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords and _is_str(node.args[0])
        ):
            raise self.error(node, 'expected extern("symbol")')
        return ExternFunc(node.args[0].value)

    # -- tensor programs -----------------------------------------------------------------------
    @_located
    def prim_func(self, node: ast.FunctionDef) -> T.PrimFunc:
        if node.returns is not None:
            raise self.error(node.returns, "a @prim_func returns nothing; it writes its output buffers")
        self.frames.append(_Frame())
        try:
            params: list[T.Buffer | SymVar] = []
            for arg in self.check_params(node):
                params.append(self.prim_param(arg))
            names = [a.arg for a in node.args.args]
            for i, name in enumerate(names):
                if name in names[:i]:
                    raise self.error(node.args.args[i], f"parameter {name!r} appears twice")
            attrs, stmts = self.body_attrs(node.body)
            if not stmts:
                raise self.error(node, "a @prim_func needs a body")
            return T.PrimFunc(tuple(params), self.tblock(stmts), attrs)
        finally:
            self.frames.pop()

    @_located
    def prim_param(self, arg: ast.arg) -> T.Buffer | SymVar:
        ann = arg.annotation
        match ann:
            case ast.Subscript(value=ast.Name(id="Buffer"), slice=ast.Tuple(elts=elts)) if (
                2 <= len(elts) <= 3
            ):
                dims = self.dims(elts[0], define=True)
                scope = self.scope_str(elts[2]) if len(elts) == 3 else "global"
                buf = T.Buffer(self.fresh("b", arg.arg), dims, self.dtype(elts[1]), scope)
                self.frame.buffers[-1][arg.arg] = buf
                return buf
            case ast.Subscript(value=ast.Name(id="Prim"), slice=ast.Constant(value="int64")):
                found = self.lookup_sym(arg.arg)
                return found if found is not None else self.define_sym(arg.arg)
        raise self.error(
            ann, 'expected Buffer[(n, 4), "float32"], Buffer[shape, dtype, "scope"] or Prim["int64"]'
        )

    def scope_str(self, node: ast.AST) -> str:
        if not _is_str(node) or node.value not in ("global", "local", "shared"):
            raise self.error(node, 'expected a buffer scope: "global", "local" or "shared"')
        return node.value

    def tblock(self, stmts: list[ast.stmt]) -> T.Stmt:
        """A block: each statement in order; `k = v` and `buf = alloc(...)` scope the rest."""
        out: list[T.Stmt] = []
        for i, st in enumerate(stmts):
            if isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name):
                out.append(self.scoped_binding(st, stmts[i + 1 :]))
                break
            out.append(self.tstmt(st))
        return out[0] if len(out) == 1 else T.Seq(tuple(out))

    @_located
    def scoped_binding(self, st: ast.Assign, rest: list[ast.stmt]) -> T.Stmt:
        name = st.targets[0].id  # type: ignore[attr-defined]
        if not rest:
            raise self.error(
                st, f"`{name} = ...` binds {name} for the lines after it in its block, and none follow"
            )
        if _call_name(st.value) == "alloc":
            return self.with_buffer(st.value, name, lambda: self.tblock(rest))
        return self.with_let(st.value, name, lambda: self.tblock(rest))

    def with_let(self, value_node: ast.AST, name: str, body: Callable[[], T.Stmt]) -> T.Let:
        value = self.resolve(self.tval(value_node))
        self.frame.syms.append({})
        try:
            var = self.define_sym(name)
            return T.Let(var, value, body())
        finally:
            self.frame.syms.pop()

    def with_buffer(self, call: ast.Call, name: str, body: Callable[[], T.Stmt]) -> T.Allocate:
        args = list(call.args) + [kw.value for kw in call.keywords if kw.arg == "scope"]
        if len(args) not in (2, 3) or any(kw.arg != "scope" for kw in call.keywords):
            raise self.error(
                call, 'expected alloc(shape, "dtype", "scope"), e.g. alloc((1,), "float32", "local")'
            )
        scope = self.scope_str(args[2]) if len(args) == 3 else "global"
        buf = T.Buffer(self.fresh("b", name), self.dims(args[0], define=False), self.dtype(args[1]), scope)
        self.frame.buffers.append({name: buf})
        try:
            return T.Allocate(buf, body())
        finally:
            self.frame.buffers.pop()

    @_located
    def tstmt(self, st: ast.stmt) -> T.Stmt:
        """One statement that stands for itself (the `with` forms scope explicitly)."""
        match st:
            case ast.For(target=ast.Name(id=name), iter=it, body=body, orelse=[]):
                kind, extent, thread = self.loop_head(it)
                self.frame.syms.append({})
                try:
                    var = self.define_sym(name)
                    return T.For(var, extent, self.tblock(body), kind, thread)
                finally:
                    self.frame.syms.pop()
            case ast.Assign(targets=[ast.Subscript(value=ast.Name(id=name), slice=sl)], value=value):
                buf = self.buffer(st.targets[0], name)
                indices = self.tindices(sl, buf, st.targets[0], name)
                v = self.tval(value)
                dtype = buf.dtype if buf.dtype in T.FLOAT_DTYPES else "float32"
                return T.Store(buf, indices, self.resolve(v, dtype))
            case ast.Assign(targets=[ast.Name()]):
                raise self.error(
                    st, "`k = ...` scopes the rest of its block here; use `with let(value) as k:`"
                )
            case ast.If(test, body, orelse):
                cond = self.resolve(self.tval(test))
                return T.IfThenElse(cond, self.tblock(body), self.tblock(orelse) if orelse else None)
            case ast.With(items=[ast.withitem(context_expr=ctx, optional_vars=target)]):
                return self.with_stmt(st, ctx, target)
            case ast.Expr(value=ast.Call(func=ast.Name(id="barrier"), args=[], keywords=[])):
                return T.Barrier()
            case ast.Pass():
                return T.Seq(())
        raise self.error(
            st,
            "expected a loop-level statement: for, C[i] = v, k = v, if/else, with let(...)/alloc(...)/seq(), "
            f"barrier(); found {self.node_text(st)}",
        )

    def with_stmt(self, st: ast.With, ctx: ast.AST, target: ast.AST | None) -> T.Stmt:
        head = _call_name(ctx)
        if head == "seq" and target is None and not ctx.args and not ctx.keywords:  # type: ignore[attr-defined]
            return T.Seq(tuple(self.tstmt(s) for s in st.body))
        if head in ("let", "alloc") and isinstance(target, ast.Name):
            body = lambda: self.tblock(st.body)  # noqa: E731
            if head == "alloc":
                return self.with_buffer(ctx, target.id, body)  # type: ignore[arg-type]
            if len(ctx.args) != 1 or ctx.keywords:  # type: ignore[attr-defined]
                raise self.error(ctx, "expected `with let(value) as k:`")
            return self.with_let(ctx.args[0], target.id, body)  # type: ignore[attr-defined]
        raise self.error(
            st, "expected `with let(value) as k:`, `with alloc(shape, dtype, scope) as buf:` or `with seq():`"
        )

    def loop_head(self, it: ast.AST) -> tuple[str, PrimExpr, str | None]:
        head = _call_name(it)
        if head in LOOP_KINDS:
            if len(it.args) != 1 or it.keywords:  # type: ignore[attr-defined]
                raise self.error(it, f"expected {head}(extent); loops start at 0")
            return LOOP_KINDS[head], self.sym(it.args[0]), None  # type: ignore[attr-defined]
        if head == "thread":
            args = it.args  # type: ignore[attr-defined]
            if len(args) != 2 or it.keywords or not _is_str(args[1]):  # type: ignore[attr-defined]
                raise self.error(it, 'expected thread(extent, "threadIdx.x")')
            return "thread", self.sym(args[0]), args[1].value
        raise self.error(it, 'expected range(n), parallel(n), vectorized(n), unrolled(n) or thread(n, "tag")')

    def buffer(self, node: ast.AST, name: str) -> T.Buffer:
        buf = self.lookup_buffer(name)
        if buf is None:
            names = {n for scope in self.frame.buffers for n in scope}
            raise self.error(node, f"unknown buffer {name!r}{_suggest(name, names)}")
        return buf

    def tindices(self, sl: ast.AST, buf: T.Buffer, node: ast.AST, name: str) -> tuple[PrimExpr, ...]:
        elts = sl.elts if isinstance(sl, ast.Tuple) else [sl]
        if len(elts) != buf.ndim:
            raise self.error(node, f"{name} has {buf.ndim} dim(s) but is indexed with {len(elts)}")
        out = []
        for e in elts:
            v = self.tval(e)
            if not isinstance(v, PrimExpr):
                raise self.error(
                    e,
                    "an index is an integer index expression (loop vars, lets, integers); bind a loaded value to a name first",
                )
            out.append(v)
        return tuple(out)

    def resolve(self, v: T.Value | _Bare, dtype: str = "float32") -> T.Value:
        return T.Imm(v.value, dtype) if isinstance(v, _Bare) else v

    def resolve_pair(self, a: T.Value | _Bare, b: T.Value | _Bare) -> tuple[T.Value, T.Value]:
        def float_dtype(other: T.Value | _Bare) -> str:
            if isinstance(other, _Bare):
                return "float32"
            d = T.dtype_of(other)
            return d if d in T.FLOAT_DTYPES else "float32"

        return self.resolve(a, float_dtype(b)), self.resolve(b, float_dtype(a))

    @_located
    def tval(self, node: ast.AST) -> T.Value | _Bare:
        match node:
            case ast.Constant(value=bool() as v):
                return T.Imm(v, "bool")
            case ast.Constant(value=int() as v):
                return S.const(v)
            case ast.Constant(value=float() as v):
                return _Bare(v)
            case ast.Name(id=name):
                sym = self.lookup_sym(name)
                if sym is not None:
                    return sym
                if self.lookup_buffer(name) is not None:
                    raise self.error(node, f"{name} is a buffer; read an element with {name}[i, ...]")
                raise self.error(node, f"unknown variable {name!r}{_suggest(name, self.visible_syms())}")
            case ast.Subscript(value=ast.Name(id=name), slice=sl):
                buf = self.buffer(node, name)
                return T.Load(buf, self.tindices(sl, buf, node, name))
            case ast.BinOp(left, op, right) if type(op) in _BINOPS:
                return self.tbinary(node, _BINOPS[type(op)], self.tval(left), self.tval(right))
            case ast.Compare(left, [op], [right]) if type(op) in _CMPOPS:
                return self.tbinary(node, _CMPOPS[type(op)], self.tval(left), self.tval(right))
            case ast.Compare():
                raise self.error(node, "comparisons do not chain here; join them with `and`")
            case ast.BoolOp(op, values):
                name = "and" if isinstance(op, ast.And) else "or"
                vals = [self.tval(v) for v in values]
                out = vals[0]
                for v in vals[1:]:
                    out = self.tbinary(node, name, out, v)
                return out
            case ast.UnaryOp(ast.USub(), ast.Constant(value=int() | float() as v)) if not isinstance(v, bool):
                return S.const(-v) if isinstance(v, int) else _Bare(-v)
            case ast.UnaryOp(ast.USub(), operand):
                x = self.tval(operand)
                return S.mul(x, -1) if isinstance(x, PrimExpr) else T.Intrin("neg", (self.resolve(x),))
            case ast.UnaryOp(ast.Not(), operand):
                return T.Intrin("not", (self.resolve(self.tval(operand)),))
            case ast.Call(func=ast.Name(id=name), args=args, keywords=[]):
                return self.tcall(node, name, args)
            case ast.IfExp():
                raise self.error(node, "write a conditional value as select(cond, a, b)")
        raise self.error(node, f"expected a loop-level value, found {self.node_text(node)}")

    def tbinary(self, node: ast.AST, op: str, a: T.Value | _Bare, b: T.Value | _Bare) -> T.Value:
        if isinstance(a, PrimExpr) and isinstance(b, PrimExpr) and op in INDEX_OPS:
            try:
                return _INDEX_ARITH[op](a, b)
            except ZeroDivisionError:
                raise self.error(node, f"division by zero in {self.node_text(node)}") from None
        return T.Binary(op, *self.resolve_pair(a, b))

    def tcall(self, node: ast.Call, name: str, args: list[ast.AST]) -> T.Value:
        def arity(k: int, form: str) -> None:
            if len(args) != k:
                raise self.error(node, f"expected {form}")

        if name in DTYPES:
            form = f'{name}(number), a constant of that dtype; convert a value with cast("{name}", v)'
            arity(1, form)
            if isinstance(args[0], (ast.List, ast.Tuple, ast.Name, ast.Subscript, ast.BinOp)):
                raise self.error(args[0], f"expected {form}")
            lit = self.literal(args[0])
            if isinstance(lit, _Bits):
                raise self.error(args[0], "bits(...) is for elements of float constants")
            return T.Imm(lit, name)
        match name:
            case "cast":
                arity(2, 'cast("dtype", value)')
                return T.Cast(self.dtype(args[0]), self.resolve(self.tval(args[1])))
            case "select":
                arity(3, "select(cond, a, b)")
                a, b = self.resolve_pair(self.tval(args[1]), self.tval(args[2]))
                return T.Select(self.resolve(self.tval(args[0])), a, b)
            case "min" | "max":
                arity(2, f"{name}(a, b)")
                return self.tbinary(node, name, self.tval(args[0]), self.tval(args[1]))
            case "binary":
                arity(3, 'binary("op", a, b)')
                if not _is_str(args[0]) or args[0].value not in T.BINARY_OPS:  # type: ignore[attr-defined]
                    raise self.error(args[0], f"expected a binary op name: {', '.join(sorted(T.BINARY_OPS))}")
                return T.Binary(args[0].value, *self.resolve_pair(self.tval(args[1]), self.tval(args[2])))  # type: ignore
        if name in T.INTRINSICS:
            return T.Intrin(name, tuple(self.resolve(self.tval(a)) for a in args))
        known = sorted(T.INTRINSICS | {"cast", "select", "min", "max", "binary"} | set(DTYPES))
        raise self.error(node.func, f"unknown intrinsic {name!r}{_suggest(name, known)}")


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
