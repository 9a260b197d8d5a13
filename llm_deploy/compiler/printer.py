"""The IR's text form: valid Python syntax that reads like TVMScript, read back by `parser.py`.

`parse(module_to_str(mod)) == mod` holds for every well-formed module. The text is never run;
the parser reads it with Python's `ast`. A module prints as

    @module
    class Module:
        @function
        def decode(ids: Tensor[(b,), "int32"], w: Tensor[(49152, 576), "float32"]) -> Tensor[(b, 576), "float32"]:
            with dataflow():
                x: Tensor[(b, 576), "float32"] = take(w, ids, axis=0)
                output(x)
            return x

        @prim_func
        def add(A: Buffer[(n, 576), "float32"], B: Buffer[(n, 576), "float32"], C: Buffer[(n, 576), "float32"]):
            for i in parallel(n):
                for j in vectorized(576):
                    C[i, j] = A[i, j] + B[i, j]

Graph level: struct info on every binding (`Tensor[(n, 4), "float32"]`, `Tensor[ndim(2), "float32"]`,
`Tensor`, `Shape[(n, 4)]`, `Prim["int64"]`, `Prim[n, "int64"]`, `Tuple[A, B]`, `Object`,
`Callable[(A, B), R]`, `Callable[..., R, "impure"]`); `with dataflow():` blocks end in
`output(...)` naming the vars that escape; `y: T = match_cast(x, T)`; an If binds the var that the
last line of both branches assigns; op attributes are keyword arguments and struct info an op
cannot deduce is `out_sinfo=` (`call_tir(add, (x, y), shape(n), out_sinfo=Tensor[...])`);
`const([[1.0, 2.0]], "float32")`, `prim(n)`, `shape(n, 4)`, `extern("name")`, `"a string"`;
function attributes are an `attrs(...)` statement; impure functions are `@function(pure=False)`.
Bindings outside dataflow blocks form one block per run; `with block():` marks a block that
directly follows another (or is empty), so every block structure reads back as it was.

Names: a bare callee resolves to a builtin form, then a local var, then a graph function of the
module, then a registered op; a bare argument to a local var, then a module function, then an
op. Where that would pick the wrong thing the printer writes `ops.name` or `cls.name`.

Loop level: `for i in range(n)` / `parallel(n)` / `vectorized(8)` / `unrolled(4)` /
`thread(n, "threadIdx.x")`, stores `C[i, j] = v`, loads `A[i, j]`, `k = v` binds an index for the
rest of its block and `acc = alloc((1,), "float32", "local")` a scratch buffer (the `with let(v)
as k:` and `with alloc(...) as acc:` forms scope them explicitly where the block goes on after
them), `if`/`else`, `barrier()`, `cast("float16", v)`, `select(c, a, b)`, intrinsics `exp(v)`.
Constants carry their dtype, `float32(0.5)`; a bare integer is an index (int64) expression. An
operation on two index expressions that the canonical index arithmetic would fold is written
`binary("add", i, 1)`. Sequences that the block syntax would flatten (nested, single, empty)
print as `with seq():` and `pass`.

Floats print as the shortest decimal that reads back to the same bits in their dtype (Python's
repr for float64 values, numpy's shortest repr checked by reading it back for narrower dtypes);
non-finite values print as `float("inf")`, `float("-inf")`, `float("nan")`, and an element of a
constant that is a NaN with a sign or payload as its bit pattern, `bits(0x7e01)`. (A NaN in an
attribute or a loop-level constant prints and parses, but NaN != NaN, so such a module never
compares equal, not even to a copy of itself.)
"""

from __future__ import annotations

import keyword
import math
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.expr import (
    Attrs,
    BaseFunc,
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
)
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

INDENT = "    "

# Call forms of the text itself; an op or function with one of these names prints qualified.
BUILTINS = frozenset({"const", "shape", "prim", "extern", "match_cast"})
# The keyword argument that carries a call's `sinfo_args`; an attribute of that name prints in
# the `**{...}` form.
SINFO_KWARG = "out_sinfo"
IMPURE_MARK = "impure"

LOOP_HEADS = {"serial": "range", "parallel": "parallel", "vectorized": "vectorized", "unrolled": "unrolled"}

