"""Operator fusion, step 1: group the calls of tensor programs that can run as one kernel, and
outline each group as a graph function marked `primitive` (fuse_tir then merges its programs).

    lv: Tensor[(n, 576), "float32"] = call_tir(linear, (h, w), ...)
    x2: Tensor[(n, 576), "float32"] = call_tir(add, (x, lv), ...)
becomes
    x2: Tensor[(n, 576), "float32"] = fused_linear_add(h, w, x)

    @function
    def fused_linear_add(p0: ..., p1: ..., p2: ...) -> ...:
        attrs(primitive=True)
        with dataflow():
            lv0 = call_tir(linear, (p0, p1), ...)
            gv = call_tir(add, (p2, lv0), ...)
            output(gv)
        return gv

Groups follow the patterns read from each program's loops (compiler/pattern.py), in two phases:
1. epilogues: a reduction (matmul, norm) takes in the elementwise/injective consumers that read
   its output at their own index, one after the other (matmul + residual add, gate matmul +
   silu + `* up`, RMSNorm + scale);
2. prologues: an injective producer is recomputed inside its one consumer when that is free (it
   only moves data: transpose, gather, cast) or when the consumer reads each element once
   (rope into an elementwise op, or into the cache append of a paged attention kernel).
A value read by anything outside the group (another call, a library, the function's result) is
never an intermediate, so a group has one output and no cycle can form. Groups never cross a
dataflow block. A symbolic var that the group's parameters' shapes do not bind (one only a
shape argument carries) becomes an extra `Shape` parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import struct_info as SI
from llm_deploy.compiler import tir
from llm_deploy.compiler.expr import (
    Binding,
    Call,
    DataflowBlock,
    DataflowVar,
    Expr,
    Function,
    GlobalVar,
    Op,
    SeqExpr,
    ShapeExpr,
    Tuple,
    Var,
    VarBinding,
    info_of,
)
from llm_deploy.compiler.functor import ExprMutator
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.passes.dce import is_primitive, used_vars
from llm_deploy.compiler.pattern import Kind, Pattern, analyze
from llm_deploy.compiler.shape import SymVar


def fuse_ops(mod: IRModule) -> IRModule:
    # A program whose body a target replaces by a microkernel is never merged with another.
    patterns = {
        name: analyze(f)
        for name, f in mod.items()
        if isinstance(f, tir.PrimFunc) and "microkernel" not in f.attrs
    }
    state = _Outliner(mod)
    for name, f in list(mod.items()):
        if isinstance(f, Function) and not is_primitive(f):
            new = _FuseBlocks(patterns, state, f).visit_function(f)
            if new is not f:
                state.funcs[name] = new
    out = IRModule(state.funcs, dict(mod.attrs.items()))
    return mod if out == mod else out


# ---------------------------------------------------------------------------------------------
# Grouping


@dataclass
class _Node:
    index: int
    binding: VarBinding
    callee: str
    pattern: Pattern
    args: tuple[Expr, ...]


@dataclass
class _Group:
    members: list[int]
    reduction: bool
    consumers_ok: bool = True  # every member may be recomputed in a consumer (prologue merge)
    lets: bool = False
    cheap: bool = True

    @property
    def output(self) -> int:
        return max(self.members)


@dataclass
class _Grouping:
    nodes: dict[int, _Node]
    uses: dict[str, list[int | None]]  # var -> the node indices reading it (None: read elsewhere)
    group_of: dict[int, _Group] = field(default_factory=dict)

    def merge(self, src: _Group, dst: _Group) -> None:
        dst.members = sorted(dst.members + src.members)
        dst.reduction |= src.reduction
        dst.consumers_ok &= src.consumers_ok
        dst.lets |= src.lets
        dst.cheap &= src.cheap
        for i in src.members:
            self.group_of[i] = dst

    def sole_consumer(self, var: str) -> int | None:
        readers = set(self.uses.get(var, ()))
        if len(readers) != 1 or None in readers:
            return None
        return readers.pop()


def _fusable(b: Binding, patterns: dict[str, Pattern]) -> tuple[str, Pattern] | None:
    v = b.value
    if not (
        isinstance(b, VarBinding)
        and isinstance(v, Call)
        and v.op == Op("call_tir")
        and isinstance(v.args[0], GlobalVar)
        and v.args[0].name in patterns
        and isinstance(v.args[1], Tuple)
        and isinstance(b.var.info, SI.TensorInfo)
    ):
        return None
    pat = patterns[v.args[0].name]
    # call_tir's convention: the operands, then one output buffer.
    if len(pat.accesses) != len(v.args[1].fields) + 1:
        return None
    return v.args[0].name, pat


def group_block(block: DataflowBlock, patterns: dict[str, Pattern]) -> list[list[int]]:
    """The groups (binding indices, in order) of one block with at least two members."""
    nodes: dict[int, _Node] = {}
    uses: dict[str, list[int | None]] = {}
    for i, b in enumerate(block.bindings):
        found = _fusable(b, patterns)
        if found is not None:
            callee, pat = found
            nodes[i] = _Node(i, b, callee, pat, b.value.args[1].fields)
            for a in nodes[i].args:
                if isinstance(a, Var):
                    uses.setdefault(a.name, []).append(i)
        else:
            for name in used_vars(b.value):
                uses.setdefault(name, []).append(None)
    g = _Grouping(nodes, uses)
    for i, node in nodes.items():
        p = node.pattern
        # An opaque program (e.g. one updating a cache in place) only ever takes prologues.
        g.group_of[i] = _Group(
            [i],
            reduction=p.kind >= Kind.REDUCTION,
            consumers_ok=p.inlinable,
            lets=p.has_lets,
            cheap=p.data_movement,
        )
    # Names read after the block (its outputs) are used elsewhere.
    for b in block.bindings:
        if not isinstance(b.var, DataflowVar):
            uses.setdefault(b.var.name, []).append(None)

    _epilogues(g)
    _prologues(g)
    groups = {id(grp): grp for grp in g.group_of.values()}
    return sorted((grp.members for grp in groups.values() if len(grp.members) > 1), key=lambda m: m[-1])


def _positions(node: _Node, var: str) -> list[int]:
    return [k for k, a in enumerate(node.args) if isinstance(a, Var) and a.name == var]


def _epilogues(g: _Grouping) -> None:
    for i in sorted(g.nodes):
        grp = g.group_of[i]
        if grp.output != i or not grp.reduction or not g.nodes[i].pattern.epilogue:
            continue
        j = g.sole_consumer(g.nodes[i].binding.var.name)
        if j is None or len(g.group_of[j].members) != 1:
            continue
        c = g.nodes[j]
        single_nest = len(c.pattern.nests) == 1 and c.pattern.nests[0].kind == "injective"
        accesses = [c.pattern.accesses[k] for k in _positions(c, g.nodes[i].binding.var.name)]
        if c.pattern.kind <= Kind.INJECTIVE and single_nest and all(a.identity for a in accesses):
            g.merge(g.group_of[j], grp)


def _prologues(g: _Grouping) -> None:
    for i in sorted(g.nodes, reverse=True):
        grp = g.group_of[i]
        if grp.output != i or grp.reduction or not grp.consumers_ok:
            continue
        var = g.nodes[i].binding.var.name
        j = g.sole_consumer(var)
        if j is None or g.group_of[j] is grp:
            continue
        c = g.nodes[j]
        dst = g.group_of[j]
        accesses = [c.pattern.accesses[k] for k in _positions(c, var)]
        once = sum(a.sites for a in accesses) == 1 and not any(a.reuse for a in accesses)
        in_reduction = any(a.in_reduction for a in accesses)
        if grp.lets and in_reduction:
            continue  # a gather's computed index would sit in the reduction loop: keep it apart
        if _reads(g, grp) & _writes_in_place(c):
            continue  # the consumer updates what the producer reads: recomputing it would see the update
        if grp.cheap or once:
            g.merge(grp, dst)


def _reads(g: _Grouping, grp: _Group) -> set[str]:
    return {a.name for i in grp.members for a in g.nodes[i].args if isinstance(a, Var)}


def _writes_in_place(node: _Node) -> set[str]:
    """Operands the program stores to (besides its output): buffers it updates in place."""
    return {a.name for k, a in enumerate(node.args) if k in node.pattern.written and isinstance(a, Var)}


# ---------------------------------------------------------------------------------------------
# Outlining


class _Outliner:
    """Adds each group's primitive function to the module, sharing structurally equal ones."""

    def __init__(self, mod: IRModule):
        self.funcs = dict(mod.functions())
        self.existing = {f: n for n, f in self.funcs.items() if isinstance(f, Function) and is_primitive(f)}

    def add(self, func: Function, hint: str) -> str:
        name = self.existing.get(func)
        if name is None:
            name = IRModule(self.funcs).unique_name(hint)
            self.funcs[name] = func
            self.existing[func] = name
        return name


