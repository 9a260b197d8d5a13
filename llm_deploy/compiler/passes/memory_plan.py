"""Static memory planning with symbolic shapes: every tensor a function allocates for a call's
output gets a slot in a few storage blocks, reused across values whose lifetimes do not overlap,
each block sized by the analyzer's upper bound of what it holds (`n <= context_window` from the
function's `bounds`). The VM allocates the blocks once and then only makes views: a forward step
allocates nothing but the tensors it returns.

The plan is data on the function (`memory_plan` attr), which vm_codegen turns into
`alloc_storage` / `alloc_tensor` / `kill` instructions:

    attrs(memory_plan={"storage": (9437184, 9437184), "tensors": {"lv": 0, "lv1": 1, "y": 0},
                       "kill": {"y": ("lv",), ...}})

- A value's lifetime runs from the binding that computes it to the last use of it or of any
  alias of it: a reshape (a view), a var-to-var binding, a match_cast, a tuple holding it, an
  item of such a tuple, the result of an If that may return it.
- A value that escapes is never planned: the function's result (its caller keeps it), anything
  passed to another graph function or to an impure library call, or made by one (either may
  keep it).
- A kernel's own scratch of symbolic size (a norm's per-row statistics) becomes an extra output
  of its call first (`lift_workspace`), so it is planned too instead of allocated by the kernel.
- Storage is byte-addressed and dtype-agnostic; each tensor starts at offset 0 of its block.
  A freed block goes to the next tensor that fits best (the smallest block large enough, else
  the largest free one, grown). A tensor with no upper bound (a shape from a match_cast the
  bounds do not cover) is allocated per call, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llm_deploy.compiler import shape as S
from llm_deploy.compiler import struct_info as SI
from llm_deploy.compiler import tir as T
from llm_deploy.compiler.expr import (
    Call,
    DataflowVar,
    Function,
    GetItem,
    GlobalVar,
    If,
    Op,
    Tuple,
    Var,
    VarBinding,
    info_of,
)
from llm_deploy.compiler.functor import ExprMutator
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.passes.dce import is_primitive, used_vars
from llm_deploy.compiler.passes.fuse_tir import FuseError, bind_symbols, globals_of
from llm_deploy.compiler.passes.legalize import function_analyzer
from llm_deploy.compiler.pattern import global_allocs
from llm_deploy.compiler.tir_inline import drop_alloc

DPS_OPS = ("call_tir", "call_extern", "call_extern_pure")


def memory_plan(mod: IRModule) -> IRModule:
    mod = lift_workspace(mod)
    funcs = {}
    for name, f in mod.items():
        if isinstance(f, Function) and not is_primitive(f):
            plan = plan_function(f)
            f = Function(f.params, f.body, f.ret_info, f.pure, f.attrs.replace(memory_plan=plan.attr()))
        funcs[name] = f
    return IRModule(funcs, dict(mod.attrs.items()))


@dataclass(frozen=True)
class Tensor:
    reg: str  # the VM register: the var, or `var#i` for the i-th output of a tuple-valued call
    position: int  # the binding that allocates it
    nbytes: int | None  # its upper bound in bytes (None: unbounded, allocated per call)
    cls: str  # its alias class (the var whose lifetime decides)


@dataclass(frozen=True)
class Plan:
    storage: tuple[int, ...]  # bytes per block
    tensors: dict[str, int]  # register -> block
    kill: dict[str, tuple[str, ...]]  # after the binding of var: registers no longer read
    separate_bytes: int  # what allocating every planned tensor on its own would take
    unplanned: tuple[str, ...]  # registers allocated per call (escaping or unbounded)

    @property
    def total_bytes(self) -> int:
        return sum(self.storage)

    def attr(self) -> dict:
        return {"storage": self.storage, "tensors": dict(self.tensors), "kill": dict(self.kill)}


def plan_function(func: Function) -> Plan:
    bindings = [b for block in func.body.blocks for b in block.bindings]
    analyzer = function_analyzer(func)
    aliases = _Aliases()
    escaping: set[str] = set(used_vars(func.body.body))
    last_use: dict[str, int] = {}
    tensors: list[Tensor] = []
    fields: dict[str, list[str]] = {}  # a call's tuple of outputs -> their registers
    for i, b in enumerate(bindings):
        value, var = b.value, b.var
        for name in used_vars(value):
            last_use[name] = i
        last_use.setdefault(var.name, i)
        match value:
            case GetItem(Var(name), k) if name in fields:  # one output of a call: that tensor only
                aliases.union(var.name, fields[name][k])
            case Var(name) | GetItem(Var(name), _):  # also a match_cast's value
                aliases.union(var.name, name)
            case Call(op=Op("reshape"), args=(Var(name), *_)):
                aliases.union(var.name, name)
            case Tuple(fields):
                for f in fields:
                    if isinstance(f, Var):
                        aliases.union(var.name, f.name)
            case If(_, then_branch, else_branch):
                for branch in (then_branch, else_branch):
                    for name in used_vars(branch.body):
                        aliases.union(var.name, name)
            case Call(op=GlobalVar()) | Call(op=Op("call_extern")):
                escaping |= used_vars(value) | {var.name}  # the callee may keep what it sees
        if (
            isinstance(b, VarBinding)
            and isinstance(value, Call)
            and isinstance(value.op, Op)
            and value.op.name in DPS_OPS
            and len(value.sinfo_args) == 1
        ):
            outs = _outputs(var.name, value.sinfo_args[0], i, analyzer)
            tensors.extend(outs)
            if isinstance(value.sinfo_args[0], SI.TupleInfo):
                fields[var.name] = [t.reg for t in outs]
    # Whatever reads the tuple itself reads every output in it.
    for name, regs in fields.items():
        for r in regs:
            last_use[r] = max(last_use.get(r, -1), last_use.get(name, -1))
        if name in escaping:
            escaping |= set(regs)
    escaping = {aliases.find(n) for n in escaping}
    class_end: dict[str, int] = {}
    for name, pos in last_use.items():
        root = aliases.find(name)
        class_end[root] = max(class_end.get(root, -1), pos)
    for t in tensors:
        class_end.setdefault(aliases.find(t.cls), t.position)

    storage: list[int] = []
    assigned: dict[str, int] = {}
    busy: dict[int, int] = {}  # block -> the position after which it is free
    unplanned: list[str] = []
    kill: dict[str, list[str]] = {}
    for t in tensors:
        root = aliases.find(t.cls)
        if t.nbytes is None or root in escaping:
            unplanned.append(t.reg)
            continue
        free = [k for k in range(len(storage)) if busy.get(k, -1) < t.position]
        fits = [k for k in free if storage[k] >= t.nbytes]
        if fits:
            block = min(fits, key=lambda k: storage[k])
        elif free:
            block = max(free, key=lambda k: storage[k])
            storage[block] = t.nbytes
        else:
            block = len(storage)
            storage.append(t.nbytes)
        end = class_end[root]
        busy[block] = end
        assigned[t.reg] = block
        kill.setdefault(bindings[end].var.name, []).append(t.reg)
    separate = sum(t.nbytes for t in tensors if t.reg in assigned)
    return Plan(tuple(storage), assigned, {k: tuple(v) for k, v in kill.items()}, separate, tuple(unplanned))


def _outputs(var: str, info: SI.StructInfo, position: int, analyzer: S.Analyzer) -> list[Tensor]:
    fields = info.fields if isinstance(info, SI.TupleInfo) else (info,)
    out = []
    for k, f in enumerate(fields):
        reg = var if not isinstance(info, SI.TupleInfo) else f"{var}#{k}"
        out.append(Tensor(reg, position, _upper_bytes(f, analyzer), reg))
    return out


def _upper_bytes(info: SI.StructInfo, analyzer: S.Analyzer) -> int | None:
    if not isinstance(info, SI.TensorInfo) or info.shape is None or info.dtype is None:
        return None
    numel: S.PrimExpr = S.IntImm(1)
    for d in info.shape:
        numel = numel * d
    hi = analyzer.upper_bound(numel)
    return None if hi is None else max(hi, 0) * np.dtype(info.dtype).itemsize


class _Aliases:
    """Union-find over var names: values that share storage."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        while self.parent.get(x, x) != x:
            self.parent[x] = self.parent.get(self.parent[x], self.parent[x])
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb


