"""Reading tensor programs (`@prim_func`) of the text form: loops, stores, lets, allocations,
and loop-level values (see printer.py for the syntax, parser.py for the entry points).

Arithmetic on two index expressions folds into the canonical index form (`i * 2 + 1`), as the
printer expects; `binary("add", i, 1)` keeps an explicit node. A bare float takes the float dtype
of the other operand (or of the stored buffer, or the other branch of a select), float32
otherwise; the printer always writes the dtype, `float32(0.5)`.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.parser_common import Bits, Frame, Reader, call_name, is_str, located, suggest
from llm_deploy.compiler.printer import INDEX_OPS
from llm_deploy.compiler.shape import PrimExpr, SymVar
from llm_deploy.compiler.struct_info import DTYPES

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


@dataclass(frozen=True)
class _Bare:
    """A float literal whose dtype comes from where it is used."""

    value: float


# ---------------------------------------------------------------------------------------------


class TirReader(Reader):
    """Reads `@prim_func` definitions."""

    def lookup_buffer(self, name: str) -> T.Buffer | None:
        for scope in reversed(self.frame.buffers):
            if name in scope:
                return scope[name]
        return None

    # -- tensor programs -----------------------------------------------------------------------
    @located
    def prim_func(self, node: ast.FunctionDef) -> T.PrimFunc:
        if node.returns is not None:
            raise self.error(node.returns, "a @prim_func returns nothing; it writes its output buffers")
        self.frames.append(Frame())
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

    @located
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
        if not is_str(node) or node.value not in ("global", "local", "shared"):
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

    @located
    def scoped_binding(self, st: ast.Assign, rest: list[ast.stmt]) -> T.Stmt:
        name = st.targets[0].id  # type: ignore[attr-defined]
        if not rest:
            raise self.error(
                st, f"`{name} = ...` binds {name} for the lines after it in its block, and none follow"
            )
        if call_name(st.value) == "alloc":
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

    @located
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
        head = call_name(ctx)
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
        head = call_name(it)
        if head in LOOP_KINDS:
            if len(it.args) != 1 or it.keywords:  # type: ignore[attr-defined]
                raise self.error(it, f"expected {head}(extent); loops start at 0")
            return LOOP_KINDS[head], self.sym(it.args[0]), None  # type: ignore[attr-defined]
        if head == "thread":
            args = it.args  # type: ignore[attr-defined]
            if len(args) != 2 or it.keywords or not is_str(args[1]):  # type: ignore[attr-defined]
                raise self.error(it, 'expected thread(extent, "threadIdx.x")')
            return "thread", self.sym(args[0]), args[1].value
        raise self.error(it, 'expected range(n), parallel(n), vectorized(n), unrolled(n) or thread(n, "tag")')

    def buffer(self, node: ast.AST, name: str) -> T.Buffer:
        buf = self.lookup_buffer(name)
        if buf is None:
            names = {n for scope in self.frame.buffers for n in scope}
            raise self.error(node, f"unknown buffer {name!r}{suggest(name, names)}")
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

    @located
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
                raise self.error(node, f"unknown variable {name!r}{suggest(name, self.visible_syms())}")
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
            if isinstance(lit, Bits):
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
                if not is_str(args[0]) or args[0].value not in T.BINARY_OPS:  # type: ignore[attr-defined]
                    raise self.error(args[0], f"expected a binary op name: {', '.join(sorted(T.BINARY_OPS))}")
                return T.Binary(args[0].value, *self.resolve_pair(self.tval(args[1]), self.tval(args[2])))  # type: ignore
        if name in T.INTRINSICS:
            return T.Intrin(name, tuple(self.resolve(self.tval(a)) for a in args))
        known = sorted(T.INTRINSICS | {"cast", "select", "min", "max", "binary"} | set(DTYPES))
        raise self.error(node.func, f"unknown intrinsic {name!r}{suggest(name, known)}")