# Loop-level binary ops as Python operators, with Python's precedence (higher binds tighter).
BINARY_SYMBOLS = {
    "or": "or", "and": "and",
    "lt": "<", "le": "<=", "eq": "==", "ne": "!=", "gt": ">", "ge": ">=",
    "bitor": "|", "bitxor": "^", "bitand": "&", "shl": "<<", "shr": ">>",
    "add": "+", "sub": "-", "mul": "*", "div": "/", "floordiv": "//", "floormod": "%", "pow": "**",
}  # fmt: skip
_PREC = {
    "or": 1, "and": 2, "lt": 4, "le": 4, "eq": 4, "ne": 4, "gt": 4, "ge": 4,
    "bitor": 5, "bitxor": 6, "bitand": 7, "shl": 8, "shr": 8,
    "add": 9, "sub": 9, "mul": 10, "div": 10, "floordiv": 10, "floormod": 10, "pow": 12,
}  # fmt: skip
_NOT_PREC, _NEG_PREC, _ATOM = 3, 11, 100
# Ops the canonical index arithmetic performs itself when both operands are index expressions.
INDEX_OPS = frozenset({"add", "sub", "mul", "floordiv", "floormod", "min", "max"})


def is_name(s: object) -> bool:
    """A Python identifier that reads back unchanged (Python NFKC-normalizes identifiers)."""
    return (
        isinstance(s, str)
        and s.isidentifier()
        and not keyword.iskeyword(s)
        and unicodedata.normalize("NFKC", s) == s
    )


_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def str_lit(s: str) -> str:
    """A double-quoted Python string literal; unprintable characters as Python escapes."""
    out = []
    for c in s:
        code = ord(c)
        if c in '"\\':
            out.append("\\" + c)
        elif c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif c.isprintable():
            out.append(c)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def float_lit(x: float) -> str:
    if math.isnan(x):
        return 'float("nan")'
    if math.isinf(x):
        return 'float("inf")' if x > 0 else 'float("-inf")'
    return repr(float(x))


def _scalar_lit(x: np.generic) -> str:
    """One element of a constant, as the shortest text that reads back to the same bits."""
    if isinstance(x, np.bool_):
        return "True" if x else "False"
    if isinstance(x, np.integer):
        return str(int(x))
    f = float(x)
    if math.isnan(f):
        raw = np.asarray(x).tobytes()
        if raw != np.asarray(np.nan, dtype=x.dtype).tobytes():
            # A NaN with a sign or payload has no decimal form; its bits say it exactly.
            return f"bits({hex(int.from_bytes(raw, 'little'))})"
    if not math.isfinite(f):
        return float_lit(f)
    short = str(x)
    try:
        if np.asarray(float(short), dtype=x.dtype).tobytes() == np.asarray(x).tobytes():
            return short
    except (ValueError, OverflowError):
        pass
    return repr(f)


def _nested(data: np.ndarray) -> str:
    if data.ndim == 0:
        return _scalar_lit(data[()])
    return "[" + ", ".join(_nested(row) for row in data) + "]"


def const_to_str(data: np.ndarray) -> str:
    text = f"const({_nested(data)}, {str_lit(str(data.dtype))}"
    if data.size == 0:
        text += f", shape={dims_to_str(data.shape)}"
    return text + ")"


def dims_to_str(dims: Iterable[Any]) -> str:
    parts = [S.to_str(d) for d in dims]
    return f"({parts[0]},)" if len(parts) == 1 else "(" + ", ".join(parts) + ")"


# ---------------------------------------------------------------------------------------------
# Struct info and attributes


def info_to_str(info: StructInfo) -> str:
    """`Tensor[(n, 4), "float32"]`, `Shape[ndim(2)]`, `Tuple[A, B]`, `Callable[(A,), R]`, ..."""
    match info:
        case ObjectInfo():
            return "Object"
        case PrimInfo(dtype, None):
            return f"Prim[{str_lit(dtype)}]"
        case PrimInfo(dtype, value):
            return f"Prim[{S.to_str(value)}, {str_lit(dtype)}]"
        case ShapeInfo(values, ndim):
            if values is not None:
                return f"Shape[{dims_to_str(values)}]"
            return "Shape" if ndim == -1 else f"Shape[ndim({ndim})]"
        case TensorInfo(shape, dtype, ndim):
            parts = []
            if shape is not None:
                parts.append(dims_to_str(shape))
            elif ndim != -1:
                parts.append(f"ndim({ndim})")
            if dtype is not None:
                parts.append(str_lit(dtype))
            return f"Tensor[{', '.join(parts)}]" if parts else "Tensor"
        case TupleInfo(fields):
            if not fields:
                return "Tuple[()]"
            return f"Tuple[{', '.join(info_to_str(f) for f in fields)}]"
        case FuncInfo(params, ret, pure):
            if params is None:
                head = "..."
            elif len(params) == 1:
                head = f"({info_to_str(params[0])},)"
            else:
                head = "(" + ", ".join(info_to_str(p) for p in params) + ")"
            mark = "" if pure else f", {str_lit(IMPURE_MARK)}"
            return f"Callable[{head}, {info_to_str(ret)}{mark}]"
    return f"<{type(info).__name__}>"