# ---------------------------------------------------------------------------------------------
# Kernel scratch


def lift_workspace(mod: IRModule) -> IRModule:
    """A kernel's scratch buffers (a norm's per-row statistics, of symbolic size) become extra
    outputs of its call, so that they are planned like any tensor and no kernel allocates while
    a step runs:

        h = call_tir(rms_norm, (x, w), out_sinfo=Tensor[(n, 576), "float32"])
    becomes
        h_ws = call_tir(rms_norm_ws, (x, w), out_sinfo=Tuple[Tensor[(n, 576), "float32"], Tensor[(n,), "float32"]])
        h = h_ws[0]

    Only scratch allocated outside every loop, sized by the kernel's own symbolic dims, moves.
    """
    funcs = dict(mod.functions())
    lifted: dict[str, tuple[str, tuple[T.Buffer, ...]]] = {}
    for name, f in mod.items():
        if not isinstance(f, T.PrimFunc):
            continue
        dims = {d.name for b in f.buffers for d in b.shape if isinstance(d, S.SymVar)} | {
            v.name for v in f.scalars
        }
        scratch = tuple(b for b in global_allocs(f.body) if set().union(*map(S.free_vars, b.shape)) <= dims)
        if scratch:
            body = f.body
            for b in scratch:
                body = drop_alloc(body, b.name)
            new = T.PrimFunc((*f.buffers, *scratch, *f.scalars), body, f.attrs)
            lifted[name] = (IRModule(funcs).unique_name(f"{name}_ws"), scratch)
            funcs[lifted[name][0]] = new
    if not lifted:
        return mod
    for name, f in list(funcs.items()):
        if isinstance(f, Function):
            funcs[name] = _LiftCalls(lifted, funcs, f).visit_function(f)
    called = set().union(*(globals_of(f) for f in funcs.values() if isinstance(f, Function)))
    for name, (target, _) in lifted.items():
        for gone in (name, target):
            if gone not in called:
                del funcs[gone]
    return IRModule(funcs, dict(mod.attrs.items()))


