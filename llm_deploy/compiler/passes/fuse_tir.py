"""Operator fusion, step 2: merge the tensor programs of each `primitive` group (from fuse_ops)
into one PrimFunc, and call it with call_tir.

    x2 = fused_linear_add(h, w, x)       ->   x2 = call_tir(fused_linear_add, (h, w, x), out_sinfo=...)

The merged program runs the members' loop nests one after the other, each member's symbolic
dims rewritten in the group's (bound by matching its buffers with its call's operand shapes,
and its scalar parameters with the call's shape arguments), its buffers replaced by the group's
parameters and intermediates, and every name it binds made unique. Then each intermediate is
inlined where the access allows (tir_inline.py):
- into its readers when its producer is one injective store (a gather, rope, a cast), or
- into its producer's store when its one reader reads it elementwise (an epilogue: the
  residual add after a matmul, silu and `* up` after the gate matmul, a scale after a norm),
so no intermediate is left in memory. One that neither way fits stays a scratch buffer of the
kernel. Symbolic vars that no parameter buffer's shape binds become scalar parameters.
A group that cannot be merged stays a call of its graph function (the VM runs those too).
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import struct_info as SI
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.expr import (
    Binding,
    Call,
    Expr,
    Function,
    GlobalVar,
    Op,
    Var,
    VarBinding,
    info_of,
)
from llm_deploy.compiler.functor import ExprMutator, ExprVisitor
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.ops import builtin
from llm_deploy.compiler.passes.dce import is_primitive
from llm_deploy.compiler.passes.legalize import function_analyzer
from llm_deploy.compiler.shape import PrimExpr, SymVar
from llm_deploy.compiler.tir_inline import Names, inline, inline_into_producer, rename_bound, simplify_indices


class FuseError(ValueError):
    """A group whose programs cannot be merged; the message names the group and the reason."""


@dataclass(frozen=True)
class Merged:
    func: T.PrimFunc
    operands: tuple[int, ...]  # the group's parameters passed as buffers, in order
    scalars: tuple[str, ...]  # the group's symbolic vars passed as scalar parameters, in order


def fuse_tir(mod: IRModule) -> IRModule:
    merged: dict[str, Merged] = {}
    for name, f in mod.items():
        if isinstance(f, Function) and is_primitive(f):
            try:
                merged[name] = merge_group(f, mod)
            except FuseError:
                continue
    if not merged:
        return mod
    funcs = {n: f for n, f in mod.items() if n not in merged}
    existing = {f: n for n, f in funcs.items() if isinstance(f, T.PrimFunc)}
    prims: dict[str, tuple[str, Merged]] = {}
    for name, m in merged.items():
        prim = existing.get(m.func)
        if prim is None:
            # The group's name is free now: its program takes it.
            prim = name if name not in funcs else IRModule(funcs).unique_name(name)
            funcs[prim] = m.func
            existing[m.func] = prim
        prims[name] = (prim, m)
    for name, f in list(funcs.items()):
        if isinstance(f, Function) and not is_primitive(f):
            funcs[name] = _CallMerged(prims, mod).visit_function(f)
    # The members' programs go too, where nothing else calls them any more.
    members = {b.value.args[0].name for g in merged for b in mod[g].body.blocks[0].bindings}
    called = set().union(*(globals_of(f) for f in funcs.values() if isinstance(f, Function)))
    for name in members - called:
        funcs.pop(name, None)
    return IRModule(funcs, dict(mod.attrs.items()))


def globals_of(f: Function) -> set[str]:
    v = _Globals()
    v.visit_expr(f)
    return v.names


class _Globals(ExprVisitor):
    def __init__(self) -> None:
        self.names: set[str] = set()

    def visit_expr(self, expr: Expr) -> None:
        if isinstance(expr, GlobalVar):
            self.names.add(expr.name)
        super().visit_expr(expr)


class _CallMerged(ExprMutator):
    def __init__(self, merged: dict[str, tuple[str, Merged]], mod: IRModule):
        super().__init__()
        self.merged = merged
        self.mod = mod

    def visit_binding(self, binding: Binding) -> list[Binding]:
        (new,) = super().visit_binding(binding)
        v = new.value
        if not (isinstance(new, VarBinding) and isinstance(v, Call) and isinstance(v.op, GlobalVar)):
            return [new]
        if v.op.name not in self.merged:
            return [new]
        prim, m = self.merged[v.op.name]
        group = self.mod[v.op.name]
        sym = _bind_params(group, v.args)
        tensors = [v.args[k] for k in m.operands]
        scalars = [S.substitute(SymVar(n), sym) for n in m.scalars]
        return [
            VarBinding(new.var, builtin.call_tir(GlobalVar(prim), tensors, new.var.info, scalars or None))
        ]


def _bind_params(group: Function, args: tuple[Expr, ...]) -> dict[str, PrimExpr]:
    """The caller's value of each symbolic var of the group's parameters."""
    sym: dict[str, PrimExpr] = {}
    for p, a in zip(group.params, args):
        pi = p.info
        dims = (
            pi.shape if isinstance(pi, SI.TensorInfo) else pi.values if isinstance(pi, SI.ShapeInfo) else None
        )
        ai = info_of(a)
        actual = (
            ai.shape if isinstance(ai, SI.TensorInfo) else ai.values if isinstance(ai, SI.ShapeInfo) else None
        )
        for d, x in zip(dims or (), actual or ()):
            if isinstance(d, SymVar):
                sym.setdefault(d.name, x)
    return sym


# ---------------------------------------------------------------------------------------------
# Merging


def merge_group(group: Function, mod: IRModule) -> Merged:
    """One PrimFunc computing `group` (a primitive function of call_tir bindings)."""
    analyzer = function_analyzer(group)
    where = f"fuse_tir: group {_name_of(group, mod)}"
    if len(group.body.blocks) != 1:
        raise FuseError(f"{where}: expected one dataflow block")
    bindings = group.body.blocks[0].bindings
    shape_syms = set()
    for p in group.params:
        if isinstance(p.info, SI.ShapeInfo) and p.info.values is not None:
            shape_syms |= {n for v in p.info.values for n in S.free_vars(v)}
    taken = set().union(*(SI.free_vars(p.info) for p in group.params)) | shape_syms
    names = Names(taken)
    bufs: dict[str, T.Buffer] = {}  # graph var -> the buffer that holds it
    out_var = group.body.body
    stages: list[T.Stmt] = []
    attrs: dict = {}  # the members' (e.g. `scheduled` of a hand-scheduled kernel)
    intermediates: list[T.Buffer] = []
    output: T.Buffer | None = None
    for b in bindings:
        v = b.value
        if not (
            isinstance(b, VarBinding)
            and isinstance(v, Call)
            and v.op == Op("call_tir")
            and isinstance(v.args[0], GlobalVar)
            and isinstance(mod[v.args[0]], T.PrimFunc)
            and isinstance(b.var.info, SI.TensorInfo)
        ):
            raise FuseError(f"{where}: binding {b.var.name} is not a call_tir with one tensor output")
        f: T.PrimFunc = mod[v.args[0]]  # type: ignore[assignment]
        attrs.update(f.attrs.items())
        operands = v.args[1].fields
        if len(f.buffers) != len(operands) + 1:
            raise FuseError(
                f"{where}: {v.args[0].name} takes {len(f.buffers)} buffers, given {len(operands)} + 1"
            )
        infos = [info_of(a) for a in operands] + [b.var.info]
        sym = bind_symbols(f, infos, v.args[2].values if len(v.args) > 2 else (), analyzer, where)
        buf_map: dict[str, T.Buffer] = {}
        for fb, a in zip(f.buffers, operands):
            if not isinstance(a, Var):
                raise FuseError(f"{where}: operand {a} of {v.args[0].name} is not a var")
            if a.name not in bufs:
                info = a.info
                nb = T.Buffer(names.fresh(fb.name), info.shape, info.dtype)
                bufs[a.name] = nb
            buf_map[fb.name] = bufs[a.name]
        info = b.var.info
        is_out = isinstance(out_var, Var) and b.var.name == out_var.name
        nb = T.Buffer(
            names.fresh(f.buffers[-1].name if is_out else f"{_base(v.args[0].name)}_out"),
            info.shape,
            info.dtype,
        )
        bufs[b.var.name] = nb
        buf_map[f.buffers[-1].name] = nb
        if is_out:
            output = nb
        else:
            intermediates.append(nb)
        stages.append(rename_bound(f.body, names, sym, buf_map))
    if output is None:
        raise FuseError(f"{where}: the group's result is not one of its bindings")
    body: T.Stmt = T.seq(*stages)
    for buf in reversed(intermediates):
        body = T.Allocate(buf, body)
    body = _inline_all(body, intermediates, names, analyzer)
    body = simplify_indices(body, analyzer)
    # What inlining left keeps the plainest names: i0, i1, ... again where they are free.
    param_names = {b.name for b in bufs.values()}
    body = rename_bound(body, Names(taken | param_names))
    order = [k for k, p in enumerate(group.params) if p.name in bufs]
    inputs = [bufs[group.params[k].name] for k in order]
    params: list[T.Buffer | SymVar] = [*inputs, output]
    bare = {d.name for buf in params for d in buf.shape if isinstance(d, SymVar)}
    free = _free_symbols(body) | {n for buf in (*inputs, output) for d in buf.shape for n in S.free_vars(d)}
    scalars = tuple(n for n in sorted(free) if n not in bare and n in taken)
    func = T.PrimFunc((*params, *(SymVar(n) for n in scalars)), body, attrs)
    return Merged(func, tuple(order), scalars)


def bind_symbols(
    f: T.PrimFunc, infos: list[SI.StructInfo], shape_args: tuple, analyzer: S.Analyzer, where: str
) -> dict[str, PrimExpr]:
    """The caller's value of each symbolic var of `f`, from its buffers' shapes against the call's
    operand (and output) infos and its scalars against the shape arguments; FuseError if they
    disagree."""
    sym: dict[str, PrimExpr] = {}
    for fb, info in zip(f.buffers, infos):
        if not isinstance(info, SI.TensorInfo) or info.shape is None or len(info.shape) != fb.ndim:
            raise FuseError(f"{where}: buffer {fb.name} {fb.shape} does not match the operand's {info}")
        for d, x in zip(fb.shape, info.shape):
            if isinstance(d, SymVar):
                sym.setdefault(d.name, x)
    for v, x in zip(f.scalars, shape_args):
        sym.setdefault(v.name, x)
    for fb, info in zip(f.buffers, infos):
        for d, x in zip(fb.shape, info.shape):
            if not S.free_vars(d) <= sym.keys() or not analyzer.can_prove_equal(S.substitute(d, sym), x):
                raise FuseError(f"{where}: buffer {fb.name} dim {S.to_str(d)} is not {S.to_str(x)} here")
    return sym


def _inline_all(body: T.Stmt, intermediates: list[T.Buffer], names: Names, analyzer: S.Analyzer) -> T.Stmt:
    """Inline every intermediate that can be, trying again while any one succeeds."""
    pending = list(intermediates)
    progress = True
    while pending and progress:
        progress = False
        for buf in list(pending):
            new = inline(body, buf, names, analyzer) or inline_into_producer(body, buf, names, analyzer)
            if new is not None:
                body, progress = new, True
                pending.remove(buf)
    return body


def _free_symbols(s: T.Stmt) -> set[str]:
    from llm_deploy.compiler.pattern import stmt_values, walk, walk_values

    bound: set[str] = set()
    used: set[str] = set()
    for x in walk(s):
        if isinstance(x, (T.For, T.Let)):
            bound.add(x.var.name)
        for v in stmt_values(x):
            for e in walk_values(v):
                if isinstance(e, PrimExpr):
                    used |= S.free_vars(e)
                if isinstance(e, T.Load):
                    for d in e.buffer.shape:
                        used |= S.free_vars(d)
    return used - bound


def _base(name: str) -> str:
    return name.rstrip("0123456789") or name


def _name_of(group: Function, mod: IRModule) -> str:
    for n, f in mod.items():
        if f is group:
            return n
    return "?"
