"""What the readers of the text form share: errors with positions, the source text, scopes,
and reading symbolic integers, struct info and attribute literals (see parser.py)."""

from __future__ import annotations

import ast
import difflib
import functools
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import struct_info as SI
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.expr import Attrs, NotNormalizedError, Var
from llm_deploy.compiler.ops.registry import ShapeError
from llm_deploy.compiler.printer import IMPURE_MARK
from llm_deploy.compiler.shape import Analyzer, PrimExpr, SymVar
from llm_deploy.compiler.struct_info import DTYPES, StructInfo


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


class Source:
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


def located(method: Callable) -> Callable:
    """Report any failure while reading `node` (an IR constructor's ValueError, a deduction's
    ShapeError) as a ParseError at that node; inner nodes report first."""

    @functools.wraps(method)
    def wrapper(self: Reader, node: ast.AST, *args: Any, **kwargs: Any) -> Any:
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


def suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def source_text(node: ast.AST, source: str | None = None) -> str:
    """The node as written (its source segment), shortened for messages."""
    try:
        text = ast.get_source_segment(source, node) if source is not None else None
        text = text if text is not None else ast.unparse(node)
    except Exception:
        text = type(node).__name__
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


def call_name(node: ast.AST) -> str | None:
    """`name` for a call `name(...)`, else None."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id
    return None


def is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


INFO_HEADS = ("Object", "Tensor", "Shape", "Prim", "Tuple", "Callable")

_SYM_BINOPS = {ast.Add: S.add, ast.Sub: S.sub, ast.Mult: S.mul, ast.FloorDiv: S.floordiv, ast.Mod: S.floormod}

EXPECT_INFO = (
    'a struct info: Tensor[(n, 4), "float32"], Tensor[ndim(2), "float32"], Tensor, Shape[(n, 4)], '
    'Prim["int64"], Tuple[A, B], Object or Callable[(A, B), R]'
)

EXPECT_SYM = "a symbolic integer expression (names, integers, + - * // %, min, max)"


@dataclass(frozen=True)
class Bits:
    """A constant's element given by its bit pattern (a NaN with a sign or payload)."""

    pattern: int


def replace_bits(data: Any, found: list[tuple[int, int]], counter: list[int] | None = None) -> Any:
    """`data` with bits(...) elements as NaN placeholders, noting their flat positions."""
    counter = counter if counter is not None else [0]
    if isinstance(data, list):
        return [replace_bits(d, found, counter) for d in data]
    counter[0] += 1
    if isinstance(data, Bits):
        found.append((counter[0] - 1, data.pattern))
        return float("nan")
    return data


@dataclass
class Frame:
    """Scopes of one function being read: vars, symbolic vars and buffers, innermost last."""

    vars: list[dict[str, Var]] = field(default_factory=lambda: [{}])
    syms: list[dict[str, SymVar]] = field(default_factory=lambda: [{}])
    buffers: list[dict[str, T.Buffer]] = field(default_factory=lambda: [{}])
    bound: dict[str, int] = field(default_factory=dict)  # var name -> line of its binding
    analyzer: Analyzer = field(default_factory=Analyzer)


# ---------------------------------------------------------------------------------------------


class Reader:
    """Reads parts of the syntax tree common to graph functions and tensor programs."""

    def __init__(self, src: Source, canonical: bool):
        self.src = src
        self.canonical = canonical
        self.frames: list[Frame] = []
        self.counters = {"v": 0, "s": 0, "b": 0}

    def error(self, node: ast.AST | None, message: str) -> ParseError:
        return self.src.error(node, message)

    def node_text(self, node: ast.AST) -> str:
        return source_text(node, self.src.text)

    def fresh(self, kind: str, name: str) -> str:
        """The IR name of a definition: as written, or by position in canonical mode."""
        if not self.canonical:
            return name
        self.counters[kind] += 1
        return f"{kind}{self.counters[kind] - 1}"

    @property
    def frame(self) -> Frame:
        return self.frames[-1]

    def lookup_sym(self, name: str) -> SymVar | None:
        for frame in reversed(self.frames):
            for scope in reversed(frame.syms):
                if name in scope:
                    return scope[name]
        return None

    def visible_syms(self) -> set[str]:
        return {n for f in self.frames for scope in f.syms for n in scope}

    def define_sym(self, name: str) -> SymVar:
        sym = SymVar(self.fresh("s", name))
        self.frame.syms[-1][name] = sym
        self.frame.analyzer.bind(sym.name, 0)
        return sym

    # -- struct info and symbolic expressions ---------------------------------------------------
    @located
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
                hint = suggest(name, self.visible_syms())
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
        if not is_str(node):
            raise self.error(node, f'expected a dtype string such as "float32", found {self.node_text(node)}')
        if node.value not in DTYPES:
            raise self.error(node, f"unknown dtype {node.value!r}; expected one of {', '.join(DTYPES)}")
        return node.value

    def shape_spec(self, node: ast.AST | None, define: bool) -> tuple[tuple[PrimExpr, ...] | None, int]:
        """A shape tuple, `ndim(k)`, or nothing (None): (dims or None, ndim)."""
        if node is None:
            return None, -1
        if call_name(node) == "ndim":
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

    @located
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
                if elts and is_str(elts[-1]):
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
                if not elts or not is_str(elts[-1]) or len(elts) > 2:
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
            if not (is_str(elts[2]) and elts[2].value == IMPURE_MARK):
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

    @located
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
                    if k is None or not is_str(k):
                        raise self.error(v if k is None else k, "dict attribute keys must be strings")
                    items[k.value] = self.attr(v)
                return Attrs.of(items)
            case ast.Call(func=ast.Name(id="float")):
                return self.float_call(node)
            case ast.Name(id="Object" | "Tensor" | "Shape") | ast.Subscript(value=ast.Name(id=_)):
                return self.info(node)
        return self.sym(node)

    def float_call(self, node: ast.Call) -> float:
        if len(node.args) != 1 or node.keywords or not is_str(node.args[0]):
            raise self.error(node, 'expected float("inf"), float("-inf") or float("nan")')
        try:
            return float(node.args[0].value)
        except ValueError:
            raise self.error(node.args[0], f"not a float: {node.args[0].value!r}") from None

    @located
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
                return Bits(v)
        raise self.error(node, f"expected a number or a nested list of numbers, found {self.node_text(node)}")

    @located
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
        if body and isinstance(body[0], ast.Expr) and call_name(body[0].value) == "attrs":
            return self.attrs_stmt(body[0].value), body[1:]
        return Attrs(), body

    # -- graph functions ------------------------------------------------------------------------
    def check_params(self, node: ast.FunctionDef) -> list[ast.arg]:
        a = node.args
        if a.posonlyargs or a.vararg or a.kwonlyargs or a.kwarg or a.defaults:
            raise self.error(node, "parameters are plain `name: StructInfo` (no defaults, *args or keywords)")
        for arg in a.args:
            if arg.annotation is None:
                raise self.error(arg, f"parameter {arg.arg!r} needs an annotation")
        return a.args