class _LiftCalls(ExprMutator):
    def __init__(self, lifted: dict, funcs: dict, func: Function):
        super().__init__()
        self.lifted = lifted
        self.funcs = funcs
        self.analyzer = function_analyzer(func)
        self.taken = {p.name for p in func.params} | {
            b.var.name for blk in func.body.blocks for b in blk.bindings
        }

    def visit_binding(self, binding):
        (new,) = super().visit_binding(binding)
        v = new.value
        if not (
            isinstance(new, VarBinding)
            and isinstance(v, Call)
            and v.op == Op("call_tir")
            and isinstance(v.args[0], GlobalVar)
            and v.args[0].name in self.lifted
            and isinstance(new.var.info, SI.TensorInfo)
        ):
            return [new]
        target, scratch = self.lifted[v.args[0].name]
        f = self.funcs[v.args[0].name]
        infos = [info_of(a) for a in v.args[1].fields] + [new.var.info]
        shape_args = v.args[2].values if len(v.args) > 2 else ()
        try:
            sym = bind_symbols(f, infos, shape_args, self.analyzer, f"lift_workspace: {v.args[0].name}")
        except FuseError:
            return [new]
        extra = tuple(SI.TensorInfo(tuple(S.substitute(d, sym) for d in b.shape), b.dtype) for b in scratch)
        name = new.var.name + "_ws"
        while name in self.taken:
            name += "_"
        self.taken.add(name)
        kind = DataflowVar if isinstance(new.var, DataflowVar) else Var
        whole = kind(name, SI.TupleInfo((new.var.info, *extra)))
        call = Call(v.op, (GlobalVar(target), *v.args[1:]), v.attrs, (whole.info,))
        return [VarBinding(whole, call), VarBinding(new.var, GetItem(whole, 0))]