def attr_to_str(value: Any) -> str:
    """An attribute value: None, bools, ints, floats, strings, tuples, dicts, symbolic ints, infos."""
    match value:
        case None | bool():
            return repr(value)
        case int() | np.integer():
            return str(int(value))
        case float() | np.floating():
            return float_lit(float(value))
        case str():
            return str_lit(value)
        case tuple() | list():
            items = [attr_to_str(v) for v in value]
            return f"({items[0]},)" if len(items) == 1 else "(" + ", ".join(items) + ")"
        case Attrs():
            return "{" + ", ".join(f"{attr_to_str(k)}: {attr_to_str(v)}" for k, v in value.items()) + "}"
        case dict():
            return attr_to_str(Attrs.of(value))
        case PrimExpr():
            return S.to_str(value)
        case StructInfo():
            return info_to_str(value)
    return repr(value)


def kwargs_to_str(attrs: Attrs | dict, reserved: Iterable[str] = ()) -> list[str]:
    """`key=value` for identifier keys, other keys in `**{...}` runs, keeping the order."""
    reserved = set(reserved)
    out: list[str] = []
    run: list[str] = []
    for k, v in attrs.items():
        if is_name(k) and k not in reserved:
            if run:
                out.append("**{" + ", ".join(run) + "}")
                run = []
            out.append(f"{k}={attr_to_str(v)}")
        else:
            run.append(f"{attr_to_str(k)}: {attr_to_str(v)}")
    if run:
        out.append("**{" + ", ".join(run) + "}")
    return out


# ---------------------------------------------------------------------------------------------
# Name resolution shared with the parser


def is_impure_call(value: Expr, module_funcs: dict[str, BaseFunc]) -> bool:
    """A call the builder counts as impure: an impure op, or an impure graph function."""
    from llm_deploy.compiler.ops.registry import OPS

    if not isinstance(value, Call):
        return False
    match value.op:
        case Op(name):
            return name in OPS and not OPS[name].pure
        case GlobalVar(name):
            f = module_funcs.get(name)
            return isinstance(f, Function) and not f.pure
    return False


def deduced_purity(body: SeqExpr, is_impure: Callable[[Expr], bool]) -> bool:
    """What the parser assumes when `@function` gives no `pure=`: pure unless an impure call
    appears in the body (If branches included), as the BlockBuilder decides."""

    def seq_impure(seq: SeqExpr) -> bool:
        for block in seq.blocks:
            for b in block.bindings:
                if isinstance(b.value, If):
                    if seq_impure(b.value.then_branch) or seq_impure(b.value.else_branch):
                        return True
                elif is_impure(b.value):
                    return True
        return False

    return not seq_impure(body)


class _Names:
    """What a bare name means at a point of the text, to decide when to qualify it."""

    def __init__(self, module_funcs: dict[str, BaseFunc], local: set[str]):
        self.funcs = module_funcs
        self.local = local

    def callee(self, op: Expr) -> str:
        from llm_deploy.compiler.ops.registry import OPS

        match op:
            case Op(name):
                shadowed = (
                    name in BUILTINS or name in self.local or isinstance(self.funcs.get(name), Function)
                )
                return f"ops.{name}" if shadowed or not is_name(name) else name
            case GlobalVar(name):
                f = self.funcs.get(name)
                wins = isinstance(f, Function) or name not in OPS
                bare = wins and name not in BUILTINS and name not in self.local
                return name if bare and is_name(name) else f"cls.{name}"
            case Var(name):
                return name
        return f"({_GraphPrinter(self).expr(op)})"

    def value(self, e: GlobalVar | Op) -> str:
        if isinstance(e, GlobalVar):
            return e.name if e.name not in self.local else f"cls.{e.name}"
        shadowed = e.name in self.local or e.name in self.funcs
        return f"ops.{e.name}" if shadowed else e.name


