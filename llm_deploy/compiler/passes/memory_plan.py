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
from llm_deploy.compiler.expr import (
    Call,
    Function,
    GetItem,
    GlobalVar,
    If,
    Op,
    Tuple,
    Var,
    VarBinding,
)
from llm_deploy.compiler.module import IRModule
from llm_deploy.compiler.passes.dce import is_primitive, used_vars
from llm_deploy.compiler.passes.legalize import function_analyzer

DPS_OPS = ("call_tir", "call_extern", "call_extern_pure")


def memory_plan(mod: IRModule) -> IRModule:
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
    for i, b in enumerate(bindings):
        value, var = b.value, b.var
        for name in used_vars(value):
            last_use[name] = i
        last_use.setdefault(var.name, i)
        match value:
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
            tensors.extend(_outputs(var.name, value.sinfo_args[0], i, analyzer))
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
        out.append(Tensor(reg, position, _upper_bytes(f, analyzer), var))
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