class _FuseBlocks(ExprMutator):
    def __init__(self, patterns: dict[str, Pattern], state: _Outliner, func: Function):
        super().__init__()
        self.patterns = patterns
        self.state = state
        self.bounds = dict(func.attrs.get("bounds", {}))

    def visit_block(self, block):
        block = super().visit_block(block)
        if not isinstance(block, DataflowBlock):
            return block
        groups = group_block(block, self.patterns)
        if not groups:
            return block
        replace: dict[int, Binding | None] = {}
        for members in groups:
            bindings = [block.bindings[i] for i in members]
            call = self.outline(bindings)
            for i in members[:-1]:
                replace[i] = None
            replace[members[-1]] = VarBinding(bindings[-1].var, call)
        out = [replace.get(i, b) for i, b in enumerate(block.bindings)]
        return DataflowBlock(tuple(b for b in out if b is not None))

    def outline(self, bindings: list[VarBinding]) -> Call:
        defined = {b.var.name for b in bindings}
        operands: list[Expr] = []
        for b in bindings:
            for a in b.value.args[1].fields:
                if not (isinstance(a, Var) and a.name in defined) and a not in operands:
                    operands.append(a)
        params = [Var(f"p{k}", info_of(a)) for k, a in enumerate(operands)]
        bound = {d.name for p in params for d in (p.info.shape or ()) if isinstance(d, SymVar)}
        needed: list[str] = []
        for e in (*params, *(x for b in bindings for x in (*b.value.args[2:], b.var))):
            for name in _symbols(e):
                if name not in bound and name not in needed:
                    needed.append(name)
        shape_param = None
        if needed:
            shape_param = Var("s", SI.ShapeInfo(tuple(SymVar(n) for n in needed)))
        remap: dict[str, Expr] = {}
        for a, p in zip(operands, params):
            if isinstance(a, Var):
                remap[a.name] = p
        new_bindings = []
        for k, b in enumerate(bindings):
            last = k == len(bindings) - 1
            var = Var("gv", b.var.info) if last else DataflowVar(f"lv{k}", b.var.info)
            v = b.value
            fields = tuple(
                remap.get(a.name, a) if isinstance(a, Var) else params[operands.index(a)]
                for a in v.args[1].fields
            )
            new_bindings.append(
                VarBinding(var, Call(v.op, (v.args[0], Tuple(fields), *v.args[2:]), v.attrs, v.sinfo_args))
            )
            remap[b.var.name] = var
        used = set().union(*(SI.free_vars(p.info) for p in params)) | set(needed)
        attrs: dict = {"primitive": True}
        bounds = {k: v for k, v in self.bounds.items() if k in used}
        if bounds:
            attrs["bounds"] = bounds
        all_params = (*params, shape_param) if shape_param is not None else tuple(params)
        body = SeqExpr((DataflowBlock(tuple(new_bindings)),), new_bindings[-1].var)
        func = Function(all_params, body, bindings[-1].var.info, True, attrs)
        callees = [_base_name(b.value.args[0].name) for b in bindings]
        name = self.state.add(func, "fused_" + "_".join(callees))
        args = [*operands, ShapeExpr(tuple(SymVar(n) for n in needed))] if needed else operands
        return Call(GlobalVar(name), tuple(args))


def _base_name(name: str) -> str:
    return re.sub(r"\d+$", "", name) or name


def _symbols(e: Expr) -> list[str]:
    """Symbolic vars that `e` (a var's struct info or a shape argument) mentions, in a fixed order."""
    match e:
        case ShapeExpr(values):
            return [n for v in values for n in sorted(S.free_vars(v))]
        case Var(info=info):
            return sorted(SI.free_vars(info))
    return []