# ---------------------------------------------------------------------------------------------
# Graph functions


def _var_names(func: Function) -> set[str]:
    names = {p.name for p in func.params}

    def seq(s: SeqExpr) -> None:
        for block in s.blocks:
            for b in block.bindings:
                names.add(b.var.name)
                if isinstance(b.value, If):
                    seq(b.value.then_branch)
                    seq(b.value.else_branch)
                elif isinstance(b.value, Function):
                    names.update(_var_names(b.value))

    seq(func.body)
    return names


class _GraphPrinter:
    def __init__(self, names: _Names):
        self.names = names

    def expr(self, e: Expr) -> str:
        match e:
            case Var(name):
                return name
            case Constant():
                return const_to_str(e.data)
            case PrimValue(value, dtype):
                extra = "" if dtype == "int64" else f", {str_lit(dtype)}"
                return f"prim({S.to_str(value)}{extra})"
            case StringImm(value):
                return str_lit(value)
            case ShapeExpr(values):
                return f"shape({', '.join(S.to_str(v) for v in values)})"
            case GlobalVar() | Op():
                return self.names.value(e)
            case ExternFunc(name):
                return f"extern({str_lit(name)})"
            case Tuple(fields):
                items = [self.expr(f) for f in fields]
                return f"({items[0]},)" if len(items) == 1 else "(" + ", ".join(items) + ")"
            case GetItem(tup, index):
                return f"{self.expr(tup)}[{index}]"
            case Call(op, args, attrs, sinfo_args):
                parts = [self.expr(a) for a in args]
                parts += kwargs_to_str(attrs, reserved=(SINFO_KWARG,))
                if len(sinfo_args) == 1:
                    parts.append(f"{SINFO_KWARG}={info_to_str(sinfo_args[0])}")
                elif sinfo_args:
                    parts.append(f"{SINFO_KWARG}=[{', '.join(info_to_str(i) for i in sinfo_args)}]")
                return f"{self.names.callee(op)}({', '.join(parts)})"
        # If, SeqExpr and Function only appear as whole bindings; elsewhere they cannot print.
        return f"unprintable_{type(e).__name__}()"

    # -- statements
    def binding(self, b: VarBinding | MatchCast) -> list[str]:
        var = b.var
        head = f"{var.name}: {info_to_str(var.info)}"
        if isinstance(b, MatchCast):
            return [f"{head} = match_cast({self.expr(b.value)}, {info_to_str(b.info)})"]
        match b.value:
            case If(cond, then_branch, else_branch):
                out = [f"if {self.expr(cond)}:"]
                out += _indent(self.seq(then_branch, f"{head} = "))
                out.append("else:")
                out += _indent(self.seq(else_branch, f"{head} = "))
                return out
            case Function():
                return self.function(var.name, b.value)
        return [f"{head} = {self.expr(b.value)}"]

    def blocks(self, blocks: tuple[BindingBlock, ...]) -> list[str]:
        out: list[str] = []
        after_plain = False
        for block in blocks:
            lines = [line for b in block.bindings for line in self.binding(b)]
            if isinstance(block, DataflowBlock):
                escaping = [b.var.name for b in block.bindings if not isinstance(b.var, DataflowVar)]
                out.append("with dataflow():")
                out += _indent(lines + [f"output({', '.join(escaping)})"])
            elif after_plain or not lines:
                # Adjacent plain blocks would read back as one; an explicit block keeps them apart.
                out.append("with block():")
                out += _indent(lines or ["pass"])
            else:
                out += lines
            after_plain = not isinstance(block, DataflowBlock)
        return out

    def seq(self, seq: SeqExpr, result_prefix: str) -> list[str]:
        return self.blocks(seq.blocks) + [f"{result_prefix}{self.expr(seq.body)}"]

    def function(self, name: str, func: Function) -> list[str]:
        funcs = self.names.funcs
        deco = "@function"
        if not func.pure or deduced_purity(func.body, lambda v: is_impure_call(v, funcs)) != func.pure:
            deco = f"@function(pure={func.pure})"
        params = ", ".join(f"{p.name}: {info_to_str(p.info)}" for p in func.params)
        out = [deco, f"def {name}({params}) -> {info_to_str(func.ret_info)}:"]
        inner = _GraphPrinter(_Names(funcs, self.names.local | _var_names(func)))
        body = [f"attrs({', '.join(kwargs_to_str(func.attrs))})"] if len(func.attrs) else []
        body += inner.seq(func.body, "return ")
        return out + _indent(body)


def _indent(lines: list[str]) -> list[str]:
    return [INDENT + line if line else line for line in lines]


# ---------------------------------------------------------------------------------------------
# Tensor programs


def _index_prec(e: PrimExpr) -> int:
    """Index expressions print through shape.to_str; compound ones get parentheses as operands."""
    if isinstance(e, (S.SymVar, S.Min, S.Max)) or (isinstance(e, S.IntImm) and e.value >= 0):
        return _ATOM
    return 0


class _TirPrinter:
    def value(self, v: T.Value) -> tuple[str, int]:
        """Text and precedence of a loop-level value."""
        match v:
            case PrimExpr():
                return S.to_str(v), _index_prec(v)
            case int() if not isinstance(v, bool):  # a plain int equals the index constant
                return str(v), _ATOM if v >= 0 else 0
            case T.Imm(value, dtype):
                if dtype == "bool" and isinstance(value, bool):
                    return repr(value), _ATOM
                if isinstance(value, np.generic):
                    value = value.item()
                lit = float_lit(value) if isinstance(value, float) else repr(value)
                return f"{dtype}({lit})", _ATOM
            case T.Load(buffer, indices):
                return f"{buffer.name}[{self.indices(indices)}]", _ATOM
            case T.Binary(op, a, b):
                if op in INDEX_OPS and isinstance(a, PrimExpr) and isinstance(b, PrimExpr):
                    return f"binary({str_lit(op)}, {self.arg(a)}, {self.arg(b)})", _ATOM
                if op in ("min", "max"):
                    return f"{op}({self.arg(a)}, {self.arg(b)})", _ATOM
                p = _PREC[op]
                left, right = self.operand(a, p, op == "pow" or p == 4), self.operand(b, p, op != "pow")
                return f"{left} {BINARY_SYMBOLS[op]} {right}", p
            case T.Intrin("neg", (a,)) if isinstance(a, T.TExpr):
                return f"-{self.operand(a, _NEG_PREC, False)}", _NEG_PREC
            case T.Intrin("not", (a,)):
                return f"not {self.operand(a, _NOT_PREC, False)}", _NOT_PREC
            case T.Intrin(name, args):
                return f"{name}({', '.join(self.arg(a) for a in args)})", _ATOM
            case T.Cast(dtype, value):
                return f"cast({str_lit(dtype)}, {self.arg(value)})", _ATOM
            case T.Select(cond, a, b):
                return f"select({self.arg(cond)}, {self.arg(a)}, {self.arg(b)})", _ATOM
        return f"unprintable_{type(v).__name__}()", _ATOM

    def arg(self, v: T.Value) -> str:
        return self.value(v)[0]

    def operand(self, v: T.Value, prec: int, tie_needs_parens: bool) -> str:
        text, p = self.value(v)
        return f"({text})" if p < prec or (p == prec and tie_needs_parens) else text

    def indices(self, indices: tuple) -> str:
        if not indices:
            return "()"
        return ", ".join(self.arg(i) for i in indices)

    # -- statements
    def block(self, s: T.Stmt) -> list[str]:
        """Lines that read back as exactly `s` when they form a whole block."""
        if isinstance(s, (T.Let, T.Allocate)):
            return self.inline(s)
        if isinstance(s, T.Seq) and len(s.stmts) >= 2 and not any(isinstance(x, T.Seq) for x in s.stmts):
            out = [line for x in s.stmts[:-1] for line in self.single(x)]
            return out + self.block(s.stmts[-1])
        return self.single(s)

    def inline(self, s: T.Let | T.Allocate) -> list[str]:
        """`k = v` / `buf = alloc(...)`: binds for the rest of the block."""
        if isinstance(s, T.Let):
            head = f"{s.var.name} = {self.arg(s.value)}"
        else:
            head = f"{s.buffer.name} = {self.alloc(s.buffer)}"
        return [head] + self.block(s.body)

    def alloc(self, buf: T.Buffer) -> str:
        return f"alloc({dims_to_str(buf.shape)}, {str_lit(buf.dtype)}, {str_lit(buf.scope)})"

    def single(self, s: T.Stmt) -> list[str]:
        """Lines that read back as exactly `s` when they are one statement among others."""
        match s:
            case T.For(var, extent, body, kind, thread):
                if kind == "thread":
                    head = f"thread({S.to_str(extent)}, {str_lit(thread or '')})"
                else:
                    head = f"{LOOP_HEADS.get(kind, kind)}({S.to_str(extent)})"
                return [f"for {var.name} in {head}:"] + _indent(self.block(body))
            case T.Store(buffer, indices, value):
                return [f"{buffer.name}[{self.indices(indices)}] = {self.arg(value)}"]
            case T.IfThenElse(cond, then_body, else_body):
                out = [f"if {self.arg(cond)}:"] + _indent(self.block(then_body))
                if isinstance(else_body, T.IfThenElse):
                    nested = self.single(else_body)
                    out += ["el" + nested[0]] + nested[1:]
                elif else_body is not None:
                    out += ["else:"] + _indent(self.block(else_body))
                return out
            case T.Let(var, value, body):
                return [f"with let({self.arg(value)}) as {var.name}:"] + _indent(self.block(body))
            case T.Allocate(buffer, body):
                return [f"with {self.alloc(buffer)} as {buffer.name}:"] + _indent(self.block(body))
            case T.Barrier():
                return ["barrier()"]
            case T.Seq(()):
                return ["pass"]
            case T.Seq(stmts):
                return ["with seq():"] + _indent([line for x in stmts for line in self.single(x)])
        return [f"unprintable_{type(s).__name__}()"]

    def param(self, p: T.Buffer | S.SymVar) -> str:
        if isinstance(p, T.Buffer):
            scope = "" if p.scope == "global" else f", {str_lit(p.scope)}"
            return f"{p.name}: Buffer[{dims_to_str(p.shape)}, {str_lit(p.dtype)}{scope}]"
        return f"{p.name}: Prim[{str_lit(T.INDEX_DTYPE)}]"

    def function(self, name: str, func: T.PrimFunc) -> list[str]:
        head = ["@prim_func", f"def {name}({', '.join(self.param(p) for p in func.params)}):"]
        body = [f"attrs({', '.join(kwargs_to_str(func.attrs))})"] if len(func.attrs) else []
        return head + _indent(body + self.block(func.body))


# ---------------------------------------------------------------------------------------------
# Entry points


def _func_lines(name: str, func: BaseFunc, funcs: dict[str, BaseFunc]) -> list[str]:
    match func:
        case Function():
            return _GraphPrinter(_Names(funcs, set())).function(name, func)
        case T.PrimFunc():
            return _TirPrinter().function(name, func)
        case ExternFunc(symbol):
            return [f"{name} = extern({str_lit(symbol)})"]
    return [f"{name} = unprintable_{type(func).__name__}()"]


def module_to_str(mod) -> str:
    """The whole module as text; `parser.parse` reads it back to an equal module."""
    funcs = mod.functions()
    body: list[str] = []
    if len(mod.attrs):
        body += [f"attrs({', '.join(kwargs_to_str(mod.attrs))})", ""]
    for name, func in funcs.items():
        body += _func_lines(name, func, funcs) + [""]
    if not funcs and not len(mod.attrs):
        body = ["pass"]
    return "\n".join(["@module", "class Module:"] + _indent(body)).rstrip() + "\n"


def function_to_str(func: BaseFunc, name: str = "main") -> str:
    """One function (graph function or tensor program) as top-level text."""
    return "\n".join(_func_lines(name, func, {name: func})) + "\n"


def prim_func_to_str(func: T.PrimFunc, name: str = "main") -> str:
    return function_to_str(func, name)


def expr_to_str(expr: Expr) -> str:
    """An expression in the text form, for messages (a Function prints as a whole definition)."""
    if isinstance(expr, Function):
        return function_to_str(expr, "main").rstrip("\n")
    printer = _GraphPrinter(_Names({}, set()))
    if isinstance(expr, If):
        return "\n".join(printer.binding(VarBinding(Var("result"), expr)))
    if isinstance(expr, SeqExpr):
        return "\n".join(printer.seq(expr, "return "))
    return printer.expr(expr)


def stmt_to_str(stmt: T.Stmt) -> str:
    return "\n".join(_TirPrinter().block(stmt))


def tir_value_to_str(value: T.Value) -> str:
    return _TirPrinter().arg(value)
